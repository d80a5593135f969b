"""Tier 1: kernel IPsec (XFRM/ESP) in a VM, because this host's kernel has no ESP.

One qemu VM (tests/vm/runner.py: Debian's linux-image-amd64 on the host's root, read-only
over 9p, TCG) boots once per session and runs ``pytest tests/vm/guest`` inside, with the
host's Python and this project's built package. Each guest test function is reported here as
one test (``test_in_vm[<function>]``): it passes when every case of that function passed in
the VM, and fails with the VM's report otherwise. See docs/ipsec-tiers.md.
"""

from __future__ import annotations

import ast
import os
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REQUIRE_PRIVILEGED, require_privileged

pytestmark = [pytest.mark.kernel, pytest.mark.privileged]

GUEST_DIR = Path(__file__).resolve().parents[1] / "vm" / "guest"
VM_TIMEOUT = float(os.environ.get("IPSEC_NFLOG_VM_TIMEOUT", "900"))


def guest_functions() -> list[str]:
    """``file_stem::test_name`` of every guest test function (static: no VM needed)."""
    names = []
    for path in sorted(GUEST_DIR.glob("test_*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                names.append(f"{path.stem}::{node.name}")
    return names


@dataclass
class Case:
    module: str
    name: str           # with parameters, e.g. test_x[a-b]
    outcome: str        # passed / failed / error / skipped
    message: str = ""


@dataclass
class VMSession:
    returncode: int
    output: str
    console: str
    seconds: float
    boot_seconds: float | None
    cases: list[Case] = field(default_factory=list)
    xchg: Path | None = None

    def of(self, function: str) -> list[Case]:
        module, name = function.split("::")
        return [c for c in self.cases
                if c.module == module and (c.name == name or c.name.startswith(name + "["))]


def _parse_junit(path: Path) -> list[Case]:
    if not path.exists():
        return []
    cases = []
    for tc in ET.parse(path).getroot().iter("testcase"):
        module = tc.get("classname", "").rsplit(".", 1)[-1]
        outcome, message = "passed", ""
        for child in tc:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed"}.get(child.tag, child.tag)
                message = (child.get("message") or "") + "\n" + (child.text or "")
                break
        cases.append(Case(module, tc.get("name", ""), outcome, message.strip()))
    return cases


def _unavailable(msg: str) -> None:
    if REQUIRE_PRIVILEGED:
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def kernel_vm(tmp_path_factory: pytest.TempPathFactory) -> VMSession:
    """Boot the VM once and run every guest test in it."""
    require_privileged("kernel IPsec VM")
    from tests.vm import runner

    try:
        runner.prepare()
    except runner.VMUnavailable as e:
        _unavailable(f"tier-1 VM unavailable: {e} (apt-get install {runner.APT_PACKAGES})")
    xchg = tmp_path_factory.mktemp("kernel-vm")
    junit = xchg / "junit.xml"
    script = " ".join([
        sys.executable, "-m", "pytest", "tests/vm/guest", "-p", "no:cacheprovider", "-q",
        "-o", "addopts=", "-rfEs", f"--junitxml={junit}",
    ])
    env = {"IPNF_XCHG": str(xchg),
           "IPSEC_NFLOG_REQUIRE_PRIVILEGED": "1" if REQUIRE_PRIVILEGED else "0"}
    for k in ("IPSEC_NFLOG_TIER_FALLBACK_RULES",):
        if k in os.environ:
            env[k] = os.environ[k]
    r = runner.run(script, env=env, xchg=xchg, timeout=VM_TIMEOUT)
    (xchg / "host-summary.txt").write_text(
        f"exit {r.returncode}, {r.seconds:.1f}s wall, job start at guest uptime "
        f"{r.boot_seconds}s\n")
    return VMSession(r.returncode, r.output, r.console, r.seconds, r.boot_seconds,
                     _parse_junit(junit), xchg)


@pytest.mark.parametrize("function", guest_functions())
def test_in_vm(kernel_vm: VMSession, function: str) -> None:
    cases = kernel_vm.of(function)
    if not cases:
        pytest.fail(f"{function} did not run in the VM (exit {kernel_vm.returncode}).\n"
                    f"--- VM output (tail)\n{kernel_vm.output[-6000:]}\n"
                    f"--- console (tail)\n{kernel_vm.console[-3000:]}", pytrace=False)
    bad = [c for c in cases if c.outcome in ("failed", "error")]
    if bad:
        pytest.fail("\n\n".join(f"[in VM] {c.name}: {c.outcome}\n{c.message}" for c in bad),
                    pytrace=False)
    if all(c.outcome == "skipped" for c in cases):
        _unavailable(f"skipped in the VM: {cases[0].message}")


def test_vm_session_is_quick_enough(kernel_vm: VMSession) -> None:
    """One boot per session; the whole tier should stay within minutes."""
    assert kernel_vm.boot_seconds is not None, kernel_vm.console[-3000:]
    assert kernel_vm.boot_seconds < 60, kernel_vm.boot_seconds
    assert kernel_vm.seconds < VM_TIMEOUT
    assert kernel_vm.returncode in (0, 1), kernel_vm.output[-4000:]  # pytest's own codes
