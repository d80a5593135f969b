"""IPsec tools, pure Python: keys from charon logs and ``ip xfrm state`` written for
Wireshark (``keys``), ESP decryption (``decrypt``, needs ``cryptography``).

``keys`` and ``decrypt`` gather the public names; the pieces are ``sa`` (the key model),
``charon_log`` (the log parser), ``xfrm`` (``ip xfrm state``), ``wireshark`` (the key tables
and tshark options), ``algorithms`` (Wireshark's algorithm names), ``loglines`` (bounded
reading), ``tcpdump_secrets`` (tcpdump's ``-E`` secrets), ``esp`` (the decryptor),
``esp_packet`` (ESP in an IP packet), ``esp_suite`` (ciphers and ICVs) and ``esn`` (extended
sequence numbers). No argparse here: the ``keys`` command is :mod:`ipsec_nflog.cli.keys`."""
