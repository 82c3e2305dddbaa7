"""Running the app: load the model, listen, serve with uvicorn, and stop cleanly on a signal.

The socket is bound here, before uvicorn starts, so a port already in use is a one-line
`stchat: error` rather than a server log, and `--port 0` can print the port it got. uvicorn
normally re-raises the signal that stopped it once it has shut down (so the process dies of
SIGTERM, or exits 130 on Ctrl-C); a server stopped on purpose should exit 0, so `_Server`
records no signal. Its `handle_exit` also stops the worker at once: waiting requests get a 503,
the running generation is cut short and its response ends normally, so uvicorn's graceful
shutdown (which waits for open responses) is quick.
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass

import uvicorn

from stchat.exitcodes import ExitCode, StchatError, UsageError

GRACEFUL_SECONDS = 10  # the most uvicorn waits for open responses once the worker has stopped


@dataclass
class ServeOptions:
    model: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    memory: int | None = None
    context: int | None = None
    threads: int | None = None
    queue: int = 8


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, reuse_port=False)
    except OSError as error:
        raise StchatError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, worker, url: str, name: str):
        super().__init__(config)
        self.worker, self.url, self.name = worker, url, name

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started:
            print(f"stchat: serving {self.name} at {self.url} (Ctrl-C to stop)", file=sys.stderr, flush=True)

    def handle_exit(self, sig, frame) -> None:
        # A thread, not a direct call: the signal may have interrupted code holding the worker's lock.
        threading.Thread(target=self.worker.stop, name="stchat-stop", daemon=True).start()
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl-C: stop waiting for open responses
        self.should_exit = True


def serve(options: ServeOptions) -> ExitCode:
    import runtime
    from stchat.models import resolve
    from stchat.progress import Reporter

    from .app import Served, build_app
    from .worker import Worker

    resolved = resolve(options.model, Reporter(sys.stderr))
    sock = listen(options.host, options.port)
    try:
        model = runtime.load(resolved.path, memory_budget=options.memory, threads=options.threads,
                             context=options.context)
    except runtime.InvalidContext as error:
        raise UsageError(f"--context: {error}") from None
    from stchat import usage
    record = usage.load(resolved.path, (model.config.num_layers, model.config.num_experts))
    worker = Worker(model, max_waiting=options.queue, usage=record)
    aliases = tuple(a for a in (options.model, os.environ.get("STCHAT_MODEL")) if a and a != resolved.name)
    served = Served(worker, resolved.name, aliases, created=int(time.time()))
    host, port = sock.getsockname()[:2]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/v1"
    config = uvicorn.Config(build_app(served, options.api_key), http="h11", loop="asyncio", lifespan="off",
                            log_level="warning", access_log=False, timeout_graceful_shutdown=GRACEFUL_SECONDS)
    worker.start()
    try:
        _Server(config, worker, url, resolved.name).run(sockets=[sock])
    finally:
        worker.stop()
        worker.join(GRACEFUL_SECONDS)
        sock.close()
        usage.save(resolved.path, model.expert_usage())  # idle builds start with the most used
        model.close()
    print("stchat: server stopped", file=sys.stderr, flush=True)
    return ExitCode.OK
