"""NFLOG rule sets for the IPsec tier tests: the rules library's presets when it is there,
else the article's rules installed here with iptables/nft argv lists (never a shell string).

``installed(preset, group=..., netns=..., backend=..., **policy)`` is a context manager that
removes the rules on exit. The fallback exists so the tiers could be built before
:mod:`ipsec_nflog.rules` landed; when ``ipsec_nflog.rules.installed`` exists it is used, so
these tests prove the library's presets (set ``IPSEC_NFLOG_TIER_FALLBACK_RULES=1`` to force
the fallback, e.g. to tell a preset bug from a harness bug).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from typing import Any

PRESETS = ("ike-esp-in", "ike-esp-out", "decap", "local", "forward", "outgoing", "libipsec")


def library_installed() -> Any:
    """``ipsec_nflog.rules.installed`` or None."""
    if os.environ.get("IPSEC_NFLOG_TIER_FALLBACK_RULES") == "1":
        return None
    try:
        from ipsec_nflog import rules
    except ImportError:
        return None
    return getattr(rules, "installed", None)


def _policy_args(direction: str, reqid: int | None, spi: int | None) -> list[str]:
    args = ["-m", "policy", "--pol", "ipsec", "--dir", direction]
    if reqid is not None:
        args += ["--reqid", str(reqid)]
    if spi is not None:
        args += ["--spi", hex(spi)]
    return args


def iptables_rules(preset: str, group: int, *, reqid: int | None = None,
                   spi: int | None = None, device: str = "ipsec0") -> list[list[str]]:
    """The article's rules as ``[table, chain, match/target args...]`` lists."""
    tgt = ["-j", "NFLOG", "--nflog-group", str(group)]
    ike = [["-p", "esp"], ["-p", "ah"], ["-p", "udp", "-m", "multiport", "--dports", "500,4500"]]
    if preset == "ike-esp-in":
        return [["raw", "PREROUTING", *m, *tgt] for m in ike]
    if preset == "ike-esp-out":
        return [["raw", "OUTPUT", *m, *tgt] for m in ike]
    if preset == "decap":
        return [["mangle", "PREROUTING", *_policy_args("in", reqid, spi), *tgt],
                ["mangle", "POSTROUTING", *_policy_args("out", reqid, spi), *tgt]]
    if preset == "local":
        return [["filter", "INPUT", "-m", "addrtype", "--dst-type", "LOCAL",
                 *_policy_args("in", reqid, spi), *tgt]]
    if preset == "forward":
        return [["filter", "FORWARD", "-m", "addrtype", "!", "--dst-type", "LOCAL",
                 *_policy_args("in", reqid, spi), *tgt]]
    if preset == "outgoing":
        return [["filter", "OUTPUT", *_policy_args("out", reqid, spi), *tgt]]
    if preset == "libipsec":
        return [["mangle", "PREROUTING", "-i", device, *tgt],
                ["mangle", "POSTROUTING", "-o", device, *tgt]]
    raise ValueError(f"unknown preset {preset!r}")


def _ns(netns: str | None) -> list[str]:
    return ["ip", "netns", "exec", netns] if netns else []


def nft_script(preset: str, group: int, table: str, *, reqid: int | None = None,
               spi: int | None = None, device: str = "ipsec0") -> str:
    """The same rules as a native nftables table (IPv4), for the backend comparison."""
    log = f"log group {group}"
    chains: dict[tuple[str, str, int], list[str]] = {}

    def add(hook: str, prio: int, kind: str, rule: str) -> None:
        chains.setdefault((hook, kind, prio), []).append(rule)

    def pol(direction: str) -> str:
        sel = "meta secpath exists" if direction == "in" else "rt ipsec exists"
        extra = []
        if reqid is not None:
            extra.append(f"ipsec {direction} reqid {reqid}")
        if spi is not None:
            extra.append(f"ipsec {direction} spi {spi:#x}")
        return " ".join([sel, *extra]) if extra else sel

    ike = ["meta l4proto esp", "meta l4proto ah", "udp dport { 500, 4500 }"]
    if preset == "ike-esp-in":
        for m in ike:
            add("prerouting", -300, "filter", f"{m} {log}")
    elif preset == "ike-esp-out":
        for m in ike:
            add("output", -300, "filter", f"{m} {log}")
    elif preset == "decap":
        add("prerouting", -150, "filter", f"{pol('in')} {log}")
        add("postrouting", -150, "filter", f"{pol('out')} {log}")
    elif preset == "local":
        add("input", 0, "filter", f"fib daddr type local {pol('in')} {log}")
    elif preset == "forward":
        add("forward", 0, "filter", f"fib daddr type != local {pol('in')} {log}")
    elif preset == "outgoing":
        add("output", 0, "filter", f"{pol('out')} {log}")
    elif preset == "libipsec":
        add("prerouting", -150, "filter", f'iifname "{device}" {log}')
        add("postrouting", -150, "filter", f'oifname "{device}" {log}')
    else:
        raise ValueError(f"unknown preset {preset!r}")
    out = [f"table ip {table} {{"]
    for i, ((hook, kind, prio), rules) in enumerate(chains.items()):
        out.append(f"  chain c{i} {{")
        out.append(f"    type {kind} hook {hook} priority {prio}; policy accept;")
        out += [f"    {r}" for r in rules]
        out.append("  }")
    out.append("}")
    return "\n".join(out) + "\n"


@contextlib.contextmanager
def installed(preset: str, *, group: int, netns: str | None = None,
              backend: str | None = None, reqid: int | None = None,
              spi: int | None = None, device: str | None = None,
              use_library: bool = True) -> Iterator[str]:
    """Install ``preset`` (IPv4) for NFLOG ``group`` in ``netns``; yields the mechanism used
    ("library" or "fallback"). Rules are removed on exit. ``backend`` None: the library's
    automatic choice (iptables for the fallback); "iptables" or "nft" to force one."""
    lib = library_installed() if use_library else None
    if lib is not None:
        kwargs: dict[str, Any] = {"group": group, "netns": netns, "family": "ipv4",
                                  "backend": backend}
        if reqid is not None:
            kwargs["reqid"] = reqid
        if spi is not None:
            kwargs["spi"] = spi
        if device is not None:
            kwargs["interface"] = device
        with lib(preset, **kwargs):
            yield "library"
        return
    dev = device or "ipsec0"
    if backend == "nft":
        table = f"ipnf_tier_{preset.replace('-', '_')}_{group}"
        script = nft_script(preset, group, table, reqid=reqid, spi=spi, device=dev)
        subprocess.run([*_ns(netns), "nft", "-f", "-"], input=script, text=True, check=True,
                       capture_output=True)
        try:
            yield "fallback"
        finally:
            subprocess.run([*_ns(netns), "nft", "delete", "table", "ip", table],
                           capture_output=True)
        return
    rules = iptables_rules(preset, group, reqid=reqid, spi=spi, device=dev)
    done: list[list[str]] = []
    try:
        for table, chain, *args in rules:
            subprocess.run([*_ns(netns), "iptables", "-w", "-t", table, "-A", chain, *args],
                           check=True, capture_output=True, text=True)
            done.append([table, chain, *args])
        yield "fallback"
    finally:
        for table, chain, *args in reversed(done):
            subprocess.run([*_ns(netns), "iptables", "-w", "-t", table, "-D", chain, *args],
                           capture_output=True)
