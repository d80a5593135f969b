"""Input checks shared by the capture config and the rule helpers (pure Python)."""

from __future__ import annotations

from typing import Any

__all__ = ["check_int", "validate_group"]


def check_int(name: str, value: Any, lo: int, hi: int) -> int:
    """``value`` if it is an int (not a bool) in lo..hi, else ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, not {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in {lo}..{hi}, got {value}")
    return value


def validate_group(group: Any) -> int:
    """An NFLOG group number, 0..65535."""
    return check_int("NFLOG group", group, 0, 65535)
