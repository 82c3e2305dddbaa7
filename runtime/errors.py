"""Errors the runtime raises: one class per thing a user can fix, each with a one-line message.

The CLI maps them to exit codes and prints `str(error)`; nothing here formats for a terminal.
"""


class StchatRuntimeError(Exception):
    """Base of every error the runtime raises on purpose."""


class ConversionError(StchatRuntimeError):
    """A checkpoint could not be turned into a bundle (wrong arch, missing or misshapen tensor...)."""


class BundleError(StchatRuntimeError):
    """A bundle is missing, incomplete, corrupt or of an unknown format version."""


class BudgetTooSmall(StchatRuntimeError):
    """The memory budget cannot hold the always-resident part plus one layer's working set."""


class ContextOverflow(StchatRuntimeError):
    """A single turn does not fit in the context window. `needed` and `capacity` are tokens."""

    def __init__(self, message: str, needed: int = 0, capacity: int = 0):
        super().__init__(message)
        self.needed, self.capacity = needed, capacity


class InvalidContext(StchatRuntimeError, ValueError):
    """A context length outside what the model was trained for."""
