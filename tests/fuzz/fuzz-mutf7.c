/* fuzz-mutf7.c: libFuzzer target for net/client/mutf7.c.
 *
 * Any input may be refused, but what is accepted must be valid UTF-8 that
 * encodes back to something decoding to the same string, and any valid
 * UTF-8 must survive encode then decode unchanged.  A broken property
 * aborts so that libFuzzer keeps the input. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mutf7.h"

static void fuzz_round_trip(const char *utf8)
{
	char *enc = NULL, *dec = NULL;

	if (mutf7_encode(utf8, &enc) != 0)
		abort();
	for (const char *p = enc; *p != '\0'; p++) {
		if (*p < 0x20 || *p > 0x7e)
			abort();
	}
	if (mutf7_decode(enc, strlen(enc), &dec) != 0)
		abort();
	if (strcmp(dec, utf8) != 0)
		abort();
	free(enc);
	free(dec);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *dec = NULL, *raw, *enc = NULL;

	if (mutf7_decode((const char *)data, size, &dec) == 0) {
		if (strlen(dec) > 4 * size)
			abort();
		fuzz_round_trip(dec);
		free(dec);
	} else if (dec != NULL) {
		abort();
	}

	/* The raw bytes as UTF-8: encoding must refuse exactly the invalid
	 * strings, which the decoder's output never is. */
	raw = malloc(size + 1);
	if (raw == NULL)
		return 0;
	memcpy(raw, data, size);
	raw[size] = '\0';
	if (mutf7_encode(raw, &enc) == 0) {
		free(enc);
		fuzz_round_trip(raw);
	}
	free(raw);
	return 0;
}
