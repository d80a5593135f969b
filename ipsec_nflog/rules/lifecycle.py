"""Installing, always removing, and cleaning up after crashes.

- :func:`install` returns an :class:`InstalledRules` handle; ``remove()`` is idempotent.
- :func:`installed` is the context manager: removal on normal exit and on exceptions.
- While any handle is active, SIGINT, SIGTERM and SIGHUP handlers (main thread only)
  remove every active rule set, then chain to the previous handler (the default action is
  re-raised: the exit status still says "killed by SIGTERM"); ``atexit`` removes what is
  left at exit. An ignored signal gets no handler: it ends nothing, so the rules stay. While
  a :class:`ipsec_nflog.system.signals.StopSignals` owns the signals (``capture``), none is
  installed: a signal only asks the owner to stop, and the owner removes the rules.
- Signals cannot cut install-and-register in two: the handlers go in first, the stop
  signals are blocked in the installing thread, and one that still reaches a handler waits
  until the handle is registered.
- ``remove()`` raises :class:`NetnsGoneError` if the named namespace was deleted meanwhile:
  the rules went with it (an nft owner table is removed through its socket anyway).
- SIGKILL cannot be caught: nft owner tables vanish with the process; iptables rules stay
  until :func:`cleanup` removes every rule whose tag names a process that is gone.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any, Literal, Union

from ipsec_nflog.rules import _run
from ipsec_nflog.rules.errors import RulesError, ToolMissingError
from ipsec_nflog.rules.iptables import IPTABLES_BACKENDS, IptablesBackend, TaggedRule, owner_dead
from ipsec_nflog.rules.model import RuleSet, new_persistent_tag, validate_tag
from ipsec_nflog.rules.nft import (
    NftBackend,
    NftInstallation,
    NftTable,
    nft_unsupported,
    table_owner_dead,
)
from ipsec_nflog.rules.presets import build
from ipsec_nflog.system.netns import netns_path, open_netns, validate_netns_name
from ipsec_nflog.system.signals import STOP_SIGNALS, held
from ipsec_nflog.system.signals import active as signal_owner

__all__ = [
    "BACKENDS",
    "InstalledRules",
    "Leftover",
    "NetnsGoneError",
    "choose_backend",
    "cleanup",
    "find",
    "install",
    "installed",
    "remove",
    "render",
    "show",
]

BACKENDS = ("nft", *IPTABLES_BACKENDS)
Leftover = Union[TaggedRule, NftTable]
Action = Literal["install", "remove"]


def _validate_backend(backend: str | None) -> str | None:
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)} (or None "
                         f"to choose automatically)")
    return backend


def choose_backend(rs: RuleSet | None = None) -> str:
    """The backend to use when none is given.

    1. ``nft`` when libnftables loads and the kernel has the owner flag (>= 5.12): the
       kernel removes the rules even if the process is SIGKILLed;
    2. otherwise ``iptables`` (the system's variant, nft or legacy);
    3. otherwise ``nft`` through the ``nft`` command.
    A rule set nft cannot express (policy ``proto``/``mode``) skips 1 and 3.
    """
    nft_ok = rs is None or nft_unsupported(rs) is None
    if nft_ok and NftBackend.owner_available():
        return "nft"
    if _run.tool_available("iptables-restore") and _run.tool_available("iptables"):
        return "iptables"
    if nft_ok and _run.tool_available("nft"):
        return "nft"
    if not nft_ok:
        raise ToolMissingError("iptables-restore", "iptables",
                               "policy proto/mode filters need an iptables backend")
    raise ToolMissingError("iptables-restore or nft", "nftables libnftables1",
                           "or apt-get install iptables")


def _ruleset(preset: Union[str, RuleSet], options: dict[str, Any]) -> RuleSet:
    if isinstance(preset, RuleSet):
        if options:
            raise ValueError("options cannot be given with a prebuilt RuleSet")
        return preset
    if "group" not in options:
        raise ValueError("group= (the NFLOG group, 0..65535) is required")
    return build(preset, **options)


def render(preset: Union[str, RuleSet], backend: str | None = "iptables", *,
           action: Action = "install", owner: bool = False, **options: Any) -> str:
    """The exact commands that install (or remove) the rules, for pasting elsewhere.

    iptables backends: ``iptables-restore -w --noflush <<'EOF' ... EOF`` per family;
    ``nft``: ``nft -f - <<'EOF' ... EOF`` (``owner=True`` adds ``flags owner``, as used
    in-process). ``backend=None`` renders for the backend :func:`choose_backend` picks here.
    ``options`` are those of :func:`ipsec_nflog.rules.presets.build` (``group`` required);
    pass ``tag=`` to render removal commands for an earlier installation.
    """
    _validate_backend(backend)
    if action not in ("install", "remove"):
        raise ValueError(f"action must be 'install' or 'remove', not {action!r}")
    rs = _ruleset(preset, options)
    name = backend or choose_backend(rs)
    if name == "nft":
        return NftBackend().render(rs, action, owner=owner)
    return IptablesBackend(name).render(rs, action)


# -- handles -------------------------------------------------------------------------------

_lock = threading.RLock()
_active: dict[int, InstalledRules] = {}
_previous: dict[int, Any] = {}
_atexit_done = False
_installing = 0  # installations under way; a signal reaching _on_signal meanwhile waits
_deferred: list[int] = []
SIGNALS = STOP_SIGNALS


class NetnsGoneError(RulesError):
    """The rules' network namespace was deleted while they were installed: they went with
    it (the namespace is freed once nothing uses it), so there is nothing to clean up."""

    def __init__(self, netns: str, preset: str) -> None:
        super().__init__(f"network namespace {netns!r} was deleted while the {preset} rules "
                         f"were installed in it; they went with it (nothing to clean up)")
        self.netns = netns


def _netns_identity(netns: str | None) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the named namespace: another namespace under the same name later
    is not the one our rules are in."""
    if netns is None:
        return None
    try:
        st = os.stat(netns_path(netns))
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


class InstalledRules:
    """Rules installed by this process. ``remove()`` deletes exactly them (idempotent)."""

    def __init__(self, ruleset: RuleSet, backend: str, netns: str | None,
                 state: NftInstallation | None) -> None:
        self.ruleset = ruleset
        self.backend = backend
        self.netns = netns
        self._state = state
        self._netns_id = _netns_identity(netns)
        self._pid = os.getpid()
        self._lock = threading.RLock()
        self._removed = False

    @property
    def tag(self) -> str:
        return self.ruleset.tag

    @property
    def preset(self) -> str:
        return self.ruleset.preset

    @property
    def active(self) -> bool:
        return not self._removed

    @property
    def owner_table(self) -> bool:
        """True for an nft table with ``flags owner`` (removed by the kernel if we die)."""
        return self._state is not None and self._state.owner

    def commands(self, action: Action = "install") -> str:
        """The commands this installation ran (or would run to remove it)."""
        if self.backend == "nft":
            return NftBackend().render(self.ruleset, action, owner=self.owner_table)
        return IptablesBackend(self.backend).render(self.ruleset, action)

    def remove(self) -> None:
        """Delete the rules. Idempotent; a no-op in a forked child (the parent owns them).
        :class:`NetnsGoneError` (once) when their namespace was deleted meanwhile."""
        with self._lock:
            if self._removed or os.getpid() != self._pid:
                return
            gone = self.netns is not None and _netns_identity(self.netns) != self._netns_id
            try:
                if self.owner_table or not gone:
                    self._delete()
            except BaseException:
                # an owner table is gone once its socket is closed, whatever the delete said
                if self.owner_table:
                    self._removed = True
                    _unregister(self)
                raise
            self._removed = True
        _unregister(self)
        if gone and not self.owner_table:
            assert self.netns is not None
            raise NetnsGoneError(self.netns, self.preset)

    def _delete(self) -> None:
        if self.backend == "nft":
            assert self._state is not None
            NftBackend().remove(self._state)  # an owner table through its socket: no name
        else:
            IptablesBackend(self.backend).remove(self.ruleset, self.netns)

    def __enter__(self) -> InstalledRules:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        where = f" netns={self.netns!r}" if self.netns else ""
        return (f"<InstalledRules {self.preset} backend={self.backend} tag={self.tag}{where} "
                f"{state}>")


def install(preset: Union[str, RuleSet], *, backend: str | None = None,
            netns: str | None = None, nft_owner: bool | None = None,
            handle_signals: bool = True, persistent: bool = False,
            **options: Any) -> InstalledRules:
    """Validate, then install the rules of ``preset`` atomically; returns the handle.

    ``backend``: ``nft``, ``iptables``, ``iptables-nft``, ``iptables-legacy`` or None
    (:func:`choose_backend`). ``netns``: a named namespace (``ip netns``) to install in.
    ``nft_owner``: for ``nft``, require (True) or avoid (False) the owner flag; None uses it
    when available. ``handle_signals``: install the SIGINT/SIGTERM/SIGHUP handlers (main
    thread only; not while a :class:`ipsec_nflog.system.signals.StopSignals` owns them).
    ``persistent``: rules that outlive this process (for ``ipsec-nflog rules install``):
    tag ``keep-<random>``, no owner flag, no signal/atexit removal, never removed by
    :func:`cleanup` without ``force``; remove them with :func:`remove`.
    ``options``: see :func:`ipsec_nflog.rules.presets.build` (``group`` required).
    """
    _validate_backend(backend)
    if persistent:
        if nft_owner:
            raise ValueError("persistent rules cannot use the nft owner flag (the table "
                             "would die with this process)")
        nft_owner = False
        if not isinstance(preset, RuleSet) and options.get("tag") is None:
            options["tag"] = new_persistent_tag()
    rs = _ruleset(preset, options)
    if netns is not None:
        os.close(open_netns(validate_netns_name(netns)))
    name = backend or choose_backend(rs)
    if nft_owner and name != "nft":
        raise ValueError("nft_owner applies to the nft backend only")
    global _installing
    try:
        with _lock, held():  # no signal between "installed" and "registered for removal"
            if not persistent and handle_signals:
                _hook_signals()  # before installing: a signal must not find SIG_DFL meanwhile
            _installing += 1
            try:
                if name == "nft":
                    state: NftInstallation | None = NftBackend(nft_owner).install(rs, netns)
                else:
                    IptablesBackend(name).install(rs, netns)
                    state = None
                handle = InstalledRules(rs, name, netns, state)
                if not persistent:
                    _register(handle)
            finally:
                _installing -= 1
                if not _active:
                    _restore_handlers()
    finally:
        _replay_deferred()  # also after a failed install: no signal is lost
    return handle


@contextlib.contextmanager
def installed(preset: Union[str, RuleSet], *, backend: str | None = None,
              netns: str | None = None, nft_owner: bool | None = None,
              handle_signals: bool = True, **options: Any) -> Iterator[InstalledRules]:
    """``with installed("all", group=5) as rules: ...`` - removed however the block ends."""
    handle = install(preset, backend=backend, netns=netns, nft_owner=nft_owner,
                     handle_signals=handle_signals, **options)
    try:
        yield handle
    finally:
        handle.remove()


def active() -> list[InstalledRules]:
    """The handles of this process that are still installed."""
    with _lock:
        return list(_active.values())


# -- signals and atexit --------------------------------------------------------------------


def _register(h: InstalledRules) -> None:
    global _atexit_done
    with _lock:
        _active[id(h)] = h
        if not _atexit_done:
            atexit.register(_remove_all, "exit")
            _atexit_done = True


def _hook_signals() -> None:
    """Our handler for each stop signal, unless another owner has them (the capture's
    StopSignals), we are not the main thread, or the signal is ignored (then it ends
    nothing, and removing the rules would leave the process running without them)."""
    if signal_owner() is not None or threading.current_thread() is not threading.main_thread():
        return
    for sig in SIGNALS:
        if sig in _previous:
            continue
        current = signal.getsignal(sig)
        if current is _on_signal or current == signal.SIG_IGN:
            continue
        try:
            signal.signal(sig, _on_signal)
        except (ValueError, OSError):  # pragma: no cover - not the main interpreter
            continue
        _previous[sig] = current


def _replay_deferred() -> None:
    """Deliver the signals that arrived while an installation was under way."""
    while not _installing and _deferred:
        signal.raise_signal(_deferred.pop(0))


def _unregister(h: InstalledRules) -> None:
    with _lock:
        _active.pop(id(h), None)
        if not _active:
            _restore_handlers()


def _restore_handlers() -> None:
    if threading.current_thread() is not threading.main_thread():
        return  # our handler stays; with nothing active it only chains
    for sig, prev in list(_previous.items()):
        if signal.getsignal(sig) is not _on_signal:
            continue  # someone else's now (e.g. StopSignals, which will put ours back)
        try:
            signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
        except (ValueError, OSError):  # pragma: no cover
            continue
        del _previous[sig]


def _remove_all(why: str) -> None:
    for h in active():
        if h._pid != os.getpid():
            continue
        try:
            h.remove()
        except NetnsGoneError as e:
            print(f"ipsec_nflog: {e}", file=sys.stderr)
        except Exception as e:
            print(f"ipsec_nflog: could not remove rules {h.tag} on {why}: {e}; run "
                  f"'ipsec-nflog rules cleanup' (ipsec_nflog.rules.cleanup())", file=sys.stderr)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if _installing:
        _deferred.append(signum)  # install() delivers it again once the handle is registered
        return
    prev = _previous.get(signum, signal.SIG_DFL)  # never SIG_IGN: see _hook_signals
    _remove_all(signal.Signals(signum).name)
    with _lock:
        if not _active:
            _restore_handlers()
    if callable(prev):
        prev(signum, frame)  # e.g. default_int_handler raises KeyboardInterrupt
        return
    # SIG_DFL (or a handler set from C): die from the signal, as without us
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


# -- finding, showing and cleaning up ------------------------------------------------------


def _iptables_backends_present() -> list[IptablesBackend]:
    out = [IptablesBackend(n) for n in ("iptables-nft", "iptables-legacy")
           if _run.tool_available(IptablesBackend(n).binary("ipv4", "-save"))]
    if not out and _run.tool_available("iptables-save"):
        out.append(IptablesBackend("iptables"))
    return out


def find(netns: str | None = None) -> list[Leftover]:
    """Every rule (iptables-nft, iptables-legacy) and nft table carrying our tag."""
    if netns is not None:
        os.close(open_netns(validate_netns_name(netns)))
    found: list[Leftover] = []
    for b in _iptables_backends_present():
        found += b.tagged_rules(netns)
    found += NftBackend.tables(netns)
    return found


def show(netns: str | None = None) -> str:
    """Our rules currently installed, as iptables-save lines and nft tables ("" if none)."""
    parts: list[str] = []
    for item in find(netns):
        if isinstance(item, TaggedRule):
            parts.append(str(item))
        else:
            parts.append(f"# {item}\n" + NftBackend.list_table(item.family, item.name,
                                                               netns).rstrip())
    return "\n".join(parts) + ("\n" if parts else "")


def cleanup(netns: str | None = None, *, force: bool = False) -> list[Leftover]:
    """Remove every rule and nft table with our tag whose owner process is gone.

    The owner is alive when a process with the tag's PID and start time exists (PIDs of
    this PID namespace). ``force=True`` removes all of ours except this process's active
    ones, whatever their owner. Owner-flag nft tables of live sockets cannot be deleted by
    anyone else and are skipped. Returns what was removed.
    """
    mine = {h.tag for h in active()}

    def stale(x: Leftover) -> bool:
        if x.tag in mine:
            return False
        return force or (owner_dead(x) if isinstance(x, TaggedRule) else table_owner_dead(x))

    removed, errors = _delete([x for x in find(netns) if stale(x)], netns,
                              skip_owned_tables=True)
    if errors:
        raise RulesError(f"cleanup removed {len(removed)} item(s) but failed: "
                         + "; ".join(errors))
    return removed


def remove(tag: str, *, netns: str | None = None) -> list[Leftover]:
    """Remove every rule and nft table carrying ``tag`` (e.g. persistent rules installed
    by an earlier ``ipsec-nflog rules install``); returns what was removed."""
    validate_tag(tag)
    found = [x for x in find(netns) if x.tag == tag]
    for h in active():
        if h.tag == tag and h.netns == netns:
            h.remove()
            return found
    removed, errors = _delete(found, netns, skip_owned_tables=False)
    if errors:
        raise RulesError(f"removed {len(removed)} item(s) of {tag} but failed: "
                         + "; ".join(errors))
    return removed


def _delete(items: list[Leftover], netns: str | None,
            skip_owned_tables: bool) -> tuple[list[Leftover], list[str]]:
    removed: list[Leftover] = []
    errors: list[str] = []
    for b in _iptables_backends_present():
        rows = [x for x in items if isinstance(x, TaggedRule) and x.backend == b.name]
        if not rows:
            continue
        try:
            b.delete(rows, netns)
            removed += rows
        except RulesError as e:
            errors.append(str(e))
    for t in items:
        if not isinstance(t, NftTable):
            continue
        try:
            NftBackend.delete_table(t, netns)
            removed.append(t)
        except RulesError as e:
            owned = t.owner and "Operation not permitted" in (e.stderr or "")
            if owned and skip_owned_tables:
                continue  # a live socket owns it; it goes away with that socket
            errors.append(f"{e}" + (" (an owner table: only the process that created it "
                                    "can delete it)" if owned else ""))
    return removed, errors
