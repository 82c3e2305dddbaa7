"""What the workers report back to the interface: one small message class per event.

Workers run in threads and never touch widgets; they post these, and the handlers (on the UI
thread) update the screen.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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


@dataclass
class ReplyDelta(Message):
    text: str


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
