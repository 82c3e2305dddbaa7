"""`stchat` with no command opens the app; `--help` still prints help without importing Textual."""
from __future__ import annotations

import stchat.tui
from stchat import cli


def test_no_command_runs_the_app(monkeypatch):
    started = []
    monkeypatch.setattr(stchat.tui, "run", lambda: started.append(True) or 0)
    assert cli.main([]) == 0
    assert started == [True]


def test_the_app_exit_status_is_passed_on(monkeypatch):
    monkeypatch.setattr(stchat.tui, "run", lambda: 1)
    assert cli.main([]) == 1


def test_help_does_not_start_the_app(monkeypatch, capsys):
    monkeypatch.setattr(stchat.tui, "run", lambda: (_ for _ in ()).throw(AssertionError("started")))
    assert cli.main(["--help"]) == 0
    assert "ask" in capsys.readouterr().out
