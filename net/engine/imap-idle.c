/* imap-idle.c: two IDLE connections (RFC 2177), one on INBOX and one on
 * the folder used last, which queue a sync of their folder when the server
 * reports a change there. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "imap-store-private.h"
#include "log.h"

/* ---- IDLE ---- */

static int64_t idler_target(struct idler *d)
{
	struct istore *s = d->s;
	int64_t t;

	pthread_mutex_lock(&s->eng.lock);
	if (s->eng.stopping)
		t = -1;
	else if (d->follow_recent)
		t = s->recent_id != s->inbox_id ? s->recent_id : 0;
	else
		t = s->inbox_id;
	pthread_mutex_unlock(&s->eng.lock);
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
	pthread_mutex_lock(&s->eng.lock);
	if (!s->eng.stopping)
		pthread_cond_timedwait(&s->idle_cond, &s->eng.lock, &ts);
	pthread_mutex_unlock(&s->eng.lock);
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

void *imap_idle_main(void *arg)
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
				if (!imap_store_stopping(s))
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
			pthread_mutex_lock(&s->eng.lock);
			imap_store_queue_sync(s, target, true);
			pthread_mutex_unlock(&s->eng.lock);
		}
	}
	imap_client_close(&d->client);
	return NULL;
}

