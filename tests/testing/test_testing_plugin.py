"""The pytest plugin, used the way a user's suite uses it: fresh test files without any
conftest, run by pytest's own ``pytester`` in a new process that loads the plugin from the
installed package's ``pytest11`` entry point."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ipsec_nflog import rules
from ipsec_nflog.system.procinfo import group_bindings
from ipsec_nflog.testing.lab import netns_names
from tests.conftest import require_tool

pytest_plugins = ["pytester"]

FIXTURES = ("nflog_capture", "netns_pair", "strongswan_pair")

# Written into every inner test file: what the inner run made, for the outer test to check.
RECORDER = '''
import json, os, socket, threading
from pathlib import Path

from ipsec_nflog import rules

RECORD = Path(os.environ["IPNF_RECORD"])
OUTER = os.environ["IPNF_OUTER_NETNS"]
TASKS_AT_IMPORT = len(os.listdir("/proc/self/task"))


def record(**facts):
    old = json.loads(RECORD.read_text()) if RECORD.exists() else {}
    old.setdefault("pid", os.getpid())
    for key, value in facts.items():
        old.setdefault(key, []).append(value)
    RECORD.write_text(json.dumps(old))


def udp(lab, family=socket.AF_INET, port=500):
    dst = lab.b4 if family == socket.AF_INET else lab.b6
    with lab.socket(lab.a, family) as s:
        s.sendto(b"ipsec-nflog plugin test", (dst, port))
'''


@pytest.fixture
def record(pytester: pytest.Pytester, netns: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the inner run writes what it made; ``netns`` outlives the inner run."""
    path = pytester.path / "record.json"
    monkeypatch.setenv("IPNF_RECORD", str(path))
    monkeypatch.setenv("IPNF_OUTER_NETNS", netns)
    return path


def _assert_nothing_left(record: Path, outer_ns: str) -> None:
    """No namespace of the inner run, no rule and no bound group in the namespace that
    survived it (where the inner test saw its rules installed)."""
    facts: dict[str, Any] = json.loads(record.read_text())  # JSON: no richer type
    child = int(facts["pid"])
    leaked = {n for n in netns_names() if re.search(rf"-{child}(-|$)", n)}
    assert not leaked, f"namespaces left by the inner run: {leaked}"
    labs = {str(name) for lab in facts["lab"] for name in lab}
    assert len(labs) >= 2 and not labs & netns_names()
    rules_during = [int(n) for n in facts["rules_during"]]
    assert rules_during and all(n > 0 for n in rules_during), rules_during
    assert rules.find(netns=outer_ns) == [], "rules left in the surviving namespace"
    bound = {b.group for b in group_bindings(outer_ns, resolve_owners=False)}
    groups = {int(g) for g in facts["group"]}
    assert not bound & groups, f"groups still bound: {bound & groups}"


def test_the_fixtures_and_the_option_come_with_the_package(pytester: pytest.Pytester) -> None:
    assert not list(pytester.path.glob("conftest.py"))
    result = pytester.runpytest_subprocess("--fixtures")
    for name in FIXTURES:
        assert re.search(rf"^{name} -- .*ipsec_nflog/testing/pytest_plugin\.py",
                         result.stdout.str(), re.M), result.stdout.str()
    assert "--nflog-keep=DIR" in pytester.runpytest_subprocess("--help").stdout.str()


def test_no_ipsec_nflog_turns_the_plugin_off(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_uses(nflog_capture):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:ipsec_nflog")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'nflog_capture' not found*"])


@pytest.mark.privileged
def test_a_passing_test_leaves_no_namespace_rule_or_thread(
        pytester: pytest.Pytester, record: Path, netns: str) -> None:
    pytester.makepyfile(RECORDER + '''

def test_capture_in_a_lab(nflog_capture, netns_pair):
    lab = netns_pair
    cap = nflog_capture("ike-esp-out", netns=lab.a)
    outer = nflog_capture("ike-esp-in", netns=OUTER)  # in a namespace that outlives the run
    record(lab=[lab.a, lab.b], group=cap.group)
    record(group=outer.group, rules_during=len(rules.find(netns=OUTER)))
    udp(lab)
    udp(lab, socket.AF_INET6, 4500)
    got = cap.expect(2, hook="OUTPUT", prefix="ike-esp-out", timeout=5)
    assert sorted(p.ip.data.dport for p in got) == [500, 4500]
    assert cap.packets == got


def test_afterwards_every_thread_is_gone():
    assert len(os.listdir("/proc/self/task")) == TASKS_AT_IMPORT
    assert threading.enumerate() == [threading.main_thread()]
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    assert "nflog captures" not in result.stdout.str()
    _assert_nothing_left(record, netns)


FAILING = RECORDER + '''

def test_fails_after_capturing(nflog_capture, netns_pair):
    lab = netns_pair
    group = int(os.environ.get("IPNF_GROUP", "0")) or None
    cap = nflog_capture("ike-esp-out", netns=lab.a, group=group)
    outer = nflog_capture("ike-esp-in", netns=OUTER, group=group)
    record(lab=[lab.a, lab.b], group=cap.group)
    record(group=outer.group, rules_during=len(rules.find(netns=OUTER)))
    udp(lab)
    cap.expect(1, filter="udp port 500")
    assert False, "deliberate failure"


def test_fails_on_an_expectation(nflog_capture, netns_pair):
    lab = netns_pair
    cap = nflog_capture("ike-esp-out", netns=lab.a)
    record(lab=[lab.a, lab.b], group=cap.group)
    udp(lab)
    cap.expect(1, filter="esp", timeout=1)
'''


def _saved_paths(output: str) -> list[Path]:
    return [Path(p) for p in re.findall(r"^  saved (\S+\.pcap)", output, re.M)]


def _check_pcap(path: Path, tcpdump: str) -> None:
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    r = subprocess.run([tcpdump, "-n", "-r", str(path)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    assert "link-type NFLOG" in r.stderr
    assert re.search(r"IP 10\.99\.0\.1\.\d+ > 10\.99\.0\.2\.500: ", r.stdout), r.stdout


@pytest.mark.privileged
def test_a_failing_test_reports_its_capture_saved_as_pcap(
        pytester: pytest.Pytester, record: Path, netns: str) -> None:
    tcpdump = require_tool("tcpdump", "tcpdump")
    pytester.makepyfile(FAILING)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    # the expectation's message lists what was seen, packet by packet, and the counters
    assert "expected 1 packet(s) matching filter 'esp' within 1 s; 0 matched" in out
    assert re.search(r"seen 1 packet\(s\) on nflog:\d+ in netns ipnf-a-\d+-\d+, rules "
                     r"ike-esp-out:", out), out
    assert re.search(r"nflog:\d+ OUTPUT +->veth0 +ike-esp-out +10\.99\.0\.1\.\d+ > "
                     r"10\.99\.0\.2\.500: ", out), out
    assert "counters: received 1, delivered 1, filtered 0, pending 0; drops: no drops" in out
    saved = _saved_paths(out)
    assert len(saved) == 3, out  # two captures of the first test, one of the second
    for path, test in zip(saved, ["test_fails_after_capturing"] * 2
                          + ["test_fails_on_an_expectation"], strict=True):
        # the inner test's own tmp_path, under the --basetemp pytester gave the inner run
        assert path.parent.name == f"{test}0" and pytester.path in path.parents, path
    _check_pcap(saved[0], tcpdump)
    _check_pcap(saved[2], tcpdump)
    _assert_nothing_left(record, netns)


@pytest.mark.privileged
def test_nflog_keep_puts_the_evidence_in_the_directory_given(
        pytester: pytest.Pytester, record: Path, netns: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    tcpdump = require_tool("tcpdump", "tcpdump")
    keep = pytester.path / "evidence"
    monkeypatch.setenv("IPNF_GROUP", "23456")  # the same file names in both runs
    pytester.makepyfile(FAILING)
    for run in (1, 2):  # a second run adds files, it never overwrites the first run's
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--nflog-keep",
                                               str(keep), "-k", "after_capturing")
        result.assert_outcomes(failed=1, deselected=1)
        saved = _saved_paths(result.stdout.str())
        assert len(saved) == 2 and all(p.parent == keep for p in saved)
        assert len(list(keep.glob("*.pcap"))) == 2 * run
    assert [p.name for p in saved] == ["test_fails_after_capturing-1-nflog23456-2.pcap",
                                       "test_fails_after_capturing-2-nflog23456-2.pcap"]
    _check_pcap(saved[0], tcpdump)
    _assert_nothing_left(record, netns)


@pytest.mark.privileged
@pytest.mark.strongswan
def test_a_failing_test_with_a_strongswan_pair_shows_the_charon_logs(
        pytester: pytest.Pytester) -> None:
    from ipsec_nflog.testing.charon import check_installed
    from ipsec_nflog.testing.requirements import unavailable

    problem = check_installed(libipsec=True)
    if problem:
        unavailable(problem)
    pytester.makepyfile('''
def test_tunnel(strongswan_pair):
    assert "INSTALLED" in strongswan_pair.list_sas()
    strongswan_pair.ping(1)
    assert False, "deliberate failure"
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert re.search(r"-+ strongSwan logs -+", out), out
    for peer in ("left", "right"):
        assert re.search(rf"--- /\S+/{peer}/charon\.log \(tail\)", out), out
    assert re.search(r"^\d\d:\d\d:\d\d \d+\[(CFG|IKE|CHD|NET)\] ", out, re.M), out


# -- unprivileged runs -------------------------------------------------------------------------

USES_ALL = '''
def test_capture(nflog_capture):
    pass

def test_lab(netns_pair):
    pass

def test_tunnel(strongswan_pair):
    pass
'''


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A directory the user nobody can read, with a test file using every fixture."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run a suite as the user nobody")
    d = Path(tempfile.mkdtemp(prefix="ipnf-nobody-"))
    try:
        d.chmod(0o755)
        (d / "test_fixtures.py").write_text(USES_ALL)
        (d / "test_fixtures.py").chmod(0o644)
        (d / "tmp").mkdir()
        os.chown(d / "tmp", 65534, 65534)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _as_nobody(d: Path, require: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(d / "tmp"),
           "IPSEC_NFLOG_REQUIRE_PRIVILEGED": require}
    return subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
         "pytest", "-p", "no:cacheprovider", "-rsf", f"--basetemp={d / 'tmp' / 'bt'}",
         "--rootdir", str(d), "test_fixtures.py"], cwd=d, env=env, capture_output=True,
        text=True, timeout=120)


def test_unprivileged_runs_skip_with_the_reason(nobody_dir: Path) -> None:
    r = _as_nobody(nobody_dir, "0")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 skipped" in r.stdout
    for name in FIXTURES:
        assert re.search(rf"SKIPPED .*privileged test: {name}: needs root \(CAP_NET_ADMIN",
                         r.stdout), r.stdout


def test_unprivileged_runs_fail_where_everything_must_run(nobody_dir: Path) -> None:
    r = _as_nobody(nobody_dir, "1")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "3 errors" in r.stdout  # the fixtures fail in setup
    assert len(re.findall(r"needs root \(CAP_NET_ADMIN, CAP_SYS_ADMIN\) for network namespaces "
                          r"and NFLOG \(IPSEC_NFLOG_REQUIRE_PRIVILEGED=1\)", r.stdout)) >= 3
