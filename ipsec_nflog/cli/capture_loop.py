"""The capture loop of ``ipsec-nflog capture``: read batches until a stop signal, ``-c`` or
``--duration``, then let the kernel flush and drain the ring, close the output and report.

Batches go to a capture file (``-w``) or, as one line per packet, to standard output; the
final drain is :meth:`Capture.drain_batches`, the one drain loop.
"""

from __future__ import annotations

import argparse
import importlib
import pwd
import sys
import time
from functools import partial
from typing import TYPE_CHECKING, TextIO

from ipsec_nflog.cli.capture_summary import print_summary
from ipsec_nflog.cli.errors import EXIT_DROPS, EXIT_FAIL, EXIT_OK, CliError
from ipsec_nflog.cli.privileges import become
from ipsec_nflog.system.netns import interface_names

if TYPE_CHECKING:
    from ipsec_nflog.capture.live import Batch, Capture
    from ipsec_nflog.capture.stats import CaptureStats
    from ipsec_nflog.files.writer import CaptureWriter
    from ipsec_nflog.system.signals import StopSignals

__all__ = ["StatusLine", "capture_loop", "open_output", "output_format"]

MAX_BATCH = 65536  # records per read_batch
POLL_SECONDS = 0.25  # a read waits this long at most: stop, --duration and flushes are seen


class StatusLine:
    """A live line on a terminal: rates and drops, redrawn at most twice a second."""

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream, self.enabled = stream, enabled
        self.t0 = self.last_t = time.monotonic()
        self.last_pkts = self.last_bytes = 0
        self.shown = False

    def update(self, stats: CaptureStats, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last_t < 0.5):
            return
        dt = max(now - self.last_t, 1e-6)
        pkts = stats.received_packets
        nbytes = sum(g.received_bytes for g in stats.groups.values())
        pps = (pkts - self.last_pkts) / dt
        mbs = (nbytes - self.last_bytes) / dt / 1e6
        self.last_t, self.last_pkts, self.last_bytes = now, pkts, nbytes
        filtered = sum(g.filtered_packets for g in stats.groups.values())
        line = (f"{pkts} pkts  {pps:,.0f} pkt/s  {mbs:.1f} MB/s  "
                + (f"filtered: {filtered}  " if filtered else "")
                + f"drops: {stats.drop_summary()}")
        self.stream.write("\r\x1b[K" + line)
        self.stream.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def output_format(args: argparse.Namespace) -> str | None:
    """The ``-w`` file's format: asked for, or from the file name (None: no -w)."""
    from ipsec_nflog.files import default_format

    if not args.write:
        return None
    fmt = "pcapng" if args.pcapng else "raw" if args.raw else "pcap" if args.pcap else None
    return fmt or default_format(args.write)


def open_output(args: argparse.Namespace, cap: Capture) -> CaptureWriter:
    """The ``-w`` writer: a file (rotating with -C/-G/-W) or standard output (``-w -``)."""
    from ipsec_nflog.capture.framing import NativeFraming
    from ipsec_nflog.files import open_writer

    fmt = output_format(args)
    pcapng = fmt == "pcapng"
    to_stdout = args.write == "-"  # like tcpdump -w -: pipe into wireshark -k -i -
    if to_stdout and (args.file_size or args.rotate_seconds):
        raise CliError("-w - cannot rotate (-C/-G)")
    # Standard output is written through its descriptor: "/dev/stdout" is a symlink, which
    # the writer never follows, and what it points to is not ours to chown.
    writer = open_writer(
        sys.stdout.fileno() if to_stdout else args.write, format=fmt,
        overwrite=args.overwrite,
        flush_every_batch=args.packet_buffered,
        rotate_bytes=args.file_size * 1_000_000 if args.file_size else None,
        rotate_seconds=args.rotate_seconds, rotate_count=args.file_count,
        groups=cap.config.groups if pcapng else (),
        stats_source=cap.stats if pcapng else None,
        interface_names=partial(interface_names, cap.config.netns) if pcapng else None,
    )
    writer.use_framing(NativeFraming())  # pcapng and raw framed in C, one pass per batch
    return writer


def ready_line(args: argparse.Namespace, cap: Capture) -> str:
    """tcpdump's "listening on" line, printed once every group is bound and every rule is
    in: scripts and harnesses wait for it before they send traffic."""
    cfg = cap.config
    groups = ",".join(str(g) for g in cfg.groups)
    rules = getattr(args, "rules_installed", None)
    where = f" in network namespace {cfg.netns}" if cfg.netns else ""
    extra = (f", rules {rules}" if rules else "") + (
        f", filter '{cfg.filter}'" if cfg.filter else "")
    return (f"listening on nflog:{groups}{where}, link-type NFLOG (Linux netfilter log "
            f"messages), snapshot length {cfg.effective_snaplen} bytes{extra}")


def capture_loop(args: argparse.Namespace, cap: Capture, stop: StopSignals,
                 user: pwd.struct_passwd | None = None, parent: int | None = None) -> int:
    """Read until ``stop`` (a signal), -c or --duration; drain; close; report. ``user``:
    -Z, dropped to once the output is open; ``parent``: the pid of the root parent under
    -Z --rules, whose death must end this process too."""
    writer = open_output(args, cap) if args.write else None
    if user is not None:
        # Import now what the loop and the report use: after the drop the user may not be
        # allowed to read the Python installation.
        importlib.import_module("ipsec_nflog.nflog.summary")
        become(user, writer, parent)
    status = StatusLine(sys.stderr, sys.stderr.isatty() and not args.quiet and bool(writer))
    if not args.quiet:
        print(ready_line(args, cap), file=sys.stderr, flush=True)
    error: BaseException | None = None
    try:
        left = _read_until_stopped(args, cap, stop, writer, status)
        if left is None or left > 0:
            _drain(cap, stop, writer, left)
    except OSError as e:
        error = e
    finally:
        stats = cap.stats()
        status.clear()
        if writer is not None:
            try:
                writer.close(stats=stats)
            except OSError as e:
                error = error or e
    print_summary(args, stats, writer, error, stop.signum)
    if error is not None:
        return EXIT_FAIL
    if args.fail_on_drop and stats.lossy:
        return EXIT_DROPS
    return EXIT_OK


def _read_until_stopped(args: argparse.Namespace, cap: Capture, stop: StopSignals,
                        writer: CaptureWriter | None, status: StatusLine) -> int | None:
    """The live part: batches to the output until a stop. Returns how many packets -c
    still allows (None: no -c)."""
    deadline = time.monotonic() + args.duration if args.duration else None
    left: int | None = args.count
    while not stop and (left is None or left > 0):
        if deadline is not None and time.monotonic() >= deadline:
            break
        batch = cap.read_batch(max_packets=min(left or MAX_BATCH, MAX_BATCH),
                               timeout=POLL_SECONDS)
        if batch is not None:
            left = None if left is None else left - batch.count
            _emit(batch, writer)
        elif writer is not None:
            writer.flush_if_due()
        if status.enabled:
            status.update(cap.stats())
    return left


def _drain(cap: Capture, stop: StopSignals, writer: CaptureWriter | None,
           left: int | None) -> None:
    """Let the kernel flush its queue, then take what is left in the ring (at most ``left``
    packets). Stopped by a signal, a repeat of it cuts the wait short; otherwise any
    signal does."""
    by_signal = bool(stop)
    cap.stop(interrupted=lambda: stop.hurried if by_signal else bool(stop))
    for batch in cap.drain_batches(max_packets=left):
        _emit(batch, writer)


def _emit(batch: Batch, writer: CaptureWriter | None) -> None:
    if writer is not None:
        writer.write_batch(batch)  # pcapng: the ring already holds its blocks
        batch.release()
        return
    from ipsec_nflog.nflog.summary import summarize

    lines = [summarize(p) for p in batch]
    batch.release()
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()
