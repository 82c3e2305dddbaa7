"""What a generation reports, as plain values: the one vocabulary the CLI, the TUI and tests share.

`generate` and `ChatSession.send` yield these events in order: any number of `TextDelta`s and
`Notice`s, then exactly one `Finished`. They are frozen dataclasses so a consumer can keep,
compare or hand them across threads without copying.
"""
from __future__ import annotations

from dataclasses import dataclass

FINISH_REASONS = ("stop", "length", "cancelled")


@dataclass(frozen=True)
class TextDelta:
    """Newly completed text (always whole UTF-8 characters) and the token that completed it.

    `token_id` is -1 for text released at the end of a generation rather than by a token."""

    text: str
    token_id: int


@dataclass(frozen=True)
class Notice:
    """Something the user should know that is not model output (e.g. old turns were dropped)."""

    message: str


@dataclass(frozen=True)
class Finished:
    """The last event of a generation: why it ended, how much work it did and how fast."""

    reason: str  # "stop" (EOS or stop string), "length" (max_tokens or context full), "cancelled"
    prompt_tokens: int  # tokens actually prefilled (a prefix reused from the cache is not counted)
    generated_tokens: int
    prompt_seconds: float
    generation_seconds: float

    def __post_init__(self) -> None:
        if self.reason not in FINISH_REASONS:
            raise ValueError(f"finish reason must be one of {FINISH_REASONS}, got {self.reason!r}")

    @property
    def prompt_tps(self) -> float:
        """Prefill speed in tokens per second; 0 when no time was measured."""
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def generation_tps(self) -> float:
        """Decode speed in tokens per second; 0 when no time was measured."""
        return self.generated_tokens / self.generation_seconds if self.generation_seconds > 0 else 0.0
