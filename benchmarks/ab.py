"""Two builds of ipsec_nflog in ONE run, interleaved with the bare C reader: the CLI and the
batch API of a baseline checkout (e.g. `git worktree add /tmp/old REV` with its own .venv)
against this one, flat out at 64 B. Judges ratios to the bare C reader, never absolute times.

    sudo .venv/bin/python benchmarks/ab.py /tmp/old [--readers cli,batch,iter,iter-batch]
        [--repeats 6]

Both builds run this checkout's benchmarks/consumers.py (the program is the benchmark's; the
library under it is the build's).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # benchmarks/run.py

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


READERS = ("cli", "batch", "iter", "iter-batch")
CONSUMERS = os.path.join(HERE, "benchmarks", "consumers.py")  # this one's, for both builds


def tools_for(label: str, root: str, readers: list[str]) -> list[run.Tool]:
    py, cli = f"{root}/.venv/bin/python", f"{root}/.venv/bin/ipsec-nflog"
    tools = {
        "cli": run.Tool(f"cli-{label}", f"capture -w ({label})",
                        [cli, "capture", "-q", "-g", "{group}", "-w", "{out}"], "cref"),
    }
    for mode in READERS[1:]:
        tools[mode] = run.Tool(f"{mode}-{label}", f"{run.TOOLS[mode].label} ({label})",
                               [py, CONSUMERS, mode, "--group", "{group}", "--out", "{out}"],
                               "cref")
    return [tools[r] for r in readers]


def main() -> int:
    if len(sys.argv) < 2 or os.geteuid() != 0:
        print(__doc__, file=sys.stderr)
        return 2
    base = os.path.abspath(sys.argv[1])
    rest, readers = sys.argv[2:], ["cli", "batch"]
    if "--readers" in rest:  # ab.py's own option: which readers of each build
        i = rest.index("--readers")
        readers = rest[i + 1].split(",")
        del rest[i : i + 2]
        if not readers or set(readers) - set(READERS):
            print(f"--readers: a comma-separated list of {', '.join(READERS)}",
                  file=sys.stderr)
            return 2
    a = run.parse_args(["--tools", "cref", "--sizes", "64", "--rates", "max", *rest])
    cref = run.TOOLS["cref"]
    tools = [cref, *tools_for("baseline", base, readers), *tools_for("this", HERE, readers)]
    bins, errors = run.build(a.outdir)
    run.probe_tools(tools, bins, errors, a.python)
    cpu: dict[str, list[float]] = {t.name: [] for t in tools}
    lost: dict[str, int] = {t.name: 0 for t in tools}
    workdir = tempfile.mkdtemp(prefix="ab-", dir=a.outdir)
    with run.BenchNetns(a.group, a.port, None) as ns:
        bench = run.Bench(a, ns, bins, workdir)
        for rep in range(a.repeats):
            k = rep % len(tools)
            for t in tools[k:] + tools[:k]:
                r = bench.run_one(t, 64, 0, rep)
                if r.error or not r.captured:
                    run.log(f"{t.name}: {r.error or 'captured nothing'}")
                    continue
                cpu[t.name].append(1e6 * r.cpu_s / r.captured)
                lost[t.name] += r.loss
    ref = statistics.median(cpu["cref"])
    print(f"64 B flat out, {a.repeats} runs per reader, interleaved; baseline: {base}\n")
    print("| reader | CPU µs/packet median (min-max) | ratio to bare C reader | lost |")
    print("|---|---:|---:|---:|")
    for t in tools:
        v = cpu[t.name]
        if not v:
            print(f"| {t.label} | failed | — | — |")
            continue
        m = statistics.median(v)
        print(f"| {t.label} | {m:.3f} ({min(v):.3f}-{max(v):.3f}) | {m / ref:.2f}x | "
              f"{lost[t.name]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
