"""What the model actually computed: the KV cache positions each forward pass wrote.

Counts a chat reports (`Finished.prompt_tokens`) are the code's own claim; a test of KV cache
reuse must look at the work done instead. `ComputeSpy` wraps `Model._forward_chunk`, the one
place where tokens go through the layers and their keys/values are written (prefill chunks
and single decode steps alike), and records the cache position and ids of every pass.
"""
from __future__ import annotations

import threading

from runtime.model import Model


class ComputeSpy:
    def __init__(self, monkeypatch):
        self.passes: list[tuple[int, list[int]]] = []  # (first position written, token ids)
        self._lock = threading.Lock()  # the TUI computes in a worker thread
        forward_chunk = Model._forward_chunk

        def spy(model, token_ids, cache):
            start = cache.length
            out = forward_chunk(model, token_ids, cache)
            with self._lock:
                self.passes.append((start, [int(t) for t in token_ids]))
            return out

        monkeypatch.setattr(Model, "_forward_chunk", spy)

    def mark(self) -> int:
        """A point in the record; `since(mark)` returns what was computed after it."""
        with self._lock:
            return len(self.passes)

    def since(self, mark: int) -> list[tuple[int, list[int]]]:
        with self._lock:
            return list(self.passes[mark:])

    def positions(self, mark: int) -> list[int]:
        """Every position written since `mark`, in order (a position computed twice shows twice)."""
        return [start + i for start, ids in self.since(mark) for i in range(len(ids))]

    def tokens(self, mark: int) -> list[int]:
        return [t for _, ids in self.since(mark) for t in ids]
