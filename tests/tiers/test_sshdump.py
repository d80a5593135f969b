"""Remote capture the way Wireshark does it: the real ``sshdump`` logs in to a real ``sshd``
(in a namespace the test makes, with a throwaway host key and user key) and runs
``ipsec-nflog capture -w -`` as its remote command; the packets arrive in sshdump's FIFO,
and stopping sshdump removes the remote rules."""

from __future__ import annotations

import os
import select
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipsec_nflog.files.writer import read_capture
from ipsec_nflog.system.procinfo import group_bindings
from tests.cli.test_cli import our_rules, send_udp
from tests.conftest import require_tool
from tests.support import nstools

SSHDUMP = "/usr/lib/x86_64-linux-gnu/wireshark/extcap/sshdump"
SSHD = "/usr/sbin/sshd"
PORT = 2222


@pytest.fixture
def sshd(netns: str, tmp_path: Path) -> Iterator[Path]:
    """sshd on 127.0.0.1:2222 inside ``netns``, root may log in with the key it yields."""
    require_tool("ssh-keygen", "openssh-client")
    if not os.path.exists(SSHD):
        require_tool("sshd", "openssh-server")
    if not os.path.exists(SSHDUMP):
        require_tool("sshdump", "wireshark-common")
    for name in ("hostkey", "userkey"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                        str(tmp_path / name)], check=True)
    (tmp_path / "authorized_keys").write_text((tmp_path / "userkey.pub").read_text())
    config = tmp_path / "sshd_config"
    config.write_text("\n".join([
        "ListenAddress 127.0.0.1", f"Port {PORT}", f"HostKey {tmp_path / 'hostkey'}",
        f"AuthorizedKeysFile {tmp_path / 'authorized_keys'}",
        "PermitRootLogin prohibit-password", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
        f"PidFile {tmp_path / 'sshd.pid'}", ""]))
    made_privsep = not os.path.isdir("/run/sshd")  # sshd's privilege separation directory
    if made_privsep:
        os.mkdir("/run/sshd", 0o755)
    proc = subprocess.Popen(["ip", "netns", "exec", netns, SSHD, "-D", "-e", "-f", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while f":{PORT} " not in nstools.run(["ss", "-ltn"], ns=netns).stdout:
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "sshd never listened"
            time.sleep(0.05)
        yield tmp_path / "userkey"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if made_privsep:
            os.rmdir("/run/sshd")


def _remote_command(group: int) -> str:
    ours = Path(sys.executable).parent / "ipsec-nflog"
    cmd = [str(ours)] if ours.exists() else [sys.executable, "-m", "ipsec_nflog"]
    return shlex.join([*cmd, "capture", "-g", str(group), "--rules", "ike-esp-out", "-w", "-"])


def _capture_processes(group: int) -> list[int]:
    mine = f"capture -g {group} --rules ike-esp-out -w -"
    pids = []
    for pid in os.listdir("/proc"):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if mine in cmd and "sshdump" not in cmd and "sshd:" not in cmd:
            pids.append(int(pid))
    return pids


@pytest.mark.privileged
def test_sshdump_runs_our_capture_remotely(netns: str, sshd: Path, tmp_path: Path) -> None:
    group = 71
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    env = {**os.environ, "HOME": str(tmp_path)}  # libssh's known_hosts stays in the test
    dump = subprocess.Popen([
        "ip", "netns", "exec", netns, SSHDUMP, "--extcap-interface=sshdump", "--capture",
        "--fifo", str(fifo), "--remote-host", "127.0.0.1", "--remote-port", str(PORT),
        "--remote-username", "root", "--sshkey", str(sshd),
        "--remote-capture-command-select", "other",
        "--remote-capture-command", _remote_command(group)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    data = b""
    try:
        deadline = time.monotonic() + 20
        while not any(b.group == group for b in group_bindings(netns, resolve_owners=False)):
            assert dump.poll() is None, dump.communicate()[1]
            assert time.monotonic() < deadline, "the remote capture never bound its group"
            time.sleep(0.05)
        assert "ipsec_nflog" in our_rules(netns)
        send_udp(netns, 500, 4, b"remote")  # logged by ike-esp-out
        send_udp(netns, 501, 2, b"other")  # not logged
        deadline = time.monotonic() + 10
        while data.count(b"remote-") < 4 and time.monotonic() < deadline:
            if select.select([reader], [], [], 0.1)[0]:
                data += os.read(reader, 65536)
        assert len(_capture_processes(group)) == 1
        dump.send_signal(signal.SIGTERM)  # what Wireshark's stop button does
        dump.wait(timeout=20)
    finally:
        os.close(reader)
        if dump.poll() is None:
            dump.kill()
            dump.wait()
    (tmp_path / "got.pcap").write_bytes(data)
    got = [p.payload[28:] for p in read_capture(str(tmp_path / "got.pcap")) if p.payload]
    assert got == [b"remote-%d" % i for i in range(4)]
    deadline = time.monotonic() + 10  # the remote side sees the channel close
    while (_capture_processes(group) or "ipsec_nflog" in our_rules(netns)) and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    assert _capture_processes(group) == [], "the remote capture outlived sshdump"
    assert our_rules(netns) == "", "the remote rules were left behind"
