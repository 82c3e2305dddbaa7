"""What the workers report back to the interface: one small message class per event.

Workers run in threads and never touch widgets; they post these, and the handlers (on the UI
thread) update the screen.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from textual.message import Message


@dataclass
class ModelLoading(Message):
    name: str


@dataclass
class ModelLoaded(Message):
    name: str
    model: Any
    seconds: float


@dataclass
class ModelFailed(Message):
    name: str
    error: str


@dataclass
class ReplyStarted(Message):
    conversation_id: int
    message_id: int


class TextFeed:
    """A reply's text on its way from the generation worker to the screen.

    Posting one message per token made the UI thread parse and lay out the growing Markdown
    for every token, and that work took the GIL from generation (the app streamed at a third
    of `ask`'s speed). The worker `add`s each piece here instead; a `ReplyDelta` is posted only
    when none is waiting and `interval` has passed since the last, and its handler `take`s
    all the text gathered so far. Text added after the last post is drawn with the next one,
    or by the final render when the reply ends.

    A draw (parse, layout of the screen, render) costs the UI thread about as much for one new
    token as for fifty, 15-20 ms on a long paragraph, so a slow model paid it for nearly every
    token. The handler reports what each draw cost (`pace`) and the interval stretches so that
    drawing takes at most `UI_SHARE` of a core, between `MIN_INTERVAL` and `MAX_INTERVAL`."""

    UI_SHARE = 0.04
    MIN_INTERVAL, MAX_INTERVAL = 0.1, 0.5

    def __init__(self, post: Callable[[], None], interval: float = MIN_INTERVAL,
                 clock: Callable[[], float] = time.monotonic):
        self._post, self.interval, self._clock = post, interval, clock
        self._lock = threading.Lock()
        self._pieces: list[str] = []
        self._tokens = 0
        self._waiting = False
        self._last_post = float("-inf")

    def pace(self, ui_seconds: float) -> None:
        """The UI thread spent `ui_seconds` of CPU since the last draw: space the next posts
        so that this cost stays under `UI_SHARE` of the time."""
        self.interval = min(self.MAX_INTERVAL, max(self.MIN_INTERVAL, ui_seconds / self.UI_SHARE))

    def add(self, text: str) -> None:
        now = self._clock()
        with self._lock:
            self._pieces.append(text)
            self._tokens += 1
            post = not self._waiting and now - self._last_post >= self.interval
            if post:
                self._waiting, self._last_post = True, now
        if post:
            self._post()

    def take(self) -> tuple[str, int]:
        """(the text added since the last take, how many pieces it was)."""
        with self._lock:
            text, tokens = "".join(self._pieces), self._tokens
            self._pieces.clear()
            self._tokens, self._waiting = 0, False
        return text, tokens


@dataclass
class ReplyDelta(Message):
    feed: TextFeed


@dataclass
class ReplyNotice(Message):
    text: str


@dataclass
class ReplyDone(Message):
    conversation_id: int
    message_id: int | None
    text: str
    state: str             # "complete" or "stopped"
    stats: dict | None     # token counts, seconds, tokens/s, finish reason
    error: str | None = None


@dataclass
class ModelDeleted(Message):
    name: str
    error: str | None = None


@dataclass
class PullProgress(Message):
    text: str
    transient: bool  # a status line redrawn in place (bar, percent) rather than a log line


@dataclass
class PullDone(Message):
    name: str | None
    error: str | None = None
    cancelled: bool = False
