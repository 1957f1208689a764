/* fs.c: the FUSE layer (see fs.h).
 *
 * Every handler ends in exactly one fuse_reply_*, either at once (from the
 * cache) or later from a store callback on an engine thread.  Kernel cache
 * invalidations go through one notifier thread with a queue: calling them
 * from a handler, or while a handler waits for us, can deadlock (see
 * FUSE-NOTES.md 2). */
#include "fs.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

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
	struct cache *cache;
	struct store *store;
	bool ro;
	uint64_t cache_limit;
	uid_t uid;
	gid_t gid;
	time_t started;
	struct fuse_session *se;

	pthread_t notifier;
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
	char *tmp_dir;
};

static struct mfs *mfs_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

static fuse_ino_t folder_ino(int64_t id)
{
	return id == 0 ? INO_ROOT : (fuse_ino_t)id << 32;
}

static fuse_ino_t msg_ino(int64_t folder_id, uint32_t uid)
{
	return ((fuse_ino_t)folder_id << 32) | uid;
}

/* Derived inode numbers: below 2^32 the fixed ones, above (folder, uid)
 * with uid 0 for the folder itself; the root is folder 0. */
static bool ino_folder(fuse_ino_t ino, int64_t *folder_r)
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

static bool ino_msg(fuse_ino_t ino, int64_t *folder_r, uint32_t *uid_r)
{
	if (!(ino >> 32) || (ino & 0xffffffffu) == 0)
		return false;
	*folder_r = (int64_t)(ino >> 32);
	*uid_r = (uint32_t)(ino & 0xffffffffu);
	return true;
}

/* A message inode that no longer exists because mv moved it: the
 * message's inode now.  Returns false when it was not moved. */
static bool moved_to(struct mfs *m, fuse_ino_t ino, int64_t *folder_r, uint32_t *uid_r)
{
	fuse_ino_t to = 0;

	pthread_mutex_lock(&m->lock);
	for (unsigned i = 0; i < MOVED_MAX && !to; i++)
		if (m->moved[i].from == ino)
			to = m->moved[i].to;
	pthread_mutex_unlock(&m->lock);
	if (!to)
		return false;
	*folder_r = (int64_t)(to >> 32);
	*uid_r = (uint32_t)(to & 0xffffffffu);
	return true;
}

static void note_moved(struct mfs *m, fuse_ino_t from, fuse_ino_t to)
{
	pthread_mutex_lock(&m->lock);
	m->moved[m->moved_next].from = from;
	m->moved[m->moved_next].to = to;
	m->moved_next = (m->moved_next + 1) % MOVED_MAX;
	pthread_mutex_unlock(&m->lock);
}

/* A message inode's (folder, UID), following moves. */
static bool msg_of(struct mfs *m, fuse_ino_t ino, int64_t *folder_r, uint32_t *uid_r)
{
	struct cache_msg msg;

	if (!ino_msg(ino, folder_r, uid_r))
		return false;
	if (cache_msg_get(m->cache, *folder_r, *uid_r, &msg) == 0) {
		cache_msg_clear(&msg);
		return true;
	}
	moved_to(m, ino, folder_r, uid_r);
	return true;
}

/* The one place where a store failure becomes an errno. */
static int store_errno(enum store_error e)
{
	switch (e) {
	case STORE_OK:
		return 0;
	case STORE_ERR_NOTFOUND:
		return ENOENT;
	case STORE_ERR_QUOTA:
		return ENOSPC;
	case STORE_ERR_PERM:
	case STORE_ERR_REFUSED:
		return EACCES;
	case STORE_ERR_OFFLINE:
	case STORE_ERR_IO:
		break;
	}
	return EIO;
}

/* ---- the notifier ---- */

static void note_push(struct mfs *m, fuse_ino_t parent, const char *name, fuse_ino_t ino)
{
	struct note *n = calloc(1, sizeof(*n));

	if (!n)
		return;
	n->parent = parent;
	n->ino = ino;
	if (name && !(n->name = strdup(name))) {
		free(n);
		return;
	}
	pthread_mutex_lock(&m->lock);
	if (m->notes_tail)
		m->notes_tail->next = n;
	else
		m->notes = n;
	m->notes_tail = n;
	pthread_cond_signal(&m->cond);
	pthread_mutex_unlock(&m->lock);
}

static void append_overdue(struct mfs *m);

static void *notifier_main(void *arg)
{
	struct mfs *m = arg;

	pthread_mutex_lock(&m->lock);
	for (;;) {
		while (!m->stopping && !m->notes) {
			struct timespec ts;

			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_sec += 1;
			if (pthread_cond_timedwait(&m->cond, &m->lock, &ts) == ETIMEDOUT &&
			    m->news) {
				pthread_mutex_unlock(&m->lock);
				append_overdue(m);
				pthread_mutex_lock(&m->lock);
			}
		}
		if (m->stopping)
			break;
		struct note *n = m->notes;

		m->notes = n->next;
		if (!m->notes)
			m->notes_tail = NULL;
		pthread_mutex_unlock(&m->lock);
		if (n->name)
			fuse_lowlevel_notify_inval_entry(m->se, n->parent, n->name, strlen(n->name));
		else
			fuse_lowlevel_notify_inval_inode(m->se, n->ino ? n->ino : n->parent, -1, 0);
		free(n->name);
		free(n);
		pthread_mutex_lock(&m->lock);
	}
	pthread_mutex_unlock(&m->lock);
	return NULL;
}

static void ev_entry_changed(void *ctx, int64_t folder_id, const char *name)
{
	struct mfs *m = ctx;

	note_push(m, folder_ino(folder_id), name, 0);
	/* The directory's size/mtime, for tools that watch them. */
	note_push(m, 0, NULL, folder_ino(folder_id));
}

static void ev_message_changed(void *ctx, int64_t folder_id, uint32_t uid)
{
	note_push(ctx, 0, NULL, msg_ino(folder_id, uid));
}

/* ---- attributes ---- */

static void attr_dir(struct mfs *m, fuse_ino_t ino, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	st->st_mode = S_IFDIR | 0700;
	st->st_nlink = 2;
	st->st_uid = m->uid;
	st->st_gid = m->gid;
	st->st_size = 4096;
	st->st_blksize = 4096;
	st->st_atime = st->st_mtime = st->st_ctime = m->started;
}

static void attr_file(struct mfs *m, fuse_ino_t ino, uint64_t size, time_t mtime,
		      mode_t mode, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	st->st_mode = S_IFREG | mode;
	st->st_nlink = 1;
	st->st_uid = m->uid;
	st->st_gid = m->gid;
	st->st_size = (off_t)size;
	st->st_blocks = (blkcnt_t)((size + 511) / 512);
	st->st_blksize = 65536;
	st->st_atime = st->st_mtime = st->st_ctime = mtime;
}

static void attr_msg(struct mfs *m, const struct cache_msg *msg, struct stat *st)
{
	attr_file(m, msg_ino(msg->folder_id, msg->uid), msg->size, (time_t)msg->mtime,
		  0600, st);
}

static char *status_text(struct mfs *m, size_t *len_r)
{
	struct store_status st;
	char when[64] = "never";
	char *text = NULL;
	int n;

	m->store->ops->status(m->store, &st);
	if (st.last_sync) {
		struct tm tm;
		time_t t = (time_t)st.last_sync;

		gmtime_r(&t, &tm);
		strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
	}
	n = asprintf(&text,
		     "state: %s\nserver: %s\npending: %u\ncache_bytes: %llu\nlast_sync: %s\nfetch_commands: %llu\n",
		     st.state, st.server, st.pending, (unsigned long long)cache_bytes(m->cache),
		     when, (unsigned long long)st.fetches);
	if (n < 0)
		return NULL;
	*len_r = (size_t)n;
	return text;
}

static bool new_attr_by_ino(struct mfs *m, fuse_ino_t ino, struct stat *st);
static bool new_entry_by_name(struct mfs *m, int64_t folder, const char *name,
			      struct fuse_entry_param *e);

/* Attributes of any inode: 0 or an errno. */
static int get_attr(struct mfs *m, fuse_ino_t ino, struct stat *st, uint64_t *generation_r)
{
	int64_t folder;
	uint32_t uid;

	*generation_r = 1;
	if (ino == INO_ROOT || ino == INO_CTL) {
		attr_dir(m, ino, st);
		return 0;
	}
	if (ino == INO_STATUS) {
		size_t len = 0;
		char *t = status_text(m, &len);

		free(t);
		attr_file(m, ino, len, time(NULL), 0400, st);
		return 0;
	}
	if (ino == INO_SYNC) {
		/* Readable (as empty) so that tools walking the mount meet
		 * no "Permission denied". */
		attr_file(m, ino, 0, m->started, 0600, st);
		return 0;
	}
	if (ino < (fuse_ino_t)1 << 32)
		return new_attr_by_ino(m, ino, st) ? 0 : ENOENT;
	if (ino_folder(ino, &folder)) {
		struct cache_folder f;

		if (cache_folder_get(m->cache, folder, &f) < 0)
			return ENOENT;
		cache_folder_clear(&f);
		attr_dir(m, ino, st);
		return 0;
	}
	if (msg_of(m, ino, &folder, &uid)) {
		struct cache_msg msg;
		struct cache_folder f;

		if (cache_msg_get(m->cache, folder, uid, &msg) < 0)
			return ENOENT;
		attr_msg(m, &msg, st);
		cache_msg_clear(&msg);
		if (cache_folder_get(m->cache, folder, &f) == 0) {
			*generation_r = f.uidvalidity ? f.uidvalidity : 1;
			cache_folder_clear(&f);
		}
		return 0;
	}
	return ENOENT;
}

static void fill_entry(struct fuse_entry_param *e, fuse_ino_t ino, const struct stat *st,
		       uint64_t generation)
{
	memset(e, 0, sizeof(*e));
	e->ino = ino;
	e->generation = generation;
	e->attr = *st;
	e->attr_timeout = TIMEOUT;
	e->entry_timeout = TIMEOUT;
}

/* A cached "no such name": the kernel asks us again only after the
 * timeout or an inval_entry, which new mail sends. */
static void reply_negative(fuse_req_t req)
{
	struct fuse_entry_param e;

	memset(&e, 0, sizeof(e));
	e.entry_timeout = TIMEOUT;
	fuse_reply_entry(req, &e);
}

/* ---- parked requests ---- */

struct new_fh;

struct parked {
	struct mfs *m;
	fuse_req_t req;
	fuse_ino_t ino;
	int64_t folder_id;
	uint32_t uid;
	int64_t to_folder_id; /* rename */
	struct new_fh *newfile; /* rename of a temporary file */
	size_t size;
	off_t off;
	bool plus;
	struct fuse_file_info fi;
	char name[];
};

static struct parked *park(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	size_t nl = name ? strlen(name) : 0;
	struct parked *p = calloc(1, sizeof(*p) + nl + 1);

	if (!p)
		return NULL;
	p->m = mfs_of(req);
	p->req = req;
	p->ino = ino;
	if (name)
		memcpy(p->name, name, nl + 1);
	return p;
}

/* ---- lookup ---- */

static void lookup_in_folder(struct mfs *m, fuse_req_t req, int64_t folder, const char *name)
{
	struct cache_folder f;
	struct cache_msg msg;
	struct stat st;
	struct fuse_entry_param e;
	uint64_t gen = 1;

	if (folder != 0 && new_entry_by_name(m, folder, name, &e)) {
		fuse_reply_entry(req, &e);
		return;
	}
	if (cache_folder_lookup(m->cache, folder, name, &f) == 0) {
		attr_dir(m, folder_ino(f.id), &st);
		fill_entry(&e, folder_ino(f.id), &st, 1);
		cache_folder_clear(&f);
		fuse_reply_entry(req, &e);
		return;
	}
	if (folder != 0 && cache_msg_lookup(m->cache, folder, name, &msg) == 0) {
		if (cache_folder_get(m->cache, folder, &f) == 0) {
			gen = f.uidvalidity ? f.uidvalidity : 1;
			cache_folder_clear(&f);
		}
		attr_msg(m, &msg, &st);
		fill_entry(&e, st.st_ino, &st, gen);
		cache_msg_clear(&msg);
		fuse_reply_entry(req, &e);
		return;
	}
	reply_negative(req);
}

static void lookup_ready(void *ctx, enum store_error err, bool changed)
{
	struct parked *p = ctx;

	(void)changed;
	if (err != STORE_OK && err != STORE_ERR_OFFLINE)
		fuse_reply_err(p->req, store_errno(err));
	else
		lookup_in_folder(p->m, p->req, p->folder_id, p->name);
	free(p);
}

static bool is_message_name(const char *name)
{
	size_t len = strlen(name);

	return len > 4 && !strcmp(name + len - 4, ".eml");
}

static void mfs_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct mfs *m = mfs_of(req);
	struct fuse_entry_param e;
	struct stat st;
	uint64_t gen;
	int64_t folder;

	if (parent == INO_ROOT && !strcmp(name, CTL_NAME)) {
		get_attr(m, INO_CTL, &st, &gen);
		fill_entry(&e, INO_CTL, &st, gen);
		fuse_reply_entry(req, &e);
		return;
	}
	if (parent == INO_CTL) {
		fuse_ino_t ino = !strcmp(name, "status") ? INO_STATUS :
				 !strcmp(name, "sync") ? INO_SYNC : 0;

		if (!ino) {
			reply_negative(req);
			return;
		}
		get_attr(m, ino, &st, &gen);
		fill_entry(&e, ino, &st, gen);
		if (ino == INO_STATUS)
			e.attr_timeout = 0; /* its size changes all the time */
		fuse_reply_entry(req, &e);
		return;
	}
	if (!ino_folder(parent, &folder)) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	/* Names we never make (file managers probe .hidden, .Trash-0,
	 * autorun.inf...): answer without waiting for the server.  Only a
	 * message name needs the folder's listing; folders are known from
	 * LIST already. */
	if (name[0] == '.' || folder == 0 || !is_message_name(name) ||
	    m->store->ops->folder_is_ready(m->store, folder)) {
		/* Dot names exist only when a tool created them here
		 * (rsync's temporary files): never wait for those. */
		lookup_in_folder(m, req, folder, name);
		return;
	}
	struct parked *p = park(req, parent, name);
	if (!p) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	p->folder_id = folder;
	m->store->ops->folder_ready(m->store, folder, lookup_ready, p);
}

static void mfs_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct mfs *m = mfs_of(req);
	struct stat st;
	uint64_t gen;
	int err;

	(void)fi;
	err = get_attr(m, ino, &st, &gen);
	if (err)
		fuse_reply_err(req, err);
	else
		fuse_reply_attr(req, &st, ino == INO_STATUS ? 0 : TIMEOUT);
}

/* ---- readdir ----
 * Offsets are stable cookies, never list positions, so entries appearing
 * or vanishing between two calls neither repeat nor skip others:
 *   1 after ".", 2 after "..", 3 + id after sub-folder id (ids < 2^31),
 *   2^32 + uid after message uid; the root's ".mailfs" is 2^32. */

static bool add_entry(fuse_req_t req, char *buf, size_t size, size_t *pos, bool plus,
		      const char *name, fuse_ino_t ino, const struct stat *st,
		      uint64_t gen, off_t next)
{
	size_t n;

	if (plus) {
		struct fuse_entry_param e;

		fill_entry(&e, ino, st, gen);
		if (ino == INO_STATUS)
			e.attr_timeout = 0;
		/* "." and "..": the kernel takes no lookup for ino 0. */
		if (name[0] == '.' && (name[1] == '\0' || (name[1] == '.' && name[2] == '\0'))) {
			memset(&e, 0, sizeof(e));
			e.attr.st_ino = ino;
			e.attr.st_mode = S_IFDIR;
		}
		n = fuse_add_direntry_plus(req, buf + *pos, size - *pos, name, &e, next);
	} else {
		n = fuse_add_direntry(req, buf + *pos, size - *pos, name, st, next);
	}
	if (n > size - *pos)
		return false;
	*pos += n;
	return true;
}

static void do_readdir(struct mfs *m, fuse_req_t req, fuse_ino_t ino, size_t size,
		       off_t off, bool plus)
{
	char *buf = malloc(size);
	size_t pos = 0;
	struct stat st;
	int64_t folder = 0;
	uint64_t gen = 1;
	bool full = false;

	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	if (ino == INO_CTL) {
		static const struct { const char *name; fuse_ino_t ino; } ents[] = {
			{ ".", INO_CTL }, { "..", INO_ROOT }, { "status", INO_STATUS }, { "sync", INO_SYNC },
		};
		for (off_t i = off; i < 4 && !full; i++) {
			get_attr(m, ents[i].ino, &st, &gen);
			full = !add_entry(req, buf, size, &pos, plus, ents[i].name,
					  ents[i].ino, &st, gen, i + 1);
		}
		goto reply;
	}
	ino_folder(ino, &folder);
	if (off < 1) {
		attr_dir(m, ino, &st);
		full = !add_entry(req, buf, size, &pos, plus, ".", ino, &st, 1, 1);
		off = 1;
	}
	if (!full && off < 2) {
		attr_dir(m, INO_ROOT, &st);
		full = !add_entry(req, buf, size, &pos, plus, "..", INO_ROOT, &st, 1, 2);
		off = 2;
	}
	while (!full && off >= 2 && off < MSG_COOKIE) {
		struct cache_folder *fl;
		size_t n;

		if (cache_folder_children(m->cache, folder, off >= 3 ? off - 3 : 0, 64, &fl, &n) < 0 || n == 0) {
			off = MSG_COOKIE - 1;
			break;
		}
		for (size_t i = 0; i < n && !full; i++) {
			attr_dir(m, folder_ino(fl[i].id), &st);
			full = !add_entry(req, buf, size, &pos, plus, fl[i].name, folder_ino(fl[i].id),
					  &st, 1, 3 + fl[i].id);
			if (!full)
				off = 3 + fl[i].id;
		}
		cache_folder_list_free(fl, n);
	}
	if (!full && off < MSG_COOKIE) {
		if (folder == 0) {
			get_attr(m, INO_CTL, &st, &gen);
			full = !add_entry(req, buf, size, &pos, plus, CTL_NAME, INO_CTL, &st, 1,
					  MSG_COOKIE);
		}
		if (!full)
			off = MSG_COOKIE;
	}
	if (folder != 0 && !full) {
		struct cache_folder f;

		if (cache_folder_get(m->cache, folder, &f) == 0) {
			gen = f.uidvalidity ? f.uidvalidity : 1;
			cache_folder_clear(&f);
		}
	}
	while (folder != 0 && !full && off >= MSG_COOKIE) {
		struct cache_msg *msgs;
		size_t n;

		if (cache_msg_list(m->cache, folder, (uint32_t)(off - MSG_COOKIE), 256, &msgs, &n) < 0 ||
		    n == 0)
			break;
		for (size_t i = 0; i < n && !full; i++) {
			attr_msg(m, &msgs[i], &st);
			full = !add_entry(req, buf, size, &pos, plus, msgs[i].name, st.st_ino, &st,
					  gen, MSG_COOKIE + msgs[i].uid);
			if (!full)
				off = MSG_COOKIE + msgs[i].uid;
		}
		cache_msg_list_free(msgs, n);
	}
reply:
	fuse_reply_buf(req, buf, pos);
	free(buf);
}

static void readdir_ready(void *ctx, enum store_error err, bool changed)
{
	struct parked *p = ctx;

	(void)changed;
	if (err != STORE_OK && err != STORE_ERR_OFFLINE)
		fuse_reply_err(p->req, store_errno(err));
	else
		do_readdir(p->m, p->req, p->ino, p->size, p->off, p->plus);
	free(p);
}

static void readdir_common(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			   bool plus)
{
	struct mfs *m = mfs_of(req);
	int64_t folder = 0;

	if (ino != INO_CTL && !ino_folder(ino, &folder)) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	/* Messages are listed once the folder has been synced this session
	 * (or comes from the cache when the server cannot be reached). */
	if (ino == INO_CTL || folder == 0 || m->store->ops->folder_is_ready(m->store, folder)) {
		do_readdir(m, req, ino, size, off, plus);
		return;
	}
	struct parked *p = park(req, ino, NULL);
	if (!p) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	p->folder_id = folder;
	p->size = size;
	p->off = off;
	p->plus = plus;
	m->store->ops->folder_ready(m->store, folder, readdir_ready, p);
}

static void mfs_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			struct fuse_file_info *fi)
{
	(void)fi;
	readdir_common(req, ino, size, off, false);
}

static void mfs_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			    struct fuse_file_info *fi)
{
	(void)fi;
	readdir_common(req, ino, size, off, true);
}

/* ---- open files ----
 * Every fh starts with its kind.  Bodies are fds on cached files; new
 * files (cp into a folder) are anonymous temp files in the cache dir that
 * become an APPEND when closed; the status file is a text made at open. */

enum fh_kind { FH_TEXT, FH_BODY, FH_NEW, FH_SYNC };

struct fh {
	enum fh_kind kind;
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
	bool eof; /* the reader reached the end (read-once backends) */
	int64_t folder_id;
	uint32_t uid;
};

/* A file being created.  Listed in mfs->news (under mfs->lock) so that
 * lookup and getattr see it while it is written. */
struct new_fh {
	struct fh h;
	int fd;
	fuse_ino_t ino;
	int64_t folder_id;
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
	bool appending;    /* a deferred APPEND is under way */
	time_t released_at;
	int64_t final_folder; /* where and as what the rename wants it */
	char *final_name;
	struct new_fh *next;
	char name[];
};

#define DEFER_SECONDS 5

static struct fh *fh_of(const struct fuse_file_info *fi)
{
	return (struct fh *)(uintptr_t)fi->fh;
}

/* Pending new files get inode numbers below 2^32 that no message uses. */
static fuse_ino_t next_new_ino(struct mfs *m)
{
	return 1000 + __atomic_fetch_add(&m->new_ino, 1, __ATOMIC_RELAXED) % 0x7fff0000u;
}

static struct new_fh *new_find_ino(struct mfs *m, fuse_ino_t ino)
{
	for (struct new_fh *n = m->news; n; n = n->next)
		if (n->ino == ino)
			return n;
	return NULL;
}

static struct new_fh *new_find_name(struct mfs *m, int64_t folder, const char *name)
{
	for (struct new_fh *n = m->news; n; n = n->next)
		if (n->folder_id == folder && !strcmp(n->name, name))
			return n;
	return NULL;
}

static void new_attr(struct mfs *m, struct new_fh *n, struct stat *st)
{
	struct stat fst;

	if (fstat(n->fd, &fst) < 0)
		fst.st_size = 0;
	attr_file(m, n->ino, (uint64_t)fst.st_size, n->mtime ? (time_t)n->mtime : time(NULL),
		  0600, st);
}

static bool new_attr_by_ino(struct mfs *m, fuse_ino_t ino, struct stat *st)
{
	struct new_fh *n;

	pthread_mutex_lock(&m->lock);
	n = new_find_ino(m, ino);
	if (n)
		new_attr(m, n, st);
	pthread_mutex_unlock(&m->lock);
	return n != NULL;
}

static bool new_entry_by_name(struct mfs *m, int64_t folder, const char *name,
			      struct fuse_entry_param *e)
{
	struct new_fh *n;

	pthread_mutex_lock(&m->lock);
	n = new_find_name(m, folder, name);
	if (n) {
		memset(e, 0, sizeof(*e));
		new_attr(m, n, &e->attr);
		e->ino = n->ino;
		e->generation = 1;
		/* Not cached: once written it becomes a message with
		 * another inode. */
		e->attr_timeout = 0;
		e->entry_timeout = 0;
	}
	pthread_mutex_unlock(&m->lock);
	return n != NULL;
}

static bool ro_or(struct mfs *m, fuse_req_t req, bool supported)
{
	if (m->ro || !supported) {
		fuse_reply_err(req, m->ro ? EROFS : EPERM);
		return true;
	}
	return false;
}

static void reply_open_fd(struct parked *p, int fd, bool size_changed)
{
	struct body_fh *fh = malloc(sizeof(*fh));
	struct stat st;
	bool read_once = p->m->store->caps & STORE_CAP_READ_ONCE;

	if (!fh || fstat(fd, &st) < 0) {
		free(fh);
		close(fd);
		fuse_reply_err(p->req, fh ? EIO : ENOMEM);
		return;
	}
	fh->h.kind = FH_BODY;
	fh->fd = fd;
	fh->size = st.st_size;
	fh->eof = false;
	fh->folder_id = p->folder_id;
	fh->uid = p->uid;
	p->fi.fh = (uint64_t)(uintptr_t)fh;
	/* A body never changes for a UID: keep its pages across opens.  But
	 * when the server's size was wrong, the kernel may hold the old
	 * size until the notifier's invalidation lands: read around the
	 * page cache this once, so nothing is cut or padded.  A read-once
	 * backend must see the reader reach EOF, which the page cache would
	 * hide. */
	p->fi.keep_cache = !size_changed && !read_once;
	p->fi.direct_io = size_changed || read_once;
	/* Nothing to flush on a body: spare close() a round trip. */
	p->fi.noflush = 1;
	if (fuse_reply_open(p->req, &p->fi) != 0) {
		close(fd);
		free(fh);
	}
}

static void open_fetched(void *ctx, enum store_error err, bool changed)
{
	struct parked *p = ctx;
	int fd;

	if (err != STORE_OK) {
		fuse_reply_err(p->req, store_errno(err));
	} else if ((fd = cache_body_open(p->m->cache, p->folder_id, p->uid)) < 0) {
		/* Evicted between store and open: rare; report as I/O. */
		fuse_reply_err(p->req, EIO);
	} else {
		reply_open_fd(p, fd, changed);
	}
	free(p);
}

static void open_text(fuse_req_t req, struct fuse_file_info *fi, char *t, size_t len)
{
	struct text_fh *fh = t ? malloc(sizeof(*fh) + len) : NULL;

	if (!fh) {
		free(t);
		fuse_reply_err(req, ENOMEM);
		return;
	}
	fh->h.kind = FH_TEXT;
	fh->len = len;
	memcpy(fh->data, t, len);
	free(t);
	fi->fh = (uint64_t)(uintptr_t)fh;
	fi->direct_io = 1;
	if (fuse_reply_open(req, fi) != 0)
		free(fh);
}

static struct fh sync_fh = { FH_SYNC };

static void mfs_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct mfs *m = mfs_of(req);
	int64_t folder;
	uint32_t uid;
	bool writing = (fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC);

	if (ino == INO_STATUS) {
		size_t len = 0;
		char *t;

		if (writing) {
			fuse_reply_err(req, EACCES);
			return;
		}
		t = status_text(m, &len);
		open_text(req, fi, t, len);
		return;
	}
	if (ino == INO_SYNC) {
		fi->fh = (uint64_t)(uintptr_t)&sync_fh;
		fi->direct_io = 1;
		fuse_reply_open(req, fi);
		return;
	}
	if (!msg_of(m, ino, &folder, &uid)) {
		/* A file still being created, opened again: not supported. */
		fuse_reply_err(req, ino_folder(ino, &folder) ? EISDIR : EACCES);
		return;
	}
	if (writing) {
		/* Messages are immutable. */
		fuse_reply_err(req, m->ro ? EROFS : EACCES);
		return;
	}
	int fd = cache_body_open(m->cache, folder, uid);
	struct parked *p = park(req, ino, NULL);

	if (!p) {
		if (fd >= 0)
			close(fd);
		fuse_reply_err(req, ENOMEM);
		return;
	}
	p->fi = *fi;
	p->folder_id = folder;
	p->uid = uid;
	if (fd >= 0) {
		reply_open_fd(p, fd, false);
		free(p);
		return;
	}
	m->store->ops->fetch_body(m->store, folder, uid, open_fetched, p);
}

static void mfs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	struct fh *h = fh_of(fi);

	(void)ino;
	switch (h->kind) {
	case FH_TEXT: {
		struct text_fh *t = (struct text_fh *)h;

		if ((size_t)off >= t->len)
			fuse_reply_buf(req, NULL, 0);
		else
			fuse_reply_buf(req, t->data + off,
				       t->len - (size_t)off < size ? t->len - (size_t)off : size);
		return;
	}
	case FH_SYNC:
		fuse_reply_buf(req, NULL, 0);
		return;
	case FH_NEW: {
		char *buf = malloc(size ? size : 1);
		ssize_t n = buf ? pread(((struct new_fh *)h)->fd, buf, size, off) : -1;

		if (n < 0)
			fuse_reply_err(req, buf ? errno : ENOMEM);
		else
			fuse_reply_buf(req, buf, (size_t)n);
		free(buf);
		return;
	}
	case FH_BODY:
		break;
	}
	struct body_fh *b = (struct body_fh *)h;

	if (off + (off_t)size >= b->size)
		b->eof = true;
	/* Cached bodies are plain files: hand libfuse the fd, it splices. */
	struct fuse_bufvec bv = FUSE_BUFVEC_INIT(size);

	bv.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
	bv.buf[0].fd = b->fd;
	bv.buf[0].pos = off;
	fuse_reply_data(req, &bv, FUSE_BUF_SPLICE_MOVE);
}

static void mfs_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size,
		      off_t off, struct fuse_file_info *fi)
{
	struct mfs *m = mfs_of(req);
	struct fh *h = fh_of(fi);

	(void)ino;
	if (h->kind == FH_SYNC) {
		m->store->ops->sync_now(m->store);
		fuse_reply_write(req, size);
		return;
	}
	if (h->kind != FH_NEW) {
		fuse_reply_err(req, m->ro ? EROFS : EACCES);
		return;
	}
	struct new_fh *n = (struct new_fh *)h;
	if (n->appended) {
		/* The message exists on the server now: immutable. */
		fuse_reply_err(req, EACCES);
		return;
	}
	ssize_t w = pwrite(n->fd, buf, size, off);
	if (w < 0) {
		fuse_reply_err(req, errno);
		return;
	}
	n->written = true;
	fuse_reply_write(req, (size_t)w);
}

/* Does the file start with a header section ("Name: value" lines)?  A
 * From_ line (mbox) before it is accepted too. */
static bool looks_like_message(int fd)
{
	char buf[1024];
	ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
	char *p = buf, *colon;

	if (n <= 0)
		return false;
	buf[n] = '\0';
	if (!strncmp(p, "From ", 5)) {
		p = strchr(p, '\n');
		if (!p)
			return false;
		p++;
	}
	colon = strchr(p, ':');
	if (!colon || colon == p)
		return false;
	for (char *q = p; q < colon; q++)
		if ((unsigned char)*q <= ' ' || (unsigned char)*q >= 127)
			return false;
	return true;
}

struct append_ctx {
	struct mfs *m;
	fuse_req_t req; /* NULL when done from release: nobody to tell */
	struct new_fh *n;
};

static void new_unlink_locked(struct mfs *m, struct new_fh *n)
{
	for (struct new_fh **pp = &m->news; *pp; pp = &(*pp)->next)
		if (*pp == n) {
			*pp = n->next;
			break;
		}
}

static void new_free(struct new_fh *n)
{
	close(n->fd);
	free(n->final_name);
	free(n);
}

static void append_done(void *ctx, enum store_error err, bool changed)
{
	struct append_ctx *a = ctx;
	struct new_fh *n = a->n;
	bool done_with_it;

	(void)changed;
	pthread_mutex_lock(&a->m->lock);
	if (err == STORE_OK)
		n->appended = true;
	else
		n->err = store_errno(err);
	/* A closed file whose deferred APPEND ended: nobody else has it. */
	done_with_it = n->released;
	if (done_with_it)
		new_unlink_locked(a->m, n);
	pthread_mutex_unlock(&a->m->lock);
	if (err != STORE_OK)
		log_warn("cannot store %s: %s", n->final_name ? n->final_name : n->name,
			 strerror(store_errno(err)));
	if (a->req)
		fuse_reply_err(a->req, store_errno(err));
	if (done_with_it) {
		note_push(a->m, folder_ino(n->folder_id), n->name, 0);
		new_free(n);
	}
	free(a);
}

/* APPEND a finished new file; replies to req (if any) when done. */
static void append_new(struct mfs *m, fuse_req_t req, struct new_fh *n)
{
	struct append_ctx *a;

	n->written = false;
	if (!looks_like_message(n->fd)) {
		n->err = EINVAL;
		if (req)
			fuse_reply_err(req, EINVAL);
		return;
	}
	a = malloc(sizeof(*a));
	if (!a) {
		if (req)
			fuse_reply_err(req, ENOMEM);
		return;
	}
	a->m = m;
	a->req = req;
	a->n = n;
	m->store->ops->append(m->store, n->final_name ? n->final_folder : n->folder_id,
			      n->final_name ? n->final_name : n->name, n->fd, n->mtime,
			      append_done, a);
}

/* Temporary files nobody renamed within DEFER_SECONDS of closing them are
 * stored under the name they have. */
static void append_overdue(struct mfs *m)
{
	time_t now = time(NULL);

	for (;;) {
		struct new_fh *due = NULL;

		pthread_mutex_lock(&m->lock);
		for (struct new_fh *n = m->news; n && !due; n = n->next)
			if (n->deferred && n->released && !n->appending &&
			    now - n->released_at >= DEFER_SECONDS)
				due = n;
		if (due)
			due->appending = true;
		pthread_mutex_unlock(&m->lock);
		if (!due)
			return;
		/* It was checked to be a message at close; from here on
		 * append_done owns it. */
		append_new(m, NULL, due);
	}
}

/* The news entry closed under a temporary name in folder, if any; it is
 * taken for the caller (marked appending). */
static struct new_fh *take_deferred(struct mfs *m, int64_t folder, const char *name)
{
	struct new_fh *n;

	pthread_mutex_lock(&m->lock);
	n = new_find_name(m, folder, name);
	if (n && (!n->deferred || !n->released || n->appending))
		n = NULL;
	if (n)
		n->appending = true;
	pthread_mutex_unlock(&m->lock);
	return n;
}

static void mfs_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct mfs *m = mfs_of(req);
	struct fh *h = fh_of(fi);

	(void)ino;
	if (h->kind != FH_NEW) {
		fuse_reply_err(req, 0);
		return;
	}
	struct new_fh *n = (struct new_fh *)h;
	if (n->name[0] == '.' && !n->appended && !n->err) {
		/* A temporary name: APPEND at the rename (or later). */
		n->deferred = true;
		n->written = false;
		fuse_reply_err(req, looks_like_message(n->fd) ? 0 : (n->err = EINVAL));
		return;
	}
	/* close() returns what the server said: the APPEND happens here. */
	if (!n->appended && (n->written || !n->err)) {
		append_new(m, req, n);
		return;
	}
	int err = n->err;
	n->err = 0;
	fuse_reply_err(req, err);
}

static void mfs_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct mfs *m = mfs_of(req);
	struct fh *h = fh_of(fi);

	(void)ino;
	switch (h->kind) {
	case FH_TEXT:
		free(h);
		break;
	case FH_SYNC:
		break;
	case FH_BODY: {
		struct body_fh *b = (struct body_fh *)h;

		if (b->eof && (m->store->caps & STORE_CAP_READ_ONCE) && m->store->ops->consume)
			m->store->ops->consume(m->store, b->folder_id, b->uid);
		close(b->fd);
		free(b);
		break;
	}
	case FH_NEW: {
		struct new_fh *n = (struct new_fh *)h;

		pthread_mutex_lock(&m->lock);
		if (n->deferred && !n->appended && !n->err) {
			/* Waits in the news list for its rename. */
			n->released = true;
			n->released_at = time(NULL);
			pthread_mutex_unlock(&m->lock);
			break;
		}
		new_unlink_locked(m, n);
		pthread_mutex_unlock(&m->lock);
		/* The kernel still knows the temporary inode by this name:
		 * make it look the name up again. */
		note_push(m, folder_ino(n->folder_id), n->name, 0);
		new_free(n);
		break;
	}
	}
	fuse_reply_err(req, 0);
}

static void mfs_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		       struct fuse_file_info *fi)
{
	struct mfs *m = mfs_of(req);
	struct fuse_entry_param e;
	struct cache_msg msg;
	struct new_fh *n;
	int64_t folder;

	(void)mode;
	if (!ino_folder(parent, &folder) || folder == 0 || parent == INO_CTL) {
		fuse_reply_err(req, m->ro ? EROFS : EACCES);
		return;
	}
	if (ro_or(m, req, m->store->ops->append != NULL))
		return;
	if (cache_msg_lookup(m->cache, folder, name, &msg) == 0) {
		cache_msg_clear(&msg);
		fuse_reply_err(req, (fi->flags & O_EXCL) ? EEXIST : EACCES);
		return;
	}
	n = calloc(1, sizeof(*n) + strlen(name) + 1);
	if (!n) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	n->fd = open(m->tmp_dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (n->fd < 0) {
		int err = errno;

		log_error("cannot create a temporary file in %s: %s", m->tmp_dir, strerror(err));
		free(n);
		fuse_reply_err(req, err);
		return;
	}
	n->h.kind = FH_NEW;
	n->folder_id = folder;
	n->ino = next_new_ino(m);
	strcpy(n->name, name);
	pthread_mutex_lock(&m->lock);
	if (new_find_name(m, folder, name)) {
		pthread_mutex_unlock(&m->lock);
		close(n->fd);
		free(n);
		fuse_reply_err(req, EEXIST);
		return;
	}
	n->next = m->news;
	m->news = n;
	pthread_mutex_unlock(&m->lock);
	memset(&e, 0, sizeof(e));
	new_attr(m, n, &e.attr);
	e.ino = n->ino;
	e.generation = 1;
	e.attr_timeout = 0;
	e.entry_timeout = 0;
	fi->fh = (uint64_t)(uintptr_t)n;
	fi->direct_io = 1;
	if (fuse_reply_create(req, &e, fi) != 0) {
		pthread_mutex_lock(&m->lock);
		for (struct new_fh **pp = &m->news; *pp; pp = &(*pp)->next)
			if (*pp == n) {
				*pp = n->next;
				break;
			}
		pthread_mutex_unlock(&m->lock);
		close(n->fd);
		free(n);
	}
}

/* ---- xattrs ---- */

static const char *const xattr_names[] = {
	"user.mail.flags", "user.mail.uid", "user.mail.message_id", "user.mime_type",
};

static void reply_xattr_value(fuse_req_t req, const char *value, size_t len, size_t size)
{
	if (size == 0)
		fuse_reply_xattr(req, len);
	else if (size < len)
		fuse_reply_err(req, ERANGE);
	else
		fuse_reply_buf(req, value, len);
}

static void mfs_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	struct mfs *m = mfs_of(req);
	struct cache_msg msg;
	int64_t folder;
	uint32_t uid;
	char num[16];

	if (!msg_of(m, ino, &folder, &uid) || strncmp(name, "user.", 5) != 0) {
		fuse_reply_err(req, ENODATA);
		return;
	}
	if (cache_msg_get(m->cache, folder, uid, &msg) < 0) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	if (!strcmp(name, "user.mail.flags") && (m->store->caps & STORE_CAP_FLAGS)) {
		reply_xattr_value(req, msg.flags, strlen(msg.flags), size);
	} else if (!strcmp(name, "user.mail.uid") && (m->store->caps & STORE_CAP_FLAGS)) {
		int n = snprintf(num, sizeof(num), "%u", uid);

		reply_xattr_value(req, num, (size_t)n, size);
	} else if (!strcmp(name, "user.mail.message_id") && msg.message_id &&
		   (m->store->caps & STORE_CAP_FLAGS)) {
		reply_xattr_value(req, msg.message_id, strlen(msg.message_id), size);
	} else if (!strcmp(name, "user.mime_type")) {
		reply_xattr_value(req, "message/rfc822", 14, size);
	} else {
		fuse_reply_err(req, ENODATA);
	}
	cache_msg_clear(&msg);
}

static void mfs_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	struct mfs *m = mfs_of(req);
	struct cache_msg msg;
	int64_t folder;
	uint32_t uid;
	char list[128];
	size_t len = 0;

	if (msg_of(m, ino, &folder, &uid)) {
		if (cache_msg_get(m->cache, folder, uid, &msg) < 0) {
			fuse_reply_err(req, ENOENT);
			return;
		}
		for (size_t i = 0; i < sizeof(xattr_names) / sizeof(xattr_names[0]); i++) {
			if (i < 3 && !(m->store->caps & STORE_CAP_FLAGS))
				continue;
			if (i == 2 && !msg.message_id)
				continue;
			memcpy(list + len, xattr_names[i], strlen(xattr_names[i]) + 1);
			len += strlen(xattr_names[i]) + 1;
		}
		cache_msg_clear(&msg);
	}
	reply_xattr_value(req, list, len, size);
}

static void done_reply_err(void *ctx, enum store_error err, bool changed)
{
	struct parked *p = ctx;

	(void)changed;
	fuse_reply_err(p->req, store_errno(err));
	free(p);
}

static void mfs_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
			 const char *value, size_t size, int flags)
{
	struct mfs *m = mfs_of(req);
	int64_t folder;
	uint32_t uid;

	if (!msg_of(m, ino, &folder, &uid) || strncmp(name, "user.", 5) != 0) {
		fuse_reply_err(req, m->ro ? EROFS : ENOTSUP);
		return;
	}
	if (strcmp(name, "user.mail.flags") != 0) {
		/* uid, message_id and mime_type are facts, not settings. */
		fuse_reply_err(req, m->ro ? EROFS : EACCES);
		return;
	}
	if (ro_or(m, req, m->store->ops->set_flags != NULL))
		return;
	if (flags & XATTR_CREATE) {
		fuse_reply_err(req, EEXIST);
		return;
	}
	struct parked *p = park(req, ino, NULL);
	char *v = malloc(size + 1);
	if (!p || !v) {
		free(p);
		free(v);
		fuse_reply_err(req, ENOMEM);
		return;
	}
	memcpy(v, value, size);
	v[size] = '\0';
	/* Flags are atoms separated by spaces; anything else is refused
	 * here rather than by the server. */
	for (char *q = v; *q; q++) {
		if (*q == '\n' || *q == '\t' || *q == ',')
			*q = ' ';
		else if ((unsigned char)*q < ' ' || *q == '(' || *q == ')' || *q == '"' ||
			 *q == '{' || (unsigned char)*q >= 127) {
			free(v);
			free(p);
			fuse_reply_err(req, EINVAL);
			return;
		}
	}
	m->store->ops->set_flags(m->store, folder, uid, v, done_reply_err, p);
	free(v);
}

static void mfs_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	struct mfs *m = mfs_of(req);

	int64_t folder;
	uint32_t uid;

	if (ino_msg(ino, &folder, &uid) && !strcmp(name, "user.mail.flags")) {
		/* Removing the flags attribute clears every flag. */
		mfs_setxattr(req, ino, name, "", 0, 0);
		return;
	}
	fuse_reply_err(req, m->ro ? EROFS : strncmp(name, "user.", 5) ? ENOTSUP : EACCES);
}

/* ---- changes ---- */

static void mfs_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
			struct fuse_file_info *fi)
{
	struct mfs *m = mfs_of(req);
	struct stat st;
	uint64_t gen;
	struct new_fh *n;

	/* `echo > .mailfs/sync` truncates: harmless. */
	if (ino == INO_SYNC) {
		get_attr(m, ino, &st, &gen);
		fuse_reply_attr(req, &st, TIMEOUT);
		return;
	}
	pthread_mutex_lock(&m->lock);
	n = fi && fh_of(fi)->kind == FH_NEW ? (struct new_fh *)fh_of(fi) : new_find_ino(m, ino);
	if (n) {
		int err = 0;

		if ((to_set & FUSE_SET_ATTR_SIZE) && !n->appended &&
		    ftruncate(n->fd, attr->st_size) < 0)
			err = errno;
		else if ((to_set & FUSE_SET_ATTR_SIZE) && n->appended)
			err = EACCES;
		if (to_set & FUSE_SET_ATTR_MTIME)
			n->mtime = (to_set & FUSE_SET_ATTR_MTIME_NOW) ? time(NULL) : attr->st_mtime;
		if (!err)
			new_attr(m, n, &st);
		pthread_mutex_unlock(&m->lock);
		if (err)
			fuse_reply_err(req, err);
		else
			fuse_reply_attr(req, &st, 0);
		return;
	}
	pthread_mutex_unlock(&m->lock);
	if (m->ro) {
		fuse_reply_err(req, EROFS);
		return;
	}
	if (get_attr(m, ino, &st, &gen) != 0) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	/* Messages are immutable; times, modes and owners are the mount's.
	 * Tools that copy attributes (cp -p, rsync -a) set them anyway:
	 * accept those as no-ops, refuse only a change of content. */
	if (to_set & FUSE_SET_ATTR_SIZE) {
		fuse_reply_err(req, S_ISDIR(st.st_mode) ? EISDIR : EACCES);
		return;
	}
	fuse_reply_attr(req, &st, TIMEOUT);
}

static void entry_ready_folder(void *ctx, enum store_error err, bool changed)
{
	struct parked *p = ctx;
	struct cache_folder f;
	struct fuse_entry_param e;
	struct stat st;

	(void)changed;
	if (err != STORE_OK) {
		fuse_reply_err(p->req, store_errno(err));
	} else if (cache_folder_lookup(p->m->cache, p->folder_id, p->name, &f) < 0) {
		fuse_reply_err(p->req, EIO);
	} else {
		attr_dir(p->m, folder_ino(f.id), &st);
		fill_entry(&e, folder_ino(f.id), &st, 1);
		cache_folder_clear(&f);
		fuse_reply_entry(p->req, &e);
	}
	free(p);
}

static void mfs_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	struct mfs *m = mfs_of(req);
	struct cache_folder f;
	int64_t folder;

	(void)mode;
	if (parent == INO_CTL || !ino_folder(parent, &folder)) {
		fuse_reply_err(req, m->ro ? EROFS : EPERM);
		return;
	}
	if (ro_or(m, req, m->store->ops->mkdir != NULL))
		return;
	if (name[0] == '.') {
		/* Our names never start with '.'; such a folder could not be
		 * shown under its own name. */
		fuse_reply_err(req, EPERM);
		return;
	}
	if (cache_folder_lookup(m->cache, folder, name, &f) == 0) {
		cache_folder_clear(&f);
		fuse_reply_err(req, EEXIST);
		return;
	}
	struct parked *p = park(req, parent, name);
	if (!p) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	p->folder_id = folder;
	m->store->ops->mkdir(m->store, folder, name, entry_ready_folder, p);
}

/* The server found mail the cache had not seen yet: not empty. */
static void rmdir_done(void *ctx, enum store_error err, bool not_empty)
{
	struct parked *p = ctx;

	fuse_reply_err(p->req, not_empty ? ENOTEMPTY : store_errno(err));
	free(p);
}

static void mfs_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct mfs *m = mfs_of(req);
	struct cache_folder f, *kids;
	size_t nkids = 0;
	int64_t folder;

	if (parent == INO_ROOT && !strcmp(name, CTL_NAME)) {
		fuse_reply_err(req, m->ro ? EROFS : EPERM);
		return;
	}
	if (!ino_folder(parent, &folder) || cache_folder_lookup(m->cache, folder, name, &f) < 0) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	if (ro_or(m, req, m->store->ops->rmdir != NULL)) {
		cache_folder_clear(&f);
		return;
	}
	if (cache_folder_children(m->cache, f.id, 0, 1, &kids, &nkids) == 0)
		cache_folder_list_free(kids, nkids);
	if (nkids > 0 || cache_msg_count(m->cache, f.id) > 0) {
		cache_folder_clear(&f);
		fuse_reply_err(req, ENOTEMPTY);
		return;
	}
	struct parked *p = park(req, parent, name);
	if (!p) {
		cache_folder_clear(&f);
		fuse_reply_err(req, ENOMEM);
		return;
	}
	m->store->ops->rmdir(m->store, f.id, rmdir_done, p);
	cache_folder_clear(&f);
}

static void mfs_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct mfs *m = mfs_of(req);
	struct cache_msg msg;
	struct new_fh *n;
	int64_t folder;

	/* A temporary file given up (rsync after a failure): never stored. */
	if (ino_folder(parent, &folder) && (n = take_deferred(m, folder, name))) {
		pthread_mutex_lock(&m->lock);
		new_unlink_locked(m, n);
		pthread_mutex_unlock(&m->lock);
		new_free(n);
		fuse_reply_err(req, 0);
		return;
	}

	if (!ino_folder(parent, &folder) || folder == 0 ||
	    cache_msg_lookup(m->cache, folder, name, &msg) < 0) {
		fuse_reply_err(req, parent == INO_CTL ? (m->ro ? EROFS : EPERM) : ENOENT);
		return;
	}
	uint32_t uid = msg.uid;
	cache_msg_clear(&msg);
	if (ro_or(m, req, m->store->ops->remove != NULL))
		return;
	struct parked *p = park(req, parent, name);
	if (!p) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	m->store->ops->remove(m->store, folder, uid, done_reply_err, p);
}

static void move_done(void *ctx, enum store_error err, bool changed)
{
	struct parked *p = ctx;
	struct cache_msg msg;

	(void)changed;
	if (err == STORE_OK && cache_msg_lookup(p->m->cache, p->to_folder_id, p->name, &msg) == 0) {
		note_moved(p->m, msg_ino(p->folder_id, p->uid), msg_ino(p->to_folder_id, msg.uid));
		cache_msg_clear(&msg);
	}
	fuse_reply_err(p->req, store_errno(err));
	free(p);
}

/* Rename message p->uid of p->folder_id to p->name in p->to_folder_id,
 * replying to p->req. */
static void rename_msg(struct parked *p)
{
	struct mfs *m = p->m;
	struct cache_msg old;

	if (p->folder_id != p->to_folder_id) {
		m->store->ops->move(m->store, p->folder_id, p->uid, p->to_folder_id, p->name,
				    move_done, p);
		return;
	}
	/* The name is ours, not the server's: rename locally. */
	if (cache_msg_get(m->cache, p->folder_id, p->uid, &old) < 0) {
		fuse_reply_err(p->req, ENOENT);
		free(p);
		return;
	}
	int r = cache_msg_rename(m->cache, p->folder_id, p->uid, p->name);
	if (r == 0) {
		note_push(m, folder_ino(p->folder_id), old.name, 0);
		note_push(m, folder_ino(p->folder_id), p->name, 0);
	}
	cache_msg_clear(&old);
	fuse_reply_err(p->req, r < 0 ? -r : 0);
	free(p);
}

static void rename_victim_gone(void *ctx, enum store_error err, bool changed)
{
	struct parked *p = ctx;

	(void)changed;
	if (err != STORE_OK && err != STORE_ERR_NOTFOUND) {
		fuse_reply_err(p->req, store_errno(err));
		free(p);
		return;
	}
	rename_msg(p);
}

static void tmpfile_victim_gone(void *ctx, enum store_error err, bool changed)
{
	struct parked *p = ctx;
	struct new_fh *n = p->newfile;

	(void)changed;
	if (err != STORE_OK && err != STORE_ERR_NOTFOUND) {
		pthread_mutex_lock(&p->m->lock);
		n->appending = false; /* still waiting; stored later as it is */
		pthread_mutex_unlock(&p->m->lock);
		fuse_reply_err(p->req, store_errno(err));
	} else {
		append_new(p->m, p->req, n);
	}
	free(p);
}

/* rename(".name.XXXXXX", "name"): the temporary file becomes a message
 * under its real name, with the mtime set since it was closed. */
static void rename_tmpfile(struct mfs *m, fuse_req_t req, struct new_fh *n, int64_t to,
			   const char *newname, unsigned int flags)
{
	struct cache_msg victim;
	struct cache_folder f;
	uint32_t victim_uid = 0;
	int err = 0;

	if (cache_folder_lookup(m->cache, to, newname, &f) == 0) {
		cache_folder_clear(&f);
		err = EEXIST;
	} else if (cache_msg_lookup(m->cache, to, newname, &victim) == 0) {
		victim_uid = victim.uid;
		cache_msg_clear(&victim);
		if (flags & RENAME_NOREPLACE)
			err = EEXIST;
	}
	n->final_name = err ? NULL : strdup(newname);
	if (!err && !n->final_name)
		err = ENOMEM;
	if (err) {
		pthread_mutex_lock(&m->lock);
		n->appending = false;
		pthread_mutex_unlock(&m->lock);
		fuse_reply_err(req, err);
		return;
	}
	n->final_folder = to;
	if (!victim_uid) {
		append_new(m, req, n);
		return;
	}
	struct parked *p = park(req, folder_ino(to), newname);
	if (!p) {
		pthread_mutex_lock(&m->lock);
		n->appending = false;
		pthread_mutex_unlock(&m->lock);
		fuse_reply_err(req, ENOMEM);
		return;
	}
	p->newfile = n;
	m->store->ops->remove(m->store, to, victim_uid, tmpfile_victim_gone, p);
}

static void mfs_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
		       fuse_ino_t newparent, const char *newname, unsigned int flags)
{
	struct mfs *m = mfs_of(req);
	struct cache_folder f, dst;
	struct cache_msg msg;
	int64_t from, to;

	if (flags & RENAME_EXCHANGE) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	if (!ino_folder(parent, &from) || !ino_folder(newparent, &to) ||
	    parent == INO_CTL || newparent == INO_CTL) {
		fuse_reply_err(req, m->ro ? EROFS : EPERM);
		return;
	}
	if (m->ro) {
		fuse_reply_err(req, EROFS);
		return;
	}
	struct new_fh *tmpfile = to != 0 ? take_deferred(m, from, name) : NULL;
	if (tmpfile) {
		rename_tmpfile(m, req, tmpfile, to, newname, flags);
		return;
	}
	/* A folder is never replaced (its mail would go); a message only
	 * the way rename(2) says, by removing the one that had the name. */
	if (cache_folder_lookup(m->cache, to, newname, &dst) == 0) {
		cache_folder_clear(&dst);
		fuse_reply_err(req, EEXIST);
		return;
	}
	uint32_t victim = 0;
	if (to != 0 && cache_msg_lookup(m->cache, to, newname, &msg) == 0) {
		victim = msg.uid;
		cache_msg_clear(&msg);
		if (flags & RENAME_NOREPLACE) {
			fuse_reply_err(req, EEXIST);
			return;
		}
	}
	if (cache_folder_lookup(m->cache, from, name, &f) == 0) {
		int64_t id = f.id;

		cache_folder_clear(&f);
		if (ro_or(m, req, m->store->ops->rename_folder != NULL))
			return;
		if (newname[0] == '.') {
			fuse_reply_err(req, EPERM);
			return;
		}
		/* A folder cannot move into itself or its descendants. */
		for (int64_t a = to; a != 0;) {
			struct cache_folder af;

			if (a == id) {
				fuse_reply_err(req, EINVAL);
				return;
			}
			if (cache_folder_get(m->cache, a, &af) < 0)
				break;
			a = af.parent_id;
			cache_folder_clear(&af);
		}
		struct parked *p = park(req, parent, name);
		if (!p) {
			fuse_reply_err(req, ENOMEM);
			return;
		}
		m->store->ops->rename_folder(m->store, id, to, newname, done_reply_err, p);
		return;
	}
	if (from == 0 || cache_msg_lookup(m->cache, from, name, &msg) < 0) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	uint32_t uid = msg.uid;
	cache_msg_clear(&msg);
	if (to == 0) {
		fuse_reply_err(req, EPERM);
		return;
	}
	if (from == to && victim == uid) {
		fuse_reply_err(req, 0); /* rename to itself */
		return;
	}
	if (from != to && ro_or(m, req, m->store->ops->move != NULL))
		return;
	if (victim && ro_or(m, req, m->store->ops->remove != NULL))
		return;
	struct parked *p = park(req, newparent, newname);
	if (!p) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	p->folder_id = from;
	p->uid = uid;
	p->to_folder_id = to;
	if (victim)
		m->store->ops->remove(m->store, to, victim, rename_victim_gone, p);
	else
		rename_msg(p);
}

static void mfs_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		      dev_t rdev)
{
	(void)parent;
	(void)name;
	(void)mode;
	(void)rdev;
	fuse_reply_err(req, mfs_of(req)->ro ? EROFS : EPERM);
}

static void mfs_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
	(void)link;
	(void)parent;
	(void)name;
	fuse_reply_err(req, mfs_of(req)->ro ? EROFS : EPERM);
}

static void mfs_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
	(void)ino;
	(void)newparent;
	(void)newname;
	fuse_reply_err(req, mfs_of(req)->ro ? EROFS : EPERM);
}

/* ---- the rest ---- */

static void mfs_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct mfs *m = mfs_of(req);
	struct statvfs sv;
	uint64_t used = cache_bytes(m->cache);
	uint64_t total = m->cache_limit > used ? m->cache_limit : used;

	(void)ino;
	memset(&sv, 0, sizeof(sv));
	sv.f_bsize = 4096;
	sv.f_frsize = 4096;
	sv.f_blocks = total / 4096;
	sv.f_bfree = sv.f_bavail = (total - used) / 4096;
	sv.f_files = 1u << 20;
	sv.f_ffree = sv.f_favail = 1u << 19;
	sv.f_namemax = 255;
	fuse_reply_statfs(req, &sv);
}

static void mfs_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	/* Inode numbers are derived: nothing is kept per inode. */
	(void)ino;
	(void)nlookup;
	fuse_reply_none(req);
}

static void mfs_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	(void)count;
	(void)forgets;
	fuse_reply_none(req);
}

static void mfs_init(void *userdata, struct fuse_conn_info *conn)
{
	(void)userdata;
	/* Bodies are plain files: let the kernel take pages by splice. */
	if (conn->capable & FUSE_CAP_SPLICE_WRITE)
		conn->want |= FUSE_CAP_SPLICE_WRITE;
	if (conn->capable & FUSE_CAP_SPLICE_MOVE)
		conn->want |= FUSE_CAP_SPLICE_MOVE;
	/* Always READDIRPLUS: the kernel's "auto" mode falls back to plain
	 * READDIR after the first batch, and then every file of a folder
	 * costs a LOOKUP round trip when grep -r or find stats it. */
	if (conn->capable & FUSE_CAP_READDIRPLUS)
		conn->want |= FUSE_CAP_READDIRPLUS;
	conn->want &= ~FUSE_CAP_READDIRPLUS_AUTO;
}

static const struct fuse_lowlevel_ops ops = {
	.init = mfs_init,
	.lookup = mfs_lookup,
	.forget = mfs_forget,
	.forget_multi = mfs_forget_multi,
	.getattr = mfs_getattr,
	.setattr = mfs_setattr,
	.mknod = mfs_mknod,
	.mkdir = mfs_mkdir,
	.unlink = mfs_unlink,
	.rmdir = mfs_rmdir,
	.flush = mfs_flush,
	.symlink = mfs_symlink,
	.rename = mfs_rename,
	.link = mfs_link,
	.open = mfs_open,
	.read = mfs_read,
	.write = mfs_write,
	.release = mfs_release,
	.readdir = mfs_readdir,
	.readdirplus = mfs_readdirplus,
	.statfs = mfs_statfs,
	.setxattr = mfs_setxattr,
	.getxattr = mfs_getxattr,
	.listxattr = mfs_listxattr,
	.removexattr = mfs_removexattr,
	.create = mfs_create,
};

const struct fuse_lowlevel_ops *mfs_ops(void)
{
	return &ops;
}

struct mfs *mfs_new(const struct mfs_opts *o)
{
	struct mfs *m = calloc(1, sizeof(*m));

	if (!m)
		return NULL;
	m->cache = o->cache;
	m->store = o->store;
	m->ro = o->ro;
	m->cache_limit = o->cache_limit;
	m->tmp_dir = strdup(o->tmp_dir);
	m->uid = getuid();
	m->gid = getgid();
	m->started = time(NULL);
	pthread_mutex_init(&m->lock, NULL);
	pthread_cond_init(&m->cond, NULL);
	return m;
}

int mfs_start(struct mfs *m, struct fuse_session *se)
{
	struct store_events ev = {
		.ctx = m,
		.entry_changed = ev_entry_changed,
		.message_changed = ev_message_changed,
	};

	m->se = se;
	if (pthread_create(&m->notifier, NULL, notifier_main, m) != 0)
		return -EAGAIN;
	m->notifier_running = true;
	return m->store->ops->start(m->store, &ev);
}

void mfs_drain(struct mfs *m)
{
	bool waiting = true;

	pthread_mutex_lock(&m->lock);
	for (struct new_fh *n = m->news; n; n = n->next)
		if (n->deferred && n->released)
			n->released_at = 0;
	pthread_mutex_unlock(&m->lock);
	append_overdue(m);
	/* The engine is still running: wait (bounded) for its answers. */
	for (int i = 0; i < 600 && waiting; i++) {
		pthread_mutex_lock(&m->lock);
		waiting = false;
		for (struct new_fh *n = m->news; n; n = n->next)
			waiting |= n->deferred && n->released;
		pthread_mutex_unlock(&m->lock);
		if (waiting) {
			struct timespec ts = { 0, 50 * 1000 * 1000 };

			nanosleep(&ts, NULL);
		}
	}
	if (waiting)
		log_error("unmounting with temporary files not yet stored on the server");
}

void mfs_destroy(struct mfs **mp)
{
	struct mfs *m = *mp;

	if (!m)
		return;
	pthread_mutex_lock(&m->lock);
	m->stopping = true;
	pthread_cond_signal(&m->cond);
	pthread_mutex_unlock(&m->lock);
	if (m->notifier_running)
		pthread_join(m->notifier, NULL);
	while (m->notes) {
		struct note *n = m->notes;

		m->notes = n->next;
		free(n->name);
		free(n);
	}
	while (m->news) {
		struct new_fh *n = m->news;

		m->news = n->next;
		new_free(n);
	}
	pthread_mutex_destroy(&m->lock);
	pthread_cond_destroy(&m->cond);
	free(m->tmp_dir);
	free(m);
	*mp = NULL;
}
