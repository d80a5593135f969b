"""Configuration validation and imports that need no privileges."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping

import pytest

from ipsec_nflog import CaptureConfig


def test_config_is_validated_before_any_socket() -> None:
    bad: Mapping[str, object]
    for bad in ({"groups": [-1]}, {"groups": [65536]}, {"groups": []}, {"groups": [1, 1]},
                {"groups": ["5"]}, {"snaplen": -1}, {"snaplen": 300000}, {"nlbufsiz": 1},
                {"nlbufsiz": 1 << 20}, {"ring_size": 10}, {"qthreshold": 0},
                {"flush_timeout": -1}, {"netns": "../etc"}):
        with pytest.raises(ValueError):
            CaptureConfig(**bad)
    assert CaptureConfig(snaplen=0).effective_snaplen == 65531
    assert CaptureConfig(snaplen=65535).effective_snaplen == 65531
    assert CaptureConfig(groups=(5,), snaplen=96).effective_snaplen == 96


def test_low_latency_preset() -> None:
    c = CaptureConfig.low_latency([3])
    assert (c.groups, c.qthreshold, c.timeout_cs) == ((3,), 1, 0)


@pytest.mark.requires_core
def test_import_and_capture_without_privileges() -> None:
    """`import ipsec_nflog` needs nothing; a capture without CAP_NET_ADMIN fails clearly."""
    code = (
        "import ipsec_nflog\n"
        "try:\n"
        "    ipsec_nflog.Capture(groups=[7])\n"
        "except ipsec_nflog.NflogPermissionError as e:\n"
        "    print('refused:', e)\n"
    )
    argv = [sys.executable, "-c", code]
    import os
    import shutil

    if os.geteuid() == 0 and shutil.which("setpriv"):
        argv = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", *argv]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "refused:" in r.stdout and "CAP_NET_ADMIN" in r.stdout, r.stdout


def test_build_without_libnetfilter_log_says_what_to_install(tmp_path: object) -> None:
    import os

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PKG_CONFIG_LIBDIR=str(tmp_path), PKG_CONFIG_PATH="")
    r = subprocess.run([sys.executable, "-c", "import build_ffi"], cwd=root, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "apt-get install libnetfilter-log-dev" in lines[0]


def test_missing_compiled_core_says_what_to_do() -> None:
    code = (
        "import sys\n"
        "sys.modules['ipsec_nflog.capture._nflog_cffi'] = None  # as if the build never ran\n"
        "import ipsec_nflog\n"
        "try:\n"
        "    ipsec_nflog.Capture(groups=[1])\n"
        "except ipsec_nflog.LibraryMissingError as e:\n"
        "    assert isinstance(e, ImportError)\n"
        "    print('missing:', e)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "missing:" in r.stdout and "pip install" in r.stdout
