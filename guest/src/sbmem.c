/*
 * sbmem - memory invariant workload for the snowbird demo guest.
 *
 * Usage: sbmem [MIB]      (default: sb.mem=N from the kernel command line, else 32)
 *
 * Why this shape: it is the invariant QEMU's own migration-test uses. Every
 * pass dirties one byte in every page, in page order, so the whole buffer is
 * rewritten continuously (the worst case for pre-copy migration) and the state
 * is trivially checkable: before pass p touches page i, its first byte must
 * hold the value pass p-1 wrote. A page that migration lost, sent stale, or
 * sent twice out of order shows up as a mismatch within one pass.
 *
 * Output (stdout, one JSON object per line, one write() per line):
 *   {"type":"mem-heartbeat","uptime_ms":N,"pass":N,"mib":N,"violations":N}   ~1/s
 *   {"type":"mem-violation","uptime_ms":N,"page":N,"expected":N,"found":N}
 *   {"type":"error","source":"mem","detail":"..."}
 *
 * SIGUSR1 flips the byte of page N/2: a test hook that proves the checker
 * catches a real corruption (the host's "corrupt-mem" command).
 */
#include "sb.h"

#include <signal.h>
#include <sys/mman.h>

/* At most this many violation lines per pass; the rest are only counted in
 * the heartbeat, so a wholesale corruption cannot flood the control channel. */
#define MAX_REPORTS_PER_PASS 16
/* Look at the clock and at pending signals every this many pages. */
#define CHUNK_PAGES 1024

static volatile sig_atomic_t corrupt_requested;
static uint64_t mib, violations;
static double last_beat; /* 0: beat as soon as possible */

/* Heartbeat about once per second, whatever the buffer size: called between
 * chunks, so a huge buffer whose pass takes seconds still beats on time. */
static void maybe_beat(uint64_t passes_done)
{
	double now = sb_now();
	if (last_beat != 0 && now - last_beat < 1.0)
		return;
	last_beat = now;
	sb_emit("{\"type\":\"mem-heartbeat\",\"uptime_ms\":%llu,\"pass\":%llu,"
		"\"mib\":%llu,\"violations\":%llu}",
		(unsigned long long)sb_uptime_ms(), (unsigned long long)passes_done,
		(unsigned long long)mib, (unsigned long long)violations);
}

static void on_usr1(int sig)
{
	(void)sig;
	corrupt_requested = 1;
}

int main(int argc, char **argv)
{
	mib = sb_cmdline_u64("sb.mem=", 32);
	if (argc > 1 && (sb_parse_u64(argv[1], &mib) != 0 || mib == 0)) {
		sb_error("mem", "usage: sbmem [MIB], MIB a positive integer");
		return 2;
	}

	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	size_t bytes = (size_t)mib << 20;
	size_t npages = bytes / page;

	/* volatile: this memory is the thing under test, every access must
	 * really happen, in order. */
	volatile unsigned char *mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
				  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED) {
		char msg[128];
		snprintf(msg, sizeof msg, "mmap %llu MiB: %s", (unsigned long long)mib, strerror(errno));
		sb_error("mem", msg);
		return 1;
	}
	/* Locked pages cannot be swapped (there is no swap, but a later config
	 * might add one) and are faulted in now, so pass 1 is not skewed. */
	if (mlock((void *)mem, bytes) != 0) {
		char msg[128];
		snprintf(msg, sizeof msg, "mlock %llu MiB failed (%s), continuing unlocked",
			 (unsigned long long)mib, strerror(errno));
		sb_error("mem", msg);
	}
	/* Touch every page (the whole page, not one byte) so every page is
	 * backed by its own frame, then start from the known state "pass 0
	 * wrote 0 everywhere". */
	memset((void *)mem, 0, bytes);

	struct sigaction sa = { .sa_handler = on_usr1 };
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = SA_RESTART;
	sigaction(SIGUSR1, &sa, NULL);

	for (uint64_t pass = 1;; pass++) {
		unsigned char expected = (unsigned char)(pass - 1);
		unsigned char next = (unsigned char)pass;
		int reported = 0;

		for (size_t i = 0; i < npages; i++) {
			if (i % CHUNK_PAGES == 0 && i > 0)
				maybe_beat(pass - 1);
			if (i % CHUNK_PAGES == 0 && corrupt_requested) {
				/* Done here, between pages, rather than in the signal
				 * handler: a handler could land between this loop's load
				 * and store of that very page and be silently undone. */
				corrupt_requested = 0;
				mem[(npages / 2) * page] ^= 0xff;
			}
			volatile unsigned char *b = &mem[i * page];
			unsigned char found = *b;
			if (found != expected) {
				violations++;
				if (reported++ < MAX_REPORTS_PER_PASS)
					sb_emit("{\"type\":\"mem-violation\",\"uptime_ms\":%llu,\"page\":%zu,"
						"\"expected\":%u,\"found\":%u}",
						(unsigned long long)sb_uptime_ms(), i, expected, found);
			}
			/* Writing the next value unconditionally also re-synchronises
			 * a bad page, so each corruption is reported exactly once. */
			*b = next;
		}
		maybe_beat(pass);
	}
}
