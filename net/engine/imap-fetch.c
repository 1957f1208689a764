/* imap-fetch.c: message bodies, fetched with BODY.PEEK[] (never setting
 * \Seen) in windows of uncached successors, so that a sequential reader
 * costs one round trip per window, not per file. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "imap-store-private.h"
#include "log.h"

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
	struct engine_waiter *waiters = NULL;

	pthread_mutex_lock(&s->eng.lock);
	for (struct inflight **p = &s->inflight; *p; p = &(*p)->next) {
		if ((*p)->folder_id == folder_id && (*p)->uid == uid) {
			struct inflight *i = *p;

			*p = i->next;
			waiters = i->waiters;
			free(i);
			break;
		}
	}
	pthread_mutex_unlock(&s->eng.lock);
	engine_waiters_call(waiters, err, changed);
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
		imap_store_emit_message(bc->s, bc->folder_id, (uint32_t)uid);
	}
	body_done(bc->s, bc->folder_id, (uint32_t)uid, STORE_OK, changed);
}

/* Fetch uid and some uncached successors in one UID FETCH; with
 * prefetch, only the uncached successors of uid, for nobody in
 * particular (the next window of a sequential reader). */
int imap_fetch_bodies(struct worker *w, int64_t folder_id, uint32_t uid, bool prefetch)
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
		uint64_t sizes[READAHEAD_COUNT * 2];

		/* Sizes first: no index query while holding the engine's lock,
		 * which every FUSE thread asking folder_is_ready() takes. */
		for (size_t i = 0; i < nmore; i++) {
			struct cache_msg m;

			sizes[i] = UINT64_MAX;
			if (cache_msg_get(s->cache, folder_id, more[i], &m) == 0) {
				sizes[i] = m.size;
				cache_msg_clear(&m);
			}
		}
		pthread_mutex_lock(&s->eng.lock);
		for (size_t i = 0; i < nmore && n <= READAHEAD_COUNT; i++) {
			struct inflight *in;
			bool busy = false;

			for (in = s->inflight; in && !busy; in = in->next)
				busy = in->folder_id == folder_id && in->uid == more[i];
			/* One message over the whole budget is fetched when it
			 * is opened, never for nobody: over the literal limit
			 * it would fail the batch and come again every time. */
			if (busy || sizes[i] == UINT64_MAX || sizes[i] > READAHEAD_BYTES ||
			    journal_uid_is_local(more[i]))
				continue;
			bytes += sizes[i];
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
			struct job *j = imap_store_enqueue(s, JOB_FETCH, folder_id, batch[n - 1], true);

			if (j)
				j->prefetch = true;
		}
		pthread_mutex_unlock(&s->eng.lock);
		free(more);
	}
	if (n == 0)
		return 0;
	for (size_t i = 0; i < n; i++)
		pos += (size_t)snprintf(set + pos, sizeof(set) - pos, "%s%u", i ? "," : "", batch[i]);

	struct body_ctx bc = { .s = s, .folder_id = folder_id, .uids = batch, .nuids = n, .got = got };
	for (int attempt = 0; attempt < 2; attempt++) {
		const char *err;

		if ((!w->client || !imap_client_alive(w->client)) && imap_store_connect(w, &err) < 0) {
			log_warn("%s", err);
			engine_set_online(&s->eng, false);
			r = -EIO;
			break;
		}
		engine_set_online(&s->eng, true);
		if (w->selected != folder_id) {
			if (cache_folder_get(s->cache, folder_id, &f) < 0) {
				r = -ENOENT;
				break;
			}
			r = imap_sync_select(w, &f, NULL);
			cache_folder_clear(&f);
			if (r > 0) {
				r = -ENOENT;
				break;
			}
			if (r < 0 && imap_store_retry(w, r))
				continue;
			if (r < 0)
				break;
		}
		engine_count_fetches(&s->eng, 1);
		/* A minute, plus time for the bytes at a slow 128 KiB/s. */
		imap_client_set_deadline(w->client, 60 + (int)(bytes / (128 * 1024)));
		r = imap_client_run(w->client, on_body, &bc, "UID FETCH %s (UID BODY.PEEK[])", set);
		imap_client_set_deadline(w->client, 0);
		if (!imap_store_retry(w, r))
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

