"""What the crc32 check of an expert record costs when the expert is read from disk.

`Bundle.read_expert` compares each record it reads with the crc32 recorded at conversion, so
damage inside `experts.bin` is caught when the expert loads. This measures, for the real 4B
and 21B expert shapes, the time of a record read (pread from the page cache), of its crc32,
and of building the expert's session (what a cache miss costs anyway), as medians.

    python benchmarks/expert_crc.py [--repeats 40]

Writes benchmarks/EXPERT-CRC.md.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np

from runtime import graphs, quant
from runtime.bundle import Bundle
from runtime.bundle_writer import BundleWriter
from runtime.config import ModelConfig
from runtime.sessions import make_session
from runtime.synthetic import FULL_21B, FULL_4B, make_tokenizer

EXPERTS = 8   # records in the scratch bundle: one layer of this many experts


def one_layer_config(spec) -> ModelConfig:
    cfg = ModelConfig.from_hf(spec.hf_config(make_tokenizer()))
    return replace(cfg, num_layers=1, num_experts=EXPERTS, rope_layers=(True,), sliding_layers=(False,))


def scratch_bundle(cfg: ModelConfig, root: Path) -> Bundle:
    """A bundle holding only experts (random Q4 weights): enough for `read_expert`."""
    rng = np.random.default_rng(0)
    writer = BundleWriter(root, cfg)
    H, F = cfg.hidden_size, cfg.expert_ffn_size
    for expert in range(cfg.num_experts):
        writer.add_expert(0, expert, {name: (quant.Q4_0, quant.quantize(rng.standard_normal(shape, dtype=np.float32)))
                                      for name, shape in (("gate", (F, H)), ("up", (F, H)), ("down", (H, F)))})
    writer.add_tensor("norm.weight", np.ones(cfg.hidden_size, np.float32))   # dense.bin must not be empty
    writer.finish({})
    return Bundle(root)


def median_ms(run, repeats: int) -> float:
    times = []
    for i in range(repeats):
        started = time.perf_counter()
        run(i)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def measure(name: str, spec, repeats: int) -> dict:
    cfg = one_layer_config(spec)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = scratch_bundle(cfg, Path(tmp) / "bundle")
        graph = graphs.expert_graph(cfg)
        buffer = np.empty(bundle.expert_stride, np.uint8)
        for expert in range(EXPERTS):   # warm the page cache and the allocator
            bundle.read_expert(0, expert, buffer)
        checked = median_ms(lambda i: bundle.read_expert(0, i % EXPERTS, buffer), repeats)
        crc = median_ms(lambda i: zlib.crc32(buffer), repeats)
        crcs, bundle.expert_crc32 = bundle.expert_crc32, None
        unchecked = median_ms(lambda i: bundle.read_expert(0, i % EXPERTS, buffer), repeats)
        bundle.expert_crc32 = crcs

        def build(i):
            arrays = bundle.read_expert(0, i % EXPERTS, buffer)
            make_session(graph, {f"expert/{k}": v for k, v in arrays.items()}, keep_weights=False)

        miss = median_ms(build, max(5, repeats // 4))
        stride = bundle.expert_stride
        bundle.close()
    return {"model": name, "record_mib": stride / 2**20, "read_ms": unchecked, "read_checked_ms": checked,
            "crc_ms": crc, "crc_gbps": stride / (crc / 1e3) / 1e9, "miss_ms": miss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args()
    rows = [measure("4B", FULL_4B, args.repeats), measure("21B", FULL_21B, args.repeats)]
    lines = ["# crc32 check of expert records: cost per expert read", "",
             f"`python benchmarks/expert_crc.py --repeats {args.repeats}`, medians, this machine, "
             f"zlib {zlib.ZLIB_RUNTIME_VERSION}; records read with pread from the page cache; load average "
             f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs while measuring (other work shares them).", "",
             "| model | record | read | read + crc32 | crc32 alone | crc32 speed | read + crc32 + session build (a miss) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['record_mib']:.2f} MiB | {r['read_ms']:.2f} ms | {r['read_checked_ms']:.2f} ms "
                     f"| {r['crc_ms']:.2f} ms | {r['crc_gbps']:.1f} GB/s | {r['miss_ms']:.2f} ms |")
    lines += ["", "The check runs only when an expert is read from disk (a miss), never on a cache hit."]
    out = Path(__file__).with_name("EXPERT-CRC.md")
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
