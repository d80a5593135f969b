"""The one choke point (psutil style) that turns the C core's -errno results into the
exceptions of ipsec_nflog.errors, naming the operation, the group and the namespace. EPERM
and EBUSY on a group are told apart by who holds it, read from /proc (system work, which is
why it lives here and not with the exception classes)."""

from __future__ import annotations

import errno
import os
from typing import NoReturn

from ipsec_nflog.errors import GroupBusyError, NflogError, NflogPermissionError

__all__ = ["raise_for_errno"]


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
    if code == errno.EPERM:  # a group nobody holds, or no group at all: the capability
        raise _make(NflogPermissionError, code,
                    f"cannot {operation}{where}: {text}; capturing NFLOG needs CAP_NET_ADMIN "
                    f"(run as root or grant the capability)", group, operation)
    raise _make(NflogError, code, f"cannot {operation}{where}: {text}", group, operation)
