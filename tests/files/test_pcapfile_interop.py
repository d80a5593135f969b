"""Our capture files against tcpdump, tshark and dpkt, on real kernel traffic (privileged).

In a throwaway namespace, the same UDP packets are logged to two NFLOG groups (OUTPUT and
INPUT rules for each). tcpdump captures group A (``-i nflog:A -w``); our capture core writes
group B as pcap, pcapng and LINKTYPE_RAW. Then tshark must decode both to the same packets,
tcpdump and dpkt must read ours, and our reader must turn tcpdump's file into the Packets that
live capture produced.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dpkt
import pytest

from ipsec_nflog import Capture, Packet
from ipsec_nflog.files.writer import CaptureReader, CaptureWriter, open_writer, read_capture
from tests.conftest import require_tool
from tests.support import nstools

pytestmark = pytest.mark.privileged

GROUP_A, GROUP_B = 41, 42
PORT = 9471
N = 40  # datagrams; each is logged twice per group (OUTPUT and INPUT)
FORMATS = ("pcap", "pcapng", "raw")


def add_rules(ns: str) -> None:
    for group, tag in ((GROUP_A, "a"), (GROUP_B, "b")):
        for chain in ("OUTPUT", "INPUT"):
            nstools.run(
                [
                    "iptables",
                    "-A",
                    chain,
                    "-p",
                    "udp",
                    "--dport",
                    str(PORT),
                    "-j",
                    "NFLOG",
                    "--nflog-group",
                    str(group),
                    "--nflog-prefix",
                    f"p{tag}-{chain.lower()}",
                ],
                ns=ns,
            )


def start_tcpdump(ns: str, path: Path) -> subprocess.Popen[bytes]:
    tcpdump = require_tool("tcpdump", "tcpdump")
    # -Z root: tcpdump otherwise drops to its own user, who cannot write in pytest's tmp dir
    proc = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            ns,
            tcpdump,
            "-i",
            f"nflog:{GROUP_A}",
            "-w",
            str(path),
            "-U",
            "-Z",
            "root",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 10
    seen = b""
    while b"listening on" not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            proc.kill()
            proc.wait()
            pytest.fail(f"tcpdump did not start: {seen.decode(errors='replace')}")
        if select.select([proc.stderr], [], [], left)[0]:
            seen += os.read(proc.stderr.fileno(), 4096)
    return proc


def stop_tcpdump(proc: subprocess.Popen[bytes]) -> str:
    proc.send_signal(signal.SIGINT)  # tcpdump flushes and closes the file on SIGINT
    try:
        _, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail("tcpdump did not stop on SIGINT")
    return err.decode(errors="replace")


def count_records(path: Path) -> int:
    try:
        return sum(1 for _ in read_capture(path))
    except (OSError, ValueError):
        return 0  # still being written


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One traffic run: tcpdump's file for group A, ours (3 formats) for group B, and the
    Packets live capture produced."""
    from tests.conftest import require_privileged

    require_privileged("pcap interop")
    tmp = tmp_path_factory.mktemp("interop")
    ns = nstools.unique_name("pcap")
    proc = None
    try:
        nstools.add_netns(ns)
        add_rules(ns)
        tcpdump_file = tmp / "tcpdump-a.pcap"
        proc = start_tcpdump(ns, tcpdump_file)
        live: list[Packet] = []
        paths = {fmt: tmp / f"ours-b.{fmt}" for fmt in FORMATS}
        with Capture(groups=[GROUP_B], netns=ns) as cap:
            writers: list[CaptureWriter] = [open_writer(paths[f], f) for f in FORMATS]
            sock = nstools.ns_socket(ns)
            try:
                for i in range(N):
                    sock.sendto(b"interop-%03d-" % i + bytes(range(i % 50)), ("127.0.0.1", PORT))
            finally:
                sock.close()
            deadline = time.monotonic() + 15
            while len(live) < 2 * N and time.monotonic() < deadline:
                batch = cap.read_batch(timeout=0.5)
                if batch is None:
                    continue
                live.extend(batch)  # copies, valid after the batch is released
                for w in writers:
                    w.write_records(batch.data, batch.count)
            stats = cap.stats()
            for w in writers:
                w.close(stats=stats)
        deadline = time.monotonic() + 10
        while count_records(tcpdump_file) < 2 * N and time.monotonic() < deadline:
            time.sleep(0.1)
        tcpdump_err = stop_tcpdump(proc)
        proc = None
        assert len(live) == 2 * N, f"live capture got {len(live)} of {2 * N} packets"
        yield {
            "live": live,
            "paths": paths,
            "tcpdump": tcpdump_file,
            "tcpdump_err": tcpdump_err,
            "stats": stats,
            "ns": ns,
        }
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        nstools.del_netns(ns)


def tshark_rows(path: Path, fields: list[str]) -> list[tuple[str, ...]]:
    tshark = require_tool("tshark", "tshark")
    cmd = [tshark, "-n", "-r", str(path), "-T", "fields", "-E", "separator=|"]
    for f in fields:
        cmd += ["-e", f]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    warnings = [x for x in r.stderr.splitlines() if x.strip() and "Running as user" not in x]
    assert warnings == [], f"tshark warned about {path}: {warnings}"
    return [tuple(line.split("|")) for line in r.stdout.splitlines()]


NFLOG_FIELDS = [
    "nflog.prefix",
    "nflog.hook",
    "nflog.ifindex_indev",
    "nflog.ifindex_outdev",
    "nflog.family",
    "frame.len",
    "frame.cap_len",
    "ip.src",
    "ip.dst",
    "udp.dstport",
    "data.data",
]


def same_as_group_a(row: tuple[str, ...], live: Packet) -> tuple[str, ...]:
    """A group-B tshark row as group A's would be: B's prefix renamed to A's, and the frame
    lengths without the NFULA_SEQ/NFULA_SEQ_GLOBAL TLVs (8 bytes each) that our capture
    asks the kernel for and tcpdump does not."""
    extra = 8 * ((live.seq is not None) + (live.seq_global is not None))
    frame_len, cap_len = (str(int(x) - extra) for x in row[5:7])
    return (row[0].replace("pb-", "pa-", 1), *row[1:5], frame_len, cap_len, *row[7:])


def test_tcpdump_captured_every_packet(captured: dict[str, Any]) -> None:
    assert f"{2 * N} packets captured" in captured["tcpdump_err"]
    assert count_records(captured["tcpdump"]) == 2 * N


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_tshark_decodes_ours_like_tcpdumps(captured: dict[str, Any], fmt: str) -> None:
    theirs = tshark_rows(captured["tcpdump"], NFLOG_FIELDS)
    ours = tshark_rows(captured["paths"][fmt], NFLOG_FIELDS)
    assert len(theirs) == len(ours) == 2 * N
    live: list[Packet] = captured["live"]
    assert all(p.seq is not None and p.seq_global is not None for p in live)
    assert [same_as_group_a(r, p) for r, p in zip(ours, live, strict=True)] == theirs
    hooks = [r[1] for r in theirs]
    assert hooks == ["3", "1"] * N  # OUTPUT then INPUT for each datagram
    assert {r[2] for r in theirs[1::2]} == {"1"} and {r[3] for r in theirs[::2]} == {"1"}  # lo
    assert [r[10] for r in theirs[::2]] == [
        (b"interop-%03d-" % i + bytes(range(i % 50))).hex() for i in range(N)
    ]
    if fmt == "pcapng":
        names = tshark_rows(captured["paths"][fmt], ["frame.interface_name", "frame.comment"])
        assert {n for n, _ in names} == {f"nflog:{GROUP_B}"}
        # OUTPUT packets carry no NFULA_TIMESTAMP: their records say so
        assert [c != "" for _, c in names] == [True, False] * N


def test_tshark_decodes_our_raw_file_like_the_payloads_of_tcpdumps(
    captured: dict[str, Any],
) -> None:
    fields = ["ip.src", "ip.dst", "ip.len", "udp.dstport", "data.data"]
    theirs = tshark_rows(captured["tcpdump"], fields)
    ours = tshark_rows(captured["paths"]["raw"], fields)
    assert ours == theirs and len(ours) == 2 * N
    frame_len = tshark_rows(captured["paths"]["raw"], ["frame.len"])
    assert [int(x[0]) for x in frame_len] == [int(r[2]) for r in theirs]  # the IP packet


@pytest.mark.parametrize("fmt", FORMATS)
def test_tcpdump_reads_ours_without_warnings(captured: dict[str, Any], fmt: str) -> None:
    tcpdump = require_tool("tcpdump", "tcpdump")
    path = captured["paths"][fmt]
    r = subprocess.run([tcpdump, "-n", "-r", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    kind = "RAW (Raw IP)" if fmt == "raw" else "NFLOG (Linux netfilter log messages)"
    assert r.stderr.strip() == f"reading from file {path}, link-type {kind}, snapshot length 262144"
    lines = r.stdout.splitlines()
    assert len(lines) == 2 * N
    assert all(f"127.0.0.1.{PORT}" in line and "UDP, length" in line for line in lines)
    theirs = subprocess.run(
        [tcpdump, "-n", "-r", str(captured["tcpdump"])], capture_output=True, text=True, timeout=60
    ).stdout.splitlines()
    strip_time = [line.split(" ", 1)[1] for line in lines]
    assert strip_time == [line.split(" ", 1)[1] for line in theirs]


@pytest.mark.parametrize("fmt", FORMATS)
def test_dpkt_reads_ours(captured: dict[str, Any], fmt: str) -> None:
    live: list[Packet] = captured["live"]
    reader_cls = dpkt.pcapng.Reader if fmt == "pcapng" else dpkt.pcap.Reader
    with open(captured["paths"][fmt], "rb") as f:
        r = reader_cls(f)
        got = [(ts, bytes(buf)) for ts, buf in r]
        assert r.datalink() == (101 if fmt == "raw" else 239)
    want = [p.payload for p in live] if fmt == "raw" else [p.raw for p in live]
    assert [buf for _, buf in got] == want
    assert [round(ts, 6) for ts, _ in got] == [round(p.timestamp, 6) for p in live]


def essentials(p: Any) -> tuple[Any, ...]:
    return (
        p.payload,
        p.prefix,
        p.hook,
        p.hook_name,
        p.indev,
        p.outdev,
        p.family,
        p.hw_protocol,
        p.timestamp_synthesized,
        p.kernel_timestamp is None,
    )


def test_our_reader_turns_tcpdumps_file_into_the_live_packets(captured: dict[str, Any]) -> None:
    live: list[Packet] = captured["live"]
    theirs = list(read_capture(captured["tcpdump"]))
    assert all(isinstance(p, Packet) for p in theirs)
    assert {p.group for p in theirs} == {GROUP_A} and {p.group for p in live} == {GROUP_B}
    renamed = [(p.payload, p.prefix.replace("pa-", "pb-", 1), *essentials(p)[2:])  # type: ignore[union-attr]
               for p in theirs]
    assert renamed == [essentials(p) for p in live]
    # Both rules logged the same skb; without an skb timestamp the kernel reads the clock
    # once per rule (skb_tstamp_cond), so the INPUT timestamps agree within microseconds.
    for a, b in zip(theirs[1::2], live[1::2], strict=True):
        assert a.kernel_timestamp is not None and b.kernel_timestamp is not None
        assert abs(a.kernel_timestamp - b.kernel_timestamp) < 1e-3
    assert {(p.indev, p.outdev) for p in theirs} == {(None, 1), (1, None)}


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_our_reader_gives_back_exactly_the_live_packets(captured: dict[str, Any], fmt: str) -> None:
    live: list[Packet] = captured["live"]
    got = list(read_capture(captured["paths"][fmt]))
    assert [p.as_dict() for p in got] == [p.as_dict() for p in live]
    assert [p.raw for p in got] == [p.raw for p in live]


def test_our_reader_on_our_raw_file(captured: dict[str, Any]) -> None:
    live: list[Packet] = captured["live"]
    got = list(read_capture(captured["paths"]["raw"]))
    assert [(p.payload, p.ts_sec, p.ts_usec) for p in got] == [
        (p.payload, p.ts_sec, p.ts_usec) for p in live
    ]
    assert {p.family for p in got} == {socket.AF_INET}


def test_pcapng_statistics_match_the_capture(captured: dict[str, Any]) -> None:
    stats = captured["stats"].groups[GROUP_B]
    with CaptureReader(captured["paths"]["pcapng"]) as r:
        assert len(list(r)) == 2 * N
    (iface,) = r.interfaces
    assert iface.name == f"nflog:{GROUP_B}"
    assert iface.statistics["ifrecv"] == stats.received_packets >= 2 * N
    assert iface.statistics["ifdrop"] == stats.seq_gap_packets + stats.ring_drop_packets == 0
