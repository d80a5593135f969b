"""Creating output files (captures, keys) without following planted links.

Captures often run as root in shared directories, and hold decrypted traffic or keys, so a
name someone else planted at the output path must never redirect what we write or what we
chown. :func:`create_output_file` is the one way files are opened for writing here:

- A new file is created with ``O_CREAT|O_EXCL|O_NOFOLLOW`` and set to ``mode`` with fchmod,
  whatever the umask (``created`` is True).
- A symbolic link at the path is never followed, with or without ``overwrite``: OSError
  ELOOP naming it. (O_EXCL alone already refuses it; we say why.)
- Any other existing name is FileExistsError unless ``overwrite``. With ``overwrite``, a
  regular file is *replaced*, not truncated: its name is unlinked and a new file created with
  O_EXCL in its place. A hard link planted there keeps its content, and the file written is
  always one this call created (``created`` True), so chowning it is safe.
- With ``overwrite``, an existing device (``/dev/null``; unprivileged users cannot make
  device nodes) or a FIFO owned by root or by our effective user is opened as it is: neither
  truncated nor chmodded (``created`` False, so the caller must not chown it). A FIFO of
  anyone else's is refused, since it would hand the data to them; so are directories and
  sockets.
"""

from __future__ import annotations

import errno
import os
import stat

__all__ = ["create_output_file"]

_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_EXISTING = os.O_WRONLY | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
_ATTEMPTS = 3  # the name is unlinked and recreated; someone racing us gets an error


def create_output_file(path: str, *, overwrite: bool, mode: int,
                       what: str = "capture file") -> tuple[int, bool]:
    """(descriptor open for writing, whether this call created the file); see the module
    docstring. Errors are OSErrors whose message names ``what`` and ``path``."""
    for _ in range(_ATTEMPTS):
        try:
            fd = os.open(path, _NEW, mode)
        except FileExistsError:
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue  # gone again in between: try to create it
            if stat.S_ISLNK(st.st_mode):
                raise OSError(errno.ELOOP, f"{what} {path} is a symbolic link; not following "
                              "it (remove it, or name the file it points to)", path) from None
            if not overwrite:
                raise FileExistsError(errno.EEXIST, f"{what} {path} already exists; not "
                                      "overwriting it (pass overwrite=True)", path) from None
            if stat.S_ISREG(st.st_mode):
                _unlink_for_replacement(path, what)
                continue
            return _open_special(path, st, what), False
        except OSError as e:
            raise type(e)(e.errno, f"cannot create {what} {path}: {e.strerror}", path) from None
        try:
            os.fchmod(fd, mode)
        except BaseException:
            os.close(fd)
            raise
        return fd, True
    raise FileExistsError(errno.EEXIST, f"{what} {path} keeps being recreated by someone else; "
                          "not writing to it", path)


def _unlink_for_replacement(path: str, what: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise type(e)(e.errno, f"cannot replace {what} {path}: {e.strerror}", path) from None


def _open_special(path: str, st: os.stat_result, what: str) -> int:
    """An existing device, or a FIFO of root's or ours, opened as it is."""
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, f"{what} {path} is a directory", path)
    device = stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
    if not device and not (stat.S_ISFIFO(st.st_mode) and st.st_uid in (0, os.geteuid())):
        raise PermissionError(errno.EPERM, f"{what} {path} is a {_kind(st)} and not a "
                              "device; not writing into it", path)
    try:
        fd = os.open(path, _EXISTING)
    except OSError as e:
        raise type(e)(e.errno, f"cannot open {what} {path}: {e.strerror}", path) from None
    now = os.fstat(fd)
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) or stat.S_ISREG(now.st_mode):
        os.close(fd)  # swapped under us (for a hard link to a regular file, say)
        raise FileExistsError(errno.EEXIST, f"{what} {path} changed while it was opened; "
                              "not writing to it", path)
    return fd


def _kind(st: os.stat_result) -> str:
    if stat.S_ISFIFO(st.st_mode):
        return f"FIFO owned by uid {st.st_uid}"
    return "socket" if stat.S_ISSOCK(st.st_mode) else "special file"
