/* pop3-parser.h: the POP3 response parser (RFC 1939, 2449, 5034), no I/O.
 *
 * Bytes go in with pop3_parser_feed() in pieces of any size (one byte at a
 * time works); complete responses come out of pop3_parser_next().  POP3
 * responses do not say whether a multi-line body follows: that depends on
 * the command (RETR, TOP, UIDL and LIST without argument, CAPA), so the
 * caller says it for each response it asks for.  Only a "+OK" starts a
 * body; a "-ERR" (or a SASL "+ " continuation) is always one line.
 *
 * A multi-line body is returned dot-unstuffed (a line's leading '.' is
 * removed) without the terminating ".": for RETR it is exactly the message,
 * every line with the line ending the server sent (CRLF, or a bare LF,
 * which is tolerated).  Only CRLF "." CRLF ends the body of a response
 * whose status line ended in CRLF (a "." line after a bare LF is data);
 * LF "." LF ends it too only when the status line ended in a bare LF.  Every size is checked against the limits
 * before anything is allocated, so a hostile server cannot grow memory
 * beyond max_line + max_body (plus the caller's unread input). */
#ifndef MAILFS_POP3_PARSER_H
#define MAILFS_POP3_PARSER_H

#include <stdbool.h>
#include <stddef.h>

enum pop3_status {
	POP3_STATUS_OK,   /* "+OK ..." */
	POP3_STATUS_ERR,  /* "-ERR ..." */
	POP3_STATUS_CONT, /* "+ ..." : SASL continuation (AUTH) */
};

struct pop3_response {
	enum pop3_status status;
	/* The whole status line without its line ending, NUL-terminated
	 * (a NUL sent by the server cuts it short for string functions;
	 * line_len counts every byte). */
	const char *line;
	size_t line_len;
	/* The text after the status indicator and one space, e.g. for
	 * "-ERR [IN-USE] locked" "[IN-USE] locked"; for "+ " the SASL
	 * challenge.  Never NULL, may be "". */
	const char *text;
	/* Multi-line responses: the body, dot-unstuffed, without the final
	 * ".", NUL-terminated (body_len excludes the NUL; the body may hold
	 * NULs of its own).  Single-line responses: multiline is false and
	 * body is "" with body_len 0. */
	bool multiline;
	const char *body;
	size_t body_len;
};

struct pop3_parser_limits {
	size_t max_line; /* bytes of a status line with its CRLF; 0: 64 KiB
			    (RFC 1939 says 512: be liberal) */
	size_t max_body; /* bytes of one multi-line body after unstuffing;
			    0: 1 GiB */
};

struct pop3_parser;

/* limits may be NULL for the defaults.  NULL when out of memory. */
struct pop3_parser *pop3_parser_new(const struct pop3_parser_limits *limits);
void pop3_parser_free(struct pop3_parser **parser);

/* Append input.  Returns 0, or -1 when out of memory or when the parser
 * has already failed (see pop3_parser_next).  Input is copied; the caller's
 * buffer can be reused. */
int pop3_parser_feed(struct pop3_parser *parser, const void *data, size_t len);

/* Take the next complete response.  multiline: the command this response
 * answers has a multi-line answer when it succeeds.  Pass the same value
 * on every call until that response has been returned.
 *   1: *resp_r is set; it stays valid until the next call to
 *      pop3_parser_next() or pop3_parser_free() on this parser.
 *   0: need more input.
 *  -1: the input is malformed or over a limit; *error_r says why (e.g.
 *      "multi-line response exceeds the limit of 1073741824 bytes").  The
 *      parser stays failed: the connection must be dropped. */
int pop3_parser_next(struct pop3_parser *parser, bool multiline,
		     const struct pop3_response **resp_r, const char **error_r);

/* Bytes fed but not yet returned as part of a response.  The STLS
 * injection check: after the "+OK" to STLS this must be 0. */
size_t pop3_parser_pending(const struct pop3_parser *parser);

/* While a multi-line body is being read: its bytes so far (0 otherwise).
 * Lets the caller tell "closed in the middle of a message". */
size_t pop3_parser_body_so_far(const struct pop3_parser *parser);

#endif
