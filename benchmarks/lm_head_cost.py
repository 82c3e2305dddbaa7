"""What a wider lm_head costs per decoded token: the full-size head in each stored format.

A stock `llama-quantize ... Q4_0` file keeps `output.weight` in Q6_K, which stchat now runs as
8-bit blocks of 16 (q8b16) instead of re-quantizing it to Q4_0. The head runs once per token
over all 151,936 vocabulary rows, so its bytes are read every token. This script builds the
head graph at the real 4B and 21B shapes with random codes in each format, times a one-token
call (medians of interleaved rounds, 2 threads) and writes the table to benchmarks/LM_HEAD.md.

    python benchmarks/lm_head_cost.py [--rounds 7] [--out benchmarks/LM_HEAD.md]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime import graphs, synthetic  # noqa: E402
from runtime.config import ModelConfig  # noqa: E402
from runtime.quant import QuantFormat  # noqa: E402
from runtime.sessions import init_thread_pool, make_session  # noqa: E402

FORMATS = {"q4b32": "Q4_0", "q8b32": "Q8_0", "q8b16": "Q6_K"}


def head_session(cfg: ModelConfig, fmt: QuantFormat, rng):
    weights = {"norm.weight": np.ones(cfg.hidden_size, np.float32)}
    for suffix, (dtype, shape) in fmt.arrays(cfg.vocab_size, cfg.hidden_size).items():
        weights[f"lm_head.{suffix}"] = (rng.integers(0, 256, size=shape, dtype=np.uint8) if dtype == "uint8"
                                        else rng.random(shape, dtype=np.float32) * 0.01)
    nbytes = sum(a.nbytes for name, a in weights.items() if name.startswith("lm_head."))
    return make_session(graphs.head_graph(cfg, fmt=fmt), weights), nbytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=20, help="one-token calls per round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("LM_HEAD.md"))
    args = parser.parse_args()
    init_thread_pool(args.threads)
    rng = np.random.default_rng(0)
    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip()
    lines = [f"# lm_head cost per decoded token (revision {revision}, {args.threads} threads)", "",
             f"`python benchmarks/lm_head_cost.py --rounds {args.rounds}`: one-token head call (final RMSNorm + "
             f"lm_head over the whole vocabulary), accuracy level 4, medians of {args.rounds} interleaved rounds "
             f"of {args.calls} calls; random codes, real shapes.", "",
             "| model | stored as (GGUF type) | head bytes read per token | ms per token | vs Q4_0 |",
             "|---|---|---|---|---|"]
    for label, spec in (("4B", synthetic.FULL_4B), ("21B", synthetic.FULL_21B)):
        cfg = ModelConfig.from_hf(spec.hf_config())
        sessions = {name: head_session(cfg, QuantFormat.parse(name), rng) for name in FORMATS}
        x = rng.standard_normal((1, cfg.hidden_size)).astype(np.float32)
        times: dict[str, list[float]] = {name: [] for name in FORMATS}
        for _ in range(args.rounds):
            for name, (session, _) in sessions.items():
                session.run(["logits"], {"x": x})
                started = time.perf_counter()
                for _ in range(args.calls):
                    session.run(["logits"], {"x": x})
                times[name].append((time.perf_counter() - started) / args.calls)
        base = statistics.median(times["q4b32"])
        for name, (session, nbytes) in sessions.items():
            ms = statistics.median(times[name])
            lines.append(f"| {label} | {name} ({FORMATS[name]}) | {nbytes / 2**20:.0f} MiB | {ms * 1e3:.2f} | "
                         f"{ms / base:.2f}x (+{(ms - base) * 1e3:.2f} ms) |")
        del sessions
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
