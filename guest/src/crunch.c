/*
 * crunch - CPU-bound demo load with a live progress bar.
 *
 * Usage: crunch [SECONDS]   (default 10)
 *
 * This is what a user starts to make the VM "busy" so that snowbird's
 * placement logic moves it to the server: it keeps one vCPU at 100% doing
 * integer hashing (no memory traffic to speak of), and redraws one status
 * line in place, so someone watching the screen over VNC sees it progress
 * smoothly across a live migration.
 */
#include "sb.h"

#include <sys/ioctl.h>

#define BAR_MAX 40

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

static void draw(double done, double total, uint64_t iters, double elapsed)
{
	double frac = total > 0 ? done / total : 1;
	if (frac > 1)
		frac = 1;
	int fill = (int)(frac * bar_width + 0.5);
	char bar[BAR_MAX + 1];
	for (int i = 0; i < bar_width; i++)
		bar[i] = i < fill ? '#' : '.';
	bar[bar_width] = '\0';
	char line[160];
	/* \r + erase-to-end-of-line: redraw in place, one write per frame. */
	int n = snprintf(line, sizeof line, "\rcrunch [%s] %3d%% %5.1fs left %7.0f it/s\033[K",
			 bar, (int)(frac * 100), total - done > 0 ? total - done : 0,
			 elapsed > 0 ? (double)iters / elapsed : 0);
	sb_write_all(STDOUT_FILENO, line, (size_t)n);
}

int main(int argc, char **argv)
{
	uint64_t seconds = 10;
	if (argc > 1 && (sb_parse_u64(argv[1], &seconds) != 0 || seconds == 0 || seconds > 86400)) {
		fprintf(stderr, "usage: crunch [SECONDS]   (1..86400)\n");
		return 2;
	}
	struct winsize ws;
	/* 36 columns of text around the bar, and one spare so it never wraps. */
	if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
		bar_width = ws.ws_col - 37 < BAR_MAX ? ws.ws_col - 37 : BAR_MAX;
	if (bar_width < 5)
		bar_width = 5;

	double start = sb_now(), last_draw = 0, now = start;
	uint64_t iters = 0, x = 1;

	while ((now = sb_now()) - start < (double)seconds) {
		x = work(x);
		iters++;
		if (now - last_draw >= 0.1) { /* ~10 frames/s is smooth enough */
			last_draw = now;
			draw(now - start, (double)seconds, iters, now - start);
		}
	}
	double elapsed = now - start;
	draw((double)seconds, (double)seconds, iters, elapsed);
	char line[200];
	/* Printing x keeps the compiler from discarding the work. */
	int n = snprintf(line, sizeof line,
			 "\ncrunch: %llu iterations in %.1f s, %.0f it/s (checksum %016llx)\n",
			 (unsigned long long)iters, elapsed, (double)iters / elapsed, (unsigned long long)x);
	sb_write_all(STDOUT_FILENO, line, (size_t)n);
	return 0;
}
