/* test-url.c: url_parse() and url_to_string() against tables of good and
 * bad SOURCE arguments, and round trips through the canonical form. */
#include "url.h"

#include "check.h"

#include <stdlib.h>

static const struct good_case {
	const char *source;
	const char *scheme;
	enum url_proto proto;
	bool implicit_tls;
	const char *user;
	const char *host;
	int port;
	const char *canonical;
} good_cases[] = {
	{ "imaps://alice@mail.example.com", "imaps", URL_IMAP, true, "alice",
	  "mail.example.com", 993, "imaps://alice@mail.example.com:993" },
	{ "imap://alice@mail.example.com", "imap", URL_IMAP, false, "alice",
	  "mail.example.com", 143, "imap://alice@mail.example.com:143" },
	{ "pop3s://bob@pop.example.com", "pop3s", URL_POP3, true, "bob",
	  "pop.example.com", 995, "pop3s://bob@pop.example.com:995" },
	{ "pop3://bob@pop.example.com", "pop3", URL_POP3, false, "bob",
	  "pop.example.com", 110, "pop3://bob@pop.example.com:110" },
	{ "imaps://alice@127.0.0.1:10993", "imaps", URL_IMAP, true, "alice",
	  "127.0.0.1", 10993, "imaps://alice@127.0.0.1:10993" },
	{ "imap://alice@host:1", "imap", URL_IMAP, false, "alice", "host", 1,
	  "imap://alice@host:1" },
	{ "pop3://u@host:65535", "pop3", URL_POP3, false, "u", "host", 65535,
	  "pop3://u@host:65535" },
	{ "pop3s://u@host:0995", "pop3s", URL_POP3, true, "u", "host", 995,
	  "pop3s://u@host:995" },
	{ "imaps://alice@[::1]", "imaps", URL_IMAP, true, "alice", "::1", 993,
	  "imaps://alice@[::1]:993" },
	{ "imaps://alice@[2001:db8::5]:9993", "imaps", URL_IMAP, true, "alice",
	  "2001:db8::5", 9993, "imaps://alice@[2001:db8::5]:9993" },
	{ "imaps://alice%40example.com@mail.example.com", "imaps", URL_IMAP,
	  true, "alice@example.com", "mail.example.com", 993,
	  "imaps://alice%40example.com@mail.example.com:993" },
	{ "imaps://alice@example.com@mail.example.com:993", "imaps", URL_IMAP,
	  true, "alice@example.com", "mail.example.com", 993,
	  "imaps://alice%40example.com@mail.example.com:993" },
	{ "imaps://alice@host/", "imaps", URL_IMAP, true, "alice", "host",
	  993, "imaps://alice@host:993" },
	{ "imaps://alice@host:993/", "imaps", URL_IMAP, true, "alice", "host",
	  993, "imaps://alice@host:993" },
	{ "IMAPS://alice@Mail.Example.COM", "imaps", URL_IMAP, true, "alice",
	  "mail.example.com", 993, "imaps://alice@mail.example.com:993" },
	{ "imaps://dom%5Cuser%3Ax%2Fy%25z@host", "imaps", URL_IMAP, true,
	  "dom\\user:x/y%z", "host", 993,
	  "imaps://dom\\user%3Ax%2Fy%25z@host:993" },
	{ "imaps://J%C3%BCrgen@host", "imaps", URL_IMAP, true,
	  "J\xc3\xbcrgen", "host", 993, "imaps://J\xc3\xbcrgen@host:993" },
};

#define FORM "imaps://USER@HOST[:PORT]"
#define MSG_FORM "SOURCE must look like " FORM
#define MSG_SCHEME "unknown protocol in SOURCE: use imaps://, imap://, " \
		   "pop3s:// or pop3://, as in " FORM
#define MSG_USER "no user name in SOURCE: it must look like " FORM
#define MSG_HOST "no host in SOURCE: it must look like " FORM
#define MSG_PORT "bad port in SOURCE: it must be a number from 1 to 65535, " \
		 "as in " FORM
#define MSG_PASSWORD "passwords are not accepted in SOURCE; use -o " \
		     "password_file=FILE, -o password_command=CMD or " \
		     "`mailfs password set SOURCE`"
#define MSG_PATH "SOURCE must not have a path or query: it must look like " \
		 FORM
#define MSG_IPV6 "bad IPv6 address in SOURCE: write it in brackets, as in " \
		 "imaps://USER@[::1]:993"
#define MSG_ESCAPE "bad %-escape in the user name of SOURCE: write '@' as " \
		   "%40, as in " FORM
#define MSG_CTRL "control character in the user name of SOURCE: it must " \
		 "look like " FORM
#define MSG_HOSTCHAR "bad host name in SOURCE: it must look like " FORM

static const struct bad_case {
	const char *source;
	const char *error;
} bad_cases[] = {
	{ "", MSG_FORM },
	{ "alice@host", MSG_FORM },
	{ "imaps:/alice@host", MSG_FORM },
	{ "http://alice@host", MSG_SCHEME },
	{ "imapss://alice@host", MSG_SCHEME },
	{ "://alice@host", MSG_SCHEME },
	{ "imaps://host", MSG_USER },
	{ "imaps://host:993", MSG_USER },
	{ "imaps://@host", MSG_USER },
	{ "imaps://user@", MSG_HOST },
	{ "imaps://user@/", MSG_HOST },
	{ "imaps://user@:993", MSG_HOST },
	{ "imaps://user@[]:993", MSG_HOST },
	{ "imaps://user@host:0", MSG_PORT },
	{ "imaps://user@host:70000", MSG_PORT },
	{ "imaps://user@host:65536", MSG_PORT },
	{ "imaps://user@host:99999999999999999999", MSG_PORT },
	{ "imaps://user@host:", MSG_PORT },
	{ "imaps://user@host:-1", MSG_PORT },
	{ "imaps://user@host:+993", MSG_PORT },
	{ "imaps://user@host:99x", MSG_PORT },
	{ "imaps://user:pw@host", MSG_PASSWORD },
	{ "imaps://user:@host", MSG_PASSWORD },
	{ "imaps://user:pa/ss@host", MSG_PASSWORD },
	{ "imaps://user:pa@ss@host", MSG_PASSWORD },
	{ "imaps://user@host/INBOX", MSG_PATH },
	{ "imaps://user@host?x=1", MSG_PATH },
	{ "imaps://user@host#frag", MSG_PATH },
	{ "imaps://user@host//", MSG_PATH },
	{ "imaps://user@[::1", MSG_IPV6 },
	{ "imaps://user@[::1]x", MSG_IPV6 },
	{ "imaps://user@[not-v6]", MSG_IPV6 },
	{ "imaps://user@::1", MSG_IPV6 },
	{ "imaps://user%4@host", MSG_ESCAPE },
	{ "imaps://user%@host", MSG_ESCAPE },
	{ "imaps://user%zz@host", MSG_ESCAPE },
	{ "imaps://us%00er@host", MSG_CTRL },
	{ "imaps://us%0Aer@host", MSG_CTRL },
	{ "imaps://user@ho st", MSG_HOSTCHAR },
	{ "imaps://user@ho%41st", MSG_HOSTCHAR },
};

static void test_good(void)
{
	for (size_t i = 0; i < sizeof(good_cases) / sizeof(good_cases[0]);
	     i++) {
		const struct good_case *c = &good_cases[i];
		struct url url;
		const char *error = NULL;
		char *s;

		if (url_parse(c->source, &url, &error) < 0) {
			CHECK(!"good URL refused");
			fprintf(stderr, "  %s: %s\n", c->source, error);
			continue;
		}
		CHECK_STR(url.scheme, c->scheme);
		CHECK(url.proto == c->proto);
		CHECK(url.implicit_tls == c->implicit_tls);
		CHECK_STR(url.user, c->user);
		CHECK_STR(url.host, c->host);
		CHECK(url.port == c->port);
		s = url_to_string(&url);
		CHECK_STR(s, c->canonical);
		url_free(&url);

		/* The canonical form parses back to the same thing. */
		if (s != NULL) {
			char *again;

			CHECK(url_parse(s, &url, &error) == 0);
			again = url_to_string(&url);
			CHECK_STR(again, s);
			CHECK_STR(url.user, c->user);
			CHECK_STR(url.host, c->host);
			CHECK(url.port == c->port);
			free(again);
			url_free(&url);
		}
		free(s);
	}
}

static void test_bad(void)
{
	for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]);
	     i++) {
		const struct bad_case *c = &bad_cases[i];
		struct url url;
		const char *error = NULL;
		int ret = url_parse(c->source, &url, &error);

		CHECK(ret == -1);
		if (ret == 0) {
			fprintf(stderr, "  accepted: %s\n", c->source);
			url_free(&url);
			continue;
		}
		CHECK_STR(error, c->error);
		/* A refused URL leaves nothing to free. */
		CHECK(url.user == NULL && url.host == NULL &&
		      url.scheme == NULL);
		/* Nothing of the SOURCE is echoed: it may hold a password. */
		CHECK(error == NULL || strstr(error, "pw") == NULL);
	}

	{
		struct url url;
		const char *error = NULL;

		CHECK(url_parse(NULL, &url, &error) == -1);
		CHECK_STR(error, MSG_FORM);
	}
}

static void test_free(void)
{
	struct url url = { 0 };

	/* Freeing twice, or an untouched struct, is harmless. */
	url_free(&url);
	url_free(NULL);
	CHECK(url_parse("imap://a@b", &url, &(const char *){ NULL }) == 0);
	url_free(&url);
	url_free(&url);
	CHECK(url.user == NULL);
}

int main(void)
{
	test_good();
	test_bad();
	test_free();
	return check_exit();
}
