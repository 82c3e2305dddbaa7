"""Turning one step's logits into the next token: a seeded chain of small pure functions.

`make_sampler` validates a `SamplingParams` and returns a `Sampler`, a callable
`(logits float32 [V], history) -> token id`. The chain, in order:

    repetition penalty -> temperature 0 ? argmax -> top_k -> temperature -> top_p -> min_p -> draw

Temperature scales the logits before top_p and min_p look at probabilities (as Hugging Face
and vLLM do); top_k does not depend on it. Per token the sampler copies the logits once into a
buffer it owns; with top_k on, everything after the cut works on k values, so V = 151936 costs
one partition and one comparison, never a full sort. Without top_k, top_p looks for its nucleus
among the heaviest few hundred tokens first; only a nearly flat distribution sorts the vocab.
Ties are broken towards the lowest token id everywhere, so a fixed seed gives fixed output.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

_TOP_P_SLACK = 1e-6  # cumulative sums are floats: 0.5 + 0.3 must count as reaching 0.8
_DRAW_BLOCK = 1024  # weights per block in `draw`
_EXP_FLOOR = -80.0  # exp(-80) ~ 1.8e-35 is still a normal float32


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.6  # 0 means greedy (argmax)
    top_k: int = 20  # keep the k most likely tokens; 0 disables
    top_p: float = 0.95  # nucleus: smallest set whose probability reaches p; 1 disables
    min_p: float = 0.0  # drop tokens below min_p * the top probability; 0 disables
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the history; 1 disables
    seed: int | None = None  # None: a fresh random seed

    def __post_init__(self) -> None:
        if not _is_number(self.temperature) or not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 disables it), got {self.top_k!r}")
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1 disables it), got {self.top_p!r}")
        if not _is_number(self.min_p) or not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1] (0 disables it), got {self.min_p!r}")
        if (not _is_number(self.repetition_penalty) or not math.isfinite(self.repetition_penalty)
                or self.repetition_penalty <= 0):
            raise ValueError(f"repetition_penalty must be a finite number > 0 (1 disables it), "
                             f"got {self.repetition_penalty!r}")
        if self.seed is not None and (not _is_int(self.seed) or self.seed < 0):
            raise ValueError(f"seed must be None or an integer >= 0, got {self.seed!r}")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


# -- the pure steps ----------------------------------------------------------------------------

def apply_repetition_penalty(logits: np.ndarray, history: Sequence[int], penalty: float) -> np.ndarray:
    """In place: divide positive logits (multiply negative ones) of every distinct token seen."""
    if penalty == 1.0 or len(history) == 0:
        return logits
    seen = np.unique(np.asarray(history, dtype=np.int64))
    seen = seen[(seen >= 0) & (seen < logits.shape[0])]
    values = logits[seen]
    logits[seen] = np.where(values > 0, values / penalty, values * penalty)
    return logits


def greedy(logits: np.ndarray) -> int:
    """The most likely token; the lowest id among equals."""
    return int(np.argmax(logits))


def top_k_ids(logits: np.ndarray, k: int) -> np.ndarray | None:
    """Ids of the k largest logits, ascending by id (ties at the cut: lowest ids); None = all."""
    size = logits.shape[0]
    if k <= 0 or k >= size:
        return None
    threshold = np.partition(logits, size - k)[size - k]  # the k-th largest value
    ids = np.flatnonzero(logits >= threshold)
    if ids.shape[0] > k:  # several tokens tie at the threshold: keep the lowest ids among them
        values = logits[ids]
        above, tied = ids[values > threshold], ids[values == threshold]
        ids = np.sort(np.concatenate([above, tied[:k - above.shape[0]]]))
    return ids


def sort_descending(ids: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidates by decreasing value; equal values keep their (ascending id) order."""
    order = np.argsort(-values, kind="stable")
    return ids[order], values[order]


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """float64 probabilities of `logits / temperature` (temperature > 0)."""
    scaled = (np.asarray(logits, dtype=np.float64) - np.max(logits)) / temperature
    probs = np.exp(scaled)
    return probs / probs.sum()


def exp_weights(logits: np.ndarray, temperature: float) -> np.ndarray:
    """In place: exp((x - max) / T), unnormalised probabilities with a maximum of 1. Exponents
    are floored at -80 so no weight is a float32 subnormal (slow to add up); such a token's
    share stays below 1e-34 per token."""
    np.subtract(logits, logits.max(), out=logits)
    np.multiply(logits, 1.0 / temperature, out=logits)
    np.maximum(logits, _EXP_FLOOR, out=logits)
    return np.exp(logits, out=logits)


def nucleus_size(sorted_weights: np.ndarray, p: float, total: float | None = None) -> int | None:
    """How many of the descending weights form the smallest set holding a share p of `total`
    (default: their own sum); at least 1. None when all of them together fall short, which only
    happens when they are a prefix of a larger distribution whose `total` is given."""
    if p >= 1.0:
        return sorted_weights.shape[0]
    cumulative = np.cumsum(sorted_weights, dtype=np.float64)
    total = float(cumulative[-1]) if total is None else total
    target = (p - _TOP_P_SLACK) * total
    if cumulative[-1] < target:
        return None
    return min(int(np.searchsorted(cumulative, target, side="left")) + 1, sorted_weights.shape[0])


def nucleus_of_weights(weights: np.ndarray, p: float) -> tuple[np.ndarray, np.ndarray]:
    """(ids, weights) of the top_p nucleus of a whole-vocabulary weight vector, descending.

    Real distributions put most of their mass on few tokens, so look among the 256, then the
    4096 heaviest (one partition each); only a nearly flat distribution sorts everything."""
    total = float(weights.sum(dtype=np.float64))
    for width in (256, 4096, 0):
        ids = top_k_ids(weights, width)
        ids = np.arange(weights.shape[0]) if ids is None else ids
        ids, values = sort_descending(ids, weights[ids])
        count = nucleus_size(values, p, total)
        if count is not None:
            return ids[:count], values[:count]
    return ids, values  # unreachable: the whole vocabulary always holds p


def apply_min_p(probs: np.ndarray, min_p: float) -> np.ndarray:
    """In place: zero every probability below min_p times the largest one (that one stays)."""
    if min_p > 0.0:
        probs[probs < min_p * probs.max()] = 0.0
    return probs


def draw(weights: np.ndarray, rng: np.random.Generator) -> int:
    """Index drawn with probability proportional to the (non-negative) weights, at least one > 0.

    Inverse CDF in two levels: sums of blocks of _DRAW_BLOCK weights pick a block, a running sum
    inside it picks the index. A float64 running sum over all V float32 weights costs ~3 ms;
    this costs ~0.1 ms."""
    u = rng.random()
    if weights.shape[0] <= _DRAW_BLOCK:
        return _pick(weights, u * float(weights.sum(dtype=np.float64)), 0.0)
    whole = weights.shape[0] // _DRAW_BLOCK * _DRAW_BLOCK
    block_sums = np.empty(weights.shape[0] // _DRAW_BLOCK + (whole < weights.shape[0]))
    weights[:whole].reshape(-1, _DRAW_BLOCK).sum(axis=1, dtype=np.float64, out=block_sums[:whole // _DRAW_BLOCK])
    if whole < weights.shape[0]:
        block_sums[-1] = weights[whole:].sum(dtype=np.float64)
    cumulative = np.cumsum(block_sums)
    target = u * cumulative[-1]
    block = _pick(block_sums, target, 0.0, cumulative)
    start = block * _DRAW_BLOCK
    before = float(cumulative[block - 1]) if block else 0.0
    return start + _pick(weights[start:start + _DRAW_BLOCK], target, before)


def _pick(weights: np.ndarray, target: float, before: float, cumulative: np.ndarray | None = None) -> int:
    """The first index whose running sum (starting at `before`) exceeds target, never one with
    zero weight: searchsorted(side="right") cannot stop on a weight that adds nothing, and when
    rounding pushes the target out of range the nearest positive weight is taken instead."""
    if cumulative is None:
        cumulative = np.cumsum(weights, dtype=np.float64)
        cumulative += before
    index = int(np.searchsorted(cumulative, target, side="right"))
    if index < weights.shape[0] and weights[index] > 0:
        return index
    positive = np.flatnonzero(weights > 0)
    after = positive[positive >= index]
    return int(after[0] if after.shape[0] else positive[-1])


# -- the chain ---------------------------------------------------------------------------------

class Sampler:
    """`sampler(logits, history) -> token id`; owns its random generator and a logits buffer."""

    def __init__(self, params: SamplingParams):
        self.params = params
        self.rng = np.random.default_rng(params.seed)
        self._buffer: np.ndarray | None = None

    def __call__(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        p = self.params
        x = self._working_copy(logits)
        apply_repetition_penalty(x, history, p.repetition_penalty)
        if p.temperature == 0.0 or not np.isfinite(x.max()):
            return greedy(x)
        ids = top_k_ids(x, p.top_k)
        if ids is None:
            return self._sample_full(x)
        ids, values = sort_descending(ids, x[ids])
        probs = softmax(values, p.temperature)
        probs = probs[:nucleus_size(probs, p.top_p)]
        apply_min_p(probs, p.min_p)
        return int(ids[draw(probs, self.rng)])

    def _sample_full(self, x: np.ndarray) -> int:
        """No top_k: the whole vocabulary is the candidate set."""
        p = self.params
        weights = exp_weights(x, p.temperature)
        if p.top_p < 1.0:
            ids, weights = nucleus_of_weights(weights, p.top_p)
            apply_min_p(weights, p.min_p)
            return int(ids[draw(weights, self.rng)])
        apply_min_p(weights, p.min_p)
        return draw(weights, self.rng)

    def _working_copy(self, logits: np.ndarray) -> np.ndarray:
        logits = np.asarray(logits)
        if logits.ndim != 1:
            raise ValueError(f"sampler expects logits of shape [V], got {logits.shape}")
        if self._buffer is None or self._buffer.shape != logits.shape:
            self._buffer = np.empty(logits.shape, dtype=np.float32)
        np.copyto(self._buffer, logits, casting="same_kind")
        return self._buffer


def make_sampler(params: SamplingParams | dict | None = None, /, **kwargs) -> Sampler:
    """A sampler from `SamplingParams`, a dict of its fields, keyword fields, or a mix
    (keywords override). `make_sampler(temperature=0)` is greedy."""
    if params is None:
        params = SamplingParams(**kwargs)
    elif isinstance(params, SamplingParams):
        params = replace(params, **kwargs) if kwargs else params
    elif isinstance(params, dict):
        params = SamplingParams(**{**params, **kwargs})
    else:
        raise TypeError(f"make_sampler expects SamplingParams or a dict, got {type(params).__name__}")
    return Sampler(params)
