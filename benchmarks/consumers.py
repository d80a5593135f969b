"""Python consumers of ipsec_nflog for the capture benchmark (run by benchmarks/run.py).

    python benchmarks/consumers.py batch --group N --out FILE
    python benchmarks/consumers.py iter  --group N --out FILE

``batch``: the batch API. ``Capture.read_batch()`` runs are written to a LINKTYPE_NFLOG pcap
file unchanged with the library's writer (``ipsec_nflog.files.writer.open_writer(path, "pcap")``,
its defaults: one writev per batch, fdatasync every second), the way a capture tool would;
without pcapfile, with a plain ``file.write(batch.data)``.

``iter``: the per-packet iterator. Every ``Packet`` from ``Capture.packets()`` is parsed
(its ``.payload`` is touched, which decodes the TLVs) and counted, and written back as a
pcap record so that the benchmark can count what was captured from the file, like for
every other tool. ``iter-batch``: the same packets, but each batch is written by the
library's writer before its packets are parsed (the test harness's loop).

Peers, what a Python user would pick instead (benchmarks/requirements.txt; never dependencies
of the package), each writing a file the benchmark counts like every other:

``pcapy``: pcapy-ng (libpcap) reading ``nflog:N`` in-process, its dumper writing the
LINKTYPE_NFLOG pcap (tcpdump's file, from Python): raw records, the peer of the batch API.
``pcapy-parse``: the same, plus what a pcapy user must add to get what ``iter`` hands out
(the NFLOG TLVs walked in Python for the payload, the prefix and the hook): the peer of the
per-packet iterator. ``scapy``: ``sniff(iface="nflog:N")``
(through libpcap) into a ``PcapWriter``. ``nflogr``: the nflogr binding (libnetfilter_log,
kernel batching like ours), every packet's payload written as a LINKTYPE_RAW record.

All run until SIGINT/SIGTERM, then stop the capture, drain what is left in the ring, close
the file and print one JSON line (their own counts and the library's drop counters; the
benchmark does not trust these, it counts records in the file). Then each exits at once
(``os._exit``), like ``ipsec-nflog capture`` does: the interpreter's teardown (~30 ms, the same
for every program here and unrelated to any packet) is not spread over the packets.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import select
import signal
import struct
import sys
import time
from functools import partial
from typing import Any

LINKTYPE_NFLOG = 239
_REC = struct.Struct("=IIII")  # host byte order, like the ring records


class RawPcap:
    """Fallback writer when ipsec_nflog.files.writer is missing: a 24-byte pcap header in host
    byte order, then the ring records unchanged (they are pcap records already)."""

    def __init__(self, path: str) -> None:
        self._f = open(path, "wb", buffering=1 << 20)  # closed in close()
        self._f.write(struct.pack("=IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, LINKTYPE_NFLOG))
        self.write = self._f.write

    def write_records(self, buf: Any, count: int) -> None:
        self._f.write(buf)

    def close(self) -> None:
        self._f.close()


def open_pcap(path: str, flush_interval: str = "default") -> tuple[Any, str]:
    """(writer, what) with ``write_records(buf, count)`` and ``close()``: the library's pcap
    writer (ipsec_nflog.files.writer, with its defaults) when it exists, else RawPcap.
    ``flush_interval``: "default", "none" (never fdatasync) or seconds."""
    try:
        from ipsec_nflog.files.writer import open_writer
    except ImportError:
        return RawPcap(path), "raw-fallback"
    kw: dict[str, Any] = {}
    if flush_interval != "default":
        kw["flush_interval"] = None if flush_interval == "none" else float(flush_interval)
    what = "ipsec_nflog.files.writer" + (f" flush_interval={flush_interval}" if kw else "")
    return open_writer(path, "pcap", overwrite=True, **kw), what


class Stopper:
    def __init__(self) -> None:
        self.stop = False
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stop = True


def each_batch(cap: Any, out: Any, stopper: Stopper, take: Any) -> None:
    """Every batch to ``take`` until the stop signal, then the rest of the ring (the
    benchmark waited for the kernel to flush already); the writer's idle work in between."""
    idle = getattr(out, "flush_if_due", lambda: None)
    while not stopper.stop:
        batch = cap.read_batch(timeout=0.25)
        if batch is None:
            idle()
            continue
        take(batch)
    cap.stop(drain=0.0)
    while (batch := cap.read_batch(timeout=0)) is not None:
        take(batch)


def run_batch(cap: Any, out: Any, stopper: Stopper) -> tuple[int, int]:
    packets = batches = 0
    write = out.write_records

    def take(batch: Any) -> None:
        nonlocal packets, batches
        write(batch.data, batch.count)
        packets += batch.count
        batches += 1
        batch.release()

    each_batch(cap, out, stopper, take)
    return packets, batches


def look_at(pkts: Any) -> tuple[int, int]:
    """What a debugging script looks at in each packet (issue 15's list: payload, prefix,
    hook); returns (packets, payload bytes)."""
    packets = payload_bytes = 0
    for pkt in pkts:
        payload = pkt.payload  # parses the TLVs
        if payload is not None:
            payload_bytes += len(payload)
        _ = pkt.prefix, pkt.hook
        packets += 1
    return packets, payload_bytes


def run_iter(cap: Any, out: RawPcap, stopper: Stopper, write_records: bool = True
             ) -> tuple[int, int]:
    """Each packet goes back to the file as one record with two buffered writes (about
    0.2-0.3 us per packet; the library's writer takes whole batches, not packets).
    ``write_records=False`` (diagnostic) only parses and counts."""
    packets = payload_bytes = 0
    write, pack = out.write, _REC.pack

    def consume(pkts: Any) -> None:
        nonlocal packets, payload_bytes
        for pkt in pkts:
            payload = pkt.payload  # parses the TLVs
            if payload is not None:
                payload_bytes += len(payload)
            _ = pkt.prefix, pkt.hook  # what a debugging script looks at (issue 15's list)
            raw = pkt.raw
            write(pack(pkt.ts_sec, pkt.ts_usec, len(raw), pkt.orig_len))
            write(raw)
            packets += 1

    def count_only(pkts: Any) -> None:
        nonlocal packets, payload_bytes
        n, b = look_at(pkts)
        packets, payload_bytes = packets + n, payload_bytes + b

    if not write_records:
        consume = count_only

    while not stopper.stop:
        consume(cap.packets(timeout=0.25))
    cap.stop(drain=0.0)
    consume(cap.packets(timeout=0))
    return packets, payload_bytes


def run_iter_batch(cap: Any, out: Any, stopper: Stopper) -> tuple[int, int]:
    """The test harness's loop (ipsec_nflog/testing/session.py): each batch goes to the file
    through the library's writer, then each of its packets is parsed and looked at like in
    ``iter``. What a user who wants both a file and the packets would write: the library's
    writer takes batches, as pcapy's dumper takes packets."""
    packets = payload_bytes = 0
    write = out.write_records

    def take(batch: Any) -> None:
        nonlocal packets, payload_bytes
        write(batch.data, batch.count)
        n, b = look_at(batch)
        packets, payload_bytes = packets + n, payload_bytes + b
        batch.release()

    each_batch(cap, out, stopper, take)
    return packets, payload_bytes


_TLV = struct.Struct("=HH")  # LINKTYPE_NFLOG TLVs: length and type in host byte order
NFULA_PACKET_HDR, NFULA_PAYLOAD, NFULA_PREFIX = 1, 9, 10


def nflog_fields(data: bytes) -> tuple[bytes | None, str | None, int | None]:
    """(payload, prefix, hook) of a LINKTYPE_NFLOG packet: the TLV walk a pcapy user needs
    to get what the iterator hands out."""
    payload = prefix = hook = None
    off, n = 4, len(data)  # after the 4-byte NFLOG header (family, version, group)
    while off + 4 <= n:
        length, typ = _TLV.unpack_from(data, off)
        if length < 4:
            break
        if typ == NFULA_PAYLOAD:
            payload = data[off + 4:off + length]
        elif typ == NFULA_PREFIX:
            prefix = data[off + 4:off + length].rstrip(b"\0").decode("utf-8", "replace")
        elif typ == NFULA_PACKET_HDR:
            hook = data[off + 6]
        off += (length + 3) & ~3
    return payload, prefix, hook


def run_pcapy(group: int, path: str, stopper: Stopper, parse: bool = False) -> int:
    """pcapy-ng's dumper; ``parse``: each packet's payload, prefix and hook found first."""
    import pcapy  # pcapy-ng

    p = pcapy.open_live(f"nflog:{group}", 262144, False, 100)
    dumper = p.dump_open(path)
    packets = 0

    def on_packet(header: Any, data: bytes) -> None:
        nonlocal packets
        if parse:
            nflog_fields(data)
        dumper.dump(header, data)
        packets += 1

    # libpcap's nflog read blocks with no timeout once the load stops: wait on its fd, so
    # that the stop signal is seen and the dumper flushed (else the benchmark's kill loses
    # the dumper's unwritten tail)
    p.setnonblock(1)
    fd = p.getfd()

    def dispatch() -> int:
        try:
            return int(p.dispatch(-1, on_packet))
        except pcapy.PcapError:  # EAGAIN: libpcap's nflog read says nothing waits
            return 0

    while not stopper.stop:
        if dispatch() == 0:  # only then a select call: none per read under load
            select.select([fd], [], [], 0.25)
    while dispatch() > 0:
        pass
    dumper.close()
    return packets


def run_scapy(group: int, path: str, stopper: Stopper) -> int:
    from scapy.config import conf

    conf.use_pcap = True  # nflog:N exists only for libpcap
    from scapy.arch.libpcap import L2pcapListenSocket
    from scapy.sendrecv import sniff
    from scapy.utils import PcapWriter

    out = PcapWriter(path, linktype=LINKTYPE_NFLOG, sync=False)
    packets = 0

    def on_packet(pkt: Any) -> None:
        nonlocal packets
        out.write(pkt)
        packets += 1

    # scapy's interface list holds libpcap's "nflog" but not "nflog:N": give sniff that
    # interface under the group's name, which libpcap opens.
    from scapy.interfaces import NetworkInterface

    base = conf.ifaces.dev_from_networkname("nflog")
    iface = NetworkInterface(base.provider, {"name": f"nflog:{group}",
                                             "network_name": f"nflog:{group}",
                                             "description": base.description})
    sock = L2pcapListenSocket(iface=iface)
    while not stopper.stop:
        sniff(opened_socket=sock, prn=on_packet, store=False, timeout=0.5)
    sock.close()
    out.close()
    return packets


def run_nflogr(group: int, path: str, stopper: Stopper) -> int:
    import nflogr

    # Its recommended settings, plus kernel batching and a big buffer like ours.
    nf = nflogr.open(group, timeout=0.1, qthresh=1000, rcvbuf=64 << 20,
                     enobufs=nflogr.ENOBUFS_HANDLE, copymode=nflogr.COPY_PACKET)
    packets = 0
    with open(path, "wb", buffering=1 << 20) as f:
        f.write(struct.pack("=IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 101))  # RAW
        write, pack = f.write, _REC.pack

        def on_packet(d: Any) -> None:
            nonlocal packets
            ts, payload = d.timestamp, d.payload
            sec = int(ts)
            write(pack(sec, int((ts - sec) * 1e6), len(payload), len(payload)))
            write(payload)
            packets += 1

        # Its loop blocks in C: the stop signal has to interrupt it.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            nf.loop(on_packet, -1)
        except KeyboardInterrupt:
            pass
    nf.close()
    return packets


PEERS = {"pcapy": run_pcapy, "pcapy-parse": partial(run_pcapy, parse=True),
         "scapy": run_scapy, "nflogr": run_nflogr}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("batch", "iter", "iter-batch", *PEERS))
    ap.add_argument("--group", "-g", type=int, required=True)
    ap.add_argument("--out", "-w", required=True, help="pcap file to write")
    ap.add_argument("--no-write", action="store_true",
                    help="iter: parse and count only, write no records (diagnostic: the "
                         "benchmark then has to use this program's own count)")
    ap.add_argument("--flush-interval", default="default",
                    help="batch: the writer's fdatasync interval in seconds, 'none' for never "
                         "(default: the library's default)")
    args = ap.parse_args(argv)

    faulthandler.enable()  # a peer's C crash (nflogr 0.2.12 here) leaves its trace in stderr
    stopper = Stopper()
    if args.mode in PEERS:
        t0 = time.monotonic()
        n = PEERS[args.mode](args.group, args.out, stopper)
        print(json.dumps({"tool": args.mode, "packets": n,
                          "seconds": round(time.monotonic() - t0, 3)}), flush=True)
        return 0
    from ipsec_nflog import Capture  # after the handlers: an early SIGINT is not a traceback

    t0 = time.monotonic()
    if args.mode in ("batch", "iter-batch"):
        out, writer = open_pcap(args.out, args.flush_interval)
    else:
        out, writer = RawPcap(args.out), "buffered file, one record per packet"
    try:
        # batch: hand-over batching like `capture -w` (several kernel batches per wakeup)
        opts = {"handover_delay": 0.05} if args.mode == "batch" else {}
        with Capture(groups=[args.group], **opts) as cap:
            if args.mode == "batch":
                packets, extra = run_batch(cap, out, stopper)
            elif args.mode == "iter-batch":
                packets, extra = run_iter_batch(cap, out, stopper)
            else:
                packets, extra = run_iter(cap, out, stopper, not args.no_write)
            st = cap.stats()
    finally:
        out.close()
    result = {
        "tool": args.mode,
        "packets": packets,
        ("batches" if args.mode == "batch" else "payload_bytes"): extra,
        "dropped": getattr(st, "dropped", None),
        "writer": writer,
        "seconds": round(time.monotonic() - t0, 3),
    }
    print(json.dumps(result), flush=True)
    return 0


def exit_quickly(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_quickly(main())
