"""ipsec_nflog.testing's capture without pytest's help: listening when returned, expectations
that return at once or fail at their timeout with what was seen, teardown that leaves
nothing, bad input refused before anything is made; and the asyncio variant."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipsec_nflog import rules, testing
from ipsec_nflog.capture.filter import FilterError
from ipsec_nflog.errors import GroupBusyError
from ipsec_nflog.files import read_capture
from ipsec_nflog.system.procinfo import group_bindings
from ipsec_nflog.testing.expect import Criteria, ExpectationFailed, hook_number
from ipsec_nflog.testing.lab import NetnsPair
from ipsec_nflog.testing.session import NflogCapture

SLACK = 0.5  # the acceptance bound: an expectation fails at its timeout, +-0.5 s


def _udp(lab: NetnsPair, port: int = 500, *, payload: bytes = b"ipsec-nflog",
         family: int = socket.AF_INET, reverse: bool = False) -> None:
    src = lab.b if reverse else lab.a
    if family == socket.AF_INET:
        dst = lab.a4 if reverse else lab.b4
    else:
        dst = (lab.a6 if reverse else lab.b6) or ""
    with lab.socket(src, family) as s:
        s.sendto(payload, (dst, port))


@pytest.fixture
def later() -> Iterator[list[threading.Timer]]:
    """Timers started by a test, always joined (no thread outlives the test)."""
    timers: list[threading.Timer] = []
    yield timers
    for t in timers:
        t.cancel()
        t.join()


def _after(timers: list[threading.Timer], delay: float, fn: object) -> None:
    assert callable(fn)
    t = threading.Timer(delay, fn)
    timers.append(t)
    t.start()


# -- without privileges ------------------------------------------------------------------------

def test_criteria_check_hooks_prefixes_and_expressions() -> None:
    assert hook_number("output") == 3 and hook_number(0) == 0 and hook_number(None) is None
    for bad in ("OUTBOUND", 7, True):
        with pytest.raises(ValueError, match="hook"):
            hook_number(bad)
    c = Criteria.of("POSTROUTING", "libipsec", "esp", compile=False)
    assert c.describe() == "hook POSTROUTING, prefix 'libipsec', filter 'esp'"
    assert Criteria.of().describe() == "any packet"
    with pytest.raises(ValueError, match="empty filter"):
        Criteria.of(filter="  ")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"rules": "no-such-preset"}, "unknown preset 'no-such-preset'"),
    ({"rules": ["ike-esp-in", "ike-esp-in"]}, "distinct preset names"),
    ({"rules": "libipsec", "reqid": 3}, "policy options"),
    ({"group": 70000}, "group"),
    ({"family": "ipv5"}, "family"),
    ({"filter": ""}, "empty filter"),
    ({"rules": "all", "backend": "pf"}, "unknown backend 'pf'"),
    ({"netns": "../etc"}, "invalid network namespace name"),
])
def test_bad_input_is_refused_before_anything_is_made(kwargs: dict[str, object],
                                                      message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NflogCapture(**kwargs)  # type: ignore[arg-type]


def test_a_missing_namespace_is_named() -> None:
    with pytest.raises(FileNotFoundError, match="'ipnf-no-such-ns' does not exist"):
        NflogCapture("all", netns="ipnf-no-such-ns")


# -- live, in a lab ----------------------------------------------------------------------------

@pytest.mark.privileged
def test_expect_returns_at_once_when_the_packets_are_there(
        netns_pair: NetnsPair, later: list[threading.Timer]) -> None:
    lab = netns_pair
    with testing.capture("ike-esp-out", netns=lab.a) as cap:
        assert cap.group is not None and 20000 <= cap.group <= 65535
        assert [b.group for b in group_bindings(lab.a, resolve_owners=False)] == [cap.group]
        # they arrive 0.3 s from now: expect returns as soon as they are there
        _after(later, 0.3, lambda: _udp(lab))
        t0 = time.monotonic()
        got = cap.expect(1, hook="OUTPUT", prefix="ike-esp-out", filter="udp port 500",
                         timeout=10)
        took = time.monotonic() - t0
        assert 0.25 < took < 0.3 + 0.3, took
        assert len(got) == 1 and got[0].ip.data.dport == 500
        # already there: no wait at all
        t0 = time.monotonic()
        assert cap.expect(1, filter="udp", timeout=10) == got
        assert time.monotonic() - t0 < 0.1


@pytest.mark.privileged
def test_expect_fails_at_its_timeout_listing_what_was_seen(netns_pair: NetnsPair) -> None:
    lab = netns_pair
    with testing.capture(["ike-esp-out", "ike-esp-in"], netns=lab.a) as cap:
        _udp(lab, 500)
        _udp(lab, 4500, reverse=True)
        cap.expect(2, timeout=5)
        for timeout in (0.0, 1.5):
            t0 = time.monotonic()
            with pytest.raises(ExpectationFailed) as info:
                cap.expect(1, hook="OUTPUT", filter="esp", timeout=timeout)
            assert abs(time.monotonic() - t0 - timeout) < SLACK
        e = info.value
        assert isinstance(e, AssertionError)
        assert len(e.seen) == 2 and e.matched == [] and e.stats is not None
        text = str(e)
        assert text.startswith("expected 1 packet(s) matching hook OUTPUT, filter 'esp' "
                               "within 1.5 s; 0 matched\n")
        assert f"seen 2 packet(s) on nflog:{cap.group} in netns {lab.a}, rules ike-esp-out, " \
               f"ike-esp-in:" in text
        lines = text.splitlines()
        assert "OUTPUT" in lines[2] and "ike-esp-out" in lines[2]
        assert "10.99.0.1." in lines[2] and "> 10.99.0.2.500:" in lines[2]
        assert "PREROUTING" in lines[3] and "ike-esp-in" in lines[3]
        assert "10.99.0.2." in lines[3] and "> 10.99.0.1.4500:" in lines[3]
        assert lines[4] == ("counters: received 2, delivered 2, filtered 0, pending 0; drops: "
                            "no drops")


@pytest.mark.privileged
def test_expect_counts_from_the_start_and_returns_the_first_ones(netns_pair: NetnsPair) -> None:
    lab = netns_pair
    with testing.capture("ike-esp-out", netns=lab.a, family="ipv6") as cap:
        for i in range(3):
            _udp(lab, 500, payload=bytes([i]) * 30, family=socket.AF_INET6)
        _udp(lab, 500)  # IPv4: no rule for it in an ipv6-only rule set
        got = cap.expect(2, filter="ip6 and udp port 500")
        assert [bytes(p.ip.data.data)[0] for p in got] == [0, 1]
        assert len(cap.expect(3, filter="ip6")) == 3
        with pytest.raises(ExpectationFailed, match=r"expected 4 packet\(s\) .* 3 matched"):
            cap.expect(4, filter="ip6", timeout=0.3)
        cap.expect_none(filter="ip", within=0.3)


@pytest.mark.privileged
def test_expect_none_fails_as_soon_as_a_packet_matches(
        netns_pair: NetnsPair, later: list[threading.Timer]) -> None:
    lab = netns_pair
    with testing.capture("ike-esp-in", netns=lab.a, family="ipv4") as cap:
        t0 = time.monotonic()
        cap.expect_none(hook="PREROUTING", within=0.5)  # nothing: returns after `within`
        assert 0.45 < time.monotonic() - t0 < 0.5 + SLACK
        _after(later, 0.2, lambda: _udp(lab, 4500, reverse=True))
        t0 = time.monotonic()
        with pytest.raises(ExpectationFailed, match=r"expected no packet matching hook "
                                                     r"PREROUTING within 5 s; 1 matched"):
            cap.expect_none(hook="PREROUTING", within=5)
        assert time.monotonic() - t0 < 0.2 + SLACK
        with pytest.raises(ExpectationFailed):  # already there: fails at once
            cap.expect_none(prefix="ike-esp-in", within=5)


@pytest.mark.privileged
def test_a_bad_expectation_fails_at_once_without_waiting(netns_pair: NetnsPair) -> None:
    with testing.capture(None, netns=netns_pair.a) as cap:
        t0 = time.monotonic()
        with pytest.raises(FilterError, match="invalid filter expression"):
            cap.expect(1, filter="udp port banana", timeout=30)
        with pytest.raises(ValueError, match="unknown hook"):
            cap.expect(1, hook="OUTBOUND", timeout=30)
        with pytest.raises(ValueError, match="count"):
            cap.expect(0, timeout=30)
        assert time.monotonic() - t0 < 0.5


@pytest.mark.privileged
def test_teardown_removes_the_rules_unbinds_and_keeps_the_packets(
        netns_pair: NetnsPair, tmp_path: Path) -> None:
    lab = netns_pair
    with testing.capture("all", netns=lab.a) as cap:
        assert rules.find(netns=lab.a)  # installed when returned
        _udp(lab, 4500)
        _udp(lab, 4500, family=socket.AF_INET6)
        cap.expect(2)
    assert cap.closed
    assert rules.find(netns=lab.a) == []
    assert group_bindings(lab.a, resolve_owners=False) == []
    assert len(cap.packets) == 2 and {p.prefix for p in cap.packets} == {"all"}
    t0 = time.monotonic()
    with pytest.raises(ExpectationFailed):  # closed: no packet can come, so no waiting
        cap.expect(3, timeout=30)
    assert time.monotonic() - t0 < 0.5
    path = cap.save(tmp_path / "all.pcap")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [p.payload for p in read_capture(path)] == [p.payload for p in cap.packets]
    with pytest.raises(FileExistsError):
        cap.save(path)
    pcapng = cap.save(tmp_path / "all.pcapng")
    assert len(list(read_capture(pcapng))) == 2


@pytest.mark.privileged
def test_teardown_runs_when_the_block_fails(netns_pair: NetnsPair) -> None:
    lab = netns_pair
    with pytest.raises(RuntimeError, match="boom"), \
            testing.capture("ike-esp-out", netns=lab.a) as cap:
        raise RuntimeError("boom")
    assert cap.closed and rules.find(netns=lab.a) == []
    assert group_bindings(lab.a, resolve_owners=False) == []


@pytest.mark.privileged
def test_the_capture_filter_runs_in_the_reader(netns_pair: NetnsPair) -> None:
    lab = netns_pair
    with testing.capture("ike-esp-out", netns=lab.a, filter="udp port 4500") as cap:
        _udp(lab, 500)
        _udp(lab, 4500)
        assert [p.ip.data.dport for p in cap.expect(1)] == [4500]
        cap.expect_none(filter="udp port 500", within=0.3)
        stats = cap.stats()
        assert stats is not None
        assert sum(g.filtered_packets for g in stats.groups.values()) == 1


@pytest.mark.privileged
def test_a_free_group_is_picked_and_a_busy_one_is_refused(netns_pair: NetnsPair) -> None:
    lab = netns_pair
    with testing.capture(None, netns=lab.a) as first, \
            testing.capture(None, netns=lab.a) as second:
        assert first.group != second.group
        assert testing.free_group(lab.a) not in (first.group, second.group)
        with pytest.raises(GroupBusyError):
            NflogCapture("ike-esp-in", netns=lab.a, group=first.group).open()
        assert rules.find(netns=lab.a) == []  # the rules never went in


@pytest.mark.privileged
def test_acapture_waits_in_the_event_loop(netns_pair: NetnsPair) -> None:
    lab = netns_pair

    async def main() -> tuple[float, float]:
        async with testing.acapture("ike-esp-out", netns=lab.a) as cap:

            async def send() -> None:  # runs only if expect leaves the loop running
                await asyncio.sleep(0.3)
                _udp(lab)

            sender = asyncio.ensure_future(send())
            t0 = time.monotonic()
            got = await cap.expect(1, filter="udp port 500", timeout=10)
            arrived = time.monotonic() - t0
            assert len(got) == 1
            await sender
            t0 = time.monotonic()
            with pytest.raises(ExpectationFailed, match="0 matched"):
                await cap.expect(1, filter="esp", timeout=1.0)
            failed = time.monotonic() - t0
            await cap.expect_none(filter="esp", within=0.2)
            return arrived, failed

    arrived, failed = asyncio.run(main())
    assert 0.25 < arrived < 0.3 + 0.3, arrived  # the sender ran while expect waited
    assert abs(failed - 1.0) < SLACK, failed
    assert group_bindings(lab.a, resolve_owners=False) == []
    assert rules.find(netns=lab.a) == []


def test_the_public_names_load_lazily() -> None:
    for name in testing.__all__:
        assert getattr(testing, name) is not None
    with pytest.raises(AttributeError):
        testing.nothing  # noqa: B018
