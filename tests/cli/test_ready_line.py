"""The ready line: like tcpdump's "listening on ...", printed once every group is bound and
every rule is in, so a script can wait for it and then send, and nothing is lost."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ipsec_nflog.files import read_capture

pytestmark = pytest.mark.privileged

SCRIPT = r"""
set -u
"$PY" -m ipsec_nflog capture --netns "$NS" -g 81 --rules all --backend "$BACKEND" \
    -w "$OUT" 2> "$ERR" &
pid=$!
for _ in $(seq 400); do grep -q '^listening on' "$ERR" && break; sleep 0.05; done
grep -q '^listening on' "$ERR" || { echo "no ready line" >&2; kill -TERM $pid; exit 1; }
ip netns exec "$NS" bash -c 'for i in $(seq 50); do echo ready-$i > /dev/udp/127.0.0.1/500; done'
sleep 0.3
kill -INT $pid
wait $pid
"""


@pytest.mark.parametrize("backend", ["nft", "iptables"])
def test_a_script_waits_for_the_ready_line_then_sends(netns: str, tmp_path: Path,
                                                      backend: str) -> None:
    out, err = tmp_path / "ready.pcap", tmp_path / "stderr"
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PY": sys.executable, "NS": netns,
           "OUT": str(out), "ERR": str(err), "BACKEND": backend}
    r = subprocess.run(["bash", "-c", SCRIPT], env=env, capture_output=True, text=True,
                       timeout=90)
    log = err.read_text()
    assert r.returncode == 0, r.stderr + log
    ready = [line for line in log.splitlines() if line.startswith("listening on")]
    assert ready == [f"listening on nflog:81 in network namespace {netns}, link-type NFLOG "
                     f"(Linux netfilter log messages), snapshot length 65531 bytes, rules all "
                     f"via {backend}"]
    assert log.index("installed all rules") < log.index("listening on")
    sent = [p for p in read_capture(out) if p.hook_name == "OUTPUT"]
    assert len(sent) == 50
    assert sorted(p.ip.data.data for p in sent) == sorted(b"ready-%d\n" % i
                                                          for i in range(1, 51))
