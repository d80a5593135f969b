"""The capture core against a real kernel: namespaces, NFLOG rules, exact delivery, drops,
errors. Privileged: these fail instead of skipping when IPSEC_NFLOG_REQUIRE_PRIVILEGED=1."""

from __future__ import annotations

import asyncio
import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ipsec_nflog import Capture, GroupBusyError
from ipsec_nflog.capture.config import recv_buffer_size
from tests.conftest import VethPair, require_tool
from tests.support import nstools

pytestmark = pytest.mark.privileged


def nflog_rule(ns: str, chain: str, port: int, group: int, *, prefix: str | None = None,
               v6: bool = False, extra: tuple[str, ...] = ()) -> None:
    argv = ["ip6tables" if v6 else "iptables", "-A", chain, "-p", "udp", "--dport", str(port),
            "-j", "NFLOG", "--nflog-group", str(group), *extra]
    if prefix is not None:
        argv += ["--nflog-prefix", prefix]
    nstools.run(argv, ns=ns)


def send_udp(ns: str, dst: str, port: int, payloads: list[bytes]) -> None:
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    s = nstools.ns_socket(ns, fam)
    try:
        for p in payloads:
            s.sendto(p, (dst, port))
    finally:
        s.close()


def wait_received(cap: Capture, n: int, timeout: float = 10.0) -> None:
    """Until the kernel has handed over (or declared lost) n packets."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = cap.stats()
        if st.received_packets + st.seq_gap_packets >= n:
            return
        time.sleep(0.02)


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_exact_delivery_both_directions(veth_pair: VethPair, v6: bool) -> None:
    a, b = veth_pair.a, veth_pair.b
    dst = veth_pair.b6 if v6 else veth_pair.b4
    nflog_rule(a, "OUTPUT", 5001, 10, prefix="out-a", v6=v6)
    nflog_rule(b, "INPUT", 5001, 11, prefix="in-b", v6=v6)
    n = 300
    payloads = [b"pkt-%05d-" % i + os.urandom(8) for i in range(n)]
    with Capture(groups=[10], netns=a) as out_cap, Capture(groups=[11], netns=b) as in_cap:
        send_udp(a, dst, 5001, payloads)
        outs = list(out_cap.packets(count=n, timeout=10))
        ins = list(in_cap.packets(count=n, timeout=10))
        out_stats, in_stats = out_cap.stats(), in_cap.stats()
    for got, group, prefix, hook in ((outs, 10, "out-a", "OUTPUT"), (ins, 11, "in-b", "INPUT")):
        assert len(got) == n
        assert [p.ip.data.data for p in got] == payloads
        assert {p.group for p in got} == {group}
        assert {p.prefix for p in got} == {prefix}
        assert {p.hook_name for p in got} == {hook}
        assert {p.family for p in got} == {socket.AF_INET6 if v6 else socket.AF_INET}
        assert [p.seq for p in got] == list(range(n))
    assert {(p.indev, p.outdev) for p in outs} == {(None, veth_pair.a_ifindex)}
    assert {(p.indev, p.outdev) for p in ins} == {(veth_pair.b_ifindex, None)}
    assert {p.outdev_name for p in outs} == {"veth0"}  # resolved inside the capture's netns
    assert all(p.timestamp_synthesized for p in outs)
    assert not any(p.timestamp_synthesized for p in ins)
    for st in (out_stats, in_stats):
        assert st.delivered_packets == n and st.dropped == 0 and not st.lossy
    assert out_stats.groups[10].timestamps_synthesized == n
    assert in_stats.groups[11].timestamps_synthesized == 0


def test_two_groups_in_one_capture(netns: str) -> None:
    nflog_rule(netns, "OUTPUT", 6001, 21, prefix="g21")
    nflog_rule(netns, "OUTPUT", 6002, 22, prefix="g22")
    nflog_rule(netns, "OUTPUT", 6003, 22, prefix="g22b")
    with Capture(groups=[21, 22], netns=netns) as cap:
        send_udp(netns, "127.0.0.1", 6001, [b"a"] * 50)
        send_udp(netns, "127.0.0.1", 6002, [b"b"] * 70)
        send_udp(netns, "127.0.0.1", 6003, [b"c"] * 30)
        got = list(cap.packets(count=150, timeout=10))
        st = cap.stats()
    by_group: dict[int, list[str | None]] = {21: [], 22: []}
    for p in got:
        by_group[p.group].append(p.prefix)
    assert by_group[21] == ["g21"] * 50
    assert sorted(by_group[22]) == ["g22"] * 70 + ["g22b"] * 30  # type: ignore[type-var]
    assert st.groups[21].delivered_packets == 50 and st.groups[22].delivered_packets == 100
    assert st.groups[21].received_packets == 50 and st.groups[22].received_packets == 100


def test_snaplen_truncates_and_keeps_orig_len(netns: str) -> None:
    nflog_rule(netns, "OUTPUT", 6100, 30)
    with Capture(groups=[30], netns=netns, snaplen=40) as cap:
        send_udp(netns, "127.0.0.1", 6100, [b"z" * 500])
        (p,) = list(cap.packets(count=1, timeout=5))
    assert p.payload is not None and len(p.payload) == 40
    assert p.orig_len == len(p.raw) + (28 + 500 - 40)


def test_honest_drop_accounting_with_tiny_ring(netns: str) -> None:
    """A stalled consumer and the smallest ring allowed: every packet is delivered or counted."""
    nflog_rule(netns, "OUTPUT", 6200, 31)
    n = 4000
    with Capture(groups=[31], netns=netns, nlbufsiz=4096,
                 ring_size=recv_buffer_size(4096)) as cap:
        send_udp(netns, "127.0.0.1", 6200, [b"y" * 200] * n)
        wait_received(cap, n)
        delivered = sum(1 for _ in cap.packets(timeout=1.0))
        st = cap.stats()
    g = st.groups[31]
    assert g.ring_drop_packets > 0, "the ring should have overflowed"
    assert delivered == g.delivered_packets
    assert delivered + g.ring_drop_packets + g.seq_gap_packets == n
    assert st.dropped == g.ring_drop_packets + g.seq_gap_packets
    assert "ring full" in st.drop_summary()


def test_group_busy_names_tcpdump(netns: str) -> None:
    require_tool("tcpdump", "tcpdump")
    proc = subprocess.Popen(["ip", "netns", "exec", netns, "tcpdump", "-i", "nflog:40", "-w",
                             "/dev/null"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        from ipsec_nflog.system.procinfo import group_bindings

        deadline = time.monotonic() + 10
        while not any(b.group == 40 for b in group_bindings(netns)):
            assert time.monotonic() < deadline, "tcpdump never bound nflog:40"
            time.sleep(0.05)
        with pytest.raises(GroupBusyError) as ei:
            Capture(groups=[40], netns=netns)
        assert ei.value.holder_comm == "tcpdump"
        assert ei.value.holder_pid is not None
        assert "tcpdump" in str(ei.value) and "group 40" in str(ei.value)
        assert ei.value.group == 40
    finally:
        proc.terminate()
        proc.wait(10)


def test_permission_error_without_cap_net_admin(netns: str) -> None:
    require_tool("setpriv", "util-linux")
    code = (
        "from ipsec_nflog import Capture, NflogPermissionError\n"
        "try:\n"
        "    Capture(groups=[41])\n"
        "except NflogPermissionError as e:\n"
        "    assert isinstance(e, PermissionError)\n"
        "    print('EPERM:', e)\n"
    )
    r = nstools.run(["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin",
                     sys.executable, "-c", code], ns=netns, check=False)
    assert r.returncode == 0, r.stderr
    assert "CAP_NET_ADMIN" in r.stdout and "group 41" in r.stdout


def test_netns_option_leaves_caller_namespace_alone(netns: str) -> None:
    mine = os.readlink("/proc/thread-self/ns/net")
    with Capture(groups=[42], netns=netns):
        assert os.readlink("/proc/thread-self/ns/net") == mine
        from ipsec_nflog.system.procinfo import group_bindings

        assert any(b.group == 42 for b in group_bindings(netns))
        assert not any(b.group == 42 and b.pid == os.getpid() for b in group_bindings(None))
    assert not any(b.group == 42 for b in group_bindings(netns))  # closing unbinds


def test_missing_netns_is_a_clear_error() -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Capture(groups=[1], netns="ipnf-no-such-namespace")


def test_fileno_works_with_select_and_asyncio(netns: str) -> None:
    nflog_rule(netns, "OUTPUT", 6300, 43)
    with Capture(groups=[43], netns=netns, qthreshold=1, flush_timeout=0) as cap:
        r, _, _ = select.select([cap], [], [], 0.2)
        assert r == []
        send_udp(netns, "127.0.0.1", 6300, [b"sel"])
        r, _, _ = select.select([cap], [], [], 5)
        assert r == [cap]
        batch = cap.read_batch(timeout=0)
        assert batch is not None and batch.count == 1
        batch.release()
        assert cap.read_batch(timeout=0) is None
        assert select.select([cap], [], [], 0)[0] == []  # drained: no longer readable

        async def consume() -> list[bytes]:
            loop = asyncio.get_running_loop()
            got: list[bytes] = []
            ready = asyncio.Event()
            loop.add_reader(cap.fileno(), ready.set)
            try:
                send_udp(netns, "127.0.0.1", 6300, [b"a1", b"a2", b"a3"])
                while len(got) < 3:
                    await asyncio.wait_for(ready.wait(), 5)
                    ready.clear()
                    while (b := cap.read_batch(timeout=0)) is not None:
                        got += [p.ip.data.data for p in b]
            finally:
                loop.remove_reader(cap.fileno())
            return got

        assert asyncio.run(consume()) == [b"a1", b"a2", b"a3"]


def test_batch_view_dies_with_its_batch_and_its_one_copy_lives_on(netns: str) -> None:
    nflog_rule(netns, "OUTPUT", 6400, 44)
    with Capture(groups=[44], netns=netns) as cap:
        send_udp(netns, "127.0.0.1", 6400, [b"v1", b"v2"])
        wait_received(cap, 2)
        batch = cap.read_batch(timeout=5)
        assert batch is not None and batch.count == 2
        view = batch.data
        assert len(view) == batch.nbytes
        records = batch.tobytes()
        assert records == bytes(view) and batch.tobytes() is records  # made once
        packets = list(batch)
        assert all(p._run is records for p in packets)  # type: ignore[attr-defined]
        assert cap.read_batch(timeout=0) is None  # releases the first batch
        with pytest.raises(ValueError):
            view[0]
        with pytest.raises(ValueError):
            batch.tobytes()
        # the copy and its packets outlive the batch and the ring's reuse of its space
        send_udp(netns, "127.0.0.1", 6400, [b"v3"])
        assert [p.ip.data.data for p in cap.packets(count=1, timeout=5)] == [b"v3"]
        assert [p.ip.data.data for p in packets] == [b"v1", b"v2"]


def test_close_is_idempotent_and_ends_iteration(netns: str) -> None:
    cap = Capture(groups=[45], netns=netns)
    cap.close()
    cap.close()
    assert cap.closed
    assert cap.read_batch(timeout=0) is None
    assert list(cap.packets(timeout=0.1)) == []
    assert isinstance(cap.stats().groups, dict)
    with pytest.raises(ValueError):
        cap.fileno()


def test_socket_settings_are_reported(netns: str) -> None:
    with Capture(groups=[46], netns=netns, rcvbuf=8 << 20, nlbufsiz=65536) as cap:
        g = cap.stats().groups[46]
    assert g.rcvbuf >= 8 << 20  # the kernel doubles what was asked
    assert g.nlbufsiz == 65536
    assert g.portid != 0


def test_kernel_loss_shows_as_seq_gaps_enobufs_and_socket_drops(netns: str) -> None:
    """Stall the C reader with a small socket buffer: the kernel drops whole batches.
    Every lost packet is counted as a sequence gap once a later packet arrives."""
    nflog_rule(netns, "OUTPUT", 6500, 47)
    n = 3000
    with Capture(groups=[47], netns=netns, rcvbuf=64 * 1024, qthreshold=20,
                 nlbufsiz=16384) as cap:
        cap.pause_reader()
        send_udp(netns, "127.0.0.1", 6500, [b"L" * 300] * n)
        time.sleep(0.3)
        cap.pause_reader(False)
        time.sleep(0.3)  # the tail of the burst may be lost: no wait for all n
        send_udp(netns, "127.0.0.1", 6500, [b"sentinel"])  # reveals a lost tail
        delivered = sum(1 for _ in cap.packets(timeout=1.0))
        g = cap.stats().groups[47]
    assert g.seq_gap_packets > 0 and g.seq_gap_events > 0
    assert g.enobufs_events > 0
    assert g.socket_drops > 0
    assert g.ring_drop_packets == 0
    assert delivered == g.delivered_packets
    assert delivered + g.seq_gap_packets == n + 1
    assert g.lossy


def test_ring_wraps_without_reordering_or_losing_records(netns: str) -> None:
    """A small ring that wraps many times under a concurrent consumer taking runs of random
    sizes: every record arrives once, in kernel order, or is counted as a ring drop."""
    import random
    import threading

    nflog_rule(netns, "OUTPUT", 6600, 48)
    n = 20000
    rng = random.Random(7)
    seqs: list[int] = []
    with Capture(groups=[48], netns=netns, nlbufsiz=4096, ring_size=recv_buffer_size(4096),
                 qthreshold=50) as cap:
        sender = threading.Thread(target=send_udp, args=(
            netns, "127.0.0.1", 6600, [b"w" * rng.randrange(1, 400) for _ in range(n)]))
        sender.start()
        while True:
            batch = cap.read_batch(max_packets=rng.randrange(1, 300),
                                   max_bytes=rng.randrange(1, 40000), timeout=1.0)
            if batch is None:
                if not sender.is_alive():
                    break
                continue
            seqs += [p.seq for p in batch]  # type: ignore[misc]
            batch.release()
        sender.join()
        g = cap.stats().groups[48]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert len(seqs) == g.delivered_packets
    assert len(seqs) + g.ring_drop_packets + g.seq_gap_packets == n
    assert g.seq_gap_packets == 0
    missing = sorted(set(range(n)) - set(seqs))
    assert len(missing) == g.ring_drop_packets


def test_close_from_another_thread_wakes_a_blocked_reader(netns: str) -> None:
    import threading

    cap = Capture(groups=[49], netns=netns)
    result: list[object] = []
    t = threading.Thread(target=lambda: result.append(cap.read_batch(timeout=None)))
    t.start()
    time.sleep(0.3)  # the reader is blocked in C, waiting for packets
    t0 = time.monotonic()
    cap.close()
    t.join(5)
    assert not t.is_alive()
    assert result == [None]
    assert time.monotonic() - t0 < 2


def test_async_packets_let_other_tasks_run(netns: str) -> None:
    nflog_rule(netns, "OUTPUT", 6700, 50, prefix="async")

    async def main() -> tuple[list[bytes], int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        async def sender() -> None:
            for i in range(5):
                await asyncio.sleep(0.05)
                send_udp(netns, "127.0.0.1", 6700, [b"as%d" % i])

        with Capture(groups=[50], netns=netns, qthreshold=1, flush_timeout=0) as cap:
            tasks = [asyncio.create_task(ticker()), asyncio.create_task(sender())]
            got = [p.ip.data.data async for p in cap.apackets(count=5, timeout=10)]
            none = [p async for p in cap.apackets(timeout=0.2)]
            for t in tasks:
                t.cancel()
        assert none == []
        return got, ticks

    got, ticks = asyncio.run(main())
    assert got == [b"as%d" % i for i in range(5)]
    assert ticks >= 10  # the loop was never blocked while we waited for packets


def test_drain_into_writes_what_the_ring_holds(netns: str, tmp_path: Path) -> None:
    from ipsec_nflog.files.writer import open_writer, read_capture

    nflog_rule(netns, "OUTPUT", 6800, 51, prefix="drain")
    with Capture(groups=[51], netns=netns) as cap:
        send_udp(netns, "127.0.0.1", 6800, [b"d%d" % i for i in range(30)])
        cap.stop()  # waits out the kernel's flush timeout first
        with open_writer(tmp_path / "d.pcap") as w:
            assert cap.drain_into(w) == 30
        assert cap.read_batch(timeout=0) is None
    assert [p.prefix for p in read_capture(str(tmp_path / "d.pcap"))] == ["drain"] * 30
