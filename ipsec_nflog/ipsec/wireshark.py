"""Wireshark's key tables: the ``esp_sa`` and ``ikev2_decryption_table`` UAT files, written
in strongSwan save-keys' format (mode 0600, never through a planted link), the same records
as ``tshark -o`` options, and reading an ``esp_sa`` file back."""

from __future__ import annotations

import csv
import errno
import os
import stat
from collections.abc import Iterable

from ipsec_nflog.files.durable import create_output_file
from ipsec_nflog.ipsec.loglines import PathLike, open_log
from ipsec_nflog.ipsec.sa import (
    EspSa,
    IkeSa,
    esp_sa_line,
    ikev2_line,
    is_address,
    key_from_text,
)

__all__ = [
    "ESP_SA_FILE",
    "IKEV2_FILE",
    "esp_sa_lines",
    "ikev2_lines",
    "read_esp_sa",
    "tshark_options",
    "write_esp_sa",
    "write_ikev2_decryption_table",
    "write_wireshark_keys",
]

ESP_SA_FILE = "esp_sa"
IKEV2_FILE = "ikev2_decryption_table"


def _write_private(path: PathLike, lines: Iterable[str], append: bool) -> None:
    name = os.fspath(path)
    fd = _open_for_append(name) if append else create_output_file(
        name, overwrite=True, mode=0o600, what="key file")[0]
    try:
        with os.fdopen(fd, "w", encoding="ascii", closefd=False) as f:
            for line in lines:
                f.write(line + "\n")
    finally:
        os.close(fd)


def _open_for_append(path: str) -> int:
    """An existing key file of ours to append to (never through a link: a planted symlink
    or hard link would send the keys elsewhere), or a new one."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return create_output_file(path, overwrite=False, mode=0o600, what="key file")[0]
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, f"key file {path} is a symbolic link; not following "
                          "it", path) from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_uid != os.geteuid():
        os.close(fd)
        raise PermissionError(errno.EPERM, f"key file {path} is not a regular file of ours "
                              "with a single link; not appending to it", path)
    os.fchmod(fd, 0o600)  # also when the file existed with wider permissions
    return fd


def esp_sa_lines(sas: Iterable[EspSa]) -> list[str]:
    """The distinct ``esp_sa`` records of these SAs, in order."""
    return list(dict.fromkeys(map(esp_sa_line, sas)))


def ikev2_lines(sas: Iterable[IkeSa]) -> list[str]:
    """The distinct ``ikev2_decryption_table`` records of the SAs whose SPIs are known."""
    return list(dict.fromkeys(ikev2_line(s) for s in sas if s.complete))


def write_esp_sa(path: PathLike, sas: Iterable[EspSa], *, append: bool = False) -> None:
    """Write Wireshark's ``esp_sa`` UAT file (mode 0600)."""
    _write_private(path, esp_sa_lines(sas), append)


def write_ikev2_decryption_table(path: PathLike, sas: Iterable[IkeSa], *,
                                 append: bool = False) -> None:
    """Write Wireshark's ``ikev2_decryption_table`` UAT file (mode 0600); SAs without SPIs
    are left out."""
    _write_private(path, ikev2_lines(sas), append)


def write_wireshark_keys(directory: PathLike, *, ike: Iterable[IkeSa] = (),
                         esp: Iterable[EspSa] = (), append: bool = False) -> dict[str, str]:
    """Write both files into ``directory`` (e.g. a Wireshark profile directory, or the
    save-keys ``wireshark_keys`` directory). Returns {table name: path}. A symbolic link of
    someone else's in place of the directory is refused (it would send the keys elsewhere)."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    st = os.lstat(directory)
    if stat.S_ISLNK(st.st_mode) and st.st_uid not in (0, os.geteuid()):
        raise PermissionError(errno.EPERM, f"key directory {os.fspath(directory)} is a symbolic "
                              f"link owned by uid {st.st_uid}; not following it", directory)
    paths = {ESP_SA_FILE: os.path.join(directory, ESP_SA_FILE),
             IKEV2_FILE: os.path.join(directory, IKEV2_FILE)}
    write_esp_sa(paths[ESP_SA_FILE], esp, append=append)
    write_ikev2_decryption_table(paths[IKEV2_FILE], ike, append=append)
    return paths


def tshark_options(*, esp: Iterable[EspSa] = (), ike: Iterable[IkeSa] = (),
                   check_icv: bool = True, udpencap_port: int | None = None) -> list[str]:
    """``tshark``/``wireshark`` argv items that load these keys, e.g.
    ``["tshark", "-r", "cap.pcap", *tshark_options(esp=sas)]``. No shell quoting needed.
    Wireshark 4.0 knows no extended sequence numbers: it decrypts an ESN SA's packets, but
    with ``check_icv`` it calls their ICVs bad."""
    opts: list[str] = []
    esp_lines = esp_sa_lines(esp)
    if esp_lines:
        opts += ["-o", "esp.enable_encryption_decode:TRUE"]
        if check_icv:
            opts += ["-o", "esp.enable_authentication_check:TRUE"]
        for line in esp_lines:
            opts += ["-o", f"uat:esp_sa:{line}"]
    for line in ikev2_lines(ike):
        opts += ["-o", f"uat:ikev2_decryption_table:{line}"]
    if udpencap_port is not None:
        opts += ["-d", f"udp.port=={udpencap_port},udpencap"]
    return opts


def read_esp_sa(path: PathLike) -> list[EspSa]:
    """The SAs of a Wireshark ``esp_sa`` UAT file (the format :func:`write_esp_sa` writes:
    ``"IPv4","src","dst","0xSPI","enc","0xKEY","integ","0xKEY"``; one address may be ``*``),
    or of the ``esp_sa`` file inside a directory. Wireshark's integrity "ANY 64 (96, 128, 192,
    256) bit authentication [no checking]" is read as is: such an SA's ICV is skipped, not
    checked. The table has no column for extended sequence numbers: the decryptor finds them
    by the ICV (:class:`ipsec_nflog.ipsec.esp.EspDecryptor`). Comment lines (``#``) and
    blank lines are skipped; a record that cannot be read raises ValueError naming the file
    and line."""
    p = os.fspath(path)
    if os.path.isdir(p):
        p = os.path.join(p, ESP_SA_FILE)
    out: list[EspSa] = []
    with open_log(p) as lines:
        try:
            for lineno, row in enumerate(csv.reader(lines), 1):
                if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                    continue
                try:
                    out.append(_esp_sa_row(row))
                except (ValueError, IndexError) as e:
                    raise ValueError(f"{p}:{lineno}: not an esp_sa record ({e})") from None
        except csv.Error as e:
            raise ValueError(f"{p}: not an esp_sa file ({e})") from None
        if lines.warnings():
            raise ValueError(f"{p}: not an esp_sa file ({'; '.join(lines.warnings())})")
    return out


def _esp_sa_row(row: list[str]) -> EspSa:
    if len(row) < 8:
        raise ValueError(f"{len(row)} fields, expected 8")
    _family, src, dst, spi_text, enc, enc_key, integ, integ_key = (c.strip() for c in row[:8])
    if spi_text == "*":
        raise ValueError("wildcard SPIs are not supported")
    if not (is_address(src) or is_address(dst)) or not all(
            is_address(a) or a == "*" for a in (src, dst)):
        raise ValueError(f"{src!r} > {dst!r} are not IP addresses (one may be '*')")
    return EspSa(src=src, dst=dst, spi=int(spi_text, 0), encryption=enc,
                 encryption_key=key_from_text(enc_key), integrity=integ,
                 integrity_key=key_from_text(integ_key), source="esp_sa")
