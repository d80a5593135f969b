"""How a command ends: its exit statuses and the user-facing error printed as one line."""

from __future__ import annotations

__all__ = ["EXIT_DROPS", "EXIT_FAIL", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "CliError"]

EXIT_OK = 0
EXIT_FAIL = 1  # a runtime failure
EXIT_USAGE = 2  # bad input: arguments, paths, users, rule options
EXIT_DROPS = 3  # capture --fail-on-drop, and something was lost
EXIT_INTERRUPTED = 130  # Ctrl-C in a command that keeps Python's SIGINT handling


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""
