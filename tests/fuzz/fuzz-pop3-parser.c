/* fuzz-pop3-parser.c: libFuzzer target for the POP3 response parser.
 *
 * The first byte picks the limits (the defaults, or small ones so that the
 * limit paths run too), the next two say which responses are asked for as
 * multi-line (bit i % 16 for the i-th response) and where to split; the
 * rest is the server's output.  It is parsed three ways: fed whole, fed in
 * two pieces, and fed in small chunks, each arriving before the previous
 * response is read.  Every byte returned is hashed, so ASan sees any read
 * out of bounds, and the three hashes must agree: splitting the input must
 * never change what the parser returns. */
#include "pop3-parser.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_FNV_OFFSET 0xcbf29ce484222325ULL
#define FUZZ_FNV_PRIME 0x100000001b3ULL

static uint64_t fuzz_mix(uint64_t h, const void *data, size_t len)
{
	const unsigned char *p = data;

	for (size_t i = 0; i < len; i++)
		h = (h ^ p[i]) * FUZZ_FNV_PRIME;
	return h;
}

static uint64_t fuzz_mix_size(uint64_t h, size_t n)
{
	return fuzz_mix(h, &n, sizeof(n));
}

static void fuzz_fail(const char *what)
{
	fprintf(stderr, "fuzz-pop3-parser: %s\n", what);
	abort();
}

static uint64_t fuzz_walk(uint64_t h, const struct pop3_response *r,
			  bool multiline, size_t max_body)
{
	if (r->line == NULL || r->text == NULL || r->body == NULL)
		fuzz_fail("NULL pointer in a response");
	if (r->line[r->line_len] != '\0')
		fuzz_fail("line not NUL-terminated");
	if (r->text < r->line || r->text > r->line + r->line_len)
		fuzz_fail("text outside the line");
	if (r->multiline && (!multiline || r->status != POP3_STATUS_OK))
		fuzz_fail("multi-line where not asked for, or not +OK");
	if (!r->multiline && r->body_len != 0)
		fuzz_fail("body on a single-line response");
	if (r->body_len > max_body)
		fuzz_fail("body above the limit");
	if (r->body[r->body_len] != '\0')
		fuzz_fail("body not NUL-terminated");
	h = fuzz_mix_size(h, r->status);
	h = fuzz_mix_size(h, r->multiline);
	h = fuzz_mix(h, r->line, r->line_len + 1);
	h = fuzz_mix(h, r->text, strlen(r->text));
	h = fuzz_mix_size(h, r->body_len);
	h = fuzz_mix(h, r->body, r->body_len);
	return h;
}

/* cut: the end of the first piece, or 0 for chunks of `chunk` bytes fed
 * before every read. */
static uint64_t fuzz_run(const uint8_t *data, size_t size,
			 const struct pop3_parser_limits *limits,
			 unsigned mask, size_t cut, size_t chunk)
{
	struct pop3_parser *p = pop3_parser_new(limits);
	const struct pop3_response *resp;
	const char *error;
	uint64_t h = FUZZ_FNV_OFFSET;
	size_t pos = 0, max_body, nresp = 0;
	int ret;

	if (p == NULL)
		fuzz_fail("pop3_parser_new");
	max_body = limits && limits->max_body ? limits->max_body : (size_t)1 << 30;
	for (;;) {
		bool multiline = (mask >> (nresp % 16)) & 1;

		if (chunk > 0 && pos < size) {
			size_t end = pos + chunk > size ? size : pos + chunk;

			/* A failed feed shows at the next pop3_parser_next. */
			(void)pop3_parser_feed(p, data + pos, end - pos);
			pos = end;
		}
		ret = pop3_parser_next(p, multiline, &resp, &error);
		if (ret < 0) {
			if (error == NULL)
				fuzz_fail("failure without a reason");
			h = fuzz_mix(h, error, strlen(error) + 1);
			if (pop3_parser_feed(p, "x", 1) != -1)
				fuzz_fail("feed after failure");
			break;
		}
		if (ret > 0) {
			h = fuzz_walk(h, resp, multiline, max_body);
			nresp++;
			continue;
		}
		if (pop3_parser_pending(p) > size)
			fuzz_fail("pending above what was fed");
		if (pos == size) {
			h = fuzz_mix_size(h, pop3_parser_pending(p));
			break;
		}
		if (chunk == 0) {
			size_t end = pos < cut ? cut : size;

			(void)pop3_parser_feed(p, data + pos, end - pos);
			pos = end;
		}
	}
	pop3_parser_free(&p);
	return h;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const struct pop3_parser_limits tiny = { .max_line = 8, .max_body = 16 };
	static const struct pop3_parser_limits small = { .max_line = 64, .max_body = 512 };
	const struct pop3_parser_limits *limits;
	unsigned mask;
	size_t cut, chunk;
	uint64_t whole, split, chunked;

	if (size < 3)
		return 0;
	switch (data[0] & 3) {
	case 0:
	case 3:
		limits = NULL;
		break;
	case 1:
		limits = &tiny;
		break;
	default:
		limits = &small;
		break;
	}
	mask = (unsigned)data[1] | (unsigned)data[0] << 8;
	chunk = 1 + (size_t)(data[2] & 7);
	data += 3;
	size -= 3;
	cut = (size_t)mask % (size + 1);

	whole = fuzz_run(data, size, limits, mask, size, 0);
	split = fuzz_run(data, size, limits, mask, cut, 0);
	chunked = fuzz_run(data, size, limits, mask, 0, chunk);
	if (split != whole)
		fuzz_fail("split input parsed differently");
	if (chunked != whole)
		fuzz_fail("chunked input parsed differently");
	return 0;
}
