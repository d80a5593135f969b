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
#define NLBUFSIZ_MIN 4096u
#define NLBUFSIZ_MAX 131072u /* the kernel ignores larger values silently */
#define NFLOG_MSG_PACKET ((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET)

struct nfc_group {
    int fd;
    uint16_t group;
    uint32_t next_seq; /* the kernel numbers a new instance's packets from 0 */
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
    uint64_t top_pending, top_pending_bytes; /* pending records in [hand, wrap_end) */
    uint32_t out_count;
    uint64_t out_bytes;

    int event_fd; /* readable while pending > 0 */
    int stop_fd;  /* tells the reader thread (and waiters) to stop */
    pthread_t thread;
    int thread_running;
    volatile int stopping;
    volatile int paused; /* tests: stall the reader so the kernel side overruns */
};

const char *nfc_version(void) { return IPSEC_NFLOG_VERSION; }

/* ---------------------------------------------------------------- records ---- */

static const struct nlattr *find_attr(const unsigned char *body, uint32_t len, uint16_t type)
{
    uint32_t off = sizeof(struct nfgenmsg);
    while (off + sizeof(struct nlattr) <= len) {
        const struct nlattr *a = (const struct nlattr *)(body + off);
        if (a->nla_len < sizeof(struct nlattr) || off + a->nla_len > len)
            return NULL;
        if ((a->nla_type & NLA_TYPE_MASK) == type)
            return a;
        off += NLA_ALIGN(a->nla_len);
    }
    return NULL;
}

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

uint32_t nfc_orig_len(const unsigned char *body, uint32_t len)
{
    return orig_len_of(find_attr(body, len, NFULA_PAYLOAD), len);
}

static struct nfc_group *group_of(struct nfc_capture *c, const unsigned char *body)
{
    uint16_t gnum = (uint16_t)((body[2] << 8) | body[3]);
    for (uint32_t i = 0; i < c->ngroups; i++)
        if (c->g[i].group == gnum)
            return &c->g[i];
    return NULL;
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
        c->top_pending_bytes = c->pending_bytes;
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
            if (nlh->nlmsg_len >= NLMSG_LENGTH(sizeof(*e)) && e->error != 0)
                from->st.netlink_errors++;
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
        struct nfc_group *g = group_of(c, body);
        store_packet(c, g ? g : from, body, len, now);
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
    nlh->nlmsg_seq = 1;
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
            if (m->nlmsg_type == NLMSG_ERROR && m->nlmsg_seq == 1) {
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
             const struct nfc_params *params, char *ring, uint64_t ring_size, int netns_fd,
             int32_t *failed_group, const char **failed_op)
{
    *out = NULL;
    *failed_group = -1;
    *failed_op = "validate";
    if (ngroups == 0 || ngroups > NFC_MAX_GROUPS || !ring || ring_size < 4096)
        return -EINVAL;
    struct nfc_capture *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    uint32_t nlbufsiz = params->nlbufsiz;
    if (nlbufsiz < NLBUFSIZ_MIN)
        nlbufsiz = NLBUFSIZ_MIN;
    if (nlbufsiz > NLBUFSIZ_MAX)
        nlbufsiz = NLBUFSIZ_MAX;
    for (uint32_t i = 0; i < ngroups; i++) {
        c->g[i].fd = -1;
        c->g[i].group = groups[i];
        c->g[i].st.group = groups[i];
        c->g[i].st.nlbufsiz = nlbufsiz;
    }
    c->ngroups = ngroups;
    c->ring = ring;
    c->cap = ring_size;
    c->event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    c->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    /* The kernel sizes a batch skb from nlbufsiz but slab rounding can nearly double it,
     * and one message can carry a 65531-byte payload on its own. */
    c->rbuf_size = 4 * (size_t)nlbufsiz + 128 * 1024;
    c->rbuf = malloc(c->rbuf_size);
    pthread_mutex_init(&c->mu, NULL);
    *out = c;
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

int nfc_stop(struct nfc_capture *c)
{
    if (!c->thread_running)
        return 0;
    c->stopping = 1;
    uint64_t one = 1;
    ssize_t r = write(c->stop_fd, &one, sizeof(one));
    (void)r;
    pthread_join(c->thread, NULL);
    c->thread_running = 0;
    return 0;
}

void nfc_close(struct nfc_capture *c)
{
    if (!c)
        return;
    nfc_stop(c);
    /* Closing the socket makes the kernel destroy our group instances. */
    for (uint32_t i = 0; i < c->ngroups; i++)
        if (c->g[i].fd >= 0)
            close(c->g[i].fd);
    if (c->event_fd >= 0)
        close(c->event_fd);
    if (c->stop_fd >= 0)
        close(c->stop_fd);
    pthread_mutex_destroy(&c->mu);
    free(c->rbuf);
    free(c);
}

/* ------------------------------------------------------------------ consumer ---- */

int nfc_wait(struct nfc_capture *c, int timeout_ms)
{
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

int nfc_peek(struct nfc_capture *c, uint32_t max_packets, uint64_t max_bytes,
             struct nfc_batch *b)
{
    b->data = NULL;
    b->nbytes = 0;
    b->count = 0;
    pthread_mutex_lock(&c->mu);
    if (c->out_count) {
        pthread_mutex_unlock(&c->mu);
        return -EBUSY;
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
    uint64_t off = c->hand;
    uint32_t n = 0;
    if (avail <= max_packets && end - off <= max_bytes) {
        n = (uint32_t)avail; /* the whole run fits: no need to walk it */
        off = end;
    }
    while (off < end && n < max_packets) {
        uint32_t caplen;
        memcpy(&caplen, c->ring + off + 8, sizeof(caplen));
        uint64_t reclen = REC_HDR + caplen;
        if (n > 0 && off - c->hand + reclen > max_bytes)
            break;
        off += reclen;
        n++;
    }
    b->data = c->ring + c->hand;
    b->nbytes = off - c->hand;
    b->count = n;
    c->out_count = n;
    c->out_bytes = b->nbytes;
    c->hand = off;
    c->pending -= n;
    c->pending_bytes -= b->nbytes;
    if (c->wrapped) {
        c->top_pending -= n;
        c->top_pending_bytes -= b->nbytes;
    }
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
    pthread_mutex_lock(&c->mu);
    if (!c->out_count) {
        pthread_mutex_unlock(&c->mu);
        return 0;
    }
    /* Per-group delivery counts: the group is in each record's nfgenmsg. */
    uint64_t off = c->rd;
    if (c->ngroups == 1) {
        c->g[0].st.delivered_packets += c->out_count;
        c->g[0].st.delivered_bytes += c->out_bytes;
    }
    for (uint32_t i = 0; c->ngroups > 1 && i < c->out_count; i++) {
        uint32_t caplen;
        memcpy(&caplen, c->ring + off + 8, sizeof(caplen));
        struct nfc_group *g = group_of(c, (const unsigned char *)c->ring + off + REC_HDR);
        if (!g)
            g = &c->g[0];
        g->st.delivered_packets++;
        g->st.delivered_bytes += REC_HDR + caplen;
        off += REC_HDR + caplen;
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
    c->paused = paused;
    return 0;
}
