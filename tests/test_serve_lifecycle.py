"""`stchat serve` as a process: API key, a full queue, stopping on a signal, a port in use.

Each test starts its own server (`ServerProcess`, a real process on 127.0.0.1) because each
needs other options or ends the process. Long greedy replies on the 4096-token tiny model
(`long_context_bundle`) keep the worker busy while a test acts; the tests wait on events
(a chunk arrived, a log line appeared), never on the clock.
"""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time

import openai
import pytest

from serve_process import ServerProcess, long_context_bundle
from test_cli_ask import ROOT, _env

HELLO = [{"role": "user", "content": "Hello"}]
LONG = 4000


def _long_stream(server: ServerProcess, **options):
    stream = server.client().chat.completions.create(model="tiny-serve", messages=HELLO, temperature=0,
                                                     max_tokens=LONG, stream=True, **options)
    first = next(iter(stream))  # the job has left the queue: it is generating now
    assert first.choices[0].delta.role == "assistant"
    return stream


def _eventually(condition, timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_api_key_is_required_on_every_request():
    server = ServerProcess(long_context_bundle(), STCHAT_API_KEY="s3cret")
    try:
        with pytest.raises(openai.AuthenticationError) as raised:
            server.client(api_key="wrong").models.list()
        assert raised.value.status_code == 401 and raised.value.body["code"] == "invalid_api_key"
        status, _, body = server.request("POST", "/v1/chat/completions", {"messages": HELLO})
        assert status == 401 and set(json.loads(body)["error"]) == {"message", "type", "param", "code"}
        status, _, _ = server.request("GET", "/health")
        assert status == 401
        reply = server.client(api_key="s3cret").chat.completions.create(model="tiny-serve", messages=HELLO,
                                                                        max_tokens=4)
        assert reply.usage.completion_tokens >= 1
    finally:
        assert server.stop() == 0


def test_a_full_queue_answers_503_with_retry_after_and_the_waiting_request_is_served():
    server = ServerProcess(long_context_bundle(), "--queue", "1")
    try:
        stream = _long_stream(server)  # running; the queue holds one more
        results = []

        def ask():
            results.append(server.request("POST", "/v1/chat/completions",
                                          {"messages": HELLO, "temperature": 0, "max_tokens": 4}))

        threads = [threading.Thread(target=ask) for _ in range(2)]
        for thread in threads:
            thread.start()
        refused = server.wait_for_line(lambda line: line.startswith("POST /v1/chat/completions 503"))
        assert refused, server.stderr
        stream.close()  # frees the worker: the request that waited runs now
        for thread in threads:
            thread.join(180)
        statuses = sorted(status for status, _, _ in results)
        assert statuses == [200, 503]
        _, headers, body = next(r for r in results if r[0] == 503)
        assert int(headers["retry-after"]) >= 1
        assert json.loads(body)["error"]["code"] == "queue_full"
    finally:
        assert server.stop() == 0


def test_a_request_that_leaves_the_queue_frees_its_place():
    server = ServerProcess(long_context_bundle(), "--queue", "1")
    try:
        stream = _long_stream(server)
        waiting = server.send_only("/v1/chat/completions", {"messages": HELLO, "max_tokens": 4})
        assert _eventually(lambda: json.loads(server.request("GET", "/health")[2])["waiting"] == 1)
        waiting.close()
        line = server.wait_for_line(lambda text: text.startswith("POST /v1/chat/completions 499"))
        assert line and "client disconnected" in line, server.stderr
        assert json.loads(server.request("GET", "/health")[2])["waiting"] == 0
        stream.close()
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_in_flight_replies_and_exits_0(sig):
    server = ServerProcess(long_context_bundle())
    stream = _long_stream(server, stream_options={"include_usage": True})
    server.proc.send_signal(sig)
    chunks = list(stream)  # the reply ends normally, cut short
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens < LONG
    assert server.proc.wait(60) == 0
    server.stop()
    assert "Traceback" not in server.stderr and "stchat: server stopped" in server.stderr


def test_a_port_in_use_is_a_one_line_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        done = subprocess.run([sys.executable, "-m", "stchat", "serve", "-m", str(long_context_bundle()),
                               "--port", port], capture_output=True, text=True, timeout=120, env=_env(), cwd=ROOT)
    assert done.returncode == 1
    assert done.stderr.startswith(f"stchat: error: cannot listen on 127.0.0.1:{port}") and done.stderr.count("\n") == 1
