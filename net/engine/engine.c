/* engine.c: the runtime the protocol engines share (see engine.h). */
#include "engine.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"

bool engine_waiter_add(struct engine_waiter **list, store_done_fn *done, void *ctx)
{
	struct engine_waiter *w = malloc(sizeof(*w));

	if (!w)
		return false;
	w->done = done;
	w->ctx = ctx;
	w->next = *list;
	*list = w;
	return true;
}

void engine_waiters_call(struct engine_waiter *w, enum store_error err, bool changed)
{
	while (w) {
		struct engine_waiter *next = w->next;

		w->done(w->ctx, err, changed);
		free(w);
		w = next;
	}
}

void engine_init(struct engine *e, const struct url *url, unsigned poll_seconds)
{
	char *canon = url_to_string(url);

	memset(e, 0, sizeof(*e));
	pthread_mutex_init(&e->lock, NULL);
	pthread_cond_init(&e->cond, NULL);
	pthread_cond_init(&e->poll_cond, NULL);
	e->poll_seconds = poll_seconds ? poll_seconds : 60;
	snprintf(e->server, sizeof(e->server), "%s", canon ? canon : url->host);
	free(canon);
}

static void *engine_poller(void *arg)
{
	struct engine *e = arg;

	pthread_mutex_lock(&e->lock);
	while (!e->stopping) {
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		/* Offline, look for the server more often: changes made
		 * meanwhile wait in the journal. */
		ts.tv_sec += !e->online && e->poll_seconds > 10 ? 10 : e->poll_seconds;
		while (!e->stopping && !e->poll_asked)
			if (pthread_cond_timedwait(&e->poll_cond, &e->lock, &ts) == ETIMEDOUT)
				break;
		if (e->stopping)
			break;
		e->poll_asked = false;
		e->last_sync = (int64_t)time(NULL);
		pthread_mutex_unlock(&e->lock);
		e->poll(e->poll_ctx);
		pthread_mutex_lock(&e->lock);
	}
	pthread_mutex_unlock(&e->lock);
	return NULL;
}

int engine_start_poller(struct engine *e, void (*poll)(void *ctx), void *ctx)
{
	e->poll = poll;
	e->poll_ctx = ctx;
	if (pthread_create(&e->poller, NULL, engine_poller, e) != 0)
		return -EAGAIN;
	e->poller_started = true;
	return 0;
}

void engine_sync_now(struct engine *e)
{
	pthread_mutex_lock(&e->lock);
	e->poll_asked = true;
	pthread_cond_signal(&e->poll_cond);
	pthread_mutex_unlock(&e->lock);
}

void engine_set_online(struct engine *e, bool online)
{
	pthread_mutex_lock(&e->lock);
	/* At unmount the connections are cut on purpose: no news. */
	if (e->online != online && !e->stopping)
		log_info("%s: %s", e->server, online ? "connected" : "connection lost");
	e->online = online;
	pthread_mutex_unlock(&e->lock);
}

void engine_status(struct engine *e, struct store_status *st)
{
	memset(st, 0, sizeof(*st));
	pthread_mutex_lock(&e->lock);
	st->state = e->online ? "online" : "offline";
	snprintf(st->server, sizeof(st->server), "%s", e->server);
	st->pending = 0;
	st->last_sync = e->last_sync;
	st->fetches = atomic_load_explicit(&e->fetches, memory_order_relaxed);
	st->dropped = e->dropped;
	pthread_mutex_unlock(&e->lock);
}

void engine_count_fetches(struct engine *e, unsigned n)
{
	atomic_fetch_add_explicit(&e->fetches, n, memory_order_relaxed);
}

void engine_stop(struct engine *e)
{
	pthread_mutex_lock(&e->lock);
	e->stopping = true;
	pthread_cond_broadcast(&e->cond);
	pthread_cond_broadcast(&e->poll_cond);
	pthread_mutex_unlock(&e->lock);
	if (e->poller_started) {
		pthread_join(e->poller, NULL);
		e->poller_started = false;
	}
}

void engine_destroy(struct engine *e)
{
	pthread_mutex_destroy(&e->lock);
	pthread_cond_destroy(&e->cond);
	pthread_cond_destroy(&e->poll_cond);
}
