/* journal.h: the durable log of changes made in the mount while the server
 * could not confirm them (SPEC.md: "changes are written to a durable
 * journal and replayed, in order, when the connection returns").
 *
 * One SQLite file (journal.sqlite) next to the cache index, written with
 * synchronous=FULL: an entry that journal_add() returned for survives a
 * crash, kill -9 or power loss.  The engine writes the entry first and
 * changes the cache after, so a crash in between leaves an entry whose
 * replay the next sync reconciles, never a change that is lost.
 *
 * Entries name folders by their cache id (stable across renames) and by
 * the server's name at the time, which is what the replay must use while
 * earlier renames are still pending.  Messages created in the mount while
 * offline (moved in, copied in) get a local UID at or above
 * JOURNAL_LOCAL_UID until their replay learns the server's. */
#ifndef MAILFS_JOURNAL_H
#define MAILFS_JOURNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Local UIDs: far above any UID a server hands out in practice (they
 * count up from 1 per folder); never sent to a server. */
#define JOURNAL_LOCAL_UID 0xF0000000u

static inline bool journal_uid_is_local(uint32_t uid)
{
	return uid >= JOURNAL_LOCAL_UID;
}

enum journal_kind {
	JOURNAL_REMOVE = 1, /* folder, uid */
	JOURNAL_MOVE,       /* folder, uid -> to_folder (local to_uid) */
	JOURNAL_APPEND,     /* folder (local uid), data, mtime */
	JOURNAL_FLAGS,      /* folder, uid, flags */
	JOURNAL_MKDIR,      /* server_name (folder: its cache id) */
	JOURNAL_RMDIR,      /* server_name; flags "\\Noselect" when it was one */
	JOURNAL_RENAME,     /* server_name -> to_server_name */
};

struct journal_entry {
	int64_t seq;          /* order of replay; set by journal_add() */
	enum journal_kind kind;
	int64_t folder_id;
	uint32_t uid;
	uint32_t uidvalidity; /* of folder_id when the change was made */
	int64_t to_folder_id;
	uint32_t to_uid;
	char *server_name;    /* folder_id's name on the server then */
	char *to_server_name;
	char *name;           /* the file or directory name in the mount */
	char *flags;
	int64_t mtime;
	void *data;           /* APPEND: the message, CRLF line ends */
	size_t len;
	bool attempted;       /* sent once already: check before resending */
	uint32_t hint;        /* with attempted: the target's UIDNEXT before the
			       * send, so a check looks only at newer UIDs */
	char *message_id;     /* MOVE: the message's, to find it after a cut */
};

struct journal;

/* Open (creating) DIR/journal.sqlite, mode 0600.  0 or -errno. */
int journal_open(struct journal **j_r, const char *dir);
void journal_close(struct journal **j);

/* Append e (its seq is set).  Durable when it returns 0. */
int journal_add(struct journal *j, struct journal_entry *e);
/* The same for a message that arrives in a folder offline (APPEND: e->uid,
 * MOVE: e->to_uid): gives it a local UID above `above` (the highest local
 * UID the cache holds) that no message has had before, in the same
 * transaction as the entry, so concurrent callers never share one. */
int journal_add_local(struct journal *j, struct journal_entry *e, uint32_t above);
/* The oldest entry: 0, -ENOENT when the journal is empty, or -errno. */
int journal_first(struct journal *j, struct journal_entry *e_r);
/* Remove an entry once replayed (or given up). */
int journal_done(struct journal *j, int64_t seq);
/* Record, durably, that the entry's command is about to be sent, and the
 * target folder's UIDNEXT before it (0: unknown). */
int journal_set_attempted(struct journal *j, int64_t seq, uint32_t hint);
/* Later entries that name (folder_id, uid) name (to_folder_id, to_uid)
 * instead: a local UID became the server's, or a message moved. */
int journal_renumber(struct journal *j, int64_t folder_id, uint32_t uid,
		     int64_t to_folder_id, uint32_t to_uid);
/* rename() onto message NAME of folder_id journals the new message first,
 * as ".mailfs-N-NAME" (an APPEND into the folder or a MOVE to it): the
 * local UID of the latest such entry.  0, -ENOENT when none, or -errno. */
int journal_find_replacement(struct journal *j, int64_t folder_id, const char *name,
			     uint32_t *local_uid_r);
/* How many entries wait. */
unsigned journal_count(struct journal *j);
void journal_entry_clear(struct journal_entry *e);

#endif
