/* ipsec_nflog C core: the ring of ready records (pcap or pcapng EPBs) and the consumer side (wait, peek,
 * release). The reader stores with the mutex held; the consumer takes contiguous runs. */
#define _GNU_SOURCE
#include "core.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <unistd.h>

/* Reserve len bytes for one record; NULL when the ring is full. Called with mu held. */
char *nfc_ring_reserve(struct nfc_capture *c, uint64_t len)
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

uint64_t nfc_monotonic_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000u + (uint64_t)t.tv_nsec / 1000000u;
}

int nfc_signal_pending(struct nfc_capture *c, uint64_t before, int force)
{
    if (c->pending == 0 || c->ready)
        return -1;
    int64_t left = 0;
    if (c->handover_ms && !force && c->pending_bytes < c->handover_bytes) {
        uint64_t now = nfc_monotonic_ms();
        if (before == 0)
            c->pending_since_ms = now;
        left = (int64_t)(c->pending_since_ms + c->handover_ms) - (int64_t)now;
    }
    if (left > 0)
        return (int)left;
    uint64_t one = 1;
    ssize_t r = write(c->event_fd, &one, sizeof(one));
    (void)r;
    c->ready = 1;
    return -1;
}

int nfc_wait(struct nfc_capture *c, int timeout_ms)
{
    if (FOREIGN(c))
        return -ECHILD;
    pthread_mutex_lock(&c->mu);
    int ready = c->ready || (c->pending && (c->stopping || !c->thread_running));
    pthread_mutex_unlock(&c->mu);
    if (ready)
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
    int pcapng = c->ring_format == NFC_RING_PCAPNG;
    while (off + REC_HDR <= end && n < max_packets) {
        uint32_t word[2]; /* pcap: caplen, orig_len; EPB: length, interface id */
        memcpy(word, c->ring + off + (pcapng ? 4 : 8), sizeof(word));
        uint64_t reclen = pcapng ? word[0] : REC_HDR + (uint64_t)word[0];
        if (reclen < REC_HDR || reclen > end - off ||
            (n > 0 && off - start + reclen > max_bytes))
            break;
        int gi;
        if (pcapng)
            gi = word[1] < c->ngroups ? (int)word[1] : 0;
        else
            gi = word[0] >= 4 ? group_index(c, (const unsigned char *)c->ring + off + REC_HDR)
                              : 0;
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
    c->synth.n = 0; /* handed out: their stamps must not change under the consumer */
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
        c->ready = 0;
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

int nfc_event_fd(struct nfc_capture *c) { return c->event_fd; }

