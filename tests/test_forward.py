"""The runtime's logits against the independent numpy reference, and its invariants."""
import numpy as np
import pytest

import runtime
from model_fixtures import PROMPT, bundle, hf_config, model, prompt_ids, weights
from reference import dequantized_q4_weights, reference_logits

LAYOUTS = ["4b", "21b"]
KV_DTYPES = ["float16", "float32"]
# Largest logit error from storing keys and values, as a fraction of the largest logit: fp32
# is float rounding only; fp16 rounds each stored K/V to 11 bits (measured on these models,
# one token at a time: 1.1e-4 and 1.7e-4; a prefill in one chunk reads fp32 K/V: 3e-7).
KV_TOLERANCE = {"float32": 1e-4, "float16": 1e-3}


@pytest.fixture(scope="module", params=LAYOUTS)
def layout(request):
    return request.param


def _reference(layout, ids):
    return reference_logits(dequantized_q4_weights(weights(layout)), hf_config(layout), ids)


def _sequence(layout, length=64):
    """The first 64 tokens of the test prompt (teacher forcing: every position sees the same input)."""
    ids = prompt_ids()[:length]
    assert len(ids) == length, "prompt too short for the test"
    return ids


def test_prompt_exceeds_sliding_window():
    assert len(prompt_ids()) > 8 * 4  # TINY_21B_LIKE window is 8


def test_level0_matches_reference_to_float_rounding(layout):
    ids = _sequence(layout)
    ref = _reference(layout, ids)
    got = model(layout, accuracy_level=0).logits(ids)
    assert got.dtype == np.float32 and got.shape == (len(ids), ref.shape[1])
    # fp32 all the way vs a float64 reference: errors of float rounding only
    np.testing.assert_allclose(got, ref, atol=1e-4 * np.abs(ref).max(), rtol=0)


def test_level4_within_tolerance_and_greedy_agreement(layout):
    """Level 4 quantizes activations to int8 per 32-block (as llama.cpp's Q4_0 x Q8_0 does).

    Tolerance: that rounding perturbs each matmul by about 0.5% of its output, so logits
    move by a few percent of their spread; we require the median absolute error below 2% and
    the 99th percentile below 5% of the reference logits' standard deviation. Greedy choices
    agree on at least 95% of the 64 positions (measured: 62/64 on the 4B layout, 63/64 on the
    21B one; random-weight models have flat next-token distributions, so near-ties are common),
    and every disagreement must be a near-tie of the reference (its top-2 margin below that
    row's error), never a clear choice.
    """
    ids = _sequence(layout)
    ref = _reference(layout, ids)
    got = model(layout, accuracy_level=4).logits(ids)
    err = np.abs(got - ref)
    spread = ref.std()
    assert np.median(err) < 0.02 * spread
    assert np.percentile(err, 99) < 0.05 * spread
    agree = got.argmax(-1) == ref.argmax(-1)
    top2 = np.sort(ref, axis=-1)[:, -2:]
    margins = top2[:, 1] - top2[:, 0]
    assert np.all(margins[~agree] < err.max(-1)[~agree]), "a clear greedy choice was flipped"
    assert agree.mean() >= 0.95, f"greedy agreement {agree.mean():.3f}"


@pytest.mark.parametrize("kv_dtype", KV_DTYPES)
def test_token_by_token_equals_prefill(layout, kv_dtype):
    m = model(layout, accuracy_level=0, kv_dtype=kv_dtype)
    ids = prompt_ids()[:40]
    full = m.logits(ids)
    cache = m.new_cache()
    steps = np.stack([m.prefill([t], cache) for t in ids])
    np.testing.assert_allclose(steps, full, atol=KV_TOLERANCE[kv_dtype] * np.abs(full).max(), rtol=0)


def test_chunked_prefill_equals_unchunked(layout):
    # float32 K/V: chunking must not change a bit of the arithmetic (float16 K/V are read
    # rounded by later chunks only; that is checked against the reference above)
    m = model(layout, accuracy_level=4, kv_dtype="float32")
    ids = prompt_ids()
    whole = m.prefill(ids, m.new_cache(), chunk_size=len(ids))
    for chunk in (1, 7, 16):
        np.testing.assert_allclose(m.prefill(ids, m.new_cache(), chunk_size=chunk), whole, atol=2e-5, rtol=0)


def test_logits_do_not_disturb_a_cache(layout):
    m = model(layout, accuracy_level=0, kv_dtype="float32")
    ids = prompt_ids()[:20]
    cache = m.new_cache()
    first = m.prefill(ids[:10], cache)
    m.logits(ids[5:15])
    after = m.prefill(ids[10:], cache)
    np.testing.assert_allclose(after, m.logits(ids)[-1], atol=1e-4, rtol=0)
    assert cache.length == 20 and first.shape == after.shape


def test_prefill_refuses_overflow(layout):
    m = model(layout)
    cache = m.new_cache(8)
    with pytest.raises(ValueError, match="do not fit"):
        m.prefill(prompt_ids()[:9], cache)


@pytest.mark.parametrize("kv_dtype", KV_DTYPES)
@pytest.mark.parametrize("chunk_size", [1, 5, 100])
def test_sliding_layers_keep_only_their_window_and_match_the_reference(kv_dtype, chunk_size):
    """The 21B layout (window 8): each sliding layer's buffer has 8 rows, so a 82-token prompt
    is evicted from many times over, in chunks smaller and larger than the buffer."""
    m = model("21b", accuracy_level=0, kv_dtype=kv_dtype)
    ids = prompt_ids()
    ref = _reference("21b", ids)
    cache = m.new_cache()
    assert [a.shape[2] for a in cache.keys] == [m.max_context, 8, 8, 8]
    assert cache.keys[0].dtype == np.dtype(kv_dtype)
    got = m.prefill(ids, cache, chunk_size=chunk_size, all_logits=True)
    np.testing.assert_allclose(got, ref, atol=KV_TOLERANCE[kv_dtype] * np.abs(ref).max(), rtol=0)


def test_a_window_with_slack_evicts_in_steps_and_trims_only_within_one(tmp_path):
    """A window of 32 gets 33 rows (eviction every 2 tokens); a trim back to a length whose
    window is still resident keeps the cache, one across an eviction starts over, and both
    continue exactly."""
    from dataclasses import replace

    from model_fixtures import LAYOUTS
    from runtime import synthetic

    spec = replace(LAYOUTS["21b"], sliding_window_size=32)
    weights_32 = synthetic.make_weights(spec, seed=1)
    path = runtime.convert(synthetic.write_gguf(spec, tmp_path / "w32.gguf", weights=weights_32), tmp_path / "w32")
    m = runtime.load(path, accuracy_level=0, kv_dtype="float32")
    ids = prompt_ids()
    ref = reference_logits(dequantized_q4_weights(weights_32), spec.hf_config(synthetic.make_tokenizer()), ids)
    tolerance = 1e-4 * np.abs(ref).max()
    cache = m.new_cache()
    assert [a.shape[2] for a in cache.keys][1:] == [33, 33, 33]
    m.prefill(ids[:59], cache, chunk_size=7)          # 59 > 33: evicted, 26..58 resident
    assert cache.trim(58) == 58                       # 58 needs 26..57: all there
    np.testing.assert_allclose(m.prefill(ids[58:], cache, all_logits=True), ref[58:], atol=tolerance, rtol=0)
    assert cache.trim(40) == 0                        # 40 needs 8..39, long gone: start over
    assert cache.length == 0 and cache.tokens == []
    np.testing.assert_allclose(m.prefill(ids, cache, all_logits=True), ref, atol=tolerance, rtol=0)


def test_logits_size_their_own_cache_beyond_the_model_context():
    """Model.logits used to refuse an input longer than the default context (4300 tokens on
    an 8192-token model); it takes anything up to the trained length."""
    m = runtime.load(bundle("21b"), accuracy_level=0, context=16)
    ids = prompt_ids()[:64]
    assert m.max_context == 16 and len(ids) > m.max_context
    ref = _reference("21b", ids)
    np.testing.assert_allclose(m.logits(ids), ref, atol=KV_TOLERANCE["float16"] * np.abs(ref).max(), rtol=0)
    with pytest.raises(ValueError, match="do not fit"):
        m.prefill(ids[:17], m.new_cache())
    with pytest.raises(runtime.InvalidContext, match="trained for 1 to 512"):
        runtime.load(bundle("21b"), context=513)


def test_keys_and_values_are_float32_when_the_model_fits():
    roomy = runtime.load(bundle("21b"))  # a share of this machine's memory: far more than needed
    assert roomy.kv_dtype == "float32"  # float16 when memory is short: tests/test_memory_budget.py


def _with_room(layout, low, high):
    """The model loaded with a budget that leaves between `low` and `high` bytes for experts
    (and the KV cache as it fills): the room is the budget less what the process holds, so a
    few loads home in on it."""
    from runtime.memory import PROCESS_BASELINE, process_rss

    budget = model(layout).minimum_budget + process_rss() - PROCESS_BASELINE + high
    for _ in range(8):
        before = process_rss()
        loaded = runtime.load(bundle(layout), memory_budget=budget)
        room = loaded.experts.cache.budget
        if low <= room < high:
            return loaded
        loaded.close()
        # the next load starts from what this one left resident
        budget += (low + high) // 2 - room + process_rss() - before
    pytest.fail(f"no budget leaves {low}-{high} bytes for experts")


def _all_experts(layout, level):
    """Bytes of every expert session of the model at accuracy `level` (None: lean)."""
    m = model(layout)
    return sum(m.experts.charges(level=level)) * m.config.num_experts


def test_expert_reads_bypass_the_page_cache_when_the_file_and_the_experts_would_not_both_fit(layout, monkeypatch):
    # the full-size 21B at the default budget: every expert fits at full level, but its 11.4 GiB
    # experts file beside them does not; through the page cache its first prompt took 33.5 s, the kernel
    # reclaiming throughout, and 17.8 s with direct reads
    import runtime.model

    everything = _all_experts(layout, 4)
    file_bytes = model(layout).bundle.experts_file_bytes
    monkeypatch.setattr(runtime.model, "available_memory", lambda: everything + file_bytes + (1 << 20))
    assert not runtime.load(bundle(layout)).experts.direct_reads
    monkeypatch.setattr(runtime.model, "available_memory", lambda: everything + file_bytes - (1 << 20))
    roomy = runtime.load(bundle(layout))
    assert roomy.experts.full_per_layer == roomy.config.num_experts and roomy.experts.direct_reads


def test_offloaded_q4_0_experts_are_built_lean_with_fp32_activations(layout):
    # when not every expert fits even lean, experts come and go and a miss costs a session
    # build: Q4_0 experts are then built at accuracy level 1 (cheaper to build, 1.0x their
    # bytes against 1.2x), which computes with fp32 activations: the same expert outputs as
    # level 0 to float rounding
    lean = _all_experts(layout, None)
    tight = _with_room(layout, lean - 4 * model(layout).experts.charge, lean)
    assert tight.experts.full_per_layer == 0 and tight.experts.direct_reads
    assert not model(layout).experts.direct_reads  # the whole model fits: buffered reads
    exact = model(layout, accuracy_level=0)
    h = np.random.default_rng(0).standard_normal((5, tight.config.hidden_size)).astype(np.float32)
    for expert in range(tight.config.num_experts):
        want = exact.experts.run(1, expert, h)
        np.testing.assert_allclose(tight.experts.run(1, expert, h), want, atol=1e-5 * np.abs(want).max(), rtol=0)
        assert tight.experts.level_of(1, expert) in (1, None)  # None: evicted since
    assert tight.experts.charge < model(layout).experts.charge
    tight.close()


def test_the_full_level_share_is_what_the_room_pays_for():
    from runtime.expert_levels import full_share

    full, lean, experts = [300, 300, 200], [200, 200, 150], 8                # per layer, per session
    everything_lean, extra = sum(lean) * experts, sum(full) - sum(lean)      # 4400, one more of each: 250
    assert full_share(None, full, lean, experts) == experts                  # no budget
    assert full_share(sum(full) * experts, full, lean, experts) == experts
    assert full_share(everything_lean - 1, full, lean, experts) == 0         # experts come and go
    assert full_share(everything_lean + 3 * extra + extra - 1, full, lean, experts) == 3
    assert full_share(everything_lean + 3 * extra, full, lean, experts) == 3
    assert full_share(10**9, full, full, experts) == experts                 # no leaner form


def test_when_only_some_experts_fit_at_level_4_the_most_asked_for_get_it(layout):
    # every expert fits lean but not all at level 4 (the full-size 21B in 18 GiB): the experts
    # the router asks for most get the faster level-4 sessions, as many per layer as the room
    # pays for (`full_share`, above), the rest level 1, and nothing is evicted
    mixed = runtime.load(bundle(layout))
    share = mixed.experts.full_per_layer = mixed.config.num_experts // 2
    ids = _sequence(layout)
    got = mixed.logits(ids)  # a first prompt builds every expert it asks for
    demand = mixed.experts.requests                                        # [L, E] tokens routed
    for layer in range(mixed.config.num_layers):
        levels = np.array([mixed.experts.level_of(layer, e) or 0 for e in range(mixed.config.num_experts)])
        assert set(levels[demand[layer] > 0]) <= {1, 4} and not levels[demand[layer] == 0].any()
        full = np.flatnonzero(levels == 4)
        assert len(full) == min(share, np.count_nonzero(demand[layer]))
        assert demand[layer][full].min() >= np.sort(demand[layer])[::-1][share - 1]  # the most asked for
    assert mixed.experts.cache.stats.evictions == 0
    ref = _reference(layout, ids)  # within level 4's tolerance of the reference (level 1 is closer)
    assert np.median(np.abs(got - ref)) < 0.02 * ref.std()
    mixed.close()


def test_numpy_blas_keeps_to_one_thread_once_a_model_is_loaded():
    # OpenBLAS's threads spin after each of the runtime's small matmuls and take the cores from
    # ONNX Runtime's pool: a full-size 4B prefill ran at half speed with them
    from threadpoolctl import threadpool_info

    model("4b")
    blas = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
    assert blas and all(pool["num_threads"] == 1 for pool in blas)


def test_the_heap_keeps_freed_blocks_only_while_every_expert_stays_built(layout, monkeypatch):
    # glibc returns large freed blocks at once while sessions come and go (evicted sessions'
    # weights would stay resident otherwise); once every expert is built, a prompt's activations
    # reuse kept pages instead (a full-size 4B prompt faulted 111-116k pages in, then 60k)
    import runtime.model

    settings = []
    monkeypatch.setattr(runtime.model, "configure_allocator", lambda churn=True: settings.append(churn))
    m = runtime.load(bundle(layout))
    ids = _sequence(layout, 16)
    m.logits(ids[:2])                      # a few experts built: they still come
    assert settings[-1] is True
    m.warm_experts()
    m.logits(ids)
    assert settings[-1] is False
    m.experts.set_budget(m.experts.cache.used - 1)  # one evicted: builds again
    m.logits(ids)
    assert settings[-1] is True
    m.close()


def test_once_the_heap_is_settled_each_prompt_gives_its_freed_blocks_back(layout, monkeypatch):
    # kept, they fragment: 24 prompts of 16-400 tokens grew the full-size 4B's RSS by 1.2 GB;
    # given back in idle time or before the next prompt, never between a prompt and its first token
    import runtime.model

    trims = []
    monkeypatch.setattr(runtime.model, "trim_heap", lambda: trims.append(1))
    m = runtime.load(bundle(layout))
    trims.clear()
    m.warm_experts()
    assert m._heap_settled and len(trims) == 1   # every expert built: settled in idle time, trimmed once
    cache = m.new_cache()
    m.prefill(_sequence(layout, 8), cache)
    m.prefill([3], cache)                        # decode steps: nothing to give back
    assert len(trims) == 1                       # nor before the first token
    m.warm_experts()                             # idle time gives the prompt's blocks back
    assert len(trims) == 2
    m.prefill(_sequence(layout, 8), cache)
    m.prefill(_sequence(layout, 8)[:3], cache)   # no idle time between: the next prompt does
    assert len(trims) == 3
    m.close()


def test_builds_during_a_prompt_prepack_on_their_own_thread(layout, monkeypatch):
    # a prompt's builds share the cores with its compute and with each other: each prepacks on
    # the thread that builds it (less CPU in all); a build awaited alone (a decode miss, idle
    # time) spreads its prepacking over the pool
    import runtime.experts

    made = []
    real = runtime.experts.make_session
    monkeypatch.setattr(runtime.experts, "make_session",
                        lambda *args, **kwargs: made.append(kwargs["parallel_prepack"]) or real(*args, **kwargs))
    m = runtime.load(bundle(layout))
    ids = _sequence(layout, 16)
    cache = m.new_cache(64)
    m.prefill(ids, cache)
    assert made and not any(made)
    made.clear()
    budget = m.experts.cache.budget
    m.experts.set_budget(m.experts.cache.used - 1)   # one evicted...
    m.experts.set_budget(budget)
    m.warm_experts()                                 # ...and built again in idle time
    assert made and all(made)
    m.close()
