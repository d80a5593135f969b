"""``ipsec-nflog extcap``: the program Wireshark, tshark, dumpcap and pyshark run as a
capture interface (the extcap protocol of Wireshark 4.0 and later).

- ``--extcap-interfaces``, ``--extcap-dlts``, ``--extcap-config``, ``--extcap-version``
  print what :mod:`~ipsec_nflog.cli.extcap_config` describes.
- ``--capture --fifo PATH`` runs ``ipsec-nflog capture`` itself (:func:`capture_argv`):
  the FIFO becomes standard output and the capture writes pcapng to it with ``-w -``, one
  writev per batch, so the options, the checks before anything is created, the rules, the
  drain, the stop signals and the summary are the CLI's own. A stop comes from SIGTERM
  (Wireshark's stop button), from the FIFO's reader going away, or from Wireshark closing
  the control pipe (``--extcap-control-in``); each ends in the same clean stop.
- Unknown arguments (newer Wireshark versions add some) are ignored; abbreviations are not
  accepted, so a new ``--extcap-...`` never matches one of ours by its prefix.
- ``--install`` / ``--uninstall``: :mod:`~ipsec_nflog.cli.extcap_install`.

Wireshark shows anything an extcap writes on stderr as an error, so a capture is quiet
(``-q``) and stderr carries only errors: one line, and a non-zero exit.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import pwd
import select
import sys
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, NoReturn

from ipsec_nflog._version import __version__
from ipsec_nflog.cli.errors import EXIT_FAIL, EXIT_OK, CliError
from ipsec_nflog.cli.extcap_config import (
    INTERFACES,
    capture_argv,
    config_lines,
    dlt_lines,
    interface_lines,
    parse_options,
)
from ipsec_nflog.cli.extcap_install import lstat_kind
from ipsec_nflog.cli.output_hangup import HangupWatch
from ipsec_nflog.system.procinfo import CAP_NET_ADMIN, has_capability
from ipsec_nflog.system.signals import die_with_parent, stop_signals

if TYPE_CHECKING:
    from ipsec_nflog.system.signals import StopSignals

__all__ = ["add_extcap_arguments", "cmd_extcap", "main", "open_fifo", "run"]

FIFO_WAIT = 0.05  # seconds between attempts to open the FIFO before its reader is there


def add_extcap_arguments(p: argparse.ArgumentParser) -> None:
    """The extcap protocol's own arguments (the dialog options are parsed apart)."""
    p.add_argument("--extcap-interfaces", action="store_true",
                   help="list the interfaces (Wireshark calls this)")
    p.add_argument("--extcap-version", nargs="?", const="", metavar="VERSION",
                   help="the calling Wireshark's version (or print ours)")
    p.add_argument("--extcap-interface", metavar="IFACE", help="the interface to act on")
    p.add_argument("--extcap-dlts", action="store_true", help="list the link types")
    p.add_argument("--extcap-config", action="store_true", help="list the dialog options")
    # its value is an option's call ("--rules"), which argparse takes for an option of its
    # own: it then lands among the ignored arguments, and the whole config answers anyway
    p.add_argument("--extcap-reload-option", nargs="?", const="", metavar="OPTION",
                   help="reload one selector's values (ours never change)")
    p.add_argument("--capture", action="store_true", help="capture into --fifo")
    p.add_argument("--fifo", metavar="PATH", help="the FIFO Wireshark reads")
    p.add_argument("--extcap-capture-filter", metavar="FILTER",
                   help="a tcpdump filter expression (kept in the C reader)")
    p.add_argument("--extcap-control-in", metavar="PIPE",
                   help="Wireshark's control pipe to us: closing it stops the capture")
    p.add_argument("--extcap-control-out", metavar="PIPE", help="our control pipe to Wireshark")
    p.add_argument("--install", action="store_true",
                   help="install a launcher into Wireshark's extcap folder")
    p.add_argument("--uninstall", action="store_true", help="remove that launcher")
    p.add_argument("--extcap-dir", metavar="DIR",
                   help="with --install/--uninstall: this folder instead of Wireshark's")
    p.add_argument("--from-launcher", action="store_true",
                   help="set by the installed launcher, which may run as root through sudo: "
                        "refuses --install and --uninstall")
    p.add_argument("--sudo-group", metavar="GROUP",
                   help="with --install: members of GROUP capture through sudo (writes a "
                        "sudoers rule for the launcher); see docs/wireshark.md")


def main(argv: Sequence[str] | None = None) -> int:
    """``ipsec-nflog extcap ARGS``."""
    from ipsec_nflog.cli.main import main as cli_main

    return cli_main(["extcap", *(sys.argv[1:] if argv is None else argv)])


def run() -> NoReturn:
    """The ``ipsec-nflog-extcap`` console script."""
    from ipsec_nflog.cli.main import exit_quickly

    exit_quickly(main)


def cmd_extcap(args: argparse.Namespace) -> int:
    if args.install or args.uninstall:
        from ipsec_nflog.cli.extcap_install import install, uninstall

        if args.install and args.uninstall:
            raise CliError("give --install or --uninstall, not both")
        return install(args) if args.install else uninstall(args)
    if args.extcap_interfaces or (args.extcap_version is not None
                                  and args.extcap_interface is None and not args.capture):
        return _print(interface_lines() if args.extcap_interfaces
                      else [f"ipsec-nflog extcap {__version__}"])
    iface = args.extcap_interface
    if iface not in INTERFACES:
        raise CliError(f"unknown extcap interface {iface!r} (ours: {', '.join(INTERFACES)})"
                       if iface else "no --extcap-interface given")
    if args.extcap_dlts:
        return _print(dlt_lines())
    if args.extcap_config:
        # --extcap-reload-option asks for one selector's values again: ours are fixed, so
        # the whole configuration answers it too.
        return _print(config_lines(iface))
    if args.capture:
        return _capture(args, iface)
    raise CliError("nothing to do: give --extcap-interfaces, --extcap-dlts, --extcap-config "
                   "or --capture")


def _print(lines: list[str]) -> int:
    sys.stdout.write("".join(line + "\n" for line in lines))
    sys.stdout.flush()
    return EXIT_OK


def _capture(args: argparse.Namespace, iface: str) -> int:
    from ipsec_nflog.cli.capture import cmd_capture
    from ipsec_nflog.cli.parser import build_parser

    if not args.fifo:
        raise CliError("--capture needs --fifo PATH")
    options = parse_options(args.extcap_unknown)
    argv = capture_argv(iface, options, args.extcap_capture_filter)
    user = _sudo_user()
    if user is not None:  # run the capture as the user sudo ran us for, rules kept by root
        argv[1:1] = ["-Z", user.pw_name]
    capture_args = build_parser().parse_args(argv)  # a bad value: one line, exit 2
    if not has_capability(CAP_NET_ADMIN):  # before the firewall tools print their own
        raise CliError("capturing needs CAP_NET_ADMIN, which this process lacks: run "
                       "Wireshark as root, or install the launcher with --sudo-group "
                       "(docs/wireshark.md)")
    ruled = user if user is not None and _through_sudo_rule(args) else None
    with stop_signals() as stop:
        # Wireshark or tshark killed outright (pyshark does that) may leave its dumpcap
        # holding the FIFO open: our parent's death is a stop too.
        parent = os.getppid()
        die_with_parent(parent)
        with _as_user(ruled):  # a member's paths are looked up and opened with their rights
            fifo, pipes = _open_pipes(args, stop, ruled, parent)
        if ruled is not None:
            die_with_parent(parent)  # the kernel cleared it when the credentials changed
        if pipes is None:
            return EXIT_OK  # stopped before Wireshark opened it: nothing was made
        os.dup2(fifo, 1)  # -w - writes to the FIFO; children never get it (close_fds)
        os.close(fifo)
        held = _HeldStderr()
        code = EXIT_FAIL
        try:
            with _watch_control_pipes(pipes):
                code = int(cmd_capture(capture_args))
        finally:
            reader_gone = _reader_gone(1)
            held.release(keep=not reader_gone)
        return EXIT_OK if reader_gone else code


def _open_pipes(args: argparse.Namespace, stop: StopSignals, ruled: pwd.struct_passwd | None,
                parent: int) -> tuple[int, _ControlPipes | None]:
    """The FIFO and the control pipes (None: a stop came before Wireshark read the FIFO)."""
    owner = ruled.pw_uid if ruled is not None else None
    fifo = open_fifo(args.fifo, stop, owner=owner, parent=parent)
    if fifo < 0:
        return fifo, None
    try:
        return fifo, _ControlPipes(args.extcap_control_in, args.extcap_control_out, owner)
    except BaseException:
        os.close(fifo)
        raise


def _reader_gone(fd: int) -> bool:
    """Whether the FIFO's reader has closed it (Wireshark ended the capture)."""
    poller = select.poll()
    poller.register(fd, 0)
    return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))


class _HeldStderr:
    """Wireshark shows whatever an extcap writes on stderr as an error. What the capture
    says is held back (in a memfd, so a -Z child's words are kept too) and passed on when
    it ends - unless Wireshark ended it by closing the FIFO: then it is only about the
    records written after that, which nobody reads any more."""

    def __init__(self) -> None:
        sys.stderr.flush()
        self._saved = os.dup(2)
        self._held = os.memfd_create("ipsec-nflog-extcap-stderr", os.MFD_CLOEXEC)
        os.dup2(self._held, 2)

    def release(self, keep: bool) -> None:
        try:
            sys.stderr.flush()
        except OSError:
            pass
        os.dup2(self._saved, 2)
        os.close(self._saved)
        try:
            if keep:
                os.lseek(self._held, 0, os.SEEK_SET)
                while chunk := os.read(self._held, 65536):
                    os.write(2, chunk)
        finally:
            os.close(self._held)


def _sudo_user() -> pwd.struct_passwd | None:
    """The user ``sudo`` ran us for (the launcher's ``--sudo-group`` mode), if any."""
    uid = os.environ.get("SUDO_UID", "")
    if os.geteuid() != 0 or not uid.isdigit() or int(uid) == 0:
        return None
    try:
        return pwd.getpwuid(int(uid))
    except KeyError:
        raise CliError(f"sudo ran us for uid {uid}, which has no passwd entry") from None


def _through_sudo_rule(args: argparse.Namespace) -> bool:
    """Whether the launcher's sudoers rule made us root (a group member's capture), not a
    root Wireshark someone started with sudo: sudo names the command it ran itself."""
    from ipsec_nflog.cli.extcap_install import LAUNCHER_NAME

    command = os.environ.get("SUDO_COMMAND", "").split(" ")[0]
    return bool(args.from_launcher) and os.path.basename(command) == LAUNCHER_NAME


@contextlib.contextmanager
def _as_user(user: pwd.struct_passwd | None) -> Iterator[None]:
    """Run the block with ``user``'s rights (effective ids and groups), root's again after:
    a path a member passes is then one the member could open, and probing root's folders
    tells the member nothing."""
    if user is None:
        yield
        return
    groups, egid = os.getgroups(), os.getegid()
    os.setgroups(os.getgrouplist(user.pw_name, user.pw_gid))
    os.setegid(user.pw_gid)
    os.seteuid(user.pw_uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(egid)
        os.setgroups(groups)


def open_fifo(path: str, stop: StopSignals, owner: int | None = None,
              parent: int | None = None) -> int:
    """Open Wireshark's FIFO for writing, blocking: the descriptor, or -1 if a stop signal
    came (or ``parent`` died) before the reader did. Only a FIFO is written into: never a
    regular file, device or symbolic link at that path (as root under sudo, the path comes
    from the user), and only one of ``owner``'s if given (a member's capture: never a FIFO
    of root's such as /run/initctl), else of root's, ours or the sudo user's."""
    st = lstat_kind(path, "--fifo", "FIFO")
    allowed = {0, os.getuid(), os.geteuid()}
    sudo_uid = os.environ.get("SUDO_UID", "")
    if os.getuid() == 0 and sudo_uid.isdigit():
        allowed.add(int(sudo_uid))
    if owner is not None:
        allowed = {owner}
    if st.st_uid not in allowed:
        raise CliError(f"--fifo {path} belongs to uid {st.st_uid}; not writing into it")
    flags = os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
    while True:
        try:
            fd = os.open(path, flags)
            break
        except OSError as e:
            if e.errno != errno.ENXIO:  # ENXIO: its reader has not opened it yet
                raise CliError(f"--fifo {path}: {e.strerror}") from None
        if stop or (parent is not None and os.getppid() != parent):
            return -1
        time.sleep(FIFO_WAIT)
    now = os.fstat(fd)
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
        os.close(fd)
        raise CliError(f"--fifo {path} changed while it was opened; not writing into it")
    os.set_blocking(fd, True)  # a full FIFO holds the writer, as a file would
    return fd


class _ControlPipes:
    """Wireshark's control pipes: ``--extcap-control-in`` is read (and its messages
    dropped: we offer no toolbar controls) until Wireshark closes it, which stops the
    capture; ``--extcap-control-out`` is opened once Wireshark reads it, and left silent.
    Both are looked up when made (with a member's rights, see :func:`_as_user`); only the
    same FIFO is opened later, and with ``owner`` only one of that user's."""

    def __init__(self, control_in: str | None, control_out: str | None,
                 owner: int | None = None) -> None:
        self._owner = owner
        self._out = (control_out, self._look_up(control_out)) if control_out else None
        self.inputs = [_open_pipe(control_in, os.O_RDONLY, self._look_up(control_in))
                       ] if control_in else []
        self._out_fd = -1

    def _look_up(self, path: str) -> os.stat_result:
        st = lstat_kind(path, "extcap control pipe", "FIFO")
        if self._owner is not None and st.st_uid != self._owner:
            raise CliError(f"extcap control pipe {path} belongs to uid {st.st_uid}")
        return st

    @property
    def wanted(self) -> bool:
        return bool(self.inputs) or self._out is not None

    def open_out(self) -> bool:
        """One attempt to open the control-out pipe (True once done or not wanted)."""
        if self._out is None or self._out_fd >= 0:
            return True
        try:
            path, looked_up = self._out
            self._out_fd = _open_pipe(path, os.O_WRONLY, looked_up)
        except CliError:
            return False  # no reader yet (or never): try again at the next poll
        return True

    def close(self) -> None:
        for fd in [*self.inputs, self._out_fd]:
            if fd >= 0:
                os.close(fd)


def _open_pipe(path: str, mode: int, looked_up: os.stat_result) -> int:
    """The FIFO found at ``path`` before, opened without blocking or following links."""
    try:
        fd = os.open(path, mode | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise CliError(f"extcap control pipe {path}: {e.strerror}") from None
    now = os.fstat(fd)
    if (now.st_dev, now.st_ino) != (looked_up.st_dev, looked_up.st_ino):
        os.close(fd)
        raise CliError(f"extcap control pipe {path} changed while it was opened")
    return fd


@contextlib.contextmanager
def _watch_control_pipes(pipes: _ControlPipes) -> Iterator[None]:
    """Stop when Wireshark closes the control pipe it gave us, if it gave one."""
    try:
        if not pipes.wanted:
            yield
            return
        with HangupWatch(inputs=pipes.inputs, open_later=pipes.open_out):
            yield
    finally:
        pipes.close()
