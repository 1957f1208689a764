/* fs-private.h: what the FUSE layer's files share.
 *
 * fs.c          inodes, attributes, lookup, readdir, the notifier, the
 *               ops table
 * fs-files.c    open files: message bodies, the status file, new files
 *               (create, write, and the APPEND at close or rename)
 * fs-changes.c  rm, mv, mkdir, rmdir, setattr and the xattrs
 *
 * Threads: libfuse's request threads, the notifier (invalidations and
 * overdue APPENDs) and the store's threads (its callbacks).  mfs.lock
 * protects the fields marked "lock" (and those of struct new_fh it names).
 * It is taken last: nothing holds it while calling the store, the cache
 * or libfuse, so the store may call back into fs/ with its replay_lock
 * held. */
#ifndef MAILFS_FS_PRIVATE_H
#define MAILFS_FS_PRIVATE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <time.h>

#include "fs.h"

#define INO_ROOT   1
#define INO_CTL    2 /* MOUNTPOINT/.mailfs */
#define INO_STATUS 3
#define INO_SYNC   4

#define CTL_NAME ".mailfs"
#define TIMEOUT 60.0 /* every change we know of is also notified */
#define MSG_COOKIE ((off_t)1 << 32)

struct note {
	fuse_ino_t parent; /* inval_entry(parent, name), or */
	char *name;
	fuse_ino_t ino;    /* inval_inode(ino) attributes */
	struct note *next;
};

#define MOVED_MAX 1024

struct mfs {
	/* constant once started: */
	struct cache *cache;
	struct store *store;
	bool ro;
	uint64_t cache_limit;
	uid_t uid;
	gid_t gid;
	time_t started;
	struct fuse_session *se;

	pthread_t notifier;          /* main thread's: mfs_start, mfs_stop */
	bool notifier_running;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct note *notes, *notes_tail; /* lock */
	bool stopping;                   /* lock */
	struct new_fh *news;             /* lock: files being created */
	/* lock: where moved messages went.  After mv the kernel keeps the
	 * old inode number (old folder, old UID) under the new name. */
	struct { fuse_ino_t from, to; } moved[MOVED_MAX];
	unsigned moved_next;
	unsigned new_ino;                /* atomic */
	/* atomic: temporary names of replacements (".mailfs-N-NAME"); N
	 * starts at the session's start in microseconds, so a name with a
	 * smaller N was left by an earlier session (a kill -9). */
	uint64_t replace_seq, replace_base;
	struct fh *open_fhs;             /* lock: see struct fh */
	char *tmp_dir;                   /* constant */
};

struct new_fh;

struct parked {
	struct mfs *m;
	fuse_req_t req;
	fuse_ino_t ino;
	int64_t folder_id;
	uint32_t uid;
	int64_t to_folder_id; /* rename */
	/* rename() onto message `victim`: the new message comes in under
	 * tmp_name first, the old one goes only after that. */
	uint32_t victim;
	char *tmp_name;
	char *hidden; /* the victim's name while it is removed (see replace_swap) */
	size_t size;
	off_t off;
	bool plus;
	struct fuse_file_info fi;
	char name[];
};

enum fh_kind { FH_TEXT, FH_BODY, FH_NEW, FH_SYNC };

struct fh {
	enum fh_kind kind;
	/* Open body and text handles, in mfs->open_fhs (under mfs->lock):
	 * a RELEASE the kernel never sends (an unmount with requests still
	 * queued) must not leak them. */
	struct fh *prev, *next;
};

struct text_fh {
	struct fh h;
	size_t len;
	char data[];
};

struct body_fh {
	struct fh h;
	int fd;
	off_t size;
	/* The reader reached the end (read-once backends).  Atomic: the
	 * kernel may send READs of one handle at once (readahead). */
	_Atomic bool eof;
	int64_t folder_id;
	uint32_t uid;
};

/* A file being created.  Listed in mfs->news (under mfs->lock) so that
 * lookup and getattr see it while it is written.  FUSE threads (WRITE,
 * FLUSH, SETATTR, RENAME, RELEASE), the store's thread (append_done) and
 * the notifier (overdue APPENDs) all reach it. */
struct new_fh {
	struct fh h;
	/* constant after create: */
	int fd;
	fuse_ino_t ino;
	int64_t folder_id;
	/* mfs.lock: */
	int64_t mtime;     /* set by utimens (cp -p, rsync); 0: none */
	bool appended;     /* APPEND confirmed: the message now exists */
	bool written;      /* data since the last APPEND attempt */
	int err;           /* errno of a failed APPEND, reported once */
	/* A temporary name ('.' first, as rsync and editors make them): the
	 * APPEND waits for the rename to the real name, so that the mtime
	 * set after close() (rsync) becomes the INTERNALDATE, or for
	 * DEFER_SECONDS after release if no rename comes. */
	bool deferred;
	bool released;     /* closed: the news list owns it now */
	/* An APPEND is under way, or a rename or unlink has taken the file
	 * (under mfs->lock): nothing else may start one.  A FLUSH meanwhile
	 * (a dup'ed fd) waits in `waiters` for its result. */
	bool appending;
	bool dropped;      /* unlinked before its RELEASE: RELEASE frees it */
	/* A rename of it failed (rename(2) leaves the source): it stays a
	 * local file, to be renamed again or unlinked, and is not stored
	 * under its temporary name (only at unmount, rather than lost). */
	bool keep_local;
	struct flush_wait *waiters;
	time_t released_at;
	struct new_fh *next;  /* in mfs.news */
	/* Owned by whoever set `appending` (a rename taking the file), read
	 * by the APPEND it starts; freed under mfs.lock by untake_locked(): */
	int64_t final_folder; /* where and as what the rename wants it */
	char *final_name;
	char name[];          /* constant */
};

#define DEFER_SECONDS 5

struct flush_wait {
	fuse_req_t req;
	struct flush_wait *next;
};

static inline struct mfs *mfs_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

static inline fuse_ino_t folder_ino(int64_t id)
{
	return id == 0 ? INO_ROOT : (fuse_ino_t)id << 32;
}

static inline fuse_ino_t msg_ino(int64_t folder_id, uint32_t uid)
{
	return ((fuse_ino_t)folder_id << 32) | uid;
}

/* Derived inode numbers: below 2^32 the fixed ones, above (folder, uid)
 * with uid 0 for the folder itself; the root is folder 0. */
static inline bool ino_folder(fuse_ino_t ino, int64_t *folder_r)
{
	if (ino == INO_ROOT) {
		*folder_r = 0;
		return true;
	}
	if (ino >> 32 && (ino & 0xffffffffu) == 0) {
		*folder_r = (int64_t)(ino >> 32);
		return true;
	}
	return false;
}

static inline bool ino_msg(fuse_ino_t ino, int64_t *folder_r, uint32_t *uid_r)
{
	if (!(ino >> 32) || (ino & 0xffffffffu) == 0)
		return false;
	*folder_r = (int64_t)(ino >> 32);
	*uid_r = (uint32_t)(ino & 0xffffffffu);
	return true;
}

/* fs.c */
void mfs_attr_dir(struct mfs *m, fuse_ino_t ino, struct stat *st);
void mfs_attr_file(struct mfs *m, fuse_ino_t ino, uint64_t size, time_t mtime,
		      mode_t mode, struct stat *st);
void mfs_attr_msg(struct mfs *m, const struct cache_msg *msg, struct stat *st);
void mfs_done_reply_err(void *ctx, enum store_error err, bool changed);
void mfs_fill_entry(struct fuse_entry_param *e, fuse_ino_t ino, const struct stat *st,
		       uint64_t generation);
int mfs_get_attr(struct mfs *m, fuse_ino_t ino, struct stat *st, uint64_t *generation_r);
bool mfs_msg_of(struct mfs *m, fuse_ino_t ino, int64_t *folder_r, uint32_t *uid_r);
void mfs_note_moved(struct mfs *m, fuse_ino_t from, fuse_ino_t to);
void mfs_note_push(struct mfs *m, fuse_ino_t parent, const char *name, fuse_ino_t ino);
/* A request to answer later, with a copy of name; on failure it has
 * replied ENOMEM itself and returns NULL. */
struct parked *mfs_park(fuse_req_t req, fuse_ino_t ino, const char *name);
bool mfs_ro_or(struct mfs *m, fuse_req_t req, bool supported);
char *mfs_status_text(struct mfs *m, size_t *len_r);
int mfs_store_errno(enum store_error e);

/* fs-files.c */
/* APPEND n, which the caller marked appending; replies to req (if any). */
void fs_files_append(struct mfs *m, fuse_req_t req, struct new_fh *n);
/* The APPEND of a rename: on failure n stays the temporary file it was
 * (rename(2) leaves the source).  Replies to req, or, if then is set,
 * calls it with the errno (0: stored) after the bookkeeping. */
typedef void fs_files_then_fn(void *ctx, int err);
void fs_files_append_rename(struct mfs *m, fuse_req_t req, struct new_fh *n,
			    fs_files_then_fn *then, void *ctx);
/* Give a taken file back (nothing was sent): it waits again. */
void fs_files_untake(struct mfs *m, struct new_fh *n);
/* Forget a taken temporary file (unlink): never stored. */
void fs_files_drop(struct mfs *m, struct new_fh *n);
void fs_files_append_overdue(struct mfs *m);
/* With m->lock held (reads n->mtime). */
void fs_files_attr(struct mfs *m, struct new_fh *n, struct stat *st);
bool fs_files_attr_by_ino(struct mfs *m, fuse_ino_t ino, struct stat *st);
void fs_files_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		       struct fuse_file_info *fi);
bool fs_files_entry_by_name(struct mfs *m, int64_t folder, const char *name,
			      struct fuse_entry_param *e);
struct fh *fs_files_fh(const struct fuse_file_info *fi);
/* These two with m->lock held (they walk m->news): */
struct new_fh *fs_files_find_ino(struct mfs *m, fuse_ino_t ino);
struct new_fh *fs_files_find_name(struct mfs *m, int64_t folder, const char *name);
void fs_files_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void fs_files_free(struct new_fh *n);
/* At unmount: the body and text handles the kernel never released. */
void fs_files_free_open(struct mfs *m);
void fs_files_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void fs_files_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		     struct fuse_file_info *fi);
void fs_files_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
struct new_fh *fs_files_take_deferred(struct mfs *m, int64_t folder, const char *name);
void fs_files_unlink_locked(struct mfs *m, struct new_fh *n);
void fs_files_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size,
		      off_t off, struct fuse_file_info *fi);

/* fs-changes.c */
/* A replacement's temporary name ".mailfs-N-NAME": N in *seq_r. */
bool fs_changes_is_replace_name(const char *name, uint64_t *seq_r);
/* Row (folder, uid) named `name`, left under a temporary name by an earlier
 * session: give it NAME, or a free "NAME (n).eml".  The new name (to free),
 * or NULL. */
char *fs_changes_adopt_leftover(struct mfs *m, int64_t folder, uint32_t uid, const char *name);
void fs_changes_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size);
void fs_changes_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname);
void fs_changes_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size);
void fs_changes_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode);
void fs_changes_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		      dev_t rdev);
void fs_changes_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name);
void fs_changes_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
		       fuse_ino_t newparent, const char *newname, unsigned int flags);
void fs_changes_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name);
void fs_changes_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
			struct fuse_file_info *fi);
void fs_changes_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
			 const char *value, size_t size, int flags);
void fs_changes_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name);
void fs_changes_unlink(fuse_req_t req, fuse_ino_t parent, const char *name);

#endif
