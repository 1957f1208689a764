/* fuzz-imap-parser.c: libFuzzer target for the IMAP response parser.
 *
 * The first byte picks the limits (the defaults, or small ones so that the
 * limit paths run too), the next two pick where to split; the rest is the
 * server's output.  It is parsed three ways: fed whole, fed in three pieces
 * split at those points, and fed in small chunks where each chunk arrives
 * while the previous response is still held, before that response is
 * read.  Every byte of every argument is hashed, so ASan sees any read out
 * of bounds, and the three hashes must agree: splitting the input must
 * never change what the parser returns. */
#include "imap-parser.h"

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
	fprintf(stderr, "fuzz-imap-parser: %s\n", what);
	abort();
}

static uint64_t fuzz_walk_arg(uint64_t h, const struct imap_arg *arg,
			      unsigned depth)
{
	h = fuzz_mix_size(h, arg->type);
	h = fuzz_mix_size(h, arg->len);
	switch (arg->type) {
	case IMAP_ARG_NIL:
		if (arg->v.str != NULL || arg->len != 0)
			fuzz_fail("NIL with a string");
		break;
	case IMAP_ARG_LIST:
		if (depth > 100000)
			fuzz_fail("absurd depth");
		if (arg->len > 0 && arg->v.items == NULL)
			fuzz_fail("list without items");
		for (size_t i = 0; i < arg->len; i++)
			h = fuzz_walk_arg(h, &arg->v.items[i], depth + 1);
		break;
	case IMAP_ARG_ATOM:
	case IMAP_ARG_STRING:
	case IMAP_ARG_LITERAL:
		if (arg->v.str == NULL)
			fuzz_fail("string argument without a string");
		h = fuzz_mix(h, arg->v.str, arg->len);
		if (arg->v.str[arg->len] != '\0')
			fuzz_fail("string not NUL-terminated");
		if (arg->type == IMAP_ARG_ATOM && arg->len == 0)
			fuzz_fail("empty atom");
		break;
	default:
		fuzz_fail("unknown argument type");
	}
	return h;
}

static uint64_t fuzz_walk(uint64_t h, const struct imap_response *resp)
{
	/* Exercise the helpers on everything too. */
	static const char *const keys[] = { "UID", "BODY[]", "FLAGS", "NIL" };
	const char *s;
	size_t len;
	uint64_t n;

	h = fuzz_mix_size(h, resp->kind);
	h = fuzz_mix_size(h, resp->status);
	if ((resp->kind == IMAP_RESP_TAGGED) != (resp->tag != NULL))
		fuzz_fail("tag present iff tagged");
	if (resp->tag != NULL)
		h = fuzz_mix(h, resp->tag, strlen(resp->tag) + 1);
	if (resp->text == NULL)
		fuzz_fail("NULL text");
	h = fuzz_mix(h, resp->text, strlen(resp->text) + 1);
	if (resp->status == IMAP_STATUS_NONE && resp->code_count != 0)
		fuzz_fail("code without status");
	if (resp->status != IMAP_STATUS_NONE && resp->args_count != 0)
		fuzz_fail("status with arguments");
	h = fuzz_mix_size(h, resp->code_count);
	for (size_t i = 0; i < resp->code_count; i++)
		h = fuzz_walk_arg(h, &resp->code[i], 0);
	h = fuzz_mix_size(h, resp->args_count);
	for (size_t i = 0; i < resp->args_count; i++) {
		const struct imap_arg *arg = &resp->args[i];

		h = fuzz_walk_arg(h, arg, 0);
		h = fuzz_mix_size(h, imap_arg_number(arg, &n) ? n : 0);
		if (imap_arg_astring(arg, &s, &len) && s != NULL)
			h = fuzz_mix(h, s, len);
		if (imap_arg_nstring(arg, &s, &len) && s != NULL)
			h = fuzz_mix(h, s, len);
		for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++) {
			const struct imap_arg *v = imap_fetch_get(arg, keys[k]);

			if (v != NULL)
				h = fuzz_walk_arg(h, v, 0);
		}
	}
	return h;
}

static size_t fuzz_max_literal(const struct imap_parser_limits *limits)
{
	return limits != NULL && limits->max_literal != 0
		       ? limits->max_literal
		       : (size_t)1024 * 1024 * 1024;
}

/* Feeds data in pieces: ending at cuts[] if given, else chunk bytes at a
 * time, a new piece arriving before each response is read when
 * feed_early.  Returns a hash of everything returned. */
static uint64_t fuzz_run(const uint8_t *data, size_t size,
			 const struct imap_parser_limits *limits,
			 const size_t *cuts, size_t ncuts, size_t chunk,
			 bool feed_early)
{
	struct imap_parser *parser = imap_parser_new(limits);
	const struct imap_response *resp;
	const char *error;
	uint64_t h = FUZZ_FNV_OFFSET;
	size_t pos = 0, cut = 0;
	int ret;

	if (parser == NULL)
		fuzz_fail("imap_parser_new");
	for (;;) {
		ret = imap_parser_next(parser, &resp, &error);
		if (ret < 0) {
			h = fuzz_mix(h, error, strlen(error) + 1);
			if (imap_parser_feed(parser, "x", 1) != -1)
				fuzz_fail("feed after failure");
			break;
		}
		if (ret == 0 && imap_parser_literal_remaining(parser) >
					fuzz_max_literal(limits))
			fuzz_fail("literal_remaining above the limit");
		if ((ret == 0 || feed_early) && pos < size) {
			size_t end = cuts != NULL ? (cut < ncuts ? cuts[cut++]
								 : size)
						  : pos + chunk;

			if (end > size)
				end = size;
			/* A failed feed shows at the next imap_parser_next. */
			(void)imap_parser_feed(parser, data + pos, end - pos);
			pos = end;
		} else if (ret == 0) {
			h = fuzz_mix_size(h, imap_parser_pending(parser));
			break;
		}
		if (ret > 0)
			h = fuzz_walk(h, resp);
	}
	imap_parser_free(&parser);
	return h;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const struct imap_parser_limits small = {
		.max_line = 64, .max_literal = 64, .max_response = 256,
		.max_depth = 4, .max_args = 16,
	};
	static const struct imap_parser_limits medium = {
		.max_line = 1024, .max_literal = 4096, .max_response = 8192,
		.max_depth = 16, .max_args = 256,
	};
	static const struct imap_parser_limits shallow = { .max_depth = 2 };
	const struct imap_parser_limits *limits;
	size_t cuts[2], chunk;
	uint64_t whole, split, chunked;

	if (size < 3)
		return 0;
	switch (data[0] & 3) {
	case 0:
		limits = NULL;
		break;
	case 1:
		limits = &small;
		break;
	case 2:
		limits = &medium;
		break;
	default:
		limits = &shallow;
		break;
	}
	cuts[0] = data[1];
	cuts[1] = data[2];
	chunk = 1 + (size_t)((data[1] ^ data[2]) & 7);
	data += 3;
	size -= 3;
	cuts[0] = cuts[0] * size / 256;
	cuts[1] = cuts[0] + cuts[1] * (size - cuts[0]) / 256;

	whole = fuzz_run(data, size, limits, NULL, 0, size, false);
	split = fuzz_run(data, size, limits, cuts, 2, 0, false);
	chunked = fuzz_run(data, size, limits, NULL, 0, chunk, true);
	if (split != whole)
		fuzz_fail("split input parsed differently");
	if (chunked != whole)
		fuzz_fail("chunked input parsed differently");
	return 0;
}
