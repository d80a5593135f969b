"""The options of a capture file writer, declared once: :class:`WriterOptions`.

``open_writer``'s keywords, the writer classes' keywords and ``DecryptedWriter``'s are these
fields (pcapng's ``groups`` and ``stats_source`` belong to its encoder); every value is checked
when the options are made, so a bad one never leaves a file behind.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable

from ipsec_nflog.files.format import MAX_SNAPLEN
from ipsec_nflog.nflog.codec import Buffer

__all__ = ["Clock", "WriteV", "WriterOptions"]

WriteV = Callable[[int, Sequence[Buffer]], int]
Clock = Callable[[], float]


@dataclass(frozen=True)
class WriterOptions:
    """How a writer writes; :func:`ipsec_nflog.files.writer.open_writer` documents each.

    ``rotate_bytes``/``rotate_seconds``/``rotate_count`` are tcpdump's -C (in bytes), -G and
    -W; ``clock`` and ``writev`` are for tests. ValueError names a bad value.
    """

    overwrite: bool = False
    mode: int = 0o600
    snaplen: int = MAX_SNAPLEN
    flush_interval: float | None = 1.0
    flush_every_batch: bool = False
    rotate_bytes: int | None = None
    rotate_seconds: float | None = None
    rotate_count: int | None = None
    clock: Clock = time.time
    writev: WriteV = os.writev

    def __post_init__(self) -> None:
        if not 1 <= self.snaplen <= MAX_SNAPLEN:
            raise ValueError(f"snaplen must be 1..{MAX_SNAPLEN}, not {self.snaplen}")
        if not 0 <= self.mode <= 0o7777:
            raise ValueError(f"mode must be a permission mode like 0o600, not {self.mode:#o}")
        interval = self.flush_interval
        if interval is not None and interval < 0:
            raise ValueError(f"flush_interval must be >= 0 seconds or None, not {interval}")
        if self.rotate_bytes is not None and self.rotate_bytes < 1:
            raise ValueError(f"rotate_bytes must be positive, not {self.rotate_bytes}")
        if self.rotate_seconds is not None and self.rotate_seconds <= 0:
            raise ValueError(f"rotate_seconds must be positive, not {self.rotate_seconds}")
        if self.rotate_count is not None:
            if self.rotate_count < 1:
                raise ValueError(f"rotate_count must be >= 1, not {self.rotate_count}")
            if not self.rotates:
                raise ValueError("rotate_count needs rotate_bytes or rotate_seconds (like -W)")

    @property
    def rotates(self) -> bool:
        """-C or -G is on."""
        return self.rotate_bytes is not None or self.rotate_seconds is not None

    @classmethod
    def merge(cls, options: WriterOptions | None, changes: Mapping[str, object]) -> WriterOptions:
        """``options`` (default: the defaults) with the keyword ``changes`` applied;
        TypeError for a name that is not an option. The values are checked at run time
        (``__post_init__``), which is why any may come in."""
        values: dict[str, Any] = dict(changes)
        return dataclasses.replace(options or cls(), **values)
