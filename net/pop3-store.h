/* pop3-store.h: the POP3 backend behind store.h, a read-once spool.
 *
 * The tree it keeps in the cache: two folders under the root, "spool"
 * (the messages waiting on the server, named from TOP n 0) and "archive"
 * (local copies of consumed messages, pinned: never evicted).  Reading a
 * spool message to its end consumes it: the body is made durable in the
 * archive (fsync of file and directory) before DELE is sent and the
 * session commits with QUIT; with `keep` nothing is deleted and the
 * consumed UIDLs are recorded durably instead.  The archive deduplicates
 * by UIDL, so a crash at any point never archives a message twice.
 * Sessions are short (POP holds the maildrop lock): one worker thread runs
 * them, opening one when a job comes (a poll, a fetch, a consume, an rm)
 * and ending it with QUIT when no job has come for a moment, or at once
 * when an rm waits for its DELE to be committed.
 *
 * Local UIDs: each UIDL gets a local id (a counter in the cache's kv,
 * "pop3.next_id"; the mapping "pop3.uidl.<UIDL>"), which is the message's
 * UID in spool/ and then in archive/ (user.mail.uid stays).  The
 * message row's message_id holds the UIDL.  Consumed UIDLs are recorded as
 * "pop3.archived.<UIDL>" (and with keep "pop3.consumed.<UIDL>": a message
 * consumed under keep stays on the server for good, even when a later
 * mount has no keep).  Every sync DELEs a server message whose UIDL is
 * archived but not kept, which finishes a consume that a crash or a lost
 * connection interrupted between the archive and QUIT.
 *
 * Fault injection, for tests only: with MAILFS_TEST_CRASH_AT set to
 * after_retr (body cached, not yet archived), after_fsync (archived
 * durably, DELE not sent) or after_dele (DELE sent, no QUIT) in the
 * environment, the process kills itself with SIGKILL at that point of
 * the first consume that reaches it. */
#ifndef MAILFS_POP3_STORE_H
#define MAILFS_POP3_STORE_H

#include <stdbool.h>

#include "cache.h"
#include "store.h"
#include "url.h"

/* The archive folder's server name: a store that has it is POP3's (and
 * is moved from an earlier version's cache directory, see main.c). */
#define POP3_ARCHIVE_SERVER_NAME "\x01pop3:archive"

struct pop3_store_opts {
	const struct url *url;
	const char *password;  /* copied; the copy is wiped on destroy */
	const char *cafile;
	bool insecure;
	struct cache *cache;   /* not owned */
	bool names_uid;        /* names=uid: "N.eml" with N the local id */
	bool keep;             /* -o keep */
	unsigned poll_seconds; /* 0: 60 */
};

/* Connect, authenticate and list the maildrop (STAT, UIDL, TOP n 0) into
 * the cache on the calling thread, then end the session, so failures reach
 * the command.  Returns the store, or NULL with *error_r (one line);
 * *auth_failed_r tells a refused login from other failures. */
struct store *pop3_store_new(const struct pop3_store_opts *opts,
			     bool *auth_failed_r, const char **error_r);

#endif
