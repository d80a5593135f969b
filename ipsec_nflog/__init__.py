"""ipsec_nflog: native Linux NFLOG capture for IPsec debugging.

``import ipsec_nflog`` works without root and without the compiled core; ``Capture`` needs
the core (built by ``pip install .``) and CAP_NET_ADMIN.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .config import CaptureConfig
from .errors import GroupBusyError, LibraryMissingError, NflogError, NflogPermissionError
from .packet import Packet, ParseError, iter_records, parse_nflog
from .stats import CaptureStats, GroupStats

if TYPE_CHECKING:
    from .capture import Batch, Capture

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


def __getattr__(name: str) -> Any:
    # capture.py is light, but keep the import lazy so the pure modules load first.
    if name in ("Capture", "Batch"):
        from . import capture

        return getattr(capture, name)
    raise AttributeError(f"module 'ipsec_nflog' has no attribute {name!r}")
