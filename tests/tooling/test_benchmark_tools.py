"""The capture benchmark's own tools: the load generator, the bare C reader and the capture
file counter (benchmarks/). Functional checks only; no timing is asserted here."""

from __future__ import annotations

import importlib.util
import json
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import require_tool
from tests.support import nstools

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
GROUP = 77
PORT = 9999


def _load_run_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_run", BENCH / "run.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = mod
    spec.loader.exec_module(mod)
    return mod


bench_run = _load_run_module()


@pytest.fixture(scope="module")
def bins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    gcc = require_tool("gcc", "gcc")
    out = tmp_path_factory.mktemp("bench-bin")
    built = {}
    for name, libs in (("loadgen", []), ("cref", ["-lnetfilter_log"])):
        exe = str(out / name)
        r = subprocess.run([gcc, "-O2", "-Wall", "-Werror", "-o", exe, str(BENCH / f"{name}.c"),
                            *libs], capture_output=True, text=True)
        if r.returncode != 0 and name == "cref" and "libnetfilter_log" in r.stderr:
            require_tool("libnetfilter-log-missing", "libnetfilter-log-dev")
        assert r.returncode == 0, r.stderr
        built[name] = exe
    return built


def _loadgen(ns: str, exe: str, *args: str) -> subprocess.CompletedProcess[str]:
    return nstools.run([exe, *args], ns=ns, check=False, timeout=30)


NOT_LOOPBACK = ["10.0.0.1", "127.0.0.2", "127.1", "8.8.8.8", "0.0.0.0", "255.255.255.255",
                "::2", "::", "fe80::1", "::ffff:127.0.0.1", "localhost", "127.0.0.1.example",
                " 127.0.0.1", ""]


@pytest.mark.privileged
def test_loadgen_refuses_non_loopback(netns: str, bins: dict[str, str]) -> None:
    # In a namespace that has nothing but lo, so even a bug could not reach a real network.
    for dst in NOT_LOOPBACK:
        r = _loadgen(netns, bins["loadgen"], "-d", dst, "-c", "1")
        assert r.returncode == 2, (dst, r)
        assert "refusing destination" in r.stderr, dst
        assert r.stdout == "", dst


def _ns_rules(ns: str) -> None:
    nstools.run(["iptables", "-w", "-t", "raw", "-A", "PREROUTING", "-p", "udp", "--dport",
                 str(PORT), "-j", "DROP"], ns=ns)
    nstools.run(["iptables", "-w", "-A", "OUTPUT", "-p", "udp", "--dport", str(PORT), "-j",
                 "NFLOG", "--nflog-group", str(GROUP)], ns=ns)


def _bound(ns: str, group: int) -> bool:
    out = nstools.run(["cat", "/proc/net/netfilter/nfnetlink_log"], ns=ns, check=False).stdout
    return any(line.split()[:1] == [str(group)] for line in out.splitlines())


@pytest.mark.privileged
def test_loadgen_count_mode_and_cref_capture_exactly(netns: str, bins: dict[str, str],
                                                     tmp_path: Path) -> None:
    require_tool("iptables", "iptables")
    _ns_rules(netns)
    out = tmp_path / "cref.pcap"
    reader = subprocess.Popen(["ip", "netns", "exec", netns, bins["cref"], "-g", str(GROUP),
                               "-w", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        deadline = time.monotonic() + 10
        while not _bound(netns, GROUP):
            assert reader.poll() is None, reader.stderr.read() if reader.stderr else ""
            assert time.monotonic() < deadline, "cref did not bind the group"
            time.sleep(0.02)

        n = 5000
        r = _loadgen(netns, bins["loadgen"], "-d", "127.0.0.1", "-p", str(PORT), "-s", "100",
                     "-r", "50000", "-b", "32", "-c", str(n))
        assert r.returncode == 0, r.stderr
        gen = json.loads(r.stdout)
        assert gen["sent"] == n
        assert gen["errors"] == {"ENOBUFS": 0, "EAGAIN": 0, "ECONNREFUSED": 0, "other": 0}
        assert gen["elapsed"] > 0

        # The kernel flushes a partial batch after the 100 ms flush timeout.
        deadline = time.monotonic() + 5
        while bench_run.count_records(str(out)).records < n and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        reader.send_signal(signal.SIGINT)
        stdout, _ = reader.communicate(timeout=10)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.communicate()
    assert reader.returncode == 0
    claim = json.loads(stdout)
    fc = bench_run.count_records(str(out))
    assert (fc.format, fc.error, fc.truncated_tail, fc.linktypes) == ("pcap", "", 0, {239})
    assert fc.records == n == claim["packets"]
    assert claim["enobufs"] == 0 and claim["truncated"] == 0

    # Every record is our UDP datagram: an NFLOG body whose payload is IPv4/UDP to PORT.
    from ipsec_nflog.nflog.packet import iter_records

    data = out.read_bytes()[24:]
    pkts = list(iter_records(data))
    assert len(pkts) == n
    for p in (pkts[0], pkts[-1]):
        assert p.group == GROUP
        ip = p.payload
        assert ip is not None and ip[0] >> 4 == 4 and ip[9] == 17
        assert struct.unpack("!H", ip[22:24])[0] == PORT
        assert len(ip) == 20 + 8 + 100
    seqs = [struct.unpack("=Q", p.payload[28:36])[0] for p in pkts]  # type: ignore[index]
    assert seqs == list(range(n))


@pytest.mark.privileged
def test_loadgen_ipv6_loopback_and_duration_mode(netns: str, bins: dict[str, str]) -> None:
    r = _loadgen(netns, bins["loadgen"], "-d", "::1", "-p", str(PORT), "-s", "0", "-c", "300")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["sent"] == 300  # ECONNREFUSED from ICMPv6 errors is retried
    r = _loadgen(netns, bins["loadgen"], "-p", str(PORT), "-r", "20000", "-t", "0.2")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert 0 < res["sent"] <= 20000 * 0.2 + 64
    assert res["duration"] == 0.2


@pytest.mark.privileged
def test_run_py_end_to_end_leaves_nothing_behind(tmp_path: Path) -> None:
    """One tiny cell through benchmarks/run.py: it builds, runs, reports, and deletes its
    namespace (the rules live only in it)."""
    require_tool("gcc", "gcc")
    require_tool("iptables", "iptables")
    out = tmp_path / "out"
    p = subprocess.Popen([sys.executable, str(BENCH / "run.py"), "--tools", "cref", "--rates",
                          "20k", "--sizes", "64", "--repeats", "1", "--duration", "0.3",
                          "--outdir", str(out), "--json", str(tmp_path / "runs.json")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.terminate()
            p.communicate()
    assert p.returncode == 0, stderr
    assert "| bare C reader | 64 B | 20k |" in stdout
    assert "### Targets (issue 5)" in stdout
    runs = json.loads((tmp_path / "runs.json").read_text())["runs"]
    assert len(runs) == 1 and runs[0]["error"] == ""
    assert runs[0]["sent"] > 0 and runs[0]["captured"] == runs[0]["sent"]
    names = nstools.run(["ip", "netns", "list"]).stdout
    assert f"ipnf-bench-{p.pid}-" not in names  # its namespace is named after its pid
    assert not list(out.glob("run-*")), "capture files left behind"


# -- the benchmark's file counter (pure Python) -----------------------------------------------
def _pcap(records: list[bytes], bo: str = "<", magic: int = 0xA1B2C3D4) -> bytes:
    out = struct.pack(bo + "IHHiIII", magic, 2, 4, 0, 0, 65535, 239)
    for i, body in enumerate(records):
        out += struct.pack(bo + "IIII", i, 0, len(body), len(body)) + body
    return out


def _pcapng(records: list[bytes], bo: str = "<") -> bytes:
    def block(btype: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        n = 12 + len(body)
        return struct.pack(bo + "II", btype, n) + body + struct.pack(bo + "I", n)

    out = block(0x0A0D0D0A, struct.pack(bo + "IHHq", 0x1A2B3C4D, 1, 0, -1))
    out += block(1, struct.pack(bo + "HHI", 239, 0, 65535))
    for body in records:
        out += block(6, struct.pack(bo + "IIIII", 0, 0, 0, len(body), len(body)) + body)
    out += block(5, b"\0" * 8)  # an Interface Statistics Block is not a packet
    return out


@pytest.mark.parametrize("bo", ["<", ">"])
def test_count_records_pcap_and_pcapng(tmp_path: Path, bo: str) -> None:
    recs = [bytes([2, 0, 0, 77]) + b"x" * k for k in (0, 1, 5, 60, 1400)]
    p = tmp_path / "a.pcap"
    p.write_bytes(_pcap(recs, bo))
    fc = bench_run.count_records(str(p))
    assert (fc.format, fc.records, fc.truncated_tail, fc.linktypes) == ("pcap", 5, 0, {239})
    p.write_bytes(_pcap(recs, bo)[:-3])  # a cut-off last record is not counted
    fc = bench_run.count_records(str(p))
    assert (fc.records, fc.truncated_tail) == (4, 16 + 1404 - 3)
    p.write_bytes(_pcap(recs, bo, magic=0xA1B23C4D))  # nanosecond pcap
    assert bench_run.count_records(str(p)).records == 5
    q = tmp_path / "a.pcapng"
    q.write_bytes(_pcapng(recs, bo) + _pcapng(recs[:2], bo))  # two sections
    fc = bench_run.count_records(str(q))
    assert (fc.format, fc.records, fc.truncated_tail, fc.linktypes) == ("pcapng", 7, 0, {239})
    (tmp_path / "bad").write_bytes(b"\0" * 100)
    assert bench_run.count_records(str(tmp_path / "bad")).error
    assert bench_run.count_records(str(tmp_path / "missing")).error


def test_run_parses_rates() -> None:
    assert [bench_run.parse_rate(s) for s in ("50k", "1M", "max", "1.5k", "2000")] == [
        50000, 1000000, 0, 1500, 2000]
    assert bench_run.fmt_rate(1_000_000) == "1M"
    assert bench_run.fmt_rate(0) == "max"



def test_iterator_target_takes_our_better_iterator_against_the_best_peer() -> None:
    from types import SimpleNamespace

    spec = importlib.util.spec_from_file_location("bench_targets15", BENCH / "targets15.py")
    assert spec and spec.loader
    targets15 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(targets15)

    class Cell:
        def __init__(self, *cpu: float) -> None:
            self.cpu = cpu

        def vals(self, f: object) -> list[float]:
            return [f(SimpleNamespace(cpu_us_per_pkt=c)) for c in self.cpu]  # type: ignore[operator]

    cells = {("iter", 64, 0): Cell(3.0, 3.1), ("iter-batch", 64, 0): Cell(1.0, 1.1),
             ("pcapy-parse", 64, 0): Cell(3.4, 3.5), ("scapy", 64, 0): Cell(300.0)}
    *_, (what, text, verdict) = targets15._rate_rows(cells)
    assert "3x the best Python peer" in what
    assert verdict == "met" and text.startswith("3.29x: iter-batch") and "pcapy-parse" in text
    del cells[("iter-batch", 64, 0)]
    *_, (_, text, verdict) = targets15._rate_rows(cells)
    assert verdict == "missed" and text.startswith("1.13x: iter ")
    del cells[("pcapy-parse", 64, 0)], cells[("scapy", 64, 0)]
    assert targets15._rate_rows(cells)[-1][1:] == ("not measured (no peer ran)", "—")


def test_the_targets_judged_instead_pcapng_per_byte_and_the_python_side() -> None:
    """The two rows the README argues for: pcapng's reader CPU per byte written against
    pcap's (with the file bytes per packet shown), and iter_build's Python side against the
    peer that hands out packets, with the noise of its repeats."""
    from types import SimpleNamespace

    spec = importlib.util.spec_from_file_location("bench_targets15", BENCH / "targets15.py")
    assert spec and spec.loader
    targets15 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(targets15)

    class Cell:
        def __init__(self, *runs: tuple[float, int, int]) -> None:  # cpu s, bytes, packets
            self.runs = [SimpleNamespace(cpu_ns_per_byte=1e9 * c / b, bytes_per_pkt=b / n,
                                         cpu_us_per_pkt=1e6 * c / n) for c, b, n in runs]

        def vals(self, f: object) -> list[float]:
            return [f(r) for r in self.runs]  # type: ignore[operator]

    # pcapng: 1.3x the CPU per packet, for 1.25x the bytes: 1.04x per byte
    cells = {("cli", 64, 0): Cell((1.0, 172_000_000, 1_000_000)),
             ("cli-pcapng", 64, 0): Cell((1.3, 215_000_000, 1_000_000))}
    what, text, verdict = targets15._per_byte_row(cells)
    assert "per byte written" in what and verdict == "met", text
    assert text.startswith("1.04x") and "215 against 172 (1.25x)" in text
    assert targets15._ratio_row(cells, "", "cli-pcapng", "cli", 1.1)[2] == "missed"
    cells[("cli-pcapng", 64, 0)] = Cell((1.6, 215_000_000, 1_000_000))
    assert targets15._per_byte_row(cells)[2] == "missed"
    del cells[("cli", 64, 0)]
    assert targets15._per_byte_row(cells)[1:] == ("not measured (cli missing)", "—")

    side = {"ours": [0.70, 0.72], "peer walk": [1.75, 1.8], "peer walk + objects": [2.2, 2.3]}
    what, text, verdict = targets15._python_side_row(side)
    assert "Python side" in what and verdict == "met", text
    assert text.startswith("3.17x (noise allows 3.06-3.29x)") and "bare walk alone 2.50x" in text
    side["ours"] = [0.70, 0.80]
    assert targets15._python_side_row(side)[2] == "met (within noise)"
    side["ours"] = [0.9]
    assert targets15._python_side_row(side)[2] == "missed"
    assert targets15._python_side_row("iter_build.py failed: boom")[1:] == (
        "not measured (iter_build.py failed: boom)", "—")
    assert targets15._python_side_row(None)[1] == "not measured (iter_build.py not run)"


@pytest.mark.requires_core
def test_iter_build_compares_rows_that_see_the_same_fields() -> None:
    """benchmarks/iter_build.py: the peer's walk finds the payload, prefix and hook our
    packets have, on the same records, and the report has a row for each way."""
    sys.path.insert(0, str(BENCH))
    try:
        import iter_build  # type: ignore[import-not-found]
        from bench_writer import make_ring  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(BENCH))
    from ipsec_nflog.capture.config import CaptureConfig
    from ipsec_nflog.capture.live import Capture

    (buf, count), = make_ring(40, 64, 40)[0]
    with Capture._offline(CaptureConfig(groups=(1,))) as cap:
        ours = [(p.payload, p.prefix, p.hook, p.ts_sec, p.ts_usec, p.orig_len)
                for p in cap._packets_of(buf.tobytes(), count)]
    records = iter_build.peer_records([buf])
    theirs = [(p.payload, p.prefix, p.hook, p.ts_sec, p.ts_usec, p.orig_len)
              for p in iter_build.peer_objects(records)]
    assert ours == theirs and len(ours) == 40 and ours[0][1] == "bench"
    assert iter_build.peer_walk(records) == 40

    r = subprocess.run([sys.executable, str(BENCH / "iter_build.py"), "--packets", "300",
                        "--batch", "100", "--repeats", "1"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if line.startswith("| ") and "x |" in line]
    assert [row.split(" | ")[0][2:] for row in rows] == [
        "ours", "peer walk", "peer walk + objects", "file parser"]
    assert rows[0].endswith("| 1.00x |")
    r = subprocess.run([sys.executable, str(BENCH / "iter_build.py"), "--packets", "300",
                        "--batch", "100", "--repeats", "2", "--json"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    side = json.loads(r.stdout)
    assert list(side) == ["ours", "peer walk", "peer walk + objects", "file parser"]
    assert all(len(v) == 2 and min(v) > 0 for v in side.values())
