"""Looking at a running process without racing it: a test that must act (kill, interrupt) while
the process is in some state freezes it with SIGSTOP before each look, so what it saw is still
true when it acts. Waiting a fixed time instead flakes on a loaded machine."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def stop(pid: int, timeout: float = 120.0) -> None:
    """SIGSTOP `pid` and return once it is stopped (delivery is asynchronous). Not for a tmux
    pane's own process: tmux resumes it at once."""
    os.kill(pid, signal.SIGSTOP)
    if not Path("/proc/self/stat").exists():
        return  # no /proc to confirm with (not Linux): the signal is on its way
    deadline = time.monotonic() + timeout
    while (state := Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) not in "Tt":
        assert state not in "ZX", f"process {pid} exited"
        assert time.monotonic() < deadline, f"process {pid} does not stop"
        time.sleep(0.0005)


def frozen_until(pid: int, condition, timeout: float = 300.0, every: float = 0.05):
    """Look at `condition()` with `pid` stopped, every `every` seconds of its running; once it is
    true return its value and leave the process stopped (SIGCONT or SIGKILL it next). The
    timeout only bounds a hang."""
    deadline = time.monotonic() + timeout
    while True:
        stop(pid)
        try:
            value = condition()
        except BaseException:
            os.kill(pid, signal.SIGCONT)
            raise
        if value:
            return value
        os.kill(pid, signal.SIGCONT)
        assert time.monotonic() < deadline, "the condition was never seen"
        time.sleep(every)
