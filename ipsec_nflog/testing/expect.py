"""What a test expects of captured packets, and the message when it does not get it.

A :class:`Criteria` matches a packet on its netfilter hook, its NFLOG prefix and a tcpdump
expression over its IP packet (compiled by :class:`ipsec_nflog.capture.filter.Filter`). A
failed expectation raises :class:`ExpectationFailed`, an ``AssertionError`` (pytest reports
it as a test failure, plain scripts see an assertion), whose message lists what *was* seen:
one line per packet (:func:`ipsec_nflog.nflog.summary.summarize`: time, group, hook,
devices, prefix, what the packet is) and the capture's counters, drops by cause.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

from ipsec_nflog.capture.select import HOOK_NUMBERS, check_expression
from ipsec_nflog.nflog.packet import Packet
from ipsec_nflog.nflog.summary import printable, summarize

if TYPE_CHECKING:
    from ipsec_nflog.capture.filter import Filter
    from ipsec_nflog.capture.stats import CaptureStats

__all__ = ["MAX_LISTED", "Criteria", "ExpectationFailed", "Matcher", "describe_seen",
           "hook_number"]

MAX_LISTED = 60  # packets listed in a failure message; the rest are counted
Hook = Union[str, int, None]


class ExpectationFailed(AssertionError):
    """An ``expect``/``expect_none`` that did not hold. ``seen``: every packet captured so
    far; ``matched``: those that matched; ``stats``: the capture's counters then."""

    def __init__(self, message: str, *, seen: Sequence[Packet] = (),
                 matched: Sequence[Packet] = (), stats: CaptureStats | None = None) -> None:
        super().__init__(message)
        self.seen = list(seen)
        self.matched = list(matched)
        self.stats = stats


def hook_number(hook: Hook) -> int | None:
    """A hook name (``"OUTPUT"``, any case) or number as the NFLOG header's number."""
    if hook is None:
        return None
    if isinstance(hook, bool):
        raise ValueError(f"hook must be a name such as 'OUTPUT' or a number, not {hook!r}")
    if isinstance(hook, int):
        if hook not in HOOK_NUMBERS.values():
            raise ValueError(f"unknown hook number {hook}; known: 0..{len(HOOK_NUMBERS) - 1}")
        return hook
    if isinstance(hook, str) and hook.strip().upper() in HOOK_NUMBERS:
        return HOOK_NUMBERS[hook.strip().upper()]
    raise ValueError(f"unknown hook {hook!r}; known: {', '.join(HOOK_NUMBERS)}")


@dataclass(frozen=True)
class Criteria:
    """What a packet must be; None fields match everything. Build with :meth:`of`."""

    hook: int | None = None
    prefix: str | None = None
    expression: str | None = None
    compiled: Filter | None = None

    @classmethod
    def of(cls, hook: Hook = None, prefix: str | None = None,
           filter: str | None = None, compile: bool = True) -> Criteria:
        """Validated criteria; the expression is compiled now (a bad one raises
        ``FilterError``, a ``ValueError``, before anything waits)."""
        if prefix is not None and not isinstance(prefix, str):
            raise ValueError(f"prefix must be a string, not {prefix!r}")
        text = check_expression(filter) if filter is not None else None
        compiled = None
        if text is not None and compile:
            from ipsec_nflog.capture.filter import Filter

            compiled = Filter(text)
        return cls(hook_number(hook), prefix, text, compiled)

    def matches(self, pkt: Packet) -> bool:
        if self.hook is not None and pkt.hook != self.hook:
            return False
        if self.prefix is not None and (pkt.prefix or "") != self.prefix:
            return False
        if self.compiled is not None:
            payload = pkt.payload
            if payload is None:
                return False
            cut = max(0, pkt.orig_len - len(pkt.raw))  # bytes the snaplen took off the packet
            return self.compiled.matches(payload, len(payload) + cut)
        return True

    def describe(self) -> str:
        """``hook OUTPUT, prefix 'x', filter 'esp'`` (``any packet`` without criteria)."""
        names = {n: k for k, n in HOOK_NUMBERS.items()}
        parts = []
        if self.hook is not None:
            parts.append(f"hook {names[self.hook]}")
        if self.prefix is not None:
            parts.append(f"prefix {self.prefix!r}")
        if self.expression is not None:
            parts.append(f"filter {self.expression!r}")
        return printable(", ".join(parts)) if parts else "any packet"


class Matcher:
    """The packets matching ``criteria``, found by scanning a growing list once."""

    def __init__(self, criteria: Criteria) -> None:
        self.criteria = criteria
        self.found: list[Packet] = []
        self._scanned = 0

    def scan(self, packets: Sequence[Packet]) -> int:
        """Look at the packets added since the last scan; returns how many match so far."""
        for pkt in packets[self._scanned:]:
            if self.criteria.matches(pkt):
                self.found.append(pkt)
        self._scanned = len(packets)
        return len(self.found)


def _counters(stats: CaptureStats | None) -> str:
    if stats is None:
        return "counters: none (the capture never opened)"
    filtered = sum(g.filtered_packets for g in stats.groups.values())
    return (f"counters: received {stats.received_packets}, delivered "
            f"{stats.delivered_packets}, filtered {filtered}, pending "
            f"{stats.pending_packets}; drops: {stats.drop_summary()}")


def describe_seen(seen: Sequence[Packet], matched: Sequence[Packet],
                  stats: CaptureStats | None, where: str) -> str:
    """Every packet seen (``*`` marks the matching ones), then the counters."""
    lines = [f"seen {len(seen)} packet(s) on {where}" + (":" if seen else ".")]
    shown = seen[-MAX_LISTED:]
    if len(seen) > len(shown):
        lines.append(f"  ... {len(seen) - len(shown)} earlier packet(s) not listed")
    ids = {id(p) for p in matched}
    for pkt in shown:
        lines.append(f"  {'*' if id(pkt) in ids else ' '} {summarize(pkt)}")
    lines.append(_counters(stats))
    return "\n".join(lines)
