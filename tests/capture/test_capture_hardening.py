"""The capture core against a hostile or careless consumer (issue: hardening): nothing a
consumer writes, holds or forks can crash the process, wedge the capture or lose packets
silently. Privileged: real NFLOG groups in throwaway namespaces."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from ipsec_nflog import Capture, NflogError
from ipsec_nflog.capture.config import FLUSH_TIMEOUT_MAX, CaptureConfig, recv_buffer_size
from ipsec_nflog.capture.errmap import raise_for_errno
from ipsec_nflog.errors import GroupBusyError
from tests.capture.test_capture import nflog_rule, send_udp, wait_received

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run_python(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run code in a fresh interpreter: a crash there shows as a signal, not a dead suite."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.privileged
def test_writing_into_a_batch_cannot_crash_the_process(netns: str) -> None:
    """The reproduction from the issue: a caplen written into Batch.data segfaulted
    nfc_release with two groups. The view is read-only now, and release() never reads the
    ring back."""
    code = f"""
        import struct, socket
        from ipsec_nflog import Capture
        from tests.support import nstools
        from tests.capture.test_capture import nflog_rule, send_udp
        nflog_rule({netns!r}, "OUTPUT", 7001, 61)
        nflog_rule({netns!r}, "OUTPUT", 7002, 62)
        with Capture(groups=[61, 62], netns={netns!r}) as c:
            send_udp({netns!r}, "127.0.0.1", 7001, [b"a" * 50] * 5)
            send_udp({netns!r}, "127.0.0.1", 7002, [b"b" * 50] * 5)
            b = c.read_batch(timeout=2)
            try:
                struct.pack_into("=I", b.data, 8, 0x7ffffff0)
            except TypeError as e:
                print("refused:", e)
            kept = b.data[0:16]
            b.release()
            try:
                b.data[0]
            except ValueError:
                print("dead after release")
            print("slice readonly:", kept.readonly)
            got = b.count + sum(1 for _ in c.packets(timeout=1))
            print("total", got)
    """
    r = _run_python(code)
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr}"
    assert "refused:" in r.stdout and "dead after release" in r.stdout
    assert "slice readonly: True" in r.stdout
    assert "total 10" in r.stdout


@pytest.mark.privileged
def test_fuzzing_batches_never_crashes_and_delivery_stays_exact(netns: str) -> None:
    """Random writes into Batch.data (every way Python offers), held slices and exports,
    double releases: over many batches on several groups, no crash, and every packet is
    delivered once or counted as dropped."""
    code = f"""
        import random, struct, threading
        from ipsec_nflog import Capture
        from ipsec_nflog.capture._native import ffi
        from tests.capture.test_capture import nflog_rule, send_udp
        ns = {netns!r}
        groups = [63, 64, 65]
        for i, g in enumerate(groups):
            nflog_rule(ns, "OUTPUT", 7100 + i, g)
        rng = random.Random(1234)
        n_per_group = 3000
        def send():
            for k in range(n_per_group // 100):
                for i in range(len(groups)):
                    send_udp(ns, "127.0.0.1", 7100 + i,
                             [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 120)))
                              for _ in range(100)])
        refused = kept = exports = batches = got = 0
        held = []
        with Capture(groups=groups, netns=ns, qthreshold=7) as c:
            t = threading.Thread(target=send)
            t.start()
            idle = 0
            while idle < 10:
                b = c.read_batch(max_packets=rng.randrange(1, 500), timeout=0.2)
                if b is None:
                    idle = idle + 1 if not t.is_alive() else 0
                    continue
                batches += 1
                got += b.count
                for _ in range(rng.randrange(1, 20)):
                    off = rng.randrange(max(1, b.nbytes))
                    junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
                    how = rng.randrange(4)
                    try:
                        if how == 0:
                            struct.pack_into("=I", b.data, off, rng.randrange(2**32))
                        elif how == 1:
                            b.data[off:off + len(junk)] = junk
                        elif how == 2:
                            ffi.from_buffer(b.data, require_writable=True)
                        else:
                            b.data.cast("B")[off] = junk[0]
                    except (TypeError, ValueError, BufferError, struct.error):
                        refused += 1
                if rng.random() < 0.3:
                    held.append(b.data[: rng.randrange(max(1, b.nbytes))])
                    kept += 1
                export = ffi.from_buffer(b.data) if rng.random() < 0.2 else None
                try:
                    b.release()
                except BufferError:
                    exports += 1
                del export
                b.release()
                try:
                    list(b)  # a released batch: a clear error, no crash
                except ValueError:
                    pass
            t.join()
            st = c.stats()
        lost = sum(g.ring_drop_packets + g.seq_gap_packets for g in st.groups.values())
        print("batches", batches, "refused", refused, "held", kept, "exports", exports)
        print("delivered", got, st.delivered_packets, "lost", lost)
        assert got == st.delivered_packets
        assert got + lost == n_per_group * len(groups), (got, lost)
        print("OK")
    """
    r = _run_python(code, timeout=120)
    assert r.returncode == 0, f"exit {r.returncode}: {r.stdout}{r.stderr}"
    assert "OK" in r.stdout
    line = next(x for x in r.stdout.splitlines() if x.startswith("batches"))
    fields = line.split()
    assert int(fields[1]) > 20 and int(fields[3]) > 0  # many batches, every write refused


@pytest.mark.privileged
def test_a_forked_child_does_not_stop_the_parents_capture(netns: str) -> None:
    nflog_rule(netns, "OUTPUT", 7201, 66)
    with Capture(groups=[66], netns=netns) as cap:
        pid = os.fork()
        if pid == 0:  # child: using the capture fails clearly; closing it is harmless
            code = 1
            try:
                try:
                    cap.read_batch(timeout=0)
                except NflogError as e:
                    code = 0 if e.errno == errno.ECHILD and "forked child" in str(e) else 2
                cap.close()  # the old finalizer wrote the shared stop eventfd here
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        send_udp(netns, "127.0.0.1", 7201, [b"after fork"] * 100)
        got = list(cap.packets(count=100, timeout=5))
        st = cap.stats()
    assert len(got) == 100
    assert st.dropped == 0


@pytest.mark.privileged
def test_a_held_export_or_a_second_thread_leaves_the_capture_usable(netns: str) -> None:
    from ipsec_nflog.capture._native import ffi

    nflog_rule(netns, "OUTPUT", 7301, 67)
    with Capture(groups=[67], netns=netns, qthreshold=1) as cap:
        send_udp(netns, "127.0.0.1", 7301, [b"x" * 10] * 10)
        wait_received(cap, 10)
        b = cap.read_batch(timeout=2)
        assert b is not None
        export = ffi.from_buffer(b.data)
        with pytest.raises(BufferError, match="export"):
            b.release()
        del export
        first = b.count
        # The capture goes on: no false "already bound", nothing wedged.
        send_udp(netns, "127.0.0.1", 7301, [b"y" * 10] * 10)
        rest = sum(1 for _ in cap.packets(count=20 - first, timeout=5))
        assert first + rest == 20
        # A second thread's read_batch releases the first thread's batch (held export).
        send_udp(netns, "127.0.0.1", 7301, [b"z" * 10] * 10)
        wait_received(cap, 30)
        b1 = cap.read_batch(max_packets=3, timeout=2)
        assert b1 is not None
        held = ffi.from_buffer(b1.data)
        errors: list[BaseException] = []

        def other() -> None:
            try:
                cap.read_batch(timeout=0)
            except BaseException as e:
                errors.append(e)

        t = threading.Thread(target=other)
        t.start()
        t.join()
        del held
        assert all(isinstance(e, BufferError) for e in errors), errors
        assert sum(1 for _ in cap.packets(timeout=0.5)) >= 0
        st = cap.stats()
    assert st.received_packets == 30 and st.dropped == 0
    assert st.delivered_packets + st.pending_packets <= 30


def test_busy_means_bound_only() -> None:
    """EBUSY/EALREADY from consumer calls name the call, never a bound group."""
    for err in (errno.EBUSY, errno.EALREADY):
        with pytest.raises(NflogError) as info:
            raise_for_errno(-err, "read a batch")
        assert not isinstance(info.value, GroupBusyError)
        assert "already bound" not in str(info.value)
        assert "read a batch" in str(info.value)


@pytest.mark.privileged
def test_stop_flushes_the_kernel_queue_at_once(netns: str) -> None:
    """With the longest flush timeout and a queue threshold never reached, the kernel holds
    every packet; stop() unbinds, which flushes them, and returns at once."""
    nflog_rule(netns, "OUTPUT", 7401, 68)
    with Capture(groups=[68], netns=netns, qthreshold=100000,
                 flush_timeout=FLUSH_TIMEOUT_MAX) as cap:
        send_udp(netns, "127.0.0.1", 7401, [b"tail"] * 50)
        time.sleep(0.2)
        assert cap.stats().received_packets == 0, "the kernel should still hold them"
        t0 = time.monotonic()
        cap.stop()
        took = time.monotonic() - t0
        got = sum(1 for _ in cap.packets(timeout=0))
    assert got == 50
    assert took < 1.0, f"stop() took {took:.2f} s"


@pytest.mark.privileged
def test_stop_wait_is_interruptible(netns: str) -> None:
    nflog_rule(netns, "OUTPUT", 7501, 69)
    with Capture(groups=[69], netns=netns) as cap:
        cap.pause_reader()  # the flush can never be read: only `interrupted` ends the wait
        t0 = time.monotonic()
        calls: list[int] = []

        def interrupted() -> bool:
            calls.append(1)
            return len(calls) > 2

        cap.stop(drain=30, interrupted=interrupted)
        assert time.monotonic() - t0 < 1.0
        assert cap.closed is False


@pytest.mark.parametrize("options", [
    {"flush_timeout": FLUSH_TIMEOUT_MAX + 1}, {"flush_timeout": 42949672},
    {"ring_size": 64 * 1024}, {"ring_size": recv_buffer_size(131072) - 1},
    {"nlbufsiz": 4096, "ring_size": recv_buffer_size(4096) - 16},
])
def test_config_refuses_useless_flush_timeouts_and_rings(options: dict[str, int]) -> None:
    with pytest.raises(ValueError) as info:
        CaptureConfig(groups=(5,), **options)  # type: ignore[arg-type]
    key = next(iter(options)) if "ring_size" not in options else "ring_size"
    assert key in str(info.value)


def test_config_accepts_the_smallest_ring() -> None:
    assert CaptureConfig(groups=(5,), nlbufsiz=4096,
                         ring_size=recv_buffer_size(4096)).ring_size == recv_buffer_size(4096)


@pytest.mark.requires_core
def test_shared_constants_match_the_compiled_core() -> None:
    from ipsec_nflog.capture import config
    from ipsec_nflog.capture._native import lib

    assert (config.NLBUFSIZ_MIN, config.NLBUFSIZ_MAX, config.MAX_GROUPS) == (
        lib.NFC_NLBUFSIZ_MIN, lib.NFC_NLBUFSIZ_MAX, lib.NFC_MAX_GROUPS)
    for n in (4096, 65536, 131072):
        assert lib.nfc_recv_buffer_size(n) == recv_buffer_size(n)


@pytest.mark.parametrize("argv,needle", [
    (["--flush-timeout", "20"], "flush_timeout"),
    (["--ring-size", "64K"], "ring_size"),
])
def test_cli_refuses_them_in_one_line(argv: list[str], needle: str) -> None:
    r = subprocess.run([sys.executable, "-m", "ipsec_nflog", "capture", "-g", "5", *argv],
                       cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr
