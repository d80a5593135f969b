"""ipsec_nflog.ipsec.charon_log: the parser keeps each IKE_SA's state apart, and reading a
file adds what the bounded reader left out (committed fixtures, no root)."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

from ipsec_nflog.ipsec.charon_log import CharonLogParser, parse_charon_log, read_charon_log
from ipsec_nflog.ipsec.sa import LogKeys

FIX = Path(__file__).resolve().parents[1] / "fixtures"
_DUMP_ROW = re.compile(r"\] (?:<[^>]*> )?\s*\d+: [0-9A-F]{2} ")


def messages(text: str) -> list[list[str]]:
    """The log's messages: each line, with the rows of a hex dump kept with its header."""
    out: list[list[str]] = []
    for line in text.splitlines():
        if out and _DUMP_ROW.search(line):
            out[-1].append(line)
        else:
            out.append([line])
    return out


def as_second_run(text: str) -> str:
    """The same log as another IKE_SA (unique id 2, name u), on the same charon threads."""
    return text.replace("<t|1>", "<u|2>").replace("<1>", "<2>")


def esp_lines(found: LogKeys) -> list[str]:
    return sorted(s.uat_line() for s in found.esp)


def test_two_ike_sas_negotiated_at_once_keep_their_own_keys() -> None:
    """Messages of two IKE_SAs interleaved (told apart by their ike_name tags): each SA gets the
    SPIs, keys and CHILD_SAs of its own run, as when its log is parsed alone."""
    cbc = (FIX / "keys_cbc_charon_initiator.log").read_text()
    gcm = as_second_run((FIX / "keys_gcm_charon_initiator.log").read_text())
    alone_cbc, alone_gcm = parse_charon_log(cbc), parse_charon_log(gcm)
    assert len(alone_cbc.esp) == len(alone_gcm.esp) == 2
    parser = CharonLogParser()
    none: list[str] = []
    for a, b in itertools.zip_longest(messages(cbc), messages(gcm), fillvalue=none):
        for line in [*a, *b]:
            parser.feed(line)
    both = parser.finish()
    assert {s.name: s.uat_line() for s in both.ike} == {
        "t": alone_cbc.ike[0].uat_line(), "u": alone_gcm.ike[0].uat_line()}
    assert esp_lines(both) == sorted([*esp_lines(alone_cbc), *esp_lines(alone_gcm)])
    assert both.warnings == []


def test_a_dump_cut_short_is_a_warning_not_a_key() -> None:
    lines = (FIX / "keys_cbc_charon_initiator.log").read_text().splitlines()
    head = next(i for i, line in enumerate(lines) if "Sk_ei secret =>" in line)
    found = parse_charon_log("\n".join(lines[:head + 1] + lines[head + 2:]))
    assert "truncated hex dump for 'Sk_ei secret'" in found.warnings
    assert found.ike == []


def test_reading_a_file_adds_the_reader_warnings_after_the_parser_ones(tmp_path: Path) -> None:
    lines = (FIX / "keys_cbc_charon_initiator.log").read_text().splitlines(keepends=True)
    head = next(i for i, line in enumerate(lines) if "Sk_ei secret =>" in line)
    path = tmp_path / "charon.log"
    path.write_text("".join(lines[:head + 1] + lines[head + 2:]) + "x" * 70_000 + "\n")
    found = read_charon_log(path)
    assert found.warnings == ["truncated hex dump for 'Sk_ei secret'",
                              "1 line(s) longer than 65536 bytes skipped"]
    assert esp_lines(found) == esp_lines(parse_charon_log("".join(lines)))
