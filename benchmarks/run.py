#!/usr/bin/env python3
"""The capture benchmark: NFLOG readers against the same offered load, in the same run.

    python benchmarks/run.py [--quick] [--repeats N] [--rates 20k,50k,...,1M,max]
                             [--sizes 64,1400] [--tools tcpdump,cref,cli,batch,iter]

Needs root (network namespaces, iptables, NFLOG), gcc and libnetfilter-log-dev; the Python
consumers use the project's .venv (--python to change). See benchmarks/README.md.

What it does:
  * builds benchmarks/loadgen.c (sendmmsg UDP generator, loopback only) and benchmarks/cref.c
    (bare C libnetfilter_log reader, the reference ceiling) into benchmarks/out/;
  * creates a throwaway network namespace (deleted at the end, also on Ctrl-C/SIGTERM) with
    lo up, a raw-table DROP for the benchmark's UDP port on PREROUTING (so the receive side
    costs nothing) and an NFLOG rule for it on OUTPUT; no traffic leaves that namespace and
    nothing is changed outside it;
  * for every payload size x offered rate x repeat x tool (tools interleaved, so drift hits
    all of them alike): starts the reader in the namespace writing a file, waits until the
    group is bound (the namespace's /proc/net/netfilter/nfnetlink_log), runs the generator
    for a fixed time, waits until the kernel queue, the reader's socket and the reader are
    drained, stops the reader with SIGINT, and counts the records in the file by walking the
    pcap/pcapng headers (never the tool's own claim). loss = sent - captured. Reader CPU =
    utime+stime (wait4 rusage) minus what the reader used before the load started;
  * prints a markdown table (medians with min-max over the repeats), each tool's lossless
    rate, and the issue's targets marked met / missed / not shown (not decidable from what the
    generator could offer).

A cell is lossless when loss <= 0.01 % of sent (--loss-tolerance) in every repeat and the
reader did not fall behind during the load (see --keepup-min). Rates are the generator's
*achieved* send rates (medians), below the offered rate when the generator cannot keep up
("max" is flat out).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import mmap
import os
import platform
import random
import shlex
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(HERE, "out")

DEFAULT_RATES = "20k,50k,100k,200k,300k,500k,1M,max"
DEFAULT_SIZES = "64,1400"
DEFAULT_TOOLS = "tcpdump,cref,cli,batch,iter"
QUICK_RATES = "20k,100k,300k,max"

# Targets from issue 5 (printed next to the results; never asserted anywhere).
TARGET_LOSSLESS_PPS_64 = 1_000_000
TARGET_X_TCPDUMP = 6.0
TARGET_OF_CREF = 0.90
TARGET_CPU_US_64 = 0.3
TARGET_BATCH_RPS = 1_000_000
TARGET_ITER_PPS = 500_000
SATURATED = 0.9  # reader CPU seconds per second of load that count as "no CPU left"


def _venv_python() -> str:
    p = os.path.join(ROOT, ".venv", "bin", "python")
    return p if os.access(p, os.X_OK) else sys.executable


def _venv_bin(name: str) -> str | None:
    p = os.path.join(ROOT, ".venv", "bin", name)
    return p if os.access(p, os.X_OK) else shutil.which(name)


# --------------------------------------------------------------------------------------
# Tools. argv entries are formatted with {group}, {out}, {cref}, {python}, {consumers},
# {cli}. Adjust the argv here when a tool's command line changes.
# --------------------------------------------------------------------------------------
@dataclass
class Tool:
    name: str
    label: str
    argv: list[str]
    probe: str  # name of the availability check below
    note: str = ""
    count_from_claim: bool = False  # diagnostic tools that write no records
    linktype: int = 239  # of the file it writes (LINKTYPE_NFLOG; 101 raw IP)
    available: bool = False
    why_not: str = ""


TOOLS: dict[str, Tool] = {
    t.name: t
    for t in (
        Tool("tcpdump", "tcpdump -w", ["tcpdump", "-i", "nflog:{group}", "-w", "{out}"],
             "tcpdump"),
        Tool("cref", "bare C reader", ["{cref}", "-g", "{group}", "-w", "{out}"], "cref"),
        # The C reader with --low-latency's kernel settings: the floor for one packet per
        # netlink message.
        Tool("cref-lowlat", "bare C reader, --low-latency settings",
             ["{cref}", "-q", "1", "-t", "0", "-n", "4096", "-g", "{group}", "-w", "{out}"],
             "cref"),
        Tool("cli", "ipsec-nflog capture -w",
             ["{cli}", "capture", "-g", "{group}", "-w", "{out}"], "cli"),
        Tool("cli-lowlat", "ipsec-nflog capture --low-latency -w",
             ["{cli}", "capture", "--low-latency", "-g", "{group}", "-w", "{out}"], "cli"),
        Tool("batch", "Python batch API", ["{python}", "{consumers}", "batch", "--group",
                                           "{group}", "--out", "{out}"], "capture"),
        Tool("batch-nosync", "Python batch API, no fdatasync",
             ["{python}", "{consumers}", "batch", "--flush-interval", "none", "--group",
              "{group}", "--out", "{out}"], "capture"),
        Tool("iter", "Python per-packet iterator", ["{python}", "{consumers}", "iter",
                                                     "--group", "{group}", "--out", "{out}"],
             "capture"),
        Tool("iter-batch", "Python per-packet iterator, each batch written by the library's "
             "writer", ["{python}", "{consumers}", "iter-batch", "--group", "{group}", "--out",
                        "{out}"], "capture"),
        Tool("cli-pcapng", "ipsec-nflog capture --pcapng -w",
             ["{cli}", "capture", "--pcapng", "-g", "{group}", "-w", "{out}"], "cli"),
        Tool("cli-raw", "ipsec-nflog capture --raw -w",
             ["{cli}", "capture", "--raw", "-g", "{group}", "-w", "{out}"], "cli",
             linktype=101),
        # Peers a Python user would pick instead (benchmarks/requirements.txt):
        Tool("pcapy", "pcapy-ng (libpcap) nflog:N in-process",
             ["{python}", "{consumers}", "pcapy", "--group", "{group}", "--out", "{out}"],
             "py:pcapy"),
        Tool("pcapy-parse", "pcapy-ng nflog:N + Python TLV walk (payload, prefix, hook)",
             ["{python}", "{consumers}", "pcapy-parse", "--group", "{group}", "--out",
              "{out}"], "py:pcapy"),
        Tool("scapy", "scapy sniff(iface=nflog:N)",
             ["{python}", "{consumers}", "scapy", "--group", "{group}", "--out", "{out}"],
             "py:scapy"),
        Tool("nflogr", "nflogr (PyPI)",
             ["{python}", "{consumers}", "nflogr", "--group", "{group}", "--out", "{out}"],
             "py:nflogr", linktype=101),
        # Diagnostics, not in the default set:
        Tool("iter-parse", "Python iterator, parse only (self-counted)",
             ["{python}", "{consumers}", "iter", "--no-write", "--group", "{group}", "--out",
              "{out}"], "capture", count_from_claim=True),
    )
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_rate(s: str) -> int:
    """'50k' -> 50000, '1M' -> 1000000, 'max'/'flat'/'0' -> 0 (flat out)."""
    s = s.strip().lower()
    if s in ("max", "flat", "0", "inf"):
        return 0
    mult = 1
    if s.endswith("k"):
        mult, s = 1000, s[:-1]
    elif s.endswith("m"):
        mult, s = 1_000_000, s[:-1]
    v = int(float(s) * mult)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"bad rate {s!r}")
    return v


def fmt_rate(pps: float) -> str:
    if pps <= 0:
        return "max"
    if pps >= 1e6:
        return f"{pps / 1e6:.2f}M".replace(".00M", "M")
    if pps >= 1e3:
        return f"{pps / 1e3:.0f}k"
    return f"{pps:.0f}"


# --------------------------------------------------------------------------------------
# Capture file counting: walk the record headers, never trust the tool.
# --------------------------------------------------------------------------------------
PCAP_MAGICS = {0xA1B2C3D4: False, 0xA1B23C4D: True}  # value: nanosecond precision
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_PACKET_BLOCKS = (2, 3, 6)  # obsolete Packet Block, Simple Packet, Enhanced Packet


@dataclass
class FileCount:
    records: int = 0
    format: str = "?"
    truncated_tail: int = 0  # bytes of an incomplete last record (a cut-off write)
    linktypes: set[int] = field(default_factory=set)
    error: str = ""


def count_records(path: str) -> FileCount:
    """Count packet records in a pcap or pcapng file by walking the headers."""
    fc = FileCount()
    try:
        size = os.path.getsize(path)
    except OSError as e:
        fc.error = f"no file: {e.strerror}"
        return fc
    if size < 24:
        fc.error = f"file too short ({size} bytes)"
        return fc
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        (magic,) = struct.unpack_from("<I", mm, 0)
        if magic == PCAPNG_SHB:
            return _count_pcapng(mm, size, fc)
        for bo in ("<", ">"):
            (m,) = struct.unpack_from(bo + "I", mm, 0)
            if m in PCAP_MAGICS:
                fc.format = "pcap"
                fc.linktypes.add(struct.unpack_from(bo + "I", mm, 20)[0] & 0x0FFFFFFF)
                return _count_pcap(mm, size, bo, fc)
        fc.error = f"not a pcap/pcapng file (magic {magic:#x})"
        return fc


def _count_pcap(mm: mmap.mmap, size: int, bo: str, fc: FileCount) -> FileCount:
    unpack = struct.Struct(bo + "I").unpack_from
    off, n = 24, 0
    while off + 16 <= size:
        (caplen,) = unpack(mm, off + 8)
        nxt = off + 16 + caplen
        if nxt > size:
            break
        off = nxt
        n += 1
    fc.records = n
    fc.truncated_tail = size - off
    return fc


def _count_pcapng(mm: mmap.mmap, size: int, fc: FileCount) -> FileCount:
    fc.format = "pcapng"
    off, n, bo = 0, 0, "<"
    while off + 12 <= size:
        (btype_le,) = struct.unpack_from("<I", mm, off)
        if btype_le == PCAPNG_SHB:  # each section sets its own byte order
            (bom,) = struct.unpack_from("<I", mm, off + 8)
            bo = "<" if bom == 0x1A2B3C4D else ">"
        btype, blen = struct.unpack_from(bo + "II", mm, off)
        if blen < 12 or blen % 4 or off + blen > size:
            break
        if btype in PCAPNG_PACKET_BLOCKS:
            n += 1
        elif btype == 1:  # Interface Description Block
            fc.linktypes.add(struct.unpack_from(bo + "H", mm, off + 8)[0])
        off += blen
    fc.records = n
    fc.truncated_tail = size - off
    return fc


# --------------------------------------------------------------------------------------
# Process accounting
# --------------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """CPU time of all live threads of pid (ns precision from schedstat)."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    except OSError:
        return _stat_cpu_seconds(pid)
    return total / 1e9


def _stat_cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def nflog_instance(pid: int, group: int) -> dict[str, int] | None:
    """The group's line of /proc/net/netfilter/nfnetlink_log as seen by pid's namespace."""
    try:
        with open(f"/proc/{pid}/net/netfilter/nfnetlink_log") as f:
            for line in f:
                v = line.split()
                if len(v) >= 7 and int(v[0]) == group:
                    return {"group": int(v[0]), "portid": int(v[1]), "qlen": int(v[2]),
                            "copy_mode": int(v[3]), "copy_range": int(v[4]),
                            "flush_cs": int(v[5])}
    except (OSError, ValueError):
        pass
    return None


def netlink_socket(pid: int, portid: int) -> dict[str, int] | None:
    """Rmem and Drops of the NETLINK_NETFILTER socket with this port id (/proc/net/netlink)."""
    try:
        with open(f"/proc/{pid}/net/netlink") as f:
            next(f)
            for line in f:
                v = line.split()
                if len(v) >= 10 and v[1] == "12" and int(v[2]) == portid:
                    return {"rmem": int(v[4]), "drops": int(v[8])}
    except (OSError, ValueError, StopIteration):
        pass
    return None


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy since boot (/proc/stat, all CPUs)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")


def exited(pid: int) -> bool:
    """Whether our child pid has exited, without reaping it (its rusage is still to come)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def same_netns(pid: int, ns: str) -> bool:
    try:
        a = os.stat(f"/proc/{pid}/ns/net")
        b = os.stat(f"/run/netns/{ns}")
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
    except OSError:
        return False


# --------------------------------------------------------------------------------------
# Namespace
# --------------------------------------------------------------------------------------
def sh(argv: Sequence[str], *, check: bool = True, timeout: float = 30,
       ns: str | None = None) -> subprocess.CompletedProcess[str]:
    full = (["ip", "netns", "exec", ns] if ns else []) + list(argv)
    r = subprocess.run(full, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{shlex.join(full)} failed ({r.returncode}): "
                           f"{(r.stderr or r.stdout).strip()}")
    return r


class BenchNetns:
    """A throwaway namespace with lo up, a receive-side DROP and an OUTPUT NFLOG rule."""

    def __init__(self, group: int, port: int, threshold: int | None) -> None:
        self.name = f"ipnf-bench-{os.getpid()}-{random.randrange(1 << 24):06x}"
        self.group, self.port, self.threshold = group, port, threshold
        self.created = False

    def __enter__(self) -> BenchNetns:
        sh(["ip", "netns", "add", self.name])
        self.created = True
        try:
            sh(["ip", "link", "set", "lo", "up"], ns=self.name)
            sh(["iptables", "-w", "-t", "raw", "-A", "PREROUTING", "-p", "udp", "--dport",
                str(self.port), "-j", "DROP"], ns=self.name)
            nflog = ["iptables", "-w", "-A", "OUTPUT", "-p", "udp", "--dport", str(self.port),
                     "-j", "NFLOG", "--nflog-group", str(self.group)]
            if self.threshold:
                nflog += ["--nflog-threshold", str(self.threshold)]
            sh(nflog, ns=self.name)
        except BaseException:
            self.delete()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()

    def delete(self) -> None:
        if not self.created:
            return
        with contextlib.suppress(Exception):
            for pid in sh(["ip", "netns", "pids", self.name], check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
        # The namespace (and with it the rules, which live only in it) goes away with its
        # last process; retry briefly in case a killed process is still exiting.
        for _ in range(50):
            r = sh(["ip", "netns", "del", self.name], check=False)
            if r.returncode == 0 or not os.path.exists(f"/run/netns/{self.name}"):
                break
            time.sleep(0.1)
        self.created = False


# --------------------------------------------------------------------------------------
# One measurement
# --------------------------------------------------------------------------------------
@dataclass
class RunResult:
    tool: str
    size: int
    rate: int  # offered, 0 = flat out
    rep: int
    sent: int = 0
    send_elapsed: float = 0.0
    send_errors: dict[str, int] = field(default_factory=dict)
    captured: int = 0
    file_bytes: int = 0  # the capture file's size after the run
    cpu_s: float = 0.0
    drain_s: float = 0.0
    socket_drops: int | None = None
    keepup: float | None = None  # file growth rate / send rate while the load ran
    other_cpu: float | None = None  # CPUs busy with anything else during the load
    reader_util: float | None = None  # reader CPU seconds per second of load
    tool_claim: dict[str, Any] | None = None
    error: str = ""

    @property
    def achieved(self) -> float:
        return self.sent / self.send_elapsed if self.send_elapsed > 0 else 0.0

    @property
    def loss(self) -> int:
        return self.sent - self.captured

    @property
    def captured_pct(self) -> float:
        return 100.0 * self.captured / self.sent if self.sent else 0.0

    @property
    def cpu_us_per_pkt(self) -> float | None:
        return 1e6 * self.cpu_s / self.captured if self.captured else None

    @property
    def cpu_ns_per_byte(self) -> float | None:
        """Reader CPU per byte of the file written: what a writer's cost follows."""
        return 1e9 * self.cpu_s / self.file_bytes if self.file_bytes else None

    @property
    def bytes_per_pkt(self) -> float | None:
        return self.file_bytes / self.captured if self.captured and self.file_bytes else None


class Bench:
    def __init__(self, args: argparse.Namespace, ns: BenchNetns, bins: dict[str, str],
                 workdir: str) -> None:
        self.args, self.ns, self.bins, self.workdir = args, ns, bins, workdir
        self.reader_pin = ["taskset", "-c", str(args.pin[0])] if args.pin else []
        self.gen_pin = ["taskset", "-c", str(args.pin[1])] if args.pin else []

    def reader_argv(self, tool: Tool, out: str) -> list[str]:
        subst = {"group": str(self.args.group), "out": out, "cref": self.bins.get("cref", ""),
                 "python": self.args.python, "consumers": os.path.join(HERE, "consumers.py"),
                 "cli": self.bins.get("cli", "")}
        return [a.format(**subst) for a in tool.argv]

    def run_one(self, tool: Tool, size: int, rate: int, rep: int) -> RunResult:
        a = self.args
        res = RunResult(tool.name, size, rate, rep)
        out = os.path.join(self.workdir, f"{tool.name}-{size}-{rate}-{rep}.pcap")
        errf = os.path.join(self.workdir, f"{tool.name}.stderr")
        argv = ["ip", "netns", "exec", self.ns.name, *self.reader_pin,
                *self.reader_argv(tool, out)]
        with open(errf, "w") as err:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, cwd=ROOT,
                                    start_new_session=True)  # Ctrl-C is ours to handle
        pid = proc.pid
        rusage = None
        try:
            # 1. wait until the reader has bound the group inside the namespace
            deadline = time.monotonic() + a.bind_timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"reader exited ({proc.returncode}) before binding: "
                                       f"{_tail(errf)}")
                if same_netns(pid, self.ns.name) and nflog_instance(pid, a.group):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"reader did not bind group {a.group} in "
                                       f"{a.bind_timeout}s: {_tail(errf)}")
                time.sleep(0.01)
            time.sleep(0.05)  # let it reach its receive loop
            cpu0 = cpu_seconds(pid)

            # 2. offered load
            gen = ["ip", "netns", "exec", self.ns.name, *self.gen_pin, self.bins["loadgen"],
                   "-d", "127.0.0.1", "-p", str(a.port), "-s", str(size), "-r", str(rate),
                   "-b", str(a.batch), "-t", str(a.duration)]
            samples: list[tuple[float, int]] = []  # (time, file size) while loading
            busy0, rcpu0 = machine_busy(), cpu_seconds(pid)
            with subprocess.Popen(gen, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) as g:
                t_start = time.monotonic()
                while g.poll() is None:
                    time.sleep(0.05)
                    with contextlib.suppress(OSError):
                        samples.append((time.monotonic() - t_start, os.path.getsize(out)))
                    if time.monotonic() - t_start > a.duration + 30:
                        g.kill()
                gout, gerr = g.communicate()
            if g.returncode != 0:
                raise RuntimeError(f"loadgen failed ({g.returncode}): {gerr.strip()}")
            lg = json.loads(gout.strip().splitlines()[-1])
            res.sent, res.send_elapsed = int(lg["sent"]), float(lg["elapsed"])
            res.send_errors = {k: v for k, v in lg["errors"].items() if v}
            # CPU the machine spent on anything but this reader and the generator while the
            # load ran (other processes, and kernel work such as page-cache writeback)
            rcpu = cpu_seconds(pid) - rcpu0
            span = max(res.send_elapsed, 1e-3)
            res.reader_util = rcpu / span
            res.other_cpu = max(0.0, (machine_busy() - busy0 - rcpu
                                      - float(lg.get("cpu_s", 0))) / span)

            # 3. drain: kernel queue empty, socket empty, reader idle
            t0 = time.monotonic()
            res.drain_s, res.socket_drops = self._drain(proc, pid, t0)

            # 4. stop
            os.kill(pid, signal.SIGINT)
            rusage = self._reap(proc, a.stop_timeout)
            stdout = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            for line in reversed(stdout.strip().splitlines()):
                with contextlib.suppress(ValueError):
                    res.tool_claim = json.loads(line)
                    break
            if rusage is not None:
                res.cpu_s = max(0.0, rusage.ru_utime + rusage.ru_stime - cpu0)
            if proc.returncode is not None and proc.returncode < 0:  # not its own exit
                name = signal.Signals(-proc.returncode).name
                raise RuntimeError(f"reader died of {name} while capturing; stderr: "
                                   f"{_tail(errf)}")

            # 5. count from the file
            if tool.count_from_claim:
                res.captured = int((res.tool_claim or {}).get("packets", 0))
                return res
            fc = count_records(out)
            if fc.error:
                raise RuntimeError(f"capture file: {fc.error}; stderr: {_tail(errf)}")
            if fc.linktypes and fc.linktypes != {tool.linktype}:
                raise RuntimeError(f"capture file has link types {sorted(fc.linktypes)}, "
                                   f"expected {tool.linktype}")
            res.captured = fc.records
            res.file_bytes = os.path.getsize(out)
            res.keepup = keepup(samples, a.duration, res.achieved, fc.records,
                                res.file_bytes)
        except Exception as e:
            res.error = str(e)
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                self._reap(proc, 5)
            if proc.stdout:
                proc.stdout.close()
            if not a.keep_files:
                with contextlib.suppress(OSError):
                    os.unlink(out)
        return res

    def _drain(self, proc: subprocess.Popen[bytes], pid: int,
               t0: float) -> tuple[float, int | None]:
        """Wait until the kernel has flushed the group's queue, the reader's socket is empty
        and the reader has been idle for a moment. Returns (seconds waited, socket drops)."""
        a = self.args
        last_cpu, last_t = cpu_seconds(pid), time.monotonic()
        drops = None
        quiet_since: float | None = None
        while True:
            time.sleep(0.05)
            now = time.monotonic()
            if exited(pid):
                return now - t0, drops
            inst = nflog_instance(pid, a.group)
            sock = netlink_socket(pid, inst["portid"]) if inst else None
            if sock:
                drops = sock["drops"]
            cpu = cpu_seconds(pid)
            busy = (cpu - last_cpu) / max(now - last_t, 1e-3)
            last_cpu, last_t = cpu, now
            flushed = inst is not None and inst["qlen"] == 0 and (sock is None or
                                                                   sock["rmem"] == 0)
            if flushed and busy < 0.02:
                quiet_since = quiet_since or now
                if now - quiet_since >= 0.1:
                    return now - t0, drops
            else:
                quiet_since = None
            if now - t0 > a.drain_timeout:
                log(f"  warning: reader not drained after {a.drain_timeout}s, stopping it")
                return now - t0, drops

    @staticmethod
    def _reap(proc: subprocess.Popen[bytes], timeout: float) -> Any:
        """wait4() the reader (for its rusage), escalating SIGINT -> SIGTERM -> SIGKILL."""
        deadline = time.monotonic() + timeout
        sigs = [signal.SIGTERM, signal.SIGKILL]
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                return ru
            if time.monotonic() > deadline:
                if not sigs:
                    deadline = time.monotonic() + 5
                    continue
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sigs.pop(0))
                deadline = time.monotonic() + 3
            time.sleep(0.02)


def keepup(samples: list[tuple[float, int]], duration: float, send_rate: float,
           records: int, final_size: int) -> float | None:
    """How fast the file grew while the load ran, as a fraction of the send rate: the
    least-squares slope of the file size between 20 % and 95 % of the run (records all have
    the same size within a run). Below 1 the reader was falling behind, even if its buffers
    let it catch up after the load stopped; writer stalls (fdatasync) add noise."""
    if records < 1000 or send_rate <= 0:
        return None
    w = [(t, sz) for t, sz in samples if 0.2 * duration <= t <= 0.95 * duration]
    if len(w) < 4 or w[-1][0] - w[0][0] < 0.3 * duration:
        return None
    mt = sum(t for t, _ in w) / len(w)
    ms = sum(sz for _, sz in w) / len(w)
    var = sum((t - mt) ** 2 for t, _ in w)
    slope = sum((t - mt) * (sz - ms) for t, sz in w) / var  # bytes per second
    return (slope / (final_size / records)) / send_rate


def _tail(path: str, n: int = 300) -> str:
    try:
        with open(path, errors="replace") as f:
            s = f.read().strip()
    except OSError:
        return ""
    return s[-n:].replace("|", "/").replace("\n", " / ")  # it goes into a table cell


# --------------------------------------------------------------------------------------
# Setup: build, probe tools
# --------------------------------------------------------------------------------------
def build(outdir: str) -> tuple[dict[str, str], dict[str, str]]:
    """Compile loadgen and cref; returns (binaries, errors by name)."""
    os.makedirs(outdir, exist_ok=True)
    bins: dict[str, str] = {}
    errors: dict[str, str] = {}
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        return bins, {"loadgen": "no C compiler (apt-get install gcc)",
                      "cref": "no C compiler (apt-get install gcc)"}
    for name, libs in (("loadgen", []), ("cref", ["-lnetfilter_log"])):
        exe = os.path.join(outdir, name)
        r = subprocess.run([gcc, "-O2", "-Wall", "-o", exe, os.path.join(HERE, f"{name}.c"),
                            *libs], capture_output=True, text=True)
        if r.returncode == 0:
            bins[name] = exe
        else:
            hint = " (apt-get install libnetfilter-log-dev)" if libs else ""
            errors[name] = f"build failed{hint}: {r.stderr.strip()[-300:]}"
    return bins, errors


def probe_tools(tools: list[Tool], bins: dict[str, str], build_errors: dict[str, str],
                python: str) -> None:
    capture_ok: str | None = None
    for t in tools:
        t.available, t.why_not = True, ""
        if t.probe == "tcpdump":
            if not shutil.which("tcpdump"):
                t.available, t.why_not = False, "tcpdump not installed"
        elif t.probe == "cref":
            if "cref" not in bins:
                t.available, t.why_not = False, build_errors.get("cref", "not built")
        elif t.probe == "cli":
            cli = _venv_bin("ipsec-nflog")
            if cli is None:
                t.available, t.why_not = False, "ipsec-nflog is not installed"
            else:
                r = subprocess.run([cli, "capture", "--help"], capture_output=True, text=True)
                if r.returncode != 0:
                    t.available = False
                    t.why_not = ("`ipsec-nflog capture` is not available yet: "
                                 + (r.stderr.strip().splitlines() or ["?"])[-1][:200])
                else:
                    bins["cli"] = cli
        elif t.probe.startswith("py:"):
            module = t.probe[3:]
            r = subprocess.run([python, "-c", f"import {module}"], capture_output=True,
                               text=True, cwd=ROOT)
            if r.returncode != 0:
                t.available = False
                t.why_not = (f"Python module {module} is not installed for {python} (pip "
                             "install -r benchmarks/requirements.txt)")
        elif t.probe == "capture":
            if capture_ok is None:
                r = subprocess.run([python, "-c", "import ipsec_nflog; ipsec_nflog.Capture; "
                                    "import ipsec_nflog.capture._native"],
                                   capture_output=True, text=True, cwd=ROOT)
                capture_ok = "" if r.returncode == 0 else (
                    f"ipsec_nflog.Capture is not usable with {python}: "
                    + (r.stderr.strip().splitlines() or ["?"])[-1][:200])
            if capture_ok:
                t.available, t.why_not = False, capture_ok


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------
Cells = dict[tuple[str, int, int], "Cell"]


@dataclass
class Cell:
    """The repeats of one tool x payload x offered rate."""

    tool: str
    size: int
    rate: int
    runs: list[RunResult]

    @property
    def ok(self) -> list[RunResult]:
        return [r for r in self.runs if not r.error]

    def vals(self, f: Any) -> list[float]:
        return [v for v in (f(r) for r in self.ok) if v is not None]

    def med(self, f: Any) -> float | None:
        v = self.vals(f)
        return statistics.median(v) if v else None

    def rng(self, f: Any) -> tuple[float | None, float | None]:
        v = self.vals(f)
        return (min(v), max(v)) if v else (None, None)

    def lossless(self, tol: float) -> bool:
        ok = self.ok
        return bool(ok) and len(ok) == len(self.runs) and all(
            r.sent > 0 and r.loss <= tol * r.sent for r in ok)

    def behind(self, keepup_min: float) -> bool:
        """The reader fell behind during the load: its file grew slower than the send rate
        while it used (nearly) all of its CPU. A slow file alone can be a writer stall."""
        k = self.med(lambda r: r.keepup)
        u = self.med(lambda r: r.reader_util)
        return k is not None and k < keepup_min and u is not None and u >= SATURATED

    def kept_up(self, keepup_min: float) -> bool:
        return not self.behind(keepup_min)

    def sustained(self, tol: float, keepup_min: float) -> bool:
        return self.lossless(tol) and self.kept_up(keepup_min)

    @property
    def achieved(self) -> float:
        return self.med(lambda r: r.achieved) or 0.0

    @property
    def cpu_us(self) -> float | None:
        return self.med(lambda r: r.cpu_us_per_pkt)


def cells_of(results: list[RunResult]) -> Cells:
    cells: Cells = {}
    for r in results:
        cells.setdefault((r.tool, r.size, r.rate), Cell(r.tool, r.size, r.rate, [])).runs.append(r)
    return cells


@dataclass
class Summary:
    """Where a tool stops being lossless at one payload size, from the cells measured.

    ``lo``: the highest achieved rate at which it lost nothing and kept up (0: none).
    ``hi``: the lowest achieved rate above ``lo`` at which it lost packets or fell behind;
    None when it never did, i.e. its real limit is somewhere above what the generator could
    offer. Its true lossless rate is in [lo, hi).
    """

    tool: str
    size: int
    lo: float
    hi: float | None
    best: Cell | None  # the cell at lo
    busiest: Cell | None  # the cell with the highest achieved rate (reader most loaded)
    flukes: list[Cell]  # lossy cells below lo (noise, reported)

    @property
    def generator_limited(self) -> bool:
        return self.hi is None and self.lo > 0

    def text(self) -> str:
        if self.best is None:
            lowest = min((c.achieved for c in self._all), default=0.0)
            return f"< {fmt_rate(lowest)} (lost packets at every rate)"
        if self.hi is None:
            return f"≥ {fmt_rate(self.lo)} (never lost a packet: generator-limited)"
        return f"{fmt_rate(self.lo)} (lost or fell behind at {fmt_rate(self.hi)})"

    _all: list[Cell] = field(default_factory=list)


def summarize(cells: Cells, tool: str, size: int, tol: float, keepup_min: float) -> Summary:
    mine = [c for c in cells.values() if c.tool == tool and c.size == size and c.ok]
    good = [c for c in mine if c.sustained(tol, keepup_min)]
    best = max(good, key=lambda c: c.achieved, default=None)
    lo = best.achieved if best else 0.0
    bad = [c for c in mine if not c.sustained(tol, keepup_min)]
    above = [c.achieved for c in bad if c.achieved > lo]
    busiest = max(mine, key=lambda c: c.achieved, default=None)
    s = Summary(tool, size, lo, min(above) if above else None, best, busiest,
                [c for c in bad if c.achieved <= lo])
    s._all = mine
    return s


def _f(v: float | None, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def results_table(cells: Cells, tools: list[str], sizes: list[int], rates: list[int],
                  keepup_min: float) -> str:
    lines = ["| tool | payload | offered | achieved send rate | captured % median (min-max) "
             "| loss, packets median (max) | kept up % | reader CPU µs/packet median "
             "(min-max) | reader CPU % |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for size in sizes:
        for tool in tools:
            for rate in rates:
                c = cells.get((tool, size, rate))
                if c is None:
                    continue
                if not c.ok:
                    lines.append(f"| {TOOLS[tool].label} | {size} B | {fmt_rate(rate)} | — | "
                                 f"error: {c.runs[0].error[:80]} | — | — | — | — |")
                    continue
                lo, hi = c.rng(lambda r: r.captured_pct)
                cpu_lo, cpu_hi = c.rng(lambda r: r.cpu_us_per_pkt)
                _, loss_hi = c.rng(lambda r: r.loss)
                errs = len(c.runs) - len(c.ok)
                pct = (f"{_f(c.med(lambda r: r.captured_pct), '.2f')} "
                       f"({_f(lo, '.2f')}-{_f(hi, '.2f')})")
                if errs:
                    pct += f" [{errs} run(s) failed]"
                k = c.med(lambda r: r.keepup)
                ktxt = "—" if k is None else f"{min(k, 9.99):.0%}"
                if c.behind(keepup_min):
                    ktxt += " (behind)"
                lines.append(
                    f"| {TOOLS[tool].label} | {size} B | {fmt_rate(rate)} | "
                    f"{fmt_rate(c.achieved)} pps | {pct} | "
                    f"{_f(c.med(lambda r: r.loss), '.0f')} ({_f(loss_hi, '.0f')}) | {ktxt} | "
                    f"{_f(c.cpu_us, '.3f')} ({_f(cpu_lo, '.3f')}-{_f(cpu_hi, '.3f')}) | "
                    f"{_f(c.med(lambda r: r.reader_util and 100 * r.reader_util), '.0f')} |")
    return "\n".join(lines)


def lossless_table(sums: dict[tuple[str, int], Summary], tools: list[str],
                   sizes: list[int]) -> str:
    lines = ["| tool | payload | lossless rate (achieved pps) | reader CPU µs/packet there "
             "| at the highest load: rate, CPU µs/packet, packets per reader CPU-second |",
             "|---|---:|---|---:|---|"]
    for size in sizes:
        for tool in tools:
            s = sums.get((tool, size))
            if s is None or s.busiest is None:
                continue
            b = s.busiest
            cap = f"{fmt_rate(1e6 / b.cpu_us)}/s" if b.cpu_us else "—"
            note = ""
            if s.flukes:
                note = " (also lossy at " + ", ".join(
                    fmt_rate(c.achieved) for c in s.flukes) + ")"
            lines.append(
                f"| {TOOLS[tool].label} | {size} B | {s.text()}{note} | "
                f"{_f(s.best.cpu_us if s.best else None, '.3f')} | "
                f"{fmt_rate(b.achieved)} pps, {_f(b.cpu_us, '.3f')} µs, {cap} |")
    return "\n".join(lines)


def compare(x: Summary, y: Summary, r: float) -> tuple[str, str]:
    """Is x's lossless rate >= r times y's? The verdict uses the measured lossless rates
    (x.lo / y.lo); the brackets [lo, hi) of both say whether the grid and the generator
    could have changed it."""
    lo = x.lo / y.hi if y.hi else 0.0  # y's real rate could be as high as y.hi
    hi = (x.hi / y.lo) if (x.hi is not None and y.lo > 0) else math.inf
    if y.lo > 0:
        point = x.lo / y.lo
        desc = f"{fmt_rate(x.lo)} vs {fmt_rate(y.lo)} pps = {point:.2f}x"
    else:
        point = math.inf if x.lo > 0 else 0.0
        desc = (f"{fmt_rate(x.lo)} pps vs {TOOLS[y.tool].label} lossy at every rate tried "
                f"(from {fmt_rate(y.hi or 0)})")
    verdict = "met" if point >= r else "missed"
    if x.lo == 0 and y.lo == 0:
        return desc + "; both lossy everywhere", "—"
    if lo >= r or hi < r:
        return desc + " (decided: holds for any rates within the brackets)", verdict
    if x.hi is None and r <= 1:
        # x lost nothing at any rate it was offered, and every tool got the same offered
        # rates: wherever y was lossless, x was too. Flat-out cells differ only in what the
        # generator happened to reach.
        return (f"{TOOLS[x.tool].label} lost nothing at every rate offered (up to "
                f"{fmt_rate(x.lo)} pps), so it is lossless wherever {TOOLS[y.tool].label} is "
                f"(lossless to {fmt_rate(y.lo)}"
                + (", never lost" if y.hi is None else f", lost at {fmt_rate(y.hi)}")
                + "); the flat-out rates differ by generator noise"), "met"
    why = []
    if x.generator_limited:
        why.append(f"{TOOLS[x.tool].label} never lost a packet")
    if y.generator_limited:
        why.append(f"{TOOLS[y.tool].label} never lost a packet")
    bracket = f"{lo:.2f}x-" + ("∞" if hi == math.inf else f"{hi:.2f}x")
    return (desc + f"; within the brackets it could be {bracket} ("
            + (", ".join(why) or "coarse rate grid") + ")"), verdict + "?"


def targets_table(sums: dict[tuple[str, int], Summary], skipped: dict[str, str],
                  gen_peak: dict[int, float]) -> str:
    rows: list[tuple[str, str, str]] = []
    sizes = sorted({k[1] for k in sums})

    def get(tool: str, size: int) -> Summary | None:
        s = sums.get((tool, size))
        return s if s and s.busiest else None

    def na(tool: str) -> str:
        return f"not measured ({skipped.get(tool, f'{tool} not run')})"

    # 1. the CLI lossless at >= 1.0 M pps, 64 B
    t = "`ipsec-nflog capture -w` lossless at ≥ 1.0 M pps, 64 B"
    s = get("cli", 64)
    if s:
        v = s.lo
        if v >= TARGET_LOSSLESS_PPS_64:
            rows.append((t, f"lossless at {fmt_rate(v)} pps", "met"))
        elif s.hi is not None and s.hi <= TARGET_LOSSLESS_PPS_64 * 1.02:
            rows.append((t, f"lossless to {fmt_rate(v)} pps, lost/fell behind at "
                            f"{fmt_rate(s.hi)} ({v / TARGET_LOSSLESS_PPS_64:.0%} of target)",
                         "missed"))
        else:
            rows.append((t, f"lossless at everything offered, up to {fmt_rate(v)} pps "
                            f"({v / TARGET_LOSSLESS_PPS_64:.0%} of target); the generator "
                            f"peaked at {fmt_rate(gen_peak.get(64, 0))} pps with the NFLOG "
                            "rule, so 1 M pps was never offered",
                         "not shown (generator limit)"))
    else:
        rows.append((t, na("cli"), "—"))
    # 2. at the disk's limit at 1400 B (= what the bare C reader sustains)
    t = "`ipsec-nflog capture -w` at the disk's limit at 1400 B (≥ 90 % of the bare C reader)"
    x, y = get("cli", 1400), get("cref", 1400)
    if x and y:
        rows.append((t, *compare(x, y, TARGET_OF_CREF)))
    else:
        rows.append((t, na("cli" if not x else "cref"), "—"))
    # 3. >= 6x tcpdump, per payload
    for size in sizes:
        t = f"≥ {TARGET_X_TCPDUMP:g}x tcpdump's lossless rate, {size} B"
        x, y = get("cli", size), get("tcpdump", size)
        if x and y:
            rows.append((t, *compare(x, y, TARGET_X_TCPDUMP)))
        else:
            rows.append((t, na("cli" if not x else "tcpdump"), "—"))
    # 4. within 90 % of the bare C reader, per payload
    for size in sizes:
        t = f"≥ {TARGET_OF_CREF:.0%} of the bare C reader's lossless rate, {size} B"
        x, y = get("cli", size), get("cref", size)
        if x and y:
            rows.append((t, *compare(x, y, TARGET_OF_CREF)))
        else:
            rows.append((t, na("cli" if not x else "cref"), "—"))
    # 5. reader CPU <= 0.3 us/packet at 64 B
    t = f"reader CPU ≤ {TARGET_CPU_US_64} µs/packet, 64 B (CLI at its lossless rate)"
    s = get("cli", 64)
    if s and s.best and s.best.cpu_us is not None:
        v = s.best.cpu_us
        ref = get("cref", 64)
        cref_txt = ""
        if ref and ref.best and ref.best.cpu_us:
            cref_txt = f"; bare C reader {ref.best.cpu_us:.3f} µs at {fmt_rate(ref.lo)}"
        rows.append((t, f"{v:.3f} µs at {fmt_rate(s.lo)} pps ({v / TARGET_CPU_US_64:.0%} of "
                        f"the budget){cref_txt}", "met" if v <= TARGET_CPU_US_64 else "missed"))
    else:
        rows.append((t, na("cli") if not s else "no lossless 64 B cell", "—"))
    # 6./7. the Python APIs: packets per reader CPU-second at the highest load, 64 B
    for tool, target, what in (("batch", TARGET_BATCH_RPS, "batch API ≥ 1 M records/s"),
                               ("iter", TARGET_ITER_PPS,
                                "per-packet iterator ≥ 500k parsed packets/s")):
        t = f"{what} (64 B: packets per reader CPU-second at the highest load)"
        s = get(tool, 64)
        if s and s.busiest and s.busiest.cpu_us:
            cap = 1e6 / s.busiest.cpu_us
            rows.append((t, f"{fmt_rate(cap)}/s ({cap / target:.0%} of target); lossless "
                            f"rate {s.text()}", "met" if cap >= target else "missed"))
        else:
            rows.append((t, na(tool), "—"))
    lines = ["| target | this run | verdict |", "|---|---|---|"]
    lines += [f"| {a} | {b} | **{c}** |" for a, b, c in rows]
    lines += ["", "Verdicts compare the measured lossless rates; a '?' means the rate brackets "
              "(the rate grid, and readers that never failed because the generator tops out) "
              "allow the other answer."]
    return "\n".join(lines)


PAGE_REPORTING_ORDER = "/sys/module/page_reporting/parameters/page_reporting_order"
NO_REPORTING_ORDER = 11  # above the buddy allocator's highest order: no free block qualifies


class SteadyMemory:
    """Pause the guest's free page reporting for the run and pre-touch a pool of memory.

    With reporting on (virtio-balloon), memory the kernel frees is handed back to the host,
    and the next page-cache page built on it costs a host fault: measured here at several
    µs per 4 KiB page, about as much per packet as a whole reader at 64 B, and different
    from one run to the next. Every reader writes its file into such pages, so the ratios
    between readers became noise. With reporting paused, the pool's pages (touched once,
    then freed) stay backed and the files of every run reuse them. The setting is put back
    at the end, also on errors."""

    def __init__(self, pool_mib: int) -> None:
        self.pool_mib = pool_mib
        self.saved: str | None = None
        self.cold_us_per_page: float | None = None
        self.warm_us_per_page: float | None = None

    def __enter__(self) -> SteadyMemory:
        if self.pool_mib <= 0:
            return self
        try:
            with open(PAGE_REPORTING_ORDER) as f:
                self.saved = f.read().strip()
            with open(PAGE_REPORTING_ORDER, "w") as f:
                f.write(str(NO_REPORTING_ORDER))
        except OSError:
            self.saved = None  # no page reporting here, or not ours to change
        self.cold_us_per_page = self._touch()
        self.warm_us_per_page = self._touch()
        return self

    def _touch(self) -> float:
        """Touch every page of a fresh anonymous pool, then free it; µs per page."""
        size = self.pool_mib << 20
        pool = mmap.mmap(-1, size)
        t0 = time.perf_counter()
        for off in range(0, size, mmap.PAGESIZE):
            pool[off] = 1
        dt = time.perf_counter() - t0
        pool.close()
        return 1e6 * dt / (size // mmap.PAGESIZE)

    def __exit__(self, *exc: object) -> None:
        if self.saved is not None:
            with contextlib.suppress(OSError):
                with open(PAGE_REPORTING_ORDER, "w") as f:
                    f.write(self.saved)

    def describe(self) -> str:
        if self.pool_mib <= 0:
            return "left as it was (--memory-pool 0)"
        touch = (f"{self.pool_mib} MiB pre-touched: {self.cold_us_per_page:.2f} µs per new "
                 f"page, then {self.warm_us_per_page:.2f} µs per reused page")
        if self.saved is None:
            return f"no free page reporting to pause; {touch}"
        return (f"free page reporting paused for the run (page_reporting_order "
                f"{self.saved} -> {NO_REPORTING_ORDER}, restored after); {touch}")


def machine_info() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    td = ""
    with contextlib.suppress(Exception):
        r = subprocess.run(["tcpdump", "--version"], capture_output=True, text=True)
        td = " / ".join((r.stdout + r.stderr).strip().splitlines()[:2])
    return (f"{platform.node()}: {os.cpu_count()} CPUs ({cpu}), kernel {platform.release()}, "
            f"{td}")


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Compare NFLOG readers (tcpdump, a bare C reader, ipsec-nflog and its "
                    "Python APIs) at the same offered load, in a throwaway network namespace.")
    ap.add_argument("--quick", action="store_true",
                    help=f"rates {QUICK_RATES}, 2 repeats, 1 s per run: about 2-3 minutes")
    ap.add_argument("--repeats", type=int, default=None,
                    help="runs per cell (default 3, --quick 2)")
    ap.add_argument("--rates", default=None,
                    help=f"offered rates, comma-separated; 'max' = flat out "
                         f"(default {DEFAULT_RATES})")
    ap.add_argument("--sizes", default=DEFAULT_SIZES, help="UDP payload sizes in bytes")
    ap.add_argument("--tools", default=DEFAULT_TOOLS,
                    help=f"comma-separated subset of {','.join(TOOLS)}")
    ap.add_argument("--duration", type=float, default=None,
                    help="seconds of load per run (default 1.25, --quick 1)")
    ap.add_argument("--batch", type=int, default=64, help="loadgen sendmmsg batch size")
    ap.add_argument("--group", type=int, default=4242, help="NFLOG group (namespace-local)")
    ap.add_argument("--port", type=int, default=9999, help="UDP destination port")
    ap.add_argument("--nflog-threshold", type=int, default=None,
                    help="add --nflog-threshold N to the NFLOG rule")
    ap.add_argument("--pin", default="0,1", metavar="READER_CPU,GEN_CPU",
                    help="pin the reader and the generator to these CPUs with taskset "
                         "(default 0,1: steadier generator rates on this 2-vCPU VM)")
    ap.add_argument("--no-pin", dest="pin", action="store_const", const=None,
                    help="let the scheduler place the reader and the generator")
    ap.add_argument("--loss-tolerance", type=float, default=0.0001,
                    help="largest loss fraction still counted as lossless (default 0.0001 "
                         "= 0.01 %%)")
    ap.add_argument("--keepup-min", type=float, default=0.9,
                    help="a reader whose file grew slower than this fraction of the send rate "
                         "during the load, with its CPU saturated, fell behind (default 0.9)")
    ap.add_argument("--python", default=_venv_python(),
                    help="interpreter for the Python consumers (default: .venv's)")
    ap.add_argument("--memory-pool", type=int, default=1024, metavar="MIB",
                    help="pause the guest's free page reporting for the run and pre-touch "
                         "this much memory, so page-cache pages cost the same in every run "
                         "(default 1024; 0: leave memory alone). See SteadyMemory")
    ap.add_argument("--keep-files", action="store_true", help="keep the capture files")
    ap.add_argument("--outdir", default=OUT,
                    help="binaries, capture files (deleted after counting) and reports "
                         "(default benchmarks/out/)")
    ap.add_argument("--json", default=None, help="also write all runs as JSON here")
    ap.add_argument("--bind-timeout", type=float, default=15.0, help=argparse.SUPPRESS)
    ap.add_argument("--drain-timeout", type=float, default=30.0, help=argparse.SUPPRESS)
    ap.add_argument("--stop-timeout", type=float, default=30.0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    a.rates = [parse_rate(s) for s in (a.rates or (QUICK_RATES if a.quick
                                                   else DEFAULT_RATES)).split(",")]
    a.sizes = [int(s) for s in a.sizes.split(",")]
    a.tools = [s.strip() for s in a.tools.split(",") if s.strip()]
    for t in a.tools:
        if t not in TOOLS:
            ap.error(f"unknown tool {t!r}; known: {', '.join(TOOLS)}")
    if a.duration is None:
        a.duration = 1.0 if a.quick else 1.25
    if a.repeats is None:
        a.repeats = 2 if a.quick else 3
    if a.repeats < 1:
        ap.error("--repeats must be at least 1")
    if a.pin:
        try:
            a.pin = [int(x) for x in a.pin.split(",")]
            assert len(a.pin) == 2
        except (ValueError, AssertionError):
            ap.error("--pin wants READER_CPU,GEN_CPU, e.g. 0,1")
        cpus = os.sched_getaffinity(0)
        if not set(a.pin) <= cpus or a.pin[0] == a.pin[1]:
            log(f"not pinning: CPUs {a.pin} are not two distinct CPUs of {sorted(cpus)}")
            a.pin = None
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if os.geteuid() != 0:
        log("run.py: needs root (network namespaces, iptables, NFLOG)")
        return 2
    for exe, pkg in (("ip", "iproute2"), ("iptables", "iptables")):
        if not shutil.which(exe):
            log(f"run.py: needs '{exe}' (apt-get install {pkg})")
            return 2

    # SIGTERM/SIGHUP unwind like Ctrl-C, so the finally blocks delete the namespace.
    def _interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # Also when started with SIGINT ignored (e.g. `run.py &` from a script): Ctrl-C must
    # clean up, and the readers must inherit a default SIGINT (it is how they are stopped).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)

    started = time.time()
    bins, build_errors = build(a.outdir)
    if "loadgen" not in bins:
        log(f"run.py: cannot build the load generator: {build_errors['loadgen']}")
        return 2
    tools = [TOOLS[n] for n in a.tools]
    probe_tools(tools, bins, build_errors, a.python)
    skipped = {t.name: t.why_not for t in tools if not t.available}
    for t in tools:
        if not t.available:
            log(f"skipping {t.name}: {t.why_not}")
    active = [t for t in tools if t.available]
    if not active:
        log("run.py: no tool to benchmark")
        return 2

    b1, t1 = machine_busy(), time.time()
    time.sleep(1.0)
    idle_before = (machine_busy() - b1) / max(time.time() - t1, 1e-3)
    if idle_before > 0.15:
        log(f"warning: the machine is not idle ({idle_before:.0%} of a CPU busy before the "
            "start); expect noisy rates")
    total = len(a.sizes) * len(a.rates) * a.repeats * len(active)
    log(f"{total} runs: tools {','.join(t.name for t in active)}, sizes {a.sizes}, rates "
        f"{[fmt_rate(r) for r in a.rates]}, {a.repeats} repeats, {a.duration:g} s each"
        + (f", reader on CPU {a.pin[0]}, generator on CPU {a.pin[1]}" if a.pin else ""))
    results: list[RunResult] = []
    interrupted = False
    os.makedirs(a.outdir, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="run-", dir=a.outdir)
    os.chmod(workdir, 0o777)  # tcpdump writes its file after dropping to user 'tcpdump'
    memory = SteadyMemory(a.memory_pool)
    try:
        with memory, BenchNetns(a.group, a.port, a.nflog_threshold) as ns:
            bench = Bench(a, ns, bins, workdir)
            i = 0
            for size in a.sizes:
                for rate in a.rates:
                    for rep in range(a.repeats):
                        order = active[rep % len(active):] + active[:rep % len(active)]
                        for tool in order:
                            i += 1
                            r = bench.run_one(tool, size, rate, rep)
                            results.append(r)
                            _progress(i, total, r)
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: cleaning up, reporting what was measured")
    finally:
        if not a.keep_files:
            shutil.rmtree(workdir, ignore_errors=True)

    side = (python_side(a.python) if not interrupted and 0 in a.rates and 64 in a.sizes
            and {t.name for t in active} & {"iter", "iter-batch"} else None)
    report = render(a, results, [t.name for t in active], skipped, time.time() - started,
                    interrupted, idle_before, memory.describe(), side)
    print(report)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    md = os.path.join(a.outdir, f"bench-{stamp}.md")
    with open(md, "w") as f:
        f.write(report + "\n")
    jpath = a.json or os.path.join(a.outdir, f"bench-{stamp}.json")
    with open(jpath, "w") as f:
        json.dump({"args": {k: v for k, v in vars(a).items()},
                   "machine": machine_info(),
                   "python_side": side,
                   "runs": [dict(vars(r), achieved=r.achieved, loss=r.loss,
                                 cpu_us_per_pkt=r.cpu_us_per_pkt) for r in results]},
                  f, indent=1, default=str)
    log(f"report: {md}\nruns:   {jpath}")
    return 130 if interrupted else 0


def _progress(i: int, total: int, r: RunResult) -> None:
    if r.error:
        log(f"[{i}/{total}] {r.tool} {r.size}B {fmt_rate(r.rate)} #{r.rep}: ERROR {r.error}")
        return
    cpu = r.cpu_us_per_pkt
    extra = f" send errors {r.send_errors}" if r.send_errors else ""
    log(f"[{i}/{total}] {r.tool:7s} {r.size:4d}B {fmt_rate(r.rate):>5s} #{r.rep}: sent "
        f"{r.sent} ({fmt_rate(r.achieved)} pps) captured {r.captured} "
        f"({r.captured_pct:.3f}%) loss {r.loss} cpu "
        f"{'-' if cpu is None else f'{cpu:.3f}'} us/pkt drain {r.drain_s:.2f}s{extra}")


def python_side(python: str) -> dict[str, list[float]] | str:
    """iter_build.py's figures (µs per packet of each repeat, per row), measured after the
    readers and before the report, or why not."""
    log("the iterator's Python side alone: benchmarks/iter_build.py")
    try:
        r = subprocess.run([python, os.path.join(HERE, "iter_build.py"), "--json"],
                           capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"iter_build.py failed: {e}"
    if r.returncode != 0:
        return f"iter_build.py failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}"
    side: dict[str, list[float]] = json.loads(r.stdout)
    return side


def render(a: argparse.Namespace, results: list[RunResult], tools: list[str],
           skipped: dict[str, str], elapsed: float, interrupted: bool,
           idle_before: float, memory: str = "not recorded",
           side: dict[str, list[float]] | str | None = None) -> str:
    cells = cells_of(results)
    tol = a.loss_tolerance
    sums = {(t, sz): summarize(cells, t, sz, tol, a.keepup_min) for t in tools
            for sz in a.sizes}
    gen_peak = {sz: max((c.achieved for c in cells.values() if c.size == sz), default=0.0)
                for sz in a.sizes}
    others = [r.other_cpu for r in results if r.other_cpu is not None]
    cmd = "python benchmarks/run.py " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    out = [
        "## Capture benchmark" + (" (interrupted, partial)" if interrupted else ""),
        "",
        f"- command: `{cmd.strip()}` ({elapsed / 60:.1f} min)",
        f"- machine: {machine_info()}",
        f"- memory: {memory}",
        f"- background load: {idle_before:.0%} of a CPU busy before the start; during the "
        "runs the machine spent a median "
        + (f"{statistics.median(others):.0%} (max {max(others):.0%})" if others else "—")
        + " of a CPU on anything but the reader and the generator (other processes, "
        "page-cache writeback, softirqs)",
        f"- load: loadgen sendmmsg UDP to 127.0.0.1:{a.port} in a throwaway netns, "
        f"{a.duration:g} s per run, batch {a.batch}; NFLOG group {a.group} on OUTPUT, raw "
        "PREROUTING DROP; "
        + (f"reader pinned to CPU {a.pin[0]}, generator to CPU {a.pin[1]} (taskset)"
           if a.pin else "no CPU pinning"),
        f"- {a.repeats} repeat(s) per cell, tools interleaved; captured = records counted in "
        "the written file; loss = sent - captured; reader CPU µs/packet = its utime+stime "
        "from just before the load to its exit / captured packets; reader CPU % = its CPU "
        "time during the load / load time; kept up = how fast the file grew during the load "
        "/ send rate",
        f"- a cell is lossless when loss ≤ {tol:.2%} of sent in every repeat and the reader "
        f"did not fall behind (kept up < {a.keepup_min:.0%} with ≥ {SATURATED:.0%} CPU: then "
        f"only its buffers saved it in a {a.duration:g} s run). A tool's lossless rate is "
        "bracketed by the fastest lossless cell and the slowest failing one above it "
        "(achieved rates, medians); 'generator-limited' means it never failed, so its limit "
        "is higher",
    ]
    for name, why in skipped.items():
        out.append(f"- **skipped {name}**: {why}")
    out += ["", results_table(cells, tools, a.sizes, a.rates, a.keepup_min), "",
            "### Lossless rates", "", lossless_table(sums, tools, a.sizes), "",
            "### Targets (issue 5)", "", targets_table(sums, skipped, gen_peak)]
    if 0 in a.rates and 64 in a.sizes:
        from targets15 import targets15_table

        background = (f"{idle_before:.0%} of a CPU busy before the start, a median "
                      + (f"{statistics.median(others):.0%} (max {max(others):.0%})"
                         if others else "—") + " of a CPU on other work during the runs")
        out += ["", "### Targets (issue 15: ratios in this run)", "",
                targets15_table(cells, a.sizes, a.rates,
                                lambda c: c.sustained(tol, a.keepup_min), background, side)]
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
