"""One conversion per file: a local GGUF file or checkpoint directory becomes one installed bundle.

`stchat ask -m ./x.gguf`, `stchat pull ./x.gguf` and the chat app all arrive here, so whichever
saw a file first converts it and the others reuse that bundle. A file is matched to an installed
bundle by what was recorded about its source when it was converted: its size and mtime plus its
path or file name (the manifest's `source`, or the pull record). When only the size agrees (a
copy made elsewhere, a file downloaded again, the download `pull 4b` fetched), the file's sha256
is compared with the one recorded at conversion, so the same bytes are never converted twice. A
file that changed in place is converted again and replaces its old bundle.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from stchat import catalog, install
from stchat.exitcodes import UsageError
from stchat.models import installed_models
from stchat.paths import models_dir
from stchat.progress import Reporter

MTIME_TOLERANCE = 1e-3   # seconds; JSON round-trips the float


def fingerprint(source: Path) -> dict:
    """What a conversion records about its source (written into the pull record)."""
    stat = source.stat()
    return {"kind": "gguf" if source.is_file() else "hf", "path": str(source.resolve()), "file": source.name,
            "size": stat.st_size if source.is_file() else None, "mtime": stat.st_mtime}


def recorded_source(bundle: Path) -> dict:
    """The bundle's source as recorded: the manifest's `source`, completed by the pull record
    (`sha256`, a hub download's file hash)."""
    source = install.read_json(bundle / install.MANIFEST).get("source")
    source = dict(source) if isinstance(source, dict) else {}
    record = install.read_record(bundle)
    for key in ("path", "size", "mtime", "sha256"):
        if record.get(key) is not None:
            source[key] = record[key]
    hub_files = [f for f in record.get("files") or [] if isinstance(f, dict)]
    if record.get("kind") == "gguf" and len(hub_files) == 1 and hub_files[0].get("sha256"):
        source.setdefault("sha256", hub_files[0]["sha256"])
    source.setdefault("name", record.get("file") or source.get("name"))
    return source


def _same_stat(recorded: dict, found: dict) -> bool:
    try:
        return (recorded.get("size") == found["size"]
                and abs(float(recorded.get("mtime", -1)) - found["mtime"]) < MTIME_TOLERANCE)
    except (TypeError, ValueError):
        return False


def sha256_of(path: Path, reporter: Reporter | None = None) -> str:
    """The file's sha256 (a full read, ~340 MiB/s here), computed once per path, size and mtime."""
    stat = path.stat()
    if reporter is not None and stat.st_size >= 256 << 20:
        reporter.line(f"computing the sha256 of {path.name}")
    return _sha256(str(path.resolve()), stat.st_size, stat.st_mtime)


@lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime: float, chunk: int = 8 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _seen_at(recorded: dict, found: dict, also: list) -> bool:
    """Whether the file `found` describes is one the bundle was made from, or matched since."""
    same_place = recorded.get("path") == found["path"] or recorded.get("name") == found["file"]
    if _same_stat(recorded, found) and same_place:
        return True
    return any(isinstance(seen, dict) and seen.get("path") == found["path"] and _same_stat(seen, found)
               for seen in also)


def find_conversion(source: Path, reporter: Reporter | None = None, quantize: str | None = None) -> str | None:
    """The installed, complete bundle converted from `source` (these very bytes) with the same
    `--quantize` choice, or None."""
    root, found = models_dir(), fingerprint(source)
    candidates = []
    for name in installed_models():
        recorded, record = recorded_source(root / name), install.read_record(root / name)
        if record.get("quantize") != quantize or not install.is_complete(root / name):
            continue
        if _seen_at(recorded, found, record.get("same_bytes_at") or []):
            return name
        if source.is_file() and recorded.get("size") == found["size"] and recorded.get("sha256"):
            candidates.append((name, recorded["sha256"]))
    if not candidates:
        return None
    digest = sha256_of(source, reporter)
    name = next((name for name, recorded in candidates if recorded == digest), None)
    if name:   # remember this path, so the next look needs no hash
        record = install.read_record(root / name)
        install.write_record(root / name, dict(record, same_bytes_at=(record.get("same_bytes_at") or [])[-7:] + [
            {"path": found["path"], "size": found["size"], "mtime": found["mtime"]}]))
    return name


def _replaced_by(source: Path, quantize: str | None) -> str | None:
    """An installed bundle converted (the same way) from a file at this same path that has changed since."""
    path, root = str(source.resolve()), models_dir()
    return next((name for name in installed_models() if recorded_source(root / name).get("path") == path
                 and install.read_record(root / name).get("quantize") == quantize), None)


def import_local(source: Path, reporter: Reporter, quantize: str | None = None) -> tuple[str, bool]:
    """(installed name, whether it was converted now) for a local GGUF file or checkpoint directory;
    `quantize` (q4_0, q8_0) is `pull --quantize`, installed under its own name (`x-q4_0`)."""
    source = source.absolute()
    if source.is_file() and catalog.is_powerinfer_only(source.name):
        raise UsageError(f"{source.name} is PowerInfer's own format (fused operators only PowerInfer runs); "
                         f"use the plain .gguf of the same model")
    name = find_conversion(source, reporter, quantize)
    if name:
        return name, False
    record = fingerprint(source)
    if source.is_file():
        record["sha256"] = sha256_of(source, reporter)
    replace = _replaced_by(source, quantize)
    if replace:
        reporter.line(f"{source} changed since it was converted into {replace}: converting it again")
        name = replace
    else:
        base = (source.stem if source.is_file() else source.name) + (f"-{quantize}" if quantize else "")
        root, name, suffix = models_dir(), base, 2
        while (root / name).exists():
            name, suffix = f"{base}-{suffix}", suffix + 1
    with install.name_lock(name):
        install.install(source, name, record, reporter, quantize, replace=bool(replace))
    return name, True


__all__ = ["find_conversion", "import_local", "recorded_source", "fingerprint", "sha256_of"]
