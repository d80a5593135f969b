"""Real strongSwan IKEv2 peers in throwaway network namespaces (test tier 2, and tier 1's IKE).

Two ``charon-systemd`` daemons, one per namespace, joined by a veth pair. Each daemon has its
own ``strongswan.conf`` (passed with ``STRONGSWAN_CONF``), its own vici socket, ``swanctl.conf``
and log file, all in a private work directory, so nothing on the host is read or changed: the
host's ``/etc/strongswan.conf``, ``/etc/strongswan.d`` and ``/etc/swanctl`` are never loaded, and
the ``strongswan.service`` unit that Debian installs (and enables) is never needed; if it runs,
it lives in the host namespace on its own sockets and does not interfere.

Two data-plane flavours:

- ``libipsec=True`` (tier 2, the host kernel has no ESP): kernel-libipsec from
  ``libcharon-extra-plugins`` does ESP in userland. It forces ESP-in-UDP on port 4500 and
  decapsulates onto a TUN device, ``ipsec0``. Gotchas (measured on Debian 12, strongSwan 5.9.8):
  the ``kdf`` plugin must be loaded; kernel-libipsec must be listed *before* kernel-netlink;
  strongswan.conf takes one setting per line; charon-systemd stops cleanly on SIGTERM;
  ``mobike = no`` keeps captures repeatable; ``ip netns del`` does not kill daemons, so each
  charon is killed by PID.
- ``libipsec=False`` (tier 1, inside the VM whose kernel has ESP): kernel-netlink installs real
  XFRM states and policies.

The inner (tunnelled) addresses live on ``lo`` of each namespace; the traffic selectors are
those /32s, so a ``ping -I <inner>`` goes through the tunnel and IKE (outer addresses) does not.

Logging is ``ike 4`` + ``chd 4`` (plus ``cfg 2`` for the selected proposals), which is what
:mod:`ipsec_nflog.ipsec.keys` needs to extract Wireshark keys. These are throwaway test keys.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests import nstools

CHARON_CANDIDATES = ("/usr/sbin/charon-systemd", "/usr/lib/ipsec/charon-systemd")
APT_PACKAGES = ("charon-systemd strongswan-swanctl libcharon-extra-plugins "
                "libstrongswan-standard-plugins")

# Plugins, in load order. kernel-libipsec must precede kernel-netlink (both provide the
# kernel_ipsec interface; the first one registered wins). kdf is needed by IKEv2's PRF+ in 5.9.8.
_BASE_PLUGINS = ("random nonce openssl aes sha1 sha2 hmac gcm kdf pem pkcs1 x509 pubkey "
                 "revocation constraints")
PLUGINS_LIBIPSEC = _BASE_PLUGINS + " kernel-libipsec kernel-netlink socket-default vici"
PLUGINS_KERNEL = _BASE_PLUGINS + " kernel-netlink socket-default vici"

DEFAULT_IKE_PROPOSALS = "aes256-sha256-modp2048"
DEFAULT_ESP_PROPOSALS = "aes128-sha256"


IKE_SA_INIT, IKE_AUTH, INFORMATIONAL = 34, 35, 37


# ---- classification of captured packets ----------------------------------------------------

@dataclass(frozen=True)
class Seen:
    kind: str            # "ike", "esp", "icmp", "keepalive", "other"
    hook: int | None
    src: str
    dst: str
    sport: int = 0
    dport: int = 0
    exchange: int = 0    # IKE exchange type
    response: bool = False
    spi: int = 0
    seq: int = 0         # ESP sequence number / ICMP sequence number
    icmp_type: int = -1


def _ip(b: bytes) -> str:
    return ".".join(str(x) for x in b)


def classify(pkt: Any) -> Seen:
    """IKE (500, or 4500 with the non-ESP marker), ESP (proto 50 or ESP-in-UDP on 4500),
    NAT-T keepalive, ICMP echo; ``pkt`` is an :class:`ipsec_nflog.Packet` (IPv4)."""
    ip = pkt.ip
    src, dst = _ip(ip.src), _ip(ip.dst)
    if ip.p == 50:
        spi, seq = struct.unpack("!II", bytes(ip.data)[:8])
        return Seen("esp", pkt.hook, src, dst, spi=spi, seq=seq)
    if ip.p == 1:
        icmp = ip.data
        seq = struct.unpack("!H", bytes(icmp.data)[2:4])[0] if icmp.type in (0, 8) else 0
        return Seen("icmp", pkt.hook, src, dst, icmp_type=icmp.type, seq=seq)
    if ip.p == 17:
        udp = ip.data
        data = bytes(udp.data)
        if udp.dport == 500 or (udp.dport == 4500 and data[:4] == b"\0\0\0\0"):
            hdr = data if udp.dport == 500 else data[4:]
            flags = hdr[19]
            return Seen("ike", pkt.hook, src, dst, udp.sport, udp.dport, exchange=hdr[18],
                        response=bool(flags & 0x20))
        if udp.dport == 4500 and data == b"\xff":
            return Seen("keepalive", pkt.hook, src, dst, udp.sport, udp.dport)
        if udp.dport == 4500:
            spi, seq = struct.unpack("!II", data[:8])
            return Seen("esp", pkt.hook, src, dst, udp.sport, udp.dport, spi=spi, seq=seq)
    return Seen("other", pkt.hook, src, dst)


class StrongswanUnavailable(RuntimeError):
    """strongSwan (or a plugin it needs) is not installed; the message says what to install."""


def find_charon() -> str:
    for path in CHARON_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    raise StrongswanUnavailable(f"charon-systemd not found; apt-get install {APT_PACKAGES}")


def check_installed(libipsec: bool = True) -> str | None:
    """None when everything needed is installed, else a message naming the packages."""
    try:
        find_charon()
    except StrongswanUnavailable as e:
        return str(e)
    if shutil.which("swanctl") is None:
        return "swanctl not found; apt-get install strongswan-swanctl"
    plugdir = Path("/usr/lib/ipsec/plugins")
    need = ["kdf", "vici", "socket-default", "kernel-netlink", "openssl"]
    if libipsec:
        need.append("kernel-libipsec")
    missing = [p for p in need if not (plugdir / f"libstrongswan-{p}.so").exists()]
    if missing:
        return (f"strongSwan plugins missing: {', '.join(missing)}; "
                f"apt-get install {APT_PACKAGES}")
    if libipsec and not os.path.exists("/dev/net/tun"):
        return "kernel-libipsec needs /dev/net/tun (the tun module)"
    return None


@dataclass
class Peer:
    """One charon daemon in one namespace."""

    name: str                 # "left" / "right": also its IKE identity
    ns: str
    workdir: Path
    addr: str                 # outer address, IKE and ESP-in-UDP endpoints
    inner: str                # tunnelled address (on lo), the traffic selector
    remote_addr: str
    remote_inner: str
    remote_name: str
    psk: str
    libipsec: bool = True
    ike_proposals: str = DEFAULT_IKE_PROPOSALS
    esp_proposals: str = DEFAULT_ESP_PROPOSALS
    log_levels: str = "default = 1\n        ike = 4\n        chd = 4\n        cfg = 2"
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def conf(self) -> Path:
        return self.workdir / "strongswan.conf"

    @property
    def swanctl_conf(self) -> Path:
        return self.workdir / "swanctl.conf"

    @property
    def vici(self) -> Path:
        return self.workdir / "charon.vici"

    @property
    def uri(self) -> str:
        return f"unix://{self.vici}"

    @property
    def log(self) -> Path:
        return self.workdir / "charon.log"

    @property
    def stdout_path(self) -> Path:
        return self.workdir / "charon.stdout"

    @property
    def tun(self) -> str | None:
        return "ipsec0" if self.libipsec else None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    # ---- configuration -------------------------------------------------------------------
    def write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        plugins = PLUGINS_LIBIPSEC if self.libipsec else PLUGINS_KERNEL
        # One setting per line: strongswan.conf's parser is line based.
        text = f"""\
charon {{
    load = {plugins}
    port = 500
    port_nat_t = 4500
    install_routes = yes
    install_virtual_ip = no
    retransmit_tries = 3
    retransmit_timeout = 1.0
    keep_alive = 0s
    filelog {{
        main {{
            path = {self.log}
            time_format = %H:%M:%S
            append = no
            flush_line = yes
            ike_name = yes
            {self.log_levels}
        }}
    }}
    plugins {{
        vici {{
            socket = {self.uri}
        }}
    }}
}}
charon-systemd {{
    journal {{
        default = -1
    }}
}}
swanctl {{
    load = pem pkcs1 x509 revocation constraints pubkey openssl random
}}
"""
        self.conf.write_text(text)
        swanctl = f"""\
connections {{
    t {{
        version = 2
        local_addrs = {self.addr}
        remote_addrs = {self.remote_addr}
        proposals = {self.ike_proposals}
        mobike = no
        reauth_time = 0
        rekey_time = 0
        dpd_delay = 0
        local {{
            auth = psk
            id = {self.name}
        }}
        remote {{
            auth = psk
            id = {self.remote_name}
        }}
        children {{
            t {{
                local_ts = {self.inner}/32
                remote_ts = {self.remote_inner}/32
                esp_proposals = {self.esp_proposals}
                mode = tunnel
                rekey_time = 0
                start_action = none
                close_action = none
                dpd_action = clear
            }}
        }}
    }}
}}
secrets {{
    ike-t {{
        id-a = {self.name}
        id-b = {self.remote_name}
        secret = "{self.psk}"
    }}
}}
"""
        self.swanctl_conf.write_text(swanctl)
        os.chmod(self.swanctl_conf, 0o600)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["STRONGSWAN_CONF"] = str(self.conf)
        return env

    # ---- lifecycle -----------------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> None:
        charon = find_charon()
        self.write_config()
        out = open(self.stdout_path, "wb")
        try:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, charon], env=self.env(),
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        finally:
            out.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"charon ({self.name}) exited with {self.proc.returncode}: "
                                   f"{self.diagnostics()}")
            if self.vici.exists():
                r = self.swanctl("--stats", check=False)
                if r.returncode == 0:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"charon ({self.name}) not ready after {timeout}s: "
                                   f"{self.diagnostics()}")
            time.sleep(0.05)
        self.swanctl("--load-all", "--file", str(self.swanctl_conf))

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait, then SIGKILL. Never raises."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.poll() is None:
                # ip netns exec exec()s charon, so the PID is charon's own.
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(5)
        except (ProcessLookupError, subprocess.TimeoutExpired, OSError):
            pass

    def swanctl(self, *args: str, check: bool = True,
                timeout: float = 30) -> subprocess.CompletedProcess[str]:
        argv = ["swanctl", *args, "--uri", self.uri]
        r = subprocess.run(argv, env=self.env(), capture_output=True, text=True,
                           timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): "
                               f"{r.stdout}{r.stderr}\n{self.diagnostics()}")
        return r

    def diagnostics(self, lines: int = 40) -> str:
        parts = []
        for p in (self.stdout_path, self.log):
            try:
                tail = p.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {p} (tail)\n" + "\n".join(tail))
            except OSError:
                pass
        return "\n".join(parts)


@dataclass
class StrongswanPair:
    """Two peers; ``left`` initiates. Addresses are fixed: the namespaces are private."""

    left: Peer
    right: Peer
    workdir: Path

    @property
    def namespaces(self) -> tuple[str, str]:
        return self.left.ns, self.right.ns

    @property
    def logs(self) -> tuple[Path, Path]:
        return self.left.log, self.right.log

    def peers(self) -> tuple[Peer, Peer]:
        return self.left, self.right

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
            ok = all("INSTALLED" in p.swanctl("--list-sas", check=False).stdout
                     for p in self.peers())
            if ok:
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

    def list_sas(self) -> str:
        return self.left.swanctl("--list-sas").stdout

    def ping(self, count: int = 3, *, interval: float = 0.05, size: int = 56,
             reverse: bool = False, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        """Ping inner → inner through the tunnel (left → right unless ``reverse``)."""
        src, dst = (self.right, self.left) if reverse else (self.left, self.right)
        return nstools.run(["ping", "-n", "-q", "-c", str(count), "-i", str(interval),
                            "-W", "2", "-s", str(size), "-I", src.inner, dst.inner],
                           ns=src.ns, timeout=timeout)

    def diagnostics(self) -> str:
        return self.left.diagnostics() + "\n" + self.right.diagnostics()


@contextlib.contextmanager
def strongswan_pair(*, libipsec: bool = True, workdir: Path | None = None,
                    left_addr: str = "192.0.2.1", right_addr: str = "192.0.2.2",
                    left_inner: str = "10.201.0.1", right_inner: str = "10.202.0.1",
                    ike_proposals: str = DEFAULT_IKE_PROPOSALS,
                    esp_proposals: str = DEFAULT_ESP_PROPOSALS,
                    namespaces: Sequence[str] | None = None,
                    ipv6: bool = False,
                    keep_workdir: bool = False) -> Iterator[StrongswanPair]:
    """Two namespaces joined by veth, a charon in each, configs loaded, no SA yet.

    With ``namespaces=(a, b)`` the caller provides (and owns) two connected namespaces whose
    outer addresses are ``left_addr``/``right_addr``; otherwise they are created here.
    Everything made here is removed on exit, also when the body raises.
    """
    problem = check_installed(libipsec)
    if problem:
        raise StrongswanUnavailable(problem)
    own_dir = workdir is None
    wd = Path(tempfile.mkdtemp(prefix="ipnf-swan-")) if workdir is None else Path(workdir)
    made: list[str] = []
    peers: list[Peer] = []
    try:
        if namespaces is None:
            ns_l = nstools.unique_name("swl")
            made.append(ns_l)
            nstools.add_netns(ns_l)
            ns_r = nstools.unique_name("swr")
            made.append(ns_r)
            nstools.add_netns(ns_r)
            if not ipv6:
                # no IPv6 chatter (RS, MLD, ND) on veth0 and ipsec0: exact packet counts
                for ns in (ns_l, ns_r):
                    nstools.run(["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
                                 "net.ipv6.conf.default.disable_ipv6=1"], ns=ns)
            nstools.add_veth(ns_l, ns_r, f"{left_addr}/24", f"{right_addr}/24")
        else:
            ns_l, ns_r = namespaces
        for ns, inner in ((ns_l, left_inner), (ns_r, right_inner)):
            nstools.run(["ip", "addr", "add", f"{inner}/32", "dev", "lo"], ns=ns)
        psk = "ipsec-nflog-throwaway-test-psk"
        left = Peer("left", ns_l, wd / "left", left_addr, left_inner, right_addr, right_inner,
                    "right", psk, libipsec, ike_proposals, esp_proposals)
        right = Peer("right", ns_r, wd / "right", right_addr, right_inner, left_addr,
                     left_inner, "left", psk, libipsec, ike_proposals, esp_proposals)
        for p in (left, right):
            peers.append(p)
            p.start()
        yield StrongswanPair(left, right, wd)
    finally:
        for p in peers:
            p.stop()
        for ns in reversed(made):
            nstools.del_netns(ns)
        if own_dir and not keep_workdir and not os.environ.get("IPSEC_NFLOG_KEEP_SWAN_LOGS"):
            shutil.rmtree(wd, ignore_errors=True)


def charon_pids() -> list[int]:
    """PIDs of every charon/charon-systemd process on the host (for leak checks)."""
    r = subprocess.run(["pgrep", "-x", "charon-systemd|charon"], capture_output=True, text=True)
    return [int(x) for x in r.stdout.split()]


if __name__ == "__main__":  # manual smoke run: python -m tests.strongswan
    import sys

    t0 = time.monotonic()
    with strongswan_pair(keep_workdir=True) as pair:
        t1 = time.monotonic()
        print(f"daemons up in {t1 - t0:.2f}s; workdir {pair.workdir}")
        took = pair.initiate()
        print(f"established in {took:.2f}s")
        print(pair.list_sas())
        r = pair.ping(5)
        print(r.stdout)
        for ns in pair.namespaces:
            print(nstools.run(["ip", "-s", "link", "show", "ipsec0"], ns=ns, check=False).stdout)
        pair.terminate()
    print(f"total {time.monotonic() - t0:.2f}s", file=sys.stderr)
