"""The secrets people already have, and extended sequence numbers, checked against what other
tools decrypt. No root needed.

ESP is built here with ``cryptography`` for known keys (an encryptor independent of ours), in
tunnel mode with UDP inside, written as a LINKTYPE_RAW pcap, then decrypted by us, by
``tcpdump -E`` and by ``tshark``: the inner addresses, ports and payload bytes must agree
(tcpdump's ``[udp sum ok]`` vouches for its payload bytes, tshark prints them).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import socket
import struct
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import dpkt
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ipsec_nflog.ipsec import keys
from ipsec_nflog.ipsec.decrypt import OK, DecryptResult, EspDecryptor, UnsupportedSaError
from ipsec_nflog.ipsec.esn import EsnWindow
from ipsec_nflog.ipsec.keys import EspSa
from ipsec_nflog.ipsec.tcpdump_secrets import (
    load_tcpdump_secrets,
    parse_tcpdump_secrets,
    read_tcpdump_secrets,
)
from tests.conftest import require_tool

FIX = Path(__file__).resolve().parents[1] / "fixtures"
ROOT = Path(__file__).resolve().parents[2]
WRAP = 1 << 32
SHA1_96 = "HMAC-SHA-1-96 [RFC2404]"
ANY_96 = "ANY 96 bit authentication [no checking]"
AES_CBC = "AES-CBC [RFC3602]"
GCM_16 = "AES-GCM with 16 octet ICV [RFC4106]"
SPORT, DPORT = 40000, 40001          # no port dissector claims them (tshark_inner also
                                     # decodes them as data: random bytes can look like a
                                     # protocol to a heuristic dissector)


# ---- an independent ESP encryptor --------------------------------------------------------

@dataclass(frozen=True)
class Tunnel:
    """One SA as the sender has it: keys, addresses, whether it numbers with 64 bits."""

    spi: int
    outer: tuple[str, str]
    inner: tuple[str, str]
    key: bytes                        # AES key (GCM: key || salt)
    auth_key: bytes | None = None     # HMAC-SHA1-96; None: no ICV
    esn: bool = False
    gcm: bool = False

    def esp(self, seq: int, inner: bytes) -> bytes:
        """ESP (RFC 4303) carrying ``inner`` with 64-bit sequence number ``seq``."""
        head = struct.pack(">II", self.spi, seq & 0xFFFFFFFF)
        high = struct.pack(">I", seq >> 32) if self.esn else b""
        align = 4 if self.gcm else 16
        pad = (-(len(inner) + 2)) % align
        plain = inner + bytes(range(1, pad + 1)) + bytes([pad, 4 if ":" not in
                                                         self.inner[0] else 41])
        if self.gcm:                  # RFC 4106: AAD is SPI || [high ||] low
            iv = os.urandom(8)
            g = Cipher(algorithms.AES(self.key[:-4]), modes.GCM(self.key[-4:] + iv)).encryptor()
            g.authenticate_additional_data(head[:4] + high + head[4:])
            return head + iv + g.update(plain) + g.finalize() + g.tag
        iv = os.urandom(16)
        e = Cipher(algorithms.AES(self.key), modes.CBC(iv)).encryptor()
        body = head + iv + e.update(plain) + e.finalize()
        if self.auth_key is None:
            return body
        return body + hmac.new(self.auth_key, body + high, hashlib.sha1).digest()[:12]

    def packet(self, seq: int, data: bytes) -> bytes:
        """The outer IP packet of one inner UDP datagram."""
        return ip_packet(*self.outer, 50, self.esp(seq, ip_packet(*self.inner, 17, udp(data))))

    def sa(self, *, esn: bool | None = None, unchecked_icv: bool = False) -> EspSa:
        """The SA as its receiver's keys describe it (or, ``unchecked_icv``, with only the
        length of its ICV); ``esn`` overrides whether the keys say it uses ESN."""
        integ = SHA1_96 if self.auth_key else "NULL"
        if unchecked_icv:
            integ = ANY_96
        return EspSa(self.outer[0], self.outer[1], self.spi,
                     GCM_16 if self.gcm else AES_CBC, self.key, "NULL" if self.gcm else integ,
                     b"" if unchecked_icv else self.auth_key or b"",
                     esn=self.esn if esn is None else esn)


def udp(data: bytes) -> dpkt.udp.UDP:
    return dpkt.udp.UDP(sport=SPORT, dport=DPORT, ulen=8 + len(data), data=data)


def ip_packet(src: str, dst: str, proto: int, data: bytes | dpkt.Packet) -> bytes:
    """IPv4 or IPv6; dpkt fills in lengths and checksums (the inner UDP's too)."""
    if ":" in src:
        ip6 = dpkt.ip6.IP6(src=socket.inet_pton(socket.AF_INET6, src), nxt=proto, hlim=64,
                           dst=socket.inet_pton(socket.AF_INET6, dst), data=data)
        ip6.plen = len(bytes(data))
        return bytes(ip6)
    return bytes(dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=proto,
                            ttl=64, data=data))


def write_raw_pcap(path: Path, packets: list[bytes]) -> Path:
    """A LINKTYPE_RAW (101) pcap, one packet a second."""
    with open(path, "wb") as f:
        f.write(struct.pack("=IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101))
        for i, p in enumerate(packets):
            f.write(struct.pack("=IIII", 1_700_000_000 + i, 0, len(p), len(p)) + p)
    return path


V4 = Tunnel(0x1234, ("192.0.2.1", "192.0.2.2"), ("10.0.1.1", "10.0.2.2"), bytes(range(16)))
V6 = Tunnel(0x5678, ("2001:db8::1", "2001:db8::2"), ("2001:db8:1::1", "2001:db8:2::2"),
            b"an ASCII secret of 32 bytes: ok!", auth_key=os.urandom(20))
ESN = Tunnel(0x9ABC, ("198.51.100.1", "198.51.100.2"), ("10.9.0.1", "10.9.0.2"),
             bytes(range(32, 48)), auth_key=bytes(range(20)), esn=True)
ESN_GCM = Tunnel(0xDEF0, ("198.51.100.2", "198.51.100.1"), ("10.9.0.2", "10.9.0.1"),
                 bytes(range(64, 100)), esn=True, gcm=True)
# tcpdump's -E for V4 (no ICV) and V6 (a 96-bit ICV it cannot check; an ASCII secret)
SPEC = (f"0x1234@192.0.2.2 aes128-cbc:0x{V4.key.hex()},"
        f"22136@2001:db8::2 aes256-cbc-hmac96:{V6.key.decode()}")
ESN_SEQS = [WRAP - 3, WRAP - 2, WRAP - 1, WRAP, WRAP + 1, WRAP - 4, WRAP + 2]  # one late


def payloads(n: int) -> list[bytes]:
    return [os.urandom(5 + 7 * i) for i in range(n)]


@dataclass(frozen=True)
class Inner:
    """What a tool decrypted from one ESP packet: the inner UDP datagram."""

    spi: int
    seq: int                  # low 32 bits, as on the wire
    src: str
    sport: int
    dst: str
    dport: int
    length: int
    data: bytes | None = None     # tcpdump does not print it


def ours(results: list[DecryptResult | None], *, data: bool = True) -> list[Inner]:
    out = []
    for r in results:
        assert r is not None and r.status == OK, r
        ip = r.inner_ip
        af = socket.AF_INET6 if isinstance(ip, dpkt.ip6.IP6) else socket.AF_INET
        u = ip.data
        assert isinstance(u, dpkt.udp.UDP)
        out.append(Inner(r.spi, r.seq, socket.inet_ntop(af, ip.src), u.sport,
                         socket.inet_ntop(af, ip.dst), u.dport, len(u.data),
                         bytes(u.data) if data else None))
    return out


# ---- what tcpdump and tshark decrypt -------------------------------------------------------

def tcpdump_inner(path: Path, spec: str) -> list[Inner]:
    tcpdump = require_tool("tcpdump", "tcpdump")
    r = subprocess.run([tcpdump, "-n", "-vv", "-r", str(path), "-E", spec],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "WARNING" not in r.stderr, r.stderr
    out = []
    for text in re.split(r"\n(?=\S)", r.stdout.strip()):   # one packet: a line, indented ones
        esp = re.search(r"ESP\(spi=0x([0-9a-f]{8}),seq=0x([0-9a-f]+)\)", text)
        inner = re.search(r"(\S+)\.(\d+) > (\S+)\.(\d+): \[udp sum ok\] UDP, length (\d+)",
                          text)
        assert esp and inner, text
        out.append(Inner(int(esp.group(1), 16), int(esp.group(2), 16), inner.group(1),
                         int(inner.group(2)), inner.group(3), int(inner.group(4)),
                         int(inner.group(5))))
    return out


def tshark_inner(path: Path, sas: list[EspSa]) -> list[Inner]:
    tshark = require_tool("tshark", "tshark")
    argv = [tshark, "-n", "-r", str(path), *keys.tshark_options(esp=sas, check_icv=False),
            "-d", f"udp.port=={SPORT},data", "-d", f"udp.port=={DPORT},data",
            "-T", "fields", "-E", "separator=|", "-e", "esp.spi", "-e", "esp.sequence",
            "-e", "ip.src", "-e", "ipv6.src", "-e", "udp.srcport", "-e", "ip.dst",
            "-e", "ipv6.dst", "-e", "udp.dstport", "-e", "data.data"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = []
    for line in r.stdout.splitlines():
        spi, seq, src4, src6, sport, dst4, dst6, dport, data = line.split("|")
        src, dst = (src4 or src6).split(",")[-1], (dst4 or dst6).split(",")[-1]  # the inner
        assert sport and data, line                    # decrypted, down to the payload
        out.append(Inner(int(spi, 16), int(seq), src, int(sport), dst, int(dport),
                         len(data) // 2, bytes.fromhex(data)))
    return out


def without_data(inner: list[Inner]) -> list[Inner]:
    return [replace(i, data=None) for i in inner]


# ---- AES-CBC without an integrity key: tcpdump -E style --------------------------------------

@pytest.fixture
def tcpdump_style_capture(tmp_path: Path) -> tuple[Path, list[bytes]]:
    """V4 (no ICV) and V6 (an ICV tcpdump's secrets cannot check) packets, interleaved."""
    data = payloads(6)
    packets = [(V4 if i % 2 else V6).packet(i + 1, d) for i, d in enumerate(data)]
    return write_raw_pcap(tmp_path / "esp.pcap", packets), packets


def test_our_inner_packets_equal_tcpdump_and_tshark_for_tcpdump_secrets(
        tcpdump_style_capture: tuple[Path, list[bytes]]) -> None:
    path, packets = tcpdump_style_capture
    dec = EspDecryptor.from_tcpdump_secrets(SPEC)
    results = [dec.decrypt(p) for p in packets]
    mine = ours(results)
    assert [(i.spi, i.seq) for i in mine] == [(V6.spi if n % 2 == 0 else V4.spi, n + 1)
                                               for n in range(6)]
    assert without_data(mine) == tcpdump_inner(path, SPEC)
    assert mine == tshark_inner(path, dec.sas)     # the payload bytes too
    labels = [r.label() for r in results if r is not None]
    assert labels.count(f"[decrypted spi=0x{V4.spi:08x} seq=2, no ICV]") == 1
    assert labels.count(f"[decrypted spi=0x{V6.spi:08x} seq=1, ICV not checked]") == 1
    assert all(r is not None and r.icv_ok is None for r in results)
    assert [r.icv_skipped for r in results if r is not None] == [12, 0] * 3
    assert dec.stats.summary() == ("decrypted 6 of 6 ESP packets, 6 of them not authenticated "
                                   "(ICV not checked or none)")


def test_an_unchecked_icv_is_skipped_not_checked(
        tcpdump_style_capture: tuple[Path, list[bytes]]) -> None:
    path, packets = tcpdump_style_capture
    tshark = require_tool("tshark", "tshark")     # the ICV is real: Wireshark verifies it
    r = subprocess.run([tshark, "-n", "-r", str(path), *keys.tshark_options(esp=[V6.sa()]),
                        "-Y", f"esp.spi == 0x{V6.spi:08x}", "-T", "fields", "-e",
                        "esp.icv_good"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.split() == ["1"] * 3, r.stderr
    damaged = bytearray(packets[0])      # V6: flip a bit of its ICV
    damaged[-1] ^= 1
    unchecked = EspDecryptor.from_tcpdump_secrets(SPEC).decrypt(bytes(damaged))
    assert unchecked is not None and unchecked.ok and unchecked.icv_ok is None
    checked = EspDecryptor([V6.sa()]).decrypt(bytes(damaged))     # with the integrity key
    assert checked is not None and checked.status == "bad-icv"
    good = EspDecryptor([V6.sa()]).decrypt(packets[0])
    assert good is not None and good.ok and good.icv_ok is True
    assert good.label() == f"[decrypted spi=0x{V6.spi:08x} seq=1]"


def test_a_secret_that_names_no_icv_hints_at_hmac96(
        tcpdump_style_capture: tuple[Path, list[bytes]]) -> None:
    _, packets = tcpdump_style_capture
    no_icv = EspDecryptor.from_tcpdump_secrets(f"22136@2001:db8::2 aes256-cbc:{V6.key.decode()}")
    r = no_icv.decrypt(packets[0])   # 12 ICV bytes taken for ciphertext: not a block multiple
    assert r is not None and r.status == "malformed" and "-hmac96" in r.message


# ---- Wireshark's "ANY n bit authentication [no checking]" ------------------------------------

def test_esp_sa_any_bit_authentication_is_skipped(tmp_path: Path,
                                                  tcpdump_style_capture: tuple[Path,
                                                                               list[bytes]]
                                                  ) -> None:
    path, packets = tcpdump_style_capture
    f = tmp_path / "esp_sa"
    keys.write_esp_sa(f, [V6.sa(unchecked_icv=True), V4.sa()])
    assert ',"ANY 96 bit authentication [no checking]","0x"' in f.read_text()
    sas = keys.read_esp_sa(f)
    dec = EspDecryptor(sas)
    results = [dec.decrypt(p) for p in packets]
    assert [r.label().endswith(", ICV not checked]") for r in results if r] == [True, False] * 3
    assert ours(results) == tshark_inner(path, sas)
    for bits in (64, 128, 192, 256):    # the ICV's length is all that the name says
        sa = keys.read_esp_sa(_esp_sa_file(tmp_path, f"ANY {bits} bit authentication "
                                                     "[no checking]"))[0]
        r = EspDecryptor([sa]).decrypt(_cbc_with_icv_of(bits // 8))
        assert r is not None and r.ok and r.icv_skipped == bits // 8, bits


def _esp_sa_file(tmp_path: Path, integrity: str) -> Path:
    f = tmp_path / "any_esp_sa"
    f.write_text(f'"IPv4","*","192.0.2.2","0x00001234","AES-CBC [RFC3602]",'
                 f'"0x{V4.key.hex()}","{integrity}",""\n')
    return f


def _cbc_with_icv_of(n: int) -> bytes:
    esp = V4.esp(1, ip_packet(*V4.inner, 17, udp(b"any")))
    return ip_packet(*V4.outer, 50, esp + os.urandom(n))


def test_save_keys_aes_gcm_with_any_bit_authentication(tmp_path: Path) -> None:
    """strongSwan's save-keys writes AES-GCM SAs as "AES-GCM [RFC4106]" + "ANY 128 bit"."""
    gcm = replace(ESN_GCM, esn=False)
    f = tmp_path / "esp_sa"
    f.write_text(f'"IPv4","{gcm.outer[0]}","{gcm.outer[1]}","0x{gcm.spi:08x}",'
                 f'"AES-GCM [RFC4106]","0x{gcm.key.hex()}",'
                 '"ANY 128 bit authentication [no checking]","0x"\n')
    dec = EspDecryptor.from_wireshark_keys(f)
    pkt = gcm.packet(7, b"gcm")
    r = dec.decrypt(pkt)
    assert r is not None and r.ok and r.icv_ok is True     # the tag is checked all the same
    damaged = bytearray(pkt)
    damaged[-1] ^= 1
    bad = dec.decrypt(bytes(damaged))
    assert bad is not None and bad.status == "bad-icv"


# ---- extended sequence numbers -----------------------------------------------------------

@pytest.fixture
def esn_capture(tmp_path: Path) -> tuple[Path, list[bytes]]:
    """Both ESN SAs' packets around the 2^32 wrap, one of them late."""
    data = payloads(len(ESN_SEQS))
    packets = [t.packet(seq, d) for seq, d in zip(ESN_SEQS, data, strict=True)
               for t in (ESN, ESN_GCM)]
    return write_raw_pcap(tmp_path / "esn.pcap", packets), packets


def test_esn_high_bits_verify_the_icv_across_the_wrap(
        esn_capture: tuple[Path, list[bytes]]) -> None:
    path, packets = esn_capture
    dec = EspDecryptor([ESN.sa(), ESN_GCM.sa()])
    results = [dec.decrypt(p) for p in packets]
    assert all(r is not None and r.ok and r.icv_ok is True for r in results)
    assert [r.full_seq for r in results if r] == [s for s in ESN_SEQS for _ in (ESN, ESN_GCM)]
    late = results[-4]
    assert late is not None and late.label() == (f"[decrypted spi=0x{ESN.spi:08x} "
                                                  f"seq={WRAP - 4} (ESN)]")
    after = results[6]
    assert after is not None and (after.seq, after.seq_hi) == (0, 1)
    assert after.label() == f"[decrypted spi=0x{ESN.spi:08x} seq={WRAP} (ESN)]"
    # our inner packets are tshark's (which checks no ICV), and tcpdump's for the CBC SA
    mine = ours(results)
    assert mine == tshark_inner(path, [ESN.sa(), ESN_GCM.sa()])
    cbc_only = write_raw_pcap(path.with_name("esn_cbc.pcap"), packets[::2])
    spec = f"0x{ESN.spi:x}@{ESN.outer[1]} aes128-cbc-hmac96:0x{ESN.key.hex()}"
    assert tcpdump_inner(cbc_only, spec) == without_data(mine[::2])


def test_the_high_bits_are_what_the_icv_covers(esn_capture: tuple[Path, list[bytes]]) -> None:
    _, packets = esn_capture
    # packets numbered with 32 bits to an SA that says ESN: the ICV does not verify
    plain32 = replace(ESN, esn=False)
    r = EspDecryptor([ESN.sa()]).decrypt(plain32.packet(5, b"x"))
    assert r is not None and r.status == "bad-icv" and r.seq_hi is None
    # an SA whose keys do not say ESN (an esp_sa file, a log without cfg 2): found by the ICV
    dec = EspDecryptor([ESN.sa(esn=False), ESN_GCM.sa(esn=False)])
    results = [dec.decrypt(p) for p in packets]
    assert [r.full_seq for r in results if r and r.ok] == [s for s in ESN_SEQS for _ in "ab"]
    # a capture that starts after the wrap: the next block is tried
    r = EspDecryptor([ESN.sa()]).decrypt(ESN.packet(WRAP + 5, b"late start"))
    assert r is not None and r.ok and r.full_seq == WRAP + 5


def test_esn_window_follows_rfc4303_appendix_a() -> None:
    w = EsnWindow(size=64, top=WRAP - 10)                       # case A: Tl >= W - 1
    assert w.high_bits(WRAP - 20) == 0 and w.high_bits(WRAP - 73) == 0
    assert w.high_bits(3) == 1                                  # below the window: next block
    w.authenticated(1, 3)
    assert w.top == WRAP + 3
    assert w.high_bits(WRAP - 20) == 0 and w.high_bits(10) == 1  # case B: spans the wrap
    w.authenticated(0, WRAP - 1)                                 # a late one: no step back
    assert w.top == WRAP + 3
    reader = EsnWindow(top=WRAP + 3)                             # half the space either side
    assert reader.high_bits(0xF000_0000) == 0 and reader.high_bits(0x7000_0000) == 1
    assert EsnWindow().high_bits(0xF000_0000) == 0               # no block before the first
    assert EsnWindow().candidates(7) == (0, 1)
    with pytest.raises(ValueError):
        EsnWindow(size=0)


def test_esn_flag_from_charon_logs_and_xfrm_state() -> None:
    log = (FIX / "keys_cbc_charon_initiator.log").read_text()
    assert "/NO_EXT_SEQ" in log
    assert not any(sa.esn for sa in keys.parse_charon_log(log).esp)
    esn_log = log.replace("/NO_EXT_SEQ", "/EXT_SEQ")
    found = keys.parse_charon_log(esn_log).esp
    assert len(found) == 2 and all(sa.esn for sa in found)
    xfrm = (FIX / "keys_xfrm_state_static.txt").read_text()
    assert not any(sa.esn for sa in keys.parse_xfrm_state(xfrm))
    marked = xfrm.replace("replay-window 0 \n", "replay-window 128 flag af-unspec esn \n", 1)
    sas = keys.parse_xfrm_state(marked)
    assert [sa.esn for sa in sas] == [True] + [False] * (len(sas) - 1)
    out_dir = xfrm.replace("replay-window 0 \n", "flag esn \n", 1)     # no replay window
    assert keys.parse_xfrm_state(out_dir)[0].esn
    noecn = xfrm.replace("replay-window 0 \n", "replay-window 32 flag noecn \n", 1)
    assert not keys.parse_xfrm_state(noecn)[0].esn


# ---- the -E syntax -------------------------------------------------------------------------

def test_tcpdump_secret_entries() -> None:
    sas, warnings = parse_tcpdump_secrets(
        "0x1234@192.0.2.2 aes128-cbc:0x000102030405060708090A0B0C0D0E0F\n"
        " 4660@2001:DB8::2\taes192-cbc-hmac96:0x" + "ab" * 24 + ","
        "011@192.0.2.9 AES256:" + "k" * 32 + ",,"
        "ikev2 I 0x0102030405060708 0x1112131415161718 sha1:0x00 aes128-cbc:0x00")
    assert [(s.spi, s.src, s.dst, s.encryption, s.integrity, len(s.encryption_key))
            for s in sas] == [
        (0x1234, "*", "192.0.2.2", AES_CBC, "NULL", 16),
        (4660, "*", "2001:DB8::2", AES_CBC, ANY_96, 24),
        (9, "*", "192.0.2.9", AES_CBC, "NULL", 32)]
    assert sas[2].encryption_key == b"k" * 32 and all(s.source == "tcpdump" for s in sas)
    assert warnings == ["tcpdump secrets entry 5: ikev2 entry skipped (IKE keys; only ESP is "
                        "decrypted)"]
    assert sas[0].family == "IPv4" and sas[1].family == "IPv6"


def test_tcpdump_secrets_files(tmp_path: Path) -> None:
    inner = tmp_path / "more secrets"
    inner.write_text("# the other direction\n\n"
                     "0x4321@192.0.2.1 aes128-cbc-hmac96:sixteen,bytes!!!\n")
    outer = tmp_path / "secrets"
    outer.write_text(f"0x1234@192.0.2.2 aes128-cbc:0x{V4.key.hex()}\r\nfile {inner}\n")
    sas, _ = read_tcpdump_secrets(outer)
    # in a file a line is one entry: the comma is the secret's
    assert [(s.spi, s.encryption_key) for s in sas] == [(0x1234, V4.key),
                                                         (0x4321, b"sixteen,bytes!!!")]
    assert sas[1].integrity == ANY_96
    assert [s.spi for s in parse_tcpdump_secrets(f"file {outer}")[0]] == [0x1234, 0x4321]
    assert [s.spi for s in load_tcpdump_secrets(str(outer))[0]] == [0x1234, 0x4321]
    assert [s.spi for s in load_tcpdump_secrets(SPEC)[0]] == [0x1234, 22136]
    loop = tmp_path / "loop"
    loop.write_text(f"file {loop}\n")
    with pytest.raises(ValueError, match="nested more than"):
        read_tcpdump_secrets(loop)
    with pytest.raises(FileNotFoundError):
        parse_tcpdump_secrets(f"file {tmp_path / 'missing'}")


SECRET = "0x" + "5e" * 16


@pytest.mark.parametrize(("spec", "message"), [
    (f"aes128-cbc:{SECRET}", "tcpdump's default secret, is not supported"),
    (f"0x1234 aes128-cbc:{SECRET}", "is not SPI@DST"),
    (f"12x4@192.0.2.2 aes128-cbc:{SECRET}", "is not SPI@DST"),
    (f"0x1ffffffff@192.0.2.2 aes128-cbc:{SECRET}", "at most 32 bits"),
    (f"1@host.example aes128-cbc:{SECRET}", "is not an IP address"),
    (f"1@192.0.2.2 {SECRET}", "expected ALGO:SECRET"),
    (f"1@192.0.2.2 aes-128-cbc:{SECRET}", "unknown algorithm 'aes-128-cbc'"),
    (f"1@192.0.2.2 aes128-gcm:{SECRET}", "unknown algorithm"),
    (f"1@192.0.2.2 aes256-cbc:{SECRET}", "needs a 32-byte key, the secret has 16 bytes"),
    ("1@192.0.2.2 aes128-cbc:0x5e5e5", "not an even number of hex digits"),
    ("1@192.0.2.2 aes128-cbc:0x5e5e5g5e5e5e5e5e5e5e5e5e5e5e5e5e", "hex digits"),
    ("file", "'file' needs a file name"),
])
def test_bad_tcpdump_secrets_say_why_without_the_secret(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as e:
        parse_tcpdump_secrets(f"0x9@192.0.2.9 aes128-cbc:0x{'00' * 16},{spec}")
    assert str(e.value).startswith("tcpdump secrets entry 2")
    assert "5e5e" not in str(e.value)


def test_ciphers_tcpdump_knows_but_we_do_not_decrypt_are_refused() -> None:
    spec = f"1@192.0.2.2 3des-cbc:0x{'01' * 24},2@192.0.2.2 aes128-cbc:0x{'02' * 16}"
    with pytest.raises(UnsupportedSaError, match="TripleDes-CBC"):
        EspDecryptor.from_tcpdump_secrets(spec)
    dec = EspDecryptor.from_tcpdump_secrets(spec, skip_unsupported=True)
    assert len(dec) == 1 and len(dec.warnings) == 1 and "not supported" in dec.warnings[0]


# ---- the command line ------------------------------------------------------------------------

def run_read(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ipsec_nflog", "read", *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_cli_read_esp_secrets_prints_the_decrypted_lines(
        tmp_path: Path, tcpdump_style_capture: tuple[Path, list[bytes]]) -> None:
    path, _ = tcpdump_style_capture
    secrets = tmp_path / "secrets"
    secrets.write_text("# tcpdump -E 'file secrets'\n" + SPEC.replace(",", "\n") + "\n")
    out = tmp_path / "inner.pcap"
    for given in (SPEC, str(secrets)):
        r = run_read(str(path), "--esp-secrets", given, "--write-decrypted", str(out),
                     "--overwrite")
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        decrypted = [x.strip() for x in lines if x.startswith("    [decrypted")]
        assert len(lines) == 12 and len(decrypted) == 6
        assert sum(re.fullmatch(rf"\[decrypted spi=0x{V4.spi:08x} seq=\d, no ICV\] "
                                r"10\.0\.1\.1\.40000 > 10\.0\.2\.2\.40001: UDP, length \d+",
                                x) is not None for x in decrypted) == 3
        assert sum(x.startswith(f"[decrypted spi=0x{V6.spi:08x} seq=") and
                   f", ICV not checked] {V6.inner[0]}.40000 > {V6.inner[1]}.40001: UDP" in x
                   for x in decrypted) == 3
        assert r.stderr.splitlines() == [
            "decrypted 6 of 6 ESP packets, 6 of them not authenticated (ICV not checked or "
            f"none); wrote 6 to {out}"]
    # what we print of each inner packet is what tcpdump prints of it
    tcpdump = require_tool("tcpdump", "tcpdump")
    t = subprocess.run([tcpdump, "-n", "-r", str(path), "-E", SPEC], capture_output=True,
                       text=True, timeout=60)
    theirs = [re.sub(r"^.*?, length \d+: IP6? ", "", x) for x in t.stdout.splitlines()]
    assert [x.split("] ", 1)[1] for x in decrypted] == theirs


def test_cli_read_bad_esp_secrets_is_one_line_without_the_secret(
        tcpdump_style_capture: tuple[Path, list[bytes]]) -> None:
    path, _ = tcpdump_style_capture
    r = run_read(str(path), "--esp-secrets", f"0x1234@192.0.2.2 aes128-cbc:{SECRET[:-2]}")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines() == ["ipsec-nflog: tcpdump secrets entry 1 (0x1234@192.0.2.2): "
                                     "aes128-cbc needs a 16-byte key, the secret has 15 bytes"]
    r = run_read(str(path), "--esp-secrets", "no-such-secrets-file")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1
    assert "name the SPI" in r.stderr
    r = run_read(str(path), "--esp-secrets", f"1@192.0.2.2 3des-cbc:0x{'01' * 24}")
    assert r.returncode == 2 and r.stderr.splitlines()[-1] == (
        "ipsec-nflog: no usable ESP keys in --esp-secrets")
    assert "0101" not in r.stderr
