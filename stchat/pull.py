"""`stchat pull`: get a model from the Hub (or a local file), check it, convert it, install it.

The order is what users of other local LLM tools asked for: nothing touches the network when
the model is already installed; the repository listing comes first, so the file chosen, its
size, the free disk and the machine's memory are all checked before a byte is downloaded;
every file is verified against the Hub's hash before the converter sees it; the install is
atomic (`stchat/install.py`); an interrupted pull, however it was interrupted, resumes.
Progress goes to stderr; the installed model's name is the only thing printed on stdout.
"""
from __future__ import annotations

import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from stchat import catalog, install
from stchat.catalog import HubSpec, LocalSpec
from stchat.exitcodes import ExitCode, ModelNotFound, StchatError, UsageError
from stchat.hub import Hub, RemoteFile, RepoListing, same_device
from stchat.paths import models_dir
from stchat.progress import Reporter, human_bytes

DISK_MARGIN = 64 << 20          # bytes kept free on top of what the pull itself writes
HF_BUNDLE_RATIO = 0.3           # bf16 checkpoint -> Q4_0 bundle (4.5 bits of 16, plus float routers)
GGUF_BUNDLE_RATIO = 1.1         # GGUF Q4_0 -> bundle (same weights, plus graphs and alignment)
# Other GGUF types are kept at their precision in the formats ONNX Runtime computes with, which
# take more room: Q4_K 4.5 -> 6 bits per weight, Q5_K 5.5 -> 10, Q6_K 6.6 -> 10, Q8_0 8.5 -> 9
GGUF_TYPE_RATIOS = {"Q4_K": 1.4, "Q4_1": 1.3, "Q5_K": 1.85, "Q5_0": 1.65, "Q5_1": 1.6, "Q6_K": 1.6, "Q8_0": 1.1,
                    "BF16": 0.6, "F16": 0.6, "F32": 0.3}


def bundle_ratio(kind: str, file_name: str) -> float:
    """Bundle bytes per downloaded byte, from the file's quantization as its name gives it."""
    if kind != "gguf":
        return HF_BUNDLE_RATIO
    upper = file_name.upper()
    return max([r for t, r in GGUF_TYPE_RATIOS.items() if t in upper.replace("-", "_")], default=GGUF_BUNDLE_RATIO)


def installed_from(spec: HubSpec) -> str | None:
    """An installed, complete model that came from `spec`, found without the network."""
    root = models_dir()
    names = [spec.name] if spec.name else sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
    for name in names:
        bundle = root / name
        record = install.read_record(bundle)
        same_repo = (record.get("repo") == spec.repo   # or pulled by the alias, under the organisation's old name
                     or (spec.alias is not None and record.get("alias") == spec.alias.alias))
        if (same_repo and (spec.file is None or record.get("file") == spec.file)
                and record.get("verified") and install.is_complete(bundle)):
            return name
    return None


def same_file_installed(files: list[RemoteFile], quantize: str | None = None) -> str | None:
    """An installed, complete model converted (with the same `--quantize`) from a file with this
    sha256 (pulled under another name, or imported from a local copy), found without downloading."""
    from stchat.imports import recorded_source
    from stchat.models import installed_models

    if len(files) != 1 or not files[0].sha256:
        return None
    root = models_dir()
    return next((name for name in installed_models() if recorded_source(root / name).get("sha256") == files[0].sha256
                 and install.read_record(root / name).get("quantize") == quantize and install.is_complete(root / name)),
                None)


def plan(spec: HubSpec, listing: RepoListing, report) -> tuple[str, str, list[RemoteFile]]:
    """(kind, main file, files to fetch) for `spec`, saying which file was chosen and why."""
    names = sorted(listing.files)
    kind = spec.kind
    if kind is None and spec.file:
        raise UsageError(f"{spec.file}: only .gguf files can be pulled by name (or give OWNER/REPO "
                         f"for a safetensors checkpoint)")
    if kind is None:
        has_gguf = any(n.lower().endswith(".gguf") for n in names)
        kind = "gguf" if has_gguf else "hf"
    if kind == "gguf":
        if spec.file:
            if catalog.is_powerinfer_only(spec.file):
                raise UsageError(f"{spec.file} is PowerInfer's own format (fused operators only PowerInfer runs); "
                                 f"choose the plain .gguf of {spec.repo}")
            if spec.file not in listing.files:
                ggufs = ", ".join(n for n in names if n.lower().endswith(".gguf")) or "none"
                raise ModelNotFound(f"{spec.file} is not in {spec.repo} (GGUF files: {ggufs})")
            chosen, others = spec.file, []
        else:
            chosen, others = catalog.choose_gguf(spec.repo, names, spec.pattern)
        extra = f"; other Q4_0 files: {', '.join(others)}" if others else ""
        report(f"chose {chosen} ({human_bytes(listing.files[chosen].size)}) from {spec.repo} "
               f"at {listing.commit[:12]}{extra}")
        return kind, chosen, [listing.files[chosen]]
    wanted = catalog.wanted_checkpoint_files(names)
    if "config.json" not in wanted or not any(n.endswith(".safetensors") for n in wanted):
        raise ModelNotFound(f"{spec.repo} has neither a Q4_0 GGUF file nor a safetensors checkpoint")
    files = [listing.files[n] for n in wanted]
    report(f"chose the safetensors checkpoint of {spec.repo} at {listing.commit[:12]}: {len(files)} files, "
           f"{human_bytes(sum(f.size for f in files))}")
    return kind, "config.json", files


def _on_disk(hub: Hub, repo: str, file: RemoteFile) -> int:
    """Bytes of `file` already in the cache (complete blob or partial download)."""
    blob = hub.blob_path(repo, file)
    for path in (blob, blob.with_name(blob.name + ".incomplete")):
        if path.is_file():
            return min(path.stat().st_size, file.size)
    return 0


def check_disk(hub: Hub, repo: str, files: list[RemoteFile], kind: str, keep_source: bool) -> None:
    """Refuse before downloading when the download plus the bundle will not fit."""
    total = sum(f.size for f in files)
    download = total - sum(_on_disk(hub, repo, f) for f in files)
    bundle = int(total * max(bundle_ratio(kind, f.path) for f in files))
    cache, models = hub.cache_dir, models_dir()
    cache.mkdir(parents=True, exist_ok=True)
    after = "kept in the Hugging Face cache (--keep-source)" if keep_source else \
        "deleted after conversion (--no-keep-source)"
    needs = [(cache, download), (models, bundle)]
    if same_device(cache, models):
        needs = [(models, download + bundle)]
    for where, need in needs:
        free = shutil.disk_usage(where).free
        if need + DISK_MARGIN > free:
            raise StchatError(f"not enough disk space: {human_bytes(need + DISK_MARGIN)} needed on {where} "
                              f"(download {human_bytes(download)}, {after}; model {human_bytes(bundle)}), "
                              f"{human_bytes(free)} free; free some space or move HF_HUB_CACHE / STCHAT_HOME")


def check_memory(name: str, alias: catalog.Alias | None, total: int, yes: bool, reporter: Reporter) -> None:
    """Warn (and on a terminal, ask) when the machine's memory is below what the model needs to run well."""
    import psutil

    ram, minimum = int(total * GGUF_BUNDLE_RATIO), None
    if alias is not None and alias.gguf_bytes / 2 <= total <= alias.safetensors_bytes * 2:
        ram, minimum = alias.ram_bytes, alias.min_bytes   # the table knows the real model's numbers
    have = psutil.virtual_memory().total
    if have >= ram:
        return
    floor = f" (at least {human_bytes(minimum)})" if minimum else ""
    reporter.line(f"warning: this computer has {human_bytes(have)} of memory and {name} needs about "
                  f"{human_bytes(ram)} to keep all its experts in RAM; it can still run with --memory{floor}, "
                  f"reading experts from disk, more slowly")
    if not yes and sys.stdin.isatty() and sys.stderr.isatty():
        if not typer.confirm("download anyway?", default=True, err=True):
            raise typer.Exit(int(ExitCode.ERROR))


def pull_hub(spec: HubSpec, hub: Hub, reporter: Reporter, keep_source: bool, yes: bool,
             quantize: str | None = None) -> str:
    from stchat.download import fetch

    name = installed_from(spec) if not quantize else None
    if name:
        reporter.line(f"{name} is already installed (from {spec.repo}); nothing to download")
        return name
    listing = hub.cached_listing(spec.repo) if hub.offline else None
    if listing is None:
        listing = hub.listing(spec.repo)   # offline: says HF_HUB_OFFLINE forbids it
    else:
        reporter.line(f"HF_HUB_OFFLINE is set: using {spec.repo} from the Hugging Face cache")
    repo = listing.repo   # the current name: the Hub redirects renamed repositories
    if repo != spec.repo:
        reporter.line(f"{spec.repo} is now called {repo} (the Hub redirected the old name)")
        spec = replace(spec, repo=repo)
    try:
        kind, main, files = plan(spec, listing, reporter.line)
    except ModelNotFound as error:
        if hub.offline:
            hub.require_online(f"{spec.repo} ({error})")
        raise
    same = same_file_installed(files, quantize) if kind == "gguf" else None
    if same:
        reporter.line(f"{same} is already installed from the same file ({main}, same sha256); nothing to download")
        return same
    name = catalog.install_name(spec, kind, main) + (f"-{quantize}" if quantize else "")
    dest = models_dir() / name
    if dest.exists():
        record = install.read_record(dest)
        if (record.get("repo") == spec.repo and record.get("file") == main and record.get("quantize") == quantize
                and install.is_complete(dest)):
            reporter.line(f"{name} is already installed (from {spec.repo}); nothing to download")
            return name
        raise StchatError(f"a different model is installed as {name}; remove it with `stchat rm {name}` first")
    missing = [f.path for f in files if not (f.sha256 or f.git_oid)]
    if missing:
        raise StchatError(f"{spec.repo}: the Hub gave no hash for {', '.join(missing)}; refusing to use it unverified")
    with install.name_lock(name):
        check_disk(hub, spec.repo, files, kind, keep_source)
        check_memory(name, spec.alias, sum(f.size for f in files), yes, reporter)
        for file in files:
            fetched = fetch(hub, spec.repo, listing.commit, file, reporter)
            if fetched.downloaded:
                install.remember_download(name, hub.blob_path(spec.repo, file), fetched.path)
        source = hub.snapshot_path(spec.repo, listing.commit, main if kind == "gguf" else "")
        record = {"kind": kind, "repo": spec.repo, "file": main, "commit": listing.commit,
                  "endpoint": hub.endpoint, "alias": spec.alias.alias if spec.alias else None, "verified": True,
                  "files": [{"path": f.path, "size": f.size, "sha256": f.sha256, "git_oid": f.git_oid}
                            for f in files]}
        install.install(source, name, record, reporter, quantize)
        if keep_source:
            install.clear_state(name)
        else:
            freed = install.remove_downloads(name, reporter)
            if freed:
                reporter.line(f"removed the {human_bytes(freed)} download from the Hugging Face cache "
                              f"(--keep-source keeps it)")
    return name


def pull_local(path: Path, reporter: Reporter, quantize: str | None = None) -> str:
    """Import a GGUF file or Hugging Face checkpoint directory: no network at all. A file that
    `ask -m` (or an earlier pull) already converted is not converted again."""
    from stchat.imports import import_local

    if path.is_dir() and (path / install.MANIFEST).is_file():
        raise UsageError(f"{path} is already a model bundle: use it directly with -m {path}")
    if path.is_dir() and not (path / "config.json").is_file():
        raise UsageError(f"{path}: not a Hugging Face checkpoint directory (no config.json)")
    if path.is_file() and path.suffix.lower() != ".gguf":
        raise UsageError(f"{path}: not a .gguf file")
    name, converted = import_local(path, reporter, quantize)
    if not converted:
        reporter.line(f"{name} is already installed (from {path}); nothing to do")
    return name


def pull_command(
    model: Annotated[str, typer.Argument(
        help="An alias (4b, 21b), OWNER/REPO[:FILE] on the Hugging Face Hub, or a local .gguf file or "
             "checkpoint directory to import.", show_default=False)],
    source: Annotated[str, typer.Option(
        "--source", help="For an alias: the Q4_0 GGUF (gguf) or the original bf16 checkpoint, quantized "
                         "here (safetensors).")] = "gguf",
    keep_source: Annotated[bool, typer.Option(
        "--keep-source/--no-keep-source", help="Keep the downloaded files in the Hugging Face cache after "
                                               "conversion (default: delete them; the model needs only its bundle).")] = False,
    yes: Annotated[bool, typer.Option("-y", "--yes", help="Do not ask before downloading a model larger "
                                                          "than this computer's memory.")] = False,
    quantize: Annotated[str | None, typer.Option(
        "--quantize", help="Store every matrix as q4_0 (smaller, loses the precision the file stores) or q8_0. "
                           "Default: a GGUF keeps its own precision; a float checkpoint becomes q4_0. "
                           "The model is installed with the format in its name.", show_default=False)] = None,
) -> None:
    """Download (or import), verify, convert and install a model."""
    if source not in ("gguf", "safetensors"):
        raise UsageError(f"--source must be gguf or safetensors, not {source!r}")
    if quantize is not None and quantize not in install.QUANTIZE_NOTES:
        raise UsageError(f"--quantize must be one of {', '.join(install.QUANTIZE_NOTES)}, not {quantize!r}")
    reporter = Reporter()
    spec = catalog.parse_spec(model, source)
    if isinstance(spec, LocalSpec) and source != "gguf":
        raise UsageError("--source applies to aliases, not to local files")
    try:
        if isinstance(spec, LocalSpec):
            name = pull_local(spec.path, reporter, quantize)
        else:
            name = pull_hub(spec, Hub.from_environment(), reporter, keep_source, yes, quantize)
    except KeyboardInterrupt:
        reporter.line("stchat: interrupted; run the same pull again to resume")
        raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
    reporter.line(f"success: {name} is installed; try: stchat ask -m {name} \"Hello\"")
    print(name, flush=True)


__all__ = ["pull_command", "pull_hub", "pull_local", "plan", "check_disk", "installed_from"]
