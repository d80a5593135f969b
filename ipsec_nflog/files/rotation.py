"""Which file a capture writes next: tcpdump's -C/-G/-W naming and slot rules.

- ``rotate_bytes`` (-C, in bytes; tcpdump's unit is 1,000,000 bytes): a file never grows past
  it: a batch that does not fit is split at a record boundary (:func:`split_point`) and
  continues in the next file. Only a single record bigger than the limit (with the header)
  makes a file bigger. Files are named like tcpdump's: ``path``, ``path1``, ``path2``...;
  with ``rotate_count`` (-W) the number is zero-padded to the width of ``rotate_count - 1``
  and wraps: ``path0`` ... ``path<W-1>``, then ``path0`` again (a ring).
- ``rotate_seconds`` (-G): the path is a strftime pattern expanded with the local time at
  which the period started; a new file starts when a batch arrives ``rotate_seconds`` or more
  after the period started (tcpdump checks per packet, we per batch). With -C too, the counter
  restarts at 0 in each period, as in tcpdump.
- ``rotate_count`` (-W) needs -C or -G and keeps at most that many files: opening one more
  deletes the oldest file this writer made. (With -G alone tcpdump exits after W files
  instead; we keep a ring.) A rotation target that this writer made earlier is replaced; any
  other existing file is an error unless ``overwrite=True``.
- A rotation slot is opened exactly like the first file (:class:`DurableFile.create
  <ipsec_nflog.files.durable.DurableFile>`). A slot that is taken (an existing file without
  ``overwrite``, a symbolic link, a FIFO of someone else's) *stops the capture cleanly*: the
  writer raises CaptureWriteError naming the slot and why. We stop rather than pick another
  name because the names are predictable anyway and a silently renamed ring is easy to miss;
  to keep others from stopping a capture this way, write into a directory only you can write.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

from ipsec_nflog.files.durable import BackgroundSync, DurableFile
from ipsec_nflog.files.options import WriterOptions

__all__ = ["Rotation", "split_point"]


class Rotation:
    """The file names of one capture and the files of them this writer made."""

    def __init__(self, pattern: str, options: WriterOptions) -> None:
        self.pattern = pattern
        self._options = options
        # tcpdump's getWflagChars: the counter gets the width of rotate_count - 1.
        wrap = options.rotate_count if options.rotate_bytes is not None else None
        self._digits = len(str(wrap - 1)) if wrap is not None and wrap > 1 else 0
        self._counter = 0
        self.period_start = options.clock()
        self._files: list[str] = []  # made by this writer and still there, oldest first

    @property
    def files(self) -> list[str]:
        return list(self._files)

    def name(self) -> str:
        """The current slot's file name."""
        base = self.pattern
        if self._options.rotate_seconds is not None:
            base = time.strftime(base, time.localtime(self.period_start))
        if self._counter == 0 and self._digits == 0:
            return base
        return f"{base}{self._counter:0{self._digits}d}"

    def room(self, file_size: int, extra: int) -> int | None:
        """Bytes a file of ``file_size`` may still take after ``extra`` (None: no -C)."""
        limit = self._options.rotate_bytes
        return None if limit is None else limit - file_size - extra

    def new_period(self) -> float | None:
        """-G: the time now if a batch arriving now belongs in a new period's file."""
        seconds = self._options.rotate_seconds
        if seconds is None:
            return None
        now = self._options.clock()
        return now if now - self.period_start >= seconds else None

    def advance(self, new_period: float | None = None) -> None:
        """Move to the next slot: a new -G period (counter back to 0), or the next number."""
        if new_period is not None:
            self.period_start, self._counter = new_period, 0
            return
        self._counter += 1
        count = self._options.rotate_count
        if count is not None and self._counter >= count:
            self._counter = 0

    def open(self, syncer: BackgroundSync) -> DurableFile:
        """Create the current slot's file: our own earlier file of that name is replaced,
        and with -W the oldest ones go so at most rotate_count files remain."""
        name, opts = self.name(), self._options
        if name in self._files:  # a ring slot (or a repeated -G name) of our own
            self._files.remove(name)
            _unlink(name)
        if opts.rotate_count is not None:
            while len(self._files) >= opts.rotate_count:
                _unlink(self._files.pop(0))
        file = DurableFile.create(name, overwrite=opts.overwrite, mode=opts.mode,
                                  writev=opts.writev, syncer=syncer)
        if file.created:  # never list (and so never delete) a device we wrote into
            self._files.append(name)
        return file

    def discard(self, file: DurableFile) -> None:
        """Remove a file :meth:`open` made that must not stay (no complete header)."""
        file.discard()
        if file.created and file.path in self._files:
            self._files.remove(file.path)


def split_point(ends: Iterator[int], room: int, file_has_records: bool) -> tuple[int, int]:
    """(bytes, records) of the leading whole records, by their end offsets ``ends``, that fit
    in ``room``; a file without records takes its first record even when it is too big."""
    cut = ncut = 0
    for end in ends:
        if end > room and (ncut or file_has_records):
            break  # a record bigger than a whole file still goes in, alone
        cut, ncut = end, ncut + 1
    return cut, ncut


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
