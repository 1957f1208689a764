/* conn.h: one network connection to a mail server: TCP, then TLS.
 *
 * TLS is OpenSSL with certificate and hostname (or IP) verification against
 * the system store plus an optional CA file, SNI, TLS 1.2 minimum.  Every
 * connect, handshake, read and write has a timeout, so no caller hangs on a
 * dead server.  The connection does no buffering of its own: the protocol
 * clients above keep their input buffers, and that is where the STARTTLS
 * injection check (no bytes after the server's "go ahead") belongs.
 *
 * The program must ignore SIGPIPE (main does): OpenSSL writes with write().
 * After a failed conn_starttls() or any fatal TLS error the only valid call
 * is conn_close(): there is never a fallback to plaintext.  Name resolution
 * is bounded by the resolver's own settings, not by connect_timeout_ms.
 *
 * A conn is owned by one thread at a time. */
#ifndef MAILFS_CONN_H
#define MAILFS_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct conn;

struct conn_opts {
	const char *host;
	int port;
	bool implicit_tls;      /* TLS right after connect (imaps, pop3s) */
	const char *cafile;     /* extra trust anchor (PEM); NULL for none */
	bool insecure;          /* no certificate verification at all */
	int connect_timeout_ms; /* 0: 15000 */
	int io_timeout_ms;      /* each read/write; 0: 60000 */
};

/* Resolve, connect (trying each address), and with implicit_tls do the
 * handshake.  Returns 0 or -1 with *error_r, a one-line message naming the
 * host and what to do, e.g.
 *   "cannot resolve mail.example.com: Name or service not known"
 *   "cannot connect to 127.0.0.1:993: Connection refused"
 *   "TLS certificate of 127.0.0.1 is not trusted: self-signed certificate
 *    (use -o cafile=FILE to trust it)"
 *   "TLS certificate does not match mail.example.com: it is for
 *    other.example (connect to that name instead)"
 * The TLS handshake is bounded by connect_timeout_ms.  The message stays
 * valid until the next conn_* call in this thread. */
/* Did the last conn_open() on this thread fail to reach the server at all
 * (name resolution, connect), as opposed to failing TLS or later? */
bool conn_failed_on_network(void);

int conn_open(struct conn **conn_r, const struct conn_opts *opts,
	      const char **error_r);

/* Upgrade a plaintext connection to TLS (after STARTTLS/STLS was
 * accepted), verifying as conn_open does.  0 or -1 with *error_r. */
int conn_starttls(struct conn *conn, const char **error_r);

bool conn_is_tls(const struct conn *conn);

/* Read at most len bytes, waiting at most io_timeout_ms for the first one.
 * Returns the count (>0), 0 at orderly EOF, or -errno: -ETIMEDOUT,
 * -ECONNRESET, -EPROTO (TLS failure), ... */
ssize_t conn_read(struct conn *conn, void *buf, size_t len);

/* Write everything or fail: 0 or -errno (-ETIMEDOUT after io_timeout_ms
 * without progress). */
int conn_write(struct conn *conn, const void *buf, size_t len);

/* Is input ready without blocking (TLS-buffered bytes included)? */
bool conn_has_input(struct conn *conn);

/* The socket, for poll() by an owner that multiplexes (IDLE). */
int conn_fd(const struct conn *conn);

/* Wait up to timeout_ms for the socket to be readable (IDLE): >0 ready,
 * 0 timeout, -ECANCELED after conn_cancel_all, or -errno. */
int conn_wait_input(struct conn *conn, int timeout_ms);

/* The process is stopping: every wait of every conn, now and later, fails
 * at once with -ECANCELED (connect, handshake, read, write, LOGOUT). */
void conn_cancel_all(void);

/* Change the timeout of each read and write (e.g. longer while IDLE). */
void conn_set_io_timeout(struct conn *conn, int ms);

/* No read or write waits past this CLOCK_MONOTONIC time in ms (0: no
 * limit): a peer that trickles bytes resets the I/O timeout with each
 * one, never this.  It fails with -ETIMEDOUT like the I/O timeout. */
void conn_set_deadline(struct conn *conn, int64_t monotonic_ms);

/* Shut down TLS politely if possible, close, free, set *conn to NULL. */
void conn_close(struct conn **conn);

/* Last error text of this thread's most recent failed call. */
const char *conn_last_error(void);

#endif
