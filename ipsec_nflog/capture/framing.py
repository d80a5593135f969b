"""Framing ring records for the pcapng and raw writers in the C core (``nfc_frame``): one pass
over a batch instead of a Python loop per packet. Implements the
:class:`ipsec_nflog.files.encoders.Framing` protocol, which is all the writers know of it
(files/ never imports the compiled core): ``writer.use_framing(NativeFraming())``.

The output buffer is reused from batch to batch: what a call returns is valid until the next
call, which is how a writer uses it (each batch is written before the next is framed).
"""

from __future__ import annotations

import errno
from collections.abc import Mapping
from typing import Any

from ipsec_nflog.capture.errmap import raise_for_errno

__all__ = ["NativeFraming"]


class NativeFraming:
    """EPBs (with the interface id of each record's group and the synthesized-timestamp
    options) and raw-IP records, made by the C core from ring records."""

    def __init__(self) -> None:
        from ipsec_nflog.capture._native import ffi, lib

        self._ffi, self._lib = ffi, lib
        self._out = bytearray()
        self._args = ffi.new("struct nfc_frame_args *")
        self._result = ffi.new("struct nfc_frame_result *")
        self._ifaces: tuple[Any, Any] | None = None  # the cdata the args point to
        self._synth: Any = None
        self._ifaces_key: tuple[int, int] | None = None
        self._opts: bytes | None = None

    def pcapng(self, records: memoryview, count: int, iface_ids: Mapping[int, int],
               synth_opts: bytes) -> tuple[memoryview, int]:
        """(the EPBs of ``count`` records, -1), or (empty, group) at the first record whose
        group has no interface id in ``iface_ids``: declare it and call again."""
        self._set_ifaces(iface_ids)
        self._set_synth(synth_opts)
        self._args.format = self._lib.NFC_FRAME_PCAPNG
        r = self._frame(records, count, len(synth_opts))
        if r.unknown_group >= 0:
            return memoryview(self._out)[:0], int(r.unknown_group)
        self._check_whole(records, count, r)
        return memoryview(self._out)[: r.nbytes], -1

    def raw(self, records: memoryview, count: int) -> tuple[memoryview, int]:
        """(LINKTYPE_RAW records of the IP packets, how many): records without an IP
        packet are left out."""
        self._args.format = self._lib.NFC_FRAME_RAW
        r = self._frame(records, count, 0)
        self._check_whole(records, count, r)
        return memoryview(self._out)[: r.nbytes], int(r.framed)

    def _frame(self, records: memoryview, count: int, synth_len: int) -> Any:
        ffi, lib = self._ffi, self._lib
        nbytes = len(records)
        need = int(lib.nfc_frame_bound(nbytes, count, synth_len))
        if len(self._out) < need:  # a new buffer: views of the old one may still exist
            self._out = bytearray(max(need, 2 * len(self._out)))
        rc = lib.nfc_frame(ffi.from_buffer(records), nbytes, count, self._args,
                           ffi.from_buffer(self._out), len(self._out), self._result)
        if rc == -errno.EINVAL:
            raise ValueError(f"batch of {nbytes} bytes is not {count} whole records")
        if rc < 0:
            raise_for_errno(rc, "frame records")
        return self._result

    @staticmethod
    def _check_whole(records: memoryview, count: int, r: Any) -> None:
        if r.consumed != count or r.consumed_bytes != len(records):
            raise ValueError(f"batch holds {r.consumed} whole records in {r.consumed_bytes} "
                             f"of {len(records)} bytes, but count is {count}")

    def _set_ifaces(self, iface_ids: Mapping[int, int]) -> None:
        key = (id(iface_ids), len(iface_ids))  # interface ids are only ever added
        if key == self._ifaces_key:
            return
        groups = self._ffi.new("uint16_t[]", list(iface_ids.keys()) or [0])
        ids = self._ffi.new("uint32_t[]", list(iface_ids.values()) or [0])
        self._ifaces = (groups, ids)
        self._args.groups, self._args.iface_ids = groups, ids
        self._args.ngroups = len(iface_ids)
        self._ifaces_key = key

    def _set_synth(self, synth_opts: bytes) -> None:
        if synth_opts is self._opts:
            return
        buf = self._ffi.new("char[]", synth_opts or b"\0")
        self._synth = buf
        self._args.synth_opts, self._args.synth_opts_len = buf, len(synth_opts)
        self._opts = synth_opts
