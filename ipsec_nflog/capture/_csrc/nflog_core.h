/* ipsec_nflog C core: NFLOG sockets (libnetfilter_log), a reader thread and a byte ring
 * of ready LINKTYPE_NFLOG pcap records. Every function returns 0 (or a count) on success
 * and -errno on failure; the Python binding turns that into exceptions in one place. */
#ifndef IPSEC_NFLOG_CORE_H
#define IPSEC_NFLOG_CORE_H

#include <stddef.h>
#include <stdint.h>

#define NFC_MAX_GROUPS 32
#define NFC_NLBUFSIZ_MIN 4096
#define NFC_NLBUFSIZ_MAX 131072 /* the kernel ignores larger values silently */
/* recv buffer for one kernel batch: slab rounding can nearly double nlbufsiz, and one
 * message can carry a 65531-byte payload on its own. The ring must hold at least this. */
#define NFC_RECV_BUFFER(nlbufsiz) (4 * (size_t)(nlbufsiz) + 128 * 1024)

/* A compiled filter expression (filter.c); NULL in nfc_params means keep everything. */
struct nfc_filter;

/* NFLOG metadata that BPF cannot see; a field left at its "any" value matches everything. */
struct nfc_select {
    uint32_t hook_mask; /* bit h set: NF_INET_* hook h matches; 0: any */
    uint32_t indev;     /* ifindex, 0: any */
    uint32_t outdev;    /* ifindex, 0: any */
    uint8_t has_prefix; /* 1: the NFLOG prefix must equal prefix */
    char prefix[64];
};

struct nfc_params {
    uint32_t snaplen;      /* copy range, already clamped to the kernel's 65531 */
    uint32_t qthreshold;   /* packets queued in the kernel before a flush */
    uint32_t timeout_cs;   /* kernel flush timeout, 1/100 s */
    uint32_t nlbufsiz;     /* kernel batch skb size (clamped and reported back) */
    int32_t rcvbuf;        /* requested SO_RCVBUF(FORCE) in bytes, 0 = leave alone */
    uint16_t flags;        /* NFULNL_CFG_F_* */
    const struct nfc_filter *filter; /* run on each packet's IP payload; must outlive the
                                        capture */
    struct nfc_select select;
    /* Hand-over batching: with handover_ms > 0 the consumer is woken (event fd, nfc_wait)
     * only once handover_bytes are pending or the oldest pending record has waited
     * handover_ms, so several kernel batches go out as one. 0: wake at once. */
    uint32_t handover_ms;    /* at most NFC_HANDOVER_MS_MAX */
    uint32_t handover_bytes; /* 0 or more than a quarter of the ring: a quarter of the ring */
    /* Adaptive queue threshold (--low-latency): with latency_budget_us > 0 the reader
     * raises the kernel's qthreshold under load, up to NFC_QTHRESH_ADAPT_MAX, so that a
     * kernel batch fills within this many microseconds at the rate of the last
     * NFC_ADAPT_WINDOW_US, and lowers it again (to qthreshold) as the rate falls or the
     * group goes quiet. Needs timeout_cs 0, so a batch the rate no longer fills is sent at
     * the next kernel tick. 0: qthreshold stays as configured. */
    uint32_t latency_budget_us; /* at most NFC_LATENCY_BUDGET_US_MAX */
    /* What a ring record is. NFC_RING_PCAP: a LINKTYPE_NFLOG pcap record (host order, µs).
     * NFC_RING_PCAPNG: a pcapng Enhanced Packet Block of the same body (host order, µs
     * timestamps, interface id = the group's index in groups[]), ending with
     * epb_synth_opts when its timestamp was synthesized: a pcapng writer writes the ring
     * as it is, with no second pass. Only records of the ring's format can be indexed. */
    uint32_t ring_format;
    const char *epb_synth_opts; /* options incl. opt_endofopt, copied at open; may be NULL */
    uint32_t epb_synth_opts_len; /* a multiple of 4, at most NFC_EPB_SYNTH_MAX */
};
#define NFC_RING_PCAP 0
#define NFC_RING_PCAPNG 1
#define NFC_EPB_SYNTH_MAX 256
#define NFC_HANDOVER_MS_MAX 1000
#define NFC_LATENCY_BUDGET_US_MAX 10000
#define NFC_QTHRESH_ADAPT_MAX 256
#define NFC_ADAPT_WINDOW_US 2000

struct nfc_group_stats {
    uint32_t group;
    uint32_t nlbufsiz;           /* effective (clamped) */
    int32_t rcvbuf;              /* SO_RCVBUF read back from the socket */
    uint32_t portid;             /* netlink port id of the socket */
    uint64_t received_packets;   /* packet messages read from the socket */
    uint64_t received_bytes;     /* record bytes (header + body) of those */
    uint64_t delivered_packets;  /* records handed to and released by the consumer */
    uint64_t delivered_bytes;
    uint64_t ring_drop_packets;  /* ring full: records not stored */
    uint64_t ring_drop_bytes;
    uint64_t seq_gap_packets;    /* kernel loss: missing NFULA_SEQ numbers */
    uint64_t seq_gap_events;
    uint64_t enobufs_events;     /* recv() failed with ENOBUFS: the socket overran */
    uint64_t socket_drops;       /* sk_drops via SO_MEMINFO (Drops in /proc/net/netlink) */
    uint64_t setup_discarded;    /* packets libnfnetlink read while configuring */
    uint64_t datagrams;          /* recv() calls that returned data */
    uint64_t max_datagram;       /* largest datagram seen, bytes */
    uint64_t truncated_datagrams;/* MSG_TRUNC: recv buffer too small (must stay 0) */
    uint64_t timestamps_synthesized;
    uint64_t netlink_errors;     /* NLMSG_ERROR messages with an error code */
    uint64_t malformed;          /* messages too short to be NFLOG packets */
    uint64_t filtered_packets;   /* rejected by the filter or the selector: not lost */
    uint32_t qthreshold;         /* the kernel's queue threshold now (adaptive: moves) */
    uint32_t qthreshold_peak;    /* the highest it was set to */
};

struct nfc_batch {
    uint64_t offset;    /* of the first record from the start of the ring */
    uint64_t nbytes;    /* bytes of whole records */
    uint32_t count;     /* records */
};

struct nfc_capture;

const char *nfc_version(void);
/* NFC_RECV_BUFFER for Python (config.py computes the same; a test checks they agree). */
uint64_t nfc_recv_buffer_size(uint32_t nlbufsiz);

/* Open one socket per group, bind and configure it. The ring is ring_size bytes of the
 * memfd ring_fd, which the core maps writable for itself (the consumer maps it read-only;
 * the fd may be closed after this returns). netns_fd >= 0 opens the sockets inside that
 * network namespace (from a helper thread; the caller's namespace is left alone). On
 * failure *failed_group names the group and *failed_op the operation. After a fork, every
 * call but nfc_close returns -ECHILD in the child: the capture belongs to the parent. */
int nfc_open(struct nfc_capture **out, const uint16_t *groups, uint32_t ngroups,
             const struct nfc_params *params, int ring_fd, uint64_t ring_size, int netns_fd,
             int32_t *failed_group, const char **failed_op);
/* netns_fd for a capture without sockets, fed by nfc_inject (tests of the ring, the record
 * path and filters without root or a kernel). */
#define NFC_NO_SOCKETS -2
/* Process one netlink datagram as if the reader had received it on the first group. */
int nfc_inject(struct nfc_capture *c, const char *datagram, uint32_t len);
/* Start the reader thread that drains the sockets into the ring. */
int nfc_start(struct nfc_capture *c);
/* Wait up to timeout_ms (-1: forever) for records ready to be handed over (see
 * handover_ms). Returns 1 when they are, 0 on timeout or stop, -EINTR on a signal. */
int nfc_wait(struct nfc_capture *c, int timeout_ms);
/* Hand out the oldest pending records (at most max_packets/max_bytes, at least one record
 * when any is pending). Only one batch may be out at a time: -EALREADY otherwise. */
int nfc_peek(struct nfc_capture *c, uint32_t max_packets, uint64_t max_bytes,
             struct nfc_batch *batch);
/* Return the batch's space to the ring and count it as delivered. */
int nfc_release(struct nfc_capture *c);
/* Pending (not yet handed out) records and bytes. */
int nfc_pending(struct nfc_capture *c, uint64_t *packets, uint64_t *bytes);
/* Snapshot per-group counters into out[0..n); returns the number of groups. */
int nfc_stats(struct nfc_capture *c, struct nfc_group_stats *out, uint32_t n);
/* An eventfd that is readable while records are ready (pending, and past the hand-over
 * batching of handover_ms; for select/asyncio). */
int nfc_event_fd(struct nfc_capture *c);
/* Stall (1) or resume (0) the reader thread, so tests can make the kernel side overrun. */
int nfc_pause(struct nfc_capture *c, int paused);
/* Unbind every group: the kernel flushes what it has queued to our sockets at once and
 * acknowledges; no packet is captured after that. */
int nfc_flush(struct nfc_capture *c);
/* Wait up to timeout_ms for the reader to have read every group's flush (1: done). */
int nfc_wait_flushed(struct nfc_capture *c, int timeout_ms);
/* Stop the reader thread (the ring keeps its records). */
int nfc_stop(struct nfc_capture *c);
/* Stop, close the sockets (the kernel drops the group bindings) and free. */
void nfc_close(struct nfc_capture *c);

/* The per-packet iterator's row for one record, so Python never walks TLVs itself and
 * makes one object and one slice per packet: where the record and its payload are in buf,
 * the record header's values, its prefix as an entry of the run's prefix table, and its
 * hook. 28 bytes, no padding. */
#define NFC_ROW_SLOW 1u /* bad TLV lengths or trailing bytes, or more distinct prefixes in
                         * the run than the table holds: Python's validating parser */
#define NFC_ROW_NO_HOOK 0xffffu /* no packet header */
#define NFC_ROW_PREFIXES 16
struct nfc_packet_row {
    uint32_t rec_off; /* the record's pcap header, from the start of buf */
    uint32_t ts_sec;
    uint32_t ts_usec;
    uint32_t orig_len;
    uint32_t payload_start; /* 0: no NFULA_PAYLOAD */
    uint32_t payload_end;
    uint8_t flags;
    uint8_t prefix; /* 0: no NFULA_PREFIX, else 1 + its entry in the prefix table */
    uint16_t hook;
};
struct nfc_span {
    uint32_t start, end; /* a prefix up to its NUL, in buf */
};
/* Rows for count records of buf (host-order pcap records, NFC_RING_PCAP); returns how many
 * it made. prefixes[] (NFC_ROW_PREFIXES entries) gets the run's distinct prefixes, in order
 * of first use, and *nprefixes their number. A repeated attribute: the last one counts. */
int nfc_packet_rows(const char *buf, uint64_t nbytes, uint32_t count, struct nfc_packet_row *out,
                    struct nfc_span *prefixes, uint32_t *nprefixes);

/* Compile a tcpdump expression with libpcap for linktype (101: raw IP, what an NFLOG
 * payload is). 0, or -EINVAL with libpcap's message in errbuf, or -ENOMEM. */
int nfc_filter_compile(const char *expr, int linktype, uint32_t snaplen,
                       struct nfc_filter **out, char *errbuf, uint32_t errbuf_len);
/* BPF instructions in the program. */
uint32_t nfc_filter_length(const struct nfc_filter *f);
/* 0 when the program rejects every packet (libpcap reduced it to "ret #0"). */
int nfc_filter_can_match(const struct nfc_filter *f);
/* Run on one packet (libpcap's short-packet rules); nonzero: keep it. */
uint32_t nfc_filter_run(const struct nfc_filter *f, const unsigned char *pkt, uint32_t wirelen,
                        uint32_t caplen);
void nfc_filter_free(struct nfc_filter *f);

/* Framing a run of ring records for another file format, in one pass (frame.c). */
#define NFC_FRAME_PCAPNG 1 /* Enhanced Packet Blocks, host byte order, microseconds */
#define NFC_FRAME_RAW 2    /* LINKTYPE_RAW pcap records of the IP packets */
struct nfc_frame_args {
    int32_t format;
    const uint16_t *groups;      /* pcapng: NFLOG group -> interface id */
    const uint32_t *iface_ids;
    uint32_t ngroups;
    const char *synth_opts;      /* pcapng: options appended to an EPB whose record has no */
    uint32_t synth_opts_len;     /* NFULA_TIMESTAMP (ending with opt_endofopt), or 0 */
};
struct nfc_frame_result {
    uint64_t nbytes;         /* bytes written to out */
    uint64_t consumed_bytes; /* of the input */
    uint32_t consumed;       /* input records used (framed or skipped) */
    uint32_t framed;         /* blocks/records written */
    uint32_t skipped;        /* raw: records without an IP packet */
    int32_t unknown_group;   /* pcapng: stopped at a group without interface id, or -1 */
};
/* 0, -EINVAL (not whole records, bad format) or -ENOSPC (out too small: see bound). */
int nfc_frame(const char *buf, uint64_t nbytes, uint32_t count, const struct nfc_frame_args *a,
              char *out, uint64_t out_cap, struct nfc_frame_result *r);
/* Enough room for nfc_frame's output of nbytes of count records. */
uint64_t nfc_frame_bound(uint64_t nbytes, uint32_t count, uint32_t synth_opts_len);

#endif
