/* test-journal.c: the offline change journal: order, every field and the
 * message bytes survive a close and reopen (what a kill -9 leaves), local
 * UIDs, renumbering of later entries, file mode. */
#include "journal.h"

#include "check.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[] = "/tmp/mailfs-test-journal-XXXXXX";

static void add(struct journal *j, struct journal_entry *e)
{
	CHECK(journal_add(j, e) == 0);
	CHECK(e->seq > 0);
}

static void test_order_and_fields(void)
{
	struct journal *j;
	struct journal_entry e, got;
	char body[3000];

	for (size_t i = 0; i < sizeof(body); i++)
		body[i] = (char)(i * 7); /* NUL bytes too */
	CHECK(journal_open(&j, dir) == 0);
	CHECK(journal_count(j) == 0);
	CHECK(journal_first(j, &got) == -ENOENT);

	e = (struct journal_entry){ .kind = JOURNAL_REMOVE, .folder_id = 3, .uid = 17,
				    .uidvalidity = 99, .server_name = (char *)"INBOX" };
	add(j, &e);
	e = (struct journal_entry){ .kind = JOURNAL_APPEND, .folder_id = 4,
				    .uid = JOURNAL_LOCAL_UID, .server_name = (char *)"Sent",
				    .name = (char *)"note.eml", .mtime = 1700000000,
				    .data = body, .len = sizeof(body) };
	add(j, &e);
	e = (struct journal_entry){ .kind = JOURNAL_RENAME, .folder_id = 5,
				    .server_name = (char *)"A/B", .to_server_name = (char *)"C",
				    .name = (char *)"C" };
	add(j, &e);
	CHECK(journal_count(j) == 3);
	journal_close(&j);

	/* Reopened: nothing lost, still in order. */
	CHECK(journal_open(&j, dir) == 0);
	CHECK(journal_count(j) == 3);
	CHECK(journal_first(j, &got) == 0);
	CHECK(got.kind == JOURNAL_REMOVE && got.folder_id == 3 && got.uid == 17);
	CHECK(got.uidvalidity == 99 && !got.attempted);
	CHECK_STR(got.server_name, "INBOX");
	CHECK(got.data == NULL && got.name == NULL);
	CHECK(journal_done(j, got.seq) == 0);
	journal_entry_clear(&got);

	CHECK(journal_first(j, &got) == 0);
	CHECK(got.kind == JOURNAL_APPEND && got.uid == JOURNAL_LOCAL_UID);
	CHECK(got.len == sizeof(body) && got.data && memcmp(got.data, body, sizeof(body)) == 0);
	CHECK(got.mtime == 1700000000);
	CHECK_STR(got.name, "note.eml");
	CHECK(journal_set_attempted(j, got.seq, 41) == 0);
	int64_t seq = got.seq;
	journal_entry_clear(&got);
	journal_close(&j);
	CHECK(journal_open(&j, dir) == 0);
	CHECK(journal_first(j, &got) == 0);
	CHECK(got.seq == seq && got.attempted && got.hint == 41);
	CHECK(journal_done(j, got.seq) == 0);
	journal_entry_clear(&got);

	CHECK(journal_first(j, &got) == 0);
	CHECK(got.kind == JOURNAL_RENAME);
	CHECK_STR(got.server_name, "A/B");
	CHECK_STR(got.to_server_name, "C");
	CHECK(journal_done(j, got.seq) == 0);
	journal_entry_clear(&got);
	CHECK(journal_count(j) == 0);
	journal_close(&j);
}

static void test_local_uids_and_renumber(void)
{
	struct journal *j;
	struct journal_entry e, got;
	uint32_t l1, l2, l3;

	CHECK(journal_open(&j, dir) == 0);
	CHECK(journal_uid_is_local(JOURNAL_LOCAL_UID));
	CHECK(!journal_uid_is_local(JOURNAL_LOCAL_UID - 1));
	e = (struct journal_entry){ .kind = JOURNAL_APPEND, .folder_id = 7 };
	CHECK(journal_add_local(j, &e, 0) == 0);
	l1 = e.uid;
	CHECK(journal_uid_is_local(l1));
	/* The move's destination gets the local UID, never the same one twice. */
	e = (struct journal_entry){ .kind = JOURNAL_MOVE, .folder_id = 2, .uid = 40,
				    .to_folder_id = 7 };
	CHECK(journal_add_local(j, &e, 0) == 0);
	l2 = e.to_uid;
	CHECK(e.uid == 40 && l2 > l1);
	/* The cache's highest local UID counts too. */
	e = (struct journal_entry){ .kind = JOURNAL_APPEND, .folder_id = 8 };
	CHECK(journal_add_local(j, &e, l2 + 10) == 0);
	l3 = e.uid;
	CHECK(l3 == l2 + 11);
	/* Later changes to both: flags on the appended one, a move of the moved one. */
	e = (struct journal_entry){ .kind = JOURNAL_FLAGS, .folder_id = 7, .uid = l1,
				    .flags = (char *)"\\Flagged" };
	add(j, &e);
	e = (struct journal_entry){ .kind = JOURNAL_MOVE, .folder_id = 7, .uid = l2,
				    .to_folder_id = 9, .to_uid = l3 + 1 };
	add(j, &e);

	/* The append reached the server as UID 31: later entries follow. */
	CHECK(journal_renumber(j, 7, l1, 7, 31) == 0);
	/* The first move's destination became UID 32. */
	CHECK(journal_renumber(j, 7, l2, 7, 32) == 0);
	CHECK(journal_first(j, &got) == 0);
	CHECK(got.kind == JOURNAL_APPEND && got.uid == 31);
	journal_done(j, got.seq);
	journal_entry_clear(&got);
	CHECK(journal_first(j, &got) == 0);
	CHECK(got.kind == JOURNAL_MOVE && got.uid == 40 && got.to_uid == 32);
	journal_done(j, got.seq);
	journal_entry_clear(&got);
	CHECK(journal_first(j, &got) == 0);
	CHECK(got.kind == JOURNAL_APPEND && got.folder_id == 8 && got.uid == l3);
	journal_done(j, got.seq);
	journal_entry_clear(&got);
	CHECK(journal_first(j, &got) == 0);
	CHECK(got.kind == JOURNAL_FLAGS && got.folder_id == 7 && got.uid == 31);
	CHECK_STR(got.flags, "\\Flagged");
	journal_done(j, got.seq);
	journal_entry_clear(&got);
	CHECK(journal_first(j, &got) == 0);
	CHECK(got.kind == JOURNAL_MOVE && got.folder_id == 7 && got.uid == 32);
	CHECK(got.to_folder_id == 9);
	journal_done(j, got.seq);
	journal_entry_clear(&got);
	CHECK(journal_count(j) == 0);
	journal_close(&j);

	/* Emptied and reopened: local UIDs never start over (the kernel may
	 * still know an inode by an old one). */
	CHECK(journal_open(&j, dir) == 0);
	e = (struct journal_entry){ .kind = JOURNAL_APPEND, .folder_id = 7 };
	CHECK(journal_add_local(j, &e, 0) == 0);
	CHECK(e.uid > l3);
	journal_done(j, e.seq);
	journal_close(&j);
}

/* Threads adding local entries at once never share a UID. */
struct racer {
	struct journal *j;
	uint32_t uids[50];
};

static void *race(void *arg)
{
	struct racer *r = arg;

	for (int i = 0; i < 50; i++) {
		struct journal_entry e = { .kind = JOURNAL_APPEND, .folder_id = 3 };

		r->uids[i] = journal_add_local(r->j, &e, 0) == 0 ? e.uid : 0;
	}
	return NULL;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

static void test_concurrent_local_uids(void)
{
	struct journal *j;
	struct racer r[4];
	pthread_t t[4];
	uint32_t all[200];
	bool distinct = true;

	CHECK(journal_open(&j, dir) == 0);
	for (int i = 0; i < 4; i++) {
		r[i].j = j;
		pthread_create(&t[i], NULL, race, &r[i]);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(t[i], NULL);
		memcpy(all + 50 * i, r[i].uids, sizeof(r[i].uids));
	}
	qsort(all, 200, sizeof(all[0]), cmp_u32);
	for (int i = 0; i < 200; i++)
		distinct = distinct && all[i] != 0 && (i == 0 || all[i] != all[i - 1]);
	CHECK(distinct);
	CHECK(journal_count(j) == 200);
	journal_close(&j);
}

static void test_private_file(void)
{
	struct journal *j;
	struct stat st;
	char path[128];

	snprintf(path, sizeof(path), "%s/journal.sqlite", dir);
	chmod(path, 0644);
	CHECK(journal_open(&j, dir) == 0);
	CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600);
	journal_close(&j);
	CHECK(journal_open(&j, "/nonexistent/dir") < 0 && j == NULL);
}

/* Empty the journal between tests. */
static void drain(struct journal *j)
{
	struct journal_entry e;

	while (journal_first(j, &e) == 0) {
		journal_done(j, e.seq);
		journal_entry_clear(&e);
	}
}

/* rename() onto a message: the victim's REMOVE finds the replacement
 * (".mailfs-N-NAME"), and one that an earlier version wrote without it
 * is linked to it when the journal is opened. */
static void test_replacement_link(void)
{
	struct journal *j;
	struct journal_entry e, got;
	uint32_t local = 0;

	CHECK(journal_open(&j, dir) == 0);
	drain(j);
	e = (struct journal_entry){ .kind = JOURNAL_APPEND, .folder_id = 7,
				    .server_name = (char *)"INBOX",
				    .name = (char *)".mailfs-1796413560000001-x y.eml",
				    .data = (char *)"a: b\r\n\r\n", .len = 8 };
	CHECK(journal_add_local(j, &e, 0) == 0);
	CHECK(journal_uid_is_local(e.uid));
	CHECK(journal_find_replacement(j, 7, "x y.eml", &local) == 0 && local == e.uid);
	CHECK(journal_find_replacement(j, 7, "y.eml", &local) == -ENOENT);
	CHECK(journal_find_replacement(j, 8, "x y.eml", &local) == -ENOENT);
	/* As an earlier version wrote it: no to_uid. */
	struct journal_entry r = { .kind = JOURNAL_REMOVE, .folder_id = 7, .uid = 3,
				   .server_name = (char *)"INBOX", .name = (char *)"x y.eml" };
	add(j, &r);
	struct journal_entry other = { .kind = JOURNAL_REMOVE, .folder_id = 7, .uid = 4,
				       .server_name = (char *)"INBOX", .name = (char *)"z.eml" };
	add(j, &other);
	journal_close(&j);
	CHECK(journal_open(&j, dir) == 0);
	CHECK(journal_first(j, &got) == 0 && got.kind == JOURNAL_APPEND);
	journal_done(j, got.seq);
	journal_entry_clear(&got);
	CHECK(journal_first(j, &got) == 0 && got.kind == JOURNAL_REMOVE && got.uid == 3);
	CHECK(got.to_uid == e.uid && got.to_folder_id == 7);
	journal_done(j, got.seq);
	journal_entry_clear(&got);
	CHECK(journal_first(j, &got) == 0 && got.kind == JOURNAL_REMOVE && got.uid == 4);
	CHECK(got.to_uid == 0 && got.to_folder_id == 0);
	journal_entry_clear(&got);
	drain(j);
	journal_close(&j);
}

int main(void)
{
	char cmd[128];

	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	test_order_and_fields();
	test_local_uids_and_renumber();
	test_concurrent_local_uids();
	test_private_file();
	test_replacement_link();
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "cannot remove %s\n", dir);
	return check_exit();
}
