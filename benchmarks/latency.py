"""How late are the timestamps of OUTPUT packets? The kernel sends no NFULA_TIMESTAMP on
OUTPUT/POSTROUTING, so the receive time stands in, and kernel batching (qthreshold, flush
timeout) delays the receive. This measures that lag for the default (batched) settings and for
CaptureConfig.low_latency(). For the CPU side of the trade-off, run
``benchmarks/run.py --tools cli,cli-lowlat``.

    sudo .venv/bin/python benchmarks/latency.py [--packets 400] [--rate 2000]

Each packet carries its send time; lag = record timestamp - send time. Traffic stays on the
loopback of a throwaway namespace, which is deleted afterwards.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import struct
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ipsec_nflog import Capture, CaptureConfig
from ipsec_nflog.system.netns import create_netns, delete_netns, run_cmd, run_in_netns

GROUP, PORT = 33, 9333


def measure(ns: str, config: CaptureConfig, packets: int, rate: int) -> dict[str, float]:
    sock = run_in_netns(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    lags: list[float] = []
    with Capture(config=config) as cap:
        gap = 1.0 / rate
        t_next = time.monotonic()
        for _ in range(packets):
            sock.sendto(struct.pack("=d", time.time()) + b"x" * 56, ("127.0.0.1", PORT))
            t_next += gap
            delay = t_next - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        for pkt in cap.packets(count=packets, timeout=5):
            sent = struct.unpack_from("=d", pkt.payload or b"", 28)[0]
            lags.append(pkt.timestamp - sent)
        stats = cap.stats()
    sock.close()
    lags.sort()
    g = stats.groups[GROUP]
    return {
        "captured": len(lags),
        "median_ms": statistics.median(lags) * 1e3,
        "p99_ms": lags[int(len(lags) * 0.99) - 1] * 1e3,
        "max_ms": lags[-1] * 1e3,
        "datagrams_per_packet": g.datagrams / max(1, g.received_packets),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=400)
    ap.add_argument("--rate", type=int, default=2000, help="packets per second")
    a = ap.parse_args()
    ns = f"ipnf-lat-{os.getpid()}"
    create_netns(ns)
    try:
        run_cmd(["iptables", "-A", "OUTPUT", "-p", "udp", "--dport", str(PORT), "-j", "NFLOG",
                 "--nflog-group", str(GROUP)], netns=ns)
        rows = [
            ("default (qthreshold 1000, flush 100 ms, nlbufsiz 128 KiB)",
             CaptureConfig(groups=(GROUP,), netns=ns)),
            ("--low-latency (qthreshold 1, flush 0, nlbufsiz 4 KiB)",
             CaptureConfig.low_latency([GROUP], netns=ns)),
        ]
        print(f"{a.packets} OUTPUT packets at {a.rate} pkt/s; lag = record timestamp - send "
              "time\n")
        print("| settings | captured | lag median | lag p99 | lag max | netlink datagrams "
              "per packet |")
        print("|---|---:|---:|---:|---:|---:|")
        for label, cfg in rows:
            r = measure(ns, cfg, a.packets, a.rate)
            print(f"| {label} | {r['captured']} | {r['median_ms']:.2f} ms | "
                  f"{r['p99_ms']:.2f} ms | {r['max_ms']:.2f} ms | "
                  f"{r['datagrams_per_packet']:.3f} |")
    finally:
        delete_netns(ns)
    return 0


if __name__ == "__main__":
    sys.exit(main())
