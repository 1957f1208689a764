/* imap-sync.c: keeping the cache's folder list and listings in step with
 * the server (see imap-store-private.h).  Never refetches the metadata of
 * a message the cache already has. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "imap-store-private.h"
#include "log.h"
#include "mutf7.h"
#include "names.h"

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
	/* A name with an empty level ("/etc", "a//b", "x/") has no place in
	 * a directory tree: show it flat, the delimiters sanitized away. */
	if (e->depth > 1 && (decoded[0] == '\n' || strstr(decoded, "\n\n") ||
			     decoded[strlen(decoded) - 1] == '\n')) {
		for (char *p = decoded; *p; p++)
			if (*p == '\n')
				*p = e->delim;
		e->depth = 1;
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

static bool list_has_inbox(const struct list_ctx *lc)
{
	for (size_t i = 0; i < lc->n; i++)
		if (!strcasecmp(lc->e[i].server_name, "INBOX"))
			return true;
	return false;
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
int imap_sync_list(struct istore *s, struct imap_client *c, const char **error_r)
{
	struct list_ctx lc = { 0 };
	struct cache_folder *old = NULL;
	size_t nold = 0;
	int64_t *seen_ids = NULL;
	int r;

	r = imap_client_run(c, on_list, &lc, "LIST \"\" \"*\"");
	if (r != IMAP_RESULT_OK) {
		/* Our own copy: the client's texts die with the client. */
		static __thread char msg[512];

		snprintf(msg, sizeof(msg), "cannot list the folders on %s: %s%s", s->url.host,
			 r < 0 ? "" : "the server said: ",
			 r < 0 ? imap_client_error(c) : imap_client_text(c));
		*error_r = msg;
		r = -1;
		goto out;
	}
	if (lc.n)
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
		if (e->delim) {
			pthread_mutex_lock(&s->eng.lock);
			s->delim = e->delim;
			pthread_mutex_unlock(&s->eng.lock);
		}
		if (put_folder(s, parent, comp, e->server_name, e->flags, &id) == 0) {
			seen_ids[nseen++] = id;
			pthread_mutex_lock(&s->eng.lock);
			if (e->flags & CACHE_FOLDER_TRASH)
				s->trash_id = id;
			if (!strcasecmp(e->server_name, "INBOX"))
				s->inbox_id = id;
			pthread_mutex_unlock(&s->eng.lock);
			if (!existed) {
				struct cache_folder f;

				if (cache_folder_get(s->cache, id, &f) == 0) {
					imap_store_emit_entry(s, f.parent_id, f.name);
					cache_folder_clear(&f);
				}
			}
		}
		if (existed)
			cache_folder_clear(&before);
	}
	/* Sweep folders that are gone on the server, unless the answer
	 * cannot be the whole list: every account has an INBOX, so a LIST
	 * without one (an empty answer from a broken or overloaded server)
	 * proves nothing is gone.  Nor while changes made offline wait (the
	 * mount's first LIST runs before the replay): a folder made or
	 * renamed offline is not on the server yet; the listing after the
	 * replay sweeps. */
	bool has_inbox = list_has_inbox(&lc);
	bool sweep = has_inbox && !(s->journal && journal_count(s->journal) > 0);
	size_t kept = 0;

	if (cache_folder_list(s->cache, &old, &nold) == 0) {
		for (size_t i = nold; i-- > 0;) {
			bool found = false;

			for (size_t k = 0; k < nseen && !found; k++)
				found = seen_ids[k] == old[i].id;
			if (found)
				continue;
			if (!sweep) {
				kept++;
				continue;
			}
			log_debug("folder %s is gone from the server", old[i].server_name);
			cache_folder_delete(s->cache, old[i].id);
			imap_store_emit_entry(s, old[i].parent_id, old[i].name);
		}
		cache_folder_list_free(old, nold);
	}
	if (kept && !has_inbox)
		log_warn("the folder list from %s has no INBOX; %zu cached folders are kept",
			 s->url.host, kept);
	else if (kept)
		log_debug("offline changes wait: %zu folders not listed are kept for now", kept);
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

void imap_sync_on_examine(void *ctx, const struct imap_response *r)
{
	struct examine_ctx *e = ctx;
	uint64_t n;

	if (e->mc && r->kind == IMAP_RESP_UNTAGGED && r->args_count >= 2) {
		/* QRESYNC: "* VANISHED (EARLIER) 3:5,9" and the flags of
		 * messages changed since our HIGHESTMODSEQ. */
		if (imap_arg_atom_is(&r->args[0], "VANISHED")) {
			const struct imap_arg *set = &r->args[r->args_count - 1];

			if (set->type == IMAP_ARG_ATOM)
				imap_sync_gone_add_set(e->mc, set->v.str);
			return;
		}
		if (r->args_count == 3 && imap_arg_atom_is(&r->args[1], "FETCH")) {
			imap_sync_on_meta(e->mc, r);
			return;
		}
	}

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
int imap_sync_select(struct worker *w, const struct cache_folder *f,
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
		r = imap_client_run(w->client, imap_sync_on_examine, &e, "%s %s (CONDSTORE)", cmd, q);
	else
		r = imap_client_run(w->client, imap_sync_on_examine, &e, "%s %s", cmd, q);
	free(q);
	if (r == IMAP_RESULT_OK) {
		w->selected = f->id;
		w->selected_rw = !w->s->ro;
	}
	if (e_r)
		*e_r = e;
	return r;
}

int imap_sync_select_qresync(struct worker *w, const struct cache_folder *f,
			     uint32_t maxuid, struct meta_ctx *mc, struct examine_ctx *e_r)
{
	struct examine_ctx e = { .mc = mc };
	char *q;
	int r;

	if (!w->qresync || !f->uidvalidity || !f->highestmodseq || maxuid == 0)
		return imap_sync_select(w, f, e_r);
	q = imap_quote(f->server_name);
	if (!q)
		return -EINVAL;
	w->selected = 0;
	e.qresync_used = true;
	r = imap_client_run(w->client, imap_sync_on_examine, &e,
			    "%s %s (QRESYNC (%u %llu 1:%u))", w->s->ro ? "EXAMINE" : "SELECT", q,
			    f->uidvalidity, (unsigned long long)f->highestmodseq, maxuid);
	free(q);
	if (r == IMAP_RESULT_OK) {
		w->selected = f->id;
		w->selected_rw = !w->s->ro;
	}
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
	/* A zone is +-HHMM: anything else (-2147483648, whose abs() is
	 * undefined) is no date at all. */
	if (zone < -2359 || zone > 2359 || abs(zone) % 100 > 59)
		return 0;
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
			imap_store_emit_entry(s, mc->folder_id, names[i]);
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
	if (!mc->pending)
		mc->pending = calloc(META_BATCH, sizeof(*mc->pending));
	if (m.flags && base && mc->pending) {
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
			imap_store_emit_message(mc->s, mc->folder_id, uid);
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

/* Calls fn for each range of a UID set ("1:3,7,9:10"), low end first;
 * stops at the first malformed element. */
static void uid_set_ranges(const char *set, void (*fn)(struct meta_ctx *, uint32_t, uint32_t),
			   struct meta_ctx *mc)
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
			if (end == p + 1)
				return;
			p = end;
		}
		if (a > b) {
			unsigned long t = a;
			a = b;
			b = t;
		}
		if (a == 0 || b > UINT32_MAX)
			return;
		fn(mc, (uint32_t)a, (uint32_t)b);
		if (*p == ',')
			p++;
		else if (*p)
			return;
	}
}

static void gone_add(struct meta_ctx *mc, uint32_t lo, uint32_t hi)
{
	if (mc->ngone == mc->capgone) {
		size_t cap = mc->capgone ? mc->capgone * 2 : 64;
		struct uid_range *g = realloc(mc->gone, cap * sizeof(*g));

		if (!g)
			return;
		mc->gone = g;
		mc->capgone = cap;
	}
	mc->gone[mc->ngone].lo = lo;
	mc->gone[mc->ngone].hi = hi;
	mc->ngone++;
}

/* VANISHED: kept as ranges, never expanded (a server may say 1:4294967295). */
void imap_sync_gone_add_set(struct meta_ctx *mc, const char *set)
{
	uid_set_ranges(set, gone_add, mc);
}

static bool gone_has(const struct meta_ctx *mc, uint32_t uid)
{
	for (size_t i = 0; i < mc->ngone; i++)
		if (uid >= mc->gone[i].lo && uid <= mc->gone[i].hi)
			return true;
	return false;
}

static void seen_add_range(struct meta_ctx *mc, uint32_t lo, uint32_t hi)
{
	/* Only the UIDs we asked about: a range costs what the cache
	 * holds of it, however large (a planted UID made "1:4294967295"
	 * plausible). */
	if (mc->asked) {
		size_t a = 0, b = mc->nasked;

		while (a < b) {
			size_t mid = a + (b - a) / 2;

			if (mc->asked[mid] < lo)
				a = mid + 1;
			else
				b = mid;
		}
		for (; a < mc->nasked && mc->asked[a] <= hi; a++)
			seen_add(mc, mc->asked[a]);
		return;
	}
	if (hi - lo >= 1000000)
		return;
	for (uint64_t u = lo; u <= hi; u++)
		seen_add(mc, u);
}

/* "1:3,7,9:10" from ESEARCH ALL */
static void seen_add_set(struct meta_ctx *mc, const char *set)
{
	uid_set_ranges(set, seen_add_range, mc);
}

void imap_sync_on_meta(void *ctx, const struct imap_response *r)
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
		if (uid >= mc->min_uid) {
			mc->received++;
			meta_new(mc, (uint32_t)uid, &r->args[2]);
		}
	} else {
		if (mc->collect_seen)
			seen_add(mc, uid);
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
			imap_store_emit_entry(s, folder_id, msgs[i].name);
		after = msgs[n - 1].uid;
		cache_msg_list_free(msgs, n);
	}
	cache_folder_reset(s->cache, folder_id);
}

/* One folder: new messages' metadata, expunges, flag changes. */
int imap_sync_folder(struct worker *w, int64_t folder_id)
{
	struct istore *s = w->s;
	struct cache_folder f;
	struct examine_ctx e;
	struct meta_ctx *mc = calloc(1, sizeof(*mc));
	uint32_t *uids = NULL;
	size_t nuids = 0;
	int r, tag_new = 0, tag_flags = 0;

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
	if (cache_msg_uids(s->cache, folder_id, &uids, &nuids) < 0) {
		r = -EIO;
		goto out;
	}
	/* Messages put here offline (local UIDs, at the end) are not the
	 * server's yet: the journal's replay gives them their UIDs. */
	while (nuids > 0 && journal_uid_is_local(uids[nuids - 1]))
		nuids--;
	r = imap_sync_select_qresync(w, &f, nuids ? uids[nuids - 1] : 0, mc, &e);
	if (r != IMAP_RESULT_OK) {
		/* NO: the folder vanished or cannot be opened; not fatal. */
		if (r > 0)
			log_warn("cannot open folder %s: %s", f.server_name, imap_client_text(w->client));
		r = r > 0 ? 0 : r;
		goto out;
	}
	/* What QRESYNC reported holds only for the same UIDVALIDITY. */
	bool qresynced = e.qresync_used && e.uidvalidity == f.uidvalidity && !e.nomodseq;
	if (f.uidvalidity && e.uidvalidity != f.uidvalidity) {
		log_info("folder %s: UIDVALIDITY changed, dropping its cache", f.server_name);
		drop_folder_messages(s, folder_id);
		f.uidvalidity = 0;
		f.uidnext = 0;
		f.highestmodseq = 0;
		free(uids);
		uids = NULL;
		nuids = 0;
		mc->ngone = 0;
	}
	uint32_t maxuid = nuids ? uids[nuids - 1] : 0;
	bool condstore = e.highestmodseq && !e.nomodseq;

	/* A folder never listed from the server (or to be listed again: see
	 * imap-journal.c relist()) may hold rows that did not come from a
	 * listing: list from UID 1, rows already known keep their names. */
	uint32_t from = f.uidnext ? maxuid + 1 : 1;

	if (e.exists > 0) {
		/* New UIDs only: never refetch what the cache knows. */
		if (e.uidnext == 0 || e.uidnext > maxuid + 1 || nuids == 0 || from == 1) {
			mc->min_uid = from;
			tag_new = imap_client_send(w->client,
						   "UID FETCH %u:* (UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE%s)",
						   from, condstore ? " MODSEQ" : "");
			engine_count_fetches(&s->eng, 1);
		}
		/* Flags: only what changed since the last sync (CONDSTORE);
		 * without it all of them, which also lists the UIDs that
		 * still exist. */
		if (nuids > 0 && !condstore) {
			mc->collect_seen = true;
			tag_flags = imap_client_send(w->client, "UID FETCH 1:%u (UID FLAGS)", maxuid);
		} else if (nuids > 0 && !qresynced && e.highestmodseq != f.highestmodseq) {
			tag_flags = imap_client_send(w->client,
						     "UID FETCH 1:%u (UID FLAGS) (CHANGEDSINCE %llu)",
						     maxuid, (unsigned long long)f.highestmodseq);
		}
		if (tag_flags > 0)
			engine_count_fetches(&s->eng, 1);
	}
	if (tag_new < 0 || tag_flags < 0) {
		r = -EIO;
		goto out;
	}
	/* Metadata is small: even a huge folder lists in a few minutes. */
	imap_client_set_deadline(w->client, 120 + (int)(e.exists / 100));
	int tags[2] = { tag_new, tag_flags };
	for (int i = 0; i < 2; i++) {
		if (tags[i] <= 0)
			continue;
		r = imap_client_wait(w->client, tags[i], imap_sync_on_meta, mc);
		if (r < 0)
			goto out;
		if (r == IMAP_RESULT_OK)
			continue;
		log_warn("folder %s: %s", f.server_name, imap_client_text(w->client));
		/* Only a complete answer lists the UIDs still there: ask
		 * UID SEARCH instead of taking the missing ones for gone. */
		if (i == 1 && mc->collect_seen) {
			mc->collect_seen = false;
			mc->nseen = 0;
		}
	}
	meta_flush(mc);
	/* Expunges: EXISTS counts the old messages still there plus the new
	 * ones; when that is all the old ones, nothing went.  Otherwise find
	 * out which (the flags FETCH listed them, or ask). */
	size_t old_left = e.exists >= mc->received ? e.exists - mc->received : 0;
	bool expunged = e.exists == 0 || old_left != nuids;
	bool by_vanished = false;

	if (expunged && qresynced && e.exists > 0) {
		/* VANISHED (EARLIER) named them: trust it when the count
		 * agrees, else ask which UIDs are left. */
		size_t gone = 0;

		for (size_t i = 0; i < nuids; i++)
			gone += gone_has(mc, uids[i]);
		by_vanished = nuids - gone == old_left;
	}
	if (expunged && !by_vanished && nuids > 0 && e.exists > 0 && !mc->collect_seen) {
		mc->collect_seen = true;
		mc->asked = uids;
		mc->nasked = nuids;
		r = imap_client_run(w->client, imap_sync_on_meta, mc, "UID SEARCH %sUID 1:%u",
				    (imap_client_caps(w->client) & IMAP_CAP_ESEARCH) ?
				    "RETURN (ALL) " : "", maxuid);
		if (r < 0)
			goto out;
		if (r != IMAP_RESULT_OK)
			expunged = false; /* no answer: keep what we have */
	}
	if (expunged && nuids > 0) {
		size_t gone = 0;

		if (mc->nseen)
			qsort(mc->seen, mc->nseen, sizeof(*mc->seen), cmp_u32);
		for (size_t i = 0; i < nuids; i++) {
			if (by_vanished ? !gone_has(mc, uids[i]) :
			    mc->nseen && bsearch(&uids[i], mc->seen, mc->nseen, sizeof(*mc->seen),
						 cmp_u32))
				continue;
			struct cache_msg m;

			if (cache_msg_get(s->cache, folder_id, uids[i], &m) == 0) {
				cache_msg_delete(s->cache, folder_id, uids[i]);
				imap_store_emit_entry(s, folder_id, m.name);
				cache_msg_clear(&m);
				gone++;
			}
		}
		if (gone)
			imap_store_view_changed(s);
	}
	if (mc->added)
		imap_store_view_changed(s);
	cache_folder_set_state(s->cache, folder_id, e.uidvalidity, e.uidnext,
			       e.highestmodseq, (int64_t)time(NULL));
	if (mc->added)
		log_debug("folder %s: %zu new messages", f.server_name, mc->added);
	r = 0;
out:
	imap_client_set_deadline(w->client, 0);
	cache_folder_clear(&f);
	free(uids);
	meta_flush(mc);
	free(mc->pending);
	free(mc->seen);
	free(mc->gone);
	free(mc);
	return r;
}

