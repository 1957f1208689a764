/* imap-store-private.h: what the IMAP engine's files share.
 *
 * imap-store.c  the job queue, workers, poller and the store_ops glue
 * imap-sync.c   LIST and folder synchronisation (metadata, expunges, flags)
 * imap-fetch.c  message bodies, with read-ahead
 * imap-ops.c    changes made through the mount (the operations table)
 * imap-idle.c   IDLE connections that notice server changes at once
 *
 * Threads: MAX_WORKERS workers (each owns its struct worker and client),
 * two idlers (each owns its struct idler), the engine's poller, and the
 * FUSE threads that call the store_ops.
 *
 * Locking: istore.eng.lock protects the fields marked "eng.lock" below; it
 * is never held across network I/O, nor while calling back into fs/ or
 * into the cache or the journal.  The cache and the journal have their own
 * locks, held only inside their calls.
 *
 * Lock order: replay_lock, then any of eng.lock, the cache's lock, the
 * journal's lock, fs/'s mfs.lock (through the events).  eng.lock, the
 * cache's and the journal's lock are never held while taking another. */
#ifndef MAILFS_IMAP_STORE_PRIVATE_H
#define MAILFS_IMAP_STORE_PRIVATE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "cache.h"
#include "engine.h"
#include "imap-client.h"
#include "imap-store.h"
#include "journal.h"

#define READAHEAD_COUNT 48
#define READAHEAD_BYTES (16u << 20)
#define MAX_WORKERS 8
#define APPEND_MAX (256u << 20) /* bytes of one message written into the mount */

enum job_kind { JOB_LIST, JOB_SYNC, JOB_FETCH, JOB_OP };

enum op_kind { OP_REMOVE, OP_MOVE, OP_MKDIR, OP_RMDIR, OP_RENAME, OP_APPEND, OP_FLAGS };

/* A change asked for through the mount; someone waits for its result. */
struct op {
	enum op_kind kind;
	int64_t folder_id;
	uint32_t uid;
	int64_t to_folder_id; /* MOVE, RENAME: destination parent */
	char *name;           /* MOVE, MKDIR, RENAME, APPEND: the new name */
	char *flags;          /* FLAGS */
	char *data;           /* APPEND: the message, CRLF line ends */
	size_t len;
	int64_t mtime;
	uint32_t uidnext; /* APPEND: the folder's UIDNEXT before it was sent */
	/* MOVE: done only when proven (a COPYUID with the new UID, or the
	 * message found in the destination), not on OK alone */
	bool confirm;
	store_done_fn *done;
	void *ctx;
};

struct job {
	enum job_kind kind;
	bool urgent;
	int64_t folder_id;
	uint32_t uid;
	struct op *op;
	bool prefetch; /* JOB_FETCH: the window after uid, nobody waits */
	struct job *next;
};

/* Per-folder state of this session (eng.lock, all of it). */
struct fstate {
	bool ready;   /* synced at least once this session */
	bool queued;  /* a JOB_SYNC is in the queue */
	bool syncing; /* a worker runs its sync now */
	struct engine_waiter *waiters;
};

/* A body being fetched; waiters are called when it lands (eng.lock). */
struct inflight {
	int64_t folder_id;
	uint32_t uid;
	struct engine_waiter *waiters;
	struct inflight *next;
};

struct istore;

/* Its thread's alone (its client, its selected folder). */
struct worker {
	struct istore *s;
	int index;
	pthread_t thread;
	struct imap_client *client;
	int64_t selected; /* folder EXAMINEd on this connection, 0: none */
	bool selected_rw; /* ... and SELECTed read-write */
	bool qresync;     /* QRESYNC enabled on this connection (RFC 7162) */
	uint64_t view_gen; /* s->view_gen when its view was last refreshed */
};

/* A connection that IDLEs on one folder and queues a sync of it when the
 * server says something changed there. */
struct idler { /* its thread's alone */
	struct istore *s;
	pthread_t thread;
	struct imap_client *client;
	bool follow_recent; /* the folder used last; else INBOX */
	bool started;
};

#define RENUM_MAX 256

struct istore {
	/* constant once the store is made (before its threads start): */
	struct store base;
	struct url url;
	char *password;
	char *cafile;
	bool insecure;
	bool names_uid;
	bool ro;
	bool delete_trash;
	unsigned nworkers;
	struct cache *cache;        /* its own lock */
	struct journal *journal;    /* offline changes; its own lock */
	char *cache_dir;
	struct store_events ev;

	/* eng.lock (set by whichever worker runs LIST; read them with
	 * imap_store_delim() and imap_store_trash_id()): */
	char delim;       /* the hierarchy delimiter LIST reported */
	int64_t trash_id; /* the \Trash special-use folder, 0: none */
	struct {
		int64_t folder_id;
		uint32_t local, uid;
	} renum[RENUM_MAX];         /* eng.lock: local UIDs replaced this session */
	unsigned renum_next;        /* eng.lock */
	/* One replay at a time, ahead of all else; taken before eng.lock
	 * (imap_journal_apply -> imap_journal_translate). */
	pthread_mutex_t replay_lock;

	struct engine eng;
	struct job *queue_head, *queue_tail; /* eng.lock */
	struct fstate **fst;                 /* eng.lock, and what they point to */
	size_t fst_len;                      /* eng.lock */
	struct inflight *inflight;           /* eng.lock */

	/* atomic, not locked: every worker reads it before each job, and
	 * nothing else has to agree with it. */
	_Atomic uint64_t view_gen; /* see imap_store_view_changed() */
	int64_t inbox_id;  /* eng.lock */
	int64_t recent_id; /* eng.lock: the folder used last through the mount */
	pthread_cond_t idle_cond; /* with eng.lock: recent_id changed / stopping */

	/* Set before the threads start, joined at destroy: */
	struct worker workers[MAX_WORKERS];
	struct idler idlers[2];
	bool started;
};

struct examine_ctx {
	uint32_t uidvalidity, uidnext, exists;
	uint64_t highestmodseq;
	bool nomodseq;
	struct meta_ctx *mc; /* SELECT ... (QRESYNC ...): flag changes and
			      * VANISHED (EARLIER) go there */
	bool qresync_used;   /* that SELECT was sent */
};

struct uid_range {
	uint32_t lo, hi;
};

/* A new message's metadata, waiting to be written with others in one
 * transaction: one per message would cost a commit each. */
struct meta_pending {
	struct cache_msg m;
	char *base;
};

#define META_BATCH 500

struct meta_ctx {
	struct istore *s;
	int64_t folder_id;
	uint32_t min_uid;  /* ignore UIDs below (the "N:*" quirk) */
	bool only_flags;
	uint32_t *seen;    /* UIDs present (UID SEARCH) */
	size_t nseen, capseen;
	const uint32_t *asked; /* sorted: a UID set answer counts only these */
	size_t nasked;
	struct uid_range *gone; /* VANISHED: expunged UIDs, as ranges */
	size_t ngone, capgone;
	size_t added;
	size_t received;   /* new messages the server sent */
	bool collect_seen; /* FETCH FLAGS answers also list existing UIDs */
	struct meta_pending *pending; /* META_BATCH of them, made when needed */
	size_t npending;
};

/* imap-store.c */
struct job *imap_store_enqueue(struct istore *s, enum job_kind kind, int64_t folder_id,
			   uint32_t uid, bool urgent);
void imap_store_queue_sync(struct istore *s, int64_t folder_id, bool urgent);
void imap_store_emit_entry(struct istore *s, int64_t folder_id, const char *name);
void imap_store_emit_message(struct istore *s, int64_t folder_id, uint32_t uid);
int imap_store_connect(struct worker *w, const char **error_r);
/* Is the store being destroyed (its connections cut on purpose)? */
bool imap_store_stopping(struct istore *s);
/* After a command failed with r: reconnect and try once more? */
bool imap_store_retry(struct worker *w, int r);
struct fstate *imap_store_fstate(struct istore *s, int64_t id);
/* s->delim and s->trash_id, read under eng.lock: LIST on another worker
 * may change them. */
char imap_store_delim(struct istore *s);
int64_t imap_store_trash_id(struct istore *s);

/* Something changed that other connections' views of their selected
 * folder may not show yet (new UIDs, expunges, renames): each worker
 * sends a NOOP before its next job. */
void imap_store_view_changed(struct istore *s);
/* Before a job: catch up with imap_store_view_changed(). */
void imap_store_refresh_view(struct worker *w);

/* imap-sync.c */
int imap_sync_list(struct istore *s, struct imap_client *c, const char **error_r);
int imap_sync_folder(struct worker *w, int64_t folder_id);
int imap_sync_select(struct worker *w, const struct cache_folder *f,
			 struct examine_ctx *e_r);
/* The same, resynchronising with QRESYNC when the connection has it and
 * the cache knows the folder's UIDVALIDITY and HIGHESTMODSEQ. */
int imap_sync_select_qresync(struct worker *w, const struct cache_folder *f,
				 uint32_t maxuid, struct meta_ctx *mc, struct examine_ctx *e_r);
void imap_sync_on_examine(void *ctx, const struct imap_response *r);
void imap_sync_on_meta(void *ctx, const struct imap_response *r);
void imap_sync_gone_add_set(struct meta_ctx *mc, const char *set);

/* imap-fetch.c */
int imap_fetch_bodies(struct worker *w, int64_t folder_id, uint32_t uid, bool prefetch);

/* imap-ops.c */
void imap_ops_run(struct worker *w, struct op *op);
/* At stop: write a queued op to the journal unsent (the next mount
 * replays it), tell its caller, free it. */
void imap_ops_journal(struct istore *s, struct op *op);
/* Helpers the journal's replay shares. */
enum store_error imap_ops_outcome(struct worker *w, int r, const char *what);
enum store_error imap_ops_expunge_one(struct worker *w, uint32_t uid);
void imap_ops_unselect(struct worker *w);
char *imap_ops_child_server_name(struct istore *s, int64_t parent_id, const char *name);
uint32_t imap_ops_copyuid_dst(const char *args, uint32_t dst_validity);
/* A message's name without the hidden prefix ".mailfs-N-" that the fs
 * gives a message being replaced while it is removed (fs-changes.c). */
static inline const char *imap_real_name(const char *name)
{
	const char *dash = !strncmp(name, ".mailfs-", 8) ? strchr(name + 8, '-') : NULL;

	return dash && dash[1] ? dash + 1 : name;
}

struct moved_ctx {
	char args[256];
};
void imap_ops_on_moved(void *ctx, const struct imap_response *r);
/* The message and destination folder of a move (cleared on failure):
 * NOTFOUND, or PERM for a \Noselect destination. */
enum store_error imap_ops_move_lookup(struct istore *s, const struct op *op, struct cache_msg *m_r,
				     struct cache_folder *t_r);
int imap_ops_show_new(struct istore *s, const struct op *op, uint32_t uid, bool pinned);
void imap_ops_show_folder(struct istore *s, int64_t parent_id, const char *name,
			  const char *server_name);
enum store_error imap_ops_move_uid(struct worker *w, uint32_t uid, const char *to_server_name,
				   struct moved_ctx *mc);
char *imap_ops_storable_flags(const char *flags);
char *imap_ops_append_prefix(const char *server_name, int64_t mtime);
/* STATUS of a folder (quoted server name) for ITEMS ("MESSAGES",
 * "UIDNEXT"...): imap_client_run()'s result; what the answer held in st_r. */
struct imap_folder_status {
	uint64_t messages;
	bool has_messages;
	uint32_t uidnext; /* 0: not given */
};
int imap_ops_status(struct worker *w, const char *quoted, const char *items,
		    struct imap_folder_status *st_r);

/* imap-journal.c: changes the server could not confirm (see journal.h) */
/* Record op as a journal entry and show it in the cache: the caller
 * reports the result to the user as if the server had confirmed it. */
enum store_error imap_journal_apply(struct istore *s, struct op *op, bool attempted);
/* A local UID the replay replaced this session: *uid becomes the server's. */
bool imap_journal_translate(struct istore *s, int64_t folder_id, uint32_t *uid);
/* Replay the journal on w's live connection, oldest first.  0 when it is
 * empty, -EIO when the connection failed (the rest waits). */
int imap_journal_replay(struct worker *w);
void imap_ops_remove(struct store *base, int64_t folder_id, uint32_t uid,
			  store_done_fn *done, void *ctx);
void imap_ops_move(struct store *base, int64_t folder_id, uint32_t uid,
			int64_t to_folder_id, const char *name, store_done_fn *done, void *ctx);
void imap_ops_mkdir(struct store *base, int64_t parent_id, const char *name,
			 store_done_fn *done, void *ctx);
void imap_ops_rmdir(struct store *base, int64_t folder_id, store_done_fn *done, void *ctx);
void imap_ops_rename_folder(struct store *base, int64_t folder_id, int64_t new_parent_id,
				 const char *new_name, store_done_fn *done, void *ctx);
void imap_ops_append(struct store *base, int64_t folder_id, const char *name, int fd,
			  int64_t mtime, store_done_fn *done, void *ctx);
void imap_ops_set_flags(struct store *base, int64_t folder_id, uint32_t uid,
			     const char *flags, store_done_fn *done, void *ctx);

/* imap-idle.c */
void *imap_idle_main(void *arg);

#endif
