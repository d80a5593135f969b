"""cffi build script (API mode, out of line) for ipsec_nflog's C core.

The cdef below is the whole C surface Python sees; the implementation lives in
ipsec_nflog/_csrc/*.c and links against the system libnetfilter_log and libmnl.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("ipsec_nflog", "_csrc")

CDEF = """
#define NFC_MAX_GROUPS 32

struct nfc_params {
    uint32_t snaplen;
    uint32_t qthreshold;
    uint32_t timeout_cs;
    uint32_t nlbufsiz;
    int32_t rcvbuf;
    uint16_t flags;
};

struct nfc_group_stats {
    uint32_t group;
    uint32_t nlbufsiz;
    int32_t rcvbuf;
    uint32_t portid;
    uint64_t received_packets;
    uint64_t received_bytes;
    uint64_t delivered_packets;
    uint64_t delivered_bytes;
    uint64_t ring_drop_packets;
    uint64_t ring_drop_bytes;
    uint64_t seq_gap_packets;
    uint64_t seq_gap_events;
    uint64_t enobufs_events;
    uint64_t socket_drops;
    uint64_t setup_discarded;
    uint64_t datagrams;
    uint64_t max_datagram;
    uint64_t truncated_datagrams;
    uint64_t timestamps_synthesized;
    uint64_t netlink_errors;
    uint64_t malformed;
};

struct nfc_batch {
    const char *data;
    uint64_t nbytes;
    uint32_t count;
};

#define NFC_IDX_SLOTS 22
struct nfc_index {
    uint32_t body_off;
    uint32_t caplen;
    uint32_t ts_sec;
    uint32_t ts_usec;
    uint32_t orig_len;
    uint16_t attr[22];
};
int nfc_index_records(const char *buf, uint64_t nbytes, uint32_t count, struct nfc_index *out);

struct nfc_capture;

const char *nfc_version(void);
int nfc_open(struct nfc_capture **out, const uint16_t *groups, uint32_t ngroups,
             const struct nfc_params *params, char *ring, uint64_t ring_size, int netns_fd,
             int32_t *failed_group, const char **failed_op);
int nfc_start(struct nfc_capture *c);
int nfc_wait(struct nfc_capture *c, int timeout_ms);
int nfc_peek(struct nfc_capture *c, uint32_t max_packets, uint64_t max_bytes,
             struct nfc_batch *batch);
int nfc_release(struct nfc_capture *c);
int nfc_pending(struct nfc_capture *c, uint64_t *packets, uint64_t *bytes);
int nfc_stats(struct nfc_capture *c, struct nfc_group_stats *out, uint32_t n);
int nfc_event_fd(struct nfc_capture *c);
int nfc_pause(struct nfc_capture *c, int paused);
int nfc_stop(struct nfc_capture *c);
void nfc_close(struct nfc_capture *c);
uint32_t nfc_orig_len(const unsigned char *body, uint32_t len);
"""

MISSING = (
    "ipsec_nflog: the libnetfilter_log development files are missing; "
    "install them with: apt-get install libnetfilter-log-dev libmnl-dev pkg-config"
)


def _version() -> str:
    with open(os.path.join(HERE, "ipsec_nflog", "_version.py")) as f:
        m = re.search(r'__version__\s*=\s*"([^"]+)"', f.read())
    assert m, "ipsec_nflog/_version.py has no __version__"
    return m.group(1)


def _pkgconfig(*args: str) -> list[str]:
    if shutil.which("pkg-config") is None:
        sys.exit(MISSING)
    r = subprocess.run(
        ["pkg-config", *args, "libnetfilter_log", "libmnl"], capture_output=True, text=True
    )
    if r.returncode != 0:
        sys.exit(MISSING)
    return r.stdout.split()


def make_ffi() -> FFI:
    ffi = FFI()
    ffi.cdef(CDEF)
    cflags = _pkgconfig("--cflags")
    libs = _pkgconfig("--libs")
    ffi.set_source(
        "ipsec_nflog._nflog_cffi",
        '#include "nflog_core.h"',
        sources=[os.path.join(CSRC, "nflog_core.c")],
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
