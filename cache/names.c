/* names.c: file and directory names shown in the mount.
 *
 * Headers are decoded by GMime (RFC 2047, any charset iconv knows), then
 * everything goes through one sanitizer, because decoding is exactly what
 * can turn harmless ASCII into '/', NUL, control characters or invalid
 * UTF-8.  The sanitizer works on code points of valid UTF-8:
 *   - whitespace (ASCII space, TAB, LF, VT, FF, CR and the Unicode space,
 *     line and paragraph separators) is collapsed into one ' ' per run and
 *     trimmed at both ends;
 *   - '/', C0 controls, DEL and C1 controls (U+0080-U+009F), bidi
 *     overrides/isolates (U+202A-U+202E, U+2066-U+2069) and U+FEFF
 *     become '_';
 *   - everything else is kept as is.
 * A whole name is then cut to NAMES_BASE_MAX bytes at a character
 * boundary, trailing spaces trimmed again, "" becomes "_", "." and ".."
 * get a '_' in front, and any other leading '.' is replaced with '_'.
 * In a message name the sender is cut to NAMES_SENDER_MAX bytes first, so
 * the subject is never pushed out by a long display name, and a date
 * outside years 0-9999 shows as "0000-00-00 00.00".
 *
 * Returned strings come from GLib's allocator, which is malloc (GLib >=
 * 2.46), so callers may release them with free() or g_free(). */
#include "names.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <gmime/gmime.h>

/* Header values longer than this are cut before decoding: the name keeps
 * at most NAMES_BASE_MAX bytes, so the rest only costs time and memory. */
#define NAMES_INPUT_MAX 16384

/* The sender is cut to this so that a huge display name still leaves room
 * for the subject, which is what tells messages apart. */
#define NAMES_SENDER_MAX 64

static gsize names_gmime_ready;

/* g_mime_init() keeps a plain counter; mailfs calls us from several FUSE
 * and engine threads at once. */
static void names_init(void)
{
	if (g_once_init_enter(&names_gmime_ready)) {
		g_mime_init();
		g_once_init_leave(&names_gmime_ready, 1);
	}
}

static bool names_is_space(gunichar c)
{
	/* g_unichar_isspace() has no VT. */
	return c == '\v' || g_unichar_isspace(c);
}

static bool names_is_control(gunichar c)
{
	/* Besides C0, DEL and C1: the bidirectional overrides, embeddings
	 * and isolates and the BOM, with which a subject could make a file
	 * manager show "invoice.pdf" for a name that ends in ".eml". */
	return c < 0x20 || (c >= 0x7f && c <= 0x9f) ||
	       (c >= 0x202a && c <= 0x202e) || (c >= 0x2066 && c <= 0x2069) ||
	       c == 0xfeff;
}

/* Append the sanitized form of valid UTF-8 text to out. */
static void names_sanitize_into(GString *out, const char *text)
{
	size_t start = out->len;
	bool space = false;

	for (const char *p = text; *p != '\0'; p = g_utf8_next_char(p)) {
		gunichar c = g_utf8_get_char(p);

		if (names_is_space(c)) {
			space = out->len > start;
			continue;
		}
		if (space)
			g_string_append_c(out, ' ');
		space = false;
		if (c == '/' || names_is_control(c))
			g_string_append_c(out, '_');
		else
			g_string_append_len(out, p,
					    g_utf8_next_char(p) - p);
	}
}

/* Cut to max bytes without splitting a character, then trim the spaces
 * the cut may have exposed. */
static void names_cut(GString *s, size_t max)
{
	size_t len = s->len;

	if (len > max) {
		len = max;
		while (len > 0 && ((unsigned char)s->str[len] & 0xc0) == 0x80)
			len--;
	}
	while (len > 0 && s->str[len - 1] == ' ')
		len--;
	g_string_truncate(s, len);
}

/* The last step of every name: length, emptiness and dot rules. */
static char *names_finish(GString *s)
{
	names_cut(s, NAMES_BASE_MAX);
	if (s->len == 0)
		g_string_append_c(s, '_');
	else if (strcmp(s->str, ".") == 0 || strcmp(s->str, "..") == 0)
		g_string_prepend_c(s, '_');
	else if (s->str[0] == '.')
		s->str[0] = '_';
	return g_string_free(s, FALSE);
}

/* Valid UTF-8 copy of at most NAMES_INPUT_MAX bytes of raw text.  NUL
 * bytes inside len (folder names carry a length) are control characters
 * like any other, so they become '_' rather than U+FFFD. */
static char *names_valid_copy(const char *raw, size_t len)
{
	char *tmp, *valid;

	if (len > NAMES_INPUT_MAX)
		len = NAMES_INPUT_MAX;
	tmp = g_malloc(len + 1);
	memcpy(tmp, raw, len);
	tmp[len] = '\0';
	for (size_t i = 0; i < len; i++) {
		if (tmp[i] == '\0')
			tmp[i] = '_';
	}
	valid = g_utf8_make_valid(tmp, (gssize)len);
	g_free(tmp);
	return valid;
}

/* RFC 2047 decode a raw header value into sanitized text appended to out.
 * The raw value is made valid before decoding so that 8-bit bytes become
 * U+FFFD instead of whatever GMime's locale-dependent fallback charset
 * would make of them; the decoded text is made valid again because an
 * encoded word may carry anything. */
static void names_decode_into(GString *out, const char *raw, bool phrase)
{
	char *valid, *decoded, *clean;

	names_init();
	valid = names_valid_copy(raw, strnlen(raw, NAMES_INPUT_MAX));
	if (phrase)
		decoded = g_mime_utils_header_decode_phrase(NULL, valid);
	else
		decoded = g_mime_utils_header_decode_text(NULL, valid);
	g_free(valid);
	if (decoded == NULL)
		return;
	clean = g_utf8_make_valid(decoded, -1);
	g_free(decoded);
	names_sanitize_into(out, clean);
	g_free(clean);
}

static void names_append_sender(GString *s, const char *from_name,
				const char *from_addr)
{
	GString *sender = g_string_new(NULL);

	if (from_name != NULL)
		names_decode_into(sender, from_name, true);
	if (sender->len == 0 && from_addr != NULL) {
		/* Addresses are not RFC 2047 encoded, but SMTPUTF8 ones
		 * may carry raw 8-bit bytes. */
		char *valid = names_valid_copy(
			from_addr, strnlen(from_addr, NAMES_INPUT_MAX));

		names_sanitize_into(sender, valid);
		g_free(valid);
	}
	if (sender->len == 0)
		g_string_append(sender, "unknown");
	names_cut(sender, NAMES_SENDER_MAX);
	g_string_append_len(s, sender->str, (gssize)sender->len);
	g_string_free(sender, TRUE);
}

char *names_message_base(time_t date, const char *from_name,
			 const char *from_addr, const char *subject)
{
	GString *s = g_string_sized_new(NAMES_BASE_MAX + 64);
	char prefix[64];
	struct tm tm;
	size_t mark;

	/* A date outside years 0-9999 is garbage from the server, not a
	 * reason to fail the listing; it gets a fixed placeholder so that
	 * every name keeps the sortable "YYYY-MM-DD HH.MM" shape. */
	if (localtime_r(&date, &tm) != NULL && tm.tm_year >= -1900 &&
	    tm.tm_year <= 9999 - 1900)
		snprintf(prefix, sizeof(prefix), "%04d-%02d-%02d %02d.%02d",
			 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
			 tm.tm_hour, tm.tm_min);
	else
		strcpy(prefix, "0000-00-00 00.00");
	g_string_append(s, prefix);
	g_string_append_c(s, ' ');
	names_append_sender(s, from_name, from_addr);
	g_string_append(s, " - ");
	mark = s->len;
	if (subject != NULL)
		names_decode_into(s, subject, false);
	if (s->len == mark)
		g_string_append(s, "(no subject)");
	return names_finish(s);
}

char *names_folder(const char *component, size_t len)
{
	GString *s = g_string_new(NULL);

	if (component != NULL) {
		char *valid = names_valid_copy(component, len);

		names_sanitize_into(s, valid);
		g_free(valid);
	}
	return names_finish(s);
}

int names_parse_date(const char *value, time_t *t_r)
{
	GDateTime *dt;
	gint64 t;

	if (value == NULL)
		return -1;
	names_init();
	dt = g_mime_utils_header_decode_date(value);
	if (dt == NULL)
		return -1;
	t = g_date_time_to_unix(dt);
	g_date_time_unref(dt);
	if ((gint64)(time_t)t != t)
		return -1;
	*t_r = (time_t)t;
	return 0;
}
