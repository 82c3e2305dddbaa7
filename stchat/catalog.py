"""What `stchat pull` can fetch: the alias table (`assets/models.json`) and the file-choosing rules.

Model names on the Hub are long and the GGUF repositories hold a dozen quantizations whose
exact file names are not fixed, so users type `4b` or `21b` and this module turns that into a
repository plus a rule for picking the one Q4_0 file (the runtime's format; the repacked
`Q4_0_4_4`-style variants are not, nor PowerInfer's own `.powerinfer.gguf`). It also parses the other spellings `pull` accepts:
`OWNER/REPO[:FILE]` and a local `.gguf` file or checkpoint directory.

The table lives in the top-level `assets/` directory of the source tree. A regular
`pip install .` copies it to `<prefix>/share/stchat/` (pyproject `data-files`); the loader
looks in both places, so editable and regular installs find the same file.
"""
from __future__ import annotations

import json
import os
import re
import sysconfig
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath

from stchat.exitcodes import ModelNotFound, StchatError, UsageError

TABLE_NAME = "models.json"
TABLE_FORMAT = "stchat-models"
# Split GGUF files (`name-00001-of-00003.gguf`): the converter reads one file, so these are skipped.
_SPLIT = re.compile(r"-\d{5}-of-\d{5}\.gguf$", re.IGNORECASE)
# PowerInfer's own runtime format: fused operators no other runtime (llama.cpp, stchat) runs.
POWERINFER_SUFFIX = ".powerinfer.gguf"
_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
DEFAULT_GGUF_PATTERN = r"(?i)(?:^|[^a-z0-9])q4_0(?:[^a-z0-9_]|$)"


@dataclass(frozen=True)
class Alias:
    """One row of the table (sizes are approximate bytes, exact ones come from the Hub)."""

    alias: str
    name: str
    title: str
    gguf_repo: str
    gguf_pattern: str
    safetensors_repo: str
    gguf_bytes: int
    safetensors_bytes: int
    bundle_bytes: int
    ram_bytes: int
    min_bytes: int


@dataclass(frozen=True)
class HubSpec:
    """`pull OWNER/REPO[:FILE]` or an alias resolved to a repository."""

    repo: str
    file: str | None = None       # None: choose (GGUF by pattern, else the safetensors checkpoint)
    kind: str | None = None       # "gguf" | "hf" | None (decided from the listing)
    name: str | None = None       # install name; None: derived from the file or repository
    pattern: str = DEFAULT_GGUF_PATTERN
    alias: Alias | None = None


@dataclass(frozen=True)
class LocalSpec:
    """`pull ./file.gguf` or `pull ./hf-dir`: an import, no network."""

    path: Path


def table_candidates() -> list[Path]:
    """Where the table may be: the source tree's `assets/`, then the install's `share/stchat/`."""
    here = Path(__file__).resolve().parent
    places = [here.parent / "assets" / TABLE_NAME]
    for scheme in (None, f"{os.name}_user"):
        try:
            data = sysconfig.get_path("data", scheme) if scheme else sysconfig.get_path("data")
        except KeyError:
            continue
        places.append(Path(data) / "share" / "stchat" / TABLE_NAME)
    return places


@lru_cache(maxsize=None)
def load_table(path: str | None = None) -> dict[str, Alias]:
    """The alias table, from `path` or the first valid file among `table_candidates()`."""
    for candidate in [Path(path)] if path else table_candidates():
        try:
            data = json.loads(candidate.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if data.get("format") == TABLE_FORMAT:
            return {key: Alias(alias=key, **row) for key, row in data["models"].items()}
    raise StchatError(f"the model table {TABLE_NAME} is missing from this installation "
                      f"(looked in: {', '.join(map(str, table_candidates()))})")


def find_alias(text: str) -> Alias | None:
    """The alias row for `text`, matched on the alias itself or on its install name."""
    table = load_table()
    key = text.strip().lower()
    if key in table:
        return table[key]
    return next((row for row in table.values() if row.name == key), None)


def _is_local(spec: str) -> bool:
    if spec.startswith(("./", "../", "/", "~", ".\\")) or spec in (".", "..") or Path(spec).expanduser().exists():
        return True
    return not _REPO.match(spec.partition(":")[0]) and spec.lower().endswith(".gguf")


def parse_spec(spec: str, source: str = "gguf") -> HubSpec | LocalSpec:
    """Turn the `pull` argument into what to fetch; unknown aliases list the known ones."""
    spec = spec.strip()
    if not spec:
        raise UsageError("nothing to pull: give an alias (4b, 21b), OWNER/REPO[:FILE] or a local path")
    if _is_local(spec):
        path = Path(spec).expanduser()
        if not path.exists():
            raise ModelNotFound(f"{spec}: no such file or directory")
        return LocalSpec(path.absolute())
    repo, _, file = spec.partition(":")
    if "/" in repo:
        if not _REPO.match(repo):
            raise UsageError(f"{spec}: not a Hugging Face repository id (expected OWNER/REPO[:FILE])")
        kind = "gguf" if file.lower().endswith(".gguf") else None
        return HubSpec(repo=repo, file=file or None, kind=kind)
    row = find_alias(spec)
    if row is None:
        known = ", ".join(load_table())
        raise ModelNotFound(f"unknown model '{spec}' (known: {known}; or OWNER/REPO[:FILE], or a local "
                            f".gguf file or checkpoint directory)")
    if source == "safetensors":
        return HubSpec(repo=row.safetensors_repo, kind="hf", name=f"{row.name}-hf", alias=row)
    return HubSpec(repo=row.gguf_repo, kind="gguf", name=row.name, pattern=row.gguf_pattern, alias=row)


def choose_gguf(repo: str, files: list[str], pattern: str = DEFAULT_GGUF_PATTERN) -> tuple[str, list[str]]:
    """The Q4_0 GGUF to download, and the other Q4_0 candidates it was preferred to.

    Plain means: not split into parts, not PowerInfer-only, closest to the repository root, then
    shortest name (`model-Q4_0.gguf` before `model-Q4_0-imatrix.gguf`)."""
    ggufs = [f for f in files if f.lower().endswith(".gguf") and not is_powerinfer_only(f)]
    matches = [f for f in ggufs if re.search(pattern, PurePosixPath(f).name)]
    whole = [f for f in matches if not _SPLIT.search(f)]
    if not whole:
        listed = ", ".join(sorted(ggufs)[:8]) or "none"
        why = "only split Q4_0 files, which stchat cannot read" if matches else "no Q4_0 GGUF file"
        raise ModelNotFound(f"{repo}: {why} (GGUF files: {listed}); choose one with {repo}:FILE")
    ordered = sorted(whole, key=lambda f: (f.count("/"), len(PurePosixPath(f).name), f))
    return ordered[0], ordered[1:]


def is_powerinfer_only(file: str) -> bool:
    """A `.powerinfer.gguf`: PowerInfer-only fused operators, never chosen nor converted."""
    return file.lower().endswith(POWERINFER_SUFFIX)


def wanted_checkpoint_files(files: list[str]) -> list[str]:
    """Files of a Hugging Face checkpoint the converter reads (weights, config, tokenizer)."""
    keep = (".json", ".safetensors", ".txt", ".jinja")
    return sorted(f for f in files if "/" not in f and f.endswith(keep))


def install_name(spec: HubSpec, kind: str, file: str | None) -> str:
    """Where a Hub model is installed: the alias's name, else the GGUF stem or the repo name."""
    if spec.name:
        return spec.name
    if kind == "gguf" and file:
        return PurePosixPath(file).stem
    return spec.repo.split("/", 1)[1]
