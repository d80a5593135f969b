"""pyshark with the extcap interface: :func:`live_capture`.

pyshark's ``LiveCapture`` (0.5 and later) runs ``dumpcap -i IFACE -w -`` into tshark, and
dumpcap cannot run extcap programs - only tshark and Wireshark start them - so
``pyshark.LiveCapture(interface="ipsec-nflog")`` finds no such device (pyshark issues #405,
#710). The capture made here is a ``LiveCapture`` whose tshark opens the interface itself
(``tshark -i ipsec-nflog -o extcap.ipsec_nflog.group:5 ...``); everything else is pyshark's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from ipsec_nflog.cli.extcap_config import IFACE_IPSEC

__all__ = ["extcap_prefs", "live_capture"]


def extcap_prefs(interface: str, options: Mapping[str, object]) -> dict[str, str]:
    """tshark's ``-o`` names for the dialog options: ``{"group": 5}`` ->
    ``{"extcap.ipsec_nflog.group": "5"}`` (Wireshark's key: the interface with "_" for
    other characters, the option without its dashes)."""
    iface = "".join(c if c.isalnum() or c == "_" else "_" for c in interface).lower()
    return {f"extcap.{iface}.{name.replace('-', '').replace('_', '')}":
            ("TRUE" if v is True else str(v)) for name, v in options.items()}


def live_capture(interface: str = IFACE_IPSEC, options: Mapping[str, object] | None = None,
                 **kwargs: Any) -> Any:  # pyshark is untyped: its LiveCapture
    """A ``pyshark.LiveCapture`` on our extcap interface; ``options`` are the dialog's
    (``group``, ``rules``, ``netns``, ``low-latency`` ...), ``kwargs`` go to pyshark."""
    import pyshark
    from pyshark.capture.capture import Capture

    class ExtcapLiveCapture(pyshark.LiveCapture):  # type: ignore[misc]
        def get_parameters(self, packet_count: int | None = None) -> list[str]:
            params: list[str] = Capture.get_parameters(self, packet_count=packet_count)
            for name in self.interfaces:
                params += ["-i", name]
            return params

        async def _get_tshark_process(self, packet_count: int | None = None,
                                      stdin: int | None = None) -> Any:
            return await Capture._get_tshark_process(self, packet_count=packet_count,
                                                     stdin=stdin)

    if "eventloop" not in kwargs:
        try:
            asyncio.get_event_loop_policy().get_event_loop()
        except RuntimeError:  # an earlier asyncio.run() left none; pyshark needs a current one
            asyncio.set_event_loop(asyncio.new_event_loop())
    prefs = {**extcap_prefs(interface, options or {}), **kwargs.pop("override_prefs", {})}
    return ExtcapLiveCapture(interface=interface, override_prefs=prefs, **kwargs)
