"""IKEv2 and ESP keys from charon's log (``ike 4``, ``chd 4``; see :mod:`ipsec_nflog.ipsec.keys`
for the settings): a :class:`CharonLogParser` fed line by line.

Charon logs a key as a hex dump (``Sk_ei secret => 32 bytes @ 0x...`` and rows of hex), an
IKE_SA's SPIs in its NAT-D dumps, and a CHILD_SA's SPIs and addresses when it installs it.
Lines are attributed to an IKE_SA by their ``<name|id>`` tag, or to charon's thread when
there is none (journald lines).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Union

from ipsec_nflog.ipsec.algorithms import esp_algorithms, esp_proposal_has_esn, ike_algorithms
from ipsec_nflog.ipsec.loglines import PathLike, open_log
from ipsec_nflog.ipsec.sa import EspSa, IkeSa, LogKeys, is_address

__all__ = ["CharonLogParser", "parse_charon_log", "read_charon_log", "read_charon_logs"]

# "<time> 09[IKE] <t|1> message" (filelog) or "... charon-systemd[12]: 09[IKE] <1> message".
_LINE_RE = re.compile(r"(?:^|\s)(\d{2,})\[([A-Z]{3})\] (?:<([^>]*)> )?(.*)$")
_TAG_ID_RE = re.compile(r"(\d+)$")
_DUMP_HDR_RE = re.compile(r"^(.*?) => (\d+) bytes @ (?:0x)?[0-9a-fA-F]+\s*$")
_DUMP_ROW_RE = re.compile(r"^\s*(\d+): ((?:[0-9A-Fa-f]{2} ?){1,16})")
_ESP_SPI_RE = re.compile(r"^\s*SPI 0x([0-9a-fA-F]{1,8}), src (\S+) dst (\S+)")
_ADDING_RE = re.compile(r"^adding (inbound|outbound) (ESP|AH) SA")
_PARSED_RE = re.compile(r"^parsed (\S+) (request|response) \d+")
_USING_RE = re.compile(r"^\s*using (\S+) for (encryption|integrity)")
_SELECTED_RE = re.compile(r"^selected proposal: (IKE|ESP|AH):(\S+)")
_ESTABLISHED_RE = re.compile(r"^(?=CHILD_SA ).* established with SPIs ")
_IKE_KEYS = {f"{k} secret": k for k in ("Sk_ei", "Sk_er", "Sk_ai", "Sk_ar")}
_LAST_IKE_KEY = "Sk_pr secret"   # the last key charon logs; AEAD suites log no Sk_ai/Sk_ar
_CHILD_KEYS = {"encryption initiator key": "ei", "encryption responder key": "er",
               "integrity initiator key": "ai", "integrity responder key": "ar"}

ContextKey = Union[int, str]   # an IKE_SA's unique id, or "thread:N" for lines without one


def _ctx_of(tag: str | None) -> int | None:
    """IKE_SA unique id from an ``<name|id>`` / ``<id>`` tag."""
    m = _TAG_ID_RE.search(tag) if tag else None
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


@dataclass
class _ChildState:
    keys: dict[str, bytes] = field(default_factory=dict)
    enc_alg: str | None = None
    integ_alg: str | None = None
    proposal: str | None = None
    initiator: bool | None = None
    pending: str | None = None    # "inbound"/"outbound" awaiting its SPI line
    protocol: str = "ESP"


class _Origin(NamedTuple):   # a tuple: one per line
    """Where a log line comes from: charon's thread and the IKE_SA it names, if any."""

    thread: str
    uid: int | None
    key: ContextKey


@dataclass
class _HexDump:
    """A hex dump being collected: its header line, then rows of up to 16 bytes."""

    label: str
    length: int
    origin: _Origin
    data: bytearray = field(default_factory=bytearray)

    def add_row(self, row: re.Match[str]) -> None:
        remaining = self.length - len(self.data)
        tokens = row.group(2).split()[: max(0, min(16, remaining))]
        self.data.extend(bytes.fromhex("".join(tokens)))


_Handler = Callable[[re.Match[str], _Origin], None]


class CharonLogParser:
    """Collects keys from charon log lines given to :meth:`feed`; :meth:`finish` returns
    them. Each message is matched against a table of (pattern, handler): the first pattern
    that matches handles it."""

    def __init__(self) -> None:
        self._found = LogKeys()
        self._ike: dict[int | None, _IkeState] = {}
        self._child: dict[ContextKey, _ChildState] = {}
        self._last_parsed: dict[ContextKey, str] = {}   # "request"/"response" last parsed
        self._latest_spis: tuple[bytes, bytes] | None = None
        self._dump: _HexDump | None = None
        self._handlers: tuple[tuple[re.Pattern[str], _Handler], ...] = (
            (_DUMP_HDR_RE, self._on_dump_header),
            (_PARSED_RE, self._on_parsed),
            (_SELECTED_RE, self._on_selected),
            (_USING_RE, self._on_using),
            (_ADDING_RE, self._on_adding),
            (_ESP_SPI_RE, self._on_esp_spi),
            (_ESTABLISHED_RE, self._on_established),
        )

    def feed(self, raw: str) -> None:
        """One log line (its line ending is ignored)."""
        line = raw.rstrip("\r\n")
        m = _LINE_RE.search(line)
        if m is None:   # journald continuation lines of a multi-line message: no prefix
            self._continue_dump(line)
            return
        thread, tag, msg = m.group(1), m.group(3), m.group(4)
        uid = _ctx_of(tag)
        origin = _Origin(thread, uid, uid if uid is not None else f"thread:{thread}")
        if self._dump is not None:
            row = _DUMP_ROW_RE.match(msg)
            if row and self._dump.origin.thread == thread:
                self._dump.add_row(row)
                return
            self._finish_dump()
        name = _name_of(tag)
        if uid is not None and name:
            self._ike_state(uid).name = name
        for pattern, handler in self._handlers:
            found = pattern.match(msg)
            if found:
                handler(found, origin)
                return

    def finish(self) -> LogKeys:
        """What the lines held (the end of the log ends a hex dump in progress)."""
        self._finish_dump()
        # the responder logs an IKE_SA's keys before it knows the SA's name
        self._found.ike = [dataclasses.replace(s, name=self._ike[s.unique_id].name)
                           if s.name is None and s.unique_id in self._ike else s
                           for s in self._found.ike]
        return self._found

    # -- state -----------------------------------------------------------------------------
    def _ike_state(self, uid: int | None) -> _IkeState:
        return self._ike.setdefault(uid, _IkeState())

    def _open_child(self, key: ContextKey, *, keep_proposal: bool) -> _ChildState:
        """The CHILD_SA being negotiated in this context; a new one once the last is whole."""
        ch = self._child.setdefault(key, _ChildState())
        if ch.pending is None and len(ch.keys) == 4:
            ch = self._child[key] = _ChildState(proposal=ch.proposal if keep_proposal else None)
        return ch

    # -- message handlers ------------------------------------------------------------------
    def _on_dump_header(self, m: re.Match[str], origin: _Origin) -> None:
        self._dump = _HexDump(m.group(1).strip(), int(m.group(2)), origin)
        if self._dump.length == 0:
            self._finish_dump()

    def _on_parsed(self, m: re.Match[str], origin: _Origin) -> None:
        self._last_parsed[origin.key] = m.group(2)

    def _on_selected(self, m: re.Match[str], origin: _Origin) -> None:
        if m.group(1) == "IKE":
            self._ike_state(origin.uid).proposal = m.group(2)
            return
        ch = self._open_child(origin.key, keep_proposal=False)
        ch.proposal = m.group(2)
        ch.protocol = m.group(1)

    def _on_using(self, m: re.Match[str], origin: _Origin) -> None:
        ch = self._open_child(origin.key, keep_proposal=True)
        if m.group(2) == "encryption":
            ch.enc_alg = m.group(1)
        else:
            ch.integ_alg = m.group(1)

    def _on_adding(self, m: re.Match[str], origin: _Origin) -> None:
        ch = self._child.setdefault(origin.key, _ChildState())
        ch.pending = m.group(1)
        ch.protocol = m.group(2)

    def _on_esp_spi(self, m: re.Match[str], origin: _Origin) -> None:
        ch = self._child.get(origin.key)
        if ch is not None and ch.pending:
            self._emit_esp(ch, ch.pending, int(m.group(1), 16), m.group(2), m.group(3))
            ch.pending = None

    def _on_established(self, m: re.Match[str], origin: _Origin) -> None:
        # this CHILD_SA is complete: the next keys in this context are a new one
        self._child.pop(origin.key, None)

    # -- hex dumps -------------------------------------------------------------------------
    def _continue_dump(self, line: str) -> None:
        row = _DUMP_ROW_RE.match(line) if self._dump is not None else None
        if self._dump is not None and row:
            self._dump.add_row(row)
        else:
            self._finish_dump()

    def _finish_dump(self) -> None:
        dump, self._dump = self._dump, None
        if dump is None:
            return
        data, label, origin = bytes(dump.data), dump.label, dump.origin
        if len(data) != dump.length:
            self._found.warnings.append(f"truncated hex dump for {label!r}")
        elif label == "natd_chunk" or label.startswith("octets = message"):
            self._on_spis(origin.uid, data)
        elif label in _IKE_KEYS:
            self._ike_state(origin.uid).keys[_IKE_KEYS[label]] = data
        elif label == _LAST_IKE_KEY:
            st = self._ike_state(origin.uid)
            if "Sk_ei" in st.keys and "Sk_er" in st.keys:
                self._emit_ike(origin.uid, st)
        elif label in _CHILD_KEYS:
            ch = self._child.setdefault(origin.key, _ChildState())
            if not ch.keys:
                ch.initiator = {"response": True, "request": False}.get(
                    self._last_parsed.get(origin.key, ""))
            ch.keys[_CHILD_KEYS[label]] = data

    def _on_spis(self, uid: int | None, data: bytes) -> None:
        """A NAT-D dump (or a message's octets): it starts with the IKE_SA's two SPIs."""
        if len(data) >= 16 and any(data[:8]) and any(data[8:16]):
            st = self._ike_state(uid)
            st.spis = self._latest_spis = (data[:8], data[8:16])

    # -- results ---------------------------------------------------------------------------
    def _emit_ike(self, uid: int | None, st: _IkeState) -> None:
        spis = st.spis or (self._latest_spis if uid is None else None)
        if spis is None and self._latest_spis is not None and uid is not None:
            spis = self._latest_spis
            self._found.warnings.append(f"IKE_SA #{uid}: SPIs taken from the most recent "
                                        "IKE_SA_INIT")
        enc, integ = ike_algorithms(st.keys, st.proposal)
        sa = IkeSa(spi_i=spis[0] if spis else None, spi_r=spis[1] if spis else None,
                   sk_ei=st.keys["Sk_ei"], sk_er=st.keys["Sk_er"],
                   sk_ai=st.keys.get("Sk_ai", b""), sk_ar=st.keys.get("Sk_ar", b""),
                   encryption=enc, integrity=integ,
                   proposal=st.proposal, name=st.name, unique_id=uid)
        if not sa.complete:
            self._found.warnings.append(f"IKE_SA #{uid}: keys without SPIs (IKE rekeying?); "
                                        "left out of the IKEv2 table")
        self._found.ike.append(sa)
        st.keys = {}

    def _emit_esp(self, ch: _ChildState, direction: str, spi: int, src: str,
                  dst: str) -> None:
        if ch.protocol != "ESP":
            return
        warn = self._found.warnings.append
        if len(ch.keys) < 2 or "ei" not in ch.keys:
            warn(f"ESP SA 0x{spi:08x}: no keys logged (needs chd 4)")
            return
        if ch.initiator is None:
            warn(f"ESP SA 0x{spi:08x}: cannot tell whether this peer initiated the CHILD_SA "
                 "(needs enc >= 1 'parsed ...' lines); skipped")
            return
        if not (is_address(src) and is_address(dst)):
            warn(f"ESP SA 0x{spi:08x}: {src!r} > {dst!r} are not IP addresses; skipped")
            return
        enc, integ = esp_algorithms(ch.enc_alg, ch.integ_alg, ch.proposal)
        # Initiator keys protect initiator → responder traffic.
        side = "i" if (direction == "outbound") == ch.initiator else "r"
        self._found.esp.append(EspSa(
            src=src, dst=dst, spi=spi, encryption=enc,
            encryption_key=ch.keys.get("e" + side, b""), integrity=integ,
            integrity_key=ch.keys.get("a" + side, b""), source="log",
            esn=esp_proposal_has_esn(ch.proposal)))


def parse_charon_log(text: Union[str, Iterable[str]]) -> LogKeys:
    """Extract IKEv2 and ESP keys from a charon log written with ``ike 4`` and ``chd 4``.

    ``text`` is the log's content, or an iterable of lines (such as
    :class:`ipsec_nflog.ipsec.loglines.LogLines`), which is consumed once, lazily. Works with
    charon's filelog (any ``time_format``, with or without ``ike_name``) and with
    journal/syslog lines.
    """
    parser = CharonLogParser()
    for line in text.splitlines() if isinstance(text, str) else text:
        parser.feed(line)
    return parser.finish()


def read_charon_log(path: PathLike) -> LogKeys:
    """:func:`parse_charon_log` of a file (``"-"``: standard input), streamed with a bound
    per line; what that bound leaves out is in the warnings, after the parser's."""
    with open_log(path) as lines:
        found = parse_charon_log(lines)
    found.warnings += lines.warnings()
    return found


def read_charon_logs(paths: Sequence[PathLike]) -> tuple[list[EspSa], list[str]]:
    """The ESP SAs of charon logs and their warnings, each prefixed with the file name."""
    sas: list[EspSa] = []
    warnings: list[str] = []
    for path in paths:
        found = read_charon_log(path)
        sas += found.esp
        warnings += [f"{os.fspath(path)}: {w}" for w in found.warnings]
    return sas, warnings
