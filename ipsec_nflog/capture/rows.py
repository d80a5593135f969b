"""The C core's rows for the per-packet iterator (``nfc_packet_rows``): one call per run of
ring records, so Python never walks TLVs; ``nflog.live_packet`` makes the packets from them."""

from __future__ import annotations

from ipsec_nflog.nflog.codec import PACKET_ROW, PREFIX_SPAN, ROW_PREFIXES

__all__ = ["packet_rows"]


def packet_rows(records: bytes, count: int) -> tuple[bytes, bytes]:
    """(one ``struct nfc_packet_row`` per record, the run's prefix table of ``struct
    nfc_span``s) for the first ``count`` host-order pcap records of ``records``."""
    from ipsec_nflog.capture._native import ffi, lib

    rows = ffi.new("struct nfc_packet_row[]", count)
    spans = ffi.new("struct nfc_span[]", ROW_PREFIXES)
    nspans = ffi.new("uint32_t *")
    n = lib.nfc_packet_rows(ffi.from_buffer(records), len(records), count, rows, spans, nspans)
    return (ffi.buffer(rows, n * PACKET_ROW.size)[:],
            ffi.buffer(spans, nspans[0] * PREFIX_SPAN.size)[:])
