"""Embedding ipsec_nflog in test harnesses (pytest, robot, behave, plain scripts).

- :func:`capture` / :func:`acapture`: a capture that is listening when you get it (group
  bound, rules installed), with ``expect(...)`` / ``expect_none(...)`` that never hang and
  fail with what *was* seen (:class:`ExpectationFailed`, an ``AssertionError``), ``packets``
  and ``save(path)``; removed and closed however the block ends (:mod:`.session`).
- :class:`NetnsPair`: two throwaway namespaces joined by veth, IPv4 and IPv6 (:mod:`.lab`).
- :class:`StrongswanPair`: two real charon peers with kernel-libipsec in namespaces, an IKEv2
  tunnel up, ``ping()``, ``keys()`` (:mod:`.strongswan`).
- The pytest plugin (:mod:`.pytest_plugin`, loaded automatically once the package is
  installed; ``-p no:ipsec_nflog`` turns it off): fixtures ``nflog_capture``, ``netns_pair``,
  ``strongswan_pair``, and the capture of a failed test kept as a pcap.

Names load on first use: importing this package costs nothing and needs no root.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ipsec_nflog._lazy import lazy_names

if TYPE_CHECKING:
    from ipsec_nflog.testing.charon import StrongswanUnavailable
    from ipsec_nflog.testing.expect import ExpectationFailed
    from ipsec_nflog.testing.lab import NetnsPair
    from ipsec_nflog.testing.requirements import privilege_problem
    from ipsec_nflog.testing.session import (
        AsyncNflogCapture,
        NflogCapture,
        acapture,
        capture,
        free_group,
    )
    from ipsec_nflog.testing.strongswan import StrongswanPair

_HOMES = {
    "AsyncNflogCapture": "ipsec_nflog.testing.session",
    "ExpectationFailed": "ipsec_nflog.testing.expect",
    "NetnsPair": "ipsec_nflog.testing.lab",
    "NflogCapture": "ipsec_nflog.testing.session",
    "StrongswanPair": "ipsec_nflog.testing.strongswan",
    "StrongswanUnavailable": "ipsec_nflog.testing.charon",
    "acapture": "ipsec_nflog.testing.session",
    "capture": "ipsec_nflog.testing.session",
    "free_group": "ipsec_nflog.testing.session",
    "privilege_problem": "ipsec_nflog.testing.requirements",
}

__all__ = [
    "AsyncNflogCapture",
    "ExpectationFailed",
    "NetnsPair",
    "NflogCapture",
    "StrongswanPair",
    "StrongswanUnavailable",
    "acapture",
    "capture",
    "free_group",
    "privilege_problem",
]

__getattr__, __dir__ = lazy_names(__name__, _HOMES)
