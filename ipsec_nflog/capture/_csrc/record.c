/* ipsec_nflog C core: the record format. Storing a kernel packet message as a ring record,
 * a pcap record or a pcapng EPB (the hot path: one TLV pass for seq, timestamp and payload),
 * and the rows of the Python per-packet path, both over the one TLV walk in core.h. */
#define _GNU_SOURCE
#include "core.h"

#include <string.h>

static void scan_hot_attrs(const unsigned char *body, uint32_t len, struct nfc_hot_attrs *h)
{
    memset(h, 0, sizeof(*h));
    const struct nlattr *a;
    for (uint32_t off = NFC_ATTR_START; (a = nfc_attr_at(body, len, off));
         off += NLA_ALIGN(a->nla_len)) {
        switch (a->nla_type & NLA_TYPE_MASK) {
        case NFULA_SEQ: h->seq = a; break;
        case NFULA_TIMESTAMP: h->ts = a; break;
        case NFULA_PAYLOAD: h->payload = a; break;
        case NFULA_PACKET_HDR: h->packet_hdr = a; break;
        case NFULA_PREFIX: h->prefix = a; break;
        case NFULA_IFINDEX_INDEV: h->indev = a; break;
        case NFULA_IFINDEX_OUTDEV: h->outdev = a; break;
        }
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

/* Run the filter over the IP packet; a message without one is an empty packet. */
static int keep_payload(const struct nfc_filter *f, const struct nlattr *payload)
{
    if (!payload)
        return nfc_filter_run(f, (const unsigned char *)"", 0, 0) != 0;
    const unsigned char *ip = (const unsigned char *)payload + NLA_HDRLEN;
    uint32_t n = payload->nla_len - NLA_HDRLEN;
    uint32_t wire = orig_len_of(payload, n); /* the IP length when the snaplen cut it */
    return nfc_filter_run(f, ip, wire, n) != 0;
}

/* A stored record's timestamp in microseconds, and changing it, in the ring's format. */
static uint64_t record_stamp_us(const struct nfc_capture *c, const char *rec)
{
    uint32_t v[2];
    if (c->ring_format == NFC_RING_PCAPNG) {
        memcpy(v, rec + 12, sizeof(v)); /* ts high, ts low */
        return ((uint64_t)v[0] << 32) | v[1];
    }
    memcpy(v, rec, sizeof(v));
    return (uint64_t)v[0] * 1000000u + v[1];
}

static void set_record_stamp(const struct nfc_capture *c, char *rec, uint64_t us)
{
    uint32_t v[2];
    if (c->ring_format == NFC_RING_PCAPNG) {
        v[0] = (uint32_t)(us >> 32);
        v[1] = (uint32_t)us;
        memcpy(rec + 12, v, sizeof(v));
    } else {
        v[0] = (uint32_t)(us / 1000000u);
        v[1] = (uint32_t)(us % 1000000u);
        memcpy(rec, v, sizeof(v));
    }
}

/* A kernel stamp K arrived: every receive-stamped record still pending was logged
 * before it, so it is stamped K - 1 us (never before the previous kernel stamp, never after
 * its own receive time). Nothing else is known about them: the stamp stays "synthesized". */
static void bound_synthesized(struct nfc_capture *c, uint64_t kernel_us)
{
    struct nfc_synth *s = &c->synth;
    uint64_t est = kernel_us > 0 ? kernel_us - 1 : 0;
    if (est < s->last_kernel_us)
        est = s->last_kernel_us;
    for (uint32_t i = 0; i < s->n; i++)
        if (est < record_stamp_us(c, s->rec[i]))
            set_record_stamp(c, s->rec[i], est);
    s->n = 0;
    s->last_kernel_us = kernel_us;
}

/* The ring record's size: a pcap record, or an EPB (body padded to 4, the synthesized-stamp
 * options, the trailing length). */
static uint64_t record_size(const struct nfc_capture *c, uint32_t len, int kernel_stamp)
{
    if (c->ring_format != NFC_RING_PCAPNG)
        return REC_HDR + (uint64_t)len;
    return EPB_HEAD + (((uint64_t)len + 3) & ~(uint64_t)3) +
           (kernel_stamp ? 0 : c->synth_opts_len) + 4;
}

/* Write the record at dst (reclen bytes, from record_size). */
static void put_record(const struct nfc_capture *c, char *dst, uint64_t reclen, uint32_t iface,
                       const uint32_t stamp[2], const unsigned char *body, uint32_t len,
                       uint32_t orig_len, int kernel_stamp)
{
    if (c->ring_format != NFC_RING_PCAPNG) {
        uint32_t hdr[4] = {stamp[0], stamp[1], len, orig_len};
        memcpy(dst, hdr, REC_HDR);
        memcpy(dst + REC_HDR, body, len);
        return;
    }
    uint64_t us = (uint64_t)stamp[0] * 1000000u + stamp[1];
    uint32_t total = (uint32_t)reclen, padded = (len + 3) & ~3u;
    uint32_t head[7] = {EPB_TYPE, total, iface, (uint32_t)(us >> 32), (uint32_t)us, len,
                        orig_len};
    memcpy(dst, head, EPB_HEAD);
    memcpy(dst + EPB_HEAD, body, len);
    memset(dst + EPB_HEAD + len, 0, padded - len);
    char *q = dst + EPB_HEAD + padded;
    if (!kernel_stamp) {
        memcpy(q, c->synth_opts, c->synth_opts_len);
        q += c->synth_opts_len;
    }
    memcpy(q, &total, sizeof(total));
}

/* Store one packet message as a ring record (g: the group it is from, whose index is its
 * pcapng interface id). Called with mu held. */
void nfc_store_packet(struct nfc_capture *c, struct nfc_group *g, const unsigned char *body,
                      uint32_t len, const struct timespec *now)
{
    struct nfc_hot_attrs h;
    scan_hot_attrs(body, len, &h);
    const struct nlattr *seq = h.seq, *ts = h.ts;
    /* (the caller holds mu for the whole datagram, so c->synth stays consistent) */
    if (seq && seq->nla_len >= NLA_HDRLEN + 4) {
        uint32_t s = be32_at((const unsigned char *)seq + NLA_HDRLEN);
        uint32_t gap = s - g->next_seq;
        if (gap != 0 && gap < 0x80000000u) {
            g->st.seq_gap_packets += gap;
            g->st.seq_gap_events++;
        }
        g->next_seq = s + 1;
    }
    uint32_t stamp[2];
    int kernel_stamp = ts && ts->nla_len >= NLA_HDRLEN + 16;
    if (kernel_stamp) {
        const unsigned char *v = (const unsigned char *)ts + NLA_HDRLEN;
        stamp[0] = (uint32_t)be64_at(v);
        stamp[1] = (uint32_t)be64_at(v + 8);
        bound_synthesized(c, (uint64_t)stamp[0] * 1000000u + stamp[1]);
    } else {
        stamp[0] = (uint32_t)now->tv_sec;
        stamp[1] = (uint32_t)(now->tv_nsec / 1000);
    }
    uint64_t reclen = record_size(c, len, kernel_stamp);
    g->st.received_packets++;
    g->st.received_bytes += reclen;
    if ((c->select_active && !nfc_select_match(&c->select, &h)) ||
        (c->filter && !keep_payload(c->filter, h.payload))) {
        g->st.filtered_packets++;
        return;
    }

    char *dst = nfc_ring_reserve(c, reclen);
    if (!dst) {
        g->st.ring_drop_packets++;
        g->st.ring_drop_bytes += reclen;
        return;
    }
    if (!kernel_stamp) {
        g->st.timestamps_synthesized++;
        if (c->synth.n < NFC_SYNTH_MAX)
            c->synth.rec[c->synth.n++] = dst;
    }
    put_record(c, dst, reclen, (uint32_t)(g - c->g), stamp, body, len,
               orig_len_of(h.payload, len), kernel_stamp);
    c->wr += reclen;
    c->stored++;
    c->pending++;
    c->pending_bytes += reclen;
}

/* The entry of prefix (len bytes at v) in the run's table, added when new: 1 + its index,
 * or 0 when the table is full. */
static uint8_t prefix_entry(const char *buf, const unsigned char *v, uint32_t len,
                            struct nfc_span *table, uint32_t *n)
{
    for (uint32_t i = *n; i-- > 0;)
        if (table[i].end - table[i].start == len && !memcmp(buf + table[i].start, v, len))
            return (uint8_t)(i + 1);
    if (*n == NFC_ROW_PREFIXES)
        return 0;
    table[*n].start = (uint32_t)((const char *)v - buf);
    table[*n].end = table[*n].start + len;
    return (uint8_t)++*n;
}

int nfc_packet_rows(const char *buf, uint64_t nbytes, uint32_t count, struct nfc_packet_row *out,
                    struct nfc_span *prefixes, uint32_t *nprefixes)
{
    uint64_t off = 0;
    uint32_t i;
    *nprefixes = 0;
    if (nbytes > UINT32_MAX) /* the rows hold 32-bit offsets */
        nbytes = UINT32_MAX;
    for (i = 0; i < count && off + REC_HDR <= nbytes; i++) {
        struct nfc_packet_row *x = &out[i];
        uint32_t hdr[4];
        memcpy(hdr, buf + off, REC_HDR);
        if (off + REC_HDR + hdr[2] > nbytes)
            break;
        const unsigned char *body = (const unsigned char *)buf + off + REC_HDR;
        const unsigned char *prefix = NULL;
        uint32_t len = hdr[2], a_off, prefix_len = 0;
        const struct nlattr *a;
        memset(x, 0, sizeof(*x));
        x->rec_off = (uint32_t)off;
        x->ts_sec = hdr[0];
        x->ts_usec = hdr[1];
        x->orig_len = hdr[3];
        x->hook = NFC_ROW_NO_HOOK;
        for (a_off = NFC_ATTR_START; (a = nfc_attr_at(body, len, a_off));
             a_off += NLA_ALIGN(a->nla_len)) {
            uint16_t type = a->nla_type & NLA_TYPE_MASK;
            uint32_t vlen = a->nla_len - NLA_HDRLEN;
            const unsigned char *v = (const unsigned char *)a + NLA_HDRLEN;
            if (type == NFULA_PAYLOAD) {
                x->payload_start = (uint32_t)(off + REC_HDR + a_off + NLA_HDRLEN);
                x->payload_end = x->payload_start + vlen;
            } else if (type == NFULA_PREFIX) {
                const unsigned char *nul = memchr(v, 0, vlen);
                prefix = v;
                prefix_len = nul ? (uint32_t)(nul - v) : vlen;
            } else if (type == NFULA_PACKET_HDR) {
                x->hook = vlen >= 3 ? v[2] : NFC_ROW_NO_HOOK;
            }
        }
        if (a_off < len) /* a bad TLV or trailing bytes */
            x->flags |= NFC_ROW_SLOW;
        else if (prefix && !(x->prefix = prefix_entry(buf, prefix, prefix_len, prefixes,
                                                       nprefixes)))
            x->flags |= NFC_ROW_SLOW;
        off += REC_HDR + hdr[2];
    }
    return (int)i;
}
