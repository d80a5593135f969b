/* ipsec_nflog C core: tcpdump filter expressions, compiled by libpcap for the IP packet an
 * NFLOG message carries (LINKTYPE_RAW) and run by libpcap's BPF interpreter in the reader
 * thread, before a record takes ring space; and the NFLOG metadata selector (hook, prefix,
 * devices) that BPF cannot see. */
#define _GNU_SOURCE
#include "core.h"

#include <errno.h>
#include <pcap/pcap.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct nfc_filter {
    struct bpf_program prog;
};

int nfc_filter_compile(const char *expr, int linktype, uint32_t snaplen,
                       struct nfc_filter **out, char *errbuf, uint32_t errbuf_len)
{
    *out = NULL;
    if (errbuf_len)
        errbuf[0] = '\0';
    /* pcap_open_dead takes a DLT_; they equal the LINKTYPE_ numbers except below 104,
     * where only LINKTYPE_RAW (101, DLT_RAW) concerns us. */
    int dlt = linktype == 101 ? DLT_RAW : linktype;
    pcap_t *p = pcap_open_dead(dlt, (int)(snaplen ? snaplen : 262144));
    if (!p)
        return -ENOMEM;
    struct nfc_filter *f = calloc(1, sizeof(*f));
    if (!f) {
        pcap_close(p);
        return -ENOMEM;
    }
    if (pcap_compile(p, &f->prog, expr, 1, PCAP_NETMASK_UNKNOWN) != 0) {
        snprintf(errbuf, errbuf_len, "%s", pcap_geterr(p));
        pcap_close(p);
        free(f);
        return -EINVAL;
    }
    pcap_close(p);
    *out = f;
    return 0;
}

uint32_t nfc_filter_length(const struct nfc_filter *f) { return f->prog.bf_len; }

int nfc_filter_can_match(const struct nfc_filter *f)
{
    /* libpcap's optimizer reduces a filter that rejects everything to one "ret #0". */
    const struct bpf_insn *i = f->prog.bf_insns;
    return !(f->prog.bf_len == 1 && BPF_CLASS(i->code) == BPF_RET && i->k == 0);
}

uint32_t nfc_filter_run(const struct nfc_filter *f, const unsigned char *pkt, uint32_t wirelen,
                        uint32_t caplen)
{
    /* libpcap's rules for short packets: a load past caplen rejects the packet; wirelen is
     * what `len`, `greater` and `less` see. */
    return bpf_filter(f->prog.bf_insns, pkt, wirelen, caplen);
}

void nfc_filter_free(struct nfc_filter *f)
{
    if (!f)
        return;
    pcap_freecode(&f->prog);
    free(f);
}

int nfc_select_match(const struct nfc_select *s, const struct nfc_hot_attrs *h)
{
    if (s->hook_mask) {
        if (!h->packet_hdr || h->packet_hdr->nla_len < NLA_HDRLEN + 3)
            return 0;
        unsigned hook = ((const unsigned char *)h->packet_hdr)[NLA_HDRLEN + 2];
        if (hook >= 32 || !(s->hook_mask & (1u << hook)))
            return 0;
    }
    if (s->indev && (!h->indev || h->indev->nla_len < NLA_HDRLEN + 4 ||
                     be32_at((const unsigned char *)h->indev + NLA_HDRLEN) != s->indev))
        return 0;
    if (s->outdev && (!h->outdev || h->outdev->nla_len < NLA_HDRLEN + 4 ||
                      be32_at((const unsigned char *)h->outdev + NLA_HDRLEN) != s->outdev))
        return 0;
    if (s->has_prefix) {
        if (!h->prefix)
            return 0;
        const char *v = (const char *)h->prefix + NLA_HDRLEN;
        size_t n = strnlen(v, h->prefix->nla_len - NLA_HDRLEN);
        if (n != strnlen(s->prefix, sizeof(s->prefix)) || memcmp(v, s->prefix, n) != 0)
            return 0;
    }
    return 1;
}
