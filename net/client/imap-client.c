/* imap-client.c: an authenticated IMAP session (see imap-client.h).
 *
 * The parser does no I/O and the connection no buffering; this module is
 * the loop between them.  Everything the server sends is read through one
 * parser, so the STARTTLS check "nothing may follow the tagged OK" is just
 * imap_parser_pending() == 0 at the right moment (CVE-2011-0411 class). */
#include "imap-client.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <poll.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "conn.h"
#include "log.h"

#define READ_CHUNK (64 * 1024)
/* Each command's deadline (imap-client.h): a base, plus a second for each
 * CMD_RATE bytes it moves either way. */
#define CMD_BASE_S 60
#define CMD_RATE (16 * 1024)
#define IO_TIMEOUT_MS 30000
#define IMAP_MAX_LITERAL (256u << 20)
#define CMD_MAX (64 * 1024)

/* A completion that arrived while waiting for another command: servers
 * may finish pipelined commands in any order (RFC 3501 5.5). */
struct early_done {
	int tag;
	int result;
	char text[512];
	char code[64];
	char code_args[256];
};

#define EARLY_MAX 32

struct imap_client {
	struct conn *conn;
	struct early_done early[EARLY_MAX];
	size_t nearly;
	struct imap_parser *parser;
	unsigned caps;
	int next_tag;
	bool alive;
	char trace_name[16];
	char text[512];  /* free text of the last tagged completion */
	char code[64];   /* its response code atom */
	char code_args[256]; /* the code's other arguments, space-separated */
	char error[256];
	char *rbuf;
	int64_t deadline; /* monotonic ms by which the command must end, 0: none */
	int64_t deadline_start; /* when it was set, for the message */
	bool deadline_fixed; /* set by imap_client_set_deadline(), not per command */
	double scale; /* MAILFS_TEST_TIMEOUT_SCALE, else 1 */
};

static int64_t monotonic_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Test knob (tests/integration/test_hostile.py): MAILFS_TEST_TIMEOUT_SCALE
 * in (0, 1] multiplies the per-read timeout and every deadline, so that a
 * test can show a bound in seconds rather than minutes.  It can only make
 * them shorter: anything else is ignored. */
static double timeout_scale(void)
{
	const char *v = getenv("MAILFS_TEST_TIMEOUT_SCALE");
	char *end;
	double x;

	if (!v || !*v)
		return 1;
	x = strtod(v, &end);
	return *end == '\0' && x > 0 && x <= 1 ? x : 1;
}

static void set_deadline_ms(struct imap_client *c, int64_t ms)
{
	c->deadline_start = monotonic_ms();
	c->deadline = ms > 0 ? c->deadline_start + ms : 0;
	if (c->conn)
		conn_set_deadline(c->conn, c->deadline);
}

void imap_client_set_deadline(struct imap_client *c, int seconds)
{
	c->deadline_fixed = seconds > 0;
	set_deadline_ms(c, seconds > 0 ? (int64_t)(seconds * 1000 * c->scale) : 0);
}

/* A command starts (or the greeting is awaited): its own deadline, sized
 * to the bytes it sends, unless the caller fixed one. */
static void arm_deadline(struct imap_client *c, size_t bytes)
{
	if (c->deadline_fixed)
		return;
	set_deadline_ms(c, (int64_t)((CMD_BASE_S * 1000 + (double)bytes * 1000 / CMD_RATE) *
				     c->scale));
}

/* Bytes received move the deadline of a command on, at CMD_RATE: a long
 * answer (a SELECT's QRESYNC flood, a huge SEARCH) may take its time, a
 * trickle of short lines may not. */
static void extend_deadline(struct imap_client *c, size_t bytes)
{
	if (c->deadline_fixed || !c->deadline)
		return;
	c->deadline += (int64_t)((double)bytes * 1000 / CMD_RATE * c->scale);
	conn_set_deadline(c->conn, c->deadline);
}

static bool deadline_passed(const struct imap_client *c)
{
	return c->deadline && monotonic_ms() >= c->deadline;
}

static __thread char client_error[512];

/* A server's free text as this module hands it out (imap_client_text(),
 * error lines): its control bytes escaped, so that no caller can print an
 * escape sequence the server chose (AUDIT D2).  Returns dst. */
static char *server_text(char *dst, size_t size, const char *text)
{
	log_escape(dst, size, text ? text : "", text ? strlen(text) : 0);
	return dst;
}

static void set_error(struct imap_client *c, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void set_error(struct imap_client *c, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(c->error, sizeof(c->error), fmt, ap);
	va_end(ap);
	c->alive = false;
}

unsigned imap_client_caps(const struct imap_client *c)
{
	return c->caps;
}

const char *imap_client_text(const struct imap_client *c)
{
	return c->text;
}

const char *imap_client_code(const struct imap_client *c)
{
	return c->code;
}

const char *imap_client_error(const struct imap_client *c)
{
	return c->error;
}

bool imap_client_alive(const struct imap_client *c)
{
	return c->alive;
}

static const struct {
	const char *name;
	unsigned bit;
} cap_names[] = {
	{ "LITERAL+", IMAP_CAP_LITERALPLUS },
	{ "LITERAL-", IMAP_CAP_LITERALMINUS },
	{ "SASL-IR", IMAP_CAP_SASL_IR },
	{ "AUTH=PLAIN", IMAP_CAP_AUTH_PLAIN },
	{ "LOGINDISABLED", IMAP_CAP_LOGINDISABLED },
	{ "STARTTLS", IMAP_CAP_STARTTLS },
	{ "UIDPLUS", IMAP_CAP_UIDPLUS },
	{ "MOVE", IMAP_CAP_MOVE },
	{ "CONDSTORE", IMAP_CAP_CONDSTORE },
	{ "QRESYNC", IMAP_CAP_QRESYNC },
	{ "IDLE", IMAP_CAP_IDLE },
	{ "SPECIAL-USE", IMAP_CAP_SPECIAL_USE },
	{ "ENABLE", IMAP_CAP_ENABLE },
	{ "ESEARCH", IMAP_CAP_ESEARCH },
	{ "IMAP4rev1", IMAP_CAP_IMAP4REV1 },
	{ "UNSELECT", IMAP_CAP_UNSELECT },
};

/* Capabilities come as a list of atoms, either in "* CAPABILITY ..." or
 * in a [CAPABILITY ...] response code. */
static void parse_caps(struct imap_client *c, const struct imap_arg *args,
		       size_t n)
{
	c->caps = 0;
	for (size_t i = 0; i < n; i++)
		for (size_t k = 0; k < sizeof(cap_names) / sizeof(cap_names[0]); k++)
			if (imap_arg_atom_is(&args[i], cap_names[k].name))
				c->caps |= cap_names[k].bit;
}

/* CAPABILITY wherever it appears updates what we know. */
static void note_caps(struct imap_client *c, const struct imap_response *r)
{
	if (r->code_count > 0 && imap_arg_atom_is(&r->code[0], "CAPABILITY"))
		parse_caps(c, r->code + 1, r->code_count - 1);
	else if (r->args_count > 0 && imap_arg_atom_is(&r->args[0], "CAPABILITY"))
		parse_caps(c, r->args + 1, r->args_count - 1);
}

/* A short human form of a response for the -d trace: literals are shown
 * as their size only, never their content. */
static void trace_arg(char *buf, size_t size, size_t *pos, const struct imap_arg *a,
		      int depth)
{
	int n = 0;

	if (*pos >= size - 1)
		return;
	switch (a->type) {
	case IMAP_ARG_ATOM:
		n = snprintf(buf + *pos, size - *pos, "%.*s", (int)(a->len > 200 ? 200 : a->len), a->v.str);
		break;
	case IMAP_ARG_STRING:
		n = snprintf(buf + *pos, size - *pos, "\"%.*s\"", (int)(a->len > 200 ? 200 : a->len), a->v.str);
		break;
	case IMAP_ARG_LITERAL:
		n = snprintf(buf + *pos, size - *pos, "{%zu bytes}", a->len);
		break;
	case IMAP_ARG_NIL:
		n = snprintf(buf + *pos, size - *pos, "NIL");
		break;
	case IMAP_ARG_LIST:
		n = snprintf(buf + *pos, size - *pos, "(");
		if (n > 0)
			*pos = *pos + (size_t)n >= size ? size - 1 : *pos + (size_t)n;
		for (size_t i = 0; i < a->len && depth < 8; i++) {
			if (i > 0 && *pos < size - 1)
				buf[(*pos)++] = ' ';
			trace_arg(buf, size, pos, &a->v.items[i], depth + 1);
		}
		n = snprintf(buf + *pos, size - *pos, ")");
		break;
	}
	if (n > 0)
		*pos = *pos + (size_t)n >= size ? size - 1 : *pos + (size_t)n;
	buf[*pos] = '\0';
}

/* Append to buf at *pos, never past size - 1: snprintf returns what it
 * would have written, which a server's long tag or text makes larger than
 * what is left (AUDIT C1). */
static void trace_add(char *buf, size_t size, size_t *pos, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void trace_add(char *buf, size_t size, size_t *pos, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (*pos >= size - 1)
		return;
	va_start(ap, fmt);
	n = vsnprintf(buf + *pos, size - *pos, fmt, ap);
	va_end(ap);
	if (n > 0)
		*pos = *pos + (size_t)n >= size ? size - 1 : *pos + (size_t)n;
	buf[*pos] = '\0';
}

static void trace_response(struct imap_client *c, const struct imap_response *r)
{
	static const char *const status_names[] = {
		"", "OK", "NO", "BAD", "BYE", "PREAUTH",
	};
	char buf[400];
	size_t pos = 0;

	if (!log_debug_enabled())
		return;
	buf[0] = '\0';
	trace_add(buf, sizeof(buf), &pos, "%s", r->kind == IMAP_RESP_TAGGED ? r->tag :
		  r->kind == IMAP_RESP_CONTINUATION ? "+" : "*");
	if (r->kind == IMAP_RESP_CONTINUATION || r->status != IMAP_STATUS_NONE) {
		if (r->status != IMAP_STATUS_NONE)
			trace_add(buf, sizeof(buf), &pos, " %s", status_names[r->status]);
		if (r->code_count > 0) {
			struct imap_arg list = { .type = IMAP_ARG_LIST, .len = r->code_count,
						 .v.items = r->code };
			trace_add(buf, sizeof(buf), &pos, " ");
			trace_arg(buf, sizeof(buf), &pos, &list, 0);
		}
		trace_add(buf, sizeof(buf), &pos, " %s", r->text);
	} else {
		for (size_t i = 0; i < r->args_count && pos < sizeof(buf) - 2; i++) {
			trace_add(buf, sizeof(buf), &pos, " ");
			trace_arg(buf, sizeof(buf), &pos, &r->args[i], 0);
		}
	}
	log_trace(c->trace_name, '<', buf, pos);
}

/* The command's deadline passed: the connection is dropped (what the
 * server sends later belongs to a command we gave up on). */
static int too_slow(struct imap_client *c)
{
	set_error(c, "the server is too slow: no complete answer in %lld s",
		  (long long)((monotonic_ms() - c->deadline_start + 500) / 1000));
	return -ETIME;
}

/* A write failed: r, or -ETIME when it was the command's deadline. */
static int write_failed(struct imap_client *c, int r)
{
	if (r == -ETIMEDOUT && deadline_passed(c))
		return too_slow(c);
	set_error(c, "cannot send to server: %s", strerror(-r));
	return r;
}

/* Next complete response, reading as needed. 1, or a negative errno. */
static int read_response(struct imap_client *c, const struct imap_response **resp_r)
{
	const char *perr;

	if (!c->alive)
		return -ENOTCONN;
	for (;;) {
		int r = imap_parser_next(c->parser, resp_r, &perr);

		if (r == 1) {
			trace_response(c, *resp_r);
			note_caps(c, *resp_r);
			return 1;
		}
		if (r < 0) {
			set_error(c, "malformed response from server: %s", perr);
			return -EPROTO;
		}
		if (deadline_passed(c))
			return too_slow(c);
		ssize_t n = conn_read(c->conn, c->rbuf, READ_CHUNK);
		if (n == -ETIMEDOUT && deadline_passed(c))
			return too_slow(c);
		if (n > 0)
			extend_deadline(c, (size_t)n);
		if (n == 0) {
			set_error(c, "server closed the connection%s",
				  imap_parser_literal_remaining(c->parser) ?
				  " in the middle of a message" : "");
			return -ECONNRESET;
		}
		if (n < 0) {
			set_error(c, "connection lost: %s", n == -ETIMEDOUT ?
				  "server did not answer in time" : strerror((int)-n));
			return (int)n;
		}
		if (imap_parser_feed(c->parser, c->rbuf, (size_t)n) < 0) {
			const struct imap_response *ignored;

			/* The parser says why (a limit, a syntax error). */
			if (imap_parser_next(c->parser, &ignored, &perr) >= 0)
				perr = "unexpected input";
			set_error(c, "malformed response from server: %s", perr);
			return -EPROTO;
		}
	}
}

/* Commands are traced with the arguments of LOGIN and AUTHENTICATE cut
 * off: what follows the mechanism is the password. */
static void trace_command(struct imap_client *c, const char *line, size_t len)
{
	const char *sp, *cmd;

	if (!log_debug_enabled())
		return;
	sp = memchr(line, ' ', len);
	cmd = sp ? sp + 1 : line;
	if (!strncasecmp(cmd, "LOGIN ", 6)) {
		char buf[128];
		const char *user_end = memchr(cmd + 6, ' ', len - (size_t)(cmd + 6 - line));
		int n = snprintf(buf, sizeof(buf), "%.*s <password redacted>",
				 (int)(user_end ? user_end - line : (cmd + 6 - line)), line);
		log_trace(c->trace_name, '>', buf, (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
	} else if (!strncasecmp(cmd, "AUTHENTICATE ", 13)) {
		char buf[128];
		const char *mech_end = memchr(cmd + 13, ' ', len - (size_t)(cmd + 13 - line));
		int n = snprintf(buf, sizeof(buf), "%.*s%s",
				 (int)(mech_end ? mech_end - line : (ptrdiff_t)len), line,
				 mech_end ? " <credentials redacted>" : "");
		log_trace(c->trace_name, '>', buf, (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
	} else {
		log_trace(c->trace_name, '>', line, len);
	}
}

static int vsend(struct imap_client *c, const char *fmt, va_list ap)
{
	char stackbuf[1024], *buf = stackbuf;
	int tag = c->next_tag++;
	int n, r;
	va_list ap2;

	if (!c->alive)
		return -ENOTCONN;
	va_copy(ap2, ap);
	n = snprintf(buf, sizeof(stackbuf), "A%d ", tag);
	r = vsnprintf(buf + n, sizeof(stackbuf) - (size_t)n - 2, fmt, ap);
	if (r < 0) {
		va_end(ap2);
		return -EINVAL;
	}
	if ((size_t)(n + r) + 2 >= sizeof(stackbuf)) {
		if (n + r + 3 > CMD_MAX) {
			va_end(ap2);
			return -E2BIG;
		}
		buf = malloc((size_t)(n + r) + 3);
		if (!buf) {
			va_end(ap2);
			return -ENOMEM;
		}
		n = snprintf(buf, (size_t)(n + r) + 3, "A%d ", tag);
		r = vsnprintf(buf + n, (size_t)r + 1, fmt, ap2);
	}
	va_end(ap2);
	trace_command(c, buf, (size_t)(n + r));
	arm_deadline(c, (size_t)(n + r) + 2);
	memcpy(buf + n + r, "\r\n", 2);
	int w = conn_write(c->conn, buf, (size_t)(n + r) + 2);
	if (buf != stackbuf) {
		OPENSSL_cleanse(buf, (size_t)(n + r) + 2);
		free(buf);
	} else {
		OPENSSL_cleanse(stackbuf, sizeof(stackbuf));
	}
	if (w < 0)
		return write_failed(c, w);
	return tag;
}

int imap_client_send(struct imap_client *c, const char *fmt, ...)
{
	va_list ap;
	int r;

	va_start(ap, fmt);
	r = vsend(c, fmt, ap);
	va_end(ap);
	return r;
}

void imap_code_args(const struct imap_response *r, char *buf, size_t size)
{
	size_t pos = 0;

	buf[0] = '\0';
	for (size_t i = 1; i < r->code_count && pos + 1 < size; i++) {
		if (r->code[i].type != IMAP_ARG_ATOM)
			continue;
		int n = snprintf(buf + pos, size - pos, "%s%s", pos ? " " : "", r->code[i].v.str);

		if (n < 0 || (size_t)n >= size - pos) {
			buf[pos] = '\0';
			break;
		}
		pos += (size_t)n;
	}
}

static void copy_completion(struct imap_client *c, const struct imap_response *r)
{
	server_text(c->text, sizeof(c->text), r->text);
	c->code[0] = '\0';
	c->code_args[0] = '\0';
	if (r->code_count > 0 && r->code[0].type == IMAP_ARG_ATOM) {
		snprintf(c->code, sizeof(c->code), "%s", r->code[0].v.str);
		imap_code_args(r, c->code_args, sizeof(c->code_args));
	}
}

/* Keep the completion just copied (text, code) as tag's result, for the
 * wait that asks for it.  -1 when there is no room (we are lost). */
static int keep_early(struct imap_client *c, int tag, int result)
{
	struct early_done *e;

	if (c->nearly == EARLY_MAX) {
		set_error(c, "too many commands completed out of order");
		return -1;
	}
	e = &c->early[c->nearly++];
	e->tag = tag;
	e->result = result;
	snprintf(e->text, sizeof(e->text), "%s", c->text);
	snprintf(e->code, sizeof(e->code), "%s", c->code);
	snprintf(e->code_args, sizeof(e->code_args), "%s", c->code_args);
	return 0;
}

const char *imap_client_code_args(const struct imap_client *c)
{
	return c->code_args;
}

static int await(struct imap_client *c, int tag, imap_untagged_fn *cb, void *ctx,
		 bool until_continuation);

/* await()'s answer when the "+" came first. */
#define CONTINUED 100

int imap_client_send_literal(struct imap_client *c, const char *prefix,
			     const void *data, size_t len, const char *suffix,
			     imap_untagged_fn *cb, void *ctx)
{
	char head[1024];
	int tag = c->next_tag++;
	bool plus = (c->caps & IMAP_CAP_LITERALPLUS) ||
		    ((c->caps & IMAP_CAP_LITERALMINUS) && len <= 4096);
	int n, r;

	if (!c->alive)
		return -ENOTCONN;
	n = snprintf(head, sizeof(head), "A%d %s {%zu%s}", tag, prefix, len, plus ? "+" : "");
	if (n < 0 || (size_t)n >= sizeof(head) - 2)
		return -E2BIG;
	log_trace(c->trace_name, '>', head, (size_t)n);
	arm_deadline(c, (size_t)n + 2 + len);
	memcpy(head + n, "\r\n", 2);
	r = conn_write(c->conn, head, (size_t)n + 2);
	if (r < 0)
		goto fail;
	if (!plus) {
		r = await(c, tag, cb, ctx, true);
		if (r < 0)
			return r;
		if (r != CONTINUED) {
			/* Refused before the data (NO [OVERQUOTA], [TRYCREATE],
			 * [TOOBIG]...): that is the command's result, and the
			 * connection is fine.  The caller's wait finds it. */
			if (keep_early(c, tag, r) < 0)
				return -EPROTO;
			return tag;
		}
	}
	r = conn_write(c->conn, data, len);
	if (r == 0 && suffix && *suffix)
		r = conn_write(c->conn, suffix, strlen(suffix));
	if (r == 0)
		r = conn_write(c->conn, "\r\n", 2);
	if (r < 0)
		goto fail;
	log_trace(c->trace_name, '>', "{literal sent}", 14);
	return tag;
fail:
	return write_failed(c, r);
}

static int status_result(enum imap_status st)
{
	switch (st) {
	case IMAP_STATUS_OK:
		return IMAP_RESULT_OK;
	case IMAP_STATUS_NO:
		return IMAP_RESULT_NO;
	default:
		return IMAP_RESULT_BAD;
	}
}

/* Read until command `tag` completes (its imap_result), or with
 * until_continuation until a "+" comes (CONTINUED), whichever is first. */
static int await(struct imap_client *c, int tag, imap_untagged_fn *cb, void *ctx,
		 bool until_continuation)
{
	char want[16];

	snprintf(want, sizeof(want), "A%d", tag);
	for (;;) {
		const struct imap_response *r;
		int ret = read_response(c, &r);

		if (ret < 0)
			return ret;
		if (r->kind == IMAP_RESP_CONTINUATION && until_continuation)
			return CONTINUED;
		if (r->kind == IMAP_RESP_TAGGED) {
			if (strcmp(r->tag, want) != 0) {
				/* Another pipelined command finished first:
				 * keep its result for its own wait.  A tag
				 * we never sent means we are lost. */
				char *end;
				long other = r->tag[0] == 'A' ? strtol(r->tag + 1, &end, 10) : -1;

				if (other <= 0 || *end || other >= c->next_tag || c->nearly == EARLY_MAX) {
					set_error(c, "unexpected completion for tag %.32s%s while waiting for %s",
						  r->tag, strlen(r->tag) > 32 ? "..." : "", want);
					return -EPROTO;
				}
				struct early_done *e = &c->early[c->nearly++];

				e->tag = (int)other;
				e->result = status_result(r->status);
				server_text(e->text, sizeof(e->text), r->text);
				e->code[0] = e->code_args[0] = '\0';
				if (r->code_count > 0 && r->code[0].type == IMAP_ARG_ATOM) {
					snprintf(e->code, sizeof(e->code), "%s", r->code[0].v.str);
					imap_code_args(r, e->code_args, sizeof(e->code_args));
				}
				continue;
			}
			copy_completion(c, r);
			return status_result(r->status);
		}
		if (r->kind == IMAP_RESP_UNTAGGED && r->status == IMAP_STATUS_BYE) {
			/* BYE is followed by the close; keep its text for
			 * the error message, and let the read fail. */
			server_text(c->text, sizeof(c->text), r->text);
		}
		if (cb)
			cb(ctx, r);
	}
}

int imap_client_wait(struct imap_client *c, int tag, imap_untagged_fn *cb,
		     void *ctx)
{
	for (size_t i = 0; i < c->nearly; i++) {
		if (c->early[i].tag != tag)
			continue;
		int result = c->early[i].result;

		snprintf(c->text, sizeof(c->text), "%s", c->early[i].text);
		snprintf(c->code, sizeof(c->code), "%s", c->early[i].code);
		snprintf(c->code_args, sizeof(c->code_args), "%s", c->early[i].code_args);
		c->early[i] = c->early[--c->nearly];
		return result;
	}
	return await(c, tag, cb, ctx, false);
}

int imap_client_run(struct imap_client *c, imap_untagged_fn *cb, void *ctx,
		    const char *fmt, ...)
{
	va_list ap;
	int tag;

	va_start(ap, fmt);
	tag = vsend(c, fmt, ap);
	va_end(ap);
	if (tag < 0)
		return tag;
	return imap_client_wait(c, tag, cb, ctx);
}

int imap_client_poll(struct imap_client *c, int timeout_ms,
		     const struct imap_response **resp_r)
{
	const char *perr;
	int r;

	if (!c->alive)
		return -ENOTCONN;
	r = imap_parser_next(c->parser, resp_r, &perr);
	if (r == 1) {
		trace_response(c, *resp_r);
		return 1;
	}
	if (r < 0) {
		set_error(c, "malformed response from server: %s", perr);
		return -EPROTO;
	}
	if (!conn_has_input(c->conn)) {
		r = conn_wait_input(c->conn, timeout_ms);
		if (r <= 0)
			return r;
	}
	/* IDLE waits as long as it likes for the server to speak, but a
	 * response that has begun must end like a command's. */
	arm_deadline(c, 0);
	return read_response(c, resp_r);
}

int imap_client_raw(struct imap_client *c, const char *line)
{
	size_t len = strlen(line);
	char buf[64];
	int r;

	if (!c->alive)
		return -ENOTCONN;
	if (len + 2 > sizeof(buf))
		return -E2BIG;
	log_trace(c->trace_name, '>', line, len);
	arm_deadline(c, len + 2);
	memcpy(buf, line, len);
	memcpy(buf + len, "\r\n", 2);
	r = conn_write(c->conn, buf, len + 2);
	return r < 0 ? write_failed(c, r) : r;
}

int imap_client_enable(struct imap_client *c, const char *exts)
{
	int r;

	if (!(c->caps & IMAP_CAP_ENABLE))
		return 0;
	r = imap_client_run(c, NULL, NULL, "ENABLE %s", exts);
	return r < 0 ? r : 0;
}

char *imap_quote(const char *s)
{
	size_t len = strlen(s), j = 0;
	char *q;

	if (strpbrk(s, "\r\n"))
		return NULL;
	q = malloc(2 * len + 3);
	if (!q)
		return NULL;
	q[j++] = '"';
	for (size_t i = 0; i < len; i++) {
		if (s[i] == '"' || s[i] == '\\')
			q[j++] = '\\';
		q[j++] = s[i];
	}
	q[j++] = '"';
	q[j] = '\0';
	return q;
}

static int fail(struct imap_client **cp, bool auth, bool *auth_failed_r,
		const char **error_r, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));
static int fail(struct imap_client **cp, bool auth, bool *auth_failed_r,
		const char **error_r, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(client_error, sizeof(client_error), fmt, ap);
	va_end(ap);
	if (auth_failed_r)
		*auth_failed_r = auth;
	*error_r = client_error;
	if (*cp) {
		conn_close(&(*cp)->conn);
		imap_parser_free(&(*cp)->parser);
		free((*cp)->rbuf);
		free(*cp);
		*cp = NULL;
	}
	return -1;
}

/* SASL PLAIN: base64("\0user\0password"), wiped after use. */
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

static int authenticate(struct imap_client *c, const struct imap_client_opts *o)
{
	int r, tag;

	if (c->caps & IMAP_CAP_AUTH_PLAIN) {
		char *b64 = sasl_plain(o->url->user, o->password);

		if (!b64)
			return -ENOMEM;
		if (c->caps & IMAP_CAP_SASL_IR) {
			tag = imap_client_send(c, "AUTHENTICATE PLAIN %s", b64);
		} else {
			tag = imap_client_send(c, "AUTHENTICATE PLAIN");
			if (tag > 0) {
				const struct imap_response *resp;

				r = read_response(c, &resp);
				if (r < 0) {
					tag = r;
				} else if (resp->kind != IMAP_RESP_CONTINUATION) {
					/* A completion already: refused. */
					copy_completion(c, resp);
					OPENSSL_cleanse(b64, strlen(b64));
					free(b64);
					return IMAP_RESULT_NO;
				} else {
					size_t len = strlen(b64);

					log_trace(c->trace_name, '>', "<credentials redacted>", 22);
					b64[len] = '\r';
					r = conn_write(c->conn, b64, len);
					if (r == 0)
						r = conn_write(c->conn, "\r\n", 2);
					b64[len] = '\0';
					if (r < 0)
						tag = r;
				}
			}
		}
		OPENSSL_cleanse(b64, strlen(b64));
		free(b64);
		if (tag < 0)
			return tag;
		return imap_client_wait(c, tag, NULL, NULL);
	}
	if (c->caps & IMAP_CAP_LOGINDISABLED)
		return -EPERM;
	char *qu = imap_quote(o->url->user), *qp = imap_quote(o->password);
	if (!qu || !qp) {
		free(qu);
		if (qp)
			OPENSSL_cleanse(qp, strlen(qp));
		free(qp);
		return -EINVAL;
	}
	r = imap_client_run(c, NULL, NULL, "LOGIN %s %s", qu, qp);
	OPENSSL_cleanse(qp, strlen(qp));
	free(qu);
	free(qp);
	return r;
}

int imap_client_open(struct imap_client **client_r,
		     const struct imap_client_opts *o, bool *auth_failed_r,
		     const char **error_r)
{
	struct imap_client *c = calloc(1, sizeof(*c));
	struct conn_opts co = {
		.host = o->url->host,
		.port = o->url->port,
		.implicit_tls = o->url->implicit_tls,
		.cafile = o->cafile,
		.insecure = o->insecure,
	};
	const struct imap_response *resp;
	const char *err;
	bool preauth = false;
	int r;

	*client_r = NULL;
	if (auth_failed_r)
		*auth_failed_r = false;
	if (!c)
		return fail(&c, false, auth_failed_r, error_r, "out of memory");
	c->rbuf = malloc(READ_CHUNK);
	/* One message of up to 256 MiB: the memory one connection may take
	 * for a response, whatever a server announces. */
	struct imap_parser_limits limits = { .max_literal = IMAP_MAX_LITERAL };
	c->parser = imap_parser_new(&limits);
	c->next_tag = 1;
	c->alive = true;
	c->scale = timeout_scale();
	co.io_timeout_ms = (int)((o->io_timeout_ms > 0 ? o->io_timeout_ms : IO_TIMEOUT_MS) * c->scale);
	snprintf(c->trace_name, sizeof(c->trace_name), "%s", o->trace_name ? o->trace_name : "imap");
	if (!c->rbuf || !c->parser)
		return fail(&c, false, auth_failed_r, error_r, "out of memory");
	if (conn_open(&c->conn, &co, &err) < 0)
		return fail(&c, false, auth_failed_r, error_r, "%s", err);

	arm_deadline(c, 0);
	r = read_response(c, &resp);
	if (r < 0)
		return fail(&c, false, auth_failed_r, error_r, "%s:%d: no IMAP greeting: %s",
			    o->url->host, o->url->port, c->error);
	if (resp->kind != IMAP_RESP_UNTAGGED ||
	    (resp->status != IMAP_STATUS_OK && resp->status != IMAP_STATUS_PREAUTH))
		return fail(&c, false, auth_failed_r, error_r,
			    "%s:%d does not greet like an IMAP server (%s)", o->url->host,
			    o->url->port, resp->status == IMAP_STATUS_BYE ?
			    server_text(c->text, sizeof(c->text), resp->text) : "bad greeting");
	preauth = resp->status == IMAP_STATUS_PREAUTH;
	if (c->caps == 0 && imap_client_run(c, NULL, NULL, "CAPABILITY") != IMAP_RESULT_OK)
		return fail(&c, false, auth_failed_r, error_r, "%s: CAPABILITY failed: %s",
			    o->url->host, c->error[0] ? c->error : c->text);

	if (!o->url->implicit_tls) {
		if (preauth)
			return fail(&c, false, auth_failed_r, error_r,
				    "%s greeted with PREAUTH before TLS; refusing an unencrypted session (use imaps://)",
				    o->url->host);
		if (!(c->caps & IMAP_CAP_STARTTLS) && !o->insecure)
			return fail(&c, false, auth_failed_r, error_r,
				    "%s does not offer STARTTLS; refusing to send the password in plaintext (use imaps://, or -o insecure)",
				    o->url->host);
		if (c->caps & IMAP_CAP_STARTTLS) {
			r = imap_client_run(c, NULL, NULL, "STARTTLS");
			if (r != IMAP_RESULT_OK)
				return fail(&c, false, auth_failed_r, error_r, "%s: STARTTLS failed: %s",
					    o->url->host, r < 0 ? c->error : c->text);
			/* Anything the server sent after its OK was sent
			 * in plaintext and could be an attacker's injection. */
			if (imap_parser_pending(c->parser) > 0)
				return fail(&c, false, auth_failed_r, error_r,
					    "%s: data injected after STARTTLS; aborting the connection",
					    o->url->host);
			if (conn_starttls(c->conn, &err) < 0)
				return fail(&c, false, auth_failed_r, error_r, "%s", err);
			/* Capabilities from before TLS are not to be trusted. */
			c->caps = 0;
			if (imap_client_run(c, NULL, NULL, "CAPABILITY") != IMAP_RESULT_OK)
				return fail(&c, false, auth_failed_r, error_r, "%s: CAPABILITY failed: %s",
					    o->url->host, c->error[0] ? c->error : c->text);
		}
	}
	if (!preauth) {
		r = authenticate(c, o);
		if (r == -EPERM)
			return fail(&c, false, auth_failed_r, error_r, "%s refuses LOGIN (LOGINDISABLED) and offers no AUTH=PLAIN",
				    o->url->host);
		if (r < 0)
			return fail(&c, false, auth_failed_r, error_r, "%s: login failed: %s",
				    o->url->host, c->error[0] ? c->error : strerror(-r));
		if (r != IMAP_RESULT_OK)
			return fail(&c, true, auth_failed_r, error_r,
				    "login as %s at %s refused: %s (check the password)",
				    o->url->user, o->url->host, c->text);
		/* Servers may announce more after login; ask if they did not. */
		if (strcasecmp(c->code, "CAPABILITY") != 0 &&
		    imap_client_run(c, NULL, NULL, "CAPABILITY") != IMAP_RESULT_OK)
			return fail(&c, false, auth_failed_r, error_r, "%s: CAPABILITY failed: %s",
				    o->url->host, c->error[0] ? c->error : c->text);
	}
	*client_r = c;
	return 0;
}

void imap_client_close(struct imap_client **cp)
{
	struct imap_client *c = *cp;

	if (!c)
		return;
	if (c->alive && c->conn) {
		conn_set_io_timeout(c->conn, 2000);
		imap_client_set_deadline(c, 2);
		imap_client_run(c, NULL, NULL, "LOGOUT");
	}
	conn_close(&c->conn);
	imap_parser_free(&c->parser);
	free(c->rbuf);
	free(c);
	*cp = NULL;
}
