/* imap-store.h: the IMAP backend behind store.h.
 *
 * Keeps the cache in step with the server: the folder list (LIST), each
 * folder's messages (SELECT with QRESYNC where offered, which names the
 * expunged and the changed; then UID FETCH of the metadata of new UIDs only;
 * without QRESYNC, UID SEARCH for expunges and CONDSTORE CHANGEDSINCE for
 * flags), and
 * message bodies fetched on demand with BODY.PEEK[] (never setting \Seen),
 * with read-ahead of the next uncached messages of the folder so a `grep
 * -r` costs one round trip per batch, not per file.  A few worker threads
 * each own one connection and take jobs from one queue. */
#ifndef MAILFS_IMAP_STORE_H
#define MAILFS_IMAP_STORE_H

#include <stdbool.h>

#include "cache.h"
#include "store.h"
#include "url.h"

struct imap_store_opts {
	const struct url *url;
	const char *password;  /* copied; the copy is wiped on destroy */
	const char *cafile;
	bool insecure;
	struct cache *cache;   /* not owned */
	const char *cache_dir; /* where the journal lives */
	bool names_uid;        /* names=uid */
	bool ro;               /* EXAMINE, never SELECT */
	bool delete_trash;     /* delete=trash: rm moves to \Trash */
	unsigned poll_seconds; /* 0: 60 */
	unsigned connections;  /* worker connections; 0: 2 */
};

/* Connect, authenticate and list the folders into the cache, on the
 * calling thread (before daemonizing, so failures reach the command).
 * When the server cannot be reached at all and the cache holds a listing,
 * it warns and starts offline instead (SPEC.md: "mounts offline").
 * Returns the store, or NULL with *error_r (one line for the user);
 * *auth_failed_r tells a refused login from other failures. */
struct store *imap_store_new(const struct imap_store_opts *opts,
			     bool *auth_failed_r, const char **error_r);

#endif
