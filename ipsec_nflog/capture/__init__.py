"""Live capture: the C core (``_csrc/``), its binding (``_native``, the only importer of the
compiled module), ``Capture``/``Batch`` (``live``), the configuration, statistics and the
errno-to-exception choke point. ``Capture`` and ``Batch`` load the compiled core on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ipsec_nflog.capture.config import CaptureConfig
from ipsec_nflog.capture.stats import CaptureStats, GroupStats

if TYPE_CHECKING:
    from ipsec_nflog.capture.live import Batch, Capture

__all__ = ["Batch", "Capture", "CaptureConfig", "CaptureStats", "GroupStats"]


def __getattr__(name: str) -> Any:
    if name in ("Capture", "Batch"):
        from ipsec_nflog.capture import live

        return getattr(live, name)
    raise AttributeError(f"module 'ipsec_nflog.capture' has no attribute {name!r}")
