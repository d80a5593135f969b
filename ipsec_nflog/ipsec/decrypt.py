"""Decrypt ESP in our own reader: AES-CBC + HMAC (SHA-1/SHA-2) and AES-GCM (RFC 4106).

Keys come from :mod:`ipsec_nflog.ipsec.keys` (charon logs, ``ip xfrm state``) or from a Wireshark
``esp_sa`` file / a directory written by :func:`ipsec_nflog.ipsec.keys.write_wireshark_keys`::

    from ipsec_nflog.ipsec import decrypt

    from ipsec_nflog.files import writer as pcapfile

    dec = decrypt.EspDecryptor.from_charon_logs(["/var/log/charon-keys.log"])
    for pkt in pcapfile.read_capture("ipsec.pcap"):
        r = dec.decrypt(pkt.payload)         # None: not ESP
        if r is not None and r.ok:
            print(r.spi, r.seq, r.next_header, r.inner_ip)   # the inner IP packet (dpkt)

:meth:`EspDecryptor.decrypt` takes one IP packet (IPv4 or IPv6) holding ESP directly
(protocol 50) or ESP-in-UDP (RFC 3948, port 4500 by default; IKE behind the non-ESP marker
and NAT keepalives are not ESP and give ``None``). It finds the SA by SPI and destination
address, verifies the ICV (``hmac.compare_digest``; GCM's tag by the AEAD itself), decrypts,
checks the self-describing padding (1, 2, 3, ...) and returns a :class:`DecryptResult`. A
packet never raises: an unknown SPI, a bad ICV, bad padding or a truncated packet is a
result with that ``status``. Only bad key material raises (:class:`UnsupportedSaError`, a
``ValueError``), when the decryptor is built.

Algorithms (Wireshark's names, as :mod:`ipsec_nflog.ipsec.keys` writes them):

- encryption: ``AES-CBC [RFC3602]`` (128/192/256-bit keys), ``AES-GCM with 8/12/16 octet ICV
  [RFC4106]`` (key || 4-byte salt; nonce = salt || IV, AAD = SPI || sequence number),
  ``AES-CTR [RFC3686]`` (key || 4-byte nonce), ``NULL``;
- integrity: ``HMAC-SHA-1-96``, ``HMAC-MD5-96``, ``HMAC-SHA-256-128``, ``HMAC-SHA-256-96``,
  ``HMAC-SHA-384-192``, ``HMAC-SHA-512-256``, ``NULL``.

Limitations: no extended sequence numbers (the ICV of an ESN SA covers the high 32 bits,
which are not on the wire: such packets report ``bad-icv``); no 3DES/CAST/Blowfish/Twofish;
fragmented outer packets are not reassembled (the first fragment reports ``fragment``).

Pure Python plus the ``cryptography`` package; it never imports the compiled core.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Union

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ipsec_nflog.files.format import LINKTYPE_RAW, Buffer
from ipsec_nflog.files.writer import CaptureWriter
from ipsec_nflog.ipsec import keys
from ipsec_nflog.ipsec.keys import EspSa

__all__ = [
    "BAD_ICV",
    "BAD_PADDING",
    "FRAGMENT",
    "MALFORMED",
    "OK",
    "UNKNOWN_SPI",
    "DecryptResult",
    "DecryptStats",
    "DecryptedWriter",
    "EspDecryptor",
    "UnsupportedSaError",
    "read_charon_logs",
]

PathLike = Union[str, os.PathLike[str]]

# DecryptResult.status values
OK = "ok"
BAD_ICV = "bad-icv"            # the ICV (HMAC or GCM tag) does not verify: wrong keys or damage
BAD_PADDING = "bad-padding"    # ICV fine (or none), but the padding is wrong: wrong cipher key
UNKNOWN_SPI = "unknown-spi"    # no SA for this SPI (and destination)
MALFORMED = "malformed"        # too short / truncated by the snaplen / not a block multiple
FRAGMENT = "fragment"          # first fragment of a fragmented outer packet

PROTO_UDP, PROTO_ESP = 17, 50
NATT_PORT = 4500
_IPV6_EXT = {0, 43, 60}        # hop-by-hop, routing, destination options: skipped


class UnsupportedSaError(ValueError):
    """An SA whose algorithm this module cannot decrypt, or whose key has the wrong size."""


# ---- algorithms ------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Integ:
    digest: Callable[..., Any] | None   # hashlib constructor; None for NULL
    icv_len: int
    key_len: int | None                 # required key length (None: any)


_INTEG: dict[str, _Integ] = {
    "NULL": _Integ(None, 0, 0),
    "HMAC-SHA-1-96 [RFC2404]": _Integ(hashlib.sha1, 12, 20),
    "HMAC-MD5-96 [RFC2403]": _Integ(hashlib.md5, 12, 16),
    "HMAC-SHA-256-128 [RFC4868]": _Integ(hashlib.sha256, 16, 32),
    "HMAC-SHA-256-96 [draft-ietf-ipsec-ciph-sha-256-00]": _Integ(hashlib.sha256, 12, 32),
    "HMAC-SHA-384-192 [RFC4868]": _Integ(hashlib.sha384, 24, 48),
    "HMAC-SHA-512-256 [RFC4868]": _Integ(hashlib.sha512, 32, 64),
}
_ENC_CBC = "AES-CBC [RFC3602]"
_ENC_CTR = "AES-CTR [RFC3686]"
_ENC_NULL = "NULL"
_ENC_GCM = {f"AES-GCM with {n} octet ICV [RFC4106]": n for n in (8, 12, 16)}
SUPPORTED_ENCRYPTION = (_ENC_CBC, _ENC_CTR, _ENC_NULL, *_ENC_GCM)
SUPPORTED_INTEGRITY = tuple(_INTEG)


@dataclass(frozen=True)
class _Suite:
    """One SA, ready to use: what the wire format and the crypto need."""

    sa: EspSa
    kind: str                  # "cbc", "ctr", "gcm", "null"
    key: bytes                 # cipher key (without salt/nonce)
    salt: bytes                # GCM salt / CTR nonce (4 bytes), else b""
    iv_len: int
    align: int                 # payload alignment for the padding (block size, or 4)
    icv_len: int
    integ: _Integ | None       # None for AEAD


def _suite(sa: EspSa) -> _Suite:
    what = f"ESP SA 0x{sa.spi:08x} ({sa.src} > {sa.dst})"
    enc, key = sa.encryption, sa.encryption_key
    if enc in _ENC_GCM:
        if len(key) not in (20, 28, 36):
            raise UnsupportedSaError(f"{what}: AES-GCM needs a 16/24/32-byte key plus a 4-byte "
                                     f"salt, not {len(key)} bytes")
        return _Suite(sa, "gcm", key[:-4], key[-4:], 8, 4, _ENC_GCM[enc], None)
    integ = _INTEG.get(sa.integrity)
    if integ is None:
        raise UnsupportedSaError(f"{what}: integrity algorithm {sa.integrity!r} is not "
                                 "supported here")
    if integ.key_len and len(sa.integrity_key) != integ.key_len:
        raise UnsupportedSaError(f"{what}: {sa.integrity} needs a {integ.key_len}-byte key, "
                                 f"not {len(sa.integrity_key)} bytes")
    if enc == _ENC_CBC:
        if len(key) not in (16, 24, 32):
            raise UnsupportedSaError(f"{what}: AES-CBC needs a 16/24/32-byte key, not "
                                     f"{len(key)} bytes")
        return _Suite(sa, "cbc", key, b"", 16, 16, integ.icv_len, integ)
    if enc == _ENC_CTR:
        if len(key) not in (20, 28, 36):
            raise UnsupportedSaError(f"{what}: AES-CTR needs a 16/24/32-byte key plus a 4-byte "
                                     f"nonce, not {len(key)} bytes")
        return _Suite(sa, "ctr", key[:-4], key[-4:], 8, 4, integ.icv_len, integ)
    if enc == _ENC_NULL:
        return _Suite(sa, "null", b"", b"", 0, 4, integ.icv_len, integ)
    raise UnsupportedSaError(f"{what}: encryption algorithm {enc!r} is not supported here "
                             f"(supported: {', '.join(SUPPORTED_ENCRYPTION)})")


# ---- results ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class DecryptResult:
    """What :meth:`EspDecryptor.decrypt` found for one ESP packet.

    ``payload`` is the decrypted ESP payload without padding (for tunnel mode, next header 4
    or 41, the inner IP packet); ``ip_packet`` is always an IP packet: the inner one in
    tunnel mode, or in transport mode the outer IP header (protocol / next header and length
    rewritten, UDP encapsulation and IPv6 extension headers dropped) plus the payload.
    ``icv_ok`` is True/False when an ICV was checked, None when there was none to check
    (NULL integrity) or the packet never got that far (unknown SPI, malformed).
    """

    status: str
    spi: int
    seq: int
    icv_ok: bool | None = None
    next_header: int | None = None
    payload: bytes | None = None
    ip_packet: bytes | None = None
    sa: EspSa | None = None
    src: str = ""
    dst: str = ""
    udp_encap: bool = False
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def inner_ip(self) -> Any:
        """``ip_packet`` decoded by dpkt (IP or IP6), or None."""
        from ipsec_nflog.nflog.packet import decode_ip

        return decode_ip(self.ip_packet)

    def label(self) -> str:
        """``[decrypted spi=0x... seq=N]`` or ``[ESP bad-icv spi=0x... seq=N: why]``."""
        where = f"spi=0x{self.spi:08x} seq={self.seq}"
        if self.ok:
            return f"[decrypted {where}]"
        return f"[ESP {self.status} {where}: {self.message}]"

    def describe(self) -> str:
        """One line: the label, then the inner packet's summary when decrypted; safe to print
        (:func:`ipsec_nflog.nflog.summary.printable`)."""
        from ipsec_nflog.nflog.summary import printable

        return printable(self._describe())

    def _describe(self) -> str:
        if not self.ok:
            return self.label()
        if self.next_header == 59:
            n = len(self.payload or b"")
            return f"{self.label()} dummy packet (next header 59), length {n}"
        ip = self.inner_ip
        if ip is None:
            return (f"{self.label()} next header {self.next_header}, undecodable, "
                    f"length {len(self.payload or b'')}")
        from ipsec_nflog.nflog.summary import describe_ip

        try:
            return f"{self.label()} {describe_ip(ip)}"
        except Exception as e:  # a summary must never stop a reader
            return f"{self.label()} undecodable inner packet ({type(e).__name__})"


# ---- locating ESP in an IP packet ------------------------------------------------------------

@dataclass(frozen=True)
class _Located:
    esp: bytes
    src: str
    dst: str
    header: bytes      # outer IP header (IPv4 with options; IPv6 fixed header)
    version: int
    udp_encap: bool
    truncated: bool
    fragment: bool


def _locate(packet: bytes, natt_ports: frozenset[int]) -> _Located | None:
    """The ESP bytes of an IP packet, or None if it carries no ESP."""
    if len(packet) < 20:
        return None
    version = packet[0] >> 4
    if version == 4:
        ihl = (packet[0] & 0x0F) * 4
        if ihl < 20 or len(packet) < ihl:
            return None
        total = struct.unpack_from(">H", packet, 2)[0]
        frag = struct.unpack_from(">H", packet, 6)[0]
        proto = packet[9]
        src, dst = str(ipaddress.IPv4Address(packet[12:16])), str(
            ipaddress.IPv4Address(packet[16:20]))
        if frag & 0x1FFF:                    # a later fragment: no ESP header in it
            return None
        fragment = bool(frag & 0x2000)
        header, off, end = packet[:ihl], ihl, total
    elif version == 6:
        if len(packet) < 40:
            return None
        plen = struct.unpack_from(">H", packet, 4)[0]
        proto, off, end = packet[6], 40, 40 + plen
        src, dst = str(ipaddress.IPv6Address(packet[8:24])), str(
            ipaddress.IPv6Address(packet[24:40]))
        header, fragment = packet[:40], False
        while proto in _IPV6_EXT or proto == 44:
            if off + 8 > len(packet):
                return None
            if proto == 44:                  # fragment header
                if struct.unpack_from(">H", packet, off + 2)[0] & 0xFFF8:
                    return None
                fragment = True
                proto, off = packet[off], off + 8
            else:
                proto, off = packet[off], off + (packet[off + 1] + 1) * 8
    else:
        return None
    truncated = end > len(packet)
    body = packet[off:min(end, len(packet))] if end >= off else b""
    udp_encap = False
    if proto == PROTO_UDP:
        if len(body) < 8:
            return None
        sport, dport = struct.unpack_from(">HH", body)
        if sport not in natt_ports and dport not in natt_ports:
            return None
        body = body[8:]
        if len(body) == 1 and body[0] == 0xFF:     # NAT-keepalive
            return None
        if len(body) >= 4 and body[:4] == b"\0\0\0\0":   # non-ESP marker: IKE
            return None
        if not body:
            return None
        udp_encap = True
    elif proto != PROTO_ESP:
        return None
    return _Located(bytes(body), src, dst, bytes(header), version, udp_encap, truncated,
                    fragment)


def _rebuild_ip(loc: _Located, next_header: int, payload: bytes) -> bytes:
    """Transport mode: the outer IP header, now carrying the decrypted payload."""
    if loc.version == 4:
        hdr = bytearray(loc.header)
        struct.pack_into(">H", hdr, 2, len(hdr) + len(payload))
        hdr[6:8] = b"\0\0"                 # the decrypted packet is whole
        hdr[9] = next_header
        hdr[10:12] = b"\0\0"
        s = sum(struct.unpack(f">{len(hdr) // 2}H", bytes(hdr)))
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        struct.pack_into(">H", hdr, 10, ~s & 0xFFFF)
        return bytes(hdr) + payload
    hdr = bytearray(loc.header[:40])
    struct.pack_into(">H", hdr, 4, len(payload))
    hdr[6] = next_header
    return bytes(hdr) + payload


# ---- the decryptor ---------------------------------------------------------------------------

@dataclass
class DecryptStats:
    """Counts of :meth:`EspDecryptor.decrypt` results by status."""

    counts: dict[str, int] = field(default_factory=dict)

    def add(self, status: str) -> None:
        self.counts[status] = self.counts.get(status, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        ok = self.counts.get(OK, 0)
        rest = ", ".join(f"{n} {s}" for s, n in sorted(self.counts.items()) if s != OK)
        return f"decrypted {ok} of {self.total} ESP packets" + (f" ({rest})" if rest else "")


class EspDecryptor:
    """Decrypts ESP packets with a set of SAs (:class:`ipsec_nflog.ipsec.keys.EspSa`).

    SAs are looked up by (SPI, destination address); if none matches, by SPI alone when the
    destination is a wildcard (``*`` in an esp_sa file) or only one SA has that SPI (NAT may
    rewrite the outer addresses). Several SAs with the same SPI (logs of several runs) are
    all tried, and the first whose ICV verifies wins.

    Raises :class:`UnsupportedSaError` for an SA it cannot use, unless ``skip_unsupported``:
    then such SAs are left out and described in ``warnings``.
    """

    def __init__(self, sas: Iterable[EspSa], *, natt_ports: Iterable[int] = (NATT_PORT,),
                 skip_unsupported: bool = False) -> None:
        self.warnings: list[str] = []
        self.stats = DecryptStats()
        self._natt_ports = frozenset(natt_ports)
        self._by_spi: dict[int, list[_Suite]] = {}
        seen: set[tuple[object, ...]] = set()
        for sa in sas:
            ident = (sa.spi, sa.src, sa.dst, sa.encryption, sa.encryption_key, sa.integrity,
                     sa.integrity_key)
            if ident in seen:
                continue
            seen.add(ident)
            try:
                suite = _suite(sa)
            except UnsupportedSaError as e:
                if not skip_unsupported:
                    raise
                self.warnings.append(str(e))
                continue
            self._by_spi.setdefault(sa.spi, []).append(suite)

    # -- constructors ------------------------------------------------------------------------
    @classmethod
    def from_files(cls, *, esp_sa: PathLike | None = None, logs: Sequence[PathLike] = (),
                   **kw: Any) -> EspDecryptor:
        """SAs from an ``esp_sa`` file or directory (:func:`read_esp_sa`) and charon logs
        (:func:`read_charon_logs`); the logs' warnings go into ``warnings``."""
        sas = keys.read_esp_sa(esp_sa) if esp_sa is not None else []
        from_logs, warnings = read_charon_logs(logs)
        dec = cls([*sas, *from_logs], **kw)
        dec.warnings[:0] = warnings
        return dec

    @classmethod
    def from_charon_logs(cls, paths: Sequence[PathLike], **kw: Any) -> EspDecryptor:
        """SAs from charon logs written with ``chd 4`` (``keys.parse_charon_log``)."""
        return cls.from_files(logs=paths, **kw)

    @classmethod
    def from_xfrm_state(cls, text: str, **kw: Any) -> EspDecryptor:
        """SAs from ``ip xfrm state`` output (``keys.parse_xfrm_state``)."""
        return cls(keys.parse_xfrm_state(text), **kw)

    @classmethod
    def from_wireshark_keys(cls, path: PathLike, **kw: Any) -> EspDecryptor:
        """SAs from an ``esp_sa`` file, or a directory holding one (as written by
        ``keys.write_wireshark_keys`` / ``ipsec-nflog keys --out DIR``)."""
        return cls(keys.read_esp_sa(path), **kw)

    @property
    def sas(self) -> list[EspSa]:
        return [s.sa for suites in self._by_spi.values() for s in suites]

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_spi.values())

    # -- decryption --------------------------------------------------------------------------
    def _candidates(self, spi: int, dst: str) -> list[_Suite]:
        suites = self._by_spi.get(spi, [])
        exact = [s for s in suites if _same_addr(s.sa.dst, dst)]
        if exact:
            return exact
        wild = [s for s in suites if s.sa.dst == "*"]
        if wild:
            return wild
        return suites if len(suites) == 1 else []

    def decrypt(self, ip_packet: Buffer) -> DecryptResult | None:
        """Decrypt one IP packet's ESP. None when the packet carries no ESP; otherwise a
        :class:`DecryptResult` (never an exception for a packet)."""
        try:
            loc = _locate(bytes(ip_packet), self._natt_ports)
        except (ValueError, struct.error, IndexError):
            return None
        if loc is None:
            return None
        result = self._decrypt(loc)
        self.stats.add(result.status)
        return result

    def _decrypt(self, loc: _Located) -> DecryptResult:
        esp = loc.esp
        base: dict[str, Any] = {"src": loc.src, "dst": loc.dst, "udp_encap": loc.udp_encap}
        if len(esp) < 8:
            return DecryptResult(MALFORMED, 0, 0, message=f"ESP header truncated "
                                 f"({len(esp)} bytes)", **base)
        spi, seq = struct.unpack_from(">II", esp)
        if loc.fragment:
            return DecryptResult(FRAGMENT, spi, seq, message="fragmented outer packet "
                                 "(not reassembled)", **base)
        if loc.truncated:
            return DecryptResult(MALFORMED, spi, seq, message="packet truncated by the "
                                 "capture's snaplen", **base)
        suites = self._candidates(spi, loc.dst)
        if not suites:
            return DecryptResult(UNKNOWN_SPI, spi, seq, message=f"no key for SPI 0x{spi:08x} "
                                 f"to {loc.dst}", **base)
        first: DecryptResult | None = None
        for suite in suites:
            r = _decrypt_with(suite, esp, spi, seq, loc, base)
            if r.icv_ok is not False:
                return r
            first = first or r
        assert first is not None
        return first


def _same_addr(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return False


def _decrypt_with(suite: _Suite, esp: bytes, spi: int, seq: int, loc: _Located,
                  base: dict[str, Any]) -> DecryptResult:
    icv_len, iv_len = suite.icv_len, suite.iv_len
    common: dict[str, Any] = {"sa": suite.sa, **base}
    if len(esp) < 8 + iv_len + icv_len + 2:
        return DecryptResult(MALFORMED, spi, seq, message=f"ESP packet too short "
                             f"({len(esp)} bytes)", **common)
    iv = esp[8:8 + iv_len]
    ct = esp[8 + iv_len:len(esp) - icv_len]
    icv = esp[len(esp) - icv_len:]
    icv_ok: bool | None
    if suite.kind == "gcm":
        dec = Cipher(algorithms.AES(suite.key),
                     modes.GCM(suite.salt + iv, icv, min_tag_length=icv_len)).decryptor()
        dec.authenticate_additional_data(esp[:8])
        try:
            plain = dec.update(ct) + dec.finalize()
        except InvalidTag:
            return DecryptResult(BAD_ICV, spi, seq, icv_ok=False,
                                 message="AES-GCM tag does not verify (wrong key or damaged "
                                         "packet)", **common)
        icv_ok = True
    else:
        integ = suite.integ
        assert integ is not None
        if integ.digest is not None:
            mac = hmac.new(suite.sa.integrity_key, esp[:len(esp) - icv_len],
                           integ.digest).digest()[:icv_len]
            if not hmac.compare_digest(mac, icv):
                return DecryptResult(BAD_ICV, spi, seq, icv_ok=False,
                                     message="HMAC ICV does not verify (wrong key or damaged "
                                             "packet)", **common)
            icv_ok = True
        else:
            icv_ok = None
        if len(ct) % suite.align:
            return DecryptResult(MALFORMED, spi, seq, icv_ok=icv_ok,
                                 message=f"ciphertext of {len(ct)} bytes is not a multiple "
                                         f"of {suite.align}", **common)
        if suite.kind == "cbc":
            d = Cipher(algorithms.AES(suite.key), modes.CBC(iv)).decryptor()
            plain = d.update(ct) + d.finalize()
        elif suite.kind == "ctr":
            d = Cipher(algorithms.AES(suite.key),
                       modes.CTR(suite.salt + iv + b"\0\0\0\1")).decryptor()
            plain = d.update(ct) + d.finalize()
        else:
            plain = ct
    if len(plain) < 2:
        return DecryptResult(MALFORMED, spi, seq, icv_ok=icv_ok,
                             message="no ESP trailer", **common)
    pad_len, next_header = plain[-2], plain[-1]
    if pad_len + 2 > len(plain) or plain[-2 - pad_len:-2] != bytes(range(1, pad_len + 1)):
        return DecryptResult(BAD_PADDING, spi, seq, icv_ok=icv_ok, next_header=next_header,
                             message="padding is not 1, 2, 3, ... (wrong encryption key?)",
                             **common)
    payload = plain[:-2 - pad_len]
    if next_header in (4, 41):
        ip_packet = payload
    elif next_header == 59:
        ip_packet = b""
    else:
        ip_packet = _rebuild_ip(loc, next_header, payload)
    return DecryptResult(OK, spi, seq, icv_ok=icv_ok, next_header=next_header,
                         payload=payload, ip_packet=ip_packet or None, **common)


def read_charon_logs(paths: Sequence[PathLike]) -> tuple[list[EspSa], list[str]]:
    """The ESP SAs of charon logs (``keys.parse_charon_log``) and its warnings, each
    prefixed with the file name. Each log is streamed with a bound per line
    (:class:`ipsec_nflog.ipsec.keys.LogLines`); what that leaves out is in the warnings too."""
    sas: list[EspSa] = []
    warnings: list[str] = []
    for path in paths:
        with keys.open_log(path) as lines:
            found = keys.parse_charon_log(lines)
        sas += found.esp
        warnings += [f"{os.fspath(path)}: {w}" for w in [*found.warnings, *lines.warnings()]]
    return sas, warnings


# ---- writing the decrypted packets -----------------------------------------------------------

class DecryptedWriter(CaptureWriter):
    """LINKTYPE_RAW pcap of decrypted inner IP packets (file safety and mode 0600 as for the
    capture writers: :func:`ipsec_nflog.files.writer.open_writer`'s options apply).
    :meth:`write_packet` buffers; :meth:`close` writes the rest. A packet whose timestamp a
    pcap record cannot hold (pcapng allows 64-bit ones) is not written and is counted in
    ``records_skipped``."""

    format = "raw"
    linktype = LINKTYPE_RAW
    _REC = struct.Struct("=IIII")
    _BATCH = 256

    def __init__(self, path: PathLike, **kw: Any) -> None:
        self._pending = bytearray()
        self._npending = 0
        super().__init__(path, **kw)

    def _encode(self, mv: memoryview, count: int) -> tuple[Buffer, int]:
        return mv, count   # the records are LINKTYPE_RAW pcap records already

    def write_packet(self, ts_sec: int, ts_usec: int, ip_packet: bytes) -> None:
        """Queue one IP packet with its (outer packet's) timestamp."""
        if not (0 <= ts_sec <= 0xFFFFFFFF and 0 <= ts_usec < 1_000_000):
            self.records_skipped += 1
            return
        self._pending += self._REC.pack(ts_sec, ts_usec, len(ip_packet), len(ip_packet))
        self._pending += ip_packet
        self._npending += 1
        if self._npending >= self._BATCH:
            self.flush_pending()

    def flush_pending(self) -> None:
        if self._npending:
            data, n = bytes(self._pending), self._npending
            self._pending.clear()
            self._npending = 0
            self.write_records(data, n)

    def close(self, stats: Any = None) -> None:
        if not (self.closed or self._failed):
            try:
                self.flush_pending()
            except BaseException:
                super().close(stats)
                raise
        super().close(stats)
