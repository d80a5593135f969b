"""Constants, errors and small codecs shared by the capture file writers and the reader.

Sources: libpcap's pcap-savefile(5) and LINKTYPE_NFLOG description, and the pcapng draft
(draft-ietf-opsawg-pcapng). Pure Python; never imports the compiled core.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Mapping

from ipsec_nflog.nflog.codec import HOST, Buffer

__all__ = [
    "BLOCK_EPB",
    "BLOCK_IDB",
    "BLOCK_ISB",
    "BLOCK_PB",
    "BLOCK_SHB",
    "BLOCK_SPB",
    "BYTE_ORDER_MAGIC",
    "HOST",
    "LINKTYPE_ETHERNET",
    "LINKTYPE_LINUX_SLL",
    "LINKTYPE_LINUX_SLL2",
    "LINKTYPE_NFLOG",
    "LINKTYPE_RAW",
    "MAX_SNAPLEN",
    "PCAP_MAGIC_NSEC",
    "PCAP_MAGIC_USEC",
    "Buffer",
    "CaptureFileError",
    "CaptureWriteError",
    "layout",
]

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_NFLOG = 239
LINKTYPE_LINUX_SLL2 = 276
# DLT_RAW is 12 on most systems and 14 on OpenBSD; old files carry those values directly.
RAW_LINKTYPES = frozenset({LINKTYPE_RAW, 12, 14, LINKTYPE_IPV4, LINKTYPE_IPV6})

# libpcap's MAXIMUM_SNAPLEN: the largest snaplen it writes and the largest caplen it accepts
# for most link types (NFLOG included).
MAX_SNAPLEN = 262144
# Hard ceiling for a record or block we agree to read, whatever a header claims, so a
# corrupt length cannot make the reader allocate gigabytes.
MAX_RECORD = 1 << 24

PCAP_MAGIC_USEC = 0xA1B2C3D4
PCAP_MAGIC_NSEC = 0xA1B23C4D
PCAP_MAGIC_KUZNETSOV = 0xA1B2CD34  # "modified pcap" with 24-byte record headers
PCAP_VERSION = (2, 4)
PCAP_HEADER_LEN = 24
PCAP_RECORD_LEN = 16

BLOCK_SHB = 0x0A0D0D0A
BLOCK_IDB = 0x00000001
BLOCK_PB = 0x00000002  # obsolete Packet Block
BLOCK_SPB = 0x00000003
BLOCK_ISB = 0x00000005
BLOCK_EPB = 0x00000006
BYTE_ORDER_MAGIC = 0x1A2B3C4D

OPT_ENDOFOPT = 0
OPT_COMMENT = 1
SHB_HARDWARE = 2
SHB_OS = 3
SHB_USERAPPL = 4
IF_NAME = 2
IF_DESCRIPTION = 3
IF_TSRESOL = 9
IF_TSOFFSET = 14
ISB_OPTIONS = {
    2: "starttime",
    3: "endtime",
    4: "ifrecv",
    5: "ifdrop",
    6: "filteraccept",
    7: "osdrop",
    8: "usrdeliv",
}
ISB_CODES = {name: code for code, name in ISB_OPTIONS.items()}



def layout(fields: str, order: str = "=") -> struct.Struct:
    """A Struct declared as data, dpkt's ``__hdr__`` style: ``"name:code name:code ..."``
    (struct codes), so the names document what each field is."""
    return struct.Struct(order + "".join(f.split(":")[1] for f in fields.split()))


# The fixed parts of what the writers emit (host order; the reader takes the file's order).
PCAP_FILE_HEADER = layout(
    "magic:I version_major:H version_minor:H thiszone:i sigfigs:I snaplen:I linktype:I")
SHB_FIELDS = layout("byte_order_magic:I major:H minor:H section_length:q")
IDB_FIELDS = layout("linktype:H reserved:H snaplen:I")
EPB_HEADER = layout(
    "block_type:I block_len:I interface_id:I ts_high:I ts_low:I caplen:I orig_len:I")
ISB_FIELDS = layout("interface_id:I ts_high:I ts_low:I")
BLOCK_TRAILER = layout("block_len:I")


class CaptureFileError(ValueError):
    """A capture file is corrupt, truncated or of an unsupported kind.

    ``offset`` is the byte offset in the file where the problem is; every record before it
    was complete and has been yielded.
    """

    def __init__(self, message: str, offset: int, path: str | None = None) -> None:
        where = f"{path}: " if path else ""
        super().__init__(f"{where}byte offset {offset}: {message}")
        self.reason = message
        self.offset = offset
        self.path = path


class CaptureWriteError(OSError):
    """Writing a capture file failed (ENOSPC, EIO, ...).

    The file was truncated back to its last complete record, so it stays readable.
    ``records_written``/``bytes_written`` count what is on disk over the writer's life (all
    rotated files, headers included in the bytes); ``filename`` is the failing file.
    """

    def __init__(
        self, errno_: int, message: str, path: str, records_written: int, bytes_written: int
    ) -> None:
        super().__init__(
            errno_,
            f"{message} ({records_written} records, {bytes_written} bytes written)",
            path,
        )
        self.records_written = records_written
        self.bytes_written = bytes_written


def pad4(n: int) -> int:
    return (n + 3) & ~3


def encode_options(order: str, options: list[tuple[int, bytes]]) -> bytes:
    """pcapng options (code, value) with padding and opt_endofopt; b"" when none."""
    if not options:
        return b""
    parts = []
    for code, value in options:
        parts.append(struct.pack(order + "HH", code, len(value)))
        parts.append(value + b"\0" * (pad4(len(value)) - len(value)))
    parts.append(struct.pack(order + "HH", OPT_ENDOFOPT, 0))
    return b"".join(parts)


def decode_options(
    order: str, buf: Buffer, start: int, end: int
) -> Iterator[tuple[int, memoryview]]:
    """(code, value) pairs of a pcapng options area; ValueError names the bad option."""
    mv = memoryview(buf)
    hdr = struct.Struct(order + "HH")
    off = start
    while off + 4 <= end:
        code, length = hdr.unpack_from(mv, off)
        if code == OPT_ENDOFOPT:
            return
        if off + 4 + length > end:
            raise ValueError(f"option {code} at block offset {off} runs past the block")
        yield code, mv[off + 4 : off + 4 + length]
        off += 4 + pad4(length)


def encode_block(order: str, block_type: int, body: Buffer) -> bytes:
    """A pcapng block: type, total length, body (padded), total length."""
    total = 12 + pad4(len(body))
    pad = b"\0" * (total - 12 - len(body))
    head = struct.pack(order + "II", block_type, total)
    return head + bytes(body) + pad + struct.pack(order + "I", total)


def tsresol_units(value: int) -> int:
    """Timestamp units per second for an if_tsresol byte (10^-n, or 2^-n when MSB set)."""
    exponent = value & 0x7F
    return 1 << exponent if value & 0x80 else int(10**exponent)


def split_timestamp(ticks: int, units: int) -> tuple[int, int]:
    """(seconds, microseconds) of a timestamp in ``units`` per second, truncating."""
    sec, frac = divmod(ticks, units)
    return sec, frac * 1_000_000 // units


# The capture host's ifindex -> name map, as an opt_comment of each IDB we write: NFLOG
# records carry interface indexes only, and names are only right on the host that captured.
# Linux names have no whitespace, so "1=lo 2=eth0" splits unambiguously (at the first "=").
IFNAMES_COMMENT_PREFIX = "ipsec-nflog ifnames:"
_IFNAME_MAX = 15  # IFNAMSIZ - 1


def _valid_ifname(name: str) -> bool:
    return (0 < len(name.encode()) <= _IFNAME_MAX and name not in (".", "..")
            and name.isprintable() and not any(c.isspace() or c in "/:" for c in name))


def encode_ifnames(names: Mapping[int, str]) -> str:
    """The IDB comment for an ifindex -> name map; names Linux could not have are left out."""
    pairs = (f"{index}={name}" for index, name in sorted(names.items())
             if 0 < index <= 0xFFFFFFFF and _valid_ifname(name))
    return " ".join([IFNAMES_COMMENT_PREFIX, *pairs])


def decode_ifnames(comment: str) -> dict[int, str] | None:
    """The map in an IDB comment of :func:`encode_ifnames`, or None for any other comment.
    Entries that are not ``index=name`` with a valid name are skipped (files are untrusted)."""
    if not comment.startswith(IFNAMES_COMMENT_PREFIX):
        return None
    names: dict[int, str] = {}
    for pair in comment[len(IFNAMES_COMMENT_PREFIX):].split():
        index, sep, name = pair.partition("=")
        if sep and index.isdecimal() and len(index) <= 10 and _valid_ifname(name):
            names[int(index)] = name
    return names


def os_description() -> str:
    u = os.uname()
    return f"{u.sysname} {u.release}"
