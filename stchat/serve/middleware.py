"""What wraps every request: the API key check, the one-line request log, and error containment.

`RequestLog` writes one line per request on stderr when its response has ended (so a stream's
line carries its token counts): method, path, status, tokens, seconds. Handlers add to the
per-request dict `scope["stchat.log"]`. `endpoint` turns an `ApiError` into its JSON response
and any other exception into a 500 with a one-line message, so no traceback ever reaches a
client (set STCHAT_DEBUG=1 to get it on stderr).
"""
from __future__ import annotations

import functools
import hmac
import os
import sys
import time
import traceback

from .errors import ApiError


class RequestLog:
    def __init__(self, app, out=None):
        self.app, self.out = app, out

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), [500]
        scope["stchat.log"] = note = {}

        async def send_noting_status(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            print(_line(scope, status[0], note, time.perf_counter() - started), file=self.out or sys.stderr,
                  flush=True)


def _line(scope, status: int, note: dict, seconds: float) -> str:
    parts = [scope["method"], scope["path"], str(status)]
    if "prompt" in note:
        tokens = f"{note['prompt']}+{note.get('completion', 0)} tokens"
        if note.get("cached"):
            tokens += f" ({note['cached']} cached)"
        parts.append(tokens)
    parts.append(f"{seconds:.3f}s")
    if note.get("disconnected"):
        parts.append("client disconnected")
    return " ".join(parts)


class ApiKey:
    """Every request must carry `Authorization: Bearer KEY`; else a 401 in OpenAI's shape."""

    def __init__(self, app, key: str):
        self.app, self.expected = app, f"Bearer {key}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                message = "missing API key" if not given else "incorrect API key"
                response = ApiError(401, f"{message}: send the server's key as 'Authorization: Bearer KEY'",
                                    code="invalid_api_key").response()
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


def endpoint(handler):
    """Wrap a route handler: ApiError -> its response; anything else -> a 500 without a traceback."""

    @functools.wraps(handler)
    async def wrapped(request):
        try:
            return await handler(request)
        except ApiError as error:
            return error.response()
        except Exception as error:
            message = " ".join(str(error).split()) or type(error).__name__
            if os.environ.get("STCHAT_DEBUG"):
                traceback.print_exc()
            print(f"stchat: error: {request.method} {request.url.path}: {message}", file=sys.stderr, flush=True)
            return ApiError(500, f"internal error: {message}", code="internal_error").response()

    return wrapped
