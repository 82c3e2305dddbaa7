"""What one expert session costs to build and to call, and what the alternatives measured.

Decode in RAM spends half its time in expert calls (128 a 4B token) and a cold first prompt
spends most of its time building expert sessions, so these are the costs that bound stchat
beside llama.cpp. Each variant runs in its own child process (ONNX Runtime's thread pool is
process-wide and fixed at first use), on a 4B expert (1536 -> 768 -> 1536, Q4_0 block 32,
random codes: the kernels' speed does not depend on values), and prints one line of JSON:

- build: a session's creation at accuracy level 4, level 1, and without prepacking;
- call: a one-token call through a bound IOBinding, cycling 128 sessions (weights come from
  memory, as in decode) and 4 (weights stay in cache), and a 16-token call (a prompt's size);
- fused: gate and up as one [1536 -> 1536] MatMulNBits, cycling 128 sessions;
- pairs: one-thread sessions, a layer's 4 experts run two at a time on two Python threads.

Medians over repeats; results are appended to benchmarks/EXPERT-CALLS.md.

    python benchmarks/expert_calls.py
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from report import append_table  # noqa: E402  (a sibling: this directory is on the path)
OUT = ROOT / "benchmarks" / "EXPERT-CALLS.md"
H, F = 1536, 768  # the 4B's hidden and expert sizes


def _graph(level: int, fused: bool) -> bytes:
    from onnx import TensorProto, helper

    from runtime import graphs
    from runtime.quant import Q4_0
    if not fused:
        return graphs.expert_graph(type("Shape", (), dict(hidden_size=H, expert_ffn_size=F)), level)
    nodes, inits = [], []
    graphs._add(nodes, inits, graphs._matmul("expert/gateup", "h", "gu", 2 * F, H, Q4_0, level))
    inits.append(graphs._inline("halves", np.array([F, F], np.int64)))
    nodes += [helper.make_node("Split", ["gu", "halves"], ["gate", "up"], axis=-1),
              helper.make_node("Relu", ["gate"], ["gate_relu"]), helper.make_node("Mul", ["up", "gate_relu"], ["act"])]
    graphs._add(nodes, inits, graphs._matmul("expert/down", "act", "y", H, F, Q4_0, level))
    return graphs._model(nodes, inits, [helper.make_tensor_value_info("h", TensorProto.FLOAT, ["T", H])],
                         [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", H])], "expert")


def _weights(rng, fused: bool) -> dict:
    matrices = [("gateup", 2 * F, H)] if fused else [("gate", F, H), ("up", F, H)]
    weights = {}
    for name, n, k in matrices + [("down", H, F)]:
        weights[f"expert/{name}.qweight"] = rng.integers(0, 256, (n, k // 32, 16), dtype=np.uint8)
        weights[f"expert/{name}.scales"] = rng.random((n, k // 32), dtype=np.float32) * 0.01
    return weights


def _session(graph: bytes, weights: dict, one_thread: bool = False, prepack: bool = True):
    import onnxruntime as ort

    from runtime import sessions
    if not one_thread:
        return sessions.make_session(graph, weights)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.enable_cpu_mem_arena = False
    names = list(weights)
    options.add_external_initializers(names, [ort.OrtValue.ortvalue_from_numpy(weights[n]) for n in names])
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


def _calls(sessions: list, tokens: int, rounds: int, pairs: bool = False) -> float:
    """Median us per call, each session called once a round through a bound IOBinding."""
    import onnxruntime as ort
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((tokens, H), dtype=np.float32) for _ in range(2)]
    outputs = [np.zeros((tokens, H), np.float32) for _ in range(2)]
    bindings = []
    for index, session in enumerate(sessions):
        binding, lane = session.io_binding(), index % 4 >= 2  # pairs: experts 2 and 3 of each 4 on lane 1
        binding.bind_ortvalue_input("h", ort.OrtValue.ortvalue_from_numpy(inputs[lane]))
        binding.bind_ortvalue_output("y", ort.OrtValue.ortvalue_from_numpy(outputs[lane]))
        bindings.append(binding)
    runs = list(zip(sessions, bindings))
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        if pairs:
            for layer in range(0, len(runs), 4):
                helper = threading.Thread(target=lambda group: [s.run_with_iobinding(b) for s, b in group],
                                          args=(runs[layer + 2:layer + 4],))
                helper.start()
                for session, binding in runs[layer:layer + 2]:
                    session.run_with_iobinding(binding)
                helper.join()
        else:
            for session, binding in runs:
                session.run_with_iobinding(binding)
        times.append((time.perf_counter() - started) / len(runs) * 1e6)
    return float(np.median(times))


def child(variant: str) -> dict:
    from runtime import sessions
    if variant != "pairs-128":  # one-thread sessions cannot run on the global pool
        sessions.init_thread_pool(2)
    rng = np.random.default_rng(0)
    if variant.startswith("build"):
        import onnxruntime as ort
        level = 1 if variant == "build-level1" else 4
        graph, weights, times = _graph(level, False), _weights(rng, False), []
        for _ in range(60):
            started = time.perf_counter()
            if variant == "build-noprepack":
                options = ort.SessionOptions()
                options.use_per_session_threads = False
                options.add_session_config_entry("session.disable_prepacking", "1")
                names = list(weights)
                options.add_external_initializers(names, [ort.OrtValue.ortvalue_from_numpy(weights[n]) for n in names])
                ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
            else:
                sessions.make_session(graph, weights)
            times.append(time.perf_counter() - started)
        return {"variant": variant, "ms": float(np.median(times)) * 1e3}
    fused, pairs = variant == "fused-128", variant == "pairs-128"
    count = 4 if variant == "call-4" else 128
    tokens = 16 if variant == "call-16tokens-128" else 1
    graph = _graph(4, fused)
    built = [_session(graph, _weights(rng, fused), one_thread=pairs) for _ in range(count)]
    return {"variant": variant, "us_per_call": _calls(built, tokens, rounds=max(5, 2560 // count), pairs=pairs)}


VARIANTS = ["build-level4", "build-level1", "build-noprepack", "call-128", "call-4", "call-16tokens-128",
            "fused-128", "pairs-128"]
LABELS = {
    "build-level4": "build a session, accuracy level 4", "build-level1": "build a session, level 1",
    "build-noprepack": "build a session without prepacking", "call-128": "one-token call, 128 sessions cycled",
    "call-4": "one-token call, 4 sessions cycled (weights in cache)",
    "call-16tokens-128": "16-token call, 128 sessions cycled",
    "fused-128": "one-token call, gate and up fused, 128 cycled",
    "pairs-128": "one-token calls two at a time on two threads (one-thread sessions), 128 cycled",
}


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2])))
        return 0
    rows = []
    for variant in VARIANTS:
        done = subprocess.run([sys.executable, __file__, "--child", variant], capture_output=True, text=True, check=True)
        result = json.loads(done.stdout)
        value = f"{result['ms']:.2f} ms" if "ms" in result else f"{result['us_per_call']:.0f} us"
        rows.append(f"| {LABELS[variant]} | {value} |")
        print(rows[-1], flush=True)
    append_table(OUT, "Expert sessions: build and call costs (benchmarks/expert_calls.py)",
                 "2 threads, 4B expert (1536 -> 768 -> 1536, Q4_0)", ["what", "median"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
