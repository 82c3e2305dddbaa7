"""Sampling: each filter on hand-computed vectors, then the whole chain's statistics."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from runtime.sampling import (SamplingParams, apply_min_p, apply_repetition_penalty, draw, make_sampler,
                              nucleus_of_weights, nucleus_size, softmax, top_k_ids)


def logits_of(*probs: float) -> np.ndarray:
    return np.log(np.asarray(probs, dtype=np.float32))


def frequencies(sampler, logits, draws: int = 5000) -> dict[int, float]:
    counts = Counter(sampler(logits, []) for _ in range(draws))
    return {token: n / draws for token, n in counts.items()}


# -- the pure steps ----------------------------------------------------------------------------

def test_repetition_penalty_divides_positive_and_multiplies_negative_once_per_token():
    x = np.array([2.0, -2.0, 1.0, 0.0, 3.0], dtype=np.float32)
    apply_repetition_penalty(x, [0, 1, 1, 1, 3, 0], 2.0)
    np.testing.assert_allclose(x, [1.0, -4.0, 1.0, 0.0, 3.0])
    y = np.array([2.0, -2.0], dtype=np.float32)
    assert apply_repetition_penalty(y, [0, 1], 1.0) is y and y.tolist() == [2.0, -2.0]
    apply_repetition_penalty(y, [7, -1], 2.0)  # ids outside the vocabulary are ignored
    assert y.tolist() == [2.0, -2.0]


def test_top_k_keeps_the_largest_with_lowest_ids_on_ties():
    assert top_k_ids(np.array([1, 5, 3, 5, 2], dtype=np.float32), 2).tolist() == [1, 3]
    assert top_k_ids(np.array([5, 3, 3, 3, 1], dtype=np.float32), 2).tolist() == [0, 1]
    assert top_k_ids(np.array([3, 3, 3, 9], dtype=np.float32), 3).tolist() == [0, 1, 3]
    assert top_k_ids(np.zeros(4, dtype=np.float32), 0) is None
    assert top_k_ids(np.zeros(4, dtype=np.float32), 4) is None


def test_softmax_with_temperature():
    np.testing.assert_allclose(softmax(logits_of(0.5, 0.3, 0.2)), [0.5, 0.3, 0.2], rtol=1e-6)
    sharp = np.array([0.25, 0.09, 0.04]) / 0.38  # T = 0.5 squares the probabilities
    np.testing.assert_allclose(softmax(logits_of(0.5, 0.3, 0.2), 0.5), sharp, rtol=1e-6)


def test_nucleus_is_the_smallest_set_reaching_p():
    probs = np.array([0.5, 0.3, 0.2])
    assert nucleus_size(probs, 0.8) == 2  # 0.5 + 0.3 reaches 0.8 despite float rounding
    assert nucleus_size(probs, 0.81) == 3
    assert nucleus_size(probs, 0.5) == 1
    assert nucleus_size(probs, 0.01) == 1  # never empty
    assert nucleus_size(probs, 1.0) == 3
    assert nucleus_size(probs[:2], 0.9, total=1.0) is None  # a prefix that falls short
    assert nucleus_size(probs[:2], 0.7, total=1.0) == 2


def test_nucleus_of_a_large_vocabulary_without_a_full_sort():
    weights = np.full(50000, 1e-9, dtype=np.float32)
    weights[[40000, 7, 300]] = [0.5, 0.3, 0.2]
    ids, values = nucleus_of_weights(weights, 0.75)
    assert ids.tolist() == [40000, 7] and values.tolist() == pytest.approx([0.5, 0.3])
    flat = np.ones(10000, dtype=np.float32)  # needs the full sort; ties keep the lowest ids
    ids, _ = nucleus_of_weights(flat, 0.5)
    assert ids.tolist() == list(range(5000))


def test_draw_across_blocks_matches_weights_and_skips_zeros():
    weights = np.zeros(4 * 1024 + 500, dtype=np.float32)  # four whole blocks and a partial one
    picks = [5, 1023, 1024, 3000, 4595]  # block edges and the partial last block
    weights[picks] = [1, 2, 3, 4, 10]
    rng = np.random.default_rng(9)
    counts = Counter(draw(weights, rng) for _ in range(4000))
    assert set(counts) == set(picks)
    for token, w in zip(picks, [1, 2, 3, 4, 10]):
        assert abs(counts[token] / 4000 - w / 20) < 0.025
    one = np.zeros(3000, dtype=np.float32)
    one[2999] = 1e-30
    assert {draw(one, rng) for _ in range(50)} == {2999}


def test_min_p_drops_tokens_below_a_fraction_of_the_top():
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    assert apply_min_p(probs.copy(), 0.2).tolist() == [0.5, 0.3, 0.15, 0.0]
    assert apply_min_p(probs.copy(), 1.0).tolist() == [0.5, 0.0, 0.0, 0.0]
    assert apply_min_p(probs.copy(), 0.0).tolist() == probs.tolist()


# -- the chain ---------------------------------------------------------------------------------

def test_temperature_zero_is_argmax_with_lowest_id_on_ties():
    sampler = make_sampler(temperature=0)
    assert sampler(np.array([1, 3, 3, 2], dtype=np.float32), []) == 1
    assert sampler(np.array([-5, -1, -3], dtype=np.float32), []) == 1


def test_penalty_changes_the_choice_and_leaves_the_input_alone():
    logits = np.array([2.0, 1.5, -1.0], dtype=np.float32)
    assert make_sampler(temperature=0)(logits, [0]) == 0
    assert make_sampler(temperature=0, repetition_penalty=1.5)(logits, [0]) == 1  # 2/1.5 < 1.5
    assert logits.tolist() == [2.0, 1.5, -1.0]
    freq = frequencies(make_sampler(temperature=1, top_k=0, top_p=1, repetition_penalty=3, seed=1),
                       np.array([1.0, 1.0], dtype=np.float32), 2000)
    assert freq == frequencies(make_sampler(temperature=1, top_k=0, top_p=1, seed=1),
                               np.array([1.0, 1.0], dtype=np.float32), 2000)  # empty history: no effect
    sampler = make_sampler(temperature=1, top_k=0, top_p=1, repetition_penalty=3, seed=1)
    drawn = Counter(sampler(np.array([1.0, 1.0], dtype=np.float32), [0]) for _ in range(2000))
    assert abs(drawn[0] / 2000 - 1 / (1 + np.exp(2 / 3))) < 0.03  # logits [1/3, 1]: p(0) ~ 0.34


@pytest.mark.parametrize("top_k", [0, 3, 4])
def test_frequencies_match_probabilities(top_k):
    probs = [0.1, 0.2, 0.3, 0.4]
    freq = frequencies(make_sampler(temperature=1, top_k=top_k, top_p=1, seed=1234), logits_of(*probs))
    if top_k == 3:
        probs = [0.0, 0.2 / 0.9, 0.3 / 0.9, 0.4 / 0.9]
    for token, p in enumerate(probs):
        assert abs(freq.get(token, 0.0) - p) < 0.02, (token, freq)


def test_temperature_reshapes_the_distribution():
    freq = frequencies(make_sampler(temperature=0.5, top_k=0, top_p=1, seed=3), logits_of(0.5, 0.3, 0.2))
    for token, p in enumerate(np.array([0.25, 0.09, 0.04]) / 0.38):
        assert abs(freq.get(token, 0.0) - p) < 0.02


@pytest.mark.parametrize("top_k", [0, 10])
def test_top_p_and_min_p_restrict_the_candidates(top_k):
    nucleus = frequencies(make_sampler(temperature=1, top_k=top_k, top_p=0.8, seed=5),
                          logits_of(0.5, 0.3, 0.15, 0.05), 3000)
    assert set(nucleus) == {0, 1} and abs(nucleus[0] - 0.625) < 0.03
    floor = frequencies(make_sampler(temperature=1, top_k=top_k, top_p=1, min_p=0.2, seed=5),
                        logits_of(0.5, 0.3, 0.15, 0.05), 3000)
    assert set(floor) == {0, 1, 2}


def test_seed_makes_runs_repeatable():
    logits = np.random.default_rng(0).normal(size=1000).astype(np.float32)
    a, b, c = make_sampler(seed=7), make_sampler(seed=7), make_sampler(seed=8)
    seq_a = [a(logits, []) for _ in range(200)]
    assert seq_a == [b(logits, []) for _ in range(200)]
    assert seq_a != [c(logits, []) for _ in range(200)]


def test_full_vocabulary_stays_in_the_top_k():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=151936).astype(np.float32) * 3
    top20 = set(np.argsort(-logits)[:20].tolist())
    sampler = make_sampler(seed=0, repetition_penalty=1.1)  # defaults: T 0.6, top_k 20, top_p 0.95
    history = list(range(0, 4000, 3))
    drawn = [sampler(logits, history) for _ in range(50)]
    assert set(drawn) <= top20 and len(set(drawn)) > 1  # sampled among the top 20, not greedy


@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_full_vocabulary_without_top_k(top_p):
    logits = np.random.default_rng(1).normal(size=151936).astype(np.float32) * 4
    probs = softmax(logits)
    sampler = make_sampler(temperature=1, top_k=0, top_p=top_p, min_p=0.01, seed=2)
    drawn = [sampler(logits, []) for _ in range(200)]
    assert all(probs[t] >= 0.01 * probs.max() for t in drawn)
    assert len(set(drawn)) > 20  # genuinely sampled, not greedy


def test_params_forms_and_validation():
    assert make_sampler().params == SamplingParams()
    assert make_sampler(temperature=0).params.temperature == 0
    assert make_sampler({"top_k": 5}).params.top_k == 5
    assert make_sampler(SamplingParams(top_k=5), seed=3).params == SamplingParams(top_k=5, seed=3)
    for kwargs, field in [({"temperature": -0.1}, "temperature"), ({"temperature": float("nan")}, "temperature"),
                          ({"top_k": -1}, "top_k"), ({"top_k": 2.5}, "top_k"), ({"top_p": 0}, "top_p"),
                          ({"top_p": 1.5}, "top_p"), ({"min_p": -0.1}, "min_p"), ({"min_p": 2}, "min_p"),
                          ({"repetition_penalty": 0}, "repetition_penalty"), ({"seed": -1}, "seed"),
                          ({"seed": "x"}, "seed")]:
        with pytest.raises(ValueError, match=f"^{field} must be"):
            SamplingParams(**kwargs)
    with pytest.raises(TypeError):
        make_sampler(temperatur=1)
