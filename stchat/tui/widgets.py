"""The chat screen's building blocks: the prompt box, one message, and the status bar."""
from __future__ import annotations

import re
from dataclasses import dataclass

from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Label, Markdown, Static, TextArea

CODE_BLOCK = re.compile(r"^(`{3,}|~{3,})[^\n]*\n(.*?)^\1[ \t]*$", re.MULTILINE | re.DOTALL)


def code_blocks(markdown: str) -> list[str]:
    """The contents of the fenced code blocks in `markdown`, in order."""
    return [match.group(2).rstrip("\n") for match in CODE_BLOCK.finditer(markdown)]


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def displayable(text: str) -> str:
    """Text safe to draw: control characters (a model can emit any byte) become U+FFFD, so
    none reaches the terminal as a command. Newlines and tabs stay; stored text is unchanged."""
    return _CONTROL.sub("\ufffd", text)


class PromptInput(TextArea):
    """The message box: Enter sends; Ctrl+J (everywhere) or Shift+Enter (where reported) adds a
    newline; a multi-line paste stays one message, since a paste is not a key press."""

    @dataclass
    class Submitted(Message):
        text: str

    NEWLINE_KEYS = ("ctrl+j", "shift+enter")

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            self.post_message(self.Submitted(self.text))
            return
        if event.key in self.NEWLINE_KEYS:
            event.stop()
            event.prevent_default()
            start, end = self.selection
            self._replace_via_keyboard("\n", start, end)
            return
        await super()._on_key(event)


ROLE_NAMES = {"user": "You", "assistant": "Assistant", "system": "System"}


class MessageView(Vertical, can_focus=True):
    """One message: a header line (who, state, speed) and its Markdown body."""

    BINDINGS = [
        Binding("c", "copy", "Copy message", id="message.copy"),
        Binding("b", "copy_code", "Copy code block", id="message.copy_code"),
    ]

    def __init__(self, role: str, content: str = "", *, state: str = "complete", stats: dict | None = None,
                 message_id: int | None = None):
        super().__init__(classes=f"message {role}")
        self.role, self.content, self.state, self.stats = role, content, state, stats
        self.message_id = message_id

    def compose(self):
        yield Label(self.header(), classes="header")
        yield Markdown(displayable(self.content))

    def header(self) -> str:
        parts = [ROLE_NAMES.get(self.role, self.role)]
        if self.state == "streaming":
            parts.append("…")
        elif self.state == "stopped":
            parts.append("(stopped)")
        elif self.state == "failed":
            parts.append("(no reply)")
        if self.stats and self.stats.get("generated_tokens"):
            parts.append(f"· {self.stats['generated_tokens']} tokens, "
                         f"{self.stats.get('generation_tps', 0):.1f} t/s")
        return " ".join(parts)

    @property
    def markdown(self) -> Markdown:
        return self.query_one(Markdown)

    async def finish(self, content: str, state: str, stats: dict | None) -> None:
        """The final full render (a stream can leave code fences half drawn) and header."""
        self.content, self.state, self.stats = content, state, stats
        await self.markdown.update(displayable(content))
        self.query_one(".header", Label).update(self.header())

    async def fail(self, error: str) -> None:
        """A reply that could not start: the error in its place (shown, never stored)."""
        self.content, self.state = "", "failed"
        self.add_class("failed")
        await self.markdown.update(displayable(error[:1].upper() + error[1:]))
        self.query_one(".header", Label).update(self.header())

    def action_copy(self) -> None:
        self.app.copy_text(self.content, "message")

    def action_copy_code(self) -> None:
        blocks = code_blocks(self.content)
        if not blocks:
            self.app.notify("This message has no code block.", severity="warning")
            return
        self.app.copy_text(blocks[-1], "code block")


def human_bytes(size: float | None) -> str:
    if size is None:
        return "auto"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit in ("B", "KiB", "MiB") else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


class StatusBar(Static):
    """Always on screen: model, prompt and generation speed, memory, expert hit rate, context."""

    DEFAULT_CSS = """
    StatusBar { height: 1; background: $panel; color: $text; padding: 0 1; }
    """

    _shown: Text | None = None

    def on_mount(self) -> None:
        self.set_interval(0.5, self.refresh_status)
        self.refresh_status()

    def refresh_status(self) -> None:
        """Redraw when the text changed: one line of a fixed size, so without a layout of the
        screen (that made each refresh cost 10-20 ms of UI time while a reply streamed)."""
        text = self.app.status_text(self.size.width - 2 if self.size.width > 2 else None)
        if text != self._shown:
            self._shown = text
            self.update(text, layout=False)


def status_line(*, model_name: str | None, loading: str | None, load_started: float | None, now: float,
                prompt_tps: float | None, generation_tps: float | None, memory_used: int | None,
                memory_budget: int | None, hit_rate: float | None, context: tuple[int, int] | None,
                width: int | None = None) -> Text:
    """The status bar's text, from plain numbers (so it is easy to test). Where `width` is too
    narrow for all of it, the prompt speed goes first, then the hit rate, then the generation
    speed: the model, memory and context stay."""
    parts = _status_parts(model_name, loading, load_started, now, prompt_tps, generation_tps, memory_used,
                          memory_budget, hit_rate, context)
    for optional in ("prompt", "experts", "gen"):
        if width is None or len(" │ ".join(parts.values())) <= width:
            break
        del parts[optional]
    return Text(" │ ".join(parts.values()), no_wrap=True, overflow="ellipsis")


def _status_parts(model_name, loading, load_started, now, prompt_tps, generation_tps, memory_used, memory_budget,
                  hit_rate, context) -> dict[str, str]:
    parts: dict[str, str] = {}
    if loading:
        elapsed = f" {now - load_started:.0f}s" if load_started is not None else ""
        parts["model"] = f"loading {loading}…{elapsed}"
    else:
        parts["model"] = model_name or "no model"
    parts["prompt"] = f"prompt {prompt_tps:.1f} t/s" if prompt_tps is not None else "prompt – t/s"
    parts["gen"] = f"gen {generation_tps:.1f} t/s" if generation_tps is not None else "gen – t/s"
    used = human_bytes(memory_used) if memory_used is not None else "–"
    parts["mem"] = f"mem {used} / {human_bytes(memory_budget)}"
    parts["experts"] = f"experts {hit_rate:.0%} hit" if hit_rate is not None else "experts – hit"
    if context and context[1]:
        length, capacity = context
        parts["ctx"] = f"ctx {length}/{capacity} ({length / capacity:.0%})"
    else:
        parts["ctx"] = "ctx –"
    return parts
