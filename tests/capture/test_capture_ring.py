"""The ring, the record path, the filter and the selector without sockets or root: netlink
datagrams built here are fed to a capture opened with NFC_NO_SOCKETS, and read back through
the same consumer API a live capture uses."""

from __future__ import annotations

import random
import socket
import struct

import dpkt
import pytest

from ipsec_nflog import Capture, CaptureConfig
from ipsec_nflog.capture.config import recv_buffer_size

pytestmark = pytest.mark.requires_core

NFULA_PACKET_HDR, NFULA_TIMESTAMP, NFULA_IFINDEX_INDEV, NFULA_IFINDEX_OUTDEV = 1, 3, 4, 5
NFULA_PAYLOAD, NFULA_PREFIX, NFULA_SEQ = 9, 10, 12
NFLOG_PACKET = (4 << 8) | 0  # NFNL_SUBSYS_ULOG, NFULNL_MSG_PACKET


def tlv(t: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), t) + value
    return raw + b"\0" * (-len(raw) % 4)


def udp4(dport: int, payload: bytes = b"x" * 20, src: str = "10.0.0.1") -> bytes:
    u = dpkt.udp.UDP(sport=1000, dport=dport, data=payload)
    u.ulen = len(u)
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton("10.0.0.2"),
                    p=dpkt.ip.IP_PROTO_UDP, data=u)
    ip.len = len(ip)
    return bytes(ip)


def message(group: int, seq: int, ip: bytes, *, hook: int = 3, prefix: str | None = None,
            indev: int | None = None, outdev: int | None = None,
            timestamp: tuple[int, int] | None = None) -> bytes:
    body = struct.pack("!BBH", socket.AF_INET, 0, group)
    body += tlv(NFULA_PACKET_HDR, struct.pack("!HBB", 0x0800, hook, 0))
    if timestamp:
        body += tlv(NFULA_TIMESTAMP, struct.pack("!QQ", *timestamp))
    if indev:
        body += tlv(NFULA_IFINDEX_INDEV, struct.pack("!I", indev))
    if outdev:
        body += tlv(NFULA_IFINDEX_OUTDEV, struct.pack("!I", outdev))
    if prefix is not None:
        body += tlv(NFULA_PREFIX, prefix.encode() + b"\0")
    body += tlv(NFULA_SEQ, struct.pack("!I", seq))
    body += tlv(NFULA_PAYLOAD, ip)
    return struct.pack("=IHHII", 16 + len(body), NFLOG_PACKET, 0, 0, 0) + body


def offline(**kw: object) -> Capture:
    return Capture._offline(CaptureConfig(**kw))  # type: ignore[arg-type]


def test_records_round_trip_with_their_metadata() -> None:
    with offline(groups=(7,)) as cap:
        msgs = [message(7, i, udp4(5000 + i), prefix=f"p{i}", timestamp=(1700000000 + i, 5))
                for i in range(10)]
        cap._inject(b"".join(msgs))
        got = list(cap.packets(timeout=0))
        st = cap.stats().groups[7]
    assert [p.seq for p in got] == list(range(10))
    assert [p.prefix for p in got] == [f"p{i}" for i in range(10)]
    assert [p.ip.data.dport for p in got] == [5000 + i for i in range(10)]
    assert [p.ts_sec for p in got] == [1700000000 + i for i in range(10)]
    assert not any(p.timestamp_synthesized for p in got)
    assert (st.received_packets, st.delivered_packets, st.dropped_packets) == (10, 10, 0)


def test_the_ring_wraps_and_every_record_is_delivered_once_or_counted() -> None:
    rng = random.Random(3)
    ring = recv_buffer_size(4096)
    seq = 0
    seen: list[int] = []
    with offline(groups=(8,), nlbufsiz=4096, ring_size=ring) as cap:
        for _ in range(400):
            msgs = []
            for _ in range(rng.randrange(1, 40)):
                msgs.append(message(8, seq, udp4(53, b"z" * rng.randrange(0, 900))))
                seq += 1
            cap._inject(b"".join(msgs))
            while rng.random() < 0.3:
                b = cap.read_batch(max_packets=rng.randrange(1, 50),
                                   max_bytes=rng.randrange(1, 30000), timeout=0)
                if b is None:
                    break
                seen += [p.seq for p in b]  # type: ignore[misc]
                b.release()
        seen += [p.seq for p in cap.packets(timeout=0)]  # type: ignore[misc]
        st = cap.stats().groups[8]
    assert seen == sorted(set(seen))
    assert st.ring_drop_packets > 0, "the ring should have filled at least once"
    assert len(seen) + st.ring_drop_packets == seq
    assert len(set(range(seq)) - set(seen)) == st.ring_drop_packets
    assert st.delivered_packets == len(seen) and st.seq_gap_packets == 0


def test_sequence_gaps_are_kernel_loss() -> None:
    with offline(groups=(9,)) as cap:
        cap._inject(b"".join(message(9, s, udp4(1)) for s in (0, 1, 5, 6, 10)))
        n = sum(1 for _ in cap.packets(timeout=0))
        st = cap.stats().groups[9]
    assert n == 5
    assert (st.seq_gap_packets, st.seq_gap_events) == (6, 2)


def test_filter_and_selector_run_before_the_ring() -> None:
    msgs = []
    for i in range(60):
        msgs.append(message(4, i, udp4(4500 if i % 3 == 0 else 53, src=f"10.0.0.{i % 5 + 1}"),
                            hook=3 if i % 2 else 0, prefix="esp-out" if i % 4 else "other",
                            outdev=2 if i % 2 else None, indev=None if i % 2 else 2))
    expect = [i for i in range(60) if i % 3 == 0 and i % 2 == 1 and i % 4 != 0]
    with offline(groups=(4,), filter="udp port 4500", hooks=("OUTPUT",), prefix="esp-out",
                 outdev=2) as cap:
        cap._inject(b"".join(msgs))
        kept = [p.seq for p in cap.packets(timeout=0)]
        st = cap.stats().groups[4]
    assert kept == expect
    assert st.filtered_packets == 60 - len(expect)
    assert st.received_packets == 60 and st.dropped_packets == 0
    assert st.delivered_packets + st.filtered_packets == st.received_packets


def test_a_payload_cut_by_the_snaplen_follows_libpcaps_short_packet_rules() -> None:
    full = udp4(4500, b"q" * 200)
    cut = full[:22]  # the UDP header is cut before the destination port
    msgs = [message(3, 0, cut), message(3, 1, full)]
    with offline(groups=(3,), filter="udp port 4500") as cap:
        cap._inject(b"".join(msgs))
        kept = [p.seq for p in cap.packets(timeout=0)]
    assert kept == [1]  # the port load reads past the captured bytes: rejected
    with offline(groups=(3,), filter="greater 200") as cap:
        cap._inject(b"".join(msgs))
        kept = [p.seq for p in cap.packets(timeout=0)]
    assert kept == [0, 1]  # greater sees the length from the IP header


@pytest.mark.parametrize("datagram", [
    b"", b"\x00" * 3, b"\xff" * 64,
    struct.pack("=IHHII", 18, NFLOG_PACKET, 0, 0, 0) + b"\x02\x00",  # shorter than nfgenmsg
    struct.pack("=IHHII", 4000, NFLOG_PACKET, 0, 0, 0) + b"\x02\x00\x00\x01",  # len lies
    message(1, 0, udp4(1))[:-7],  # cut inside the payload TLV
])
def test_malformed_datagrams_never_crash(datagram: bytes) -> None:
    with offline(groups=(1,)) as cap:
        cap._inject(datagram)
        cap._inject(message(1, 0, udp4(9)))
        got = list(cap.packets(timeout=0))
    assert got[-1].ip.data.dport == 9
