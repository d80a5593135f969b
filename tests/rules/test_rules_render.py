"""Rule helpers without root: rendering against golden files and against the article's
lines, validation errors, owner tags and error diagnosis.

Regenerate the golden files after an intended change with
``IPSEC_NFLOG_UPDATE_GOLDEN=1 pytest tests/rules/test_rules_render.py`` and review the diff.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ipsec_nflog import rules
from ipsec_nflog.rules import _run, iptables, lifecycle, model, nft
from ipsec_nflog.rules.errors import KernelSupportError, RulesError, ToolMissingError
from ipsec_nflog.rules.presets import PRESETS

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "rules"
ARTICLE_FILE = ROOT.parent / "shared" / "reference" / "traffic-dumps-on-linux.txt"
UPDATE = os.environ.get("IPSEC_NFLOG_UPDATE_GOLDEN") == "1"
TAG = "pid4242-s1000-0123abcd"
FAMILIES = ("ipv4", "ipv6", "both")
BACKENDS = ("iptables", "iptables-nft", "iptables-legacy", "nft")

# The article's rules, verbatim ("Taking Traffic Dumps on Linux", strongSwan docs), so the
# line-by-line check works without the reference file.
ARTICLE_RULES: dict[str, list[str]] = {
    "Ingress IPsec and IKE Traffic": [
        "iptables -t raw -I PREROUTING -p esp -j NFLOG --nflog-group 5",
        "iptables -t raw -I PREROUTING -p ah -j NFLOG --nflog-group 5",
        "iptables -t raw -I PREROUTING -p udp -m multiport --dports 500,4500 -j NFLOG "
        "--nflog-group 5",
    ],
    "Egress IPsec and IKE Traffic": [
        "iptables -t raw -I OUTPUT -p esp -j NFLOG --nflog-group 5",
        "iptables -t raw -I OUTPUT -p ah -j NFLOG --nflog-group 5",
        "iptables -t raw -I OUTPUT -p udp -m multiport --dports 500,4500 -j NFLOG "
        "--nflog-group 5",
    ],
    "Decapsulated IPsec Traffic": [
        "iptables -t mangle -I PREROUTING -m policy --pol ipsec --dir in -j NFLOG "
        "--nflog-group 5",
        "iptables -t mangle -I POSTROUTING -m policy --pol ipsec --dir out -j NFLOG "
        "--nflog-group 5",
    ],
    "IPsec Traffic Terminated at Local Host": [
        "iptables -t filter -I INPUT -m addrtype --dst-type LOCAL -m policy --pol ipsec "
        "--dir in -j NFLOG --nflog-group 5",
    ],
    "IPsec Traffic Forwarded to Remote Hosts": [
        "iptables -t filter -I FORWARD -m addrtype ! --dst-type LOCAL -m policy --pol ipsec "
        "--dir in -j NFLOG --nflog-group 5",
    ],
    "Outgoing IPsec Traffic": [
        "iptables -t filter -I OUTPUT -m policy --pol ipsec --dir out -j NFLOG "
        "--nflog-group 5",
    ],
}
ARTICLE_PRESET = {p.title: p.name for p in PRESETS.values() if p.title in ARTICLE_RULES}


def parse_article(text: str) -> dict[str, list[str]]:
    """Section title -> the iptables lines under it."""
    out: dict[str, list[str]] = {}
    heading = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("iptables "):
            out.setdefault(heading, []).append(" ".join(line.split()))
        elif not line.startswith(("tcpdump", "--", "[!]")) and len(line) < 60:
            heading = line
    return out


def rendered_commands(text: str) -> list[str]:
    """``iptables -t TABLE <line>`` for every rule line of rendered restore batches."""
    out: list[str] = []
    exe, table = "", ""
    for line in text.splitlines():
        if "-restore" in line and line.endswith("<<'EOF'"):
            exe = line.split()[0].replace("-restore", "")
        elif line.startswith("*"):
            table = line[1:]
        elif line.startswith(("-I ", "-D ")):
            out.append(f"{exe} -t {table} {line}")
    return out


OUR_OPTIONS = {"-i": 1, "-o": 1, "--nflog-prefix": 1, "--nflog-size": 1,
               "--nflog-threshold": 1}


def strip_ours(command: str) -> str:
    """Remove what we add to the article's rules: the comment match and the options."""
    toks = shlex.split(command)
    out: list[str] = []
    i = 0
    while i < len(toks):
        if toks[i : i + 2] == ["-m", "comment"]:
            assert toks[i + 2] == "--comment"
            i += 4
            continue
        if toks[i] in OUR_OPTIONS:
            i += 1 + OUR_OPTIONS[toks[i]]
            continue
        out.append(toks[i])
        i += 1
    return " ".join(out)


# -- the article -----------------------------------------------------------------------------


def test_article_file_matches_the_embedded_rules() -> None:
    if not ARTICLE_FILE.exists():
        pytest.skip(f"reference article not found at {ARTICLE_FILE}")
    parsed = parse_article(ARTICLE_FILE.read_text())
    assert parsed == ARTICLE_RULES


def test_every_article_section_has_a_preset() -> None:
    assert set(ARTICLE_PRESET) == set(ARTICLE_RULES)


@pytest.mark.parametrize("title", list(ARTICLE_RULES))
def test_iptables_form_is_the_articles_line_by_line(title: str) -> None:
    text = rules.render(ARTICLE_PRESET[title], "iptables", group=5, family="ipv4", tag=TAG)
    got = rendered_commands(text)
    # the only addition with default options is the owner comment, right before -j
    for cmd in got:
        assert f'-m comment --comment "ipsec_nflog:{TAG}" -j NFLOG' in cmd
    assert [strip_ours(c) for c in got] == ARTICLE_RULES[title]


@pytest.mark.parametrize("title", list(ARTICLE_RULES))
def test_article_lines_survive_all_our_options(title: str) -> None:
    text = rules.render(ARTICLE_PRESET[title], "iptables", group=5, family="ipv4", tag=TAG,
                        prefix="ipsec dump", snaplen=256, threshold=20, interface="eth0")
    assert [strip_ours(c) for c in rendered_commands(text)] == ARTICLE_RULES[title]


def test_all_is_ingress_egress_and_decap_in_article_order() -> None:
    text = rules.render("all", "iptables", group=5, family="ipv4", tag=TAG)
    want = (ARTICLE_RULES["Ingress IPsec and IKE Traffic"]
            + ARTICLE_RULES["Egress IPsec and IKE Traffic"]
            + ARTICLE_RULES["Decapsulated IPsec Traffic"])
    assert [strip_ours(c) for c in rendered_commands(text)] == want


def test_ipv6_differs_only_in_binary_and_ah_match() -> None:
    v4 = rendered_commands(rules.render("all", "iptables", group=5, family="ipv4", tag=TAG))
    v6 = rendered_commands(rules.render("all", "iptables", group=5, family="ipv6", tag=TAG))
    # ip6tables: "-p ah" never matches (AH is an extension header there), "-m ah" does
    assert [c.replace("iptables", "ip6tables", 1).replace("-p ah", "-m ah") for c in v4] == v6


# -- golden files ----------------------------------------------------------------------------


def _golden_text(preset: str, family: str, backend: str) -> str:
    install = rules.render(preset, backend, group=5, family=family, tag=TAG)
    remove = rules.render(preset, backend, group=5, family=family, tag=TAG, action="remove")
    return f"{install}# --- remove ---\n{remove}"


def _check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}; run with IPSEC_NFLOG_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} differs from the golden file"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("preset", list(PRESETS))
def test_render_matches_golden(preset: str, family: str, backend: str) -> None:
    _check_golden(f"{preset}-{family}-{backend}.txt", _golden_text(preset, family, backend))


FULL_OPTIONS: dict[str, Any] = dict(
    group=65535, prefix="ipsec dump: #1 `x` ;|&<>(){}[]", snaplen=128, threshold=50,
    interface="eth+", tag=TAG)


@pytest.mark.parametrize("backend", ["iptables", "nft"])
def test_render_with_every_option_matches_golden(backend: str) -> None:
    text = rules.render("all", backend, family="both", ike_ports=[4501, 10500],
                        reqid=7, spi=0x1234, negate={"spi"}, **FULL_OPTIONS)
    _check_golden(f"options-all-both-{backend}.txt", text)


def test_render_strict_policy_matches_golden() -> None:
    opts: dict[str, Any] = dict(group=1, family="ipv4", tag=TAG, strict=True, reqid=1,
                                proto="esp", mode="tunnel", tunnel_src="192.0.2.0/24",
                                tunnel_dst="198.51.100.7",
                                next_elements=[{"proto": "ipcomp", "mode": "tunnel",
                                                "negate": {"proto"}}])
    text = rules.render("decap", "iptables", **opts)
    _check_golden("options-strict-decap-ipv4-iptables.txt", text)
    opts6: dict[str, Any] = dict(group=1, family="ipv6", tag=TAG, strict=True, reqid=1,
                                 next_elements=[{"spi": 0x100, "negate": ["spi"]}])
    _check_golden("options-strict-decap-ipv6-nft.txt", rules.render("decap", "nft", **opts6))


def test_nft_owner_render_adds_only_the_flag() -> None:
    plain = rules.render("all", "nft", group=5, tag=TAG)
    owned = rules.render("all", "nft", group=5, tag=TAG, owner=True)
    assert owned.replace("\tflags owner\n", "") == plain
    assert "\tflags owner\n" in owned


def test_variants_differ_only_in_binary_names() -> None:
    base = rules.render("all", "iptables", group=5, tag=TAG)
    for name, mid in (("iptables-nft", "-nft"), ("iptables-legacy", "-legacy")):
        text = rules.render("all", name, group=5, tag=TAG)
        assert text == base.replace("iptables-restore", f"iptables{mid}-restore").replace(
            "ip6tables-restore", f"ip6tables{mid}-restore")


def test_render_is_deterministic_and_owner_tag_is_in_every_rule() -> None:
    for backend in BACKENDS:
        a = rules.render("all", backend, group=5, tag=TAG)
        assert a == rules.render("all", backend, group=5, tag=TAG)
    rs = rules.build("all", group=5, tag=TAG)
    text = rules.render(rs, "iptables")
    assert text.count(f'--comment "ipsec_nflog:{TAG}"') == 2 * len(rs.rules)
    text = rules.render(rs, "nft")
    assert text.count(f'comment "ipsec_nflog:{TAG}"') == len(rs.rules) + 1  # + the table


def test_remove_batch_deletes_exactly_the_installed_rules() -> None:
    rs = rules.build("all", group=5, tag=TAG, prefix="x y", interface="eth0")
    b = rules.IptablesBackend("iptables")
    for ins, rem in zip(b.batches(rs, "install"), b.batches(rs, "remove"), strict=True):
        assert ins.argv == rem.argv
        assert [ln.replace("-I ", "-D ", 1) for ln in ins.script.splitlines()] == \
            rem.script.splitlines()


def test_restore_batches_use_argv_lists_with_wait_and_noflush() -> None:
    rs = rules.build("decap", group=5, tag=TAG)
    for name in ("iptables", "iptables-nft", "iptables-legacy"):
        for batch in rules.IptablesBackend(name).batches(rs, "install"):
            assert isinstance(batch.argv, list)
            assert batch.argv[1:] == ["-w", "--noflush"]
            assert "-F" not in batch.script.split() and "-X" not in batch.script.split()


def test_libipsec_uses_the_named_device_both_ways() -> None:
    text = rules.render("libipsec", "iptables", group=3, family="ipv4", tag=TAG,
                        interface="tun7")
    cmds = [strip_ours(c.replace("-i tun7", "-i@tun7").replace("-o tun7", "-o@tun7"))
            for c in rendered_commands(text)]
    assert cmds == ["iptables -t mangle -I PREROUTING -i@tun7 -j NFLOG --nflog-group 3",
                    "iptables -t mangle -I POSTROUTING -o@tun7 -j NFLOG --nflog-group 3"]
    assert 'iifname "ipsec0"' in rules.render("libipsec", "nft", group=3, tag=TAG)


def test_interface_wildcard_translates_for_nft() -> None:
    text = rules.render("ike-esp-in", "nft", group=1, tag=TAG, interface="eth+")
    assert 'iifname "eth*"' in text and "+" not in text.split("iifname")[1].split("\n")[0]


def test_extra_ike_ports_keep_500_and_4500_first() -> None:
    rs = rules.build("ike-esp-out", group=1, tag=TAG, ike_ports=[4500, 7000, 500, 7001])
    assert "--dports 500,4500,7000,7001" in rules.render(rs, "iptables")
    assert "udp dport { 500, 4500, 7000, 7001 }" in rules.render(rs, "nft")


def test_render_remove_for_nft_deletes_the_table_only() -> None:
    text = rules.render("all", "nft", group=5, family="ipv4", tag=TAG, action="remove")
    assert text == "nft -f - <<'EOF'\ndelete table ip ipsec_nflog_pid4242_s1000_0123abcd\nEOF\n"


# -- validation --------------------------------------------------------------------------------

BAD: list[tuple[str, dict[str, Any], str]] = [
    ("ike-esp-in", {"group": -1}, "NFLOG group must be in 0..65535"),
    ("ike-esp-in", {"group": 65536}, "NFLOG group must be in 0..65535"),
    ("ike-esp-in", {"group": "5"}, "NFLOG group must be an integer"),
    ("ike-esp-in", {"group": True}, "NFLOG group must be an integer"),
    ("ike-esp-in", {"group": 5, "prefix": "x" * 64}, "at most 63"),
    ("ike-esp-in", {"group": 5, "prefix": "a\nb"}, "newline"),
    ("ike-esp-in", {"group": 5, "prefix": 'a"b'}, "quote"),
    ("ike-esp-in", {"group": 5, "prefix": "a'b"}, "quote"),
    ("ike-esp-in", {"group": 5, "prefix": "a\\b"}, "backslash"),
    ("ike-esp-in", {"group": 5, "prefix": "a\0b"}, "NUL"),
    ("ike-esp-in", {"group": 5, "prefix": "cost $x"}, "nft expands as a variable"),
    ("ike-esp-in", {"group": 5, "prefix": "a\tb"}, "non-printable"),
    ("ike-esp-in", {"group": 5, "prefix": "caf\u00e9"}, "non-ASCII"),
    ("ike-esp-in", {"group": 5, "snaplen": -1}, "snaplen"),
    ("ike-esp-in", {"group": 5, "snaplen": 65536}, "snaplen"),
    ("ike-esp-in", {"group": 5, "threshold": 0}, "threshold"),
    ("ike-esp-in", {"group": 5, "threshold": 65536}, "threshold"),
    ("ike-esp-in", {"group": 5, "family": "inet"}, "family must be"),
    ("ike-esp-in", {"group": 5, "interface": ""}, "must not be empty"),
    ("ike-esp-in", {"group": 5, "interface": "a" * 16}, "at most 15"),
    ("ike-esp-in", {"group": 5, "interface": "eth/0"}, "'/'"),
    ("ike-esp-in", {"group": 5, "interface": "eth:0"}, "':'"),
    ("ike-esp-in", {"group": 5, "interface": "eth 0"}, "' '"),
    ("ike-esp-in", {"group": 5, "interface": "."}, "not allowed"),
    ("ike-esp-in", {"group": 5, "interface": ".."}, "not allowed"),
    ("ike-esp-in", {"group": 5, "interface": 'et"h'}, "quotes"),
    ("ike-esp-in", {"group": 5, "interface": "e+th"}, "inner '+'"),
    ("libipsec", {"group": 5, "interface": "ipsec 0"}, "TUN device name"),
    ("ike-esp-in", {"group": 5, "ike_ports": [0]}, "IKE port must be in 1..65535"),
    ("ike-esp-in", {"group": 5, "ike_ports": [70000]}, "IKE port must be in 1..65535"),
    ("ike-esp-in", {"group": 5, "ike_ports": list(range(1000, 1014))}, "at most 15"),
    ("decap", {"group": 5, "ike_ports": [4501]}, "ike_ports apply to presets with IKE"),
    ("nosuch", {"group": 5}, "unknown preset 'nosuch'"),
    ("ike-esp-in", {"group": 5, "reqid": 1}, "policy options"),
    ("libipsec", {"group": 5, "strict": True, "reqid": 1}, "policy options"),
    ("decap", {"group": 5, "tunnel_src": "10.0.0.1", "family": "ipv4"},
     "--tunnel-src is only valid with --mode tunnel"),
    ("decap", {"group": 5, "tunnel_dst": "10.0.0.1", "mode": "transport", "family": "ipv4"},
     "--tunnel-dst is only valid with --mode tunnel"),
    ("decap", {"group": 5, "tunnel_src": "10.0.0.1", "mode": "tunnel", "negate": {"mode"},
               "family": "ipv4"}, "only valid with --mode tunnel"),
    ("decap", {"group": 5, "pol": "none", "strict": True},
     "--pol none cannot be combined with --strict"),
    ("decap", {"group": 5, "pol": "none", "reqid": 3}, "need --pol ipsec"),
    ("decap", {"group": 5, "pol": "maybe"}, "--pol must be"),
    ("decap", {"group": 5, "strict": True}, "--strict needs at least one policy element"),
    ("decap", {"group": 5, "reqid": 1, "next_elements": [{"reqid": 2}]},
     "--next can only be used with --strict"),
    ("decap", {"group": 5, "strict": True, "next_elements": [{"reqid": 2}]},
     "policy element 0 is empty"),
    ("decap", {"group": 5, "strict": True, "reqid": 1, "next_elements": [{}]},
     "policy element 1 is empty"),
    ("decap", {"group": 5, "strict": True, "reqid": 1,
               "next_elements": [{"reqid": i} for i in range(4)]}, "at most 4"),
    ("decap", {"group": 5, "proto": "gre"}, "policy proto must be"),
    ("decap", {"group": 5, "mode": "beet"}, "policy mode must be"),
    ("decap", {"group": 5, "reqid": -1}, "reqid must be in"),
    ("decap", {"group": 5, "spi": 2**32}, "spi must be in"),
    ("decap", {"group": 5, "negate": {"spi"}}, "no spi is given"),
    ("decap", {"group": 5, "reqid": 1, "negate": {"color"}}, "unknown policy field"),
    ("decap", {"group": 5, "strict": True, "reqid": 1, "next_elements": [{"color": 1}]},
     "unknown policy element option"),
    ("decap", {"group": 5, "mode": "tunnel", "tunnel_src": "10.0.0.1"},
     "need a single family"),
    ("decap", {"group": 5, "mode": "tunnel", "tunnel_src": "10.0.0.300", "family": "ipv4"},
     "not a valid address"),
    ("decap", {"group": 5, "mode": "tunnel", "tunnel_src": "10.0.0.0/33", "family": "ipv4"},
     "not a valid address"),
    ("decap", {"group": 5, "mode": "tunnel", "tunnel_src": "10.0.0.1/8", "family": "ipv4"},
     "has host bits set"),
    ("decap", {"group": 5, "mode": "tunnel", "tunnel_dst": "2001:db8::1", "family": "ipv4"},
     "is IPv6 but the rules are ipv4"),
    ("decap", {"group": 5, "mode": "tunnel", "tunnel_dst": "192.0.2.1", "family": "ipv6"},
     "is IPv4 but the rules are ipv6"),
    ("decap", {"group": 5, "tag": "has space"}, "owner tag must be"),
    ("decap", {"group": 5, "tag": "under_score"}, "owner tag must be"),
]


def _nothing_runs(*args: object, **kwargs: object) -> None:
    raise AssertionError(f"a command ran: {args}")


@pytest.mark.parametrize(("preset", "opts", "message"), BAD,
                         ids=[f"{i}-{m[:30]}" for i, (_, _, m) in enumerate(BAD)])
def test_validation_errors(preset: str, opts: dict[str, Any], message: str,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_run, "run", _nothing_runs)
    with pytest.raises(ValueError) as ei:
        rules.build(preset, **opts)
    assert message in str(ei.value)
    # the same error comes out of every entry point, before anything runs
    for backend in ("iptables", "nft", None):
        with pytest.raises(ValueError, match=re.escape(message)):
            rules.render(preset, backend or "iptables", **opts)
        with pytest.raises(ValueError, match=re.escape(message)):
            rules.install(preset, backend=backend, **opts)


def test_group_is_required() -> None:
    with pytest.raises(ValueError, match=r"group= .* is required"):
        rules.render("all", "iptables")


def test_unknown_backend_and_action() -> None:
    with pytest.raises(ValueError, match="unknown backend 'pf'"):
        rules.render("all", "pf", group=1)
    with pytest.raises(ValueError, match="unknown backend"):
        rules.install("all", backend="ipfw", group=1)
    with pytest.raises(ValueError, match="action must be"):
        rules.render("all", "nft", group=1, action="flush")  # type: ignore[arg-type]


def test_bad_netns_name_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="invalid network namespace name"):
        rules.install("all", backend="iptables", group=1, netns="../etc")


def test_good_edge_values_are_accepted() -> None:
    rules.build("ike-esp-in", group=0, prefix="x" * 63, snaplen=0, threshold=65535,
                interface="a" * 15, ike_ports=list(range(2000, 2013)))
    rules.build("ike-esp-in", group=65535, interface="+")
    rules.build("decap", group=1, family="ipv6", strict=True, mode="tunnel",
                tunnel_src="2001:db8::/32", tunnel_dst="2001:db8::1",
                next_elements=[rules.PolicyElement(spi=1)] * 3)
    rules.build("decap", group=1, pol="none")
    rules.build("all", group=1, reqid=4, spi=2**32 - 1)  # filters apply to the policy rules


def test_nft_refuses_policy_proto_and_mode_and_auto_picks_iptables(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rs = rules.build("decap", group=1, proto="esp")
    with pytest.raises(ValueError, match="cannot match the SA protocol or mode"):
        rules.render(rs, "nft")
    assert nft.nft_unsupported(rs)
    monkeypatch.setattr(nft.NftBackend, "owner_available", staticmethod(lambda: True))
    monkeypatch.setattr(_run, "tool_available", lambda name: f"/usr/sbin/{name}")
    assert lifecycle.choose_backend(rs) == "iptables"
    assert lifecycle.choose_backend(rules.build("decap", group=1, reqid=1)) == "nft"


def test_choose_backend_order(monkeypatch: pytest.MonkeyPatch) -> None:
    have: set[str] = set()
    monkeypatch.setattr(_run, "tool_available",
                        lambda name: f"/usr/sbin/{name}" if name in have else None)
    owner = [False]
    monkeypatch.setattr(nft.NftBackend, "owner_available", staticmethod(lambda: owner[0]))
    with pytest.raises(ToolMissingError, match="apt-get install"):
        lifecycle.choose_backend()
    have.add("nft")
    assert lifecycle.choose_backend() == "nft"
    have.update({"iptables", "iptables-restore"})
    assert lifecycle.choose_backend() == "iptables"
    owner[0] = True
    assert lifecycle.choose_backend() == "nft"


def test_nft_owner_flag_needs_kernel_5_12() -> None:
    assert not nft.owner_flag_supported("5.11.22-generic")
    assert nft.owner_flag_supported("5.12.0")
    assert nft.owner_flag_supported("6.18.44-fc-v657")
    assert nft.kernel_version("garbage") == (0, 0)


# -- missing tools and kernel support --------------------------------------------------------


def test_missing_iptables_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(_run, "EXTRA_PATH", ())
    with pytest.raises(ToolMissingError) as ei:
        rules.install("ike-esp-in", backend="iptables-legacy", group=5)
    assert str(ei.value) == "iptables-legacy-restore not found: apt-get install iptables"
    with pytest.raises(ToolMissingError, match="nft not found: apt-get install nftables"):
        rules.install("ike-esp-in", backend="nft", nft_owner=False, group=5)


def test_missing_libnftables_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from ipsec_nflog.rules import _libnftables

    monkeypatch.setattr(_libnftables, "LIBNAME", "libnftables-does-not-exist.so.1")
    monkeypatch.setattr(_libnftables, "_lib", None)
    monkeypatch.setattr(_libnftables, "_load_error", None)
    with pytest.raises(ToolMissingError, match="apt-get install libnftables1"):
        _libnftables.NftContext()
    assert not _libnftables.libnftables_available()


def _fake_proc(tmp_path: Path, matches: list[str], targets: list[str]) -> str:
    for fam in ("ip", "ip6"):
        (tmp_path / f"{fam}_tables_matches").write_text("\n".join(matches) + "\n")
        (tmp_path / f"{fam}_tables_targets").write_text("\n".join(targets) + "\n")
    return str(tmp_path)


def test_rejected_policy_match_names_xt_policy(tmp_path: Path) -> None:
    rs = rules.build("local", group=5, tag=TAG, family="ipv4")
    batch = rules.IptablesBackend("iptables-legacy").batches(rs, "install")[0]
    proc = _fake_proc(tmp_path, ["addrtype", "comment", "multiport"], ["NFLOG"])
    err = iptables.diagnose_failure(batch, 1, "iptables-restore: line 3 failed\n", "install",
                                    proc_dir=proc)
    assert isinstance(err, KernelSupportError)
    assert "kernel lacks xt_policy (CONFIG_NETFILTER_XT_MATCH_POLICY)" in str(err)
    assert "modprobe xt_policy" in str(err)
    assert err.modules == ["xt_policy"]
    assert "'COMMIT'" in str(err)  # legacy reports the COMMIT line


def test_rejected_nflog_target_and_ah_match(tmp_path: Path) -> None:
    rs = rules.build("ike-esp-in", group=5, tag=TAG, family="ipv6")
    batch = rules.IptablesBackend("iptables-nft").batches(rs, "install")[0]
    proc = _fake_proc(tmp_path, ["comment", "multiport", "udp"], [])
    err = iptables.diagnose_failure(
        batch, 4, "iptables-nft-restore v1.8.9 (nf_tables): \nline 3: RULE_INSERT failed "
        "(No such file or directory): rule in chain PREROUTING\n", "install", proc_dir=proc)
    assert isinstance(err, KernelSupportError)
    assert err.modules == ["ip6t_ah", "xt_NFLOG"]
    assert "at line 3 ('-I PREROUTING -m ah" in str(err)


def test_missing_userspace_extension_says_install_iptables(tmp_path: Path) -> None:
    rs = rules.build("decap", group=5, tag=TAG, family="ipv4")
    batch = rules.IptablesBackend("iptables").batches(rs, "install")[0]
    err = iptables.diagnose_failure(
        batch, 2, "iptables-restore v1.8.9 (legacy): Couldn't load match `policy':No such "
        "file or directory\n\nError occurred at line: 2\n", "install",
        proc_dir=_fake_proc(tmp_path, [], []))
    assert isinstance(err, ToolMissingError)
    assert str(err).startswith("the iptables extension libxt_policy.so not found: "
                               "apt-get install iptables")


def test_other_failures_stay_plain_rules_errors(tmp_path: Path) -> None:
    rs = rules.build("decap", group=5, tag=TAG, family="ipv4")
    batch = rules.IptablesBackend("iptables").batches(rs, "install")[0]
    proc = _fake_proc(tmp_path, ["policy", "comment"], ["NFLOG"])
    err = iptables.diagnose_failure(batch, 4, "Another app is currently holding the xtables "
                                    "lock.", "install", proc_dir=proc)
    assert type(err) is RulesError and "xtables lock" in str(err)
    assert err.argv == ["iptables-restore", "-w", "--noflush"]


@pytest.mark.parametrize(("statement", "module"), [
    ("ipsec in reqid 1 counter log group 5", "nft_xfrm"),
    ("fib daddr type local meta secpath exists counter log group 5", "nft_fib_inet"),
    ("meta secpath exists counter log group 5", "nft_meta with XFRM"),
    ("flags owner", "a kernel >= 5.12 for the table owner flag"),
    ("rt ipsec exists counter log group 5", "nft_rt with XFRM"),
])
def test_nft_errors_name_the_missing_kernel_support(statement: str, module: str) -> None:
    err_text = (f"/dev/stdin:5:3-40: Error: Could not process rule: No such file or "
                f"directory\n{statement}\n^^^^^^^^^^\n")
    err = nft.diagnose_nft(err_text, "", "install")
    assert isinstance(err, KernelSupportError) and err.modules == [module]
    assert f"The kernel lacks {module}" in str(err)


def test_nft_errors_other_than_enoent_are_not_blamed_on_modules() -> None:
    err_text = ("/dev/stdin:5:3-40: Error: Could not process rule: Operation not supported\n"
                "ipsec in reqid 1 counter log group 5\n^^^^^^^^^^\n")
    err = nft.diagnose_nft(err_text, "", "install")
    assert type(err) is RulesError and "Operation not supported" in str(err)


# -- owner tags ------------------------------------------------------------------------------


def test_owner_tag_names_this_process_and_start_time() -> None:
    tag = rules.new_owner_tag()
    owner = rules.parse_owner_tag(tag)
    assert owner is not None and owner.pid == os.getpid()
    assert owner.start_time == model.process_start_time(os.getpid()) and owner.owner_alive()
    assert model.validate_tag(tag) == tag
    assert nft.tag_of_table(nft.table_name(tag)) == tag
    assert tag != rules.new_owner_tag()


def test_owner_tag_of_a_dead_or_recycled_process_is_dead() -> None:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert not rules.parse_owner_tag(f"pid{p.pid}-s1-00").owner_alive()  # type: ignore[union-attr]
    # our own PID with another start time: a recycled PID
    assert not rules.parse_owner_tag(  # type: ignore[union-attr]
        f"pid{os.getpid()}-s1-00").owner_alive()
    assert rules.parse_owner_tag("custom-tag") is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_rendered_rules_carry_a_persistent_tag_that_cleanup_never_takes(backend: str) -> None:
    """Rendered commands are pasted elsewhere and outlive the rendering process: a tag
    naming it (``pid..-s..``) would be stale, and ``cleanup`` would delete them, as soon as
    it exits. An explicit tag and the rules install() makes keep theirs."""
    from ipsec_nflog.rules import leftovers

    texts = [rules.render("all", backend, group=5) for _ in range(2)]
    tags = [set(re.findall(r"ipsec_nflog:([\w-]+)", t)) for t in texts]
    assert all(len(t) == 1 for t in tags) and tags[0] != tags[1]  # one fresh tag per render
    for (tag,) in tags:
        assert re.fullmatch(r"keep-[0-9a-f]{8}", tag)
        assert rules.parse_owner_tag(tag) is None and not leftovers._owner_gone(tag)
    assert f"ipsec_nflog:{TAG}" in rules.render("all", backend, group=5, tag=TAG)
    assert rules.parse_owner_tag(rules.build("all", group=5).tag) is not None  # install()'s


def test_parse_save_finds_only_our_comments() -> None:
    text = "\n".join([
        "# Generated by iptables-save v1.8.9",
        "*raw",
        ":PREROUTING ACCEPT [0:0]",
        f'-A PREROUTING -p esp -m comment --comment "ipsec_nflog:{TAG}" -j NFLOG',
        '-A PREROUTING -p esp -m comment --comment "someone else" -j NFLOG',
        "-A PREROUTING -p ah -j NFLOG --nflog-prefix ipsec_nflog:fake",
        "COMMIT",
    ])
    found = iptables.parse_save(text, "iptables-nft", "ipv4")
    assert [(t.table, t.tag) for t in found] == [("raw", TAG)]
    assert str(found[0]).startswith("iptables -t raw -A PREROUTING -p esp")


def test_rules_package_never_imports_the_compiled_core() -> None:
    code = ("import sys, ipsec_nflog.rules as r; r.render('all', 'nft', group=1); "
            "r.render('all', 'iptables', group=1); "
            "assert 'ipsec_nflog.capture._nflog_cffi' not in sys.modules, 'core imported'; "
            "assert 'ipsec_nflog.capture._native' not in sys.modules, 'binding imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.parametrize(("output", "variant"), [
    ("iptables v1.8.9 (nf_tables)\n", "nf_tables"),
    ("iptables v1.8.9 (legacy)\n", "legacy"),
    ("iptables v1.6.1\n", "legacy"),  # before 1.8 there was only legacy
])
def test_detect_variant_reads_iptables_version(output: str, variant: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def fake_run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        seen.append(list(argv))
        return subprocess.CompletedProcess(argv, 0, output, "")

    monkeypatch.setattr(_run, "run", fake_run)
    assert iptables.detect_variant() == variant
    assert rules.IptablesBackend("iptables-legacy").detect_variant() == variant
    assert seen == [["iptables", "--version"], ["iptables-legacy", "--version"]]


def test_detect_variant_on_this_system() -> None:
    for name, want in (("iptables-nft", "nf_tables"), ("iptables-legacy", "legacy")):
        if _run.tool_available(name) is None:
            continue
        assert iptables.detect_variant(name) == want


@pytest.mark.parametrize("prefix", ["a", " x ", "#;|&<>(){}[]`!%^*?~=+,.:/@-_", "x" * 63])
def test_prefix_round_trips_through_both_renderings(prefix: str) -> None:
    rs = rules.build("outgoing", group=1, tag=TAG, prefix=prefix, family="ipv4")
    line = rules.render(rs, "iptables").splitlines()[2]
    toks = shlex.split(line)
    assert toks[toks.index("--nflog-prefix") + 1] == prefix
    assert f'log prefix "{prefix}" group 1' in rules.render(rs, "nft")
