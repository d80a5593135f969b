"""The NFLOG parser against real kernel bytes (tests/fixtures/*.rec, made by
tests/fixtures/capture_nflog_fixtures.py) and against hand-built edge cases."""

from __future__ import annotations

import json
import os
import socket
import struct

import dpkt
import pytest

from ipsec_nflog.nflog.packet import NFULA, Packet, ParseError, orig_len_from_payload, parse_nflog

FIX = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures")
MANIFEST = json.load(open(os.path.join(FIX, "nflog_fixtures.json")))


def load(name: str) -> Packet:
    data = open(os.path.join(FIX, name + ".rec"), "rb").read()
    sec, usec, caplen, orig = struct.unpack_from("<IIII", data)
    assert caplen == len(data) - 16
    return parse_nflog(data[16:], sec, usec, orig, byteorder="<")


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_fixture_common_fields(name: str) -> None:
    m = MANIFEST[name]
    p = load(name)
    assert p.group == m["group"]
    assert p.family == m["family"]
    assert p.version == 0
    assert p.hw_protocol == (0x0800 if m["family"] == socket.AF_INET else 0x86DD)
    assert p.seq is not None and p.seq_global is not None
    assert p.mark is None or p.mark == 0
    assert p.uid is None or isinstance(p.uid, int)
    ip = p.ip
    assert ip is not None
    udp = ip.data
    assert isinstance(udp, dpkt.udp.UDP)
    assert udp.dport == m["port"]
    assert p.unknown == {}


@pytest.mark.parametrize("name", ["nflog_ipv4_in_prefix", "nflog_ipv6_in_prefix"])
def test_inbound_has_kernel_timestamp_and_indev(name: str) -> None:
    p = load(name)
    assert p.hook_name == "INPUT"
    assert p.prefix == "fixture-in"
    assert p.indev is not None and p.outdev is None
    assert not p.timestamp_synthesized
    assert p.kernel_timestamp == pytest.approx(p.timestamp, abs=1e-6)
    assert p.hwtype == 1  # ARPHRD_ETHER
    assert p.hwaddr is not None and len(p.hwaddr) == 6
    assert p.hwheader is not None and len(p.hwheader) == 14
    assert p.payload is not None
    assert p.payload.endswith(bytes(range(200)))
    assert p.orig_len == len(p.raw)


@pytest.mark.parametrize("name", ["nflog_ipv4_out_prefix", "nflog_ipv6_out_prefix"])
def test_outbound_has_no_kernel_timestamp(name: str) -> None:
    p = load(name)
    assert p.hook_name == "OUTPUT"
    assert p.prefix == "fixture-out"
    assert p.outdev is not None and p.indev is None
    assert p.kernel_timestamp is None
    assert p.timestamp_synthesized
    assert p.timestamp > 1.6e9  # the receive time stands in for it
    assert p.hwaddr is None and p.hwheader is None


@pytest.mark.parametrize("name,hdr", [("nflog_ipv4_in_truncated", 28),
                                       ("nflog_ipv6_in_truncated", 48)])
def test_truncated_payload_keeps_original_length(name: str, hdr: int) -> None:
    p = load(name)
    full = hdr + MANIFEST[name]["payload_len"]
    assert p.prefix == ""  # iptables NFLOG sends an empty prefix attribute, not none
    assert p.payload is not None and len(p.payload) == 48
    assert p.orig_len == len(p.raw) + full - 48
    assert orig_len_from_payload(p.payload, len(p.raw)) == p.orig_len


def test_unknown_attribute_is_kept() -> None:
    p = load("nflog_unknown_attr")
    assert p.unknown == {99: b"\xde\xad\xbe\xef"}
    assert p.prefix == "fixture-in"


def test_absent_attributes_are_none() -> None:
    body = bytes([2, 0, 0, 9])  # nfgenmsg only
    p = parse_nflog(body)
    assert p.group == 9
    for name in ("hw_protocol", "hook", "mark", "indev", "outdev", "physindev", "physoutdev",
                 "hwaddr", "hwtype", "hwheader", "payload", "prefix", "uid", "gid", "seq",
                 "seq_global", "ct", "ct_info", "vlan", "l2hdr", "ip", "kernel_timestamp"):
        assert getattr(p, name) is None, name
    assert p.timestamp_synthesized


def tlv(t: int, value: bytes, order: str = "=") -> bytes:
    raw = struct.pack(order + "HH", 4 + len(value), t) + value
    return raw + b"\0" * (-len(raw) % 4)


def test_nested_flag_is_masked_and_vlan_decoded() -> None:
    inner = tlv(1, struct.pack(">H", 0x8100)) + tlv(2, struct.pack(">H", 42))
    body = bytes([2, 0, 0, 1]) + tlv(NFULA.VLAN | 0x8000, inner) + tlv(NFULA.CT | 0x8000, b"ct")
    p = parse_nflog(body)
    assert p.vlan == (0x8100, 42)
    assert p.ct == b"ct"
    assert p.unknown == {}


def test_other_byte_order() -> None:
    other = ">" if struct.pack("=H", 1) == b"\x01\x00" else "<"
    body = bytes([2, 0, 0, 5]) + tlv(NFULA.PREFIX, b"swapped\0", other) + tlv(
        NFULA.MARK, struct.pack(">I", 7), other)
    p = parse_nflog(body, byteorder=other)
    assert p.prefix == "swapped"
    assert p.mark == 7


@pytest.mark.parametrize("body", [
    b"\x02\x00",  # shorter than nfgenmsg
    bytes([2, 0, 0, 1]) + struct.pack("=HH", 2, 1),  # length below the TLV header
    bytes([2, 0, 0, 1]) + struct.pack("=HH", 40, 9) + b"abc",  # runs past the end
    bytes([2, 0, 0, 1]) + tlv(10, b"x\0") + b"\x01\x02",  # junk after the TLVs
])
def test_malformed_bodies_raise_parse_error(body: bytes) -> None:
    with pytest.raises(ParseError):
        parse_nflog(body)


def test_orig_len_needs_ip() -> None:
    assert orig_len_from_payload(b"\x00" * 60, 100) == 100
    ip4 = bytearray(20)
    ip4[0] = 0x45
    ip4[2:4] = (1500).to_bytes(2, "big")
    assert orig_len_from_payload(bytes(ip4), 80) == 80 + 1480
