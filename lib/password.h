/* password.h: where the account password comes from.
 *
 * SPEC.md's order: password_command, password_file, the Secret Service
 * keyring (libsecret, schema "org.mailfs.Password" with attributes protocol,
 * user, host, port), and last a prompt without echo when stdin is a terminal.
 * Passwords are returned in memory the caller must wipe with
 * password_free(); nothing here logs a password or a command's output. */
#ifndef MAILFS_PASSWORD_H
#define MAILFS_PASSWORD_H

#include "url.h"

struct password_opts {
	const char *command; /* password_command=, run through /bin/sh */
	const char *file;    /* password_file=; refused if group/world readable */
	int command_timeout_ms; /* bound on password_command; 0: 30 s */
};

/* Find the password for url.  Returns 0 with *password_r (caller frees with
 * password_free), or -1 with *error_r: a one-line message naming what failed
 * and what to do, valid until the next call into password.c from this
 * thread.  A keyring that is not running is skipped; the final "no
 * password" error then says so.  Must run before daemonizing: libsecret's
 * D-Bus thread does not survive fork(). */
int password_get(const struct url *url, const struct password_opts *opts,
		 char **password_r, const char **error_r);

/* `mailfs password set SOURCE`: prompt twice without echo, store in the
 * keyring.  `clear`: remove it.  Return 0 or -1 with *error_r. */
int password_keyring_set(const struct url *url, const char **error_r);
int password_keyring_clear(const struct url *url, const char **error_r);

/* Wipe (OPENSSL_cleanse) and free. NULL is fine. */
void password_free(char *password);

#endif
