"""What the TUI asks of the inference side, in one small interface a test can fake.

The app never calls the runtime directly: it holds an `Engine`, which lists installed models,
loads one (blocking: always called from a thread worker) and opens chat sessions on it. The
real engine, `RuntimeEngine`, imports `runtime` on first use, so starting the app costs nothing
until a model is loaded. Tests pass a scripted engine with the same methods.

A loaded model is used through: `.config` (num_layers, num_experts, ...),
`.experts.cache` (`stats`, `resident()`, `used`, `budget`), `.memory_budget`,
`.resident_bytes()` and `.close()`; `minimum_budget(name, context)` is the smallest memory
budget a model loads in, known without loading it. A session through `.send(text)`, `.regenerate()`,
`.cancel()`, `.messages` and `.cache.length` / `.cache.capacity`, yielding the runtime's events.
"""
from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

Report = Callable[[str, bool], None]  # (text, transient): a status line redrawn in place, or a log line
Cancelled = Callable[[], bool]


class PullCancelled(Exception):
    """Raised inside a pull when the user stopped it; pulling again resumes."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: Path
    size: int      # bytes on disk
    source: str    # where it came from: a repository, a file name, or "-"


class Engine(Protocol):
    def installed(self) -> list[ModelInfo]: ...

    def load(self, name: str, *, memory_budget: int | None, threads: int | None, context: int | None = None): ...

    def session(self, model, *, system_prompt: str | None, sampling: dict, messages: list[dict]): ...

    def delete(self, name: str) -> None: ...

    def minimum_budget(self, name: str, context: int | None = None) -> int: ...

    def pull(self, spec: str, report: "Report", cancelled: "Cancelled") -> str: ...


def _dir_size(path: Path) -> int:
    total = 0
    for item in path.rglob("*"):
        try:
            if item.is_file():
                total += item.stat().st_size
        except OSError:
            pass
    return total


def _source(bundle: Path) -> str:
    try:
        from stchat.install import read_record

        record = read_record(bundle)
        if record.get("repo"):
            return f"{record['repo']} {record.get('file') or ''}".strip()
        if record.get("path"):
            return str(record["path"])
    except ImportError:
        pass
    try:
        source = json.loads((bundle / "manifest.json").read_text(encoding="utf-8")).get("source") or {}
    except (OSError, ValueError, AttributeError):
        return "-"
    if not isinstance(source, dict):
        return str(source)
    for key in ("repo", "repo_id", "url", "name"):
        if source.get(key):
            return str(source[key])
    return "-"


def split_sampling(sampling: dict) -> tuple[dict, int]:
    """A conversation's stored sampling dict -> (SamplingParams keywords, max_tokens)."""
    known = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed")
    params = {k: sampling[k] for k in known if sampling.get(k) is not None}
    return params, int(sampling.get("max_tokens") or 1024)


class RuntimeEngine:
    """The real engine: stchat's own runtime, models from `paths.models_dir()`."""

    def installed(self) -> list[ModelInfo]:
        from stchat.models import installed_models
        from stchat.paths import models_dir

        root = models_dir()
        return [ModelInfo(name, root / name, _dir_size(root / name), _source(root / name))
                for name in installed_models()]

    def load(self, name: str, *, memory_budget: int | None, threads: int | None, context: int | None = None):
        import runtime
        from stchat.models import resolve
        from stchat.progress import Reporter

        resolved = resolve(name, Reporter(io.StringIO(), tty=False))
        try:
            return runtime.load(resolved.path, memory_budget=memory_budget, threads=threads, context=context)
        except runtime.InvalidContext:  # the setting is longer than this model was trained for: all of it
            return runtime.load(resolved.path, memory_budget=memory_budget, threads=threads)

    def minimum_budget(self, name: str, context: int | None = None) -> int:
        """The smallest memory budget `name` loads in with `context` (what the runtime refuses below)."""
        from stchat.manage import Installed
        from stchat.models import resolve
        from stchat.progress import Reporter

        path = resolve(name, Reporter(io.StringIO(), tty=False)).path
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        return Installed(name, path, manifest, {}).memory(context)["minimum"]

    def session(self, model, *, system_prompt: str | None, sampling: dict, messages: list[dict]):
        import runtime

        params, max_tokens = split_sampling(sampling)
        return runtime.ChatSession(model, system_prompt=system_prompt or None,
                                   sampling=runtime.SamplingParams(**params), max_tokens=max_tokens,
                                   context=int(sampling.get("context") or 0) or None, messages=messages)

    def pull(self, spec: str, report: Report, cancelled: Cancelled) -> str:
        return run_pull(spec, report, cancelled)

    def warm(self, model, cancelled: Cancelled) -> int:
        """Idle time: build the experts this model was asked for most in earlier runs (the
        record `stchat.usage` keeps), hottest first, within the free budget, until cancelled."""
        from stchat import usage

        cfg = model.config
        record = usage.load(model.bundle.path, (cfg.num_layers, cfg.num_experts))
        return model.warm_experts(record, cancelled)

    def save_usage(self, model) -> None:
        """Add this run's router counts to the model's record (when the model is unloaded)."""
        from stchat import usage

        usage.save(model.bundle.path, model.expert_usage())

    def delete(self, name: str) -> None:
        from stchat.paths import models_dir

        path = models_dir() / name
        if not (path / "manifest.json").is_file():
            raise FileNotFoundError(f"{name}: not an installed model")
        trash = path.with_name(f".{name}.deleting")
        path.rename(trash)  # atomic: the model disappears at once, then its files go
        shutil.rmtree(trash, ignore_errors=True)


class _ReportStream:
    """A text stream for `stchat.progress.Reporter` that hands its lines to the UI, and that
    stops the pull (by raising from a write) once `cancelled()` is true."""

    def __init__(self, report: Report, cancelled: Cancelled):
        self.report, self.cancelled = report, cancelled

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if self.cancelled():
            raise PullCancelled("pull stopped")
        transient = text.startswith("\r")
        clean = text.replace("\r", "").replace("\x1b[K", "").strip()
        if clean:
            self.report(clean, transient)
        return len(text)

    def flush(self) -> None:
        pass


def run_pull(spec_text: str, report: Report, cancelled: Cancelled) -> str:
    """`stchat pull SPEC` with its progress sent to `report`; returns the installed name."""
    from stchat import catalog
    from stchat.catalog import LocalSpec
    from stchat.hub import Hub
    from stchat.progress import Reporter
    from stchat.pull import pull_hub, pull_local

    reporter = Reporter(stream=_ReportStream(report, cancelled), tty=True)
    spec = catalog.parse_spec(spec_text.strip(), "gguf")
    if isinstance(spec, LocalSpec):
        return pull_local(spec.path, reporter)
    # yes=True: never ask on the terminal from a worker thread (the warning is still reported)
    return pull_hub(spec, Hub.from_environment(), reporter, keep_source=False, yes=True)


def describe_error(error: BaseException) -> str:
    """One readable line for a notification, never a traceback."""
    text = " ".join(str(error).split())
    if isinstance(error, MemoryError):
        return "out of memory" + (f": {text}" if text else "")
    if isinstance(error, FileNotFoundError) and error.filename:
        return f"{error.filename}: no such file or directory"
    return text or type(error).__name__
