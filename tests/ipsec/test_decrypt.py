"""ipsec_nflog.ipsec.decrypt: our own ESP decryption, unprivileged and fast.

Real material: keys_{cbc,gcm}_tunnel.pcap (our captures of strongSwan kernel-libipsec tunnels,
ESP-in-UDP on 4500, 3 pings 10.201.0.1 -> 10.202.0.1, see tests/support/strongswan.py) with the
charon logs of both peers (see tests/ipsec/test_keys.py). Other algorithms and encapsulations
(ESP directly in IPv4/IPv6, transport mode, HMAC-SHA1/384/512, AES-CTR) are checked on
packets built here with an independent ESP encryptor written with ``cryptography``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import stat
import struct
import subprocess
import sys
from pathlib import Path

import dpkt
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ipsec_nflog.files import writer as pcapfile
from ipsec_nflog.ipsec import decrypt, keys
from ipsec_nflog.ipsec.decrypt import EspDecryptor, UnsupportedSaError
from ipsec_nflog.ipsec.keys import EspSa
from tests.conftest import require_tool

FIX = Path(__file__).resolve().parents[1] / "fixtures"
ROOT = Path(__file__).resolve().parents[2]
LEFT_INNER, RIGHT_INNER = "10.201.0.1", "10.202.0.1"     # tests/support/strongswan.py's defaults
OUT_SPI = {"cbc": 0x96ED3FA7, "gcm": 0xC885F8BF}         # initiator -> responder
IN_SPI = {"cbc": 0x1C79DA65, "gcm": 0xAA4FFE8F}
VARIANTS = ["cbc", "gcm"]
ROLES = ["initiator", "responder"]


def charon_log(variant: str, role: str = "initiator") -> Path:
    return FIX / f"keys_{variant}_charon_{role}.log"


def tunnel(variant: str) -> Path:
    return FIX / f"keys_{variant}_tunnel.pcap"


def esp_payloads(variant: str) -> list[bytes]:
    """The IP packets of the capture that carry ESP (ESP-in-UDP here)."""
    out: list[bytes] = []
    for pkt in pcapfile.read_capture(tunnel(variant)):
        ip = pkt.ip
        if pkt.payload and isinstance(ip.data, dpkt.udp.UDP) and ip.data.dport == 4500 and \
                bytes(ip.data.data)[:4] != b"\0\0\0\0":
            out.append(pkt.payload)
    return out


def all_payloads(variant: str) -> list[bytes]:
    return [p.payload for p in pcapfile.read_capture(tunnel(variant)) if p.payload]


# ---- the committed captures ------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("role", ROLES)
def test_every_esp_packet_of_the_real_captures_decrypts(variant: str, role: str) -> None:
    dec = EspDecryptor.from_charon_logs([charon_log(variant, role)])
    assert dec.warnings == [] and len(dec) == 2
    results = [r for r in map(dec.decrypt, all_payloads(variant)) if r is not None]
    assert len(results) == 6 == len(esp_payloads(variant))   # 3 pings: 3 out + 3 in
    for r in results:
        assert r.ok and r.status == decrypt.OK, r
        assert r.icv_ok is True
        assert r.next_header == 4 and r.udp_encap       # tunnel mode, ESP-in-UDP
        assert r.ip_packet == r.payload
        ip = r.inner_ip
        assert isinstance(ip, dpkt.ip.IP) and isinstance(ip.data, dpkt.icmp.ICMP)
        src, dst = socket.inet_ntoa(ip.src), socket.inet_ntoa(ip.dst)
        if r.spi == OUT_SPI[variant]:
            assert (src, dst, ip.data.type) == (LEFT_INNER, RIGHT_INNER, 8)
            assert (r.src, r.dst) == ("192.0.2.1", "192.0.2.2")
        else:
            assert r.spi == IN_SPI[variant]
            assert (src, dst, ip.data.type) == (RIGHT_INNER, LEFT_INNER, 0)
            assert (r.src, r.dst) == ("192.0.2.2", "192.0.2.1")
        assert ip.data.data.seq == r.seq                # inner ICMP sequence = ESP sequence
        assert r.label() == f"[decrypted spi=0x{r.spi:08x} seq={r.seq}]"
        assert "ICMP echo" in r.describe()
    assert sorted((r.spi, r.seq) for r in results) == sorted(
        (s, n) for s in (OUT_SPI[variant], IN_SPI[variant]) for n in (1, 2, 3))
    assert dec.stats.summary() == "decrypted 6 of 6 ESP packets"


@pytest.mark.parametrize("variant", VARIANTS)
def test_we_decrypt_what_tshark_decrypts(variant: str) -> None:
    require_tool("tshark", "tshark")
    sas = keys.parse_charon_log(charon_log(variant).read_text()).esp
    argv = ["tshark", "-n", "-r", str(tunnel(variant)), *keys.tshark_options(esp=sas),
            "-T", "fields", "-E", "separator=|", "-e", "esp.spi", "-e", "esp.sequence",
            "-e", "esp.icv_good", "-e", "icmp.seq"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = [line.split("|") for line in r.stdout.splitlines()]
    theirs = sorted((int(row[0], 16), int(row[1]), int(row[3]))
                    for row in rows if row[0] and row[2] == "1")
    dec = EspDecryptor(sas)
    ours = sorted((res.spi, res.seq, res.inner_ip.data.data.seq)
                  for res in map(dec.decrypt, all_payloads(variant))
                  if res is not None and res.icv_ok)
    assert len(theirs) == 6 and ours == theirs


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_flipped_bit_fails_the_icv(variant: str) -> None:
    dec = EspDecryptor.from_charon_logs([charon_log(variant)])
    good = esp_payloads(variant)[0]
    for where in (len(good) - 40, len(good) - 1, 20 + 8 + 8):  # ciphertext, ICV, IV / seq
        bad = bytearray(good)
        bad[where] ^= 0x04
        r = dec.decrypt(bytes(bad))
        assert r is not None and r.status == decrypt.BAD_ICV, where
        assert r.icv_ok is False and not r.ok and r.payload is None and r.ip_packet is None
        assert r.label().startswith("[ESP bad-icv spi=0x")
    assert dec.stats.counts == {decrypt.BAD_ICV: 3}


def test_an_unknown_spi_is_reported_not_raised() -> None:
    dec = EspDecryptor.from_charon_logs([charon_log("gcm")])   # the other tunnel's keys
    results = [dec.decrypt(p) for p in esp_payloads("cbc")]
    assert all(r is not None and r.status == decrypt.UNKNOWN_SPI for r in results)
    r = results[0]
    assert r is not None and r.icv_ok is None and r.sa is None
    assert r.spi == OUT_SPI["cbc"] and r.seq == 1
    assert "no key for SPI" in r.describe()
    empty = EspDecryptor([])
    r2 = empty.decrypt(esp_payloads("gcm")[0])
    assert r2 is not None and r2.status == decrypt.UNKNOWN_SPI


def test_non_esp_packets_give_none() -> None:
    dec = EspDecryptor.from_charon_logs([charon_log("cbc")])
    others = [p for p in all_payloads("cbc") if p not in esp_payloads("cbc")]
    assert len(others) == 6 + 6      # IKE (500, 4500 with the non-ESP marker) + plaintext ICMP
    assert all(dec.decrypt(p) is None for p in others)
    keepalive = bytes(dpkt.ip.IP(src=b"\xc0\0\2\1", dst=b"\xc0\0\2\2", p=17, data=dpkt.udp.UDP(
        sport=4500, dport=4500, data=b"\xff")))
    for junk in (b"", b"\x45", b"\x00" * 60, b"\x60" + b"\0" * 10, keepalive):
        assert dec.decrypt(junk) is None
    assert dec.stats.total == 0


def test_truncated_packet_is_malformed() -> None:
    dec = EspDecryptor.from_charon_logs([charon_log("cbc")])
    pkt = esp_payloads("cbc")[0]
    for cut in (len(pkt) - 10, 20 + 8 + 6):
        r = dec.decrypt(pkt[:cut])
        assert r is not None and r.status == decrypt.MALFORMED, cut


def test_esp_sa_directory_round_trip(tmp_path: Path) -> None:
    found = keys.parse_charon_log(charon_log("gcm").read_text())
    keys.write_wireshark_keys(tmp_path / "k", ike=found.ike, esp=found.esp)
    read = keys.read_esp_sa(tmp_path / "k")
    assert [s.uat_line() for s in read] == [s.uat_line() for s in found.esp]
    assert [s.uat_line() for s in keys.read_esp_sa(tmp_path / "k" / "esp_sa")] == \
        [s.uat_line() for s in found.esp]
    dec = EspDecryptor.from_wireshark_keys(tmp_path / "k")
    assert all(r is not None and r.ok for r in map(dec.decrypt, esp_payloads("gcm")))
    bad = tmp_path / "bad_sa"
    bad.write_text('# comment\n\n"IPv4","1.2.3.4"\n')
    with pytest.raises(ValueError, match="bad_sa:3"):
        keys.read_esp_sa(bad)


def test_bad_key_material_raises_when_the_decryptor_is_built() -> None:
    good = keys.parse_charon_log(charon_log("cbc").read_text()).esp[0]
    cases = [
        EspSa(**{**good.__dict__, "encryption_key": good.encryption_key[:15]}),
        EspSa(**{**good.__dict__, "integrity_key": b"\1" * 20}),
        EspSa(**{**good.__dict__, "encryption": "TripleDes-CBC [RFC2451]"}),
        EspSa(**{**good.__dict__, "integrity": "MAC-RIPEMD-160-96 [RFC2857]"}),
        EspSa("192.0.2.1", "192.0.2.2", 7, "AES-GCM with 16 octet ICV [RFC4106]", b"\1" * 16,
              "NULL"),
    ]
    for sa in cases:
        with pytest.raises(UnsupportedSaError):
            EspDecryptor([sa])
    dec = EspDecryptor([*cases, good], skip_unsupported=True)
    assert len(dec) == 1 and len(dec.warnings) == len(cases)


def test_several_sas_with_one_spi_the_verifying_one_wins() -> None:
    real = keys.parse_charon_log(charon_log("cbc").read_text()).esp
    decoys = [EspSa(**{**s.__dict__, "integrity_key": b"\7" * 32}) for s in real]
    dec = EspDecryptor([*decoys, *real])
    assert len(dec) == 4
    assert all(r is not None and r.ok for r in map(dec.decrypt, esp_payloads("cbc")))
    only_decoys = EspDecryptor(decoys)
    assert all(r is not None and r.status == decrypt.BAD_ICV
               for r in map(only_decoys.decrypt, esp_payloads("cbc")))


# ---- packets built here: every algorithm, ESP in IPv4/IPv6, transport mode -----------------

INTEG = {  # Wireshark name -> (hash, key length, ICV length)
    "HMAC-SHA-1-96 [RFC2404]": (hashlib.sha1, 20, 12),
    "HMAC-SHA-256-128 [RFC4868]": (hashlib.sha256, 32, 16),
    "HMAC-SHA-384-192 [RFC4868]": (hashlib.sha384, 48, 24),
    "HMAC-SHA-512-256 [RFC4868]": (hashlib.sha512, 64, 32),
}


def esp_encrypt(sa: EspSa, seq: int, payload: bytes, next_header: int) -> bytes:
    """An independent ESP encryptor (RFC 4303/3602/4106/3686) for the tests."""
    enc = sa.encryption
    gcm = enc.startswith("AES-GCM")
    align, iv = (4, os.urandom(8)) if gcm or enc.startswith("AES-CTR") else (16, os.urandom(16))
    pad_len = (-(len(payload) + 2)) % align
    plain = payload + bytes(range(1, pad_len + 1)) + bytes([pad_len, next_header])
    head = struct.pack(">II", sa.spi, seq)
    key, salt = sa.encryption_key[:-4], sa.encryption_key[-4:]
    if gcm:
        icv_len = int(enc.split()[2])
        g = Cipher(algorithms.AES(key), modes.GCM(salt + iv)).encryptor()
        g.authenticate_additional_data(head)
        ct = g.update(plain) + g.finalize()
        return head + iv + ct + g.tag[:icv_len]
    if enc.startswith("AES-CTR"):
        e = Cipher(algorithms.AES(key), modes.CTR(salt + iv + b"\0\0\0\1")).encryptor()
    else:
        e = Cipher(algorithms.AES(sa.encryption_key), modes.CBC(iv)).encryptor()
    body = head + iv + e.update(plain) + e.finalize()
    digest, _, icv_len = INTEG[sa.integrity]
    return body + hmac.new(sa.integrity_key, body, digest).digest()[:icv_len]


def ipv4(src: str, dst: str, proto: int, data: bytes) -> bytes:
    return bytes(dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=proto,
                            ttl=64, data=data))


def ipv6(src: str, dst: str, nxt: int, data: bytes) -> bytes:
    ip = dpkt.ip6.IP6(src=socket.inet_pton(socket.AF_INET6, src),
                      dst=socket.inet_pton(socket.AF_INET6, dst), nxt=nxt, hlim=64, data=data)
    ip.plen = len(data)
    return bytes(ip)


def icmp_echo(src: str, dst: str, seq: int) -> bytes:
    return ipv4(src, dst, 1, bytes(dpkt.icmp.ICMP(type=8, data=dpkt.icmp.ICMP.Echo(
        id=7, seq=seq, data=b"x" * 40))))


def make_sa(enc: str, integ: str, spi: int = 0x1234, src: str = "192.0.2.1",
            dst: str = "192.0.2.2") -> EspSa:
    if enc.startswith(("AES-GCM", "AES-CTR")):
        ekey = os.urandom(20)
    else:
        ekey = os.urandom(32)
    ikey = os.urandom(INTEG[integ][1]) if integ in INTEG else b""
    return EspSa(src, dst, spi, enc, ekey, integ, ikey)


ALGS = [("AES-CBC [RFC3602]", i) for i in INTEG] + [
    (f"AES-GCM with {n} octet ICV [RFC4106]", "NULL") for n in (8, 12, 16)] + [
    ("AES-CTR [RFC3686]", "HMAC-SHA-256-128 [RFC4868]")]


@pytest.mark.parametrize(("enc", "integ"), ALGS)
def test_every_algorithm_in_ipv4_tunnel_mode(enc: str, integ: str) -> None:
    sa = make_sa(enc, integ)
    inner = icmp_echo("10.0.1.1", "10.0.2.2", 5)
    pkt = ipv4(sa.src, sa.dst, 50, esp_encrypt(sa, 5, inner, 4))
    dec = EspDecryptor([sa])
    r = dec.decrypt(pkt)
    assert r is not None and r.ok and r.icv_ok is True, r
    assert (r.spi, r.seq, r.next_header, r.ip_packet, r.udp_encap) == (0x1234, 5, 4, inner,
                                                                         False)
    bad = bytearray(pkt)
    bad[-1] ^= 1
    r2 = dec.decrypt(bytes(bad))
    assert r2 is not None and r2.status == decrypt.BAD_ICV and r2.icv_ok is False


def test_ipv6_transport_mode_rebuilds_an_ip_packet() -> None:
    sa = make_sa("AES-CBC [RFC3602]", "HMAC-SHA-512-256 [RFC4868]", spi=0xABC,
                 src="2001:db8::1", dst="2001:db8::2")
    udp = bytes(dpkt.udp.UDP(sport=1000, dport=53, data=b"hello"))
    pkt = ipv6(sa.src, sa.dst, 50, esp_encrypt(sa, 1, udp, 17))
    r = EspDecryptor([sa]).decrypt(pkt)
    assert r is not None and r.ok and r.next_header == 17 and r.payload == udp
    ip = r.inner_ip
    assert isinstance(ip, dpkt.ip6.IP6) and isinstance(ip.data, dpkt.udp.UDP)
    assert ip.data.data == b"hello" and ip.src == pkt[8:24]
    assert "2001:db8::1.1000 > 2001:db8::2.53" in r.describe()


def test_ipv4_transport_mode_in_udp_with_a_good_header_checksum() -> None:
    sa = make_sa("AES-GCM with 16 octet ICV [RFC4106]", "NULL")
    icmp = bytes(dpkt.icmp.ICMP(type=8, data=dpkt.icmp.ICMP.Echo(id=1, seq=9, data=b"p")))
    esp = esp_encrypt(sa, 9, icmp, 1)
    pkt = ipv4(sa.src, sa.dst, 17, bytes(dpkt.udp.UDP(sport=4500, dport=4500, data=esp)))
    r = EspDecryptor([sa]).decrypt(pkt)
    assert r is not None and r.ok and r.udp_encap and r.next_header == 1
    assert r.ip_packet is not None
    ip = dpkt.ip.IP(r.ip_packet)
    assert ip.p == 1 and ip.len == len(r.ip_packet) and ip.data.data.seq == 9
    check = dpkt.ip.IP(r.ip_packet)
    check.sum = 0
    assert bytes(check)[10:12] == r.ip_packet[10:12]   # dpkt recomputes the same checksum


def test_wrong_cipher_key_with_the_right_integrity_key_is_bad_padding() -> None:
    sa = make_sa("AES-CBC [RFC3602]", "HMAC-SHA-1-96 [RFC2404]")
    pkt = ipv4(sa.src, sa.dst, 50, esp_encrypt(sa, 1, icmp_echo("10.0.0.1", "10.0.0.2", 1), 4))
    wrong = EspSa(**{**sa.__dict__, "encryption_key": bytes(32)})
    r = EspDecryptor([wrong]).decrypt(pkt)
    assert r is not None and r.icv_ok is True
    # a random plaintext ends in valid padding now and then; it must not look decrypted
    assert r.status == decrypt.BAD_PADDING or r.inner_ip is None or r.next_header != 4


def test_spi_lookup_uses_the_destination() -> None:
    a = make_sa("AES-CBC [RFC3602]", "HMAC-SHA-256-128 [RFC4868]", dst="192.0.2.2")
    b = make_sa("AES-CBC [RFC3602]", "HMAC-SHA-256-128 [RFC4868]", src="192.0.2.2",
                dst="192.0.2.1")          # same SPI, other direction, other keys
    dec = EspDecryptor([a, b])
    for sa in (a, b):
        pkt = ipv4(sa.src, sa.dst, 50, esp_encrypt(sa, 3, icmp_echo("10.0.0.1", "10.0.0.2", 3),
                                                  4))
        r = dec.decrypt(pkt)
        assert r is not None and r.ok and r.sa == sa
    # a destination no SA has, while two SAs share the SPI: unknown
    pkt = ipv4("192.0.2.9", "192.0.2.8", 50, esp_encrypt(a, 1, b"x" * 20, 4))
    r = dec.decrypt(pkt)
    assert r is not None and r.status == decrypt.UNKNOWN_SPI
    # one SA with that SPI: used whatever the destination (NAT)
    r = EspDecryptor([a]).decrypt(pkt)
    assert r is not None and r.icv_ok is True


# ---- the command line ------------------------------------------------------------------------

def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ipsec_nflog", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd)


@pytest.mark.parametrize("variant", VARIANTS)
def test_cli_read_log_write_decrypted_round_trip(variant: str, tmp_path: Path) -> None:
    out = tmp_path / "inner.pcap"
    r = run_cli("read", str(tunnel(variant)), "--log", str(charon_log(variant, "responder")),
                "--write-decrypted", str(out))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    dec_lines = [i for i, line in enumerate(lines) if "[decrypted spi=" in line]
    assert len(dec_lines) == 6
    for i in dec_lines:     # each follows its ESP packet's line
        assert lines[i].startswith("    [decrypted spi=0x") and "ESP(spi=0x" in lines[i - 1]
        assert "ICMP echo re" in lines[i]
    assert r.stderr.strip() == f"decrypted 6 of 6 ESP packets; wrote 6 to {out}"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    # timestamps of the outer packets
    esp_times = [p.timestamp for p in pcapfile.read_capture(tunnel(variant))
                 if p.payload in esp_payloads(variant)]
    inner = list(pcapfile.read_capture(out))
    assert [p.timestamp for p in inner] == esp_times
    tcpdump = require_tool("tcpdump", "tcpdump")
    t = subprocess.run([tcpdump, "-nn", "-r", str(out)], capture_output=True, text=True,
                       timeout=60)
    assert t.returncode == 0, t.stderr
    assert "link-type RAW" in t.stderr
    rows = t.stdout.splitlines()
    assert len(rows) == 6
    assert sum(f"IP {LEFT_INNER} > {RIGHT_INNER}: ICMP echo request" in x for x in rows) == 3
    assert sum(f"IP {RIGHT_INNER} > {LEFT_INNER}: ICMP echo reply" in x for x in rows) == 3


def test_cli_read_with_keys_dir(tmp_path: Path) -> None:
    k = tmp_path / "keys"
    assert run_cli("keys", "--log", str(charon_log("cbc")), "--out", str(k)).returncode == 0
    r = run_cli("read", str(tunnel("cbc")), "--keys", str(k), "-c", "4")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("[decrypted spi=0x96ed3fa7") == 2
    assert "decrypted 2 of 2 ESP packets" in r.stderr


def test_cli_read_reports_and_errors_in_one_line(tmp_path: Path) -> None:
    r = run_cli("read", str(tunnel("cbc")), "--log", str(charon_log("gcm")))
    assert r.returncode == 0
    assert r.stdout.count("[ESP unknown-spi spi=0x") == 6
    assert r.stderr.strip() == "decrypted 0 of 6 ESP packets (6 unknown-spi)"
    out = tmp_path / "o.pcap"
    r = run_cli("read", str(tunnel("cbc")), "--write-decrypted", str(out))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "needs --keys" in r.stderr
    r = run_cli("read", str(tunnel("cbc")), "--log", str(tmp_path / "missing.log"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "missing.log" in r.stderr
    out.write_bytes(b"")
    r = run_cli("read", str(tunnel("cbc")), "--log", str(charon_log("cbc")),
                "--write-decrypted", str(out))
    assert r.returncode == 2 and "already exists" in r.stderr and r.stderr.count("\n") == 1
    r = run_cli("read", str(tunnel("cbc")), "--log", str(charon_log("cbc")),
                "--write-decrypted", str(out), "--overwrite")
    assert r.returncode == 0 and len(list(pcapfile.read_capture(out))) == 6
    # plain read is unchanged: no decryption lines, nothing on stderr
    r = run_cli("read", str(tunnel("cbc")))
    assert r.returncode == 0 and "[decrypted" not in r.stdout and r.stderr == ""

