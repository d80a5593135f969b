"""Our rules wherever they came from: finding, showing and removing them by tag.

Every rule and table we install carries the comment ``ipsec_nflog:<tag>``, so they can be
found again without a handle: after a crash (:func:`cleanup` removes those whose owner
process is gone) or when persistent rules are removed in a later invocation
(:func:`remove`). A leftover is a :class:`TaggedRule` (an iptables rule of some variant)
or an :class:`NftTable` (one of our nft tables).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Union

from ipsec_nflog.rules.errors import RulesError
from ipsec_nflog.rules.iptables import TaggedRule, present_backends
from ipsec_nflog.rules.lifecycle import active, require_net_admin
from ipsec_nflog.rules.model import parse_owner_tag, validate_tag
from ipsec_nflog.rules.nft import NftBackend, NftTable
from ipsec_nflog.system.netns import open_netns, validate_netns_name

__all__ = ["Leftover", "cleanup", "find", "remove", "show"]

Leftover = Union[TaggedRule, NftTable]


def find(netns: str | None = None) -> list[Leftover]:
    """Every rule (iptables-nft, iptables-legacy) and nft table carrying our tag."""
    if netns is not None:
        os.close(open_netns(validate_netns_name(netns)))
    require_net_admin("reading the firewall rules")
    found: list[Leftover] = []
    for b in present_backends():
        found += b.tagged_rules(netns)
    found += NftBackend.tables(netns)
    return found


def show(netns: str | None = None) -> str:
    """Our rules currently installed, as iptables-save lines and nft tables ("" if none)."""
    parts: list[str] = []
    for item in find(netns):
        if isinstance(item, TaggedRule):
            parts.append(str(item))
        else:
            parts.append(f"# {item}\n" + NftBackend.list_table(item.family, item.name,
                                                               netns).rstrip())
    return "\n".join(parts) + ("\n" if parts else "")


def cleanup(netns: str | None = None, *, force: bool = False) -> list[Leftover]:
    """Remove every rule and nft table with our tag whose owner process is gone.

    The owner is alive when a process with the tag's PID and start time exists (PIDs of
    this PID namespace). ``force=True`` removes all of ours except this process's active
    ones, whatever their owner. Owner-flag nft tables of live sockets cannot be deleted by
    anyone else and are skipped. Returns what was removed.
    """
    mine = {h.tag for h in active()}
    stale = [x for x in find(netns) if x.tag not in mine and (force or _owner_gone(x.tag))]
    removed, errors = _delete(stale, netns, skip_owned_tables=True)
    if errors:
        raise RulesError(f"cleanup removed {len(removed)} item(s) but failed: "
                         + "; ".join(errors))
    return removed


def _owner_gone(tag: str) -> bool:
    """True when ``tag`` names a process that no longer runs (never for a tag that names no
    process, such as a persistent one)."""
    owner = parse_owner_tag(tag)
    return owner is not None and not owner.owner_alive()


def remove(tag: str, *, netns: str | None = None) -> list[Leftover]:
    """Remove every rule and nft table carrying ``tag`` (e.g. persistent rules installed
    by an earlier ``ipsec-nflog rules install``); returns what was removed."""
    validate_tag(tag)
    found = [x for x in find(netns) if x.tag == tag]
    for h in active():
        if h.tag == tag and h.netns == netns:
            h.remove()
            return found
    removed, errors = _delete(found, netns, skip_owned_tables=False)
    if errors:
        raise RulesError(f"removed {len(removed)} item(s) of {tag} but failed: "
                         + "; ".join(errors))
    return removed


def _delete(items: Sequence[Leftover], netns: str | None,
            skip_owned_tables: bool) -> tuple[list[Leftover], list[str]]:
    """(what was removed, one message per failure): every variant's rules in one batch
    per family, then each table."""
    removed: list[Leftover] = []
    errors: list[str] = []
    for b in present_backends():
        rows = [x for x in items if isinstance(x, TaggedRule) and x.backend == b.name]
        if not rows:
            continue
        try:
            b.delete(rows, netns)
            removed += rows
        except RulesError as e:
            errors.append(str(e))
    for t in items:
        if not isinstance(t, NftTable):
            continue
        try:
            NftBackend.delete_table(t, netns)
            removed.append(t)
        except RulesError as e:
            owned = t.owner and "Operation not permitted" in (e.stderr or "")
            if owned and skip_owned_tables:
                continue  # a live socket owns it; it goes away with that socket
            errors.append(f"{e}" + (" (an owner table: only the process that created it "
                                    "can delete it)" if owned else ""))
    return removed, errors
