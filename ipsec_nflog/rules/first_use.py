"""The nft tables and chains iptables-nft creates on first use, and their removal.

iptables-nft creates the table (``ip raw``, ``ip6 mangle``, ...) and the base chains a batch
needs when they do not exist yet; deleting the rules leaves them behind, empty, and
``iptables-save`` / ``nft list ruleset`` then show tables that were not there before. So an
install takes a :func:`snapshot` of the tables it touches before and after, and what
:func:`appeared` in between is ours (a :class:`FirstUse`). :func:`drop_unused` deletes
exactly that again, chains first, each only if it holds nothing (one atomic,
non-recursive delete by handle, see :mod:`._nfnetlink`). A table that existed before is
never deleted; a rule, chain or set someone else put in one of ours meanwhile keeps it
(and its table).

iptables-legacy has no counterpart: its tables are instantiated in a namespace on first use
and the kernel frees them only with the namespace (or the module), so nothing is tracked
for it (see docs/rules.md, "Removal").
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import ClassVar, TypeVar

from ipsec_nflog.rules import _nfnetlink
from ipsec_nflog.rules._nfnetlink import NftObject
from ipsec_nflog.rules.errors import RulesError
from ipsec_nflog.rules.model import Family, RuleSet
from ipsec_nflog.system.netns import run_in_netns

__all__ = ["NFT_FAMILY", "FirstUse", "NftObject", "appeared", "drop_unused", "snapshot",
           "tables_of", "used_by"]

NFT_FAMILY: dict[Family, str] = {"ipv4": "ip", "ipv6": "ip6"}
Key = tuple[str, str, str | None]  # (nft family, table, chain or None for the table)
T = TypeVar("T")


def tables_of(rs: RuleSet) -> frozenset[tuple[str, str]]:
    """The (nft family, table) pairs an iptables-nft install of ``rs`` writes to."""
    return frozenset((NFT_FAMILY[fam], r.table) for fam in rs.families for r in rs.rules)


def used_by(rs: RuleSet) -> frozenset[Key]:
    """The tables and chains that hold rules of ``rs`` once installed with iptables-nft."""
    return frozenset(key for fam in rs.families for r in rs.rules
                     for key in ((NFT_FAMILY[fam], r.table, None),
                                 (NFT_FAMILY[fam], r.table, r.chain)))


def _in_netns(netns: str | None, what: str, fn: Callable[[], T]) -> T:
    try:
        return run_in_netns(netns, fn)
    except OSError as e:
        where = f" in network namespace {netns!r}" if netns else ""
        raise RulesError(f"could not {what}{where}: {e.strerror or e}") from None


def snapshot(tables: Collection[tuple[str, str]], netns: str | None) -> dict[Key, NftObject]:
    """``tables`` and every chain in them, as they are now (nothing to ask when empty)."""
    if not tables:
        return {}

    def collect() -> dict[Key, NftObject]:
        out: dict[Key, NftObject] = {}
        for family in sorted({fam for fam, _table in tables}):
            for obj in _nfnetlink.list_objects(family):
                if (obj.family, obj.table) in tables:
                    out[(obj.family, obj.table, obj.chain)] = obj
        return out

    return _in_netns(netns, "list the nf_tables tables", collect)


def appeared(before: Mapping[Key, NftObject],
             after: Mapping[Key, NftObject]) -> tuple[NftObject, ...]:
    """The tables and chains of ``after`` that ``before`` did not have."""
    return tuple(obj for key, obj in after.items() if key not in before)


def drop_unused(created: Sequence[NftObject], netns: str | None) -> list[NftObject]:
    """Delete each of ``created`` that holds nothing now (chains before their tables);
    returns those deleted. One in use or already gone is left alone."""
    if not created:
        return []
    ordered = sorted(created, key=lambda obj: obj.chain is None)  # chains first

    def drop() -> list[NftObject]:
        # a chain is named by its table's name: skip it if that table is not ours any more
        tables = {(t.family, t.table): t.handle for family in {o.family for o in ordered}
                  for t in _nfnetlink.list_objects(family, chains=False)}
        return [obj for obj in ordered
                if tables.get((obj.family, obj.table)) == obj.table_handle
                and _nfnetlink.delete_if_unused(obj) == "deleted"]

    return _in_netns(netns, "delete the empty nf_tables tables iptables-nft created", drop)


class FirstUse:
    """The tables and chains one installation creates in one namespace.

    Construct it before installing ``rs`` (the snapshot), :meth:`record` after, and
    :meth:`drop` with the rules. A table or chain still in use then by the rules of
    another of our installations in the same namespace (one that came later and is
    removed later) passes to that installation, so removal in any order leaves nothing
    behind; one that only someone else uses stays.
    """

    _live: ClassVar[list[FirstUse]] = []
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, rs: RuleSet, netns: str | None) -> None:
        self.tables = tables_of(rs)
        self.uses = used_by(rs)
        self.netns = netns
        self.objects: list[NftObject] = []
        self._before = snapshot(self.tables, netns)

    def record(self) -> None:
        """What appeared since the snapshot is ours."""
        after = snapshot(self.tables, self.netns)
        with self._lock:
            self.objects = list(appeared(self._before, after))
            self._live.append(self)

    def drop(self) -> list[NftObject]:
        """Delete what is unused now (see the class); returns what was deleted."""
        with self._lock:
            if self in self._live:
                self._live.remove(self)
            objects, self.objects = self.objects, []
        deleted = drop_unused(objects, self.netns)
        with self._lock:
            for obj in objects:
                heir = next((r for r in self._live if r.netns == self.netns
                             and (obj.family, obj.table, obj.chain) in r.uses), None)
                if obj not in deleted and heir is not None:
                    heir.objects.append(obj)
        return deleted
