"""The signal machinery under the CLI: StopSignals, die_with_parent, and the rules
lifecycle's own handlers in library mode (issue 9, defects 3 and 5). The helpers are those
of tests/cli/test_signals.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from ipsec_nflog import rules
from ipsec_nflog.system import signals
from tests.cli.test_signals import EXIT_WITHIN, ROOT, alive, ruleset, with_foreign_rules


@pytest.fixture
def ns(netns: str) -> str:
    return with_foreign_rules(netns)


LIBRARY_IGNORED_SIGINT = r"""
import json, signal, sys
from ipsec_nflog import rules
signal.signal(signal.SIGINT, signal.SIG_IGN)
h = rules.install("ike-esp-out", backend="iptables-nft", netns=sys.argv[1], group=77,
                  family="ipv4")
print("installed", flush=True)
sys.stdin.readline()
print(len([x for x in rules.find(sys.argv[1]) if x.tag == h.tag]), flush=True)
sys.stdin.readline()
"""


@pytest.mark.privileged
def test_library_leaves_an_ignored_sigint_ignored(ns: str) -> None:
    """Defect 3, library side: the handler used to remove the rules on an ignored SIGINT
    and return, so the process went on without them."""
    before = ruleset(ns)
    p = subprocess.Popen([sys.executable, "-c", LIBRARY_IGNORED_SIGINT, ns], cwd=ROOT,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdin is not None and p.stdout is not None
    try:
        assert p.stdout.readline() == "installed\n"
        p.send_signal(signal.SIGINT)
        time.sleep(0.3)
        p.stdin.write("\n")
        p.stdin.flush()
        assert int(p.stdout.readline()) == 3  # still installed: the process goes on
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=EXIT_WITHIN) == -signal.SIGTERM
    finally:
        p.kill()
        p.wait()
    assert ruleset(ns) == before


FORKED_OWNER = r"""
import os, signal, sys, time
from ipsec_nflog import rules
h = rules.install("all", backend="nft", nft_owner=True, netns=sys.argv[1], group=77)
pid = os.fork()
if pid == 0:
    for fd in (1, 2):  # let the test's pipes close
        os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
    time.sleep(30)
    os._exit(0)
print(pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.privileged
def test_forked_child_does_not_keep_an_nft_owner_table(ns: str) -> None:
    """Defect 5: a child inherited the libnftables socket and kept the owner table alive."""
    p = subprocess.run([sys.executable, "-c", FORKED_OWNER, ns], capture_output=True,
                       text=True, timeout=30, cwd=ROOT)
    child = int(p.stdout)
    try:
        deadline = time.monotonic() + EXIT_WITHIN
        while rules.find(ns) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert alive(child)
        assert rules.find(ns) == []
    finally:
        os.kill(child, signal.SIGKILL)


# -- StopSignals itself ---------------------------------------------------------------------


OWNER = r"""
import os, signal, sys, time
from ipsec_nflog.system import signals
signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a background job
signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
with signals.StopSignals() as stop:
    with signals.held():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        print("blocked", bool(stop))
    print("delivered", stop.name, signals.active() is stop)
    with signals.stop_signals() as same:
        print("reused", same is stop)
    os.kill(os.getpid(), signal.SIGINT)
    print("repeat", stop.count, stop.hurried)
    time.sleep(signals.REPEAT_GRACE)
    os.kill(os.getpid(), signal.SIGTERM)
    print("hurried", stop.count, stop.hurried)
    os.kill(os.getpid(), signal.SIGHUP)  # still ignored
    print("hup", stop.count)
print("restored", signal.getsignal(signal.SIGINT) == signal.SIG_IGN,
      signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, signals.active())
signal.signal(signal.SIGINT, signal.default_int_handler)
stop = signals.StopSignals().__enter__()
os.kill(os.getpid(), signal.SIGINT)
try:
    stop.hand_back()
except KeyboardInterrupt:
    print("handed back")
"""


def test_stop_signals() -> None:
    r = subprocess.run([sys.executable, "-c", OWNER], capture_output=True, text=True,
                       timeout=30, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "blocked False", "delivered SIGINT True", "reused True", "repeat 2 False",
        "hurried 3 True", "hup 3", "restored True True None", "handed back"]


PDEATHSIG = r"""
import os, signal, sys, time
from ipsec_nflog.system import signals
r, w = os.pipe()
pid = os.fork()
if pid == 0:  # the grandchild: dies when its parent does
    for fd in (1, 2):
        os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
    signal.signal(signal.SIGTERM, lambda s, f: os._exit(7))
    signals.die_with_parent(os.getppid())
    os.write(w, b"x")
    time.sleep(30)
    os._exit(0)
os.read(r, 1)
print(pid, flush=True)
os._exit(0)
"""


def test_die_with_parent() -> None:
    r = subprocess.run([sys.executable, "-c", PDEATHSIG], capture_output=True, text=True,
                       timeout=30, cwd=ROOT)
    grandchild = int(r.stdout)
    deadline = time.monotonic() + EXIT_WITHIN
    while alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        assert not alive(grandchild)
    finally:
        if alive(grandchild):
            os.kill(grandchild, signal.SIGKILL)
    early = subprocess.run([sys.executable, "-c",
                            "import os, time; from ipsec_nflog.system import signals; "
                            "signals.die_with_parent(os.getppid() + 1); time.sleep(5)"],
                           timeout=30, cwd=ROOT)
    assert early.returncode == -signal.SIGTERM  # already reparented: the signal comes at once


@pytest.mark.privileged
def test_lifecycle_leaves_the_signals_to_an_owner(ns: str) -> None:
    saved = {s: signal.getsignal(s) for s in signals.STOP_SIGNALS}
    with signals.StopSignals() as stop:
        with rules.installed("outgoing", backend="iptables-nft", netns=ns, group=1,
                             family="ipv4") as h:
            assert all(signal.getsignal(s) == stop._handle for s in signals.STOP_SIGNALS
                       if s in stop._previous)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            assert stop.signum == signal.SIGTERM and h.active  # asked to stop, nothing more
    assert {s: signal.getsignal(s) for s in signals.STOP_SIGNALS} == saved
    assert not h.active and rules.find(ns) == []
