/* password.c: where the account password comes from.
 *
 * The first source the user configured wins and its failure is final:
 * password_command, then password_file.  Without either, the Secret Service
 * keyring is asked, and last the terminal.  A configured source that fails
 * is an error rather than a reason to try the next one, because silently
 * falling back would hide a broken setup until the day it matters.
 *
 * Every buffer that held a password is wiped with OPENSSL_cleanse() before
 * it is freed or goes out of scope, and no message ever quotes a password,
 * a command's output or a file's contents.  Messages that name a file or
 * an account are built in a thread-local buffer, valid until the next call
 * into this module from the same thread.
 *
 * libsecret talks D-Bus through a GLib worker thread that does not survive
 * fork(), so all of this must run before the program daemonizes; each call
 * drops the Secret Service connection when done. */
#include "password.h"

#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include <libsecret/secret.h>

/* Longest password accepted from any source, without its newline. */
#define PASSWORD_MAX 4096
/* Output of password_command read after the first line before giving up
 * on the rest: enough for any chatty tool, bounded for `yes`. */
#define PASSWORD_DRAIN_MAX (1024 * 1024)

#define PASSWORD_HOW "use -o password_file=FILE, -o password_command=CMD, " \
		     "or `mailfs password set SOURCE`"
#define PASSWORD_NO_SERVICE "no Secret Service is running (start " \
			    "gnome-keyring or use password_file)"

static const SecretSchema password_schema = {
	.name = "org.mailfs.Password",
	/* Without it, entries stored by secret-tool (which records no
	 * schema name) would never match. */
	.flags = SECRET_SCHEMA_DONT_MATCH_NAME,
	.attributes = {
		{ "protocol", SECRET_SCHEMA_ATTRIBUTE_STRING },
		{ "user", SECRET_SCHEMA_ATTRIBUTE_STRING },
		{ "host", SECRET_SCHEMA_ATTRIBUTE_STRING },
		{ "port", SECRET_SCHEMA_ATTRIBUTE_INTEGER },
		{ NULL, 0 },
	},
};

static _Thread_local char password_errbuf[2 * PATH_MAX + 256];

static const char *password_errorf(const char *fmt, ...)
	__attribute__((format(printf, 1, 2)));

static const char *password_errorf(const char *fmt, ...)
{
	va_list args;

	va_start(args, fmt);
	vsnprintf(password_errbuf, sizeof(password_errbuf), fmt, args);
	va_end(args);
	return password_errbuf;
}

void password_free(char *password)
{
	if (password == NULL)
		return;
	OPENSSL_cleanse(password, strlen(password));
	free(password);
}

/* "alice@host", with brackets around an IPv6 literal as in the URL. */
static void password_account(const struct url *url, char *buf, size_t size)
{
	bool v6 = strchr(url->host, ':') != NULL;

	snprintf(buf, size, "%s@%s%s%s", url->user, v6 ? "[" : "", url->host,
		 v6 ? "]" : "");
}

static const char *password_protocol(const struct url *url)
{
	return url->proto == URL_POP3 ? "pop3" : "imap";
}

/* Copies the first line of buf (without CR/LF) to a new string.  Returns
 * 1 with *password_r, 0 when the line is empty, -1 when out of memory. */
static int password_first_line(const char *buf, size_t len, char **password_r)
{
	const char *nl = memchr(buf, '\n', len);
	size_t n = nl != NULL ? (size_t)(nl - buf) : len;
	char *pw;

	if (n > 0 && buf[n - 1] == '\r')
		n--;
	if (n == 0)
		return 0;
	pw = malloc(n + 1);
	if (pw == NULL)
		return -1;
	memcpy(pw, buf, n);
	pw[n] = '\0';
	*password_r = pw;
	return 1;
}

/* ---- password_command ---- */

/* In the child between fork and exec: only async-signal-safe calls. */
static void password_command_child(const char *command, int out_fd)
{
	sigset_t none;

	if (out_fd != STDOUT_FILENO) {
		if (dup2(out_fd, STDOUT_FILENO) < 0)
			_exit(127);
	}
	/* Keep stdin (a command may ask gpg-agent or the terminal) and
	 * stderr (its complaints are for the user), but nothing else: the
	 * command has no business with our sockets or the FUSE device. */
	if (close_range(3, ~0U, 0) < 0) {
		for (int fd = 3; fd < 1024; fd++)
			close(fd);
	}
	/* A network daemon ignores SIGPIPE and threads block signals; the
	 * command should start with neither. */
	/* Its own process group, so that a timeout kills what it started
	 * too; not when it may read the terminal (stdin or /dev/tty), which
	 * only the terminal's foreground group can. */
	int tty = open("/dev/tty", O_RDONLY | O_NOCTTY | O_CLOEXEC);

	if (tty >= 0)
		close(tty);
	else if (!isatty(STDIN_FILENO))
		setpgid(0, 0);
	signal(SIGPIPE, SIG_DFL);
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	execl("/bin/sh", "sh", "-c", command, (char *)NULL);
	_exit(127);
}

/* How long password_command may take: it may ask gpg-agent for a pinentry,
 * but a command that never finishes must not hang the mount. */
#define PASSWORD_COMMAND_TIMEOUT_MS 30000
/* After the first line, once the command itself has exited: how long a
 * background child it left holding the pipe may go on writing. */
#define PASSWORD_LINGER_MS 200

static int64_t password_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Read the command's output into buf (the first line; the rest is drained
 * so that it is not killed by SIGPIPE for printing more) and reap it.
 * Done at EOF once it exited, or PASSWORD_LINGER_MS after it exited with
 * its line given (a background child it left may hold the pipe forever).
 * Returns 0 with *status_r, or -ETIMEDOUT at the deadline. */
static int password_read_command(int *fd, pid_t pid, int timeout_ms, char *buf,
				 size_t size, size_t *len_r, int *status_r,
				 bool *reaped_r)
{
	int64_t deadline = password_now_ms() + timeout_ms, linger = 0;
	size_t len = 0, drained = 0;
	bool have_line = false, eof = false;

	for (;;) {
		struct pollfd pfd = { .fd = eof ? -1 : *fd, .events = POLLIN };
		int64_t now = password_now_ms(), until = deadline;
		char scratch[4096];
		ssize_t n;

		if (!*reaped_r && waitpid(pid, status_r, WNOHANG) == pid) {
			*reaped_r = true;
			linger = now + PASSWORD_LINGER_MS;
		}
		if (*reaped_r && (eof || (have_line && now >= linger)))
			break;
		if (now >= until)
			return -ETIMEDOUT;
		/* Wake every 50 ms to see whether it exited. */
		if (poll(&pfd, 1, (int)(until - now < 50 ? until - now : 50)) <= 0)
			continue;
		if (have_line || len == size - 1) {
			n = read(*fd, scratch, sizeof(scratch));
			if (n > 0)
				OPENSSL_cleanse(scratch, (size_t)n);
			/* A first line longer than any password: never a match. */
			if (!have_line && n > 0) {
				have_line = true;
				len = 0;
			}
			if (n > 0 && (drained += (size_t)n) > PASSWORD_DRAIN_MAX) {
				/* `yes`: SIGPIPE ends it. */
				close(*fd);
				*fd = -1;
				eof = true;
				continue;
			}
		} else {
			n = read(*fd, buf + len, size - 1 - len);
			if (n > 0) {
				len += (size_t)n;
				have_line = memchr(buf, '\n', len) != NULL;
			}
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			eof = true;
	}
	*len_r = len;
	return 0;
}

/* On timeout: the command and whatever it started in its group. */
static void password_command_kill(pid_t pid, bool reaped)
{
	kill(-pid, SIGKILL);
	if (!reaped) {
		kill(pid, SIGKILL);
		while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
			;
	}
}

static int password_from_command(const char *command, int timeout_ms,
				 char **password_r, const char **error_r)
{
	char buf[PASSWORD_MAX + 2];
	size_t len = 0;
	int fds[2] = { -1, -1 };
	bool reaped = false;
	int status = 0, ret = -1, found;
	pid_t pid;

	if (pipe2(fds, O_CLOEXEC) < 0) {
		*error_r = password_errorf("password_command failed: "
					   "cannot create a pipe: %s",
					   strerror(errno));
		return -1;
	}
	pid = fork();
	if (pid < 0) {
		*error_r = password_errorf("password_command failed: "
					   "cannot fork: %s", strerror(errno));
		close(fds[0]);
		close(fds[1]);
		return -1;
	}
	if (pid == 0)
		password_command_child(command, fds[1]);
	close(fds[1]);
	if (password_read_command(&fds[0], pid, timeout_ms > 0 ? timeout_ms :
				  PASSWORD_COMMAND_TIMEOUT_MS, buf, sizeof(buf),
				  &len, &status, &reaped) < 0) {
		if (fds[0] >= 0)
			close(fds[0]);
		password_command_kill(pid, reaped);
		*error_r = password_errorf("password_command did not finish "
					   "within %d s (killed it)",
					   (timeout_ms > 0 ? timeout_ms :
					    PASSWORD_COMMAND_TIMEOUT_MS) / 1000);
		goto cleanup;
	}
	if (fds[0] >= 0)
		close(fds[0]);
	if (WIFSIGNALED(status)) {
		*error_r = password_errorf("password_command failed (killed "
					   "by signal %d)", WTERMSIG(status));
		goto cleanup;
	}
	if (WEXITSTATUS(status) != 0) {
		*error_r = password_errorf("password_command failed (exit "
					   "status %d)", WEXITSTATUS(status));
		goto cleanup;
	}
	found = password_first_line(buf, len, password_r);
	if (found < 0) {
		*error_r = "out of memory";
		goto cleanup;
	}
	if (found == 0) {
		*error_r = "password_command failed (exit status 0, but its "
			   "first line is empty or too long)";
		goto cleanup;
	}
	ret = 0;
cleanup:
	OPENSSL_cleanse(buf, sizeof(buf));
	return ret;
}

/* ---- password_file ---- */

static int password_from_file(const char *path, char **password_r,
			      const char **error_r)
{
	char buf[PASSWORD_MAX + 2];
	size_t len = 0;
	struct stat st;
	int fd, ret = -1, found;

	/* O_NONBLOCK: a FIFO must not hang us before fstat refuses it. */
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0) {
		*error_r = password_errorf("cannot open password file %s: %s",
					   path, strerror(errno));
		return -1;
	}
	/* fstat on the open fd, not stat on the name: nothing can swap the
	 * file between the check and the read. */
	if (fstat(fd, &st) < 0) {
		*error_r = password_errorf("cannot open password file %s: %s",
					   path, strerror(errno));
		goto cleanup;
	}
	if (!S_ISREG(st.st_mode)) {
		*error_r = password_errorf("password file %s is not a regular "
					   "file", path);
		goto cleanup;
	}
	if ((st.st_mode & 077) != 0) {
		*error_r = password_errorf("password file %s is readable by "
					   "others; run chmod 600 %s",
					   path, path);
		goto cleanup;
	}
	while (len < sizeof(buf) - 1) {
		ssize_t n = read(fd, buf + len, sizeof(buf) - 1 - len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			*error_r = password_errorf("cannot read password file "
						   "%s: %s", path,
						   strerror(errno));
			goto cleanup;
		}
		if (n == 0)
			break;
		len += (size_t)n;
		if (memchr(buf, '\n', len) != NULL)
			break;
	}
	if (memchr(buf, '\n', len) == NULL && len == sizeof(buf) - 1) {
		*error_r = password_errorf("the first line of password file %s "
					   "is too long for a password", path);
		goto cleanup;
	}
	found = password_first_line(buf, len, password_r);
	if (found < 0) {
		*error_r = "out of memory";
		goto cleanup;
	}
	if (found == 0) {
		*error_r = password_errorf("password file %s is empty: put the "
					   "password on its first line", path);
		goto cleanup;
	}
	ret = 0;
cleanup:
	OPENSSL_cleanse(buf, sizeof(buf));
	close(fd);
	return ret;
}

/* ---- the keyring ---- */

/* True when error only says there is no session bus or nobody owns
 * org.freedesktop.secrets on it: the common headless case, which means
 * "no keyring" rather than "the keyring is broken". */
static bool password_keyring_absent(const GError *error)
{
	static const char *const hints[] = {
		"autolaunch", "org.freedesktop.secrets", "DBUS_SESSION_BUS",
		"was not provided by any .service", "Could not connect",
	};

	if (error->domain == G_DBUS_ERROR) {
		switch (error->code) {
		case G_DBUS_ERROR_SERVICE_UNKNOWN:
		case G_DBUS_ERROR_NAME_HAS_NO_OWNER:
		case G_DBUS_ERROR_NO_SERVER:
		case G_DBUS_ERROR_SPAWN_SERVICE_NOT_FOUND:
		case G_DBUS_ERROR_SPAWN_EXEC_FAILED:
		case G_DBUS_ERROR_SPAWN_CHILD_EXITED:
		case G_DBUS_ERROR_SPAWN_FAILED:
			return true;
		default:
			break;
		}
	}
	for (size_t i = 0; i < sizeof(hints) / sizeof(hints[0]); i++) {
		if (error->message != NULL &&
		    strstr(error->message, hints[i]) != NULL)
			return true;
	}
	return false;
}

/* Only the first line of a GLib message, which sometimes has several. */
static void password_gerror_line(const GError *error, char *buf, size_t size)
{
	const char *msg = error != NULL && error->message != NULL ?
			  error->message : "unknown error";

	snprintf(buf, size, "%.*s", (int)strcspn(msg, "\r\n"), msg);
}

/* The attributes that name this account's entry; unref when done. */
static GHashTable *password_attributes(const struct url *url)
{
	GHashTable *attrs = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, g_free);

	g_hash_table_insert(attrs, (gpointer)"protocol", g_strdup(password_protocol(url)));
	g_hash_table_insert(attrs, (gpointer)"user", g_strdup(url->user));
	g_hash_table_insert(attrs, (gpointer)"host", g_strdup(url->host));
	g_hash_table_insert(attrs, (gpointer)"port", g_strdup_printf("%d", url->port));
	return attrs;
}

/* The one line for a failed keyring `verb` ("store", "clear"); frees
 * error. */
static const char *password_keyring_error(const char *verb, GError *error)
{
	char line[512];
	const char *msg;

	if (password_keyring_absent(error)) {
		msg = password_errorf("cannot %s the password: " PASSWORD_NO_SERVICE, verb);
	} else {
		password_gerror_line(error, line, sizeof(line));
		msg = password_errorf("cannot %s the password: %s", verb, line);
	}
	g_error_free(error);
	return msg;
}

enum password_keyring_result {
	PASSWORD_KEYRING_FOUND,
	PASSWORD_KEYRING_NOT_FOUND,
	PASSWORD_KEYRING_ABSENT,
	PASSWORD_KEYRING_LOCKED, /* an entry exists in a locked keyring */
};

static enum password_keyring_result
password_keyring_lookup(const struct url *url, char **password_r)
{
	enum password_keyring_result ret = PASSWORD_KEYRING_NOT_FOUND;
	GHashTable *attrs = password_attributes(url);
	GError *error = NULL;
	gchar *secret;

	secret = secret_password_lookupv_nonpageable_sync(&password_schema, attrs, NULL, &error);
	if (error != NULL) {
		if (password_keyring_absent(error)) {
			ret = PASSWORD_KEYRING_ABSENT;
		} else {
			char line[512];

			/* A keyring that exists but fails (locked, a
			 * dismissed prompt) is worth a word; the prompt or
			 * the final error still follows. */
			password_gerror_line(error, line, sizeof(line));
			log_warn("cannot read the keyring: %s", line);
		}
		g_error_free(error);
	} else if (secret != NULL && secret[0] != '\0') {
		*password_r = strdup(secret);
		ret = *password_r != NULL ? PASSWORD_KEYRING_FOUND :
					    PASSWORD_KEYRING_NOT_FOUND;
	} else {
		/* Nothing came back: also what a locked keyring whose unlock
		 * prompt could not be shown looks like.  Look again without
		 * unlocking, so that the user is told the right thing. */
		GList *items = secret_password_searchv_sync(&password_schema, attrs,
						     SECRET_SEARCH_ALL, NULL, NULL);

		if (items != NULL)
			ret = PASSWORD_KEYRING_LOCKED;
		g_list_free_full(items, g_object_unref);
	}
	/* Wipes the secure memory before freeing it. */
	secret_password_free(secret);
	g_hash_table_unref(attrs);
	secret_service_disconnect();
	return ret;
}

/* ---- the terminal ---- */

/* State of the one prompt in progress, for the signal handler. */
static int password_tty_fd = -1;
static struct termios password_tty_saved;
static volatile sig_atomic_t password_tty_signal;

static const int password_tty_signals[] = {
	SIGALRM, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGTSTP, SIGTTIN, SIGTTOU,
};
static struct sigaction
	password_tty_oldact[sizeof(password_tty_signals) /
			    sizeof(password_tty_signals[0])];

/* Puts echo back before the signal does whatever it would have done (end
 * the program, stop it) and then lets it do that: a ^C at the prompt must
 * not leave the user's shell without echo.  Everything here is
 * async-signal-safe. */
static void password_tty_handler(int sig)
{
	int saved_errno = errno;

	if (password_tty_fd >= 0)
		tcsetattr(password_tty_fd, TCSANOW, &password_tty_saved);
	for (size_t i = 0; i < sizeof(password_tty_signals) /
				   sizeof(password_tty_signals[0]); i++) {
		if (password_tty_signals[i] == sig)
			sigaction(sig, &password_tty_oldact[i], NULL);
	}
	password_tty_signal = sig;
	raise(sig);
	errno = saved_errno;
}

static void password_tty_catch(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = password_tty_handler;
	sigemptyset(&sa.sa_mask);
	/* No SA_RESTART: read() must return so the prompt notices. */
	for (size_t i = 0; i < sizeof(password_tty_signals) /
				   sizeof(password_tty_signals[0]); i++)
		sigaction(password_tty_signals[i], &sa,
			  &password_tty_oldact[i]);
}

static void password_tty_release(void)
{
	for (size_t i = 0; i < sizeof(password_tty_signals) /
				   sizeof(password_tty_signals[0]); i++)
		sigaction(password_tty_signals[i], &password_tty_oldact[i],
			  NULL);
}

static void password_write_all(int fd, const char *s)
{
	size_t len = strlen(s);

	while (len > 0) {
		ssize_t n = write(fd, s, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return;
		s += n;
		len -= (size_t)n;
	}
}

/* Waits until fd has input or one of the prompt's signals was caught
 * (then fails with EINTR).  A plain blocking read() would miss a signal
 * that lands just before it starts, or in another thread (GLib's), and
 * then wait for input forever; hence the short timeout. */
static int password_tty_wait(int fd)
{
	for (;;) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		int n;

		if (password_tty_signal != 0) {
			errno = EINTR;
			return -1;
		}
		n = poll(&pfd, 1, 200);
		if (n > 0)
			return 0;
		if (n < 0 && errno != EINTR)
			return -1;
	}
}

/* Reads one line from fd into buf (NUL-terminated, CR/LF stripped);
 * tty: fd is the prompt's terminal.  Returns 1, 0 at EOF before anything
 * was read, -1 on error (EINTR when a signal ends the prompt) or a line
 * too long. */
static int password_read_line(int fd, bool tty, char *buf, size_t size)
{
	size_t len = 0;
	bool too_long = false;

	for (;;) {
		char c;
		ssize_t n;

		if (tty && password_tty_wait(fd) < 0)
			return -1;
		n = read(fd, &c, 1);

		/* Other signals (SIGCHLD...) are no reason to give up,
		 * one of the prompt's own is. */
		if (n < 0 && errno == EINTR && password_tty_signal == 0)
			continue;
		if (n < 0)
			return -1;
		if (n == 0) {
			if (len == 0 && !too_long)
				return 0;
			break;
		}
		if (c == '\n')
			break;
		if (len + 1 < size)
			buf[len++] = c;
		else
			too_long = true;
		c = 0;
	}
	if (len > 0 && buf[len - 1] == '\r')
		len--;
	buf[len] = '\0';
	if (too_long) {
		errno = EMSGSIZE;
		return -1;
	}
	return 1;
}

/* Prompts on the terminal with echo off.  Returns 0 with buf filled, or
 * -1 with *error_r. */
static int password_tty_read(const char *prompt, char *buf, size_t size,
			     const char **error_r)
{
	int in_fd, out_fd, ret = -1, read_errno;
	struct termios noecho;
	bool opened;

	/* The controlling terminal, like ssh and sudo, so that the prompt
	 * is seen even when stdout or stderr are redirected. */
	in_fd = open("/dev/tty", O_RDWR | O_CLOEXEC | O_NOCTTY);
	opened = in_fd >= 0;
	if (!opened)
		in_fd = STDIN_FILENO;
	out_fd = opened ? in_fd : STDERR_FILENO;

again:
	if (tcgetattr(in_fd, &password_tty_saved) < 0) {
		*error_r = password_errorf("cannot read the password from the "
					   "terminal: %s", strerror(errno));
		goto out;
	}
	noecho = password_tty_saved;
	noecho.c_lflag &= ~(tcflag_t)(ECHO | ECHOE | ECHOK | ECHONL);
	password_tty_signal = 0;
	password_tty_fd = in_fd;
	password_tty_catch();
	/* Echo off before the prompt: whatever is typed once the prompt
	 * shows must be neither echoed nor flushed away by TCSAFLUSH. */
	if (tcsetattr(in_fd, TCSAFLUSH, &noecho) < 0) {
		*error_r = password_errorf("cannot turn off echo on the "
					   "terminal: %s", strerror(errno));
		password_tty_release();
		password_tty_fd = -1;
		goto out;
	}
	password_write_all(out_fd, prompt);
	ret = password_read_line(in_fd, true, buf, size);
	read_errno = errno;
	/* Also after a signal: its handler put back only its own action,
	 * and a second round after SIGTSTP must not save ours as "old".
	 * TCSANOW: what was typed after Enter belongs to whoever reads
	 * next. */
	tcsetattr(in_fd, TCSANOW, &password_tty_saved);
	password_tty_release();
	password_tty_fd = -1;
	/* Echo was off, so the user's Enter did not move the cursor. */
	password_write_all(out_fd, "\n");

	if (password_tty_signal == SIGTSTP || password_tty_signal == SIGTTIN ||
	    password_tty_signal == SIGTTOU) {
		/* We were stopped and are back: ask again from the start. */
		OPENSSL_cleanse(buf, size);
		goto again;
	}
	if (password_tty_signal != 0) {
		*error_r = "password prompt interrupted";
		ret = -1;
	} else if (ret < 0) {
		*error_r = read_errno == EMSGSIZE ?
			   "the password is too long" :
			   password_errorf("cannot read the password from the "
					   "terminal: %s",
					   strerror(read_errno));
	} else if (ret == 0 || buf[0] == '\0') {
		*error_r = "no password entered";
		ret = -1;
	} else {
		ret = 0;
	}
	if (ret < 0)
		OPENSSL_cleanse(buf, size);
out:
	if (opened)
		close(in_fd);
	return ret;
}

/* ---- the public functions ---- */

int password_get(const struct url *url, const struct password_opts *opts,
		 char **password_r, const char **error_r)
{
	char account[512], prompt[600];
	char buf[PASSWORD_MAX + 1];
	enum password_keyring_result kr;
	int ret = -1;

	*password_r = NULL;
	if (opts != NULL && opts->command != NULL)
		return password_from_command(opts->command,
					     opts->command_timeout_ms,
					     password_r, error_r);
	if (opts != NULL && opts->file != NULL)
		return password_from_file(opts->file, password_r, error_r);

	kr = password_keyring_lookup(url, password_r);
	if (kr == PASSWORD_KEYRING_FOUND)
		return 0;

	password_account(url, account, sizeof(account));
	if (isatty(STDIN_FILENO)) {
		snprintf(prompt, sizeof(prompt), "Password for %s: ", account);
		if (password_tty_read(prompt, buf, sizeof(buf), error_r) < 0)
			goto cleanup;
		*password_r = strdup(buf);
		if (*password_r == NULL) {
			*error_r = "out of memory";
			goto cleanup;
		}
		ret = 0;
		goto cleanup;
	}
	if (kr == PASSWORD_KEYRING_LOCKED)
		*error_r = password_errorf("the keyring holding the password for %s is locked: "
					   "unlock it, or use -o password_file=FILE or "
					   "-o password_command=CMD", account);
	else
		*error_r = password_errorf("no password for %s: " PASSWORD_HOW "%s",
					   account, kr == PASSWORD_KEYRING_ABSENT ?
					   " (no Secret Service keyring is running)" :
					   "");
cleanup:
	OPENSSL_cleanse(buf, sizeof(buf));
	return ret;
}

/* The new password from the terminal (twice) or, for scripts, one line of
 * stdin.  Returns 0 with buf filled or -1 with *error_r. */
static int password_read_new(const struct url *url, char *buf, size_t size,
			     const char **error_r)
{
	char account[512], prompt[600];
	char *again;
	int ret = -1, n;

	if (!isatty(STDIN_FILENO)) {
		n = password_read_line(STDIN_FILENO, false, buf, size);
		if (n < 0) {
			*error_r = errno == EMSGSIZE ?
				   "the password is too long" :
				   password_errorf("cannot read the password "
						   "from stdin: %s",
						   strerror(errno));
		} else if (n == 0 || buf[0] == '\0') {
			*error_r = "no password on stdin";
		} else {
			return 0;
		}
		OPENSSL_cleanse(buf, size);
		return -1;
	}

	again = malloc(size);
	if (again == NULL) {
		*error_r = "out of memory";
		return -1;
	}
	password_account(url, account, sizeof(account));
	snprintf(prompt, sizeof(prompt), "Password for %s: ", account);
	if (password_tty_read(prompt, buf, size, error_r) < 0)
		goto cleanup;
	if (password_tty_read("Retype the password: ", again, size,
			      error_r) < 0)
		goto cleanup;
	if (strcmp(buf, again) != 0) {
		*error_r = "the passwords do not match; nothing was stored";
		goto cleanup;
	}
	ret = 0;
cleanup:
	if (ret < 0)
		OPENSSL_cleanse(buf, size);
	OPENSSL_cleanse(again, size);
	free(again);
	return ret;
}

int password_keyring_set(const struct url *url, const char **error_r)
{
	char buf[PASSWORD_MAX + 1];
	char account[512], label[600];
	GHashTable *attrs;
	GError *error = NULL;
	gboolean stored;
	int ret = -1;

	if (password_read_new(url, buf, sizeof(buf), error_r) < 0)
		return -1;
	attrs = password_attributes(url);
	password_account(url, account, sizeof(account));
	snprintf(label, sizeof(label), "mailfs password for %s:%d", account,
		 url->port);
	stored = secret_password_storev_sync(&password_schema, attrs,
					     SECRET_COLLECTION_DEFAULT, label,
					     buf, NULL, &error);
	if (error != NULL) {
		*error_r = password_keyring_error("store", error);
		goto cleanup;
	}
	if (!stored) {
		*error_r = "cannot store the password in the keyring";
		goto cleanup;
	}
	ret = 0;
cleanup:
	OPENSSL_cleanse(buf, sizeof(buf));
	g_hash_table_unref(attrs);
	secret_service_disconnect();
	return ret;
}

int password_keyring_clear(const struct url *url, const char **error_r)
{
	GHashTable *attrs = password_attributes(url);
	char account[512];
	GError *error = NULL;
	gboolean removed;
	int ret = -1;

	removed = secret_password_clearv_sync(&password_schema, attrs, NULL, &error);
	if (error != NULL) {
		*error_r = password_keyring_error("clear", error);
		goto cleanup;
	}
	if (!removed) {
		password_account(url, account, sizeof(account));
		*error_r = password_errorf("no password stored for %s:%d "
					   "(%s) in the keyring", account,
					   url->port, password_protocol(url));
		goto cleanup;
	}
	ret = 0;
cleanup:
	g_hash_table_unref(attrs);
	secret_service_disconnect();
	return ret;
}
