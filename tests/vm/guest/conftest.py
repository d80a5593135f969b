"""Fixtures of the in-VM kernel IPsec tests: a static-SA ESP topology between namespaces.

    a (10.0.1.1 on lo) ── veth 192.0.2.1 ══ ESP tunnel ══ 192.0.2.2 ── b ── veth 10.0.2.1
                                                                       │
                                                          c (10.0.2.2) ┘ behind gateway b

Two tunnel-mode SA pairs, both between 192.0.2.1 and 192.0.2.2 (static ``ip xfrm``):

- reqid 1, AES-CBC + HMAC-SHA256-128: 10.0.1.1 <-> 10.0.2.1 (b itself: "local" on b),
  SPIs a→b 0x1001, b→a 0x1002;
- reqid 2, AES-GCM (rfc4106, 128-bit ICV): 10.0.1.1 <-> 10.0.2.2 (c: "forward" on b),
  SPIs a→b 0x2001, b→a 0x2002.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support import nstools

KEY_CBC_AB = "0x" + "11" * 16
KEY_CBC_BA = "0x" + "22" * 16
AUTH_AB = "0x" + "33" * 32
AUTH_BA = "0x" + "44" * 32
KEY_GCM_AB = "0x" + "55" * 20
KEY_GCM_BA = "0x" + "66" * 20


@dataclass(frozen=True)
class Topo:
    a: str
    b: str
    c: str
    a_out: str = "192.0.2.1"
    b_out: str = "192.0.2.2"
    a_in: str = "10.0.1.1"
    b_in: str = "10.0.2.1"
    c_in: str = "10.0.2.2"


def _sa(ns: str, src: str, dst: str, spi: int, reqid: int, alg: list[str]) -> None:
    nstools.run(["ip", "xfrm", "state", "add", "src", src, "dst", dst, "proto", "esp",
                 "spi", hex(spi), "reqid", str(reqid), "mode", "tunnel", *alg], ns=ns)


def _pol(ns: str, src: str, dst: str, direction: str, tsrc: str, tdst: str,
         reqid: int) -> None:
    nstools.run(["ip", "xfrm", "policy", "add", "src", src, "dst", dst, "dir", direction,
                 "tmpl", "src", tsrc, "dst", tdst, "proto", "esp", "reqid", str(reqid),
                 "mode", "tunnel"], ns=ns)


@pytest.fixture(scope="session")
def topo() -> Iterator[Topo]:
    if os.environ.get("IPSEC_NFLOG_IN_VM") != "1":
        pytest.skip("runs inside the tier-1 VM only")
    t = Topo(nstools.unique_name("a"), nstools.unique_name("b"), nstools.unique_name("c"))
    made: list[str] = []
    try:
        for ns in (t.a, t.b, t.c):
            nstools.add_netns(ns)
            made.append(ns)
            nstools.run(["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
                         "net.ipv6.conf.default.disable_ipv6=1"], ns=ns)
        nstools.add_veth(t.a, t.b, f"{t.a_out}/24", f"{t.b_out}/24")
        nstools.add_veth(t.b, t.c, f"{t.b_in}/24", f"{t.c_in}/24", name_a="veth1",
                         name_b="veth0")
        nstools.run(["ip", "addr", "add", f"{t.a_in}/32", "dev", "lo"], ns=t.a)
        nstools.run(["ip", "route", "add", "10.0.2.0/24", "via", t.b_out], ns=t.a)
        nstools.run(["ip", "route", "add", f"{t.a_in}/32", "via", t.a_out], ns=t.b)
        nstools.run(["ip", "route", "add", "default", "via", t.b_in], ns=t.c)
        nstools.run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"], ns=t.b)
        cbc_ab = ["enc", "cbc(aes)", KEY_CBC_AB, "auth-trunc", "hmac(sha256)", AUTH_AB, "128"]
        cbc_ba = ["enc", "cbc(aes)", KEY_CBC_BA, "auth-trunc", "hmac(sha256)", AUTH_BA, "128"]
        gcm_ab = ["aead", "rfc4106(gcm(aes))", KEY_GCM_AB, "128"]
        gcm_ba = ["aead", "rfc4106(gcm(aes))", KEY_GCM_BA, "128"]
        for ns in (t.a, t.b):
            _sa(ns, t.a_out, t.b_out, 0x1001, 1, cbc_ab)
            _sa(ns, t.b_out, t.a_out, 0x1002, 1, cbc_ba)
            _sa(ns, t.a_out, t.b_out, 0x2001, 2, gcm_ab)
            _sa(ns, t.b_out, t.a_out, 0x2002, 2, gcm_ba)
        a1, b1, c1 = f"{t.a_in}/32", f"{t.b_in}/32", f"{t.c_in}/32"
        # a: both tunnels terminate here
        _pol(t.a, a1, b1, "out", t.a_out, t.b_out, 1)
        _pol(t.a, b1, a1, "in", t.b_out, t.a_out, 1)
        _pol(t.a, a1, c1, "out", t.a_out, t.b_out, 2)
        _pol(t.a, c1, a1, "in", t.b_out, t.a_out, 2)
        # b: reqid 1 ends at b (in), reqid 2 is forwarded to c (fwd)
        _pol(t.b, a1, b1, "in", t.a_out, t.b_out, 1)
        _pol(t.b, b1, a1, "out", t.b_out, t.a_out, 1)
        _pol(t.b, a1, c1, "fwd", t.a_out, t.b_out, 2)
        _pol(t.b, c1, a1, "out", t.b_out, t.a_out, 2)
        yield t
    finally:
        for ns in reversed(made):
            nstools.del_netns(ns)
