"""Hand-over batching (``CaptureConfig.handover_delay``): the reader wakes the consumer once
per several kernel batches, never later than the delay, and at once when stopping."""

from __future__ import annotations

import select
import time

import pytest

from ipsec_nflog import Capture
from ipsec_nflog.capture.config import HANDOVER_DELAY_MAX, CaptureConfig
from tests.capture.test_capture import nflog_rule, send_udp, wait_received


@pytest.mark.parametrize("bad", [-0.1, HANDOVER_DELAY_MAX + 0.5, True, "1"])
def test_handover_delay_is_validated(bad: object) -> None:
    with pytest.raises(ValueError, match="handover_delay"):
        CaptureConfig(groups=(1,), handover_delay=bad)  # type: ignore[arg-type]


def test_handover_limit_matches_the_core() -> None:
    lib = pytest.importorskip("ipsec_nflog.capture._native").lib
    assert round(HANDOVER_DELAY_MAX * 1000) == lib.NFC_HANDOVER_MS_MAX


@pytest.mark.privileged
def test_records_wait_for_the_handover_delay_then_come_together(netns: str) -> None:
    nflog_rule(netns, "OUTPUT", 6900, 52)
    # The kernel sends every packet at once, so any waiting is the hand-over's.
    with Capture(groups=[52], netns=netns, qthreshold=1, flush_timeout=0,
                 handover_delay=0.4) as cap:
        t0 = time.monotonic()
        send_udp(netns, "127.0.0.1", 6900, [b"h1", b"h2", b"h3"])
        wait_received(cap, 3)
        assert cap.pending()[0] == 3  # in the ring, three kernel datagrams
        assert select.select([cap], [], [], 0.1)[0] == []  # not handed over yet
        assert select.select([cap], [], [], 2)[0] == [cap]
        assert time.monotonic() - t0 >= 0.35
        batch = cap.read_batch(timeout=0)
        assert batch is not None and batch.count == 3  # one wakeup for all of them
        batch.release()
        assert select.select([cap], [], [], 0)[0] == []


@pytest.mark.privileged
def test_stop_hands_over_at_once(netns: str) -> None:
    nflog_rule(netns, "OUTPUT", 6901, 53)
    with Capture(groups=[53], netns=netns, qthreshold=1, flush_timeout=0,
                 handover_delay=1.0) as cap:
        send_udp(netns, "127.0.0.1", 6901, [b"s1", b"s2"])
        wait_received(cap, 2)
        t0 = time.monotonic()
        cap.stop()
        got = sum(b.count for b in cap.drain_batches())
        assert got == 2
        assert time.monotonic() - t0 < 0.8  # did not sit out the 1 s delay
