"""What peak RSS in RAM costs in decode speed: level-4 experts per layer against lean ones.

A level-4 expert session (int8 activations, the fast one-token path) holds 1.44x its Q4_0
bytes; a lean one (level 1, fp32 activations) 1.04x but runs a one-token call slower. With
every 4B expert at level 4 the process peaks near 1.45x the bundle; the issue's target is
1.25x. This script loads the full-size synthetic 4B with at most SHARE experts per layer at
level 4 (the ones the router asked for most in a first 128-token prompt; the rest lean), builds
the rest in idle time as the app does, and measures a warm 128-token prompt, 32 decoded tokens,
peak RSS over the bundle's bytes and the share of expert calls that went to level-4 sessions.
One fresh process per share.

    python benchmarks/level_share.py [SHARE ...]     # default: 32 16 12 8

Appends a table to benchmarks/LEVEL-SHARE.md.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from report import append_table  # noqa: E402  (a sibling: this directory is on the path)
OUT = ROOT / "benchmarks" / "LEVEL-SHARE.md"
BUNDLE = Path.home() / ".cache" / "stchat" / "synthetic" / "4b-skewed"


def child(share: int) -> dict:
    import runtime
    from stchat.bench_child import peak_rss
    model = runtime.load(BUNDLE, threads=2, context=128 + 32 + 8)
    model.experts.full_per_layer = share  # before any expert is built
    rng = np.random.default_rng(0)
    vocab = model.config.vocab_size
    cache = model.new_cache()
    model.prefill(rng.integers(0, vocab, 128).tolist(), cache)
    cache.trim(0)
    model.warm_experts(model.expert_usage())
    started = time.perf_counter()
    token = int(np.argmax(model.prefill(rng.integers(0, vocab, 128).tolist(), cache)))
    prefill = 128 / (time.perf_counter() - started)
    before = model.experts.requests.copy()
    started = time.perf_counter()
    for _ in range(32):
        token = int(np.argmax(model.prefill([token], cache)))
    decode = 32 / (time.perf_counter() - started)
    cfg = model.config
    levels = np.array([[model.experts.level_of(layer, e) or 0 for e in range(cfg.num_experts)]
                       for layer in range(cfg.num_layers)])
    calls = model.experts.requests - before  # [L, E] decode calls
    bundle_bytes = sum(f.stat().st_size for f in BUNDLE.iterdir() if f.name in ("dense.bin", "experts.bin"))
    return {"share": share, "prefill": prefill, "decode": decode, "rss_over_bundle": peak_rss() / bundle_bytes,
            "peak_rss_mib": peak_rss() / 2**20, "calls_at_level4": float(calls[levels == 4].sum() / calls.sum())}


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(child(int(sys.argv[2]))))
        return 0
    rows = []
    for share in [int(a) for a in sys.argv[1:]] or [32, 16, 12, 8]:
        done = subprocess.run([sys.executable, __file__, "--child", str(share)], capture_output=True, text=True, check=True)
        r = json.loads(done.stdout)
        rows.append(f"| {r['share']} | {r['decode']:.2f} | {r['prefill']:.1f} | {r['peak_rss_mib']:.0f} | "
                    f"{r['rss_over_bundle']:.2f}x | {r['calls_at_level4']:.0%} |")
        print(rows[-1], flush=True)
    append_table(OUT, "Level-4 experts per layer: peak RSS against decode (benchmarks/level_share.py)",
                 "full-size synthetic 4B (skewed), 2 threads, one run each",
                 ["level-4 experts per layer (of 32)", "decode tok/s", "warm prefill tok/s", "peak RSS MiB",
                  "over the bundle", "decode calls to level-4 sessions"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
