"""Captured packets built from the rows the C core makes for a run of ring records (the
per-packet iterator's loop). Pure Python: the rows are bytes here, laid out as
codec.PACKET_ROW and codec.PREFIX_SPAN say."""

from __future__ import annotations

from collections.abc import Iterator

from ipsec_nflog.nflog.codec import (
    HOST,
    PACKET_ROW,
    PREFIX_SPAN,
    RECORD_HEADER,
    ROW_NO_HOOK,
)
from ipsec_nflog.nflog.packet import IfnameResolver, Packet, default_ifname

__all__ = ["LivePacket", "packets_from_rows"]

_HOST_LE = HOST == "<"
_HEADER = RECORD_HEADER.unpack_from
_BODY = RECORD_HEADER.size  # a record's body follows its header


def _record_body(run: bytes, at: int) -> bytes:
    """The body (``raw``) of the record whose header is at ``at`` in ``run``."""
    return run[at + _BODY : at + _BODY + _HEADER(run, at)[2]]


class LivePacket(Packet):
    """A captured packet: payload, prefix, hook, the timestamps and ``orig_len`` are plain
    attributes set when it was made. The packets of one run share one copy of its records
    (``_run``; this packet's record is at ``_at``), from which ``raw`` is sliced on first
    use; the other fields index ``raw`` then. Keeping one packet keeps its run's copy;
    ``copy.copy(pkt)`` is a :class:`Packet` that owns only its own bytes."""

    __slots__ = ("_at", "_raw", "_run", "hook", "payload", "prefix")
    _run: bytes
    _at: int
    _raw: bytes | None
    payload: bytes | None
    prefix: str | None
    hook: int | None
    _le = _HOST_LE  # a class attribute: the same for every live packet

    @property
    def raw(self) -> bytes:  # type: ignore[override]  # read-only here: the run is shared
        raw = self._raw
        if raw is None:
            raw = self._raw = _record_body(self._run, self._at)
        return raw

    def __reduce__(self) -> tuple[type[Packet], tuple[bytes, int, int, int]]:
        # copies and pickles hold this packet's bytes, not its run (nor the live resolver)
        return Packet, (self.raw, self.ts_sec, self.ts_usec, self.orig_len)


def packets_from_rows(run: bytes, rows: bytes, prefixes: bytes,
                      ifname_resolver: IfnameResolver | None) -> Iterator[Packet]:
    """The packets of a run of ring records, from the C core's rows for it (one
    ``struct nfc_packet_row`` per record) and its prefix table (``struct nfc_span``s). The
    loop of the per-packet iterator: one object and one slice per packet. A record the C
    core could not index gets the lazy, validating parser."""
    live = LivePacket.__new__
    resolver = ifname_resolver or default_ifname
    texts: list[str | None] = [None]
    texts += [run[s:e].decode("utf-8", "replace") for s, e in PREFIX_SPAN.iter_unpack(prefixes)]
    no_hook = ROW_NO_HOOK
    # one statement per store: a tuple assignment of four or more builds a tuple
    for at, sec, usec, olen, start, end, slow, prefix, hook in PACKET_ROW.iter_unpack(rows):
        if slow:
            yield Packet(_record_body(run, at), sec, usec, olen, HOST, resolver)
            continue
        p = live(LivePacket)
        p._run = run
        p._at = at
        p._raw = None
        p._ifname = resolver
        p.ts_sec = sec
        p.ts_usec = usec
        p.orig_len = olen
        p.payload = run[start:end] if start else None
        p.prefix = texts[prefix]
        p.hook = None if hook == no_hook else hook
        yield p
