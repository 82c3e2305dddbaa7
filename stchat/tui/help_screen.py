"""The help screen (F1, or `?` outside the message box): every key of every screen on one page.

The footer has room for a handful of keys at 80 columns; this is where the rest are found.
"""
from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

KEYS = """\
# Keys

| chat | |
|---|---|
| Enter | send the message |
| Ctrl+J, Shift+Enter | new line (a multi-line paste stays one message) |
| Esc | stop the reply being written; in the sidebar, clear the search and go back to typing |
| Ctrl+R | write the last reply again |
| Ctrl+N | new chat |
| Ctrl+F | search chat titles and messages (Enter: to the list, Esc: back) |
| F2, F8 (Delete in the list) | rename, delete the chat (asks first) |
| Ctrl+L | show or hide the chat list (hidden at first below 80 columns) |
| F9 | this chat's own system prompt and sampling |
| Ctrl+O, Ctrl+B | copy the last reply, the last code block |
| `c`, `b` on a focused message | copy that message, its last code block |
| Ctrl+S | export the chat as Markdown |

| everywhere | |
|---|---|
| F1, `?` | this help |
| F3 | experts: which are in RAM per layer, and their hits |
| F4 | models: `u` use now, `d` make default, `x` delete, `p` pull |
| F5 | settings: memory budget, threads, default sampling, theme (Ctrl+S saves) |
| Ctrl+P | command palette |
| Ctrl+Q | quit |
| Esc | close a screen or dialog |
"""


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen VerticalScroll { width: 96; max-width: 100%; height: 90%; border: thick $primary;
                                background: $surface; padding: 0 1; }
    """
    BINDINGS = [Binding("escape,f1,question_mark,q", "app.pop_screen", "Close", id="help.close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Markdown(KEYS, id="keys")
