"""The capture host's interface names travel in our pcapng files (an IDB comment) and only
there: a file is never labelled with the reading host's names."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path
from typing import Literal

import pytest

from ipsec_nflog.files.format import IFNAMES_COMMENT_PREFIX, decode_ifnames, encode_ifnames
from ipsec_nflog.files.writer import open_writer, read_capture
from ipsec_nflog.nflog.codec import HOST, NFULA
from tests.cli.test_cli import argv, finish, start, wait_bound
from tests.conftest import require_tool
from tests.support import nstools


def nflog_record(indev: int, ts: int = 1_700_000_000) -> bytes:
    """One ring record: NFLOG on INPUT with NFULA_IFINDEX_INDEV and a 20-byte payload."""
    order: Literal["little", "big"] = "little" if HOST == "<" else "big"

    def tlv(kind: int, value: bytes) -> bytes:
        head = (4 + len(value)).to_bytes(2, order) + kind.to_bytes(2, order)
        return head + value + b"\0" * (-len(value) % 4)

    hw = b"\x08\x00\x01\x00"  # hw_protocol 0x0800, hook 1 (INPUT), padding
    payload = bytes([0x45]) + bytes(19)
    body = bytes([2, 0, 0, 9]) + tlv(NFULA.PACKET_HDR, hw) \
        + tlv(NFULA.IFINDEX_INDEV, indev.to_bytes(4, "big")) + tlv(NFULA.PAYLOAD, payload)
    head = b"".join(v.to_bytes(4, order) for v in (ts, 0, len(body), len(body)))
    return head + body


def test_the_map_round_trips_and_skips_names_linux_cannot_have() -> None:
    names = {1: "lo", 7: "veth-a=b,c", 9: "has space", 10: "a" * 16, 11: "x/y", 12: ".."}
    comment = encode_ifnames(names)
    assert comment == f"{IFNAMES_COMMENT_PREFIX} 1=lo 7=veth-a=b,c"
    assert decode_ifnames(comment) == {1: "lo", 7: "veth-a=b,c"}


@pytest.mark.parametrize("comment, expected", [
    ("ts synthesized", None),
    ("timestamp synthesized (no NFULA_TIMESTAMP)", None),  # what files of 0.1 say
    (IFNAMES_COMMENT_PREFIX, {}),
    (f"{IFNAMES_COMMENT_PREFIX} 3=eth0 junk =x 4= -1=y 99999999999=z 5=\x1b[31m", {3: "eth0"}),
])
def test_foreign_comments_are_not_maps_and_bad_entries_are_skipped(
        comment: str, expected: dict[int, str] | None) -> None:
    assert decode_ifnames(comment) == expected


def test_pcapng_names_come_from_the_file_and_pcap_names_stay_unknown(tmp_path: Path) -> None:
    records = nflog_record(7) + nflog_record(1)
    ng, pcap = tmp_path / "n.pcapng", tmp_path / "p.pcap"
    with open_writer(ng, interface_names=lambda: {1: "lo", 7: "captured7"}) as w:
        w.write_records(records, 2)
    with open_writer(pcap) as w:
        w.write_records(records, 2)
    assert [p.indev_name for p in read_capture(ng)] == ["captured7", "lo"]
    assert [(p.indev, p.indev_name) for p in read_capture(pcap)] == [(7, None), (1, None)]


def test_a_caller_resolver_only_fills_what_the_file_does_not_name(tmp_path: Path) -> None:
    path = tmp_path / "n.pcapng"
    with open_writer(path, interface_names=lambda: {7: "captured7"}) as w:
        w.write_records(nflog_record(7) + nflog_record(8), 2)
    got = read_capture(path, ifname_resolver=lambda i: f"guess{i}")
    assert [p.indev_name for p in got] == ["captured7", "guess8"]


def test_every_rotated_file_carries_the_map_of_its_own_start(tmp_path: Path) -> None:
    calls: list[int] = []

    def names() -> dict[int, str]:
        calls.append(1)
        return {7: f"gen{len(calls)}"}

    with open_writer(tmp_path / "r.pcapng", rotate_bytes=1, rotate_count=10,
                     interface_names=names) as w:
        for _ in range(3):
            w.write_records(nflog_record(7), 1)
        files = list(w.files)
    assert len(files) == 3
    got = [[p.indev_name for p in read_capture(f)] for f in files]
    assert got == [["gen1"], ["gen2"], ["gen3"]]


def test_a_failing_name_source_leaves_the_map_out(tmp_path: Path) -> None:
    def gone() -> dict[int, str]:
        raise FileNotFoundError("namespace deleted")

    path = tmp_path / "n.pcapng"
    with open_writer(path, interface_names=gone) as w:
        w.write_records(nflog_record(7), 1)
    assert [p.indev_name for p in read_capture(path)] == [None]


def test_tshark_reads_a_file_with_the_map(tmp_path: Path) -> None:
    require_tool("tshark", "tshark")
    path = tmp_path / "n.pcapng"
    with open_writer(path, interface_names=lambda: {7: "captured7"}) as w:
        w.write_records(nflog_record(7), 1)
    r = subprocess.run(["tshark", "-r", str(path), "-T", "fields", "-e", "nflog.ifindex_indev"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["7"]


@pytest.mark.privileged
@pytest.mark.parametrize("fmt", ["pcapng", "pcap"])
def test_read_names_interfaces_as_the_capturing_namespace_had_them(
        netns: str, tmp_path: Path, fmt: str) -> None:
    dev = "nm" + os.urandom(4).hex()  # exists only in the test's namespace
    nstools.run(["ip", "link", "add", dev, "type", "veth", "peer", "name", dev + "p"], ns=netns)
    nstools.run(["ip", "addr", "add", "198.51.100.1/24", "dev", dev], ns=netns)
    for link in (dev, dev + "p"):
        nstools.run(["ip", "link", "set", link, "up"], ns=netns)
    nstools.run(["ip", "neigh", "add", "198.51.100.2", "lladdr", "02:00:00:00:00:02", "dev",
                 dev], ns=netns)
    nstools.run(["iptables", "-A", "OUTPUT", "-o", dev, "-p", "udp", "--dport", "7400", "-j",
                 "NFLOG", "--nflog-group", "74"], ns=netns)
    index = int(nstools.run(["cat", f"/sys/class/net/{dev}/ifindex"], ns=netns).stdout)
    out = tmp_path / f"names.{fmt}"
    proc = start("capture", "--netns", netns, "-g", "74", "-w", str(out), "-c", "3", "-q")
    wait_bound(netns, 74, proc)
    s = nstools.ns_socket(netns)
    try:
        for i in range(3):
            s.sendto(b"n%d" % i, ("198.51.100.2", 7400))
    finally:
        s.close()
    code, _, err = finish(proc)
    assert code == 0, err
    r = subprocess.run(argv("read", str(out)), capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 3
    want = dev if fmt == "pcapng" else f"if{index}"
    assert all(want in line for line in lines), r.stdout
    with pytest.raises(OSError):  # the name really is unknown on the reading host
        socket.if_nametoindex(dev)
