"""The `stchat serve` command line: options in, `server.serve` run; nothing heavy imported here."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from stchat.ask import context_length, memory_budget, parse_size
from stchat.exitcodes import ExitCode


def serve_command(
    model: Annotated[Optional[str], typer.Option(
        "-m", "--model", help="Installed model name, bundle directory or .gguf file "
        "(converted once). Default: $STCHAT_MODEL or the only installed model.")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (loopback unless told otherwise).")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port; 0 picks a free one.")] = 8080,
    api_key: Annotated[Optional[str], typer.Option(
        "--api-key", envvar="STCHAT_API_KEY", show_envvar=True,
        help="Require 'Authorization: Bearer KEY' on every request.")] = None,
    memory: Annotated[Optional[int], typer.Option(
        "--memory", metavar="SIZE", parser=parse_size,
        help="Memory budget of the server process, e.g. 2GiB, 512MB, 1.5G.")] = None,
    context: Annotated[Optional[int], typer.Option(
        "-c", "--context", min=1, metavar="TOKENS", help="Most tokens of prompt and reply together, "
        "per request. Default: $STCHAT_CONTEXT, else the model's trained length (or what the budget holds).")] = None,
    threads: Annotated[Optional[int], typer.Option(
        "-t", "--threads", min=1, help="CPU threads (default: the CPUs this process may use).")] = None,
    queue: Annotated[int, typer.Option(
        "--queue", min=0, help="Requests that may wait while one generates; more get a 503.")] = 8,
) -> None:
    """Serve one model over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions)."""
    from stchat.serve.server import ServeOptions, serve  # uvicorn, starlette, the runtime

    options = ServeOptions(model=model, host=host, port=port, api_key=api_key or None, memory=memory_budget(memory),
                           context=context_length(context), threads=threads, queue=queue)
    code = serve(options)
    if code != ExitCode.OK:
        raise typer.Exit(int(code))
