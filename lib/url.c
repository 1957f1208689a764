/* url.c: the SOURCE argument, imaps://USER@HOST[:PORT] and friends.
 *
 * Only the authority part of a URL is accepted: SCHEME://USER@HOST[:PORT]
 * with at most a trailing '/'.  The user is percent-decoded; because mail
 * logins are so often addresses, a literal '@' in the user is allowed too,
 * the last '@' being the separator (a host never contains '@').  A password
 * (user:pw@) is refused outright: it would sit in `ps` output and shell
 * history.  Error messages are static strings and never echo the SOURCE,
 * since a refused SOURCE may be exactly the one holding a password. */
#include "url.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define URL_FORM "imaps://USER@HOST[:PORT]"

static const struct url_scheme {
	const char *name;
	enum url_proto proto;
	bool implicit_tls;
	int default_port;
} url_schemes[] = {
	{ "imaps", URL_IMAP, true, 993 },
	{ "imap", URL_IMAP, false, 143 },
	{ "pop3s", URL_POP3, true, 995 },
	{ "pop3", URL_POP3, false, 110 },
};

static int url_hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Decodes [s, s+len) into a new string.  Control bytes (also as %XX) are
 * refused: a user name ends up in IMAP commands and in file names. */
static int url_decode_user(const char *s, size_t len, char **user_r,
			   const char **error_r)
{
	char *out = malloc(len + 1);
	size_t o = 0;

	if (out == NULL) {
		*error_r = "out of memory";
		return -1;
	}
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '%') {
			if (len - i < 3 || url_hexval(s[i + 1]) < 0 ||
			    url_hexval(s[i + 2]) < 0) {
				*error_r = "bad %-escape in the user name of "
					   "SOURCE: write '@' as %40, as in "
					   URL_FORM;
				goto fail;
			}
			c = (unsigned char)(url_hexval(s[i + 1]) * 16 +
					    url_hexval(s[i + 2]));
			i += 2;
		}
		if (c < 0x20 || c == 0x7f) {
			*error_r = "control character in the user name of "
				   "SOURCE: it must look like " URL_FORM;
			goto fail;
		}
		out[o++] = (char)c;
	}
	out[o] = '\0';
	*user_r = out;
	return 0;
fail:
	free(out);
	return -1;
}

/* A DNS name or IPv4 address: letters, digits, '-', '.', '_' (the last
 * one is not legal DNS but appears in /etc/hosts and docker names). */
static bool url_host_char_ok(char c)
{
	return isalnum((unsigned char)c) || c == '-' || c == '.' || c == '_';
}

static int url_parse_port(const char *s, size_t len, int *port_r,
			  const char **error_r)
{
	long port = 0;

	if (len == 0)
		goto bad;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			goto bad;
		port = port * 10 + (s[i] - '0');
		if (port > 65535)
			goto bad;
	}
	if (port == 0)
		goto bad;
	*port_r = (int)port;
	return 0;
bad:
	*error_r = "bad port in SOURCE: it must be a number from 1 to 65535, "
		   "as in " URL_FORM;
	return -1;
}

int url_parse(const char *source, struct url *url_r, const char **error_r)
{
	const struct url_scheme *scheme = NULL;
	const char *sep, *auth, *end, *at, *host, *host_end, *port_s = NULL;
	struct url url = { 0 };
	size_t scheme_len;

	memset(url_r, 0, sizeof(*url_r));
	if (source == NULL || (sep = strstr(source, "://")) == NULL) {
		*error_r = "SOURCE must look like " URL_FORM;
		return -1;
	}
	scheme_len = (size_t)(sep - source);
	for (size_t i = 0; i < sizeof(url_schemes) / sizeof(url_schemes[0]);
	     i++) {
		/* Schemes are case-insensitive (RFC 3986, 3.1). */
		if (strlen(url_schemes[i].name) == scheme_len &&
		    strncasecmp(source, url_schemes[i].name, scheme_len) == 0)
			scheme = &url_schemes[i];
	}
	if (scheme == NULL) {
		*error_r = "unknown protocol in SOURCE: use imaps://, imap://, "
			   "pop3s:// or pop3://, as in " URL_FORM;
		return -1;
	}

	auth = sep + 3;
	/* Checked before the path: "bob:pa/ss@host" is a password with a
	 * '/' in it, and saying "path" would mislead. */
	if (strchr(auth, '@') != NULL &&
	    strcspn(auth, ":") < strcspn(auth, "@"))
		goto password;
	end = auth + strcspn(auth, "/?#");
	if (*end != '\0' && !(end[0] == '/' && end[1] == '\0')) {
		*error_r = "SOURCE must not have a path or query: it must look "
			   "like " URL_FORM;
		return -1;
	}

	at = NULL;
	for (const char *p = auth; p < end; p++) {
		if (*p == '@')
			at = p;
	}
	if (at == NULL || at == auth) {
		*error_r = "no user name in SOURCE: it must look like " URL_FORM;
		return -1;
	}
	/* Any ':' left of the separator is the user:password form; a ':'
	 * inside a user name must be written %3A. */
	if (memchr(auth, ':', (size_t)(at - auth)) != NULL)
		goto password;

	host = at + 1;
	if (*host == '[') {
		const char *close = memchr(host, ']', (size_t)(end - host));
		char addr[INET6_ADDRSTRLEN];
		unsigned char bin[16];
		size_t alen;

		if (close == NULL) {
			*error_r = "bad IPv6 address in SOURCE: write it in "
				   "brackets, as in imaps://USER@[::1]:993";
			return -1;
		}
		alen = (size_t)(close - host - 1);
		if (alen == 0) {
			*error_r = "no host in SOURCE: it must look like "
				   URL_FORM;
			return -1;
		}
		if (alen >= sizeof(addr))
			goto bad_ipv6;
		memcpy(addr, host + 1, alen);
		addr[alen] = '\0';
		if (inet_pton(AF_INET6, addr, bin) != 1)
			goto bad_ipv6;
		host_end = close + 1;
		if (host_end < end && *host_end != ':')
			goto bad_ipv6;
		if (host_end < end)
			port_s = host_end + 1;
		url.host = strndup(host + 1, alen);
	} else {
		host_end = memchr(host, ':', (size_t)(end - host));
		if (host_end != NULL &&
		    memchr(host_end + 1, ':', (size_t)(end - host_end - 1)))
			goto bad_ipv6; /* an IPv6 address without brackets */
		if (host_end == NULL)
			host_end = end;
		else
			port_s = host_end + 1;
		if (host_end == host) {
			*error_r = "no host in SOURCE: it must look like "
				   URL_FORM;
			return -1;
		}
		for (const char *p = host; p < host_end; p++) {
			if (!url_host_char_ok(*p)) {
				*error_r = "bad host name in SOURCE: it must "
					   "look like " URL_FORM;
				return -1;
			}
		}
		url.host = strndup(host, (size_t)(host_end - host));
		/* Host names are case-insensitive; one spelling keeps the
		 * cache directory USER@HOST:PORT the same. */
		for (char *p = url.host; p != NULL && *p != '\0'; p++)
			*p = (char)tolower((unsigned char)*p);
	}
	if (url.host == NULL)
		goto nomem;

	url.port = scheme->default_port;
	if (port_s != NULL &&
	    url_parse_port(port_s, (size_t)(end - port_s), &url.port,
			   error_r) < 0)
		goto fail;

	if (url_decode_user(auth, (size_t)(at - auth), &url.user, error_r) < 0)
		goto fail;
	if (url.user[0] == '\0') {
		*error_r = "no user name in SOURCE: it must look like " URL_FORM;
		goto fail;
	}
	url.scheme = strdup(scheme->name);
	if (url.scheme == NULL)
		goto nomem;
	url.proto = scheme->proto;
	url.implicit_tls = scheme->implicit_tls;
	*url_r = url;
	return 0;

password:
	*error_r = "passwords are not accepted in SOURCE; use -o "
		   "password_file=FILE, -o password_command=CMD or "
		   "`mailfs password set SOURCE`";
	return -1;
bad_ipv6:
	*error_r = "bad IPv6 address in SOURCE: write it in brackets, as in "
		   "imaps://USER@[::1]:993";
	goto fail;
nomem:
	*error_r = "out of memory";
fail:
	url_free(&url);
	return -1;
}

/* Bytes that would change the meaning of the URL, plus '%' itself so that
 * decoding the result gives the same user back. */
static bool url_user_needs_escape(unsigned char c)
{
	return c <= 0x20 || c == 0x7f || strchr("%@:/?#[]", c) != NULL;
}

char *url_to_string(const struct url *url)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t ulen = strlen(url->user);
	char *user = malloc(ulen * 3 + 1);
	char *result = NULL;
	size_t o = 0;
	bool v6 = strchr(url->host, ':') != NULL;

	if (user == NULL)
		return NULL;
	for (size_t i = 0; i < ulen; i++) {
		unsigned char c = (unsigned char)url->user[i];

		if (url_user_needs_escape(c)) {
			user[o++] = '%';
			user[o++] = hex[c >> 4];
			user[o++] = hex[c & 0xf];
		} else {
			user[o++] = (char)c;
		}
	}
	user[o] = '\0';
	if (asprintf(&result, "%s://%s@%s%s%s:%d", url->scheme, user,
		     v6 ? "[" : "", url->host, v6 ? "]" : "", url->port) < 0)
		result = NULL;
	free(user);
	return result;
}

void url_free(struct url *url)
{
	if (url == NULL)
		return;
	free(url->user);
	free(url->host);
	free(url->scheme);
	url->user = NULL;
	url->host = NULL;
	url->scheme = NULL;
}
