"""Capture statistics: per-group counters with every kind of loss kept apart. Pure Python."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["DROP_FIELDS", "CaptureStats", "GroupStats"]

# Packet-denominated losses. socket_drops and enobufs_events count kernel batches/events,
# not packets: the packets inside those batches show up as seq_gap_packets.
DROP_FIELDS = ("seq_gap_packets", "ring_drop_packets")


@dataclass(frozen=True)
class GroupStats:
    group: int
    received_packets: int = 0
    received_bytes: int = 0
    delivered_packets: int = 0
    delivered_bytes: int = 0
    seq_gap_packets: int = 0
    seq_gap_events: int = 0
    enobufs_events: int = 0
    socket_drops: int = 0
    ring_drop_packets: int = 0
    ring_drop_bytes: int = 0
    setup_discarded: int = 0
    timestamps_synthesized: int = 0
    datagrams: int = 0
    max_datagram: int = 0
    truncated_datagrams: int = 0
    netlink_errors: int = 0
    malformed: int = 0
    filtered_packets: int = 0  # rejected by the filter or selector on purpose: not lost
    rcvbuf: int = 0
    nlbufsiz: int = 0
    portid: int = 0
    qthreshold: int = 0  # the kernel's queue threshold at the snapshot (adaptive: moves)
    qthreshold_peak: int = 0  # the highest it was set to

    @property
    def dropped_packets(self) -> int:
        """Packets known lost: kernel sequence gaps plus ring overflow."""
        return sum(getattr(self, f) for f in DROP_FIELDS)

    @property
    def lossy(self) -> bool:
        """True when anything at all was lost or overran, in any counter."""
        return bool(
            self.dropped_packets or self.enobufs_events or self.socket_drops
            or self.truncated_datagrams
        )

    @classmethod
    def from_mapping(cls, m: Any) -> GroupStats:
        return cls(**{f.name: int(getattr(m, f.name)) for f in fields(cls)})


_TOTALS = ("received_packets", "delivered_packets", "delivered_bytes", "seq_gap_packets",
           "ring_drop_packets", "enobufs_events", "socket_drops", "dropped_packets")


@dataclass(frozen=True)
class CaptureStats:
    groups: dict[int, GroupStats] = field(default_factory=dict)
    pending_packets: int = 0
    pending_bytes: int = 0
    ring_size: int = 0

    # Totals over all groups, computed once: a CaptureStats is a snapshot.
    received_packets: int = field(init=False)
    delivered_packets: int = field(init=False)
    delivered_bytes: int = field(init=False)
    seq_gap_packets: int = field(init=False)
    ring_drop_packets: int = field(init=False)
    enobufs_events: int = field(init=False)
    socket_drops: int = field(init=False)
    dropped_packets: int = field(init=False)

    def __post_init__(self) -> None:
        for name in _TOTALS:
            object.__setattr__(self, name, sum(getattr(g, name) for g in self.groups.values()))

    @property
    def dropped(self) -> int:
        """Packets known lost, all groups and kinds together."""
        return self.dropped_packets

    @property
    def lossy(self) -> bool:
        return any(g.lossy for g in self.groups.values())

    def drop_summary(self) -> str:
        """One line naming every non-zero loss counter, or 'no drops'."""
        parts = []
        for label, value in (
            ("kernel (seq gaps)", self.seq_gap_packets),
            ("ENOBUFS overruns", self.enobufs_events),
            ("socket drops", self.socket_drops),
            ("ring full", self.ring_drop_packets),
        ):
            if value:
                parts.append(f"{label}: {value}")
        return ", ".join(parts) if parts else "no drops"

    def as_dict(self) -> dict[str, Any]:
        return {
            "groups": {g: {f.name: getattr(s, f.name) for f in fields(s)}
                       for g, s in self.groups.items()},
            "pending_packets": self.pending_packets,
            "pending_bytes": self.pending_bytes,
            "ring_size": self.ring_size,
            "dropped": self.dropped,
        }
