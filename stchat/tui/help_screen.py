"""What the app says about itself: the empty chat's introduction and the help screen.

The empty chat shows how to get a first model, or which model will answer and the main keys.
The help screen (F1, or `?` outside the message box) lists every key of every screen on one
page: the footer has room for a handful of keys at 80 columns; this is where the rest are found.
"""
from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

WELCOME = """\
# Welcome to stchat

No model is installed yet. Download one from a shell:

```sh
stchat pull 4b
```

or convert a GGUF file you already have with `stchat ask -m ./model.gguf "hi"`.
Then open **Models** (F4) to check it is there; this screen picks it up.
"""


KEYS_IN_SHORT = """\
| key | |
|---|---|
| Enter, Ctrl+J | send, new line |
| Esc | stop the reply being written |
| Ctrl+N, Ctrl+F | new chat, search chats |
| F3, F4, F5 | experts, models, settings |
| F1 | every key |
"""


def introduction(model: str | None, loading: str | None, context: int | None, budget: str) -> str:
    """The empty chat's text once a model is installed: what will answer, and the main keys."""
    if loading:
        state = f"**{loading}** is loading…"
    elif model:
        context_text = f", context {context} tokens" if context else ""
        state = f"**{model}** is ready{context_text}, memory budget {budget}."
    else:
        state = "No model is loaded: choose one in Models (F4)."
    return f"# New chat\n\n{state} Type a message below and press Enter.\n\n{KEYS_IN_SHORT}"


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
