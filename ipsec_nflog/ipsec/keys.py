"""Wireshark decryption keys for IKEv2 and ESP, from charon logs and ``ip xfrm state``.

The reference article: IKE keys are in charon's log at level 4 of the ``ike`` subsystem, ESP
keys at level 4 of ``chd`` or in ``ip xfrm state``; strongSwan's save-keys plugin (not shipped
by Debian 12) writes them as Wireshark's ``esp_sa`` and ``ikev2_decryption_table`` files. This
module does the same from the log (and from ``ip xfrm state``), byte for byte in save-keys'
format, and renders the matching ``tshark -o uat:...`` options.

Pure Python; it never imports the compiled core. Charon settings that make a log usable::

    charon { filelog { keys { path = /var/log/charon-keys.log
                              ike = 4
                              chd = 4
                              cfg = 2      # "selected proposal" lines (optional)
                              ike_name = yes } } }

``ike_name = yes`` lets IKE keys be matched to their SPIs when several IKE_SAs are negotiated
at once; without it, keys are matched to the most recent SPIs in the log. A log at these
levels contains secrets: keep it (and the files written here, mode 0600) private.

Logs (and ``esp_sa`` / ``ip xfrm state`` files) are streamed line by line, never read whole:
:class:`LogLines` bounds a line to ``MAX_LOG_LINE`` bytes (longer lines are skipped and
counted in a warning), and a file with no line break in ``MAX_LOG_GAP`` bytes is not a text
log (``/dev/zero``): reading it stops there with a warning. Memory stays bounded whatever the
input. Keys and warnings printed on the command line go through
:func:`ipsec_nflog.nflog.summary.printable` (a log is untrusted input), and output files are
created without following planted links (:mod:`ipsec_nflog.files.durable`).

Limitations: IKEv1 is not handled; an IKE_SA created by an IKE rekeying has no logged SPIs
(no NAT-D), so it is reported with the SPIs unknown and left out of the IKEv2 table.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import errno
import ipaddress
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Union

from ipsec_nflog.files.durable import create_output_file

__all__ = [
    "EspSa",
    "IkeSa",
    "KeyExtractionError",
    "LogKeys",
    "LogLines",
    "add_arguments",
    "esp_sa_line",
    "ikev2_line",
    "open_log",
    "parse_charon_log",
    "parse_xfrm_state",
    "read_esp_sa",
    "read_xfrm_state",
    "tshark_options",
    "write_esp_sa",
    "write_ikev2_decryption_table",
    "write_wireshark_keys",
]

ESP_SA_FILE = "esp_sa"
IKEV2_FILE = "ikev2_decryption_table"
MAX_LOG_LINE = 64 * 1024  # bytes; charon's longest lines (hex dumps) are ~100
MAX_LOG_GAP = 16 * 1024 * 1024  # no line break in this many bytes: not a text log


class KeyExtractionError(ValueError):
    """A log or xfrm dump that cannot be turned into keys (message says why)."""


# ---- Wireshark algorithm names (the strings of Wireshark's UAT value lists) ------------------

# IKEv2 encryption, by (strongSwan algorithm name, key bits).
_IKE_ENC = {
    ("3DES_CBC", 192): "3DES [RFC2451]",
    ("NULL", 0): "NULL [RFC2410]",
    **{("AES_CBC", b): f"AES-CBC-{b} [RFC3602]" for b in (128, 192, 256)},
    **{("AES_CTR", b): f"AES-CTR-{b} [RFC5930]" for b in (128, 192, 256)},
    **{(f"AES_GCM_{i}", b): f"AES-GCM-{b} with {i} octet ICV [RFC5282]"
       for i in (8, 12, 16) for b in (128, 192, 256)},
    **{(f"AES_CCM_{i}", b): f"AES-CCM-{b} with {i} octet ICV [RFC5282]"
       for i in (8, 12, 16) for b in (128, 192, 256)},
}
_IKE_INTEG = {
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
_ESP_ENC = {
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
_ESP_INTEG = {
    "HMAC_SHA1_96": "HMAC-SHA-1-96 [RFC2404]",
    "HMAC_MD5_96": "HMAC-MD5-96 [RFC2403]",
    "HMAC_SHA2_256_128": "HMAC-SHA-256-128 [RFC4868]",
    "HMAC_SHA2_384_192": "HMAC-SHA-384-192 [RFC4868]",
    "HMAC_SHA2_512_256": "HMAC-SHA-512-256 [RFC4868]",
    "HMAC_SHA2_256_96": "HMAC-SHA-256-96 [draft-ietf-ipsec-ciph-sha-256-00]",
    "NONE": "NULL",
}


# Kernel (xfrm) algorithm names → Wireshark.
_XFRM_ENC = {
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
_XFRM_AEAD_ICV = {"rfc4106(gcm(aes))": "AES-GCM with {octets} octet ICV [RFC4106]"}
_XFRM_AUTH = {
    ("hmac(sha1)", 96): "HMAC-SHA-1-96 [RFC2404]",
    ("hmac(md5)", 96): "HMAC-MD5-96 [RFC2403]",
    ("hmac(sha256)", 128): "HMAC-SHA-256-128 [RFC4868]",
    ("hmac(sha256)", 96): "HMAC-SHA-256-96 [draft-ietf-ipsec-ciph-sha-256-00]",
    ("hmac(sha384)", 192): "HMAC-SHA-384-192 [RFC4868]",
    ("hmac(sha512)", 256): "HMAC-SHA-512-256 [RFC4868]",
    ("digest_null", 0): "NULL",
}
# Untruncated "auth" lines use the algorithm's default truncation (RFC 4868 / 2404).
_XFRM_AUTH_DEFAULT_BITS = {"hmac(sha1)": 96, "hmac(md5)": 96, "hmac(sha256)": 96,
                           "hmac(sha384)": 192, "hmac(sha512)": 256, "digest_null": 0}


# ---- data model ------------------------------------------------------------------------------

@dataclass(frozen=True)
class EspSa:
    """One direction of a CHILD_SA: what Wireshark's ``esp_sa`` table needs, plus context."""

    src: str
    dst: str
    spi: int
    encryption: str            # Wireshark name, e.g. "AES-CBC [RFC3602]"
    encryption_key: bytes      # for AES-GCM: key || 4-byte salt, as Wireshark wants it
    integrity: str             # Wireshark name, e.g. "HMAC-SHA-256-128 [RFC4868]"
    integrity_key: bytes = b""
    reqid: int | None = None
    mode: str | None = None
    encap: tuple[int, int] | None = None  # ESP-in-UDP (sport, dport)
    source: str = ""           # "log" or "xfrm"

    @property
    def family(self) -> str:
        return "IPv6" if ipaddress.ip_address(self.src).version == 6 else "IPv4"

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
    """Everything :func:`parse_charon_log` found."""

    ike: list[IkeSa] = field(default_factory=list)
    esp: list[EspSa] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# ---- UAT lines (save-keys' exact format) -----------------------------------------------------

def _hex(b: bytes) -> str:
    return b.hex()


def esp_sa_line(sa: EspSa) -> str:
    """One ``esp_sa`` record, as strongSwan's save-keys plugin writes it (no newline)."""
    return (f'"{sa.family}","{sa.src}","{sa.dst}","0x{sa.spi:08x}","{sa.encryption}",'
            f'"0x{_hex(sa.encryption_key)}","{sa.integrity}","0x{_hex(sa.integrity_key)}"')


def ikev2_line(sa: IkeSa) -> str:
    """One ``ikev2_decryption_table`` record, as save-keys writes it (no newline)."""
    if sa.spi_i is None or sa.spi_r is None:
        raise KeyExtractionError("IKE_SA without SPIs cannot go into the IKEv2 table")
    return (f"{sa.spi_i.hex()},{sa.spi_r.hex()},{_hex(sa.sk_ei)},{_hex(sa.sk_er)},"
            f'"{sa.encryption}",{_hex(sa.sk_ai)},{_hex(sa.sk_ar)},"{sa.integrity}"')


def _write_private(path: Union[str, os.PathLike[str]], lines: Iterable[str],
                   append: bool) -> None:
    name = os.fspath(path)
    fd = _open_for_append(name) if append else create_output_file(
        name, overwrite=True, mode=0o600, what="key file")[0]
    try:
        with os.fdopen(fd, "w", encoding="ascii", closefd=False) as f:
            for line in lines:
                f.write(line + "\n")
    finally:
        os.close(fd)


def _open_for_append(path: str) -> int:
    """An existing key file of ours to append to (never through a link: a planted symlink
    or hard link would send the keys elsewhere), or a new one."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return create_output_file(path, overwrite=False, mode=0o600, what="key file")[0]
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, f"key file {path} is a symbolic link; not following "
                          "it", path) from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_uid != os.geteuid():
        os.close(fd)
        raise PermissionError(errno.EPERM, f"key file {path} is not a regular file of ours "
                              "with a single link; not appending to it", path)
    os.fchmod(fd, 0o600)  # also when the file existed with wider permissions
    return fd


def _dedup(lines: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(lines))


def write_esp_sa(path: Union[str, os.PathLike[str]], sas: Iterable[EspSa], *,
                 append: bool = False) -> None:
    """Write Wireshark's ``esp_sa`` UAT file (mode 0600)."""
    _write_private(path, _dedup(esp_sa_line(s) for s in sas), append)


def write_ikev2_decryption_table(path: Union[str, os.PathLike[str]], sas: Iterable[IkeSa], *,
                                 append: bool = False) -> None:
    """Write Wireshark's ``ikev2_decryption_table`` UAT file (mode 0600); SAs without SPIs
    are left out."""
    _write_private(path, _dedup(ikev2_line(s) for s in sas if s.complete), append)


def write_wireshark_keys(directory: Union[str, os.PathLike[str]], *,
                         ike: Iterable[IkeSa] = (), esp: Iterable[EspSa] = (),
                         append: bool = False) -> dict[str, str]:
    """Write both files into ``directory`` (e.g. a Wireshark profile directory, or the
    save-keys ``wireshark_keys`` directory). Returns {table name: path}. A symbolic link of
    someone else's in place of the directory is refused (it would send the keys elsewhere)."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    st = os.lstat(directory)
    if stat.S_ISLNK(st.st_mode) and st.st_uid not in (0, os.geteuid()):
        raise PermissionError(errno.EPERM, f"key directory {os.fspath(directory)} is a symbolic "
                              f"link owned by uid {st.st_uid}; not following it", directory)
    paths = {ESP_SA_FILE: os.path.join(directory, ESP_SA_FILE),
             IKEV2_FILE: os.path.join(directory, IKEV2_FILE)}
    write_esp_sa(paths[ESP_SA_FILE], esp, append=append)
    write_ikev2_decryption_table(paths[IKEV2_FILE], ike, append=append)
    return paths


def tshark_options(*, esp: Iterable[EspSa] = (), ike: Iterable[IkeSa] = (),
                   check_icv: bool = True, udpencap_port: int | None = None) -> list[str]:
    """``tshark``/``wireshark`` argv items that load these keys, e.g.
    ``["tshark", "-r", "cap.pcap", *tshark_options(esp=sas)]``. No shell quoting needed."""
    opts: list[str] = []
    esp_lines = _dedup(esp_sa_line(s) for s in esp)
    if esp_lines:
        opts += ["-o", "esp.enable_encryption_decode:TRUE"]
        if check_icv:
            opts += ["-o", "esp.enable_authentication_check:TRUE"]
        for line in esp_lines:
            opts += ["-o", f"uat:esp_sa:{line}"]
    for line in _dedup(ikev2_line(s) for s in ike if s.complete):
        opts += ["-o", f"uat:ikev2_decryption_table:{line}"]
    if udpencap_port is not None:
        opts += ["-d", f"udp.port=={udpencap_port},udpencap"]
    return opts


# ---- reading logs with bounded memory ----------------------------------------------------------

class LogLines:
    """The lines of a text file, streamed: each is decoded as UTF-8 (errors replaced) and
    keeps its line ending. A line longer than ``max_line`` bytes is skipped (``skipped``
    counts them); no line break in ``max_gap`` bytes means the file is not a text log, and
    iteration stops there (``stopped_at`` is the offset of that line). ``warnings()`` says
    what was left out. Memory is bounded by ``max_line``, whatever the file."""

    def __init__(self, f: IO[bytes], *, max_line: int = MAX_LOG_LINE,
                 max_gap: int = MAX_LOG_GAP) -> None:
        self._f = f
        self.max_line, self.max_gap = max_line, max_gap
        self.skipped = 0
        self.stopped_at: int | None = None

    def __iter__(self) -> Iterator[str]:
        offset = 0
        while line := self._f.readline(self.max_line + 1):
            start = offset
            offset += len(line)
            if len(line) <= self.max_line or line.endswith(b"\n"):
                yield line.decode("utf-8", "replace")
                continue
            while not line.endswith(b"\n"):  # skip the rest of the long line
                line = self._f.readline(self.max_line)
                offset += len(line)
                if not line:
                    break
                if offset - start > self.max_gap:
                    self.stopped_at = start
                    return
            self.skipped += 1

    def warnings(self) -> list[str]:
        out = []
        if self.skipped:
            out.append(f"{self.skipped} line(s) longer than {self.max_line} bytes skipped")
        if self.stopped_at is not None:
            out.append(f"no line break in {self.max_gap} bytes from byte offset "
                       f"{self.stopped_at}: not a text log, stopped reading it there")
        return out


@contextlib.contextmanager
def open_log(path: Union[str, os.PathLike[str]]) -> Iterator[LogLines]:
    """:class:`LogLines` of a file, or of standard input for ``"-"``."""
    if os.fspath(path) == "-":
        yield LogLines(sys.stdin.buffer)
        return
    with open(path, "rb") as f:
        yield LogLines(f)


# ---- charon log --------------------------------------------------------------------------------

# "<time> 09[IKE] <t|1> message" (filelog) or "... charon-systemd[12]: 09[IKE] <1> message".
_LINE_RE = re.compile(r"(?:^|\s)(\d{2,})\[([A-Z]{3})\] (?:<([^>]*)> )?(.*)$")
_DUMP_HDR_RE = re.compile(r"^(.*?) => (\d+) bytes @ (?:0x)?[0-9a-fA-F]+\s*$")
_DUMP_ROW_RE = re.compile(r"^\s*(\d+): ((?:[0-9A-Fa-f]{2} ?){1,16})")
_ESP_SPI_RE = re.compile(r"^\s*SPI 0x([0-9a-fA-F]{1,8}), src (\S+) dst (\S+)")
_ADDING_RE = re.compile(r"^adding (inbound|outbound) (ESP|AH) SA")
_PARSED_RE = re.compile(r"^parsed (\S+) (request|response) \d+")
_USING_RE = re.compile(r"^\s*using (\S+) for (encryption|integrity)")
_SELECTED_RE = re.compile(r"^selected proposal: (IKE|ESP|AH):(\S+)")
_IKE_KEYS = ("Sk_ei", "Sk_er", "Sk_ai", "Sk_ar")
_CHILD_KEYS = {"encryption initiator key": "ei", "encryption responder key": "er",
               "integrity initiator key": "ai", "integrity responder key": "ar"}


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _ctx_of(tag: str | None) -> int | None:
    """IKE_SA unique id from an ``<name|id>`` / ``<id>`` tag."""
    if not tag:
        return None
    m = re.search(r"(\d+)$", tag)
    return int(m.group(1)) if m else None


def _name_of(tag: str | None) -> str | None:
    if tag and "|" in tag:
        return tag.rsplit("|", 1)[0]
    return None


@dataclass
class _IkeState:
    spis: tuple[bytes, bytes] | None = None
    keys: dict[str, bytes] = field(default_factory=dict)
    proposal: str | None = None
    name: str | None = None
    emitted: int = 0


@dataclass
class _ChildState:
    keys: dict[str, bytes] = field(default_factory=dict)
    enc_alg: str | None = None
    integ_alg: str | None = None
    proposal: str | None = None
    initiator: bool | None = None
    pending: str | None = None    # "inbound"/"outbound" awaiting its SPI line
    protocol: str = "ESP"


def _split_ike_proposal(proposal: str) -> tuple[str | None, int | None, str | None]:
    """'AES_CBC_256/HMAC_SHA2_256_128/PRF_.../MODP_2048' → ('AES_CBC', 256, 'HMAC_...')."""
    enc = bits = integ = None
    for part in proposal.split("/"):
        m = re.match(r"^(AES_(?:GCM|CCM)_(?:8|12|16)|AES_CBC|AES_CTR|3DES_CBC|NULL)"
                     r"(?:_(\d+))?$", part)
        if m and enc is None:
            enc = m.group(1)
            bits = int(m.group(2)) if m.group(2) else (192 if enc == "3DES_CBC" else 0)
            continue
        if part in _IKE_INTEG and integ is None:
            integ = part
    return enc, bits, integ


def _infer_ike_algs(keys: dict[str, bytes], proposal: str | None) -> tuple[str, str]:
    enc_name = integ_name = None
    if proposal:
        enc, bits, integ = _split_ike_proposal(proposal)
        if enc is not None and bits is not None:
            enc_name = _IKE_ENC.get((enc, bits))
        if enc and enc.startswith(("AES_GCM", "AES_CCM")):
            integ_name = _IKE_INTEG["NONE"]
        elif integ:
            integ_name = _IKE_INTEG[integ]
    ke, ka = len(keys.get("Sk_ei", b"")), len(keys.get("Sk_ai", b""))
    if integ_name is None:
        integ_name = {0: "NONE", 16: "HMAC_MD5_128", 20: "HMAC_SHA1_96",
                      32: "HMAC_SHA2_256_128", 48: "HMAC_SHA2_384_192",
                      64: "HMAC_SHA2_512_256"}.get(ka, "NONE")
        integ_name = _IKE_INTEG[integ_name]
    if enc_name is None:
        if ka == 0 and ke in (20, 28, 36):     # AEAD: key + 4-byte salt; assume 16-byte ICV
            enc_name = _IKE_ENC[("AES_GCM_16", (ke - 4) * 8)]
        elif ke in (16, 24, 32):
            enc_name = _IKE_ENC[("AES_CBC", ke * 8)]
        else:
            raise KeyExtractionError(f"cannot tell the IKE encryption algorithm from a {ke}-byte"
                                     " SK_e; log 'cfg 2' for the selected proposal")
    return enc_name, integ_name


def _esp_names(child: _ChildState) -> tuple[str, str]:
    enc = child.enc_alg
    integ = child.integ_alg
    if child.proposal:
        parts = child.proposal.split("/")
        for p in parts:
            m = re.match(r"^(AES_(?:GCM|CCM)_(?:8|12|16)|AES_CBC|AES_CTR|3DES_CBC|NULL|"
                         r"DES_CBC|CAST_CBC|BLOWFISH_CBC|TWOFISH_CBC)(?:_\d+)?$", p)
            if m and enc is None:
                enc = m.group(1)
            elif p in _ESP_INTEG and integ is None:
                integ = p
    if enc is None:
        raise KeyExtractionError("ESP encryption algorithm not in the log ('using ... for "
                                 "encryption' needs chd >= 2)")
    if enc not in _ESP_ENC:
        raise KeyExtractionError(f"ESP encryption {enc} has no Wireshark equivalent")
    if enc.startswith("AES_GCM"):
        return _ESP_ENC[enc], "NULL"
    if integ is None:
        integ = "NONE"
    if integ not in _ESP_INTEG:
        raise KeyExtractionError(f"ESP integrity {integ} has no Wireshark equivalent")
    return _ESP_ENC[enc], _ESP_INTEG[integ]


def parse_charon_log(text: Union[str, Iterable[str]]) -> LogKeys:
    """Extract IKEv2 and ESP keys from a charon log written with ``ike 4`` and ``chd 4``.

    ``text`` is the log's content, or an iterable of lines (such as :class:`LogLines`), which
    is consumed once, lazily. Works with charon's filelog (any ``time_format``, with or
    without ``ike_name``) and with journal/syslog lines.
    """
    lines = text.splitlines() if isinstance(text, str) else text
    out = LogKeys()
    ike: dict[int | None, _IkeState] = {}
    child: dict[object, _ChildState] = {}
    last_parsed: dict[object, str] = {}
    global_spis: tuple[bytes, bytes] | None = None
    dump: dict[str, object] | None = None   # current hex dump being collected

    def ike_state(uid: int | None) -> _IkeState:
        return ike.setdefault(uid, _IkeState())

    def finish_dump() -> None:
        nonlocal dump, global_spis
        if dump is None:
            return
        d, dump = dump, None
        data = bytes(d["data"])  # type: ignore[call-overload]
        label = str(d["label"])
        uid = d["uid"]
        ckey = d["ckey"]
        if len(data) != d["length"]:
            out.warnings.append(f"truncated hex dump for {label!r}")
            return
        st = ike_state(uid)  # type: ignore[arg-type]
        if label in ("natd_chunk",) or label.startswith("octets = message"):
            if len(data) >= 16 and any(data[:8]) and any(data[8:16]):
                st.spis = (data[:8], data[8:16])
                global_spis = st.spis
            return
        for k in _IKE_KEYS:
            if label == f"{k} secret":
                st.keys[k] = data
                return
        if label == "Sk_pr secret":
            # the last key charon logs; AEAD suites log no Sk_ai/Sk_ar
            if "Sk_ei" in st.keys and "Sk_er" in st.keys:
                emit_ike(uid, st)  # type: ignore[arg-type]
            return
        if label in _CHILD_KEYS:
            ch = child.setdefault(ckey, _ChildState())
            if not ch.keys:
                ch.initiator = {"response": True, "request": False}.get(
                    last_parsed.get(ckey, ""))
            ch.keys[_CHILD_KEYS[label]] = data

    def emit_ike(uid: int | None, st: _IkeState) -> None:
        spis = st.spis or (global_spis if uid is None else None)
        if spis is None and global_spis is not None and uid is not None:
            spis = global_spis
            out.warnings.append(f"IKE_SA #{uid}: SPIs taken from the most recent IKE_SA_INIT")
        enc, integ = _infer_ike_algs(st.keys, st.proposal)
        sa = IkeSa(spi_i=spis[0] if spis else None, spi_r=spis[1] if spis else None,
                   sk_ei=st.keys["Sk_ei"], sk_er=st.keys["Sk_er"],
                   sk_ai=st.keys.get("Sk_ai", b""), sk_ar=st.keys.get("Sk_ar", b""),
                   encryption=enc, integrity=integ,
                   proposal=st.proposal, name=st.name, unique_id=uid)
        if not sa.complete:
            out.warnings.append(f"IKE_SA #{uid}: keys without SPIs (IKE rekeying?); "
                                "left out of the IKEv2 table")
        out.ike.append(sa)
        st.keys = {}

    def emit_esp(ckey: object, ch: _ChildState, direction: str, spi: int, src: str,
                 dst: str) -> None:
        if ch.protocol != "ESP":
            return
        if len(ch.keys) < 2 or "ei" not in ch.keys:
            out.warnings.append(f"ESP SA 0x{spi:08x}: no keys logged (needs chd 4)")
            return
        if ch.initiator is None:
            out.warnings.append(f"ESP SA 0x{spi:08x}: cannot tell whether this peer initiated "
                                "the CHILD_SA (needs enc >= 1 'parsed ...' lines); skipped")
            return
        if not (_is_address(src) and _is_address(dst)):
            out.warnings.append(f"ESP SA 0x{spi:08x}: {src!r} > {dst!r} are not IP "
                                "addresses; skipped")
            return
        enc, integ = _esp_names(ch)
        # Initiator keys protect initiator → responder traffic.
        use_initiator = (direction == "outbound") == ch.initiator
        side = "i" if use_initiator else "r"
        out.esp.append(EspSa(src=src, dst=dst, spi=spi, encryption=enc,
                             encryption_key=ch.keys.get("e" + side, b""), integrity=integ,
                             integrity_key=ch.keys.get("a" + side, b""), source="log"))

    for raw in lines:
        line = raw.rstrip("\r\n")
        m = _LINE_RE.search(line)
        if m is None:
            # journald continuation lines of a multi-line message: no prefix
            if dump is not None:
                rm = _DUMP_ROW_RE.match(line)
                if rm:
                    _add_row(dump, rm)
                    continue
            finish_dump()
            continue
        thread, tag, msg = m.group(1), m.group(3), m.group(4)
        uid = _ctx_of(tag)
        ckey: object = uid if uid is not None else f"thread:{thread}"
        if dump is not None:
            rm = _DUMP_ROW_RE.match(msg)
            if rm and dump["thread"] == thread:
                _add_row(dump, rm)
                continue
            finish_dump()
        if tag and uid is not None and _name_of(tag):
            ike_state(uid).name = _name_of(tag)
        hm = _DUMP_HDR_RE.match(msg)
        if hm:
            dump = {"label": hm.group(1).strip(), "length": int(hm.group(2)), "data": bytearray(),
                    "thread": thread, "uid": uid, "ckey": ckey}
            if dump["length"] == 0:
                finish_dump()
            continue
        pm = _PARSED_RE.match(msg)
        if pm:
            last_parsed[ckey] = pm.group(2)
            continue
        sm = _SELECTED_RE.match(msg)
        if sm:
            if sm.group(1) == "IKE":
                ike_state(uid).proposal = sm.group(2)
            else:
                ch = child.setdefault(ckey, _ChildState())
                if ch.pending is None and len(ch.keys) == 4:
                    child[ckey] = ch = _ChildState()   # a new CHILD_SA in this context
                ch.proposal = sm.group(2)
                ch.protocol = sm.group(1)
            continue
        um = _USING_RE.match(msg)
        if um:
            ch = child.setdefault(ckey, _ChildState())
            if len(ch.keys) == 4 and ch.pending is None:
                child[ckey] = ch = _ChildState(proposal=ch.proposal)
            if um.group(2) == "encryption":
                ch.enc_alg = um.group(1)
            else:
                ch.integ_alg = um.group(1)
            continue
        am = _ADDING_RE.match(msg)
        if am:
            ch = child.setdefault(ckey, _ChildState())
            ch.pending = am.group(1)
            ch.protocol = am.group(2)
            continue
        em = _ESP_SPI_RE.match(msg)
        if em:
            ch_opt = child.get(ckey)
            if ch_opt is not None and ch_opt.pending:
                emit_esp(ckey, ch_opt, ch_opt.pending, int(em.group(1), 16), em.group(2),
                         em.group(3))
                ch_opt.pending = None
            continue
        if msg.startswith("CHILD_SA ") and " established with SPIs " in msg:
            # this CHILD_SA is complete: the next keys in this context are a new one
            child.pop(ckey, None)
    finish_dump()
    # the responder logs an IKE_SA's keys before it knows the SA's name
    out.ike = [dataclasses.replace(s, name=ike[s.unique_id].name)
               if s.name is None and s.unique_id in ike else s for s in out.ike]
    return out


def _add_row(dump: dict[str, object], rm: re.Match[str]) -> None:
    data = dump["data"]
    assert isinstance(data, bytearray)
    remaining = int(dump["length"]) - len(data)  # type: ignore[call-overload]
    tokens = rm.group(2).split()[: max(0, min(16, remaining))]
    data.extend(bytes.fromhex("".join(tokens)))


# ---- ip xfrm state -----------------------------------------------------------------------------

_XFRM_HEAD_RE = re.compile(r"^src (\S+) dst (\S+)\s*$")


def parse_xfrm_state(text: Union[str, Iterable[str]]) -> list[EspSa]:
    """ESP SAs from ``ip xfrm state`` (or ``ip -s xfrm state``) output, as text or lines. AH
    and IPComp states are skipped; states whose algorithms Wireshark cannot decrypt raise
    KeyExtractionError."""
    sas: list[EspSa] = []
    blocks: list[list[str]] = []
    for raw in text.splitlines() if isinstance(text, str) else text:
        line = raw.rstrip("\r\n")
        if _XFRM_HEAD_RE.match(line):
            blocks.append([line])
        elif blocks and line.strip():
            blocks[-1].append(line.strip())
    for block in blocks:
        hm = _XFRM_HEAD_RE.match(block[0])
        assert hm
        src, dst = hm.group(1), hm.group(2)
        if not (_is_address(src) and _is_address(dst)):
            raise KeyExtractionError(f"xfrm state {src!r} > {dst!r}: not IP addresses")
        proto = spi = reqid = mode = None
        enc = integ = None
        enc_key = integ_key = b""
        encap = None
        for line in block[1:]:
            words = line.split()
            if words[0] == "proto":
                kv = _pairs(words)
                proto = kv.get("proto")
                spi = int(kv["spi"], 16) if "spi" in kv else None
                reqid = int(kv["reqid"]) if "reqid" in kv else None
                mode = kv.get("mode")
            elif words[0] == "enc" and len(words) >= 3:
                name = words[1]
                if name not in _XFRM_ENC:
                    raise KeyExtractionError(f"xfrm cipher {name} has no Wireshark equivalent")
                enc, enc_key = _XFRM_ENC[name], _key(words[2])
            elif words[0] == "aead" and len(words) >= 4:
                name = words[1]
                icv_bits = int(words[3])
                if name not in _XFRM_AEAD_ICV or icv_bits not in (64, 96, 128):
                    raise KeyExtractionError(f"xfrm AEAD {name}/{icv_bits} has no Wireshark "
                                             "equivalent")
                enc = _XFRM_AEAD_ICV[name].format(octets=icv_bits // 8)
                enc_key = _key(words[2])
                integ, integ_key = "NULL", b""
            elif words[0] in ("auth", "auth-trunc") and len(words) >= 3:
                name = words[1]
                bits = (int(words[3]) if words[0] == "auth-trunc" and len(words) >= 4
                        else _XFRM_AUTH_DEFAULT_BITS.get(name, -1))
                if (name, bits) not in _XFRM_AUTH:
                    raise KeyExtractionError(f"xfrm auth {name}/{bits} has no Wireshark "
                                             "equivalent")
                integ, integ_key = _XFRM_AUTH[(name, bits)], _key(words[2])
            elif words[0] == "encap" and len(words) >= 6:
                kv = _pairs(words[1:])
                try:
                    encap = (int(kv["sport"]), int(kv["dport"]))
                except (KeyError, ValueError):
                    encap = None
        if proto != "esp" or spi is None:
            continue
        if enc is None:
            raise KeyExtractionError(f"xfrm state 0x{spi:08x} has no visible key (run as root; "
                                     "'ip xfrm state' hides keys from unprivileged users?)")
        sas.append(EspSa(src=src, dst=dst, spi=spi, encryption=enc, encryption_key=enc_key,
                         integrity=integ or "NULL", integrity_key=integ_key, reqid=reqid,
                         mode=mode, encap=encap, source="xfrm"))
    return sas


def _pairs(words: list[str]) -> dict[str, str]:
    """["a", "1", "b", "2"] → {"a": "1", "b": "2"} (a trailing odd word is ignored)."""
    return {words[i]: words[i + 1] for i in range(0, len(words) - 1, 2)}


def _key(word: str) -> bytes:
    if word.startswith(("0x", "0X")):
        return bytes.fromhex(word[2:])
    # iproute2 prints non-hex keys as quoted strings
    return word.strip('"').encode()


# ---- Wireshark's esp_sa file -----------------------------------------------------------------

def read_esp_sa(path: Union[str, os.PathLike[str]]) -> list[EspSa]:
    """The SAs of a Wireshark ``esp_sa`` UAT file (the format ``keys.write_esp_sa`` writes:
    ``"IPv4","src","dst","0xSPI","enc","0xKEY","integ","0xKEY"``), or of the ``esp_sa`` file
    inside a directory. Comment lines (``#``) and blank lines are skipped; a record that
    cannot be read raises ValueError naming the file and line."""
    p = os.fspath(path)
    if os.path.isdir(p):
        p = os.path.join(p, ESP_SA_FILE)
    out: list[EspSa] = []
    with open_log(p) as lines:
        try:
            for lineno, row in enumerate(csv.reader(lines), 1):
                if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                    continue
                try:
                    out.append(_esp_sa_row(row))
                except (ValueError, IndexError) as e:
                    raise ValueError(f"{p}:{lineno}: not an esp_sa record ({e})") from None
        except csv.Error as e:
            raise ValueError(f"{p}: not an esp_sa file ({e})") from None
        if lines.warnings():
            raise ValueError(f"{p}: not an esp_sa file ({'; '.join(lines.warnings())})")
    return out


def _esp_sa_row(row: list[str]) -> EspSa:
    if len(row) < 8:
        raise ValueError(f"{len(row)} fields, expected 8")
    _family, src, dst, spi_text, enc, enc_key, integ, integ_key = (c.strip() for c in row[:8])
    if spi_text == "*":
        raise ValueError("wildcard SPIs are not supported")
    if not _is_address(src) or not (_is_address(dst) or dst == "*"):
        raise ValueError(f"{src!r} > {dst!r} are not IP addresses")
    return EspSa(src=src, dst=dst, spi=int(spi_text, 0), encryption=enc,
                 encryption_key=_key(enc_key), integrity=integ,
                 integrity_key=_key(integ_key), source="esp_sa")


def xfrm_state_argv(netns: str | None = None) -> list[str]:
    return ["ip", *(["-n", netns] if netns else []), "xfrm", "state"]


def read_xfrm_state(netns: str | None = None, *, timeout: float = 10) -> list[EspSa]:
    """Run ``ip [-n NETNS] xfrm state`` (needs CAP_NET_ADMIN) and parse it."""
    if netns is not None:
        from ipsec_nflog.system.netns import validate_netns_name

        validate_netns_name(netns)
    argv = xfrm_state_argv(netns)
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise KeyExtractionError("'ip' not found: apt-get install iproute2") from None
    if r.returncode != 0:
        raise KeyExtractionError(f"{' '.join(argv)} failed: {r.stderr.strip()}")
    return parse_xfrm_state(r.stdout)


# ---- command line ------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``keys`` command's options (``ipsec-nflog keys`` reuses them)."""
    p.add_argument("--log", action="append", default=[], metavar="FILE",
                   help="charon log file written with 'ike 4' and 'chd 4' (repeatable; "
                        "'-' for stdin)")
    p.add_argument("--xfrm", action="store_true", help="read 'ip xfrm state' now (root)")
    p.add_argument("--xfrm-file", action="append", default=[], metavar="FILE",
                   help="saved 'ip xfrm state' output (repeatable)")
    p.add_argument("--netns", help="network namespace for --xfrm")
    p.add_argument("--out", metavar="DIR",
                   help="write esp_sa and ikev2_decryption_table here (mode 0600)")
    p.add_argument("--append", action="store_true", help="append instead of replacing")
    p.add_argument("--tshark", action="store_true",
                   help="print tshark -o options, one argv item per line")


def main(argv: Sequence[str] | argparse.Namespace | None = None) -> int:
    """``ipsec-nflog keys`` / ``python -m ipsec_nflog.ipsec.keys``: argv, or parsed options."""
    p = argparse.ArgumentParser(
        prog="ipsec-nflog keys",
        description="Extract IKEv2/ESP keys for Wireshark from charon logs (ike 4, chd 4) and "
                    "'ip xfrm state'.")
    add_arguments(p)
    args = argv if isinstance(argv, argparse.Namespace) else p.parse_args(argv)
    if not (args.log or args.xfrm or args.xfrm_file):
        print("ipsec-nflog keys: give --log, --xfrm or --xfrm-file", file=sys.stderr)
        return 2
    ike: list[IkeSa] = []
    esp: list[EspSa] = []
    try:
        for path in args.log:
            with open_log(path) as lines:
                found = parse_charon_log(lines)
            ike += found.ike
            esp += found.esp
            for w in [*found.warnings, *lines.warnings()]:
                _say(f"warning: {path}: {w}", sys.stderr)
        for path in args.xfrm_file:
            with open_log(path) as lines:
                esp += parse_xfrm_state(lines)
            for w in lines.warnings():
                _say(f"warning: {path}: {w}", sys.stderr)
        if args.xfrm:
            esp += read_xfrm_state(args.netns)
        if args.out:
            paths = write_wireshark_keys(args.out, ike=ike, esp=esp, append=args.append)
            _say(f"wrote {sum(s.complete for s in ike)} IKE_SA(s) to {paths[IKEV2_FILE]} and "
                 f"{len(_dedup(map(esp_sa_line, esp)))} ESP SA(s) to {paths[ESP_SA_FILE]}")
    except (OSError, KeyExtractionError, ValueError) as e:
        _say(f"ipsec-nflog keys: {e}", sys.stderr)
        return 1
    if args.tshark:
        for item in tshark_options(esp=esp, ike=ike):
            _say(item)
    if not args.out and not args.tshark:
        for s in ike:
            if s.complete:
                _say(f"ikev2_decryption_table: {ikev2_line(s)}")
        for sa in esp:
            _say(f"esp_sa: {esp_sa_line(sa)}")
    return 0


def _say(line: str, stream: IO[str] | None = None) -> None:
    """Print one line made of untrusted strings (from a log), escaped for the terminal."""
    from ipsec_nflog.nflog.summary import printable

    print(printable(line), file=stream or sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
