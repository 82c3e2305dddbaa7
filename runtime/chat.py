"""A multi-turn chat over one KV cache: only each turn's new tokens are prefilled.

The session keeps the exact token ids it has fed the model. A new turn's prompt is those ids
plus the tokens of the text the chat template adds after them, so the cache's prefix matches
and `generate` prefills only the new message. When the context would overflow, the oldest
whole turns are dropped (the system prompt stays) until the prompt leaves room to answer,
and a `Notice` says so. The last message alone may use the whole context (`max_tokens` is a
most: the reply ends when the context is full); one that cannot fit at all raises
`ContextOverflow` when `send` is called, before anything is generated.
"""
from __future__ import annotations

from typing import Callable, Iterator

from .errors import ContextOverflow
from .events import Finished, Notice, TextDelta
from .generate import generate
from .sampling import SamplingParams, make_sampler
from .template import render_chat


class ChatSession:
    def __init__(self, model, system_prompt: str | None = None, sampling: SamplingParams | None = None,
                 max_tokens: int = 1024, context: int | None = None, stop_strings=(),
                 messages: list[dict] | None = None):
        self.model = model
        self.system_prompt = system_prompt
        self.sampling = sampling or SamplingParams()
        self.max_tokens = max_tokens
        self.stop_strings = tuple(stop_strings)
        self.cache = model.new_cache(context)
        self.messages: list[dict] = list(messages or [])  # user/assistant turns, system excluded
        self._known_text, self._known_ids = "", []         # text whose exact ids are in _known_ids
        self._asked_text, self._asked_ids = "", []         # the last prompt alone: what a regenerate asks again
        self._cancelled = False

    # -- prompt building --------------------------------------------------------------------
    def _conversation(self) -> list[dict]:
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return system + self.messages

    def _render(self) -> str:
        return render_chat(self.model.chat_template, self._conversation(), add_generation_prompt=True)

    def _encode(self, text: str) -> list[int]:
        return self.model.tokenizer.encode(text, add_special_tokens=False).ids

    def prompt_ids(self) -> list[int]:
        """Token ids of the conversation, reusing the exact ids of what the model already saw."""
        text = self._render()
        for known_text, known_ids in ((self._known_text, self._known_ids), (self._asked_text, self._asked_ids)):
            if known_text and text.startswith(known_text):
                return known_ids + self._encode(text[len(known_text):])
        return self._encode(text)

    def _reserve(self) -> int:
        """Room kept for the answer when older turns must be dropped to fit a prompt."""
        return min(self.max_tokens, self.cache.capacity // 4)

    def _fit(self) -> tuple[list[int], str | None]:
        """Prompt ids that leave room to answer, dropping the oldest turns when needed."""
        capacity = self.cache.capacity
        reserve = self._reserve()
        dropped = 0
        while True:
            ids = self.prompt_ids()
            if len(ids) + reserve <= capacity:
                break
            if len(self.messages) <= 1:
                if len(ids) <= capacity:
                    break  # the message alone: answer in whatever room is left
                raise ContextOverflow(f"the prompt needs {len(ids)} tokens; the context holds {capacity}",
                                      len(ids), capacity)
            cut = 1
            while cut < len(self.messages) - 1 and self.messages[cut]["role"] != "user":
                cut += 1  # drop a whole turn: up to the next user message
            del self.messages[:cut]
            dropped += cut
        notice = f"context full: dropped the {dropped} oldest messages" if dropped else None
        return ids, notice

    # -- turns ------------------------------------------------------------------------------
    def send(self, text: str) -> Iterator:
        self.messages.append({"role": "user", "content": text})
        return self._reply(new_message=True)

    def regenerate(self) -> Iterator:
        """Answer the last user message again, replacing the last reply."""
        if self.messages and self.messages[-1]["role"] == "assistant":
            self.messages.pop()
        if not self.messages or self.messages[-1]["role"] != "user":
            raise ValueError("nothing to regenerate")
        return self._reply(new_message=False)

    def cancel(self) -> None:
        self._cancelled = True

    def prefill_draft(self, text: str, cancelled: Callable[[], bool] = lambda: False, chunk: int = 16) -> int:
        """While the user is still typing: put the conversation plus the draft `text` in the KV
        cache (all of the prompt `send(text)` would build but its last token), `chunk` tokens
        at a time, stopping between chunks as soon as `cancelled()`. `send` then prefills only
        what changed since (generate reuses the common prefix; an edit trims it). Nothing is
        generated and no turn is dropped. Returns how many prompt tokens the cache holds."""
        self.messages.append({"role": "user", "content": text})
        try:
            ids = self.prompt_ids()[:-1]
        finally:
            self.messages.pop()
        if len(ids) + self._reserve() > self.cache.capacity:
            return 0  # send would drop turns first, and so build another prompt
        done = self.cache.trim(self.cache.common_prefix(ids))
        while done < len(ids) and not cancelled():
            self.model.prefill(ids[done:done + chunk], self.cache)
            done = self.cache.length
        return done

    def _reply(self, new_message: bool) -> Iterator:
        """Fits the prompt now (raising ContextOverflow at once), then returns the event stream."""
        self._cancelled = False
        before = list(self.messages)
        try:
            ids, notice = self._fit()
        except ContextOverflow:
            self.messages[:] = before[:-1] if new_message else before  # as it was before
            raise
        return self._stream(ids, notice)

    def _stream(self, ids: list[int], notice: str | None) -> Iterator:
        if notice:
            yield Notice(notice)
        prompt_text = self._render()
        reply, generated = [], []
        sampler = make_sampler(self.sampling)
        finished = None
        try:
            for event in generate(self.model, self.cache, ids, sampler, max_tokens=self.max_tokens,
                                  stop_strings=self.stop_strings, cancel=lambda: self._cancelled,
                                  generated_ids=generated):
                if isinstance(event, TextDelta):
                    reply.append(event.text)
                elif isinstance(event, Finished):
                    finished = event
                yield event
        finally:  # also on an exception or a closed generator: keep what was said
            content = "".join(reply)
            self.messages.append({"role": "assistant", "content": content})
            full = ids + generated
            exact = (finished is not None and self.cache.tokens == full
                     and not (self.stop_strings and finished.reason == "stop"))
            self._known_ids = full if exact else []
            self._known_text = prompt_text + content if exact else ""
            asked = self.cache.tokens[:len(ids)] == ids
            self._asked_ids, self._asked_text = (ids, prompt_text) if asked else ([], "")

    @property
    def context_used(self) -> int:
        return self.cache.length
