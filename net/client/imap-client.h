/* imap-client.h: one authenticated IMAP session over one connection.
 *
 * Opens the connection (implicit TLS, or STARTTLS which is then required),
 * reads the greeting, learns the capabilities, authenticates (AUTHENTICATE
 * PLAIN with SASL-IR where offered, else LOGIN), and then runs commands.
 * Commands are pipelined: imap_client_send() writes a command and returns
 * its tag at once; imap_client_wait() reads responses, handing untagged ones
 * to a callback, until that tag completes.  Send many, then wait for each
 * in order.
 *
 * Nothing waits without a bound.  Each read waits at most io_timeout_ms
 * for its first byte, and each command as a whole (the greeting and each
 * login step too) must end within 60 s plus 1 s per 16 KiB it moves, sent
 * (an APPEND's message) or received (a long answer earns its time; a
 * server trickling short lines does not): past that it fails with
 * -ETIME (the server answers, too slowly; -ETIMEDOUT is a silent one) and
 * the connection is dropped.  A caller that knows how much
 * comes back fixes the bound itself with imap_client_set_deadline().  An
 * IDLE waits as long as it likes for the server to speak; a response that
 * has begun is bounded like a command.  For tests only, the environment
 * variable MAILFS_TEST_TIMEOUT_SCALE (a factor in (0, 1]) shortens the
 * read timeout and all these deadlines.
 *
 * A client is owned by one thread at a time.  With -d every line is traced
 * (LOGIN and AUTHENTICATE arguments redacted, literal contents elided). */
#ifndef MAILFS_IMAP_CLIENT_H
#define MAILFS_IMAP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "imap-parser.h"
#include "url.h"

#define IMAP_CAP_LITERALPLUS   (1u << 0)
#define IMAP_CAP_SASL_IR       (1u << 1)
#define IMAP_CAP_AUTH_PLAIN    (1u << 2)
#define IMAP_CAP_LOGINDISABLED (1u << 3)
#define IMAP_CAP_STARTTLS      (1u << 4)
#define IMAP_CAP_UIDPLUS       (1u << 5)
#define IMAP_CAP_MOVE          (1u << 6)
#define IMAP_CAP_CONDSTORE     (1u << 7)
#define IMAP_CAP_QRESYNC       (1u << 8)
#define IMAP_CAP_IDLE          (1u << 9)
#define IMAP_CAP_SPECIAL_USE   (1u << 10)
#define IMAP_CAP_ENABLE        (1u << 11)
#define IMAP_CAP_ESEARCH       (1u << 12)
#define IMAP_CAP_LITERALMINUS  (1u << 13)
#define IMAP_CAP_IMAP4REV1     (1u << 14)
#define IMAP_CAP_UNSELECT      (1u << 15)

struct imap_client_opts {
	const struct url *url;
	const char *password;
	const char *cafile;
	bool insecure;
	int io_timeout_ms;     /* each read and write; 0: 30 s */
	const char *trace_name; /* "imap", "imap2", ... for -d traces */
};

/* Result of a command. */
enum imap_result {
	IMAP_RESULT_OK = 0,
	IMAP_RESULT_NO = 1,
	IMAP_RESULT_BAD = 2,
};

struct imap_client;

/* Connect and authenticate.  0, or -1 with *error_r: one line for the user
 * (connection and TLS errors come from conn.h; "login to HOST refused:
 * <server text>", "HOST does not offer STARTTLS; refusing to send the
 * password in plaintext (use imaps:// or -o insecure)", ...).  The message
 * lives until the next call in this thread.  *auth_failed_r (may be NULL)
 * tells an authentication refusal from other failures. */
int imap_client_open(struct imap_client **client_r,
		     const struct imap_client_opts *opts, bool *auth_failed_r,
		     const char **error_r);

/* LOGOUT (best effort, short timeout), close and free; NULL-safe. */
void imap_client_close(struct imap_client **client);

unsigned imap_client_caps(const struct imap_client *client);

/* ENABLE the extensions given (e.g. "QRESYNC") if the server has ENABLE;
 * returns 0 or a negative errno on connection failure. */
int imap_client_enable(struct imap_client *client, const char *exts);

/* Untagged responses while waiting.  The response is valid only during
 * the call. */
typedef void imap_untagged_fn(void *ctx, const struct imap_response *resp);

/* Write one command: "TAG " + the formatted text + CRLF.  Use %s only with
 * atoms or strings made by imap_quote().  Returns the tag number (> 0), or a
 * negative errno when the connection failed. */
int imap_client_send(struct imap_client *client, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Read until command `tag` completes, passing untagged responses to cb (may
 * be NULL).  Pipelined commands may complete in any order: a completion
 * for another sent tag is kept for its own wait, but untagged responses go
 * to whichever callback is waiting, so pipeline only commands one callback
 * can handle.  Returns an imap_result (>= 0) or a negative errno when
 * the connection failed (-ETIMEDOUT, -ETIME past the deadline, -ECONNRESET,
 * -EPROTO for a protocol
 * violation, ...).  After a result other than OK, imap_client_text() is the
 * server's text; after a failure, imap_client_error() says what broke. */
int imap_client_wait(struct imap_client *client, int tag,
		     imap_untagged_fn *cb, void *ctx);

/* For IDLE: the next response, waiting at most timeout_ms.  1 with
 * *resp_r (valid until the next call), 0 on timeout, or a negative errno
 * when the connection failed. */
int imap_client_poll(struct imap_client *client, int timeout_ms,
		     const struct imap_response **resp_r);
/* Send one untagged line (IDLE's "DONE"). 0 or a negative errno. */
int imap_client_raw(struct imap_client *client, const char *line);

/* Bound the total time of what follows (commands sent, waits, writes)
 * by this many seconds instead of each command's own deadline, until
 * cleared with 0: a wait that passes it fails with -ETIME (and the
 * connection is dropped). */
void imap_client_set_deadline(struct imap_client *client, int seconds);

/* Send and wait in one go. */
int imap_client_run(struct imap_client *client, imap_untagged_fn *cb,
		    void *ctx, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* The free text of the last tagged completion ("" if none). */
const char *imap_client_text(const struct imap_client *client);
/* The response code atom of the last tagged completion, e.g.
 * "OVERQUOTA", "NONEXISTENT", "TRYCREATE" ("" if none); and its code
 * arguments (for COPYUID / APPENDUID). */
const char *imap_client_code(const struct imap_client *client);
/* The response code's arguments after the atom, space-separated (atoms
 * only), e.g. "38505 304 3956" for [COPYUID 38505 304 3956]. */
const char *imap_client_code_args(const struct imap_client *client);
/* The same for any response (for codes in untagged OK responses). */
void imap_code_args(const struct imap_response *resp, char *buf, size_t size);

/* Send "TAG prefix {len}" CRLF data suffix CRLF, with LITERAL+ when the
 * server has it, else waiting for the continuation, with untagged
 * responses meanwhile going to cb (may be NULL).  A server may refuse
 * instead of "+" (NO [OVERQUOTA], [TRYCREATE], [TOOBIG]): the data is then
 * not sent, the connection stays usable, and the refusal is the command's
 * result.  Returns the tag or a negative errno; wait for it with
 * imap_client_wait(), which gives the result either way. */
int imap_client_send_literal(struct imap_client *client, const char *prefix,
			     const void *data, size_t len, const char *suffix,
			     imap_untagged_fn *cb, void *ctx);

/* What broke the connection, for logs ("" if nothing). */
const char *imap_client_error(const struct imap_client *client);
/* Is the connection still usable? */
bool imap_client_alive(const struct imap_client *client);

/* A new string with s as an IMAP quoted string ("..." with \ escapes), or
 * NULL when s has CR, LF or NUL (callers then must use a literal). */
char *imap_quote(const char *s);

#endif
