"""The native nftables backend: one table of our own per capture.

The table is ``ipsec_nflog_<tag>`` (``ip``, ``ip6`` or ``inet`` for both families), with a
base chain per iptables (table, chain) pair at the same hook and priority (raw -300,
mangle -150, filter 0). Installed in-process through libnftables with ``flags owner``
(kernel >= 5.12) the kernel deletes it when our process dies, even on SIGKILL; the plain
``nft -f -`` path (dry runs, systems without libnftables or the owner flag) creates the same
table without the flag, and ``cleanup()`` removes it after a crash.

Translations of the article's matches (each checked against the kernel by the tests):

=====================================  ===============================================
iptables                               nftables
=====================================  ===============================================
``-p esp`` / ``-p ah`` (ip6: ``-m ah``)  ``meta l4proto esp`` / ``meta l4proto ah``
``-p udp -m multiport --dports 500,..``  ``udp dport { 500, 4500 }``
``-i X`` / ``-o X`` (``X+``)             ``iifname "X"`` / ``oifname "X"`` (``"X*"``)
``-m addrtype [!] --dst-type LOCAL``     ``fib daddr type [!=] local``
``-m policy --pol ipsec --dir in``       ``meta secpath exists``
``-m policy --pol ipsec --dir out``      ``rt ipsec exists``
``--pol none``                           ``meta secpath missing`` / ``rt ipsec missing``
``--reqid N`` / ``--spi N``              ``ipsec in|out [spnum I] reqid N`` / ``spi N``
``--tunnel-src A`` / ``--tunnel-dst A``  ``ipsec in|out [spnum I] ip[6] saddr|daddr A``
``-j NFLOG --nflog-group G ...``         ``log prefix "P" group G snaplen S queue-threshold T``
=====================================  ===============================================

``--proto`` and ``--mode`` have no nft equivalent (the ``ipsec`` expression knows reqid,
spi, saddr and daddr only); rule sets using them need an iptables backend.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ipsec_nflog.rules import _run
from ipsec_nflog.rules._libnftables import NftContext, libnftables_available
from ipsec_nflog.rules.errors import KernelSupportError, RulesError, ToolMissingError
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
    "CHAINS",
    "TABLE_PREFIX",
    "NftBackend",
    "NftTable",
    "delete_script",
    "install_script",
    "nft_unsupported",
    "owner_flag_supported",
    "rule_statement",
    "table_family",
    "table_name",
]

TABLE_PREFIX = "ipsec_nflog_"
OWNER_MIN_KERNEL = (5, 12)

# (iptables table, chain) -> (our chain name, hook, priority keyword)
CHAINS: dict[tuple[str, str], tuple[str, str, str]] = {
    ("raw", "PREROUTING"): ("raw_prerouting", "prerouting", "raw"),
    ("raw", "OUTPUT"): ("raw_output", "output", "raw"),
    ("mangle", "PREROUTING"): ("mangle_prerouting", "prerouting", "mangle"),
    ("mangle", "INPUT"): ("mangle_input", "input", "mangle"),
    ("mangle", "FORWARD"): ("mangle_forward", "forward", "mangle"),
    ("mangle", "OUTPUT"): ("mangle_output", "output", "mangle"),
    ("mangle", "POSTROUTING"): ("mangle_postrouting", "postrouting", "mangle"),
    ("filter", "INPUT"): ("filter_input", "input", "filter"),
    ("filter", "FORWARD"): ("filter_forward", "forward", "filter"),
    ("filter", "OUTPUT"): ("filter_output", "output", "filter"),
}

NFT_MODULES = (
    # keyword in the failing statement -> (module, Kconfig)
    ("flags owner", ("a kernel >= 5.12 for the table owner flag", "")),
    ("fib ", ("nft_fib_inet", "CONFIG_NFT_FIB_INET")),
    ("secpath", ("nft_meta with XFRM", "CONFIG_XFRM")),
    ("meta ipsec", ("nft_meta with XFRM", "CONFIG_XFRM")),
    ("rt ipsec", ("nft_rt with XFRM", "CONFIG_XFRM")),
    ("ipsec ", ("nft_xfrm", "CONFIG_NFT_XFRM")),
    ("log ", ("nft_log and nfnetlink_log", "CONFIG_NFT_LOG, CONFIG_NETFILTER_NETLINK_LOG")),
)


def table_family(families: Sequence[Family]) -> str:
    if len(families) == 2:
        return "inet"
    return "ip" if families[0] == "ipv4" else "ip6"


def table_name(tag: str) -> str:
    return TABLE_PREFIX + tag.replace("-", "_")


def tag_of_table(name: str) -> str | None:
    if not name.startswith(TABLE_PREFIX):
        return None
    return name[len(TABLE_PREFIX):].replace("_", "-")


def nft_unsupported(rs: RuleSet) -> str | None:
    """Why ``rs`` cannot be expressed in nftables, or None when it can."""
    for r in rs.rules:
        pol = r.policy
        if pol is None:
            continue
        for e in pol.elements:
            if e.proto is not None or e.mode is not None:
                return ("the nftables backend cannot match the SA protocol or mode (nft's "
                        "'ipsec' expression knows reqid, spi, saddr and daddr only, so "
                        "--proto, --mode and the --tunnel-src/--tunnel-dst that need "
                        "--mode tunnel have no translation); use an iptables backend")
    return None


def _quote(s: str) -> str:
    return f'"{s}"'  # validated: no quotes, backslashes or control characters


def _element(direction: str, index: int, e: PolicyElement, family: Family) -> list[str]:
    head = f"ipsec {direction}" + (f" spnum {index}" if index else "")
    ip = "ip" if family == "ipv4" else "ip6"
    out = []
    for field_, key, value in (
        ("reqid", "reqid", None if e.reqid is None else str(e.reqid)),
        ("spi", "spi", None if e.spi is None else f"0x{e.spi:x}"),
        ("tunnel_src", f"{ip} saddr", e.tunnel_src),
        ("tunnel_dst", f"{ip} daddr", e.tunnel_dst),
    ):
        if value is None:
            continue
        op = "!= " if field_ in e.negate else ""
        out.append(f"{head} {key} {op}{value}")
    return out


def _match(m: Match, family: Family, has_ports: bool) -> list[str]:
    if isinstance(m, Iface):
        name = m.name[:-1] + "*" if m.name.endswith("+") else m.name
        return [f"{'iifname' if m.direction == 'in' else 'oifname'} {_quote(name)}"]
    if isinstance(m, Proto):
        if m.name == "udp" and has_ports:
            return []  # "udp dport" implies it
        return [f"meta l4proto {m.name}"]
    if isinstance(m, DPorts):
        return ["udp dport { " + ", ".join(str(p) for p in m.ports) + " }"]
    if isinstance(m, AddrType):
        return ["fib daddr type local" if m.local else "fib daddr type != local"]
    if isinstance(m, Policy):
        if m.elements and m.pol == "ipsec":
            if any(e.proto is not None or e.mode is not None for e in m.elements):
                raise ValueError("policy --proto/--mode cannot be expressed in nftables; "
                                 "use an iptables backend")
            out: list[str] = []
            for i, e in enumerate(m.elements):
                out += _element(m.direction, i, e, family)
            return out
        word = "exists" if m.pol == "ipsec" else "missing"
        return [f"meta secpath {word}" if m.direction == "in" else f"rt ipsec {word}"]
    raise TypeError(f"unknown match {m!r}")


def _log(t: NflogTarget) -> str:
    parts = ["log"]
    if t.prefix is not None:
        parts += ["prefix", _quote(t.prefix)]
    parts += ["group", str(t.group)]
    if t.size is not None:
        parts += ["snaplen", str(t.size)]
    if t.threshold is not None:
        parts += ["queue-threshold", str(t.threshold)]
    return " ".join(parts)


def rule_statement(rule: Rule, family: Family, comment: str | None) -> str:
    """One nft rule, e.g. ``meta l4proto esp counter log group 5 comment "..."``."""
    has_ports = any(isinstance(m, DPorts) for m in rule.matches)
    parts: list[str] = []
    for m in rule.matches:
        parts += _match(m, family, has_ports)
    parts += ["counter", _log(rule.target)]
    if comment is not None:
        parts += ["comment", _quote(comment)]
    return " ".join(parts)


def install_script(rs: RuleSet, owner: bool = False) -> str:
    """The nft script that creates our table (``flags owner`` only for in-process use)."""
    reason = nft_unsupported(rs)
    if reason:
        raise ValueError(reason)
    fam = table_family(rs.families)
    addr_family: Family = rs.families[0]  # tunnel addresses need a single family
    rules = rs.for_family(addr_family)
    lines = [f"table {fam} {table_name(rs.tag)} {{"]
    if owner:
        lines.append("\tflags owner")
    lines.append(f"\tcomment {_quote(rs.comment)}")
    for key, (chain, hook, prio) in CHAINS.items():
        in_chain = [r for r in rules if (r.table, r.chain) == key]
        if not in_chain:
            continue
        lines.append("")
        lines.append(f"\tchain {chain} {{")
        lines.append(f"\t\ttype filter hook {hook} priority {prio}; policy accept;")
        for r in in_chain:
            lines.append("\t\t" + rule_statement(r, addr_family, rs.comment))
        lines.append("\t}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def delete_script(rs: RuleSet) -> str:
    return f"delete table {table_family(rs.families)} {table_name(rs.tag)}\n"


def kernel_version(release: str | None = None) -> tuple[int, int]:
    rel = release if release is not None else os.uname().release
    m = re.match(r"(\d+)\.(\d+)", rel)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def owner_flag_supported(release: str | None = None) -> bool:
    return kernel_version(release) >= OWNER_MIN_KERNEL


def diagnose_nft(error: str, script: str, what: str, argv: list[str] | None = None,
                 rc: int | None = None) -> RulesError:
    """Turn an nft error into one that names the missing kernel support when it can."""
    err = error.strip()
    base = f"nft could not {what} the rules: {err}"
    statement = ""
    lines = err.splitlines()
    for i, ln in enumerate(lines):
        if ln.lstrip().startswith(("Error:", "/dev/stdin", "<cmdline>")) and i + 1 < len(lines):
            statement = lines[i + 1]
            break
    # a missing expression module is ENOENT after the kernel's request_module(); other
    # errors (EOPNOTSUPP for an expression in the wrong hook, EINVAL) are not about modules
    # - except for the owner flag, which old kernels refuse with EOPNOTSUPP/EINVAL
    if statement:
        for key, (mod, cfg) in NFT_MODULES:
            if key not in statement:
                continue
            if key != "flags owner" and "No such file or directory" not in err:
                break
            hint = f"{mod} ({cfg})" if cfg else mod
            return KernelSupportError(f"{base}. The kernel lacks {hint}", modules=[mod],
                                      argv=argv, returncode=rc, stderr=error)
    return RulesError(base, argv=argv, returncode=rc, stderr=error)


@dataclass(frozen=True)
class NftTable:
    """One of our tables as ``nft list tables`` shows it."""

    family: str
    name: str
    tag: str
    owner: bool  # has "flags owner" (the kernel deletes it with its socket)

    def __str__(self) -> str:
        return f"nft table {self.family} {self.name}" + (" (flags owner)" if self.owner else "")


class NftInstallation:
    """What :meth:`NftBackend.install` leaves behind: the open context for an owner table
    (an :class:`ipsec_nflog.rules.backend.Installation`)."""

    def __init__(self, rs: RuleSet, netns: str | None, ctx: NftContext | None) -> None:
        self.rs, self.netns, self.ctx = rs, netns, ctx

    @property
    def owner(self) -> bool:
        return self.ctx is not None

    def remove(self) -> None:
        NftBackend().remove(self)  # an owner table through its socket: no name needed


class NftBackend:
    """Native nftables. ``owner=None`` uses the owner flag when libnftables loads and the
    kernel is >= 5.12; ``True`` requires it; ``False`` uses ``nft -f -``."""

    name = "nft"

    def __init__(self, owner: bool | None = None) -> None:
        self.owner = owner

    def __repr__(self) -> str:
        return f"NftBackend(owner={self.owner!r})"

    @staticmethod
    def owner_available() -> bool:
        return owner_flag_supported() and libnftables_available()

    def render(self, rs: RuleSet, action: Literal["install", "remove"] = "install",
               owner: bool = False) -> str:
        """Shell-pasteable ``nft -f - <<'EOF' ... EOF``. ``owner=True`` shows the script
        with ``flags owner`` as installed in-process (pointless for the nft command, whose
        table would vanish when it exits)."""
        script = install_script(rs, owner) if action == "install" else delete_script(rs)
        return f"nft -f - <<'EOF'\n{script}EOF\n"

    def _use_owner(self) -> bool:
        if self.owner is False:
            return False
        if self.owner is True:
            if not owner_flag_supported():
                raise RulesError(f"the nft owner flag needs kernel >= 5.12, this is "
                                 f"{os.uname().release}")
            if not libnftables_available():
                raise ToolMissingError("libnftables.so.1", "libnftables1")
            return True
        return self.owner_available()

    def install(self, rs: RuleSet, netns: str | None = None) -> NftInstallation:
        if self._use_owner():
            script = install_script(rs, owner=True)
            ctx = NftContext(netns)
            try:
                rc, _out, err = ctx.run(script)
                if rc != 0:
                    raise diagnose_nft(err, script, "install")
            except BaseException:
                ctx.close()
                raise
            return NftInstallation(rs, netns, ctx)
        script = install_script(rs, owner=False)
        argv = ["nft", "-f", "-"]
        _run.find_tool("nft")
        try:
            r = _run.run(argv, input=script, netns=netns)
        except BaseException:
            # interrupted: the table may or may not exist now
            _run.run(["nft", "-f", "-"], input=delete_script(rs), netns=netns)
            raise
        if r.returncode != 0:
            raise diagnose_nft(r.stderr, script, "install", argv, r.returncode)
        return NftInstallation(rs, netns, None)

    def remove(self, inst: NftInstallation) -> None:
        script = delete_script(inst.rs)
        if inst.ctx is not None:
            try:
                # the socket talks to the namespace it was made in, even once its name is
                # deleted: no need to enter it (by a name that may be gone)
                rc, _out, err = inst.ctx.run(script, pin_netns=False)
                if rc != 0 and "No such file or directory" not in err:
                    raise diagnose_nft(err, script, "remove")
            finally:
                inst.ctx.close()  # the kernel drops the owner table with the socket anyway
            return
        argv = ["nft", "-f", "-"]
        r = _run.run(argv, input=script, netns=inst.netns)
        if r.returncode != 0 and "No such file or directory" not in r.stderr:
            raise diagnose_nft(r.stderr, script, "remove", argv, r.returncode)

    # -- listing / cleanup ---------------------------------------------------------------

    @staticmethod
    def tables(netns: str | None = None) -> list[NftTable]:
        """Our tables (name ``ipsec_nflog_*``) in ``netns``."""
        if _run.tool_available("nft") is None:
            return []
        r = _run.run(["nft", "list", "tables"], netns=netns)
        if r.returncode != 0:
            raise RulesError(f"nft list tables failed: {r.stderr.strip()}",
                             argv=["nft", "list", "tables"], returncode=r.returncode,
                             stderr=r.stderr)
        out = []
        for line in r.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "table" and parts[2].startswith(TABLE_PREFIX):
                tag = tag_of_table(parts[2])
                if tag is None:
                    continue
                text = NftBackend.list_table(parts[1], parts[2], netns)
                if f'comment "{COMMENT_PREFIX}{tag}"' not in text:
                    continue  # a look-alike name without our comment is not ours
                out.append(NftTable(parts[1], parts[2], tag,
                                    bool(re.search(r"^\s*flags\s.*\bowner\b", text, re.M))))
        return out

    @staticmethod
    def list_table(family: str, name: str, netns: str | None = None) -> str:
        r = _run.run(["nft", "list", "table", family, name], netns=netns)
        return r.stdout if r.returncode == 0 else ""

    @staticmethod
    def delete_table(table: NftTable, netns: str | None = None) -> None:
        argv = ["nft", "delete", "table", table.family, table.name]
        r = _run.run(argv, netns=netns)
        if r.returncode != 0 and "No such file or directory" not in r.stderr:
            raise RulesError(f"{' '.join(argv)} failed: {r.stderr.strip()}", argv=argv,
                             returncode=r.returncode, stderr=r.stderr)

