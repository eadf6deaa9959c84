"""The exit codes of `redline checkpoints` and the exception that ends a command with one (no torch here)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_DAMAGED = 1  # damage found
EXIT_USAGE = 2  # bad command line, unknown id, no store
EXIT_FAILED = 3  # the file system refused, or an export cannot be built


class CommandFailed(Exception):
    """Ends a command: the message for the operator and the exit code."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def usage_error(message: str) -> CommandFailed:
    return CommandFailed(message, EXIT_USAGE)
