"""The one module that owns the compiled core's ``ffi`` and ``lib``."""

from __future__ import annotations

from typing import Any

from ipsec_nflog._version import __version__
from ipsec_nflog.errors import LibraryMissingError

__all__ = ["ffi", "lib"]

try:
    from ipsec_nflog.capture import _nflog_cffi
except ImportError as exc:  # pragma: no cover - depends on the build
    msg = str(exc)
    if "libnetfilter_log" in msg or "libmnl" in msg or "libpcap" in msg:
        hint = ("install the system libraries: apt-get install libnetfilter-log1 libmnl0 "
                "libpcap0.8")
    else:
        hint = ("build it: pip install . (needs libnetfilter-log-dev libmnl-dev libpcap-dev "
                "pkg-config gcc)")
    raise LibraryMissingError(
        f"ipsec_nflog's compiled core is not available ({msg}); {hint}"
    ) from exc

ffi: Any = getattr(_nflog_cffi, "ffi")  # noqa: B009 - the module has no stubs
lib: Any = getattr(_nflog_cffi, "lib")  # noqa: B009

_built = ffi.string(lib.nfc_version()).decode()
if _built != __version__:  # pragma: no cover - a stale build
    raise LibraryMissingError(
        f"ipsec_nflog's compiled core is version {_built} but the package is {__version__}; "
        "rebuild it with pip install .",
    )
