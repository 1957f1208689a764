/* test-password.c: every source password_get() knows, and its refusals.
 *
 * password_file and password_command run directly.  The keyring is tested
 * twice: here with no session bus at all (it must be skipped cleanly), and
 * in a copy of this program re-executed with --keyring-phase under
 * dbus-run-session with a gnome-keyring-daemon of its own, when both
 * exist.  The prompt is tested on a pseudo-terminal.  Nothing may hang:
 * every child has a deadline. */
#include "password.h"

#include "check.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <gio/gio.h>

#define HOW "use -o password_file=FILE, -o password_command=CMD, or " \
	    "`mailfs password set SOURCE`"
#define NO_PASSWORD "no password for alice@127.0.0.1: " HOW
#define NO_SERVICE "no Secret Service is running (start gnome-keyring or " \
		   "use password_file)"
#define PHASE_TIMEOUT_MS 60000

static char tmpdir[] = "/tmp/mailfs-test-password.XXXXXX";

static void write_file(const char *path, const char *data, mode_t mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

	if (fd < 0 || write(fd, data, strlen(data)) != (ssize_t)strlen(data) ||
	    fchmod(fd, mode) < 0) {
		perror(path);
		exit(1);
	}
	close(fd);
}

static char *tmp_path(const char *name)
{
	static char buf[4][PATH_MAX];
	static int next;
	char *p = buf[next++ % 4];

	snprintf(p, PATH_MAX, "%s/%s", tmpdir, name);
	return p;
}

static void parse(const char *source, struct url *url)
{
	const char *error;

	if (url_parse(source, url, &error) < 0) {
		fprintf(stderr, "%s: %s\n", source, error);
		exit(1);
	}
}

/* password_get() with only opts, expecting a password. */
static void expect_password(const struct password_opts *opts,
			    const char *want)
{
	struct url url;
	const char *error = NULL;
	char *pw = NULL;

	parse("imaps://alice@127.0.0.1", &url);
	CHECK(password_get(&url, opts, &pw, &error) == 0);
	CHECK_STR(pw, want);
	if (pw == NULL)
		fprintf(stderr, "  error: %s\n", error);
	password_free(pw);
	url_free(&url);
}

/* password_get() with only opts, expecting an error; returns it (valid
 * until the next call) so the caller can look further. */
static const char *expect_error(const struct password_opts *opts,
				const char *want)
{
	struct url url;
	const char *error = NULL;
	char *pw = NULL;

	parse("imaps://alice@127.0.0.1", &url);
	CHECK(password_get(&url, opts, &pw, &error) == -1);
	CHECK(pw == NULL);
	if (want != NULL)
		CHECK_STR(error, want);
	password_free(pw);
	url_free(&url);
	return error;
}

static void test_file(void)
{
	char want[2 * PATH_MAX + 100];
	char *path = tmp_path("pw");

	write_file(path, "filesecret\nsecond line\n", 0600);
	expect_password(&(struct password_opts){ .file = path }, "filesecret");
	write_file(path, "crlf secret\r\nsecond\r\n", 0400);
	expect_password(&(struct password_opts){ .file = path },
			"crlf secret");
	write_file(path, "no newline", 0600);
	expect_password(&(struct password_opts){ .file = path }, "no newline");

	write_file(path, "world\n", 0644);
	snprintf(want, sizeof(want), "password file %s is readable by "
		 "others; run chmod 600 %s", path, path);
	expect_error(&(struct password_opts){ .file = path }, want);
	write_file(path, "group\n", 0640);
	expect_error(&(struct password_opts){ .file = path }, want);
	write_file(path, "groupwrite\n", 0620);
	expect_error(&(struct password_opts){ .file = path }, want);

	write_file(path, "", 0600);
	snprintf(want, sizeof(want), "password file %s is empty: put the "
		 "password on its first line", path);
	expect_error(&(struct password_opts){ .file = path }, want);
	write_file(path, "\nsecond\n", 0600);
	expect_error(&(struct password_opts){ .file = path }, want);

	path = tmp_path("missing");
	snprintf(want, sizeof(want), "cannot open password file %s: No such "
		 "file or directory", path);
	expect_error(&(struct password_opts){ .file = path }, want);

	/* Not a regular file: a directory, and a FIFO, which must not
	 * block the open. */
	snprintf(want, sizeof(want), "password file %s is not a regular file",
		 tmpdir);
	expect_error(&(struct password_opts){ .file = tmpdir }, want);
	path = tmp_path("fifo");
	CHECK(mkfifo(path, 0600) == 0);
	snprintf(want, sizeof(want), "password file %s is not a regular file",
		 path);
	expect_error(&(struct password_opts){ .file = path }, want);

	/* A first line longer than any password. */
	{
		char *big = malloc(10000);

		memset(big, 'x', 9999);
		big[9999] = '\0';
		path = tmp_path("big");
		write_file(path, big, 0600);
		snprintf(want, sizeof(want), "the first line of password file "
			 "%s is too long for a password", path);
		expect_error(&(struct password_opts){ .file = path }, want);
		free(big);
	}
}

static void test_command(void)
{
	const char *error;
	char cmd[200];
	int fd;

	expect_password(&(struct password_opts){
				.command = "printf 'secret\\nsecond\\n'" },
			"secret");
	expect_password(&(struct password_opts){
				.command = "printf 'crlf\\r\\nx\\r\\n'" },
			"crlf");
	expect_password(&(struct password_opts){
				.command = "printf 'no newline'" },
			"no newline");
	expect_password(&(struct password_opts){
				.command = "printf 'with spaces \\n'" },
			"with spaces ");
	/* The command's stderr is the user's, not ours to parse. */
	expect_password(&(struct password_opts){
				.command = "exec 2>/dev/null; echo chatter >&2; "
					   "echo pw" },
			"pw");

	expect_error(&(struct password_opts){ .command = "exit 3" },
		     "password_command failed (exit status 3)");
	error = expect_error(&(struct password_opts){
		.command = "echo leaked-secret; echo more; exit 3" },
		"password_command failed (exit status 3)");
	CHECK(error != NULL && strstr(error, "leaked") == NULL);
	CHECK(error != NULL && strstr(error, "more") == NULL);
	error = expect_error(&(struct password_opts){ .command = "echo" },
			     NULL);
	CHECK(error != NULL && strstr(error, "password_command failed") ==
			       error);
	CHECK(error != NULL && strstr(error, "empty") != NULL);
	expect_error(&(struct password_opts){ .command = "true" },
		     "password_command failed (exit status 0, but its first "
		     "line is empty or too long)");
	expect_error(&(struct password_opts){ .command = "kill -9 $$" },
		     "password_command failed (killed by signal 9)");
	expect_error(&(struct password_opts){
			     .command = "no-such-command-for-mailfs 2>/dev/null" },
		     "password_command failed (exit status 127)");

	/* Endless output neither hangs us nor grows memory. */
	error = expect_error(&(struct password_opts){ .command = "yes" },
			     NULL);
	CHECK(error != NULL && strstr(error, "password_command failed") ==
			       error);

	/* Our descriptors do not leak into the command. */
	fd = open("/dev/null", O_RDONLY); /* deliberately without CLOEXEC */
	CHECK(fd >= 0);
	snprintf(cmd, sizeof(cmd),
		 "if [ -e /proc/self/fd/%d ]; then exit 9; fi; echo closed",
		 fd);
	expect_password(&(struct password_opts){ .command = cmd }, "closed");
	close(fd);
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* The pid a command wrote to FILE, or 0. */
static pid_t pid_in(const char *file)
{
	FILE *f = fopen(file, "r");
	long pid = 0;

	if (f) {
		if (fscanf(f, "%ld", &pid) != 1)
			pid = 0;
		fclose(f);
	}
	return (pid_t)pid;
}

static bool alive(pid_t pid)
{
	char path[64], state = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%ld/stat", (long)pid);
	f = fopen(path, "r");
	if (!f)
		return false;
	if (fscanf(f, "%*d %*s %c", &state) != 1)
		state = 0;
	fclose(f);
	return state != 0 && state != 'Z';
}

/* B3: a command that leaves something holding its stdout open does not
 * block the mount. */
static void test_command_bounded(void)
{
	char cmd[PATH_MAX + 100], pidfile[PATH_MAX];
	double t0;
	pid_t bg;

	/* A background child keeps the pipe open after the line. */
	snprintf(pidfile, sizeof(pidfile), "%s/bg.pid", tmpdir);
	snprintf(cmd, sizeof(cmd), "echo pw; sleep 1000 & echo $! > %s", pidfile);
	t0 = now_s();
	expect_password(&(struct password_opts){ .command = cmd }, "pw");
	CHECK(now_s() - t0 < 10);
	bg = pid_in(pidfile);
	CHECK(bg > 0);
	if (bg > 0)
		kill(bg, SIGKILL);

	/* A command that never ends fails within its bound, in one line. */
	t0 = now_s();
	expect_error(&(struct password_opts){ .command = "sleep 1000",
					      .command_timeout_ms = 1000 },
		     "password_command did not finish within 1 s (killed it)");
	CHECK(now_s() - t0 < 5);
	/* ...and so does one that closed its output but goes on; */
	expect_error(&(struct password_opts){
			     .command = "echo pw; exec >&-; sleep 1000",
			     .command_timeout_ms = 1000 },
		     "password_command did not finish within 1 s (killed it)");
	/* What it started in the background is killed with it, unless it
	 * may use our terminal (then it stays in our process group). */
	int tty = open("/dev/tty", O_RDONLY | O_NOCTTY | O_CLOEXEC);

	if (tty >= 0) {
		close(tty);
		return;
	}
	unlink(pidfile);
	snprintf(cmd, sizeof(cmd), "sleep 1000 & echo $! > %s; wait", pidfile);
	expect_error(&(struct password_opts){ .command = cmd,
					      .command_timeout_ms = 1000 },
		     "password_command did not finish within 1 s (killed it)");
	bg = pid_in(pidfile);
	CHECK(bg > 0);
	for (int i = 0; i < 50 && bg > 0 && alive(bg); i++)
		usleep(20000);
	CHECK(bg > 0 && !alive(bg));
	if (bg > 0)
		kill(bg, SIGKILL);
}

static void test_order(void)
{
	char *path = tmp_path("order");

	write_file(path, "from-file\n", 0600);
	expect_password(&(struct password_opts){
				.command = "echo from-command", .file = path },
			"from-command");
	/* A configured command that fails is final: no silent fallback. */
	expect_error(&(struct password_opts){ .command = "exit 4",
					      .file = path },
		     "password_command failed (exit status 4)");
	expect_password(&(struct password_opts){ .file = path }, "from-file");
}

/* Makes stdin a file holding data: how a script feeds `password set`. */
static void stdin_from(const char *data)
{
	char *path = tmp_path("stdin");
	int fd;

	write_file(path, data, 0600);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || dup2(fd, STDIN_FILENO) < 0) {
		perror(path);
		exit(1);
	}
	close(fd);
}

static void test_no_keyring(void)
{
	struct url url;
	const char *error = NULL;
	char *run = tmp_path("no-bus-run");

	/* No bus to find: no address, no $XDG_RUNTIME_DIR/bus, no X11 to
	 * autolaunch one through. */
	CHECK(mkdir(run, 0700) == 0);
	unsetenv("DBUS_SESSION_BUS_ADDRESS");
	unsetenv("DISPLAY");
	setenv("XDG_RUNTIME_DIR", run, 1);

	expect_error(NULL, NO_PASSWORD " (no Secret Service keyring is "
		     "running)");
	expect_error(&(struct password_opts){ 0 }, NO_PASSWORD " (no Secret "
		     "Service keyring is running)");

	parse("imaps://alice@127.0.0.1", &url);
	stdin_from("piped-secret\n");
	CHECK(password_keyring_set(&url, &error) == -1);
	CHECK_STR(error, "cannot store the password: " NO_SERVICE);
	CHECK(password_keyring_clear(&url, &error) == -1);
	CHECK_STR(error, "cannot clear the password: " NO_SERVICE);

	/* Nothing to read from stdin: refused before the keyring. */
	stdin_from("");
	CHECK(password_keyring_set(&url, &error) == -1);
	CHECK_STR(error, "no password on stdin");
	stdin_from("\n");
	CHECK(password_keyring_set(&url, &error) == -1);
	CHECK_STR(error, "no password on stdin");
	CHECK(freopen("/dev/null", "r", stdin) != NULL);
	url_free(&url);
}

/* ---- the prompt, on a pseudo-terminal ---- */

/* Reads from the pty master until want appears, EOF or the deadline;
 * appends everything to buf.  True when want was seen. */
static bool pty_expect(int master, char *buf, size_t size, const char *want)
{
	size_t len = strlen(buf);

	while (strstr(buf, want) == NULL) {
		struct pollfd pfd = { .fd = master, .events = POLLIN };
		ssize_t n;

		if (poll(&pfd, 1, 5000) <= 0 || len + 1 >= size)
			return false;
		n = read(master, buf + len, size - 1 - len);
		if (n <= 0)
			return false;
		len += (size_t)n;
		buf[len] = '\0';
	}
	return true;
}

static bool pty_echo_on(int master)
{
	struct termios t;

	/* On Linux the master reports the slave's settings. */
	return tcgetattr(master, &t) == 0 && (t.c_lflag & ECHO) != 0;
}

enum prompt_action { PROMPT_GET, PROMPT_SET };

/* Starts a child on a new pty running password_get() or
 * password_keyring_set(); its result comes back on *result_fd as
 * "ok PASSWORD" or "error MESSAGE". */
static pid_t pty_child(enum prompt_action action, int *master_r,
		       int *result_fd)
{
	int master, fds[2];
	pid_t pid;

	master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (master < 0 || grantpt(master) < 0 || unlockpt(master) < 0 ||
	    pipe2(fds, O_CLOEXEC) < 0) {
		perror("pty");
		exit(1);
	}
	pid = fork();
	if (pid == 0) {
		struct url url;
		const char *error = NULL;
		char *pw = NULL, msg[1024];
		int slave, ret;

		setsid();
		slave = open(ptsname(master), O_RDWR); /* becomes our tty */
		if (slave < 0 || dup2(slave, STDIN_FILENO) < 0)
			_exit(1);
		parse("imaps://alice@127.0.0.1", &url);
		if (action == PROMPT_GET)
			ret = password_get(&url, NULL, &pw, &error);
		else
			ret = password_keyring_set(&url, &error);
		snprintf(msg, sizeof(msg), "%s %s", ret == 0 ? "ok" : "error",
			 ret == 0 ? (pw != NULL ? pw : "") : error);
		if (write(fds[1], msg, strlen(msg)) < 0)
			_exit(1);
		password_free(pw);
		url_free(&url);
		_exit(0);
	}
	close(fds[1]);
	*master_r = master;
	*result_fd = fds[0];
	return pid;
}

/* The child's answer, or "" when it has none within 5 s (then it is
 * killed, so that a prompt waiting for input never hangs the test). */
static void read_result(pid_t pid, int fd, char *buf, size_t size)
{
	size_t len = 0;

	while (len + 1 < size) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		ssize_t n;

		if (poll(&pfd, 1, 5000) <= 0) {
			CHECK(!"no answer from the prompt");
			kill(pid, SIGKILL);
			break;
		}
		n = read(fd, buf + len, size - 1 - len);
		if (n <= 0)
			break;
		len += (size_t)n;
	}
	buf[len] = '\0';
	close(fd);
}

static int wait_child(pid_t pid)
{
	int status = -1;

	for (int i = 0; i < 100; i++) {
		if (waitpid(pid, &status, WNOHANG) == pid)
			return status;
		nanosleep(&(struct timespec){ 0, 50 * 1000 * 1000 }, NULL);
	}
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	CHECK(!"child timed out");
	return status;
}

static void test_prompt(void)
{
	char out[4096] = "", result[1024];
	int master, res_fd, status;
	pid_t pid;

	/* A good answer: prompt shown, echo off while typing, the typed
	 * password never echoed, echo back on afterwards. */
	pid = pty_child(PROMPT_GET, &master, &res_fd);
	CHECK(pty_expect(master, out, sizeof(out),
			 "Password for alice@127.0.0.1: "));
	CHECK(!pty_echo_on(master));
	CHECK(write(master, "tty-secret\n", 11) == 11);
	read_result(pid, res_fd, result, sizeof(result));
	CHECK_STR(result, "ok tty-secret");
	pty_expect(master, out, sizeof(out), "\n");
	CHECK(strstr(out, "tty-secret") == NULL);
	status = wait_child(pid);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	CHECK(pty_echo_on(master));
	close(master);

	/* ^C at the prompt kills the program as ^C should, and the
	 * terminal has its echo back. */
	out[0] = '\0';
	pid = pty_child(PROMPT_GET, &master, &res_fd);
	CHECK(pty_expect(master, out, sizeof(out), "Password for "));
	CHECK(!pty_echo_on(master));
	CHECK(write(master, "part\x03", 5) == 5);
	status = wait_child(pid);
	CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGINT);
	CHECK(pty_echo_on(master));
	read_result(pid, res_fd, result, sizeof(result));
	CHECK_STR(result, "");
	close(master);

	/* ^Z at the prompt (a stop that the kernel discards here, since
	 * the child's process group is orphaned) asks again from the
	 * start; a ^C after that still ends the program with the echo
	 * back on. */
	out[0] = '\0';
	pid = pty_child(PROMPT_GET, &master, &res_fd);
	CHECK(pty_expect(master, out, sizeof(out), "Password for "));
	CHECK(write(master, "par\x1a", 4) == 4);
	out[0] = '\0';
	CHECK(pty_expect(master, out, sizeof(out), "Password for "));
	CHECK(!pty_echo_on(master));
	CHECK(write(master, "\x03", 1) == 1);
	status = wait_child(pid);
	CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGINT);
	CHECK(pty_echo_on(master));
	read_result(pid, res_fd, result, sizeof(result));
	CHECK_STR(result, "");
	close(master);

	/* ^Z, then an answer. */
	out[0] = '\0';
	pid = pty_child(PROMPT_GET, &master, &res_fd);
	CHECK(pty_expect(master, out, sizeof(out), "Password for "));
	CHECK(write(master, "\x1a", 1) == 1);
	out[0] = '\0';
	CHECK(pty_expect(master, out, sizeof(out), "Password for "));
	CHECK(write(master, "after-stop\n", 11) == 11);
	read_result(pid, res_fd, result, sizeof(result));
	CHECK_STR(result, "ok after-stop");
	status = wait_child(pid);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	CHECK(pty_echo_on(master));
	close(master);

	/* An empty answer. */
	out[0] = '\0';
	pid = pty_child(PROMPT_GET, &master, &res_fd);
	CHECK(pty_expect(master, out, sizeof(out), "Password for "));
	CHECK(write(master, "\n", 1) == 1);
	read_result(pid, res_fd, result, sizeof(result));
	CHECK_STR(result, "error no password entered");
	wait_child(pid);
	close(master);

	/* `mailfs password set` asks twice; a mismatch stores nothing. */
	out[0] = '\0';
	pid = pty_child(PROMPT_SET, &master, &res_fd);
	CHECK(pty_expect(master, out, sizeof(out), "Password for "));
	CHECK(write(master, "one\n", 4) == 4);
	CHECK(pty_expect(master, out, sizeof(out), "Retype the password: "));
	CHECK(!pty_echo_on(master));
	CHECK(write(master, "two\n", 4) == 4);
	read_result(pid, res_fd, result, sizeof(result));
	CHECK_STR(result, "error the passwords do not match; nothing was "
			  "stored");
	wait_child(pid);
	CHECK(pty_echo_on(master));
	close(master);

	/* Matching twice gets as far as the (absent) keyring. */
	out[0] = '\0';
	pid = pty_child(PROMPT_SET, &master, &res_fd);
	CHECK(pty_expect(master, out, sizeof(out), "Password for "));
	CHECK(write(master, "same\n", 5) == 5);
	CHECK(pty_expect(master, out, sizeof(out), "Retype the password: "));
	CHECK(write(master, "same\n", 5) == 5);
	read_result(pid, res_fd, result, sizeof(result));
	CHECK_STR(result, "error cannot store the password: " NO_SERVICE);
	wait_child(pid);
	CHECK(strstr(out, "same") == NULL);
	close(master);
}

/* ---- the real keyring ---- */

static bool have_program(const char *name)
{
	const char *path = getenv("PATH");
	char buf[PATH_MAX];

	if (path == NULL)
		path = "/usr/bin:/bin";
	while (*path != '\0') {
		size_t len = strcspn(path, ":");

		snprintf(buf, sizeof(buf), "%.*s/%s", (int)len, path, name);
		if (len > 0 && access(buf, X_OK) == 0)
			return true;
		path += len;
		if (*path == ':')
			path++;
	}
	return false;
}

/* Runs cmd through the shell, returns its whole stdout (static). */
static const char *run_output(const char *cmd)
{
	static char buf[1024];
	FILE *f = popen(cmd, "r");
	size_t len;

	buf[0] = '\0';
	if (f == NULL)
		return buf;
	len = fread(buf, 1, sizeof(buf) - 1, f);
	buf[len] = '\0';
	CHECK(pclose(f) == 0);
	return buf;
}

/* gnome-keyring-daemon --unlock returns before it owns its bus name; a
 * lookup made before then would have D-Bus start a second daemon, one
 * without the unlocked login keyring.  Wait (bounded) for the first. */
static void wait_for_secret_service(void)
{
	GDBusConnection *bus = g_bus_get_sync(G_BUS_TYPE_SESSION, NULL, NULL);

	if (bus == NULL)
		return;
	for (int i = 0; i < 200; i++) {
		GVariant *reply = g_dbus_connection_call_sync(
			bus, "org.freedesktop.DBus", "/org/freedesktop/DBus",
			"org.freedesktop.DBus", "NameHasOwner",
			g_variant_new("(s)", "org.freedesktop.secrets"),
			G_VARIANT_TYPE("(b)"), G_DBUS_CALL_FLAGS_NONE, 1000,
			NULL, NULL);
		gboolean owned = FALSE;

		if (reply != NULL) {
			g_variant_get(reply, "(b)", &owned);
			g_variant_unref(reply);
		}
		if (owned)
			break;
		nanosleep(&(struct timespec){ 0, 25 * 1000 * 1000 }, NULL);
	}
	g_object_unref(bus);
}

/* Inside dbus-run-session with an unlocked gnome-keyring-daemon. */
static int keyring_phase(void)
{
	struct url url, bob;
	const char *error = NULL;
	char *pw = NULL;

	if (mkdtemp(tmpdir) == NULL) {
		perror("mkdtemp");
		return 1;
	}
	wait_for_secret_service();
	parse("imaps://alice@127.0.0.1", &url);

	stdin_from("kr-secret\n");
	CHECK(password_keyring_set(&url, &error) == 0);
	if (error != NULL)
		fprintf(stderr, "  set: %s\n", error);
	stdin_from("");

	CHECK(password_get(&url, NULL, &pw, &error) == 0);
	CHECK_STR(pw, "kr-secret");
	password_free(pw);
	pw = NULL;

	if (have_program("secret-tool")) {
		CHECK_STR(run_output("secret-tool lookup protocol imap user "
				     "alice host 127.0.0.1 port 993"),
			  "kr-secret");
		/* And the other way: what secret-tool stores (no schema
		 * name) is found by our lookup. */
		run_output("printf bob-secret | secret-tool store --label=x "
			   "protocol pop3 user bob host 127.0.0.1 port 995");
		parse("pop3s://bob@127.0.0.1", &bob);
		CHECK(password_get(&bob, NULL, &pw, &error) == 0);
		CHECK_STR(pw, "bob-secret");
		password_free(pw);
		pw = NULL;
		CHECK(password_keyring_clear(&bob, &error) == 0);
		url_free(&bob);
	}

	/* A different port is a different account. */
	parse("imaps://alice@127.0.0.1:10993", &bob);
	CHECK(password_get(&bob, NULL, &pw, &error) == -1);
	CHECK_STR(error, NO_PASSWORD);
	url_free(&bob);

	/* A configured source still beats the keyring. */
	CHECK(password_get(&url, &(struct password_opts){
					 .command = "echo cmd" },
			   &pw, &error) == 0);
	CHECK_STR(pw, "cmd");
	password_free(pw);
	pw = NULL;

	CHECK(password_keyring_clear(&url, &error) == 0);
	CHECK(password_keyring_clear(&url, &error) == -1);
	CHECK_STR(error, "no password stored for alice@127.0.0.1:993 (imap) "
			 "in the keyring");
	CHECK(password_get(&url, NULL, &pw, &error) == -1);
	CHECK_STR(error, NO_PASSWORD);
	CHECK(pw == NULL);
	url_free(&url);

	unlink(tmp_path("stdin"));
	rmdir(tmpdir);
	printf("keyring phase: ");
	return check_exit();
}

static void test_keyring(void)
{
	char self[PATH_MAX], *home = tmp_path("keyring"),
	     *run = tmp_path("keyring/run");
	char script[PATH_MAX + 200], asan[1024];
	const char *old_asan = getenv("ASAN_OPTIONS");
	ssize_t n;
	int status = -1;
	pid_t pid;

	if (!have_program("dbus-run-session") ||
	    !have_program("gnome-keyring-daemon")) {
		printf("keyring phase skipped\n");
		return;
	}
	n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	CHECK(n > 0);
	if (n <= 0)
		return;
	self[n] = '\0';
	CHECK(mkdir(home, 0700) == 0 && mkdir(run, 0700) == 0);
	snprintf(script, sizeof(script),
		 "printf test | gnome-keyring-daemon --unlock "
		 "--components=secrets >/dev/null 2>&1; exec '%s' "
		 "--keyring-phase", self);
	/* GDBus keeps a few allocations LeakSanitizer calls leaks. */
	snprintf(asan, sizeof(asan), "%s%sdetect_leaks=0",
		 old_asan != NULL ? old_asan : "",
		 old_asan != NULL && *old_asan != '\0' ? ":" : "");

	fflush(NULL);
	pid = fork();
	if (pid == 0) {
		setpgid(0, 0);
		setenv("HOME", home, 1);
		setenv("XDG_RUNTIME_DIR", run, 1);
		setenv("ASAN_OPTIONS", asan, 1);
		unsetenv("DBUS_SESSION_BUS_ADDRESS");
		execlp("dbus-run-session", "dbus-run-session", "--", "sh",
		       "-c", script, (char *)NULL);
		perror("dbus-run-session");
		_exit(127);
	}
	for (int waited = 0;; waited += 50) {
		if (waitpid(pid, &status, WNOHANG) == pid)
			break;
		if (waited >= PHASE_TIMEOUT_MS) {
			fprintf(stderr, "keyring phase timed out\n");
			kill(-pid, SIGKILL);
			waitpid(pid, &status, 0);
			break;
		}
		nanosleep(&(struct timespec){ 0, 50 * 1000 * 1000 }, NULL);
	}
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static int rm_entry(const char *path, const struct stat *st, int flag,
		    struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "--keyring-phase") == 0)
		return keyring_phase();

	/* Never prompt the person running the tests. */
	if (freopen("/dev/null", "r", stdin) == NULL)
		return 1;
	if (mkdtemp(tmpdir) == NULL) {
		perror("mkdtemp");
		return 1;
	}
	test_file();
	test_command();
	test_command_bounded();
	test_order();
	test_no_keyring();
	test_prompt();
	test_keyring();
	nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	return check_exit();
}
