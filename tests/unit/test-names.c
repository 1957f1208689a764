/* test-names.c: readable message and folder names (cache/names.c).
 *
 * The test sets TZ=UTC itself so that the date prefix is the same on every
 * machine.  Besides exact expectations it checks the sanitizing properties
 * on pseudo-random byte strings; fuzzer findings are added at the end. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <glib.h>

#include "check.h"
#include "names.h"

/* 2025-06-02 10:00 UTC, "Mon, 02 Jun 2025 10:00:00 +0000". */
#define T0 ((time_t)1748858400)

/* Everything names.h promises about any name it returns. */
static bool name_ok(const char *n)
{
	size_t len;

	if (n == NULL)
		return false;
	len = strlen(n);
	if (len == 0 || len > NAMES_BASE_MAX || n[0] == '.' ||
	    strcmp(n, ".") == 0 || strcmp(n, "..") == 0)
		return false;
	if (!g_utf8_validate(n, (gssize)len, NULL))
		return false;
	for (const char *p = n; *p; p = g_utf8_next_char(p)) {
		gunichar c = g_utf8_get_char(p);

		if (c == '/' || c < 0x20 || (c >= 0x7f && c <= 0x9f))
			return false;
	}
	/* Collapsed and trimmed. */
	if (n[0] == ' ' || n[len - 1] == ' ' || strstr(n, "  ") != NULL)
		return false;
	return true;
}

/* names_message_base() with date T0 and the sender "Smoke", returning
 * only the part after the fixed prefix. */
static char *subject_of(const char *subject)
{
	static const char prefix[] = "2025-06-02 10.00 Smoke - ";
	char *n = names_message_base(T0, "Smoke", NULL, subject);
	char *s = NULL;

	CHECK(name_ok(n));
	if (strncmp(n, prefix, sizeof(prefix) - 1) == 0)
		s = strdup(n + sizeof(prefix) - 1);
	else
		fprintf(stderr, "unexpected name \"%s\"\n", n);
	free(n);
	return s;
}

#define CHECK_SUBJECT(raw, want)                                           \
	do {                                                               \
		char *s_ = subject_of(raw);                                \
		CHECK_STR(s_, want);                                       \
		free(s_);                                                  \
	} while (0)

#define CHECK_BASE(date, name, addr, subject, want)                        \
	do {                                                               \
		char *n_ = names_message_base(date, name, addr, subject);  \
		CHECK(name_ok(n_));                                        \
		CHECK_STR(n_, want);                                       \
		free(n_);                                                  \
	} while (0)

#define CHECK_FOLDER(in, len, want)                                        \
	do {                                                               \
		char *n_ = names_folder(in, len);                          \
		CHECK(name_ok(n_));                                        \
		CHECK_STR(n_, want);                                       \
		free(n_);                                                  \
	} while (0)

static void test_smoke(void)
{
	time_t t = 0;

	CHECK(names_parse_date("Mon, 02 Jun 2025 10:00:00 +0000", &t) == 0);
	CHECK(t == T0);
	CHECK_BASE(t, "Smoke", NULL, "Hello",
		   "2025-06-02 10.00 Smoke - Hello");
	CHECK_BASE(0, "A", "a@example.com", "B", "1970-01-01 00.00 A - B");
	CHECK_BASE(-60, "A", NULL, "B", "1969-12-31 23.59 A - B");
}

static void test_dates(void)
{
	time_t t = 42;

	CHECK(names_parse_date("Mon, 02 Jun 2025 10:00:00 EST", &t) == 0);
	CHECK(t == T0 + 5 * 3600);
	CHECK(names_parse_date("Mon, 02 Jun 2025 10:00:00 GMT", &t) == 0);
	CHECK(t == T0);
	CHECK(names_parse_date("2 Jun 2025 12:00 +0200", &t) == 0);
	CHECK(t == T0);
	t = 42;
	CHECK(names_parse_date("garbage", &t) == -1);
	CHECK(names_parse_date("", &t) == -1);
	CHECK(names_parse_date(NULL, &t) == -1);
	CHECK(t == 42);
	/* A date no calendar can show still gives a usable name. */
	CHECK_BASE((time_t)INT64_MAX, "A", NULL, "B",
		   "0000-00-00 00.00 A - B");
	CHECK_BASE((time_t)253402300799, "A", NULL, "B",
		   "9999-12-31 23.59 A - B");
	CHECK_BASE((time_t)253402300800, "A", NULL, "B",
		   "0000-00-00 00.00 A - B");
	CHECK_BASE((time_t)-62167219200, "A", NULL, "B",
		   "0000-01-01 00.00 A - B");
	CHECK_BASE((time_t)-62167219201, "A", NULL, "B",
		   "0000-00-00 00.00 A - B");
	CHECK_BASE((time_t)-61851600000, "A", NULL, "B",
		   "0010-01-01 00.00 A - B");
}

static void test_subjects(void)
{
	CHECK_SUBJECT("Hello, world!", "Hello, world!");
	CHECK_SUBJECT("=?ISO-8859-1?Q?Gr=FC=DFe?=", "Grüße");
	CHECK_SUBJECT("=?iso-8859-1?q?Gr=FC=DFe_aus_K=F6ln?=",
		      "Grüße aus Köln");
	CHECK_SUBJECT("=?UTF-8?B?R3LDvMOfZQ==?=", "Grüße");
	CHECK_SUBJECT("=?UTF-8?Q?Gr=C3=BC=C3=9Fe?=", "Grüße");
	CHECK_SUBJECT("=?ISO-8859-1?B?R3L83w==?=e", "Grüße");
	CHECK_SUBJECT("Re: =?UTF-8?B?5pel5pys6Kqe?= test", "Re: 日本語 test");
	CHECK_SUBJECT("=?UTF-8?Q?a?= =?UTF-8?Q?b?=", "ab");
	CHECK_SUBJECT("Grüße raw UTF-8", "Grüße raw UTF-8");
	/* An unknown transfer encoding is not an encoded word. */
	CHECK_SUBJECT("=?UTF-8?X?abc?=", "=?UTF-8?X?abc?=");

	/* Path characters and controls. */
	CHECK_SUBJECT("../../etc/passwd", ".._.._etc_passwd");
	CHECK_SUBJECT("a/b/../..\x01\x7f\tc\r\n d", "a_b_.._..__ c d");
	CHECK_SUBJECT("/", "_");
	CHECK_SUBJECT("..", "..");
	CHECK_SUBJECT(".hidden", ".hidden");
	CHECK_SUBJECT("\x1b[31mred\x1b[0m", "_[31mred_[0m");
	CHECK_SUBJECT("c1 \xc2\x85 \xc2\x9f \xc2\xa0 nbsp", "c1 _ _ nbsp");
	CHECK_SUBJECT("line\xe2\x80\xa8sep", "line sep");

	/* Folding and whitespace. */
	CHECK_SUBJECT("  folded\r\n\tsubject  \r\n  line ",
		      "folded subject line");
	CHECK_SUBJECT("a\v\fb", "a b");

	/* Invalid UTF-8 in the raw header becomes U+FFFD. */
	CHECK_SUBJECT("Gr\xfc\xdf" "e", "Gr\xef\xbf\xbd\xef\xbf\xbd" "e");
	CHECK_SUBJECT("\xff", "\xef\xbf\xbd");
	/* GLib replaces each byte of a truncated sequence. */
	CHECK_SUBJECT("cut \xe6\x97", "cut \xef\xbf\xbd\xef\xbf\xbd");

	/* What encoded words decode to is sanitized too. */
	CHECK_SUBJECT("=?UTF-8?Q?=2F?=", "_");
	CHECK_SUBJECT("=?UTF-8?B?Lw==?=", "_");
	CHECK_SUBJECT("a =?UTF-8?Q?=2F=2E=2E=2F?= b", "a _.._ b");
	CHECK_SUBJECT("=?UTF-8?Q?x=01y=0Az=7F=C2=85?=", "x_y z__");
	CHECK_SUBJECT("=?UTF-8?Q?=09=0D=0A?=x", "x");
	CHECK_SUBJECT("=?UTF-8?Q?=2E=2E?=", "..");
	{
		/* GMime turns the NUL into '?'; anything but a cut name or
		 * a control character is acceptable. */
		char *s = subject_of("=?UTF-8?Q?x=00y?=");

		CHECK(s != NULL && s[0] == 'x' && strlen(s) == 3);
		free(s);
	}
	{
		/* Invalid UTF-8 inside an encoded word. */
		char *s = subject_of("=?UTF-8?Q?bad=FF=FE?=");

		CHECK(s != NULL && strncmp(s, "bad", 3) == 0);
		free(s);
	}
	{
		char *s = subject_of("=?X-NO-SUCH-CHARSET?Q?abc?=");

		CHECK(s != NULL && strstr(s, "abc") != NULL);
		free(s);
	}

	/* Empty subjects. */
	CHECK_SUBJECT("", "(no subject)");
	CHECK_SUBJECT(NULL, "(no subject)");
	CHECK_SUBJECT(" \t\r\n ", "(no subject)");
	CHECK_SUBJECT("=?UTF-8?Q?\?=", "(no subject)");
	CHECK_SUBJECT("=?UTF-8?Q?=20=09?=", "(no subject)");
}

static void test_senders(void)
{
	CHECK_BASE(T0, "=?UTF-8?Q?J=C3=B6rg_M=C3=BCller?=", "j@example.com",
		   "x", "2025-06-02 10.00 Jörg Müller - x");
	CHECK_BASE(T0, "=?ISO-8859-1?B?SvZyZw==?=", NULL, "x",
		   "2025-06-02 10.00 Jörg - x");
	CHECK_BASE(T0, "=?ISO-8859-1?Q?J=F6rg?=", NULL, "x",
		   "2025-06-02 10.00 Jörg - x");
	CHECK_BASE(T0, "=?UTF-8?B?5pel5pys?=", NULL, "x",
		   "2025-06-02 10.00 日本 - x");
	CHECK_BASE(T0, NULL, "bob@example.com", "x",
		   "2025-06-02 10.00 bob@example.com - x");
	CHECK_BASE(T0, "", "bob@example.com", "x",
		   "2025-06-02 10.00 bob@example.com - x");
	CHECK_BASE(T0, " \t ", "bob@example.com", "x",
		   "2025-06-02 10.00 bob@example.com - x");
	CHECK_BASE(T0, NULL, NULL, "x", "2025-06-02 10.00 unknown - x");
	CHECK_BASE(T0, "", "", "x", "2025-06-02 10.00 unknown - x");
	CHECK_BASE(T0, NULL, NULL, NULL,
		   "2025-06-02 10.00 unknown - (no subject)");
	CHECK_BASE(T0, "a/b\x01", "x/y", "s", "2025-06-02 10.00 a_b_ - s");
	CHECK_BASE(T0, NULL, "b\xffo/b@x", "s",
		   "2025-06-02 10.00 b\xef\xbf\xbdo_b@x - s");
	CHECK_BASE(T0, "=?UTF-8?Q?=2F?=", NULL, "s",
		   "2025-06-02 10.00 _ - s");
	CHECK_BASE(T0, "=?UTF-8?Q?=2E?=", NULL, "s",
		   "2025-06-02 10.00 . - s");

	/* A long sender leaves room for the subject. */
	char name[300];

	memset(name, 'n', sizeof(name) - 1);
	name[sizeof(name) - 1] = '\0';
	char *n = names_message_base(T0, name, NULL, "subject");

	CHECK(name_ok(n));
	CHECK(n != NULL && strlen(n) < 120);
	CHECK(n != NULL && strstr(n, " - subject") != NULL);
	free(n);
}

/* A 2,000-character subject of k ASCII letters followed by characters of
 * every UTF-8 length: the cut must land on a boundary for every k. */
static void test_long(void)
{
	static const char *const chars[] = { "a", "ü", "日", "😀" };

	for (size_t c = 0; c < sizeof(chars) / sizeof(chars[0]); c++) {
		size_t clen = strlen(chars[c]);

		for (size_t k = 0; k < 4; k++) {
			GString *subject = g_string_new(NULL);
			char *n;

			for (size_t i = 0; i < k; i++)
				g_string_append_c(subject, 'x');
			for (size_t i = 0; i < 2000; i++)
				g_string_append(subject, chars[c]);
			n = names_message_base(T0, "Smoke", NULL,
					       subject->str);
			CHECK(name_ok(n));
			CHECK(strlen(n) <= NAMES_BASE_MAX);
			CHECK(strlen(n) > NAMES_BASE_MAX - clen);
			g_string_free(subject, TRUE);
			free(n);

			/* Folder names are cut the same way. */
			subject = g_string_new(NULL);
			for (size_t i = 0; i < k; i++)
				g_string_append_c(subject, 'x');
			for (size_t i = 0; i < 2000; i++)
				g_string_append(subject, chars[c]);
			n = names_folder(subject->str, subject->len);
			CHECK(name_ok(n));
			CHECK(strlen(n) > NAMES_BASE_MAX - clen);
			g_string_free(subject, TRUE);
			free(n);
		}
	}

	/* A space right at the cut is trimmed, not left at the end. */
	char buf[NAMES_BASE_MAX + 10];

	memset(buf, 'y', sizeof(buf) - 1);
	buf[sizeof(buf) - 1] = '\0';
	buf[NAMES_BASE_MAX - 1] = ' ';
	char *n = names_folder(buf, strlen(buf));

	CHECK(name_ok(n));
	CHECK(strlen(n) == NAMES_BASE_MAX - 1);
	free(n);

	/* Encoded words past the cut do not matter, but must not hurt. */
	GString *s = g_string_new(NULL);

	for (int i = 0; i < 500; i++)
		g_string_append(s, "=?UTF-8?B?5pel5pys6Kqe?= ");
	n = names_message_base(T0, s->str, "x@y", s->str);
	CHECK(name_ok(n));
	g_string_free(s, TRUE);
	free(n);
}

static void test_folders(void)
{
	CHECK_FOLDER("..", 2, "_..");
	CHECK_FOLDER(".", 1, "_.");
	CHECK_FOLDER("", 0, "_");
	CHECK_FOLDER(NULL, 0, "_");
	CHECK_FOLDER("a/b", 3, "a_b");
	CHECK_FOLDER(".hidden", 7, "_hidden");
	CHECK_FOLDER("...", 3, "_..");
	CHECK_FOLDER(" .x ", 4, "_x");
	CHECK_FOLDER("   ", 3, "_");
	CHECK_FOLDER("INBOX", 5, "INBOX");
	CHECK_FOLDER("INBOX.Sent", 5, "INBOX");
	CHECK_FOLDER("Entwürfe", strlen("Entwürfe"), "Entwürfe");
	CHECK_FOLDER("台北", strlen("台北"), "台北");
	CHECK_FOLDER("a\0b", 3, "a_b");
	CHECK_FOLDER("\0", 1, "_");
	CHECK_FOLDER("a\tb\nc", 5, "a b c");
	CHECK_FOLDER("\xff", 1, "\xef\xbf\xbd");
	CHECK_FOLDER("x\x7f\xc2\x80", 4, "x__");
	/* Folder names are already decoded: no RFC 2047 here. */
	CHECK_FOLDER("=?UTF-8?Q?a?=", 13, "=?UTF-8?Q?a?=");
}

static uint64_t rng_state = 0x9e3779b97f4a7c15u;

static uint32_t rng(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return (uint32_t)(rng_state >> 32);
}

/* Random text biased towards what breaks sanitizers. */
static void random_text(char *buf, size_t max, size_t *len_r)
{
	static const char *const pieces[] = {
		"/", ".", "..", " ", "\t", "\r\n ", "\xc2\x85", "\xc2\xa0",
		"\xe2\x80\xa8", "=?UTF-8?Q?", "=?UTF-8?B?", "=?ISO-8859-1?Q?",
		"?=", "=2F", "=00", "=0A", "=FF", "=C2=85", "Lw==", "AA==",
		"ü", "日", "😀", "\xf0\x9f", "\xc3", "_", "=", "?", "\"",
	};
	size_t n = rng() % max, len = 0;

	while (len < n) {
		if (rng() % 3 == 0) {
			const char *p = pieces[rng() % (sizeof(pieces) /
							 sizeof(pieces[0]))];
			size_t plen = strlen(p);

			if (len + plen > n)
				break;
			memcpy(buf + len, p, plen);
			len += plen;
		} else {
			buf[len++] = (char)(rng() & 0xff);
		}
	}
	buf[len] = '\0';
	*len_r = len;
}

static void test_properties(void)
{
	int bad = 0;

	for (int i = 0; i < 20000; i++) {
		char a[512], b[128], c[64];
		size_t alen, blen, clen;
		size_t max = i % 10 == 0 ? sizeof(a) : 48;
		char *n;

		random_text(a, max, &alen);
		random_text(b, sizeof(b), &blen);
		random_text(c, sizeof(c), &clen);
		/* Random text may hold NULs: as C strings they end there. */
		n = names_message_base((time_t)(int32_t)rng(),
				       i % 7 ? b : NULL, i % 5 ? c : NULL,
				       i % 11 ? a : NULL);
		if (!name_ok(n)) {
			bad++;
			fprintf(stderr, "bad message name \"%s\"\n", n);
		}
		free(n);
		n = names_folder(a, alen);
		if (!name_ok(n)) {
			bad++;
			fprintf(stderr, "bad folder name \"%s\"\n", n);
		}
		free(n);
	}
	CHECK(bad == 0);
}

static gpointer thread_main(gpointer data)
{
	int *bad = data;

	for (int i = 0; i < 200; i++) {
		char *n = names_message_base(T0, "=?ISO-8859-1?Q?J=F6rg?=",
					     NULL, "=?UTF-8?B?R3LDvMOfZQ==?=");

		if (strcmp(n, "2025-06-02 10.00 Jörg - Grüße") != 0)
			g_atomic_int_inc(bad);
		free(n);
	}
	return NULL;
}

/* The first calls race to initialise GMime, as FUSE threads would. */
static void test_threads(void)
{
	GThread *t[8];
	int bad = 0;

	for (size_t i = 0; i < 8; i++)
		t[i] = g_thread_new("names", thread_main, &bad);
	for (size_t i = 0; i < 8; i++)
		g_thread_join(t[i]);
	CHECK(bad == 0);
}

int main(void)
{
	setenv("TZ", "UTC", 1);
	tzset();
	test_threads();
	test_smoke();
	test_dates();
	test_subjects();
	test_senders();
	test_long();
	test_folders();
	test_properties();
		/* Bidi overrides cannot disguise the extension. */
	{
		char *n = names_message_base(0, "x", NULL, "invoice\xe2\x80\xae" "fdp.exe");

		CHECK(n != NULL && strstr(n, "\xe2\x80\xae") == NULL);
		CHECK(n != NULL && strstr(n, "invoice_fdp.exe") != NULL);
		free(n);
	}
	return check_exit();
}
