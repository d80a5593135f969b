"""``ipsec-nflog keys``: IKEv2/ESP keys for Wireshark from charon logs and ``ip xfrm state``
(the work is :mod:`ipsec_nflog.ipsec.keys`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import IO

from ipsec_nflog.ipsec.keys import (
    ESP_SA_FILE,
    IKEV2_FILE,
    EspSa,
    IkeSa,
    KeyExtractionError,
    esp_sa_line,
    esp_sa_lines,
    ikev2_line,
    open_log,
    parse_xfrm_state,
    read_charon_log,
    read_xfrm_state,
    tshark_options,
    write_wireshark_keys,
)

__all__ = ["add_arguments", "main", "run"]

DESCRIPTION = ("Extract IKEv2/ESP keys for Wireshark from charon logs (ike 4, chd 4) and "
               "'ip xfrm state'.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``keys`` command's options."""
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


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ipsec_nflog.cli.keys``: the ``keys`` command on its own."""
    p = argparse.ArgumentParser(prog="ipsec-nflog keys", description=DESCRIPTION)
    add_arguments(p)
    return run(p.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run the ``keys`` command with its parsed options; the exit status."""
    if not (args.log or args.xfrm or args.xfrm_file):
        print("ipsec-nflog keys: give --log, --xfrm or --xfrm-file", file=sys.stderr)
        return 2
    ike: list[IkeSa] = []
    esp: list[EspSa] = []
    try:
        _collect(args, ike, esp)
        if args.out:
            paths = write_wireshark_keys(args.out, ike=ike, esp=esp, append=args.append)
            _say(f"wrote {sum(s.complete for s in ike)} IKE_SA(s) to {paths[IKEV2_FILE]} and "
                 f"{len(esp_sa_lines(esp))} ESP SA(s) to {paths[ESP_SA_FILE]}")
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


def _collect(args: argparse.Namespace, ike: list[IkeSa], esp: list[EspSa]) -> None:
    """The SAs of every source the options name, into ``ike`` and ``esp``; each source's
    warnings are printed once it is read."""
    for path in args.log:
        found = read_charon_log(path)
        ike += found.ike
        esp += found.esp
        _warn(path, found.warnings)
    for path in args.xfrm_file:
        with open_log(path) as lines:
            esp += parse_xfrm_state(lines)
        _warn(path, lines.warnings())
    if args.xfrm:
        esp += read_xfrm_state(args.netns)


def _warn(path: str, warnings: list[str]) -> None:
    for w in warnings:
        _say(f"warning: {path}: {w}", sys.stderr)


def _say(line: str, stream: IO[str] | None = None) -> None:
    """Print one line made of untrusted strings (from a log), escaped for the terminal."""
    from ipsec_nflog.nflog.summary import printable  # dpkt: only when there is output

    print(printable(line), file=stream or sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
