"""Full-size (4B) benchmark of the runtime: conversion, load, session builds, prefill, decode, memory.

Why this exists: the unit tests run tiny shapes, where every cost that matters at full size
(prepacking 1024 expert sessions, a 151936-row lm_head, Python glue per layer, resident
memory) is invisible. This script builds a full-size synthetic SmallThinker-4B GGUF with
random weights (`runtime.synthetic.FULL_4B`, ~2.4 GB, cached), converts it with
`runtime.convert` and times the runtime on it, so changes to `runtime/` can be judged on
numbers instead of guesses. Random weights give the same shapes and bytes as the real
model, so speed and memory are representative; the text it generates is not.

Every measured run happens in a fresh subprocess (clean page cache of sessions, honest peak
RSS); figures are medians over `--runs`. A JSON summary goes to stdout and a Markdown section
is appended to `benchmarks/PROFILE-4B.md` (unless `--no-results`).

    PYTHONPATH=. python benchmarks/profile_4b.py [--work /tmp/stchat-bench] [--runs 3]
        [--threads 2,1] [--prompt 512] [--decode 64] [--profile-convert] [--note TEXT]
    PYTHONPATH=. python benchmarks/profile_4b.py --spec TINY_4B_LIKE --runs 1 --no-results   # smoke test
    PYTHONPATH=. python benchmarks/profile_4b.py --report summary.json   # re-render a saved summary

Each run also times one instrumented decode loop and one prefill chunk with every session call
and per-layer model method wrapped in a timer (ORT time vs the Python around it), plus a few
isolated micro-costs, so the per-token table says where the time goes.

Decode is compared with a memory-bandwidth bound: the bytes one token must read (every
layer's attention weights and router, 4 active experts per layer, lm_head, the KV cache)
divided by `--bandwidth` (23 GB/s by default, the order of this class of machine).
"""
from __future__ import annotations

import argparse
import cProfile
import datetime
import json
import os
import platform
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_WORK = Path("/tmp/stchat-bench")
RESULTS = REPO / "benchmarks" / "PROFILE-4B.md"


# ----------------------------------------------------------------------------- helpers
def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def rss_mb() -> float:
    import psutil
    return psutil.Process().memory_info().rss / 2**20


def rss_split_mb() -> dict:
    """Anonymous (heap: prepacked weights, KV, arenas) vs file-backed (mapped bundle pages) RSS."""
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(("RssAnon:", "RssFile:")):
                out[line.split(":")[0]] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        flags = next((l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("flags")), "")
        simd = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni") if f" {f}" in flags]
    except OSError:
        simd = []
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import onnxruntime
    return {"nproc": os.cpu_count(), "cpu": model, "simd": simd, "mem_gb": round(mem_gb, 1),
            "python": platform.python_version(), "numpy": np.__version__,
            "onnxruntime": onnxruntime.__version__}


def revision() -> str:
    """The commit measured, marked dirty when runtime/ has uncommitted changes."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "runtime"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + ("+dirty runtime/" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_child(args: list[str]) -> dict:
    """Run this script in a fresh interpreter; its last stdout line is a JSON object."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"child {args[:2]} failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- build
def build_gguf(work: Path, spec: str) -> tuple[Path, float | None]:
    from runtime import synthetic
    path, record = work / f"{spec}.gguf", work / f"{spec}.gguf.json"
    if path.is_file():
        return path, (json.loads(record.read_text())["seconds"] if record.is_file() else None)
    work.mkdir(parents=True, exist_ok=True)
    tmp = work / f".{spec}.gguf.tmp"
    start = time.perf_counter()
    synthetic.write_gguf(getattr(synthetic, spec), tmp)
    os.replace(tmp, path)
    seconds = time.perf_counter() - start
    record.write_text(json.dumps({"seconds": seconds}))
    return path, seconds


def child_convert(gguf: str, dest: str, profile: str | None) -> dict:
    """Convert in this (fresh) process: wall/CPU time per stage, peak RSS, optional cProfile."""
    import runtime
    stages: dict[str, float] = {}
    start = time.perf_counter()

    def progress(stage: str, done: int, total: int) -> None:
        stages[stage] = time.perf_counter() - start   # time at the last report of each stage

    import threading
    peak_anon, done = [0.0], threading.Event()

    def sample() -> None:   # ru_maxrss counts the memory-mapped GGUF pages too; track the heap apart
        while not done.wait(0.2):
            peak_anon[0] = max(peak_anon[0], rss_split_mb().get("RssAnon", 0.0))
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    profiler = cProfile.Profile() if profile else None
    cpu0 = cpu_seconds()
    if profiler:
        profiler.enable()
    runtime.convert(gguf, dest, progress=progress)
    if profiler:
        profiler.disable()
        profiler.dump_stats(profile)
    wall = time.perf_counter() - start
    done.set()
    return {"convert_peak_anon_mb": peak_anon[0], "convert_s": wall, "convert_cpu_s": cpu_seconds() - cpu0, "convert_peak_rss_mb": peak_rss_mb(),
            "stage_end_s": stages}


def convert_bundle(work: Path, gguf: Path, profile: bool) -> tuple[Path, dict]:
    """The bundle, converted once; the conversion figures are cached beside it. With `profile`,
    convert again under cProfile into a scratch bundle (deleted after) and return its figures."""
    bundle, record = gguf.with_suffix(".bundle"), gguf.with_suffix(".convert.json")
    if profile:
        dest, prof = gguf.with_suffix(".profiled.bundle"), gguf.with_suffix(".convert.prof")
        shutil.rmtree(dest, ignore_errors=True)
        stats = run_child(["--child-convert", str(gguf), str(dest), "--profile-out", str(prof)])
        shutil.rmtree(dest, ignore_errors=True)
        return bundle, dict(stats, profile=str(prof))
    if bundle.is_dir() and record.is_file():
        return bundle, json.loads(record.read_text())
    shutil.rmtree(bundle, ignore_errors=True)
    stats = run_child(["--child-convert", str(gguf), str(bundle)])
    record.write_text(json.dumps(stats, indent=1))
    return bundle, stats


# ----------------------------------------------------------------------------- bytes per token
def token_bytes(bundle: Path, context: int) -> dict:
    """Bytes one decoded token must read, from the bundle's manifest."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    cfg, tensors = manifest["config"], manifest["tensors"]

    def size(name: str) -> int:
        spec = tensors[name]
        return int(np.prod(spec["shape"])) * np.dtype(spec["dtype"]).itemsize

    layers = cfg["num_layers"]
    attention = sum(size(n) for n in tensors if n.startswith("layers.") and "/router" not in n)
    router = sum(size(n) for n in tensors if n.endswith("/router.weight"))
    expert = sum(int(np.prod(s["shape"])) * np.dtype(s["dtype"]).itemsize
                 for s in manifest["experts"]["arrays"].values())
    head_name = "lm_head" if "lm_head.qweight" in tensors else "embed_tokens"
    head = size(f"{head_name}.qweight") + size(f"{head_name}.scales") + size("norm.weight")
    kv = layers * 2 * cfg["num_kv_heads"] * context * cfg["head_dim"] * 4
    active = layers * cfg["num_experts_per_tok"] * expert
    return {"layers": layers, "active": cfg["num_experts_per_tok"], "vocab": cfg["vocab_size"],
            "hidden": cfg["hidden_size"], "attention_norms": attention, "routers": router, "experts_active": active,
            "expert_bytes": expert, "lm_head": head, "kv_cache": kv,
            "total": attention + router + active + head + kv,
            "dense_bin": (bundle / "dense.bin").stat().st_size,
            "experts_bin": (bundle / "experts.bin").stat().st_size}


# ----------------------------------------------------------------------------- one measured run
class Timers:
    """Accumulating wall-clock timers installed by wrapping callables (breakdown pass only)."""

    def __init__(self):
        self.total: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def wrap(self, name: str, fn):
        total, calls, clock = self.total, self.calls, time.perf_counter
        total.setdefault(name, 0.0)
        calls.setdefault(name, 0)

        def timed(*a, **k):
            t = clock()
            try:
                return fn(*a, **k)
            finally:
                total[name] += clock() - t
                calls[name] += 1
        return timed


def child_run(bundle: str, threads: int, prompt: int, decode: int, breakdown_tokens: int,
              breakdown_prefill: int, seed: int) -> dict:
    import runtime
    out: dict = {"threads": threads, "loadavg_start": os.getloadavg()[0]}
    cpu0 = cpu_seconds()

    t = time.perf_counter()
    model = runtime.load(bundle, threads=threads)
    out["load_s"] = time.perf_counter() - t
    out["rss_after_load_mb"] = rss_mb()
    out.update({f"{k.lower()}_after_load_mb": v for k, v in rss_split_mb().items()})
    cfg = model.config

    # warm-up: every expert session, timed one by one
    builds = []
    t = time.perf_counter()
    for layer in range(cfg.num_layers):
        for expert in range(cfg.num_experts):
            s = time.perf_counter()
            model.experts.session(layer, expert)
            builds.append(time.perf_counter() - s)
    out["sessions_build_all_s"] = time.perf_counter() - t
    out["session_build_mean_ms"] = 1e3 * statistics.mean(builds)
    out["session_build_median_ms"] = 1e3 * statistics.median(builds)
    out["session_count"] = len(builds)
    out["rss_after_warmup_mb"] = rss_mb()
    out.update({f"{k.lower()}_after_warmup_mb": v for k, v in rss_split_mb().items()})

    rng = np.random.default_rng(seed)
    ids = rng.integers(0, cfg.vocab_size, size=prompt)
    cache = model.new_cache(prompt + decode + breakdown_tokens + breakdown_prefill + 16)

    t = time.perf_counter()
    logits = model.prefill(ids, cache)
    out["prefill_s"] = time.perf_counter() - t
    out["prefill_tps"] = prompt / out["prefill_s"]

    # decode: greedy, one token per prefill call; two untimed steps first
    tok = int(np.argmax(logits))
    for _ in range(2):
        tok = int(np.argmax(model.prefill([tok], cache)))
    steps = []
    t = time.perf_counter()
    for _ in range(decode):
        s = time.perf_counter()
        tok = int(np.argmax(model.prefill([tok], cache)))
        steps.append(time.perf_counter() - s)
    out["decode_s"] = time.perf_counter() - t
    out["decode_tps"] = decode / out["decode_s"]
    out["decode_token_median_ms"] = 1e3 * statistics.median(steps)
    out["decode_token_min_ms"] = 1e3 * min(steps)
    out["decode_context_end"] = cache.length

    # breakdown passes: the same decode loop, then one prefill chunk, with the call tree timed
    timers = instrument(model)

    def decode_loop():
        nonlocal tok
        for _ in range(breakdown_tokens):
            tok = int(np.argmax(model.prefill([tok], cache)))
    out.update(breakdown(timers, decode_loop, breakdown_tokens, "bd"))
    chunk = rng.integers(0, cfg.vocab_size, size=breakdown_prefill)
    out.update(breakdown(timers, lambda: model.prefill(chunk, cache, chunk_size=breakdown_prefill),
                         breakdown_prefill, "pf"))
    out.update(micro(model, cache))

    stats = getattr(getattr(model.experts, "cache", None), "stats", None)
    if stats is not None:   # the expert cache's own books, when the runtime keeps them
        out.update({"cache_hits": stats.hits, "cache_misses": stats.misses,
                    "cache_stall_s": stats.stall_seconds, "cache_load_s": stats.load_seconds})
    out["rss_end_mb"] = rss_mb()
    out["peak_rss_mb"] = peak_rss_mb()
    out["cpu_s"] = cpu_seconds() - cpu0
    out["loadavg_end"] = os.getloadavg()[0]
    model.close()
    return out


def instrument(model) -> Timers:
    """Wrap the sessions' run calls and the model's per-layer methods with timers (for good)."""
    timers = Timers()
    # ORT calls (instance attributes shadow the class methods)
    for session in model.attention:
        session.run_with_iobinding = timers.wrap("ort.attention", session.run_with_iobinding)
    cfg = model.config
    for layer in range(cfg.num_layers):       # all built by the warm-up: session() only looks them up
        for expert in range(cfg.num_experts):
            session = model.experts.session(layer, expert)
            session.run = timers.wrap("ort.experts", session.run)
    model.head.run = timers.wrap("ort.head", model.head.run)
    # the Python methods that contain them
    # (a method the runtime no longer has simply reads as 0 in the table)
    for name in ("embed", "route", "_attend", "_moe", "head_logits"):
        if hasattr(model, name):
            setattr(model, name, timers.wrap(f"py.{name}", getattr(model, name)))
    for name, key in (("run", "py.experts.run"), ("prefetch", "py.prefetch")):
        if hasattr(model.experts, name):
            setattr(model.experts, name, timers.wrap(key, getattr(model.experts, name)))
    return timers


def breakdown(timers: Timers, run, tokens: int, prefix: str) -> dict:
    """Time `run()` (which processes `tokens` tokens) and split it per part, in ms per token."""
    for key in timers.total:
        timers.total[key], timers.calls[key] = 0.0, 0
    start = time.perf_counter()
    run()
    wall = time.perf_counter() - start
    T = dict.fromkeys(("ort.attention", "ort.experts", "ort.head", "py._attend", "py._moe", "py.experts.run",
                       "py.head_logits", "py.embed", "py.route", "py.prefetch"), 0.0) | timers.total
    parts = {
        "attention_ort": T["ort.attention"],
        "attention_glue": T["py._attend"] - T["ort.attention"],       # io_binding, binds, get_outputs
        "experts_ort": T["ort.experts"],
        "expert_lookup": T["py.experts.run"] - T["ort.experts"],     # ExpertStore.run: cache lookup
        "moe_numpy": T["py._moe"] - T["py.experts.run"],              # unique/nonzero, gather, weighting
        "head_ort": T["ort.head"],
        "head_glue": T["py.head_logits"] - T["ort.head"],
        "embed": T["py.embed"],
        "route": T["py.route"],
        "prefetch": T["py.prefetch"],
    }
    parts["other_python"] = wall - sum(parts.values())                # loop, prefill checks, argmax
    result = {f"{prefix}_{k}_ms": 1e3 * v / tokens for k, v in parts.items()}
    result[f"{prefix}_total_ms"] = 1e3 * wall / tokens
    result[f"{prefix}_expert_calls"] = timers.calls.get("ort.experts", 0)
    result[f"{prefix}_tokens"] = tokens
    return result


def micro(model, cache) -> dict:
    """Isolated costs of single steps of the per-token path (to rank the fixes)."""
    cfg, out = model.config, {}
    h = np.random.default_rng(1).standard_normal((1, cfg.hidden_size), dtype=np.float32)

    def bench(fn, n: int) -> float:
        fn()
        t = time.perf_counter()
        for _ in range(n):
            fn()
        return 1e6 * (time.perf_counter() - t) / n  # us

    session = model.experts.session(0, 0)
    run = type(session).run.__get__(session)    # the unwrapped method
    out["us_expert_run"] = bench(lambda: run(["y"], {"h": h}), 300)
    # the same expert through a prebuilt IOBinding
    import onnxruntime as ort
    y = np.empty_like(h)
    binding = session.io_binding()
    binding.bind_ortvalue_input("h", ort.OrtValue.ortvalue_from_numpy(h))
    binding.bind_ortvalue_output("y", ort.OrtValue.ortvalue_from_numpy(y))
    rwb = type(session).run_with_iobinding.__get__(session)
    out["us_expert_run_prebound"] = bench(lambda: rwb(binding), 300)

    # cost of building and filling an attention IOBinding, without running it
    attn = model.attention[0]
    x = np.zeros((1, 1, cfg.hidden_size), np.float32)

    def bind():
        b = attn.io_binding()
        b.bind_cpu_input("hidden", x)
        b.bind_cpu_input("seqlens_k", np.array([cache.length - 1], np.int32))
        b.bind_cpu_input("total_length", np.array(cache.length, np.int32))
        if cfg.rope_layers[0]:
            b.bind_ortvalue_input("rope.cos", model._rope_values[0])
            b.bind_ortvalue_input("rope.sin", model._rope_values[1])
        b.bind_ortvalue_input("past_key", cache.key_values[0])
        b.bind_ortvalue_input("past_value", cache.value_values[0])
        b.bind_ortvalue_output("present_key", cache.key_values[0])
        b.bind_ortvalue_output("present_value", cache.value_values[0])
        b.bind_output("hidden_out")
        b.bind_output("normed")
    out["us_attention_binding_setup"] = bench(bind, 300)

    # numpy pieces
    layer_router = model.routers[0]
    out["us_route_numpy"] = bench(lambda: type(model).route(model, 0, h), 1000)
    out["us_router_matmul_only"] = bench(lambda: h @ layer_router, 1000)
    ids = np.array([5])
    out["us_embed_one"] = bench(lambda: type(model).embed(model, ids), 1000)
    head_run = type(model.head).run.__get__(model.head)
    out["us_head_run"] = bench(lambda: head_run(["logits"], {"x": h}), 30)
    logits = head_run(["logits"], {"x": h})[0]
    out["us_argmax_vocab"] = bench(lambda: int(np.argmax(logits[0])), 300)
    return out


# ----------------------------------------------------------------------------- report
def median_of(runs: list[dict]) -> dict:
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return {k: {"median": statistics.median(r[k] for r in runs), "min": min(r[k] for r in runs),
                "max": max(r[k] for r in runs)} for k in keys}


def fmt(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}"


def markdown(summary: dict) -> str:
    m, conv, tb = summary["machine"], summary["convert"], summary["token_bytes"]
    lines = [f"## {summary['date']} — {m['nproc']} CPU {m['cpu']} ({', '.join(m['simd']) or 'no AVX2'}), "
             f"onnxruntime {m['onnxruntime']}", ""]
    lines += [f"Revision `{summary.get('revision', '?')}`. Synthetic {summary.get('spec', 'FULL_4B')} (random weights, Q4_0 GGUF {fmt(summary['gguf_bytes'] / 1e9, 2)} GB -> "
              f"bundle dense.bin {fmt(tb['dense_bin'] / 1e9, 2)} GB + experts.bin {fmt(tb['experts_bin'] / 1e9, 2)} GB). "
              f"Python {m['python']}, numpy {m['numpy']}, {m['mem_gb']} GB RAM. "
              f"{summary['runs']} runs per thread count, each in a fresh process; medians (min–max). "
              f"Prompt {summary['prompt']} random ids (prefill chunk 256), decode {summary['decode']} greedy "
              f"tokens after every expert session was built. {summary['note']}", ""]
    stages = conv.get("stage_end_s", {})
    lines += [f"Conversion (`runtime.convert`, GGUF Q4_0 -> bundle): {fmt(conv['convert_s'])} s wall, "
              f"{fmt(conv['convert_cpu_s'])} s CPU, peak RSS {fmt(conv['convert_peak_rss_mb'], 0)} MB"
              + (f" of which at most {fmt(conv['convert_peak_anon_mb'], 0)} MB anonymous (the rest is the "
                 f"memory-mapped GGUF)" if "convert_peak_anon_mb" in conv else "")
              + (f" (layers done at {fmt(stages['layers'])} s, checksums {fmt(stages['checksums'] - stages.get('layers', 0))} s)"
                 if "layers" in stages and "checksums" in stages else "")
              + (f"; GGUF generation {fmt(summary['gguf_s'])} s" if summary.get("gguf_s") else "") + ".", ""]
    profiled = summary.get("convert_profiled")
    if profiled:
        lines += [f"Conversion under cProfile ({fmt(profiled['convert_s'])} s with profiling overhead; peak "
                  f"anonymous RSS {fmt(profiled.get('convert_peak_anon_mb', 0), 0)} MB), heaviest calls:", "",
                  "| function | own s | cumulative s |", "|---|---|---|"]
        lines += [f"| `{name}` | {fmt(tt, 2)} | {fmt(ct, 2)} |" for name, tt, ct in profiled["top"]]
        lines.append("")
    rows = [
        ("load (`runtime.load`)", "load_s", "s", 2, 1),
        ("build all expert sessions", "sessions_build_all_s", "s", 2, 1),
        ("per expert session build (mean)", "session_build_mean_ms", "ms", 2, 1),
        ("per expert session build (median)", "session_build_median_ms", "ms", 2, 1),
        (f"prefill {summary['prompt']} tokens", "prefill_s", "s", 2, 1),
        ("prefill throughput", "prefill_tps", "tok/s", 1, 1),
        (f"decode {summary['decode']} tokens", "decode_tps", "tok/s", 2, 1),
        ("decode per token (median)", "decode_token_median_ms", "ms", 1, 1),
        ("RSS after load", "rss_after_load_mb", "MB", 0, 1),
        ("  of which anonymous (heap)", "rssanon_after_load_mb", "MB", 0, 1),
        ("  of which file-backed (mapped bundle)", "rssfile_after_load_mb", "MB", 0, 1),
        ("RSS after warm-up (all sessions)", "rss_after_warmup_mb", "MB", 0, 1),
        ("  of which anonymous (heap)", "rssanon_after_warmup_mb", "MB", 0, 1),
        ("  of which file-backed (mapped bundle)", "rssfile_after_warmup_mb", "MB", 0, 1),
        ("RSS at end", "rss_end_mb", "MB", 0, 1),
        ("peak RSS (ru_maxrss)", "peak_rss_mb", "MB", 0, 1),
        ("load average at start", "loadavg_start", "", 2, 1),
    ]
    results = summary["results"]
    threads = list(results)
    lines += ["| metric | " + " | ".join(f"threads={t}" for t in threads) + " |",
              "|---|" + "---|" * len(threads)]
    for label, key, unit, digits, _ in rows:
        cells = []
        if key not in results[threads[0]]:
            continue
        for t in threads:
            s = results[t][key]
            cells.append(f"{fmt(s['median'], digits)} {unit} ({fmt(s['min'], digits)}–{fmt(s['max'], digits)})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    bd_tokens = int(results[threads[0]]["bd_tokens"]["median"])
    pf_tokens = int(results[threads[0]].get("pf_tokens", {"median": 0})["median"])
    lines += ["", f"Where the time goes, in ms per token (medians): separate instrumented passes, a "
              f"{bd_tokens}-token decode loop" + (f" and one {pf_tokens}-token prefill chunk" if pf_tokens else "")
              + f", with every "
              f"session run and model method wrapped in a timer. ORT = inside `session.run`; the rest is "
              f"Python/numpy around it.", "",
              "| part | " + " | ".join(f"decode, threads={t} | prefill, threads={t}" for t in threads) + " |",
              "|---|" + "---|---|" * len(threads)]
    parts = [("attention sessions (ORT `run_with_iobinding`)", "attention_ort"),
             ("attention glue (`io_binding()`, 11 binds, `get_outputs`)", "attention_glue"),
             ("expert sessions (ORT `run`)", "experts_ort"),
             ("expert lookup (`ExpertStore.run` around `run`)", "expert_lookup"),
             ("MoE numpy (`unique`/`nonzero`, gather, weighted add)", "moe_numpy"),
             (f"head session (norm + lm_head, {tb['vocab']} rows)", "head_ort"),
             ("head glue", "head_glue"),
             ("embed (dequantize rows)", "embed"),
             ("route (numpy router + top-k)", "route"),
             ("prefetch (`np.unique` + cache peeks)", "prefetch"),
             ("other Python (layer loop, checks, argmax)", "other_python"),
             ("**total (instrumented)**", "total")]
    def cell(t: str, key: str, digits: int, scale: float = 1.0) -> str:
        value = results[t].get(key)   # summaries from older versions of this script lack some keys
        return "–" if value is None else fmt(value["median"] * scale, digits)
    for label, key in parts:
        cells = []
        for t in threads:
            cells += [cell(t, f"bd_{key}_ms", 2), cell(t, f"pf_{key}_ms", 3)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append(f"| expert session calls | " + " | ".join(
        f"{cell(t, 'bd_expert_calls', 0, 1 / bd_tokens)} per token | {cell(t, 'pf_expert_calls', 0)} per chunk"
        for t in threads) + " |")
    lines += ["", "Isolated micro-costs (µs, medians):", "",
              "| step | " + " | ".join(f"threads={t}" for t in threads) + " |",
              "|---|" + "---|" * len(threads)]
    for label, key in [(f"one expert `session.run` ([1,{tb['hidden']}])", "us_expert_run"),
                       ("same expert, prebuilt IOBinding", "us_expert_run_prebound"),
                       ("attention IOBinding create + 11 binds (no run)", "us_attention_binding_setup"),
                       ("`route` (router matmul + top-k + weights)", "us_route_numpy"),
                       ("router matmul alone", "us_router_matmul_only"),
                       ("`embed` one token", "us_embed_one"),
                       ("head `session.run` (lm_head)", "us_head_run"),
                       (f"argmax over {tb['vocab']} logits", "us_argmax_vocab")]:
        lines.append(f"| {label} | " + " | ".join(cell(t, key, 1) for t in threads) + " |")
    bw = summary["bandwidth_gbs"]
    lines += ["", f"Bandwidth bound for decode at context ~{summary['context']}: one token reads "
              f"{fmt(tb['total'] / 1e6)} MB (attention+norms {fmt(tb['attention_norms'] / 1e6)} MB, routers "
              f"{fmt(tb['routers'] / 1e6)} MB, {tb['active']} experts x {tb['layers']} layers {fmt(tb['experts_active'] / 1e6)} MB, "
              f"lm_head {fmt(tb['lm_head'] / 1e6)} MB, KV cache {fmt(tb['kv_cache'] / 1e6)} MB); at {bw} GB/s "
              f"that is {fmt(1e3 * tb['total'] / (bw * 1e9), 1)} ms, **{fmt(bw * 1e9 / tb['total'], 1)} tok/s**. "
              + "; ".join(f"threads={t}: measured {fmt(results[t]['decode_tps']['median'], 2)} tok/s = "
                          f"{fmt(100 * results[t]['decode_tps']['median'] * tb['total'] / (bw * 1e9), 0)}% of the bound"
                          for t in threads) + ".", ""]
    return "\n".join(lines) + "\n"


HEADER = """# Runtime benchmarks

Appended by `benchmarks/profile_4b.py` (see its docstring). Synthetic random-weight models
with the real shapes; figures from shared 2-vCPU machines are noisy: compare runs made on the
same machine and look at the min–max ranges and the load average.

"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--spec", default="FULL_4B", help="a SyntheticSpec of runtime.synthetic "
                        "(TINY_4B_LIKE to smoke-test this script in seconds)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", default=None, help="comma-separated thread counts (default: all cores)")
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--decode", type=int, default=64)
    parser.add_argument("--breakdown-tokens", type=int, default=32, help="instrumented decode tokens")
    parser.add_argument("--breakdown-prefill", type=int, default=256, help="instrumented prefill chunk")
    parser.add_argument("--bandwidth", type=float, default=23.0, help="GB/s for the decode bound")
    parser.add_argument("--profile-convert", action="store_true",
                        help="convert again under cProfile (to a scratch bundle) and print the top costs")
    parser.add_argument("--note", default="", help="free text for PROFILE-4B.md (e.g. machine load)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--no-results", action="store_true")
    parser.add_argument("--revision", help="what is measured (default: git HEAD of this checkout)")
    parser.add_argument("--report", type=Path, metavar="JSON",
                        help="only render a saved JSON summary (this script's stdout) into --results")
    # internal: child processes
    parser.add_argument("--child-convert", nargs=2, metavar=("GGUF", "DEST"))
    parser.add_argument("--profile-out")
    parser.add_argument("--child-run", metavar="BUNDLE")
    parser.add_argument("--child-threads", type=int)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.child_convert:
        print(json.dumps(child_convert(*args.child_convert, args.profile_out)))
        return 0
    if args.child_run:
        print(json.dumps(child_run(args.child_run, args.child_threads, args.prompt, args.decode,
                                   args.breakdown_tokens, args.breakdown_prefill, args.seed)))
        return 0

    if args.report:
        summary = json.loads(args.report.read_text())
        if args.note:
            summary["note"] = args.note
        bundle = args.work / f"{summary.get('spec', args.spec)}.bundle"
        if "vocab" not in summary["token_bytes"] and bundle.is_dir():   # older summaries: recompute
            summary["token_bytes"] = token_bytes(bundle, summary["context"])
        for figures in summary["results"].values():   # the first version had one MoE glue figure
            if "bd_experts_glue_ms" in figures and "bd_moe_numpy_ms" not in figures:
                figures["bd_moe_numpy_ms"] = figures.pop("bd_experts_glue_ms")
            if "bd_expert_calls_per_token" in figures and "bd_expert_calls" not in figures:
                figures["bd_expert_calls"] = {k: v * figures["bd_tokens"]["median"]
                                              for k, v in figures.pop("bd_expert_calls_per_token").items()}
        write_results(args.results, summary)
        return 0

    from runtime.sessions import default_threads
    threads = [int(t) for t in args.threads.split(",")] if args.threads else [default_threads()]
    log = lambda msg: print(msg, file=sys.stderr, flush=True)

    log(f"GGUF in {args.work} ...")
    gguf, gguf_s = build_gguf(args.work, args.spec)
    log(f"  {gguf} ({gguf.stat().st_size / 1e9:.2f} GB)" + (f", written in {gguf_s:.0f} s" if gguf_s else ", cached"))
    bundle, conv = convert_bundle(args.work, gguf, profile=False)
    log(f"  convert: {conv['convert_s']:.1f} s wall, peak RSS {conv['convert_peak_rss_mb']:.0f} MB")
    profiled = None
    if args.profile_convert:
        profiled = convert_bundle(args.work, gguf, profile=True)[1]
        log(f"  profiled convert: {profiled['convert_s']:.1f} s; top costs:")
        stats = pstats.Stats(profiled["profile"], stream=sys.stderr).sort_stats("cumulative")
        stats.print_stats(25)
        # (file:line function, tottime, cumtime) of the heaviest calls by cumulative time
        rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][3])
        profiled["top"] = [(f"{Path(f).name}:{line} {fn}", tt, ct) for (f, line, fn), (_, _, tt, ct, _) in rows
                           if not fn.startswith("<") and fn not in ("convert", "_write", "child_convert")][:12]

    context = args.prompt + args.decode
    results, raw = {}, {}
    for n in threads:
        runs = []
        for r in range(args.runs):
            log(f"run {r + 1}/{args.runs}, threads={n} ...")
            runs.append(run_child(["--child-run", str(bundle), "--child-threads", str(n),
                                   "--prompt", str(args.prompt), "--decode", str(args.decode),
                                   "--breakdown-tokens", str(args.breakdown_tokens),
                                   "--breakdown-prefill", str(args.breakdown_prefill), "--seed", str(args.seed + r)]))
            log(f"  load {runs[-1]['load_s']:.2f} s, sessions {runs[-1]['sessions_build_all_s']:.1f} s, "
                f"prefill {runs[-1]['prefill_tps']:.1f} tok/s, decode {runs[-1]['decode_tps']:.2f} tok/s, "
                f"peak RSS {runs[-1]['peak_rss_mb']:.0f} MB")
        results[str(n)], raw[str(n)] = median_of(runs), runs

    summary = {
        "spec": args.spec,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "revision": args.revision or revision(),
        "machine": machine(), "runs": args.runs, "prompt": args.prompt, "decode": args.decode,
        "context": context, "bandwidth_gbs": args.bandwidth, "note": args.note,
        "gguf_bytes": gguf.stat().st_size, "gguf_s": gguf_s, "convert": conv, "convert_profiled": profiled,
        "token_bytes": token_bytes(bundle, context), "results": results, "raw": raw,
    }
    tb = summary["token_bytes"]
    summary["decode_bound_tps"] = args.bandwidth * 1e9 / tb["total"]
    print(json.dumps(summary, indent=1))
    if not args.no_results:
        write_results(args.results, summary)
    return 0


def write_results(path: Path, summary: dict) -> None:
    text = markdown(summary)
    if not path.exists():
        text = HEADER + text
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)
    print(f"appended to {path}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
