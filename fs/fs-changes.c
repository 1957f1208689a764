/* fs-changes.c: changes made through the mount (see fs-private.h): each
 * is checked locally, then parked with the store until the server has
 * confirmed it. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include "fs-private.h"
#include "log.h"

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

void fs_changes_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	struct mfs *m = mfs_of(req);
	struct cache_msg msg;
	int64_t folder;
	uint32_t uid;
	char num[16];

	if (!mfs_msg_of(m, ino, &folder, &uid) || strncmp(name, "user.", 5) != 0) {
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

void fs_changes_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	struct mfs *m = mfs_of(req);
	struct cache_msg msg;
	int64_t folder;
	uint32_t uid;
	char list[128];
	size_t len = 0;

	if (mfs_msg_of(m, ino, &folder, &uid)) {
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

void fs_changes_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
			 const char *value, size_t size, int flags)
{
	struct mfs *m = mfs_of(req);
	int64_t folder;
	uint32_t uid;

	if (!mfs_msg_of(m, ino, &folder, &uid) || strncmp(name, "user.", 5) != 0) {
		fuse_reply_err(req, m->ro ? EROFS : ENOTSUP);
		return;
	}
	if (strcmp(name, "user.mail.flags") != 0) {
		/* uid, message_id and mime_type are facts, not settings. */
		fuse_reply_err(req, m->ro ? EROFS : EACCES);
		return;
	}
	if (mfs_ro_or(m, req, m->store->ops->set_flags != NULL))
		return;
	if (flags & XATTR_CREATE) {
		fuse_reply_err(req, EEXIST);
		return;
	}
	char *v = malloc(size + 1);
	if (!v) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	struct parked *p = mfs_park(req, ino, NULL);
	if (!p) {
		free(v);
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
	m->store->ops->set_flags(m->store, folder, uid, v, mfs_done_reply_err, p);
	free(v);
}

void fs_changes_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	struct mfs *m = mfs_of(req);

	int64_t folder;
	uint32_t uid;

	if (ino_msg(ino, &folder, &uid) && !strcmp(name, "user.mail.flags")) {
		/* Removing the flags attribute clears every flag. */
		fs_changes_setxattr(req, ino, name, "", 0, 0);
		return;
	}
	fuse_reply_err(req, m->ro ? EROFS : strncmp(name, "user.", 5) ? ENOTSUP : EACCES);
}

/* ---- changes ---- */

void fs_changes_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
			struct fuse_file_info *fi)
{
	struct mfs *m = mfs_of(req);
	struct stat st;
	uint64_t gen;
	struct new_fh *n;

	/* `echo > .mailfs/sync` truncates: harmless. */
	if (ino == INO_SYNC) {
		mfs_get_attr(m, ino, &st, &gen);
		fuse_reply_attr(req, &st, TIMEOUT);
		return;
	}
	pthread_mutex_lock(&m->lock);
	n = fi && fs_files_fh(fi)->kind == FH_NEW ? (struct new_fh *)fs_files_fh(fi) : fs_files_find_ino(m, ino);
	if (n) {
		int err = 0;

		/* As write: not while an APPEND reads it, nor after. */
		if ((to_set & FUSE_SET_ATTR_SIZE) && (n->appended || n->appending))
			err = EACCES;
		else if ((to_set & FUSE_SET_ATTR_SIZE) && ftruncate(n->fd, attr->st_size) < 0)
			err = errno;
		if (to_set & FUSE_SET_ATTR_MTIME)
			n->mtime = (to_set & FUSE_SET_ATTR_MTIME_NOW) ? time(NULL) : attr->st_mtime;
		if (!err)
			fs_files_attr(m, n, &st);
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
	if (mfs_get_attr(m, ino, &st, &gen) != 0) {
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
		fuse_reply_err(p->req, mfs_store_errno(err));
	} else if (cache_folder_lookup(p->m->cache, p->folder_id, p->name, &f) < 0) {
		fuse_reply_err(p->req, EIO);
	} else {
		mfs_attr_dir(p->m, folder_ino(f.id), &st);
		mfs_fill_entry(&e, folder_ino(f.id), &st, 1);
		cache_folder_clear(&f);
		fuse_reply_entry(p->req, &e);
	}
	free(p);
}

void fs_changes_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	struct mfs *m = mfs_of(req);
	struct cache_folder f;
	int64_t folder;

	(void)mode;
	if (parent == INO_CTL || !ino_folder(parent, &folder)) {
		fuse_reply_err(req, m->ro ? EROFS : EPERM);
		return;
	}
	if (mfs_ro_or(m, req, m->store->ops->mkdir != NULL))
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
	struct parked *p = mfs_park(req, parent, name);
	if (!p)
		return;
	p->folder_id = folder;
	m->store->ops->mkdir(m->store, folder, name, entry_ready_folder, p);
}

/* The server found mail the cache had not seen yet: not empty. */
static void rmdir_done(void *ctx, enum store_error err, bool not_empty)
{
	struct parked *p = ctx;

	fuse_reply_err(p->req, not_empty ? ENOTEMPTY : mfs_store_errno(err));
	free(p);
}

void fs_changes_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
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
	if (mfs_ro_or(m, req, m->store->ops->rmdir != NULL)) {
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
	struct parked *p = mfs_park(req, parent, name);
	if (!p) {
		cache_folder_clear(&f);
		return;
	}
	m->store->ops->rmdir(m->store, f.id, rmdir_done, p);
	cache_folder_clear(&f);
}

void fs_changes_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct mfs *m = mfs_of(req);
	struct cache_msg msg;
	struct new_fh *n;
	int64_t folder;

	/* A temporary file given up (rsync after a failure): never stored. */
	if (ino_folder(parent, &folder) && (n = fs_files_take_deferred(m, folder, name))) {
		fs_files_drop(m, n);
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
	if (mfs_ro_or(m, req, m->store->ops->remove != NULL))
		return;
	struct parked *p = mfs_park(req, parent, name);
	if (!p)
		return;
	m->store->ops->remove(m->store, folder, uid, mfs_done_reply_err, p);
}

static void move_done(void *ctx, enum store_error err, bool changed)
{
	struct parked *p = ctx;
	struct cache_msg msg;

	(void)changed;
	if (err == STORE_OK && cache_msg_lookup(p->m->cache, p->to_folder_id, p->name, &msg) == 0) {
		mfs_note_moved(p->m, msg_ino(p->folder_id, p->uid), msg_ino(p->to_folder_id, msg.uid));
		cache_msg_clear(&msg);
	}
	fuse_reply_err(p->req, mfs_store_errno(err));
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
		mfs_note_push(m, folder_ino(p->folder_id), old.name, 0);
		mfs_note_push(m, folder_ino(p->folder_id), p->name, 0);
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
		fuse_reply_err(p->req, mfs_store_errno(err));
		free(p);
		return;
	}
	rename_msg(p);
}

/* ---- rename() onto an existing message ----
 * rename(2) leaves the target either old or new.  So the new message
 * reaches the server first (APPEND or MOVE) under a temporary name of ours,
 * and only then does the old one go and the new one take its name: a
 * failure on the way leaves the old one in place (and its flags).  The
 * journal gets the entries in the same order when offline. */

static void replace_free(struct parked *p)
{
	free(p->hidden);
	free(p->tmp_name);
	free(p);
}

/* ".mailfs-N-NAME": no sync makes a name starting with '.' (names.c), the
 * counter keeps two replacements apart, and NAME says what it is to
 * anyone who finds one (a crash in the middle; unsent/ after a refusal). */
static char *replace_tmp_name(struct mfs *m, int64_t folder, const char *name)
{
	size_t len = strlen(name);

	/* Cut on a character boundary so that it stays a file name. */
	if (len > 200) {
		len = 200;
		while (len > 0 && ((unsigned char)name[len] & 0xc0) == 0x80)
			len--;
	}
	for (int tries = 0; tries < 100; tries++) {
		uint64_t seq = __atomic_add_fetch(&m->replace_seq, 1, __ATOMIC_RELAXED);
		struct cache_msg taken;
		char *t = NULL;

		if (asprintf(&t, ".mailfs-%llu-%.*s", (unsigned long long)seq, (int)len, name) < 0)
			return NULL;
		if (cache_msg_lookup(m->cache, folder, t, &taken) < 0)
			return t;
		cache_msg_clear(&taken); /* left by an earlier session */
		free(t);
	}
	return NULL;
}

/* "NAME (2).eml", ...: a visible name for a new message that could not
 * take the old one's. */
static char *replace_free_name(struct mfs *m, int64_t folder, const char *name)
{
	size_t len = strlen(name);
	size_t stem = len > 4 && !strcmp(name + len - 4, ".eml") ? len - 4 : len;

	for (unsigned n = 2; n < 1000; n++) {
		struct cache_msg taken;
		char *cand = NULL;

		if (asprintf(&cand, "%.*s (%u).eml", (int)(stem > 230 ? 230 : stem), name, n) < 0)
			return NULL;
		if (cache_msg_lookup(m->cache, folder, cand, &taken) < 0)
			return cand;
		cache_msg_clear(&taken);
		free(cand);
	}
	return NULL;
}

bool fs_changes_is_replace_name(const char *name, uint64_t *seq_r)
{
	char *end;

	if (strncmp(name, ".mailfs-", 8) != 0 || name[8] < '0' || name[8] > '9')
		return false;
	*seq_r = strtoull(name + 8, &end, 10);
	return *end == '-';
}

/* Rename row uid to `name`, or if that is taken, to a free "NAME (n).eml":
 * a name that stays visible.  The name it got (to free), or NULL. */
static char *rename_visible(struct mfs *m, int64_t folder, uint32_t uid, const char *old,
			    const char *name)
{
	char *got = strdup(name);

	if (got && cache_msg_rename(m->cache, folder, uid, got) < 0) {
		free(got);
		got = replace_free_name(m, folder, name);
		if (got && cache_msg_rename(m->cache, folder, uid, got) < 0) {
			free(got);
			got = NULL;
		}
		if (got)
			log_warn("%s is taken: the new message is %s", name, got);
	}
	if (got) {
		mfs_note_push(m, folder_ino(folder), old, 0);
		mfs_note_push(m, folder_ino(folder), got, 0);
	}
	return got;
}

char *fs_changes_adopt_leftover(struct mfs *m, int64_t folder, uint32_t uid, const char *name)
{
	const char *real = strchr(name + 8, '-') + 1;

	log_info("%s: a replacement left by an earlier session; it is %s again", name, real);
	return *real ? rename_visible(m, folder, uid, name, real) : NULL;
}

/* Give the new message (under p->tmp_name) the name `name`. */
static void replace_name(struct parked *p, const char *name)
{
	struct mfs *m = p->m;
	struct cache_msg nm;

	if (!name || cache_msg_lookup(m->cache, p->to_folder_id, p->tmp_name, &nm) < 0)
		return;
	free(rename_visible(m, p->to_folder_id, nm.uid, p->tmp_name, name));
	cache_msg_clear(&nm);
}

/* Is the new message in the cache under p->tmp_name?  Not without
 * APPENDUID/COPYUID: the sync lists it under a name of its own. */
static bool replace_known(struct parked *p)
{
	struct cache_msg nm;

	if (cache_msg_lookup(p->m->cache, p->to_folder_id, p->tmp_name, &nm) < 0) {
		log_warn("%s: the new message is on the server, but its UID is not known; the "
			 "old one is kept", p->name);
		return false;
	}
	cache_msg_clear(&nm);
	return true;
}

/* Swap names in one cache transaction: the new message (under `from`,
 * row new_uid) takes `to`, the old one (p->victim) goes to `victim_to`.
 * Undone by hand if the second rename fails (a batch cannot roll back). */
static bool replace_swap_names(struct parked *p, uint32_t new_uid, const char *to,
			       const char *victim_to, const char *victim_from)
{
	struct cache *c = p->m->cache;
	bool ok;

	if (cache_begin(c) < 0)
		return false;
	ok = cache_msg_rename(c, p->to_folder_id, p->victim, victim_to) == 0;
	if (ok && cache_msg_rename(c, p->to_folder_id, new_uid, to) < 0) {
		cache_msg_rename(c, p->to_folder_id, p->victim, victim_from);
		ok = false;
	}
	return cache_commit(c) == 0 && ok;
}

/* Before the old message is removed, the new one takes its name and the
 * old one a hidden one: NAME never looks missing (ENOENT) in between.
 * False when it could not be done: then the old one keeps NAME until it
 * is gone, and replace_name() follows. */
static bool replace_swap(struct parked *p)
{
	struct mfs *m = p->m;
	struct cache_msg nm;
	bool ok = false;

	if (cache_msg_lookup(m->cache, p->to_folder_id, p->tmp_name, &nm) < 0)
		return false;
	p->hidden = replace_tmp_name(m, p->to_folder_id, p->name);
	if (p->hidden)
		ok = replace_swap_names(p, nm.uid, p->name, p->hidden, p->name);
	if (ok) {
		mfs_note_push(m, folder_ino(p->to_folder_id), p->tmp_name, 0);
		mfs_note_push(m, folder_ino(p->to_folder_id), p->name, 0);
	} else {
		free(p->hidden);
		p->hidden = NULL;
	}
	cache_msg_clear(&nm);
	return ok;
}

/* The old one could not be removed after a swap: it gets NAME back, the
 * new one a name of its own.  That name (to free), or NULL. */
static char *replace_unswap(struct parked *p)
{
	struct mfs *m = p->m;
	char *other = replace_free_name(m, p->to_folder_id, p->name);
	struct cache_msg nm;

	if (!other || cache_msg_lookup(m->cache, p->to_folder_id, p->name, &nm) < 0) {
		free(other);
		return NULL;
	}
	if (replace_swap_names(p, nm.uid, other, p->name, p->hidden)) {
		mfs_note_push(m, folder_ino(p->to_folder_id), p->hidden, 0);
		mfs_note_push(m, folder_ino(p->to_folder_id), p->name, 0);
		mfs_note_push(m, folder_ino(p->to_folder_id), other, 0);
	} else {
		free(other);
		other = NULL;
	}
	cache_msg_clear(&nm);
	return other;
}

static void replace_victim_gone(void *ctx, enum store_error err, bool changed)
{
	struct parked *p = ctx;

	(void)changed;
	if (err != STORE_OK && err != STORE_ERR_NOTFOUND) {
		/* Both are on the server: the new one gets a name of its own. */
		char *other = p->hidden ? replace_unswap(p) : replace_free_name(p->m, p->to_folder_id,
										 p->name);

		if (!p->hidden)
			replace_name(p, other);
		log_warn("%s: the replaced message could not be removed; the new one is %s",
			 p->name, other ? other : p->hidden ? p->name : p->tmp_name);
		free(other);
		fuse_reply_err(p->req, mfs_store_errno(err));
		replace_free(p);
		return;
	}
	/* The old one's disappearance was notified by the store. */
	if (!p->hidden)
		replace_name(p, p->name);
	fuse_reply_err(p->req, 0);
	replace_free(p);
}

/* After rename() the kernel may still ask for the old message by its
 * inode: a stat(NAME) that found the old dentry just before the rename
 * replaced it, whose attributes the rename made stale (the kernel drops
 * the replaced inode's link and asks again).  Once the old one is gone
 * that inode answers as the message that took its name, as NAME does,
 * rather than ENOENT.  Unused while the old one exists (mfs_msg_of looks
 * for its row first), as when it cannot be removed. */
static void replace_note_successor(struct parked *p)
{
	struct cache_msg nm;

	if (cache_msg_lookup(p->m->cache, p->to_folder_id, p->hidden ? p->name : p->tmp_name,
			     &nm) < 0)
		return;
	if (nm.uid != p->victim)
		mfs_note_moved(p->m, msg_ino(p->to_folder_id, p->victim),
			       msg_ino(p->to_folder_id, nm.uid));
	cache_msg_clear(&nm);
}

/* The new message is on the server (or in the journal): the old one goes. */
static void replace_remove_victim(struct parked *p)
{
	replace_swap(p);
	replace_note_successor(p);
	p->m->store->ops->remove(p->m->store, p->to_folder_id, p->victim, replace_victim_gone, p);
}

static void replace_appended(void *ctx, int err)
{
	struct parked *p = ctx;

	if (!err && !replace_known(p))
		err = EIO;
	if (err) {
		/* The old message is untouched, the temporary file waits. */
		fuse_reply_err(p->req, err);
		replace_free(p);
		return;
	}
	replace_remove_victim(p);
}

static void replace_moved(void *ctx, enum store_error err, bool changed)
{
	struct parked *p = ctx;
	struct cache_msg msg;

	(void)changed;
	if (err != STORE_OK) {
		fuse_reply_err(p->req, mfs_store_errno(err));
		replace_free(p);
		return;
	}
	if (cache_msg_lookup(p->m->cache, p->to_folder_id, p->tmp_name, &msg) < 0) {
		replace_known(p);
		fuse_reply_err(p->req, EIO);
		replace_free(p);
		return;
	}
	mfs_note_moved(p->m, msg_ino(p->folder_id, p->uid), msg_ino(p->to_folder_id, msg.uid));
	cache_msg_clear(&msg);
	replace_remove_victim(p);
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
	if (err) {
		fs_files_untake(m, n);
		fuse_reply_err(req, err);
		return;
	}
	n->final_folder = to;
	if (!victim_uid) {
		n->final_name = strdup(newname);
		if (!n->final_name) {
			fs_files_untake(m, n);
			fuse_reply_err(req, ENOMEM);
			return;
		}
		fs_files_append_rename(m, req, n, NULL, NULL);
		return;
	}
	struct parked *p = mfs_park(req, folder_ino(to), newname);
	if (!p) {
		fs_files_untake(m, n);
		return;
	}
	p->to_folder_id = to;
	p->victim = victim_uid;
	p->tmp_name = replace_tmp_name(m, to, newname);
	n->final_name = p->tmp_name ? strdup(p->tmp_name) : NULL;
	if (!n->final_name) {
		fs_files_untake(m, n);
		fuse_reply_err(req, ENOMEM);
		replace_free(p);
		return;
	}
	fs_files_append_rename(m, NULL, n, replace_appended, p);
}

void fs_changes_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
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
	struct new_fh *tmpfile = to != 0 ? fs_files_take_deferred(m, from, name) : NULL;
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
		if (mfs_ro_or(m, req, m->store->ops->rename_folder != NULL))
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
		struct parked *p = mfs_park(req, parent, name);
		if (!p)
			return;
		m->store->ops->rename_folder(m->store, id, to, newname, mfs_done_reply_err, p);
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
	if (from != to && mfs_ro_or(m, req, m->store->ops->move != NULL))
		return;
	if (victim && mfs_ro_or(m, req, m->store->ops->remove != NULL))
		return;
	struct parked *p = mfs_park(req, newparent, newname);
	if (!p)
		return;
	p->folder_id = from;
	p->uid = uid;
	p->to_folder_id = to;
	if (victim && from != to) {
		p->victim = victim;
		p->tmp_name = replace_tmp_name(m, to, newname);
		if (!p->tmp_name) {
			fuse_reply_err(req, ENOMEM);
			free(p);
			return;
		}
		m->store->ops->move(m->store, from, uid, to, p->tmp_name, replace_moved, p);
	} else if (victim) {
		/* Within a folder the rename is ours alone and cannot be
		 * refused: the old one goes first, then the name is taken. */
		m->store->ops->remove(m->store, to, victim, rename_victim_gone, p);
	} else {
		rename_msg(p);
	}
}

void fs_changes_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		      dev_t rdev)
{
	(void)parent;
	(void)name;
	(void)mode;
	(void)rdev;
	fuse_reply_err(req, mfs_of(req)->ro ? EROFS : EPERM);
}

void fs_changes_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
	(void)link;
	(void)parent;
	(void)name;
	fuse_reply_err(req, mfs_of(req)->ro ? EROFS : EPERM);
}

void fs_changes_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
	(void)ino;
	(void)newparent;
	(void)newname;
	fuse_reply_err(req, mfs_of(req)->ro ? EROFS : EPERM);
}

