"""Wireshark's algorithm names (the strings of its UAT value lists) for strongSwan's and the
kernel's names, and the IKE/ESP algorithms of an SA told from what a charon log shows."""

from __future__ import annotations

import re

from ipsec_nflog.ipsec.sa import KeyExtractionError

__all__ = [
    "ESP_ENC",
    "ESP_INTEG",
    "ESP_INTEG_UNCHECKED",
    "IKE_ENC",
    "IKE_INTEG",
    "XFRM_AEAD_ICV",
    "XFRM_AUTH",
    "XFRM_AUTH_DEFAULT_BITS",
    "XFRM_ENC",
    "esp_algorithms",
    "esp_proposal_has_esn",
    "ike_algorithms",
]

# IKEv2 encryption, by (strongSwan algorithm name, key bits).
IKE_ENC = {
    ("3DES_CBC", 192): "3DES [RFC2451]",
    ("NULL", 0): "NULL [RFC2410]",
    **{("AES_CBC", b): f"AES-CBC-{b} [RFC3602]" for b in (128, 192, 256)},
    **{("AES_CTR", b): f"AES-CTR-{b} [RFC5930]" for b in (128, 192, 256)},
    **{(f"AES_GCM_{i}", b): f"AES-GCM-{b} with {i} octet ICV [RFC5282]"
       for i in (8, 12, 16) for b in (128, 192, 256)},
    **{(f"AES_CCM_{i}", b): f"AES-CCM-{b} with {i} octet ICV [RFC5282]"
       for i in (8, 12, 16) for b in (128, 192, 256)},
}
IKE_INTEG = {
    "HMAC_MD5_96": "HMAC_MD5_96 [RFC2403]",
    "HMAC_SHA1_96": "HMAC_SHA1_96 [RFC2404]",
    "HMAC_MD5_128": "HMAC_MD5_128 [RFC4595]",
    "HMAC_SHA1_160": "HMAC_SHA1_160 [RFC4595]",
    "HMAC_SHA2_256_128": "HMAC_SHA2_256_128 [RFC4868]",
    "HMAC_SHA2_384_192": "HMAC_SHA2_384_192 [RFC4868]",
    "HMAC_SHA2_512_256": "HMAC_SHA2_512_256 [RFC4868]",
    "HMAC_SHA2_256_96": "HMAC_SHA2_256_96 [draft-ietf-ipsec-ciph-sha-256-00]",
    "NONE": "NONE [RFC4306]",
}
# ESP encryption, by strongSwan algorithm name (key size is implied by the key).
ESP_ENC = {
    "NULL": "NULL",
    "3DES_CBC": "TripleDes-CBC [RFC2451]",
    "AES_CBC": "AES-CBC [RFC3602]",
    "AES_CTR": "AES-CTR [RFC3686]",
    "DES_CBC": "DES-CBC [RFC2405]",
    "CAST_CBC": "CAST5-CBC [RFC2144]",
    "BLOWFISH_CBC": "BLOWFISH-CBC [RFC2451]",
    "TWOFISH_CBC": "TWOFISH-CBC",
    # save-keys writes the deprecated "AES-GCM [RFC4106]" with "ANY <n> bit authentication";
    # Wireshark 4.0 rejects that pair ("AES-GCM encryption can only be used with NULL
    # authentication"), so we write the ICV-specific names with NULL authentication.
    "AES_GCM_8": "AES-GCM with 8 octet ICV [RFC4106]",
    "AES_GCM_12": "AES-GCM with 12 octet ICV [RFC4106]",
    "AES_GCM_16": "AES-GCM with 16 octet ICV [RFC4106]",
}
ESP_INTEG = {
    "HMAC_SHA1_96": "HMAC-SHA-1-96 [RFC2404]",
    "HMAC_MD5_96": "HMAC-MD5-96 [RFC2403]",
    "HMAC_SHA2_256_128": "HMAC-SHA-256-128 [RFC4868]",
    "HMAC_SHA2_384_192": "HMAC-SHA-384-192 [RFC4868]",
    "HMAC_SHA2_512_256": "HMAC-SHA-512-256 [RFC4868]",
    "HMAC_SHA2_256_96": "HMAC-SHA-256-96 [draft-ietf-ipsec-ciph-sha-256-00]",
    "NONE": "NULL",
}
# Wireshark's integrity entries that only give the ICV's length (by bits): it is skipped, not
# checked. tcpdump's "-hmac96" secrets are the 96-bit one.
ESP_INTEG_UNCHECKED = {bits: f"ANY {bits} bit authentication [no checking]"
                       for bits in (64, 96, 128, 192, 256)}


# Kernel (xfrm) algorithm names → Wireshark.
XFRM_ENC = {
    "cbc(aes)": "AES-CBC [RFC3602]",
    "rfc3686(ctr(aes))": "AES-CTR [RFC3686]",
    "cbc(des3_ede)": "TripleDes-CBC [RFC2451]",
    "cbc(des)": "DES-CBC [RFC2405]",
    "cbc(cast5)": "CAST5-CBC [RFC2144]",
    "cbc(blowfish)": "BLOWFISH-CBC [RFC2451]",
    "cbc(twofish)": "TWOFISH-CBC",
    "ecb(cipher_null)": "NULL",
    "cipher_null": "NULL",
}
XFRM_AEAD_ICV = {"rfc4106(gcm(aes))": "AES-GCM with {octets} octet ICV [RFC4106]"}
XFRM_AUTH = {
    ("hmac(sha1)", 96): "HMAC-SHA-1-96 [RFC2404]",
    ("hmac(md5)", 96): "HMAC-MD5-96 [RFC2403]",
    ("hmac(sha256)", 128): "HMAC-SHA-256-128 [RFC4868]",
    ("hmac(sha256)", 96): "HMAC-SHA-256-96 [draft-ietf-ipsec-ciph-sha-256-00]",
    ("hmac(sha384)", 192): "HMAC-SHA-384-192 [RFC4868]",
    ("hmac(sha512)", 256): "HMAC-SHA-512-256 [RFC4868]",
    ("digest_null", 0): "NULL",
}
# Untruncated "auth" lines use the algorithm's default truncation (RFC 4868 / 2404).
XFRM_AUTH_DEFAULT_BITS = {"hmac(sha1)": 96, "hmac(md5)": 96, "hmac(sha256)": 96,
                          "hmac(sha384)": 192, "hmac(sha512)": 256, "digest_null": 0}


# ---- telling an SA's algorithms from a charon log ----------------------------------------------

# One part of a proposal ("AES_CBC_256/HMAC_SHA2_256_128/...") that names the encryption.
_IKE_ENC_PART = re.compile(r"^(AES_(?:GCM|CCM)_(?:8|12|16)|AES_CBC|AES_CTR|3DES_CBC|NULL)"
                           r"(?:_(\d+))?$")
_ESP_ENC_PART = re.compile(r"^(AES_(?:GCM|CCM)_(?:8|12|16)|AES_CBC|AES_CTR|3DES_CBC|NULL|"
                           r"DES_CBC|CAST_CBC|BLOWFISH_CBC|TWOFISH_CBC)(?:_\d+)?$")
# IKE integrity by the length of SK_a, when no proposal was logged.
_IKE_INTEG_BY_KEY_LEN = {0: "NONE", 16: "HMAC_MD5_128", 20: "HMAC_SHA1_96",
                         32: "HMAC_SHA2_256_128", 48: "HMAC_SHA2_384_192",
                         64: "HMAC_SHA2_512_256"}


def _split_ike_proposal(proposal: str) -> tuple[str | None, int | None, str | None]:
    """'AES_CBC_256/HMAC_SHA2_256_128/PRF_.../MODP_2048' → ('AES_CBC', 256, 'HMAC_...')."""
    enc = bits = integ = None
    for part in proposal.split("/"):
        m = _IKE_ENC_PART.match(part)
        if m and enc is None:
            enc = m.group(1)
            bits = int(m.group(2)) if m.group(2) else (192 if enc == "3DES_CBC" else 0)
            continue
        if part in IKE_INTEG and integ is None:
            integ = part
    return enc, bits, integ


def ike_algorithms(keys: dict[str, bytes], proposal: str | None) -> tuple[str, str]:
    """Wireshark's (encryption, integrity) names for an IKE_SA: from its proposal when
    logged, else guessed from the key lengths (``keys``: "Sk_ei", "Sk_ai", ...)."""
    enc_name = integ_name = None
    if proposal:
        enc, bits, integ = _split_ike_proposal(proposal)
        if enc is not None and bits is not None:
            enc_name = IKE_ENC.get((enc, bits))
        if enc and enc.startswith(("AES_GCM", "AES_CCM")):
            integ_name = IKE_INTEG["NONE"]
        elif integ:
            integ_name = IKE_INTEG[integ]
    ke, ka = len(keys.get("Sk_ei", b"")), len(keys.get("Sk_ai", b""))
    if integ_name is None:
        integ_name = IKE_INTEG[_IKE_INTEG_BY_KEY_LEN.get(ka, "NONE")]
    if enc_name is None:
        if ka == 0 and ke in (20, 28, 36):     # AEAD: key + 4-byte salt; assume 16-byte ICV
            enc_name = IKE_ENC[("AES_GCM_16", (ke - 4) * 8)]
        elif ke in (16, 24, 32):
            enc_name = IKE_ENC[("AES_CBC", ke * 8)]
        else:
            raise KeyExtractionError(f"cannot tell the IKE encryption algorithm from a {ke}-byte"
                                     " SK_e; log 'cfg 2' for the selected proposal")
    return enc_name, integ_name


def esp_proposal_has_esn(proposal: str | None) -> bool:
    """Whether a CHILD_SA's selected proposal ("ESP:AES_CBC_128/HMAC_SHA2_256_128/EXT_SEQ")
    chose extended sequence numbers (strongSwan's name; "NO_EXT_SEQ" is the 32-bit ones)."""
    return proposal is not None and "EXT_SEQ" in proposal.split("/")


def esp_algorithms(enc: str | None, integ: str | None,
                   proposal: str | None) -> tuple[str, str]:
    """Wireshark's (encryption, integrity) names for a CHILD_SA from the strongSwan names
    logged ("using ... for encryption/integrity"), completed from its proposal."""
    for part in proposal.split("/") if proposal else ():
        m = _ESP_ENC_PART.match(part)
        if m and enc is None:
            enc = m.group(1)
        elif part in ESP_INTEG and integ is None:
            integ = part
    if enc is None:
        raise KeyExtractionError("ESP encryption algorithm not in the log ('using ... for "
                                 "encryption' needs chd >= 2)")
    if enc not in ESP_ENC:
        raise KeyExtractionError(f"ESP encryption {enc} has no Wireshark equivalent")
    if enc.startswith("AES_GCM"):
        return ESP_ENC[enc], "NULL"
    if integ is None:
        integ = "NONE"
    if integ not in ESP_INTEG:
        raise KeyExtractionError(f"ESP integrity {integ} has no Wireshark equivalent")
    return ESP_ENC[enc], ESP_INTEG[integ]
