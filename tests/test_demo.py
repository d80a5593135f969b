"""The README's first command runs this demo: it must capture, write and clean up."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from ipsec_nflog.cli.demo import run_demo
from ipsec_nflog.files.writer import read_capture


@pytest.mark.privileged
def test_demo_captures_writes_and_cleans_up(tmp_path: Path) -> None:
    before = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    path = tmp_path / "demo.pcap"
    out = io.StringIO()
    assert run_demo(str(path), group=5, out=out) == 0, out.getvalue()
    text = out.getvalue()
    assert "8 packets captured (expected 8); no drops" in text
    assert "IKE_SA_INIT" in text and "UDP-encap ESP" in text and "ESP(spi=0x00002000" in text
    assert os.stat(path).st_mode & 0o777 == 0o600
    pkts = list(read_capture(str(path)))
    assert len(pkts) == 8
    assert {p.prefix for p in pkts} == {"ike-esp-in", "ike-esp-out"}
    after = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    assert not {n for n in after - before if n.startswith("ipnf-demo-")}
