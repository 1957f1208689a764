/* imap-parser.h: the IMAP response parser (RFC 3501/9051), no I/O.
 *
 * Bytes go in with imap_parser_feed() in pieces of any size (one byte at a
 * time works); complete responses come out of imap_parser_next().  A
 * response is one server line plus the literals it announces ({n} or
 * {n+} / {n-} before CRLF), parsed into a tree of arguments.  Every length
 * the server sends is checked against the limits before anything is
 * allocated, so a hostile server cannot grow memory beyond max_response
 * per response (callers feed more only after imap_parser_next() said it
 * needs more).
 *
 * Details: status and continuation responses are always one line (no
 * literal in a response code); a response code that does not parse as
 * arguments becomes its name atom plus one raw string; ']' is accepted in
 * atoms outside codes (a mailbox may be called "a]b"); empty lines are
 * skipped; a literal must be followed by a space, ')' or the line end;
 * literal8 (~{n}) comes out as a LITERAL; data responses have text "".
 *
 * Syntax handled: tags, "*", "+" continuations; atoms (including flags like
 * \Seen and \*, and fetch keys with sections such as BODY[] BODY[HEADER]
 * BODY[HEADER.FIELDS (FROM TO)]<0>, which stay one atom); quoted strings
 * with \" and \\ escapes (8-bit bytes accepted); literals of any allowed
 * size (may contain NUL); NIL; nested parenthesised lists.  Status
 * responses (OK, NO, BAD, BYE, PREAUTH, tagged or untagged) get their
 * optional [response code] parsed into arguments and the rest of the line
 * kept as free text.  Continuation lines ("+ ...") keep their text only. */
#ifndef MAILFS_IMAP_PARSER_H
#define MAILFS_IMAP_PARSER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum imap_arg_type {
	IMAP_ARG_ATOM,    /* also numbers: use imap_arg_number() */
	IMAP_ARG_STRING,  /* quoted string, unescaped */
	IMAP_ARG_LITERAL, /* {n} literal: exactly n bytes, may contain NUL */
	IMAP_ARG_NIL,
	IMAP_ARG_LIST,
};

struct imap_arg {
	enum imap_arg_type type;
	/* ATOM, STRING, LITERAL: byte length of str (excluding the NUL the
	 * parser always adds).  LIST: number of items. */
	size_t len;
	union {
		const char *str;              /* ATOM, STRING, LITERAL */
		const struct imap_arg *items; /* LIST: len items */
	} v;
};

enum imap_resp_kind {
	IMAP_RESP_UNTAGGED,     /* "* ..." */
	IMAP_RESP_TAGGED,       /* "A1 OK ..." */
	IMAP_RESP_CONTINUATION, /* "+ ..." */
};

enum imap_status {
	IMAP_STATUS_NONE, /* not a status response ("* 3 EXISTS", "* LIST ...") */
	IMAP_STATUS_OK,
	IMAP_STATUS_NO,
	IMAP_STATUS_BAD,
	IMAP_STATUS_BYE,
	IMAP_STATUS_PREAUTH,
};

struct imap_response {
	enum imap_resp_kind kind;
	const char *tag;        /* TAGGED: the tag; else NULL */
	enum imap_status status;
	/* Status responses: the response code's arguments, e.g. for
	 * "[UIDVALIDITY 3857529045]" two atoms, for "[PERMANENTFLAGS (\Seen)]"
	 * an atom and a list, for "[ALERT]" one atom.  code_count is 0 when
	 * there is no code. */
	const struct imap_arg *code;
	size_t code_count;
	/* Status and continuation responses: the free text after the code,
	 * NUL-terminated, never NULL (may be ""). */
	const char *text;
	/* Other responses: the arguments after the tag, e.g. for
	 * "* 12 FETCH (UID 7 FLAGS (\Seen))": atom "12", atom "FETCH", list;
	 * for "* LIST (\HasNoChildren) "/" INBOX": atom LIST, list, string,
	 * atom.  Status responses have args_count 0. */
	const struct imap_arg *args;
	size_t args_count;
};

struct imap_parser_limits {
	size_t max_line;     /* bytes of one line, literals excluded; 0: 8 MiB */
	size_t max_literal;  /* bytes of one literal; 0: 1 GiB */
	size_t max_response; /* line bytes + literal bytes of one response;
				0: max_literal + 8 MiB */
	unsigned max_depth;  /* list nesting; 0: 64 */
	size_t max_args;     /* arguments in one response, all levels;
				0: 1,000,000 */
};

struct imap_parser;

/* limits may be NULL for the defaults. */
struct imap_parser *imap_parser_new(const struct imap_parser_limits *limits);
void imap_parser_free(struct imap_parser **parser);

/* Append input.  Returns 0, or -1 when the parser has failed, already or
 * because of these bytes (see imap_parser_next).  Input is copied; the caller's buffer can be reused. */
int imap_parser_feed(struct imap_parser *parser, const void *data, size_t len);

/* Take the next complete response.
 *   1: *resp_r is set; it stays valid until the next call to
 *      imap_parser_next() or imap_parser_free() on this parser.
 *   0: need more input.
 *  -1: the input is malformed or over a limit; *error_r says why (e.g.
 *      "literal of 4294967296 bytes exceeds limit of 1073741824").  The
 *      parser stays failed: the connection must be dropped. */
int imap_parser_next(struct imap_parser *parser,
		     const struct imap_response **resp_r, const char **error_r);

/* Bytes fed but not yet returned as part of a response.  The STARTTLS
 * injection check: after the tagged OK to STARTTLS this must be 0. */
size_t imap_parser_pending(const struct imap_parser *parser);

/* While a response is incomplete: how many literal bytes it still waits
 * for (0 when reading a line).  Lets the caller report progress or size
 * reads. */
size_t imap_parser_literal_remaining(const struct imap_parser *parser);

/* Bytes allocated for buffered input now (memory accounting, tests). */
size_t imap_parser_buffer_size(const struct imap_parser *parser);

/* Helpers over parsed arguments. */

/* ATOM equal to s, ASCII case-insensitively. */
bool imap_arg_atom_is(const struct imap_arg *arg, const char *s);
/* ATOM made only of digits, fitting in uint64_t. */
bool imap_arg_number(const struct imap_arg *arg, uint64_t *n_r);
/* STRING, LITERAL or ATOM ("astring"): its bytes; NIL gives true with
 * *s_r = NULL. */
bool imap_arg_astring(const struct imap_arg *arg, const char **s_r,
		      size_t *len_r);
/* STRING, LITERAL or NIL ("nstring"): NIL gives *s_r = NULL. */
bool imap_arg_nstring(const struct imap_arg *arg, const char **s_r,
		      size_t *len_r);
/* In a FETCH attribute list (key value key value ...), the value of key
 * (ASCII case-insensitive, e.g. "BODY[]"), or NULL. */
const struct imap_arg *imap_fetch_get(const struct imap_arg *list,
				      const char *key);

#endif
