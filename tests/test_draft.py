"""Prefilling a message while it is typed: Enter then computes only what changed, same reply."""
import numpy as np
import pytest

from model_fixtures import model
from runtime.chat import ChatSession
from runtime.events import Finished, TextDelta
from runtime.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0.0)
MESSAGE = "The quick brown fox jumps over the lazy dog"


class Counting:
    """The model, counting the positions that go through its forward pass."""

    def __init__(self, inner):
        self.inner, self.positions = inner, 0

    def prefill(self, ids, cache, **kw):
        self.positions += len(ids)
        return self.inner.prefill(ids, cache, **kw)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _reply(session, text):
    events = list(session.send(text))
    return "".join(e.text for e in events if isinstance(e, TextDelta)), events[-1]


@pytest.mark.parametrize("layout", ["4b", "21b"])
def test_a_drafted_message_costs_one_position_on_enter_and_gives_the_same_reply(layout):
    plain = ChatSession(model(layout, accuracy_level=0), sampling=GREEDY, max_tokens=8)
    _reply(plain, "Hi")
    expected, _ = _reply(plain, MESSAGE)

    spy = Counting(model(layout, accuracy_level=0))
    drafted = ChatSession(spy, sampling=GREEDY, max_tokens=8)
    _reply(drafted, "Hi")
    typed = ""
    for word in MESSAGE.split(" "):              # the draft grows word by word
        typed = f"{typed} {word}".strip()
        drafted.prefill_draft(typed)
    prompt_before_enter = drafted.cache.length
    spy.positions = 0
    got, finished = _reply(drafted, MESSAGE)
    assert got == expected
    assert isinstance(finished, Finished) and finished.prompt_tokens == 1
    assert spy.positions == 1 + finished.generated_tokens  # the prompt's last token, then one per token
    assert prompt_before_enter > 10


def test_an_edited_draft_trims_to_what_still_matches_and_cancel_stops_between_chunks():
    m = model("4b", accuracy_level=0)
    plain = ChatSession(m, sampling=GREEDY, max_tokens=6)
    expected, _ = _reply(plain, MESSAGE)

    spy = Counting(m)
    session = ChatSession(spy, sampling=GREEDY, max_tokens=6)
    held = session.prefill_draft("The quick brown cat")
    spy.positions = 0
    assert session.prefill_draft("The quick brown", cancelled=lambda: True) < held  # trimmed, nothing added
    assert spy.positions == 0
    got, finished = _reply(session, MESSAGE)
    assert got == expected and finished.prompt_tokens < len(session.cache.tokens)

    calls = []
    again = ChatSession(Counting(m), sampling=GREEDY, max_tokens=6)
    again.prefill_draft(MESSAGE * 4, cancelled=lambda: len(calls.append(1) or calls) > 2, chunk=4)
    assert again.cache.length == 8  # two chunks of 4, then cancelled


def test_a_draft_that_cannot_fit_the_context_is_not_prefilled():
    """The cache stays within its context (and so the memory paid for it): a draft too long for
    it, with room kept for the answer, computes nothing and leaves the cache as it was."""
    spy = Counting(model("4b", accuracy_level=0))
    session = ChatSession(spy, sampling=GREEDY, max_tokens=6, context=32)
    assert session.prefill_draft("Hi") > 0  # a short one fits
    held, spy.positions = session.cache.length, 0
    assert session.prefill_draft(MESSAGE * 4) == 0
    assert spy.positions == 0 and session.cache.length == held
