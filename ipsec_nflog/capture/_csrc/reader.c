/* ipsec_nflog C core: the reader thread. It polls the group sockets and the stop eventfd,
 * recv()s whole kernel batches, and stores every packet message of a datagram in the ring
 * under one lock; NLMSG_ERROR acknowledgements of our unbind mark a group as flushed. */
#define _GNU_SOURCE
#include "core.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
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

/* recv() one datagram from a group socket; returns bytes, 0 when none is waiting, or
 * -errno. ENOBUFS is counted here and reported as "try again". */
ssize_t nfc_recv_datagram(struct nfc_capture *c, struct nfc_group *g, int flags)
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

int nfc_ingest(struct nfc_capture *c, struct nfc_group *g, ssize_t n)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    pthread_mutex_lock(&c->mu);
    uint64_t before = c->pending;
    handle_datagram(c, g, c->rbuf, (size_t)n, &now);
    int left = nfc_signal_pending(c, before, 0);
    pthread_mutex_unlock(&c->mu);
    return left;
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

    int handover_left = -1; /* ms until pending records must be handed over, -1: none */
    while (!c->stopping) {
        if (c->paused) {
            poll(&pfd[c->ngroups], 1, 10);
            continue;
        }
        int r = poll(pfd, c->ngroups + 1,
                     handover_left >= 0 && handover_left < 100 ? handover_left : 100);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (pfd[c->ngroups].revents)
            break;
        if (r == 0) {
            handover_left = handover_due(c);
            continue;
        }
        for (uint32_t i = 0; i < c->ngroups; i++) {
            if (!(pfd[i].revents & (POLLIN | POLLERR)))
                continue;
            /* Drain a bounded number of datagrams per group so groups share fairly. */
            for (int k = 0; k < 64; k++) {
                ssize_t n = nfc_recv_datagram(c, &c->g[i], MSG_DONTWAIT);
                if (n <= 0)
                    break;
                handover_left = nfc_ingest(c, &c->g[i], n);
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
