"""The ipsec-nflog command (also python -m ipsec_nflog): the console entry point.

Each subcommand lives in its own module (``capture``, ``read``, ``rules``, ``stats``,
``keys``, ``demo``), the options in :mod:`ipsec_nflog.cli.parser`. Errors are one line on
stderr and exit status 2 (1 for runtime failures), never a traceback unless ``--debug``.
"""

from __future__ import annotations

import argparse
import atexit
import os
import sys
import threading
from collections.abc import Callable, Sequence
from typing import NoReturn

from ipsec_nflog.cli.capture import cmd_capture
from ipsec_nflog.cli.errors import EXIT_FAIL, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, CliError
from ipsec_nflog.cli.extcap import cmd_extcap
from ipsec_nflog.cli.parser import build_parser
from ipsec_nflog.errors import NflogError
from ipsec_nflog.system.signals import StopSignals

__all__ = ["build_parser", "exit_quickly", "main", "run"]


def main(argv: Sequence[str] | None = None) -> int:
    # Own the stop signals before anything else: from here on a signal asks the capture to
    # stop (the other commands get it back below), and never prints a traceback.
    with StopSignals() as stop:
        try:
            args = _parse(argv)
            if args.func not in (cmd_capture, cmd_extcap):
                stop.hand_back()  # Python's defaults again: Ctrl-C interrupts a read
            return _run_command(args)
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The parsed command line. Only ``extcap`` takes arguments it does not know (newer
    Wireshark versions pass new ones); for the rest they are an error, as parse_args says."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "takes_unknown_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.extcap_unknown = unknown
    return args


def _run_command(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK
    except Exception as e:
        if args.debug:
            raise
        from ipsec_nflog.nflog.summary import printable  # file names in it are untrusted

        # A capture error's strerror is the whole message: "[Errno 1]" adds nothing.
        text = e.strerror if isinstance(e, NflogError) and e.strerror else str(e)
        print(f"ipsec-nflog: {printable(text or type(e).__name__)}", file=sys.stderr)
        return EXIT_USAGE if isinstance(e, (ValueError, CliError)) else EXIT_FAIL


def exit_quickly(command: Callable[[], int]) -> NoReturn:
    """Run ``command`` and exit with its status the way tcpdump does: at once. The
    interpreter's own teardown (freeing every module, its final garbage collections) costs
    ~30 ms of CPU after a capture has ended, more than the C reader spends on 100k packets.
    The atexit handlers still run and the standard streams are flushed; with a thread still
    running, the normal exit (which joins it) is taken instead."""
    try:
        code = command()
    except SystemExit as e:  # argparse's usage errors
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, (int, type(None))):
            print(e.code, file=sys.stderr)
    if threading.active_count() > 1:
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that went away, a closed stream
            pass
    os._exit(code)


def run() -> NoReturn:
    """The ``ipsec-nflog`` console script and ``python -m ipsec_nflog``."""
    exit_quickly(main)


if __name__ == "__main__":
    run()
