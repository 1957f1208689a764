/* cache.h: the local store of one account.
 *
 *   DIR/index.sqlite    folders and messages (SQLite, WAL mode)
 *   DIR/bodies/F/UID    message bodies, one plain file each (F = folder id)
 *
 * The directory is created mode 0700 (an existing one is chmod'ed to 0700),
 * every file 0600.  Bodies are written atomically (temp file in the same
 * directory, fsync, rename), so a crash leaves either the whole body or none.
 * The bytes of all bodies are bounded by body_limit: storing a body evicts
 * the least recently opened others (never one marked pinned, never one of
 * a CACHE_FOLDER_LOCAL folder, whose bytes are counted apart) until the
 * total fits.  A body whose file does not have its row's size is deleted
 * (to be fetched again), unless it is pinned or local: that one is the only
 * copy, so it is kept and served as it is, with a hard link to it in
 * DIR/quarantine/ and a warning.  Knows no protocol and no kernel.
 *
 * Thread-safe: every call takes the cache's mutex.  Strings in the structs
 * returned belong to the caller, who frees them with cache_folder_clear() /
 * cache_msg_clear() / cache_*_list_free().  Functions return 0 or a negative
 * errno (-ENOENT when a thing does not exist, -EEXIST for a name taken,
 * -EIO for an SQLite failure, which is also logged). */
#ifndef MAILFS_CACHE_H
#define MAILFS_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

struct cache;

/* Folder flags. */
#define CACHE_FOLDER_NOSELECT 0x01u /* a directory with no messages */
#define CACHE_FOLDER_TRASH    0x02u /* \Trash special use */
#define CACHE_FOLDER_SENT     0x04u
#define CACHE_FOLDER_DRAFTS   0x08u
#define CACHE_FOLDER_JUNK     0x10u
#define CACHE_FOLDER_ARCHIVE  0x20u
/* Local-only: the bodies are the only copy (POP3's archive).  They are
 * never evicted, pinned or not, never deleted for a size mismatch, and do
 * not count against body_limit. */
#define CACHE_FOLDER_LOCAL    0x40u
#define CACHE_FOLDER_SEEN     0x100u /* seen in the latest LIST (for the
					caller's mark-and-sweep) */

struct cache_folder {
	int64_t id;          /* > 0; stable while the folder exists */
	int64_t parent_id;   /* 0: top level */
	char *name;          /* directory name in the mount (UTF-8) */
	char *server_name;   /* mailbox name on the server, unique */
	uint32_t flags;      /* CACHE_FOLDER_* */
	uint32_t uidvalidity; /* 0: never selected */
	uint32_t uidnext;
	uint64_t highestmodseq;
	int64_t last_sync;   /* unix time of the last complete sync, 0: never */
};

struct cache_msg {
	int64_t folder_id;
	uint32_t uid;
	char *name;          /* file name in its folder, unique there */
	uint64_t size;       /* bytes; exact once the body has been stored */
	int64_t mtime;       /* INTERNALDATE, unix seconds */
	char *flags;         /* space-separated, e.g. "\\Seen $Junk"; never NULL */
	char *message_id;    /* may be NULL */
	uint64_t modseq;
	bool cached;         /* the body is in the store */
	bool pinned;         /* body must not be evicted (pending change) */
};

int cache_open(struct cache **cache_r, const char *dir, uint64_t body_limit,
	       const char **error_r);
/* The same, for a directory chosen by -o OPTION=DIR (e.g. "data_dir"):
 * the error messages say to choose another with that option. */
int cache_open_as(struct cache **cache_r, const char *dir, const char *option,
		  uint64_t body_limit, const char **error_r);
void cache_close(struct cache **cache);

/* ---- folders ---- */

/* Insert a folder, or update parent/name/flags of the one with this
 * server_name (its id stays).  -EEXIST if another folder already has
 * (parent_id, name). */
int cache_folder_put(struct cache *cache, int64_t parent_id, const char *name,
		     const char *server_name, uint32_t flags, int64_t *id_r);
int cache_folder_get(struct cache *cache, int64_t id, struct cache_folder *f_r);
int cache_folder_lookup(struct cache *cache, int64_t parent_id,
			const char *name, struct cache_folder *f_r);
int cache_folder_by_server_name(struct cache *cache, const char *server_name,
				struct cache_folder *f_r);
/* All folders, ordered by id. */
int cache_folder_list(struct cache *cache, struct cache_folder **folders_r,
		      size_t *count_r);
/* Children of parent_id with id > after_id, ordered by id, at most limit. */
int cache_folder_children(struct cache *cache, int64_t parent_id,
			  int64_t after_id, size_t limit,
			  struct cache_folder **folders_r, size_t *count_r);
int cache_folder_set_state(struct cache *cache, int64_t id,
			   uint32_t uidvalidity, uint32_t uidnext,
			   uint64_t highestmodseq, int64_t last_sync);
/* Delete the folder with its messages and bodies (children are the
 * caller's business). */
int cache_folder_delete(struct cache *cache, int64_t id);
/* Drop its messages and bodies, keep the folder (UIDVALIDITY change);
 * resets uidvalidity/uidnext/highestmodseq/last_sync to 0. */
int cache_folder_reset(struct cache *cache, int64_t id);
/* mv DIR: give folder id a new parent, name and server name; the server
 * names of its descendants (which start with the old one and delim) get
 * the new prefix.  -EEXIST when (parent_id, name) is taken. */
int cache_folder_rename(struct cache *cache, int64_t id, int64_t parent_id,
			const char *name, const char *server_name, char delim);
void cache_folder_clear(struct cache_folder *f);
void cache_folder_list_free(struct cache_folder *folders, size_t count);

/* ---- messages ---- */

/* Insert or replace message (folder_id, uid).  When m->name is NULL a name
 * is chosen from base: "BASE.eml", or when taken in the folder
 * "BASE (2).eml", "BASE (3).eml", ...; when m->name is set it is used as
 * given (-EEXIST when another message of the folder has it).  Replacing
 * keeps the existing name unless m->name says otherwise.  The chosen name
 * is returned in *name_r if name_r is not NULL (caller frees). */
int cache_msg_put(struct cache *cache, const struct cache_msg *m,
		  const char *base, char **name_r);
int cache_msg_get(struct cache *cache, int64_t folder_id, uint32_t uid,
		  struct cache_msg *m_r);
int cache_msg_lookup(struct cache *cache, int64_t folder_id, const char *name,
		     struct cache_msg *m_r);
/* Messages with uid > after_uid, ordered by uid, at most limit. */
int cache_msg_list(struct cache *cache, int64_t folder_id, uint32_t after_uid,
		   size_t limit, struct cache_msg **msgs_r, size_t *count_r);
/* All UIDs of the folder, ascending. */
int cache_msg_uids(struct cache *cache, int64_t folder_id, uint32_t **uids_r,
		   size_t *count_r);
/* Up to limit UIDs > after_uid whose body is not cached, ascending (for
 * read-ahead). */
int cache_msg_uncached(struct cache *cache, int64_t folder_id,
		       uint32_t after_uid, size_t limit, uint32_t **uids_r,
		       size_t *count_r);
size_t cache_msg_count(struct cache *cache, int64_t folder_id);
int cache_msg_set_flags(struct cache *cache, int64_t folder_id, uint32_t uid,
			const char *flags, uint64_t modseq);
int cache_msg_set_size(struct cache *cache, int64_t folder_id, uint32_t uid,
		       uint64_t size);
int cache_msg_rename(struct cache *cache, int64_t folder_id, uint32_t uid,
		     const char *name);
int cache_msg_set_pinned(struct cache *cache, int64_t folder_id, uint32_t uid,
			 bool pinned);
/* Delete the message and its body. */
int cache_msg_delete(struct cache *cache, int64_t folder_id, uint32_t uid);
void cache_msg_clear(struct cache_msg *m);
void cache_msg_list_free(struct cache_msg *msgs, size_t count);

/* ---- bodies ---- */

/* Open the cached body read-only (O_CLOEXEC) and mark it recently used.
 * Returns an fd the caller closes, or -ENOENT when not cached. */
int cache_body_open(struct cache *cache, int64_t folder_id, uint32_t uid);
/* 0 when the row says cached and its file is there with the row's size;
 * -ENOENT when either is missing, -EIO for another size.  Changes
 * nothing (for a check before the server's copy is deleted). */
int cache_body_verify(struct cache *cache, int64_t folder_id, uint32_t uid);
/* Store the body atomically, set the message's cached flag and its size to
 * len, then evict others if over the limit.  The message must exist
 * (-ENOENT otherwise). */
int cache_body_store(struct cache *cache, int64_t folder_id, uint32_t uid,
		     const void *data, size_t len);
/* The same without any fsync: for bodies the server still holds (IMAP
 * read cache), where a crash may lose the file but never serves a wrong
 * one (cache_body_open checks the size). */
int cache_body_store_volatile(struct cache *cache, int64_t folder_id,
			      uint32_t uid, const void *data, size_t len);
/* Bytes of the cached bodies that count against body_limit: all but
 * those of local folders. */
uint64_t cache_bytes(struct cache *cache);
/* Bytes of the bodies of local folders (CACHE_FOLDER_LOCAL). */
uint64_t cache_local_bytes(struct cache *cache);

/* ---- small persistent settings (key/value), e.g. POP3 consumed UIDLs
 * are kept elsewhere; this is for counters and markers ---- */
int cache_kv_get(struct cache *cache, const char *key, char **value_r);
int cache_kv_set(struct cache *cache, const char *key, const char *value);
/* Every key starting with prefix (unordered), freed with cache_kv_keys_free. */
int cache_kv_keys(struct cache *cache, const char *prefix, char ***keys_r, size_t *n_r);
void cache_kv_keys_free(char **keys, size_t n);

/* ---- batches ----
 * Make the calls up to the matching cache_commit() one transaction: a
 * burst of writes (a folder's first sync) is ~10x faster.  Nests (only the
 * outermost pair commits).  The calling thread holds the cache from
 * cache_begin() to cache_commit(); other threads wait, so keep batches
 * short (hundreds of puts).  cache_commit() returns -EIO if the commit
 * failed and the whole batch was rolled back, -EINVAL without a
 * cache_begin(). */
int cache_begin(struct cache *cache);
int cache_commit(struct cache *cache);

/* ---- moving messages ---- */

/* Move message (folder_id, uid) with its body, if cached, to
 * (to_folder_id, to_uid) under name (NULL: the name it has).  Flags,
 * size, mtime, message_id, pinned and the cached state go with it.  When
 * it returns 0 the move is durable (the body file is in the destination's
 * directory, that directory and the index are synced): the POP3 fetcher
 * relies on it before DELE.  A crash at any point leaves the message
 * either wholly at its old place or wholly at its new one.  -ENOENT when
 * the message or the destination folder does not exist, -EEXIST when
 * to_uid or name is taken in the destination. */
int cache_msg_move(struct cache *cache, int64_t folder_id, uint32_t uid,
		   int64_t to_folder_id, uint32_t to_uid, const char *name);

/* ---- moving a store ----
 *
 * Move the store in directory from (its index and bodies; nothing else
 * there), if it has a folder whose server name is folder, to directory
 * to, which must not hold one: into "TO.moving"
 * entry by entry (renames, the index last), then one rename to TO.  A
 * crash at any point leaves every body and row in exactly one of the
 * two places, and the next call finishes the move.  0 also when there is
 * nothing to move (from has no store, or is to).  Refused (-EEXIST) when
 * both hold a store, -EBUSY-like (-EWOULDBLOCK) when a mailfs uses from,
 * -EXDEV across file systems; *error_r says what to do.  Call before
 * cache_open(to).  Test hook: MAILFS_TEST_CRASH_AT=store_move kills the
 * process after the bodies moved and before the index did. */
/* Whether from holds a store with that folder and to none: the store a
 * cache_store_move would move (read-only: nothing is changed). */
bool cache_store_is_old(const char *from, const char *to, const char *folder);
int cache_store_move(const char *from, const char *to, const char *folder,
		     const char **error_r);

#endif
