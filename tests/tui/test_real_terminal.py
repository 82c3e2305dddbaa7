"""The app in a real terminal: tmux runs `stchat` on a tiny imported model; we type and read
the screen back, as a user would. CI installs tmux (`.ci/run`); elsewhere these skip without it."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from freeze import frozen_until
from model_fixtures import gguf_file

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
PROMPT_HINT = "Message (Enter sends"
LONG_PROMPT = "tell me a long story"  # greedy on the tiny model: no end-of-turn token for 4000 tokens


WAIT = 300.0  # seconds: only bounds a hang (a loaded 2-core machine is slow, never this slow)


class Terminal:
    """A private tmux server; each `start` opens a window running `stchat` in STCHAT_HOME."""

    def __init__(self, home):
        self.home, self.socket, self.window = home, f"stchat-test-{uuid.uuid4().hex[:8]}", None
        self.apps: list[int] = []

    def tmux(self, *args) -> subprocess.CompletedProcess:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True)

    def start(self, window: str) -> None:
        # stchat runs as the child of a shell, not as the pane's own process: tmux resumes a pane
        # process that stops, and the test freezes stchat with SIGSTOP while it looks
        command = f"env -u COLUMNS -u LINES STCHAT_HOME={shlex.quote(str(self.home))} TERM=xterm-256color " \
                  f"{shlex.quote(sys.executable)} -m stchat; exit"
        self.window = window
        assert self.tmux("new-session", "-d", "-s", window, "-x", "150", "-y", "32", command).returncode == 0
        shell = int(self.tmux("display-message", "-p", "-t", window, "#{pane_pid}").stdout)
        self.apps.append(wait_until(lambda: children(shell), "stchat to start")[0])

    @property
    def app(self) -> int:
        """The pid of the stchat process in the current window."""
        return self.apps[-1]

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", self.window).stdout

    def until(self, predicate) -> str:
        """Poll the screen until `predicate(screen)`."""
        deadline, text = time.monotonic() + WAIT, ""
        while time.monotonic() < deadline:
            text = self.screen()
            if predicate(text):
                return text
            time.sleep(0.2)
        raise AssertionError(f"screen never showed what was expected; last screen:\n{text}")

    def send_message(self, text: str) -> None:
        self.until(lambda s: PROMPT_HINT in s)
        self.tmux("send-keys", "-t", self.window, "-l", text)
        self.until(lambda s: text in s and PROMPT_HINT not in s)

        def sent():  # Enter is refused (text kept) until the model has loaded
            self.tmux("send-keys", "-t", self.window, "Enter")
            time.sleep(0.2)
            return len(messages(self.home)) >= 1  # the message is saved before its reply starts

        wait_until(sent, "the message to be sent")

    def close(self) -> None:
        for pid in self.apps:  # SIGKILL also ends a stopped process, which a hang-up would not
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.tmux("kill-server")


def children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def wait_until(condition, what: str):
    deadline = time.monotonic() + WAIT
    while not (value := condition()):
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)
    return value


@pytest.fixture
def terminal(stchat_home):
    terminal = Terminal(stchat_home)
    yield terminal
    terminal.close()


def pull(path) -> None:
    pulled = subprocess.run([sys.executable, "-m", "stchat", "pull", str(path)], capture_output=True, text=True)
    assert pulled.returncode == 0, pulled.stderr


def test_type_a_message_and_read_the_streamed_reply(stchat_home, tmp_path, terminal):
    model = tmp_path / "tiny.gguf"
    shutil.copy(gguf_file("4b"), model)
    pull(model)
    terminal.start("app")
    terminal.until(lambda s: PROMPT_HINT in s and "tiny" in s)
    terminal.send_message("hello from tmux")
    terminal.until(lambda s: PROMPT_HINT in s and "hello from tmux" in s)  # the input is empty again
    rows = wait_for_rows(stchat_home, lambda rows: len(rows) == 2 and rows[1][2] == "complete")
    assert rows[0] == ("user", "hello from tmux", "complete") and rows[1][1]
    screen = terminal.until(lambda s: re.search(r"gen \d+\.\d t/s", s) and
                            re.search(r"experts \d+% hit", s) and re.search(r"mem \d+ MiB", s))
    assert "hello from tmux" in screen                 # the conversation, titled by the message


def test_a_reply_killed_mid_stream_is_there_when_the_app_reopens(stchat_home, tmp_path, terminal):
    from runtime import synthetic

    # A 4096-token context, no token limit and a prompt the greedy reply never ends by itself:
    # it runs to the end of the context, ~4000 tokens (about 10 s), while we look every 0.05 s.
    long_spec = replace(synthetic.TINY_4B_LIKE, context_length=4096)
    pull(synthetic.write_gguf(long_spec, tmp_path / "tiny-long.gguf", seed=0))
    settings = {"temperature": 0, "max_tokens": 1_000_000, "threads": 1}
    (stchat_home / "config").mkdir(exist_ok=True)
    (stchat_home / "config" / "settings.json").write_text(json.dumps(settings))
    terminal.start("first")
    chrome = terminal.until(lambda s: PROMPT_HINT in s and "tiny-long" in s)  # the screen before any reply

    def shown(saved: str, screen: str) -> bool:
        """Some word of the saved text is on screen (the reply is model noise: its plain words,
        not the app's own, render as themselves)."""
        return any(word in screen and word not in chrome for word in re.findall(r"[A-Za-z]{5,}", saved))

    terminal.send_message(LONG_PROMPT)
    pid = terminal.app
    # Look only while the app is frozen (SIGSTOP), so what is seen is still true at the kill:
    # the reply is streaming, part of it is on disk and that part is on screen.
    def mid_reply():
        rows = messages(stchat_home)
        assert len(rows) < 2 or rows[1][2] == "streaming", f"the reply ended before any of it was saved: {rows}"
        return len(rows) == 2 and rows[1][1] and shown(rows[1][1], terminal.screen()) and rows

    rows = frozen_until(pid, mid_reply)
    saved = rows[1][1]
    os.kill(pid, signal.SIGKILL)
    terminal.start("reopened")
    screen = terminal.until(lambda s: "(stopped)" in s and shown(saved, s))
    assert LONG_PROMPT in screen
    # what is stored: what we saw, or more (a commit in the WAL our look did not see yet)
    [user, reply] = messages(stchat_home)
    assert user == ("user", LONG_PROMPT, "complete") and reply[2] == "stopped" and reply[1].startswith(saved)
    saved = reply[1]
    # and it is the beginning of this very reply (each token is at least one byte of text)
    tokens = str(len(saved.encode()) + 8)
    reference = subprocess.run([sys.executable, "-m", "stchat", "ask", "-m", "tiny-long", "--temp", "0",
                                "-t", "1", "-n", tokens, LONG_PROMPT], capture_output=True)
    assert reference.returncode == 0 and reference.stdout.decode().startswith(saved)


def wait_for_rows(home, predicate) -> list[tuple]:
    return wait_until(lambda: (rows := messages(home)) and predicate(rows) and rows, "the stored messages")


def messages(home) -> list[tuple]:
    if not (home / "stchat.db").exists():
        return []
    db = sqlite3.connect(home / "stchat.db")
    try:
        return db.execute("SELECT role, content, state FROM messages ORDER BY id").fetchall()
    except sqlite3.OperationalError:  # the app has not created its tables yet
        return []
    finally:
        db.close()
