"""tests/vm/guest/ holds tests that only run inside the tier-1 VM (kernel with ESP): the host
session collects them through tests/tiers/test_kernel_ipsec.py, which boots the VM once and runs
them there. Outside the VM they are not collected."""

from __future__ import annotations

import os

collect_ignore_glob = [] if os.environ.get("IPSEC_NFLOG_IN_VM") == "1" else ["guest/*"]
