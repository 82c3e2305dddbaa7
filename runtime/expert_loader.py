"""Background threads that build expert sessions ahead of use, fed by the pre-attention router.

The router of a layer runs before its attention, so the experts that layer needs are known
early: `request` queues the missing ones (bounded queue; duplicates of a pending load are
dropped) and `wait` blocks only for what is still in flight. A load has two stages run by two
threads, so one expert's bytes are read from disk while the previous one is being built
(ONNX Runtime prepacks it; both release the GIL): `read(key) -> data` is I/O, `build(key,
data)` is CPU and puts the expert in the cache. Without a `read` there is one stage. A load
not started yet can be `claim`ed by the compute thread, which then builds it itself: with a
layer's experts all missing, it and the loader build two at a time instead of one waiting.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Hashable

_STOP = object()


class ExpertLoader:
    def __init__(self, build: Callable[[Hashable, Any], None],
                 read: Callable[[Hashable], Any] | None = None, max_pending: int = 64):
        self._build, self._read = build, read
        self._requests: queue.Queue = queue.Queue(maxsize=max_pending)
        self._reads: queue.Queue = queue.Queue(maxsize=1)  # read, waiting to be built
        self._pending: dict[Hashable, threading.Event] = {}
        self._started: set = set()  # pending keys a stage has taken from the request queue
        self._claimed: set = set()  # queued keys the caller took over: skipped when dequeued
        self._lock = threading.Lock()
        self.errors: list[BaseException] = []
        stages = [(self._read_stage, "reader"), (self._build_stage, "builder")] if read else \
            [(self._build_stage, "builder")]
        self._threads = [threading.Thread(target=run, name=f"stchat-expert-{name}", daemon=True)
                         for run, name in stages]
        for thread in self._threads:
            thread.start()

    def request(self, key: Hashable) -> bool:
        """Queue `key` unless it is already pending or the queue is full; True if queued."""
        with self._lock:
            if key in self._pending:
                return False
            self._pending[key] = threading.Event()
        try:
            self._requests.put_nowait(key)
        except queue.Full:
            self._finish(key)
            return False
        return True

    def pending(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._pending

    def claim(self, key: Hashable) -> bool:
        """Take over a queued load not started yet (the caller builds it); True if taken."""
        with self._lock:
            if key not in self._pending or key in self._started:
                return False
            self._claimed.add(key)
            self._pending.pop(key).set()
            return True

    def wait(self, key: Hashable, timeout: float | None = None) -> bool:
        """Block until a pending load of `key` has finished; False if it was not pending."""
        with self._lock:
            event = self._pending.get(key)
        if event is None:
            return False
        return event.wait(timeout)

    def _finish(self, key: Hashable) -> None:
        with self._lock:
            self._started.discard(key)
            event = self._pending.pop(key, None)
        if event is not None:
            event.set()

    def _start(self, key: Hashable) -> bool:
        """A stage dequeued `key`: False if the caller claimed it meanwhile."""
        with self._lock:
            if key in self._claimed:
                self._claimed.discard(key)
                return False
            self._started.add(key)
            return True

    def _read_stage(self) -> None:
        while True:
            key = self._requests.get()
            if key is _STOP:
                self._reads.put((_STOP, None))
                return
            if not self._start(key):
                continue
            try:
                data = self._read(key)
            except BaseException as error:  # surfaced to the caller, which then builds itself
                self.errors.append(error)
                self._finish(key)
                continue
            self._reads.put((key, data))

    def _build_stage(self) -> None:
        source = self._reads if self._read else self._requests
        while True:
            item = source.get()
            key, data = item if self._read else (item, None)
            if key is _STOP:
                return
            if not self._read and not self._start(key):
                continue
            try:
                self._build(key, data)
            except BaseException as error:
                self.errors.append(error)
            finally:
                self._finish(key)

    def close(self) -> None:
        """Finish the loads in flight, drop the queued ones, stop the threads."""
        while True:
            try:
                key = self._requests.get_nowait()
            except queue.Empty:
                break
            self._finish(key)
        self._requests.put(_STOP)
        for thread in self._threads:
            thread.join()
