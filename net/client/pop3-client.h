/* pop3-client.h: one authenticated POP3 session over one connection.
 *
 * Opens the connection (implicit TLS for pop3s, else STLS, which is then
 * required unless insecure), reads the greeting, learns the capabilities
 * (CAPA, RFC 2449), authenticates (AUTH PLAIN with an initial response,
 * RFC 5034, where SASL PLAIN is offered, else USER/PASS), and then runs
 * commands.  Commands are pipelined when the server offers PIPELINING:
 * pop3_client_send() writes a command and returns at once,
 * pop3_client_wait() reads the response of the oldest command not yet
 * answered; without PIPELINING each send must be followed by its wait.
 * pop3_client_batch() does that bookkeeping for "TOP n 0", "RETR n" or
 * "DELE n" over many messages, keeping a bounded window of commands in
 * flight.
 *
 * Deletions (DELE) only take effect at pop3_client_quit(), when the
 * server answers +OK to QUIT; pop3_client_close() drops the session
 * without QUIT, which undoes them.
 *
 * A client is owned by one thread at a time.  With -d every line is traced
 * as "pop3" (PASS and AUTH credentials redacted, message contents shown as
 * their size only). */
#ifndef MAILFS_POP3_CLIENT_H
#define MAILFS_POP3_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pop3-parser.h"
#include "url.h"

#define POP3_CAP_CAPA       (1u << 0) /* the server answered CAPA */
#define POP3_CAP_USER       (1u << 1)
#define POP3_CAP_SASL_PLAIN (1u << 2)
#define POP3_CAP_PIPELINING (1u << 3)
#define POP3_CAP_UIDL       (1u << 4)
#define POP3_CAP_TOP        (1u << 5)
#define POP3_CAP_STLS       (1u << 6)

/* RFC 1939 allows 70 characters in a unique-id. */
#define POP3_UIDL_MAX 70

struct pop3_client_opts {
	const struct url *url;
	const char *password;
	const char *cafile;
	bool insecure;
	int io_timeout_ms; /* 0: 60 s */
};

/* Result of a command: the response's status, or a negative errno when
 * the connection failed (-ETIMEDOUT, -ECONNRESET, -EPROTO for a protocol
 * violation, -ENOTCONN once dead; then pop3_client_error() says what). */
enum pop3_result {
	POP3_RESULT_OK = 0,
	POP3_RESULT_ERR = 1,
	POP3_RESULT_CONT = 2, /* "+ " SASL continuation (only after AUTH) */
};

/* One message of the maildrop, from UIDL and LIST. */
struct pop3_msg {
	unsigned n;       /* message number in this session, 1.. */
	uint64_t size;    /* octets, as LIST reports them */
	char uidl[POP3_UIDL_MAX + 1];
	bool retrieved;   /* the caller's: RETR'd in this session */
};

struct pop3_client;

/* Connect and authenticate.  0, or -1 with *error_r: one line for the
 * user (connection and TLS errors come from conn.h; "login as alice at
 * HOST refused: <server text> (check the password)", "HOST does not offer
 * STLS; refusing to send the password in plaintext (use pop3s://, or -o
 * insecure)", "HOST does not support UIDL; mailfs needs it to read each
 * message once", ...).  The message lives until the next call in this
 * thread.  *auth_failed_r (may be NULL) tells an authentication refusal
 * from other failures. */
int pop3_client_open(struct pop3_client **client_r,
		     const struct pop3_client_opts *opts, bool *auth_failed_r,
		     const char **error_r);

/* Drop the session without QUIT (DELEs are undone), close, free;
 * NULL-safe, sets *client to NULL. */
void pop3_client_close(struct pop3_client **client);

/* QUIT: the server commits the DELEs and ends the session.  Returns 0 when
 * it answered +OK (every DELE took effect), POP3_RESULT_ERR when it said
 * -ERR (some may not have), or a negative errno; the client is freed and
 * *client set to NULL in every case. */
int pop3_client_quit(struct pop3_client **client);

unsigned pop3_client_caps(const struct pop3_client *client);
/* The text of the last response read ("" if none). */
const char *pop3_client_text(const struct pop3_client *client);
/* What broke the connection, for logs ("" if nothing). */
const char *pop3_client_error(const struct pop3_client *client);
/* Is the connection still usable? */
bool pop3_client_alive(const struct pop3_client *client);
/* The server, "HOST:PORT", for messages. */
const char *pop3_client_server(const struct pop3_client *client);

/* Write one command line (the formatted text + CRLF) whose response is
 * multi-line on success when multiline.  0 or a negative errno.  Without
 * PIPELINING, wait for the response before the next send. */
int pop3_client_send(struct pop3_client *client, bool multiline,
		     const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Read the response to the oldest command sent and not yet answered.
 * Returns a pop3_result (*resp_r set, valid until the next wait on this
 * client) or a negative errno. */
int pop3_client_wait(struct pop3_client *client,
		     const struct pop3_response **resp_r);

/* Send and wait in one go; resp_r may be NULL. */
int pop3_client_run(struct pop3_client *client, bool multiline,
		    const struct pop3_response **resp_r, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* STAT, then UIDL and LIST for the whole maildrop (pipelined where
 * offered): every message with its number, size and unique-id, ordered
 * by number.  *msgs_r is the caller's (free()).  A UIDL that is empty,
 * too long or not printable ASCII is refused as a protocol error.
 * Returns 0, POP3_RESULT_ERR when the server refused one of them
 * (pop3_client_text() is then "UIDL: <server text>" or the like), or a
 * negative errno. */
int pop3_client_scan(struct pop3_client *client, struct pop3_msg **msgs_r,
		     size_t *count_r);

/* For each of the count message numbers, in order: send "VERB n" + args
 * (e.g. "RETR" and "", "TOP" and " 0", "DELE" and ""), whose answer is
 * multi-line when multiline, keeping at most a window of commands in
 * flight (one without PIPELINING), and call cb with the index into nums and
 * the result (POP3_RESULT_OK / _ERR) and response as each arrives.  cb
 * returns 0 to go on, or a negative errno to stop (the session is then
 * unusable: answers are still in flight).  Returns 0 when every response
 * arrived, or the first negative errno. */
typedef int pop3_batch_fn(void *ctx, size_t index, int result,
			  const struct pop3_response *resp);
int pop3_client_batch(struct pop3_client *client, const char *verb,
		      const char *args, bool multiline, const unsigned *nums,
		      size_t count, pop3_batch_fn *cb, void *ctx);

/* DELE n.  A pop3_result or a negative errno. */
int pop3_client_dele(struct pop3_client *client, unsigned n);
/* RSET: undo the DELEs of this session. */
int pop3_client_rset(struct pop3_client *client);
/* NOOP: is the session still there? */
int pop3_client_noop(struct pop3_client *client);

#endif
