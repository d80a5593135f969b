"""``ipsec-nflog read FILE``: one line per packet of a capture file (ours or tcpdump's;
``-`` is standard input, never seeked), optionally with ESP decrypted.

Every string from the file or a key log is printed through ``summary.printable``.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ipsec_nflog.cli.errors import EXIT_OK, CliError
from ipsec_nflog.cli.filters import Kept, expression_of, hooks_of

if TYPE_CHECKING:
    from ipsec_nflog.files.reader import FilePacket
    from ipsec_nflog.ipsec.decrypt import DecryptedWriter, EspDecryptor
    from ipsec_nflog.nflog.packet import Packet

__all__ = ["cmd_read"]


def cmd_read(args: argparse.Namespace) -> int:
    if args.file == "-" and "-" in args.log:
        raise CliError("read - and --log - cannot both read standard input")
    kept = Kept(expression_of(args))  # a bad expression stops us before anything opens
    decryptor = _load_decryptor(args)
    if decryptor is None and args.write_decrypted:
        raise CliError("--write-decrypted needs --keys DIR, --log FILE or --esp-secrets")
    writer = _open_decrypted_writer(args) if args.write_decrypted else None
    try:
        written = _print_packets(args, kept, decryptor, writer)
    finally:
        if writer is not None:
            writer.close()
    if decryptor is not None:
        sys.stdout.flush()
        _report_decryption(args, decryptor, writer, written)
    return EXIT_OK


def _load_decryptor(args: argparse.Namespace) -> EspDecryptor | None:
    """The ESP keys of --keys, --log and --esp-secrets (None: none given); its warnings
    printed."""
    if not _key_sources(args):
        return None
    from ipsec_nflog.ipsec.decrypt import EspDecryptor
    from ipsec_nflog.nflog.summary import printable

    try:
        decryptor = EspDecryptor.from_files(esp_sa=args.keys, logs=args.log,
                                            esp_secrets=args.esp_secrets,
                                            skip_unsupported=True)
    except OSError as e:
        raise CliError(f"cannot read keys from {e.filename or args.keys}: "
                       f"{e.strerror or e}") from None
    for w in decryptor.warnings:
        print(printable(f"ipsec-nflog: warning: {w}"), file=sys.stderr)
    if not len(decryptor):
        raise CliError("no usable ESP keys in " + ", ".join(_key_sources(args)))
    return decryptor


def _key_sources(args: argparse.Namespace) -> list[str]:
    """Where the keys come from, for messages (an --esp-secrets spec holds secrets: only the
    option is named)."""
    return [*([args.keys] if args.keys else []), *args.log,
            *(["--esp-secrets"] if args.esp_secrets is not None else [])]


def _open_decrypted_writer(args: argparse.Namespace) -> DecryptedWriter:
    from ipsec_nflog.ipsec.decrypt import DecryptedWriter

    try:
        return DecryptedWriter(args.write_decrypted, overwrite=args.overwrite)
    except FileExistsError:
        raise CliError(f"{args.write_decrypted} already exists (--overwrite replaces it)"
                       ) from None


def _print_packets(args: argparse.Namespace, kept: Kept, decryptor: EspDecryptor | None,
                   writer: DecryptedWriter | None) -> int:
    """Print the wanted packets (and what decryption made of them); returns how many
    decrypted packets went to ``writer``."""
    from ipsec_nflog.files import read_capture
    from ipsec_nflog.nflog.summary import summarize

    shown = written = 0
    out = sys.stdout
    hooks = hooks_of(args)
    for pkt in read_capture(sys.stdin.buffer if args.file == "-" else args.file):
        if not _wanted(args, pkt, hooks) or not kept(pkt):
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
    return written


def _wanted(args: argparse.Namespace, pkt: Packet | FilePacket,
            hooks: tuple[str, ...] | None) -> bool:
    """--group, --prefix, --hook, --indev and --outdev (devices by index: a file's names
    are not this host's)."""
    if args.group is not None and pkt.group not in args.group:
        return False
    if args.prefix is not None and pkt.prefix != args.prefix:
        return False
    for want, have in ((args.indev, pkt.indev), (args.outdev, pkt.outdev)):
        if want is not None and str(have) != want.removeprefix("if"):
            return False
    return hooks is None or pkt.hook_name in hooks


def _report_decryption(args: argparse.Namespace, decryptor: EspDecryptor,
                       writer: DecryptedWriter | None, written: int) -> None:
    """What decryption did, on stderr."""
    from ipsec_nflog.nflog.summary import printable

    tail = ""
    if writer is not None:
        written -= writer.records_skipped
        tail = f"; wrote {written} to {args.write_decrypted}"
        if writer.records_skipped:
            tail += (f" ({writer.records_skipped} not written: timestamp beyond the pcap "
                     "format's 32-bit seconds)")
    print(printable(f"{decryptor.stats.summary()}{tail}"), file=sys.stderr)
