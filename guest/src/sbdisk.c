/*
 * sbdisk - disk invariant workload for the snowbird demo guest.
 *
 * Usage: sbdisk [BLOCKS [DEVICE]]
 *   BLOCKS default: sb.disk=N from the kernel command line, else 4096
 *   DEVICE default: /dev/vda (another path is only useful for testing)
 *
 * Works on the raw virtio disk /dev/vda (no filesystem), on BLOCKS 4 KiB
 * blocks from offset 0, with O_DIRECT and aligned buffers so that every read
 * and write is a real request to the virtual disk, never the page cache. That
 * is the point: we check what the (migrated) disk holds, not a cached copy.
 *
 * Block layout (little endian):
 *   0  u64 magic      SB_MAGIC ("SNOWBDK1")
 *   8  u64 index      block number, catches misplaced writes
 *  16  u64 seq        number of the pass that wrote it
 *  24  u64 checksum   FNV-1a 64 of the whole block with this field zeroed
 *  32  payload        xorshift64 stream seeded from (index, seq)
 *
 * Pass p reads each block i in order, checks it was written by pass p-1
 * (all-zero counts as "pass 0", i.e. a blank disk), then writes it as pass p.
 * At any instant the region is therefore [0,k) at seq s+1 and [k,N) at seq s,
 * which is what lets a new boot resume: scan, find k, verify everything,
 * continue at block k. A block that an outside writer (qemu-io, a broken
 * migration) changed fails magic/index/checksum; one that lost a write shows
 * the wrong seq.
 *
 * Output (stdout, one JSON object per line, one write() per line):
 *   {"type":"disk-heartbeat","uptime_ms":N,"pass":N,"blocks":N,"verified":N,"violations":N}
 *   {"type":"disk-violation","uptime_ms":N,"block":N,"reason":"checksum|magic|index|sequence|io"}
 *   {"type":"error","source":"disk","detail":"..."}
 * SIGTERM/SIGINT: finish the block in hand, flush, exit 0, so a stop never
 * leaves a half-written pass behind that the next start would misread.
 */
#include "sb.h"

#include <linux/fs.h>
#include <signal.h>
#include <sys/ioctl.h>

#define BLOCK 4096u
#define SB_MAGIC 0x314b4442574f4e53ull /* "SNOWBDK1" read as little-endian u64 */
#define MAX_REPORTS_PER_PASS 16

struct header {
	uint64_t magic, index, seq, checksum;
};

static int fd;
static uint64_t nblocks, violations, verified, pass;
static int reported_this_pass;
static double last_beat;
static volatile sig_atomic_t stop_requested;

static void on_stop(int sig)
{
	(void)sig;
	stop_requested = 1;
}

static uint64_t fnv1a64(const unsigned char *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (size_t i = 0; i < n; i++) {
		h ^= p[i];
		h *= 0x100000001b3ull;
	}
	return h;
}

static uint64_t block_checksum(unsigned char *buf)
{
	struct header *h = (struct header *)buf;
	uint64_t saved = h->checksum;
	h->checksum = 0;
	uint64_t sum = fnv1a64(buf, BLOCK);
	h->checksum = saved;
	return sum;
}

/* Fill `buf` with the content block `index` has after pass `seq`. */
static void make_block(unsigned char *buf, uint64_t index, uint64_t seq)
{
	struct header *h = (struct header *)buf;
	h->magic = SB_MAGIC;
	h->index = index;
	h->seq = seq;
	h->checksum = 0;
	uint64_t x = (index + 1) * 0x9e3779b97f4a7c15ull ^ (seq + 1) * 0xbf58476d1ce4e5b9ull;
	uint64_t *words = (uint64_t *)(buf + sizeof *h);
	for (size_t w = 0; w < (BLOCK - sizeof *h) / 8; w++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		words[w] = x;
	}
	h->checksum = block_checksum(buf);
}

static int all_zero(const unsigned char *buf)
{
	for (size_t i = 0; i < BLOCK; i++)
		if (buf[i])
			return 0;
	return 1;
}

/* Classify a block just read. Returns NULL if it is well formed (and sets
 * *seq; a blank block is seq 0), or the violation reason otherwise. */
static const char *classify(unsigned char *buf, uint64_t index, uint64_t *seq)
{
	struct header *h = (struct header *)buf;
	if (all_zero(buf)) {
		*seq = 0;
		return NULL;
	}
	if (h->magic != SB_MAGIC)
		return "magic";
	if (h->checksum != block_checksum(buf))
		return "checksum";
	if (h->index != index)
		return "index";
	*seq = h->seq;
	return NULL;
}

static void violation(uint64_t block, const char *reason)
{
	violations++;
	if (reported_this_pass++ < MAX_REPORTS_PER_PASS)
		sb_emit("{\"type\":\"disk-violation\",\"uptime_ms\":%llu,\"block\":%llu,\"reason\":\"%s\"}",
			(unsigned long long)sb_uptime_ms(), (unsigned long long)block, reason);
}

static void maybe_beat(void)
{
	double now = sb_now();
	if (last_beat != 0 && now - last_beat < 1.0)
		return;
	last_beat = now;
	sb_emit("{\"type\":\"disk-heartbeat\",\"uptime_ms\":%llu,\"pass\":%llu,\"blocks\":%llu,"
		"\"verified\":%llu,\"violations\":%llu}",
		(unsigned long long)sb_uptime_ms(), (unsigned long long)pass,
		(unsigned long long)nblocks, (unsigned long long)verified,
		(unsigned long long)violations);
}

static int read_block(unsigned char *buf, uint64_t i)
{
	ssize_t n = pread(fd, buf, BLOCK, (off_t)(i * BLOCK));
	return n == (ssize_t)BLOCK ? 0 : -1;
}

static int write_block(unsigned char *buf, uint64_t i)
{
	ssize_t n = pwrite(fd, buf, BLOCK, (off_t)(i * BLOCK));
	return n == (ssize_t)BLOCK ? 0 : -1;
}

/* Read block i, expect it to hold `want_seq`, then rewrite it as `new_seq`.
 * The rewrite happens even after a violation: it re-synchronises the block,
 * so one corruption is reported once, not once per pass. */
static void step(unsigned char *rbuf, unsigned char *wbuf, uint64_t i, uint64_t want_seq, uint64_t new_seq)
{
	if (read_block(rbuf, i) != 0) {
		violation(i, "io");
	} else {
		uint64_t seq = 0;
		const char *bad = classify(rbuf, i, &seq);
		if (!bad && seq != want_seq)
			bad = "sequence";
		if (bad)
			violation(i, bad);
		verified++;
	}
	make_block(wbuf, i, new_seq);
	if (write_block(wbuf, i) != 0) {
		violation(i, "io");
		usleep(100000); /* a dead disk should not turn into a busy loop */
	}
}

/* Boot-time scan of a region left by an earlier boot (or blank). Finds the
 * pass boundary k, verifies every block against it, repairs what is bad, and
 * returns k; *cur is set to the seq of blocks [0,k). */
static uint64_t resume(unsigned char *rbuf, unsigned char *wbuf, uint64_t *cur)
{
	uint64_t *seqs = calloc(nblocks, sizeof *seqs);
	const char **bad = calloc(nblocks, sizeof *bad);
	if (!seqs || !bad) {
		sb_error("disk", "out of memory for the resume scan");
		exit(1);
	}
	uint64_t top = 0;
	for (uint64_t i = 0; i < nblocks && !stop_requested; i++) {
		if (read_block(rbuf, i) != 0)
			bad[i] = "io";
		else
			bad[i] = classify(rbuf, i, &seqs[i]);
		if (!bad[i] && seqs[i] > top)
			top = seqs[i];
	}
	if (stop_requested)
		exit(0); /* the scan is read-only: nothing to clean up */
	/* The last block carrying the newest seq marks the boundary. (A lost
	 * write to exactly block k-1 is indistinguishable from an interrupted
	 * pass; every other lost write is caught.) */
	uint64_t k = 0;
	for (uint64_t i = nblocks; i > 0; i--)
		if (!bad[i - 1] && seqs[i - 1] == top) {
			k = i;
			break;
		}
	if (top == 0)
		k = nblocks; /* blank (or only seq-0) region: pass 0 complete */

	for (uint64_t i = 0; i < nblocks; i++) {
		uint64_t want = i < k ? top : top - 1;
		const char *why = bad[i];
		if (!why && seqs[i] != want)
			why = "sequence";
		if (why) {
			violation(i, why);
			make_block(wbuf, i, want);
			if (write_block(wbuf, i) != 0)
				violation(i, "io");
		}
		if (bad[i] != NULL && strcmp(bad[i], "io") == 0)
			continue;
		verified++;
	}
	free(seqs);
	free(bad);
	*cur = top;
	return k;
}

int main(int argc, char **argv)
{
	nblocks = sb_cmdline_u64("sb.disk=", 4096);
	if (argc > 1 && (sb_parse_u64(argv[1], &nblocks) != 0 || nblocks == 0)) {
		sb_error("disk", "usage: sbdisk [BLOCKS], BLOCKS a positive integer");
		return 2;
	}

	const char *device = argc > 2 ? argv[2] : "/dev/vda";
	fd = open(device, O_RDWR | O_DIRECT | O_CLOEXEC);
	if (fd < 0) {
		char msg[128];
		snprintf(msg, sizeof msg, "%s: %s", device, strerror(errno));
		sb_error("disk", msg);
		return 1;
	}
	uint64_t size = 0;
	if (ioctl(fd, BLKGETSIZE64, &size) == 0 && size / BLOCK < nblocks) {
		char msg[160];
		snprintf(msg, sizeof msg, "%s holds only %llu blocks, %llu requested: using %llu",
			 device, (unsigned long long)(size / BLOCK), (unsigned long long)nblocks,
			 (unsigned long long)(size / BLOCK));
		sb_error("disk", msg);
		nblocks = size / BLOCK;
		if (nblocks == 0)
			return 1;
	}

	/* O_DIRECT needs buffers aligned to the logical block size; 4 KiB
	 * alignment satisfies any virtio-blk configuration. */
	unsigned char *rbuf, *wbuf;
	if (posix_memalign((void **)&rbuf, BLOCK, BLOCK) || posix_memalign((void **)&wbuf, BLOCK, BLOCK)) {
		sb_error("disk", "posix_memalign failed");
		return 1;
	}

	struct sigaction sa = { .sa_handler = on_stop };
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);

	uint64_t cur;
	uint64_t k = resume(rbuf, wbuf, &cur);
	/* Finish the interrupted pass `cur` from block k, then go on. */
	pass = k < nblocks ? cur : cur + 1;
	uint64_t start = k < nblocks ? k : 0;

	while (!stop_requested) {
		reported_this_pass = 0;
		for (uint64_t i = start; i < nblocks && !stop_requested; i++) {
			step(rbuf, wbuf, i, pass - 1, pass);
			maybe_beat();
		}
		if (stop_requested)
			break;
		/* One cache flush per pass: cheap, and it makes a finished pass
		 * durable in the image even if QEMU is killed afterwards. */
		fdatasync(fd);
		start = 0;
		pass++;
	}
	fdatasync(fd);
	close(fd);
	return 0;
}
