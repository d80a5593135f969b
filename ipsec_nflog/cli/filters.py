"""What ``capture`` and ``read`` keep: the tcpdump expression (words after the options, or
``-F FILE``) and the NFLOG metadata options (--hook, --prefix, --indev, --outdev). Every
value is checked, and the expression compiled, before a rule or socket exists."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ipsec_nflog.cli.errors import CliError

if TYPE_CHECKING:
    from ipsec_nflog.capture.filter import Filter
    from ipsec_nflog.files.reader import FilePacket
    from ipsec_nflog.nflog.packet import Packet

__all__ = ["Kept", "add_filter_options", "compile_filter", "expression_of", "hooks_of"]

FILTER_FILE_MAX = 64 * 1024


def add_filter_options(p: argparse.ArgumentParser, *, prefix: bool) -> None:
    g = p.add_argument_group(
        "what to keep",
        "a tcpdump filter expression over each packet's IP packet, compiled by libpcap (for "
        "NFLOG, as LINKTYPE_RAW: ip, ip6, host, port, esp, udp[8:4] = 0, greater ...), and "
        "NFLOG metadata BPF cannot see")
    g.add_argument("expression", nargs="*", metavar="EXPRESSION",
                   help="filter expression; its words are joined, like tcpdump's")
    g.add_argument("-F", dest="filter_file", metavar="FILE",
                   help="read the filter expression from FILE")
    g.add_argument("--hook", type=str.upper, metavar="HOOK[,HOOK]",
                   help="only packets logged at these hooks (PREROUTING, INPUT, FORWARD, "
                        "OUTPUT, POSTROUTING)")
    if prefix:
        g.add_argument("--prefix", help="only packets with this NFLOG prefix")
    g.add_argument("--indev", metavar="IF", help="only packets that came in on IF (name or "
                                                  "index)")
    g.add_argument("--outdev", metavar="IF", help="only packets that go out on IF (name or "
                                                   "index)")


def expression_of(args: argparse.Namespace) -> str | None:
    """The expression given, or None; a bad -F file or both forms are one clear line."""
    words: list[str] = args.expression or []
    if args.filter_file is not None:
        if words:
            raise CliError("give the filter expression either as words or with -F, not both")
        try:
            with open(args.filter_file, "rb") as f:
                text = f.read(FILTER_FILE_MAX + 1)
        except OSError as e:
            raise CliError(f"-F {args.filter_file}: {e.strerror or e}") from None
        if len(text) > FILTER_FILE_MAX:
            raise CliError(f"-F {args.filter_file}: longer than {FILTER_FILE_MAX} bytes")
        try:
            lines = text.decode().splitlines()
        except UnicodeDecodeError:
            raise CliError(f"-F {args.filter_file}: not text") from None
        # tcpdump's -F files may carry comments
        return " ".join(line.split("#", 1)[0] for line in lines)
    return " ".join(words) if words else None


def hooks_of(args: argparse.Namespace) -> tuple[str, ...] | None:
    hook: str | None = args.hook
    return tuple(h for h in hook.split(",") if h) if hook else None


def compile_filter(expression: str, linktype: int | None = None) -> Filter:
    """The compiled filter, or one clear line with libpcap's message."""
    from ipsec_nflog.capture.filter import LINKTYPE_RAW, Filter

    try:
        return Filter(expression, LINKTYPE_RAW if linktype is None else linktype)
    except ValueError as e:
        raise CliError(str(e)) from None


class Kept:
    """``read``'s filter: the same compiled program as a live capture, over the IP packet
    of NFLOG records and over the frame of other link types, as tcpdump would."""

    def __init__(self, expression: str | None) -> None:
        self.expression = expression
        self._by_linktype: dict[int | None, Filter] = {}
        if expression is not None:
            self._by_linktype[None] = compile_filter(expression)  # checked before reading

    def __call__(self, pkt: Packet | FilePacket) -> bool:
        if self.expression is None:
            return True
        linktype = getattr(pkt, "linktype", None)
        if linktype is None:  # NFLOG: the IP packet, with its length before the snaplen
            payload = pkt.payload
            if payload is None:
                return self._by_linktype[None].matches(b"")
            cut = max(pkt.orig_len - len(pkt.raw), 0)
            return self._by_linktype[None].matches(payload, len(payload) + cut)
        f = self._by_linktype.get(linktype)
        if f is None:
            f = self._by_linktype[linktype] = compile_filter(self.expression, linktype)
        raw: bytes = getattr(pkt, "raw", b"")
        return f.matches(raw, pkt.orig_len)
