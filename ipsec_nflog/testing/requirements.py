"""Can privileged tests run here? One answer for our own suite and for the pytest plugin.

Privileged work (network namespaces, NFLOG, rules) needs root and iproute2. Where it cannot
run, tests skip with the reason, or fail instead when ``IPSEC_NFLOG_REQUIRE_PRIVILEGED=1``
(CI), so a broken CI machine cannot pass by skipping everything. :func:`privilege_problem`
is pure Python; the ``require_*`` helpers raise pytest's skip or fail (pytest is imported
only when they are called).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import NoReturn

__all__ = ["REQUIRE_PRIVILEGED_ENV", "privilege_problem", "privileged_required",
           "require_privileged", "require_tool", "unavailable"]

REQUIRE_PRIVILEGED_ENV = "IPSEC_NFLOG_REQUIRE_PRIVILEGED"

_probed: dict[int, str | None] = {}  # pid -> answer (a forked child probes again)


def privileged_required() -> bool:
    """True when $IPSEC_NFLOG_REQUIRE_PRIVILEGED is ``1``: what cannot run must fail."""
    return os.environ.get(REQUIRE_PRIVILEGED_ENV) == "1"


def _probe() -> str | None:
    if os.geteuid() != 0:
        return "needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) for network namespaces and NFLOG"
    if shutil.which("ip") is None:
        return "needs iproute2's 'ip' command"
    probe = f"ipnf-probe-{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def privilege_problem() -> str | None:
    """None when namespaces and NFLOG can be used here, else why not (probed once)."""
    pid = os.getpid()
    if pid not in _probed:
        _probed[pid] = _probe()
    return _probed[pid]


def unavailable(message: str) -> NoReturn:
    """Skip the running test with ``message``; fail it under $IPSEC_NFLOG_REQUIRE_PRIVILEGED=1."""
    import pytest

    if privileged_required():
        pytest.fail(f"{message} ({REQUIRE_PRIVILEGED_ENV}=1)", pytrace=False)
    pytest.skip(message)


def require_privileged(what: str = "") -> None:
    """Skip (or fail, in CI) when privileged tests cannot run here."""
    problem = privilege_problem()
    if problem:
        unavailable(f"privileged test{': ' + what if what else ''}: {problem}")


def require_tool(name: str, package: str) -> str:
    """The path of command ``name``, or skip (fail in CI) naming the package to install."""
    path = shutil.which(name)
    if path is None:
        unavailable(f"needs '{name}' (apt-get install {package})")
    return path
