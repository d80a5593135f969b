"""Packets of capture files whose link type is not NFLOG: :class:`FilePacket`.

``payload`` is the IP packet for raw-IP link types, for Ethernet (after up to two VLAN tags)
and Linux cooked v1/v2 when the protocol is IPv4/IPv6; otherwise the whole frame.
"""

from __future__ import annotations

from typing import Any

from ipsec_nflog.files.format import (
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    RAW_LINKTYPES,
)
from ipsec_nflog.nflog.packet import PacketBase

__all__ = ["FilePacket"]

_ETHERTYPE_IP = frozenset({0x0800, 0x86DD})
_VLAN_TPIDS = frozenset({0x8100, 0x88A8, 0x9100})
_AF_INET, _AF_INET6, _AF_UNSPEC = 2, 10, 0


def _ip_offset(linktype: int, frame: bytes) -> int | None:
    """Where the IPv4/IPv6 packet starts in a frame of this link type, or None."""
    if linktype in RAW_LINKTYPES:
        return 0
    n = len(frame)
    if linktype == LINKTYPE_ETHERNET:
        off = 12
        for _ in range(2):  # 802.1Q / 802.1ad tags
            if off + 2 <= n and int.from_bytes(frame[off : off + 2], "big") in _VLAN_TPIDS:
                off += 4
        if off + 2 <= n and int.from_bytes(frame[off : off + 2], "big") in _ETHERTYPE_IP:
            return off + 2
        return None
    if linktype == LINKTYPE_LINUX_SLL and n >= 16:
        return 16 if int.from_bytes(frame[14:16], "big") in _ETHERTYPE_IP else None
    if linktype == LINKTYPE_LINUX_SLL2 and n >= 20:
        return 20 if int.from_bytes(frame[0:2], "big") in _ETHERTYPE_IP else None
    return None


class FilePacket(PacketBase):
    """A packet of a non-NFLOG link type: timestamp and payload, no NFLOG metadata.

    It has the attributes of :class:`~ipsec_nflog.nflog.packet.Packet`, so code written for live
    capture runs on it; the NFLOG-only ones are ``None``. ``raw`` is the frame as stored,
    ``payload`` the IP packet in it (or the whole frame when there is no IP packet to find).
    """

    __slots__ = ("_payload", "linktype", "orig_len", "raw", "ts_sec", "ts_usec")

    # NFLOG metadata a non-NFLOG file does not carry.
    version: int | None = None
    group: int | None = None
    hw_protocol: int | None = None
    hook: int | None = None
    mark: int | None = None
    kernel_timestamp: float | None = None
    indev: int | None = None
    outdev: int | None = None
    physindev: int | None = None
    physoutdev: int | None = None
    indev_name: str | None = None
    outdev_name: str | None = None
    physindev_name: str | None = None
    physoutdev_name: str | None = None
    hwaddr: bytes | None = None
    hwtype: int | None = None
    hwheader: bytes | None = None
    hwlen: int | None = None
    prefix: str | None = None
    uid: int | None = None
    gid: int | None = None
    seq: int | None = None
    seq_global: int | None = None
    ct: bytes | None = None
    ct_info: int | None = None
    vlan: tuple[int | None, int | None] | None = None
    l2hdr: bytes | None = None
    hook_name = "?"
    timestamp_synthesized = False

    def __init__(self, linktype: int, raw: bytes, ts_sec: int, ts_usec: int, orig_len: int) -> None:
        self.linktype = linktype
        self.raw = raw
        self.ts_sec = ts_sec
        self.ts_usec = ts_usec
        self.orig_len = orig_len
        off = _ip_offset(linktype, raw)
        self._payload = raw if off is None else raw[off:]
        self._ip = None

    @property
    def payload(self) -> bytes:
        return self._payload

    @property
    def family(self) -> int:
        """AF_INET/AF_INET6 from the payload's IP version, AF_UNSPEC otherwise."""
        v = self.payload[0] >> 4 if self.payload else 0
        return {4: _AF_INET, 6: _AF_INET6}.get(v, _AF_UNSPEC)

    @property
    def timestamp(self) -> float:
        return self.ts_sec + self.ts_usec / 1e6

    @property
    def attrs(self) -> dict[int, Any]:
        return {}

    @property
    def unknown(self) -> dict[int, bytes]:
        return {}

    def __repr__(self) -> str:
        return (
            f"<FilePacket linktype={self.linktype} ts={self.timestamp:.6f} "
            f"payload={len(self.payload)}B>"
        )
