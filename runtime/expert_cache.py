"""The cache of hot experts: built ONNX Runtime sessions kept within a budget in bytes.

Keys are `(layer, expert)`; values are whatever the store builds (a session) with the bytes it
is charged. The cache counts how often each key was asked for, resident or not, with counts
halved now and then so they follow the conversation, and to make room it evicts the resident
entry asked for least (the least recently used among equals), never one of the keys the current
layer is about to run (`protect`). Frequency beats recency here: a token runs 4 experts in each
of 32 layers, so a 4B budget of ~130 experts holds about one token's worth and a plain LRU
evicts each expert just before its layer comes round again (replaying a skewed 4B routing trace
at 125 entries: LRU 0.1% of decode hits, least-used-of-the-16-oldest 14%, least-used overall
40%, clairvoyant 58%). The cache only keeps books; building, loading ahead and waiting are the
expert store's business.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Hashable

AGING_PERIOD = 64  # use counts are halved after this many uses per resident entry (at least 64 entries)


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
        self._uses: dict[Hashable, int] = {}  # demand per key, resident or not, halved when aging
        self._uses_since_aging = 0
        self._protected: frozenset = frozenset()
        self._lock = threading.Lock()

    def get(self, key: Hashable, count: bool = True) -> Any | None:
        """The cached value, or None. With `count` (a real use of the expert) it counts a hit or
        a miss and the demand for `key`, and makes the entry the most recently used."""
        with self._lock:
            return self._get(key, count)

    def use(self, keys: list) -> list:
        """A counted `get` of each of `keys` (one layer's experts), which become the protected
        ones, under one lock."""
        with self._lock:
            self._protected = frozenset(keys)
            return [self._get(key, True) for key in keys]

    def _get(self, key: Hashable, count: bool) -> Any | None:
        if count:
            self._count_use(key)
        entry = self._entries.get(key)
        if entry is None:
            self.stats.misses += count
            return None
        if not count:
            return entry[0]
        self._entries.move_to_end(key)
        self.stats.hits += 1
        self.stats.hits_by_key[key] = self.stats.hits_by_key.get(key, 0) + 1
        return entry[0]

    def peek(self, key: Hashable) -> bool:
        """Whether `key` is resident, without touching its recency or the stats."""
        with self._lock:
            return key in self._entries

    def put(self, key: Hashable, value: Any, nbytes: int) -> list[Hashable]:
        """Insert (or refresh) `key` as the most recent entry; returns the keys evicted for room."""
        evicted = []
        with self._lock:
            if key in self._entries:
                self.used -= self._entries.pop(key)[1]
            evicted = self._evict_until(nbytes)
            self._entries[key] = (value, nbytes)
            self.used += nbytes
        return evicted

    def room(self) -> int | None:
        """Bytes free in the budget (None: unlimited)."""
        with self._lock:
            return None if self.budget is None else self.budget - self.used

    def set_budget(self, budget_bytes: int | None) -> list[Hashable]:
        """A new budget (the KV cache grew, say); returns the keys evicted to fit it."""
        with self._lock:
            self.budget = budget_bytes
            return self._evict_until(0)

    def protect(self, keys) -> None:
        """Keys about to run (one layer's experts): not evicted until the next `protect`."""
        with self._lock:
            self._protected = frozenset(keys)

    def _evict_until(self, incoming: int) -> list[Hashable]:
        evicted = []
        while self.budget is not None and self._entries and self.used + incoming > self.budget:
            victim = self._victim()
            self.used -= self._entries.pop(victim)[1]
            self.stats.evictions += 1
            evicted.append(victim)
        return evicted

    def _victim(self) -> Hashable:
        """The entry asked for least (the least recent on a tie), unprotected if any is."""
        uses, protected = self._uses, self._protected
        candidates = (k for k in self._entries if k not in protected)
        victim = min(candidates, key=lambda k: uses.get(k, 0), default=None)
        return next(iter(self._entries)) if victim is None else victim

    def _count_use(self, key: Hashable) -> None:
        self._uses[key] = self._uses.get(key, 0) + 1
        self._uses_since_aging += 1
        if self._uses_since_aging >= AGING_PERIOD * max(len(self._entries), 64):
            self._uses_since_aging = 0
            self._uses = {k: n // 2 for k, n in self._uses.items() if n > 1}

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
