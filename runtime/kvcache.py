"""The KV cache: per-layer key/value buffers that attention updates in place, sized as
SmallThinker was designed (global layers keep every position, sliding layers their window).

One `KVCache` is the run state of one token sequence. GroupQueryAttention receives each
layer's buffer as both past and present through IOBinding, so appending a chunk writes into
the buffer without a copy; `length` says how many positions the sequence holds.

A sliding layer's buffer has `window + step - 1` rows. ONNX Runtime (1.32, `sliding_window_cache=1`)
keeps the most recent positions contiguous from row 0; once the buffer is full it drops the
oldest `step` positions at once (no ring: rows never wrap), so the window is always whole and
one compaction is paid every `step` tokens. Keys are rotated by absolute position before they
are stored, so moving them is exact. `trim` can only go back to a length whose window is still
resident; otherwise the sequence starts over (see `trim`).
"""
from __future__ import annotations

import mmap
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

KV_DTYPES = {"float16": np.float16, "float32": np.float32}


def window_rows(window: int) -> int:
    """Rows of a sliding layer's buffer: the window plus a step of window/16 - 1 positions
    of slack, so the compaction that makes room runs once every window/16 tokens."""
    return window + max(1, window // 16) - 1


@dataclass(frozen=True)
class KVLayout:
    """How many rows each layer keeps for a context, and in which type."""

    capacity: int               # positions the sequence may hold (the context)
    rows: tuple[int, ...]       # per layer: buffer rows, capacity for a global layer
    windows: tuple[int, ...]    # per layer: sliding window, 0 for a global layer
    num_kv_heads: int
    head_dim: int
    dtype: str = "float16"

    @classmethod
    def for_model(cls, cfg, capacity: int, dtype: str = "float16") -> "KVLayout":
        windows = tuple(cfg.sliding_window if sliding else 0 for sliding in cfg.sliding_layers)
        # a sliding buffer never needs more rows than the context, and ORT needs >= the window
        rows = tuple(max(w, min(capacity, window_rows(w))) if w else capacity for w in windows)
        return cls(capacity, rows, windows, cfg.num_kv_heads, cfg.head_dim, dtype)

    @property
    def bytes_per_position(self) -> int:
        """Keys and values of one position in one layer."""
        return 2 * self.num_kv_heads * self.head_dim * np.dtype(KV_DTYPES[self.dtype]).itemsize

    def nbytes(self, positions: int | None = None) -> int:
        """Bytes written once the sequence has held `positions` (default: the whole context)."""
        positions = self.capacity if positions is None else positions
        return sum(min(positions, rows) for rows in self.rows) * self.bytes_per_position

    def first_resident(self, length: int) -> int:
        """The oldest position still in every sliding buffer after `length` positions
        (ORT's eviction rule: a full buffer of C rows drops G = C - W + 1 positions at a time)."""
        first = 0
        for rows, window in zip(self.rows, self.windows):
            if window and length > rows:
                step = rows - window + 1
                first = max(first, step * -(-(length - rows) // step))
        return first


def lazy_zeros(shape: tuple[int, ...], dtype) -> np.ndarray:
    """A zeroed array whose pages cost RAM only once written, 4 KiB at a time. `np.zeros` asks
    for transparent huge pages on arrays of 4 MiB and more, so the first position written to a
    layer's buffer made 2 MiB of it resident: 128 MiB for a fresh 4B cache, about eight times
    what the budget charged for its first positions."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    buffer = mmap.mmap(-1, max(nbytes, 1))  # anonymous: zero-filled, mapped on first write
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        buffer.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(buffer, dtype=dtype, count=int(np.prod(shape))).reshape(shape)


class KVCache:
    def __init__(self, layout: KVLayout):
        self.layout = layout
        self.capacity = layout.capacity
        self.length = 0
        self.high_water = 0  # positions ever charged to the memory budget (see Model._charge_kv)
        self.tokens: list[int] = []  # the ids whose keys/values are held, in order
        dtype = KV_DTYPES[layout.dtype]
        shapes = [(1, layout.num_kv_heads, rows, layout.head_dim) for rows in layout.rows]  # [1, nKV, L, D]
        # pages never written cost no RAM (the budget charges the cache as it fills)
        self.keys = [lazy_zeros(shape, dtype) for shape in shapes]
        self.values = [lazy_zeros(shape, dtype) for shape in shapes]
        self.key_values = [ort.OrtValue.ortvalue_from_numpy(a) for a in self.keys]
        self.value_values = [ort.OrtValue.ortvalue_from_numpy(a) for a in self.values]
        self.bindings: dict = {}  # id(model) -> (model, per-layer attention bindings of the decode step)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.keys) + sum(a.nbytes for a in self.values)

    @property
    def free(self) -> int:
        return self.capacity - self.length

    def trim(self, length: int) -> int:
        """Keep the first `length` positions (later ones are overwritten by the next prefill);
        returns the length kept. A sliding buffer that has already dropped positions the
        shorter sequence still needs cannot go back: then the cache is emptied and 0 returned."""
        length = max(0, min(length, self.length))
        if self.layout.first_resident(length) != self.layout.first_resident(self.length):
            length = 0
        self.length = length
        del self.tokens[length:]
        return length

    def common_prefix(self, token_ids) -> int:
        """How many leading ids of `token_ids` are already in the cache."""
        n = 0
        for held, new in zip(self.tokens, token_ids):
            if held != new:
                break
            n += 1
        return n
