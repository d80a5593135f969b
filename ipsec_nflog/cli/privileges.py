"""``capture -Z USER``: the user looked up before anything is created, and the drop to it
once the capture is set up."""

from __future__ import annotations

import os
import pwd
from typing import TYPE_CHECKING

from ipsec_nflog.cli.errors import CliError
from ipsec_nflog.system.signals import die_with_parent

if TYPE_CHECKING:
    from ipsec_nflog.files.writer import CaptureWriter

__all__ = ["become", "drop_privileges", "lookup_user"]


def lookup_user(user: str) -> pwd.struct_passwd:
    """-Z USER's passwd entry, or one clear line (checked before anything is created)."""
    try:
        return pwd.getpwnam(user)
    except (KeyError, ValueError):  # ValueError: an embedded NUL
        raise CliError(f"-Z: no such user {user!r}") from None


def drop_privileges(pw: pwd.struct_passwd) -> None:
    """setgroups/setgid/setuid to ``pw``; from root this also clears every capability."""
    os.setgroups([])
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)
    if os.getuid() != pw.pw_uid or os.geteuid() != pw.pw_uid:
        raise CliError(f"-Z: could not become {pw.pw_name!r}")


def become(user: pwd.struct_passwd, writer: CaptureWriter | None, parent: int | None) -> None:
    """Hand the output file to ``user`` and become it; under a root parent (``parent``, its
    pid), die with it."""
    if writer is not None and writer.created:  # never chown what this run did not create
        os.fchown(writer.fileno(), user.pw_uid, user.pw_gid)
    drop_privileges(user)
    if parent is not None:
        die_with_parent(parent)  # setuid cleared the first setting
