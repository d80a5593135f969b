"""IPsec tools, pure Python: keys from charon logs and ``ip xfrm state`` written for
Wireshark (``keys``), ESP decryption (``decrypt``, needs ``cryptography``)."""
