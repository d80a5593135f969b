"""The adaptive queue threshold of ``--low-latency`` (``CaptureConfig.latency_budget``):
one packet per netlink message while the rate is low, kernel batches that fill within the
budget under load, and back to one packet per message once the load is gone."""

from __future__ import annotations

import socket
import struct
import time

import pytest

from ipsec_nflog import Capture
from ipsec_nflog.capture.config import (
    LATENCY_BUDGET_MAX,
    LOW_LATENCY_BUDGET,
    QTHRESHOLD_ADAPT_MAX,
    CaptureConfig,
)
from tests.capture.test_capture import nflog_rule, wait_received
from tests.support import nstools


@pytest.mark.parametrize("bad", [-1e-6, LATENCY_BUDGET_MAX * 2, True, "1"])
def test_latency_budget_is_validated(bad: object) -> None:
    with pytest.raises(ValueError, match="latency_budget"):
        CaptureConfig(groups=(1,), qthreshold=1, flush_timeout=0,
                      latency_budget=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("kw", [{"flush_timeout": 0.1}, {"qthreshold": 1000}])
def test_latency_budget_needs_an_immediate_kernel_flush(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="latency_budget needs flush_timeout 0"):
        CaptureConfig(**{"groups": (1,), "qthreshold": 1, "flush_timeout": 0,
                         "latency_budget": 1e-4, **kw})  # type: ignore[arg-type]
    # low_latency() with such an override keeps its threshold fixed instead of failing.
    assert CaptureConfig.low_latency([1], **kw).latency_budget == 0


def test_low_latency_adapts_and_the_limits_match_the_core() -> None:
    assert CaptureConfig.low_latency([3]).latency_budget == LOW_LATENCY_BUDGET
    assert CaptureConfig(groups=(3,)).latency_budget == 0
    lib = pytest.importorskip("ipsec_nflog.capture._native").lib
    assert round(LATENCY_BUDGET_MAX * 1e6) == lib.NFC_LATENCY_BUDGET_US_MAX
    assert QTHRESHOLD_ADAPT_MAX == lib.NFC_QTHRESH_ADAPT_MAX


def _flood(ns: str, port: int, n: int) -> None:
    s = nstools.ns_socket(ns, socket.AF_INET)
    try:
        for i in range(n):
            s.sendto(struct.pack("=I", i), ("127.0.0.1", port))
    finally:
        s.close()


@pytest.mark.privileged
def test_threshold_rises_under_load_and_falls_when_quiet(netns: str) -> None:
    nflog_rule(netns, "OUTPUT", 6950, 61)
    # A 1 ms budget: even a slow machine's Python sender fills batches of several packets.
    cfg = CaptureConfig.low_latency([61], netns=netns, latency_budget=0.001)
    with Capture(config=cfg) as cap:
        n = 40000
        _flood(netns, 6950, n)
        wait_received(cap, n)
        g = cap.stats().groups[61]
        assert g.received_packets == n and g.dropped_packets == 0 and not g.lossy
        assert g.netlink_errors == 0
        assert g.qthreshold_peak >= 4  # the kernel batched under load...
        assert g.datagrams < n / 2  # ...so there were far fewer messages than packets
        # Quiet: the reader notices within a few windows and goes back to one per message.
        deadline = time.monotonic() + 5
        while cap.stats().groups[61].qthreshold != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert cap.stats().groups[61].qthreshold == 1
        before = cap.stats().groups[61].datagrams
        s = nstools.ns_socket(netns, socket.AF_INET)
        try:
            for i in range(5):
                s.sendto(b"slow-%d" % i, ("127.0.0.1", 6950))
                time.sleep(0.02)
        finally:
            s.close()
        wait_received(cap, n + 5)
        g = cap.stats().groups[61]
        assert g.received_packets == n + 5
        assert g.datagrams - before == 5  # each slow packet in a message of its own
        cap.stop()
        assert sum(b.count for b in cap.drain_batches()) == n + 5


@pytest.mark.privileged
def test_stopping_under_load_loses_nothing_and_sends_no_late_change(netns: str) -> None:
    nflog_rule(netns, "OUTPUT", 6951, 62)
    cfg = CaptureConfig.low_latency([62], netns=netns, latency_budget=0.001)
    with Capture(config=cfg) as cap:
        n = 20000
        _flood(netns, 6951, n)
        cap.stop()  # at once: the kernel may still hold a raised threshold's batch
        got = sum(b.count for b in cap.drain_batches())
        g = cap.stats().groups[62]
        assert got == g.received_packets == n and g.dropped_packets == 0
        assert g.netlink_errors == 0  # no qthreshold change reached an unbound group
