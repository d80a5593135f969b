"""Encoders: how runs of ring records become a capture format.

A run of ring records (``Batch.data``/``Batch.count``) is consecutive host-order pcap
records with LINKTYPE_NFLOG bodies (docs/DESIGN.md). An encoder turns one run into the bytes
of one ``writev`` and says where the records in them end, so the writer can split a run at a
record boundary (rotation) or keep whole records after a failed write. Formats:

- :class:`PcapEncoder` (``"pcap"``): what ``tcpdump -i nflog:N -w`` writes. Microsecond pcap,
  LINKTYPE_NFLOG (239), header in host byte order (so the TLV headers, which are in host
  order, match it), snaplen 262144. The ring bytes are written unchanged: no Python work per
  packet at all. With another link type it writes records that are already of that type
  (``DecryptedWriter``).
- :class:`RawEncoder` (``"raw"``): LINKTYPE_RAW (101) pcap of just the IP packet
  (NFULA_PAYLOAD) with the original length preserved, for tools that cannot read NFLOG (BPF
  filters, nDPI, nfdump). All NFLOG metadata (prefix, hook, devices, mark, uid, ...) is lost;
  records without a payload are skipped (the writer counts them in ``records_skipped``).
- :class:`ipsec_nflog.files.pcapng.PcapngEncoder` (``"pcapng"``).

The raw and pcapng encoders frame records in Python unless given a :class:`Framing`
(``use_framing``): the capture layer's ``ipsec_nflog.capture.framing.NativeFraming`` does it
in C in one pass, byte for byte the same. files/ never imports the compiled core, so the
Python loops stay for users without it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import ClassVar, Protocol

from ipsec_nflog.files.format import (
    LINKTYPE_NFLOG,
    LINKTYPE_RAW,
    PCAP_FILE_HEADER,
    PCAP_MAGIC_USEC,
    PCAP_VERSION,
)
from ipsec_nflog.nflog.codec import HOST, NFULA, RECORD_HEADER, Buffer, walk_records, walk_tlvs

__all__ = ["Encoder", "Framing", "PcapEncoder", "RawEncoder", "check_count", "short_record"]


class Encoder(Protocol):
    """What a writer needs of a format."""

    format: ClassVar[str]
    linktype: int

    def header(self) -> bytes:
        """The start of every file."""
        ...

    def prefix(self) -> bytes:
        """Blocks the current file needs before the next records (pcapng: new IDBs)."""
        ...

    def encode(self, mv: memoryview, count: int) -> tuple[Buffer, int]:
        """A run of ``count`` ring records in this format, and how many records that is
        (fewer when some cannot be represented); ValueError if ``mv`` is not ``count``
        whole records (formats that look at the records)."""
        ...

    def record_ends(self, body: memoryview) -> Iterator[int]:
        """End offsets of the complete records in encoded ``body``."""
        ...

    def trailer(self, stats: object, now: float) -> bytes:
        """Blocks that end a file (pcapng: ISBs from ``stats``)."""
        ...


class Framing(Protocol):
    """Framing of a run of ring records done elsewhere (in C). What a call returns may be
    reused by the next call. Both raise ValueError unless ``records`` is ``count`` whole
    records."""

    def pcapng(self, records: memoryview, count: int, iface_ids: Mapping[int, int],
               synth_opts: bytes) -> tuple[Buffer, int]:
        """(EPBs of the records, -1); ``synth_opts`` end the EPB of a record without
        NFULA_TIMESTAMP. At a record whose group has no interface id: (empty, group)."""
        ...

    def raw(self, records: memoryview, count: int) -> tuple[Buffer, int]:
        """(LINKTYPE_RAW records of the NFLOG payloads, how many; payloadless records are
        left out)."""
        ...


def short_record(offset: int, caplen: int) -> ValueError:
    return ValueError(f"malformed record at batch offset {offset}: caplen {caplen} is shorter "
                      "than an NFLOG header")


def check_count(found: int, count: int) -> None:
    if found > count:
        raise ValueError(f"batch holds more records than its count {count}")
    if found < count:
        raise ValueError(f"batch holds {found} records, but count is {count}")


class PcapEncoder:
    """Microsecond pcap in host byte order; the ring's records are written unchanged."""

    format: ClassVar[str] = "pcap"

    def __init__(self, snaplen: int, linktype: int = LINKTYPE_NFLOG) -> None:
        self.snaplen = snaplen
        self.linktype = linktype

    def header(self) -> bytes:
        return PCAP_FILE_HEADER.pack(PCAP_MAGIC_USEC, *PCAP_VERSION, 0, 0, self.snaplen,
                                     self.linktype)

    def prefix(self) -> bytes:
        return b""

    def encode(self, mv: memoryview, count: int) -> tuple[Buffer, int]:
        return mv, count  # the ring already holds pcap records: no per-packet work

    def record_ends(self, body: memoryview) -> Iterator[int]:
        for _, _, caplen, _, start in walk_records(body, strict=False):
            yield start + caplen

    def trailer(self, stats: object, now: float) -> bytes:
        return b""


class RawEncoder(PcapEncoder):
    """LINKTYPE_RAW pcap of the NFLOG payloads (IPv4/IPv6); NFLOG metadata is dropped."""

    format: ClassVar[str] = "raw"

    _framing: Framing | None = None

    def __init__(self, snaplen: int) -> None:
        super().__init__(snaplen, LINKTYPE_RAW)

    def use_framing(self, framing: Framing | None) -> None:
        """Frame with ``framing`` (None: in Python again)."""
        self._framing = framing

    def encode(self, mv: memoryview, count: int) -> tuple[Buffer, int]:
        if self._framing is not None:
            return self._framing.raw(mv, count)
        out = bytearray(len(mv))  # a payload is never longer than its record
        pack, payload = RECORD_HEADER.pack_into, NFULA.PAYLOAD
        p = n = found = 0
        for sec, usec, caplen, orig_len, body in walk_records(mv):
            found += 1
            if caplen < 4:
                raise short_record(body - 16, caplen)
            for _, start, length in walk_tlvs(mv, HOST, body + 4, body + caplen, False,
                                              payload):
                cut = orig_len - caplen  # what the snaplen cut from the payload's end
                pack(out, p, sec, usec, length, length + cut if cut > 0 else length)
                out[p + 16 : p + 16 + length] = mv[start : start + length]
                p += 16 + length
                n += 1
        check_count(found, count)
        return memoryview(out)[:p], n
