/* log.h: diagnostics for the whole program.
 *
 * Before daemonizing messages go to stderr; after log_to_syslog() they go to
 * syslog (stderr is /dev/null then).  log_debug() and protocol traces are
 * printed only with -d.  Callers redact secrets before logging: nothing here
 * knows what a password looks like. */
#ifndef MAILFS_LOG_H
#define MAILFS_LOG_H

#include <stdbool.h>
#include <stddef.h>

#define LOG_PRINTF(a, b) __attribute__((format(printf, a, b)))

/* debug: print debug messages and protocol traces (-d). */
void log_init(bool debug);
/* Send further messages to syslog (ident "mailfs") as well as stderr when
 * stderr is still a terminal or file. */
void log_to_syslog(void);
bool log_debug_enabled(void);

void log_error(const char *fmt, ...) LOG_PRINTF(1, 2);
void log_warn(const char *fmt, ...) LOG_PRINTF(1, 2);
void log_info(const char *fmt, ...) LOG_PRINTF(1, 2);
void log_debug(const char *fmt, ...) LOG_PRINTF(1, 2);

/* Messages are shown with control bytes escaped as \xNN (C0 but tab, DEL,
 * and UTF-8 C1): a server's text must not steer the terminal.  The same for
 * a caller's own copy of such text: len bytes of src into dst (size > 0,
 * always terminated, cut to fit); returns the length written. */
size_t log_escape(char *dst, size_t size, const char *src, size_t len);

/* Protocol trace of one line (without CRLF) sent (dir '>') or received
 * ('<'), printed only with -d; non-printable bytes are escaped and lines
 * longer than 300 bytes are cut with a "..." mark. */
void log_trace(const char *proto, char dir, const char *line, size_t len);

#endif
