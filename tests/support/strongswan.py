"""Real strongSwan IKEv2 peers in throwaway namespaces (test tier 2, and tier 1's IKE): the
library's lab (:mod:`ipsec_nflog.testing.strongswan`, :mod:`ipsec_nflog.testing.charon`,
:mod:`ipsec_nflog.testing.classify`) under the names our tests have always used. One
implementation; nothing is defined here. ``strongswan_pair(...)`` starts the daemons with no
SA yet; ``StrongswanPair(...)`` (establish=True) brings the tunnel up as well."""

from __future__ import annotations

from ipsec_nflog.testing.charon import (
    APT_PACKAGES,
    DEFAULT_ESP_PROPOSALS,
    DEFAULT_IKE_PROPOSALS,
    Peer,
    StrongswanUnavailable,
    check_installed,
    find_charon,
)
from ipsec_nflog.testing.classify import IKE_AUTH, IKE_SA_INIT, INFORMATIONAL, Seen, classify
from ipsec_nflog.testing.strongswan import StrongswanPair, charon_pids, strongswan_pair

__all__ = ["APT_PACKAGES", "DEFAULT_ESP_PROPOSALS", "DEFAULT_IKE_PROPOSALS", "IKE_AUTH",
           "IKE_SA_INIT", "INFORMATIONAL", "Peer", "Seen", "StrongswanPair",
           "StrongswanUnavailable", "charon_pids", "check_installed", "classify",
           "find_charon", "strongswan_pair"]
