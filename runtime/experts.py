"""Expert sessions: one ONNX Runtime session per (layer, expert), built from the shared graph.

Each expert's six arrays are views of `experts.bin`; building a session prepacks them. This
store keeps every session it has built (no budget yet); `prefetch` is where the
pre-attention router hands over the experts a layer is about to need.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort

from .bundle import Bundle
from .sessions import make_session


class ExpertStore:
    def __init__(self, bundle: Bundle, graph: bytes):
        self.bundle, self.graph = bundle, graph
        self.sessions: dict[tuple[int, int], ort.InferenceSession] = {}

    def _build(self, layer: int, expert: int) -> ort.InferenceSession:
        arrays = self.bundle.expert(layer, expert)
        return make_session(self.graph, {f"expert/{name}": array for name, array in arrays.items()})

    def session(self, layer: int, expert: int) -> ort.InferenceSession:
        key = (layer, expert)
        session = self.sessions.get(key)
        if session is None:
            session = self.sessions[key] = self._build(layer, expert)
        return session

    def prefetch(self, layer: int, experts: np.ndarray) -> None:
        """Experts the router chose for `layer`, known before its attention runs."""

    def run(self, layer: int, expert: int, h: np.ndarray) -> np.ndarray:
        """h [T, H] -> expert output [T, H]."""
        return self.session(layer, expert).run(["y"], {"h": np.ascontiguousarray(h)})[0]

    def close(self) -> None:
        self.sessions.clear()
