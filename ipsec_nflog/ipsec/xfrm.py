"""ESP SAs from the kernel: ``ip xfrm state`` output, parsed, or read now with ``ip``."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Union

from ipsec_nflog.ipsec.algorithms import (
    XFRM_AEAD_ICV,
    XFRM_AUTH,
    XFRM_AUTH_DEFAULT_BITS,
    XFRM_ENC,
)
from ipsec_nflog.ipsec.sa import EspSa, KeyExtractionError, is_address, key_from_text

__all__ = ["parse_xfrm_state", "read_xfrm_state", "xfrm_state_argv"]

_XFRM_HEAD_RE = re.compile(r"^src (\S+) dst (\S+)\s*$")


@dataclass
class _XfrmState:
    """One ``src ... dst ...`` block, as its lines are read."""

    src: str
    dst: str
    cipher: tuple[str, bytes] | None = None     # (Wireshark name, key); for AEAD too
    auth: tuple[str, bytes] | None = None       # (Wireshark name, key)
    proto: str | None = None
    spi: int | None = None
    reqid: int | None = None
    mode: str | None = None
    encap: tuple[int, int] | None = None
    esn: bool = False

    def read_proto(self, words: list[str]) -> None:
        kv = _pairs(words)
        self.proto = kv.get("proto")
        self.spi = int(kv["spi"], 16) if "spi" in kv else None
        self.reqid = int(kv["reqid"]) if "reqid" in kv else None
        self.mode = kv.get("mode")

    def read_enc(self, words: list[str]) -> None:
        name = words[1]
        if name not in XFRM_ENC:
            raise KeyExtractionError(f"xfrm cipher {name} has no Wireshark equivalent")
        self.cipher = (XFRM_ENC[name], key_from_text(words[2]))

    def read_aead(self, words: list[str]) -> None:
        name, icv_bits = words[1], int(words[3])
        if name not in XFRM_AEAD_ICV or icv_bits not in (64, 96, 128):
            raise KeyExtractionError(f"xfrm AEAD {name}/{icv_bits} has no Wireshark "
                                     "equivalent")
        self.cipher = (XFRM_AEAD_ICV[name].format(octets=icv_bits // 8), key_from_text(words[2]))
        self.auth = ("NULL", b"")

    def read_auth(self, words: list[str]) -> None:
        name = words[1]
        bits = (int(words[3]) if words[0] == "auth-trunc" and len(words) >= 4
                else XFRM_AUTH_DEFAULT_BITS.get(name, -1))
        if (name, bits) not in XFRM_AUTH:
            raise KeyExtractionError(f"xfrm auth {name}/{bits} has no Wireshark equivalent")
        self.auth = (XFRM_AUTH[(name, bits)], key_from_text(words[2]))

    def read_flags(self, words: list[str]) -> None:
        """``replay-window 128 flag af-unspec esn`` (or ``flag esn`` alone, for an SA
        without a replay window): the names after ``flag``."""
        if "flag" in words:
            self.esn = self.esn or "esn" in words[words.index("flag") + 1:]

    def read_encap(self, words: list[str]) -> None:
        kv = _pairs(words[1:])
        try:
            self.encap = (int(kv["sport"]), int(kv["dport"]))
        except (KeyError, ValueError):
            self.encap = None

    def esp_sa(self) -> EspSa | None:
        """The ESP SA of this state; None for AH, IPComp and states without an SPI."""
        if self.proto != "esp" or self.spi is None:
            return None
        if self.cipher is None:
            raise KeyExtractionError(f"xfrm state 0x{self.spi:08x} has no visible key (run as "
                                     "root; 'ip xfrm state' hides keys from unprivileged "
                                     "users?)")
        integrity, integrity_key = self.auth or ("NULL", b"")
        return EspSa(src=self.src, dst=self.dst, spi=self.spi, encryption=self.cipher[0],
                     encryption_key=self.cipher[1], integrity=integrity,
                     integrity_key=integrity_key, reqid=self.reqid, mode=self.mode,
                     encap=self.encap, source="xfrm", esn=self.esn)


# A state's line, by its first word: (how many words it needs at least, its reader).
_LINE_READERS: dict[str, tuple[int, Callable[[_XfrmState, list[str]], None]]] = {
    "proto": (1, _XfrmState.read_proto),
    "enc": (3, _XfrmState.read_enc),
    "aead": (4, _XfrmState.read_aead),
    "auth": (3, _XfrmState.read_auth),
    "auth-trunc": (3, _XfrmState.read_auth),
    "encap": (6, _XfrmState.read_encap),
    "replay-window": (2, _XfrmState.read_flags),
    "flag": (2, _XfrmState.read_flags),
}


def _blocks(lines: Iterable[str]) -> list[list[str]]:
    """The states: each a ``src ... dst ...`` line, then its stripped non-blank lines."""
    blocks: list[list[str]] = []
    for raw in lines:
        line = raw.rstrip("\r\n")
        if _XFRM_HEAD_RE.match(line):
            blocks.append([line])
        elif blocks and line.strip():
            blocks[-1].append(line.strip())
    return blocks


def _read_state(block: list[str]) -> EspSa | None:
    head = _XFRM_HEAD_RE.match(block[0])
    assert head
    src, dst = head.group(1), head.group(2)
    if not (is_address(src) and is_address(dst)):
        raise KeyExtractionError(f"xfrm state {src!r} > {dst!r}: not IP addresses")
    state = _XfrmState(src, dst)
    for line in block[1:]:
        words = line.split()
        min_words, reader = _LINE_READERS.get(words[0], (0, None))
        if reader is not None and len(words) >= min_words:
            reader(state, words)
    return state.esp_sa()


def parse_xfrm_state(text: Union[str, Iterable[str]]) -> list[EspSa]:
    """ESP SAs from ``ip xfrm state`` (or ``ip -s xfrm state``) output, as text or lines. AH
    and IPComp states are skipped; states whose algorithms Wireshark cannot decrypt raise
    KeyExtractionError."""
    states = _blocks(text.splitlines() if isinstance(text, str) else text)
    return [sa for sa in map(_read_state, states) if sa is not None]


def _pairs(words: list[str]) -> dict[str, str]:
    """["a", "1", "b", "2"] → {"a": "1", "b": "2"} (a trailing odd word is ignored)."""
    return {words[i]: words[i + 1] for i in range(0, len(words) - 1, 2)}


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
