"""ipsec_nflog.ipsec.esp_packet through EspDecryptor: ESP behind IPv6 extension headers and
in fragments, which the committed captures do not hold (packets built here, no root)."""

from __future__ import annotations

import struct

import pytest

from ipsec_nflog.ipsec import decrypt
from ipsec_nflog.ipsec.decrypt import EspDecryptor
from ipsec_nflog.ipsec.esp_packet import locate_esp
from tests.ipsec.test_decrypt import esp_encrypt, icmp_echo, ipv4, ipv6, make_sa

SRC6, DST6 = "2001:db8::1", "2001:db8::2"
HOP_BY_HOP, DEST_OPTS, FRAGMENT, ESP = 0, 60, 44, 50


def options_header(next_header: int) -> bytes:
    """A hop-by-hop / destination options header of 8 bytes (PadN)."""
    return bytes([next_header, 0, 1, 4, 0, 0, 0, 0])


def fragment_header(next_header: int, offset: int, more: bool) -> bytes:
    return struct.pack(">BBHI", next_header, 0, (offset << 3) | more, 0x1234)


def sa_and_esp() -> tuple[decrypt.EspDecryptor, bytes, bytes]:
    sa = make_sa("AES-CBC [RFC3602]", "HMAC-SHA-256-128 [RFC4868]", spi=0x77, src=SRC6,
                 dst=DST6)
    inner = icmp_echo("10.0.1.1", "10.0.2.2", 3)
    return EspDecryptor([sa]), inner, esp_encrypt(sa, 9, inner, 4)


def test_esp_behind_ipv6_extension_headers_decrypts() -> None:
    dec, inner, esp = sa_and_esp()
    pkt = ipv6(SRC6, DST6, HOP_BY_HOP, options_header(DEST_OPTS) + options_header(ESP) + esp)
    r = dec.decrypt(pkt)
    assert r is not None and r.ok and (r.spi, r.seq, r.ip_packet) == (0x77, 9, inner), r
    assert (r.src, r.dst) == (SRC6, DST6)


def test_ipv6_fragments_first_is_reported_later_ones_are_not_esp() -> None:
    dec, _, esp = sa_and_esp()
    first = ipv6(SRC6, DST6, FRAGMENT, fragment_header(ESP, 0, True) + esp[:48])
    later = ipv6(SRC6, DST6, FRAGMENT, fragment_header(ESP, 6, False) + esp[48:])
    r = dec.decrypt(first)
    assert r is not None and r.status == decrypt.FRAGMENT and (r.spi, r.seq) == (0x77, 9)
    assert dec.decrypt(later) is None
    assert dec.stats.counts == {decrypt.FRAGMENT: 1}


@pytest.mark.parametrize(("flags", "status"), [(0x2000, decrypt.FRAGMENT), (0x0006, None)],
                         ids=["first-fragment", "later-fragment"])
def test_ipv4_fragments(flags: int, status: str | None) -> None:
    sa = make_sa("AES-CBC [RFC3602]", "HMAC-SHA-256-128 [RFC4868]")
    pkt = bytearray(ipv4(sa.src, sa.dst, ESP, esp_encrypt(sa, 1, b"x" * 20, 59)))
    struct.pack_into(">H", pkt, 6, flags)
    r = EspDecryptor([sa]).decrypt(bytes(pkt))
    assert (r.status if r is not None else None) == status


def test_a_truncated_extension_header_is_not_esp() -> None:
    pkt = ipv6(SRC6, DST6, HOP_BY_HOP, options_header(ESP)[:6])
    assert locate_esp(pkt, frozenset({4500})) is None
