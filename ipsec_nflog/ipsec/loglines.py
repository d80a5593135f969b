"""Reading logs (and other untrusted text files) line by line with bounded memory."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import IO, Union

__all__ = ["MAX_LOG_GAP", "MAX_LOG_LINE", "LogLines", "PathLike", "open_log"]

PathLike = Union[str, os.PathLike[str]]

MAX_LOG_LINE = 64 * 1024  # bytes; charon's longest lines (hex dumps) are ~100
MAX_LOG_GAP = 16 * 1024 * 1024  # no line break in this many bytes: not a text log


class LogLines:
    """The lines of a text file, streamed: each is decoded as UTF-8 (errors replaced) and
    keeps its line ending. A line longer than ``max_line`` bytes is skipped (``skipped``
    counts them); no line break in ``max_gap`` bytes means the file is not a text log, and
    iteration stops there (``stopped_at`` is the offset of that line). ``warnings()`` says
    what was left out. Memory is bounded by ``max_line``, whatever the file."""

    def __init__(self, f: IO[bytes], *, max_line: int = MAX_LOG_LINE,
                 max_gap: int = MAX_LOG_GAP) -> None:
        self._f = f
        self.max_line, self.max_gap = max_line, max_gap
        self.skipped = 0
        self.stopped_at: int | None = None

    def __iter__(self) -> Iterator[str]:
        offset = 0
        while line := self._f.readline(self.max_line + 1):
            start = offset
            offset += len(line)
            if len(line) <= self.max_line or line.endswith(b"\n"):
                yield line.decode("utf-8", "replace")
                continue
            while not line.endswith(b"\n"):  # skip the rest of the long line
                line = self._f.readline(self.max_line)
                offset += len(line)
                if not line:
                    break
                if offset - start > self.max_gap:
                    self.stopped_at = start
                    return
            self.skipped += 1

    def warnings(self) -> list[str]:
        out = []
        if self.skipped:
            out.append(f"{self.skipped} line(s) longer than {self.max_line} bytes skipped")
        if self.stopped_at is not None:
            out.append(f"no line break in {self.max_gap} bytes from byte offset "
                       f"{self.stopped_at}: not a text log, stopped reading it there")
        return out


@contextlib.contextmanager
def open_log(path: PathLike) -> Iterator[LogLines]:
    """:class:`LogLines` of a file, or of standard input for ``"-"``."""
    if os.fspath(path) == "-":
        yield LogLines(sys.stdin.buffer)
        return
    with open(path, "rb") as f:
        yield LogLines(f)
