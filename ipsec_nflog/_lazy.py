"""Public names of a package that load on first use (PEP 562 module ``__getattr__``), so that
importing the package stays cheap: the ``ipsec-nflog`` command takes its signals before
anything heavy loads, and the pytest plugin costs nothing in runs that do not use it."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_names"]


def lazy_names(package: str, homes: Mapping[str, str]) -> tuple[Callable[[str], Any],
                                                                 Callable[[], list[str]]]:
    """``__getattr__, __dir__ = lazy_names(__name__, {"Name": "pkg.module", ...})``: each
    name is imported from its home module on first access, then kept in the package."""
    namespace = sys.modules[package].__dict__

    def load(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home), name)
        namespace[name] = value
        return value

    def names() -> list[str]:
        return sorted([*namespace, *homes])

    return load, names
