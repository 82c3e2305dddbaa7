"""Where a decoded token's time goes, in RAM: expert calls, attention, lm_head, and the rest.

The decode step (`runtime/decode.py`) is run as is; its parts are timed by wrapping them: the
attention sessions' bound runs, the expert store's bound calls, the prefetch bookkeeping, the
embedding and the lm_head. Whatever is left (router matmul, top-k, gate weights, the weighted
sum, the layer loop) is "router and glue". Every expert is built before timing (the warm state
of a conversation), after a 128-token prompt; then 5 rounds of 32 greedy tokens.

    python benchmarks/decode_profile.py [--bundle DIR]   # default: the synthetic 4B, skewed

Appends a table of milliseconds per token (medians of the rounds) to benchmarks/DECODE-PROFILE.md.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from report import append_table  # noqa: E402  (a sibling: this directory is on the path)
OUT = ROOT / "benchmarks" / "DECODE-PROFILE.md"
DEFAULT = Path.home() / ".cache" / "stchat" / "synthetic" / "4b-skewed"


def timed(spent: dict, part: str, function):
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[part] += time.perf_counter() - started
    return wrapper


def profile(bundle: Path, rounds: int = 5, tokens: int = 32) -> dict[str, list[float]]:
    import runtime
    model = runtime.load(bundle, threads=2, context=128 + rounds * tokens + 8)
    model.warm_experts()
    spent = dict.fromkeys(["expert calls", "attention", "lm_head", "embedding", "prefetch"], 0.0)
    for session in model.attention:
        session.run_with_iobinding = timed(spent, "attention", session.run_with_iobinding)
    model.experts.run_bound = timed(spent, "expert calls", model.experts.run_bound)
    model.experts.prefetch = timed(spent, "prefetch", model.experts.prefetch)
    model.embed = timed(spent, "embedding", model.embed)
    model.head_logits = timed(spent, "lm_head", model.head_logits)
    cache = model.new_cache()
    token = int(np.argmax(model.prefill(np.random.default_rng(0).integers(0, model.config.vocab_size, 128), cache)))
    per_token = {part: [] for part in [*spent, "router and glue", "total"]}
    for _ in range(rounds):
        for part in spent:
            spent[part] = 0.0
        started = time.perf_counter()
        for _ in range(tokens):
            token = int(np.argmax(model.prefill([token], cache)))
        total = time.perf_counter() - started
        for part, seconds in spent.items():
            per_token[part].append(seconds / tokens * 1e3)
        per_token["router and glue"].append((total - sum(spent.values())) / tokens * 1e3)
        per_token["total"].append(total / tokens * 1e3)
    model.close()
    return per_token


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=DEFAULT)
    args = parser.parse_args()
    per_token = profile(args.bundle)
    rows = [f"| {part} | {np.median(ms):.2f} ({min(ms):.2f}-{max(ms):.2f}) |" for part, ms in per_token.items()]
    rate = 1e3 / np.median(per_token["total"])
    print("\n".join(rows) + f"\n{rate:.2f} tok/s")
    append_table(OUT, "A decoded token's time, part by part (benchmarks/decode_profile.py)",
                 f"{args.bundle.name}, 2 threads: {rate:.2f} tok/s",
                 ["part", "ms per token, median (min-max) of 5 rounds of 32"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
