"""The NFLOG codec (ipsec_nflog.nflog.codec): the TLV walker and the record iterator by table,
and the C core's rows for the per-packet iterator (nfc_packet_rows) against the Python parser
(Packet's pure path) on the real kernel records in tests/fixtures/*.rec and on randomly
mutated copies of them."""

from __future__ import annotations

import copy
import glob
import os
import pickle
import random
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from ipsec_nflog.nflog.codec import (
    HOST,
    INDEX_SLOTS,
    NFULA,
    NLA_F_NESTED,
    NLA_F_NET_BYTEORDER,
    PACKET_ROW,
    PREFIX_SPAN,
    RECORD_HEADER,
    ROW_NO_HOOK,
    ROW_PREFIXES,
    ROW_SLOW,
    ParseError,
    RecordError,
    TlvError,
    walk_records,
    walk_tlvs,
)
from ipsec_nflog.nflog.live_packet import LivePacket, packets_from_rows
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


@dataclass(frozen=True)
class Rows:
    """What nfc_packet_rows made for a run: the rows as tuples and as bytes, the prefix
    table's bytes and its prefixes."""

    rows: list[tuple[int, ...]]
    row_bytes: bytes
    span_bytes: bytes
    prefixes: list[bytes]


def c_rows(ring: bytes, count: int) -> Rows:
    from ipsec_nflog.capture.rows import packet_rows

    row_bytes, span_bytes = packet_rows(ring, count)
    return Rows(list(PACKET_ROW.iter_unpack(row_bytes)), row_bytes, span_bytes,
                [ring[a:b] for a, b in PREFIX_SPAN.iter_unpack(span_bytes)])


def outcome(p: Packet) -> object:
    try:
        ip = p.ip  # a live packet decodes it from unset state, like its cold fields
        return p.as_dict(), None if ip is None else bytes(ip)
    except ParseError:
        return ParseError


def prefix_bytes(pure: Packet) -> bytes | None:
    """The prefix as the C core stores it: its bytes up to the NUL."""
    value = pure._get(NFULA.PREFIX)
    return None if value is None else value.split(b"\0", 1)[0]


def assert_agree(recs: list[bytes]) -> int:
    """C's rows and the Python parser agree on every record, and so do the live packets made
    from the rows and the pure ones; returns how many records C left to Python."""
    ring = b"".join(recs)
    made = c_rows(ring, len(recs))
    records = list(walk_records(ring))
    assert len(made.rows) == len(records) == len(recs)
    assert len(set(made.prefixes)) == len(made.prefixes) <= ROW_PREFIXES
    slow = 0
    live = list(packets_from_rows(ring, made.row_bytes, made.span_bytes, None))
    for row, (sec, usec, caplen, orig_len, body), packet in zip(made.rows, records, live,
                                                                 strict=True):
        at, ts_sec, ts_usec, olen, start, end, flags, prefix, hook = row
        assert (ts_sec, ts_usec, olen) == (sec, usec, orig_len)
        assert at == body - RECORD_HEADER.size
        raw = ring[body : body + caplen]
        pure = Packet(raw, sec, usec, orig_len, HOST, None)
        try:
            pure.validate()
            valid = True
        except ParseError:
            valid = False
        if flags & ROW_SLOW:
            slow += 1
            assert not isinstance(packet, LivePacket)
            walked = list(walk_tlvs(raw, HOST, strict=False))
            end_of_walk = walked[-1][1] + ((walked[-1][2] + 3) & ~3) if walked else 4
            if valid and end_of_walk < len(raw):
                # C gives up on any byte after the walk; Python accepts 1-3 zero bytes
                assert 0 < len(raw) - end_of_walk < 4 and not any(raw[end_of_walk:])
            elif valid:  # the run had more distinct prefixes than the table holds
                assert len(made.prefixes) == ROW_PREFIXES
                assert prefix_bytes(pure) not in made.prefixes, raw.hex()
        else:
            assert valid, raw.hex()
            assert isinstance(packet, LivePacket)
            payload = pure.payload
            assert (ring[start:end] if start else None) == payload, raw.hex()
            assert (made.prefixes[prefix - 1] if prefix else None) == prefix_bytes(pure)
            assert (None if hook == ROW_NO_HOOK else hook) == pure.hook, raw.hex()
        # what a user sees: the live packet and the file (pure) packet are alike
        assert (packet.raw, packet.ts_sec, packet.ts_usec, packet.orig_len) == (
            raw, sec, usec, orig_len)
        assert outcome(packet) == outcome(Packet(raw, sec, usec, orig_len, HOST, None)), raw.hex()
    return slow


needs_little_endian = pytest.mark.skipif(sys.byteorder != "little",
                                         reason="the .rec fixtures are little-endian records")


@pytest.mark.requires_core
def test_row_layout_matches_the_c_header() -> None:
    from ipsec_nflog.capture._native import ffi, lib

    assert (lib.NFC_ROW_SLOW, lib.NFC_ROW_NO_HOOK, lib.NFC_ROW_PREFIXES) == (
        ROW_SLOW, ROW_NO_HOOK, ROW_PREFIXES)
    assert ffi.sizeof("struct nfc_packet_row") == PACKET_ROW.size == 28
    assert ffi.sizeof("struct nfc_span") == PREFIX_SPAN.size
    fields = ("rec_off", "ts_sec", "ts_usec", "orig_len", "payload_start", "payload_end",
              "flags", "prefix", "hook")
    row = ffi.new("struct nfc_packet_row *", {f: i + 1 for i, f in enumerate(fields)})
    assert PACKET_ROW.unpack(ffi.buffer(row)[:]) == tuple(range(1, len(fields) + 1))
    span = ffi.new("struct nfc_span *", {"start": 7, "end": 8})
    assert PREFIX_SPAN.unpack(ffi.buffer(span)[:]) == (7, 8)


@needs_little_endian
@pytest.mark.requires_core
def test_c_and_python_agree_on_kernel_fixtures() -> None:
    recs = fixture_records()
    assert len(recs) >= 7
    assert assert_agree(recs) == 0
    ring = b"".join(recs)
    made = c_rows(ring, len(recs))
    live = list(packets_from_rows(ring, made.row_bytes, made.span_bytes, None))
    assert sum(1 for p in live if p.unknown) == 1  # nflog_unknown_attr.rec
    assert all(isinstance(p, LivePacket) for p in live)
    assert {p.prefix for p in live} - {None}  # the fixtures carry prefixes


@needs_little_endian
@pytest.mark.requires_core
@pytest.mark.parametrize("seed", range(4))
def test_c_and_python_agree_on_mutated_fixtures(seed: int) -> None:
    rng = random.Random(seed)
    recs = [mutate(rec, rng) for rec in fixture_records() for _ in range(150)]
    slow = assert_agree(recs)
    assert 0 < slow < len(recs)  # the mutations hit both sides of the rules


def prefixed(text: bytes, hook: int = 3) -> bytes:
    """A record with a packet header (``hook``), a prefix and a 20-byte IPv4 payload."""
    ip = bytes([0x45, 0, 0, 20]) + bytes(16)
    return record(NFGENMSG + tlv(NFULA.PACKET_HDR, struct.pack(">HBB", 0x0800, hook, 0))
                  + tlv(NFULA.PREFIX, text + b"\0") + tlv(NFULA.PAYLOAD, ip))


@pytest.mark.requires_core
def test_prefix_table_shares_repeats_and_overflows_to_python() -> None:
    names = [f"rule-{i}".encode() for i in range(ROW_PREFIXES + 4)]
    # alternating prefixes share entries; beyond the table's size, Python parses the record
    recs = [prefixed(n) for n in names[:2] * 3] + [prefixed(n) for n in names]
    ring = b"".join(recs)
    made = c_rows(ring, len(recs))
    assert made.prefixes == names[:ROW_PREFIXES]
    assert [r[7] for r in made.rows[:6]] == [1, 2, 1, 2, 1, 2]
    assert sum(r[6] & ROW_SLOW for r in made.rows) == 4
    assert assert_agree(recs) == 4
    live = list(packets_from_rows(ring, made.row_bytes, made.span_bytes, None))
    assert [p.prefix for p in live] == [n.decode() for n in names[:2] * 3 + names]
    assert {p.hook for p in live} == {3}


@pytest.mark.requires_core
def test_live_packet_copies_and_pickles_own_only_their_bytes() -> None:
    names = [b"out-of-the-first", b"in-of-the-second"]
    recs = [prefixed(names[0], 3), prefixed(names[1], 1)]
    ring = b"".join(recs)
    made = c_rows(ring, len(recs))
    live = list(packets_from_rows(ring, made.row_bytes, made.span_bytes, None))
    for packet, not_its_own in zip(live, reversed(names), strict=True):
        assert not_its_own not in pickle.dumps(packet)  # its bytes, not the run's
        for other in (copy.copy(packet), pickle.loads(pickle.dumps(packet))):
            assert type(other) is Packet
            assert outcome(other) == outcome(packet)
            assert (other.raw, other.ts_sec, other.ts_usec, other.orig_len) == (
                packet.raw, packet.ts_sec, packet.ts_usec, packet.orig_len)
    with pytest.raises(AttributeError):
        live[0].raw = b"other"  # the shared run is read-only


@pytest.mark.requires_core
def test_c_and_python_agree_on_the_table() -> None:
    assert assert_agree([record(case.body(HOST)) for case in CASES]) == sum(
        case.error is not None or case.name.startswith("trailing") for case in CASES)
