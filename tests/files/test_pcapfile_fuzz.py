"""Fuzzing the capture file reader: random bytes and mutated valid files never crash or hang
it; only CaptureFileError comes out, and what it yields is well-formed."""

from __future__ import annotations

import io
import signal
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipsec_nflog.files.format import encode_block
from ipsec_nflog.files.writer import CaptureFileError, CaptureReader, FilePacket, open_writer
from ipsec_nflog.nflog.packet import Packet
from tests.files.test_pcapfile import (
    OTHER,
    idb,
    nflog_body,
    pcap_header,
    pcapng_file,
    record,
    sample_records,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
FUZZ = settings(
    max_examples=int(__import__("os").environ.get("PCAP_FUZZ_EXAMPLES", "1000")),
    deadline=2000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=__import__("os").environ.get("PCAP_FUZZ_EXAMPLES") is None,
)


def _valid_files() -> list[bytes]:
    """Small valid files of every kind the reader handles."""
    import tempfile

    recs = b"".join(sample_records(5, groups=(5, 6), size=4))
    files = []
    with tempfile.TemporaryDirectory() as d:
        for fmt in ("pcap", "pcapng", "raw"):
            path = Path(d) / f"f.{fmt}"
            with open_writer(path, fmt) as w:
                w.write_records(recs, 5)
                w.close(stats={5: (5, 1)})
            files.append(path.read_bytes())
    body = nflog_body(9, order=OTHER, timestamp=(1, 2))
    files.append(pcap_header(OTHER) + record(body, (1, 2), order=OTHER))
    files.append(pcap_header(magic=0xA1B23C4D) + record(nflog_body(3), (1, 999_999_999)))
    spb = (3, struct.pack(OTHER + "I", len(body)) + body)
    files.append(pcapng_file(OTHER, [idb(OTHER, tsresol=b"\x89"), spb]))
    frame = b"\2" * 12 + b"\x08\x00" + b"\x45" * 6
    old_pb = (2, struct.pack("<HHIIII", 0, 0, 0, 0, 20, 20) + frame)
    files.append(pcapng_file("<", [idb("<", linktype=1), old_pb]))
    files.append(encode_block("<", 0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)))
    for name in ("pcap_tcpdump_nflog.pcap", "pcap_tcpdump_nflog_editcap.pcapng"):
        files.append((FIXTURES / name).read_bytes())
    return files


SEEDS = _valid_files()


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Fail instead of hanging: SIGALRM raises in the main thread."""

    def alarm(signum: int, frame: Any) -> None:
        raise TimeoutError(f"reader still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def read_fully(data: bytes) -> int:
    """Read everything; the only allowed exception is CaptureFileError. Returns packets."""
    n = 0
    with time_limit(5):
        try:
            for pkt in CaptureReader(io.BytesIO(data)):
                assert isinstance(pkt, (Packet, FilePacket))
                d = pkt.as_dict()  # every attribute decodes: validated eagerly
                assert d["payload"] is None or isinstance(d["payload"], bytes)
                assert len(pkt.raw) <= 1 << 24
                n += 1
        except CaptureFileError as e:
            assert 0 <= e.offset <= len(data)
            assert str(e).startswith(f"byte offset {e.offset}: ")
    return n


@FUZZ
@given(st.binary(max_size=3000))
def test_random_bytes(data: bytes) -> None:
    read_fully(data)


@FUZZ
@given(
    st.sampled_from(
        [b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\x0a\x0d\x0d\x0a"]
    ),
    st.binary(max_size=3000),
)
def test_random_bytes_after_a_valid_magic(magic: bytes, data: bytes) -> None:
    read_fully(magic + data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "word", "cut", "insert", "delete"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "word" and len(data) >= pos + 4:
            value = draw(
                st.sampled_from(
                    [
                        0,
                        1,
                        3,
                        4,
                        0xFFFF,
                        0x7FFFFFFF,
                        0xFFFFFFFF,
                        0x0A0D0D0A,
                        0x1A2B3C4D,
                        262145,
                        1 << 24,
                    ]
                )
            )
            fmt = draw(st.sampled_from(["<I", ">I", "<H", ">H"]))
            struct.pack_into(fmt, data, pos, value & (0xFFFF if fmt[1] == "H" else 0xFFFFFFFF))
        elif kind == "cut":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=32))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 32))]
    return bytes(data)


@FUZZ
@given(mutated())
def test_mutated_valid_files(data: bytes) -> None:
    read_fully(data)


def test_seeds_are_valid_files() -> None:
    """The corpus the mutations start from reads without error (so mutations matter)."""
    counts = [sum(1 for _ in CaptureReader(io.BytesIO(seed))) for seed in SEEDS]
    assert counts == [5, 5, 5, 1, 1, 1, 1, 0, 6, 6]
