"""The key model: an ESP SA and an IKE SA as Wireshark's tables need them, and their lines
in strongSwan's save-keys format."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

__all__ = [
    "EspSa",
    "IkeSa",
    "KeyExtractionError",
    "LogKeys",
    "esp_sa_line",
    "ikev2_line",
    "is_address",
    "key_from_text",
]


class KeyExtractionError(ValueError):
    """A log or xfrm dump that cannot be turned into keys (message says why)."""


@dataclass(frozen=True)
class EspSa:
    """One direction of a CHILD_SA: what Wireshark's ``esp_sa`` table needs, plus context."""

    src: str                   # "*": any (tcpdump's -E secrets name only the destination)
    dst: str
    spi: int
    encryption: str            # Wireshark name, e.g. "AES-CBC [RFC3602]"
    encryption_key: bytes      # for AES-GCM: key || 4-byte salt, as Wireshark wants it
    integrity: str             # Wireshark name, e.g. "HMAC-SHA-256-128 [RFC4868]"
    integrity_key: bytes = b""
    reqid: int | None = None
    mode: str | None = None
    encap: tuple[int, int] | None = None  # ESP-in-UDP (sport, dport)
    source: str = ""           # "log", "xfrm", "esp_sa" or "tcpdump"
    esn: bool = False          # extended sequence numbers: the ICV covers 32 more bits

    @property
    def family(self) -> str:
        known = self.dst if self.src == "*" else self.src
        return "IPv6" if ipaddress.ip_address(known).version == 6 else "IPv4"

    def uat_line(self) -> str:
        return esp_sa_line(self)


@dataclass(frozen=True)
class IkeSa:
    """IKEv2 SA keys: what Wireshark's ``ikev2_decryption_table`` needs."""

    spi_i: bytes | None
    spi_r: bytes | None
    sk_ei: bytes
    sk_er: bytes
    sk_ai: bytes
    sk_ar: bytes
    encryption: str            # Wireshark name, e.g. "AES-CBC-256 [RFC3602]"
    integrity: str             # Wireshark name, e.g. "HMAC_SHA2_256_128 [RFC4868]"
    proposal: str | None = None   # strongSwan's "IKE:AES_CBC_256/..." when logged
    name: str | None = None
    unique_id: int | None = None

    @property
    def complete(self) -> bool:
        return self.spi_i is not None and self.spi_r is not None

    def uat_line(self) -> str:
        return ikev2_line(self)


@dataclass
class LogKeys:
    """Everything :func:`ipsec_nflog.ipsec.keys.parse_charon_log` found."""

    ike: list[IkeSa] = field(default_factory=list)
    esp: list[EspSa] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def esp_sa_line(sa: EspSa) -> str:
    """One ``esp_sa`` record, as strongSwan's save-keys plugin writes it (no newline)."""
    return (f'"{sa.family}","{sa.src}","{sa.dst}","0x{sa.spi:08x}","{sa.encryption}",'
            f'"0x{sa.encryption_key.hex()}","{sa.integrity}","0x{sa.integrity_key.hex()}"')


def ikev2_line(sa: IkeSa) -> str:
    """One ``ikev2_decryption_table`` record, as save-keys writes it (no newline)."""
    if sa.spi_i is None or sa.spi_r is None:
        raise KeyExtractionError("IKE_SA without SPIs cannot go into the IKEv2 table")
    return (f"{sa.spi_i.hex()},{sa.spi_r.hex()},{sa.sk_ei.hex()},{sa.sk_er.hex()},"
            f'"{sa.encryption}",{sa.sk_ai.hex()},{sa.sk_ar.hex()},"{sa.integrity}"')


def is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def key_from_text(word: str) -> bytes:
    """A key as ``ip xfrm state`` and ``esp_sa`` files write it: ``0x`` and hex digits, or
    (iproute2, for keys that are not hex) a quoted string."""
    if word.startswith(("0x", "0X")):
        return bytes.fromhex(word[2:])
    return word.strip('"').encode()
