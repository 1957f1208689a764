/* pop3-store.c: the POP3 read-once spool (see pop3-store.h).
 *
 * Threads: one worker owns the POP3 session and takes jobs from one queue
 * (fetches and rm go to the front: a person is waiting); one poller queues
 * a sync every poll seconds or when asked.  One session at a time is all
 * POP3 allows anyway (the server locks the maildrop).  The lock protects
 * the queue, the in-flight fetches and the status; it is never held
 * across network I/O or while calling back into fs/.
 *
 * A session starts with STAT, UIDL and LIST, so every job knows which
 * message number has which UIDL in this session: numbers are stable until
 * QUIT, and a DELE only ever goes to the number whose UIDL it means.  It
 * lingers for LINGER_MS after the last job, so that `cat spool/...` of many
 * files runs in one session instead of one per file.
 *
 * Consuming is ordered for "nothing is lost": the body must be in the
 * cache; the UIDL is recorded as consumed with the identity of the body
 * (size, header digest), the body is moved into archive/ (cache_msg_move:
 * link, fsync of the directory, synchronous commit), and only then is DELE
 * sent, which the server applies at QUIT.  A crash between any two steps
 * leaves the message on the server, or in the archive, or both; "both" is
 * repaired by every sync, which deletes (or, with keep, hides) a server
 * message whose UIDL is recorded and whose size and header digest are the
 * archived one's, so it is never offered or archived twice.  A record goes
 * once the listings of 3 sessions over 24 h lacked its UIDL; a listed UIDL
 * with another identity is a new message (RFC 1939 lets a server reuse a
 * UIDL) and is offered.  A spool row keeps the identity it was listed
 * with, so that rm DELEs only that message. */
#include "pop3-store.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "engine.h"
#include "log.h"
#include "names.h"
#include "pop3-client.h"

#define SPOOL_NAME "spool"
#define ARCHIVE_NAME "archive"
/* Server names no IMAP mailbox can have, so a cache directory once used
 * for something else cannot be mistaken for ours. */
#define SPOOL_SERVER_NAME "\x01pop3:spool"
#define ARCHIVE_SERVER_NAME "\x01pop3:archive"

#define KV_NEXT_ID "pop3.next_id"
#define KV_UIDL "pop3.uidl."
/* A consumed UIDL and the identity of what was consumed under it:
 * "<local id> <size> <digest> <LIST size>" ("-": no digest; the LIST size
 * is missing in records from before it was kept: then the size); written
 * before identities were recorded: "<local id>" alone.  Dropped once the
 * listings have lacked the UIDL for a while (KV_MISSING): the server may
 * then give it to another message (RFC 1939). */
#define KV_ARCHIVED "pop3.archived."
#define KV_CONSUMED "pop3.consumed."
/* A recorded UIDL the listings lack: "<since> <sessions>".  A server
 * that briefly lists an empty or partial maildrop must not make a kept
 * message new again, so a record goes only once its UIDL has been
 * missing from FORGET_SESSIONS listings and for FORGET_SECONDS. */
#define KV_MISSING "pop3.missing."
#define FORGET_SESSIONS 3
#define FORGET_SECONDS (24 * 3600)
/* A RETR body whose size was not LIST's: readable, never consumed. */
#define KV_BADSIZE "pop3.badsize."
/* Who a spool row's message is: "<LIST size> <header digest>" ("-": no
 * digest), as listed when the row was made.  A UIDL the server gives to
 * another message meanwhile must not make rm DELE that one. */
#define KV_SPOOL "pop3.spool."

/* A header digest: the first 16 bytes of SHA-256, in hex. */
#define DIGEST_HEX 32
/* Header bytes looked at for a digest (TOP's and the body's alike). */
#define IDENT_HEAD_MAX ((size_t)256 << 10)

/* Room for any of the keys above. */
#define KV_KEY_MAX (32 + POP3_UIDL_MAX)

/* An idle session is ended (QUIT) after this long without a job. */
#define LINGER_MS 1000
/* A busy session still commits its DELEs this often. */
#define SESSION_MAX_SECONDS 30
#define READAHEAD_COUNT 24
#define READAHEAD_BYTES (16u << 20)
/* New messages written to the cache per transaction. */
#define PUT_BATCH 200
/* Header values longer than this are cut (names keep far less). */
#define HEADER_VALUE_MAX 4096

enum job_kind { JOB_SYNC, JOB_FETCH, JOB_CONSUME, JOB_REMOVE, JOB_EMIT };

struct job {
	enum job_kind kind;
	int64_t folder_id;
	uint32_t uid;
	store_done_fn *done; /* JOB_REMOVE */
	void *ctx;
	char *name;          /* JOB_EMIT */
	struct job *next;
};

/* A body being fetched; waiters are called when it lands. */
struct inflight {
	uint32_t uid;
	struct engine_waiter *waiters;
	struct inflight *next;
};

/* An rm waiting for QUIT to commit its DELE. */
struct commit {
	uint32_t uid;
	char *uidl;
	store_done_fn *done;
	void *ctx;
	struct commit *next;
};

/* The open session; the worker's alone. */
struct session {
	struct pop3_client *client;
	struct pop3_msg *msgs;      /* by number */
	struct pop3_msg **by_uidl;  /* the same, by UIDL */
	size_t nmsgs;
	char **dup_uidls;           /* UIDLs given to several messages */
	size_t ndup_uidls;
	bool dirty;                 /* DELE sent: QUIT commits it */
	struct commit *commits;
	time_t started;
};

/* A record (KV_ARCHIVED) whose message TOP showed to be the one consumed,
 * in this mount: with the same number and size it is not asked again. */
struct verified {
	char uidl[POP3_UIDL_MAX + 1];
	unsigned n;
	uint64_t size;
};

/* Lock order: eng.lock and the cache's lock are never held together. */
struct pstore {
	/* constant once the store is made: */
	struct store base;
	struct url url;
	char *password;
	char *cafile;
	bool insecure;
	bool names_uid;
	bool keep; /* also set by ro */
	bool ro;   /* -o ro: no DELE ever, nothing consumed */
	struct cache *cache; /* its own lock */
	int64_t spool_id, archive_id;
	const char *crash_at; /* MAILFS_TEST_CRASH_AT, or NULL */
	int64_t forget_seconds; /* FORGET_SECONDS, or MAILFS_TEST_FORGET_SECONDS */
	struct store_events ev;

	struct engine eng;
	/* eng.lock: */
	struct job *queue_head, *queue_tail;
	struct inflight *inflight;
	struct engine_waiter *sync_waiters;
	bool sync_queued;
	bool spool_ready;
	bool connect_failed; /* the last connect failed (log once) */

	struct session sess; /* the worker's (or new()'s before start) */
	struct verified *verified; /* the worker's too, sorted by UIDL */
	size_t nverified;
	pthread_t worker;
	bool started;
};

/* ---- small helpers ---- */

/* Queue a job; urgent ones go to the front.  Called with the lock held. */
static bool enqueue(struct pstore *s, struct job *j, bool urgent)
{
	if (urgent) {
		j->next = s->queue_head;
		s->queue_head = j;
		if (!s->queue_tail)
			s->queue_tail = j;
	} else {
		j->next = NULL;
		if (s->queue_tail)
			s->queue_tail->next = j;
		else
			s->queue_head = j;
		s->queue_tail = j;
	}
	pthread_cond_signal(&s->eng.cond);
	return true;
}

static struct job *job_new(enum job_kind kind, int64_t folder_id, uint32_t uid)
{
	struct job *j = calloc(1, sizeof(*j));

	if (j) {
		j->kind = kind;
		j->folder_id = folder_id;
		j->uid = uid;
	}
	return j;
}

/* Called with the lock held. */
static void queue_sync(struct pstore *s, bool urgent)
{
	struct job *j;

	if (s->sync_queued)
		return;
	j = job_new(JOB_SYNC, s->spool_id, 0);
	if (!j)
		return;
	s->sync_queued = true;
	enqueue(s, j, urgent);
}

static void emit_entry(struct pstore *s, int64_t folder_id, const char *name)
{
	if (s->ev.entry_changed && name)
		s->ev.entry_changed(s->ev.ctx, folder_id, name);
}

static void emit_message(struct pstore *s, int64_t folder_id, uint32_t uid)
{
	if (s->ev.message_changed)
		s->ev.message_changed(s->ev.ctx, folder_id, uid);
}

/* The documented fault-injection hook (pop3-store.h). */
static void crash_point(struct pstore *s, const char *where)
{
	if (s->crash_at && !strcmp(s->crash_at, where)) {
		log_info("MAILFS_TEST_CRASH_AT=%s: killing the daemon", where);
		raise(SIGKILL);
	}
}

static bool kv_has(struct pstore *s, const char *prefix, const char *uidl)
{
	char key[KV_KEY_MAX];
	char *v = NULL;
	bool has;

	snprintf(key, sizeof(key), "%s%s", prefix, uidl);
	has = cache_kv_get(s->cache, key, &v) == 0;
	free(v);
	return has;
}

static int kv_put(struct pstore *s, const char *prefix, const char *uidl,
		  const char *value)
{
	char key[KV_KEY_MAX];

	snprintf(key, sizeof(key), "%s%s", prefix, uidl);
	return cache_kv_set(s->cache, key, value);
}

static int cmp_msg_uidl(const void *a, const void *b)
{
	const struct pop3_msg *x = *(const struct pop3_msg *const *)a;
	const struct pop3_msg *y = *(const struct pop3_msg *const *)b;

	return strcmp(x->uidl, y->uidl);
}

/* The message with this UIDL in the open session, or NULL. */
static struct pop3_msg *sess_find(struct session *se, const char *uidl)
{
	struct pop3_msg key, *kp = &key, **found;

	if (!uidl || strlen(uidl) > POP3_UIDL_MAX || se->nmsgs == 0)
		return NULL;
	strcpy(key.uidl, uidl);
	found = bsearch(&kp, se->by_uidl, se->nmsgs, sizeof(*se->by_uidl), cmp_msg_uidl);
	return found ? *found : NULL;
}

/* Does the open session's listing have this UIDL (once or more)? */
static bool sess_listed(struct session *se, const char *uidl)
{
	if (sess_find(se, uidl))
		return true;
	for (size_t i = 0; i < se->ndup_uidls; i++)
		if (!strcmp(se->dup_uidls[i], uidl))
			return true;
	return false;
}

/* ---- sessions ---- */

/* Log in and list the maildrop.  0, or -1 with *error_r; *auth_failed_r
 * (may be NULL) as pop3_client_open's. */
static int session_open(struct pstore *s, bool *auth_failed_r, const char **error_r)
{
	static __thread char err[512];
	struct session *se = &s->sess;
	struct pop3_client_opts o = {
		.url = &s->url,
		.password = s->password,
		.cafile = s->cafile,
		.insecure = s->insecure,
	};
	int r;

	if (se->client)
		return 0;
	if (pop3_client_open(&se->client, &o, auth_failed_r, error_r) < 0)
		return -1;
	r = pop3_client_scan(se->client, &se->msgs, &se->nmsgs);
	if (r != 0) {
		const char *text = pop3_client_text(se->client);

		if (r == POP3_RESULT_ERR && !strncasecmp(text, "UIDL", 4))
			snprintf(err, sizeof(err),
				 "%s does not support UIDL; mailfs needs it to read each message once",
				 s->url.host);
		else if (r == POP3_RESULT_ERR)
			snprintf(err, sizeof(err), "%s: listing the maildrop failed: %s",
				 s->url.host, text);
		else
			snprintf(err, sizeof(err), "%s: listing the maildrop failed: %s",
				 s->url.host, pop3_client_error(se->client));
		pop3_client_close(&se->client);
		*error_r = err;
		return -1;
	}
	se->by_uidl = malloc((se->nmsgs ? se->nmsgs : 1) * sizeof(*se->by_uidl));
	if (!se->by_uidl) {
		pop3_client_close(&se->client);
		free(se->msgs);
		se->msgs = NULL;
		*error_r = "out of memory";
		return -1;
	}
	for (size_t i = 0; i < se->nmsgs; i++)
		se->by_uidl[i] = &se->msgs[i];
	qsort(se->by_uidl, se->nmsgs, sizeof(*se->by_uidl), cmp_msg_uidl);
	/* A UIDL the server gives two messages (it must not) could make a
	 * DELE hit the copy that was never read: such messages are left
	 * alone, never offered and never deleted. */
	size_t dups = 0;
	for (size_t i = 0; i < se->nmsgs;) {
		size_t k = i + 1;

		while (k < se->nmsgs && !strcmp(se->by_uidl[k]->uidl, se->by_uidl[i]->uidl))
			k++;
		if (k - i > 1) {
			log_warn("%s: the server gives UIDL %s to %zu messages; leaving them alone",
				 s->eng.server, se->by_uidl[i]->uidl, k - i);
			/* Still listed: its records are not forgotten. */
			char **d = realloc(se->dup_uidls, (se->ndup_uidls + 1) * sizeof(*d));

			if (d) {
				se->dup_uidls = d;
				if ((d[se->ndup_uidls] = strdup(se->by_uidl[i]->uidl)))
					se->ndup_uidls++;
			}
			/* Marked (a real UIDL is never empty), dropped below. */
			for (size_t d = i + 1; d < k; d++)
				se->by_uidl[d]->uidl[0] = '\0';
			se->by_uidl[i]->uidl[0] = '\0';
			dups += k - i;
		}
		i = k;
	}
	if (dups > 0) {
		size_t j = 0;

		for (size_t i = 0; i < se->nmsgs; i++)
			if (se->msgs[i].uidl[0] != '\0')
				se->msgs[j++] = se->msgs[i];
		se->nmsgs = j;
		for (size_t i = 0; i < se->nmsgs; i++)
			se->by_uidl[i] = &se->msgs[i];
		qsort(se->by_uidl, se->nmsgs, sizeof(*se->by_uidl), cmp_msg_uidl);
	}
	se->dirty = false;
	se->started = time(NULL);
	return 0;
}

static void session_end(struct pstore *s);
static void spool_forget(struct pstore *s, const char *uidl, bool keep_id);

/* The worker's way in: open a session if none is, logging failures once
 * per outage.  0 or -1. */
static int session_need(struct pstore *s)
{
	const char *err;
	bool auth = false;

	if (s->sess.client && pop3_client_alive(s->sess.client))
		return 0;
	/* Dead: whatever it had not committed is undone, and the rm's
	 * waiting for it hear so. */
	if (s->sess.client)
		session_end(s);
	if (session_open(s, &auth, &err) < 0) {
		pthread_mutex_lock(&s->eng.lock);
		bool first = !s->connect_failed;
		s->connect_failed = true;
		pthread_mutex_unlock(&s->eng.lock);
		if (first || auth)
			log_warn("%s", err);
		engine_set_online(&s->eng, false);
		return -1;
	}
	pthread_mutex_lock(&s->eng.lock);
	s->connect_failed = false;
	pthread_mutex_unlock(&s->eng.lock);
	engine_set_online(&s->eng, true);
	return 0;
}

/* QUIT (committing the DELEs), then settle the rm's that waited for it. */
static void session_end(struct pstore *s)
{
	struct session *se = &s->sess;
	struct commit *c = se->commits;
	bool committed = false;

	if (se->client) {
		bool alive = pop3_client_alive(se->client);
		int r = alive ? pop3_client_quit(&se->client) : -ENOTCONN;

		if (!alive)
			pop3_client_close(&se->client);
		committed = r == POP3_RESULT_OK;
		if (!committed && (se->dirty || c))
			log_warn("%s: the session ended without committing its deletions (%s); "
				 "consumed messages will be deleted at the next sync",
				 s->eng.server, r == POP3_RESULT_ERR ? "QUIT refused" : "connection lost");
	}
	se->commits = NULL;
	while (c) {
		struct commit *next = c->next;
		struct cache_msg m;

		if (committed) {
			if (cache_msg_get(s->cache, s->spool_id, c->uid, &m) == 0) {
				cache_msg_delete(s->cache, s->spool_id, c->uid);
				spool_forget(s, c->uidl, false);
				c->done(c->ctx, STORE_OK, false);
				emit_entry(s, s->spool_id, m.name);
				cache_msg_clear(&m);
			} else {
				c->done(c->ctx, STORE_OK, false);
			}
		} else {
			c->done(c->ctx, STORE_ERR_IO, false);
		}
		free(c->uidl);
		free(c);
		c = next;
	}
	free(se->msgs);
	free(se->by_uidl);
	se->msgs = NULL;
	se->by_uidl = NULL;
	se->nmsgs = 0;
	se->dirty = false;
	for (size_t i = 0; i < se->ndup_uidls; i++)
		free(se->dup_uidls[i]);
	free(se->dup_uidls);
	se->dup_uidls = NULL;
	se->ndup_uidls = 0;
}

/* ---- headers (TOP n 0) ---- */

struct headers {
	char *from, *subject, *date, *received, *message_id;
};

static void headers_clear(struct headers *h)
{
	free(h->from);
	free(h->subject);
	free(h->date);
	free(h->received);
	free(h->message_id);
	memset(h, 0, sizeof(*h));
}

/* Append an unfolded header line to *v (created on the first line). */
static void header_add(char **v, const char *s, size_t len)
{
	size_t old = *v ? strlen(*v) : 0;
	char *n;

	if (old >= HEADER_VALUE_MAX)
		return;
	if (len > HEADER_VALUE_MAX - old)
		len = HEADER_VALUE_MAX - old;
	n = realloc(*v, old + len + 1);
	if (!n)
		return;
	memcpy(n + old, s, len);
	n[old + len] = '\0';
	/* NULs would end the string early; they mean nothing in a name. */
	for (size_t i = old; i < old + len; i++)
		if (n[i] == '\0')
			n[i] = ' ';
	*v = n;
}

/* The first From, Subject, Date and Received of a header block (folded
 * lines unfolded; the block ends at the first empty line). */
static void parse_headers(const char *p, size_t len, struct headers *h)
{
	const char *end = p + len;
	char **cur = NULL;

	memset(h, 0, sizeof(*h));
	while (p < end) {
		const char *lf = memchr(p, '\n', (size_t)(end - p));
		const char *le = lf ? lf : end;
		const char *next = lf ? lf + 1 : end;

		if (le > p && le[-1] == '\r')
			le--;
		if (le == p)
			break;
		if (*p == ' ' || *p == '\t') {
			if (cur)
				header_add(cur, p, (size_t)(le - p));
		} else {
			const char *colon = memchr(p, ':', (size_t)(le - p));
			size_t nlen = colon ? (size_t)(colon - p) : 0;

			cur = NULL;
			if (colon) {
				if (nlen == 4 && !strncasecmp(p, "From", 4) && !h->from)
					cur = &h->from;
				else if (nlen == 7 && !strncasecmp(p, "Subject", 7) && !h->subject)
					cur = &h->subject;
				else if (nlen == 4 && !strncasecmp(p, "Date", 4) && !h->date)
					cur = &h->date;
				else if (nlen == 8 && !strncasecmp(p, "Received", 8) && !h->received)
					cur = &h->received;
				else if (nlen == 10 && !strncasecmp(p, "Message-ID", 10) &&
					 !h->message_id)
					cur = &h->message_id;
			}
			if (cur) {
				const char *v = colon + 1;

				while (v < le && (*v == ' ' || *v == '\t'))
					v++;
				header_add(cur, v, (size_t)(le - v));
			}
		}
		p = next;
	}
}

static char *trim_dup(const char *s, size_t len)
{
	while (len > 0 && (*s == ' ' || *s == '\t')) {
		s++;
		len--;
	}
	while (len > 0 && (s[len - 1] == ' ' || s[len - 1] == '\t'))
		len--;
	return len ? strndup(s, len) : NULL;
}

/* "Name <a@b>", "\"Last, First\" <a@b>", "a@b (Name)", "a@b": the first
 * address's display name (still RFC 2047 encoded, quotes removed) and
 * address. */
static void parse_from(const char *v, char **name_r, char **addr_r)
{
	const char *p = v, *lt = NULL, *comma = NULL;
	bool quoted = false;

	*name_r = *addr_r = NULL;
	if (!v)
		return;
	for (; *p; p++) {
		if (*p == '\\' && quoted && p[1]) {
			p++;
		} else if (*p == '"') {
			quoted = !quoted;
		} else if (!quoted && *p == '<' && !lt) {
			lt = p;
		} else if (!quoted && *p == ',' && !lt) {
			comma = p;
			break;
		}
	}
	if (lt) {
		const char *gt = strchr(lt, '>');
		char *name = trim_dup(v, (size_t)(lt - v));

		*addr_r = trim_dup(lt + 1, gt ? (size_t)(gt - lt - 1) : strlen(lt + 1));
		if (name && name[0] == '"') {
			size_t j = 0;

			for (size_t i = 1; name[i] && name[i] != '"'; i++) {
				if (name[i] == '\\' && name[i + 1])
					i++;
				name[j++] = name[i];
			}
			name[j] = '\0';
		}
		*name_r = name;
		return;
	}
	size_t len = comma ? (size_t)(comma - v) : strlen(v);
	const char *paren = memchr(v, '(', len);
	if (paren) {
		const char *close = memchr(paren, ')', len - (size_t)(paren - v));

		*name_r = trim_dup(paren + 1, close ? (size_t)(close - paren - 1)
					     : len - (size_t)(paren - v) - 1);
		len = (size_t)(paren - v);
	}
	*addr_r = trim_dup(v, len);
}

/* ---- identities (AUDIT A1) ----
 *
 * A UIDL names a message only while that message exists: a recreated or
 * migrated maildrop, or a header-hash UIDL, can give it to another one.
 * So a consumed UIDL is recorded with the identity of what was consumed
 * (its size and a digest of its headers), a record is dropped once the
 * listings have lacked its UIDL for a while (forget_unlisted), and a DELE
 * only goes to a message shown to be the one made durable: with the
 * recorded size and digest (TOP n 0; RETR'd in this session where the
 * server has no TOP). */

/* A digest of From, Subject, Date, the first Received and Message-ID:
 * headers a server does not add to one of RETR's and TOP's copies only
 * (as it may Status: or X-UIDL:).  "" when the message has none of them. */
static void header_digest(const char *p, size_t len, char out[DIGEST_HEX + 1])
{
	static const char hex[] = "0123456789abcdef";
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned mdlen = 0;
	struct headers h;
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	bool any = false, ok;

	out[0] = '\0';
	parse_headers(p, len < IDENT_HEAD_MAX ? len : IDENT_HEAD_MAX, &h);
	const char *v[] = { h.from, h.subject, h.date, h.received, h.message_id };

	ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1;
	for (size_t i = 0; ok && i < sizeof(v) / sizeof(v[0]); i++) {
		any |= v[i] != NULL;
		/* With its NUL: "ab","c" and "a","bc" differ. */
		ok = EVP_DigestUpdate(ctx, v[i] ? v[i] : "", v[i] ? strlen(v[i]) + 1 : 1) == 1;
	}
	if (ok && any && EVP_DigestFinal_ex(ctx, md, &mdlen) == 1 && mdlen * 2 >= DIGEST_HEX) {
		for (size_t i = 0; i < DIGEST_HEX / 2; i++) {
			out[2 * i] = hex[md[i] >> 4];
			out[2 * i + 1] = hex[md[i] & 15];
		}
		out[DIGEST_HEX] = '\0';
	}
	EVP_MD_CTX_free(ctx);
	headers_clear(&h);
}

/* header_digest of a cached body. */
static void body_digest(struct pstore *s, int64_t folder_id, uint32_t uid,
			char out[DIGEST_HEX + 1])
{
	int fd = cache_body_open(s->cache, folder_id, uid);
	char *buf = fd >= 0 ? malloc(IDENT_HEAD_MAX) : NULL;
	size_t len = 0;

	out[0] = '\0';
	while (buf && len < IDENT_HEAD_MAX) {
		ssize_t got = read(fd, buf + len, IDENT_HEAD_MAX - len);

		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0)
			break;
		len += (size_t)got;
	}
	if (buf)
		header_digest(buf, len, out);
	free(buf);
	if (fd >= 0)
		close(fd);
}

/* Does the cached spool body uid hold exactly these bytes? */
static bool body_equals(struct pstore *s, uint32_t uid, const char *p, size_t len)
{
	int fd = cache_body_open(s->cache, s->spool_id, uid);
	char buf[65536];
	size_t off = 0;
	bool same = fd >= 0;

	while (same) {
		ssize_t got = read(fd, buf, sizeof(buf));

		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0)
			same = false;
		if (got <= 0)
			break;
		same = (size_t)got <= len - off && !memcmp(buf, p + off, (size_t)got);
		off += (size_t)got;
	}
	if (fd >= 0)
		close(fd);
	return same && off == len;
}

struct record {
	uint32_t uid;               /* its local id (archive/ row) */
	uint64_t size;              /* of the body */
	uint64_t list_size;         /* LIST's (an estimate on some servers) */
	char digest[DIGEST_HEX + 1]; /* "": unknown */
	bool old;                   /* from before identities: only uid */
};

static bool record_get(struct pstore *s, const char *uidl, struct record *rec)
{
	char key[KV_KEY_MAX], dig[DIGEST_HEX + 2] = "", *v = NULL;
	unsigned long long id = 0, size = 0, list_size = 0;
	int k;

	memset(rec, 0, sizeof(*rec));
	snprintf(key, sizeof(key), "%s%s", KV_ARCHIVED, uidl);
	if (cache_kv_get(s->cache, key, &v) < 0)
		return false;
	k = sscanf(v, "%llu %llu %33s %llu", &id, &size, dig, &list_size);
	free(v);
	rec->uid = id <= UINT32_MAX ? (uint32_t)id : 0;
	rec->old = k < 2;
	rec->size = size;
	rec->list_size = k == 4 ? list_size : size;
	if (k >= 3 && strlen(dig) == DIGEST_HEX)
		strcpy(rec->digest, dig);
	return true;
}

static int record_put(struct pstore *s, const char *uidl, uint32_t uid, uint64_t size,
		      const char *digest, uint64_t list_size)
{
	char v[104];

	snprintf(v, sizeof(v), "%" PRIu32 " %" PRIu64 " %s %" PRIu64, uid, size,
		 digest[0] ? digest : "-", list_size);
	return kv_put(s, KV_ARCHIVED, uidl, v);
}

/* The UIDL is no longer a consumed one (its message is another). */
static void record_drop(struct pstore *s, const char *uidl)
{
	kv_put(s, KV_ARCHIVED, uidl, NULL);
	kv_put(s, KV_CONSUMED, uidl, NULL);
}

static void spool_ident_put(struct pstore *s, const char *uidl, uint64_t size,
			    const char *digest)
{
	char v[80];

	snprintf(v, sizeof(v), "%" PRIu64 " %s", size, digest[0] ? digest : "-");
	kv_put(s, KV_SPOOL, uidl, v);
}

/* The identity a spool row was listed with; false if none is recorded
 * (a row from before identities). */
static bool spool_ident_get(struct pstore *s, const char *uidl, uint64_t *size_r,
			    char digest[DIGEST_HEX + 1])
{
	char key[KV_KEY_MAX], dig[DIGEST_HEX + 2] = "", *v = NULL;
	unsigned long long size = 0;
	int k;

	digest[0] = '\0';
	snprintf(key, sizeof(key), "%s%s", KV_SPOOL, uidl);
	if (cache_kv_get(s->cache, key, &v) < 0)
		return false;
	k = sscanf(v, "%llu %33s", &size, dig);
	free(v);
	if (k < 1)
		return false;
	*size_r = size;
	if (k == 2 && strlen(dig) == DIGEST_HEX)
		strcpy(digest, dig);
	return true;
}

/* A spool row's UIDL leaves spool/: what was kept about it goes too. */
static void spool_forget(struct pstore *s, const char *uidl, bool keep_id)
{
	if (!keep_id)
		kv_put(s, KV_UIDL, uidl, NULL);
	kv_put(s, KV_SPOOL, uidl, NULL);
	kv_put(s, KV_BADSIZE, uidl, NULL);
}

/* The size of an archived body still held, or UINT64_MAX. */
static uint64_t archived_size(struct pstore *s, uint32_t uid)
{
	struct cache_msg m;
	uint64_t size = UINT64_MAX;

	if (cache_msg_get(s->cache, s->archive_id, uid, &m) == 0) {
		if (m.cached)
			size = m.size;
		cache_msg_clear(&m);
	}
	return size;
}

static int cmp_verified(const void *a, const void *b)
{
	return strcmp(((const struct verified *)a)->uidl, ((const struct verified *)b)->uidl);
}

static bool verified_has(struct pstore *s, const struct pop3_msg *pm)
{
	struct verified key, *v;

	strcpy(key.uidl, pm->uidl);
	v = s->nverified ? bsearch(&key, s->verified, s->nverified, sizeof(key), cmp_verified)
			 : NULL;
	return v && v->n == pm->n && v->size == pm->size;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* One more listing lacks this recorded UIDL: true once it has been
 * missing long enough to be forgotten (the missing note then goes). */
static bool missing_long_enough(struct pstore *s, const char *uidl, int64_t now)
{
	char key[KV_KEY_MAX], v[48], *old = NULL;
	long long since = now, count = 0;

	snprintf(key, sizeof(key), "%s%s", KV_MISSING, uidl);
	if (cache_kv_get(s->cache, key, &old) == 0) {
		if (sscanf(old, "%lld %lld", &since, &count) != 2)
			since = now, count = 0;
		free(old);
	}
	count++;
	if (count >= FORGET_SESSIONS && now - since >= s->forget_seconds) {
		cache_kv_set(s->cache, key, NULL);
		return true;
	}
	snprintf(v, sizeof(v), "%lld %lld", since, count);
	cache_kv_set(s->cache, key, v);
	return false;
}

/* The UIDLs with a record (KV_ARCHIVED, KV_CONSUMED, KV_BADSIZE) that
 * this session's listing lacks, sorted, without repeats. */
static int unlisted_uidls(struct pstore *s, char ***out_r, size_t *n_r)
{
	static const char *const prefixes[] = { KV_ARCHIVED, KV_CONSUMED, KV_BADSIZE };
	char **out = NULL;
	size_t n = 0;

	for (size_t p = 0; p < sizeof(prefixes) / sizeof(prefixes[0]); p++) {
		size_t plen = strlen(prefixes[p]), nk;
		char **keys;

		if (cache_kv_keys(s->cache, prefixes[p], &keys, &nk) < 0)
			continue;
		char **grown = realloc(out, (n + nk + 1) * sizeof(*out));

		if (grown) {
			out = grown;
			for (size_t i = 0; i < nk; i++)
				if (!sess_listed(&s->sess, keys[i] + plen) &&
				    (out[n] = strdup(keys[i] + plen)))
					n++;
		}
		cache_kv_keys_free(keys, nk);
	}
	if (n)
		qsort(out, n, sizeof(*out), cmp_str);
	size_t j = 0;
	for (size_t i = 0; i < n; i++) {
		if (j > 0 && !strcmp(out[j - 1], out[i]))
			free(out[i]);
		else
			out[j++] = out[i];
	}
	*out_r = out;
	*n_r = j;
	return 0;
}

/* Drop the records of UIDLs the listings have lacked for a while: their
 * messages are gone (a committed DELE, or another client), and the server
 * may give the UIDL to a new message.  A UIDL listed again is no longer
 * missing. */
static void forget_unlisted(struct pstore *s)
{
	int64_t now = (int64_t)time(NULL);
	size_t dropped = 0, n = 0, nk = 0, plen = strlen(KV_MISSING);
	char **gone = NULL, **keys = NULL;
	bool batch = cache_begin(s->cache) == 0;

	unlisted_uidls(s, &gone, &n);
	for (size_t i = 0; i < n; i++) {
		if (!missing_long_enough(s, gone[i], now))
			continue;
		record_drop(s, gone[i]);
		kv_put(s, KV_BADSIZE, gone[i], NULL);
		dropped++;
	}
	/* Notes of UIDLs listed again, or without records any more. */
	if (cache_kv_keys(s->cache, KV_MISSING, &keys, &nk) == 0) {
		for (size_t i = 0; i < nk; i++) {
			char *u = keys[i] + plen;

			if (!n || !bsearch(&u, gone, n, sizeof(*gone), cmp_str))
				cache_kv_set(s->cache, keys[i], NULL);
		}
		cache_kv_keys_free(keys, nk);
	}
	for (size_t i = 0; i < n; i++)
		free(gone[i]);
	free(gone);
	if (batch && cache_commit(s->cache) < 0)
		log_warn("%s: cannot forget the records of messages gone from the server",
			 s->eng.server);
	if (dropped)
		log_debug("%s: forgot the records of %zu messages gone from the server",
			  s->eng.server, dropped);
}

/* A record whose UIDL is listed, waiting for TOP. */
struct check {
	struct pop3_msg *pm;
	struct record rec;
	bool want_dele; /* not kept: the consume's DELE may still be owed */
	bool got;       /* TOP answered */
	char digest[DIGEST_HEX + 1];
};

static int on_top_check(void *ctx, size_t index, int result, const struct pop3_response *resp)
{
	struct check *c = &((struct check *)ctx)[index];

	if (result == POP3_RESULT_OK) {
		c->got = true;
		header_digest(resp->body, resp->body_len, c->digest);
	}
	return 0;
}

/* Does the session's server answer TOP?  Without CAPA it may still;
 * with CAPA, believe it. */
static bool sess_has_top(struct pstore *s)
{
	unsigned caps = pop3_client_caps(s->sess.client);

	return !(caps & POP3_CAP_CAPA) || (caps & POP3_CAP_TOP);
}

/* Is the session's message pm the one consumed with this size and digest?
 * listed: the digest of the headers TOP gave when its spool row was listed
 * ("" when unknown).  1, 0, or a negative errno (connection). */
static int same_message(struct pstore *s, struct pop3_msg *pm, uint64_t size, const char *digest,
			const char *listed)
{
	struct check c = { .pm = pm };
	int r;

	if (pm->size != size)
		return 0;
	/* RETR'd in this session (numbers hold until QUIT) and the body has
	 * the headers TOP listed for this UIDL: it is no other command's
	 * answer, and no round trip is needed. */
	if (pm->retrieved && digest[0] && !strcmp(digest, listed))
		return 1;
	/* Otherwise TOP shows it, where the server has TOP. */
	if (!digest[0] || !sess_has_top(s))
		return pm->retrieved;
	r = pop3_client_batch(s->sess.client, "TOP", " 0", true, &pm->n, 1, on_top_check, &c);
	if (r < 0)
		return r;
	return c.got && !strcmp(c.digest, digest);
}

/* ---- sync ---- */

struct spool_row {
	uint32_t uid;
	char *uidl;
	char *name;
	uint64_t size;
	bool cached;
	bool seen; /* on the server in this session */
};

static int cmp_row_uidl(const void *a, const void *b)
{
	const struct spool_row *x = a, *y = b;

	return strcmp(x->uidl, y->uidl);
}

/* Every message of a folder as (uid, UIDL, name). */
static int load_rows(struct pstore *s, int64_t folder_id, struct spool_row **rows_r,
		     size_t *n_r)
{
	struct spool_row *rows = NULL;
	size_t n = 0, cap = 0;
	uint32_t after = 0;

	for (;;) {
		struct cache_msg *msgs;
		size_t got;

		if (cache_msg_list(s->cache, folder_id, after, 1000, &msgs, &got) < 0) {
			for (size_t i = 0; i < n; i++) {
				free(rows[i].uidl);
				free(rows[i].name);
			}
			free(rows);
			return -EIO;
		}
		if (got == 0)
			break;
		for (size_t i = 0; i < got; i++) {
			if (n == cap) {
				size_t ncap = cap ? cap * 2 : 256;
				struct spool_row *r = realloc(rows, ncap * sizeof(*r));

				if (!r)
					break;
				rows = r;
				cap = ncap;
			}
			rows[n].uid = msgs[i].uid;
			rows[n].uidl = msgs[i].message_id ? msgs[i].message_id : strdup("");
			rows[n].name = msgs[i].name;
			rows[n].size = msgs[i].size;
			rows[n].cached = msgs[i].cached;
			rows[n].seen = false;
			msgs[i].message_id = NULL;
			msgs[i].name = NULL;
			n++;
		}
		after = msgs[got - 1].uid;
		cache_msg_list_free(msgs, got);
	}
	if (n)
		qsort(rows, n, sizeof(*rows), cmp_row_uidl);
	*rows_r = rows;
	*n_r = n;
	return 0;
}

static void free_rows(struct spool_row *rows, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(rows[i].uidl);
		free(rows[i].name);
	}
	free(rows);
}

static struct spool_row *find_row(struct spool_row *rows, size_t n, const char *uidl)
{
	struct spool_row key = { .uidl = (char *)uidl };

	return n ? bsearch(&key, rows, n, sizeof(*rows), cmp_row_uidl) : NULL;
}

/* A new message's metadata from its headers, waiting to be written. */
struct newmsg {
	struct pop3_msg *pm;
	char *base;
	int64_t mtime;
	char digest[DIGEST_HEX + 1];
	bool got_headers;
};

struct top_ctx {
	struct pstore *s;
	struct newmsg *nm;
};

static int on_top(void *ctx, size_t index, int result, const struct pop3_response *resp)
{
	struct top_ctx *tc = ctx;
	struct newmsg *nm = &tc->nm[index];
	struct headers h;
	char *from_name = NULL, *from_addr = NULL;
	time_t date = 0, received = 0;

	if (result != POP3_RESULT_OK)
		return 0; /* named without headers */
	header_digest(resp->body, resp->body_len, nm->digest);
	parse_headers(resp->body, resp->body_len, &h);
	parse_from(h.from, &from_name, &from_addr);
	if (h.received) {
		const char *semi = strrchr(h.received, ';');

		if (semi)
			names_parse_date(semi + 1, &received);
	}
	if (!h.date || names_parse_date(h.date, &date) < 0)
		date = received;
	nm->mtime = received ? (int64_t)received : (int64_t)date;
	if (!tc->s->names_uid) {
		free(nm->base);
		nm->base = names_message_base(date ? date : time(NULL), from_name, from_addr,
					      h.subject);
	}
	nm->got_headers = true;
	free(from_name);
	free(from_addr);
	headers_clear(&h);
	return 0;
}

/* Does archive/ have a message with this local id? */
static bool archive_has_id(struct pstore *s, uint32_t id)
{
	struct cache_msg a;

	if (cache_msg_get(s->cache, s->archive_id, id, &a) < 0)
		return false;
	cache_msg_clear(&a);
	return true;
}

/* A local id never given before (0: none left, or the cache failed). */
static uint32_t next_id(struct pstore *s)
{
	char *v = NULL, buf[24];
	unsigned long long id = 0;

	if (cache_kv_get(s->cache, KV_NEXT_ID, &v) == 0)
		id = strtoull(v, NULL, 10);
	free(v);
	if (id == 0)
		id = 1;
	if (id >= UINT32_MAX)
		return 0;
	snprintf(buf, sizeof(buf), "%llu", id + 1);
	if (cache_kv_set(s->cache, KV_NEXT_ID, buf) < 0)
		return 0;
	return (uint32_t)id;
}

/* The local id of a UIDL: the one it had, or the next.  A mapping whose
 * id archive/ holds is stale (a kill between the archive move and its
 * removal): the message would never be archived.  In a cache batch. */
static uint32_t local_id(struct pstore *s, const char *uidl)
{
	char key[sizeof(KV_UIDL) + POP3_UIDL_MAX + 1], *v = NULL, buf[24];
	unsigned long long id = 0;

	snprintf(key, sizeof(key), "%s%s", KV_UIDL, uidl);
	if (cache_kv_get(s->cache, key, &v) == 0) {
		id = strtoull(v, NULL, 10);
		free(v);
		if (id > 0 && id <= UINT32_MAX && !archive_has_id(s, (uint32_t)id))
			return (uint32_t)id;
	}
	id = next_id(s);
	if (id == 0)
		return 0;
	snprintf(buf, sizeof(buf), "%llu", id);
	if (cache_kv_set(s->cache, key, buf) < 0)
		return 0;
	return (uint32_t)id;
}

/* Write the new messages, PUT_BATCH per transaction, then tell fs/. */
static void put_new(struct pstore *s, struct newmsg *nm, size_t n)
{
	for (size_t i = 0; i < n;) {
		size_t end = i + PUT_BATCH < n ? i + PUT_BATCH : n;
		char **names = calloc(end - i, sizeof(*names));

		if (!names)
			return;
		bool batch = cache_begin(s->cache) == 0;

		for (size_t k = i; k < end; k++) {
			uint32_t id = local_id(s, nm[k].pm->uidl);
			struct cache_msg m = {
				.folder_id = s->spool_id,
				.uid = id,
				.size = nm[k].pm->size,
				.mtime = nm[k].mtime ? nm[k].mtime : (int64_t)time(NULL),
				.flags = "",
				.message_id = nm[k].pm->uidl,
			};
			char idbase[16];
			const char *base = nm[k].base;

			if (id == 0)
				continue;
			if (s->names_uid || !base) {
				snprintf(idbase, sizeof(idbase), "%" PRIu32, id);
				base = idbase;
			}
			if (cache_msg_put(s->cache, &m, base, &names[k - i]) < 0)
				names[k - i] = NULL;
			else
				spool_ident_put(s, nm[k].pm->uidl, nm[k].pm->size, nm[k].digest);
		}
		if (batch && cache_commit(s->cache) < 0)
			log_warn("%s: cannot record new messages in the cache", s->eng.server);
		for (size_t k = i; k < end; k++) {
			emit_entry(s, s->spool_id, names[k - i]);
			free(names[k - i]);
		}
		free(names);
		i = end;
	}
}

static bool archive_holds(struct pstore *s, uint32_t uid, const char *name);

/* Settle the records whose UIDL the listing has, now that TOP told who
 * their messages are: DELE the one owed a DELE, hide the consumed, and
 * offer (add to nm) a message that only inherited a consumed UIDL.  0 or
 * a negative errno (connection). */
static int settle_checks(struct pstore *s, struct check *chk, size_t nchk,
			 struct spool_row *rows, size_t nrows, struct newmsg *nm, unsigned *nums,
			 size_t *nnew, struct verified *nv, size_t *nnv)
{
	struct session *se = &s->sess;

	for (size_t i = 0; i < nchk; i++) {
		struct check *c = &chk[i];
		struct pop3_msg *pm = c->pm;
		bool known = c->digest[0] && c->rec.digest[0];

		if (known && strcmp(c->digest, c->rec.digest)) {
			struct spool_row *row = find_row(rows, nrows, pm->uidl);

			log_info("%s: UIDL %s now names another message than the one consumed; "
				 "offering it", s->eng.server, pm->uidl);
			record_drop(s, pm->uidl);
			if (row) {
				row->seen = true;
			} else {
				nm[*nnew].pm = pm;
				nums[(*nnew)++] = pm->n;
			}
			continue;
		}
		if (c->got) {
			strcpy(nv[*nnv].uidl, pm->uidl);
			nv[*nnv].n = pm->n;
			nv[(*nnv)++].size = pm->size;
		}
		if (!c->want_dele)
			continue;
		/* Finish a consume a crash or a lost QUIT left: only for the
		 * very message whose copy is in archive/. */
		if (!known || archived_size(s, c->rec.uid) != c->rec.size ||
		    !archive_holds(s, c->rec.uid, pm->uidl)) {
			log_debug("%s: not deleting message %s: it cannot be shown to be the one archived",
				  s->eng.server, pm->uidl);
			continue;
		}
		log_info("%s: deleting message %s from the server: it was archived before",
			 s->eng.server, pm->uidl);
		int r = pop3_client_dele(se->client, pm->n);

		if (r < 0)
			return r;
		if (r == POP3_RESULT_OK)
			se->dirty = true;
	}
	return 0;
}

/* What a listed message with a consumed record is: hidden (1; 3: shown
 * to be the consumed one earlier in this mount), to be offered as new (0,
 * the record dropped), or to be asked with TOP (2, *c filled). */
static int judge_record(struct pstore *s, struct pop3_msg *pm, const struct record *rec,
			struct check *c)
{
	bool kept = kv_has(s, KV_CONSUMED, pm->uidl);

	if (rec->old) {
		/* Recorded before identities: hidden while its archived copy
		 * has this size, and never deleted again.  A kept one was
		 * never deleted, so hiding it risks nothing: it stays hidden
		 * when its archived copy was removed (rm in archive/). */
		if (kept || archived_size(s, rec->uid) == pm->size)
			return 1;
		log_info("%s: UIDL %s was consumed, but its archived copy is gone or of another "
			 "size; offering the server's message", s->eng.server, pm->uidl);
		record_drop(s, pm->uidl);
		return 0;
	}
	if (rec->list_size != pm->size) {
		log_info("%s: UIDL %s now names another message than the one consumed (%" PRIu64
			 " bytes, not %" PRIu64 "); offering it", s->eng.server, pm->uidl,
			 (uint64_t)pm->size, rec->list_size);
		record_drop(s, pm->uidl);
		return 0;
	}
	c->pm = pm;
	c->rec = *rec;
	c->want_dele = !s->keep && !kept;
	/* Shown this mount to be the consumed one, and nothing owed. */
	if (!c->want_dele && verified_has(s, pm))
		return 3;
	return 2;
}

/* Is the session's message pm the one a spool row was listed as?  Its
 * LIST size tells (a row from before identities: its size, while its
 * body is not stored; it is then recorded as it is listed now). */
static bool row_is_listed(struct pstore *s, const struct spool_row *row,
			  const struct pop3_msg *pm)
{
	char digest[DIGEST_HEX + 1];
	uint64_t size;

	if (!spool_ident_get(s, pm->uidl, &size, digest)) {
		if (!row->cached && row->size != pm->size)
			size = row->size;
		else
			size = pm->size;
		if (size == pm->size)
			spool_ident_put(s, pm->uidl, pm->size, "");
	}
	if (size == pm->size)
		return true;
	log_info("%s: UIDL %s now names another message (%" PRIu64 " bytes, not %" PRIu64
		 "); offering it in place of %s", s->eng.server, pm->uidl, (uint64_t)pm->size,
		 size, row->name);
	return false;
}

/* Bring spool/ in line with the maildrop of the open session; DELE what
 * was archived and not yet deleted.  0 or a negative errno (connection). */
static int do_sync(struct pstore *s)
{
	struct session *se = &s->sess;
	struct spool_row *rows = NULL;
	size_t nrows = 0, nnew = 0, nchk = 0, nnv = 0;
	struct newmsg *nm = NULL;
	struct check *chk = NULL;
	struct verified *nv = NULL;
	unsigned *nums = NULL, *cnums = NULL;
	size_t cap = se->nmsgs ? se->nmsgs : 1;
	unsigned caps = pop3_client_caps(se->client);
	/* Without CAPA, TOP may still work; with CAPA, believe it. */
	bool top = !(caps & POP3_CAP_CAPA) || (caps & POP3_CAP_TOP);
	int r = 0;

	if (load_rows(s, s->spool_id, &rows, &nrows) < 0) {
		r = -EIO;
		goto out;
	}
	nm = calloc(cap, sizeof(*nm));
	nums = calloc(cap, sizeof(*nums));
	chk = calloc(cap, sizeof(*chk));
	cnums = calloc(cap, sizeof(*cnums));
	nv = calloc(cap, sizeof(*nv));
	if (!nm || !nums || !chk || !cnums || !nv) {
		r = -ENOMEM;
		goto out;
	}
	forget_unlisted(s);
	for (size_t i = 0; i < se->nmsgs; i++) {
		struct pop3_msg *pm = &se->msgs[i];
		struct spool_row *row = find_row(rows, nrows, pm->uidl);
		struct record rec;
		bool has = record_get(s, pm->uidl, &rec);

		if (has && row && (row->uid == rec.uid || !archive_has_id(s, rec.uid))) {
			/* A consume that stopped before its move: not consumed. */
			record_drop(s, pm->uidl);
			has = false;
		}
		if (has) {
			int j = judge_record(s, pm, &rec, &chk[nchk]);

			if (j == 3) {
				strcpy(nv[nnv].uidl, pm->uidl);
				nv[nnv].n = pm->n;
				nv[nnv++].size = pm->size;
			}
			if (j == 1 || j == 3)
				continue; /* a spool row, if any, is swept below */
			if (j == 2) {
				cnums[nchk++] = pm->n;
				continue;
			}
		}
		if (row && row_is_listed(s, row, pm)) {
			row->seen = true;
			continue;
		}
		/* A row not seen is swept below, before the new one is put. */
		nm[nnew].pm = pm;
		nums[nnew] = pm->n;
		nnew++;
	}
	if (nchk > 0) {
		if (top) {
			r = pop3_client_batch(se->client, "TOP", " 0", true, cnums, nchk, on_top_check,
					      chk);
			if (r < 0)
				goto out;
		}
		r = settle_checks(s, chk, nchk, rows, nrows, nm, nums, &nnew, nv, &nnv);
		if (r < 0)
			goto out;
	}
	/* Gone from the server (or archived): leaves spool/. */
	for (size_t i = 0; i < nrows; i++) {
		if (rows[i].seen)
			continue;
		if (cache_msg_delete(s->cache, s->spool_id, rows[i].uid) == 0) {
			spool_forget(s, rows[i].uidl, kv_has(s, KV_ARCHIVED, rows[i].uidl));
			emit_entry(s, s->spool_id, rows[i].name);
		}
	}
	if (nnew > 0) {
		struct top_ctx tc = { .s = s, .nm = nm };

		if (top) {
			r = pop3_client_batch(se->client, "TOP", " 0", true, nums, nnew, on_top, &tc);
			if (r < 0)
				goto out;
		}
		put_new(s, nm, nnew);
		log_debug("%s: %zu new messages", s->eng.server, nnew);
	}
	if (nnv)
		qsort(nv, nnv, sizeof(*nv), cmp_verified);
	free(s->verified);
	s->verified = nv;
	s->nverified = nnv;
	nv = NULL;
	pthread_mutex_lock(&s->eng.lock);
	s->eng.last_sync = (int64_t)time(NULL);
	pthread_mutex_unlock(&s->eng.lock);
	cache_folder_set_state(s->cache, s->spool_id, 0, 0, 0, (int64_t)time(NULL));
	r = 0;
out:
	if (nm)
		for (size_t i = 0; i < nnew; i++)
			free(nm[i].base);
	free(nm);
	free(nums);
	free(chk);
	free(cnums);
	free(nv);
	free_rows(rows, nrows);
	return r;
}

/* ---- bodies ---- */

static void body_done(struct pstore *s, uint32_t uid, enum store_error err, bool changed)
{
	struct engine_waiter *waiters = NULL;

	pthread_mutex_lock(&s->eng.lock);
	for (struct inflight **p = &s->inflight; *p; p = &(*p)->next) {
		if ((*p)->uid == uid) {
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

struct retr_ctx {
	struct pstore *s;
	int64_t folder_id;
	const uint32_t *uids;
	bool *got;
	bool notify; /* call body_done (fetches), not for consume's own */
};

/* A body whose size is not LIST's octet count may be cut or belong to
 * another answer: it stays readable, but it is marked never to be
 * consumed (archived and DELE'd); the mark goes when a RETR agrees. */
static void check_list_size(struct pstore *s, const struct cache_msg *m, size_t got)
{
	struct pop3_msg *pm = m->message_id ? sess_find(&s->sess, m->message_id) : NULL;
	bool marked;
	char buf[48];

	if (!pm)
		return;
	marked = kv_has(s, KV_BADSIZE, m->message_id);
	if (pm->size == got) {
		if (marked)
			kv_put(s, KV_BADSIZE, m->message_id, NULL);
		return;
	}
	if (marked)
		return;
	snprintf(buf, sizeof(buf), "%" PRIu64 " %zu", (uint64_t)pm->size, got);
	kv_put(s, KV_BADSIZE, m->message_id, buf);
	log_warn("%s: message %s: LIST said %" PRIu64 " bytes, RETR sent %zu; it can be read "
		 "but stays in spool/ and on the server", s->eng.server, m->name,
		 (uint64_t)pm->size, got);
}

static int on_retr(void *ctx, size_t index, int result, const struct pop3_response *resp)
{
	struct retr_ctx *rc = ctx;
	struct pstore *s = rc->s;
	uint32_t uid = rc->uids[index];
	struct cache_msg m;
	bool changed = false;

	if (result != POP3_RESULT_OK) {
		log_warn("%s: RETR of message %" PRIu32 " refused: %s", s->eng.server, uid, resp->text);
		return 0;
	}
	if (cache_msg_get(s->cache, rc->folder_id, uid, &m) < 0)
		return 0;
	changed = m.size != resp->body_len;
	check_list_size(s, &m, resp->body_len);
	if (cache_body_store(s->cache, rc->folder_id, uid, resp->body, resp->body_len) < 0) {
		cache_msg_clear(&m);
		return 0;
	}
	/* The cached body is this session's message of that UIDL. */
	struct pop3_msg *pm = sess_find(&s->sess, m.message_id);

	if (pm)
		pm->retrieved = true;
	cache_msg_clear(&m);
	rc->got[index] = true;
	if (changed)
		emit_message(s, rc->folder_id, uid);
	if (rc->notify)
		body_done(s, uid, STORE_OK, changed);
	return 0;
}

/* The spool message's server number in this session (0: not there). */
static unsigned spool_number(struct pstore *s, uint32_t uid, struct cache_msg *m_r)
{
	struct pop3_msg *pm;

	if (cache_msg_get(s->cache, s->spool_id, uid, m_r) < 0)
		return 0;
	pm = sess_find(&s->sess, m_r->message_id);
	return pm ? pm->n : 0;
}

/* A spool message is gone from the server: it leaves spool/. */
static void spool_gone(struct pstore *s, struct cache_msg *m)
{
	if (cache_msg_delete(s->cache, s->spool_id, m->uid) == 0) {
		if (m->message_id)
			spool_forget(s, m->message_id, false);
		emit_entry(s, s->spool_id, m->name);
	}
}

/* RETR uid and some uncached successors, pipelined. */
static void do_fetch(struct pstore *s, uint32_t uid)
{
	uint32_t batch[READAHEAD_COUNT + 1], *more = NULL;
	unsigned nums[READAHEAD_COUNT + 1];
	bool got[READAHEAD_COUNT + 1] = { false };
	size_t n = 0, nmore = 0;
	uint64_t bytes = 0;
	struct cache_msg m;
	enum store_error err = STORE_ERR_IO;
	int r;

	if (session_need(s) < 0) {
		body_done(s, uid, STORE_ERR_OFFLINE, false);
		return;
	}
	nums[0] = spool_number(s, uid, &m);
	if (m.cached) {
		/* Stored since it was asked for. */
		cache_msg_clear(&m);
		body_done(s, uid, STORE_OK, false);
		return;
	}
	if (nums[0] == 0) {
		if (m.name)
			spool_gone(s, &m);
		cache_msg_clear(&m);
		body_done(s, uid, STORE_ERR_NOTFOUND, false);
		return;
	}
	bytes = m.size;
	cache_msg_clear(&m);
	batch[n++] = uid;
	/* Read-ahead: the next uncached messages that nobody fetches yet. */
	if (cache_msg_uncached(s->cache, s->spool_id, uid, READAHEAD_COUNT * 2, &more, &nmore) == 0) {
		for (size_t i = 0; i < nmore && n <= READAHEAD_COUNT; i++) {
			unsigned num = spool_number(s, more[i], &m);
			struct inflight *in;
			bool busy = false;

			bytes += m.size;
			cache_msg_clear(&m);
			if (num == 0)
				continue;
			if (bytes > READAHEAD_BYTES)
				break;
			pthread_mutex_lock(&s->eng.lock);
			for (in = s->inflight; in && !busy; in = in->next)
				busy = in->uid == more[i];
			in = busy ? NULL : calloc(1, sizeof(*in));
			if (in) {
				in->uid = more[i];
				in->next = s->inflight;
				s->inflight = in;
			}
			pthread_mutex_unlock(&s->eng.lock);
			if (!in)
				continue;
			nums[n] = num;
			batch[n++] = more[i];
		}
		free(more);
	}
	struct retr_ctx rc = { .s = s, .folder_id = s->spool_id, .uids = batch, .got = got,
			       .notify = true };
	engine_count_fetches(&s->eng, n);
	r = pop3_client_batch(s->sess.client, "RETR", "", true, nums, n, on_retr, &rc);
	if (r < 0)
		log_warn("%s: fetching messages: %s", s->eng.server, pop3_client_error(s->sess.client));
	else
		err = STORE_ERR_NOTFOUND;
	for (size_t i = 0; i < n; i++)
		if (!got[i])
			body_done(s, batch[i], err, false);
}

/* ---- consume and remove ---- */

/* A local id for spool message uid in archive/: its own, unless archive/
 * holds that already (a stale UIDL mapping from an earlier version). */
static uint32_t archive_uid(struct pstore *s, uint32_t uid)
{
	for (int tries = 0; tries < 16 && uid != 0 && archive_has_id(s, uid); tries++)
		uid = next_id(s);
	return uid != 0 && !archive_has_id(s, uid) ? uid : 0;
}

/* Move spool message m to archive/ as to_uid, under its spool name, or
 * with a suffix when that name is taken.  -EADDRINUSE: to_uid is taken
 * (not a name clash: no other name would help). */
static int archive_move(struct pstore *s, const struct cache_msg *m, uint32_t to_uid,
			char **name_r)
{
	const char *name = m->name;
	size_t blen = strlen(name);
	int r;

	if (archive_has_id(s, to_uid))
		return -EADDRINUSE;
	if (blen > 4 && !strcmp(name + blen - 4, ".eml"))
		blen -= 4;
	r = cache_msg_move(s->cache, s->spool_id, m->uid, s->archive_id, to_uid, name);
	for (unsigned k = 2; r == -EEXIST && k < 10000; k++) {
		char alt[300];

		if (blen > 236)
			blen = 236;
		snprintf(alt, sizeof(alt), "%.*s (%u).eml", (int)blen, name, k);
		r = cache_msg_move(s->cache, s->spool_id, m->uid, s->archive_id, to_uid, alt);
		if (r == 0) {
			*name_r = strdup(alt);
			return 0;
		}
	}
	if (r == 0)
		*name_r = strdup(name);
	return r;
}

/* Whether archive/ holds message uid for good: cached, pinned, its file
 * of the row's size.  Checked before DELE, which is what makes it the
 * only copy; if not, the server's copy stays. */
static bool archive_holds(struct pstore *s, uint32_t uid, const char *name)
{
	struct cache_msg a;
	int r = cache_msg_get(s->cache, s->archive_id, uid, &a);
	bool ok = r == 0 && a.cached && a.pinned;

	/* An earlier pin that did not happen is made now. */
	if (r == 0 && a.cached && !a.pinned)
		ok = cache_msg_set_pinned(s->cache, s->archive_id, uid, true) == 0;
	if (r == 0)
		cache_msg_clear(&a);
	if (ok && (r = cache_body_verify(s->cache, s->archive_id, uid)) < 0)
		ok = false;
	if (!ok)
		log_error("%s: archive/%s is not stored safely (%s); not deleting it from the server",
			  s->eng.server, name, r < 0 ? strerror(-r) : "not cached and pinned");
	return ok;
}

struct confirm_ctx {
	struct pstore *s;
	const struct cache_msg *m;
	bool same;
};

static int on_retr_confirm(void *ctx, size_t index, int result, const struct pop3_response *resp)
{
	struct confirm_ctx *cc = ctx;

	(void)index;
	cc->same = result == POP3_RESULT_OK && resp->body_len == cc->m->size &&
		   body_equals(cc->s, cc->m->uid, resp->body, resp->body_len);
	return 0;
}

/* A body whose size was not LIST's (AUDIT A3): LIST sizes are estimates
 * on some servers (Exchange, Microsoft 365).  A RETR of that message
 * alone, nothing else in flight, cannot be another command's answer: if
 * it gives the same bytes, and its headers are TOP's where TOP works,
 * the body is whole and the message's.  1, 0, or a negative errno. */
static int body_confirmed(struct pstore *s, const struct cache_msg *m, const char *digest)
{
	struct confirm_ctx cc = { .s = s, .m = m };
	struct check c;
	struct pop3_msg *pm;
	int r;

	if (session_need(s) < 0)
		return -ENOTCONN;
	pm = sess_find(&s->sess, m->message_id);
	if (!pm)
		return 0;
	r = pop3_client_batch(s->sess.client, "RETR", "", true, &pm->n, 1, on_retr_confirm, &cc);
	if (r < 0 || !cc.same)
		return r < 0 ? r : 0;
	if (sess_has_top(s)) {
		memset(&c, 0, sizeof(c));
		r = pop3_client_batch(s->sess.client, "TOP", " 0", true, &pm->n, 1, on_top_check, &c);
		if (r < 0)
			return r;
		if (!c.got || strcmp(c.digest, digest))
			return 0;
	}
	log_info("%s: message %s: RETR gave the same %" PRIu64 " bytes twice; LIST's size is "
		 "taken as an estimate", s->eng.server, m->name, m->size);
	return 1;
}

static void do_consume(struct pstore *s, uint32_t uid)
{
	struct cache_msg m;
	char *archived_name = NULL, digest[DIGEST_HEX + 1];
	int r;

	if (cache_msg_get(s->cache, s->spool_id, uid, &m) < 0)
		return; /* consumed already, or gone */
	if (!m.message_id) {
		log_warn("%s: message %s has no UIDL; not consuming it", s->eng.server, m.name);
		goto out;
	}

	if (!m.cached) {
		/* Evicted since it was read: fetch it again. */
		bool got = false;
		unsigned num;
		struct cache_msg m2;

		if (session_need(s) < 0)
			goto out;
		num = spool_number(s, uid, &m2);
		cache_msg_clear(&m2);
		if (num == 0)
			goto out;
		struct retr_ctx rc = { .s = s, .folder_id = s->spool_id, .uids = &uid,
				       .got = &got };
		engine_count_fetches(&s->eng, 1);
		if (pop3_client_batch(s->sess.client, "RETR", "", true, &num, 1, on_retr, &rc) < 0 || !got) {
			log_warn("%s: cannot fetch %s to archive it; it stays in spool/", s->eng.server,
				 m.name);
			goto out;
		}
		/* Its size is now the body's. */
		cache_msg_clear(&m);
		if (cache_msg_get(s->cache, s->spool_id, uid, &m) < 0)
			return;
	}
	crash_point(s, "after_retr");
	body_digest(s, s->spool_id, uid, digest);
	if (kv_has(s, KV_BADSIZE, m.message_id) && (r = body_confirmed(s, &m, digest)) <= 0) {
		log_debug("%s: not consuming %s: its body disagreed with LIST", s->eng.server,
			  m.name);
		goto out;
	}
	uint64_t list_size = m.size;
	char listed_digest[DIGEST_HEX + 1];
	uint32_t auid = archive_uid(s, uid);

	if (auid == 0) {
		log_error("%s: no local id is free to archive %s; it stays in spool/",
			  s->eng.server, m.name);
		goto out;
	}
	spool_ident_get(s, m.message_id, &list_size, listed_digest);
	/* Recorded with what was consumed before the move; a record whose
	 * uid is still in spool/ (the move did not happen) counts for
	 * nothing. */
	if (record_put(s, m.message_id, auid, m.size, digest, list_size) < 0 ||
	    (s->keep && kv_put(s, KV_CONSUMED, m.message_id, "1") < 0)) {
		record_drop(s, m.message_id);
		log_error("%s: cannot record %s as consumed; it stays in spool/", s->eng.server,
			  m.name);
		goto out;
	}
	/* Pinned before the move: an archived body is never evicted (the
	 * archive folder is local-only as well). */
	r = cache_msg_set_pinned(s->cache, s->spool_id, uid, true);
	if (r == 0)
		r = archive_move(s, &m, auid, &archived_name);
	if (r < 0) {
		cache_msg_set_pinned(s->cache, s->spool_id, uid, false);
		record_drop(s, m.message_id);
		log_error("%s: cannot archive %s: %s; it stays in spool/", s->eng.server, m.name,
			  strerror(-r));
		goto out;
	}
	spool_forget(s, m.message_id, false);
	emit_entry(s, s->spool_id, m.name);
	emit_entry(s, s->archive_id, archived_name);
	crash_point(s, "after_fsync");
	if (s->keep)
		goto out;
	/* Now, and only now, the server's copy may go. */
	if (!archive_holds(s, auid, archived_name ? archived_name : m.name))
		goto out;
	if (session_need(s) < 0)
		goto out; /* the next sync deletes it */
	struct pop3_msg *pm = sess_find(&s->sess, m.message_id);
	if (!pm)
		goto out; /* gone from the server already */
	r = same_message(s, pm, list_size, digest, listed_digest);
	if (r <= 0) {
		if (r == 0)
			log_warn("%s: not deleting %s from the server: its UIDL %s may name another "
				 "message now", s->eng.server, m.name, m.message_id);
		goto out; /* r < 0: the next sync checks again */
	}
	r = pop3_client_dele(s->sess.client, pm->n);
	if (r == POP3_RESULT_OK) {
		s->sess.dirty = true;
		crash_point(s, "after_dele");
	} else if (r > 0) {
		log_warn("%s: DELE of %s refused: %s", s->eng.server, m.message_id,
			 pop3_client_text(s->sess.client));
	}
out:
	free(archived_name);
	cache_msg_clear(&m);
}

/* Does the server's message with the spool row m's UIDL have the size
 * and headers the row was listed with (TOP n 0, where the digest is
 * known: the recorded one, else the stored body's)?  1, 0, or a negative
 * errno (connection). */
static int remove_is_listed(struct pstore *s, const struct cache_msg *m)
{
	struct pop3_msg *pm = sess_find(&s->sess, m->message_id);
	char digest[DIGEST_HEX + 1];
	struct check c = { .pm = pm };
	uint64_t size = m->cached ? UINT64_MAX : m->size;
	int r;

	if (!pm)
		return 0;
	if (!spool_ident_get(s, pm->uidl, &size, digest) && size == UINT64_MAX)
		size = pm->size; /* from before identities, body stored: LIST's */
	if (!digest[0] && m->cached)
		body_digest(s, s->spool_id, m->uid, digest);
	if (size != pm->size) {
		log_warn("%s: not deleting %s: UIDL %s now names a message of another size",
			 s->eng.server, m->name, pm->uidl);
		return 0;
	}
	if (!digest[0] || !sess_has_top(s))
		return 1;
	r = pop3_client_batch(s->sess.client, "TOP", " 0", true, &pm->n, 1, on_top_check, &c);
	if (r < 0)
		return r;
	if (c.got && strcmp(c.digest, digest)) {
		log_warn("%s: not deleting %s: UIDL %s now names another message",
			 s->eng.server, m->name, pm->uidl);
		return 0;
	}
	return 1;
}

/* rm in spool/: DELE, committed by the QUIT that settles the waiter. */
static void do_remove(struct pstore *s, uint32_t uid, store_done_fn *done, void *ctx)
{
	struct cache_msg m;
	struct commit *c;
	unsigned num;
	int r;

	if (cache_msg_get(s->cache, s->spool_id, uid, &m) < 0) {
		done(ctx, STORE_ERR_NOTFOUND, false);
		return;
	}
	cache_msg_clear(&m);
	if (session_need(s) < 0) {
		done(ctx, STORE_ERR_OFFLINE, false);
		return;
	}
	num = spool_number(s, uid, &m);
	if (num == 0) {
		/* Not on the server any more: that is what rm wanted. */
		spool_gone(s, &m);
		cache_msg_clear(&m);
		done(ctx, STORE_OK, false);
		return;
	}
	r = remove_is_listed(s, &m);
	if (r <= 0) {
		if (r == 0) {
			/* Another message has its UIDL now: the row goes and
			 * the next sync offers that one. */
			spool_gone(s, &m);
			pthread_mutex_lock(&s->eng.lock);
			queue_sync(s, true);
			pthread_mutex_unlock(&s->eng.lock);
		}
		cache_msg_clear(&m);
		done(ctx, r == 0 ? STORE_ERR_NOTFOUND : STORE_ERR_IO, false);
		return;
	}
	r = pop3_client_dele(s->sess.client, num);
	if (r != POP3_RESULT_OK) {
		if (r > 0)
			log_warn("%s: DELE of %s refused: %s", s->eng.server, m.name,
				 pop3_client_text(s->sess.client));
		cache_msg_clear(&m);
		done(ctx, r > 0 ? STORE_ERR_REFUSED : STORE_ERR_IO, false);
		return;
	}
	c = calloc(1, sizeof(*c));
	if (!c || !(c->uidl = strdup(m.message_id))) {
		free(c);
		cache_msg_clear(&m);
		/* Undo, or QUIT would delete it without telling anyone. */
		pop3_client_rset(s->sess.client);
		done(ctx, STORE_ERR_IO, false);
		return;
	}
	c->uid = uid;
	c->done = done;
	c->ctx = ctx;
	c->next = s->sess.commits;
	s->sess.commits = c;
	s->sess.dirty = true;
	cache_msg_clear(&m);
}

/* ---- the worker ---- */

static void finish_sync(struct pstore *s, enum store_error err)
{
	struct engine_waiter *waiters;

	pthread_mutex_lock(&s->eng.lock);
	if (err == STORE_OK)
		s->spool_ready = true;
	waiters = s->sync_waiters;
	s->sync_waiters = NULL;
	pthread_mutex_unlock(&s->eng.lock);
	engine_waiters_call(waiters, err, false);
}

static void run_job(struct pstore *s, struct job *j)
{
	switch (j->kind) {
	case JOB_SYNC: {
		enum store_error err = STORE_OK;

		/* A session's listing is fixed at its start: a fresh one
		 * sees the new mail. */
		session_end(s);
		if (session_need(s) < 0) {
			/* Offline with a listing from earlier: serve it. */
			struct cache_folder f;

			err = STORE_ERR_OFFLINE;
			if (cache_folder_get(s->cache, s->spool_id, &f) == 0) {
				if (f.last_sync > 0)
					err = STORE_OK;
				cache_folder_clear(&f);
			}
		} else if (do_sync(s) < 0) {
			log_warn("%s: listing the maildrop: %s", s->eng.server,
				 pop3_client_error(s->sess.client));
			err = STORE_ERR_IO;
		}
		finish_sync(s, err);
		break;
	}
	case JOB_FETCH:
		do_fetch(s, j->uid);
		break;
	case JOB_CONSUME:
		do_consume(s, j->uid);
		break;
	case JOB_REMOVE:
		do_remove(s, j->uid, j->done, j->ctx);
		break;
	case JOB_EMIT:
		emit_entry(s, j->folder_id, j->name);
		break;
	}
}

/* Should the open session end now, the queue being empty? */
static bool session_should_end(struct pstore *s)
{
	struct session *se = &s->sess;

	if (!se->client)
		return false;
	if (se->commits || !pop3_client_alive(se->client))
		return true;
	return se->dirty && time(NULL) - se->started >= SESSION_MAX_SECONDS;
}

static void *worker_main(void *arg)
{
	struct pstore *s = arg;

	pthread_mutex_lock(&s->eng.lock);
	for (;;) {
		if (!s->eng.stopping && !s->queue_head && s->sess.client) {
			/* Idle with a session: linger a moment, then QUIT. */
			struct timespec ts;
			bool end = session_should_end(s);

			if (!end) {
				clock_gettime(CLOCK_REALTIME, &ts);
				ts.tv_nsec += (long)LINGER_MS * 1000000L;
				ts.tv_sec += ts.tv_nsec / 1000000000L;
				ts.tv_nsec %= 1000000000L;
				while (!s->eng.stopping && !s->queue_head)
					if (pthread_cond_timedwait(&s->eng.cond, &s->eng.lock, &ts) == ETIMEDOUT)
						break;
				end = !s->eng.stopping && !s->queue_head;
			}
			if (end) {
				pthread_mutex_unlock(&s->eng.lock);
				session_end(s);
				pthread_mutex_lock(&s->eng.lock);
			}
			continue;
		}
		while (!s->eng.stopping && !s->queue_head)
			pthread_cond_wait(&s->eng.cond, &s->eng.lock);
		if (s->eng.stopping)
			break;
		struct job *j = s->queue_head;

		s->queue_head = j->next;
		if (!s->queue_head)
			s->queue_tail = NULL;
		if (j->kind == JOB_SYNC)
			s->sync_queued = false;
		pthread_mutex_unlock(&s->eng.lock);
		run_job(s, j);
		/* An rm returns once QUIT has committed its DELE; a long
		 * busy session commits now and then. */
		if (s->sess.client && (s->sess.commits ||
				       (s->sess.dirty && time(NULL) - s->sess.started >=
							 SESSION_MAX_SECONDS)))
			session_end(s);
		free(j->name);
		free(j);
		pthread_mutex_lock(&s->eng.lock);
	}
	/* Unmounting: what was read to its end is still consumed (the
	 * kernel released the files before the unmount), then QUIT commits
	 * it.  The other jobs fail in destroy. */
	for (struct job **p = &s->queue_head; *p;) {
		struct job *j = *p;

		if (j->kind != JOB_CONSUME) {
			p = &j->next;
			continue;
		}
		*p = j->next;
		pthread_mutex_unlock(&s->eng.lock);
		do_consume(s, j->uid);
		free(j);
		pthread_mutex_lock(&s->eng.lock);
		p = &s->queue_head;
	}
	s->queue_tail = NULL;
	for (struct job *j = s->queue_head; j; j = j->next)
		s->queue_tail = j;
	pthread_mutex_unlock(&s->eng.lock);
	session_end(s);
	return NULL;
}

static void poll_maildrop(void *ctx)
{
	struct pstore *s = ctx;

	pthread_mutex_lock(&s->eng.lock);
	queue_sync(s, false);
	pthread_mutex_unlock(&s->eng.lock);
}

/* ---- store_ops ---- */

static int pstore_start(struct store *base, const struct store_events *ev)
{
	struct pstore *s = (struct pstore *)base;

	s->ev = *ev;
	if (pthread_create(&s->worker, NULL, worker_main, s) != 0)
		return -EAGAIN;
	if (engine_start_poller(&s->eng, poll_maildrop, s) < 0) {
		pthread_mutex_lock(&s->eng.lock);
		s->eng.stopping = true;
		pthread_cond_broadcast(&s->eng.cond);
		pthread_mutex_unlock(&s->eng.lock);
		pthread_join(s->worker, NULL);
		s->eng.stopping = false;
		return -EAGAIN;
	}
	s->started = true;
	return 0;
}

static bool pstore_folder_is_ready(struct store *base, int64_t folder_id)
{
	struct pstore *s = (struct pstore *)base;
	bool ready = true;

	if (folder_id == s->spool_id) {
		pthread_mutex_lock(&s->eng.lock);
		ready = s->spool_ready;
		pthread_mutex_unlock(&s->eng.lock);
	}
	return ready;
}

static void pstore_folder_ready(struct store *base, int64_t folder_id,
				store_done_fn *done, void *ctx)
{
	struct pstore *s = (struct pstore *)base;

	pthread_mutex_lock(&s->eng.lock);
	if (folder_id != s->spool_id || s->spool_ready) {
		pthread_mutex_unlock(&s->eng.lock);
		done(ctx, STORE_OK, false);
		return;
	}
	if (!engine_waiter_add(&s->sync_waiters, done, ctx)) {
		pthread_mutex_unlock(&s->eng.lock);
		done(ctx, STORE_ERR_IO, false);
		return;
	}
	queue_sync(s, true);
	pthread_mutex_unlock(&s->eng.lock);
}

static void pstore_fetch_body(struct store *base, int64_t folder_id, uint32_t uid,
			      store_done_fn *done, void *ctx)
{
	struct pstore *s = (struct pstore *)base;
	struct inflight *in;
	struct job *j;

	if (folder_id != s->spool_id) {
		/* Archived bodies are pinned: one not cached is gone. */
		done(ctx, STORE_ERR_NOTFOUND, false);
		return;
	}
	pthread_mutex_lock(&s->eng.lock);
	for (in = s->inflight; in; in = in->next)
		if (in->uid == uid)
			break;
	if (in) {
		/* Already on its way (read-ahead, or another reader). */
		bool ok = engine_waiter_add(&in->waiters, done, ctx);

		pthread_mutex_unlock(&s->eng.lock);
		if (!ok)
			done(ctx, STORE_ERR_IO, false);
		return;
	}
	in = calloc(1, sizeof(*in));
	j = job_new(JOB_FETCH, folder_id, uid);
	if (!in || !j || !engine_waiter_add(&in->waiters, done, ctx)) {
		free(in);
		free(j);
		pthread_mutex_unlock(&s->eng.lock);
		done(ctx, STORE_ERR_IO, false);
		return;
	}
	in->uid = uid;
	in->next = s->inflight;
	s->inflight = in;
	enqueue(s, j, true);
	pthread_mutex_unlock(&s->eng.lock);
}

static void pstore_remove(struct store *base, int64_t folder_id, uint32_t uid,
			  store_done_fn *done, void *ctx)
{
	struct pstore *s = (struct pstore *)base;
	struct cache_msg m;
	struct job *j;
	int r;

	if (folder_id == s->archive_id) {
		/* The local copy only: no session needed.  fs/ hears of the
		 * name from the worker, never inside its own handler. */
		if (cache_msg_get(s->cache, folder_id, uid, &m) < 0) {
			done(ctx, STORE_ERR_NOTFOUND, false);
			return;
		}
		r = cache_msg_delete(s->cache, folder_id, uid);
		done(ctx, r == 0 ? STORE_OK : r == -ENOENT ? STORE_ERR_NOTFOUND : STORE_ERR_IO,
		     false);
		pthread_mutex_lock(&s->eng.lock);
		j = r == 0 ? job_new(JOB_EMIT, folder_id, uid) : NULL;
		if (j) {
			j->name = m.name;
			m.name = NULL;
			enqueue(s, j, true);
		}
		pthread_mutex_unlock(&s->eng.lock);
		cache_msg_clear(&m);
		return;
	}
	if (folder_id != s->spool_id) {
		done(ctx, STORE_ERR_NOTFOUND, false);
		return;
	}
	if (s->ro) {
		/* fs/ refuses it first; a DELE must never come from ro. */
		done(ctx, STORE_ERR_PERM, false);
		return;
	}
	pthread_mutex_lock(&s->eng.lock);
	j = job_new(JOB_REMOVE, folder_id, uid);
	if (!j) {
		pthread_mutex_unlock(&s->eng.lock);
		done(ctx, STORE_ERR_IO, false);
		return;
	}
	j->done = done;
	j->ctx = ctx;
	enqueue(s, j, true);
	pthread_mutex_unlock(&s->eng.lock);
}

static void pstore_consume(struct store *base, int64_t folder_id, uint32_t uid)
{
	struct pstore *s = (struct pstore *)base;
	struct job *j;

	if (folder_id != s->spool_id || s->ro)
		return; /* archive/, or ro: reading consumes nothing */
	pthread_mutex_lock(&s->eng.lock);
	j = job_new(JOB_CONSUME, folder_id, uid);
	if (j)
		enqueue(s, j, false);
	pthread_mutex_unlock(&s->eng.lock);
}

static void pstore_status(struct store *base, struct store_status *st)
{
	engine_status(&((struct pstore *)base)->eng, st);
}

static void pstore_sync_now(struct store *base)
{
	engine_sync_now(&((struct pstore *)base)->eng);
}

static void pstore_destroy(struct store **basep)
{
	struct pstore *s = (struct pstore *)*basep;

	if (!s)
		return;
	engine_stop(&s->eng);
	if (s->started) {
		pthread_join(s->worker, NULL);
	} else {
		session_end(s);
	}
	while (s->queue_head) {
		struct job *j = s->queue_head;

		s->queue_head = j->next;
		if (j->kind == JOB_REMOVE)
			j->done(j->ctx, STORE_ERR_IO, false);
		free(j->name);
		free(j);
	}
	engine_waiters_call(s->sync_waiters, STORE_ERR_IO, false);
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
	free(s->verified);
	free(s->url.user);
	free(s->url.host);
	free(s->url.scheme);
	engine_destroy(&s->eng);
	free(s);
	*basep = NULL;
}

static const struct store_ops pstore_ops = {
	.start = pstore_start,
	.folder_is_ready = pstore_folder_is_ready,
	.folder_ready = pstore_folder_ready,
	.fetch_body = pstore_fetch_body,
	.status = pstore_status,
	.sync_now = pstore_sync_now,
	.remove = pstore_remove,
	.consume = pstore_consume,
	.destroy = pstore_destroy,
};

/* The two folders; archive's messages are pinned as they arrive, and
 * the folder is local-only (never evicted, not counted in cache_size). */
static int make_folders(struct pstore *s, const char **error_r)
{
	static __thread char err[512];
	int r = cache_folder_put(s->cache, 0, SPOOL_NAME, SPOOL_SERVER_NAME, 0, &s->spool_id);

	if (r == 0)
		r = cache_folder_put(s->cache, 0, ARCHIVE_NAME, ARCHIVE_SERVER_NAME,
				     CACHE_FOLDER_LOCAL, &s->archive_id);
	if (r == -EEXIST) {
		snprintf(err, sizeof(err),
			 "the data directory already holds another account's folders "
			 "(choose another with -o data_dir=DIR)");
		*error_r = err;
		return -1;
	}
	if (r < 0) {
		snprintf(err, sizeof(err), "cannot create the spool and archive folders in the cache: %s",
			 strerror(-r));
		*error_r = err;
		return -1;
	}
	return 0;
}

struct store *pop3_store_new(const struct pop3_store_opts *o, bool *auth_failed_r,
			     const char **error_r)
{
	struct pstore *s = calloc(1, sizeof(*s));
	const char *crash;

	if (auth_failed_r)
		*auth_failed_r = false;
	if (!s) {
		*error_r = "out of memory";
		return NULL;
	}
	s->base.ops = &pstore_ops;
	s->base.caps = STORE_CAP_READ_ONCE;
	engine_init(&s->eng, o->url, o->poll_seconds);
	s->url = *o->url;
	s->url.user = strdup(o->url->user);
	s->url.host = strdup(o->url->host);
	s->url.scheme = strdup(o->url->scheme);
	s->password = strdup(o->password);
	s->cafile = o->cafile ? strdup(o->cafile) : NULL;
	s->insecure = o->insecure;
	s->names_uid = o->names_uid;
	/* ro is keep without consuming: the server is never changed. */
	s->keep = o->keep || o->ro;
	s->ro = o->ro;
	s->cache = o->cache;
	s->forget_seconds = FORGET_SECONDS;
	crash = getenv("MAILFS_TEST_FORGET_SECONDS");
	if (crash && *crash)
		s->forget_seconds = strtoll(crash, NULL, 10);
	crash = getenv("MAILFS_TEST_CRASH_AT");
	s->crash_at = crash && *crash ? crash : NULL;
	if (!s->url.user || !s->url.host || !s->url.scheme || !s->password ||
	    (o->cafile && !s->cafile)) {
		*error_r = "out of memory";
		goto fail;
	}
	if (make_folders(s, error_r) < 0)
		goto fail;
	/* The first session logs in and lists on this thread, so that a
	 * wrong password or an untrusted certificate fails the command. */
	if (session_open(s, auth_failed_r, error_r) < 0)
		goto fail;
	if (do_sync(s) < 0) {
		static __thread char err[512];

		snprintf(err, sizeof(err), "%s: listing the maildrop failed: %s", o->url->host,
			 pop3_client_error(s->sess.client));
		*error_r = err;
		pop3_client_close(&s->sess.client);
		goto fail;
	}
	/* Commit the deletions of earlier consumes, free the maildrop. */
	session_end(s);
	s->spool_ready = true;
	s->eng.online = true;
	return &s->base;
fail:
	{
		struct store *b = &s->base;

		pstore_destroy(&b);
	}
	return NULL;
}

int pop3_store_move(const char *cache_dir, const char *data_dir, const char **error_r)
{
	return cache_store_move(cache_dir, data_dir, ARCHIVE_SERVER_NAME, error_r);
}

bool pop3_store_is_old(const char *cache_dir, const char *data_dir)
{
	return cache_store_is_old(cache_dir, data_dir, ARCHIVE_SERVER_NAME);
}
