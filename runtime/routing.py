"""The router's choice of experts, exact or leaning towards the experts already in memory.

SmallThinker's router scores every expert of a layer from the layer's input and runs the top k.
When the experts do not all fit in memory, each chosen expert that is not resident costs a
read and a session build (milliseconds), while the router's scores are often nearly tied
between the k-th expert and the next. Fast routing (opt-in, off by default) swaps a chosen
expert that is not resident for a resident one whose score is within `tolerance` standard
deviations of that token's scores below it; the best-scored expert always stays. It changes
the model's output: `benchmarks/fast_routing.py` measures by how much.
"""
from __future__ import annotations

import numpy as np


def top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """logits [E] -> the k best experts [k] (any order)."""
    return np.argpartition(logits, -k)[-k:]


def prefer_resident(logits: np.ndarray, chosen: np.ndarray, resident: np.ndarray, tolerance: float) -> np.ndarray:
    """logits [E], chosen [k] experts, resident [E] bool -> experts [k]: each non-resident
    chosen expert (worst first, never the best) replaced by the best unchosen resident expert
    scored at most `tolerance` * std(logits) below it."""
    if resident[chosen].all():
        return chosen
    margin = tolerance * float(logits.std())
    ranked = chosen[np.argsort(-logits[chosen])]                        # [k] best first
    taken = np.zeros(len(logits), bool)
    taken[chosen] = True
    spares = [e for e in np.argsort(-logits) if resident[e] and not taken[e]]  # best first
    out = ranked.copy()
    for slot in range(len(out) - 1, 0, -1):
        expert = out[slot]
        if resident[expert] or not spares:
            continue
        if logits[spares[0]] >= logits[expert] - margin:
            out[slot] = spares.pop(0)
    return out


def gate_weights(top_logits: np.ndarray, softmax: bool) -> np.ndarray:
    """[..., k] router logits of the chosen experts -> their weights, summing to 1 (float64)."""
    top = top_logits.astype(np.float64)
    if softmax:
        weights = np.exp(top - top.max(-1, keepdims=True))
    else:
        weights = 1.0 / (1.0 + np.exp(-top))
    return weights / weights.sum(-1, keepdims=True)
