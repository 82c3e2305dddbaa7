"""`stchat bench`: how fast a model runs here, and in how much memory, before anyone downloads it.

Each measured run is a fresh child process (`python -m stchat.bench_child`), so load time,
peak RSS and the expert cache start cold every time; the figures printed are medians over
`--runs`. A run loads the model, sends a first prompt (cold: every expert it asks for is built
on the way), spends idle time as the app does (building the experts it did not ask for, within
the budget, then moving the weights into huge pages once all are built), then times a second prompt (warm) and the decode. `--synthetic 4b|21b` measures a random-weight model with the real shapes (built
once into the cache directory, with progress on stderr), so speed and memory can be known
before gigabytes are fetched. stdout is data: a table, or one JSON object with `--json`.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from stchat.ask import FAST_ROUTING_HELP, context_length, memory_budget, parse_size
from stchat.exitcodes import ExitCode, UsageError

FIELDS = [  # key, label, format
    ("load_seconds", "load", "{:.2f} s"),
    ("cold_ttft_seconds", "first prompt, cold", "{:.2f} s"),
    ("idle_build_seconds", "then idle time (other experts, huge pages)", "{:.2f} s"),
    ("ttft_seconds", "time to first token", "{:.2f} s"),
    ("prefill_tps", "prefill", "{:.1f} tok/s"),
    ("decode_tps", "decode", "{:.2f} tok/s"),
    ("peak_rss", "peak RSS", "{:.0f} MiB"),
    ("hit_rate", "expert hit rate (decode)", "{:.1%}"),
    ("read_per_token", "expert bytes read per token", "{:.1f} MiB"),
    ("stall_per_token", "wait for experts per token", "{:.1f} ms"),
]


def _synthetic_spec(size: str, routing: str):
    from dataclasses import replace

    from runtime import synthetic
    return replace({"4b": synthetic.FULL_4B, "21b": synthetic.FULL_21B}[size], routing=routing)


def synthetic_dir() -> Path:
    import platformdirs
    return Path(os.environ.get("STCHAT_CACHE") or platformdirs.user_cache_dir("stchat")) / "synthetic"


def _write_synthetic_gguf(size: str, routing: str, path: Path, reporter) -> None:
    from runtime import synthetic
    synthetic.write_gguf(_synthetic_spec(size, routing), path,
                         progress=lambda done, total: reporter.stage("random tensors", done, total))


def synthetic_gguf(size: str, routing: str, log) -> Path:
    """The GGUF a synthetic bundle is converted from, kept in the cache (for running the same
    file in llama.cpp); the tensors are a function of their names, so it is the same file."""
    from stchat.progress import Reporter

    gguf = synthetic_dir() / f"{size}-{routing}.gguf"
    if gguf.is_file():
        return gguf
    gguf.parent.mkdir(parents=True, exist_ok=True)
    partial = gguf.with_suffix(".gguf.partial")
    log(f"writing the synthetic {size} GGUF ({routing} routing) once, to {gguf}")
    reporter = Reporter()
    try:
        _write_synthetic_gguf(size, routing, partial, reporter)
        partial.rename(gguf)
    finally:
        reporter.done()
        partial.unlink(missing_ok=True)
    return gguf


def synthetic_bundle(size: str, routing: str, log) -> Path:
    """The cached bundle of a full-size synthetic model, built on first use (from the kept GGUF
    when `synthetic_gguf` wrote one, else from a temporary one)."""
    import runtime
    from stchat.progress import Reporter

    root = synthetic_dir()
    bundle = root / f"{size}-{routing}"
    if (bundle / "manifest.json").is_file():
        return bundle
    root.mkdir(parents=True, exist_ok=True)
    kept = root / f"{size}-{routing}.gguf"
    gguf = kept if kept.is_file() else root / f"{size}-{routing}.gguf.partial"
    log(f"building a synthetic {size} model ({routing} routing) once, into {bundle}")
    reporter = Reporter()
    try:
        if gguf != kept:
            _write_synthetic_gguf(size, routing, gguf, reporter)
        runtime.convert(gguf, bundle, progress=reporter.stage)
    finally:
        reporter.done()
        if gguf != kept:
            gguf.unlink(missing_ok=True)
    return bundle


def run_once(bundle: Path, args: dict, cap: int | None = None) -> dict:
    """One measured run in a fresh process; with `cap`, inside a memory cgroup of that size,
    the bundle's files evicted from the page cache first."""
    command = [sys.executable, "-m", "stchat.bench_child", str(bundle), json.dumps(args)]
    if cap is None:
        return _result(subprocess.run(command, capture_output=True, text=True))
    from stchat import cgroup

    files = [path for path in Path(bundle).rglob("*") if path.is_file()]
    child, peak = cgroup.run(command, cap, files)
    if child.returncode == -9:
        raise RuntimeError(f"the run was killed (out of memory in the {cap / 2**20:.0f} MiB cap?)")
    result = _result(child)
    result["cgroup_peak"] = peak / 2**20 if peak is not None else None
    return result


def _result(child: subprocess.CompletedProcess) -> dict:
    if child.returncode != 0:
        message = (child.stderr.strip().splitlines() or ["benchmark run failed"])[-1]
        raise RuntimeError(message.removeprefix("stchat: error: "))
    return json.loads(child.stdout)


def summarize(runs: list[dict]) -> dict:
    keys = [k for k in runs[0] if all(isinstance(r.get(k), (int, float)) for r in runs)]
    summary = {k: statistics.median(r[k] for r in runs) for k in keys}
    summary.update({k: v for k, v in runs[0].items() if isinstance(v, str)})  # the same in every run
    summary["runs"] = len(runs)
    return summary


def bench_command(
    model: Annotated[Optional[str], typer.Option("-m", "--model", help="Installed model, bundle or .gguf.")] = None,
    synthetic: Annotated[Optional[str], typer.Option(
        "--synthetic", help="Measure a random-weight model with the real shapes: 4b or 21b.")] = None,
    routing: Annotated[str, typer.Option(help="Synthetic routing: uniform (worst case) or skewed (like the real models).")] = "uniform",
    memory: Annotated[Optional[int], typer.Option("--memory", metavar="SIZE", parser=parse_size,
                                                  help="Memory budget, e.g. 1GiB.")] = None,
    cap: Annotated[Optional[int], typer.Option(
        "--cap", metavar="SIZE", parser=parse_size,
        help="Run in a memory cgroup of SIZE (RSS + page cache; Linux), files evicted from the page "
             "cache first: a machine that small. The budget defaults to SIZE.")] = None,
    prompt_tokens: Annotated[int, typer.Option("--prompt-tokens", min=1)] = 512,
    gen_tokens: Annotated[int, typer.Option("--gen-tokens", min=1)] = 64,
    threads: Annotated[Optional[int], typer.Option("-t", "--threads", min=1)] = None,
    context: Annotated[Optional[int], typer.Option(
        "-c", "--context", min=1, metavar="TOKENS",
        help="Context to load the model with (default: $STCHAT_CONTEXT or as `ask` would).")] = None,
    fast_routing: Annotated[float, typer.Option(
        "--fast-routing", min=0.0, metavar="TOLERANCE", help=FAST_ROUTING_HELP)] = 0.0,
    runs: Annotated[int, typer.Option("--runs", min=1)] = 3,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """Measure load time, prefill and decode speed, peak memory and expert cache behaviour."""
    if (model is None) == (synthetic is None):
        raise UsageError("give either -m MODEL or --synthetic 4b|21b")
    if synthetic is not None and synthetic not in ("4b", "21b"):
        raise UsageError(f"--synthetic takes 4b or 21b, not {synthetic!r}")
    if routing not in ("uniform", "skewed"):
        raise UsageError(f"--routing takes uniform or skewed, not {routing!r}")
    if cap is not None:
        from stchat import cgroup
        cgroup.create(cap).remove()  # fails here, in one line, before any model is built
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    if synthetic:
        bundle, name = synthetic_bundle(synthetic, routing, log), f"synthetic-{synthetic}-{routing}"
    else:
        from stchat.models import resolve
        resolved = resolve(model)
        bundle, name = resolved.path, resolved.name
    memory, context = memory_budget(memory), context_length(context)
    if cap is not None and memory is None:
        memory = cap  # the runtime's own default reads the machine's free memory, not the cap
    if context is not None and context < prompt_tokens + gen_tokens:
        raise UsageError(f"--context {context} cannot hold --prompt-tokens {prompt_tokens} + --gen-tokens {gen_tokens}")
    args = {"memory": memory, "threads": threads, "prompt_tokens": prompt_tokens, "gen_tokens": gen_tokens,
            "context": context, "fast_routing": fast_routing}
    results = []
    for index in range(runs):
        log(f"run {index + 1}/{runs} ...")
        results.append(run_once(bundle, args, cap))
    summary = summarize(results)
    summary.update(model=name, memory_budget=memory, cap=cap, per_run=results)
    if json_output:
        print(json.dumps(summary))
        return
    print(f"{name}: median of {runs} run(s), {prompt_tokens}-token prompt, {gen_tokens} generated tokens"
          + (f", in a {cap / 2**20:.0f} MiB memory cgroup" if cap else ""))
    for key, label, fmt in FIELDS:
        print(f"  {label:30} {fmt.format(summary[key])}")
    print(f"  {'context':30} {summary['context']:.0f} tokens, KV cache {summary['kv_cache'] / 2**20:.0f} MiB when full "
          f"({summary['kv_dtype']})")
    if summary.get("minimum_budget"):
        print(f"  {'always resident (full context)':30} {summary['always_resident'] / 2**20:.0f} MiB")
        print(f"  {'smallest budget accepted':30} {summary['minimum_budget'] / 2**20:.0f} MiB")
    if summary.get("cgroup_peak") is not None:
        print(f"  {'peak RSS + page cache (cgroup)':30} {summary['cgroup_peak']:.0f} MiB")
    raise typer.Exit(int(ExitCode.OK))
