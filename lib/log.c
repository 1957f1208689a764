/* log.c: diagnostics for the whole program.
 *
 * Every message is formatted into one buffer and written with a single
 * write(2), so lines from different threads never interleave and no lock is
 * needed.  Before log_to_syslog() everything goes to stderr; after it, to
 * syslog (ident "mailfs", LOG_DAEMON) and also to stderr unless stderr has
 * become /dev/null, which is what daemonizing does to it.  The settings are
 * written once at startup, before any thread exists, and only read after. */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

/* Longest protocol line shown by log_trace(); the rest becomes "...". */
#define LOG_TRACE_MAX 300

static bool log_debug_on;
static bool log_syslog_on;
static bool log_stderr_on = true;

enum log_level { LOG_LEVEL_ERROR, LOG_LEVEL_WARN, LOG_LEVEL_INFO,
		 LOG_LEVEL_DEBUG };

void log_init(bool debug)
{
	log_debug_on = debug;
}

bool log_debug_enabled(void)
{
	return log_debug_on;
}

/* True when fd 2 is the null device: writing there is wasted effort, and a
 * closed fd 2 counts too, since writing to it could hit a reused fd. */
static bool log_stderr_is_null(void)
{
	struct stat st, null_st;

	if (fstat(STDERR_FILENO, &st) < 0)
		return true;
	if (!S_ISCHR(st.st_mode) || stat("/dev/null", &null_st) < 0)
		return false;
	return st.st_rdev == null_st.st_rdev;
}

void log_to_syslog(void)
{
	openlog("mailfs", LOG_PID, LOG_DAEMON);
	log_syslog_on = true;
	log_stderr_on = !log_stderr_is_null();
}

/* One write(2) per line; retried on EINTR and short writes so a message is
 * never half lost, but never fatal: there is nowhere to report it. */
static void log_write_stderr(const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(STDERR_FILENO, buf, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return;
		}
		buf += n;
		len -= (size_t)n;
	}
}

static const char log_hex[] = "0123456789abcdef";

/* Bytes that would steer a terminal: C0 controls but tab, DEL, and C1
 * controls in their UTF-8 form (U+0080..U+009F: 0xc2 0x80..0x9f, CSI is
 * one).  Returns how many bytes at p form one, 0 if none. */
static size_t log_control_len(const unsigned char *p, size_t left)
{
	if ((p[0] < 0x20 && p[0] != '\t') || p[0] == 0x7f)
		return 1;
	if (p[0] == 0xc2 && left > 1 && p[1] >= 0x80 && p[1] <= 0x9f)
		return 2;
	return 0;
}

size_t log_escape(char *dst, size_t size, const char *src, size_t len)
{
	const unsigned char *p = (const unsigned char *)src;
	size_t out = 0;

	if (size == 0)
		return 0;
	for (size_t i = 0; i < len;) {
		size_t n = log_control_len(p + i, len - i);

		if (n == 0) {
			if (out + 1 >= size)
				break;
			dst[out++] = (char)p[i++];
			continue;
		}
		if (out + 4 * n >= size)
			break;
		for (size_t k = 0; k < n; k++, i++) {
			dst[out++] = '\\';
			dst[out++] = 'x';
			dst[out++] = log_hex[p[i] >> 4];
			dst[out++] = log_hex[p[i] & 0xf];
		}
	}
	dst[out] = '\0';
	return out;
}

/* Emits "mailfs: " + prefix + text + "\n" on stderr and text alone on
 * syslog, whose priority already says what the prefix says. */
static void log_emit(enum log_level level, const char *prefix,
		     const char *text)
{
	static const int prio[] = {
		[LOG_LEVEL_ERROR] = LOG_ERR,
		[LOG_LEVEL_WARN] = LOG_WARNING,
		[LOG_LEVEL_INFO] = LOG_INFO,
		[LOG_LEVEL_DEBUG] = LOG_DEBUG,
	};
	int saved_errno = errno;

	if (log_syslog_on)
		syslog(prio[level], "%s%s", prefix, text);
	if (log_stderr_on) {
		char stackbuf[1024];
		char *buf = stackbuf;
		int len = snprintf(stackbuf, sizeof(stackbuf), "mailfs: %s%s\n",
				   prefix, text);

		if (len < 0)
			goto out;
		if ((size_t)len >= sizeof(stackbuf)) {
			buf = malloc((size_t)len + 1);
			if (buf == NULL) {
				/* Keep what fitted rather than nothing. */
				buf = stackbuf;
				len = sizeof(stackbuf) - 1;
				stackbuf[len - 1] = '\n';
			} else {
				snprintf(buf, (size_t)len + 1, "mailfs: %s%s\n",
					 prefix, text);
			}
		}
		log_write_stderr(buf, (size_t)len);
		if (buf != stackbuf)
			free(buf);
	}
out:
	/* Callers often log and then look at errno again. */
	errno = saved_errno;
}

/* log_emit() with control bytes escaped: messages carry text a server
 * chose (a NO's text, a folder name), which must not reach a terminal or
 * syslog as escape sequences (AUDIT D2). */
static void log_emit_clean(enum log_level level, const char *prefix,
			   const char *text, size_t len)
{
	char stackbuf[1024], *buf = stackbuf;
	size_t need = 4 * len + 1;
	bool any = false;

	for (size_t i = 0; i < len && !any; i++)
		any = log_control_len((const unsigned char *)text + i, len - i) > 0;
	if (!any) {
		log_emit(level, prefix, text);
		return;
	}
	if (need > sizeof(stackbuf)) {
		buf = malloc(need);
		if (buf == NULL) {
			buf = stackbuf; /* cut beats raw */
			need = sizeof(stackbuf);
		}
	} else {
		need = sizeof(stackbuf);
	}
	log_escape(buf, need, text, len);
	log_emit(level, prefix, buf);
	if (buf != stackbuf)
		free(buf);
}

static void log_vemit(enum log_level level, const char *prefix,
		      const char *fmt, va_list args)
{
	char stackbuf[1024];
	char *text = stackbuf;
	int saved_errno = errno;
	va_list copy;
	int len;

	va_copy(copy, args);
	errno = saved_errno; /* for %m */
	len = vsnprintf(stackbuf, sizeof(stackbuf), fmt, args);
	if (len < 0) {
		va_end(copy);
		return;
	}
	if ((size_t)len >= sizeof(stackbuf)) {
		text = malloc((size_t)len + 1);
		if (text == NULL)
			text = stackbuf; /* truncated beats silent */
		else {
			errno = saved_errno;
			vsnprintf(text, (size_t)len + 1, fmt, copy);
		}
	}
	va_end(copy);
	log_emit_clean(level, prefix, text, strlen(text));
	if (text != stackbuf)
		free(text);
	errno = saved_errno;
}

void log_error(const char *fmt, ...)
{
	va_list args;

	va_start(args, fmt);
	log_vemit(LOG_LEVEL_ERROR, "", fmt, args);
	va_end(args);
}

void log_warn(const char *fmt, ...)
{
	va_list args;

	va_start(args, fmt);
	log_vemit(LOG_LEVEL_WARN, "warning: ", fmt, args);
	va_end(args);
}

void log_info(const char *fmt, ...)
{
	va_list args;

	va_start(args, fmt);
	log_vemit(LOG_LEVEL_INFO, "", fmt, args);
	va_end(args);
}

void log_debug(const char *fmt, ...)
{
	va_list args;

	if (!log_debug_on)
		return;
	va_start(args, fmt);
	log_vemit(LOG_LEVEL_DEBUG, "[debug] ", fmt, args);
	va_end(args);
}

void log_trace(const char *proto, char dir, const char *line, size_t len)
{
	/* Worst case every byte becomes \xNN, plus the "..." mark. */
	char buf[LOG_TRACE_MAX * 4 + sizeof("...")];
	size_t shown = len > LOG_TRACE_MAX ? LOG_TRACE_MAX : len;
	size_t out;
	char prefix[64];

	if (!log_debug_on)
		return;
	if (line == NULL)
		shown = 0;
	/* A server controls these bytes: never let it move the cursor or
	 * clear the screen of whoever reads the trace. */
	out = log_escape(buf, sizeof(buf) - 3, line ? line : "", shown);
	if (shown < len) {
		memcpy(buf + out, "...", 3);
		out += 3;
	}
	buf[out] = '\0';
	snprintf(prefix, sizeof(prefix), "[%s] %c ", proto ? proto : "?", dir);
	log_emit(LOG_LEVEL_DEBUG, prefix, buf);
}
