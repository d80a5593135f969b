"""The command line of ``ipsec-nflog``: every subcommand's options and the argument types
that check them. A bad value is one line on stderr and exit status 2, before anything runs.

The subcommands' modules are imported here but keep their heavy imports inside their
functions, so building the parser stays cheap (``main`` owns the stop signals meanwhile).
"""

from __future__ import annotations

import argparse
import math
import re
from typing import NoReturn, TypeAlias

from ipsec_nflog._version import __version__
from ipsec_nflog.cli.capture import cmd_capture
from ipsec_nflog.cli.demo import cmd_demo
from ipsec_nflog.cli.errors import EXIT_USAGE
from ipsec_nflog.cli.extcap import add_extcap_arguments, cmd_extcap
from ipsec_nflog.cli.filters import add_filter_options
from ipsec_nflog.cli.read import cmd_read
from ipsec_nflog.cli.rules import cmd_rules
from ipsec_nflog.cli.stats import cmd_stats

__all__ = ["build_parser", "group_arg", "non_negative_float", "path_arg", "positive_float",
           "positive_int", "size_arg", "spi_arg"]

DESCRIPTION = ("Capture and read Linux NFLOG traffic for IPsec debugging (also run as "
               "'python -m ipsec_nflog').")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        from ipsec_nflog.nflog.summary import printable  # the message quotes argv

        self.exit(EXIT_USAGE, f"ipsec-nflog: error: {printable(message)} (see --help)\n")


SubParsers: TypeAlias = "argparse._SubParsersAction[_Parser]"


# ----------------------------------------------------------------------- argument types --

def group_arg(text: str) -> list[int]:
    """``5``, ``nflog:5`` or ``nflog:5,6`` -> [5] / [5, 6]."""
    body = text[len("nflog:"):] if text.startswith("nflog:") else text
    out = []
    for part in body.split(","):
        if not re.fullmatch(r"\d{1,5}", part) or int(part) > 65535:
            raise argparse.ArgumentTypeError(
                f"invalid NFLOG group {text!r}: expected 0..65535 or nflog:N")
        out.append(int(part))
    return out


def size_arg(text: str) -> int:
    """Bytes: ``131072``, ``64K``, ``64M``, ``1GiB`` (K/M/G are powers of 1024)."""
    m = re.fullmatch(r"(\d+)([kKmMgG]?)(i?[bB]?)", text)
    if not m:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (e.g. 64M, 131072)")
    mult = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[m.group(2).lower()]
    return int(m.group(1)) * mult


def _seconds(text: str, *, zero_ok: bool) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not zero_ok):
        need = "a finite number >= 0" if zero_ok else "a finite number > 0"
        raise argparse.ArgumentTypeError(f"must be {need} of seconds, not {text!r}")
    return v


def positive_float(text: str) -> float:
    """Seconds > 0 (``--duration``): 0, negative, nan and inf are refused."""
    return _seconds(text, zero_ok=False)


def non_negative_float(text: str) -> float:
    """Seconds >= 0 (``--flush-timeout``: 0 is the kernel's "flush at once")."""
    return _seconds(text, zero_ok=True)


def path_arg(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("the file name is empty ('-' is standard input or "
                                         "output)")
    return text


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer: {text!r}")
    return int(text)


def spi_arg(text: str) -> int:
    """An SPI: decimal, or hex with 0x."""
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid SPI {text!r} (decimal, or hex as 0x...)"
                                         ) from None


# --------------------------------------------------------------------------- the parser --

def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ipsec-nflog", description=DESCRIPTION)
    p.add_argument("--version", action="version", version=f"ipsec-nflog {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_capture(sub)
    _add_read(sub)
    _add_rules(sub)
    _add_stats(sub)
    _add_keys(sub)
    _add_demo(sub)
    _add_extcap(sub)
    return p


def _add_capture(sub: SubParsers) -> None:
    c = sub.add_parser("capture", help="capture NFLOG groups (like tcpdump -i nflog:N)")
    c.add_argument("-g", "--group", type=group_arg, action="append",
                   help="NFLOG group (repeatable)")
    c.add_argument("-i", dest="group", type=group_arg, action="append",
                   metavar="nflog:N", help="same as -g, tcpdump style")
    c.add_argument("-w", "--write", metavar="FILE", type=path_arg,
                   help="write packets to FILE ('-': standard output)")
    c.add_argument("-s", "--snaplen", type=int, default=0, help="bytes per packet (0: all)")
    c.add_argument("-c", "--count", type=positive_int, help="stop after COUNT packets")
    c.add_argument("--duration", type=positive_float, help="stop after SECONDS")
    _add_file_options(c)
    c.add_argument("-Z", dest="user", metavar="USER",
                   help="drop privileges to USER once the capture is set up")
    c.add_argument("--netns", metavar="NAME", help="capture inside network namespace NAME")
    c.add_argument("--rules", metavar="PRESET",
                   help="install this rule preset for the capture and remove it after")
    c.add_argument("--fail-on-drop", action="store_true",
                   help="exit with status 3 if anything was lost")
    _add_kernel_options(c)
    c.add_argument("-q", "--quiet", action="store_true", help="no status line or summary")
    add_filter_options(c, prefix=False)  # --prefix is the rule option: it selects too
    _add_rule_options(c)
    c.set_defaults(func=cmd_capture)


def _add_file_options(c: argparse.ArgumentParser) -> None:
    """capture -w: rotation, flushing, format, overwriting."""
    c.add_argument("-C", dest="file_size", type=positive_int,
                   help="rotate when a file reaches this many million bytes")
    c.add_argument("-G", dest="rotate_seconds", type=positive_int,
                   help="rotate every SECONDS")
    c.add_argument("-W", dest="file_count", type=positive_int,
                   help="keep at most this many files (a ring)")
    c.add_argument("-U", "--packet-buffered", action="store_true",
                   help="flush the file after every batch")
    fmt = c.add_mutually_exclusive_group()
    fmt.add_argument("--pcap", action="store_true", help="pcap (default)")
    fmt.add_argument("--pcapng", action="store_true", help="pcapng with per-group interfaces")
    fmt.add_argument("--raw", action="store_true",
                     help="LINKTYPE_RAW: IP packets only, NFLOG metadata dropped")
    c.add_argument("--overwrite", action="store_true", help="replace an existing file")


def _add_kernel_options(c: argparse.ArgumentParser) -> None:
    """capture: how the kernel batches packets, and the buffers that absorb bursts."""
    c.add_argument("--low-latency", action="store_true",
                   help="one packet per netlink message, or as many as fill one in 100 µs "
                        "under load: timely timestamps, more CPU")
    c.add_argument("--qthreshold", type=int,
                   help="packets the kernel batches into one netlink message (default 1000; "
                        "1 with --low-latency)")
    c.add_argument("--flush-timeout", type=non_negative_float, dest="flush_timeout",
                   help="how long the kernel holds a partial batch (default 0.1; 0: at once, "
                        "the --low-latency setting)")
    c.add_argument("--nlbufsiz", type=size_arg,
                   help="bytes per kernel batch message, 4096..131072 (default 128K; 4K "
                        "with --low-latency)")
    c.add_argument("--rcvbuf", type=size_arg,
                   help="netlink socket receive buffer (default 64M)")
    c.add_argument("--ring-size", type=size_arg, dest="ring_size",
                   help="ring between the C reader and the writer (default 64M, 256M with -w)")


def _add_rule_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("rule preset options")
    g.add_argument("--prefix", help="NFLOG prefix the rules put on packets (at most 63 bytes; "
                                    "no quotes, backslash or $); capture then keeps only "
                                    "packets with it")
    g.add_argument("--family", choices=["ipv4", "ipv6", "both"], default="both",
                   help="IP versions to log (default both)")
    g.add_argument("--backend", choices=["nft", "iptables", "iptables-nft", "iptables-legacy"],
                   help="the firewall to install into (default: nft with the owner flag if "
                        "the kernel has it, else iptables)")
    g.add_argument("--reqid", type=int, help="policy match: only SAs with this reqid")
    g.add_argument("--spi", type=spi_arg, help="policy match: only this SPI (0x... for hex)")
    g.add_argument("--proto", choices=["esp", "ah", "ipcomp"],
                   help="policy match: only this IPsec protocol")
    g.add_argument("--mode", choices=["tunnel", "transport"],
                   help="policy match: only SAs in this mode")
    g.add_argument("--tunnel-src", dest="tunnel_src",
                   help="policy match: tunnel source address (tunnel mode)")
    g.add_argument("--tunnel-dst", dest="tunnel_dst",
                   help="policy match: tunnel destination address (tunnel mode)")
    g.add_argument("--strict", action="store_true",
                   help="policy match: the policy must match exactly (iptables --strict)")
    g.add_argument("--interface", help="interface match / libipsec TUN device")
    g.add_argument("--ike-port", dest="ike_port", type=int, action="append",
                   help="extra IKE port (500 and 4500 are always included)")
    g.add_argument("--nflog-threshold", dest="nflog_threshold", type=int,
                   help="packets the kernel queues per rule before sending them "
                        "(NFLOG --nflog-threshold)")


def _add_read(sub: SubParsers) -> None:
    r = sub.add_parser("read", help="print a capture file (ours or tcpdump's)")
    r.add_argument("file", type=path_arg, help="capture file ('-': standard input)")
    r.add_argument("--group", type=group_arg, help="only these groups")
    add_filter_options(r, prefix=True)
    r.add_argument("-c", "--count", type=positive_int, help="stop after COUNT packets")
    r.add_argument("--utc", action="store_true", help="print times in UTC")
    dg = r.add_argument_group(
        "ESP decryption",
        "with keys, each ESP packet's line (ESP or ESP-in-UDP on 4500) is followed by an "
        "indented line with its inner packet, '[decrypted spi=0x... seq=N] <summary>' (with "
        "', ICV not checked' when the keys have no integrity key), or why it was not "
        "decrypted ('[ESP bad-icv ...]', 'unknown-spi', 'bad-padding', 'malformed'); AES-CBC "
        "+ HMAC-SHA1/SHA2, AES-GCM, extended sequence numbers; a summary goes to stderr")
    dg.add_argument("--keys", metavar="DIR",
                    help="directory with Wireshark's esp_sa (as written by 'ipsec-nflog keys "
                         "--out DIR'), or an esp_sa file")
    dg.add_argument("--log", action="append", default=[], metavar="FILE",
                    help="charon log written with 'chd 4' (repeatable)")
    dg.add_argument("--esp-secrets", dest="esp_secrets", metavar="SPEC_OR_FILE",
                    help="tcpdump -E secrets: a file of 'SPI@DST ALGO:SECRET' lines, or such "
                         "entries themselves, comma separated (visible to ps: prefer a file); "
                         "ALGO aes128-cbc, aes192-cbc or aes256-cbc, with -hmac96 when the "
                         "packets carry a 96-bit ICV (skipped, not checked)")
    dg.add_argument("--write-decrypted", dest="write_decrypted", metavar="OUT",
                    type=path_arg,
                    help="write the decrypted inner IP packets (tunnel mode; transport mode "
                         "with the outer IP header) with the outer packets' timestamps as a "
                         "LINKTYPE_RAW pcap, mode 0600")
    dg.add_argument("--overwrite", action="store_true",
                    help="replace an existing --write-decrypted file")
    r.set_defaults(func=cmd_read)


def _add_rules(sub: SubParsers) -> None:
    ru = sub.add_parser("rules", help="show, install, remove or clean up NFLOG rules")
    ru.add_argument("action", choices=["show", "install", "remove", "cleanup"],
                    help="show: the installed rules, or a preset's commands; install: a "
                         "preset that stays; remove: the rules of --tag; cleanup: rules left "
                         "by captures that have ended")
    ru.add_argument("preset", nargs="?",
                    help="rule preset for show and install (ike-esp-in, ike-esp-out, decap, "
                         "local, forward, outgoing, all, libipsec)")
    ru.add_argument("-g", "--group", type=int, default=5,
                    help="NFLOG group the rules log to (default 5)")
    ru.add_argument("--netns", metavar="NAME", help="in network namespace NAME")
    ru.add_argument("--tag", help="owner tag of the rules to remove")
    _add_rule_options(ru)
    ru.set_defaults(func=cmd_rules)


def _add_stats(sub: SubParsers) -> None:
    s = sub.add_parser("stats", help="which NFLOG groups are bound, by whom")
    s.add_argument("--netns", metavar="NAME", help="look in network namespace NAME")
    s.set_defaults(func=cmd_stats)


def cmd_keys(args: argparse.Namespace) -> int:
    from ipsec_nflog.cli import keys

    return keys.run(args)


def _add_keys(sub: SubParsers) -> None:
    k = sub.add_parser("keys", help="extract IKE/ESP keys for Wireshark")
    from ipsec_nflog.cli import keys as cli_keys

    cli_keys.add_arguments(k)
    k.set_defaults(func=cmd_keys)


def _add_demo(sub: SubParsers) -> None:
    d = sub.add_parser("demo", help="a real capture in throwaway namespaces")
    d.add_argument("-w", "--write", default="ipsec-nflog-demo.pcap", metavar="FILE",
                   type=path_arg, help="the capture file to write (default "
                                       "ipsec-nflog-demo.pcap)")
    d.add_argument("-g", "--group", type=int, default=5,
                   help="NFLOG group to use (default 5)")
    d.set_defaults(func=cmd_demo)


def _add_extcap(sub: SubParsers) -> None:
    e = sub.add_parser("extcap", allow_abbrev=False,
                       help="the Wireshark extcap interface (see docs/wireshark.md)")
    add_extcap_arguments(e)
    e.set_defaults(func=cmd_extcap, takes_unknown_arguments=True)
