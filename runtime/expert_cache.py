"""The LRU of hot experts: built ONNX Runtime sessions kept within a budget in bytes.

Keys are `(layer, expert)`; values are whatever the store builds (a session) with the bytes it
is charged. Eviction drops the least recently used entries until a new one fits. The cache
only keeps books; building, loading ahead and waiting are the expert store's business.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Hashable


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    bytes_read: int = 0        # expert bytes read from the bundle to build sessions
    load_seconds: float = 0.0  # time spent building sessions (on any thread)
    stall_seconds: float = 0.0  # time compute waited for an expert that was not ready
    hits_by_key: dict = field(default_factory=dict)

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class ExpertCache:
    def __init__(self, budget_bytes: int | None):
        self.budget = budget_bytes  # None: unlimited
        self.used = 0
        self.stats = CacheStats()
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, count: bool = True) -> Any | None:
        """The cached value (now most recently used), or None; counts a hit or a miss."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.stats.misses += count
                return None
            self._entries.move_to_end(key)
            if not count:
                return entry[0]
            self.stats.hits += 1
            self.stats.hits_by_key[key] = self.stats.hits_by_key.get(key, 0) + 1
            return entry[0]

    def peek(self, key: Hashable) -> bool:
        """Whether `key` is resident, without touching its recency or the stats."""
        with self._lock:
            return key in self._entries

    def put(self, key: Hashable, value: Any, nbytes: int) -> list[Hashable]:
        """Insert (or refresh) `key`; returns the keys evicted to make room."""
        evicted = []
        with self._lock:
            if key in self._entries:
                self.used -= self._entries.pop(key)[1]
            while self.budget is not None and self._entries and self.used + nbytes > self.budget:
                old_key, (_, old_bytes) = self._entries.popitem(last=False)
                self.used -= old_bytes
                self.stats.evictions += 1
                evicted.append(old_key)
            self._entries[key] = (value, nbytes)
            self.used += nbytes
        return evicted

    def resident(self) -> list[Hashable]:
        """Keys in recency order, least recently used first."""
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.used = 0

    def __len__(self) -> int:
        return len(self._entries)
