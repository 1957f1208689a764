/* mutf7.h: IMAP's modified UTF-7 mailbox names (RFC 3501 5.1.3). */
#ifndef MAILFS_MUTF7_H
#define MAILFS_MUTF7_H

#include <stddef.h>

/* Decode len bytes of modified UTF-7 to a new NUL-terminated UTF-8 string.
 * Returns 0, or -1 when the input is not valid modified UTF-7 (bad base64,
 * unterminated shift, "&-" style rules broken, unpaired surrogates, 8-bit
 * bytes, a shifted run that encodes printable ASCII, ...); *out_r is then
 * NULL.  Memory is bounded by 4 * len + 1. */
int mutf7_decode(const char *in, size_t len, char **out_r);

/* Encode NUL-terminated UTF-8 to a new modified UTF-7 string.  Returns 0 or
 * -1 when the input is not valid UTF-8. */
int mutf7_encode(const char *utf8, char **out_r);

#endif
