/* pop3-client.c: an authenticated POP3 session (see pop3-client.h).
 *
 * The parser does no I/O and the connection no buffering; this module is
 * the loop between them.  POP3 responses carry no tag and do not say
 * whether a body follows, so the client keeps a queue of the commands sent
 * and not yet answered, each with "multi-line on success", and answers are
 * matched to it in order.  Everything the server sends goes through one
 * parser, so the STLS check "nothing may follow the +OK" is just
 * pop3_parser_pending() == 0 at the right moment (CVE-2011-0411 class). */
#include "pop3-client.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "conn.h"
#include "log.h"

#define READ_CHUNK (64 * 1024)
/* RFC 2449 limits command lines to 255 octets, CRLF included; servers
 * take more, which a long password needs.  AUTH's initial response (RFC
 * 5034) is sent only when the line fits in 255, else on its own line. */
#define CMD_MAX 1024
#define AUTH_LINE_MAX 255
/* Commands in flight in a pipelined batch: a few KB of commands, far
 * below any socket buffer, so our writes never block while the server
 * waits for us to read (RFC 2449 PIPELINING's deadlock warning). */
#define BATCH_WINDOW 64
/* Lines of a CAPA/UIDL/LIST body shown in the -d trace. */
#define TRACE_BODY_LINES 20
#define TRACE_NAME "pop3"

struct pop3_cmd {
	bool multiline;
	bool trace_body; /* trace the body's lines (not for messages) */
};

struct pop3_client {
	struct conn *conn;
	struct pop3_parser *parser;
	unsigned caps;
	bool alive;
	char server[300]; /* "host:port" */
	char text[512];   /* text of the last response */
	char error[300];
	char *rbuf;
	/* Commands sent and not yet answered, oldest at head (a ring). */
	struct pop3_cmd queue[BATCH_WINDOW + 4];
	size_t q_head, q_len;
};

#define QUEUE_CAP (sizeof(((struct pop3_client *)0)->queue) / sizeof(struct pop3_cmd))

static __thread char client_error[512];

static void set_error(struct pop3_client *c, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void set_error(struct pop3_client *c, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(c->error, sizeof(c->error), fmt, ap);
	va_end(ap);
	c->alive = false;
}

unsigned pop3_client_caps(const struct pop3_client *c)
{
	return c->caps;
}

const char *pop3_client_text(const struct pop3_client *c)
{
	return c->text;
}

const char *pop3_client_error(const struct pop3_client *c)
{
	return c->error;
}

bool pop3_client_alive(const struct pop3_client *c)
{
	return c->alive;
}

const char *pop3_client_server(const struct pop3_client *c)
{
	return c->server;
}

/* ---- tracing ---- */

/* Commands are traced with the secrets cut off: PASS's argument, AUTH's
 * initial response, and a bare SASL response line (secret). */
static void trace_command(const char *line, size_t len, bool secret)
{
	if (!log_debug_enabled())
		return;
	if (secret) {
		log_trace(TRACE_NAME, '>', "<credentials redacted>", 22);
	} else if (len >= 5 && !strncasecmp(line, "PASS ", 5)) {
		log_trace(TRACE_NAME, '>', "PASS <password redacted>", 24);
	} else if (len >= 5 && !strncasecmp(line, "AUTH ", 5)) {
		const char *sp = memchr(line + 5, ' ', len - 5);
		char buf[64];
		int n = snprintf(buf, sizeof(buf), "%.*s%s",
				 (int)(sp ? sp - line : (ptrdiff_t)(len > 40 ? 40 : len)), line,
				 sp ? " <credentials redacted>" : "");

		log_trace(TRACE_NAME, '>', buf, (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
	} else {
		log_trace(TRACE_NAME, '>', line, len);
	}
}

static void trace_response(const struct pop3_cmd *cmd, const struct pop3_response *r)
{
	if (!log_debug_enabled())
		return;
	log_trace(TRACE_NAME, '<', r->line, r->line_len);
	if (!r->multiline)
		return;
	if (!cmd->trace_body) {
		char buf[64];
		int n = snprintf(buf, sizeof(buf), "(%zu bytes)", r->body_len);

		log_trace(TRACE_NAME, '<', buf, (size_t)n);
		return;
	}
	const char *p = r->body, *end = r->body + r->body_len;
	unsigned lines = 0;

	while (p < end) {
		const char *lf = memchr(p, '\n', (size_t)(end - p));
		const char *next = lf ? lf + 1 : end;
		size_t len = (size_t)((lf ? lf : end) - p);

		if (len > 0 && p[len - 1] == '\r')
			len--;
		if (lines < TRACE_BODY_LINES)
			log_trace(TRACE_NAME, '<', p, len);
		lines++;
		p = next;
	}
	if (lines > TRACE_BODY_LINES) {
		char buf[64];
		int n = snprintf(buf, sizeof(buf), "(%u more lines)", lines - TRACE_BODY_LINES);

		log_trace(TRACE_NAME, '<', buf, (size_t)n);
	}
	log_trace(TRACE_NAME, '<', ".", 1);
}

/* ---- sending and receiving ---- */

static bool verb_is(const char *line, const char *verb)
{
	size_t n = strlen(verb);

	return !strncasecmp(line, verb, n) && (line[n] == ' ' || line[n] == '\0' ||
					       line[n] == '\r');
}

static void queue_push(struct pop3_client *c, bool multiline, const char *line)
{
	struct pop3_cmd *cmd = &c->queue[(c->q_head + c->q_len) % QUEUE_CAP];

	cmd->multiline = multiline;
	cmd->trace_body = !verb_is(line, "RETR") && !verb_is(line, "TOP");
	c->q_len++;
}

/* Write buf (lines already CRLF-terminated), then wipe it: it may hold
 * a password. */
static int write_wipe(struct pop3_client *c, char *buf, size_t len)
{
	int w = conn_write(c->conn, buf, len);

	OPENSSL_cleanse(buf, len);
	if (w < 0) {
		set_error(c, "cannot send to server: %s",
			  w == -ETIMEDOUT ? "server did not read in time" : strerror(-w));
		return w;
	}
	return 0;
}

static int vsend(struct pop3_client *c, bool multiline, bool secret,
		 const char *fmt, va_list ap)
{
	char buf[CMD_MAX + 1];
	int n;

	if (!c->alive)
		return -ENOTCONN;
	if (c->q_len == QUEUE_CAP)
		return -EBUSY;
	n = vsnprintf(buf, sizeof(buf), fmt, ap);
	if (n < 0)
		return -EINVAL;
	if ((size_t)n + 2 > CMD_MAX) {
		OPENSSL_cleanse(buf, sizeof(buf));
		return -E2BIG;
	}
	trace_command(buf, (size_t)n, secret);
	if (!secret)
		queue_push(c, multiline, buf);
	memcpy(buf + n, "\r\n", 2);
	return write_wipe(c, buf, (size_t)n + 2);
}

int pop3_client_send(struct pop3_client *c, bool multiline, const char *fmt, ...)
{
	va_list ap;
	int r;

	va_start(ap, fmt);
	r = vsend(c, multiline, false, fmt, ap);
	va_end(ap);
	return r;
}

/* The next response, for a command the queue knows (pushed by send),
 * reading as needed. */
static int read_response(struct pop3_client *c, const struct pop3_response **resp_r)
{
	const char *perr;

	if (!c->alive)
		return -ENOTCONN;
	if (c->q_len == 0)
		return -EINVAL;
	const struct pop3_cmd *cmd = &c->queue[c->q_head];
	for (;;) {
		int r = pop3_parser_next(c->parser, cmd->multiline, resp_r, &perr);

		if (r == 1) {
			trace_response(cmd, *resp_r);
			c->q_head = (c->q_head + 1) % QUEUE_CAP;
			c->q_len--;
			snprintf(c->text, sizeof(c->text), "%s", (*resp_r)->text);
			return 1;
		}
		if (r < 0) {
			set_error(c, "malformed response from server: %s", perr);
			return -EPROTO;
		}
		ssize_t n = conn_read(c->conn, c->rbuf, READ_CHUNK);
		if (n == 0) {
			set_error(c, "server closed the connection%s",
				  pop3_parser_body_so_far(c->parser) ?
				  " in the middle of a message" : "");
			return -ECONNRESET;
		}
		if (n < 0) {
			set_error(c, "connection lost: %s", n == -ETIMEDOUT ?
				  "server did not answer in time" : strerror((int)-n));
			return (int)n;
		}
		if (pop3_parser_feed(c->parser, c->rbuf, (size_t)n) < 0) {
			set_error(c, "out of memory reading from server");
			return -ENOMEM;
		}
	}
}

int pop3_client_wait(struct pop3_client *c, const struct pop3_response **resp_r)
{
	const struct pop3_response *resp;
	int r = read_response(c, &resp);

	if (resp_r)
		*resp_r = r > 0 ? resp : NULL;
	if (r < 0)
		return r;
	switch (resp->status) {
	case POP3_STATUS_OK:
		return POP3_RESULT_OK;
	case POP3_STATUS_CONT:
		return POP3_RESULT_CONT;
	default:
		return POP3_RESULT_ERR;
	}
}

int pop3_client_run(struct pop3_client *c, bool multiline,
		    const struct pop3_response **resp_r, const char *fmt, ...)
{
	va_list ap;
	int r;

	va_start(ap, fmt);
	r = vsend(c, multiline, false, fmt, ap);
	va_end(ap);
	if (r < 0)
		return r;
	return pop3_client_wait(c, resp_r);
}

int pop3_client_dele(struct pop3_client *c, unsigned n)
{
	return pop3_client_run(c, false, NULL, "DELE %u", n);
}

int pop3_client_rset(struct pop3_client *c)
{
	return pop3_client_run(c, false, NULL, "RSET");
}

int pop3_client_noop(struct pop3_client *c)
{
	return pop3_client_run(c, false, NULL, "NOOP");
}

/* ---- batches ---- */

int pop3_client_batch(struct pop3_client *c, const char *verb, const char *args,
		      bool multiline, const unsigned *nums, size_t count, pop3_batch_fn *cb,
		      void *ctx)
{
	size_t window = (c->caps & POP3_CAP_PIPELINING) ? BATCH_WINDOW : 1;
	size_t sent = 0, done = 0;
	char buf[BATCH_WINDOW * 48];

	if (strlen(verb) + strlen(args) > 16)
		return -EINVAL;
	while (done < count) {
		size_t len = 0;

		/* Refill the window with one write. */
		while (sent < count && sent - done < window) {
			int n = snprintf(buf + len, sizeof(buf) - len, "%s %u%s", verb,
					 nums[sent], args);

			if (!c->alive)
				return -ENOTCONN;
			trace_command(buf + len, (size_t)n, false);
			queue_push(c, multiline, buf + len);
			memcpy(buf + len + n, "\r\n", 2);
			len += (size_t)n + 2;
			sent++;
		}
		if (len > 0) {
			int w = write_wipe(c, buf, len);

			if (w < 0)
				return w;
		}
		const struct pop3_response *resp;
		int r = pop3_client_wait(c, &resp);

		if (r < 0)
			return r;
		if (r == POP3_RESULT_CONT)
			r = POP3_RESULT_ERR;
		r = cb(ctx, done, r, resp);
		done++;
		if (r < 0) {
			if (done < sent)
				set_error(c, "stopped reading in the middle of a batch");
			return r;
		}
	}
	return 0;
}

/* ---- STAT, UIDL, LIST ---- */

/* Each line "N ARG": calls fn for each; -EPROTO on a malformed line. */
static int for_each_listing(const struct pop3_response *r,
			    int (*fn)(void *ctx, unsigned long n, const char *arg, size_t len),
			    void *ctx)
{
	const char *p = r->body, *end = r->body + r->body_len;

	while (p < end) {
		const char *lf = memchr(p, '\n', (size_t)(end - p));
		const char *next = lf ? lf + 1 : end;
		const char *le = lf ? lf : end;
		unsigned long n = 0;
		const char *q = p;

		if (le > p && le[-1] == '\r')
			le--;
		if (le == p) {
			p = next;
			continue; /* an empty line: tolerate */
		}
		while (q < le && *q >= '0' && *q <= '9' && n <= 100000000ul)
			n = n * 10 + (unsigned long)(*q++ - '0');
		if (q == p || q >= le || *q != ' ' || n == 0 || n > 100000000ul)
			return -EPROTO;
		while (q < le && *q == ' ')
			q++;
		const char *a = q;
		while (q < le && *q != ' ')
			q++;
		int ret = fn(ctx, n, a, (size_t)(q - a));
		if (ret < 0)
			return ret;
		p = next;
	}
	return 0;
}

struct scan_ctx {
	struct pop3_msg *msgs;
	size_t n, cap;
	size_t stat_count;
};

static int cmp_msg(const void *a, const void *b)
{
	const struct pop3_msg *x = a, *y = b;

	return x->n < y->n ? -1 : x->n > y->n;
}

static int scan_uidl(void *ctx, unsigned long n, const char *arg, size_t len)
{
	struct scan_ctx *sc = ctx;

	if (len == 0 || len > POP3_UIDL_MAX)
		return -EPROTO;
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)arg[i] < 0x21 || (unsigned char)arg[i] > 0x7e)
			return -EPROTO;
	if (sc->n == sc->cap) {
		size_t cap = sc->cap ? sc->cap * 2 : 256;
		struct pop3_msg *m = realloc(sc->msgs, cap * sizeof(*m));

		if (!m)
			return -ENOMEM;
		sc->msgs = m;
		sc->cap = cap;
	}
	struct pop3_msg *m = &sc->msgs[sc->n++];
	m->n = (unsigned)n;
	m->size = 0;
	m->retrieved = false;
	memcpy(m->uidl, arg, len);
	m->uidl[len] = '\0';
	return 0;
}

static int scan_list(void *ctx, unsigned long n, const char *arg, size_t len)
{
	struct scan_ctx *sc = ctx;
	struct pop3_msg key = { .n = (unsigned)n }, *m;
	uint64_t size = 0;

	if (len == 0 || len > 19)
		return -EPROTO;
	for (size_t i = 0; i < len; i++) {
		if (arg[i] < '0' || arg[i] > '9')
			return -EPROTO;
		size = size * 10 + (uint64_t)(arg[i] - '0');
	}
	m = sc->n ? bsearch(&key, sc->msgs, sc->n, sizeof(*sc->msgs), cmp_msg) : NULL;
	if (m)
		m->size = size;
	return 0;
}

int pop3_client_scan(struct pop3_client *c, struct pop3_msg **msgs_r, size_t *count_r)
{
	static const char *const cmds[] = { "STAT", "UIDL", "LIST" };
	const struct pop3_response *resp;
	struct scan_ctx sc = { 0 };
	bool pipelined = (c->caps & POP3_CAP_PIPELINING) != 0;
	int r = 0;

	*msgs_r = NULL;
	*count_r = 0;
	if (pipelined) {
		for (size_t i = 0; i < 3 && r == 0; i++)
			r = pop3_client_send(c, i > 0, "%s", cmds[i]);
		if (r < 0)
			return r;
	}
	for (size_t i = 0; i < 3; i++) {
		if (pipelined)
			r = pop3_client_wait(c, &resp);
		else
			r = pop3_client_run(c, i > 0, &resp, "%s", cmds[i]);
		if (r < 0)
			goto fail;
		if (r != POP3_RESULT_OK) {
			char text[sizeof(c->text)];

			snprintf(text, sizeof(text), "%s", c->text);
			snprintf(c->text, sizeof(c->text), "%s: %.400s", cmds[i], text);
			/* Read the answers still in flight. */
			for (size_t k = i + 1; pipelined && k < 3; k++)
				if (pop3_client_wait(c, NULL) < 0)
					break;
			r = POP3_RESULT_ERR;
			goto fail;
		}
		if (i == 0) {
			unsigned long long count = 0;

			if (sscanf(resp->text, "%llu", &count) != 1) {
				set_error(c, "malformed STAT response: %.60s", resp->text);
				r = -EPROTO;
			}
			sc.stat_count = (size_t)count;
		} else if (i == 1) {
			r = for_each_listing(resp, scan_uidl, &sc);
			if (r == -EPROTO)
				set_error(c, "malformed UIDL response from server");
			if (r == 0 && sc.n > 1)
				qsort(sc.msgs, sc.n, sizeof(*sc.msgs), cmp_msg);
			for (size_t k = 1; r == 0 && k < sc.n; k++)
				if (sc.msgs[k].n == sc.msgs[k - 1].n) {
					set_error(c, "UIDL lists message %u twice", sc.msgs[k].n);
					r = -EPROTO;
				}
		} else {
			r = for_each_listing(resp, scan_list, &sc);
			if (r == -EPROTO)
				set_error(c, "malformed LIST response from server");
		}
		if (r < 0) {
			/* The rest is in flight: the session is lost. */
			c->alive = false;
			goto fail;
		}
	}
	*msgs_r = sc.msgs;
	*count_r = sc.n;
	return 0;
fail:
	free(sc.msgs);
	return r;
}

/* ---- opening ---- */

static void free_client(struct pop3_client *c)
{
	if (!c)
		return;
	conn_close(&c->conn);
	pop3_parser_free(&c->parser);
	free(c->rbuf);
	free(c);
}

static int fail(struct pop3_client **cp, bool auth, bool *auth_failed_r,
		const char **error_r, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));
static int fail(struct pop3_client **cp, bool auth, bool *auth_failed_r,
		const char **error_r, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(client_error, sizeof(client_error), fmt, ap);
	va_end(ap);
	if (auth_failed_r)
		*auth_failed_r = auth;
	*error_r = client_error;
	free_client(*cp);
	*cp = NULL;
	return -1;
}

/* CAPA: 0 (caps set, or 0 when the server has no CAPA) or -errno. */
static int capa(struct pop3_client *c)
{
	const struct pop3_response *r;
	int ret = pop3_client_run(c, true, &r, "CAPA");

	c->caps = 0;
	if (ret < 0)
		return ret;
	if (ret != POP3_RESULT_OK)
		return 0;
	c->caps = POP3_CAP_CAPA;
	for (const char *p = r->body, *end = r->body + r->body_len; p < end;) {
		const char *lf = memchr(p, '\n', (size_t)(end - p));
		const char *le = lf ? lf : end;
		char line[256];
		size_t len = (size_t)(le - p);

		if (len >= sizeof(line))
			len = sizeof(line) - 1;
		memcpy(line, p, len);
		line[len] = '\0';
		line[strcspn(line, "\r")] = '\0';
		p = lf ? lf + 1 : end;
		if (verb_is(line, "USER"))
			c->caps |= POP3_CAP_USER;
		else if (verb_is(line, "PIPELINING"))
			c->caps |= POP3_CAP_PIPELINING;
		else if (verb_is(line, "UIDL"))
			c->caps |= POP3_CAP_UIDL;
		else if (verb_is(line, "TOP"))
			c->caps |= POP3_CAP_TOP;
		else if (verb_is(line, "STLS"))
			c->caps |= POP3_CAP_STLS;
		else if (verb_is(line, "SASL")) {
			char *save = NULL;

			for (char *w = strtok_r(line + 4, " \t", &save); w;
			     w = strtok_r(NULL, " \t", &save))
				if (!strcasecmp(w, "PLAIN"))
					c->caps |= POP3_CAP_SASL_PLAIN;
		}
	}
	return 0;
}

/* SASL PLAIN: base64("\0user\0password"), wiped by the caller. */
static char *sasl_plain(const char *user, const char *password)
{
	size_t ul = strlen(user), pl = strlen(password);
	size_t rawlen = ul + pl + 2;
	unsigned char *raw = malloc(rawlen);
	char *b64 = malloc(4 * ((rawlen + 2) / 3) + 1);

	if (!raw || !b64) {
		free(raw);
		free(b64);
		return NULL;
	}
	raw[0] = '\0';
	memcpy(raw + 1, user, ul);
	raw[ul + 1] = '\0';
	memcpy(raw + ul + 2, password, pl);
	EVP_EncodeBlock((unsigned char *)b64, raw, (int)rawlen);
	OPENSSL_cleanse(raw, rawlen);
	free(raw);
	return b64;
}

static int send_secret(struct pop3_client *c, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static int send_secret(struct pop3_client *c, const char *fmt, ...)
{
	va_list ap;
	int r;

	va_start(ap, fmt);
	r = vsend(c, false, true, fmt, ap);
	va_end(ap);
	return r;
}

/* A pop3_result, or -errno; -ENOTSUP when there is no way to log in. */
static int authenticate(struct pop3_client *c, const struct pop3_client_opts *o)
{
	int r;

	if (c->caps & POP3_CAP_SASL_PLAIN) {
		char *b64 = sasl_plain(o->url->user, o->password);
		size_t len;

		if (!b64)
			return -ENOMEM;
		len = strlen(b64);
		if (len + sizeof("AUTH PLAIN \r\n") - 1 <= AUTH_LINE_MAX) {
			r = pop3_client_run(c, false, NULL, "AUTH PLAIN %s", b64);
		} else {
			/* Too long for one line: wait for the "+ ". */
			r = pop3_client_run(c, false, NULL, "AUTH PLAIN");
			if (r == POP3_RESULT_CONT) {
				/* The answer to AUTH is still to come. */
				queue_push(c, false, "AUTH");
				r = len + 2 <= CMD_MAX ? send_secret(c, "%s", b64) : -E2BIG;
				if (r == 0)
					r = pop3_client_wait(c, NULL);
			}
		}
		OPENSSL_cleanse(b64, len);
		free(b64);
		if (r == POP3_RESULT_CONT) {
			/* A challenge where none belongs: cancel (RFC 5034). */
			queue_push(c, false, "AUTH");
			if (send_secret(c, "*") == 0)
				pop3_client_wait(c, NULL);
			return POP3_RESULT_ERR;
		}
		return r;
	}
	if ((c->caps & POP3_CAP_CAPA) && !(c->caps & POP3_CAP_USER))
		return -ENOTSUP;
	r = pop3_client_run(c, false, NULL, "USER %s", o->url->user);
	if (r != POP3_RESULT_OK)
		return r < 0 ? r : POP3_RESULT_ERR;
	r = pop3_client_run(c, false, NULL, "PASS %s", o->password);
	return r == POP3_RESULT_CONT ? POP3_RESULT_ERR : r;
}

int pop3_client_open(struct pop3_client **client_r,
		     const struct pop3_client_opts *o, bool *auth_failed_r,
		     const char **error_r)
{
	struct pop3_client *c = calloc(1, sizeof(*c));
	struct conn_opts co = {
		.host = o->url->host,
		.port = o->url->port,
		.implicit_tls = o->url->implicit_tls,
		.cafile = o->cafile,
		.insecure = o->insecure,
		.io_timeout_ms = o->io_timeout_ms,
	};
	const struct pop3_response *resp;
	const char *err, *host = o->url->host;
	int r;

	*client_r = NULL;
	if (auth_failed_r)
		*auth_failed_r = false;
	if (!c)
		return fail(&c, false, auth_failed_r, error_r, "out of memory");
	c->rbuf = malloc(READ_CHUNK);
	c->parser = pop3_parser_new(NULL);
	c->alive = true;
	snprintf(c->server, sizeof(c->server), "%s:%d", host, o->url->port);
	if (!c->rbuf || !c->parser)
		return fail(&c, false, auth_failed_r, error_r, "out of memory");
	if (strpbrk(o->url->user, "\r\n") || strpbrk(o->password, "\r\n"))
		return fail(&c, false, auth_failed_r, error_r,
			    "the user name or password contains a line break; POP3 cannot send it");
	if (conn_open(&c->conn, &co, &err) < 0)
		return fail(&c, false, auth_failed_r, error_r, "%s", err);

	/* The greeting answers no command; queue it like one. */
	queue_push(c, false, "");
	r = pop3_client_wait(c, &resp);
	if (r < 0)
		return fail(&c, false, auth_failed_r, error_r, "%s: no POP3 greeting: %s",
			    c->server, c->error);
	if (r != POP3_RESULT_OK)
		return fail(&c, false, auth_failed_r, error_r,
			    "%s does not greet like a POP3 server (%s)", c->server,
			    c->text[0] ? c->text : "bad greeting");
	if ((r = capa(c)) < 0)
		return fail(&c, false, auth_failed_r, error_r, "%s: CAPA failed: %s",
			    c->server, c->error);

	if (!o->url->implicit_tls) {
		bool try_stls = (c->caps & POP3_CAP_STLS) ||
				(!(c->caps & POP3_CAP_CAPA) && !o->insecure);

		if (!try_stls && !o->insecure)
			return fail(&c, false, auth_failed_r, error_r,
				    "%s does not offer STLS; refusing to send the password in plaintext (use pop3s://, or -o insecure)",
				    host);
		if (try_stls) {
			r = pop3_client_run(c, false, NULL, "STLS");
			if (r < 0)
				return fail(&c, false, auth_failed_r, error_r, "%s: STLS failed: %s",
					    host, c->error);
			if (r != POP3_RESULT_OK && !o->insecure)
				return fail(&c, false, auth_failed_r, error_r,
					    "%s does not offer STLS (%s); refusing to send the password in plaintext (use pop3s://, or -o insecure)",
					    host, c->text);
		}
		if (try_stls && r == POP3_RESULT_OK) {
			/* Anything the server sent after its +OK was sent
			 * in plaintext and could be an attacker's. */
			if (pop3_parser_pending(c->parser) > 0)
				return fail(&c, false, auth_failed_r, error_r,
					    "%s: data injected after STLS; aborting the connection",
					    host);
			if (conn_starttls(c->conn, &err) < 0)
				return fail(&c, false, auth_failed_r, error_r, "%s", err);
			/* Capabilities from before TLS are not to be trusted. */
			if ((r = capa(c)) < 0)
				return fail(&c, false, auth_failed_r, error_r, "%s: CAPA failed: %s",
					    host, c->error);
		}
	}

	r = authenticate(c, o);
	if (r == -ENOTSUP)
		return fail(&c, false, auth_failed_r, error_r,
			    "%s offers neither USER/PASS nor SASL PLAIN; mailfs cannot log in",
			    host);
	if (r < 0)
		return fail(&c, false, auth_failed_r, error_r, "%s: login failed: %s",
			    host, c->error[0] ? c->error : strerror(-r));
	if (r != POP3_RESULT_OK) {
		/* RFC 3206: [IN-USE] and [SYS/...] are not about the password. */
		if (!strncasecmp(c->text, "[IN-USE]", 8))
			return fail(&c, false, auth_failed_r, error_r,
				    "the maildrop of %s at %s is in use by another POP3 session (%s); try again later",
				    o->url->user, host, c->text);
		if (!strncasecmp(c->text, "[SYS/", 5))
			return fail(&c, false, auth_failed_r, error_r,
				    "login as %s at %s failed on the server's side: %s; try again later",
				    o->url->user, host, c->text);
		return fail(&c, true, auth_failed_r, error_r,
			    "login as %s at %s refused: %s (check the password)",
			    o->url->user, host, c->text);
	}
	/* RFC 2449: capabilities may change after login. */
	if ((c->caps & POP3_CAP_CAPA) && (r = capa(c)) < 0)
		return fail(&c, false, auth_failed_r, error_r, "%s: CAPA failed: %s",
			    host, c->error);
	if ((c->caps & POP3_CAP_CAPA) && !(c->caps & POP3_CAP_UIDL))
		return fail(&c, false, auth_failed_r, error_r,
			    "%s does not support UIDL; mailfs needs it to read each message once",
			    host);
	*client_r = c;
	return 0;
}

void pop3_client_close(struct pop3_client **cp)
{
	free_client(*cp);
	*cp = NULL;
}

int pop3_client_quit(struct pop3_client **cp)
{
	struct pop3_client *c = *cp;
	int r;

	if (!c)
		return -ENOTCONN;
	/* Answers still in flight come first. */
	while (c->alive && c->q_len > 0)
		if (pop3_client_wait(c, NULL) < 0)
			break;
	r = pop3_client_run(c, false, NULL, "QUIT");
	free_client(c);
	*cp = NULL;
	return r;
}
