"""What the extcap offers Wireshark: its interfaces, link type and options dialog, as data.

Every dialog option is a ``capture`` option of the same name (``--group``, ``--rules``,
``--family`` ...), so a capture started from Wireshark is checked and run by exactly the
code of ``ipsec-nflog capture``; :func:`capture_argv` turns what Wireshark passes back into
that command line.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import NoReturn

from ipsec_nflog._version import __version__
from ipsec_nflog.cli.errors import CliError

__all__ = ["IFACE_GROUP", "IFACE_IPSEC", "INTERFACES", "OPTIONS", "ExtcapOption",
           "capture_argv", "config_lines", "dlt_lines", "interface_lines", "option_parser",
           "parse_options"]

IFACE_IPSEC = "ipsec-nflog"
IFACE_GROUP = "ipsec-nflog-group"
INTERFACES = {
    IFACE_IPSEC: "IPsec traffic (NFLOG, rules installed)",
    IFACE_GROUP: "NFLOG group (no rules installed)",
}
LINKTYPE_NFLOG = 239
AUTO = "auto"  # --backend: let the capture choose (nft with owner tables, else iptables)


@dataclass(frozen=True)
class ExtcapOption:
    """One ``arg`` line of ``--extcap-config``; ``values`` are (value, display) pairs of a
    selector or radio, the first being the default unless ``default`` names another."""

    call: str
    display: str
    type: str
    tooltip: str
    group: str
    default: str | None = None
    values: tuple[tuple[str, str], ...] = ()
    range: str | None = None
    validation: str | None = None
    ipsec_only: bool = False


def _presets() -> tuple[tuple[str, str], ...]:
    from ipsec_nflog.rules.presets import PRESETS

    return tuple((p.name, f"{p.name}: {p.title}") for p in PRESETS.values())


OPTIONS: tuple[ExtcapOption, ...] = (
    ExtcapOption("--group", "NFLOG group", "unsigned", "NFLOG group to capture (0-65535); "
                 "the rules log to it", "Capture", default="5", range="0,65535"),
    ExtcapOption("--rules", "Rule preset", "selector", "the article's rules to install for the "
                 "capture (removed when it stops)", "Rules", default="all", ipsec_only=True),
    ExtcapOption("--family", "IP version", "radio", "IP versions the rules log", "Rules",
                 default="both", values=(("both", "IPv4 and IPv6"), ("ipv4", "IPv4"),
                                         ("ipv6", "IPv6")), ipsec_only=True),
    ExtcapOption("--backend", "Firewall", "selector", "where the rules go (auto: nftables "
                 "with owner tables if the kernel has them, else iptables)", "Rules",
                 default=AUTO, values=((AUTO, "auto"), ("nft", "nftables"),
                                       ("iptables", "iptables"),
                                       ("iptables-nft", "iptables-nft"),
                                       ("iptables-legacy", "iptables-legacy")),
                 ipsec_only=True),
    ExtcapOption("--prefix", "NFLOG prefix", "string", "prefix the rules put on packets; "
                 "only packets with it are kept (at most 63 bytes)", "Rules",
                 validation=r"^[^\"'\\\\$]*$"),
    ExtcapOption("--reqid", "Policy reqid", "unsigned", "policy match: only SAs with this "
                 "reqid", "Rules", ipsec_only=True),
    ExtcapOption("--spi", "Policy SPI", "string", "policy match: only this SPI (decimal, or "
                 "hex as 0x...)", "Rules", validation=r"^(0[xX][0-9a-fA-F]+|[0-9]+)?$",
                 ipsec_only=True),
    ExtcapOption("--snaplen", "Snapshot length", "unsigned", "bytes kept per packet (0: all)",
                 "Capture", default="0", range="0,65535"),
    ExtcapOption("--netns", "Network namespace", "string", "capture (and install the rules) "
                 "inside this named network namespace (ip netns)", "Capture"),
    ExtcapOption("--low-latency", "Low latency", "boolflag", "one packet per netlink "
                 "message (under load: as many as fill one in 100 µs): timely OUTPUT "
                 "timestamps, more CPU", "Capture"),
)


def interface_lines() -> list[str]:
    lines = [f"extcap {{version={__version__}}}"]
    lines += [f"interface {{value={v}}}{{display={d}}}" for v, d in INTERFACES.items()]
    return lines


def dlt_lines() -> list[str]:
    return [f"dlt {{number={LINKTYPE_NFLOG}}}{{name=NFLOG}}"
            f"{{display=Linux netfilter log messages}}"]


def _options_for(interface: str) -> list[ExtcapOption]:
    return [o for o in OPTIONS if interface == IFACE_IPSEC or not o.ipsec_only]


def config_lines(interface: str) -> list[str]:
    """The ``arg``/``value`` lines of the options dialog for ``interface``."""
    lines: list[str] = []
    values: list[str] = []
    for number, opt in enumerate(_options_for(interface)):
        choices = _presets() if opt.call == "--rules" else opt.values
        line = (f"arg {{number={number}}}{{call={opt.call}}}{{display={opt.display}}}"
                f"{{type={opt.type}}}{{tooltip={opt.tooltip}}}")
        # A selector's default is marked on its value lines; braces never appear in values
        # (the grammar has no escaping).
        for key in ("range", "validation") if choices else ("default", "range", "validation"):
            v = getattr(opt, key)
            if v is not None:
                line += f"{{{key}={v}}}"
        lines.append(line + f"{{group={opt.group}}}")
        for value, display in choices:
            default = "true" if value == (opt.default or choices[0][0]) else "false"
            values.append(f"value {{arg={number}}}{{value={value}}}{{display={display}}}"
                          f"{{default={default}}}")
    return lines + values


class _OptionParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise CliError(f"extcap options: {message}")


def option_parser() -> argparse.ArgumentParser:
    """Wireshark's values for the dialog options; anything else is left for the caller
    (and ignored: newer Wireshark versions add arguments)."""
    p = _OptionParser(add_help=False, allow_abbrev=False)
    for opt in OPTIONS:
        if opt.type == "boolflag":
            p.add_argument(opt.call, action="store_true")
        else:
            p.add_argument(opt.call)
    return p


def parse_options(argv: list[str]) -> argparse.Namespace:
    """The dialog options among ``argv`` (the arguments the extcap itself does not take).
    Wireshark passes each value as its own word, which may start with "-" (a prefix, say):
    it is joined to its option first, so argparse cannot take it for an option."""
    takes_value = {o.call for o in OPTIONS if o.type != "boolflag"}
    words: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in takes_value and i + 1 < len(argv):
            words.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            words.append(argv[i])
            i += 1
    options, _unknown = option_parser().parse_known_args(words)  # newer Wireshark's: ignored
    return options


def capture_argv(interface: str, options: argparse.Namespace, capture_filter: str | None
                 ) -> list[str]:
    """The ``ipsec-nflog capture`` command line for a Wireshark capture: pcapng on standard
    output (the FIFO), quiet (Wireshark shows anything on stderr as an error)."""
    argv = ["capture", "-w", "-", "--pcapng", "-q"]
    for opt in _options_for(interface):
        value = getattr(options, opt.call[2:].replace("-", "_"))
        if opt.type == "boolflag":
            argv += [opt.call] if value else []
        elif value not in (None, "") and not (opt.call == "--backend" and value == AUTO):
            argv.append(f"{opt.call}={value}")  # one word: a value may start with "-"
    if interface == IFACE_IPSEC and options.rules in (None, ""):
        argv.append("--rules=all")
    if capture_filter and capture_filter.strip():
        argv += ["--", capture_filter]
    return argv
