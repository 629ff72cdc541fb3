/*
 * sbdraw - a tiny interactive full-screen program for the VGA console.
 *
 * Usage: sbdraw            (run it from the shell on tty1, i.e. over VNC)
 *
 * It exists to be *interacted with*: every key press redraws the whole screen
 * (last key in a big box, a key counter, a block moved by the arrow keys or
 * hjkl), and a clock ticks once a second. That gives snowbird's interaction
 * detector real keyboard input and screen updates to see, and gives a human a
 * quick way to feel input latency before and after the VM moves. `q` quits
 * and restores the terminal.
 */
#include "sb.h"

#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <termios.h>

static struct termios saved;
static int rows = 25, cols = 80;
static int bx, by;          /* block position inside the field */
static unsigned long keys;  /* key presses so far */
static char last[48] = "(none yet)";
static char last_hex[48] = "";

/* Field (where the block moves): everything below the key box. */
#define FIELD_TOP 12
#define BLOCK_W 4

static void restore(void)
{
	static const char bye[] = "\033[0m\033[2J\033[H\033[?25h";
	tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved);
	sb_write_all(STDOUT_FILENO, bye, sizeof bye - 1);
}

static void on_signal(int sig)
{
	restore();
	_exit(128 + sig);
}

/* Frame buffer: the whole screen is composed here, then sent in one write,
 * so the console never shows a half-drawn frame. */
static char frame[64 * 1024];
static size_t flen;

__attribute__((format(printf, 1, 2)))
static void put(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(frame + flen, sizeof frame - flen, fmt, ap);
	va_end(ap);
	if (n > 0 && flen + (size_t)n < sizeof frame)
		flen += (size_t)n;
}

static void at(int row, int col) { put("\033[%d;%dH", row, col); }

static void hline(int row, int col, int width, char c)
{
	at(row, col);
	for (int i = 0; i < width; i++)
		put("%c", c);
}

static void draw(void)
{
	int field_h = rows - FIELD_TOP - 1, field_w = cols - 2;
	if (bx < 0) bx = 0;
	if (by < 0) by = 0;
	if (bx > field_w - BLOCK_W) bx = field_w - BLOCK_W;
	if (by > field_h - 1) by = field_h - 1;

	flen = 0;
	put("\033[0m\033[2J");

	/* Title bar, reverse video. */
	at(1, 1);
	put("\033[7m %-*.*s\033[0m", cols - 1, cols - 1,
	    "snowbird sbdraw  |  arrows/hjkl: move  |  any key: show it  |  q: quit");

	uint64_t up = sb_uptime_ms();
	at(3, 3);
	put("keys pressed: \033[1m%lu\033[0m     guest uptime: \033[1m%llu.%llu s\033[0m     block at %d,%d",
	    keys, (unsigned long long)(up / 1000), (unsigned long long)(up % 1000 / 100), bx, by);

	/* The big box with the last key, white on blue. */
	int bw = 40, bh = 6, left = (cols - bw) / 2, top = 5;
	for (int r = 0; r < bh; r++) {
		at(top + r, left);
		put("\033[44;97m%*s\033[0m", bw, "");
	}
	at(top + 1, left + 2);
	put("\033[44;97mlast key\033[0m");
	int len = (int)strlen(last);
	at(top + 2, left + (bw - len) / 2);
	put("\033[44;93;1m%s\033[0m", last);
	len = (int)strlen(last_hex);
	at(top + 4, left + (bw - len) / 2);
	put("\033[44;97m%s\033[0m", last_hex);

	/* The field: a frame and the block. */
	hline(FIELD_TOP - 1, 1, cols, '-');
	hline(rows, 1, cols, '-');
	for (int r = FIELD_TOP; r < rows; r++) {
		at(r, 1);
		put("|");
		at(r, cols);
		put("|");
	}
	at(FIELD_TOP + by, 2 + bx);
	put("\033[43m%*s\033[0m", BLOCK_W, "");

	at(rows, 1); /* park the (hidden) cursor */
	sb_write_all(STDOUT_FILENO, frame, flen);
}

/* Decode one key from buf[0..n): sets `last` and moves the block; returns the
 * number of bytes consumed, or -1 for "q". */
static int key(const unsigned char *buf, int n)
{
	int used = 1, dx = 0, dy = 0;
	unsigned char c = buf[0];
	last_hex[0] = '\0';

	if (c == 0x1b && n >= 3 && (buf[1] == '[' || buf[1] == 'O')) {
		/* CSI / SS3: arrows are ESC [ A..D (or ESC O A..D); anything
		 * else (ESC [ 5 ~ ...) is shown as its raw sequence. */
		used = 2;
		while (used < n && used < 8 && !(buf[used] >= 0x40 && buf[used] <= 0x7e))
			used++;
		if (used < n)
			used++;
		switch (buf[used - 1]) {
		case 'A': snprintf(last, sizeof last, "Up"); dy = -1; break;
		case 'B': snprintf(last, sizeof last, "Down"); dy = 1; break;
		case 'C': snprintf(last, sizeof last, "Right"); dx = 2; break;
		case 'D': snprintf(last, sizeof last, "Left"); dx = -2; break;
		default:
			snprintf(last, sizeof last, "ESC %.*s", used - 1, (const char *)buf + 1);
		}
		snprintf(last_hex, sizeof last_hex, "escape sequence, %d bytes", used);
	} else {
		switch (c) {
		case 'q': return -1;
		case 'h': dx = -2; break;
		case 'l': dx = 2; break;
		case 'k': dy = -1; break;
		case 'j': dy = 1; break;
		}
		if (c == 0x1b) snprintf(last, sizeof last, "Esc");
		else if (c == '\r' || c == '\n') snprintf(last, sizeof last, "Enter");
		else if (c == '\t') snprintf(last, sizeof last, "Tab");
		else if (c == ' ') snprintf(last, sizeof last, "Space");
		else if (c == 0x7f || c == 0x08) snprintf(last, sizeof last, "Backspace");
		else if (c < 0x20) snprintf(last, sizeof last, "Ctrl-%c", c + '@');
		else if (c < 0x7f) snprintf(last, sizeof last, "'%c'", c);
		else snprintf(last, sizeof last, "byte 0x%02x", c);
		snprintf(last_hex, sizeof last_hex, "0x%02x  (%u)", c, c);
	}
	bx += dx;
	by += dy;
	return used;
}

int main(void)
{
	if (tcgetattr(STDIN_FILENO, &saved) != 0) {
		fprintf(stderr, "sbdraw: stdin is not a terminal\n");
		return 1;
	}
	struct winsize ws;
	if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_row >= 20 && ws.ws_col >= 50) {
		rows = ws.ws_row;
		cols = ws.ws_col;
	}
	struct termios raw = saved;
	cfmakeraw(&raw); /* no echo, no line editing, no ^C: every byte is a key */
	tcsetattr(STDIN_FILENO, TCSAFLUSH, &raw);
	signal(SIGTERM, on_signal);
	signal(SIGHUP, on_signal);
	sb_write_all(STDOUT_FILENO, "\033[?25l", 6); /* hide the cursor */

	bx = (cols - 2 - BLOCK_W) / 2;
	by = (rows - FIELD_TOP - 1) / 2;
	draw();
	for (;;) {
		struct pollfd p = { .fd = STDIN_FILENO, .events = POLLIN };
		int r = poll(&p, 1, 1000);
		if (r < 0 && errno != EINTR)
			break;
		if (r > 0) {
			unsigned char buf[64];
			ssize_t n = read(STDIN_FILENO, buf, sizeof buf);
			if (n <= 0)
				break;
			/* One read can carry several keys (typing fast, pasting). */
			for (int off = 0; off < n;) {
				keys++;
				int used = key(buf + off, (int)(n - off));
				if (used < 0) {
					restore();
					return 0;
				}
				off += used;
			}
		}
		draw(); /* on every key, and once a second for the clock */
	}
	restore();
	return 0;
}
