"""The article's rule sets as named presets, built into validated :class:`RuleSet` objects.

The rules are the ones of "Taking Traffic Dumps on Linux" (strongSwan docs), in the same
tables, chains and order, with the same matches. Our additions: a comment with the owner
tag on every rule, the optional NFLOG options (prefix, size, threshold), an optional
interface match, optional policy-element filters and extra IKE ports.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

from ipsec_nflog.rules.model import (
    INGRESS_CHAINS,
    AddrType,
    DPorts,
    Family,
    Iface,
    Match,
    NflogTarget,
    Policy,
    PolicyElement,
    Proto,
    Rule,
    RuleSet,
    dedupe_ports,
    new_owner_tag,
    validate_family,
    validate_interface,
    validate_tag,
)

__all__ = ["PRESETS", "Preset", "as_ruleset", "build", "preset_names"]

Table = Literal["raw", "mangle", "filter"]
PolicyKind = Literal["ipsec", "none"]
Chain = Literal["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"]


@dataclass(frozen=True)
class _Part:
    table: Table
    chain: Chain
    kind: Literal["ike-esp", "policy", "device"]
    direction: Literal["in", "out"]
    addrtype_local: bool | None = None


@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    description: str
    parts: tuple[_Part, ...]

    @property
    def has_ike(self) -> bool:
        return any(p.kind == "ike-esp" for p in self.parts)

    @property
    def has_policy(self) -> bool:
        return any(p.kind == "policy" for p in self.parts)

    @property
    def is_device(self) -> bool:
        return any(p.kind == "device" for p in self.parts)


_IN = _Part("raw", "PREROUTING", "ike-esp", "in")
_OUT = _Part("raw", "OUTPUT", "ike-esp", "out")
_DECAP = (_Part("mangle", "PREROUTING", "policy", "in"),
          _Part("mangle", "POSTROUTING", "policy", "out"))

PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("ike-esp-in", "Ingress IPsec and IKE Traffic",
           "encrypted ESP and AH packets and IKE (UDP 500/4500) as they arrive (raw "
           "PREROUTING)", (_IN,)),
    Preset("ike-esp-out", "Egress IPsec and IKE Traffic",
           "encrypted ESP and AH packets and IKE as this host sends them (raw OUTPUT)",
           (_OUT,)),
    Preset("decap", "Decapsulated IPsec Traffic",
           "plaintext of every packet that was decapsulated (mangle PREROUTING, policy in) or "
           "will be encapsulated (mangle POSTROUTING, policy out)", _DECAP),
    Preset("local", "IPsec Traffic Terminated at Local Host",
           "decapsulated packets addressed to this host (filter INPUT, addrtype LOCAL, "
           "policy in)", (_Part("filter", "INPUT", "policy", "in", True),)),
    Preset("forward", "IPsec Traffic Forwarded to Remote Hosts",
           "decapsulated packets routed on to other hosts (filter FORWARD, not LOCAL, policy "
           "in)", (_Part("filter", "FORWARD", "policy", "in", False),)),
    Preset("outgoing", "Outgoing IPsec Traffic",
           "locally generated packets that will be encapsulated (filter OUTPUT, policy out)",
           (_Part("filter", "OUTPUT", "policy", "out"),)),
    Preset("all", "All of the above, each packet once per view",
           "ike-esp-in + ike-esp-out + decap: encrypted packets both ways and their "
           "plaintext both ways. local, forward and outgoing are subsets of decap and are "
           "left out so no packet is logged twice by the same view", (_IN, _OUT, *_DECAP)),
    Preset("libipsec", "Special Case: libipsec",
           "packets on the TUN device of strongSwan's kernel-libipsec (ipsec0 unless "
           "interface= names another), both directions (mangle PREROUTING -i, mangle "
           "POSTROUTING -o)",
           (_Part("mangle", "PREROUTING", "device", "in"),
            _Part("mangle", "POSTROUTING", "device", "out"))),
)}

LIBIPSEC_DEFAULT_DEVICE = "ipsec0"


def preset_names() -> list[str]:
    return list(PRESETS)


def _check_int_or_none(name: str, v: Any) -> None:
    if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
        raise ValueError(f"{name} must be an integer, not {v!r}")


def build(
    preset: str,
    *,
    group: int,
    prefix: str | None = None,
    snaplen: int | None = None,
    threshold: int | None = None,
    family: str = "both",
    interface: str | None = None,
    ike_ports: Iterable[int] = (),
    pol: Literal["ipsec", "none"] = "ipsec",
    reqid: int | None = None,
    spi: int | None = None,
    proto: str | None = None,
    mode: str | None = None,
    tunnel_src: str | None = None,
    tunnel_dst: str | None = None,
    negate: Iterable[str] = (),
    strict: bool = False,
    next_elements: Sequence[Union[PolicyElement, Mapping[str, Any]]] = (),
    tag: str | None = None,
) -> RuleSet:
    """Validate the options and build the rule set of ``preset``.

    Raises ``ValueError`` naming the problem; nothing runs here.

    - ``group`` 0..65535; ``prefix`` at most 63 bytes of printable ASCII without quotes or
      backslash; ``snaplen`` (``--nflog-size``) 0..65535; ``threshold`` 1..65535.
    - ``family``: ``"ipv4"``, ``"ipv6"`` or ``"both"``.
    - ``interface``: matched with ``-i`` on ingress chains (PREROUTING, INPUT, FORWARD) and
      ``-o`` on egress chains (OUTPUT, POSTROUTING); for ``libipsec`` the TUN device
      (default ``ipsec0``). A trailing ``+`` is a wildcard.
    - ``ike_ports``: UDP ports logged besides 500 and 4500 (presets with IKE rules only).
    - ``pol``, ``reqid``, ``spi``, ``proto``, ``mode``, ``tunnel_src``, ``tunnel_dst``,
      ``negate`` (field names matched with ``!``), ``strict`` and ``next_elements``
      (the elements after ``--next``, as mappings or :class:`PolicyElement`): the policy
      match options of the article, for presets with policy rules only.
    - ``tag``: the owner tag (default: a new ``pid<PID>-s<start>-<random>`` for this process).
    """
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
    p = PRESETS[preset]
    families = validate_family(family)
    for name, v in (("snaplen", snaplen), ("threshold", threshold), ("reqid", reqid),
                    ("spi", spi)):
        _check_int_or_none(name, v)
    target = NflogTarget(group, prefix, snaplen, threshold)
    tag = validate_tag(tag) if tag is not None else new_owner_tag()
    if not isinstance(strict, bool):
        raise ValueError(f"strict must be True or False, not {strict!r}")
    ports = _ike_ports(p, ike_ports)
    device, iface = _interfaces(p, interface)
    first = PolicyElement(reqid, spi, proto, mode, tunnel_src, tunnel_dst,
                          frozenset([negate] if isinstance(negate, str) else negate))
    elements = _policy_elements(p, families, pol, strict, first, next_elements)
    views = _Views(target, iface, device, ports, pol, strict, elements)
    rules = tuple(rule for part in p.parts for rule in views.rules(part))
    return RuleSet(preset, families, rules, tag, {
        "group": group, "prefix": prefix, "snaplen": snaplen, "threshold": threshold,
        "family": family, "interface": interface, "ike_ports": tuple(ports[2:]),
        "pol": pol, "strict": strict, "elements": elements,
    })


def as_ruleset(preset: Union[str, RuleSet], options: dict[str, Any]) -> RuleSet:
    """``preset`` itself when it is a built :class:`RuleSet` (no options allowed then),
    else :func:`build` of that name with ``options`` (``group`` required)."""
    if isinstance(preset, RuleSet):
        if options:
            raise ValueError("options cannot be given with a prebuilt RuleSet")
        return preset
    if "group" not in options:
        raise ValueError("group= (the NFLOG group, 0..65535) is required")
    return build(preset, **options)


def _ike_ports(p: Preset, ike_ports: Iterable[int]) -> tuple[int, ...]:
    extra_ports = tuple(ike_ports) if not isinstance(ike_ports, (str, bytes, int)) else ike_ports
    if extra_ports and not p.has_ike:
        raise ValueError(f"ike_ports apply to presets with IKE rules (ike-esp-in, ike-esp-out, "
                         f"all), not {p.name!r}")
    return dedupe_ports(extra_ports)


def _interfaces(p: Preset, interface: str | None) -> tuple[str, str | None]:
    """(the TUN device of a device preset or "", the interface matched by the others)."""
    if p.is_device:
        return validate_interface(interface if interface is not None
                                  else LIBIPSEC_DEFAULT_DEVICE, "TUN device"), None
    return "", validate_interface(interface) if interface is not None else None


def _policy_elements(p: Preset, families: tuple[Family, ...], pol: PolicyKind, strict: bool,
                     first: PolicyElement,
                     next_elements: Sequence[Union[PolicyElement, Mapping[str, Any]]]
                     ) -> tuple[PolicyElement, ...]:
    """The validated policy elements: ``first`` unless empty, then those after --next."""
    if isinstance(next_elements, (str, bytes, Mapping)):
        raise ValueError("next_elements must be a list of policy elements")
    rest = tuple(PolicyElement.coerce(e) for e in next_elements)
    if rest and not strict:
        raise ValueError("--next can only be used with --strict")
    if rest and first.empty:
        raise ValueError("policy element 0 is empty; with --strict every element needs at "
                         "least one of reqid, spi, proto, mode, tunnel-src, tunnel-dst")
    elements = ((first,) if not first.empty else ()) + rest
    policy_given = bool(elements) or strict or pol != "ipsec"
    if policy_given and not p.has_policy:
        raise ValueError(f"policy options (pol, reqid, spi, proto, mode, tunnel-src, "
                         f"tunnel-dst, strict, next) apply to presets with policy rules "
                         f"(decap, local, forward, outgoing, all), not {p.name!r}")
    # validate the policy once up front (direction does not matter for these checks)
    Policy("in", pol, strict, elements)
    if any(e.tunnel_src is not None or e.tunnel_dst is not None for e in elements):
        if len(families) != 1:
            raise ValueError("tunnel-src/tunnel-dst need a single family: the policy match "
                             "compares them in the family of the table (family='ipv4' or "
                             "'ipv6')")
        for e in elements:
            e.for_family(families[0])
    return elements


@dataclass(frozen=True)
class _Views:
    """The validated options every part of a preset turns into rules."""

    target: NflogTarget
    iface: str | None
    device: str
    ports: tuple[int, ...]
    pol: PolicyKind
    strict: bool
    elements: tuple[PolicyElement, ...]

    def rules(self, part: _Part) -> list[Rule]:
        if part.kind == "device":
            return [Rule(part.table, part.chain, (Iface(part.direction, self.device),),
                         self.target)]
        base: list[Match] = []
        if self.iface is not None:
            base.append(Iface("in" if part.chain in INGRESS_CHAINS else "out", self.iface))
        if part.kind == "ike-esp":
            return [Rule(part.table, part.chain, tuple(ms), self.target) for ms in (
                [*base, Proto("esp")], [*base, Proto("ah")],
                [*base, Proto("udp"), DPorts(self.ports)])]
        if part.addrtype_local is not None:
            base.append(AddrType(part.addrtype_local))
        base.append(Policy(part.direction, self.pol, self.strict, self.elements))
        return [Rule(part.table, part.chain, tuple(base), self.target)]
