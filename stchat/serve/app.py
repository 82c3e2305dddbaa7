"""The HTTP side of `stchat serve`: OpenAI's routes on Starlette, streamed as server-sent events.

Each generation request is parsed (`schema`), rendered with the model's chat template, and
handed to the `Worker` as a `Job`; the handler waits for the job to leave the queue (so a
prompt longer than the context is still a plain 400) and then answers with one JSON object or
an event stream of chunks ending in `data: [DONE]`. While a job waits or runs, the client's
disconnect cancels it: a watcher reads the ASGI receive channel, and once streaming has begun
Starlette's `StreamingResponse` does the same and closes our generator.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from runtime import BundleError, Finished, TextDelta, render_chat

from .errors import ApiError, bad_request
from .middleware import ApiKey, RequestLog, endpoint
from .schema import GenerationRequest, parse_chat, parse_completion
from .worker import Failed, Job, Started, Worker

FINISH = {"stop": "stop", "length": "length", "cancelled": "length"}  # cancelled: cut short at shutdown
CANCEL_WAIT_SECONDS = 30  # a cancelled generation stops within a token or a prefill chunk
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass
class Served:
    """What the routes serve: the model's public name(s) and the worker that runs it."""

    worker: Worker
    name: str
    aliases: tuple[str, ...] = ()
    created: int = 0

    def check_model(self, requested: str | None) -> None:
        if requested is not None and requested not in (self.name, *self.aliases):
            raise ApiError(404, f"the model '{requested}' does not exist: this server serves '{self.name}'",
                           param="model", code="model_not_found")


def _usage(started: Started, finished: Finished) -> dict:
    return {"prompt_tokens": started.prompt_tokens, "completion_tokens": finished.generated_tokens,
            "total_tokens": started.prompt_tokens + finished.generated_tokens,
            "prompt_tokens_details": {"cached_tokens": started.cached_tokens}}


class _Shape:
    """How one kind of completion looks on the wire: chat (`message` / `delta`) or text (`text`)."""

    def __init__(self, chat: bool, model: str):
        self.chat, self.model = chat, model
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.object = "chat.completion" if chat else "text_completion"
        self.created = int(time.time())

    def _envelope(self, choices: list, chunk: bool) -> dict:
        kind = self.object + (".chunk" if chunk and self.chat else "")
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices}

    def _choice(self, text: str | None, finish: str | None, chunk: bool, role: bool = False) -> dict:
        if not self.chat:
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        if chunk:
            delta = ({"role": "assistant"} if role else {}) | ({"content": text} if text is not None else {})
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                "finish_reason": finish}

    def whole(self, text: str, finish: str, usage: dict) -> dict:
        return self._envelope([self._choice(text, finish, chunk=False)], chunk=False) | {"usage": usage}

    def chunk(self, text: str | None, finish: str | None = None, role: bool = False) -> dict:
        return self._envelope([self._choice(text, finish, chunk=True, role=role)], chunk=True)

    def usage_chunk(self, usage: dict) -> dict:
        return self._envelope([], chunk=True) | {"usage": usage}


def _sse(payload: dict | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n"


async def _json_body(request: Request) -> dict:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise bad_request(f"the request body is not valid JSON: {error}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object", code="invalid_json")
    return body


async def _watch_disconnect(request: Request, worker: Worker, job: Job) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
    request.scope["stchat.log"]["disconnected"] = True
    worker.cancel(job)


async def _stop_watching(watcher: asyncio.Task) -> None:
    watcher.cancel()
    try:
        await watcher
    except asyncio.CancelledError:
        pass


class _EventStream(StreamingResponse):
    """A streamed reply that cancels its job however the response ends (also before the first
    chunk: Starlette may cancel the body before our generator ever starts)."""

    def __init__(self, worker: Worker, job: Job, started: Started, shape: _Shape, log: dict):
        super().__init__(_stream(job, started, shape, log), media_type="text/event-stream", headers=SSE_HEADERS)
        self.worker, self.job, self.log = worker, job, log

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if not self.log.get("ended"):  # the client went away: stop generating at once
                self.log["disconnected"] = True
                self.worker.cancel(self.job)
                await _until_stopped(self.job, self.log)


async def _until_stopped(job: Job, log: dict) -> None:
    """Wait for a cancelled job's last event, so the request's log line tells where it stopped."""
    try:
        async with asyncio.timeout(CANCEL_WAIT_SECONDS):
            while not isinstance(event := await job.events.get(), (Finished, Failed)):
                pass
    except (TimeoutError, asyncio.CancelledError):
        return
    if isinstance(event, Finished):
        log["completion"] = event.generated_tokens


async def _generate(request: Request, served: Served, text: str, parsed: GenerationRequest, shape: _Shape):
    job = Job(text, parsed, asyncio.get_running_loop())
    served.worker.submit(job)  # ApiError 503 when the queue is full
    log = request.scope["stchat.log"]
    watcher = asyncio.create_task(_watch_disconnect(request, served.worker, job))
    streaming = False
    try:
        first = await job.events.get()  # Started, or Failed (prompt too long, shutting down)
        if isinstance(first, Failed):
            raise first.error
        log.update(prompt=first.prompt_tokens, cached=first.cached_tokens)
        if parsed.stream:
            await _stop_watching(watcher)  # StreamingResponse watches from here on
            streaming = True
            return _EventStream(served.worker, job, first, shape, log)
        pieces = []
        while not isinstance(event := await job.events.get(), (Finished, Failed)):
            pieces.append(event.text)
        if isinstance(event, Failed):
            raise event.error
        log["completion"] = event.generated_tokens
        return JSONResponse(shape.whole("".join(pieces), FINISH[event.reason], _usage(first, event)))
    finally:
        await _stop_watching(watcher)
        if not streaming:
            served.worker.cancel(job)  # done already, or this handler failed: never leave it running


async def _stream(job: Job, started: Started, shape: _Shape, log: dict):
    if shape.chat:
        yield _sse(shape.chunk("", role=True))
    while True:
        event = await job.events.get()
        if isinstance(event, TextDelta):
            yield _sse(shape.chunk(event.text))
        elif isinstance(event, Finished):
            log["completion"] = event.generated_tokens
            yield _sse(shape.chunk(None if shape.chat else "", FINISH[event.reason]))
            if job.request.include_usage:
                yield _sse(shape.usage_chunk(_usage(started, event)))
            log["ended"] = True
            yield _sse("[DONE]")
            return
        elif isinstance(event, Failed):
            log["ended"] = True
            yield _sse(event.error.body)
            return


def build_app(served: Served, api_key: str | None = None) -> Starlette:
    """The ASGI application: routes, OpenAI-shaped errors, the API key check and the request log."""

    @endpoint
    async def chat_completions(request: Request):
        parsed = parse_chat(await _json_body(request))
        served.check_model(parsed.model)
        model = served.worker.model
        try:
            text = render_chat(model.chat_template, parsed.messages, add_generation_prompt=True)
        except BundleError as error:  # the template refused these messages (e.g. roles out of order)
            raise bad_request(str(error), param="messages", code="invalid_messages") from None
        return await _generate(request, served, text, parsed, _Shape(True, served.name))

    @endpoint
    async def completions(request: Request):
        parsed = parse_completion(await _json_body(request))
        served.check_model(parsed.model)
        return await _generate(request, served, parsed.prompt, parsed, _Shape(False, served.name))

    def _model_card() -> dict:
        return {"id": served.name, "object": "model", "created": served.created, "owned_by": "stchat"}

    @endpoint
    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [_model_card()]})

    @endpoint
    async def model(request: Request):
        served.check_model(request.path_params["model_id"])
        return JSONResponse(_model_card())

    @endpoint
    async def health(request: Request):
        return JSONResponse({"status": "ok", "model": served.name, "waiting": served.worker.waiting})

    async def http_error(request: Request, error: HTTPException):
        message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
        return ApiError(error.status_code, message.get(error.status_code, str(error.detail)),
                        code="not_found" if error.status_code == 404 else None).response()

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", model, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ]
    middleware = [Middleware(RequestLog)] + ([Middleware(ApiKey, key=api_key)] if api_key else [])
    return Starlette(routes=routes, middleware=middleware, exception_handlers={HTTPException: http_error})
