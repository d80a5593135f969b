"""Removal puts the ruleset back exactly as it was, empty tables included.

Every preset on every backend, in a fresh namespace: ``iptables-nft-save``,
``ip6tables-nft-save``, ``iptables-legacy-save``, ``ip6tables-legacy-save`` and
``nft list ruleset`` after removal equal what they were before. iptables-nft creates nft
tables and base chains on first use; they go with our rules. iptables-legacy instantiates
a built-in table in a namespace on first use and the kernel cannot free it (only the
namespace or the module can), so its save view may gain tables, each exactly as a fresh
table: built-in chains, policy ACCEPT, zero counters, no rule (docs/rules.md, "Removal").

Also: tables that existed before stay; a rule or chain someone else puts into one of our
tables keeps it; overlapping installations removed in any order leave nothing; commands
pasted from ``rules show`` survive ``rules cleanup``. The unprivileged tests at the end
check the bookkeeping against a fake kernel.
"""

from __future__ import annotations

import errno
import subprocess
from pathlib import Path
from typing import Any, Literal

import pytest

from ipsec_nflog import rules
from ipsec_nflog.rules import _nfnetlink, first_use, iptables
from ipsec_nflog.rules._nfnetlink import NftObject
from ipsec_nflog.rules.iptables import IptablesInstallation
from ipsec_nflog.rules.model import FAMILIES
from ipsec_nflog.rules.presets import PRESETS
from tests.cli.test_cli import argv as cli_argv
from tests.rules.test_rules_kernel import need_backend, snapshot
from tests.support import nstools

BACKENDS = ("iptables-nft", "iptables-legacy", "nft", "nft-cli")
GROUP = 4343
LEGACY_TOOLS = ("iptables-legacy-save", "ip6tables-legacy-save")
BUILTIN_CHAINS = {
    "raw": ("PREROUTING", "OUTPUT"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
}
THIRD_PARTY_RULE = "-p udp --dport 9999 -m comment --comment third-party -j ACCEPT"


def run(ns: str, *args: str, input: str | None = None) -> str:
    return nstools.run(list(args), ns=ns, input=input).stdout


def save_tables(text: str) -> dict[str, str]:
    """``*table ... COMMIT`` sections of an iptables-save text, by table name."""
    out: dict[str, str] = {}
    name = ""
    for line in text.splitlines():
        if line.startswith("*"):
            name = line[1:]
            out[name] = ""
        if name:
            out[name] += line + "\n"
    return out


def fresh_legacy_table(table: str) -> str:
    """iptables-legacy-save of a built-in table as the kernel instantiates it."""
    chains = "".join(f":{c} ACCEPT [0:0]\n" for c in BUILTIN_CHAINS[table])
    return f"*{table}\n{chains}COMMIT\n"


def assert_restored(before: dict[str, str], after: dict[str, str], backend: str,
                    rs: rules.RuleSet) -> None:
    assert after.keys() == before.keys()
    for view, text in before.items():
        if backend != "iptables-legacy" or view not in LEGACY_TOOLS:
            assert after[view] == text, f"{view} differs after removal"
            continue
        old, new = save_tables(text), save_tables(after[view])
        assert {t: new.get(t) for t in old} == old, f"{view}: a table that was there changed"
        appeared = new.keys() - old.keys()
        assert appeared <= {r.table for r in rs.rules}, f"{view}: {appeared}"
        for table in appeared:
            assert new[table] == fresh_legacy_table(table), f"{view}: {table} is not empty"


def assert_installed(during: dict[str, str], handle: rules.InstalledRules,
                     backend: str) -> None:
    comment = f"ipsec_nflog:{handle.tag}"
    rs = handle.ruleset
    if backend.startswith("nft"):
        # the table's comment and one per rule
        assert during["nft"].count(f'comment "{comment}"') == len(rs.rules) + 1
        return
    for fam in FAMILIES:
        exe = "iptables" if fam == "ipv4" else "ip6tables"
        view = during[f"{exe}{backend[8:]}-save"]
        assert view.count(f'"{comment}"') == len(rs.for_family(fam)), (fam, view)


# -- every preset on every backend -------------------------------------------------------------


@pytest.mark.privileged
@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_removal_restores_every_view_of_a_fresh_namespace(netns: str, backend: str,
                                                          preset: str) -> None:
    kw = need_backend(backend)
    before = snapshot(netns)
    assert all(text == "" for text in before.values()), before  # fresh: nothing at all
    handle = rules.install(preset, netns=netns, group=GROUP, family="both", **kw)
    try:
        assert_installed(snapshot(netns), handle, backend)
    finally:
        handle.remove()
    assert_restored(before, snapshot(netns), backend, handle.ruleset)


# -- third parties (iptables-nft, whose tables we delete) ---------------------------------------


@pytest.mark.privileged
def test_tables_and_chains_that_existed_before_are_kept(netns: str) -> None:
    need_backend("iptables-nft")
    run(netns, "iptables-nft-restore", "--noflush",
        input=f"*raw\n-A PREROUTING {THIRD_PARTY_RULE}\nCOMMIT\n")
    run(netns, "nft", "add", "table", "ip", "filter")  # empty: no chain at all
    run(netns, "nft", "add", "table", "ip6", "mangle")
    run(netns, "nft", "add", "chain", "ip6", "mangle", "POSTROUTING",
        "{ type filter hook postrouting priority mangle; policy accept; }")  # empty
    before = snapshot(netns)
    with rules.installed("all", netns=netns, group=GROUP, backend="iptables-nft"), \
            rules.installed("outgoing", netns=netns, group=GROUP, backend="iptables-nft"):
        during = run(netns, "nft", "list", "ruleset")
        assert "chain OUTPUT" in during and "table ip6 raw" in during
    assert snapshot(netns) == before


@pytest.mark.privileged
def test_a_rule_or_chain_someone_adds_meanwhile_keeps_its_table(netns_factory: Any) -> None:
    need_backend("iptables-nft")
    ns, reference = netns_factory("exact"), netns_factory("ref")

    def third_party(where: str) -> None:
        run(where, "iptables-nft", "-t", "raw", "-A", "OUTPUT", *THIRD_PARTY_RULE.split())
        run(where, "nft", "add", "table", "ip6", "mangle")  # exists already in ns
        run(where, "nft", "add", "chain", "ip6", "mangle", "third_party")

    with rules.installed("all", netns=ns, group=GROUP, backend="iptables-nft"):
        third_party(ns)
    third_party(reference)  # what the third party alone leaves
    after = snapshot(ns)
    assert "third-party" in after["iptables-nft-save"]
    assert "chain third_party" in after["nft"]
    assert after == snapshot(reference)


@pytest.mark.privileged
@pytest.mark.parametrize("order", ["first-installed-first", "last-installed-first"])
def test_overlapping_installations_removed_in_any_order_leave_nothing(
        netns: str, order: str) -> None:
    need_backend("iptables-nft")
    before = snapshot(netns)
    first = rules.install("all", netns=netns, group=GROUP, backend="iptables-nft")
    second = rules.install("ike-esp-in", netns=netns, group=GROUP + 1, backend="iptables-nft")
    try:
        # the second found every table already there, so it created nothing itself
        assert isinstance(second._state, IptablesInstallation)
        assert second._state.first_use is not None and not second._state.first_use.objects
    finally:
        for h in (first, second) if order == "first-installed-first" else (second, first):
            h.remove()
    assert snapshot(netns) == before


# -- commands pasted from `rules show` -------------------------------------------------------


@pytest.mark.privileged
def test_commands_pasted_from_rules_show_survive_cleanup(netns: str, tmp_path: Path) -> None:
    need_backend("iptables-nft")
    shown = subprocess.run(cli_argv("rules", "show", "all", "-g", "5", "--backend", "iptables"),
                           capture_output=True, text=True, timeout=60, check=True).stdout
    assert "ipsec_nflog:keep-" in shown and "ipsec_nflog:pid" not in shown
    script = tmp_path / "paste.sh"
    script.write_text(shown)
    run(netns, "sh", "-e", str(script))  # the `show` process has exited by now
    pasted = snapshot(netns)
    tag = shown.split("ipsec_nflog:", 1)[1].split('"', 1)[0]
    per_family = len(rules.build("all", group=5).rules)
    assert [x.tag for x in rules.find(netns)] == [tag] * 2 * per_family
    r = subprocess.run(cli_argv("rules", "cleanup", "--netns", netns), capture_output=True,
                       text=True, timeout=60)
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout.startswith("removed 0 stale rule set(s)")
    assert snapshot(netns) == pasted
    assert rules.cleanup(netns) == [] and snapshot(netns) == pasted  # the library, too


# -- bookkeeping against a fake kernel (no root) ---------------------------------------------


class FakeKernel:
    """nf_tables objects with what they hold; deletes as the kernel's non-recursive ones."""

    def __init__(self, *objects: NftObject) -> None:
        self.objects = list(objects)
        self.deleted: list[NftObject] = []

    def list_objects(self, family: str, chains: bool = True) -> list[NftObject]:
        return [o for o in self.objects if o.family == family and (chains or o.chain is None)]

    def delete_if_unused(self, obj: NftObject) -> Literal["deleted", "in use", "gone"]:
        mine = [o for o in self.objects if (o.family, o.table, o.chain, o.handle)
                == (obj.family, obj.table, obj.chain, obj.handle)]
        if not mine:
            return "gone"
        held = [o for o in self.objects if o.chain is not None and o.table == obj.table
                and o.family == obj.family] if obj.chain is None else []
        if mine[0].use or held:
            return "in use"
        self.objects.remove(mine[0])
        self.deleted.append(obj)
        return "deleted"


def obj(table: str, chain: str | None = None, handle: int = 1, table_handle: int = 1,
        use: int = 0) -> NftObject:
    return NftObject("ip", table, chain, handle, table_handle, use)


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> FakeKernel:
    k = FakeKernel()
    monkeypatch.setattr(_nfnetlink, "list_objects", k.list_objects)
    monkeypatch.setattr(_nfnetlink, "delete_if_unused", k.delete_if_unused)
    return k


def test_drop_deletes_chains_before_their_table_and_only_empty_ones(kernel: FakeKernel
                                                                    ) -> None:
    raw, pre, out = obj("raw", handle=7, table_handle=7), obj("raw", "PREROUTING", 1, 7), \
        obj("raw", "OUTPUT", 2, 7)
    kernel.objects = [raw, pre, NftObject("ip", "raw", "OUTPUT", 2, 7, use=1)]
    assert first_use.drop_unused([raw, out, pre], None) == [pre]  # OUTPUT holds a rule
    assert kernel.deleted == [pre] and raw in kernel.objects
    kernel.objects.remove(kernel.objects[-1])  # the rule's chain is gone now
    assert first_use.drop_unused([raw, out], None) == [raw]


def test_drop_leaves_a_chain_whose_table_was_made_again(kernel: FakeKernel) -> None:
    """Chain handles are unique per table only: a table made again (new handle) may reuse
    one, and that chain is someone else's."""
    kernel.objects = [obj("mangle", handle=9, table_handle=9),
                      obj("mangle", "PREROUTING", 1, 9)]
    ours = [obj("mangle", "PREROUTING", 1, table_handle=3), obj("mangle", None, 3, 3)]
    assert first_use.drop_unused(ours, None) == [] and kernel.deleted == []


def test_first_use_records_what_appeared_and_hands_what_is_in_use_on(
        kernel: FakeKernel) -> None:
    a = rules.build("all", group=1, family="ipv4", tag="test-a")
    b = rules.build("ike-esp-in", group=2, family="ipv4", tag="test-b")
    first = first_use.FirstUse(a, None)
    raw, pre, out = obj("raw", None, 5, 5), obj("raw", "PREROUTING", 1, 5), \
        obj("raw", "OUTPUT", 2, 5)
    kernel.objects = [raw, pre, out]
    first.record()
    assert sorted(map(str, first.objects)) == sorted(map(str, (raw, pre, out)))
    second = first_use.FirstUse(b, None)
    second.record()
    assert second.objects == []
    kernel.objects[1] = NftObject("ip", "raw", "PREROUTING", 1, 5, use=3)  # b's rules
    assert first.drop() == [out]
    assert sorted(map(str, second.objects)) == sorted(map(str, (raw, pre)))
    kernel.objects[1] = pre  # b's rules removed
    assert second.drop() == [pre, raw] and kernel.objects == []


@pytest.mark.parametrize("variant", ["nf_tables", "legacy"])
def test_only_nft_based_iptables_track_tables(monkeypatch: pytest.MonkeyPatch,
                                              variant: str) -> None:
    monkeypatch.setattr(iptables, "detect_variant", lambda binary="iptables": variant)
    assert not rules.IptablesBackend("iptables-legacy").creates_nft_tables()
    assert rules.IptablesBackend("iptables-nft").creates_nft_tables()
    assert rules.IptablesBackend("iptables").creates_nft_tables() == (variant == "nf_tables")


def test_kernel_errors_other_than_busy_or_gone_are_raised(kernel: FakeKernel,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    def denied(o: NftObject) -> str:
        raise OSError(errno.EPERM, "Operation not permitted")

    kernel.objects = [obj("raw")]
    monkeypatch.setattr(_nfnetlink, "delete_if_unused", denied)
    with pytest.raises(rules.RulesError, match=r"could not delete the empty nf_tables tables "
                                               r".*Operation not permitted"):
        first_use.drop_unused([obj("raw")], None)
