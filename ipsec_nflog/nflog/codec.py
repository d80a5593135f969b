"""The NFLOG record format, once: its constants, the record header, and the one TLV walker and
record iterator that every reader, writer and parser here uses.

A *record* (in the capture ring, and in a LINKTYPE_NFLOG pcap file) is a 16-byte header
``ts_sec, ts_usec, caplen, orig_len`` (the ring's and our files' are in host byte order) and
``caplen`` bytes of NFLOG message: a 4-byte ``nfgenmsg`` (family, version, resource id = the
group, big-endian) and then TLVs (``struct nlattr``: ``nla_len`` and ``nla_type`` in the byte
order of the capturing host, the value in network order, each attribute padded to 4 bytes).

:func:`walk_tlvs` follows the C core's walk (``nfc_attr_at`` in capture/_csrc/core.h, used by
``nfc_packet_rows`` in record.c): an attribute is read while its 4-byte header fits; one
whose ``nla_len`` is below 4 or runs past the end stops the walk (malformed); the flags
``NLA_F_NESTED``/``NLA_F_NET_BYTEORDER`` are masked off the type. A last attribute need not be
padded. The C core sends a record with any byte left after the walk to Python, which walks it
here: 1-3 zero bytes after the last attribute are padding, any other leftover is malformed.
:func:`walk_records` walks the records of a run the way ``nfc_packet_rows`` does.

Pure Python; never imports the compiled core.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Iterator
from typing import Union

__all__ = [
    "ATTR_NAMES",
    "HOST",
    "INDEX_SLOTS",
    "INDEX_UNKNOWN",
    "NFGENMSG_LEN",
    "NFULA",
    "NLA_F_NESTED",
    "NLA_F_NET_BYTEORDER",
    "NLA_HDRLEN",
    "NLA_TYPE_MASK",
    "PACKET_ROW",
    "PREFIX_SPAN",
    "RECORD_HEADER",
    "ROW_NO_HOOK",
    "ROW_PREFIXES",
    "ROW_SLOW",
    "Buffer",
    "ParseError",
    "RecordError",
    "TlvError",
    "record_header",
    "walk_records",
    "walk_tlvs",
]

Buffer = Union[bytes, bytearray, memoryview]

HOST = "<" if sys.byteorder == "little" else ">"
"""struct byte-order character of this host: the order of TLV headers and ring records."""


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

NFGENMSG_LEN = 4
NLA_HDRLEN = 4
NLA_F_NESTED = 0x8000
NLA_F_NET_BYTEORDER = 0x4000
NLA_TYPE_MASK = ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) & 0xFFFF

# A parsed packet's index of its body (Packet._full_index): value offsets by attribute type
# (0: absent), with flags in slot 0.
INDEX_SLOTS = 22
INDEX_UNKNOWN = 1  # an attribute type without a slot

# ``struct nfc_packet_row`` and ``struct nfc_span`` (capture/_csrc/nflog_core.h), what the C
# core hands the per-packet iterator for a run of records: (record offset, ts_sec, ts_usec,
# orig_len, payload start or 0, payload end, flags, prefix entry, hook) per record, and the
# run's prefix table as (start, end) spans. tests/nflog/test_nflog_codec.py checks them
# against C.
PACKET_ROW = struct.Struct("=6IBBH")
PREFIX_SPAN = struct.Struct("=II")
ROW_SLOW = 1  # C could not index the record, or its prefix table was full: Python parses it
ROW_NO_HOOK = 0xFFFF  # the row's hook when there is no packet header
ROW_PREFIXES = 16  # entries of a run's prefix table

RECORD_HEADER = struct.Struct("=IIII")
"""ts_sec, ts_usec, caplen, orig_len of a ring record (host order)."""
_RECORD_HEADERS = {"<": struct.Struct("<IIII"), ">": struct.Struct(">IIII"), "=": RECORD_HEADER}
# nla_len, nla_type readers by byte order (bound methods: the walker is on per-packet paths)
_TLV_HEADER_UNPACK = {order: struct.Struct(order + "HH").unpack_from for order in "<>="}


def record_header(order: str) -> struct.Struct:
    """The record header in byte order ``order`` ("<", ">" or "="), for pcap files."""
    return _RECORD_HEADERS[order]


class ParseError(ValueError):
    """A record body is not a well-formed NFLOG message."""


class TlvError(ParseError):
    """A TLV walk met a malformed attribute: the one at ``offset`` has ``nla_len`` ``length``
    (below 4 or past the end), or, with ``length`` None, non-zero bytes follow the last one."""

    def __init__(self, message: str, offset: int, length: int | None) -> None:
        super().__init__(message)
        self.offset = offset
        self.length = length


class RecordError(ParseError):
    """A run of records does not end on a record boundary: what starts at ``offset`` is a
    partial header (``partial_header``) or a record running past the end."""

    def __init__(self, message: str, offset: int, partial_header: bool) -> None:
        super().__init__(message)
        self.offset = offset
        self.partial_header = partial_header


def walk_tlvs(
    buf: Buffer, order: str = HOST, start: int = NFGENMSG_LEN, end: int | None = None,
    strict: bool = True, first: int | None = None,
) -> Iterator[tuple[int, int, int]]:
    """(type without NLA_F_* flags, value offset, value length) of each attribute in
    ``buf[start:end]``, TLV headers in byte order ``order``; the rules are in the module
    docstring. A malformed attribute or trailing bytes end the walk: with ``strict`` a
    :class:`TlvError` (a ParseError) says where, without it the walk just stops.

    ``first``: yield only the first attribute of this type and end there (what follows it
    is not checked). The writers pass it positionally, per packet: a plain loop costs less
    when the generator ends by itself than when the caller breaks out of it."""
    if end is None:
        end = len(buf)
    unpack = _TLV_HEADER_UNPACK[order]
    off = start
    while off + 4 <= end:
        length, atype = unpack(buf, off)
        if length < 4 or off + length > end:
            if strict:
                raise TlvError(f"NFLOG attribute at offset {off} has bad length {length}",
                               off, length)
            return
        atype &= NLA_TYPE_MASK
        if first is None:
            yield atype, off + 4, length - 4
        elif atype == first:
            yield atype, off + 4, length - 4
            return
        off += (length + 3) & ~3
    if strict and off < end and any(buf[off:end]):
        raise TlvError(f"{end - off} trailing bytes after NFLOG attributes at offset {off}",
                       off, None)


def walk_records(buf: Buffer, *, strict: bool = True) -> Iterator[tuple[int, int, int, int, int]]:
    """(ts_sec, ts_usec, caplen, orig_len, body offset) of each of the consecutive host-order
    records in ``buf``. Bytes after the last whole record (a partial header, or a record
    running past the end) raise :class:`RecordError` with ``strict``, else end the walk."""
    unpack = RECORD_HEADER.unpack_from
    off, end = 0, len(buf)
    while off + 16 <= end:
        sec, usec, caplen, orig_len = unpack(buf, off)
        body = off + 16
        if body + caplen > end:
            if strict:
                raise RecordError(f"malformed record at offset {off}: caplen {caplen} runs "
                                  f"past the end of the buffer ({end} bytes)", off, False)
            return
        yield sec, usec, caplen, orig_len, body
        off = body + caplen
    if strict and off < end:
        raise RecordError(f"partial record header at offset {off}", off, True)
