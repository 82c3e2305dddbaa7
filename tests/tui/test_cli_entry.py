"""`stchat` with no command opens the app; `--help` still prints help without importing Textual."""
from __future__ import annotations

import pytest

import stchat.tui
from stchat import cli


@pytest.fixture
def terminal(monkeypatch):
    monkeypatch.setattr(cli, "has_terminal", lambda: True)


def test_no_command_runs_the_app(monkeypatch, terminal):
    started = []
    monkeypatch.setattr(stchat.tui, "run", lambda model=None: started.append(model) or 0)
    assert cli.main([]) == 0
    assert started == [None]


def test_the_app_exit_status_is_passed_on(monkeypatch, terminal):
    monkeypatch.setattr(stchat.tui, "run", lambda model=None: 1)
    assert cli.main([]) == 1


def test_dash_m_opens_the_app_on_that_model(monkeypatch, terminal, stchat_home, capsys):
    started = []
    monkeypatch.setattr(stchat.tui, "run", lambda model=None: started.append(model) or 0)
    (stchat_home / "models" / "tiny").mkdir(parents=True)
    (stchat_home / "models" / "tiny" / "manifest.json").write_text("{}")
    assert cli.main(["-m", "tiny"]) == 0 and started == ["tiny"]
    assert cli.main(["-m", "nosuch"]) == 3 and started == ["tiny"]  # unknown: exit 3, no app
    assert "unknown model 'nosuch'" in capsys.readouterr().err


def test_help_does_not_start_the_app(monkeypatch, capsys):
    monkeypatch.setattr(stchat.tui, "run", lambda model=None: (_ for _ in ()).throw(AssertionError("started")))
    assert cli.main(["--help"]) == 0
    assert "ask" in capsys.readouterr().out
