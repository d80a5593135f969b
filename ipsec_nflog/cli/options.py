"""Reading parsed options: which of them were given on the command line."""

from __future__ import annotations

import argparse

__all__ = ["given"]


def given(args: argparse.Namespace, *names: str, **renamed: str) -> dict[str, object]:
    """``{name: args.name}`` for each of ``names`` that was given (is not None), and
    ``{key: args.dest}`` for each ``dest=key`` of ``renamed``: the keyword arguments to pass
    on, so what was not given keeps the callee's default."""
    pairs = [(name, name) for name in names] + list(renamed.items())
    return {key: getattr(args, dest) for dest, key in pairs if getattr(args, dest) is not None}
