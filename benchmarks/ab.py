"""Two builds of ipsec_nflog in ONE run, interleaved with the bare C reader: the CLI and the
batch API of a baseline checkout (e.g. `git worktree add /tmp/old REV` with its own .venv)
against this one, flat out at 64 B. Judges ratios to the bare C reader, never absolute times.

    sudo .venv/bin/python benchmarks/ab.py /tmp/old [--repeats 6]
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # benchmarks/run.py

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tools_for(label: str, root: str) -> list[run.Tool]:
    py, cli = f"{root}/.venv/bin/python", f"{root}/.venv/bin/ipsec-nflog"
    consumers = f"{root}/benchmarks/consumers.py"
    return [
        run.Tool(f"cli-{label}", f"capture -w ({label})",
                 [cli, "capture", "-q", "-g", "{group}", "-w", "{out}"], "cref"),
        run.Tool(f"batch-{label}", f"batch API ({label})",
                 [py, consumers, "batch", "--group", "{group}", "--out", "{out}"], "cref"),
    ]


def main() -> int:
    if len(sys.argv) < 2 or os.geteuid() != 0:
        print(__doc__, file=sys.stderr)
        return 2
    base = os.path.abspath(sys.argv[1])
    a = run.parse_args(["--tools", "cref", "--sizes", "64", "--rates", "max", *sys.argv[2:]])
    cref = run.TOOLS["cref"]
    tools = [cref, *tools_for("baseline", base), *tools_for("this", HERE)]
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
