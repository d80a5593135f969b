"""One strongSwan ``charon-systemd`` daemon in one network namespace, configured privately.

Each daemon has its own ``strongswan.conf`` (passed with ``STRONGSWAN_CONF``), its own vici
socket, ``swanctl.conf`` and log file, all in a private work directory, so nothing on the host
is read or changed: the host's ``/etc/strongswan.conf``, ``/etc/strongswan.d`` and
``/etc/swanctl`` are never loaded, and the ``strongswan.service`` unit that Debian installs
(and enables) is never needed; if it runs, it lives in the host namespace on its own sockets
and does not interfere.

Two data-plane flavours:

- ``libipsec=True`` (the host kernel needs no ESP): kernel-libipsec from
  ``libcharon-extra-plugins`` does ESP in userland. It forces ESP-in-UDP on port 4500 and
  decapsulates onto a TUN device, ``ipsec0``. Gotchas (measured on Debian 12, strongSwan 5.9.8):
  the ``kdf`` plugin must be loaded; kernel-libipsec must be listed *before* kernel-netlink;
  strongswan.conf takes one setting per line; charon-systemd stops cleanly on SIGTERM;
  ``mobike = no`` keeps captures repeatable; ``ip netns del`` does not kill daemons, so each
  charon is killed by PID.
- ``libipsec=False`` (a kernel with ESP, such as the tier-1 VM's): kernel-netlink installs
  real XFRM states and policies.

Logging is ``ike 4`` + ``chd 4`` (plus ``cfg 2`` for the selected proposals), which is what
:mod:`ipsec_nflog.ipsec.keys` needs to extract Wireshark keys. These are throwaway test keys.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from ipsec_nflog.system.netns import ns_argv

__all__ = ["APT_PACKAGES", "DEFAULT_ESP_PROPOSALS", "DEFAULT_IKE_PROPOSALS", "Peer",
           "StrongswanUnavailable", "check_installed", "find_charon"]

CHARON_CANDIDATES = ("/usr/sbin/charon-systemd", "/usr/lib/ipsec/charon-systemd")
APT_PACKAGES = ("charon-systemd strongswan-swanctl libcharon-extra-plugins "
                "libstrongswan-standard-plugins")
PLUGIN_DIR = Path("/usr/lib/ipsec/plugins")

# Plugins, in load order. kernel-libipsec must precede kernel-netlink (both provide the
# kernel_ipsec interface; the first one registered wins). kdf is needed by IKEv2's PRF+ in 5.9.8.
_BASE_PLUGINS = ("random nonce openssl aes sha1 sha2 hmac gcm kdf pem pkcs1 x509 pubkey "
                 "revocation constraints")
PLUGINS_LIBIPSEC = _BASE_PLUGINS + " kernel-libipsec kernel-netlink socket-default vici"
PLUGINS_KERNEL = _BASE_PLUGINS + " kernel-netlink socket-default vici"

DEFAULT_IKE_PROPOSALS = "aes256-sha256-modp2048"
DEFAULT_ESP_PROPOSALS = "aes128-sha256"


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
    need = ["kdf", "vici", "socket-default", "kernel-netlink", "openssl"]
    if libipsec:
        need.append("kernel-libipsec")
    missing = [p for p in need if not (PLUGIN_DIR / f"libstrongswan-{p}.so").exists()]
    if missing:
        return (f"strongSwan plugins missing: {', '.join(missing)}; "
                f"apt-get install {APT_PACKAGES}")
    if libipsec and not os.path.exists("/dev/net/tun"):
        return "kernel-libipsec needs /dev/net/tun (the tun module)"
    return None


_STRONGSWAN_CONF = """\
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
            path = {log}
            time_format = %H:%M:%S
            append = no
            flush_line = yes
            ike_name = yes
            {log_levels}
        }}
    }}
    plugins {{
        vici {{
            socket = {uri}
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

_SWANCTL_CONF = """\
connections {{
    t {{
        version = 2
        local_addrs = {addr}
        remote_addrs = {remote_addr}
        proposals = {ike_proposals}
        mobike = no
        reauth_time = 0
        rekey_time = 0
        dpd_delay = 0
        local {{
            auth = psk
            id = {name}
        }}
        remote {{
            auth = psk
            id = {remote_name}
        }}
        children {{
            t {{
                local_ts = {inner}/32
                remote_ts = {remote_inner}/32
                esp_proposals = {esp_proposals}
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
        id-a = {name}
        id-b = {remote_name}
        secret = "{psk}"
    }}
}}
"""


@dataclass
class Peer:
    """One charon daemon in one namespace; its IKE_SA and CHILD_SA are both named ``t``."""

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

    # Files in workdir: charon's configs, its VICI socket, its log and its stdout.
    conf: Path = field(init=False, repr=False)
    swanctl_conf: Path = field(init=False, repr=False)
    vici: Path = field(init=False, repr=False)
    log: Path = field(init=False, repr=False)
    stdout_path: Path = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for attr, name in (("conf", "strongswan.conf"), ("swanctl_conf", "swanctl.conf"),
                           ("vici", "charon.vici"), ("log", "charon.log"),
                           ("stdout_path", "charon.stdout")):
            setattr(self, attr, self.workdir / name)

    @property
    def uri(self) -> str:
        return f"unix://{self.vici}"

    @property
    def tun(self) -> str | None:
        return "ipsec0" if self.libipsec else None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        plugins = PLUGINS_LIBIPSEC if self.libipsec else PLUGINS_KERNEL
        # One setting per line: strongswan.conf's parser is line based.
        self.conf.write_text(_STRONGSWAN_CONF.format(
            plugins=plugins, log=self.log, log_levels=self.log_levels, uri=self.uri))
        # the PSK file is private from its first byte
        fd = os.open(self.swanctl_conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW,
                     0o600)
        with os.fdopen(fd, "w") as f:
            f.write(_SWANCTL_CONF.format(
                addr=self.addr, remote_addr=self.remote_addr, name=self.name,
                remote_name=self.remote_name, inner=self.inner, remote_inner=self.remote_inner,
                ike_proposals=self.ike_proposals, esp_proposals=self.esp_proposals,
                psk=self.psk))

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["STRONGSWAN_CONF"] = str(self.conf)
        return env

    def start(self, timeout: float = 20.0) -> None:
        """Start charon, wait until vici answers, load the connection and the PSK."""
        charon = find_charon()
        self.write_config()
        with open(self.stdout_path, "wb") as out:
            self.proc = subprocess.Popen(
                ns_argv(self.ns, [charon]), env=self.env(), stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"charon ({self.name}) exited with {self.proc.returncode}: "
                                   f"{self.diagnostics()}")
            if self.vici.exists() and self.swanctl("--stats", check=False).returncode == 0:
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
        """The tails of charon's output and log."""
        parts = []
        for p in (self.stdout_path, self.log):
            try:
                tail = p.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {p} (tail)\n" + "\n".join(tail))
            except OSError:
                pass
        return "\n".join(parts)
