"""Ending a capture whose reader has gone away, also while no packet arrives.

``capture -w -`` under sshdump writes into an SSH channel, and the extcap writes into
Wireshark's FIFO: when that reader goes, a write fails with EPIPE - but only at the next
packet, and an idle capture would keep its rules forever. :class:`HangupWatch` polls the
output (POLLERR/POLLHUP: the read end is closed) and, for the extcap, Wireshark's control
pipe (end of file: Wireshark closed it to stop us). It never stops anything itself: it sends
this process a stop signal, so :class:`~ipsec_nflog.system.signals.StopSignals`, the one
owner of the stop signals, ends the capture as on Ctrl-C (drain, close, rules removed).
"""

from __future__ import annotations

import errno
import os
import select
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

__all__ = ["HangupWatch", "stop_signal_for_hangup", "watch_standard_output"]

POLL_MS = 200  # how often a pending open of the control-out pipe is retried
_HANGUP = select.POLLERR | select.POLLHUP


def stop_signal_for_hangup() -> int:
    """SIGHUP (the other end hung up), unless it is ignored (nohup): then SIGTERM."""
    return (signal.SIGTERM if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
            else signal.SIGHUP)


class HangupWatch:
    """A thread that asks for a stop when an output's reader or an input's writer is gone.

    ``outputs``: descriptors we write to (a pipe, socket or FIFO; regular files and
    terminals never report a hang-up here). ``inputs``: descriptors we only read to notice
    end of file (their data is read and dropped). ``open_later``: called each poll until it
    returns True (to open a pipe whose reader comes later). ``on_hangup(what)`` runs once,
    in the thread, before the signal is sent.
    """

    def __init__(self, outputs: Sequence[int] = (), inputs: Sequence[int] = (),
                 on_hangup: Callable[[str], None] | None = None,
                 open_later: Callable[[], bool] | None = None) -> None:
        self._outputs, self._inputs = tuple(outputs), tuple(inputs)
        self._on_hangup = on_hangup
        self._open_later = open_later
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._run, name="hangup-watch", daemon=True)
        self.fired: str | None = None

    def __enter__(self) -> HangupWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._wake_w >= 0:
            os.write(self._wake_w, b"x")
            self._thread.join()
            for fd in (self._wake_r, self._wake_w):
                os.close(fd)
            self._wake_r = self._wake_w = -1

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        for fd in self._outputs:
            poller.register(fd, 0)  # errors and hang-ups are reported whatever is asked
        for fd in self._inputs:
            poller.register(fd, select.POLLIN)
        while True:
            pending = self._open_later is not None
            for fd, revents in poller.poll(POLL_MS if pending else None):
                if fd == self._wake_r:
                    return
                if revents & select.POLLNVAL:  # not open (any more): nothing to watch
                    poller.unregister(fd)
                    continue
                what = self._hung_up(fd, revents)
                if what is not None:
                    poller.unregister(fd)
                    self._fire(what)
            if self._open_later is not None and self._open_later():
                self._open_later = None

    def _hung_up(self, fd: int, revents: int) -> str | None:
        if fd in self._outputs:
            return "output" if revents & _HANGUP else None
        try:
            data = os.read(fd, 65536)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EINTR):
                return None
            return "input"
        return "input" if not data else None

    def _fire(self, what: str) -> None:
        if self.fired is not None:
            return
        self.fired = what
        if self._on_hangup is not None:
            try:
                self._on_hangup(what)
            except OSError:
                pass  # stderr may have gone with the reader (an SSH channel)
        os.kill(os.getpid(), stop_signal_for_hangup())


def watch_standard_output(args_write: str | None, quiet: bool
                          ) -> AbstractContextManager[object]:
    """For ``-w -``: stop when the reader of standard output goes (saying so unless
    ``quiet``); for anything else, nothing."""
    if args_write != "-":
        return nullcontext()

    def announce(_: str) -> None:
        if not quiet:
            print("ipsec-nflog: the reader of standard output has gone; stopping",
                  file=sys.stderr, flush=True)

    return HangupWatch(outputs=[1], on_hangup=announce)
