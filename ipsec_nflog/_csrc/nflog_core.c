/* ipsec_nflog C core. See nflog_core.h for the contract.
 *
 * Configuration: one NETLINK_NETFILTER socket per group. The group is bound and configured
 * with ONE config message built with libnetfilter_log's nlmsg API (bind + mode + nlbufsiz +
 * timeout + qthresh + flags), so no packet can arrive half-configured, and the ACK is read
 * here: packets that arrive before it go into the ring like any other.
 *
 * Hot path: a reader pthread polls the sockets, recv()s whole kernel batches and copies each
 * NFLOG packet message once into the ring as a host-order pcap record. No Python runs per
 * packet; the consumer takes contiguous runs of records (batches) and releases them.
 */
#define _GNU_SOURCE
#include "nflog_core.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_log.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <libmnl/libmnl.h>
#include <libnetfilter_log/libnetfilter_log.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef SO_MEMINFO
#define SO_MEMINFO 55
#endif
#ifndef IPSEC_NFLOG_VERSION
#define IPSEC_NFLOG_VERSION "unknown"
#endif

#define REC_HDR 16u
#define NFLOG_MSG_PACKET ((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET)
#define BIND_SEQ 1u
#define UNBIND_SEQ 2u

struct nfc_group {
    int fd;
    uint16_t group;
    uint32_t next_seq; /* the kernel numbers a new instance's packets from 0 */
    int unbound;       /* the kernel acknowledged our UNBIND: its queue has been flushed */
    struct nfc_group_stats st;
};

struct nfc_capture {
    struct nfc_group g[NFC_MAX_GROUPS];
    uint32_t ngroups;
    char *rbuf; /* recv buffer: a whole kernel batch plus headroom */
    size_t rbuf_size;

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

    int event_fd; /* readable while pending > 0 */
    int stop_fd;  /* tells the reader thread (and waiters) to stop */
    pthread_t thread;
    int thread_running;
    volatile int stopping;
    volatile int paused; /* tests: stall the reader so the kernel side overruns */
};

const char *nfc_version(void) { return IPSEC_NFLOG_VERSION; }

uint64_t nfc_recv_buffer_size(uint32_t nlbufsiz) { return NFC_RECV_BUFFER(nlbufsiz); }

/* A forked child inherits the sockets, the stop eventfd and the ring mapping; if it used
 * them it would stop or corrupt the parent's capture. Every entry point checks this. */
static volatile unsigned nfc_fork_generation;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static void on_fork_child(void) { nfc_fork_generation++; }
static void register_atfork(void) { pthread_atfork(NULL, NULL, on_fork_child); }
#define FOREIGN(c) ((c)->fork_gen != nfc_fork_generation)

/* ---------------------------------------------------------------- records ---- */

static uint32_t be32_at(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static uint64_t be64_at(const unsigned char *p)
{
    return ((uint64_t)be32_at(p) << 32) | be32_at(p + 4);
}

/* The attributes the reader needs, found in one pass over the TLVs. */
struct hot_attrs {
    const struct nlattr *seq, *ts, *payload;
};

static void scan_hot_attrs(const unsigned char *body, uint32_t len, struct hot_attrs *h)
{
    h->seq = h->ts = h->payload = NULL;
    uint32_t off = sizeof(struct nfgenmsg);
    while (off + sizeof(struct nlattr) <= len) {
        const struct nlattr *a = (const struct nlattr *)(body + off);
        if (a->nla_len < sizeof(struct nlattr) || off + a->nla_len > len)
            return;
        switch (a->nla_type & NLA_TYPE_MASK) {
        case NFULA_SEQ: h->seq = a; break;
        case NFULA_TIMESTAMP: h->ts = a; break;
        case NFULA_PAYLOAD: h->payload = a; break;
        }
        off += NLA_ALIGN(a->nla_len);
    }
}

static uint32_t orig_len_of(const struct nlattr *a, uint32_t len)
{
    if (!a)
        return len;
    const unsigned char *ip = (const unsigned char *)a + NLA_HDRLEN;
    uint32_t n = a->nla_len - NLA_HDRLEN, total;
    if (n >= 20 && ip[0] >> 4 == 4)
        total = ((uint32_t)ip[2] << 8) | ip[3];
    else if (n >= 40 && ip[0] >> 4 == 6)
        total = 40 + (((uint32_t)ip[4] << 8) | ip[5]);
    else
        return len;
    return total > n ? len + (total - n) : len;
}

/* Index of the group a message belongs to (nfgenmsg res_id); -1 when it is none of ours. */
static int group_index(const struct nfc_capture *c, const unsigned char *body)
{
    uint16_t gnum = (uint16_t)((body[2] << 8) | body[3]);
    for (uint32_t i = 0; i < c->ngroups; i++)
        if (c->g[i].group == gnum)
            return (int)i;
    return -1;
}

/* Reserve len bytes for one record; NULL when the ring is full. Called with mu held. */
static char *ring_reserve(struct nfc_capture *c, uint64_t len)
{
    if (c->stored == 0) {
        c->rd = c->hand = c->wr = 0;
        c->wrapped = 0;
    }
    if (!c->wrapped) {
        if (c->wr + len <= c->cap)
            return c->ring + c->wr;
        if (len > c->rd)
            return NULL;
        c->wrap_end = c->wr;
        c->wrapped = 1;
        c->wr = 0;
        c->top_pending = c->pending; /* everything pending sits before the wrap */
        return c->ring;
    }
    return c->wr + len <= c->rd ? c->ring + c->wr : NULL;
}

/* Store one packet message as a pcap record. Called with mu held. */
static void store_packet(struct nfc_capture *c, struct nfc_group *g, const unsigned char *body,
                         uint32_t len, const struct timespec *now)
{
    uint64_t reclen = REC_HDR + (uint64_t)len;
    struct hot_attrs h;
    scan_hot_attrs(body, len, &h);
    const struct nlattr *seq = h.seq, *ts = h.ts;
    if (seq && seq->nla_len >= NLA_HDRLEN + 4) {
        uint32_t s = be32_at((const unsigned char *)seq + NLA_HDRLEN);
        uint32_t gap = s - g->next_seq;
        if (gap != 0 && gap < 0x80000000u) {
            g->st.seq_gap_packets += gap;
            g->st.seq_gap_events++;
        }
        g->next_seq = s + 1;
    }
    g->st.received_packets++;
    g->st.received_bytes += reclen;

    char *dst = ring_reserve(c, reclen);
    if (!dst) {
        g->st.ring_drop_packets++;
        g->st.ring_drop_bytes += reclen;
        return;
    }
    uint32_t hdr[4];
    if (ts && ts->nla_len >= NLA_HDRLEN + 16) {
        const unsigned char *v = (const unsigned char *)ts + NLA_HDRLEN;
        hdr[0] = (uint32_t)be64_at(v);
        hdr[1] = (uint32_t)be64_at(v + 8);
    } else {
        hdr[0] = (uint32_t)now->tv_sec;
        hdr[1] = (uint32_t)(now->tv_nsec / 1000);
        g->st.timestamps_synthesized++;
    }
    hdr[2] = len;
    hdr[3] = orig_len_of(h.payload, len);
    memcpy(dst, hdr, REC_HDR);
    memcpy(dst + REC_HDR, body, len);
    c->wr += reclen;
    c->stored++;
    c->pending++;
    c->pending_bytes += reclen;
}

static void signal_pending(struct nfc_capture *c, uint64_t before)
{
    if (before == 0 && c->pending > 0) {
        uint64_t one = 1;
        ssize_t r = write(c->event_fd, &one, sizeof(one));
        (void)r;
    }
}

/* Walk one datagram of netlink messages. Called with mu held. */
static void handle_datagram(struct nfc_capture *c, struct nfc_group *from, const char *buf,
                            size_t n, const struct timespec *now)
{
    const struct nlmsghdr *nlh = (const struct nlmsghdr *)buf;
    int left = (int)n;
    for (; NLMSG_OK(nlh, left); nlh = NLMSG_NEXT(nlh, left)) {
        if (nlh->nlmsg_type == NLMSG_DONE || nlh->nlmsg_type == NLMSG_NOOP)
            continue;
        if (nlh->nlmsg_type == NLMSG_ERROR) {
            const struct nlmsgerr *e = NLMSG_DATA(nlh);
            if (nlh->nlmsg_len < NLMSG_LENGTH(sizeof(*e)))
                continue;
            if (e->error != 0)
                from->st.netlink_errors++;
            if (nlh->nlmsg_seq == UNBIND_SEQ && !from->unbound) {
                from->unbound = 1; /* every packet it flushed came before this ACK */
                if (++c->unbound_groups == c->ngroups)
                    pthread_cond_broadcast(&c->flushed_cv);
            }
            continue;
        }
        if (nlh->nlmsg_type != NFLOG_MSG_PACKET)
            continue;
        uint32_t len = nlh->nlmsg_len - NLMSG_HDRLEN;
        const unsigned char *body = NLMSG_DATA(nlh);
        if (len < sizeof(struct nfgenmsg)) {
            from->st.malformed++;
            continue;
        }
        int gi = group_index(c, body);
        store_packet(c, gi >= 0 ? &c->g[gi] : from, body, len, now);
    }
}

/* recv() one datagram from a group socket; returns bytes, 0 when none is waiting, or
 * -errno. ENOBUFS is counted here and reported as "try again". */
static ssize_t recv_datagram(struct nfc_capture *c, struct nfc_group *g, int flags)
{
    for (;;) {
        ssize_t r = recv(g->fd, c->rbuf, c->rbuf_size, MSG_TRUNC | flags);
        if (r >= 0) {
            if ((size_t)r > c->rbuf_size) {
                g->st.truncated_datagrams++;
                r = (ssize_t)c->rbuf_size;
            }
            g->st.datagrams++;
            if ((uint64_t)r > g->st.max_datagram)
                g->st.max_datagram = (uint64_t)r;
            return r;
        }
        if (errno == EINTR)
            continue;
        if (errno == ENOBUFS) {
            g->st.enobufs_events++;
            continue;
        }
        return errno == EAGAIN ? 0 : -errno;
    }
}

static void ingest(struct nfc_capture *c, struct nfc_group *g, ssize_t n)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    pthread_mutex_lock(&c->mu);
    uint64_t before = c->pending;
    handle_datagram(c, g, c->rbuf, (size_t)n, &now);
    signal_pending(c, before);
    pthread_mutex_unlock(&c->mu);
}

static void *reader_main(void *arg)
{
    struct nfc_capture *c = arg;
    struct pollfd pfd[NFC_MAX_GROUPS + 1];
    for (uint32_t i = 0; i < c->ngroups; i++)
        pfd[i] = (struct pollfd){.fd = c->g[i].fd, .events = POLLIN};
    pfd[c->ngroups] = (struct pollfd){.fd = c->stop_fd, .events = POLLIN};

    while (!c->stopping) {
        if (c->paused) {
            poll(&pfd[c->ngroups], 1, 10);
            continue;
        }
        int r = poll(pfd, c->ngroups + 1, 100);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (pfd[c->ngroups].revents)
            break;
        for (uint32_t i = 0; i < c->ngroups; i++) {
            if (!(pfd[i].revents & (POLLIN | POLLERR)))
                continue;
            /* Drain a bounded number of datagrams per group so groups share fairly. */
            for (int k = 0; k < 64; k++) {
                ssize_t n = recv_datagram(c, &c->g[i], MSG_DONTWAIT);
                if (n <= 0)
                    break;
                ingest(c, &c->g[i], n);
            }
        }
    }
    return NULL;
}

/* ------------------------------------------------------------- configuration ---- */

static int config_group(struct nfc_capture *c, struct nfc_group *g, const struct nfc_params *p)
{
    char buf[MNL_SOCKET_BUFFER_SIZE];
    memset(buf, 0, sizeof(buf));
    struct nlmsghdr *nlh = nflog_nlmsg_put_header(buf, NFULNL_MSG_CONFIG, AF_UNSPEC, g->group);
    nlh->nlmsg_flags |= NLM_F_ACK;
    nlh->nlmsg_seq = BIND_SEQ;
    nflog_attr_put_cfg_cmd(nlh, NFULNL_CFG_CMD_BIND);
    nflog_attr_put_cfg_mode(nlh, NFULNL_COPY_PACKET, p->snaplen);
    mnl_attr_put_u32(nlh, NFULA_CFG_NLBUFSIZ, htonl(g->st.nlbufsiz));
    mnl_attr_put_u32(nlh, NFULA_CFG_TIMEOUT, htonl(p->timeout_cs));
    mnl_attr_put_u32(nlh, NFULA_CFG_QTHRESH, htonl(p->qthreshold));
    mnl_attr_put_u16(nlh, NFULA_CFG_FLAGS, htons(p->flags));

    struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
    if (sendto(g->fd, nlh, nlh->nlmsg_len, 0, (struct sockaddr *)&kernel, sizeof(kernel)) < 0)
        return -errno;

    /* Read until our ACK. Packets that come first are kept, not lost. */
    for (int tries = 0; tries < 10000; tries++) {
        struct pollfd pfd = {.fd = g->fd, .events = POLLIN};
        int pr = poll(&pfd, 1, 5000);
        if (pr == 0)
            return -ETIMEDOUT;
        if (pr < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        ssize_t n = recv_datagram(c, g, MSG_DONTWAIT);
        if (n < 0)
            return (int)n;
        if (n == 0)
            continue;
        const struct nlmsghdr *m = (const struct nlmsghdr *)c->rbuf;
        int left = (int)n;
        for (; NLMSG_OK(m, left); m = NLMSG_NEXT(m, left)) {
            if (m->nlmsg_type == NLMSG_ERROR && m->nlmsg_seq == BIND_SEQ) {
                const struct nlmsgerr *e = NLMSG_DATA(m);
                if (e->error != 0)
                    return e->error;
                /* Keep whatever else this datagram carried. */
                ingest(c, g, n);
                return 0;
            }
        }
        ingest(c, g, n);
    }
    return -ETIMEDOUT;
}

static int open_socket(struct nfc_group *g, const struct nfc_params *p)
{
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
    if (fd < 0)
        return -errno;
    g->fd = fd;
    struct sockaddr_nl local = {.nl_family = AF_NETLINK};
    if (bind(fd, (struct sockaddr *)&local, sizeof(local)) < 0)
        return -errno;
    socklen_t sl = sizeof(local);
    if (getsockname(fd, (struct sockaddr *)&local, &sl) < 0)
        return -errno;
    g->st.portid = local.nl_pid;
    if (p->rcvbuf > 0) {
        /* FORCE lifts net.core.rmem_max (needs CAP_NET_ADMIN); fall back to the capped one. */
        if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &p->rcvbuf, sizeof(p->rcvbuf)) < 0 &&
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &p->rcvbuf, sizeof(p->rcvbuf)) < 0)
            return -errno;
    }
    int val = 0;
    socklen_t vl = sizeof(val);
    if (getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &val, &vl) < 0)
        return -errno;
    g->st.rcvbuf = val;
    return 0;
}

struct open_job {
    struct nfc_capture *c;
    const struct nfc_params *p;
    int netns_fd;
    int err;
    int32_t failed_group;
    const char *failed_op;
};

static void open_all(struct open_job *j)
{
    struct nfc_capture *c = j->c;
    if (j->netns_fd >= 0 && setns(j->netns_fd, CLONE_NEWNET) < 0) {
        j->err = -errno;
        j->failed_op = "enter network namespace";
        return;
    }
    for (uint32_t i = 0; i < c->ngroups; i++) {
        j->failed_group = c->g[i].group;
        j->failed_op = "open netlink socket";
        if ((j->err = open_socket(&c->g[i], j->p)) < 0)
            return;
    }
    for (uint32_t i = 0; i < c->ngroups; i++) {
        j->failed_group = c->g[i].group;
        j->failed_op = "bind and configure group";
        if ((j->err = config_group(c, &c->g[i], j->p)) < 0)
            return;
    }
    j->failed_group = -1;
    j->failed_op = NULL;
}

static void *open_thread(void *arg)
{
    open_all(arg);
    return NULL;
}

int nfc_open(struct nfc_capture **out, const uint16_t *groups, uint32_t ngroups,
             const struct nfc_params *params, int ring_fd, uint64_t ring_size, int netns_fd,
             int32_t *failed_group, const char **failed_op)
{
    *out = NULL;
    *failed_group = -1;
    *failed_op = "validate";
    if (ngroups == 0 || ngroups > NFC_MAX_GROUPS || ring_fd < 0 || ring_size < 4096)
        return -EINVAL;
    pthread_once(&atfork_once, register_atfork);
    struct nfc_capture *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    uint32_t nlbufsiz = params->nlbufsiz;
    if (nlbufsiz < NFC_NLBUFSIZ_MIN)
        nlbufsiz = NFC_NLBUFSIZ_MIN;
    if (nlbufsiz > NFC_NLBUFSIZ_MAX)
        nlbufsiz = NFC_NLBUFSIZ_MAX;
    for (uint32_t i = 0; i < ngroups; i++) {
        c->g[i].fd = -1;
        c->g[i].group = groups[i];
        c->g[i].st.group = groups[i];
        c->g[i].st.nlbufsiz = nlbufsiz;
    }
    c->ngroups = ngroups;
    c->fork_gen = nfc_fork_generation;
    /* The ring is the consumer's memfd, mapped writable only here: Python maps it
     * read-only, so no view it hands out can change what the core reads back. */
    c->ring = mmap(NULL, ring_size, PROT_READ | PROT_WRITE, MAP_SHARED, ring_fd, 0);
    c->cap = ring_size;
    c->event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    c->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    /* The kernel sizes a batch skb from nlbufsiz but slab rounding can nearly double it,
     * and one message can carry a 65531-byte payload on its own. */
    c->rbuf_size = NFC_RECV_BUFFER(nlbufsiz);
    c->rbuf = malloc(c->rbuf_size);
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->flushed_cv, NULL);
    *out = c;
    if (c->ring == MAP_FAILED) {
        c->ring = NULL;
        *failed_op = "map the ring";
        return -errno;
    }
    if (c->event_fd < 0 || c->stop_fd < 0 || !c->rbuf) {
        *failed_op = "allocate";
        return c->rbuf ? -EMFILE : -ENOMEM;
    }

    struct open_job job = {.c = c, .p = params, .netns_fd = netns_fd, .failed_group = -1};
    if (netns_fd >= 0) {
        /* setns() moves only the calling thread: do it in a throwaway one. */
        pthread_t t;
        int e = pthread_create(&t, NULL, open_thread, &job);
        if (e != 0) {
            *failed_op = "start namespace thread";
            return -e;
        }
        pthread_join(t, NULL);
    } else {
        open_all(&job);
    }
    *failed_group = job.failed_group;
    *failed_op = job.failed_op;
    return job.err;
}

int nfc_start(struct nfc_capture *c)
{
    if (FOREIGN(c))
        return -ECHILD;
    if (c->thread_running)
        return -EALREADY;
    /* The reader must never take a signal meant for the Python main thread. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int e = pthread_create(&c->thread, NULL, reader_main, c);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (e != 0)
        return -e;
    c->thread_running = 1;
    return 0;
}

int nfc_flush(struct nfc_capture *c)
{
    if (FOREIGN(c))
        return -ECHILD;
    /* Unbinding makes the kernel flush the group's queued batch to our socket at once
     * (before its ACK), so the tail of a capture needs no flush-timeout wait. */
    for (uint32_t i = 0; i < c->ngroups; i++) {
        char buf[256];
        memset(buf, 0, sizeof(buf));
        struct nlmsghdr *nlh =
            nflog_nlmsg_put_header(buf, NFULNL_MSG_CONFIG, AF_UNSPEC, c->g[i].group);
        nlh->nlmsg_flags |= NLM_F_ACK;
        nlh->nlmsg_seq = UNBIND_SEQ;
        nflog_attr_put_cfg_cmd(nlh, NFULNL_CFG_CMD_UNBIND);
        struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
        if (sendto(c->g[i].fd, nlh, nlh->nlmsg_len, 0, (struct sockaddr *)&kernel,
                   sizeof(kernel)) < 0)
            return -errno;
    }
    return 0;
}

int nfc_wait_flushed(struct nfc_capture *c, int timeout_ms)
{
    if (FOREIGN(c))
        return -ECHILD;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += timeout_ms / 1000;
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&c->mu);
    while (c->unbound_groups < c->ngroups && c->thread_running && !c->stopping)
        if (pthread_cond_timedwait(&c->flushed_cv, &c->mu, &until) == ETIMEDOUT)
            break;
    int done = c->unbound_groups == c->ngroups;
    pthread_mutex_unlock(&c->mu);
    return done;
}

static void stop_reader(struct nfc_capture *c)
{
    if (!c->thread_running)
        return;
    c->stopping = 1;
    uint64_t one = 1;
    ssize_t r = write(c->stop_fd, &one, sizeof(one));
    (void)r;
    pthread_join(c->thread, NULL);
    c->thread_running = 0;
}

int nfc_stop(struct nfc_capture *c)
{
    if (FOREIGN(c))
        return -ECHILD;
    stop_reader(c);
    return 0;
}

void nfc_close(struct nfc_capture *c)
{
    if (!c)
        return;
    /* In a forked child the reader thread does not exist and the stop eventfd is shared
     * with the parent: only let go of this process's copies. */
    if (!FOREIGN(c))
        stop_reader(c);
    /* Closing the socket makes the kernel destroy our group instances (in the parent;
     * a child's copies of the descriptors keep nothing alive once closed). */
    for (uint32_t i = 0; i < c->ngroups; i++)
        if (c->g[i].fd >= 0)
            close(c->g[i].fd);
    if (c->event_fd >= 0)
        close(c->event_fd);
    if (c->stop_fd >= 0)
        close(c->stop_fd);
    if (c->ring)
        munmap(c->ring, c->cap);
    pthread_cond_destroy(&c->flushed_cv);
    pthread_mutex_destroy(&c->mu);
    free(c->rbuf);
    free(c);
}

/* ------------------------------------------------------------------ consumer ---- */

int nfc_wait(struct nfc_capture *c, int timeout_ms)
{
    if (FOREIGN(c))
        return -ECHILD;
    pthread_mutex_lock(&c->mu);
    uint64_t pending = c->pending;
    pthread_mutex_unlock(&c->mu);
    if (pending)
        return 1;
    struct pollfd pfd[2] = {{.fd = c->event_fd, .events = POLLIN},
                            {.fd = c->stop_fd, .events = POLLIN}};
    int r = poll(pfd, 2, timeout_ms);
    if (r < 0)
        return -errno;
    if (pfd[0].revents & POLLIN)
        return 1;
    return 0;
}

/* Count the records of [off, end) per group into the out_* fields, at most max_packets
 * and max_bytes (at least one record). Returns the offset after the last one taken. */
static uint64_t take_records(struct nfc_capture *c, uint64_t off, uint64_t end,
                             uint32_t max_packets, uint64_t max_bytes)
{
    uint64_t start = off;
    uint32_t n = 0;
    while (off + REC_HDR <= end && n < max_packets) {
        uint32_t caplen;
        memcpy(&caplen, c->ring + off + 8, sizeof(caplen));
        uint64_t reclen = REC_HDR + caplen;
        if (reclen > end - off || (n > 0 && off - start + reclen > max_bytes))
            break;
        int gi = caplen >= 4 ? group_index(c, (const unsigned char *)c->ring + off + REC_HDR)
                             : -1;
        gi = gi < 0 ? 0 : gi;
        c->out_packets[gi]++;
        c->out_group_bytes[gi] += reclen;
        off += reclen;
        n++;
    }
    c->out_count = n;
    return off;
}

int nfc_peek(struct nfc_capture *c, uint32_t max_packets, uint64_t max_bytes,
             struct nfc_batch *b)
{
    b->offset = 0;
    b->nbytes = 0;
    b->count = 0;
    if (FOREIGN(c))
        return -ECHILD;
    pthread_mutex_lock(&c->mu);
    if (c->out_count) {
        pthread_mutex_unlock(&c->mu);
        return -EALREADY; /* one batch at a time: the caller must release it first */
    }
    if (c->pending == 0) {
        pthread_mutex_unlock(&c->mu);
        return 0;
    }
    if (c->wrapped && c->hand == c->wrap_end) {
        c->rd = c->hand = 0;
        c->wrapped = 0;
    }
    uint64_t end = c->wrapped ? c->wrap_end : c->wr;
    uint64_t avail = c->wrapped ? c->top_pending : c->pending;
    uint64_t off;
    memset(c->out_packets, 0, sizeof(c->out_packets[0]) * c->ngroups);
    memset(c->out_group_bytes, 0, sizeof(c->out_group_bytes[0]) * c->ngroups);
    if (c->ngroups == 1 && avail <= max_packets && end - c->hand <= max_bytes) {
        off = end; /* the whole run fits and has one group: no need to walk it */
        c->out_count = (uint32_t)avail;
        c->out_packets[0] = (uint32_t)avail;
        c->out_group_bytes[0] = end - c->hand;
    } else {
        off = take_records(c, c->hand, end, max_packets, max_bytes);
    }
    uint32_t n = c->out_count;
    b->offset = c->hand;
    b->nbytes = off - c->hand;
    b->count = n;
    c->out_bytes = b->nbytes;
    c->hand = off;
    c->pending -= n;
    c->pending_bytes -= b->nbytes;
    if (c->wrapped)
        c->top_pending -= n;
    if (c->pending == 0) {
        uint64_t v;
        ssize_t r = read(c->event_fd, &v, sizeof(v));
        (void)r;
    }
    pthread_mutex_unlock(&c->mu);
    return (int)n;
}

int nfc_release(struct nfc_capture *c)
{
    if (FOREIGN(c))
        return -ECHILD;
    pthread_mutex_lock(&c->mu);
    if (!c->out_count) {
        pthread_mutex_unlock(&c->mu);
        return 0;
    }
    for (uint32_t i = 0; i < c->ngroups; i++) {
        c->g[i].st.delivered_packets += c->out_packets[i];
        c->g[i].st.delivered_bytes += c->out_group_bytes[i];
    }
    c->rd = c->hand;
    c->stored -= c->out_count;
    c->out_count = 0;
    c->out_bytes = 0;
    if (c->wrapped && c->rd == c->wrap_end) {
        c->rd = c->hand = 0;
        c->wrapped = 0;
    }
    pthread_mutex_unlock(&c->mu);
    return 0;
}

int nfc_pending(struct nfc_capture *c, uint64_t *packets, uint64_t *bytes)
{
    pthread_mutex_lock(&c->mu);
    *packets = c->pending;
    *bytes = c->pending_bytes;
    pthread_mutex_unlock(&c->mu);
    return 0;
}

int nfc_stats(struct nfc_capture *c, struct nfc_group_stats *out, uint32_t n)
{
    uint32_t k = n < c->ngroups ? n : c->ngroups;
    pthread_mutex_lock(&c->mu);
    for (uint32_t i = 0; i < k; i++)
        out[i] = c->g[i].st;
    pthread_mutex_unlock(&c->mu);
    for (uint32_t i = 0; i < k; i++) {
        uint32_t mem[SK_MEMINFO_VARS];
        socklen_t ml = sizeof(mem);
        if (c->g[i].fd >= 0 &&
            getsockopt(c->g[i].fd, SOL_SOCKET, SO_MEMINFO, mem, &ml) == 0 &&
            ml >= sizeof(uint32_t) * (SK_MEMINFO_DROPS + 1))
            out[i].socket_drops = mem[SK_MEMINFO_DROPS];
    }
    return (int)k;
}

int nfc_event_fd(struct nfc_capture *c) { return c->event_fd; }

int nfc_index_records(const char *buf, uint64_t nbytes, uint32_t count, struct nfc_index *out)
{
    uint64_t off = 0;
    uint32_t i;
    for (i = 0; i < count && off + REC_HDR <= nbytes; i++) {
        struct nfc_index *x = &out[i];
        uint32_t hdr[4];
        memcpy(hdr, buf + off, REC_HDR);
        if (off + REC_HDR + hdr[2] > nbytes)
            break;
        memset(x->attr, 0, sizeof(x->attr));
        x->body_off = (uint32_t)(off + REC_HDR);
        x->ts_sec = hdr[0];
        x->ts_usec = hdr[1];
        x->caplen = hdr[2];
        x->orig_len = hdr[3];
        const unsigned char *body = (const unsigned char *)buf + off + REC_HDR;
        uint32_t len = hdr[2], a = sizeof(struct nfgenmsg);
        while (a + NLA_HDRLEN <= len) {
            const struct nlattr *nla = (const struct nlattr *)(body + a);
            uint16_t type = nla->nla_type & NLA_TYPE_MASK;
            if (nla->nla_len < NLA_HDRLEN || a + nla->nla_len > len ||
                a + NLA_HDRLEN > 0xffff) {
                x->attr[0] |= NFC_IDX_MALFORMED;
                break;
            }
            if (type > 0 && type < NFC_IDX_SLOTS)
                x->attr[type] = (uint16_t)(a + NLA_HDRLEN);
            else
                x->attr[0] |= NFC_IDX_UNKNOWN;
            a += NLA_ALIGN(nla->nla_len);
        }
        if (a < len && !(x->attr[0] & NFC_IDX_MALFORMED))
            x->attr[0] |= NFC_IDX_MALFORMED; /* trailing bytes: let Python judge them */
        off += REC_HDR + hdr[2];
    }
    return (int)i;
}

int nfc_pause(struct nfc_capture *c, int paused)
{
    if (FOREIGN(c))
        return -ECHILD;
    c->paused = paused;
    return 0;
}
