"""Capture files, pure Python. Writing: ``writer`` (``open_writer``, ``CaptureWriter``) puts
together an encoder per format (``encoders``: pcap, raw; ``pcapng``), the durable file
(``durable``: safe creation, one writev per batch, whole records on failure, background
fdatasync), ``rotation`` (-C/-G/-W) and the ``options``. Reading: ``reader``. The layouts:
``format``. Never imports the compiled core."""

from __future__ import annotations

from ipsec_nflog.files.format import CaptureFileError
from ipsec_nflog.files.reader import read_capture
from ipsec_nflog.files.writer import default_format, open_writer

__all__ = ["CaptureFileError", "default_format", "open_writer", "read_capture"]
