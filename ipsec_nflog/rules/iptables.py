"""The iptables/ip6tables backend (nft and legacy variants).

Rules are installed and removed with ``iptables-restore -w --noflush`` batches fed on stdin:
``-I`` lines to install, ``-D`` lines of exactly the same rules to remove. ``--noflush``
keeps every other rule; a batch is atomic per family (for the nft variant one transaction;
for legacy one table replacement per ``COMMIT``). The nft tables and chains iptables-nft
creates on first use are removed with the rules once they are empty (:mod:`.first_use`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ipsec_nflog.rules import _run
from ipsec_nflog.rules.errors import RulesError
from ipsec_nflog.rules.first_use import FirstUse
from ipsec_nflog.rules.iptables_errors import diagnose_failure
from ipsec_nflog.rules.model import (
    COMMENT_PREFIX,
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
)

__all__ = [
    "IPTABLES_BACKENDS",
    "IptablesBackend",
    "IptablesInstallation",
    "TaggedRule",
    "command_argv",
    "diagnose_failure",
    "present_backends",
    "restore_script",
    "rule_args",
]

Variant = Literal["system", "nft", "legacy"]
IPTABLES_BACKENDS: dict[str, Variant] = {
    "iptables": "system",
    "iptables-nft": "nft",
    "iptables-legacy": "legacy",
}
TABLE_ORDER = ("raw", "mangle", "filter")
_TAG_IN_SAVE = re.compile(r'--comment "?' + re.escape(COMMENT_PREFIX) + r'([A-Za-z0-9-]+)"?')



# -- rendering -----------------------------------------------------------------------------


def _element_args(e: PolicyElement) -> list[str]:
    out: list[str] = []
    for field_, opt, value in (
        ("reqid", "--reqid", None if e.reqid is None else str(e.reqid)),
        ("spi", "--spi", None if e.spi is None else f"0x{e.spi:x}"),
        ("proto", "--proto", e.proto),
        ("mode", "--mode", e.mode),
        ("tunnel_src", "--tunnel-src", e.tunnel_src),
        ("tunnel_dst", "--tunnel-dst", e.tunnel_dst),
    ):
        if value is None:
            continue
        if field_ in e.negate:
            out.append("!")
        out += [opt, value]
    return out


def _match_args(m: Match, family: Family) -> list[str]:
    if isinstance(m, Iface):
        return ["-i" if m.direction == "in" else "-o", m.name]
    if isinstance(m, Proto):
        if m.name == "ah" and family == "ipv6":
            # ip6tables treats AH as an extension header: "-p ah" never matches there
            # (ip6tables warns so; verified with traffic for the legacy variant)
            return ["-m", "ah"]
        return ["-p", m.name]
    if isinstance(m, DPorts):
        return ["-m", "multiport", "--dports", ",".join(str(p) for p in m.ports)]
    if isinstance(m, AddrType):
        return ["-m", "addrtype", *([] if m.local else ["!"]), "--dst-type", "LOCAL"]
    if isinstance(m, Policy):
        args = ["-m", "policy", "--pol", m.pol, "--dir", m.direction]
        if m.strict:
            args.append("--strict")
        for i, e in enumerate(m.elements):
            if i:
                args.append("--next")
            args += _element_args(e)
        return args
    raise TypeError(f"unknown match {m!r}")


def _target_args(t: NflogTarget) -> list[str]:
    args = ["-j", "NFLOG", "--nflog-group", str(t.group)]
    if t.prefix is not None:
        args += ["--nflog-prefix", t.prefix]
    if t.size is not None:
        args += ["--nflog-size", str(t.size)]
    if t.threshold is not None:
        args += ["--nflog-threshold", str(t.threshold)]
    return args


def rule_args(rule: Rule, family: Family, comment: str | None) -> list[str]:
    """The rule's matches and target as argv tokens (no table, no chain)."""
    args: list[str] = []
    for m in rule.matches:
        args += _match_args(m, family)
    if comment is not None:
        args += ["-m", "comment", "--comment", comment]
    return args + _target_args(rule.target)


def command_argv(rule: Rule, family: Family, comment: str | None, action: str = "-I",
                 binary: str | None = None) -> list[str]:
    """One standalone command, e.g. ``iptables -t raw -I PREROUTING -p esp ...``."""
    exe = binary or ("iptables" if family == "ipv4" else "ip6tables")
    return [exe, "-t", rule.table, action, rule.chain, *rule_args(rule, family, comment)]


def _restore_line(tokens: Sequence[str]) -> str:
    out = []
    quote_next = False
    for tok in tokens:
        if quote_next or (tok and any(c.isspace() for c in tok)) or tok == "":
            out.append(f'"{tok}"')
        else:
            out.append(tok)
        quote_next = tok in ("--comment", "--nflog-prefix")
    return " ".join(out)


def restore_script(rules: Sequence[Rule], family: Family, comment: str | None,
                   action: Literal["-I", "-D", "-A"] = "-I") -> str:
    """An iptables-restore batch: one ``*table`` section per table, ``COMMIT`` each."""
    lines: list[str] = []
    for table in TABLE_ORDER:
        in_table = [r for r in rules if r.table == table]
        if not in_table:
            continue
        lines.append(f"*{table}")
        for r in in_table:
            lines.append(_restore_line([action, r.chain, *rule_args(r, family, comment)]))
        lines.append("COMMIT")
    return "\n".join(lines) + "\n" if lines else ""


# -- running -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    family: Family
    argv: list[str]
    script: str


@dataclass(frozen=True)
class TaggedRule:
    """A rule carrying our comment, as ``iptables-save`` prints it."""

    backend: str
    family: Family
    table: str
    line: str  # "-A CHAIN ..." as printed by iptables-save
    tag: str

    def __str__(self) -> str:
        exe = "iptables" if self.family == "ipv4" else "ip6tables"
        return f"{exe} -t {self.table} {self.line}  # {self.backend}"


@dataclass(frozen=True)
class IptablesInstallation:
    """Rules :meth:`IptablesBackend.install` added (an
    :class:`ipsec_nflog.rules.backend.Installation`); they outlive a killed process.
    ``first_use``: the nft tables and chains iptables-nft created for them."""

    backend: IptablesBackend
    rs: RuleSet
    netns: str | None
    first_use: FirstUse | None = None
    owner: bool = False

    def remove(self) -> None:
        self.backend.remove(self.rs, self.netns, self.first_use)


class IptablesBackend:
    """``iptables`` (whichever variant the system's iptables is), ``iptables-nft`` or
    ``iptables-legacy``."""

    def __init__(self, name: str = "iptables") -> None:
        if name not in IPTABLES_BACKENDS:
            raise ValueError(f"unknown iptables backend {name!r}; known: "
                             f"{', '.join(IPTABLES_BACKENDS)}")
        self.name = name
        self.variant: Variant = IPTABLES_BACKENDS[name]

    def __repr__(self) -> str:
        return f"IptablesBackend({self.name!r})"

    def binary(self, family: Family, kind: str = "") -> str:
        """E.g. ``ip6tables-legacy-restore`` for (ipv6, "-restore") on ``iptables-legacy``."""
        base = "iptables" if family == "ipv4" else "ip6tables"
        mid = {"system": "", "nft": "-nft", "legacy": "-legacy"}[self.variant]
        return f"{base}{mid}{kind}"

    def restore_argv(self, family: Family) -> list[str]:
        return [self.binary(family, "-restore"), "-w", "--noflush"]

    def batches(self, rs: RuleSet, action: Literal["install", "remove"]) -> list[Batch]:
        flag: Literal["-I", "-D"] = "-I" if action == "install" else "-D"
        out = []
        for fam in rs.families:
            script = restore_script(rs.for_family(fam), fam, rs.comment, flag)
            if script:
                out.append(Batch(fam, self.restore_argv(fam), script))
        return out

    def render(self, rs: RuleSet, action: Literal["install", "remove"] = "install", *,
               owner: bool = False) -> str:
        """Shell-pasteable text: each batch as ``<restore command> <<'EOF' ... EOF``.
        ``owner`` is ignored: iptables rules never die with their process."""
        parts = []
        for b in self.batches(rs, action):
            parts.append(f"{' '.join(b.argv)} <<'EOF'\n{b.script}EOF\n")
        return "".join(parts)

    # -- variant detection ---------------------------------------------------------------

    def detect_variant(self) -> str:
        """``"nf_tables"`` or ``"legacy"`` from ``iptables --version``."""
        return detect_variant(self.binary("ipv4"))

    # -- install / remove ------------------------------------------------------------------

    def _apply(self, batch: Batch, netns: str | None, what: str) -> None:
        _run.find_tool(batch.argv[0])
        r = _run.run(batch.argv, input=batch.script, netns=netns)
        if r.returncode != 0:
            raise diagnose_failure(batch, r.returncode, r.stderr, what)

    def creates_nft_tables(self) -> bool:
        """Whether this variant is iptables-nft, which creates nft tables on first use."""
        if self.variant == "system":
            return self.detect_variant() == "nf_tables"
        return self.variant == "nft"

    def install(self, rs: RuleSet, netns: str | None = None) -> IptablesInstallation:
        """Install atomically per family; if a later family fails, the earlier ones are
        removed again before the error propagates. For iptables-nft, the tables and chains
        the install created are recorded, to be deleted with the rules."""
        install = self.batches(rs, "install")
        for b in install:  # fail early, before any change, when a binary is missing
            _run.find_tool(b.argv[0])
        created = FirstUse(rs, netns) if self.creates_nft_tables() else None
        try:
            for b in install:
                self._apply(b, netns, "install")
            if created is not None:
                created.record()
        except BaseException:
            # roll back every family, including one interrupted mid-batch (a -D batch of
            # rules that are not there fails as a whole and changes nothing)
            for b in reversed(self.batches(rs, "remove")):
                try:
                    self._apply(b, netns, "roll back")
                except Exception:
                    pass
            try:
                if created is not None:
                    created.record()
                    created.drop()
            except Exception:
                pass
            raise
        return IptablesInstallation(self, rs, netns, created)

    def remove(self, rs: RuleSet, netns: str | None = None,
               created: FirstUse | None = None) -> None:
        """Delete exactly the rules we added (one ``-D`` batch per family). When that batch
        fails (someone deleted one of them), remove whatever rules still carry our tag.
        Then the tables and chains the install ``created`` go too, if they are empty."""
        errors = []
        for b in self.batches(rs, "remove"):
            try:
                self._apply(b, netns, "remove")
            except RulesError as e:
                try:
                    left = [t for t in self.tagged_rules(netns, b.family) if t.tag == rs.tag]
                    self.delete(left, netns)
                except RulesError as e2:
                    errors.append(f"{e}; then {e2}")
        try:
            if created is not None:
                created.drop()
        except RulesError as e:
            errors.append(str(e))
        if errors:
            raise RulesError("; ".join(errors))

    # -- listing / cleanup -----------------------------------------------------------------

    def save(self, family: Family, netns: str | None = None) -> str:
        r = _run.run([self.binary(family, "-save")], netns=netns)
        if r.returncode != 0:
            raise RulesError(f"{self.binary(family, '-save')} failed: {r.stderr.strip()}",
                             argv=[self.binary(family, "-save")], returncode=r.returncode,
                             stderr=r.stderr)
        return r.stdout

    def tagged_rules(self, netns: str | None = None,
                     family: Family | None = None) -> list[TaggedRule]:
        """Every rule with an ``ipsec_nflog:`` comment, in this variant."""
        out: list[TaggedRule] = []
        for fam in (family,) if family else ("ipv4", "ipv6"):
            assert fam is not None
            if _run.tool_available(self.binary(fam, "-save")) is None:
                continue
            out += parse_save(self.save(fam, netns), self.name, fam)
        return out

    def delete(self, rules: Sequence[TaggedRule], netns: str | None = None) -> None:
        """Delete rules as iptables-save printed them (one ``--noflush`` batch per family)."""
        for fam in ("ipv4", "ipv6"):
            mine = [t for t in rules if t.family == fam]
            if not mine:
                continue
            lines = []
            for table in TABLE_ORDER + tuple(sorted({t.table for t in mine} -
                                                    set(TABLE_ORDER))):
                rows = [t for t in mine if t.table == table]
                if rows:
                    lines.append(f"*{table}")
                    lines += ["-D" + t.line[2:] for t in rows]
                    lines.append("COMMIT")
            batch = Batch(fam, self.restore_argv(fam), "\n".join(lines) + "\n")
            self._apply(batch, netns, "delete")


def parse_save(text: str, backend: str, family: Family) -> list[TaggedRule]:
    out = []
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith("-A "):
            m = _TAG_IN_SAVE.search(line)
            if m:
                out.append(TaggedRule(backend, family, table, line, m.group(1)))
    return out


def detect_variant(binary: str = "iptables") -> str:
    """``"nf_tables"`` or ``"legacy"`` as ``<binary> --version`` says."""
    r = _run.run([binary, "--version"])
    text = r.stdout + r.stderr
    if "nf_tables" in text:
        return "nf_tables"
    if "legacy" in text:
        return "legacy"
    # iptables before 1.8 has no suffix and is legacy
    return "legacy"


def present_backends() -> list[IptablesBackend]:
    """The variants installed here: iptables-nft and iptables-legacy where their tools
    exist, else the plain ``iptables`` (an old iptables without variant names)."""
    out = [IptablesBackend(n) for n in ("iptables-nft", "iptables-legacy")
           if _run.tool_available(IptablesBackend(n).binary("ipv4", "-save"))]
    if not out and _run.tool_available("iptables-save"):
        out.append(IptablesBackend("iptables"))
    return out
