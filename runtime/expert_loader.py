"""A background thread that builds expert sessions ahead of use, fed by the pre-attention router.

The router of a layer runs before its attention, so the experts that layer needs are known
early: `request` queues the missing ones (bounded queue; duplicates of a pending load are
dropped), the thread builds them while attention computes (ONNX Runtime releases the GIL
while it prepacks), and `wait` blocks only for what is still in flight.
"""
from __future__ import annotations

import queue
import threading
from typing import Callable, Hashable

_STOP = object()


class ExpertLoader:
    def __init__(self, load: Callable[[Hashable], None], max_pending: int = 64):
        self._load = load                      # builds the expert and puts it in the cache
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._pending: dict[Hashable, threading.Event] = {}
        self._lock = threading.Lock()
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name="stchat-expert-loader", daemon=True)
        self._thread.start()

    def request(self, key: Hashable) -> bool:
        """Queue `key` unless it is already pending or the queue is full; True if queued."""
        with self._lock:
            if key in self._pending:
                return False
            event = self._pending[key] = threading.Event()
        try:
            self._queue.put_nowait(key)
        except queue.Full:
            with self._lock:
                del self._pending[key]
            event.set()
            return False
        return True

    def pending(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._pending

    def wait(self, key: Hashable, timeout: float | None = None) -> bool:
        """Block until a pending load of `key` has finished; False if it was not pending."""
        with self._lock:
            event = self._pending.get(key)
        if event is None:
            return False
        return event.wait(timeout)

    def _run(self) -> None:
        while True:
            key = self._queue.get()
            if key is _STOP:
                return
            try:
                self._load(key)
            except BaseException as error:  # surfaced to the caller, which then builds itself
                self.errors.append(error)
            finally:
                with self._lock:
                    event = self._pending.pop(key, None)
                if event is not None:
                    event.set()

    def close(self) -> None:
        """Finish the load in flight, drop the queued ones, stop the thread."""
        while True:
            try:
                key = self._queue.get_nowait()
            except queue.Empty:
                break
            with self._lock:
                event = self._pending.pop(key, None)
            if event is not None:
                event.set()
        self._queue.put(_STOP)
        self._thread.join()
