/* fuzz-names.c: libFuzzer target for cache/names.c.
 *
 * The input is split at NUL bytes into from_name, from_addr, subject and
 * the remaining bytes (a folder component, which keeps its NULs); a field
 * that is missing is passed as NULL.  Every name that comes back must keep
 * the promises of names.h, or the target aborts. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <glib.h>

#include "names.h"

static void fuzz_check(const char *n)
{
	size_t len;

	if (n == NULL)
		abort();
	len = strlen(n);
	if (len == 0 || len > NAMES_BASE_MAX || n[0] == '.')
		abort();
	if (!g_utf8_validate(n, (gssize)len, NULL))
		abort();
	for (const char *p = n; *p != '\0'; p = g_utf8_next_char(p)) {
		gunichar c = g_utf8_get_char(p);

		if (c == '/' || c < 0x20 || (c >= 0x7f && c <= 0x9f))
			abort();
	}
	if (n[0] == ' ' || n[len - 1] == ' ' || strstr(n, "  ") != NULL)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int tz_set;
	const char *field[3] = { NULL, NULL, NULL };
	char *buf, *p, *end, *n;
	time_t date = 0;

	if (!tz_set) {
		setenv("TZ", "UTC", 1);
		tzset();
		tz_set = 1;
	}
	buf = malloc(size + 1);
	if (buf == NULL)
		return 0;
	memcpy(buf, data, size);
	buf[size] = '\0';
	p = buf;
	end = buf + size;
	for (int i = 0; i < 3 && p < end; i++) {
		field[i] = p;
		p += strlen(p) + 1;
	}
	if (size >= 4)
		memcpy(&date, data, size >= sizeof(date) ? sizeof(date) : 4);

	n = names_message_base(date, field[0], field[1], field[2]);
	fuzz_check(n);
	free(n);
	/* The whole input as one folder component, NULs included. */
	n = names_folder(buf, size);
	fuzz_check(n);
	free(n);
	if (field[2] != NULL) {
		time_t t;

		(void)names_parse_date(field[2], &t);
	}
	free(buf);
	return 0;
}
