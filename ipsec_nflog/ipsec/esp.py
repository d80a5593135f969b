"""ESP decryption: :class:`EspDecryptor` finds a packet's SA, verifies the ICV, deciphers
and checks the padding; the result of each packet is a :class:`DecryptResult` (see
:mod:`ipsec_nflog.ipsec.decrypt` for the algorithms and limitations)."""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ipsec_nflog.files.format import Buffer
from ipsec_nflog.ipsec.charon_log import read_charon_logs
from ipsec_nflog.ipsec.esn import EsnWindow
from ipsec_nflog.ipsec.esp_packet import NATT_PORT, LocatedEsp, locate_esp, rebuild_ip
from ipsec_nflog.ipsec.esp_suite import EspSuite, UnsupportedSaError, suite_for
from ipsec_nflog.ipsec.loglines import PathLike
from ipsec_nflog.ipsec.sa import EspSa
from ipsec_nflog.ipsec.tcpdump_secrets import load_tcpdump_secrets, parse_tcpdump_secrets
from ipsec_nflog.ipsec.wireshark import read_esp_sa
from ipsec_nflog.ipsec.xfrm import parse_xfrm_state

__all__ = [
    "BAD_ICV",
    "BAD_PADDING",
    "FRAGMENT",
    "MALFORMED",
    "OK",
    "UNKNOWN_SPI",
    "DecryptResult",
    "DecryptStats",
    "EspDecryptor",
]

# DecryptResult.status values
OK = "ok"
BAD_ICV = "bad-icv"            # the ICV (HMAC or GCM tag) does not verify: wrong keys or damage
BAD_PADDING = "bad-padding"    # ICV fine (or none), but the padding is wrong: wrong cipher key
UNKNOWN_SPI = "unknown-spi"    # no SA for this SPI (and destination)
MALFORMED = "malformed"        # too short / truncated by the snaplen / not a block multiple
FRAGMENT = "fragment"          # first fragment of a fragmented outer packet


@dataclass(frozen=True)
class DecryptResult:
    """What :meth:`EspDecryptor.decrypt` found for one ESP packet.

    ``payload`` is the decrypted ESP payload without padding (for tunnel mode, next header 4
    or 41, the inner IP packet); ``ip_packet`` is always an IP packet: the inner one in
    tunnel mode, or in transport mode the outer IP header (protocol / next header and length
    rewritten, UDP encapsulation and IPv6 extension headers dropped) plus the payload.
    ``icv_ok`` is True/False when an ICV was checked, None when there was none to check
    (NULL integrity), it was skipped unchecked (``icv_skipped`` bytes of it: Wireshark's "ANY
    n bit" integrity, tcpdump's "-hmac96" secrets) or the packet never got that far (unknown
    SPI, malformed). ``seq`` is the sequence number on the wire; for an SA with extended
    sequence numbers, ``seq_hi`` is the high 32 bits the ICV verified with (``full_seq``).
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
    seq_hi: int | None = None
    icv_skipped: int = 0

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def full_seq(self) -> int:
        """The 64-bit sequence number of an ESN SA's packet, else the 32-bit one."""
        return self.seq if self.seq_hi is None else self.seq_hi << 32 | self.seq

    @property
    def inner_ip(self) -> Any:
        """``ip_packet`` decoded by dpkt (IP or IP6), or None."""
        from ipsec_nflog.nflog.packet import decode_ip

        return decode_ip(self.ip_packet)

    def label(self) -> str:
        """``[decrypted spi=0x... seq=N]`` or ``[ESP bad-icv spi=0x... seq=N: why]``; an ESN
        SA's packet shows its 64-bit number (``seq=4294967297 (ESN)``), a packet nothing
        authenticated says so (``, ICV not checked`` / ``, no ICV``)."""
        where = f"spi=0x{self.spi:08x} seq={self.full_seq}"
        if self.seq_hi is not None:
            where += " (ESN)"
        if not self.ok:
            return f"[ESP {self.status} {where}: {self.message}]"
        if self.icv_ok is None:
            where += ", ICV not checked" if self.icv_skipped else ", no ICV"
        return f"[decrypted {where}]"

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
            return f"{self.label()} {describe_ip(ip, self.ip_packet)}"
        except Exception as e:  # a summary must never stop a reader
            return f"{self.label()} undecodable inner packet ({type(e).__name__})"


@dataclass
class DecryptStats:
    """Counts of :meth:`EspDecryptor.decrypt` results by status."""

    counts: dict[str, int] = field(default_factory=dict)
    unauthenticated: int = 0      # decrypted, but no ICV verified them

    def add(self, status: str) -> None:
        self.counts[status] = self.counts.get(status, 0) + 1

    def add_result(self, result: DecryptResult) -> None:
        self.add(result.status)
        if result.ok and result.icv_ok is None:
            self.unauthenticated += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        ok = self.counts.get(OK, 0)
        rest = ", ".join(f"{n} {s}" for s, n in sorted(self.counts.items()) if s != OK)
        unchecked = (f", {self.unauthenticated} of them not authenticated (ICV not checked "
                     "or none)" if self.unauthenticated else "")
        return (f"decrypted {ok} of {self.total} ESP packets{unchecked}"
                + (f" ({rest})" if rest else ""))


class EspDecryptor:
    """Decrypts ESP packets with a set of SAs (:class:`ipsec_nflog.ipsec.keys.EspSa`).

    SAs are looked up by (SPI, destination address); if none matches, by SPI alone when the
    destination is a wildcard (``*`` in an esp_sa file) or only one SA has that SPI (NAT may
    rewrite the outer addresses). Several SAs with the same SPI (logs of several runs) are
    all tried, and the first whose ICV verifies wins.

    Extended sequence numbers (RFC 4303): an SA whose ``esn`` is set has the high 32 bits of
    each packet's sequence number inferred (:class:`ipsec_nflog.ipsec.esn.EsnWindow`, per SA)
    and covered by the ICV. An SA not known to use them (an esp_sa file or tcpdump's secrets
    cannot say, a log without ``cfg 2`` does not) becomes an ESN SA when only the 64-bit
    number verifies its ICV. Without an ICV to check, ESN makes no difference to decryption.

    Raises :class:`UnsupportedSaError` for an SA it cannot use, unless ``skip_unsupported``:
    then such SAs are left out and described in ``warnings``.
    """

    def __init__(self, sas: Iterable[EspSa], *, natt_ports: Iterable[int] = (NATT_PORT,),
                 skip_unsupported: bool = False) -> None:
        self.warnings: list[str] = []
        self.stats = DecryptStats()
        self._natt_ports = frozenset(natt_ports)
        self._by_spi: dict[int, list[_SaState]] = {}
        seen: set[tuple[object, ...]] = set()
        for sa in sas:
            ident = (sa.spi, sa.src, sa.dst, sa.encryption, sa.encryption_key, sa.integrity,
                     sa.integrity_key, sa.esn)
            if ident in seen:
                continue
            seen.add(ident)
            try:
                suite = suite_for(sa)
            except UnsupportedSaError as e:
                if not skip_unsupported:
                    raise
                self.warnings.append(str(e))
                continue
            self._by_spi.setdefault(sa.spi, []).append(_SaState(suite))

    # -- constructors ------------------------------------------------------------------------
    @classmethod
    def from_files(cls, *, esp_sa: PathLike | None = None, logs: Sequence[PathLike] = (),
                   esp_secrets: str | None = None, natt_ports: Iterable[int] = (NATT_PORT,),
                   skip_unsupported: bool = False) -> EspDecryptor:
        """SAs from an ``esp_sa`` file or directory (``keys.read_esp_sa``), charon logs
        (``keys.read_charon_logs``) and tcpdump's ``-E`` secrets (a file, or a spec:
        :func:`~ipsec_nflog.ipsec.tcpdump_secrets.load_tcpdump_secrets`); the logs' and the
        secrets' warnings go into ``warnings``."""
        sas = read_esp_sa(esp_sa) if esp_sa is not None else []
        secrets, secret_warnings = (load_tcpdump_secrets(esp_secrets)
                                    if esp_secrets is not None else ([], []))
        from_logs, warnings = read_charon_logs(logs)
        dec = cls([*sas, *secrets, *from_logs], natt_ports=natt_ports,
                  skip_unsupported=skip_unsupported)
        dec.warnings[:0] = [*secret_warnings, *warnings]
        return dec

    @classmethod
    def from_charon_logs(cls, paths: Sequence[PathLike], *,
                         natt_ports: Iterable[int] = (NATT_PORT,),
                         skip_unsupported: bool = False) -> EspDecryptor:
        """SAs from charon logs written with ``chd 4`` (``keys.parse_charon_log``)."""
        return cls.from_files(logs=paths, natt_ports=natt_ports,
                              skip_unsupported=skip_unsupported)

    @classmethod
    def from_xfrm_state(cls, text: str, *, natt_ports: Iterable[int] = (NATT_PORT,),
                        skip_unsupported: bool = False) -> EspDecryptor:
        """SAs from ``ip xfrm state`` output (``keys.parse_xfrm_state``)."""
        return cls(parse_xfrm_state(text), natt_ports=natt_ports,
                   skip_unsupported=skip_unsupported)

    @classmethod
    def from_wireshark_keys(cls, path: PathLike, *, natt_ports: Iterable[int] = (NATT_PORT,),
                            skip_unsupported: bool = False) -> EspDecryptor:
        """SAs from an ``esp_sa`` file, or a directory holding one (as written by
        ``keys.write_wireshark_keys`` / ``ipsec-nflog keys --out DIR``)."""
        return cls(read_esp_sa(path), natt_ports=natt_ports, skip_unsupported=skip_unsupported)

    @classmethod
    def from_tcpdump_secrets(cls, spec: str, *, natt_ports: Iterable[int] = (NATT_PORT,),
                             skip_unsupported: bool = False) -> EspDecryptor:
        """SAs from what ``tcpdump -E`` takes: ``"0x1234@192.0.2.2 aes128-cbc-hmac96:0x..."``
        entries, comma or newline separated, or ``"file NAME"``
        (:mod:`ipsec_nflog.ipsec.tcpdump_secrets`); its warnings go into ``warnings``. ICVs
        are skipped, never checked: tcpdump's secrets have no integrity key."""
        sas, warnings = parse_tcpdump_secrets(spec)
        dec = cls(sas, natt_ports=natt_ports, skip_unsupported=skip_unsupported)
        dec.warnings[:0] = warnings
        return dec

    @property
    def sas(self) -> list[EspSa]:
        return [s.suite.sa for states in self._by_spi.values() for s in states]

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_spi.values())

    # -- decryption --------------------------------------------------------------------------
    def _candidates(self, spi: int, dst: str) -> list[_SaState]:
        states = self._by_spi.get(spi, [])
        exact = [s for s in states if _same_addr(s.suite.sa.dst, dst)]
        if exact:
            return exact
        wild = [s for s in states if s.suite.sa.dst == "*"]
        if wild:
            return wild
        return states if len(states) == 1 else []

    def decrypt(self, ip_packet: Buffer) -> DecryptResult | None:
        """Decrypt one IP packet's ESP. None when the packet carries no ESP; otherwise a
        :class:`DecryptResult` (never an exception for a packet)."""
        try:
            loc = locate_esp(bytes(ip_packet), self._natt_ports)
        except (ValueError, struct.error, IndexError):
            return None
        if loc is None:
            return None
        result = self._decrypt(loc)
        self.stats.add_result(result)
        return result

    def _decrypt(self, loc: LocatedEsp) -> DecryptResult:
        if len(loc.esp) < 8:
            return _EspPacket(loc, 0, 0).result(
                MALFORMED, f"ESP header truncated ({len(loc.esp)} bytes)")
        pkt = _EspPacket(loc, *struct.unpack_from(">II", loc.esp))
        if loc.fragment:
            return pkt.result(FRAGMENT, "fragmented outer packet (not reassembled)")
        if loc.truncated:
            return pkt.result(MALFORMED, "packet truncated by the capture's snaplen")
        states = self._candidates(pkt.spi, loc.dst)
        if not states:
            return pkt.result(UNKNOWN_SPI, f"no key for SPI 0x{pkt.spi:08x} to {loc.dst}")
        first: DecryptResult | None = None
        for state in states:
            r = _decrypt_with(state, pkt)
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


# The high sequence bits tried for an SA not known to use ESN: none (32-bit sequence numbers),
# then ESN's first two blocks (what EsnWindow().candidates gives before any packet verified).
_NOT_KNOWN_ESN: tuple[int | None, ...] = (None, 0, 1)


class _SaState:
    """One SA of a decryptor: its suite and, once it is known to use extended sequence
    numbers, where they are."""

    __slots__ = ("esn", "suite")

    def __init__(self, suite: EspSuite) -> None:
        self.suite = suite
        self.esn: EsnWindow | None = EsnWindow() if suite.sa.esn else None

    def high_bits_to_try(self, seq_lo: int) -> tuple[int | None, ...]:
        return _NOT_KNOWN_ESN if self.esn is None else self.esn.candidates(seq_lo)

    def authenticated(self, seq_hi: int, seq_lo: int) -> None:
        if self.esn is None:
            self.esn = EsnWindow()     # only the 64-bit number verified: an ESN SA
        self.esn.authenticated(seq_hi, seq_lo)


class _EspPacket(NamedTuple):   # a tuple: built for every packet
    """An ESP packet being decrypted: where it was found, its SPI and sequence number."""

    loc: LocatedEsp
    spi: int
    seq: int

    def result(self, status: str, message: str = "", *, sa: EspSa | None = None,
               icv_ok: bool | None = None, next_header: int | None = None,
               payload: bytes | None = None, ip_packet: bytes | None = None,
               seq_hi: int | None = None, icv_skipped: int = 0) -> DecryptResult:
        loc = self.loc   # positional: this runs for every packet
        return DecryptResult(status, self.spi, self.seq, icv_ok, next_header, payload,
                             ip_packet, sa, loc.src, loc.dst, loc.udp_encap, message, seq_hi,
                             icv_skipped)


def _authenticate(state: _SaState, pkt: _EspPacket, iv: bytes, ct: bytes,
                  icv: bytes) -> tuple[int | None, bytes | None] | None:
    """Verify the ICV: None when it does not; else the high sequence bits it verified with
    (None: 32-bit sequence numbers) and, for AES-GCM, the plaintext."""
    suite, esp = state.suite, pkt.loc.esp
    signed = esp[:len(esp) - len(icv)]
    for seq_hi in state.high_bits_to_try(pkt.seq):
        plain = None
        if suite.kind == "gcm":
            plain = suite.open_aead(esp[:8], iv, ct, icv, seq_hi)
            if plain is None:
                continue
        elif not suite.icv_ok(signed, icv, seq_hi):
            continue
        if seq_hi is not None:
            state.authenticated(seq_hi, pkt.seq)
        return seq_hi, plain
    return None


def _decrypt_with(state: _SaState, pkt: _EspPacket) -> DecryptResult:
    suite = state.suite
    esp, sa = pkt.loc.esp, suite.sa
    icv_len, iv_len = suite.icv_len, suite.iv_len
    if len(esp) < 8 + iv_len + icv_len + 2:
        return pkt.result(MALFORMED, f"ESP packet too short ({len(esp)} bytes)", sa=sa)
    iv = esp[8:8 + iv_len]
    ct = esp[8 + iv_len:len(esp) - icv_len]
    icv = esp[len(esp) - icv_len:]
    seq_hi: int | None = None
    plain: bytes | None = None
    icv_ok: bool | None = None
    if suite.checks_icv:
        verified = _authenticate(state, pkt, iv, ct, icv)
        if verified is None:
            what = "AES-GCM tag" if suite.kind == "gcm" else "HMAC ICV"
            return pkt.result(BAD_ICV, f"{what} does not verify (wrong key or damaged packet)",
                              sa=sa, icv_ok=False)
        (seq_hi, plain), icv_ok = verified, True
    if plain is None:
        if len(ct) % suite.align:
            hint = _icv_hint(suite)
            return pkt.result(MALFORMED, f"ciphertext of {len(ct)} bytes is not a multiple of "
                              f"{suite.align}" + (f" ({hint})" if hint else ""), sa=sa,
                              icv_ok=icv_ok)
        plain = suite.decipher(iv, ct)
    return _unpad(pkt, suite, plain, icv_ok, seq_hi)


def _icv_hint(suite: EspSuite) -> str:
    """For an SA whose keys name no ICV: the packets may have one all the same."""
    if suite.icv_len or suite.kind == "gcm":
        return ""
    return "an ICV the keys do not name? tcpdump: ALGO-hmac96"


def _unpad(pkt: _EspPacket, suite: EspSuite, plain: bytes, icv_ok: bool | None,
           seq_hi: int | None) -> DecryptResult:
    """The result of a deciphered payload: its ESP trailer checked and removed."""
    sa = suite.sa
    if len(plain) < 2:
        return pkt.result(MALFORMED, "no ESP trailer", sa=sa, icv_ok=icv_ok)
    pad_len, next_header = plain[-2], plain[-1]
    if pad_len + 2 > len(plain) or plain[-2 - pad_len:-2] != bytes(range(1, pad_len + 1)):
        hint = _icv_hint(suite)
        return pkt.result(BAD_PADDING, "padding is not 1, 2, 3, ... (wrong encryption key"
                          + (f", or {hint})" if hint else "?)"), sa=sa, icv_ok=icv_ok,
                          next_header=next_header)
    payload = plain[:-2 - pad_len]
    if next_header in (4, 41):
        ip_packet = payload
    elif next_header == 59:
        ip_packet = b""
    else:
        ip_packet = rebuild_ip(pkt.loc, next_header, payload)
    return pkt.result(OK, sa=sa, icv_ok=icv_ok, next_header=next_header, payload=payload,
                      ip_packet=ip_packet or None, seq_hi=seq_hi,
                      icv_skipped=0 if suite.checks_icv else suite.icv_len)
