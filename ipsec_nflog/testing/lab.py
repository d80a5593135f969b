"""Throwaway network namespaces for tests: unique names, veth pairs with addresses, commands
and sockets inside them.

Everything made here is released by its owner: :class:`NetnsPair` is a context manager that
deletes both namespaces however its block ends (also when it fails half-way through being
made). The namespace primitives are :mod:`ipsec_nflog.system.netns`'s; this module only
combines them. Names carry this process's PID (``ipnf-<tag>-<pid>-<n>``), so a leak check
can tell this run's namespaces from those of other processes on the same machine.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
from collections.abc import Sequence
from types import TracebackType
from typing import TypeVar

from ipsec_nflog.system.netns import create_netns, delete_netns, run_cmd, run_in_netns

__all__ = ["NetnsPair", "add_veth", "ifindex", "netns_names", "ns_socket", "run",
           "unique_name"]

_counter = itertools.count()
_Pair = TypeVar("_Pair", bound="NetnsPair")


def unique_name(tag: str = "t") -> str:
    """``ipnf-<tag>-<pid>-<n>``: unique in this process, recognisable as ours."""
    return f"ipnf-{tag}-{os.getpid()}-{next(_counter)}"


def netns_names() -> set[str]:
    """The named namespaces that exist now (``ip netns list``'s names)."""
    try:
        return set(os.listdir("/run/netns"))
    except OSError:
        return set()


def run(argv: Sequence[str], *, ns: str | None = None, check: bool = True,
        input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (never through a shell) in namespace ``ns`` (None: here)."""
    return run_cmd(argv, netns=ns, check=check, input=input, timeout=timeout)


def add_veth(ns_a: str, ns_b: str, addr_a: str, addr_b: str, *,
             name_a: str = "veth0", name_b: str = "veth0",
             addr6_a: str | None = None, addr6_b: str | None = None) -> None:
    """Connect two namespaces with a veth pair; addresses with prefix, e.g. 10.9.0.1/24.
    IPv6 addresses are added with ``nodad``, so they are usable at once."""
    tag = f"{os.getpid() % 100000}{next(_counter)}"
    tmp_a, tmp_b = f"va{tag}"[:15], f"vb{tag}"[:15]
    run(["ip", "link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b])
    try:
        run(["ip", "link", "set", tmp_a, "netns", ns_a, "name", name_a])
        run(["ip", "link", "set", tmp_b, "netns", ns_b, "name", name_b])
    except BaseException:
        run(["ip", "link", "del", tmp_a], check=False)  # still here if a move failed
        raise
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


def _disable_ipv6(ns: str) -> None:
    # no IPv6 chatter (router solicitations, MLD, ND): exact packet counts
    run(["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
         "net.ipv6.conf.default.disable_ipv6=1"], ns=ns)


class NetnsPair:
    """Two fresh namespaces ``a`` and ``b`` joined by a veth pair (``veth0`` in each).

    Addresses: ``a4``/``b4`` (default 10.99.0.1 and .2, /24) and, unless ``ipv6=False``,
    ``a6``/``b6`` (fd99::1 and ::2, /64); with ``ipv6=False`` IPv6 is switched off in both
    namespaces, so no IPv6 chatter disturbs packet counts. Loopback is up in both.

    >>> with NetnsPair() as lab:                      # doctest: +SKIP
    ...     lab.run(lab.a, ["ping", "-c1", lab.b4])
    ...     s = lab.socket(lab.b)                     # a UDP socket inside b

    Both namespaces (and anything still running in them) are deleted on exit, also when the
    block or the setup itself fails.
    """

    def __init__(self, tags: tuple[str, str] = ("a", "b"), *,
                 a4: str = "10.99.0.1", b4: str = "10.99.0.2", prefix4: int = 24,
                 a6: str = "fd99::1", b6: str = "fd99::2", prefix6: int = 64,
                 ipv6: bool = True, device: str = "veth0") -> None:
        self.a, self.b = unique_name(tags[0]), unique_name(tags[1])
        self.a4, self.b4, self.prefix4 = a4, b4, prefix4
        self.ipv6 = ipv6
        self.a6: str | None = a6 if ipv6 else None
        self.b6: str | None = b6 if ipv6 else None
        self.prefix6 = prefix6
        self.device = device
        self.a_ifindex = self.b_ifindex = 0
        self._made: list[str] = []

    @property
    def namespaces(self) -> tuple[str, str]:
        return self.a, self.b

    def start(self: _Pair) -> _Pair:
        """Create the namespaces and the link; on any error, delete what was made."""
        if self._made:
            raise RuntimeError("this NetnsPair is already started")
        try:
            for ns in (self.a, self.b):
                create_netns(ns)
                self._made.append(ns)
                if not self.ipv6:
                    _disable_ipv6(ns)
            v6 = (f"{self.a6}/{self.prefix6}", f"{self.b6}/{self.prefix6}") if self.ipv6 \
                else (None, None)
            add_veth(self.a, self.b, f"{self.a4}/{self.prefix4}", f"{self.b4}/{self.prefix4}",
                     name_a=self.device, name_b=self.device, addr6_a=v6[0], addr6_b=v6[1])
            self.a_ifindex = ifindex(self.a, self.device)
            self.b_ifindex = ifindex(self.b, self.device)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Delete both namespaces (idempotent; never raises)."""
        made, self._made = self._made, []
        for ns in reversed(made):
            delete_netns(ns)

    def run(self, ns: str, argv: Sequence[str], *, check: bool = True,
            input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside ``ns`` (``self.a`` or ``self.b``)."""
        return run(argv, ns=ns, check=check, input=input, timeout=timeout)

    def socket(self, ns: str, family: int = socket.AF_INET, type: int = socket.SOCK_DGRAM,
               proto: int = 0) -> socket.socket:
        """A socket inside ``ns``; the caller closes it."""
        return ns_socket(ns, family, type, proto)

    def __enter__(self: _Pair) -> _Pair:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        v6 = f", {self.a6} / {self.b6}" if self.ipv6 else ""
        return f"<NetnsPair {self.a} ({self.a4}) <-> {self.b} ({self.b4}){v6}>"
