"""The NFLOG codec (ipsec_nflog.nflog.codec): the TLV walker and the record iterator by table,
and the C indexer (nfc_index_records) against the Python index (Packet's pure path) on the
real kernel records in tests/fixtures/*.rec and on randomly mutated copies of them."""

from __future__ import annotations

import glob
import os
import random
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from ipsec_nflog.nflog import packet as packet_module
from ipsec_nflog.nflog.codec import (
    HOST,
    INDEX_HEADER_WORDS,
    INDEX_HOT_ROW,
    INDEX_MALFORMED,
    INDEX_NO_HOOK,
    INDEX_ROW,
    INDEX_SLOTS,
    INDEX_UNKNOWN,
    NFULA,
    NLA_F_NESTED,
    NLA_F_NET_BYTEORDER,
    RECORD_HEADER,
    ParseError,
    RecordError,
    TlvError,
    walk_records,
    walk_tlvs,
)
from ipsec_nflog.nflog.live_packet import packets_from_index
from ipsec_nflog.nflog.packet import Packet

FIXTURE_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures")
FIXTURES = sorted(glob.glob(os.path.join(FIXTURE_DIR, "*.rec")))
NFGENMSG = bytes([2, 0, 0, 5])  # AF_INET, version 0, group 5


def tlv(atype: int, value: bytes, order: str = HOST, pad: bool = True) -> bytes:
    raw = struct.pack(order + "HH", 4 + len(value), atype) + value
    return raw + b"\0" * (-len(raw) % 4 if pad else 0)


def header(length: int, atype: int, order: str = HOST) -> bytes:
    return struct.pack(order + "HH", length, atype)


# -- the TLV walker by table -------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """A body, the (type, value offset, value length) the walk yields, and the TlvError it
    ends with in strict mode: (offset, nla_len or None for trailing bytes), or None."""

    name: str
    body: Callable[[str], bytes]
    walked: list[tuple[int, int, int]]
    error: tuple[int, int | None] | None = None


CASES = [
    Case("nfgenmsg only", lambda o: NFGENMSG, []),
    Case("normal", lambda o: NFGENMSG + tlv(1, b"\x08\x00\x03\x00", o) + tlv(10, b"pre\0", o)
         + tlv(12, b"\0\0\0\7", o), [(1, 8, 4), (10, 16, 4), (12, 24, 4)]),
    Case("value padded to 4", lambda o: NFGENMSG + tlv(10, b"ab", o) + tlv(2, b"\0\0\0\1", o),
         [(10, 8, 2), (2, 16, 4)]),
    Case("unaligned last attribute", lambda o: NFGENMSG + tlv(1, b"\0" * 4, o)
         + tlv(9, b"\x45" * 5, o, pad=False), [(1, 8, 4), (9, 16, 5)]),
    Case("empty value", lambda o: NFGENMSG + tlv(8, b"", o) + tlv(3, b"\0" * 16, o),
         [(8, 8, 0), (3, 12, 16)]),
    Case("nla_len < 4", lambda o: NFGENMSG + tlv(1, b"\0" * 4, o) + header(3, 2, o) + b"\0" * 4,
         [(1, 8, 4)], (12, 3)),
    Case("nla_len 0", lambda o: NFGENMSG + header(0, 9, o) + b"\0" * 8, [], (4, 0)),
    Case("nla_len past the end", lambda o: NFGENMSG + tlv(1, b"\0" * 4, o) + header(40, 9, o)
         + b"\x45" * 10, [(1, 8, 4)], (12, 40)),
    Case("nla_len one past the end", lambda o: NFGENMSG + header(9, 9, o) + b"\x45" * 4,
         [], (4, 9)),
    Case("trailing byte", lambda o: NFGENMSG + tlv(1, b"\0" * 4, o) + b"\x01", [(1, 8, 4)],
         (12, None)),
    Case("trailing non-zero bytes", lambda o: NFGENMSG + tlv(1, b"\0" * 4, o) + b"\0\0\x07",
         [(1, 8, 4)], (12, None)),
    Case("trailing zero bytes are padding", lambda o: NFGENMSG + tlv(1, b"\0" * 4, o)
         + b"\0\0\0", [(1, 8, 4)]),
    Case("nested flag masked", lambda o: NFGENMSG + tlv(NFULA.VLAN | NLA_F_NESTED, b"\0" * 8, o),
         [(NFULA.VLAN, 8, 8)]),
    Case("byte-order flag masked", lambda o: NFGENMSG
         + tlv(NFULA.MARK | NLA_F_NET_BYTEORDER, b"\0\0\0\1", o)
         + tlv(NFULA.CT | NLA_F_NESTED | NLA_F_NET_BYTEORDER, b"", o),
         [(NFULA.MARK, 8, 4), (NFULA.CT, 16, 0)]),
    Case("unknown and zero types", lambda o: NFGENMSG + tlv(0, b"x", o) + tlv(300, b"yz", o),
         [(0, 8, 1), (300, 16, 2)]),
]


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_walk_tlvs_table(case: Case, order: str) -> None:
    body = case.body(order)
    assert list(walk_tlvs(body, order, strict=False)) == case.walked
    if case.error is None:
        assert list(walk_tlvs(body, order)) == case.walked
        return
    got: list[tuple[int, int, int]] = []
    with pytest.raises(TlvError) as info:
        got.extend(walk_tlvs(body, order))
    assert got == case.walked  # everything before the bad attribute came out first
    assert (info.value.offset, info.value.length) == case.error
    assert isinstance(info.value, ParseError)


def test_walk_tlvs_bounds_and_first() -> None:
    body = NFGENMSG + tlv(1, b"\0" * 4) + tlv(3, b"\0" * 16) + tlv(3, b"\1" * 16) + header(2, 9)
    # first: the first attribute of that type only, and what follows is not checked
    assert list(walk_tlvs(body, HOST, 4, None, True, 3)) == [(3, 16, 16)]
    assert list(walk_tlvs(body, HOST, 4, None, False, 9)) == []
    with pytest.raises(TlvError):
        list(walk_tlvs(body, HOST, 4, None, True, 9))
    # start/end: a window of a bigger buffer, offsets stay the buffer's
    ring = b"\xff" * 7 + body[:32]
    assert list(walk_tlvs(ring, HOST, 11, len(ring))) == [(1, 15, 4), (3, 23, 16)]


# -- the record iterator by table ---------------------------------------------------------
def record(body: bytes, ts: tuple[int, int] = (1, 2), orig_len: int | None = None) -> bytes:
    return RECORD_HEADER.pack(*ts, len(body), len(body) if orig_len is None else orig_len) + body


RECORDS = [
    ("empty", b"", [], None),
    ("two records", record(b"abcd") + record(b"efghij", (3, 4), 100),
     [(1, 2, 4, 4, 16), (3, 4, 6, 100, 36)], None),
    ("empty body", record(b""), [(1, 2, 0, 0, 16)], None),
    ("partial header", record(b"abcd") + b"\1" * 15, [(1, 2, 4, 4, 16)], (20, True)),
    ("past the end", record(b"abcd") + record(b"efgh")[:-1], [(1, 2, 4, 4, 16)], (20, False)),
]


@pytest.mark.parametrize("buf,walked,error", [r[1:] for r in RECORDS], ids=[r[0] for r in RECORDS])
def test_walk_records_table(buf: bytes, walked: list[tuple[int, ...]],
                            error: tuple[int, bool] | None) -> None:
    assert list(walk_records(buf, strict=False)) == walked
    if error is None:
        assert list(walk_records(memoryview(buf))) == walked
        return
    got: list[tuple[int, ...]] = []
    with pytest.raises(RecordError) as info:
        got.extend(walk_records(buf))
    assert got == walked
    assert (info.value.offset, info.value.partial_header) == error


# -- the C indexer against the Python index -----------------------------------------------
def fixture_records() -> list[bytes]:
    recs = []
    for path in FIXTURES:
        with open(path, "rb") as f:
            data = f.read()
        assert RECORD_HEADER.unpack_from(data)[2] == len(data) - 16, path
        recs.append(data)
    return recs


def mutate(rec: bytes, rng: random.Random) -> bytes:
    """A damaged copy of a record: flipped bytes in the TLV headers' area, a changed
    nla_len or type, a cut body, trailing bytes, or flags on a type."""
    sec, usec, _, orig_len = RECORD_HEADER.unpack_from(rec)
    body = bytearray(rec[16:])
    starts = [value - 4 for _, value, _ in walk_tlvs(bytes(body), HOST, strict=False)]
    kind = rng.randrange(6)
    at = rng.choice(starts)
    if kind == 0:  # any byte of the first 64
        i = rng.randrange(4, min(len(body), 64))
        body[i] ^= 1 << rng.randrange(8)
    elif kind == 1:  # an nla_len
        struct.pack_into(HOST + "H", body, at, rng.choice([0, 1, 3, 4, 5, 0xFFFF,
                                                           rng.randrange(0x10000)]))
    elif kind == 2:  # a type: flags, unknown, zero
        atype = struct.unpack_from(HOST + "H", body, at + 2)[0]
        new = rng.choice([atype | NLA_F_NESTED, atype | NLA_F_NET_BYTEORDER, 0, INDEX_SLOTS,
                          rng.randrange(0x10000)])
        struct.pack_into(HOST + "H", body, at + 2, new)
    elif kind == 3:  # cut, anywhere
        del body[rng.randrange(4, len(body)):]
    elif kind == 4:  # trailing bytes: padding or not
        body += bytes(rng.choice([0, 0, 1, 0x80]) for _ in range(rng.randrange(1, 4)))
    else:  # the last attribute's length, so it ends before or after the body
        struct.pack_into(HOST + "H", body, starts[-1], len(body) - starts[-1]
                         + rng.choice([-3, -1, 1, 3, 4]))
    return RECORD_HEADER.pack(sec, usec, len(body), orig_len) + bytes(body)


def c_index(ring: bytes, count: int) -> list[tuple[tuple[int, ...], bytes]]:
    """Each record's C index row, as fields and as the bytes the iterator reads."""
    from ipsec_nflog.capture._native import ffi, lib

    rows = ffi.new("struct nfc_index[]", count)
    n = lib.nfc_index_records(ffi.from_buffer(ring), len(ring), count, rows)
    size = INDEX_ROW.size
    return [((r.body_off, r.caplen, r.ts_sec, r.ts_usec, r.orig_len, *r.attr), bytes(
        ffi.buffer(rows + i, size))) for i, r in enumerate(rows[0:n])]


def outcome(p: Packet) -> object:
    try:
        ip = p.ip  # a live packet decodes it from unset state, like its cold fields
        return p.as_dict(), None if ip is None else bytes(ip)
    except ParseError:
        return ParseError


def assert_agree(recs: list[bytes]) -> int:
    """C and Python index every record alike; returns how many C found malformed."""
    ring = b"".join(recs)
    rows = c_index(ring, len(recs))
    records = list(walk_records(ring))
    assert len(rows) == len(records) == len(recs)
    malformed = 0
    for (row, row_bytes), (sec, usec, caplen, orig_len, body) in zip(rows, records,
                                                                        strict=True):
        assert row[:INDEX_HEADER_WORDS] == (body, caplen, sec, usec, orig_len)
        raw = ring[body : body + caplen]
        flags = row[INDEX_HEADER_WORDS]
        try:
            python = packet_module._build_index(raw, HOST)
        except ParseError:
            python = None
        if flags & INDEX_MALFORMED:
            malformed += 1
            # C gives up on any byte after the walk; Python accepts 1-3 zero bytes of padding
            if python is not None:
                walked = list(walk_tlvs(raw, HOST))
                end = walked[-1][1] + ((walked[-1][2] + 3) & ~3) if walked else 4
                assert 0 < len(raw) - end < 4 and not any(raw[end:]), raw.hex()
        else:
            assert python is not None, raw.hex()
            assert tuple(python) == (0,) * INDEX_HEADER_WORDS + row[INDEX_HEADER_WORDS:], raw.hex()
        # what a user sees: the live (C-indexed) packet and the file (pure) packet are alike
        live = next(packets_from_index(ring, row_bytes, None))
        assert live.raw == raw
        pure = Packet(raw, sec, usec, orig_len, HOST, None)
        assert outcome(live) == outcome(pure), raw.hex()
    return malformed


needs_little_endian = pytest.mark.skipif(sys.byteorder != "little",
                                         reason="the .rec fixtures are little-endian records")


@pytest.mark.requires_core
def test_index_layout_matches_the_c_header() -> None:
    from ipsec_nflog.capture._native import ffi, lib

    assert (lib.NFC_IDX_SLOTS, lib.NFC_IDX_UNKNOWN, lib.NFC_IDX_MALFORMED) == (
        INDEX_SLOTS, INDEX_UNKNOWN, INDEX_MALFORMED)
    assert ffi.sizeof("struct nfc_index") == INDEX_ROW.size == 4 * INDEX_HEADER_WORDS + 2 * (
        INDEX_SLOTS + 4)
    assert lib.NFC_IDX_NO_HOOK == INDEX_NO_HOOK
    # the iterator's part of a row: the payload and prefix slots, then the ready values
    hot = INDEX_ROW.unpack(bytes(range(INDEX_ROW.size)))
    h = INDEX_HEADER_WORDS
    assert INDEX_HOT_ROW.unpack(bytes(range(INDEX_ROW.size))) == (
        *hot[:h + 1], hot[h + NFULA.PAYLOAD], hot[h + NFULA.PREFIX], *hot[h + INDEX_SLOTS:][:3])
    assert len(ffi.new("struct nfc_index *").attr) == INDEX_SLOTS


@needs_little_endian
@pytest.mark.requires_core
def test_c_and_python_index_agree_on_kernel_fixtures() -> None:
    recs = fixture_records()
    assert len(recs) >= 7
    assert assert_agree(recs) == 0
    unknown = [r for r, _ in c_index(b"".join(recs), len(recs))
               if r[INDEX_HEADER_WORDS] & INDEX_UNKNOWN]
    assert len(unknown) == 1  # nflog_unknown_attr.rec


@needs_little_endian
@pytest.mark.requires_core
@pytest.mark.parametrize("seed", range(4))
def test_c_and_python_index_agree_on_mutated_fixtures(seed: int) -> None:
    rng = random.Random(seed)
    recs = [mutate(rec, rng) for rec in fixture_records() for _ in range(150)]
    malformed = assert_agree(recs)
    assert 0 < malformed < len(recs)  # the mutations hit both sides of the rules


@pytest.mark.requires_core
def test_c_and_python_index_agree_on_the_table() -> None:
    assert assert_agree([record(case.body(HOST)) for case in CASES]) == sum(
        case.error is not None or case.name.startswith("trailing") for case in CASES)
