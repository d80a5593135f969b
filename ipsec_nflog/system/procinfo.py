"""What the kernel says about NFLOG groups: /proc/net/netfilter/nfnetlink_log, the netlink
socket table and /proc/*/fd, read inside the right network namespace. Pure Python."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ipsec_nflog.system.netns import run_in_netns

__all__ = ["CAP_NET_ADMIN", "GroupBinding", "SocketOwner", "find_group_holder", "group_bindings",
           "has_capability"]

CAP_NET_ADMIN = 12  # linux/capability.h

NETLINK_NETFILTER = 12


@dataclass(frozen=True)
class GroupBinding:
    """One line of /proc/net/netfilter/nfnetlink_log."""

    group: int
    portid: int
    queue_len: int
    copy_mode: int
    copy_range: int
    flush_timeout_cs: int
    refcount: int
    pid: int | None = None
    comm: str | None = None

    @property
    def copy_mode_name(self) -> str:
        return {0: "none", 1: "meta", 2: "packet"}.get(self.copy_mode, str(self.copy_mode))


@dataclass(frozen=True)
class SocketOwner:
    portid: int
    pid: int | None
    comm: str | None


def _thread_proc() -> str:
    # /proc/thread-self/net is the calling thread's namespace (run_in_netns moves a thread).
    return "/proc/thread-self/net" if os.path.exists("/proc/thread-self/net") else "/proc/net"


def _read_bindings() -> list[tuple[int, ...]]:
    rows = []
    try:
        with open(f"{_thread_proc()}/netfilter/nfnetlink_log") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 7 and all(p.isdigit() for p in parts[:7]):
                    rows.append(tuple(int(p) for p in parts[:7]))
    except OSError:
        pass
    return rows


def _netlink_inodes() -> dict[int, int]:
    """portid -> socket inode for NETLINK_NETFILTER sockets."""
    out: dict[int, int] = {}
    try:
        with open(f"{_thread_proc()}/netlink") as f:
            next(f, None)
            for line in f:
                p = line.split()
                if len(p) >= 10 and p[1] == str(NETLINK_NETFILTER):
                    out[int(p[2])] = int(p[9])
    except (OSError, ValueError):
        pass
    return out


def _owners_of_inodes(inodes: set[int]) -> dict[int, tuple[int, str]]:
    """socket inode -> (pid, comm) by scanning /proc/*/fd."""
    want = {f"socket:[{i}]": i for i in inodes}
    found: dict[int, tuple[int, str]] = {}
    if not want:
        return found
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            inode = want.get(target)
            if inode is not None and inode not in found:
                try:
                    with open(f"/proc/{pid}/comm") as f:
                        comm = f.read().strip()
                except OSError:
                    comm = "?"
                found[inode] = (int(pid), comm)
        if len(found) == len(want):
            break
    return found


def group_bindings(netns: str | None = None, resolve_owners: bool = True) -> list[GroupBinding]:
    """Every bound NFLOG group in a namespace, with the owning process where it is found."""

    def collect() -> tuple[list[tuple[int, ...]], dict[int, int]]:
        return _read_bindings(), _netlink_inodes()

    rows, inodes = run_in_netns(netns, collect)
    owners = _owners_of_inodes({inodes[r[1]] for r in rows if r[1] in inodes}) \
        if resolve_owners else {}
    out = []
    for r in rows:
        owner = owners.get(inodes.get(r[1], -1))
        group, portid, qlen, mode, rng, timeout, refs = r[:7]
        out.append(GroupBinding(group, portid, qlen, mode, rng, timeout, refs,
                                pid=owner[0] if owner else None,
                                comm=owner[1] if owner else None))
    return out


def find_group_holder(group: int, netns: str | None = None) -> SocketOwner | None:
    """Who holds ``group``: its netlink port id, and pid/comm where /proc shows them."""
    try:
        for b in group_bindings(netns):
            if b.group == group:
                return SocketOwner(b.portid, b.pid, b.comm)
    except OSError:
        return None
    return None


def has_capability(cap: int) -> bool:
    """Whether ``cap`` is in this process's effective set (of its user namespace); True when
    /proc does not say, so the kernel has the last word."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> cap & 1)
    except OSError:
        pass
    return True
