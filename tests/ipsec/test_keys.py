"""ipsec_nflog.ipsec.keys from committed fixtures (no root): real charon logs (ike 4 /
chd 4) of both peers, real ``ip xfrm state`` dumps from the VM tier, and real NFLOG captures
of the tunnels, which tshark must decrypt with the extracted keys.

Fixtures (throwaway test keys):

- keys_{cbc,gcm}_charon_{initiator,responder}.log and keys_{cbc,gcm}_tunnel.pcap
  (LINKTYPE_NFLOG from our Capture: ike-esp-in/out and libipsec groups of the initiator), from
  tier 2 (kernel-libipsec); regenerate with ``python -m tests.vm.make_keys_fixtures``;
- keys_kernel_charon_{initiator,responder}.log + keys_xfrm_state_strongswan.txt: one strongSwan
  run with kernel IPsec in the tier-1 VM (the log and the kernel's SAs of the same CHILD_SA);
- keys_xfrm_state_static.txt: the static SAs of the tier-1 topology (AES-CBC and AES-GCM).
  The tier-1 session writes fresh copies of the last three into its exchange directory.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from ipsec_nflog.cli import keys as cli_keys
from ipsec_nflog.ipsec import keys
from ipsec_nflog.ipsec.keys import EspSa, IkeSa, KeyExtractionError

FIX = Path(__file__).resolve().parents[1] / "fixtures"


def log(name: str) -> str:
    return (FIX / name).read_text()


# ---- the charon logs --------------------------------------------------------------------------

# What the logs hold (checked by hand against 'swanctl --list-sas' of the run and proven by the
# tshark tests below).
CBC_IKE = ("f71f29f5afe41a2b", "20487d88c1f4ebe0")
CBC_SPIS = {0x96ED3FA7: ("192.0.2.1", "192.0.2.2"), 0x1C79DA65: ("192.0.2.2", "192.0.2.1")}
GCM_IKE = ("214c5b31e7a28003", "224c107f14d4a8bd")
GCM_SPIS = {0xC885F8BF: ("192.0.2.1", "192.0.2.2"), 0xAA4FFE8F: ("192.0.2.2", "192.0.2.1")}


@pytest.mark.parametrize("role", ["initiator", "responder"])
def test_cbc_log_gives_ike_and_esp_keys(role: str) -> None:
    found = keys.parse_charon_log(log(f"keys_cbc_charon_{role}.log"))
    assert found.warnings == []
    [ike] = found.ike
    assert (ike.spi_i.hex(), ike.spi_r.hex()) == CBC_IKE  # type: ignore[union-attr]
    assert ike.encryption == "AES-CBC-256 [RFC3602]"
    assert ike.integrity == "HMAC_SHA2_256_128 [RFC4868]"
    assert len(ike.sk_ei) == len(ike.sk_er) == 32 and len(ike.sk_ai) == len(ike.sk_ar) == 32
    assert ike.proposal == "AES_CBC_256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048"
    assert ike.name == "t" and ike.unique_id == 1
    assert {e.spi: (e.src, e.dst) for e in found.esp} == CBC_SPIS
    for e in found.esp:
        assert e.encryption == "AES-CBC [RFC3602]"
        assert e.integrity == "HMAC-SHA-256-128 [RFC4868]"
        assert len(e.encryption_key) == 16 and len(e.integrity_key) == 32
        assert e.family == "IPv4" and e.source == "log"


def test_both_peers_agree_on_every_key() -> None:
    for v in ("cbc", "gcm"):
        a = keys.parse_charon_log(log(f"keys_{v}_charon_initiator.log"))
        b = keys.parse_charon_log(log(f"keys_{v}_charon_responder.log"))
        assert [s.uat_line() for s in a.ike] == [s.uat_line() for s in b.ike]
        assert sorted(s.uat_line() for s in a.esp) == sorted(s.uat_line() for s in b.esp)
        # the two directions use different keys
        assert len({s.encryption_key for s in a.esp}) == 2


def test_gcm_log_gives_aead_keys_with_salt_and_no_integrity_keys() -> None:
    found = keys.parse_charon_log(log("keys_gcm_charon_initiator.log"))
    [ike] = found.ike
    assert (ike.spi_i.hex(), ike.spi_r.hex()) == GCM_IKE  # type: ignore[union-attr]
    assert ike.encryption == "AES-GCM-128 with 16 octet ICV [RFC5282]"
    assert ike.integrity == "NONE [RFC4306]"
    assert len(ike.sk_ei) == 20 and ike.sk_ai == b"" and ike.sk_ar == b""
    assert {e.spi: (e.src, e.dst) for e in found.esp} == GCM_SPIS
    for e in found.esp:
        assert e.encryption == "AES-GCM with 16 octet ICV [RFC4106]"
        assert e.integrity == "NULL" and e.integrity_key == b""
        assert len(e.encryption_key) == 36  # AES-256 key + 4-byte salt


def test_ike_line_has_save_keys_format() -> None:
    [ike] = keys.parse_charon_log(log("keys_cbc_charon_initiator.log")).ike
    line = keys.ikev2_line(ike)
    f = line.split(",")
    assert len(f) == 8
    assert f[0] == CBC_IKE[0] and f[1] == CBC_IKE[1]
    assert f[2] == ike.sk_ei.hex() and f[3] == ike.sk_er.hex()
    assert f[4] == '"AES-CBC-256 [RFC3602]"'
    assert f[5] == ike.sk_ai.hex() and f[6] == ike.sk_ar.hex()
    assert f[7] == '"HMAC_SHA2_256_128 [RFC4868]"'
    assert line == line.strip() and line.lower() == line.replace("AES-CBC", "aes-cbc").replace(
        "RFC", "rfc").replace("HMAC_SHA2_256_128", "hmac_sha2_256_128")  # hex is lower case


def test_esp_line_has_save_keys_format() -> None:
    sa = EspSa("192.0.2.1", "192.0.2.2", 0xC1, "AES-CBC [RFC3602]", bytes(range(16)),
               "HMAC-SHA-256-128 [RFC4868]", bytes(range(32)))
    assert keys.esp_sa_line(sa) == (
        '"IPv4","192.0.2.1","192.0.2.2","0x000000c1","AES-CBC [RFC3602]",'
        '"0x000102030405060708090a0b0c0d0e0f","HMAC-SHA-256-128 [RFC4868]",'
        '"0x000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"')
    v6 = EspSa("2001:db8::1", "2001:db8::2", 1, "NULL", b"", "NULL", b"")
    assert keys.esp_sa_line(v6).startswith('"IPv6","2001:db8::1","2001:db8::2","0x00000001"')


def test_log_without_ike_name_and_with_journal_prefixes() -> None:
    """The same log as journald prints it (prefix per line, no '<t|1>' tag)."""
    text = log("keys_cbc_charon_initiator.log")
    import re

    lines = []
    for line in text.splitlines():
        line = re.sub(r" <[^>]*> ", " ", line, count=1)
        lines.append("Nov 27 09:45:06 host charon-systemd[4242]: " + line.split(" ", 1)[1])
    a = keys.parse_charon_log("\n".join(lines))
    b = keys.parse_charon_log(text)
    assert [s.uat_line() for s in a.ike] == [s.uat_line() for s in b.ike]
    assert sorted(s.uat_line() for s in a.esp) == sorted(s.uat_line() for s in b.esp)


def test_log_without_keys_gives_nothing() -> None:
    text = "\n".join(line for line in log("keys_cbc_charon_initiator.log").splitlines()
                     if "[CHD]" not in line and "[IKE]" not in line)
    found = keys.parse_charon_log(text)
    assert found.ike == [] and found.esp == []


def test_two_ike_sas_in_one_log_keep_their_own_spis() -> None:
    """Concatenated logs of two runs (unique ids 1 and 1 → renumbered to 2 for the second)."""
    first = log("keys_cbc_charon_initiator.log")
    second = log("keys_gcm_charon_initiator.log").replace("<t|1>", "<t|2>").replace(
        "<1>", "<2>")
    found = keys.parse_charon_log(first + second)
    assert [(s.spi_i.hex(), s.spi_r.hex()) for s in found.ike] == [  # type: ignore[union-attr]
        CBC_IKE, GCM_IKE]
    assert {e.spi for e in found.esp} == set(CBC_SPIS) | set(GCM_SPIS)


# ---- files and options -------------------------------------------------------------------------

def test_files_are_private_and_hold_one_line_per_sa(tmp_path: Path) -> None:
    found = keys.parse_charon_log(log("keys_cbc_charon_initiator.log"))
    d = tmp_path / "wireshark"
    old = os.umask(0)
    try:
        paths = keys.write_wireshark_keys(d, ike=found.ike, esp=found.esp + found.esp)
    finally:
        os.umask(old)
    assert set(paths) == {"esp_sa", "ikev2_decryption_table"}
    for written in paths.values():
        assert stat.S_IMODE(os.stat(written).st_mode) == 0o600
    esp_lines = Path(paths["esp_sa"]).read_text().splitlines()
    assert esp_lines == [s.uat_line() for s in found.esp]  # duplicates dropped
    assert Path(paths["ikev2_decryption_table"]).read_text() == found.ike[0].uat_line() + "\n"
    # an existing file with wide permissions is tightened; append adds
    p = tmp_path / "esp_sa"
    p.write_text("")
    p.chmod(0o644)
    keys.write_esp_sa(p, found.esp[:1])
    keys.write_esp_sa(p, found.esp[1:], append=True)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    assert p.read_text().splitlines() == esp_lines


def test_ike_sa_without_spis_is_left_out_of_the_table(tmp_path: Path) -> None:
    sa = IkeSa(None, None, b"\1" * 16, b"\2" * 16, b"\3" * 20, b"\4" * 20,
               "AES-CBC-128 [RFC3602]", "HMAC_SHA1_96 [RFC2404]")
    keys.write_ikev2_decryption_table(tmp_path / "t", [sa])
    assert (tmp_path / "t").read_text() == ""
    with pytest.raises(KeyExtractionError):
        keys.ikev2_line(sa)
    assert keys.tshark_options(ike=[sa]) == []


def test_tshark_options_are_argv_items() -> None:
    found = keys.parse_charon_log(log("keys_cbc_charon_initiator.log"))
    opts = keys.tshark_options(esp=found.esp, ike=found.ike, udpencap_port=4501)
    assert opts[:4] == ["-o", "esp.enable_encryption_decode:TRUE",
                        "-o", "esp.enable_authentication_check:TRUE"]
    assert opts[4:8] == ["-o", "uat:esp_sa:" + found.esp[0].uat_line(),
                         "-o", "uat:esp_sa:" + found.esp[1].uat_line()]
    assert opts[8:10] == ["-o", "uat:ikev2_decryption_table:" + found.ike[0].uat_line()]
    assert opts[10:] == ["-d", "udp.port==4501,udpencap"]
    assert keys.tshark_options() == []


# ---- ip xfrm state ---------------------------------------------------------------------------

XFRM_TEXT = """\
src 192.0.2.1 dst 192.0.2.2
\tproto esp spi 0x00001001 reqid 1 mode tunnel
\treplay-window 0 flag af-unspec
\tauth-trunc hmac(sha256) 0x00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff 128
\tenc cbc(aes) 0x000102030405060708090a0b0c0d0e0f
\tencap type espinudp sport 4500 dport 4500 addr 0.0.0.0
\tlastused 2024-01-01 00:00:00
\tanti-replay context: seq 0x0, oseq 0x5, bitmap 0x00000000
\tsel src 0.0.0.0/0 dst 0.0.0.0/0
src 2001:db8::2 dst 2001:db8::1
\tproto esp spi 0x00002002 reqid 2 mode transport
\treplay-window 32
\taead rfc4106(gcm(aes)) 0x000102030405060708090a0b0c0d0e0f10111213 128
\tanti-replay context: seq 0x0, oseq 0x0, bitmap 0x00000000
\tsel src ::/0 dst ::/0
src 192.0.2.2 dst 192.0.2.1
\tproto ah spi 0x00003003 reqid 3 mode tunnel
\treplay-window 0
\tauth-trunc hmac(sha1) 0x0011223344556677889900112233445566778899 96
"""


def test_xfrm_text_is_parsed() -> None:
    sas = keys.parse_xfrm_state(XFRM_TEXT)
    assert len(sas) == 2  # AH is skipped
    a, b = sas
    assert (a.src, a.dst, a.spi, a.reqid, a.mode, a.encap) == (
        "192.0.2.1", "192.0.2.2", 0x1001, 1, "tunnel", (4500, 4500))
    assert a.encryption == "AES-CBC [RFC3602]" and a.encryption_key == bytes(range(16))
    assert a.integrity == "HMAC-SHA-256-128 [RFC4868]" and len(a.integrity_key) == 32
    assert b.family == "IPv6" and b.encryption == "AES-GCM with 16 octet ICV [RFC4106]"
    assert b.encryption_key == bytes(range(20)) and b.integrity == "NULL"
    assert b.mode == "transport" and b.source == "xfrm"


def test_xfrm_algorithms_wireshark_lacks_are_refused() -> None:
    bad = XFRM_TEXT.replace("cbc(aes)", "cbc(sm4)")
    with pytest.raises(KeyExtractionError, match="cbc\\(sm4\\)"):
        keys.parse_xfrm_state(bad)


def test_xfrm_untruncated_auth_uses_the_rfc_truncation() -> None:
    text = XFRM_TEXT.replace(
        "auth-trunc hmac(sha256) 0x00112233445566778899aabbccddeeff00112233445566778899aabb"
        "ccddeeff 128", "auth hmac(sha1) 0x0011223344556677889900112233445566778899")
    a = keys.parse_xfrm_state(text)[0]
    assert a.integrity == "HMAC-SHA-1-96 [RFC2404]"


@pytest.mark.parametrize("path", sorted(FIX.glob("keys_xfrm_state*.txt")), ids=lambda p: p.name)
def test_real_xfrm_dumps_parse(path: Path) -> None:
    sas = keys.parse_xfrm_state(path.read_text())
    assert sas, path
    for sa in sas:
        assert sa.encryption_key and sa.spi


def test_static_xfrm_dump_from_the_vm() -> None:
    sas = {s.spi: s for s in keys.parse_xfrm_state(log("keys_xfrm_state_static.txt"))}
    assert set(sas) == {0x1001, 0x1002, 0x2001, 0x2002}
    assert sas[0x1001].encryption_key == b"\x11" * 16
    assert sas[0x1001].integrity_key == b"\x33" * 32
    assert sas[0x2001].encryption == "AES-GCM with 16 octet ICV [RFC4106]"
    assert sas[0x2001].encryption_key == b"\x55" * 20
    assert {s.reqid for s in sas.values()} == {1, 2}


@pytest.mark.parametrize("role", ["initiator", "responder"])
def test_charon_log_and_kernel_hold_the_same_esp_keys(role: str) -> None:
    """Tier-1 run: charon (kernel-netlink) logged the keys it installed into XFRM."""
    def norm(sas: list[EspSa]) -> set[tuple[object, ...]]:
        return {(s.src, s.dst, s.spi, s.encryption, s.encryption_key, s.integrity,
                 s.integrity_key) for s in sas}

    from_log = keys.parse_charon_log(log(f"keys_kernel_charon_{role}.log"))
    from_kernel = keys.parse_xfrm_state(log("keys_xfrm_state_strongswan.txt"))
    assert len(from_kernel) == 2
    assert norm(from_log.esp) == norm(from_kernel)
    assert len(from_log.ike) == 1 and from_log.ike[0].complete


def test_xfrm_argv() -> None:
    assert keys.xfrm_state_argv() == ["ip", "xfrm", "state"]
    assert keys.xfrm_state_argv("ns1") == ["ip", "-n", "ns1", "xfrm", "state"]
    with pytest.raises(ValueError):
        keys.read_xfrm_state("bad name; rm -rf /")


# ---- tshark decrypts the committed captures with the extracted keys -------------------------

@pytest.mark.parametrize("variant", ["cbc", "gcm"])
@pytest.mark.parametrize("role", ["initiator", "responder"])
def test_tshark_decrypts_every_esp_packet_and_ike_auth(variant: str, role: str) -> None:
    if shutil.which("tshark") is None:
        pytest.skip("needs tshark (apt-get install tshark)")
    found = keys.parse_charon_log(log(f"keys_{variant}_charon_{role}.log"))
    argv = ["tshark", "-n", "-r", str(FIX / f"keys_{variant}_tunnel.pcap"),
            *keys.tshark_options(esp=found.esp, ike=found.ike), "-T", "fields",
            "-E", "separator=|", "-e", "esp.spi", "-e", "esp.icv_good", "-e", "icmp.type",
            "-e", "isakmp.exchangetype", "-e", "isakmp.enc.decrypted"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Dissector bug" not in r.stderr, r.stderr
    rows = [line.split("|") for line in r.stdout.splitlines()]
    esp = [row for row in rows if row[0]]
    assert len(esp) == 6, rows            # 3 pings: 3 ESP out + 3 ESP in
    assert all(row[1] == "1" and row[2] in ("0", "8") for row in esp), esp
    enc_ike = [row for row in rows if row[3] in ("35", "37")]
    assert len(enc_ike) == 4 and all(row[4] for row in enc_ike), rows


def test_command_line_writes_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "k"
    rc = cli_keys.main(["--log", str(FIX / "keys_cbc_charon_initiator.log"), "--out", str(out)])
    assert rc == 0
    assert "wrote 1 IKE_SA(s)" in capsys.readouterr().out
    assert len((out / "esp_sa").read_text().splitlines()) == 2
    x = tmp_path / "x.txt"
    x.write_text(XFRM_TEXT)
    assert cli_keys.main(["--xfrm-file", str(x), "--tshark"]) == 0
    items = capsys.readouterr().out.splitlines()
    assert items[0] == "-o" and sum(i.startswith("uat:esp_sa:") for i in items) == 2
    assert cli_keys.main(["--log", str(tmp_path / "missing.log")]) == 1
