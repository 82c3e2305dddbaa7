"""The memory-bandwidth ceiling on decode in RAM: bytes one token reads, over what this machine streams.

A decode step of a Q4 MoE model reads every weight it uses once per token and reuses none of
it (a 4B expert is 2.1 MiB, a 21B one 3.7 MiB; a core's L2 is 1-2 MiB), so tokens/s cannot
exceed bandwidth / bytes per token. This script measures the machine's streaming read
bandwidth (numpy counting the nonzero bytes of a 1 GiB array, on 1 thread and on 2 at once)
and counts the bytes a token reads in a bundle: its attention, router and norm tensors, the
lm_head, and experts-per-token experts in every layer, both as stored (Q4_0: 20 bytes per 32
weights with fp32 scales; GGUF's own is 18) and as ONNX Runtime holds them once prepacked at
accuracy level 4 (24 bytes per 32: codes, scale, block sum). It prints the ceilings and
appends them to benchmarks/BANDWIDTH.md.

    python benchmarks/bandwidth.py [BUNDLE ...]     # default: the synthetic 4B and 21B, if built
"""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "BANDWIDTH.md"
PACKED_OVER_STORED = 24 / 20  # MatMulNBits level-4 layout over the bundle's Q4_0 bytes


def read_bandwidth(threads: int, nbytes: int = 1 << 30, repeats: int = 5) -> float:
    """GB/s of `threads` threads each counting the nonzero bytes of its own `nbytes` array (best
    of `repeats`). Counting keeps up with memory where a float64 sum does not: on a 2-vCPU EPYC,
    47.9 GB/s on 2 threads against 36.3 summing (and 58 GB/s streamed by ONNX Runtime's lm_head
    call: `DECODE-PROFILE.md`)."""
    arrays = [np.ones(nbytes, np.uint8) for _ in range(threads)]
    best = 0.0
    for _ in range(repeats):
        workers = [threading.Thread(target=np.count_nonzero, args=(array,)) for array in arrays]
        started = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        best = max(best, threads * nbytes / (time.perf_counter() - started) / 1e9)
    return best


def token_bytes(bundle_path: Path) -> dict:
    from runtime.bundle import Bundle

    bundle = Bundle(bundle_path)
    cfg = bundle.config
    sizes = {name: int(np.prod(spec["shape"])) * np.dtype(spec["dtype"]).itemsize
             for name, spec in bundle.manifest["tensors"].items()}
    head = sum(size for name, size in sizes.items() if name.startswith("lm_head")) \
        or sum(size for name, size in sizes.items() if name.startswith("embed_tokens"))
    layers = sum(size for name, size in sizes.items() if name.startswith("layers."))
    experts = sum(bundle.expert_record_bytes(layer) for layer in range(cfg.num_layers)) * cfg.num_experts_per_tok
    return {"name": bundle_path.name, "head": head, "layers": layers, "experts": experts,
            "stored": head + layers + experts}


def main() -> int:
    from stchat.bench import synthetic_dir

    bundles = [Path(arg) for arg in sys.argv[1:]] or \
        [path for path in (synthetic_dir() / "4b-skewed", synthetic_dir() / "21b-skewed") if (path / "manifest.json").is_file()]
    one, two = read_bandwidth(1), read_bandwidth(2)
    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    lines = [f"## {time.strftime('%Y-%m-%d %H:%M')} at {revision}", "",
             f"Streaming read bandwidth (numpy counting the nonzero bytes of 1 GiB arrays, best of 5): {one:.1f} GB/s on 1 thread, "
             f"{two:.1f} GB/s on 2 threads at once.", "",
             "| bundle | MB read per token, stored (head + layers + active experts) | as prepacked by ORT (x1.2) | "
             "ceiling tok/s at 2-thread bandwidth, stored | prepacked |", "|---|---|---|---|---|"]
    for path in bundles:
        counted = token_bytes(path)
        packed = counted["stored"] * PACKED_OVER_STORED
        lines.append(f"| {counted['name']} | {counted['stored'] / 1e6:.0f} ({counted['head'] / 1e6:.0f} + "
                     f"{counted['layers'] / 1e6:.0f} + {counted['experts'] / 1e6:.0f}) | {packed / 1e6:.0f} | "
                     f"{two * 1e9 / counted['stored']:.1f} | {two * 1e9 / packed:.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    header = "" if OUT.exists() else "# Decode in RAM against the memory-bandwidth ceiling\n\n" + __doc__.split("\n\n")[1] + "\n\n"
    with open(OUT, "a") as out:
        out.write(header + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
