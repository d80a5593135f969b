"""Exceptions, pure: they carry what failed and do no I/O. The choke point that turns the C
core's -errno results into them is ipsec_nflog.capture.errmap.raise_for_errno."""

from __future__ import annotations

__all__ = [
    "GroupBusyError",
    "LibraryMissingError",
    "NflogError",
    "NflogPermissionError",
]


class NflogError(OSError):
    """Base class for capture errors; ``.group`` and ``.operation`` say what failed."""

    group: int | None = None
    operation: str = ""


class NflogPermissionError(NflogError, PermissionError):
    """The kernel refused: binding NFLOG groups needs CAP_NET_ADMIN."""


class GroupBusyError(NflogError):
    """The group is already bound by another socket (tcpdump, ulogd, another capture)."""

    holder_pid: int | None = None
    holder_comm: str | None = None


class LibraryMissingError(ImportError):
    """The compiled core or the system libnetfilter_log is missing (says what to install)."""
