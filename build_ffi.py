"""cffi build script (API mode, out of line) for ipsec_nflog's C core.

The cdef is read from ipsec_nflog/capture/_csrc/nflog_core.h, the header the C code
compiles against, so the two cannot drift; the implementation lives in
ipsec_nflog/capture/_csrc/*.c and links against the system libnetfilter_log, libmnl and
libpcap.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("ipsec_nflog", "capture", "_csrc")

HEADER = os.path.join(CSRC, "nflog_core.h")
SOURCES = ("socket.c", "reader.c", "ring.c", "record.c", "filter.c", "frame.c")


def cdef_from_header(path: str = os.path.join(HERE, HEADER)) -> str:
    """The header is the contract: the cdef is its text less what cffi cannot parse
    (include guards, includes, function-like macros)."""
    out = []
    with open(path) as f:
        for line in f:
            s = line.strip()
            if s.startswith(("#include", "#ifndef", "#endif")) or re.match(
                    r"#define\s+\w+(\(|\s*$)", s):
                continue
            out.append(re.sub(r"^(#define\s+\w+\s+\d+)u\b", r"\1", line.rstrip("\n")))
    return "\n".join(out) + "\n"


MISSING = (
    "ipsec_nflog: the libnetfilter_log development files are missing; "
    "install them with: apt-get install libnetfilter-log-dev libmnl-dev libpcap-dev pkg-config"
)


def _version() -> str:
    with open(os.path.join(HERE, "ipsec_nflog", "_version.py")) as f:
        m = re.search(r'__version__\s*=\s*"([^"]+)"', f.read())
    assert m, "ipsec_nflog/_version.py has no __version__"
    return m.group(1)


def _pkgconfig(*args: str) -> list[str]:
    if shutil.which("pkg-config") is None:
        sys.exit(MISSING)
    r = subprocess.run(["pkg-config", *args, "libnetfilter_log", "libmnl", "libpcap"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(MISSING)
    return r.stdout.split()


def make_ffi() -> FFI:
    ffi = FFI()
    ffi.cdef(cdef_from_header())
    cflags = _pkgconfig("--cflags")
    libs = _pkgconfig("--libs")
    ffi.set_source(
        "ipsec_nflog.capture._nflog_cffi",
        '#include "nflog_core.h"',
        sources=[os.path.join(CSRC, f) for f in SOURCES],
        include_dirs=[CSRC],
        define_macros=[("IPSEC_NFLOG_VERSION", f'"{_version()}"')],
        extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                            *cflags],
        libraries=[lib[2:] for lib in libs if lib.startswith("-l")],
        extra_link_args=["-pthread"],
    )
    return ffi


ffibuilder = make_ffi()

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
