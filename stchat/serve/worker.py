"""One generation at a time, in a thread of its own, fed by a bounded queue.

Generation is CPU-bound and blocking and the runtime runs one sequence at a time, so a single
worker thread owns the model and its KV cache pool; the HTTP side (asyncio) submits `Job`s and
reads their events from an asyncio queue, filled through `call_soon_threadsafe`. At most
`max_waiting` jobs wait: beyond that `submit` raises an `ApiError` 503 with a `Retry-After`
estimated from recent jobs. A job cancelled while waiting leaves the queue; one cancelled while
running stops within a prefill chunk or a token. `stop()` (SIGTERM, Ctrl-C) refuses waiting
jobs and cancels the running one, so in-flight requests end at once. While no job waits, the
thread builds the experts not built yet, most used first (`Model.warm_experts`, as the app does
in idle time), so a first request does not wait for them; a job that arrives waits for one
build at most.
"""
from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from dataclasses import dataclass

from runtime import Finished, KVPool, TextDelta, generate, make_sampler

from .errors import ApiError
from .schema import GenerationRequest

PREFILL_CHUNK = 256  # prompt tokens prefilled between two looks at the cancel flag


@dataclass(frozen=True)
class Started:
    """The job left the queue: its prompt is `prompt_tokens` long, `cached_tokens` of it were reused."""

    prompt_tokens: int
    cached_tokens: int


@dataclass(frozen=True)
class Failed:
    error: ApiError


class Job:
    """One request's generation: its prompt text and settings in, events out to the event loop."""

    def __init__(self, text: str, request: GenerationRequest, loop: asyncio.AbstractEventLoop):
        self.text, self.request, self.loop = text, request, loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()

    def emit(self, event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass


class Worker:
    def __init__(self, model, max_waiting: int, pool: KVPool | None = None, usage=None):
        """`usage`: the model's saved expert usage record (`stchat.usage`), the order of idle builds."""
        self.model = model
        self.usage = usage
        self.pool = pool or KVPool(model)
        self.max_waiting = max_waiting
        self._waiting: deque[Job] = deque()
        self._running: Job | None = None
        self._stopping = False
        self._changed = threading.Condition()
        self._job_seconds = 1.0  # moving average of recent jobs, for Retry-After
        self._thread = threading.Thread(target=self._run, name="stchat-generation", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._changed:
            if self._stopping:
                raise ApiError(503, "the server is shutting down", code="shutting_down")
            if len(self._waiting) >= self.max_waiting:
                retry = max(1, math.ceil(self._job_seconds * (len(self._waiting) + 1)))
                raise ApiError(503, f"the server is busy: {len(self._waiting)} requests are waiting; "
                               f"retry in about {retry} s", code="queue_full", headers={"Retry-After": str(retry)})
            self._waiting.append(job)
            self._changed.notify_all()

    def cancel(self, job: Job) -> None:
        """Called when the client went away: stop the job, or drop it from the queue."""
        job.cancelled.set()
        with self._changed:
            if job in self._waiting:
                self._waiting.remove(job)
                job.emit(Failed(ApiError(499, "the client closed the request", code="client_closed_request")))

    def stop(self) -> None:
        """Refuse waiting jobs and cancel the running one; the thread ends once it has stopped."""
        with self._changed:
            self._stopping = True
            for job in self._waiting:
                job.emit(Failed(ApiError(503, "the server is shutting down", code="shutting_down")))
            self._waiting.clear()
            if self._running is not None:
                self._running.cancelled.set()
            self._changed.notify_all()

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def _next(self) -> Job | None:
        with self._changed:
            self._running = None
        self.model.warm_experts(self.usage, cancelled=lambda: bool(self._waiting) or self._stopping)
        with self._changed:
            while not self._waiting and not self._stopping:
                self._changed.wait()
            if self._stopping:
                return None
            self._running = self._waiting.popleft()
            return self._running

    def _run(self) -> None:
        while (job := self._next()) is not None:
            started = time.perf_counter()
            try:
                self._generate(job)
            except ApiError as error:
                job.emit(Failed(error))
            except Exception as error:  # a runtime failure ends this request, not the server
                message = " ".join(str(error).split()) or type(error).__name__
                job.emit(Failed(ApiError(500, f"generation failed: {message}", code="generation_failed")))
            self._job_seconds = 0.7 * self._job_seconds + 0.3 * (time.perf_counter() - started)

    def _generate(self, job: Job) -> None:
        request = job.request
        slot, ids = self.pool.acquire(job.text)
        cache = slot.cache
        if len(ids) >= cache.capacity:
            raise ApiError(400, f"the prompt is {len(ids)} tokens long but the context holds {cache.capacity} "
                           f"(the prompt and at least one token of reply must fit)", param="messages"
                           if request.messages is not None else "prompt", code="context_length_exceeded")
        # Keep what the cache shares with the prompt (a sliding window may not allow going back: 0),
        # but re-run at least the last prompt token, whose logits start the reply.
        reused = cache.trim(min(cache.common_prefix(ids), len(ids) - 1))
        job.emit(Started(len(ids), reused))
        if not self._prefill(ids[:-1], cache, job):
            job.emit(Finished("cancelled", 0, 0, 0.0, 0.0))
            return
        generated, reply = [], []
        for event in generate(self.model, cache, ids, make_sampler(request.sampling),
                              max_tokens=request.max_tokens or cache.capacity, stop_strings=request.stop,
                              cancel=job.cancelled.is_set, generated_ids=generated):
            if isinstance(event, TextDelta):
                reply.append(event.text)
            elif isinstance(event, Finished) and event.reason == "stop" and request.stop:
                generated = None  # the reply text lacks the stop string its tokens spell
            job.emit(event)
        if generated is not None:
            self.pool.record(slot, job.text + "".join(reply), ids + generated)
        else:
            self.pool.record(slot, "", [])

    def _prefill(self, ids: list[int], cache, job: Job) -> bool:
        """Prefill `ids` past what the cache holds, in chunks, looking at the cancel flag between
        chunks; False when cancelled."""
        for start in range(cache.length, len(ids), PREFILL_CHUNK):
            if job.cancelled.is_set():
                return False
            self.model.prefill(ids[start:start + PREFILL_CHUNK], cache)
        return not job.cancelled.is_set()
