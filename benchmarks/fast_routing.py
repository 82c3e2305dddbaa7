"""Fast routing (`--fast-routing TOLERANCE`): what it saves under a memory cap, what it costs in fidelity.

The router may prefer experts already in memory among near-tied scores (`runtime/routing.py`).
For each tolerance this measures, on the full-size synthetic 4B with skewed routing:

- fidelity: the same 64-token text fed one token at a time under a 1 GiB budget, logits at each
  position against exact routing (tolerance 0) under the same budget: median relative L2 error
  and how often the top token is the same;
- speed: `stchat bench --cap 1GiB --fast-routing T` (a memory cgroup holding RSS and page cache),
  runs alternating between tolerances, medians.

Random-weight routers are not trained ones: their near-ties may be more or less frequent than a
real model's, so the fidelity figures are for this model only; measure a real one before
trusting a tolerance. Results go to benchmarks/FAST-ROUTING.md.

    python benchmarks/fast_routing.py [--tolerances 0,0.25,0.5,1] [--runs 2] [--tokens 64]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "FAST-ROUTING.md"
BUDGET = 1 << 30


def fidelity(bundle: Path, tolerance: float, ids: list[int]) -> tuple:
    """Logits [T, V] of `ids` fed one at a time, and the decode hit rate, under BUDGET."""
    import numpy as np

    import runtime

    model = runtime.load(bundle, memory_budget=BUDGET, threads=2, fast_routing=tolerance)
    cache = model.new_cache()
    logits = np.stack([model.prefill([token], cache) for token in ids])
    hit_rate = model.experts.cache.stats.hit_rate
    model.close()
    return logits, hit_rate


def bench(tolerance: float, prompt: int, gen: int) -> dict:
    command = [sys.executable, "-m", "stchat", "bench", "--synthetic", "4b", "--routing", "skewed", "--runs", "1",
               "--threads", "2", "--prompt-tokens", str(prompt), "--gen-tokens", str(gen), "--cap", "1GiB",
               "--fast-routing", str(tolerance), "--json"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1])
    return json.loads(done.stdout)["per_run"][0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tolerances", default="0,0.25,0.5,1")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    import numpy as np

    from stchat.bench import synthetic_bundle

    tolerances = [float(t) for t in args.tolerances.split(",")]
    bundle = synthetic_bundle("4b", "skewed", lambda m: print(m, file=sys.stderr))
    ids = np.random.default_rng(1).integers(0, 150000, args.tokens).tolist()
    exact = None
    rows = {}
    for tolerance in tolerances:
        print(f"fidelity, tolerance {tolerance} ...", file=sys.stderr, flush=True)
        logits, hit_rate = fidelity(bundle, tolerance, ids)
        if exact is None:
            exact = logits
        error = np.linalg.norm(logits - exact, axis=-1) / np.linalg.norm(exact, axis=-1)
        rows[tolerance] = {"error": float(np.median(error)), "top1": float((logits.argmax(-1) == exact.argmax(-1)).mean()),
                           "teacher_hit_rate": hit_rate, "runs": []}
    for index in range(args.runs):
        for tolerance in tolerances:
            print(f"capped run {index + 1}/{args.runs}, tolerance {tolerance} ...", file=sys.stderr, flush=True)
            rows[tolerance]["runs"].append(bench(tolerance, 128, 32))
    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    lines = [f"## {time.strftime('%Y-%m-%d')} at {revision}", "",
             f"`python benchmarks/fast_routing.py --tolerances {args.tolerances} --runs {args.runs} --tokens {args.tokens}`: "
             "full-size synthetic 4B, skewed routing (random weights). Fidelity: logits of a "
             f"{args.tokens}-token text fed one token at a time under a 1 GiB budget, against tolerance 0 under the same "
             "budget. Speed: `stchat bench --cap 1GiB` (pp128 + tg32, 2 threads), tolerances alternating, "
             f"medians of {args.runs} (min-max).", "",
             "| tolerance | logits error (median rel. L2) | same top token | decode tok/s | prefill tok/s | decode hit rate |",
             "|---|---|---|---|---|---|"]
    def cell(runs, key, fmt):
        values = [run[key] for run in runs]
        return f"{fmt(statistics.median(values))} ({fmt(min(values))}-{fmt(max(values))})"
    for tolerance, row in rows.items():
        lines.append(f"| {tolerance:g}{' (exact)' if tolerance == 0 else ''} | {row['error']:.4f} | {row['top1']:.0%} | "
                     f"{cell(row['runs'], 'decode_tps', lambda v: f'{v:.2f}')} | {cell(row['runs'], 'prefill_tps', lambda v: f'{v:.1f}')} | "
                     f"{cell(row['runs'], 'hit_rate', lambda v: f'{v:.0%}')} |")
    text = "\n".join(lines) + "\n"
    print(text)
    header = "" if args.out.exists() else "# Fast routing: speed under a cap against fidelity\n\n" + __doc__.split("\n\n")[1] + "\n\n"
    with open(args.out, "a") as out:
        out.write(header + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
