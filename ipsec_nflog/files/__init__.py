"""Capture files, pure Python: pcap/pcapng/raw writers and rotation (``writer``), the file
layouts (``format``), safe creation of output files (``durable``) and the reader
(``reader``). Never imports the compiled core."""

from __future__ import annotations

from ipsec_nflog.files.format import CaptureFileError
from ipsec_nflog.files.reader import read_capture
from ipsec_nflog.files.writer import default_format, open_writer

__all__ = ["CaptureFileError", "default_format", "open_writer", "read_capture"]
