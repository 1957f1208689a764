/* fs.h: the FUSE layer (libfuse 3 low-level API).
 *
 * Turns the cache and a store backend into the tree SPEC.md describes.
 * Answers from the cache inside the handler whenever it can; otherwise
 * parks the request with the store and replies from the store's callback.
 * Inode numbers are derived, not allocated: (folder id << 32) | UID, with
 * UIDVALIDITY as the generation, so nothing is kept per inode. */
#ifndef MAILFS_FS_H
#define MAILFS_FS_H

#include <stdbool.h>
#include <stdint.h>

#include <fuse_lowlevel.h>

#include "cache.h"
#include "store.h"

struct mfs;

struct mfs_opts {
	struct cache *cache;  /* not owned */
	struct store *store;  /* not owned */
	bool ro;              /* -o ro: every change fails with EROFS */
	uint64_t cache_limit; /* for statfs */
	const char *tmp_dir;  /* where new files are written before APPEND
				 (O_TMPFILE; same filesystem as the cache) */
};

struct mfs *mfs_new(const struct mfs_opts *opts);
const struct fuse_lowlevel_ops *mfs_ops(void);
/* After fuse_session_new and daemonizing: start the notifier thread and
 * the store's engine.  0 or -errno. */
int mfs_start(struct mfs *mfs, struct fuse_session *se);
/* At unmount, while the store still runs: store the temporary files
 * still waiting for a rename (see fs.c), waiting up to 5 s. */
void mfs_drain(struct mfs *mfs);
/* Stop and join the notifier: before the FUSE session is freed, since it
 * notifies through it.  Idempotent; the store is stopped by its owner. */
void mfs_stop(struct mfs *mfs);
/* mfs_stop, then free. */
void mfs_destroy(struct mfs **mfs);

#endif
