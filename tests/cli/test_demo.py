"""The README's first command: a real IKEv2 tunnel between two namespaces, its four views
captured, the ESP decrypted with the extracted keys, everything removed again; and the
synthetic fallback, which says that it is one."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from ipsec_nflog.cli.demo import PINGS, run_demo
from ipsec_nflog.files import read_capture
from ipsec_nflog.testing import charon
from ipsec_nflog.testing.classify import classify
from ipsec_nflog.testing.lab import netns_names
from ipsec_nflog.testing.requirements import unavailable
from ipsec_nflog.testing.strongswan import charon_pids


def _mine(names: set[str], pid: int) -> set[str]:
    return {n for n in names if re.search(rf"-{pid}(-|$)", n)}


@pytest.fixture
def strongswan_installed() -> None:
    problem = charon.check_installed(libipsec=True)
    if problem:
        unavailable(f"the real demo needs strongSwan (scripts/install.sh): {problem}")


@pytest.mark.privileged
def test_demo_shows_a_real_tunnel_decrypts_it_and_cleans_up(
        strongswan_installed: None, tmp_path: Path) -> None:
    ns_before, charons_before = netns_names(), set(charon_pids())
    path = tmp_path / "demo.pcap"
    out = io.StringIO()
    assert run_demo(str(path), group=5, out=out) == 0, out.getvalue()
    text = out.getvalue()
    assert "SYNTHETIC" not in text
    for exchange in ("IKE_SA_INIT", "IKE_AUTH", "INFORMATIONAL"):
        assert re.search(rf"ike-esp-out .*IKEv2 {exchange} req .*\[I\]", text), text
        assert re.search(rf"ike-esp-in .*IKEv2 {exchange} resp .*\[R\]", text), text
    assert len(re.findall(r"\.4500 > .*\.4500: UDP-encap ESP\(spi=", text)) == 2 * PINGS
    # the plaintext on ipsec0, and the same packets again out of our own decryption
    assert len(re.findall(r"libipsec +10\.201\.0\.1 > 10\.202\.0\.1: ICMP echo request",
                          text)) == PINGS
    assert len(re.findall(r"\[decrypted spi=0x[0-9a-f]{8} seq=\d\] 10\.201\.0\.1 > "
                          r"10\.202\.0\.1: ICMP echo request", text)) == PINGS
    assert len(re.findall(r"\[decrypted .*ICMP echo reply", text)) == PINGS
    assert (f"{2 * PINGS} of {2 * PINGS} ESP packets decrypted with a good ICV; {2 * PINGS} "
            f"are byte for byte the plaintext captured on ipsec0") in text
    assert f"{6 + 4 * PINGS} packets captured; no drops" in text

    assert os.stat(path).st_mode & 0o777 == 0o600
    pkts = list(read_capture(str(path)))
    kinds = Counter((p.prefix, classify(p).kind) for p in pkts)
    assert kinds == {("ike-esp-out", "ike"): 3, ("ike-esp-in", "ike"): 3,
                     ("ike-esp-out", "esp"): PINGS, ("ike-esp-in", "esp"): PINGS,
                     ("libipsec", "icmp"): 2 * PINGS}, kinds

    assert not _mine(netns_names() - ns_before, os.getpid())
    assert set(charon_pids()) <= charons_before, "a charon outlived the demo"
    assert "removed the tunnel, both daemons, the namespaces and their rules" in text


@pytest.mark.privileged
def test_the_demo_command_runs_the_real_tunnel(strongswan_installed: None,
                                               tmp_path: Path) -> None:
    """What scripts/demo.sh runs: the installed command, as its own process."""
    path = tmp_path / "cli.pcap"
    cli = Path(sys.executable).with_name("ipsec-nflog")
    r = subprocess.run([str(cli), "demo", "-w", str(path), "-g", "7"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "IKEv2 IKE_SA_INIT req" in r.stdout and "[decrypted spi=" in r.stdout
    assert "nflog:7" in r.stdout
    assert len(list(read_capture(str(path)))) == 6 + 4 * PINGS


@pytest.mark.privileged
def test_without_strongswan_the_demo_says_so_and_sends_synthetic_packets(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(libipsec: bool = True) -> str:
        return f"charon-systemd not found; apt-get install {charon.APT_PACKAGES}"

    monkeypatch.setattr(charon, "check_installed", missing)
    ns_before = netns_names()
    path = tmp_path / "demo.pcap"
    out = io.StringIO()
    assert run_demo(str(path), group=5, out=out) == 0, out.getvalue()
    text = out.getvalue()
    assert "strongSwan is not installed (charon-systemd not found" in text
    assert "Showing SYNTHETIC packets instead" in text
    assert "8 packets captured (expected 8); no drops" in text
    assert "IKE_SA_INIT" in text and "UDP-encap ESP" in text and "ESP(spi=0x00002000" in text
    assert os.stat(path).st_mode & 0o777 == 0o600
    pkts = list(read_capture(str(path)))
    assert len(pkts) == 8
    assert {p.prefix for p in pkts} == {"ike-esp-in", "ike-esp-out"}
    assert not _mine(netns_names() - ns_before, os.getpid())


def test_a_bad_output_path_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    ns_before = netns_names()
    with pytest.raises(ValueError, match="no directory"):
        run_demo(str(tmp_path / "missing" / "demo.pcap"), out=io.StringIO())
    with pytest.raises(ValueError, match="it is a directory"):
        run_demo(str(tmp_path), out=io.StringIO())
    assert netns_names() == ns_before


def test_without_root_the_demo_says_what_it_needs_in_one_line() -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the demo as the user nobody")
    cli = Path(sys.executable).with_name("ipsec-nflog")
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        str(cli), "demo", "-w", "/tmp/ipnf-never-written.pcap"], cwd="/",
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr == ("ipsec-nflog: the demo needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) for "
                        "network namespaces and NFLOG; run it as root (scripts/demo.sh uses "
                        "sudo)\n")
    assert r.stdout == "" and not os.path.exists("/tmp/ipnf-never-written.pcap")
