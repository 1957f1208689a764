/* imap-store.c: the IMAP engine (see imap-store.h).
 *
 * Threads: N workers, each owning one imap_client, take jobs from one
 * queue (what a person waits for goes first); one poller queues a LIST and
 * a sync of every folder every poll seconds or when asked; two idlers
 * (imap-idle.c).  This file is the queue, the workers and the store_ops
 * glue; the protocol work is in imap-sync.c, imap-fetch.c and imap-ops.c. */
#include "imap-store.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <stdatomic.h>
#include <time.h>

#include <openssl/crypto.h>

#include "imap-client.h"
#include "conn.h"
#include "imap-store-private.h"
#include "log.h"

struct fstate *imap_store_fstate(struct istore *s, int64_t id)
{
	if (id <= 0)
		return NULL;
	if ((size_t)id >= s->fst_len) {
		size_t n = s->fst_len ? s->fst_len : 64;
		struct fstate **p;

		while (n <= (size_t)id)
			n *= 2;
		p = realloc(s->fst, n * sizeof(*p));
		if (!p)
			return NULL;
		memset(p + s->fst_len, 0, (n - s->fst_len) * sizeof(*p));
		s->fst = p;
		s->fst_len = n;
	}
	if (!s->fst[id])
		s->fst[id] = calloc(1, sizeof(struct fstate));
	return s->fst[id];
}

/* Queue a job; urgent ones go before every non-urgent one, in order among
 * themselves.  Called with the lock held. */
struct job *imap_store_enqueue(struct istore *s, enum job_kind kind, int64_t folder_id,
			   uint32_t uid, bool urgent)
{
	struct job *j = calloc(1, sizeof(*j));

	if (!j)
		return NULL;
	j->kind = kind;
	j->folder_id = folder_id;
	j->uid = uid;
	j->urgent = urgent;
	if (urgent) {
		struct job **pp = &s->queue_head;

		while (*pp && (*pp)->urgent)
			pp = &(*pp)->next;
		j->next = *pp;
		*pp = j;
		if (!j->next)
			s->queue_tail = j;
	} else {
		if (s->queue_tail)
			s->queue_tail->next = j;
		else
			s->queue_head = j;
		s->queue_tail = j;
	}
	pthread_cond_signal(&s->eng.cond);
	return j;
}

/* Move a queued job to the front (a person now waits for it). */
static void promote(struct istore *s, enum job_kind kind, int64_t folder_id)
{
	struct job *prev = NULL;

	for (struct job *j = s->queue_head; j; prev = j, j = j->next) {
		if (j->kind != kind || j->folder_id != folder_id)
			continue;
		if (!prev) {
			j->urgent = true;
			return;
		}
		prev->next = j->next;
		if (s->queue_tail == j)
			s->queue_tail = prev;
		j->urgent = true;
		j->next = s->queue_head;
		s->queue_head = j;
		if (!j->next)
			s->queue_tail = j;
		return;
	}
}

void imap_store_queue_sync(struct istore *s, int64_t folder_id, bool urgent)
{
	struct fstate *f = imap_store_fstate(s, folder_id);

	if (!f)
		return;
	if (f->queued) {
		if (urgent)
			promote(s, JOB_SYNC, folder_id);
		return;
	}
	f->queued = true;
	imap_store_enqueue(s, JOB_SYNC, folder_id, 0, urgent);
}

/* ---- events to fs/ ---- */

void imap_store_emit_entry(struct istore *s, int64_t folder_id, const char *name)
{
	if (s->ev.entry_changed)
		s->ev.entry_changed(s->ev.ctx, folder_id, name);
}

void imap_store_emit_message(struct istore *s, int64_t folder_id, uint32_t uid)
{
	if (s->ev.message_changed)
		s->ev.message_changed(s->ev.ctx, folder_id, uid);
}

/* ---- connections ---- */

/* Did the server's ENABLED response name QRESYNC? */
static void on_enabled(void *ctx, const struct imap_response *r)
{
	if (r->kind == IMAP_RESP_UNTAGGED && r->args_count >= 1 &&
	    imap_arg_atom_is(&r->args[0], "ENABLED"))
		for (size_t i = 1; i < r->args_count; i++)
			if (imap_arg_atom_is(&r->args[i], "QRESYNC"))
				*(bool *)ctx = true;
}

/* QRESYNC where offered (it needs ENABLE, and brings CONDSTORE), else
 * CONDSTORE: both make a resync cost what changed, not the folder size. */
static void enable_extensions(struct worker *w)
{
	unsigned caps = imap_client_caps(w->client);
	bool on = false;

	w->qresync = false;
	if ((caps & IMAP_CAP_QRESYNC) && (caps & IMAP_CAP_ENABLE)) {
		if (imap_client_run(w->client, on_enabled, &on, "ENABLE QRESYNC CONDSTORE") ==
		    IMAP_RESULT_OK)
			w->qresync = on;
	} else if (caps & IMAP_CAP_CONDSTORE) {
		imap_client_enable(w->client, "CONDSTORE");
	}
}

int imap_store_connect(struct worker *w, const char **error_r)
{
	struct istore *s = w->s;
	char trace[16];
	struct imap_client_opts o = {
		.url = &s->url,
		.password = s->password,
		.cafile = s->cafile,
		.insecure = s->insecure,
		.trace_name = trace,
	};

	snprintf(trace, sizeof(trace), "imap%d", w->index + 1);
	imap_client_close(&w->client);
	w->selected = 0;
	w->selected_rw = false;
	if (imap_client_open(&w->client, &o, NULL, error_r) < 0)
		return -1;
	enable_extensions(w);
	return 0;
}

char imap_store_delim(struct istore *s)
{
	char d;

	pthread_mutex_lock(&s->eng.lock);
	d = s->delim;
	pthread_mutex_unlock(&s->eng.lock);
	return d;
}

int64_t imap_store_trash_id(struct istore *s)
{
	int64_t id;

	pthread_mutex_lock(&s->eng.lock);
	id = s->trash_id;
	pthread_mutex_unlock(&s->eng.lock);
	return id;
}

static void note_recent(struct istore *s, int64_t folder_id)
{
	/* Called with the lock held. */
	if (folder_id > 0 && s->recent_id != folder_id) {
		s->recent_id = folder_id;
		pthread_cond_broadcast(&s->idle_cond);
	}
}

/* ---- views ---- */

void imap_store_view_changed(struct istore *s)
{
	atomic_fetch_add(&s->view_gen, 1);
}

void imap_store_refresh_view(struct worker *w)
{
	uint64_t g = atomic_load(&w->s->view_gen);

	/* A server shows a session new UIDs (or a rename) only after a
	 * command; until then UID commands on them do nothing, yet say OK.
	 * A NOOP catches up, or brings the BYE of a folder renamed away. */
	if (w->view_gen != g && w->client && imap_client_alive(w->client) && w->selected)
		imap_client_run(w->client, NULL, NULL, "NOOP");
	w->view_gen = g;
}

/* ---- workers ---- */

static void finish_sync(struct istore *s, int64_t folder_id, enum store_error err)
{
	struct engine_waiter *waiters = NULL;

	pthread_mutex_lock(&s->eng.lock);
	struct fstate *fs = imap_store_fstate(s, folder_id);
	if (fs) {
		fs->syncing = false;
		if (err == STORE_OK)
			fs->ready = true;
		waiters = fs->waiters;
		fs->waiters = NULL;
	}
	pthread_mutex_unlock(&s->eng.lock);
	engine_waiters_call(waiters, err, false);
}

bool imap_store_stopping(struct istore *s)
{
	bool stopping;

	pthread_mutex_lock(&s->eng.lock);
	stopping = s->eng.stopping;
	pthread_mutex_unlock(&s->eng.lock);
	return stopping;
}

bool imap_store_retry(struct worker *w, int r)
{
	/* A connection the server closed is worth one more try (it dropped
	 * an idle session); a silent one is a dead link, and a too slow one
	 * (-ETIME) would be as slow again, while someone waits.  At unmount
	 * the connections were cut on purpose. */
	return r < 0 && r != -ETIMEDOUT && r != -ETIME && w->client &&
	       !imap_client_alive(w->client) && !imap_store_stopping(w->s);
}

static void run_job(struct worker *w, struct job *j)
{
	struct istore *s = w->s;
	const char *err;
	int r = -EIO;

	imap_store_refresh_view(w);
	if (j->kind == JOB_OP) {
		imap_ops_run(w, j->op);
		return;
	}
	for (int attempt = 0; attempt < 2 && j->kind != JOB_FETCH; attempt++) {
		if (!w->client || !imap_client_alive(w->client)) {
			if (imap_store_connect(w, &err) < 0) {
				if (!imap_store_stopping(s))
					log_warn("%s", err);
				engine_set_online(&s->eng, false);
				r = -EIO;
				break;
			}
		}
		engine_set_online(&s->eng, true);
		/* Changes made offline go first: a sync before them would
		 * bring back what the user removed. */
		if (imap_journal_replay(w) < 0) {
			r = -EIO;
			if (imap_client_alive(w->client))
				break;
			continue;
		}
		if (j->kind == JOB_LIST) {
			r = imap_sync_list(s, w->client, &err);
			if (r < 0 && !imap_store_stopping(s))
				log_warn("listing folders: %s", err);
		} else {
			r = imap_sync_folder(w, j->folder_id);
		}
		if (!imap_store_retry(w, r))
			break;
		log_warn("%s", imap_client_error(w->client));
	}
	switch (j->kind) {
	case JOB_LIST:
		break;
	case JOB_SYNC: {
		/* Offline with a listing from an earlier session: serve it.
		 * A server that answers but never finishes is no reason to
		 * show a folder never listed as empty: that is an error. */
		struct cache_folder f;
		enum store_error e = r >= 0 ? STORE_OK : r == -ETIME ? STORE_ERR_IO :
				     STORE_ERR_OFFLINE;

		if (r == -ENOENT) {
			e = STORE_ERR_NOTFOUND;
		} else if (r < 0 && cache_folder_get(s->cache, j->folder_id, &f) == 0) {
			if (f.last_sync > 0)
				e = STORE_OK;
			cache_folder_clear(&f);
		}
		finish_sync(s, j->folder_id, e);
		break;
	}
	case JOB_FETCH:
		imap_fetch_bodies(w, j->folder_id, j->uid, j->prefetch);
		break;
	case JOB_OP:
		break;
	}
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct istore *s = w->s;

	pthread_mutex_lock(&s->eng.lock);
	for (;;) {
		while (!s->eng.stopping && !s->queue_head)
			pthread_cond_wait(&s->eng.cond, &s->eng.lock);
		if (s->eng.stopping)
			break;
		struct job *j = s->queue_head;

		s->queue_head = j->next;
		if (!s->queue_head)
			s->queue_tail = NULL;
		if (j->kind == JOB_SYNC) {
			struct fstate *f = imap_store_fstate(s, j->folder_id);

			if (f) {
				if (f->syncing) {
					/* Another worker syncs it: run after. */
					j->next = NULL;
					if (s->queue_tail)
						s->queue_tail->next = j;
					else
						s->queue_head = j;
					s->queue_tail = j;
					pthread_mutex_unlock(&s->eng.lock);
					struct timespec ts = { 0, 20 * 1000 * 1000 };
					nanosleep(&ts, NULL);
					pthread_mutex_lock(&s->eng.lock);
					continue;
				}
				f->queued = false;
				f->syncing = true;
			}
		}
		pthread_mutex_unlock(&s->eng.lock);
		run_job(w, j);
		free(j);
		pthread_mutex_lock(&s->eng.lock);
	}
	pthread_mutex_unlock(&s->eng.lock);
	return NULL;
}

/* Queue a LIST (optionally) and a sync of every folder; INBOX first. */
static void queue_full_sync(struct istore *s, bool list)
{
	struct cache_folder *fl;
	size_t n;

	pthread_mutex_lock(&s->eng.lock);
	if (list)
		imap_store_enqueue(s, JOB_LIST, 0, 0, false);
	s->eng.last_sync = (int64_t)time(NULL);
	pthread_mutex_unlock(&s->eng.lock);
	if (cache_folder_list(s->cache, &fl, &n) < 0)
		return;
	pthread_mutex_lock(&s->eng.lock);
	for (size_t i = 0; i < n; i++)
		if (!strcmp(fl[i].server_name, "INBOX"))
			imap_store_queue_sync(s, fl[i].id, false);
	for (size_t i = 0; i < n; i++)
		if (!(fl[i].flags & CACHE_FOLDER_NOSELECT))
			imap_store_queue_sync(s, fl[i].id, false);
	pthread_mutex_unlock(&s->eng.lock);
	cache_folder_list_free(fl, n);
}

static void poll_all(void *ctx)
{
	queue_full_sync(ctx, true);
}

/* ---- store_ops ---- */

static int istore_start(struct store *base, const struct store_events *ev)
{
	struct istore *s = (struct istore *)base;

	s->ev = *ev;
	for (unsigned i = 0; i < s->nworkers; i++) {
		if (pthread_create(&s->workers[i].thread, NULL, worker_main, &s->workers[i]) != 0) {
			s->nworkers = i;
			break;
		}
	}
	if (s->nworkers == 0)
		return -EAGAIN;
	if (engine_start_poller(&s->eng, poll_all, s) < 0)
		return -EAGAIN;
	s->started = true;
	for (int i = 0; i < 2; i++) {
		s->idlers[i].s = s;
		s->idlers[i].follow_recent = i == 1;
		s->idlers[i].started =
			pthread_create(&s->idlers[i].thread, NULL, imap_idle_main, &s->idlers[i]) == 0;
	}
	/* The first full sync: every folder's listing, INBOX first. */
	queue_full_sync(s, false);
	return 0;
}

static bool istore_folder_is_ready(struct store *base, int64_t folder_id)
{
	struct istore *s = (struct istore *)base;
	bool ready;

	pthread_mutex_lock(&s->eng.lock);
	struct fstate *f = imap_store_fstate(s, folder_id);
	ready = f && f->ready;
	pthread_mutex_unlock(&s->eng.lock);
	return ready;
}

static void istore_folder_ready(struct store *base, int64_t folder_id,
				store_done_fn *done, void *ctx)
{
	struct istore *s = (struct istore *)base;
	struct fstate *f;

	pthread_mutex_lock(&s->eng.lock);
	note_recent(s, folder_id);
	f = imap_store_fstate(s, folder_id);
	if (!f || f->ready) {
		pthread_mutex_unlock(&s->eng.lock);
		done(ctx, f ? STORE_OK : STORE_ERR_IO, false);
		return;
	}
	if (!engine_waiter_add(&f->waiters, done, ctx)) {
		pthread_mutex_unlock(&s->eng.lock);
		done(ctx, STORE_ERR_IO, false);
		return;
	}
	if (!f->syncing)
		imap_store_queue_sync(s, folder_id, true);
	pthread_mutex_unlock(&s->eng.lock);
}

static void istore_fetch_body(struct store *base, int64_t folder_id, uint32_t uid,
			      store_done_fn *done, void *ctx)
{
	struct istore *s = (struct istore *)base;
	struct inflight *in;

	if (journal_uid_is_local(uid)) {
		/* Moved here offline before its body was cached: the
		 * server knows it by its old UID until the replay. */
		done(ctx, STORE_ERR_OFFLINE, false);
		return;
	}
	pthread_mutex_lock(&s->eng.lock);
	note_recent(s, folder_id);
	for (in = s->inflight; in; in = in->next)
		if (in->folder_id == folder_id && in->uid == uid)
			break;
	if (in) {
		/* Already on its way (read-ahead, or another reader). */
		if (!engine_waiter_add(&in->waiters, done, ctx)) {
			pthread_mutex_unlock(&s->eng.lock);
			done(ctx, STORE_ERR_IO, false);
			return;
		}
		pthread_mutex_unlock(&s->eng.lock);
		return;
	}
	in = calloc(1, sizeof(*in));
	if (!in || !engine_waiter_add(&in->waiters, done, ctx)) {
		free(in);
		pthread_mutex_unlock(&s->eng.lock);
		done(ctx, STORE_ERR_IO, false);
		return;
	}
	in->folder_id = folder_id;
	in->uid = uid;
	in->next = s->inflight;
	s->inflight = in;
	imap_store_enqueue(s, JOB_FETCH, folder_id, uid, true);
	pthread_mutex_unlock(&s->eng.lock);
}

static void istore_status(struct store *base, struct store_status *st)
{
	struct istore *s = (struct istore *)base;

	engine_status(&s->eng, st);
	if (s->journal)
		st->pending = journal_count(s->journal);
}

static void istore_sync_now(struct store *base)
{
	engine_sync_now(&((struct istore *)base)->eng);
}

/* After the workers: a change still queued was accepted (a dot-file's
 * close() returned 0), so it goes to the journal, in queue order, never
 * freed unrun.  Syncs and fetches are simply dropped. */
static void journal_queued(struct istore *s)
{
	while (s->queue_head) {
		struct job *j = s->queue_head;

		s->queue_head = j->next;
		if (j->kind == JOB_OP)
			imap_ops_journal(s, j->op);
		free(j);
	}
	s->queue_tail = NULL;
}

static void istore_destroy(struct store **basep)
{
	struct istore *s = (struct istore *)*basep;

	if (!s)
		return;
	engine_stop(&s->eng);
	pthread_mutex_lock(&s->eng.lock);
	pthread_cond_broadcast(&s->idle_cond);
	pthread_mutex_unlock(&s->eng.lock);
	if (s->started) {
		/* An unmount must not wait for a long sync or a dead link
		 * (its lock keeps the next mount out): every wait on a
		 * connection ends now.  A change cut off in flight is
		 * journaled by its worker, as after any lost connection. */
		conn_cancel_all();
		for (unsigned i = 0; i < s->nworkers; i++)
			pthread_join(s->workers[i].thread, NULL);
		for (int i = 0; i < 2; i++)
			if (s->idlers[i].started)
				pthread_join(s->idlers[i].thread, NULL);
	}
	for (unsigned i = 0; i < MAX_WORKERS; i++)
		imap_client_close(&s->workers[i].client);
	journal_queued(s);
	for (size_t i = 0; i < s->fst_len; i++) {
		if (s->fst[i])
			engine_waiters_call(s->fst[i]->waiters, STORE_ERR_IO, false);
		free(s->fst[i]);
	}
	free(s->fst);
	while (s->inflight) {
		struct inflight *in = s->inflight;

		s->inflight = in->next;
		engine_waiters_call(in->waiters, STORE_ERR_IO, false);
		free(in);
	}
	if (s->password) {
		OPENSSL_cleanse(s->password, strlen(s->password));
		free(s->password);
	}
	free(s->cafile);
	free(s->cache_dir);
	journal_close(&s->journal);
	pthread_mutex_destroy(&s->replay_lock);
	url_free(&s->url);
	engine_destroy(&s->eng);
	pthread_cond_destroy(&s->idle_cond);
	free(s);
	*basep = NULL;
}

static const struct store_ops istore_ops = {
	.start = istore_start,
	.folder_is_ready = istore_folder_is_ready,
	.folder_ready = istore_folder_ready,
	.fetch_body = istore_fetch_body,
	.status = istore_status,
	.sync_now = istore_sync_now,
	.remove = imap_ops_remove,
	.move = imap_ops_move,
	.mkdir = imap_ops_mkdir,
	.rmdir = imap_ops_rmdir,
	.rename_folder = imap_ops_rename_folder,
	.append = imap_ops_append,
	.set_flags = imap_ops_set_flags,
	.destroy = istore_destroy,
};

/* The server is unreachable (a network error, never a refused login or
 * certificate): with a listing in the cache, mount from it and say so. */
static bool start_offline(struct istore *s, const char *why)
{
	struct cache_folder *fl;
	size_t n = 0;
	bool known = false;
	char *d = NULL;

	if (cache_folder_list(s->cache, &fl, &n) < 0)
		return false;
	for (size_t i = 0; i < n; i++) {
		known = known || fl[i].last_sync > 0;
		/* What a LIST would have told: rm with delete=trash needs it. */
		if (fl[i].flags & CACHE_FOLDER_TRASH)
			s->trash_id = fl[i].id;
		if (!strcasecmp(fl[i].server_name, "INBOX"))
			s->inbox_id = fl[i].id;
	}
	cache_folder_list_free(fl, n);
	if (!known)
		return false;
	if (cache_kv_get(s->cache, "imap_delimiter", &d) == 0 && d && d[0])
		s->delim = d[0];
	free(d);
	log_warn("%s: mounted offline from the cache; changes are journaled until the server "
		 "is back", why);
	s->eng.online = false;
	return true;
}

struct store *imap_store_new(const struct imap_store_opts *o, bool *auth_failed_r,
			     const char **error_r)
{
	struct istore *s = calloc(1, sizeof(*s));

	if (!s) {
		*error_r = "out of memory";
		return NULL;
	}
	s->base.ops = &istore_ops;
	s->base.caps = STORE_CAP_FOLDERS | STORE_CAP_FLAGS | STORE_CAP_WRITE;
	engine_init(&s->eng, o->url, o->poll_seconds);
	pthread_cond_init(&s->idle_cond, NULL);
	pthread_mutex_init(&s->replay_lock, NULL);
	s->url = *o->url;
	s->url.user = strdup(o->url->user);
	s->url.host = strdup(o->url->host);
	s->url.scheme = strdup(o->url->scheme);
	s->password = strdup(o->password);
	s->cafile = o->cafile ? strdup(o->cafile) : NULL;
	s->insecure = o->insecure;
	s->names_uid = o->names_uid;
	s->ro = o->ro;
	s->delete_trash = o->delete_trash;
	s->delim = '/';
	s->cache = o->cache;
	s->nworkers = o->connections ? o->connections : 2;
	if (s->nworkers > MAX_WORKERS)
		s->nworkers = MAX_WORKERS;
	for (unsigned i = 0; i < MAX_WORKERS; i++) {
		s->workers[i].s = s;
		s->workers[i].index = (int)i;
	}
	if (!s->url.user || !s->url.host || !s->url.scheme || !s->password) {
		*error_r = "out of memory";
		goto fail;
	}
	if (o->cache_dir && !o->ro) {
		int jr;

		s->cache_dir = strdup(o->cache_dir);
		if ((jr = journal_open(&s->journal, o->cache_dir)) < 0) {
			static char buf[512];

			snprintf(buf, sizeof(buf), "cannot open the change journal in %s: %s "
				 "(choose another with -o cache_dir=DIR)", o->cache_dir, strerror(-jr));
			*error_r = buf;
			goto fail;
		}
	}
	/* The first connection logs in and lists on this thread, so that a
	 * wrong password or an untrusted certificate fails the command. */
	struct imap_client_opts co = {
		.url = &s->url,
		.password = s->password,
		.cafile = s->cafile,
		.insecure = s->insecure,
		.trace_name = "imap1",
	};
	if (imap_client_open(&s->workers[0].client, &co, auth_failed_r, error_r) < 0) {
		if (conn_failed_on_network() && start_offline(s, *error_r))
			return &s->base;
		goto fail;
	}
	enable_extensions(&s->workers[0]);
	if (imap_sync_list(s, s->workers[0].client, error_r) < 0)
		goto fail;
	{
		char d[2] = { s->delim, '\0' };

		cache_kv_set(s->cache, "imap_delimiter", d);
	}
	s->eng.online = true;
	return &s->base;
fail:
	{
		struct store *b = &s->base;

		istore_destroy(&b);
	}
	return NULL;
}
