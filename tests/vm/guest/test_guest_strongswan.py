"""strongSwan IKEv2 with kernel IPsec (kernel-netlink, real XFRM SAs) inside the tier-1 VM.

The SAs come from a real IKE exchange: the IKE presets see IKE on port 500 and plain ESP
(protocol 50, no NAT so no UDP encapsulation), decap sees the plaintext both ways, the keys
charon logs are the keys the kernel holds, and tshark decrypts our capture with them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ipsec_nflog import Capture
from ipsec_nflog.ipsec import keys
from tests.support.strongswan import (
    IKE_AUTH,
    IKE_SA_INIT,
    INFORMATIONAL,
    Seen,
    StrongswanPair,
    check_installed,
    classify,
    strongswan_pair,
)
from tests.vm import nflog_rules

pytestmark = [pytest.mark.privileged, pytest.mark.kernel, pytest.mark.strongswan]

N = 3
PREROUTING, OUTPUT, POSTROUTING = 0, 3, 4
XCHG = os.environ.get("IPNF_XCHG")


class Run:
    pair: StrongswanPair
    got: dict[int, list[Seen]]
    pcap: Path
    xfrm_text: str
    xfrm: list[keys.EspSa]
    establish_seconds: float


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    if os.environ.get("IPSEC_NFLOG_IN_VM") != "1":
        pytest.skip("runs inside the tier-1 VM only")
    problem = check_installed(libipsec=False)
    if problem:
        pytest.fail(problem) if os.environ.get("IPSEC_NFLOG_REQUIRE_PRIVILEGED") == "1" \
            else pytest.skip(problem)
    from ipsec_nflog.files.writer import open_writer

    r = Run()
    r.pcap = tmp_path_factory.mktemp("swan") / "kernel-ike.pcap"
    with strongswan_pair(libipsec=False) as pair:
        ns = pair.left.ns
        r.pair = pair
        r.got = {1: [], 2: [], 3: []}
        with nflog_rules.installed("ike-esp-out", group=1, netns=ns), \
                nflog_rules.installed("ike-esp-in", group=2, netns=ns), \
                nflog_rules.installed("decap", group=3, netns=ns), \
                Capture(groups=[1, 2, 3], netns=ns) as cap:
            r.establish_seconds = pair.initiate(timeout=60)
            r.xfrm_text = subprocess.run(["ip", "-n", ns, "xfrm", "state"], check=True,
                                         capture_output=True, text=True).stdout
            r.xfrm = keys.parse_xfrm_state(r.xfrm_text)
            pair.ping(N, timeout=60)
            pair.terminate(timeout=30)
            cap.stop()
            w = open_writer(r.pcap, "pcap")
            try:
                while (b := cap.read_batch(timeout=0)) is not None:
                    w.write_batch(b)
                    for pkt in b:
                        r.got[pkt.group].append(classify(pkt))
                    b.release()
            finally:
                w.close()
        if XCHG:
            Path(XCHG, "strongswan-establish-seconds").write_text(f"{r.establish_seconds:.2f}\n")
            Path(XCHG, "keys_xfrm_state_strongswan.txt").write_text(r.xfrm_text)
            for p, role in ((pair.left, "initiator"), (pair.right, "responder")):
                shutil.copyfile(p.log, Path(XCHG, f"keys_kernel_charon_{role}.log"))
        yield r


def _spis(r: Run) -> tuple[int, int]:
    left = r.pair.left
    out = [s.spi for s in r.xfrm if s.src == left.addr]
    inb = [s.spi for s in r.xfrm if s.dst == left.addr]
    assert len(out) == len(inb) == 1, r.xfrm_text
    return out[0], inb[0]


def test_ike_presets_see_ike_on_500_and_plain_esp(run: Run) -> None:
    left, right = run.pair.left, run.pair.right
    spi_out, spi_in = _spis(run)
    out, inb = run.got[1], run.got[2]
    assert [(s.kind, s.exchange, s.response, s.dport) for s in out if s.kind == "ike"] == [
        ("ike", IKE_SA_INIT, False, 500), ("ike", IKE_AUTH, False, 500),
        ("ike", INFORMATIONAL, False, 500)]
    assert [(s.spi, s.seq) for s in out if s.kind == "esp"] == [
        (spi_out, i) for i in range(1, N + 1)]
    assert [s.kind for s in out] == ["ike", "ike"] + ["esp"] * N + ["ike"]
    assert all(s.hook == OUTPUT and (s.src, s.dst) == (left.addr, right.addr) for s in out)
    assert [(s.spi, s.seq) for s in inb if s.kind == "esp"] == [
        (spi_in, i) for i in range(1, N + 1)]
    assert [s.kind for s in inb] == ["ike", "ike"] + ["esp"] * N + ["ike"]
    assert all(s.hook == PREROUTING and s.response for s in inb if s.kind == "ike")


def test_decap_sees_the_plaintext_of_the_negotiated_sa(run: Run) -> None:
    left, right = run.pair.left, run.pair.right
    got = run.got[3]
    assert [(s.hook, s.icmp_type, s.src, s.dst, s.seq) for s in got
            if s.hook == POSTROUTING] == [
        (POSTROUTING, 8, left.inner, right.inner, i) for i in range(1, N + 1)]
    assert [(s.hook, s.icmp_type, s.src, s.dst, s.seq) for s in got
            if s.hook == PREROUTING] == [
        (PREROUTING, 0, right.inner, left.inner, i) for i in range(1, N + 1)]
    assert len(got) == 2 * N


def test_keys_logged_by_charon_are_the_keys_in_the_kernel(run: Run) -> None:
    def norm(sas: list[keys.EspSa]) -> set[Any]:
        return {(s.src, s.dst, s.spi, s.encryption, s.encryption_key, s.integrity,
                 s.integrity_key) for s in sas}

    for peer in run.pair.peers():
        found = keys.parse_charon_log(peer.log.read_text(errors="replace"))
        assert found.warnings == []
        assert norm(found.esp) == norm(run.xfrm)
        assert len(found.ike) == 1 and found.ike[0].complete


def test_tshark_decrypts_esp_and_ike_of_our_capture(run: Run) -> None:
    if shutil.which("tshark") is None:
        pytest.skip("needs tshark")
    found = keys.parse_charon_log(run.pair.left.log.read_text(errors="replace"))
    r = subprocess.run(["tshark", "-n", "-r", str(run.pcap),
                        *keys.tshark_options(esp=run.xfrm, ike=found.ike),
                        "-T", "fields", "-E", "separator=|", "-e", "esp.spi", "-e",
                        "esp.icv_good", "-e", "icmp.type", "-e", "isakmp.exchangetype", "-e",
                        "isakmp.enc.decrypted"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = [line.split("|") for line in r.stdout.splitlines()]
    esp = [x for x in rows if x[0]]
    assert len(esp) == 2 * N and all(x[1] == "1" and x[2] in ("0", "8") for x in esp), rows
    enc = [x for x in rows if x[3] in (str(IKE_AUTH), str(INFORMATIONAL))]
    assert len(enc) == 4 and all(x[4] for x in enc), rows


def test_established_quickly(run: Run) -> None:
    assert run.establish_seconds < 30, run.establish_seconds
