/* ipsec_nflog C core: the reader thread. It polls the group sockets and the stop eventfd,
 * recvmmsg()s whole kernel batches, and stores every packet message of a datagram in the ring
 * under one lock; NLMSG_ERROR acknowledgements of our unbind mark a group as flushed. */
#define _GNU_SOURCE
#include "core.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

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
                if (++c->unbound_groups == c->ngroups) {
                    pthread_cond_broadcast(&c->flushed_cv);
                    nfc_signal_pending(c, 1, 1); /* stopping: no more batching */
                }
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
        nfc_store_packet(c, gi >= 0 ? &c->g[gi] : from, body, len, now);
    }
}

/* Count one received datagram of r bytes (more than a slot holds: truncated to it). */
static size_t count_datagram(struct nfc_capture *c, struct nfc_group *g, size_t r)
{
    if (r > c->rbuf_size) {
        g->st.truncated_datagrams++;
        r = c->rbuf_size;
    }
    g->st.datagrams++;
    if ((uint64_t)r > g->st.max_datagram)
        g->st.max_datagram = (uint64_t)r;
    return r;
}

/* recvmmsg() what is waiting on a group socket, one datagram per slot, without blocking:
 * one syscall for a burst of small datagrams, and none spent on finding the queue empty.
 * Returns how many (their lengths in len[]), 0 when none is waiting, or -errno. ENOBUFS
 * is counted here and retried. */
static int recv_datagrams(struct nfc_capture *c, struct nfc_group *g, struct mmsghdr *m,
                          uint32_t nslots, size_t *len)
{
    for (;;) {
        int r = recvmmsg(g->fd, m, nslots, MSG_TRUNC | MSG_DONTWAIT, NULL);
        if (r >= 0) {
            for (int i = 0; i < r; i++)
                len[i] = count_datagram(c, g, m[i].msg_len);
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

/* One datagram into slot 0 (binding reads its ACK this way); returns bytes, 0 when none
 * is waiting, or -errno. */
ssize_t nfc_recv_datagram(struct nfc_capture *c, struct nfc_group *g)
{
    struct iovec iov = {.iov_base = c->rbuf, .iov_len = c->rbuf_size};
    struct mmsghdr m = {.msg_hdr = {.msg_iov = &iov, .msg_iovlen = 1}};
    size_t len;
    int r = recv_datagrams(c, g, &m, 1, &len);
    return r <= 0 ? r : (ssize_t)len;
}

/* Store n received datagrams (slot i holds len[i] bytes) under one lock, all stamped with
 * the time they were taken. Returns ms until pending records must be handed over, -1:
 * none. */
static int ingest_slots(struct nfc_capture *c, struct nfc_group *g, const size_t *len, int n)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    pthread_mutex_lock(&c->mu);
    uint64_t before = c->pending;
    for (int i = 0; i < n; i++)
        handle_datagram(c, g, c->rbuf + (size_t)i * c->rbuf_size, len[i], &now);
    int left = nfc_signal_pending(c, before, 0);
    pthread_mutex_unlock(&c->mu);
    return left;
}

int nfc_ingest(struct nfc_capture *c, struct nfc_group *g, ssize_t n)
{
    size_t len = (size_t)n;
    return ingest_slots(c, g, &len, 1);
}

static uint64_t monotonic_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000u + (uint64_t)t.tv_nsec / 1000u;
}

/* The adaptive queue threshold (nfc_params.latency_budget_us): the threshold that fills a
 * kernel batch within the budget at the rate of the last window, or the floor when the
 * group went quiet. It changes only by a factor of two or more, so a steady rate sends no
 * config messages, and at most once per window. */
static void adapt_qthreshold(struct nfc_capture *c, struct nfc_group *g, uint64_t now_us,
                             int quiet)
{
    uint64_t span = now_us - g->adapt_since_us;
    if (!quiet && span < NFC_ADAPT_WINDOW_US)
        return;
    uint64_t want = quiet ? 0 : g->adapt_packets * c->latency_budget_us / span;
    g->adapt_since_us = now_us;
    g->adapt_packets = 0;
    if (want < c->qthreshold_base)
        want = c->qthreshold_base;
    if (want > NFC_QTHRESH_ADAPT_MAX)
        want = NFC_QTHRESH_ADAPT_MAX;
    uint32_t q = g->st.qthreshold;
    if (want < 2u * q && 2u * want > q)
        return;
    pthread_mutex_lock(&c->mu);
    if (c->flushing) {
        pthread_mutex_unlock(&c->mu);
        return;
    }
    int e = nfc_send_qthreshold(g, (uint32_t)want);
    if (e < 0) {
        g->st.netlink_errors++;
    } else {
        g->st.qthreshold = (uint32_t)want;
        if (want > g->st.qthreshold_peak)
            g->st.qthreshold_peak = (uint32_t)want;
    }
    pthread_mutex_unlock(&c->mu);
}

/* Whether some group's threshold is above its floor (the reader then wakes every window to
 * notice a quiet group). */
static int qthreshold_raised(const struct nfc_capture *c)
{
    for (uint32_t i = 0; c->latency_budget_us && i < c->ngroups; i++)
        if (c->g[i].st.qthreshold > c->qthreshold_base)
            return 1;
    return 0;
}

/* The hand-over deadline passed without a datagram: wake the consumer if it is due. */
static int handover_due(struct nfc_capture *c)
{
    pthread_mutex_lock(&c->mu);
    int left = nfc_signal_pending(c, 1, 0);
    pthread_mutex_unlock(&c->mu);
    return left;
}

static void *reader_main(void *arg)
{
    struct nfc_capture *c = arg;
    struct pollfd pfd[NFC_MAX_GROUPS + 1];
    for (uint32_t i = 0; i < c->ngroups; i++)
        pfd[i] = (struct pollfd){.fd = c->g[i].fd, .events = POLLIN};
    pfd[c->ngroups] = (struct pollfd){.fd = c->stop_fd, .events = POLLIN};
    struct iovec iov[NFC_RECV_SLOTS_MAX];
    struct mmsghdr m[NFC_RECV_SLOTS_MAX];
    size_t len[NFC_RECV_SLOTS_MAX];
    memset(m, 0, sizeof(m));
    for (uint32_t i = 0; i < c->nslots; i++) {
        iov[i] = (struct iovec){.iov_base = c->rbuf + (size_t)i * c->rbuf_size,
                                .iov_len = c->rbuf_size};
        m[i].msg_hdr.msg_iov = &iov[i];
        m[i].msg_hdr.msg_iovlen = 1;
    }

    int handover_left = -1; /* ms until pending records must be handed over, -1: none */
    while (!c->stopping) {
        if (c->paused) {
            poll(&pfd[c->ngroups], 1, 10);
            continue;
        }
        int wait_ms = handover_left >= 0 && handover_left < 100 ? handover_left : 100;
        if (qthreshold_raised(c) && wait_ms > NFC_ADAPT_WINDOW_US / 1000)
            wait_ms = NFC_ADAPT_WINDOW_US / 1000;
        int r = poll(pfd, c->ngroups + 1, wait_ms);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (pfd[c->ngroups].revents)
            break;
        if (r == 0) {
            handover_left = handover_due(c);
            for (uint32_t i = 0; i < c->ngroups; i++)
                if (c->g[i].st.qthreshold > c->qthreshold_base)
                    adapt_qthreshold(c, &c->g[i], monotonic_us(), 1);
            continue;
        }
        for (uint32_t i = 0; i < c->ngroups; i++) {
            if (!(pfd[i].revents & (POLLIN | POLLERR)))
                continue;
            /* Drain a bounded number of datagrams per group so groups share fairly; fewer
             * than the slots means the queue is empty. */
            struct nfc_group *g = &c->g[i];
            uint64_t received = g->st.received_packets; /* written by this thread only */
            for (int k = 0; k < 8; k++) {
                int n = recv_datagrams(c, g, m, c->nslots, len);
                if (n <= 0)
                    break;
                handover_left = ingest_slots(c, g, len, n);
                if ((uint32_t)n < c->nslots)
                    break;
            }
            if (c->latency_budget_us) {
                g->adapt_packets += g->st.received_packets - received;
                adapt_qthreshold(c, g, monotonic_us(), 0);
            }
        }
    }
    return NULL;
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

void nfc_stop_reader(struct nfc_capture *c)
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
    nfc_stop_reader(c);
    return 0;
}

int nfc_pause(struct nfc_capture *c, int paused)
{
    if (FOREIGN(c))
        return -ECHILD;
    c->paused = paused;
    return 0;
}
