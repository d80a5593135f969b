"""Test helpers: throwaway network namespaces, commands in them, sockets in them.

Everything here creates resources that the caller must release; the fixtures in
conftest.py wrap these in ``finally`` so a failing test leaves nothing behind.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
from collections.abc import Sequence

from ipsec_nflog.system.netns import create_netns, delete_netns, run_cmd, run_in_netns

_counter = itertools.count()


def unique_name(tag: str = "t") -> str:
    return f"ipnf-{tag}-{os.getpid()}-{next(_counter)}"


def run(argv: Sequence[str], *, ns: str | None = None, check: bool = True,
        input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return run_cmd(argv, netns=ns, check=check, input=input, timeout=timeout)


add_netns = create_netns
del_netns = delete_netns


def add_veth(ns_a: str, ns_b: str, addr_a: str, addr_b: str, *,
             name_a: str = "veth0", name_b: str = "veth0",
             addr6_a: str | None = None, addr6_b: str | None = None) -> None:
    """Connect two namespaces with a veth pair; addresses with prefix, e.g. 10.9.0.1/24."""
    tag = f"{os.getpid() % 100000}{next(_counter)}"
    tmp_a, tmp_b = f"va{tag}", f"vb{tag}"
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
