"""The extcap protocol as Wireshark 4.0 and 4.2+ call it, and the launcher's install and
uninstall. No root needed: nothing here opens a socket or installs a rule."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from ipsec_nflog.cli import extcap_install
from ipsec_nflog.cli.extcap_config import (
    IFACE_GROUP,
    IFACE_IPSEC,
    OPTIONS,
    capture_argv,
    parse_options,
)
from ipsec_nflog.cli.main import main
from ipsec_nflog.cli.parser import build_parser

SENTENCE = re.compile(r"^(extcap|interface|dlt|arg|value) (\{[a-z]+=[^{}]*\})+$")
# What Wireshark 4.0 passes (extcap.c), and what 4.2+ adds: a full version, --debug and
# control pipes; "--extcap-new-in-5.0" stands for whatever later versions add.
WS40 = ["--extcap-version=4.0"]
WS42 = ["--extcap-version=4.2.6", "--debug", "--extcap-new-in-5.0=1", "--extcap-later"]


def run_extcap(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], str]:
    code = main(["extcap", *args])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def fields(line: str) -> dict[str, str]:
    return dict(re.findall(r"\{([a-z]+)=([^{}]*)\}", line))


@pytest.mark.parametrize("extra", [WS40, WS42], ids=["4.0", "4.2+"])
def test_interfaces_and_dlts(capsys: pytest.CaptureFixture[str], extra: list[str]) -> None:
    code, lines, err = run_extcap(capsys, "--extcap-interfaces", *extra)
    assert (code, err) == (0, "")
    assert all(SENTENCE.match(line) for line in lines), lines
    assert [fields(x)["value"] for x in lines if x.startswith("interface ")] == [
        IFACE_IPSEC, IFACE_GROUP]
    for iface in (IFACE_IPSEC, IFACE_GROUP):  # both spellings Wireshark has used
        for spelling in ([f"--extcap-interface={iface}"], ["--extcap-interface", iface]):
            code, lines, err = run_extcap(capsys, *spelling, "--extcap-dlts", *extra)
            assert (code, err) == (0, "")
            assert [fields(x)["number"] for x in lines] == ["239"]  # LINKTYPE_NFLOG


@pytest.mark.parametrize("extra", [WS40, [*WS42, "--extcap-reload-option", "--rules"]],
                         ids=["4.0", "4.2+ reload"])
def test_config_is_well_formed(capsys: pytest.CaptureFixture[str], extra: list[str]) -> None:
    code, lines, err = run_extcap(capsys, "--extcap-interface", IFACE_IPSEC, "--extcap-config",
                                  *extra)
    assert (code, err) == (0, "")
    assert all(SENTENCE.match(line) for line in lines), lines
    args = [fields(x) for x in lines if x.startswith("arg ")]
    values = [fields(x) for x in lines if x.startswith("value ")]
    assert len({a["number"] for a in args}) == len(args)
    by_call = {a["call"]: a for a in args}
    assert set(by_call) == {o.call for o in OPTIONS}
    for a in args:
        if a["type"] in ("selector", "radio"):
            mine = [v for v in values if v["arg"] == a["number"]]
            assert sum(v["default"] == "true" for v in mine) == 1, a
    presets = {v["value"] for v in values if v["arg"] == by_call["--rules"]["number"]}
    assert {"all", "ike-esp-in", "ike-esp-out", "decap", "libipsec"} <= presets
    # the plain group interface installs nothing, so offers no rule options
    _, lines, _ = run_extcap(capsys, "--extcap-interface", IFACE_GROUP, "--extcap-config")
    calls = {fields(x)["call"] for x in lines if x.startswith("arg ")}
    assert "--rules" not in calls and "--group" in calls


def test_every_dialog_option_is_a_capture_option() -> None:
    """Wireshark's values, in both spellings, become a capture command line that the
    capture parser accepts with the same values; unknown arguments are dropped."""
    given = ["--group", "7", "--rules=decap", "--family", "ipv6", "--backend=nft",
             "--prefix", "-dash-first", "--reqid=3", "--spi", "0x1f", "--snaplen=96",
             "--netns", "lab", "--low-latency", "--extcap-new-in-5.0=1", "--extcap-later"]
    argv = capture_argv(IFACE_IPSEC, parse_options(given), "udp port 500")
    args = build_parser().parse_args(argv)
    assert (args.group, args.rules, args.family, args.backend, args.prefix) == (
        [[7]], "decap", "ipv6", "nft", "-dash-first")
    assert (args.reqid, args.spi, args.snaplen, args.netns, args.low_latency) == (
        3, 0x1F, 96, "lab", True)
    assert (args.write, args.pcapng, args.quiet, args.expression) == (
        "-", True, True, ["udp port 500"])
    # defaults: Wireshark 4.0 passes nothing for an untouched selector
    args = build_parser().parse_args(capture_argv(IFACE_IPSEC, parse_options(
        ["--group=5", "--backend=auto"]), None))
    assert (args.rules, args.backend, args.expression) == ("all", None, [])
    args = build_parser().parse_args(capture_argv(IFACE_GROUP, parse_options(
        ["--group=9"]), " "))
    assert (args.group, args.rules) == ([[9]], None)


@pytest.mark.parametrize("argv, message", [
    (["--extcap-interface", "nflog", "--extcap-dlts"], "unknown extcap interface 'nflog'"),
    (["--extcap-interface", IFACE_IPSEC, "--capture"], "--capture needs --fifo"),
    (["--extcap-interface", IFACE_IPSEC], "nothing to do"),
])
def test_bad_calls_are_one_line(capsys: pytest.CaptureFixture[str], argv: list[str],
                                message: str) -> None:
    code, out, err = run_extcap(capsys, *argv, *WS42)
    assert code == 2 and out == []
    assert err.count("\n") == 1 and message in err


def test_capture_refuses_what_is_not_a_fifo(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """As root under sudo the FIFO path comes from the user: a regular file, a link or a
    directory there is never written into or replaced."""
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    link = tmp_path / "link"
    link.symlink_to(victim)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    fifo_link = tmp_path / "fifo-link"  # even a link to a real FIFO: never followed
    fifo_link.symlink_to(fifo)
    odd = tmp_path / "-odd\nname\x1b[2J\udcff"  # a newline, an escape, not UTF-8
    for path, why in ((victim, "is not a FIFO"), (link, "is not a FIFO"),
                      (fifo_link, "is not a FIFO"), (tmp_path, "is not a FIFO"),
                      (tmp_path / "nope", "No such file"), (odd, "No such file")):
        code, _, err = run_extcap(capsys, "--capture", "--extcap-interface", IFACE_GROUP,
                                    "--fifo", str(path), "--group=5", *WS40)
        assert code == 2 and why in err and err.count("\n") == 1, err
        assert "\x1b" not in err, err  # escaped, never passed to the terminal
    assert victim.read_text() == "keep me" and link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "fifo-link", "link",
                                                          "victim"]


@pytest.mark.parametrize("version", [["--extcap-version=4.2.0"], ["--extcap-version", "4.2.0"],
                                     ["--extcap-version"]], ids=["joined", "apart", "bare"])
def test_future_arguments_with_values_are_ignored(capsys: pytest.CaptureFixture[str],
                                                  version: list[str]) -> None:
    """Unknown options with a value as the next word, or one that looks like a path, in
    front of and among ours: the call does what ours say."""
    future = ["--extcap-new-thing", "42", "--extcap-other=/x y", "--zzz", "-"]
    code, lines, err = run_extcap(capsys, *future, *version, "--extcap-interface", IFACE_IPSEC,
                                  "--extcap-new", "7", "--extcap-dlts")
    assert (code, err) == (0, "") and [fields(x)["number"] for x in lines] == ["239"]
    argv = capture_argv(IFACE_IPSEC, parse_options(
        [*future, "--group", "8", "--extcap-new", "--rules=decap", *version]), None)
    args = build_parser().parse_args(argv)
    assert (args.group, args.rules, args.expression) == ([[8]], "decap", [])


def test_bad_option_is_one_line_before_the_fifo_opens(tmp_path: Path) -> None:
    """A bad dialog value fails before the FIFO is touched (its reader never sees us)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for bad in ("--group=70000", "--spi=zz", "--family=ipv5"):
        r = subprocess.run([*_python_m(), "extcap", "--capture", "--extcap-interface",
                            IFACE_IPSEC, "--fifo", str(fifo), bad, *WS42],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and r.stdout == "", r
        assert r.stderr.count("\n") == 1 and "ipsec-nflog" in r.stderr, r.stderr


def _python_m() -> list[str]:
    import sys

    return [sys.executable, "-m", "ipsec_nflog"]


# --------------------------------------------------------------------- the launcher --

def _install(tmp: Path, *more: str) -> int:
    return main(["extcap", "--install", "--extcap-dir", str(tmp), *more])


def test_install_writes_a_small_launcher_that_runs(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    assert _install(tmp_path) == 0
    launcher = tmp_path / extcap_install.LAUNCHER_NAME
    st = launcher.lstat()
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o755
    assert st.st_uid == os.geteuid()
    text = launcher.read_text()
    assert len(text.splitlines()) <= 12 and extcap_install.MARKER in text
    assert f"exec {sys.executable} -I -m ipsec_nflog extcap" in text
    assert os.path.isabs(sys.executable)
    # Wireshark runs it with its own environment and directory: PYTHONPATH and the cwd
    # must not change what runs (-I)
    (tmp_path / "ipsec_nflog").mkdir()
    (tmp_path / "ipsec_nflog" / "__init__.py").write_text("raise SystemExit('planted')")
    r = subprocess.run([str(launcher), "--extcap-interfaces", "--extcap-version=4.0"],
                       capture_output=True, text=True, timeout=30, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert r.returncode == 0 and r.stderr == "", r
    assert f"interface {{value={IFACE_IPSEC}}}" in r.stdout
    # installing again replaces our own launcher
    assert _install(tmp_path) == 0
    capsys.readouterr()


def test_install_never_replaces_or_follows_what_is_not_ours(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    launcher = tmp_path / extcap_install.LAUNCHER_NAME
    launcher.write_text("#!/bin/sh\necho someone else's\n")
    assert _install(tmp_path) == 2
    assert "not written by ipsec-nflog" in capsys.readouterr().err
    assert main(["extcap", "--uninstall", "--extcap-dir", str(tmp_path)]) == 2
    assert launcher.read_text() == "#!/bin/sh\necho someone else's\n"
    launcher.unlink()
    target = tmp_path / "target"
    target.write_text("untouched")
    launcher.symlink_to(target)
    assert _install(tmp_path) == 2
    assert launcher.is_symlink() and target.read_text() == "untouched"
    launcher.unlink()
    open_dir = tmp_path / "shared"
    open_dir.mkdir(mode=0o777)
    open_dir.chmod(0o777)
    assert _install(open_dir) == 2
    assert "can be changed by others" in capsys.readouterr().err
    assert not (open_dir / extcap_install.LAUNCHER_NAME).exists()


def test_uninstall_removes_only_our_launcher(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other-extcap"
    other.write_text("#!/bin/sh\n")
    assert _install(tmp_path) == 0
    assert main(["extcap", "--uninstall", "--extcap-dir", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other-extcap"]
    assert main(["extcap", "--uninstall", "--extcap-dir", str(tmp_path)]) == 0
    assert "removed nothing" in capsys.readouterr().out


def test_the_launcher_cannot_install(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Run through sudo it is root for the group's members: no writing files with it."""
    for action in ("--install", "--uninstall"):
        assert main(["extcap", "--from-launcher", action, "--extcap-dir", str(tmp_path)]) == 2
        assert "not available through the launcher" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_sudo_launcher_text() -> None:
    text = extcap_install.launcher_text("/opt/v/bin/python", "/x/extcap/ipsec-nflog",
                                        "/usr/bin/sudo", "wireshark")
    assert 'exec /usr/bin/sudo -n -- /x/extcap/ipsec-nflog "$@"' in text
    assert '*" wireshark "*)' in text
    assert text.rstrip().endswith('exec /opt/v/bin/python -I -m ipsec_nflog extcap '
                                  '--from-launcher "$@"')
    r = subprocess.run(["sh", "-n"], input=text, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with pytest.raises(ValueError):  # it goes into the shell text: a plain name only
        extcap_install.launcher_text("/p", "/x/ipsec-nflog", "/usr/bin/sudo", "a b;id")
