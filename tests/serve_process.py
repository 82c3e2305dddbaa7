"""A real `stchat serve` process on 127.0.0.1 for the tests: started on a free port, read, stopped.

The server prints its URL on stderr once it accepts requests; a reader thread collects every
stderr line (the request log) so tests can wait for and inspect them.
"""
from __future__ import annotations

import functools
import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from test_cli_ask import ROOT, _env

@functools.lru_cache(maxsize=None)
def long_context_bundle() -> Path:
    """The tiny synthetic 4B-like model with a 4096-token context. Greedy, it writes all 4096
    tokens without an end of turn: seconds of work, surely still running when a test acts."""
    from dataclasses import replace

    from runtime import convert, synthetic

    root = Path(tempfile.mkdtemp(prefix="stchat-serve-"))
    spec = replace(synthetic.TINY_4B_LIKE, context_length=4096)
    return convert(synthetic.write_gguf(spec, root / "tiny-serve.gguf", seed=0), root / "tiny-serve")


START_TIMEOUT = 120  # seconds: imports and model load on a busy 2-core machine
URL = re.compile(r"at (http://\S+/v1)")


class ServerProcess:
    def __init__(self, bundle: Path, *args: str, **env: str):
        command = [sys.executable, "-m", "stchat", "serve", "-m", str(bundle), "--port", "0", "-t", "1", *args]
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=_env(**env), cwd=ROOT)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        line = self.wait_for_line(URL.search, START_TIMEOUT)
        assert line, f"the server did not start:\n{self.stderr}"
        self.url = URL.search(line).group(1)
        self.host, self.port = re.match(r"http://([^:/]+):(\d+)", self.url).groups()

    def _read(self) -> None:
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, matches, timeout: float = 60, start: int = 0) -> str | None:
        """The first stderr line from index `start` for which `matches(line)` is true."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = next((line for line in self.lines[start:] if matches(line)), None)
                if found or self.proc.poll() is not None or time.monotonic() > deadline:
                    return found
                self._changed.wait(0.2)

    def client(self, api_key: str = "unused", **options):
        import openai

        return openai.OpenAI(base_url=self.url, api_key=api_key, max_retries=0, timeout=120, **options)

    def request(self, method: str, path: str, body=None, headers: dict | None = None):
        """Raw HTTP: (status, headers, body bytes). `body` may be bytes or a JSON-able value."""
        connection = http.client.HTTPConnection(self.host, int(self.port), timeout=120)
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        connection.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        content = response.read()
        connection.close()
        return response.status, dict(response.getheaders()), content

    def send_only(self, path: str, body) -> socket.socket:
        """Send a POST and return the open socket without reading the answer (to hang up on it)."""
        data = json.dumps(body).encode()
        sock = socket.create_connection((self.host, int(self.port)), timeout=120)
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        return sock

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
