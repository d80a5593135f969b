"""Live NFLOG capture: the Python face of the C core.

The C reader thread drains the kernel into a ring of ready pcap records; Python takes them
in batches (``read_batch``) as memoryviews over the ring, or one parsed ``Packet`` at a time.
"""

from __future__ import annotations

import asyncio
import errno
import mmap
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from functools import lru_cache
from itertools import chain
from typing import Any, Union

from ipsec_nflog.capture.batch import Batch
from ipsec_nflog.capture.config import RING_FORMATS, CaptureConfig
from ipsec_nflog.capture.errmap import raise_for_errno
from ipsec_nflog.capture.filter import Filter
from ipsec_nflog.capture.rows import packet_rows
from ipsec_nflog.capture.select import hook_mask
from ipsec_nflog.capture.stats import CaptureStats, GroupStats
from ipsec_nflog.nflog.live_packet import packets_from_rows
from ipsec_nflog.nflog.packet import IfnameResolver, Packet
from ipsec_nflog.system.netns import interface_index, open_netns, run_in_netns

__all__ = ["Batch", "Capture"]

NFULNL_CFG_F_SEQ = 0x0001
NFULNL_CFG_F_SEQ_GLOBAL = 0x0002
_WAIT_SLICE_MS = 250  # bounded waits keep close() from another thread prompt
_STOP_SLICE_MS = 50  # how often stop() looks at ``interrupted``
STOP_DRAIN_MAX = 2.0  # stop(): how long the kernel's flush may take to reach the ring
# With handover_delay: hand over at this many pending bytes at the latest, so a batch is
# still in the CPU's cache when the consumer writes it (measured: 1-2 MiB are best; 256 KiB
# wakes too often, 4 MiB writes from memory).
HANDOVER_BYTES = 1024 * 1024


def _ifname_resolver(netns: str | None) -> IfnameResolver:
    @lru_cache(maxsize=256)
    def resolve(index: int) -> str | None:
        try:
            return run_in_netns(netns, lambda: socket.if_indextoname(index))
        except OSError:
            return None

    return resolve


class Capture:
    """Capture one or more NFLOG groups.

    >>> with Capture(groups=[5]) as cap:          # doctest: +SKIP
    ...     for pkt in cap.packets(count=10, timeout=5):
    ...         print(pkt.prefix, pkt.ip)
    """

    def __init__(
        self,
        groups: Union[int, Iterable[int], None] = None,
        *,
        config: CaptureConfig | None = None,
        _sockets: bool = True,
        **options: Any,
    ) -> None:
        if config is None:
            g = (groups,) if isinstance(groups, int) else tuple(groups if groups is not None
                                                                 else (0,))
            config = CaptureConfig(groups=g, **options)
        elif groups is not None or options:
            extra = dict(options)
            if groups is not None:
                extra["groups"] = (groups,) if isinstance(groups, int) else tuple(groups)
            config = config.replace(**extra)
        self.config = config
        self._lock = threading.Lock()  # serialises consumer calls against close()
        self._no_waiters = threading.Condition(self._lock)
        self._waiters = 0  # threads inside nfc_wait; close() frees the core only at zero
        self._c: Any = None
        self._batch: Batch | None = None
        self._stopped = False
        self._ifname = _ifname_resolver(config.netns)

        from ipsec_nflog.capture._native import ffi, lib  # the compiled core is needed from here on

        self._ffi, self._lib = ffi, lib
        # Everything that can be wrong with the filter is found before any socket opens.
        self._filter = Filter(config.filter) if config.filter is not None else None
        self._select = self._selector(config)
        self._pid = os.getpid()  # a forked child must not touch the parent's capture
        # The ring is a memfd the C core maps writable; we map it read-only, so no view we
        # hand out can change what the core reads back.
        ring_fd = os.memfd_create("ipsec_nflog-ring", os.MFD_CLOEXEC)
        try:
            os.ftruncate(ring_fd, config.ring_size)
            self._ring = mmap.mmap(ring_fd, config.ring_size, access=mmap.ACCESS_READ)
            self._ring_view = memoryview(self._ring)
            self._batch_c = ffi.new("struct nfc_batch *")  # reused by every read_batch
            self._sockets = _sockets
            self._open(ring_fd, _sockets)
        finally:
            os.close(ring_fd)

    @classmethod
    def _offline(cls, config: CaptureConfig) -> Capture:
        """A capture without sockets or reader thread, fed with ``_inject(datagram)``: the
        ring, record, filter and consumer paths, testable without root or a kernel."""
        return cls(config=config, _sockets=False)

    def _inject(self, datagram: bytes) -> None:
        with self._lock:
            rc = self._lib.nfc_inject(self._c, datagram, len(datagram))
        if rc < 0:
            raise_for_errno(rc, "inject a datagram")

    def _selector(self, cfg: CaptureConfig) -> Any:
        sel = cfg.selection
        out = self._ffi.new("struct nfc_select *")
        out.hook_mask = hook_mask(sel.hooks or ())
        out.indev, out.outdev = (self._ifindex(d) for d in (sel.indev, sel.outdev))
        if sel.prefix is not None:
            out.has_prefix = 1
            out.prefix = sel.prefix.encode()
        return out

    def _ifindex(self, device: Union[str, int, None]) -> int:
        if device is None or isinstance(device, int):
            return device or 0
        return interface_index(self.config.netns, device)

    def _open(self, ring_fd: int, sockets: bool = True) -> None:
        ffi, lib, cfg = self._ffi, self._lib, self.config
        params = ffi.new("struct nfc_params *", {
            "snaplen": cfg.effective_snaplen,
            "qthreshold": cfg.qthreshold,
            "timeout_cs": cfg.timeout_cs,
            "nlbufsiz": cfg.nlbufsiz,
            "rcvbuf": cfg.rcvbuf,
            "flags": NFULNL_CFG_F_SEQ | NFULNL_CFG_F_SEQ_GLOBAL,
            "filter": self._filter.cdata if self._filter is not None else ffi.NULL,
            "select": self._select[0],
            "handover_ms": round(cfg.handover_delay * 1000),
            "handover_bytes": HANDOVER_BYTES,
            "latency_budget_us": round(cfg.latency_budget * 1e6),
            "ring_format": RING_FORMATS.index(cfg.ring_format),
        })
        synth = ffi.new("char[]", cfg.epb_synth_options or b"\0")  # copied by nfc_open
        if cfg.epb_synth_options:
            params.epb_synth_opts = synth
            params.epb_synth_opts_len = len(cfg.epb_synth_options)
        groups = ffi.new("uint16_t[]", list(cfg.groups))
        out = ffi.new("struct nfc_capture **")
        failed_group = ffi.new("int32_t *")
        failed_op = ffi.new("const char **")
        if not sockets:
            netns_fd = lib.NFC_NO_SOCKETS
        else:
            netns_fd = open_netns(cfg.netns) if cfg.netns else -1
        try:
            rc = lib.nfc_open(out, groups, len(cfg.groups), params, ring_fd,
                              cfg.ring_size, netns_fd, failed_group, failed_op)
        finally:
            if netns_fd >= 0:
                os.close(netns_fd)
        self._c = out[0]
        if rc < 0:
            op = ffi.string(failed_op[0]).decode() if failed_op[0] != ffi.NULL else "open"
            group = failed_group[0] if failed_group[0] >= 0 else None
            self._free()
            raise_for_errno(rc, op, group, netns=cfg.netns)
        if not sockets:
            return
        rc = lib.nfc_start(self._c)
        if rc < 0:
            self._free()
            raise_for_errno(rc, "start the reader thread")

    # -- consumer ----------------------------------------------------------------------
    def read_batch(
        self,
        max_packets: int = 65536,
        timeout: float | None = None,
        max_bytes: int = 8 * 1024 * 1024,
    ) -> Batch | None:
        """The next run of records, or ``None`` on timeout or when the capture is stopped
        and drained. ``timeout=None`` waits until records arrive; 0 does not wait. The
        previous batch is released first."""
        if max_packets < 1 or max_bytes < 1:
            raise ValueError("max_packets and max_bytes must be positive")
        deadline = None if timeout is None else time.monotonic() + timeout
        lib = self._lib
        b = self._batch_c
        self._check_owner("read a batch")
        while True:
            with self._lock:
                if self._c is None:
                    return None
                if self._batch is not None:
                    self._batch.release()
                n = lib.nfc_peek(self._c, max_packets, max_bytes, b)
                if n < 0:
                    raise_for_errno(n, "read a batch")
                if n > 0:
                    off = b.offset
                    self._batch = Batch(self, self._ring_view[off : off + b.nbytes], n,
                                        self.config.ring_format)
                    return self._batch
                if self._stopped:
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                c = self._c
                self._waiters += 1
            wait_ms = _WAIT_SLICE_MS if remaining is None else min(
                _WAIT_SLICE_MS, max(1, int(remaining * 1000)))
            try:
                rc = lib.nfc_wait(c, wait_ms)  # the GIL is released while C waits
            finally:
                with self._lock:
                    self._waiters -= 1
                    if not self._waiters:
                        self._no_waiters.notify_all()
            if rc < 0 and rc != -errno.EINTR:  # EINTR: let Python run its signal handlers
                raise_for_errno(rc, "wait for packets")

    def _release(self, batch: Batch) -> None:
        if self._batch is batch:
            self._batch = None
            if self._c is not None and os.getpid() == self._pid:
                self._lib.nfc_release(self._c)

    def _check_owner(self, operation: str) -> None:
        if os.getpid() != self._pid:
            raise_for_errno(-errno.ECHILD, operation)

    def packets(self, count: int | None = None,
                timeout: float | None = None) -> Iterator[Packet]:
        """Parsed packets until ``count`` are yielded, ``timeout`` seconds pass without the
        wanted packets, or the capture stops. The packets of one batch share one copy of its
        records, apart from the ring: keeping a packet keeps that copy, and ``copy.copy(pkt)``
        is a packet that owns only its own bytes."""
        self._require_packets()
        # chain: the consumer's next() reaches the packet loop through C, not through a
        # Python frame per batch level
        return chain.from_iterable(self._packet_runs(count, timeout))

    def _packet_runs(self, count: int | None, timeout: float | None
                     ) -> Iterator[Iterator[Packet]]:
        deadline = None if timeout is None else time.monotonic() + timeout
        left = count
        while left is None or left > 0:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            batch = self.read_batch(max_packets=left or 65536, timeout=remaining)
            if batch is None:
                return
            if left is not None:
                left -= batch.count
            yield self._packets_of(batch.tobytes(), batch.count, release=batch)

    def __iter__(self) -> Iterator[Packet]:
        return self.packets()

    async def apackets(self, count: int | None = None,
                       timeout: float | None = None) -> AsyncIterator[Packet]:
        """``packets()`` for asyncio: waits on ``fileno()`` in the running loop instead of
        blocking, so other tasks (a traffic generator, a strongSwan controller) keep going."""
        self._require_packets()
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        fd = self.fileno()
        loop.add_reader(fd, ready.set)  # level-triggered: readable while records pend
        try:
            deadline = None if timeout is None else loop.time() + timeout
            left = count
            while left is None or left > 0:
                batch = self.read_batch(max_packets=left or 65536, timeout=0)
                if batch is None:
                    if self._stopped or self._c is None:
                        return
                    ready.clear()
                    remaining = None if deadline is None else deadline - loop.time()
                    if remaining is not None and remaining <= 0:
                        return
                    try:
                        await asyncio.wait_for(ready.wait(), remaining)
                    except asyncio.TimeoutError:
                        return
                    continue
                n = batch.count
                for pkt in self._packets_of(batch.tobytes(), n, release=batch):
                    yield pkt
                if left is not None:
                    left -= n
        finally:
            loop.remove_reader(fd)

    def _packets_of(self, records: bytes, count: int,
                    release: Batch | None = None) -> Iterator[Packet]:
        """Packets from a copy of a run of ring records (``Batch.tobytes()``), which they
        share. C makes every record's row in one call, so Python does no TLV walking; the
        ring space goes back to the reader (``release``) before the first packet is
        yielded."""
        if self.config.ring_format != "pcap" and release is not None:
            release.release()
        self._require_packets()
        rows, prefixes = packet_rows(records, count)
        if release is not None:
            release.release()
        return packets_from_rows(records, rows, prefixes, self._ifname)

    def _require_packets(self) -> None:
        if self.config.ring_format != "pcap":
            raise ValueError(f"this capture's ring holds {self.config.ring_format} blocks "
                             "(ring_format), which a writer of that format takes as they "
                             "are; for packets, capture with ring_format 'pcap'")

    def drain_batches(self, max_packets: int | None = None) -> Iterator[Batch]:
        """The records still in the ring, batch by batch without waiting, at most
        ``max_packets`` of them (None: all). Each batch is released when the next is taken.
        Use after ``stop()`` to end a capture."""
        left = max_packets
        while left is None or left > 0:
            batch = self.read_batch(max_packets=min(left or 65536, 65536), timeout=0)
            if batch is None:
                return
            if left is not None:
                left -= batch.count
            yield batch

    def drain_into(self, writer: Any) -> int:
        """Write every record still in the ring with ``writer.write_batch`` (a
        ``ipsec_nflog.files`` writer); returns how many. Use after ``stop()`` to end a
        capture."""
        n = 0
        for batch in self.drain_batches():
            with batch:
                writer.write_batch(batch)
                n += batch.count
        return n

    def fileno(self) -> int:
        """Readable while records are pending. Drain with ``read_batch(timeout=0)`` until it
        returns None before waiting on it again."""
        if self._c is None:
            raise ValueError("capture is closed")
        return int(self._lib.nfc_event_fd(self._c))

    def pending(self) -> tuple[int, int]:
        """(records, bytes) waiting in the ring."""
        p = self._ffi.new("uint64_t[2]")
        with self._lock:
            if self._c is None:
                return (0, 0)
            self._lib.nfc_pending(self._c, p, p + 1)
        return int(p[0]), int(p[1])

    def stats(self) -> CaptureStats:
        """Counters per group; after close(), the final counters (``pending_packets`` are
        then the records that were never read)."""
        with self._lock:
            if self._c is None:
                return self._final_stats or CaptureStats(ring_size=self.config.ring_size)
            return self._stats_unlocked()

    _final_stats: CaptureStats | None = None

    def pause_reader(self, paused: bool = True) -> None:
        """Stall the C reader thread (for tests of loss accounting): the kernel then
        overruns the socket, which shows as seq gaps, ENOBUFS events and socket drops."""
        with self._lock:
            if self._c is not None:
                self._lib.nfc_pause(self._c, int(paused))

    # -- lifecycle ---------------------------------------------------------------------
    def stop(self, drain: float | None = None,
             interrupted: Callable[[], bool] | None = None) -> None:
        """Stop reading from the kernel; records already in the ring can still be read.

        First every group is unbound, which makes the kernel hand over what it still has
        queued at once; the reader takes it, up to ``drain`` seconds (default
        ``STOP_DRAIN_MAX``; 0 skips this and stops at once). ``interrupted`` (e.g. "a
        signal asked us to stop") is polled while waiting and ends the wait early."""
        if self._c is None or self._stopped:
            return
        self._check_owner("stop the capture")
        wait = STOP_DRAIN_MAX if drain is None else drain
        if wait > 0 and self._sockets:
            rc = self._lib.nfc_flush(self._c)
            if rc < 0:
                raise_for_errno(rc, "flush the kernel queue")
            deadline = time.monotonic() + wait
            while not (interrupted is not None and interrupted()):
                left = deadline - time.monotonic()
                if left <= 0 or self._lib.nfc_wait_flushed(
                        self._c, max(1, min(_STOP_SLICE_MS, int(left * 1000)))):
                    break
        self._lib.nfc_stop(self._c)  # joins the reader; wakes waiters via the stop fd
        self._stopped = True

    def close(self) -> None:
        """Stop and release everything; safe to call more than once. In a forked child
        this only lets go of the child's copies: the parent's capture runs on."""
        if self._c is None:
            return
        if os.getpid() != self._pid:
            self._lib.nfc_close(self._c)  # no lock: another thread may have held it at fork
            self._c = None
            return
        self._lib.nfc_stop(self._c)  # wakes every nfc_wait through the stop fd
        self._stopped = True
        with self._lock:
            while self._waiters:
                self._no_waiters.wait()
            if self._c is None:
                return
            self._final_stats = self._stats_unlocked()
            if self._batch is not None:
                self._batch._released = True
                self._batch.data.release()
                self._batch = None
            self._free()

    def _stats_unlocked(self) -> CaptureStats:
        ffi, lib = self._ffi, self._lib
        n = len(self.config.groups)
        arr = ffi.new("struct nfc_group_stats[]", n)
        pend = ffi.new("uint64_t[2]")
        k = lib.nfc_stats(self._c, arr, n)
        lib.nfc_pending(self._c, pend, pend + 1)
        groups = {int(arr[i].group): GroupStats.from_mapping(arr[i]) for i in range(k)}
        return CaptureStats(groups, int(pend[0]), int(pend[1]), self.config.ring_size)

    def _free(self) -> None:
        if self._c is not None:
            self._lib.nfc_close(self._c)
            self._c = None

    @property
    def closed(self) -> bool:
        return self._c is None

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "closed" if self._c is None else ("stopped" if self._stopped else "running")
        return f"<Capture groups={list(self.config.groups)} {state}>"
