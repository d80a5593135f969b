"""Just enough of the nf_tables netlink protocol to list tables and chains and to delete one
only if it is unused.

``nft delete table`` and ``nft delete chain`` are recursive: they take every rule, chain
and set inside with them. The kernel also knows a non-recursive delete (``NLM_F_NONREC``:
``EBUSY`` when a chain still holds a rule or a table still holds a chain, set or object),
which the ``nft`` command does not expose, so the emptiness check and the delete are one
atomic step here. Objects are deleted by handle: a table deleted and created again by
someone else meanwhile has a new handle and is not ours. The socket works in the network
namespace of the thread that calls (see :func:`ipsec_nflog.system.netns.run_in_netns`).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

__all__ = ["NFPROTO", "NftObject", "delete_if_unused", "list_objects"]

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NFT_MSG_NEWTABLE, NFT_MSG_GETTABLE, NFT_MSG_DELTABLE = 0, 1, 2
NFT_MSG_NEWCHAIN, NFT_MSG_GETCHAIN, NFT_MSG_DELCHAIN = 3, 4, 5
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLM_F_NONREC = 0x100  # delete requests: refuse instead of deleting the contents
NLM_F_DUMP_INTR = 0x10  # the ruleset changed during the dump: ask again
NLMSG_ERROR, NLMSG_DONE = 2, 3
NFTA_TABLE_NAME, NFTA_TABLE_USE, NFTA_TABLE_HANDLE = 1, 3, 4
NFTA_CHAIN_TABLE, NFTA_CHAIN_HANDLE, NFTA_CHAIN_NAME, NFTA_CHAIN_USE = 1, 2, 3, 6
NLA_TYPE_MASK = 0x3FFF
NFPROTO = {"ip": 2, "ip6": 10}
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_GENMSG = struct.Struct("=BBH")  # nfgenmsg: family, version, res_id (big endian)
_TIMEOUT = 10.0
_DUMP_TRIES = 5


@dataclass(frozen=True)
class NftObject:
    """A table (``chain`` None) or chain as the kernel lists it. Handles identify it:
    ``table_handle`` is its table's (a chain's handle is unique only within its table).
    ``use``: what it held when listed (a chain: its rules and the jumps to it; a table:
    its chains, sets and objects)."""

    family: str  # "ip" or "ip6"
    table: str
    chain: str | None
    handle: int
    table_handle: int
    use: int

    def __str__(self) -> str:
        what = f"table {self.family} {self.table}"
        return what if self.chain is None else f"chain {self.family} {self.table} {self.chain}"


def _attr(kind: int, data: bytes) -> bytes:
    size = 4 + len(data)
    return struct.pack("=HH", size, kind) + data + b"\0" * (-size % 4)


def _message(kind: int, flags: int, seq: int, family: int, payload: bytes = b"",
             res_id: int = 0) -> bytes:
    body = _GENMSG.pack(family, 0, socket.htons(res_id)) + payload
    return _HEADER.pack(_HEADER.size + len(body), kind, flags, seq, 0) + body


def _attrs(data: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    while len(data) >= 4:
        size, kind = struct.unpack_from("=HH", data)
        if size < 4:
            break
        out[kind & NLA_TYPE_MASK] = data[4:size]
        data = data[(size + 3) & ~3:]
    return out


def _string(value: bytes) -> str:
    return value.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _be(value: bytes) -> int:
    return int.from_bytes(value, "big")


def _socket() -> socket.socket:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                      NETLINK_NETFILTER)
    s.settimeout(_TIMEOUT)
    s.bind((0, 0))
    return s


def _replies(s: socket.socket) -> Iterator[tuple[int, int, int, bytes]]:
    """(type, flags, seq, payload) of every message received, datagram after datagram."""
    buf = bytearray(1 << 17)
    while True:
        n = s.recv_into(buf)
        view, off = bytes(buf[:n]), 0
        while off + _HEADER.size <= n:
            size, kind, flags, seq, _pid = _HEADER.unpack_from(view, off)
            if size < _HEADER.size:
                return
            yield kind, flags, seq, view[off + _HEADER.size:off + size]
            off += (size + 3) & ~3


def _error(payload: bytes) -> int:
    code: int = struct.unpack_from("=i", payload)[0]
    return -code


def _dump(family: str, request: int) -> list[dict[int, bytes]]:
    """The attributes of every object a GET dump returns, retried while it is interrupted."""
    kind = (NFNL_SUBSYS_NFTABLES << 8) | request
    for _ in range(_DUMP_TRIES):
        with _socket() as s:
            s.send(_message(kind, NLM_F_REQUEST | NLM_F_DUMP, 1, NFPROTO[family]))
            found, interrupted = [], False
            for mtype, flags, _seq, payload in _replies(s):
                interrupted |= bool(flags & NLM_F_DUMP_INTR)
                if mtype == NLMSG_DONE:
                    break
                if mtype == NLMSG_ERROR:
                    code = _error(payload)
                    raise OSError(code, f"nf_tables dump: {os.strerror(code)}")
                found.append(_attrs(payload[_GENMSG.size:]))
        if not interrupted:
            return found
    raise OSError(errno.EAGAIN, "nf_tables dump: the ruleset kept changing")


def list_objects(family: str, chains: bool = True) -> list[NftObject]:
    """Every table (and chain) of ``family`` (``"ip"`` or ``"ip6"``) in this namespace."""
    tables = {}
    for a in _dump(family, NFT_MSG_GETTABLE):
        name, handle = _string(a[NFTA_TABLE_NAME]), _be(a[NFTA_TABLE_HANDLE])
        tables[name] = NftObject(family, name, None, handle, handle,
                                 _be(a.get(NFTA_TABLE_USE, b"")))
    out = list(tables.values())
    for a in _dump(family, NFT_MSG_GETCHAIN) if chains else ():
        table = tables.get(_string(a[NFTA_CHAIN_TABLE]))
        if table is not None:  # else created after the table dump: next time
            out.append(NftObject(family, table.table, _string(a[NFTA_CHAIN_NAME]),
                                 _be(a[NFTA_CHAIN_HANDLE]), table.handle,
                                 _be(a.get(NFTA_CHAIN_USE, b""))))
    return out


def delete_if_unused(obj: NftObject) -> Literal["deleted", "in use", "gone"]:
    """Delete ``obj`` (by handle) in one transaction unless it holds anything."""
    if obj.chain is None:
        kind, payload = NFT_MSG_DELTABLE, _attr(NFTA_TABLE_HANDLE, obj.handle.to_bytes(8, "big"))
    else:
        kind = NFT_MSG_DELCHAIN
        payload = (_attr(NFTA_CHAIN_TABLE, obj.table.encode() + b"\0")
                   + _attr(NFTA_CHAIN_HANDLE, obj.handle.to_bytes(8, "big")))
    batch = b"".join((
        _message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 1, socket.AF_UNSPEC,
                 res_id=NFNL_SUBSYS_NFTABLES),
        _message((NFNL_SUBSYS_NFTABLES << 8) | kind,
                 NLM_F_REQUEST | NLM_F_ACK | NLM_F_NONREC, 2, NFPROTO[obj.family], payload),
        _message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, 3, socket.AF_UNSPEC,
                 res_id=NFNL_SUBSYS_NFTABLES),
    ))
    code: int | None = None
    with _socket() as s:
        s.send(batch)
        for mtype, _flags, seq, reply in _replies(s):
            if mtype == NLMSG_ERROR and seq in (1, 2):  # the command's ack, or a refused batch
                code = _error(reply)
                break
    if code is None:
        raise OSError(errno.EPROTO, f"nf_tables: no answer to the delete of {obj}")
    if code == 0:
        return "deleted"
    if code == errno.EBUSY:
        return "in use"
    if code == errno.ENOENT:
        return "gone"
    raise OSError(code, f"nf_tables: could not delete {obj}: {os.strerror(code)}")
