/* journal.c: the offline change log (see journal.h). */
#include "journal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"

#define JOURNAL_FILE "journal.sqlite"

struct journal {
	pthread_mutex_t lock; /* held only inside journal_* calls */
	sqlite3 *db;          /* lock */
	char *path;           /* constant */
};

static const char journal_schema[] =
	"CREATE TABLE IF NOT EXISTS journal ("
	" seq INTEGER PRIMARY KEY AUTOINCREMENT,"
	" kind INTEGER NOT NULL,"
	" folder_id INTEGER NOT NULL DEFAULT 0,"
	" uid INTEGER NOT NULL DEFAULT 0,"
	" uidvalidity INTEGER NOT NULL DEFAULT 0,"
	" to_folder_id INTEGER NOT NULL DEFAULT 0,"
	" to_uid INTEGER NOT NULL DEFAULT 0,"
	" server_name TEXT,"
	" to_server_name TEXT,"
	" name TEXT,"
	" flags TEXT,"
	" mtime INTEGER NOT NULL DEFAULT 0,"
	" data BLOB,"
	" attempted INTEGER NOT NULL DEFAULT 0,"
	" hint INTEGER NOT NULL DEFAULT 0,"
	" message_id TEXT);"
	"CREATE TABLE IF NOT EXISTS journal_meta (key TEXT PRIMARY KEY, value INTEGER)";

static int journal_failed(struct journal *j, int rc)
{
	log_error("journal %s: %s", j->path, sqlite3_errmsg(j->db));
	return (rc & 0xff) == SQLITE_NOMEM ? -ENOMEM : (rc & 0xff) == SQLITE_FULL ? -ENOSPC : -EIO;
}

static int journal_exec(struct journal *j, const char *sql)
{
	int rc = sqlite3_exec(j->db, sql, NULL, NULL, NULL);

	return rc == SQLITE_OK ? 0 : journal_failed(j, rc);
}

/* A REMOVE that an earlier version journaled after a rename() onto its
 * message names no replacement (to_uid 0): give it the local UID of the
 * pending APPEND or MOVE it follows (".mailfs-N-NAME", see
 * journal_find_replacement), so that its replay waits for that one too. */
static int journal_link_replacements(struct journal *j)
{
	static const char sql[] =
		/* kinds as stored: 1 REMOVE, 2 MOVE, 3 APPEND */
		"UPDATE journal SET to_uid = coalesce(("
		" SELECT CASE a.kind WHEN 3 THEN a.uid ELSE a.to_uid END FROM journal a"
		" WHERE a.seq < journal.seq"
		" AND ((a.kind = 3 AND a.folder_id = journal.folder_id)"
		"  OR (a.kind = 2 AND a.to_folder_id = journal.folder_id))"
		" AND a.name LIKE '.mailfs-%' AND length(a.name) > length(journal.name) + 9"
		" AND substr(a.name, length(a.name) - length(journal.name)) = '-' || journal.name"
		" ORDER BY a.seq DESC LIMIT 1), 0)"
		" WHERE kind = 1 AND to_uid = 0 AND name IS NOT NULL;"
		"UPDATE journal SET to_folder_id = folder_id"
		" WHERE kind = 1 AND to_folder_id = 0 AND to_uid >= 4026531840"; /* JOURNAL_LOCAL_UID */

	return journal_exec(j, sql);
}

int journal_open(struct journal **j_r, const char *dir)
{
	struct journal *j = calloc(1, sizeof(*j));
	int fd, rc, ret;

	*j_r = NULL;
	if (!j || asprintf(&j->path, "%s/" JOURNAL_FILE, dir) < 0) {
		free(j);
		return -ENOMEM;
	}
	pthread_mutex_init(&j->lock, NULL);
	/* SQLite would create it 0644; its -wal and -shm take this mode. */
	fd = open(j->path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0 || fchmod(fd, 0600) < 0) {
		ret = -errno;
		if (fd >= 0)
			close(fd);
		goto fail;
	}
	close(fd);
	rc = sqlite3_open_v2(j->path, &j->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_FULLMUTEX, NULL);
	if (rc != SQLITE_OK) {
		ret = -EIO;
		log_error("journal %s: %s", j->path, j->db ? sqlite3_errmsg(j->db) : sqlite3_errstr(rc));
		goto fail;
	}
	sqlite3_busy_timeout(j->db, 5000);
	/* Every commit reaches the disk before journal_add() returns. */
	if ((ret = journal_exec(j, "PRAGMA journal_mode = WAL")) < 0 ||
	    (ret = journal_exec(j, "PRAGMA synchronous = FULL")) < 0 ||
	    (ret = journal_exec(j, journal_schema)) < 0)
		goto fail;
	/* Columns added after the first development builds: an older file
	 * gets them (the statement fails harmlessly when they exist). */
	sqlite3_exec(j->db, "ALTER TABLE journal ADD COLUMN hint INTEGER NOT NULL DEFAULT 0",
		     NULL, NULL, NULL);
	sqlite3_exec(j->db, "ALTER TABLE journal ADD COLUMN message_id TEXT", NULL, NULL, NULL);
	if ((ret = journal_link_replacements(j)) < 0)
		goto fail;
	*j_r = j;
	return 0;
fail:
	journal_close(&j);
	return ret;
}

void journal_close(struct journal **jp)
{
	struct journal *j = *jp;

	if (!j)
		return;
	if (j->db)
		sqlite3_close(j->db);
	pthread_mutex_destroy(&j->lock);
	free(j->path);
	free(j);
	*jp = NULL;
}

static void bind_text(sqlite3_stmt *st, int i, const char *s)
{
	if (s)
		sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT);
	else
		sqlite3_bind_null(st, i);
}

/* Prepare, let bind() fill it, step once: the row count changed, or -errno. */
static int journal_run(struct journal *j, const char *sql, sqlite3_stmt **st_r)
{
	int rc = sqlite3_prepare_v2(j->db, sql, -1, st_r, NULL);

	return rc == SQLITE_OK ? 0 : journal_failed(j, rc);
}

static int journal_step_done(struct journal *j, sqlite3_stmt *st)
{
	int rc = sqlite3_step(st);

	sqlite3_finalize(st);
	if (rc != SQLITE_DONE)
		return journal_failed(j, rc);
	return sqlite3_changes(j->db);
}

static int journal_insert(struct journal *j, struct journal_entry *e)
{
	sqlite3_stmt *st;
	int ret;

	ret = journal_run(j, "INSERT INTO journal (kind, folder_id, uid, uidvalidity, to_folder_id,"
			     " to_uid, server_name, to_server_name, name, flags, mtime, data, attempted,"
			     " hint, message_id)"
			     " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
			  &st);
	if (ret < 0)
		return ret;
	sqlite3_bind_int(st, 1, (int)e->kind);
	sqlite3_bind_int64(st, 2, e->folder_id);
	sqlite3_bind_int64(st, 3, e->uid);
	sqlite3_bind_int64(st, 4, e->uidvalidity);
	sqlite3_bind_int64(st, 5, e->to_folder_id);
	sqlite3_bind_int64(st, 6, e->to_uid);
	bind_text(st, 7, e->server_name);
	bind_text(st, 8, e->to_server_name);
	bind_text(st, 9, e->name);
	bind_text(st, 10, e->flags);
	sqlite3_bind_int64(st, 11, e->mtime);
	if (e->data)
		sqlite3_bind_blob64(st, 12, e->data, e->len, SQLITE_STATIC);
	else
		sqlite3_bind_null(st, 12);
	sqlite3_bind_int(st, 13, e->attempted);
	sqlite3_bind_int64(st, 14, e->hint);
	bind_text(st, 15, e->message_id);
	ret = journal_step_done(j, st);
	if (ret >= 0) {
		e->seq = sqlite3_last_insert_rowid(j->db);
		ret = 0;
	}
	return ret;
}

int journal_add(struct journal *j, struct journal_entry *e)
{
	int ret;

	pthread_mutex_lock(&j->lock);
	ret = journal_insert(j, e);
	pthread_mutex_unlock(&j->lock);
	return ret;
}

/* The counter of local UIDs: never goes back, so a local UID (and the
 * inode the kernel knows it by) is never given to two messages. */
static int64_t journal_counter(struct journal *j)
{
	sqlite3_stmt *st;
	int64_t v = 0;

	if (journal_run(j, "SELECT value FROM journal_meta WHERE key = 'next_local'", &st) == 0) {
		if (sqlite3_step(st) == SQLITE_ROW)
			v = sqlite3_column_int64(st, 0);
		sqlite3_finalize(st);
	}
	return v;
}

int journal_add_local(struct journal *j, struct journal_entry *e, uint32_t above)
{
	sqlite3_stmt *st;
	int64_t next;
	int ret;

	pthread_mutex_lock(&j->lock);
	ret = journal_exec(j, "BEGIN IMMEDIATE");
	if (ret < 0)
		goto out;
	next = journal_counter(j);
	if (next < (int64_t)above + 1)
		next = (int64_t)above + 1;
	if (next < JOURNAL_LOCAL_UID)
		next = JOURNAL_LOCAL_UID;
	if (next > UINT32_MAX) {
		ret = -EOVERFLOW;
		goto rollback;
	}
	if (e->kind == JOURNAL_MOVE)
		e->to_uid = (uint32_t)next;
	else
		e->uid = (uint32_t)next;
	ret = journal_run(j, "INSERT INTO journal_meta (key, value) VALUES ('next_local', ?1)"
			     " ON CONFLICT (key) DO UPDATE SET value = excluded.value", &st);
	if (ret < 0)
		goto rollback;
	sqlite3_bind_int64(st, 1, next + 1);
	ret = journal_step_done(j, st);
	if (ret < 0)
		goto rollback;
	ret = journal_insert(j, e);
	if (ret < 0)
		goto rollback;
	ret = journal_exec(j, "COMMIT");
	if (ret == 0)
		goto out;
rollback:
	sqlite3_exec(j->db, "ROLLBACK", NULL, NULL, NULL);
out:
	pthread_mutex_unlock(&j->lock);
	return ret;
}

static char *col_str(sqlite3_stmt *st, int i)
{
	const unsigned char *s = sqlite3_column_text(st, i);

	return s ? strdup((const char *)s) : NULL;
}

int journal_first(struct journal *j, struct journal_entry *e)
{
	sqlite3_stmt *st;
	int ret, rc;

	memset(e, 0, sizeof(*e));
	pthread_mutex_lock(&j->lock);
	ret = journal_run(j, "SELECT seq, kind, folder_id, uid, uidvalidity, to_folder_id, to_uid,"
			     " server_name, to_server_name, name, flags, mtime, data, attempted, hint,"
			     " message_id FROM journal ORDER BY seq LIMIT 1", &st);
	if (ret == 0) {
		rc = sqlite3_step(st);
		if (rc == SQLITE_ROW) {
			e->seq = sqlite3_column_int64(st, 0);
			e->kind = (enum journal_kind)sqlite3_column_int(st, 1);
			e->folder_id = sqlite3_column_int64(st, 2);
			e->uid = (uint32_t)sqlite3_column_int64(st, 3);
			e->uidvalidity = (uint32_t)sqlite3_column_int64(st, 4);
			e->to_folder_id = sqlite3_column_int64(st, 5);
			e->to_uid = (uint32_t)sqlite3_column_int64(st, 6);
			e->server_name = col_str(st, 7);
			e->to_server_name = col_str(st, 8);
			e->name = col_str(st, 9);
			e->flags = col_str(st, 10);
			e->mtime = sqlite3_column_int64(st, 11);
			if (sqlite3_column_type(st, 12) == SQLITE_BLOB) {
				int n = sqlite3_column_bytes(st, 12);
				const void *p = sqlite3_column_blob(st, 12);

				e->data = malloc(n > 0 ? (size_t)n : 1);
				if (e->data && n > 0)
					memcpy(e->data, p, (size_t)n);
				e->len = (size_t)n;
				if (!e->data)
					ret = -ENOMEM;
			}
			e->attempted = sqlite3_column_int(st, 13) != 0;
			e->hint = (uint32_t)sqlite3_column_int64(st, 14);
			e->message_id = col_str(st, 15);
		} else if (rc == SQLITE_DONE) {
			ret = -ENOENT;
		} else {
			ret = journal_failed(j, rc);
		}
		sqlite3_finalize(st);
	}
	pthread_mutex_unlock(&j->lock);
	if (ret < 0)
		journal_entry_clear(e);
	return ret;
}

/* Run an UPDATE/DELETE with up to five integer parameters; lock held. */
static int journal_update_locked(struct journal *j, const char *sql, int64_t a, int64_t b,
				 int64_t c, int64_t d, int64_t e)
{
	sqlite3_stmt *st;
	int ret = journal_run(j, sql, &st);

	if (ret == 0) {
		int n = sqlite3_bind_parameter_count(st);
		int64_t v[5] = { a, b, c, d, e };

		for (int i = 0; i < n && i < 5; i++)
			sqlite3_bind_int64(st, i + 1, v[i]);
		ret = journal_step_done(j, st);
	}
	return ret < 0 ? ret : 0;
}

static int journal_update(struct journal *j, const char *sql, int64_t a, int64_t b, int64_t c,
			  int64_t d, int64_t e)
{
	int ret;

	pthread_mutex_lock(&j->lock);
	ret = journal_update_locked(j, sql, a, b, c, d, e);
	pthread_mutex_unlock(&j->lock);
	return ret;
}

int journal_done(struct journal *j, int64_t seq)
{
	return journal_update(j, "DELETE FROM journal WHERE seq = ?1", seq, 0, 0, 0, 0);
}

int journal_set_attempted(struct journal *j, int64_t seq, uint32_t hint)
{
	return journal_update(j, "UPDATE journal SET attempted = 1, hint = ?2 WHERE seq = ?1", seq,
			      hint, 0, 0, 0);
}

int journal_renumber(struct journal *j, int64_t folder_id, uint32_t uid, int64_t to_folder_id,
		     uint32_t to_uid)
{
	int ret;

	/* Both ends, in one transaction: a later move names the message as
	 * its source, and a pending move's destination may be renumbered. */
	pthread_mutex_lock(&j->lock);
	ret = journal_exec(j, "BEGIN IMMEDIATE");
	if (ret == 0)
		ret = journal_update_locked(j, "UPDATE journal SET folder_id = ?3, uid = ?4"
					       " WHERE folder_id = ?1 AND uid = ?2 AND kind <> ?5",
					    folder_id, uid, to_folder_id, to_uid, JOURNAL_MKDIR);
	if (ret == 0)
		ret = journal_update_locked(j, "UPDATE journal SET to_folder_id = ?3, to_uid = ?4"
					       " WHERE to_folder_id = ?1 AND to_uid = ?2",
					    folder_id, uid, to_folder_id, to_uid, 0);
	if (ret == 0)
		ret = journal_exec(j, "COMMIT");
	if (ret < 0)
		sqlite3_exec(j->db, "ROLLBACK", NULL, NULL, NULL);
	pthread_mutex_unlock(&j->lock);
	return ret;
}

int journal_find_replacement(struct journal *j, int64_t folder_id, const char *name,
			     uint32_t *local_uid_r)
{
	sqlite3_stmt *st;
	int ret, rc;

	pthread_mutex_lock(&j->lock);
	ret = journal_run(j, "SELECT CASE kind WHEN ?3 THEN uid ELSE to_uid END FROM journal"
			     " WHERE ((kind = ?3 AND folder_id = ?1) OR (kind = ?4 AND to_folder_id = ?1))"
			     " AND name LIKE '.mailfs-%' AND length(name) > length(?2) + 9"
			     " AND substr(name, length(name) - length(?2)) = '-' || ?2"
			     " ORDER BY seq DESC LIMIT 1", &st);
	if (ret == 0) {
		sqlite3_bind_int64(st, 1, folder_id);
		bind_text(st, 2, name);
		sqlite3_bind_int(st, 3, JOURNAL_APPEND);
		sqlite3_bind_int(st, 4, JOURNAL_MOVE);
		rc = sqlite3_step(st);
		if (rc == SQLITE_ROW)
			*local_uid_r = (uint32_t)sqlite3_column_int64(st, 0);
		else
			ret = rc == SQLITE_DONE ? -ENOENT : journal_failed(j, rc);
		sqlite3_finalize(st);
	}
	pthread_mutex_unlock(&j->lock);
	return ret;
}

unsigned journal_count(struct journal *j)
{
	sqlite3_stmt *st;
	unsigned n = 0;

	pthread_mutex_lock(&j->lock);
	if (journal_run(j, "SELECT COUNT(*) FROM journal", &st) == 0) {
		if (sqlite3_step(st) == SQLITE_ROW)
			n = (unsigned)sqlite3_column_int64(st, 0);
		sqlite3_finalize(st);
	}
	pthread_mutex_unlock(&j->lock);
	return n;
}

void journal_entry_clear(struct journal_entry *e)
{
	free(e->server_name);
	free(e->to_server_name);
	free(e->name);
	free(e->flags);
	free(e->data);
	free(e->message_id);
	memset(e, 0, sizeof(*e));
}
