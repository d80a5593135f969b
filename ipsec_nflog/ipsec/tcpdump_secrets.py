"""tcpdump's ``-E`` ESP secrets, read the way tcpdump 4.99 reads them (``print-esp.c``), as
SAs for :class:`ipsec_nflog.ipsec.esp.EspDecryptor`.

A spec is entries separated by commas or newlines, each one of

- ``SPI@DST ALGO:SECRET``: the SA with this SPI to destination DST (IPv4 or IPv6). SPI is
  ``0x`` hex, ``0`` octal or decimal. ALGO is the cipher as tcpdump names it (OpenSSL's
  name, ``-cbc`` optional): ``aes128-cbc``, ``aes192-cbc``, ``aes256-cbc``; ``des-cbc``,
  ``3des-cbc``, ``blowfish-cbc`` and ``cast128-cbc`` are read, but the decryptor refuses
  them (:class:`~ipsec_nflog.ipsec.esp_suite.UnsupportedSaError`, or a warning when it skips
  unsupported SAs); ``none`` is NULL encryption. tcpdump takes no integrity key, so it never
  checks an ICV: an ALGO ending in ``-hmac96`` says the packets carry a 12-byte one
  (HMAC-SHA1-96, HMAC-MD5-96), which is skipped; without it there is no ICV at all, as
  tcpdump assumes. SECRET is ``0x`` and hex digits, or the key's bytes as text.
- ``file NAME``: the entries of file NAME, one per line (commas are not separators there);
  lines starting with ``#`` and blank lines are skipped.
- ``ikev2 ...``: IKEv2 keys, skipped with a warning (IKE is not decrypted here).

tcpdump's default secret (an entry without ``SPI@DST``, for any SPI) is refused: name the SPI.
Where tcpdump prints a warning and goes on, a bad entry here is a ValueError naming the entry
(never its secret): a key that silently does not apply would make packets look undecryptable
for the wrong reason.
"""

from __future__ import annotations

import os
import re

from ipsec_nflog.ipsec.algorithms import ESP_INTEG_UNCHECKED
from ipsec_nflog.ipsec.loglines import PathLike, open_log
from ipsec_nflog.ipsec.sa import EspSa, is_address

__all__ = [
    "TCPDUMP_CIPHERS",
    "load_tcpdump_secrets",
    "parse_tcpdump_secrets",
    "read_tcpdump_secrets",
]

# tcpdump's cipher names (after "-hmac96" and "-cbc" are cut off) → (Wireshark's name, the
# key length when we can decrypt it: the others are left to the decryptor to refuse).
TCPDUMP_CIPHERS: dict[str, tuple[str, int | None]] = {
    "aes128": ("AES-CBC [RFC3602]", 16),
    "aes192": ("AES-CBC [RFC3602]", 24),
    "aes256": ("AES-CBC [RFC3602]", 32),
    "none": ("NULL", None),
    "des": ("DES-CBC [RFC2405]", None),
    "3des": ("TripleDes-CBC [RFC2451]", None),
    "blowfish": ("BLOWFISH-CBC [RFC2451]", None),
    "bf": ("BLOWFISH-CBC [RFC2451]", None),
    "cast128": ("CAST5-CBC [RFC2144]", None),
    "cast5": ("CAST5-CBC [RFC2144]", None),
}
_HMAC96, _CBC = "-hmac96", "-cbc"
_ICV96 = ESP_INTEG_UNCHECKED[96]
_MAX_NESTING = 8                     # "file" entries within files
_HEX = re.compile(r"[0-9A-Fa-f]*")
_SPI = re.compile(r"0[xX][0-9A-Fa-f]+|0[0-7]*|[1-9][0-9]*")

Found = tuple[list[EspSa], list[str]]   # the SAs, and warnings


def parse_tcpdump_secrets(spec: str, *, what: str = "tcpdump secrets") -> Found:
    """The SAs of a ``-E`` spec (``what`` names it in messages), and warnings."""
    found: Found = ([], [])
    for n, entry in enumerate(re.split(r"[,\n]", spec), 1):
        _entry(entry, f"{what} entry {n}", 0, found)
    return found


def read_tcpdump_secrets(path: PathLike) -> Found:
    """The SAs of a secrets file (what ``-E 'file NAME'`` reads), and warnings."""
    found: Found = ([], [])
    _read_file(os.fspath(path), 0, found)
    return found


def load_tcpdump_secrets(spec_or_file: str) -> Found:
    """A secrets file if there is a file by that name, else a ``-E`` spec."""
    if os.path.exists(spec_or_file):
        return read_tcpdump_secrets(spec_or_file)
    return parse_tcpdump_secrets(spec_or_file)


def _read_file(path: str, depth: int, found: Found) -> None:
    if depth > _MAX_NESTING:
        raise ValueError(f"{path}: secrets files nested more than {_MAX_NESTING} deep (a file "
                         "that names itself?)")
    with open_log(path) as lines:
        for lineno, line in enumerate(lines, 1):
            text = line.rstrip("\r\n")
            if text.strip() and not text.startswith("#"):
                _entry(text, f"{path}:{lineno}", depth, found)
    found[1].extend(f"{path}: {w}" for w in lines.warnings())


def _entry(text: str, where: str, depth: int, found: Found) -> None:
    words = text.split(None, 1)
    if not words:
        return
    head, rest = words[0], (words[1].strip() if len(words) > 1 else "")
    if head.lower() == "file":
        if not rest:
            raise ValueError(f"{where}: 'file' needs a file name")
        _read_file(rest, depth + 1, found)
    elif head.lower() == "ikev2":
        found[1].append(f"{where}: ikev2 entry skipped (IKE keys; only ESP is decrypted)")
    elif not rest:   # the one word may hold a secret: not printed
        raise ValueError(f"{where}: not SPI@DST ALGO:SECRET (an entry without SPI@DST, "
                         "tcpdump's default secret, is not supported: name the SPI)")
    else:
        found[0].append(_sa(head, rest, where))


def _sa(spi_at_dst: str, algo_secret: str, where: str) -> EspSa:
    spi_text, at, dst = spi_at_dst.partition("@")
    if not at or not _SPI.fullmatch(spi_text) or int(spi_text, _base(spi_text)) > 0xFFFFFFFF:
        raise ValueError(f"{where}: {spi_at_dst!r} is not SPI@DST (SPI: 0x hex, 0 octal or "
                         "decimal, at most 32 bits)")
    if not is_address(dst):
        raise ValueError(f"{where}: {dst!r} is not an IP address")
    spi = int(spi_text, _base(spi_text))
    what = f"{where} ({spi_at_dst})"
    algo, colon, secret = algo_secret.partition(":")
    if not colon:
        raise ValueError(f"{what}: expected ALGO:SECRET after the address")
    name = algo.strip().lower()
    hmac96 = name.endswith(_HMAC96) and len(name) > len(_HMAC96)
    name = name[:-len(_HMAC96)] if hmac96 else name
    name = name[:-len(_CBC)] if name.endswith(_CBC) and len(name) > len(_CBC) else name
    if name not in TCPDUMP_CIPHERS:
        raise ValueError(f"{what}: unknown algorithm {algo.strip()!r} (tcpdump's names: "
                         "aes128-cbc, aes192-cbc, aes256-cbc, optionally -hmac96)")
    encryption, key_len = TCPDUMP_CIPHERS[name]
    key = _secret(secret.strip(), what)
    if key_len is not None and len(key) != key_len:
        raise ValueError(f"{what}: {algo.strip()} needs a {key_len}-byte key, the secret has "
                         f"{len(key)} bytes")
    return EspSa(src="*", dst=dst, spi=spi, encryption=encryption, encryption_key=key,
                 integrity=_ICV96 if hmac96 else "NULL", source="tcpdump")


def _base(spi_text: str) -> int:
    """strtoul's base 0: 0x is hex, a leading 0 octal."""
    if spi_text[:2] in ("0x", "0X"):
        return 16
    return 8 if spi_text.startswith("0") else 10


def _secret(text: str, what: str) -> bytes:
    """``0x`` and hex digits, or the text's bytes (as given on the command line)."""
    if text[:2] in ("0x", "0X"):
        digits = text[2:]
        if not _HEX.fullmatch(digits) or len(digits) % 2:
            raise ValueError(f"{what}: the secret after 0x is not an even number of hex "
                             "digits")
        return bytes.fromhex(digits)
    return text.encode("utf-8", "surrogateescape")
