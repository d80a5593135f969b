"""C framing (``NativeFraming``, nfc_frame) against the pure-Python encoders: the same records
give byte-identical pcapng and raw files, and the C core rejects what the Python path rejects."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from ipsec_nflog.files.encoders import RawEncoder
from ipsec_nflog.files.pcapng import SYNTHESIZED_COMMENT, PcapngEncoder
from ipsec_nflog.files.writer import open_writer
from tests.files.test_pcapfile import ipv4_udp, nflog_body, record, sample_records

framing_mod = pytest.importorskip("ipsec_nflog.capture.framing")
NativeFraming = framing_mod.NativeFraming


def mixed_run() -> tuple[bytes, int]:
    """Varied records: two groups and a third that appears mid-run, kernel and synthesized
    timestamps, IPv4/IPv6, a snaplen-cut record, one without payload, odd lengths."""
    recs = sample_records(9, groups=(5, 7), size=13)
    cut = ipv4_udp(b"c" * 40, total=1400)  # the snaplen cut it: orig_len > caplen
    cut_body = nflog_body(7, cut)
    recs.insert(3, record(cut_body, (1_700_000_100, 5), orig_len=len(cut_body) + 1400 - 68))
    recs.insert(5, record(nflog_body(5, None, prefix="nopayload"), (1_700_000_101, 6)))
    recs.append(record(nflog_body(9, ipv4_udp(b"z" * 3), family=socket.AF_INET,
                                  timestamp=(1_700_000_200, 999_999)), (1_700_000_200, 999_999)))
    return b"".join(recs), len(recs)


def files_of(tmp_path: Path, fmt: str, native: bool, runs: list[tuple[bytes, int]]) -> bytes:
    path = tmp_path / f"{fmt}-{native}.out"
    w = open_writer(path, fmt, groups=(5,) if fmt == "pcapng" else (), clock=lambda: 1.5e9)
    if native:
        assert w.use_framing(NativeFraming())
    for data, count in runs:
        w.write_records(data, count)
    skipped = w.records_skipped
    w.close(stats={5: (10, 1), 7: (3, 0)} if fmt == "pcapng" else None)
    return path.read_bytes() + skipped.to_bytes(4, "little")


@pytest.mark.parametrize("fmt", ["pcapng", "raw"])
def test_c_framing_writes_the_same_bytes_as_python(tmp_path: Path, fmt: str) -> None:
    run = mixed_run()
    runs = [run, (sample_records(1, groups=(7,))[0], 1), run]
    python, native = files_of(tmp_path, fmt, False, runs), files_of(tmp_path, fmt, True, runs)
    assert native == python
    if fmt == "raw":  # the payloadless record, twice, is counted as skipped
        assert int.from_bytes(native[-4:], "little") == 2


def test_pcapng_framing_gives_new_groups_interface_ids_and_keeps_the_comment() -> None:
    data, count = mixed_run()
    enc = PcapngEncoder(65535, groups=(5,))
    enc.use_framing(NativeFraming())
    blocks, n = enc.encode(memoryview(data), count)
    assert n == count and enc.groups == [5, 7, 9]
    assert bytes(blocks).count(SYNTHESIZED_COMMENT.encode()) == sum(
        1 for i in range(9) if i % 2 == 0) + 2  # outbound samples, the cut and payloadless


@pytest.mark.parametrize("encoder", [lambda: PcapngEncoder(65535), lambda: RawEncoder(65535)])
def test_c_framing_rejects_what_is_not_count_whole_records(
        encoder: Callable[[], PcapngEncoder | RawEncoder]) -> None:
    data, count = mixed_run()
    enc = encoder()
    enc.use_framing(NativeFraming())
    for bad_data, bad_count in ((data, count + 1), (data, count - 1), (data[:-3], count),
                                (data + b"\0" * 20, count)):
        with pytest.raises(ValueError):
            enc.encode(memoryview(bad_data), bad_count)
    short = record(b"\0\0\0")  # caplen 3: no room for the NFLOG header
    with pytest.raises(ValueError):
        enc.encode(memoryview(short), 1)
