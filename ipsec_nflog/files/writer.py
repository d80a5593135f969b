"""Capture files: LINKTYPE_NFLOG pcap and pcapng writers, a LINKTYPE_RAW writer, tcpdump-like
rotation, and (re-exported from :mod:`ipsec_nflog.files.reader`) the reader.

Writers take batches of ring records (``Batch.data`` / ``Batch.count``: consecutive host-order
pcap records with LINKTYPE_NFLOG bodies, see docs/DESIGN.md) and write each batch with one
``writev()`` call.

Formats (``open_writer(format=...)``):

- ``"pcap"`` (the default, unless the path ends in ``.pcapng`` or ``.ntar``): what
  ``tcpdump -i nflog:N -w`` writes. Microsecond pcap, LINKTYPE_NFLOG (239), header in host
  byte order (so the TLV headers, which are in host order, match it), snaplen 262144. The ring
  bytes are written unchanged: no Python work per packet at all.
- ``"pcapng"``: one SHB; one IDB per NFLOG group, emitted the first time the group appears
  (``if_name`` "nflog:<group>", the snaplen, ``if_tsresol`` 6 = microseconds); one EPB per
  record. A record without NFULA_TIMESTAMP (the kernel sends none for OUTPUT/POSTROUTING, so
  the capture used its receive time) carries the packet comment
  ``timestamp synthesized (no NFULA_TIMESTAMP)``; a comment rather than an ``epb_flags`` bit,
  because epb_flags has no bit for it and Wireshark shows comments (``frame.comment``).
  ``close(stats=...)`` appends one ISB per IDB with the drop counters (see :func:`isb_counters`).
- ``"raw"``: LINKTYPE_RAW (101) pcap of just the IP packet (NFULA_PAYLOAD) with the original
  length preserved, for tools that cannot read NFLOG (BPF filters, nDPI, nfdump). All NFLOG
  metadata (prefix, hook, devices, mark, uid, ...) is lost; records without a payload are
  skipped (counted in ``records_skipped``).

File safety (:mod:`ipsec_nflog.files.durable`): files are created with ``O_CREAT|O_EXCL|O_NOFOLLOW``
(``FileExistsError`` if the file exists, unless ``overwrite=True``) and set to ``mode`` (0600)
with fchmod, whatever the umask. A symbolic link at the path is never followed, not even with
``overwrite`` (OSError ELOOP). ``overwrite`` replaces an existing regular file by unlinking its
name and creating a new file, never by truncating it (a planted hard link keeps its content); an
existing device (``/dev/null``), or a FIFO of root's or ours, is written into as it is.
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
never reached a file (the rest of the failing batch, or any batch given to a failed writer) are
counted in ``records_lost``, so none goes uncounted.

Rotation (tcpdump's -C/-G/-W):

- ``rotate_bytes`` (-C, in bytes; tcpdump's unit is 1,000,000 bytes): a file never grows past
  it: a batch that does not fit is split at a record boundary and continues in the next file.
  Only a single record bigger than the limit (with the header) makes a file bigger. Files are
  named like tcpdump's: ``path``, ``path1``, ``path2``...; with ``rotate_count`` (-W) the
  number is zero-padded to the width of ``rotate_count - 1`` and wraps: ``path0`` ...
  ``path<W-1>``, then ``path0`` again (a ring).
- ``rotate_seconds`` (-G): the path is a strftime pattern expanded with the local time at which
  the period started; a new file starts when a batch arrives ``rotate_seconds`` or more after
  the period started (tcpdump checks per packet, we per batch). With -C too, the counter
  restarts at 0 in each period, as in tcpdump.
- ``rotate_count`` (-W) needs -C or -G and keeps at most that many files: opening one more
  deletes the oldest file this writer made. (With -G alone tcpdump exits after W files
  instead; we keep a ring.) A rotation target that this writer made earlier is replaced; any
  other existing file is an error unless ``overwrite=True``.
- A rotation slot is opened exactly like the first file. A slot that is taken (an existing
  file without ``overwrite``, a symbolic link, a FIFO of someone else's) *stops the
  capture cleanly*: ``write_records`` raises CaptureWriteError naming the slot and why, every
  file written so far stays complete, and the records of the batch that did not fit before
  the rotation are counted in ``records_lost``. We stop rather than pick another name
  because the names are predictable anyway and a silently renamed ring is easy to miss; to
  keep others from stopping a capture this way, write into a directory only you can write.
- Every file starts with a complete header; pcapng files repeat the IDBs of every group seen
  so far, so interface ids stay the same across files.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Callable, ClassVar, Protocol, TypeVar, Union

from ipsec_nflog.files.durable import create_output_file
from ipsec_nflog.files.format import (
    BLOCK_EPB,
    BLOCK_IDB,
    BLOCK_ISB,
    BLOCK_SHB,
    BYTE_ORDER_MAGIC,
    HOST,
    IF_DESCRIPTION,
    IF_NAME,
    IF_TSRESOL,
    ISB_CODES,
    LINKTYPE_NFLOG,
    LINKTYPE_RAW,
    MAX_SNAPLEN,
    NFULA_PAYLOAD,
    NFULA_TIMESTAMP,
    NLA_TYPE_MASK,
    OPT_COMMENT,
    PCAP_MAGIC_USEC,
    PCAP_VERSION,
    SHB_OS,
    SHB_USERAPPL,
    Buffer,
    CaptureFileError,
    CaptureWriteError,
    encode_block,
    encode_options,
    os_description,
)
from ipsec_nflog.files.reader import CaptureReader, FilePacket, Interface, read_capture

__all__ = [
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
    "default_format",
    "isb_counters",
    "open_writer",
    "read_capture",
]

SYNTHESIZED_COMMENT = "timestamp synthesized (no NFULA_TIMESTAMP)"
FORMATS = ("pcap", "pcapng", "raw")
WriteV = Callable[[int, Sequence[Buffer]], int]
Clock = Callable[[], float]
_Writer = TypeVar("_Writer", bound="CaptureWriter")

_REC = struct.Struct("=IIII")  # ring / pcap record header, host order
_TLV = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_EPB_HEAD = struct.Struct("=IIIIIII")
_SYNTH_OPTS = encode_options(HOST, [(OPT_COMMENT, SYNTHESIZED_COMMENT.encode())])
_EPB_EXTRA = _EPB_HEAD.size + 4 - _REC.size + 3 + len(_SYNTH_OPTS)  # worst-case growth


class BatchLike(Protocol):
    """What ``write_batch`` takes: ``Capture.read_batch()``'s ``Batch``."""

    @property
    def data(self) -> Buffer: ...

    @property
    def count(self) -> int: ...


def _version() -> str:
    try:
        from ipsec_nflog._version import __version__

        return str(__version__)
    except ImportError:  # pragma: no cover - the file ships with the package
        return "?"


def _pcap_header(linktype: int, snaplen: int) -> bytes:
    return struct.pack("=IHHiIII", PCAP_MAGIC_USEC, *PCAP_VERSION, 0, 0, snaplen, linktype)


def _iter_ring(mv: memoryview, count: int) -> Iterator[tuple[int, int, int, int, int, int]]:
    """(ts_sec, ts_usec, caplen, orig_len, body offset, end offset) of each ring record;
    ValueError when the buffer is not ``count`` whole records."""
    off, end, n = 0, len(mv), 0
    unpack = _REC.unpack_from
    while off < end:
        if off + 16 > end:
            raise ValueError(f"partial record header at batch offset {off}")
        sec, usec, caplen, orig_len = unpack(mv, off)
        body, nxt = off + 16, off + 16 + caplen
        if nxt > end or caplen < 4:
            raise ValueError(f"record at batch offset {off} (caplen {caplen}) is malformed")
        if n == count:
            raise ValueError(f"batch holds more records than its count {count}")
        yield sec, usec, caplen, orig_len, body, nxt
        off = nxt
        n += 1
    if n != count:
        raise ValueError(f"batch holds {n} records, but count is {count}")


def _find_tlv(mv: memoryview, off: int, end: int, want: int) -> tuple[int, int]:
    """(value offset, value length) of the first host-order TLV of type ``want`` in
    mv[off:end], or (-1, 0)."""
    unpack = _TLV.unpack_from
    while off + 4 <= end:
        length, atype = unpack(mv, off)
        if length < 4 or off + length > end:
            break
        if atype & NLA_TYPE_MASK == want:
            return off + 4, length - 4
        off += (length + 3) & ~3
    return -1, 0


def _pcap_record_ends(body: memoryview) -> Iterator[int]:
    """End offsets of the complete pcap records in ``body``."""
    off, end = 0, len(body)
    while off + 16 <= end:
        off += 16 + _REC.unpack_from(body, off)[2]
        if off > end:
            return
        yield off


def _block_ends(body: memoryview) -> Iterator[int]:
    """End offsets of the complete pcapng blocks in ``body``."""
    off, end = 0, len(body)
    while off + 8 <= end:
        length = _U32.unpack_from(body, off + 4)[0]
        off += length
        if length < 12 or off > end:
            return
        yield off


def _dup(fd: int, name: str) -> int:
    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 0)
    except OSError as e:
        raise type(e)(e.errno, f"cannot write to {name}: {e.strerror}", name) from None


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class _BackgroundSync:
    """fdatasync off the capture's hot path. A dup of the descriptor goes to one worker
    thread, so a slow disk never stalls the consumer (a stall overflows the ring: measured
    at 1400-byte packets). At most one sync is pending; an error is kept for the writer."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending = -1
        self._busy = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.error: OSError | None = None

    def request(self, fd: int) -> None:
        with self._cond:
            if self._pending >= 0 or self._stopping:
                return  # one already waits: it will cover this data too
            self._pending = os.dup(fd)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pcap-fdatasync",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending < 0 and not self._stopping:
                    self._cond.wait()
                if self._pending < 0:
                    return
                fd, self._pending, self._busy = self._pending, -1, True
            try:
                os.fdatasync(fd)
            except OSError as e:
                self.error = self.error or e
            finally:
                os.close(fd)
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def wait(self) -> None:
        """Until no sync is pending or running."""
        with self._cond:
            while self._pending >= 0 or self._busy:
                self._cond.wait()

    def close(self) -> None:
        """Finish the pending sync and stop the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._pending >= 0:
            os.close(self._pending)
            self._pending = -1


class CaptureWriter:
    """Base of the writers: file creation, one-write-per-batch, rotation, sync, errors.

    Subclasses provide the file header, the encoding of a batch, and pcapng's extra blocks.
    ``write_records`` takes any bytes-like buffer of ``count`` ring records.
    """

    format: ClassVar[str]
    linktype: ClassVar[int]

    def __init__(
        self,
        path: Union[str, os.PathLike[str], int],
        *,
        overwrite: bool = False,
        mode: int = 0o600,
        snaplen: int = MAX_SNAPLEN,
        flush_interval: float | None = 1.0,
        flush_every_batch: bool = False,
        rotate_bytes: int | None = None,
        rotate_seconds: float | None = None,
        rotate_count: int | None = None,
        clock: Clock = time.time,
        writev: WriteV = os.writev,
    ) -> None:
        if not 1 <= snaplen <= MAX_SNAPLEN:
            raise ValueError(f"snaplen must be 1..{MAX_SNAPLEN}, not {snaplen}")
        if not 0 <= mode <= 0o7777:
            raise ValueError(f"mode must be a permission mode like 0o600, not {mode:#o}")
        if flush_interval is not None and flush_interval < 0:
            raise ValueError(f"flush_interval must be >= 0 seconds or None, not {flush_interval}")
        if rotate_bytes is not None and rotate_bytes < 1:
            raise ValueError(f"rotate_bytes must be positive, not {rotate_bytes}")
        if rotate_seconds is not None and rotate_seconds <= 0:
            raise ValueError(f"rotate_seconds must be positive, not {rotate_seconds}")
        if rotate_count is not None:
            if rotate_count < 1:
                raise ValueError(f"rotate_count must be >= 1, not {rotate_count}")
            if rotate_bytes is None and rotate_seconds is None:
                raise ValueError("rotate_count needs rotate_bytes or rotate_seconds (like -W)")
        self._target_fd = path if isinstance(path, int) else -1
        if self._target_fd >= 0 and (rotate_bytes is not None or rotate_seconds is not None):
            raise ValueError("a file descriptor cannot rotate (rotate_bytes/rotate_seconds)")
        self._pattern = "" if isinstance(path, int) else os.fspath(path)
        self._overwrite = overwrite
        self._mode = mode
        self.snaplen = snaplen
        self._flush_interval = flush_interval
        self._flush_every_batch = flush_every_batch
        self._rotate_bytes = rotate_bytes
        self._rotate_seconds = rotate_seconds
        self._rotate_count = rotate_count
        # tcpdump's getWflagChars: the counter gets the width of rotate_count - 1.
        wrap = rotate_count if rotate_bytes is not None else None
        self._digits = len(str(wrap - 1)) if wrap is not None and wrap > 1 else 0
        self._clock = clock
        self._writev = writev
        self.records_written = 0  # on disk, over all files
        self.bytes_written = 0
        self.records_skipped = 0  # records a format could not represent (raw: no payload)
        self.records_lost = 0  # handed to write_records, never reached a file (I/O errors)
        self.created = False  # this writer created the current file (chown it, not others)
        self._files: list[str] = []  # files this writer created that still exist, oldest first
        self._counter = 0
        self._fd = -1
        self._failed = False
        self._closed = False
        self._dirty = False
        self._regular = False  # a regular file: fchmod, ftruncate and fdatasync apply
        self._file_size = self._file_records = 0  # the current file's
        self.path = ""  # the current file
        self._started = self._period_start = self._last_sync = clock()
        self._background = _BackgroundSync()
        self._open_file()

    # -- public API ----------------------------------------------------------------------
    @property
    def files(self) -> list[str]:
        """The files this writer created that still exist, oldest first (the last is current,
        unless the current one is a device or descriptor it writes into: see ``created``)."""
        return list(self._files)

    @property
    def closed(self) -> bool:
        return self._closed

    def fileno(self) -> int:
        return self._fd

    def write_records(self, buf: Buffer, count: int) -> None:
        """Append ``count`` ring records from ``buf`` (bytes-like) with one write per file.

        Raises CaptureWriteError on I/O errors (the file keeps every complete record), and
        ValueError if the writer is closed or failed, or (pcapng, raw) ``buf`` is not ``count``
        whole records. Records that do not reach a file because of an error or an interrupt
        (or because the writer had already failed) are added to ``records_lost``.
        """
        if self._closed or self._failed:
            self.records_lost += max(count, 0)
            raise ValueError(f"capture writer for {self.path} is {self._state()}")
        mv = memoryview(buf).cast("B")
        if count < 0 or (count == 0) != (len(mv) == 0) or len(mv) < 16 * count:
            raise ValueError(f"{len(mv)} bytes cannot hold {count} records")
        if count == 0:
            return
        data, nrec = self._encode(mv, count)
        before = self.records_written
        try:
            self._write_encoded(memoryview(data), nrec)
        except BaseException:
            self.records_lost += nrec - (self.records_written - before)
            raise

    def _write_encoded(self, body: memoryview, nrec: int) -> None:
        """Commit one encoded batch, rotating as needed, then sync if due."""
        if self._rotate_seconds is not None:
            now = self._clock()
            if now - self._period_start >= self._rotate_seconds:
                self._rotate(new_period=now)
        while True:
            prefix = self._prefix()
            room = self._room(len(prefix))
            if room is None or len(body) <= room or not body:
                self._commit(prefix, body, nrec)
                break
            cut = ncut = 0
            for end in self._record_ends(body):
                if end > room and (ncut or self._file_records):
                    break  # a record bigger than a whole file still goes in, alone
                cut, ncut = end, ncut + 1
            if ncut:
                self._commit(prefix, body[:cut], ncut)
                body, nrec = body[cut:], nrec - ncut
                if not body:
                    break
            elif not self._file_records:  # not even one record parses: do not spin
                raise ValueError(f"batch is not whole pcap records ({len(body)} bytes left)")
            self._rotate()
        if self._flush_every_batch:
            self._sync()
        else:
            self.flush_if_due()

    def write_batch(self, batch: BatchLike) -> None:
        """``write_records(batch.data, batch.count)``."""
        self.write_records(batch.data, batch.count)

    def flush(self) -> None:
        """fdatasync the current file now."""
        if not (self._closed or self._failed):
            self._sync()

    def flush_if_due(self) -> None:
        """fdatasync if ``flush_interval`` has passed since the last one and data is pending."""
        if self._closed or self._failed or not self._dirty or self._flush_interval is None:
            return
        if self._clock() - self._last_sync >= self._flush_interval:
            self._sync(background=True)

    def close(self, stats: Any = None) -> None:
        """Finish (pcapng: ISBs from ``stats``), sync and close the file. Idempotent.

        After a write error the file is closed as it is (already truncated to its last
        complete record)."""
        if self._closed:
            return
        self._closed = True
        self._background.close()
        if self._fd < 0:
            return
        try:
            if not self._failed:
                self._finish_file(stats)
        finally:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self: _Writer) -> _Writer:
        return self

    def __del__(self) -> None:
        # An unclosed writer must not leak its descriptor; close() is the real way out.
        fd = getattr(self, "_fd", -1)
        if fd >= 0:
            self._fd = -1
            os.close(fd)

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.path!r} {self._state()} "
            f"records={self.records_written} bytes={self.bytes_written}>"
        )

    # -- format hooks --------------------------------------------------------------------
    def _header(self) -> bytes:
        return _pcap_header(self.linktype, self.snaplen)

    def _encode(self, mv: memoryview, count: int) -> tuple[Buffer, int]:
        """The batch in this file format, and the number of records in it."""
        raise NotImplementedError

    def _prefix(self) -> bytes:
        """Blocks the current file needs before the next records (pcapng: new IDBs)."""
        return b""

    def _record_ends(self, body: memoryview) -> Iterator[int]:
        """End offsets of the complete records in encoded ``body``."""
        return _pcap_record_ends(body)

    def _trailer(self, stats: Any) -> bytes:
        """Blocks that end a file (pcapng: ISBs)."""
        return b""

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

    def _room(self, extra: int) -> int | None:
        if self._rotate_bytes is None:
            return None
        return self._rotate_bytes - self._file_size - extra

    def _file_name(self) -> str:
        base = self._pattern
        if self._rotate_seconds is not None:
            base = time.strftime(base, time.localtime(self._period_start))
        if self._counter == 0 and self._digits == 0:
            return base
        return f"{base}{self._counter:0{self._digits}d}"

    def _open_file(self) -> None:
        if self._target_fd >= 0:
            name = "<stdout>" if self._target_fd == 1 else f"<fd {self._target_fd}>"
            self._fd = _dup(self._target_fd, name)
            self.created = False
        else:
            name = self._file_name()
            if name in self._files:  # a ring slot (or a repeated -G name) of our own: replace it
                self._files.remove(name)
                _unlink(name)
            if self._rotate_count is not None:
                while len(self._files) >= self._rotate_count:
                    _unlink(self._files.pop(0))
            self._fd, self.created = create_output_file(name, overwrite=self._overwrite,
                                                        mode=self._mode)
            if self.created:  # never list (and so never delete) a device we wrote into
                self._files.append(name)
        self.path = name
        self._regular = stat.S_ISREG(os.fstat(self._fd).st_mode)
        self._file_size = self._file_records = 0
        header = self._header()
        try:
            self._commit(header, memoryview(b""), 0)
        except BaseException:
            # A file without a whole header is not a capture file: remove it.
            os.close(self._fd)
            self._fd = -1
            if self.created:
                _unlink(name)
                self._files.remove(name)
            raise

    def _rotate(self, new_period: float | None = None) -> None:
        self._finish_file(None, background=True)
        os.close(self._fd)
        self._fd = -1
        if new_period is not None:
            self._period_start, self._counter = new_period, 0
        else:
            self._counter += 1
            if self._rotate_count is not None and self._counter >= self._rotate_count:
                self._counter = 0
        try:
            self._open_file()
        except CaptureWriteError:
            raise
        except OSError as e:
            raise self._error(e, "cannot start the next capture file", e.filename) from None

    def _finish_file(self, stats: Any, background: bool = False) -> None:
        trailer = self._trailer(stats)
        if trailer:
            self._commit(trailer, memoryview(b""), 0)
        self._sync(background)

    def _commit(self, prefix: bytes, body: memoryview, nrec: int) -> None:
        """Write prefix + body completely with writev; on failure keep whole records only."""
        views = [v for v in (memoryview(prefix), body) if len(v)]
        done = 0
        try:
            while views:
                n = self._writev(self._fd, views)
                if n <= 0:
                    raise OSError(errno.EIO, "write() made no progress")
                done += n
                while views and n >= len(views[0]):
                    n -= len(views.pop(0))
                if n:
                    views[0] = views[0][n:]
        except BaseException as exc:
            self._keep_whole_records(prefix, body, done)
            if isinstance(exc, OSError):
                raise self._error(exc, f"writing {self.path} failed") from exc
            raise  # KeyboardInterrupt & co.: the file is consistent, let it propagate
        self._file_size += done
        self._file_records += nrec
        self.records_written += nrec
        self.bytes_written += done
        self._dirty = True

    def _keep_whole_records(self, prefix: bytes, body: memoryview, done: int) -> None:
        """After a partial write: truncate to the last complete record, count what stays."""
        self._failed = True
        if self._regular:
            try:  # the file position is exact even if the interrupt hid writev's result
                done = os.lseek(self._fd, 0, os.SEEK_CUR) - self._file_size
            except OSError:
                pass
        keep = records = 0
        if done >= len(prefix):
            keep = len(prefix)
            for end in self._record_ends(body):
                if len(prefix) + end > done:
                    break
                keep, records = len(prefix) + end, records + 1
        if self._regular and keep < done:
            try:
                os.ftruncate(self._fd, self._file_size + keep)
                os.lseek(self._fd, self._file_size + keep, os.SEEK_SET)
            except OSError:
                pass  # nothing better to do; the error being raised says what went wrong
        self._file_size += keep
        self._file_records += records
        self.records_written += records
        self.bytes_written += keep

    def _sync(self, background: bool = False) -> None:
        failed = self._background.error
        if failed is not None:
            raise self._error(failed, f"fdatasync of {self.path} failed")
        if self._regular and self._dirty:
            try:
                if background:
                    self._background.request(self._fd)
                else:
                    os.fdatasync(self._fd)
            except OSError as e:
                raise self._error(e, f"fdatasync of {self.path} failed") from e
        self._dirty = False
        self._last_sync = self._clock()


class PcapWriter(CaptureWriter):
    """LINKTYPE_NFLOG microsecond pcap in host byte order: ring batches written unchanged."""

    format = "pcap"
    linktype = LINKTYPE_NFLOG

    def _encode(self, mv: memoryview, count: int) -> tuple[Buffer, int]:
        return mv, count  # the ring already holds pcap records: no per-packet work


class RawWriter(CaptureWriter):
    """LINKTYPE_RAW pcap of the NFLOG payloads (IPv4/IPv6); NFLOG metadata is dropped."""

    format = "raw"
    linktype = LINKTYPE_RAW

    def _encode(self, mv: memoryview, count: int) -> tuple[Buffer, int]:
        out = bytearray(len(mv))  # a payload is never longer than its record
        pack = _REC.pack_into
        p = n = 0
        for sec, usec, caplen, orig_len, body, end in _iter_ring(mv, count):
            start, length = _find_tlv(mv, body + 4, end, NFULA_PAYLOAD)
            if start < 0:
                self.records_skipped += 1
                continue
            # orig_len - caplen is what the snaplen cut from the payload's end
            pack(out, p, sec, usec, length, length + max(orig_len - caplen, 0))
            out[p + 16 : p + 16 + length] = mv[start : start + length]
            p += 16 + length
            n += 1
        return memoryview(out)[:p], n


class PcapngWriter(CaptureWriter):
    """pcapng with one IDB per NFLOG group and EPBs; ISBs at close from ``stats``.

    ``groups`` pre-declares groups, so their IDBs (and interface ids 0, 1, ...) come first.
    ``stats_source`` is called at each rotation to put ISBs in rotated files too (and at
    close when ``close()`` gets no stats).
    """

    format = "pcapng"
    linktype = LINKTYPE_NFLOG

    def __init__(
        self,
        path: Union[str, os.PathLike[str], int],
        *,
        groups: Sequence[int] = (),
        stats_source: Callable[[], Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._groups: list[int] = []
        self._iface_ids: dict[int, int] = {}
        self._file_ifaces = 0  # IDBs in the current file
        self._stats_source = stats_source
        for g in groups:
            self._add_group(g)
        super().__init__(path, **kwargs)

    @property
    def groups(self) -> list[int]:
        """NFLOG groups by interface id."""
        return list(self._groups)

    def _add_group(self, group: int) -> int:
        if not 0 <= group <= 0xFFFF:
            raise ValueError(f"NFLOG group must be 0..65535, not {group}")
        iface = self._iface_ids.get(group)
        if iface is None:
            iface = self._iface_ids[group] = len(self._groups)
            self._groups.append(group)
        return iface

    def _idbs(self, start: int) -> bytes:
        """IDBs for interface ids start.., marking them present in the current file."""
        blocks = []
        for group in self._groups[start:]:
            opts = [
                (IF_NAME, f"nflog:{group}".encode()),
                (IF_DESCRIPTION, f"NFLOG group {group}".encode()),
                (IF_TSRESOL, b"\x06"),  # microseconds, like the ring's timestamps
            ]
            body = struct.pack("=HHI", LINKTYPE_NFLOG, 0, self.snaplen)
            blocks.append(encode_block(HOST, BLOCK_IDB, body + encode_options(HOST, opts)))
        self._file_ifaces = len(self._groups)
        return b"".join(blocks)

    def _header(self) -> bytes:
        opts = [
            (SHB_OS, os_description().encode()),
            (SHB_USERAPPL, f"ipsec_nflog {_version()}".encode()),
        ]
        body = struct.pack("=IHHq", BYTE_ORDER_MAGIC, 1, 0, -1) + encode_options(HOST, opts)
        return encode_block(HOST, BLOCK_SHB, body) + self._idbs(0)

    def _prefix(self) -> bytes:
        return self._idbs(self._file_ifaces) if self._file_ifaces < len(self._groups) else b""

    def _record_ends(self, body: memoryview) -> Iterator[int]:
        return _block_ends(body)

    def _encode(self, mv: memoryview, count: int) -> tuple[Buffer, int]:
        out = bytearray(len(mv) + count * _EPB_EXTRA)  # zeroed, so padding is free
        pack, u32 = _EPB_HEAD.pack_into, _U32.pack_into
        ids, add = self._iface_ids, self._add_group
        synth, nsynth = _SYNTH_OPTS, len(_SYNTH_OPTS)
        p = 0
        for sec, usec, caplen, orig_len, body, end in _iter_ring(mv, count):
            group = (mv[body + 2] << 8) | mv[body + 3]
            iface = ids.get(group)
            if iface is None:
                iface = add(group)
            data = p + 28
            out[data : data + caplen] = mv[body:end]
            q = data + ((caplen + 3) & ~3)
            if _find_tlv(mv, body + 4, end, NFULA_TIMESTAMP)[0] < 0:
                out[q : q + nsynth] = synth
                q += nsynth
            ts = sec * 1_000_000 + usec
            pack(out, p, BLOCK_EPB, q + 4 - p, iface, ts >> 32, ts & 0xFFFFFFFF, caplen, orig_len)
            u32(out, q, q + 4 - p)
            p = q + 4
        return memoryview(out)[:p], count

    def _trailer(self, stats: Any) -> bytes:
        if stats is None and self._stats_source is not None:
            stats = self._stats_source()
        if stats is None:
            return b""
        counters = isb_counters(stats)
        for group in counters:  # drops on a group that logged nothing still get shown
            self._add_group(group)
        now = int(self._clock() * 1_000_000)
        start = int(self._started * 1_000_000)
        times = [(ISB_CODES["starttime"], start), (ISB_CODES["endtime"], now)]
        isbs = []
        for iface, group in enumerate(self._groups):
            if group not in counters:
                continue
            values, comment = counters[group]
            opts = [(code, struct.pack("=Q", v)) for code, v in times + values]
            if comment:
                opts.append((OPT_COMMENT, comment.encode()))
            head = struct.pack("=III", iface, now >> 32, now & 0xFFFFFFFF)
            isbs.append(encode_block(HOST, BLOCK_ISB, head + encode_options(HOST, opts)))
        return self._prefix() + b"".join(isbs)


def isb_counters(stats: Any) -> dict[int, tuple[list[tuple[int, int]], str]]:
    """ISB options per group, from what ``PcapngWriter.close(stats=...)`` accepts:

    - a mapping ``group -> (received, dropped)``: isb_ifrecv = received, isb_ifdrop = dropped;
    - an object with a ``groups`` mapping (``CaptureStats``), or a mapping, whose values have
      ``received_packets``, ``seq_gap_packets``, ``ring_drop_packets`` (and optionally
      ``socket_drops``, ``enobufs_events``): isb_ifrecv = received_packets; isb_ifdrop = every
      lost packet, seq_gap_packets + ring_drop_packets (what Wireshark shows as "dropped",
      as dumpcap does); isb_osdrop = seq_gap_packets (lost in the kernel, before our socket).
      All raw counters also go into the ISB's comment, since socket_drops and
      enobufs_events overlap the sequence gaps and are not all packet counts.

    Returns ``{group: ([(option code, value)], comment)}``; TypeError for anything else.
    """
    groups = getattr(stats, "groups", stats)
    if not isinstance(groups, Mapping):
        raise TypeError(
            "stats must map group -> (received, dropped) or have a .groups mapping of "
            f"GroupStats, not {type(stats).__name__}"
        )
    result: dict[int, tuple[list[tuple[int, int]], str]] = {}
    for group, value in groups.items():
        if isinstance(value, (tuple, list)):
            received, dropped = value
            result[int(group)] = (
                [(ISB_CODES["ifrecv"], int(received)), (ISB_CODES["ifdrop"], int(dropped))],
                "",
            )
            continue
        raw = {
            name: int(getattr(value, name, 0))
            for name in (
                "received_packets",
                "seq_gap_packets",
                "ring_drop_packets",
                "socket_drops",
                "enobufs_events",
            )
        }
        options = [
            (ISB_CODES["ifrecv"], raw["received_packets"]),
            (ISB_CODES["ifdrop"], raw["seq_gap_packets"] + raw["ring_drop_packets"]),
            (ISB_CODES["osdrop"], raw["seq_gap_packets"]),
        ]
        result[int(group)] = (options, " ".join(f"{k}={v}" for k, v in raw.items()))
    return result


_WRITERS: dict[str, type[CaptureWriter]] = {
    "pcap": PcapWriter,
    "pcapng": PcapngWriter,
    "raw": RawWriter,
}


def default_format(path: Union[str, os.PathLike[str], int]) -> str:
    """ "pcapng" for paths ending in .pcapng/.ntar, else "pcap" (tcpdump's format, also for
    a file descriptor)."""
    if isinstance(path, int):
        return "pcap"
    return "pcapng" if os.fspath(path).lower().endswith((".pcapng", ".ntar")) else "pcap"


def open_writer(
    path: Union[str, os.PathLike[str], int],
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
    stats_source: Callable[[], Any] | None = None,
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
    - ``groups``, ``stats_source``: pcapng only, see :class:`PcapngWriter`.
    - ``clock`` (time.time) and ``writev`` (os.writev): for tests.

    Raises FileExistsError, OSError naming the path, CaptureWriteError (the header could not
    be written; the new file is removed), ValueError for bad options.
    """
    fmt = default_format(path) if format is None else format
    cls = _WRITERS.get(fmt)
    if cls is None:
        raise ValueError(f"unknown capture format {fmt!r}; choose one of {', '.join(FORMATS)}")
    common: dict[str, Any] = dict(
        overwrite=overwrite,
        mode=mode,
        snaplen=snaplen,
        flush_interval=flush_interval,
        flush_every_batch=flush_every_batch,
        rotate_bytes=rotate_bytes,
        rotate_seconds=rotate_seconds,
        rotate_count=rotate_count,
        clock=clock,
        writev=writev,
    )
    if cls is PcapngWriter:
        return PcapngWriter(path, groups=groups, stats_source=stats_source, **common)
    if groups or stats_source is not None:
        raise ValueError(f"groups and stats_source only apply to pcapng, not {fmt}")
    return cls(path, **common)
