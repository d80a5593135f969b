"""``ipsec-nflog stats``: which NFLOG groups are bound in a namespace, and by whom."""

from __future__ import annotations

import argparse

from ipsec_nflog.cli.errors import EXIT_OK

__all__ = ["cmd_stats"]


def cmd_stats(args: argparse.Namespace) -> int:
    from ipsec_nflog.nflog.summary import printable
    from ipsec_nflog.system.procinfo import group_bindings

    where = f"network namespace {args.netns!r}" if args.netns else "this network namespace"
    rows = group_bindings(args.netns)
    if not rows:
        print(f"no NFLOG groups are bound in {where}")
        return EXIT_OK
    print(f"NFLOG groups bound in {where}:")
    for b in rows:
        who = f"{printable(b.comm or '?')} (pid {b.pid})" if b.pid else f"netlink port {b.portid}"
        copy = (f"copies packets up to {b.copy_range} bytes" if b.copy_mode == 2
                else f"copy mode {b.copy_mode_name}")
        print(f"  group {b.group}: bound by {who}; {copy}; flushes every "
              f"{b.flush_timeout_cs / 100:.2f} s; {b.queue_len} packets queued in the kernel")
    return EXIT_OK
