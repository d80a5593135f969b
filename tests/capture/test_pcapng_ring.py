"""A ring of pcapng blocks (``ring_format="pcapng"``): the reader frames each packet as an
Enhanced Packet Block when it stores it, and a pcapng writer writes the ring as it is. The
blocks must be byte for byte what the writer makes from a pcap ring, and every way of
mixing the two formats up must fail with one clear error."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ipsec_nflog import Capture, CaptureConfig
from ipsec_nflog.capture.framing import NativeFraming
from ipsec_nflog.files import open_writer, read_capture
from ipsec_nflog.files.pcapng import EPB_SYNTH_OPTIONS, SYNTHESIZED_COMMENT, PcapngEncoder
from tests.capture.test_capture_ring import message, udp4

pytestmark = pytest.mark.requires_core

GROUPS = (5, 7)


def datagrams() -> list[bytes]:
    """Two groups; outbound messages (no kernel stamp) before and after kernel-stamped ones,
    so the synthesized stamps are pulled back to the next kernel stamp, deterministically;
    odd payload lengths (EPB padding), prefixes, a message without payload."""
    first = [
        message(5, 0, udp4(4500, b"a" * 13), prefix="out"),  # synthesized
        message(7, 0, udp4(4500, b"b" * 14)),  # synthesized
        message(5, 1, udp4(500, b"c" * 15), prefix="in", timestamp=(1_700_000_000, 10)),
        message(7, 1, udp4(500, b"d"), timestamp=(1_700_000_000, 20)),
    ]
    nopayload = message(5, 2, b"", prefix="nopayload")
    nopayload = nopayload[: len(nopayload) - 4]  # drop the empty NFULA_PAYLOAD TLV
    nopayload = (len(nopayload)).to_bytes(4, "little") + nopayload[4:]
    second = [
        nopayload,
        message(5, 3, udp4(4500, b"e" * 100), prefix="x" * 30),
        message(7, 2, udp4(500, b"f" * 7), timestamp=(1_700_000_001, 999_999)),
    ]
    return [b"".join(first), b"".join(second)]


def ring_of(fmt: str) -> tuple[bytes, int, tuple[int, ...]]:
    kw: dict[str, object] = {"ring_format": fmt}
    if fmt == "pcapng":
        kw["epb_synth_options"] = EPB_SYNTH_OPTIONS
    with Capture._offline(CaptureConfig(groups=GROUPS, **kw)) as cap:  # type: ignore[arg-type]
        for d in datagrams():
            cap._inject(d)
        batch = cap.read_batch(timeout=0)
        assert batch is not None and batch.format == fmt
        with batch:
            return bytes(batch.data), batch.count, batch.groups


def write_ring_file(path: Path, clock: Callable[[], float] = time.time) -> int:
    """The datagrams through a pcapng ring into a pcapng file; returns the records written
    (drain_into's count and the writer's own must agree)."""
    with Capture._offline(CaptureConfig(groups=GROUPS, ring_format="pcapng",
                                        epb_synth_options=EPB_SYNTH_OPTIONS)) as cap:
        for d in datagrams():
            cap._inject(d)
        with open_writer(path, "pcapng", groups=GROUPS, clock=clock) as w:
            n = cap.drain_into(w)
            assert w.records_written == n
            return n


def test_the_pcapng_ring_holds_what_the_writers_make_from_a_pcap_ring() -> None:
    pcap, n, _ = ring_of("pcap")
    blocks, count, groups = ring_of("pcapng")
    assert count == n == 7 and groups == GROUPS
    python = PcapngEncoder(65535, groups=GROUPS)
    native = PcapngEncoder(65535, groups=GROUPS)
    native.use_framing(NativeFraming())
    assert bytes(python.encode(memoryview(pcap), n)[0]) == blocks
    assert bytes(native.encode(memoryview(pcap), n)[0]) == blocks
    # the outbound ones carry the comment (4 of 7), and were pulled back before the reply
    assert blocks.count(SYNTHESIZED_COMMENT.encode()) == 4


def test_a_pcapng_writer_writes_the_blocks_as_they_are(tmp_path: Path) -> None:
    path = tmp_path / "ring.pcapng"
    assert write_ring_file(path, clock=lambda: 1.5e9) == 7
    # the same as the file written from a pcap ring through the writer's own framing
    pcap, n, _ = ring_of("pcap")
    other = tmp_path / "framed.pcapng"
    with open_writer(other, "pcapng", groups=GROUPS, clock=lambda: 1.5e9) as w:
        w.write_records(pcap, n)
    assert path.read_bytes() == other.read_bytes()
    got = list(read_capture(str(path)))
    assert [p.group for p in got] == [5, 7, 5, 7, 5, 5, 7]
    assert [p.timestamp_synthesized for p in got] == [True, True, False, False, True, True,
                                                      False]
    assert got[0].timestamp < got[2].timestamp  # pulled back before the kernel's stamp
    assert got[5].prefix == "x" * 30 and got[4].payload is None


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
def test_tshark_reads_the_ring_blocks(tmp_path: Path) -> None:
    path = tmp_path / "ring.pcapng"
    write_ring_file(path)
    out = subprocess.run(["tshark", "-r", str(path), "-T", "fields", "-e",
                          "frame.interface_name", "-e", "frame.comment"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    rows = [line.split("\t") for line in out.splitlines()]
    assert [r[0] for r in rows] == ["nflog:5", "nflog:7", "nflog:5", "nflog:7", "nflog:5",
                                    "nflog:5", "nflog:7"]
    assert sum(SYNTHESIZED_COMMENT in r[1] for r in rows) == 4


def test_mixing_the_formats_up_fails_clearly(tmp_path: Path) -> None:
    with Capture._offline(CaptureConfig(groups=GROUPS, ring_format="pcapng")) as cap:
        for d in datagrams():
            cap._inject(d)
        batch = cap.read_batch(timeout=0)
        assert batch is not None
        with pytest.raises(ValueError, match="ring_format"):
            list(batch)  # blocks are not packets
        with pytest.raises(ValueError, match="cannot take pcapng blocks"):
            open_writer(tmp_path / "a.pcap", "pcap").write_batch(batch)
        other = open_writer(tmp_path / "b.pcapng", "pcapng", groups=(7, 5))
        with pytest.raises(ValueError, match=r"groups \[5, 7\].*groups \[7, 5\]"):
            other.write_batch(batch)
        other.close()
        with pytest.raises(ValueError, match="ring_format"):
            list(cap.packets(timeout=0))
    for bad in ({"ring_format": "pcapng2"}, {"epb_synth_options": EPB_SYNTH_OPTIONS},
                {"ring_format": "pcapng", "epb_synth_options": b"abc"},
                {"ring_format": "pcapng", "epb_synth_options": b"\0" * 260}):
        with pytest.raises(ValueError):
            CaptureConfig(groups=GROUPS, **bad)


def test_a_full_pcapng_ring_counts_its_drops_in_block_bytes() -> None:
    from ipsec_nflog.capture.config import recv_buffer_size

    ring = recv_buffer_size(4096)
    big = message(5, 0, udp4(4500, b"z" * 1000))
    with Capture._offline(CaptureConfig(groups=(5,), nlbufsiz=4096, ring_size=ring,
                                        ring_format="pcapng",
                                        epb_synth_options=EPB_SYNTH_OPTIONS)) as cap:
        sent = 0
        while cap.stats().groups[5].ring_drop_packets == 0:
            cap._inject(b"".join(message(5, sent + i, udp4(4500, b"z" * 1000))
                                 for i in range(4)))
            sent += 4
        st = cap.stats().groups[5]
        stored = st.received_packets - st.ring_drop_packets
        pending, nbytes = cap.pending()
    epb = 28 + ((len(big) - 16 + 3) & ~3) + len(EPB_SYNTH_OPTIONS) + 4
    assert st.received_packets == sent and pending == stored
    assert nbytes == stored * epb and st.ring_drop_bytes == st.ring_drop_packets * epb
