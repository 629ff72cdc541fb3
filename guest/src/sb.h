/*
 * sb.h - helpers shared by the snowbird guest programs (header-only, so each
 * program is still one `gcc -static` invocation of one .c file).
 *
 * Every report line goes out with exactly one write(2). The control channel
 * (/dev/ttyS1) is shared by sbctl, sbmem and sbdisk; the tty layer takes its
 * write lock per write() call (for writes up to 2 KiB), so one write per line
 * is what keeps lines from different processes from being spliced together.
 */
#ifndef SB_H
#define SB_H

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SB_LINE_MAX 1024

/* Guest uptime in ms. CLOCK_BOOTTIME is what /proc/uptime reports: it never
 * goes backwards and is not reset by anything but a reboot, which is exactly
 * what the host uses it for (proving the guest kept running across a move). */
static inline uint64_t sb_uptime_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_BOOTTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Monotonic seconds as a double, for rate limiting and progress. */
static inline double sb_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Write a whole buffer, retrying on EINTR and short writes. A short write on
 * a tty only happens for huge buffers, which our lines never are. */
static inline int sb_write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

/* printf-style: format one report line (a JSON object, no newline) and
 * write it, newline included, with a single write() to stdout. */
__attribute__((format(printf, 1, 2)))
static inline void sb_emit(const char *fmt, ...)
{
	char line[SB_LINE_MAX + 1];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, SB_LINE_MAX, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if (n > SB_LINE_MAX - 1)
		n = SB_LINE_MAX - 1; /* truncated: the host sees an unparsable line, not a hang */
	line[n++] = '\n';
	sb_write_all(STDOUT_FILENO, line, (size_t)n);
}

/* Copy `src` into `dst` as the inside of a JSON string (no quotes), escaping
 * what JSON requires and dropping anything else non-printable. */
static inline void sb_json_escape(char *dst, size_t cap, const char *src)
{
	size_t o = 0;
	for (; *src && o + 7 < cap; src++) {
		unsigned char c = (unsigned char)*src;
		if (c == '"' || c == '\\') {
			dst[o++] = '\\';
			dst[o++] = (char)c;
		} else if (c < 0x20 || c == 0x7f) {
			o += (size_t)snprintf(dst + o, cap - o, "\\u%04x", c);
		} else {
			dst[o++] = (char)c;
		}
	}
	dst[o] = '\0';
}

/* Emit {"type":"error","source":SOURCE,"detail":DETAIL}. */
static inline void sb_error(const char *source, const char *detail)
{
	char esc[512];
	sb_json_escape(esc, sizeof esc, detail);
	sb_emit("{\"type\":\"error\",\"source\":\"%s\",\"detail\":\"%s\"}", source, esc);
}

/* Parse a decimal unsigned integer; returns 0 on success. */
static inline int sb_parse_u64(const char *s, uint64_t *out)
{
	if (!s || !*s)
		return -1;
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || *end || *s == '-')
		return -1;
	*out = v;
	return 0;
}

/* Look up `key=` (e.g. "sb.mem=") on the kernel command line and parse its
 * value; returns `def` when absent or malformed. */
static inline uint64_t sb_cmdline_u64(const char *key, uint64_t def)
{
	char buf[4096];
	int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return def;
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return def;
	buf[n] = '\0';
	size_t klen = strlen(key);
	for (char *tok = strtok(buf, " \t\n"); tok; tok = strtok(NULL, " \t\n")) {
		uint64_t v;
		if (strncmp(tok, key, klen) == 0 && sb_parse_u64(tok + klen, &v) == 0)
			return v;
	}
	return def;
}

#endif
