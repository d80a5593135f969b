"""Pure-Python parser for NFLOG messages (the LINKTYPE_NFLOG record body).

A record body is a 4-byte ``nfgenmsg`` header (family, version, resource id = group in
big-endian) followed by TLVs. Per the LINKTYPE_NFLOG spec and the kernel, TLV length and
type are in the byte order of the host that captured the packet, while the values are in
network byte order. This module never imports the compiled core, so it works anywhere.
"""

from __future__ import annotations

import socket
import struct
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Union

__all__ = [
    "ATTR_NAMES",
    "NFULA",
    "Packet",
    "ParseError",
    "hook_name",
    "iter_records",
    "orig_len_from_payload",
    "parse_nflog",
]

Buffer = Union[bytes, bytearray, memoryview]


class NFULA:
    """NFLOG attribute types (``enum nfulnl_attr_type``)."""

    PACKET_HDR = 1
    MARK = 2
    TIMESTAMP = 3
    IFINDEX_INDEV = 4
    IFINDEX_OUTDEV = 5
    IFINDEX_PHYSINDEV = 6
    IFINDEX_PHYSOUTDEV = 7
    HWADDR = 8
    PAYLOAD = 9
    PREFIX = 10
    UID = 11
    SEQ = 12
    SEQ_GLOBAL = 13
    GID = 14
    HWTYPE = 15
    HWHEADER = 16
    HWLEN = 17
    CT = 18
    CT_INFO = 19
    VLAN = 20
    L2HDR = 21


ATTR_NAMES = {v: k for k, v in vars(NFULA).items() if not k.startswith("_")}

NLA_F_NESTED = 0x8000
NLA_F_NET_BYTEORDER = 0x4000
NLA_TYPE_MASK = ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) & 0xFFFF

_HOOKS = {
    socket.AF_INET: ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    socket.AF_INET6: ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    7: ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING", "BROUTING"),  # bridge
    3: ("IN", "OUT", "FORWARD"),  # ARP
    5: ("INGRESS", "EGRESS"),  # netdev
}


def hook_name(family: int, hook: int | None) -> str:
    """Name of a netfilter hook number in a protocol family ("?" when unknown)."""
    if hook is None:
        return "?"
    names = _HOOKS.get(family, ())
    return names[hook] if 0 <= hook < len(names) else str(hook)


class ParseError(ValueError):
    """A record body is not a well-formed NFLOG message."""


_HOST = "<" if sys.byteorder == "little" else ">"


def orig_len_from_payload(payload: Buffer, caplen: int) -> int:
    """The record's original length, given a (possibly snaplen-truncated) IP payload.

    NFLOG has no original-length attribute, so the number of bytes the snaplen cut off is
    taken from the IP header's own length field. ``caplen`` is the record body's length.
    """
    n = len(payload)
    if n >= 20 and payload[0] >> 4 == 4:
        total = (payload[2] << 8) | payload[3]
    elif n >= 40 and payload[0] >> 4 == 6:
        total = 40 + ((payload[4] << 8) | payload[5])
    else:
        return caplen
    return caplen + (total - n) if total > n else caplen


def _u32(v: bytes) -> int | None:
    return int.from_bytes(v[:4], "big") if len(v) >= 4 else None


def _u16(v: bytes) -> int | None:
    return int.from_bytes(v[:2], "big") if len(v) >= 2 else None


IfnameResolver = Callable[[int], str | None]


def _default_ifname(index: int) -> str | None:
    try:
        return socket.if_indextoname(index)
    except OSError:
        return None


class Packet:
    """One NFLOG message. Absent attributes are ``None``.

    Attributes are decoded from ``raw`` on first access. ``timestamp`` comes from the pcap
    record header; ``timestamp_synthesized`` is true when the kernel sent no
    NFULA_TIMESTAMP (OUTPUT/POSTROUTING packets) and the capture's receive time was used.
    """

    __slots__ = (
        "_ifname",
        "_index",
        "_ip",
        "_le",
        "orig_len",
        "raw",
        "ts_sec",
        "ts_usec",
    )

    def __init__(
        self,
        raw: bytes,
        ts_sec: int = 0,
        ts_usec: int = 0,
        orig_len: int | None = None,
        byteorder: str = _HOST,
        ifname_resolver: IfnameResolver | None = None,
    ) -> None:
        if len(raw) < 4:
            raise ParseError(f"NFLOG record body is {len(raw)} bytes, shorter than nfgenmsg")
        self.raw = raw
        self.ts_sec = ts_sec
        self.ts_usec = ts_usec
        self.orig_len = len(raw) if orig_len is None else orig_len
        self._index: Sequence[int] | None = None
        self._le = byteorder == "<"
        self._ifname = ifname_resolver or _default_ifname
        self._ip: Any = None

    @classmethod
    def _indexed(cls, raw: bytes, index: Sequence[int],
                 ifname_resolver: IfnameResolver | None) -> Packet:
        """A live packet whose attribute offsets the C core already found (``index`` is a
        ``struct nfc_index`` as a tuple: body_off, caplen, ts_sec, ts_usec, orig_len, then
        one offset per attribute type)."""
        p = cls.__new__(cls)
        p.raw = raw
        p.ts_sec = index[2]
        p.ts_usec = index[3]
        p.orig_len = index[4]
        p._index = index if not index[5] & _IDX_MALFORMED else None
        p._le = _HOST == "<"
        p._ifname = ifname_resolver or _default_ifname
        p._ip = None
        return p

    # -- header ----------------------------------------------------------------------
    @property
    def family(self) -> int:
        return self.raw[0]

    @property
    def version(self) -> int:
        return self.raw[1]

    @property
    def group(self) -> int:
        return (self.raw[2] << 8) | self.raw[3]

    # -- attributes ------------------------------------------------------------------
    def _get(self, t: int) -> bytes | None:
        index = self._index
        if index is None:
            index = self._index = _build_index(self.raw, self._le)
        off = index[_IDX_BASE + t]
        if not off:
            return None
        raw = self.raw
        n = raw[off - 4] | raw[off - 3] << 8 if self._le else raw[off - 4] << 8 | raw[off - 3]
        return raw[off : off + n - 4]

    @property
    def attrs(self) -> dict[int, bytes]:
        """Every attribute value by type, unknown ones included (a repeated type: last)."""
        return _parse_tlvs(self.raw, "<" if self._le else ">")

    def validate(self) -> Packet:
        """Check every TLV now; raises ParseError."""
        self._index = _build_index(self.raw, self._le)
        return self

    @property
    def hw_protocol(self) -> int | None:
        v = self._get(NFULA.PACKET_HDR)
        return _u16(v) if v is not None else None

    @property
    def hook(self) -> int | None:
        v = self._get(NFULA.PACKET_HDR)
        return v[2] if v is not None and len(v) >= 3 else None

    @property
    def hook_name(self) -> str:
        return hook_name(self.family, self.hook)

    @property
    def mark(self) -> int | None:
        v = self._get(NFULA.MARK)
        return _u32(v) if v is not None else None

    @property
    def kernel_timestamp(self) -> float | None:
        """NFULA_TIMESTAMP in seconds, or ``None`` when the kernel sent none."""
        v = self._get(NFULA.TIMESTAMP)
        if v is None or len(v) < 16:
            return None
        sec, usec = struct.unpack_from(">QQ", v)
        return float(sec + usec / 1e6)

    @property
    def timestamp(self) -> float:
        return self.ts_sec + self.ts_usec / 1e6

    @property
    def timestamp_synthesized(self) -> bool:
        return self._get(NFULA.TIMESTAMP) is None

    def _ifindex(self, t: int) -> int | None:
        v = self._get(t)
        return _u32(v) if v is not None else None

    @property
    def indev(self) -> int | None:
        return self._ifindex(NFULA.IFINDEX_INDEV)

    @property
    def outdev(self) -> int | None:
        return self._ifindex(NFULA.IFINDEX_OUTDEV)

    @property
    def physindev(self) -> int | None:
        return self._ifindex(NFULA.IFINDEX_PHYSINDEV)

    @property
    def physoutdev(self) -> int | None:
        return self._ifindex(NFULA.IFINDEX_PHYSOUTDEV)

    def _name(self, index: int | None) -> str | None:
        return None if index is None else self._ifname(index)

    @property
    def indev_name(self) -> str | None:
        return self._name(self.indev)

    @property
    def outdev_name(self) -> str | None:
        return self._name(self.outdev)

    @property
    def physindev_name(self) -> str | None:
        return self._name(self.physindev)

    @property
    def physoutdev_name(self) -> str | None:
        return self._name(self.physoutdev)

    @property
    def hwaddr(self) -> bytes | None:
        v = self._get(NFULA.HWADDR)
        if v is None or len(v) < 4:
            return None
        n = min((v[0] << 8) | v[1], len(v) - 4, 8)
        return bytes(v[4 : 4 + n])

    @property
    def hwtype(self) -> int | None:
        v = self._get(NFULA.HWTYPE)
        return _u16(v) if v is not None else None

    @property
    def hwheader(self) -> bytes | None:
        v = self._get(NFULA.HWHEADER)
        return None if v is None else bytes(v)

    @property
    def hwlen(self) -> int | None:
        v = self._get(NFULA.HWLEN)
        return _u16(v) if v is not None else None

    @property
    def payload(self) -> bytes | None:
        v = self._get(NFULA.PAYLOAD)
        return None if v is None else bytes(v)

    @property
    def prefix(self) -> str | None:
        v = self._get(NFULA.PREFIX)
        if v is None:
            return None
        return bytes(v).split(b"\0", 1)[0].decode("utf-8", "replace")

    @property
    def uid(self) -> int | None:
        v = self._get(NFULA.UID)
        return _u32(v) if v is not None else None

    @property
    def gid(self) -> int | None:
        v = self._get(NFULA.GID)
        return _u32(v) if v is not None else None

    @property
    def seq(self) -> int | None:
        v = self._get(NFULA.SEQ)
        return _u32(v) if v is not None else None

    @property
    def seq_global(self) -> int | None:
        v = self._get(NFULA.SEQ_GLOBAL)
        return _u32(v) if v is not None else None

    @property
    def ct(self) -> bytes | None:
        """The nested conntrack attribute (NFULA_CT), undecoded."""
        v = self._get(NFULA.CT)
        return None if v is None else bytes(v)

    @property
    def ct_info(self) -> int | None:
        v = self._get(NFULA.CT_INFO)
        return _u32(v) if v is not None else None

    @property
    def vlan(self) -> tuple[int | None, int | None] | None:
        """(proto, tci) from the nested NFULA_VLAN attribute."""
        v = self._get(NFULA.VLAN)
        if v is None:
            return None
        inner = _parse_tlvs(b"\0\0\0\0" + bytes(v), "<" if self._le else ">")
        p, t = inner.get(1), inner.get(2)
        return (_u16(p) if p is not None else None, _u16(t) if t is not None else None)

    @property
    def l2hdr(self) -> bytes | None:
        v = self._get(NFULA.L2HDR)
        return None if v is None else bytes(v)

    @property
    def unknown(self) -> dict[int, bytes]:
        """Attributes this parser does not know, kept by type."""
        index = self._index
        if index is not None and not index[_IDX_BASE] & _IDX_UNKNOWN:
            return {}
        return {t: bytes(v) for t, v in self.attrs.items() if t not in ATTR_NAMES}

    @property
    def ip(self) -> Any:
        """The payload decoded by dpkt (``dpkt.ip.IP`` or ``dpkt.ip6.IP6``), else ``None``."""
        if self._ip is None:
            self._ip = decode_ip(self.payload)
        return self._ip

    def as_dict(self) -> dict[str, Any]:
        """Every field, for comparisons and JSON output."""
        return {
            "group": self.group,
            "family": self.family,
            "hw_protocol": self.hw_protocol,
            "hook": self.hook,
            "mark": self.mark,
            "timestamp": self.timestamp,
            "timestamp_synthesized": self.timestamp_synthesized,
            "indev": self.indev,
            "outdev": self.outdev,
            "physindev": self.physindev,
            "physoutdev": self.physoutdev,
            "hwaddr": self.hwaddr,
            "hwtype": self.hwtype,
            "hwheader": self.hwheader,
            "payload": self.payload,
            "prefix": self.prefix,
            "uid": self.uid,
            "gid": self.gid,
            "seq": self.seq,
            "seq_global": self.seq_global,
            "unknown": self.unknown,
        }

    def __repr__(self) -> str:
        plen = len(self.payload or b"")
        return (
            f"<Packet group={self.group} hook={self.hook_name} prefix={self.prefix!r} "
            f"indev={self.indev} outdev={self.outdev} payload={plen}B>"
        )


_IDX_BASE = 5  # struct nfc_index: 5 header words, then one slot per attribute type
_IDX_SLOTS = 22
_IDX_UNKNOWN = 1
_IDX_MALFORMED = 2


def _build_index(raw: Buffer, little: bool) -> list[int]:
    """The pure-Python twin of the C core's nfc_index_records for one body: value offsets
    by attribute type (0: absent), flags in slot 0. Raises ParseError on bad TLVs."""
    index = [0] * (_IDX_BASE + _IDX_SLOTS)
    off, end = 4, len(raw)
    while off + 4 <= end:
        if little:
            length, atype = raw[off] | raw[off + 1] << 8, raw[off + 2] | raw[off + 3] << 8
        else:
            length, atype = raw[off] << 8 | raw[off + 1], raw[off + 2] << 8 | raw[off + 3]
        if length < 4 or off + length > end:
            raise ParseError(f"NFLOG attribute at offset {off} has bad length {length}")
        atype &= NLA_TYPE_MASK
        if 0 < atype < _IDX_SLOTS:
            index[_IDX_BASE + atype] = off + 4
        else:
            index[_IDX_BASE] |= _IDX_UNKNOWN
        off += (length + 3) & ~3
    if off < end and any(raw[off:end]):
        raise ParseError(f"{end - off} trailing bytes after NFLOG attributes at offset {off}")
    return index


def _parse_tlvs(raw: Buffer, byteorder: str) -> dict[int, Any]:
    """TLVs after the nfgenmsg header: {type: value}; raises ParseError on bad lengths."""
    attrs: dict[int, Any] = {}
    hdr = struct.Struct(byteorder + "HH")
    off, end = 4, len(raw)
    while off + 4 <= end:
        length, atype = hdr.unpack_from(raw, off)
        if length < 4 or off + length > end:
            raise ParseError(f"NFLOG attribute at offset {off} has bad length {length}")
        attrs[atype & NLA_TYPE_MASK] = raw[off + 4 : off + length]
        off += (length + 3) & ~3
    if off < end and any(raw[off:end]):
        raise ParseError(f"{end - off} trailing bytes after NFLOG attributes at offset {off}")
    return attrs


def parse_nflog(
    body: Buffer,
    ts_sec: int = 0,
    ts_usec: int = 0,
    orig_len: int | None = None,
    byteorder: str = _HOST,
    ifname_resolver: IfnameResolver | None = None,
) -> Packet:
    """Parse one LINKTYPE_NFLOG record body, validating every TLV eagerly."""
    return Packet(bytes(body), ts_sec, ts_usec, orig_len, byteorder, ifname_resolver).validate()


_REC = struct.Struct(_HOST + "IIII")


def iter_records(
    buf: Buffer, ifname_resolver: IfnameResolver | None = None
) -> Iterator[Packet]:
    """Packets from consecutive host-order pcap records (16-byte header + NFLOG body),
    as found in the capture ring. Attributes are decoded lazily."""
    mv = memoryview(buf)
    off, end = 0, len(mv)
    unpack = _REC.unpack_from
    while off + 16 <= end:
        sec, usec, caplen, olen = unpack(mv, off)
        start = off + 16
        off = start + caplen
        if off > end:
            raise ParseError(f"record at offset {start - 16} runs past the buffer")
        yield Packet(mv[start:off].tobytes(), sec, usec, olen, _HOST, ifname_resolver)


def decode_ip(payload: bytes | None) -> Any:
    """dpkt IPv4/IPv6 object for an IP payload; None for anything else or bad bytes."""
    if not payload:
        return None
    import dpkt  # local: keeps `import ipsec_nflog` light

    try:
        v = payload[0] >> 4
        if v == 4:
            return dpkt.ip.IP(payload)
        if v == 6:
            return dpkt.ip6.IP6(payload)
    except (dpkt.UnpackError, struct.error, ValueError, IndexError):
        return None
    return None
