/* ipsec_nflog C core, internal: the capture's state and the helpers the core's files share.
 * Not part of the contract (that is nflog_core.h, which is also the cdef). */
#ifndef IPSEC_NFLOG_CORE_INTERNAL_H
#define IPSEC_NFLOG_CORE_INTERNAL_H

#include "nflog_core.h"

#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_log.h>
#include <linux/netlink.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

/* Everything declared below is internal to the shared object: hidden symbols are called
 * directly, not through the PLT (the split by topic made nfc_store_packet and
 * nfc_ring_reserve PLT calls per packet, ~30 % more reader CPU than the one-file core). */
#pragma GCC visibility push(hidden)

#define REC_HDR 16u
#define EPB_TYPE 6u
#define EPB_HEAD 28u /* type, length, interface, ts high, ts low, caplen, orig_len */
/* Receive slots: as many as fit in this many bytes, 1..NFC_RECV_SLOTS_MAX. Pages are
 * touched only as far as datagrams fill them. */
#define NFC_RECV_SLOTS_BYTES (4u << 20)
#define NFC_RECV_SLOTS_MAX 32u
#define NFLOG_MSG_PACKET ((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET)
#define BIND_SEQ 1u   /* nlmsg_seq of the bind/configure request */
#define UNBIND_SEQ 2u /* ... and of the unbind (flush) request */
#define QTHRESH_SEQ 3u /* ... and of an adaptive qthreshold change (no ACK asked) */

struct nfc_group {
    int fd;
    uint16_t group;
    uint32_t next_seq; /* the kernel numbers a new instance's packets from 0 */
    int unbound;       /* the kernel acknowledged our UNBIND: its queue has been flushed */
    uint64_t adapt_since_us; /* CLOCK_MONOTONIC start of the rate window */
    uint64_t adapt_packets;  /* packets received in it */
    struct nfc_group_stats st;
};

/* Pending records whose time the kernel did not send (OUTPUT, POSTROUTING): when a later
 * record carries a kernel stamp, these were logged before it, so their receive-time stamp
 * is pulled back to just before it. Records leave the list when a batch is handed out
 * (the consumer may be reading them), so only records still in the ring are ever moved. */
#define NFC_SYNTH_MAX 1024
struct nfc_synth {
    uint32_t n;
    uint64_t last_kernel_us; /* the last kernel stamp of this datagram, 0: none yet */
    char *rec[NFC_SYNTH_MAX];
};

struct nfc_capture {
    struct nfc_group g[NFC_MAX_GROUPS];
    struct nfc_synth synth; /* reader thread only, with mu held */
    uint32_t ngroups;
    const struct nfc_filter *filter; /* NULL: keep everything */
    struct nfc_select select;
    int select_active;               /* select has a field that is not "any" */
    char *rbuf; /* nslots receive slots of rbuf_size bytes: a whole kernel batch plus
                 * headroom each, so one recvmmsg() takes several datagrams */
    size_t rbuf_size;
    uint32_t nslots;

    pthread_mutex_t mu;
    /* ring, guarded by mu: stored data is [rd, wrap_end) + [0, wr) when wrapped, else
     * [rd, wr). [rd, hand) is the batch handed out, [hand, ...) is pending. */
    char *ring;
    uint64_t cap, rd, hand, wr, wrap_end;
    int wrapped;
    uint64_t stored, pending, pending_bytes;
    uint64_t top_pending; /* pending records in [hand, wrap_end) */
    /* The batch handed out, counted per group when it was handed out: release never reads
     * the ring back, so nothing a consumer does to its view can steer the core. */
    uint32_t out_count;
    uint64_t out_bytes;
    uint32_t out_packets[NFC_MAX_GROUPS];
    uint64_t out_group_bytes[NFC_MAX_GROUPS];
    pthread_cond_t flushed_cv; /* signalled when every group's UNBIND is acknowledged */
    uint32_t unbound_groups;
    unsigned fork_gen; /* nfc_fork_generation at open: a forked child must not touch us */

    int event_fd; /* readable while ready */
    int ready;    /* pending records were signalled to the consumer (event_fd written) */
    uint32_t handover_ms;    /* 0: signal as soon as records are pending */
    uint64_t handover_bytes; /* signal at once from this many pending bytes */
    uint64_t pending_since_ms; /* CLOCK_MONOTONIC when pending last went from 0 to > 0 */
    uint32_t ring_format; /* NFC_RING_PCAP or NFC_RING_PCAPNG (nfc_params) */
    uint32_t synth_opts_len;
    char synth_opts[NFC_EPB_SYNTH_MAX]; /* pcapng: ends an EPB with a synthesized stamp */
    uint32_t latency_budget_us; /* adaptive qthreshold (nfc_params); 0: off */
    uint32_t qthreshold_base;   /* the configured qthreshold: the adaptive floor */
    int stop_fd;  /* tells the reader thread (and waiters) to stop */
    pthread_t thread;
    int thread_running;
    volatile int stopping;
    int flushing; /* nfc_flush sent the UNBINDs (mu): no more qthreshold changes */
    volatile int paused; /* tests: stall the reader so the kernel side overruns */
};

/* A forked child inherits the sockets, the stop eventfd and the ring mapping; if it used
 * them it would stop or corrupt the parent's capture. Every entry point checks this. */
extern volatile unsigned nfc_fork_generation;
#define FOREIGN(c) ((c)->fork_gen != nfc_fork_generation)

static inline uint32_t be32_at(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline uint64_t be64_at(const unsigned char *p)
{
    return ((uint64_t)be32_at(p) << 32) | be32_at(p + 4);
}

/* The one TLV walk over an NFLOG message body: the attribute at off, or NULL at the end or
 * at a bad length. Loop: for (off = NFC_ATTR_START; (a = nfc_attr_at(..)); off += NLA_ALIGN(a->nla_len)).
 * After the loop off < len means a malformed TLV or trailing bytes. Inline rather than
 * libmnl's mnl_attr_for_each: a library call per attribute costs ~80 ns a record against
 * ~12 ns on the reader's hot path (benchmarks/tlv_walk.c). */
#define NFC_ATTR_START ((uint32_t)sizeof(struct nfgenmsg))
static inline const struct nlattr *nfc_attr_at(const unsigned char *body, uint32_t len,
                                               uint32_t off)
{
    if ((uint64_t)off + NLA_HDRLEN > len)
        return NULL;
    const struct nlattr *a = (const struct nlattr *)(body + off);
    if (a->nla_len < NLA_HDRLEN || (uint64_t)off + a->nla_len > len)
        return NULL;
    return a;
}

/* Index of the group a message belongs to (nfgenmsg res_id); -1 when it is none of ours. */
static inline int group_index(const struct nfc_capture *c, const unsigned char *body)
{
    uint16_t gnum = (uint16_t)((body[2] << 8) | body[3]);
    for (uint32_t i = 0; i < c->ngroups; i++)
        if (c->g[i].group == gnum)
            return (int)i;
    return -1;
}

/* The attributes the reader needs, found in one pass over the TLVs (record.c). */
struct nfc_hot_attrs {
    const struct nlattr *seq, *ts, *payload, *packet_hdr, *prefix, *indev, *outdev;
};
/* filter.c: does a packet's metadata match the selector? */
int nfc_select_match(const struct nfc_select *s, const struct nfc_hot_attrs *h);

/* record.c: store one packet message as a ring record (ring mutex held). */
void nfc_store_packet(struct nfc_capture *c, struct nfc_group *g, const unsigned char *body,
                      uint32_t len, const struct timespec *now);
/* ring.c: reserve len bytes for one record, NULL when full (ring mutex held). */
char *nfc_ring_reserve(struct nfc_capture *c, uint64_t len);
/* ring.c: wake the consumer when records are pending and the hand-over batching lets them
 * go (enough bytes, or the oldest waited handover_ms), or at once with force (mutex held).
 * before: pending before this datagram. Returns ms until the batching deadline, or -1. */
int nfc_signal_pending(struct nfc_capture *c, uint64_t before, int force);
uint64_t nfc_monotonic_ms(void);

/* reader.c: one datagram from a group socket (bytes, 0 when none waits, or -errno), and
 * storing its packets in the ring (returns nfc_signal_pending's); used by the
 * configuration step too. */
int nfc_send_qthreshold(struct nfc_group *g, uint32_t qthreshold);
ssize_t nfc_recv_datagram(struct nfc_capture *c, struct nfc_group *g);
int nfc_ingest(struct nfc_capture *c, struct nfc_group *g, ssize_t n);
/* reader.c: stop and join the reader thread, if it runs. */
void nfc_stop_reader(struct nfc_capture *c);

#pragma GCC visibility pop

#endif
