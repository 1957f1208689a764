/* mutf7.c: IMAP's modified UTF-7 mailbox names (RFC 3501 5.1.3).
 *
 * Printable US-ASCII except '&' stands for itself, "&-" is '&', and every
 * other character is written as UTF-16 in a modified base64 run between
 * '&' and '-' (alphabet A-Z a-z 0-9 + ,; no padding).  Mailbox names come
 * from the server, so the decoder is strict: anything an encoder following
 * the RFC would not produce, and anything that cannot become a C string of
 * valid UTF-8, is refused rather than guessed at.  The encoder always
 * writes the canonical form, so decode(encode(s)) == s.  Neither direction
 * touches global state; both are safe to call from any thread. */
#include "mutf7.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const char mutf7_b64[] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

static int mutf7_b64_value(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == ',')
		return 63;
	return -1;
}

static int mutf7_is_direct(uint32_t c)
{
	return c >= 0x20 && c <= 0x7e;
}

static char *mutf7_put_utf8(char *p, uint32_t c)
{
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
	return p;
}

/* Decode one base64 run starting just after '&'.  *pos is left on the
 * closing '-'.  Returns the new output position, or NULL when the run is
 * malformed. */
static char *mutf7_decode_run(const unsigned char *in, size_t len,
			      size_t *pos, char *out)
{
	uint32_t bits = 0, high = 0;
	unsigned int nbits = 0;
	size_t i = *pos;

	for (; i < len && in[i] != '-'; i++) {
		int v = mutf7_b64_value(in[i]);

		if (v < 0)
			return NULL;
		bits = (bits << 6) | (uint32_t)v;
		nbits += 6;
		if (nbits < 16)
			continue;
		nbits -= 16;
		uint32_t unit = (bits >> nbits) & 0xffff;

		bits &= (1u << nbits) - 1;
		if (high) {
			if (unit < 0xdc00 || unit > 0xdfff)
				return NULL;
			out = mutf7_put_utf8(out, 0x10000 +
					     ((high - 0xd800) << 10) +
					     (unit - 0xdc00));
			high = 0;
		} else if (unit >= 0xd800 && unit <= 0xdbff) {
			high = unit;
		} else if (unit >= 0xdc00 && unit <= 0xdfff) {
			return NULL;
		} else if (unit == 0 || mutf7_is_direct(unit)) {
			/* Printable ASCII must be direct; U+0000 cannot live
			 * in a C string. */
			return NULL;
		} else {
			out = mutf7_put_utf8(out, unit);
		}
	}
	/* Unterminated run, a high surrogate without its partner (a pair
	 * split over two runs is not canonical either), or padding that is
	 * a whole extra character or not zero. */
	if (i == len || high || nbits >= 6 || bits != 0)
		return NULL;
	*pos = i;
	return out;
}

int mutf7_decode(const char *in, size_t len, char **out_r)
{
	const unsigned char *s = (const unsigned char *)in;
	char *out, *p;

	*out_r = NULL;
	/* A run of n UTF-16 units takes at least 2 + 8n/3 input bytes and
	 * gives at most 3n output bytes, so the output never exceeds
	 * 9/8 of the input; 2 * len + 1 is a simple safe bound. */
	if (len > (SIZE_MAX - 1) / 2)
		return -1;
	out = malloc(2 * len + 1);
	if (out == NULL)
		return -1;
	p = out;
	for (size_t i = 0; i < len; i++) {
		if (!mutf7_is_direct(s[i]))
			goto fail;
		if (s[i] != '&') {
			*p++ = (char)s[i];
			continue;
		}
		i++;
		if (i < len && s[i] == '-') {
			*p++ = '&';
			continue;
		}
		p = mutf7_decode_run(s, len, &i, p);
		if (p == NULL)
			goto fail;
	}
	*p = '\0';
	*out_r = out;
	return 0;
fail:
	free(out);
	return -1;
}

/* Read one strictly valid UTF-8 character (no overlong forms, no
 * surrogates, nothing above U+10FFFF).  Returns its length or 0. */
static size_t mutf7_get_utf8(const unsigned char *s, uint32_t *c_r)
{
	uint32_t c, min;
	size_t n;

	if (s[0] < 0x80) {
		*c_r = s[0];
		return 1;
	} else if (s[0] >= 0xc2 && s[0] <= 0xdf) {
		c = s[0] & 0x1f;
		n = 2;
		min = 0x80;
	} else if (s[0] >= 0xe0 && s[0] <= 0xef) {
		c = s[0] & 0x0f;
		n = 3;
		min = 0x800;
	} else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
		c = s[0] & 0x07;
		n = 4;
		min = 0x10000;
	} else {
		return 0;
	}
	/* The terminating NUL is not a continuation byte, so this never
	 * reads past the end of the string. */
	for (size_t i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		c = (c << 6) | (s[i] & 0x3f);
	}
	if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
		return 0;
	*c_r = c;
	return n;
}

static char *mutf7_put_unit(char *p, uint32_t unit, uint32_t *bits,
			    unsigned int *nbits)
{
	*bits = (*bits << 16) | unit;
	*nbits += 16;
	while (*nbits >= 6) {
		*nbits -= 6;
		*p++ = mutf7_b64[(*bits >> *nbits) & 0x3f];
	}
	*bits &= (1u << *nbits) - 1;
	return p;
}

/* Close a shifted run: the last partial character is padded with zero
 * bits, which is what the decoder insists on. */
static char *mutf7_end_run(char *p, uint32_t bits, unsigned int nbits)
{
	if (nbits > 0)
		*p++ = mutf7_b64[(bits << (6 - nbits)) & 0x3f];
	*p++ = '-';
	return p;
}

int mutf7_encode(const char *utf8, char **out_r)
{
	const unsigned char *s = (const unsigned char *)utf8;
	size_t len = strlen(utf8);
	uint32_t bits = 0;
	unsigned int nbits = 0;
	int shifted = 0;
	char *out, *p;

	*out_r = NULL;
	/* Worst case is a lone one-byte control character between printable
	 * ones: "&" + 3 base64 characters + "-", 5 bytes for 1. */
	if (len > (SIZE_MAX - 1) / 5)
		return -1;
	out = malloc(5 * len + 1);
	if (out == NULL)
		return -1;
	p = out;
	while (*s != '\0') {
		uint32_t c;
		size_t n = mutf7_get_utf8(s, &c);

		if (n == 0) {
			free(out);
			return -1;
		}
		s += n;
		if (mutf7_is_direct(c)) {
			if (shifted) {
				p = mutf7_end_run(p, bits, nbits);
				shifted = 0;
				bits = 0;
				nbits = 0;
			}
			*p++ = (char)c;
			if (c == '&')
				*p++ = '-';
			continue;
		}
		if (!shifted) {
			*p++ = '&';
			shifted = 1;
		}
		if (c >= 0x10000) {
			c -= 0x10000;
			p = mutf7_put_unit(p, 0xd800 + (c >> 10), &bits, &nbits);
			p = mutf7_put_unit(p, 0xdc00 + (c & 0x3ff), &bits,
					   &nbits);
		} else {
			p = mutf7_put_unit(p, c, &bits, &nbits);
		}
	}
	if (shifted)
		p = mutf7_end_run(p, bits, nbits);
	*p = '\0';
	*out_r = out;
	return 0;
}
