"""The command line without root: every capture/read/rules option parses into what the
commands use (checked through the commands' own converters), bad values are one line and
exit status 2 before anything is created, and every --help documents every option in
plain text."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipsec_nflog import rules
from ipsec_nflog.capture.config import LOW_LATENCY_BUDGET, CaptureConfig
from ipsec_nflog.cli.capture import (
    FILE_HANDOVER_DELAY,
    FILE_RING_SIZE,
    capture_config,
    cmd_capture,
)
from ipsec_nflog.cli.demo import cmd_demo
from ipsec_nflog.cli.main import main
from ipsec_nflog.cli.parser import build_parser
from ipsec_nflog.cli.read import cmd_read
from ipsec_nflog.cli.rules import cmd_rules, rule_options
from ipsec_nflog.cli.stats import cmd_stats

SUBCOMMANDS = ["capture", "read", "rules", "stats", "keys", "demo", "extcap"]


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """main(argv) in this process: (exit status, stdout, stderr); a parser exit counts."""
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


# -- capture ---------------------------------------------------------------------------

def test_capture_defaults() -> None:
    args = parse("capture", "-g", "5")
    assert args.func is cmd_capture
    assert (args.group, args.write, args.snaplen, args.count, args.duration) == (
        [[5]], None, 0, None, None)
    assert (args.file_size, args.rotate_seconds, args.file_count) == (None, None, None)
    assert not (args.packet_buffered or args.pcap or args.pcapng or args.raw or
                args.overwrite or args.fail_on_drop or args.low_latency or args.quiet or
                args.strict)
    assert (args.user, args.netns, args.rules) == (None, None, None)
    assert (args.qthreshold, args.flush_timeout, args.nlbufsiz, args.rcvbuf,
            args.ring_size) == (None, None, None, None, None)
    assert capture_config(args) == CaptureConfig(groups=(5,))


@pytest.mark.parametrize("argv,attr,value", [
    (["-g", "5", "-g", "6"], "group", [[5], [6]]),
    (["-g", "nflog:5,6"], "group", [[5, 6]]),
    (["-i", "nflog:7", "-g", "0"], "group", [[7], [0]]),
    (["-g", "65535"], "group", [[65535]]),
    (["-w", "out.pcap"], "write", "out.pcap"),
    (["-w", "-"], "write", "-"),
    (["--write", "x.pcapng"], "write", "x.pcapng"),
    (["-s", "96"], "snaplen", 96),
    (["--snaplen", "0"], "snaplen", 0),
    (["-c", "25"], "count", 25),
    (["--duration", "1.5"], "duration", 1.5),
    (["-C", "2"], "file_size", 2),
    (["-G", "60"], "rotate_seconds", 60),
    (["-W", "3"], "file_count", 3),
    (["-U"], "packet_buffered", True),
    (["--packet-buffered"], "packet_buffered", True),
    (["--pcap"], "pcap", True),
    (["--pcapng"], "pcapng", True),
    (["--raw"], "raw", True),
    (["--overwrite"], "overwrite", True),
    (["-Z", "nobody"], "user", "nobody"),
    (["--netns", "blue"], "netns", "blue"),
    (["--rules", "all"], "rules", "all"),
    (["--fail-on-drop"], "fail_on_drop", True),
    (["--low-latency"], "low_latency", True),
    (["--qthreshold", "10"], "qthreshold", 10),
    (["--flush-timeout", "0"], "flush_timeout", 0.0),
    (["--flush-timeout", "0.5"], "flush_timeout", 0.5),
    (["--nlbufsiz", "64K"], "nlbufsiz", 65536),
    (["--nlbufsiz", "8192"], "nlbufsiz", 8192),
    (["--rcvbuf", "1M"], "rcvbuf", 1024**2),
    (["--rcvbuf", "2mb"], "rcvbuf", 2 * 1024**2),
    (["--ring-size", "1GiB"], "ring_size", 1024**3),
    (["-q"], "quiet", True),
    (["--quiet"], "quiet", True),
])
def test_capture_option_parses(argv: list[str], attr: str, value: object) -> None:
    args = parse("capture", *(argv if "-g" in argv or "-i" in argv else ["-g", "5", *argv]))
    assert getattr(args, attr) == value


def test_capture_options_reach_the_capture_config() -> None:
    args = parse("capture", "-g", "5", "-i", "nflog:6,7", "-s", "96", "--netns", "blue",
                 "--qthreshold", "10", "--flush-timeout", "0.5", "--nlbufsiz", "64K",
                 "--rcvbuf", "1M", "--ring-size", "8M")
    assert capture_config(args) == CaptureConfig(
        groups=(5, 6, 7), snaplen=96, netns="blue", qthreshold=10, flush_timeout=0.5,
        nlbufsiz=65536, rcvbuf=1024**2, ring_size=8 * 1024**2)


def test_capture_to_a_file_gets_the_large_ring_unless_one_is_given() -> None:
    assert capture_config(parse("capture", "-g", "5", "-w", "x.pcap")).ring_size == \
        FILE_RING_SIZE
    assert capture_config(parse("capture", "-g", "5", "-w", "x.pcap", "--ring-size",
                                "4M")).ring_size == 4 * 1024**2


def test_low_latency_config_keeps_explicit_values() -> None:
    cfg = capture_config(parse("capture", "-g", "5", "--low-latency"))
    assert (cfg.qthreshold, cfg.flush_timeout) == (1, 0.0)
    cfg = capture_config(parse("capture", "-g", "5", "--low-latency", "--qthreshold", "4"))
    assert (cfg.qthreshold, cfg.flush_timeout) == (4, 0.0)
    assert cfg.latency_budget == LOW_LATENCY_BUDGET  # 4 is the floor it adapts from
    cfg = capture_config(parse("capture", "-g", "5", "--low-latency", "--flush-timeout", "0.5"))
    assert (cfg.flush_timeout, cfg.latency_budget) == (0.5, 0)  # a held batch: fixed


def test_low_latency_to_a_file_batches_the_hand_over_unless_packet_buffered() -> None:
    # its timestamps are taken when the reader receives: the writer may wake less often
    cfg = capture_config(parse("capture", "-g", "5", "--low-latency", "-w", "x.pcap"))
    assert (cfg.qthreshold, cfg.handover_delay) == (1, FILE_HANDOVER_DELAY)
    cfg = capture_config(parse("capture", "-g", "5", "--low-latency", "-U", "-w", "x.pcap"))
    assert cfg.handover_delay == 0


def test_rule_options_parse_into_the_preset_options() -> None:
    args = parse("capture", "-g", "5", "--rules", "all", "--prefix", "p1", "--family", "ipv4",
                 "--backend", "nft", "--reqid", "3", "--spi", "0x10", "--proto", "esp",
                 "--mode", "tunnel", "--tunnel-src", "10.0.0.1", "--tunnel-dst", "10.0.0.2",
                 "--strict", "--interface", "eth0", "--ike-port", "5000", "--ike-port",
                 "5001", "--nflog-threshold", "8")
    assert rule_options(args) == {
        "prefix": "p1", "family": "ipv4", "backend": "nft", "reqid": 3, "spi": 16,
        "proto": "esp", "mode": "tunnel", "tunnel_src": "10.0.0.1",
        "tunnel_dst": "10.0.0.2", "strict": True, "interface": "eth0",
        "ike_ports": (5000, 5001), "threshold": 8}


def test_rule_options_not_given_keep_the_presets_defaults() -> None:
    assert rule_options(parse("capture", "-g", "5")) == {"prefix": None, "family": "both"}
    assert parse("capture", "-g", "5", "--spi", "4096").spi == 4096


# -- read ------------------------------------------------------------------------------

def test_read_defaults() -> None:
    args = parse("read", "x.pcap")
    assert args.func is cmd_read
    assert (args.file, args.group, args.prefix, args.hook, args.count, args.utc) == (
        "x.pcap", None, None, None, None, False)
    assert (args.keys, args.log, args.write_decrypted, args.overwrite) == (
        None, [], None, False)


@pytest.mark.parametrize("argv,attr,value", [
    (["-"], "file", "-"),
    (["x", "--group", "5"], "group", [5]),
    (["x", "--group", "nflog:5,6"], "group", [5, 6]),
    (["x", "--prefix", "ike-esp-in"], "prefix", "ike-esp-in"),
    (["x", "--hook", "output"], "hook", "OUTPUT"),
    (["x", "-c", "3"], "count", 3),
    (["x", "--count", "3"], "count", 3),
    (["x", "--utc"], "utc", True),
    (["x", "--keys", "dir"], "keys", "dir"),
    (["x", "--log", "a.log", "--log", "-"], "log", ["a.log", "-"]),
    (["x", "--write-decrypted", "in.pcap"], "write_decrypted", "in.pcap"),
    (["x", "--overwrite"], "overwrite", True),
])
def test_read_option_parses(argv: list[str], attr: str, value: object) -> None:
    assert getattr(parse("read", *argv), attr) == value


# -- rules, stats, demo ----------------------------------------------------------------

@pytest.mark.parametrize("action", ["show", "install", "remove", "cleanup"])
def test_rules_actions(action: str) -> None:
    args = parse("rules", action)
    assert (args.func, args.action, args.preset, args.group, args.netns, args.tag) == (
        cmd_rules, action, None, 5, None, None)


def test_rules_options_parse() -> None:
    args = parse("rules", "remove", "--tag", "keep-abc", "--netns", "blue")
    assert (args.tag, args.netns) == ("keep-abc", "blue")
    args = parse("rules", "install", "local", "-g", "9", "--prefix", "loc", "--reqid", "2")
    assert (args.preset, args.group) == ("local", 9)
    assert rule_options(args) == {"prefix": "loc", "family": "both", "reqid": 2}


def test_rules_show_of_a_preset_renders_the_options(capsys: pytest.CaptureFixture[str]
                                                    ) -> None:
    """The parsed options reach the renderer: the printed commands carry them."""
    code, out, err = run_main(capsys, "rules", "show", "ike-esp-in", "-g", "9", "--prefix",
                              "seen-here", "--family", "ipv4", "--backend", "iptables")
    assert (code, err) == (0, "")
    want = rules.render("ike-esp-in", backend="iptables", group=9, prefix="seen-here",
                        family="ipv4")
    assert untagged(out) == untagged(want if want.endswith("\n") else want + "\n")
    assert "--nflog-group 9" in out and '--nflog-prefix "seen-here"' in out
    assert "ip6tables" not in out


def untagged(commands: str) -> str:
    """Rendered commands without their owner tags (a new one per rendering)."""
    return re.sub(r"ipsec_nflog:[\w.-]+", "ipsec_nflog:TAG", commands)


def test_stats_and_demo_options() -> None:
    args = parse("stats", "--netns", "blue")
    assert (args.func, args.netns) == (cmd_stats, "blue")
    args = parse("demo")
    assert (args.func, args.write, args.group) == (cmd_demo, "ipsec-nflog-demo.pcap", 5)
    args = parse("demo", "-w", "d.pcap", "-g", "8")
    assert (args.write, args.group) == ("d.pcap", 8)


# -- bad values: one line, status 2, nothing created -----------------------------------

@pytest.mark.parametrize("argv,needle", [
    (["capture", "-g", "70000"], "invalid NFLOG group '70000'"),
    (["capture", "-g", "5,70000"], "invalid NFLOG group '5,70000'"),
    (["capture", "-i", "nflog:x"], "invalid NFLOG group 'nflog:x'"),
    (["capture", "-g", "-1"], "invalid NFLOG group '-1'"),
    (["capture", "-g", "5", "--duration", "nan"], "'nan'"),
    (["capture", "-g", "5", "--duration", "0"], "> 0"),
    (["capture", "-g", "5", "--duration", "inf"], "'inf'"),
    (["capture", "-g", "5", "--flush-timeout=-1"], "'-1'"),
    (["capture", "-g", "5", "--nlbufsiz", "12Q"], "invalid size '12Q'"),
    (["capture", "-g", "5", "--rcvbuf", "12Q"], "invalid size '12Q'"),
    (["capture", "-g", "5", "--ring-size", "12Q"], "invalid size '12Q'"),
    (["capture", "-g", "5", "-w", ""], "file name is empty"),
    (["capture", "-g", "5", "-c", "0"], "positive integer: '0'"),
    (["capture", "-g", "5", "-C", "-3"], "positive integer: '-3'"),
    (["capture", "-g", "5", "-s", "x"], "invalid int value: 'x'"),
    (["capture", "-g", "5", "--pcap", "--raw"], "not allowed with argument"),
    (["capture", "-g", "5", "--spi", "zz"], "invalid SPI 'zz'"),
    (["capture", "-g", "5", "--family", "ipx"], "invalid choice: 'ipx'"),
    (["read", ""], "file name is empty"),
    (["read", "x", "--write-decrypted", ""], "file name is empty"),
    (["read", "x", "-c", "-1"], "positive integer: '-1'"),
    (["read", "x", "--group", "70000"], "invalid NFLOG group"),
    (["rules", "frobnicate"], "invalid choice: 'frobnicate'"),
    (["rules", "show", "-g", "five"], "invalid int value: 'five'"),
    (["demo", "-w", ""], "file name is empty"),
    (["nosuchcommand"], "invalid choice: 'nosuchcommand'"),
    ([], "required: command"),
])
def test_bad_argument_is_one_line_and_status_2(capsys: pytest.CaptureFixture[str],
                                               argv: list[str], needle: str) -> None:
    code, out, err = run_main(capsys, *argv)
    assert code == 2 and out == ""
    [line] = err.splitlines()
    assert line.startswith("ipsec-nflog: error: ") and line.endswith("(see --help)"), line
    assert needle in line


@pytest.mark.parametrize("argv,needle", [
    (["-s", "-1"], "snaplen"),
    (["-s", "300000"], "snaplen"),
    (["--qthreshold", "0"], "qthreshold"),
    (["--nlbufsiz", "1K"], "nlbufsiz"),
    (["--flush-timeout", "11"], "flush_timeout"),
])
def test_bad_capture_value_is_refused_before_anything_exists(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str],
        needle: str) -> None:
    """Values the parser lets through are checked by CaptureConfig, still before any rule,
    socket or file exists (the command would need root to get further)."""
    out_file = tmp_path / "never.pcap"
    code, out, err = run_main(capsys, "capture", "-g", "5", "-w", str(out_file),
                              "--rules", "all", *argv)
    assert code == 2 and out == ""
    [line] = err.splitlines()
    assert line.startswith("ipsec-nflog: ") and needle in line, line
    assert not out_file.exists()


def test_no_group_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, "capture", "-w", "x.pcap")
    assert code == 2
    assert err.splitlines() == ["ipsec-nflog: no NFLOG group given: use -g N or -i nflog:N"]


def test_the_installed_command_refuses_the_same_way() -> None:
    """The console script (or python -m ipsec_nflog): status 2, one line, no traceback."""
    script = Path(sys.executable).parent / "ipsec-nflog"
    for cmd in ([str(script)] if script.exists() else [], [sys.executable, "-m",
                                                           "ipsec_nflog"]):
        if not cmd:
            continue
        r = subprocess.run([*cmd, "capture", "-g", "70000"], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 2 and r.stdout == ""
        assert r.stderr.splitlines() == [
            "ipsec-nflog: error: argument -g/--group: invalid NFLOG group '70000': expected "
            "0..65535 or nflog:N (see --help)"]


# -- --help: every option has a help line, in plain text --------------------------------

@pytest.fixture
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("COLUMNS", "1000")  # argparse wraps at the terminal width
    yield


def help_of(capsys: pytest.CaptureFixture[str], *command: str) -> str:
    code, out, err = run_main(capsys, *command, "--help")
    assert (code, err) == (0, "")
    return out


@pytest.mark.usefixtures("wide_terminal")
@pytest.mark.parametrize("command", [[], *([c] for c in SUBCOMMANDS)],
                         ids=["top", *SUBCOMMANDS])
def test_help_documents_every_option_in_plain_text(capsys: pytest.CaptureFixture[str],
                                                   command: list[str]) -> None:
    parser = build_parser()
    if command:
        parser = subparsers(parser)[command[0]]
    text = help_of(capsys, *command)
    lines = text.splitlines()
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            continue
        invocation = formatter._format_action_invocation(action)
        assert action.help and action.help != argparse.SUPPRESS, f"{invocation}: no help"
        helped = " ".join(formatter._expand_help(action).split())
        at = [i for i, ln in enumerate(lines) if ln.strip().startswith(invocation)]
        assert at, f"{invocation} is not listed in:\n{text}"
        # the help follows on the same line, or on the next for a long invocation
        shown = " ".join(" ".join(lines[at[0]:at[0] + 2]).split())
        assert helped in shown, f"no help line for {invocation} in:\n{text}"
    for markup in ("``", ":class:", ":func:", ":mod:", ":meth:"):
        assert markup not in text


def test_every_subcommand_has_a_help_line(capsys: pytest.CaptureFixture[str],
                                          wide_terminal: None) -> None:
    assert set(subparsers(build_parser())) == set(SUBCOMMANDS)
    text = help_of(capsys)
    for name in SUBCOMMANDS:
        assert any(ln.split()[:1] == [name] and len(ln.split()) > 1
                   for ln in text.splitlines()), f"{name} has no help line:\n{text}"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from ipsec_nflog import __version__

    code, out, _ = run_main(capsys, "--version")
    assert (code, out) == (0, f"ipsec-nflog {__version__}\n")


def test_python_dash_m_runs_main() -> None:
    r = subprocess.run([sys.executable, "-m", "ipsec_nflog", "stats", "--help"],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "COLUMNS": "1000"})
    assert r.returncode == 0 and r.stderr == ""
    assert "look in network namespace NAME" in r.stdout


def test_read_checks_its_options_before_reading(capsys: pytest.CaptureFixture[str],
                                                tmp_path: Path) -> None:
    code, _, err = run_main(capsys, "read", "-", "--log", "-")
    assert (code, err) == (
        2, "ipsec-nflog: read - and --log - cannot both read standard input\n")
    out_file = tmp_path / "inner.pcap"
    code, _, err = run_main(capsys, "read", str(tmp_path / "missing.pcap"),
                            "--write-decrypted", str(out_file))
    assert (code, err) == (
        2, "ipsec-nflog: --write-decrypted needs --keys DIR, --log FILE or --esp-secrets\n")
    assert not out_file.exists()
