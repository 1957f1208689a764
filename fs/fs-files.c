/* fs-files.c: open files (see fs-private.h).  Message bodies are fds on
 * cached files, spliced to the kernel; a new file is an anonymous temporary
 * file that becomes an APPEND when closed, or, for a temporary name, when
 * renamed to its real one. */
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

/* ---- open files ----
 * Every fh starts with its kind.  Bodies are fds on cached files; new
 * files (cp into a folder) are anonymous temp files in the cache dir that
 * become an APPEND when closed; the status file is a text made at open. */

struct fh *fs_files_fh(const struct fuse_file_info *fi)
{
	return (struct fh *)(uintptr_t)fi->fh;
}

static void fh_track(struct mfs *m, struct fh *h)
{
	pthread_mutex_lock(&m->lock);
	h->prev = NULL;
	h->next = m->open_fhs;
	if (m->open_fhs)
		m->open_fhs->prev = h;
	m->open_fhs = h;
	pthread_mutex_unlock(&m->lock);
}

static void fh_untrack(struct mfs *m, struct fh *h)
{
	pthread_mutex_lock(&m->lock);
	if (h->prev)
		h->prev->next = h->next;
	else if (m->open_fhs == h)
		m->open_fhs = h->next;
	if (h->next)
		h->next->prev = h->prev;
	pthread_mutex_unlock(&m->lock);
}

/* Free a body or text handle (not tracked any more). */
static void fh_free(struct fh *h)
{
	if (h->kind == FH_BODY)
		close(((struct body_fh *)h)->fd);
	free(h);
}

void fs_files_free_open(struct mfs *m)
{
	while (m->open_fhs) {
		struct fh *h = m->open_fhs;

		m->open_fhs = h->next;
		fh_free(h);
	}
}

/* Pending new files get inode numbers below 2^32 that no message uses. */
static fuse_ino_t next_new_ino(struct mfs *m)
{
	return 1000 + __atomic_fetch_add(&m->new_ino, 1, __ATOMIC_RELAXED) % 0x7fff0000u;
}

struct new_fh *fs_files_find_ino(struct mfs *m, fuse_ino_t ino)
{
	for (struct new_fh *n = m->news; n; n = n->next)
		if (n->ino == ino)
			return n;
	return NULL;
}

struct new_fh *fs_files_find_name(struct mfs *m, int64_t folder, const char *name)
{
	for (struct new_fh *n = m->news; n; n = n->next)
		if (n->folder_id == folder && !strcmp(n->name, name))
			return n;
	return NULL;
}

void fs_files_attr(struct mfs *m, struct new_fh *n, struct stat *st)
{
	struct stat fst;

	if (fstat(n->fd, &fst) < 0)
		fst.st_size = 0;
	mfs_attr_file(m, n->ino, (uint64_t)fst.st_size, n->mtime ? (time_t)n->mtime : time(NULL),
		  0600, st);
}

bool fs_files_attr_by_ino(struct mfs *m, fuse_ino_t ino, struct stat *st)
{
	struct new_fh *n;

	pthread_mutex_lock(&m->lock);
	n = fs_files_find_ino(m, ino);
	if (n)
		fs_files_attr(m, n, st);
	pthread_mutex_unlock(&m->lock);
	return n != NULL;
}

bool fs_files_entry_by_name(struct mfs *m, int64_t folder, const char *name,
			      struct fuse_entry_param *e)
{
	struct new_fh *n;

	pthread_mutex_lock(&m->lock);
	n = fs_files_find_name(m, folder, name);
	/* Once appended it is a message: the name is the message's now, even
	 * before the writer's RELEASE has let go of the temporary inode (an
	 * open of that inode would be refused). */
	if (n && n->appended)
		n = NULL;
	if (n) {
		memset(e, 0, sizeof(*e));
		fs_files_attr(m, n, &e->attr);
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
	fh_track(p->m, &fh->h);
	if (fuse_reply_open(p->req, &p->fi) != 0) {
		fh_untrack(p->m, &fh->h);
		fh_free(&fh->h);
	}
}

static void open_fetched(void *ctx, enum store_error err, bool changed)
{
	struct parked *p = ctx;
	int fd;

	if (err != STORE_OK) {
		fuse_reply_err(p->req, mfs_store_errno(err));
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
	struct mfs *m = mfs_of(req);
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
	fh_track(m, &fh->h);
	if (fuse_reply_open(req, fi) != 0) {
		fh_untrack(m, &fh->h);
		fh_free(&fh->h);
	}
}

static struct fh sync_fh = { .kind = FH_SYNC };

void fs_files_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
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
		t = mfs_status_text(m, &len);
		open_text(req, fi, t, len);
		return;
	}
	if (ino == INO_SYNC) {
		fi->fh = (uint64_t)(uintptr_t)&sync_fh;
		fi->direct_io = 1;
		fuse_reply_open(req, fi);
		return;
	}
	if (!mfs_msg_of(m, ino, &folder, &uid)) {
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
	struct parked *p = mfs_park(req, ino, NULL);

	if (!p) {
		if (fd >= 0)
			close(fd);
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

void fs_files_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	struct fh *h = fs_files_fh(fi);

	(void)ino;
	switch (h->kind) {
	case FH_TEXT: {
		struct text_fh *t = (struct text_fh *)h;
		size_t n = (size_t)off >= t->len ? 0 : t->len - (size_t)off;
		char *copy;

		if (n > size)
			n = size;
		/* Reply from a copy: the kernel may complete this READ and
		 * deliver the RELEASE that frees t to another thread before
		 * fuse_reply_buf() has returned (ASan's writev check reads
		 * the buffer after the write). */
		copy = malloc(n ? n : 1);
		if (!copy) {
			fuse_reply_err(req, ENOMEM);
			return;
		}
		memcpy(copy, t->data + (n ? off : 0), n);
		fuse_reply_buf(req, copy, n);
		free(copy);
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

void fs_files_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size,
		      off_t off, struct fuse_file_info *fi)
{
	struct mfs *m = mfs_of(req);
	struct fh *h = fs_files_fh(fi);

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
	ssize_t w;
	int err = 0;

	/* Under the lock, so that no APPEND (which reads the file once) can
	 * start between the check and the write: a write while one is under
	 * way would reach nobody, and once appended the message exists on
	 * the server: immutable. */
	pthread_mutex_lock(&m->lock);
	if (n->appending || n->appended)
		err = EACCES;
	else if ((w = pwrite(n->fd, buf, size, off)) < 0)
		err = errno;
	else
		n->written = true;
	pthread_mutex_unlock(&m->lock);
	if (err)
		fuse_reply_err(req, err);
	else
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
	/* A rename's APPEND: a failure leaves the temporary file waiting,
	 * and then (if set) continues instead of replying to req. */
	bool rename;
	fs_files_then_fn *then;
	void *then_ctx;
	bool on_stack; /* out of memory: not to be freed */
};

void fs_files_unlink_locked(struct mfs *m, struct new_fh *n)
{
	for (struct new_fh **pp = &m->news; *pp; pp = &(*pp)->next)
		if (*pp == n) {
			*pp = n->next;
			break;
		}
}

static void reply_waiters(struct flush_wait *w, int err)
{
	while (w) {
		struct flush_wait *next = w->next;

		fuse_reply_err(w->req, err);
		free(w);
		w = next;
	}
}

void fs_files_free(struct new_fh *n)
{
	/* Only at unmount can FLUSHes still wait: nobody reads a reply then. */
	while (n->waiters) {
		struct flush_wait *w = n->waiters;

		n->waiters = w->next;
		free(w);
	}
	close(n->fd);
	free(n->final_name);
	free(n);
}

/* Back to a temporary file waiting for its rename: a rename failed. */
static void untake_locked(struct new_fh *n)
{
	n->appending = false;
	n->keep_local = true;
	free(n->final_name);
	n->final_name = NULL;
	if (n->released)
		n->released_at = time(NULL);
}

void fs_files_untake(struct mfs *m, struct new_fh *n)
{
	struct flush_wait *w;

	pthread_mutex_lock(&m->lock);
	untake_locked(n);
	w = n->waiters;
	n->waiters = NULL;
	pthread_mutex_unlock(&m->lock);
	/* It was checked to be a message at its first FLUSH. */
	reply_waiters(w, 0);
}

void fs_files_drop(struct mfs *m, struct new_fh *n)
{
	struct flush_wait *w;
	bool free_now;

	pthread_mutex_lock(&m->lock);
	fs_files_unlink_locked(m, n);
	n->appending = false;
	n->dropped = true;
	w = n->waiters;
	n->waiters = NULL;
	/* Before its RELEASE the kernel still has the fh: RELEASE frees it. */
	free_now = n->released;
	pthread_mutex_unlock(&m->lock);
	reply_waiters(w, 0);
	/* Otherwise n is the RELEASE's now (on another thread, maybe freed
	 * already), and that RELEASE notifies the name. */
	if (free_now) {
		mfs_note_push(m, folder_ino(n->folder_id), n->name, 0);
		fs_files_free(n);
	}
}

/* The end of an APPEND (or of its attempt): every FLUSH that waited for it
 * gets its result.  Frees a. */
static void append_finish(struct append_ctx *a, int err)
{
	struct mfs *m = a->m;
	struct new_fh *n = a->n;
	struct flush_wait *w;
	bool done_with_it = false;

	if (!err) {
		/* The kernel may ask for the message by this inode still
		 * (the name rename() gave it): it is the message's now. */
		int64_t folder = n->final_name ? n->final_folder : n->folder_id;
		struct cache_msg msg;

		if (cache_msg_lookup(m->cache, folder, n->final_name ? n->final_name : n->name,
				     &msg) == 0) {
			mfs_note_moved(m, n->ino, msg_ino(folder, msg.uid));
			cache_msg_clear(&msg);
		}
	}
	pthread_mutex_lock(&m->lock);
	if (!err) {
		n->appended = true;
		n->appending = false;
	} else if (a->rename) {
		untake_locked(n);
	} else {
		n->err = err;
		n->appending = false;
	}
	w = n->waiters;
	n->waiters = NULL;
	/* A closed file whose APPEND ended: nobody else has it (a rename's
	 * failure leaves it waiting, as rename(2) leaves the source). */
	if (n->released && (!err || !a->rename)) {
		done_with_it = true;
		fs_files_unlink_locked(m, n);
	}
	pthread_mutex_unlock(&m->lock);
	reply_waiters(w, err);
	if (a->req)
		fuse_reply_err(a->req, err);
	if (a->then)
		a->then(a->then_ctx, err);
	if (done_with_it) {
		mfs_note_push(m, folder_ino(n->folder_id), n->name, 0);
		fs_files_free(n);
	}
	if (!a->on_stack)
		free(a);
}

static void append_done(void *ctx, enum store_error err, bool changed)
{
	struct append_ctx *a = ctx;
	struct new_fh *n = a->n;

	(void)changed;
	if (err != STORE_OK)
		log_warn("cannot store %s: %s", n->final_name ? n->final_name : n->name,
			 strerror(mfs_store_errno(err)));
	append_finish(a, mfs_store_errno(err));
}

static void append_start(struct mfs *m, fuse_req_t req, struct new_fh *n, bool rename,
			 fs_files_then_fn *then, void *then_ctx)
{
	struct append_ctx *a = calloc(1, sizeof(*a));
	struct append_ctx stack = { .m = m, .req = req, .n = n, .rename = rename,
				    .then = then, .then_ctx = then_ctx };
	int64_t mtime;

	if (!a) {
		stack.on_stack = true;
		append_finish(&stack, ENOMEM);
		return;
	}
	*a = stack;
	/* A write or a utimens through another fd may come meanwhile. */
	pthread_mutex_lock(&m->lock);
	n->written = false;
	mtime = n->mtime;
	pthread_mutex_unlock(&m->lock);
	if (!looks_like_message(n->fd)) {
		append_finish(a, EINVAL);
		return;
	}
	m->store->ops->append(m->store, n->final_name ? n->final_folder : n->folder_id,
			      n->final_name ? n->final_name : n->name, n->fd, mtime,
			      append_done, a);
}

void fs_files_append(struct mfs *m, fuse_req_t req, struct new_fh *n)
{
	append_start(m, req, n, false, NULL, NULL);
}

void fs_files_append_rename(struct mfs *m, fuse_req_t req, struct new_fh *n,
			    fs_files_then_fn *then, void *ctx)
{
	append_start(m, req, n, true, then, ctx);
}

/* Temporary files nobody renamed within DEFER_SECONDS of closing them are
 * stored under the name they have. */
void fs_files_append_overdue(struct mfs *m)
{
	time_t now = time(NULL);

	for (;;) {
		struct new_fh *due = NULL;

		pthread_mutex_lock(&m->lock);
		for (struct new_fh *n = m->news; n && !due; n = n->next)
			if (n->deferred && n->released && !n->appending && !n->appended &&
			    !n->keep_local && now - n->released_at >= DEFER_SECONDS)
				due = n;
		if (due)
			due->appending = true;
		pthread_mutex_unlock(&m->lock);
		if (!due)
			return;
		/* It was checked to be a message at close; from here on
		 * append_finish owns it. */
		fs_files_append(m, NULL, due);
	}
}

/* The news entry closed under a temporary name in folder, if any; it is
 * taken for the caller (marked appending).  Its RELEASE may still be on
 * its way (the kernel sends it after close() has returned): the temporary
 * file is ours all the same. */
struct new_fh *fs_files_take_deferred(struct mfs *m, int64_t folder, const char *name)
{
	struct new_fh *n;

	pthread_mutex_lock(&m->lock);
	n = fs_files_find_name(m, folder, name);
	if (n && (!n->deferred || n->appended || n->appending || n->err))
		n = NULL;
	if (n)
		n->appending = true;
	pthread_mutex_unlock(&m->lock);
	return n;
}

void fs_files_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct mfs *m = mfs_of(req);
	struct fh *h = fs_files_fh(fi);
	int err;

	(void)ino;
	if (h->kind != FH_NEW) {
		fuse_reply_err(req, 0);
		return;
	}
	struct new_fh *n = (struct new_fh *)h;
	pthread_mutex_lock(&m->lock);
	if (n->appending) {
		/* One APPEND at a time (a dup'ed fd closed meanwhile): this
		 * close() gets its result. */
		struct flush_wait *w = malloc(sizeof(*w));

		if (w) {
			w->req = req;
			w->next = n->waiters;
			n->waiters = w;
		}
		pthread_mutex_unlock(&m->lock);
		if (!w)
			fuse_reply_err(req, ENOMEM);
		return;
	}
	if (n->name[0] == '.' && !n->appended && !n->err) {
		/* A temporary name: APPEND at the rename (or later). */
		n->deferred = true;
		n->written = false;
		pthread_mutex_unlock(&m->lock);
		err = looks_like_message(n->fd) ? 0 : EINVAL;
		if (err) {
			pthread_mutex_lock(&m->lock);
			n->err = err;
			pthread_mutex_unlock(&m->lock);
		}
		fuse_reply_err(req, err);
		return;
	}
	/* close() returns what the server said: the APPEND happens here. */
	if (!n->appended && (n->written || !n->err)) {
		n->appending = true;
		pthread_mutex_unlock(&m->lock);
		fs_files_append(m, req, n);
		return;
	}
	err = n->err;
	n->err = 0;
	pthread_mutex_unlock(&m->lock);
	fuse_reply_err(req, err);
}

void fs_files_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct mfs *m = mfs_of(req);
	struct fh *h = fs_files_fh(fi);

	(void)ino;
	switch (h->kind) {
	case FH_TEXT:
		fh_untrack(m, h);
		fh_free(h);
		break;
	case FH_SYNC:
		break;
	case FH_BODY: {
		struct body_fh *b = (struct body_fh *)h;

		/* ro: reading only reads; nothing is consumed (deleted). */
		if (b->eof && !m->ro && (m->store->caps & STORE_CAP_READ_ONCE) &&
		    m->store->ops->consume)
			m->store->ops->consume(m->store, b->folder_id, b->uid);
		fh_untrack(m, h);
		fh_free(h);
		break;
	}
	case FH_NEW: {
		struct new_fh *n = (struct new_fh *)h;

		pthread_mutex_lock(&m->lock);
		if (n->appending || (n->deferred && !n->appended && !n->err && !n->dropped)) {
			/* Waits in the news list for its rename, or for the
			 * APPEND under way, which frees it. */
			n->released = true;
			n->released_at = time(NULL);
			pthread_mutex_unlock(&m->lock);
			break;
		}
		fs_files_unlink_locked(m, n);
		pthread_mutex_unlock(&m->lock);
		/* The kernel still knows the temporary inode by this name:
		 * make it look the name up again. */
		mfs_note_push(m, folder_ino(n->folder_id), n->name, 0);
		fs_files_free(n);
		break;
	}
	}
	fuse_reply_err(req, 0);
}

void fs_files_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
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
	if (mfs_ro_or(m, req, m->store->ops->append != NULL))
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
	if (fs_files_find_name(m, folder, name)) {
		pthread_mutex_unlock(&m->lock);
		close(n->fd);
		free(n);
		fuse_reply_err(req, EEXIST);
		return;
	}
	n->next = m->news;
	m->news = n;
	memset(&e, 0, sizeof(e));
	fs_files_attr(m, n, &e.attr); /* in the list now: a SETATTR may find it */
	pthread_mutex_unlock(&m->lock);
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

