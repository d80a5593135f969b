"""One ESP SA's algorithms, checked and ready to use: the sizes the wire format needs, ICV
verification and deciphering (``cryptography``). Names are Wireshark's, as
:mod:`ipsec_nflog.ipsec.keys` writes them."""

from __future__ import annotations

import hmac
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ipsec_nflog.ipsec.algorithms import ESP_INTEG_UNCHECKED
from ipsec_nflog.ipsec.sa import EspSa

__all__ = [
    "SUPPORTED_ENCRYPTION",
    "SUPPORTED_INTEGRITY",
    "EspSuite",
    "UnsupportedSaError",
    "suite_for",
]


class UnsupportedSaError(ValueError):
    """An SA whose algorithm this module cannot decrypt, or whose key has the wrong size."""


@dataclass(frozen=True)
class _Integ:
    digest: str | None                  # hashlib name; None: nothing to check (NULL, "ANY")
    icv_len: int
    key_len: int | None                 # required key length (None: any)


_INTEG: dict[str, _Integ] = {
    "NULL": _Integ(None, 0, 0),
    "HMAC-SHA-1-96 [RFC2404]": _Integ("sha1", 12, 20),
    "HMAC-MD5-96 [RFC2403]": _Integ("md5", 12, 16),
    "HMAC-SHA-256-128 [RFC4868]": _Integ("sha256", 16, 32),
    "HMAC-SHA-256-96 [draft-ietf-ipsec-ciph-sha-256-00]": _Integ("sha256", 12, 32),
    "HMAC-SHA-384-192 [RFC4868]": _Integ("sha384", 24, 48),
    "HMAC-SHA-512-256 [RFC4868]": _Integ("sha512", 32, 64),
    # only the ICV's length is known: it is skipped, not checked
    **{name: _Integ(None, bits // 8, None) for bits, name in ESP_INTEG_UNCHECKED.items()},
}
_ENC_CBC = "AES-CBC [RFC3602]"
_ENC_CTR = "AES-CTR [RFC3686]"
_ENC_NULL = "NULL"
_ENC_GCM = {f"AES-GCM with {n} octet ICV [RFC4106]": n for n in (8, 12, 16)}
# strongSwan's save-keys writes this name with "ANY <ICV bits> bit authentication"
_ENC_GCM_ANY_ICV = "AES-GCM [RFC4106]"
_ESN_HIGH = struct.Struct(">I")
SUPPORTED_ENCRYPTION = (_ENC_CBC, _ENC_CTR, _ENC_NULL, *_ENC_GCM, _ENC_GCM_ANY_ICV)
SUPPORTED_INTEGRITY = tuple(_INTEG)


@dataclass(frozen=True)
class EspSuite:
    """One SA, ready to use: what the wire format and the crypto need."""

    sa: EspSa
    kind: str                  # "cbc", "ctr", "gcm", "null"
    key: bytes                 # cipher key (without salt/nonce)
    salt: bytes                # GCM salt / CTR nonce (4 bytes), else b""
    iv_len: int
    align: int                 # payload alignment for the padding (block size, or 4)
    icv_len: int
    integ: _Integ | None       # None for AEAD

    @property
    def checks_icv(self) -> bool:
        """Whether packets of this SA are authenticated (HMAC, or AES-GCM's tag): not for NULL
        integrity, nor for an "ANY n bit" one, whose ICV is skipped."""
        return self.integ is None or self.integ.digest is not None

    def open_aead(self, header: bytes, iv: bytes, ciphertext: bytes, icv: bytes,
                  seq_hi: int | None = None) -> bytes | None:
        """AES-GCM: the plaintext, or None when the tag does not verify. The AAD is the ESP
        header (SPI || sequence number), with extended sequence numbers SPI || high 32 bits
        || low 32 bits (RFC 4106 section 5)."""
        dec = Cipher(algorithms.AES(self.key),
                     modes.GCM(self.salt + iv, icv, min_tag_length=self.icv_len)).decryptor()
        if seq_hi is not None:
            header = header[:4] + _ESN_HIGH.pack(seq_hi) + header[4:8]
        dec.authenticate_additional_data(header)
        try:
            return dec.update(ciphertext) + dec.finalize()
        except InvalidTag:
            return None

    def icv_ok(self, signed: bytes, icv: bytes, seq_hi: int | None = None) -> bool | None:
        """Whether the HMAC over ``signed`` (with extended sequence numbers: and the high 32
        bits after it, RFC 4303 section 2.2.1) is ``icv``; None when there is nothing to check
        (NULL or "ANY n bit" integrity)."""
        assert self.integ is not None
        if self.integ.digest is None:
            return None
        if seq_hi is not None:
            signed += _ESN_HIGH.pack(seq_hi)
        mac = hmac.digest(self.sa.integrity_key, signed, self.integ.digest)
        return hmac.compare_digest(mac[:self.icv_len], icv)

    def decipher(self, iv: bytes, ciphertext: bytes) -> bytes:
        """AES-CBC, AES-CTR or NULL: the plaintext (``ciphertext`` is a multiple of
        ``align``)."""
        if self.kind == "cbc":
            d = Cipher(algorithms.AES(self.key), modes.CBC(iv)).decryptor()
        elif self.kind == "ctr":
            d = Cipher(algorithms.AES(self.key),
                       modes.CTR(self.salt + iv + b"\0\0\0\1")).decryptor()
        else:
            return ciphertext
        return d.update(ciphertext) + d.finalize()


def _key_sizes(what: str, name: str, key: bytes, extra: str = "") -> None:
    """A 16/24/32-byte AES key (plus 4 bytes of ``extra`` when named)."""
    sizes = (20, 28, 36) if extra else (16, 24, 32)
    if len(key) not in sizes:
        plus = f" plus a 4-byte {extra}" if extra else ""
        raise UnsupportedSaError(f"{what}: {name} needs a 16/24/32-byte key{plus}, not "
                                 f"{len(key)} bytes")


def _gcm_icv_len(what: str, sa: EspSa) -> int:
    """The tag length of an AES-GCM SA: in its encryption name, or (save-keys' pair) in its
    "ANY n bit authentication" integrity."""
    if sa.encryption in _ENC_GCM:
        return _ENC_GCM[sa.encryption]
    integ = _INTEG.get(sa.integrity)
    if integ is None or integ.digest is not None or integ.icv_len not in (8, 12, 16):
        raise UnsupportedSaError(f"{what}: {_ENC_GCM_ANY_ICV} needs 'ANY 64/96/128 bit "
                                 f"authentication' for its tag length, not {sa.integrity!r}")
    return integ.icv_len


def suite_for(sa: EspSa) -> EspSuite:
    """The suite of an SA; :class:`UnsupportedSaError` for algorithms or key sizes this
    module cannot use."""
    what = f"ESP SA 0x{sa.spi:08x} ({sa.src} > {sa.dst})"
    enc, key = sa.encryption, sa.encryption_key
    if enc in _ENC_GCM or enc == _ENC_GCM_ANY_ICV:
        _key_sizes(what, "AES-GCM", key, "salt")
        return EspSuite(sa, "gcm", key[:-4], key[-4:], 8, 4, _gcm_icv_len(what, sa), None)
    integ = _INTEG.get(sa.integrity)
    if integ is None:
        raise UnsupportedSaError(f"{what}: integrity algorithm {sa.integrity!r} is not "
                                 "supported here")
    if integ.key_len and len(sa.integrity_key) != integ.key_len:
        raise UnsupportedSaError(f"{what}: {sa.integrity} needs a {integ.key_len}-byte key, "
                                 f"not {len(sa.integrity_key)} bytes")
    if enc == _ENC_CBC:
        _key_sizes(what, "AES-CBC", key)
        return EspSuite(sa, "cbc", key, b"", 16, 16, integ.icv_len, integ)
    if enc == _ENC_CTR:
        _key_sizes(what, "AES-CTR", key, "nonce")
        return EspSuite(sa, "ctr", key[:-4], key[-4:], 8, 4, integ.icv_len, integ)
    if enc == _ENC_NULL:
        return EspSuite(sa, "null", b"", b"", 0, 4, integ.icv_len, integ)
    raise UnsupportedSaError(f"{what}: encryption algorithm {enc!r} is not supported here "
                             f"(supported: {', '.join(SUPPORTED_ENCRYPTION)})")
