"""How a model's memory budget is divided: the minimum it refuses below, the context it picks,
the room left for expert sessions, and the KV cache paid for as it fills.

A mixin of `Model` (runtime/model.py), which keeps the forward pass; these methods read the
model's bundle, config, budget and caches, and tell its expert store how much room it has.
"""
from __future__ import annotations

from .expert_levels import layer_charges
from .errors import BudgetTooSmall
from .kvcache import KVCache, KVLayout
from .memory import (PROCESS_BASELINE, allocator_headroom, format_bytes, minimum_budget, process_rss,
                     trim_slack)

SMALLEST_AUTO_CONTEXT = 4096  # positions: with no context asked for, the least a budget must hold
KV_GRANULE = 256  # positions: a KV cache is charged to the memory budget in steps of this many


class ModelMemory:
    def memory_in_use(self) -> int:
        """What the budget bounds: this process's resident memory now."""
        return process_rss()

    def resident_bytes(self) -> int:
        """Static estimate of the always-resident part (dense weights + full KV cache), from file sizes."""
        return (self.bundle.path / "dense.bin").stat().st_size + self.kv_bytes()

    def _auto_kv_dtype(self) -> str:
        """float32 whenever the budget can run the model with a float32 cache of the context
        asked for (or SMALLEST_AUTO_CONTEXT): ONNX Runtime's CPU attention reads float16 about 2x
        slower (it converts every key and value on each step; benchmarks/KV-CACHE.md), and it
        writes a float16 buffer whole on its first call, so only a float32 cache costs memory as
        it fills (`_charge_kv`). float16 when memory is too short for that."""
        cfg = self.config
        floor = self.context_asked or min(SMALLEST_AUTO_CONTEXT, cfg.context_length)
        needed = minimum_budget(dense_bytes=(self.bundle.path / "dense.bin").stat().st_size,
                                kv_bytes=KVLayout.for_model(cfg, floor, "float32").nbytes(),
                                charge=max(layer_charges(self.bundle)), experts_per_tok=cfg.num_experts_per_tok)
        larger = max(0, process_rss() - PROCESS_BASELINE)  # than the minimum assumes, before the model
        return "float32" if self.memory_budget - larger >= needed else "float16"

    def kv_layout(self, capacity: int | None = None) -> KVLayout:
        return KVLayout.for_model(self.config, capacity or self.max_context, self.kv_dtype)

    def kv_bytes(self, positions: int | None = None) -> int:
        """Bytes of a KV cache of the model's context holding `positions` (default: full)."""
        return self.kv_layout().nbytes(positions)

    def _expert_budget(self, memory_budget: int | None) -> int | None:
        """Bytes left for expert sessions and the KV cache as it fills. The minimum budget
        (`memory.minimum_budget`, the figure `stchat show` gives too) counts a full float16 KV
        cache of the context asked for; with none asked, of min(SMALLEST_AUTO_CONTEXT, trained
        length), and the context is then the longest (up to the trained length) whose full cache
        takes at most a quarter of the room for experts and KV."""
        cfg = self.config
        k = cfg.num_experts_per_tok
        charge = max(layer_charges(self.bundle))
        # measured: everything resident now (interpreter, libraries, dense sessions); then headroom
        # for memory freed but not yet trimmed and two builds in flight.
        rss = process_rss()
        resident_without_kv = rss + trim_slack(charge) + 2 * charge
        floor = self.context_asked or min(SMALLEST_AUTO_CONTEXT, cfg.context_length)
        self.minimum_budget = minimum_budget(
            dense_bytes=(self.bundle.path / "dense.bin").stat().st_size,
            kv_bytes=KVLayout.for_model(cfg, floor, "float16").nbytes(), charge=charge, experts_per_tok=k)
        self._room_for_experts_and_kv = None
        too_small = (f"memory budget of {format_bytes(memory_budget or 0)} is too small for this model with a "
                     f"context of {floor} tokens")
        if memory_budget is not None and memory_budget < self.minimum_budget:
            raise BudgetTooSmall(f"{too_small}: it needs at least {format_bytes(self.minimum_budget)}")
        if memory_budget is not None:
            room = memory_budget - allocator_headroom(memory_budget) - resident_without_kv
            short = k * charge - (room - self.kv_layout(floor).nbytes())
            if short > 0:  # a process larger than the minimum assumes (PROCESS_BASELINE)
                raise BudgetTooSmall(f"{too_small} in this process, which holds {format_bytes(rss)} with the model "
                                     f"loaded: it needs {format_bytes(short)} more")
            if self.context_asked is None:  # a quarter of the room at most: the rest is for experts
                self.max_context = self._longest_context((room - k * charge) // 4, floor)
            self._room_for_experts_and_kv = room
        self.measured_resident = resident_without_kv + self.kv_bytes()
        return self._room_for_experts_and_kv  # no KV cache written yet

    def _longest_context(self, kv_room: int, floor: int) -> int:
        """The longest context (a multiple of KV_GRANULE, or the trained length) whose full KV
        cache fits in `kv_room` bytes; at least `floor`."""
        trained = self.config.context_length
        if self.kv_layout(trained).nbytes() <= kv_room:
            return trained
        fits = floor
        while fits + KV_GRANULE < trained and self.kv_layout(fits + KV_GRANULE).nbytes() <= kv_room:
            fits += KV_GRANULE
        return fits

    def _charge_kv(self, cache: KVCache, positions: int) -> None:
        """Pay for a KV cache as it fills. Its buffers are allocated zeroed and untouched pages
        cost no RAM, so until a conversation grows long the experts may use that room (the
        4B's full 32768-token cache is 2 GiB in float32). Written pages stay resident after a
        trim, so each live cache is charged its high-water mark. A float16 cache is charged in
        full at once: ONNX Runtime 1.32's CPU attention writes every position of a float16
        buffer on its first call (measured: a fresh 13056-token 4B cache, 408 MiB, all resident
        after one token; float32 buffers only where tokens go)."""
        if positions <= cache.high_water:
            return
        filled = cache.capacity if cache.layout.dtype == "float16" else -(-positions // KV_GRANULE) * KV_GRANULE
        cache.high_water = min(cache.capacity, filled)
        if self._room_for_experts_and_kv is not None:
            kv_in_use = sum(c.layout.nbytes(c.high_water) for c in self._kv_caches)
            self.experts.set_budget(self._room_for_experts_and_kv - kv_in_use)
