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


@dataclass(frozen=True)
class CaptureStats:
    groups: dict[int, GroupStats] = field(default_factory=dict)
    pending_packets: int = 0
    pending_bytes: int = 0
    ring_size: int = 0

    def _sum(self, name: str) -> int:
        return sum(getattr(g, name) for g in self.groups.values())

    @property
    def received_packets(self) -> int:
        return self._sum("received_packets")

    @property
    def delivered_packets(self) -> int:
        return self._sum("delivered_packets")

    @property
    def delivered_bytes(self) -> int:
        return self._sum("delivered_bytes")

    @property
    def seq_gap_packets(self) -> int:
        return self._sum("seq_gap_packets")

    @property
    def ring_drop_packets(self) -> int:
        return self._sum("ring_drop_packets")

    @property
    def enobufs_events(self) -> int:
        return self._sum("enobufs_events")

    @property
    def socket_drops(self) -> int:
        return self._sum("socket_drops")

    @property
    def dropped(self) -> int:
        """Packets known lost, all groups and kinds together."""
        return self._sum("dropped_packets")

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
