"""ONNX Runtime session construction shared by attention, expert and head graphs.

Every session runs on one process-wide intra-op thread pool (hundreds of expert sessions
with private pools would spawn hundreds of spinning threads), and receives its weights as
constant initializers, which ORT prepacks: MatMulNBits weights as shared initializers, used in
place (runtime/shared_weights.py), the others as external initializers, which ORT copies.
"""
from __future__ import annotations

import os
import threading

import numpy as np
import onnxruntime as ort
from threadpoolctl import threadpool_limits

from . import shared_weights

_pool_lock = threading.Lock()
_pool_threads: int | None = None


def default_threads() -> int:
    """Physical-ish cores available to this process (affinity-aware), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def init_thread_pool(threads: int | None) -> int:
    """Create the global pool once per process; later calls keep the first size.

    numpy's BLAS gets one thread: the runtime's own matmuls (routers, [S, 1536] x [1536, E])
    are small, and OpenBLAS's threads keep spinning after each, taking the cores from ONNX
    Runtime's pool. A 128-token prefill of the full-size 4B took 2.0 s with OpenBLAS's default
    threads and 1.0 s with one (its expert calls 1.3 s against 0.63 s)."""
    global _pool_threads
    with _pool_lock:
        if _pool_threads is None:
            threadpool_limits(1, user_api="blas")
            _pool_threads = threads or default_threads()
            ort.set_global_thread_pool_sizes(_pool_threads, 1)
        return _pool_threads


def make_session(model_bytes: bytes, weights: dict[str, np.ndarray], keep_weights: bool = True,
                 parallel_prepack: bool = True) -> ort.InferenceSession:
    """A session with `weights` as constant initializers. MatMulNBits weights in a graph passed
    through `shared_weights.share` are used in place, and those it reads at run time get a copy
    of their own here; the rest are copied by ONNX Runtime. Either way the session never reads
    the given buffers after creation (checked by tests that reuse one read buffer for every
    expert), so `keep_weights=False` lets the caller reuse them.
    `parallel_prepack` spreads prepacking over the pool: sooner done, at more CPU (a 21B expert
    at level 4: 6.6 ms and 11.9 ms of CPU, against 7.8 and 7.8 on the calling thread alone)."""
    init_thread_pool(None)  # sessions below use the global pool; it must exist first
    options = ort.SessionOptions()
    options.use_per_session_threads = False
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = False  # an arena per session would keep each one's peak activations
    if parallel_prepack:
        options.add_session_config_entry("session.prepack.enable_parallel", "1")
    roles = shared_weights.roles(model_bytes)
    shared = {name: ort.OrtValue.ortvalue_from_numpy(
                  np.array(array) if roles[name] == shared_weights.READ else np.ascontiguousarray(array))
              for name, array in weights.items() if name in roles}
    for name, value in shared.items():
        options.add_initializer(name, value)
    external = [name for name in weights if name not in roles]
    if external:
        options.add_external_initializers(
            external, [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(weights[n])) for n in external])
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    # the OrtValues alias these buffers; those read at run time are the session's own copies
    session._stchat_keepalive = (weights if keep_weights else None, shared)
    return session


def initializer_names(model_bytes: bytes) -> list[str]:
    """The weights a graph expects to be supplied (placeholders), not its inline constants."""
    return shared_weights.placeholder_names(model_bytes)
