"""Fast routing: resident experts preferred among near-tied router scores, exact when off."""
import numpy as np
import pytest

import runtime
from model_fixtures import bundle, model, prompt_ids
from runtime.routing import prefer_resident

#                  expert: 0    1    2    3    4    5
LOGITS = np.array([3.0, 1.0, 0.9, 0.5, -2.0, 0.95], np.float32)  # std 1.53


def test_a_chosen_expert_that_is_not_resident_gives_way_to_a_near_tied_resident_one():
    resident = np.array([0, 0, 1, 1, 1, 0], bool)
    chosen = np.array([1, 0, 5])                                    # the top 3 (any order)
    # 5 (0.95) is not resident; 2 (0.9) is, 0.05 below it: within 0.1 std
    assert sorted(prefer_resident(LOGITS, chosen, resident, 0.1)) == [0, 1, 2]
    # with more tolerance, 1 (1.0) gives way too, to 3 (0.5): within 0.5 std (0.77)
    assert sorted(prefer_resident(LOGITS, chosen, resident, 0.5)) == [0, 2, 3]
    # the best expert (0) stays however far the others are
    assert 0 in prefer_resident(LOGITS, chosen, resident, 100.0)


def test_nothing_changes_beyond_the_tolerance_or_when_all_are_resident():
    resident = np.array([0, 0, 0, 1, 1, 0], bool)
    chosen = np.array([0, 1, 5])
    assert sorted(prefer_resident(LOGITS, chosen, resident, 0.01)) == [0, 1, 5]  # 3 is 0.45 below 5
    assert sorted(prefer_resident(LOGITS, chosen, np.ones(6, bool), 10.0)) == [0, 1, 5]


def test_fast_routing_loads_fewer_experts_under_a_budget_and_changes_nothing_when_all_fit():
    ids = prompt_ids()[:24]
    def run(fast, tight):
        m = runtime.load(bundle("21b"), fast_routing=fast)
        if tight:  # room for one token's worth of one layer's experts, and a few more
            m.experts.set_budget((m.config.num_experts_per_tok + 2) * m.experts.charge)
        else:
            assert m.warm_experts() == m.config.num_layers * m.config.num_experts
        cache = m.new_cache()
        logits = [m.prefill([token], cache) for token in ids]
        return np.array(logits), m.experts.cache.stats.misses
    exact, exact_misses = run(0.0, True)
    fast, fast_misses = run(1.0, True)
    assert fast_misses < exact_misses
    assert not np.array_equal(fast, exact)             # it does change the computation...
    roomy_exact, _ = run(0.0, False)
    roomy_fast, _ = run(1.0, False)
    np.testing.assert_array_equal(roomy_fast, roomy_exact)  # ...not when every expert is resident
    np.testing.assert_array_equal(roomy_exact, exact)  # off: the same logits whatever the budget


def test_a_negative_tolerance_is_refused():
    with pytest.raises(ValueError, match="tolerance"):
        runtime.load(bundle("4b"), fast_routing=-1.0)
