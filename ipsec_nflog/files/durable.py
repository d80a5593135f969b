"""Output files (captures, keys): created without following planted links, and written so
that a failure leaves whole records only (:class:`DurableFile`).

Captures often run as root in shared directories, and hold decrypted traffic or keys, so a
name someone else planted at the output path must never redirect what we write or what we
chown. :func:`create_output_file` is the one way files are opened for writing here:

- A new file is created with ``O_CREAT|O_EXCL|O_NOFOLLOW`` and set to ``mode`` with fchmod,
  whatever the umask (``created`` is True).
- A symbolic link at the path is never followed, with or without ``overwrite``: OSError
  ELOOP naming it. (O_EXCL alone already refuses it; we say why.)
- Any other existing name is FileExistsError unless ``overwrite``. With ``overwrite``, a
  regular file is *replaced*, not truncated: its name is unlinked and a new file created with
  O_EXCL in its place. A hard link planted there keeps its content, and the file written is
  always one this call created (``created`` True), so chowning it is safe.
- With ``overwrite``, an existing device (``/dev/null``; unprivileged users cannot make
  device nodes) or a FIFO owned by root or by our effective user is opened as it is: neither
  truncated nor chmodded (``created`` False, so the caller must not chown it). A FIFO of
  anyone else's is refused, since it would hand the data to them; so are directories and
  sockets.

:class:`DurableFile` writes a capture file: each ``write`` is one ``writev`` of a run of
records (repeated only for short writes), so readers of the file and a crash of this process
never see part of a run. On an error or an interrupt in the middle of one, the file is cut
back to its last complete record. ``fdatasync`` runs on demand, or off the caller's thread
(:class:`BackgroundSync`).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import threading
from collections.abc import Callable, Iterator, Sequence

from ipsec_nflog.nflog.codec import Buffer

__all__ = ["BackgroundSync", "DurableFile", "create_output_file"]

WriteV = Callable[[int, Sequence[Buffer]], int]
RecordEnds = Callable[[memoryview], Iterator[int]]

_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_EXISTING = os.O_WRONLY | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
_ATTEMPTS = 3  # the name is unlinked and recreated; someone racing us gets an error


def create_output_file(path: str, *, overwrite: bool, mode: int,
                       what: str = "capture file") -> tuple[int, bool]:
    """(descriptor open for writing, whether this call created the file); see the module
    docstring. Errors are OSErrors whose message names ``what`` and ``path``."""
    for _ in range(_ATTEMPTS):
        try:
            fd = os.open(path, _NEW, mode)
        except FileExistsError:
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue  # gone again in between: try to create it
            if stat.S_ISLNK(st.st_mode):
                raise OSError(errno.ELOOP, f"{what} {path} is a symbolic link; not following "
                              "it (remove it, or name the file it points to)", path) from None
            if not overwrite:
                raise FileExistsError(errno.EEXIST, f"{what} {path} already exists; not "
                                      "overwriting it (pass overwrite=True)", path) from None
            if stat.S_ISREG(st.st_mode):
                _unlink_for_replacement(path, what)
                continue
            return _open_special(path, st, what), False
        except OSError as e:
            raise type(e)(e.errno, f"cannot create {what} {path}: {e.strerror}", path) from None
        try:
            os.fchmod(fd, mode)
        except BaseException:
            os.close(fd)
            raise
        return fd, True
    raise FileExistsError(errno.EEXIST, f"{what} {path} keeps being recreated by someone else; "
                          "not writing to it", path)


def _unlink_for_replacement(path: str, what: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise type(e)(e.errno, f"cannot replace {what} {path}: {e.strerror}", path) from None


def _open_special(path: str, st: os.stat_result, what: str) -> int:
    """An existing device, or a FIFO of root's or ours, opened as it is."""
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, f"{what} {path} is a directory", path)
    device = stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
    if not device and not (stat.S_ISFIFO(st.st_mode) and st.st_uid in (0, os.geteuid())):
        raise PermissionError(errno.EPERM, f"{what} {path} is a {_kind(st)} and not a "
                              "device; not writing into it", path)
    try:
        fd = os.open(path, _EXISTING)
    except OSError as e:
        raise type(e)(e.errno, f"cannot open {what} {path}: {e.strerror}", path) from None
    now = os.fstat(fd)
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) or stat.S_ISREG(now.st_mode):
        os.close(fd)  # swapped under us (for a hard link to a regular file, say)
        raise FileExistsError(errno.EEXIST, f"{what} {path} changed while it was opened; "
                              "not writing to it", path)
    return fd


def _kind(st: os.stat_result) -> str:
    if stat.S_ISFIFO(st.st_mode):
        return f"FIFO owned by uid {st.st_uid}"
    return "socket" if stat.S_ISSOCK(st.st_mode) else "special file"


class BackgroundSync:
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


class DurableFile:
    """One open capture file (or a device, FIFO or descriptor written into as it is).

    ``size``/``records`` count what is in it; ``created`` says whether it is a file this
    process made (only those may be chowned or removed); ``regular`` whether ftruncate and
    fdatasync apply. The methods raise OSError; the writer names the path and the counts.
    """

    def __init__(self, fd: int, path: str, created: bool, writev: WriteV,
                 syncer: BackgroundSync) -> None:
        self.fd, self.path, self.created = fd, path, created
        self._writev = writev
        self._syncer = syncer
        try:
            self.regular = stat.S_ISREG(os.fstat(fd).st_mode)
        except BaseException:
            os.close(fd)
            raise
        self.size = self.records = 0
        self.dirty = False  # written since the last sync

    @classmethod
    def create(cls, path: str, *, overwrite: bool, mode: int, writev: WriteV,
               syncer: BackgroundSync) -> DurableFile:
        """A file made with :func:`create_output_file`."""
        fd, created = create_output_file(path, overwrite=overwrite, mode=mode)
        return cls(fd, path, created, writev, syncer)

    @classmethod
    def duplicate(cls, fd: int, name: str, *, writev: WriteV,
                  syncer: BackgroundSync) -> DurableFile:
        """Write into an open descriptor (``-w -``) through a close-on-exec duplicate."""
        try:
            dup = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 0)
        except OSError as e:
            raise type(e)(e.errno, f"cannot write to {name}: {e.strerror}", name) from None
        return cls(dup, name, False, writev, syncer)

    def write(self, prefix: Buffer, body: memoryview, nrec: int, record_ends: RecordEnds
              ) -> None:
        """prefix + body (nrec records) completely. On any exception the file keeps the
        prefix and the whole records of body that made it (``record_ends``: their end
        offsets in body), the rest is cut off, and the exception propagates."""
        views = [v for v in (memoryview(prefix), body) if len(v)]
        done = 0
        try:
            while views:
                n = self._writev(self.fd, views)
                if n <= 0:
                    raise OSError(errno.EIO, "write() made no progress")
                done += n
                while views and n >= len(views[0]):
                    n -= len(views.pop(0))
                if n:
                    views[0] = views[0][n:]
        except BaseException:
            self._keep_whole_records(len(prefix), body, done, record_ends)
            raise
        self.size += done
        self.records += nrec
        self.dirty = True

    def _keep_whole_records(self, nprefix: int, body: memoryview, done: int,
                            record_ends: RecordEnds) -> None:
        """After a partial write: truncate to the last complete record, count what stays."""
        if self.regular:
            try:  # the file position is exact even if the interrupt hid writev's result
                done = os.lseek(self.fd, 0, os.SEEK_CUR) - self.size
            except OSError:
                pass
        keep = records = 0
        if done >= nprefix:
            keep = nprefix
            for end in record_ends(body):
                if nprefix + end > done:
                    break
                keep, records = nprefix + end, records + 1
        if self.regular and keep < done:
            try:
                os.ftruncate(self.fd, self.size + keep)
                os.lseek(self.fd, self.size + keep, os.SEEK_SET)
            except OSError:
                pass  # nothing better to do; the error being raised says what went wrong
        self.size += keep
        self.records += records

    def sync(self, background: bool = False) -> None:
        """fdatasync what was written (on the worker thread with ``background``); raises a
        failure of an earlier background sync first."""
        if self._syncer.error is not None:
            raise self._syncer.error
        if self.regular and self.dirty:
            if background:
                self._syncer.request(self.fd)
            else:
                os.fdatasync(self.fd)
        self.dirty = False

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def discard(self) -> None:
        """Close, and remove the file if this process created it (it is no capture file)."""
        self.close()
        if self.created:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def __del__(self) -> None:
        # An unclosed file must not leak its descriptor; close() is the real way out.
        if getattr(self, "fd", -1) >= 0:
            self.close()
