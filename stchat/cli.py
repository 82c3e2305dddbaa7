"""The `stchat` command line: the Typer app, and `main()`, which turns failures into exit codes.

Every command module keeps its heavy imports (runtime, numpy, onnxruntime, textual) inside
the command body, so `stchat --help` and shell completion stay fast. `main()` is the single
place where exceptions become the one-line `stchat: error: ...` on stderr and an `ExitCode`;
commands just raise. Set `STCHAT_DEBUG=1` to get the full traceback instead.
"""
from __future__ import annotations

import os
import sys
from typing import Annotated, Optional, Sequence

import typer

from stchat import __version__
from stchat.ask import ask_command
from stchat.bench import bench_command
from stchat.exitcodes import ExitCode, StchatError
from stchat.manage import list_command, rm_command, show_command
from stchat.pull import pull_command
from stchat.verify import verify_command

app = typer.Typer(
    name="stchat",
    help="Chat with SmallThinker mixture-of-experts models, offline, on the CPU.",
    no_args_is_help=False,  # no command: the chat app (stchat.tui)
    invoke_without_command=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _show_version(value: bool) -> None:
    if value:
        print(f"stchat {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: Annotated[Optional[bool], typer.Option(
        "--version", callback=_show_version, is_eager=True, help="Print the version and exit.")] = None,
) -> None:
    """Chat with SmallThinker mixture-of-experts models, offline, on the CPU.

    Without a command, opens the chat app in the terminal."""
    if ctx.invoked_subcommand is None:
        from stchat.tui import run  # Textual is imported only here, so --help stays fast

        raise typer.Exit(run())


app.command("ask")(ask_command)
app.command("pull")(pull_command)
app.command("list")(list_command)
app.command("ls", hidden=True)(list_command)
app.command("show")(show_command)
app.command("rm")(rm_command)
app.command("bench")(bench_command)
app.command("verify")(verify_command)


def _error(message: str) -> None:
    print(f"stchat: error: {message}", file=sys.stderr, flush=True)


def _describe(error: BaseException) -> str:
    """One line: the error's own message, or its type when it has none."""
    text = " ".join(str(error).split())
    if isinstance(error, MemoryError):
        return f"out of memory{': ' + text if text else ''}"
    return text or type(error).__name__


def _exit_status(code) -> int:
    if code is None:
        return ExitCode.OK
    return code if isinstance(code, int) else ExitCode.ERROR


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and of `python -m stchat`; returns the exit status."""
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")  # model text must never crash the output
    try:
        app(args=list(argv) if argv is not None else None, prog_name="stchat")
    except SystemExit as done:  # Typer/click finish (and report their usage errors) this way
        return _exit_status(done.code)
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return ExitCode.ERROR
    except KeyboardInterrupt:
        print("stchat: interrupted", file=sys.stderr, flush=True)
        return ExitCode.INTERRUPTED
    except StchatError as error:
        if os.environ.get("STCHAT_DEBUG"):
            raise
        _error(_describe(error))
        return error.code
    except Exception as error:  # runtime.errors.StchatRuntimeError and anything unforeseen
        if os.environ.get("STCHAT_DEBUG"):
            raise
        _error(_describe(error))
        return ExitCode.ERROR
    return ExitCode.OK
