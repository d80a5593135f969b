"""The ``ipsec-nflog`` command (also ``python -m ipsec_nflog``).

Errors are one line on stderr and exit status 2 (1 for runtime failures), never a
traceback unless ``--debug``.
"""

from __future__ import annotations

import argparse
import math
import os
import pwd
import re
import signal
import stat
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TextIO

from ipsec_nflog._version import __version__
from ipsec_nflog.system.signals import (
    STOP_SIGNALS,
    StopSignals,
    die_with_parent,
    held,
    stop_signals,
)

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_DROPS = 0, 1, 2, 3
FILE_RING_SIZE = 256 * 1024 * 1024  # capture -w: rides out writeback stalls


class CliError(Exception):
    """A user-facing failure: printed as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        from ipsec_nflog.nflog.summary import printable  # the message quotes argv

        self.exit(EXIT_USAGE, f"ipsec-nflog: error: {printable(message)} (see --help)\n")


# ---------------------------------------------------------------------------- helpers --

def _group_arg(text: str) -> list[int]:
    """``5``, ``nflog:5`` or ``nflog:5,6`` -> [5] / [5, 6]."""
    body = text[len("nflog:"):] if text.startswith("nflog:") else text
    out = []
    for part in body.split(","):
        if not re.fullmatch(r"\d{1,5}", part) or int(part) > 65535:
            raise argparse.ArgumentTypeError(
                f"invalid NFLOG group {text!r}: expected 0..65535 or nflog:N")
        out.append(int(part))
    return out


def _size_arg(text: str) -> int:
    m = re.fullmatch(r"(\d+)([kKmMgG]?)(i?[bB]?)", text)
    if not m:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (e.g. 64M, 131072)")
    mult = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[m.group(2).lower()]
    return int(m.group(1)) * mult


def _seconds(text: str, *, zero_ok: bool) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not zero_ok):
        need = "a finite number >= 0" if zero_ok else "a finite number > 0"
        raise argparse.ArgumentTypeError(f"must be {need} of seconds, not {text!r}")
    return v


def _positive_float(text: str) -> float:
    """Seconds > 0 (``--duration``): 0, negative, nan and inf are refused."""
    return _seconds(text, zero_ok=False)


def _non_negative_float(text: str) -> float:
    """Seconds >= 0 (``--flush-timeout``: 0 is the kernel's "flush at once")."""
    return _seconds(text, zero_ok=True)


def _path_arg(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("the file name is empty ('-' is standard input or "
                                         "output)")
    return text


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer: {text!r}")
    return int(text)


class StatusLine:
    """A live line on a terminal: rates and drops, redrawn at most twice a second."""

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream, self.enabled = stream, enabled
        self.t0 = self.last_t = time.monotonic()
        self.last_pkts = self.last_bytes = 0
        self.shown = False

    def update(self, stats: Any, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last_t < 0.5):
            return
        dt = max(now - self.last_t, 1e-6)
        pkts, nbytes = stats.received_packets, stats._sum("received_bytes")
        pps = (pkts - self.last_pkts) / dt
        mbs = (nbytes - self.last_bytes) / dt / 1e6
        self.last_t, self.last_pkts, self.last_bytes = now, pkts, nbytes
        line = (f"{pkts} pkts  {pps:,.0f} pkt/s  {mbs:.1f} MB/s  "
                f"drops: {stats.drop_summary()}")
        self.stream.write("\r\x1b[K" + line)
        self.stream.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def lookup_user(user: str) -> pwd.struct_passwd:
    """-Z USER's passwd entry, or one clear line (checked before anything is created)."""
    try:
        return pwd.getpwnam(user)
    except (KeyError, ValueError):  # ValueError: an embedded NUL
        raise CliError(f"-Z: no such user {user!r}") from None


def drop_privileges(pw: pwd.struct_passwd) -> None:
    """setgroups/setgid/setuid to ``pw``; from root this also clears every capability."""
    os.setgroups([])
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)
    if os.getuid() != pw.pw_uid or os.geteuid() != pw.pw_uid:
        raise CliError(f"-Z: could not become {pw.pw_name!r}")


# ---------------------------------------------------------------------------- capture --

def _rules_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kw: dict[str, Any] = {"prefix": args.prefix, "family": args.family}
    for name in ("reqid", "spi", "proto", "mode", "tunnel_src", "tunnel_dst", "interface",
                 "backend"):
        v = getattr(args, name, None)
        if v is not None:
            kw[name] = v
    if getattr(args, "nflog_threshold", None) is not None:
        kw["threshold"] = args.nflog_threshold
    if args.strict:
        kw["strict"] = True
    if args.ike_port:
        kw["ike_ports"] = tuple(args.ike_port)
    return kw


def cmd_capture(args: argparse.Namespace) -> int:
    # First of all: from here on SIGINT, SIGTERM and SIGHUP only ask for a stop, whatever
    # the inherited dispositions, so one may land anywhere below and leave nothing behind.
    with stop_signals() as stop:
        return _capture(args, stop)


def _capture(args: argparse.Namespace, stop: StopSignals) -> int:
    from ipsec_nflog.capture.live import Capture

    config = _capture_config(args)
    user = lookup_user(args.user) if args.user else None
    if args.write and args.write != "-":
        _check_output_path(args)
    if stop:
        return _stopped_early(args, stop)
    if args.rules and user is not None:
        return _capture_with_privileged_parent(args, config, stop, user)
    handle = _install_rules(args, config.groups[0]) if args.rules else None
    try:
        if stop:  # it came while the rules went in
            return _stopped_early(args, stop)
        with Capture(config=config) as cap:
            return _capture_loop(args, cap, stop, user)
    finally:
        if handle is not None:
            _remove_rules(args, handle)


def _capture_config(args: argparse.Namespace) -> Any:
    from ipsec_nflog.capture.config import CaptureConfig

    groups = [g for gs in (args.group or []) for g in gs]
    if not groups:
        raise CliError("no NFLOG group given: use -g N or -i nflog:N")
    opts: dict[str, Any] = {"snaplen": args.snaplen, "netns": args.netns}
    for name in ("qthreshold", "nlbufsiz", "rcvbuf", "ring_size"):
        if getattr(args, name) is not None:
            opts[name] = getattr(args, name)
    if args.flush_timeout is not None:
        opts["flush_timeout"] = args.flush_timeout
    if args.ring_size is None and args.write:
        # A disk that stalls under writeback must not overflow the ring: the socket buffer
        # sits idle while the reader drains it, so the ring is the only slack. Pages are
        # touched only when a burst needs them.
        opts["ring_size"] = FILE_RING_SIZE
    try:
        return (CaptureConfig.low_latency(groups, **opts) if args.low_latency
                else CaptureConfig(groups=tuple(groups), **opts))
    except ValueError as e:
        raise CliError(str(e)) from None


def _check_output_path(args: argparse.Namespace) -> None:
    """One clear line for a -w path that cannot work, before any rule or socket exists.
    (The writer checks again as it creates the file; this only says it early.)"""
    path = args.write
    rotating = bool(args.file_size or args.rotate_seconds)  # the first name may differ
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        parent = os.path.dirname(path) or "."
        if not (args.rotate_seconds and "%" in parent) and not os.path.isdir(parent):
            raise CliError(f"cannot write {path}: No such directory {parent}") from None
        return
    except OSError as e:
        raise CliError(f"cannot write {path}: {e.strerror}") from None
    if rotating:
        return
    if stat.S_ISLNK(st.st_mode):
        raise CliError(f"{path} is a symbolic link; not following it (remove it, or name "
                       f"the file it points to)")
    if not args.overwrite:
        raise CliError(f"{path} already exists (--overwrite replaces it)")


def _stopped_early(args: argparse.Namespace, stop: StopSignals) -> int:
    if not args.quiet:
        print(f"ipsec-nflog: stopped by {stop.name} before the capture started",
              file=sys.stderr)
    return EXIT_OK


def _install_rules(args: argparse.Namespace, group: int) -> Any:
    from ipsec_nflog import rules

    # With a StopSignals active, lifecycle installs no signal handler of its own and holds
    # the signals until the rules are registered: a signal then only sets our stop flag.
    handle = rules.install(args.rules, group=group, netns=args.netns, **_rules_kwargs(args))
    if not args.quiet:
        print(f"installed {args.rules} rules for group {group} ({handle.backend})",
              file=sys.stderr)
    return handle


def _remove_rules(args: argparse.Namespace, handle: Any) -> None:
    from ipsec_nflog.rules.lifecycle import NetnsGoneError

    try:
        handle.remove()
    except NetnsGoneError as e:  # nothing to clean up: say so instead of advising cleanup
        print(f"ipsec-nflog: {e}", file=sys.stderr)
        return
    if not args.quiet:
        print(f"removed {args.rules} rules", file=sys.stderr)


def _capture_with_privileged_parent(args: argparse.Namespace, config: Any,
                                    stop: StopSignals, user: pwd.struct_passwd) -> int:
    """-Z with --rules: a small root parent installs the rules and forks the capture, which
    drops privileges and dies with the parent. The parent passes INT/TERM/HUP on to it and
    removes the rules when it ends, however it ends."""
    handle = _install_rules(args, config.groups[0])
    try:
        with held():  # a signal waits until the child exists and the forwarder is in place
            if stop:
                return _stopped_early(args, stop)
            parent, seen = os.getpid(), stop.count
            pid = os.fork()  # the child closes its copy of the nft owner socket at once
            if pid == 0:
                _capture_child(args, config, stop, user, parent)
            stop.forward_to(lambda signum: _forward_signal(pid, signum))
            if stop.count > seen and stop.signum is not None:  # handled just before fork
                _forward_signal(pid, stop.signum)
        return _wait_child(pid, stop)
    finally:
        stop.forward_to(None)
        _remove_rules(args, handle)


def _capture_child(args: argparse.Namespace, config: Any, stop: StopSignals,
                   user: pwd.struct_passwd, parent: int) -> NoReturn:
    from ipsec_nflog.capture.live import Capture
    from ipsec_nflog.nflog.summary import printable

    code = EXIT_FAIL
    try:
        die_with_parent(parent)  # as root until the drop, which clears it: set again there
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        with Capture(config=config) as cap:
            code = _capture_loop(args, cap, stop, user, parent)
    except BaseException as e:
        print(f"ipsec-nflog: {printable(str(e) or type(e).__name__)}", file=sys.stderr)
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except OSError:
                pass
        os._exit(code)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _forward_signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass  # it has ended: waitpid reports how


def _wait_child(pid: int, stop: StopSignals) -> int:
    """The capture child's exit code. A signal to us meanwhile runs the forwarder, and
    waitpid resumes after it (PEP 475)."""
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return EXIT_FAIL
    finally:
        stop.forward_to(None)  # its pid may be reused from here on
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        print(f"ipsec-nflog: the capture process died from {_signal_name(sig)}",
              file=sys.stderr)
        return EXIT_FAIL
    return os.waitstatus_to_exitcode(status)


def _open_output(args: argparse.Namespace, cap: Any) -> Any:
    from ipsec_nflog.files.writer import default_format, open_writer

    fmt = "pcapng" if args.pcapng else "raw" if args.raw else "pcap" if args.pcap else None
    extra: dict[str, Any] = {}
    if (fmt or default_format(args.write)) == "pcapng":
        extra = {"groups": cap.config.groups, "stats_source": cap.stats}
    to_stdout = args.write == "-"  # like tcpdump -w -: pipe into wireshark -k -i -
    if to_stdout and (args.file_size or args.rotate_seconds):
        raise CliError("-w - cannot rotate (-C/-G)")
    # Standard output is written through its descriptor: "/dev/stdout" is a symlink, which
    # the writer never follows, and what it points to is not ours to chown.
    return open_writer(
        sys.stdout.fileno() if to_stdout else args.write, format=fmt,
        overwrite=args.overwrite,
        flush_every_batch=args.packet_buffered,
        rotate_bytes=args.file_size * 1_000_000 if args.file_size else None,
        rotate_seconds=args.rotate_seconds, rotate_count=args.file_count, **extra,
    )


def _capture_loop(args: argparse.Namespace, cap: Any, stop: StopSignals,
                  user: pwd.struct_passwd | None = None, parent: int | None = None) -> int:
    """Read until ``stop`` (a signal), -c or --duration; drain; close. ``parent``: the pid
    of the root parent under -Z --rules, whose death must end this process too."""
    from ipsec_nflog.nflog.summary import summarize

    writer = _open_output(args, cap) if args.write else None
    if user is not None:
        _become(user, writer, parent)
    status = StatusLine(sys.stderr, sys.stderr.isatty() and not args.quiet and bool(writer))
    deadline = time.monotonic() + args.duration if args.duration else None
    left = args.count
    error: BaseException | None = None
    try:
        while not stop and (left is None or left > 0):
            if deadline is not None and time.monotonic() >= deadline:
                break
            batch = cap.read_batch(max_packets=min(left or 65536, 65536), timeout=0.25)
            if batch is not None:
                left = None if left is None else left - batch.count
                _emit(batch, writer, summarize)
            elif writer is not None:
                writer.flush_if_due()
            if status.enabled:
                status.update(cap.stats())
        # Let the kernel flush its queue, then take what is left in the ring. Stopped by a
        # signal, a repeat of it cuts the wait short; otherwise any signal does.
        if left is None or left > 0:
            by_signal = bool(stop)
            cap.stop(interrupted=lambda: stop.hurried if by_signal else bool(stop))
            while (left is None or left > 0) and (
                    batch := cap.read_batch(max_packets=min(left or 65536, 65536),
                                            timeout=0)) is not None:
                left = None if left is None else left - batch.count
                _emit(batch, writer, summarize)
    except OSError as e:
        error = e
    finally:
        stats = cap.stats()
        status.clear()
        if writer is not None:
            try:
                writer.close(stats=stats)
            except OSError as e:
                error = error or e
    _summary(args, stats, writer, error, stop.signum)
    if error is not None:
        return EXIT_FAIL
    if args.fail_on_drop and stats.lossy:
        return EXIT_DROPS
    return EXIT_OK


def _become(user: pwd.struct_passwd, writer: Any, parent: int | None) -> None:
    """-Z: hand the output file to ``user`` and become it; under a root parent, die with it."""
    if writer is not None and writer.created:  # never chown what this run did not create
        os.fchown(writer.fileno(), user.pw_uid, user.pw_gid)
    drop_privileges(user)
    if parent is not None:
        die_with_parent(parent)  # setuid cleared the first setting


def _emit(batch: Any, writer: Any, summarize: Callable[..., str]) -> None:
    if writer is not None:
        writer.write_records(batch.data, batch.count)
        batch.release()
        return
    lines = [summarize(p) for p in batch]
    batch.release()
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()


def _summary(args: argparse.Namespace, stats: Any, writer: Any, error: BaseException | None,
             signum: int | None) -> None:
    from ipsec_nflog.nflog.summary import printable

    lost = writer.records_lost if writer is not None else 0
    if args.quiet and error is None and not lost:
        return
    err = sys.stderr
    why = f" (stopped by {signal.Signals(signum).name})" if signum else ""
    done = (f"{writer.records_written} written" if writer is not None
            else f"{stats.delivered_packets} shown")
    if lost:
        done += f", {lost} lost (taken from the ring, but the output did not take them)"
    print(f"{stats.received_packets} packets received, {done}{why}", file=err)
    for g, s in sorted(stats.groups.items()):
        print(f"  nflog:{g}: received {s.received_packets}, delivered {s.delivered_packets}, "
              f"kernel loss (seq gaps) {s.seq_gap_packets}, ENOBUFS overruns "
              f"{s.enobufs_events}, socket drops {s.socket_drops}, ring full "
              f"{s.ring_drop_packets}", file=err)
    if stats.pending_packets:
        print(f"  {stats.pending_packets} packets were still in the ring at exit", file=err)
    if stats.lossy:
        print(f"WARNING: packets were lost: {stats.drop_summary()}", file=err)
    if lost:
        print(f"WARNING: {lost} records were lost writing the output", file=err)
    if writer is not None:
        files = writer.files or [args.write]
        print(printable(f"files: {', '.join(str(f) for f in files)}"), file=err)
    if error is not None:
        target = writer.files[-1] if writer.files else args.write
        kept = ("" if writer is None else
                f"; standard output got {writer.records_written} complete records"
                if args.write == "-" else
                f"; {target} keeps {writer.records_written} complete records")
        print(printable(f"ipsec-nflog: capture stopped: {error}{kept}"), file=err)


# ------------------------------------------------------------------------------- read --

def cmd_read(args: argparse.Namespace) -> int:
    """``read FILE`` (``-``: standard input, never seeked): one line per packet; every
    string from the file or a key log is printed through ``summary.printable``."""
    from ipsec_nflog.files.writer import read_capture
    from ipsec_nflog.nflog.packet import hook_name
    from ipsec_nflog.nflog.summary import printable, summarize

    keys_dir = getattr(args, "keys", None)
    logs = getattr(args, "log", None) or []
    write_decrypted = getattr(args, "write_decrypted", None)
    decryptor: Any = None
    writer: Any = None
    if keys_dir or logs:
        from ipsec_nflog.ipsec import decrypt

        try:
            decryptor = decrypt.EspDecryptor.from_files(esp_sa=keys_dir, logs=logs,
                                                         skip_unsupported=True)
        except OSError as e:
            raise CliError(f"cannot read keys from {e.filename or keys_dir}: "
                           f"{e.strerror or e}") from None
        for w in decryptor.warnings:
            print(printable(f"ipsec-nflog: warning: {w}"), file=sys.stderr)
        if not len(decryptor):
            raise CliError("no usable ESP keys in " + ", ".join([*([keys_dir] if keys_dir
                                                                  else []), *logs]))
    elif write_decrypted:
        raise CliError("--write-decrypted needs --keys DIR or --log FILE")
    if args.file == "-" and "-" in logs:
        raise CliError("read - and --log - cannot both read standard input")
    if write_decrypted:
        try:
            writer = decrypt.DecryptedWriter(write_decrypted,
                                             overwrite=getattr(args, "overwrite", False))
        except FileExistsError:
            raise CliError(f"{write_decrypted} already exists (--overwrite replaces it)"
                           ) from None

    shown = written = 0
    out = sys.stdout
    try:
        for pkt in read_capture(sys.stdin.buffer if args.file == "-" else args.file):
            if args.group is not None and getattr(pkt, "group", None) not in args.group:
                continue
            if args.prefix is not None and getattr(pkt, "prefix", None) != args.prefix:
                continue
            if args.hook is not None and hook_name(getattr(pkt, "family", 0),
                                                   getattr(pkt, "hook", None)) != args.hook:
                continue
            line = summarize(pkt, utc=args.utc)
            if decryptor is not None and pkt.payload:
                res = decryptor.decrypt(pkt.payload)
                if res is not None:
                    line += "\n    " + res.describe()
                    if writer is not None and res.ok and res.ip_packet:
                        writer.write_packet(pkt.ts_sec, pkt.ts_usec, res.ip_packet)
                        written += 1
            out.write(line + "\n")
            shown += 1
            if args.count and shown >= args.count:
                break
    finally:
        if writer is not None:
            writer.close()
    if decryptor is not None:
        out.flush()
        tail = ""
        if writer is not None:
            written -= writer.records_skipped
            tail = f"; wrote {written} to {write_decrypted}"
            if writer.records_skipped:
                tail += (f" ({writer.records_skipped} not written: timestamp beyond the pcap "
                         "format's 32-bit seconds)")
        print(printable(f"{decryptor.stats.summary()}{tail}"), file=sys.stderr)
    return EXIT_OK


# ------------------------------------------------------------------------------ stats --

def cmd_stats(args: argparse.Namespace) -> int:
    from ipsec_nflog.nflog.summary import printable
    from ipsec_nflog.system.procinfo import group_bindings

    where = f"network namespace {args.netns!r}" if args.netns else "this network namespace"
    rows = group_bindings(args.netns)
    if not rows:
        print(f"no NFLOG groups are bound in {where}")
        return EXIT_OK
    print(f"NFLOG groups bound in {where}:")
    for b in rows:
        who = f"{printable(b.comm or '?')} (pid {b.pid})" if b.pid else f"netlink port {b.portid}"
        copy = (f"copies packets up to {b.copy_range} bytes" if b.copy_mode == 2
                else f"copy mode {b.copy_mode_name}")
        print(f"  group {b.group}: bound by {who}; {copy}; flushes every "
              f"{b.flush_timeout_cs / 100:.2f} s; {b.queue_len} packets queued in the kernel")
    return EXIT_OK


# ------------------------------------------------------------------------------ rules --

def cmd_rules(args: argparse.Namespace) -> int:
    from ipsec_nflog import rules

    if args.action == "show":
        if args.preset:
            text = rules.render(args.preset, group=args.group, **_rules_kwargs(args))
            print(text, end="" if text.endswith("\n") else "\n")
        else:
            print(rules.show(netns=args.netns) or "no ipsec_nflog rules installed")
        return EXIT_OK
    if args.action == "cleanup":
        removed = rules.cleanup(netns=args.netns)
        print(f"removed {len(removed)} stale rule set(s)" +
              "".join(f"\n  {r}" for r in removed))
        return EXIT_OK
    if args.action == "install":
        if not args.preset:
            raise CliError("rules install needs a preset")
        handle = rules.install(args.preset, group=args.group, netns=args.netns, persistent=True,
                               **_rules_kwargs(args))
        print(f"installed {args.preset} for group {args.group} ({handle.backend}), tag "
              f"{handle.tag}; remove with: ipsec-nflog rules remove --tag {handle.tag}")
        return EXIT_OK
    if args.action == "remove":
        if not args.tag:
            raise CliError("rules remove needs --tag (see 'ipsec-nflog rules show')")
        removed = rules.remove(args.tag, netns=args.netns)
        print(f"removed {len(removed)} rule(s)/table(s) tagged {args.tag}"
              + "".join(f"\n  {r}" for r in removed))
        return EXIT_OK
    raise CliError(f"unknown rules action {args.action!r}")


# ------------------------------------------------------------------------------- keys --

def cmd_keys(args: argparse.Namespace) -> int:
    from ipsec_nflog.ipsec import keys

    return int(keys.main(args))


# ------------------------------------------------------------------------------- demo --

def cmd_demo(args: argparse.Namespace) -> int:
    from ipsec_nflog.cli.demo import run_demo

    return run_demo(args.write, group=args.group)


# ----------------------------------------------------------------------------- parser --

def _add_rule_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("rule preset options")
    g.add_argument("--prefix", help="NFLOG prefix (at most 63 bytes; no quotes, backslash or $)")
    g.add_argument("--family", choices=["ipv4", "ipv6", "both"], default="both")
    g.add_argument("--backend", choices=["nft", "iptables", "iptables-nft", "iptables-legacy"])
    g.add_argument("--reqid", type=int)
    g.add_argument("--spi", type=lambda s: int(s, 0))
    g.add_argument("--proto", choices=["esp", "ah", "ipcomp"])
    g.add_argument("--mode", choices=["tunnel", "transport"])
    g.add_argument("--tunnel-src", dest="tunnel_src")
    g.add_argument("--tunnel-dst", dest="tunnel_dst")
    g.add_argument("--strict", action="store_true")
    g.add_argument("--interface", help="interface match / libipsec TUN device")
    g.add_argument("--ike-port", dest="ike_port", type=int, action="append",
                   help="extra IKE port (500 and 4500 are always included)")
    g.add_argument("--nflog-threshold", dest="nflog_threshold", type=int)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ipsec-nflog", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--version", action="version", version=f"ipsec-nflog {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    c = sub.add_parser("capture", help="capture NFLOG groups (like tcpdump -i nflog:N)")
    c.add_argument("-g", "--group", type=_group_arg, action="append",
                   help="NFLOG group (repeatable)")
    c.add_argument("-i", dest="group", type=_group_arg, action="append",
                   metavar="nflog:N", help="same as -g, tcpdump style")
    c.add_argument("-w", "--write", metavar="FILE", type=_path_arg,
                   help="write packets to FILE ('-': standard output)")
    c.add_argument("-s", "--snaplen", type=int, default=0, help="bytes per packet (0: all)")
    c.add_argument("-c", "--count", type=_positive_int, help="stop after COUNT packets")
    c.add_argument("--duration", type=_positive_float, help="stop after SECONDS")
    c.add_argument("-C", dest="file_size", type=_positive_int,
                   help="rotate when a file reaches this many million bytes")
    c.add_argument("-G", dest="rotate_seconds", type=_positive_int,
                   help="rotate every SECONDS")
    c.add_argument("-W", dest="file_count", type=_positive_int,
                   help="keep at most this many files (a ring)")
    c.add_argument("-U", "--packet-buffered", action="store_true",
                   help="flush the file after every batch")
    fmt = c.add_mutually_exclusive_group()
    fmt.add_argument("--pcap", action="store_true", help="pcap (default)")
    fmt.add_argument("--pcapng", action="store_true", help="pcapng with per-group interfaces")
    fmt.add_argument("--raw", action="store_true",
                     help="LINKTYPE_RAW: IP packets only, NFLOG metadata dropped")
    c.add_argument("--overwrite", action="store_true", help="replace an existing file")
    c.add_argument("-Z", dest="user", metavar="USER",
                   help="drop privileges to USER once the capture is set up")
    c.add_argument("--netns", metavar="NAME", help="capture inside network namespace NAME")
    c.add_argument("--rules", metavar="PRESET",
                   help="install this rule preset for the capture and remove it after")
    c.add_argument("--fail-on-drop", action="store_true",
                   help="exit with status 3 if anything was lost")
    c.add_argument("--low-latency", action="store_true",
                   help="one packet per netlink message: timely timestamps, more CPU")
    c.add_argument("--qthreshold", type=int)
    c.add_argument("--flush-timeout", type=_non_negative_float, dest="flush_timeout")
    c.add_argument("--nlbufsiz", type=_size_arg)
    c.add_argument("--rcvbuf", type=_size_arg)
    c.add_argument("--ring-size", type=_size_arg, dest="ring_size",
                   help="ring between the C reader and the writer (default 64M, 256M with -w)")
    c.add_argument("-q", "--quiet", action="store_true", help="no status line or summary")
    _add_rule_options(c)
    c.set_defaults(func=cmd_capture)

    r = sub.add_parser("read", help="print a capture file (ours or tcpdump's)")
    r.add_argument("file", type=_path_arg, help="capture file ('-': standard input)")
    r.add_argument("--group", type=_group_arg, help="only these groups")
    r.add_argument("--prefix", help="only packets with this prefix")
    r.add_argument("--hook", type=str.upper, help="only this hook (INPUT, OUTPUT, ...)")
    r.add_argument("-c", "--count", type=_positive_int)
    r.add_argument("--utc", action="store_true", help="print times in UTC")
    dg = r.add_argument_group(
        "ESP decryption",
        "with keys, each ESP packet's line (ESP or ESP-in-UDP on 4500) is followed by an "
        "indented line with its inner packet, '[decrypted spi=0x... seq=N] <summary>', or why "
        "it was not decrypted ('[ESP bad-icv ...]', 'unknown-spi', 'bad-padding', "
        "'malformed'); AES-CBC + HMAC-SHA1/SHA2 and AES-GCM; a summary goes to stderr")
    dg.add_argument("--keys", metavar="DIR",
                    help="directory with Wireshark's esp_sa (as written by 'ipsec-nflog keys "
                         "--out DIR'), or an esp_sa file")
    dg.add_argument("--log", action="append", default=[], metavar="FILE",
                    help="charon log written with 'chd 4' (repeatable)")
    dg.add_argument("--write-decrypted", dest="write_decrypted", metavar="OUT",
                    type=_path_arg,
                    help="write the decrypted inner IP packets (tunnel mode; transport mode "
                         "with the outer IP header) with the outer packets' timestamps as a "
                         "LINKTYPE_RAW pcap, mode 0600")
    dg.add_argument("--overwrite", action="store_true",
                    help="replace an existing --write-decrypted file")
    r.set_defaults(func=cmd_read)

    ru = sub.add_parser("rules", help="show, install, remove or clean up NFLOG rules")
    ru.add_argument("action", choices=["show", "install", "remove", "cleanup"])
    ru.add_argument("preset", nargs="?")
    ru.add_argument("-g", "--group", type=int, default=5)
    ru.add_argument("--netns", metavar="NAME")
    ru.add_argument("--tag", help="owner tag of the rules to remove")
    _add_rule_options(ru)
    ru.set_defaults(func=cmd_rules)

    s = sub.add_parser("stats", help="which NFLOG groups are bound, by whom")
    s.add_argument("--netns", metavar="NAME")
    s.set_defaults(func=cmd_stats)

    k = sub.add_parser("keys", help="extract IKE/ESP keys for Wireshark")
    try:
        from ipsec_nflog.ipsec import keys as _keys
    except ImportError:
        _keys = None  # type: ignore[assignment]
    if _keys is not None and hasattr(_keys, "add_arguments"):
        _keys.add_arguments(k)
    k.set_defaults(func=cmd_keys)

    d = sub.add_parser("demo", help="a real capture in throwaway namespaces")
    d.add_argument("-w", "--write", default="ipsec-nflog-demo.pcap", metavar="FILE",
                   type=_path_arg)
    d.add_argument("-g", "--group", type=int, default=5)
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    # Own the stop signals before anything else: from here on a signal asks the capture to
    # stop (the other commands get it back below), and never prints a traceback.
    with StopSignals() as stop:
        try:
            args = build_parser().parse_args(argv)
            if args.func is not cmd_capture:
                stop.hand_back()  # Python's defaults again: Ctrl-C interrupts a read
            return _run_command(args)
        except KeyboardInterrupt:
            return 130


def _run_command(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception as e:
        if args.debug:
            raise
        msg = str(e) or type(e).__name__
        from ipsec_nflog.nflog.summary import (
            printable,  # file names and the like in it are untrusted
        )

        print(f"ipsec-nflog: {printable(msg)}", file=sys.stderr)
        return EXIT_USAGE if isinstance(e, (ValueError, CliError)) else EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
