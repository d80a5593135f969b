"""The launcher's sudo mode for real: ``--install --sudo-group`` into Wireshark's global
extcap folder, a throwaway system group with a member and a non-member, real sudo.

The member runs tshark with no capabilities of its own (runuser) and captures exactly the
sent packets; the capture itself runs as the member once the rules are in. What a member
can do as root through the rule is only a capture: the refusals are tested here too.
Everything made (users, group, launcher, sudoers file, folders) is removed in ``finally``,
and the test fails if any of it is left."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ipsec_nflog.cli import extcap_install
from ipsec_nflog.cli.errors import CliError
from ipsec_nflog.files.writer import read_capture
from ipsec_nflog.system.procinfo import group_bindings
from tests.cli.test_extcap_capture import (
    payloads,
    processes_of,
    ruleset,
    send_once_rules_are_in,
)
from tests.conftest import require_tool

EXTCAP = [sys.executable, "-m", "ipsec_nflog", "extcap"]
IFACE = "ipsec-nflog"


@dataclass(frozen=True)
class SudoSetup:
    group: str
    member: str
    outsider: str
    launcher: str
    sudoers: str
    home: Path  # the member's folder (tshark's profile and the capture file)


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def as_user(user: str, argv: list[str], home: Path) -> list[str]:
    """``argv`` as ``user`` with no capabilities (runuser: setuid from root clears them)."""
    return ["runuser", "-u", user, "--", "env", "-i", f"HOME={home}",
            "PATH=/usr/local/bin:/usr/bin:/bin", *argv]


@pytest.fixture(scope="module")
def sudo_setup() -> Iterator[SudoSetup]:
    require_tool("sudo", "sudo")
    require_tool("tshark", "tshark")
    if os.geteuid() != 0:
        pytest.skip("makes system users: needs root")
    tag = secrets.token_hex(3)
    group, member, outsider = f"inxg{tag}", f"inxm{tag}", f"inxo{tag}"
    folder = extcap_install.extcap_folder()
    launcher = os.path.join(folder, extcap_install.LAUNCHER_NAME)
    sudoers = extcap_install.sudoers_path(launcher)
    for path in (launcher, sudoers):
        if os.path.lexists(path):
            pytest.fail(f"{path} exists before the test")
    home = Path(tempfile.mkdtemp(prefix="inx-home-", dir="/tmp"))
    try:
        _run(["groupadd", "--system", group]).check_returncode()
        _run(["useradd", "--system", "-M", "-N", "-s", "/usr/sbin/nologin", "-G", group,
              member]).check_returncode()
        _run(["useradd", "--system", "-M", "-N", "-s", "/usr/sbin/nologin", outsider]
             ).check_returncode()
        os.chown(home, pwd.getpwnam(member).pw_uid, -1)
        os.chmod(home, 0o755)  # the outsider writes nothing there: its captures are refused
        r = _run([*EXTCAP, "--install", "--sudo-group", group])
        assert r.returncode == 0, r.stderr
        yield SudoSetup(group, member, outsider, launcher, sudoers, home)
    finally:
        _run([*EXTCAP, "--uninstall"])
        for user in (member, outsider):
            _end_processes_of(user)  # a failed test's capture would keep its user alive
            _run(["userdel", user])
        _run(["groupdel", group])
        shutil.rmtree(home, ignore_errors=True)
        left = [p for p in (launcher, sudoers) if os.path.lexists(p)]
        left += [u for u in (member, outsider) if _exists(pwd.getpwnam, u)]
        left += [group] if _exists(grp.getgrnam, group) else []
        assert not left, f"left behind: {left}"


def _end_processes_of(user: str) -> None:
    """SIGKILL whatever still runs as ``user``, and wait up to 5 s for it to be gone."""
    if not _exists(pwd.getpwnam, user):
        return
    deadline = time.monotonic() + 5
    while _run(["pgrep", "-u", user]).returncode == 0 and time.monotonic() < deadline:
        _run(["pkill", "-KILL", "-u", user])
        time.sleep(0.05)


def _stop_tree(proc: subprocess.Popen[str]) -> None:
    """End a capture started in its own session and everything under it: SIGTERM first,
    which sudo relays and the capture ends on cleanly, then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _exists(lookup: Callable[[str], object], name: str) -> bool:
    try:
        lookup(name)
    except KeyError:
        return False
    return True


@pytest.mark.privileged
def test_the_sudoers_rule_is_one_line_for_the_group(sudo_setup: SudoSetup) -> None:
    assert _run(["visudo", "-c", "-q", "-f", sudo_setup.sudoers]).returncode == 0
    st = os.lstat(sudo_setup.sudoers)
    assert (st.st_uid, oct(st.st_mode & 0o777)) == (0, "0o440")
    listed = _run(["sudo", "-l", "-U", sudo_setup.member]).stdout
    rules = listed.split("may run the following commands", 1)[1].splitlines()[1:]
    assert [r.strip() for r in rules if r.strip()] == [
        f"(root) NOPASSWD: {sudo_setup.launcher}"], listed
    assert "not allowed to run sudo" in _run(["sudo", "-l", "-U", sudo_setup.outsider]).stdout


@pytest.mark.privileged
def test_a_member_captures_exactly_the_sent_packets(sudo_setup: SudoSetup, netns: str) -> None:
    s, group = sudo_setup, 65
    caps = _run(as_user(s.member, ["grep", "^CapEff", "/proc/self/status"], s.home)).stdout
    assert caps.split() == ["CapEff:", "0000000000000000"]
    listed = _run(as_user(s.member, ["tshark", "-D"], s.home)).stdout
    assert f"{IFACE} (IPsec traffic (NFLOG, rules installed))" in listed
    out = s.home / "member.pcapng"
    before = (ruleset(""), ruleset(netns))
    tshark = subprocess.Popen(as_user(s.member, [
        "tshark", "-i", IFACE, "-o", f"extcap.ipsec_nflog.group:{group}",
        "-o", "extcap.ipsec_nflog.rules:ike-esp-out", "-o", f"extcap.ipsec_nflog.netns:{netns}",
        "-f", "udp port 500", "-a", "duration:4", "-w", str(out)], s.home),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        binder = _wait_binder(netns, group, tshark)
        # the capture holding the group runs as the member; root only keeps the rules
        member_uid = pwd.getpwnam(s.member).pw_uid
        assert _settled_uid(binder, member_uid) == member_uid
        err = send_once_rules_are_in(netns, tshark)
    finally:
        if tshark.poll() is None:  # the test failed before tshark's own end
            _stop_tree(tshark)
    assert tshark.returncode == 0 and "Error by extcap" not in err, err
    assert payloads(out) == [b"keep-%d" % i for i in range(5)]
    assert {p.group for p in read_capture(str(out))} == {group}
    assert out.stat().st_uid == pwd.getpwnam(s.member).pw_uid
    deadline = time.monotonic() + 5
    while processes_of(netns) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_of(netns) == []
    assert (ruleset(""), ruleset(netns)) == before


def _wait_binder(netns: str, group: int, proc: subprocess.Popen[str]) -> int:
    deadline = time.monotonic() + 20
    while True:
        pids = [b.pid for b in group_bindings(netns) if b.group == group and b.pid]
        if pids:
            return pids[0]
        if proc.poll() is not None:
            pytest.fail(f"tshark exited early: {proc.communicate()[1]}")
        assert time.monotonic() < deadline, f"group {group} never bound"
        time.sleep(0.05)


def _settled_uid(pid: int, wanted: int) -> int:
    """The binder's effective uid once it has dropped to ``wanted`` (the capture binds the
    group as root and drops right after: a few ms in which it is still root), or the uid it
    still has after 10 s."""
    deadline = time.monotonic() + 10
    while (uid := _uid_of(pid)) != wanted and time.monotonic() < deadline:
        time.sleep(0.01)
    return uid


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[2])  # the effective uid
    raise AssertionError(f"no Uid line for {pid}")


@pytest.mark.privileged
def test_an_outsider_gets_one_line_and_nothing_is_installed(sudo_setup: SudoSetup,
                                                            netns: str) -> None:
    s, fifo = sudo_setup, sudo_setup.home / "outsider.fifo"
    os.mkfifo(fifo)
    os.chown(fifo, pwd.getpwnam(s.outsider).pw_uid, -1)
    before = (ruleset(""), ruleset(netns))
    r = _run(as_user(s.outsider, [
        s.launcher, "--capture", "--extcap-interface", IFACE, "--fifo", str(fifo),
        "--group=66", f"--netns={netns}", "--extcap-version=4.0"], s.home))
    assert r.returncode != 0 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and f"membership of group {s.group}" in r.stderr, r.stderr
    # sudo itself refuses them too, should the launcher be bypassed
    r = _run(as_user(s.outsider, ["sudo", "-n", s.launcher, "--capture"], s.home))
    assert r.returncode != 0
    assert (ruleset(""), ruleset(netns)) == before and processes_of(netns) == []


@pytest.mark.privileged
def test_through_the_rule_a_member_can_only_capture(sudo_setup: SudoSetup,
                                                    netns: str) -> None:
    """A member runs the launcher as root with any arguments: no installing, no writing
    into root's FIFOs (even a world-writable one: /run/initctl is a FIFO), no probing of
    root's folders, no namespace paths. Each is one line, and nothing is left."""
    s = sudo_setup
    root_dir = Path(tempfile.mkdtemp(prefix="inx-root-", dir="/tmp"))  # 0700, root's
    open_dir = Path(tempfile.mkdtemp(prefix="inx-open-", dir="/tmp"))
    reader = -1
    try:
        (root_dir / "secret").write_text("x")
        open_dir.chmod(0o755)
        roots_fifo = open_dir / "roots.fifo"
        os.mkfifo(roots_fifo)
        roots_fifo.chmod(0o666)
        mine = s.home / "member.fifo"
        os.mkfifo(mine)
        os.chown(mine, pwd.getpwnam(s.member).pw_uid, -1)
        reader = os.open(mine, os.O_RDONLY | os.O_NONBLOCK)  # Wireshark's end of it
        before = (ruleset(""), ruleset(netns))
        capture = [s.launcher, "--capture", "--extcap-interface", IFACE, "--group=67",
                   f"--netns={netns}"]
        cases = [
            ([s.launcher, "--install", "--extcap-dir", str(open_dir)], "not available"),
            ([*capture, "--fifo", str(roots_fifo)], "belongs to uid 0"),
            ([*capture, "--fifo", str(root_dir / "secret")], "Permission denied"),
            ([*capture, "--fifo", str(root_dir / "absent")], "Permission denied"),
            ([*capture, "--fifo", str(mine), "--extcap-control-in", str(roots_fifo)],
             "belongs to uid 0"),
            ([s.launcher, "--capture", "--extcap-interface", IFACE, "--fifo", str(mine),
              "--group=67", "--netns=../../proc/1/ns/net"], "invalid network namespace name"),
        ]
        for argv, message in cases:
            r = _run(as_user(s.member, argv, s.home))
            assert r.returncode != 0 and message in r.stderr, (argv, r)
            assert r.stderr.count("\n") == 1, r.stderr
        assert sorted(p.name for p in open_dir.iterdir()) == ["roots.fifo"]
        assert (ruleset(""), ruleset(netns)) == before and processes_of(netns) == []
    finally:
        if reader >= 0:
            os.close(reader)
        shutil.rmtree(root_dir)
        shutil.rmtree(open_dir)


@pytest.mark.privileged
def test_install_refuses_code_others_can_change(tmp_path: Path) -> None:
    """Through sudo the launcher's interpreter runs as root for every member: a package
    tree someone else can change is refused (--install checks before writing anything)."""
    tree = tmp_path / "site"
    (tree / "pkg").mkdir(parents=True)
    (tree / "pkg" / "mod.py").write_text("")
    extcap_install._check_tree(str(tree))  # root's, not writable by others: accepted
    (tree / "pkg" / "mod.py").chmod(0o666)
    with pytest.raises(CliError, match=r"mod\.py .*can be changed"):
        extcap_install._check_tree(str(tree))
    (tree / "pkg" / "mod.py").chmod(0o644)
    os.chown(tree / "pkg", 1, -1)  # a daemon user's folder
    with pytest.raises(CliError, match=r"pkg .*can be changed"):
        extcap_install._check_tree(str(tree))
