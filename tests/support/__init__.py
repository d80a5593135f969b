"""Helpers shared by the tests (thin re-exports of ipsec_nflog.testing where they can)."""
