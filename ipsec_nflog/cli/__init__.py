"""The ``ipsec-nflog`` command (also ``python -m ipsec_nflog``)."""
