/* url.h: the SOURCE argument, imaps://USER@HOST[:PORT] and friends. */
#ifndef MAILFS_URL_H
#define MAILFS_URL_H

#include <stdbool.h>

enum url_proto { URL_IMAP, URL_POP3 };

struct url {
	enum url_proto proto;
	bool implicit_tls; /* imaps/pop3s; else STARTTLS/STLS is required */
	char *user;        /* percent-decoded; may contain '@' as %40 */
	char *host;        /* lowercase; without brackets for IPv6 literals */
	int port;          /* default 993/143/995/110 when not given */
	char *scheme;      /* "imaps", "imap", "pop3s" or "pop3" */
};

/* Parse SOURCE.  Returns 0, or -1 with *error_r set to a static or
 * thread-local message fit for the user ("SOURCE must look like
 * imaps://USER@HOST[:PORT]").  A password in the URL (user:pw@) is refused:
 * passwords never come from the command line. */
int url_parse(const char *source, struct url *url_r, const char **error_r);
/* "imaps://alice@host:993": the canonical form, newly allocated. */
char *url_to_string(const struct url *url);
void url_free(struct url *url);

#endif
