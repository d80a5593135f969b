"""tcpdump filter expressions compiled by libpcap (through the C core), for live captures
(the reader thread runs them before a record takes ring space) and for files (``matches``).

An NFLOG record is filtered on its IP packet (NFULA_PAYLOAD) as LINKTYPE_RAW, so ``ip``,
``ip6``, ``host``, ``port``, ``esp``, ``udp[8:4] = 0``, ``greater`` work for IPv4 and IPv6.
libpcap's rules for short packets hold: a load beyond the captured bytes (the snaplen cut
them, or the message has no payload: an empty packet) rejects the packet; ``len``,
``greater`` and ``less`` see the packet's original length from its IP header.
"""

from __future__ import annotations

from typing import Any

from ipsec_nflog.capture.select import check_expression

__all__ = ["LINKTYPE_RAW", "Filter", "FilterError"]

LINKTYPE_RAW = 101  # what an NFLOG payload is: a bare IPv4 or IPv6 packet


class FilterError(ValueError):
    """The expression does not compile, or can never match (libpcap's message)."""


class Filter:
    """A compiled expression. ``Filter("esp or udp port 4500")``; for other link types
    (Ethernet files) pass ``linktype``."""

    def __init__(self, expression: str, linktype: int = LINKTYPE_RAW,
                 snaplen: int = 262144) -> None:
        text = check_expression(expression)
        from ipsec_nflog.capture._native import ffi, lib

        self._ffi, self._lib = ffi, lib
        self.expression = text
        self.linktype = linktype
        out = ffi.new("struct nfc_filter **")
        err = ffi.new("char[]", 512)
        rc = lib.nfc_filter_compile(text.encode(), linktype, snaplen, out, err, 512)
        if rc < 0:
            why = ffi.string(err).decode(errors="replace") or "out of memory"
            raise FilterError(f"invalid filter expression {text!r}: {why}")
        self._f: Any = out[0]
        if not lib.nfc_filter_can_match(self._f):
            self.close()
            raise FilterError(f"filter expression {text!r} can never match a packet")

    @property
    def instructions(self) -> int:
        return int(self._lib.nfc_filter_length(self._f))

    @property
    def cdata(self) -> Any:
        """The compiled program for the C core; valid while this object lives."""
        return self._f

    def matches(self, packet: bytes, wirelen: int | None = None) -> bool:
        """Would the live capture keep this packet (its IP packet for NFLOG, the frame for
        other link types)? ``wirelen`` is its original length when it was cut."""
        n = len(packet)
        return bool(self._lib.nfc_filter_run(self._f, packet, max(n, wirelen or 0), n))

    def close(self) -> None:
        f, self._f = getattr(self, "_f", None), None
        if f is not None:
            self._lib.nfc_filter_free(f)

    def __del__(self) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Filter {self.expression!r}>"
