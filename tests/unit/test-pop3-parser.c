/* test-pop3-parser.c: the POP3 response parser against server transcripts.
 *
 * Each case is a transcript, the kinds of the responses the caller asks
 * for ('M' a command with a multi-line answer, 'S' a single-line one), and
 * the expected responses as a one-line dump.  Every case is fed whole,
 * then split in two at every byte boundary, then one byte at a time, and
 * every way must give the same dump (or the same error).  Input pieces are
 * copied into a scratch buffer that is wiped after each feed, which checks
 * that the parser keeps its own copy. */
#include "pop3-parser.h"

#include "check.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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

/* Bytes outside printable ASCII as \r, \n, \xNN. */
static void test_dump_bytes(struct test_out *out, const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		char tmp[8];

		if (c == '\r')
			test_out_add(out, "\\r", 2);
		else if (c == '\n')
			test_out_add(out, "\\n", 2);
		else if (c == '\\')
			test_out_add(out, "\\\\", 2);
		else if (c >= 0x20 && c < 0x7f)
			test_out_add(out, (const char *)&c, 1);
		else {
			snprintf(tmp, sizeof(tmp), "\\x%02x", c);
			test_out_add(out, tmp, 4);
		}
	}
}

static void test_dump(struct test_out *out, const struct pop3_response *r)
{
	static const char *const names[] = { "OK", "ERR", "CONT" };

	if (out->len > 0)
		test_out_add(out, " ", 1);
	test_out_add(out, names[r->status], strlen(names[r->status]));
	test_out_add(out, "[", 1);
	test_dump_bytes(out, r->text, strlen(r->text));
	test_out_add(out, "]", 1);
	if (r->multiline) {
		test_out_add(out, "{", 1);
		test_dump_bytes(out, r->body, r->body_len);
		test_out_add(out, "}", 1);
	}
}

/* Feed input ending at each of cuts[] (ascending, the last = len), asking
 * for responses of the given kinds.  The dump of what came out, then
 * " ERROR:..." on failure, " MORE" when input ran out first, and " +N"
 * with N pending bytes when every response was taken. */
static char *test_parse(const char *input, size_t len, const char *kinds,
			const struct pop3_parser_limits *limits,
			const size_t *cuts, size_t ncuts)
{
	struct pop3_parser *p = pop3_parser_new(limits);
	struct test_out out = { 0 };
	const struct pop3_response *resp;
	const char *error;
	size_t pos = 0, cut = 0;
	char *scratch = malloc(len + 1);

	if (p == NULL || scratch == NULL)
		abort();
	while (*kinds != '\0') {
		int r = pop3_parser_next(p, *kinds == 'M', &resp, &error);

		if (r < 0) {
			test_out_add(&out, out.len ? " " : "", out.len ? 1 : 0);
			test_out_add(&out, "ERROR:", 6);
			test_out_add(&out, error, strlen(error));
			break;
		}
		if (r > 0) {
			test_dump(&out, resp);
			kinds++;
			continue;
		}
		if (pos == len) {
			test_out_add(&out, out.len ? " MORE" : "MORE", out.len ? 5 : 4);
			break;
		}
		size_t end = cut < ncuts ? cuts[cut++] : len;
		memcpy(scratch, input + pos, end - pos);
		CHECK(pop3_parser_feed(p, scratch, end - pos) == 0);
		memset(scratch, 'Z', end - pos);
		pos = end;
	}
	if (*kinds == '\0') {
		char tmp[32];

		/* What is left: fed and not yet read. */
		while (pos < len) {
			size_t end = cut < ncuts ? cuts[cut++] : len;

			CHECK(pop3_parser_feed(p, input + pos, end - pos) == 0);
			pos = end;
		}
		snprintf(tmp, sizeof(tmp), " +%zu", pop3_parser_pending(p));
		test_out_add(&out, tmp, strlen(tmp));
	}
	pop3_parser_free(&p);
	CHECK(p == NULL);
	free(scratch);
	if (out.s == NULL)
		test_out_add(&out, "", 0);
	return out.s;
}

static void test_case_limits(const char *name, const char *input, size_t len,
			     const char *kinds, const char *want,
			     const struct pop3_parser_limits *limits)
{
	size_t cuts[2];
	size_t *every = malloc((len + 1) * sizeof(*every));
	char *got;

	if (every == NULL)
		abort();
	/* Whole. */
	got = test_parse(input, len, kinds, limits, NULL, 0);
	if (strcmp(got, want) != 0)
		fprintf(stderr, "case %s (whole):\n  got  %s\n  want %s\n", name, got, want);
	CHECK_STR(got, want);
	free(got);
	/* Split in two at every boundary. */
	for (size_t i = 0; i <= len; i++) {
		cuts[0] = i;
		cuts[1] = len;
		got = test_parse(input, len, kinds, limits, cuts, 2);
		if (strcmp(got, want) != 0) {
			fprintf(stderr, "case %s (split at %zu):\n  got  %s\n  want %s\n", name, i,
				got, want);
			CHECK_STR(got, want);
			free(got);
			break;
		}
		free(got);
	}
	/* One byte at a time. */
	for (size_t i = 0; i < len; i++)
		every[i] = i + 1;
	got = test_parse(input, len, kinds, limits, every, len);
	if (strcmp(got, want) != 0)
		fprintf(stderr, "case %s (bytewise):\n  got  %s\n  want %s\n", name, got, want);
	CHECK_STR(got, want);
	free(got);
	free(every);
}

static void test_case(const char *name, const char *input, const char *kinds,
		      const char *want)
{
	test_case_limits(name, input, strlen(input), kinds, want, NULL);
}

static void test_status_lines(void)
{
	test_case("greeting", "+OK Dovecot ready.\r\n", "S", "OK[Dovecot ready.] +0");
	test_case("bare ok", "+OK\r\n", "S", "OK[] +0");
	test_case("bare err", "-ERR\r\n", "S", "ERR[] +0");
	test_case("err text", "-ERR [AUTH] Authentication failed.\r\n", "S",
		  "ERR[[AUTH] Authentication failed.] +0");
	test_case("bare LF", "+OK hi\n-ERR no\n", "SS", "OK[hi] ERR[no] +0");
	test_case("sasl continuation", "+ \r\n+\r\n+ abc=\r\n", "SSS",
		  "CONT[] CONT[] CONT[abc=] +0");
	test_case("pending after", "+OK Begin TLS\r\n+OK injected\r\n", "S",
		  "OK[Begin TLS] +14");
	test_case("incomplete", "+OK no end", "S", "MORE");
	test_case("two spaces", "+OK  two\r\n", "S", "OK[ two] +0");
	test_case("garbage", "* OK imap?\r\n", "S",
		  "ERROR:malformed status line (neither +OK nor -ERR): \"* OK imap?\"");
	test_case("okay", "+OKAY\r\n", "S",
		  "ERROR:malformed status line (neither +OK nor -ERR): \"+OKAY\"");
	test_case("empty line", "\r\n", "S",
		  "ERROR:malformed status line (neither +OK nor -ERR): \"\"");
	test_case("controls", "\x01\x02zz\r\n", "S",
		  "ERROR:malformed status line (neither +OK nor -ERR): \"??zz\"");
	test_case("lowercase", "+ok\r\n", "S",
		  "ERROR:malformed status line (neither +OK nor -ERR): \"+ok\"");
	test_case("CR inside", "+OK a\rb\r\n", "S", "OK[a\\rb] +0");
	test_case_limits("NUL in line", "+OK a\0b\r\n", 9, "S", "OK[a] +0", NULL);
}

static void test_multiline(void)
{
	test_case("capa",
		  "+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nSASL PLAIN\r\n.\r\n", "M",
		  "OK[]{CAPA\\r\\nTOP\\r\\nUIDL\\r\\nSASL PLAIN\\r\\n} +0");
	test_case("empty body", "+OK 0 messages\r\n.\r\n", "M", "OK[0 messages]{} +0");
	test_case("err is single line",
		  "-ERR no such message\r\n+OK 2 octets\r\nab\r\n.\r\n", "MM",
		  "ERR[no such message] OK[2 octets]{ab\\r\\n} +0");
	test_case("stuffed dots",
		  "+OK\r\n..\r\n...\r\n..x\r\n.x\r\nx.\r\n. \r\n.\r\n", "M",
		  "OK[]{.\\r\\n..\\r\\n.x\\r\\nx\\r\\nx.\\r\\n \\r\\n} +0");
	test_case("dot alone ends", "+OK\r\nhead\r\n.\r\nrest", "M",
		  "OK[]{head\\r\\n} +4");
	test_case("dot in line", "+OK\r\na.b\r\n .\r\n.\r\n", "M",
		  "OK[]{a.b\\r\\n .\\r\\n} +0");
	test_case("bare LF body", "+OK\nline1\nline2\n.\n", "M",
		  "OK[]{line1\\nline2\\n} +0");
	test_case("mixed endings", "+OK\r\na\nb\r\n..\r\n.\r\n", "M",
		  "OK[]{a\\nb\\r\\n.\\r\\n} +0");
	/* A CRLF server (its status line ends in CRLF) ends a body only
	 * with CRLF "." CRLF: a line after a bare LF is data, dot or not
	 * (a strict server stuffs only after CRLF). */
	test_case("dot after bare LF is data", "+OK\r\na\n.\r\nb\r\n.\r\n", "M",
		  "OK[]{a\\n.\\r\\nb\\r\\n} +0");
	test_case("dot LF after bare LF is data", "+OK\r\na\n.\nb\r\n.\r\n", "M",
		  "OK[]{a\\n.\\nb\\r\\n} +0");
	test_case("dot LF after CRLF", "+OK\r\na\r\n.\nb\r\n.\r\n", "M",
		  "OK[]{a\\r\\n\\nb\\r\\n} +0");
	test_case("first body line bare", "+OK\r\n\n.\r\n.\r\n", "M",
		  "OK[]{\\n.\\r\\n} +0");
	test_case("LF server: any dot line ends", "+OK\na\n.\r\nb\n.\n", "MS",
		  "OK[]{a\\n} ERROR:malformed status line (neither +OK nor -ERR): \"b\"");
	/* AUDIT A3: two pipelined RETR answers; the first holds "\n.\r\n"
	 * after a bare LF.  Ending there would take its tail as the second
	 * answer and shift every answer after it by one. */
	test_case("A3 pipelined RETR with dot after bare LF",
		  "+OK 60 octets\r\nSubject: a\r\n\r\nhello\n.\r\n+OK fake\r\nEVIL BODY\r\n.\r\n"
		  "+OK 30 octets\r\nSubject: b\r\n\r\nreal message two\r\n.\r\n",
		  "MMM",
		  "OK[60 octets]{Subject: a\\r\\n\\r\\nhello\\n.\\r\\n+OK fake\\r\\nEVIL BODY\\r\\n} "
		  "OK[30 octets]{Subject: b\\r\\n\\r\\nreal message two\\r\\n} MORE");
	test_case("dot CR X", "+OK\r\n.\rX\r\n.\r\n", "M", "OK[]{\\rX\\r\\n} +0");
	test_case("dot CR CR", "+OK\r\n.\r\r\n.\r\n", "M", "OK[]{\\r\\r\\n} +0");
	test_case("blank lines", "+OK\r\n\r\n\r\n.\r\n", "M", "OK[]{\\r\\n\\r\\n} +0");
	test_case("no final newline in body", "+OK\r\nabc", "M", "MORE");
	test_case("not yet ended", "+OK\r\nabc\r\n.", "M", "MORE");
	test_case("not yet ended CR", "+OK\r\nabc\r\n.\r", "M", "MORE");
	test_case("pipelined",
		  "+OK 1 10\r\n+OK\r\n1 000001\r\n2 000002\r\n.\r\n"
		  "+OK\r\n1 5\r\n2 7\r\n.\r\n-ERR nope\r\n+OK\r\nSubject: x\r\n\r\n.\r\n",
		  "SMMMM",
		  "OK[1 10] OK[]{1 000001\\r\\n2 000002\\r\\n} OK[]{1 5\\r\\n2 7\\r\\n} "
		  "ERR[nope] OK[]{Subject: x\\r\\n\\r\\n} +0");
	test_case("body bytes", "+OK\r\n\x01\xff\x80\r\n.\r\n", "M",
		  "OK[]{\\x01\\xff\\x80\\r\\n} +0");
	test_case_limits("NUL in body", "+OK\r\na\0b\r\n.\r\n", 13, "M",
			 "OK[]{a\\x00b\\r\\n} +0", NULL);
	test_case("continuation on multiline", "+ more\r\n", "M", "CONT[more] +0");
	test_case("garbage after body",
		  "+OK\r\nx\r\n.\r\nnonsense\r\n", "MS",
		  "OK[]{x\\r\\n} ERROR:malformed status line (neither +OK nor -ERR): \"nonsense\"");
}

static void test_limits(void)
{
	struct pop3_parser_limits small = { .max_line = 16, .max_body = 8 };

	test_case_limits("line at limit", "+OK 0123456789\r\n", 16, "S",
			 "OK[0123456789] +0", &small);
	test_case_limits("line over limit", "+OK 01234567890\r\n", 17, "S",
			 "ERROR:status line longer than 16 bytes", &small);
	test_case_limits("line over limit, no LF yet", "+OK 0123456789012345", 20, "S",
			 "ERROR:status line longer than 16 bytes", &small);
	test_case_limits("body at limit", "+OK\r\n012345\r\n.\r\n", 16, "M",
			 "OK[]{012345\\r\\n} +0", &small);
	test_case_limits("body over limit", "+OK\r\n0123456\r\n.\r\n", 17, "M",
			 "ERROR:multi-line response exceeds the limit of 8 bytes", &small);
	/* Stuffing does not count: the limit is on what is kept. */
	test_case_limits("stuffed at limit", "+OK\r\n..12345\r\n.\r\n", 17, "M",
			 "OK[]{.12345\\r\\n} +0", &small);
	test_case_limits("never-ending body", "+OK\r\nxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", 30, "M",
			 "ERROR:multi-line response exceeds the limit of 8 bytes", &small);
	/* A -ERR to a multi-line command is never taken for a body. */
	test_case_limits("err with big text", "-ERR 012345678\r\n", 16, "M",
			 "ERR[012345678] +0", &small);
}

/* A large body, many responses, the failed state and the pending count. */
static void test_api(void)
{
	struct pop3_parser *p = pop3_parser_new(NULL);
	const struct pop3_response *resp;
	const char *error;
	size_t n = 3000000; /* whole lines of 100 bytes */
	char *msg = malloc(n);
	size_t i;

	CHECK(p != NULL && msg != NULL);
	for (i = 0; i < n; i++)
		msg[i] = (i % 100 == 98) ? '\r' : (i % 100 == 99) ? '\n' : (i % 100 == 0) ? '.' : 'a';
	CHECK(pop3_parser_feed(p, "+OK message follows\r\n", 21) == 0);
	CHECK(pop3_parser_pending(p) == 21);
	CHECK(pop3_parser_next(p, true, &resp, &error) == 0);
	CHECK(pop3_parser_pending(p) == 21);
	CHECK(pop3_parser_body_so_far(p) == 0);
	for (i = 0; i < n; i += 65536)
		CHECK(pop3_parser_feed(p, msg + i, n - i < 65536 ? n - i : 65536) == 0);
	CHECK(pop3_parser_next(p, true, &resp, &error) == 0);
	/* Every line starts with '.', which unstuffing removes. */
	CHECK(pop3_parser_body_so_far(p) == n - n / 100);
	CHECK(pop3_parser_feed(p, ".\r\n+OK", 6) == 0);
	CHECK(pop3_parser_next(p, true, &resp, &error) == 1);
	CHECK(resp != NULL && resp->multiline && resp->body_len == n - n / 100);
	CHECK(resp != NULL && resp->body[0] == 'a' && resp->body[resp->body_len] == '\0');
	CHECK(pop3_parser_pending(p) == 3);
	CHECK(pop3_parser_next(p, false, &resp, &error) == 0);
	CHECK(pop3_parser_feed(p, " x\r\n", 4) == 0);
	CHECK(pop3_parser_next(p, false, &resp, &error) == 1);
	CHECK_STR(resp->text, "x");
	CHECK(pop3_parser_pending(p) == 0);
	/* A failed parser stays failed. */
	CHECK(pop3_parser_feed(p, "bogus\r\n", 7) == 0);
	CHECK(pop3_parser_next(p, false, &resp, &error) == -1);
	CHECK(error != NULL && strstr(error, "malformed") != NULL);
	CHECK(pop3_parser_next(p, false, &resp, &error) == -1);
	CHECK(pop3_parser_feed(p, "+OK\r\n", 5) == -1);
	pop3_parser_free(&p);
	pop3_parser_free(&p);
	free(msg);

	/* Many small responses without reading in between. */
	p = pop3_parser_new(NULL);
	for (i = 0; i < 10000; i++)
		CHECK(pop3_parser_feed(p, "+OK\r\nx\r\n.\r\n", 11) == 0);
	for (i = 0; i < 10000; i++) {
		if (pop3_parser_next(p, true, &resp, &error) != 1)
			break;
	}
	CHECK(i == 10000);
	CHECK(pop3_parser_next(p, true, &resp, &error) == 0);
	CHECK(pop3_parser_pending(p) == 0);
	pop3_parser_free(&p);
}

int main(void)
{
	test_status_lines();
	test_multiline();
	test_limits();
	test_api();
	return check_exit();
}
