"""Two real strongSwan IKEv2 peers in throwaway network namespaces (see :mod:`.charon`).

::

    with StrongswanPair() as pair:            # namespaces, two charons, IKE_SA + CHILD_SA up
        pair.ping(3)                          # inner -> inner, through the tunnel
        found = pair.keys()                   # ipsec_nflog.ipsec.keys from charon's log

Two ``charon-systemd`` daemons, ``left`` (the initiator) and ``right``, one per namespace of a
:class:`~ipsec_nflog.testing.lab.NetnsPair` (outer addresses 192.0.2.1 and .2, IPv6 off).
The inner (tunnelled) addresses live on ``lo`` of each namespace (10.201.0.1, 10.202.0.1);
the traffic selectors are those /32s, so ``ping()`` (``ping -I <inner>``) goes through the
tunnel and IKE (outer addresses) does not. By default the data plane is kernel-libipsec:
ESP-in-UDP on port 4500, the plaintext on the TUN device ``ipsec0``, no ESP in the kernel
(so the policy-match rule presets never match; ``ike-esp-in``/``ike-esp-out``/``libipsec``
see everything).

``establish=False`` leaves the daemons configured with no SA yet, for captures that must
see the first IKE packet (then ``initiate()``). On exit the daemons are killed by PID, the
namespaces deleted and the work directory removed, also when the block fails; a failing
block's exception carries the tails of both charon logs as a note.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from ipsec_nflog.testing.charon import (
    DEFAULT_ESP_PROPOSALS,
    DEFAULT_IKE_PROPOSALS,
    Peer,
    StrongswanUnavailable,
    check_installed,
)
from ipsec_nflog.testing.lab import NetnsPair, run

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ipsec_nflog.ipsec.decrypt import EspDecryptor
    from ipsec_nflog.ipsec.keys import LogKeys

__all__ = ["KEEP_LOGS_ENV", "StrongswanPair", "charon_pids", "strongswan_pair"]

KEEP_LOGS_ENV = "IPSEC_NFLOG_KEEP_SWAN_LOGS"  # "1": keep the work directory with the logs
_PSK = "ipsec-nflog-throwaway-test-psk"


class StrongswanPair:
    """Two charon peers with one IKEv2 connection ``t`` (PSK, tunnel mode); see the module
    docstring. Context-managed: ``start()`` on entry, ``close()`` on exit."""

    def __init__(self, *, establish: bool = True, libipsec: bool = True,
                 workdir: Path | str | None = None,
                 left_addr: str = "192.0.2.1", right_addr: str = "192.0.2.2",
                 left_inner: str = "10.201.0.1", right_inner: str = "10.202.0.1",
                 ike_proposals: str = DEFAULT_IKE_PROPOSALS,
                 esp_proposals: str = DEFAULT_ESP_PROPOSALS,
                 namespaces: Sequence[str] | None = None, ipv6: bool = False,
                 keep_workdir: bool = False, timeout: float = 30.0) -> None:
        """``namespaces=(a, b)``: two connected namespaces the caller owns, whose outer
        addresses are ``left_addr``/``right_addr``; otherwise a NetnsPair is made here.
        ``ipv6``: leave IPv6 on in the namespaces made here."""
        self.establish, self.libipsec, self.ipv6 = establish, libipsec, ipv6
        self._own_dir = workdir is None
        self._workdir = None if workdir is None else Path(workdir)
        self.keep_workdir, self.timeout = keep_workdir, timeout
        self._addrs = (left_addr, right_addr, left_inner, right_inner)
        self._proposals = (ike_proposals, esp_proposals)
        self._given_ns = tuple(namespaces) if namespaces is not None else None
        self._lab: NetnsPair | None = None
        self._peers: tuple[Peer, Peer] | None = None
        self._started: list[Peer] = []

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> StrongswanPair:
        """Namespaces, both daemons, and (``establish``) the tunnel; on any error everything
        made so far is removed again. :class:`StrongswanUnavailable` when not installed."""
        problem = check_installed(self.libipsec)
        if problem:
            raise StrongswanUnavailable(problem)
        if self._peers is not None:
            raise RuntimeError("this StrongswanPair is already started")
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="ipnf-swan-"))
        try:
            left, right = self._make_peers(self._workdir)
            for p in (left, right):
                self._started.append(p)
                p.start()
            if self.establish:
                self.initiate(self.timeout)
        except BaseException:
            self.close()
            raise
        return self

    def _make_peers(self, wd: Path) -> tuple[Peer, Peer]:
        left_addr, right_addr, left_inner, right_inner = self._addrs
        if self._given_ns is None:
            self._lab = NetnsPair(("swl", "swr"), a4=left_addr, b4=right_addr, ipv6=self.ipv6)
            ns_l, ns_r = self._lab.start().namespaces
        else:
            ns_l, ns_r = self._given_ns
        for ns, inner in ((ns_l, left_inner), (ns_r, right_inner)):
            run(["ip", "addr", "add", f"{inner}/32", "dev", "lo"], ns=ns)
        ike, esp = self._proposals
        left = Peer("left", ns_l, wd / "left", left_addr, left_inner, right_addr, right_inner,
                    "right", _PSK, self.libipsec, ike, esp)
        right = Peer("right", ns_r, wd / "right", right_addr, right_inner, left_addr,
                     left_inner, "left", _PSK, self.libipsec, ike, esp)
        self._peers = (left, right)
        return left, right

    def close(self) -> None:
        """Stop both daemons, delete the namespaces made here, remove the work directory
        (unless ``keep_workdir`` or $IPSEC_NFLOG_KEEP_SWAN_LOGS=1). Idempotent, never raises."""
        started, self._started = self._started, []
        for p in started:
            p.stop()
        if self._lab is not None:
            self._lab.close()
            self._lab = None
        wd = self._workdir
        if wd is not None and self._own_dir and not self.keep_workdir \
                and os.environ.get(KEEP_LOGS_ENV) != "1":
            shutil.rmtree(wd, ignore_errors=True)

    def __enter__(self) -> StrongswanPair:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if isinstance(exc, Exception) and self._peers is not None and hasattr(exc, "add_note"):
            exc.add_note("strongSwan logs:\n" + self.diagnostics())
        self.close()

    # -- the peers ---------------------------------------------------------------------------
    def peers(self) -> tuple[Peer, Peer]:
        if self._peers is None:
            raise RuntimeError("the StrongswanPair is not started")
        return self._peers

    @property
    def left(self) -> Peer:
        return self.peers()[0]

    @property
    def right(self) -> Peer:
        return self.peers()[1]

    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            raise RuntimeError("the StrongswanPair is not started")
        return self._workdir

    @property
    def namespaces(self) -> tuple[str, str]:
        return self.left.ns, self.right.ns

    @property
    def logs(self) -> tuple[Path, Path]:
        return self.left.log, self.right.log

    # -- the tunnel --------------------------------------------------------------------------
    def initiate(self, timeout: float = 30) -> float:
        """Bring up IKE_SA + CHILD_SA ``t`` from the left; returns the seconds it took."""
        t0 = time.monotonic()
        self.left.swanctl("--initiate", "--ike", "t", "--child", "t", "--timeout",
                          str(int(timeout)), timeout=timeout + 5)
        self.wait_established(timeout)
        return time.monotonic() - t0

    def wait_established(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if all("INSTALLED" in p.swanctl("--list-sas", check=False).stdout
                   for p in self.peers()):
                return
            if time.monotonic() > deadline:
                raise TimeoutError("CHILD_SA not installed on both peers:\n"
                                   + "\n".join(p.swanctl("--list-sas", check=False).stdout
                                               for p in self.peers()))
            time.sleep(0.05)

    def terminate(self, timeout: float = 15) -> None:
        """Delete the IKE_SA (and its CHILD_SAs) from the left; waits until both are clean."""
        self.left.swanctl("--terminate", "--ike", "t", "--timeout", str(int(timeout)),
                          check=False, timeout=timeout + 5)
        deadline = time.monotonic() + timeout
        while any(p.swanctl("--list-sas", check=False).stdout.strip() for p in self.peers()):
            if time.monotonic() > deadline:
                raise TimeoutError("SAs still present after terminate")
            time.sleep(0.05)

    def reconnect(self, timeout: float = 30) -> float:
        """Tear the tunnel down and negotiate it again (new SPIs and keys), so a capture
        started after the tunnel came up sees a whole IKE exchange; returns the seconds the
        new negotiation took."""
        self.terminate(timeout)
        return self.initiate(timeout)

    def list_sas(self) -> str:
        return self.left.swanctl("--list-sas").stdout

    def child_spis(self) -> tuple[int, int]:
        """(inbound, outbound) SPI of the left peer's CHILD_SA."""
        out = self.list_sas()
        m_in = re.search(r"^\s+in\s+([0-9a-f]{8})", out, re.M)
        m_out = re.search(r"^\s+out\s+([0-9a-f]{8})", out, re.M)
        if not (m_in and m_out):
            raise RuntimeError(f"no installed CHILD_SA on the left peer:\n{out}")
        return int(m_in.group(1), 16), int(m_out.group(1), 16)

    def ping(self, count: int = 3, *, interval: float = 0.05, size: int = 56,
             reverse: bool = False, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        """Ping inner -> inner through the tunnel (left -> right unless ``reverse``); raises
        ``CalledProcessError`` when a reply is missing."""
        src, dst = (self.right, self.left) if reverse else (self.left, self.right)
        return run(["ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", "2",
                    "-s", str(size), "-I", src.inner, dst.inner], ns=src.ns, timeout=timeout)

    def keys(self) -> LogKeys:
        """The IKE and ESP keys of every SA so far, extracted from the initiator's charon log
        by :mod:`ipsec_nflog.ipsec.keys` (both peers log the same keys)."""
        from ipsec_nflog.ipsec import keys

        with keys.open_log(self.left.log) as lines:
            found = keys.parse_charon_log(lines)
        found.warnings += lines.warnings()
        return found

    def decryptor(self) -> EspDecryptor:
        """An :class:`~ipsec_nflog.ipsec.decrypt.EspDecryptor` with :meth:`keys`' ESP SAs."""
        from ipsec_nflog.ipsec.decrypt import EspDecryptor

        return EspDecryptor(self.keys().esp)

    def diagnostics(self) -> str:
        """The tails of both daemons' output and logs."""
        if self._peers is None:
            return "(not started)"
        return self.left.diagnostics() + "\n" + self.right.diagnostics()

    def __repr__(self) -> str:
        if self._peers is None:
            return "<StrongswanPair (not started)>"
        return f"<StrongswanPair left={self.left.ns} right={self.right.ns}>"


# ``with strongswan_pair(...) as pair``: daemons up and configured, no SA yet (the caller
# initiates, e.g. inside a capture). Options as for StrongswanPair.
strongswan_pair = functools.partial(StrongswanPair, establish=False)


def charon_pids() -> list[int]:
    """PIDs of every charon/charon-systemd process on the host (for leak checks)."""
    r = subprocess.run(["pgrep", "-x", "charon-systemd|charon"], capture_output=True, text=True)
    return [int(x) for x in r.stdout.split()]
