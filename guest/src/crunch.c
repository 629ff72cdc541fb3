/*
 * crunch - CPU-bound demo load with a live progress bar.
 *
 * Usage: crunch [--report-fd FD] [SECONDS]      run for SECONDS (default 10)
 *        crunch [--report-fd FD] --work N       do N units of work, however long that takes
 *
 * This is what a user starts to make the VM "busy" so that snowbird's
 * placement logic moves it to the server: it keeps one vCPU at 100% doing
 * integer hashing (no memory traffic to speak of), and redraws one status
 * line in place, so someone watching the screen over VNC sees it progress
 * smoothly across a live migration.
 *
 * A unit of work is one call of work() below (4096 rounds of a 64-bit mix):
 * a fixed amount of computation, so `--work N` takes as long as the CPU it
 * runs on needs for it (benchmarks time it on slow and fast sites). With
 * --report-fd (sbctl passes its control channel), it reports, when done:
 *   {"type":"crunch-done","uptime_ms":N,"pid":N,"work":N,"iterations":N,"elapsed_ms":N}
 * (work 0: a timed run; elapsed_ms is guest CLOCK_MONOTONIC time, which does
 * not advance while the VM is paused, e.g. during a migration's switchover).
 */
#include "sb.h"

#include <sys/ioctl.h>

#define BAR_MAX 40
#define MAX_SECONDS 86400ull
#define MAX_WORK 1000000000000ull

/* The status line must fit the terminal: a line that wraps cannot be
 * redrawn in place with \r, every frame would scroll the screen instead. */
static int bar_width = BAR_MAX;

/* One unit of work: 4096 rounds of a 64-bit mix (splitmix64 finaliser). */
static uint64_t work(uint64_t x)
{
	for (int i = 0; i < 4096; i++) {
		x += 0x9e3779b97f4a7c15ull;
		x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
		x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
		x ^= x >> 31;
	}
	return x;
}

/* frac: share done; left: seconds to go (estimated for --work). */
static void draw(double frac, double left, uint64_t iters, double elapsed)
{
	if (frac > 1)
		frac = 1;
	if (left < 0)
		left = 0;
	int fill = (int)(frac * bar_width + 0.5);
	char bar[BAR_MAX + 1];
	for (int i = 0; i < bar_width; i++)
		bar[i] = i < fill ? '#' : '.';
	bar[bar_width] = '\0';
	char line[160];
	/* \r + erase-to-end-of-line: redraw in place, one write per frame. */
	int n = snprintf(line, sizeof line, "\rcrunch [%s] %3d%% %5.1fs left %7.0f it/s\033[K",
			 bar, (int)(frac * 100), left > 999.9 ? 999.9 : left,
			 elapsed > 0 ? (double)iters / elapsed : 0);
	sb_write_all(STDOUT_FILENO, line, (size_t)n);
}

static int usage(void)
{
	fprintf(stderr, "usage: crunch [--report-fd FD] [SECONDS]   (1..%llu)\n"
			"       crunch [--report-fd FD] --work N    (1..%llu units)\n",
		MAX_SECONDS, MAX_WORK);
	return 2;
}

int main(int argc, char **argv)
{
	uint64_t seconds = 10, total = 0; /* total > 0: fixed work */
	int report_fd = -1;
	for (int i = 1; i < argc; i++) {
		uint64_t v;
		if (strcmp(argv[i], "--report-fd") == 0 && i + 1 < argc && sb_parse_u64(argv[i + 1], &v) == 0 && v < 1024) {
			report_fd = (int)v;
			i++;
		} else if (strcmp(argv[i], "--work") == 0 && i + 1 < argc && sb_parse_u64(argv[i + 1], &v) == 0 && v > 0 && v <= MAX_WORK) {
			total = v;
			i++;
		} else if (argv[i][0] != '-' && sb_parse_u64(argv[i], &v) == 0 && v > 0 && v <= MAX_SECONDS) {
			seconds = v;
		} else {
			return usage();
		}
	}
	struct winsize ws;
	/* 36 columns of text around the bar, and one spare so it never wraps. */
	if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
		bar_width = ws.ws_col - 37 < BAR_MAX ? ws.ws_col - 37 : BAR_MAX;
	if (bar_width < 5)
		bar_width = 5;

	double start = sb_now(), last_draw = 0, now = start;
	uint64_t iters = 0, x = 1;

	for (;;) {
		now = sb_now();
		double elapsed = now - start;
		if (total > 0 ? iters >= total : elapsed >= (double)seconds)
			break;
		x = work(x);
		iters++;
		if (now - last_draw >= 0.1) { /* ~10 frames/s is smooth enough */
			last_draw = now;
			if (total > 0) {
				double rate = elapsed > 0 ? (double)iters / elapsed : 0;
				draw((double)iters / (double)total, rate > 0 ? (double)(total - iters) / rate : 0, iters, elapsed);
			} else {
				draw(elapsed / (double)seconds, (double)seconds - elapsed, iters, elapsed);
			}
		}
	}
	double elapsed = now - start;
	draw(1, 0, iters, elapsed);
	char line[200];
	/* Printing x keeps the compiler from discarding the work. */
	int n = snprintf(line, sizeof line,
			 "\ncrunch: %llu iterations in %.1f s, %.0f it/s (checksum %016llx)\n",
			 (unsigned long long)iters, elapsed, elapsed > 0 ? (double)iters / elapsed : 0, (unsigned long long)x);
	sb_write_all(STDOUT_FILENO, line, (size_t)n);
	if (report_fd >= 0) {
		/* One write: the control channel is shared with sbctl, sbmem and sbdisk. */
		n = snprintf(line, sizeof line,
			     "{\"type\":\"crunch-done\",\"uptime_ms\":%llu,\"pid\":%d,\"work\":%llu,\"iterations\":%llu,\"elapsed_ms\":%llu}\n",
			     (unsigned long long)sb_uptime_ms(), (int)getpid(), (unsigned long long)total,
			     (unsigned long long)iters, (unsigned long long)(elapsed * 1000 + 0.5));
		sb_write_all(report_fd, line, (size_t)n);
	}
	return 0;
}
