"""``ipsec-nflog rules``: show, install, remove or clean up rules; and the rules that
``capture --rules`` installs for the duration of a capture."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, TypedDict, cast

from ipsec_nflog.cli.errors import EXIT_OK, CliError
from ipsec_nflog.cli.options import given

if TYPE_CHECKING:
    from ipsec_nflog.rules.lifecycle import InstalledRules

__all__ = ["RuleOptions", "cmd_rules", "install_capture_rules", "remove_capture_rules",
           "rule_options"]


class RuleOptions(TypedDict, total=False):
    """The preset options given on the command line (``rules.presets.build``'s names)."""

    prefix: str | None
    family: str
    reqid: int
    spi: int
    proto: str
    mode: str
    tunnel_src: str
    tunnel_dst: str
    interface: str
    backend: str
    threshold: int
    strict: bool
    ike_ports: tuple[int, ...]


def rule_options(args: argparse.Namespace) -> RuleOptions:
    """The rule preset options of ``args``; those not given keep the preset's defaults."""
    options = RuleOptions(prefix=args.prefix, family=args.family)
    options.update(cast(RuleOptions, given(
        args, "reqid", "spi", "proto", "mode", "tunnel_src", "tunnel_dst", "interface",
        "backend", nflog_threshold="threshold")))
    if args.strict:
        options["strict"] = True
    if args.ike_port:
        options["ike_ports"] = tuple(args.ike_port)
    return options


def cmd_rules(args: argparse.Namespace) -> int:
    from ipsec_nflog import rules

    if args.action == "show":
        if args.preset:
            text = rules.render(args.preset, group=args.group, **rule_options(args))
            print(text, end="" if text.endswith("\n") else "\n")
        else:
            print(rules.show(netns=args.netns) or "no ipsec_nflog rules installed")
        return EXIT_OK
    if args.action == "cleanup":
        removed = rules.cleanup(netns=args.netns)
        print(f"removed {len(removed)} stale rule set(s)" +
              "".join(f"\n  {r}" for r in removed))
        return EXIT_OK
    if args.action == "install":
        if not args.preset:
            raise CliError("rules install needs a preset")
        handle = rules.install(args.preset, group=args.group, netns=args.netns, persistent=True,
                               **rule_options(args))
        print(f"installed {args.preset} for group {args.group} ({handle.backend}), tag "
              f"{handle.tag}; remove with: ipsec-nflog rules remove --tag {handle.tag}")
        return EXIT_OK
    if args.action == "remove":
        if not args.tag:
            raise CliError("rules remove needs --tag (see 'ipsec-nflog rules show')")
        removed = rules.remove(args.tag, netns=args.netns)
        print(f"removed {len(removed)} rule(s)/table(s) tagged {args.tag}"
              + "".join(f"\n  {r}" for r in removed))
        return EXIT_OK
    raise CliError(f"unknown rules action {args.action!r}")


def install_capture_rules(args: argparse.Namespace, group: int) -> InstalledRules:
    """``capture --rules PRESET``: the preset's rules, removed when the capture ends."""
    from ipsec_nflog import rules

    # The capture's StopSignals owns the signals: lifecycle then installs no handler of its
    # own and holds the signals until the rules are registered, so one only sets our flag.
    handle = rules.install(args.rules, group=group, netns=args.netns, **rule_options(args))
    args.rules_installed = f"{args.rules} via {handle.backend}"  # for the ready line
    if not args.quiet:
        print(f"installed {args.rules} rules for group {group} ({handle.backend})",
              file=sys.stderr)
    return handle


def remove_capture_rules(args: argparse.Namespace, handle: InstalledRules) -> None:
    from ipsec_nflog.rules.lifecycle import NetnsGoneError

    try:
        handle.remove()
    except NetnsGoneError as e:  # nothing to clean up: say so instead of advising cleanup
        print(f"ipsec-nflog: {e}", file=sys.stderr)
        return
    if not args.quiet:
        print(f"removed {args.rules} rules", file=sys.stderr)
