"""The KV cache pool: a continued conversation reuses its cache; others get their own, within the limit."""
from __future__ import annotations

import model_fixtures
from runtime import KVPool, SamplingParams, TextDelta, generate, make_sampler

GREEDY = SamplingParams(temperature=0.0)


def _turn(pool: KVPool, text: str, n: int = 12):
    """Run `text` as a pool request; returns (slot, prompt ids, text of prompt + reply)."""
    slot, ids = pool.acquire(text)
    generated, reply = [], []
    for event in generate(pool.model, slot.cache, ids, make_sampler(GREEDY), max_tokens=n, generated_ids=generated):
        if isinstance(event, TextDelta):
            reply.append(event.text)
    full_text = text + "".join(reply)
    pool.record(slot, full_text, ids + generated)
    return slot, ids, full_text


def test_follow_up_reuses_the_exact_tokens_of_its_conversation():
    pool = KVPool(model_fixtures.model("4b"), slots=2)
    slot, _, said = _turn(pool, "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n")
    held = list(slot.cache.tokens)
    follow_up = said + "<|im_end|>\n<|im_start|>user\nAnd then?<|im_end|>\n<|im_start|>assistant\n"
    again, ids = pool.acquire(follow_up)
    assert again is slot and len(pool.slots) == 1
    assert ids[:len(held)] == held  # the generated ids themselves, not a re-tokenization of the reply
    assert slot.cache.common_prefix(ids) == len(held)


def test_unrelated_prompts_get_new_slots_then_the_least_recently_used_one():
    pool = KVPool(model_fixtures.model("4b"), slots=2)
    first, _, _ = _turn(pool, "The quick brown fox")
    second, _, _ = _turn(pool, "Lorem ipsum dolor sit amet")
    assert second is not first and len(pool.slots) == 2
    _turn(pool, "Lorem ipsum dolor sit amet, again")  # touches `second`: `first` is now the oldest
    third, ids = pool.acquire("Zebras and yaks")
    assert third is first and len(pool.slots) == 2
    assert third.cache.common_prefix(ids) == 0


def test_a_request_sharing_most_of_a_cache_takes_it_even_with_free_slots():
    pool = KVPool(model_fixtures.model("4b"), slots=4)
    text = "<|im_start|>user\nHello there, how are you?<|im_end|>\n<|im_start|>assistant\n"
    slot, ids, _ = _turn(pool, text)
    again, again_ids = pool.acquire(text)  # regenerate the same reply
    assert again is slot and again_ids == ids and len(pool.slots) == 1


def test_the_byte_limit_bounds_the_caches_and_each_is_charged_in_full():
    model = model_fixtures.model("4b")
    pool = KVPool(model, slots=4, byte_limit=2 * model.kv_bytes() + model.kv_bytes() // 2)
    assert pool.max_slots == 2
    first, _, _ = _turn(pool, "The quick brown fox")
    second, _, _ = _turn(pool, "Lorem ipsum dolor sit amet")
    assert first.cache.high_water == first.cache.capacity == second.cache.high_water  # charged in full
    third, _ = pool.acquire("Zebras and yaks")
    assert third is first and len(pool.slots) == 2  # no third cache: the oldest slot is reused
