"""Expert sessions: one ONNX Runtime session per (layer, expert), built from the shared graph.

Each expert's six arrays are views of `experts.bin`; building a session prepacks them. Built
sessions live in an `ExpertCache` whose byte budget decides how many stay resident. The
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

import numpy as np
import onnxruntime as ort

from .bundle import Bundle, array_bytes, read_buffer
from .decode import expert_binding
from .expert_cache import ExpertCache
from .expert_loader import ExpertLoader
from .memory import expert_charge, trim_heap, trim_slack
from .sessions import make_session


def warm_order(usage: np.ndarray | None, num_layers: int, num_experts: int) -> list[tuple[int, int]]:
    """(layer, expert) keys, most asked-for first by `usage` ([layers, experts] counts from
    earlier runs); without a record, layer by layer, as a first prompt needs them."""
    keys = [(layer, expert) for layer in range(num_layers) for expert in range(num_experts)]
    if usage is None or np.shape(usage) != (num_layers, num_experts):
        return keys
    return sorted(keys, key=lambda k: -float(usage[k]))  # stable: ties stay layer by layer


# MatMulNBits accuracy level of Q4_0 expert sessions when the budget cannot hold every expert.
# Measured on the full-size 4B (2 threads): level 1 builds a session in 2.8 ms against 3.8 and
# holds 1.04x the raw bytes against 1.44x, so a 1 GiB budget keeps 39% more experts (decode
# hit rate 39% -> 52%), at 330 against 200 us per one-token call: a good trade only when
# misses, not calls, set the pace. Other formats keep their level (8 bits at level 1 falls to a
# dequantizing path, 40-60x slower).
OFFLOAD_ACCURACY_LEVEL = 1


def session_level(layout: dict, level: int, offloading: bool) -> int:
    """The accuracy level an expert stored in `layout` is built at."""
    lean = offloading and level == 4 and set(layout["formats"].values()) == {"q4b32"}
    return OFFLOAD_ACCURACY_LEVEL if lean else level


def layout_charge(layout: dict, level: int = 4) -> int:
    """Resident bytes of one expert session stored in `layout` (a manifest expert layout), built
    at accuracy `level`."""
    return expert_charge([(fmt, array_bytes(spec for key, spec in layout["arrays"].items() if key.startswith(matrix + ".")))
                          for matrix, fmt in layout["formats"].items()], level)


def layer_charges(bundle: Bundle, levels: dict[str, int] | None = None) -> list[int]:
    """Resident bytes of one expert session of each layer (layers may store experts differently);
    `levels`: layout key -> accuracy level (default 4)."""
    levels = levels or {}
    return [layout_charge(bundle.expert_layouts[key], levels.get(key, 4)) for key in bundle.layer_layouts]


class ExpertStore:
    def __init__(self, bundle: Bundle, graphs: dict[str, bytes], budget_bytes: int | None = None,
                 levels: dict[str, int] | None = None, offloading: bool = False):
        """`graphs`: expert graph name -> graph bytes (`bundle.expert_graph_name(layer)`), built
        at `levels` (layout key -> accuracy level, for the charges; default 4). `offloading`:
        the budget cannot hold every expert, so they come and go."""
        self.bundle = bundle
        self.graphs = [graphs[bundle.expert_graph_name(layer)] for layer in range(bundle.config.num_layers)]
        self.layer_bytes = [array_bytes(bundle.expert_layouts[key]["arrays"].values())  # raw bytes per expert
                            for key in bundle.layer_layouts]
        self.expert_bytes = max(self.layer_bytes)
        self.charges = layer_charges(bundle, levels)  # resident bytes per session, by layer
        self.offloading = offloading  # reads bypass the page cache (Bundle.read_expert)
        self.charge = max(self.charges)
        # how often the router asked for each expert since load (per layer call, not per token):
        # saved between runs by the application, it orders `warm`
        self.requests = np.zeros((bundle.config.num_layers, bundle.config.num_experts), np.int64)
        self._freed_since_trim = 0
        self._trim_every = trim_slack(self.charge)
        self.cache = ExpertCache(budget_bytes)
        self._local = threading.local()
        self._layer_keys: list[tuple[int, int]] = []  # the experts the current layer asked for
        self._read_buffers: queue.Queue = queue.Queue()  # one being read, one queued, one being built
        for _ in range(3):
            self._read_buffers.put(read_buffer(bundle.expert_stride))
        self.loader = ExpertLoader(self._build_read, read=self._read)

    def _scratch(self) -> np.ndarray:
        """A per-thread read buffer: ONNX Runtime prepacks the weights, then never reads it again."""
        buffer = getattr(self._local, "buffer", None)
        if buffer is None:
            buffer = self._local.buffer = read_buffer(self.bundle.expert_stride)
        return buffer

    def _build_here(self, key: tuple[int, int]) -> ort.InferenceSession:
        """Read and build `key` on the calling thread, and cache it."""
        session = self._session_from(key, self._read_into(key, self._scratch()))
        self._insert(key, session)
        return session

    def _read_into(self, key: tuple[int, int], buffer: np.ndarray) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        arrays = self.bundle.read_expert(*key, buffer, direct=self.offloading)
        self.cache.stats.load_seconds += time.perf_counter() - started
        return arrays

    def _session_from(self, key: tuple[int, int], arrays: dict[str, np.ndarray]) -> ort.InferenceSession:
        started = time.perf_counter()
        # MatMulNBits prepacks codes and scales, so the read buffer can be reused at once; the
        # small per-block mins feed a plain Gemm, so they get their own copy
        weights = {f"expert/{name}": np.array(array) if name.endswith(".mins") else array
                   for name, array in arrays.items()}
        session = make_session(self.graphs[key[0]], weights, keep_weights=False)
        session._stchat_mins = [w for name, w in weights.items() if name.endswith(".mins")]
        self.cache.stats.load_seconds += time.perf_counter() - started
        self.cache.stats.bytes_read += self.layer_bytes[key[0]]
        return session

    def _insert(self, key: tuple[int, int], session: ort.InferenceSession) -> None:
        self._freed(self.cache.put(key, session, self.charges[key[0]]))

    def set_budget(self, budget_bytes: int | None) -> None:
        """Resize the cache (the KV cache took or gave back room), evicting what no longer fits."""
        self._freed(self.cache.set_budget(budget_bytes), trim_now=True)

    def _freed(self, evicted: list, trim_now: bool = False) -> None:
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
        keys = self._layer_keys = [(layer, int(expert)) for expert in np.unique(experts)]
        self.requests[layer, [expert for _, expert in keys]] += 1
        self.cache.protect(keys)
        for key in keys:
            if self.cache.get(key) is None:
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
            if room is not None and room < self.charges[key[0]]:
                break
            self._build_here(key)
            built += 1
        return built

    def run(self, layer: int, expert: int, h: np.ndarray) -> np.ndarray:
        """h [T, H] -> expert output [T, H]."""
        return self.session(layer, expert).run(["y"], {"h": np.ascontiguousarray(h)})[0]

    def run_bound(self, layer: int, expert: int, buffers) -> None:
        """The decode step's expert call: buffers.normed -> buffers.expert_out, bound once per session."""
        session = self.session(layer, expert)
        binding = getattr(session, "_stchat_binding", None)
        if binding is None:
            binding = session._stchat_binding = expert_binding(session, buffers)
        session.run_with_iobinding(binding)

    def close(self) -> None:
        self.loader.close()
        self.cache.clear()
