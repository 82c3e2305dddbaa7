"""Exit codes are part of stchat's interface: scripts branch on them, so they live in one enum.

The errors below carry their exit code, so a command raises them wherever it notices the problem
and `cli.main` turns them into a one-line message on stderr and the matching status.
"""
from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0               # the command did what was asked
    ERROR = 1            # runtime failure: corrupt bundle, conversion error, out of memory...
    USAGE = 2            # bad command line: missing prompt, invalid option value
    MODEL_NOT_FOUND = 3  # -m names nothing we can find, or no model is installed
    INTERRUPTED = 130    # Ctrl-C (128 + SIGINT), as shells report it


class StchatError(Exception):
    """An error meant for the user: `str(error)` is the whole one-line message."""

    code = ExitCode.ERROR


class UsageError(StchatError):
    """The command line cannot be acted on as given."""

    code = ExitCode.USAGE


class ModelNotFound(StchatError):
    """The requested model (or any model at all) is not available."""

    code = ExitCode.MODEL_NOT_FOUND
