"""Finding the model the user means: `-m` as an installed name, a bundle directory or a GGUF file.

The runtime only loads bundles. Users, though, arrive with whatever they have: a GGUF file they
downloaded, a bundle they converted elsewhere, or the name of a model installed under
`paths.models_dir()`. This module maps all of those to one bundle directory, converting a GGUF
file the first time it is seen and reusing that conversion afterwards (matched by the source
file's name, size and mtime recorded in the bundle's manifest). Without `-m`, `STCHAT_MODEL`
names the model, else the only installed one is used.
"""
from __future__ import annotations

import inspect
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from stchat.exitcodes import ModelNotFound, UsageError
from stchat.paths import models_dir

MODEL_ENV = "STCHAT_MODEL"
MANIFEST = "manifest.json"

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class ResolvedModel:
    name: str   # what stats and --json call it
    path: Path  # the bundle directory to hand to runtime.load


def installed_models() -> list[str]:
    """Names of complete bundles under the models directory (hidden work directories skipped)."""
    return sorted(p.name for p in models_dir().iterdir()
                  if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).is_file())


def resolve(spec: str | None, log: Log = _stderr) -> ResolvedModel:
    """The bundle for `-m spec` (None: STCHAT_MODEL, else the single installed model)."""
    spec = (spec or "").strip() or os.environ.get(MODEL_ENV, "").strip()
    if spec:
        return _resolve_spec(spec, log)
    installed = installed_models()
    if not installed:
        raise ModelNotFound(f"no model installed in {models_dir()}: pass -m with a .gguf file or a "
                            f"bundle directory")
    if len(installed) > 1:
        raise UsageError(f"several models installed ({', '.join(installed)}): choose one with -m NAME "
                         f"or {MODEL_ENV}")
    return ResolvedModel(installed[0], models_dir() / installed[0])


def _looks_like_path(spec: str) -> bool:
    separators = [os.sep] + ([os.altsep] if os.altsep else [])
    return any(s in spec for s in separators) or spec.startswith((".", "~")) or spec.lower().endswith(".gguf")


def _resolve_spec(spec: str, log: Log) -> ResolvedModel:
    if not _looks_like_path(spec) and (models_dir() / spec).is_dir():
        return ResolvedModel(spec, models_dir() / spec)  # installed name; load() judges its content
    path = Path(spec).expanduser()
    if path.is_dir():
        return ResolvedModel(path.name, path.absolute())
    if path.is_file():
        return ensure_converted(path, log)
    if _looks_like_path(spec):
        raise ModelNotFound(f"{spec}: no such file or directory")
    installed = ", ".join(installed_models()) or "none"
    raise ModelNotFound(f"unknown model '{spec}' (installed: {installed})")


# -- GGUF files: convert once, then reuse ------------------------------------------------------
def _source_of(bundle: Path) -> dict:
    try:
        source = json.loads((bundle / MANIFEST).read_text(encoding="utf-8")).get("source")
    except (OSError, ValueError, AttributeError):
        return {}
    return source if isinstance(source, dict) else {}


def _converted_from(bundle: Path, gguf: Path) -> bool:
    """Whether `bundle` was made from this very file, unchanged since (name, size and mtime)."""
    source, stat = _source_of(bundle), gguf.stat()
    try:
        return (source.get("name") == gguf.name and int(source.get("size", -1)) == stat.st_size
                and abs(float(source.get("mtime", -1)) - stat.st_mtime) < 1e-3)
    except (TypeError, ValueError):
        return False


def _same_file(bundle: Path, gguf: Path) -> bool:
    """Whether `bundle` came from a GGUF at this path (possibly since modified)."""
    recorded = _source_of(bundle).get("path")
    return bool(recorded) and Path(recorded) == gguf.resolve()


def ensure_converted(gguf: Path, log: Log = _stderr) -> ResolvedModel:
    """The bundle converted from `gguf`: an existing conversion if still current, else a new one."""
    root, gguf = models_dir(), gguf.absolute()
    for name in installed_models():
        if _converted_from(root / name, gguf):
            return ResolvedModel(name, root / name)
    name = gguf.stem
    replace = (root / name).exists() and _same_file(root / name, gguf)  # the file changed: redo it
    if (root / name).exists() and not replace:
        suffix = 2
        while (root / f"{gguf.stem}-{suffix}").exists():
            suffix += 1
        name = f"{gguf.stem}-{suffix}"
    dest = root / name
    target = root / f".{name}.new-{os.getpid()}" if replace else dest
    _convert(gguf, target, log)
    if replace:
        old = root / f".{name}.old-{os.getpid()}"
        os.replace(dest, old)
        os.replace(target, dest)
        shutil.rmtree(old, ignore_errors=True)
    return ResolvedModel(name, dest)


def _convert(gguf: Path, dest: Path, log: Log) -> None:
    import runtime  # heavy: only when a conversion is really needed

    shown = dest.parent / dest.name.split(".new-")[0].lstrip(".")
    log(f"converting {gguf} -> {shown}")
    started = time.perf_counter()
    kwargs = {}
    if sys.stderr.isatty() and "progress" in inspect.signature(runtime.convert).parameters:
        def progress(stage: str, done: int, total: int) -> None:
            print(f"\r  {stage} {done}/{total}\x1b[K", end="", file=sys.stderr, flush=True)

        kwargs["progress"] = progress
    try:
        runtime.convert(gguf, dest, **kwargs)
    finally:
        if kwargs:
            print("\r\x1b[K", end="", file=sys.stderr, flush=True)
    log(f"converted in {time.perf_counter() - started:.1f}s")
