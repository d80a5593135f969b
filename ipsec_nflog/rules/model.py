
"""Rule sets as data: backend-neutral rule objects, their validation, and owner tags.

A :class:`RuleSet` is a list of :class:`Rule` objects plus the address families it applies
to and the owner tag carried in every rule's comment. Backends (``iptables.py``,
``nft.py``) only render these objects; nothing here runs a command.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from ipsec_nflog.validate import check_int, validate_group, validate_interface

__all__ = [
    "COMMENT_PREFIX",
    "DEFAULT_IKE_PORTS",
    "FAMILIES",
    "AddrType",
    "DPorts",
    "Family",
    "Iface",
    "Match",
    "NflogTarget",
    "OwnerTag",
    "Policy",
    "PolicyElement",
    "Proto",
    "Rule",
    "RuleSet",
    "new_owner_tag",
    "parse_owner_tag",
    "validate_family",
    "validate_group",
    "validate_interface",
    "validate_prefix",
]

Family = Literal["ipv4", "ipv6"]
FAMILIES: tuple[Family, Family] = ("ipv4", "ipv6")
COMMENT_PREFIX = "ipsec_nflog:"
DEFAULT_IKE_PORTS = (500, 4500)

PREFIX_MAX = 63  # xt_nflog_info.prefix is char[64] including the NUL; legacy truncates to 63
MULTIPORT_MAX = 15  # XT_MULTI_PORTS
POLICY_MAX_ELEMENTS = 4  # XT_POLICY_MAX_ELEM
U32_MAX = 0xFFFFFFFF
SNAPLEN_MAX = 65535
THRESHOLD_MAX = 65535
TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")
OWNER_TAG_RE = re.compile(r"^pid(?P<pid>[0-9]+)-s(?P<start>[0-9]+)-(?P<rand>[0-9a-f]+)$")


def validate_family(family: Any) -> tuple[Family, ...]:
    """``"ipv4"``, ``"ipv6"`` or ``"both"`` -> the tuple of families."""
    if family == "both":
        return FAMILIES
    if family in FAMILIES:
        return (family,)
    raise ValueError(f"family must be 'ipv4', 'ipv6' or 'both', not {family!r}")


def validate_prefix(prefix: Any) -> str | None:
    """The NFLOG prefix: at most 63 bytes of printable ASCII without quotes, backslash or $.

    The kernel's field is 64 bytes including the terminating NUL (iptables-legacy silently
    cuts a 64th byte); quotes and backslashes would change meaning inside the iptables-restore
    and nft scripts, so they are refused rather than escaped; nft expands ``$name`` inside
    a log prefix (verified: ``log prefix "a$b"`` is "unknown identifier"), so ``$`` is
    refused too.
    """
    if prefix is None:
        return None
    if not isinstance(prefix, str):
        raise ValueError(f"prefix must be a string, not {prefix!r}")
    raw = prefix.encode("utf-8", "surrogateescape")
    if len(raw) > PREFIX_MAX:
        raise ValueError(f"prefix is {len(raw)} bytes; NFLOG allows at most {PREFIX_MAX} "
                         f"(a 64-byte field including the terminating NUL)")
    for ch in prefix:
        if ch in "\n\r":
            raise ValueError(f"prefix {prefix!r} contains a newline")
        if ch == "\0":
            raise ValueError(f"prefix {prefix!r} contains a NUL byte")
        if ch in "\"'":
            raise ValueError(f"prefix {prefix!r} contains a quote")
        if ch == "\\":
            raise ValueError(f"prefix {prefix!r} contains a backslash")
        if ch == "$":
            raise ValueError(f"prefix {prefix!r} contains '$', which nft expands as a "
                             f"variable inside a log prefix")
        if not (" " <= ch <= "~"):
            raise ValueError(f"prefix {prefix!r} contains a non-printable or non-ASCII "
                             f"character {ch!r}")
    return prefix


def _network(name: str, value: Any, family: Family) -> str:
    if not isinstance(value, (str, ipaddress.IPv4Network, ipaddress.IPv6Network,
                              ipaddress.IPv4Address, ipaddress.IPv6Address)):
        raise ValueError(f"{name} must be an address or address/mask string, not {value!r}")
    try:
        net = ipaddress.ip_network(str(value), strict=True)
    except ValueError as e:
        raise ValueError(f"{name} {value!r} is not a valid address or address/mask: {e}") \
            from None
    want = 4 if family == "ipv4" else 6
    if net.version != want:
        raise ValueError(f"{name} {value!r} is IPv{net.version} but the rules are {family}")
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return str(net)


# -- policy match -------------------------------------------------------------------------

_ELEMENT_FIELDS = ("reqid", "spi", "proto", "mode", "tunnel_src", "tunnel_dst")


@dataclass(frozen=True)
class PolicyElement:
    """One element of ``-m policy`` (the options between ``--next`` separators).

    ``negate`` names the fields matched with ``!`` (e.g. ``frozenset({"spi"})``).
    Addresses are validated against the rule family when the rule set is built.
    """

    reqid: int | None = None
    spi: int | None = None
    proto: str | None = None
    mode: str | None = None
    tunnel_src: str | None = None
    tunnel_dst: str | None = None
    negate: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.reqid is not None:
            check_int("reqid", self.reqid, 0, U32_MAX)
        if self.spi is not None:
            check_int("spi", self.spi, 0, U32_MAX)
        if self.proto is not None and self.proto not in ("esp", "ah", "ipcomp"):
            raise ValueError(f"policy proto must be 'esp', 'ah' or 'ipcomp', not "
                             f"{self.proto!r}")
        if self.mode is not None and self.mode not in ("tunnel", "transport"):
            raise ValueError(f"policy mode must be 'tunnel' or 'transport', not {self.mode!r}")
        neg = self.negate
        if isinstance(neg, str) or not isinstance(neg, (set, frozenset, tuple, list)):
            raise ValueError(f"negate must be a set of field names, not {neg!r}")
        neg = frozenset(neg)
        object.__setattr__(self, "negate", neg)
        for f in neg:
            if f not in _ELEMENT_FIELDS:
                raise ValueError(f"negate names unknown policy field {f!r}; known: "
                                 f"{', '.join(_ELEMENT_FIELDS)}")
            if getattr(self, f) is None:
                raise ValueError(f"negate names {f!r} but no {f} is given")
        for f in ("tunnel_src", "tunnel_dst"):
            if getattr(self, f) is not None and (self.mode != "tunnel" or "mode" in neg):
                opt = "--" + f.replace("_", "-")
                raise ValueError(f"{opt} is only valid with --mode tunnel (the article: "
                                 f"'Only valid with --mode tunnel')")

    @property
    def empty(self) -> bool:
        return all(getattr(self, f) is None for f in _ELEMENT_FIELDS)

    def for_family(self, family: Family) -> PolicyElement:
        """This element with its tunnel addresses validated and normalised for ``family``."""
        src = None if self.tunnel_src is None else _network("tunnel-src", self.tunnel_src,
                                                            family)
        dst = None if self.tunnel_dst is None else _network("tunnel-dst", self.tunnel_dst,
                                                            family)
        return PolicyElement(self.reqid, self.spi, self.proto, self.mode, src, dst, self.negate)

    @classmethod
    def coerce(cls, value: Union[PolicyElement, Mapping[str, Any]]) -> PolicyElement:
        if isinstance(value, PolicyElement):
            return value
        if isinstance(value, Mapping):
            unknown = set(value) - set(_ELEMENT_FIELDS) - {"negate"}
            if unknown:
                raise ValueError(f"unknown policy element option(s): {sorted(unknown)}")
            return cls(**dict(value))
        raise ValueError(f"a policy element must be a PolicyElement or a mapping, not "
                         f"{value!r}")


@dataclass(frozen=True)
class Policy:
    """``-m policy --pol {ipsec|none} --dir {in|out} [--strict] element [--next element]...``"""

    direction: Literal["in", "out"]
    pol: Literal["ipsec", "none"] = "ipsec"
    strict: bool = False
    elements: tuple[PolicyElement, ...] = ()

    def __post_init__(self) -> None:
        if self.direction not in ("in", "out"):
            raise ValueError(f"policy direction must be 'in' or 'out', not {self.direction!r}")
        if self.pol not in ("ipsec", "none"):
            raise ValueError(f"--pol must be 'ipsec' or 'none', not {self.pol!r}")
        if self.pol == "none" and self.strict:
            raise ValueError("--pol none cannot be combined with --strict (the article: "
                             "'--pol none cannot be combined with --strict')")
        if self.pol == "none" and self.elements:
            raise ValueError("--pol none matches packets without IPsec; policy element "
                             "options (reqid, spi, proto, mode, tunnel-src/dst) need --pol "
                             "ipsec")
        if len(self.elements) > POLICY_MAX_ELEMENTS:
            raise ValueError(f"at most {POLICY_MAX_ELEMENTS} policy elements are supported "
                             f"by the kernel, got {len(self.elements)}")
        if not self.strict and len(self.elements) > 1:
            raise ValueError("--next can only be used with --strict")
        if self.strict:
            if not self.elements:
                raise ValueError("--strict needs at least one policy element (reqid, spi, "
                                 "proto, mode, tunnel-src or tunnel-dst)")
            for i, e in enumerate(self.elements):
                if e.empty:
                    raise ValueError(f"policy element {i} is empty; with --strict every "
                                     f"element needs at least one of reqid, spi, proto, "
                                     f"mode, tunnel-src, tunnel-dst")
        for e in self.elements:
            if not self.strict and e.empty:
                raise ValueError("empty policy element")


# -- matches and target -------------------------------------------------------------------


@dataclass(frozen=True)
class Proto:
    """The packet's layer-4 protocol: ``esp``, ``ah`` or ``udp``."""

    name: Literal["esp", "ah", "udp"]


@dataclass(frozen=True)
class DPorts:
    """UDP destination ports (``-m multiport --dports``); the rule also has ``Proto("udp")``."""

    ports: tuple[int, ...]


@dataclass(frozen=True)
class Iface:
    """``-i`` (direction ``in``) or ``-o`` (``out``) interface; a trailing ``+`` is a wildcard."""

    direction: Literal["in", "out"]
    name: str


@dataclass(frozen=True)
class AddrType:
    """``-m addrtype [!] --dst-type LOCAL``."""

    local: bool


Match = Union[Iface, Proto, DPorts, AddrType, Policy]

TABLE_CHAINS: dict[str, tuple[str, ...]] = {
    "raw": ("PREROUTING", "OUTPUT"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
}
INGRESS_CHAINS = ("PREROUTING", "INPUT", "FORWARD")


@dataclass(frozen=True)
class NflogTarget:
    """``-j NFLOG --nflog-group G [--nflog-prefix P] [--nflog-size S] [--nflog-threshold T]``"""

    group: int
    prefix: str | None = None
    size: int | None = None
    threshold: int | None = None

    def __post_init__(self) -> None:
        validate_group(self.group)
        validate_prefix(self.prefix)
        if self.size is not None:
            check_int("snaplen (--nflog-size)", self.size, 0, SNAPLEN_MAX)
        if self.threshold is not None:
            check_int("threshold (--nflog-threshold)", self.threshold, 1, THRESHOLD_MAX)


@dataclass(frozen=True)
class Rule:
    """One NFLOG rule: where it sits (table, chain), what it matches, and its target."""

    table: Literal["raw", "mangle", "filter"]
    chain: Literal["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"]
    matches: tuple[Match, ...]
    target: NflogTarget

    def __post_init__(self) -> None:
        if self.chain not in TABLE_CHAINS.get(self.table, ()):
            raise ValueError(f"chain {self.chain} does not exist in table {self.table}")

    @property
    def policy(self) -> Policy | None:
        for m in self.matches:
            if isinstance(m, Policy):
                return m
        return None


# -- owner tags ----------------------------------------------------------------------------


@dataclass(frozen=True)
class OwnerTag:
    """A parsed owner tag ``pid<PID>-s<STARTTIME>-<random hex>``."""

    tag: str
    pid: int
    start_time: int

    def owner_alive(self) -> bool:
        """Whether the process that installed the rules still runs (same PID *and* start
        time, so a recycled PID does not count)."""
        start = process_start_time(self.pid)
        return start is not None and start == self.start_time


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (clock ticks since boot), or None if there is no process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError, OSError):
        return None
    try:
        rest = data[data.rindex(b")") + 2:].split()
        return int(rest[19])
    except (ValueError, IndexError):
        return None


def new_owner_tag(pid: int | None = None) -> str:
    """A tag naming this process: ``pid<PID>-s<start time>-<8 random hex digits>``."""
    pid = os.getpid() if pid is None else pid
    start = process_start_time(pid) or 0
    return f"pid{pid}-s{start}-{secrets.token_hex(4)}"


def new_persistent_tag() -> str:
    """A tag for rules meant to outlive their process: ``keep-<8 random hex digits>``.
    It names no process, so :func:`cleanup` never treats such rules as stale."""
    return f"keep-{secrets.token_hex(4)}"


def parse_owner_tag(tag: str) -> OwnerTag | None:
    m = OWNER_TAG_RE.match(tag)
    if m is None:
        return None
    return OwnerTag(tag, int(m.group("pid")), int(m.group("start")))


def validate_tag(tag: Any) -> str:
    if not isinstance(tag, str) or not TAG_RE.match(tag):
        raise ValueError(f"owner tag must be 1..64 characters of [A-Za-z0-9-] starting with a "
                         f"letter or digit, not {tag!r}")
    return tag


# -- rule set ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleSet:
    """The rules of one preset for one capture: what the backends render and install."""

    preset: str
    families: tuple[Family, ...]
    rules: tuple[Rule, ...]
    tag: str
    options: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        validate_tag(self.tag)
        if not self.families or any(f not in FAMILIES for f in self.families):
            raise ValueError(f"bad families {self.families!r}")

    @property
    def comment(self) -> str:
        """The comment every rule carries: ``ipsec_nflog:<tag>``."""
        return COMMENT_PREFIX + self.tag

    @property
    def family(self) -> str:
        return "both" if len(self.families) == 2 else self.families[0]

    def for_family(self, family: Family) -> list[Rule]:
        """The rules with tunnel addresses normalised for ``family``."""
        out = []
        for r in self.rules:
            pol = r.policy
            if pol is None or not pol.elements:
                out.append(r)
                continue
            new_pol = Policy(pol.direction, pol.pol, pol.strict,
                             tuple(e.for_family(family) for e in pol.elements))
            out.append(Rule(r.table, r.chain,
                            tuple(new_pol if isinstance(m, Policy) else m for m in r.matches),
                            r.target))
        return out


def dedupe_ports(ports: Iterable[Any]) -> tuple[int, ...]:
    out: list[int] = list(DEFAULT_IKE_PORTS)
    if isinstance(ports, (str, bytes)) or isinstance(ports, int):
        raise ValueError(f"ike_ports must be a list of port numbers, not {ports!r}")
    for p in ports:
        check_int("IKE port", p, 1, 65535)
        if p not in out:
            out.append(p)
    if len(out) > MULTIPORT_MAX:
        raise ValueError(f"at most {MULTIPORT_MAX} IKE ports fit one multiport match "
                         f"(500 and 4500 included), got {len(out)}")
    return tuple(out)
