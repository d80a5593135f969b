"""``ipsec-nflog extcap --install`` / ``--uninstall``: the launcher Wireshark runs.

The launcher is a few lines of sh in the extcap folder (``tshark -G folders``; Wireshark 4.0
has only the global one) that runs this installation's interpreter by its absolute path,
isolated (``-I``: no PYTHON* variables, no user site, not the current directory), so what
runs is what the admin installed. It is written as a new file (0755, root's when root
installs it) renamed into place, so a symbolic link at its name is never followed, and only
ever replaces or removes a file that carries our marker line.

With ``--sudo-group GROUP``, members of GROUP capture without running Wireshark as root: for
them the launcher re-runs itself through ``sudo -n``, and a sudoers rule (its own file in
/etc/sudoers.d, checked with ``visudo -c``) lets the group run exactly the launcher as root;
anyone else is told in one line that a capture needs the group. The install refuses an
interpreter or package that anyone but root can change (:func:`check_code_trusted`). The
capture drops to the user once the rules are in (``-Z``), and a launcher run through sudo
refuses ``--install``/``--uninstall``. docs/wireshark.md explains the choice.
"""

from __future__ import annotations

import argparse
import grp
import hashlib
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable

from ipsec_nflog.cli.errors import EXIT_OK, CliError

__all__ = ["LAUNCHER_NAME", "MARKER", "check_code_trusted", "extcap_folder", "install",
           "launcher_text", "sudoers_path", "uninstall"]

LAUNCHER_NAME = "ipsec-nflog"
MARKER = "# ipsec-nflog extcap launcher"  # the line that makes a file ours to replace
SUDOERS_DIR = "/etc/sudoers.d"
FROM_LAUNCHER = "--from-launcher"
_GROUP_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
# What the launcher's interpreter imports, one path a line (run as it runs: -I)
_CODE_PATHS = ("import os, sys, ipsec_nflog; "
               "print(*[os.path.dirname(ipsec_nflog.__file__), *sys.path], sep=chr(10))")


def extcap_folder() -> str:
    """The global extcap folder Wireshark reports (``tshark -G folders``)."""
    tshark = shutil.which("tshark")
    if tshark is None:
        raise CliError("tshark is not installed, so Wireshark's extcap folder is unknown: "
                       "give --extcap-dir DIR")
    r = subprocess.run([tshark, "-G", "folders"], capture_output=True, text=True, timeout=60)
    paths = {}
    for line in r.stdout.splitlines():
        key, _, value = line.partition(":")
        if "extcap path" in key.lower():
            paths[key.strip().lower()] = value.strip()
    for key in ("global extcap path", "extcap path"):  # 4.2+ lists a personal one too
        if key in paths:
            return paths[key]
    raise CliError("tshark -G folders names no extcap folder: give --extcap-dir DIR")


def launcher_text(python: str, path: str, sudo: str | None, group: str | None = None) -> str:
    """The launcher: ``python -I -m ipsec_nflog extcap --from-launcher ARGS``. With
    ``sudo`` (and ``group``), a member of the group runs every call through ``sudo -n``
    to this same file (so the interpreter need not be readable by the members); anyone
    else is told in one line why a capture is not theirs."""
    lines = ["#!/bin/sh", MARKER + " (written by 'ipsec-nflog extcap --install'; removed by "
             "'ipsec-nflog extcap --uninstall')"]
    if sudo is not None:
        if group is None or not _GROUP_NAME.fullmatch(group):
            raise ValueError(f"launcher_text: {group!r} is not a plain group name")
        member = f'*" {group} "*'  # a plain group name (checked): no quoting needed
        refusal = shlex.quote(f"ipsec-nflog: capturing here needs membership of group {group} "
                              "(its sudoers rule runs this launcher as root)")
        lines += ["# members of the group: as root, through the sudoers rule for this file",
                  'if [ "$(id -u)" != 0 ]; then',
                  f'  case " $(id -Gn 2>/dev/null) " in {member})',
                  f'    exec {shlex.quote(sudo)} -n -- {shlex.quote(path)} "$@" ;;',
                  "  esac",
                  "  for arg do",
                  f'    [ "$arg" = --capture ] && {{ echo {refusal} >&2; exit 1; }}',
                  "  done",
                  "fi"]
    lines.append(f'exec {shlex.quote(python)} -I -m ipsec_nflog extcap {FROM_LAUNCHER} "$@"')
    return "\n".join(lines) + "\n"


def sudoers_path(launcher: str) -> str:
    """One sudoers file per launcher (names with '.' are ignored by sudo: hex only)."""
    digest = hashlib.sha256(launcher.encode()).hexdigest()[:12]
    return os.path.join(SUDOERS_DIR, f"ipsec-nflog-extcap-{digest}")


def install(args: argparse.Namespace) -> int:
    _refuse_through_launcher(args)
    folder = os.path.abspath(args.extcap_dir or extcap_folder())
    _check_folder(folder)
    path = os.path.join(folder, LAUNCHER_NAME)
    _check_ours_or_absent(path)
    sudo = _sudo_setup(args.sudo_group, path) if args.sudo_group else None
    if sudo is not None:
        check_code_trusted(sys.executable)
    _write_new(path, launcher_text(sys.executable, path, sudo, args.sudo_group), 0o755)
    print(f"installed the extcap launcher {path} (running {sys.executable})")
    if args.sudo_group:
        sudoers = sudoers_path(path)
        _write_new(sudoers, _sudoers_text(args.sudo_group, path), 0o440, check=_visudo)
        print(f"members of {args.sudo_group} capture through sudo ({sudoers})")
    return EXIT_OK


def uninstall(args: argparse.Namespace) -> int:
    _refuse_through_launcher(args)
    folder = os.path.abspath(args.extcap_dir or extcap_folder())
    path = os.path.join(folder, LAUNCHER_NAME)
    removed = [p for p in (path, sudoers_path(path)) if _remove_if_ours(p)]
    print("removed " + (", ".join(removed) if removed else "nothing (no launcher of ours in "
                        f"{folder})"))
    return EXIT_OK


def _refuse_through_launcher(args: argparse.Namespace) -> None:
    # The launcher may run as root through sudo for anyone in the group: it must not be
    # a way to write or remove files as root.
    if args.from_launcher:
        raise CliError("--install and --uninstall are not available through the launcher; "
                       "run 'ipsec-nflog extcap --install' itself")


_KINDS: dict[str, Callable[[int], bool]] = {"FIFO": stat.S_ISFIFO, "directory": stat.S_ISDIR}


def lstat_kind(path: str, label: str, kind: str) -> os.stat_result:
    """lstat of ``path``, which must be a ``kind`` ("FIFO", "directory") itself, never a
    symbolic link to one; a CliError naming ``label`` and the path otherwise."""
    try:
        st = os.lstat(path)
    except OSError as e:
        raise CliError(f"{label} {path}: {e.strerror}") from None
    if not _KINDS[kind](st.st_mode):
        raise CliError(f"{label} {path} is not a {kind}")
    return st


def _check_folder(folder: str) -> None:
    """A real directory that only its owner (root, or us) can change, up to /."""
    lstat_kind(folder, "extcap folder", "directory")
    here = folder
    while True:
        st = os.stat(here)
        if st.st_uid not in (0, os.geteuid()) or (
                st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX):
            raise CliError(f"{here} can be changed by others (owner uid {st.st_uid}, mode "
                           f"{stat.S_IMODE(st.st_mode):o}): not installing a launcher "
                           "under it")
        parent = os.path.dirname(here)
        if parent == here:
            return
        here = parent


def _check_ours_or_absent(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode) or not _is_ours(path):
        raise CliError(f"{path} exists and was not written by ipsec-nflog; not replacing it")


def _is_ours(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        head = os.read(fd, 4096).decode(errors="replace")
    finally:
        os.close(fd)
    return any(line.startswith(MARKER) for line in head.splitlines()[:3])


def _remove_if_ours(path: str) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode) or not _is_ours(path):
        raise CliError(f"{path} was not written by ipsec-nflog; not removing it")
    os.unlink(path)
    return True


def _write_new(path: str, text: str, mode: int,
               check: Callable[[str], None] | None = None) -> None:
    """Write ``text`` to a new file beside ``path`` and rename it over ``path``: a link at
    ``path`` is replaced, never followed. ``check(tmp)`` may refuse the file first."""
    tmp = f"{path}.new-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        try:
            os.write(fd, text.encode())
            if os.geteuid() == 0:
                os.fchown(fd, 0, 0)
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        if check is not None:
            check(tmp)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _sudo_setup(group: str, launcher: str) -> str:
    """Check what the sudo mode needs; the absolute path of sudo."""
    if os.geteuid() != 0:
        raise CliError("--sudo-group writes a sudoers rule: run --install as root")
    if not _GROUP_NAME.fullmatch(group):
        raise CliError(f"--sudo-group: {group!r} is not a plain group name")
    try:
        grp.getgrnam(group)
    except KeyError:
        raise CliError(f"--sudo-group: no such group {group!r}") from None
    sudo = shutil.which("sudo")
    if sudo is None or not os.path.isdir(SUDOERS_DIR):
        raise CliError("--sudo-group needs sudo (with /etc/sudoers.d): install it first")
    if not all(c.isalnum() or c in "/-_." for c in launcher):
        raise CliError(f"{launcher}: a sudoers rule cannot name this path safely")
    _check_ours_or_absent(sudoers_path(launcher))
    return sudo


def check_code_trusted(python: str) -> None:
    """Through sudo the launcher runs ``python`` and what it imports as root for every
    member of the group: each of them (the interpreter and its links, the package, every
    sys.path tree, and the folders above them) must be root's and writable by no one else,
    or a member could put code there and run it as root."""
    paths = [python]
    link = python
    while os.path.islink(link):  # a venv's python is a chain of links
        link = os.path.join(os.path.dirname(link), os.readlink(link))
        paths.append(link)
    venv_cfg = os.path.join(os.path.dirname(os.path.dirname(python)), "pyvenv.cfg")
    paths += [venv_cfg] if os.path.exists(venv_cfg) else []  # it names the base interpreter
    r = subprocess.run([python, "-I", "-c", _CODE_PATHS], capture_output=True, text=True,
                       timeout=60)
    if r.returncode != 0:
        raise CliError(f"{python} cannot import ipsec_nflog: {r.stderr.strip()[-200:]}")
    trees = [p for p in r.stdout.splitlines() if os.path.isabs(p)]
    for path in [*paths, *trees]:
        here = os.path.abspath(path)
        while not os.path.lexists(here):  # python311.zip: whoever may create it matters
            here = os.path.dirname(here)
        for above in _ancestors(os.path.dirname(here)):
            _refuse_if_writable(above, sticky_ok=True)
    for tree in trees:
        if os.path.isdir(tree):
            _check_tree(tree)
    for path in paths:
        _refuse_if_writable(path, sticky_ok=False)


def _ancestors(path: str) -> list[str]:
    found = [path]
    while os.path.dirname(found[-1]) != found[-1]:
        found.append(os.path.dirname(found[-1]))
    return found


def _check_tree(top: str) -> None:
    _refuse_if_writable(top, sticky_ok=False)
    for folder, dirs, files in os.walk(top):
        for name in [*dirs, *files]:
            path = os.path.join(folder, name)
            _refuse_if_writable(path, sticky_ok=False)
            if os.path.islink(path):  # what it names (not walked further: links are rare)
                _refuse_if_writable(os.path.realpath(path), sticky_ok=False)


def _refuse_if_writable(path: str, sticky_ok: bool) -> None:
    """Refuse ``path`` unless only root can change it (a link: its own entry counts, its
    target is checked where it is named). Group write is root's group's only."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return  # a dangling link: nothing to run there

    writable = st.st_mode & 0o002 or (st.st_mode & 0o020 and st.st_gid != 0)
    if stat.S_ISLNK(st.st_mode):
        writable = False
    if sticky_ok and stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX:
        writable = False  # /tmp above: others cannot rename what root made there
    if st.st_uid != 0 or writable:
        raise CliError(f"--sudo-group: {path} (owner uid {st.st_uid}, mode "
                       f"{stat.S_IMODE(st.st_mode):o}) can be changed by someone other than "
                       "root, and the launcher runs it as root: install from an interpreter "
                       "and package only root can change")


def _sudoers_text(group: str, launcher: str) -> str:
    return (f"{MARKER}: members of {group} may run it as root to capture\n"
            f"%{group} ALL=(root) NOPASSWD: {launcher}\n")


def _visudo(path: str) -> None:
    visudo = shutil.which("visudo") or "/usr/sbin/visudo"
    r = subprocess.run([visudo, "-c", "-q", "-f", path], capture_output=True, text=True)
    if r.returncode != 0:
        raise CliError(f"visudo refused the sudoers rule: {(r.stderr or r.stdout).strip()}")
