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
 * "pop3.archived.<UIDL>" = "<local id> <size> <header digest>" (and with
 * keep "pop3.consumed.<UIDL>": a message consumed under keep stays on the
 * server for good, even when a later mount has no keep).  The digest is
 * SHA-256 over From, Subject, Date, the first Received and Message-ID, the
 * same from RETR's body as from TOP n 0.  Every sync DELEs a server message
 * whose UIDL is recorded, not kept, with the recorded size and digest (TOP)
 * and whose archived copy is there with that size, which finishes a consume
 * that a crash or a lost connection interrupted between the archive and
 * QUIT.  A consume's own DELE goes only to a message RETR'd in the same
 * session or shown the same by TOP.  A listed UIDL whose message has
 * another size or digest is a new message that inherited the UIDL (RFC
 * 1939 allows it after the first is gone): its record is dropped and it is
 * offered in spool/.  Records (also pop3.badsize.<UIDL>) of UIDLs a
 * listing lacks are dropped.  Kept messages are checked with TOP once per
 * mount (and again when their number or size changes).
 *
 * Records from before identities hold "<local id>" alone: such a UIDL is
 * hidden while its archived copy has the server message's size, and never
 * deleted again (nothing shows it is the message archived); otherwise it
 * is offered.  A server without TOP gets no digests: its consumes DELE in
 * the session that RETR'd the message, and nothing else is deleted.
 *
 * A RETR body whose size is not LIST's is readable but never consumed
 * ("pop3.badsize.<UIDL>"): it stays in spool/ and on the server.
 *
 * With `ro` the server is never changed: no DELE is sent, neither for a
 * read (reading a spool message just reads it; it stays in spool/ and
 * nothing is recorded), nor for an rm, nor by the sync for an earlier
 * consume a crash left unfinished.
 *
 * Fault injection, for tests only: with MAILFS_TEST_CRASH_AT set to
 * after_retr (body cached, not yet archived), after_fsync (archived
 * durably, DELE not sent) or after_dele (DELE sent, no QUIT) in the
 * environment, the process kills itself with SIGKILL at that point of
 * the first consume that reaches it.  MAILFS_TEST_FORGET_SECONDS=N
 * shortens the 24 h a consumed UIDL must be missing from the listings
 * (of 3 sessions at least) before its record is forgotten. */
#ifndef MAILFS_POP3_STORE_H
#define MAILFS_POP3_STORE_H

#include <stdbool.h>

#include "cache.h"
#include "store.h"
#include "url.h"


struct pop3_store_opts {
	const struct url *url;
	const char *password;  /* copied; the copy is wiped on destroy */
	const char *cafile;
	bool insecure;
	struct cache *cache;   /* not owned */
	bool names_uid;        /* names=uid: "N.eml" with N the local id */
	bool keep;             /* -o keep */
	bool ro;               /* -o ro: like keep, and nothing is consumed */
	unsigned poll_seconds; /* 0: 60 */
};

/* Connect, authenticate and list the maildrop (STAT, UIDL, TOP n 0) into
 * the cache on the calling thread, then end the session, so failures reach
 * the command.  Returns the store, or NULL with *error_r (one line);
 * *auth_failed_r tells a refused login from other failures. */
struct store *pop3_store_new(const struct pop3_store_opts *opts,
			     bool *auth_failed_r, const char **error_r);

/* Move a POP3 store an earlier mailfs kept in cache_dir to data_dir (a
 * store is POP3's when it has the archive folder): cache_store_move(),
 * which says what 0 and < 0 mean.  Call before cache_open(data_dir). */
int pop3_store_move(const char *cache_dir, const char *data_dir, const char **error_r);

/* Whether cache_dir holds a POP3 store that pop3_store_move() would move
 * (cache_store_is_old()); for -o ro, which uses it in place. */
bool pop3_store_is_old(const char *cache_dir, const char *data_dir);

#endif
