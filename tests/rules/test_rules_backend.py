"""The backend protocol and registry (no root): the lifecycle drives any backend through the
protocol alone, and names map to backends in one place."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from ipsec_nflog import rules
from ipsec_nflog.rules import backend, iptables, lifecycle, nft
from ipsec_nflog.rules.backend import Action, Backend, Installation


@dataclass
class FakeInstallation:
    calls: list[str]
    owner: bool = False

    def remove(self) -> None:
        self.calls.append("remove")


@dataclass
class FakeBackend:
    name: str
    calls: list[str] = field(default_factory=list)

    def render(self, rs: rules.RuleSet, action: Action = "install", *,
               owner: bool = False) -> str:
        return f"fake {action} {rs.tag} owner={owner}\n"

    def install(self, rs: rules.RuleSet, netns: str | None = None) -> Installation:
        self.calls.append(f"install {rs.tag} {netns}")
        return FakeInstallation(self.calls)


def test_registry_names_are_the_public_backends() -> None:
    assert rules.BACKENDS == ("nft", "iptables", "iptables-nft", "iptables-legacy")
    made = {name: backend.make_backend(name) for name in rules.BACKENDS}
    assert {name: b.name for name, b in made.items()} == {n: n for n in rules.BACKENDS}
    assert isinstance(made["nft"], nft.NftBackend)
    assert all(isinstance(made[n], iptables.IptablesBackend) for n in rules.BACKENDS[1:])
    with pytest.raises(ValueError, match="unknown backend 'pf'"):
        backend.make_backend("pf")


def test_nft_owner_is_refused_by_the_iptables_backends_only() -> None:
    owned = backend.make_backend("nft", True)
    assert isinstance(owned, nft.NftBackend) and owned.owner is True
    for name in rules.BACKENDS[1:]:
        with pytest.raises(ValueError, match="nft_owner applies to the nft backend only"):
            backend.make_backend(name, True)
        assert backend.make_backend(name, False).name == name
    with pytest.raises(ValueError, match="nft_owner applies to the nft backend only"):
        rules.install("all", backend="iptables", nft_owner=True, group=1)
    assert rules.active() == []


def test_lifecycle_uses_only_the_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeBackend("fake")
    monkeypatch.setitem(backend._FACTORIES, "fake", lambda name, nft_owner: fake)
    rs = rules.build("decap", group=3)
    assert rules.render(rs, "fake", action="remove") == f"fake remove {rs.tag} owner=False\n"
    handle = rules.install(rs, backend="fake", handle_signals=False)
    try:
        assert fake.calls == [f"install {rs.tag} None"]
        assert handle.backend == "fake" and not handle.owner_table
        assert handle.commands() == f"fake install {rs.tag} owner=False\n"
        assert rules.active() == [handle]
    finally:
        handle.remove()
    handle.remove()  # idempotent: the installation is removed once
    assert fake.calls == [f"install {rs.tag} None", "remove"]
    assert rules.active() == [] and not handle.active


def test_a_failed_install_registers_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    class Refusing(FakeBackend):
        def install(self, rs: rules.RuleSet, netns: str | None = None) -> Installation:
            raise rules.RulesError("refused")

    monkeypatch.setitem(backend._FACTORIES, "fake", lambda name, nft_owner: Refusing(name))
    with pytest.raises(rules.RulesError, match="refused"):
        lifecycle.install("all", backend="fake", handle_signals=False, group=1)
    assert rules.active() == []


def test_both_backends_render_through_the_protocol() -> None:
    rs = rules.build("ike-esp-in", group=7, family="ipv4")
    backends: list[Backend] = [nft.NftBackend(), iptables.IptablesBackend("iptables-legacy")]
    texts = [b.render(rs, "install", owner=True) for b in backends]
    assert texts[0].startswith("nft -f - <<'EOF'\n") and "\tflags owner\n" in texts[0]
    # iptables rules cannot die with their process: owner changes nothing
    assert texts[1] == backends[1].render(rs, "install")
    assert texts[1].startswith("iptables-legacy-restore -w --noflush <<'EOF'\n*raw\n")
