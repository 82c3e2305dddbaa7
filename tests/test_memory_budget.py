"""Peak RSS under a memory budget, measured in a fresh process on a small synthetic model."""
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import runtime
from runtime import synthetic
from skips import linux_only

# Experts large enough to dominate memory (256 experts x 0.64 MiB resident), the rest small.
SMALL = replace(synthetic.TINY_4B_LIKE, hidden_size=512, expert_ffn_size=512, num_layers=8,
                num_experts=32, num_experts_per_tok=2, num_heads=4, num_kv_heads=2, head_dim=64,
                context_length=4096)

CHILD = r"""
import json, sys
import numpy as np
import runtime
budget = int(sys.argv[2]) if sys.argv[2] != "none" else None
model = runtime.load(sys.argv[1], memory_budget=budget, context=256)
cache = model.new_cache()
rng = np.random.default_rng(0)
for _ in range(3):   # every expert of every layer, again and again
    cache.trim(0)
    model.prefill(rng.integers(0, 500, 96).tolist(), cache, chunk_size=8)
stats = model.experts.cache.stats
from stchat.bench_child import peak_rss  # VmHWM: this process's own peak, not the parent's
print(json.dumps({"peak": peak_rss(),
                  "minimum": model.minimum_budget, "evictions": stats.evictions,
                  "resident_experts": len(model.experts.cache)}))
"""


def _run(bundle: Path, budget, child: str = CHILD, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", child, str(bundle), str(budget), *args], check=True,
                         capture_output=True, text=True, timeout=300)
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    return runtime.convert(synthetic.write_gguf(SMALL, root / "small.gguf"), root / "bundle")


def test_peak_rss_stays_within_the_budget(small_bundle):
    free = _run(small_bundle, "none")
    assert free["resident_experts"] == SMALL.num_layers * SMALL.num_experts and free["evictions"] == 0
    # the smallest budget: this small child process stays below the baseline the minimum assumes
    # (runtime.memory.PROCESS_BASELINE), so that difference is room for some experts, not all
    budget = free["minimum"]
    assert free["peak"] > budget, "the model must not fit in the budget, or the test proves nothing"
    tight = _run(small_bundle, budget)
    assert tight["evictions"] > 0
    assert tight["peak"] <= budget, f"peak RSS {tight['peak'] / 2**20:.0f} MiB > budget {budget / 2**20:.0f} MiB ({free}, {tight})"


KV_CHILD = r"""
import json, sys
import numpy as np
import runtime
model = runtime.load(sys.argv[1], memory_budget=int(sys.argv[2]), context=4096, kv_dtype=sys.argv[3])
empty = model.experts.cache.budget   # no KV position written yet
cache = model.new_cache()
rng = np.random.default_rng(0)
model.prefill(rng.integers(0, 500, 64).tolist(), cache)
short = model.experts.cache.budget
model.prefill(rng.integers(0, 500, 3000).tolist(), cache)
from stchat.bench_child import peak_rss
print(json.dumps({"peak": peak_rss(), "empty": empty, "short": short, "long": model.experts.cache.budget,
                  "minimum": model.minimum_budget, "charge": model.experts.charge, "dtype": cache.layout.dtype}))
"""


def kv_bytes_per_position(dtype: str) -> int:
    """Keys and values of one position in every layer (all global here), from the model's shape."""
    return 2 * SMALL.num_layers * SMALL.num_kv_heads * SMALL.head_dim * np.dtype(dtype).itemsize


@pytest.mark.parametrize("kv_dtype", ["float32", "float16"])
def test_the_kv_cache_is_paid_for_as_it_fills_and_the_peak_stays_within_the_budget(small_bundle, kv_dtype):
    probe = _run(small_bundle, 2**40, KV_CHILD, kv_dtype)
    whole = 4096 * kv_bytes_per_position(kv_dtype)
    assert whole > 16 * probe["charge"], "the KV cache must matter"
    budget = probe["minimum"] + 24 * 2**20 + (whole if kv_dtype == "float32" else 0)
    run = _run(small_bundle, budget, KV_CHILD, kv_dtype)
    if kv_dtype == "float32":
        # the experts give up exactly the KV pages written so far, charged 256 positions at a
        # time: 64 positions cost 256, 3064 cost 3072; a short conversation lends them the rest
        assert run["empty"] - run["short"] == 256 * kv_bytes_per_position(kv_dtype)
        assert run["empty"] - run["long"] == 3072 * kv_bytes_per_position(kv_dtype)
    else:  # ONNX Runtime writes a float16 cache whole on its first call: charged whole at once
        assert run["empty"] - run["short"] == run["empty"] - run["long"] == whole
    # and the process stays within the budget
    assert run["peak"] <= budget, f"peak RSS {run['peak'] / 2**20:.0f} MiB > budget {budget / 2**20:.0f} MiB ({run})"


def _mapped_rss_kib(file_name: str) -> int:
    total, current = 0, None
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5 and ":" in fields[3]:  # a mapping's header
                current = fields[5] if len(fields) >= 6 else None
            elif line.startswith("Rss:") and current and current.endswith(file_name):
                total += int(fields[1])
    return total


@linux_only
def test_the_mapped_dense_weights_leave_rss_once_loaded_and_stay_out(small_bundle):
    """Embedding rows are read, not touched through the mapping: random ids used to fault in
    whole folios of dense.bin, 130 MiB for 128 tokens of the full-size 4B."""
    model = runtime.load(small_bundle)
    assert _mapped_rss_kib("dense.bin") == 0
    rng = np.random.default_rng(0)
    model.prefill(rng.integers(0, model.config.vocab_size, 64).tolist(), model.new_cache())
    assert _mapped_rss_kib("dense.bin") == 0
    np.testing.assert_array_equal(model.embed(np.array([3, 1, 3]))[0, 0], model.embed(np.array([3]))[0, 0])


def test_keys_and_values_are_float16_when_memory_is_short(small_bundle):
    from runtime.memory import PROCESS_BASELINE, process_rss

    roomy = runtime.load(small_bundle)
    assert roomy.kv_dtype == "float32"
    # the minimum assumes a process of PROCESS_BASELINE bytes before the model; this test process
    # is larger (other models are loaded), so the tight budget adds what it holds beyond that
    tight = runtime.load(small_bundle, memory_budget=roomy.minimum_budget + process_rss() - PROCESS_BASELINE + (2 << 20))
    assert tight.kv_dtype == "float16" and tight.new_cache().keys[0].dtype == np.float16
