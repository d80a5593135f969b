"""Installing and always removing (finding and cleaning up leftovers: :mod:`.leftovers`).

- :func:`install` returns an :class:`InstalledRules` handle; ``remove()`` is idempotent.
  Only the :class:`ipsec_nflog.rules.backend.Backend` protocol is used here: the handle
  keeps the backend's :class:`~ipsec_nflog.rules.backend.Installation`, which removes
  exactly what was installed.
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
  until :func:`ipsec_nflog.rules.leftovers.cleanup` removes every rule whose tag names a
  process that is gone.
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
from typing import Any, Union

from ipsec_nflog.rules.backend import (
    BACKENDS,
    Action,
    Backend,
    Installation,
    choose_backend,
    make_backend,
    validate_backend,
)
from ipsec_nflog.rules.errors import NetAdminRequiredError, RulesError
from ipsec_nflog.rules.model import RuleSet, new_persistent_tag
from ipsec_nflog.rules.presets import as_ruleset
from ipsec_nflog.system.netns import netns_path, open_netns, validate_netns_name
from ipsec_nflog.system.procinfo import CAP_NET_ADMIN, has_capability
from ipsec_nflog.system.signals import STOP_SIGNALS, held
from ipsec_nflog.system.signals import active as signal_owner

__all__ = [
    "BACKENDS",
    "InstalledRules",
    "NetnsGoneError",
    "active",
    "choose_backend",
    "install",
    "installed",
    "render",
]


def render(preset: Union[str, RuleSet], backend: str | None = "iptables", *,
           action: Action = "install", owner: bool = False, **options: Any) -> str:
    """The exact commands that install (or remove) the rules, for pasting elsewhere.

    iptables backends: ``iptables-restore -w --noflush <<'EOF' ... EOF`` per family;
    ``nft``: ``nft -f - <<'EOF' ... EOF`` (``owner=True`` adds ``flags owner``, as used
    in-process). ``backend=None`` renders for the backend :func:`choose_backend` picks here.
    ``options`` are those of :func:`ipsec_nflog.rules.presets.build` (``group`` required);
    pass ``tag=`` to render removal commands for an earlier installation. Without ``tag``
    the rules get a persistent tag (``keep-<random>``, as ``install(persistent=True)``):
    pasted commands outlive this process, and a tag naming it would make
    :func:`~ipsec_nflog.rules.leftovers.cleanup` delete them as stale once it has exited.
    """
    validate_backend(backend)
    if action not in ("install", "remove"):
        raise ValueError(f"action must be 'install' or 'remove', not {action!r}")
    if not isinstance(preset, RuleSet) and options.get("tag") is None:
        options["tag"] = new_persistent_tag()
    rs = as_ruleset(preset, options)
    return make_backend(backend or choose_backend(rs)).render(rs, action, owner=owner)


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
                 state: Installation) -> None:
        self.ruleset = ruleset
        self.tag: str = ruleset.tag
        self.preset: str = ruleset.preset
        self.backend = backend
        self.netns = netns
        self._state = state
        self._netns_id = _netns_identity(netns)
        self._pid = os.getpid()
        self._lock = threading.RLock()
        self._removed = False

    @property
    def active(self) -> bool:
        return not self._removed

    @property
    def owner_table(self) -> bool:
        """True for an nft table with ``flags owner`` (removed by the kernel if we die)."""
        return self._state.owner

    def commands(self, action: Action = "install") -> str:
        """The commands this installation ran (or would run to remove it)."""
        return make_backend(self.backend).render(self.ruleset, action, owner=self.owner_table)

    def remove(self) -> None:
        """Delete the rules. Idempotent; a no-op in a forked child (the parent owns them).
        :class:`NetnsGoneError` (once) when their namespace was deleted meanwhile."""
        with self._lock:
            if self._removed or os.getpid() != self._pid:
                return
            gone = self.netns is not None and _netns_identity(self.netns) != self._netns_id
            try:
                if self.owner_table or not gone:
                    self._state.remove()
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

    def __enter__(self) -> InstalledRules:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        where = f" netns={self.netns!r}" if self.netns else ""
        return (f"<InstalledRules {self.preset} backend={self.backend} tag={self.tag}{where} "
                f"{state}>")


def require_net_admin(what: str) -> None:
    """NetAdminRequiredError naming ``what`` unless this process has CAP_NET_ADMIN: checked
    first, since iptables and libnftables print errors of their own when it is missing."""
    if not has_capability(CAP_NET_ADMIN):
        raise NetAdminRequiredError(what)


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
    :func:`~ipsec_nflog.rules.leftovers.cleanup` without ``force``; remove them with
    :func:`~ipsec_nflog.rules.leftovers.remove`.
    ``options``: see :func:`ipsec_nflog.rules.presets.build` (``group`` required).
    """
    validate_backend(backend)
    if persistent:
        if nft_owner:
            raise ValueError("persistent rules cannot use the nft owner flag (the table "
                             "would die with this process)")
        nft_owner = False
        if not isinstance(preset, RuleSet) and options.get("tag") is None:
            options["tag"] = new_persistent_tag()
    rs = as_ruleset(preset, options)
    if netns is not None:
        os.close(open_netns(validate_netns_name(netns)))
    require_net_admin("installing rules")
    chosen = make_backend(backend or choose_backend(rs), nft_owner)
    return _install_and_register(chosen, rs, netns, register=not persistent,
                                 hook_signals=not persistent and handle_signals)


def _install_and_register(backend: Backend, rs: RuleSet, netns: str | None, *,
                          register: bool, hook_signals: bool) -> InstalledRules:
    """Install, then register for removal on signals and at exit, as one step that no
    stop signal can cut in two."""
    global _installing
    try:
        with _lock, held():  # no signal between "installed" and "registered for removal"
            if hook_signals:
                _hook_signals()  # before installing: a signal must not find SIG_DFL meanwhile
            _installing += 1
            try:
                handle = InstalledRules(rs, backend.name, netns, backend.install(rs, netns))
                if register:
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
