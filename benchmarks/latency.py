"""How late are the timestamps of OUTPUT packets? The kernel sends no NFULA_TIMESTAMP on
OUTPUT/POSTROUTING, so the receive time stands in, and kernel batching (qthreshold, flush
timeout) delays the receive. This measures that lag for the default (batched) settings and for
CaptureConfig.low_latency(). For the CPU side of the trade-off, run
``benchmarks/run.py --tools cli,cli-lowlat``.

    sudo .venv/bin/python benchmarks/latency.py [--packets 400] [--rate 2000]

Each packet carries its send time; lag = record timestamp - send time. Traffic stays on the
loopback of a throwaway namespace, which is deleted afterwards.

The request/response case (``--rr``), for builds of this project side by side in ONE run:

    sudo .venv/bin/python benchmarks/latency.py --rr --rev 43c7480^ [--baseline DIR]
                                                [--repeats 5] [--rates 200k,2k]

Each loopback UDP datagram (benchmarks/loadgen.c, 64 B) is logged twice on one group: at
OUTPUT (the "request": no kernel stamp, ours is synthesized) and, microseconds later, at
PREROUTING (the "reply": the kernel's own stamp). lag = the synthesized stamp - the kernel
stamp of the same datagram at PREROUTING: negative when the request is placed before its
reply, as it must be. Reader CPU per record (the CLI, ``capture -q -w``) and the records
lost come from benchmarks/run.py's harness; builds are interleaved as benchmarks/ab.py does.
``--rev`` builds a commit under /tmp once (:func:`build_of`); ``--baseline`` takes a checkout
with its own .venv, as ab.py does.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ab  # benchmarks/ab.py: the CLI of a build as a benchmark tool
import run  # benchmarks/run.py: namespace, load generator, reader CPU and record counts

from ipsec_nflog import Capture, CaptureConfig
from ipsec_nflog.files import read_capture
from ipsec_nflog.system.netns import create_netns, delete_netns, run_cmd, run_in_netns

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GROUP, PORT = 33, 9333
RR_SIZE = 64


def measure(ns: str, config: CaptureConfig, packets: int, rate: int) -> dict[str, float]:
    sock = run_in_netns(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    lags: list[float] = []
    with Capture(config=config) as cap:
        gap = 1.0 / rate
        t_next = time.monotonic()
        for _ in range(packets):
            sock.sendto(struct.pack("=d", time.time()) + b"x" * 56, ("127.0.0.1", PORT))
            t_next += gap
            delay = t_next - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        for pkt in cap.packets(count=packets, timeout=5):
            sent = struct.unpack_from("=d", pkt.payload or b"", 28)[0]
            lags.append(pkt.timestamp - sent)
        stats = cap.stats()
    sock.close()
    lags.sort()
    g = stats.groups[GROUP]
    return {
        "captured": len(lags),
        "median_ms": statistics.median(lags) * 1e3,
        "p99_ms": lags[int(len(lags) * 0.99) - 1] * 1e3,
        "max_ms": lags[-1] * 1e3,
        "datagrams_per_packet": g.datagrams / max(1, g.received_packets),
        "qthreshold_peak": g.qthreshold_peak,
    }


# ---- request/response: synthesized stamps against the next kernel stamp, per build ------------

def synthesized_lags(path: str) -> tuple[list[float], int]:
    """(synthesized OUTPUT stamp - kernel PREROUTING stamp of the same datagram, per datagram;
    OUTPUT records without a PREROUTING twin). loadgen numbers its datagrams (8 bytes)."""
    out: dict[int, float] = {}
    inbound: dict[int, float] = {}
    for pkt in read_capture(path):
        seq = struct.unpack_from("<Q", pkt.payload or b"", 28)[0]
        if pkt.hook_name == "OUTPUT":
            if not pkt.timestamp_synthesized:
                raise RuntimeError(f"{path}: an OUTPUT record with a kernel stamp")
            out[seq] = pkt.timestamp
        elif pkt.hook_name == "PREROUTING":
            inbound[seq] = pkt.timestamp
    lags = [t - inbound[s] for s, t in out.items() if s in inbound]
    return lags, len(out) - len(lags)


@dataclass
class RRCell:
    """One build at one rate, over the repeats."""

    cpu_us: list[float] = field(default_factory=list)   # reader CPU per record, per run
    lags: list[float] = field(default_factory=list)     # all runs pooled
    lost: int = 0                                       # 2 records per datagram expected
    unpaired: int = 0
    other_cpu: list[float] = field(default_factory=list)

    def row(self, label: str, rate: str) -> str:
        if not self.cpu_us:
            return f"| {label} | {rate} | failed | | | | | |"
        lags = sorted(self.lags)
        late = sum(x >= 0 for x in lags)
        p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))]
        c = self.cpu_us
        return (f"| {label} | {rate} | {statistics.median(lags) * 1e3:.3f} ms | "
                f"{p99 * 1e3:.3f} ms | {lags[-1] * 1e3:.2f} ms | {late} of {len(lags)} | "
                f"{statistics.median(c):.3f} ({min(c):.3f}-{max(c):.3f}) | "
                f"{self.lost + self.unpaired} |")


def rr_compare(builds: list[tuple[str, str]], a: argparse.Namespace) -> int:
    """Every build's CLI against the same loads, interleaved (the order rotates per repeat)."""
    tools = [ab.tools_for(label, root)[0] for label, root in builds]
    bins, errors = run.build(a.outdir)
    if "loadgen" not in bins:
        print(errors.get("loadgen", "loadgen not built"), file=sys.stderr)
        return 1
    cells = {(t.name, rate): RRCell() for t in tools for rate in a.rates}
    workdir = tempfile.mkdtemp(prefix="rr-", dir=a.outdir)
    try:
        with run.BenchNetns(a.group, a.port, None) as ns:
            # the "reply": the same datagram again at PREROUTING, before the raw DROP
            run.sh(["iptables", "-w", "-t", "raw", "-I", "PREROUTING", "1", "-p", "udp",
                    "--dport", str(a.port), "-j", "NFLOG", "--nflog-group", str(a.group)],
                   ns=ns.name)
            bench = run.Bench(a, ns, bins, workdir)
            for rep in range(a.repeats):
                for rate in a.rates:
                    k = rep % len(tools)
                    for t in tools[k:] + tools[:k]:
                        rr_one(bench, t, rate, rep, workdir, cells[(t.name, rate)])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"{RR_SIZE} B UDP over loopback, each datagram logged at OUTPUT (synthesized stamp) "
          f"and at PREROUTING (kernel stamp) on one group; default capture settings; "
          f"{a.repeats} runs of {a.duration:g} s per cell, builds interleaved\n")
    print("| build | offered rate | lag median | lag p99 | lag max | stamped after its "
          "reply | reader CPU µs/record median (min-max) | records lost |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for rate in a.rates:
        for t, (label, _) in zip(tools, builds, strict=True):
            print(cells[(t.name, rate)].row(label, run.fmt_rate(rate)))
    busy = [x for c in cells.values() for x in c.other_cpu]
    if busy:
        print(f"\nother load on the machine during the runs: {statistics.median(busy):.2f} "
              f"CPUs median ({min(busy):.2f}-{max(busy):.2f})")
    return 0


def rr_one(bench: run.Bench, tool: run.Tool, rate: int, rep: int, workdir: str,
           cell: RRCell) -> None:
    r = bench.run_one(tool, RR_SIZE, rate, rep)
    path = os.path.join(workdir, f"{tool.name}-{RR_SIZE}-{rate}-{rep}.pcap")
    try:
        if r.error or not r.captured:
            run.log(f"{tool.name} at {rate}: {r.error or 'captured nothing'}")
            return
        lags, unpaired = synthesized_lags(path)
    finally:
        if os.path.exists(path):
            os.unlink(path)
    cell.cpu_us.append(1e6 * r.cpu_s / r.captured)
    cell.lags += lags
    cell.lost += 2 * r.sent - r.captured
    cell.unpaired += unpaired
    if r.other_cpu is not None:
        cell.other_cpu.append(r.other_cpu)
    run.log(f"  {tool.name} {run.fmt_rate(rate)} #{rep}: {r.captured} records, "
            f"{1e6 * r.cpu_s / r.captured:.3f} µs/record, lag median "
            f"{statistics.median(lags) * 1e3:.3f} ms")


def build_of(rev: str) -> str:
    """A build of commit ``rev`` under /tmp, made once: its tree (``git archive``, so the
    repository's state is not touched), its compiled core, and a .venv that imports that
    tree first and borrows this checkout's dependencies (cffi, dpkt, cryptography)."""
    sha = run.sh(["git", "-C", ROOT, "rev-parse", "--verify", f"{rev}^{{commit}}"]).stdout
    root = os.path.join(tempfile.gettempdir(), f"ipnf-build-{sha.strip()[:12]}")
    cli = os.path.join(root, ".venv", "bin", "ipsec-nflog")
    if os.path.exists(cli):
        return root
    tmp = tempfile.mkdtemp(prefix="ipnf-build-", dir=tempfile.gettempdir())
    try:
        _make_build(sha.strip(), tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.rename(tmp, root)    # the venv's paths name root: usable once renamed
    return root


def _make_build(sha: str, tmp: str, root: str) -> None:
    archive = subprocess.run(["git", "-C", ROOT, "archive", sha], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
    # build_ffi and the C sources alone, as /work/briefs/rebuild.sh does: setuptools would
    # validate the tree's pyproject.toml, and an old one may not pass
    scratch = tempfile.mkdtemp(prefix="ipnf-cc-")
    try:
        shutil.copy(os.path.join(tmp, "build_ffi.py"), scratch)
        os.makedirs(os.path.join(scratch, "ipsec_nflog"))
        version = os.path.join(tmp, "ipsec_nflog", "_version.py")
        if os.path.exists(version):
            shutil.copy(version, os.path.join(scratch, "ipsec_nflog"))
        shutil.copytree(os.path.join(tmp, "ipsec_nflog", "capture", "_csrc"),
                        os.path.join(scratch, "ipsec_nflog", "capture", "_csrc"))
        code = "import build_ffi; print(build_ffi.ffibuilder.compile(tmpdir='.', verbose=0))"
        r = subprocess.run([sys.executable, "-c", code], cwd=scratch, capture_output=True,
                           text=True)
        if r.returncode != 0:
            raise RuntimeError(f"building the core of {sha} failed: {r.stderr[-2000:]}")
        out = r.stdout
        shutil.copy(os.path.join(scratch, out.strip().splitlines()[-1]),
                    os.path.join(tmp, "ipsec_nflog", "capture"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    venv = os.path.join(tmp, ".venv")
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", venv], check=True)
    site = glob.glob(os.path.join(venv, "lib", "python3*", "site-packages"))[0]
    deps = glob.glob(os.path.join(ROOT, ".venv", "lib", "python3*", "site-packages"))[0]
    with open(os.path.join(site, "00-build-tree.pth"), "w") as f:
        f.write(root + "\n")
    with open(os.path.join(site, "zz-dependencies.pth"), "w") as f:
        f.write(deps + "\n")
    with open(os.path.join(tmp, ".venv", "bin", "ipsec-nflog"), "w") as f:
        f.write(f"#!{root}/.venv/bin/python\nimport sys\nfrom ipsec_nflog.cli.main import "
                "main\nsys.exit(main())\n")
    os.chmod(os.path.join(tmp, ".venv", "bin", "ipsec-nflog"), 0o755)


def rr_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description="request/response lag and CPU, per build")
    ap.add_argument("--rr", action="store_true")
    ap.add_argument("--baseline", action="append", default=[], metavar="DIR",
                    help="another checkout with its own .venv (repeatable)")
    ap.add_argument("--rev", action="append", default=[], metavar="COMMIT",
                    help="a build of this commit, made under /tmp (repeatable; after the "
                         "--baseline ones)")
    ap.add_argument("--label", action="append", default=[],
                    help="names of the baselines and revs, in order (default: paths, revs)")
    ap.add_argument("--no-checkout", action="store_true",
                    help="only the --baseline/--rev builds, not this working tree")
    ap.add_argument("--rates", default="200k,2k")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--duration", type=float, default=1.0)
    ap.add_argument("--outdir", default=os.path.join(tempfile.gettempdir(), "ipnf-latency"))
    x = ap.parse_args(argv)
    if os.geteuid() != 0:
        ap.error("needs root (namespaces, iptables, NFLOG)")
    roots = [os.path.abspath(d) for d in x.baseline] + [build_of(r) for r in x.rev]
    labels = x.label + (x.baseline + x.rev)[len(x.label):]
    builds = list(zip(labels, roots, strict=True))
    if not x.no_checkout:
        builds.append(("this checkout", ROOT))
    if not builds:
        ap.error("nothing to compare")
    a = run.parse_args(["--sizes", str(RR_SIZE), "--rates", x.rates, "--repeats",
                        str(x.repeats), "--duration", str(x.duration), "--outdir", x.outdir,
                        "--keep-files", "--group", str(GROUP), "--port", str(PORT)])
    return rr_compare(builds, a)


def main() -> int:
    if "--rr" in sys.argv[1:]:
        return rr_main(sys.argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=400)
    ap.add_argument("--rate", type=int, default=2000, help="packets per second")
    a = ap.parse_args()
    ns = f"ipnf-lat-{os.getpid()}"
    create_netns(ns)
    try:
        run_cmd(["iptables", "-A", "OUTPUT", "-p", "udp", "--dport", str(PORT), "-j", "NFLOG",
                 "--nflog-group", str(GROUP)], netns=ns)
        rows = [
            ("default (qthreshold 1000, flush 100 ms, nlbufsiz 128 KiB)",
             CaptureConfig(groups=(GROUP,), netns=ns)),
            ("--low-latency (qthreshold 1, raised under load so a batch fills in 100 µs; "
             "flush 0, nlbufsiz 4 KiB)",
             CaptureConfig.low_latency([GROUP], netns=ns)),
        ]
        print(f"{a.packets} OUTPUT packets at {a.rate} pkt/s; lag = record timestamp - send "
              "time\n")
        print("| settings | captured | lag median | lag p99 | lag max | netlink datagrams "
              "per packet | highest qthreshold |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for label, cfg in rows:
            r = measure(ns, cfg, a.packets, a.rate)
            print(f"| {label} | {r['captured']} | {r['median_ms']:.2f} ms | "
                  f"{r['p99_ms']:.2f} ms | {r['max_ms']:.2f} ms | "
                  f"{r['datagrams_per_packet']:.3f} | {r['qthreshold_peak']} |")
    finally:
        delete_netns(ns)
    return 0


if __name__ == "__main__":
    sys.exit(main())
