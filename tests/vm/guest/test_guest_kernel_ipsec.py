"""Kernel IPsec (XFRM, ESP) inside the tier-1 VM: each preset against real ESP traffic.

Collected only inside the VM (tests/vm/conftest.py); the host reports each of these through
tests/tiers/test_kernel_ipsec.py. Topology and SAs: see conftest.py here.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ipsec_nflog import Capture
from ipsec_nflog.ipsec import keys
from tests.support import nstools
from tests.vm import nflog_rules
from tests.vm.guest.conftest import Topo

pytestmark = [pytest.mark.privileged, pytest.mark.kernel]

N = 3
PREROUTING, INPUT, FORWARD, OUTPUT, POSTROUTING = range(5)
XCHG = os.environ.get("IPNF_XCHG")


@dataclass(frozen=True)
class P:
    """What a test compares of a captured IPv4 packet."""

    hook: int | None
    proto: int
    src: str
    dst: str
    icmp: int = -1        # ICMP type (8 request, 0 reply)
    spi: int = 0          # ESP SPI
    seq: int = 0          # ESP sequence number / ICMP sequence number

    def key(self) -> tuple[Any, ...]:
        """Everything but the ESP sequence number (it keeps counting across tests)."""
        return (self.hook, self.proto, self.src, self.dst, self.icmp, self.spi,
                self.seq if self.proto == 1 else 0)


def describe(payload: bytes, hook: int | None) -> P:
    ihl = (payload[0] & 0x0F) * 4
    proto = payload[9]
    src, dst = socket.inet_ntoa(payload[12:16]), socket.inet_ntoa(payload[16:20])
    l4 = payload[ihl:]
    if proto == 1:
        seq = struct.unpack("!H", l4[6:8])[0] if l4[0] in (0, 8) else 0
        return P(hook, proto, src, dst, icmp=l4[0], seq=seq)
    if proto == 50:
        spi, seq = struct.unpack("!II", l4[:8])
        return P(hook, proto, src, dst, spi=spi, seq=seq)
    return P(hook, proto, src, dst)


def capture(ns: str, groups: Iterable[int], action: Callable[[], object]) -> dict[int, list[P]]:
    groups = list(groups)
    out: dict[int, list[P]] = {g: [] for g in groups}
    with Capture(groups=groups, netns=ns) as cap:
        action()
        cap.stop()
        for pkt in cap.packets(timeout=0):
            out[pkt.group].append(describe(bytes(pkt.payload), pkt.hook))  # type: ignore[arg-type]
        assert cap.stats().dropped == 0
    return out


def ping(t: Topo, dst: str, count: int = N) -> None:
    nstools.run(["ping", "-n", "-q", "-c", str(count), "-i", "0.05", "-W", "3", "-I", t.a_in,
                 dst], ns=t.a, timeout=60)


def echo(hook: int, src: str, dst: str, icmp: int, n: int = N) -> list[tuple[Any, ...]]:
    return [P(hook, 1, src, dst, icmp=icmp, seq=i).key() for i in range(1, n + 1)]


def keys_of(ps: list[P]) -> list[tuple[Any, ...]]:
    return [p.key() for p in ps]


def consecutive(ps: list[P]) -> bool:
    return all(ps[i + 1].seq == ps[i].seq + 1 for i in range(len(ps) - 1))


# ---- the presets -------------------------------------------------------------------------

def test_ike_esp_out_and_in_capture_the_esp_packets(topo: Topo) -> None:
    t = topo
    with nflog_rules.installed("ike-esp-out", group=1, netns=t.a), \
            nflog_rules.installed("ike-esp-in", group=2, netns=t.a):
        got = capture(t.a, [1, 2], lambda: ping(t, t.b_in))
    assert keys_of(got[1]) == [P(OUTPUT, 50, t.a_out, t.b_out, spi=0x1001).key()] * N
    assert keys_of(got[2]) == [P(PREROUTING, 50, t.b_out, t.a_out, spi=0x1002).key()] * N
    assert consecutive(got[1]) and consecutive(got[2])


def test_decap_captures_plaintext_both_ways_including_the_outbound_echo_request(
        topo: Topo) -> None:
    t = topo
    with nflog_rules.installed("decap", group=3, netns=t.a):
        got = capture(t.a, [3], lambda: ping(t, t.b_in))
    out = [p for p in got[3] if p.hook == POSTROUTING]
    inb = [p for p in got[3] if p.hook == PREROUTING]
    assert keys_of(out) == echo(POSTROUTING, t.a_in, t.b_in, 8)  # invisible to AF_PACKET
    assert keys_of(inb) == echo(PREROUTING, t.b_in, t.a_in, 0)
    assert len(got[3]) == 2 * N


def test_af_packet_on_the_veth_sees_no_outbound_plaintext(topo: Topo) -> None:
    """The article's anomaly, the reason this library exists: libpcap (AF_PACKET) on the
    interface sees outbound packets only encrypted."""
    t = topo
    eth_p_all = 0x0003
    s = nstools.ns_socket(t.a, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(eth_p_all))
    seen: list[tuple[int, P]] = []
    try:
        s.bind(("veth0", 0))
        s.setblocking(False)
        ping(t, t.b_in)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            r, _, _ = select.select([s], [], [], 0.1)
            if not r:
                continue
            frame, addr = s.recvfrom(65535)
            if struct.unpack("!H", frame[12:14])[0] != 0x0800:
                continue  # ARP
            seen.append((addr[2], describe(frame[14:], None)))
    finally:
        s.close()
    outgoing = [p for kind, p in seen if kind == socket.PACKET_OUTGOING]
    incoming = [p for kind, p in seen if kind != socket.PACKET_OUTGOING]
    assert [p.proto for p in outgoing] == [50] * N, outgoing   # ESP only
    assert not [p for p in outgoing if p.proto == 1]            # no plaintext echo request
    assert [p.spi for p in incoming if p.proto == 50] == [0x1002] * N
    # ...while inbound, the decapsulated reply is seen on the same interface as well
    assert [p.key() for p in incoming if p.proto == 1] == [
        P(None, 1, t.b_in, t.a_in, icmp=0, seq=i).key() for i in range(1, N + 1)]


def test_local_and_forward_split_terminated_from_forwarded_traffic(topo: Topo) -> None:
    """On gateway b: to b itself (reqid 1) is 'local', to c behind b (reqid 2) 'forward'."""
    t = topo
    with nflog_rules.installed("local", group=4, netns=t.b), \
            nflog_rules.installed("forward", group=5, netns=t.b):
        got = capture(t.b, [4, 5], lambda: (ping(t, t.b_in), ping(t, t.c_in)))  # type: ignore[func-returns-value]
    assert keys_of(got[4]) == echo(INPUT, t.a_in, t.b_in, 8)
    assert keys_of(got[5]) == echo(FORWARD, t.a_in, t.c_in, 8)


def test_outgoing_sees_locally_generated_packets_to_be_encapsulated(topo: Topo) -> None:
    t = topo
    with nflog_rules.installed("outgoing", group=6, netns=t.a), \
            nflog_rules.installed("outgoing", group=7, netns=t.b):
        with Capture(groups=[7], netns=t.b) as cap_b:
            got_a = capture(t.a, [6], lambda: (ping(t, t.b_in), ping(t, t.c_in)))  # type: ignore[func-returns-value]
            cap_b.stop()
            got_b = [describe(bytes(p.payload), p.hook)  # type: ignore[arg-type]
                     for p in cap_b.packets(timeout=0)]
    assert keys_of(got_a[6]) == (echo(OUTPUT, t.a_in, t.b_in, 8)
                                 + echo(OUTPUT, t.a_in, t.c_in, 8))
    # on b only its own replies: c's replies are forwarded, they never pass OUTPUT
    assert keys_of(got_b) == echo(OUTPUT, t.b_in, t.a_in, 0)


def test_reqid_and_spi_filters_select_one_sa_of_two(topo: Topo) -> None:
    t = topo
    with nflog_rules.installed("decap", group=8, netns=t.a, reqid=1), \
            nflog_rules.installed("decap", group=9, netns=t.a, reqid=2), \
            nflog_rules.installed("outgoing", group=10, netns=t.a, spi=0x2001):
        got = capture(t.a, [8, 9, 10], lambda: (ping(t, t.b_in), ping(t, t.c_in)))  # type: ignore[func-returns-value]

    def split(ps: list[P]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        return (keys_of([p for p in ps if p.hook == POSTROUTING]),
                keys_of([p for p in ps if p.hook == PREROUTING]))

    assert split(got[8]) == (echo(POSTROUTING, t.a_in, t.b_in, 8),
                             echo(PREROUTING, t.b_in, t.a_in, 0))
    assert split(got[9]) == (echo(POSTROUTING, t.a_in, t.c_in, 8),
                             echo(PREROUTING, t.c_in, t.a_in, 0))
    assert keys_of(got[10]) == echo(OUTPUT, t.a_in, t.c_in, 8)


@pytest.mark.parametrize("preset,ns_attr,groups_dst", [
    ("ike-esp-out", "a", "b_in"), ("ike-esp-in", "a", "b_in"), ("decap", "a", "c_in"),
    ("local", "b", "b_in"), ("forward", "b", "c_in"), ("outgoing", "a", "c_in"),
])
def test_iptables_and_nft_backends_give_the_same_packets(topo: Topo, preset: str,
                                                         ns_attr: str, groups_dst: str) -> None:
    t = topo
    ns = getattr(t, ns_attr)
    dst = getattr(t, groups_dst)
    results = {}
    for backend in ("iptables", "nft"):
        with nflog_rules.installed(preset, group=11, netns=ns, backend=backend):
            got = capture(ns, [11], lambda: ping(t, dst))
        results[backend] = keys_of(got[11])
    assert results["iptables"], preset
    assert results["iptables"] == results["nft"]


def test_library_presets_are_what_was_tested(topo: Topo) -> None:
    if nflog_rules.library_installed() is None:
        pytest.skip("ipsec_nflog.rules.installed not available: fallback rules were used")
    with nflog_rules.installed("decap", group=12, netns=topo.a) as how:
        assert how == "library"


# ---- keys from the kernel ------------------------------------------------------------------

def test_keys_from_live_xfrm_state(topo: Topo) -> None:
    sas = {s.spi: s for s in keys.read_xfrm_state(topo.a)}
    assert set(sas) == {0x1001, 0x1002, 0x2001, 0x2002}
    cbc, gcm = sas[0x1001], sas[0x2002]
    assert (cbc.src, cbc.dst, cbc.reqid, cbc.mode) == (topo.a_out, topo.b_out, 1, "tunnel")
    assert cbc.encryption == "AES-CBC [RFC3602]" and cbc.encryption_key == b"\x11" * 16
    assert cbc.integrity == "HMAC-SHA-256-128 [RFC4868]" and cbc.integrity_key == b"\x33" * 32
    assert gcm.encryption == "AES-GCM with 16 octet ICV [RFC4106]"
    assert gcm.encryption_key == b"\x66" * 20 and gcm.integrity == "NULL"
    if XCHG:
        text = subprocess.run(["ip", "-n", topo.a, "xfrm", "state"], capture_output=True,
                              text=True, check=True).stdout
        Path(XCHG, "keys_xfrm_state_static.txt").write_text(text)


def test_tshark_decrypts_our_kernel_esp_capture_with_xfrm_keys(topo: Topo,
                                                               tmp_path: Path) -> None:
    if not _which("tshark"):
        pytest.skip("needs tshark")
    from ipsec_nflog.files.writer import open_writer

    t = topo
    pcap = tmp_path / "kernel.pcap"
    with nflog_rules.installed("ike-esp-out", group=13, netns=t.a), \
            nflog_rules.installed("ike-esp-in", group=13, netns=t.a), \
            Capture(groups=[13], netns=t.a) as cap:
        ping(t, t.b_in)
        ping(t, t.c_in)
        cap.stop()
        with open_writer(pcap, "pcap") as w:
            cap.drain_into(w)
    sas = keys.read_xfrm_state(t.a)
    r = subprocess.run(["tshark", "-n", "-r", str(pcap), *keys.tshark_options(esp=sas),
                        "-T", "fields", "-E", "separator=|", "-e", "esp.spi", "-e",
                        "esp.icv_good", "-e", "icmp.type"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    rows = [line.split("|") for line in r.stdout.splitlines()]
    assert len(rows) == 4 * N, rows
    for spi, good, icmp in rows:
        assert good == "1" and icmp in ("0", "8"), (spi, good, icmp)


def _which(name: str) -> bool:
    import shutil

    return shutil.which(name) is not None
