"""The KV cache: preallocated per-layer key/value buffers that attention updates in place.

One `KVCache` is the run state of one token sequence. GroupQueryAttention receives each
layer's buffer as both past and present through IOBinding, so appending a chunk writes into
the buffer without a copy; `length` says how many positions are valid, and `trim` forgets
the tail so a chat can reuse a common prefix.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort


class KVCache:
    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, capacity: int):
        self.capacity = capacity
        self.length = 0
        self.high_water = 0  # positions ever charged to the memory budget (see Model._charge_kv)
        self.tokens: list[int] = []  # the ids whose keys/values are held, in order
        shape = (1, num_kv_heads, capacity, head_dim)  # [1, nKV, L, D]
        self.keys = [np.zeros(shape, np.float32) for _ in range(num_layers)]
        self.values = [np.zeros(shape, np.float32) for _ in range(num_layers)]
        self.key_values = [ort.OrtValue.ortvalue_from_numpy(a) for a in self.keys]
        self.value_values = [ort.OrtValue.ortvalue_from_numpy(a) for a in self.values]
        self.bindings: dict = {}  # id(model) -> (model, per-layer attention bindings of the decode step)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.keys) + sum(a.nbytes for a in self.values)

    @property
    def free(self) -> int:
        return self.capacity - self.length

    def trim(self, length: int) -> None:
        """Keep the first `length` positions; later ones are overwritten by the next prefill."""
        self.length = max(0, min(length, self.length))
        del self.tokens[self.length:]

    def common_prefix(self, token_ids) -> int:
        """How many leading ids of `token_ids` are already in the cache."""
        n = 0
        for held, new in zip(self.tokens, token_ids):
            if held != new:
                break
            n += 1
        return n
