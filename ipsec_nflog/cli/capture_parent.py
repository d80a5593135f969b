"""``capture -Z USER --rules PRESET``: a small root parent installs the rules and forks the
capture, which drops privileges and dies with the parent. The parent passes INT/TERM/HUP
on to it and removes the rules when it ends, however it ends."""

from __future__ import annotations

import argparse
import os
import pwd
import signal
import sys
from typing import TYPE_CHECKING, NoReturn

from ipsec_nflog.cli.capture_loop import capture_loop
from ipsec_nflog.cli.capture_summary import stopped_early
from ipsec_nflog.cli.errors import EXIT_FAIL
from ipsec_nflog.cli.rules import install_capture_rules, remove_capture_rules
from ipsec_nflog.system.signals import STOP_SIGNALS, StopSignals, die_with_parent, held

if TYPE_CHECKING:
    from ipsec_nflog.capture.config import CaptureConfig

__all__ = ["capture_with_privileged_parent"]


def capture_with_privileged_parent(args: argparse.Namespace, config: CaptureConfig,
                                   stop: StopSignals, user: pwd.struct_passwd) -> int:
    """Install the rules, fork the capture child, wait for it, remove the rules."""
    handle = install_capture_rules(args, config.groups[0])
    try:
        with held():  # a signal waits until the child exists and the forwarder is in place
            if stop:
                return stopped_early(args, stop)
            parent, seen = os.getpid(), stop.count
            pid = os.fork()  # the child closes its copy of the nft owner socket at once
            if pid == 0:
                _capture_child(args, config, stop, user, parent)
            stop.forward_to(lambda signum: _forward_signal(pid, signum))
            if stop.count > seen and stop.signum is not None:  # handled just before fork
                _forward_signal(pid, stop.signum)
        return _wait_child(pid, stop)
    finally:
        stop.forward_to(None)
        remove_capture_rules(args, handle)


def _capture_child(args: argparse.Namespace, config: CaptureConfig, stop: StopSignals,
                   user: pwd.struct_passwd, parent: int) -> NoReturn:
    from ipsec_nflog.capture.live import Capture
    from ipsec_nflog.nflog.summary import printable

    code = EXIT_FAIL
    try:
        die_with_parent(parent)  # as root until the drop, which clears it: set again there
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # forked inside held()
        with Capture(config=config) as cap:
            code = capture_loop(args, cap, stop, user, parent)
    except BaseException as e:
        print(f"ipsec-nflog: {printable(str(e) or type(e).__name__)}", file=sys.stderr)
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except OSError:
                pass
        os._exit(code)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _forward_signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass  # it has ended: waitpid reports how


def _wait_child(pid: int, stop: StopSignals) -> int:
    """The capture child's exit code. A signal to us meanwhile runs the forwarder, and
    waitpid resumes after it (PEP 475)."""
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return EXIT_FAIL
    finally:
        stop.forward_to(None)  # its pid may be reused from here on
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        print(f"ipsec-nflog: the capture process died from {_signal_name(sig)}",
              file=sys.stderr)
        return EXIT_FAIL
    return os.waitstatus_to_exitcode(status)
