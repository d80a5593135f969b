"""Issue 9, files and reading: planted links at output paths and rotation slots, -Z chown,
terminal escapes from untrusted files, streamed key logs, out-of-range timestamps, records
lost on write errors, argument checks, and ``read -``."""

from __future__ import annotations

import errno
import os
import pwd
import re
import resource
import signal
import stat
import struct
import subprocess
import time
from pathlib import Path
from typing import IO

import pytest

from ipsec_nflog.cli.main import build_parser
from ipsec_nflog.files.format import (
    BLOCK_EPB,
    BLOCK_IDB,
    BLOCK_SHB,
    BYTE_ORDER_MAGIC,
    HOST,
    IF_TSOFFSET,
    IF_TSRESOL,
    encode_block,
    encode_options,
)
from ipsec_nflog.files.writer import CaptureWriteError, open_writer, read_capture
from ipsec_nflog.ipsec import decrypt, keys
from ipsec_nflog.nflog.packet import parse_nflog
from ipsec_nflog.nflog.summary import printable, summarize
from tests.cli.test_cli import add_nflog, argv, finish, send_udp, start, wait_bound
from tests.files.test_pcapfile import ipv4_udp, nflog_body, record, sample_records

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
EVIL = "ev\x1b]0;owned\x07il\r\nX\x9b2J\u202e"  # OSC title, BEL, CR/LF, CSI, RTL override
RAW_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202e]")  # what must never get out


def nobody() -> pwd.struct_passwd:
    return pwd.getpwnam("nobody")


def run(*args: str, stdin: IO[bytes] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv(*args), capture_output=True, text=True, timeout=60,
                          stdin=stdin)


def one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def pcapng_with(timestamp: int, *, tsresol: int = 6, tsoffset: int = 0) -> bytes:
    """A pcapng file with one NFLOG EPB whose 64-bit timestamp is ``timestamp``."""
    body = nflog_body(7, prefix="ts")
    opts = [(IF_TSRESOL, bytes([tsresol]))]
    if tsoffset:
        opts.append((IF_TSOFFSET, struct.pack("=q", tsoffset)))
    shb = encode_block(HOST, BLOCK_SHB, struct.pack("=IHHq", BYTE_ORDER_MAGIC, 1, 0, -1))
    idb = encode_block(HOST, BLOCK_IDB, struct.pack("=HHI", 239, 0, 262144)
                       + encode_options(HOST, opts))
    head = struct.pack("=IIIII", 0, timestamp >> 32, timestamp & 0xFFFFFFFF, len(body),
                       len(body))
    return shb + idb + encode_block(HOST, BLOCK_EPB, head + body)


def pcap_of(*bodies: bytes) -> bytes:
    header = struct.pack("=IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 239)
    return header + b"".join(record(b) for b in bodies)


# -- defect 4: planted links at the output path ------------------------------------------
@pytest.mark.parametrize("overwrite", [False, True])
def test_writer_never_follows_a_symlink(tmp_path: Path, overwrite: bool) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"secret")
    link = tmp_path / "x.pcap"
    link.symlink_to(target)
    with pytest.raises(OSError, match="is a symbolic link; not following it") as info:
        open_writer(link, overwrite=overwrite)
    assert info.value.errno == errno.ELOOP and info.value.filename == str(link)
    assert target.read_bytes() == b"secret" and link.is_symlink()
    dangling = tmp_path / "d.pcap"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(OSError, match="symbolic link"):
        open_writer(dangling, overwrite=overwrite)
    assert not (tmp_path / "nowhere").exists()


def test_overwrite_replaces_a_hard_link_instead_of_truncating_it(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"secret")
    target.chmod(0o644)
    out = tmp_path / "x.pcap"
    os.link(target, out)
    with open_writer(out, overwrite=True) as w:
        assert w.created and w.files == [str(out)]
        w.write_records(sample_records(1)[0], 1)
    assert target.read_bytes() == b"secret"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644 and target.stat().st_nlink == 1
    assert out.stat().st_ino != target.stat().st_ino
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and len(list(read_capture(out))) == 1


def test_device_is_written_into_but_not_reported_as_created() -> None:
    with open_writer("/dev/null", overwrite=True) as w:
        assert not w.created and w.files == []
        w.write_records(sample_records(1)[0], 1)
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to plant a FIFO of nobody's")
def test_overwrite_refuses_someone_elses_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "x.pcap"
    os.mkfifo(fifo)
    os.chown(fifo, nobody().pw_uid, nobody().pw_gid)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # nobody, waiting for our data
    try:
        with pytest.raises(PermissionError, match="FIFO owned by uid"):
            open_writer(fifo, overwrite=True).close()
        assert os.read(reader, 100) == b""  # got nothing, not even a pcap header
    finally:
        os.close(reader)


@pytest.mark.parametrize("overwrite", [False, True])
def test_symlink_at_a_rotation_slot_stops_cleanly_and_counts_the_loss(
        tmp_path: Path, overwrite: bool) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"secret")
    (tmp_path / "x.pcap1").symlink_to(target)
    recs = sample_records(4)
    w = open_writer(tmp_path / "x.pcap", rotate_bytes=24 + len(recs[0]) + len(recs[1]),
                    overwrite=overwrite)
    with pytest.raises(CaptureWriteError, match=r"x\.pcap1 is a symbolic link") as info:
        w.write_records(b"".join(recs), 4)
    assert info.value.errno == errno.ELOOP and info.value.records_written == 2
    assert (w.records_written, w.records_lost) == (2, 2)
    with pytest.raises(ValueError, match="failed"):
        w.write_records(recs[0], 1)  # a failed writer takes nothing, and says so
    assert w.records_lost == 3
    w.close()
    assert target.read_bytes() == b"secret"
    assert len(list(read_capture(tmp_path / "x.pcap"))) == 2


def test_records_lost_on_a_write_error(tmp_path: Path) -> None:
    calls = []

    def failing_writev(fd: int, bufs: object) -> int:
        calls.append(fd)
        if len(calls) > 1:  # the header goes through, the first batch does not
            raise OSError(errno.EPIPE, "Broken pipe")
        return os.writev(fd, bufs)  # type: ignore[arg-type]

    w = open_writer(tmp_path / "e.pcap", writev=failing_writev)
    recs = sample_records(5)
    with pytest.raises(CaptureWriteError, match="Broken pipe"):
        w.write_records(b"".join(recs), 5)
    assert (w.records_written, w.records_lost) == (0, 5)
    w.close()


def test_writer_on_a_descriptor_never_rotates_and_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "fd.pcap"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        with pytest.raises(ValueError, match="cannot rotate"):
            open_writer(fd, rotate_bytes=100)
        with open_writer(fd) as w:
            assert not w.created and w.files == [] and w.path == f"<fd {fd}>"
            w.write_records(sample_records(2)[0], 1)
        os.fstat(fd)  # the caller's descriptor stays open
    finally:
        os.close(fd)
    assert len(list(read_capture(path))) == 1


# -- defect 9: escaping ------------------------------------------------------------------
def test_printable_escapes_every_control_and_keeps_text() -> None:
    assert printable("ike-esp-out é") == "ike-esp-out é"
    assert printable(EVIL) == "ev\\x1b]0;owned\\x07il\\r\\nX\\x9b2J\\u202e"
    assert printable("a\\b\t\x7f\x00") == "a\\b\\t\\x7f\\x00"
    assert printable(b"\xff".decode("utf-8", "surrogateescape")) == "\\xff"


def test_summary_escapes_the_prefix() -> None:
    pkt = parse_nflog(nflog_body(5, prefix=EVIL), 1_700_000_000, 0)
    line = summarize(pkt)
    assert not RAW_CONTROLS.search(line) and "\n" not in line
    assert "ev\\x1b]0;owned\\x07il\\r\\nX" in line


def test_read_prints_a_crafted_prefix_escaped(tmp_path: Path) -> None:
    path = tmp_path / "evil.pcap"
    path.write_bytes(pcap_of(nflog_body(5, prefix=EVIL), nflog_body(5, prefix="fine")))
    r = run("read", str(path))
    assert r.returncode == 0, r.stderr
    assert not RAW_CONTROLS.search(r.stdout)
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and "ev\\x1b]0;owned\\x07il\\r\\nX" in lines[0] and "fine" in lines[1]


def test_error_lines_escape_file_names(tmp_path: Path) -> None:
    r = run("read", str(tmp_path / "no\x1b[2Jsuch\x07.pcap"))
    line = one_error_line(r)
    assert r.returncode != 0 and "no\\x1b[2Jsuch\\x07.pcap" in line
    assert not RAW_CONTROLS.search(r.stderr)
    bad = tmp_path / "bad\x1b]0;t\x07.pcap"  # a message that quotes the name without repr
    bad.write_bytes(b"\xde\xad\xbe\xef" * 8)
    r = run("read", str(bad))
    line = one_error_line(r)
    assert "bad\\x1b]0;t\\x07.pcap" in line and "not a pcap or pcapng file" in line
    assert not RAW_CONTROLS.search(r.stderr)
    r = run("capture", "-g", "5", "--duration", "x\x1b[31m")
    assert "x\\x1b[31m" in one_error_line(r) and not RAW_CONTROLS.search(r.stderr)


def test_keys_output_escapes_what_the_log_says(tmp_path: Path) -> None:
    text = (FIXTURES / "keys_cbc_charon_initiator.log").read_text()
    crafted = tmp_path / "charon\x1b[2J.log"
    crafted.write_text(text.replace("src 192.0.2.2 dst", "src 192.0.2.2\x1b]0;x\x07 dst"))
    r = run("keys", "--log", str(crafted))
    assert r.returncode == 0, r.stderr
    assert not RAW_CONTROLS.search(r.stdout + r.stderr)
    assert len(r.stdout.splitlines()) == 2  # the IKE_SA and the one good ESP SA
    warning = next(ln for ln in r.stderr.splitlines() if "not IP addresses" in ln)
    assert "charon\\x1b[2J.log" in warning and "192.0.2.2\\x1b]0;x\\x07" in warning
    bad_sa = tmp_path / "esp_sa"
    bad_sa.write_text('"IPv4","10.0.0.1\x1b[2J","10.0.0.2","0x1","NULL","0x","NULL","0x"\n')
    with pytest.raises(ValueError, match="not IP addresses"):
        keys.read_esp_sa(bad_sa)


def test_decrypt_description_is_escaped() -> None:
    res = decrypt.DecryptResult(decrypt.UNKNOWN_SPI, 1, 2, message="to \x1b[2J")
    assert res.describe().endswith("to \\x1b[2J]")


# -- defect 10: streamed key logs --------------------------------------------------------
def _limited(cmd: list[str], seconds: float) -> subprocess.CompletedProcess[str]:
    def limit() -> None:  # the old code grew until MemoryError; 1 GiB is plenty for us
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, preexec_fn=limit)
    assert time.monotonic() - t0 < seconds, "reading /dev/zero took too long"
    return r


def test_keys_log_dev_zero_finishes_quickly_with_bounded_memory() -> None:
    r = _limited(argv("keys", "--log", "/dev/zero"), 20)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "MemoryError" not in r.stderr
    assert "/dev/zero: no line break in 16777216 bytes" in r.stderr
    assert "not a text log" in r.stderr


def test_read_log_dev_zero_is_one_warning_and_one_error() -> None:
    fixture = FIXTURES / "pcap_tcpdump_nflog.pcap"
    r = _limited(argv("read", str(fixture), "--log", "/dev/zero"), 20)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2 and "not a text log" in lines[0], r.stderr
    assert "no usable ESP keys in /dev/zero" in lines[1]


def test_long_lines_are_skipped_counted_and_the_rest_still_parses(tmp_path: Path) -> None:
    text = (FIXTURES / "keys_cbc_charon_initiator.log").read_text()
    lines = text.splitlines(keepends=True)
    middle = len(lines) // 2
    crafted = "".join(lines[:middle]) + "A" * 200_000 + "\n" + "".join(lines[middle:])
    path = tmp_path / "long.log"
    path.write_text(crafted)
    with keys.open_log(path) as log_lines:
        found = keys.parse_charon_log(log_lines)
    assert log_lines.skipped == 1
    assert log_lines.warnings() == ["1 line(s) longer than 65536 bytes skipped"]
    want = keys.parse_charon_log(text)
    assert [s.uat_line() for s in found.esp] == [s.uat_line() for s in want.esp]
    assert len(found.esp) == 2 and len(found.ike) == len(want.ike) == 1
    sas, warnings = decrypt.read_charon_logs([path])
    assert len(sas) == 2 and warnings == [f"{path}: 1 line(s) longer than 65536 bytes skipped"]


def test_esp_sa_file_without_line_breaks_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "esp_sa"
    path.write_bytes(b'"IPv4"' + b"," * 100_000)
    with pytest.raises(ValueError, match="not an esp_sa file"):
        keys.read_esp_sa(path)


# -- defect 10: timestamps out of the platform's range -----------------------------------
@pytest.mark.parametrize("data,shown", [
    (pcapng_with((1 << 64) - 1, tsresol=0), "@18446744073709551615.000000"),
    (pcapng_with((1 << 64) - 1), "@18446744073709.551615"),
    (pcapng_with(0, tsoffset=-(1 << 62)), f"@{-(1 << 62)}.000000"),
], ids=["seconds", "microseconds", "tsoffset"])
@pytest.mark.parametrize("utc", [False, True], ids=["local", "utc"])
def test_read_shows_an_out_of_range_timestamp_raw(
        tmp_path: Path, data: bytes, shown: str, utc: bool) -> None:
    path = tmp_path / "huge.pcapng"
    path.write_bytes(data)
    r = run("read", str(path), *(["--utc"] if utc else []))
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.startswith(shown) and "nflog:7" in r.stdout and "ts" in r.stdout


def test_decrypted_writer_skips_a_timestamp_pcap_cannot_hold(tmp_path: Path) -> None:
    with decrypt.DecryptedWriter(tmp_path / "inner.pcap") as w:
        w.write_packet(1 << 40, 0, ipv4_udp(b"x"))
        w.write_packet(1_700_000_000, 5, ipv4_udp(b"y"))
    assert w.records_skipped == 1
    assert [p.ts_sec for p in read_capture(tmp_path / "inner.pcap")] == [1_700_000_000]


# -- defect 10: arguments ----------------------------------------------------------------
@pytest.mark.parametrize("args,needle", [
    (["capture", "-g", "5", "-w", ""], "file name is empty"),
    (["capture", "-g", "5", "--duration", "0"], "> 0"),
    (["capture", "-g", "5", "--duration", "nan"], "'nan'"),
    (["capture", "-g", "5", "--duration", "inf"], "'inf'"),
    (["capture", "-g", "5", "--duration=-2"], "'-2'"),
    (["capture", "-g", "5", "--flush-timeout", "nan"], "'nan'"),
    (["read", ""], "file name is empty"),
])
def test_bad_arguments_are_one_line_from_the_parser(args: list[str], needle: str) -> None:
    r = run(*args)
    line = one_error_line(r)
    assert r.returncode == 2 and line.startswith("ipsec-nflog: error: argument"), line
    assert needle in line


def test_good_arguments_still_parse() -> None:
    args = build_parser().parse_args(["capture", "-g", "5", "--duration", "0.5",
                                      "--flush-timeout", "0", "-w", "-"])
    assert (args.duration, args.flush_timeout, args.write) == (0.5, 0.0, "-")


# -- defect 10: read - -------------------------------------------------------------------
@pytest.mark.parametrize("fixture", ["pcap_tcpdump_nflog.pcap",
                                     "pcap_tcpdump_nflog_editcap.pcapng"])
def test_read_dash_reads_standard_input_from_a_pipe(fixture: str) -> None:
    path = FIXTURES / fixture
    want = run("read", str(path))
    assert want.returncode == 0 and want.stdout
    cat = subprocess.Popen(["cat", str(path)], stdout=subprocess.PIPE)
    try:
        got = run("read", "-", stdin=cat.stdout)
    finally:
        assert cat.stdout is not None
        cat.stdout.close()
        cat.wait()
    assert got.returncode == 0, got.stderr
    assert got.stdout == want.stdout


def test_read_dash_truncated_input_names_stdin_and_the_offset() -> None:
    data = (FIXTURES / "pcap_tcpdump_nflog.pcap").read_bytes()[:300]
    r = subprocess.run(argv("read", "-"), input=data, capture_output=True, timeout=60)
    assert r.returncode == 2 and r.stdout.count(b"\n") == 1, r.stderr
    lines = r.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "<stdin>" in lines[0] and "byte offset 160" in lines[0]


# -- privileged: the CLI against planted links, -Z and a vanishing pipe reader -----------
def _plant(directory: Path, sticky: bool) -> tuple[Path, Path]:
    directory.mkdir()
    directory.chmod(0o1777 if sticky else 0o777)
    target = directory.parent / "shadow"
    target.write_bytes(b"root:secret\n")
    target.chmod(0o640)
    link = directory / "x.pcap"
    link.symlink_to(target)
    os.lchown(link, nobody().pw_uid, nobody().pw_gid)  # planted by nobody
    return target, link


@pytest.mark.privileged
@pytest.mark.parametrize("sticky", [False, True], ids=["plain-dir", "sticky-dir"])
def test_cli_overwrite_with_Z_never_touches_a_symlink_target(
        netns: str, tmp_path: Path, sticky: bool) -> None:
    target, link = _plant(tmp_path / "shared", sticky)
    r = run("capture", "--netns", netns, "-g", "80", "-w", str(link), "--overwrite",
            "-Z", "nobody", "-c", "1")
    line = one_error_line(r)
    assert r.returncode != 0 and "is a symbolic link; not following it" in line
    st = target.stat()
    assert target.read_bytes() == b"root:secret\n"
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o640)
    assert link.is_symlink()


@pytest.mark.privileged
def test_cli_overwrite_with_Z_chowns_only_the_file_it_created(
        netns: str, tmp_path: Path) -> None:
    target = tmp_path / "shadow"
    target.write_bytes(b"root:secret\n")
    out = tmp_path / "x.pcap"
    os.link(target, out)  # a planted hard link (possible with protected_hardlinks=0)
    add_nflog(netns, 8100, 81)
    proc = start("capture", "--netns", netns, "-g", "81", "-w", str(out), "--overwrite",
                 "-Z", "nobody", "-c", "3")
    wait_bound(netns, 81, proc)
    send_udp(netns, 8100, 3)
    code, _, err = finish(proc)
    assert code == 0, err
    assert target.read_bytes() == b"root:secret\n" and target.stat().st_uid == 0
    assert out.stat().st_uid == nobody().pw_uid and len(list(read_capture(out))) == 3


@pytest.mark.privileged
def test_cli_Z_never_chowns_standard_output(netns: str, tmp_path: Path) -> None:
    out = tmp_path / "redirected.pcap"
    add_nflog(netns, 8200, 82)
    with open(out, "wb") as f:
        proc = subprocess.Popen(argv("capture", "--netns", netns, "-g", "82", "-w", "-",
                                     "-Z", "nobody", "-c", "2"),
                                stdout=f, stderr=subprocess.PIPE, text=True)
        wait_bound(netns, 82, proc)
        send_udp(netns, 8200, 2)
        code, _, err = finish(proc)
    assert code == 0, err
    assert out.stat().st_uid == 0 and len(list(read_capture(out))) == 2


@pytest.mark.privileged
def test_cli_symlink_at_a_rotation_slot_stops_cleanly(netns: str, tmp_path: Path) -> None:
    target = tmp_path / "shadow"
    target.write_bytes(b"root:secret\n")
    base = tmp_path / "rot.pcap"
    (tmp_path / "rot.pcap1").symlink_to(target)
    add_nflog(netns, 8300, 83)
    proc = start("capture", "--netns", netns, "-g", "83", "-w", str(base), "-C", "1",
                 "--overwrite")
    wait_bound(netns, 83, proc)
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        send_udp(netns, 8300, 200, payload=b"R" * 900)
        time.sleep(0.05)
    code, _, err = finish(proc)
    assert code == 1, err
    assert "Traceback" not in err and "rot.pcap1 is a symbolic link" in err
    assert target.read_bytes() == b"root:secret\n"
    written = len(list(read_capture(base)))
    m = re.search(r"packets received, (\d+) written, (\d+) lost", err)
    assert m is not None, err
    assert int(m.group(1)) == written > 0 and int(m.group(2)) >= 1
    assert f"keeps {written} complete records" in err


@pytest.mark.privileged
def test_cli_stdout_reader_exiting_ends_the_capture_with_the_loss_counted(
        netns: str) -> None:
    add_nflog(netns, 8400, 84)
    proc = start("capture", "--netns", netns, "-g", "84", "-w", "-")
    assert proc.stdout is not None
    head = subprocess.Popen(["head", "-c", "100"], stdin=proc.stdout, stdout=subprocess.PIPE)
    proc.stdout.close()  # head is the only reader now
    proc.stdout = None
    try:
        wait_bound(netns, 84, proc)
        send_udp(netns, 8400, 3, payload=b"H" * 200)
        got, _ = head.communicate(timeout=20)
        assert len(got) == 100
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:
            send_udp(netns, 8400, 5)
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    code, _, err = finish(proc)
    assert code == 1, err
    assert "Traceback" not in err and "Broken pipe" in err
    m = re.search(r"(\d+) written, (\d+) lost", err)
    assert m is not None and int(m.group(2)) >= 1, err
    assert "WARNING" in err and "standard output got" in err

