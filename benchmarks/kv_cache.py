"""What the KV cache layout costs: float16 against float32 keys/values, a window-sized sliding
buffer against one holding every position. Writes benchmarks/KV-CACHE.md.

    python benchmarks/kv_cache.py                      # attention alone, full-size shapes
    python benchmarks/kv_cache.py --bundle DIR         # also a whole model: speed and logits

Part 1 times GroupQueryAttention alone (the only op the layout changes) with the real head
counts, one token after `past` cached positions and a 256-token chunk, medians of repeated
runs in one thread, in CPU time (the machine is shared: wall time is not comparable between
rows). Part 2 loads a bundle twice (float32, float16 K/V), prefills the same
random prompt in 256-token chunks, then forces the same tokens through both for decoding and
compares their logits step by step, at accuracy level 4 (int8 activations: what runs) and 0
(float32 activations: the K/V rounding alone).
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime.kvcache import window_rows  # noqa: E402

SHAPES = {  # name: (q heads, kv heads, window or 0, context)
    "4B layer (12/2 heads, global)": (12, 2, 0, 32768),
    "21B sliding layer (28/4 heads, window 4096)": (28, 4, 4096, 16384),
}
D = 128


def gqa_session(heads: int, kv_heads: int, dtype: str, window: int, windowed: bool) -> ort.InferenceSession:
    cache_type = {"float16": TensorProto.FLOAT16, "float32": TensorProto.FLOAT}[dtype]
    attrs = dict(num_heads=heads, kv_num_heads=kv_heads, scale=1 / math.sqrt(D), do_rotary=1,
                 local_window_size=window or -1)
    if windowed:
        attrs["sliding_window_cache"] = 1
    node = helper.make_node("GroupQueryAttention", ["qkv", "", "", "past_key", "past_value", "seqlens_k",
                                                    "total_length", "cos", "sin"],
                            ["out", "present_key", "present_value"], domain="com.microsoft", **attrs)
    kv = [1, kv_heads, "L", D]
    graph = helper.make_graph([node], "gqa", [
        helper.make_tensor_value_info("qkv", TensorProto.FLOAT, [1, "S", (heads + 2 * kv_heads) * D]),
        helper.make_tensor_value_info("past_key", cache_type, kv),
        helper.make_tensor_value_info("past_value", cache_type, kv),
        helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [1]),
        helper.make_tensor_value_info("total_length", TensorProto.INT32, []),
        helper.make_tensor_value_info("cos", TensorProto.FLOAT, ["P", D // 2]),
        helper.make_tensor_value_info("sin", TensorProto.FLOAT, ["P", D // 2]),
    ], [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, "S", heads * D]),
        helper.make_tensor_value_info("present_key", cache_type, kv),
        helper.make_tensor_value_info("present_value", cache_type, kv)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def time_attention(heads, kv_heads, window, dtype, windowed, past, chunk, repeats) -> float:
    """Median ms of one GQA call appending `chunk` tokens after `past` cached positions."""
    rows = window_rows(window) if windowed else past + chunk
    session = gqa_session(heads, kv_heads, dtype, window, windowed)
    keys = np.random.default_rng(0).standard_normal((1, kv_heads, rows, D)).astype(dtype)
    values = keys.copy()
    key_value, value_value = ort.OrtValue.ortvalue_from_numpy(keys), ort.OrtValue.ortvalue_from_numpy(values)
    angles = np.arange(past + chunk)[:, None] * 1.5e6 ** (-np.arange(D // 2) * 2 / D)[None]
    qkv = np.random.default_rng(1).standard_normal((1, chunk, (heads + 2 * kv_heads) * D)).astype(np.float32)
    binding = session.io_binding()
    binding.bind_cpu_input("qkv", qkv)
    binding.bind_cpu_input("seqlens_k", np.array([past + chunk - 1], np.int32))
    binding.bind_cpu_input("total_length", np.array(past + chunk, np.int32))
    binding.bind_cpu_input("cos", np.cos(angles).astype(np.float32))
    binding.bind_cpu_input("sin", np.sin(angles).astype(np.float32))
    for name, value in (("past_key", key_value), ("past_value", value_value)):
        binding.bind_ortvalue_input(name, value)
    binding.bind_ortvalue_output("present_key", key_value)
    binding.bind_ortvalue_output("present_value", value_value)
    binding.bind_output("out")
    times = []
    for _ in range(repeats):
        started = time.process_time()  # CPU time: the machine is shared, one thread runs the op
        session.run_with_iobinding(binding)
        times.append(time.process_time() - started)
    return statistics.median(times) * 1e3


def attention_table(pasts, repeats) -> list[str]:
    lines = ["| layer | layout | K/V | past | 1 token ms | 256-token chunk ms |", "|---|---|---|---|---|---|"]
    for name, (heads, kv_heads, window, context) in SHAPES.items():
        layouts = [("window", True), ("every position", False)] if window else [("every position", False)]
        for past in [p for p in pasts if p < context]:
            for layout, windowed in layouts:
                if windowed and past + 256 <= window_rows(window):
                    continue  # the buffer is not full yet: same as every position
                if windowed:  # the step after a full buffer: it drops 256 positions first
                    rows = window_rows(window)
                    past += (rows - past) % (rows - window + 1)
                    layout = "window (a step that compacts)"
                for dtype in ("float32", "float16"):
                    one = time_attention(heads, kv_heads, window, dtype, windowed, past, 1, repeats)
                    chunk = time_attention(heads, kv_heads, window, dtype, windowed, past, 256, max(3, repeats // 10))
                    lines.append(f"| {name} | {layout} | {dtype} | {past} | {one:.3f} | {chunk:.1f} |")
                    print(lines[-1], flush=True)
    return lines


def model_comparison(bundle: str, prompt: int, steps: int, level: int) -> list[str]:
    import runtime

    rng = np.random.default_rng(0)
    results = {}
    for dtype in ("float32", "float16"):
        model = runtime.load(bundle, kv_dtype=dtype, context=prompt + steps + 1, threads=1, accuracy_level=level)
        ids = rng.integers(0, model.config.vocab_size, prompt + steps).tolist()
        rng = np.random.default_rng(0)  # the same ids for both
        cache = model.new_cache()
        started = time.process_time()  # one thread (plus the expert loader's): CPU seconds
        model.prefill(ids[:prompt], cache)
        prefill = time.process_time() - started
        logits, started = [], time.process_time()
        for token in ids[prompt:]:
            logits.append(model.prefill([token], cache).copy())
        decode = time.process_time() - started
        results[dtype] = (np.stack(logits), prompt / prefill, steps / decode)
        model.close()
    exact, _, _ = results["float32"]
    half, _, _ = results["float16"]
    error = np.abs(half - exact).max(-1) / np.abs(exact).max(-1)   # per step, relative to the largest logit
    agree = (half.argmax(-1) == exact.argmax(-1)).mean()
    lines = [f"Whole model `{Path(bundle).name}`, MatMulNBits accuracy level {level}: {prompt}-token random "
             f"prompt (256-token chunks), then {steps} forced tokens decoded one at a time.", "",
             "| K/V | prefill tok/s (CPU time) | decode tok/s (CPU time) |", "|---|---|---|"]
    lines += [f"| {dtype} | {results[dtype][1]:.1f} | {results[dtype][2]:.2f} |" for dtype in ("float32", "float16")]
    lines += ["", f"float16 against float32 logits over the {steps} decode steps: largest error "
              f"{error.max():.2e} of the step's largest logit (median step {np.median(error):.2e}), "
              f"top-1 agreement {agree:.0%}."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", help="a bundle for the whole-model comparison")
    parser.add_argument("--prompt", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--pasts", default="1024,4096,8192,16000,32000")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "KV-CACHE.md"))
    args = parser.parse_args()
    lines = ["# KV cache layout: measured", "",
             f"Generated by `python benchmarks/kv_cache.py` with onnxruntime {ort.__version__}, one thread; "
             "medians. Window-sized buffers hold "
             f"{window_rows(4096)} rows for a 4096-token window (compaction every 256 tokens).", ""]
    lines += attention_table([int(p) for p in args.pasts.split(",")], args.repeats)
    if args.bundle:  # level 4 is what runs; level 0 (fp32 activations) isolates the K/V rounding
        for level in (4, 0):
            lines += [""] + model_comparison(args.bundle, args.prompt, args.steps, level)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
