"""Test helpers: throwaway network namespaces, commands in them, sockets in them.

Everything here creates resources that the caller must release; the fixtures in
conftest.py wrap these in ``finally`` so a failing test leaves nothing behind.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
from collections.abc import Sequence
from typing import Optional

from ipsec_nflog.netns import run_in_netns

_counter = itertools.count()


def unique_name(tag: str = "t") -> str:
    return f"ipnf-{tag}-{os.getpid()}-{next(_counter)}"


def run(argv: Sequence[str], *, ns: Optional[str] = None, check: bool = True,
        input: Optional[str] = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full = (["ip", "netns", "exec", ns] if ns else []) + list(argv)
    return subprocess.run(full, check=check, capture_output=True, text=True, input=input,
                          timeout=timeout)


def add_netns(name: str) -> str:
    run(["ip", "netns", "add", name])
    run(["ip", "link", "set", "lo", "up"], ns=name)
    return name


def del_netns(name: str) -> None:
    """Kill what still runs in the namespace, then delete it. Never raises."""
    try:
        pids = run(["ip", "netns", "pids", name], check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        run(["ip", "netns", "del", name], check=False)
    except Exception:
        pass


def add_veth(ns_a: str, ns_b: str, addr_a: str, addr_b: str, *,
             name_a: str = "veth0", name_b: str = "veth0",
             addr6_a: Optional[str] = None, addr6_b: Optional[str] = None) -> None:
    """Connect two namespaces with a veth pair; addresses with prefix, e.g. 10.9.0.1/24."""
    tmp_a, tmp_b = f"va{os.getpid() % 100000}{next(_counter)}", f"vb{os.getpid() % 100000}{next(_counter)}"
    run(["ip", "link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b])
    run(["ip", "link", "set", tmp_a, "netns", ns_a, "name", name_a])
    run(["ip", "link", "set", tmp_b, "netns", ns_b, "name", name_b])
    for ns, dev, a4, a6 in ((ns_a, name_a, addr_a, addr6_a), (ns_b, name_b, addr_b, addr6_b)):
        run(["ip", "addr", "add", a4, "dev", dev], ns=ns)
        if a6:
            run(["ip", "addr", "add", a6, "dev", dev, "nodad"], ns=ns)
        run(["ip", "link", "set", dev, "up"], ns=ns)


def ns_socket(ns: str, family: int = socket.AF_INET,
              type: int = socket.SOCK_DGRAM, proto: int = 0) -> socket.socket:
    """A socket that lives in namespace ``ns`` (sockets keep the namespace they were made in)."""
    return run_in_netns(ns, lambda: socket.socket(family, type, proto))


def ifindex(ns: str, dev: str) -> int:
    return run_in_netns(ns, lambda: socket.if_nametoindex(dev))
