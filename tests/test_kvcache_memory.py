"""A KV cache costs RAM only for the positions written: what the memory budget charges."""
import psutil
import pytest

from runtime.kvcache import KVCache, KVLayout


def test_a_fresh_cache_costs_ram_only_for_what_is_written():
    # 16 buffers of 8 MiB: large enough that numpy would ask for transparent huge pages, with
    # which writing one position made 2 MiB of each head resident (128 MiB for a fresh 4B cache)
    layout = KVLayout(capacity=8192, rows=(8192,) * 8, windows=(0,) * 8, num_kv_heads=2, head_dim=128,
                      dtype="float32")
    process = psutil.Process()
    before = process.memory_info().rss
    cache = KVCache(layout)
    for buffer in cache.keys + cache.values:
        buffer[0, :, 0, :] = 1.0        # the first position of every head: one page each
    grown = process.memory_info().rss - before
    assert grown < 4 << 20, f"{grown / 2**20:.1f} MiB resident for 32 pages written"
    assert cache.nbytes == 2 * 8 * 2 * 8192 * 128 * 4


def _resident_bytes(array) -> int:
    """RSS of the mapping that holds `array` (each KV buffer is a mapping of its own)."""
    address, inside = array.__array_interface__["data"][0], False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                low, high = (int(part, 16) for part in head.split("-"))
                inside = low <= address < high
            elif inside and head == "Rss:":
                return int(line.split()[1]) * 1024
    raise AssertionError("buffer not found in /proc/self/smaps")


@pytest.mark.parametrize("kv_dtype", ["float16", "float32"])
def test_the_budget_charges_at_least_what_attention_makes_resident(kv_dtype):
    # ONNX Runtime's float16 attention writes the whole buffer on its first call: a cache
    # charged by the positions written would undercount it (408 MiB for a 13056-token 4B cache)
    import runtime
    from tests.model_fixtures import bundle

    model = runtime.load(bundle("4b"), threads=1, memory_budget=2 << 30, kv_dtype=kv_dtype, context=512)
    cache = model.new_cache()
    model.prefill([5], cache)
    resident = sum(_resident_bytes(buffer) for buffer in cache.keys + cache.values)
    charged = cache.layout.nbytes(cache.high_water)
    assert resident > 0
    assert resident <= charged, f"{resident} bytes resident, {charged} charged ({kv_dtype})"
    model.close()
