/* engine.h: what the protocol engines (imap-store.c, pop3-store.c) share.
 *
 * The lock and the conditions their threads wait on, the poller thread
 * that calls the engine back every poll seconds or when asked (a write to
 * .mailfs/sync), the state that .mailfs/status reports, and lists of
 * callers waiting for a result.  The engines embed a struct engine and
 * keep their own queues and workers. */
#ifndef MAILFS_ENGINE_H
#define MAILFS_ENGINE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "store.h"
#include "url.h"

/* A caller parked until something is done. */
struct engine_waiter {
	store_done_fn *done;
	void *ctx;
	struct engine_waiter *next;
};

/* Add a waiter to *list (under the engine's lock); false without memory. */
bool engine_waiter_add(struct engine_waiter **list, store_done_fn *done, void *ctx);
/* Call and free every waiter of list (without the lock: the callbacks
 * reply to FUSE and may call back into the store). */
void engine_waiters_call(struct engine_waiter *list, enum store_error err, bool changed);

struct engine {
	pthread_mutex_t lock;
	pthread_cond_t cond;      /* work queued, or stopping */
	pthread_cond_t poll_cond; /* the poller's wake-up */
	/* lock: */
	bool stopping;
	bool poll_asked;
	bool online;
	int64_t last_sync;        /* unix time the last full sync started */
	unsigned dropped;         /* offline changes given up this session */
	/* atomic, not locked: a statistic that no other field depends on,
	 * bumped by every worker in the middle of its commands (see
	 * engine_count_fetches()). */
	_Atomic uint64_t fetches; /* fetch commands sent (UID FETCH, RETR) */
	/* constant after engine_init(): */
	unsigned poll_seconds;
	char server[256];         /* the SOURCE URL, for status and logs */
	void (*poll)(void *ctx);
	void *poll_ctx;
	pthread_t poller;
	bool poller_started;
};

/* poll_seconds 0 means 60. */
void engine_init(struct engine *e, const struct url *url, unsigned poll_seconds);
/* Start the poller: poll(ctx) runs, without the lock, every poll seconds
 * and after engine_sync_now().  0 or -errno. */
int engine_start_poller(struct engine *e, void (*poll)(void *ctx), void *ctx);
void engine_sync_now(struct engine *e);
/* Record a connection's fate; logs the change once. */
void engine_set_online(struct engine *e, bool online);
void engine_status(struct engine *e, struct store_status *status_r);
/* n more fetch commands sent (any thread, with or without the lock). */
void engine_count_fetches(struct engine *e, unsigned n);
/* Set stopping, wake every thread waiting on cond or poll_cond, join the
 * poller.  The engine joins its own threads afterwards. */
void engine_stop(struct engine *e);
void engine_destroy(struct engine *e);

#endif
