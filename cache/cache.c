/* cache.c: the local store of one account, on SQLite and plain files.
 *
 * The index is one SQLite connection (WAL, synchronous=NORMAL) shared by all
 * threads, every statement prepared once at open and reused: a file manager
 * or `grep -r` over a large folder calls cache_msg_lookup() and
 * cache_body_open() thousands of times a second, and preparing SQL costs
 * more than running it.  A pthread mutex around each public call makes a
 * call atomic (choosing a free name and inserting it, storing a body and
 * evicting others) on top of SQLite's own serialization.
 *
 * Bodies are files bodies/F/UID.  The index is the truth about them: a body
 * is served only when its row says cached, so a file left over by a crash
 * (an orphan, a temp file) is never read, and cache_open() sweeps such
 * files away.  The byte total of cached bodies lives in memory, computed at
 * open and kept in step with every change of a cached row.
 *
 * Recency is a per-row "atime": milliseconds since the epoch, made strictly
 * increasing within the process so that the eviction order is exact even
 * for opens within the same millisecond.  Opens record their time in a
 * small in-memory list, written in one transaction when the list is full,
 * before an eviction and at close, so a hot open costs a SELECT and no
 * write.
 *
 * Schema version 1:
 *   meta(key, value)       schema_version; internal, apart from kv
 *   kv(key, value)         cache_kv_*
 *   folders(id AUTOINCREMENT, parent_id, name, server_name UNIQUE, flags,
 *           uidvalidity, uidnext, highestmodseq, last_sync,
 *           UNIQUE(parent_id, name))
 *   messages(folder_id, uid, name, size, mtime, flags, message_id, modseq,
 *            cached, pinned, atime, PRIMARY KEY(folder_id, uid),
 *            UNIQUE(folder_id, name)) WITHOUT ROWID
 * Folder ids are never reused (AUTOINCREMENT), so a deleted folder's id
 * cannot reappear as another folder's inode numbers or body directory.
 * Deleting a folder's messages and bodies is done here, not by foreign
 * keys, because the files have to go with the rows. */
#include "cache.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <sqlite3.h>

#include "log.h"

#define CACHE_SCHEMA_VERSION 1
#define CACHE_INDEX_NAME "index.sqlite"
#define CACHE_BODIES_NAME "bodies"
#define CACHE_QUARANTINE_NAME "quarantine"
#define CACHE_TMP_PREFIX ".tmp-"
#define CACHE_NAME_MAX 255
/* Pending atime updates kept in memory before one batched write. */
#define CACHE_TOUCH_MAX 256
/* Victims read per eviction query. */
#define CACHE_EVICT_BATCH 32
#define CACHE_BUSY_TIMEOUT_MS 5000

#define CACHE_FIX_HINT "choose another with -o cache_dir=DIR"

enum cache_stmt_id {
	ST_BEGIN,
	ST_COMMIT,
	ST_ROLLBACK,
	ST_SAVEPOINT,
	ST_RELEASE,
	ST_ROLLBACK_TO,
	ST_FOLDER_INSERT,
	ST_FOLDER_UPDATE,
	ST_FOLDER_GET,
	ST_FOLDER_LOOKUP,
	ST_FOLDER_BY_SERVER,
	ST_FOLDER_ALL,
	ST_FOLDER_CHILDREN,
	ST_FOLDER_SET_STATE,
	ST_FOLDER_DELETE,
	ST_FOLDER_EXISTS,
	ST_FOLDER_BYTES,
	ST_FOLDER_FLAGS,
	ST_MSG_UPSERT,
	ST_MSG_REFRESH,
	ST_MSG_NAME_OF,
	ST_MSG_NAME_TAKEN,
	ST_MSG_GET,
	ST_MSG_LOOKUP,
	ST_MSG_LIST,
	ST_MSG_UIDS,
	ST_MSG_UNCACHED,
	ST_MSG_COUNT,
	ST_MSG_SET_FLAGS,
	ST_MSG_SET_SIZE,
	ST_MSG_RENAME,
	ST_MSG_SET_PINNED,
	ST_MSG_DELETE,
	ST_MSG_DELETE_FOLDER,
	ST_BODY_STATE,
	ST_BODY_STORED,
	ST_BODY_DROPPED,
	ST_BODY_TOUCH,
	ST_BODY_KEEP,
	ST_BODY_VICTIMS,
	ST_KV_GET,
	ST_KV_SET,
	ST_KV_DELETE,
	ST_COUNT
};

#define FOLDER_COLS                                                     \
	"id, parent_id, name, server_name, flags, uidvalidity, uidnext, " \
	"highestmodseq, last_sync"
#define MSG_COLS                                                        \
	"folder_id, uid, name, size, mtime, flags, message_id, modseq, "  \
	"cached, pinned"
#define MSG_KEY "folder_id = ?1 AND uid = ?2"
/* CACHE_FOLDER_LOCAL in SQL. */
#define LOCAL_FLAG_SQL "64"
_Static_assert(CACHE_FOLDER_LOCAL == 64, "LOCAL_FLAG_SQL");

static const char *const cache_stmt_sql[ST_COUNT] = {
	[ST_BEGIN] = "BEGIN IMMEDIATE",
	[ST_COMMIT] = "COMMIT",
	[ST_ROLLBACK] = "ROLLBACK",
	/* Internal multi-statement changes use a savepoint, which nests in
	 * a caller's cache_begin() and is a transaction of its own outside
	 * one. */
	[ST_SAVEPOINT] = "SAVEPOINT cache_op",
	[ST_RELEASE] = "RELEASE cache_op",
	[ST_ROLLBACK_TO] = "ROLLBACK TO cache_op",
	[ST_FOLDER_INSERT] = "INSERT INTO folders (parent_id, name, "
			     "server_name, flags) VALUES (?1, ?2, ?3, ?4)",
	[ST_FOLDER_UPDATE] = "UPDATE folders SET parent_id = ?2, name = ?3, "
			     "flags = ?4 WHERE id = ?1",
	[ST_FOLDER_GET] = "SELECT " FOLDER_COLS " FROM folders WHERE id = ?1",
	[ST_FOLDER_LOOKUP] = "SELECT " FOLDER_COLS " FROM folders "
			     "WHERE parent_id = ?1 AND name = ?2",
	[ST_FOLDER_BY_SERVER] = "SELECT " FOLDER_COLS " FROM folders "
				"WHERE server_name = ?1",
	[ST_FOLDER_ALL] = "SELECT " FOLDER_COLS " FROM folders ORDER BY id",
	[ST_FOLDER_CHILDREN] = "SELECT " FOLDER_COLS " FROM folders "
			       "WHERE parent_id = ?1 AND id > ?2 "
			       "ORDER BY id LIMIT ?3",
	[ST_FOLDER_SET_STATE] = "UPDATE folders SET uidvalidity = ?2, "
				"uidnext = ?3, highestmodseq = ?4, "
				"last_sync = ?5 WHERE id = ?1",
	[ST_FOLDER_DELETE] = "DELETE FROM folders WHERE id = ?1",
	[ST_FOLDER_EXISTS] = "SELECT 1 FROM folders WHERE id = ?1",
	[ST_FOLDER_BYTES] = "SELECT COALESCE(SUM(size), 0) FROM messages "
			    "WHERE folder_id = ?1 AND cached = 1",
	[ST_FOLDER_FLAGS] = "SELECT flags FROM folders WHERE id = ?1",
	/* A replaced row keeps cached, pinned and atime, and while its body
	 * is cached its size, which is then the exact byte count, not what
	 * the server announced. */
	[ST_MSG_UPSERT] = "INSERT INTO messages (folder_id, uid, name, size, "
			  "mtime, flags, message_id, modseq, pinned) "
			  "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) "
			  "ON CONFLICT (folder_id, uid) DO UPDATE SET "
			  "name = excluded.name, "
			  "size = CASE WHEN cached THEN size "
			  "ELSE excluded.size END, "
			  "mtime = excluded.mtime, flags = excluded.flags, "
			  "message_id = excluded.message_id, "
			  "modseq = excluded.modseq",
	[ST_MSG_REFRESH] = "UPDATE messages SET "
			   "size = CASE WHEN cached THEN size ELSE ?3 END, "
			   "mtime = ?4, flags = ?5, message_id = ?6, "
			   "modseq = ?7 WHERE " MSG_KEY,
	[ST_MSG_NAME_OF] = "SELECT name FROM messages WHERE " MSG_KEY,
	[ST_MSG_NAME_TAKEN] = "SELECT 1 FROM messages "
			      "WHERE folder_id = ?1 AND name = ?2",
	[ST_MSG_GET] = "SELECT " MSG_COLS " FROM messages WHERE " MSG_KEY,
	[ST_MSG_LOOKUP] = "SELECT " MSG_COLS " FROM messages "
			  "WHERE folder_id = ?1 AND name = ?2",
	[ST_MSG_LIST] = "SELECT " MSG_COLS " FROM messages "
			"WHERE folder_id = ?1 AND uid > ?2 "
			"ORDER BY uid LIMIT ?3",
	[ST_MSG_UIDS] = "SELECT uid FROM messages WHERE folder_id = ?1 "
			"ORDER BY uid",
	/* Without statistics the planner prefers the primary key, which
	 * walks every cached row of a mostly cached folder. */
	[ST_MSG_UNCACHED] = "SELECT uid FROM messages "
			    "INDEXED BY messages_uncached "
			    "WHERE folder_id = ?1 AND uid > ?2 AND cached = 0 "
			    "ORDER BY uid LIMIT ?3",
	[ST_MSG_COUNT] = "SELECT COUNT(*) FROM messages WHERE folder_id = ?1",
	[ST_MSG_SET_FLAGS] = "UPDATE messages SET flags = ?3, modseq = ?4 "
			     "WHERE " MSG_KEY,
	[ST_MSG_SET_SIZE] = "UPDATE messages SET size = ?3 WHERE " MSG_KEY,
	[ST_MSG_RENAME] = "UPDATE messages SET name = ?3 WHERE " MSG_KEY,
	[ST_MSG_SET_PINNED] = "UPDATE messages SET pinned = ?3 WHERE " MSG_KEY,
	[ST_MSG_DELETE] = "DELETE FROM messages WHERE " MSG_KEY,
	[ST_MSG_DELETE_FOLDER] = "DELETE FROM messages WHERE folder_id = ?1",
	[ST_BODY_STATE] = "SELECT cached, size FROM messages WHERE " MSG_KEY,
	[ST_BODY_STORED] = "UPDATE messages SET cached = 1, size = ?3, "
			   "atime = ?4 WHERE " MSG_KEY,
	[ST_BODY_DROPPED] = "UPDATE messages SET cached = 0 WHERE " MSG_KEY,
	/* MAX: a batched touch must not move a newer store's atime back. */
	[ST_BODY_TOUCH] = "UPDATE messages SET atime = MAX(atime, ?3) "
			  "WHERE " MSG_KEY " AND cached = 1",
	/* A body that is the only copy: pinned, or in a local folder. */
	[ST_BODY_KEEP] = "SELECT pinned OR EXISTS (SELECT 1 FROM folders "
			 "WHERE id = ?1 AND flags & " LOCAL_FLAG_SQL ") "
			 "FROM messages WHERE " MSG_KEY,
	/* Matches the partial index messages_lru.  Local folders are left
	 * out here, not only by their rows' pinned flag: one write that did
	 * not happen must not cost the only copy. */
	/* Nor a POP3 archive not yet marked local: an earlier mailfs's,
	 * at the first open, before the POP3 store sets the flag. */
	[ST_BODY_VICTIMS] = "SELECT folder_id, uid, size FROM messages "
			    "WHERE cached = 1 AND pinned = 0 "
			    "AND folder_id NOT IN (SELECT id FROM folders "
			    "WHERE flags & " LOCAL_FLAG_SQL " OR "
			    "substr(server_name, 1, 13) = "
			    "char(1) || 'pop3:archive') "
			    "ORDER BY atime LIMIT ?1",
	[ST_KV_GET] = "SELECT value FROM kv WHERE key = ?1",
	[ST_KV_SET] = "INSERT INTO kv (key, value) VALUES (?1, ?2) "
		      "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
	[ST_KV_DELETE] = "DELETE FROM kv WHERE key = ?1",
};

static const char cache_schema_sql[] =
	"CREATE TABLE folders ("
	" id INTEGER PRIMARY KEY AUTOINCREMENT,"
	" parent_id INTEGER NOT NULL,"
	" name TEXT NOT NULL,"
	" server_name TEXT NOT NULL UNIQUE,"
	" flags INTEGER NOT NULL DEFAULT 0,"
	" uidvalidity INTEGER NOT NULL DEFAULT 0,"
	" uidnext INTEGER NOT NULL DEFAULT 0,"
	" highestmodseq INTEGER NOT NULL DEFAULT 0,"
	" last_sync INTEGER NOT NULL DEFAULT 0,"
	" UNIQUE (parent_id, name));"
	"CREATE INDEX folders_children ON folders (parent_id, id);"
	"CREATE TABLE messages ("
	" folder_id INTEGER NOT NULL,"
	" uid INTEGER NOT NULL,"
	" name TEXT NOT NULL,"
	" size INTEGER NOT NULL DEFAULT 0,"
	" mtime INTEGER NOT NULL DEFAULT 0,"
	" flags TEXT NOT NULL DEFAULT '',"
	" message_id TEXT,"
	" modseq INTEGER NOT NULL DEFAULT 0,"
	" cached INTEGER NOT NULL DEFAULT 0,"
	" pinned INTEGER NOT NULL DEFAULT 0,"
	" atime INTEGER NOT NULL DEFAULT 0,"
	" PRIMARY KEY (folder_id, uid),"
	" UNIQUE (folder_id, name)) WITHOUT ROWID;"
	/* Eviction reads cached, unpinned rows oldest first; read-ahead reads
	 * uncached rows of a folder.  Both partial, so most rows cost no index
	 * entry in the other. */
	"CREATE INDEX messages_lru ON messages (atime)"
	" WHERE cached = 1 AND pinned = 0;"
	"CREATE INDEX messages_uncached ON messages (folder_id, uid)"
	" WHERE cached = 0;"
	"CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
	" WITHOUT ROWID;";

struct cache_touch {
	int64_t folder_id;
	uint32_t uid;
	int64_t atime;
};

struct cache {
	pthread_mutex_t lock; /* recursive: cache_begin() keeps it */
	char *dir;          /* constant */
	int dir_fd;         /* constant; holds the flock */
	int bodies_fd;      /* constant */
	uint64_t body_limit; /* constant */
	sqlite3 *db;        /* lock */
	sqlite3_stmt *stmt[ST_COUNT]; /* lock */
	uint64_t body_bytes; /* lock: SUM(size) of cached rows, local
				folders' apart */
	uint64_t local_bytes; /* lock: the same of local folders' rows */
	int64_t clock;      /* lock: the last atime handed out */
	struct cache_touch touches[CACHE_TOUCH_MAX]; /* lock */
	size_t touch_count; /* lock */
	unsigned batch_depth; /* lock: cache_begin() nesting */
	bool batch_sync;    /* lock: a body was stored in the batch */
	atomic_uint tmp_seq; /* temp file names, no lock */
};

/* cache_open()'s message, valid until the next cache_open() in the
 * thread. */
static _Thread_local char cache_error_buf[512];

static const char *cache_error(const char *fmt, ...)
	__attribute__((format(printf, 1, 2)));

/* The -o option that chose the directory being opened, for the hints
 * (NULL: cache_dir). */
static _Thread_local const char *cache_open_option;

static const char *cache_error(const char *fmt, ...)
{
	static const char hint[] = "-o cache_dir=DIR";
	char *at, rest[sizeof(cache_error_buf)];
	va_list args;

	va_start(args, fmt);
	vsnprintf(cache_error_buf, sizeof(cache_error_buf), fmt, args);
	va_end(args);
	if (cache_open_option != NULL &&
	    (at = strstr(cache_error_buf, hint)) != NULL) {
		snprintf(rest, sizeof(rest), "%s", at + strlen(hint));
		snprintf(at, sizeof(cache_error_buf) -
				     (size_t)(at - cache_error_buf),
			 "-o %s=DIR%s", cache_open_option, rest);
	}
	return cache_error_buf;
}

/* ---- SQLite helpers ---- */

static sqlite3_stmt *cache_stmt(struct cache *cache, enum cache_stmt_id id)
{
	return cache->stmt[id];
}

static void cache_stmt_done(sqlite3_stmt *st)
{
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
}

/* Map a failed step to an errno.  A constraint can only be one of the
 * UNIQUE names (NOT NULL columns are always bound), hence -EEXIST. */
static int cache_failed(struct cache *cache, sqlite3_stmt *st, int rc)
{
	switch (rc & 0xff) {
	case SQLITE_CONSTRAINT:
		return -EEXIST;
	case SQLITE_NOMEM:
		return -ENOMEM;
	default:
		log_error("cache %s: \"%s\" failed: %s", cache->dir,
			  st != NULL ? sqlite3_sql(st) : "?",
			  sqlite3_errmsg(cache->db));
		return -EIO;
	}
}

/* Step once: 1 for a row, 0 when done, -errno on failure.  The caller
 * reads the row and then calls cache_stmt_done(). */
static int cache_step(struct cache *cache, sqlite3_stmt *st)
{
	int rc = sqlite3_step(st);

	if (rc == SQLITE_ROW)
		return 1;
	if (rc == SQLITE_DONE)
		return 0;
	return cache_failed(cache, st, rc);
}

/* Run a statement that returns no row, and make it ready for reuse. */
static int cache_run(struct cache *cache, sqlite3_stmt *st)
{
	int ret = cache_step(cache, st);

	cache_stmt_done(st);
	return ret < 0 ? ret : 0;
}

/* Run an UPDATE/DELETE that must hit a row: -ENOENT when none matched. */
static int cache_run_one(struct cache *cache, sqlite3_stmt *st)
{
	int ret = cache_run(cache, st);

	if (ret == 0 && sqlite3_changes(cache->db) == 0)
		ret = -ENOENT;
	return ret;
}

/* Run a query returning one integer in column 0; -ENOENT without a row. */
static int cache_query_int(struct cache *cache, sqlite3_stmt *st,
			   int64_t *value_r)
{
	int ret = cache_step(cache, st);

	if (ret == 1) {
		*value_r = sqlite3_column_int64(st, 0);
		ret = 0;
	} else if (ret == 0) {
		ret = -ENOENT;
	}
	cache_stmt_done(st);
	return ret;
}

static void cache_bind_key(sqlite3_stmt *st, int64_t folder_id, uint32_t uid)
{
	sqlite3_bind_int64(st, 1, folder_id);
	sqlite3_bind_int64(st, 2, uid);
}

static void cache_bind_text(sqlite3_stmt *st, int i, const char *s)
{
	/* Statements are reset before the call returns, while s lives. */
	sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
}

/* LIMIT takes a signed 64-bit number. */
static int64_t cache_limit(size_t limit)
{
	return limit > (size_t)INT64_MAX ? INT64_MAX : (int64_t)limit;
}

static int cache_begin_txn(struct cache *cache)
{
	return cache_run(cache, cache_stmt(cache, ST_SAVEPOINT));
}

static void cache_rollback_txn(struct cache *cache)
{
	/* ROLLBACK TO keeps the savepoint open; RELEASE ends it. */
	cache_run(cache, cache_stmt(cache, ST_ROLLBACK_TO));
	cache_run(cache, cache_stmt(cache, ST_RELEASE));
}

static int cache_commit_txn(struct cache *cache)
{
	int ret = cache_run(cache, cache_stmt(cache, ST_RELEASE));

	if (ret < 0)
		cache_rollback_txn(cache);
	return ret;
}

/* A text column as a new string, NULL for SQL NULL. */
static int cache_col_str(sqlite3_stmt *st, int col, char **str_r)
{
	const unsigned char *s;

	*str_r = NULL;
	if (sqlite3_column_type(st, col) == SQLITE_NULL)
		return 0;
	s = sqlite3_column_text(st, col);
	if (s == NULL)
		return -ENOMEM;
	*str_r = strdup((const char *)s);
	return *str_r == NULL ? -ENOMEM : 0;
}

static int cache_read_folder(sqlite3_stmt *st, struct cache_folder *f)
{
	int ret;

	memset(f, 0, sizeof(*f));
	f->id = sqlite3_column_int64(st, 0);
	f->parent_id = sqlite3_column_int64(st, 1);
	f->flags = (uint32_t)sqlite3_column_int64(st, 4);
	f->uidvalidity = (uint32_t)sqlite3_column_int64(st, 5);
	f->uidnext = (uint32_t)sqlite3_column_int64(st, 6);
	f->highestmodseq = (uint64_t)sqlite3_column_int64(st, 7);
	f->last_sync = sqlite3_column_int64(st, 8);
	if ((ret = cache_col_str(st, 2, &f->name)) < 0 ||
	    (ret = cache_col_str(st, 3, &f->server_name)) < 0)
		cache_folder_clear(f);
	return ret;
}

static int cache_read_msg(sqlite3_stmt *st, struct cache_msg *m)
{
	int ret;

	memset(m, 0, sizeof(*m));
	m->folder_id = sqlite3_column_int64(st, 0);
	m->uid = (uint32_t)sqlite3_column_int64(st, 1);
	m->size = (uint64_t)sqlite3_column_int64(st, 3);
	m->mtime = sqlite3_column_int64(st, 4);
	m->modseq = (uint64_t)sqlite3_column_int64(st, 7);
	m->cached = sqlite3_column_int(st, 8) != 0;
	m->pinned = sqlite3_column_int(st, 9) != 0;
	if ((ret = cache_col_str(st, 2, &m->name)) < 0 ||
	    (ret = cache_col_str(st, 5, &m->flags)) < 0 ||
	    (ret = cache_col_str(st, 6, &m->message_id)) < 0)
		goto fail;
	if (m->flags == NULL && (m->flags = strdup("")) == NULL) {
		ret = -ENOMEM;
		goto fail;
	}
	return 0;
fail:
	cache_msg_clear(m);
	return ret;
}

/* Run a prepared folder query expected to return at most one row. */
static int cache_folder_row(struct cache *cache, sqlite3_stmt *st,
			    struct cache_folder *f_r)
{
	int ret = cache_step(cache, st);

	if (ret == 1)
		ret = cache_read_folder(st, f_r);
	else if (ret == 0)
		ret = -ENOENT;
	cache_stmt_done(st);
	return ret;
}

static int cache_msg_row(struct cache *cache, sqlite3_stmt *st,
			 struct cache_msg *m_r)
{
	int ret = cache_step(cache, st);

	if (ret == 1)
		ret = cache_read_msg(st, m_r);
	else if (ret == 0)
		ret = -ENOENT;
	cache_stmt_done(st);
	return ret;
}

/* Grow *array (of elem_size) so that it holds at least n + 1 elements. */
static int cache_grow(void **array, size_t *cap, size_t n, size_t elem_size)
{
	size_t new_cap;
	void *p;

	if (n < *cap)
		return 0;
	new_cap = *cap == 0 ? 16 : *cap * 2;
	if (new_cap > SIZE_MAX / elem_size)
		return -ENOMEM;
	p = realloc(*array, new_cap * elem_size);
	if (p == NULL)
		return -ENOMEM;
	*array = p;
	*cap = new_cap;
	return 0;
}

static int cache_folder_rows(struct cache *cache, sqlite3_stmt *st,
			     struct cache_folder **folders_r, size_t *count_r)
{
	struct cache_folder *folders = NULL;
	size_t count = 0, cap = 0;
	int ret;

	while ((ret = cache_step(cache, st)) == 1) {
		ret = cache_grow((void **)&folders, &cap, count,
				 sizeof(*folders));
		if (ret < 0)
			break;
		ret = cache_read_folder(st, &folders[count]);
		if (ret < 0)
			break;
		count++;
	}
	cache_stmt_done(st);
	if (ret < 0) {
		cache_folder_list_free(folders, count);
		return ret;
	}
	*folders_r = folders;
	*count_r = count;
	return 0;
}

static int cache_uid_rows(struct cache *cache, sqlite3_stmt *st,
			  uint32_t **uids_r, size_t *count_r)
{
	uint32_t *uids = NULL;
	size_t count = 0, cap = 0;
	int ret;

	while ((ret = cache_step(cache, st)) == 1) {
		ret = cache_grow((void **)&uids, &cap, count, sizeof(*uids));
		if (ret < 0)
			break;
		uids[count++] = (uint32_t)sqlite3_column_int64(st, 0);
	}
	cache_stmt_done(st);
	if (ret < 0) {
		free(uids);
		return ret;
	}
	*uids_r = uids;
	*count_r = count;
	return 0;
}

static int cache_exec_sql(struct cache *cache, const char *sql)
{
	char *msg = NULL;
	int rc = sqlite3_exec(cache->db, sql, NULL, NULL, &msg);

	if (rc == SQLITE_OK)
		return 0;
	log_error("cache %s: \"%.60s\" failed: %s", cache->dir, sql,
		  msg != NULL ? msg : sqlite3_errstr(rc));
	sqlite3_free(msg);
	return (rc & 0xff) == SQLITE_NOMEM ? -ENOMEM : -EIO;
}

/* ---- names and paths ---- */

/* A file or directory name the mount can show. */
static int cache_name_check(const char *name)
{
	size_t len;

	if (name == NULL)
		return -EINVAL;
	len = strlen(name);
	if (len == 0 || strchr(name, '/') != NULL || strcmp(name, ".") == 0 ||
	    strcmp(name, "..") == 0)
		return -EINVAL;
	if (len > CACHE_NAME_MAX)
		return -ENAMETOOLONG;
	return 0;
}

static void cache_folder_dir_name(char *buf, size_t size, int64_t folder_id)
{
	snprintf(buf, size, "%" PRId64, folder_id);
}

static void cache_body_path(char *buf, size_t size, int64_t folder_id,
			    uint32_t uid)
{
	snprintf(buf, size, "%" PRId64 "/%" PRIu32, folder_id, uid);
}

/* Parse a whole decimal string; false for anything else. */
static bool cache_parse_u64(const char *s, uint64_t *value_r)
{
	uint64_t v = 0;

	if (*s == '\0')
		return false;
	for (; *s != '\0'; s++) {
		if (*s < '0' || *s > '9' || v > (UINT64_MAX - 9) / 10)
			return false;
		v = v * 10 + (uint64_t)(*s - '0');
	}
	*value_r = v;
	return true;
}

/* A strictly increasing millisecond clock: recency ties would make the
 * eviction order depend on the index's tie-breaking. */
static int64_t cache_tick(struct cache *cache)
{
	struct timespec ts;
	int64_t now;

	clock_gettime(CLOCK_REALTIME, &ts);
	now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
	if (now <= cache->clock)
		now = cache->clock + 1;
	cache->clock = now;
	return now;
}

/* ---- body files ---- */

/* mkdirat, mode 0700 whatever the umask, with the new entry synced in
 * its parent: the first body stored below it depends on it.  0 when it
 * was made or already there. */
static int cache_mkdirat_durable(int parent_fd, const char *name)
{
	if (mkdirat(parent_fd, name, 0700) == 0) {
		if (fchmodat(parent_fd, name, 0700, 0) < 0 ||
		    fsync(parent_fd) < 0)
			return -errno;
		return 0;
	}
	return errno == EEXIST ? 0 : -errno;
}

/* Remove bodies/F/ and everything in it: bodies, orphans, temp files.
 * Failures are logged only: the rows go anyway, and the next open sweeps
 * what is left. */
static void cache_body_dir_remove(struct cache *cache, int64_t folder_id)
{
	char name[24];
	struct dirent *de;
	DIR *d;
	int fd;

	cache_folder_dir_name(name, sizeof(name), folder_id);
	fd = openat(cache->bodies_fd, name,
		    O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0) {
		if (errno != ENOENT)
			log_warn("cache %s: cannot open bodies/%s: %s",
				 cache->dir, name, strerror(errno));
		return;
	}
	d = fdopendir(fd);
	if (d == NULL) {
		log_warn("cache %s: cannot read bodies/%s: %s", cache->dir,
			 name, strerror(errno));
		close(fd);
		return;
	}
	while ((de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") == 0 ||
		    strcmp(de->d_name, "..") == 0)
			continue;
		if (unlinkat(dirfd(d), de->d_name, 0) < 0 && errno != ENOENT)
			log_warn("cache %s: cannot remove bodies/%s/%s: %s",
				 cache->dir, name, de->d_name,
				 strerror(errno));
	}
	closedir(d);
	if (unlinkat(cache->bodies_fd, name, AT_REMOVEDIR) < 0 &&
	    errno != ENOENT)
		log_warn("cache %s: cannot remove bodies/%s: %s", cache->dir,
			 name, strerror(errno));
}

static void cache_body_unlink(struct cache *cache, int64_t folder_id,
			      uint32_t uid)
{
	char path[48];

	cache_body_path(path, sizeof(path), folder_id, uid);
	if (unlinkat(cache->bodies_fd, path, 0) < 0 && errno != ENOENT)
		log_warn("cache %s: cannot remove bodies/%s: %s", cache->dir,
			 path, strerror(errno));
}

static int cache_write_all(int fd, const void *data, size_t len)
{
	const char *p = data;

	while (len > 0) {
		ssize_t n = write(fd, p, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Write data to a new temp file in bodies/F/ and fsync it.  Runs without
 * the lock: writing and syncing a large body must not stall lookups.
 * Returns the directory fd in *dir_fd_r and the temp name in tmp. */
static int cache_body_write_tmp(struct cache *cache, int64_t folder_id,
				uint32_t uid, const void *data, size_t len,
				bool durable, int *dir_fd_r, char *tmp,
				size_t tmp_size)
{
	char dname[24];
	int dir_fd = -1, fd = -1, ret, tries;

	cache_folder_dir_name(dname, sizeof(dname), folder_id);
	if ((ret = cache_mkdirat_durable(cache->bodies_fd, dname)) < 0)
		goto fail;
	dir_fd = openat(cache->bodies_fd, dname,
			O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (dir_fd < 0) {
		ret = -errno;
		goto fail;
	}
	/* The sequence makes names unique in this process; O_EXCL and a
	 * retry cover a leftover of an earlier one. */
	for (tries = 0; tries < 100; tries++) {
		snprintf(tmp, tmp_size, CACHE_TMP_PREFIX "%" PRIu32 "-%u", uid,
			 atomic_fetch_add(&cache->tmp_seq, 1));
		fd = openat(dir_fd, tmp,
			    O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		if (fd >= 0 || errno != EEXIST)
			break;
	}
	if (fd < 0) {
		ret = -errno;
		goto fail;
	}
	if (fchmod(fd, 0600) < 0) {
		ret = -errno;
		goto fail_unlink;
	}
	if ((ret = cache_write_all(fd, data, len)) < 0)
		goto fail_unlink;
	if (durable && fsync(fd) < 0) {
		ret = -errno;
		goto fail_unlink;
	}
	if (close(fd) < 0) {
		fd = -1;
		ret = -errno;
		goto fail_unlink;
	}
	*dir_fd_r = dir_fd;
	return 0;

fail_unlink:
	if (fd >= 0)
		close(fd);
	fd = -1;
	unlinkat(dir_fd, tmp, 0);
fail:
	log_error("cache %s: cannot write body bodies/%s/%" PRIu32 ": %s",
		  cache->dir, dname, uid, strerror(-ret));
	if (dir_fd >= 0)
		close(dir_fd);
	return ret;
}

/* cached and size of a message's row; -ENOENT without one. */
static int cache_body_state(struct cache *cache, int64_t folder_id,
			    uint32_t uid, bool *cached_r, uint64_t *size_r)
{
	sqlite3_stmt *st = cache_stmt(cache, ST_BODY_STATE);
	int ret;

	cache_bind_key(st, folder_id, uid);
	ret = cache_step(cache, st);
	if (ret == 1) {
		*cached_r = sqlite3_column_int(st, 0) != 0;
		*size_r = (uint64_t)sqlite3_column_int64(st, 1);
		ret = 0;
	} else if (ret == 0) {
		ret = -ENOENT;
	}
	cache_stmt_done(st);
	return ret;
}

/* Whether a folder is local-only (CACHE_FOLDER_LOCAL). */
static bool cache_folder_local(struct cache *cache, int64_t folder_id)
{
	sqlite3_stmt *st = cache_stmt(cache, ST_FOLDER_FLAGS);
	int64_t flags = 0;

	sqlite3_bind_int64(st, 1, folder_id);
	if (cache_query_int(cache, st, &flags) < 0)
		return false;
	return (flags & CACHE_FOLDER_LOCAL) != 0;
}

/* The byte total a folder's cached bodies count in: local folders' do
 * not count against the limit. */
static uint64_t *cache_total(struct cache *cache, int64_t folder_id)
{
	return cache_folder_local(cache, folder_id) ? &cache->local_bytes :
		&cache->body_bytes;
}

static void cache_total_sub(uint64_t *total, uint64_t size)
{
	*total -= size < *total ? size : *total;
}

/* Mark a row not cached and take its bytes off the total. */
static int cache_body_dropped(struct cache *cache, int64_t folder_id,
			      uint32_t uid, uint64_t size)
{
	sqlite3_stmt *st = cache_stmt(cache, ST_BODY_DROPPED);
	int ret;

	cache_bind_key(st, folder_id, uid);
	ret = cache_run(cache, st);
	if (ret == 0)
		cache_total_sub(cache_total(cache, folder_id), size);
	return ret;
}

/* Write the recorded opens to the index, in one transaction. */
static void cache_touch_flush(struct cache *cache)
{
	sqlite3_stmt *st = cache_stmt(cache, ST_BODY_TOUCH);
	size_t i;

	if (cache->touch_count == 0)
		return;
	if (cache_begin_txn(cache) < 0)
		goto out;
	for (i = 0; i < cache->touch_count; i++) {
		const struct cache_touch *t = &cache->touches[i];

		cache_bind_key(st, t->folder_id, t->uid);
		sqlite3_bind_int64(st, 3, t->atime);
		if (cache_run(cache, st) < 0) {
			cache_rollback_txn(cache);
			goto out;
		}
	}
	cache_commit_txn(cache);
out:
	/* Lost recency is harmless; an ever-growing list would not be. */
	cache->touch_count = 0;
}

static void cache_touch(struct cache *cache, int64_t folder_id, uint32_t uid)
{
	struct cache_touch *t;

	if (cache->touch_count == CACHE_TOUCH_MAX)
		cache_touch_flush(cache);
	t = &cache->touches[cache->touch_count++];
	t->folder_id = folder_id;
	t->uid = uid;
	t->atime = cache_tick(cache);
}

static int cache_recount(struct cache *cache);

/* Evict least recently used, unpinned bodies other than (keep_folder,
 * keep_uid) until the total fits.  Pinned bodies and the one kept may
 * leave the total above the limit: they are needed, the limit is not. */
static void cache_evict(struct cache *cache, int64_t keep_folder,
			uint32_t keep_uid)
{
	sqlite3_stmt *st = cache_stmt(cache, ST_BODY_VICTIMS);
	struct {
		int64_t folder_id;
		uint32_t uid;
		uint64_t size;
	} victims[CACHE_EVICT_BATCH];
	size_t n, i;

	if (cache->body_bytes <= cache->body_limit)
		return;
	/* The order must see the opens not yet written. */
	cache_touch_flush(cache);
	if (cache_begin_txn(cache) < 0)
		return;
	while (cache->body_bytes > cache->body_limit) {
		/* Collect first: updating rows under a running SELECT of the
		 * same index is asking for surprises. */
		n = 0;
		sqlite3_bind_int64(st, 1, CACHE_EVICT_BATCH + 1);
		while (n < CACHE_EVICT_BATCH && cache_step(cache, st) == 1) {
			victims[n].folder_id = sqlite3_column_int64(st, 0);
			victims[n].uid = (uint32_t)sqlite3_column_int64(st, 1);
			victims[n].size = (uint64_t)sqlite3_column_int64(st, 2);
			if (victims[n].folder_id == keep_folder &&
			    victims[n].uid == keep_uid)
				continue;
			n++;
		}
		cache_stmt_done(st);
		if (n == 0)
			break;
		for (i = 0; i < n && cache->body_bytes > cache->body_limit;
		     i++) {
			cache_body_unlink(cache, victims[i].folder_id,
					  victims[i].uid);
			if (cache_body_dropped(cache, victims[i].folder_id,
					       victims[i].uid,
					       victims[i].size) < 0)
				goto out;
		}
	}
out:
	/* Rolled back: the total had already counted the drops. */
	if (cache_commit_txn(cache) < 0)
		cache_recount(cache);
}

/* Compute the byte total and the clock from the index: at open, and
 * after a rolled-back batch whose changes the in-memory total had seen. */
static int cache_recount(struct cache *cache)
{
	int64_t bytes = 0, local = 0, clock = 0;
	sqlite3_stmt *st;
	int ret, rc;

	rc = sqlite3_prepare_v2(cache->db,
				"SELECT COALESCE(SUM(CASE WHEN f.flags & "
				LOCAL_FLAG_SQL " THEN 0 ELSE m.size END), 0), "
				"COALESCE(SUM(CASE WHEN f.flags & "
				LOCAL_FLAG_SQL " THEN m.size ELSE 0 END), 0), "
				"COALESCE(MAX(m.atime), 0) FROM messages m "
				"LEFT JOIN folders f ON f.id = m.folder_id "
				"WHERE m.cached = 1",
				-1, &st, NULL);
	if (rc != SQLITE_OK)
		return cache_failed(cache, NULL, rc);
	ret = cache_step(cache, st);
	if (ret == 1) {
		bytes = sqlite3_column_int64(st, 0);
		local = sqlite3_column_int64(st, 1);
		clock = sqlite3_column_int64(st, 2);
		ret = 0;
	}
	sqlite3_finalize(st);
	if (ret < 0)
		return ret;
	cache->body_bytes = bytes > 0 ? (uint64_t)bytes : 0;
	cache->local_bytes = local > 0 ? (uint64_t)local : 0;
	if (clock > cache->clock)
		cache->clock = clock;
	return 0;
}

/* ---- open and close ---- */

/* fsync the directory that holds path (a new entry in it). */
static int cache_sync_parent(const char *path)
{
	const char *slash = strrchr(path, '/');
	char *parent;
	int fd, ret = 0;

	if (slash == NULL)
		parent = strdup(".");
	else if (slash == path)
		parent = strdup("/");
	else
		parent = strndup(path, (size_t)(slash - path));
	if (parent == NULL)
		return -ENOMEM;
	fd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0 || fsync(fd) < 0)
		ret = -errno;
	if (fd >= 0)
		close(fd);
	free(parent);
	return ret;
}

/* mkdir -p, each directory created mode 0700 whatever the umask, and
 * synced in its parent. */
static int cache_mkdirs(const char *dir)
{
	char *path = strdup(dir);
	char *p;
	int ret = 0;

	if (path == NULL)
		return -ENOMEM;
	for (p = path + 1;; p++) {
		char c = *p;

		if (c != '/' && c != '\0')
			continue;
		*p = '\0';
		if (mkdir(path, 0700) == 0) {
			if (chmod(path, 0700) < 0 ||
			    (ret = cache_sync_parent(path)) < 0) {
				ret = ret < 0 ? ret : -errno;
				break;
			}
		} else if (errno != EEXIST) {
			ret = -errno;
			break;
		}
		*p = c;
		if (c == '\0')
			break;
		while (p[1] == '/')
			p++;
	}
	free(path);
	return ret;
}

static int cache_open_dir(struct cache *cache, const char **error_r)
{
	const char *dir = cache->dir;
	struct stat st;
	int ret, fd;

	ret = cache_mkdirs(dir);
	if (ret < 0) {
		*error_r = cache_error("cannot create cache directory %s: %s "
				       "(" CACHE_FIX_HINT ")",
				       dir, strerror(-ret));
		return ret;
	}
	cache->dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (cache->dir_fd < 0) {
		ret = -errno;
		*error_r = cache_error("cache directory %s is not usable: %s "
				       "(" CACHE_FIX_HINT ")",
				       dir, strerror(-ret));
		return ret;
	}
	if (fstat(cache->dir_fd, &st) < 0 || fchmod(cache->dir_fd, 0700) < 0) {
		ret = -errno;
		*error_r = cache_error("cannot make cache directory %s private "
				       "(mode 0700): %s (" CACHE_FIX_HINT ")",
				       dir, strerror(-ret));
		return ret;
	}
	/* Two processes on one cache would each trust their own byte total
	 * and evict each other's bodies. */
	if (flock(cache->dir_fd, LOCK_EX | LOCK_NB) < 0) {
		ret = -errno;
		if (ret == -EWOULDBLOCK) {
			*error_r = cache_error("cache directory %s is in use "
					       "by another mailfs (unmount it "
					       "first, or " CACHE_FIX_HINT ")",
					       dir);
			return -EBUSY;
		}
		*error_r = cache_error("cannot lock cache directory %s: %s "
				       "(" CACHE_FIX_HINT ")",
				       dir, strerror(-ret));
		return ret;
	}
	/* Mode bits say little to root or on a read-only mount: try. */
	fd = openat(cache->dir_fd, ".write-test",
		    O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW,
		    0600);
	if (fd < 0) {
		ret = -errno;
		*error_r = cache_error("cache directory %s is not writable: "
				       "%s (fix its permissions or "
				       CACHE_FIX_HINT ")",
				       dir, strerror(-ret));
		return ret;
	}
	close(fd);
	unlinkat(cache->dir_fd, ".write-test", 0);
	return 0;
}

/* Create or chmod a file of the index to 0600 before SQLite opens it:
 * SQLite would create it 0644, and the -wal and -shm files take the main
 * file's mode. */
static int cache_private_file(struct cache *cache, const char *name,
			      bool create)
{
	int fd, flags = O_RDWR | O_CLOEXEC | O_NOFOLLOW;

	if (create)
		flags |= O_CREAT;
	fd = openat(cache->dir_fd, name, flags, 0600);
	if (fd < 0)
		return errno == ENOENT && !create ? 0 : -errno;
	if (fchmod(fd, 0600) < 0) {
		int ret = -errno;

		close(fd);
		return ret;
	}
	close(fd);
	return 0;
}

static int cache_open_schema(struct cache *cache, const char **error_r)
{
	sqlite3_stmt *st = NULL;
	int64_t version = 0;
	int ret, rc;

	ret = cache_exec_sql(cache, "BEGIN IMMEDIATE");
	if (ret < 0)
		goto fail;
	ret = cache_exec_sql(cache, "CREATE TABLE IF NOT EXISTS meta ("
				    "key TEXT PRIMARY KEY, value) "
				    "WITHOUT ROWID");
	if (ret < 0)
		goto fail_rollback;
	rc = sqlite3_prepare_v2(cache->db,
				"SELECT value FROM meta "
				"WHERE key = 'schema_version'",
				-1, &st, NULL);
	if (rc != SQLITE_OK) {
		ret = cache_failed(cache, NULL, rc);
		goto fail_rollback;
	}
	ret = cache_query_int(cache, st, &version);
	sqlite3_finalize(st);
	if (ret == -ENOENT) {
		ret = cache_exec_sql(cache, cache_schema_sql);
		if (ret == 0) {
			char sql[96];

			snprintf(sql, sizeof(sql),
				 "INSERT INTO meta VALUES "
				 "('schema_version', %d)",
				 CACHE_SCHEMA_VERSION);
			ret = cache_exec_sql(cache, sql);
		}
		if (ret < 0)
			goto fail_rollback;
	} else if (ret < 0) {
		goto fail_rollback;
	} else if (version > CACHE_SCHEMA_VERSION) {
		*error_r = cache_error("cache in %s was written by a newer "
				       "mailfs (schema %" PRId64 ", this one "
				       "knows %d): remove the directory or "
				       CACHE_FIX_HINT,
				       cache->dir, version,
				       CACHE_SCHEMA_VERSION);
		cache_exec_sql(cache, "ROLLBACK");
		return -EPROTO;
	}
	/* Migrations from older versions go here. */
	ret = cache_exec_sql(cache, "COMMIT");
	if (ret < 0)
		goto fail_rollback;
	return 0;

fail_rollback:
	sqlite3_exec(cache->db, "ROLLBACK", NULL, NULL, NULL);
fail:
	*error_r = cache_error("cache index %s/" CACHE_INDEX_NAME
			       " is unusable: %s (remove it to start over, "
			       "or " CACHE_FIX_HINT ")",
			       cache->dir, sqlite3_errmsg(cache->db));
	return ret;
}

static int cache_open_db(struct cache *cache, const char **error_r)
{
	char *path = NULL;
	sqlite3_stmt *st = NULL;
	int ret, rc, i;

	if ((ret = cache_private_file(cache, CACHE_INDEX_NAME, true)) < 0 ||
	    (ret = cache_private_file(cache, CACHE_INDEX_NAME "-wal",
				      false)) < 0 ||
	    (ret = cache_private_file(cache, CACHE_INDEX_NAME "-shm",
				      false)) < 0) {
		*error_r = cache_error("cannot open cache index %s/"
				       CACHE_INDEX_NAME ": %s (fix its "
				       "permissions or " CACHE_FIX_HINT ")",
				       cache->dir, strerror(-ret));
		return ret;
	}
	if (asprintf(&path, "%s/" CACHE_INDEX_NAME, cache->dir) < 0)
		return -ENOMEM;
	rc = sqlite3_open_v2(path, &cache->db,
			     SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
				     SQLITE_OPEN_FULLMUTEX,
			     NULL);
	free(path);
	if (rc != SQLITE_OK) {
		*error_r = cache_error("cannot open cache index %s/"
				       CACHE_INDEX_NAME ": %s (remove it to "
				       "start over, or " CACHE_FIX_HINT ")",
				       cache->dir,
				       cache->db != NULL ?
					       sqlite3_errmsg(cache->db) :
					       sqlite3_errstr(rc));
		return -EIO;
	}
	sqlite3_extended_result_codes(cache->db, 0);
	sqlite3_busy_timeout(cache->db, CACHE_BUSY_TIMEOUT_MS);

	/* WAL: readers never wait for the writer.  NORMAL: no fsync per
	 * commit; a power loss may undo the last commits but never corrupts,
	 * and the sync engine refetches what the index forgot.  The body
	 * store syncs explicitly (see cache_body_store). */
	rc = sqlite3_prepare_v2(cache->db, "PRAGMA journal_mode = WAL", -1,
				&st, NULL);
	if (rc == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW) {
		const char *mode = (const char *)sqlite3_column_text(st, 0);

		if (mode == NULL || strcmp(mode, "wal") != 0)
			log_warn("cache %s: the index is not in WAL mode "
				 "(%s): slower and less concurrent",
				 cache->dir, mode != NULL ? mode : "?");
	} else {
		sqlite3_finalize(st);
		*error_r = cache_error("cache index %s/" CACHE_INDEX_NAME
				       " is unusable: %s (remove it to start "
				       "over, or " CACHE_FIX_HINT ")",
				       cache->dir, sqlite3_errmsg(cache->db));
		return -EIO;
	}
	sqlite3_finalize(st);
	if ((ret = cache_exec_sql(cache, "PRAGMA synchronous = NORMAL")) < 0)
		goto fail;

	ret = cache_open_schema(cache, error_r);
	if (ret < 0)
		return ret;

	for (i = 0; i < ST_COUNT; i++) {
		rc = sqlite3_prepare_v3(cache->db, cache_stmt_sql[i], -1,
					SQLITE_PREPARE_PERSISTENT,
					&cache->stmt[i], NULL);
		if (rc != SQLITE_OK) {
			log_error("cache %s: cannot prepare \"%s\": %s",
				  cache->dir, cache_stmt_sql[i],
				  sqlite3_errmsg(cache->db));
			ret = -EIO;
			goto fail;
		}
	}
	return 0;

fail:
	*error_r = cache_error("cache index %s/" CACHE_INDEX_NAME
			       " is unusable: %s (remove it to start over, "
			       "or " CACHE_FIX_HINT ")",
			       cache->dir, sqlite3_errmsg(cache->db));
	return ret;
}

static bool cache_folder_exists(struct cache *cache, int64_t folder_id)
{
	sqlite3_stmt *st = cache_stmt(cache, ST_FOLDER_EXISTS);
	int64_t one;

	sqlite3_bind_int64(st, 1, folder_id);
	return cache_query_int(cache, st, &one) == 0;
}

/* Remove what a crash can leave in a folder's body directory: temp files,
 * and bodies the index does not count (stored but not yet marked when the
 * process died).  Those would take space outside the limit forever. */
static void cache_sweep_folder(struct cache *cache, int64_t folder_id,
			       const char *dname)
{
	/* A local-only folder's body may be the only copy: a doubt (an
	 * index error) keeps it, and so does the folder being local. */
	bool local = cache_folder_local(cache, folder_id);
	struct dirent *de;
	DIR *d;
	int fd;

	fd = openat(cache->bodies_fd, dname,
		    O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return;
	d = fdopendir(fd);
	if (d == NULL) {
		close(fd);
		return;
	}
	while ((de = readdir(d)) != NULL) {
		uint64_t uid, size;
		bool cached = false;

		if (strcmp(de->d_name, ".") == 0 ||
		    strcmp(de->d_name, "..") == 0)
			continue;
		if (strncmp(de->d_name, CACHE_TMP_PREFIX,
			    strlen(CACHE_TMP_PREFIX)) != 0) {
			int st;

			if (local || !cache_parse_u64(de->d_name, &uid) ||
			    uid > UINT32_MAX)
				continue;
			st = cache_body_state(cache, folder_id, (uint32_t)uid,
					      &cached, &size);
			if (st != -ENOENT && (st < 0 || cached))
				continue;
		}
		if (unlinkat(dirfd(d), de->d_name, 0) < 0 && errno != ENOENT)
			log_warn("cache %s: cannot remove bodies/%s/%s: %s",
				 cache->dir, dname, de->d_name,
				 strerror(errno));
	}
	closedir(d);
}

static void cache_sweep(struct cache *cache)
{
	struct dirent *de;
	DIR *d;
	int fd;

	fd = openat(cache->bodies_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return;
	d = fdopendir(fd);
	if (d == NULL) {
		close(fd);
		return;
	}
	while ((de = readdir(d)) != NULL) {
		uint64_t id;

		if (!cache_parse_u64(de->d_name, &id) || id == 0 ||
		    id > INT64_MAX)
			continue;
		if (cache_folder_exists(cache, (int64_t)id))
			cache_sweep_folder(cache, (int64_t)id, de->d_name);
		else
			cache_body_dir_remove(cache, (int64_t)id);
	}
	closedir(d);
}

static int cache_open_bodies(struct cache *cache, const char **error_r)
{
	int ret;

	if ((ret = cache_mkdirat_durable(cache->dir_fd,
					 CACHE_BODIES_NAME)) < 0)
		goto fail;
	cache->bodies_fd = openat(cache->dir_fd, CACHE_BODIES_NAME,
				  O_RDONLY | O_DIRECTORY | O_CLOEXEC |
					  O_NOFOLLOW);
	if (cache->bodies_fd < 0 || fchmod(cache->bodies_fd, 0700) < 0) {
		ret = -errno;
		goto fail;
	}
	return 0;
fail:
	*error_r = cache_error("cannot use %s/" CACHE_BODIES_NAME ": %s (fix "
			       "its permissions or " CACHE_FIX_HINT ")",
			       cache->dir, strerror(-ret));
	return ret;
}

static int cache_open_totals(struct cache *cache, const char **error_r)
{
	int ret = cache_recount(cache);

	if (ret < 0)
		goto fail;
	return 0;
fail:
	*error_r = cache_error("cache index %s/" CACHE_INDEX_NAME
			       " is unusable: %s (remove it to start over, "
			       "or " CACHE_FIX_HINT ")",
			       cache->dir, sqlite3_errmsg(cache->db));
	return ret;
}

static int cache_open_dir_named(struct cache **cache_r, const char *dir,
				uint64_t body_limit, const char **error_r);

int cache_open_as(struct cache **cache_r, const char *dir, const char *option,
		  uint64_t body_limit, const char **error_r)
{
	int ret;

	cache_open_option = option;
	ret = cache_open_dir_named(cache_r, dir, body_limit, error_r);
	cache_open_option = NULL;
	return ret;
}

int cache_open(struct cache **cache_r, const char *dir, uint64_t body_limit,
	       const char **error_r)
{
	return cache_open_as(cache_r, dir, NULL, body_limit, error_r);
}

static int cache_open_dir_named(struct cache **cache_r, const char *dir,
				uint64_t body_limit, const char **error_r)
{
	const char *error = NULL;
	struct cache *cache;
	int ret;

	*cache_r = NULL;
	if (dir == NULL || *dir == '\0') {
		error = cache_error("no cache directory given");
		ret = -EINVAL;
		goto fail_early;
	}
	cache = calloc(1, sizeof(*cache));
	if (cache == NULL) {
		error = cache_error("out of memory opening cache %s", dir);
		ret = -ENOMEM;
		goto fail_early;
	}
	cache->dir_fd = -1;
	cache->bodies_fd = -1;
	cache->body_limit = body_limit;
	atomic_init(&cache->tmp_seq, 0);
	{
		pthread_mutexattr_t attr;

		pthread_mutexattr_init(&attr);
		pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
		pthread_mutex_init(&cache->lock, &attr);
		pthread_mutexattr_destroy(&attr);
	}
	cache->dir = strdup(dir);
	if (cache->dir == NULL) {
		error = cache_error("out of memory opening cache %s", dir);
		ret = -ENOMEM;
		goto fail;
	}

	if ((ret = cache_open_dir(cache, &error)) < 0 ||
	    (ret = cache_open_db(cache, &error)) < 0 ||
	    (ret = cache_open_bodies(cache, &error)) < 0 ||
	    (ret = cache_open_totals(cache, &error)) < 0)
		goto fail;
	cache_sweep(cache);
	/* cache_size may have been lowered since the last mount. */
	cache_evict(cache, 0, 0);
	*cache_r = cache;
	return 0;

fail:
	if (error == NULL)
		error = cache_error("cannot open cache %s: %s (" CACHE_FIX_HINT
				    ")", dir, strerror(-ret));
	cache_close(&cache);
fail_early:
	if (error_r != NULL)
		*error_r = error;
	return ret;
}

static int cache_batch_end(struct cache *cache);

void cache_close(struct cache **cachep)
{
	struct cache *cache = *cachep;
	int i;

	if (cache == NULL)
		return;
	*cachep = NULL;
	if (cache->db != NULL) {
		if (cache->batch_depth > 0) {
			/* A caller bug; keeping the batch loses less. */
			log_warn("cache %s: closed inside cache_begin(); "
				 "committing", cache->dir);
			cache->batch_depth = 0;
			cache_batch_end(cache);
		}
		/* Touches exist only once every statement is prepared. */
		cache_touch_flush(cache);
		for (i = 0; i < ST_COUNT; i++)
			sqlite3_finalize(cache->stmt[i]);
		if (sqlite3_close(cache->db) != SQLITE_OK)
			log_error("cache %s: closing the index failed: %s",
				  cache->dir, sqlite3_errmsg(cache->db));
	}
	if (cache->bodies_fd >= 0)
		close(cache->bodies_fd);
	/* Closing it drops the flock. */
	if (cache->dir_fd >= 0)
		close(cache->dir_fd);
	pthread_mutex_destroy(&cache->lock);
	free(cache->dir);
	free(cache);
}

/* ---- folders ---- */

int cache_folder_put(struct cache *cache, int64_t parent_id, const char *name,
		     const char *server_name, uint32_t flags, int64_t *id_r)
{
	struct cache_folder old;
	sqlite3_stmt *st;
	int64_t id = 0;
	bool recount = false;
	int ret;

	if (parent_id < 0 || server_name == NULL || *server_name == '\0')
		return -EINVAL;
	if ((ret = cache_name_check(name)) < 0)
		return ret;

	pthread_mutex_lock(&cache->lock);
	st = cache_stmt(cache, ST_FOLDER_BY_SERVER);
	cache_bind_text(st, 1, server_name);
	ret = cache_folder_row(cache, st, &old);
	if (ret == 0) {
		id = old.id;
		/* Its bodies change totals (an archive made before the flag). */
		recount = ((old.flags ^ flags) & CACHE_FOLDER_LOCAL) != 0;
		cache_folder_clear(&old);
		if (parent_id == id) {
			ret = -EINVAL;
			goto out;
		}
		st = cache_stmt(cache, ST_FOLDER_UPDATE);
		sqlite3_bind_int64(st, 1, id);
		sqlite3_bind_int64(st, 2, parent_id);
		cache_bind_text(st, 3, name);
		sqlite3_bind_int64(st, 4, flags);
		ret = cache_run(cache, st);
		if (ret == 0 && recount)
			ret = cache_recount(cache);
	} else if (ret == -ENOENT) {
		st = cache_stmt(cache, ST_FOLDER_INSERT);
		sqlite3_bind_int64(st, 1, parent_id);
		cache_bind_text(st, 2, name);
		cache_bind_text(st, 3, server_name);
		sqlite3_bind_int64(st, 4, flags);
		ret = cache_run(cache, st);
		id = sqlite3_last_insert_rowid(cache->db);
	}
	if (ret == 0 && id_r != NULL)
		*id_r = id;
out:
	pthread_mutex_unlock(&cache->lock);
	return ret;
}

int cache_folder_get(struct cache *cache, int64_t id, struct cache_folder *f_r)
{
	sqlite3_stmt *st;
	int ret;

	memset(f_r, 0, sizeof(*f_r));
	pthread_mutex_lock(&cache->lock);
	st = cache_stmt(cache, ST_FOLDER_GET);
	sqlite3_bind_int64(st, 1, id);
	ret = cache_folder_row(cache, st, f_r);
	pthread_mutex_unlock(&cache->lock);
	return ret;
}

int cache_folder_lookup(struct cache *cache, int64_t parent_id,
			const char *name, struct cache_folder *f_r)
{
	sqlite3_stmt *st;
	int ret;

	memset(f_r, 0, sizeof(*f_r));
	if (name == NULL)
		return -EINVAL;
	pthread_mutex_lock(&cache->lock);
	st = cache_stmt(cache, ST_FOLDER_LOOKUP);
	sqlite3_bind_int64(st, 1, parent_id);
	cache_bind_text(st, 2, name);
	ret = cache_folder_row(cache, st, f_r);
	pthread_mutex_unlock(&cache->lock);
	return ret;
}

int cache_folder_by_server_name(struct cache *cache, const char *server_name,
				struct cache_folder *f_r)
{
	sqlite3_stmt *st;
	int ret;

	memset(f_r, 0, sizeof(*f_r));
	if (server_name == NULL)
		return -EINVAL;
	pthread_mutex_lock(&cache->lock);
	st = cache_stmt(cache, ST_FOLDER_BY_SERVER);
	cache_bind_text(st, 1, server_name);
	ret = cache_folder_row(cache, st, f_r);
	pthread_mutex_unlock(&cache->lock);
	return ret;
}

int cache_folder_list(struct cache *cache, struct cache_folder **folders_r,
		      size_t *count_r)
{
	int ret;

	*folders_r = NULL;
	*count_r = 0;
	pthread_mutex_lock(&cache->lock);
	ret = cache_folder_rows(cache, cache_stmt(cache, ST_FOLDER_ALL),
				folders_r, count_r);
	pthread_mutex_unlock(&cache->lock);
	return ret;
}

int cache_folder_children(struct cache *cache, int64_t parent_id,
			  int64_t after_id, size_t limit,
			  struct cache_folder **folders_r, size_t *count_r)
{
	sqlite3_stmt *st;
	int ret;

	*folders_r = NULL;
	*count_r = 0;
	if (limit == 0)
		return 0;
	pthread_mutex_lock(&cache->lock);
	st = cache_stmt(cache, ST_FOLDER_CHILDREN);
	sqlite3_bind_int64(st, 1, parent_id);
	sqlite3_bind_int64(st, 2, after_id);
	sqlite3_bind_int64(st, 3, cache_limit(limit));
	ret = cache_folder_rows(cache, st, folders_r, count_r);
	pthread_mutex_unlock(&cache->lock);
	return ret;
}

int cache_folder_set_state(struct cache *cache, int64_t id,
			   uint32_t uidvalidity, uint32_t uidnext,
			   uint64_t highestmodseq, int64_t last_sync)
{
	sqlite3_stmt *st;
	int ret;

	pthread_mutex_lock(&cache->lock);
	st = cache_stmt(cache, ST_FOLDER_SET_STATE);
	sqlite3_bind_int64(st, 1, id);
	sqlite3_bind_int64(st, 2, uidvalidity);
	sqlite3_bind_int64(st, 3, uidnext);
	sqlite3_bind_int64(st, 4, (sqlite3_int64)highestmodseq);
	sqlite3_bind_int64(st, 5, last_sync);
	ret = cache_run_one(cache, st);
	pthread_mutex_unlock(&cache->lock);
	return ret;
}

/* Drop a folder's messages and bodies; with delete also the folder, else
 * reset its sync state.  Files go first: a crash in between leaves rows
 * that say cached for missing files, which cache_body_open() repairs,
 * never a file that a later message of the same UID could be served. */
static int cache_folder_drop(struct cache *cache, int64_t id, bool delete)
{
	sqlite3_stmt *st;
	uint64_t *total;
	int64_t bytes = 0;
	int ret;

	pthread_mutex_lock(&cache->lock);
	if (!cache_folder_exists(cache, id)) {
		ret = -ENOENT;
		goto out;
	}
	total = cache_total(cache, id);
	st = cache_stmt(cache, ST_FOLDER_BYTES);
	sqlite3_bind_int64(st, 1, id);
	if ((ret = cache_query_int(cache, st, &bytes)) < 0)
		goto out;
	cache_body_dir_remove(cache, id);

	if ((ret = cache_begin_txn(cache)) < 0)
		goto out;
	st = cache_stmt(cache, ST_MSG_DELETE_FOLDER);
	sqlite3_bind_int64(st, 1, id);
	if ((ret = cache_run(cache, st)) < 0)
		goto rollback;
	if (delete) {
		st = cache_stmt(cache, ST_FOLDER_DELETE);
		sqlite3_bind_int64(st, 1, id);
	} else {
		st = cache_stmt(cache, ST_FOLDER_SET_STATE);
		sqlite3_bind_int64(st, 1, id);
		sqlite3_bind_int64(st, 2, 0);
		sqlite3_bind_int64(st, 3, 0);
		sqlite3_bind_int64(st, 4, 0);
		sqlite3_bind_int64(st, 5, 0);
	}
	if ((ret = cache_run(cache, st)) < 0)
		goto rollback;
	if ((ret = cache_commit_txn(cache)) < 0)
		goto out;
	if (bytes > 0)
		cache_total_sub(total, (uint64_t)bytes);
	goto out;

rollback:
	cache_rollback_txn(cache);
out:
	pthread_mutex_unlock(&cache->lock);
	return ret;
}

int cache_folder_delete(struct cache *cache, int64_t id)
{
	return cache_folder_drop(cache, id, true);
}

int cache_folder_reset(struct cache *cache, int64_t id)
{
	return cache_folder_drop(cache, id, false);
}

void cache_folder_clear(struct cache_folder *f)
{
	if (f == NULL)
		return;
	free(f->name);
	free(f->server_name);
	f->name = NULL;
	f->server_name = NULL;
}

void cache_folder_list_free(struct cache_folder *folders, size_t count)
{
	size_t i;

	for (i = 0; i < count; i++)
		cache_folder_clear(&folders[i]);
	free(folders);
}

/* ---- messages ---- */

/* Is "BASE.eml" (n == 1) or "BASE (n).eml" taken in the folder?  1 yes,
 * 0 no (the candidate is left in name), or -errno. */
static int cache_msg_suffix_taken(struct cache *cache, sqlite3_stmt *st, int64_t folder_id,
				  const char *base, uint64_t n, char *name, size_t size)
{
	int ret;

	if (n == 1)
		snprintf(name, size, "%s.eml", base);
	else
		snprintf(name, size, "%s (%" PRIu64 ").eml", base, n);
	if ((ret = cache_name_check(name)) < 0)
		return ret;
	sqlite3_bind_int64(st, 1, folder_id);
	cache_bind_text(st, 2, name);
	ret = cache_step(cache, st);
	cache_stmt_done(st);
	return ret < 0 ? ret : ret > 0;
}

/* "BASE.eml", else "BASE (2).eml", else a free "BASE (n).eml": n is found
 * by doubling to a free suffix, then halving back to the lowest free one
 * above a taken one, so 10,000 messages of one minute, sender and subject
 * cost O(log n) lookups each, not one per suffix taken (the cache lock is
 * held).  A gap a deleted message left further down may stay unused.
 * Without a base the UID stands in for it. */
static int cache_msg_choose_name(struct cache *cache, int64_t folder_id,
				 uint32_t uid, const char *base,
				 char **name_r)
{
	sqlite3_stmt *st = cache_stmt(cache, ST_MSG_NAME_TAKEN);
	const uint64_t last = (uint64_t)UINT32_MAX + 1;
	uint64_t lo = 2, hi = 0;
	char uid_base[16];
	size_t size;
	char *name;
	int ret;

	if (base == NULL || *base == '\0') {
		snprintf(uid_base, sizeof(uid_base), "%" PRIu32, uid);
		base = uid_base;
	}
	size = strlen(base) + sizeof(" (18446744073709551615).eml");
	name = malloc(size);
	if (name == NULL)
		return -ENOMEM;
	ret = cache_msg_suffix_taken(cache, st, folder_id, base, 1, name, size);
	if (ret == 1)
		ret = cache_msg_suffix_taken(cache, st, folder_id, base, 2, name, size);
	/* Taken: lo; free: hi.  Double until a free one... */
	while (ret == 1 && lo < last) {
		hi = lo * 2 > last ? last : lo * 2;
		ret = cache_msg_suffix_taken(cache, st, folder_id, base, hi, name, size);
		if (ret == 1)
			lo = hi;
	}
	if (ret == 1)
		ret = -EEXIST;
	/* ... then the lowest free one above a taken one. */
	while (ret == 0 && hi > lo + 1) {
		uint64_t mid = lo + (hi - lo) / 2;

		ret = cache_msg_suffix_taken(cache, st, folder_id, base, mid, name, size);
		if (ret == 1) {
			lo = mid;
			ret = 0;
		} else if (ret == 0) {
			hi = mid;
		}
	}
	if (ret == 0 && hi)
		ret = cache_msg_suffix_taken(cache, st, folder_id, base, hi, name, size);
	if (ret != 0) {
		free(name);
		return ret < 0 ? ret : -EEXIST;
	}
	*name_r = name;
	return 0;
}

static int cache_msg_name_of(struct cache *cache, int64_t folder_id,
			     uint32_t uid, char **name_r)
{
	sqlite3_stmt *st = cache_stmt(cache, ST_MSG_NAME_OF);
	int ret;

	cache_bind_key(st, folder_id, uid);
	ret = cache_step(cache, st);
	if (ret == 1)
		ret = cache_col_str(st, 0, name_r);
	else if (ret == 0)
		ret = -ENOENT;
	cache_stmt_done(st);
	return ret;
}

int cache_msg_put(struct cache *cache, const struct cache_msg *m,
		  const char *base, char **name_r)
{
	const char *flags = m->flags != NULL ? m->flags : "";
	const char *name = m->name;
	char *chosen = NULL;
	sqlite3_stmt *st;
	int ret;

	if (name_r != NULL)
		*name_r = NULL;
	if (m->folder_id <= 0)
		return -EINVAL;
	if (name != NULL && (ret = cache_name_check(name)) < 0)
		return ret;

	pthread_mutex_lock(&cache->lock);
	if (name == NULL) {
		/* The common case of a metadata refresh: one UPDATE, and the
		 * row keeps its name. */
		st = cache_stmt(cache, ST_MSG_REFRESH);
		cache_bind_key(st, m->folder_id, m->uid);
		sqlite3_bind_int64(st, 3, (sqlite3_int64)m->size);
		sqlite3_bind_int64(st, 4, m->mtime);
		cache_bind_text(st, 5, flags);
		cache_bind_text(st, 6, m->message_id);
		sqlite3_bind_int64(st, 7, (sqlite3_int64)m->modseq);
		ret = cache_run_one(cache, st);
		if (ret == 0) {
			if (name_r != NULL)
				ret = cache_msg_name_of(cache, m->folder_id,
							m->uid, name_r);
			goto out;
		}
		if (ret != -ENOENT)
			goto out;
	}
	if (!cache_folder_exists(cache, m->folder_id)) {
		ret = -ENOENT;
		goto out;
	}
	if (name == NULL) {
		ret = cache_msg_choose_name(cache, m->folder_id, m->uid, base,
					    &chosen);
		if (ret < 0)
			goto out;
		name = chosen;
	}
	st = cache_stmt(cache, ST_MSG_UPSERT);
	cache_bind_key(st, m->folder_id, m->uid);
	cache_bind_text(st, 3, name);
	sqlite3_bind_int64(st, 4, (sqlite3_int64)m->size);
	sqlite3_bind_int64(st, 5, m->mtime);
	cache_bind_text(st, 6, flags);
	cache_bind_text(st, 7, m->message_id);
	sqlite3_bind_int64(st, 8, (sqlite3_int64)m->modseq);
	sqlite3_bind_int(st, 9, m->pinned ? 1 : 0);
	ret = cache_run(cache, st);
	if (ret < 0 || name_r == NULL)
		goto out;
	if (chosen != NULL) {
		*name_r = chosen;
		chosen = NULL;
	} else if ((*name_r = strdup(name)) == NULL) {
		ret = -ENOMEM;
	}
out:
	pthread_mutex_unlock(&cache->lock);
	free(chosen);
	return ret;
}

int cache_msg_get(struct cache *cache, int64_t folder_id, uint32_t uid,
		  struct cache_msg *m_r)
{
	sqlite3_stmt *st;
	int ret;

	memset(m_r, 0, sizeof(*m_r));
	pthread_mutex_lock(&cache->lock);
	st = cache_stmt(cache, ST_MSG_GET);
	cache_bind_key(st, folder_id, uid);
	ret = cache_msg_row(cache, st, m_r);
	pthread_mutex_unlock(&cache->lock);
	return ret;
}

int cache_msg_lookup(struct cache *cache, int64_t folder_id, const char *name,
		     struct cache_msg *m_r)
{
	sqlite3_stmt *st;
	int ret;

	memset(m_r, 0, sizeof(*m_r));
	if (name == NULL)
		return -EINVAL;
	pthread_mutex_lock(&cache->lock);
	st = cache_stmt(cache, ST_MSG_LOOKUP);
	sqlite3_bind_int64(st, 1, folder_id);
	cache_bind_text(st, 2, name);
	ret = cache_msg_row(cache, st, m_r);
	pthread_mutex_unlock(&cache->lock);
	return ret;
}

int cache_msg_list(struct cache *cache, int64_t folder_id, uint32_t after_uid,
		   size_t limit, struct cache_msg **msgs_r, size_t *count_r)
{
	struct cache_msg *msgs = NULL;
	size_t count = 0, cap = 0;
	sqlite3_stmt *st;
	int ret;

	*msgs_r = NULL;
	*count_r = 0;
	if (limit == 0)
		return 0;
	pthread_mutex_lock(&cache->lock);
	st = cache_stmt(cache, ST_MSG_LIST);
	sqlite3_bind_int64(st, 1, folder_id);
	sqlite3_bind_int64(st, 2, after_uid);
	sqlite3_bind_int64(st, 3, cache_limit(limit));
	while ((ret = cache_step(cache, st)) == 1) {
		ret = cache_grow((void **)&msgs, &cap, count, sizeof(*msgs));
		if (ret < 0)
			break;
		ret = cache_read_msg(st, &msgs[count]);
		if (ret < 0)
			break;
		count++;
	}
	cache_stmt_done(st);
	pthread_mutex_unlock(&cache->lock);
	if (ret < 0) {
		cache_msg_list_free(msgs, count);
		return ret;
	}
	*msgs_r = msgs;
	*count_r = count;
	return 0;
}

int cache_msg_uids(struct cache *cache, int64_t folder_id, uint32_t **uids_r,
		   size_t *count_r)
{
	sqlite3_stmt *st;
	int ret;

	*uids_r = NULL;
	*count_r = 0;
	pthread_mutex_lock(&cache->lock);
	st = cache_stmt(cache, ST_MSG_UIDS);
	sqlite3_bind_int64(st, 1, folder_id);
	ret = cache_uid_rows(cache, st, uids_r, count_r);
	pthread_mutex_unlock(&cache->lock);
	return ret;
}

int cache_msg_uncached(struct cache *cache, int64_t folder_id,
		       uint32_t after_uid, size_t limit, uint32_t **uids_r,
		       size_t *count_r)
{
	sqlite3_stmt *st;
	int ret;

	*uids_r = NULL;
	*count_r = 0;
	if (limit == 0)
		return 0;
	pthread_mutex_lock(&cache->lock);
	st = cache_stmt(cache, ST_MSG_UNCACHED);
	sqlite3_bind_int64(st, 1, folder_id);
	sqlite3_bind_int64(st, 2, after_uid);
	sqlite3_bind_int64(st, 3, cache_limit(limit));
	ret = cache_uid_rows(cache, st, uids_r, count_r);
	pthread_mutex_unlock(&cache->lock);
	return ret;
}

size_t cache_msg_count(struct cache *cache, int64_t folder_id)
{
	sqlite3_stmt *st;
	int64_t count = 0;

	pthread_mutex_lock(&cache->lock);
	st = cache_stmt(cache, ST_MSG_COUNT);
	sqlite3_bind_int64(st, 1, folder_id);
	if (cache_query_int(cache, st, &count) < 0)
		count = 0;
	pthread_mutex_unlock(&cache->lock);
	return (size_t)count;
}

int cache_msg_set_flags(struct cache *cache, int64_t folder_id, uint32_t uid,
			const char *flags, uint64_t modseq)
{
	sqlite3_stmt *st;
	int ret;

	pthread_mutex_lock(&cache->lock);
	st = cache_stmt(cache, ST_MSG_SET_FLAGS);
	cache_bind_key(st, folder_id, uid);
	cache_bind_text(st, 3, flags != NULL ? flags : "");
	sqlite3_bind_int64(st, 4, (sqlite3_int64)modseq);
	ret = cache_run_one(cache, st);
	pthread_mutex_unlock(&cache->lock);
	return ret;
}

int cache_msg_set_size(struct cache *cache, int64_t folder_id, uint32_t uid,
		       uint64_t size)
{
	sqlite3_stmt *st;
	uint64_t old_size;
	bool cached;
	int ret;

	pthread_mutex_lock(&cache->lock);
	ret = cache_body_state(cache, folder_id, uid, &cached, &old_size);
	if (ret < 0)
		goto out;
	st = cache_stmt(cache, ST_MSG_SET_SIZE);
	cache_bind_key(st, folder_id, uid);
	sqlite3_bind_int64(st, 3, (sqlite3_int64)size);
	ret = cache_run_one(cache, st);
	/* The total is the sum of cached rows' sizes, whatever they say. */
	if (ret == 0 && cached) {
		uint64_t *total = cache_total(cache, folder_id);

		*total = *total - old_size + size;
	}
out:
	pthread_mutex_unlock(&cache->lock);
	return ret;
}

int cache_msg_rename(struct cache *cache, int64_t folder_id, uint32_t uid,
		     const char *name)
{
	sqlite3_stmt *st;
	int ret;

	if ((ret = cache_name_check(name)) < 0)
		return ret;
	pthread_mutex_lock(&cache->lock);
	st = cache_stmt(cache, ST_MSG_RENAME);
	cache_bind_key(st, folder_id, uid);
	cache_bind_text(st, 3, name);
	ret = cache_run_one(cache, st);
	pthread_mutex_unlock(&cache->lock);
	return ret;
}

int cache_msg_set_pinned(struct cache *cache, int64_t folder_id, uint32_t uid,
			 bool pinned)
{
	sqlite3_stmt *st;
	int ret;

	pthread_mutex_lock(&cache->lock);
	st = cache_stmt(cache, ST_MSG_SET_PINNED);
	cache_bind_key(st, folder_id, uid);
	sqlite3_bind_int(st, 3, pinned ? 1 : 0);
	ret = cache_run_one(cache, st);
	pthread_mutex_unlock(&cache->lock);
	return ret;
}

int cache_msg_delete(struct cache *cache, int64_t folder_id, uint32_t uid)
{
	sqlite3_stmt *st;
	uint64_t size;
	bool cached;
	int ret;

	pthread_mutex_lock(&cache->lock);
	ret = cache_body_state(cache, folder_id, uid, &cached, &size);
	if (ret < 0)
		goto out;
	/* File first, as in cache_folder_drop(). */
	cache_body_unlink(cache, folder_id, uid);
	st = cache_stmt(cache, ST_MSG_DELETE);
	cache_bind_key(st, folder_id, uid);
	ret = cache_run_one(cache, st);
	if (ret == 0 && cached)
		cache_total_sub(cache_total(cache, folder_id), size);
out:
	pthread_mutex_unlock(&cache->lock);
	return ret;
}

void cache_msg_clear(struct cache_msg *m)
{
	if (m == NULL)
		return;
	free(m->name);
	free(m->flags);
	free(m->message_id);
	m->name = NULL;
	m->flags = NULL;
	m->message_id = NULL;
}

void cache_msg_list_free(struct cache_msg *msgs, size_t count)
{
	size_t i;

	for (i = 0; i < count; i++)
		cache_msg_clear(&msgs[i]);
	free(msgs);
}

/* ---- bodies ---- */

/* Whether the body is the only copy: pinned, or in a local folder. */
static bool cache_body_keep(struct cache *cache, int64_t folder_id,
			    uint32_t uid)
{
	sqlite3_stmt *st = cache_stmt(cache, ST_BODY_KEEP);
	int64_t keep = 1;

	cache_bind_key(st, folder_id, uid);
	/* In doubt (a failed query), keep it. */
	if (cache_query_int(cache, st, &keep) < 0)
		return true;
	return keep != 0;
}

/* Hard-link a damaged body into DIR/quarantine/F-UID, so that its bytes
 * as found survive whatever happens to the message later.  1 when the
 * link was made now, 0 when it was there already, -errno. */
static int cache_quarantine(struct cache *cache, const char *path,
			    int64_t folder_id, uint32_t uid, char *name,
			    size_t size)
{
	int qfd, ret = 1;

	snprintf(name, size, "%" PRId64 "-%" PRIu32, folder_id, uid);
	if (mkdirat(cache->dir_fd, CACHE_QUARANTINE_NAME, 0700) < 0 &&
	    errno != EEXIST)
		return -errno;
	qfd = openat(cache->dir_fd, CACHE_QUARANTINE_NAME,
		     O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (qfd < 0)
		return -errno;
	if (linkat(cache->bodies_fd, path, qfd, name, 0) < 0)
		ret = errno == EEXIST ? 0 : -errno;
	else if (fsync(qfd) < 0)
		ret = -errno;
	close(qfd);
	return ret;
}

/* A body that is the only copy has the wrong size: it stays, served as
 * it is, and a link to it goes to quarantine/.  The row keeps the size
 * that was stored, so cache_body_verify() goes on failing (the POP3
 * fetcher then never deletes the server's copy). */
static void cache_body_kept_damaged(struct cache *cache, int64_t folder_id,
				    uint32_t uid, const char *path,
				    uint64_t row_size, uint64_t file_size)
{
	char qname[48];
	int r = cache_quarantine(cache, path, folder_id, uid, qname,
				 sizeof(qname));

	if (r == 0)
		return; /* said when it was quarantined */
	if (r < 0)
		log_error("cache %s: body bodies/%s has %" PRIu64 " bytes, %"
			  PRIu64 " were stored; it is the only copy: kept and "
			  "served as it is (no copy in " CACHE_QUARANTINE_NAME
			  "/: %s)", cache->dir, path, file_size, row_size,
			  strerror(-r));
	else
		log_warn("cache %s: body bodies/%s has %" PRIu64 " bytes, %"
			 PRIu64 " were stored; it is the only copy: kept and "
			 "served as it is, a copy is in " CACHE_QUARANTINE_NAME
			 "/%s", cache->dir, path, file_size, row_size, qname);
}

/* Caller holds cache->lock.  The row's body size and its path under
 * bodies/: 0, -ENOENT when the body is not cached, or an error. */
static int cache_body_locate(struct cache *cache, int64_t folder_id, uint32_t uid,
			     char path[48], uint64_t *size_r)
{
	bool cached;
	int ret = cache_body_state(cache, folder_id, uid, &cached, size_r);

	if (ret < 0)
		return ret;
	if (!cached)
		return -ENOENT;
	cache_body_path(path, 48, folder_id, uid);
	return 0;
}

int cache_body_verify(struct cache *cache, int64_t folder_id, uint32_t uid)
{
	char path[48];
	struct stat st;
	uint64_t size;
	int ret;

	pthread_mutex_lock(&cache->lock);
	ret = cache_body_locate(cache, folder_id, uid, path, &size);
	if (ret < 0)
		goto out;
	if (fstatat(cache->bodies_fd, path, &st, AT_SYMLINK_NOFOLLOW) < 0)
		ret = -errno;
	else if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size != size)
		ret = -EIO;
out:
	pthread_mutex_unlock(&cache->lock);
	return ret;
}

int cache_body_open(struct cache *cache, int64_t folder_id, uint32_t uid)
{
	char path[48];
	uint64_t size;
	int ret, fd;

	/* Under the lock, so that eviction cannot unlink it between the
	 * check and the open. */
	pthread_mutex_lock(&cache->lock);
	ret = cache_body_locate(cache, folder_id, uid, path, &size);
	if (ret < 0)
		goto out;
	fd = openat(cache->bodies_fd, path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0) {
		ret = -errno;
		if (ret == -ENOENT) {
			/* Removed behind our back: the index was wrong. */
			log_warn("cache %s: body bodies/%s vanished; "
				 "marking it not cached",
				 cache->dir, path);
			cache_body_dropped(cache, folder_id, uid, size);
		} else {
			log_error("cache %s: cannot open bodies/%s: %s",
				  cache->dir, path, strerror(-ret));
		}
		goto out;
	}
	/* A volatile store cut short by a crash leaves a file whose size
	 * is not the row's: never serve it.  Unless it is the only copy,
	 * which is never deleted: what is there is served. */
	struct stat st;
	if (fstat(fd, &st) < 0) {
		ret = -errno;
		close(fd);
		goto out;
	}
	if ((uint64_t)st.st_size != size &&
	    !cache_body_keep(cache, folder_id, uid)) {
		log_warn("cache %s: body bodies/%s is damaged; fetching it again",
			 cache->dir, path);
		close(fd);
		unlinkat(cache->bodies_fd, path, 0);
		cache_body_dropped(cache, folder_id, uid, size);
		ret = -ENOENT;
		goto out;
	}
	if ((uint64_t)st.st_size != size)
		cache_body_kept_damaged(cache, folder_id, uid, path, size,
					(uint64_t)st.st_size);
	cache_touch(cache, folder_id, uid);
	ret = fd;
out:
	pthread_mutex_unlock(&cache->lock);
	return ret;
}

/* Mark the row cached.  The commit fsyncs the WAL (synchronous=FULL for
 * this one): when the call returns, the body and the row that makes it
 * visible survive a power loss, which the POP3 fetcher relies on before
 * it sends DELE.  The WAL is sequential, so the rows put before (the
 * message itself) become durable with it. */
static int cache_body_mark_stored(struct cache *cache, int64_t folder_id,
				  uint32_t uid, size_t len, bool durable)
{
	sqlite3_stmt *st = cache_stmt(cache, ST_BODY_STORED);
	bool full = durable && cache->batch_depth == 0;
	int ret;

	/* The level cannot change inside a transaction: in a batch,
	 * cache_commit() makes it durable instead.  A PRAGMA acts when
	 * prepared, so it cannot be a kept statement. */
	if (full &&
	    (ret = cache_exec_sql(cache, "PRAGMA synchronous = FULL")) < 0)
		return ret;
	cache_bind_key(st, folder_id, uid);
	sqlite3_bind_int64(st, 3, (sqlite3_int64)len);
	sqlite3_bind_int64(st, 4, cache_tick(cache));
	ret = cache_run_one(cache, st);
	if (full)
		cache_exec_sql(cache, "PRAGMA synchronous = NORMAL");
	else if (durable)
		cache->batch_sync = true;
	return ret;
}

static int cache_body_store_as(struct cache *cache, int64_t folder_id,
			       uint32_t uid, const void *data, size_t len,
			       bool durable)
{
	char tmp[48], fname[16];
	uint64_t old_size = 0, *total;
	bool old_cached = false, have_tmp;
	int dir_fd = -1, ret;

	if (folder_id <= 0 || (data == NULL && len > 0))
		return -EINVAL;
	ret = cache_body_write_tmp(cache, folder_id, uid, data, len, durable,
				   &dir_fd, tmp, sizeof(tmp));
	if (ret < 0)
		return ret;
	have_tmp = true;
	snprintf(fname, sizeof(fname), "%" PRIu32, uid);

	pthread_mutex_lock(&cache->lock);
	ret = cache_body_state(cache, folder_id, uid, &old_cached, &old_size);
	if (ret < 0)
		goto out;
	if (renameat(dir_fd, tmp, dir_fd, fname) < 0) {
		ret = -errno;
		log_error("cache %s: cannot rename body to bodies/%" PRId64
			  "/%s: %s", cache->dir, folder_id, fname,
			  strerror(-ret));
		goto out;
	}
	have_tmp = false;
	/* The rename must be on disk before the row says cached. */
	if (durable && fsync(dir_fd) < 0) {
		ret = -errno;
		log_error("cache %s: cannot sync bodies/%" PRId64 ": %s",
			  cache->dir, folder_id, strerror(-ret));
		goto out;
	}
	ret = cache_body_mark_stored(cache, folder_id, uid, len, durable);
	if (ret < 0)
		goto out;
	total = cache_total(cache, folder_id);
	if (old_cached)
		cache_total_sub(total, old_size);
	*total += len;
	cache_evict(cache, folder_id, uid);
out:
	if (have_tmp)
		unlinkat(dir_fd, tmp, 0);
	pthread_mutex_unlock(&cache->lock);
	close(dir_fd);
	return ret;
}

int cache_body_store(struct cache *cache, int64_t folder_id, uint32_t uid,
		     const void *data, size_t len)
{
	return cache_body_store_as(cache, folder_id, uid, data, len, true);
}

int cache_body_store_volatile(struct cache *cache, int64_t folder_id,
			      uint32_t uid, const void *data, size_t len)
{
	return cache_body_store_as(cache, folder_id, uid, data, len, false);
}

uint64_t cache_bytes(struct cache *cache)
{
	uint64_t bytes;

	pthread_mutex_lock(&cache->lock);
	bytes = cache->body_bytes;
	pthread_mutex_unlock(&cache->lock);
	return bytes;
}

uint64_t cache_local_bytes(struct cache *cache)
{
	uint64_t bytes;

	pthread_mutex_lock(&cache->lock);
	bytes = cache->local_bytes;
	pthread_mutex_unlock(&cache->lock);
	return bytes;
}

/* ---- key/value ---- */

int cache_kv_get(struct cache *cache, const char *key, char **value_r)
{
	sqlite3_stmt *st;
	int ret;

	*value_r = NULL;
	if (key == NULL)
		return -EINVAL;
	pthread_mutex_lock(&cache->lock);
	st = cache_stmt(cache, ST_KV_GET);
	cache_bind_text(st, 1, key);
	ret = cache_step(cache, st);
	if (ret == 1)
		ret = cache_col_str(st, 0, value_r);
	else if (ret == 0)
		ret = -ENOENT;
	cache_stmt_done(st);
	pthread_mutex_unlock(&cache->lock);
	return ret;
}

/* A NULL value deletes the key. */
int cache_kv_set(struct cache *cache, const char *key, const char *value)
{
	sqlite3_stmt *st;
	int ret;

	if (key == NULL)
		return -EINVAL;
	pthread_mutex_lock(&cache->lock);
	st = cache_stmt(cache, value != NULL ? ST_KV_SET : ST_KV_DELETE);
	cache_bind_text(st, 1, key);
	if (value != NULL)
		cache_bind_text(st, 2, value);
	ret = cache_run(cache, st);
	pthread_mutex_unlock(&cache->lock);
	return ret;
}

/* Every key that starts with prefix (not SQL LIKE: '_' and '%' are
 * ordinary in UIDLs), as a range over the primary key. */
int cache_kv_keys(struct cache *cache, const char *prefix, char ***keys_r, size_t *n_r)
{
	size_t plen = strlen(prefix), n = 0, cap = 0;
	char **keys = NULL, *hi;
	sqlite3_stmt *st;
	int ret = 0, rc;

	*keys_r = NULL;
	*n_r = 0;
	if (plen == 0 || (unsigned char)prefix[plen - 1] == 0xff || !(hi = strdup(prefix)))
		return -EINVAL;
	hi[plen - 1]++;
	pthread_mutex_lock(&cache->lock);
	rc = sqlite3_prepare_v2(cache->db, "SELECT key FROM kv WHERE key >= ?1 AND key < ?2",
				-1, &st, NULL);
	if (rc != SQLITE_OK) {
		ret = cache_failed(cache, NULL, rc);
		goto out;
	}
	cache_bind_text(st, 1, prefix);
	cache_bind_text(st, 2, hi);
	while ((ret = cache_step(cache, st)) == 1) {
		if (n == cap) {
			size_t ncap = cap ? cap * 2 : 64;
			char **k = realloc(keys, ncap * sizeof(*k));

			if (!k) {
				ret = -ENOMEM;
				break;
			}
			keys = k;
			cap = ncap;
		}
		if ((ret = cache_col_str(st, 0, &keys[n])) < 0 || !keys[n]) {
			ret = ret < 0 ? ret : -EIO;
			break;
		}
		n++;
	}
	sqlite3_finalize(st);
out:
	pthread_mutex_unlock(&cache->lock);
	free(hi);
	if (ret < 0) {
		cache_kv_keys_free(keys, n);
		return ret;
	}
	*keys_r = keys;
	*n_r = n;
	return 0;
}

void cache_kv_keys_free(char **keys, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(keys[i]);
	free(keys);
}

/* ---- batches ---- */

/* End the outermost batch.  A failed COMMIT rolls the whole batch back;
 * the in-memory total had counted its bodies, so it is recounted. */
static int cache_batch_end(struct cache *cache)
{
	int ret = cache_run(cache, cache_stmt(cache, ST_COMMIT));

	if (ret < 0) {
		cache_run(cache, cache_stmt(cache, ST_ROLLBACK));
		cache_recount(cache);
	} else if (cache->batch_sync) {
		/* Bodies were stored in the batch under synchronous=NORMAL:
		 * a checkpoint syncs the WAL, so they are as durable as
		 * outside a batch when cache_commit() returns. */
		ret = cache_exec_sql(cache, "PRAGMA wal_checkpoint(PASSIVE)");
	}
	cache->batch_sync = false;
	return ret;
}

int cache_begin(struct cache *cache)
{
	int ret;

	pthread_mutex_lock(&cache->lock);
	if (cache->batch_depth == 0) {
		ret = cache_run(cache, cache_stmt(cache, ST_BEGIN));
		if (ret < 0) {
			pthread_mutex_unlock(&cache->lock);
			return ret;
		}
	}
	cache->batch_depth++;
	/* The lock stays held until the matching cache_commit(). */
	return 0;
}

int cache_commit(struct cache *cache)
{
	int ret = 0;

	pthread_mutex_lock(&cache->lock);
	if (cache->batch_depth == 0) {
		pthread_mutex_unlock(&cache->lock);
		return -EINVAL;
	}
	if (--cache->batch_depth == 0)
		ret = cache_batch_end(cache);
	/* This call's hold, then cache_begin()'s. */
	pthread_mutex_unlock(&cache->lock);
	pthread_mutex_unlock(&cache->lock);
	return ret;
}

/* ---- moving messages ---- */

/* bodies/F/ of a folder, created if needed; an fd, or -errno. */
static int cache_move_dir(struct cache *cache, int64_t folder_id)
{
	char dname[24];
	int fd;

	cache_folder_dir_name(dname, sizeof(dname), folder_id);
	if ((fd = cache_mkdirat_durable(cache->bodies_fd, dname)) < 0)
		return fd;
	fd = openat(cache->bodies_fd, dname,
		    O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	return fd < 0 ? -errno : fd;
}

/* The row moves in one UPDATE of its key; the body file is hard-linked
 * into the destination before the row commits and its old name removed
 * after, so at every instant the file the index names exists: a crash
 * leaves at most an extra link, which cache_open()'s sweep removes.  A
 * file system without hard links gets a rename, undone if the commit
 * fails.  Nothing is copied, however large the body. */
int cache_msg_move(struct cache *cache, int64_t folder_id, uint32_t uid,
		   int64_t to_folder_id, uint32_t to_uid, const char *name)
{
	static const char sql[] = "UPDATE messages SET folder_id = ?3, "
				  "uid = ?4, name = ?5 WHERE " MSG_KEY;
	char src[48], fname[16];
	sqlite3_stmt *st = NULL;
	char *cur_name = NULL;
	uint64_t size, to_size;
	bool cached, to_cached, linked = false, renamed = false, full;
	int dir_fd = -1, ret, rc;

	if (to_folder_id <= 0)
		return -EINVAL;
	if (name != NULL && (ret = cache_name_check(name)) < 0)
		return ret;
	pthread_mutex_lock(&cache->lock);
	ret = cache_body_state(cache, folder_id, uid, &cached, &size);
	if (ret < 0)
		goto out;
	if (folder_id == to_folder_id && uid == to_uid) {
		ret = -EINVAL;
		goto out;
	}
	if (!cache_folder_exists(cache, to_folder_id)) {
		ret = -ENOENT;
		goto out;
	}
	if (name == NULL) {
		ret = cache_msg_name_of(cache, folder_id, uid, &cur_name);
		if (ret < 0)
			goto out;
		name = cur_name;
	}
	/* Taken UID or name: the UPDATE would say so too, but only after
	 * the body had been linked. */
	ret = cache_body_state(cache, to_folder_id, to_uid, &to_cached,
			       &to_size);
	if (ret == 0) {
		ret = -EEXIST;
		goto out;
	}
	if (ret != -ENOENT)
		goto out;
	/* Within one folder (a new UID for the same message) the name may
	 * be its own. */
	if (folder_id == to_folder_id && cur_name == NULL &&
	    (ret = cache_msg_name_of(cache, folder_id, uid, &cur_name)) < 0)
		goto out;
	if (folder_id != to_folder_id || strcmp(cur_name, name) != 0) {
		st = cache_stmt(cache, ST_MSG_NAME_TAKEN);
		sqlite3_bind_int64(st, 1, to_folder_id);
		cache_bind_text(st, 2, name);
		ret = cache_step(cache, st);
		cache_stmt_done(st);
		st = NULL;
		if (ret != 0) {
			ret = ret > 0 ? -EEXIST : ret;
			goto out;
		}
	}

	if (cached) {
		cache_body_path(src, sizeof(src), folder_id, uid);
		snprintf(fname, sizeof(fname), "%" PRIu32, to_uid);
		dir_fd = cache_move_dir(cache, to_folder_id);
		if (dir_fd < 0) {
			ret = dir_fd;
			log_error("cache %s: cannot create bodies/%" PRId64
				  ": %s", cache->dir, to_folder_id,
				  strerror(-ret));
			goto out;
		}
		/* A leftover of a crash would make the link fail; no row
		 * names it (checked above). */
		unlinkat(dir_fd, fname, 0);
		if (linkat(cache->bodies_fd, src, dir_fd, fname, 0) == 0) {
			linked = true;
		} else if ((errno == EPERM || errno == EOPNOTSUPP ||
			    errno == EMLINK) &&
			   renameat(cache->bodies_fd, src, dir_fd, fname) == 0) {
			renamed = true;
		} else {
			ret = -errno;
			log_error("cache %s: cannot move bodies/%s to bodies/%"
				  PRId64 "/%s: %s", cache->dir, src,
				  to_folder_id, fname, strerror(-ret));
			goto out;
		}
		/* The new name must be on disk before the row says so. */
		if (fsync(dir_fd) < 0) {
			ret = -errno;
			log_error("cache %s: cannot sync bodies/%" PRId64
				  ": %s", cache->dir, to_folder_id,
				  strerror(-ret));
			goto out;
		}
	}

	/* As in cache_body_mark_stored(): synced at the commit, or in a
	 * batch by cache_commit(). */
	full = cache->batch_depth == 0;
	if (full &&
	    (ret = cache_exec_sql(cache, "PRAGMA synchronous = FULL")) < 0)
		goto out;
	if ((ret = cache_begin_txn(cache)) < 0)
		goto out_sync;
	rc = sqlite3_prepare_v2(cache->db, sql, -1, &st, NULL);
	if (rc != SQLITE_OK) {
		ret = cache_failed(cache, NULL, rc);
		cache_rollback_txn(cache);
		goto out_sync;
	}
	cache_bind_key(st, folder_id, uid);
	sqlite3_bind_int64(st, 3, to_folder_id);
	sqlite3_bind_int64(st, 4, to_uid);
	cache_bind_text(st, 5, name);
	ret = cache_run_one(cache, st);
	sqlite3_finalize(st);
	st = NULL;
	if (ret < 0)
		cache_rollback_txn(cache);
	else
		ret = cache_commit_txn(cache);
	if (ret == 0 && cached) {
		/* Into or out of a local folder: into the other total. */
		uint64_t *from = cache_total(cache, folder_id);
		uint64_t *to = cache_total(cache, to_folder_id);

		cache_total_sub(from, size);
		*to += size;
	}
	if (!full)
		cache->batch_sync = true;
out_sync:
	if (full)
		cache_exec_sql(cache, "PRAGMA synchronous = NORMAL");
	if (ret == 0 && linked) {
		/* Committed: the old name is an orphan now. */
		cache_body_unlink(cache, folder_id, uid);
		linked = false;
	}
	renamed = renamed && ret < 0;
out:
	if (linked)
		unlinkat(dir_fd, fname, 0);
	if (renamed && renameat(dir_fd, fname, cache->bodies_fd, src) < 0)
		log_error("cache %s: cannot move bodies/%" PRId64 "/%s back "
			  "to bodies/%s: %s", cache->dir, to_folder_id, fname,
			  src, strerror(errno));
	if (dir_fd >= 0)
		close(dir_fd);
	pthread_mutex_unlock(&cache->lock);
	free(cur_name);
	return ret;
}

/* ---- renaming folders ---- */

int cache_folder_rename(struct cache *cache, int64_t id, int64_t parent_id,
			const char *name, const char *server_name, char delim)
{
	sqlite3_stmt *get = NULL, *upd = NULL;
	char *old = NULL;
	size_t old_len;
	int ret, rc;

	if (!name || !*name || strchr(name, '/') || !strcmp(name, ".") ||
	    !strcmp(name, ".."))
		return -EINVAL;
	pthread_mutex_lock(&cache->lock);
	rc = sqlite3_prepare_v2(cache->db,
				"SELECT server_name FROM folders WHERE id = ?1", -1,
				&get, NULL);
	if (rc != SQLITE_OK) {
		ret = -EIO;
		goto out;
	}
	sqlite3_bind_int64(get, 1, id);
	if (sqlite3_step(get) != SQLITE_ROW) {
		ret = -ENOENT;
		goto out;
	}
	old = strdup((const char *)sqlite3_column_text(get, 0));
	if (!old) {
		ret = -ENOMEM;
		goto out;
	}
	old_len = strlen(old);
	if ((ret = cache_exec_sql(cache, "SAVEPOINT folder_rename")) < 0)
		goto out;
	/* The folder itself: new place, name and server name. */
	rc = sqlite3_prepare_v2(cache->db,
				"UPDATE folders SET parent_id = ?2, name = ?3, "
				"server_name = ?4 WHERE id = ?1", -1, &upd, NULL);
	if (rc == SQLITE_OK) {
		sqlite3_bind_int64(upd, 1, id);
		sqlite3_bind_int64(upd, 2, parent_id);
		sqlite3_bind_text(upd, 3, name, -1, SQLITE_STATIC);
		sqlite3_bind_text(upd, 4, server_name, -1, SQLITE_STATIC);
		rc = sqlite3_step(upd);
		rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
		sqlite3_finalize(upd);
		upd = NULL;
	}
	/* Its descendants keep their place; their server names follow the
	 * new prefix (the server renamed them with it). */
	if (rc == SQLITE_OK && delim) {
		char d[2] = { delim, '\0' };

		rc = sqlite3_prepare_v2(cache->db,
					"UPDATE folders SET server_name = ?2 || "
					"substr(server_name, ?3) WHERE "
					"substr(server_name, 1, ?4) = ?1 || ?5",
					-1, &upd, NULL);
		if (rc == SQLITE_OK) {
			sqlite3_bind_text(upd, 1, old, -1, SQLITE_STATIC);
			sqlite3_bind_text(upd, 2, server_name, -1, SQLITE_STATIC);
			sqlite3_bind_int64(upd, 3, (sqlite3_int64)old_len + 1);
			sqlite3_bind_int64(upd, 4, (sqlite3_int64)old_len + 1);
			sqlite3_bind_text(upd, 5, d, -1, SQLITE_TRANSIENT);
			rc = sqlite3_step(upd);
			rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
			sqlite3_finalize(upd);
		}
	}
	if (rc != SQLITE_OK) {
		ret = rc == SQLITE_CONSTRAINT ? -EEXIST : -EIO;
		cache_exec_sql(cache, "ROLLBACK TO folder_rename");
		cache_exec_sql(cache, "RELEASE folder_rename");
		goto out;
	}
	ret = cache_exec_sql(cache, "RELEASE folder_rename");
out:
	sqlite3_finalize(get);
	free(old);
	pthread_mutex_unlock(&cache->lock);
	return ret;
}

/* ---- moving a store ---- */

/* What makes a store, the index last: while the old directory still has
 * it, the move is not done. */
static const char *const cache_store_entries[] = {
	CACHE_BODIES_NAME, CACHE_INDEX_NAME "-wal", CACHE_INDEX_NAME "-shm",
	CACHE_INDEX_NAME,
};

static bool cache_entry_exists(int dir_fd, const char *name)
{
	struct stat st;

	return fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0;
}

/* The documented fault-injection hook (MAILFS_TEST_CRASH_AT). */
static void cache_crash_point(const char *where)
{
	const char *at = getenv("MAILFS_TEST_CRASH_AT");

	if (at != NULL && strcmp(at, where) == 0) {
		log_info("MAILFS_TEST_CRASH_AT=%s: killing the daemon", where);
		raise(SIGKILL);
	}
}

/* Whether the index in dir has a folder of this server name: only a
 * store of the right kind is moved (a cache_dir given by mistake, an IMAP
 * account's, stays where it is).  Read-only: nothing is changed. */
static bool cache_store_has_folder(const char *dir, const char *server_name)
{
	sqlite3_stmt *st = NULL;
	sqlite3 *db = NULL;
	char *path = NULL;
	bool found = false;

	if (asprintf(&path, "%s/" CACHE_INDEX_NAME, dir) < 0)
		return false;
	if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
	    sqlite3_prepare_v2(db, "SELECT 1 FROM folders WHERE server_name = ?1",
			       -1, &st, NULL) == SQLITE_OK) {
		sqlite3_busy_timeout(db, CACHE_BUSY_TIMEOUT_MS);
		sqlite3_bind_text(st, 1, server_name, -1, SQLITE_STATIC);
		found = sqlite3_step(st) == SQLITE_ROW;
	}
	sqlite3_finalize(st);
	sqlite3_close(db);
	free(path);
	return found;
}

/* Rename the store's entries from from_fd into staging, index last. */
static int cache_store_move_entries(int from_fd, int staging_fd,
				    const char *from, const char **error_r)
{
	size_t i;

	for (i = 0; i < sizeof(cache_store_entries) /
			    sizeof(cache_store_entries[0]); i++) {
		const char *e = cache_store_entries[i];

		if (!cache_entry_exists(from_fd, e))
			continue;
		if (renameat(from_fd, e, staging_fd, e) < 0) {
			int ret = -errno;

			*error_r = cache_error(
				"cannot move %s/%s to the data directory: %s%s",
				from, e, strerror(-ret),
				ret == -EXDEV ? " (another file system: move "
						"the directory by hand, or give "
						"-o data_dir=DIR on its file "
						"system)" : "");
			return ret;
		}
		if (i == 0)
			cache_crash_point("store_move");
	}
	if (fsync(staging_fd) < 0 || fsync(from_fd) < 0) {
		*error_r = cache_error("cannot sync %s: %s", from,
				       strerror(errno));
		return -errno;
	}
	return 0;
}

bool cache_store_is_old(const char *from, const char *to, const char *folder)
{
	char *path = NULL;
	bool to_has;

	if (asprintf(&path, "%s/" CACHE_INDEX_NAME, to) < 0)
		return false;
	to_has = access(path, F_OK) == 0;
	free(path);
	if (to_has || asprintf(&path, "%s/" CACHE_INDEX_NAME, from) < 0)
		return false;
	to_has = access(path, F_OK) == 0; /* from's, now */
	free(path);
	return to_has && cache_store_has_folder(from, folder);
}

int cache_store_move(const char *from, const char *to, const char *folder,
		     const char **error_r)
{
	char *staging = NULL, *parent = NULL;
	struct stat fst, tst;
	int from_fd = -1, staging_fd = -1, to_fd, ret = 0;
	bool from_has, staged;

	from_fd = open(from, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (from_fd < 0)
		return 0; /* no old store */
	if (asprintf(&staging, "%s.moving", to) < 0) {
		staging = NULL;
		ret = -ENOMEM;
		goto out;
	}
	to_fd = open(to, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (to_fd >= 0) {
		bool same = fstat(from_fd, &fst) == 0 &&
			    fstat(to_fd, &tst) == 0 &&
			    fst.st_dev == tst.st_dev &&
			    fst.st_ino == tst.st_ino;
		bool to_has = cache_entry_exists(to_fd, CACHE_INDEX_NAME);

		close(to_fd);
		if (same)
			goto out;
		if (to_has) {
			if (cache_entry_exists(from_fd, CACHE_INDEX_NAME) &&
			    cache_store_has_folder(from, folder)) {
				*error_r = cache_error(
					"%s holds an archive of an earlier "
					"mailfs, and %s holds one already: "
					"mount with -o data_dir=%s to see the "
					"earlier one",
					from, to, from);
				ret = -EEXIST;
			}
			goto out;
		}
	}
	from_has = cache_entry_exists(from_fd, CACHE_INDEX_NAME);
	staged = access(staging, F_OK) == 0;
	if (from_has && !staged && !cache_store_has_folder(from, folder))
		goto out;
	if (!from_has && !staged)
		goto out;
	/* An earlier mailfs still running on it would lose its writes. */
	if (flock(from_fd, LOCK_EX | LOCK_NB) < 0) {
		ret = -errno;
		*error_r = cache_error("cannot move the store in %s to %s: %s",
				       from, to, errno == EWOULDBLOCK ?
				       "it is in use by another mailfs "
				       "(unmount it first)" : strerror(errno));
		goto out;
	}
	log_info("moving the store in %s (an archive is state, not cache) "
		 "to %s", from, to);
	parent = strdup(staging);
	if (parent == NULL) {
		ret = -ENOMEM;
		goto out;
	}
	if (strrchr(parent, '/') != NULL && strrchr(parent, '/') != parent)
		*strrchr(parent, '/') = '\0';
	if ((ret = cache_mkdirs(parent)) < 0 ||
	    (mkdir(staging, 0700) < 0 && errno != EEXIST) ||
	    (ret = cache_sync_parent(staging)) < 0 ||
	    (staging_fd = open(staging, O_RDONLY | O_DIRECTORY | O_CLOEXEC |
					       O_NOFOLLOW)) < 0) {
		ret = ret < 0 ? ret : -errno;
		*error_r = cache_error("cannot create %s: %s", staging,
				       strerror(-ret));
		goto out;
	}
	if ((ret = cache_store_move_entries(from_fd, staging_fd, from,
					    error_r)) < 0)
		goto out;
	/* One rename makes the whole store appear; an empty directory in
	 * its place is replaced. */
	if (rename(staging, to) < 0 || (ret = cache_sync_parent(to)) < 0) {
		ret = ret < 0 ? ret : -errno;
		*error_r = cache_error("cannot rename %s to %s: %s", staging,
				       to, strerror(-ret));
		goto out;
	}
out:
	if (ret == -ENOMEM)
		*error_r = cache_error("out of memory moving %s", from);
	if (staging_fd >= 0)
		close(staging_fd);
	close(from_fd); /* and its flock */
	free(staging);
	free(parent);
	return ret;
}
