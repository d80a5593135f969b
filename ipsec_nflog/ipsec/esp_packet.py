"""Finding the ESP in an IP packet (IPv4 or IPv6, directly or in UDP per RFC 3948), and
rebuilding a transport-mode packet around its decrypted payload."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["NATT_PORT", "PROTO_ESP", "PROTO_UDP", "LocatedEsp", "locate_esp", "rebuild_ip"]

PROTO_UDP, PROTO_ESP = 17, 50
NATT_PORT = 4500
_IPV6_EXT = {0, 43, 60}        # hop-by-hop, routing, destination options: skipped
_IPV6_FRAGMENT = 44


@dataclass(frozen=True)
class LocatedEsp:
    """The ESP bytes of a packet and what the outer IP header says about them."""

    esp: bytes
    src: str
    dst: str
    header: bytes      # outer IP header (IPv4 with options; IPv6 fixed header)
    version: int
    udp_encap: bool
    truncated: bool
    fragment: bool


class _Outer(NamedTuple):   # a tuple: built for every packet
    """An outer IP header, read: where its payload is and what it carries."""

    proto: int
    offset: int        # of the payload (after IPv4 options / IPv6 extension headers)
    end: int           # of the payload, by the header's length field
    src: bytes        # addresses as on the wire: made text only for ESP
    dst: bytes
    header: bytes
    fragment: bool


def _ipv4(packet: bytes) -> _Outer | None:
    ihl = (packet[0] & 0x0F) * 4
    if ihl < 20 or len(packet) < ihl:
        return None
    total, frag = struct.unpack_from(">H", packet, 2)[0], struct.unpack_from(">H", packet, 6)[0]
    if frag & 0x1FFF:                    # a later fragment: no ESP header in it
        return None
    return _Outer(packet[9], ihl, total, packet[12:16], packet[16:20], packet[:ihl],
                  bool(frag & 0x2000))


def _ipv6(packet: bytes) -> _Outer | None:
    if len(packet) < 40:
        return None
    plen = struct.unpack_from(">H", packet, 4)[0]
    proto, off, fragment = packet[6], 40, False
    while proto in _IPV6_EXT or proto == _IPV6_FRAGMENT:
        if off + 8 > len(packet):
            return None
        if proto == _IPV6_FRAGMENT:
            if struct.unpack_from(">H", packet, off + 2)[0] & 0xFFF8:
                return None                  # a later fragment
            fragment = True
            proto, off = packet[off], off + 8
        else:
            proto, off = packet[off], off + (packet[off + 1] + 1) * 8
    return _Outer(proto, off, 40 + plen, packet[8:24], packet[24:40], packet[:40], fragment)


def _udp_encapsulated(body: bytes, natt_ports: frozenset[int]) -> bytes | None:
    """The ESP in a UDP datagram on a NAT-T port; None for IKE, keepalives, other ports."""
    if len(body) < 8:
        return None
    sport, dport = struct.unpack_from(">HH", body)
    if sport not in natt_ports and dport not in natt_ports:
        return None
    body = body[8:]
    if len(body) == 1 and body[0] == 0xFF:     # NAT-keepalive
        return None
    if len(body) >= 4 and body[:4] == b"\0\0\0\0":   # non-ESP marker: IKE
        return None
    return body or None


def locate_esp(packet: bytes, natt_ports: frozenset[int]) -> LocatedEsp | None:
    """The ESP bytes of an IP packet, or None if it carries no ESP."""
    if len(packet) < 20:
        return None
    version = packet[0] >> 4
    outer = _ipv4(packet) if version == 4 else _ipv6(packet) if version == 6 else None
    if outer is None:
        return None
    truncated = outer.end > len(packet)
    body = packet[outer.offset:min(outer.end, len(packet))] if outer.end >= outer.offset else b""
    udp_encap = outer.proto == PROTO_UDP
    if udp_encap:
        esp = _udp_encapsulated(body, natt_ports)
        if esp is None:
            return None
        body = esp
    elif outer.proto != PROTO_ESP:
        return None
    address = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    return LocatedEsp(body, str(address(outer.src)), str(address(outer.dst)), outer.header,
                      version, udp_encap, truncated, outer.fragment)


def rebuild_ip(loc: LocatedEsp, next_header: int, payload: bytes) -> bytes:
    """Transport mode: the outer IP header, now carrying the decrypted payload."""
    if loc.version == 4:
        hdr = bytearray(loc.header)
        struct.pack_into(">H", hdr, 2, len(hdr) + len(payload))
        hdr[6:8] = b"\0\0"                 # the decrypted packet is whole
        hdr[9] = next_header
        hdr[10:12] = b"\0\0"
        s = sum(struct.unpack(f">{len(hdr) // 2}H", bytes(hdr)))
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        struct.pack_into(">H", hdr, 10, ~s & 0xFFFF)
        return bytes(hdr) + payload
    hdr = bytearray(loc.header[:40])
    struct.pack_into(">H", hdr, 4, len(payload))
    hdr[6] = next_header
    return bytes(hdr) + payload
