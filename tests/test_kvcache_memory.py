"""A KV cache costs RAM only for the positions written: what the memory budget charges."""
import psutil

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
