"""Reader for pcap and pcapng capture files, yielding the same ``Packet`` objects as live capture.

- pcap: both byte orders, microsecond (0xa1b2c3d4) and nanosecond (0xa1b23c4d) magic;
  nanoseconds are truncated to microseconds.
- pcapng: every section (byte order per SHB), several interfaces, EPB / SPB / obsolete PB,
  ``if_tsresol`` and ``if_tsoffset``; ISB counters are kept in ``Interface.statistics``;
  unknown blocks are skipped.
- LINKTYPE_NFLOG records become :class:`ipsec_nflog.nflog.packet.Packet`, decoded with the file's
  byte order (TLV headers are in the byte order of the capturing host, which is the file's).
  Every TLV is validated eagerly, so a malformed body raises here, naming its offset, and
  never later on attribute access. A record cut by a snaplen (caplen < orig_len) has its
  last, cut TLV clipped to the bytes present, as Wireshark shows it.
- Other link types become :class:`FilePacket` (timestamp and payload only; NFLOG fields are
  ``None``). ``payload`` is the IP packet for raw-IP link types, for Ethernet (after up to two
  VLAN tags) and Linux cooked v1/v2 when the protocol is IPv4/IPv6; otherwise the whole frame.

A truncated or corrupt file yields every complete record, then raises
:class:`CaptureFileError` naming the byte offset. Lengths are checked before reading, so
corrupt headers cannot cause huge allocations, and every step consumes input, so it never
hangs. Only ``CaptureFileError`` and ``OSError`` (I/O) come out.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Union

from ipsec_nflog.files.file_packet import FilePacket
from ipsec_nflog.files.format import (
    BLOCK_EPB,
    BLOCK_IDB,
    BLOCK_ISB,
    BLOCK_PB,
    BLOCK_SHB,
    BLOCK_SPB,
    BYTE_ORDER_MAGIC,
    IF_DESCRIPTION,
    IF_NAME,
    IF_TSOFFSET,
    IF_TSRESOL,
    ISB_OPTIONS,
    LINKTYPE_NFLOG,
    MAX_RECORD,
    MAX_SNAPLEN,
    OPT_COMMENT,
    PCAP_HEADER_LEN,
    PCAP_MAGIC_KUZNETSOV,
    PCAP_MAGIC_NSEC,
    PCAP_MAGIC_USEC,
    PCAP_RECORD_LEN,
    CaptureFileError,
    decode_ifnames,
    decode_options,
    split_timestamp,
    tsresol_units,
)
from ipsec_nflog.nflog.codec import HOST, NFGENMSG_LEN, TlvError, record_header, walk_tlvs
from ipsec_nflog.nflog.packet import IfnameResolver, Packet, ParseError, parse_nflog

__all__ = ["CaptureReader", "FilePacket", "Interface", "read_capture"]

Source = Union[str, "os.PathLike[str]", IO[bytes]]

AnyPacket = Union[Packet, FilePacket]


@dataclass
class Interface:
    """A capture interface: the pcap header, or one pcapng Interface Description Block."""

    linktype: int
    snaplen: int
    name: str | None = None
    description: str | None = None
    units: int = 1_000_000  # timestamp ticks per second (if_tsresol)
    tsoffset: int = 0  # seconds added to every timestamp (if_tsoffset)
    # ISB counters by option name ("ifrecv", "ifdrop", "osdrop", ...), latest ISB wins.
    statistics: dict[str, int] = field(default_factory=dict)
    # The capturing host's ifindex -> name map, from our IDB comment (empty when absent).
    interface_names: dict[int, str] = field(default_factory=dict)

    @property
    def caplen_limit(self) -> int:
        """Largest caplen accepted: libpcap's maximum, or a larger snaplen (bounded)."""
        return max(MAX_SNAPLEN, min(self.snaplen, MAX_RECORD))


def _clip_cut_tlvs(body: bytes, order: str) -> bytes:
    """A snaplen-cut NFLOG body with its last TLV clipped to the bytes present."""
    off = NFGENMSG_LEN  # where the attribute after the last whole one starts
    try:
        for _, value, length in walk_tlvs(body, order):
            off = value + ((length + 3) & ~3)
    except TlvError as e:
        if e.length is not None and e.length >= 4:  # runs past the end: the cut one
            fixed = bytearray(body)
            struct.pack_into(order + "H", fixed, e.offset, len(body) - e.offset)
            return bytes(fixed)
        if e.length is not None:
            return body  # malformed, not cut: let the parser report it
    return body[:off] if off < len(body) else body  # drop a partial TLV header


def _no_names(index: int) -> str | None:
    return None


def _section_resolver(names: dict[int, str], fallback: IfnameResolver) -> IfnameResolver:
    """Names from the file's own map first (the capture host's), then ``fallback``."""
    def resolve(index: int) -> str | None:
        name = names.get(index)
        return name if name is not None else fallback(index)

    return resolve


class CaptureReader:
    """Iterate the packets of a pcap or pcapng file (a path or a binary file object).

    ``format`` is "pcap" or "pcapng"; ``byteorder`` is "<" or ">" (the current section's for
    pcapng); ``interfaces`` the current section's interfaces; ``linktype``/``snaplen`` those of
    the first interface. A path is closed at the end of iteration or by ``close()``; a file
    object is left open. Only ``CaptureFileError`` and ``OSError`` are raised.
    """

    format: str
    byteorder: str

    def __init__(self, source: Source, *, ifname_resolver: IfnameResolver | None = None):
        if isinstance(source, (str, os.PathLike)):
            self.path: str | None = os.fspath(source)
            self._f: IO[bytes] = open(self.path, "rb")  # closed by close()
            self._owns = True
        else:
            name = getattr(source, "name", None)
            self.path = name if isinstance(name, str) else None
            self._f = source
            self._owns = False
        # A file's interface indexes belong to the host that wrote it: never name them with
        # this host's interfaces (``indev_name`` is None unless the caller knows better).
        self._ifname = ifname_resolver or _no_names
        self._section_names: dict[int, str] = {}  # the current section's IDB name maps
        self._resolver = self._ifname
        self.offset = 0  # bytes consumed from the file
        self.records = 0  # packets yielded
        self.interfaces: list[Interface] = []
        self._pushback = b""
        self.byteorder = HOST
        try:
            self._packets = self._start()
        except BaseException:
            self.close()
            raise

    # -- public --------------------------------------------------------------------------
    @property
    def linktype(self) -> int | None:
        return self.interfaces[0].linktype if self.interfaces else None

    @property
    def snaplen(self) -> int | None:
        return self.interfaces[0].snaplen if self.interfaces else None

    def __iter__(self) -> CaptureReader:
        return self

    def __next__(self) -> AnyPacket:
        try:
            pkt = next(self._packets)
        except BaseException:
            self.close()
            raise
        self.records += 1
        return pkt

    def close(self) -> None:
        """Stop iterating; closes the file when the reader opened it. Idempotent."""
        self._packets = iter(())
        if self._owns:
            self._f.close()

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- input ---------------------------------------------------------------------------
    def _error(self, message: str, offset: int) -> CaptureFileError:
        return CaptureFileError(message, offset, self.path)

    def _read(self, n: int) -> bytes:
        """Up to n bytes; fewer only at end of file."""
        chunks, have = [], 0
        if self._pushback:
            chunks.append(self._pushback[:n])
            have = len(chunks[0])
            self._pushback = self._pushback[n:]
        while have < n:
            chunk = self._f.read(n - have)
            if not chunk:
                break
            chunks.append(chunk)
            have += len(chunk)
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.offset += len(data)
        return data

    def _read_exact(self, n: int, what: str, start: int) -> bytes:
        data = self._read(n)
        if len(data) < n:
            raise self._error(f"truncated {what}: file ends after {len(data)} of {n} bytes", start)
        return data

    def _start(self) -> Iterator[AnyPacket]:
        magic = self._read(4)
        if not magic:
            raise self._error("empty file: no pcap or pcapng header", 0)
        if len(magic) < 4:
            raise self._error(f"file is {len(magic)} bytes, too short for a capture header", 0)
        if magic == struct.pack("<I", BLOCK_SHB):  # same bytes in both orders
            self.format = "pcapng"
            self._pushback = magic
            self.offset = 0
            _, body, order = self._next_block()
            self._section(body, order, 0)
            return self._pcapng_packets()
        self.format = "pcap"
        for order in "<>":
            (value,) = struct.unpack(order + "I", magic)
            if value in (PCAP_MAGIC_USEC, PCAP_MAGIC_NSEC):
                return self._pcap_header(order, 1_000_000 if value == PCAP_MAGIC_USEC else 10**9)
            if value == PCAP_MAGIC_KUZNETSOV:
                raise self._error("modified (Kuznetsov) pcap is not supported", 0)
        raise self._error(f"not a pcap or pcapng file (magic {magic.hex()})", 0)

    def _packet(
        self, linktype: int, body: bytes, ts: tuple[int, int], orig_len: int, offset: int
    ) -> AnyPacket:
        sec, usec = ts
        if linktype != LINKTYPE_NFLOG:
            return FilePacket(linktype, body, sec, usec, orig_len)
        if orig_len > len(body):
            body = _clip_cut_tlvs(body, self.byteorder)
        try:
            pkt = parse_nflog(body, sec, usec, orig_len, self.byteorder, self._resolver)
            pkt.vlan  # noqa: B018 - the nested NFULA_VLAN is decoded lazily: check it now too
            return pkt
        except ParseError as e:
            raise self._error(f"malformed NFLOG record body: {e}", offset) from None

    # -- pcap ----------------------------------------------------------------------------
    def _pcap_header(self, order: str, units: int) -> Iterator[AnyPacket]:
        rest = self._read_exact(PCAP_HEADER_LEN - 4, "pcap file header", 0)
        major, minor, _zone, _sigfigs, snaplen, network = struct.unpack(order + "HHiIII", rest)
        if major != 2:
            raise self._error(f"unsupported pcap version {major}.{minor}", 4)
        self.byteorder = order
        # The upper bits of the link-type field carry FCS information (LT_LINKTYPE mask).
        self.interfaces = [Interface(network & 0x03FFFFFF, snaplen, units=units)]
        return self._pcap_packets()

    def _pcap_packets(self) -> Iterator[AnyPacket]:
        iface = self.interfaces[0]
        rec = record_header(self.byteorder)
        limit = iface.caplen_limit
        while True:
            start = self.offset
            head = self._read(PCAP_RECORD_LEN)
            if not head:
                return
            if len(head) < PCAP_RECORD_LEN:
                raise self._error(
                    f"truncated record header: file ends after {len(head)} of 16 bytes", start
                )
            sec, frac, caplen, orig_len = rec.unpack(head)
            if caplen > limit:
                raise self._error(f"record caplen {caplen} exceeds the limit {limit}", start)
            body = self._read_exact(caplen, f"record ({caplen}-byte body)", start)
            ts = split_timestamp(sec * iface.units + frac, iface.units)
            yield self._packet(iface.linktype, body, ts, orig_len, start)

    # -- pcapng --------------------------------------------------------------------------
    def _next_block(self) -> tuple[int, memoryview, str]:
        """(type, body without the length fields, byte order) of the next block; type -1 at
        end of file."""
        start = self.offset
        head = self._read(8)
        if not head:
            return -1, memoryview(b""), self.byteorder
        if len(head) < 8:
            raise self._error(f"truncated block header: {len(head)} of 8 bytes", start)
        order = self.byteorder
        if head[:4] == struct.pack("<I", BLOCK_SHB):
            bom = self._read_exact(4, "section header block", start)
            if bom == struct.pack("<I", BYTE_ORDER_MAGIC):
                order = "<"
            elif bom == struct.pack(">I", BYTE_ORDER_MAGIC):
                order = ">"
            else:
                raise self._error(f"bad section byte-order magic {bom.hex()}", start)
            head += bom
        btype, total = struct.unpack(order + "II", head[:8])
        if total < 12 or total % 4 or total > MAX_RECORD:
            raise self._error(f"bad block length {total} (block type {btype:#x})", start)
        if btype == BLOCK_SHB and total < 28:
            raise self._error(f"section header block too short ({total} bytes)", start)
        data = head[8:] + self._read_exact(total - len(head), f"{total}-byte block", start)
        (trailer,) = struct.unpack(order + "I", data[-4:])
        if trailer != total:
            raise self._error(f"block length {total} does not match its trailer {trailer}", start)
        self._block_start = start
        return btype, memoryview(data)[:-4], order

    def _section(self, body: memoryview, order: str, start: int) -> None:
        # body: byte-order magic, major, minor, section length, options
        major, minor = struct.unpack_from(order + "HH", body, 4)
        if major != 1:
            raise self._error(f"unsupported pcapng version {major}.{minor}", start)
        self.byteorder = order
        self.interfaces = []
        self._section_names = {}
        self._resolver = _section_resolver(self._section_names, self._ifname)

    def _options(self, body: memoryview, start: int) -> Iterator[tuple[int, memoryview]]:
        try:
            yield from decode_options(self.byteorder, body, start, len(body))
        except ValueError as e:
            raise self._error(f"bad option: {e}", self._block_start) from None

    def _interface(self, body: memoryview) -> Interface:
        if len(body) < 8:
            raise self._error("interface description block too short", self._block_start)
        linktype, _reserved, snaplen = struct.unpack_from(self.byteorder + "HHI", body)
        iface = Interface(linktype, snaplen)
        for code, value in self._options(body, 8):
            if code == IF_NAME:
                iface.name = bytes(value).rstrip(b"\0").decode("utf-8", "replace")
            elif code == IF_DESCRIPTION:
                iface.description = bytes(value).rstrip(b"\0").decode("utf-8", "replace")
            elif code == IF_TSRESOL and len(value) >= 1:
                iface.units = tsresol_units(value[0])
            elif code == IF_TSOFFSET and len(value) >= 8:
                (iface.tsoffset,) = struct.unpack_from(self.byteorder + "q", value)
            elif code == OPT_COMMENT:
                names = decode_ifnames(bytes(value).rstrip(b"\0").decode("utf-8", "replace"))
                if names is not None:
                    iface.interface_names = names
                    self._section_names.update(names)
        return iface

    def _statistics(self, body: memoryview) -> None:
        if len(body) < 12:
            raise self._error("interface statistics block too short", self._block_start)
        (iface_id,) = struct.unpack_from(self.byteorder + "I", body)
        counters = {}
        for code, value in self._options(body, 12):
            name = ISB_OPTIONS.get(code)
            if name is not None and len(value) == 8:
                (counters[name],) = struct.unpack_from(self.byteorder + "Q", value)
        # Statistics for an interface the section does not have are metadata we can drop.
        if iface_id < len(self.interfaces):
            self.interfaces[iface_id].statistics.update(counters)

    def _iface(self, iface_id: int, what: str) -> Interface:
        if iface_id >= len(self.interfaces):
            raise self._error(
                f"{what} refers to interface {iface_id}, but the section has "
                f"{len(self.interfaces)}",
                self._block_start,
            )
        return self.interfaces[iface_id]

    def _pcapng_packets(self) -> Iterator[AnyPacket]:
        while True:
            btype, body, order = self._next_block()
            start = self._block_start
            if btype == -1:
                return
            if btype == BLOCK_SHB:
                self._section(body, order, start)
            elif btype == BLOCK_IDB:
                self.interfaces.append(self._interface(body))
            elif btype == BLOCK_ISB:
                self._statistics(body)
            elif btype in (BLOCK_EPB, BLOCK_PB):
                yield self._enhanced(btype, body, start)
            elif btype == BLOCK_SPB:
                yield self._simple(body, start)
            # anything else (name resolution, decryption secrets, custom, ...) is skipped

    def _enhanced(self, btype: int, body: memoryview, start: int) -> AnyPacket:
        if len(body) < 20:
            raise self._error("packet block too short", start)
        layout = "IIIII" if btype == BLOCK_EPB else "HHIIII"
        fields = struct.unpack_from(self.byteorder + layout, body)
        iface_id, hi, lo, caplen, orig_len = fields[0], *fields[-4:]
        iface = self._iface(iface_id, "packet block")
        if caplen > len(body) - 20:
            raise self._error(f"packet caplen {caplen} does not fit its block", start)
        if caplen > iface.caplen_limit:
            raise self._error(
                f"packet caplen {caplen} exceeds the limit {iface.caplen_limit}", start
            )
        sec, usec = split_timestamp((hi << 32) | lo, iface.units)
        data = bytes(body[20 : 20 + caplen])
        return self._packet(iface.linktype, data, (sec + iface.tsoffset, usec), orig_len, start)

    def _simple(self, body: memoryview, start: int) -> AnyPacket:
        if len(body) < 4:
            raise self._error("simple packet block too short", start)
        iface = self._iface(0, "simple packet block")
        (orig_len,) = struct.unpack_from(self.byteorder + "I", body)
        caplen = min(orig_len, len(body) - 4, iface.snaplen or MAX_RECORD)
        # An SPB has no timestamp: 0 (the epoch) it is.
        return self._packet(iface.linktype, bytes(body[4 : 4 + caplen]), (0, 0), orig_len, start)


def read_capture(
    source: Source, *, ifname_resolver: IfnameResolver | None = None
) -> Iterator[AnyPacket]:
    """Packets of a pcap/pcapng file; see :class:`CaptureReader`. A path is closed at the end."""
    with CaptureReader(source, ifname_resolver=ifname_resolver) as reader:
        yield from reader
