/* cref: a minimal bare C NFLOG reader, the benchmark's reference ceiling.
 *
 * Binds one NFLOG group with libnetfilter_log, configured for throughput like the library's
 * defaults (kernel batching and a big socket buffer), and writes every message as a
 * LINKTYPE_NFLOG (239) pcap record whose body is the raw netlink payload (nfgenmsg + TLVs),
 * in a microsecond pcap file in host byte order (the same format as ipsec_nflog's ring
 * records). Runs until SIGINT/SIGTERM, then prints one JSON line on stdout.
 *
 *   cref -g GROUP -w FILE [-s SNAPLEN] [-q QTHRESH] [-t FLUSH_CS] [-n NLBUFSIZ] [-r RCVBUF]
 *
 * Build: gcc -O2 -o cref cref.c -lnetfilter_log
 *
 * Timestamps: NFULA_TIMESTAMP is absent for OUTPUT packets, so every record carries the time
 * of the recv() that returned it (what tcpdump does too). orig_len = caplen.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <linux/netlink.h>
#include <libnetfilter_log/libnetfilter_log.h>

#define LINKTYPE_NFLOG 239

static volatile sig_atomic_t stop;

static void on_signal(int sig) { (void)sig; stop = 1; }

struct state {
	FILE *out;
	struct timeval now; /* time of the current recv() */
	uint64_t packets, bytes;
	int write_error;
};

struct rec_hdr {
	uint32_t ts_sec, ts_usec, caplen, orig_len;
};

/* The callback gets a pointer to the nfgenmsg inside the netlink message; the message header
 * sits right before it, so the whole body is nlmsg_len - NLMSG_HDRLEN bytes from nfmsg. */
static int on_packet(struct nflog_g_handle *gh, struct nfgenmsg *nfmsg, struct nflog_data *nfd,
		     void *data)
{
	(void)gh; (void)nfd;
	struct state *st = data;
	const struct nlmsghdr *nlh =
		(const struct nlmsghdr *)((const char *)nfmsg - NLMSG_HDRLEN);
	uint32_t len = nlh->nlmsg_len - NLMSG_HDRLEN;
	struct rec_hdr h = {
		.ts_sec = (uint32_t)st->now.tv_sec,
		.ts_usec = (uint32_t)st->now.tv_usec,
		.caplen = len,
		.orig_len = len,
	};
	if (fwrite(&h, sizeof h, 1, st->out) != 1 || fwrite(nfmsg, 1, len, st->out) != len)
		st->write_error = errno ? errno : EIO;
	st->packets++;
	st->bytes += len;
	return 0;
}

static uint64_t truncated;

/* recv() that notices when the kernel's message did not fit the buffer. */
static ssize_t recv_batch(int fd, char *buf, size_t len, int flags)
{
	struct iovec iov = {buf, len};
	struct msghdr mh = {0};
	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	ssize_t n = recvmsg(fd, &mh, flags);
	if (n >= 0 && (mh.msg_flags & MSG_TRUNC)) {
		truncated++;
		if ((size_t)n > len)
			n = (ssize_t)len;
	}
	return n;
}

static void usage(void)
{
	fprintf(stderr, "usage: cref -g GROUP -w FILE [-s SNAPLEN] [-q QTHRESH] [-t FLUSH_CS] "
			"[-n NLBUFSIZ] [-r RCVBUF]\n");
	exit(2);
}

static void die(const char *what)
{
	fprintf(stderr, "cref: %s: %s\n", what, strerror(errno));
	exit(1);
}

int main(int argc, char **argv)
{
	long group = -1;
	const char *path = NULL;
	unsigned snaplen = 0xffff, qthresh = 1000, flush_cs = 10;
	unsigned nlbufsiz = 128 * 1024, rcvbuf = 64 * 1024 * 1024;
	int c;
	while ((c = getopt(argc, argv, "g:w:s:q:t:n:r:")) != -1) {
		switch (c) {
		case 'g': group = strtol(optarg, NULL, 0); break;
		case 'w': path = optarg; break;
		case 's': snaplen = (unsigned)strtoul(optarg, NULL, 0); break;
		case 'q': qthresh = (unsigned)strtoul(optarg, NULL, 0); break;
		case 't': flush_cs = (unsigned)strtoul(optarg, NULL, 0); break;
		case 'n': nlbufsiz = (unsigned)strtoul(optarg, NULL, 0); break;
		case 'r': rcvbuf = (unsigned)strtoul(optarg, NULL, 0); break;
		default: usage();
		}
	}
	if (group < 0 || group > 65535 || !path)
		usage();

	struct state st = {0};
	st.out = fopen(path, "wb");
	if (!st.out)
		die(path);
	static char iobuf[1 << 20];
	setvbuf(st.out, iobuf, _IOFBF, sizeof iobuf);
	struct {
		uint32_t magic;
		uint16_t major, minor;
		int32_t thiszone;
		uint32_t sigfigs, snaplen, linktype;
	} fh = {0xa1b2c3d4, 2, 4, 0, 0, 262144, LINKTYPE_NFLOG};
	if (fwrite(&fh, sizeof fh, 1, st.out) != 1)
		die("write pcap header");

	struct nflog_handle *h = nflog_open();
	if (!h)
		die("nflog_open");
	struct nflog_g_handle *gh = nflog_bind_group(h, (uint16_t)group);
	if (!gh)
		die("nflog_bind_group (is the group bound by another process?)");
	if (nflog_set_mode(gh, NFULNL_COPY_PACKET, snaplen) < 0)
		die("nflog_set_mode");
	if (nflog_set_nlbufsiz(gh, nlbufsiz) < 0)
		die("nflog_set_nlbufsiz");
	if (nflog_set_qthresh(gh, qthresh) < 0)
		die("nflog_set_qthresh");
	if (nflog_set_timeout(gh, flush_cs) < 0)
		die("nflog_set_timeout");
	nflog_callback_register(gh, on_packet, &st);

	int fd = nflog_fd(h);
	int rb = (int)rcvbuf;
	if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rb, sizeof rb) < 0)
		die("SO_RCVBUFFORCE");

	struct sigaction sa = {0};
	sa.sa_handler = on_signal; /* no SA_RESTART: recv() returns EINTR */
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);

	/* The kernel fills a batch up to the skb's tailroom, and alloc_skb() rounds nlbufsiz up
	 * (128 KiB + skb_shared_info becomes a 256 KiB allocation), so a buffer of nlbufsiz
	 * would truncate batches. 1 MiB is plenty; truncation is still detected and counted. */
	size_t bufsz = 1 << 20;
	if (bufsz < 4 * (size_t)nlbufsiz)
		bufsz = 4 * (size_t)nlbufsiz;
	char *buf = malloc(bufsz);
	if (!buf)
		die("malloc");
	uint64_t enobufs = 0, recvs = 0;
	while (!stop) {
		ssize_t n = recv_batch(fd, buf, bufsz, 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == ENOBUFS) { /* socket overrun: the kernel dropped messages */
				enobufs++;
				continue;
			}
			die("recv");
		}
		recvs++;
		gettimeofday(&st.now, NULL);
		nflog_handle_packet(h, buf, (int)n);
		if (st.write_error)
			break;
	}

	/* Stopped: take what is already queued on the socket, without waiting for more. */
	while (!st.write_error) {
		ssize_t n = recv_batch(fd, buf, bufsz, MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == ENOBUFS) {
				enobufs++;
				continue;
			}
			break; /* EAGAIN: empty */
		}
		recvs++;
		gettimeofday(&st.now, NULL);
		nflog_handle_packet(h, buf, (int)n);
	}

	if (fflush(st.out) != 0 || fclose(st.out) != 0)
		st.write_error = errno ? errno : EIO;
	nflog_unbind_group(gh);
	nflog_close(h);
	printf("{\"tool\":\"cref\",\"packets\":%llu,\"bytes\":%llu,\"recvs\":%llu,"
	       "\"enobufs\":%llu,\"truncated\":%llu,\"write_error\":%d}\n",
	       (unsigned long long)st.packets, (unsigned long long)st.bytes,
	       (unsigned long long)recvs, (unsigned long long)enobufs,
	       (unsigned long long)truncated, st.write_error);
	fflush(stdout);
	return st.write_error ? 1 : 0;
}
