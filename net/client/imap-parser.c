/* imap-parser.c: the IMAP response parser (see imap-parser.h).
 *
 * Two stages.  The scanner runs over the bytes as they arrive, from both
 * imap_parser_feed() and imap_parser_next(), and keeps its state between
 * calls so that no byte is looked at twice: it finds line ends (CRLF or a
 * bare LF), follows quoted strings so that a "{5}" inside quotes is not
 * taken for a literal, checks every announced literal length against the
 * limits, and then steps over the literal's bytes without reading them.
 * When a line ends without announcing a literal, the response is complete
 * and the tokenizer parses it, once, into a tree of arguments.
 *
 * Nothing is copied out of the input buffer: arguments point into it.  The
 * tokenizer records offsets first; only when the whole response has parsed
 * does it unescape quoted strings in place and write each NUL terminator
 * over the byte that ends the argument (a space, paren, quote, CR or LF,
 * never a byte of another argument).  That is why a literal must be
 * followed by a space, a ')' or the end of the line, and why a response
 * code that does not parse can still be kept as raw text.
 *
 * A response handed to the caller stays in the buffer until the next
 * imap_parser_next().  If a feed in between needs a bigger buffer, the
 * unread bytes move to a new one and the old one is kept ("held") until
 * then, so the caller's pointers stay valid. */
#include "imap-parser.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define IMAP_PARSER_DEFAULT_MAX_LINE ((size_t)8 * 1024 * 1024)
#define IMAP_PARSER_DEFAULT_MAX_LITERAL ((size_t)1024 * 1024 * 1024)
#define IMAP_PARSER_DEFAULT_MAX_DEPTH 64
#define IMAP_PARSER_DEFAULT_MAX_ARGS 1000000
/* UINT64_MAX has 20 digits; more can only be an attack or garbage. */
#define IMAP_PARSER_MAX_LENGTH_DIGITS 20
#define IMAP_PARSER_MIN_BUFFER 4096
/* After a big response, an idle buffer larger than this is given back. */
#define IMAP_PARSER_KEEP_BUFFER ((size_t)1024 * 1024)
#define IMAP_PARSER_NO_BRACE SIZE_MAX

enum imap_parser_line {
	IMAP_PARSER_LINE_DATA,
	IMAP_PARSER_LINE_STATUS,
	IMAP_PARSER_LINE_CONTINUATION,
};

/* Tokenizer results: a syntax error in a response code is survivable (the
 * code is kept as raw text), a limit or memory failure never is. */
enum imap_parser_tok {
	IMAP_PARSER_TOK_OK = 0,
	IMAP_PARSER_TOK_SYNTAX = -1,
	IMAP_PARSER_TOK_FATAL = -2,
};

/* An argument while parsing.  Offsets rather than pointers, because the
 * node arrays grow (and move) while the response is parsed. */
struct imap_parser_node {
	enum imap_arg_type type;
	bool escaped; /* STRING: has backslash escapes to undo */
	size_t len;   /* bytes (unescaped), or LIST items */
	size_t off;   /* strings: offset in buf; LIST: index of first item */
};

struct imap_parser_vec {
	struct imap_parser_node *v;
	size_t len, cap;
};

struct imap_parser {
	struct imap_parser_limits limits;

	/* Input: [rstart, len) is not yet returned to the caller. */
	char *buf;
	size_t len, cap;
	/* The old buffer still holding the response the caller has, after a
	 * feed moved the input elsewhere. */
	char *held;
	bool outstanding; /* a response was returned, next() not yet called */

	/* Scanner, all offsets in buf. */
	size_t rstart;     /* first byte of the current response */
	size_t scan;       /* next byte to look at; response end if complete */
	size_t line_start; /* first byte of the current line */
	size_t brace;      /* last '{' outside quotes on this line */
	size_t lit_end;    /* in_literal: offset just past the literal */
	bool first_line, in_quote, escape, in_literal, complete;
	enum imap_parser_line line_class;
	/* Not in resp: the caller may still be reading that one. */
	enum imap_status line_status;

	/* Tokenizer: nodes of the lists still open (outermost first), and
	 * finished ones, where each list's items are contiguous. */
	struct imap_parser_vec open;
	struct imap_parser_vec done;
	size_t *frames; /* per open list: its first item's index in open */
	size_t frames_cap;
	unsigned depth;
	size_t nargs;
	size_t tag_nul, text_nul; /* where to end tag and text, or SIZE_MAX */

	struct imap_arg *args;
	size_t args_cap;
	struct imap_response resp;

	bool failed;
	char error[256];
};

static void imap_parser_set_error(struct imap_parser *parser,
				  const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void imap_parser_set_error(struct imap_parser *parser,
				  const char *fmt, ...)
{
	va_list args;

	va_start(args, fmt);
	vsnprintf(parser->error, sizeof(parser->error), fmt, args);
	va_end(args);
}

/* Server bytes go into error messages read by people and logs: no control
 * characters, and not too many of them. */
static const char *imap_parser_printable(char *dst, size_t dst_size,
					 const char *src, size_t len)
{
	size_t max = dst_size - 4, o = 0;

	for (size_t i = 0; i < len && o < max; i++) {
		unsigned char c = (unsigned char)src[i];

		dst[o++] = c < 0x20 || c >= 0x7f ? '?' : (char)c;
	}
	if (len > max) {
		memcpy(dst + o, "...", 3);
		o += 3;
	}
	dst[o] = '\0';
	return dst;
}

static bool imap_parser_is_ctl(unsigned char c)
{
	return c < 0x20 || c == 0x7f;
}

/* Liberal: 8-bit bytes (UTF-8 mailbox names), list wildcards and '\' are
 * accepted.  ']' ends an atom only inside a response code; elsewhere it is
 * an ASTRING-CHAR (a mailbox may be called "a]b"). */
static bool imap_parser_is_atom_char(unsigned char c, bool code)
{
	if (imap_parser_is_ctl(c))
		return false;
	switch (c) {
	case ' ':
	case '(':
	case ')':
	case '{':
	case '"':
		return false;
	case ']':
		return !code;
	default:
		return true;
	}
}

static char imap_parser_ascii_lower(char c)
{
	return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

static bool imap_parser_word_is(const char *s, size_t len, const char *word)
{
	size_t i;

	for (i = 0; i < len; i++) {
		if (word[i] == '\0' ||
		    imap_parser_ascii_lower(s[i]) !=
			    imap_parser_ascii_lower(word[i]))
			return false;
	}
	return word[i] == '\0';
}

/* Length of the line terminator at pos: 2 for CRLF, 1 for LF, else 0. */
static size_t imap_parser_eol(const char *buf, size_t pos, size_t end)
{
	if (pos >= end)
		return 0;
	if (buf[pos] == '\n')
		return 1;
	if (buf[pos] == '\r' && pos + 1 < end && buf[pos + 1] == '\n')
		return 2;
	return 0;
}

/* The inside of "{...}": digits and an optional + or - (LITERAL+ and
 * LITERAL- are client-side, but harmless to accept).  The digit count is
 * checked before the arithmetic, and the arithmetic for overflow. */
static int imap_parser_literal_length(struct imap_parser *parser,
				      const char *s, size_t len,
				      uint64_t *len_r)
{
	char shown[48];
	size_t digits = len;
	uint64_t n = 0;

	if (digits > 0 && (s[digits - 1] == '+' || s[digits - 1] == '-'))
		digits--;
	if (digits == 0)
		goto invalid;
	for (size_t i = 0; i < digits; i++) {
		if (s[i] < '0' || s[i] > '9')
			goto invalid;
	}
	if (digits > IMAP_PARSER_MAX_LENGTH_DIGITS) {
		imap_parser_set_error(
			parser, "literal length {%s} has more than %d digits",
			imap_parser_printable(shown, sizeof(shown), s, len),
			IMAP_PARSER_MAX_LENGTH_DIGITS);
		return -1;
	}
	for (size_t i = 0; i < digits; i++) {
		unsigned d = (unsigned)(s[i] - '0');

		if (n > (UINT64_MAX - d) / 10) {
			imap_parser_set_error(
				parser,
				"literal length {%s} does not fit in 64 bits",
				imap_parser_printable(shown, sizeof(shown), s,
						      len));
			return -1;
		}
		n = n * 10 + d;
	}
	*len_r = n;
	return 0;
invalid:
	imap_parser_set_error(parser,
			      "invalid literal length {%s}: expected digits",
			      imap_parser_printable(shown, sizeof(shown), s,
						    len));
	return -1;
}

/* Looks at the first line only: "+" is a continuation; a tag (or "*")
 * followed by OK/NO/BAD/BYE/PREAUTH is a status response, which is one
 * line whatever it ends with ("* OK see {5}" announces no literal). */
static enum imap_parser_line imap_parser_classify(const char *line,
						  size_t len,
						  enum imap_status *status_r)
{
	static const struct {
		const char *word;
		enum imap_status status;
	} words[] = {
		{ "ok", IMAP_STATUS_OK },	{ "no", IMAP_STATUS_NO },
		{ "bad", IMAP_STATUS_BAD },	{ "bye", IMAP_STATUS_BYE },
		{ "preauth", IMAP_STATUS_PREAUTH },
	};
	size_t i = 0, word;

	*status_r = IMAP_STATUS_NONE;
	if (len > 0 && line[0] == '+')
		return IMAP_PARSER_LINE_CONTINUATION;
	while (i < len && line[i] != ' ')
		i++;
	while (i < len && line[i] == ' ')
		i++;
	word = i;
	while (i < len && line[i] != ' ' && line[i] != '[')
		i++;
	for (size_t w = 0; w < sizeof(words) / sizeof(words[0]); w++) {
		if (imap_parser_word_is(line + word, i - word, words[w].word)) {
			*status_r = words[w].status;
			return IMAP_PARSER_LINE_STATUS;
		}
	}
	return IMAP_PARSER_LINE_DATA;
}

static int imap_parser_fail(struct imap_parser *parser)
{
	parser->failed = true;
	return -1;
}

static void imap_parser_new_line(struct imap_parser *parser, size_t start)
{
	parser->line_start = start;
	parser->scan = start;
	parser->brace = IMAP_PARSER_NO_BRACE;
	parser->in_quote = false;
	parser->escape = false;
}

/* The LF at pos ends a line of the current response: is a literal
 * announced, and may it be? */
static int imap_parser_line_end(struct imap_parser *parser, size_t pos)
{
	const struct imap_parser_limits *limits = &parser->limits;
	size_t cend = pos, have;
	uint64_t n;

	if (cend > parser->line_start && parser->buf[cend - 1] == '\r')
		cend--;
	if (parser->first_line) {
		if (cend == parser->line_start) {
			/* A stray empty line: harmless, skip it. */
			parser->rstart = pos + 1;
			imap_parser_new_line(parser, pos + 1);
			return 0;
		}
		parser->line_class = imap_parser_classify(
			parser->buf + parser->line_start,
			cend - parser->line_start, &parser->line_status);
		parser->first_line = false;
	}
	if (parser->line_class != IMAP_PARSER_LINE_DATA || parser->in_quote ||
	    parser->brace == IMAP_PARSER_NO_BRACE ||
	    cend < parser->brace + 2 || parser->buf[cend - 1] != '}') {
		parser->complete = true;
		parser->scan = pos + 1;
		return 0;
	}
	if (imap_parser_literal_length(parser, parser->buf + parser->brace + 1,
				       cend - 1 - (parser->brace + 1), &n) < 0)
		return imap_parser_fail(parser);
	if (n > limits->max_literal) {
		imap_parser_set_error(parser,
				      "literal of %" PRIu64
				      " bytes exceeds limit of %zu",
				      n, limits->max_literal);
		return imap_parser_fail(parser);
	}
	/* The per-byte check keeps have <= max_response. */
	have = pos + 1 - parser->rstart;
	if (n > limits->max_response - have) {
		imap_parser_set_error(parser,
				      "literal of %" PRIu64
				      " bytes makes the response exceed the "
				      "limit of %zu bytes",
				      n, limits->max_response);
		return imap_parser_fail(parser);
	}
	imap_parser_new_line(parser, pos + 1);
	parser->in_literal = true;
	parser->lit_end = pos + 1 + (size_t)n;
	return 0;
}

/* Advance over the input until the current response is complete (0 with
 * complete set), the input runs out (0), or a limit or syntax error
 * (-1). */
static int imap_parser_scan(struct imap_parser *parser)
{
	const struct imap_parser_limits *limits = &parser->limits;

	while (!parser->complete && !parser->failed) {
		const char *buf = parser->buf;
		size_t pos;
		bool in_quote, escape;

		if (parser->in_literal) {
			if (parser->len < parser->lit_end)
				return 0;
			parser->in_literal = false;
			imap_parser_new_line(parser, parser->lit_end);
		}
		in_quote = parser->in_quote;
		escape = parser->escape;
		for (pos = parser->scan; pos < parser->len; pos++) {
			unsigned char c = (unsigned char)buf[pos];
			/* Line terminators do not count.  A CR may turn out
			 * to be one: it counts only when the next byte is
			 * not LF. */
			size_t line_len = pos - parser->line_start;

			if (c == '\n') {
				if (line_len > 0 && buf[pos - 1] == '\r')
					line_len--;
			} else if (c != '\r') {
				line_len++;
			}

			if (line_len > limits->max_line) {
				imap_parser_set_error(
					parser,
					"line longer than the limit of %zu "
					"bytes",
					limits->max_line);
				return imap_parser_fail(parser);
			}
			if (pos - parser->rstart >= limits->max_response) {
				imap_parser_set_error(
					parser,
					"response longer than the limit of "
					"%zu bytes",
					limits->max_response);
				return imap_parser_fail(parser);
			}
			if (c == '\n')
				break;
			if (in_quote) {
				if (escape)
					escape = false;
				else if (c == '\\')
					escape = true;
				else if (c == '"')
					in_quote = false;
			} else if (c == '"') {
				in_quote = true;
			} else if (c == '{') {
				parser->brace = pos;
			}
		}
		parser->in_quote = in_quote;
		parser->escape = escape;
		parser->scan = pos;
		if (pos == parser->len)
			return 0;
		if (imap_parser_line_end(parser, pos) < 0)
			return -1;
	}
	return parser->failed ? -1 : 0;
}

/* Tokenizer */

struct imap_parser_tok_ctx {
	struct imap_parser *parser;
	size_t pos, end; /* end: just past the response's last LF */
	bool code;       /* inside "[...]" of a status response */
	bool literals;   /* literals allowed (data responses only) */
};

static int imap_parser_vec_push(struct imap_parser_vec *vec,
				const struct imap_parser_node *node)
{
	if (vec->len == vec->cap) {
		size_t cap = vec->cap == 0 ? 16 : vec->cap * 2;
		struct imap_parser_node *v;

		if (cap > SIZE_MAX / sizeof(*v))
			return -1;
		v = realloc(vec->v, cap * sizeof(*v));
		if (v == NULL)
			return -1;
		vec->v = v;
		vec->cap = cap;
	}
	vec->v[vec->len++] = *node;
	return 0;
}

static int imap_parser_oom(struct imap_parser *parser)
{
	imap_parser_set_error(parser, "out of memory parsing a response");
	return IMAP_PARSER_TOK_FATAL;
}

static int imap_parser_count_arg(struct imap_parser *parser)
{
	if (parser->nargs >= parser->limits.max_args) {
		imap_parser_set_error(parser,
				      "more than the limit of %zu arguments "
				      "in one response",
				      parser->limits.max_args);
		return IMAP_PARSER_TOK_FATAL;
	}
	parser->nargs++;
	return IMAP_PARSER_TOK_OK;
}

static int imap_parser_add(struct imap_parser_tok_ctx *t,
			   enum imap_arg_type type, size_t off, size_t len,
			   bool escaped)
{
	struct imap_parser_node node = {
		.type = type, .escaped = escaped, .len = len, .off = off
	};

	if (imap_parser_count_arg(t->parser) < 0)
		return IMAP_PARSER_TOK_FATAL;
	if (imap_parser_vec_push(&t->parser->open, &node) < 0)
		return imap_parser_oom(t->parser);
	return IMAP_PARSER_TOK_OK;
}

/* Moves the open nodes from index start on to done, where they become
 * one contiguous item array; returns its index. */
static int imap_parser_close_level(struct imap_parser *parser, size_t start,
				   size_t *index_r)
{
	struct imap_parser_vec *open = &parser->open;

	*index_r = parser->done.len;
	for (size_t i = start; i < open->len; i++) {
		if (imap_parser_vec_push(&parser->done, &open->v[i]) < 0)
			return imap_parser_oom(parser);
	}
	open->len = start;
	return IMAP_PARSER_TOK_OK;
}

static int imap_parser_open_list(struct imap_parser_tok_ctx *t)
{
	struct imap_parser *parser = t->parser;

	if (parser->depth >= parser->limits.max_depth) {
		imap_parser_set_error(
			parser, "lists nested deeper than the limit of %u",
			parser->limits.max_depth);
		return IMAP_PARSER_TOK_FATAL;
	}
	/* The list counts as an argument as soon as it opens, so that a
	 * flood of "(((" meets max_args too. */
	if (imap_parser_count_arg(parser) < 0)
		return IMAP_PARSER_TOK_FATAL;
	if (parser->depth == parser->frames_cap) {
		size_t cap = parser->frames_cap == 0 ? 16
						     : parser->frames_cap * 2;
		size_t *frames;

		if (cap > SIZE_MAX / sizeof(*frames))
			return imap_parser_oom(parser);
		frames = realloc(parser->frames, cap * sizeof(*frames));
		if (frames == NULL)
			return imap_parser_oom(parser);
		parser->frames = frames;
		parser->frames_cap = cap;
	}
	parser->frames[parser->depth++] = parser->open.len;
	t->pos++;
	return IMAP_PARSER_TOK_OK;
}

static int imap_parser_close_list(struct imap_parser_tok_ctx *t)
{
	struct imap_parser *parser = t->parser;
	struct imap_parser_node node = { .type = IMAP_ARG_LIST };
	size_t start;

	if (parser->depth == 0) {
		imap_parser_set_error(parser,
				      "unexpected ')' at byte %zu of the "
				      "response: no list is open",
				      t->pos - parser->rstart);
		return IMAP_PARSER_TOK_SYNTAX;
	}
	start = parser->frames[--parser->depth];
	node.len = parser->open.len - start;
	if (imap_parser_close_level(parser, start, &node.off) < 0)
		return IMAP_PARSER_TOK_FATAL;
	/* Already counted when it opened. */
	if (imap_parser_vec_push(&parser->open, &node) < 0)
		return imap_parser_oom(parser);
	t->pos++;
	return IMAP_PARSER_TOK_OK;
}

static int imap_parser_quoted(struct imap_parser_tok_ctx *t)
{
	struct imap_parser *parser = t->parser;
	const char *buf = parser->buf;
	size_t open = t->pos, start = t->pos + 1, pos = start, n = 0;
	bool escaped = false;

	for (;;) {
		if (pos >= t->end || imap_parser_eol(buf, pos, t->end) > 0)
			goto unterminated;
		if (buf[pos] == '"')
			break;
		if (buf[pos] == '\\') {
			pos++;
			if (pos >= t->end || buf[pos] == '\r' ||
			    buf[pos] == '\n')
				goto unterminated;
			escaped = true;
		}
		pos++;
		n++;
	}
	t->pos = pos + 1;
	return imap_parser_add(t, IMAP_ARG_STRING, start, n, escaped);
unterminated:
	imap_parser_set_error(parser,
			      "quoted string at byte %zu of the response is "
			      "not closed before the end of the line",
			      open - parser->rstart);
	return IMAP_PARSER_TOK_SYNTAX;
}

static int imap_parser_literal(struct imap_parser_tok_ctx *t)
{
	struct imap_parser *parser = t->parser;
	const char *buf = parser->buf;
	size_t open = t->pos, close = t->pos + 1, eol, lit, next;
	uint64_t n;

	if (!t->literals) {
		imap_parser_set_error(parser,
				      "literal at byte %zu of the response: "
				      "not allowed in a status response",
				      open - parser->rstart);
		return IMAP_PARSER_TOK_SYNTAX;
	}
	while (close < t->end && buf[close] != '}' &&
	       imap_parser_eol(buf, close, t->end) == 0)
		close++;
	if (close >= t->end || buf[close] != '}') {
		imap_parser_set_error(parser,
				      "'{' at byte %zu of the response does "
				      "not start a literal {n}",
				      open - parser->rstart);
		return IMAP_PARSER_TOK_SYNTAX;
	}
	eol = imap_parser_eol(buf, close + 1, t->end);
	if (eol == 0) {
		imap_parser_set_error(parser,
				      "literal at byte %zu of the response is "
				      "not at the end of the line",
				      open - parser->rstart);
		return IMAP_PARSER_TOK_SYNTAX;
	}
	if (imap_parser_literal_length(parser, buf + open + 1,
				       close - open - 1, &n) < 0)
		return IMAP_PARSER_TOK_SYNTAX;
	lit = close + 1 + eol;
	/* The scanner made sure the bytes are there; this only guards
	 * against the scanner and the tokenizer ever disagreeing. */
	if (lit >= t->end || n >= t->end - lit) {
		imap_parser_set_error(parser,
				      "literal at byte %zu of the response "
				      "runs past its end",
				      open - parser->rstart);
		return IMAP_PARSER_TOK_SYNTAX;
	}
	next = lit + (size_t)n;
	/* Its NUL goes over the next byte, which must be no argument's. */
	if (buf[next] != ' ' && buf[next] != ')' &&
	    imap_parser_eol(buf, next, t->end) == 0) {
		imap_parser_set_error(parser,
				      "literal at byte %zu of the response is "
				      "followed by byte 0x%02x, not by a "
				      "space, ')' or the end of the line",
				      open - parser->rstart,
				      (unsigned char)buf[next]);
		return IMAP_PARSER_TOK_SYNTAX;
	}
	t->pos = next;
	return imap_parser_add(t, IMAP_ARG_LITERAL, lit, (size_t)n, false);
}

/* An atom, where "[" opens a section that runs to its "]" and may hold
 * spaces, parens and quoted strings: BODY[HEADER.FIELDS (FROM TO)]<0> is
 * one atom. */
static int imap_parser_atom(struct imap_parser_tok_ctx *t)
{
	struct imap_parser *parser = t->parser;
	const char *buf = parser->buf;
	size_t start = t->pos, pos = t->pos;

	while (pos < t->end) {
		unsigned char c = (unsigned char)buf[pos];

		if (c == '[') {
			size_t open = pos;
			bool in_quote = false;

			for (pos++;; pos++) {
				if (pos >= t->end ||
				    imap_parser_eol(buf, pos, t->end) > 0) {
					imap_parser_set_error(
						parser,
						"'[' at byte %zu of the "
						"response is not closed by ']' "
						"before the end of the line",
						open - parser->rstart);
					return IMAP_PARSER_TOK_SYNTAX;
				}
				c = (unsigned char)buf[pos];
				if (in_quote) {
					if (c == '\\' && pos + 1 < t->end &&
					    buf[pos + 1] != '\r' &&
					    buf[pos + 1] != '\n')
						pos++;
					else if (c == '"')
						in_quote = false;
				} else if (c == '"') {
					in_quote = true;
				} else if (c == ']') {
					break;
				}
			}
			pos++;
			continue;
		}
		if (!imap_parser_is_atom_char(c, t->code))
			break;
		pos++;
	}
	t->pos = pos;
	if (imap_parser_word_is(buf + start, pos - start, "nil"))
		return imap_parser_add(t, IMAP_ARG_NIL, 0, 0, false);
	return imap_parser_add(t, IMAP_ARG_ATOM, start, pos - start, false);
}

/* Arguments up to the end of the line (data) or to the "]" closing a
 * response code.  On success the top level's items are in done from
 * *first_r on. */
static int imap_parser_args(struct imap_parser_tok_ctx *t, size_t *first_r,
			    size_t *count_r)
{
	struct imap_parser *parser = t->parser;
	const char *buf = parser->buf;
	int ret;

	for (;;) {
		unsigned char c;

		if (t->pos >= t->end) {
			/* Cannot happen: every response ends with LF. */
			imap_parser_set_error(parser,
					      "response ends unexpectedly");
			return IMAP_PARSER_TOK_SYNTAX;
		}
		c = (unsigned char)buf[t->pos];
		if (c == ' ') {
			t->pos++;
			continue;
		}
		if (imap_parser_eol(buf, t->pos, t->end) > 0) {
			if (t->code) {
				imap_parser_set_error(
					parser,
					"response code not closed by ']'");
				return IMAP_PARSER_TOK_SYNTAX;
			}
			if (parser->depth > 0) {
				imap_parser_set_error(
					parser,
					"%u list(s) not closed by ')' at the "
					"end of the response",
					parser->depth);
				return IMAP_PARSER_TOK_SYNTAX;
			}
			break;
		}
		if (t->code && c == ']' && parser->depth == 0) {
			t->pos++;
			break;
		}
		if (c == '(')
			ret = imap_parser_open_list(t);
		else if (c == ')')
			ret = imap_parser_close_list(t);
		else if (c == '"')
			ret = imap_parser_quoted(t);
		else if (c == '{')
			ret = imap_parser_literal(t);
		else if (c == '~' && t->literals && t->pos + 1 < t->end &&
			 buf[t->pos + 1] == '{') {
			/* literal8 (RFC 3516), in FETCH BINARY[] answers. */
			t->pos++;
			ret = imap_parser_literal(t);
		}
		else if (imap_parser_is_atom_char(c, t->code))
			ret = imap_parser_atom(t);
		else {
			bool ctl = imap_parser_is_ctl(c);

			imap_parser_set_error(
				parser,
				"unexpected %s 0x%02x ('%c') at byte %zu of "
				"the response",
				ctl ? "control character" : "character", c,
				ctl ? '?' : c, t->pos - parser->rstart);
			ret = IMAP_PARSER_TOK_SYNTAX;
		}
		if (ret < 0)
			return ret;
	}
	*count_r = parser->open.len;
	return imap_parser_close_level(parser, 0, first_r);
}

static void imap_parser_reset_tree(struct imap_parser *parser)
{
	parser->open.len = 0;
	parser->done.len = 0;
	parser->depth = 0;
	parser->nargs = 0;
}

/* A response code that is not made of arguments is still a valid generic
 * code (RFC 3501: atom [SP 1*<any TEXT-CHAR except "]">]), e.g.
 * "[X-FOO say "hi]": keep its name as an atom and the rest, up to the
 * first "]", as one raw string.  Without any "]" the "[" is just text. */
static int imap_parser_raw_code(struct imap_parser *parser, size_t open,
				size_t cend, size_t *first_r, size_t *count_r,
				size_t *after_r)
{
	struct imap_parser_tok_ctx t = { .parser = parser };
	const char *buf = parser->buf;
	size_t close = open + 1, name_end, rest;

	imap_parser_reset_tree(parser);
	*first_r = 0;
	*count_r = 0;
	while (close < cend && buf[close] != ']')
		close++;
	if (close == cend) {
		*after_r = open;
		return IMAP_PARSER_TOK_OK;
	}
	*after_r = close + 1;
	name_end = open + 1;
	while (name_end < close && buf[name_end] != ' ')
		name_end++;
	if (name_end > open + 1 &&
	    imap_parser_add(&t, IMAP_ARG_ATOM, open + 1, name_end - open - 1,
			    false) < 0)
		return IMAP_PARSER_TOK_FATAL;
	rest = name_end;
	while (rest < close && buf[rest] == ' ')
		rest++;
	if (rest < close &&
	    imap_parser_add(&t, IMAP_ARG_STRING, rest, close - rest, false) < 0)
		return IMAP_PARSER_TOK_FATAL;
	*count_r = parser->open.len;
	return imap_parser_close_level(parser, 0, first_r);
}

/* Only now, with the whole response parsed, may bytes be changed. */
static int imap_parser_finish(struct imap_parser *parser, size_t first,
			      size_t count, bool code)
{
	const struct imap_parser_vec *done = &parser->done;
	char *buf = parser->buf;
	struct imap_arg *args;

	if (done->len > parser->args_cap) {
		if (done->len > SIZE_MAX / sizeof(*args))
			return imap_parser_oom(parser);
		args = realloc(parser->args, done->len * sizeof(*args));
		if (args == NULL)
			return imap_parser_oom(parser);
		parser->args = args;
		parser->args_cap = done->len;
	}
	args = parser->args;
	for (size_t i = 0; i < done->len; i++) {
		const struct imap_parser_node *node = &done->v[i];

		args[i].type = node->type;
		args[i].len = node->len;
		switch (node->type) {
		case IMAP_ARG_LIST:
			args[i].v.items = args + node->off;
			break;
		case IMAP_ARG_NIL:
			args[i].v.str = NULL;
			break;
		case IMAP_ARG_STRING:
			if (node->escaped) {
				size_t src = node->off, dst = node->off;

				for (size_t k = 0; k < node->len; k++) {
					if (buf[src] == '\\')
						src++;
					buf[dst++] = buf[src++];
				}
			}
			/* fall through */
		case IMAP_ARG_ATOM:
		case IMAP_ARG_LITERAL:
			buf[node->off + node->len] = '\0';
			args[i].v.str = buf + node->off;
			break;
		}
	}
	if (parser->tag_nul != SIZE_MAX)
		buf[parser->tag_nul] = '\0';
	if (parser->text_nul != SIZE_MAX)
		buf[parser->text_nul] = '\0';
	if (code) {
		parser->resp.code = count > 0 ? args + first : NULL;
		parser->resp.code_count = count;
	} else {
		parser->resp.args = count > 0 ? args + first : NULL;
		parser->resp.args_count = count;
	}
	return IMAP_PARSER_TOK_OK;
}

/* Parses the complete response [rstart, scan). */
static int imap_parser_parse(struct imap_parser *parser)
{
	struct imap_response *resp = &parser->resp;
	const char *buf = parser->buf;
	struct imap_parser_tok_ctx t = {
		.parser = parser, .pos = parser->rstart, .end = parser->scan,
	};
	size_t cend, tag_end, first = 0, count = 0;
	int ret;

	imap_parser_reset_tree(parser);
	memset(resp, 0, sizeof(*resp));
	resp->status = parser->line_status;
	resp->text = "";
	parser->tag_nul = SIZE_MAX;
	parser->text_nul = SIZE_MAX;
	/* End of the first line's content; for status and continuation
	 * responses the only line. */
	cend = t.pos;
	while (cend < t.end && imap_parser_eol(buf, cend, t.end) == 0)
		cend++;

	if (parser->line_class == IMAP_PARSER_LINE_CONTINUATION) {
		size_t text = t.pos + 1;

		if (text < cend && buf[text] == ' ')
			text++;
		resp->kind = IMAP_RESP_CONTINUATION;
		resp->status = IMAP_STATUS_NONE;
		parser->text_nul = cend;
		if (imap_parser_finish(parser, 0, 0, false) < 0)
			return -1;
		resp->text = parser->buf + text;
		return 0;
	}

	tag_end = t.pos;
	while (tag_end < cend && buf[tag_end] != ' ')
		tag_end++;
	if (tag_end - t.pos == 1 && buf[t.pos] == '*') {
		resp->kind = IMAP_RESP_UNTAGGED;
	} else {
		char shown[48];

		for (size_t i = t.pos; i < tag_end; i++) {
			if (!imap_parser_is_atom_char((unsigned char)buf[i],
						      false) ||
			    buf[i] == '*' || buf[i] == '+') {
				imap_parser_set_error(
					parser, "invalid tag \"%s\"",
					imap_parser_printable(
						shown, sizeof(shown),
						buf + t.pos, tag_end - t.pos));
				return -1;
			}
		}
		if (tag_end == t.pos) {
			imap_parser_set_error(parser,
					      "response line starts with a "
					      "space instead of a tag");
			return -1;
		}
		resp->kind = IMAP_RESP_TAGGED;
		parser->tag_nul = tag_end;
	}
	t.pos = tag_end;

	if (parser->line_class == IMAP_PARSER_LINE_STATUS) {
		size_t open;

		while (t.pos < cend && buf[t.pos] == ' ')
			t.pos++;
		while (t.pos < cend && buf[t.pos] != ' ' && buf[t.pos] != '[')
			t.pos++;
		while (t.pos < cend && buf[t.pos] == ' ')
			t.pos++;
		if (t.pos < cend && buf[t.pos] == '[') {
			open = t.pos++;
			t.code = true;
			ret = imap_parser_args(&t, &first, &count);
			if (ret == IMAP_PARSER_TOK_SYNTAX)
				ret = imap_parser_raw_code(parser, open, cend,
							   &first, &count,
							   &t.pos);
			if (ret < 0)
				return -1;
		}
		while (t.pos < cend && buf[t.pos] == ' ')
			t.pos++;
		parser->text_nul = cend;
		if (imap_parser_finish(parser, first, count, true) < 0)
			return -1;
		resp->text = parser->buf + t.pos;
	} else {
		t.literals = true;
		if (imap_parser_args(&t, &first, &count) < 0)
			return -1;
		if (t.pos + imap_parser_eol(buf, t.pos, t.end) != t.end) {
			imap_parser_set_error(parser,
					      "line end at byte %zu of the "
					      "response does not end it",
					      t.pos - parser->rstart);
			return -1;
		}
		if (imap_parser_finish(parser, first, count, false) < 0)
			return -1;
	}
	if (resp->kind == IMAP_RESP_TAGGED)
		resp->tag = parser->buf + parser->rstart;
	return 0;
}

struct imap_parser *imap_parser_new(const struct imap_parser_limits *limits)
{
	struct imap_parser *parser = calloc(1, sizeof(*parser));
	struct imap_parser_limits *l;

	if (parser == NULL)
		return NULL;
	l = &parser->limits;
	if (limits != NULL)
		*l = *limits;
	if (l->max_line == 0)
		l->max_line = IMAP_PARSER_DEFAULT_MAX_LINE;
	if (l->max_literal == 0)
		l->max_literal = IMAP_PARSER_DEFAULT_MAX_LITERAL;
	if (l->max_response == 0) {
		l->max_response =
			l->max_literal > SIZE_MAX - IMAP_PARSER_DEFAULT_MAX_LINE
				? SIZE_MAX
				: l->max_literal + IMAP_PARSER_DEFAULT_MAX_LINE;
	}
	if (l->max_depth == 0)
		l->max_depth = IMAP_PARSER_DEFAULT_MAX_DEPTH;
	if (l->max_args == 0)
		l->max_args = IMAP_PARSER_DEFAULT_MAX_ARGS;
	parser->first_line = true;
	imap_parser_new_line(parser, 0);
	return parser;
}

void imap_parser_free(struct imap_parser **parser)
{
	struct imap_parser *p = *parser;

	if (p == NULL)
		return;
	free(p->buf);
	free(p->held);
	free(p->open.v);
	free(p->done.v);
	free(p->frames);
	free(p->args);
	free(p);
	*parser = NULL;
}

/* The capacity for need bytes.  A literal being received has a known end:
 * room for all of it and a little of the line after, once.  Otherwise
 * twice need, or a quarter more once that is large: doubling made a
 * 256 MiB literal cost 512 MiB. */
static size_t imap_parser_grow_size(const struct imap_parser *parser, size_t need,
				    size_t shift)
{
	const size_t slack = 64 * 1024;

	if (parser->in_literal && parser->lit_end - shift > need)
		need = parser->lit_end - shift;
	if (parser->in_literal)
		return need > SIZE_MAX - slack ? need : need + slack;
	if (need <= IMAP_PARSER_KEEP_BUFFER)
		return need * 2;
	return need > SIZE_MAX - need / 4 ? need : need + need / 4;
}

/* Makes room for add more bytes.  The unread bytes [rstart, len) move to
 * the front, in place when that frees at least half the buffer (so each
 * byte moves O(1) times on average), else into a bigger buffer.  While the
 * buffer holds the response the caller has, it is never changed in place:
 * the bytes go to a new buffer and the old one is held. */
static int imap_parser_make_room(struct imap_parser *parser, size_t add)
{
	size_t live = parser->len - parser->rstart, shift = parser->rstart;
	bool pinned = parser->outstanding && parser->held == NULL;
	size_t need, cap;
	char *buf;

	if (add > SIZE_MAX - live)
		return -1;
	need = live + add;
	if (!pinned && need <= parser->cap && live <= parser->cap / 2) {
		memmove(parser->buf, parser->buf + shift, live);
	} else {
		cap = imap_parser_grow_size(parser, need, shift);
		if (cap < IMAP_PARSER_MIN_BUFFER)
			cap = IMAP_PARSER_MIN_BUFFER;
		if (!pinned && shift == 0) {
			/* realloc can grow a big buffer without copying. */
			buf = realloc(parser->buf, cap);
			if (buf == NULL)
				return -1;
		} else {
			buf = malloc(cap);
			if (buf == NULL)
				return -1;
			if (live > 0)
				memcpy(buf, parser->buf + shift, live);
			if (pinned)
				parser->held = parser->buf;
			else
				free(parser->buf);
		}
		parser->buf = buf;
		parser->cap = cap;
	}
	parser->len = live;
	parser->rstart = 0;
	parser->scan -= shift;
	parser->line_start -= shift;
	if (parser->brace != IMAP_PARSER_NO_BRACE)
		parser->brace -= shift;
	if (parser->in_literal)
		parser->lit_end -= shift;
	return 0;
}

int imap_parser_feed(struct imap_parser *parser, const void *data, size_t len)
{
	if (parser->failed)
		return -1;
	if (len == 0)
		return 0;
	if (len > parser->cap - parser->len &&
	    imap_parser_make_room(parser, len) < 0) {
		imap_parser_set_error(parser,
				      "out of memory buffering %zu bytes of "
				      "input",
				      len);
		return imap_parser_fail(parser);
	}
	memcpy(parser->buf + parser->len, data, len);
	parser->len += len;
	/* Scanning now finds an over-long line or literal while it arrives,
	 * not when the caller next asks. */
	return imap_parser_scan(parser);
}

int imap_parser_next(struct imap_parser *parser,
		     const struct imap_response **resp_r, const char **error_r)
{
	if (parser->failed)
		goto failed;
	if (parser->outstanding) {
		parser->outstanding = false;
		free(parser->held);
		parser->held = NULL;
		if (parser->rstart == parser->len) {
			/* Nothing unread: start over at the front, and give
			 * back a buffer a big literal left behind. */
			if (parser->cap > IMAP_PARSER_KEEP_BUFFER) {
				free(parser->buf);
				parser->buf = NULL;
				parser->cap = 0;
			}
			parser->len = 0;
			parser->rstart = 0;
			imap_parser_new_line(parser, 0);
		}
	}
	if (imap_parser_scan(parser) < 0)
		goto failed;
	if (!parser->complete)
		return 0;
	if (imap_parser_parse(parser) < 0) {
		imap_parser_fail(parser);
		goto failed;
	}
	parser->complete = false;
	parser->first_line = true;
	parser->outstanding = true;
	parser->rstart = parser->scan;
	imap_parser_new_line(parser, parser->scan);
	*resp_r = &parser->resp;
	return 1;
failed:
	if (error_r != NULL)
		*error_r = parser->error;
	return -1;
}

size_t imap_parser_pending(const struct imap_parser *parser)
{
	return parser->len - parser->rstart;
}

size_t imap_parser_buffer_size(const struct imap_parser *parser)
{
	return parser->cap;
}

size_t imap_parser_literal_remaining(const struct imap_parser *parser)
{
	if (!parser->in_literal || parser->len >= parser->lit_end)
		return 0;
	return parser->lit_end - parser->len;
}

bool imap_arg_atom_is(const struct imap_arg *arg, const char *s)
{
	return arg != NULL && arg->type == IMAP_ARG_ATOM &&
	       imap_parser_word_is(arg->v.str, arg->len, s);
}

bool imap_arg_number(const struct imap_arg *arg, uint64_t *n_r)
{
	uint64_t n = 0;

	if (arg == NULL || arg->type != IMAP_ARG_ATOM || arg->len == 0)
		return false;
	for (size_t i = 0; i < arg->len; i++) {
		char c = arg->v.str[i];

		if (c < '0' || c > '9')
			return false;
		if (n > (UINT64_MAX - (uint64_t)(c - '0')) / 10)
			return false;
		n = n * 10 + (uint64_t)(c - '0');
	}
	*n_r = n;
	return true;
}

bool imap_arg_astring(const struct imap_arg *arg, const char **s_r,
		      size_t *len_r)
{
	if (arg == NULL)
		return false;
	switch (arg->type) {
	case IMAP_ARG_ATOM:
	case IMAP_ARG_STRING:
	case IMAP_ARG_LITERAL:
		*s_r = arg->v.str;
		*len_r = arg->len;
		return true;
	case IMAP_ARG_NIL:
		*s_r = NULL;
		*len_r = 0;
		return true;
	case IMAP_ARG_LIST:
		break;
	}
	return false;
}

bool imap_arg_nstring(const struct imap_arg *arg, const char **s_r,
		      size_t *len_r)
{
	if (arg == NULL || arg->type == IMAP_ARG_ATOM)
		return false;
	return imap_arg_astring(arg, s_r, len_r);
}

const struct imap_arg *imap_fetch_get(const struct imap_arg *list,
				      const char *key)
{
	if (list == NULL || list->type != IMAP_ARG_LIST)
		return NULL;
	for (size_t i = 0; i + 1 < list->len; i += 2) {
		if (imap_arg_atom_is(&list->v.items[i], key))
			return &list->v.items[i + 1];
	}
	return NULL;
}
