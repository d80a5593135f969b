"""Capture files: LINKTYPE_NFLOG pcap and pcapng writers, a LINKTYPE_RAW writer, tcpdump-like
rotation, and (re-exported from :mod:`ipsec_nflog.files.reader`) the reader.

Writers take batches of ring records (``Batch.data`` / ``Batch.count``: consecutive host-order
pcap records with LINKTYPE_NFLOG bodies, see docs/DESIGN.md) and write each batch with one
``writev()`` call. A :class:`CaptureWriter` is made of small pieces, each documented where it
lives:

- an encoder per format (``open_writer(format=...)``): ``"pcap"`` (the default, unless the
  path ends in ``.pcapng`` or ``.ntar``) and ``"raw"`` in :mod:`ipsec_nflog.files.encoders`,
  ``"pcapng"`` in :mod:`ipsec_nflog.files.pcapng` (``close(stats=...)`` appends ISBs with the
  drop counters, see :func:`isb_counters`);
- the file itself (:mod:`ipsec_nflog.files.durable`): created with
  ``O_CREAT|O_EXCL|O_NOFOLLOW`` (``FileExistsError`` if the file exists, unless
  ``overwrite=True``) and set to ``mode`` (0600) with fchmod, whatever the umask; a symbolic
  link at the path is never followed, ``overwrite`` replaces a regular file by unlinking its
  name, never by truncating it; an existing device (``/dev/null``), or a FIFO of root's or
  ours, is written into as it is;
- rotation, tcpdump's -C/-G/-W (:mod:`ipsec_nflog.files.rotation`): a file never grows past
  ``rotate_bytes`` (a batch is split at a record boundary), a slot that is taken stops the
  capture cleanly with CaptureWriteError, every file starts with a complete header;
- the options, one frozen :class:`~ipsec_nflog.files.options.WriterOptions`.

``created`` says whether the current file is one this writer created (only such files may be
chowned, e.g. for ``-Z``), ``files`` lists the created ones. ``path`` may also be an open file
descriptor (``-w -``: 1), written through a duplicate and never rotated. Each batch reaches the
kernel with one write as soon as ``write_records`` returns, so readers of the file and a crash
of this process never see or lose part of a batch (tcpdump -U's guarantee, always). "Flushing"
therefore means ``fdatasync``: every ``flush_interval`` seconds (checked on each batch and by
:meth:`CaptureWriter.flush_if_due`, which an idle capture loop should call; these interval syncs
run on a worker thread, so a slow disk never stalls the consumer), after every batch with
``flush_every_batch=True``, and at rotation and close. On a write error (ENOSPC, EIO, ...) or an
interrupt in the middle of a write, the file is truncated back to its last complete record, and
:class:`CaptureWriteError` carries the errno, the path and the counts on disk; the writer
accepts no more records, but ``close()`` still works. Records handed to ``write_records`` that
never reached a file (the rest of the failing batch, any batch given to a failed writer, or the
part of a batch that did not fit before a rotation slot turned out taken) are counted in
``records_lost``, so none goes uncounted.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Sequence
from typing import Protocol, TypeVar, Union

from ipsec_nflog.files.durable import BackgroundSync, DurableFile
from ipsec_nflog.files.encoders import Encoder, Framing, PcapEncoder, RawEncoder
from ipsec_nflog.files.format import MAX_SNAPLEN, CaptureFileError, CaptureWriteError
from ipsec_nflog.files.options import Clock, WriterOptions, WriteV
from ipsec_nflog.files.pcapng import (
    EPB_MIN,
    EPB_SYNTH_OPTIONS,
    SYNTHESIZED_COMMENT,
    InterfaceNames,
    PcapngEncoder,
    StatsSource,
    isb_counters,
)
from ipsec_nflog.files.reader import CaptureReader, FilePacket, Interface, read_capture
from ipsec_nflog.files.rotation import Rotation, split_point
from ipsec_nflog.nflog.codec import Buffer

__all__ = [
    "EPB_SYNTH_OPTIONS",
    "SYNTHESIZED_COMMENT",
    "CaptureFileError",
    "CaptureReader",
    "CaptureWriteError",
    "CaptureWriter",
    "FilePacket",
    "Interface",
    "PcapWriter",
    "PcapngWriter",
    "RawWriter",
    "WriterOptions",
    "default_format",
    "isb_counters",
    "open_writer",
    "read_capture",
]

Target = Union[str, "os.PathLike[str]", int]
_Writer = TypeVar("_Writer", bound="CaptureWriter")


class BatchLike(Protocol):
    """What ``write_batch`` takes: ``Capture.read_batch()``'s ``Batch``. Its ``format``
    (optional, "pcap" when absent) says what the records are: ring pcap records, or
    "pcapng" EPBs whose interface ids number ``groups``."""

    @property
    def data(self) -> Buffer: ...

    @property
    def count(self) -> int: ...


class CaptureWriter:
    """A capture file writer: an encoder (the format), the durable file, rotation and the
    options, put together. ``write_records`` takes any bytes-like buffer of ``count`` ring
    records. Made by :func:`open_writer` or the format's class (:class:`PcapWriter`, ...)."""

    def __init__(self, path: Target, encoder: Encoder, options: WriterOptions) -> None:
        self._target_fd = path if isinstance(path, int) else -1
        if self._target_fd >= 0 and options.rotates:
            raise ValueError("a file descriptor cannot rotate (rotate_bytes/rotate_seconds)")
        self.options = options
        self._encoder = encoder
        self.format: str = encoder.format
        self.linktype: int = encoder.linktype
        self.snaplen: int = options.snaplen
        self._rotation = Rotation("" if isinstance(path, int) else os.fspath(path), options)
        self._background = BackgroundSync()
        self._file: DurableFile | None = None
        self.records_written = 0  # on disk, over all files
        self.bytes_written = 0
        self.records_skipped = 0  # records a format could not represent (raw: no payload)
        self.records_lost = 0  # handed to write_records, never reached a file (I/O errors)
        self.created = False  # this writer created the current file (chown it, not others)
        self.path = ""  # the current file
        self._failed = False
        self._closed = False
        self._last_sync = options.clock()
        self._open_file()

    # -- public API ----------------------------------------------------------------------
    @property
    def files(self) -> list[str]:
        """The files this writer created that still exist, oldest first (the last is current,
        unless the current one is a device or descriptor it writes into: see ``created``)."""
        return self._rotation.files

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def failed(self) -> bool:
        """A write failed: the writer takes no more records (``close()`` still works)."""
        return self._failed

    def fileno(self) -> int:
        return -1 if self._file is None else self._file.fd

    def write_records(self, buf: Buffer, count: int) -> None:
        """Append ``count`` ring records from ``buf`` (bytes-like) with one write per file.

        Raises CaptureWriteError on I/O errors (the file keeps every complete record), and
        ValueError if the writer is closed or failed, or (pcapng, raw) ``buf`` is not ``count``
        whole records. Records that do not reach a file because of an error or an interrupt
        (or because the writer had already failed) are added to ``records_lost``.
        """
        mv = self._run_view(buf, count, 16)
        if count == 0:
            return
        data, nrec = self._encoder.encode(mv, count)
        self._write_run(memoryview(data), count, nrec)

    def write_blocks(self, buf: Buffer, count: int, groups: Sequence[int]) -> None:
        """Append ``count`` pcapng Enhanced Packet Blocks as they are: the batch of a
        capture with ``ring_format="pcapng"``, interface id i being ``groups[i]``. Only a
        :class:`PcapngWriter` takes them (ValueError otherwise)."""
        raise ValueError(f"a {self.format} writer cannot take pcapng blocks: capture with "
                         "ring_format 'pcap' for it")

    def _run_view(self, buf: Buffer, count: int, min_record: int) -> memoryview:
        """``buf`` as bytes, once the writer and ``count`` are checked."""
        if self._closed or self._failed:
            self.records_lost += max(count, 0)
            raise ValueError(f"capture writer for {self.path} is {self._state()}")
        mv = memoryview(buf).cast("B")
        if count < 0 or (count == 0) != (len(mv) == 0) or len(mv) < min_record * count:
            raise ValueError(f"{len(mv)} bytes cannot hold {count} records")
        return mv

    def _write_run(self, data: memoryview, count: int, nrec: int) -> None:
        """Write ``data``, the ``nrec`` encoded records of ``count`` handed in."""
        self.records_skipped += count - nrec
        before = self.records_written
        try:
            self._write_encoded(data, nrec)
        except BaseException:
            self.records_lost += nrec - (self.records_written - before)
            raise

    def use_framing(self, framing: Framing | None) -> bool:
        """Let ``framing`` (e.g. ``ipsec_nflog.capture.framing.NativeFraming()``, C) frame
        the records of formats that reframe them (pcapng, raw); the bytes written are the
        same. Returns whether this writer's format uses it (pcap writes records as they
        are)."""
        if isinstance(self._encoder, (RawEncoder, PcapngEncoder)):
            self._encoder.use_framing(framing)
            return True
        return False

    def write_batch(self, batch: BatchLike) -> None:
        """``write_records(batch.data, batch.count)``; a batch of pcapng blocks (a capture
        with ``ring_format="pcapng"``) goes to ``write_blocks`` with the capture's groups."""
        fmt = getattr(batch, "format", "pcap")
        if fmt == "pcap":
            self.write_records(batch.data, batch.count)
        elif fmt == "pcapng":
            self.write_blocks(batch.data, batch.count, getattr(batch, "groups", ()))
        else:
            raise ValueError(f"batch of unknown format {fmt!r}")

    def flush(self) -> None:
        """fdatasync the current file now."""
        if not (self._closed or self._failed):
            self._sync()

    def flush_if_due(self) -> None:
        """fdatasync if ``flush_interval`` has passed since the last one and data is pending."""
        interval = self.options.flush_interval
        if self._closed or self._failed or interval is None:
            return
        if self._file is None or not self._file.dirty:
            return
        if self.options.clock() - self._last_sync >= interval:
            self._sync(background=True)

    def close(self, stats: object = None) -> None:
        """Finish (pcapng: ISBs from ``stats``), sync and close the file. Idempotent.

        After a write error the file is closed as it is (already truncated to its last
        complete record)."""
        if self._closed:
            return
        self._closed = True
        self._background.close()
        if self._file is None:
            return
        try:
            if not self._failed:
                self._finish_file(stats)
        finally:
            self._file.close()
            self._file = None

    def __enter__(self: _Writer) -> _Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.path!r} {self._state()} "
            f"records={self.records_written} bytes={self.bytes_written}>"
        )

    # -- machinery -----------------------------------------------------------------------
    def _state(self) -> str:
        return "closed" if self._closed else "failed" if self._failed else "open"

    def _error(self, exc: OSError, what: str, path: str | None = None) -> CaptureWriteError:
        self._failed = True
        code = exc.errno or errno.EIO
        reason = exc.strerror or str(exc)
        return CaptureWriteError(
            code, f"{what}: {reason}", path or self.path, self.records_written, self.bytes_written
        )

    def _write_encoded(self, body: memoryview, nrec: int) -> None:
        """Commit one encoded batch, rotating as needed, then sync if due."""
        if self.options.rotate_seconds is not None:
            new_period = self._rotation.new_period()
            if new_period is not None:
                self._rotate(new_period)
        while True:
            prefix = self._encoder.prefix()
            file = self._file
            assert file is not None  # open while the writer is neither failed nor closed
            room = self._rotation.room(file.size, len(prefix))
            if room is None or len(body) <= room or not body:
                self._commit(prefix, body, nrec)
                break
            cut, ncut = split_point(self._encoder.record_ends(body), room, file.records > 0)
            if ncut:
                self._commit(prefix, body[:cut], ncut)
                body, nrec = body[cut:], nrec - ncut
                if not body:
                    break
            elif not file.records:  # not even one record parses: do not spin
                raise ValueError(f"batch is not whole pcap records ({len(body)} bytes left)")
            self._rotate()
        if self.options.flush_every_batch:
            self._sync()
        else:
            self.flush_if_due()

    def _open_file(self) -> None:
        fd, opts = self._target_fd, self.options
        if fd >= 0:
            name = "<stdout>" if fd == 1 else f"<fd {fd}>"
            file = DurableFile.duplicate(fd, name, writev=opts.writev, syncer=self._background)
        else:
            file = self._rotation.open(self._background)
        self._file, self.path, self.created = file, file.path, file.created
        try:
            self._commit(self._encoder.header(), memoryview(b""), 0)
        except BaseException:
            # A file without a whole header is not a capture file: remove it.
            self._file = None
            self._rotation.discard(file)
            raise

    def _rotate(self, new_period: float | None = None) -> None:
        self._finish_file(None, background=True)
        assert self._file is not None
        self._file.close()
        self._file = None
        self._rotation.advance(new_period)
        try:
            self._open_file()
        except CaptureWriteError:
            raise
        except OSError as e:
            raise self._error(e, "cannot start the next capture file", e.filename) from None

    def _finish_file(self, stats: object, background: bool = False) -> None:
        trailer = self._encoder.trailer(stats, self.options.clock())
        if trailer:
            self._commit(trailer, memoryview(b""), 0)
        self._sync(background)

    def _commit(self, prefix: bytes, body: memoryview, nrec: int) -> None:
        """Write prefix + body; on failure the file keeps whole records only."""
        file = self._file
        assert file is not None
        size, records = file.size, file.records
        try:
            file.write(prefix, body, nrec, self._encoder.record_ends)
        except BaseException as exc:
            self._failed = True
            self.bytes_written += file.size - size
            self.records_written += file.records - records
            if isinstance(exc, OSError):
                raise self._error(exc, f"writing {self.path} failed") from exc
            raise  # KeyboardInterrupt & co.: the file is consistent, let it propagate
        self.bytes_written += file.size - size
        self.records_written += nrec

    def _sync(self, background: bool = False) -> None:
        assert self._file is not None
        try:
            self._file.sync(background)
        except OSError as e:
            raise self._error(e, f"fdatasync of {self.path} failed") from e
        self._last_sync = self.options.clock()


class PcapWriter(CaptureWriter):
    """LINKTYPE_NFLOG microsecond pcap in host byte order: ring batches written unchanged.
    ``options`` and/or keyword changes of them (:class:`WriterOptions`' fields)."""

    def __init__(self, path: Target, options: WriterOptions | None = None, /,
                 **changes: object) -> None:
        options = WriterOptions.merge(options, changes)
        super().__init__(path, PcapEncoder(options.snaplen), options)


class RawWriter(CaptureWriter):
    """LINKTYPE_RAW pcap of the NFLOG payloads (IPv4/IPv6); NFLOG metadata is dropped."""

    def __init__(self, path: Target, options: WriterOptions | None = None, /,
                 **changes: object) -> None:
        options = WriterOptions.merge(options, changes)
        super().__init__(path, RawEncoder(options.snaplen), options)


class PcapngWriter(CaptureWriter):
    """pcapng with one IDB per NFLOG group and EPBs; ISBs at close from ``stats``.

    ``groups`` pre-declares groups, so their IDBs (and interface ids 0, 1, ...) come first.
    ``stats_source`` is called at each rotation to put ISBs in rotated files too (and at
    close when ``close()`` gets no stats). ``interface_names`` gives the capture host's
    ifindex -> name map, recorded in every IDB (see :mod:`ipsec_nflog.files.pcapng`).
    """

    def __init__(self, path: Target, options: WriterOptions | None = None, /, *,
                 groups: Sequence[int] = (), stats_source: StatsSource | None = None,
                 interface_names: InterfaceNames | None = None, **changes: object) -> None:
        options = WriterOptions.merge(options, changes)
        self._pcapng = PcapngEncoder(options.snaplen, groups=groups, stats_source=stats_source,
                                     started=options.clock(), interface_names=interface_names)
        super().__init__(path, self._pcapng, options)

    @property
    def groups(self) -> list[int]:
        """NFLOG groups by interface id."""
        return self._pcapng.groups

    def write_blocks(self, buf: Buffer, count: int, groups: Sequence[int]) -> None:
        # The blocks were framed by the C core: no Python work per packet. Their interface
        # ids must mean what this file's IDBs say.
        mv = self._run_view(buf, count, EPB_MIN)
        self._pcapng.number_interfaces(groups)
        if count:
            self._write_run(mv, count, count)


FORMATS: dict[str, type[PcapWriter] | type[PcapngWriter] | type[RawWriter]] = {
    "pcap": PcapWriter,
    "pcapng": PcapngWriter,
    "raw": RawWriter,
}


def default_format(path: Target) -> str:
    """ "pcapng" for paths ending in .pcapng/.ntar, else "pcap" (tcpdump's format, also for
    a file descriptor)."""
    if isinstance(path, int):
        return "pcap"
    return "pcapng" if os.fspath(path).lower().endswith((".pcapng", ".ntar")) else "pcap"


def open_writer(
    path: Target,
    format: str | None = None,
    *,
    overwrite: bool = False,
    mode: int = 0o600,
    flush_interval: float | None = 1.0,
    flush_every_batch: bool = False,
    rotate_bytes: int | None = None,
    rotate_seconds: float | None = None,
    rotate_count: int | None = None,
    snaplen: int = MAX_SNAPLEN,
    groups: Sequence[int] = (),
    stats_source: StatsSource | None = None,
    interface_names: InterfaceNames | None = None,
    clock: Clock = time.time,
    writev: WriteV = os.writev,
) -> CaptureWriter:
    """Create a capture file writer; the module docstring has the details.

    - ``format``: "pcap", "pcapng" or "raw"; None picks "pcapng" for .pcapng/.ntar paths
      and "pcap" otherwise (raw only when asked for).
    - ``overwrite``: replace an existing file instead of raising FileExistsError.
    - ``mode``: permission bits, set with fchmod whatever the umask (0600).
    - ``flush_interval``: seconds between fdatasyncs (None: only at rotation and close);
      ``flush_every_batch``: fdatasync after every batch.
    - ``rotate_bytes`` / ``rotate_seconds`` / ``rotate_count``: tcpdump's -C (in bytes), -G
      and -W.
    - ``snaplen``: the snaplen in the file header (pcapng: in each IDB). It bounds the
      length of a *record*, an NFLOG message (payload plus TLVs), not of the payload, and
      libpcap cuts longer records when reading. Keep the default 262144 (what tcpdump writes
      for nflog) unless every record is known to be shorter.
    - ``groups``, ``stats_source``, ``interface_names``: pcapng only, see
      :class:`PcapngWriter`.
    - ``clock`` (time.time) and ``writev`` (os.writev): for tests.

    Raises FileExistsError, OSError naming the path, CaptureWriteError (the header could not
    be written; the new file is removed), ValueError for bad options.
    """
    fmt = default_format(path) if format is None else format
    cls = FORMATS.get(fmt)
    if cls is None:
        raise ValueError(f"unknown capture format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if cls is not PcapngWriter and (groups or stats_source is not None
                                    or interface_names is not None):
        raise ValueError(
            f"groups, stats_source and interface_names only apply to pcapng, not {fmt}")
    options = WriterOptions(
        overwrite=overwrite, mode=mode, snaplen=snaplen, flush_interval=flush_interval,
        flush_every_batch=flush_every_batch, rotate_bytes=rotate_bytes,
        rotate_seconds=rotate_seconds, rotate_count=rotate_count, clock=clock, writev=writev,
    )
    if cls is PcapngWriter:
        return PcapngWriter(path, options, groups=groups, stats_source=stats_source,
                            interface_names=interface_names)
    return cls(path, options)
