"""Issue 11 in the tier-1 VM, with real kernel ESP and the DEFAULT capture settings: every
esp-out (a request, its stamp synthesized: the kernel sends none on OUTPUT) is stamped before
the esp-in of its reply, IPv4 tunnel mode and IPv6 transport mode; and a script that waits for
the ready line and then sends loses nothing.

Requests and replies are paired by the ICMP echo sequence number inside the ESP, decrypted
with the SAs' keys (``ip xfrm state``). Collected only inside the VM (tests/vm/conftest.py).
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dpkt
import pytest

from ipsec_nflog import Capture, rules
from ipsec_nflog.files import read_capture
from ipsec_nflog.files.writer import open_writer
from ipsec_nflog.ipsec import keys
from ipsec_nflog.ipsec.decrypt import EspDecryptor
from ipsec_nflog.testing.lab import NetnsPair
from tests.support import nstools
from tests.vm import nflog_rules
from tests.vm.guest.conftest import Topo

pytestmark = [pytest.mark.privileged, pytest.mark.kernel]

PINGS = 20
XCHG = os.environ.get("IPNF_XCHG")


@dataclass(frozen=True)
class Echo:
    """One ESP packet of the capture, decrypted: which echo it carries and when."""

    hook: str
    kind: str                  # "request" / "reply"
    seq: int                   # ICMP echo sequence number
    timestamp: float
    synthesized: bool


def decrypted_echoes(pcap: Path, sas: list[keys.EspSa]) -> list[Echo]:
    dec = EspDecryptor(sas)
    out = []
    for pkt in read_capture(pcap):
        r = dec.decrypt(pkt.payload or b"")
        assert r is not None and r.ok and r.icv_ok, (pkt.hook_name, r)
        icmp = r.inner_ip.data
        if isinstance(icmp, dpkt.icmp.ICMP):
            kind = {8: "request", 0: "reply"}[icmp.type]
        else:
            assert isinstance(icmp, dpkt.icmp6.ICMP6), icmp
            kind = {128: "request", 129: "reply"}[icmp.type]
        seq = int.from_bytes(bytes(icmp.data)[2:4], "big")
        out.append(Echo(str(pkt.hook_name), kind, seq, pkt.timestamp,
                        bool(pkt.timestamp_synthesized)))
    return out


def assert_requests_before_replies(echoes: list[Echo], n: int) -> list[float]:
    """Every request (OUTPUT, synthesized) before its reply (PREROUTING, kernel stamp);
    returns reply - request per echo, in seconds."""
    req = {e.seq: e for e in echoes if e.kind == "request"}
    rep = {e.seq: e for e in echoes if e.kind == "reply"}
    assert sorted(req) == sorted(rep) == list(range(1, n + 1)), echoes
    assert {(e.hook, e.synthesized) for e in req.values()} == {("OUTPUT", True)}
    assert {(e.hook, e.synthesized) for e in rep.values()} == {("PREROUTING", False)}
    late = [(s, req[s].timestamp - rep[s].timestamp) for s in req
            if not req[s].timestamp < rep[s].timestamp]
    assert not late, f"esp-out stamped after the esp-in of its reply (seq, seconds): {late}"
    return [rep[s].timestamp - req[s].timestamp for s in sorted(req)]


def capture_default(ns: str, group: int, pcap: Path, send: list[str]) -> None:
    """The default CaptureConfig (kernel batching, 100 ms flush), written to a pcap file."""
    with Capture(groups=[group], netns=ns) as cap:
        nstools.run(send, ns=ns, timeout=120)
        cap.stop()
        with open_writer(pcap, "pcap") as w:
            cap.drain_into(w)
        assert cap.stats().dropped == 0


def _report(name: str, gaps: list[float]) -> None:
    line = (f"{name}: {len(gaps)} echoes, reply - request median "
            f"{statistics.median(gaps) * 1e3:.3f} ms, min {min(gaps) * 1e3:.3f} ms\n")
    print(line, end="")
    if XCHG:
        with open(Path(XCHG, "esp-order.txt"), "a") as f:
            f.write(line)


def test_ipv4_tunnel_esp_out_is_stamped_before_the_esp_in_of_its_reply(
        topo: Topo, tmp_path: Path) -> None:
    t, pcap = topo, tmp_path / "order4.pcap"
    with nflog_rules.installed("ike-esp-out", group=20, netns=t.a), \
            nflog_rules.installed("ike-esp-in", group=20, netns=t.a):
        capture_default(t.a, 20, pcap, ["ping", "-n", "-q", "-c", str(PINGS), "-i", "0.05",
                                        "-W", "3", "-I", t.a_in, t.b_in])
    echoes = decrypted_echoes(pcap, keys.read_xfrm_state(t.a))
    _report("ipv4 tunnel", assert_requests_before_replies(echoes, PINGS))


# ---- IPv6 transport mode -------------------------------------------------------------------

@pytest.fixture(scope="module")
def v6_transport() -> Iterator[NetnsPair]:
    """a (fd99::1) <-> b (fd99::2), ESP transport mode (AES-CBC + HMAC-SHA256-128) for ICMPv6
    echoes only, so neighbour discovery stays in the clear."""
    if os.environ.get("IPSEC_NFLOG_IN_VM") != "1":
        pytest.skip("runs inside the tier-1 VM only")
    with NetnsPair(("t6a", "t6b")) as lab:
        assert lab.a6 and lab.b6
        sas = [(lab.a6, lab.b6, 0x6001, "11"), (lab.b6, lab.a6, 0x6002, "22")]
        for ns in lab.namespaces:
            for src, dst, spi, k in sas:
                lab.run(ns, ["ip", "xfrm", "state", "add", "src", src, "dst", dst, "proto",
                             "esp", "spi", hex(spi), "reqid", "6", "mode", "transport",
                             "enc", "cbc(aes)", "0x" + k * 16, "auth-trunc", "hmac(sha256)",
                             "0x" + k * 32, "128"])
        for ns, here, there in ((lab.a, lab.a6, lab.b6), (lab.b, lab.b6, lab.a6)):
            for direction, src, dst in (("out", here, there), ("in", there, here)):
                for icmp_type in ("128", "129"):
                    lab.run(ns, ["ip", "xfrm", "policy", "add", "src", src, "dst", dst,
                                 "proto", "ipv6-icmp", "type", icmp_type, "dir", direction,
                                 "tmpl", "proto", "esp", "reqid", "6", "mode", "transport"])
        yield lab


def test_ipv6_transport_esp_out_is_stamped_before_the_esp_in_of_its_reply(
        v6_transport: NetnsPair, tmp_path: Path) -> None:
    lab, pcap = v6_transport, tmp_path / "order6.pcap"
    assert lab.b6
    with rules.installed("ike-esp-out", group=21, netns=lab.a, family="ipv6"), \
            rules.installed("ike-esp-in", group=21, netns=lab.a, family="ipv6"):
        capture_default(lab.a, 21, pcap, ["ping", "-6", "-n", "-q", "-c", str(PINGS), "-i",
                                          "0.05", "-W", "3", lab.b6])
    echoes = decrypted_echoes(pcap, keys.read_xfrm_state(lab.a))
    _report("ipv6 transport", assert_requests_before_replies(echoes, PINGS))


# ---- the ready line --------------------------------------------------------------------------

READY_SCRIPT = r"""
set -u
"$PY" -m ipsec_nflog capture --netns "$NS" -g 22 --rules all -w "$OUT" 2> "$ERR" &
pid=$!
for _ in $(seq 1200); do grep -q '^listening on' "$ERR" && break; sleep 0.05; done
grep -q '^listening on' "$ERR" || { echo "no ready line" >&2; kill -TERM $pid; exit 1; }
ip netns exec "$NS" ping -n -q -c "$COUNT" -i 0.05 -W 3 -I "$SRC" "$DST" > "$PING"
kill -INT $pid
wait $pid
"""


def test_a_script_waits_for_the_ready_line_then_sends_esp_and_nothing_is_lost(
        topo: Topo, tmp_path: Path) -> None:
    """``--rules all``: each echo is seen four times (esp-out, esp-in, and the plaintext of
    both at decap); a background job of a non-interactive shell, stopped with SIGINT right
    after the last reply."""
    t = topo
    out, err, ping_out = tmp_path / "ready.pcap", tmp_path / "stderr", tmp_path / "ping"
    env = {"PATH": os.environ["PATH"], "PY": sys.executable, "NS": t.a, "OUT": str(out),
           "ERR": str(err), "PING": str(ping_out), "COUNT": str(PINGS), "SRC": t.a_in,
           "DST": t.b_in}
    r = subprocess.run(["sh", "-c", READY_SCRIPT], env=env, capture_output=True, text=True,
                       timeout=300)
    log = err.read_text()
    assert r.returncode == 0, r.stderr + log
    ready = [line for line in log.splitlines() if line.startswith("listening on")]
    assert len(ready) == 1 and re.fullmatch(
        rf"listening on nflog:22 in network namespace {t.a}, link-type NFLOG \(Linux "
        r"netfilter log messages\), snapshot length \d+ bytes, rules all via \S+",
        ready[0]), log
    stats = re.search(r"(\d+) packets transmitted, (\d+) received", ping_out.read_text())
    assert stats and stats.groups() == (str(PINGS), str(PINGS)), ping_out.read_text()
    seen: dict[tuple[str, int], int] = {}
    for pkt in read_capture(out):
        key = (str(pkt.hook_name), pkt.payload[9] if pkt.payload else -1)
        seen[key] = seen.get(key, 0) + 1
    # ESP (50) out and in, the plaintext ICMP (1) before encapsulation and after decap
    assert seen == {("OUTPUT", 50): PINGS, ("PREROUTING", 50): PINGS,
                    ("POSTROUTING", 1): PINGS, ("PREROUTING", 1): PINGS}, (seen, log)
