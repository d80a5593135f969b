/* ipsec_nflog C core: sockets and their lifecycle. See nflog_core.h for the contract.
 *
 * One NETLINK_NETFILTER socket per group. The group is bound and configured with ONE config
 * message built with libnetfilter_log's nlmsg API (bind + mode + nlbufsiz + timeout +
 * qthresh + flags), so no packet can arrive half-configured, and the ACK is read here:
 * packets that arrive before it go into the ring like any other. Stopping unbinds, which
 * makes the kernel flush its queue to us at once. The other files: reader.c (the reader
 * thread), ring.c (the ring and the consumer), record.c (records and their index).
 */
#define _GNU_SOURCE
#include "core.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/sock_diag.h>
#include <libmnl/libmnl.h>
#include <libnetfilter_log/libnetfilter_log.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef SO_MEMINFO
#define SO_MEMINFO 55
#endif
#ifndef IPSEC_NFLOG_VERSION
#define IPSEC_NFLOG_VERSION "unknown"
#endif

const char *nfc_version(void) { return IPSEC_NFLOG_VERSION; }

uint64_t nfc_recv_buffer_size(uint32_t nlbufsiz) { return NFC_RECV_BUFFER(nlbufsiz); }

volatile unsigned nfc_fork_generation;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static void on_fork_child(void) { nfc_fork_generation++; }
static void register_atfork(void) { pthread_atfork(NULL, NULL, on_fork_child); }

/* ------------------------------------------------------------- configuration ---- */

/* Send one NFULNL config message for a group to the kernel; 0 or -errno. */
static int send_config(const struct nfc_group *g, const struct nlmsghdr *nlh)
{
    struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
    if (sendto(g->fd, nlh, nlh->nlmsg_len, 0, (struct sockaddr *)&kernel, sizeof(kernel)) < 0)
        return -errno;
    return 0;
}

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

    int sent = send_config(g, nlh);
    if (sent < 0)
        return sent;

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
        ssize_t n = nfc_recv_datagram(c, g);
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
                nfc_ingest(c, g, n);
                return 0;
            }
        }
        nfc_ingest(c, g, n);
    }
    return -ETIMEDOUT;
}

/* Change a bound group's queue threshold. No ACK is asked: a failure comes back as an
 * NLMSG_ERROR the reader counts in netlink_errors. */
int nfc_send_qthreshold(struct nfc_group *g, uint32_t qthreshold)
{
    char buf[256];
    memset(buf, 0, sizeof(buf));
    struct nlmsghdr *nlh = nflog_nlmsg_put_header(buf, NFULNL_MSG_CONFIG, AF_UNSPEC, g->group);
    nlh->nlmsg_seq = QTHRESH_SEQ;
    mnl_attr_put_u32(nlh, NFULA_CFG_QTHRESH, htonl(qthreshold));
    return send_config(g, nlh);
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

/* The capture's state and buffers, before any socket; *failed_op says what failed. */
static int alloc_capture(struct nfc_capture *c, const uint16_t *groups, uint32_t ngroups,
                         const struct nfc_params *params, int ring_fd, uint64_t ring_size,
                         const char **failed_op)
{
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
        c->g[i].st.qthreshold = c->g[i].st.qthreshold_peak = params->qthreshold;
    }
    c->latency_budget_us = params->latency_budget_us;
    c->ring_format = params->ring_format;
    c->synth_opts_len = params->epb_synth_opts ? params->epb_synth_opts_len : 0;
    if (c->synth_opts_len)
        memcpy(c->synth_opts, params->epb_synth_opts, c->synth_opts_len);
    c->qthreshold_base = params->qthreshold;
    c->ngroups = ngroups;
    c->fork_gen = nfc_fork_generation;
    c->filter = params->filter;
    c->select = params->select;
    c->select_active = c->select.hook_mask || c->select.indev || c->select.outdev ||
                       c->select.has_prefix;
    c->handover_ms = params->handover_ms;
    c->handover_bytes = params->handover_bytes;
    if (c->handover_bytes == 0 || c->handover_bytes > ring_size / 4)
        c->handover_bytes = ring_size / 4; /* the ring must not fill while we batch */
    c->event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    c->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    c->rbuf_size = NFC_RECV_BUFFER(nlbufsiz);
    c->nslots = (uint32_t)(NFC_RECV_SLOTS_BYTES / c->rbuf_size);
    if (c->nslots < 1)
        c->nslots = 1;
    if (c->nslots > NFC_RECV_SLOTS_MAX)
        c->nslots = NFC_RECV_SLOTS_MAX;
    c->rbuf = malloc(c->rbuf_size * c->nslots);
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->flushed_cv, NULL);
    /* The ring is the consumer's memfd, mapped writable only here: Python maps it
     * read-only, so no view it hands out can change what the core reads back. */
    c->cap = ring_size;
    c->ring = mmap(NULL, ring_size, PROT_READ | PROT_WRITE, MAP_SHARED, ring_fd, 0);
    if (c->ring == MAP_FAILED) {
        c->ring = NULL;
        *failed_op = "map the ring";
        return -errno;
    }
    if (c->event_fd < 0 || c->stop_fd < 0 || !c->rbuf) {
        *failed_op = "allocate";
        return c->rbuf ? -EMFILE : -ENOMEM;
    }
    return 0;
}

int nfc_open(struct nfc_capture **out, const uint16_t *groups, uint32_t ngroups,
             const struct nfc_params *params, int ring_fd, uint64_t ring_size, int netns_fd,
             int32_t *failed_group, const char **failed_op)
{
    *out = NULL;
    *failed_group = -1;
    *failed_op = "validate";
    if (ngroups == 0 || ngroups > NFC_MAX_GROUPS || ring_fd < 0 || ring_size < 4096 ||
        params->handover_ms > NFC_HANDOVER_MS_MAX ||
        params->latency_budget_us > NFC_LATENCY_BUDGET_US_MAX ||
        (params->ring_format != NFC_RING_PCAP && params->ring_format != NFC_RING_PCAPNG) ||
        (params->epb_synth_opts &&
         (params->epb_synth_opts_len > NFC_EPB_SYNTH_MAX || params->epb_synth_opts_len % 4 ||
          params->ring_format != NFC_RING_PCAPNG)) ||
        (params->latency_budget_us && (params->timeout_cs != 0 || params->qthreshold < 1 ||
                                       params->qthreshold > NFC_QTHRESH_ADAPT_MAX)))
        return -EINVAL;
    pthread_once(&atfork_once, register_atfork);
    struct nfc_capture *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    *out = c;
    int err = alloc_capture(c, groups, ngroups, params, ring_fd, ring_size, failed_op);
    if (err < 0 || netns_fd == NFC_NO_SOCKETS)
        return err;

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

int nfc_inject(struct nfc_capture *c, const char *datagram, uint32_t len)
{
    if (FOREIGN(c))
        return -ECHILD;
    if (c->thread_running || c->g[0].fd >= 0)
        return -EBUSY; /* only for a capture opened with NFC_NO_SOCKETS */
    if (len > c->rbuf_size)
        return -EMSGSIZE;
    memcpy(c->rbuf, datagram, len);
    nfc_ingest(c, &c->g[0], (ssize_t)len);
    return 0;
}

int nfc_flush(struct nfc_capture *c)
{
    if (FOREIGN(c))
        return -ECHILD;
    /* Unbinding makes the kernel flush the group's queued batch to our socket at once
     * (before its ACK), so the tail of a capture needs no flush-timeout wait. Under mu: a
     * qthreshold change of the reader must not reach the kernel after the unbind (it would
     * fail there: no such instance). */
    pthread_mutex_lock(&c->mu);
    c->flushing = 1;
    int err = 0;
    for (uint32_t i = 0; i < c->ngroups && !err; i++) {
        char buf[256];
        memset(buf, 0, sizeof(buf));
        struct nlmsghdr *nlh =
            nflog_nlmsg_put_header(buf, NFULNL_MSG_CONFIG, AF_UNSPEC, c->g[i].group);
        nlh->nlmsg_flags |= NLM_F_ACK;
        nlh->nlmsg_seq = UNBIND_SEQ;
        nflog_attr_put_cfg_cmd(nlh, NFULNL_CFG_CMD_UNBIND);
        err = send_config(&c->g[i], nlh);
    }
    pthread_mutex_unlock(&c->mu);
    return err;
}

void nfc_close(struct nfc_capture *c)
{
    if (!c)
        return;
    /* In a forked child the reader thread does not exist and the stop eventfd is shared
     * with the parent: only let go of this process's copies. */
    if (!FOREIGN(c))
        nfc_stop_reader(c);
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

