"""The expert cache: byte budgets, eviction order, stats; and a budget that evicts every token."""
import numpy as np
import pytest

import runtime
from model_fixtures import bundle, prompt_ids
from runtime.errors import BudgetTooSmall
from runtime.model_memory import KV_GRANULE
from runtime.expert_cache import AGING_PERIOD, ExpertCache


def test_evicts_the_least_asked_for_and_the_least_recent_among_equals():
    cache = ExpertCache(budget_bytes=300)
    assert cache.put("a", 1, 100) == [] and cache.put("b", 2, 100) == [] and cache.put("c", 3, 100) == []
    assert cache.get("a") == 1           # a is now the most recent
    assert cache.put("d", 4, 100) == ["b"]
    assert cache.resident() == ["c", "a", "d"] and cache.used == 300
    assert cache.put("e", 5, 250) == ["c", "d", "a"]  # a, asked for once, outlives d
    assert cache.get("b") is None
    s = cache.stats
    assert (s.hits, s.misses, s.evictions) == (1, 1, 4) and s.hit_rate == 0.5


def test_experts_asked_for_often_outlive_more_recent_one_off_ones():
    cache = ExpertCache(budget_bytes=400)
    for key in "hot", "x", "y", "z":
        cache.get(key)                   # a miss still counts as demand
        cache.put(key, key, 100)
    for _ in range(3):
        assert cache.get("hot") == "hot"
    for key in "x", "y", "z":            # recent again: "hot" is now the least recent
        cache.get(key)
    cache.get("new")
    assert cache.put("new", "new", 100) == ["x"]
    assert cache.peek("hot") and cache.resident()[0] == "hot"
    for key in "p", "q", "r":            # one-off experts keep replacing each other
        cache.get(key)
        cache.put(key, key, 100)
    assert cache.peek("hot")
    assert cache.stats.evictions == 4


def test_use_counts_age_so_old_favourites_can_leave():
    def cache_after(other_uses: int) -> ExpertCache:
        cache = ExpertCache(budget_bytes=200)
        for _ in range(5):
            cache.get("old")
        cache.put("old", 1, 100)
        for _ in range(other_uses):
            cache.get("elsewhere")       # demand for experts of other layers
        cache.get("b")
        cache.put("b", 2, 100)
        return cache

    assert cache_after(0).put("c", 3, 100) == ["b"]              # 5 uses beat 1
    assert cache_after(AGING_PERIOD * 64 * 3).put("c", 3, 100) == ["old"]  # halved thrice: 5 -> 0


def test_a_layer_about_to_run_keeps_its_experts_and_the_budget_can_shrink():
    cache = ExpertCache(budget_bytes=300)
    for _ in range(3):
        cache.get("hot")
    cache.put("hot", 0, 100)
    cache.protect(["a", "b"])            # the current layer runs a and b, both new
    cache.get("a"), cache.put("a", 1, 100)
    cache.get("b"), cache.put("b", 2, 100)
    assert cache.put("c", 3, 100) == ["hot"]   # a and b are asked for less, but about to run
    cache.protect(["c"])
    assert cache.set_budget(100) == ["a", "b"] and cache.resident() == ["c"] and cache.used == 100
    cache.protect(["d"])                  # everything resident is protected: the oldest goes anyway
    cache.protect(["c", "d"])
    assert cache.put("d", 4, 100) == ["c"] and cache.used <= cache.budget


@pytest.mark.parametrize("layout", ["4b", "21b"])
def test_logits_identical_with_evictions_on_every_token(layout):
    path = bundle(layout)
    unlimited = runtime.load(path, accuracy_level=0)
    tight = runtime.load(path, accuracy_level=0, context=KV_GRANULE)  # token 1 charges the whole KV cache
    ids = prompt_ids()[:24]
    cache_a, cache_b = unlimited.new_cache(), tight.new_cache()
    for step, token in enumerate(ids):  # token by token, so each step swaps the working set
        np.testing.assert_array_equal(unlimited.prefill([token], cache_a), tight.prefill([token], cache_b))
        if step == 0:  # room for one token's experts of one layer, never more: every token evicts
            tight.experts.set_budget(tight.config.num_experts_per_tok * tight.experts.charge)
    stats = tight.experts.cache.stats
    builds = stats.bytes_read // tight.experts.expert_bytes
    distinct = len(stats.hits_by_key.keys() | set(tight.experts.cache.resident()))
    assert stats.evictions > len(ids) and builds > distinct  # experts were evicted and built again
    assert tight.experts.cache.used <= tight.experts.cache.budget
    assert unlimited.experts.cache.stats.evictions == 0


def test_budget_below_the_minimum_is_refused():
    probe = runtime.load(bundle("4b"))
    with pytest.raises(BudgetTooSmall, match=r"it needs at least [\d.]+ MiB"):
        runtime.load(bundle("4b"), memory_budget=probe.minimum_budget // 2)


def test_loader_drops_duplicates_and_shuts_down_with_loads_in_flight():
    import threading
    import time

    from runtime.expert_loader import ExpertLoader
    started, release, loaded = threading.Event(), threading.Event(), []

    def slow_load(key):
        started.set()
        release.wait(60)
        loaded.append(key)

    loader = ExpertLoader(lambda key, _: slow_load(key), max_pending=2)
    assert loader.request("a")
    started.wait(60)                                 # "a" is in flight
    assert not loader.request("a")                   # duplicate of a pending load: dropped
    assert loader.request("b") and loader.request("c")
    assert not loader.request("d")                   # queue full (2): refused, not blocked
    assert loader.pending("b") and not loader.pending("d")
    closer = threading.Thread(target=loader.close)
    closer.start()
    deadline = time.monotonic() + 60                 # close() drops the queued loads first...
    while (loader.pending("b") or loader.pending("c")) and time.monotonic() < deadline:
        time.sleep(0.001)
    release.set()                                    # ...then waits for the one in flight
    closer.join(60)
    assert not closer.is_alive()
    assert loaded == ["a"]                           # the load in flight finished; queued ones dropped
    assert not loader.pending("b") and loader.wait("b") is False


def test_loader_wait_returns_after_the_load():
    from runtime.expert_loader import ExpertLoader
    done = []
    loader = ExpertLoader(lambda key, _: done.append(key))
    loader.request(("layer", 1))
    loader.wait(("layer", 1), timeout=60)
    assert done == [("layer", 1)]
    loader.close()


def test_prefetch_makes_experts_resident_before_use():
    m = runtime.load(bundle("21b"), accuracy_level=0)
    x = m.embed(np.array(prompt_ids()[:1]))[0]
    experts, _ = m.route(0, x)
    m.experts.prefetch(0, experts)
    for expert in experts[0]:
        m.experts.loader.wait((0, int(expert)), timeout=60)
        assert m.experts.cache.peek((0, int(expert)))
    assert m.experts.cache.stats.misses == len(set(experts[0].tolist()))  # counted when the router asked
    m.experts.prefetch(0, experts)           # asked again: now every one is a hit
    assert m.experts.cache.stats.hits == len(set(experts[0].tolist()))
    m.close()


def test_loader_reads_the_next_expert_while_building_one():
    import threading

    from runtime.expert_loader import ExpertLoader
    building, release, events = threading.Event(), threading.Event(), []
    read_b = threading.Event()

    def read(key):
        events.append(("read", key))
        if key == "b":
            read_b.set()
        return f"bytes of {key}"

    def build(key, data):
        events.append(("build", key, data))
        building.set()
        release.wait(60)

    loader = ExpertLoader(build, read=read)
    for key in "abc":
        loader.request(key)
    building.wait(60)                                 # "a" is being built ...
    assert read_b.wait(60)                            # ... and "b" is read meanwhile
    assert not any(e[0] == "build" and e[1] == "b" for e in events)
    release.set()
    assert loader.wait("c", timeout=60)
    assert [e for e in events if e[0] == "build"] == [("build", k, f"bytes of {k}") for k in "abc"]
    loader.close()


def test_a_failed_read_is_reported_and_not_left_pending():
    from runtime.expert_loader import ExpertLoader

    def read(key):
        raise OSError("disk gone")

    loader = ExpertLoader(lambda key, data: None, read=read)
    loader.request("x")
    loader.wait("x", timeout=60)
    assert not loader.pending("x") and isinstance(loader.errors[0], OSError)
    loader.close()


def test_a_queued_load_can_be_claimed_by_the_caller_but_not_one_in_flight():
    import threading

    from runtime.expert_loader import ExpertLoader
    started, release, built = threading.Event(), threading.Event(), []

    def build(key, _):
        started.set()
        release.wait(60)
        built.append(key)

    loader = ExpertLoader(build)
    loader.request("a")
    started.wait(60)                      # "a" is being built
    loader.request("b")
    assert not loader.claim("a")          # in flight: the caller must wait for it
    assert loader.claim("b") and not loader.pending("b") and not loader.claim("b")
    assert loader.request("b")            # asked for again later: a new load
    release.set()
    loader.wait("a", timeout=60)
    loader.wait("b", timeout=60)
    loader.close()
    assert built == ["a", "b"]            # the claimed entry was skipped, the new request built


def test_warming_builds_hottest_first_within_the_free_budget_and_stops_when_asked():
    m = runtime.load(bundle("21b"), accuracy_level=0)
    cfg = m.config
    ids = prompt_ids()[:12]
    cold = m.logits(ids)
    usage = m.expert_usage()
    assert usage.sum() > 0 and usage.shape == (cfg.num_layers, cfg.num_experts)

    fresh = runtime.load(bundle("21b"), accuracy_level=0)
    assert fresh.warm_experts(usage, cancelled=lambda: True) == 0 and len(fresh.experts.cache) == 0
    room = 3 * fresh.experts.charge
    fresh.experts.set_budget(room)   # the free budget, not the whole model: three experts
    assert fresh.warm_experts(usage) == 3
    assert fresh.experts.cache.stats.evictions == 0
    hottest = sorted(((usage[k], k) for k in np.ndindex(usage.shape)), key=lambda t: -t[0])[:3]
    assert set(fresh.experts.cache.resident()) == {k for _, k in hottest}

    roomy = runtime.load(bundle("21b"), accuracy_level=0)
    assert roomy.warm_experts() == cfg.num_layers * cfg.num_experts  # everything, layer by layer
    np.testing.assert_array_equal(roomy.logits(ids), cold)          # warmed sessions compute the same
    assert roomy.experts.cache.stats.misses == 0
