"""The Textual application `stchat` opens with no arguments: chats, experts, models, settings.

Importing this package is cheap; `run()` imports Textual and the app only when called, so the
command line (`stchat --help`, `stchat ask`) never pays for the interface.
"""
from __future__ import annotations


def run(model: str | None = None) -> int:
    """Start the app in the terminal, on `model` (else the default); returns the exit status."""
    from stchat.tui.app import StchatApp

    app = StchatApp(model=model)
    app.run()
    return int(app.return_code or 0)
