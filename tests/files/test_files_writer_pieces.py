"""The pieces a capture writer is made of, each on its own: the options, rotation's names and
split points, the encoders, and DecryptedWriter's accounting when its file fails."""

from __future__ import annotations

import dataclasses
import errno
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from ipsec_nflog.files.encoders import PcapEncoder, RawEncoder
from ipsec_nflog.files.options import WriterOptions
from ipsec_nflog.files.rotation import Rotation, split_point
from ipsec_nflog.files.writer import CaptureWriteError, PcapWriter, read_capture
from ipsec_nflog.ipsec.decrypt import DecryptedWriter
from ipsec_nflog.nflog.codec import Buffer
from tests.files.test_pcapfile import ipv4_udp, sample_records


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_options_are_frozen_checked_and_merged() -> None:
    opts = WriterOptions(rotate_bytes=100)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.mode = 0o644  # type: ignore[misc]
    merged = WriterOptions.merge(opts, {"rotate_count": 3, "overwrite": True})
    assert (merged.rotate_bytes, merged.rotate_count, merged.overwrite) == (100, 3, True)
    assert WriterOptions.merge(None, {}) == WriterOptions()
    with pytest.raises(TypeError, match="rotate_cnt"):
        WriterOptions.merge(None, {"rotate_cnt": 3})
    with pytest.raises(ValueError, match="rotate_count needs"):
        WriterOptions.merge(None, {"rotate_count": 3})
    with pytest.raises(ValueError, match="snaplen must be"):
        PcapWriter("/nonexistent/never-created.pcap", snaplen=0)


def test_rotation_names_wrap_like_tcpdump(tmp_path: Path) -> None:
    rot = Rotation(str(tmp_path / "w"), WriterOptions(rotate_bytes=10, rotate_count=11))
    names = []
    for _ in range(12):
        names.append(os.path.basename(rot.name()))
        rot.advance()
    assert names == [f"w{i:02d}" for i in range(11)] + ["w00"]
    assert rot.room(4, 2) == 4
    clock = Clock(0.0)
    timed = Rotation(str(tmp_path / "t-%s-"), WriterOptions(rotate_seconds=10, clock=clock))
    assert timed.new_period() is None and timed.room(0, 0) is None
    clock.now = 10.0
    assert timed.new_period() == 10.0
    timed.advance(10.0)
    assert os.path.basename(timed.name()) == "t-10-" and timed.new_period() is None


@pytest.mark.parametrize("ends,room,has_records,cut", [
    ([10, 20, 30], 25, False, (20, 2)),
    ([10, 20, 30], 30, True, (30, 3)),
    ([40, 50], 25, False, (40, 1)),   # a record bigger than a file still goes into an empty one
    ([40, 50], 25, True, (0, 0)),     # ... but not into one that has records
    ([], 25, False, (0, 0)),
])
def test_split_point(ends: list[int], room: int, has_records: bool, cut: tuple[int, int]) -> None:
    assert split_point(iter(ends), room, has_records) == cut


def test_pcap_encoder_passes_the_ring_through_and_finds_record_ends() -> None:
    recs = sample_records(3)
    ring = memoryview(b"".join(recs))
    data, n = PcapEncoder(262144).encode(ring, 3)
    assert data is ring and n == 3  # no per-packet work, not even a copy
    ends = [len(recs[0]), len(recs[0]) + len(recs[1]), len(ring)]
    assert list(PcapEncoder(262144).record_ends(ring)) == ends
    assert list(PcapEncoder(262144).record_ends(ring[:-1])) == ends[:2]
    raw, n = RawEncoder(262144).encode(ring, 3)
    assert n == 3 and len(raw) < len(ring)


def test_decrypted_writer_counts_what_a_failed_file_loses(tmp_path: Path) -> None:
    def full_disk(fd: int, bufs: Sequence[Buffer]) -> int:
        if sum(len(b) for b in bufs) > 24:  # the header goes through, records do not
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.writev(fd, bufs)

    w = DecryptedWriter(tmp_path / "inner.pcap", writev=full_disk)
    for i in range(DecryptedWriter._BATCH + 3):
        try:
            w.write_packet(1_700_000_000, i, ipv4_udp(b"x"))
        except CaptureWriteError:
            pass
    w.close()
    assert w.records_written == 0
    assert w.records_lost == DecryptedWriter._BATCH + 3  # the failed batch and the rest
    assert list(read_capture(tmp_path / "inner.pcap")) == []
