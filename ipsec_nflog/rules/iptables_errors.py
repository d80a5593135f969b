"""Why an iptables-restore batch failed, in words that say what to install or load.

After a failed batch, the matches and targets the kernel registered
(``/proc/net/ip*_tables_matches`` and ``_targets``) show which extension is missing;
an iptables userspace extension that did not load names its package instead.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ipsec_nflog.rules.errors import KernelSupportError, RulesError, ToolMissingError
from ipsec_nflog.rules.model import Family

if TYPE_CHECKING:
    from ipsec_nflog.rules.iptables import Batch

__all__ = ["KERNEL_MODULES", "diagnose_failure", "missing_kernel_extensions",
           "needed_extensions"]

# which kernel module provides each match/target we use, and its Kconfig symbol
KERNEL_MODULES = {
    ("match", "policy"): ("xt_policy", "CONFIG_NETFILTER_XT_MATCH_POLICY"),
    ("match", "addrtype"): ("xt_addrtype", "CONFIG_NETFILTER_XT_MATCH_ADDRTYPE"),
    ("match", "multiport"): ("xt_multiport", "CONFIG_NETFILTER_XT_MATCH_MULTIPORT"),
    ("match", "comment"): ("xt_comment", "CONFIG_NETFILTER_XT_MATCH_COMMENT"),
    ("match", "ah"): ("ip6t_ah", "CONFIG_IP6_NF_MATCH_AH"),
    ("target", "NFLOG"): ("xt_NFLOG", "CONFIG_NETFILTER_XT_TARGET_NFLOG"),
}


def _proc_list(path: str) -> set[str] | None:
    try:
        with open(path) as f:
            return {ln.strip() for ln in f if ln.strip()}
    except OSError:
        return None


def needed_extensions(script: str, family: Family) -> list[tuple[str, str]]:
    """(kind, name) of the matches and targets a batch uses."""
    need: list[tuple[str, str]] = []
    for kind, name in (("match", "policy"), ("match", "addrtype"), ("match", "multiport"),
                       ("match", "comment"), ("match", "ah")):
        if f"-m {name} " in script and (name != "ah" or family == "ipv6"):
            need.append((kind, name))
    if "-j NFLOG" in script:
        need.append(("target", "NFLOG"))
    return need


def missing_kernel_extensions(script: str, family: Family,
                              proc_dir: str = "/proc/net") -> list[tuple[str, str]]:
    """The extensions the batch needs that the kernel has not registered (after the failed
    attempt, which loads what can be loaded)."""
    prefix = "ip" if family == "ipv4" else "ip6"
    have = {
        "match": _proc_list(f"{proc_dir}/{prefix}_tables_matches"),
        "target": _proc_list(f"{proc_dir}/{prefix}_tables_targets"),
    }
    out = []
    for kind, name in needed_extensions(script, family):
        names = have[kind]
        if names is not None and name not in names:
            out.append((kind, name))
    return out


_USERSPACE_EXT = re.compile(r"Couldn't load (match|target) `([^']+)'")
_LINE = re.compile(r"line:? (\d+)")


def diagnose_failure(batch: Batch, returncode: int, stderr: str, what: str,
                     proc_dir: str = "/proc/net") -> RulesError:
    """Turn a failed iptables-restore into an error that says what to install."""
    err = stderr.strip()
    lines = batch.script.splitlines()
    m = _LINE.search(err)
    where = ""
    if m and 1 <= int(m.group(1)) <= len(lines):
        where = f" at line {m.group(1)} ({lines[int(m.group(1)) - 1]!r})"
    base = f"{batch.argv[0]} could not {what} the rules{where}: {err or 'exit ' + str(returncode)}"
    u = _USERSPACE_EXT.search(err)
    if u:
        lib = ("libip6t_" if u.group(2) == "ah" else "libxt_") + u.group(2)
        return ToolMissingError(f"the iptables extension {lib}.so", "iptables", detail=base)
    missing = missing_kernel_extensions(batch.script, batch.family, proc_dir)
    if missing and what != "remove":
        mods = [KERNEL_MODULES[k] for k in missing if k in KERNEL_MODULES]
        names = ", ".join(f"{mod} ({cfg})" for mod, cfg in mods)
        return KernelSupportError(
            f"{base}. The kernel lacks {names}: load it with 'modprobe "
            f"{mods[0][0]}' or use a kernel built with it",
            modules=[m_[0] for m_ in mods], argv=batch.argv, returncode=returncode,
            stderr=stderr)
    return RulesError(base, argv=batch.argv, returncode=returncode, stderr=stderr)
