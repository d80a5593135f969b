/* ipsec_nflog C core: framing ring records as pcapng Enhanced Packet Blocks or raw-IP pcap
 * records in one pass, so writers of those formats do no Python work per packet. The file
 * layouts' owner (ipsec_nflog.files) supplies what is format policy: the interface id of
 * each group and the option bytes of a synthesized timestamp. */
#define _GNU_SOURCE
#include "core.h"

#include <errno.h>
#include <string.h>


static int iface_of(const struct nfc_frame_args *a, uint16_t group)
{
    for (uint32_t i = 0; i < a->ngroups; i++)
        if (a->groups[i] == group)
            return (int)a->iface_ids[i];
    return -1;
}

static const struct nlattr *attr_of(const unsigned char *body, uint32_t len, uint16_t type)
{
    const struct nlattr *a;
    for (uint32_t off = NFC_ATTR_START; (a = nfc_attr_at(body, len, off));
         off += NLA_ALIGN(a->nla_len))
        if ((a->nla_type & NLA_TYPE_MASK) == type)
            return a;
    return NULL;
}

static void put32(char *p, uint32_t v) { memcpy(p, &v, 4); }

/* One record as an EPB at out; returns its length, 0 when it does not fit. */
static uint64_t frame_epb(const uint32_t *hdr, const unsigned char *body, uint32_t iface,
                          const struct nfc_frame_args *a, char *out, uint64_t room)
{
    uint32_t caplen = hdr[2];
    int synth = attr_of(body, caplen, NFULA_TIMESTAMP) == NULL;
    uint64_t padded = ((uint64_t)caplen + 3) & ~(uint64_t)3;
    uint64_t total = EPB_HEAD + padded + (synth ? a->synth_opts_len : 0) + 4;
    if (total > room)
        return 0;
    uint64_t ts = (uint64_t)hdr[0] * 1000000u + hdr[1];
    put32(out, EPB_TYPE);
    put32(out + 4, (uint32_t)total);
    put32(out + 8, iface);
    put32(out + 12, (uint32_t)(ts >> 32));
    put32(out + 16, (uint32_t)ts);
    put32(out + 20, caplen);
    put32(out + 24, hdr[3]);
    memcpy(out + EPB_HEAD, body, caplen);
    memset(out + EPB_HEAD + caplen, 0, padded - caplen);
    char *q = out + EPB_HEAD + padded;
    if (synth) {
        memcpy(q, a->synth_opts, a->synth_opts_len);
        q += a->synth_opts_len;
    }
    put32(q, (uint32_t)total);
    return total;
}

/* One record as a raw-IP pcap record; returns its length, 0 when it does not fit, and sets
 * *skip when the record has no IP packet. */
static uint64_t frame_raw(const uint32_t *hdr, const unsigned char *body, char *out,
                          uint64_t room, int *skip)
{
    const struct nlattr *p = attr_of(body, hdr[2], NFULA_PAYLOAD);
    *skip = p == NULL;
    if (!p)
        return 0;
    uint32_t n = p->nla_len - NLA_HDRLEN;
    if (REC_HDR + (uint64_t)n > room)
        return 0;
    /* orig_len - caplen is what the snaplen cut from the payload's end */
    uint32_t cut = hdr[3] > hdr[2] ? hdr[3] - hdr[2] : 0;
    uint32_t rec[4] = {hdr[0], hdr[1], n, n + cut};
    memcpy(out, rec, REC_HDR);
    memcpy(out + REC_HDR, (const unsigned char *)p + NLA_HDRLEN, n);
    return REC_HDR + n;
}

int nfc_frame(const char *buf, uint64_t nbytes, uint32_t count, const struct nfc_frame_args *a,
              char *out, uint64_t out_cap, struct nfc_frame_result *r)
{
    memset(r, 0, sizeof(*r));
    r->unknown_group = -1;
    if (a->format != NFC_FRAME_PCAPNG && a->format != NFC_FRAME_RAW)
        return -EINVAL;
    uint64_t off = 0, w = 0;
    while (r->consumed < count && off + REC_HDR <= nbytes) {
        uint32_t hdr[4];
        memcpy(hdr, buf + off, REC_HDR);
        if (hdr[2] > nbytes - off - REC_HDR || hdr[2] < 4)
            return -EINVAL; /* not a run of whole records */
        const unsigned char *body = (const unsigned char *)buf + off + REC_HDR;
        uint64_t n;
        if (a->format == NFC_FRAME_PCAPNG) {
            int iface = iface_of(a, (uint16_t)((body[2] << 8) | body[3]));
            if (iface < 0) { /* the caller declares the interface, then calls again */
                r->unknown_group = (body[2] << 8) | body[3];
                break;
            }
            n = frame_epb(hdr, body, (uint32_t)iface, a, out + w, out_cap - w);
        } else {
            int skip;
            n = frame_raw(hdr, body, out + w, out_cap - w, &skip);
            if (skip) {
                r->skipped++;
                r->consumed++;
                off += REC_HDR + hdr[2];
                continue;
            }
        }
        if (n == 0)
            return -ENOSPC;
        w += n;
        r->framed++;
        r->consumed++;
        off += REC_HDR + hdr[2];
    }
    r->nbytes = w;
    r->consumed_bytes = off;
    return 0;
}

uint64_t nfc_frame_bound(uint64_t nbytes, uint32_t count, uint32_t synth_opts_len)
{
    /* an EPB adds 16 bytes of head and tail to a record's 16, 3 of padding, the options */
    return nbytes + (uint64_t)count * (16 + 3 + synth_opts_len);
}
