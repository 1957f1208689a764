/* store.h: the backend interface between fs/ and a mail protocol engine.
 *
 * fs/ serves everything it can straight from the cache (cache.h): folder
 * and message listings, attributes, cached bodies.  It comes here only for
 * what the cache cannot answer yet: "is this folder's listing current?"
 * and "bring me this body".  Those calls never block: they take a callback
 * that runs later on an engine thread (or at once, on the caller's thread,
 * when the answer is already known), which is how fs/ parks a FUSE request
 * while the server answers.
 *
 * Server-side changes reach fs/ through the events it registers (to
 * invalidate the kernel's caches); fs/ never sees an IMAP or POP3 struct.
 * A backend says what it can do with a capability mask, so fs/ asks
 * "can it?" rather than "which one is it?". */
#ifndef MAILFS_STORE_H
#define MAILFS_STORE_H

#include <stdbool.h>
#include <stdint.h>

#define STORE_CAP_FOLDERS 0x01u /* a server-side folder hierarchy */
#define STORE_CAP_FLAGS   0x02u /* per-message flags */
#define STORE_CAP_WRITE   0x04u /* changes go to the server */
#define STORE_CAP_PUSH    0x08u /* server changes arrive without polling */
#define STORE_CAP_READ_ONCE 0x10u /* a message read to its end is consumed
				     (POP3): fs/ reads around the page cache
				     so that it sees the reader reach EOF */

/* Why something failed; fs/ turns it into an errno in one place. */
enum store_error {
	STORE_OK = 0,
	STORE_ERR_NOTFOUND,  /* gone on the server */
	STORE_ERR_OFFLINE,   /* server unreachable, nothing cached */
	STORE_ERR_REFUSED,   /* server said NO */
	STORE_ERR_QUOTA,     /* over quota */
	STORE_ERR_TOOBIG,    /* larger than the server takes */
	STORE_ERR_PERM,      /* not allowed */
	STORE_ERR_IO,        /* anything else */
};

/* Result callback; runs on an engine thread or synchronously inside the
 * call that took it.  `changed_size`: for fetch_body, the body's byte
 * count differed from the size the listing had reported. */
typedef void store_done_fn(void *ctx, enum store_error err, bool changed_size);

/* Events from the engine, for invalidating the kernel's caches.  Called on
 * engine threads, never inside a FUSE handler; may be called often. */
struct store_events {
	void *ctx;
	/* A name appeared in or vanished from the folder (0: the root). */
	void (*entry_changed)(void *ctx, int64_t folder_id, const char *name);
	/* A message's attributes (size, flags, mtime) changed. */
	void (*message_changed)(void *ctx, int64_t folder_id, uint32_t uid);
	/* A message now has another (folder, UID): a change made offline
	 * reached the server, which gave it its own UID.  Its file name is
	 * unchanged; open files and inodes the kernel holds must follow. */
	void (*message_moved)(void *ctx, int64_t folder_id, uint32_t uid,
			      int64_t to_folder_id, uint32_t to_uid);
};

struct store_status {
	const char *state;   /* "online", "offline", "connecting" */
	char server[256];    /* the SOURCE URL */
	unsigned pending;    /* changes not yet on the server */
	int64_t last_sync;   /* unix time of the last complete sync, 0 never */
	uint64_t fetches;    /* UID FETCH / RETR commands sent this session */
	unsigned dropped;    /* offline changes given up this session (each logged) */
};

struct store;

struct store_ops {
	/* Start the engine threads (after daemonizing: fork keeps only
	 * the calling thread).  0 or -errno. */
	int (*start)(struct store *store, const struct store_events *events);
	/* Has the folder's listing been brought up to date this session?
	 * (A cheap check, so fs/ can answer at once when it has.) */
	bool (*folder_is_ready)(struct store *store, int64_t folder_id);
	/* Bring the folder's listing up to date, then call done. */
	void (*folder_ready)(struct store *store, int64_t folder_id,
			     store_done_fn *done, void *ctx);
	/* Put the body of (folder_id, uid) in the cache, then call done. */
	void (*fetch_body)(struct store *store, int64_t folder_id, uint32_t uid,
			   store_done_fn *done, void *ctx);
	void (*status)(struct store *store, struct store_status *status_r);
	/* Ask for a resynchronisation of everything soon. */
	void (*sync_now)(struct store *store);

	/* Changes.  Each calls done once the server has confirmed it (or
	 * refused); on success the cache already shows the new state.  A
	 * backend leaves the ones it cannot do NULL, and fs/ answers EROFS
	 * (or EPERM where that is the better word) itself. */

	/* rm MSG.  IMAP: expunge (or move to Trash); POP3 spool: DELE;
	 * POP3 archive: delete the local copy. */
	void (*remove)(struct store *store, int64_t folder_id, uint32_t uid,
		       store_done_fn *done, void *ctx);
	/* mv MSG OTHER/NAME: the message keeps `name` at the destination. */
	void (*move)(struct store *store, int64_t folder_id, uint32_t uid,
		     int64_t to_folder_id, const char *name,
		     store_done_fn *done, void *ctx);
	/* mkdir / rmdir / mv DIR: `name` is the directory name in the mount
	 * (UTF-8); the backend makes the server's name from it. */
	void (*mkdir)(struct store *store, int64_t parent_id, const char *name,
		      store_done_fn *done, void *ctx);
	void (*rmdir)(struct store *store, int64_t folder_id,
		      store_done_fn *done, void *ctx);
	void (*rename_folder)(struct store *store, int64_t folder_id,
			      int64_t new_parent_id, const char *new_name,
			      store_done_fn *done, void *ctx);
	/* cp FILE FOLDER/NAME: append the message in fd (read from offset 0
	 * to its end; not closed) as `name`; mtime (unix seconds, 0 for
	 * none) becomes the INTERNALDATE. */
	void (*append)(struct store *store, int64_t folder_id, const char *name,
		       int fd, int64_t mtime, store_done_fn *done, void *ctx);
	/* setfattr user.mail.flags: replace the message's flags. */
	void (*set_flags)(struct store *store, int64_t folder_id, uint32_t uid,
			  const char *flags, store_done_fn *done, void *ctx);
	/* STORE_CAP_READ_ONCE: the message was read up to EOF and closed.
	 * Returns at once; the backend consumes it in the background and
	 * tells fs/ through the events. */
	void (*consume)(struct store *store, int64_t folder_id, uint32_t uid);

	/* Stop threads, log out, free; sets *store to NULL. */
	void (*destroy)(struct store **store);
};

struct store {
	const struct store_ops *ops;
	unsigned caps; /* STORE_CAP_* */
};

#endif
