"""Errors raised by the rule helpers.

Invalid parameters raise ``ValueError`` before anything runs. The classes here are for what
goes wrong while running: a missing binary or library (says what to install), a kernel
that lacks a match (says which module), or a tool that refused a batch.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["KernelSupportError", "NetAdminRequiredError", "RulesError", "ToolMissingError"]


class RulesError(RuntimeError):
    """A rule command failed. ``argv``, ``returncode`` and ``stderr`` say which and how."""

    def __init__(self, message: str, *, argv: Sequence[str] | None = None,
                 returncode: int | None = None, stderr: str = "") -> None:
        super().__init__(message)
        self.argv = list(argv) if argv is not None else None
        self.returncode = returncode
        self.stderr = stderr


class ToolMissingError(RulesError):
    """A binary or shared library the backend needs is not installed.

    ``tool`` is its name, ``package`` the Debian package that provides it.
    """

    def __init__(self, tool: str, package: str, detail: str = "") -> None:
        msg = f"{tool} not found: apt-get install {package}"
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)
        self.tool = tool
        self.package = package


class KernelSupportError(RulesError):
    """The kernel rejected a rule because it lacks a module; ``modules`` names the likely ones."""

    def __init__(self, message: str, *, modules: Sequence[str] = (),
                 argv: Sequence[str] | None = None, returncode: int | None = None,
                 stderr: str = "") -> None:
        super().__init__(message, argv=argv, returncode=returncode, stderr=stderr)
        self.modules = list(modules)


class NetAdminRequiredError(RulesError):
    """This process lacks CAP_NET_ADMIN, which reading or changing the firewall needs.
    Checked before any firewall tool runs, so none prints an error of its own first."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} needs CAP_NET_ADMIN, which this process lacks (run as root "
                         "or grant the capability)")
