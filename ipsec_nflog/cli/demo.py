"""A real capture in throwaway network namespaces: the README's first command.

Two namespaces (a "gateway" and a "peer") joined by a veth pair. The gateway gets the
article's NFLOG rules for ingress and egress IKE/ESP traffic; the peer and the gateway
exchange IKE-shaped UDP on 500/4500, raw ESP (IP protocol 50) and ESP-in-UDP, plus plain
traffic the rules must ignore. The capture writes a pcap, prints every packet, the stats,
and then everything it created is removed again.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
from typing import TextIO

from ipsec_nflog.capture.live import Capture
from ipsec_nflog.files.writer import open_writer
from ipsec_nflog.nflog.summary import summarize
from ipsec_nflog.rules import installed
from ipsec_nflog.system.netns import create_netns, delete_netns, run_cmd, run_in_netns

GW, PEER = "10.199.0.1", "10.199.0.2"


def _ike_sa_init(spi: int, response: bool) -> bytes:
    flags = 0x20 if response else 0x08
    return struct.pack(">QQBBBBII", spi, 0 if not response else spi + 1, 33, 0x20, 34, flags,
                       0, 28)


def _esp(spi: int, seq: int) -> bytes:
    return struct.pack(">II", spi, seq) + os.urandom(48)


def _send_traffic(src_ns: str, dst: str, spi: int, response: bool) -> int:
    """IKE on 500, IKE on 4500 (non-ESP marker), ESP-in-UDP, raw ESP, and one plain UDP
    packet that no rule matches. Returns how many packets the rules should catch."""

    def send() -> None:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.sendto(_ike_sa_init(spi, response), (dst, 500))
            u.sendto(b"\0\0\0\0" + _ike_sa_init(spi, response), (dst, 4500))
            u.sendto(_esp(spi, 1), (dst, 4500))
            u.sendto(b"not ipsec", (dst, 9999))
        finally:
            u.close()
        r = socket.socket(socket.AF_INET, socket.SOCK_RAW, 50)
        try:
            r.sendto(_esp(spi, 2), (dst, 0))
        finally:
            r.close()

    run_in_netns(src_ns, send)
    return 4


def run_demo(path: str = "ipsec-nflog-demo.pcap", group: int = 5,
             out: TextIO = sys.stdout) -> int:
    tag = f"{os.getpid()}"
    gw_ns, peer_ns = f"ipnf-demo-gw-{tag}", f"ipnf-demo-peer-{tag}"
    made: list[str] = []
    try:
        for ns in (gw_ns, peer_ns):
            made.append(create_netns(ns))
        veth_a, veth_b = f"ipnfd{tag}a"[:15], f"ipnfd{tag}b"[:15]
        run_cmd(["ip", "link", "add", veth_a, "type", "veth", "peer", "name", veth_b])
        for ns, dev, addr in ((gw_ns, veth_a, GW), (peer_ns, veth_b, PEER)):
            run_cmd(["ip", "link", "set", dev, "netns", ns, "name", "eth0"])
            run_cmd(["ip", "addr", "add", f"{addr}/24", "dev", "eth0"], netns=ns)
            run_cmd(["ip", "link", "set", "eth0", "up"], netns=ns)
        print(f"namespaces {gw_ns} ({GW}) and {peer_ns} ({PEER}), NFLOG group {group}",
              file=out)
        with installed("ike-esp-in", group=group, prefix="ike-esp-in", netns=gw_ns), \
                installed("ike-esp-out", group=group, prefix="ike-esp-out", netns=gw_ns), \
                Capture(groups=[group], netns=gw_ns) as cap, \
                open_writer(path, overwrite=True) as writer:
            expected = _send_traffic(gw_ns, PEER, 0x1000, response=False)
            expected += _send_traffic(peer_ns, GW, 0x2000, response=True)
            got = 0
            while got < expected:
                batch = cap.read_batch(timeout=3)
                if batch is None:
                    break
                writer.write_records(batch.data, batch.count)
                for pkt in batch:
                    print(summarize(pkt), file=out)
                got += batch.count
            st = cap.stats()
            writer.close(stats=st)
        print("('~' after the time: the kernel sends no timestamp on OUTPUT, so the receive "
              "time stands in)", file=out)
        print(f"\n{got} packets captured (expected {expected}); {st.drop_summary()}", file=out)
        print(f"wrote {path} (mode {os.stat(path).st_mode & 0o777:o}); read it with "
              f"'tcpdump -r {path}' or 'ipsec-nflog read {path}'", file=out)
        return 0 if got == expected and not st.lossy else 1
    finally:
        for ns in reversed(made):
            delete_netns(ns)
        print("removed the namespaces and their rules", file=out)
