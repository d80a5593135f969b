"""Capture file writer throughput: our writers fed ring batches vs dpkt's per-packet writers.

    python benchmarks/bench_writer.py [--packets N] [--batch N] [--repeats N] [--dir DIR]

A ring-like buffer of LINKTYPE_NFLOG records (host-order pcap record headers + NFLOG bodies as
the kernel builds them: PACKET_HDR, PREFIX, OUTDEV, SEQ, SEQ_GLOBAL, half of them TIMESTAMP,
then an IPv4/UDP payload of 64 or 1400 bytes) is cut into batches of ``--batch`` records, like
``Capture.read_batch()`` hands them out, and written to a file on disk:

- ``PcapWriter.write_records``: one writev per batch, no Python work per packet;
- ``PcapngWriter.write_records`` / ``RawWriter.write_records``: one writev per batch, a tight
  per-packet loop (EPB headers, comment for synthesized timestamps / payload extraction);
- ``dpkt.pcap.Writer.writepkt`` / ``dpkt.pcapng.Writer.writepkt``: once per packet, given the
  records already sliced into (timestamp, bytes) pairs, which favours dpkt: a capture loop
  would first have to split the batch itself.

Only the write loop is timed (no open/close, no fdatasync: our writers get
``flush_interval=None``). The result is the median over ``--repeats`` runs, printed as a
markdown table.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable

import dpkt

from ipsec_nflog.files.writer import open_writer

_REC = struct.Struct("=IIII")


def _tlv(atype: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), atype) + value
    return raw + b"\0" * (-len(raw) % 4)


def nflog_record(i: int, payload_size: int) -> bytes:
    data = bytes([i & 0xFF]) * payload_size
    udp = struct.pack("!HHHH", 40000, 9999, 8 + len(data), 0) + data
    ip = (
        struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            20 + len(udp),
            i & 0xFFFF,
            0,
            64,
            17,
            0,
            socket.inet_aton("127.0.0.1"),
            socket.inet_aton("127.0.0.1"),
        )
        + udp
    )
    ts = (1_700_000_000 + i // 1000, (i * 37) % 1_000_000)
    body = struct.pack("!BBH", socket.AF_INET, 0, 4242) + b"".join(
        [
            _tlv(1, struct.pack("!HBx", 0x0800, 3)),
            _tlv(10, b"bench\0"),
            _tlv(5, struct.pack("!I", 1)),
            *([_tlv(3, struct.pack("!QQ", *ts))] if i % 2 else []),
            _tlv(12, struct.pack("!I", i)),
            _tlv(13, struct.pack("!I", i)),
            _tlv(9, ip),
        ]
    )
    return _REC.pack(ts[0], ts[1], len(body), len(body)) + body


def make_ring(
    n: int, payload_size: int, batch: int
) -> tuple[list[tuple[memoryview, int]], list[tuple[float, bytes]]]:
    """(batches as (memoryview, count), the same records as (timestamp, body) pairs)."""
    records = [nflog_record(i, payload_size) for i in range(n)]
    ring = memoryview(b"".join(records))
    batches, off = [], 0
    for start in range(0, n, batch):
        size = sum(len(r) for r in records[start : start + batch])
        batches.append((ring[off : off + size], len(records[start : start + batch])))
        off += size
    pairs = []
    for r in records:
        sec, usec, _, _ = _REC.unpack_from(r)
        pairs.append((sec + usec / 1e6, r[16:]))
    return batches, pairs


def time_ours(fmt: str, batches: list[tuple[memoryview, int]], path: str,
              native: bool = False) -> float:
    """``native``: frame in C (``NativeFraming``, what ``ipsec-nflog capture`` uses)."""
    w = open_writer(path, fmt, overwrite=True, flush_interval=None)
    if native:
        from ipsec_nflog.capture.framing import NativeFraming

        w.use_framing(NativeFraming())
    write = w.write_records
    t0 = time.perf_counter()
    for buf, count in batches:
        write(buf, count)
    elapsed = time.perf_counter() - t0
    w.close()
    return elapsed


def time_dpkt(kind: str, pairs: list[tuple[float, bytes]], path: str) -> float:
    with open(path, "wb") as f:
        if kind == "pcap":
            w = dpkt.pcap.Writer(f, snaplen=262144, linktype=239)
        else:
            w = dpkt.pcapng.Writer(f, snaplen=262144, linktype=239)
        writepkt = w.writepkt
        t0 = time.perf_counter()
        for ts, body in pairs:
            writepkt(body, ts)
        f.flush()
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packets", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=1024, help="records per batch")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sizes", default="64,1400", help="UDP payload sizes")
    ap.add_argument("--dir", default=None, help="where the files go (default: a temp dir)")
    args = ap.parse_args()
    if args.repeats < 3:
        ap.error("--repeats must be at least 3 (medians)")

    runs: list[
        tuple[str, Callable[[list[tuple[memoryview, int]], list[tuple[float, bytes]], str], float]]
    ] = [
        (
            "ipsec_nflog PcapWriter.write_records (per batch)",
            lambda b, p, path: time_ours("pcap", b, path),
        ),
        (
            "ipsec_nflog PcapngWriter.write_records (per batch)",
            lambda b, p, path: time_ours("pcapng", b, path),
        ),
        (
            "ipsec_nflog RawWriter.write_records (per batch)",
            lambda b, p, path: time_ours("raw", b, path),
        ),
        (
            "ipsec_nflog PcapngWriter.write_records, C framing (the CLI's)",
            lambda b, p, path: time_ours("pcapng", b, path, native=True),
        ),
        (
            "ipsec_nflog RawWriter.write_records, C framing (the CLI's)",
            lambda b, p, path: time_ours("raw", b, path, native=True),
        ),
        ("dpkt.pcap.Writer.writepkt (per packet)", lambda b, p, path: time_dpkt("pcap", p, path)),
        (
            "dpkt.pcapng.Writer.writepkt (per packet)",
            lambda b, p, path: time_dpkt("pcapng", p, path),
        ),
    ]
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-writer-") as d:
        print(
            f"{args.packets} records, batches of {args.batch}, median of {args.repeats} "
            f"runs, files in {d} ({os.statvfs(d).f_bsize}-byte blocks), Python "
            f"{sys.version.split()[0]}, dpkt {dpkt.__version__}\n"
        )
        print("| writer | payload | packets/s | MB/s written | vs dpkt.pcap |")
        print("|---|---:|---:|---:|---:|")
        for size in (int(s) for s in args.sizes.split(",")):
            batches, pairs = make_ring(args.packets, size, args.batch)
            rates = {}
            for name, run in runs:
                times = []
                for rep in range(args.repeats):
                    path = os.path.join(d, f"out-{rep}")
                    times.append(run(batches, pairs, path))
                    file_bytes = os.path.getsize(path)
                    os.unlink(path)
                median = statistics.median(times)
                rates[name] = (args.packets / median, file_bytes / median / 1e6)
            base = rates["dpkt.pcap.Writer.writepkt (per packet)"][0]
            for name, (pps, mbps) in rates.items():
                print(f"| {name} | {size} B | {pps:,.0f} | {mbps:,.0f} | {pps / base:.1f}x |")
            del batches, pairs


if __name__ == "__main__":
    main()
