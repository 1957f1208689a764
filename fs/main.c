/* main.c: the mailfs command.
 *
 *   mailfs [-f] [-d] [-o OPT[,OPT...]] SOURCE MOUNTPOINT
 *   mailfs password set|clear SOURCE
 *
 * Startup order matters: everything a user can get wrong (the URL, the
 * mountpoint, the password, the certificate, the cache directory) is
 * checked and the server is logged in to and listed BEFORE detaching, so
 * the command itself fails with one line and a non-zero status.  Threads
 * start only after fuse_daemonize(): fork keeps only the calling thread. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <fuse_lowlevel.h>

#include "cache.h"
#include "fs.h"
#include "imap-store.h"
#include "pop3-store.h"
#include "log.h"
#include "password.h"
#include "url.h"

struct config {
	char *source;
	char *mountpoint;
	char *password_file;
	char *password_command;
	char *cafile;
	char *cache_dir;
	char *data_dir;
	char *cache_size;
	char *names;
	char *delete_mode;
	unsigned poll;
	unsigned connections;
	int insecure;
	int keep;
	int ro;
	int trace;
	int nonopts;
};

enum { KEY_TRACE, KEY_HELP, KEY_VERSION };

#define OPT(t, f, v) { t, offsetof(struct config, f), v }
static const struct fuse_opt config_opts[] = {
	OPT("password_file=%s", password_file, 0),
	OPT("password_command=%s", password_command, 0),
	OPT("cafile=%s", cafile, 0),
	OPT("cache_dir=%s", cache_dir, 0),
	OPT("data_dir=%s", data_dir, 0),
	OPT("cache_size=%s", cache_size, 0),
	OPT("names=%s", names, 0),
	OPT("delete=%s", delete_mode, 0),
	OPT("poll=%u", poll, 0),
	OPT("connections=%u", connections, 0),
	OPT("insecure", insecure, 1),
	OPT("keep", keep, 1),
	OPT("ro", ro, 1),
	FUSE_OPT_KEY("-d", KEY_TRACE),
	FUSE_OPT_KEY("-h", KEY_HELP),
	FUSE_OPT_KEY("--help", KEY_HELP),
	FUSE_OPT_KEY("-V", KEY_VERSION),
	FUSE_OPT_KEY("--version", KEY_VERSION),
	FUSE_OPT_END
};

static void usage(FILE *out)
{
	fprintf(out,
		"usage: mailfs [-f] [-d] [-o OPT[,OPT...]] SOURCE MOUNTPOINT\n"
		"       mailfs password set|clear SOURCE\n"
		"\n"
		"SOURCE: imaps://USER@HOST[:PORT], imap://USER@HOST[:PORT] (STARTTLS),\n"
		"        pop3s://USER@HOST[:PORT], pop3://USER@HOST[:PORT] (STLS)\n"
		"\n"
		"  -f                     stay in the foreground\n"
		"  -d                     trace the mail protocol (passwords redacted)\n"
		"  -o password_file=FILE  read the password from FILE (mode 0600)\n"
		"  -o password_command=CMD  first output line of CMD is the password\n"
		"  -o cafile=FILE         also trust the CA or certificate in FILE\n"
		"  -o insecure            no certificate verification (warns)\n"
		"  -o cache_dir=DIR       cache location (default $XDG_CACHE_HOME/mailfs/USER@HOST:PORT)\n"
		"  -o data_dir=DIR        POP3: where the spool and the archive live\n"
		"                         (default $XDG_DATA_HOME/mailfs/USER@HOST:PORT)\n"
		"  -o cache_size=SIZE     bound on cached bodies, e.g. 512M, 2G (default 1G)\n"
		"  -o poll=SECONDS        how often folders are checked (default 60)\n"
		"  -o names=readable|uid  file naming (default readable)\n"
		"  -o delete=expunge|trash  what rm does on the server (default expunge)\n"
		"  -o keep                POP3: leave messages on the server\n"
		"  -o ro                  read-only mount\n"
		"\n"
		"Unmount with: fusermount3 -u MOUNTPOINT\n");
}

static int opt_proc(void *data, const char *arg, int key, struct fuse_args *outargs)
{
	struct config *c = data;

	(void)outargs;
	switch (key) {
	case FUSE_OPT_KEY_NONOPT:
		c->nonopts++;
		if (!c->source) {
			c->source = strdup(arg);
			return 0;
		}
		if (!c->mountpoint)
			c->mountpoint = strdup(arg);
		return 1; /* fuse_parse_cmdline takes the mountpoint */
	case KEY_TRACE:
		c->trace = 1;
		return 0;
	case KEY_HELP:
		usage(stdout);
		exit(0);
	case KEY_VERSION:
		printf("mailfs %s (libfuse %s)\n", MAILFS_VERSION, fuse_pkgversion());
		exit(0);
	}
	return 1;
}

/* "512M", "2G", "1048576" */
static int parse_size(const char *s, uint64_t *r)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s)
		return -1;
	switch (*end) {
	case 'k': case 'K': v <<= 10; end++; break;
	case 'm': case 'M': v <<= 20; end++; break;
	case 'g': case 'G': v <<= 30; end++; break;
	case 't': case 'T': v <<= 40; end++; break;
	}
	if (*end == 'B' || *end == 'b')
		end++;
	if (*end)
		return -1;
	*r = v;
	return 0;
}

static char *default_cache_dir(const struct url *url)
{
	const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
	char *dir = NULL;
	int n;

	if (xdg && *xdg)
		n = asprintf(&dir, "%s/mailfs/%s@%s:%d", xdg, url->user, url->host, url->port);
	else
		n = asprintf(&dir, "%s/.cache/mailfs/%s@%s:%d", home && *home ? home : "/tmp",
			     url->user, url->host, url->port);
	return n < 0 ? NULL : dir;
}

/* State, not cache: POP3's archive is the only copy of what was read.
 * $XDG_DATA_HOME, else ~/.local/share; HOME from the environment, else
 * the password database (a mount from fstab may have no HOME).  Never
 * /tmp, which is emptied at boot. */
static char *default_data_dir(const struct url *url)
{
	const char *xdg = getenv("XDG_DATA_HOME"), *home = getenv("HOME");
	char *dir = NULL;
	int n;

	if (xdg && *xdg == '/')
		n = asprintf(&dir, "%s/mailfs/%s@%s:%d", xdg, url->user, url->host, url->port);
	else {
		if (!home || !*home) {
			struct passwd *pw = getpwuid(getuid());

			home = pw && pw->pw_dir && *pw->pw_dir ? pw->pw_dir : NULL;
		}
		if (!home)
			return NULL;
		n = asprintf(&dir, "%s/.local/share/mailfs/%s@%s:%d", home, url->user, url->host,
			     url->port);
	}
	return n < 0 ? NULL : dir;
}

static int password_command_main(int argc, char **argv)
{
	struct url url;
	const char *err;
	int r;

	if (argc != 4 || (strcmp(argv[2], "set") && strcmp(argv[2], "clear"))) {
		fprintf(stderr, "usage: mailfs password set|clear SOURCE\n");
		return 2;
	}
	log_init(false);
	if (url_parse(argv[3], &url, &err) < 0) {
		fprintf(stderr, "mailfs: %s\n", err);
		return 2;
	}
	if (!strcmp(argv[2], "set"))
		r = password_keyring_set(&url, &err);
	else
		r = password_keyring_clear(&url, &err);
	if (r < 0)
		fprintf(stderr, "mailfs: %s\n", err);
	else
		fprintf(stderr, "mailfs: password %s for %s@%s\n",
			!strcmp(argv[2], "set") ? "stored" : "removed", url.user, url.host);
	url_free(&url);
	return r < 0 ? 1 : 0;
}

/* Make a relative path option absolute; files that must exist are
 * checked later by their users, with their own messages. */
static int absolutize(char **path, const char *what)
{
	char cwd[PATH_MAX], *abs;

	if (!*path || (*path)[0] == '/')
		return 0;
	if (!getcwd(cwd, sizeof(cwd)) || asprintf(&abs, "%s/%s", cwd, *path) < 0) {
		fprintf(stderr, "mailfs: %s=%s: cannot resolve the current directory\n", what, *path);
		return -1;
	}
	free(*path);
	*path = abs;
	return 0;
}

/* ---- the cache directory's holder ----
 *
 * The cache directory's flock keeps a second mailfs out.  After
 * fusermount3 -u the old daemon still holds it for a moment, while it
 * writes its last changes; a mount right after must wait for it, not fail.
 * The holder file (pid, mount point) tells that case from a live mount. */
#define HOLDER_FILE "holder"
#define HOLDER_WAIT_S 10

static void holder_write(const char *cache_dir, const char *mountpoint)
{
	char *path = NULL, *tmp = NULL;
	FILE *f;
	int fd;

	if (asprintf(&path, "%s/" HOLDER_FILE, cache_dir) < 0 ||
	    asprintf(&tmp, "%s/" HOLDER_FILE ".tmp", cache_dir) < 0)
		goto out;
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0 || !(f = fdopen(fd, "w"))) {
		if (fd >= 0)
			close(fd);
		goto out;
	}
	fprintf(f, "%ld\n%s\n", (long)getpid(), mountpoint);
	if (fclose(f) == 0)
		rename(tmp, path);
out:
	free(path);
	free(tmp);
}

/* The recorded holder's pid and mount point; false when there is none. */
static bool holder_read(const char *cache_dir, long *pid_r, char *mnt, size_t size)
{
	char *path = NULL;
	FILE *f;
	bool ok = false;

	if (asprintf(&path, "%s/" HOLDER_FILE, cache_dir) < 0)
		return false;
	f = fopen(path, "re");
	free(path);
	if (!f)
		return false;
	if (fscanf(f, "%ld\n", pid_r) == 1 && fgets(mnt, (int)size, f)) {
		mnt[strcspn(mnt, "\n")] = '\0';
		ok = mnt[0] == '/';
	}
	fclose(f);
	return ok;
}

/* /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo. */
static void mountinfo_unescape(char *s)
{
	char *o = s;

	for (; *s; s++) {
		if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] >= '0' && s[2] <= '7' &&
		    s[3] >= '0' && s[3] <= '7') {
			*o++ = (char)((s[1] - '0') * 64 + (s[2] - '0') * 8 + (s[3] - '0'));
			s += 3;
		} else {
			*o++ = *s;
		}
	}
	*o = '\0';
}

/* Is a mailfs mounted on PATH?  When mountinfo cannot be read, say yes:
 * failing at once is the old, safe behaviour. */
static bool mailfs_mounted_on(const char *path)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	char *line = NULL;
	size_t cap = 0;
	bool found = false;

	if (!f)
		return true;
	while (!found && getline(&line, &cap, f) > 0) {
		char *save = NULL, *mnt = NULL, *sep = strstr(line, " - ");
		char *tok = strtok_r(line, " ", &save);

		for (int i = 1; tok && i < 5; i++)
			tok = strtok_r(NULL, " ", &save);
		mnt = tok;
		if (!mnt || !sep || strncmp(sep + 3, "fuse.mailfs ", 12) != 0)
			continue;
		mountinfo_unescape(mnt);
		found = !strcmp(mnt, path);
	}
	free(line);
	fclose(f);
	return found;
}

/* cache_open, waiting (bounded) for a holder whose mount is already gone. */
static int open_cache(struct cache **cache_r, const char *dir, const char *option,
		      uint64_t limit, const char *mountpoint, const char **error_r)
{
	static char buf[PATH_MAX + 256];
	struct timespec step = { 0, 100 * 1000 * 1000 };
	char held[PATH_MAX] = "";
	long pid = 0;
	int r = -EBUSY;

	for (int i = 0; i < HOLDER_WAIT_S * 10; i++) {
		r = cache_open_as(cache_r, dir, option, limit, error_r);
		if (r != -EBUSY)
			break;
		/* A holder that is mounted stays: fail at once. */
		if (holder_read(dir, &pid, held, sizeof(held)) && mailfs_mounted_on(held))
			return r;
		nanosleep(&step, NULL);
	}
	if (r == -EBUSY && held[0]) {
		snprintf(buf, sizeof(buf), "%s %s is still in use by mailfs pid %ld (of %s, "
			 "no longer mounted) after %d s; try again, or choose another with "
			 "-o %s=DIR", strcmp(option, "data_dir") ? "cache directory" : "data directory",
			 dir, pid, held, HOLDER_WAIT_S, option);
		*error_r = buf;
	}
	if (r == 0)
		holder_write(dir, mountpoint);
	return r;
}

/* D1: the password stays in this process's memory (the store keeps it to
 * log in again): a crash must not write it to a core file.  Non-dumpable
 * also keeps other processes of the same user from ptrace and from
 * /proc/PID/mem.  Inherited by fuse_daemonize's fork. */
static void no_core_dumps(void)
{
	struct rlimit none = { 0, 0 };

	if (setrlimit(RLIMIT_CORE, &none) < 0 || prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0)
		log_warn("cannot disable core dumps: %s", strerror(errno));
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
	va_list ap;

	fputs("mailfs: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

/* Move an earlier mailfs's POP3 store from the cache directory to the
 * data directory; true when it is to be used where it is instead: under
 * ro (which changes nothing, not even where the store is), or when the
 * two are on different file systems (a move would be a copy: left to the
 * user, with one warning).  Dies when the move fails otherwise. */
static bool pop3_store_stays(const char *cache_dir, const char *data_dir, bool ro)
{
	const char *err = NULL;
	char *staging = NULL;
	int r;

	if (ro)
		return pop3_store_is_old(cache_dir, data_dir);
	r = pop3_store_move(cache_dir, data_dir, &err);
	if (r == 0)
		return false;
	if (r != -EXDEV)
		die("%s", err);
	/* Nothing moved; the empty staging directory goes. */
	if (asprintf(&staging, "%s.moving", data_dir) >= 0) {
		rmdir(staging);
		free(staging);
	}
	log_warn("the archive in %s stays there: %s is on another file system. To move it, "
		 "unmount, then move the directory's contents by hand (mv %s %s) and mount again",
		 cache_dir, data_dir, cache_dir, data_dir);
	return true;
}

int main(int argc, char **argv)
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct fuse_cmdline_opts fopts = { 0 };
	struct config cfg = { 0 };
	struct url url;
	struct stat st;
	const char *err;
	char *password = NULL, *cache_dir, *fsname_opt = NULL, *tmp_dir = NULL;
	struct cache *cache = NULL;
	struct store *store = NULL;
	struct mfs *mfs = NULL;
	struct fuse_session *se = NULL;
	struct fuse_loop_config *loop = NULL;
	uint64_t cache_limit = 1ull << 30;
	bool auth_failed;
	int ret = 1;

	signal(SIGPIPE, SIG_IGN);
	no_core_dumps(); /* before any password is read, `mailfs password set` too */
	if (argc >= 2 && !strcmp(argv[1], "password"))
		return password_command_main(argc, argv);
	if (fuse_opt_parse(&args, &cfg, config_opts, opt_proc) < 0)
		return 2;
	log_init(cfg.trace);
	if (!cfg.source || !cfg.mountpoint || cfg.nonopts != 2) {
		usage(stderr);
		return 2;
	}
	if (url_parse(cfg.source, &url, &err) < 0)
		die("%s", err);
	if (cfg.names && strcmp(cfg.names, "readable") && strcmp(cfg.names, "uid"))
		die("names=%s: expected names=readable or names=uid", cfg.names);
	if (cfg.delete_mode && strcmp(cfg.delete_mode, "expunge") && strcmp(cfg.delete_mode, "trash"))
		die("delete=%s: expected delete=expunge or delete=trash", cfg.delete_mode);
	if (cfg.cache_size && (parse_size(cfg.cache_size, &cache_limit) < 0 || cache_limit < (1u << 20)))
		die("cache_size=%s: expected a size of at least 1M, like 512M or 2G", cfg.cache_size);
	if (stat(cfg.mountpoint, &st) < 0)
		die("mountpoint %s: %s%s", cfg.mountpoint, strerror(errno),
		    errno == ENOENT ? " (create it with mkdir first)" : "");
	if (!S_ISDIR(st.st_mode))
		die("mountpoint %s is not a directory", cfg.mountpoint);
	if (fuse_parse_cmdline(&args, &fopts) != 0)
		return 2;
	/* fuse_daemonize() changes to "/", even with -f. */
	if (absolutize(&cfg.cafile, "cafile") < 0 || absolutize(&cfg.cache_dir, "cache_dir") < 0 ||
	    absolutize(&cfg.data_dir, "data_dir") < 0 ||
	    absolutize(&cfg.password_file, "password_file") < 0)
		return 1;
	if (cfg.insecure) {
		log_warn("insecure: the server's certificate is NOT verified and plaintext is allowed");
	}

	cache_dir = cfg.cache_dir ? strdup(cfg.cache_dir) : default_cache_dir(&url);
	if (!cache_dir)
		die("out of memory");
	/* POP3 keeps its whole store (spool and archive) in the data
	 * directory; an earlier mailfs kept it in the cache directory, from
	 * where it is moved.  IMAP's store is a cache of the server. */
	if (url.proto != URL_IMAP) {
		char *data_dir = cfg.data_dir ? strdup(cfg.data_dir) : default_data_dir(&url);

		if (!data_dir)
			die("no data directory: set HOME or give -o data_dir=DIR");
		if (pop3_store_stays(cache_dir, data_dir, cfg.ro)) {
			free(data_dir);
		} else {
			free(cache_dir);
			cache_dir = data_dir;
		}
	}

	struct password_opts po = { .command = cfg.password_command, .file = cfg.password_file };
	if (password_get(&url, &po, &password, &err) < 0)
		die("%s", err);
	if (open_cache(&cache, cache_dir, url.proto == URL_IMAP ? "cache_dir" : "data_dir",
		       cache_limit, fopts.mountpoint, &err) < 0) {
		password_free(password);
		die("%s", err);
	}
	/* The names of cached messages were made under one naming scheme;
	 * a different one means they must all be made again. */
	const char *scheme = cfg.names ? cfg.names : "readable";
	char *old_scheme = NULL;
	if (cache_kv_get(cache, "names", &old_scheme) == 0 && strcmp(old_scheme, scheme) != 0) {
		struct cache_folder *fl;
		size_t n;

		/* IMAP's folders are a cache of the server, made again
		 * under the new names.  POP3's spool and archive keep the
		 * names they have (the archive is the only copy); so does
		 * any local-only folder. */
		if (url.proto == URL_IMAP && cache_folder_list(cache, &fl, &n) == 0) {
			for (size_t i = 0; i < n; i++)
				if (!(fl[i].flags & CACHE_FOLDER_LOCAL))
					cache_folder_reset(cache, fl[i].id);
			cache_folder_list_free(fl, n);
		}
	}
	free(old_scheme);
	cache_kv_set(cache, "names", scheme);

	struct imap_store_opts io = {
		.url = &url,
		.password = password,
		.cafile = cfg.cafile,
		.insecure = cfg.insecure,
		.cache = cache,
		.cache_dir = cache_dir,
		.names_uid = !strcmp(scheme, "uid"),
		.ro = cfg.ro,
		.delete_trash = cfg.delete_mode && !strcmp(cfg.delete_mode, "trash"),
		.poll_seconds = cfg.poll,
		.connections = cfg.connections,
	};
	struct pop3_store_opts pop = {
		.url = &url,
		.password = password,
		.cafile = cfg.cafile,
		.insecure = cfg.insecure,
		.cache = cache,
		.names_uid = io.names_uid,
		.keep = cfg.keep,
		.ro = cfg.ro,
		.poll_seconds = cfg.poll,
	};
	if (url.proto == URL_IMAP)
		store = imap_store_new(&io, &auth_failed, &err);
	else
		store = pop3_store_new(&pop, &auth_failed, &err);
	password_free(password);
	password = NULL;
	if (!store) {
		fprintf(stderr, "mailfs: %s\n", err);
		goto out;
	}

	char *canon = url_to_string(&url);
	if (!canon || asprintf(&fsname_opt, "-ofsname=%s,subtype=mailfs,default_permissions", canon) < 0) {
		free(canon);
		goto out;
	}
	free(canon);
	fuse_opt_add_arg(&args, fsname_opt);

	if (asprintf(&tmp_dir, "%s/tmp", cache_dir) < 0)
		goto out;
	if (mkdir(tmp_dir, 0700) < 0 && errno != EEXIST) {
		fprintf(stderr, "mailfs: cannot create %s: %s\n", tmp_dir, strerror(errno));
		goto out;
	}
	struct mfs_opts mo = {
		.cache = cache,
		.store = store,
		.ro = cfg.ro,
		.cache_limit = cache_limit,
		.tmp_dir = tmp_dir,
	};
	mfs = mfs_new(&mo);
	if (!mfs)
		goto out;
	se = fuse_session_new(&args, mfs_ops(), sizeof(*mfs_ops()), mfs);
	if (!se)
		goto out;
	if (fuse_set_signal_handlers(se) != 0)
		goto out_session;
	if (fuse_session_mount(se, fopts.mountpoint) != 0) {
		fprintf(stderr, "mailfs: cannot mount on %s (is it in use, or is /dev/fuse missing?)\n",
			fopts.mountpoint);
		goto out_handlers;
	}
	if (!fopts.foreground)
		log_to_syslog();
	fuse_daemonize(fopts.foreground);
	holder_write(cache_dir, fopts.mountpoint); /* the daemon's pid now */
	if (cfg.insecure && !fopts.foreground)
		log_warn("insecure: certificate verification is off for %s", cfg.source);
	if (mfs_start(mfs, se) < 0) {
		log_error("cannot start threads");
		goto out_unmount;
	}
	log_info("%s mounted on %s", cfg.source, fopts.mountpoint);

	loop = fuse_loop_cfg_create();
	if (!loop)
		goto out_unmount;
	fuse_loop_cfg_set_clone_fd(loop, fopts.clone_fd);
	/* Parked requests free their worker, but keep enough threads for
	 * the kernel's readahead and a file manager's parallel stats. */
	fuse_loop_cfg_set_max_threads(loop, fopts.max_threads > 1 && fopts.max_threads != 10 ?
					    fopts.max_threads : 16);
	if (fopts.max_idle_threads != UINT_MAX)
		fuse_loop_cfg_set_idle_threads(loop, fopts.max_idle_threads);
	if (fopts.singlethread)
		ret = fuse_session_loop(se);
	else
		ret = fuse_session_loop_mt(se, loop);
	ret = ret == 0 ? 0 : 1;
	fuse_loop_cfg_destroy(loop);
	/* Unmounted (or a signal): nothing to invalidate any more, and the
	 * notifier must be joined before the session it uses goes (C3). */
	mfs_stop(mfs);
	mfs_drain(mfs);
out_unmount:
	/* fuse_session_unmount() closes the session's fd, and the engine's
	 * threads reply through it: stop them first, or a late reply goes
	 * to a closed fd, or to whatever file has its number by then. */
	if (store)
		store->ops->destroy(&store);
	fuse_session_unmount(se);
out_handlers:
	fuse_remove_signal_handlers(se);
out_session:
	mfs_stop(mfs);
	/* Stop the engine before the session: its callbacks reply to
	 * requests through the session. */
	if (store)
		store->ops->destroy(&store);
	/* Nothing writes to the cache any more: let the next mount in. */
	cache_close(&cache);
	fuse_session_destroy(se);
out:
	if (store)
		store->ops->destroy(&store);
	mfs_destroy(&mfs);
	cache_close(&cache);
	free(fsname_opt);
	free(tmp_dir);
	free(cfg.source);
	free(cfg.mountpoint);
	free(cfg.password_file);
	free(cfg.password_command);
	free(cfg.cafile);
	free(cfg.cache_dir);
	free(cfg.data_dir);
	free(cfg.cache_size);
	free(cfg.names);
	free(cfg.delete_mode);
	free(cache_dir);
	free(fopts.mountpoint);
	fuse_opt_free_args(&args);
	url_free(&url);
	return ret;
}
