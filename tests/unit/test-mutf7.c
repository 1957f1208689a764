/* test-mutf7.c: modified UTF-7 decoding and encoding (net/client/mutf7.c).
 *
 * Table-driven: pairs that must convert both ways, strings that must be
 * refused, and a round trip over a set of UTF-8 names.  Every fuzzer
 * finding is added to the tables as a regression case. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "mutf7.h"

struct mutf7_pair {
	const char *mutf7;
	const char *utf8;
};

static const struct mutf7_pair pairs[] = {
	{ "", "" },
	{ "INBOX", "INBOX" },
	{ "&-", "&" },
	{ "a&-b&-&-", "a&b&&" },
	{ "~peter/mail/&U,BTFw-/&ZeVnLIqe-", "~peter/mail/台北/日本語" },
	{ "Entw&APw-rfe", "Entwürfe" },
	{ "Gr&APwA3w-e", "Grüße" },
	{ "&AOQA9gD8-", "äöü" },
	{ "Ma&AO4-tre", "Maître" },
	{ "&2D3eAA-", "😀" },
	{ "a&2D3eANg93gE-b", "a😀😁b" },
	{ "&AOQ-&-", "ä&" },
	{ "&2D3eANgD3Dk-", "😀𐰹" },
	/* Control characters are not printable ASCII, so they go shifted. */
	{ "&AAE-", "\x01" },
	{ "a&AAkACg-b", "a\t\nb" },
	{ "&AH8AgA-", "\x7f\xc2\x80" },
	{ "&,,8-", "\xef\xbf\xbf" },
	{ "&2,,f,w-", "\xf4\x8f\xbf\xbf" },
	{ " !\"#$%'()*+,-./0123456789:;<=>?@[\\]^_`{|}~",
	  " !\"#$%'()*+,-./0123456789:;<=>?@[\\]^_`{|}~" },
};

static const char *const bad_decode[] = {
	"&",              /* unterminated shift */
	"a&",
	"&AOQ",           /* unterminated run */
	"&AOQ-&AOQ",
	"&A-",            /* 6 bits: a whole character of padding */
	"&AA-",           /* 12 bits, no unit */
	"&AOQA-",         /* 24 bits: 8 left over */
	"&AOR-",          /* non-zero leftover bits */
	"&APx-",
	"&AOQ=-",         /* padding is not modified base64 */
	"&AO/-",          /* '/' is standard base64, not modified */
	"&AO Q-",
	"&AOQ&-",
	"&AGE-",          /* shifted 'a' must be direct */
	"&ACA-",          /* shifted space */
	"&ACY-",          /* shifted '&' */
	"&AH4-",          /* shifted '~' */
	"&AAA-",          /* U+0000 */
	"&2D0-",          /* lone high surrogate */
	"&2D3YPQ-",       /* high followed by high */
	"&3gA-",          /* lone low surrogate */
	"&2D3eAA",        /* pair, unterminated */
	"&2D0-&3gA-",     /* pair split over two runs */
	"&2D0AYQ-",       /* high surrogate followed by 'a' */
	"\x80",           /* 8-bit bytes */
	"Entw\xc3\xbcrfe",
	"\x01",           /* C0 controls and DEL direct */
	"a\tb",
	"a\nb",
	"\x7f",
	"&AOQ\x80-",
};

static void test_pairs(void)
{
	for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
		char *out = NULL;

		CHECK(mutf7_decode(pairs[i].mutf7, strlen(pairs[i].mutf7),
				   &out) == 0);
		CHECK_STR(out, pairs[i].utf8);
		free(out);
		out = NULL;
		CHECK(mutf7_encode(pairs[i].utf8, &out) == 0);
		CHECK_STR(out, pairs[i].mutf7);
		free(out);
	}
}

static void test_bad_decode(void)
{
	for (size_t i = 0; i < sizeof(bad_decode) / sizeof(bad_decode[0]);
	     i++) {
		char *out = (char *)"sentinel";
		int ret = mutf7_decode(bad_decode[i], strlen(bad_decode[i]),
				       &out);

		CHECK(ret == -1);
		CHECK(out == NULL);
		if (ret == 0) {
			fprintf(stderr, "accepted bad input #%zu \"%s\"\n", i,
				bad_decode[i]);
			free(out);
		}
	}
}

static void test_len(void)
{
	char *out = NULL;

	/* Only len bytes are read: the rest of the buffer is not input. */
	CHECK(mutf7_decode("Gr&APwA3w-eXYZ", 10, &out) == 0);
	CHECK_STR(out, "Grüß");
	free(out);
	CHECK(mutf7_decode("&AOQ-", 4, &out) == -1);
	CHECK(mutf7_decode("Gr&APwA3w-e", 9, &out) == -1);
	CHECK(mutf7_decode("a&-", 2, &out) == -1);
	CHECK(mutf7_decode(NULL, 0, &out) == 0);
	CHECK_STR(out, "");
	free(out);
	/* An embedded NUL is a control byte, not the end. */
	CHECK(mutf7_decode("a\0b", 3, &out) == -1);
	CHECK(out == NULL);
}

static void test_bad_encode(void)
{
	static const char *const bad[] = {
		"\x80", "a\xc3", "\xc3\x28", "\xc0\xaf", "\xe0\x80\xaf",
		"\xed\xa0\x80", "\xed\xbf\xbf", "\xf4\x90\x80\x80", "\xf5",
		"\xff", "\xf0\x9f\x98", "ok\xe6\x97",
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char *out = (char *)"sentinel";

		CHECK(mutf7_encode(bad[i], &out) == -1);
		CHECK(out == NULL);
	}
}

static void test_round_trip(void)
{
	static const char *const names[] = {
		"INBOX", "Sent Items", "&&&", "a&b", "Ünïcödé/日本語/😀",
		"Корзина", "Παλιά", "עברית", "مرحبا", "\xc2\xa0nbsp",
		"mixed & 台北 & 😀😀😀 end", "\x01\x02\x1f\x7f", "~/.-,+",
		"&-&-", "a😀", "😀a", "ü", "üü", "üüü", "üüüü", "-&-",
		"\xef\xbf\xbd", "\xe2\x80\xaertl",
	};

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		char *enc = NULL, *dec = NULL;

		CHECK(mutf7_encode(names[i], &enc) == 0);
		if (enc == NULL)
			continue;
		for (const char *p = enc; *p; p++)
			CHECK(*p >= 0x20 && *p <= 0x7e);
		CHECK(mutf7_decode(enc, strlen(enc), &dec) == 0);
		CHECK_STR(dec, names[i]);
		free(enc);
		free(dec);
	}
}

/* Every code point in the BMP outside the surrogates, and a sample of the
 * supplementary planes, each alone and between ASCII letters. */
static void test_all_code_points(void)
{
	int bad = 0;

	for (unsigned long c = 1; c <= 0x10ffff; c += c < 0x10000 ? 1 : 97) {
		char utf8[16], *p = utf8, *enc = NULL, *dec = NULL;

		if (c >= 0xd800 && c <= 0xdfff)
			continue;
		*p++ = 'x';
		if (c < 0x80) {
			*p++ = (char)c;
		} else if (c < 0x800) {
			*p++ = (char)(0xc0 | (c >> 6));
			*p++ = (char)(0x80 | (c & 0x3f));
		} else if (c < 0x10000) {
			*p++ = (char)(0xe0 | (c >> 12));
			*p++ = (char)(0x80 | ((c >> 6) & 0x3f));
			*p++ = (char)(0x80 | (c & 0x3f));
		} else {
			*p++ = (char)(0xf0 | (c >> 18));
			*p++ = (char)(0x80 | ((c >> 12) & 0x3f));
			*p++ = (char)(0x80 | ((c >> 6) & 0x3f));
			*p++ = (char)(0x80 | (c & 0x3f));
		}
		*p++ = 'y';
		*p = '\0';
		if (mutf7_encode(utf8, &enc) != 0 ||
		    mutf7_decode(enc, strlen(enc), &dec) != 0 ||
		    strcmp(dec, utf8) != 0)
			bad++;
		free(enc);
		free(dec);
	}
	CHECK(bad == 0);
}

int main(void)
{
	test_pairs();
	test_bad_decode();
	test_len();
	test_bad_encode();
	test_round_trip();
	test_all_code_points();
	return check_exit();
}
