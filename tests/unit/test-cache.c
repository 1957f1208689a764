/* test-cache.c: unit tests of the local store (cache/cache.c).
 *
 * Each test works in its own directory under a fresh temp dir, so the
 * tests do not see each other's state; everything is removed at the end.
 * The timing test prints how long 10,000 puts and lookups take, and
 * asserts only a generous bound, so a loaded machine does not fail it. */
#include "cache.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "check.h"

static char test_root[] = "/tmp/test-cache-XXXXXX";

/* A new directory path (not created) for one test. */
static char *test_dir(const char *name)
{
	char *path;

	if (asprintf(&path, "%s/%s", test_root, name) < 0)
		abort();
	return path;
}

static char *test_path(const char *dir, const char *rel)
{
	char *path;

	if (asprintf(&path, "%s/%s", dir, rel) < 0)
		abort();
	return path;
}

static int test_mode(const char *path)
{
	struct stat st;

	if (lstat(path, &st) < 0)
		return -1;
	return (int)(st.st_mode & 07777);
}

static bool test_exists(const char *dir, const char *rel)
{
	char *path = test_path(dir, rel);
	bool exists = access(path, F_OK) == 0;

	free(path);
	return exists;
}

static int test_rm_one(const char *path, const struct stat *st, int type,
		       struct FTW *ftw)
{
	(void)st;
	(void)type;
	(void)ftw;
	return remove(path);
}

static void test_rm_rf(const char *path)
{
	nftw(path, test_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* Entries under DIR/bodies/ (one level of folder dirs) whose name starts
 * with prefix; all files when prefix is "". */
static int test_count_bodies(const char *dir, const char *prefix)
{
	char *bodies = test_path(dir, "bodies");
	struct dirent *de, *fe;
	int count = 0;
	DIR *d, *f;

	d = opendir(bodies);
	while (d != NULL && (de = readdir(d)) != NULL) {
		char *sub;

		if (de->d_name[0] == '.')
			continue;
		sub = test_path(bodies, de->d_name);
		f = opendir(sub);
		while (f != NULL && (fe = readdir(f)) != NULL) {
			if (strcmp(fe->d_name, ".") == 0 ||
			    strcmp(fe->d_name, "..") == 0)
				continue;
			if (strncmp(fe->d_name, prefix, strlen(prefix)) == 0)
				count++;
		}
		if (f != NULL)
			closedir(f);
		free(sub);
	}
	if (d != NULL)
		closedir(d);
	free(bodies);
	return count;
}

static struct cache *test_open(const char *dir, uint64_t limit)
{
	const char *error = NULL;
	struct cache *cache = NULL;
	int ret = cache_open(&cache, dir, limit, &error);

	if (ret < 0)
		fprintf(stderr, "cache_open(%s): %d %s\n", dir, ret,
			error != NULL ? error : "(no message)");
	CHECK(ret == 0);
	if (cache == NULL)
		exit(check_exit());
	return cache;
}

static int64_t test_folder(struct cache *cache, const char *name)
{
	int64_t id = 0;

	CHECK(cache_folder_put(cache, 0, name, name, 0, &id) == 0);
	CHECK(id > 0);
	return id;
}

/* Put a message; returns cache_msg_put()'s result. */
static int test_put(struct cache *cache, int64_t folder, uint32_t uid,
		    const char *name, const char *base, uint64_t size,
		    char **name_r)
{
	struct cache_msg m = {
		.folder_id = folder,
		.uid = uid,
		.name = (char *)name,
		.size = size,
		.mtime = 1700000000 + uid,
		.flags = "\\Seen",
		.message_id = "<id@example>",
		.modseq = uid,
	};

	return cache_msg_put(cache, &m, base, name_r);
}

/* Store a body of len bytes, all byte c. */
static int test_store(struct cache *cache, int64_t folder, uint32_t uid,
		      size_t len, char c)
{
	char *data = malloc(len + 1);
	int ret;

	memset(data, c, len);
	ret = cache_body_store(cache, folder, uid, data, len);
	free(data);
	return ret;
}

static bool test_cached(struct cache *cache, int64_t folder, uint32_t uid)
{
	struct cache_msg m;
	bool cached;

	if (cache_msg_get(cache, folder, uid, &m) < 0)
		return false;
	cached = m.cached;
	cache_msg_clear(&m);
	return cached;
}

/* Open a body and close it at once: marks it recently used. */
static int test_touch(struct cache *cache, int64_t folder, uint32_t uid)
{
	int fd = cache_body_open(cache, folder, uid);

	if (fd < 0)
		return fd;
	close(fd);
	return 0;
}

static double test_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- the tests ---- */

static void test_permissions(void)
{
	char *dir = test_dir("perm/a/b/cache");
	char *parent = test_dir("perm/a");
	char *index = test_path(dir, "index.sqlite");
	char *wal = test_path(dir, "index.sqlite-wal");
	char *shm = test_path(dir, "index.sqlite-shm");
	char *bodies = test_path(dir, "bodies");
	struct cache *cache;
	mode_t old_umask;
	char rel[64];
	int64_t folder;

	/* umask 0: every mode must come from the code, not the umask. */
	old_umask = umask(0);
	cache = test_open(dir, 1 << 20);
	CHECK(test_mode(dir) == 0700);
	CHECK(test_mode(parent) == 0700);
	CHECK(test_mode(index) == 0600);
	CHECK(test_mode(bodies) == 0700);
	folder = test_folder(cache, "INBOX");
	CHECK(test_put(cache, folder, 1, NULL, "m", 10, NULL) == 0);
	CHECK(test_store(cache, folder, 1, 10, 'x') == 0);
	CHECK(test_mode(wal) == 0600);
	CHECK(test_mode(shm) == 0600);
	snprintf(rel, sizeof(rel), "bodies/%" PRId64, folder);
	{
		char *fdir = test_path(dir, rel);

		CHECK(test_mode(fdir) == 0700);
		free(fdir);
	}
	snprintf(rel, sizeof(rel), "bodies/%" PRId64 "/1", folder);
	{
		char *body = test_path(dir, rel);

		CHECK(test_mode(body) == 0600);
		free(body);
	}
	cache_close(&cache);
	CHECK(cache == NULL);
	cache_close(&cache); /* NULL-safe */

	/* An existing directory is made private again; a second umask that
	 * takes owner bits away changes nothing either. */
	CHECK(chmod(dir, 0755) == 0);
	CHECK(chmod(index, 0644) == 0);
	umask(0277);
	cache = test_open(dir, 1 << 20);
	CHECK(test_mode(dir) == 0700);
	CHECK(test_mode(index) == 0600);
	CHECK(test_put(cache, folder, 2, NULL, "m", 10, NULL) == 0);
	CHECK(test_store(cache, folder, 2, 10, 'y') == 0);
	snprintf(rel, sizeof(rel), "bodies/%" PRId64 "/2", folder);
	{
		char *body = test_path(dir, rel);

		CHECK(test_mode(body) == 0600);
		free(body);
	}
	umask(old_umask);

	/* One process per cache directory. */
	{
		struct cache *second = NULL;
		const char *error = NULL;

		CHECK(cache_open(&second, dir, 1 << 20, &error) == -EBUSY);
		CHECK(second == NULL);
		CHECK(error != NULL && strstr(error, dir) != NULL &&
		      strstr(error, "in use") != NULL);
	}
	cache_close(&cache);

	free(index);
	free(wal);
	free(shm);
	free(bodies);
	free(parent);
	free(dir);
}

static void test_open_errors(void)
{
	char *file = test_dir("not-a-dir");
	char *below = test_dir("not-a-dir/cache");
	char *newer = test_dir("newer");
	struct cache *cache = NULL;
	const char *error = NULL;
	int fd;

	fd = open(file, O_WRONLY | O_CREAT, 0600);
	CHECK(fd >= 0);
	close(fd);

	CHECK(cache_open(&cache, file, 100, &error) < 0);
	CHECK(cache == NULL);
	CHECK(error != NULL && strstr(error, file) != NULL &&
	      strstr(error, "cache_dir") != NULL && !strchr(error, '\n'));
	error = NULL;
	CHECK(cache_open(&cache, below, 100, &error) < 0);
	CHECK(error != NULL && strstr(error, below) != NULL);
	CHECK(cache_open(&cache, "", 100, &error) == -EINVAL);

	/* A garbage index is refused with a message, not a crash. */
	{
		char *bad = test_dir("garbage");
		char *index = test_path(bad, "index.sqlite");

		CHECK(mkdir(bad, 0700) == 0);
		fd = open(index, O_WRONLY | O_CREAT, 0600);
		CHECK(fd >= 0);
		CHECK(write(fd, "this is not a database, not at all......",
			    40) == 40);
		for (int i = 0; i < 200; i++)
			CHECK(write(fd, "garbage garbage garbage ", 24) == 24);
		close(fd);
		error = NULL;
		CHECK(cache_open(&cache, bad, 100, &error) < 0);
		CHECK(error != NULL && strstr(error, "index.sqlite") != NULL);
		free(index);
		free(bad);
	}

	/* An index from a newer mailfs is refused rather than misread. */
	cache = test_open(newer, 100);
	cache_close(&cache);
	{
		char *index = test_path(newer, "index.sqlite");
		sqlite3 *db = NULL;

		CHECK(sqlite3_open(index, &db) == SQLITE_OK);
		CHECK(sqlite3_exec(db, "UPDATE meta SET value = 99 WHERE "
				       "key = 'schema_version'",
				   NULL, NULL, NULL) == SQLITE_OK);
		sqlite3_close(db);
		error = NULL;
		CHECK(cache_open(&cache, newer, 100, &error) == -EPROTO);
		CHECK(error != NULL && strstr(error, "newer") != NULL &&
		      strstr(error, newer) != NULL);
		free(index);
	}
	free(newer);
	free(below);
	free(file);
}

static void test_folders(void)
{
	char *dir = test_dir("folders");
	struct cache *cache = test_open(dir, 1 << 20);
	struct cache_folder f, *list;
	int64_t inbox, sent, child, again, other;
	size_t count;

	CHECK(cache_folder_put(cache, 0, "INBOX", "INBOX", 0, &inbox) == 0);
	CHECK(cache_folder_put(cache, 0, "Sent", "Sent Items",
			       CACHE_FOLDER_SENT, &sent) == 0);
	CHECK(cache_folder_put(cache, inbox, "Lists", "INBOX.Lists", 0,
			       &child) == 0);
	CHECK(inbox > 0 && sent > inbox && child > sent);

	/* Same server name: update in place, the id stays. */
	CHECK(cache_folder_put(cache, 0, "Sent", "Sent Items",
			       CACHE_FOLDER_SENT | CACHE_FOLDER_SEEN,
			       &again) == 0);
	CHECK(again == sent);
	CHECK(cache_folder_get(cache, sent, &f) == 0);
	CHECK_STR(f.name, "Sent");
	CHECK_STR(f.server_name, "Sent Items");
	CHECK(f.flags == (CACHE_FOLDER_SENT | CACHE_FOLDER_SEEN));
	CHECK(f.parent_id == 0);
	CHECK(f.uidvalidity == 0 && f.uidnext == 0 && f.last_sync == 0);
	cache_folder_clear(&f);

	/* (parent, name) taken: by insert and by update. */
	CHECK(cache_folder_put(cache, 0, "INBOX", "Other", 0, &other) ==
	      -EEXIST);
	CHECK(cache_folder_put(cache, 0, "INBOX", "Sent Items", 0, NULL) ==
	      -EEXIST);
	CHECK(cache_folder_by_server_name(cache, "Other", &f) == -ENOENT);
	CHECK(cache_folder_put(cache, 0, "bad/name", "x", 0, NULL) ==
	      -EINVAL);
	CHECK(cache_folder_put(cache, 0, "", "x", 0, NULL) == -EINVAL);
	CHECK(cache_folder_put(cache, child, "Lists", "INBOX.Lists", 0,
			       NULL) == -EINVAL); /* its own parent */

	CHECK(cache_folder_lookup(cache, inbox, "Lists", &f) == 0);
	CHECK(f.id == child && f.parent_id == inbox);
	CHECK_STR(f.server_name, "INBOX.Lists");
	cache_folder_clear(&f);
	CHECK(cache_folder_lookup(cache, 0, "Lists", &f) == -ENOENT);
	CHECK(cache_folder_by_server_name(cache, "INBOX", &f) == 0);
	CHECK(f.id == inbox);
	cache_folder_clear(&f);
	CHECK(cache_folder_get(cache, 9999, &f) == -ENOENT);
	CHECK(f.name == NULL);

	/* Move and rename through the server name. */
	CHECK(cache_folder_put(cache, sent, "Lists2", "INBOX.Lists", 0,
			       &again) == 0);
	CHECK(again == child);
	CHECK(cache_folder_lookup(cache, sent, "Lists2", &f) == 0);
	CHECK(f.id == child);
	cache_folder_clear(&f);

	CHECK(cache_folder_set_state(cache, inbox, 42, 100,
				     (1ull << 63) + 7, 1700000000) == 0);
	CHECK(cache_folder_get(cache, inbox, &f) == 0);
	CHECK(f.uidvalidity == 42 && f.uidnext == 100);
	CHECK(f.highestmodseq == (1ull << 63) + 7);
	CHECK(f.last_sync == 1700000000);
	cache_folder_clear(&f);
	CHECK(cache_folder_set_state(cache, 9999, 1, 1, 1, 1) == -ENOENT);
	CHECK(cache_folder_set_state(cache, inbox, UINT32_MAX, UINT32_MAX,
				     0, 0) == 0);
	CHECK(cache_folder_get(cache, inbox, &f) == 0);
	CHECK(f.uidvalidity == UINT32_MAX && f.uidnext == UINT32_MAX);
	cache_folder_clear(&f);

	CHECK(cache_folder_list(cache, &list, &count) == 0);
	CHECK(count == 3);
	if (count == 3) {
		CHECK(list[0].id == inbox && list[1].id == sent &&
		      list[2].id == child);
		CHECK_STR(list[2].name, "Lists2");
	}
	cache_folder_list_free(list, count);

	/* Children in pages, as readdir reads them. */
	for (int i = 0; i < 5; i++) {
		char name[16];

		snprintf(name, sizeof(name), "c%d", i);
		CHECK(cache_folder_put(cache, inbox, name, name, 0, NULL) ==
		      0);
	}
	{
		int64_t after = 0;
		int seen = 0, pages = 0;

		do {
			CHECK(cache_folder_children(cache, inbox, after, 2,
						    &list, &count) == 0);
			CHECK(count <= 2);
			for (size_t i = 0; i < count; i++) {
				CHECK(list[i].id > after);
				CHECK(list[i].parent_id == inbox);
				after = list[i].id;
				seen++;
			}
			cache_folder_list_free(list, count);
			pages++;
		} while (count > 0 && pages < 10);
		CHECK(seen == 5);
		CHECK(pages == 4);
	}
	CHECK(cache_folder_children(cache, inbox, 0, 0, &list, &count) == 0);
	CHECK(count == 0 && list == NULL);

	/* Ids are not reused after a delete. */
	CHECK(cache_folder_delete(cache, child) == 0);
	CHECK(cache_folder_get(cache, child, &f) == -ENOENT);
	CHECK(cache_folder_delete(cache, child) == -ENOENT);
	CHECK(cache_folder_reset(cache, child) == -ENOENT);
	CHECK(cache_folder_put(cache, 0, "New", "New", 0, &other) == 0);
	CHECK(other > child);

	cache_close(&cache);
	free(dir);
}

static void test_msg_names(void)
{
	char *dir = test_dir("names");
	struct cache *cache = test_open(dir, 1 << 20);
	int64_t folder = test_folder(cache, "INBOX");
	int64_t other = test_folder(cache, "Other");
	struct cache_msg m;
	char *name;

	CHECK(test_put(cache, folder, 1, NULL, "Hello", 10, &name) == 0);
	CHECK_STR(name, "Hello.eml");
	free(name);
	CHECK(test_put(cache, folder, 2, NULL, "Hello", 10, &name) == 0);
	CHECK_STR(name, "Hello (2).eml");
	free(name);
	CHECK(test_put(cache, folder, 3, NULL, "Hello", 10, &name) == 0);
	CHECK_STR(name, "Hello (3).eml");
	free(name);
	/* Names are per folder. */
	CHECK(test_put(cache, other, 1, NULL, "Hello", 10, &name) == 0);
	CHECK_STR(name, "Hello.eml");
	free(name);

	/* The first free suffix is taken again. */
	CHECK(cache_msg_delete(cache, folder, 2) == 0);
	CHECK(test_put(cache, folder, 4, NULL, "Hello", 10, &name) == 0);
	CHECK_STR(name, "Hello (2).eml");
	free(name);

	/* Replacing keeps the stored name, whatever the base says now. */
	CHECK(test_put(cache, folder, 1, NULL, "Changed", 20, &name) == 0);
	CHECK_STR(name, "Hello.eml");
	free(name);
	CHECK(cache_msg_get(cache, folder, 1, &m) == 0);
	CHECK_STR(m.name, "Hello.eml");
	CHECK(m.size == 20);
	cache_msg_clear(&m);

	/* An explicit name is used as given. */
	CHECK(test_put(cache, folder, 5, "Given.eml", "ignored", 10,
		       &name) == 0);
	CHECK_STR(name, "Given.eml");
	free(name);
	CHECK(test_put(cache, folder, 6, "Given.eml", NULL, 10, NULL) ==
	      -EEXIST);
	CHECK(cache_msg_get(cache, folder, 6, &m) == -ENOENT);
	/* ... and renames an existing message. */
	CHECK(test_put(cache, folder, 5, "Given2.eml", NULL, 10, NULL) == 0);
	CHECK(cache_msg_lookup(cache, folder, "Given.eml", &m) == -ENOENT);
	CHECK(cache_msg_lookup(cache, folder, "Given2.eml", &m) == 0);
	CHECK(m.uid == 5);
	cache_msg_clear(&m);
	CHECK(test_put(cache, folder, 5, "bad/name", NULL, 10, NULL) ==
	      -EINVAL);

	/* Without a base the UID is the base. */
	CHECK(test_put(cache, folder, 77, NULL, NULL, 10, &name) == 0);
	CHECK_STR(name, "77.eml");
	free(name);
	CHECK(test_put(cache, folder, 78, NULL, "77", 10, &name) == 0);
	CHECK_STR(name, "77 (2).eml");
	free(name);

	/* No such folder. */
	CHECK(test_put(cache, 9999, 1, NULL, "x", 10, NULL) == -ENOENT);

	/* Rename. */
	CHECK(cache_msg_rename(cache, folder, 1, "Renamed.eml") == 0);
	CHECK(cache_msg_lookup(cache, folder, "Renamed.eml", &m) == 0);
	CHECK(m.uid == 1);
	cache_msg_clear(&m);
	CHECK(cache_msg_lookup(cache, folder, "Hello.eml", &m) == -ENOENT);
	CHECK(cache_msg_rename(cache, folder, 1, "Renamed.eml") == 0);
	CHECK(cache_msg_rename(cache, folder, 3, "Renamed.eml") == -EEXIST);
	CHECK(cache_msg_rename(cache, folder, 999, "Free.eml") == -ENOENT);
	CHECK(cache_msg_rename(cache, folder, 3, "..") == -EINVAL);
	/* The freed name is the first free one again. */
	CHECK(test_put(cache, folder, 8, NULL, "Hello", 10, &name) == 0);
	CHECK_STR(name, "Hello.eml");
	free(name);

	cache_close(&cache);
	free(dir);
}

static void test_msg_ops(void)
{
	char *dir = test_dir("msgs");
	struct cache *cache = test_open(dir, 1 << 20);
	int64_t folder = test_folder(cache, "INBOX");
	struct cache_msg m, *msgs;
	uint32_t *uids;
	size_t count;

	{
		struct cache_msg in = {
			.folder_id = folder,
			.uid = UINT32_MAX,
			.name = "Big.eml",
			.size = (1ull << 40) + 3,
			.mtime = -5,
			.flags = NULL,
			.message_id = NULL,
			.modseq = (1ull << 63) + 11,
			.pinned = true,
		};

		CHECK(cache_msg_put(cache, &in, NULL, NULL) == 0);
	}
	CHECK(cache_msg_get(cache, folder, UINT32_MAX, &m) == 0);
	CHECK(m.folder_id == folder && m.uid == UINT32_MAX);
	CHECK_STR(m.name, "Big.eml");
	CHECK(m.size == (1ull << 40) + 3);
	CHECK(m.mtime == -5);
	CHECK_STR(m.flags, "");
	CHECK(m.message_id == NULL);
	CHECK(m.modseq == (1ull << 63) + 11);
	CHECK(!m.cached && m.pinned);
	cache_msg_clear(&m);
	CHECK(cache_msg_delete(cache, folder, UINT32_MAX) == 0);
	CHECK(cache_msg_delete(cache, folder, UINT32_MAX) == -ENOENT);

	for (uint32_t uid = 1; uid <= 25; uid++)
		CHECK(test_put(cache, folder, uid * 2, NULL, "m", uid, NULL) ==
		      0);
	CHECK(cache_msg_count(cache, folder) == 25);
	CHECK(cache_msg_count(cache, 9999) == 0);

	CHECK(cache_msg_get(cache, folder, 10, &m) == 0);
	CHECK_STR(m.flags, "\\Seen");
	CHECK_STR(m.message_id, "<id@example>");
	CHECK(m.mtime == 1700000010);
	cache_msg_clear(&m);
	CHECK(cache_msg_get(cache, folder, 11, &m) == -ENOENT);
	CHECK(m.name == NULL);
	CHECK(cache_msg_lookup(cache, folder, "nope.eml", &m) == -ENOENT);

	CHECK(cache_msg_set_flags(cache, folder, 10, "\\Seen \\Flagged", 99) ==
	      0);
	CHECK(cache_msg_set_flags(cache, folder, 11, "x", 1) == -ENOENT);
	CHECK(cache_msg_set_size(cache, folder, 10, 12345) == 0);
	CHECK(cache_msg_set_size(cache, folder, 11, 1) == -ENOENT);
	CHECK(cache_msg_set_pinned(cache, folder, 10, true) == 0);
	CHECK(cache_msg_set_pinned(cache, folder, 11, true) == -ENOENT);
	CHECK(cache_msg_get(cache, folder, 10, &m) == 0);
	CHECK_STR(m.flags, "\\Seen \\Flagged");
	CHECK(m.modseq == 99 && m.size == 12345 && m.pinned);
	cache_msg_clear(&m);
	CHECK(cache_msg_set_flags(cache, folder, 10, NULL, 100) == 0);
	CHECK(cache_msg_get(cache, folder, 10, &m) == 0);
	CHECK_STR(m.flags, "");
	cache_msg_clear(&m);

	/* Paging by UID covers every message once, in order. */
	{
		uint32_t after = 0, expect = 2;
		int pages = 0, seen = 0;

		do {
			CHECK(cache_msg_list(cache, folder, after, 10, &msgs,
					     &count) == 0);
			for (size_t i = 0; i < count; i++) {
				CHECK(msgs[i].uid == expect);
				CHECK(msgs[i].flags != NULL);
				expect += 2;
				after = msgs[i].uid;
				seen++;
			}
			cache_msg_list_free(msgs, count);
			pages++;
		} while (count > 0 && pages < 10);
		CHECK(seen == 25 && pages == 4);
	}
	CHECK(cache_msg_list(cache, folder, 0, 0, &msgs, &count) == 0);
	CHECK(count == 0 && msgs == NULL);
	CHECK(cache_msg_list(cache, folder, 49, 10, &msgs, &count) == 0);
	CHECK(count == 1 && msgs[0].uid == 50);
	cache_msg_list_free(msgs, count);
	CHECK(cache_msg_list(cache, folder, 0, SIZE_MAX, &msgs, &count) == 0);
	CHECK(count == 25);
	cache_msg_list_free(msgs, count);

	CHECK(cache_msg_uids(cache, folder, &uids, &count) == 0);
	CHECK(count == 25);
	for (size_t i = 0; i < count; i++)
		CHECK(uids[i] == (uint32_t)(i + 1) * 2);
	free(uids);
	CHECK(cache_msg_uids(cache, 9999, &uids, &count) == 0);
	CHECK(count == 0);
	free(uids);

	/* Uncached: skips what has a body, honours after and limit. */
	CHECK(test_store(cache, folder, 4, 5, 'a') == 0);
	CHECK(test_store(cache, folder, 8, 5, 'a') == 0);
	CHECK(cache_msg_uncached(cache, folder, 0, 4, &uids, &count) == 0);
	CHECK(count == 4);
	if (count == 4)
		CHECK(uids[0] == 2 && uids[1] == 6 && uids[2] == 10 &&
		      uids[3] == 12);
	free(uids);
	CHECK(cache_msg_uncached(cache, folder, 46, 100, &uids, &count) == 0);
	CHECK(count == 2 && uids[0] == 48 && uids[1] == 50);
	free(uids);
	CHECK(cache_msg_uncached(cache, folder, 0, 0, &uids, &count) == 0);
	CHECK(count == 0 && uids == NULL);

	/* Deleting a message deletes its body and its bytes. */
	CHECK(cache_bytes(cache) == 10);
	CHECK(cache_msg_delete(cache, folder, 4) == 0);
	CHECK(cache_bytes(cache) == 5);
	{
		char rel[64];

		snprintf(rel, sizeof(rel), "bodies/%" PRId64 "/4", folder);
		CHECK(!test_exists(dir, rel));
	}
	CHECK(cache_body_open(cache, folder, 4) == -ENOENT);
	CHECK(cache_msg_count(cache, folder) == 24);

	/* set_size of a cached body keeps the total its sum. */
	CHECK(cache_msg_set_size(cache, folder, 8, 7) == 0);
	CHECK(cache_bytes(cache) == 7);

	cache_close(&cache);
	free(dir);
}

static void test_bodies(void)
{
	char *dir = test_dir("bodies");
	struct cache *cache = test_open(dir, 1 << 20);
	int64_t folder = test_folder(cache, "INBOX");
	const char body[] = "From: a@b\r\nSubject: hi\r\n\r\nhello\r\n";
	struct cache_msg m;
	char buf[128], rel[64];
	ssize_t n;
	int fd;

	CHECK(test_put(cache, folder, 1, NULL, "m", 999, NULL) == 0);
	CHECK(cache_body_open(cache, folder, 1) == -ENOENT);
	CHECK(cache_body_store(cache, folder, 1, body, strlen(body)) == 0);
	CHECK(cache_body_store(cache, folder, 2, body, strlen(body)) ==
	      -ENOENT);
	CHECK(cache_body_store(cache, 9999, 1, body, strlen(body)) ==
	      -ENOENT);
	CHECK(cache_bytes(cache) == strlen(body));

	fd = cache_body_open(cache, folder, 1);
	CHECK(fd >= 0);
	if (fd >= 0) {
		CHECK(fcntl(fd, F_GETFD) & FD_CLOEXEC);
		CHECK((fcntl(fd, F_GETFL) & O_ACCMODE) == O_RDONLY);
		n = read(fd, buf, sizeof(buf));
		CHECK(n == (ssize_t)strlen(body));
		CHECK(n > 0 && memcmp(buf, body, (size_t)n) == 0);
		close(fd);
	}
	CHECK(cache_msg_get(cache, folder, 1, &m) == 0);
	CHECK(m.cached && m.size == strlen(body));
	cache_msg_clear(&m);

	/* A metadata refresh keeps the body, its exact size, the pin. */
	CHECK(cache_msg_set_pinned(cache, folder, 1, true) == 0);
	CHECK(test_put(cache, folder, 1, NULL, "m", 5000, NULL) == 0);
	CHECK(cache_msg_get(cache, folder, 1, &m) == 0);
	CHECK(m.cached && m.pinned && m.size == strlen(body));
	cache_msg_clear(&m);
	CHECK(test_put(cache, folder, 1, "explicit.eml", NULL, 5000, NULL) ==
	      0);
	CHECK(cache_msg_get(cache, folder, 1, &m) == 0);
	CHECK(m.cached && m.pinned && m.size == strlen(body));
	CHECK_STR(m.name, "explicit.eml");
	cache_msg_clear(&m);
	CHECK(cache_bytes(cache) == strlen(body));

	/* Storing again replaces, the total counts it once. */
	CHECK(test_store(cache, folder, 1, 100, 'z') == 0);
	CHECK(cache_bytes(cache) == 100);
	fd = cache_body_open(cache, folder, 1);
	CHECK(fd >= 0);
	if (fd >= 0) {
		n = read(fd, buf, sizeof(buf));
		CHECK(n == 100 && buf[0] == 'z' && buf[99] == 'z');
		close(fd);
	}

	/* Empty bodies are bodies. */
	CHECK(test_put(cache, folder, 2, NULL, "m", 0, NULL) == 0);
	CHECK(cache_body_store(cache, folder, 2, "", 0) == 0);
	CHECK(test_cached(cache, folder, 2));
	fd = cache_body_open(cache, folder, 2);
	CHECK(fd >= 0);
	if (fd >= 0)
		close(fd);

	/* No temp file is left behind. */
	CHECK(test_count_bodies(dir, ".tmp") == 0);
	CHECK(test_count_bodies(dir, "") == 2);

	/* Cached per the index, but the file is gone: repaired. */
	snprintf(rel, sizeof(rel), "bodies/%" PRId64 "/1", folder);
	{
		char *path = test_path(dir, rel);

		CHECK(unlink(path) == 0);
		free(path);
	}
	CHECK(cache_body_open(cache, folder, 1) == -ENOENT);
	CHECK(!test_cached(cache, folder, 1));
	CHECK(cache_bytes(cache) == 0);
	CHECK(cache_body_open(cache, folder, 1) == -ENOENT);
	{
		uint32_t *uids;
		size_t count;

		CHECK(cache_msg_uncached(cache, folder, 0, 10, &uids,
					 &count) == 0);
		CHECK(count == 1 && uids[0] == 1);
		free(uids);
	}

	/* Leftovers of a crash are swept at open: a temp file, and a body
	 * the index never marked.  A cached body stays. */
	CHECK(test_store(cache, folder, 1, 50, 'q') == 0);
	cache_close(&cache);
	{
		char *tmp, *orphan;
		int fd2;

		snprintf(rel, sizeof(rel), "bodies/%" PRId64 "/.tmp-3-99",
			 folder);
		tmp = test_path(dir, rel);
		snprintf(rel, sizeof(rel), "bodies/%" PRId64 "/3", folder);
		orphan = test_path(dir, rel);
		fd2 = open(tmp, O_WRONLY | O_CREAT, 0600);
		CHECK(fd2 >= 0);
		close(fd2);
		fd2 = open(orphan, O_WRONLY | O_CREAT, 0600);
		CHECK(fd2 >= 0);
		close(fd2);
		/* A folder the index does not know. */
		free(tmp);
		tmp = test_path(dir, "bodies/424242");
		CHECK(mkdir(tmp, 0700) == 0);
		free(tmp);
		free(orphan);
	}
	cache = test_open(dir, 1 << 20);
	CHECK(test_count_bodies(dir, ".tmp") == 0);
	CHECK(test_count_bodies(dir, "") == 2);
	CHECK(!test_exists(dir, "bodies/424242"));
	CHECK(cache_bytes(cache) == 50);
	CHECK(test_cached(cache, folder, 1));

	cache_close(&cache);
	free(dir);
}

static void test_persistence(void)
{
	char *dir = test_dir("persist");
	struct cache *cache = test_open(dir, 1 << 20);
	int64_t folder = test_folder(cache, "INBOX");
	struct cache_folder f;
	struct cache_msg m;
	char *value;

	CHECK(cache_folder_set_state(cache, folder, 7, 8, 9, 10) == 0);
	CHECK(test_put(cache, folder, 1, NULL, "kept", 10, NULL) == 0);
	CHECK(test_store(cache, folder, 1, 300, 'p') == 0);
	CHECK(test_put(cache, folder, 2, NULL, "kept", 10, NULL) == 0);
	CHECK(cache_msg_set_pinned(cache, folder, 2, true) == 0);
	CHECK(cache_kv_set(cache, "pop.last", "abc") == 0);
	cache_close(&cache);

	cache = test_open(dir, 1 << 20);
	CHECK(cache_folder_get(cache, folder, &f) == 0);
	CHECK_STR(f.name, "INBOX");
	CHECK(f.uidvalidity == 7 && f.uidnext == 8 && f.highestmodseq == 9 &&
	      f.last_sync == 10);
	cache_folder_clear(&f);
	CHECK(cache_msg_lookup(cache, folder, "kept.eml", &m) == 0);
	CHECK(m.uid == 1 && m.cached && m.size == 300);
	cache_msg_clear(&m);
	CHECK(cache_msg_lookup(cache, folder, "kept (2).eml", &m) == 0);
	CHECK(m.uid == 2 && m.pinned && !m.cached);
	cache_msg_clear(&m);
	CHECK(cache_bytes(cache) == 300);
	CHECK(cache_kv_get(cache, "pop.last", &value) == 0);
	CHECK_STR(value, "abc");
	free(value);
	CHECK(test_touch(cache, folder, 1) == 0);
	cache_close(&cache);
	free(dir);
}

static void test_kv(void)
{
	char *dir = test_dir("kv");
	struct cache *cache = test_open(dir, 1 << 20);
	char *value = (char *)"unchanged";

	CHECK(cache_kv_get(cache, "missing", &value) == -ENOENT);
	CHECK(value == NULL);
	CHECK(cache_kv_set(cache, "k", "v1") == 0);
	CHECK(cache_kv_set(cache, "k", "v2") == 0);
	CHECK(cache_kv_get(cache, "k", &value) == 0);
	CHECK_STR(value, "v2");
	free(value);
	CHECK(cache_kv_set(cache, "empty", "") == 0);
	CHECK(cache_kv_get(cache, "empty", &value) == 0);
	CHECK_STR(value, "");
	free(value);
	/* The schema version lives elsewhere: a caller cannot clobber it. */
	CHECK(cache_kv_set(cache, "schema_version", "999") == 0);
	CHECK(cache_kv_set(cache, "k", NULL) == 0);
	CHECK(cache_kv_get(cache, "k", &value) == -ENOENT);
	cache_close(&cache);
	cache = test_open(dir, 1 << 20);
	CHECK(cache_kv_get(cache, "schema_version", &value) == 0);
	CHECK_STR(value, "999");
	free(value);
	cache_close(&cache);
	free(dir);
}

static void test_reset_delete(void)
{
	char *dir = test_dir("reset");
	struct cache *cache = test_open(dir, 1 << 20);
	int64_t a = test_folder(cache, "A");
	int64_t b = test_folder(cache, "B");
	struct cache_folder f;
	char rel[64];

	for (uint32_t uid = 1; uid <= 3; uid++) {
		CHECK(test_put(cache, a, uid, NULL, "m", 10, NULL) == 0);
		CHECK(test_store(cache, a, uid, 100, 'a') == 0);
		CHECK(test_put(cache, b, uid, NULL, "m", 10, NULL) == 0);
		CHECK(test_store(cache, b, uid, 10, 'b') == 0);
	}
	CHECK(cache_msg_set_pinned(cache, a, 2, true) == 0);
	CHECK(cache_folder_set_state(cache, a, 5, 4, 3, 2) == 0);
	CHECK(cache_bytes(cache) == 330);

	CHECK(cache_folder_reset(cache, a) == 0);
	CHECK(cache_msg_count(cache, a) == 0);
	CHECK(cache_msg_count(cache, b) == 3);
	CHECK(cache_bytes(cache) == 30);
	CHECK(cache_folder_get(cache, a, &f) == 0);
	CHECK(f.uidvalidity == 0 && f.uidnext == 0 && f.highestmodseq == 0 &&
	      f.last_sync == 0);
	CHECK_STR(f.name, "A");
	cache_folder_clear(&f);
	snprintf(rel, sizeof(rel), "bodies/%" PRId64 "/1", a);
	CHECK(!test_exists(dir, rel));
	CHECK(cache_body_open(cache, a, 1) == -ENOENT);
	/* The same UIDs come back after the reset, with new bodies. */
	CHECK(test_put(cache, a, 1, NULL, "m", 10, NULL) == 0);
	CHECK(!test_cached(cache, a, 1));
	CHECK(test_store(cache, a, 1, 7, 'n') == 0);
	CHECK(cache_bytes(cache) == 37);

	CHECK(cache_folder_delete(cache, b) == 0);
	CHECK(cache_folder_get(cache, b, &f) == -ENOENT);
	CHECK(cache_msg_count(cache, b) == 0);
	CHECK(cache_bytes(cache) == 7);
	snprintf(rel, sizeof(rel), "bodies/%" PRId64, b);
	CHECK(!test_exists(dir, rel));
	CHECK(test_count_bodies(dir, "") == 1);

	cache_close(&cache);
	cache = test_open(dir, 1 << 20);
	CHECK(cache_bytes(cache) == 7);
	cache_close(&cache);
	free(dir);
}

static void test_lru(void)
{
	char *dir = test_dir("lru");
	struct cache *cache = test_open(dir, 3000);
	int64_t folder = test_folder(cache, "INBOX");

	for (uint32_t uid = 1; uid <= 10; uid++)
		CHECK(test_put(cache, folder, uid, NULL, "m", 1000, NULL) == 0);

	/* A=1, B=2, C=3 fill the cache exactly. */
	CHECK(test_store(cache, folder, 1, 1000, 'a') == 0);
	CHECK(test_store(cache, folder, 2, 1000, 'b') == 0);
	CHECK(test_store(cache, folder, 3, 1000, 'c') == 0);
	CHECK(cache_bytes(cache) == 3000);
	CHECK(test_cached(cache, folder, 1) && test_cached(cache, folder, 2) &&
	      test_cached(cache, folder, 3));

	/* Opening A makes B the least recently used. */
	CHECK(test_touch(cache, folder, 1) == 0);
	CHECK(test_store(cache, folder, 4, 1000, 'd') == 0);
	CHECK(!test_cached(cache, folder, 2));
	CHECK(test_cached(cache, folder, 1) && test_cached(cache, folder, 3) &&
	      test_cached(cache, folder, 4));
	CHECK(cache_bytes(cache) == 3000);

	/* C is the oldest now, but pinned: A goes. */
	CHECK(cache_msg_set_pinned(cache, folder, 3, true) == 0);
	CHECK(test_store(cache, folder, 5, 1000, 'e') == 0);
	CHECK(!test_cached(cache, folder, 1));
	CHECK(test_cached(cache, folder, 3) && test_cached(cache, folder, 4) &&
	      test_cached(cache, folder, 5));
	CHECK(cache_bytes(cache) == 3000);

	/* Many opens (more than the in-memory batch) of D: E goes next. */
	for (int i = 0; i < 600; i++)
		CHECK(test_touch(cache, folder, 4) == 0);
	CHECK(test_store(cache, folder, 6, 1000, 'f') == 0);
	CHECK(!test_cached(cache, folder, 5));
	CHECK(test_cached(cache, folder, 3) && test_cached(cache, folder, 4) &&
	      test_cached(cache, folder, 6));

	/* A body bigger than the limit is kept; everything else unpinned
	 * goes, the pinned one stays. */
	CHECK(test_store(cache, folder, 7, 5000, 'g') == 0);
	CHECK(test_cached(cache, folder, 7) && test_cached(cache, folder, 3));
	CHECK(!test_cached(cache, folder, 4) && !test_cached(cache, folder, 6));
	CHECK(cache_bytes(cache) == 6000);
	/* ... and is the first to go at the next store. */
	CHECK(test_store(cache, folder, 8, 1000, 'h') == 0);
	CHECK(!test_cached(cache, folder, 7));
	CHECK(cache_bytes(cache) == 2000);
	CHECK(test_count_bodies(dir, "") == 2);

	/* Recency survives a reopen: open 8 after storing 9, close, reopen
	 * and store 10: 9 goes, 8 stays. */
	CHECK(test_store(cache, folder, 9, 1000, 'i') == 0);
	CHECK(cache_bytes(cache) == 3000);
	CHECK(test_touch(cache, folder, 8) == 0);
	cache_close(&cache);
	cache = test_open(dir, 3000);
	CHECK(cache_bytes(cache) == 3000);
	CHECK(test_store(cache, folder, 10, 1000, 'j') == 0);
	CHECK(!test_cached(cache, folder, 9));
	CHECK(test_cached(cache, folder, 8) && test_cached(cache, folder, 10) &&
	      test_cached(cache, folder, 3));
	CHECK(cache_bytes(cache) == 3000);
	cache_close(&cache);

	/* A lower limit at open evicts at once, oldest first, never the
	 * pinned one: 8 (opened before 10 was stored) goes. */
	cache = test_open(dir, 2500);
	CHECK(cache_bytes(cache) == 2000);
	CHECK(!test_cached(cache, folder, 8));
	CHECK(test_cached(cache, folder, 3) && test_cached(cache, folder, 10));
	CHECK(test_count_bodies(dir, "") == 2);
	/* Limit 0: only pinned bodies and the newest one are kept. */
	cache_close(&cache);
	cache = test_open(dir, 0);
	CHECK(cache_bytes(cache) == 1000);
	CHECK(test_cached(cache, folder, 3) && !test_cached(cache, folder, 10));
	CHECK(test_store(cache, folder, 1, 10, 'k') == 0);
	CHECK(test_cached(cache, folder, 1));
	CHECK(cache_bytes(cache) == 1010);
	CHECK(cache_msg_set_pinned(cache, folder, 3, false) == 0);
	CHECK(test_store(cache, folder, 2, 10, 'l') == 0);
	CHECK(cache_bytes(cache) == 10);
	CHECK(test_count_bodies(dir, "") == 1);
	cache_close(&cache);
	free(dir);
}

/* Local-only folders (CACHE_FOLDER_LOCAL, e.g. POP3's archive) hold the
 * only copy: their bodies are never evicted, even unpinned, and do not
 * count against the limit (AUDIT A6, and E "a large POP3 archive defeats
 * cache_size"). */
static void test_local_folders(void)
{
	char *dir = test_dir("local");
	struct cache *cache = test_open(dir, 3000);
	int64_t local = 0, other = test_folder(cache, "INBOX"), late;
	struct cache_folder f;

	CHECK(cache_folder_put(cache, 0, "archive", "\x01test:archive",
			       CACHE_FOLDER_LOCAL, &local) == 0);
	for (uint32_t uid = 1; uid <= 4; uid++) {
		CHECK(test_put(cache, local, uid, NULL, "a", 1000, NULL) == 0);
		CHECK(test_store(cache, local, uid, 1000, 'a') == 0);
	}
	/* 4000 local bytes over a 3000 limit: none evicted, none counted. */
	CHECK(cache_bytes(cache) == 0);
	CHECK(cache_local_bytes(cache) == 4000);
	for (uint32_t uid = 1; uid <= 4; uid++)
		CHECK(test_cached(cache, local, uid));
	/* Ordinary bodies get the whole limit and evict only each other. */
	for (uint32_t uid = 1; uid <= 4; uid++) {
		CHECK(test_put(cache, other, uid, NULL, "m", 1000, NULL) == 0);
		CHECK(test_store(cache, other, uid, 1000, 'm') == 0);
	}
	CHECK(cache_bytes(cache) == 3000);
	CHECK(!test_cached(cache, other, 1));
	CHECK(test_cached(cache, other, 2) && test_cached(cache, other, 4));
	for (uint32_t uid = 1; uid <= 4; uid++)
		CHECK(test_cached(cache, local, uid));
	/* A lower limit at open evicts ordinary bodies only; the totals are
	 * recounted the same way. */
	cache_close(&cache);
	cache = test_open(dir, 0);
	CHECK(cache_bytes(cache) == 0);
	CHECK(cache_local_bytes(cache) == 4000);
	for (uint32_t uid = 1; uid <= 4; uid++)
		CHECK(test_cached(cache, local, uid));
	cache_close(&cache);
	cache = test_open(dir, 3000);

	/* A move into the local folder takes the bytes off the total. */
	CHECK(test_store(cache, other, 2, 1000, 'm') == 0);
	CHECK(cache_bytes(cache) == 1000);
	CHECK(cache_msg_move(cache, other, 2, local, 2000, "moved.eml") == 0);
	CHECK(cache_bytes(cache) == 0);
	CHECK(cache_local_bytes(cache) == 5000);
	/* Deleting a local body takes it off the local total only. */
	CHECK(cache_msg_delete(cache, local, 2000) == 0);
	CHECK(cache_local_bytes(cache) == 4000);

	/* A folder that becomes local (an archive made before the flag
	 * existed) stops counting at once. */
	late = test_folder(cache, "old-archive");
	CHECK(test_put(cache, late, 1, NULL, "o", 1000, NULL) == 0);
	CHECK(test_store(cache, late, 1, 1000, 'o') == 0);
	CHECK(cache_bytes(cache) == 1000);
	CHECK(cache_folder_put(cache, 0, "old-archive", "old-archive",
			       CACHE_FOLDER_LOCAL, NULL) == 0);
	CHECK(cache_folder_get(cache, late, &f) == 0);
	CHECK(f.flags == CACHE_FOLDER_LOCAL);
	cache_folder_clear(&f);
	CHECK(cache_bytes(cache) == 0);
	CHECK(cache_local_bytes(cache) == 5000);
	for (uint32_t uid = 10; uid <= 14; uid++) {
		CHECK(test_put(cache, other, uid, NULL, "m", 1000, NULL) == 0);
		CHECK(test_store(cache, other, uid, 1000, 'm') == 0);
	}
	CHECK(test_cached(cache, late, 1));
	CHECK(cache_bytes(cache) == 3000);
	/* Dropping a local folder takes its bytes off the local total. */
	CHECK(cache_folder_delete(cache, late) == 0);
	CHECK(cache_local_bytes(cache) == 4000);
	CHECK(cache_bytes(cache) == 3000);
	cache_close(&cache);
	free(dir);
}

/* Write a body file behind the cache's back (no row marks it). */
static void test_plant(const char *dir, int64_t folder, uint32_t uid)
{
	char rel[64], *path;
	FILE *f;

	snprintf(rel, sizeof(rel), "bodies/%" PRId64 "/%" PRIu32, folder, uid);
	path = test_path(dir, rel);
	f = fopen(path, "w");
	CHECK(f != NULL);
	if (f) {
		fputs("only copy", f);
		fclose(f);
	}
	free(path);
}

/* An earlier mailfs's POP3 archive is not marked local until the POP3
 * store opens it: the open must not evict its (unpinned) bodies first.
 * And the sweep at open never removes a body file of a local folder,
 * which may be the only copy; elsewhere it still removes strays. */
static void test_old_archive_at_open(void)
{
	char *dir = test_dir("old-archive-open"), rel[64];
	struct cache *cache = test_open(dir, 1u << 30);
	int64_t old = 0, local = 0, other = test_folder(cache, "INBOX");

	CHECK(cache_folder_put(cache, 0, "archive", "\x01pop3:archive", 0, &old) == 0);
	CHECK(cache_folder_put(cache, 0, "kept", "\x01test:kept", CACHE_FOLDER_LOCAL,
			       &local) == 0);
	for (uint32_t uid = 1; uid <= 3; uid++) {
		CHECK(test_put(cache, old, uid, NULL, "a", 1000, NULL) == 0);
		CHECK(test_store(cache, old, uid, 1000, 'a') == 0);
	}
	CHECK(test_put(cache, local, 1, NULL, "k", 1000, NULL) == 0);
	CHECK(test_store(cache, local, 1, 1000, 'k') == 0);
	CHECK(test_put(cache, other, 1, NULL, "m", 1000, NULL) == 0);
	CHECK(test_store(cache, other, 1, 1000, 'm') == 0);
	cache_close(&cache);
	test_plant(dir, local, 77);
	test_plant(dir, other, 77);
	cache = test_open(dir, 0);
	for (uint32_t uid = 1; uid <= 3; uid++)
		CHECK(test_cached(cache, old, uid));
	CHECK(!test_cached(cache, other, 1));
	snprintf(rel, sizeof(rel), "bodies/%" PRId64 "/77", local);
	CHECK(test_exists(dir, rel));
	snprintf(rel, sizeof(rel), "bodies/%" PRId64 "/77", other);
	CHECK(!test_exists(dir, rel));
	cache_close(&cache);
	free(dir);
}

/* Change a body file behind the cache's back: cut it to len bytes. */
static void test_damage(const char *dir, int64_t folder, uint32_t uid,
			off_t len)
{
	char rel[64], *path;

	snprintf(rel, sizeof(rel), "bodies/%" PRId64 "/%" PRIu32, folder, uid);
	path = test_path(dir, rel);
	CHECK(truncate(path, len) == 0);
	free(path);
}

static int test_count_dir(const char *dir, const char *rel)
{
	char *path = test_path(dir, rel);
	struct dirent *de;
	int count = 0;
	DIR *d = opendir(path);

	while (d != NULL && (de = readdir(d)) != NULL)
		if (de->d_name[0] != '.')
			count++;
	if (d != NULL)
		closedir(d);
	free(path);
	return count;
}

/* A body whose size is not its row's is deleted and fetched again when
 * the server has it; a pinned body or one of a local folder is the only
 * copy: it is never deleted, a copy goes to quarantine/, and the bytes
 * that are there are served (AUDIT A6). */
static void test_damaged_bodies(void)
{
	char *dir = test_dir("damaged");
	struct cache *cache = test_open(dir, 1 << 20);
	int64_t inbox = test_folder(cache, "INBOX"), local = 0;
	struct cache_msg m;
	char buf[64];
	int fd;

	CHECK(cache_folder_put(cache, 0, "archive", "\x01test:archive",
			       CACHE_FOLDER_LOCAL, &local) == 0);
	for (uint32_t uid = 1; uid <= 3; uid++) {
		int64_t folder = uid == 3 ? local : inbox;

		CHECK(test_put(cache, folder, uid, NULL, "d", 40, NULL) == 0);
		CHECK(test_store(cache, folder, uid, 40, 'd') == 0);
		CHECK(cache_body_verify(cache, folder, uid) == 0);
		test_damage(dir, folder, uid, 25);
		CHECK(cache_body_verify(cache, folder, uid) == -EIO);
	}
	CHECK(cache_msg_set_pinned(cache, inbox, 2, true) == 0);
	/* Unpinned, ordinary: dropped, to be fetched again. */
	CHECK(cache_body_open(cache, inbox, 1) == -ENOENT);
	CHECK(!test_cached(cache, inbox, 1));
	/* Pinned, and local: served as they are, never deleted. */
	for (uint32_t uid = 2; uid <= 3; uid++) {
		int64_t folder = uid == 3 ? local : inbox;

		fd = cache_body_open(cache, folder, uid);
		CHECK(fd >= 0);
		if (fd >= 0) {
			CHECK(read(fd, buf, sizeof(buf)) == 25);
			close(fd);
		}
		/* The row keeps the stored size: still not verified. */
		CHECK(cache_msg_get(cache, folder, uid, &m) == 0);
		CHECK(m.cached && m.size == 40);
		cache_msg_clear(&m);
		CHECK(cache_body_verify(cache, folder, uid) == -EIO);
		/* Opened again: one copy in quarantine/, still served. */
		fd = cache_body_open(cache, folder, uid);
		CHECK(fd >= 0);
		if (fd >= 0)
			close(fd);
	}
	CHECK(test_count_dir(dir, "quarantine") == 2);
	CHECK(cache_bytes(cache) == 40);
	CHECK(cache_local_bytes(cache) == 40);
	/* The quarantined copies survive a reopen's sweep. */
	cache_close(&cache);
	cache = test_open(dir, 1 << 20);
	CHECK(test_count_dir(dir, "quarantine") == 2);
	CHECK(test_cached(cache, inbox, 2) && test_cached(cache, local, 3));
	/* Missing: verify says so. */
	CHECK(cache_body_verify(cache, inbox, 1) == -ENOENT);
	CHECK(cache_body_verify(cache, inbox, 99) == -ENOENT);
	cache_close(&cache);
	free(dir);
}

/* A store with folder "archive" and message 1 (body "kept"), closed. */
static void test_make_store(const char *dir)
{
	struct cache *cache = test_open(dir, 1 << 20);
	int64_t folder = test_folder(cache, "archive");

	CHECK(test_put(cache, folder, 1, NULL, "k", 4, NULL) == 0);
	CHECK(cache_body_store(cache, folder, 1, "kept", 4) == 0);
	cache_close(&cache);
}

/* The store in dir has message 1 with its body. */
static bool test_has_store(const char *dir)
{
	struct cache *cache = test_open(dir, 1 << 20);
	struct cache_folder f;
	char buf[8] = { 0 };
	bool ok = false;
	int fd;

	if (cache_folder_lookup(cache, 0, "archive", &f) == 0) {
		fd = cache_body_open(cache, f.id, 1);
		ok = fd >= 0 && read(fd, buf, sizeof(buf)) == 4 &&
		     memcmp(buf, "kept", 4) == 0;
		if (fd >= 0)
			close(fd);
		cache_folder_clear(&f);
	}
	cache_close(&cache);
	return ok;
}

/* An earlier version's store moves from the cache dir to the data dir
 * (AUDIT A6); an interrupted move is finished. */
static void test_store_move(void)
{
	char *old = test_dir("move-old"), *to = test_dir("data/acct");
	char *none = test_dir("move-none"), *moving, *rel, *dst;
	const char *error = NULL;

	/* Nothing there: nothing to do, nothing created.  A store of
	 * another kind (no such folder) stays where it is. */
	CHECK(cache_store_move(none, to, "archive", &error) == 0);
	CHECK(access(to, F_OK) < 0);

	test_make_store(old);
	CHECK(cache_store_move(old, to, "other", &error) == 0);
	CHECK(test_exists(old, "index.sqlite") && access(to, F_OK) < 0);
	CHECK(cache_store_move(old, to, "archive", &error) == 0);
	CHECK(!test_exists(old, "index.sqlite") && !test_exists(old, "bodies"));
	CHECK(test_has_store(to));
	/* Done once: a second call finds nothing to move. */
	CHECK(cache_store_move(old, to, "archive", &error) == 0);
	CHECK(test_has_store(to));

	/* Both hold a store: refused, nothing moved. */
	test_rm_rf(old);
	test_make_store(old);
	error = NULL;
	CHECK(cache_store_move(old, to, "archive", &error) == -EEXIST);
	CHECK(error != NULL && strstr(error, "data_dir=") != NULL);
	CHECK(test_exists(old, "index.sqlite"));
	/* The same directory: nothing to do. */
	CHECK(cache_store_move(old, old, "archive", &error) == 0);
	CHECK(test_exists(old, "index.sqlite"));

	/* Killed after the bodies moved, before the index did: finished. */
	test_rm_rf(to);
	if (asprintf(&moving, "%s.moving", to) < 0)
		abort();
	CHECK(mkdir(moving, 0700) == 0);
	rel = test_path(old, "bodies");
	dst = test_path(moving, "bodies");
	CHECK(rename(rel, dst) == 0);
	CHECK(cache_store_move(old, to, "archive", &error) == 0);
	CHECK(access(moving, F_OK) < 0);
	CHECK(!test_exists(old, "index.sqlite"));
	CHECK(test_has_store(to));

	free(rel);
	free(dst);
	free(moving);
	free(none);
	free(to);
	free(old);
}

static void test_timing(void)
{
	enum { N = 10000 };
	char *dir = test_dir("timing");
	struct cache *cache = test_open(dir, 1 << 30);
	int64_t folder = test_folder(cache, "INBOX");
	double t0, t_put, t_lookup, t_get, t_list, t_store, t_open;
	char name[64];
	int fails = 0;

	t0 = test_now();
	for (uint32_t uid = 1; uid <= N; uid++) {
		snprintf(name, sizeof(name), "2024-01-01 10.%02u Sender - "
			 "Subject %u", uid % 60, uid);
		if (test_put(cache, folder, uid, NULL, name, 1000, NULL) < 0)
			fails++;
	}
	t_put = test_now() - t0;
	CHECK(fails == 0);

	t0 = test_now();
	for (uint32_t uid = 1; uid <= N; uid++) {
		struct cache_msg m;

		snprintf(name, sizeof(name), "2024-01-01 10.%02u Sender - "
			 "Subject %u.eml", uid % 60, uid);
		if (cache_msg_lookup(cache, folder, name, &m) < 0 ||
		    m.uid != uid)
			fails++;
		cache_msg_clear(&m);
	}
	t_lookup = test_now() - t0;
	CHECK(fails == 0);

	t0 = test_now();
	for (uint32_t uid = 1; uid <= N; uid++) {
		struct cache_msg m;

		if (cache_msg_get(cache, folder, uid, &m) < 0)
			fails++;
		cache_msg_clear(&m);
	}
	t_get = test_now() - t0;
	CHECK(fails == 0);

	t0 = test_now();
	{
		struct cache_msg *msgs;
		uint32_t after = 0;
		size_t count, total = 0;

		do {
			if (cache_msg_list(cache, folder, after, 256, &msgs,
					   &count) < 0)
				break;
			if (count > 0)
				after = msgs[count - 1].uid;
			total += count;
			cache_msg_list_free(msgs, count);
		} while (count > 0);
		CHECK(total == N);
	}
	t_list = test_now() - t0;

	/* Bodies pay three fsyncs each; 100 are enough to see the cost. */
	t0 = test_now();
	for (uint32_t uid = 1; uid <= 100; uid++)
		if (test_store(cache, folder, uid, 4000, 'x') < 0)
			fails++;
	t_store = test_now() - t0;
	t0 = test_now();
	for (int i = 0; i < N; i++)
		if (test_touch(cache, folder, (uint32_t)(i % 100) + 1) < 0)
			fails++;
	t_open = test_now() - t0;
	CHECK(fails == 0);

	printf("timing: %d puts %.3f s, %d lookups %.3f s, %d gets %.3f s, "
	       "list all %.3f s, 100 body stores %.3f s, %d body opens "
	       "%.3f s\n",
	       N, t_put, N, t_lookup, N, t_get, t_list, t_store, N, t_open);
	/* Generous: sanitizers and a busy machine are slower. */
	CHECK(t_put < 10.0 && t_lookup < 10.0 && t_get < 10.0);

	/* Many collisions of one base: suffixes stay unique and ordered. */
	{
		int64_t same = test_folder(cache, "Same");
		char *got;

		for (uint32_t uid = 1; uid <= 300; uid++) {
			if (test_put(cache, same, uid, NULL, "Same", 1, &got) <
			    0) {
				fails++;
				continue;
			}
			if (uid == 1)
				snprintf(name, sizeof(name), "Same.eml");
			else
				snprintf(name, sizeof(name), "Same (%u).eml",
					 uid);
			if (strcmp(got, name) != 0)
				fails++;
			free(got);
		}
		CHECK(fails == 0);
	}
	cache_close(&cache);
	free(dir);
}

/* Rows of messages of a folder as another connection sees them: what is
 * committed. */
static int test_committed(const char *dir, int64_t folder)
{
	char *index = test_path(dir, "index.sqlite");
	sqlite3_stmt *st = NULL;
	sqlite3 *db = NULL;
	int count = -1;

	if (sqlite3_open_v2(index, &db, SQLITE_OPEN_READONLY, NULL) ==
		    SQLITE_OK &&
	    sqlite3_prepare_v2(db, "SELECT COUNT(*) FROM messages WHERE "
				   "folder_id = ?1",
			       -1, &st, NULL) == SQLITE_OK) {
		sqlite3_bind_int64(st, 1, folder);
		if (sqlite3_step(st) == SQLITE_ROW)
			count = sqlite3_column_int(st, 0);
	}
	sqlite3_finalize(st);
	sqlite3_close(db);
	free(index);
	return count;
}

struct test_waiter {
	struct cache *cache;
	int64_t folder;
	volatile int done;
};

static void *test_waiter_main(void *arg)
{
	struct test_waiter *w = arg;
	struct cache_msg m;

	if (cache_msg_get(w->cache, w->folder, 1, &m) == 0)
		cache_msg_clear(&m);
	__atomic_store_n(&w->done, 1, __ATOMIC_SEQ_CST);
	return NULL;
}

static void test_batches(void)
{
	enum { N = 10000, BATCH = 500 };
	char *dir = test_dir("batch");
	struct cache *cache = test_open(dir, 2500);
	int64_t folder = test_folder(cache, "INBOX");
	int64_t bulk = test_folder(cache, "Bulk");
	struct test_waiter waiter = { .cache = cache, .folder = folder };
	pthread_t tid;
	double t0, t_put;
	char name[64];
	int fails = 0;

	CHECK(cache_commit(cache) == -EINVAL);

	/* Nested: only the outermost commit makes it visible. */
	CHECK(cache_begin(cache) == 0);
	CHECK(cache_begin(cache) == 0);
	CHECK(test_put(cache, folder, 1, NULL, "b", 10, NULL) == 0);
	CHECK(test_put(cache, folder, 2, NULL, "b", 10, NULL) == 0);
	CHECK(test_put(cache, folder, 3, "b.eml", NULL, 10, NULL) == -EEXIST);
	CHECK(cache_commit(cache) == 0);
	CHECK(test_committed(dir, folder) == 0);
	CHECK(cache_msg_count(cache, folder) == 2);

	/* Other threads wait for the batch. */
	CHECK(pthread_create(&tid, NULL, test_waiter_main, &waiter) == 0);
	usleep(100 * 1000);
	CHECK(__atomic_load_n(&waiter.done, __ATOMIC_SEQ_CST) == 0);
	CHECK(cache_commit(cache) == 0);
	pthread_join(tid, NULL);
	CHECK(waiter.done == 1);
	CHECK(test_committed(dir, folder) == 2);
	CHECK(cache_commit(cache) == -EINVAL);

	/* Bodies, eviction and a folder reset inside a batch. */
	CHECK(cache_begin(cache) == 0);
	for (uint32_t uid = 3; uid <= 6; uid++)
		CHECK(test_put(cache, folder, uid, NULL, "b", 10, NULL) == 0);
	for (uint32_t uid = 1; uid <= 6; uid++)
		CHECK(test_store(cache, folder, uid, 1000, 'x') == 0);
	CHECK(cache_bytes(cache) == 2000);
	CHECK(test_cached(cache, folder, 6) && test_cached(cache, folder, 5));
	CHECK(!test_cached(cache, folder, 1));
	CHECK(test_put(cache, bulk, 1, NULL, "r", 10, NULL) == 0);
	CHECK(test_store(cache, bulk, 1, 500, 'r') == 0);
	CHECK(cache_folder_reset(cache, bulk) == 0);
	CHECK(cache_bytes(cache) == 2000);
	CHECK(cache_commit(cache) == 0);
	CHECK(test_committed(dir, folder) == 6);
	CHECK(test_count_bodies(dir, "") == 2);
	cache_close(&cache);
	cache = test_open(dir, 2500);
	CHECK(cache_bytes(cache) == 2000);

	/* The burst case: a first sync of a big folder. */
	t0 = test_now();
	for (uint32_t uid = 1; uid <= N; uid++) {
		if (uid % BATCH == 1 && cache_begin(cache) < 0)
			fails++;
		snprintf(name, sizeof(name), "2024-01-01 10.%02u Sender - "
			 "Subject %u", uid % 60, uid);
		if (test_put(cache, bulk, uid, NULL, name, 1000, NULL) < 0)
			fails++;
		if (uid % BATCH == 0 && cache_commit(cache) < 0)
			fails++;
	}
	t_put = test_now() - t0;
	CHECK(fails == 0);
	CHECK(test_committed(dir, bulk) == N);
	printf("timing: %d puts in batches of %d %.3f s\n", N, BATCH, t_put);
	cache_close(&cache);
	free(dir);
}

/* ---- threads ---- */

enum { TEST_THREADS = 4, TEST_ROUNDS = 200 };

struct test_thread {
	struct cache *cache;
	int64_t shared;  /* folder all threads put into */
	int64_t own;     /* folder only this thread uses */
	int index;
	int errors;
};

static void *test_thread_main(void *arg)
{
	struct test_thread *t = arg;
	char data[512];

	memset(data, 'a' + t->index, sizeof(data));
	for (int i = 0; i < TEST_ROUNDS; i++) {
		uint32_t uid = (uint32_t)(t->index * 100000 + i + 1);
		struct cache_msg m;
		char *name = NULL;
		int fd, ret;

		/* Same base from every thread: the suffix choice and the
		 * insert must be one atomic step. */
		if (test_put(t->cache, t->shared, uid, NULL, "Race", 10,
			     &name) < 0) {
			t->errors++;
			continue;
		}
		if (cache_msg_lookup(t->cache, t->shared, name, &m) < 0 ||
		    m.uid != uid)
			t->errors++;
		cache_msg_clear(&m);
		free(name);

		if (test_put(t->cache, t->own, (uint32_t)i + 1, NULL, "own", 10,
			     NULL) < 0)
			t->errors++;
		/* Every other round: each store pays three fsyncs. */
		if (i % 2 == 0 &&
		    cache_body_store(t->cache, t->own, (uint32_t)i + 1, data,
				     sizeof(data)) < 0)
			t->errors++;
		/* Eviction by other threads may have taken an older one:
		 * -ENOENT is fine, anything else is not. */
		fd = cache_body_open(t->cache, t->own, (uint32_t)(i / 2) + 1);
		if (fd >= 0) {
			char c;

			if (read(fd, &c, 1) != 1 || c != 'a' + t->index)
				t->errors++;
			close(fd);
		} else if (fd != -ENOENT) {
			t->errors++;
		}
		ret = cache_msg_get(t->cache, t->shared, uid, &m);
		if (ret < 0)
			t->errors++;
		cache_msg_clear(&m);
		(void)cache_bytes(t->cache);
	}
	return NULL;
}

static void test_threads(void)
{
	char *dir = test_dir("threads");
	const uint64_t limit = 40 * 512;
	struct cache *cache = test_open(dir, limit);
	struct test_thread threads[TEST_THREADS];
	pthread_t tids[TEST_THREADS];
	int64_t shared = test_folder(cache, "Shared");
	uint64_t sum = 0;
	size_t cached = 0, total_names = 0;
	int errors = 0;

	for (int i = 0; i < TEST_THREADS; i++) {
		char name[16];

		snprintf(name, sizeof(name), "own%d", i);
		threads[i] = (struct test_thread){
			.cache = cache,
			.shared = shared,
			.own = test_folder(cache, name),
			.index = i,
		};
	}
	for (int i = 0; i < TEST_THREADS; i++)
		CHECK(pthread_create(&tids[i], NULL, test_thread_main,
				     &threads[i]) == 0);
	for (int i = 0; i < TEST_THREADS; i++) {
		pthread_join(tids[i], NULL);
		errors += threads[i].errors;
	}
	CHECK(errors == 0);

	/* Every name distinct and in the "Race (n).eml" series. */
	{
		struct cache_msg *msgs;
		size_t count;
		char *seen = calloc(TEST_THREADS * TEST_ROUNDS + 2, 1);

		CHECK(cache_msg_list(cache, shared, 0, SIZE_MAX, &msgs,
				     &count) == 0);
		CHECK(count == TEST_THREADS * TEST_ROUNDS);
		for (size_t i = 0; i < count; i++) {
			unsigned n = 1;

			if (strcmp(msgs[i].name, "Race.eml") != 0 &&
			    sscanf(msgs[i].name, "Race (%u).eml", &n) != 1)
				n = 0;
			if (n == 0 || n > TEST_THREADS * TEST_ROUNDS ||
			    seen[n])
				errors++;
			else
				seen[n] = 1;
			total_names++;
		}
		cache_msg_list_free(msgs, count);
		free(seen);
		CHECK(errors == 0);
	}

	/* The in-memory total is the index's sum, within the limit. */
	for (int i = 0; i < TEST_THREADS; i++) {
		struct cache_msg *msgs;
		size_t count;

		CHECK(cache_msg_list(cache, threads[i].own, 0, SIZE_MAX, &msgs,
				     &count) == 0);
		for (size_t j = 0; j < count; j++) {
			if (msgs[j].cached) {
				sum += msgs[j].size;
				cached++;
			}
		}
		cache_msg_list_free(msgs, count);
	}
	CHECK(sum == cache_bytes(cache));
	CHECK(cache_bytes(cache) <= limit);
	CHECK(test_count_bodies(dir, "") == (int)cached);
	CHECK(test_count_bodies(dir, ".tmp") == 0);
	printf("threads: %d x %d rounds, %zu names, %zu bodies cached "
	       "(%" PRIu64 " bytes)\n",
	       TEST_THREADS, TEST_ROUNDS, total_names, cached, sum);
	cache_close(&cache);
	cache = test_open(dir, limit);
	CHECK(cache_bytes(cache) == sum);
	cache_close(&cache);
	free(dir);
}

static int test_cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* 5,000 messages with one base (same minute, sender and subject): each
 * name costs O(log n) lookups, not one per taken suffix (AUDIT C4:
 * quadratic, with the cache lock held), and all names differ. */
static void test_many_collisions(void)
{
	enum { N = 5000 };
	char *dir = test_dir("collisions");
	struct cache *cache = test_open(dir, 1 << 20);
	int64_t folder = test_folder(cache, "INBOX");
	char **names = calloc(N, sizeof(*names));
	clock_t start = clock();
	bool ok = true;

	CHECK(names != NULL);
	if (names == NULL)
		return;
	for (uint32_t i = 0; i < N; i++) {
		if (i % 500 == 0)
			cache_begin(cache);
		ok &= test_put(cache, folder, i + 1, NULL, "2025-06-02 1000 Same - Same", 10,
			       &names[i]) == 0 && names[i] != NULL;
		if (i % 500 == 499 || i == N - 1)
			cache_commit(cache);
	}
	double secs = (double)(clock() - start) / CLOCKS_PER_SEC;
	CHECK(ok);
	printf("collisions: %d names with one base in %.2f s of CPU\n", N, secs);
	CHECK(secs < 3.0);
	if (ok) {
		qsort(names, N, sizeof(*names), test_cmp_str);
		for (size_t i = 1; i < N; i++)
			ok &= strcmp(names[i - 1], names[i]) != 0;
		CHECK(ok);
	}
	for (size_t i = 0; i < N; i++)
		free(names[i]);
	free(names);
	cache_close(&cache);
	free(dir);
}

int main(void)
{
	if (mkdtemp(test_root) == NULL) {
		perror("mkdtemp");
		return 1;
	}
	test_permissions();
	test_open_errors();
	test_folders();
	test_msg_names();
	test_msg_ops();
	test_bodies();
	test_persistence();
	test_kv();
	test_reset_delete();
	test_lru();
	test_local_folders();
	test_old_archive_at_open();
	test_damaged_bodies();
	test_store_move();
	test_timing();
	test_batches();
	test_threads();
	test_many_collisions();
	test_rm_rf(test_root);
	return check_exit();
}
