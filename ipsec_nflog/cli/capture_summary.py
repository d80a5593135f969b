"""What ``ipsec-nflog capture`` says on stderr when it ends: counts, every loss by cause,
the files, and why it stopped."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import TYPE_CHECKING

from ipsec_nflog.cli.errors import EXIT_OK

if TYPE_CHECKING:
    from ipsec_nflog.capture.stats import CaptureStats
    from ipsec_nflog.files.writer import CaptureWriter
    from ipsec_nflog.system.signals import StopSignals

__all__ = ["print_summary", "stopped_early"]


def stopped_early(args: argparse.Namespace, stop: StopSignals) -> int:
    """A stop signal came before the capture started: nothing was captured or left behind."""
    if not args.quiet:
        print(f"ipsec-nflog: stopped by {stop.name} before the capture started",
              file=sys.stderr)
    return EXIT_OK


def print_summary(args: argparse.Namespace, stats: CaptureStats, writer: CaptureWriter | None,
                  error: BaseException | None, signum: int | None) -> None:
    """The end-of-capture report (``-q``: only errors and lost records)."""
    lost = writer.records_lost if writer is not None else 0
    if args.quiet and error is None and not lost:
        return
    why = f" (stopped by {signal.Signals(signum).name})" if signum else ""
    done = (f"{writer.records_written} written" if writer is not None
            else f"{stats.delivered_packets} shown")
    if lost:
        done += f", {lost} lost (taken from the ring, but the output did not take them)"
    print(f"{stats.received_packets} packets received, {done}{why}", file=sys.stderr)
    _print_losses(stats, lost)
    if writer is not None:
        _print_files(args, writer, error)
    elif error is not None:
        _print_error(f"ipsec-nflog: capture stopped: {error}")


def _print_losses(stats: CaptureStats, lost: int) -> None:
    err = sys.stderr
    for g, s in sorted(stats.groups.items()):
        print(f"  nflog:{g}: received {s.received_packets}, delivered {s.delivered_packets}, "
              f"kernel loss (seq gaps) {s.seq_gap_packets}, ENOBUFS overruns "
              f"{s.enobufs_events}, socket drops {s.socket_drops}, ring full "
              f"{s.ring_drop_packets}"
              + (f", filtered out {s.filtered_packets} (not lost)" if s.filtered_packets
                 else ""), file=err)
    if stats.pending_packets:
        print(f"  {stats.pending_packets} packets were still in the ring at exit", file=err)
    if stats.lossy:
        print(f"WARNING: packets were lost: {stats.drop_summary()}", file=err)
    if lost:
        print(f"WARNING: {lost} records were lost writing the output", file=err)


def _print_files(args: argparse.Namespace, writer: CaptureWriter,
                 error: BaseException | None) -> None:
    files = writer.files or [args.write]
    _print_error(f"files: {', '.join(str(f) for f in files)}")
    if error is None:
        return
    if args.write == "-":
        kept = f"; standard output got {writer.records_written} complete records"
    else:
        target = writer.files[-1] if writer.files else args.write
        kept = f"; {target} keeps {writer.records_written} complete records"
    _print_error(f"ipsec-nflog: capture stopped: {error}{kept}")


def _print_error(text: str) -> None:
    """``text`` quotes file names and OS messages: printed escaped."""
    from ipsec_nflog.nflog.summary import printable

    print(printable(text), file=sys.stderr)
