"""The per-packet iterator's Python side against its peer's, on the same records, no kernel.

    .venv/bin/python benchmarks/iter_build.py [--packets N] [--batch N] [--repeats N]

``benchmarks/run.py`` measures whole readers (kernel, C reader, file, Python) and its peer
row, pcapy-parse, moves with how far behind the load it falls. This isolates the part that
differs: the Python work per packet once the records are in memory. The records are
bench_writer's (a kernel-shaped NFLOG body: packet header, prefix, outdev, seq, seq_global,
half with a timestamp, a 64-byte UDP payload), cut into batches like ``read_batch()`` hands
them out. Every row looks at payload, prefix and hook of each packet (``consumers.look_at``):

- ``ours``: ``Capture._packets_of`` on each batch, what ``Capture.packets()`` runs (the copy
  of the batch, C's rows, one object and one slice per packet);
- ``peer walk``: ``consumers.nflog_fields`` on each record's body (pcapy-parse's Python side);
  the bodies are sliced beforehand, as libpcap hands them to pcapy, which favours the peer;
- ``peer walk + objects``: the same walk, its fields and the record header's values set on a
  slotted object per packet: what a peer that hands out packets, as we do, would pay;
- ``file parser``: ``iter_records`` (lazy ``Packet``s, the pure-Python TLV walk).

The figure is the best of ``--repeats`` interleaved runs, in µs per packet, and the ratio
to ours; ``--json`` prints every repeat instead (``benchmarks/run.py`` judges the iterator's
Python-side target from it). Needs the compiled core, not root.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_writer import make_ring  # benchmarks/ is not a package
from consumers import look_at, nflog_fields

from ipsec_nflog.nflog.codec import walk_records
from ipsec_nflog.nflog.packet import iter_records


class PeerPacket:
    """What a peer handing out packets would make per packet: the fields ours has ready."""

    __slots__ = ("hook", "orig_len", "payload", "prefix", "raw", "ts_sec", "ts_usec")

    def __init__(self, header: tuple[int, int, int, int], raw: bytes) -> None:
        self.ts_sec, self.ts_usec, _, self.orig_len = header
        self.raw = raw
        self.payload, self.prefix, self.hook = nflog_fields(raw)


def peer_records(runs: Iterable[memoryview]) -> list[tuple[tuple[int, int, int, int], bytes]]:
    """(record header, body) of each record, as libpcap hands them to pcapy."""
    return [((sec, usec, caplen, olen), bytes(run[body : body + caplen]))
            for run in runs for sec, usec, caplen, olen, body in walk_records(run)]


def peer_walk(records: list[tuple[tuple[int, int, int, int], bytes]]) -> int:
    """Packets walked; payload, prefix and hook looked at as ``look_at`` does."""
    packets = payload_bytes = 0
    for _, body in records:
        payload, prefix, hook = nflog_fields(body)
        if payload is not None:
            payload_bytes += len(payload)
        _ = prefix, hook
        packets += 1
    return packets


def peer_objects(records: list[tuple[tuple[int, int, int, int], bytes]]
                 ) -> Iterator[PeerPacket]:
    for header, body in records:
        yield PeerPacket(header, body)


def measure(runs: dict[str, Callable[[], int]], repeats: int, packets: int
            ) -> dict[str, list[float]]:
    """µs per packet of each run in each of ``repeats`` rounds, the runs interleaved."""
    us: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run()
            us[name].append((time.perf_counter() - t0) / packets * 1e6)
    return us


def table(best: dict[str, float], ours: str = "ours") -> str:
    lines = ["| Python side, per packet | µs/packet (best) | ratio to ours |",
             "|---|---:|---:|"]
    lines += [f"| {name} | {us:.3f} | {us / best[ours]:.2f}x |" for name, us in best.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packets", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=1000, help="records per batch")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", action="store_true",
                    help="print {row: [µs per packet of each repeat]} instead of the table")
    args = ap.parse_args(argv)
    if args.packets < 1 or args.batch < 1 or args.repeats < 1:
        ap.error("--packets, --batch and --repeats must be positive")

    from ipsec_nflog.capture.config import CaptureConfig
    from ipsec_nflog.capture.live import Capture

    batches, _ = make_ring(args.packets, 64, args.batch)
    records = peer_records([buf for buf, _ in batches])

    def over_batches(each: Callable[[memoryview, int], Iterable[object]]) -> Callable[[], int]:
        return lambda: sum(look_at(each(buf, n))[0] for buf, n in batches)

    with Capture._offline(CaptureConfig(groups=(1,))) as cap:
        runs: dict[str, Callable[[], int]] = {
            "ours": over_batches(lambda buf, n: cap._packets_of(buf.tobytes(), n)),
            "peer walk": lambda: peer_walk(records),
            "peer walk + objects": lambda: look_at(peer_objects(records))[0],
            "file parser": over_batches(lambda buf, n: iter_records(buf)),
        }
        for name, run in runs.items():
            if run() != args.packets:
                raise SystemExit(f"{name} did not see every packet")
        us = measure(runs, args.repeats, args.packets)
    if args.json:
        print(json.dumps(us))
        return 0
    best = {name: min(v) for name, v in us.items()}
    print(f"{args.packets} records of 64-byte UDP payloads in batches of {args.batch}; "
          f"best of {args.repeats} interleaved runs\n")
    print(table(best))
    return 0


if __name__ == "__main__":
    sys.exit(main())
