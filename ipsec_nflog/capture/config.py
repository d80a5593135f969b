"""Capture configuration: one object, validated before any socket opens."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Union

from ipsec_nflog.capture.select import Selection, check_expression
from ipsec_nflog.system.netns import validate_netns_name
from ipsec_nflog.validate import check_int, validate_group

__all__ = ["FLUSH_TIMEOUT_MAX", "KERNEL_SNAPLEN_MAX", "NLBUFSIZ_MAX", "NLBUFSIZ_MIN",
           "RING_FORMATS", "CaptureConfig", "recv_buffer_size"]

KERNEL_SNAPLEN_MAX = 65531  # NFULNL_COPY_RANGE_MAX = 0xffff - NLA_HDRLEN
PCAP_SNAPLEN_MAX = 262144  # tcpdump's -s limit; larger asks are errors, not clamps
NLBUFSIZ_MIN = 4096
NLBUFSIZ_MAX = 131072  # the kernel ignores larger values without an error
MAX_GROUPS = 32
FLUSH_TIMEOUT_MAX = 10.0  # seconds; longer only delays packets (stop() flushes at once)
HANDOVER_DELAY_MAX = 1.0  # seconds (NFC_HANDOVER_MS_MAX)
LATENCY_BUDGET_MAX = 0.01  # seconds (NFC_LATENCY_BUDGET_US_MAX)
QTHRESHOLD_ADAPT_MAX = 256  # NFC_QTHRESH_ADAPT_MAX
LOW_LATENCY_BUDGET = 100e-6  # low_latency(): a kernel batch fills within 100 µs
MiB = 1024 * 1024
RING_FORMATS = ("pcap", "pcapng")  # NFC_RING_PCAP, NFC_RING_PCAPNG
EPB_SYNTH_MAX = 256  # NFC_EPB_SYNTH_MAX


def recv_buffer_size(nlbufsiz: int) -> int:
    """The C core's buffer for one kernel batch (NFC_RECV_BUFFER): slab rounding can nearly
    double nlbufsiz, and one message can carry a 65531-byte payload on its own. A ring
    smaller than this cannot take one whole batch."""
    return 4 * nlbufsiz + 128 * 1024


@dataclass(frozen=True)
class CaptureConfig:
    """Everything a capture needs. The defaults are the fast ones: the kernel batches up to
    ``qthreshold`` packets or ``nlbufsiz`` bytes per message and flushes after
    ``flush_timeout`` seconds; a large socket buffer and ring absorb bursts.

    ``snaplen`` 0 means the kernel's maximum (65531); larger values up to 262144 are
    accepted like tcpdump's ``-s`` and capped to 65531 (``effective_snaplen``).
    """

    groups: tuple[int, ...] = (0,)
    snaplen: int = 0
    qthreshold: int = 1000
    flush_timeout: float = 0.1
    nlbufsiz: int = NLBUFSIZ_MAX
    rcvbuf: int = 64 * MiB
    ring_size: int = 64 * MiB
    netns: str | None = None
    # What to keep (run in the reader thread; filtered packets are counted, not lost):
    filter: str | None = None  # a tcpdump expression over the IP packet
    hooks: tuple[str, ...] | None = None  # e.g. ("OUTPUT", "POSTROUTING")
    prefix: str | None = None  # the NFLOG prefix, exactly
    indev: Union[str, int, None] = None  # interface name (in the capture's namespace) or index
    outdev: Union[str, int, None] = None
    # Hand-over batching: the reader wakes the consumer once a quarter of the ring is
    # pending or the oldest record has waited this long (seconds), so one wakeup, one pass
    # of Python and one write take several kernel batches. 0: at once (lowest latency).
    handover_delay: float = 0.0
    # Adaptive queue threshold: > 0 lets the reader raise the kernel's qthreshold under load
    # (up to 256) so that a batch fills within this many seconds at the current rate, and
    # lower it back to ``qthreshold`` when the rate falls. Needs flush_timeout 0. 0: fixed.
    latency_budget: float = 0.0
    # What the ring holds (``Batch.format``): "pcap" records, which every consumer reads, or
    # "pcapng" Enhanced Packet Blocks (interface id = the group's position in ``groups``),
    # which a pcapng writer writes as they are (``PcapngWriter.write_batch``) with no second
    # pass; packets cannot be parsed from those. ``epb_synth_options``: pcapng options
    # (ending with opt_endofopt) that end the EPB of a packet whose timestamp was
    # synthesized, e.g. ``ipsec_nflog.files.pcapng.EPB_SYNTH_OPTIONS``.
    ring_format: str = "pcap"
    epb_synth_options: bytes = b""

    def __post_init__(self) -> None:
        groups = self.groups
        if isinstance(groups, int) and not isinstance(groups, bool):
            groups = (groups,)
        if isinstance(groups, (str, bytes)) or not isinstance(groups, Iterable):
            raise ValueError(f"groups must be a list of integers, not {groups!r}")
        gs = tuple(validate_group(g) for g in groups)
        if not gs:
            raise ValueError("at least one NFLOG group is needed")
        if len(set(gs)) != len(gs):
            raise ValueError(f"NFLOG groups repeat: {list(gs)}")
        if len(gs) > MAX_GROUPS:
            raise ValueError(f"at most {MAX_GROUPS} groups per capture, got {len(gs)}")
        object.__setattr__(self, "groups", gs)
        check_int("snaplen", self.snaplen, 0, PCAP_SNAPLEN_MAX)
        check_int("qthreshold", self.qthreshold, 1, 2**32 - 1)
        ft = self.flush_timeout
        if (isinstance(ft, bool) or not isinstance(ft, (int, float))
                or not 0 <= ft <= FLUSH_TIMEOUT_MAX):
            raise ValueError(f"flush_timeout must be 0..{FLUSH_TIMEOUT_MAX:g} seconds, "
                             f"got {ft!r}")
        hd = self.handover_delay
        if (isinstance(hd, bool) or not isinstance(hd, (int, float))
                or not 0 <= hd <= HANDOVER_DELAY_MAX):
            raise ValueError(f"handover_delay must be 0..{HANDOVER_DELAY_MAX:g} seconds, "
                             f"got {hd!r}")
        lb = self.latency_budget
        if (isinstance(lb, bool) or not isinstance(lb, (int, float))
                or not 0 <= lb <= LATENCY_BUDGET_MAX):
            raise ValueError(f"latency_budget must be 0..{LATENCY_BUDGET_MAX:g} seconds, "
                             f"got {lb!r}")
        if lb and (self.flush_timeout != 0 or self.qthreshold > QTHRESHOLD_ADAPT_MAX):
            raise ValueError("latency_budget needs flush_timeout 0 and a qthreshold of at "
                             f"most {QTHRESHOLD_ADAPT_MAX} (its floor)")
        if self.ring_format not in RING_FORMATS:
            raise ValueError(f"ring_format must be one of {', '.join(RING_FORMATS)}, "
                             f"got {self.ring_format!r}")
        opts = self.epb_synth_options
        if not isinstance(opts, bytes):
            raise ValueError(f"epb_synth_options must be bytes, not {type(opts).__name__}")
        if opts and (self.ring_format != "pcapng" or len(opts) % 4
                     or len(opts) > EPB_SYNTH_MAX):
            raise ValueError("epb_synth_options need ring_format 'pcapng' and are whole "
                             f"pcapng options: a multiple of 4 bytes, at most {EPB_SYNTH_MAX}")
        check_int("nlbufsiz", self.nlbufsiz, NLBUFSIZ_MIN, NLBUFSIZ_MAX)
        check_int("rcvbuf", self.rcvbuf, 0, 2**31 - 1)
        ring_min = recv_buffer_size(self.nlbufsiz)
        if (isinstance(self.ring_size, int) and not isinstance(self.ring_size, bool)
                and self.ring_size < ring_min):
            raise ValueError(f"ring_size must be at least {ring_min} bytes (one kernel batch "
                             f"of nlbufsiz {self.nlbufsiz}), got {self.ring_size}")
        check_int("ring_size", self.ring_size, ring_min, 2**40)
        if self.netns is not None:
            validate_netns_name(self.netns)
        if self.filter is not None:
            object.__setattr__(self, "filter", check_expression(self.filter))
        sel = self.selection  # validates hooks, prefix and devices
        object.__setattr__(self, "hooks", sel.hooks)
        object.__setattr__(self, "indev", sel.indev)
        object.__setattr__(self, "outdev", sel.outdev)

    @property
    def selection(self) -> Selection:
        return Selection(self.hooks, self.prefix, self.indev, self.outdev)

    @property
    def effective_snaplen(self) -> int:
        return KERNEL_SNAPLEN_MAX if self.snaplen == 0 else min(self.snaplen, KERNEL_SNAPLEN_MAX)

    @property
    def timeout_cs(self) -> int:
        """Flush timeout in the kernel's unit, 1/100 s."""
        return round(self.flush_timeout * 100)

    @classmethod
    def low_latency(cls, groups: Union[int, Iterable[int]], **kw: Any) -> CaptureConfig:
        """One packet per netlink message while the rate is low, so receive times (and with
        them the synthesized timestamps of OUTPUT/POSTROUTING packets) stay close to real
        time. Under load the kernel batches just enough packets to fill a message within
        ``latency_budget`` (100 µs), which keeps the cost per packet near the default's."""
        kw.setdefault("qthreshold", 1)
        kw.setdefault("flush_timeout", 0.0)
        kw.setdefault("nlbufsiz", NLBUFSIZ_MIN)
        if kw["flush_timeout"] == 0 and kw["qthreshold"] <= QTHRESHOLD_ADAPT_MAX:
            kw.setdefault("latency_budget", LOW_LATENCY_BUDGET)
        return cls(groups=tuple(groups) if not isinstance(groups, int) else (groups,), **kw)

    def replace(self, **changes: Any) -> CaptureConfig:
        return dataclasses.replace(self, **changes)
