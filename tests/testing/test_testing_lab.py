"""The lab helpers users get from ipsec_nflog.testing: NetnsPair and StrongswanPair, made and
always removed; and the copyable example file, which must pass."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from ipsec_nflog.testing.charon import check_installed
from ipsec_nflog.testing.lab import NetnsPair, netns_names
from ipsec_nflog.testing.requirements import unavailable
from ipsec_nflog.testing.strongswan import StrongswanPair, charon_pids

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

pytest_plugins = ["pytester"]


def _need_strongswan() -> None:
    problem = check_installed(libipsec=True)
    if problem:
        unavailable(problem)


@pytest.mark.privileged
def test_netns_pair_links_two_namespaces_over_ipv4_and_ipv6(netns_pair: NetnsPair) -> None:
    lab = netns_pair
    assert set(lab.namespaces) <= netns_names()
    assert lab.a_ifindex > 0 and lab.b_ifindex > 0
    for family, dst in ((socket.AF_INET, lab.b4), (socket.AF_INET6, lab.b6)):
        with lab.socket(lab.b, family) as rx, lab.socket(lab.a, family) as tx:
            rx.bind((dst, 0))
            rx.settimeout(5)
            tx.sendto(b"over veth", rx.getsockname()[:2])
            assert rx.recv(100) == b"over veth"
    addrs = lab.run(lab.a, ["ip", "-o", "addr", "show", "dev", "veth0"]).stdout
    assert "10.99.0.1/24" in addrs and "fd99::1/64" in addrs


@pytest.mark.privileged
def test_netns_pair_is_deleted_even_when_the_block_fails() -> None:
    with pytest.raises(RuntimeError, match="boom"), NetnsPair(ipv6=False) as lab:
        names = set(lab.namespaces)
        assert names <= netns_names()
        assert lab.a6 is None
        assert lab.run(lab.a, ["sysctl", "-n", "net.ipv6.conf.all.disable_ipv6"]).stdout == "1\n"
        raise RuntimeError("boom")
    assert not names & netns_names()


@pytest.mark.privileged
def test_netns_pair_setup_failing_half_way_leaves_nothing() -> None:
    lab = NetnsPair(a4="not-an-address")
    with pytest.raises(subprocess.CalledProcessError):
        lab.start()
    assert not {lab.a, lab.b} & netns_names()


@pytest.mark.privileged
@pytest.mark.strongswan
def test_strongswan_pair_fixture_is_up_with_keys(strongswan_pair: StrongswanPair) -> None:
    pair = strongswan_pair
    assert "INSTALLED" in pair.list_sas()
    assert pair.ping(2).returncode == 0
    spi_in, spi_out = pair.child_spis()
    found = pair.keys()
    assert found.warnings == []
    assert {sa.spi for sa in found.esp} == {spi_in, spi_out}
    assert len(found.ike) == 1 and found.ike[0].complete
    assert len(pair.decryptor()) == 2
    pair.reconnect()
    assert set(pair.child_spis()).isdisjoint({spi_in, spi_out})  # a new CHILD_SA
    assert len(pair.keys().esp) == 4  # the log holds both generations of keys


@pytest.mark.privileged
@pytest.mark.strongswan
def test_a_failing_strongswan_block_carries_the_logs_and_leaves_nothing() -> None:
    _need_strongswan()
    charons = set(charon_pids())
    with pytest.raises(RuntimeError, match="boom") as info, StrongswanPair() as pair:
        names, pids = set(pair.namespaces), [p.pid for p in pair.peers()]
        workdir = pair.workdir
        raise RuntimeError("boom")
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "strongSwan logs:" in notes and "left/charon.log (tail)" in notes
    assert "CHILD_SA t{1} established" in notes
    assert not names & netns_names()
    assert all(pid and not os.path.exists(f"/proc/{pid}") for pid in pids)
    assert set(charon_pids()) <= charons
    assert not workdir.exists()


@pytest.mark.privileged
@pytest.mark.strongswan
def test_the_example_test_file_passes(pytester: pytest.Pytester) -> None:
    """examples/test_tunnel.py, run as a user runs it: its own pytest process, no conftest,
    the fixtures from the installed plugin."""
    _need_strongswan()
    result = pytester.runpytest_subprocess(str(EXAMPLES / "test_tunnel.py"),
                                           "-p", "no:cacheprovider", "-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*test_a_ping_through_the_tunnel_in_all_four_views PASSED*"])
