"""``ipsec-nflog capture``: like ``tcpdump -i nflog:N``, with loss accounting.

Every argument is checked (groups, options, -Z user, -w path) before a rule or socket
exists; then the rules (``--rules``) go in, the capture opens and :mod:`capture_loop` runs
it. A stop signal may land at any instant: it only sets the stop flag, and whatever was
set up so far is undone.
"""

from __future__ import annotations

import argparse
import os
import stat
from typing import TYPE_CHECKING, TypedDict, cast

from ipsec_nflog.cli.capture_loop import capture_loop, output_format
from ipsec_nflog.cli.capture_parent import capture_with_privileged_parent
from ipsec_nflog.cli.capture_summary import stopped_early
from ipsec_nflog.cli.errors import CliError
from ipsec_nflog.cli.filters import compile_filter, expression_of, hooks_of
from ipsec_nflog.cli.options import given
from ipsec_nflog.cli.output_hangup import watch_standard_output
from ipsec_nflog.cli.privileges import lookup_user
from ipsec_nflog.cli.rules import install_capture_rules, remove_capture_rules
from ipsec_nflog.system.signals import StopSignals, stop_signals

if TYPE_CHECKING:
    from ipsec_nflog.capture.config import CaptureConfig

__all__ = ["FILE_RING_SIZE", "capture_config", "check_output_path", "cmd_capture"]

FILE_RING_SIZE = 256 * 1024 * 1024  # capture -w: rides out writeback stalls
FILE_HANDOVER_DELAY = 0.05  # capture -w: seconds records may wait to go out with others


class _ConfigOptions(TypedDict, total=False):
    """The CaptureConfig fields the command line sets (the rest keep their defaults)."""

    snaplen: int
    netns: str | None
    qthreshold: int
    flush_timeout: float
    nlbufsiz: int
    rcvbuf: int
    ring_size: int
    filter: str | None
    hooks: tuple[str, ...] | None
    prefix: str | None
    indev: str | None
    outdev: str | None
    handover_delay: float
    ring_format: str
    epb_synth_options: bytes


def cmd_capture(args: argparse.Namespace) -> int:
    # First of all: from here on SIGINT, SIGTERM and SIGHUP only ask for a stop, whatever
    # the inherited dispositions, so one may land anywhere below and leave nothing behind.
    # -w -: a reader that goes away (an SSH channel closing) stops an idle capture too.
    with stop_signals() as stop, watch_standard_output(args.write, args.quiet):
        return _capture(args, stop)


def _capture(args: argparse.Namespace, stop: StopSignals) -> int:
    from ipsec_nflog.capture.live import Capture

    config = capture_config(args)
    user = lookup_user(args.user) if args.user else None
    if args.write and args.write != "-":
        check_output_path(args)
    if stop:
        return stopped_early(args, stop)
    if args.rules and user is not None:
        return capture_with_privileged_parent(args, config, stop, user)
    handle = install_capture_rules(args, config.groups[0]) if args.rules else None
    try:
        if stop:  # it came while the rules went in
            return stopped_early(args, stop)
        with Capture(config=config) as cap:
            return capture_loop(args, cap, stop, user)
    finally:
        if handle is not None:
            remove_capture_rules(args, handle)


def capture_config(args: argparse.Namespace) -> CaptureConfig:
    """The capture's configuration, validated (a bad value is a CliError)."""
    from ipsec_nflog.capture.config import CaptureConfig

    groups = [g for gs in (args.group or []) for g in gs]
    if not groups:
        raise CliError("no NFLOG group given: use -g N or -i nflog:N")
    opts = _ConfigOptions(snaplen=args.snaplen, netns=args.netns)
    opts.update(cast(_ConfigOptions, given(args, "qthreshold", "nlbufsiz", "rcvbuf",
                                           "flush_timeout", "ring_size", "prefix", "indev",
                                           "outdev")))
    expression = expression_of(args)
    if expression is not None:
        opts["filter"] = expression
    opts["hooks"] = hooks_of(args)
    if args.ring_size is None and args.write:
        # A disk that stalls under writeback must not overflow the ring: the socket buffer
        # sits idle while the reader drains it, so the ring is the only slack. Pages are
        # touched only when a burst needs them.
        opts["ring_size"] = FILE_RING_SIZE
    if output_format(args) == "pcapng":
        # The reader frames the EPBs as it stores them: the writer writes the ring as is.
        from ipsec_nflog.files.pcapng import EPB_SYNTH_OPTIONS

        opts["ring_format"] = "pcapng"
        opts["epb_synth_options"] = EPB_SYNTH_OPTIONS
    if args.write and not args.packet_buffered:
        # One wakeup, one pass of Python and one write for several kernel batches. Also with
        # --low-latency: its timestamps are taken when the reader receives, not when the
        # writer writes; -U is what makes every packet go out at once.
        opts["handover_delay"] = FILE_HANDOVER_DELAY
    try:
        config = (CaptureConfig.low_latency(groups, **opts) if args.low_latency
                  else CaptureConfig(groups=tuple(groups), **opts))
    except ValueError as e:
        raise CliError(str(e)) from None
    _check_what_to_keep(config)
    return config


def _check_what_to_keep(config: CaptureConfig) -> None:
    """Compile the expression and find the devices now, before any rule or socket."""
    from ipsec_nflog.system.netns import interface_index

    if config.filter is not None:
        compile_filter(config.filter).close()
    for dev in (config.indev, config.outdev):
        if isinstance(dev, str):
            try:
                interface_index(config.netns, dev)
            except ValueError as e:
                raise CliError(str(e)) from None


def check_output_path(args: argparse.Namespace) -> None:
    """One clear line for a -w path that cannot work, before any rule or socket exists.
    (The writer checks again as it creates the file; this only says it early.)"""
    path: str = args.write
    rotating = bool(args.file_size or args.rotate_seconds)  # the first name may differ
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        parent = os.path.dirname(path) or "."
        if not (args.rotate_seconds and "%" in parent) and not os.path.isdir(parent):
            raise CliError(f"cannot write {path}: No such directory {parent}") from None
        return
    except OSError as e:
        raise CliError(f"cannot write {path}: {e.strerror}") from None
    if rotating:
        return
    if stat.S_ISLNK(st.st_mode):
        raise CliError(f"{path} is a symbolic link; not following it (remove it, or name "
                       f"the file it points to)")
    if not args.overwrite:
        raise CliError(f"{path} already exists (--overwrite replaces it)")

