"""Tier 2: real strongSwan IKEv2 peers (kernel-libipsec, userland ESP) on the host kernel.

One IKE_SA + CHILD_SA is negotiated between two namespaces while our Capture, fed by the
``ike-esp-in``, ``ike-esp-out`` and ``libipsec`` rule sets (one NFLOG group each), records
the initiator's view. The tests then check that capture packet by packet, and that the keys
:mod:`ipsec_nflog.ipsec.keys` extracts from the charon logs let tshark decrypt every ESP packet and
the encrypted IKE exchanges of our own capture file, with good ICVs.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REQUIRE_PRIVILEGED, require_privileged, require_tool
from tests.support.strongswan import (
    IKE_AUTH,
    IKE_SA_INIT,
    INFORMATIONAL,
    Seen,
    StrongswanPair,
    check_installed,
    classify,
    strongswan_pair,
)
from tests.vm import nflog_rules

pytestmark = [pytest.mark.privileged, pytest.mark.strongswan]

G_IN, G_OUT, G_TUN = 5, 6, 7
N_PINGS = 5
PREROUTING, OUTPUT, POSTROUTING = 0, 3, 4


def _unavailable(msg: str) -> None:
    if REQUIRE_PRIVILEGED:
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="module")
def strongswan_peers() -> Iterator[StrongswanPair]:
    """Two charon-systemd peers (kernel-libipsec) in fresh namespaces, configs loaded, no SA.

    ``pair.left``/``pair.right`` have ``.ns``, ``.addr`` (outer), ``.inner`` (tunnelled),
    ``.log`` (charon log at ike 4 / chd 4), ``.vici``; ``pair.initiate()``, ``ping()``,
    ``terminate()``. Daemons are SIGTERMed and namespaces deleted at module end.
    """
    require_privileged("strongSwan peers")
    problem = check_installed(libipsec=True)
    if problem:
        _unavailable(problem)
    with strongswan_pair(libipsec=True) as pair:
        yield pair


# ---- classification of captured packets ----------------------------------------------------

# ---- one capture of a whole tunnel lifetime, shared by the tests -----------------------------

@dataclass
class TunnelCapture:
    pair: StrongswanPair
    by_group: dict[int, list[Seen]]
    raw: dict[int, list[Any]]
    pcap: Path
    spi_in: int
    spi_out: int
    rules: str
    timings: dict[str, float] = field(default_factory=dict)


def _child_spis(pair: StrongswanPair) -> tuple[int, int]:
    out = pair.left.swanctl("--list-sas").stdout
    m_in = re.search(r"^\s+in\s+([0-9a-f]{8})", out, re.M)
    m_out = re.search(r"^\s+out\s+([0-9a-f]{8})", out, re.M)
    assert m_in and m_out, out
    return int(m_in.group(1), 16), int(m_out.group(1), 16)


@pytest.fixture(scope="module")
def tunnel_capture(strongswan_peers: StrongswanPair,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[TunnelCapture]:
    from ipsec_nflog import Capture

    try:
        from ipsec_nflog.files.writer import open_writer
    except ImportError:  # pragma: no cover - before the writer landed
        open_writer = None  # type: ignore[assignment]

    pair = strongswan_peers
    ns = pair.left.ns
    pcap = tmp_path_factory.mktemp("swan") / "tunnel.pcap"
    timings: dict[str, float] = {}
    by_group: dict[int, list[Seen]] = {G_IN: [], G_OUT: [], G_TUN: []}
    raw: dict[int, list[Any]] = {G_IN: [], G_OUT: [], G_TUN: []}
    with nflog_rules.installed("ike-esp-in", group=G_IN, netns=ns) as how, \
            nflog_rules.installed("ike-esp-out", group=G_OUT, netns=ns), \
            nflog_rules.installed("libipsec", group=G_TUN, netns=ns), \
            Capture(groups=[G_IN, G_OUT, G_TUN], netns=ns) as cap:
        t0 = time.monotonic()
        timings["initiate"] = pair.initiate()
        spi_in, spi_out = _child_spis(pair)
        pair.ping(N_PINGS)
        t1 = time.monotonic()
        pair.terminate()
        timings["terminate"] = time.monotonic() - t1
        cap.stop()
        writer = open_writer(pcap, "pcap") if open_writer else None  # type: ignore[truthy-function]
        chunks: list[bytes] = []
        try:
            while True:
                batch = cap.read_batch(timeout=0)
                if batch is None:
                    break
                if writer is not None:
                    writer.write_batch(batch)
                else:
                    chunks.append(bytes(batch.data))
                for pkt in batch:
                    raw[pkt.group].append(pkt)
                    by_group[pkt.group].append(classify(pkt))
                batch.release()
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            _write_plain_pcap(pcap, b"".join(chunks))
        stats = cap.stats()
        timings["tunnel_lifetime"] = time.monotonic() - t0
    assert stats.dropped == 0, stats
    yield TunnelCapture(pair, by_group, raw, pcap, spi_in, spi_out, how, timings)


def _write_plain_pcap(path: Path, records: bytes) -> None:
    """A LINKTYPE_NFLOG pcap in host byte order: the ring records are ready pcap records."""
    hdr = struct.pack("=IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 239)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(hdr + records)


# ---- the IKE presets -------------------------------------------------------------------------

def test_ike_esp_out_preset_sees_every_egress_ike_and_esp_packet(
        tunnel_capture: TunnelCapture) -> None:
    tc = tunnel_capture
    left, right = tc.pair.left, tc.pair.right
    got = tc.by_group[G_OUT]
    assert all(s.hook == OUTPUT for s in got), got
    assert all((s.src, s.dst) == (left.addr, right.addr) for s in got), got
    ike = [(s.exchange, s.response, s.dport) for s in got if s.kind == "ike"]
    # IKE_SA_INIT on 500, then NAT-T (kernel-libipsec forces UDP encapsulation) on 4500
    assert ike == [(IKE_SA_INIT, False, 500), (IKE_AUTH, False, 4500),
                   (INFORMATIONAL, False, 4500)], got
    esp = [s for s in got if s.kind == "esp"]
    assert [(s.spi, s.seq) for s in esp] == [(tc.spi_out, i) for i in range(1, N_PINGS + 1)]
    assert len(got) == 3 + N_PINGS, got  # nothing else: no keepalives, no stray traffic
    # the order on the wire: IKE, IKE, N x ESP, the DELETE
    assert [s.kind for s in got] == ["ike", "ike"] + ["esp"] * N_PINGS + ["ike"]


def test_ike_esp_in_preset_sees_every_ingress_ike_and_esp_packet(
        tunnel_capture: TunnelCapture) -> None:
    tc = tunnel_capture
    left, right = tc.pair.left, tc.pair.right
    got = tc.by_group[G_IN]
    assert all(s.hook == PREROUTING for s in got), got
    assert all((s.src, s.dst) == (right.addr, left.addr) for s in got), got
    ike = [(s.exchange, s.response, s.sport) for s in got if s.kind == "ike"]
    assert ike == [(IKE_SA_INIT, True, 500), (IKE_AUTH, True, 4500),
                   (INFORMATIONAL, True, 4500)], got
    esp = [s for s in got if s.kind == "esp"]
    assert [(s.spi, s.seq) for s in esp] == [(tc.spi_in, i) for i in range(1, N_PINGS + 1)]
    assert [s.kind for s in got] == ["ike", "ike"] + ["esp"] * N_PINGS + ["ike"]


def test_libipsec_preset_sees_plaintext_both_directions_on_the_tun_device(
        tunnel_capture: TunnelCapture) -> None:
    tc = tunnel_capture
    left, right = tc.pair.left, tc.pair.right
    got = tc.by_group[G_TUN]
    out = [s for s in got if s.hook == POSTROUTING]
    inb = [s for s in got if s.hook == PREROUTING]
    assert len(out) + len(inb) == len(got) == 2 * N_PINGS, got
    assert [(s.kind, s.icmp_type, s.src, s.dst, s.seq) for s in out] == [
        ("icmp", 8, left.inner, right.inner, i) for i in range(1, N_PINGS + 1)]
    assert [(s.kind, s.icmp_type, s.src, s.dst, s.seq) for s in inb] == [
        ("icmp", 0, right.inner, left.inner, i) for i in range(1, N_PINGS + 1)]
    for p in tc.raw[G_TUN]:
        assert (p.outdev_name if p.hook == POSTROUTING else p.indev_name) == "ipsec0"


def test_the_library_presets_were_used(tunnel_capture: TunnelCapture) -> None:
    """Once ipsec_nflog.rules landed, these tests prove its presets, not our fallback."""
    if nflog_rules.library_installed() is None:
        pytest.skip("ipsec_nflog.rules.installed not available: fallback rules were used")
    assert tunnel_capture.rules == "library"


# ---- keys → tshark ---------------------------------------------------------------------------

def _tshark(pcap: Path, opts: list[str], fields: list[str]) -> list[list[str]]:
    argv = ["tshark", "-n", "-r", str(pcap), *opts, "-T", "fields", "-E", "separator=|"]
    for f in fields:
        argv += ["-e", f]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return [line.split("|") for line in r.stdout.splitlines()]


def test_keys_from_charon_logs_let_tshark_decrypt_our_capture(
        tunnel_capture: TunnelCapture, tmp_path: Path) -> None:
    require_tool("tshark", "tshark")
    from ipsec_nflog.ipsec import keys

    tc = tunnel_capture
    found = [keys.parse_charon_log(p.log.read_text(errors="replace")) for p in tc.pair.peers()]
    for f in found:
        assert f.warnings == []
    # both peers log the same keys
    left_esp = sorted(map(keys.esp_sa_line, found[0].esp))
    assert left_esp == sorted(map(keys.esp_sa_line, found[1].esp))
    assert [keys.ikev2_line(s) for s in found[0].ike] == [keys.ikev2_line(s) for s in found[1].ike]
    assert {s.spi for s in found[0].esp} == {tc.spi_in, tc.spi_out}
    assert len(found[0].ike) == 1

    # the files, as save-keys writes them, private
    paths = keys.write_wireshark_keys(tmp_path / "keys", ike=found[0].ike, esp=found[0].esp)
    for path in paths.values():
        assert os.stat(path).st_mode & 0o777 == 0o600
    assert Path(paths["esp_sa"]).read_text().splitlines() == [
        keys.esp_sa_line(s) for s in found[0].esp]

    opts = keys.tshark_options(esp=found[0].esp, ike=found[0].ike)
    rows = _tshark(tc.pcap, opts, ["frame.number", "udp.dstport", "esp.spi", "esp.sequence",
                                   "esp.icv_good", "esp.icv_bad", "icmp.type", "icmp.seq",
                                   "isakmp.exchangetype", "isakmp.enc.decrypted"])
    esp_rows = [r for r in rows if r[2]]
    # every ESP packet of the capture (both directions) decrypts, with a good ICV, to an ICMP
    # echo whose sequence number is the ESP sequence number (one ping per SA sequence number)
    assert len(esp_rows) == 2 * N_PINGS, rows
    for r in esp_rows:
        assert r[4] == "1" and r[5] in ("", "0"), r
        assert r[6] in ("8", "0"), r
        assert int(r[7]) == int(r[3]), r
    # the encrypted IKE messages (IKE_AUTH and INFORMATIONAL, both ways) decrypt
    enc_ike = [r for r in rows if r[8] in (str(IKE_AUTH), str(INFORMATIONAL))]
    assert len(enc_ike) == 4, rows
    for r in enc_ike:
        assert r[9] != "", r

    # without the keys nothing decrypts (the check above is not vacuous)
    bare = _tshark(tc.pcap, [], ["esp.spi", "icmp.type", "isakmp.enc.decrypted"])
    assert not any(r[1] for r in bare if r[0])
    assert not any(r[2] for r in bare)


def test_tunnel_timings_are_reasonable(tunnel_capture: TunnelCapture) -> None:
    # IKE_SA_INIT + IKE_AUTH between two namespaces: well under a second here (0.05 s measured)
    assert tunnel_capture.timings["initiate"] < 10, tunnel_capture.timings


def test_no_daemon_outlives_the_pair(tmp_path: Path) -> None:
    """The harness kills its charons by PID and deletes its namespaces, also on errors."""
    require_privileged("strongSwan cleanup")
    problem = check_installed(libipsec=True)
    if problem:
        _unavailable(problem)
    pids: list[int] = []
    names: tuple[str, ...] = ()
    with pytest.raises(RuntimeError, match="boom"), strongswan_pair(workdir=tmp_path) as pair:
        pids = [p.pid for p in pair.peers() if p.pid]
        names = pair.namespaces
        assert len(pids) == 2 and all(n in _netns_names() for n in names)
        raise RuntimeError("boom")
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}"), pid
    assert not set(names) & _netns_names()


def _netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}
