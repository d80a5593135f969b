"""Stopping a capture on SIGINT, SIGTERM and SIGHUP: one owner of those signals.

While a :class:`StopSignals` is entered it is the process's only handler of the stop
signals. A signal then only records that a stop was asked (``bool(stop)``, ``stop.signum``);
the code that owns the capture looks at that flag between steps and ends cleanly. So a
signal may land at any instant - during rule installation, inside a blocking call, before
the capture loop runs - without unwinding anything half done, and it is never lost.

Inherited dispositions: SIGINT and SIGTERM are taken over even when inherited as ``SIG_IGN``
(a background job of a non-interactive shell starts with SIGINT ignored, and ``kill -INT``
must still stop it). SIGHUP inherited as ``SIG_IGN`` stays ignored, as tcpdump does: that is
``nohup``'s request to outlive the terminal, and the capture (and its rules) then go on
together.

The rules lifecycle (:mod:`ipsec_nflog.rules.lifecycle`) installs no handler of its own
while an owner is active (:func:`active`), and :func:`held` blocks the stop signals over
steps that must not be cut in two (installing and registering rules, forking).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Union

__all__ = [
    "REPEAT_GRACE",
    "STOP_SIGNALS",
    "StopSignals",
    "active",
    "die_with_parent",
    "held",
    "stop_signals",
]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# A repeat within this many seconds is the same request: under -Z one Ctrl-C reaches the
# capture child twice (from the terminal and forwarded by its parent).
REPEAT_GRACE = 0.25
PR_SET_PDEATHSIG = 1

Handler = Union[Callable[[int, Union[FrameType, None]], object], int, signal.Handlers, None]

_active: StopSignals | None = None


def active() -> StopSignals | None:
    """The owner of the stop signals in this process, if one is entered."""
    return _active


class StopSignals:
    """Context manager: SIGINT, SIGTERM and SIGHUP set a stop flag (main thread only).

    ``signum`` is the first signal; ``hurried`` is True once another one came at least
    :data:`REPEAT_GRACE` seconds later (cut waits short). ``forward_to(callback)`` also
    calls ``callback(signum)`` for every signal, e.g. to pass it on to a child process.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.count = 0
        self.hurried = False
        self._first_at = 0.0
        self._previous: dict[int, Handler] = {}
        self._callback: Callable[[int], None] | None = None

    def __enter__(self) -> StopSignals:
        global _active
        if _active is not None:
            raise RuntimeError("the stop signals already have an owner (signals.active())")
        for sig in STOP_SIGNALS:
            current = signal.getsignal(sig)
            if sig == signal.SIGHUP and current == signal.SIG_IGN:
                continue  # nohup: keep ignoring hangups
            self._previous[sig] = signal.signal(sig, self._handle)
        _active = self
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()

    def _restore(self) -> None:
        global _active
        for sig, prev in self._previous.items():
            if signal.getsignal(sig) == self._handle:
                signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
        self._previous.clear()
        if _active is self:
            _active = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if self.signum is None:
            self.signum, self._first_at = signum, now
        elif now - self._first_at >= REPEAT_GRACE:
            self.hurried = True
        self.count += 1
        if self._callback is not None:
            self._callback(signum)

    def __bool__(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        """``SIGINT`` etc. for the first signal, "" before any."""
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def forward_to(self, callback: Callable[[int], None] | None) -> None:
        """Call ``callback(signum)`` from the handler for every later signal (None: stop)."""
        self._callback = callback

    def hand_back(self) -> None:
        """Give the signals back to their previous handlers, then deliver the one that
        arrived meanwhile, if any, as if we had never been here (for commands that keep
        Python's defaults: Ctrl-C then raises KeyboardInterrupt)."""
        self._restore()
        if self.signum is not None:
            signal.raise_signal(self.signum)


@contextlib.contextmanager
def stop_signals() -> Iterator[StopSignals]:
    """The active owner, or a new one entered for the duration of the block."""
    if _active is not None:
        yield _active
        return
    with StopSignals() as owner:
        yield owner


@contextlib.contextmanager
def held(signals: tuple[int, ...] = STOP_SIGNALS) -> Iterator[None]:
    """Block ``signals`` in the calling thread for the block; what arrives meanwhile is
    delivered when it ends. Threads and programs started inside inherit the block, so a
    Ctrl-C cannot kill an ``iptables-restore`` halfway either."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def die_with_parent(parent_pid: int, signum: int = signal.SIGTERM) -> None:
    """Have the kernel send ``signum`` to this process when its parent dies
    (``prctl(PR_SET_PDEATHSIG)``); if the parent is already gone - this process was
    reparented before the call - send it now. The kernel clears the setting when the
    credentials change, so call this again after ``setuid``."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signum), ctypes.c_ulong(0),
                  ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signum)
