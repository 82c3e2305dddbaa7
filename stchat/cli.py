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
from typer._click.exceptions import ClickException  # Typer's own copy of click

from stchat import __version__
from stchat.ask import ask_command
from stchat.bench import bench_command
from stchat.exitcodes import ExitCode, StchatError, UsageError
from stchat.manage import installed_names, list_command, rm_command, show_command
from stchat.paths import models_dir
from stchat.pull import pull_command
from stchat.serve.command import serve_command
from stchat.verify import verify_command

app = typer.Typer(
    name="stchat",
    help="Chat with SmallThinker mixture-of-experts models, offline, on the CPU.",
    no_args_is_help=False,  # no command: the chat app (stchat.tui)
    invoke_without_command=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help and usage errors: no boxes, no `<bool>` / `<str>` type tags
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _show_version(value: bool) -> None:
    if value:
        print(f"stchat {__version__}")
        raise typer.Exit()


def has_terminal() -> bool:
    """Whether the app can run here: it reads keys from stdin and draws on stdout."""
    return sys.stdin.isatty() and sys.stdout.isatty()


@app.callback()
def _root(
    ctx: typer.Context,
    model: Annotated[Optional[str], typer.Option(
        "-m", "--model", help="Open the chat app on this model (installed name, bundle directory or "
        ".gguf file) instead of the default.", autocompletion=installed_names)] = None,
    version: Annotated[Optional[bool], typer.Option(
        "-V", "--version", callback=_show_version, is_eager=True, help="Print the version and exit.")] = None,
) -> None:
    """Chat with SmallThinker mixture-of-experts models, offline, on the CPU.

    Without a command, opens the chat app in the terminal."""
    if ctx.invoked_subcommand is not None:
        if model is not None:
            raise UsageError(f"-m before a command is the chat app's; see the command's own options: "
                             f"stchat {ctx.invoked_subcommand} -h")
        return
    if not has_terminal():
        raise UsageError("the chat app needs a terminal (stdin and stdout); "
                         "for scripts use `stchat ask PROMPT`")
    if model is not None:
        from stchat.models import resolve

        resolved = resolve(model)  # unknown names fail here, with exit status 3
        model = resolved.name if resolved.path == models_dir() / resolved.name else str(resolved.path)
    from stchat.tui import run  # Textual is imported only here, so --help stays fast

    raise typer.Exit(run(model))


app.command("ask")(ask_command)
app.command("pull")(pull_command)
app.command("list")(list_command)
app.command("ls", hidden=True)(list_command)
app.command("show")(show_command)
app.command("rm")(rm_command)
app.command("bench")(bench_command)
app.command("verify")(verify_command)
app.command("serve")(serve_command)


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


def _plain_metavars(command):
    """Help names what options and arguments take (`--seed SEED`), without Typer's type tags
    (`<int>`, and `<bool>` on flags)."""
    for param in command.params:
        if param.param_type_name == "argument":
            param.display_type_rich = lambda ctx: None  # Typer has no setting for it; the name says it
        elif param.metavar is None:
            param.metavar = param.name.upper()
    for sub in getattr(command, "commands", {}).values():
        _plain_metavars(sub)
    return command


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and of `python -m stchat`; returns the exit status."""
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")  # model text must never crash the output
    try:
        command = _plain_metavars(typer.main.get_command(app))
        return _exit_status(command.main(args=list(argv) if argv is not None else None, prog_name="stchat",
                                         standalone_mode=False))
    except SystemExit as done:
        return _exit_status(done.code)
    except ClickException as error:  # a bad command line, found by Typer
        context = getattr(error, "ctx", None)
        hint = f" (see {context.command_path} -h)" if context is not None else ""
        _error(_describe(Exception(error.format_message())) + hint)
        return error.exit_code
    except typer.Abort:  # a question answered with end-of-file
        _error("aborted")
        return ExitCode.ERROR
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
