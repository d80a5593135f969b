"""Exceptions. ``raise_for_errno`` is the one choke point that turns the C core's -errno
results into exceptions naming the operation and the group (psutil style)."""

from __future__ import annotations

import errno
import os
from typing import NoReturn

__all__ = [
    "GroupBusyError",
    "LibraryMissingError",
    "NflogError",
    "NflogPermissionError",
    "raise_for_errno",
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


def _make(cls: type[NflogError], err: int, msg: str, group: int | None, op: str) -> NflogError:
    e = cls(err, msg)
    e.group = group
    e.operation = op
    return e


def raise_for_errno(
    err: int,
    operation: str,
    group: int | None = None,
    *,
    netns: str | None = None,
) -> NoReturn:
    """Raise the exception for a negative errno returned by the C core."""
    code = -err if err < 0 else err
    where = f" for NFLOG group {group}" if group is not None else ""
    if netns:
        where += f" in network namespace {netns!r}"
    text = os.strerror(code)
    if code == errno.ECHILD:
        raise _make(NflogError, code, f"cannot {operation}: this capture belongs to the "
                    f"process that opened it, and this is a forked child (open a new Capture "
                    f"here)", group, operation)
    if group is not None and code in (errno.EPERM, errno.EBUSY):
        # The kernel answers EPERM both for a missing capability and for a group that
        # another socket owns; the proc table tells them apart.
        from ipsec_nflog.system.procinfo import find_group_holder

        holder = find_group_holder(group, netns)
        if holder is not None or code == errno.EBUSY:
            pid, comm = holder.pid if holder else None, holder.comm if holder else None
            who = f" by {comm} (pid {pid})" if pid else (
                f" by netlink port {holder.portid}" if holder else "")
            e = _make(GroupBusyError, errno.EBUSY,
                      f"cannot {operation}{where}: the group is already bound{who}; stop it "
                      f"or pick another group", group, operation)
            assert isinstance(e, GroupBusyError)
            e.holder_pid, e.holder_comm = pid, comm
            raise e
        raise _make(NflogPermissionError, code,
                    f"cannot {operation}{where}: {text}; capturing NFLOG needs CAP_NET_ADMIN "
                    f"(run as root or grant the capability)", group, operation)
    raise _make(NflogError, code, f"cannot {operation}{where}: {text}", group, operation)
