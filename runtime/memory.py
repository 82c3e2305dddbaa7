"""Memory as the budget sees it: real resident bytes of this process, not file sizes.

The budget given to `load(memory_budget=...)` bounds the whole process's resident set (RSS).
Its always-resident part is measured, not estimated: the RSS once the attention and head
sessions exist and the bundle's mapped pages are released. The KV cache is charged as it
fills (`Model._charge_kv`); the minimum budget counts it full. Each expert session is charged
`expert_charge(its matrices)`: ONNX Runtime's prepacked copy plus the session itself, measured
after `malloc_trim` (Q4_0 experts at accuracy level 4: 1.2x raw plus a fixed ~75 KiB; other
formats in EXPERT_SESSION_FACTORS). Freed sessions are handed back to the OS with `malloc_trim`, because glibc
otherwise keeps freed memory and RSS drifts far above the live set.
"""
from __future__ import annotations

import ctypes
import ctypes.util

import psutil

# Resident bytes per raw byte of an expert matrix once its session is built, by format: ONNX
# Runtime's prepacked copy, the weights themselves being shared initializers it never copies
# (runtime/shared_weights.py). Measured at accuracy level 4, RSS per session after malloc_trim,
# on full-size 4B experts (2.11 MiB of Q4_0: 2.62 MiB), 21B experts (3.52: 4.31) and 0.47 MiB
# test experts (0.64): q4b32 1.20x, q4b32m 1.19x, q8b32 1.11x, q8b16 1.20x, q8b32m 1.11x...
EXPERT_SESSION_FACTORS = {"q4b32": 1.21, "q4b32m": 1.2, "q8b32": 1.12, "q8b16": 1.21, "q8b32m": 1.12}
EXPERT_SESSION_FACTOR = 1.3        # ...and for any other format
# At accuracy level 1 (fp32 activations, Q4_0 experts only: runtime/expert_levels.py) packing
# only reorders the codes and the session keeps its own copy of the scales: q4b32 1.00x
LEVEL1_SESSION_FACTORS = {"q4b32": 1.01}
EXPERT_SESSION_FIXED = 96 << 10    # ...plus this per session (graph, kernels, plans: measured ~75 KiB)
HEADROOM_FLOOR = 80 << 20        # the least of the budget kept free of accounted memory
# The process before any model: Python, numpy, ONNX Runtime, tokenizers measured 72 MiB RSS
# (`ask`, `bench`), and 91 MiB with the app's Textual loaded; the minimum assumes the larger.
PROCESS_BASELINE = 96 << 20
# What loading adds beyond dense.bin's bytes (sessions, thread pool, arenas, the prepacked head,
# less the embedding, which is read with pread and never resident): measured 12.8 MiB on the
# tiny test model and 8.3 MiB on the full-size 4B.
LOAD_OVERHEAD = 16 << 20
DEFAULT_SHARE = 0.75  # of the memory available at start, when no budget is given

_libc = None


def process_rss() -> int:
    return psutil.Process().memory_info().rss


def available_memory() -> int:
    return psutil.virtual_memory().available


def default_budget() -> int:
    """The budget when the user sets none: a share of what is available now."""
    return int(available_memory() * DEFAULT_SHARE)


def configure_allocator(churn: bool = True) -> None:
    """With `churn` (experts come and go), make glibc give large freed blocks back at once:
    allocations of 256 KiB and more get their own mapping (the threshold no longer grows as
    blocks are freed), and the heap top is trimmed past 1 MiB. Evicted sessions free their
    prepacked weights (0.5-1 MiB blocks); with glibc's defaults those stayed resident and a
    1 GiB budget peaked at 1.2 GiB. Without churn, blocks below 512 KiB come from
    the heap, which keeps up to 64 MiB free: a prompt's activations (a 128-token 4B prompt
    allocates ~400 MB over its layers) then reuse pages instead of faulting fresh ones in. Larger
    blocks from the heap too (up to 32 MiB) made that prompt 3-5% faster but fragmented the heap:
    its peak RSS was 65 MiB higher (full-size 4B: 3250 against 3185 MiB)."""
    libc = load_libc()
    if libc and hasattr(libc, "mallopt"):
        libc.mallopt(-3, (256 << 10) if churn else (512 << 10))  # M_MMAP_THRESHOLD
        libc.mallopt(-1, (1 << 20) if churn else (64 << 20))    # M_TRIM_THRESHOLD


def load_libc():
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            _libc = ctypes.CDLL(name, use_errno=True) if name else False
        except OSError:
            _libc = False
    return _libc


def trim_heap() -> None:
    """Return freed heap pages to the OS (glibc only; a no-op elsewhere)."""
    libc = load_libc()
    if libc and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def expert_charge(matrices, accuracy_level: int = 4) -> int:
    """Resident bytes of one expert session: `matrices` is [(QuantFormat or its name, raw bytes)]."""
    factors = LEVEL1_SESSION_FACTORS if accuracy_level == 1 else EXPERT_SESSION_FACTORS
    return int(sum(factors.get(getattr(fmt, "name", fmt), EXPERT_SESSION_FACTOR) * raw
                   for fmt, raw in matrices)) \
        + EXPERT_SESSION_FIXED


def allocator_headroom(budget: int) -> int:
    """Room for what the expert accounting does not see (allocator fragmentation, ONNX Runtime
    scratch while sessions are built and run): full-size runs peaked 8-11 MiB below their
    accounting for the 4B under 1 GiB and ~190 MiB below for the 21B under 8 GiB (69 MiB above
    for the 4B, before embedding rows were read with pread), so 80 MiB or 4% of the budget,
    whichever is more, is kept free."""
    return max(HEADROOM_FLOOR, budget * 4 // 100)


def minimum_with_headroom(needed: int) -> int:
    """The smallest budget B with B - allocator_headroom(B) >= needed."""
    return max(needed + HEADROOM_FLOOR, -(-needed * 100 // 96))


def minimum_budget(*, dense_bytes: int, kv_bytes: int, charge: int, experts_per_tok: int) -> int:
    """The smallest budget a model runs in, from its files alone: the one figure `load()`'s
    refusal, `stchat show`, `stchat bench` and the app's settings all give.

    It counts the process before the model (`PROCESS_BASELINE`), the dense weights as loaded
    (`dense_bytes` + `LOAD_OVERHEAD`), a full KV cache (`kv_bytes`, for the context used), one
    layer's active experts plus two being built (each `charge`, the largest layer's
    `expert_charge`), the freed memory allowed to pile up before a trim, and the allocator
    headroom kept free of all that."""
    needed = (PROCESS_BASELINE + LOAD_OVERHEAD + dense_bytes + kv_bytes + trim_slack(charge)
              + (2 + experts_per_tok) * charge)
    return minimum_with_headroom(needed)


def trim_slack(charge: int) -> int:
    """Freed bytes allowed to pile up before `trim_heap` runs (trimming walks the whole heap)."""
    return min(64 << 20, 8 * charge)


def format_bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"
