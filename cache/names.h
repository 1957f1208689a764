/* names.h: file and directory names shown in the mount.
 *
 * Pure functions over strings, built on GMime's RFC 2047 decoding.  Every
 * name they return is valid UTF-8, has no '/', NUL or control character
 * (C0, DEL, C1), does not start with '.', is never "" , "." or "..", and is
 * cut at a UTF-8 character boundary so that a collision suffix and ".eml"
 * still fit in 255 bytes. */
#ifndef MAILFS_NAMES_H
#define MAILFS_NAMES_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* Longest base a names_* function returns, in bytes.  255 minus room for
 * " (4294967295)" and ".eml". */
#define NAMES_BASE_MAX 236

/* The readable base name (no ".eml") of a message:
 *   "YYYY-MM-DD HH.MM Sender - Subject"
 * date: the message's date in seconds since the epoch (the Date header, or
 * INTERNALDATE when it has none), shown in local time.
 * from_name: the sender's display name as the server sent it (may be RFC
 * 2047 encoded, NULL or empty); from_addr: "local@domain" used when there
 * is no display name (may be NULL).  Neither: "unknown".
 * subject: raw (RFC 2047 encoded words allowed), NULL or empty: "(no
 * subject)".
 * Decoding: RFC 2047 words in any charset GMime knows; invalid UTF-8 bytes
 * become U+FFFD; control characters and '/' become '_' ; runs of
 * whitespace (including folded header line breaks) become one space;
 * leading/trailing spaces are trimmed.  Returns a new string; never NULL. */
char *names_message_base(time_t date, const char *from_name,
			 const char *from_addr, const char *subject);

/* A directory name from a decoded (UTF-8, maybe invalid) mailbox name
 * component: same sanitizing ("..", "." and "" become "_..", "_." and "_"
 * style safe names; a leading '.' becomes '_').  Returns a new string. */
char *names_folder(const char *component, size_t len);

/* Parse an RFC 5322 Date header value into seconds since the epoch (GMime's
 * parser).  Returns 0 with *t_r, or -1 when it cannot be parsed. */
int names_parse_date(const char *value, time_t *t_r);

#endif
