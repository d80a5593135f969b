"""ipsec_nflog.system.netns name checks, without root: a namespace name becomes a path under
/run/netns and an argument of ``ip netns exec``, so only plain file names are accepted."""

from __future__ import annotations

import pytest

from ipsec_nflog.system.netns import NETNS_RUN_DIR, netns_path, ns_argv, validate_netns_name

GOOD = ["a", "ns1", "lab_west", "ipnf-ns-1234-1", "x.y", ".hidden", "_", "9", "A" * 255]

HOSTILE = [
    "",                      # empty
    ".",                     # this directory
    "..",                    # the parent: /run/netns/.. is /run
    "../etc",                # path traversal
    "a/b",                   # a sub-path
    "/abs",
    "-n",                    # an option to ip(8)
    "--help",
    "a b",                   # whitespace
    "tab\there",
    "ns;reboot",             # shell metacharacters (argv lists only, but still not a name)
    "$(id)",
    "`id`",
    "a|b",
    "ns\x1b[2J",             # terminal escapes
    "ns\x00",                # NUL ends a C string
    "\u00e9t\u00e9",         # non-ASCII
    "A" * 256,               # longer than NAME_MAX
]


@pytest.mark.parametrize("name", GOOD)
def test_plain_names_are_accepted_unchanged(name: str) -> None:
    assert validate_netns_name(name) == name
    assert netns_path(name) == f"{NETNS_RUN_DIR}/{name}"


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_are_refused_with_their_repr(name: str) -> None:
    with pytest.raises(ValueError) as info:
        validate_netns_name(name)
    assert str(info.value) == f"invalid network namespace name {name!r}"


@pytest.mark.parametrize("name", ["ns\n", "a\n"])
def test_a_trailing_newline_is_refused(name: str) -> None:
    with pytest.raises(ValueError):
        validate_netns_name(name)


@pytest.mark.parametrize("name", [None, 5, b"ns1", ["ns1"]])
def test_non_strings_are_refused(name: object) -> None:
    with pytest.raises(ValueError) as info:
        validate_netns_name(name)  # type: ignore[arg-type]
    assert str(info.value) == f"invalid network namespace name {name!r}"


@pytest.mark.parametrize("name", ["../etc", "-n"])
def test_paths_and_commands_are_never_built_from_a_hostile_name(name: str) -> None:
    with pytest.raises(ValueError):
        netns_path(name)
    with pytest.raises(ValueError):
        ns_argv(name, ["ip", "link"])


def test_ns_argv_wraps_only_when_a_namespace_is_given() -> None:
    assert ns_argv("lab", ["ip", "link"]) == ["ip", "netns", "exec", "lab", "ip", "link"]
    assert ns_argv(None, ("ip", "link")) == ["ip", "link"]
