"""llama.cpp's side of the peer benchmarks, run by the llama-cpp-python venv's own Python.

llama-cpp-python is built from source into a cache directory (`llama_runner.py`), never into
the project's environment, so this script imports nothing from stchat: numpy and llama_cpp
only. Three modes, each printing one JSON object on stdout:

    llama_child.py bench GGUF '{"prompt_tokens": 128, "gen_tokens": 32, "threads": 2, "repack": true}'
    llama_child.py quantize SRC DST FTYPE       # FTYPE: Q4_0, Q8_0, Q6_K, Q5_K_M, Q4_K_M
    llama_child.py logits GGUF IDS.json OUT.npy # logits of every position [S, V], float32

`bench` mirrors `stchat.bench_child`: load, a cold first prompt, a warm second prompt (the
cache cleared in between), then greedy decode with numpy argmax, as stchat's bench does.
"""
from __future__ import annotations

import ctypes
import json
import sys
import time

import numpy as np

import llama_cpp


def peak_rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _last_logits(llm: llama_cpp.Llama) -> np.ndarray:
    """The last evaluated token's logits [V], read in place (logits_all is off)."""
    pointer = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(pointer, shape=(llm.n_vocab(),))


def _without_repack() -> None:
    """llama-cli's --no-repack: the weights stay in the mapped file instead of being copied into
    anonymous memory in the CPU_REPACK layout (which a 1 GiB cap cannot hold for the 4B)."""
    import llama_cpp.llama_cpp as low

    default = low.llama_model_default_params

    def params():
        value = default()
        value.use_extra_bufts = False
        return value
    low.llama_model_default_params = params


def bench(gguf: str, prompt_tokens: int, gen_tokens: int, threads: int, repack: bool = True) -> dict:
    if not repack:
        _without_repack()
    started = time.perf_counter()
    llm = llama_cpp.Llama(gguf, n_ctx=prompt_tokens + gen_tokens + 8, n_batch=512, n_ubatch=512,
                          n_threads=threads, n_threads_batch=threads, verbose=False)
    load_seconds = time.perf_counter() - started
    rng = np.random.default_rng(0)
    vocab = llm.n_vocab()
    started = time.perf_counter()
    llm.eval(rng.integers(0, vocab, prompt_tokens).tolist())
    cold_seconds = time.perf_counter() - started
    llm.reset()  # the next eval drops every cached position
    started = time.perf_counter()
    llm.eval(rng.integers(0, vocab, prompt_tokens).tolist())
    token = int(np.argmax(_last_logits(llm)))
    prefill_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(gen_tokens):
        llm.eval([token])
        token = int(np.argmax(_last_logits(llm)))
    decode_seconds = time.perf_counter() - started
    return {"load_seconds": load_seconds, "cold_ttft_seconds": cold_seconds, "ttft_seconds": prefill_seconds,
            "prefill_tps": prompt_tokens / prefill_seconds, "decode_tps": gen_tokens / decode_seconds,
            "peak_rss": peak_rss() / 2**20, "threads": threads, "repack": repack,
            "llama_cpp_python": llama_cpp.__version__}


def quantize(src: str, dst: str, ftype: str) -> dict:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.nthread = 2
    if llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params)) != 0:
        raise RuntimeError(f"llama_model_quantize failed for {ftype}")
    return {"path": dst, "ftype": ftype}


def logits(gguf: str, ids_path: str, out: str) -> dict:
    ids = json.loads(open(ids_path).read())
    llm = llama_cpp.Llama(gguf, n_ctx=len(ids) + 8, n_batch=512, n_ubatch=512, logits_all=True,
                          n_threads=2, n_threads_batch=2, verbose=False)
    llm.eval(ids)
    np.save(out, np.asarray(llm.scores[: len(ids)], dtype=np.float32))  # [S, V]
    return {"path": out, "positions": len(ids)}


def main() -> int:
    mode, args = sys.argv[1], sys.argv[2:]
    try:
        if mode == "bench":
            options = json.loads(args[1])
            result = bench(args[0], options["prompt_tokens"], options["gen_tokens"], options["threads"],
                           options.get("repack", True))
        elif mode == "quantize":
            result = quantize(*args)
        elif mode == "logits":
            result = logits(*args)
        else:
            raise ValueError(f"unknown mode {mode!r} (bench, quantize or logits)")
    except Exception as error:  # one line for the parent to show
        print(f"llama_child: error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
