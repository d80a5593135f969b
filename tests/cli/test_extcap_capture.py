"""The extcap with real programs: tshark and pyshark through the installed launcher, and the
extcap run as Wireshark 4.2+ runs it (FIFO and control pipes), in test-made namespaces.

Wireshark 4.0 run as root looks only in its global extcap folder (it ignores
WIRESHARK_EXTCAP_DIR with special privileges), so the module installs the launcher there
and removes it at the end, failing if anything is left."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipsec_nflog.cli import extcap_install
from ipsec_nflog.files.writer import read_capture
from ipsec_nflog.system.procinfo import group_bindings
from tests.cli.test_cli import our_rules, send_udp, wait_bound
from tests.conftest import require_tool
from tests.support import nstools

EXTCAP = [sys.executable, "-m", "ipsec_nflog", "extcap"]
IFACE = "ipsec-nflog"


def ruleset(ns: str) -> str:
    ipt = nstools.run(["iptables-save"], ns=ns, check=False).stdout
    nft = nstools.run(["nft", "list", "ruleset"], ns=ns, check=False).stdout
    return "\n".join(line for line in (ipt + nft).splitlines() if not line.startswith("#"))


def processes_of(marker: str) -> list[str]:
    """Command lines of live processes mentioning ``marker`` (our extcap and capture)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmd and "extcap" in cmd:
            found.append(cmd)
    return found


def send_mix(ns: str) -> None:
    """5 kept (IKE on 500), 3 the filter drops (4500), 3 the preset never logs (501)."""
    send_udp(ns, 500, 5, b"keep")
    send_udp(ns, 4500, 3, b"filtered")
    send_udp(ns, 501, 3, b"unlogged")


def send_once_rules_are_in(netns: str, tshark: subprocess.Popen[str]) -> str:
    """Wait for the extcap's rules (they go in before the bind), send the mix, and return
    tshark's stderr once it has ended."""
    deadline = time.monotonic() + 10
    while "ipsec_nflog" not in our_rules(netns):
        assert time.monotonic() < deadline, "rules never appeared"
        time.sleep(0.05)
    send_mix(netns)
    return tshark.communicate(timeout=30)[1]


def payloads(path: Path) -> list[bytes]:
    return [p.payload[28:] for p in read_capture(str(path)) if p.payload is not None]


@pytest.fixture(scope="module")
def installed() -> Iterator[str]:
    """The launcher in Wireshark's own extcap folder, for this module only."""
    require_tool("tshark", "tshark")
    folder = extcap_install.extcap_folder()
    launcher = Path(folder) / extcap_install.LAUNCHER_NAME
    if launcher.exists() and not extcap_install._is_ours(str(launcher)):
        pytest.fail(f"{launcher} is someone else's")
    subprocess.run([*EXTCAP, "--install"], check=True, capture_output=True, timeout=60)
    try:
        yield folder
    finally:
        subprocess.run([*EXTCAP, "--uninstall"], capture_output=True, timeout=60)
        assert not os.path.lexists(launcher), f"{launcher} left behind"


@pytest.mark.privileged
def test_tshark_captures_exactly_the_sent_packets(installed: str, netns: str,
                                                  tmp_path: Path) -> None:
    listed = subprocess.run(["tshark", "-D"], capture_output=True, text=True, timeout=60)
    assert f"{IFACE} (IPsec traffic (NFLOG, rules installed))" in listed.stdout
    host_before, ns_before = ruleset(""), ruleset(netns)
    out, group = tmp_path / "out.pcapng", 61
    tshark = subprocess.Popen(
        ["tshark", "-i", IFACE, "-o", f"extcap.ipsec_nflog.group:{group}",
         "-o", "extcap.ipsec_nflog.rules:ike-esp-out", "-o", f"extcap.ipsec_nflog.netns:{netns}",
         "-f", "udp port 500", "-a", "duration:5", "-w", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_bound(netns, group, tshark)
        err = send_once_rules_are_in(netns, tshark)
    finally:
        if tshark.poll() is None:
            tshark.kill()
            tshark.wait()
    assert tshark.returncode == 0, err
    assert "Error by extcap pipe" not in err, err
    assert payloads(out) == [b"keep-%d" % i for i in range(5)]
    assert {p.group for p in read_capture(str(out))} == {group}
    deadline = time.monotonic() + 5  # the extcap may outlive tshark by its last drain
    while processes_of(netns) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_of(netns) == []
    assert (ruleset(""), ruleset(netns)) == (host_before, ns_before)


@pytest.mark.privileged
def test_pyshark_live_capture(installed: str, netns: str) -> None:
    """pyshark's LiveCapture on our interface (through live_capture: stock LiveCapture runs
    dumpcap, which cannot start extcaps). Closing it kills tshark; the extcap notices its
    parent's death and removes its rules."""
    pytest.importorskip("pyshark")
    from ipsec_nflog.cli.extcap_pyshark import live_capture

    asyncio.run(asyncio.sleep(0))  # as earlier tests do: no current event loop is left
    group, before = 62, ruleset(netns)
    cap = live_capture(options={"group": group, "rules": "ike-esp-out", "netns": netns})

    def traffic() -> None:
        deadline = time.monotonic() + 20
        while not any(b.group == group for b in group_bindings(netns, resolve_owners=False)):
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        send_udp(netns, 500, 4, b"pyshark")

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        packets = list(cap.sniff_continuously(packet_count=4))
    finally:
        sender.join()
        cap.close()
        cap.eventloop.close()  # and its SIGCHLD handler: later tests send signals
        asyncio.set_event_loop(None)
    assert len(packets) == 4
    for p in packets:  # tshark's own dissection of our pcapng: NFLOG, then the IP packet
        names = [layer.layer_name for layer in p.layers]
        assert names.index("nflog") < names.index("ip") < names.index("udp"), names
        assert p.udp.dstport == "500"
    deadline = time.monotonic() + 10
    while (processes_of(netns) or ruleset(netns) != before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_of(netns) == [] and ruleset(netns) == before


def _open_reader(fifo: Path) -> int:
    return os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)


def _read_all(fd: int, until: float) -> bytes:
    import select

    data = b""
    while time.monotonic() < until:
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
    return data


@pytest.mark.privileged
def test_closing_the_control_pipe_stops_it(netns: str, tmp_path: Path) -> None:
    """Wireshark 4.2+ style: control pipes given, an argument we do not know; closing the
    control pipe ends the capture cleanly: pcapng with the group's interface and its
    statistics, rules gone, exit 0, nothing on stderr."""
    fifo, ctl_in, ctl_out = (tmp_path / n for n in ("fifo", "ctl_in", "ctl_out"))
    for p in (fifo, ctl_in, ctl_out):
        os.mkfifo(p)
    group, before = 63, ruleset(netns)
    reader = _open_reader(fifo)
    ctl_out_reader = _open_reader(ctl_out)
    proc = subprocess.Popen(
        [*EXTCAP, "--capture", "--extcap-interface", IFACE, "--fifo", str(fifo),
         "--extcap-control-in", str(ctl_in), "--extcap-control-out", str(ctl_out),
         "--extcap-version=4.2.6", "--group", str(group), "--rules", "ike-esp-out",
         "--netns", netns, "--extcap-new-in-5.0", "--prefix", "-ws"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ctl_writer = -1
    try:
        deadline = time.monotonic() + 10
        while ctl_writer < 0:
            try:  # our end of control-in: Wireshark opens it once the extcap runs
                ctl_writer = os.open(ctl_in, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, proc.stderr
                time.sleep(0.05)
        os.write(ctl_writer, b"T\x00\x00\x02\x00\x00")  # "Initialized", as Wireshark sends
        wait_bound(netns, group, proc)
        send_udp(netns, 500, 3, b"ctl")
        streamed = _read_all(reader, time.monotonic() + 1.0)  # flushed per batch
        assert streamed.count(b"ctl-") == 3
        os.close(ctl_writer)
        ctl_writer = -1
        _, err = proc.communicate(timeout=20)
        streamed += _read_all(reader, time.monotonic() + 0.5)
    finally:
        for fd in (ctl_writer, reader, ctl_out_reader):
            if fd >= 0:
                os.close(fd)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (proc.returncode, err) == (0, "")
    out = tmp_path / "got.pcapng"
    out.write_bytes(streamed)
    from ipsec_nflog.files.writer import CaptureReader

    with open(out, "rb") as f:
        rdr = CaptureReader(f)
        pkts = list(rdr)
        assert [i.name for i in rdr.interfaces] == [f"nflog:{group}"]
        assert rdr.interfaces[0].statistics, "no ISB at the end"
    assert [p.payload[28:] for p in pkts if p.payload] == [b"ctl-%d" % i for i in range(3)]
    assert {p.prefix for p in pkts} == {"-ws"}
    assert ruleset(netns) == before


@pytest.mark.privileged
@pytest.mark.parametrize("how", ["fifo-closed", "sigterm"])
def test_stops_when_the_reader_goes_or_on_sigterm(netns: str, tmp_path: Path,
                                                  how: str) -> None:
    """Idle (no packet to write), it still notices the FIFO's reader going away."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    group, before = 64, ruleset(netns)
    reader = _open_reader(fifo)
    proc = subprocess.Popen(
        [*EXTCAP, "--capture", "--extcap-interface", IFACE, "--fifo", str(fifo),
         "--extcap-version=4.0", f"--group={group}", "--rules=ike-esp-in", f"--netns={netns}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_bound(netns, group, proc)
        assert _read_all(reader, time.monotonic() + 0.3)[:4] == b"\x0a\x0d\x0d\x0a"
        t0 = time.monotonic()
        if how == "fifo-closed":
            os.close(reader)
            reader = -1
        else:
            proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        assert time.monotonic() - t0 < 3
    finally:
        if reader >= 0:
            os.close(reader)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (proc.returncode, err) == (0, "")
    assert ruleset(netns) == before


@pytest.mark.privileged
@pytest.mark.parametrize("how, message", [
    ("bad-filter", "udp port"),
    ("group-busy", "group 68"),
    ("no-cap-net-admin", "needs CAP_NET_ADMIN, which this process lacks"),
])
def test_failures_are_one_line_and_leave_nothing(netns: str, tmp_path: Path, how: str,
                                                 message: str) -> None:
    """What Wireshark's user sees for a capture that cannot start: one line on stderr and a
    non-zero exit; the rules (installed before the bind) are gone, no process is left, and
    nothing but the FIFO Wireshark made is there."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    group, before = 68, ruleset(netns)
    argv = [*EXTCAP, "--capture", "--extcap-interface", IFACE, "--fifo", str(fifo),
            "--extcap-version=4.0", f"--group={group}", "--rules=ike-esp-out",
            f"--netns={netns}"]
    holder = None
    if how == "bad-filter":
        argv += ["--extcap-capture-filter", "udp port"]
    elif how == "group-busy":  # someone else's capture holds the group
        holder = subprocess.Popen(["ip", "netns", "exec", netns, "tcpdump", "-i", f"nflog:{group}",
                                   "-w", "/dev/null"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    else:  # root without CAP_NET_ADMIN (CAP_SYS_ADMIN kept: the namespace is entered)
        argv = ["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin", *argv]
    reader = _open_reader(fifo)
    try:
        if holder is not None:
            wait_bound(netns, group, holder)
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        streamed = _read_all(reader, time.monotonic() + 0.2)
        if holder is not None:
            assert holder.poll() is None and any(  # tcpdump is left alone
                b.group == group for b in group_bindings(netns, resolve_owners=False))
    finally:
        os.close(reader)
        if holder is not None:
            holder.terminate()
            holder.wait(timeout=10)
    assert r.returncode != 0 and r.stdout == "", r
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("ipsec-nflog: "), r.stderr
    assert message in r.stderr, r.stderr
    assert streamed == b""  # refused before the first byte: Wireshark shows only the error
    assert ruleset(netns) == before and processes_of(netns) == []
    assert [p.name for p in tmp_path.iterdir()] == ["fifo"]
