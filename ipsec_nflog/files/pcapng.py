"""The pcapng encoder: one SHB; one IDB per NFLOG group, emitted the first time the group
appears (``if_name`` "nflog:<group>", the snaplen, ``if_tsresol`` 6 = microseconds); one EPB
per record. Every file starts with the IDBs of every group seen so far, so interface ids stay
the same across rotated files. With ``interface_names`` (the capture host's ifindex -> name
map, read when each IDB is written) every IDB also has an opt_comment
"ipsec-nflog ifnames: 1=lo 2=eth0 ..." (:func:`ipsec_nflog.files.format.encode_ifnames`), which
the reader uses to name ``indev``/``outdev``: records hold indexes only, and another host's
names for them would be wrong. Interfaces created after a file's IDBs are named by index.

A record without NFULA_TIMESTAMP (the kernel sends none for OUTPUT/POSTROUTING, so the
capture used its receive time) carries the packet comment :data:`SYNTHESIZED_COMMENT`; a
comment rather than an ``epb_flags`` bit, because epb_flags has no bit for it and Wireshark
shows comments (``frame.comment``). A file ends with one ISB per IDB with the drop counters
(see :func:`isb_counters`), from ``close(stats=...)`` or the ``stats_source``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import ClassVar

from ipsec_nflog.files.encoders import Framing, check_count, short_record
from ipsec_nflog.files.format import (
    BLOCK_EPB,
    BLOCK_IDB,
    BLOCK_ISB,
    BLOCK_SHB,
    BLOCK_TRAILER,
    BYTE_ORDER_MAGIC,
    EPB_HEADER,
    IDB_FIELDS,
    IF_DESCRIPTION,
    IF_NAME,
    IF_TSRESOL,
    ISB_CODES,
    ISB_FIELDS,
    LINKTYPE_NFLOG,
    OPT_COMMENT,
    SHB_FIELDS,
    SHB_OS,
    SHB_USERAPPL,
    encode_block,
    encode_ifnames,
    encode_options,
    layout,
    os_description,
)
from ipsec_nflog.nflog.codec import HOST, NFULA, Buffer, walk_records, walk_tlvs

__all__ = ["EPB_MIN", "EPB_SYNTH_OPTIONS", "SYNTHESIZED_COMMENT", "InterfaceNames",
           "PcapngEncoder", "isb_counters"]

# Short, because every outbound packet carries it (at 64 B each byte of it costs ~0.1 % of
# the writer's CPU); what it means is in every IDB's description.
SYNTHESIZED_COMMENT = "ts synthesized"
StatsSource = Callable[[], object]
InterfaceNames = Callable[[], Mapping[int, str]]
IsbCounters = dict[int, tuple[list[tuple[int, int]], str]]

_SYNTH_NOTE = (f"; a packet commented '{SYNTHESIZED_COMMENT}' has no NFULA_TIMESTAMP "
               "(OUTPUT, POSTROUTING): its time is that of receive, pulled back before the "
               "next kernel stamp")
_SYNTH_OPTS = encode_options(HOST, [(OPT_COMMENT, SYNTHESIZED_COMMENT.encode())])
# What ends an EPB whose timestamp was synthesized, for blocks framed elsewhere (the C core:
# CaptureConfig.epb_synth_options).
EPB_SYNTH_OPTIONS = _SYNTH_OPTS
EPB_MIN = 32  # an EPB with an empty body and no options
# A record's body becomes an EPB: header, body padded to 4, maybe the comment, trailer.
_EPB_EXTRA = EPB_HEADER.size + 4 - 16 + 3 + len(_SYNTH_OPTS)  # worst-case growth
# One record's trailer and the next one's header, packed together: one call per record.
_TRAILER_EPB_HEADER = layout(
    "prev_block_len:I block_type:I block_len:I interface_id:I ts_high:I ts_low:I caplen:I "
    "orig_len:I")


def _version() -> str:
    try:
        from ipsec_nflog._version import __version__

        return str(__version__)
    except ImportError:  # pragma: no cover - the file ships with the package
        return "?"


def block_ends(body: memoryview) -> Iterator[int]:
    """End offsets of the complete pcapng blocks in ``body``."""
    off, end = 0, len(body)
    while off + 8 <= end:
        length = BLOCK_TRAILER.unpack_from(body, off + 4)[0]
        off += length
        if length < 12 or off > end:
            return
        yield off


class PcapngEncoder:
    """pcapng with one IDB per NFLOG group and EPBs; ISBs at the end of each file.

    ``groups`` pre-declares groups, so their IDBs (and interface ids 0, 1, ...) come first.
    ``stats_source`` is called at the end of each file that gets no stats from ``close``;
    ``interface_names`` whenever IDBs are written (an OSError from it leaves the map out).
    """

    format: ClassVar[str] = "pcapng"
    linktype = LINKTYPE_NFLOG

    def __init__(self, snaplen: int, *, groups: Sequence[int] = (),
                 stats_source: StatsSource | None = None, started: float = 0.0,
                 interface_names: InterfaceNames | None = None) -> None:
        self.snaplen = snaplen
        self._interface_names = interface_names
        self._groups: list[int] = []
        self._iface_ids: dict[int, int] = {}
        self._file_ifaces = 0  # IDBs in the current file
        self._stats_source = stats_source
        self._started = started  # the ISBs' isb_starttime
        for g in groups:
            self._add_group(g)

    @property
    def groups(self) -> list[int]:
        """NFLOG groups by interface id."""
        return list(self._groups)

    def number_interfaces(self, groups: Sequence[int]) -> None:
        """Make interface id i mean ``groups[i]`` (blocks framed elsewhere number them so),
        declaring what is missing; ValueError when ids already mean other groups."""
        have = self._groups
        n = min(len(have), len(groups))
        if have[:n] != list(groups[:n]):
            raise ValueError(f"the blocks number interfaces by groups {list(groups)}, but "
                             f"this file's interfaces are groups {have}")
        for g in groups[n:]:
            self._add_group(g)

    def _add_group(self, group: int) -> int:
        if not 0 <= group <= 0xFFFF:
            raise ValueError(f"NFLOG group must be 0..65535, not {group}")
        iface = self._iface_ids.get(group)
        if iface is None:
            iface = self._iface_ids[group] = len(self._groups)
            self._groups.append(group)
        return iface

    def _idbs(self, start: int) -> bytes:
        """IDBs for interface ids start.., marking them present in the current file."""
        blocks = []
        names = self._names_comment() if start < len(self._groups) else None
        for group in self._groups[start:]:
            opts = [
                (IF_NAME, f"nflog:{group}".encode()),
                (IF_DESCRIPTION, f"NFLOG group {group}{_SYNTH_NOTE}".encode()),
                (IF_TSRESOL, b"\x06"),  # microseconds, like the ring's timestamps
            ]
            if names is not None:
                opts.append((OPT_COMMENT, names))
            body = IDB_FIELDS.pack(LINKTYPE_NFLOG, 0, self.snaplen)
            blocks.append(encode_block(HOST, BLOCK_IDB, body + encode_options(HOST, opts)))
        self._file_ifaces = len(self._groups)
        return b"".join(blocks)

    def _names_comment(self) -> bytes | None:
        if self._interface_names is None:
            return None
        try:
            return encode_ifnames(self._interface_names()).encode()
        except OSError:  # e.g. the capture's namespace is gone: names by index then
            return None

    def header(self) -> bytes:
        opts = [
            (SHB_OS, os_description().encode()),
            (SHB_USERAPPL, f"ipsec_nflog {_version()}".encode()),
        ]
        body = SHB_FIELDS.pack(BYTE_ORDER_MAGIC, 1, 0, -1) + encode_options(HOST, opts)
        return encode_block(HOST, BLOCK_SHB, body) + self._idbs(0)

    def prefix(self) -> bytes:
        return self._idbs(self._file_ifaces) if self._file_ifaces < len(self._groups) else b""

    def record_ends(self, body: memoryview) -> Iterator[int]:
        return block_ends(body)

    _framing: Framing | None = None

    def use_framing(self, framing: Framing | None) -> None:
        """Frame EPBs with ``framing`` (None: in Python again)."""
        self._framing = framing

    def encode(self, mv: memoryview, count: int) -> tuple[Buffer, int]:
        if self._framing is not None:
            return self._encode_framed(self._framing, mv, count)
        out = bytearray(len(mv) + count * _EPB_EXTRA)  # zeroed, so padding is free
        head, trailer_head = EPB_HEADER.pack_into, _TRAILER_EPB_HEADER.pack_into
        ids, synth, nsynth = self._iface_ids, _SYNTH_OPTS, len(_SYNTH_OPTS)
        ts_type = NFULA.TIMESTAMP
        p = prev = n = 0
        last_group = iface = -1
        for sec, usec, caplen, orig_len, body in walk_records(mv):
            if caplen < 4:
                raise short_record(body - 16, caplen)
            if n == count:  # out has room for count records only
                check_count(n + 1, count)
            group = (mv[body + 2] << 8) | mv[body + 3]
            if group != last_group:
                found = ids.get(group)
                iface = self._add_group(group) if found is None else found
                last_group = group
            data, end = p + 28, body + caplen
            out[data : data + caplen] = mv[body:end]
            q = data + ((caplen + 3) & ~3)
            synthesized = True
            for _ in walk_tlvs(mv, HOST, body + 4, end, False, ts_type):
                synthesized = False
            if synthesized:
                out[q : q + nsynth] = synth
                q += nsynth
            ts = sec * 1_000_000 + usec
            if n:  # the previous EPB's trailer goes with this header
                trailer_head(out, p - 4, p - prev, BLOCK_EPB, q + 4 - p, iface, ts >> 32,
                             ts & 0xFFFFFFFF, caplen, orig_len)
            else:
                head(out, p, BLOCK_EPB, q + 4 - p, iface, ts >> 32, ts & 0xFFFFFFFF, caplen,
                     orig_len)
            prev, p, n = p, q + 4, n + 1
        if n:
            BLOCK_TRAILER.pack_into(out, p - 4, p - prev)
        check_count(n, count)
        return memoryview(out)[:p], count

    def _encode_framed(self, framing: Framing, mv: memoryview, count: int
                       ) -> tuple[Buffer, int]:
        while True:  # each round declares one new group (ids only grow), then frames again
            blocks, unknown = framing.pcapng(mv, count, self._iface_ids, _SYNTH_OPTS)
            if unknown < 0:
                return blocks, count
            self._add_group(unknown)

    def trailer(self, stats: object, now: float) -> bytes:
        if stats is None and self._stats_source is not None:
            stats = self._stats_source()
        if stats is None:
            return b""
        counters = isb_counters(stats)
        for group in counters:  # drops on a group that logged nothing still get shown
            self._add_group(group)
        end, start = int(now * 1_000_000), int(self._started * 1_000_000)
        times = [(ISB_CODES["starttime"], start), (ISB_CODES["endtime"], end)]
        isbs = []
        for iface, group in enumerate(self._groups):
            if group not in counters:
                continue
            values, comment = counters[group]
            opts = [(code, struct.pack("=Q", v)) for code, v in times + values]
            if comment:
                opts.append((OPT_COMMENT, comment.encode()))
            head = ISB_FIELDS.pack(iface, end >> 32, end & 0xFFFFFFFF)
            isbs.append(encode_block(HOST, BLOCK_ISB, head + encode_options(HOST, opts)))
        return self.prefix() + b"".join(isbs)


_GROUP_COUNTERS = ("received_packets", "seq_gap_packets", "ring_drop_packets", "socket_drops",
                   "enobufs_events")


def isb_counters(stats: object) -> IsbCounters:
    """ISB options per group, from what ``PcapngWriter.close(stats=...)`` accepts:

    - a mapping ``group -> (received, dropped)``: isb_ifrecv = received, isb_ifdrop = dropped;
    - an object with a ``groups`` mapping (``CaptureStats``), or a mapping, whose values have
      ``received_packets``, ``seq_gap_packets``, ``ring_drop_packets`` (and optionally
      ``socket_drops``, ``enobufs_events``): isb_ifrecv = received_packets; isb_ifdrop = every
      lost packet, seq_gap_packets + ring_drop_packets (what Wireshark shows as "dropped",
      as dumpcap does); isb_osdrop = seq_gap_packets (lost in the kernel, before our socket).
      All raw counters also go into the ISB's comment, since socket_drops and
      enobufs_events overlap the sequence gaps and are not all packet counts.

    Returns ``{group: ([(option code, value)], comment)}``; TypeError for anything else.
    """
    groups = getattr(stats, "groups", stats)
    if not isinstance(groups, Mapping):
        raise TypeError(
            "stats must map group -> (received, dropped) or have a .groups mapping of "
            f"GroupStats, not {type(stats).__name__}"
        )
    result: IsbCounters = {}
    for group, value in groups.items():
        if isinstance(value, (tuple, list)):
            received, dropped = value
            result[int(group)] = (
                [(ISB_CODES["ifrecv"], int(received)), (ISB_CODES["ifdrop"], int(dropped))],
                "",
            )
            continue
        raw = {name: int(getattr(value, name, 0)) for name in _GROUP_COUNTERS}
        options = [
            (ISB_CODES["ifrecv"], raw["received_packets"]),
            (ISB_CODES["ifdrop"], raw["seq_gap_packets"] + raw["ring_drop_packets"]),
            (ISB_CODES["osdrop"], raw["seq_gap_packets"]),
        ]
        result[int(group)] = (options, " ".join(f"{k}={v}" for k, v in raw.items()))
    return result
