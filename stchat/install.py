"""Putting a model into the models directory so that it is either wholly there or not at all.

`stchat list`, `ask` and the TUI see a model as soon as `models/<name>/manifest.json` exists,
so nothing may ever appear there half made, whatever kills the process. A pull converts into
`models/.pulling/<name>` (the runtime's own conversion is atomic inside that), writes the source
record next to the bundle, and renames the whole directory into place in one step. Hidden
directories are skipped by every listing, and the next pull of the same name clears what a
killed one left. A lock per name keeps two pulls from installing the same model at once.

The record (`stchat-source.json`) says where the model came from (repository, file, commit,
sha256, or the local path) and when it was pulled; `stchat list` and `show` read it.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from stchat.exitcodes import StchatError
from stchat.paths import models_dir
from stchat.progress import Reporter

RECORD = "stchat-source.json"
MANIFEST = "manifest.json"
STAGING = ".pulling"


def staging_root() -> Path:
    root = models_dir() / STAGING
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextmanager
def name_lock(name: str):
    """Exclusive right to install `name`; a second pull of it fails at once with a clear line.

    The lock file is deleted on release, so none pile up. A pull that opened it just before
    then holds a lock on a deleted file: it sees that (the path no longer names its file)
    and opens the path again."""
    path = staging_root() / f"{name}.lock"
    while True:
        handle = open(path, "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise StchatError(f"another stchat pull of {name} is running; wait for it to finish") from None
        try:
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        handle.close()
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # still holding the lock: nobody else has this file
        handle.close()


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_record(bundle: Path) -> dict:
    """The pull record of an installed bundle ({} for bundles converted by `ask -m file.gguf`)."""
    return read_json(bundle / RECORD)


def write_record(bundle: Path, record: dict) -> None:
    """Replace the pull record atomically (a reader sees the old one or the new one)."""
    tmp = bundle / f".{RECORD}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")
    os.replace(tmp, bundle / RECORD)


def is_complete(bundle: Path) -> bool:
    """A manifest, and every file it lists at its recorded size (what `runtime.load` checks first)."""
    return bundle_problem(bundle) is None


def bundle_problem(bundle: Path) -> str | None:
    """What makes `bundle` incomplete, in a few words (None: every file is there at its size).
    Sizes only: a full check of the contents is `stchat verify`."""
    if not (bundle / MANIFEST).is_file():
        return f"no {MANIFEST}"
    files = read_json(bundle / MANIFEST).get("files")
    if not isinstance(files, dict) or not files:
        return f"{MANIFEST} is unreadable or lists no files"
    for relative, info in files.items():
        try:
            size, expected = (bundle / relative).stat().st_size, int(info["size"])
        except FileNotFoundError:
            return f"{relative} is missing"
        except (OSError, KeyError, TypeError, ValueError):
            return f"{relative} cannot be checked"
        if size != expected:
            cut = "truncated" if size < expected else "too long"
            return f"{relative} is {cut} ({size} of {expected} bytes)"
    return None


def pending_state(name: str) -> Path:
    """Blobs a pull of `name` downloaded so far (removed after install unless the source is kept)."""
    return staging_root() / f"{name}.state.json"


def remember_download(name: str, blob: Path, pointer: Path) -> None:
    state_file = pending_state(name)
    state = read_json(state_file)
    entries = state.setdefault("downloaded", [])
    entry = {"blob": str(blob), "pointer": str(pointer)}
    if entry not in entries:
        entries.append(entry)
    tmp = state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1), encoding="utf-8")
    os.replace(tmp, state_file)


def downloaded_by_pull(name: str) -> list[dict]:
    return list(read_json(pending_state(name)).get("downloaded", []))


QUANTIZE_NOTES = {
    "q4_0": "every matrix is stored as Q4_0: smaller and faster, but it loses the precision the file stores",
    "q8_0": "every matrix is stored as Q8_0 (8 bits)",
}


def install(source: Path, name: str, record: dict, reporter: Reporter, quantize: str | None = None,
            replace: bool = False) -> Path:
    """Convert `source` (GGUF file or checkpoint directory) and install it as `name`; call with the lock held.
    `quantize` (q4_0, q8_0) stores every matrix in that format; None keeps a GGUF's own precision
    and quantizes a float checkpoint to Q4_0. `replace`: an existing `name` (an older conversion
    of the same file) is swapped out at the end."""
    import runtime  # heavy (numpy, onnxruntime): only now that there is a conversion to run

    dest = models_dir() / name
    if dest.exists() and not replace:
        raise StchatError(f"{dest} already exists; remove it with `stchat rm {name}` first")
    staged = staging_root() / name
    shutil.rmtree(staged, ignore_errors=True)  # left by a pull killed after converting
    reporter.line(f"converting {source.name} -> {dest}")
    if quantize:
        reporter.line(QUANTIZE_NOTES[quantize])
    elif source.is_dir():
        reporter.line("a float checkpoint is quantized to Q4_0, the format SmallThinker is built to run in "
                      "(--quantize q8_0 keeps 8 bits)")
    started = time.perf_counter()
    runtime.convert(source, staged, progress=reporter.stage, quantize=quantize)
    reporter.done()
    record = dict(record, name=name, quantize=quantize,
                  installed=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    (staged / RECORD).write_text(json.dumps(record, indent=1), encoding="utf-8")
    if dest.exists():
        old = staging_root() / f"{name}.replaced-{os.getpid()}"
        os.replace(dest, old)
        os.replace(staged, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staged, dest)
    reporter.line(f"converted in {time.perf_counter() - started:.1f}s")
    return dest


def remove_downloads(name: str, reporter: Reporter) -> int:
    """Delete the cache files this pull downloaded (not ones that were there before); bytes freed."""
    freed = 0
    for entry in downloaded_by_pull(name):
        pointer, blob = Path(entry["pointer"]), Path(entry["blob"])
        try:
            freed += blob.stat().st_size
            blob.unlink()
        except OSError:
            pass
        if pointer.is_symlink():
            pointer.unlink()
        parent = pointer.parent
        while parent.name and parent.parent.name != "snapshots" and _rmdir(parent):
            parent = parent.parent
        if parent.parent.name == "snapshots":
            _rmdir(parent)
    pending_state(name).unlink(missing_ok=True)
    return freed


def _rmdir(path: Path) -> bool:
    try:
        path.rmdir()
        return True
    except OSError:
        return False


def clear_state(name: str) -> None:
    pending_state(name).unlink(missing_ok=True)
