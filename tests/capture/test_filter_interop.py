"""Filter expressions against tcpdump's own: the same mixed traffic (IPv4, IPv6, UDP, TCP,
ICMP, ICMPv6, ESP, ESP-in-UDP, IKE) captured once unfiltered as LINKTYPE_RAW, then, for each
expression, what our live capture keeps and what our compiled filter keeps from the file must
equal what `tcpdump -r FILE EXPR` keeps, packet for packet."""

from __future__ import annotations

import socket
import struct
import subprocess
from pathlib import Path

import pytest

from ipsec_nflog import Capture
from ipsec_nflog.files import open_writer, read_capture
from tests.capture.test_capture import wait_received
from tests.conftest import require_tool
from tests.support import nstools

EXPRESSIONS = [
    "ip", "ip6", "udp", "tcp", "icmp", "icmp6", "esp", "ip6 and esp",
    "udp port 4500", "udp port 500", "udp port 500 or udp port 4500",
    "udp port 4500 and udp[8:4] = 0", "udp port 4500 and udp[8:4] != 0",
    "esp or udp port 4500", "host 127.0.0.1", "host ::1", "dst host 127.0.0.2",
    "src net 127.0.0.0/8", "portrange 5000-5010", "udp portrange 5003-5007",
    "tcp[tcpflags] & tcp-syn != 0", "tcp[tcpflags] & tcp-rst != 0",
    "greater 200", "less 60", "len >= 100 and len <= 300", "not udp",
    "not (udp or tcp)", "ip and not icmp", "icmp[icmptype] = icmp-echo",
    "icmp6 and ip6[40] = 128", "ip[8] = 64", "ip6 and udp", "udp and (port 5001 or port 9)",
    "proto 50", "ip proto 17 and not port 500",
]


PORTS = (5000, 5001, 5003, 5005, 5007, 5010, 5011, 500, 4500, 9)


def _send_mix(ns: str) -> int:
    """Loopback traffic of every kind; returns how many packets leave through OUTPUT."""
    sent = 0
    v4 = nstools.ns_socket(ns, socket.AF_INET)
    v6 = nstools.ns_socket(ns, socket.AF_INET6)
    esp4 = nstools.ns_socket(ns, socket.AF_INET, socket.SOCK_RAW, 50)
    esp6 = nstools.ns_socket(ns, socket.AF_INET6, socket.SOCK_RAW, 50)
    icmp4 = nstools.ns_socket(ns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    icmp6 = nstools.ns_socket(ns, socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    sinks = []  # listeners, so no port-unreachable errors (rate-limited, so not repeatable)
    for port in PORTS:
        for fam, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            s = nstools.ns_socket(ns, fam)
            if fam == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((addr, port))
            sinks.append(s)
    try:
        for i, port in enumerate(PORTS):
            for size in (10, 150, 400):
                v4.sendto(b"u" * size, ("127.0.0.1" if i % 2 else "127.0.0.2", port))
                v6.sendto(b"v" * size, ("::1", port))
                sent += 2
        for spi in (0, 0x1000, 0x2000):  # ESP in UDP 4500 (SPI 0 is IKE's non-ESP marker)
            v4.sendto(struct.pack("!II", spi, 1) + b"e" * 40, ("127.0.0.1", 4500))
            sent += 1
        for n in range(3):
            esp4.sendto(struct.pack("!II", 0x3000 + n, n) + b"E" * 60, ("127.0.0.1", 0))
            esp6.sendto(struct.pack("!II", 0x4000 + n, n) + b"E" * 60, ("::1", 0))
            sent += 2
        echo = struct.pack("!BBHHH", 8, 0, 0, 1, 1) + b"p" * 32
        csum = 0
        for j in range(0, len(echo), 2):
            csum += (echo[j] << 8) + echo[j + 1]
        csum = (csum >> 16) + (csum & 0xFFFF)
        echo = echo[:2] + struct.pack("!H", ~csum & 0xFFFF) + echo[4:]
        icmp4.sendto(echo, ("127.0.0.1", 0))  # + the echo reply
        icmp6.sendto(struct.pack("!BBHHH", 128, 0, 0, 1, 1) + b"q" * 24, ("::1", 0))  # + reply
        sent += 4
    finally:
        for s in (v4, v6, esp4, esp6, icmp4, icmp6, *sinks):
            s.close()
    for port in (5002, 5004):  # a SYN to a closed port, and its RST
        t = nstools.ns_socket(ns, socket.AF_INET, socket.SOCK_STREAM)
        t.settimeout(2)
        try:
            t.connect(("127.0.0.1", port))
        except OSError:
            pass
        finally:
            t.close()
        sent += 2
    return sent


def _tcpdump_keeps(raw: Path, expr: str) -> list[bytes | None]:
    out = raw.with_suffix(".tcpdump")
    subprocess.run(["tcpdump", "-n", "-r", str(raw), "-w", str(out), expr],
                   check=True, capture_output=True, timeout=60)
    return [p.payload for p in read_capture(out)]


@pytest.mark.privileged
def test_expressions_keep_what_tcpdump_keeps(netns: str, tmp_path: Path) -> None:
    require_tool("tcpdump", "tcpdump")
    from ipsec_nflog.capture.filter import Filter

    for tool in ("iptables", "ip6tables"):
        nstools.run([tool, "-A", "OUTPUT", "-j", "NFLOG", "--nflog-group", "70"], ns=netns)
    raw = tmp_path / "all.pcap"
    with Capture(groups=[70], netns=netns, qthreshold=1) as cap:
        n = _send_mix(netns)
        wait_received(cap, n)
        w = open_writer(str(raw), format="raw")
        cap.stop()
        cap.drain_into(w)
        w.close()
        assert cap.stats().dropped == 0
    everything = [p.payload for p in read_capture(raw)]
    assert len(everything) == n
    for expr in EXPRESSIONS:
        want = _tcpdump_keeps(raw, expr)
        f = Filter(expr)
        from_file = [p for p in everything if p is not None and f.matches(p)]
        assert from_file == want, f"{expr!r}: our filter over the file differs from tcpdump"
        with Capture(groups=[70], netns=netns, qthreshold=1, filter=expr) as cap:
            sent = _send_mix(netns)
            wait_received(cap, sent)
            cap.stop()
            live = [p.payload for p in cap.packets(timeout=0)]
            g = cap.stats().groups[70]
        assert g.received_packets == sent and g.dropped_packets == 0
        assert len(live) + g.filtered_packets == sent, expr
        assert _normalise(live) == _normalise(want), f"{expr!r}: live capture differs"
    assert len(EXPRESSIONS) >= 30


def _normalise(packets: list[bytes | None]) -> list[bytes]:
    """Packets of two runs differ only in the IP ID, checksums and TCP ports/sequence
    numbers the kernel picks; compare what the expressions are about."""
    import dpkt

    out = []
    for raw in packets:
        assert raw is not None
        ip = dpkt.ip.IP(raw) if raw[0] >> 4 == 4 else dpkt.ip6.IP6(raw)
        proto = ip.p if isinstance(ip, dpkt.ip.IP) else ip.nxt
        body = bytes(ip.data)
        if proto == socket.IPPROTO_TCP:  # the well-known port (the other is ephemeral), flags
            sport, dport = struct.unpack("!HH", body[:4])
            body = struct.pack("!H", min(sport, dport)) + body[13:14]
        elif proto in (socket.IPPROTO_ICMP, socket.IPPROTO_ICMPV6):
            body = body[:1]
        elif proto == socket.IPPROTO_UDP:
            body = body[2:4] + body[8:]
        out.append(bytes([proto]) + (ip.dst if proto != socket.IPPROTO_TCP else b"") + body)
    return out


@pytest.mark.parametrize("expr,needle", [
    ("udp port", "syntax error"),
    ("ip and ip6", "rejects all packets"),
    ("ether host 01:02:03:04:05:06", "ethernet addresses"),
    ("vlan", "VLAN"),
    ("   ", "empty filter"),
    ("host 10.0.0.1 or " * 700 + "host 10.0.0.2", "at most 4096"),
])
@pytest.mark.requires_core
def test_bad_expressions_fail_before_any_socket(expr: str, needle: str) -> None:
    import threading

    before = threading.active_count()
    with pytest.raises(ValueError, match=needle):
        Capture(groups=[5], filter=expr)  # no root needed: nothing opens before the check
    assert threading.active_count() == before


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    import sys

    return subprocess.run([sys.executable, "-m", "ipsec_nflog", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.privileged
def test_read_with_an_expression_keeps_what_tcpdump_keeps(netns: str, tmp_path: Path) -> None:
    """`ipsec-nflog read FILE EXPR` over our NFLOG file and over the same packets as a raw
    file (as tcpdump would) keeps what tcpdump -r keeps from the raw file."""
    require_tool("tcpdump", "tcpdump")
    for tool in ("iptables", "ip6tables"):
        nstools.run([tool, "-A", "OUTPUT", "-j", "NFLOG", "--nflog-group", "71"], ns=netns)
    nflog, raw = tmp_path / "all.pcap", tmp_path / "all-raw.pcap"
    with Capture(groups=[71], netns=netns, qthreshold=1) as cap:
        n = _send_mix(netns)
        wait_received(cap, n)
        cap.stop()
        writers = [open_writer(str(nflog)), open_writer(str(raw), format="raw")]
        for batch in cap.drain_batches():
            for w in writers:
                w.write_records(batch.data, batch.count)
        for w in writers:
            w.close()
    for expr in EXPRESSIONS:
        want = len(_tcpdump_keeps(raw, expr))
        for path in (nflog, raw):
            r = _cli("read", str(path), expr)
            assert r.returncode == 0, r.stderr
            assert len(r.stdout.splitlines()) == want, (expr, path.name, r.stdout[-500:])


@pytest.mark.privileged
def test_cli_capture_counts_what_it_filtered(netns: str, tmp_path: Path) -> None:
    import signal
    import sys
    import time

    from ipsec_nflog.system.procinfo import group_bindings

    nstools.run(["iptables", "-A", "OUTPUT", "-p", "udp", "-j", "NFLOG", "--nflog-group",
                 "72"], ns=netns)
    out = tmp_path / "kept.pcap"
    proc = subprocess.Popen([sys.executable, "-m", "ipsec_nflog", "capture", "--netns", netns,
                             "-g", "72", "-w", str(out), "udp", "port", "5001"],
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not any(b.group == 72 for b in group_bindings(netns)):
            assert proc.poll() is None and time.monotonic() < deadline, "never bound"
            time.sleep(0.05)
        s = nstools.ns_socket(netns, socket.AF_INET)
        try:
            for i in range(300):
                s.sendto(b"x" * 20, ("127.0.0.1", 5001 if i % 3 == 0 else 5002))
        finally:
            s.close()
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert len(list(read_capture(out))) == 100
    assert "received 300, delivered 100" in err and "filtered out 200 (not lost)" in err
    assert "WARNING" not in err


@pytest.mark.privileged
@pytest.mark.parametrize("bad", [
    ["udp", "port"], ["ip", "and", "ip6"], ["ether", "host", "1:2:3:4:5:6"], ["vlan"], [""],
    ["host 10.0.0.1 or " * 700 + "host 10.0.0.2"], ["-F", "/nonexistent/filter"],
])
def test_cli_bad_expressions_are_one_line_and_leave_nothing(netns: str, tmp_path: Path,
                                                            bad: list[str]) -> None:
    before = nstools.run(["nft", "list", "ruleset"], ns=netns).stdout
    out = tmp_path / "never.pcap"
    r = _cli("capture", "--netns", netns, "-g", "73", "--rules", "all", "-w", str(out), *bad)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.exists()
    assert nstools.run(["nft", "list", "ruleset"], ns=netns).stdout == before
    r = _cli("read", "/dev/null", *bad)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
