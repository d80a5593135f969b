"""Pure-Python parser for NFLOG messages (the LINKTYPE_NFLOG record body).

A record body is a 4-byte ``nfgenmsg`` header (family, version, resource id = group in
big-endian) followed by TLVs. Per the LINKTYPE_NFLOG spec and the kernel, TLV length and
type are in the byte order of the host that captured the packet, while the values are in
network byte order (the format and its one TLV walker: :mod:`ipsec_nflog.nflog.codec`). This
module never imports the compiled core, so it works anywhere.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, TypeVar, overload

from ipsec_nflog.nflog.codec import (
    ATTR_NAMES,
    HOST,
    INDEX_SLOTS,
    INDEX_UNKNOWN,
    NFULA,
    Buffer,
    ParseError,
    RecordError,
    walk_records,
    walk_tlvs,
)

__all__ = [
    "AS_DICT_FIELDS",
    "ATTR_NAMES",
    "NFULA",
    "Packet",
    "PacketBase",
    "ParseError",
    "hook_name",
    "iter_records",
    "orig_len_from_payload",
    "parse_nflog",
]

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
T = TypeVar("T")


class _Attr(Generic[T]):
    """A read-only :class:`Packet` field decoded from one NFLOG attribute (``None`` when
    the attribute is absent): the fields are declared as a table, one line each."""

    def __init__(self, attr_type: int, decode: Callable[[bytes], T | None],
                 doc: str | None = None) -> None:
        self._type = attr_type
        self._decode = decode
        self.__doc__ = doc  # what help(Packet) shows for the field

    @overload
    def __get__(self, pkt: None, owner: type) -> _Attr[T]: ...
    @overload
    def __get__(self, pkt: Packet, owner: type) -> T | None: ...

    def __get__(self, pkt: Packet | None, owner: type) -> _Attr[T] | T | None:
        if pkt is None:
            return self
        v = pkt._get(self._type)
        return None if v is None else self._decode(v)


class _DeviceName:
    """The name of an interface index field (``indev_name`` of ``indev``), from the packet's
    resolver: the capture's namespace live, the file's own map when read."""

    __slots__ = ("_index",)

    def __init__(self, index: _Attr[int]) -> None:
        self._index = index

    @overload
    def __get__(self, pkt: None, owner: type) -> _DeviceName: ...
    @overload
    def __get__(self, pkt: Packet, owner: type) -> str | None: ...

    def __get__(self, pkt: Packet | None, owner: type) -> _DeviceName | str | None:
        if pkt is None:
            return self
        index = self._index.__get__(pkt, owner)
        return None if index is None else pkt._ifname(index)


def _hwaddr(v: bytes) -> bytes | None:
    if len(v) < 4:
        return None
    n = min((v[0] << 8) | v[1], len(v) - 4, 8)
    return bytes(v[4 : 4 + n])


def default_ifname(index: int) -> str | None:
    try:
        return socket.if_indextoname(index)
    except OSError:
        return None


# slots of the index (one per attribute type), as plain ints for the hot properties
_SLOT_PACKET_HDR = int(NFULA.PACKET_HDR)
_SLOT_PAYLOAD = int(NFULA.PAYLOAD)
_SLOT_PREFIX = int(NFULA.PREFIX)

AS_DICT_FIELDS = (
    "group family hw_protocol hook mark timestamp timestamp_synthesized indev outdev physindev "
    "physoutdev hwaddr hwtype hwheader payload prefix uid gid seq seq_global unknown"
).split()


class PacketBase:
    """What every packet has, captured or read from a file: ``ip``, its payload decoded by
    dpkt once, and ``as_dict``."""

    __slots__ = ("_ip",)
    _ip: Any

    @property
    def payload(self) -> bytes | None:
        raise NotImplementedError

    @property
    def ip(self) -> Any:
        """The payload decoded by dpkt (``dpkt.ip.IP`` or ``dpkt.ip6.IP6``), else ``None``."""
        try:
            ip = self._ip
        except AttributeError:  # a live packet leaves it unset until first use
            ip = None
        if ip is None:
            ip = self._ip = decode_ip(self.payload)
        return ip

    def as_dict(self) -> dict[str, Any]:
        """Every field (:data:`AS_DICT_FIELDS`), for comparisons and JSON output."""
        return {name: getattr(self, name) for name in AS_DICT_FIELDS}


class Packet(PacketBase):
    """One NFLOG message. Absent attributes are ``None``.

    Attributes are decoded from ``raw`` on first access. ``timestamp`` comes from the pcap
    record header; ``timestamp_synthesized`` is true when the kernel sent no
    NFULA_TIMESTAMP (OUTPUT/POSTROUTING packets) and the capture's receive time was used.
    """

    __slots__ = (
        "_ifname",
        "_index",
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
        byteorder: str = HOST,
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
        self._ifname = ifname_resolver or default_ifname
        self._ip: Any = None

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
    @property
    def _order(self) -> str:
        return "<" if self._le else ">"

    def _full_index(self) -> Sequence[int]:
        """Value offsets by attribute type, flags in slot 0 (codec.INDEX_SLOTS); indexes ``raw``
        (validating every TLV) on first use."""
        try:
            index = self._index
        except AttributeError:  # a live packet leaves it unset until first use
            index = None
        if index is None:
            index = self._index = _build_index(self.raw, self._order)
        return index

    def _offset(self, t: int) -> int:
        """Where attribute ``t``'s value starts in ``raw`` (0: absent)."""
        return self._full_index()[t]

    def _length(self, off: int) -> int:
        """nla_len of the attribute whose value starts at ``off`` (header included)."""
        raw = self.raw
        return raw[off - 4] | raw[off - 3] << 8 if self._le else raw[off - 4] << 8 | raw[off - 3]

    def _get(self, t: int) -> bytes | None:
        off = self._offset(t)
        return self.raw[off : off + self._length(off) - 4] if off else None

    @property
    def attrs(self) -> dict[int, bytes]:
        """Every attribute value by type, unknown ones included (a repeated type: last)."""
        return {t: self.raw[v : v + n] for t, v, n in walk_tlvs(self.raw, self._order)}

    def validate(self) -> Packet:
        """Check every TLV now; raises ParseError."""
        self._index = _build_index(self.raw, self._order)
        return self

    hw_protocol = _Attr(NFULA.PACKET_HDR, _u16)

    @property
    def hook(self) -> int | None:
        # inlined: hook, payload and prefix are what nearly every consumer reads
        index = self._index
        off = index[_SLOT_PACKET_HDR] if index is not None else self._offset(NFULA.PACKET_HDR)
        return self.raw[off + 2] if off and self._length(off) >= 7 else None

    @property
    def hook_name(self) -> str:
        return hook_name(self.family, self.hook)

    mark = _Attr(NFULA.MARK, _u32)

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

    indev = _Attr(NFULA.IFINDEX_INDEV, _u32)
    outdev = _Attr(NFULA.IFINDEX_OUTDEV, _u32)
    physindev = _Attr(NFULA.IFINDEX_PHYSINDEV, _u32)
    physoutdev = _Attr(NFULA.IFINDEX_PHYSOUTDEV, _u32)
    indev_name = _DeviceName(indev)
    outdev_name = _DeviceName(outdev)
    physindev_name = _DeviceName(physindev)
    physoutdev_name = _DeviceName(physoutdev)
    hwaddr = _Attr(NFULA.HWADDR, _hwaddr)
    hwtype = _Attr(NFULA.HWTYPE, _u16)
    hwheader = _Attr(NFULA.HWHEADER, bytes)
    hwlen = _Attr(NFULA.HWLEN, _u16)

    @property
    def payload(self) -> bytes | None:
        index = self._index
        off = index[_SLOT_PAYLOAD] if index is not None else self._offset(NFULA.PAYLOAD)
        return self.raw[off : off + self._length(off) - 4] if off else None

    @property
    def prefix(self) -> str | None:
        index = self._index
        off = index[_SLOT_PREFIX] if index is not None else self._offset(NFULA.PREFIX)
        if not off:
            return None
        value = self.raw[off : off + self._length(off) - 4]
        return value.split(b"\0", 1)[0].decode("utf-8", "replace")

    uid = _Attr(NFULA.UID, _u32)
    gid = _Attr(NFULA.GID, _u32)
    seq = _Attr(NFULA.SEQ, _u32)
    seq_global = _Attr(NFULA.SEQ_GLOBAL, _u32)
    ct = _Attr(NFULA.CT, bytes, "The nested conntrack attribute (NFULA_CT), undecoded.")
    ct_info = _Attr(NFULA.CT_INFO, _u32)

    @property
    def vlan(self) -> tuple[int | None, int | None] | None:
        """(proto, tci) from the nested NFULA_VLAN attribute."""
        v = self._get(NFULA.VLAN)
        if v is None:
            return None
        inner = {t: v[off : off + n] for t, off, n in walk_tlvs(v, self._order, 0)}
        p, t = inner.get(1), inner.get(2)
        return (_u16(p) if p is not None else None, _u16(t) if t is not None else None)

    l2hdr = _Attr(NFULA.L2HDR, bytes)

    @property
    def unknown(self) -> dict[int, bytes]:
        """Attributes this parser does not know, kept by type."""
        if not self._full_index()[0] & INDEX_UNKNOWN:
            return {}
        return {t: bytes(v) for t, v in self.attrs.items() if t not in ATTR_NAMES}

    def __repr__(self) -> str:
        plen = len(self.payload or b"")
        return (
            f"<Packet group={self.group} hook={self.hook_name} prefix={self.prefix!r} "
            f"indev={self.indev} outdev={self.outdev} payload={plen}B>"
        )


def _build_index(raw: Buffer, order: str) -> list[int]:
    """The index of one body, by the walk the C core's nfc_packet_rows makes: value offsets
    by attribute type (0: absent), flags in slot 0. Raises ParseError on bad TLVs."""
    index = [0] * INDEX_SLOTS
    for atype, value, _ in walk_tlvs(raw, order):
        if 0 < atype < INDEX_SLOTS:
            index[atype] = value
        else:
            index[0] |= INDEX_UNKNOWN
    return index


def parse_nflog(body: Buffer, ts_sec: int = 0, ts_usec: int = 0, orig_len: int | None = None,
                byteorder: str = HOST, ifname_resolver: IfnameResolver | None = None) -> Packet:
    """Parse one LINKTYPE_NFLOG record body, validating every TLV eagerly (the arguments
    are :class:`Packet`'s)."""
    return Packet(bytes(body), ts_sec, ts_usec, orig_len, byteorder, ifname_resolver).validate()


def iter_records(
    buf: Buffer, ifname_resolver: IfnameResolver | None = None
) -> Iterator[Packet]:
    """Packets from consecutive host-order pcap records (16-byte header + NFLOG body),
    as found in the capture ring. Attributes are decoded lazily. A record running past the
    end raises ParseError; a partial header after the last record is ignored."""
    mv = memoryview(buf)
    try:
        for sec, usec, caplen, olen, body in walk_records(mv):
            yield Packet(mv[body : body + caplen].tobytes(), sec, usec, olen, HOST,
                         ifname_resolver)
    except RecordError as e:
        if not e.partial_header:
            raise


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
