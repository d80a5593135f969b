"""What a captured IPv4 packet of an IPsec test is: IKE, ESP (plain or in UDP 4500), a NAT-T
keepalive or an ICMP echo, with the fields tests assert on (exchange, SPI, sequence)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["IKE_AUTH", "IKE_SA_INIT", "INFORMATIONAL", "Captured", "Seen", "classify"]

IKE_SA_INIT, IKE_AUTH, INFORMATIONAL = 34, 35, 37


class Captured(Protocol):
    """A live :class:`~ipsec_nflog.nflog.packet.Packet` or one read from a file."""

    @property
    def hook(self) -> int | None: ...

    @property
    def ip(self) -> Any: ...  # a dpkt IP object (dpkt is untyped), or None


@dataclass(frozen=True)
class Seen:
    kind: str            # "ike", "esp", "icmp", "keepalive", "other"
    hook: int | None
    src: str
    dst: str
    sport: int = 0
    dport: int = 0
    exchange: int = 0    # IKE exchange type
    response: bool = False
    spi: int = 0
    seq: int = 0         # ESP sequence number / ICMP sequence number
    icmp_type: int = -1


def _ip(b: bytes) -> str:
    return ".".join(str(x) for x in b)


def _udp(hook: int | None, src: str, dst: str, sport: int, dport: int, data: bytes) -> Seen:
    if dport == 500 or (dport == 4500 and data[:4] == b"\0\0\0\0"):
        hdr = data if dport == 500 else data[4:]
        if len(hdr) >= 20:
            return Seen("ike", hook, src, dst, sport, dport, exchange=hdr[18],
                        response=bool(hdr[19] & 0x20))
    if dport == 4500 and data == b"\xff":
        return Seen("keepalive", hook, src, dst, sport, dport)
    if dport == 4500 and len(data) >= 8:
        spi, seq = struct.unpack("!II", data[:8])
        return Seen("esp", hook, src, dst, sport, dport, spi=spi, seq=seq)
    return Seen("other", hook, src, dst, sport, dport)


def classify(pkt: Captured) -> Seen:
    """IKE (500, or 4500 with the non-ESP marker), ESP (protocol 50 or ESP-in-UDP on 4500),
    NAT-T keepalive, ICMP echo; anything else (and IPv6) is ``"other"``."""
    ip = pkt.ip
    if ip is None or len(ip.src) != 4:
        return Seen("other", pkt.hook, "", "")
    src, dst = _ip(ip.src), _ip(ip.dst)
    if ip.p == 50:
        spi, seq = struct.unpack("!II", bytes(ip.data)[:8])
        return Seen("esp", pkt.hook, src, dst, spi=spi, seq=seq)
    if ip.p == 1:
        icmp = ip.data
        seq = struct.unpack("!H", bytes(icmp.data)[2:4])[0] if icmp.type in (0, 8) else 0
        return Seen("icmp", pkt.hook, src, dst, icmp_type=icmp.type, seq=seq)
    if ip.p == 17:
        udp = ip.data
        return _udp(pkt.hook, src, dst, udp.sport, udp.dport, bytes(udp.data))
    return Seen("other", pkt.hook, src, dst)
