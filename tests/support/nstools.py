"""Test helpers for namespaces: the library's lab (:mod:`ipsec_nflog.testing.lab`), under the
names our tests have always used. One implementation; nothing is defined here."""

from __future__ import annotations

from ipsec_nflog.system.netns import create_netns as add_netns
from ipsec_nflog.system.netns import delete_netns as del_netns
from ipsec_nflog.testing.lab import (
    NetnsPair,
    add_veth,
    ifindex,
    netns_names,
    ns_socket,
    run,
    unique_name,
)

__all__ = ["NetnsPair", "add_netns", "add_veth", "del_netns", "ifindex", "netns_names",
           "ns_socket", "run", "unique_name"]
