"""What a capture keeps, checked in pure Python before anything opens: a tcpdump filter
expression (compiled later by libpcap, in ``capture.filter``) and the NFLOG metadata BPF
cannot see (hook, prefix, input and output device)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Union

from ipsec_nflog.validate import validate_interface

__all__ = ["FILTER_MAX_LENGTH", "HOOK_NUMBERS", "Selection", "check_expression",
           "hook_mask"]

FILTER_MAX_LENGTH = 4096  # characters; a longer expression is an error, not a filter
# netfilter hook numbers of the inet (and bridge) families, the NFLOG packet header's hook
HOOK_NUMBERS = {"PREROUTING": 0, "INPUT": 1, "FORWARD": 2, "OUTPUT": 3, "POSTROUTING": 4}


def check_expression(expression: object) -> str:
    """A filter expression as libpcap will see it, or ValueError saying why not."""
    if not isinstance(expression, str):
        raise ValueError(f"filter must be a string, not {type(expression).__name__}")
    text = " ".join(expression.split())
    if not text:
        raise ValueError("empty filter expression (leave the filter out to keep everything)")
    if len(text) > FILTER_MAX_LENGTH:
        raise ValueError(f"filter expression is {len(text)} characters long; at most "
                         f"{FILTER_MAX_LENGTH} are accepted")
    if "\0" in text:
        raise ValueError("filter expression contains a NUL character")
    return text


def hook_mask(hooks: Iterable[str]) -> int:
    """Bit mask of hook names (``OUTPUT``, ``postrouting``); ValueError for unknown ones."""
    mask = 0
    for name in hooks:
        n = HOOK_NUMBERS.get(name.strip().upper())
        if n is None:
            raise ValueError(f"unknown hook {name!r}; known: {', '.join(HOOK_NUMBERS)}")
        mask |= 1 << n
    return mask


def check_device(what: str, device: Union[str, int, None]) -> Union[str, int, None]:
    if device is None:
        return None
    if isinstance(device, bool):
        raise ValueError(f"{what} must be an interface name or index, not {device!r}")
    if isinstance(device, int):
        if not 1 <= device <= 2**31 - 1:
            raise ValueError(f"{what} index must be positive, got {device}")
        return device
    if isinstance(device, str) and device.isdigit():
        return check_device(what, int(device))
    if isinstance(device, str) and device.endswith("+"):
        raise ValueError(f"{what} must name one interface, not a wildcard: {device!r}")
    return validate_interface(device, what)


@dataclass(frozen=True)
class Selection:
    """The NFLOG metadata a packet must have to be kept; None fields match everything."""

    hooks: tuple[str, ...] | None = None
    prefix: str | None = None
    indev: Union[str, int, None] = None
    outdev: Union[str, int, None] = None

    def __post_init__(self) -> None:
        if self.hooks is not None:
            hooks = (self.hooks,) if isinstance(self.hooks, str) else tuple(self.hooks)
            hook_mask(hooks)
            object.__setattr__(self, "hooks", tuple(h.strip().upper() for h in hooks))
        if self.prefix is not None:
            if not isinstance(self.prefix, str) or len(self.prefix.encode()) > 63 \
                    or "\0" in self.prefix:
                raise ValueError(f"prefix must be a string of at most 63 bytes, not "
                                 f"{self.prefix!r}")
        object.__setattr__(self, "indev", check_device("indev", self.indev))
        object.__setattr__(self, "outdev", check_device("outdev", self.outdev))

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.hooks, self.prefix, self.indev, self.outdev))
