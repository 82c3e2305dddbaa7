"""The server's generation thread between requests: idle time builds the experts."""
from __future__ import annotations

import time

import model_fixtures
import runtime
from stchat.serve.worker import Worker


def test_an_idle_server_builds_every_expert_before_its_first_request():
    # as the app does while its user types: a first request then waits for no session build
    # (the requests the server tests send at once still get answered: `test_serve.py`)
    model = runtime.load(model_fixtures.bundle("4b"))
    everything = model.config.num_layers * model.config.num_experts
    worker = Worker(model, max_waiting=2)
    assert len(model.experts.cache) == 0
    worker.start()
    deadline = time.monotonic() + 60
    while len(model.experts.cache) < everything and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.stop()
    worker.join(10)
    assert len(model.experts.cache) == everything
    model.close()
