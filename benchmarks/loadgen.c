/* loadgen: UDP load generator for the capture benchmark (loopback only).
 *
 *   loadgen [-d 127.0.0.1|::1] [-p PORT] [-s PAYLOAD_BYTES] [-r PPS] [-b BATCH]
 *           (-t SECONDS | -c COUNT)
 *
 * Sends UDP datagrams with sendmmsg(), BATCH at a time, either flat out (-r 0, the default)
 * or paced to PPS with clock_gettime(CLOCK_MONOTONIC) and absolute clock_nanosleep()
 * between batches. Stops after SECONDS (-t) or after COUNT successful sends (-c).
 *
 * The destination must be 127.0.0.1 or ::1: anything else is refused (exit 2), so the
 * benchmark can never spray traffic at a real network.
 *
 * Prints one JSON line on stdout. "sent" counts only datagrams the kernel accepted;
 * failed sends (ENOBUFS, EAGAIN, ECONNREFUSED, ...) are retried and counted apart in
 * "errors". Exit status 0 on success, 1 on a fatal error, 2 on bad arguments.
 *
 * Build: gcc -O2 -o loadgen loadgen.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_BATCH 1024
#define MAX_PAYLOAD 65507

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void sleep_until(double t)
{
	struct timespec ts;
	ts.tv_sec = (time_t)t;
	ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR && !stop)
		;
}

static void usage(void)
{
	fprintf(stderr,
		"usage: loadgen [-d 127.0.0.1|::1] [-p PORT] [-s PAYLOAD] [-r PPS (0 = flat out)] "
		"[-b BATCH] (-t SECONDS | -c COUNT)\n");
	exit(2);
}

/* Parse the destination; only the loopback addresses 127.0.0.1 and ::1 are accepted. */
static int loopback_dest(const char *s, uint16_t port, struct sockaddr_storage *ss,
			 socklen_t *len)
{
	memset(ss, 0, sizeof *ss);
	struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
	if (inet_pton(AF_INET, s, &a4->sin_addr) == 1) {
		if (a4->sin_addr.s_addr != htonl(INADDR_LOOPBACK))
			return -1;
		a4->sin_family = AF_INET;
		a4->sin_port = htons(port);
		*len = sizeof *a4;
		return 0;
	}
	if (inet_pton(AF_INET6, s, &a6->sin6_addr) == 1) {
		if (memcmp(&a6->sin6_addr, &in6addr_loopback, sizeof in6addr_loopback) != 0)
			return -1;
		a6->sin6_family = AF_INET6;
		a6->sin6_port = htons(port);
		*len = sizeof *a6;
		return 0;
	}
	return -1;
}

int main(int argc, char **argv)
{
	const char *dst = "127.0.0.1";
	long port = 9999, size = 64, batch = 64;
	double rate = 0, duration = 0;
	long long count = 0;
	int c;
	while ((c = getopt(argc, argv, "d:p:s:r:b:t:c:")) != -1) {
		switch (c) {
		case 'd': dst = optarg; break;
		case 'p': port = strtol(optarg, NULL, 0); break;
		case 's': size = strtol(optarg, NULL, 0); break;
		case 'r': rate = strtod(optarg, NULL); break;
		case 'b': batch = strtol(optarg, NULL, 0); break;
		case 't': duration = strtod(optarg, NULL); break;
		case 'c': count = strtoll(optarg, NULL, 0); break;
		default: usage();
		}
	}
	if (optind != argc || port < 1 || port > 65535 || size < 0 || size > MAX_PAYLOAD ||
	    rate < 0 || batch < 1 || batch > MAX_BATCH || duration < 0 || count < 0 ||
	    (duration <= 0 && count <= 0))
		usage();

	struct sockaddr_storage ss;
	socklen_t sslen;
	if (loopback_dest(dst, (uint16_t)port, &ss, &sslen) < 0) {
		fprintf(stderr, "loadgen: refusing destination %s: only 127.0.0.1 and ::1 are "
				"allowed\n", dst);
		return 2;
	}

	int fd = socket(ss.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		perror("loadgen: socket");
		return 1;
	}
	/* Connected: the route is looked up once, and the peer cannot change. */
	if (connect(fd, (struct sockaddr *)&ss, sslen) < 0) {
		perror("loadgen: connect");
		return 1;
	}
	int sndbuf = 4 * 1024 * 1024;
	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
	prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0); /* precise sleeps for pacing */

	struct sigaction sa = {0};
	sa.sa_handler = on_signal;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);

	/* One buffer per slot; the first 8 bytes carry a sequence number. */
	size_t slot = size > 8 ? (size_t)size : 8;
	char *bufs = calloc((size_t)batch, slot);
	struct mmsghdr *msgs = calloc((size_t)batch, sizeof *msgs);
	struct iovec *iov = calloc((size_t)batch, sizeof *iov);
	if (!bufs || !msgs || !iov) {
		perror("loadgen: calloc");
		return 1;
	}
	for (long i = 0; i < batch; i++) {
		memset(bufs + (size_t)i * slot, 0x5a, slot);
		iov[i].iov_base = bufs + (size_t)i * slot;
		iov[i].iov_len = (size_t)size;
		msgs[i].msg_hdr.msg_iov = &iov[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
	}

	unsigned long long sent = 0, calls = 0, sleeps = 0;
	unsigned long long e_nobufs = 0, e_again = 0, e_refused = 0, e_other = 0;
	int last_errno = 0, consecutive_errors = 0;
	double start = now_s(), end_at = duration > 0 ? start + duration : 0, t = start;

	while (!stop) {
		if (count > 0 && sent >= (unsigned long long)count)
			break;
		long want = batch;
		if (count > 0 && (unsigned long long)count - sent < (unsigned long long)want)
			want = (long)((unsigned long long)count - sent);
		if (rate > 0) {
			/* The batch may go out once sent + want packets are due. */
			double due = start + (double)(sent + (unsigned long long)want) / rate;
			if (end_at > 0 && due > end_at)
				break;
			t = now_s();
			if (due > t) {
				sleep_until(due);
				sleeps++;
			}
		}
		if (end_at > 0 && (t = now_s()) >= end_at)
			break;
		for (long i = 0; i < want; i++) {
			uint64_t seq = sent + (uint64_t)i;
			memcpy(bufs + (size_t)i * slot, &seq, 8);
		}
		int n = sendmmsg(fd, msgs, (unsigned)want, 0);
		calls++;
		if (n > 0) {
			sent += (unsigned long long)n;
			consecutive_errors = 0;
			continue;
		}
		if (n == 0)
			continue;
		last_errno = errno;
		switch (errno) {
		case EINTR: continue;
		case ENOBUFS: e_nobufs++; break;
		case EAGAIN: e_again++; break;
		case ECONNREFUSED: e_refused++; break;
		default: e_other++; break;
		}
		if (++consecutive_errors >= 100000) {
			fprintf(stderr, "loadgen: giving up: %s\n", strerror(last_errno));
			break;
		}
		if (errno == ENOBUFS || errno == EAGAIN)
			sched_yield();
	}
	double elapsed = now_s() - start;
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
		     (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;

	char dbuf[INET6_ADDRSTRLEN];
	if (ss.ss_family == AF_INET)
		inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, dbuf, sizeof dbuf);
	else
		inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, dbuf, sizeof dbuf);
	printf("{\"tool\":\"loadgen\",\"dst\":\"%s\",\"port\":%ld,\"payload\":%ld,"
	       "\"rate\":%.0f,\"batch\":%ld,\"duration\":%.3f,\"count\":%lld,"
	       "\"sent\":%llu,\"elapsed\":%.6f,\"achieved_pps\":%.1f,\"calls\":%llu,"
	       "\"sleeps\":%llu,\"cpu_s\":%.6f,\"errors\":{\"ENOBUFS\":%llu,\"EAGAIN\":%llu,"
	       "\"ECONNREFUSED\":%llu,\"other\":%llu},\"last_errno\":%d}\n",
	       dbuf, port, size, rate, batch, duration, count, sent, elapsed,
	       elapsed > 0 ? (double)sent / elapsed : 0.0, calls, sleeps, cpu, e_nobufs, e_again,
	       e_refused, e_other, last_errno);
	fflush(stdout);
	return (e_other && sent == 0) ? 1 : 0;
}
