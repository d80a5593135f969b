"""Without CAP_NET_ADMIN every command that touches the firewall or a group says so in one
line of ours, before iptables or libnftables can print errors of their own, and leaves
nothing behind."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.cli.test_cli import argv, our_rules
from tests.conftest import require_tool
from tests.support import nstools


def without_net_admin(ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI in ``ns`` as root minus CAP_NET_ADMIN (CAP_SYS_ADMIN kept for setns)."""
    require_tool("setpriv", "util-linux")
    cmd = ["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin", "--",
           "ip", "netns", "exec", ns, *argv(*args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def ruleset(ns: str) -> list[str]:
    """iptables-save and nft list ruleset, without iptables-save's dated comment lines."""
    text = nstools.run(["iptables-save"], ns=ns).stdout + nstools.run(
        ["nft", "list", "ruleset"], ns=ns).stdout
    return [line for line in text.splitlines() if not line.startswith("#")]


@pytest.mark.privileged
@pytest.mark.parametrize("args, says", [
    (("capture", "-g", "81", "--rules", "all", "--backend", "nft"), "installing rules"),
    (("capture", "-g", "81", "--rules", "all", "--backend", "iptables"), "installing rules"),
    (("capture", "-g", "81"), "capturing NFLOG"),
    (("rules", "install", "ike-esp-in", "-g", "81"), "installing rules"),
    (("rules", "show"), "reading the firewall rules"),
    (("rules", "cleanup"), "reading the firewall rules"),
])
def test_one_line_naming_cap_net_admin_and_nothing_left(
        netns: str, tmp_path: Path, args: tuple[str, ...], says: str) -> None:
    before = ruleset(netns)
    out = tmp_path / "x.pcap"
    extra = ("-w", str(out)) if args[0] == "capture" else ()
    r = without_net_admin(netns, *args, *extra)
    assert r.returncode == 1, r
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("ipsec-nflog: ") and says in lines[0], lines[0]
    assert "CAP_NET_ADMIN" in lines[0] and "[Errno" not in lines[0]
    assert r.stdout == ""
    assert not out.exists()
    assert our_rules(netns) == ""
    assert ruleset(netns) == before
