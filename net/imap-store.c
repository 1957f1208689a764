/* imap-store.c: the IMAP engine (see imap-store.h).
 *
 * Threads: N workers, each owning one imap_client, take jobs from one
 * queue (fetches go to the front: a person is waiting); one poller queues a
 * LIST and a sync of every folder every poll seconds or when asked.  The
 * lock protects the queue, the folder states and the in-flight fetches;
 * it is never held across network I/O or while calling back into fs/. */
#include "imap-store.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "imap-client.h"
#include "log.h"
#include "mutf7.h"
#include "names.h"

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

struct waiter {
	store_done_fn *done;
	void *ctx;
	struct waiter *next;
};

/* Per-folder state of this session. */
struct fstate {
	bool ready;   /* synced at least once this session */
	bool queued;  /* a JOB_SYNC is in the queue */
	bool syncing; /* a worker runs its sync now */
	struct waiter *waiters;
};

/* A body being fetched; waiters are called when it lands. */
struct inflight {
	int64_t folder_id;
	uint32_t uid;
	struct waiter *waiters;
	struct inflight *next;
};

struct istore;

struct worker {
	struct istore *s;
	int index;
	pthread_t thread;
	struct imap_client *client;
	int64_t selected; /* folder EXAMINEd on this connection, 0: none */
	bool selected_rw; /* ... and SELECTed read-write */
};

/* A connection that IDLEs on one folder and queues a sync of it when the
 * server says something changed there. */
struct idler {
	struct istore *s;
	pthread_t thread;
	struct imap_client *client;
	bool follow_recent; /* the folder used last; else INBOX */
	bool started;
};

struct istore {
	struct store base;
	struct url url;
	char *password;
	char *cafile;
	bool insecure;
	bool names_uid;
	bool ro;
	bool delete_trash;
	char delim;       /* the hierarchy delimiter LIST reported */
	int64_t trash_id; /* the \Trash special-use folder, 0: none */
	unsigned poll_seconds;
	unsigned nworkers;
	struct cache *cache;
	char server[256];
	struct store_events ev;

	pthread_mutex_t lock;
	pthread_cond_t cond;      /* queue not empty / stopping */
	pthread_cond_t poll_cond; /* poller wake-up */
	/* Everything below is protected by lock. */
	struct job *queue_head, *queue_tail;
	struct fstate **fst;
	size_t fst_len;
	struct inflight *inflight;
	bool stopping;
	bool poll_asked;
	bool online;
	int64_t last_sync;
	uint64_t fetches;

	int64_t inbox_id;  /* lock */
	int64_t recent_id; /* lock: the folder used last through the mount */
	pthread_cond_t idle_cond; /* recent_id changed / stopping */

	struct worker workers[MAX_WORKERS];
	struct idler idlers[2];
	pthread_t poller;
	bool started;
};

static struct fstate *fstate_get(struct istore *s, int64_t id)
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

static void call_waiters(struct waiter *w, enum store_error err, bool changed)
{
	while (w) {
		struct waiter *next = w->next;

		w->done(w->ctx, err, changed);
		free(w);
		w = next;
	}
}

static bool add_waiter(struct waiter **list, store_done_fn *done, void *ctx)
{
	struct waiter *w = malloc(sizeof(*w));

	if (!w)
		return false;
	w->done = done;
	w->ctx = ctx;
	w->next = *list;
	*list = w;
	return true;
}

/* Queue a job; urgent ones go before every non-urgent one, in order among
 * themselves.  Called with the lock held. */
static struct job *enqueue(struct istore *s, enum job_kind kind, int64_t folder_id,
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
		struct job **pp = &s->queue_head, *prev = NULL;

		while (*pp && (*pp)->urgent) {
			prev = *pp;
			pp = &(*pp)->next;
		}
		j->next = *pp;
		*pp = j;
		if (!j->next)
			s->queue_tail = j;
		(void)prev;
	} else {
		if (s->queue_tail)
			s->queue_tail->next = j;
		else
			s->queue_head = j;
		s->queue_tail = j;
	}
	pthread_cond_signal(&s->cond);
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

static void queue_sync(struct istore *s, int64_t folder_id, bool urgent)
{
	struct fstate *f = fstate_get(s, folder_id);

	if (!f)
		return;
	if (f->queued) {
		if (urgent)
			promote(s, JOB_SYNC, folder_id);
		return;
	}
	f->queued = true;
	enqueue(s, JOB_SYNC, folder_id, 0, urgent);
}

/* ---- events to fs/ ---- */

static void emit_entry(struct istore *s, int64_t folder_id, const char *name)
{
	if (s->ev.entry_changed)
		s->ev.entry_changed(s->ev.ctx, folder_id, name);
}

static void emit_message(struct istore *s, int64_t folder_id, uint32_t uid)
{
	if (s->ev.message_changed)
		s->ev.message_changed(s->ev.ctx, folder_id, uid);
}

/* ---- connections ---- */

static int worker_connect(struct worker *w, const char **error_r)
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
	if (imap_client_caps(w->client) & IMAP_CAP_CONDSTORE)
		imap_client_enable(w->client, "CONDSTORE");
	return 0;
}

static void set_online(struct istore *s, bool online)
{
	pthread_mutex_lock(&s->lock);
	if (s->online != online)
		log_info("%s: %s", s->server, online ? "connected" : "connection lost");
	s->online = online;
	pthread_mutex_unlock(&s->lock);
}

/* ---- LIST ---- */

struct list_entry {
	char *server_name;  /* raw mailbox name */
	char *path;         /* decoded, components joined by '\n' */
	unsigned depth;
	uint32_t flags;
	char delim;
};

/* The server's name of the first n levels of e (delimiters never occur
 * inside modified UTF-7's shifted runs, so the raw name splits as is). */
static char *raw_prefix(const struct list_entry *e, size_t n)
{
	const char *p = e->server_name;

	for (size_t i = 0; i < n && p; i++) {
		p = strchr(p, e->delim);
		if (p && i + 1 < n)
			p++;
	}
	return p ? strndup(e->server_name, (size_t)(p - e->server_name)) : NULL;
}

struct list_ctx {
	struct list_entry *e;
	size_t n, cap;
};

static uint32_t list_flags(const struct imap_arg *flags)
{
	uint32_t f = 0;

	for (size_t i = 0; i < flags->len; i++) {
		const struct imap_arg *a = &flags->v.items[i];

		if (imap_arg_atom_is(a, "\\Noselect") || imap_arg_atom_is(a, "\\NonExistent"))
			f |= CACHE_FOLDER_NOSELECT;
		else if (imap_arg_atom_is(a, "\\Trash"))
			f |= CACHE_FOLDER_TRASH;
		else if (imap_arg_atom_is(a, "\\Sent"))
			f |= CACHE_FOLDER_SENT;
		else if (imap_arg_atom_is(a, "\\Drafts"))
			f |= CACHE_FOLDER_DRAFTS;
		else if (imap_arg_atom_is(a, "\\Junk"))
			f |= CACHE_FOLDER_JUNK;
		else if (imap_arg_atom_is(a, "\\Archive"))
			f |= CACHE_FOLDER_ARCHIVE;
	}
	return f;
}

static void on_list(void *ctx, const struct imap_response *r)
{
	struct list_ctx *lc = ctx;
	const char *name, *delim = NULL;
	size_t name_len, delim_len = 0;
	char *decoded = NULL;

	if (r->args_count != 4 || !imap_arg_atom_is(&r->args[0], "LIST") ||
	    r->args[1].type != IMAP_ARG_LIST)
		return;
	if (!imap_arg_nstring(&r->args[2], &delim, &delim_len))
		return;
	if (!imap_arg_astring(&r->args[3], &name, &name_len) || name_len == 0 ||
	    memchr(name, '\0', name_len))
		return;
	if (lc->n == lc->cap) {
		size_t cap = lc->cap ? 2 * lc->cap : 64;
		struct list_entry *e = realloc(lc->e, cap * sizeof(*e));

		if (!e)
			return;
		lc->e = e;
		lc->cap = cap;
	}
	struct list_entry *e = &lc->e[lc->n];
	e->server_name = strndup(name, name_len);
	if (mutf7_decode(name, name_len, &decoded) < 0)
		decoded = strndup(name, name_len); /* sanitized below */
	if (!e->server_name || !decoded) {
		free(e->server_name);
		free(decoded);
		return;
	}
	/* INBOX is case-insensitive; show it as INBOX. */
	if (!strcasecmp(decoded, "INBOX"))
		memcpy(decoded, "INBOX", 5);
	e->depth = 1;
	e->delim = delim && delim_len == 1 ? delim[0] : '\0';
	if (e->delim) {
		for (char *p = decoded; *p; p++)
			if (*p == delim[0]) {
				*p = '\n';
				e->depth++;
			}
	}
	e->path = decoded;
	e->flags = list_flags(&r->args[1]);
	lc->n++;
}

static int cmp_depth(const void *a, const void *b)
{
	const struct list_entry *x = a, *y = b;

	if (x->depth != y->depth)
		return x->depth < y->depth ? -1 : 1;
	return strcmp(x->path, y->path);
}

/* Insert one folder under parent, adding " (2)" style suffixes when the
 * sanitized name collides with another folder's. */
static int put_folder(struct istore *s, int64_t parent, const char *component,
		      const char *server_name, uint32_t flags, int64_t *id_r)
{
	char *base = names_folder(component, strlen(component));
	int r;

	if (!base)
		return -ENOMEM;
	r = cache_folder_put(s->cache, parent, base, server_name, flags, id_r);
	for (int i = 2; r == -EEXIST && i < 1000; i++) {
		char name[300];

		snprintf(name, sizeof(name), "%s (%d)", base, i);
		r = cache_folder_put(s->cache, parent, name, server_name, flags, id_r);
	}
	free(base);
	return r;
}

/* Bring the cache's folder list in line with LIST "" "*". */
static int do_list(struct istore *s, struct imap_client *c, const char **error_r)
{
	struct list_ctx lc = { 0 };
	struct cache_folder *old = NULL;
	size_t nold = 0;
	int64_t *seen_ids = NULL;
	int r;

	r = imap_client_run(c, on_list, &lc, "LIST \"\" \"*\"");
	if (r != IMAP_RESULT_OK) {
		*error_r = r < 0 ? imap_client_error(c) : imap_client_text(c);
		r = -1;
		goto out;
	}
	qsort(lc.e, lc.n, sizeof(*lc.e), cmp_depth);
	seen_ids = calloc(lc.n * 2 + 1, sizeof(*seen_ids));
	if (!seen_ids) {
		r = -1;
		*error_r = "out of memory";
		goto out;
	}
	size_t nseen = 0;
	/* The server's delimiter is replaced by '\n' in path, so a parent's
	 * server name is the prefix of ours: find it by its decoded path. */
	for (size_t i = 0; i < lc.n; i++) {
		struct list_entry *e = &lc.e[i];
		int64_t parent = 0, id;
		char *comp = e->path, *nl;
		unsigned depth = 0;

		while ((nl = strchr(comp, '\n'))) {
			/* Find or create the intermediate folder. */
			size_t plen = (size_t)(nl - e->path);
			int64_t pid = 0;

			for (size_t k = 0; k < lc.n; k++) {
				if (strlen(lc.e[k].path) == plen &&
				    !strncmp(lc.e[k].path, e->path, plen)) {
					struct cache_folder f;

					if (cache_folder_by_server_name(s->cache, lc.e[k].server_name, &f) == 0) {
						pid = f.id;
						cache_folder_clear(&f);
					}
					break;
				}
			}
			if (!pid) {
				/* Not listed itself: a \Noselect placeholder
				 * named after the server's prefix. */
				char *prefix = raw_prefix(e, (size_t)depth + 1);
				char *pcomp = strndup(comp, (size_t)(nl - comp));
				struct cache_folder f;

				if (prefix && pcomp) {
					if (cache_folder_by_server_name(s->cache, prefix, &f) == 0) {
						pid = f.id;
						cache_folder_clear(&f);
					} else if (put_folder(s, parent, pcomp, prefix,
							      CACHE_FOLDER_NOSELECT, &pid) < 0) {
						pid = 0;
					}
				}
				if (pid)
					seen_ids[nseen++] = pid;
				free(prefix);
				free(pcomp);
			}
			if (!pid)
				break;
			parent = pid;
			comp = nl + 1;
			depth++;
		}
		if (nl)
			continue;
		struct cache_folder before;
		bool existed = cache_folder_by_server_name(s->cache, e->server_name, &before) == 0;
		if (e->delim)
			s->delim = e->delim;
		if (put_folder(s, parent, comp, e->server_name, e->flags, &id) == 0) {
			seen_ids[nseen++] = id;
			if (e->flags & CACHE_FOLDER_TRASH)
				s->trash_id = id;
			if (!strcasecmp(e->server_name, "INBOX")) {
				pthread_mutex_lock(&s->lock);
				s->inbox_id = id;
				pthread_mutex_unlock(&s->lock);
			}
			if (!existed) {
				struct cache_folder f;

				if (cache_folder_get(s->cache, id, &f) == 0) {
					emit_entry(s, f.parent_id, f.name);
					cache_folder_clear(&f);
				}
			}
		}
		if (existed)
			cache_folder_clear(&before);
	}
	/* Sweep folders that are gone on the server. */
	if (cache_folder_list(s->cache, &old, &nold) == 0) {
		for (size_t i = nold; i-- > 0;) {
			bool found = false;

			for (size_t k = 0; k < nseen && !found; k++)
				found = seen_ids[k] == old[i].id;
			if (found)
				continue;
			log_debug("folder %s is gone from the server", old[i].server_name);
			cache_folder_delete(s->cache, old[i].id);
			emit_entry(s, old[i].parent_id, old[i].name);
		}
		cache_folder_list_free(old, nold);
	}
	r = 0;
out:
	for (size_t i = 0; i < lc.n; i++) {
		free(lc.e[i].server_name);
		free(lc.e[i].path);
	}
	free(lc.e);
	free(seen_ids);
	return r;
}

/* ---- folder sync ---- */

struct examine_ctx {
	uint32_t uidvalidity, uidnext, exists;
	uint64_t highestmodseq;
	bool nomodseq;
};

static void on_examine(void *ctx, const struct imap_response *r)
{
	struct examine_ctx *e = ctx;
	uint64_t n;

	if (r->status == IMAP_STATUS_OK && r->code_count >= 1) {
		if (r->code_count >= 2 && imap_arg_number(&r->code[1], &n)) {
			if (imap_arg_atom_is(&r->code[0], "UIDVALIDITY"))
				e->uidvalidity = (uint32_t)n;
			else if (imap_arg_atom_is(&r->code[0], "UIDNEXT"))
				e->uidnext = (uint32_t)n;
			else if (imap_arg_atom_is(&r->code[0], "HIGHESTMODSEQ"))
				e->highestmodseq = n;
		} else if (imap_arg_atom_is(&r->code[0], "NOMODSEQ")) {
			e->nomodseq = true;
		}
	} else if (r->args_count == 2 && imap_arg_atom_is(&r->args[1], "EXISTS") &&
		   imap_arg_number(&r->args[0], &n)) {
		e->exists = (uint32_t)n;
	}
}

/* EXAMINE the folder on this worker's connection unless it already is. */
static int worker_select(struct worker *w, const struct cache_folder *f,
			 struct examine_ctx *e_r)
{
	struct examine_ctx e = { 0 };
	char *q = imap_quote(f->server_name);
	int r;

	if (!q)
		return -EINVAL;
	w->selected = 0;
	/* Read-write mounts SELECT so that changes need no second SELECT. */
	const char *cmd = w->s->ro ? "EXAMINE" : "SELECT";
	if (imap_client_caps(w->client) & IMAP_CAP_CONDSTORE)
		r = imap_client_run(w->client, on_examine, &e, "%s %s (CONDSTORE)", cmd, q);
	else
		r = imap_client_run(w->client, on_examine, &e, "%s %s", cmd, q);
	free(q);
	if (r == IMAP_RESULT_OK) {
		w->selected = f->id;
		w->selected_rw = !w->s->ro;
	}
	if (e_r)
		*e_r = e;
	return r;
}

/* "17-Jul-1996 02:44:25 -0700" */
static int64_t parse_internaldate(const char *s)
{
	static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
	struct tm tm = { 0 };
	char mon[4];
	int day, year, hh, mm, ss, zone;
	const char *p;

	if (sscanf(s, " %d-%3s-%d %d:%d:%d %d", &day, mon, &year, &hh, &mm, &ss, &zone) != 7)
		return 0;
	p = strstr(months, mon);
	if (!p || (p - months) % 3)
		return 0;
	tm.tm_mday = day;
	tm.tm_mon = (int)(p - months) / 3;
	tm.tm_year = year - 1900;
	tm.tm_hour = hh;
	tm.tm_min = mm;
	tm.tm_sec = ss;
	int64_t t = (int64_t)timegm(&tm);
	int off = (abs(zone) / 100) * 3600 + (abs(zone) % 100) * 60;
	return zone < 0 ? t + off : t - off;
}

static char *join_flags(const struct imap_arg *list)
{
	size_t len = 1;
	char *s, *p;

	for (size_t i = 0; i < list->len; i++)
		len += list->v.items[i].len + 1;
	s = p = malloc(len);
	if (!s)
		return NULL;
	*p = '\0';
	for (size_t i = 0; i < list->len; i++) {
		const struct imap_arg *a = &list->v.items[i];

		/* \Recent belongs to one session and cannot be set. */
		if (a->type != IMAP_ARG_ATOM || imap_arg_atom_is(a, "\\Recent"))
			continue;
		if (p != s)
			*p++ = ' ';
		memcpy(p, a->v.str, a->len);
		p += a->len;
		*p = '\0';
	}
	return s;
}

static char *nstring_dup(const struct imap_arg *a)
{
	const char *s;
	size_t len;

	if (!a || !imap_arg_nstring(a, &s, &len) || !s || memchr(s, '\0', len))
		return NULL;
	return strndup(s, len);
}

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
	size_t added;
	struct meta_pending pending[META_BATCH];
	size_t npending;
};

/* Write the pending new messages, then tell fs/ their names. */
static void meta_flush(struct meta_ctx *mc)
{
	struct istore *s = mc->s;
	char *names[META_BATCH];
	size_t n = mc->npending;

	if (n == 0)
		return;
	cache_begin(s->cache);
	for (size_t i = 0; i < n; i++) {
		names[i] = NULL;
		if (cache_msg_put(s->cache, &mc->pending[i].m, mc->pending[i].base, &names[i]) == 0)
			mc->added++;
	}
	cache_commit(s->cache);
	for (size_t i = 0; i < n; i++) {
		if (names[i])
			emit_entry(s, mc->folder_id, names[i]);
		free(names[i]);
		free(mc->pending[i].base);
		free(mc->pending[i].m.flags);
		free(mc->pending[i].m.message_id);
	}
	mc->npending = 0;
}

static void meta_new(struct meta_ctx *mc, uint32_t uid, const struct imap_arg *list)
{
	struct istore *s = mc->s;
	const struct imap_arg *flags = imap_fetch_get(list, "FLAGS");
	const struct imap_arg *idate = imap_fetch_get(list, "INTERNALDATE");
	const struct imap_arg *size = imap_fetch_get(list, "RFC822.SIZE");
	const struct imap_arg *env = imap_fetch_get(list, "ENVELOPE");
	const struct imap_arg *modseq = imap_fetch_get(list, "MODSEQ");
	struct cache_msg m = { .folder_id = mc->folder_id, .uid = uid };
	char *subject = NULL, *from_name = NULL, *from_addr = NULL, *base = NULL;
	const char *is;
	size_t il;
	uint64_t n;
	time_t date = 0;

	if (idate && imap_arg_astring(idate, &is, &il) && is)
		m.mtime = parse_internaldate(is);
	if (size && imap_arg_number(size, &n))
		m.size = n;
	if (modseq && modseq->type == IMAP_ARG_LIST && modseq->len == 1 &&
	    imap_arg_number(&modseq->v.items[0], &n))
		m.modseq = n;
	m.flags = flags && flags->type == IMAP_ARG_LIST ? join_flags(flags) : strdup("");
	if (env && env->type == IMAP_ARG_LIST && env->len >= 10) {
		const struct imap_arg *e = env->v.items;
		char *datestr = nstring_dup(&e[0]);

		if (!datestr || names_parse_date(datestr, &date) < 0)
			date = (time_t)m.mtime;
		free(datestr);
		subject = nstring_dup(&e[1]);
		if (e[2].type == IMAP_ARG_LIST && e[2].len > 0 &&
		    e[2].v.items[0].type == IMAP_ARG_LIST && e[2].v.items[0].len >= 4) {
			const struct imap_arg *addr = e[2].v.items[0].v.items;
			char *mbox = nstring_dup(&addr[2]), *host = nstring_dup(&addr[3]);

			from_name = nstring_dup(&addr[0]);
			if (mbox && host && asprintf(&from_addr, "%s@%s", mbox, host) < 0)
				from_addr = NULL;
			else if (mbox && !host)
				from_addr = strdup(mbox);
			free(mbox);
			free(host);
		}
		m.message_id = nstring_dup(&e[9]);
	} else {
		date = (time_t)m.mtime;
	}
	if (s->names_uid) {
		if (asprintf(&base, "%u", uid) < 0)
			base = NULL;
	} else {
		base = names_message_base(date, from_name, from_addr, subject);
	}
	if (m.flags && base) {
		mc->pending[mc->npending].m = m;
		mc->pending[mc->npending].base = base;
		if (++mc->npending == META_BATCH)
			meta_flush(mc);
	} else {
		free(base);
		free(m.flags);
		free(m.message_id);
	}
	free(subject);
	free(from_name);
	free(from_addr);
}

static void meta_flags(struct meta_ctx *mc, uint32_t uid, const struct imap_arg *list)
{
	const struct imap_arg *flags = imap_fetch_get(list, "FLAGS");
	const struct imap_arg *modseq = imap_fetch_get(list, "MODSEQ");
	struct cache_msg m;
	uint64_t ms = 0;
	char *f;

	if (!flags || flags->type != IMAP_ARG_LIST)
		return;
	if (modseq && modseq->type == IMAP_ARG_LIST && modseq->len == 1)
		imap_arg_number(&modseq->v.items[0], &ms);
	f = join_flags(flags);
	if (f && cache_msg_get(mc->s->cache, mc->folder_id, uid, &m) == 0) {
		if (strcmp(m.flags, f) != 0) {
			cache_msg_set_flags(mc->s->cache, mc->folder_id, uid, f, ms);
			emit_message(mc->s, mc->folder_id, uid);
		}
		cache_msg_clear(&m);
	}
	free(f);
}

static void seen_add(struct meta_ctx *mc, uint64_t uid)
{
	if (mc->nseen == mc->capseen) {
		size_t cap = mc->capseen ? mc->capseen * 2 : 1024;
		uint32_t *p = realloc(mc->seen, cap * sizeof(*p));

		if (!p)
			return;
		mc->seen = p;
		mc->capseen = cap;
	}
	mc->seen[mc->nseen++] = (uint32_t)uid;
}

/* "1:3,7,9:10" from ESEARCH ALL */
static void seen_add_set(struct meta_ctx *mc, const char *set)
{
	const char *p = set;

	while (*p) {
		char *end;
		unsigned long a = strtoul(p, &end, 10), b = a;

		if (end == p)
			return;
		p = end;
		if (*p == ':') {
			b = strtoul(p + 1, &end, 10);
			p = end;
		}
		if (a > b) {
			unsigned long t = a;
			a = b;
			b = t;
		}
		for (unsigned long u = a; u <= b && u <= UINT32_MAX && b - a < 100000000ul; u++)
			seen_add(mc, u);
		if (*p == ',')
			p++;
		else if (*p)
			return;
	}
}

static void on_meta(void *ctx, const struct imap_response *r)
{
	struct meta_ctx *mc = ctx;
	uint64_t uid;

	if (r->args_count >= 1 && imap_arg_atom_is(&r->args[0], "SEARCH")) {
		for (size_t i = 1; i < r->args_count; i++)
			if (imap_arg_number(&r->args[i], &uid))
				seen_add(mc, uid);
		return;
	}
	if (r->args_count >= 1 && imap_arg_atom_is(&r->args[0], "ESEARCH")) {
		for (size_t i = 1; i + 1 < r->args_count; i++)
			if (imap_arg_atom_is(&r->args[i], "ALL") && r->args[i + 1].type == IMAP_ARG_ATOM)
				seen_add_set(mc, r->args[i + 1].v.str);
		return;
	}
	if (r->args_count != 3 || !imap_arg_atom_is(&r->args[1], "FETCH") ||
	    r->args[2].type != IMAP_ARG_LIST)
		return;
	const struct imap_arg *u = imap_fetch_get(&r->args[2], "UID");
	if (!u || !imap_arg_number(u, &uid) || uid == 0 || uid > UINT32_MAX)
		return;
	if (imap_fetch_get(&r->args[2], "ENVELOPE")) {
		if (uid >= mc->min_uid)
			meta_new(mc, (uint32_t)uid, &r->args[2]);
	} else {
		meta_flags(mc, (uint32_t)uid, &r->args[2]);
	}
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

/* Drop every cached message (UIDVALIDITY changed), telling fs/ each name. */
static void drop_folder_messages(struct istore *s, int64_t folder_id)
{
	uint32_t after = 0;

	for (;;) {
		struct cache_msg *msgs;
		size_t n;

		if (cache_msg_list(s->cache, folder_id, after, 1000, &msgs, &n) < 0 || n == 0)
			break;
		for (size_t i = 0; i < n; i++)
			emit_entry(s, folder_id, msgs[i].name);
		after = msgs[n - 1].uid;
		cache_msg_list_free(msgs, n);
	}
	cache_folder_reset(s->cache, folder_id);
}

/* One folder: new messages' metadata, expunges, flag changes. */
static int sync_folder(struct worker *w, int64_t folder_id)
{
	struct istore *s = w->s;
	struct cache_folder f;
	struct examine_ctx e;
	struct meta_ctx *mc = calloc(1, sizeof(*mc));
	uint32_t *uids = NULL;
	size_t nuids = 0;
	int r, tag_new = 0, tag_search = 0, tag_flags = 0;

	if (!mc)
		return -ENOMEM;
	mc->s = s;
	mc->folder_id = folder_id;
	if (cache_folder_get(s->cache, folder_id, &f) < 0) {
		free(mc);
		return -ENOENT;
	}
	if (f.flags & CACHE_FOLDER_NOSELECT) {
		r = 0;
		goto out;
	}
	r = worker_select(w, &f, &e);
	if (r != IMAP_RESULT_OK) {
		/* NO: the folder vanished or cannot be opened; not fatal. */
		if (r > 0)
			log_warn("cannot open folder %s: %s", f.server_name, imap_client_text(w->client));
		r = r > 0 ? 0 : r;
		goto out;
	}
	if (f.uidvalidity && e.uidvalidity != f.uidvalidity) {
		log_info("folder %s: UIDVALIDITY changed, dropping its cache", f.server_name);
		drop_folder_messages(s, folder_id);
		f.uidvalidity = 0;
		f.uidnext = 0;
		f.highestmodseq = 0;
	}
	if (cache_msg_uids(s->cache, folder_id, &uids, &nuids) < 0) {
		r = -EIO;
		goto out;
	}
	uint32_t maxuid = nuids ? uids[nuids - 1] : 0;
	bool condstore = e.highestmodseq && !e.nomodseq;

	if (e.exists == 0) {
		/* Nothing on the server: everything cached is gone. */
		mc->nseen = 0;
	} else {
		/* New UIDs only: never refetch what the cache knows. */
		if (e.uidnext == 0 || e.uidnext > maxuid + 1 || nuids == 0) {
			mc->min_uid = maxuid + 1;
			tag_new = imap_client_send(w->client,
						   "UID FETCH %u:* (UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE%s)",
						   maxuid + 1, condstore ? " MODSEQ" : "");
			s->fetches++;
		}
		if (nuids > 0) {
			tag_search = imap_client_send(w->client, "UID SEARCH %sUID 1:%u",
						      (imap_client_caps(w->client) & IMAP_CAP_ESEARCH) ?
						      "RETURN (ALL) " : "", maxuid);
			if (!condstore)
				tag_flags = imap_client_send(w->client, "UID FETCH 1:%u (UID FLAGS)", maxuid);
			else if (e.highestmodseq != f.highestmodseq)
				tag_flags = imap_client_send(w->client,
							     "UID FETCH 1:%u (UID FLAGS) (CHANGEDSINCE %llu)",
							     maxuid, (unsigned long long)f.highestmodseq);
			if (tag_flags > 0)
				s->fetches++;
		}
	}
	if (tag_new < 0 || tag_search < 0 || tag_flags < 0) {
		r = -EIO;
		goto out;
	}
	/* Wait for the pipelined commands in order. */
	int tags[3] = { tag_new, tag_search, tag_flags };
	for (int i = 0; i < 3; i++) {
		if (tags[i] <= 0)
			continue;
		r = imap_client_wait(w->client, tags[i], on_meta, mc);
		if (r < 0)
			goto out;
		if (r != IMAP_RESULT_OK)
			log_warn("folder %s: %s", f.server_name, imap_client_text(w->client));
	}
	meta_flush(mc);
	/* Expunged: cached UIDs the server no longer has. */
	if (e.exists == 0 || tag_search > 0) {
		qsort(mc->seen, mc->nseen, sizeof(*mc->seen), cmp_u32);
		for (size_t i = 0; i < nuids; i++) {
			if (mc->nseen && bsearch(&uids[i], mc->seen, mc->nseen, sizeof(*mc->seen), cmp_u32))
				continue;
			struct cache_msg m;

			if (cache_msg_get(s->cache, folder_id, uids[i], &m) == 0) {
				cache_msg_delete(s->cache, folder_id, uids[i]);
				emit_entry(s, folder_id, m.name);
				cache_msg_clear(&m);
			}
		}
	}
	cache_folder_set_state(s->cache, folder_id, e.uidvalidity, e.uidnext,
			       e.highestmodseq, (int64_t)time(NULL));
	if (mc->added)
		log_debug("folder %s: %zu new messages", f.server_name, mc->added);
	r = 0;
out:
	cache_folder_clear(&f);
	free(uids);
	meta_flush(mc);
	free(mc->seen);
	free(mc);
	return r;
}

/* ---- bodies ---- */

struct body_ctx {
	struct istore *s;
	int64_t folder_id;
	uint32_t *uids;
	size_t nuids;
	bool *got;
};

/* A body arrived: store it, then wake whoever waits for it. */
static void body_done(struct istore *s, int64_t folder_id, uint32_t uid,
		      enum store_error err, bool changed)
{
	struct waiter *waiters = NULL;

	pthread_mutex_lock(&s->lock);
	for (struct inflight **p = &s->inflight; *p; p = &(*p)->next) {
		if ((*p)->folder_id == folder_id && (*p)->uid == uid) {
			struct inflight *i = *p;

			*p = i->next;
			waiters = i->waiters;
			free(i);
			break;
		}
	}
	pthread_mutex_unlock(&s->lock);
	call_waiters(waiters, err, changed);
}

static void on_body(void *ctx, const struct imap_response *r)
{
	struct body_ctx *bc = ctx;
	const struct imap_arg *u, *body;
	const char *data;
	size_t len;
	uint64_t uid;
	struct cache_msg m;
	bool changed = false;

	if (r->args_count != 3 || !imap_arg_atom_is(&r->args[1], "FETCH") ||
	    r->args[2].type != IMAP_ARG_LIST)
		return;
	u = imap_fetch_get(&r->args[2], "UID");
	body = imap_fetch_get(&r->args[2], "BODY[]");
	if (!u || !body || !imap_arg_number(u, &uid))
		return;
	size_t k;
	for (k = 0; k < bc->nuids && bc->uids[k] != uid; k++)
		;
	if (k == bc->nuids || bc->got[k])
		return; /* a UID we never asked for: ignore it */
	if (!imap_arg_nstring(body, &data, &len) || !data)
		return;
	if (cache_msg_get(bc->s->cache, bc->folder_id, (uint32_t)uid, &m) < 0)
		return;
	changed = m.size != len;
	cache_msg_clear(&m);
	if (cache_body_store_volatile(bc->s->cache, bc->folder_id, (uint32_t)uid, data, len) < 0)
		return;
	bc->got[k] = true;
	if (changed) {
		log_debug("message %u: server said %s bytes differently than it sent (%zu)",
			  (unsigned)uid, "RFC822.SIZE", len);
		emit_message(bc->s, bc->folder_id, (uint32_t)uid);
	}
	body_done(bc->s, bc->folder_id, (uint32_t)uid, STORE_OK, changed);
}

/* Fetch uid and some uncached successors in one UID FETCH; with
 * prefetch, only the uncached successors of uid, for nobody in
 * particular (the next window of a sequential reader). */
static int fetch_bodies(struct worker *w, int64_t folder_id, uint32_t uid, bool prefetch)
{
	struct istore *s = w->s;
	uint32_t *more = NULL, batch[READAHEAD_COUNT + 1];
	size_t nmore = 0, n = 0;
	uint64_t bytes = 0;
	bool got[READAHEAD_COUNT + 1] = { false };
	struct cache_folder f;
	char set[READAHEAD_COUNT * 12 + 16];
	size_t pos = 0;
	int r;

	if (!prefetch)
		batch[n++] = uid;
	/* Read-ahead: the next uncached messages that nobody fetches yet. */
	if (cache_msg_uncached(s->cache, folder_id, uid, READAHEAD_COUNT * 2, &more, &nmore) == 0) {
		pthread_mutex_lock(&s->lock);
		for (size_t i = 0; i < nmore && n <= READAHEAD_COUNT; i++) {
			struct inflight *in;
			struct cache_msg m;
			bool busy = false;

			for (in = s->inflight; in && !busy; in = in->next)
				busy = in->folder_id == folder_id && in->uid == more[i];
			if (busy)
				continue;
			if (cache_msg_get(s->cache, folder_id, more[i], &m) < 0)
				continue;
			bytes += m.size;
			cache_msg_clear(&m);
			if (bytes > READAHEAD_BYTES && n > 0 && (n > 1 || prefetch))
				break;
			in = calloc(1, sizeof(*in));
			if (!in)
				break;
			in->folder_id = folder_id;
			in->uid = more[i];
			in->next = s->inflight;
			s->inflight = in;
			batch[n++] = more[i];
		}
		/* A reader that needed a fetch of a full window is likely to
		 * go on: let another connection fetch the window after it
		 * meanwhile, so that two streams run side by side. */
		if (!prefetch && n == READAHEAD_COUNT + 1 && s->nworkers > 1) {
			struct job *j = enqueue(s, JOB_FETCH, folder_id, batch[n - 1], true);

			if (j)
				j->prefetch = true;
		}
		pthread_mutex_unlock(&s->lock);
		free(more);
	}
	if (n == 0)
		return 0;
	for (size_t i = 0; i < n; i++)
		pos += (size_t)snprintf(set + pos, sizeof(set) - pos, "%s%u", i ? "," : "", batch[i]);

	struct body_ctx bc = { .s = s, .folder_id = folder_id, .uids = batch, .nuids = n, .got = got };
	for (int attempt = 0; attempt < 2; attempt++) {
		const char *err;

		if ((!w->client || !imap_client_alive(w->client)) && worker_connect(w, &err) < 0) {
			log_warn("%s", err);
			set_online(s, false);
			r = -EIO;
			break;
		}
		set_online(s, true);
		if (w->selected != folder_id) {
			if (cache_folder_get(s->cache, folder_id, &f) < 0) {
				r = -ENOENT;
				break;
			}
			r = worker_select(w, &f, NULL);
			cache_folder_clear(&f);
			if (r > 0) {
				r = -ENOENT;
				break;
			}
			if (r < 0)
				continue;
		}
		s->fetches++;
		r = imap_client_run(w->client, on_body, &bc, "UID FETCH %s (UID BODY.PEEK[])", set);
		if (r >= 0)
			break;
		log_warn("fetching messages: %s", imap_client_error(w->client));
	}
	/* Whatever did not arrive: gone on the server, or a failure. */
	for (size_t i = 0; i < n; i++)
		if (!got[i])
			body_done(s, folder_id, batch[i],
				  r == 0 ? STORE_ERR_NOTFOUND : r == -ENOENT ? STORE_ERR_NOTFOUND : STORE_ERR_IO,
				  false);
	return r;
}

/* ---- changes ---- */

/* A server's NO, by its response code (RFC 5530). */
static enum store_error refusal(struct imap_client *c)
{
	const char *code = imap_client_code(c);

	if (!strcasecmp(code, "OVERQUOTA") || !strcasecmp(code, "LIMIT"))
		return STORE_ERR_QUOTA;
	if (!strcasecmp(code, "NONEXISTENT"))
		return STORE_ERR_NOTFOUND;
	if (!strcasecmp(code, "NOPERM"))
		return STORE_ERR_PERM;
	return STORE_ERR_REFUSED;
}

/* A command's outcome as a store_error, logging refusals. */
static enum store_error outcome(struct worker *w, int r, const char *what)
{
	if (r == IMAP_RESULT_OK)
		return STORE_OK;
	if (r < 0) {
		log_warn("%s: %s", what, imap_client_error(w->client));
		return STORE_ERR_IO;
	}
	log_warn("%s refused by the server: %s", what, imap_client_text(w->client));
	return refusal(w->client);
}

/* SELECT (read-write) the folder unless it already is. */
static enum store_error select_rw(struct worker *w, int64_t folder_id, struct cache_folder *f_r)
{
	struct examine_ctx e;
	char *q;
	int r;

	if (cache_folder_get(w->s->cache, folder_id, f_r) < 0)
		return STORE_ERR_NOTFOUND;
	if (w->selected == folder_id && w->selected_rw)
		return STORE_OK;
	q = imap_quote(f_r->server_name);
	if (!q)
		return STORE_ERR_IO;
	memset(&e, 0, sizeof(e));
	w->selected = 0;
	r = imap_client_run(w->client, on_examine, &e, "SELECT %s", q);
	free(q);
	if (r == IMAP_RESULT_OK) {
		w->selected = folder_id;
		w->selected_rw = true;
	}
	return outcome(w, r, f_r->server_name);
}

/* Expunge exactly one UID of the selected folder: UID EXPUNGE where the
 * server has UIDPLUS; otherwise EXPUNGE with the \Deleted flags that other
 * clients set lifted for the moment, so that only ours goes. */
static enum store_error expunge_one(struct worker *w, uint32_t uid)
{
	struct meta_ctx mc = { .s = w->s };
	enum store_error e;
	int t1, t2, r;

	if (imap_client_caps(w->client) & IMAP_CAP_UIDPLUS) {
		t1 = imap_client_send(w->client, "UID STORE %u +FLAGS.SILENT (\\Deleted)", uid);
		t2 = imap_client_send(w->client, "UID EXPUNGE %u", uid);
		if (t1 < 0 || t2 < 0)
			return outcome(w, t1 < 0 ? t1 : t2, "expunge");
		r = imap_client_wait(w->client, t1, NULL, NULL);
		if (r < 0)
			return outcome(w, r, "expunge");
		e = outcome(w, r, "store \\Deleted");
		r = imap_client_wait(w->client, t2, NULL, NULL);
		return e != STORE_OK ? e : outcome(w, r, "expunge");
	}
	r = imap_client_run(w->client, on_meta, &mc, "UID SEARCH DELETED");
	if ((e = outcome(w, r, "search")) != STORE_OK)
		goto out;
	char *set = NULL;
	size_t setlen = 0;
	FILE *f = open_memstream(&set, &setlen);
	for (size_t i = 0; f && i < mc.nseen; i++)
		if (mc.seen[i] != uid)
			fprintf(f, "%s%u", ftell(f) ? "," : "", mc.seen[i]);
	if (f)
		fclose(f);
	if (set && *set) {
		r = imap_client_run(w->client, NULL, NULL, "UID STORE %s -FLAGS.SILENT (\\Deleted)", set);
		if ((e = outcome(w, r, "store")) != STORE_OK)
			goto out_set;
	}
	r = imap_client_run(w->client, NULL, NULL, "UID STORE %u +FLAGS.SILENT (\\Deleted)", uid);
	if ((e = outcome(w, r, "store \\Deleted")) == STORE_OK) {
		r = imap_client_run(w->client, NULL, NULL, "EXPUNGE");
		e = outcome(w, r, "expunge");
	}
	if (set && *set)
		imap_client_run(w->client, NULL, NULL, "UID STORE %s +FLAGS.SILENT (\\Deleted)", set);
out_set:
	free(set);
out:
	free(mc.seen);
	return e;
}

/* "COPYUID uidvalidity src dst" for one message: the new UID, or 0. */
static uint32_t copyuid_dst(const char *args, uint32_t dst_validity)
{
	unsigned long v, src, dst;
	char tail;

	if (sscanf(args, "%lu %lu %lu%c", &v, &src, &dst, &tail) != 3)
		return 0;
	if (dst_validity && v != dst_validity)
		return 0;
	return dst > 0 && dst <= UINT32_MAX ? (uint32_t)dst : 0;
}

struct moved_ctx {
	char args[256];
};

/* MOVE reports COPYUID in an untagged OK before the expunges. */
static void on_moved(void *ctx, const struct imap_response *r)
{
	struct moved_ctx *m = ctx;

	if (r->kind == IMAP_RESP_UNTAGGED && r->status == IMAP_STATUS_OK &&
	    r->code_count > 0 && imap_arg_atom_is(&r->code[0], "COPYUID"))
		imap_code_args(r, m->args, sizeof(m->args));
}

/* Make sure the destination's listing is in the cache before a message
 * is added to it by UID: otherwise a later sync, seeing a known maximum
 * UID, would never fetch the older ones. */
static void ensure_synced(struct worker *w, int64_t folder_id)
{
	struct cache_folder f;
	bool never = true;

	if (cache_folder_get(w->s->cache, folder_id, &f) == 0) {
		never = f.uidvalidity == 0;
		cache_folder_clear(&f);
	}
	if (never)
		sync_folder(w, folder_id);
}

static enum store_error op_move_do(struct worker *w, struct op *op);

static enum store_error op_remove(struct worker *w, struct op *op)
{
	struct istore *s = w->s;
	struct cache_folder f;
	struct cache_msg m;
	enum store_error e;

	if (cache_msg_get(s->cache, op->folder_id, op->uid, &m) < 0)
		return STORE_ERR_NOTFOUND;
	e = select_rw(w, op->folder_id, &f);
	if (e != STORE_OK)
		goto out;
	if (s->delete_trash && s->trash_id && s->trash_id != op->folder_id) {
		struct cache_folder t;

		if (cache_folder_get(s->cache, s->trash_id, &t) == 0) {
			/* rm with delete=trash is a move to Trash. */
			struct op mv = { .kind = OP_MOVE, .folder_id = op->folder_id, .uid = op->uid,
					 .to_folder_id = s->trash_id, .name = m.name };
			cache_folder_clear(&t);
			cache_folder_clear(&f);
			e = op_move_do(w, &mv);
			cache_msg_clear(&m);
			return e;
		}
	}
	e = expunge_one(w, op->uid);
	if (e == STORE_OK) {
		cache_msg_delete(s->cache, op->folder_id, op->uid);
		emit_entry(s, op->folder_id, m.name);
	}
out:
	cache_folder_clear(&f);
	cache_msg_clear(&m);
	return e;
}

static enum store_error op_move_do(struct worker *w, struct op *op)
{
	struct istore *s = w->s;
	struct cache_folder f, t;
	struct cache_msg m;
	struct moved_ctx mc = { "" };
	enum store_error e;
	uint32_t newuid = 0;
	char *q;
	int r;

	if (cache_msg_get(s->cache, op->folder_id, op->uid, &m) < 0)
		return STORE_ERR_NOTFOUND;
	if (cache_folder_get(s->cache, op->to_folder_id, &t) < 0) {
		cache_msg_clear(&m);
		return STORE_ERR_NOTFOUND;
	}
	if (t.flags & CACHE_FOLDER_NOSELECT) {
		cache_msg_clear(&m);
		cache_folder_clear(&t);
		return STORE_ERR_PERM;
	}
	ensure_synced(w, op->to_folder_id);
	cache_folder_clear(&t);
	cache_folder_get(s->cache, op->to_folder_id, &t);
	e = select_rw(w, op->folder_id, &f);
	if (e != STORE_OK)
		goto out;
	q = imap_quote(t.server_name);
	if (!q) {
		e = STORE_ERR_IO;
		goto out;
	}
	if (imap_client_caps(w->client) & IMAP_CAP_MOVE) {
		r = imap_client_run(w->client, on_moved, &mc, "UID MOVE %u %s", op->uid, q);
		e = outcome(w, r, "move");
		if (e == STORE_OK && !mc.args[0] && !strcasecmp(imap_client_code(w->client), "COPYUID"))
			snprintf(mc.args, sizeof(mc.args), "%s", imap_client_code_args(w->client));
	} else {
		/* Copy first, then expunge: the message is never nowhere. */
		r = imap_client_run(w->client, NULL, NULL, "UID COPY %u %s", op->uid, q);
		e = outcome(w, r, "copy");
		if (e == STORE_OK) {
			if (!strcasecmp(imap_client_code(w->client), "COPYUID"))
				snprintf(mc.args, sizeof(mc.args), "%s", imap_client_code_args(w->client));
			e = expunge_one(w, op->uid);
		}
	}
	free(q);
	if (e != STORE_OK)
		goto out;
	newuid = copyuid_dst(mc.args, t.uidvalidity);
	if (newuid && cache_msg_move(s->cache, op->folder_id, op->uid, op->to_folder_id, newuid,
				     op->name) == 0) {
		emit_entry(s, op->folder_id, m.name);
		emit_entry(s, op->to_folder_id, op->name);
	} else {
		/* No COPYUID: the destination's next sync finds it (under a
		 * name of our making). */
		cache_msg_delete(s->cache, op->folder_id, op->uid);
		emit_entry(s, op->folder_id, m.name);
		sync_folder(w, op->to_folder_id);
	}
out:
	cache_folder_clear(&f);
	cache_folder_clear(&t);
	cache_msg_clear(&m);
	return e;
}

/* The server's name for a new folder `name` under parent_id. */
static char *child_server_name(struct istore *s, int64_t parent_id, const char *name)
{
	struct cache_folder p;
	char *enc = NULL, *full = NULL;

	if (strchr(name, s->delim) || mutf7_encode(name, &enc) < 0)
		return NULL;
	if (parent_id == 0)
		return enc;
	if (cache_folder_get(s->cache, parent_id, &p) == 0) {
		if (asprintf(&full, "%s%c%s", p.server_name, s->delim, enc) < 0)
			full = NULL;
		cache_folder_clear(&p);
	}
	free(enc);
	return full;
}

static enum store_error op_mkdir(struct worker *w, struct op *op)
{
	struct istore *s = w->s;
	char *server = child_server_name(s, op->folder_id, op->name), *q;
	enum store_error e;
	int64_t id;
	int r;

	if (!server)
		return STORE_ERR_PERM;
	q = imap_quote(server);
	r = q ? imap_client_run(w->client, NULL, NULL, "CREATE %s", q) : -EINVAL;
	e = outcome(w, r, "create folder");
	if (e == STORE_OK) {
		imap_client_run(w->client, NULL, NULL, "SUBSCRIBE %s", q);
		if (cache_folder_put(s->cache, op->folder_id, op->name, server, 0, &id) == 0) {
			emit_entry(s, op->folder_id, op->name);
			pthread_mutex_lock(&s->lock);
			struct fstate *fs = fstate_get(s, id);
			if (fs)
				fs->ready = true; /* new and empty */
			pthread_mutex_unlock(&s->lock);
		}
	} else if (!strcasecmp(imap_client_code(w->client), "ALREADYEXISTS")) {
		e = STORE_ERR_REFUSED;
	}
	free(q);
	free(server);
	return e;
}

struct count_ctx {
	uint64_t messages;
	bool got;
};

static void on_status(void *ctx, const struct imap_response *r)
{
	struct count_ctx *c = ctx;

	if (r->args_count == 3 && imap_arg_atom_is(&r->args[0], "STATUS") &&
	    r->args[2].type == IMAP_ARG_LIST) {
		for (size_t i = 0; i + 1 < r->args[2].len; i += 2)
			if (imap_arg_atom_is(&r->args[2].v.items[i], "MESSAGES") &&
			    imap_arg_number(&r->args[2].v.items[i + 1], &c->messages))
				c->got = true;
	}
}

static enum store_error op_rmdir(struct worker *w, struct op *op)
{
	struct istore *s = w->s;
	struct cache_folder f;
	struct count_ctx cc = { 0 };
	enum store_error e = STORE_OK;
	char *q;
	int r;

	if (cache_folder_get(s->cache, op->folder_id, &f) < 0)
		return STORE_ERR_NOTFOUND;
	q = imap_quote(f.server_name);
	if (!q) {
		cache_folder_clear(&f);
		return STORE_ERR_IO;
	}
	if (!(f.flags & CACHE_FOLDER_NOSELECT)) {
		r = imap_client_run(w->client, on_status, &cc, "STATUS %s (MESSAGES)", q);
		e = outcome(w, r, "status");
		if (e == STORE_OK && cc.got && cc.messages > 0) {
			/* Mail arrived that the cache has not seen yet. */
			e = STORE_ERR_REFUSED;
			op->len = 1; /* tells the caller: not empty */
			sync_folder(w, op->folder_id);
		}
	}
	if (e == STORE_OK) {
		if (w->selected == op->folder_id) {
			imap_client_run(w->client, NULL, NULL, "UNSELECT");
			w->selected = 0;
		}
		imap_client_run(w->client, NULL, NULL, "UNSUBSCRIBE %s", q);
		r = imap_client_run(w->client, NULL, NULL, "DELETE %s", q);
		e = outcome(w, r, "delete folder");
		if (e == STORE_OK) {
			cache_folder_delete(s->cache, op->folder_id);
			emit_entry(s, f.parent_id, f.name);
		}
	}
	free(q);
	cache_folder_clear(&f);
	return e;
}

static enum store_error op_rename(struct worker *w, struct op *op)
{
	struct istore *s = w->s;
	struct cache_folder f;
	char *server, *qo = NULL, *qn = NULL;
	enum store_error e;
	int r;

	if (cache_folder_get(s->cache, op->folder_id, &f) < 0)
		return STORE_ERR_NOTFOUND;
	if (!strcasecmp(f.server_name, "INBOX")) {
		/* RENAME INBOX moves its messages: not what mv means. */
		cache_folder_clear(&f);
		return STORE_ERR_PERM;
	}
	server = child_server_name(s, op->to_folder_id, op->name);
	if (!server) {
		cache_folder_clear(&f);
		return STORE_ERR_PERM;
	}
	qo = imap_quote(f.server_name);
	qn = imap_quote(server);
	if (w->selected == op->folder_id) {
		imap_client_run(w->client, NULL, NULL, "UNSELECT");
		w->selected = 0;
	}
	r = qo && qn ? imap_client_run(w->client, NULL, NULL, "RENAME %s %s", qo, qn) : -EINVAL;
	e = outcome(w, r, "rename folder");
	if (e == STORE_OK) {
		imap_client_run(w->client, NULL, NULL, "SUBSCRIBE %s", qn);
		if (cache_folder_rename(s->cache, op->folder_id, op->to_folder_id, op->name,
					server, s->delim) == 0) {
			emit_entry(s, f.parent_id, f.name);
			emit_entry(s, op->to_folder_id, op->name);
		}
	}
	free(qo);
	free(qn);
	free(server);
	cache_folder_clear(&f);
	return e;
}

static enum store_error op_append(struct worker *w, struct op *op)
{
	struct istore *s = w->s;
	struct cache_folder f;
	char date[64] = "", *prefix = NULL, *q;
	enum store_error e;
	int tag, r;

	ensure_synced(w, op->folder_id);
	if (cache_folder_get(s->cache, op->folder_id, &f) < 0)
		return STORE_ERR_NOTFOUND;
	if (f.flags & CACHE_FOLDER_NOSELECT) {
		cache_folder_clear(&f);
		return STORE_ERR_PERM;
	}
	if (op->mtime) {
		static const char *const mon[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
						   "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
		struct tm tm;
		time_t t = (time_t)op->mtime;

		gmtime_r(&t, &tm);
		snprintf(date, sizeof(date), " \"%02d-%s-%04d %02d:%02d:%02d +0000\"", tm.tm_mday,
			 mon[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
	}
	q = imap_quote(f.server_name);
	if (!q || asprintf(&prefix, "APPEND %s (\\Seen)%s", q, date) < 0) {
		free(q);
		cache_folder_clear(&f);
		return STORE_ERR_IO;
	}
	free(q);
	tag = imap_client_send_literal(w->client, prefix, op->data, op->len, NULL);
	free(prefix);
	r = tag < 0 ? tag : imap_client_wait(w->client, tag, NULL, NULL);
	e = outcome(w, r, "append");
	if (e == STORE_OK) {
		uint32_t uid = 0;
		unsigned long v, u;
		char tail;

		if (!strcasecmp(imap_client_code(w->client), "APPENDUID") &&
		    sscanf(imap_client_code_args(w->client), "%lu %lu%c", &v, &u, &tail) == 2 &&
		    v == f.uidvalidity && u > 0 && u <= UINT32_MAX)
			uid = (uint32_t)u;
		if (uid) {
			struct cache_msg m = {
				.folder_id = op->folder_id,
				.uid = uid,
				.name = op->name,
				.size = op->len,
				.mtime = op->mtime ? op->mtime : (int64_t)time(NULL),
				.flags = (char *)"\\Seen",
			};
			char *name = NULL;

			if (cache_msg_put(s->cache, &m, NULL, &name) < 0) {
				m.name = NULL;
				cache_msg_put(s->cache, &m, op->name, &name);
			}
			cache_body_store(s->cache, op->folder_id, uid, op->data, op->len);
			emit_entry(s, op->folder_id, name ? name : op->name);
			free(name);
		} else {
			sync_folder(w, op->folder_id);
		}
	}
	cache_folder_clear(&f);
	return e;
}

struct flags_ctx {
	struct meta_ctx mc;
	bool seen;
};

static void on_flags(void *ctx, const struct imap_response *r)
{
	struct flags_ctx *fc = ctx;

	if (r->args_count == 3 && imap_arg_atom_is(&r->args[1], "FETCH") &&
	    r->args[2].type == IMAP_ARG_LIST && imap_fetch_get(&r->args[2], "FLAGS"))
		fc->seen = true;
	on_meta(&fc->mc, r);
}

static enum store_error op_flags(struct worker *w, struct op *op)
{
	struct cache_folder f;
	struct flags_ctx fc = { .mc = { .s = w->s, .folder_id = op->folder_id } };
	enum store_error e;
	char *clean = malloc(strlen(op->flags) + 1), *tok, *save = NULL, *p;
	int r;

	if (!clean)
		return STORE_ERR_IO;
	/* \Recent cannot be stored; the rest passes through as atoms. */
	p = clean;
	*p = '\0';
	for (tok = strtok_r(op->flags, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
		if (!strcasecmp(tok, "\\Recent"))
			continue;
		p += sprintf(p, "%s%s", p == clean ? "" : " ", tok);
	}
	e = select_rw(w, op->folder_id, &f);
	if (e == STORE_OK) {
		r = imap_client_run(w->client, on_flags, &fc, "UID STORE %u FLAGS (%s)", op->uid, clean);
		e = outcome(w, r, "store flags");
		if (e == STORE_OK && !fc.seen) {
			/* No FETCH came back: the message is gone. */
			e = STORE_ERR_NOTFOUND;
		}
	}
	cache_folder_clear(&f);
	free(clean);
	return e;
}

static void run_op(struct worker *w, struct op *op)
{
	struct istore *s = w->s;
	enum store_error e = STORE_ERR_IO;
	const char *err;

	if (!w->client || !imap_client_alive(w->client)) {
		if (worker_connect(w, &err) < 0) {
			log_warn("%s", err);
			set_online(s, false);
			goto done;
		}
	}
	set_online(s, true);
	switch (op->kind) {
	case OP_REMOVE:
		e = op_remove(w, op);
		break;
	case OP_MOVE:
		e = op_move_do(w, op);
		break;
	case OP_MKDIR:
		e = op_mkdir(w, op);
		break;
	case OP_RMDIR:
		e = op_rmdir(w, op);
		break;
	case OP_RENAME:
		e = op_rename(w, op);
		break;
	case OP_APPEND:
		e = op_append(w, op);
		break;
	case OP_FLAGS:
		e = op_flags(w, op);
		break;
	}
done:
	op->done(op->ctx, e, op->kind == OP_RMDIR && op->len == 1);
	free(op->name);
	free(op->flags);
	free(op->data);
	free(op);
}

static void queue_op(struct istore *s, struct op *op)
{
	struct job *j;

	pthread_mutex_lock(&s->lock);
	j = enqueue(s, JOB_OP, op->folder_id, op->uid, true);
	if (j)
		j->op = op;
	pthread_mutex_unlock(&s->lock);
	if (!j) {
		op->done(op->ctx, STORE_ERR_IO, false);
		free(op->name);
		free(op->flags);
		free(op->data);
		free(op);
	}
}

static struct op *new_op(enum op_kind kind, int64_t folder_id, uint32_t uid,
			 store_done_fn *done, void *ctx)
{
	struct op *op = calloc(1, sizeof(*op));

	if (!op) {
		done(ctx, STORE_ERR_IO, false);
		return NULL;
	}
	op->kind = kind;
	op->folder_id = folder_id;
	op->uid = uid;
	op->done = done;
	op->ctx = ctx;
	return op;
}

static void istore_remove(struct store *base, int64_t folder_id, uint32_t uid,
			  store_done_fn *done, void *ctx)
{
	struct op *op = new_op(OP_REMOVE, folder_id, uid, done, ctx);

	if (op)
		queue_op((struct istore *)base, op);
}

static void istore_move(struct store *base, int64_t folder_id, uint32_t uid,
			int64_t to_folder_id, const char *name, store_done_fn *done, void *ctx)
{
	struct op *op = new_op(OP_MOVE, folder_id, uid, done, ctx);

	if (!op)
		return;
	op->to_folder_id = to_folder_id;
	op->name = strdup(name);
	queue_op((struct istore *)base, op);
}

static void istore_mkdir(struct store *base, int64_t parent_id, const char *name,
			 store_done_fn *done, void *ctx)
{
	struct op *op = new_op(OP_MKDIR, parent_id, 0, done, ctx);

	if (!op)
		return;
	op->name = strdup(name);
	queue_op((struct istore *)base, op);
}

static void istore_rmdir(struct store *base, int64_t folder_id, store_done_fn *done, void *ctx)
{
	struct op *op = new_op(OP_RMDIR, folder_id, 0, done, ctx);

	if (op)
		queue_op((struct istore *)base, op);
}

static void istore_rename_folder(struct store *base, int64_t folder_id, int64_t new_parent_id,
				 const char *new_name, store_done_fn *done, void *ctx)
{
	struct op *op = new_op(OP_RENAME, folder_id, 0, done, ctx);

	if (!op)
		return;
	op->to_folder_id = new_parent_id;
	op->name = strdup(new_name);
	queue_op((struct istore *)base, op);
}

/* The message as IMAP wants it: every line ending CRLF. */
static char *read_crlf(int fd, size_t *len_r)
{
	struct stat st;
	char *in, *out;
	size_t n = 0, o = 0;

	if (fstat(fd, &st) < 0 || st.st_size > (off_t)APPEND_MAX)
		return NULL;
	in = malloc((size_t)st.st_size + 1);
	if (!in)
		return NULL;
	while (n < (size_t)st.st_size) {
		ssize_t r = pread(fd, in + n, (size_t)st.st_size - n, (off_t)n);

		if (r <= 0)
			break;
		n += (size_t)r;
	}
	out = malloc(2 * n + 1);
	if (!out) {
		free(in);
		return NULL;
	}
	for (size_t i = 0; i < n; i++) {
		if (in[i] == '\n' && (i == 0 || in[i - 1] != '\r'))
			out[o++] = '\r';
		out[o++] = in[i];
	}
	free(in);
	*len_r = o;
	return out;
}

static void istore_append(struct store *base, int64_t folder_id, const char *name, int fd,
			  int64_t mtime, store_done_fn *done, void *ctx)
{
	struct op *op = new_op(OP_APPEND, folder_id, 0, done, ctx);

	if (!op)
		return;
	op->name = strdup(name);
	op->mtime = mtime;
	op->data = read_crlf(fd, &op->len);
	if (!op->data || !op->name) {
		done(ctx, op->data ? STORE_ERR_IO : STORE_ERR_QUOTA, false);
		free(op->name);
		free(op->data);
		free(op);
		return;
	}
	queue_op((struct istore *)base, op);
}

static void istore_set_flags(struct store *base, int64_t folder_id, uint32_t uid,
			     const char *flags, store_done_fn *done, void *ctx)
{
	struct op *op = new_op(OP_FLAGS, folder_id, uid, done, ctx);

	if (!op)
		return;
	op->flags = strdup(flags);
	queue_op((struct istore *)base, op);
}

/* ---- workers ---- */

static void finish_sync(struct istore *s, int64_t folder_id, enum store_error err)
{
	struct waiter *waiters = NULL;

	pthread_mutex_lock(&s->lock);
	struct fstate *fs = fstate_get(s, folder_id);
	if (fs) {
		fs->syncing = false;
		if (err == STORE_OK)
			fs->ready = true;
		waiters = fs->waiters;
		fs->waiters = NULL;
	}
	pthread_mutex_unlock(&s->lock);
	call_waiters(waiters, err, false);
}

static void run_job(struct worker *w, struct job *j)
{
	struct istore *s = w->s;
	const char *err;
	int r = -EIO;

	if (j->kind == JOB_OP) {
		run_op(w, j->op);
		return;
	}
	for (int attempt = 0; attempt < 2 && j->kind != JOB_FETCH; attempt++) {
		if (!w->client || !imap_client_alive(w->client)) {
			if (worker_connect(w, &err) < 0) {
				log_warn("%s", err);
				set_online(s, false);
				r = -EIO;
				break;
			}
		}
		set_online(s, true);
		if (j->kind == JOB_LIST) {
			r = do_list(s, w->client, &err);
			if (r < 0)
				log_warn("listing folders: %s", err);
		} else {
			r = sync_folder(w, j->folder_id);
		}
		if (r >= 0 || imap_client_alive(w->client))
			break;
		log_warn("%s", imap_client_error(w->client));
	}
	switch (j->kind) {
	case JOB_LIST:
		break;
	case JOB_SYNC: {
		/* Offline with a listing from an earlier session: serve it. */
		struct cache_folder f;
		enum store_error e = r >= 0 ? STORE_OK : STORE_ERR_OFFLINE;

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
		fetch_bodies(w, j->folder_id, j->uid, j->prefetch);
		break;
	case JOB_OP:
		break;
	}
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct istore *s = w->s;

	pthread_mutex_lock(&s->lock);
	for (;;) {
		while (!s->stopping && !s->queue_head)
			pthread_cond_wait(&s->cond, &s->lock);
		if (s->stopping)
			break;
		struct job *j = s->queue_head;

		s->queue_head = j->next;
		if (!s->queue_head)
			s->queue_tail = NULL;
		if (j->kind == JOB_SYNC) {
			struct fstate *f = fstate_get(s, j->folder_id);

			if (f) {
				if (f->syncing) {
					/* Another worker syncs it: run after. */
					j->next = NULL;
					if (s->queue_tail)
						s->queue_tail->next = j;
					else
						s->queue_head = j;
					s->queue_tail = j;
					pthread_mutex_unlock(&s->lock);
					struct timespec ts = { 0, 20 * 1000 * 1000 };
					nanosleep(&ts, NULL);
					pthread_mutex_lock(&s->lock);
					continue;
				}
				f->queued = false;
				f->syncing = true;
			}
		}
		pthread_mutex_unlock(&s->lock);
		run_job(w, j);
		free(j);
		pthread_mutex_lock(&s->lock);
	}
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

/* Queue a LIST (optionally) and a sync of every folder; INBOX first. */
static void queue_full_sync(struct istore *s, bool list)
{
	struct cache_folder *fl;
	size_t n;

	pthread_mutex_lock(&s->lock);
	if (list)
		enqueue(s, JOB_LIST, 0, 0, false);
	s->last_sync = (int64_t)time(NULL);
	pthread_mutex_unlock(&s->lock);
	if (cache_folder_list(s->cache, &fl, &n) < 0)
		return;
	pthread_mutex_lock(&s->lock);
	for (size_t i = 0; i < n; i++)
		if (!strcmp(fl[i].server_name, "INBOX"))
			queue_sync(s, fl[i].id, false);
	for (size_t i = 0; i < n; i++)
		if (!(fl[i].flags & CACHE_FOLDER_NOSELECT))
			queue_sync(s, fl[i].id, false);
	pthread_mutex_unlock(&s->lock);
	cache_folder_list_free(fl, n);
}

static void *poller_main(void *arg)
{
	struct istore *s = arg;

	pthread_mutex_lock(&s->lock);
	while (!s->stopping) {
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += s->poll_seconds;
		while (!s->stopping && !s->poll_asked)
			if (pthread_cond_timedwait(&s->poll_cond, &s->lock, &ts) == ETIMEDOUT)
				break;
		if (s->stopping)
			break;
		s->poll_asked = false;
		pthread_mutex_unlock(&s->lock);
		queue_full_sync(s, true);
		pthread_mutex_lock(&s->lock);
	}
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

/* ---- IDLE ---- */

static void note_recent(struct istore *s, int64_t folder_id)
{
	/* Called with the lock held. */
	if (folder_id > 0 && s->recent_id != folder_id) {
		s->recent_id = folder_id;
		pthread_cond_broadcast(&s->idle_cond);
	}
}

static int64_t idler_target(struct idler *d)
{
	struct istore *s = d->s;
	int64_t t;

	pthread_mutex_lock(&s->lock);
	if (s->stopping)
		t = -1;
	else if (d->follow_recent)
		t = s->recent_id != s->inbox_id ? s->recent_id : 0;
	else
		t = s->inbox_id;
	pthread_mutex_unlock(&s->lock);
	return t;
}

static void idler_sleep(struct idler *d, int ms)
{
	struct istore *s = d->s;
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&s->lock);
	if (!s->stopping)
		pthread_cond_timedwait(&s->idle_cond, &s->lock, &ts);
	pthread_mutex_unlock(&s->lock);
}

/* Does this untagged response say the folder changed? */
static bool idle_change(const struct imap_response *r)
{
	if (r->kind != IMAP_RESP_UNTAGGED)
		return false;
	if (r->args_count >= 1 && imap_arg_atom_is(&r->args[0], "VANISHED"))
		return true;
	return r->args_count >= 2 &&
	       (imap_arg_atom_is(&r->args[1], "EXISTS") || imap_arg_atom_is(&r->args[1], "EXPUNGE") ||
		imap_arg_atom_is(&r->args[1], "FETCH"));
}

/* One IDLE round on target: returns when the server reports a change
 * (true), the target changes, 25 minutes pass (RFC 2177 asks for less
 * than 30), or the connection fails. */
static bool idle_round(struct idler *d, int64_t target)
{
	struct istore *s = d->s;
	struct cache_folder f;
	const struct imap_response *r;
	bool changed = false;
	time_t start = time(NULL);
	int tag, ret;
	char *q;

	if (cache_folder_get(s->cache, target, &f) < 0) {
		idler_sleep(d, 1000);
		return false;
	}
	q = imap_quote(f.server_name);
	cache_folder_clear(&f);
	if (!q)
		return false;
	ret = imap_client_run(d->client, NULL, NULL, "EXAMINE %s", q);
	free(q);
	if (ret != IMAP_RESULT_OK) {
		idler_sleep(d, 2000);
		return false;
	}
	tag = imap_client_send(d->client, "IDLE");
	if (tag < 0)
		return false;
	for (;;) {
		ret = imap_client_poll(d->client, 500, &r);
		if (ret < 0)
			return changed;
		if (ret == 1 && r->kind == IMAP_RESP_TAGGED)
			return changed; /* the server ended it */
		if (ret == 1 && idle_change(r))
			changed = true;
		if (changed || idler_target(d) != target || time(NULL) - start > 25 * 60)
			break;
	}
	if (imap_client_raw(d->client, "DONE") == 0)
		imap_client_wait(d->client, tag, NULL, NULL);
	return changed;
}

static void *idler_main(void *arg)
{
	struct idler *d = arg;
	struct istore *s = d->s;
	int backoff = 1000;

	for (;;) {
		int64_t target = idler_target(d);
		const char *err;

		if (target < 0)
			break;
		if (target == 0) {
			idler_sleep(d, 1000);
			continue;
		}
		if (!d->client || !imap_client_alive(d->client)) {
			struct imap_client_opts o = {
				.url = &s->url,
				.password = s->password,
				.cafile = s->cafile,
				.insecure = s->insecure,
				.trace_name = d->follow_recent ? "idle2" : "idle1",
			};

			imap_client_close(&d->client);
			if (imap_client_open(&d->client, &o, NULL, &err) < 0) {
				log_debug("IDLE connection: %s", err);
				idler_sleep(d, backoff);
				backoff = backoff < 60000 ? backoff * 2 : 60000;
				continue;
			}
			backoff = 1000;
			if (!(imap_client_caps(d->client) & IMAP_CAP_IDLE)) {
				/* No IDLE: the poller alone keeps us current. */
				imap_client_close(&d->client);
				break;
			}
		}
		if (idle_round(d, target)) {
			pthread_mutex_lock(&s->lock);
			queue_sync(s, target, true);
			pthread_mutex_unlock(&s->lock);
		}
	}
	imap_client_close(&d->client);
	return NULL;
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
	if (pthread_create(&s->poller, NULL, poller_main, s) != 0)
		return -EAGAIN;
	s->started = true;
	for (int i = 0; i < 2; i++) {
		s->idlers[i].s = s;
		s->idlers[i].follow_recent = i == 1;
		s->idlers[i].started =
			pthread_create(&s->idlers[i].thread, NULL, idler_main, &s->idlers[i]) == 0;
	}
	/* The first full sync: every folder's listing, INBOX first. */
	queue_full_sync(s, false);
	return 0;
}

static bool istore_folder_is_ready(struct store *base, int64_t folder_id)
{
	struct istore *s = (struct istore *)base;
	bool ready;

	pthread_mutex_lock(&s->lock);
	struct fstate *f = fstate_get(s, folder_id);
	ready = f && f->ready;
	pthread_mutex_unlock(&s->lock);
	return ready;
}

static void istore_folder_ready(struct store *base, int64_t folder_id,
				store_done_fn *done, void *ctx)
{
	struct istore *s = (struct istore *)base;
	struct fstate *f;

	pthread_mutex_lock(&s->lock);
	note_recent(s, folder_id);
	f = fstate_get(s, folder_id);
	if (!f || f->ready) {
		pthread_mutex_unlock(&s->lock);
		done(ctx, f ? STORE_OK : STORE_ERR_IO, false);
		return;
	}
	if (!add_waiter(&f->waiters, done, ctx)) {
		pthread_mutex_unlock(&s->lock);
		done(ctx, STORE_ERR_IO, false);
		return;
	}
	if (!f->syncing)
		queue_sync(s, folder_id, true);
	pthread_mutex_unlock(&s->lock);
}

static void istore_fetch_body(struct store *base, int64_t folder_id, uint32_t uid,
			      store_done_fn *done, void *ctx)
{
	struct istore *s = (struct istore *)base;
	struct inflight *in;

	pthread_mutex_lock(&s->lock);
	note_recent(s, folder_id);
	for (in = s->inflight; in; in = in->next)
		if (in->folder_id == folder_id && in->uid == uid)
			break;
	if (in) {
		/* Already on its way (read-ahead, or another reader). */
		if (!add_waiter(&in->waiters, done, ctx)) {
			pthread_mutex_unlock(&s->lock);
			done(ctx, STORE_ERR_IO, false);
			return;
		}
		pthread_mutex_unlock(&s->lock);
		return;
	}
	in = calloc(1, sizeof(*in));
	if (!in || !add_waiter(&in->waiters, done, ctx)) {
		free(in);
		pthread_mutex_unlock(&s->lock);
		done(ctx, STORE_ERR_IO, false);
		return;
	}
	in->folder_id = folder_id;
	in->uid = uid;
	in->next = s->inflight;
	s->inflight = in;
	enqueue(s, JOB_FETCH, folder_id, uid, true);
	pthread_mutex_unlock(&s->lock);
}

static void istore_status(struct store *base, struct store_status *st)
{
	struct istore *s = (struct istore *)base;

	memset(st, 0, sizeof(*st));
	pthread_mutex_lock(&s->lock);
	st->state = s->online ? "online" : "offline";
	snprintf(st->server, sizeof(st->server), "%s", s->server);
	st->pending = 0;
	st->last_sync = s->last_sync;
	st->fetches = s->fetches;
	pthread_mutex_unlock(&s->lock);
}

static void istore_sync_now(struct store *base)
{
	struct istore *s = (struct istore *)base;

	pthread_mutex_lock(&s->lock);
	s->poll_asked = true;
	pthread_cond_signal(&s->poll_cond);
	pthread_mutex_unlock(&s->lock);
}

static void istore_destroy(struct store **basep)
{
	struct istore *s = (struct istore *)*basep;

	if (!s)
		return;
	pthread_mutex_lock(&s->lock);
	s->stopping = true;
	pthread_cond_broadcast(&s->cond);
	pthread_cond_broadcast(&s->poll_cond);
	pthread_cond_broadcast(&s->idle_cond);
	pthread_mutex_unlock(&s->lock);
	if (s->started) {
		for (unsigned i = 0; i < s->nworkers; i++)
			pthread_join(s->workers[i].thread, NULL);
		pthread_join(s->poller, NULL);
		for (int i = 0; i < 2; i++)
			if (s->idlers[i].started)
				pthread_join(s->idlers[i].thread, NULL);
	}
	for (unsigned i = 0; i < MAX_WORKERS; i++)
		imap_client_close(&s->workers[i].client);
	while (s->queue_head) {
		struct job *j = s->queue_head;

		s->queue_head = j->next;
		free(j);
	}
	for (size_t i = 0; i < s->fst_len; i++) {
		if (s->fst[i])
			call_waiters(s->fst[i]->waiters, STORE_ERR_IO, false);
		free(s->fst[i]);
	}
	free(s->fst);
	while (s->inflight) {
		struct inflight *in = s->inflight;

		s->inflight = in->next;
		call_waiters(in->waiters, STORE_ERR_IO, false);
		free(in);
	}
	if (s->password) {
		OPENSSL_cleanse(s->password, strlen(s->password));
		free(s->password);
	}
	free(s->cafile);
	url_free(&s->url);
	pthread_mutex_destroy(&s->lock);
	pthread_cond_destroy(&s->cond);
	pthread_cond_destroy(&s->poll_cond);
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
	.remove = istore_remove,
	.move = istore_move,
	.mkdir = istore_mkdir,
	.rmdir = istore_rmdir,
	.rename_folder = istore_rename_folder,
	.append = istore_append,
	.set_flags = istore_set_flags,
	.destroy = istore_destroy,
};

struct store *imap_store_new(const struct imap_store_opts *o, bool *auth_failed_r,
			     const char **error_r)
{
	struct istore *s = calloc(1, sizeof(*s));
	char *canon;

	if (!s) {
		*error_r = "out of memory";
		return NULL;
	}
	s->base.ops = &istore_ops;
	s->base.caps = STORE_CAP_FOLDERS | STORE_CAP_FLAGS | STORE_CAP_WRITE;
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->cond, NULL);
	pthread_cond_init(&s->poll_cond, NULL);
	pthread_cond_init(&s->idle_cond, NULL);
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
	s->poll_seconds = o->poll_seconds ? o->poll_seconds : 60;
	s->nworkers = o->connections ? o->connections : 2;
	if (s->nworkers > MAX_WORKERS)
		s->nworkers = MAX_WORKERS;
	canon = url_to_string(o->url);
	snprintf(s->server, sizeof(s->server), "%s", canon ? canon : o->url->host);
	free(canon);
	for (unsigned i = 0; i < MAX_WORKERS; i++) {
		s->workers[i].s = s;
		s->workers[i].index = (int)i;
	}
	if (!s->url.user || !s->url.host || !s->url.scheme || !s->password) {
		*error_r = "out of memory";
		goto fail;
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
	if (imap_client_open(&s->workers[0].client, &co, auth_failed_r, error_r) < 0)
		goto fail;
	if (imap_client_caps(s->workers[0].client) & IMAP_CAP_CONDSTORE)
		imap_client_enable(s->workers[0].client, "CONDSTORE");
	if (do_list(s, s->workers[0].client, error_r) < 0)
		goto fail;
	s->online = true;
	return &s->base;
fail:
	{
		struct store *b = &s->base;

		istore_destroy(&b);
	}
	return NULL;
}
