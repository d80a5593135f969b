"""Issue 11 in the tier-1 VM: our decryption of REAL kernel ESP equals what tcpdump -E and
tshark decrypt from the same file, for the secrets people have (tcpdump's ``-E``: no
integrity key; Wireshark's ``ANY 96 bit authentication [no checking]``) and for ESN SAs whose
sequence numbers cross 2^32 (tests/ipsec/test_ipsec_secrets.py does the same with ESP built
in Python on the host).

Static SAs between two namespaces, tunnel mode, one SA pair per inner destination:

    a 10.8.0.1 (lo) -- veth 198.51.100.1 == ESP == 198.51.100.2 -- b 10.8.1.N (lo)

Each SA pair is pinged from a, captured in a (esp-out and esp-in on one group, default
settings), and the inner ICMP echoes are compared packet by packet. Collected only inside the
VM (tests/vm/conftest.py).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import dpkt
import pytest

from ipsec_nflog import Capture
from ipsec_nflog.files import read_capture
from ipsec_nflog.files.writer import open_writer
from ipsec_nflog.ipsec import keys
from ipsec_nflog.ipsec.decrypt import OK, DecryptResult, EspDecryptor
from ipsec_nflog.testing.lab import NetnsPair
from tests.vm import nflog_rules

pytestmark = [pytest.mark.privileged, pytest.mark.kernel]

PINGS = 4
WRAP = 1 << 32
ESN_START = WRAP - 3          # replay-oseq: the first packet sent is WRAP - 2
A_IN, B_NET = "10.8.0.1", "10.8.1"


@dataclass(frozen=True)
class StaticSa:
    """One SA pair a <-> b (SPI ``spi`` a->b, ``spi + 1`` b->a) for inner host 10.8.1.N."""

    name: str
    n: int
    algorithm: tuple[str, ...]     # ``ip xfrm state`` words; {k} {a}: per-direction keys
    esn: bool = False
    tcpdump: str | None = None     # tcpdump -E algorithm name, None: tcpdump cannot

    @property
    def spi(self) -> int:
        return 0x3000 + 0x100 * self.n + 1

    @property
    def inner(self) -> str:
        return f"{B_NET}.{self.n}"

    def key(self, direction: int, nbytes: int) -> bytes:
        return bytes([0x10 * self.n + direction]) * nbytes


SAS = (
    StaticSa("cbc-no-integrity", 1, ("enc", "cbc(aes)", "{k16}"), tcpdump="aes128-cbc"),
    StaticSa("cbc-hmac96", 2, ("enc", "cbc(aes)", "{k32}", "auth-trunc", "hmac(sha1)", "{a20}",
                               "96"), tcpdump="aes256-cbc-hmac96"),
    StaticSa("esn-cbc", 3, ("enc", "cbc(aes)", "{k16}", "auth-trunc", "hmac(sha1)", "{a20}",
                            "96"), esn=True, tcpdump="aes128-cbc-hmac96"),
    StaticSa("esn-gcm", 4, ("aead", "rfc4106(gcm(aes))", "{k20}", "128"), esn=True),
)


def tcpdump_spec(outer: tuple[str, str]) -> str:
    """tcpdump -E secrets for every SA tcpdump can decrypt, both directions."""
    entries = []
    for sa in SAS:
        if sa.tcpdump:
            nbytes = int(sa.tcpdump[3:6]) // 8      # aes128-... / aes256-...
            for d, dst in enumerate((outer[1], outer[0])):   # a->b, b->a
                entries.append(f"{sa.spi + d:#x}@{dst} {sa.tcpdump}:0x{sa.key(d, nbytes).hex()}")
    return ",".join(entries)


@dataclass
class Lab:
    pair: NetnsPair
    pcap: Path
    sas: list[keys.EspSa]            # from ip xfrm state: every key, and the ESN flag

    @property
    def outer(self) -> tuple[str, str]:
        return self.pair.a4, self.pair.b4


def _add_states(pair: NetnsPair, sa: StaticSa) -> None:
    for d, (src, dst) in enumerate(((pair.a4, pair.b4), (pair.b4, pair.a4))):
        words = [w.format(k16="0x" + sa.key(d, 16).hex(), k32="0x" + sa.key(d, 32).hex(),
                          k20="0x" + sa.key(d, 20).hex(), a20="0x" + sa.key(d + 8, 20).hex())
                 for w in sa.algorithm]
        esn = ["flag", "esn", "replay-window", "32", "replay-seq", hex(ESN_START),
               "replay-oseq", hex(ESN_START)] if sa.esn else []
        for ns in pair.namespaces:
            pair.run(ns, ["ip", "xfrm", "state", "add", "src", src, "dst", dst, "proto", "esp",
                          "spi", hex(sa.spi + d), "reqid", str(sa.n), "mode", "tunnel",
                          *words, *esn])


def _add_policies(pair: NetnsPair, sa: StaticSa) -> None:
    a_in, b_in = f"{A_IN}/32", f"{sa.inner}/32"
    for ns, out_src, out_dst, t_src, t_dst in ((pair.a, a_in, b_in, pair.a4, pair.b4),
                                              (pair.b, b_in, a_in, pair.b4, pair.a4)):
        for direction, src, dst, ts, td in (("out", out_src, out_dst, t_src, t_dst),
                                            ("in", out_dst, out_src, t_dst, t_src)):
            pair.run(ns, ["ip", "xfrm", "policy", "add", "src", src, "dst", dst, "dir",
                          direction, "tmpl", "src", ts, "dst", td, "proto", "esp", "reqid",
                          str(sa.n), "mode", "tunnel"])


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if os.environ.get("IPSEC_NFLOG_IN_VM") != "1":
        pytest.skip("runs inside the tier-1 VM only")
    with NetnsPair(("sa", "sb"), a4="198.51.100.1", b4="198.51.100.2", ipv6=False) as pair:
        pair.run(pair.a, ["ip", "addr", "add", f"{A_IN}/32", "dev", "lo"])
        pair.run(pair.a, ["ip", "route", "add", f"{B_NET}.0/24", "via", pair.b4])
        pair.run(pair.b, ["ip", "route", "add", f"{A_IN}/32", "via", pair.a4])
        for sa in SAS:
            pair.run(pair.b, ["ip", "addr", "add", f"{sa.inner}/32", "dev", "lo"])
            _add_states(pair, sa)
            _add_policies(pair, sa)
        pcap = tmp_path_factory.mktemp("secrets") / "static-sas.pcap"
        with nflog_rules.installed("ike-esp-out", group=30, netns=pair.a), \
                nflog_rules.installed("ike-esp-in", group=30, netns=pair.a), \
                Capture(groups=[30], netns=pair.a) as cap:
            for sa in SAS:   # -s 12: no timestamp in the echo data, tshark shows it all
                pair.run(pair.a, ["ping", "-n", "-q", "-c", str(PINGS), "-i", "0.05", "-s",
                                  "12", "-W", "3", "-I", A_IN, sa.inner], timeout=120)
            cap.stop()
            with open_writer(pcap, "pcap") as w:
                cap.drain_into(w)
        yield Lab(pair, pcap, keys.read_xfrm_state(pair.a))


# ---- one inner packet, as each tool sees it -----------------------------------------------

@dataclass(frozen=True)
class Inner:
    spi: int
    seq: int                   # the low 32 bits, as on the wire
    src: str                   # inner addresses
    dst: str
    icmp_type: int
    ident: int
    icmp_seq: int
    data: bytes | None = None  # the echo data (tcpdump -v vouches for it by its checksum)


def esp_payloads(pcap: Path) -> list[bytes]:
    return [bytes(p.payload or b"") for p in read_capture(pcap)]


def ours(results: list[DecryptResult | None], *, data: bool = True) -> list[Inner | None]:
    out: list[Inner | None] = []
    for r in results:
        assert r is not None
        if r.status != OK:
            out.append(None)
            continue
        ip, icmp = r.inner_ip, r.inner_ip.data
        assert isinstance(icmp, dpkt.icmp.ICMP) and icmp.type in (0, 8), r
        echo = bytes(icmp.data)
        out.append(Inner(r.spi, r.seq, socket.inet_ntoa(ip.src), socket.inet_ntoa(ip.dst),
                         icmp.type, int.from_bytes(echo[:2], "big"),
                         int.from_bytes(echo[2:4], "big"), echo[4:] if data else None))
    return out


def tcpdump_inner(pcap: Path, spec: str) -> list[Inner | None]:
    r = subprocess.run(["tcpdump", "-n", "-v", "-r", str(pcap), "-E", spec],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out: list[Inner | None] = []
    for text in re.split(r"\n(?=\S)", r.stdout.strip()):   # one packet: a line, indented ones
        esp = re.search(r"ESP\(spi=0x([0-9a-f]{8}),seq=0x([0-9a-f]+)\)", text)
        inner = re.search(r"(\d+\.\d+\.\d+\.\d+) > (\d+\.\d+\.\d+\.\d+): ICMP echo "
                          r"(request|reply), id (\d+), seq (\d+), length \d+", text)
        assert esp, text
        assert "wrong icmp cksum" not in text, text
        out.append(None if inner is None else Inner(
            int(esp.group(1), 16), int(esp.group(2), 16), inner.group(1), inner.group(2),
            8 if inner.group(3) == "request" else 0, int(inner.group(4)),
            int(inner.group(5))))
    return out


def tshark_inner(pcap: Path, sas: list[keys.EspSa]) -> list[Inner | None]:
    argv = ["tshark", "-n", "-r", str(pcap), *keys.tshark_options(esp=sas, check_icv=False),
            "-T", "fields", "-E", "separator=|", "-e", "esp.spi", "-e", "esp.sequence",
            "-e", "ip.src", "-e", "ip.dst", "-e", "icmp.type", "-e", "icmp.ident",
            "-e", "icmp.seq", "-e", "data.data"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out: list[Inner | None] = []
    for line in r.stdout.splitlines():
        spi, seq, src, dst, icmp_type, ident, icmp_seq, data = line.split("|")
        if not icmp_type:
            out.append(None)
            continue
        out.append(Inner(int(spi, 16), int(seq), src.split(",")[-1], dst.split(",")[-1],
                         int(icmp_type), int(ident), int(icmp_seq), bytes.fromhex(data)))
    return out


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")


def _spis(sa: StaticSa) -> tuple[int, int]:
    return sa.spi, sa.spi + 1


# ---- the tests ---------------------------------------------------------------------------------

def test_the_kernel_keys_decrypt_every_packet_and_esn_crosses_the_wrap(lab: Lab) -> None:
    payloads = esp_payloads(lab.pcap)
    assert len(payloads) == 2 * PINGS * len(SAS)
    dec = EspDecryptor(lab.sas)
    results = [dec.decrypt(p) for p in payloads]
    assert all(r is not None and r.ok for r in results), results
    by_spi: dict[int, list[DecryptResult]] = {}
    for r in results:
        assert r is not None
        by_spi.setdefault(r.spi, []).append(r)
    for sa in SAS:
        for spi in _spis(sa):
            rs = by_spi[spi]
            # the ICV verifies (GCM: the tag), except where the SA has none
            assert [r.icv_ok for r in rs] == [None if sa.name == "cbc-no-integrity" else True
                                              ] * PINGS, (sa.name, rs)
            want = [ESN_START + 1 + i for i in range(PINGS)] if sa.esn else \
                list(range(1, PINGS + 1))
            assert [r.full_seq for r in rs] == want, (sa.name, hex(spi))
    for sa in SAS:   # the high bits, inferred, both directions
        if sa.esn:
            assert [[r.seq_hi for r in by_spi[spi]] for spi in _spis(sa)] == [[0, 0, 1, 1]] * 2


def test_our_inner_packets_equal_tcpdump_for_tcpdump_secrets(lab: Lab) -> None:
    _need("tcpdump")
    spec = tcpdump_spec(lab.outer)
    payloads = esp_payloads(lab.pcap)
    dec = EspDecryptor.from_tcpdump_secrets(spec)
    results = [dec.decrypt(p) for p in payloads]
    mine = ours(results, data=False)
    theirs = tcpdump_inner(lab.pcap, spec)
    assert mine == theirs
    # what tcpdump's secrets cover is all decrypted, the ICV skipped; the GCM SA is not in them
    assert sum(i is not None for i in mine) == 2 * PINGS * 3
    assert {r.icv_ok for r in results if r is not None and r.ok} == {None}
    ends = {r.spi: r.label().rsplit(",", 1)[-1] for r in results if r is not None and r.ok}
    assert ends == {spi: " no ICV]" if sa.name == "cbc-no-integrity" else " ICV not checked]"
                    for sa in SAS if sa.tcpdump for spi in _spis(sa)}, ends


def test_our_inner_packets_equal_tshark_with_the_kernel_keys(lab: Lab) -> None:
    _need("tshark")
    dec = EspDecryptor(lab.sas)
    mine = ours([dec.decrypt(p) for p in esp_payloads(lab.pcap)])
    assert None not in mine
    assert mine == tshark_inner(lab.pcap, lab.sas)     # the echo data bytes too


def test_wireshark_any_96_bit_authentication_decrypts_the_same_packets(lab: Lab,
                                                                       tmp_path: Path) -> None:
    """The HMAC SAs written to an esp_sa file with "ANY 96 bit authentication [no checking]":
    read back through ``ipsec-nflog read --keys`` and the API, the ICV skipped."""
    any96 = [replace(s, integrity="ANY 96 bit authentication [no checking]",
                     integrity_key=b"") if s.integrity.startswith("HMAC") else s
             for s in lab.sas]
    keys.write_esp_sa(tmp_path / "esp_sa", any96)
    sas = keys.read_esp_sa(tmp_path / "esp_sa")
    dec = EspDecryptor(sas)
    results = [dec.decrypt(p) for p in esp_payloads(lab.pcap)]
    full = EspDecryptor(lab.sas)
    assert ours(results) == ours([full.decrypt(p) for p in esp_payloads(lab.pcap)])
    hmac_spis = {spi for sa in SAS[1:3] for spi in _spis(sa)}
    skipped = {(r.icv_ok, r.icv_skipped) for r in results if r and r.spi in hmac_spis}
    assert skipped == {(None, 12)}
    r = subprocess.run([sys.executable, "-m", "ipsec_nflog", "read", str(lab.pcap), "--keys",
                        str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    decrypted = [line for line in r.stdout.splitlines() if "[decrypted spi=" in line]
    assert len(decrypted) == 2 * PINGS * len(SAS), r.stdout
    assert sum(", ICV not checked]" in line for line in decrypted) == 2 * PINGS * 2
