"""Expert sessions: one ONNX Runtime session per (layer, expert), built from the shared graph.

Each expert's six arrays are views of `experts.bin`; building a session prepacks them. Built
sessions live in an `ExpertCache` whose byte budget decides how many stay resident, each built
at full accuracy level or lean, as `expert_levels` says the budget allows. The
pre-attention router calls `prefetch` with the experts a layer is about to need, and the
`ExpertLoader` threads read and build the missing ones while attention runs (reading the next
while building one, through a small pool of read buffers). `session` builds on the spot what
the loader has not started, and while the loader builds, builds the layer's other queued
experts: on two cores, two builds at a time.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Callable

import numpy as np
import onnxruntime as ort

from .bundle import Bundle, array_bytes, read_buffer
from .decode import expert_binding
from .expert_cache import ExpertCache
from .expert_loader import ExpertLoader
from .expert_levels import layout_charge, lean_level
from .memory import trim_heap, trim_slack
from .sessions import make_session


def warm_order(usage: np.ndarray | None, num_layers: int, num_experts: int) -> list[tuple[int, int]]:
    """(layer, expert) keys, most asked-for first by `usage` ([layers, experts] counts from
    earlier runs); without a record, layer by layer, as a first prompt needs them."""
    keys = [(layer, expert) for layer in range(num_layers) for expert in range(num_experts)]
    if usage is None or np.shape(usage) != (num_layers, num_experts):
        return keys
    return sorted(keys, key=lambda k: -float(usage[k]))  # stable: ties stay layer by layer


class ExpertStore:
    def __init__(self, bundle: Bundle, graph: Callable[[str, int], bytes], budget_bytes: int | None = None,
                 accuracy_level: int = 4, full_per_layer: int | None = None, direct_reads: bool = False):
        """`graph(name, level)`: the expert graph `name` (`bundle.expert_graph_name`) at accuracy
        `level`. At most `full_per_layer` experts of a layer (default: all) are resident at
        `accuracy_level`, those the router asked for most; the others are built at their lean
        level (`lean_level`). `direct_reads`: memory is short (the budget cannot hold every
        expert at full level), so reads bypass the page cache rather than double the experts
        in it."""
        cfg = bundle.config
        self.bundle = bundle
        self._graph, self._graphs = graph, {}  # (graph name, level) -> graph bytes, made once
        self.layer_bytes = [array_bytes(bundle.expert_layouts[key]["arrays"].values())  # raw bytes per expert
                            for key in bundle.layer_layouts]
        self.expert_bytes = max(self.layer_bytes)
        layouts = [bundle.expert_layouts[key] for key in bundle.layer_layouts]
        self.levels = [(accuracy_level, lean_level(layout, accuracy_level)) for layout in layouts]  # (full, lean)
        self.full_per_layer = cfg.num_experts if full_per_layer is None else full_per_layer
        self._charges = {(layer, level): layout_charge(layout, level)  # resident bytes per session
                         for layer, layout in enumerate(layouts) for level in self.levels[layer]}
        self.charge = max(self.charges(level=accuracy_level if self.full_per_layer else None))
        self.direct_reads = direct_reads  # bypass the page cache (Bundle.read_expert)
        # while a prompt is computed, builds share both cores with it and with each other, so
        # each prepacks on its own thread: less CPU in all (the full-size 21B's first prompt:
        # 27.1 s against 29.2-31.0). Otherwise a build is awaited and the pool helps it.
        self.prompt_running = False
        # how often the router asked for each expert since load (tokens routed to it): saved
        # between runs by the application, it orders `warm`, and with `prior` (the saved record)
        # decides which experts are built at full level
        self.requests = np.zeros((cfg.num_layers, cfg.num_experts), np.int64)
        self.prior: np.ndarray | None = None
        self._level_of: dict[tuple[int, int], int] = {}  # resident key -> its accuracy level
        self._full_resident = [0] * cfg.num_layers
        self._levels_lock = threading.Lock()
        self._freed_since_trim = 0
        self._trim_every = trim_slack(self.charge)
        self.cache = ExpertCache(budget_bytes)
        self._local = threading.local()
        self._layer_keys: list[tuple[int, int]] = []  # the experts the current layer asked for
        self._read_buffers: queue.Queue = queue.Queue()  # one being read, one queued, one being built
        for _ in range(3):
            self._read_buffers.put(read_buffer(bundle.expert_stride))
        self.loader = ExpertLoader(self._build_read, read=self._read)

    def charges(self, level: int | None = None) -> list[int]:
        """Resident bytes of one session of each layer at `level` (None: the lean level)."""
        return [self._charges[layer, full if level == full else lean] for layer, (full, lean) in enumerate(self.levels)]

    def level_of(self, layer: int, expert: int) -> int | None:
        """The accuracy level of a resident expert's session (None: not resident)."""
        with self._levels_lock:
            return self._level_of.get((layer, expert))

    def _level_for(self, key: tuple[int, int], reserve: bool = True) -> int:
        """Full level for a layer's most asked-for experts while the layer has room for them
        at full level (`reserve`: take that room, for a build), the lean level otherwise."""
        layer, expert = key
        full, lean = self.levels[layer]
        if full == lean or self.full_per_layer == 0:
            return lean
        demand = self.requests[layer] + (self.prior[layer] if self.prior is not None else 0)  # [E]
        if np.count_nonzero(demand > demand[expert]) >= self.full_per_layer:
            return lean
        with self._levels_lock:
            if self._full_resident[layer] >= self.full_per_layer:
                return lean
            self._full_resident[layer] += reserve
        return full

    def _scratch(self) -> np.ndarray:
        """A per-thread read buffer: ONNX Runtime prepacks the weights, then never reads it again."""
        buffer = getattr(self._local, "buffer", None)
        if buffer is None:
            buffer = self._local.buffer = read_buffer(self.bundle.expert_stride)
        return buffer

    def _build_here(self, key: tuple[int, int]) -> ort.InferenceSession:
        """Read and build `key` on the calling thread, and cache it."""
        return self._insert(key, self._session_from(key, self._read_into(key, self._scratch())))

    def _read_into(self, key: tuple[int, int], buffer: np.ndarray) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        arrays = self.bundle.read_expert(*key, buffer, direct=self.direct_reads)
        self.cache.stats.load_seconds += time.perf_counter() - started
        return arrays

    def _session_from(self, key: tuple[int, int], arrays: dict[str, np.ndarray]) -> tuple[ort.InferenceSession, int]:
        """A session for `key` from its arrays, and the accuracy level it was built at."""
        started = time.perf_counter()
        level = self._level_for(key)
        try:
            name = self.bundle.expert_graph_name(key[0])
            graph = self._graphs.get((name, level))
            if graph is None:
                graph = self._graphs[name, level] = self._graph(name, level)
            # the session never reads the read buffer after creation (`make_session`): reused at once
            weights = {f"expert/{name}": array for name, array in arrays.items()}
            session = make_session(graph, weights, keep_weights=False, parallel_prepack=not self.prompt_running)
        except BaseException:
            with self._levels_lock:
                self._release(key[0], level)
            raise
        self.cache.stats.load_seconds += time.perf_counter() - started
        self.cache.stats.bytes_read += self.layer_bytes[key[0]]
        return session, level

    def _insert(self, key: tuple[int, int], built: tuple[ort.InferenceSession, int]) -> ort.InferenceSession:
        session, level = built
        with self._levels_lock:  # a full-level session's room was taken by `_level_for`
            self._forget([key])  # a key built twice (a race between threads) is counted once
            self._level_of[key] = level
        self._freed(self.cache.put(key, session, self._charges[key[0], level]))
        return session

    def _forget(self, keys) -> None:
        """Keys no longer resident (caller holds `_levels_lock`)."""
        for key in keys:
            self._release(key[0], self._level_of.pop(key, None))

    def _release(self, layer: int, level: int | None) -> None:
        """Give back the full-level room `_level_for` took, if `level` is the layer's full one
        (caller holds `_levels_lock`)."""
        full, lean = self.levels[layer]
        self._full_resident[layer] -= level == full != lean

    def set_budget(self, budget_bytes: int | None) -> None:
        """Resize the cache (the KV cache took or gave back room), evicting what no longer fits."""
        self._freed(self.cache.set_budget(budget_bytes), trim_now=True)

    def _freed(self, evicted: list, trim_now: bool = False) -> None:
        with self._levels_lock:
            self._forget(evicted)
        self._freed_since_trim += len(evicted) * self.charge
        if evicted and (trim_now or self._freed_since_trim >= self._trim_every):
            self._freed_since_trim = 0
            trim_heap()  # glibc keeps freed sessions' memory otherwise

    def _read(self, key: tuple[int, int]):
        """The loader's I/O stage: the expert's bytes in a pooled buffer (None if resident)."""
        if self.cache.peek(key):
            return None
        buffer = self._read_buffers.get()
        try:
            return buffer, self._read_into(key, buffer)
        except BaseException:
            self._read_buffers.put(buffer)
            raise

    def _build_read(self, key: tuple[int, int], read) -> None:
        """The loader's CPU stage: build the session from what `_read` returned."""
        if read is None:
            return
        buffer, arrays = read
        try:
            if not self.cache.peek(key):
                self._insert(key, self._session_from(key, arrays))
        finally:
            self._read_buffers.put(buffer)  # prepacked: the session never reads it again

    def session(self, layer: int, expert: int) -> ort.InferenceSession:
        key = (layer, expert)
        session = self.cache.get(key, count=False)  # hits and misses are counted by `prefetch`
        if session is None:  # not resident (yet)
            started = time.perf_counter()
            session = self._obtain(key)
            self.cache.stats.stall_seconds += time.perf_counter() - started
        return session

    def _obtain(self, key: tuple[int, int]) -> ort.InferenceSession:
        """Build `key` here if the loader has not started it; while the loader builds it, build
        another of the layer's queued experts (latest first) rather than wait idle."""
        while not self.loader.claim(key):
            if any(self._build_claimed(other) for other in reversed(self._layer_keys) if other != key):
                continue
            self.loader.wait(key)
            session = self.cache.get(key, count=False)
            if session is not None:
                return session
            break  # the load failed, or nobody was loading it: build it here
        return self._build_here(key)

    def _build_claimed(self, key: tuple[int, int]) -> bool:
        if not self.loader.claim(key):
            return False
        self._build_here(key)
        return True

    def prefetch(self, layer: int, experts: np.ndarray) -> None:
        """Experts the router chose for `layer`, known before its attention runs: a hit is an
        expert already resident now; each miss is handed to the loader thread. Until the next
        layer's call, these experts are not evicted to make room for each other."""
        if experts.ndim == 1:  # one token's experts, all different: the decode step's case
            chosen, tokens = experts, 1
        else:
            chosen, tokens = np.unique(experts, return_counts=True)
        keys = self._layer_keys = [(layer, expert) for expert in chosen.tolist()]
        self.requests[layer, chosen] += tokens
        for key, session in zip(keys, self.cache.use(keys)):
            if session is None:
                self.loader.request(key)

    def resident_mask(self, layer: int) -> np.ndarray:
        """bool [E]: which of `layer`'s experts have a session built now."""
        return np.fromiter((self.cache.peek((layer, e)) for e in range(self.bundle.config.num_experts)), bool)

    def warm(self, order, cancelled=lambda: False) -> int:
        """Build the experts of `order` ((layer, expert) keys, hottest first) on the calling thread
        while they fit in the free part of the budget, until `cancelled()`; never evicts. For
        idle time (an app waiting for its user), so the first reply does not wait for builds.
        Returns how many were built."""
        built = 0
        for layer, expert in order:
            key = (int(layer), int(expert))
            if cancelled():
                break
            if self.cache.peek(key) or self.loader.pending(key):
                continue
            room = self.cache.room()
            if room is not None and room < self._charges[key[0], self._level_for(key, reserve=False)]:
                break
            self._build_here(key)
            built += 1
        return built

    def run(self, layer: int, expert: int, h: np.ndarray) -> np.ndarray:
        """h [T, H] -> expert output [T, H]."""
        return self.session(layer, expert).run(["y"], {"h": np.ascontiguousarray(h)})[0]

    def run_bound(self, layer: int, expert: int, buffers, slot: int) -> None:
        """The decode step's expert call: buffers.normed -> buffers.expert_outs[slot], bound once
        per session and slot."""
        session = self.session(layer, expert)
        bindings = getattr(session, "_stchat_bindings", None)
        if bindings is None:
            bindings = session._stchat_bindings = [None] * len(buffers.expert_out_values)
        if bindings[slot] is None:
            bindings[slot] = expert_binding(session, buffers, slot)
        session.run_with_iobinding(bindings[slot])

    def close(self) -> None:
        self.loader.close()
        self.cache.clear()
