"""ipsec_nflog.nflog.summary without root or the compiled core: the one-line format of each
kind of packet (IPv4/IPv6, UDP, ESP, IKE, NAT-T, AH), the line's head, and the escaping of
untrusted text (printable)."""

from __future__ import annotations

import socket
import struct

import dpkt
import pytest

from ipsec_nflog.files.reader import FilePacket
from ipsec_nflog.nflog import summary
from ipsec_nflog.nflog.packet import Packet, parse_nflog
from ipsec_nflog.nflog.summary import describe_ip, printable, summarize
from tests.files.test_pcapfile import nflog_body

SRC4, DST4 = "192.0.2.1", "192.0.2.2"
SRC6, DST6 = "2001:db8::1", "2001:db8::2"
ESP_BODY = struct.pack(">II", 0x1234ABCD, 7) + b"e" * 16  # SPI, sequence, 16 bytes of payload
LINKTYPE_RAW = 101


def ipv4(proto: int, data: bytes | dpkt.Packet) -> bytes:
    return bytes(dpkt.ip.IP(src=socket.inet_aton(SRC4), dst=socket.inet_aton(DST4), p=proto,
                            ttl=64, data=data))


def ipv6(nxt: int, data: bytes | dpkt.Packet) -> bytes:
    return bytes(dpkt.ip6.IP6(src=socket.inet_pton(socket.AF_INET6, SRC6),
                              dst=socket.inet_pton(socket.AF_INET6, DST6), nxt=nxt, hlim=64,
                              plen=len(bytes(data)), data=data))


def udp(sport: int, dport: int, data: bytes) -> dpkt.udp.UDP:
    return dpkt.udp.UDP(sport=sport, dport=dport, ulen=8 + len(data), data=data)


def ike_header(exchange: int = 34, flags: int = 0x08, msgid: int = 0, length: int = 300) -> bytes:
    """IKEv2 header: initiator SPI, responder SPI, next payload, version, exchange, flags,
    message id, length (the length field is what the summary shows, not len(data))."""
    return struct.pack(">QQBBBBII", 0x0102030405060708, 0x1112131415161718, 33, 0x20,
                       exchange, flags, msgid, length)


def packet(payload: bytes | None, *, prefix: str | None = "pa", hook: int = 3,
           indev: int | None = None, outdev: int | None = 1,
           timestamp: tuple[int, int] | None = None) -> Packet:
    """A live-capture packet of group 5 at 00:00:01.000002 UTC; by default from the OUTPUT
    hook (3) out via ifindex 1 (eth0), prefix "pa", no kernel timestamp."""
    raw = nflog_body(5, payload, prefix=prefix, hook=hook, indev=indev, outdev=outdev,
                     timestamp=timestamp)
    return parse_nflog(raw, 1, 2, ifname_resolver={1: "eth0", 2: "eth1"}.get)


def what(payload: bytes) -> str:
    """The part of the summary after the line's head: the description of the IP packet."""
    return describe_ip(packet(payload).ip, payload)


# -- one line per kind of packet -----------------------------------------------------------


@pytest.mark.parametrize("payload,expected", [
    (ipv4(17, udp(40000, 9999, b"hello")),
     "192.0.2.1.40000 > 192.0.2.2.9999: UDP, length 5"),
    (ipv6(17, udp(1, 2, b"abc")),
     "2001:db8::1.1 > 2001:db8::2.2: UDP, length 3"),
    (ipv4(50, ESP_BODY),
     "192.0.2.1 > 192.0.2.2: ESP(spi=0x1234abcd,seq=0x7), length 24"),
    (ipv4(50, b"12345"),
     "192.0.2.1 > 192.0.2.2: ESP truncated (5 bytes)"),
    (ipv4(17, udp(500, 500, ike_header())),
     "192.0.2.1.500 > 192.0.2.2.500: IKEv2 IKE_SA_INIT req msgid 0 [I] "
     "spi 0102030405060708/1112131415161718, length 300"),
    (ipv6(17, udp(500, 500, ike_header(exchange=35, flags=0x20, msgid=1, length=80))),
     "2001:db8::1.500 > 2001:db8::2.500: IKEv2 IKE_AUTH resp msgid 1 [R] "
     "spi 0102030405060708/1112131415161718, length 80"),
    (ipv4(17, udp(40001, 500, ike_header(exchange=99, flags=0x28, msgid=7))),
     "192.0.2.1.40001 > 192.0.2.2.500: IKEv2 exchange 99 resp msgid 7 [I] "
     "spi 0102030405060708/1112131415161718, length 300"),
    (ipv4(17, udp(500, 500, b"x" * 27)),
     "192.0.2.1.500 > 192.0.2.2.500: IKE truncated (27 bytes)"),
    (ipv4(17, udp(4500, 4500, b"\0\0\0\0" + ike_header(exchange=37, msgid=2))),
     "192.0.2.1.4500 > 192.0.2.2.4500: IKEv2 INFORMATIONAL req msgid 2 [I] "
     "spi 0102030405060708/1112131415161718, length 300"),
    (ipv4(17, udp(4500, 4500, b"\xff")),
     "192.0.2.1.4500 > 192.0.2.2.4500: NAT-keepalive"),
    (ipv4(17, udp(4500, 4500, ESP_BODY)),
     "192.0.2.1.4500 > 192.0.2.2.4500: UDP-encap ESP(spi=0x1234abcd,seq=0x7), length 24"),
    (ipv4(17, udp(4500, 4500, b"\x01\x02\x03")),
     "192.0.2.1.4500 > 192.0.2.2.4500: UDP-encap ESP truncated (3 bytes)"),
    (ipv4(51, b"\x32\x04\0\0" + struct.pack(">II", 0xABC, 3) + b"i" * 12),
     "192.0.2.1 > 192.0.2.2: AH(spi=0x00000abc,seq=0x3)"),
    (ipv4(1, dpkt.icmp.ICMP(type=8, data=dpkt.icmp.ICMP.Echo(id=9, seq=4, data=b"ping"))),
     "192.0.2.1 > 192.0.2.2: ICMP echo request, id 9, seq 4"),
    (ipv4(6, dpkt.tcp.TCP(sport=1000, dport=22, flags=0x12, off=5, data=b"ab")),
     "192.0.2.1.1000 > 192.0.2.2.22: Flags [S.], length 2"),
    (ipv4(253, b"zz"),
     "192.0.2.1 > 192.0.2.2: ip-proto-253, length 2"),
    (ipv6(253, b"zzz"),
     "2001:db8::1 > 2001:db8::2: ip-proto-253, length 3"),
], ids=["udp4", "udp6", "esp4", "esp4-short", "ike4-init", "ike6-auth-resp", "ike-unknown-exchange",
        "ike-short", "natt-ike", "natt-keepalive", "natt-esp", "natt-esp-short", "ah4", "icmp4",
        "tcp4", "other4", "other6"])
def test_each_kind_of_packet_has_its_line(payload: bytes, expected: str) -> None:
    assert what(payload) == expected


@pytest.mark.parametrize("payload,expected", [
    (ipv6(50, ESP_BODY),
     "2001:db8::1 > 2001:db8::2: ESP(spi=0x1234abcd,seq=0x7), length 24"),
    (ipv6(51, b"\x3b\x04\0\0" + struct.pack(">II", 0xABC, 3) + b"i" * 12),
     "2001:db8::1 > 2001:db8::2: AH(spi=0x00000abc,seq=0x3)"),
], ids=["esp6", "ah6"])
def test_ipv6_esp_and_ah_show_spi_and_sequence(payload: bytes, expected: str) -> None:
    assert what(payload) == expected


# -- the line's head: time, group, hook, devices, prefix ------------------------------------


def test_a_live_packet_line_has_time_group_hook_devices_and_prefix() -> None:
    line = summarize(packet(ipv4(50, ESP_BODY), indev=2, prefix="esp-out"), utc=True)
    assert line == ("00:00:01.000002~nflog:5 OUTPUT      eth1>eth0       esp-out      "
                    "192.0.2.1 > 192.0.2.2: ESP(spi=0x1234abcd,seq=0x7), length 24")


def test_kernel_timestamp_unnamed_devices_and_no_prefix() -> None:
    p = packet(ipv4(17, udp(1, 2, b"")), hook=0, indev=7, outdev=None, prefix=None,
               timestamp=(1, 2))
    devices, no_prefix = "if7>-".ljust(15), " " * 12  # an index, never this host's name
    assert summarize(p, utc=True) == (f"00:00:01.000002 nflog:5 PREROUTING  {devices} {no_prefix} "
                                      "192.0.2.1.1 > 192.0.2.2.2: UDP, length 0")


def test_a_snaplen_cut_packet_says_how_much_is_missing() -> None:
    raw = nflog_body(payload=ipv4(17, udp(1, 2, b"abc")))
    p = Packet(raw, 1, 2, orig_len=len(raw) + 100, ifname_resolver={1: "eth0"}.get)
    assert summarize(p, utc=True).endswith("192.0.2.1.1 > 192.0.2.2.2: UDP, length 3 "
                                           "[truncated 100]")


@pytest.mark.parametrize("payload,expected", [
    (None, "no payload"),
    (b"\x00\x01\x02", "no IP payload (3 bytes)"),
])
def test_packets_without_an_ip_payload_say_so(payload: bytes | None, expected: str) -> None:
    assert summarize(packet(payload), utc=True) == (
        f"00:00:01.000002~nflog:5 OUTPUT      ->eth0          pa           {expected}")


def test_a_summary_never_raises_on_an_undecodable_packet(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(ip: object, raw: object = None) -> str:
        raise struct.error("unpack requires a buffer of 8 bytes")

    monkeypatch.setattr(summary, "describe_ip", broken)
    assert summarize(packet(ipv4(50, ESP_BODY)), utc=True).endswith(
        "pa           undecodable IP packet (error)")


def test_a_time_the_platform_cannot_convert_is_shown_raw() -> None:
    raw = nflog_body(payload=ipv4(17, udp(1, 2, b"")))
    p = Packet(raw, 2**62, 5, ifname_resolver={1: "eth0"}.get)
    assert summarize(p, utc=True).startswith(f"@{2**62}.000005~nflog:5 OUTPUT ")


def test_a_file_packet_has_no_nflog_fields() -> None:
    p = FilePacket(LINKTYPE_RAW, ipv4(50, ESP_BODY), 3, 4, 44)
    assert summarize(p, utc=True) == ("00:00:03.000004  192.0.2.1 > 192.0.2.2: "
                                      "ESP(spi=0x1234abcd,seq=0x7), length 24")


# -- escaping of untrusted text --------------------------------------------------------------


@pytest.mark.parametrize("text,shown", [
    ("\x1b[2J", "\\x1b[2J"),                  # ESC: would clear the screen
    ("bell\x07", "bell\\x07"),
    ("a\rb\nc\td", "a\\rb\\nc\\td"),
    ("\x00\x7f", "\\x00\\x7f"),               # NUL, DEL
    ("\x85\x9b", "\\x85\\x9b"),               # C1 controls (NEL, CSI)
    ("\u202egnp.exe", "\\u202egnp.exe"),      # right-to-left override
    ("\U000e0001tag", "\\U000e0001tag"),      # a format character beyond the BMP
    ("bad\udcff", "bad\\xff"),                # an undecodable byte kept by surrogateescape
])
def test_printable_escapes_what_a_terminal_would_act_on(text: str, shown: str) -> None:
    assert printable(text) == shown


@pytest.mark.parametrize("text", ["plain", "caf\u00e9 \ufffd", "back\\x1b slash", ""])
def test_printable_keeps_printable_text_as_it_is(text: str) -> None:
    assert printable(text) == text


def test_a_hostile_prefix_is_escaped_in_the_summary() -> None:
    line = summarize(packet(ipv4(17, udp(1, 2, b"")), prefix="\x1b]0;owned\x07"), utc=True)
    assert line == ("00:00:01.000002~nflog:5 OUTPUT      ->eth0          \\x1b]0;owned\\x07   "
                    "192.0.2.1.1 > 192.0.2.2.2: UDP, length 0")
    assert line.isprintable()
