"""The app in a real terminal: tmux runs `stchat` on a tiny imported model; we type and read
the screen back, as a user would. Skipped where tmux is not installed."""
from __future__ import annotations

import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid

import pytest

from model_fixtures import gguf_file

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


def screen_until(tmux, predicate, timeout: float = 30.0) -> str:
    deadline, text = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        text = tmux("capture-pane", "-p", "-t", "app").stdout
        if predicate(text):
            return text
        time.sleep(0.2)
    raise AssertionError(f"screen never showed what was expected; last screen:\n{text}")


def test_type_a_message_and_read_the_streamed_reply(stchat_home, tmp_path):
    model = tmp_path / "tiny.gguf"
    shutil.copy(gguf_file("4b"), model)
    pulled = subprocess.run([sys.executable, "-m", "stchat", "pull", str(model)], capture_output=True, text=True)
    assert pulled.returncode == 0, pulled.stderr

    socket = f"stchat-test-{uuid.uuid4().hex[:8]}"  # a private tmux server

    def tmux(*args):
        return subprocess.run(["tmux", "-L", socket, *args], capture_output=True, text=True)

    command = f"env -u COLUMNS -u LINES STCHAT_HOME={shlex.quote(str(stchat_home))} TERM=xterm-256color " \
              f"{shlex.quote(sys.executable)} -m stchat"
    assert tmux("new-session", "-d", "-s", "app", "-x", "150", "-y", "32", command).returncode == 0
    try:
        screen_until(tmux, lambda s: "Message (Enter sends" in s and "tiny" in s)
        tmux("send-keys", "-t", "app", "-l", "hello from tmux")
        screen_until(tmux, lambda s: "hello from tmux" in s and "Message (Enter sends" not in s)
        for _ in range(30):  # Enter is refused (text kept) until the model has loaded
            tmux("send-keys", "-t", "app", "Enter")
            try:
                screen_until(tmux, lambda s: "Message (Enter sends" in s and "hello from tmux" in s,
                             timeout=1.0)  # the input is empty again and the message is elsewhere
                break
            except AssertionError:
                continue
        reply = None
        for _ in range(150):  # the reply is stored as it streams, and marked complete at the end
            rows = messages(stchat_home)
            if len(rows) == 2 and rows[1][2] == "complete":
                reply = rows[1][1]
                break
            time.sleep(0.2)
        assert rows[0] == ("user", "hello from tmux", "complete") and reply
        screen = screen_until(tmux, lambda s: re.search(r"gen \d+\.\d t/s", s) and
                              re.search(r"experts \d+% hit", s) and re.search(r"mem \d+ MiB", s))
        assert "hello from tmux" in screen                 # the conversation, titled by the message
    finally:
        tmux("kill-server")


def messages(home) -> list[tuple]:
    db = sqlite3.connect(home / "stchat.db")
    try:
        return db.execute("SELECT role, content, state FROM messages ORDER BY id").fetchall()
    finally:
        db.close()
