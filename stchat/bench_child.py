"""One `stchat bench` run, in its own process: prints one JSON object of measurements.

Kept separate from `stchat.bench` so that the parent never loads a model: every run starts
cold and its peak RSS (VmHWM, this process's own high-water mark) is its own.
"""
from __future__ import annotations

import json
import sys
import time

from stchat import cgroup


def peak_rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(bundle: str, memory: int | None, threads: int | None, prompt_tokens: int, gen_tokens: int,
            context: int | None = None, fast_routing: float = 0.0) -> dict:
    import numpy as np

    import runtime
    from stchat.manage import Installed

    started = time.perf_counter()
    model = runtime.load(bundle, memory_budget=memory, threads=threads, context=context, fast_routing=fast_routing)
    if model.max_context < prompt_tokens + gen_tokens:
        raise ValueError(f"the context of {model.max_context} tokens cannot hold {prompt_tokens} + {gen_tokens}")
    load_seconds = time.perf_counter() - started
    rng = np.random.default_rng(0)
    vocab = model.config.vocab_size
    cache = model.new_cache()
    started = time.perf_counter()  # cold: every expert session is built on the way
    model.prefill(rng.integers(0, vocab, prompt_tokens).tolist(), cache)
    cold_seconds = time.perf_counter() - started
    cache.trim(0)
    # idle time, as the app spends it while its user reads and types: build the experts the
    # first prompt did not ask for, within the free budget (none when experts come and go)
    started = time.perf_counter()
    idle_built = model.warm_experts(model.expert_usage())
    idle_seconds = time.perf_counter() - started
    resident = len(model.experts.cache)
    started = time.perf_counter()  # warm: what the cache holds after one prompt and idle time
    logits = model.prefill(rng.integers(0, vocab, prompt_tokens).tolist(), cache)
    token = int(np.argmax(logits))
    prefill_seconds = time.perf_counter() - started
    stats = model.experts.cache.stats
    before = (stats.hits, stats.misses, stats.bytes_read, stats.stall_seconds)
    started = time.perf_counter()
    for _ in range(gen_tokens):
        token = int(np.argmax(model.prefill([token], cache)))
    decode_seconds = time.perf_counter() - started
    hits, misses = stats.hits - before[0], stats.misses - before[1]
    result = {
        "load_seconds": load_seconds,
        "ttft_seconds": prefill_seconds,
        "cold_ttft_seconds": cold_seconds,
        "idle_built": idle_built,
        "idle_build_seconds": idle_seconds,
        "experts_resident": resident,  # after idle time, when the warm prompt starts
        "experts": model.config.num_layers * model.config.num_experts,
        "prefill_tps": prompt_tokens / prefill_seconds,
        "decode_tps": gen_tokens / decode_seconds,
        "peak_rss": peak_rss() / 2**20,
        "hit_rate": hits / (hits + misses) if hits + misses else 0.0,
        "read_per_token": (stats.bytes_read - before[2]) / gen_tokens / 2**20,
        "stall_per_token": (stats.stall_seconds - before[3]) / gen_tokens * 1e3,
        # as `show` gives it: for the context a run asks for by default, not this short one
        "minimum_budget": Installed("", model.bundle.path, model.bundle.manifest, {}).memory()["minimum"],
        "always_resident": model.measured_resident,  # dense sessions, runtime, a full KV cache
        "context": model.max_context,
        "kv_cache": model.kv_bytes(),
        "kv_dtype": model.kv_dtype,
        "threads": model.threads,
        "cgroup_limit": cgroup.current_limit(),  # the cap as the kernel enforces it on this process
    }
    model.close()
    return result


def main() -> int:
    args = json.loads(sys.argv[2])
    try:
        print(json.dumps(measure(sys.argv[1], args["memory"], args["threads"], args["prompt_tokens"],
                                 args["gen_tokens"], args.get("context"),
                                 args.get("fast_routing", 0.0))))
    except Exception as error:  # one line for the parent to show
        print(f"stchat: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
