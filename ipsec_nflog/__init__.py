"""ipsec_nflog: native Linux NFLOG capture for IPsec debugging.

``import ipsec_nflog`` works without root and without the compiled core; ``Capture`` needs
the core (built by ``pip install .``) and CAP_NET_ADMIN. The layers, each a package:
``capture`` (the C core and its binding), ``nflog`` (the record format), ``files``,
``ipsec`` (keys, decryption), ``rules``, ``system`` (namespaces, /proc, signals), ``cli``.

Names load on first use, so the ``ipsec-nflog`` command starts (and takes its signals)
before anything heavy is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ipsec_nflog._lazy import lazy_names
from ipsec_nflog._version import __version__

if TYPE_CHECKING:
    from ipsec_nflog.capture.config import CaptureConfig
    from ipsec_nflog.capture.live import Batch, Capture
    from ipsec_nflog.capture.stats import CaptureStats, GroupStats
    from ipsec_nflog.errors import (
        GroupBusyError,
        LibraryMissingError,
        NflogError,
        NflogPermissionError,
    )
    from ipsec_nflog.nflog.packet import Packet, ParseError, iter_records, parse_nflog

_HOMES = {
    "Batch": "ipsec_nflog.capture.live",
    "Capture": "ipsec_nflog.capture.live",
    "CaptureConfig": "ipsec_nflog.capture.config",
    "CaptureStats": "ipsec_nflog.capture.stats",
    "GroupStats": "ipsec_nflog.capture.stats",
    "GroupBusyError": "ipsec_nflog.errors",
    "LibraryMissingError": "ipsec_nflog.errors",
    "NflogError": "ipsec_nflog.errors",
    "NflogPermissionError": "ipsec_nflog.errors",
    "Packet": "ipsec_nflog.nflog.packet",
    "ParseError": "ipsec_nflog.nflog.packet",
    "iter_records": "ipsec_nflog.nflog.packet",
    "parse_nflog": "ipsec_nflog.nflog.packet",
}

__all__ = [
    "Batch",
    "Capture",
    "CaptureConfig",
    "CaptureStats",
    "GroupBusyError",
    "GroupStats",
    "LibraryMissingError",
    "NflogError",
    "NflogPermissionError",
    "Packet",
    "ParseError",
    "__version__",
    "iter_records",
    "parse_nflog",
]

__getattr__, __dir__ = lazy_names(__name__, _HOMES)
