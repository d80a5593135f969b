"""``ipsec-nflog demo``, the README's first command: a real IKEv2 tunnel between two throwaway
network namespaces, captured with the article's rules, then everything removed again.

Two strongSwan peers with kernel-libipsec (:class:`ipsec_nflog.testing.StrongswanPair`)
negotiate an IKE_SA and a CHILD_SA while a capture in the initiator's namespace listens with
the presets that work there (``ike-esp-in``, ``ike-esp-out``, ``libipsec``: kernel-libipsec
keeps the IPsec out of the kernel, so policy-match rules never match). A few pings go through
the tunnel, then it is closed. The demo prints the four views: the IKE exchange, the
ESP-in-UDP packets, the plaintext inside the tunnel (the TUN device ``ipsec0``), and the same
ESP decrypted with the keys extracted from charon's log, checked against that plaintext.

Without strongSwan it says so and falls back to synthetic IKE- and ESP-shaped packets
between two namespaces. The imports of the capture and the lab are inside the functions: the
parser imports this module at every start of the command.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from ipsec_nflog.nflog.packet import Packet
    from ipsec_nflog.testing.session import NflogCapture
    from ipsec_nflog.testing.strongswan import StrongswanPair

__all__ = ["cmd_demo", "run_demo"]

PINGS = 3
IKE_FILTER = "udp port 500 or (udp port 4500 and udp[8:4] = 0)"  # 4500: non-ESP marker
ESP_IN_UDP_FILTER = "udp port 4500 and udp[8:4] != 0"
WAIT = 10.0  # seconds for each view to be complete


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(args.write, group=args.group)


def run_demo(path: str = "ipsec-nflog-demo.pcap", group: int = 5,
             out: TextIO = sys.stdout) -> int:
    """The real tunnel when strongSwan is installed, else the synthetic packets; 0 when
    every view was complete and nothing was lost."""
    from ipsec_nflog.testing.charon import check_installed
    from ipsec_nflog.testing.requirements import privilege_problem

    _check_output(path)
    cannot = privilege_problem()
    if cannot:
        raise PermissionError(f"the demo {cannot}; run it as root (scripts/demo.sh uses sudo)")
    problem = check_installed(libipsec=True)
    if problem is None:
        return _tunnel_demo(path, group, out)
    print(f"strongSwan is not installed ({problem}).\nShowing SYNTHETIC packets instead: "
          f"IKE- and ESP-shaped UDP and raw ESP between two namespaces, no real tunnel "
          f"(scripts/install.sh installs strongSwan).\n", file=out)
    return _synthetic_demo(path, group, out)


def _check_output(path: str) -> None:
    """Before anything is made: the file must be creatable where it is asked for."""
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise ValueError(f"cannot write {path!r}: no directory {directory!r}")
    if os.path.isdir(path):
        raise ValueError(f"cannot write {path!r}: it is a directory")


# -- the real tunnel -------------------------------------------------------------------------

def _tunnel_demo(path: str, group: int, out: TextIO) -> int:
    from ipsec_nflog.testing.expect import ExpectationFailed
    from ipsec_nflog.testing.session import NflogCapture
    from ipsec_nflog.testing.strongswan import StrongswanPair

    print("Bringing up two strongSwan peers (kernel-libipsec) in throwaway namespaces...",
          file=out)
    try:
        with StrongswanPair(establish=False) as pair, \
                NflogCapture(["ike-esp-in", "ike-esp-out", "libipsec"], group=group,
                             netns=pair.left.ns, family="ipv4") as cap:
            _describe_lab(pair, group, out)
            took = pair.initiate()
            pair.ping(PINGS)
            pair.terminate()
            print(f"tunnel up in {took:.2f} s; {PINGS} pings {pair.left.inner} -> "
                  f"{pair.right.inner} through it; tunnel closed\n", file=out)
            ok = _show_views(pair, cap, out)
            written = cap.save(path, overwrite=True)
            stats = cap.stats()
    except ExpectationFailed as e:
        print(f"the capture did not see what it should have:\n{e}", file=out)
        return 1
    finally:
        print("removed the tunnel, both daemons, the namespaces and their rules", file=out)
    drops = stats.drop_summary() if stats is not None else "no counters"
    print(f"{len(cap.packets)} packets captured; {drops}", file=out)
    print(f"wrote {written} (mode {os.stat(written).st_mode & 0o777:o}); read it with "
          f"'tcpdump -n -r {written}' or 'ipsec-nflog read {written}'", file=out)
    return 0 if ok and stats is not None and not stats.lossy else 1


def _describe_lab(pair: StrongswanPair, group: int, out: TextIO) -> None:
    left, right = pair.left, pair.right
    print(f"  left  {left.ns}: {left.addr} (tunnel address {left.inner}), the initiator; "
          f"captured here on NFLOG group {group}", file=out)
    print(f"  right {right.ns}: {right.addr} (tunnel address {right.inner})", file=out)
    print("  rules: ike-esp-in, ike-esp-out (raw PREROUTING/OUTPUT) and libipsec (mangle "
          "PREROUTING/POSTROUTING on ipsec0); each logs with its name as NFLOG prefix", file=out)


def _show_views(pair: StrongswanPair, cap: NflogCapture, out: TextIO) -> bool:
    from ipsec_nflog.nflog.summary import summarize

    # IKE_SA_INIT, IKE_AUTH and the INFORMATIONAL delete, each a request and a response
    ike = cap.expect(6, filter=IKE_FILTER, timeout=WAIT)
    esp = cap.expect(2 * PINGS, filter=ESP_IN_UDP_FILTER, timeout=WAIT)
    plain = cap.expect(2 * PINGS, prefix="libipsec", timeout=WAIT)
    for title, pkts in (
            ("1. The IKE exchange (UDP 500, then 4500 behind the non-ESP marker):", ike),
            ("2. ESP-in-UDP (kernel-libipsec always encapsulates in UDP 4500):", esp),
            ("3. The plaintext inside the tunnel (the TUN device ipsec0):", plain)):
        print(title, file=out)
        for pkt in pkts:
            print(f"  {summarize(pkt)}", file=out)
        print(file=out)
    return _show_decrypted(pair, esp, plain, out)


def _show_decrypted(pair: StrongswanPair, esp: Sequence[Packet], plain: Sequence[Packet],
                    out: TextIO) -> bool:
    decryptor = pair.decryptor()
    inside = {p.payload for p in plain}
    print(f"4. The same ESP decrypted with the keys extracted from charon's log "
          f"({len(decryptor)} ESP SAs, ipsec_nflog.ipsec.keys + ipsec.decrypt):", file=out)
    good = same = 0
    for pkt in esp:
        result = decryptor.decrypt(pkt.payload or b"")
        if result is None:
            continue
        good += result.ok
        same += result.ok and result.ip_packet in inside
        print(f"  {result.describe()}", file=out)
    print(f"{good} of {len(esp)} ESP packets decrypted with a good ICV; {same} are byte for "
          f"byte the plaintext captured on ipsec0\n", file=out)
    return good == same == len(esp)


# -- synthetic packets (no strongSwan) --------------------------------------------------------

def _ike_sa_init(spi: int, response: bool) -> bytes:
    flags = 0x20 if response else 0x08
    return struct.pack(">QQBBBBII", spi, 0 if not response else spi + 1, 33, 0x20, 34, flags,
                       0, 28)


def _esp(spi: int, seq: int) -> bytes:
    return struct.pack(">II", spi, seq) + os.urandom(48)


def _send_synthetic(src_ns: str, dst: str, spi: int, response: bool) -> int:
    """IKE on 500, IKE on 4500 (non-ESP marker), ESP-in-UDP, raw ESP, and one plain UDP
    packet that no rule matches. Returns how many packets the rules should catch."""
    from ipsec_nflog.system.netns import run_in_netns

    def send() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.sendto(_ike_sa_init(spi, response), (dst, 500))
            u.sendto(b"\0\0\0\0" + _ike_sa_init(spi, response), (dst, 4500))
            u.sendto(_esp(spi, 1), (dst, 4500))
            u.sendto(b"not ipsec", (dst, 9999))
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, 50) as r:
            r.sendto(_esp(spi, 2), (dst, 0))

    run_in_netns(src_ns, send)
    return 4


def _synthetic_demo(path: str, group: int, out: TextIO) -> int:
    from ipsec_nflog.nflog.summary import summarize
    from ipsec_nflog.testing.expect import ExpectationFailed
    from ipsec_nflog.testing.lab import NetnsPair
    from ipsec_nflog.testing.session import NflogCapture

    try:
        with NetnsPair(("demo-gw", "demo-peer"), a4="10.199.0.1", b4="10.199.0.2",
                       ipv6=False) as lab, \
                NflogCapture(["ike-esp-in", "ike-esp-out"], group=group, netns=lab.a,
                             family="ipv4") as cap:
            print(f"namespaces {lab.a} ({lab.a4}) and {lab.b} ({lab.b4}), NFLOG group "
                  f"{group}", file=out)
            expected = _send_synthetic(lab.a, lab.b4, 0x1000, response=False)
            expected += _send_synthetic(lab.b, lab.a4, 0x2000, response=True)
            for pkt in cap.expect(expected, timeout=3):
                print(summarize(pkt), file=out)
    except ExpectationFailed as e:
        print(f"the capture did not see what it should have:\n{e}", file=out)
        return 1
    finally:
        print("removed the namespaces and their rules", file=out)
    return _synthetic_summary(cap, path, expected, out)


def _synthetic_summary(cap: NflogCapture, path: str, expected: int, out: TextIO) -> int:
    written = cap.save(path, overwrite=True)
    stats = cap.stats()
    got = len(cap.packets)
    drops = stats.drop_summary() if stats is not None else "no counters"
    print("('~' after the time: the kernel sends no timestamp on OUTPUT, so the receive "
          "time stands in)", file=out)
    print(f"\n{got} packets captured (expected {expected}); {drops}", file=out)
    print(f"wrote {written} (mode {os.stat(written).st_mode & 0o777:o}); read it with "
          f"'tcpdump -n -r {written}' or 'ipsec-nflog read {written}'", file=out)
    return 0 if got == expected and stats is not None and not stats.lossy else 1
