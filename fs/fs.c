/* fs.c: the FUSE layer (see fs.h).
 *
 * Every handler ends in exactly one fuse_reply_*, either at once (from the
 * cache) or later from a store callback on an engine thread.  Kernel cache
 * invalidations go through one notifier thread with a queue: calling them
 * from a handler, or while a handler waits for us, can deadlock (see
 * FUSE-NOTES.md 2).  Open files are in fs-files.c, changes in
 * fs-changes.c. */
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

#include "fs-private.h"
#include "log.h"

/* A message inode that no longer exists because mv moved it: the
 * message's inode now.  Returns false when it was not moved. */
static bool moved_to(struct mfs *m, fuse_ino_t ino, int64_t *folder_r, uint32_t *uid_r)
{
	fuse_ino_t at = ino, last = 0;

	/* Newest first, and along a chain (moved, then given its server UID
	 * by the journal's replay, then moved again): the first hop that is
	 * a message now.  A few hops at most, never back to the start. */
	for (int hop = 0; hop < 4; hop++) {
		fuse_ino_t next = 0;
		struct cache_msg msg;

		pthread_mutex_lock(&m->lock);
		for (unsigned k = 1; k <= MOVED_MAX && !next; k++) {
			unsigned i = (m->moved_next + MOVED_MAX - k) % MOVED_MAX;

			if (m->moved[i].from == at)
				next = m->moved[i].to;
		}
		pthread_mutex_unlock(&m->lock);
		if (!next || next == ino || next == at)
			break;
		last = at = next;
		if (cache_msg_get(m->cache, (int64_t)(next >> 32), (uint32_t)(next & 0xffffffffu),
				  &msg) == 0) {
			cache_msg_clear(&msg);
			break;
		}
	}
	if (!last)
		return false;
	*folder_r = (int64_t)(last >> 32);
	*uid_r = (uint32_t)(last & 0xffffffffu);
	return true;
}

void mfs_note_moved(struct mfs *m, fuse_ino_t from, fuse_ino_t to)
{
	pthread_mutex_lock(&m->lock);
	m->moved[m->moved_next].from = from;
	m->moved[m->moved_next].to = to;
	m->moved_next = (m->moved_next + 1) % MOVED_MAX;
	pthread_mutex_unlock(&m->lock);
}

/* A message inode's (folder, UID), following moves. */
bool mfs_msg_of(struct mfs *m, fuse_ino_t ino, int64_t *folder_r, uint32_t *uid_r)
{
	struct cache_msg msg;

	/* A new file that became a message (see mfs_get_attr). */
	if (ino >= 1000 && ino < (fuse_ino_t)1 << 32)
		return moved_to(m, ino, folder_r, uid_r);
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
int mfs_store_errno(enum store_error e)
{
	switch (e) {
	case STORE_OK:
		return 0;
	case STORE_ERR_NOTFOUND:
		return ENOENT;
	case STORE_ERR_QUOTA:
		return ENOSPC;
	case STORE_ERR_TOOBIG:
		return EFBIG;
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

void mfs_note_push(struct mfs *m, fuse_ino_t parent, const char *name, fuse_ino_t ino)
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

void fs_files_append_overdue(struct mfs *m);

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
				fs_files_append_overdue(m);
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

	mfs_note_push(m, folder_ino(folder_id), name, 0);
	/* The directory's size/mtime, for tools that watch them. */
	mfs_note_push(m, 0, NULL, folder_ino(folder_id));
}

static void ev_message_changed(void *ctx, int64_t folder_id, uint32_t uid)
{
	mfs_note_push(ctx, 0, NULL, msg_ino(folder_id, uid));
}

static void ev_message_moved(void *ctx, int64_t folder_id, uint32_t uid, int64_t to_folder_id,
			     uint32_t to_uid)
{
	mfs_note_moved(ctx, msg_ino(folder_id, uid), msg_ino(to_folder_id, to_uid));
}

/* ---- attributes ---- */

void mfs_attr_dir(struct mfs *m, fuse_ino_t ino, struct stat *st)
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

void mfs_attr_file(struct mfs *m, fuse_ino_t ino, uint64_t size, time_t mtime,
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

void mfs_attr_msg(struct mfs *m, const struct cache_msg *msg, struct stat *st)
{
	mfs_attr_file(m, msg_ino(msg->folder_id, msg->uid), msg->size, (time_t)msg->mtime,
		  0600, st);
}

char *mfs_status_text(struct mfs *m, size_t *len_r)
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
		     "state: %s\nserver: %s\npending: %u\ncache_bytes: %llu\narchive_bytes: %llu\n"
		     "last_sync: %s\nfetch_commands: %llu\ndropped: %u\n",
		     st.state, st.server, st.pending, (unsigned long long)cache_bytes(m->cache),
		     /* local-only folders (POP3's archive): not in cache_bytes */
		     (unsigned long long)cache_local_bytes(m->cache), when,
		     (unsigned long long)st.fetches, st.dropped);
	if (n < 0)
		return NULL;
	*len_r = (size_t)n;
	return text;
}

bool fs_files_attr_by_ino(struct mfs *m, fuse_ino_t ino, struct stat *st);
bool fs_files_entry_by_name(struct mfs *m, int64_t folder, const char *name,
			      struct fuse_entry_param *e);

/* Attributes of any inode: 0 or an errno. */
static int msg_attr(struct mfs *m, int64_t folder, uint32_t uid, struct stat *st,
		    uint64_t *generation_r)
{
	struct cache_msg msg;
	struct cache_folder f;

	if (cache_msg_get(m->cache, folder, uid, &msg) < 0)
		return ENOENT;
	mfs_attr_msg(m, &msg, st);
	cache_msg_clear(&msg);
	if (cache_folder_get(m->cache, folder, &f) == 0) {
		*generation_r = f.uidvalidity ? f.uidvalidity : 1;
		cache_folder_clear(&f);
	}
	return 0;
}

int mfs_get_attr(struct mfs *m, fuse_ino_t ino, struct stat *st, uint64_t *generation_r)
{
	int64_t folder;
	uint32_t uid;

	*generation_r = 1;
	if (ino == INO_ROOT || ino == INO_CTL) {
		mfs_attr_dir(m, ino, st);
		return 0;
	}
	if (ino == INO_STATUS) {
		size_t len = 0;
		char *t = mfs_status_text(m, &len);

		free(t);
		mfs_attr_file(m, ino, len, time(NULL), 0400, st);
		return 0;
	}
	if (ino == INO_SYNC) {
		/* Readable (as empty) so that tools walking the mount meet
		 * no "Permission denied". */
		mfs_attr_file(m, ino, 0, m->started, 0600, st);
		return 0;
	}
	if (ino < (fuse_ino_t)1 << 32) {
		if (fs_files_attr_by_ino(m, ino, st))
			return 0;
		/* A new file that became a message: after rename() the
		 * kernel may still ask by the temporary inode. */
		if (!moved_to(m, ino, &folder, &uid))
			return ENOENT;
		return msg_attr(m, folder, uid, st, generation_r);
	}
	if (ino_folder(ino, &folder)) {
		struct cache_folder f;

		if (cache_folder_get(m->cache, folder, &f) < 0)
			return ENOENT;
		cache_folder_clear(&f);
		mfs_attr_dir(m, ino, st);
		return 0;
	}
	if (mfs_msg_of(m, ino, &folder, &uid))
		return msg_attr(m, folder, uid, st, generation_r);
	return ENOENT;
}

void mfs_fill_entry(struct fuse_entry_param *e, fuse_ino_t ino, const struct stat *st,
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

struct parked *mfs_park(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	size_t nl = name ? strlen(name) : 0;
	struct parked *p = calloc(1, sizeof(*p) + nl + 1);

	if (!p) {
		fuse_reply_err(req, ENOMEM);
		return NULL;
	}
	p->m = mfs_of(req);
	p->req = req;
	p->ino = ino;
	if (name)
		memcpy(p->name, name, nl + 1);
	return p;
}

/* The change is refused here: EROFS on a read-only mount, EPERM when the
 * backend cannot do it.  True when it replied. */
bool mfs_ro_or(struct mfs *m, fuse_req_t req, bool supported)
{
	if (m->ro || !supported) {
		fuse_reply_err(req, m->ro ? EROFS : EPERM);
		return true;
	}
	return false;
}

/* A parked change is done: its errno is the reply. */
void mfs_done_reply_err(void *ctx, enum store_error err, bool changed)
{
	struct parked *p = ctx;

	(void)changed;
	fuse_reply_err(p->req, mfs_store_errno(err));
	free(p);
}

/* ---- lookup ---- */

static void lookup_in_folder(struct mfs *m, fuse_req_t req, int64_t folder, const char *name)
{
	struct cache_folder f;
	struct cache_msg msg;
	struct stat st;
	struct fuse_entry_param e;
	uint64_t gen = 1;

	if (folder != 0 && fs_files_entry_by_name(m, folder, name, &e)) {
		fuse_reply_entry(req, &e);
		return;
	}
	if (cache_folder_lookup(m->cache, folder, name, &f) == 0) {
		mfs_attr_dir(m, folder_ino(f.id), &st);
		mfs_fill_entry(&e, folder_ino(f.id), &st, 1);
		cache_folder_clear(&f);
		fuse_reply_entry(req, &e);
		return;
	}
	if (folder != 0 && cache_msg_lookup(m->cache, folder, name, &msg) == 0) {
		if (cache_folder_get(m->cache, folder, &f) == 0) {
			gen = f.uidvalidity ? f.uidvalidity : 1;
			cache_folder_clear(&f);
		}
		mfs_attr_msg(m, &msg, &st);
		mfs_fill_entry(&e, st.st_ino, &st, gen);
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
		fuse_reply_err(p->req, mfs_store_errno(err));
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
		mfs_get_attr(m, INO_CTL, &st, &gen);
		mfs_fill_entry(&e, INO_CTL, &st, gen);
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
		mfs_get_attr(m, ino, &st, &gen);
		mfs_fill_entry(&e, ino, &st, gen);
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
	struct parked *p = mfs_park(req, parent, name);
	if (!p)
		return;
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
	err = mfs_get_attr(m, ino, &st, &gen);
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

		mfs_fill_entry(&e, ino, st, gen);
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
			mfs_get_attr(m, ents[i].ino, &st, &gen);
			full = !add_entry(req, buf, size, &pos, plus, ents[i].name,
					  ents[i].ino, &st, gen, i + 1);
		}
		goto reply;
	}
	ino_folder(ino, &folder);
	if (off < 1) {
		mfs_attr_dir(m, ino, &st);
		full = !add_entry(req, buf, size, &pos, plus, ".", ino, &st, 1, 1);
		off = 1;
	}
	if (!full && off < 2) {
		mfs_attr_dir(m, INO_ROOT, &st);
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
			mfs_attr_dir(m, folder_ino(fl[i].id), &st);
			full = !add_entry(req, buf, size, &pos, plus, fl[i].name, folder_ino(fl[i].id),
					  &st, 1, 3 + fl[i].id);
			if (!full)
				off = 3 + fl[i].id;
		}
		cache_folder_list_free(fl, n);
	}
	if (!full && off < MSG_COOKIE) {
		if (folder == 0) {
			mfs_get_attr(m, INO_CTL, &st, &gen);
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
			uint64_t seq;
			char *adopted = NULL;

			/* A replacement under way is not listed: a walk (rsync, find)
			 * would see it vanish.  One an earlier session left (a kill
			 * -9 in the middle) gets its real name now. */
			if (fs_changes_is_replace_name(msgs[i].name, &seq)) {
				if (seq > m->replace_base ||
				    !(adopted = fs_changes_adopt_leftover(m, folder, msgs[i].uid,
									  msgs[i].name))) {
					off = MSG_COOKIE + msgs[i].uid;
					continue;
				}
				free(msgs[i].name);
				msgs[i].name = adopted;
			}
			mfs_attr_msg(m, &msgs[i], &st);
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
		fuse_reply_err(p->req, mfs_store_errno(err));
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
	struct parked *p = mfs_park(req, ino, NULL);
	if (!p)
		return;
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

/* ThreadSanitizer does not intercept splice(2), so it cannot see that a
 * reply spliced to the kernel comes before the request the kernel sends
 * next (a RELEASE that frees the handle the READ used).  Its build replies
 * by copy (writev), which it does see; every other build splices. */
#if defined(__SANITIZE_THREAD__)
#define MFS_SPLICE 0
#else
#define MFS_SPLICE 1
#endif

static void mfs_init(void *userdata, struct fuse_conn_info *conn)
{
	(void)userdata;
	/* Bodies are plain files: let the kernel take pages by splice. */
	if (MFS_SPLICE && (conn->capable & FUSE_CAP_SPLICE_WRITE))
		conn->want |= FUSE_CAP_SPLICE_WRITE;
	if (MFS_SPLICE && (conn->capable & FUSE_CAP_SPLICE_MOVE))
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
	.setattr = fs_changes_setattr,
	.mknod = fs_changes_mknod,
	.mkdir = fs_changes_mkdir,
	.unlink = fs_changes_unlink,
	.rmdir = fs_changes_rmdir,
	.flush = fs_files_flush,
	.symlink = fs_changes_symlink,
	.rename = fs_changes_rename,
	.link = fs_changes_link,
	.open = fs_files_open,
	.read = fs_files_read,
	.write = fs_files_write,
	.release = fs_files_release,
	.readdir = mfs_readdir,
	.readdirplus = mfs_readdirplus,
	.statfs = mfs_statfs,
	.setxattr = fs_changes_setxattr,
	.getxattr = fs_changes_getxattr,
	.listxattr = fs_changes_listxattr,
	.removexattr = fs_changes_removexattr,
	.create = fs_files_create,
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
	m->replace_base = m->replace_seq = (uint64_t)m->started * 1000000u;
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
		.message_moved = ev_message_moved,
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
	/* At unmount a temporary file would go with the mount: stored
	 * rather than lost, even one whose rename failed (keep_local). */
	for (struct new_fh *n = m->news; n; n = n->next)
		if (n->deferred && n->released) {
			n->released_at = 0;
			n->keep_local = false;
		}
	pthread_mutex_unlock(&m->lock);
	fs_files_append_overdue(m);
	/* The engine is still running: wait (bounded) for its answers.
	 * Whatever is not stored by then the store journals at its stop
	 * (the next mount sends it); longer would keep the next mount out. */
	for (int i = 0; i < 100 && waiting; i++) {
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
		log_info("unmounting with new files not yet stored on the server: they are "
			 "journaled and sent at the next mount");
}

void mfs_stop(struct mfs *m)
{
	if (!m)
		return;
	pthread_mutex_lock(&m->lock);
	m->stopping = true;
	pthread_cond_signal(&m->cond);
	pthread_mutex_unlock(&m->lock);
	if (m->notifier_running)
		pthread_join(m->notifier, NULL);
	m->notifier_running = false;
}

void mfs_destroy(struct mfs **mp)
{
	struct mfs *m = *mp;

	if (!m)
		return;
	mfs_stop(m);
	while (m->notes) {
		struct note *n = m->notes;

		m->notes = n->next;
		free(n->name);
		free(n);
	}
	while (m->news) {
		struct new_fh *n = m->news;

		m->news = n->next;
		fs_files_free(n);
	}
	fs_files_free_open(m);
	pthread_mutex_destroy(&m->lock);
	pthread_cond_destroy(&m->cond);
	free(m->tmp_dir);
	free(m);
	*mp = NULL;
}
