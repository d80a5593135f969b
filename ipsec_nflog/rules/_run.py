"""Running rule tools: argv lists and stdin scripts only (never a shell), optionally inside a
named network namespace (the command is started from a helper thread that ``setns``-ed into
it, so the child process is born there; no ``ip netns exec`` needed)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence

from ipsec_nflog.rules.errors import RulesError, ToolMissingError
from ipsec_nflog.system.netns import open_netns, run_in_netns

__all__ = ["EXTRA_PATH", "PACKAGES", "find_tool", "run", "tool_available"]

# root's tools live in sbin, which a non-root PATH may lack
EXTRA_PATH: tuple[str, ...] = ("/usr/sbin", "/sbin", "/usr/local/sbin")

PACKAGES = {
    "nft": "nftables",
    "libnftables.so.1": "libnftables1",
}


def package_for(tool: str) -> str:
    if tool.startswith(("iptables", "ip6tables")):
        return "iptables"
    return PACKAGES.get(tool, tool)


def _search_path() -> str:
    parts = os.environ.get("PATH", "").split(os.pathsep)
    parts += [p for p in EXTRA_PATH if p not in parts]
    return os.pathsep.join(p for p in parts if p)


def tool_available(name: str) -> str | None:
    return shutil.which(name, path=_search_path())


def find_tool(name: str) -> str:
    """The full path of ``name``, or ``ToolMissingError`` saying which package to install."""
    path = tool_available(name)
    if path is None:
        raise ToolMissingError(name, package_for(name))
    return path


def run(argv: Sequence[str], *, input: str | None = None, netns: str | None = None,
        timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (``argv[0]`` resolved with :func:`find_tool`) with ``input`` on stdin."""
    argv = [find_tool(argv[0]), *argv[1:]]
    env = dict(os.environ, LC_ALL="C", LANG="C")
    if netns is not None:
        os.close(open_netns(netns))  # a clear error when the namespace does not exist

    def go() -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, input=input if input is not None else "",
                              capture_output=True, text=True, timeout=timeout, env=env,
                              close_fds=True)

    try:
        r = run_in_netns(netns, go)
    except subprocess.TimeoutExpired as e:
        raise RulesError(f"{argv[0]} did not finish within {timeout} s", argv=argv) from e
    if check and r.returncode != 0:
        raise RulesError(f"{' '.join(argv)} failed (exit {r.returncode}): "
                         f"{r.stderr.strip()}", argv=argv, returncode=r.returncode,
                         stderr=r.stderr)
    return r
