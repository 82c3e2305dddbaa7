"""A scripted stand-in for the runtime: same interface as Engine / Model / ChatSession, fixed text.

Replies are split into word tokens yielded with a small delay, so tests can watch a reply
stream, stop it with Esc, or regenerate it; `hold_after` (and `pull_hold_after`) makes a reply
(a pull) wait after that many tokens (steps) until it is stopped, so a stop always lands midway. Each token "routes" to a few experts and counts
hits in a real `ExpertCache`, so the experts view and the status bar have something to show.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from runtime.events import Finished, Notice, TextDelta
from runtime.expert_cache import ExpertCache

from stchat.tui.engine import ModelInfo


@dataclass(frozen=True)
class FakeConfig:
    num_layers: int = 4
    num_experts: int = 8
    num_experts_per_tok: int = 2


class FakeExperts:
    def __init__(self, budget: int | None):
        self.cache = ExpertCache(budget)
        self.expert_bytes = 1000


class FakeModel:
    def __init__(self, name: str, memory_budget: int | None = None):
        self.name = name
        self.config = FakeConfig()
        self.memory_budget = memory_budget
        self.experts = FakeExperts(None if memory_budget is None else memory_budget - self.resident_bytes())
        self.closed = False

    def resident_bytes(self) -> int:
        return 50 * 2**20

    def route(self, step: int) -> None:
        """Touch the experts a token would use: deterministic, so snapshots are stable."""
        cache, cfg = self.experts.cache, self.config
        for layer in range(cfg.num_layers):
            for k in range(cfg.num_experts_per_tok):
                key = (layer, (step * (layer + 1) + k * 3) % (cfg.num_experts // 2 + layer))
                if cache.get(key) is None:
                    cache.put(key, object(), self.experts.expert_bytes)

    def close(self) -> None:
        self.closed = True


class FakeCache:
    def __init__(self, capacity: int):
        self.length, self.capacity = 0, capacity


def default_reply(text: str) -> str:
    return f"You said: **{text}**"


class FakeSession:
    def __init__(self, engine: "FakeEngine", model: FakeModel, system_prompt, sampling, messages):
        self.engine, self.model = engine, model
        self.system_prompt, self.sampling = system_prompt, sampling
        self.messages = list(messages)
        self.cache = FakeCache(4096)
        self.cancelled = False
        self.replies = 0

    def send(self, text: str):
        self.messages.append({"role": "user", "content": text})
        return self._reply()

    def regenerate(self):
        if self.messages and self.messages[-1]["role"] == "assistant":
            self.messages.pop()
        if not self.messages or self.messages[-1]["role"] != "user":
            raise ValueError("nothing to regenerate")
        return self._reply()

    def cancel(self) -> None:
        self.cancelled = True

    def prefill_draft(self, text: str, cancelled=lambda: False) -> int:
        """Like the runtime's: a chunk at a time, stopping as soon as `cancelled()`."""
        done = 0
        for done in range(self.engine.draft_chunks):
            if cancelled():
                break
            time.sleep(self.engine.draft_delay)
        else:
            done = self.engine.draft_chunks
        self.engine.drafts.append((text, done, [m["content"] for m in self.messages]))
        return done

    def _reply(self):
        self.cancelled = False
        self.replies += 1
        self.engine.calls.append(("reply", [m["content"] for m in self.messages]))
        if self.engine.fail_at_start is not None:  # as the runtime does when a message cannot fit
            self.messages.pop()
            raise self.engine.fail_at_start
        if self.engine.notice:
            yield Notice(self.engine.notice)
        text = self.engine.reply_for(self.messages[-1]["content"], self.engine.reply_count)
        self.engine.reply_count += 1
        pieces = text.split(" ")
        prompt_tokens = len(" ".join(m["content"] for m in self.messages).split())
        self.cache.length += prompt_tokens
        said, generated = [], 0
        try:
            for i, piece in enumerate(pieces):
                if i == self.engine.hold_after:  # streams no further until stopped
                    wait_until(lambda: self.cancelled)
                if self.cancelled:
                    break
                if self.engine.fail_after is not None and i == self.engine.fail_after:
                    raise MemoryError("cannot allocate 12 MiB")
                time.sleep(self.engine.delay)
                self.model.route(generated)
                delta = piece if i == 0 else " " + piece
                said.append(delta)
                generated += 1
                self.cache.length += 1
                yield TextDelta(delta, 100 + i)
            reason = "cancelled" if self.cancelled else "stop"
            yield Finished(reason, prompt_tokens, generated, prompt_tokens / 100.0, generated / 20.0)
        finally:
            self.messages.append({"role": "assistant", "content": "".join(said)})


def wait_until(condition, seconds: float = 120.0) -> None:
    """What a held reply or pull does until the test stops it (the bound only ends a hang)."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.001)


class FakeEngine:
    """Installed model names, scripted replies (a function of the user text and the reply
    number), a per-token delay, optional failures."""

    def __init__(self, models=("tiny",), reply=default_reply, delay: float = 0.005, load_delay: float = 0.0,
                 load_error: Exception | None = None):
        self.models = list(models)
        self._reply = reply
        self.delay, self.load_delay, self.load_error = delay, load_delay, load_error
        self.reply_count = 0
        self.notice: str | None = None
        self.fail_after: int | None = None
        self.fail_at_start: Exception | None = None
        self.drafts: list = []  # (draft text, chunks done, the session's messages then)
        self.draft_chunks, self.draft_delay = 3, 0.01
        self.hold_after: int | None = None  # a reply holds after this many tokens until it is stopped
        self.calls: list = []
        self.loaded: list[FakeModel] = []
        self.sessions: list[FakeSession] = []
        self.deleted: list[str] = []

    def reply_for(self, text: str, n: int) -> str:
        return self._reply(text) if self._reply.__code__.co_argcount == 1 else self._reply(text, n)

    def installed(self) -> list[ModelInfo]:
        return [ModelInfo(name, Path("/models") / name, (i + 1) * 300 * 2**20, f"org/{name}-GGUF")
                for i, name in enumerate(self.models)]

    def load(self, name: str, *, memory_budget, threads, context=None):
        self.calls.append(("load", name, memory_budget, threads))
        self.context = context
        time.sleep(self.load_delay)
        if self.load_error is not None:
            raise self.load_error
        if name not in self.models:
            raise FileNotFoundError(f"unknown model '{name}'")
        model = FakeModel(name, memory_budget)
        self.loaded.append(model)
        return model

    def session(self, model, *, system_prompt, sampling, messages):
        session = FakeSession(self, model, system_prompt, sampling, messages)
        self.sessions.append(session)
        return session

    minimum = 60 * 2**20

    def minimum_budget(self, name: str, context=None) -> int:
        return self.minimum

    def delete(self, name: str) -> None:
        self.models.remove(name)
        self.deleted.append(name)

    pull_steps = 5
    pull_delay = 0.01
    pull_hold_after: int | None = None

    def pull(self, spec: str, report, cancelled) -> str:
        """Reports like `stchat pull`; `spec` "bad" fails; cancellable between steps."""
        from stchat.tui.engine import PullCancelled

        report(f"downloading {spec}.gguf (10 MiB)", False)
        for i in range(self.pull_steps):
            if i == self.pull_hold_after:  # goes no further until stopped
                wait_until(cancelled)
            if cancelled():
                raise PullCancelled("pull stopped")
            time.sleep(self.pull_delay)
            report(f"{spec}.gguf {100 * (i + 1) // self.pull_steps}%", True)
        if spec == "bad":
            raise RuntimeError(f"{spec}: 404 not found on the Hub")
        self.models.append(spec)
        report(f"installed {spec}", False)
        return spec
