"""What happens to installed rules when their process ends badly.

A child process installs rules in a test namespace and is then killed:
- SIGKILL: nft owner tables vanish by themselves (the kernel deletes them with the netlink
  socket); iptables rules and plain nft tables stay until ``cleanup()`` removes them;
- SIGTERM / SIGINT: our handlers remove the rules, then chain to the previous handler (or
  die from the signal, as the default action would);
- normal exit without removing: ``atexit`` removes them; a forked child never removes its
  parent's rules.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ipsec_nflog import rules
from ipsec_nflog.rules import nft
from tests.rules.test_rules_kernel import add_foreign_rules, need_backend, snapshot
from tests.support import nstools

pytestmark = pytest.mark.privileged

ROOT = Path(__file__).resolve().parents[2]
BACKENDS = ("iptables-nft", "iptables-legacy", "nft", "nft-cli")

CHILD = r"""
import json, os, signal, sys, time
from ipsec_nflog import rules

args = json.loads(sys.argv[1])
mode = args.pop("mode")
if mode == "chain":
    def previous(signum, frame):
        left = len(rules.find(args["netns"]))
        print(json.dumps({"previous_handler": signum, "ours_left": left}), flush=True)
        sys.exit(3)
    signal.signal(signal.SIGTERM, previous)

if mode == "with":
    with rules.installed(**args) as h:
        print(json.dumps({"tag": h.tag, "owner": h.owner_table}), flush=True)
        time.sleep(60)
    sys.exit(0)

h = rules.install(**args)
print(json.dumps({"tag": h.tag, "owner": h.owner_table}), flush=True)
if mode == "exit":
    sys.exit(0)  # without removing: atexit must
if mode == "fork":
    pid = os.fork()
    if pid == 0:
        sys.exit(0)  # the forked child's atexit must leave the parent's rules alone
    os.waitpid(pid, 0)
    print(json.dumps({"after_fork": len(rules.find(args["netns"]))}), flush=True)
    h.remove()
    sys.exit(0)
time.sleep(60)
"""


def backend_args(backend: str) -> dict[str, Any]:
    kw = need_backend(backend)
    return kw


def start_child(ns: str, backend: str, mode: str, preset: str = "all",
                **extra: Any) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    args = {"mode": mode, "preset": preset, "netns": ns, "group": 77, **backend_args(backend),
            **extra}
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(args)], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = read_line(p)
    return p, json.loads(line)


def read_line(p: subprocess.Popen[str], timeout: float = 30) -> str:
    assert p.stdout is not None
    out: list[str] = []
    t = threading.Thread(target=lambda: out.append(p.stdout.readline()),  # type: ignore[union-attr]
                         daemon=True)
    t.start()
    t.join(timeout)
    if not out or not out[0]:
        p.kill()
        _, err = p.communicate(timeout=10)
        raise AssertionError(f"child said nothing (exit {p.returncode}): {err}")
    return out[0]


def ours(ns: str, tag: str) -> list[rules.Leftover]:
    return [x for x in rules.find(ns) if x.tag == tag]


def wait_gone(ns: str, tag: str, timeout: float = 5) -> list[rules.Leftover]:
    deadline = time.monotonic() + timeout
    left = ours(ns, tag)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = ours(ns, tag)
    return left


def finish(p: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=30)
    return p.returncode, out, err


# -- SIGKILL -------------------------------------------------------------------------------


def test_sigkill_nft_owner_table_vanishes_by_itself(netns: str) -> None:
    p, info = start_child(netns, "nft", "plain")
    assert info["owner"] is True
    tag = info["tag"]
    [table] = ours(netns, tag)
    assert isinstance(table, rules.NftTable) and table.owner
    p.send_signal(signal.SIGKILL)
    rc, _, _ = finish(p)
    assert rc == -signal.SIGKILL
    assert wait_gone(netns, tag) == []
    assert rules.cleanup(netns) == []  # nothing left for cleanup to do


@pytest.mark.parametrize("backend", ["iptables-nft", "iptables-legacy", "nft-cli"])
def test_sigkill_leftovers_are_removed_by_cleanup(netns: str, backend: str) -> None:
    need_backend(backend)
    add_foreign_rules(netns)
    before = snapshot(netns)
    p, info = start_child(netns, backend, "plain")
    tag = info["tag"]
    left = ours(netns, tag)
    rs = rules.build("all", group=77, tag=tag)
    want = 1 if backend == "nft-cli" else 2 * len(rs.rules)  # one table / rules per family
    assert len(left) == want
    p.send_signal(signal.SIGKILL)
    assert finish(p)[0] == -signal.SIGKILL
    time.sleep(0.2)
    assert len(ours(netns, tag)) == want  # nothing removes them by itself ...
    removed = rules.cleanup(netns)  # ... until cleanup
    assert sorted(map(str, removed)) == sorted(map(str, left))
    assert ours(netns, tag) == []
    assert snapshot(netns) == before


def test_cleanup_leaves_a_live_owners_rules(netns: str) -> None:
    p, info = start_child(netns, "iptables-nft", "plain")
    try:
        assert rules.cleanup(netns) == []
        assert ours(netns, info["tag"])
    finally:
        p.send_signal(signal.SIGTERM)
        finish(p)
    assert ours(netns, info["tag"]) == []


# -- SIGTERM / SIGINT ------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigterm_removes_then_dies_from_the_signal(netns: str, backend: str) -> None:
    need_backend(backend)
    add_foreign_rules(netns)
    before = snapshot(netns)
    p, info = start_child(netns, backend, "plain")
    assert ours(netns, info["tag"])
    p.send_signal(signal.SIGTERM)
    rc, _out, err = finish(p)
    assert rc == -signal.SIGTERM, err
    assert ours(netns, info["tag"]) == []
    assert snapshot(netns) == before


@pytest.mark.parametrize("backend", ["iptables-nft", "nft"])
def test_sigint_removes_through_keyboard_interrupt(netns: str, backend: str) -> None:
    p, info = start_child(netns, backend, "with")
    assert ours(netns, info["tag"])
    p.send_signal(signal.SIGINT)
    rc, _out, err = finish(p)
    assert rc in (-signal.SIGINT, 1) and "KeyboardInterrupt" in err
    assert ours(netns, info["tag"]) == []


def test_previous_sigterm_handler_runs_after_removal(netns: str) -> None:
    p, _info = start_child(netns, "iptables-nft", "chain")
    p.send_signal(signal.SIGTERM)
    rc, out, err = finish(p)
    assert rc == 3, err
    assert json.loads(out.splitlines()[-1]) == {"previous_handler": signal.SIGTERM,
                                                "ours_left": 0}


# -- exits and forks ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["iptables-nft", "nft-cli"])
def test_atexit_removes_on_normal_exit(netns: str, backend: str) -> None:
    p, info = start_child(netns, backend, "exit")
    rc, _out, err = finish(p)
    assert rc == 0, err
    assert ours(netns, info["tag"]) == []


@pytest.mark.parametrize("backend", ["iptables-nft", "nft"])
def test_forked_child_does_not_remove_the_parents_rules(netns: str, backend: str) -> None:
    p, info = start_child(netns, backend, "fork", preset="ike-esp-in", family="ipv4")
    msg = json.loads(read_line(p))
    assert msg["after_fork"] == (1 if backend == "nft" else 3)
    rc, _out, err = finish(p)
    assert rc == 0, err
    assert ours(netns, info["tag"]) == []


# -- the handlers themselves ---------------------------------------------------------------


def test_signal_handlers_come_and_go_with_the_rules(netns: str) -> None:
    need_backend("iptables-nft")
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with rules.installed("outgoing", backend="iptables-nft", netns=netns, group=1):
        for s in before:
            assert signal.getsignal(s) is not before[s]
        with rules.installed("decap", backend="iptables-nft", netns=netns, group=2):
            pass
        for s in before:  # still installed while the first set is active
            assert signal.getsignal(s) is not before[s]
    assert {s: signal.getsignal(s) for s in before} == before
    with rules.installed("outgoing", backend="iptables-nft", netns=netns, group=1,
                         handle_signals=False):
        assert {s: signal.getsignal(s) for s in before} == before


def test_install_from_another_thread_leaves_signals_alone(netns: str) -> None:
    need_backend("nft")
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    handles: list[rules.InstalledRules] = []
    t = threading.Thread(target=lambda: handles.append(
        rules.install("all", backend="nft", netns=netns, group=1)))
    t.start()
    t.join()
    try:
        assert {s: signal.getsignal(s) for s in before} == before
        assert ours(netns, handles[0].tag)
    finally:
        handles[0].remove()
    assert ours(netns, handles[0].tag) == []
    assert nft.table_name(handles[0].tag) not in nstools.run(
        ["nft", "list", "tables"], ns=netns).stdout


# -- persistent rules (ipsec-nflog rules install / remove) --------------------------------


@pytest.mark.parametrize("backend", ["iptables-nft", "iptables-legacy", "nft-cli"])
def test_persistent_rules_outlive_the_process_until_removed_by_tag(netns: str,
                                                                   backend: str) -> None:
    need_backend(backend)
    add_foreign_rules(netns)
    before = snapshot(netns)
    p, info = start_child(netns, backend, "exit", persistent=True)
    assert finish(p)[0] == 0
    tag = info["tag"]
    assert tag.startswith("keep-") and info["owner"] is False
    left = ours(netns, tag)
    assert left
    assert rules.cleanup(netns) == []  # not stale: it names no process
    removed = rules.remove(tag, netns=netns)
    assert sorted(map(str, removed)) == sorted(map(str, left))
    assert ours(netns, tag) == [] and snapshot(netns) == before
    assert rules.remove(tag, netns=netns) == []  # nothing left: a no-op


def test_cleanup_force_takes_persistent_rules_too(netns: str) -> None:
    h = rules.install("outgoing", backend="iptables-nft", netns=netns, group=1,
                      persistent=True)
    assert rules.active() == []  # not registered: no atexit or signal removal
    assert [x.tag for x in rules.cleanup(netns, force=True)] == [h.tag, h.tag]
    assert rules.find(netns) == []


def test_remove_by_tag_of_an_active_handle_and_of_a_foreign_owner_table(netns: str) -> None:
    need_backend("nft")
    h = rules.install("decap", backend="nft", netns=netns, group=1)
    assert rules.remove(h.tag, netns=netns) and not h.active and rules.active() == []
    p, info = start_child(netns, "nft", "plain")
    try:
        with pytest.raises(rules.RulesError, match="only the process that created it"):
            rules.remove(info["tag"], netns=netns)
    finally:
        p.send_signal(signal.SIGKILL)
        finish(p)
    assert wait_gone(netns, info["tag"]) == []


def test_persistent_refuses_the_owner_flag() -> None:
    with pytest.raises(ValueError, match="persistent rules cannot use the nft owner flag"):
        rules.install("all", backend="nft", nft_owner=True, persistent=True, group=1)
