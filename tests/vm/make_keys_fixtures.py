"""Regenerate tests/fixtures/keys_* from real strongSwan runs (root; tier-2 prerequisites).

    .venv/bin/python -m tests.vm.make_keys_fixtures [tests/fixtures]

For two proposal sets (AES-CBC + HMAC-SHA2-256, and AES-GCM), it negotiates an IKE_SA and a
CHILD_SA between two kernel-libipsec peers, pings 3 times, captures the initiator's view with
our Capture (ike-esp-in/ike-esp-out/libipsec rules, groups 5/6/7) into a LINKTYPE_NFLOG pcap,
and keeps both charon logs. The keys in them are throwaway test keys. ``ip xfrm state``
fixtures come from the VM tier (``tests/vm/guest/`` writes ``keys_xfrm_state*.txt``).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from tests.support.strongswan import strongswan_pair
from tests.vm import nflog_rules

VARIANTS = {
    "cbc": ("aes256-sha256-modp2048", "aes128-sha256"),
    "gcm": ("aes128gcm16-prfsha256-ecp256", "aes256gcm16"),
}


def make(outdir: Path) -> None:
    from ipsec_nflog import Capture
    from ipsec_nflog.files.writer import open_writer

    outdir.mkdir(parents=True, exist_ok=True)
    for name, (ike, esp) in VARIANTS.items():
        with strongswan_pair(ike_proposals=ike, esp_proposals=esp) as pair:
            ns = pair.left.ns
            pcap = outdir / f"keys_{name}_tunnel.pcap"
            pcap.unlink(missing_ok=True)
            with nflog_rules.installed("ike-esp-in", group=5, netns=ns), \
                    nflog_rules.installed("ike-esp-out", group=6, netns=ns), \
                    nflog_rules.installed("libipsec", group=7, netns=ns), \
                    Capture(groups=[5, 6, 7], netns=ns) as cap:
                pair.initiate()
                pair.ping(3)
                pair.terminate()
                cap.stop()
                with open_writer(pcap, "pcap") as w:
                    cap.drain_into(w)
            pcap.chmod(0o644)
            for peer, role in ((pair.left, "initiator"), (pair.right, "responder")):
                shutil.copyfile(peer.log, outdir / f"keys_{name}_charon_{role}.log")
        print(f"{name}: wrote {pcap} and the charon logs")


if __name__ == "__main__":
    make(Path(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"))
