"""Finding the model the user means, by any of its names, for every command and the chat app.

A model is named the same way everywhere (`ask -m`, `STCHAT_MODEL`, `show`, `rm`, the app):
its installed name (`smallthinker-4b`), the alias it is pulled by (`4b`, from
`assets/models.json`), a bundle directory, or a GGUF file (converted once, `stchat/imports.py`).
Without a name, `STCHAT_MODEL` chooses, then the default model set in the app (F4, saved in
the settings), then the only installed model. An alias that is not installed says how to get it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from stchat.exitcodes import ModelNotFound, UsageError
from stchat.paths import models_dir
from stchat.progress import Reporter

MODEL_ENV = "STCHAT_MODEL"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ResolvedModel:
    name: str   # what stats and --json call it
    path: Path  # the bundle directory to hand to runtime.load


def installed_models() -> list[str]:
    """Names of bundles under the models directory (hidden work directories skipped)."""
    return sorted(p.name for p in models_dir().iterdir()
                  if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).is_file())


def installed_name(spec: str) -> str | None:
    """The installed model `spec` names: itself, or the model its alias installs (`4b` ->
    `smallthinker-4b`), or one pulled under that alias (`smallthinker-4b-hf`)."""
    from stchat import catalog, install

    installed = installed_models()
    if spec in installed:
        return spec
    try:
        row = catalog.find_alias(spec)
    except Exception:   # no table in this installation: names still work
        row = None
    if row is not None and row.name in installed:
        return row.name
    key = spec.strip().lower()
    return next((name for name in installed if install.read_record(models_dir() / name).get("alias") == key), None)


def not_installed(spec: str) -> ModelNotFound:
    """The error for a name that matches no installed model; an alias says how to pull it."""
    from stchat import catalog

    installed = ", ".join(installed_models()) or "none"
    try:
        row = catalog.find_alias(spec)
    except Exception:
        row = None
    if row is not None:
        return ModelNotFound(f"model '{spec}' ({row.title}) is not installed; get it with: stchat pull {row.alias}")
    return ModelNotFound(f"unknown model '{spec}' (installed: {installed}); see stchat list, or stchat pull")


def default_model() -> str | None:
    """STCHAT_MODEL, else the app's default model (settings), as given; None when neither is set."""
    named = os.environ.get(MODEL_ENV, "").strip()
    if named:
        return named
    from stchat import settings

    try:
        chosen = settings.load().default_model
    except (settings.SettingsError, OSError):
        return None
    return chosen if chosen and installed_name(chosen) else None   # a removed default is forgotten


def resolve(spec: str | None, reporter: Reporter | None = None) -> ResolvedModel:
    """The bundle for `-m spec` (None: STCHAT_MODEL, the app's default, else the single installed model)."""
    spec = (spec or "").strip() or default_model()
    if spec:
        return _resolve_spec(spec, reporter or Reporter())
    installed = installed_models()
    if not installed:
        raise ModelNotFound(f"no model installed in {models_dir()}: get one with stchat pull 4b, or pass -m "
                            f"with a .gguf file or a bundle directory")
    if len(installed) > 1:
        raise UsageError(f"several models installed ({', '.join(installed)}): choose one with -m NAME, "
                         f"{MODEL_ENV}, or a default in the app (F4)")
    return ResolvedModel(installed[0], models_dir() / installed[0])


def looks_like_path(spec: str) -> bool:
    separators = [os.sep] + ([os.altsep] if os.altsep else [])
    return any(s in spec for s in separators) or spec.startswith((".", "~")) or spec.lower().endswith(".gguf")


def _resolve_spec(spec: str, reporter: Reporter) -> ResolvedModel:
    if not looks_like_path(spec):
        name = installed_name(spec)
        if name:
            return ResolvedModel(name, models_dir() / name)   # load() judges its content
    path = Path(spec).expanduser()
    if path.is_dir() and not (path / "config.json").is_file() or (path / MANIFEST).is_file():
        return ResolvedModel(path.name, path.absolute())   # a bundle; load() judges its content
    if path.exists():   # a GGUF file or a Hugging Face checkpoint directory
        from stchat.imports import import_local

        name, _ = import_local(path, reporter)
        return ResolvedModel(name, models_dir() / name)
    if looks_like_path(spec):
        raise ModelNotFound(f"{spec}: no such file or directory")
    raise not_installed(spec)
