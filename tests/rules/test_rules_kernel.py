"""The rule helpers against the real kernel, inside throwaway network namespaces only.

For every backend (iptables-nft, iptables-legacy, nftables with the owner flag through
libnftables, and nftables through the ``nft`` command): every preset installs, shows up in
iptables-save / nft list, catches exactly the packets it should (checked with the rule
counters and with the Capture API), and removal leaves the ruleset byte-identical, foreign
rules included. Traffic stays inside the test namespaces: loopback, or veth pairs between
test namespaces.

This kernel has no ESP/AH, so ``--pol ipsec`` rules cannot match; they are checked to be
accepted and to stay at zero. ``--pol none`` (the same match, other polarity) does match
plain traffic, which exercises the chains, hooks and addrtype/fib translations.
"""

from __future__ import annotations

import errno
import re
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import dpkt
import pytest

from ipsec_nflog import rules
from ipsec_nflog.rules import _libnftables, _run, iptables, nft
from ipsec_nflog.rules.errors import RulesError
from ipsec_nflog.rules.presets import PRESETS
from tests.conftest import require_tool
from tests.support import nstools

pytestmark = pytest.mark.privileged

IPT_VARIANTS = ("iptables-nft", "iptables-legacy")
BACKENDS = ("iptables-nft", "iptables-legacy", "nft", "nft-cli")
SAVE_TOOLS = ("iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save",
              "ip6tables-legacy-save")
HOOKS = {"PREROUTING": "PREROUTING", "OUTPUT": "OUTPUT", "INPUT": "INPUT",
         "FORWARD": "FORWARD", "POSTROUTING": "POSTROUTING"}
LOOPBACK = {"ipv4": "127.0.0.1", "ipv6": "::1"}
GROUP = 4242


# -- helpers ---------------------------------------------------------------------------------


def need_backend(backend: str) -> dict[str, Any]:
    """The install() keyword arguments for a test backend name; skips when unavailable."""
    if backend in IPT_VARIANTS:
        require_tool(f"{backend}-restore", "iptables")
        require_tool(f"{backend}-save", "iptables")
        return {"backend": backend}
    require_tool("nft", "nftables")
    if backend == "nft":
        if not _libnftables.libnftables_available():
            require_tool("libnftables.so.1", "libnftables1")
        return {"backend": "nft", "nft_owner": True}
    return {"backend": "nft", "nft_owner": False}


def run(ns: str, *argv: str, input: str | None = None) -> str:
    return nstools.run(list(argv), ns=ns, input=input).stdout


FOREIGN_IPT = """*raw
-A PREROUTING -p udp --dport 9999 -m comment --comment foreign-raw-pre -j ACCEPT
-A OUTPUT -p udp --dport 9999 -m comment --comment foreign-raw-out -j ACCEPT
COMMIT
*mangle
-A PREROUTING -p tcp --dport 9999 -m comment --comment foreign-mangle-pre -j ACCEPT
-A POSTROUTING -p tcp --dport 9999 -j ACCEPT
COMMIT
*filter
-A INPUT -p tcp --dport 9998 -j ACCEPT
-A FORWARD -p tcp --dport 9998 -j ACCEPT
-A OUTPUT -p tcp --dport 9998 -m comment --comment "foreign filter" -j ACCEPT
COMMIT
"""
FOREIGN_NFT = """table inet foreign {
	chain pre {
		type filter hook prerouting priority raw; policy accept;
		udp dport 9999 counter accept comment "foreign nft"
	}
}
table ip ipsec_nflog_lookalike_not_ours {
	chain c {
		type filter hook output priority filter; policy accept;
	}
}
"""


def add_foreign_rules(ns: str) -> None:
    """Rules that are not ours, in every table and chain the presets use."""
    for v in IPT_VARIANTS:
        for fam in ("iptables", "ip6tables"):
            if _run.tool_available(f"{fam}{v[8:]}-restore"):
                run(ns, f"{fam}{v[8:]}-restore", "--noflush", input=FOREIGN_IPT)
    run(ns, "nft", "-f", "-", input=FOREIGN_NFT)


def snapshot(ns: str, normalize_counters: bool = False) -> dict[str, str]:
    """Every ruleset view: the four save tools (timestamps dropped) and nft list ruleset."""
    out: dict[str, str] = {}
    for tool in SAVE_TOOLS:
        r = nstools.run([tool], ns=ns, check=False)
        if r.returncode == 0:
            out[tool] = "\n".join(ln for ln in r.stdout.splitlines() if not ln.startswith("#"))
    out["nft"] = run(ns, "nft", "list", "ruleset")
    if normalize_counters:
        for k, v in out.items():
            v = re.sub(r"\[\d+:\d+\]", "[0:0]", v)
            out[k] = re.sub(r"packets \d+ bytes \d+", "packets 0 bytes 0", v)
    return out


def save_tool(backend: str, family: str) -> str:
    fam = "iptables" if family == "ipv4" else "ip6tables"
    return f"{fam}{backend[8:]}-save"


def kind_of_rule_text(text: str) -> str:
    if re.search(r"-p esp\b|l4proto esp\b", text):
        return "esp"
    if re.search(r"-p ah\b|-m ah\b|l4proto ah\b", text):
        return "ah"
    if "dports" in text or "udp dport" in text:
        return "ike"
    if re.search(r"-m policy|secpath|meta ipsec|rt ipsec|ipsec (in|out)", text):
        return "policy"
    return "dev"


NFT_CHAIN = {v[0]: k[1] for k, v in nft.CHAINS.items()}


def counters(ns: str, handle: rules.InstalledRules) -> Counter[tuple[str, str]]:
    """Packets counted per (chain, kind) by our rules, summed over families."""
    out: Counter[tuple[str, str]] = Counter()
    if handle.backend == "nft":
        fam = nft.table_family(handle.ruleset.families)
        text = run(ns, "nft", "list", "table", fam, nft.table_name(handle.tag))
        chain = ""
        for line in text.splitlines():
            m = re.match(r"\s*chain (\S+) \{", line)
            if m:
                chain = NFT_CHAIN[m.group(1)]
                continue
            m = re.search(r"counter packets (\d+)", line)
            if m:
                out[(chain, kind_of_rule_text(line))] += int(m.group(1))
        return out
    for fam in handle.ruleset.families:
        text = run(ns, save_tool(handle.backend, fam), "-c")
        for line in text.splitlines():
            m = re.match(r"\[(\d+):\d+\] -A (\S+) ", line)
            if m and f"ipsec_nflog:{handle.tag}" in line:
                out[(m.group(2), kind_of_rule_text(line))] += int(m.group(1))
    return out


def our_rule_count(ns: str, handle: rules.InstalledRules) -> Counter[tuple[str, str]]:
    """How many of our rules each (table, chain) holds, summed over families."""
    out: Counter[tuple[str, str]] = Counter()
    if handle.backend == "nft":
        fam = nft.table_family(handle.ruleset.families)
        text = run(ns, "nft", "list", "table", fam, nft.table_name(handle.tag))
        chain = ""
        for line in text.splitlines():
            m = re.match(r"\s*chain (\S+) \{", line)
            if m:
                chain = m.group(1)
            elif f'comment "ipsec_nflog:{handle.tag}"' in line and chain:
                table, _, hook = chain.partition("_")
                out[(table, hook.upper())] += 1
        return out
    for fam in handle.ruleset.families:
        table = ""
        for line in run(ns, save_tool(handle.backend, fam)).splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith("-A ") and f'"ipsec_nflog:{handle.tag}"' in line:
                out[(table, line.split()[1])] += 1
    return out


def expected_rule_count(rs: rules.RuleSet, backend: str) -> Counter[tuple[str, str]]:
    per_family = 1 if backend.startswith("nft") else len(rs.families)
    out: Counter[tuple[str, str]] = Counter()
    for r in rs.rules:
        out[(r.table, r.chain)] += per_family
    return out


# -- traffic ---------------------------------------------------------------------------------

ESP_IN_UDP = bytes(dpkt.esp.ESP(spi=0x1001, seq=1, data=b"esp-in-udp" * 3))
ESP = bytes(dpkt.esp.ESP(spi=0x2001, seq=1, data=b"raw-esp-" * 4))
AH = bytes(dpkt.ah.AH(nxt=59, len=4, spi=0x3001, seq=1, data=b"\0" * 12))
UDP_SENDS = (
    (500, b"\x00ike-sa-init"),              # IKE
    (4500, b"\x00\x00\x00\x00ike-natt"),     # IKE on the NAT-T port (non-ESP marker)
    (4500, ESP_IN_UDP),                      # ESP-in-UDP
    (4501, b"not-ike-4501"),                 # caught only as an extra IKE port
    (53, b"plain-dns"),                      # never caught
)


def send_traffic(ns: str, family: str, dst: str | None = None) -> None:
    """Matching and non-matching packets from inside ``ns`` to ``dst`` (loopback default)."""
    af = socket.AF_INET if family == "ipv4" else socket.AF_INET6
    dst = dst or LOOPBACK[family]
    s = nstools.ns_socket(ns, af, socket.SOCK_DGRAM)
    try:
        for port, data in UDP_SENDS:
            s.sendto(data, (dst, port))
    finally:
        s.close()
    for proto, data in ((50, ESP), (51, AH)):
        raw = nstools.ns_socket(ns, af, socket.SOCK_RAW, proto)
        try:
            raw.sendto(data, (dst, 0))
        finally:
            raw.close()
    t = nstools.ns_socket(ns, af, socket.SOCK_STREAM)  # TCP to port 500: not IKE
    try:
        t.settimeout(2)
        assert t.connect_ex((dst, 500)) == errno.ECONNREFUSED
    finally:
        t.close()


def classify(payload: bytes) -> str:
    """esp / ah / udp<port> / tcp / icmp from an IP packet's bytes."""
    if payload[0] >> 4 == 4:
        proto, off = payload[9], (payload[0] & 0xF) * 4
    else:
        proto, off = payload[6], 40
    if proto == 17:
        return f"udp{int.from_bytes(payload[off + 2:off + 4], 'big')}"
    return {50: "esp", 51: "ah", 6: "tcp", 1: "icmp", 58: "icmp"}.get(proto, f"proto{proto}")


def ike_esp_kinds(extra_ports: tuple[int, ...] = ()) -> Counter[str]:
    """What an ike-esp rule set catches of send_traffic() per hook and family."""
    c: Counter[str] = Counter({"esp": 1, "ah": 1, "udp500": 1, "udp4500": 2})
    for p in extra_ports:
        c[f"udp{p}"] += sum(1 for port, _ in UDP_SENDS if port == p)
    return c


def expected_capture(preset: str, families: tuple[str, ...],
                     extra_ports: tuple[int, ...] = ()) -> Counter[tuple[str, str, str]]:
    hooks = {"ike-esp-in": ("PREROUTING",), "ike-esp-out": ("OUTPUT",),
             "all": ("PREROUTING", "OUTPUT")}.get(preset, ())
    out: Counter[tuple[str, str, str]] = Counter()
    for hook in hooks:
        for fam in families:
            for kind, n in ike_esp_kinds(extra_ports).items():
                out[(hook, fam, kind)] += n
    return out


def expected_counters(preset: str, families: tuple[str, ...],
                      extra_ports: tuple[int, ...] = ()) -> Counter[tuple[str, str]]:
    out: Counter[tuple[str, str]] = Counter()
    for (hook, _fam, kind), n in expected_capture(preset, families, extra_ports).items():
        out[(hook, "ike" if kind.startswith("udp") else kind)] += n
    return out


def capture_all(cap: Any, want: int, settle: float = 0.6) -> list[Any]:
    got = list(cap.packets(count=want, timeout=10)) if want else []
    got += list(cap.packets(timeout=settle))  # anything beyond what we expect
    return got


def caught(packets: list[Any]) -> Counter[tuple[str, str, str]]:
    return Counter((p.hook_name, "ipv4" if p.family == socket.AF_INET else "ipv6",
                    classify(p.payload)) for p in packets)


def capture_or_none() -> Any:
    try:
        from ipsec_nflog import Capture

        return Capture
    except Exception:  # the core may not be built
        return None


@pytest.fixture
def ns(netns: str) -> Iterator[str]:
    yield netns


# -- install / list / remove -----------------------------------------------------------------


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_install_lists_and_removes_byte_identically(ns: str, backend: str,
                                                    preset: str) -> None:
    kw = need_backend(backend)
    add_foreign_rules(ns)
    before = snapshot(ns)
    with rules.installed(preset, netns=ns, group=GROUP, prefix="ipsec dump", snaplen=200,
                         threshold=2, **kw) as h:
        assert our_rule_count(ns, h) == expected_rule_count(h.ruleset, backend)
        shown = rules.show(ns)
        assert h.tag in shown
        if backend.startswith("nft"):
            text = run(ns, "nft", "list", "table", "inet", nft.table_name(h.tag))
            assert ("flags owner" in text) == (backend == "nft") == h.owner_table
            assert 'log prefix "ipsec dump" group 4242 snaplen 200 queue-threshold 2' in text
        else:
            text = run(ns, save_tool(backend, "ipv4"))
            assert "--nflog-prefix \"ipsec dump\" --nflog-group 4242 --nflog-size 200 " \
                   "--nflog-threshold 2" in text
        # the foreign rules are all still there
        during = snapshot(ns)
        for k, v in before.items():
            for line in v.splitlines():
                if "foreign" in line:
                    assert line in during[k]
    assert not h.active
    h.remove()  # idempotent
    assert snapshot(ns) == before
    assert rules.show(ns) == ""


@pytest.mark.parametrize("backend", BACKENDS)
def test_families_install_where_they_should(ns: str, backend: str) -> None:
    kw = need_backend(backend)
    for family, want in (("ipv4", "ip"), ("ipv6", "ip6"), ("both", "inet")):
        with rules.installed("ike-esp-in", netns=ns, group=1, family=family, **kw) as h:
            if backend.startswith("nft"):
                assert f"table {want} {nft.table_name(h.tag)}" in run(ns, "nft", "list",
                                                                      "tables")
            else:
                for fam in ("ipv4", "ipv6"):
                    present = h.tag in run(ns, save_tool(backend, fam))
                    assert present == (fam in h.ruleset.families)


# -- traffic ---------------------------------------------------------------------------------

TRAFFIC_PRESETS = ("ike-esp-in", "ike-esp-out", "all", "decap", "local", "forward",
                   "outgoing")


@pytest.mark.parametrize("preset", TRAFFIC_PRESETS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_each_preset_catches_exactly_its_packets(ns: str, backend: str, preset: str) -> None:
    kw = need_backend(backend)
    Capture = capture_or_none()
    families = ("ipv4", "ipv6")
    add_foreign_rules(ns)
    before = snapshot(ns, normalize_counters=True)
    with rules.installed(preset, netns=ns, group=GROUP, prefix=f"p-{preset}", **kw) as h:
        cap = Capture(groups=[GROUP], netns=ns) if Capture else None
        try:
            for fam in families:
                send_traffic(ns, fam)
            want = expected_capture(preset, families)
            if cap is not None:
                got = capture_all(cap, sum(want.values()))
                assert caught(got) == want
                assert {p.prefix for p in got} <= {f"p-{preset}"}
        finally:
            if cap is not None:
                cap.close()
        assert +counters(ns, h) == expected_counters(preset, families)
        if PRESETS[preset].has_policy:
            # --pol ipsec cannot match on a kernel without ESP: accepted, and zero
            assert all(n == 0 for (_c, k), n in counters(ns, h).items() if k == "policy")
    assert snapshot(ns, normalize_counters=True) == before


@pytest.mark.parametrize("backend", BACKENDS)
def test_extra_ike_ports_and_interfaces(ns: str, backend: str) -> None:
    kw = need_backend(backend)
    fams = ("ipv4", "ipv6")
    cases: list[tuple[dict[str, Any], Counter[tuple[str, str]]]] = [
        ({"ike_ports": [4501]}, expected_counters("ike-esp-in", fams, (4501,))),
        ({"interface": "lo"}, expected_counters("ike-esp-in", fams)),
        ({"interface": "l+"}, expected_counters("ike-esp-in", fams)),
        ({"interface": "veth9"}, Counter()),
    ]
    for opts, want in cases:
        with rules.installed("ike-esp-in", netns=ns, group=GROUP, **kw, **opts) as h:
            for fam in fams:
                send_traffic(ns, fam)
            assert +counters(ns, h) == want, opts


POL_NONE_PRESETS = {
    # preset -> the hooks where --pol none (no IPsec) catches loopback traffic
    "decap": ("PREROUTING", "POSTROUTING"),
    "local": ("INPUT",),
    "forward": (),  # loopback is never forwarded; see test_forward_pol_none_via_router
    "outgoing": ("OUTPUT",),
}


@pytest.mark.parametrize("preset", list(POL_NONE_PRESETS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_policy_chains_see_traffic_with_pol_none(ns: str, backend: str, preset: str) -> None:
    """``--pol none`` is the policy match with the other polarity: it proves the chains,
    hooks, addrtype/fib and ``secpath missing``/``rt ipsec missing`` translations with
    real packets, which ``--pol ipsec`` cannot on this kernel."""
    kw = need_backend(backend)
    Capture = capture_or_none()
    with rules.installed(preset, netns=ns, group=GROUP, pol="none", family="ipv4", **kw) as h:
        cap = Capture(groups=[GROUP], netns=ns) if Capture else None
        try:
            marker = b"pol-none-marker"
            s = nstools.ns_socket(ns)
            try:
                s.sendto(marker, ("127.0.0.1", 7777))
            finally:
                s.close()
            hooks = POL_NONE_PRESETS[preset]
            c = counters(ns, h)
            for hook in hooks:
                assert c[(hook, "policy")] >= 1, (hook, c)
            if not hooks:
                assert sum(c.values()) == 0
            if cap is not None:
                got = [p for p in cap.packets(timeout=0.8) if p.payload and
                       classify(p.payload) == "udp7777" and p.payload.endswith(marker)]
                assert sorted(p.hook_name for p in got) == sorted(hooks)
        finally:
            if cap is not None:
                cap.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_pol_none_via_router(netns_factory: Any, backend: str) -> None:
    """A -- R -- B with R forwarding: ``forward`` (addrtype ! LOCAL) in R catches packets
    routed through R and not those addressed to R."""
    kw = need_backend(backend)
    a, r, b = netns_factory("fa"), netns_factory("fr"), netns_factory("fb")
    nstools.add_veth(a, r, "10.91.1.1/24", "10.91.1.2/24", name_a="veth0", name_b="va")
    nstools.add_veth(r, b, "10.91.2.1/24", "10.91.2.2/24", name_a="vb", name_b="veth0")
    nstools.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], ns=r)
    nstools.run(["ip", "route", "add", "default", "via", "10.91.1.2"], ns=a)
    nstools.run(["ip", "route", "add", "default", "via", "10.91.2.1"], ns=b)
    with rules.installed("forward", netns=r, group=GROUP, pol="none", family="ipv4",
                         **kw) as h:
        s = nstools.ns_socket(a)
        sink = nstools.ns_socket(b)  # a listener in B, so B sends no ICMP errors back
        sink.bind(("10.91.2.2", 7777))
        try:
            s.sendto(b"to-router", ("10.91.1.2", 7777))  # local to R: not forwarded
            time.sleep(0.2)
            assert sum(counters(r, h).values()) == 0
            for _ in range(3):
                s.sendto(b"through-router", ("10.91.2.2", 7777))
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and counters(r, h)[("FORWARD", "policy")] < 3:
                time.sleep(0.05)
        finally:
            s.close()
            sink.close()
        assert +counters(r, h) == Counter({("FORWARD", "policy"): 3})


STRICT_POLICY: dict[str, dict[str, Any]] = {
    "iptables": dict(strict=True, reqid=1, spi=0x100, negate={"spi"}, proto="esp",
                     mode="tunnel", tunnel_src="{net}", tunnel_dst="{addr}",
                     next_elements=[{"proto": "ipcomp", "mode": "transport"},
                                    {"reqid": 9, "negate": ["reqid"]}]),
    "nft": dict(strict=True, reqid=1, spi=0x100, negate={"spi"},
                next_elements=[{"reqid": 2}, {"spi": 7, "negate": ["spi"]}]),
}
ADDR = {"ipv4": ("192.0.2.0/24", "198.51.100.1"), "ipv6": ("2001:db8::/32", "2001:db8::1")}


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_policy_filters_are_accepted_and_stay_at_zero(ns: str, backend: str,
                                                      family: str) -> None:
    kw = need_backend(backend)
    opts = dict(STRICT_POLICY["nft" if backend.startswith("nft") else "iptables"])
    net, addr = ADDR[family]
    opts = {k: (v.format(net=net, addr=addr) if isinstance(v, str) else v)
            for k, v in opts.items()}
    for preset in ("decap", "local", "forward", "outgoing"):
        for o in (opts, {"reqid": 5}, {"spi": 0xC0FFEE, "negate": {"spi"}}, {}):
            with rules.installed(preset, netns=ns, group=GROUP, family=family, **kw,
                                 **o) as h:
                send_traffic(ns, family)
                c = counters(ns, h)
                assert c and all(n == 0 for n in c.values()), (preset, o, c)
                assert sum(our_rule_count(ns, h).values()) == len(h.ruleset.rules)


def test_nft_listing_shows_the_translations(ns: str) -> None:
    need_backend("nft")
    with rules.installed("decap", backend="nft", netns=ns, group=3, family="ipv6",
                         strict=True, reqid=1, next_elements=[{"spi": 5}]) as h:
        text = run(ns, "nft", "list", "table", "ip6", nft.table_name(h.tag))
    assert "ipsec in reqid 1 ipsec in spnum 1 spi 5 counter" in text
    assert "ipsec out reqid 1 ipsec out spnum 1 spi 5 counter" in text
    with rules.installed("all", backend="nft", netns=ns, group=3) as h:
        text = run(ns, "nft", "list", "table", "inet", nft.table_name(h.tag))
    for want in ("type filter hook prerouting priority raw;",
                 "type filter hook output priority raw;",
                 "type filter hook prerouting priority mangle;",
                 "type filter hook postrouting priority mangle;",
                 "meta l4proto esp counter", "meta l4proto ah counter",
                 "udp dport { 500, 4500 } counter", "meta ipsec exists counter",
                 "rt ipsec exists counter"):
        assert want in text, want
    with rules.installed("local", backend="nft", netns=ns, group=3) as h:
        text = run(ns, "nft", "list", "table", "inet", nft.table_name(h.tag))
    assert "type filter hook input priority filter;" in text
    assert "fib daddr type local meta ipsec exists counter" in text


# -- libipsec on a TUN-like device -------------------------------------------------------------


@pytest.mark.parametrize("device", [None, "vpn7"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_libipsec_catches_both_directions_on_the_device_only(
        netns_factory: Any, backend: str, device: str | None) -> None:
    kw = need_backend(backend)
    Capture = capture_or_none()
    a, b = netns_factory("la"), netns_factory("lb")
    name = device or "ipsec0"
    nstools.add_veth(a, b, "10.92.0.1/24", "10.92.0.2/24", name_a=name, name_b="veth0")
    listen_a = nstools.ns_socket(a)
    listen_b = nstools.ns_socket(b)
    listen_a.bind(("10.92.0.1", 7000))
    listen_b.bind(("10.92.0.2", 7000))
    opts: dict[str, Any] = {"interface": device} if device else {}
    try:
        with rules.installed("libipsec", netns=a, group=GROUP, family="ipv4", **kw,
                             **opts) as h:
            cap = Capture(groups=[GROUP], netns=a) if Capture else None
            try:
                for _ in range(2):
                    listen_a.sendto(b"a-to-b-via-tun", ("10.92.0.2", 7000))
                for _ in range(3):
                    listen_b.sendto(b"b-to-a-via-tun", ("10.92.0.1", 7000))
                lo = nstools.ns_socket(a)
                try:
                    lo.sendto(b"loopback-not-tun", ("127.0.0.1", 7000))
                finally:
                    lo.close()
                listen_b.settimeout(2)
                listen_a.settimeout(2)
                for _ in range(2):
                    listen_b.recv(100)
                for _ in range(3):
                    listen_a.recv(100)
                if cap is not None:
                    got = [p for p in cap.packets(timeout=1) if classify(p.payload) ==
                           "udp7000"]
                    assert Counter((p.hook_name, p.payload[28:]) for p in got) == Counter(
                        {("POSTROUTING", b"a-to-b-via-tun"): 2,
                         ("PREROUTING", b"b-to-a-via-tun"): 3})
                    assert {p.outdev_name for p in got if p.hook_name == "POSTROUTING"} \
                        == {name}
                    assert {p.indev_name for p in got if p.hook_name == "PREROUTING"} \
                        == {name}
            finally:
                if cap is not None:
                    cap.close()
            c = counters(a, h)
            # ARP is not IP, so with IPv4 the counters are exact
            assert +c == Counter({("PREROUTING", "dev"): 3, ("POSTROUTING", "dev"): 2})
    finally:
        listen_a.close()
        listen_b.close()


# -- what goes into the log ----------------------------------------------------------------


PREFIXES = ["ipsec dump", "a;b|c&d(e)`f`<g>#h!%^*?~=+,.:/@-_[]{}", "x" * 63, " lead"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_prefix_snaplen_and_group_reach_the_capture(ns: str, backend: str) -> None:
    kw = need_backend(backend)
    Capture = capture_or_none()
    if Capture is None:
        pytest.skip("the capture core is not built")
    for prefix in PREFIXES:
        with rules.installed("ike-esp-out", netns=ns, group=GROUP, prefix=prefix, snaplen=40,
                             family="ipv4", **kw), \
                Capture(groups=[GROUP], netns=ns) as cap:
            s = nstools.ns_socket(ns)
            try:
                s.sendto(b"\x00ike" + b"z" * 300, ("127.0.0.1", 500))
            finally:
                s.close()
            got = list(cap.packets(count=1, timeout=5))
            assert len(got) == 1
            assert got[0].prefix == prefix
            assert got[0].group == GROUP
            assert len(got[0].payload) == 40  # --nflog-size / snaplen
            assert got[0].hook_name == "OUTPUT"


# -- robustness ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", IPT_VARIANTS)
def test_remove_survives_someone_deleting_one_of_our_rules(ns: str, backend: str) -> None:
    need_backend(backend)
    add_foreign_rules(ns)
    before = snapshot(ns)
    h = rules.install("ike-esp-in", backend=backend, netns=ns, group=1)
    line = next(t.line for t in iptables.IptablesBackend(backend).tagged_rules(ns, "ipv4"))
    run(ns, f"iptables{backend[8:]}-restore", "--noflush",
        input=f"*raw\n-D{line[2:]}\nCOMMIT\n")
    h.remove()
    assert snapshot(ns) == before


@pytest.mark.parametrize("backend", IPT_VARIANTS)
def test_failed_second_family_rolls_back_the_first(ns: str, backend: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    need_backend(backend)
    before = snapshot(ns)
    real = iptables.IptablesBackend._apply

    def failing(self: Any, batch: Any, netns: str | None, what: str) -> None:
        if batch.family == "ipv6" and what == "install":
            raise RulesError("injected failure")
        real(self, batch, netns, what)

    monkeypatch.setattr(iptables.IptablesBackend, "_apply", failing)
    with pytest.raises(RulesError, match="injected"):
        rules.install("all", backend=backend, netns=ns, group=1)
    assert rules.active() == []
    after = snapshot(ns)
    assert rules.find(ns) == []
    for k in before:  # tables may now exist, but hold no rules
        assert [ln for ln in after[k].splitlines() if ln.startswith("-A")] == \
            [ln for ln in before[k].splitlines() if ln.startswith("-A")]


def test_kernel_refusal_raises_and_leaves_nothing(ns: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    need_backend("nft")
    real = nft.install_script

    def wrong_hook(rs: rules.RuleSet, owner: bool = False) -> str:
        # "ipsec in" in an output hook: the kernel answers EOPNOTSUPP
        return real(rs, owner).replace("hook prerouting priority mangle",
                                       "hook output priority mangle")

    monkeypatch.setattr(nft, "install_script", wrong_hook)
    for owner in (True, False):
        with pytest.raises(RulesError, match="Operation not supported") as ei:
            rules.install("decap", backend="nft", nft_owner=owner, netns=ns, group=1)
        assert not isinstance(ei.value, rules.KernelSupportError)
        assert rules.find(ns) == [] and rules.active() == []


def test_installed_removes_on_exception(ns: str) -> None:
    need_backend("iptables-nft")
    with pytest.raises(ZeroDivisionError):
        with rules.installed("all", backend="iptables-nft", netns=ns, group=1):
            assert rules.find(ns)
            1 / 0  # noqa: B018
    assert rules.find(ns) == []
    assert rules.active() == []


def test_cleanup_keeps_live_owners_and_foreign_rules(ns: str) -> None:
    need_backend("iptables-nft")
    need_backend("nft")
    add_foreign_rules(ns)
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale_tag = f"pid{dead.pid}-s1-0dead"
    stale = rules.build("ike-esp-in", group=1, tag=stale_tag)
    for name in IPT_VARIANTS:
        if _run.tool_available(f"{name}-restore"):
            iptables.IptablesBackend(name).install(stale, ns)
    run(ns, "nft", "-f", "-", input=nft.install_script(stale))
    with rules.installed("all", backend="iptables-nft", netns=ns, group=2) as live, \
            rules.installed("all", backend="nft", netns=ns, group=3) as live_nft:
        before_live = {str(x) for x in rules.find(ns) if x.tag != stale_tag}
        removed = rules.cleanup(ns)
        assert {x.tag for x in removed} == {stale_tag}
        assert len([x for x in removed if isinstance(x, rules.TaggedRule)]) == \
            2 * 3 * sum(1 for n in IPT_VARIANTS if _run.tool_available(f"{n}-restore"))
        assert [x for x in removed if isinstance(x, rules.NftTable)] == [
            rules.NftTable("inet", nft.table_name(stale_tag), stale_tag, False)]
        assert {str(x) for x in rules.find(ns)} == before_live
        assert {x.tag for x in rules.find(ns)} == {live.tag, live_nft.tag}
        assert rules.cleanup(ns) == []
        # force removes rules of other tags, but never our own active ones
        assert rules.cleanup(ns, force=True) == []
    text = snapshot(ns)
    assert "foreign filter" in text["iptables-nft-save"]
    assert "table inet foreign" in text["nft"] and "ipsec_nflog_lookalike_not_ours" in \
        text["nft"]


def test_nft_context_keeps_the_namespace_it_was_created_in(ns: str) -> None:
    """setns() moves only the calling thread; the context's netlink socket, made in that
    thread, keeps talking to the namespace, even when used from this (root ns) thread."""
    need_backend("nft")
    name = "ipsec_nflog_probe_ctx"
    with _libnftables.NftContext(ns) as ctx:
        rc, _out, err = ctx.run(f"table ip {name} {{\n\tflags owner\n}}\n", pin_netns=False)
        assert rc == 0, err
        rc, out, err = ctx.run("list tables", pin_netns=False)
        assert rc == 0 and f"table ip {name}" in out
        assert f"table ip {name}" in run(ns, "nft", "list", "tables")
        # not in the root namespace: the table went where the socket lives
        root = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True)
        assert f"table ip {name}" not in root.stdout
        # other processes cannot delete an owner table
        r = nstools.run(["nft", "delete", "table", "ip", name], ns=ns, check=False)
        assert r.returncode != 0 and "Operation not permitted" in r.stderr
    # freeing the context closed the socket: the kernel deleted the table
    assert f"table ip {name}" not in run(ns, "nft", "list", "tables")


def test_netns_that_does_not_exist_is_a_clear_error() -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        rules.install("all", backend="iptables-nft", netns="ipnf-no-such-ns", group=1)
