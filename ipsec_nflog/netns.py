"""Named network namespaces (``ip netns``) without changing the caller's namespace.

``setns(CLONE_NEWNET)`` only moves the calling thread, so work that must happen inside a
namespace runs in a short-lived helper thread. Pure Python (ctypes), no compiled core.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import re
import threading
from collections.abc import Callable
from typing import Optional, TypeVar

__all__ = ["NETNS_RUN_DIR", "netns_path", "open_netns", "run_in_netns", "validate_netns_name"]

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
_NAME_RE = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,254}$")

T = TypeVar("T")
_libc: Optional[ctypes.CDLL] = None


def _setns(fd: int, nstype: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def validate_netns_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name) or name in (".", ".."):
        raise ValueError(f"invalid network namespace name {name!r}")
    return name


def netns_path(name: str) -> str:
    return os.path.join(NETNS_RUN_DIR, validate_netns_name(name))


def open_netns(name: str) -> int:
    """An O_RDONLY fd for the named namespace; FileNotFoundError names it if missing."""
    path = netns_path(name)
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FileNotFoundError(
            errno.ENOENT, f"network namespace {name!r} does not exist (see 'ip netns list')", path
        ) from None


def run_in_netns(name: Optional[str], fn: Callable[[], T]) -> T:
    """Run ``fn`` with the calling *thread* in namespace ``name`` (None: here)."""
    if name is None:
        return fn()
    fd = open_netns(name)
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            _setns(fd, CLONE_NEWNET)
            result.append(fn())
        except BaseException as e:  # re-raised in the caller's thread
            error.append(e)

    try:
        t = threading.Thread(target=target, name=f"netns:{name}", daemon=True)
        t.start()
        t.join()
    finally:
        os.close(fd)
    if error:
        raise error[0]
    return result[0]
