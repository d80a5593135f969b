"""Input checks shared by the capture config and the rule helpers (pure Python)."""

from __future__ import annotations

from typing import Any

__all__ = ["IFNAMSIZ", "check_int", "validate_group", "validate_interface"]

IFNAMSIZ = 16  # Linux: interface names are at most 15 bytes


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


def validate_interface(name: Any, what: str = "interface") -> str:
    """A Linux interface name as ``dev_valid_name()`` accepts it, optionally ending in ``+``
    (the iptables wildcard: every interface whose name starts with the rest)."""
    if not isinstance(name, str):
        raise ValueError(f"{what} name must be a string, not {name!r}")
    base = name[:-1] if name.endswith("+") else name
    raw = name.encode("utf-8", "surrogateescape")
    if not name or (not base and name != "+"):
        raise ValueError(f"{what} name must not be empty")
    if len(raw) > IFNAMSIZ - 1:
        raise ValueError(f"{what} name {name!r} is {len(raw)} bytes; Linux allows at most "
                         f"{IFNAMSIZ - 1}")
    if base in (".", ".."):
        raise ValueError(f"{what} name {name!r} is not allowed by Linux")
    for ch in base:
        if ch in "/:" or ch.isspace():
            raise ValueError(f"{what} name {name!r} contains {ch!r}, which Linux does not "
                             f"allow in interface names")
        if ch in "\"'\\*+" or not (" " < ch <= "~"):
            raise ValueError(f"{what} name {name!r} contains {ch!r}; only printable ASCII "
                             f"without quotes, backslash, '*' or an inner '+' is accepted "
                             f"(a trailing '+' is the iptables wildcard)")
    return name
