"""A few KV caches shared by independent requests, so a conversation that continues is not prefilled again.

A server sees whole conversations, not turns: each request carries the full history. Keeping
the KV cache of the last few prompts (plus the replies generated after them) lets a follow-up
request prefill only what is new. Each slot remembers the exact text its cached tokens spell,
so a prompt that extends that text reuses those very ids instead of re-tokenizing the earlier
reply (a model's own tokens are not always the tokenizer's canonical split of their text).

A request goes to the slot sharing the longest token prefix with it. A request that shares
little with every slot starts a new one while there is room, else takes the least recently
used slot. Caches are never freed, so the pool's memory is fixed once its slots exist. Each
cache is charged at its full size when created, and only as many exist as `byte_limit` holds
at full size. (This was a workaround for a 1 GiB 4B server that reached 1027 MiB: a fresh cache
made far more resident than the fill-based charge of `Model._charge_kv` counted. The cause was
numpy's transparent huge pages on the KV buffers, since fixed in `kvcache.lazy_zeros`, so the
fill-based charge would now do; the full charge stays until measured again.) Not thread-safe:
one generation at a time uses it.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from .kvcache import KVCache

DEFAULT_SLOTS = 4


@dataclass(eq=False)
class Slot:
    cache: KVCache
    known_text: str = ""  # text whose exact token ids are `known_ids` (and the cache's tokens)
    known_ids: list[int] = field(default_factory=list)
    last_used: int = 0


def default_byte_limit(model) -> int:
    """One full cache (the minimum budget counts it) plus half of the budget above the minimum."""
    return model.kv_bytes() + max(0, (model.memory_budget - model.minimum_budget) // 2)


class KVPool:
    def __init__(self, model, slots: int = DEFAULT_SLOTS, byte_limit: int | None = None):
        self.model = model
        self.byte_limit = default_byte_limit(model) if byte_limit is None else byte_limit
        self.max_slots = max(1, min(slots, self.byte_limit // model.kv_bytes()))
        self.slots: list[Slot] = []
        self._clock = itertools.count(1)

    def _encode(self, text: str) -> list[int]:
        return self.model.tokenizer.encode(text, add_special_tokens=False).ids

    def _ids_for(self, slot: Slot, text: str, plain: list[int]) -> list[int]:
        if slot.known_text and text.startswith(slot.known_text):
            return slot.known_ids + self._encode(text[len(slot.known_text):])
        return plain

    def acquire(self, text: str) -> tuple[Slot, list[int]]:
        """The slot to run `text` in, and its token ids."""
        plain = self._encode(text)
        best, best_ids, best_shared = None, plain, 0
        for slot in self.slots:
            ids = self._ids_for(slot, text, plain)
            shared = slot.cache.common_prefix(ids)
            if shared > 0 and (shared, slot.last_used) > (best_shared, best.last_used if best else 0):
                best, best_ids, best_shared = slot, ids, shared
        # Most of a slot reused (a follow-up, a regenerated reply): take it. Little shared (a
        # common system prompt at most): keep that slot's conversation, start a new one if allowed,
        # else reuse what can be reused, else the least recently used slot.
        if best is None or 2 * best_shared < best.cache.length:
            if len(self.slots) < self.max_slots:
                best, best_ids = Slot(self._new_cache()), plain
                self.slots.append(best)
            elif best is None:
                best = min(self.slots, key=lambda s: s.last_used)
                best_ids = self._ids_for(best, text, plain)
        best.last_used = next(self._clock)
        return best, best_ids

    def _new_cache(self) -> KVCache:
        cache = self.model.new_cache()
        self.model._charge_kv(cache, cache.capacity)  # in full, now (see the module docstring)
        return cache

    def record(self, slot: Slot, text: str, ids: list[int]) -> None:
        """After a generation: `text` (prompt + reply) is exactly `ids`, if those are what the cache holds."""
        exact = slot.cache.tokens == ids
        slot.known_text, slot.known_ids = (text, list(ids)) if exact else ("", [])
