"""Token generation as a stream of events: the one loop the CLI, the TUI and the tests consume.

`generate` reuses whatever prefix of the prompt the KV cache already holds, prefills the
rest, then samples token by token, yielding `TextDelta`s (UTF-8-safe, stop strings held back
until they can be ruled out) and one final `Finished` with counts and timings. `max_tokens`
is a most, not a reservation: generation also ends ("length") when the context is full.
"""
from __future__ import annotations

import time
from typing import Callable, Iterator, Sequence

from .detokenize import Detokenizer
from .errors import ContextOverflow
from .events import Finished, TextDelta
from .kvcache import KVCache


class StopStringFilter:
    """Holds back text that may be the start of a stop string; reports when one appears."""

    def __init__(self, stop_strings: Sequence[str]):
        self.stops = [s for s in stop_strings if s]
        self.pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if not self.stops:
            return text
        self.pending += text
        cut = min((i for i in (self.pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self.pending = self.pending[:cut], ""
            return out
        hold = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(stop[:size]):
                    hold = max(hold, size)
                    break
        out = self.pending[:len(self.pending) - hold]
        self.pending = self.pending[len(out):]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def generate(model, cache: KVCache, prompt_ids: Sequence[int], sampler, *, max_tokens: int,
             stop_strings: Sequence[str] = (), cancel: Callable[[], bool] | None = None,
             generated_ids: list[int] | None = None) -> Iterator:
    """Yield TextDelta events then one Finished. `generated_ids`, if given, collects the ids."""
    prompt_ids = list(prompt_ids)
    if not prompt_ids:
        raise ValueError("empty prompt")
    if len(prompt_ids) > cache.capacity:
        raise ContextOverflow(f"the prompt needs {len(prompt_ids)} tokens; the context holds {cache.capacity}",
                              len(prompt_ids), cache.capacity)
    started = time.perf_counter()
    # re-run >= 1 token for its logits; a sliding window may not go back that far (then 0)
    reused = cache.trim(min(cache.common_prefix(prompt_ids), len(prompt_ids) - 1))
    logits = model.prefill(prompt_ids[reused:], cache)
    prompt_seconds = time.perf_counter() - started
    history = list(prompt_ids)
    detokenizer, stops = Detokenizer(model.tokenizer), StopStringFilter(stop_strings)
    eos = set(model.eos_token_ids)
    generated, reason = 0, "length"
    started = time.perf_counter()
    while True:
        if cancel is not None and cancel():
            reason = "cancelled"
            break
        if generated >= max_tokens:
            break
        token = int(sampler(logits, history))
        if token in eos:
            reason = "stop"
            break
        generated += 1
        history.append(token)
        if generated_ids is not None:
            generated_ids.append(token)
        text = stops.feed(detokenizer.add(token))
        if text:
            yield TextDelta(text, token)
        if stops.stopped:
            reason = "stop"
            break
        if cache.free == 0:
            break  # context full: "length"
        logits = model.prefill([token], cache)
    tail = stops.feed(detokenizer.flush()) if not stops.stopped else ""
    tail += stops.flush() if not stops.stopped else ""
    if tail:
        yield TextDelta(tail, -1)
    yield Finished(reason=reason, prompt_tokens=len(prompt_ids) - reused, generated_tokens=generated,
                   prompt_seconds=prompt_seconds, generation_seconds=time.perf_counter() - started)
