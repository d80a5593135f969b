"""The real ``ipsec-nflog`` binary as a subprocess, in test-made namespaces."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from ipsec_nflog.files.writer import read_capture
from ipsec_nflog.system.procinfo import group_bindings
from tests.conftest import require_tool
from tests.support import nstools

BIN = Path(sys.executable).parent / "ipsec-nflog"


def argv(*args: str) -> list[str]:
    return ([str(BIN)] if BIN.exists() else [sys.executable, "-m", "ipsec_nflog"]) + list(args)


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_bound(netns: str, group: int, proc: subprocess.Popen[str], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not any(b.group == group for b in group_bindings(netns, resolve_owners=False)):
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"capture exited early ({proc.returncode}): {err}")
        assert time.monotonic() < deadline, f"group {group} never bound"
        time.sleep(0.05)


def send_udp(ns: str, port: int, n: int, payload: bytes = b"cli-test") -> None:
    s = nstools.ns_socket(ns)
    try:
        for i in range(n):
            s.sendto(payload + b"-%d" % i, ("127.0.0.1", port))
    finally:
        s.close()


def finish(proc: subprocess.Popen[str], sig: int | None = None,
           timeout: float = 20) -> tuple[int, str, str]:
    if sig is not None:
        proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"capture did not exit: {err}")
    return proc.returncode, out, err


def add_nflog(ns: str, port: int, group: int, prefix: str = "cli") -> None:
    nstools.run(["iptables", "-A", "OUTPUT", "-p", "udp", "--dport", str(port), "-j",
                 "NFLOG", "--nflog-group", str(group), "--nflog-prefix", prefix], ns=ns)


def our_rules(ns: str) -> str:
    """Every trace of our rules in the namespace: iptables comments and nft tables."""
    ipt = nstools.run(["iptables-save"], ns=ns, check=False).stdout
    nft = nstools.run(["nft", "list", "ruleset"], ns=ns, check=False).stdout
    return "\n".join(line for line in (ipt + nft).splitlines() if "ipsec_nflog" in line)


@pytest.mark.privileged
def test_capture_file_read_round_trip(netns: str, tmp_path: Path) -> None:
    add_nflog(netns, 7100, 50, prefix="roundtrip")
    out = tmp_path / "rt.pcap"
    proc = start("capture", "--netns", netns, "-g", "50", "-w", str(out), "-c", "25")
    wait_bound(netns, 50, proc)
    send_udp(netns, 7100, 25)
    code, _, err = finish(proc)
    assert code == 0, err
    assert "25 packets received, 25 written" in err
    assert "WARNING" not in err
    assert os.stat(out).st_mode & 0o777 == 0o600
    pkts = list(read_capture(str(out)))
    assert len(pkts) == 25
    assert [p.payload[-len(b"cli-test-24"):] for p in pkts][-1] == b"cli-test-24"  # type: ignore[index]
    r = subprocess.run(argv("read", str(out), "--prefix", "roundtrip"), capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 25
    assert all("nflog:50" in ln and "roundtrip" in ln and "OUTPUT" in ln for ln in lines)
    assert "127.0.0.1" in lines[0] and ".7100: UDP" in lines[0]
    r = subprocess.run(argv("read", str(out), "--hook", "INPUT"), capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0 and r.stdout == ""


@pytest.mark.privileged
def test_count_and_print_without_file(netns: str) -> None:
    add_nflog(netns, 7200, 51, prefix="printed")
    proc = start("capture", "--netns", netns, "-i", "nflog:51", "-c", "3")
    wait_bound(netns, 51, proc)
    send_udp(netns, 7200, 5)
    code, out, err = finish(proc)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 3
    assert all("printed" in ln and "UDP, length" in ln for ln in lines)


@pytest.mark.privileged
def test_duration_stops_and_sigint_leaves_valid_file(netns: str, tmp_path: Path) -> None:
    require_tool("tcpdump", "tcpdump")
    add_nflog(netns, 7300, 52)
    out = tmp_path / "d.pcap"
    t0 = time.monotonic()
    proc = start("capture", "--netns", netns, "-g", "52", "-w", str(out), "--duration", "1.5")
    wait_bound(netns, 52, proc)
    send_udp(netns, 7300, 10)
    code, _, err = finish(proc)
    assert code == 0, err
    assert 1.0 < time.monotonic() - t0 < 15
    assert len(list(read_capture(str(out)))) == 10

    out2 = tmp_path / "int.pcap"
    proc = start("capture", "--netns", netns, "-g", "52", "-w", str(out2))
    wait_bound(netns, 52, proc)
    send_udp(netns, 7300, 40)
    time.sleep(0.5)
    code, _, err = finish(proc, signal.SIGINT)
    assert code == 0, err
    assert "stopped by SIGINT" in err
    r = subprocess.run(["tcpdump", "-r", str(out2), "-n"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 40
    assert "warning" not in r.stderr.lower()


@pytest.mark.privileged
def test_rotation_by_size_and_count(netns: str, tmp_path: Path) -> None:
    add_nflog(netns, 7400, 53)
    base = tmp_path / "rot.pcap"
    proc = start("capture", "--netns", netns, "-g", "53", "-w", str(base), "-C", "1",
                 "-W", "3", "-U")
    wait_bound(netns, 53, proc)
    for _ in range(8):
        send_udp(netns, 7400, 500, payload=b"R" * 900)
        time.sleep(0.15)
    time.sleep(0.3)
    code, _, err = finish(proc, signal.SIGTERM)
    assert code == 0, err
    files = sorted(p for p in tmp_path.iterdir() if p.name.startswith("rot.pcap"))
    assert 2 <= len(files) <= 3, files
    for f in files:
        assert f.stat().st_size <= 1_000_000 + 70_000
        assert os.stat(f).st_mode & 0o777 == 0o600
        assert len(list(read_capture(str(f)))) > 0


def _rules_test(netns: str, tmp_path: Path, backend: str, how: str) -> None:
    out = tmp_path / f"rules-{backend}-{how}.pcap"
    proc = start("capture", "--netns", netns, "-g", "54", "-w", str(out), "--rules",
                 "ike-esp-out", "--backend", backend)
    wait_bound(netns, 54, proc)
    deadline = time.monotonic() + 10
    while not our_rules(netns):
        assert time.monotonic() < deadline, "rules never appeared"
        time.sleep(0.05)
    s = nstools.ns_socket(netns)
    s.sendto(b"ike", ("127.0.0.1", 500))
    s.close()
    time.sleep(0.3)
    sig = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "crash": signal.SIGKILL}[how]
    code, _, err = finish(proc, sig)
    if how == "crash":
        assert code == -signal.SIGKILL
        if backend == "iptables":
            assert our_rules(netns), "iptables rules cannot vanish by themselves"
            r = subprocess.run(argv("rules", "cleanup", "--netns", netns),
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
            assert "removed" in r.stdout
    else:
        assert code == 0, err
        assert "removed ike-esp-out rules" in err
    deadline = time.monotonic() + 5
    while our_rules(netns) and time.monotonic() < deadline:
        time.sleep(0.05)  # the kernel drops an owner table once the socket is gone
    assert our_rules(netns) == ""


@pytest.mark.privileged
@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "crash"])
@pytest.mark.parametrize("backend", ["iptables", "nft"])
def test_rules_never_left_behind(netns: str, tmp_path: Path, backend: str, how: str) -> None:
    _rules_test(netns, tmp_path, backend, how)


def _cap_eff(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    raise AssertionError("no CapEff")


@pytest.mark.privileged
@pytest.mark.parametrize("with_rules", [False, True], ids=["plain", "with-rules"])
def test_drop_privileges(netns: str, tmp_path: Path, with_rules: bool) -> None:
    import pwd

    nobody = pwd.getpwnam("nobody")
    add_nflog(netns, 7500, 55)
    out = tmp_path / "z.pcap"
    os.chmod(tmp_path, 0o755)
    extra: Sequence[str] = ("--rules", "ike-esp-out", "--backend", "iptables") if with_rules \
        else ()
    proc = start("capture", "--netns", netns, "-g", "55", "-w", str(out), "-Z", "nobody",
                 *extra)
    wait_bound(netns, 55, proc)
    deadline = time.monotonic() + 10
    capturer = None
    while capturer is None:
        pids = [proc.pid] + [int(p) for p in subprocess.run(
            ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()]
        for pid in pids:
            st = Path(f"/proc/{pid}/status").read_text()
            uid = int(next(ln for ln in st.splitlines() if ln.startswith("Uid:")).split()[2])
            if uid == nobody.pw_uid:
                capturer = pid
        assert capturer is not None or time.monotonic() < deadline, "never dropped to nobody"
        time.sleep(0.05)
    assert _cap_eff(capturer) == 0  # no CAP_NET_ADMIN, no capabilities at all
    send_udp(netns, 7500, 12)
    time.sleep(0.4)
    code, _, err = finish(proc, signal.SIGINT)
    assert code == 0, err
    assert os.stat(out).st_uid == nobody.pw_uid
    assert len(list(read_capture(str(out)))) == 12
    assert our_rules(netns) == ""


@pytest.mark.parametrize("args,needle", [
    (["capture", "-g", "70000"], "invalid NFLOG group"),
    (["capture"], "no NFLOG group"),
    (["capture", "-g", "5", "--rules", "no-such-preset"], "no-such-preset"),
    pytest.param(["capture", "-g", "5", "--netns", "ipnf-no-such-ns"], "does not exist",
                 marks=pytest.mark.requires_core),  # the capture opens the namespace
    (["read", "/nonexistent-file.pcap"], "No such file"),
    (["capture", "-g", "5", "--snaplen", "-3"], "snaplen"),
    (["rules", "show", "all", "--prefix", 'bad"quote'], "prefix"),
])
def test_bad_input_is_one_line(args: list[str], needle: str) -> None:
    r = subprocess.run(argv(*args), capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("ipsec-nflog:") and needle in lines[0], lines[0]


@pytest.mark.privileged
def test_unwritable_path_and_existing_file(netns: str, tmp_path: Path) -> None:
    add_nflog(netns, 7600, 56)
    existing = tmp_path / "exists.pcap"
    existing.write_bytes(b"keep me")
    for target, needle in ((existing, "exists"), (tmp_path / "no" / "dir.pcap", "No such")):
        r = subprocess.run(argv("capture", "--netns", netns, "-g", "56", "-w", str(target)),
                           capture_output=True, text=True, timeout=60)
        assert r.returncode != 0
        assert "Traceback" not in r.stderr
        assert needle in r.stderr, r.stderr
    assert existing.read_bytes() == b"keep me"
    assert not any(b.group == 56 for b in group_bindings(netns))


@pytest.mark.privileged
def test_stats_names_the_holder(netns: str) -> None:
    proc = start("capture", "--netns", netns, "-g", "57", "-q")
    try:
        wait_bound(netns, 57, proc)
        r = subprocess.run(argv("stats", "--netns", netns), capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0, r.stderr
        assert "group 57: bound by" in r.stdout
        assert f"(pid {proc.pid})" in r.stdout
    finally:
        finish(proc, signal.SIGINT)


@pytest.mark.privileged
def test_fail_on_drop_exit_code(netns: str, tmp_path: Path) -> None:
    add_nflog(netns, 7700, 58)
    proc = start("capture", "--netns", netns, "-g", "58", "--nlbufsiz", "4k",
                 "--ring-size", "144k", "--fail-on-drop", "-w", str(tmp_path / "drop.pcap"),
                 "--duration", "3")
    wait_bound(netns, 58, proc)
    os.kill(proc.pid, signal.SIGSTOP)  # a stalled consumer: the ring fills and drops
    try:
        send_udp(netns, 7700, 3000, payload=b"D" * 400)
        time.sleep(0.5)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    code, _, err = finish(proc)
    assert code == 3, err
    assert "ring full" in err


def test_help_and_version() -> None:
    r = subprocess.run(argv("--version"), capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "ipsec-nflog" in r.stdout
    r = subprocess.run(argv("capture", "--help"), capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "-w FILE" in r.stdout and "--rules" in r.stdout


def test_python_dash_m_works() -> None:
    r = subprocess.run([sys.executable, "-m", "ipsec_nflog", "--version"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0


@pytest.mark.privileged
def test_write_to_stdout_pipes_a_pcap(netns: str) -> None:
    import io

    from ipsec_nflog.files.writer import CaptureReader

    add_nflog(netns, 7800, 59, prefix="piped")
    proc = subprocess.Popen(argv("capture", "--netns", netns, "-g", "59", "-w", "-", "-c",
                                 "4", "-q"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_bound(netns, 59, proc)  # type: ignore[arg-type]
    send_udp(netns, 7800, 4)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    pkts = list(CaptureReader(io.BytesIO(out)))
    assert [p.prefix for p in pkts] == ["piped"] * 4


@pytest.mark.privileged
def test_full_disk_stops_cleanly_with_a_valid_file(netns: str, tmp_path: Path) -> None:
    """ENOSPC mid-capture: the capture stops, says how much it wrote, the file keeps every
    complete record, and the rules it installed are gone."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], check=True)
    try:
        out = mnt / "full.pcap"
        proc = start("capture", "--netns", netns, "-g", "60", "-w", str(out), "--rules",
                     "ike-esp-out", "--backend", "iptables", "--ike-port", "7900")
        wait_bound(netns, 60, proc)
        s = nstools.ns_socket(netns)
        for _ in range(400):
            s.sendto(b"F" * 1000, ("127.0.0.1", 7900))
        s.close()
        code, _, err = finish(proc)
        assert code == 1, err
        assert "No space left on device" in err
        assert "Traceback" not in err
        records = list(read_capture(str(out)))
        assert 0 < len(records) < 400
        assert f"keeps {len(records)} complete records" in err
        assert f"{len(records)} written" in err
        assert all(len(p.payload or b"") == 1028 for p in records)
        assert our_rules(netns) == ""
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.privileged
def test_rules_install_show_remove(netns: str) -> None:
    def run(*args: str) -> str:
        r = subprocess.run(argv("rules", *args, "--netns", netns), capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout

    out = run("install", "ike-esp-out", "-g", "61", "--backend", "iptables", "--family", "ipv4")
    tag = out.split("--tag ")[-1].strip()
    assert tag and f"ipsec_nflog:{tag}" in our_rules(netns)
    assert tag in run("show")
    assert "removed 3 rule(s)" in run("remove", "--tag", tag)
    assert our_rules(netns) == ""
    assert "no ipsec_nflog rules installed" in run("show")


def test_read_truncated_file_prints_whole_records_then_one_error(tmp_path: Path) -> None:
    src = Path(__file__).resolve().parents[1] / "fixtures" / "pcap_tcpdump_nflog.pcap"
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(src.read_bytes()[:300])
    r = subprocess.run(argv("read", str(cut)), capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert len(r.stdout.splitlines()) == 1 and "nflog:7" in r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "byte offset 160" in lines[0] and "truncated" in lines[0]
