/* test-imap-parser.c: the IMAP response parser against server transcripts.
 *
 * Each case is fed whole, then split in two at every byte boundary, then
 * one byte at a time, and every way must give the same responses (or the
 * same error).  Responses are compared through a one-line dump, so a case
 * reads like the server output it came from.  The input pieces are copied
 * into scratch buffers that are wiped after each feed, which checks that
 * the parser keeps its own copy. */
#include "imap-parser.h"

#include "check.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct test_out {
	char *s;
	size_t len, cap;
};

static void test_out_add(struct test_out *out, const char *s, size_t len)
{
	if (out->cap - out->len <= len) {
		size_t cap = (out->len + len + 1) * 2;

		out->s = realloc(out->s, cap);
		if (out->s == NULL)
			abort();
		out->cap = cap;
	}
	memcpy(out->s + out->len, s, len);
	out->len += len;
	out->s[out->len] = '\0';
}

static void test_out_printf(struct test_out *out, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void test_out_printf(struct test_out *out, const char *fmt, ...)
{
	char tmp[512];
	va_list args;
	int n;

	va_start(args, fmt);
	n = vsnprintf(tmp, sizeof(tmp), fmt, args);
	va_end(args);
	test_out_add(out, tmp, (size_t)n < sizeof(tmp) ? (size_t)n
						       : sizeof(tmp) - 1);
}

/* Bytes outside printable ASCII as \xNN; in quoted form also \" and \\. */
static void test_dump_bytes(struct test_out *out, const char *s, size_t len,
			    bool quoted)
{
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c < 0x20 || c >= 0x7f)
			test_out_printf(out, "\\x%02x", c);
		else if (quoted && (c == '"' || c == '\\'))
			test_out_printf(out, "\\%c", c);
		else
			test_out_add(out, (const char *)&c, 1);
	}
}

static void test_dump_arg(struct test_out *out, const struct imap_arg *arg)
{
	switch (arg->type) {
	case IMAP_ARG_NIL:
		test_out_add(out, "NIL", 3);
		if (arg->v.str != NULL || arg->len != 0)
			test_out_add(out, "!BADNIL", 7);
		return;
	case IMAP_ARG_LIST:
		test_out_add(out, "(", 1);
		for (size_t i = 0; i < arg->len; i++) {
			if (i > 0)
				test_out_add(out, " ", 1);
			test_dump_arg(out, &arg->v.items[i]);
		}
		test_out_add(out, ")", 1);
		return;
	case IMAP_ARG_ATOM:
	case IMAP_ARG_STRING:
	case IMAP_ARG_LITERAL:
		break;
	}
	if (arg->v.str == NULL) {
		test_out_add(out, "!NULLSTR", 8);
		return;
	}
	if (arg->type == IMAP_ARG_ATOM) {
		test_dump_bytes(out, arg->v.str, arg->len, false);
	} else {
		if (arg->type == IMAP_ARG_LITERAL)
			test_out_printf(out, "{%zu}", arg->len);
		test_out_add(out, "\"", 1);
		test_dump_bytes(out, arg->v.str, arg->len, true);
		test_out_add(out, "\"", 1);
	}
	if (arg->v.str[arg->len] != '\0')
		test_out_add(out, "!NONUL", 6);
}

static void test_dump_args(struct test_out *out, const struct imap_arg *args,
			   size_t count)
{
	for (size_t i = 0; i < count; i++) {
		test_out_add(out, " ", 1);
		test_dump_arg(out, &args[i]);
	}
}

static void test_dump_response(struct test_out *out,
			       const struct imap_response *resp)
{
	static const char *const statuses[] = {
		"", " OK", " NO", " BAD", " BYE", " PREAUTH",
	};

	if (out->len > 0)
		test_out_add(out, "\n", 1);
	switch (resp->kind) {
	case IMAP_RESP_UNTAGGED:
		test_out_add(out, "*", 1);
		if (resp->tag != NULL)
			test_out_add(out, "!TAG", 4);
		break;
	case IMAP_RESP_CONTINUATION:
		test_out_add(out, "+", 1);
		if (resp->tag != NULL)
			test_out_add(out, "!TAG", 4);
		break;
	case IMAP_RESP_TAGGED:
		if (resp->tag == NULL)
			test_out_add(out, "!NOTAG", 6);
		else
			test_dump_bytes(out, resp->tag, strlen(resp->tag),
					false);
		break;
	}
	test_out_add(out, statuses[resp->status],
		     strlen(statuses[resp->status]));
	if (resp->code_count > 0) {
		test_out_add(out, " [", 2);
		for (size_t i = 0; i < resp->code_count; i++) {
			if (i > 0)
				test_out_add(out, " ", 1);
			test_dump_arg(out, &resp->code[i]);
		}
		test_out_add(out, "]", 1);
	}
	if (resp->text == NULL) {
		test_out_add(out, " !NULLTEXT", 10);
	} else if (resp->status != IMAP_STATUS_NONE ||
		   resp->kind == IMAP_RESP_CONTINUATION) {
		test_out_add(out, " \"", 2);
		test_dump_bytes(out, resp->text, strlen(resp->text), true);
		test_out_add(out, "\"", 1);
	} else if (resp->text[0] != '\0') {
		test_out_add(out, " !TEXT", 6);
	}
	if (resp->status != IMAP_STATUS_NONE && resp->args_count != 0)
		test_out_add(out, " !ARGS", 6);
	test_dump_args(out, resp->args, resp->args_count);
}

/* Takes every complete response; false once the parser has failed. */
static bool test_drain(struct imap_parser *parser, struct test_out *out)
{
	const struct imap_response *resp;
	const char *error;
	int ret;

	while ((ret = imap_parser_next(parser, &resp, &error)) > 0)
		test_dump_response(out, resp);
	if (ret == 0)
		return true;
	if (out->len > 0)
		test_out_add(out, "\n", 1);
	test_out_printf(out, "ERROR: %s", error);
	/* The failure sticks. */
	if (imap_parser_next(parser, &resp, &error) != -1 ||
	    imap_parser_feed(parser, "x", 1) != -1)
		test_out_add(out, " !NOTSTICKY", 11);
	return false;
}

/* Feeds input in pieces ending at the given offsets (the last piece runs
 * to the end); returns the dump, to be freed. */
static char *test_run(const char *input, size_t len,
		      const struct imap_parser_limits *limits,
		      const size_t *cuts, size_t ncuts, bool bytewise)
{
	struct imap_parser *parser = imap_parser_new(limits);
	struct test_out out = { 0 };
	size_t pos = 0, cut = 0;

	test_out_add(&out, "", 0);
	while (pos < len) {
		size_t end = cut < ncuts ? cuts[cut++] : len;
		size_t n;
		char *copy;

		if (bytewise)
			end = pos + 1;
		n = end - pos;
		copy = malloc(n);

		memcpy(copy, input + pos, n);
		if (imap_parser_feed(parser, copy, n) < 0) {
			memset(copy, 'X', n);
			free(copy);
			test_drain(parser, &out);
			goto done;
		}
		memset(copy, 'X', n);
		free(copy);
		pos = end;
		if (!test_drain(parser, &out))
			goto done;
	}
	if (imap_parser_pending(parser) > 0)
		test_out_printf(&out, "%sPENDING %zu", out.len > 0 ? "\n" : "",
				imap_parser_pending(parser));
done:
	imap_parser_free(&parser);
	return out.s;
}

/* The case whole must dump as expected; split anywhere, the same. */
static void test_case_n(const char *name, const char *input, size_t len,
			const struct imap_parser_limits *limits,
			const char *expected)
{
	char *whole = test_run(input, len, limits, NULL, 0, false);
	size_t bad_two = 0, bad_three = 0;
	char *got;

	if (strcmp(whole, expected) != 0)
		fprintf(stderr, "case %s:\n", name);
	CHECK_STR(whole, expected);
	for (size_t i = 1; i < len; i++) {
		size_t cuts[2] = { i, len };

		got = test_run(input, len, limits, cuts, 1, false);
		if (strcmp(got, whole) != 0 && bad_two++ == 0)
			fprintf(stderr, "case %s split at %zu:\n%s\n", name,
				i, got);
		free(got);
		/* Three pieces, the middle one short: catches state that
		 * survives one boundary but not two close together. */
		if (i + 3 < len) {
			cuts[1] = i + 3;
			got = test_run(input, len, limits, cuts, 2, false);
			if (strcmp(got, whole) != 0 && bad_three++ == 0)
				fprintf(stderr,
					"case %s split at %zu and %zu:\n%s\n",
					name, i, i + 3, got);
			free(got);
		}
	}
	CHECK(bad_two == 0);
	CHECK(bad_three == 0);
	got = test_run(input, len, limits, NULL, 0, true);
	if (strcmp(got, whole) != 0)
		fprintf(stderr, "case %s byte by byte:\n%s\n", name, got);
	CHECK_STR(got, whole);
	free(got);
	free(whole);
}

#define test_case(name, input, limits, expected)                            \
	test_case_n(name, input, sizeof(input) - 1, limits, expected)

static void test_status(void)
{
	test_case("greeting",
		  "* OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR AUTH=PLAIN] "
		  "Dovecot ready.\r\n",
		  NULL,
		  "* OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR AUTH=PLAIN] "
		  "\"Dovecot ready.\"");
	test_case("tagged ok", "A1 OK LOGIN completed\r\n", NULL,
		  "A1 OK \"LOGIN completed\"");
	test_case("tagged no with code",
		  "A2 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n",
		  NULL,
		  "A2 NO [AUTHENTICATIONFAILED] \"Authentication failed.\"");
	test_case("tagged bad",
		  "A3 BAD Error in IMAP command received by server.\r\n", NULL,
		  "A3 BAD \"Error in IMAP command received by server.\"");
	test_case("tagged bad with code", "A3 BAD [CLIENTBUG] Bad syntax\r\n",
		  NULL, "A3 BAD [CLIENTBUG] \"Bad syntax\"");
	test_case("lowercase, no text", "a4 ok\r\n", NULL, "a4 OK \"\"");
	test_case("read-write",
		  "a5 ok [READ-WRITE] Select completed (0.001 + 0.000 "
		  "secs).\r\n",
		  NULL,
		  "a5 OK [READ-WRITE] \"Select completed (0.001 + 0.000 "
		  "secs).\"");
	test_case("copyuid",
		  "A6 OK [COPYUID 38505 304,319:320 3956:3958] Done\r\n", NULL,
		  "A6 OK [COPYUID 38505 304,319:320 3956:3958] \"Done\"");
	test_case("permanentflags",
		  "* OK [PERMANENTFLAGS (\\Answered \\Seen \\*)] Flags "
		  "permitted.\r\n",
		  NULL,
		  "* OK [PERMANENTFLAGS (\\Answered \\Seen \\*)] \"Flags "
		  "permitted.\"");
	test_case("highestmodseq", "* OK [HIGHESTMODSEQ 715194045007]\r\n",
		  NULL, "* OK [HIGHESTMODSEQ 715194045007] \"\"");
	test_case("uidvalidity",
		  "* OK [UIDVALIDITY 3857529045] UIDs valid\r\n", NULL,
		  "* OK [UIDVALIDITY 3857529045] \"UIDs valid\"");
	test_case("alert", "* NO [ALERT] Quota exceeded\r\n", NULL,
		  "* NO [ALERT] \"Quota exceeded\"");
	test_case("badcharset",
		  "B1 NO [BADCHARSET (UTF-8 \"US-ASCII\")] charset\r\n", NULL,
		  "B1 NO [BADCHARSET (UTF-8 \"US-ASCII\")] \"charset\"");
	test_case("bye", "* BYE Logging out\r\n", NULL,
		  "* BYE \"Logging out\"");
	test_case("preauth", "* PREAUTH [CAPABILITY IMAP4rev1] Logged in\r\n",
		  NULL, "* PREAUTH [CAPABILITY IMAP4rev1] \"Logged in\"");
	test_case("code glued, spaces", "* ok[alert]   look  here \r\n", NULL,
		  "* OK [alert] \"look  here \"");
	test_case("referral with ipv6",
		  "A1 NO [REFERRAL imap://u@[::1]/INBOX] Try there\r\n", NULL,
		  "A1 NO [REFERRAL imap://u@[::1]/INBOX] \"Try there\"");
	test_case("code without arguments", "* OK [] odd\r\n", NULL,
		  "* OK \"odd\"");
	/* Generic codes may hold any text but "]"; kept raw. */
	test_case("raw code", "* OK [X-FOO say \"hi] there\r\n", NULL,
		  "* OK [X-FOO \"say \\\"hi\"] \"there\"");
	test_case("raw code unbalanced paren",
		  "* NO [X-BAR (a b \\\"x] reason\r\n", NULL,
		  "* NO [X-BAR \"(a b \\\\\\\"x\"] \"reason\"");
	test_case("code never closed", "* OK [ALERT no close\r\n", NULL,
		  "* OK \"[ALERT no close\"");
	/* No literals in status responses, not even in a code. */
	test_case("literal in a code", "* NO [BADCHARSET {5}\r\n* 1 X\r\n",
		  NULL, "* NO \"[BADCHARSET {5}\"\n* 1 X");
	test_case("literal inside a closed code",
		  "* NO [BADCHARSET {5}\r\nUTF-8] x\r\n", NULL,
		  "* NO \"[BADCHARSET {5}\"\nUTF-8] x");
	/* Status responses are one line: a brace at the end is text. */
	test_case("status text ending like a literal",
		  "* OK see {5}\r\n* 1 EXISTS\r\n", NULL,
		  "* OK \"see {5}\"\n* 1 EXISTS");
	test_case("status text with control bytes",
		  "A1 OK a\x01" "b \"{\\\r\n", NULL,
		  "A1 OK \"a\\x01b \\\"{\\\\\"");
}

static void test_continuation(void)
{
	test_case("idling", "+ idling\r\n", NULL, "+ \"idling\"");
	test_case("plus space", "+ \r\n", NULL, "+ \"\"");
	test_case("plus alone", "+\r\n", NULL, "+ \"\"");
	test_case("plus bare lf", "+ go ahead\n", NULL, "+ \"go ahead\"");
	test_case("base64",
		  "+ YGgGCSqGSIb3EgECAgIBAAD/////6jcyG4GE3KkTzN0=\r\n", NULL,
		  "+ \"YGgGCSqGSIb3EgECAgIBAAD/////6jcyG4GE3KkTzN0=\"");
	test_case("continuation keeps braces",
		  "+ Ready for {5}\r\n* 2 EXISTS\r\n", NULL,
		  "+ \"Ready for {5}\"\n* 2 EXISTS");
	test_case("only one space dropped", "+  two\r\n", NULL, "+ \" two\"");
}

static void test_data(void)
{
	test_case("exists", "* 172 EXISTS\r\n", NULL, "* 172 EXISTS");
	test_case("recent expunge", "* 3 RECENT\r\n* 44 EXPUNGE\r\n", NULL,
		  "* 3 RECENT\n* 44 EXPUNGE");
	test_case("flags",
		  "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft "
		  "$Forwarded)\r\n",
		  NULL,
		  "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft "
		  "$Forwarded)");
	test_case("empty list", "* FLAGS ()\r\n", NULL, "* FLAGS ()");
	test_case("list",
		  "* LIST (\\HasChildren \\Noselect) \"/\" \"Archive\"\r\n",
		  NULL, "* LIST (\\HasChildren \\Noselect) \"/\" \"Archive\"");
	test_case("list literal name, nil delimiter",
		  "* LIST (\\HasNoChildren) NIL {11}\r\nSpecial \"x\"\r\n",
		  NULL,
		  "* LIST (\\HasNoChildren) NIL {11}\"Special \\\"x\\\"\"");
	test_case("list atom with ]", "* LIST () \".\" foo]bar\r\n", NULL,
		  "* LIST () \".\" foo]bar");
	test_case("list utf-8 atom and string",
		  "* LIST () \"/\" Entw\xc3\xbcrfe\r\n"
		  "* LIST () \"/\" \"M\xc3\xbcll\"\r\n",
		  NULL,
		  "* LIST () \"/\" Entw\\xc3\\xbcrfe\n"
		  "* LIST () \"/\" \"M\\xc3\\xbcll\"");
	test_case("examine",
		  "* 18 EXISTS\r\n"
		  "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n"
		  "* OK [PERMANENTFLAGS ()] Read-only mailbox.\r\n"
		  "* OK [UIDVALIDITY 3857529045] UIDs valid\r\n"
		  "* OK [UIDNEXT 4392] Predicted next UID\r\n"
		  "A932 OK [READ-ONLY] EXAMINE completed\r\n",
		  NULL,
		  "* 18 EXISTS\n"
		  "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\n"
		  "* OK [PERMANENTFLAGS ()] \"Read-only mailbox.\"\n"
		  "* OK [UIDVALIDITY 3857529045] \"UIDs valid\"\n"
		  "* OK [UIDNEXT 4392] \"Predicted next UID\"\n"
		  "A932 OK [READ-ONLY] \"EXAMINE completed\"");
	test_case("fetch envelope",
		  "* 12 FETCH (UID 7 FLAGS (\\Seen $Junk) INTERNALDATE "
		  "\"17-Jul-1996 02:44:25 -0700\" RFC822.SIZE 4286 ENVELOPE "
		  "(\"date\" \"subject\" ((\"Name\" NIL \"user\" \"host\")) "
		  "NIL NIL NIL NIL NIL \"<in-reply-to>\" \"<msgid@x>\"))\r\n",
		  NULL,
		  "* 12 FETCH (UID 7 FLAGS (\\Seen $Junk) INTERNALDATE "
		  "\"17-Jul-1996 02:44:25 -0700\" RFC822.SIZE 4286 ENVELOPE "
		  "(\"date\" \"subject\" ((\"Name\" NIL \"user\" \"host\")) "
		  "NIL NIL NIL NIL NIL \"<in-reply-to>\" \"<msgid@x>\"))");
	test_case("fetch envelope with literals",
		  "* 12 FETCH (UID 7 ENVELOPE ({4}\r\ndate {7}\r\nsubject "
		  "(({4}\r\nName NIL \"user\" \"host\")) NIL NIL NIL NIL NIL "
		  "\"<in-reply-to>\" {9}\r\n<msgid@x>))\r\n",
		  NULL,
		  "* 12 FETCH (UID 7 ENVELOPE ({4}\"date\" {7}\"subject\" "
		  "(({4}\"Name\" NIL \"user\" \"host\")) NIL NIL NIL NIL NIL "
		  "\"<in-reply-to>\" {9}\"<msgid@x>\"))");
	test_case("literal plus and minus",
		  "* 1 FETCH (BODY[] {3+}\r\nabc)\r\n"
		  "* 2 FETCH (BODY[] {3-}\r\nxyz)\r\n",
		  NULL,
		  "* 1 FETCH (BODY[] {3}\"abc\")\n"
		  "* 2 FETCH (BODY[] {3}\"xyz\")");
	test_case("literal8",
		  "* 1 FETCH (BINARY[] ~{3}\r\n\0\1\2 BINARY[2] ~x)\r\n", NULL,
		  "* 1 FETCH (BINARY[] {3}\"\\x00\\x01\\x02\" BINARY[2] ~x)");
	test_case("empty literal", "* 1 FETCH (BODY[] {0}\r\n)\r\n", NULL,
		  "* 1 FETCH (BODY[] {0}\"\")");
	test_case("literal at top level, then end of line",
		  "* SEARCH {2}\r\n42\r\n", NULL, "* SEARCH {2}\"42\"");
	test_case("vanished", "* VANISHED (EARLIER) 41,43:116\r\n", NULL,
		  "* VANISHED (EARLIER) 41,43:116");
	test_case("esearch",
		  "* ESEARCH (TAG \"A282\") UID MIN 2 COUNT 3 ALL 2,10:11\r\n",
		  NULL,
		  "* ESEARCH (TAG \"A282\") UID MIN 2 COUNT 3 ALL 2,10:11");
	test_case("quoted escapes",
		  "* LIST () \"\\\\\" \"a \\\"quoted\\\" \\\\ name\"\r\n", NULL,
		  "* LIST () \"\\\\\" \"a \\\"quoted\\\" \\\\ name\"");
	test_case("empty quoted", "* X \"\" \"\"\r\n", NULL, "* X \"\" \"\"");
	test_case("section atom",
		  "* 1 FETCH (BODY[HEADER.FIELDS (FROM)]<0> {11}\r\n"
		  "From: a@b\r\n)\r\n",
		  NULL,
		  "* 1 FETCH (BODY[HEADER.FIELDS (FROM)]<0> "
		  "{11}\"From: a@b\\x0d\\x0a\")");
	test_case("section with quoted ]",
		  "* 1 FETCH (BODY[HEADER.FIELDS (\"X-]\" TO)] NIL)\r\n", NULL,
		  "* 1 FETCH (BODY[HEADER.FIELDS (\"X-]\" TO)] NIL)");
	test_case("section with escape in quotes",
		  "* 1 FETCH (BODY[HEADER.FIELDS (\"X-\\\"]\")] NIL)\r\n",
		  NULL, "* 1 FETCH (BODY[HEADER.FIELDS (\"X-\\\"]\")] NIL)");
	test_case("sections",
		  "* 1 FETCH (BODY[1.2.MIME] NIL BINARY.SIZE[1] 4)\r\n", NULL,
		  "* 1 FETCH (BODY[1.2.MIME] NIL BINARY.SIZE[1] 4)");
	test_case("brace in quotes at end of line",
		  "* LIST () \"/\" \"foo {5}\"\r\n"
		  "* 1 FETCH (X \"a\\\"{5}\")\r\n",
		  NULL,
		  "* LIST () \"/\" \"foo {5}\"\n* 1 FETCH (X \"a\\\"{5}\")");
	test_case("escaped backslash before a literal",
		  "* LIST () \"\\\\\" {5}\r\nhello\r\n", NULL,
		  "* LIST () \"\\\\\" {5}\"hello\"");
	test_case("bare lf",
		  "* 1 EXISTS\n* 2 FETCH (BODY[] {3}\nabc)\nA1 OK done\n", NULL,
		  "* 1 EXISTS\n* 2 FETCH (BODY[] {3}\"abc\")\nA1 OK \"done\"");
	test_case("liberal spacing and case",
		  "*  2   exists \r\n* 5 fetch ( flags (\\seen)  uid 3 )\r\n",
		  NULL, "* 2 exists\n* 5 fetch (flags (\\seen) uid 3)");
	test_case("nil any case", "* X nil Nil NIL NILS \"NIL\"\r\n", NULL,
		  "* X NIL NIL NIL NILS \"NIL\"");
	test_case("stray empty lines", "\r\n\n* 1 EXISTS\r\n\r\n", NULL,
		  "* 1 EXISTS");
	test_case("tagged data", "A1 X\r\nA2\r\n*\r\n", NULL,
		  "A1 X\nA2\n*");
	test_case("bodystructure",
		  "* 1 FETCH (BODYSTRUCTURE ((\"TEXT\" \"PLAIN\" (\"CHARSET\" "
		  "\"us-ascii\") NIL NIL \"7BIT\" 12 1 NIL NIL NIL NIL)"
		  "(\"IMAGE\" \"PNG\" (\"NAME\" \"a.png\") NIL NIL \"BASE64\" "
		  "3004 NIL (\"attachment\" (\"FILENAME\" \"a.png\")) NIL NIL) "
		  "\"MIXED\" (\"BOUNDARY\" \"xyz\") NIL NIL NIL))\r\n",
		  NULL,
		  "* 1 FETCH (BODYSTRUCTURE ((\"TEXT\" \"PLAIN\" (\"CHARSET\" "
		  "\"us-ascii\") NIL NIL \"7BIT\" 12 1 NIL NIL NIL NIL) "
		  "(\"IMAGE\" \"PNG\" (\"NAME\" \"a.png\") NIL NIL \"BASE64\" "
		  "3004 NIL (\"attachment\" (\"FILENAME\" \"a.png\")) NIL NIL) "
		  "\"MIXED\" (\"BOUNDARY\" \"xyz\") NIL NIL NIL))");
	test_case("glued tokens", "* X a(b)\"c\"d{1}\r\ne\r\n", NULL,
		  "* X a (b) \"c\" d {1}\"e\"");
}

/* BODY[] with CRLF, NUL bytes and a line that looks like a tagged OK. */
static void test_body_literal(void)
{
	static const char input[] =
		"* 3 FETCH (UID 9 BODY[] {41}\r\n"
		"Subject: hi\r\n\r\nA1 OK fake\r\n\0\0x\r\n* 1 BYE\r\n"
		" FLAGS (\\Seen))\r\nA1 OK done\r\n";
	struct imap_parser *parser = imap_parser_new(NULL);
	const struct imap_response *resp;
	const struct imap_arg *body;
	const char *error;

	test_case("body literal", input, NULL,
		  "* 3 FETCH (UID 9 BODY[] {41}\"Subject: "
		  "hi\\x0d\\x0a\\x0d\\x0aA1 OK "
		  "fake\\x0d\\x0a\\x00\\x00x\\x0d\\x0a* 1 BYE\\x0d\\x0a\" "
		  "FLAGS (\\Seen))\nA1 OK \"done\"");

	/* The same through the helpers. */
	CHECK(imap_parser_feed(parser, input, sizeof(input) - 1) == 0);
	CHECK(imap_parser_next(parser, &resp, &error) == 1);
	CHECK(resp->kind == IMAP_RESP_UNTAGGED);
	CHECK(resp->status == IMAP_STATUS_NONE);
	CHECK(resp->args_count == 3);
	CHECK(imap_arg_atom_is(&resp->args[1], "fetch"));
	body = imap_fetch_get(&resp->args[2], "body[]");
	CHECK(body != NULL && body->type == IMAP_ARG_LITERAL);
	CHECK(body != NULL && body->len == 41);
	CHECK(body != NULL && memcmp(body->v.str + 27, "\0\0x\r\n", 5) == 0);
	CHECK(imap_parser_pending(parser) == strlen("A1 OK done\r\n"));
	CHECK(imap_parser_next(parser, &resp, &error) == 1);
	CHECK_STR(resp->tag, "A1");
	CHECK(imap_parser_next(parser, &resp, &error) == 0);
	CHECK(imap_parser_pending(parser) == 0);
	imap_parser_free(&parser);
}

static void test_api(void)
{
	static const char greeting[] =
		"* OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR AUTH=PLAIN] "
		"Dovecot ready.\r\n";
	static const char fetch[] =
		"* 12 FETCH (UID 7 FLAGS (\\Seen $Junk) RFC822.SIZE 4286 "
		"ENVELOPE ({4}\r\ndate \"subject\" ((\"Name\" NIL \"user\" "
		"\"host\")) NIL NIL NIL NIL NIL \"<in-reply-to>\" {9}\r\n"
		"<msgid@x>) X)\r\n";
	struct imap_parser *parser = imap_parser_new(NULL);
	const struct imap_response *resp;
	const struct imap_arg *list, *env, *v;
	const char *error, *s;
	uint64_t n;
	size_t len;

	CHECK(imap_parser_feed(parser, greeting, sizeof(greeting) - 1) == 0);
	CHECK(imap_parser_next(parser, &resp, &error) == 1);
	CHECK(resp->kind == IMAP_RESP_UNTAGGED);
	CHECK(resp->tag == NULL);
	CHECK(resp->status == IMAP_STATUS_OK);
	CHECK(resp->code_count == 5);
	CHECK(imap_arg_atom_is(&resp->code[0], "capability"));
	CHECK(imap_arg_atom_is(&resp->code[2], "LITERAL+"));
	CHECK(!imap_arg_atom_is(&resp->code[2], "LITERAL"));
	CHECK_STR(resp->text, "Dovecot ready.");
	CHECK(resp->args == NULL && resp->args_count == 0);

	CHECK(imap_parser_feed(parser, fetch, sizeof(fetch) - 1) == 0);
	CHECK(imap_parser_next(parser, &resp, &error) == 1);
	CHECK(resp->status == IMAP_STATUS_NONE);
	CHECK(resp->code == NULL && resp->code_count == 0);
	CHECK(resp->args_count == 3);
	CHECK(imap_arg_number(&resp->args[0], &n) && n == 12);
	list = &resp->args[2];
	CHECK(list->type == IMAP_ARG_LIST && list->len == 9);
	v = imap_fetch_get(list, "uid");
	CHECK(imap_arg_number(v, &n) && n == 7);
	v = imap_fetch_get(list, "FLAGS");
	CHECK(v != NULL && v->type == IMAP_ARG_LIST && v->len == 2);
	CHECK(v != NULL && imap_arg_atom_is(&v->v.items[0], "\\seen"));
	CHECK(imap_fetch_get(list, "X") == NULL); /* key without a value */
	CHECK(imap_fetch_get(list, "BODY[]") == NULL);
	CHECK(imap_fetch_get(&resp->args[0], "UID") == NULL);
	env = imap_fetch_get(list, "ENVELOPE");
	CHECK(env != NULL && env->type == IMAP_ARG_LIST && env->len == 10);
	if (env != NULL && env->len == 10) {
		const struct imap_arg *from, *addr;

		CHECK(imap_arg_nstring(&env->v.items[0], &s, &len));
		CHECK(len == 4 && strcmp(s, "date") == 0);
		CHECK(env->v.items[0].type == IMAP_ARG_LITERAL);
		CHECK(imap_arg_nstring(&env->v.items[1], &s, &len));
		CHECK_STR(s, "subject");
		CHECK(imap_arg_nstring(&env->v.items[3], &s, &len));
		CHECK(s == NULL && len == 0);
		CHECK(imap_arg_nstring(&env->v.items[9], &s, &len));
		CHECK(len == 9 && strcmp(s, "<msgid@x>") == 0);
		from = &env->v.items[2];
		CHECK(from->type == IMAP_ARG_LIST && from->len == 1);
		addr = &from->v.items[0];
		CHECK(addr->type == IMAP_ARG_LIST && addr->len == 4);
		CHECK(addr->v.items[1].type == IMAP_ARG_NIL);
		CHECK(imap_arg_astring(&addr->v.items[2], &s, &len));
		CHECK_STR(s, "user");
	}
	imap_parser_free(&parser);
	imap_parser_free(&parser); /* harmless on NULL */
}

static void test_helpers(void)
{
	struct imap_arg atom = { .type = IMAP_ARG_ATOM };
	struct imap_arg items[4] = {
		{ .type = IMAP_ARG_ATOM, .len = 3, .v.str = "UID" },
		{ .type = IMAP_ARG_ATOM, .len = 2, .v.str = "42" },
		{ .type = IMAP_ARG_STRING, .len = 4, .v.str = "BODY" },
		{ .type = IMAP_ARG_ATOM, .len = 1, .v.str = "x" },
	};
	struct imap_arg list = {
		.type = IMAP_ARG_LIST, .len = 4, .v.items = items
	};
	struct imap_arg str = {
		.type = IMAP_ARG_STRING, .len = 2, .v.str = "12"
	};
	struct imap_arg nil = { .type = IMAP_ARG_NIL };
	const char *s = "unset";
	size_t len = 99;
	uint64_t n;

	atom.v.str = "";
	CHECK(!imap_arg_number(&atom, &n)); /* empty */
	atom.v.str = "0";
	atom.len = 1;
	CHECK(imap_arg_number(&atom, &n) && n == 0);
	atom.v.str = "18446744073709551615";
	atom.len = 20;
	CHECK(imap_arg_number(&atom, &n) && n == UINT64_MAX);
	atom.v.str = "18446744073709551616";
	CHECK(!imap_arg_number(&atom, &n));
	atom.v.str = "100000000000000000000";
	atom.len = 21;
	CHECK(!imap_arg_number(&atom, &n));
	atom.v.str = "12a";
	atom.len = 3;
	CHECK(!imap_arg_number(&atom, &n));
	atom.v.str = "-1";
	atom.len = 2;
	CHECK(!imap_arg_number(&atom, &n));
	atom.v.str = "123";
	atom.len = 2; /* only "12" belongs to the atom */
	CHECK(imap_arg_number(&atom, &n) && n == 12);
	CHECK(!imap_arg_number(&str, &n));
	CHECK(!imap_arg_number(NULL, &n));

	CHECK(imap_arg_atom_is(&items[0], "uid"));
	CHECK(!imap_arg_atom_is(&items[0], "ui"));
	CHECK(!imap_arg_atom_is(&items[0], "uidx"));
	CHECK(!imap_arg_atom_is(&items[2], "BODY"));
	CHECK(!imap_arg_atom_is(NULL, "x"));

	CHECK(imap_arg_astring(&items[0], &s, &len) && len == 3);
	CHECK(imap_arg_astring(&str, &s, &len) && len == 2);
	CHECK(imap_arg_astring(&nil, &s, &len) && s == NULL && len == 0);
	CHECK(!imap_arg_astring(&list, &s, &len));
	CHECK(!imap_arg_nstring(&items[0], &s, &len));
	CHECK(imap_arg_nstring(&str, &s, &len) && strcmp(s, "12") == 0);
	s = "unset";
	CHECK(imap_arg_nstring(&nil, &s, &len) && s == NULL);
	CHECK(!imap_arg_nstring(&list, &s, &len));

	CHECK(imap_fetch_get(&list, "UID") == &items[1]);
	CHECK(imap_fetch_get(&list, "BODY") == NULL); /* key not an atom */
	CHECK(imap_fetch_get(&list, "x") == NULL);    /* no value */
	CHECK(imap_fetch_get(&atom, "UID") == NULL);
	CHECK(imap_fetch_get(NULL, "UID") == NULL);
}

static void test_errors(void)
{
	struct imap_parser_limits limits = { 0 };

	test_case("unclosed list", "* 1 FETCH (UID 1\r\n", NULL,
		  "ERROR: 1 list(s) not closed by ')' at the end of the "
		  "response");
	test_case("stray paren", "* 1 FETCH UID 1)\r\n", NULL,
		  "ERROR: unexpected ')' at byte 15 of the response: no list "
		  "is open");
	test_case("literal mid-line", "* 1 FETCH (BODY[] {5} UID 1)\r\n", NULL,
		  "ERROR: literal at byte 18 of the response is not at the "
		  "end of the line");
	test_case("brace without length", "* 1 FETCH (X {\r\n", NULL,
		  "ERROR: '{' at byte 13 of the response does not start a "
		  "literal {n}");
	test_case("bad literal length", "* 1 FETCH (BODY[] {5x}\r\nhello)\r\n",
		  NULL, "ERROR: invalid literal length {5x}: expected digits");
	test_case("empty literal length", "* 1 X {}\r\n", NULL,
		  "ERROR: invalid literal length {}: expected digits");
	test_case("literal sign only", "* 1 X {+}\r\n", NULL,
		  "ERROR: invalid literal length {+}: expected digits");
	test_case("21 digits", "* 1 X {123456789012345678901}\r\n", NULL,
		  "ERROR: literal length {123456789012345678901} has more "
		  "than 20 digits");
	test_case("long length shown cut short",
		  "* 1 X {1234567890123456789012345678901234567890123456789012"
		  "34567890}\r\n",
		  NULL,
		  "ERROR: literal length {1234567890123456789012345678901234"
		  "5678901234...} has more than 20 digits");
	test_case("overflow", "* 1 X {99999999999999999999}\r\n", NULL,
		  "ERROR: literal length {99999999999999999999} does not fit "
		  "in 64 bits");
	test_case("default literal limit", "* 1 X {1073741825}\r\n", NULL,
		  "ERROR: literal of 1073741825 bytes exceeds limit of "
		  "1073741824");
	test_case("literal followed by junk",
		  "* 1 FETCH (BODY[] {3}\r\nabcUID 1)\r\n", NULL,
		  "ERROR: literal at byte 18 of the response is followed by "
		  "byte 0x55, not by a space, ')' or the end of the line");
	test_case("unterminated quote", "* LIST () \"/\" \"abc\r\n", NULL,
		  "ERROR: quoted string at byte 14 of the response is not "
		  "closed before the end of the line");
	test_case("escape at end of line", "* LIST () \"/\" \"abc\\\r\n", NULL,
		  "ERROR: quoted string at byte 14 of the response is not "
		  "closed before the end of the line");
	test_case("unterminated section", "* 1 FETCH (BODY[HEADER\r\n", NULL,
		  "ERROR: '[' at byte 15 of the response is not closed by "
		  "']' before the end of the line");
	test_case("control character", "* 1 EX\x01ISTS\r\n", NULL,
		  "ERROR: unexpected control character 0x01 ('?') at byte 6 "
		  "of the response");
	test_case("invalid tag", "A\"1 OK\r\n", NULL,
		  "ERROR: invalid tag \"A\"1\"");
	test_case("star tag", "*A OK\r\n", NULL, "ERROR: invalid tag \"*A\"");
	test_case("leading space", " A1 OK\r\n", NULL,
		  "ERROR: response line starts with a space instead of a tag");
	test_case("good then bad", "* 1 EXISTS\r\n* 2 X )\r\n* 3 EXISTS\r\n",
		  NULL,
		  "* 1 EXISTS\nERROR: unexpected ')' at byte 6 of the "
		  "response: no list is open");

	/* A 4 GiB literal: refused as soon as its line ends, before any of
	 * it arrives and before anything is allocated for it. */
	limits.max_literal = 1024 * 1024;
	test_case("4 GiB literal",
		  "* 1 FETCH (BODY[] {4294967296}\r\nabc", &limits,
		  "ERROR: literal of 4294967296 bytes exceeds limit of "
		  "1048576");
	test_case("literal at the limit", "* 1 X {1048576}\r\n", &limits,
		  "PENDING 17");
	test_case("literal one over the limit",
		  "* 1 FETCH (BODY[] {1048577}\r\n", &limits,
		  "ERROR: literal of 1048577 bytes exceeds limit of 1048576");

	limits = (struct imap_parser_limits){ .max_line = 16 };
	test_case("line at the limit", "* 12 FETCH (UID)\r\n* 12345678901234\n",
		  &limits, "* 12 FETCH (UID)\n* 12345678901234");
	test_case("line over the limit", "* 1 FETCH (UID 12)\r\n", &limits,
		  "ERROR: line longer than the limit of 16 bytes");
	test_case("line over the limit, no end", "* 12345678901234567", &limits,
		  "ERROR: line longer than the limit of 16 bytes");
	test_case("line over the limit by a CR", "* 12 FETCH (UID)\r\r\n",
		  &limits, "ERROR: line longer than the limit of 16 bytes");
	test_case("lines after literals counted apart",
		  "* 1 X 123456 {3}\r\nabc 123456789012345\r\n", &limits,
		  "* 1 X 123456 {3}\"abc\" 123456789012345");

	limits = (struct imap_parser_limits){ .max_response = 40 };
	test_case("response limit by literal",
		  "* 1 FETCH (BODY[] {21}\r\n", &limits,
		  "ERROR: literal of 21 bytes makes the response exceed the "
		  "limit of 40 bytes");
	test_case("response at the limit",
		  "* 1 FETCH (BODY[] {13}\r\n0123456789012)\r\n", &limits,
		  "* 1 FETCH (BODY[] {13}\"0123456789012\")");
	test_case("response over the limit after literal",
		  "* 1 FETCH (BODY[] {13}\r\n0123456789012 )\r\n", &limits,
		  "ERROR: response longer than the limit of 40 bytes");

	limits = (struct imap_parser_limits){ .max_depth = 3 };
	test_case("depth at the limit", "* X (((1)))\r\n", &limits,
		  "* X (((1)))");
	test_case("depth over the limit", "* X ((((1))))\r\n", &limits,
		  "ERROR: lists nested deeper than the limit of 3");
	test_case("depth over the limit in a code",
		  "* OK [X ((((1))))] hi\r\n", &limits,
		  "ERROR: lists nested deeper than the limit of 3");

	limits = (struct imap_parser_limits){ .max_args = 5 };
	test_case("args at the limit", "* X 1 (2) 3\r\n", &limits,
		  "* X 1 (2) 3");
	test_case("args over the limit", "* X 1 (2 3 4)\r\n", &limits,
		  "ERROR: more than the limit of 5 arguments in one response");
	test_case("args over the limit by lists", "* X ((((((\r\n", &limits,
		  "ERROR: more than the limit of 5 arguments in one response");
	test_case("args over the limit in a code", "* OK [A B C D E F] hi\r\n",
		  &limits,
		  "ERROR: more than the limit of 5 arguments in one response");
}

/* No allocation follows an announced length: a parser that reserved the
 * announced size would die here (or at least take a while). */
static void test_huge_announcement(void)
{
	static const char line[] = "* 1 FETCH (BODY[] {1073741824}\r\nab";
	struct imap_parser *parser = imap_parser_new(NULL);
	const struct imap_response *resp;
	const char *error;

	CHECK(imap_parser_feed(parser, line, sizeof(line) - 1) == 0);
	CHECK(imap_parser_next(parser, &resp, &error) == 0);
	CHECK(imap_parser_literal_remaining(parser) == 1073741824 - 2);
	CHECK(imap_parser_pending(parser) == sizeof(line) - 1);
	imap_parser_free(&parser);
}

static void test_pending_and_remaining(void)
{
	static const char starttls[] =
		"A1 OK Begin TLS negotiation now\r\n* OK injected\r\n";
	struct imap_parser *parser = imap_parser_new(NULL);
	const struct imap_response *resp;
	const char *error;

	CHECK(imap_parser_pending(parser) == 0);
	CHECK(imap_parser_literal_remaining(parser) == 0);
	CHECK(imap_parser_next(parser, &resp, &error) == 0);
	CHECK(imap_parser_feed(parser, NULL, 0) == 0);

	/* STARTTLS injection: bytes after the tagged OK show as pending. */
	CHECK(imap_parser_feed(parser, starttls, sizeof(starttls) - 1) == 0);
	CHECK(imap_parser_pending(parser) == sizeof(starttls) - 1);
	CHECK(imap_parser_next(parser, &resp, &error) == 1);
	CHECK_STR(resp->tag, "A1");
	CHECK(imap_parser_pending(parser) == strlen("* OK injected\r\n"));
	imap_parser_free(&parser);

	parser = imap_parser_new(NULL);
	CHECK(imap_parser_feed(parser, "A1 OK go\r\n", 10) == 0);
	CHECK(imap_parser_next(parser, &resp, &error) == 1);
	CHECK(imap_parser_pending(parser) == 0);

	/* A server closing mid-literal: the remainder is reported, known
	 * right after the feed. */
	CHECK(imap_parser_feed(parser, "* 1 FETCH (BODY[] {10}\r\nabc", 27) ==
	      0);
	CHECK(imap_parser_literal_remaining(parser) == 7);
	CHECK(imap_parser_next(parser, &resp, &error) == 0);
	CHECK(imap_parser_literal_remaining(parser) == 7);
	CHECK(imap_parser_pending(parser) == 27);
	CHECK(imap_parser_feed(parser, "defg", 4) == 0);
	CHECK(imap_parser_literal_remaining(parser) == 3);
	CHECK(imap_parser_feed(parser, "hij", 3) == 0);
	CHECK(imap_parser_literal_remaining(parser) == 0);
	CHECK(imap_parser_next(parser, &resp, &error) == 0);
	CHECK(imap_parser_feed(parser, ")\r", 2) == 0);
	CHECK(imap_parser_next(parser, &resp, &error) == 0);
	CHECK(imap_parser_feed(parser, "\n", 1) == 0);
	CHECK(imap_parser_next(parser, &resp, &error) == 1);
	CHECK(resp->args_count == 3 && resp->args[2].len == 2);
	CHECK(resp->args_count == 3 &&
	      strcmp(resp->args[2].v.items[1].v.str, "abcdefghij") == 0);
	CHECK(imap_parser_pending(parser) == 0);
	imap_parser_free(&parser);
}

/* A response stays valid while more input arrives, even when that input
 * makes the parser move to a bigger buffer. */
static void test_response_survives_feed(void)
{
	static const char first[] = "* 1 FETCH (BODY[] {5}\r\nhello)\r\n* 2 ";
	struct imap_parser *parser = imap_parser_new(NULL);
	const struct imap_response *resp;
	const char *error;
	size_t big = 300000;
	char *more = malloc(big);

	memset(more, 'a', big);
	memcpy(more, "EXISTS\r\n* 3 X ", 14);
	more[big - 2] = '\r';
	more[big - 1] = '\n';
	CHECK(imap_parser_feed(parser, first, sizeof(first) - 1) == 0);
	CHECK(imap_parser_next(parser, &resp, &error) == 1);
	/* The first piece fits; the second needs a new buffer. */
	CHECK(imap_parser_feed(parser, more, 14) == 0);
	CHECK(imap_parser_feed(parser, more + 14, big - 14) == 0);
	CHECK(resp->args_count == 3);
	CHECK(strcmp(resp->args[2].v.items[1].v.str, "hello") == 0);
	CHECK(imap_parser_next(parser, &resp, &error) == 1);
	CHECK(imap_arg_atom_is(&resp->args[1], "EXISTS"));
	CHECK(imap_parser_next(parser, &resp, &error) == 1);
	CHECK(resp->args_count == 3 && imap_arg_atom_is(&resp->args[0], "3"));
	CHECK(imap_parser_next(parser, &resp, &error) == 0);
	CHECK(imap_parser_pending(parser) == 0);
	free(more);
	imap_parser_free(&parser);
}

/* 1 MiB one byte at a time, as a literal and as many small responses:
 * must stay linear (quadratic would be ~10^12 steps). */
static void test_linear(void)
{
	const size_t size = 1024 * 1024;
	struct imap_parser *parser = imap_parser_new(NULL);
	const struct imap_response *resp;
	const char *error, *lines = "* 1 EXISTS\r\n* 2 FETCH (UID 3)\r\n";
	char head[64];
	size_t responses = 0, nlines = strlen(lines);
	clock_t start = clock();
	bool ok = true;
	int n;

	n = snprintf(head, sizeof(head), "* 1 FETCH (BODY[] {%zu}\r\n", size);
	for (int i = 0; i < n; i++)
		ok &= imap_parser_feed(parser, head + i, 1) == 0 &&
		      imap_parser_next(parser, &resp, &error) == 0;
	for (size_t i = 0; i < size; i++) {
		char c = (char)('a' + i % 26);

		ok &= imap_parser_feed(parser, &c, 1) == 0 &&
		      imap_parser_next(parser, &resp, &error) == 0;
	}
	CHECK(ok);
	CHECK(imap_parser_feed(parser, ")\r\n", 3) == 0);
	CHECK(imap_parser_next(parser, &resp, &error) == 1);
	CHECK(resp->args_count == 3 && resp->args[2].v.items[1].len == size);
	for (size_t i = 0; i < size; i++) {
		ok &= imap_parser_feed(parser, lines + i % nlines, 1) == 0;
		while (imap_parser_next(parser, &resp, &error) > 0)
			responses++;
	}
	CHECK(ok);
	CHECK(responses == size / nlines * 2 + (size % nlines >= 12));
	imap_parser_free(&parser);
	CHECK((double)(clock() - start) / CLOCKS_PER_SEC < 20.0);
}

/* A big literal arriving in 64 KiB reads: the buffer grows to the
 * literal's size plus a little, never to twice it (AUDIT C4: a 256 MiB
 * literal cost 512 MiB of buffer). */
static void test_literal_buffer_growth(void)
{
	const size_t size = 64u << 20, chunk = 64u << 10;
	struct imap_parser_limits limits = { .max_literal = size };
	struct imap_parser *parser = imap_parser_new(&limits);
	const struct imap_response *resp;
	const char *error;
	char head[64], *data = malloc(chunk);
	size_t peak = 0;
	bool ok = true;
	int n;

	CHECK(parser && data);
	if (!parser || !data)
		return;
	memset(data, 'x', chunk);
	n = snprintf(head, sizeof(head), "* 1 FETCH (UID 1 BODY[] {%zu}\r\n", size);
	CHECK(imap_parser_feed(parser, head, (size_t)n) == 0);
	for (size_t done = 0; done < size; done += chunk) {
		ok &= imap_parser_feed(parser, data, chunk) == 0 &&
		      imap_parser_next(parser, &resp, &error) == 0;
		if (imap_parser_buffer_size(parser) > peak)
			peak = imap_parser_buffer_size(parser);
	}
	CHECK(ok);
	CHECK(imap_parser_feed(parser, ")\r\n", 3) == 0);
	CHECK(imap_parser_next(parser, &resp, &error) == 1);
	CHECK(resp->args_count == 3 && resp->args[2].v.items[3].len == size);
	if (imap_parser_buffer_size(parser) > peak)
		peak = imap_parser_buffer_size(parser);
	CHECK(peak >= size && peak <= size + size / 8);
	if (peak > size + size / 8)
		fprintf(stderr, "literal of %zu bytes: buffer peak %zu bytes\n", size, peak);
	free(data);
	imap_parser_free(&parser);
}

int main(void)
{
	test_status();
	test_continuation();
	test_data();
	test_body_literal();
	test_api();
	test_helpers();
	test_errors();
	test_huge_announcement();
	test_pending_and_remaining();
	test_response_survives_feed();
	test_linear();
	test_literal_buffer_growth();
	return check_exit();
}
