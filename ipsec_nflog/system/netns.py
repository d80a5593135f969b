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
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

__all__ = [
    "NETNS_RUN_DIR",
    "create_netns",
    "delete_netns",
    "netns_path",
    "ns_argv",
    "open_netns",
    "run_cmd",
    "run_in_netns",
    "validate_netns_name",
]

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
_NAME_RE = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,254}$")

T = TypeVar("T")
_libc: ctypes.CDLL | None = None


def _setns(fd: int, nstype: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def validate_netns_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name in (".", ".."):
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


def run_in_netns(name: str | None, fn: Callable[[], T]) -> T:
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


def ns_argv(netns: str | None, argv: Sequence[str]) -> list[str]:
    """argv that runs ``argv`` inside ``netns`` (unchanged when netns is None)."""
    return (["ip", "netns", "exec", validate_netns_name(netns)] if netns else []) + list(argv)


def run_cmd(argv: Sequence[str], *, netns: str | None = None, check: bool = True,
            input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a command (never through a shell), optionally inside a namespace."""
    return subprocess.run(ns_argv(netns, argv), check=check, capture_output=True, text=True,
                          input=input, timeout=timeout)


def create_netns(name: str) -> str:
    """``ip netns add NAME`` with loopback up."""
    run_cmd(["ip", "netns", "add", validate_netns_name(name)])
    try:
        run_cmd(["ip", "link", "set", "lo", "up"], netns=name)
    except BaseException:
        delete_netns(name)
        raise
    return name


def delete_netns(name: str) -> None:
    """Kill whatever still runs inside (``ip netns del`` does not), then delete. Never raises."""
    try:
        pids = run_cmd(["ip", "netns", "pids", name], check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        run_cmd(["ip", "netns", "del", name], check=False)
    except Exception:
        pass


def interface_index(netns: str | None, device: str) -> int:
    """The ifindex of ``device`` in the namespace (None: this one); ValueError naming both
    when there is none."""
    import socket

    try:
        return int(run_in_netns(netns, lambda: socket.if_nametoindex(device)))
    except OSError:
        where = f"network namespace {netns!r}" if netns else "this network namespace"
        raise ValueError(f"no interface {device!r} in {where}") from None


def interface_names(netns: str | None) -> dict[int, str]:
    """ifindex -> name of every interface in the namespace (None: this one); OSError when
    the namespace cannot be entered."""
    import socket

    return dict(run_in_netns(netns, socket.if_nameindex))
