"""Expert sessions: one ONNX Runtime session per (layer, expert), built from the shared graph.

Each expert's six arrays are views of `experts.bin`; building a session prepacks them. Built
sessions live in an `ExpertCache` whose byte budget decides how many stay resident. The
pre-attention router calls `prefetch` with the experts a layer is about to need, and the
`ExpertLoader` threads read and build the missing ones while attention runs (reading the next
while building one, through a small pool of read buffers); `session` waits only for a load
still in flight, and builds on the spot what nobody asked for in time.
"""
from __future__ import annotations

import queue
import threading
import time

import numpy as np
import onnxruntime as ort

from .bundle import Bundle
from .decode import expert_binding
from .expert_cache import ExpertCache
from .expert_loader import ExpertLoader
from .memory import expert_charge, trim_heap, trim_slack
from .sessions import make_session


class ExpertStore:
    def __init__(self, bundle: Bundle, graph: bytes, budget_bytes: int | None = None):
        self.bundle, self.graph = bundle, graph
        self.expert_bytes = sum(a.nbytes for a in bundle.expert(0, 0).values())  # raw Q4 bytes
        self.charge = expert_charge(self.expert_bytes)          # resident bytes per session
        self._freed_since_trim = 0
        self._trim_every = trim_slack(self.charge)
        self.cache = ExpertCache(budget_bytes)
        self._local = threading.local()
        self._read_buffers: queue.Queue = queue.Queue()  # one being read, one queued, one being built
        for _ in range(3):
            self._read_buffers.put(np.empty(bundle.expert_stride, np.uint8))
        self.loader = ExpertLoader(self._build_read, read=self._read)

    def _scratch(self) -> np.ndarray:
        """A per-thread read buffer: ONNX Runtime prepacks the weights, then never reads it again."""
        buffer = getattr(self._local, "buffer", None)
        if buffer is None:
            buffer = self._local.buffer = np.empty(self.bundle.expert_stride, np.uint8)
        return buffer

    def _build(self, layer: int, expert: int) -> ort.InferenceSession:
        return self._session_from(self._read_into((layer, expert), self._scratch()))

    def _read_into(self, key: tuple[int, int], buffer: np.ndarray) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        arrays = self.bundle.read_expert(*key, buffer)
        self.cache.stats.load_seconds += time.perf_counter() - started
        return arrays

    def _session_from(self, arrays: dict[str, np.ndarray]) -> ort.InferenceSession:
        started = time.perf_counter()
        session = make_session(self.graph, {f"expert/{name}": array for name, array in arrays.items()},
                               keep_weights=False)
        self.cache.stats.load_seconds += time.perf_counter() - started
        self.cache.stats.bytes_read += self.expert_bytes
        return session

    def _insert(self, key: tuple[int, int], session: ort.InferenceSession) -> None:
        evicted = self.cache.put(key, session, self.charge)
        if evicted:
            self._freed_since_trim += len(evicted) * self.charge
            if self._freed_since_trim >= self._trim_every:
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
                self._insert(key, self._session_from(arrays))
        finally:
            self._read_buffers.put(buffer)  # prepacked: the session never reads it again

    def session(self, layer: int, expert: int) -> ort.InferenceSession:
        key = (layer, expert)
        session = self.cache.get(key, count=False)  # hits and misses are counted by `prefetch`
        if session is None:  # not resident (yet): wait for the loader, or build it here
            started = time.perf_counter()
            if self.loader.wait(key):
                session = self.cache.get(key, count=False)
            if session is None:
                session = self._build(layer, expert)
                self._insert(key, session)
            self.cache.stats.stall_seconds += time.perf_counter() - started
        return session

    def prefetch(self, layer: int, experts: np.ndarray) -> None:
        """Experts the router chose for `layer`, known before its attention runs: a hit is an
        expert already resident now; each miss is handed to the loader thread."""
        for expert in np.unique(experts):
            key = (layer, int(expert))
            if self.cache.get(key) is None:
                self.loader.request(key)

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
