"""Shared fixtures. Privileged tests (netns, NFLOG, iptables) skip with a reason outside CI
and fail when IPSEC_NFLOG_REQUIRE_PRIVILEGED=1 (set by .ci/run)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator

import pytest

from tests import nstools

REQUIRE_PRIVILEGED = os.environ.get("IPSEC_NFLOG_REQUIRE_PRIVILEGED") == "1"


def _privilege_problem() -> str | None:
    if os.geteuid() != 0:
        return "needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) for network namespaces and NFLOG"
    if shutil.which("ip") is None:
        return "needs iproute2's 'ip' command"
    probe = f"ipnf-probe-{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


_problem: list[str | None] = []


def privileged_problem() -> str | None:
    if not _problem:
        _problem.append(_privilege_problem())
    return _problem[0]


def require_privileged(what: str = "") -> None:
    """Skip (or fail, in CI) when privileged tests cannot run here."""
    problem = privileged_problem()
    if problem:
        msg = f"privileged test{': ' + what if what else ''}: {problem}"
        if REQUIRE_PRIVILEGED:
            pytest.fail(msg + " (IPSEC_NFLOG_REQUIRE_PRIVILEGED=1)", pytrace=False)
        pytest.skip(msg)


def require_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        msg = f"needs '{name}' (apt-get install {package})"
        if REQUIRE_PRIVILEGED:
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    return path


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("privileged"):
        require_privileged(item.name)


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh namespace with lo up, deleted afterwards even if the test fails."""
    require_privileged("netns")
    name = nstools.unique_name("ns")
    try:
        nstools.add_netns(name)
        yield name
    finally:
        nstools.del_netns(name)


@pytest.fixture
def netns_factory() -> Iterator[callable]:  # type: ignore[valid-type]
    require_privileged("netns")
    made: list[str] = []

    def make(tag: str = "ns") -> str:
        name = nstools.unique_name(tag)
        made.append(name)
        nstools.add_netns(name)
        return name

    try:
        yield make
    finally:
        for name in reversed(made):
            nstools.del_netns(name)


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Every capture must join its threads; a test that leaks one fails."""
    before = {t.ident for t in threading.enumerate()}
    yield
    leaked = [t for t in threading.enumerate() if t.ident not in before and t.is_alive()
              and not t.daemon]
    assert not leaked, f"threads leaked by the test: {leaked}"


class VethPair:
    """Two namespaces joined by veth: ``a`` (10.99.0.1, fd99::1) and ``b`` (.2, ::2)."""

    a4, b4, a6, b6 = "10.99.0.1", "10.99.0.2", "fd99::1", "fd99::2"

    def __init__(self, a: str, b: str) -> None:
        self.a, self.b = a, b
        self.a_ifindex = nstools.ifindex(a, "veth0")
        self.b_ifindex = nstools.ifindex(b, "veth0")


@pytest.fixture
def veth_pair(netns_factory) -> VethPair:  # type: ignore[no-untyped-def]
    a, b = netns_factory("a"), netns_factory("b")
    nstools.add_veth(a, b, f"{VethPair.a4}/24", f"{VethPair.b4}/24",
                     addr6_a=f"{VethPair.a6}/64", addr6_b=f"{VethPair.b6}/64")
    return VethPair(a, b)


def _task_count() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.fixture(autouse=True)
def no_leaked_native_threads() -> Iterator[None]:
    """Captures must join their C reader threads on close (Python's threading cannot see
    them, /proc/self/task can)."""
    import gc

    before = _task_count()
    yield
    gc.collect()
    after = _task_count()
    assert after <= before, f"{after - before} native thread(s) leaked by the test"


def _netns_names() -> set[str]:
    try:
        return set(os.listdir("/run/netns"))
    except OSError:
        return set()


def _host_nflog_rules() -> int:
    r = subprocess.run(["iptables-save"], capture_output=True, text=True)
    return r.stdout.count("NFLOG") if r.returncode == 0 else 0


@pytest.fixture(autouse=True)
def no_leaked_namespaces_or_rules(request: pytest.FixtureRequest) -> Iterator[None]:
    """Privileged tests must delete the namespaces they make and never leave NFLOG rules
    in the host's ruleset, even when they fail."""
    if not request.node.get_closest_marker("privileged") or privileged_problem():
        yield
        return
    ns_before, rules_before = _netns_names(), _host_nflog_rules()
    yield
    mine = re.compile(rf"-{os.getpid()}(-|$)")  # other processes may share this machine
    leaked = {n for n in _netns_names() - ns_before if mine.search(n)}
    assert not leaked, f"network namespaces leaked by the test: {sorted(leaked)}"
    assert _host_nflog_rules() <= rules_before, "NFLOG rules left in the host's ruleset"
