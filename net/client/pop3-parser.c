/* pop3-parser.c: the POP3 response parser (see pop3-parser.h).
 *
 * A byte-level state machine: the status line is collected into its own
 * buffer up to the first LF, and a body is copied into the body buffer as
 * it is unstuffed, so each byte of input is looked at once and the input
 * buffer only ever holds what was fed and not yet parsed.  The states
 * survive between calls, so a response may arrive split anywhere.
 *
 * Body lines have no length limit of their own (real messages have lines
 * far longer than RFC 5322's 998 bytes); only the body's total is bounded.
 * A line ".X" with X other than CR or LF is invalid but common enough from
 * broken servers: as RFC 1939 says, the first '.' is stripped anyway.
 *
 * Line ends: a server whose status line ends in CRLF ends a body only with
 * CRLF "." CRLF, and a line after a bare LF is data, a leading '.' and all
 * (a strict server stuffs only after CRLF): ending there would cut the
 * message and shift every pipelined answer after it.  Only a server whose
 * status line ends in a bare LF has LF "." LF as its terminator. */
#include "pop3-parser.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define POP3_PARSER_DEFAULT_MAX_LINE ((size_t)64 * 1024)
#define POP3_PARSER_DEFAULT_MAX_BODY ((size_t)1024 * 1024 * 1024)
#define POP3_PARSER_MIN_BUFFER 4096
/* After a big response, an idle buffer larger than this is given back. */
#define POP3_PARSER_KEEP_BUFFER ((size_t)1024 * 1024)

enum pop3_parser_state {
	POP3_ST_STATUS,     /* reading the status line */
	POP3_ST_LINE_START, /* body: at the start of a line */
	POP3_ST_IN_LINE,    /* body: inside a line */
	POP3_ST_DOT,        /* body: a line started with '.' */
	POP3_ST_DOT_CR,     /* body: ".\r" at the start of a line */
	POP3_ST_FAILED,
};

struct pop3_parser {
	struct pop3_parser_limits limits;
	enum pop3_parser_state state;
	/* Fed and not yet parsed: in[in_pos, in_len). */
	char *in;
	size_t in_pos, in_len, in_cap;
	/* The status line of the current response, NUL-terminated. */
	char *line;
	size_t line_len, line_cap;
	/* The body of the current response, NUL-terminated. */
	char *body;
	size_t body_len, body_cap;
	/* Raw bytes of the current, incomplete response already parsed. */
	size_t cur_raw;
	bool lf_only;    /* the status line ended in a bare LF */
	bool after_crlf; /* body: the line before ended in CRLF (or none) */
	bool returned; /* resp was handed out: reset before the next one */
	struct pop3_response resp;
	char error[128];
};

struct pop3_parser *pop3_parser_new(const struct pop3_parser_limits *limits)
{
	struct pop3_parser *p = calloc(1, sizeof(*p));

	if (p == NULL)
		return NULL;
	if (limits != NULL)
		p->limits = *limits;
	if (p->limits.max_line == 0)
		p->limits.max_line = POP3_PARSER_DEFAULT_MAX_LINE;
	if (p->limits.max_body == 0)
		p->limits.max_body = POP3_PARSER_DEFAULT_MAX_BODY;
	/* Keeps the buffer arithmetic (limit + 1, doubling) from wrapping. */
	if (p->limits.max_line > SIZE_MAX / 4)
		p->limits.max_line = SIZE_MAX / 4;
	if (p->limits.max_body > SIZE_MAX / 4)
		p->limits.max_body = SIZE_MAX / 4;
	p->state = POP3_ST_STATUS;
	return p;
}

void pop3_parser_free(struct pop3_parser **pp)
{
	struct pop3_parser *p = *pp;

	if (p == NULL)
		return;
	free(p->in);
	free(p->line);
	free(p->body);
	free(p);
	*pp = NULL;
}

static int pop3_parser_fail(struct pop3_parser *p, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static int pop3_parser_fail(struct pop3_parser *p, const char *fmt, ...)
{
	va_list args;

	va_start(args, fmt);
	vsnprintf(p->error, sizeof(p->error), fmt, args);
	va_end(args);
	p->state = POP3_ST_FAILED;
	return -1;
}

int pop3_parser_feed(struct pop3_parser *p, const void *data, size_t len)
{
	if (p->state == POP3_ST_FAILED)
		return -1;
	if (len == 0)
		return 0;
	/* Drop what was parsed before growing. */
	if (p->in_pos > 0) {
		memmove(p->in, p->in + p->in_pos, p->in_len - p->in_pos);
		p->in_len -= p->in_pos;
		p->in_pos = 0;
	}
	if (len > SIZE_MAX - p->in_len)
		return -1;
	if (p->in_len + len > p->in_cap) {
		size_t cap = p->in_cap ? p->in_cap : POP3_PARSER_MIN_BUFFER;
		char *n;

		while (cap < p->in_len + len)
			cap = cap > SIZE_MAX / 2 ? p->in_len + len : cap * 2;
		n = realloc(p->in, cap);
		if (n == NULL)
			return -1;
		p->in = n;
		p->in_cap = cap;
	}
	memcpy(p->in + p->in_len, data, len);
	p->in_len += len;
	return 0;
}

/* Make room for n more body bytes (and the NUL), within the limit. */
static int pop3_parser_body_room(struct pop3_parser *p, size_t n)
{
	size_t need, cap;
	char *b;

	if (n > p->limits.max_body - p->body_len)
		return pop3_parser_fail(p, "multi-line response exceeds the limit of %zu bytes",
					p->limits.max_body);
	need = p->body_len + n;
	if (p->body != NULL && need < p->body_cap)
		return 0;
	cap = p->body_cap ? p->body_cap : POP3_PARSER_MIN_BUFFER;
	while (cap <= need)
		cap = cap > p->limits.max_body / 2 ? p->limits.max_body + 1 : cap * 2;
	b = realloc(p->body, cap);
	if (b == NULL)
		return pop3_parser_fail(p, "out of memory for a response of %zu bytes", need);
	p->body = b;
	p->body_cap = cap;
	return 0;
}

static int pop3_parser_body_add(struct pop3_parser *p, const char *s, size_t n)
{
	if (pop3_parser_body_room(p, n) < 0)
		return -1;
	memcpy(p->body + p->body_len, s, n);
	p->body_len += n;
	return 0;
}

/* Parse the complete status line.  1: the response is complete; 0: a body
 * follows; -1: malformed. */
static int pop3_parser_status(struct pop3_parser *p, bool multiline)
{
	char *l = p->line;
	size_t len = p->line_len;

	/* Strip the LF and a CR before it. */
	if (len > 0 && l[len - 1] == '\n')
		len--;
	p->lf_only = !(len > 0 && l[len - 1] == '\r');
	if (!p->lf_only)
		len--;
	l[len] = '\0';
	p->resp.line = l;
	p->resp.line_len = len;
	p->resp.multiline = false;
	p->resp.body = "";
	p->resp.body_len = 0;
	if (len >= 3 && strncmp(l, "+OK", 3) == 0 && (len == 3 || l[3] == ' ')) {
		p->resp.status = POP3_STATUS_OK;
		p->resp.text = len == 3 ? l + 3 : l + 4;
	} else if (len >= 4 && strncmp(l, "-ERR", 4) == 0 &&
		   (len == 4 || l[4] == ' ')) {
		p->resp.status = POP3_STATUS_ERR;
		p->resp.text = len == 4 ? l + 4 : l + 5;
	} else if (len >= 1 && l[0] == '+' && (len == 1 || l[1] == ' ')) {
		p->resp.status = POP3_STATUS_CONT;
		p->resp.text = len == 1 ? l + 1 : l + 2;
	} else {
		char shown[41];
		size_t i;

		/* The reason reaches a person: printable bytes only. */
		for (i = 0; i < len && i < sizeof(shown) - 1; i++)
			shown[i] = l[i] >= 0x20 && l[i] < 0x7f ? l[i] : '?';
		shown[i] = '\0';
		return pop3_parser_fail(p, "malformed status line (neither +OK nor -ERR): \"%s\"",
					shown);
	}
	if (p->resp.status == POP3_STATUS_OK && multiline) {
		p->resp.multiline = true;
		p->state = POP3_ST_LINE_START;
		p->after_crlf = true;
		return 0;
	}
	return 1;
}

/* Collect status line bytes up to and including the first LF. */
static int pop3_parser_run_status(struct pop3_parser *p, bool multiline)
{
	const char *start = p->in + p->in_pos;
	size_t avail = p->in_len - p->in_pos;
	const char *lf = memchr(start, '\n', avail);
	size_t n = lf != NULL ? (size_t)(lf - start) + 1 : avail;

	if (n > p->limits.max_line - p->line_len)
		return pop3_parser_fail(p, "status line longer than %zu bytes",
					p->limits.max_line);
	if (p->line_len + n + 1 > p->line_cap) {
		size_t cap = p->line_cap ? p->line_cap : 256;
		char *l;

		while (cap < p->line_len + n + 1)
			cap *= 2;
		l = realloc(p->line, cap);
		if (l == NULL)
			return pop3_parser_fail(p, "out of memory for a line of %zu bytes",
						p->line_len + n);
		p->line = l;
		p->line_cap = cap;
	}
	memcpy(p->line + p->line_len, start, n);
	p->line_len += n;
	p->line[p->line_len] = '\0';
	p->in_pos += n;
	p->cur_raw += n;
	if (lf == NULL)
		return 0;
	return pop3_parser_status(p, multiline);
}

/* Unstuff body bytes until the terminating line.  1: complete; 0: need
 * more; -1: over the limit. */
static int pop3_parser_run_body(struct pop3_parser *p)
{
	while (p->in_pos < p->in_len) {
		const char *s = p->in + p->in_pos;
		size_t avail = p->in_len - p->in_pos;
		char c = *s;

		switch (p->state) {
		case POP3_ST_LINE_START:
			if (c == '.' && (p->lf_only || p->after_crlf)) {
				p->state = POP3_ST_DOT;
				p->in_pos++;
				p->cur_raw++;
				break;
			}
			p->state = POP3_ST_IN_LINE;
			/* fall through */
		case POP3_ST_IN_LINE: {
			/* The common case: copy up to the end of the line. */
			const char *lf = memchr(s, '\n', avail);
			size_t n = lf != NULL ? (size_t)(lf - s) + 1 : avail;

			if (pop3_parser_body_add(p, s, n) < 0)
				return -1;
			p->in_pos += n;
			p->cur_raw += n;
			if (lf != NULL) {
				/* The byte before the LF is the body's (an
				 * unstuffed dot never precedes an LF here). */
				p->after_crlf = p->body_len >= 2 && p->body[p->body_len - 2] == '\r';
				p->state = POP3_ST_LINE_START;
			}
			break;
		}
		case POP3_ST_DOT:
			if (c == '\n' && p->lf_only) {
				p->in_pos++;
				p->cur_raw++;
				return 1;
			}
			if (c == '\n') {
				/* ".\n" from a CRLF server: not the end; as
				 * for ".X", the dot goes. */
				if (pop3_parser_body_add(p, "\n", 1) < 0)
					return -1;
				p->in_pos++;
				p->cur_raw++;
				p->after_crlf = false;
				p->state = POP3_ST_LINE_START;
				break;
			}
			if (c == '\r') {
				p->state = POP3_ST_DOT_CR;
				p->in_pos++;
				p->cur_raw++;
				break;
			}
			/* ".." or ".X": the stuffed dot goes. */
			p->state = POP3_ST_IN_LINE;
			break;
		case POP3_ST_DOT_CR:
			if (c == '\n') {
				p->in_pos++;
				p->cur_raw++;
				return 1;
			}
			/* ".\rX": a line that is neither "." nor stuffed;
			 * keep the CR, drop the dot. */
			if (pop3_parser_body_add(p, "\r", 1) < 0)
				return -1;
			p->state = POP3_ST_IN_LINE;
			break;
		default:
			return -1;
		}
	}
	return 0;
}

int pop3_parser_next(struct pop3_parser *p, bool multiline,
		     const struct pop3_response **resp_r, const char **error_r)
{
	int r;

	*resp_r = NULL;
	*error_r = NULL;
	if (p->returned) {
		/* The previous response is no longer the caller's. */
		p->returned = false;
		p->line_len = 0;
		p->body_len = 0;
		if (p->body_cap > POP3_PARSER_KEEP_BUFFER) {
			free(p->body);
			p->body = NULL;
			p->body_cap = 0;
		}
		if (p->line_cap > POP3_PARSER_KEEP_BUFFER) {
			free(p->line);
			p->line = NULL;
			p->line_cap = 0;
		}
	}
	for (;;) {
		if (p->state == POP3_ST_FAILED) {
			*error_r = p->error;
			return -1;
		}
		if (p->in_pos == p->in_len) {
			p->in_pos = p->in_len = 0;
			if (p->in_cap > POP3_PARSER_KEEP_BUFFER) {
				free(p->in);
				p->in = NULL;
				p->in_cap = 0;
			}
			return 0;
		}
		if (p->state == POP3_ST_STATUS) {
			/* 0: the line is not complete, or a body follows. */
			r = pop3_parser_run_status(p, multiline);
			if (r == 0)
				continue;
		} else {
			r = pop3_parser_run_body(p);
			if (r == 0)
				continue;
			if (r > 0) {
				if (pop3_parser_body_room(p, 0) < 0)
					r = -1;
				else
					p->body[p->body_len] = '\0';
				p->resp.body = p->body;
				p->resp.body_len = p->body_len;
			}
		}
		if (r < 0) {
			if (p->state != POP3_ST_FAILED) {
				snprintf(p->error, sizeof(p->error), "parser failure");
				p->state = POP3_ST_FAILED;
			}
			*error_r = p->error;
			return -1;
		}
		p->state = POP3_ST_STATUS;
		p->cur_raw = 0;
		p->returned = true;
		*resp_r = &p->resp;
		return 1;
	}
}

size_t pop3_parser_pending(const struct pop3_parser *p)
{
	return p->in_len - p->in_pos + p->cur_raw;
}

size_t pop3_parser_body_so_far(const struct pop3_parser *p)
{
	return p->state == POP3_ST_STATUS || p->state == POP3_ST_FAILED ? 0 : p->body_len;
}
