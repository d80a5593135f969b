"""libnftables in-process, through cffi's ABI mode (no compiler, no compiled module).

An nft table with ``flags owner`` lives only as long as the netlink socket that created it.
The ``nft`` command closes its socket when it exits, so owner tables need a context that
stays open in our process: :class:`NftContext`. libnftables opens its netlink socket in
``nft_ctx_new()``; a socket keeps the network namespace it was created in, so a context
made from a thread that ``setns``-ed into a namespace operates there for its whole life,
whichever thread uses it later (verified by tests/test_rules_kernel.py).

A forked child must not keep that socket: an owner table lives as long as *any* process
holds it, so a capture child that outlives its parent would keep the rules alive. An
``os.register_at_fork`` hook closes, in every child, the netlink sockets libnftables opened
for each live context (found by comparing our descriptors before and after it opens them;
libnftables does not expose them), and marks those contexts closed there.
"""

from __future__ import annotations

import os
import socket
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from ipsec_nflog.rules.errors import RulesError, ToolMissingError
from ipsec_nflog.system.netns import run_in_netns

__all__ = ["LIBNAME", "NftContext", "libnftables_available"]

LIBNAME = "libnftables.so.1"

_CDEF = """
struct nft_ctx;
struct nft_ctx *nft_ctx_new(uint32_t flags);
void nft_ctx_free(struct nft_ctx *ctx);
int nft_ctx_buffer_output(struct nft_ctx *ctx);
int nft_ctx_buffer_error(struct nft_ctx *ctx);
const char *nft_ctx_get_output_buffer(struct nft_ctx *ctx);
const char *nft_ctx_get_error_buffer(struct nft_ctx *ctx);
int nft_run_cmd_from_buffer(struct nft_ctx *nft, const char *buf);
"""

_lock = threading.Lock()
_ffi: Any = None
_lib: Any = None
_load_error: str | None = None
_contexts: weakref.WeakSet[NftContext] = weakref.WeakSet()  # open ones, for the fork hook

T = TypeVar("T")
Socket = tuple[int, int]  # (descriptor, inode): the inode tells a reused number apart


def _netlink_sockets() -> set[Socket]:
    out: set[Socket] = set()
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            s = socket.socket(fileno=fd)
        except OSError:
            continue  # closed meanwhile (e.g. listdir's own descriptor)
        try:
            if s.family == socket.AF_NETLINK:
                out.add((fd, os.fstat(fd).st_ino))
        finally:
            s.detach()
    return out


def _opening_sockets(fn: Callable[[], T]) -> tuple[T, set[Socket]]:
    """``fn()`` and the netlink sockets that appeared while it ran."""
    before = _netlink_sockets()
    result = fn()
    return result, _netlink_sockets() - before


def _forget_in_child() -> None:
    for ctx in list(_contexts):
        ctx._forget_in_child()


def _load() -> tuple[Any, Any]:
    global _ffi, _lib, _load_error
    with _lock:
        if _lib is not None:
            return _ffi, _lib
        if _load_error is not None:
            raise ToolMissingError(LIBNAME, "libnftables1", _load_error)
        try:
            import cffi
        except ImportError as e:  # pragma: no cover - cffi is a dependency
            _load_error = f"python cffi is missing: {e}"
            raise ToolMissingError(LIBNAME, "libnftables1", _load_error) from e
        ffi = cffi.FFI()
        ffi.cdef(_CDEF)
        try:
            lib = ffi.dlopen(LIBNAME)
        except OSError as e:
            _load_error = str(e)
            raise ToolMissingError(LIBNAME, "libnftables1", _load_error) from e
        _ffi, _lib = ffi, lib
        return ffi, lib


def libnftables_available() -> bool:
    try:
        _load()
    except ToolMissingError:
        return False
    return True


class NftContext:
    """An open libnftables context (and its netlink socket) bound to ``netns``.

    Every command runs in a helper thread inside ``netns`` as well, in case libnftables
    ever reopens its socket. ``close()`` frees the context, which closes the socket; the
    kernel then deletes every owner table that socket created.
    """

    def __init__(self, netns: str | None = None) -> None:
        self._ffi, self._lib = _load()
        self.netns = netns
        self._lock = threading.RLock()
        ctx, self._sockets = run_in_netns(
            netns, lambda: _opening_sockets(lambda: self._lib.nft_ctx_new(0)))
        if ctx == self._ffi.NULL:
            raise RulesError("nft_ctx_new() failed (out of memory, or no netlink socket)")
        self._ctx: Any = ctx
        self._lib.nft_ctx_buffer_output(ctx)
        self._lib.nft_ctx_buffer_error(ctx)
        _contexts.add(self)

    @property
    def closed(self) -> bool:
        return self._ctx is None

    def run(self, script: str, *, pin_netns: bool = True) -> tuple[int, str, str]:
        """Run an nft script; returns (rc, output, error text).

        ``pin_netns=False`` runs it in the calling thread: the context's socket still
        talks to the namespace it was created in (the tests check that)."""
        with self._lock:
            if self._ctx is None:
                raise RulesError("the libnftables context is closed")
            ctx, lib, ffi = self._ctx, self._lib, self._ffi
            data = script.encode()

            def go() -> tuple[int, str, str]:
                rc, opened = _opening_sockets(lambda: int(lib.nft_run_cmd_from_buffer(ctx, data)))
                self._sockets |= opened  # should libnftables (re)open its socket lazily
                out = lib.nft_ctx_get_output_buffer(ctx)
                err = lib.nft_ctx_get_error_buffer(ctx)
                return (rc, ffi.string(out).decode(errors="replace") if out != ffi.NULL else "",
                        ffi.string(err).decode(errors="replace") if err != ffi.NULL else "")

            return run_in_netns(self.netns if pin_netns else None, go)

    def close(self) -> None:
        """Free the context (idempotent). Owner tables created through it disappear."""
        with self._lock:
            if self._ctx is not None:
                ctx, self._ctx = self._ctx, None
                _contexts.discard(self)
                self._lib.nft_ctx_free(ctx)

    def _forget_in_child(self) -> None:
        """In a forked child: close our copies of the context's sockets, so the owner table
        goes when the parent's do, and never touch the context again (no lock: a thread of
        the parent may have held it at the fork; nft_ctx_free would close reused numbers)."""
        self._ctx = None
        self._lock = threading.RLock()
        for fd, inode in self._sockets:
            try:
                if os.fstat(fd).st_ino == inode:
                    os.close(fd)
            except OSError:
                pass
        self._sockets = set()

    def __enter__(self) -> NftContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


os.register_at_fork(after_in_child=_forget_in_child)
