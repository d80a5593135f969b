"""NFLOG rule helpers: the IPsec rule sets of "Taking Traffic Dumps on Linux" as presets,
rendered for iptables/ip6tables (nft and legacy variants) or native nftables, installed
atomically and always removed.

Rendering (no root needed)::

    from ipsec_nflog import rules
    print(rules.render("outgoing", "iptables", group=5, family="ipv4"))
    # iptables-restore -w --noflush <<'EOF'
    # *filter
    # -I OUTPUT -m policy --pol ipsec --dir out -m comment --comment "ipsec_nflog:<tag>" \
    #    -j NFLOG --nflog-group 5         (one line)
    # COMMIT
    # EOF

Installing (root)::

    with rules.installed("all", group=5) as handle:
        ...  # capture; the rules go away however this block ends

Pure Python: this package never imports the compiled capture core.
"""

from __future__ import annotations

from ipsec_nflog.rules.backend import BACKENDS, choose_backend
from ipsec_nflog.rules.errors import (
    KernelSupportError,
    NetAdminRequiredError,
    RulesError,
    ToolMissingError,
)
from ipsec_nflog.rules.iptables import IptablesBackend, TaggedRule
from ipsec_nflog.rules.leftovers import Leftover, cleanup, find, remove, show
from ipsec_nflog.rules.lifecycle import InstalledRules, active, install, installed, render
from ipsec_nflog.rules.model import (
    COMMENT_PREFIX,
    PolicyElement,
    Rule,
    RuleSet,
    new_owner_tag,
    parse_owner_tag,
)
from ipsec_nflog.rules.nft import NftBackend, NftTable
from ipsec_nflog.rules.presets import PRESETS, build, preset_names

__all__ = [
    "BACKENDS",
    "COMMENT_PREFIX",
    "PRESETS",
    "InstalledRules",
    "IptablesBackend",
    "KernelSupportError",
    "Leftover",
    "NetAdminRequiredError",
    "NftBackend",
    "NftTable",
    "PolicyElement",
    "Rule",
    "RuleSet",
    "RulesError",
    "TaggedRule",
    "ToolMissingError",
    "active",
    "build",
    "choose_backend",
    "cleanup",
    "find",
    "install",
    "installed",
    "new_owner_tag",
    "parse_owner_tag",
    "preset_names",
    "remove",
    "render",
    "show",
]
