/* imap-ops.c: the operations table of SPEC.md, mount to server.  Each
 * operation returns only after the server confirmed it, and the cache shows
 * the new state before the caller is told. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "imap-store-private.h"
#include "log.h"
#include "mutf7.h"

/* ---- changes ---- */

/* A server's NO, by its response code (RFC 5530). */
static enum store_error refusal(struct imap_client *c)
{
	const char *code = imap_client_code(c);

	if (!strcasecmp(code, "OVERQUOTA") || !strcasecmp(code, "LIMIT"))
		return STORE_ERR_QUOTA;
	/* TRYCREATE: the target folder is gone (deleted by another
	 * client), as NONEXISTENT is for the folder itself. */
	if (!strcasecmp(code, "NONEXISTENT") || !strcasecmp(code, "TRYCREATE"))
		return STORE_ERR_NOTFOUND;
	if (!strcasecmp(code, "TOOBIG"))
		return STORE_ERR_TOOBIG;
	if (!strcasecmp(code, "NOPERM"))
		return STORE_ERR_PERM;
	return STORE_ERR_REFUSED;
}

/* A command's outcome as a store_error, logging refusals. */
enum store_error imap_ops_outcome(struct worker *w, int r, const char *what)
{
	if (r == IMAP_RESULT_OK)
		return STORE_OK;
	if (r < 0) {
		/* At unmount the connection was cut on purpose. */
		if (!imap_store_stopping(w->s))
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
	r = imap_client_run(w->client, imap_sync_on_examine, &e, "SELECT %s", q);
	free(q);
	if (r == IMAP_RESULT_OK) {
		w->selected = folder_id;
		w->selected_rw = true;
	}
	return imap_ops_outcome(w, r, f_r->server_name);
}

/* Expunge exactly one UID of the selected folder: UID EXPUNGE where the
 * server has UIDPLUS; otherwise EXPUNGE with the \Deleted flags that other
 * clients set lifted for the moment, so that only ours goes. */
enum store_error imap_ops_expunge_one(struct worker *w, uint32_t uid)
{
	struct meta_ctx mc = { .s = w->s };
	enum store_error e;
	int r;

	if (imap_client_caps(w->client) & IMAP_CAP_UIDPLUS) {
		/* One at a time, then check: a server may leave a UID EXPUNGE
		 * pipelined behind its STORE undone (seen with Dovecot 2.3
		 * while another session's expunge was pending). */
		r = imap_client_run(w->client, NULL, NULL, "UID STORE %u +FLAGS.SILENT (\\Deleted)", uid);
		if ((e = imap_ops_outcome(w, r, "store \\Deleted")) != STORE_OK)
			goto out;
		for (int attempt = 0; attempt < 3; attempt++) {
			r = imap_client_run(w->client, NULL, NULL, "UID EXPUNGE %u", uid);
			if ((e = imap_ops_outcome(w, r, "expunge")) != STORE_OK)
				goto out;
			mc.nseen = 0;
			r = imap_client_run(w->client, imap_sync_on_meta, &mc, "UID SEARCH UID %u", uid);
			if ((e = imap_ops_outcome(w, r, "search")) != STORE_OK)
				goto out;
			if (mc.nseen == 0)
				goto out;
			imap_client_run(w->client, NULL, NULL, "NOOP");
		}
		log_warn("the server keeps UID %u after expunging it", uid);
		e = STORE_ERR_IO;
		goto out;
	}
	r = imap_client_run(w->client, imap_sync_on_meta, &mc, "UID SEARCH DELETED");
	if ((e = imap_ops_outcome(w, r, "search")) != STORE_OK)
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
		if ((e = imap_ops_outcome(w, r, "store")) != STORE_OK)
			goto out_set;
	}
	r = imap_client_run(w->client, NULL, NULL, "UID STORE %u +FLAGS.SILENT (\\Deleted)", uid);
	if ((e = imap_ops_outcome(w, r, "store \\Deleted")) == STORE_OK) {
		r = imap_client_run(w->client, NULL, NULL, "EXPUNGE");
		e = imap_ops_outcome(w, r, "expunge");
	}
	if (set && *set)
		imap_client_run(w->client, NULL, NULL, "UID STORE %s +FLAGS.SILENT (\\Deleted)", set);
out_set:
	free(set);
out:
	free(mc.seen);
	return e;
}

/* Leave the selected folder without expunging anything (CLOSE would). */
void imap_ops_unselect(struct worker *w)
{
	if (!w->selected)
		return;
	if (imap_client_caps(w->client) & IMAP_CAP_UNSELECT)
		imap_client_run(w->client, NULL, NULL, "UNSELECT");
	else
		imap_client_run(w->client, NULL, NULL, "EXAMINE INBOX");
	w->selected = 0;
	w->selected_rw = false;
}

/* "COPYUID uidvalidity src dst" for one message: the new UID, or 0. */
uint32_t imap_ops_copyuid_dst(const char *args, uint32_t dst_validity)
{
	unsigned long v, src, dst;
	char tail;

	if (sscanf(args, "%lu %lu %lu%c", &v, &src, &dst, &tail) != 3)
		return 0;
	if (dst_validity && v != dst_validity)
		return 0;
	return dst > 0 && dst <= UINT32_MAX ? (uint32_t)dst : 0;
}

/* MOVE reports COPYUID in an untagged OK before the expunges. */
void imap_ops_on_moved(void *ctx, const struct imap_response *r)
{
	struct moved_ctx *m = ctx;

	if (r->kind == IMAP_RESP_UNTAGGED && r->status == IMAP_STATUS_OK &&
	    r->code_count > 0 && imap_arg_atom_is(&r->code[0], "COPYUID"))
		imap_code_args(r, m->args, sizeof(m->args));
}

/* The flags as UID STORE takes them: \Recent cannot be stored, the rest
 * passes through as atoms.  NULL without memory. */
char *imap_ops_storable_flags(const char *flags)
{
	char *copy = strdup(flags ? flags : ""), *out, *tok, *save = NULL, *p;

	out = copy ? malloc(strlen(copy) + 1) : NULL;
	if (!out) {
		free(copy);
		return NULL;
	}
	p = out;
	*p = '\0';
	for (tok = strtok_r(copy, " ", &save); tok; tok = strtok_r(NULL, " ", &save))
		if (strcasecmp(tok, "\\Recent"))
			p += sprintf(p, "%s%s", p == out ? "" : " ", tok);
	free(copy);
	return out;
}

/* "APPEND "folder" (\Seen) "date"", the literal to follow; mtime 0: no
 * date (the server's clock).  A time before 1970 counts as 1970; one
 * whose year has no four digits (or that gmtime_r cannot convert: its
 * tm would be garbage) gets no date at all. */
char *imap_ops_append_prefix(const char *server_name, int64_t mtime)
{
	static const char *const mon[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
					   "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
	char date[64] = "", *q = imap_quote(server_name), *prefix = NULL;

	if (mtime) {
		struct tm tm;
		time_t t = mtime < 0 ? 0 : (time_t)mtime;

		if (gmtime_r(&t, &tm) && tm.tm_year >= 1 - 1900 && tm.tm_year <= 9999 - 1900 &&
		    tm.tm_mon >= 0 && tm.tm_mon < 12)
			snprintf(date, sizeof(date), " \"%02d-%s-%04d %02d:%02d:%02d +0000\"",
				 tm.tm_mday, mon[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour,
				 tm.tm_min, tm.tm_sec);
	}
	if (q && asprintf(&prefix, "APPEND %s (\\Seen)%s", q, date) < 0)
		prefix = NULL;
	free(q);
	return prefix;
}

/* Move UID of the selected folder to the folder named to_server_name:
 * UID MOVE, else UID COPY then expunge (the message is never nowhere).
 * mc gets COPYUID's arguments when the server gives them. */
enum store_error imap_ops_move_uid(struct worker *w, uint32_t uid, const char *to_server_name,
				   struct moved_ctx *mc)
{
	char *q = imap_quote(to_server_name);
	enum store_error e;
	int r;

	mc->args[0] = '\0';
	if (!q)
		return STORE_ERR_IO;
	if (imap_client_caps(w->client) & IMAP_CAP_MOVE) {
		r = imap_client_run(w->client, imap_ops_on_moved, mc, "UID MOVE %u %s", uid, q);
		e = imap_ops_outcome(w, r, "move");
		if (e == STORE_OK && !mc->args[0] && !strcasecmp(imap_client_code(w->client), "COPYUID"))
			snprintf(mc->args, sizeof(mc->args), "%s", imap_client_code_args(w->client));
	} else {
		r = imap_client_run(w->client, NULL, NULL, "UID COPY %u %s", uid, q);
		e = imap_ops_outcome(w, r, "copy");
		if (e == STORE_OK) {
			if (!strcasecmp(imap_client_code(w->client), "COPYUID"))
				snprintf(mc->args, sizeof(mc->args), "%s", imap_client_code_args(w->client));
			e = imap_ops_expunge_one(w, uid);
		}
	}
	free(q);
	return e;
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
		imap_sync_folder(w, folder_id);
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
	int64_t trash_id = imap_store_trash_id(s);

	if (s->delete_trash && trash_id && trash_id != op->folder_id) {
		struct cache_folder t;

		if (cache_folder_get(s->cache, trash_id, &t) == 0) {
			/* rm with delete=trash is a move to Trash. */
			struct op mv = { .kind = OP_MOVE, .folder_id = op->folder_id, .uid = op->uid,
					 .to_folder_id = trash_id,
					 .name = (char *)imap_real_name(m.name) };
			cache_folder_clear(&t);
			cache_folder_clear(&f);
			e = op_move_do(w, &mv);
			cache_msg_clear(&m);
			return e;
		}
	}
	e = imap_ops_expunge_one(w, op->uid);
	if (e == STORE_OK) {
		cache_msg_delete(s->cache, op->folder_id, op->uid);
		imap_store_emit_entry(s, op->folder_id, m.name);
	}
out:
	cache_folder_clear(&f);
	cache_msg_clear(&m);
	return e;
}

enum store_error imap_ops_move_lookup(struct istore *s, const struct op *op, struct cache_msg *m_r,
				     struct cache_folder *t_r)
{
	if (cache_msg_get(s->cache, op->folder_id, op->uid, m_r) < 0)
		return STORE_ERR_NOTFOUND;
	if (cache_folder_get(s->cache, op->to_folder_id, t_r) < 0) {
		cache_msg_clear(m_r);
		return STORE_ERR_NOTFOUND;
	}
	if (t_r->flags & CACHE_FOLDER_NOSELECT) {
		cache_msg_clear(m_r);
		cache_folder_clear(t_r);
		return STORE_ERR_PERM;
	}
	return STORE_OK;
}

/* Where a move that gave no usable COPYUID put the message: the highest
 * UID from `from` on in the destination with its Message-ID (without one:
 * any new UID).  0 when none; the destination is selected after. */
static uint32_t moved_uid_by_search(struct worker *w, int64_t to_folder_id, const char *mid,
				    uint32_t from)
{
	struct meta_ctx mc = { .s = w->s };
	struct cache_folder t;
	uint32_t best = 0;
	char *qm = NULL;
	int r;

	if (!from || select_rw(w, to_folder_id, &t) != STORE_OK) {
		cache_folder_clear(&t);
		return 0;
	}
	cache_folder_clear(&t);
	if (mid && *mid && !(qm = imap_quote(mid)))
		return 0;
	if (qm)
		r = imap_client_run(w->client, imap_sync_on_meta, &mc,
				    "UID SEARCH UID %u:* HEADER Message-ID %s", from, qm);
	else
		r = imap_client_run(w->client, imap_sync_on_meta, &mc, "UID SEARCH UID %u:*", from);
	free(qm);
	/* "N:*" always matches the highest UID: keep those in range. */
	for (size_t i = 0; r == IMAP_RESULT_OK && i < mc.nseen; i++)
		if (mc.seen[i] >= from && mc.seen[i] > best)
			best = mc.seen[i];
	free(mc.seen);
	return best;
}

/* UIDNEXT of a folder before a move into it, 0 when unknown. */
static uint32_t uidnext_before(struct worker *w, const struct cache_folder *t)
{
	struct imap_folder_status st = { 0 };
	char *q = imap_quote(t->server_name);

	if (q) {
		if (imap_ops_status(w, q, "UIDNEXT", &st) != IMAP_RESULT_OK)
			st.uidnext = 0;
		free(q);
	}
	return st.uidnext;
}

static enum store_error op_move_do(struct worker *w, struct op *op)
{
	struct istore *s = w->s;
	struct cache_folder f, t;
	struct cache_msg m;
	struct moved_ctx mc = { "" };
	enum store_error e;
	uint32_t newuid = 0, from = 0;

	if ((e = imap_ops_move_lookup(s, op, &m, &t)) != STORE_OK)
		return e;
	ensure_synced(w, op->to_folder_id);
	cache_folder_clear(&t);
	cache_folder_get(s->cache, op->to_folder_id, &t);
	if (op->confirm)
		from = uidnext_before(w, &t);
	e = select_rw(w, op->folder_id, &f);
	if (e != STORE_OK)
		goto out;
	e = imap_ops_move_uid(w, op->uid, t.server_name, &mc);
	if (e != STORE_OK)
		goto out;
	imap_store_view_changed(s);
	newuid = imap_ops_copyuid_dst(mc.args, t.uidvalidity);
	/* No usable COPYUID (RFC 6851 only says SHOULD): look for it.  A
	 * plain mv searches from what the cache knew, to keep its name, and
	 * only by Message-ID (any new UID could be another's). */
	if (!newuid && (op->confirm || (m.message_id && *m.message_id)))
		newuid = moved_uid_by_search(w, op->to_folder_id, m.message_id,
					     op->confirm ? from : t.uidnext);
	if (!newuid && op->confirm) {
		/* OK, but no COPYUID naming the new UID and nothing new in
		 * the destination: the UID matched nothing (another client
		 * expunged it; Microsoft 365 answers that with COPYUID and
		 * empty sets).  A rename() onto a message must not take this
		 * for success: its old message would go.  (Should one have
		 * moved all the same, the sync lists it.) */
		log_warn("%s: the server said it moved UID %u, but it is not in %s",
			 m.name, op->uid, t.server_name);
		cache_msg_delete(s->cache, op->folder_id, op->uid);
		imap_store_emit_entry(s, op->folder_id, m.name);
		imap_sync_folder(w, op->to_folder_id);
		e = STORE_ERR_NOTFOUND;
		goto out;
	}
	if (newuid && cache_msg_move(s->cache, op->folder_id, op->uid, op->to_folder_id, newuid,
				     op->name) == 0) {
		imap_store_emit_entry(s, op->folder_id, m.name);
		imap_store_emit_entry(s, op->to_folder_id, op->name);
		goto out;
	}
	cache_msg_delete(s->cache, op->folder_id, op->uid);
	imap_store_emit_entry(s, op->folder_id, m.name);
	if (!newuid) {
		/* No COPYUID: the destination's sync finds it (under a name
		 * of our making). */
		imap_sync_folder(w, op->to_folder_id);
		goto out;
	}
	/* A sync of the destination (IDLE saw the message arrive) listed it
	 * first, under a name of its own: give it the name mv gave it. */
	struct cache_msg there;
	if (cache_msg_get(s->cache, op->to_folder_id, newuid, &there) < 0)
		imap_sync_folder(w, op->to_folder_id);
	else
		cache_msg_clear(&there);
	if (cache_msg_get(s->cache, op->to_folder_id, newuid, &there) == 0) {
		if (strcmp(there.name, op->name) != 0 &&
		    cache_msg_rename(s->cache, op->to_folder_id, newuid, op->name) == 0)
			imap_store_emit_entry(s, op->to_folder_id, there.name);
		imap_store_emit_entry(s, op->to_folder_id, op->name);
		cache_msg_clear(&there);
	}
out:
	cache_folder_clear(&f);
	cache_folder_clear(&t);
	cache_msg_clear(&m);
	return e;
}

/* The server's name for a new folder `name` under parent_id. */
char *imap_ops_child_server_name(struct istore *s, int64_t parent_id, const char *name)
{
	struct cache_folder p;
	char *enc = NULL, *full = NULL;
	char delim = imap_store_delim(s);

	if (strchr(name, delim) || mutf7_encode(name, &enc) < 0)
		return NULL;
	if (parent_id == 0)
		return enc;
	if (cache_folder_get(s->cache, parent_id, &p) == 0) {
		if (asprintf(&full, "%s%c%s", p.server_name, delim, enc) < 0)
			full = NULL;
		cache_folder_clear(&p);
	}
	free(enc);
	return full;
}

/* Show a new, empty folder in the cache: its listing is current as it is. */
void imap_ops_show_folder(struct istore *s, int64_t parent_id, const char *name,
			  const char *server_name)
{
	int64_t id;

	if (cache_folder_put(s->cache, parent_id, name, server_name, 0, &id) < 0)
		return;
	imap_store_emit_entry(s, parent_id, name);
	pthread_mutex_lock(&s->eng.lock);
	struct fstate *fs = imap_store_fstate(s, id);
	if (fs)
		fs->ready = true;
	pthread_mutex_unlock(&s->eng.lock);
}

static enum store_error op_mkdir(struct worker *w, struct op *op)
{
	struct istore *s = w->s;
	char *server = imap_ops_child_server_name(s, op->folder_id, op->name), *q;
	enum store_error e;
	int r;

	if (!server)
		return STORE_ERR_PERM;
	q = imap_quote(server);
	r = q ? imap_client_run(w->client, NULL, NULL, "CREATE %s", q) : -EINVAL;
	e = imap_ops_outcome(w, r, "create folder");
	if (e == STORE_OK) {
		imap_client_run(w->client, NULL, NULL, "SUBSCRIBE %s", q);
		imap_ops_show_folder(s, op->folder_id, op->name, server);
	} else if (!strcasecmp(imap_client_code(w->client), "ALREADYEXISTS")) {
		e = STORE_ERR_REFUSED;
	}
	free(q);
	free(server);
	return e;
}

static void on_status(void *ctx, const struct imap_response *r)
{
	struct imap_folder_status *st = ctx;
	uint64_t n;

	if (r->args_count != 3 || !imap_arg_atom_is(&r->args[0], "STATUS") ||
	    r->args[2].type != IMAP_ARG_LIST)
		return;
	for (size_t i = 0; i + 1 < r->args[2].len; i += 2) {
		const struct imap_arg *k = &r->args[2].v.items[i];

		if (!imap_arg_number(&r->args[2].v.items[i + 1], &n))
			continue;
		if (imap_arg_atom_is(k, "MESSAGES")) {
			st->messages = n;
			st->has_messages = true;
		} else if (imap_arg_atom_is(k, "UIDNEXT") && n <= UINT32_MAX) {
			st->uidnext = (uint32_t)n;
		}
	}
}

int imap_ops_status(struct worker *w, const char *quoted, const char *items,
		    struct imap_folder_status *st_r)
{
	memset(st_r, 0, sizeof(*st_r));
	return imap_client_run(w->client, on_status, st_r, "STATUS %s (%s)", quoted, items);
}

static enum store_error op_rmdir(struct worker *w, struct op *op)
{
	struct istore *s = w->s;
	struct cache_folder f;
	struct imap_folder_status st;
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
	/* STATUS on the selected folder may answer from a stale view. */
	imap_ops_unselect(w);
	if (!(f.flags & CACHE_FOLDER_NOSELECT)) {
		r = imap_ops_status(w, q, "MESSAGES", &st);
		e = imap_ops_outcome(w, r, "status");
		if (e == STORE_OK && st.has_messages && st.messages > 0) {
			/* Mail arrived that the cache has not seen yet. */
			e = STORE_ERR_REFUSED;
			op->len = 1; /* tells the caller: not empty */
			imap_sync_folder(w, op->folder_id);
		}
	}
	if (e == STORE_OK) {
		imap_client_run(w->client, NULL, NULL, "UNSUBSCRIBE %s", q);
		r = imap_client_run(w->client, NULL, NULL, "DELETE %s", q);
		e = imap_ops_outcome(w, r, "delete folder");
		if (e == STORE_OK) {
			cache_folder_delete(s->cache, op->folder_id);
			imap_store_emit_entry(s, f.parent_id, f.name);
			imap_store_view_changed(s);
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
	server = imap_ops_child_server_name(s, op->to_folder_id, op->name);
	if (!server) {
		cache_folder_clear(&f);
		return STORE_ERR_PERM;
	}
	qo = imap_quote(f.server_name);
	qn = imap_quote(server);
	/* Its subfolders may be selected here too: a server ends a session
	 * whose selected folder is renamed away. */
	imap_ops_unselect(w);
	r = qo && qn ? imap_client_run(w->client, NULL, NULL, "RENAME %s %s", qo, qn) : -EINVAL;
	e = imap_ops_outcome(w, r, "rename folder");
	if (e == STORE_OK) {
		imap_client_run(w->client, NULL, NULL, "SUBSCRIBE %s", qn);
		if (cache_folder_rename(s->cache, op->folder_id, op->to_folder_id, op->name,
					server, imap_store_delim(s)) == 0) {
			imap_store_emit_entry(s, f.parent_id, f.name);
			imap_store_emit_entry(s, op->to_folder_id, op->name);
		}
		imap_store_view_changed(s);
	}
	free(qo);
	free(qn);
	free(server);
	cache_folder_clear(&f);
	return e;
}

/* Show an appended message in the cache as (folder, uid), under the name
 * it was written with (or one made from it when that is taken), with its
 * body; pinned while only the journal holds it.  -errno if no row. */
int imap_ops_show_new(struct istore *s, const struct op *op, uint32_t uid, bool pinned)
{
	struct cache_msg m = {
		.folder_id = op->folder_id,
		.uid = uid,
		.name = op->name,
		.size = op->len,
		.mtime = op->mtime ? op->mtime : (int64_t)time(NULL),
		.flags = (char *)"\\Seen",
		.pinned = pinned,
	};
	char *name = NULL;
	int r = cache_msg_put(s->cache, &m, NULL, &name);

	if (r < 0) {
		m.name = NULL;
		r = cache_msg_put(s->cache, &m, op->name, &name);
	}
	if (r < 0)
		return r;
	cache_body_store(s->cache, op->folder_id, uid, op->data, op->len);
	if (pinned)
		cache_msg_set_pinned(s->cache, op->folder_id, uid, true);
	imap_store_emit_entry(s, op->folder_id, name ? name : op->name);
	free(name);
	return 0;
}

static enum store_error op_append(struct worker *w, struct op *op)
{
	struct istore *s = w->s;
	struct cache_folder f;
	char *prefix;
	enum store_error e;
	int tag, r;

	ensure_synced(w, op->folder_id);
	if (cache_folder_get(s->cache, op->folder_id, &f) < 0)
		return STORE_ERR_NOTFOUND;
	if (f.flags & CACHE_FOLDER_NOSELECT) {
		cache_folder_clear(&f);
		return STORE_ERR_PERM;
	}
	prefix = imap_ops_append_prefix(f.server_name, op->mtime);
	if (!prefix) {
		cache_folder_clear(&f);
		return STORE_ERR_IO;
	}
	/* Cut before the answer (an unmount cuts it at once): the replay
	 * then looks for it from here on, rather than sending it twice. */
	op->uidnext = f.uidvalidity ? f.uidnext : 0;
	tag = imap_client_send_literal(w->client, prefix, op->data, op->len, NULL, NULL, NULL);
	free(prefix);
	r = tag < 0 ? tag : imap_client_wait(w->client, tag, NULL, NULL);
	e = imap_ops_outcome(w, r, "append");
	if (e == STORE_OK) {
		imap_store_view_changed(s);
		uint32_t uid = 0;
		unsigned long v, u;
		char tail;

		if (!strcasecmp(imap_client_code(w->client), "APPENDUID") &&
		    sscanf(imap_client_code_args(w->client), "%lu %lu%c", &v, &u, &tail) == 2 &&
		    v == f.uidvalidity && u > 0 && u <= UINT32_MAX)
			uid = (uint32_t)u;
		if (uid) {
			imap_ops_show_new(s, op, uid, false);
		} else {
			imap_sync_folder(w, op->folder_id);
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
	imap_sync_on_meta(&fc->mc, r);
}

static enum store_error op_flags(struct worker *w, struct op *op)
{
	struct cache_folder f;
	struct flags_ctx fc = { .mc = { .s = w->s, .folder_id = op->folder_id } };
	enum store_error e;
	char *clean = imap_ops_storable_flags(op->flags);
	int r;

	if (!clean)
		return STORE_ERR_IO;
	e = select_rw(w, op->folder_id, &f);
	if (e == STORE_OK) {
		r = imap_client_run(w->client, on_flags, &fc, "UID STORE %u FLAGS (%s)", op->uid, clean);
		e = imap_ops_outcome(w, r, "store flags");
		if (e == STORE_OK && !fc.seen) {
			/* No FETCH came back: the message is gone. */
			e = STORE_ERR_NOTFOUND;
		}
	}
	cache_folder_clear(&f);
	free(clean);
	return e;
}

/* Tell the op's caller and free it. */
static void op_finish(struct op *op, enum store_error e)
{
	op->done(op->ctx, e, op->kind == OP_RMDIR && op->len == 1);
	free(op->name);
	free(op->flags);
	free(op->data);
	free(op);
}

void imap_ops_run(struct worker *w, struct op *op)
{
	struct istore *s = w->s;
	enum store_error e = STORE_ERR_IO;
	bool attempted = false; /* the command may have reached the server */
	const char *err;

	if (!w->client || !imap_client_alive(w->client)) {
		if (imap_store_connect(w, &err) < 0) {
			if (!imap_store_stopping(s))
				log_warn("%s", err);
			engine_set_online(&s->eng, false);
			goto offline;
		}
	}
	engine_set_online(&s->eng, true);
	/* Earlier changes first, in order; if they cannot all go, this
	 * one waits behind them. */
	if (imap_journal_replay(w) < 0)
		goto offline;
	/* The replay may have given a message named by its local UID its
	 * server UID. */
	if (journal_uid_is_local(op->uid))
		imap_journal_translate(s, op->folder_id, &op->uid);
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
	/* The connection died before the server answered: whether it did
	 * the change or not, the journal's replay makes it happen once. */
	if (e == STORE_ERR_IO && w->client && !imap_client_alive(w->client) && s->journal) {
		engine_set_online(&s->eng, false);
		attempted = true;
		goto offline;
	}
	goto done;
offline:
	e = s->journal ? imap_journal_apply(s, op, attempted) : STORE_ERR_IO;
done:
	op_finish(op, e);
}

void imap_ops_journal(struct istore *s, struct op *op)
{
	op_finish(op, s->journal ? imap_journal_apply(s, op, false) : STORE_ERR_IO);
}

static void queue_op(struct istore *s, struct op *op)
{
	struct job *j;

	pthread_mutex_lock(&s->eng.lock);
	j = imap_store_enqueue(s, JOB_OP, op->folder_id, op->uid, true);
	if (j)
		j->op = op;
	pthread_mutex_unlock(&s->eng.lock);
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

void imap_ops_remove(struct store *base, int64_t folder_id, uint32_t uid,
			  store_done_fn *done, void *ctx)
{
	struct op *op = new_op(OP_REMOVE, folder_id, uid, done, ctx);

	if (op)
		queue_op((struct istore *)base, op);
}

void imap_ops_move(struct store *base, int64_t folder_id, uint32_t uid,
			int64_t to_folder_id, const char *name, store_done_fn *done, void *ctx)
{
	struct op *op = new_op(OP_MOVE, folder_id, uid, done, ctx);

	if (!op)
		return;
	op->to_folder_id = to_folder_id;
	op->name = strdup(name);
	/* The fs's temporary name of a rename() onto a message (no sync
	 * makes a name starting with '.'): the old message goes after. */
	op->confirm = !strncmp(name, ".mailfs-", 8);
	queue_op((struct istore *)base, op);
}

void imap_ops_mkdir(struct store *base, int64_t parent_id, const char *name,
			 store_done_fn *done, void *ctx)
{
	struct op *op = new_op(OP_MKDIR, parent_id, 0, done, ctx);

	if (!op)
		return;
	op->name = strdup(name);
	queue_op((struct istore *)base, op);
}

void imap_ops_rmdir(struct store *base, int64_t folder_id, store_done_fn *done, void *ctx)
{
	struct op *op = new_op(OP_RMDIR, folder_id, 0, done, ctx);

	if (op)
		queue_op((struct istore *)base, op);
}

void imap_ops_rename_folder(struct store *base, int64_t folder_id, int64_t new_parent_id,
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

void imap_ops_append(struct store *base, int64_t folder_id, const char *name, int fd,
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

void imap_ops_set_flags(struct store *base, int64_t folder_id, uint32_t uid,
			     const char *flags, store_done_fn *done, void *ctx)
{
	struct op *op = new_op(OP_FLAGS, folder_id, uid, done, ctx);

	if (!op)
		return;
	op->flags = strdup(flags);
	queue_op((struct istore *)base, op);
}

