"""Decrypt ESP in our own reader: AES-CBC + HMAC (SHA-1/SHA-2) and AES-GCM (RFC 4106).

Keys come from :mod:`ipsec_nflog.ipsec.keys` (charon logs, ``ip xfrm state``), from a Wireshark
``esp_sa`` file / a directory written by :func:`ipsec_nflog.ipsec.keys.write_wireshark_keys`,
or from tcpdump's ``-E`` secrets (:meth:`EspDecryptor.from_tcpdump_secrets`)::

    from ipsec_nflog.ipsec import decrypt

    from ipsec_nflog.files import writer as pcapfile

    dec = decrypt.EspDecryptor.from_charon_logs(["/var/log/charon-keys.log"])
    for pkt in pcapfile.read_capture("ipsec.pcap"):
        r = dec.decrypt(pkt.payload)         # None: not ESP
        if r is not None and r.ok:
            print(r.spi, r.seq, r.next_header, r.inner_ip)   # the inner IP packet (dpkt)

:meth:`EspDecryptor.decrypt` takes one IP packet (IPv4 or IPv6) holding ESP directly
(protocol 50) or ESP-in-UDP (RFC 3948, port 4500 by default; IKE behind the non-ESP marker
and NAT keepalives are not ESP and give ``None``). It finds the SA by SPI and destination
address, verifies the ICV (``hmac.compare_digest``; GCM's tag by the AEAD itself), decrypts,
checks the self-describing padding (1, 2, 3, ...) and returns a :class:`DecryptResult`. A
packet never raises: an unknown SPI, a bad ICV, bad padding or a truncated packet is a
result with that ``status``. Only bad key material raises (:class:`UnsupportedSaError`, a
``ValueError``), when the decryptor is built.

Algorithms (Wireshark's names, as :mod:`ipsec_nflog.ipsec.keys` writes them):

- encryption: ``AES-CBC [RFC3602]`` (128/192/256-bit keys), ``AES-GCM with 8/12/16 octet ICV
  [RFC4106]`` (key || 4-byte salt; nonce = salt || IV, AAD = SPI || sequence number),
  ``AES-CTR [RFC3686]`` (key || 4-byte nonce), ``NULL``;
- integrity: ``HMAC-SHA-1-96``, ``HMAC-MD5-96``, ``HMAC-SHA-256-128``, ``HMAC-SHA-256-96``,
  ``HMAC-SHA-384-192``, ``HMAC-SHA-512-256``, ``NULL``, and Wireshark's ``ANY 64/96/128/192/256
  bit authentication [no checking]``: that many ICV bits are skipped, not checked (so are
  tcpdump's ``-hmac96`` ones), and the packet's label says ``ICV not checked``; strongSwan
  save-keys' ``AES-GCM [RFC4106]`` with ``ANY n bit`` is AES-GCM with an n-bit tag.

Extended sequence numbers (RFC 4303): the high 32 bits are not on the wire, but the ICV covers
them; they are inferred per SA as RFC 4303 appendix A2.2 does (:mod:`ipsec_nflog.ipsec.esn`),
for SAs marked ``esn`` (charon's ``EXT_SEQ`` proposal, ``flag esn`` in ``ip xfrm state``) and
for any SA whose ICV verifies only with them.

Limitations: no 3DES/CAST/Blowfish/Twofish; fragmented outer packets are not reassembled
(the first fragment reports ``fragment``).

The pieces: :mod:`ipsec_nflog.ipsec.esp` (the decryptor and its results),
:mod:`~ipsec_nflog.ipsec.esp_packet` (finding ESP in an IP packet),
:mod:`~ipsec_nflog.ipsec.esp_suite` (algorithms and key checks), :mod:`~ipsec_nflog.ipsec.esn`
(extended sequence numbers), :mod:`~ipsec_nflog.ipsec.tcpdump_secrets` (``-E`` secrets); this
module gathers their public names and holds :class:`DecryptedWriter`.

Pure Python plus the ``cryptography`` package; it never imports the compiled core.
"""

from __future__ import annotations

from ipsec_nflog.files.encoders import PcapEncoder
from ipsec_nflog.files.format import LINKTYPE_RAW
from ipsec_nflog.files.options import WriterOptions
from ipsec_nflog.files.writer import CaptureWriter
from ipsec_nflog.ipsec.charon_log import read_charon_logs
from ipsec_nflog.ipsec.esp import (
    BAD_ICV,
    BAD_PADDING,
    FRAGMENT,
    MALFORMED,
    OK,
    UNKNOWN_SPI,
    DecryptResult,
    DecryptStats,
    EspDecryptor,
)
from ipsec_nflog.ipsec.esp_packet import NATT_PORT, PROTO_ESP, PROTO_UDP
from ipsec_nflog.ipsec.esp_suite import (
    SUPPORTED_ENCRYPTION,
    SUPPORTED_INTEGRITY,
    UnsupportedSaError,
)
from ipsec_nflog.ipsec.loglines import PathLike
from ipsec_nflog.nflog.codec import RECORD_HEADER

__all__ = [
    "BAD_ICV",
    "BAD_PADDING",
    "FRAGMENT",
    "MALFORMED",
    "NATT_PORT",
    "OK",
    "PROTO_ESP",
    "PROTO_UDP",
    "SUPPORTED_ENCRYPTION",
    "SUPPORTED_INTEGRITY",
    "UNKNOWN_SPI",
    "DecryptResult",
    "DecryptStats",
    "DecryptedWriter",
    "EspDecryptor",
    "UnsupportedSaError",
    "read_charon_logs",
]


# ---- writing the decrypted packets -----------------------------------------------------------

class DecryptedWriter:
    """LINKTYPE_RAW pcap of decrypted inner IP packets: a capture writer (file safety, mode
    0600 and :class:`~ipsec_nflog.files.options.WriterOptions` as for
    :func:`ipsec_nflog.files.writer.open_writer`) fed with records built here.
    :meth:`write_packet` buffers; :meth:`close` writes the rest. A packet whose timestamp a
    pcap record cannot hold (pcapng allows 64-bit ones) is not written and is counted in
    ``records_skipped``; packets still buffered when a write failed count in
    ``records_lost``."""

    _BATCH = 256

    def __init__(self, path: PathLike, options: WriterOptions | None = None, /,
                 **changes: object) -> None:
        options = WriterOptions.merge(options, changes)
        # The records are LINKTYPE_RAW pcap records already: the pcap encoder passes them on.
        self._writer = CaptureWriter(path, PcapEncoder(options.snaplen, LINKTYPE_RAW), options)
        self._pending = bytearray()
        self._npending = 0
        self._unwritten = 0  # buffered when the writer failed
        self.records_skipped = 0

    @property
    def path(self) -> str:
        return self._writer.path

    @property
    def files(self) -> list[str]:
        return self._writer.files

    @property
    def records_written(self) -> int:
        return self._writer.records_written

    @property
    def records_lost(self) -> int:
        return self._writer.records_lost + self._unwritten

    @property
    def closed(self) -> bool:
        return self._writer.closed

    def write_packet(self, ts_sec: int, ts_usec: int, ip_packet: bytes) -> None:
        """Queue one IP packet with its (outer packet's) timestamp."""
        if not (0 <= ts_sec <= 0xFFFFFFFF and 0 <= ts_usec < 1_000_000):
            self.records_skipped += 1
            return
        self._pending += RECORD_HEADER.pack(ts_sec, ts_usec, len(ip_packet), len(ip_packet))
        self._pending += ip_packet
        self._npending += 1
        if self._npending >= self._BATCH:
            self.flush_pending()

    def flush_pending(self) -> None:
        """Write the buffered packets now."""
        if self._npending:
            data, n = bytes(self._pending), self._npending
            self._pending.clear()
            self._npending = 0
            self._writer.write_records(data, n)

    def close(self, stats: object = None) -> None:
        """Write what is buffered, then close the file. Idempotent."""
        writer = self._writer
        if writer.failed:
            self._unwritten += self._npending
            self._npending = 0
        elif not writer.closed:
            try:
                self.flush_pending()
            except BaseException:
                writer.close(stats)
                raise
        writer.close(stats)

    def __enter__(self) -> DecryptedWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
