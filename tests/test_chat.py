"""Generation and chat on a real (tiny, synthetic) model: events, stops, KV reuse, context limits."""
import numpy as np
import pytest

import runtime
from compute_spy import ComputeSpy
from model_fixtures import model, prompt_ids
from runtime.chat import ChatSession
from runtime.errors import ContextOverflow
from runtime.events import Finished, Notice, TextDelta
from runtime.generate import generate
from runtime.sampling import SamplingParams, make_sampler
from runtime.template import render_chat

GREEDY = SamplingParams(temperature=0.0)


def _run(events):
    events = list(events)
    assert isinstance(events[-1], Finished) and sum(isinstance(e, Finished) for e in events) == 1
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    return text, events[-1], events


def _generate(m, ids, **kwargs):
    return _run(generate(m, m.new_cache(), ids, make_sampler(GREEDY), **kwargs))


@pytest.fixture(scope="module")
def m():
    return model("21b", accuracy_level=0)


def test_greedy_generation_is_deterministic_and_counted(m):
    ids = prompt_ids()[:20]
    text, done, events = _generate(m, ids, max_tokens=12)
    assert done.reason == "length" and done.generated_tokens == 12 and done.prompt_tokens == 20
    assert done.prompt_seconds > 0 and done.generation_seconds > 0 and done.generation_tps > 0
    assert _generate(m, ids, max_tokens=12)[0] == text
    # the streamed ids are the greedy argmax chain of the model's own logits
    streamed = [e.token_id for e in events if isinstance(e, TextDelta) and e.token_id >= 0]
    cache = m.new_cache()
    logits = m.prefill(ids, cache)
    expected = []
    for _ in range(12):
        expected.append(int(np.argmax(logits)))
        logits = m.prefill([expected[-1]], cache)
    assert set(streamed) <= set(expected)
    assert m.tokenizer.decode(expected) == text


def test_stops_on_eos(m, monkeypatch):
    ids = prompt_ids()[:20]
    first = int(np.argmax(m.logits(ids)[-1]))
    monkeypatch.setattr(m, "eos_token_ids", (first,))
    text, done, _ = _generate(m, ids, max_tokens=12)
    assert text == "" and done.reason == "stop" and done.generated_tokens == 0


def test_stops_on_stop_string(m):
    ids = prompt_ids()[:20]
    full, _, _ = _generate(m, ids, max_tokens=30)
    stop = full[len(full) // 2: len(full) // 2 + 3]
    assert stop and full.index(stop) > 0
    text, done, _ = _generate(m, ids, max_tokens=30, stop_strings=[stop])
    assert done.reason == "stop" and text == full[: full.index(stop)]


def test_cancel_stops_at_once(m):
    ids = prompt_ids()[:20]
    seen = []
    events = generate(m, m.new_cache(), ids, make_sampler(GREEDY), max_tokens=50,
                      cancel=lambda: len(seen) >= 3)
    for event in events:
        seen.append(event)
    assert seen[-1].reason == "cancelled" and seen[-1].generated_tokens <= 3


def _encode(m, text: str) -> list[int]:
    return m.tokenizer.encode(text, add_special_tokens=False).ids


def test_each_turn_computes_only_its_new_tokens(m, monkeypatch):
    spy = ComputeSpy(monkeypatch)
    chat = ChatSession(m, system_prompt="You are terse.", sampling=GREEDY, max_tokens=8)
    mark = spy.mark()
    _, first, _ = _run(chat.send("Hello there, how are you?"))
    assert spy.positions(mark) == list(range(chat.cache.length))  # a fresh cache: all of it, once
    assert spy.tokens(mark) == chat.cache.tokens
    assert first.prompt_tokens == len(chat.cache.tokens) - first.generated_tokens
    global_layers = [layer for layer, window in enumerate(chat.cache.layout.windows) if not window]
    assert global_layers  # whose buffer row i holds position i
    for message in ("Tell me about the fox.", "And what about the dog?"):  # the second and third turns
        held, kept_tokens = chat.cache.length, list(chat.cache.tokens)
        kept_keys = [chat.cache.keys[layer][:, :, :held].copy() for layer in global_layers]  # [1, nKV, held, D]
        suffix = _encode(m, f"<|im_end|>\n<|im_start|>user\n{message}<|im_end|>\n<|im_start|>assistant\n")
        mark = spy.mark()
        text, done, _ = _run(chat.send(message))
        # what went through the model: one prefill of the new message at the end of the cache,
        # then one step per generated token; no position before `held` was computed again
        assert spy.since(mark)[0] == (held, suffix)
        assert spy.positions(mark) == list(range(held, held + len(suffix) + done.generated_tokens))
        assert chat.cache.length == held + len(suffix) + done.generated_tokens
        assert done.prompt_tokens == len(suffix)  # the count reported is the work done
        # the prefix kept in place: the same ids and the very same keys at positions [0, held)
        assert chat.cache.tokens[:held] == kept_tokens
        for layer, kept in zip(global_layers, kept_keys):
            np.testing.assert_array_equal(chat.cache.keys[layer][:, :, :held], kept)
        # same answer as a fresh prefill of the whole conversation
        fresh, _, _ = _generate(m, chat.cache.tokens[: held + len(suffix)], max_tokens=8)
        assert fresh == text
    assert [msg["role"] for msg in chat.messages] == ["user", "assistant"] * 3


@pytest.mark.parametrize("layout", ["4b", "21b"])
def test_regenerate_replaces_last_reply_computing_only_what_it_must(layout, monkeypatch):
    m = model(layout, accuracy_level=0)
    spy = ComputeSpy(monkeypatch)
    chat = ChatSession(m, sampling=SamplingParams(temperature=0.8, seed=1), max_tokens=6)
    for turn, message in enumerate(["Say something.", "Something else."]):  # regenerate each reply
        held, mark = chat.cache.length, spy.mark()
        _run(chat.send(message))
        start, new_ids = spy.since(mark)[0]  # the turn's prompt: its new tokens, after the cache
        assert start == held
        if turn == 0:
            asked = render_chat(m.chat_template, [{"role": "user", "content": message}], add_generation_prompt=True)
            assert new_ids == _encode(m, asked)
        prompt = chat.cache.tokens[:held + len(new_ids)]
        mark = spy.mark()
        _, done, _ = _run(chat.regenerate())
        assert [msg["role"] for msg in chat.messages] == ["user", "assistant"] * (turn + 1)
        if layout == "4b":  # the prompt stays in the cache: only its last token runs again (its
            first = len(prompt) - 1  # logits start the new reply)
        else:  # the 8-token window moved on during the reply: its old positions are gone
            first = 0
        assert spy.since(mark)[0] == (first, prompt[first:])  # then one step per new token
        assert spy.positions(mark) == list(range(first, len(prompt) + done.generated_tokens))
        assert chat.cache.tokens[:len(prompt)] == prompt and done.prompt_tokens == len(prompt) - first
    # and a turn after a regenerate starts where the regenerated reply ended
    held, mark = chat.cache.length, spy.mark()
    _, after, _ = _run(chat.send("Again."))
    assert spy.since(mark)[0][0] == held and spy.positions(mark) == list(range(held, chat.cache.length))
    assert after.prompt_tokens == len(spy.since(mark)[0][1])


def test_max_tokens_is_a_most_generation_stops_when_the_context_is_full(m):
    ids = prompt_ids()[:20]
    cache = m.new_cache(48)
    text, done, _ = _run(generate(m, cache, ids, make_sampler(GREEDY), max_tokens=1000))
    assert done.reason == "length" and cache.length == 48
    assert done.generated_tokens == 48 - 20 + 1  # the last token is sampled, never fed back


def test_a_prompt_that_fits_only_without_the_reserve_is_answered(m):
    chat = ChatSession(m, sampling=GREEDY, max_tokens=1024, context=64)
    _, done, _ = _run(chat.send("word " * 14))  # 58 tokens: more than 64 - a reserve of 64/4
    assert done.prompt_tokens == 58 and done.reason == "length" and chat.cache.length == 64


def test_full_context_drops_oldest_turns_and_says_so(m):
    chat = ChatSession(m, system_prompt="System rules.", sampling=GREEDY, max_tokens=4, context=96)
    notices = []
    for i in range(6):
        _, _, events = _run(chat.send(f"Message number {i} about foxes and dogs."))
        notices += [e for e in events if isinstance(e, Notice)]
    assert notices and "dropped" in notices[0].message
    assert chat.messages[-2]["content"] == "Message number 5 about foxes and dogs."
    assert chat.messages[0]["role"] == "user" and "Message number 0" not in chat.messages[0]["content"]
    assert "System rules." in chat._render()


def test_turn_too_long_for_context_is_refused_cleanly(m):
    chat = ChatSession(m, sampling=GREEDY, max_tokens=4, context=48)
    _run(chat.send("Hi."))
    before = list(chat.messages)
    with pytest.raises(ContextOverflow, match="context holds 48") as refused:
        chat.send("word " * 200)  # refused at once, before any event
    assert refused.value.capacity == 48 and refused.value.needed > 200
    assert chat.messages == before


def test_interrupted_reply_is_kept(m):
    chat = ChatSession(m, sampling=GREEDY, max_tokens=40)
    stream = chat.send("Hello")
    got = [next(stream) for _ in range(3)]
    stream.close()  # the consumer went away mid-reply (Ctrl-C, crash in the UI)
    assert chat.messages[-1]["role"] == "assistant"
    assert chat.messages[-1]["content"] == "".join(e.text for e in got if isinstance(e, TextDelta))
