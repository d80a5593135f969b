"""Captured packets built from the C core's index of a run of ring records (the per-packet
iterator's loop). Pure Python: the index is bytes here, laid out as codec.INDEX_ROW says."""

from __future__ import annotations

from collections.abc import Iterator

from ipsec_nflog.nflog.codec import HOST, INDEX_HOT_ROW, INDEX_MALFORMED, INDEX_NO_HOOK
from ipsec_nflog.nflog.packet import IfnameResolver, Packet, default_ifname

__all__ = ["LivePacket", "packets_from_index"]

_HOST_LE = HOST == "<"


class LivePacket(Packet):
    """A captured packet whose record the C core indexed: payload, prefix and hook were
    taken from the index when it was made (plain attributes, no decoding on access). The
    other fields index ``raw`` on first use, and ``_index`` and ``_ip`` stay unset until
    then: every store saved here is saved once per packet."""

    __slots__ = ("hook", "payload", "prefix")
    payload: bytes | None
    prefix: str | None
    hook: int | None
    _le = _HOST_LE  # a class attribute: the same for every live packet


_PREFIXES: dict[bytes, str] = {}  # decoded NFLOG prefixes: a capture has only a few
_PREFIXES_MAX = 1024


def packets_from_index(run: bytes, index: bytes, ifname_resolver: IfnameResolver | None
                       ) -> Iterator[Packet]:
    """The live packets of a run of ring records whose attributes the C core already
    found: ``index`` holds one ``struct nfc_index`` per record (codec.INDEX_ROW). The loop
    of the per-packet iterator: one object per packet, with payload, prefix and hook
    already in place (a record C could not index gets the lazy, validating parser)."""
    live, lazy = LivePacket.__new__, Packet.__new__
    resolver = ifname_resolver or default_ifname
    prefixes, no_hook = _PREFIXES, INDEX_NO_HOOK
    for start, caplen, sec, usec, olen, flags, poff, xoff, plen, xlen, hook in (
            INDEX_HOT_ROW.iter_unpack(index)):
        raw = run[start : start + caplen]
        if flags & INDEX_MALFORMED:
            q = lazy(Packet)
            q.raw, q.ts_sec, q.ts_usec, q.orig_len = raw, sec, usec, olen
            q._index, q._le, q._ifname, q._ip = None, _HOST_LE, resolver, None
            yield q
            continue
        p = live(LivePacket)
        p.raw, p.ts_sec, p.ts_usec, p.orig_len = raw, sec, usec, olen
        p._ifname = resolver
        p.payload = raw[poff : poff + plen] if poff else None
        if xoff:
            name = raw[xoff : xoff + xlen]
            text = prefixes.get(name)
            if text is None:
                if len(prefixes) >= _PREFIXES_MAX:
                    prefixes.clear()
                text = prefixes[name] = name.decode("utf-8", "replace")
            p.prefix = text
        else:
            p.prefix = None
        p.hook = None if hook == no_hook else hook
        yield p
