"""Wireshark decryption keys for IKEv2 and ESP, from charon logs and ``ip xfrm state``.

The reference article: IKE keys are in charon's log at level 4 of the ``ike`` subsystem, ESP
keys at level 4 of ``chd`` or in ``ip xfrm state``; strongSwan's save-keys plugin (not shipped
by Debian 12) writes them as Wireshark's ``esp_sa`` and ``ikev2_decryption_table`` files. This
package does the same from the log (and from ``ip xfrm state``), byte for byte in save-keys'
format, and renders the matching ``tshark -o uat:...`` options.

Pure Python; it never imports the compiled core. Charon settings that make a log usable::

    charon { filelog { keys { path = /var/log/charon-keys.log
                              ike = 4
                              chd = 4
                              cfg = 2      # "selected proposal" lines (optional)
                              ike_name = yes } } }

``ike_name = yes`` lets IKE keys be matched to their SPIs when several IKE_SAs are negotiated
at once; without it, keys are matched to the most recent SPIs in the log. A log at these
levels contains secrets: keep it (and the files written here, mode 0600) private.

Logs (and ``esp_sa`` / ``ip xfrm state`` files) are streamed line by line, never read whole:
:class:`LogLines` bounds a line to ``MAX_LOG_LINE`` bytes (longer lines are skipped and
counted in a warning), and a file with no line break in ``MAX_LOG_GAP`` bytes is not a text
log (``/dev/zero``): reading it stops there with a warning. Memory stays bounded whatever the
input. Keys and warnings printed on the command line go through
:func:`ipsec_nflog.nflog.summary.printable` (a log is untrusted input), and output files are
created without following planted links (:mod:`ipsec_nflog.files.durable`).

This module gathers the public names of the pieces: :mod:`ipsec_nflog.ipsec.sa` (the model and
its save-keys lines), :mod:`~ipsec_nflog.ipsec.charon_log` (the log parser),
:mod:`~ipsec_nflog.ipsec.xfrm` (``ip xfrm state``), :mod:`~ipsec_nflog.ipsec.wireshark` (the
tables and tshark options), :mod:`~ipsec_nflog.ipsec.tcpdump_secrets` (tcpdump's ``-E``
secrets), :mod:`~ipsec_nflog.ipsec.algorithms` (Wireshark's algorithm names) and
:mod:`~ipsec_nflog.ipsec.loglines` (bounded reading). The ``keys`` command is
:mod:`ipsec_nflog.cli.keys`.

Limitations: IKEv1 is not handled; an IKE_SA created by an IKE rekeying has no logged SPIs
(no NAT-D), so it is reported with the SPIs unknown and left out of the IKEv2 table.
"""

from __future__ import annotations

from ipsec_nflog.ipsec.charon_log import (
    CharonLogParser,
    parse_charon_log,
    read_charon_log,
    read_charon_logs,
)
from ipsec_nflog.ipsec.loglines import MAX_LOG_GAP, MAX_LOG_LINE, LogLines, open_log
from ipsec_nflog.ipsec.sa import (
    EspSa,
    IkeSa,
    KeyExtractionError,
    LogKeys,
    esp_sa_line,
    ikev2_line,
)
from ipsec_nflog.ipsec.tcpdump_secrets import (
    load_tcpdump_secrets,
    parse_tcpdump_secrets,
    read_tcpdump_secrets,
)
from ipsec_nflog.ipsec.wireshark import (
    ESP_SA_FILE,
    IKEV2_FILE,
    esp_sa_lines,
    ikev2_lines,
    read_esp_sa,
    tshark_options,
    write_esp_sa,
    write_ikev2_decryption_table,
    write_wireshark_keys,
)
from ipsec_nflog.ipsec.xfrm import parse_xfrm_state, read_xfrm_state, xfrm_state_argv

__all__ = [
    "ESP_SA_FILE",
    "IKEV2_FILE",
    "MAX_LOG_GAP",
    "MAX_LOG_LINE",
    "CharonLogParser",
    "EspSa",
    "IkeSa",
    "KeyExtractionError",
    "LogKeys",
    "LogLines",
    "esp_sa_line",
    "esp_sa_lines",
    "ikev2_line",
    "ikev2_lines",
    "load_tcpdump_secrets",
    "open_log",
    "parse_charon_log",
    "parse_tcpdump_secrets",
    "parse_xfrm_state",
    "read_charon_log",
    "read_charon_logs",
    "read_esp_sa",
    "read_tcpdump_secrets",
    "read_xfrm_state",
    "tshark_options",
    "write_esp_sa",
    "write_ikev2_decryption_table",
    "write_wireshark_keys",
    "xfrm_state_argv",
]
