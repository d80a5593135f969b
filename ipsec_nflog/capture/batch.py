"""A run of records handed out by a live capture (``Capture.read_batch``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from ipsec_nflog.nflog.packet import Packet

if TYPE_CHECKING:
    from ipsec_nflog.capture.live import Capture

__all__ = ["Batch"]


class Batch:
    """A run of consecutive records in the ring, valid until ``release()`` (or the next
    ``read_batch``). ``data`` is a read-only view of the records exactly as a LINKTYPE_NFLOG
    pcap file stores them (host byte order), so ``file.write(batch.data)`` writes them.
    ``format`` is the capture's ``ring_format``: with "pcapng" the records are pcapng
    Enhanced Packet Blocks instead (for ``PcapngWriter.write_batch``), not parsed packets.

    After ``release()`` ``data`` raises ``ValueError``. Slices or exports taken from it
    (``data[a:b]``, ``numpy.frombuffer``) cannot be revoked by CPython: they stay read-only
    views of ring memory that the capture reuses, so copy what must outlive the batch."""

    __slots__ = ("_capture", "_copy", "_released", "count", "data", "format", "nbytes")

    def __init__(self, capture: Capture, data: memoryview, count: int,
                 format: str = "pcap") -> None:
        self._capture = capture
        self.data = data
        self.count = count
        self.format = format
        self.nbytes = len(data)
        self._released = False
        self._copy: bytes | None = None

    @property
    def groups(self) -> tuple[int, ...]:
        """The capture's groups: with format "pcapng", interface id i is ``groups[i]``."""
        return self._capture.config.groups

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Packet]:
        """Parsed packets, which outlive the batch: they share one copy of its records,
        ``tobytes()`` (``copy.copy(pkt)`` is a packet that owns only its own bytes)."""
        return self._capture._packets_of(self.tobytes(), self.count)

    def tobytes(self) -> bytes:
        """The records as bytes that outlive the batch: one copy, made on the first call and
        shared with the packets that iterating the batch makes (keep both for the price of
        one)."""
        if self._released:
            raise ValueError("this batch was released: its records are gone from the ring")
        if self._copy is None:
            self._copy = self.data.tobytes()
        return self._copy

    def release(self) -> None:
        """Give the ring space back. The space goes back even when a buffer export of
        ``data`` is still held (then ``BufferError`` says so): the capture stays usable."""
        if self._released:
            return
        self._released = True
        self._capture._release(self)
        try:
            self.data.release()
        except BufferError:
            raise BufferError(
                "a buffer export of Batch.data (numpy, cffi from_buffer, ...) was still held "
                "at release(); the ring space was reused anyway, so that export no longer "
                "shows this batch: copy the bytes to keep them") from None

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self._released else f"{self.nbytes} bytes"
        return f"<Batch {self.count} records, {state}>"
