"""What the chat view draws: model output can hold any byte, the terminal must get none as a command."""
from stchat.tui.widgets import displayable


def test_control_characters_never_reach_the_terminal():
    text = "ok\x1b[2J\rline\x07\x9b31m\ttab\nnext"
    shown = displayable(text)
    assert "\x1b" not in shown and "\r" not in shown and "\x07" not in shown and "\x9b" not in shown
    assert shown == "ok\ufffd[2J\ufffdline\ufffd\ufffd31m\ttab\nnext"
