"""Outbound packets (OUTPUT/POSTROUTING: the kernel sends no timestamp) in the right time
order with the default batching: a ping's request, stamped at our receive time, must come
before its reply, which carries the kernel's stamp, and the estimate must be close to when
the request was really sent."""

from __future__ import annotations

import socket
import statistics
import struct
import time

import pytest

from ipsec_nflog import Capture
from tests.conftest import VethPair
from tests.support import nstools

pytestmark = pytest.mark.privileged


def _echo(ident: int, seq: int) -> bytes:
    msg = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"t" * 16
    c = sum(struct.unpack(f"!{len(msg) // 2}H", msg))
    c = (c >> 16) + (c & 0xFFFF)
    c += c >> 16
    return msg[:2] + struct.pack("!H", ~c & 0xFFFF) + msg[4:]


def test_requests_are_stamped_before_their_replies(veth_pair: VethPair) -> None:
    a = veth_pair.a
    nstools.run(["iptables", "-A", "OUTPUT", "-p", "icmp", "--icmp-type", "echo-request",
                 "-j", "NFLOG", "--nflog-group", "80"], ns=a)
    nstools.run(["iptables", "-t", "mangle", "-A", "PREROUTING", "-p", "icmp", "--icmp-type",
                 "echo-reply", "-j", "NFLOG", "--nflog-group", "80"], ns=a)
    n = 100
    sent: dict[int, float] = {}
    sock = nstools.ns_socket(a, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    with Capture(groups=[80], netns=a) as cap:  # the default batching
        try:
            for seq in range(n):
                sent[seq] = time.time()
                sock.sendto(_echo(0x4242, seq), (VethPair.b4, 0))
                time.sleep(0.005)
        finally:
            sock.close()
        time.sleep(0.2)
        cap.stop()
        pkts = list(cap.packets(timeout=0))
    requests = {p.ip.data.data.seq: p for p in pkts if p.hook_name == "OUTPUT"}
    replies = {p.ip.data.data.seq: p for p in pkts if p.hook_name == "PREROUTING"}
    assert sorted(requests) == sorted(replies) == list(range(n))
    assert all(p.timestamp_synthesized for p in requests.values())
    assert not any(p.timestamp_synthesized for p in replies.values())
    late = [s for s in range(n) if not requests[s].timestamp < replies[s].timestamp]
    assert not late, f"requests stamped after their replies: {late}"
    errors = [abs(requests[s].timestamp - sent[s]) for s in range(n)]
    assert statistics.median(errors) <= 0.001, f"median error {statistics.median(errors):.6f} s"
