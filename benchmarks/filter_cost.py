"""What a filter expression costs the capture: `ipsec-nflog capture -w` without a filter,
with one that keeps about 10 % of the packets and with the same program keeping nearly all
(its own cost), flat out at 64 B, in the same run (tools
interleaved), through benchmarks/run.py's machinery. Prints a table.

    sudo .venv/bin/python benchmarks/filter_cost.py [--repeats 5] [--duration 1.0]

The load generator's payload starts with its 64-bit sequence number in host order, so
``udp[8] < 26`` keeps the packets whose sequence number's low byte is below 26: 26 of every
256 (10.2 %), a number known exactly from the count sent. CPU is the reader's (user + system,
including the kernel work done on its behalf), per *offered* packet.
"""

from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # benchmarks/run.py

EXPRESSION = "udp and udp[8] < 26"  # keeps 10 %
EXPRESSION_ALL = "udp and udp[8] < 255"  # the same program, keeping 255 of 256: its own cost


def expected_kept(sent: int, below: int) -> int:
    return sent // 256 * below + min(sent % 256, below)


def main() -> int:
    extra = sys.argv[1:]
    a = run.parse_args(["--tools", "cli", "--sizes", "64", "--rates", "max", *extra])
    if os.geteuid() != 0:
        run.log("filter_cost.py: needs root")
        return 2
    tools = [
        run.Tool("cli", "capture -w, no filter",
                 ["{cli}", "capture", "-q", "-g", "{group}", "-w", "{out}"], "cli"),
        run.Tool("cli-filter", f"capture -w '{EXPRESSION}'",
                 ["{cli}", "capture", "-q", "-g", "{group}", "-w", "{out}", EXPRESSION],
                 "cli"),
        run.Tool("cli-filter-all", f"capture -w '{EXPRESSION_ALL}'",
                 ["{cli}", "capture", "-q", "-g", "{group}", "-w", "{out}", EXPRESSION_ALL],
                 "cli"),
    ]
    below = {"cli": 256, "cli-filter": 26, "cli-filter-all": 255}
    bins, errors = run.build(a.outdir)
    run.probe_tools(tools, bins, errors, a.python)
    if not all(t.available for t in tools):
        run.log("filter_cost.py: " + "; ".join(t.why_not for t in tools if not t.available))
        return 2
    rows: dict[str, list[run.RunResult]] = {t.name: [] for t in tools}
    workdir = tempfile.mkdtemp(prefix="filter-", dir=a.outdir)
    with run.BenchNetns(a.group, a.port, None) as ns:
        bench = run.Bench(a, ns, bins, workdir)
        for rep in range(a.repeats):
            for t in tools[rep % 3:] + tools[:rep % 3]:
                rows[t.name].append(bench.run_one(t, 64, 0, rep))
    print(f"64 B flat out, {a.repeats} runs each, interleaved; filter: `{EXPRESSION}`\n")
    print("| reader | offered pps | kept / expected | lost | CPU µs per offered packet "
          "(median) |")
    print("|---|---:|---:|---:|---:|")
    med = {}
    for t in tools:
        ok = [r for r in rows[t.name] if not r.error and r.sent]
        if not ok:
            print(f"| {t.label} | — | — | — | failed: "
                  f"{rows[t.name][0].error if rows[t.name] else '?'} |")
            continue
        cpu = sorted(1e6 * r.cpu_s / r.sent for r in ok)
        med[t.name] = cpu[len(cpu) // 2]
        exp = [expected_kept(r.sent, below[t.name]) for r in ok]
        kept = sum(r.captured for r in ok)
        pps = sorted(r.achieved for r in ok)[len(ok) // 2]
        print(f"| {t.label} | {pps:,.0f} | {kept:,} / {sum(exp):,} | {sum(exp) - kept:,} | "
              f"{med[t.name]:.3f} |")
    if len(med) == 3:
        own = med["cli-filter-all"] - med["cli"]
        print(f"\nthe filter's own cost (keeping 255/256 vs no filter): {own:+.3f} µs per "
              f"packet; keeping 10 %: {med['cli-filter'] / med['cli']:.2f}x the CPU per "
              f"offered packet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
