"""The backend protocol and the one registry of backend names.

A backend renders a rule set as shell-pasteable commands and installs it; what it installs
comes back as an :class:`Installation` that removes exactly those rules. The lifecycle only
speaks this protocol: which backends exist, what their names are and which one to choose is
decided here, nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol

from ipsec_nflog.rules import _run
from ipsec_nflog.rules.errors import ToolMissingError
from ipsec_nflog.rules.iptables import IPTABLES_BACKENDS, IptablesBackend
from ipsec_nflog.rules.model import RuleSet
from ipsec_nflog.rules.nft import NftBackend, nft_unsupported

__all__ = [
    "BACKENDS",
    "Action",
    "Backend",
    "Installation",
    "choose_backend",
    "make_backend",
    "validate_backend",
]

Action = Literal["install", "remove"]


class Installation(Protocol):
    """Rules a backend installed; ``remove()`` deletes exactly them."""

    @property
    def owner(self) -> bool:
        """True when the kernel removes the rules if this process dies (an nft owner table,
        tied to the socket that created it)."""
        ...

    def remove(self) -> None:
        """Delete the rules (raises :class:`RulesError` when the tool refuses)."""
        ...


class Backend(Protocol):
    """What the lifecycle needs of a backend."""

    @property
    def name(self) -> str:
        """The registry name, e.g. ``iptables-legacy``."""
        ...

    def render(self, rs: RuleSet, action: Action = "install", *, owner: bool = False) -> str:
        """The commands that install (or remove) ``rs``; ``owner`` shows an installation
        whose rules die with the process (ignored where the backend has no such thing)."""
        ...

    def install(self, rs: RuleSet, netns: str | None = None) -> Installation:
        """Install ``rs`` atomically in ``netns`` (None: this namespace)."""
        ...


def _nft(name: str, nft_owner: bool | None) -> Backend:
    return NftBackend(nft_owner)


def _iptables(name: str, nft_owner: bool | None) -> Backend:
    if nft_owner:
        raise ValueError("nft_owner applies to the nft backend only")
    return IptablesBackend(name)


# name -> factory(name, nft_owner); the order is that of BACKENDS
_FACTORIES: dict[str, Callable[[str, bool | None], Backend]] = {
    "nft": _nft,
    **{name: _iptables for name in IPTABLES_BACKENDS},
}
BACKENDS = tuple(_FACTORIES)


def validate_backend(backend: str | None) -> str | None:
    """``backend`` when it is a registered name or None; else ``ValueError``."""
    if backend is not None and backend not in _FACTORIES:
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)} (or None "
                         f"to choose automatically)")
    return backend


def make_backend(name: str, nft_owner: bool | None = None) -> Backend:
    """The backend registered as ``name``. ``nft_owner``: for ``nft``, require (True) or
    avoid (False) the owner flag, None to use it when available; other backends refuse
    True (``ValueError``)."""
    validate_backend(name)
    return _FACTORIES[name](name, nft_owner)


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
