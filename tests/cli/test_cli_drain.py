"""The end of a capture: the final drain takes what the ring holds, within ``-c``, through
``Capture.drain_batches`` (the one drain loop, also under ``drain_into``)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from ipsec_nflog import Capture
from ipsec_nflog.cli.capture_loop import capture_loop
from ipsec_nflog.cli.parser import build_parser
from ipsec_nflog.files.writer import open_writer, read_capture
from ipsec_nflog.system.signals import StopSignals
from tests.capture.test_capture import nflog_rule, send_udp, wait_received

pytestmark = pytest.mark.privileged


def test_drain_batches_stops_at_max_packets(netns: str, tmp_path: Path) -> None:
    nflog_rule(netns, "OUTPUT", 6810, 52, prefix="limit")
    with Capture(groups=[52], netns=netns) as cap:
        send_udp(netns, "127.0.0.1", 6810, [b"l%d" % i for i in range(30)])
        cap.stop()
        assert cap.pending()[0] == 30
        taken = [b.count for b in cap.drain_batches(max_packets=7)]
        assert sum(taken) == 7
        assert cap.pending()[0] == 23
        with open_writer(tmp_path / "rest.pcap") as w:
            assert cap.drain_into(w) == 23
        assert list(cap.drain_batches()) == []
    assert len(list(read_capture(tmp_path / "rest.pcap"))) == 23


@pytest.mark.parametrize("to_file", [True, False], ids=["file", "lines"])
def test_a_signal_before_the_loop_drains_the_ring_within_count(
        netns: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        to_file: bool) -> None:
    """SIGINT came before the first read: the loop reads nothing live, and the drain takes
    exactly -c of the 30 records waiting, to the file or as lines."""
    out = tmp_path / "c.pcap"
    args = build_parser().parse_args(
        ["capture", "-g", "53", "--netns", netns, "-c", "12", "-q",
         *(["-w", str(out)] if to_file else [])])
    nflog_rule(netns, "OUTPUT", 6811, 53, prefix="count")
    with StopSignals() as stop, Capture(groups=[53], netns=netns) as cap:
        send_udp(netns, "127.0.0.1", 6811, [b"c%d" % i for i in range(30)])
        wait_received(cap, 30)
        signal.raise_signal(signal.SIGINT)
        assert stop.name == "SIGINT"
        assert capture_loop(args, cap, stop) == 0
        assert cap.pending()[0] == 30 - 12
    printed = capsys.readouterr().out.splitlines()
    if to_file:
        assert [p.prefix for p in read_capture(out)] == ["count"] * 12
        assert printed == []
    else:
        assert len(printed) == 12 and all("count" in line for line in printed), printed
