"""stchat beside llama.cpp on the same GGUF, run by run: writes benchmarks/RESULTS-PEER.md (issue 11).

The file is the project's full-size synthetic model with skewed routing (`stchat bench
--synthetic SIZE --routing skewed` converts exactly this GGUF, kept in the cache). For every
configuration the two engines run alternately (llama.cpp, stchat, llama.cpp, stchat, ...),
each run a fresh process with 2 threads, so both see the same machine state; capped rows run
in a memory cgroup of that size (RSS + page cache) with the engine's files evicted first.

    python benchmarks/peer.py [--runs 3] [--runs-21b 2] [--gen-tokens 32] [--only 4b|21b]

`--prompts 128,512` sets the two prompt lengths (short, long); shorter ones only to try the script.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import llama_runner
from results import revision
from stchat.ask import parse_size
from stchat.bench import synthetic_bundle, synthetic_gguf

ROUTING = "skewed"
# (label, result key, which way is better)
METRICS = {
    "decode": ("decode tok/s", "decode_tps", "higher"),
    "prefill": ("prefill tok/s (warm)", "prefill_tps", "higher"),
    "launch": ("launch to first token s (load + cold first prompt)", "launch_seconds", "lower"),
    "load": ("load s", "load_seconds", "lower"),
    "rss": ("peak RSS MiB", "peak_rss", "lower"),
    "cgroup": ("peak RSS + page cache MiB (cgroup)", "cgroup_peak", "lower"),
}


def configs(short: int, long: int) -> list[tuple]:
    """(size, cap, prompt tokens, [(metric, target)]) in the order they run. A target is issue 11's
    minimum ratio, except for "rss", where it is the most peak RSS may be over the bundle's bytes."""
    return [
        ("4b", None, short, [("decode", 1.5), ("prefill", 1.5), ("launch", 1.0), ("load", None), ("rss", 1.25)]),
        ("4b", None, long, [("prefill", 1.5), ("decode", None)]),
        ("4b", "1GiB", short, [("decode", 5.0), ("prefill", None), ("cgroup", None), ("rss", None)]),
        ("21b", None, short, [("decode", 1.2), ("prefill", None), ("launch", 1.0), ("load", None), ("rss", 1.25)]),
        ("21b", "8GiB", short, [("decode", 3.0), ("prefill", None), ("cgroup", None), ("rss", None)]),
    ]


def stchat_run(size: str, cap: str | None, prompt: int, gen: int) -> dict:
    command = [sys.executable, "-m", "stchat", "bench", "--synthetic", size, "--routing", ROUTING, "--runs", "1",
               "--threads", "2", "--prompt-tokens", str(prompt), "--gen-tokens", str(gen),
               "--context", str(prompt + gen + 8), "--json"]  # llama_child's n_ctx
    done = subprocess.run(command + (["--cap", cap] if cap else []), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError((done.stderr.strip().splitlines() or ["stchat bench failed"])[-1])
    return json.loads(done.stdout)["per_run"][0]


def measure(size: str, cap: str | None, prompt: int, gen: int, runs: int, files: dict) -> dict:
    """{"llama.cpp": [run, ...], "stchat": [run, ...]}, the engines alternating."""
    out = {"llama.cpp": [], "stchat": []}
    for index in range(runs):
        print(f"+ {size} {cap or 'in RAM'} pp{prompt} tg{gen}: run {index + 1}/{runs}", file=sys.stderr, flush=True)
        limit = parse_size(cap) if cap else None
        out["llama.cpp"].append(llama_runner.bench(files["gguf"], prompt, gen, 2, limit, repack=cap is None))
        out["stchat"].append(stchat_run(size, cap, prompt, gen))
    for engine in out.values():
        for run in engine:
            run["launch_seconds"] = run["load_seconds"] + run["cold_ttft_seconds"]
    return out


def _cell(runs: list[dict], key: str, file_bytes: int) -> tuple[str, float | None]:
    values = [r[key] for r in runs if r.get(key) is not None]
    if not values:
        return "n/a", None
    mid = statistics.median(values)
    text = f"{mid:.2f}" if mid < 100 else f"{mid:.0f}"
    if len(values) > 1:
        low, high = min(values), max(values)
        text += f" ({low:.2f}-{high:.2f})" if mid < 100 else f" ({low:.0f}-{high:.0f})"
    if key in ("peak_rss", "cgroup_peak"):
        text += f", {mid * 2**20 / file_bytes:.2f}x file"
    return text, mid


def table_rows(size: str, cap: str | None, prompt: int, gen: int, wanted, result: dict, files: dict) -> list[str]:
    where = f"in {cap}" if cap else "in RAM"
    lines = []
    for metric, target in wanted:
        label, key, better = METRICS[metric]
        llama, a = _cell(result["llama.cpp"], key, files["gguf_bytes"])
        stchat, b = _cell(result["stchat"], key, files["bundle_bytes"])
        ratio = None if a is None or b is None else (b / a if better == "higher" else a / b)
        if target is None or ratio is None:
            verdict = ""
        elif metric == "rss":
            over = b * 2**20 / files["bundle_bytes"]
            verdict = "met" if over <= target else f"missed (target <= {target}x bundle)"
        else:
            verdict = "met" if ratio >= target else f"missed (target >= {target}x)"
        lines.append(f"| {size.upper()} {where}, pp{prompt} + tg{gen} | {label} | {llama} | {stchat} | "
                     f"{'n/a' if ratio is None else f'{ratio:.2f}x'} | {verdict} |")
    return lines


def render(lines: list[str], args) -> str:
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    return "\n".join([
        "# stchat beside llama.cpp, same file, same machine",
        "",
        f"Generated by `python benchmarks/peer.py{' --only ' + args.only if args.only else ''} --runs {args.runs} "
        f"--runs-21b {args.runs_21b} --gen-tokens {args.gen_tokens}` on {datetime.date.today()} at revision {revision()}: {os.cpu_count()} vCPU ({cpu}), "
        f"Python {platform.python_version()}, llama-cpp-python {llama_runner.PEER_VERSION} built from source "
        "with this CPU's extensions but AMX (`llama_runner.cmake_args`). The file: the full-size synthetic model with skewed routing (`stchat bench --synthetic "
        "SIZE --routing skewed` runs its conversion). Engines alternate run by run, each run a fresh process "
        "with 2 threads and a context of prompt + generated + 8 tokens; medians (min-max). Prefill is the second prompt of a run (warm: for stchat, after "
        "building the experts the first prompt did not ask for, as the app does in idle time, within the budget); launch to first token "
        "is load plus the first prompt, nothing built yet. Capped rows: a memory cgroup of that size holds RSS "
        "and page cache together, the engine's files evicted from the page cache before each run; stchat's "
        "budget is the cap, and llama.cpp runs with --no-repack (weights served from the mapped file: its default copies "
        "them into anonymous memory in the CPU_REPACK layout, 2.2 GB more for the 4B, and the 1 GiB cap kills it). In-RAM rows run with the files wherever the previous runs left them in the page "
        "cache (the 21B's two files together exceed this machine's RAM). Ratio: how many times better stchat "
        "is (tok/s: stchat / llama.cpp; seconds and bytes: llama.cpp / stchat). \"x file\": peak over the "
        "GGUF's bytes (llama.cpp) or the bundle's (stchat).",
        "",
        "| configuration | measure | llama.cpp | stchat | ratio | issue 11 target |",
        "|---|---|---|---|---|---|",
        *lines,
    ]) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--runs-21b", type=int, default=2, help="21B runs take minutes each")
    parser.add_argument("--gen-tokens", type=int, default=32)
    parser.add_argument("--prompts", default="128,512", help="short,long prompt tokens")
    parser.add_argument("--only", choices=("4b", "21b"))
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("RESULTS-PEER.md"))
    args = parser.parse_args()
    short, long = (int(n) for n in args.prompts.split(","))
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    lines, files = [], {}
    for size, cap, prompt, wanted in configs(short, long):
        if args.only and size != args.only:
            continue
        if size not in files:
            llama_runner.llama_python()  # built once, before anything is timed
            gguf, bundle = synthetic_gguf(size, ROUTING, log), synthetic_bundle(size, ROUTING, log)
            files[size] = {"gguf": gguf, "gguf_bytes": gguf.stat().st_size,
                           "bundle_bytes": sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())}
        runs = args.runs_21b if size == "21b" else args.runs
        try:
            result = measure(size, cap, prompt, args.gen_tokens, runs, files[size])
        except RuntimeError as error:
            lines.append(f"| {size.upper()} {'in ' + cap if cap else 'in RAM'}, pp{prompt} | failed: {error} | | | | |")
        else:
            lines += table_rows(size, cap, prompt, args.gen_tokens, wanted, result, files[size])
            print(json.dumps({"size": size, "cap": cap, "prompt": prompt, **result}), flush=True)
        args.out.write_text(render(lines, args))  # rewritten after every configuration
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
