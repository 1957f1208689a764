/* test-log.c: control bytes from a server never reach stderr raw (AUDIT
 * D2): log_escape() itself, and what log_warn() and log_trace() write. */
#include "log.h"

#include "check.h"

#include <stdlib.h>
#include <unistd.h>

static void escapes(void)
{
	char buf[128];

	CHECK(log_escape(buf, sizeof(buf), "plain text\tok", 13) == 13);
	CHECK_STR(buf, "plain text\tok");
	log_escape(buf, sizeof(buf), "\x1b[31mred\x07", 9);
	CHECK_STR(buf, "\\x1b[31mred\\x07");
	log_escape(buf, sizeof(buf), "a\r\nb\x7f", 5);
	CHECK_STR(buf, "a\\x0d\\x0ab\\x7f");
	/* C1 CSI as UTF-8 (U+009B) goes; other UTF-8 stays. */
	log_escape(buf, sizeof(buf), "\xc2\x9b" "2J caf\xc3\xa9 \xc2\xa0", 13);
	CHECK_STR(buf, "\\xc2\\x9b2J caf\xc3\xa9 \xc2\xa0");
	/* Cut to fit, never half an escape, always terminated. */
	CHECK(log_escape(buf, 6, "ab\x1b" "cd", 5) == 2);
	CHECK_STR(buf, "ab");
	CHECK(log_escape(buf, 7, "ab\x1b" "cd", 5) == 6);
	CHECK_STR(buf, "ab\\x1b");
}

/* What the log functions write to fd 2. */
static char *captured(void (*emit)(void))
{
	char path[] = "/tmp/mailfs-test-log-XXXXXX";
	int fd = mkstemp(path), saved = dup(2);
	static char out[16384];
	ssize_t n;

	if (fd < 0 || saved < 0)
		return NULL;
	unlink(path);
	dup2(fd, 2);
	emit();
	dup2(saved, 2);
	close(saved);
	n = pread(fd, out, sizeof(out) - 1, 0);
	close(fd);
	out[n > 0 ? n : 0] = '\0';
	return out;
}

static void emit_warn(void)
{
	log_warn("append refused by the server: %s", "\x1b[31mRED\x1b[0m bell\x07");
}

static void emit_long_warn(void)
{
	char text[3000];

	memset(text, '\x1b', sizeof(text) - 1);
	text[sizeof(text) - 1] = '\0';
	log_warn("%s", text);
}

static void emit_trace(void)
{
	log_trace("imap1", '<', "* OK \x1b]0;title\x07", 15);
}

static bool has_raw_control(const char *s)
{
	for (; *s; s++)
		if (((unsigned char)*s < 0x20 && *s != '\n' && *s != '\t') || *s == 0x7f)
			return true;
	return false;
}

int main(void)
{
	char *out;

	escapes();
	log_init(true);
	out = captured(emit_warn);
	CHECK(out && !has_raw_control(out));
	CHECK_STR(out, "mailfs: warning: append refused by the server: "
		  "\\x1b[31mRED\\x1b[0m bell\\x07\n");
	out = captured(emit_long_warn);
	CHECK(out && !has_raw_control(out) && strlen(out) > 4 * 2999);
	out = captured(emit_trace);
	CHECK_STR(out, "mailfs: [imap1] < * OK \\x1b]0;title\\x07\n");
	return check_exit();
}
