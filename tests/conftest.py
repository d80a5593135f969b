"""Shared fixtures. Privileged tests (netns, NFLOG, iptables) and tests that need the compiled
core (marker ``requires_core``) skip with a reason outside CI and fail when
IPSEC_NFLOG_REQUIRE_PRIVILEGED=1 (set by .ci/run)."""

from __future__ import annotations

import os
import re
import subprocess
import threading
from collections.abc import Iterator
from functools import cache

import pytest

from ipsec_nflog.errors import LibraryMissingError
from ipsec_nflog.testing.requirements import privilege_problem as privileged_problem
from ipsec_nflog.testing.requirements import (
    privileged_required,
    require_privileged,
    require_tool,
)
from ipsec_nflog.testing.requirements import unavailable as _unavailable
from tests.support import nstools

# The privilege rule (skip, or fail under IPSEC_NFLOG_REQUIRE_PRIVILEGED=1) is the library's,
# shared with the pytest plugin's fixtures: ipsec_nflog.testing.requirements.
REQUIRE_PRIVILEGED = privileged_required()
__all__ = ["REQUIRE_PRIVILEGED", "privileged_problem", "require_privileged", "require_tool"]


@cache
def core_problem() -> str | None:
    """Why the compiled core cannot be loaded here (not built, stale), or None."""
    try:
        import ipsec_nflog.capture._native  # noqa: F401
    except LibraryMissingError as e:
        return str(e)
    return None


def require_core(what: str = "") -> None:
    """Skip (or fail, in CI) when the compiled core is not built: a contributor's checkout
    without libnetfilter-log-dev runs everything else."""
    problem = core_problem()
    if problem:
        _unavailable(f"needs the compiled core{': ' + what if what else ''}: {problem}")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "requires_core: needs the compiled core (skips when it is not built, fails "
        "instead when IPSEC_NFLOG_REQUIRE_PRIVILEGED=1)")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("privileged"):
        require_privileged(item.name)
    if item.get_closest_marker("requires_core"):
        require_core()  # one reason for all: pytest -ra then reports them on one line


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


class VethPair(nstools.NetnsPair):
    """The library's lab pair: ``a`` (10.99.0.1, fd99::1) and ``b`` (.2, ::2) on veth0; the
    addresses are also class attributes here."""

    a4, b4, a6, b6 = "10.99.0.1", "10.99.0.2", "fd99::1", "fd99::2"


@pytest.fixture
def veth_pair() -> Iterator[VethPair]:
    require_privileged("netns")
    with VethPair() as pair:
        yield pair


def _task_count() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.fixture(autouse=True)
def no_leaked_native_threads() -> Iterator[None]:
    """Captures must join their C reader threads on close (Python's threading cannot see
    them, /proc/self/task can)."""
    import gc

    before = _task_count()
    yield
    after = _task_count()
    if after > before:  # an unreachable capture joins its threads when collected; collecting
        gc.collect()    # only then keeps the unprivileged suite fast (a collection is ~50 ms)
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
