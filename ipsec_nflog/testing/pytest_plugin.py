"""The pytest plugin: registered as ``ipsec_nflog`` through the ``pytest11`` entry point, so
installing the package is enough; ``-p no:ipsec_nflog`` turns it off.

Fixtures (each skips with the reason where it cannot run, and fails instead under
``IPSEC_NFLOG_REQUIRE_PRIVILEGED=1``):

- ``nflog_capture``: a factory, ``cap = nflog_capture(rules="all", netns=..., family=...,
  filter="esp or udp port 4500", group=None)``, returning a listening
  :class:`~ipsec_nflog.testing.session.NflogCapture` (``expect``, ``expect_none``,
  ``packets``, ``save``). Everything it made is stopped, unruled and closed at teardown.
- ``netns_pair``: a :class:`~ipsec_nflog.testing.lab.NetnsPair`, deleted at teardown.
- ``strongswan_pair``: a :class:`~ipsec_nflog.testing.strongswan.StrongswanPair` with the
  tunnel up (skipped when strongSwan is not installed).

When a test that made captures fails, each capture is written as a pcap under the test's
``tmp_path`` (or ``--nflog-keep DIR``) and the path goes into the failure report; a failed
test's strongSwan logs go there too. This module imports nothing heavy: it is loaded into
every pytest run of a machine where the package is installed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pytest

from ipsec_nflog.testing.requirements import require_privileged, unavailable

if TYPE_CHECKING:
    from pluggy import Result

    from ipsec_nflog.testing.lab import NetnsPair
    from ipsec_nflog.testing.session import NflogCapture, Presets
    from ipsec_nflog.testing.strongswan import StrongswanPair

__all__ = ["NflogCaptureFactory", "netns_pair", "nflog_capture", "strongswan_pair"]

KEEP_OPTION = "--nflog-keep"
_captures = pytest.StashKey["list[NflogCapture]"]()
_evidence_dir = pytest.StashKey[Path]()
_swan_pairs = pytest.StashKey["list[StrongswanPair]"]()


class NflogCaptureFactory(Protocol):
    """The type of the ``nflog_capture`` fixture, for annotating tests."""

    def __call__(self, rules: Presets = None, *, group: int | None = None,
                 netns: str | None = None, family: str = "both", filter: str | None = None,
                 **rule_options: Any) -> NflogCapture: ...


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ipsec_nflog", "ipsec_nflog NFLOG captures")
    group.addoption(KEEP_OPTION, metavar="DIR", default=None,
                    help="write the NFLOG captures of failed tests into DIR (default: the "
                         "test's tmp_path)")


@pytest.fixture
def nflog_capture(request: pytest.FixtureRequest,
                  tmp_path: Path) -> Iterator[NflogCaptureFactory]:
    """``nflog_capture(rules=..., netns=..., filter=..., group=None, **rule_options)``: a
    capture that is listening when returned; all are closed at teardown."""
    require_privileged("nflog_capture")
    from ipsec_nflog.testing.session import NflogCapture

    made: list[NflogCapture] = []
    request.node.stash[_captures] = made
    request.node.stash[_evidence_dir] = tmp_path

    def make(rules: Presets = None, *, group: int | None = None, netns: str | None = None,
             family: str = "both", filter: str | None = None,
             **rule_options: Any) -> NflogCapture:
        cap = NflogCapture(rules, group=group, netns=netns, family=family, filter=filter,
                           **rule_options)
        made.append(cap)
        return cap.open()

    yield make
    errors: list[Exception] = []
    for cap in reversed(made):
        try:
            cap.close()
        except Exception as e:
            errors.append(e)
    if errors:
        raise errors[0]


@pytest.fixture
def netns_pair() -> Iterator[NetnsPair]:
    """Two fresh namespaces joined by veth0: ``.a``/``.b``, ``.a4``/``.b4`` (10.99.0.1/.2),
    ``.a6``/``.b6`` (fd99::1/::2), ``.run(ns, argv)``, ``.socket(ns, ...)``."""
    require_privileged("netns_pair")
    from ipsec_nflog.testing.lab import NetnsPair

    with NetnsPair() as pair:
        yield pair


@pytest.fixture
def strongswan_pair(request: pytest.FixtureRequest) -> Iterator[StrongswanPair]:
    """Two charon peers (kernel-libipsec) in fresh namespaces, the IKEv2 tunnel up."""
    require_privileged("strongswan_pair")
    from ipsec_nflog.testing.charon import check_installed
    from ipsec_nflog.testing.strongswan import StrongswanPair

    problem = check_installed(libipsec=True)
    if problem:
        unavailable(f"strongswan_pair: {problem}")
    with StrongswanPair() as pair:
        request.node.stash.setdefault(_swan_pairs, []).append(pair)
        yield pair


# -- evidence for failed tests -----------------------------------------------------------------

def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._")[:100] or "test"


def _unused(directory: Path, stem: str) -> Path:
    path = directory / f"{stem}.pcap"
    n = 1
    while os.path.lexists(path):
        n += 1
        path = directory / f"{stem}-{n}.pcap"
    return path


def _save_captures(item: pytest.Item, captures: list[NflogCapture]) -> str:
    keep = item.config.getoption(KEEP_OPTION)
    if keep:
        directory = Path(keep)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    else:
        directory = item.stash[_evidence_dir]
    lines = []
    for n, cap in enumerate(captures, 1):
        stem = _safe_name(f"{item.name}-{n}-nflog{cap.group}")
        try:
            path = cap.save(_unused(directory, stem))
            stats = cap.stats()
            drops = stats.drop_summary() if stats is not None else "never opened"
            lines.append(f"{cap.where}: {len(cap.packets)} packet(s), {drops}\n"
                         f"  saved {path} (open it with tcpdump -n -r, or Wireshark)")
        except Exception as e:  # the report must still be made
            lines.append(f"{cap.where}: could not save the capture: {e}")
    return "\n".join(lines)


def _attach(report: pytest.TestReport, title: str, text: str) -> None:
    longrepr = report.longrepr
    add = getattr(longrepr, "addsection", None)
    if callable(add):
        add(title, text)  # printed under the traceback, kept in junit-xml
    else:
        report.sections.append((title, text))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, Result[
                                  pytest.TestReport], None]:
    outcome = yield
    report = outcome.get_result()
    if not report.failed or report.when == "teardown":
        return
    captures = item.stash.get(_captures, None)
    if captures:
        _attach(report, "nflog captures", _save_captures(item, captures))
    pairs = item.stash.get(_swan_pairs, None)
    for pair in pairs or ():
        _attach(report, "strongSwan logs", pair.diagnostics())
