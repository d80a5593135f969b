"""Capture file writers and reader (pure Python, unprivileged except the tmpfs ENOSPC test)."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import stat
import struct
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import dpkt
import pytest

from ipsec_nflog.files.format import encode_block, encode_options
from ipsec_nflog.files.writer import (
    SYNTHESIZED_COMMENT,
    CaptureFileError,
    CaptureReader,
    CaptureWriteError,
    FilePacket,
    PcapngWriter,
    PcapWriter,
    RawWriter,
    open_writer,
    read_capture,
)
from ipsec_nflog.nflog.packet import NFULA, Packet, iter_records
from tests.conftest import require_tool

HOST = "<" if struct.pack("=H", 1) == b"\x01\x00" else ">"
OTHER = ">" if HOST == "<" else "<"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


# -- building records ---------------------------------------------------------------------
def ipv4_udp(
    payload: bytes, *, sport: int = 40000, dport: int = 9999, total: int | None = None
) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    length = 20 + len(udp) if total is None else total
    src, dst = socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2")
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, length, 1, 0, 64, 17, 0, src, dst) + udp


def ipv6_udp(payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", 1, 2, 8 + len(payload), 0) + payload
    addr = socket.inet_pton(socket.AF_INET6, "fd00::1")
    return struct.pack("!IHBB", 6 << 28, len(udp), 17, 64) + addr + addr + udp


def tlv(atype: int, value: bytes, order: str = HOST) -> bytes:
    raw = struct.pack(order + "HH", 4 + len(value), atype) + value
    return raw + b"\0" * (-len(raw) % 4)


def nflog_body(
    group: int = 5,
    payload: bytes | None = b"",
    *,
    prefix: str | None = "pa",
    hook: int = 3,
    family: int = socket.AF_INET,
    indev: int | None = None,
    outdev: int | None = 1,
    timestamp: tuple[int, int] | None = None,
    mark: int | None = None,
    order: str = HOST,
) -> bytes:
    """An NFLOG message body (nfgenmsg + TLVs) like the kernel builds it."""
    if payload == b"":
        payload = ipv4_udp(b"x" * 20)
    parts = [struct.pack("!BBH", family, 0, group)]
    ethertype = 0x86DD if family == socket.AF_INET6 else 0x0800
    parts.append(tlv(NFULA.PACKET_HDR, struct.pack("!HBx", ethertype, hook), order))
    if prefix is not None:
        parts.append(tlv(NFULA.PREFIX, prefix.encode() + b"\0", order))
    if indev is not None:
        parts.append(tlv(NFULA.IFINDEX_INDEV, struct.pack("!I", indev), order))
    if outdev is not None:
        parts.append(tlv(NFULA.IFINDEX_OUTDEV, struct.pack("!I", outdev), order))
    if mark is not None:
        parts.append(tlv(NFULA.MARK, struct.pack("!I", mark), order))
    if timestamp is not None:
        parts.append(tlv(NFULA.TIMESTAMP, struct.pack("!QQ", *timestamp), order))
    if payload is not None:
        parts.append(tlv(NFULA.PAYLOAD, payload, order))
    return b"".join(parts)


def record(
    body: bytes,
    ts: tuple[int, int] = (1_700_000_000, 0),
    orig_len: int | None = None,
    order: str = "=",
) -> bytes:
    """A pcap record (the ring format when order is host order)."""
    olen = len(body) if orig_len is None else orig_len
    return struct.pack(order + "IIII", ts[0], ts[1], len(body), olen) + body


def sample_records(n: int = 6, groups: Sequence[int] = (5,), size: int = 20) -> list[bytes]:
    """n varied records: alternating hooks, with/without kernel timestamp, v4/v6."""
    out = []
    for i in range(n):
        group = groups[i % len(groups)]
        ts = (1_700_000_000 + i, (i * 123_457) % 1_000_000)
        inbound = i % 2 == 1
        v6 = i % 3 == 2
        payload = (ipv6_udp if v6 else ipv4_udp)(bytes([65 + i % 26]) * (size + i))
        body = nflog_body(
            group,
            payload,
            family=socket.AF_INET6 if v6 else socket.AF_INET,
            prefix=f"p{group}-{i}",
            hook=1 if inbound else 3,
            indev=2 if inbound else None,
            outdev=None if inbound else 2,
            timestamp=ts if inbound else None,
            mark=i,
        )
        out.append(record(body, ts))
    return out


def expected(ring: bytes) -> list[dict[str, Any]]:
    return [p.as_dict() for p in iter_records(ring)]


def read_all(path: Any) -> list[Any]:
    return list(read_capture(path))


def pcap_header(
    order: str = HOST, magic: int = 0xA1B2C3D4, linktype: int = 239, snaplen: int = 262144
) -> bytes:
    return struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)


@dataclass
class FakeGroupStats:
    received_packets: int
    seq_gap_packets: int
    ring_drop_packets: int
    socket_drops: int
    enobufs_events: int


@dataclass
class FakeCaptureStats:
    groups: dict[int, FakeGroupStats]


class FakeClock:
    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path


# -- pcap writer ----------------------------------------------------------------------------
def test_pcap_writer_writes_ring_bytes_unchanged_after_a_native_header(tmp: Path) -> None:
    ring = b"".join(sample_records(5))
    path = tmp / "a.pcap"
    with open_writer(path) as w:
        assert isinstance(w, PcapWriter)
        w.write_records(ring, 5)
        w.write_records(memoryview(ring), 5)
    data = path.read_bytes()
    magic, major, minor, zone, sigfigs, snaplen, linktype = struct.unpack("=IHHiIII", data[:24])
    assert (magic, major, minor, zone, sigfigs, snaplen, linktype) == (
        0xA1B2C3D4,
        2,
        4,
        0,
        0,
        262144,
        239,
    )
    assert data[24:] == ring + ring
    assert (w.records_written, w.bytes_written) == (10, 24 + 2 * len(ring))


def test_pcap_writer_does_one_writev_per_batch_with_the_callers_buffer(tmp: Path) -> None:
    calls: list[list[bytes]] = []

    def writev(fd: int, bufs: Sequence[Any]) -> int:
        calls.append([bytes(b) for b in bufs])
        return os.writev(fd, bufs)

    ring = b"".join(sample_records(50))
    with open_writer(tmp / "a.pcap", writev=writev) as w:
        calls.clear()
        w.write_records(bytearray(ring), 50)
        assert calls == [[ring]]


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_round_trip_gives_the_live_capture_packets(tmp: Path, fmt: str) -> None:
    recs = sample_records(12, groups=(5, 6, 7))
    ring = b"".join(recs)
    path = tmp / f"x.{fmt}"
    with open_writer(path, fmt) as w:
        w.write_records(ring[: sum(map(len, recs[:5]))], 5)
        w.write_records(ring[sum(map(len, recs[:5])) :], 7)
    with CaptureReader(path) as r:
        got = list(r)
        assert r.format == fmt and r.byteorder == HOST and r.linktype == 239
    assert all(type(p) is Packet for p in got)
    assert [p.as_dict() for p in got] == expected(ring)
    assert [(p.ts_sec, p.ts_usec, p.orig_len, p.raw) for p in got] == [
        (p.ts_sec, p.ts_usec, p.orig_len, p.raw) for p in iter_records(ring)
    ]


def test_round_trip_keeps_orig_len_of_snaplen_cut_records(tmp: Path) -> None:
    cut = ipv4_udp(b"z" * 32, total=1400)[:60]  # kernel copy_range cut the payload
    body = nflog_body(5, cut)
    ring = record(body, orig_len=len(body) + 1400 - 60)
    for fmt in ("pcap", "pcapng"):
        with open_writer(tmp / f"cut.{fmt}", fmt) as w:
            w.write_records(ring, 1)
        (p,) = read_all(tmp / f"cut.{fmt}")
        assert (p.orig_len, p.payload) == (len(body) + 1340, cut)
    with open_writer(tmp / "cut.raw", "raw") as w:
        w.write_records(ring, 1)
    (p,) = read_all(tmp / "cut.raw")
    assert (p.orig_len, p.payload, len(p.raw)) == (1400, cut, 60)


def test_writer_rejects_a_count_that_does_not_match_the_buffer(tmp: Path) -> None:
    ring = b"".join(sample_records(3))
    for fmt in ("pcapng", "raw"):
        with open_writer(tmp / f"bad.{fmt}", fmt) as w:
            with pytest.raises(ValueError, match="more records than its count 2"):
                w.write_records(ring, 2)
            with pytest.raises(ValueError, match="malformed"):
                w.write_records(ring[:-1], 3)
            with pytest.raises(ValueError, match="holds 3 records, but count is 4"):
                w.write_records(ring, 4)
    with open_writer(tmp / "bad.pcap") as w:
        with pytest.raises(ValueError, match="cannot hold"):
            w.write_records(b"", 1)
        with pytest.raises(ValueError, match="cannot hold"):
            w.write_records(ring[:40], 3)
        w.write_records(b"", 0)
        assert w.records_written == 0


# -- pcapng writer --------------------------------------------------------------------------
def pcapng_blocks(data: bytes) -> list[tuple[int, bytes]]:
    """(type, body) of every block of a host-order pcapng file, checking lengths."""
    out, off = [], 0
    while off < len(data):
        btype, total = struct.unpack_from("=II", data, off)
        assert total % 4 == 0 and struct.unpack_from("=I", data, off + total - 4)[0] == total
        out.append((btype, data[off + 8 : off + total - 4]))
        off += total
    assert off == len(data)
    return out


def test_pcapng_layout_idbs_per_group_lazily_comments_and_interface_ids(tmp: Path) -> None:
    recs = sample_records(6, groups=(9, 4))
    path = tmp / "x.pcapng"
    with open_writer(path) as w:
        assert isinstance(w, PcapngWriter)
        w.write_records(recs[0], 1)  # group 9 only
        w.write_records(b"".join(recs[1:]), 5)  # group 4 appears
    blocks = pcapng_blocks(path.read_bytes())
    assert [b[0] for b in blocks] == [0x0A0D0D0A, 1, 6, 1, 6, 6, 6, 6, 6]
    shb = blocks[0][1]
    assert struct.unpack_from("=IHHq", shb) == (0x1A2B3C4D, 1, 0, -1)
    for (_, idb), group in zip([blocks[1], blocks[3]], (9, 4), strict=True):
        assert struct.unpack_from("=HHI", idb) == (239, 0, 262144)
        assert f"nflog:{group}".encode() in idb
    with CaptureReader(path) as r:
        pkts = list(r)
        assert [(i.name, i.linktype, i.snaplen, i.units) for i in r.interfaces] == [
            ("nflog:9", 239, 262144, 1_000_000),
            ("nflog:4", 239, 262144, 1_000_000),
        ]
    assert [p.as_dict() for p in pkts] == expected(b"".join(recs))
    epbs = [body for btype, body in blocks if btype == 6]
    assert [struct.unpack_from("=I", e)[0] for e in epbs] == [0, 1, 0, 1, 0, 1]
    comment = SYNTHESIZED_COMMENT.encode()
    # records 0, 2, 4 are OUTPUT without NFULA_TIMESTAMP; 1, 3, 5 carry it
    assert [comment in e for e in epbs] == [not p.attrs.get(NFULA.TIMESTAMP) for p in pkts]
    assert [comment in e for e in epbs] == [True, False] * 3


def test_pcapng_isbs_from_capture_stats_and_from_tuples(tmp: Path) -> None:
    recs = sample_records(4, groups=(5, 6))
    stats = FakeCaptureStats(
        {
            5: FakeGroupStats(10, 2, 3, 1, 4),
            6: FakeGroupStats(20, 0, 0, 0, 0),
            8: FakeGroupStats(0, 7, 0, 0, 1),  # no packets logged, drops still shown
        }
    )
    clock = FakeClock()
    with open_writer(tmp / "s.pcapng", clock=clock) as w:
        w.write_records(b"".join(recs), 4)
        clock.now += 5
        w.close(stats=stats)
    with CaptureReader(tmp / "s.pcapng") as r:
        assert len(list(r)) == 4
        by_name = {i.name: i.statistics for i in r.interfaces}
    start, end = int(clock.now - 5) * 1_000_000, int(clock.now) * 1_000_000
    assert by_name == {
        "nflog:5": dict(ifrecv=10, ifdrop=5, osdrop=2, starttime=start, endtime=end),
        "nflog:6": dict(ifrecv=20, ifdrop=0, osdrop=0, starttime=start, endtime=end),
        "nflog:8": dict(ifrecv=0, ifdrop=7, osdrop=7, starttime=start, endtime=end),
    }
    raw = (tmp / "s.pcapng").read_bytes()
    assert b"socket_drops=1 enobufs_events=4" in raw

    with open_writer(tmp / "t.pcapng") as w:
        w.write_records(recs[0], 1)
        w.close(stats={5: (100, 9)})
    with CaptureReader(tmp / "t.pcapng") as r:
        list(r)
        assert r.interfaces[0].statistics["ifrecv"] == 100
        assert r.interfaces[0].statistics["ifdrop"] == 9
        assert "osdrop" not in r.interfaces[0].statistics


def test_pcapng_bad_stats_raise_type_error_and_still_close(tmp: Path) -> None:
    w = open_writer(tmp / "b.pcapng")
    w.write_records(sample_records(1)[0], 1)
    with pytest.raises(TypeError, match="stats must map"):
        w.close(stats=42)
    assert w.closed
    w.close()
    assert len(read_all(tmp / "b.pcapng")) == 1


def test_pcapng_predeclared_groups_and_stats_source_in_rotated_files(tmp: Path) -> None:
    counter = iter(range(100))
    source = lambda: {5: (next(counter), 0)}  # noqa: E731
    recs = sample_records(4, groups=(5,))
    w = PcapngWriter(
        tmp / "g.pcapng", groups=[7, 5], stats_source=source, rotate_bytes=1, rotate_count=None
    )
    for rec in recs:
        w.write_records(rec, 1)
    w.close()
    assert len(w.files) == 4
    for i, name in enumerate(w.files):
        with CaptureReader(name) as r:
            assert len(list(r)) == 1
            assert [x.name for x in r.interfaces] == ["nflog:7", "nflog:5"]
            assert r.interfaces[1].statistics["ifrecv"] == i
            assert r.interfaces[0].statistics == {}


# -- raw writer -----------------------------------------------------------------------------
def test_raw_writer_keeps_payload_timestamp_and_skips_payloadless_records(tmp: Path) -> None:
    recs = sample_records(5)
    recs.insert(2, record(nflog_body(5, None)))
    with open_writer(tmp / "r.pcap", "raw") as w:
        assert isinstance(w, RawWriter)
        w.write_records(b"".join(recs), 6)
    assert (w.records_written, w.records_skipped) == (5, 1)
    live = [p for p in iter_records(b"".join(recs)) if p.payload is not None]
    with CaptureReader(tmp / "r.pcap") as r:
        got = list(r)
        assert r.linktype == 101
    assert all(isinstance(p, FilePacket) for p in got)
    assert [(p.payload, p.ts_sec, p.ts_usec, p.orig_len) for p in got] == [
        (p.payload, p.ts_sec, p.ts_usec, len(p.payload or b"")) for p in live
    ]
    assert [p.family for p in got] == [p.family for p in live]
    assert [p.family for p in got] == [2, 2, 10, 2, 2]
    assert all(p.group is None and p.prefix is None and p.hook is None for p in got)
    assert got[0].as_dict().keys() == live[0].as_dict().keys()


# -- reader: byte orders, precisions, pcapng variants ---------------------------------------
def test_reader_big_and_little_endian_pcap_with_swapped_tlv_headers(tmp: Path) -> None:
    for order in "<>":
        body = nflog_body(
            5,
            ipv4_udp(b"hi"),
            prefix="be",
            hook=1,
            indev=3,
            outdev=None,
            timestamp=(100, 5),
            mark=0x01020304,
            order=order,
        )
        path = tmp / f"o{order == '>'}.pcap"
        path.write_bytes(pcap_header(order) + record(body, (100, 5), order=order))
        with CaptureReader(path) as r:
            (p,) = list(r)
            assert r.byteorder == order
        assert (p.group, p.prefix, p.hook, p.indev, p.mark, p.payload) == (
            5,
            "be",
            1,
            3,
            0x01020304,
            ipv4_udp(b"hi"),
        )
        assert (p.ts_sec, p.ts_usec, p.kernel_timestamp) == (100, 5, 100.000005)


def test_reader_nanosecond_pcap_truncates_and_carries(tmp: Path) -> None:
    body = nflog_body(5)
    for order in "<>":
        recs = record(nflog_body(5, order=order), (10, 123_456_789), order=order)
        recs += record(nflog_body(5, order=order), (10, 1_999_999_999), order=order)
        path = tmp / "ns.pcap"
        path.write_bytes(pcap_header(order, 0xA1B23C4D) + recs)
        got = read_all(path)
        assert [(p.ts_sec, p.ts_usec) for p in got] == [(10, 123_456), (11, 999_999)]
        assert got[0].raw == body or order != HOST


def pcapng_file(order: str, blocks: list[tuple[int, bytes]]) -> bytes:
    shb = struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1)
    return encode_block(order, 0x0A0D0D0A, shb) + b"".join(
        encode_block(order, t, b) for t, b in blocks
    )


def idb(order: str, linktype: int = 239, snaplen: int = 0, **opts: bytes) -> tuple[int, bytes]:
    codes = {"name": 2, "tsresol": 9, "tsoffset": 14}
    options = encode_options(order, [(codes[k], v) for k, v in opts.items()])
    return 1, struct.pack(order + "HHI", linktype, 0, snaplen) + options


def epb(
    order: str, iface: int, ticks: int, data: bytes, orig_len: int | None = None
) -> tuple[int, bytes]:
    olen = len(data) if orig_len is None else orig_len
    head = struct.pack(order + "IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(data), olen)
    return 6, head + data + b"\0" * (-len(data) % 4)


def test_reader_pcapng_sections_resolutions_offsets_and_block_kinds(tmp: Path) -> None:
    b_le, b_be = nflog_body(1, order="<"), nflog_body(2, prefix="BE", order=">")
    frame = ipv4_udp(b"eth")
    eth = b"\x02" * 12 + b"\x08\x00" + frame
    section1 = pcapng_file(
        "<",
        [
            idb("<", name=b"nflog:1", tsresol=b"\x09"),  # nanoseconds
            idb("<", linktype=1, tsresol=bytes([0x80 | 20]), tsoffset=struct.pack("<q", 1000)),
            (0x00000BAD, b"custom block, skipped"),
            (4, b"\0" * 8),  # name resolution block, skipped
            epb("<", 0, 5_123_456_789, b_le),
            epb("<", 1, 3 << 20 | 1 << 19, eth),  # 3.5 s in 2^-20 units, + 1000 s offset
            (5, struct.pack("<III", 0, 0, 0) + encode_options("<", [(4, struct.pack("<Q", 77))])),
        ],
    )
    section2 = pcapng_file(
        ">",
        [
            idb(">", snaplen=64),
            (2, struct.pack(">HHIIII", 0, 0, 0, 7_000_000, len(b_be), len(b_be)) + b_be),  # old PB
            (3, struct.pack(">I", len(b_be)) + b_be),  # SPB: no timestamp
        ],
    )
    path = tmp / "multi.pcapng"
    path.write_bytes(section1 + section2)
    r = CaptureReader(path)
    assert (r.format, r.byteorder) == ("pcapng", "<")
    p1, p2 = next(r), next(r)
    assert isinstance(p1, Packet) and (p1.group, p1.ts_sec, p1.ts_usec) == (1, 5, 123_456)
    assert r.interfaces[0].name == "nflog:1"
    assert isinstance(p2, FilePacket) and p2.linktype == 1
    assert (p2.payload, p2.raw, p2.ts_sec, p2.ts_usec) == (frame, eth, 1003, 500_000)
    p3 = next(r)
    assert r.byteorder == ">" and len(r.interfaces) == 1  # new section, new interfaces
    assert (p3.group, p3.prefix, p3.ts_sec, p3.ts_usec) == (2, "BE", 7, 0)
    p4 = next(r)
    assert (p4.ts_sec, p4.prefix, len(p4.raw)) == (0, "BE", 64)  # SPB cut to snaplen 64
    with pytest.raises(StopIteration):
        next(r)
    r.close()


def test_reader_pcapng_statistics_for_unknown_interface_are_ignored(tmp: Path) -> None:
    isb = (5, struct.pack("<III", 3, 0, 0) + encode_options("<", [(4, struct.pack("<Q", 1))]))
    path = tmp / "isb.pcapng"
    path.write_bytes(pcapng_file("<", [idb("<"), isb, epb("<", 0, 0, nflog_body(order="<"))]))
    with CaptureReader(path) as r:
        assert len(list(r)) == 1
        assert r.interfaces[0].statistics == {}


@pytest.mark.parametrize(
    ("linktype", "frame", "payload"),
    [
        (101, ipv4_udp(b"r"), ipv4_udp(b"r")),
        (12, ipv6_udp(b"r"), ipv6_udp(b"r")),
        (14, ipv4_udp(b"r"), ipv4_udp(b"r")),
        (228, ipv4_udp(b"r"), ipv4_udp(b"r")),
        (1, b"\1" * 12 + b"\x86\xdd" + ipv6_udp(b"e"), ipv6_udp(b"e")),
        (1, b"\1" * 12 + b"\x81\x00\x00\x05\x08\x00" + ipv4_udp(b"v"), ipv4_udp(b"v")),
        (1, b"\1" * 12 + b"\x08\x06" + b"arp" * 10, b"\1" * 12 + b"\x08\x06" + b"arp" * 10),
        (113, b"\0" * 14 + b"\x08\x00" + ipv4_udp(b"s"), ipv4_udp(b"s")),
        (276, b"\x86\xdd" + b"\0" * 18 + ipv6_udp(b"s2"), ipv6_udp(b"s2")),
        (147, b"user-defined", b"user-defined"),
    ],
)
def test_reader_other_link_types_yield_payload_only_packets(
    tmp: Path, linktype: int, frame: bytes, payload: bytes
) -> None:
    path = tmp / "l.pcap"
    path.write_bytes(
        pcap_header(linktype=linktype) + record(frame, (3, 4), orig_len=len(frame) + 9)
    )
    (p,) = read_all(path)
    assert isinstance(p, FilePacket)
    assert (p.linktype, p.raw, p.payload, p.ts_sec, p.ts_usec, p.orig_len) == (
        linktype,
        frame,
        payload,
        3,
        4,
        len(frame) + 9,
    )
    assert p.group is None and p.prefix is None and not p.timestamp_synthesized
    if payload[:1] in (b"\x45", b"\x60"):
        assert p.ip is not None


def test_reader_checks_the_nested_vlan_attribute_in_both_byte_orders(tmp: Path) -> None:
    for order in "<>":
        vlan = tlv(1, struct.pack("!H", 0x8100), order) + tlv(2, struct.pack("!H", 42), order)
        good = nflog_body(5, order=order) + tlv(NFULA.VLAN | 0x8000, vlan, order)
        path = tmp / "vlan.pcap"
        path.write_bytes(pcap_header(order) + record(good, order=order))
        (p,) = read_all(path)
        assert p.vlan == (0x8100, 42)
        bad = nflog_body(5, order=order) + tlv(NFULA.VLAN, struct.pack(order + "HH", 99, 1), order)
        path.write_bytes(pcap_header(order) + record(good, order=order) + record(bad, order=order))
        got: list[object] = []
        with pytest.raises(CaptureFileError, match="malformed NFLOG record body") as info:
            got.extend(read_capture(path))
        assert len(got) == 1 and info.value.offset == 24 + 16 + len(good)


def test_reader_clips_the_last_tlv_of_a_snaplen_cut_record(tmp: Path) -> None:
    body = nflog_body(5, ipv4_udp(b"q" * 200), prefix="cut")
    for cut in (len(body) - 150, len(body) - 216, len(body) - 218):  # in payload, in TLV header
        path = tmp / "snap.pcap"
        path.write_bytes(pcap_header(snaplen=cut) + record(body[:cut], orig_len=len(body)))
        (p,) = read_all(path)
        assert p.prefix == "cut" and p.orig_len == len(body)
        full = ipv4_udp(b"q" * 200)
        assert p.payload is None or full.startswith(p.payload)
        assert (p.payload is None) == (cut < len(body) - 228 + 4)


def test_reader_accepts_file_objects_and_leaves_them_open(tmp: Path) -> None:
    ring = b"".join(sample_records(3))
    path = tmp / "f.pcap"
    path.write_bytes(pcap_header() + ring)
    with open(path, "rb") as f:
        r = CaptureReader(f)
        assert r.path == str(path)
        assert [p.as_dict() for p in r] == expected(ring)
        assert not f.closed
    rfd, wfd = os.pipe()
    os.write(wfd, pcap_header() + ring)
    os.close(wfd)
    with os.fdopen(rfd, "rb", buffering=0) as f:  # unbuffered pipe: short reads
        assert [p.as_dict() for p in CaptureReader(f)] == expected(ring)


def test_reader_close_stops_iteration_cleanly(tmp: Path) -> None:
    path = tmp / "c.pcap"
    path.write_bytes(pcap_header() + b"".join(sample_records(3)))
    r = CaptureReader(path)
    next(r)
    r.close()
    assert list(r) == []


# -- reader: corrupt and truncated files ----------------------------------------------------
def write_valid(path: Path, fmt: str, recs: list[bytes]) -> list[int]:
    """Write recs one batch each; returns the file offset where each record starts."""
    starts: list[int] = []
    with open_writer(path, fmt) as w:
        for rec in recs:
            starts.append(w.bytes_written + (64 if fmt == "pcapng" and not starts else 0))
            w.write_records(rec, 1)
    return starts


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_truncation_at_every_byte_yields_complete_records_then_names_the_offset(
    tmp: Path, fmt: str
) -> None:
    recs = sample_records(4, groups=(5, 6), size=3)
    path = tmp / f"t.{fmt}"
    write_valid(path, fmt, recs)
    data = path.read_bytes()
    full = expected(b"".join(recs))
    # where each record (and, for pcapng, each block) ends
    ends = []
    if fmt == "pcap":
        off = 24
        for rec in recs:
            off += len(rec)
            ends.append((off, True))
    else:
        off = 0
        for btype, body in pcapng_blocks(data):
            off += len(body) + 12
            ends.append((off, btype == 6))
    header_end = 24 if fmt == "pcap" else ends[0][0]
    for cut in range(len(data)):
        cut_path = tmp / "cut"
        cut_path.write_bytes(data[:cut])
        got: list[dict[str, Any]] = []
        with pytest.raises(CaptureFileError) if cut < header_end else _no_raise():
            reader = CaptureReader(cut_path)
        if cut < header_end:
            continue
        complete = [e for e, _ in ends if e <= cut]
        try:
            for p in reader:
                got.append(p.as_dict())
        except CaptureFileError as e:
            assert cut not in [e for e, _ in ends] and cut != header_end
            assert e.offset == max(complete, default=header_end)
            assert "truncated" in str(e) and f"byte offset {e.offset}" in str(e)
            assert str(cut_path) in str(e)
        else:
            assert cut in [e for e, _ in ends] or cut == header_end
        npackets = sum(1 for e, is_pkt in ends if e <= cut and is_pkt)
        assert got == full[:npackets]


class _no_raise:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> Literal[False]:
        return False


def corrupt_cases() -> Iterator[tuple[str, Callable[[bytearray], None], str, int]]:
    """(name, mutation of a 3-record pcap, expected message part, expected good records)."""
    lens = [len(r) for r in sample_records(3)]

    def at(off: int, fmt: str, value: int) -> Callable[[bytearray], None]:
        return lambda d: struct.pack_into(fmt, d, off, value)

    rec1, rec2 = 24 + lens[0], 24 + lens[0] + lens[1]
    yield "magic", at(0, "=I", 0x12345678), "not a pcap or pcapng file", 0
    yield "version", at(4, "=H", 1), "unsupported pcap version 1.4", 0
    yield "kuznetsov", at(0, "=I", 0xA1B2CD34), "Kuznetsov", 0
    yield "huge caplen", at(rec1 + 8, "=I", 0x7FFFFFFF), "exceeds the limit 262144", 1
    yield "bad tlv length", at(rec2 + 16 + 4, "=H", 3), "malformed NFLOG record body", 2
    yield "tlv past end", at(rec2 + 16 + 4, "=H", 999), "malformed NFLOG record body", 2
    yield "short body", at(24 + 8, "=I", 2), "malformed NFLOG record body", 0


@pytest.mark.parametrize(
    ("name", "mutate", "message", "good"),
    list(corrupt_cases()),
    ids=[c[0] for c in corrupt_cases()],
)
def test_corrupt_pcap_yields_good_records_then_a_clear_error(
    tmp: Path, name: str, mutate: Callable[[bytearray], None], message: str, good: int
) -> None:
    recs = sample_records(3)
    data = bytearray(pcap_header() + b"".join(recs))
    mutate(data)
    path = tmp / "c.pcap"
    path.write_bytes(bytes(data))
    got = []
    with pytest.raises(CaptureFileError, match=message) as info:
        for p in read_capture(path):
            got.append(p.as_dict())
    assert got == expected(b"".join(recs))[:good]
    assert isinstance(info.value, ValueError)
    if good:
        assert info.value.offset == 24 + sum(len(r) for r in recs[:good])


def test_corrupt_pcapng_blocks(tmp: Path) -> None:
    good = pcapng_file("<", [idb("<"), epb("<", 0, 1, nflog_body(order="<"))])
    cases = {
        "bad block length": good + struct.pack("<II", 6, 13) + b"\0" * 5,
        "does not match its trailer": good + struct.pack("<III", 0xBAD, 12, 16),
        "refers to interface 4": good + encode_block("<", *epb("<", 4, 0, b"x" * 8)),
        "does not fit its block": good
        + encode_block("<", 6, struct.pack("<IIIII", 0, 0, 0, 99, 99) + b"\0" * 8),
        "bad option": good
        + encode_block("<", 1, struct.pack("<HHI", 1, 0, 0) + struct.pack("<HH", 2, 99)),
        "bad section byte-order magic": good + struct.pack("<II", 0x0A0D0D0A, 28) + b"\xff" * 20,
        "packet block too short": good + encode_block("<", 6, b"\0" * 8),
        "packet caplen 262145 exceeds the limit 262144": good
        + encode_block("<", *epb("<", 0, 0, b"\0" * 262145)),
        "unsupported pcapng version": good
        + encode_block("<", 0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 2, 0, -1)),
    }
    for message, data in cases.items():
        path = tmp / "c.pcapng"
        path.write_bytes(data)
        got = []
        with pytest.raises(CaptureFileError, match=message) as info:
            for p in read_capture(path):
                got.append(p)
        assert len(got) == 1, message
        assert info.value.offset == len(good), message


def test_empty_and_tiny_files(tmp: Path) -> None:
    path = tmp / "e.pcap"
    for data, message in [
        (b"", "empty file"),
        (b"\xd4\xc3", "too short"),
        (pcap_header()[:10], "truncated pcap file header"),
    ]:
        path.write_bytes(data)
        with pytest.raises(CaptureFileError, match=message):
            CaptureReader(path)
    path.write_bytes(pcap_header())
    assert read_all(path) == []


# -- rotation -------------------------------------------------------------------------------
def all_packets(paths: Sequence[str]) -> list[dict[str, Any]]:
    return [p.as_dict() for name in paths for p in read_capture(name)]


@pytest.mark.parametrize("fmt", ["pcap", "pcapng", "raw"])
def test_size_rotation_never_exceeds_the_limit_and_loses_nothing(tmp: Path, fmt: str) -> None:
    recs = sample_records(40, groups=(5, 6))
    limit = 1000
    w = open_writer(tmp / "cap", fmt, rotate_bytes=limit)
    for i in range(0, 40, 8):  # batches of 8 records (~800-1100 bytes)
        w.write_records(b"".join(recs[i : i + 8]), 8)
    w.close()
    names = [str(tmp / "cap")] + [str(tmp / f"cap{i}") for i in range(1, len(w.files))]
    assert w.files == names and len(names) > 3
    assert all(os.path.getsize(n) <= limit for n in names)
    # a record would have fitted in the remaining room of every file but the last
    assert all(os.path.getsize(n) > limit - 200 for n in names[:-1])
    got = all_packets(names)
    if fmt == "raw":
        assert [g["payload"] for g in got] == [p.payload for p in iter_records(b"".join(recs))]
    else:
        assert got == expected(b"".join(recs))
    if fmt == "pcapng":  # every file repeats the IDBs of the groups seen so far
        for name in names[1:]:
            with CaptureReader(name) as r:
                list(r)
                assert [i.name for i in r.interfaces] == ["nflog:5", "nflog:6"]


def test_size_rotation_puts_an_oversized_record_alone(tmp: Path) -> None:
    small, big = sample_records(1)[0], record(nflog_body(5, ipv4_udp(b"B" * 3000)))
    w = open_writer(tmp / "o.pcap", rotate_bytes=500)
    w.write_records(small + big + small, 3)
    w.close()
    sizes = [os.path.getsize(n) for n in w.files]
    assert sizes == [24 + len(small), 24 + len(big), 24 + len(small)]


def test_size_rotation_ring_with_rotate_count(tmp: Path) -> None:
    recs = [record(nflog_body(5, ipv4_udp(bytes([i]) * 20)), (i, 0)) for i in range(10)]
    w = open_writer(tmp / "ring.pcap", rotate_bytes=24 + 2 * len(recs[0]), rotate_count=3)
    for rec in recs:
        w.write_records(rec, 1)
    w.close()
    # 10 records, 2 per file: slots 0,1,2,0,1 -> slot 1 is the newest, then 2 and 0 before it
    assert sorted(os.listdir(tmp)) == ["ring.pcap0", "ring.pcap1", "ring.pcap2"]
    assert w.files == [str(tmp / f"ring.pcap{i}") for i in (2, 0, 1)]
    assert all_packets(w.files) == expected(b"".join(recs[4:]))


def test_rotation_names_are_zero_padded_to_the_width_of_rotate_count(tmp: Path) -> None:
    rec = sample_records(1)[0]
    w = open_writer(tmp / "w", rotate_bytes=1, rotate_count=12)
    for _ in range(3):
        w.write_records(rec, 1)
    w.close()
    assert [os.path.basename(n) for n in w.files] == ["w00", "w01", "w02"]


def test_time_rotation_uses_strftime_names_and_an_injected_clock(tmp: Path) -> None:
    clock = FakeClock(1_700_000_000.0)
    rec = sample_records(1)[0]
    pattern = str(tmp / "g-%Y%m%d-%H%M%S.pcapng")
    w = open_writer(pattern, rotate_seconds=60, clock=clock)
    assert isinstance(w, PcapngWriter)
    w.write_records(rec, 1)
    clock.now += 59.9
    w.write_records(rec, 1)  # same period
    clock.now += 0.1
    w.write_records(rec, 1)  # 60 s after the period started: new file
    clock.now += 200
    w.write_records(rec, 1)
    w.close()
    names = [
        time.strftime(pattern, time.localtime(t))
        for t in (1_700_000_000, 1_700_000_060, 1_700_000_260)
    ]
    assert w.files == names
    assert [len(read_all(n)) for n in names] == [2, 1, 1]


def test_time_rotation_with_rotate_count_keeps_the_newest_files(tmp: Path) -> None:
    clock = FakeClock(1_700_000_000.0)
    rec = sample_records(1)[0]
    pattern = str(tmp / "t-%s.pcap")
    w = open_writer(pattern, rotate_seconds=10, rotate_count=2, clock=clock)
    for _ in range(5):
        w.write_records(rec, 1)
        clock.now += 10
    w.close()
    assert sorted(os.listdir(tmp)) == ["t-1700000030.pcap", "t-1700000040.pcap"]


def test_time_and_size_rotation_restart_the_counter_each_period(tmp: Path) -> None:
    clock = FakeClock(1_700_000_000.0)
    rec = sample_records(1)[0]
    w = open_writer(str(tmp / "b-%s-"), rotate_seconds=10, rotate_bytes=1, clock=clock)
    w.write_records(rec + rec, 2)
    clock.now += 10
    w.write_records(rec + rec, 2)
    w.close()
    assert [os.path.basename(n) for n in w.files] == [
        "b-1700000000-",
        "b-1700000000-1",
        "b-1700000010-",
        "b-1700000010-1",
    ]


def test_rotation_refuses_to_replace_files_it_did_not_make(tmp: Path) -> None:
    (tmp / "x.pcap1").write_bytes(b"precious")
    rec = sample_records(1)[0]
    w = open_writer(tmp / "x.pcap", rotate_bytes=1)
    w.write_records(rec, 1)
    with pytest.raises(CaptureWriteError, match="already exists") as info:
        w.write_records(rec, 1)
    assert info.value.errno == errno.EEXIST and info.value.records_written == 1
    w.close()
    assert (tmp / "x.pcap1").read_bytes() == b"precious"
    assert len(read_all(tmp / "x.pcap")) == 1


def test_rotation_option_validation(tmp: Path) -> None:
    with pytest.raises(ValueError, match="rotate_count needs"):
        open_writer(tmp / "v", rotate_count=3)
    for kwargs in (
        dict(rotate_bytes=0),
        dict(rotate_seconds=-1),
        dict(snaplen=0),
        dict(flush_interval=-1),
        dict(rotate_bytes=5, rotate_count=0),
    ):
        with pytest.raises(ValueError):
            open_writer(tmp / "v", **kwargs)  # type: ignore[arg-type]
    assert not (tmp / "v").exists()


# -- write errors ---------------------------------------------------------------------------
def failing_writev(budget: int, err: int = errno.ENOSPC) -> Callable[[int, Sequence[Any]], int]:
    """os.writev that writes ``budget`` bytes in total (short writes), then fails."""
    left = [budget]

    def writev(fd: int, bufs: Sequence[Any]) -> int:
        if left[0] <= 0:
            raise OSError(err, os.strerror(err))
        data = b"".join(bytes(b) for b in bufs)[: left[0]]
        n = os.write(fd, data)
        left[0] -= n
        return n

    return writev


@pytest.mark.parametrize("fmt", ["pcap", "pcapng", "raw"])
def test_enospc_truncates_to_the_last_complete_record(tmp: Path, fmt: str) -> None:
    recs = sample_records(10, groups=(5, 6))
    first, rest = b"".join(recs[:2]), b"".join(recs[2:])
    with open_writer(tmp / f"ref.{fmt}", fmt) as ref:  # where the bytes go without errors
        ref.write_records(first, 2)
        before = ref.bytes_written
        ref.write_records(rest, 8)
        full = ref.bytes_written
    for budget in sorted({before, before + 1, before + 57, (before + full) // 2, full - 1}):
        path = tmp / f"full-{budget}.{fmt}"
        w = open_writer(path, fmt, writev=failing_writev(budget))
        w.write_records(first, 2)
        with pytest.raises(CaptureWriteError) as info:
            w.write_records(rest, 8)
        e = info.value
        assert isinstance(e, OSError) and e.errno == errno.ENOSPC
        assert e.filename == str(path)
        assert "No space left on device" in str(e) and f"{e.records_written} records" in str(e)
        assert before <= os.path.getsize(path) == e.bytes_written <= budget
        got = read_all(path)  # readable, no trailing garbage
        assert len(got) == e.records_written >= 2
        assert e.records_written < 10
        if fmt != "raw":
            assert [p.as_dict() for p in got] == expected(first + rest)[: len(got)]
        with pytest.raises(ValueError, match="failed"):
            w.write_records(recs[0], 1)
        w.close()
        w.close()
        assert os.path.getsize(path) == e.bytes_written


def test_header_write_failure_removes_the_new_file(tmp: Path) -> None:
    with pytest.raises(CaptureWriteError) as info:
        open_writer(tmp / "h.pcapng", writev=failing_writev(10))
    assert info.value.records_written == 0
    assert not (tmp / "h.pcapng").exists()


@pytest.mark.parametrize("hidden", [False, True])
def test_interrupt_mid_write_leaves_a_readable_file(tmp: Path, hidden: bool) -> None:
    """A signal handler raising during a batch write: the partial record is cut off. With
    ``hidden``, the interrupt comes after writev wrote bytes but before its result is seen."""
    recs = [record(nflog_body(5, ipv4_udp(bytes([i]) * 50)), (i, 0)) for i in range(6)]
    ring = b"".join(recs)
    half = len(ring) // 2 + 7  # inside the fourth record
    calls = [0]

    def writev(fd: int, bufs: Sequence[Any]) -> int:
        calls[0] += 1
        data = b"".join(bytes(b) for b in bufs)
        if calls[0] == 1:
            return os.write(fd, data)  # the file header
        if calls[0] == 2:
            n = os.write(fd, data[:half])
            if hidden:
                raise KeyboardInterrupt
            return n
        raise KeyboardInterrupt

    path = tmp / "int.pcap"
    w = open_writer(path, writev=writev)
    with pytest.raises(KeyboardInterrupt):
        w.write_records(ring, 6)
    w.close()
    whole = max(i for i in range(7) if sum(map(len, recs[:i])) <= half)
    assert whole == 3
    assert (w.records_written, w.bytes_written) == (3, 24 + sum(map(len, recs[:3])))
    assert os.path.getsize(path) == w.bytes_written
    assert [p.as_dict() for p in read_all(path)] == expected(ring)[:3]


def test_fdatasync_error_is_a_capture_write_error(
    tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = open_writer(tmp / "s.pcap", flush_every_batch=True)

    def fail(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", fail)
    with pytest.raises(CaptureWriteError, match="fdatasync") as info:
        w.write_records(sample_records(1)[0], 1)
    assert info.value.errno == errno.EIO and info.value.records_written == 1
    w.close()


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_enospc_on_a_full_tmpfs(tiny_tmpfs: Path, fmt: str) -> None:
    recs = sample_records(30, size=300)
    ring = b"".join(recs)
    path = tiny_tmpfs / f"full.{fmt}"
    w = open_writer(path, fmt)
    with pytest.raises(CaptureWriteError) as info:
        for _ in range(100):
            w.write_records(ring, 30)
    w.close()
    e = info.value
    assert e.errno == errno.ENOSPC and e.filename == str(path)
    assert 30 < e.records_written < 3000
    assert os.path.getsize(path) == e.bytes_written
    got = read_all(path)
    assert len(got) == e.records_written
    assert [p.as_dict() for p in got] == (expected(ring) * 100)[: len(got)]


# -- file safety ----------------------------------------------------------------------------
def test_files_are_0600_even_with_umask_0_and_never_overwritten(tmp: Path) -> None:
    old = os.umask(0)
    try:
        for fmt in ("pcap", "pcapng", "raw"):
            path = tmp / f"m.{fmt}"
            open_writer(path, fmt).close()
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            with pytest.raises(FileExistsError, match=r"already exists.*overwrite=True") as info:
                open_writer(path, fmt)
            assert info.value.filename == str(path)
        path = tmp / "old.pcap"
        path.write_bytes(b"old data")
        path.chmod(0o644)
        with open_writer(path, overwrite=True) as w:
            w.write_records(sample_records(1)[0], 1)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert len(read_all(path)) == 1
        open_writer(tmp / "g.pcap", mode=0o640).close()
        assert stat.S_IMODE((tmp / "g.pcap").stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_unwritable_location_error_names_the_path(tmp: Path) -> None:
    path = tmp / "no" / "such" / "dir" / "x.pcap"
    with pytest.raises(FileNotFoundError, match="cannot create capture file") as info:
        open_writer(path)
    assert info.value.filename == str(path) and str(path) in str(info.value)


def test_overwrite_of_a_device_does_not_chmod_it(tmp: Path) -> None:
    before = os.stat("/dev/null").st_mode
    with open_writer("/dev/null", overwrite=True) as w:
        w.write_records(sample_records(1)[0], 1)
        w.flush()
    assert os.stat("/dev/null").st_mode == before


def test_flush_every_batch_and_flush_interval(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    syncs: list[int] = []
    monkeypatch.setattr(os, "fdatasync", lambda fd: syncs.append(fd))
    rec = sample_records(1)[0]
    with open_writer(tmp / "u.pcap", flush_every_batch=True) as w:
        for _ in range(3):
            w.write_records(rec, 1)
        assert len(syncs) == 3
    clock = FakeClock()
    syncs.clear()
    w = open_writer(tmp / "i.pcap", flush_interval=1.0, clock=clock)
    w.write_records(rec, 1)
    clock.now += 0.5
    w.write_records(rec, 1)
    w.flush_if_due()
    assert syncs == []
    clock.now += 0.5
    w.flush_if_due()  # an idle capture loop calls this
    w._background.wait()  # interval syncs run on a worker thread, off the hot path
    assert len(syncs) == 1
    w.flush_if_due()  # nothing new to sync
    clock.now += 5
    w.flush_if_due()
    w._background.wait()
    assert len(syncs) == 1
    w.write_records(rec, 1)  # interval long over: synced right away
    w._background.wait()
    assert len(syncs) == 2
    w.write_records(rec, 1)
    w.close()
    w.close()
    assert len(syncs) == 3  # close syncs what is pending


def test_close_is_idempotent_and_writes_after_close_fail(tmp: Path) -> None:
    w = open_writer(tmp / "c.pcap")
    w.close()
    w.close()
    assert w.closed and "closed" in repr(w)
    with pytest.raises(ValueError, match="closed"):
        w.write_records(sample_records(1)[0], 1)


def test_open_writer_formats(tmp: Path) -> None:
    assert type(open_writer(tmp / "a.pcap")) is PcapWriter
    assert type(open_writer(tmp / "a")) is PcapWriter
    assert type(open_writer(tmp / "a.PCAPNG")) is PcapngWriter
    assert type(open_writer(tmp / "a.ntar")) is PcapngWriter
    assert type(open_writer(tmp / "b.pcapng", "pcap")) is PcapWriter
    assert type(open_writer(tmp / "a.raw", "raw")) is RawWriter
    with pytest.raises(ValueError, match="unknown capture format 'pcapx'"):
        open_writer(tmp / "z", "pcapx")
    with pytest.raises(ValueError, match="only apply to pcapng"):
        open_writer(tmp / "z", "pcap", groups=[1])
    assert not (tmp / "z").exists()


def test_write_batch_takes_a_batch_like_object(tmp: Path) -> None:
    @dataclass
    class Batch:
        data: memoryview
        count: int

    ring = b"".join(sample_records(3))
    with open_writer(tmp / "b.pcap") as w:
        w.write_batch(Batch(memoryview(ring), 3))
    assert [p.as_dict() for p in read_all(tmp / "b.pcap")] == expected(ring)


# -- other readers: dpkt, tcpdump, tshark ---------------------------------------------------
def test_dpkt_reads_our_pcap_and_pcapng(tmp: Path) -> None:
    recs = sample_records(8, groups=(5, 6))
    ring = b"".join(recs)
    bodies = [p.raw for p in iter_records(ring)]
    times = [p.timestamp for p in iter_records(ring)]
    for fmt, reader in (("pcap", dpkt.pcap.Reader), ("pcapng", dpkt.pcapng.Reader)):
        with open_writer(tmp / f"d.{fmt}", fmt) as w:
            w.write_records(ring, 8)
            w.close(stats={5: (8, 0)})
        with open(tmp / f"d.{fmt}", "rb") as f:
            r = reader(f)
            assert r.datalink() == 239
            got = list(r)
        assert [bytes(buf) for _, buf in got] == bodies
        assert [round(ts, 6) for ts, _ in got] == [round(t, 6) for t in times]
    with open_writer(tmp / "d.raw", "raw") as w:
        w.write_records(ring, 8)
    with open(tmp / "d.raw", "rb") as f:
        r = dpkt.pcap.Reader(f)
        assert r.datalink() == 101
        assert [bytes(buf) for _, buf in r] == [p.payload for p in iter_records(ring)]


def our_files(tmp: Path) -> tuple[bytes, dict[str, Path]]:
    ring = b"".join(sample_records(6, groups=(5, 6)))
    paths = {}
    for fmt in ("pcap", "pcapng", "raw"):
        paths[fmt] = tmp / f"tool.{fmt}"
        with open_writer(paths[fmt], fmt) as w:
            w.write_records(ring, 6)
            w.close(stats=FakeCaptureStats({5: FakeGroupStats(3, 1, 0, 0, 0)}))
    return ring, paths


def test_tcpdump_reads_our_files_without_warnings(tmp: Path) -> None:
    tcpdump = require_tool("tcpdump", "tcpdump")
    ring, paths = our_files(tmp)
    live = list(iter_records(ring))
    for fmt, path in paths.items():
        r = subprocess.run([tcpdump, "-n", "-r", str(path)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        linktype = "RAW" if fmt == "raw" else "NFLOG"
        assert r.stderr.strip() == (
            f"reading from file {path}, link-type {linktype} "
            f"({'Raw IP' if fmt == 'raw' else 'Linux netfilter log messages'}), "
            "snapshot length 262144"
        )
        lines = r.stdout.splitlines()
        assert len(lines) == 6
        for line, p in zip(lines, live, strict=True):
            src = "10.0.0.1.40000" if p.payload and p.payload[0] == 0x45 else "fd00::1.1"
            assert src in line and "UDP, length" in line


def test_tshark_decodes_our_files_like_the_live_packets(tmp: Path) -> None:
    tshark = require_tool("tshark", "tshark")
    ring, paths = our_files(tmp)
    live = list(iter_records(ring))
    fields = [
        "frame.len",
        "frame.cap_len",
        "nflog.prefix",
        "nflog.hook",
        "nflog.res_id",
        "nflog.ifindex_outdev",
        "nflog.ifindex_indev",
        "frame.comment",
        "ip.len",
        "ipv6.plen",
        "frame.interface_name",
    ]
    for fmt, path in paths.items():
        cmd = [tshark, "-n", "-r", str(path), "-T", "fields", "-E", "separator=|"]
        for f in fields:
            cmd += ["-e", f]
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        warnings = [x for x in r.stderr.splitlines() if "Running as user" not in x and x.strip()]
        assert warnings == []
        rows = [dict(zip(fields, line.split("|"), strict=True)) for line in r.stdout.splitlines()]
        assert len(rows) == 6
        for row, p in zip(rows, live, strict=True):
            if fmt == "raw":
                assert row["nflog.prefix"] == "" and row["frame.len"] == str(len(p.payload or b""))
            else:
                assert row["frame.len"] == str(p.orig_len) and row["frame.cap_len"] == str(
                    len(p.raw)
                )
                assert (row["nflog.prefix"], row["nflog.hook"], row["nflog.res_id"]) == (
                    p.prefix,
                    str(p.hook),
                    str(p.group),
                )
                dev = "nflog.ifindex_indev" if p.indev else "nflog.ifindex_outdev"
                assert row[dev] == str(p.indev or p.outdev)
            v4 = p.payload is not None and p.payload[0] == 0x45
            assert row["ip.len" if v4 else "ipv6.plen"] != ""
            if fmt == "pcapng":
                assert row["frame.interface_name"] == f"nflog:{p.group}"
                assert (row["frame.comment"] == SYNTHESIZED_COMMENT) == p.timestamp_synthesized
            else:
                assert row["frame.comment"] == ""


def test_capinfos_sees_the_pcapng_interfaces_and_drop_counts(tmp: Path) -> None:
    capinfos = require_tool("capinfos", "wireshark-common")
    _, paths = our_files(tmp)
    r = subprocess.run([capinfos, str(paths["pcapng"])], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "Number of interfaces in file: 2" in r.stdout
    assert "Name = nflog:5" in r.stdout and "Name = nflog:6" in r.stdout
    assert "Number of packets = 3" in r.stdout
    assert "Number of stat entries = 1" in r.stdout


# -- real tcpdump captures (fixtures) --------------------------------------------------------
def test_reads_a_real_tcpdump_nflog_capture_and_its_wireshark_conversions() -> None:
    src = FIXTURES / "pcap_tcpdump_nflog.pcap"
    pkts = read_all(src)
    assert len(pkts) == 6
    assert [p.prefix for p in pkts] == ["pout", "pin"] * 3
    assert [p.hook_name for p in pkts] == ["OUTPUT", "INPUT"] * 3
    assert [p.timestamp_synthesized for p in pkts] == [True, False] * 3
    assert all(p.group == 7 and p.payload and p.payload[:1] == b"\x45" for p in pkts)
    assert all(p.ip.data.dport == 9999 for p in pkts)
    # INPUT packets carry NFULA_TIMESTAMP (libpcap stamps records with its own receive time)
    assert [p.kernel_timestamp is not None for p in pkts] == [False, True] * 3
    assert all(abs(p.kernel_timestamp - p.timestamp) < 5 for p in pkts[1::2])
    reference = [p.as_dict() for p in pkts]
    for name in ("pcap_tcpdump_nflog_ns.pcap", "pcap_tcpdump_nflog_editcap.pcapng"):
        assert [p.as_dict() for p in read_all(FIXTURES / name)] == reference, name


def test_round_trip_of_a_real_capture_through_every_writer(tmp: Path) -> None:
    src = FIXTURES / "pcap_tcpdump_nflog.pcap"
    data = src.read_bytes()
    if data[:4] != struct.pack("=I", 0xA1B2C3D4):
        pytest.skip("fixture was captured on a host of the other byte order")
    ring = data[24:]
    for fmt in ("pcap", "pcapng"):
        with open_writer(tmp / f"rt.{fmt}", fmt) as w:
            w.write_records(ring, 6)
        assert [p.as_dict() for p in read_all(tmp / f"rt.{fmt}")] == expected(ring)
    shutil.copy(src, tmp / "copy.pcap")
    assert (tmp / "rt.pcap").read_bytes() == data
