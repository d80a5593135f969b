"""The targets of issue 15, judged as ratios between programs of the same run (never absolute
times), each with how noisy the run was. Used by run.py's report."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

Cells = dict[tuple[str, int, int], Any]  # run.Cell
# The iterator hands out parsed packets, so its peers are those that do too: pcapy-ng with
# the TLV walk a user must add, scapy (dissects every packet) and nflogr (an NFLOG binding).
# pcapy-ng on its own hands out raw records, like the batch API: it is that one's peer.
PEERS = ("pcapy-parse", "scapy", "nflogr")
# Ours, each writing the file its own way: Capture.packets() with a record written per packet
# in Python, and the test harness's loop (each batch through the library's writer, then its
# packets). A pcapy user writes with its C dumper per packet: each side writes the way its
# library offers.
ITERS = ("iter", "iter-batch")
ITER_PPS = 500_000
# The rows of iter_build.py: ours, and the peer's walk handing out packets as ours does.
SIDE_OURS, SIDE_PEER, SIDE_WALK = "ours", "peer walk + objects", "peer walk"
PythonSide = dict[str, list[float]]  # iter_build.py --json: µs per packet of each repeat


def _cpu(cells: Cells, tool: str, size: int = 64, rate: int = 0,
         metric: str = "cpu_us_per_pkt") -> list[float]:
    c = cells.get((tool, size, rate))
    return [] if c is None else sorted(c.vals(lambda r: getattr(r, metric)))


def _spread(v: Sequence[float], unit: str = "µs") -> str:
    m = statistics.median(v)
    return (f"{m:.3f} {unit} ({min(v):.3f}-{max(v):.3f}, ±{(max(v) - min(v)) / 2 / m:.0%}, "
            f"n={len(v)})")


def _verdict(x: float, lo: float, hi: float, holds: Callable[[float], bool]) -> str:
    """'met' or 'missed' for the ratio ``x``, '(within noise)' when the most and least
    favourable repeats (``lo``, ``hi``) could give the other answer."""
    verdict = "met" if holds(x) else "missed"
    return verdict + (" (within noise)" if holds(lo) != holds(hi) else "")


def _ratio_row(cells: Cells, what: str, a: str, b: str, limit: float,
               metric: str = "cpu_us_per_pkt", unit: str = "µs") -> tuple[str, str, str]:
    va, vb = _cpu(cells, a, metric=metric), _cpu(cells, b, metric=metric)
    if not va or not vb:
        return what, f"not measured ({a if not va else b} missing)", "—"
    r = statistics.median(va) / statistics.median(vb)
    lo, hi = min(va) / max(vb), max(va) / min(vb)  # what the noise allows
    verdict = _verdict(r, lo, hi, lambda r: r <= limit)
    return (what, f"{r:.2f}x (noise allows {lo:.2f}-{hi:.2f}x); {a} {_spread(va, unit)}, "
                  f"{b} {_spread(vb, unit)}", verdict)


def _per_byte_row(cells: Cells) -> tuple[str, str, str]:
    """pcapng's CPU per byte written against pcap's: the pcapng file carries more per packet
    (EPB framing, the 'ts synthesized' comment pcap cannot carry), and a writer's cost
    follows the bytes it writes."""
    what = ("(as judged instead) CLI --pcapng ≤ 1.1x the CLI's pcap per byte written, reader "
            "CPU")
    _, text, verdict = _ratio_row(cells, what, "cli-pcapng", "cli", 1.1, "cpu_ns_per_byte",
                                  "ns/B")
    sizes = [statistics.median(v) for t in ("cli-pcapng", "cli")
             if (v := _cpu(cells, t, metric="bytes_per_pkt"))]
    if len(sizes) == 2:
        text += (f"; file bytes per packet {sizes[0]:.0f} against {sizes[1]:.0f} "
                 f"({sizes[0] / sizes[1]:.2f}x)")
    return what, text, verdict


def _python_side_row(side: PythonSide | str | None) -> tuple[str, str, str]:
    """The iterator's Python side against a peer's on the same records in memory
    (iter_build.py, run by run.py after the readers): the part of a whole reader that a
    Python iterator can change."""
    what = ("(as judged instead) the iterator's Python side ≥ 3x a peer's that hands out "
            "packets too (iter_build.py: same records, no kernel)")
    if not isinstance(side, dict) or not side.get(SIDE_OURS) or not side.get(SIDE_PEER):
        return what, f"not measured ({side or 'iter_build.py not run'})", "—"
    ours, peer, walk = side[SIDE_OURS], side[SIDE_PEER], side.get(SIDE_WALK) or []
    x = statistics.median(peer) / statistics.median(ours)
    lo, hi = min(peer) / max(ours), max(peer) / min(ours)
    verdict = _verdict(x, lo, hi, lambda r: r >= 3)
    text = (f"{x:.2f}x (noise allows {lo:.2f}-{hi:.2f}x); ours {_spread(ours)}, "
            f"{SIDE_PEER} {_spread(peer)}")
    if walk:
        text += f"; the bare walk alone {statistics.median(walk) / statistics.median(ours):.2f}x"
    return what, text, verdict


def _best(cells: Cells, tools: Sequence[str]) -> tuple[str, list[float]] | None:
    """The tool of ``tools`` with the lowest median CPU per packet, and its figures."""
    ran = [(t, v) for t in tools if (v := _cpu(cells, t))]
    return min(ran, key=lambda tv: statistics.median(tv[1])) if ran else None


def _rate_rows(cells: Cells) -> list[tuple[str, str, str]]:
    rows = []
    for tool in ITERS:
        v = _cpu(cells, tool)
        what = (f"per-packet iterator ({tool}) ≥ {ITER_PPS // 1000}k packets per reader "
                "CPU-second, 64 B")
        if v:
            pps = 1e6 / statistics.median(v)
            rows.append((what, f"{pps / 1e3:.0f}k/s (noise allows {1e6 / max(v) / 1e3:.0f}k-"
                               f"{1e6 / min(v) / 1e3:.0f}k); {tool} {_spread(v)}",
                         "met" if pps >= ITER_PPS else "missed"))
        elif tool == "iter":
            rows.append((what, "not measured (iter missing)", "—"))
    what = ("per-packet iterator ≥ 3x the best Python peer's packets per CPU-second (peers "
            "that hand out parsed packets; ours: the better of " + " and ".join(ITERS) + ")")
    ours, theirs = _best(cells, ITERS), _best(cells, PEERS)
    if ours and theirs:
        (it, v), (best, pv) = ours, theirs
        x = statistics.median(pv) / statistics.median(v)  # packets/CPU-s: iter over peer
        lo, hi = min(pv) / max(v), max(pv) / min(v)
        verdict = _verdict(x, lo, hi, lambda r: r >= 3)
        rows.append((what, f"{x:.2f}x: {it} {_spread(v)}, {best} {_spread(pv)} (noise "
                           f"allows {lo:.2f}-{hi:.2f}x)", verdict))
    else:
        rows.append((what, "not measured (no peer ran)" if ours else "iter missing", "—"))
    return rows


def _lossless_rows(cells: Cells, sizes: Sequence[int], rates: Sequence[int],
                   lossless: Callable[[Any], bool]) -> list[tuple[str, str, str]]:
    rows = []
    for size in sizes:
        what = f"CLI lossless wherever the bare C reader is, {size} B"
        ref = [r for r in rates if (c := cells.get(("cref", size, r))) and lossless(c)]
        both = [r for r in ref if ("cli", size, r) in cells]
        if not both:
            rows.append((what, "not measured", "—"))
            continue
        lost = [r for r in both if not lossless(cells[("cli", size, r)])]
        names = ", ".join("max" if r == 0 else str(r) for r in lost)
        rows.append((what, f"{len(both) - len(lost)} of {len(both)} rates where cref was "
                           "lossless" + (f"; CLI lost at {names}" if lost else ""),
                     "met" if not lost else "missed"))
    return rows


def targets15_table(cells: Cells, sizes: Sequence[int], rates: Sequence[int],
                    lossless: Callable[[Any], bool], background: str,
                    python_side: PythonSide | str | None = None) -> str:
    """The issue's targets as written, then the two it gets wrong as judged instead
    (README, "Issue 15": pcapng per byte, the iterator's Python side)."""
    rows = [
        _ratio_row(cells, "CLI -w pcap ≤ 1.2x the bare C reader (CPU/packet, 64 B flat out)",
                   "cli", "cref", 1.2),
        _ratio_row(cells, "CLI -w pcap ≤ 0.5x tcpdump", "cli", "tcpdump", 0.5),
        _ratio_row(cells, "CLI --pcapng ≤ 1.1x the CLI's pcap", "cli-pcapng", "cli", 1.1),
        _ratio_row(cells, "CLI --raw ≤ 1.1x the CLI's pcap", "cli-raw", "cli", 1.1),
        _ratio_row(cells, "batch API ≤ 1.1x the CLI's pcap", "batch", "cli", 1.1),
        _ratio_row(cells, "(for reference) batch API vs pcapy-ng's raw records, ≤ 1x",
                   "batch", "pcapy", 1.0),
        *_rate_rows(cells),
        *_lossless_rows(cells, sizes, rates, lossless),
        _ratio_row(cells, "--low-latency ≤ 5x the default's CPU/packet", "cli-lowlat", "cli",
                   5.0),
        _per_byte_row(cells),
        _python_side_row(python_side),
    ]
    lines = [f"Noise: {background}. Each figure is the median over the repeats of the flat-out "
             "64 B cell, with min-max and half the range relative to the median; 'noise "
             "allows' is the ratio from the most and least favourable repeats; a verdict "
             "'(within noise)' could go the other way on those.", "",
             "| target | this run | verdict |", "|---|---|---|"]
    lines += [f"| {a} | {b} | **{c}** |" for a, b, c in rows]
    return "\n".join(lines)
