/*
 * sbctl - the guest's control agent, on the second serial port.
 *
 * Usage: sbctl [--tty /dev/ttyS1] [--mem MIB] [--disk BLOCKS]
 *   --mem 0 / --disk 0 leave that workload stopped (sb.nomem / sb.nodisk).
 *
 * Started by /init. It owns the control channel: it puts the port in raw
 * mode, makes it the stdout of the workloads it starts (sbmem, sbdisk), so
 * all report lines share one wire, says "ready", then executes one command
 * per line from the host and answers each with an "ack" line.
 *
 * Why a serial port and not virtio-serial or the network: an ISA 16550 needs
 * no driver module, survives live migration with no guest cooperation, and
 * its host end is a plain unix socket that the host can reconnect to after
 * the VM moved (lines written while nobody is connected are dropped by QEMU,
 * never queued, so the guest never blocks on an absent host).
 *
 * Commands (host -> guest), one per line:
 *   ping | mem start [MIB] | mem stop | disk start [BLOCKS] | disk stop |
 *   corrupt-mem | crunch SECONDS | crunch --work N | poweroff |
 *   fill MIB | fill change PERCENT | fill check
 * Every command gets {"type":"ack","cmd":...,"ok":...,"detail":...};
 * a crunch also says {"type":"crunch-done",...} when it ends (crunch.c);
 * ping is also answered with {"type":"pong","uptime_ms":N,"mem":S,"disk":S} (before its ack),
 * S = "running", "stopped" or why the workload last exited on its own.
 */
#include "sb.h"

#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/reboot.h>
#include <sys/wait.h>
#include <termios.h>

struct workload {
	const char *name;   /* "mem" / "disk": the command word and error source */
	const char *path;   /* program */
	uint64_t size;      /* MiB or blocks: the default for "start" */
	pid_t pid;          /* 0 when not running */
	char last_exit[128]; /* why it last ended on its own ("" if it never did), repeated in pong */
};

static struct workload mem = { "mem", "/bin/sbmem", 32, 0, "" };
static struct workload disk = { "disk", "/bin/sbdisk", 4096, 0, "" };
static int ctl_fd = -1;

static void ack(const char *cmd, int ok, const char *detail)
{
	char c[256], d[512];
	sb_json_escape(c, sizeof c, cmd);
	sb_json_escape(d, sizeof d, detail);
	sb_emit("{\"type\":\"ack\",\"cmd\":\"%s\",\"ok\":%s,\"detail\":\"%s\"}", c, ok ? "true" : "false", d);
}

static void on_sigchld(int sig)
{
	(void)sig; /* only here to interrupt poll() */
}

/* Put the control port in raw mode: no echo (the host would read its own
 * commands back), no CR/LF translation, no signal characters, and CLOCAL so
 * missing modem lines never block or hang us up. */
static int setup_tty(int fd)
{
	struct termios t;
	if (tcgetattr(fd, &t) != 0)
		return -1;
	cfmakeraw(&t);
	t.c_cflag |= CLOCAL | CREAD;
	t.c_cflag &= ~(HUPCL | CRTSCTS);
	cfsetispeed(&t, B115200);
	cfsetospeed(&t, B115200);
	t.c_cc[VMIN] = 1;
	t.c_cc[VTIME] = 0;
	if (tcsetattr(fd, TCSANOW, &t) != 0)
		return -1;
	tcflush(fd, TCIFLUSH); /* drop anything that arrived before we listened */
	return 0;
}

static pid_t spawn(const char *path, const char *arg, int out_fd)
{
	pid_t pid = fork();
	if (pid != 0)
		return pid; /* parent, or -1 */
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	signal(SIGCHLD, SIG_DFL);
	int nul = open("/dev/null", O_RDONLY);
	if (nul >= 0)
		dup2(nul, STDIN_FILENO);
	dup2(out_fd, STDOUT_FILENO);
	execl(path, path, arg, (char *)NULL);
	_exit(127);
}

static int start(struct workload *w, uint64_t size, char *detail, size_t cap)
{
	if (w->pid > 0) {
		snprintf(detail, cap, "already running (pid %d)", (int)w->pid);
		return 0;
	}
	char arg[32];
	snprintf(arg, sizeof arg, "%llu", (unsigned long long)size);
	w->pid = spawn(w->path, arg, ctl_fd);
	if (w->pid < 0) {
		w->pid = 0;
		snprintf(detail, cap, "fork: %s", strerror(errno));
		return 0;
	}
	w->size = size;
	snprintf(detail, cap, "pid %d, %s %llu", (int)w->pid, w->path + 5, (unsigned long long)size);
	return 1;
}

/* SIGTERM, then SIGKILL after `grace_ms`. sbdisk uses the grace to finish
 * the block in hand; sbmem just dies. */
static int stop(struct workload *w, int grace_ms, char *detail, size_t cap)
{
	if (w->pid <= 0) {
		snprintf(detail, cap, "not running");
		return 0;
	}
	pid_t pid = w->pid;
	kill(pid, SIGTERM);
	int status = 0;
	for (int waited = 0;; waited += 10) {
		pid_t r = waitpid(pid, &status, WNOHANG);
		if (r == pid || (r < 0 && errno == ECHILD))
			break;
		if (waited == grace_ms)
			kill(pid, SIGKILL);
		usleep(10000);
	}
	w->pid = 0;
	snprintf(detail, cap, "stopped pid %d", (int)pid);
	return 1;
}

/* Reap children. A workload that exits without being asked to is an error
 * the host must hear about; crunch children just go away. */
static void reap(void)
{
	int status;
	pid_t pid;
	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		struct workload *w = pid == mem.pid ? &mem : pid == disk.pid ? &disk : NULL;
		if (!w)
			continue;
		w->pid = 0;
		char msg[128];
		if (WIFSIGNALED(status))
			snprintf(msg, sizeof msg, "%s exited: killed by signal %d", w->path + 5, WTERMSIG(status));
		else
			snprintf(msg, sizeof msg, "%s exited with status %d", w->path + 5, WEXITSTATUS(status));
		snprintf(w->last_exit, sizeof w->last_exit, "%s", msg);
		sb_error(w->name, msg);
	}
}

/* A workload's state for pong: the host may have missed the error line (nobody was attached). */
static const char *state_of(const struct workload *w)
{
	if (w->pid > 0)
		return "running";
	return w->last_exit[0] ? w->last_exit : "stopped";
}

/* Optional positive size argument: absent -> `def`. Returns 0 if malformed. */
static int size_arg(const char *s, uint64_t def, uint64_t *out)
{
	if (!s) {
		*out = def;
		return 1;
	}
	return sb_parse_u64(s, out) == 0 && *out > 0;
}

/* crunch SECONDS | crunch --work N: `crunch` on tty1, in the background, with
 * the control channel as its --report-fd (it says crunch-done there). */
static void crunch(const char *a1, const char *a2)
{
	char detail[128];
	uint64_t n;
	int fixed = a1 && strcmp(a1, "--work") == 0;
	const char *num = fixed ? a2 : a1;
	if (!num || (!fixed && a2) || sb_parse_u64(num, &n) != 0 || n == 0 || n > (fixed ? 1000000000000ull : 86400ull)) {
		ack("crunch", 0, "usage: crunch SECONDS (1..86400) | crunch --work N (1..1000000000000)");
		return;
	}
	/* It runs on the VGA console, where the user (over VNC) watches it. */
	int tty = open("/dev/tty1", O_WRONLY | O_NOCTTY | O_CLOEXEC);
	if (tty < 0) {
		snprintf(detail, sizeof detail, "/dev/tty1: %s", strerror(errno));
		ack("crunch", 0, detail);
		return;
	}
	sb_write_all(tty, "\r\n", 2); /* start below whatever the shell printed */
	pid_t pid = fork();
	if (pid == 0) {
		setsid(); /* not part of the shell's job control, immune to its ^C */
		dup2(tty, STDOUT_FILENO);
		dup2(tty, STDERR_FILENO);
		int nul = open("/dev/null", O_RDONLY);
		if (nul >= 0)
			dup2(nul, STDIN_FILENO);
		signal(SIGCHLD, SIG_DFL);
		char fd[16];
		snprintf(fd, sizeof fd, "%d", ctl_fd);
		fcntl(ctl_fd, F_SETFD, 0); /* crunch inherits the control channel */
		if (fixed)
			execl("/bin/crunch", "crunch", "--report-fd", fd, "--work", num, (char *)NULL);
		else
			execl("/bin/crunch", "crunch", "--report-fd", fd, num, (char *)NULL);
		_exit(127);
	}
	close(tty);
	if (pid < 0) {
		snprintf(detail, sizeof detail, "fork: %s", strerror(errno));
		ack("crunch", 0, detail);
		return;
	}
	if (fixed)
		snprintf(detail, sizeof detail, "pid %d, work %llu on tty1", (int)pid, (unsigned long long)n);
	else
		snprintf(detail, sizeof detail, "pid %d, %llu s on tty1", (int)pid, (unsigned long long)n);
	ack("crunch", 1, detail);
}

/* The fill region, for benchmarks (bench/dedup.ts): memory that holds
 * non-zero data and stays put, of which the host changes a chosen share.
 *   fill MIB             map MIB here (replacing an earlier fill) and fill it
 *   fill change PERCENT  give that share of its pages new data: a
 *                        spread-out pseudo-random selection, the same
 *                        pages for the same PERCENT (comparable runs)
 *   fill check           regenerate every page and compare
 * A page's bytes follow from its index and generation: a quarter of the
 * pages are "text" (5 random bits a byte), a quarter sparse (one random
 * word in eight), half random, so it compresses about like real memory.
 * Synchronous: the ack says the work is done. MADV_DONTFORK keeps it out
 * of the children sbctl forks. */
#define FILL_PAGE 4096
static unsigned char *fill_mem;
static size_t fill_pages;
static uint32_t *fill_gen;

static uint64_t mix64(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ull;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

static void fill_render(size_t i, uint64_t *w)
{
	uint64_t s = mix64(((uint64_t)i << 32) ^ fill_gen[i] ^ 0x5b1df111ull);
	unsigned kind = (unsigned)(s >> 60) & 3;
	for (size_t k = 0; k < FILL_PAGE / 8; k++) {
		uint64_t z = mix64(s += 0x9e3779b97f4a7c15ull);
		if (kind == 2)
			z = (z & 0x1f1f1f1f1f1f1f1full) | 0x4040404040404040ull;
		else if (kind == 3 && (k & 7) != 0)
			z = 0;
		w[k] = z;
	}
}

static void fill(const char *a1, const char *a2, int argc)
{
	char detail[160];
	uint64_t n;
	if (a1 && strcmp(a1, "change") == 0 && argc == 3) {
		if (sb_parse_u64(a2, &n) != 0 || n > 100) {
			ack("fill change", 0, "usage: fill change PERCENT (0..100)");
		} else if (!fill_mem) {
			ack("fill change", 0, "no fill (fill MIB first)");
		} else {
			size_t changed = 0;
			for (size_t i = 0; i < fill_pages; i++) {
				if (mix64((uint64_t)i ^ 0xc4a26eull) % 100 >= n)
					continue;
				fill_gen[i]++;
				fill_render(i, (uint64_t *)(fill_mem + i * FILL_PAGE));
				changed++;
			}
			snprintf(detail, sizeof detail, "changed %zu of %zu pages", changed, fill_pages);
			ack("fill change", 1, detail);
		}
	} else if (a1 && strcmp(a1, "check") == 0 && argc == 2) {
		uint64_t want[FILL_PAGE / 8];
		size_t bad = 0, first = 0;
		for (size_t i = 0; i < fill_pages; i++) {
			fill_render(i, want);
			if (memcmp(want, fill_mem + i * FILL_PAGE, FILL_PAGE) != 0 && bad++ == 0)
				first = i;
		}
		if (bad)
			snprintf(detail, sizeof detail, "%zu of %zu pages differ (first: page %zu)", bad, fill_pages, first);
		else
			snprintf(detail, sizeof detail, "%zu pages ok", fill_pages);
		ack("fill check", bad == 0 && fill_mem, fill_mem ? detail : "no fill (fill MIB first)");
	} else if (argc == 2 && sb_parse_u64(a1, &n) == 0 && n > 0 && n < (1ull << 20)) {
		if (fill_mem) {
			munmap(fill_mem, fill_pages * FILL_PAGE);
			free(fill_gen);
			fill_mem = NULL;
			fill_gen = NULL;
			fill_pages = 0;
		}
		size_t pages = (size_t)(n << 20) / FILL_PAGE;
		void *m = mmap(NULL, pages * FILL_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		uint32_t *gen = calloc(pages, sizeof *gen);
		if (m == MAP_FAILED || !gen) {
			snprintf(detail, sizeof detail, "%llu MiB: %s", (unsigned long long)n, strerror(errno));
			if (m != MAP_FAILED)
				munmap(m, pages * FILL_PAGE);
			free(gen);
			ack("fill", 0, detail);
			return;
		}
		madvise(m, pages * FILL_PAGE, MADV_DONTFORK);
		fill_mem = m;
		fill_gen = gen;
		fill_pages = pages;
		for (size_t i = 0; i < pages; i++)
			fill_render(i, (uint64_t *)(fill_mem + i * FILL_PAGE));
		snprintf(detail, sizeof detail, "%llu MiB, %zu pages", (unsigned long long)n, pages);
		ack("fill", 1, detail);
	} else {
		ack("fill", 0, "usage: fill MIB | fill change PERCENT | fill check");
	}
}

static void poweroff(void)
{
	char detail[128];
	ack("poweroff", 1, "syncing and powering off");
	tcdrain(ctl_fd); /* let the ack leave the UART before the machine does */
	stop(&disk, 5000, detail, sizeof detail);
	stop(&mem, 1000, detail, sizeof detail);
	sync();
	reboot(RB_POWER_OFF); /* what `poweroff -f` does */
	snprintf(detail, sizeof detail, "reboot(RB_POWER_OFF): %s", strerror(errno));
	sb_error("ctl", detail);
}

static void command(char *line)
{
	char *argv[4] = { 0 };
	int argc = 0;
	char original[256];
	snprintf(original, sizeof original, "%s", line);
	for (char *tok = strtok(line, " \t"); tok && argc < 4; tok = strtok(NULL, " \t"))
		argv[argc++] = tok;
	if (argc == 0)
		return; /* blank line: nothing to answer */

	char detail[256];
	const char *a0 = argv[0], *a1 = argv[1];
	if (strcmp(a0, "ping") == 0 && argc == 1) {
		sb_emit("{\"type\":\"pong\",\"uptime_ms\":%llu,\"mem\":\"%s\",\"disk\":\"%s\"}",
			(unsigned long long)sb_uptime_ms(), state_of(&mem), state_of(&disk));
		ack("ping", 1, "");
	} else if ((strcmp(a0, "mem") == 0 || strcmp(a0, "disk") == 0) && a1) {
		struct workload *w = a0[0] == 'm' ? &mem : &disk;
		char name[16];
		snprintf(name, sizeof name, "%s %s", w->name, a1);
		uint64_t size;
		if (strcmp(a1, "start") == 0 && argc <= 3) {
			if (!size_arg(argv[2], w->size, &size))
				ack(name, 0, w == &mem ? "usage: mem start [MIB]" : "usage: disk start [BLOCKS]");
			else {
				int ok = start(w, size, detail, sizeof detail);
				ack(name, ok, detail);
			}
		} else if (strcmp(a1, "stop") == 0 && argc == 2) {
			int ok = stop(w, w == &disk ? 5000 : 1000, detail, sizeof detail);
			ack(name, ok, detail);
		} else {
			ack(original, 0, "unknown command");
		}
	} else if (strcmp(a0, "corrupt-mem") == 0 && argc == 1) {
		if (mem.pid <= 0) {
			ack("corrupt-mem", 0, "sbmem is not running");
		} else {
			kill(mem.pid, SIGUSR1);
			snprintf(detail, sizeof detail, "SIGUSR1 sent to sbmem pid %d", (int)mem.pid);
			ack("corrupt-mem", 1, detail);
		}
	} else if (strcmp(a0, "crunch") == 0 && argc <= 3) {
		crunch(a1, argv[2]);
	} else if (strcmp(a0, "fill") == 0 && argc >= 2 && argc <= 3) {
		fill(a1, argv[2], argc);
	} else if (strcmp(a0, "poweroff") == 0 && argc == 1) {
		poweroff();
	} else {
		ack(original, 0, "unknown command");
	}
}

int main(int argc, char **argv)
{
	const char *tty = "/dev/ttyS1";
	uint64_t want_mem = 32, want_disk = 4096;
	/* Lenient on purpose: a typo in sb.mem= must not cost the host its
	 * control channel, so bad values fall back to the defaults. */
	for (int i = 1; i + 1 < argc; i += 2) {
		uint64_t v;
		if (strcmp(argv[i], "--tty") == 0)
			tty = argv[i + 1];
		else if (strcmp(argv[i], "--mem") == 0 && sb_parse_u64(argv[i + 1], &v) == 0)
			want_mem = v;
		else if (strcmp(argv[i], "--disk") == 0 && sb_parse_u64(argv[i + 1], &v) == 0)
			want_disk = v;
		else
			fprintf(stderr, "sbctl: ignoring bad option %s %s "
				"(usage: sbctl [--tty DEV] [--mem MIB] [--disk BLOCKS])\n", argv[i], argv[i + 1]);
	}

	ctl_fd = open(tty, O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (ctl_fd < 0 || setup_tty(ctl_fd) != 0) {
		fprintf(stderr, "sbctl: %s: %s\n", tty, strerror(errno));
		return 1;
	}
	dup2(ctl_fd, STDOUT_FILENO); /* sb_emit() writes to stdout */

	signal(SIGPIPE, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	struct sigaction sa = { .sa_handler = on_sigchld }; /* no SA_RESTART */
	sigemptyset(&sa.sa_mask);
	sigaction(SIGCHLD, &sa, NULL);

	char detail[256];
	if (want_mem > 0)
		start(&mem, want_mem, detail, sizeof detail);
	if (want_disk > 0)
		start(&disk, want_disk, detail, sizeof detail);
	sb_emit("{\"type\":\"ready\",\"uptime_ms\":%llu,\"mem_mib\":%llu,\"disk_blocks\":%llu}",
		(unsigned long long)sb_uptime_ms(), (unsigned long long)(mem.pid ? want_mem : 0),
		(unsigned long long)(disk.pid ? want_disk : 0));

	char line[256];
	size_t len = 0;
	int overflow = 0;
	for (;;) {
		reap();
		struct pollfd p = { .fd = ctl_fd, .events = POLLIN };
		/* The timeout bounds how late we notice a child that died between
		 * reap() and poll() (its SIGCHLD would have come too early). */
		int r = poll(&p, 1, 500);
		if (r <= 0)
			continue;
		char buf[256];
		ssize_t n = read(ctl_fd, buf, sizeof buf);
		if (n <= 0) {
			if (n < 0 && errno != EINTR && errno != EAGAIN)
				usleep(100000);
			continue;
		}
		for (ssize_t i = 0; i < n; i++) {
			char c = buf[i];
			if (c == '\n') {
				line[len] = '\0';
				if (overflow)
					ack("", 0, "line too long");
				else
					command(line);
				len = 0;
				overflow = 0;
			} else if (c == '\r') {
				continue;
			} else if (len + 1 < sizeof line) {
				line[len++] = c;
			} else {
				overflow = 1;
			}
		}
	}
}
