/* imap-journal.c: changes made while the server was unreachable.
 *
 * imap_journal_apply() writes the change to the journal (durably) and then
 * shows it in the cache, so the mount behaves as if the server had said OK.
 * imap_journal_replay() sends the entries, oldest first, once a connection
 * works again; every worker calls it before any other job, so nothing the
 * server says can overtake a change the user made first.
 *
 * Replay is written to be repeatable: a crash between a command and the
 * removal of its entry sends the entry again.  An expunge or a flag store
 * sent twice does nothing more; a move whose source UID is gone already
 * happened; an APPEND marked as attempted is looked for by Message-ID
 * before it is sent again.  A change the server refuses is given up with a
 * warning (the next sync shows the server's state), except an APPEND: its
 * message is kept in CACHE_DIR/unsent/, never dropped. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "imap-store-private.h"
#include "log.h"

/* ---- recording ---- */

/* The highest UID of the folder in the cache, if it is a local one. */
static uint32_t highest_local(struct istore *s, int64_t folder_id)
{
	uint32_t *uids = NULL, top = 0;
	size_t n = 0;

	if (cache_msg_uids(s->cache, folder_id, &uids, &n) == 0 && n > 0 &&
	    journal_uid_is_local(uids[n - 1]))
		top = uids[n - 1];
	free(uids);
	return top;
}

static enum store_error record(struct istore *s, struct journal_entry *e)
{
	int r = journal_add(s->journal, e);

	if (r < 0) {
		log_warn("cannot record the change in the journal: %s", strerror(-r));
		return r == -ENOSPC ? STORE_ERR_QUOTA : STORE_ERR_IO;
	}
	return STORE_OK;
}

/* The same for a message arriving in folder_id: it gets its local UID. */
static enum store_error record_local(struct istore *s, struct journal_entry *e, int64_t folder_id)
{
	int r = journal_add_local(s->journal, e, highest_local(s, folder_id));

	if (r < 0) {
		log_warn("cannot record the change in the journal: %s", strerror(-r));
		return r == -ENOSPC ? STORE_ERR_QUOTA : STORE_ERR_IO;
	}
	return STORE_OK;
}

static enum store_error apply_remove(struct istore *s, struct op *op, struct cache_folder *f)
{
	struct cache_msg m;
	struct journal_entry e = {
		.kind = JOURNAL_REMOVE, .folder_id = op->folder_id, .uid = op->uid,
		.uidvalidity = f->uidvalidity, .server_name = f->server_name,
	};
	enum store_error err;

	if (cache_msg_get(s->cache, op->folder_id, op->uid, &m) < 0)
		return STORE_ERR_NOTFOUND;
	/* To find the message again after a UIDVALIDITY change. */
	e.name = m.name;
	e.message_id = m.message_id;
	/* rename() onto this message: its replacement, journaled before,
	 * must reach the server first.  The entry names the replacement's
	 * local UID as to_uid; its replay's renumbering makes that the
	 * server's (AUDIT A5). */
	/* (Its row is under a hidden name while it is removed.) */
	if (journal_find_replacement(s->journal, op->folder_id, imap_real_name(m.name),
				     &e.to_uid) == 0 &&
	    journal_uid_is_local(e.to_uid))
		e.to_folder_id = op->folder_id;
	else
		e.to_uid = 0;
	if ((err = record(s, &e)) == STORE_OK) {
		cache_msg_delete(s->cache, op->folder_id, op->uid);
		imap_store_emit_entry(s, op->folder_id, m.name);
	}
	cache_msg_clear(&m);
	return err;
}

static enum store_error apply_flags(struct istore *s, struct op *op, struct cache_folder *f)
{
	struct cache_msg m;
	struct journal_entry e = {
		.kind = JOURNAL_FLAGS, .folder_id = op->folder_id, .uid = op->uid,
		.uidvalidity = f->uidvalidity, .server_name = f->server_name, .flags = op->flags,
	};
	enum store_error err;

	if (cache_msg_get(s->cache, op->folder_id, op->uid, &m) < 0)
		return STORE_ERR_NOTFOUND;
	e.name = m.name;
	e.message_id = m.message_id;
	if ((err = record(s, &e)) == STORE_OK) {
		cache_msg_set_flags(s->cache, op->folder_id, op->uid, op->flags, 0);
		imap_store_emit_message(s, op->folder_id, op->uid);
	}
	cache_msg_clear(&m);
	return err;
}

/* "NAME (2).eml", "NAME (3).eml"...: the first not taken in the folder. */
static char *free_name(struct istore *s, int64_t folder_id, const char *name)
{
	size_t len = strlen(name);
	size_t stem = len > 4 && !strcmp(name + len - 4, ".eml") ? len - 4 : len;

	for (unsigned n = 2; n < 1000; n++) {
		struct cache_msg m;
		char *cand = NULL;

		if (asprintf(&cand, "%.*s (%u).eml", (int)(stem > 230 ? 230 : stem), name, n) < 0)
			return NULL;
		if (cache_msg_lookup(s->cache, folder_id, cand, &m) < 0)
			return cand;
		cache_msg_clear(&m);
		free(cand);
	}
	return NULL;
}

static enum store_error apply_move(struct istore *s, struct op *op, struct cache_folder *f,
				   bool attempted, bool to_trash)
{
	struct cache_folder t;
	struct cache_msg m;
	enum store_error err;
	char *name = NULL;
	int r;

	if ((err = imap_ops_move_lookup(s, op, &m, &t)) != STORE_OK)
		return err;
	struct cache_msg clash;
	if (cache_msg_lookup(s->cache, op->to_folder_id, op->name, &clash) == 0) {
		cache_msg_clear(&clash);
		/* mv onto a taken name is refused; rm with delete=trash picks
		 * a free one, as online. */
		if (!to_trash || !(name = free_name(s, op->to_folder_id, op->name))) {
			err = STORE_ERR_REFUSED;
			goto out;
		}
	}
	struct journal_entry e = {
		.kind = JOURNAL_MOVE, .folder_id = op->folder_id, .uid = op->uid,
		.uidvalidity = f->uidvalidity, .server_name = f->server_name,
		.to_folder_id = op->to_folder_id, .to_server_name = t.server_name,
		.name = name ? name : op->name, .attempted = attempted,
		.message_id = m.message_id,
	};
	if ((err = record_local(s, &e, op->to_folder_id)) != STORE_OK)
		goto out;
	uint32_t local = e.to_uid;
	r = cache_msg_move(s->cache, op->folder_id, op->uid, op->to_folder_id, local, e.name);
	if (r < 0) {
		journal_done(s->journal, e.seq);
		err = r == -EEXIST ? STORE_ERR_REFUSED : STORE_ERR_IO;
		goto out;
	}
	cache_msg_set_pinned(s->cache, op->to_folder_id, local, true);
	imap_store_emit_entry(s, op->folder_id, m.name);
	imap_store_emit_entry(s, op->to_folder_id, e.name);
out:
	free(name);
	cache_folder_clear(&t);
	cache_msg_clear(&m);
	return err;
}

static enum store_error apply_append(struct istore *s, struct op *op, struct cache_folder *f,
				     bool attempted)
{
	enum store_error err;

	if (f->flags & CACHE_FOLDER_NOSELECT)
		return STORE_ERR_PERM;
	struct journal_entry e = {
		.kind = JOURNAL_APPEND, .folder_id = op->folder_id,
		.uidvalidity = f->uidvalidity, .server_name = f->server_name, .name = op->name,
		.mtime = op->mtime, .data = op->data, .len = op->len, .attempted = attempted,
		.hint = attempted ? op->uidnext : 0,
	};
	if ((err = record_local(s, &e, op->folder_id)) != STORE_OK)
		return err;
	if (imap_ops_show_new(s, op, e.uid, true) < 0)
		/* The journal has it: the replay brings it back. */
		log_warn("%s: kept in the journal, not shown until it reaches the server", op->name);
	return STORE_OK;
}

static enum store_error apply_mkdir(struct istore *s, struct op *op)
{
	char *server = imap_ops_child_server_name(s, op->folder_id, op->name);
	struct journal_entry e = { .kind = JOURNAL_MKDIR, .server_name = server, .name = op->name };
	enum store_error err;

	if (!server)
		return STORE_ERR_PERM;
	err = record(s, &e);
	if (err == STORE_OK)
		imap_ops_show_folder(s, op->folder_id, op->name, server);
	free(server);
	return err;
}

static enum store_error apply_rmdir(struct istore *s, struct cache_folder *f)
{
	/* A \Noselect folder holds no mail, and STATUS is refused on it. */
	struct journal_entry e = { .kind = JOURNAL_RMDIR, .folder_id = f->id,
				   .server_name = f->server_name,
				   .flags = f->flags & CACHE_FOLDER_NOSELECT ? (char *)"\\Noselect" :
									 NULL };
	enum store_error err = record(s, &e);

	if (err == STORE_OK) {
		cache_folder_delete(s->cache, f->id);
		imap_store_emit_entry(s, f->parent_id, f->name);
		imap_store_view_changed(s);
	}
	return err;
}

static enum store_error apply_rename(struct istore *s, struct op *op, struct cache_folder *f)
{
	char *server;
	enum store_error err;

	if (!strcasecmp(f->server_name, "INBOX"))
		return STORE_ERR_PERM;
	server = imap_ops_child_server_name(s, op->to_folder_id, op->name);
	if (!server)
		return STORE_ERR_PERM;
	struct journal_entry e = { .kind = JOURNAL_RENAME, .folder_id = f->id,
				   .server_name = f->server_name, .to_server_name = server,
				   .name = op->name };
	err = record(s, &e);
	if (err == STORE_OK &&
	    cache_folder_rename(s->cache, f->id, op->to_folder_id, op->name, server,
				imap_store_delim(s)) == 0) {
		imap_store_emit_entry(s, f->parent_id, f->name);
		imap_store_emit_entry(s, op->to_folder_id, op->name);
		imap_store_view_changed(s);
	}
	free(server);
	return err;
}

static enum store_error journal_apply_locked(struct istore *s, struct op *op, bool attempted);

enum store_error imap_journal_apply(struct istore *s, struct op *op, bool attempted)
{
	enum store_error err;

	/* Never beside a replay: it may be giving this very message its
	 * server UID, or sweeping local rows it thinks unused. */
	pthread_mutex_lock(&s->replay_lock);
	if (journal_uid_is_local(op->uid))
		imap_journal_translate(s, op->folder_id, &op->uid);
	err = journal_apply_locked(s, op, attempted);
	pthread_mutex_unlock(&s->replay_lock);
	return err;
}

static enum store_error journal_apply_locked(struct istore *s, struct op *op, bool attempted)
{
	struct cache_folder f;
	enum store_error err;

	if (op->kind == OP_MKDIR)
		return apply_mkdir(s, op);
	if (cache_folder_get(s->cache, op->folder_id, &f) < 0)
		return STORE_ERR_NOTFOUND;
	switch (op->kind) {
	case OP_REMOVE: {
		int64_t trash_id = imap_store_trash_id(s);

		if (s->delete_trash && trash_id && trash_id != op->folder_id) {
			struct cache_msg m;
			struct op mv = { .kind = OP_MOVE, .folder_id = op->folder_id, .uid = op->uid,
					 .to_folder_id = trash_id };

			if (cache_msg_get(s->cache, op->folder_id, op->uid, &m) < 0) {
				err = STORE_ERR_NOTFOUND;
				break;
			}
			mv.name = (char *)imap_real_name(m.name);
			err = apply_move(s, &mv, &f, attempted, true);
			cache_msg_clear(&m);
			break;
		}
		err = apply_remove(s, op, &f);
		break;
	}
	case OP_FLAGS:
		err = apply_flags(s, op, &f);
		break;
	case OP_MOVE:
		err = apply_move(s, op, &f, attempted, false);
		break;
	case OP_APPEND:
		err = apply_append(s, op, &f, attempted);
		break;
	case OP_RMDIR:
		err = apply_rmdir(s, &f);
		break;
	case OP_RENAME:
		err = apply_rename(s, op, &f);
		break;
	default:
		err = STORE_ERR_IO;
		break;
	}
	cache_folder_clear(&f);
	if (err == STORE_OK)
		log_info("offline: %s recorded in the journal (%u pending)",
			 op->kind == OP_REMOVE ? "rm" : op->kind == OP_MOVE ? "mv" :
			 op->kind == OP_APPEND ? "new message" : op->kind == OP_FLAGS ? "flags" :
			 op->kind == OP_RMDIR ? "rmdir" : op->kind == OP_RENAME ? "rename" : "change",
			 journal_count(s->journal));
	return err;
}

/* ---- replay ---- */

static void queue_sync(struct istore *s, int64_t folder_id)
{
	pthread_mutex_lock(&s->eng.lock);
	imap_store_queue_sync(s, folder_id, false);
	pthread_mutex_unlock(&s->eng.lock);
}

/* Fault injection for the tests (as in pop3-store.h): with
 * MAILFS_TEST_CRASH_AT=journal_after_append the daemon kills itself once
 * an APPEND has been confirmed, before its local UID is replaced; with
 * journal_after_step, once any entry is done, before the journal forgets it. */
static void crash_point(const char *where)
{
	const char *at = getenv("MAILFS_TEST_CRASH_AT");

	if (at && !strcmp(at, where)) {
		log_info("MAILFS_TEST_CRASH_AT=%s: killing the daemon", where);
		raise(SIGKILL);
	}
}

/* Outcome of one entry: done (remove it, maybe given up with a warning),
 * or stop (the connection failed, or nothing may be dropped: keep it and
 * everything after). */
enum step { STEP_DONE, STEP_STOP };

static enum step failed(struct worker *w, enum store_error e)
{
	return e == STORE_ERR_IO && !imap_client_alive(w->client) ? STEP_STOP : STEP_DONE;
}

/* SELECT a folder by its server name; its UIDVALIDITY and UIDNEXT. */
static enum store_error select_name(struct worker *w, const char *server_name,
				    struct examine_ctx *e_r)
{
	char *q = imap_quote(server_name);
	int r;

	memset(e_r, 0, sizeof(*e_r));
	if (!q)
		return STORE_ERR_IO;
	w->selected = 0;
	w->selected_rw = false;
	r = imap_client_run(w->client, imap_sync_on_examine, e_r, "SELECT %s", q);
	free(q);
	/* Selected, but by name: -1 matches no folder id, yet tells
	 * imap_ops_unselect() there is something to leave. */
	if (r == IMAP_RESULT_OK)
		w->selected = -1;
	return imap_ops_outcome(w, r, "select");
}

/* The cache no longer matches the server for this folder (a change was
 * given up): the next sync lists every UID from 1, so what the server still
 * holds comes back and flags are read again.  Rows keep their names, and
 * UIDVALIDITY stays: it is the generation of the kernel's inodes. */
static void relist(struct istore *s, int64_t folder_id)
{
	struct cache_folder f;

	if (cache_folder_get(s->cache, folder_id, &f) == 0) {
		cache_folder_set_state(s->cache, folder_id, f.uidvalidity, 0, 0, f.last_sync);
		cache_folder_clear(&f);
	}
	queue_sync(s, folder_id);
}

/* A change given up: one warning each, and counted in .mailfs/status. */
static void dropped(struct istore *s)
{
	pthread_mutex_lock(&s->eng.lock);
	s->eng.dropped++;
	pthread_mutex_unlock(&s->eng.lock);
}

static const char *kind_name(const struct journal_entry *e)
{
	return e->kind == JOURNAL_REMOVE ? "rm" : e->kind == JOURNAL_FLAGS ? "flag change" : "mv";
}

/* The Message-ID of an entry's message: its own, else the cache row's. */
static char *entry_message_id(struct istore *s, const struct journal_entry *e)
{
	struct cache_msg m;
	char *mid = NULL;

	if (e->message_id)
		return strdup(e->message_id);
	if (e->kind == JOURNAL_MOVE ? cache_msg_get(s->cache, e->to_folder_id, e->to_uid, &m) == 0 :
	    cache_msg_get(s->cache, e->folder_id, e->uid, &m) == 0) {
		mid = m.message_id ? strdup(m.message_id) : NULL;
		cache_msg_clear(&m);
	}
	return mid;
}

/* The selected folder was rebuilt (UIDVALIDITY): the UID its message has
 * now, by Message-ID, when exactly one message has it.  0 when none (or
 * several), -1 when the connection failed. */
static int64_t retarget(struct worker *w, const struct journal_entry *e)
{
	struct meta_ctx mc = { .s = w->s };
	char *mid = entry_message_id(w->s, e), *qm;
	int64_t uid = 0;
	int r;

	if (!mid || !*mid || !(qm = imap_quote(mid))) {
		free(mid);
		return 0;
	}
	r = imap_client_run(w->client, imap_sync_on_meta, &mc, "UID SEARCH HEADER Message-ID %s", qm);
	free(qm);
	free(mid);
	if (r == IMAP_RESULT_OK && mc.nseen == 1)
		uid = mc.seen[0];
	free(mc.seen);
	if (r < 0 && !imap_client_alive(w->client))
		return -1;
	return uid;
}

/* Open the entry's folder; *uid_r is the UID its message has there.
 * After a UIDVALIDITY change that is the UID of the same Message-ID (SPEC:
 * such a change "drops that folder's cached state, never pending local
 * changes").  *ok false: the entry cannot apply any more (folder gone, or
 * rebuilt without the message), given up with a warning. */
static enum step open_folder(struct worker *w, const struct journal_entry *e, bool *ok,
			     struct examine_ctx *ex, uint32_t *uid_r)
{
	enum store_error err = select_name(w, e->server_name, ex);

	*ok = false;
	*uid_r = e->uid;
	if (err != STORE_OK) {
		if (failed(w, err) == STEP_STOP)
			return STEP_STOP;
		log_warn("journal: %s cannot be opened on the server (%s); a change made offline "
			 "there is dropped", e->server_name, imap_client_text(w->client));
		dropped(w->s);
		return STEP_DONE;
	}
	if (e->uidvalidity && ex->uidvalidity != e->uidvalidity) {
		int64_t uid = retarget(w, e);

		if (uid < 0)
			return STEP_STOP;
		if (uid == 0) {
			log_warn("journal: %s was rebuilt on the server (UIDVALIDITY) without "
				 "\"%s\" (no single message with its Message-ID); the %s made "
				 "offline is dropped", e->server_name, e->name ? e->name : "?",
				 kind_name(e));
			dropped(w->s);
			return STEP_DONE;
		}
		log_info("journal: %s was rebuilt on the server (UIDVALIDITY); UID %u is now "
			 "UID %u by its Message-ID", e->server_name, e->uid, (uint32_t)uid);
		*uid_r = (uint32_t)uid;
	}
	*ok = true;
	return STEP_DONE;
}

/* Remember local -> server UIDs of this session: a change queued before
 * the replay may still name the local one. */
static void remember(struct istore *s, int64_t folder_id, uint32_t local, uint32_t uid)
{
	pthread_mutex_lock(&s->eng.lock);
	s->renum[s->renum_next].folder_id = folder_id;
	s->renum[s->renum_next].local = local;
	s->renum[s->renum_next].uid = uid;
	s->renum_next = (s->renum_next + 1) % RENUM_MAX;
	pthread_mutex_unlock(&s->eng.lock);
}

bool imap_journal_translate(struct istore *s, int64_t folder_id, uint32_t *uid)
{
	bool found = false;

	pthread_mutex_lock(&s->eng.lock);
	for (unsigned i = 0; i < RENUM_MAX && !found; i++)
		if (s->renum[i].local == *uid && s->renum[i].folder_id == folder_id) {
			*uid = s->renum[i].uid;
			found = true;
		}
	pthread_mutex_unlock(&s->eng.lock);
	return found;
}

/* Forget a local message whose arrival did not reach the server. */
static void drop_local(struct istore *s, int64_t folder_id, uint32_t uid)
{
	struct cache_msg m;

	if (cache_msg_get(s->cache, folder_id, uid, &m) == 0) {
		cache_msg_delete(s->cache, folder_id, uid);
		imap_store_emit_entry(s, folder_id, m.name);
		cache_msg_clear(&m);
	}
}

/* A local UID became the server's: the cache row first, then the later
 * entries (a crash in between is seen by the next replay as "already
 * there"), and the kernel's inode follows. */
static void renumber(struct istore *s, int64_t folder_id, uint32_t local, uint32_t uid)
{
	struct cache_msg mine, there;

	if (local == uid)
		return;
	if (cache_msg_get(s->cache, folder_id, local, &mine) == 0) {
		/* A sync may have listed it already, under a name of its own. */
		if (cache_msg_get(s->cache, folder_id, uid, &there) == 0) {
			cache_msg_delete(s->cache, folder_id, uid);
			imap_store_emit_entry(s, folder_id, there.name);
			cache_msg_clear(&there);
		}
		if (cache_msg_move(s->cache, folder_id, local, folder_id, uid, NULL) == 0) {
			cache_msg_set_pinned(s->cache, folder_id, uid, false);
			if (s->ev.message_moved)
				s->ev.message_moved(s->ev.ctx, folder_id, local, folder_id, uid);
			remember(s, folder_id, local, uid);
		} else {
			drop_local(s, folder_id, local);
			queue_sync(s, folder_id);
		}
		/* Same name, another inode: the kernel must look it up again. */
		imap_store_emit_entry(s, folder_id, mine.name);
		cache_msg_clear(&mine);
	}
	journal_renumber(s->journal, folder_id, local, folder_id, uid);
}

/* The highest UID at or above from_uid of the selected folder with this
 * Message-ID: 0 when none, -1 when the connection failed. */
static int64_t find_by_message_id(struct worker *w, const char *mid, uint32_t from_uid)
{
	/* The sync's collector of UID SEARCH answers. */
	struct meta_ctx mc = { .s = w->s };
	uint32_t from = from_uid ? from_uid : 1, best = 0;
	char *qm;
	int r;

	if (!mid || !*mid)
		return 0;
	qm = imap_quote(mid);
	if (!qm)
		return 0;
	r = imap_client_run(w->client, imap_sync_on_meta, &mc,
			    "UID SEARCH UID %u:* HEADER Message-ID %s", from, qm);
	free(qm);
	/* "N:*" always matches the highest UID: keep those in range. */
	for (size_t i = 0; i < mc.nseen; i++)
		if (mc.seen[i] >= from && mc.seen[i] > best)
			best = mc.seen[i];
	free(mc.seen);
	if (r < 0 && !imap_client_alive(w->client))
		return -1;
	return best;
}

/* The Message-ID header's value in a message, or NULL. */
static char *message_id_of(const char *data, size_t len)
{
	const char *p = data, *end = data + len;

	while (p < end) {
		const char *eol = memchr(p, '\n', (size_t)(end - p));
		size_t n = (size_t)((eol ? eol : end) - p);

		if (n == 0 || (n == 1 && p[0] == '\r'))
			break; /* end of the header */
		if (n > 11 && !strncasecmp(p, "Message-ID:", 11)) {
			const char *v = p + 11, *e = p + n;

			while (v < e && (*v == ' ' || *v == '\t'))
				v++;
			while (e > v && (e[-1] == '\r' || e[-1] == ' '))
				e--;
			if (e > v && !memchr(v, '"', (size_t)(e - v)) && !memchr(v, '\\', (size_t)(e - v)))
				return strndup(v, (size_t)(e - v));
			return NULL;
		}
		p = eol ? eol + 1 : end;
	}
	return NULL;
}

static enum step replay_remove(struct worker *w, const struct journal_entry *e)
{
	struct examine_ctx ex;
	enum store_error err;
	uint32_t uid;
	bool ok;

	if (journal_uid_is_local(e->uid))
		return STEP_DONE; /* its arrival never reached the server */
	if (journal_uid_is_local(e->to_uid)) {
		/* Replaced by a message that never reached the server (refused,
		 * or not found after): rename(2) leaves the old one. */
		log_warn("journal: %s in %s was to be replaced by a message that never reached "
			 "the server; it is kept", e->name ? e->name : "a message", e->server_name);
		relist(w->s, e->folder_id);
		return STEP_DONE;
	}
	if (open_folder(w, e, &ok, &ex, &uid) == STEP_STOP)
		return STEP_STOP;
	if (!ok)
		return STEP_DONE;
	err = imap_ops_expunge_one(w, uid);
	if (err == STORE_OK)
		return STEP_DONE;
	if (failed(w, err) == STEP_STOP)
		return STEP_STOP;
	log_warn("journal: the server refused to expunge UID %u in %s (%s); it is shown again",
		 uid, e->server_name, imap_client_text(w->client));
	relist(w->s, e->folder_id);
	return STEP_DONE;
}

static enum step replay_flags(struct worker *w, const struct journal_entry *e)
{
	struct examine_ctx ex;
	enum store_error err;
	uint32_t uid;
	char *clean;
	bool ok;
	int r;

	if (journal_uid_is_local(e->uid))
		return STEP_DONE;
	if (open_folder(w, e, &ok, &ex, &uid) == STEP_STOP)
		return STEP_STOP;
	if (!ok)
		return STEP_DONE;
	clean = imap_ops_storable_flags(e->flags);
	if (!clean)
		return STEP_STOP;
	r = imap_client_run(w->client, NULL, NULL, "UID STORE %u FLAGS (%s)", uid, clean);
	free(clean);
	err = imap_ops_outcome(w, r, "store flags");
	if (err == STORE_OK)
		return STEP_DONE;
	if (failed(w, err) == STEP_STOP)
		return STEP_STOP;
	log_warn("journal: the server refused flags for UID %u in %s (%s)", uid, e->server_name,
		 imap_client_text(w->client));
	relist(w->s, e->folder_id);
	return STEP_DONE;
}

/* A move given up: the message goes back to its folder in the cache
 * (it is still there on the server), or, if that folder is gone, away. */
static void move_back(struct istore *s, const struct journal_entry *e)
{
	struct cache_folder f;
	struct cache_msg now;

	if (cache_folder_get(s->cache, e->folder_id, &f) == 0) {
		cache_folder_clear(&f);
		/* The name the row has now: a rename() onto a message gave the
		 * one moved under a temporary name (e->name) its real one. */
		if (cache_msg_get(s->cache, e->to_folder_id, e->to_uid, &now) < 0)
			now.name = NULL;
		if (cache_msg_move(s->cache, e->to_folder_id, e->to_uid, e->folder_id, e->uid,
				   NULL) == 0) {
			const char *name = now.name ? now.name : e->name;

			if (s->ev.message_moved)
				s->ev.message_moved(s->ev.ctx, e->to_folder_id, e->to_uid, e->folder_id,
						    e->uid);
			imap_store_emit_entry(s, e->folder_id, name);
			imap_store_emit_entry(s, e->to_folder_id, name);
			if (now.name)
				cache_msg_clear(&now);
			return;
		}
		if (now.name)
			cache_msg_clear(&now);
		relist(s, e->folder_id);
	}
	drop_local(s, e->to_folder_id, e->to_uid);
}

/* After a move whose new UID is not known: look for it in the destination
 * by Message-ID (UIDs from `from` on), else let a sync list it. */
static enum step settle_moved(struct worker *w, const struct journal_entry *e, const char *mid,
			      uint32_t from)
{
	struct istore *s = w->s;
	struct examine_ctx ex;
	int64_t found = 0;

	if (mid && select_name(w, e->to_server_name, &ex) == STORE_OK)
		found = find_by_message_id(w, mid, from);
	if (found < 0 || (!imap_client_alive(w->client)))
		return STEP_STOP;
	if (found > 0) {
		renumber(s, e->to_folder_id, e->to_uid, (uint32_t)found);
	} else {
		drop_local(s, e->to_folder_id, e->to_uid);
		queue_sync(s, e->to_folder_id);
	}
	return STEP_DONE;
}

/* UIDNEXT of a folder (STATUS), 0 when unknown. */
static uint32_t uidnext_of(struct worker *w, const char *server_name)
{
	struct imap_folder_status st = { 0 };
	char *q = imap_quote(server_name);

	if (q) {
		imap_ops_status(w, q, "UIDNEXT", &st);
		free(q);
	}
	return st.uidnext;
}

static enum step replay_move(struct worker *w, const struct journal_entry *e)
{
	struct istore *s = w->s;
	struct moved_ctx mc = { "" };
	struct cache_folder t;
	struct cache_msg m;
	struct examine_ctx ex;
	enum store_error err;
	uint32_t dst_validity = 0, newuid, hint = e->hint, uid;
	char *mid = NULL;
	bool ok;
	enum step st;

	if (!journal_uid_is_local(e->to_uid))
		return STEP_DONE; /* renumbered: it reached the server before a crash */
	if (journal_uid_is_local(e->uid)) {
		/* Its arrival in the source never reached the server. */
		drop_local(s, e->to_folder_id, e->to_uid);
		return STEP_DONE;
	}
	if (e->message_id) {
		mid = strdup(e->message_id);
	} else if (cache_msg_get(s->cache, e->to_folder_id, e->to_uid, &m) == 0) {
		mid = m.message_id ? strdup(m.message_id) : NULL;
		cache_msg_clear(&m);
	}
	bool atomic = imap_client_caps(w->client) & IMAP_CAP_MOVE;
	/* A cut online MOVE may have happened: with no UIDNEXT of before,
	 * look for it among all UIDs after the send. */
	uint32_t settle_from = e->attempted && !e->hint ? 1 : 0;
	if (!atomic && e->attempted && e->hint && mid) {
		/* A COPY may have landed before a cut: find it, then only the
		 * expunge of the source is left. */
		if (select_name(w, e->to_server_name, &ex) == STORE_OK) {
			int64_t found = find_by_message_id(w, mid, hint);

			if (found < 0) {
				free(mid);
				return STEP_STOP;
			}
			if (found > 0) {
				if (open_folder(w, e, &ok, &ex, &uid) == STEP_STOP) {
					free(mid);
					return STEP_STOP;
				}
				err = ok ? imap_ops_expunge_one(w, uid) : STORE_OK;
				if (err != STORE_OK && failed(w, err) == STEP_STOP) {
					free(mid);
					return STEP_STOP;
				}
				/* The source kept its copy: show it there again. */
				if (err != STORE_OK)
					relist(s, e->folder_id);
				renumber(s, e->to_folder_id, e->to_uid, (uint32_t)found);
				free(mid);
				return STEP_DONE;
			}
		}
		if (!imap_client_alive(w->client)) {
			free(mid);
			return STEP_STOP;
		}
	}
	if (!atomic || !hint)
		hint = uidnext_of(w, e->to_server_name);
	if (!imap_client_alive(w->client)) {
		free(mid);
		return STEP_STOP;
	}
	if (open_folder(w, e, &ok, &ex, &uid) == STEP_STOP) {
		free(mid);
		return STEP_STOP;
	}
	if (!ok) {
		move_back(s, e);
		free(mid);
		return STEP_DONE;
	}
	journal_set_attempted(s->journal, e->seq, hint);
	err = imap_ops_move_uid(w, uid, e->to_server_name, &mc);
	if (err != STORE_OK) {
		if (failed(w, err) == STEP_STOP) {
			free(mid);
			return STEP_STOP;
		}
		log_warn("journal: the server refused to move UID %u from %s to %s (%s); it stays "
			 "in %s", uid, e->server_name, e->to_server_name,
			 imap_client_text(w->client), e->server_name);
		move_back(s, e);
		free(mid);
		return STEP_DONE;
	}
	imap_store_view_changed(s);
	if (cache_folder_get(s->cache, e->to_folder_id, &t) == 0) {
		dst_validity = t.uidvalidity;
		cache_folder_clear(&t);
	}
	newuid = imap_ops_copyuid_dst(mc.args, dst_validity);
	if (newuid) {
		renumber(s, e->to_folder_id, e->to_uid, newuid);
		st = STEP_DONE;
	} else {
		/* No COPYUID, or the source was gone (moved before a crash). */
		st = settle_moved(w, e, mid, settle_from ? settle_from : hint);
	}
	free(mid);
	return st;
}

/* Keep a refused message where the user can find it.  True once it is on
 * disk (file and directory synced): only then may the entry go. */
static bool keep_unsent(struct istore *s, const struct journal_entry *e)
{
	char *dir = NULL, *path = NULL;
	bool ok = false;
	int fd, dfd;

	if (!s->cache_dir || asprintf(&dir, "%s/unsent", s->cache_dir) < 0)
		return false;
	if (mkdir(dir, 0700) < 0 && errno != EEXIST)
		goto out;
	/* The name as given, cut to fit a file name (its end is ".eml"). */
	const char *nm = e->name && !strchr(e->name, '/') ? e->name : "message.eml";
	size_t nl = strlen(nm);
	if (asprintf(&path, "%s/%lld-%s", dir, (long long)e->seq,
		     nl > 200 ? nm + nl - 200 : nm) < 0) {
		path = NULL;
		goto out;
	}
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		goto out;
	size_t off = 0;
	while (off < e->len) {
		ssize_t n = write(fd, (const char *)e->data + off, e->len - off);

		if (n <= 0)
			break;
		off += (size_t)n;
	}
	ok = off == e->len && fsync(fd) == 0;
	ok = close(fd) == 0 && ok;
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	ok = ok && dfd >= 0 && fsync(dfd) == 0;
	if (dfd >= 0)
		close(dfd);
out:
	if (ok)
		log_warn("journal: the server refused a message written offline to %s; it is kept "
			 "in %s", e->server_name, path);
	else
		log_warn("journal: the server refused a message written offline to %s, and it "
			 "cannot be saved in %s (%s); it stays in the journal", e->server_name, dir,
			 strerror(errno));
	free(path);
	free(dir);
	return ok;
}

static enum step replay_append(struct worker *w, const struct journal_entry *e)
{
	struct istore *s = w->s;
	struct examine_ctx ex;
	char *prefix, *mid;
	uint32_t uid = 0;
	int64_t found = 0;
	enum store_error err;
	int tag, r;

	if (!journal_uid_is_local(e->uid))
		return STEP_DONE; /* renumbered: it reached the server before a crash */
	err = select_name(w, e->server_name, &ex);
	if (err != STORE_OK && failed(w, err) == STEP_STOP)
		return STEP_STOP;
	mid = message_id_of(e->data, e->len);
	if (err == STORE_OK && e->attempted && e->hint) {
		/* Sent before a crash or a cut?  Then it is there already:
		 * look among the UIDs given since (a message already in the
		 * folder with the same Message-ID is not this one).  Without
		 * the UIDNEXT of before (a cut online), send it again: a
		 * duplicate at worst, never a loss. */
		found = find_by_message_id(w, mid, e->hint);
		if (found < 0) {
			free(mid);
			return STEP_STOP;
		}
	}
	if (found > 0) {
		uid = (uint32_t)found;
	} else {
		prefix = imap_ops_append_prefix(e->server_name, e->mtime);
		if (!prefix) {
			free(mid);
			return STEP_STOP;
		}
		journal_set_attempted(s->journal, e->seq, err == STORE_OK ? ex.uidnext : 0);
		tag = imap_client_send_literal(w->client, prefix, e->data, e->len, NULL, NULL, NULL);
		free(prefix);
		r = tag < 0 ? tag : imap_client_wait(w->client, tag, NULL, NULL);
		err = imap_ops_outcome(w, r, "append");
		if (err != STORE_OK) {
			free(mid);
			if (failed(w, err) == STEP_STOP)
				return STEP_STOP;
			if (!keep_unsent(s, e))
				return STEP_STOP;
			drop_local(s, e->folder_id, e->uid);
			return STEP_DONE;
		}
		unsigned long vv, u;
		char tail;

		crash_point("journal_after_append");
		if (!strcasecmp(imap_client_code(w->client), "APPENDUID") &&
		    sscanf(imap_client_code_args(w->client), "%lu %lu%c", &vv, &u, &tail) == 2 &&
		    u > 0 && u <= UINT32_MAX && (!ex.uidvalidity || vv == ex.uidvalidity))
			uid = (uint32_t)u;
		if (!uid && ex.uidvalidity) {
			found = find_by_message_id(w, mid, ex.uidnext);
			if (found < 0) {
				free(mid);
				return STEP_STOP;
			}
			uid = (uint32_t)found;
		}
	}
	free(mid);
	imap_store_view_changed(s);
	if (uid) {
		renumber(s, e->folder_id, e->uid, uid);
	} else {
		drop_local(s, e->folder_id, e->uid);
		queue_sync(s, e->folder_id);
	}
	return STEP_DONE;
}

static enum step replay_folder(struct worker *w, const struct journal_entry *e)
{
	char *q = imap_quote(e->server_name), *qn = NULL;
	const char *code;
	enum store_error err;
	int r = -EINVAL;

	imap_ops_unselect(w);
	if (e->kind == JOURNAL_RENAME)
		qn = imap_quote(e->to_server_name);
	if (q && e->kind == JOURNAL_RMDIR && !(e->flags && !strcmp(e->flags, "\\Noselect"))) {
		/* Empty in the cache is not empty on the server (never
		 * listed, or mail arrived): DELETE would take that mail. */
		struct imap_folder_status st;
		int rc = imap_ops_status(w, q, "MESSAGES", &st);

		if (rc < 0 && !imap_client_alive(w->client)) {
			free(q);
			return STEP_STOP;
		}
		if (rc != IMAP_RESULT_OK && !strcasecmp(imap_client_code(w->client), "NONEXISTENT")) {
			free(q);
			imap_store_view_changed(w->s);
			return STEP_DONE; /* gone already */
		}
		if (rc != IMAP_RESULT_OK || !st.has_messages || st.messages > 0) {
			/* Not empty, or the server would not say: keep it. */
			log_warn("journal: %s is not known to be empty on the server (%llu "
				 "messages); it is kept", e->server_name,
				 (unsigned long long)st.messages);
			free(q);
			imap_store_view_changed(w->s);
			return STEP_DONE; /* the next listing shows it again */
		}
	}
	if (q && e->kind == JOURNAL_MKDIR)
		r = imap_client_run(w->client, NULL, NULL, "CREATE %s", q);
	else if (q && e->kind == JOURNAL_RMDIR)
		r = imap_client_run(w->client, NULL, NULL, "DELETE %s", q);
	else if (q && qn)
		r = imap_client_run(w->client, NULL, NULL, "RENAME %s %s", q, qn);
	err = imap_ops_outcome(w, r, "folder change");
	code = imap_client_code(w->client);
	if (err == STORE_OK) {
		if (e->kind == JOURNAL_MKDIR)
			imap_client_run(w->client, NULL, NULL, "SUBSCRIBE %s", q);
		else if (e->kind == JOURNAL_RENAME)
			imap_client_run(w->client, NULL, NULL, "SUBSCRIBE %s", qn);
	} else if (failed(w, err) == STEP_DONE &&
		   !(e->kind == JOURNAL_MKDIR && !strcasecmp(code, "ALREADYEXISTS")) &&
		   !(e->kind == JOURNAL_RMDIR && !strcasecmp(code, "NONEXISTENT"))) {
		log_warn("journal: the server refused to %s %s: %s (the next listing shows "
			 "its folders as they are)",
			 e->kind == JOURNAL_MKDIR ? "create" : e->kind == JOURNAL_RMDIR ? "delete" :
			 "rename", e->server_name, imap_client_text(w->client));
	}
	free(q);
	free(qn);
	imap_store_view_changed(w->s);
	return err == STORE_OK ? STEP_DONE : failed(w, err);
}

/* Local rows that no entry names any more (a replay cut at the wrong
 * instant): nothing will ever give them a server UID. */
static void sweep_local_rows(struct istore *s)
{
	struct cache_folder *fl;
	size_t n;

	if (cache_folder_list(s->cache, &fl, &n) < 0)
		return;
	for (size_t i = 0; i < n; i++) {
		uint32_t *uids = NULL;
		size_t nu = 0;
		bool any = false;

		if (cache_msg_uids(s->cache, fl[i].id, &uids, &nu) == 0)
			for (size_t k = nu; k > 0 && journal_uid_is_local(uids[k - 1]); k--) {
				drop_local(s, fl[i].id, uids[k - 1]);
				any = true;
			}
		free(uids);
		if (any)
			queue_sync(s, fl[i].id);
	}
	cache_folder_list_free(fl, n);
}

int imap_journal_replay(struct worker *w)
{
	struct istore *s = w->s;
	struct journal_entry e;
	unsigned done = 0;
	int ret = 0;

	if (!s->journal || journal_count(s->journal) == 0)
		return 0;
	pthread_mutex_lock(&s->replay_lock);
	while ((ret = journal_first(s->journal, &e)) == 0) {
		enum step st;

		if (!w->client || !imap_client_alive(w->client)) {
			journal_entry_clear(&e);
			ret = -EIO;
			break;
		}
		switch (e.kind) {
		case JOURNAL_REMOVE:
			st = replay_remove(w, &e);
			break;
		case JOURNAL_FLAGS:
			st = replay_flags(w, &e);
			break;
		case JOURNAL_MOVE:
			st = replay_move(w, &e);
			break;
		case JOURNAL_APPEND:
			st = replay_append(w, &e);
			break;
		default:
			st = replay_folder(w, &e);
			break;
		}
		if (st == STEP_STOP) {
			journal_entry_clear(&e);
			ret = -EIO;
			break;
		}
		crash_point("journal_after_step");
		journal_done(s->journal, e.seq);
		journal_entry_clear(&e);
		done++;
	}
	/* Empty, or unreadable: then nothing may overtake what it holds. */
	ret = ret == -ENOENT ? 0 : -EIO;
	if (done && ret == 0 && journal_count(s->journal) == 0)
		sweep_local_rows(s);
	pthread_mutex_unlock(&s->replay_lock);
	if (done)
		log_info("journal: %u change%s made offline replayed%s", done, done == 1 ? "" : "s",
			 ret < 0 ? "; the rest waits for the connection" : "");
	return ret;
}
