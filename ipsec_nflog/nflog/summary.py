r"""One-line, tcpdump-like descriptions of packets, with ESP SPI/seq and IKE exchange types.
Pure Python (dpkt); used by the CLI, the demo and ``read``.

Everything printed from a packet or a file goes through :func:`printable`, the one place
where untrusted strings (NFLOG prefixes, interface names, file names, key-log fields) are made
safe for a terminal: a prefix carrying ESC, BEL, CR or LF could otherwise move the cursor,
rewrite earlier lines or run terminal commands. Like tcpdump, non-printable characters are
shown, not dropped, in C/Python notation rather than tcpdump's ``^[`` / ``M-`` (the notation
Python's own messages use, so a ``repr`` in an error message reads the same): ``\x1b``,
``\x07``, ``\r``, ``\n``, ``\t``, ``\u202e``. Backslashes are kept as they are, like
tcpdump keeps them: text can imitate an escape, but never act as one. Printable Unicode
(``é``, U+FFFD for undecodable bytes) is kept.

A timestamp that the platform cannot turn into a time of day (pcapng allows 64-bit ones) is
shown as its raw value, ``@SECONDS.MICROSECONDS`` since the epoch, instead of stopping.
"""

from __future__ import annotations

import datetime
import socket
import struct
from typing import TYPE_CHECKING, Any, Union

from ipsec_nflog.nflog.packet import Packet

if TYPE_CHECKING:
    from ipsec_nflog.files.reader import FilePacket

__all__ = ["describe_ip", "printable", "summarize"]

IKE_EXCHANGES = {
    2: "Main Mode", 4: "Aggressive", 5: "Informational(v1)", 32: "Quick Mode",
    34: "IKE_SA_INIT", 35: "IKE_AUTH", 36: "CREATE_CHILD_SA", 37: "INFORMATIONAL",
    43: "IKE_INTERMEDIATE",
}
IKE_PORTS = (500, 4500)
PROTO_ESP, PROTO_AH = 50, 51


_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(char: str) -> str:
    named = _ESCAPES.get(char)
    if named is not None:
        return named
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte kept by errors="surrogateescape"
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: str) -> str:
    """``text`` safe to print on a terminal: non-printable characters (controls, DEL, C1
    controls, format characters such as U+202E) escaped, see the module docstring.
    Printable text comes back unchanged."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _clock(pkt: Union[Packet, FilePacket], tz: datetime.tzinfo | None) -> str:
    """HH:MM:SS.ffffff, or the raw ``@sec.usec`` when the platform cannot convert it."""
    try:
        return datetime.datetime.fromtimestamp(pkt.timestamp, tz).strftime("%H:%M:%S.%f")
    except (OverflowError, ValueError, OSError):
        return f"@{pkt.ts_sec}.{pkt.ts_usec:06d}"


def _addr(ip: Any) -> tuple[str, str]:
    fam = socket.AF_INET6 if len(ip.src) == 16 else socket.AF_INET
    return socket.inet_ntop(fam, ip.src), socket.inet_ntop(fam, ip.dst)


def _esp(data: bytes) -> str:
    if len(data) < 8:
        return f"ESP truncated ({len(data)} bytes)"
    spi, seq = struct.unpack_from(">II", data)
    return f"ESP(spi=0x{spi:08x},seq=0x{seq:x}), length {len(data)}"


def _ike(data: bytes, natt: bool) -> str:
    if natt:
        if len(data) == 1 and data[0] == 0xFF:
            return "NAT-keepalive"
        if len(data) >= 4 and data[:4] == b"\0\0\0\0":
            data = data[4:]  # non-ESP marker: IKE follows
        else:
            return "UDP-encap " + _esp(data)
    if len(data) < 28:
        return f"IKE truncated ({len(data)} bytes)"
    ispi, rspi, _np, ver, xchg, flags, msgid, length = struct.unpack_from(">QQBBBBII", data)
    role = "I" if flags & 0x08 else "R"
    kind = "resp" if flags & 0x20 else "req"
    name = IKE_EXCHANGES.get(xchg, f"exchange {xchg}")
    return (f"IKEv{ver >> 4} {name} {kind} msgid {msgid} [{role}] "
            f"spi {ispi:016x}/{rspi:016x}, length {length}")


_IP6_EXTENSIONS = (0, 43, 60)  # hop-by-hop, routing, destination options: (len + 1) * 8


def _ip6_upper(raw: bytes) -> tuple[int, bytes]:
    """The protocol after an IPv6 packet's extension headers and its bytes."""
    nxt, off = raw[6] if len(raw) >= 40 else 59, 40
    while off + 8 <= len(raw) and nxt in (*_IP6_EXTENSIONS, 44):
        size = 8 if nxt == 44 else (raw[off + 1] + 1) * 8
        nxt, off = raw[off], off + size
    return nxt, raw[off:]


def describe_ip(ip: Any, raw: bytes | None = None) -> str:
    """``src > dst: what`` for a dpkt IP/IP6 object (``raw``: its bytes, when known)."""
    import dpkt

    src, dst = _addr(ip)
    p = ip.data
    proto = ip.p if isinstance(ip, dpkt.ip.IP) else ip.nxt
    if isinstance(p, dpkt.udp.UDP):
        body = bytes(p.data)
        if p.sport in IKE_PORTS or p.dport in IKE_PORTS:
            what = _ike(body, natt=4500 in (p.sport, p.dport))
        else:
            what = f"UDP, length {len(body)}"
        return f"{src}.{p.sport} > {dst}.{p.dport}: {what}"
    if isinstance(p, dpkt.tcp.TCP):
        flags = "".join(c for bit, c in ((0x02, "S"), (0x01, "F"), (0x04, "R"), (0x08, "P"),
                                         (0x10, "."))
                        if p.flags & bit)
        return f"{src}.{p.sport} > {dst}.{p.dport}: Flags [{flags}], length {len(p.data)}"
    if isinstance(p, (dpkt.icmp.ICMP, dpkt.icmp6.ICMP6)):
        names = {0: "echo reply", 8: "echo request", 128: "echo request", 129: "echo reply"}
        what = names.get(p.type, f"type {p.type}")
        extra = ""
        if p.type in names and isinstance(p.data, (dpkt.icmp.ICMP.Echo, dpkt.icmp6.ICMP6.Echo)):
            extra = f", id {p.data.id}, seq {p.data.seq}"
        v = "ICMP6" if isinstance(p, dpkt.icmp6.ICMP6) else "ICMP"
        return f"{src} > {dst}: {v} {what}{extra}"
    data = bytes(p) if not isinstance(p, bytes) else p
    if not isinstance(ip, dpkt.ip.IP):  # dpkt takes IPv6 ESP/AH for extension headers
        if raw is None:
            try:
                raw = bytes(ip)
            except Exception:  # dpkt cannot always write back what it parsed
                raw = b""
        if raw:
            proto, data = _ip6_upper(raw)
    if proto == PROTO_ESP:
        return f"{src} > {dst}: {_esp(data)}"
    if proto == PROTO_AH:
        spi, seq = struct.unpack_from(">II", data, 4) if len(data) >= 12 else (0, 0)
        return f"{src} > {dst}: AH(spi=0x{spi:08x},seq=0x{seq:x})"
    return f"{src} > {dst}: ip-proto-{proto}, length {len(data)}"


def _device(name: str | None, index: int | None) -> str:
    """The interface's name where the capture knew it, else its index (``if2``): a file
    read elsewhere must never be labelled with the reading host's names."""
    return name or (f"if{index}" if index else "-")


def summarize(pkt: Union[Packet, FilePacket], *, utc: bool = False) -> str:
    """``time group prefix hook in/out: ip summary`` for one packet, safe to print
    (:func:`printable`)."""
    t = _clock(pkt, datetime.timezone.utc if utc else None)
    mark = "~" if pkt.timestamp_synthesized else " "
    if pkt.group is None:  # not NFLOG (a raw or Ethernet file): no NFLOG columns, as tcpdump
        head = f"{t}{mark}"
    else:
        devs = f"{_device(pkt.indev_name, pkt.indev)}>{_device(pkt.outdev_name, pkt.outdev)}"
        prefix = pkt.prefix or ""
        head = f"{t}{mark}nflog:{pkt.group} {pkt.hook_name:<11} {devs:<15} {prefix!s:<12}"
    ip = pkt.ip
    if ip is None:
        payload = pkt.payload
        what = f"no IP payload ({len(payload)} bytes)" if payload else "no payload"
    else:
        try:
            what = describe_ip(ip, pkt.payload)
        except Exception as e:  # a summary must never stop a capture
            what = f"undecodable IP packet ({type(e).__name__})"
    trunc = f" [truncated {pkt.orig_len - len(pkt.raw)}]" if pkt.orig_len > len(pkt.raw) else ""
    return printable(f"{head} {what}{trunc}")
