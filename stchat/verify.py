"""`stchat verify NAME`: read every file of an installed model and compare it with its checksums.

A bundle records the sha256 of each of its files at conversion (`manifest.json` `files`), and a
crc32 per expert record (`experts.crc32`), which the runtime checks whenever it reads an expert.
Sizes are checked by `list`, `show` and every load; bytes damaged in place (a bad disk, a
tool that wrote into the file) keep the size and are only found by reading everything, which
is this command: a few seconds per GB. A damaged model is one line naming the bad file (and,
in `experts.bin`, the damaged experts) and exit status 1.
"""
from __future__ import annotations

import hashlib
import zlib
from pathlib import Path
from typing import Annotated

import typer

from stchat import install
from stchat.exitcodes import StchatError
from stchat.progress import Reporter, human_bytes

BIG_FILE = 64 << 20       # files at least this large get a progress line
CHUNK = 8 << 20
MOST_NAMED = 4            # damaged experts named in the message


def check_file(path: Path, info: dict, reporter: Reporter,
               experts: tuple[int, list, int, list] | None = None) -> str | None:
    """What is wrong with one file (None: its size and sha256 match). `experts`: `(stride,
    crc32s, experts per layer, record bytes per layer)` when `path` is experts.bin, to name
    the records that changed."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "is missing"
    if size != info["size"]:
        return f"is {'truncated' if size < info['size'] else 'too long'} ({size} of {info['size']} bytes)"
    stride, crcs, per_layer, used = experts or (CHUNK, [], 1, [])
    digest, damaged, done = hashlib.sha256(), [], 0
    if size >= BIG_FILE:
        reporter.line(f"verifying {path.name} ({human_bytes(size)})")
    with open(path, "rb") as handle:
        while block := handle.read(stride):
            digest.update(block)
            layer, expert = divmod(done // stride, per_layer)
            if done // stride < len(crcs) and zlib.crc32(block[:used[layer]]) != crcs[done // stride]:
                damaged.append(f"layers.{layer}/experts.{expert}")
            done += len(block)
            if size >= BIG_FILE:
                reporter.fraction(path.name, done, size)
    reporter.done()
    if digest.hexdigest() == info["sha256"]:
        return None
    more = f" and {len(damaged) - MOST_NAMED} more" if len(damaged) > MOST_NAMED else ""
    named = f" (damaged: {', '.join(damaged[:MOST_NAMED])}{more})" if damaged else ""
    return f"does not match the sha256 recorded at conversion{named}"


def verify_bundle(name: str, path: Path, reporter: Reporter) -> int:
    """Bytes checked; raises StchatError naming every damaged file."""
    manifest = install.read_json(path / install.MANIFEST)
    files, experts = manifest.get("files") or {}, manifest.get("experts") or {}
    records = None
    if experts.get("crc32") and experts.get("layouts"):
        used = [int(experts["layouts"][key]["size"]) for key in experts["layers"]]   # bytes read per record
        records = (int(experts["stride"]), experts["crc32"], int(manifest["config"]["num_experts"]), used)
    problems, checked = [], 0
    for relative, info in files.items():
        problem = check_file(path / relative, info, reporter, records if relative == experts.get("file") else None)
        if problem:
            problems.append(f"{relative} {problem}")
        else:
            checked += info["size"]
    if problems:
        raise StchatError(f"{name} is damaged: {'; '.join(problems)}; remove it (stchat rm {name}) and install "
                          f"it again")
    return checked


def verify_command(
    name: Annotated[str, typer.Argument(help="Installed model name (or its alias).", show_default=False)],
) -> None:
    """Check every file of an installed model against the checksums recorded at conversion."""
    from stchat.manage import find

    model = find(name)
    checked = verify_bundle(model.name, model.path, Reporter())
    count = len(model.manifest.get("files") or {})
    print(f"{model.name}: ok, {count} files ({human_bytes(checked)}) match their sha256", flush=True)
