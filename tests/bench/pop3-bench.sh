#!/bin/sh
# pop3-bench.sh: consuming a POP3 maildrop through mailfs versus fetchmail.
#
# One throwaway Dovecot in a private network namespace, two users loaded with
# the same N messages of tests/corpus.py.  Then, measured in one run:
#   mailfs:    mount pop3s://, `cat MNT/spool/* > /dev/null`, and the time
#              until the server's maildrop is empty (DELE committed by QUIT);
#   fetchmail: fetch-and-delete everything into an MDA, once with
#              `cat > /dev/null` and once with an MDA that fsyncs each message
#              to a file (mailfs fsyncs every body it archives).
# The numbers are printed, not judged.
#
# usage (root): tests/bench/pop3-bench.sh [N]     (default 1000)
#   MAILFS_BIN=path/to/mailfs (default build/mailfs)
set -eu

N=${1:-1000}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
: "${MAILFS_BIN:=$REPO/build/mailfs}"
export MAILFS_BIN

[ "$(id -u)" -eq 0 ] || { echo "pop3-bench.sh: run as root" >&2; exit 1; }
[ -x "$MAILFS_BIN" ] || { echo "pop3-bench.sh: no mailfs at $MAILFS_BIN" >&2; exit 1; }
command -v fetchmail >/dev/null || { echo "pop3-bench.sh: fetchmail is not installed" >&2; exit 1; }

if [ -z "${POP3_BENCH_NETNS:-}" ]; then
    PATH="$PATH:/usr/sbin:/sbin"
    export PATH
    exec unshare --net env POP3_BENCH_NETNS=1 sh -c 'ip link set lo up && exec sh "$0" "$@"' "$0" "$@"
fi

exec /usr/bin/python3 - "$N" "$REPO" <<'PY'
import os, poplib, shutil, ssl, subprocess, sys, tempfile, time

n, repo = int(sys.argv[1]), sys.argv[2]
sys.path.insert(0, os.path.join(repo, "tests"))
import corpus, mailserver

base = tempfile.mkdtemp(prefix="pop3-bench-", dir="/tmp")
os.chmod(base, 0o755)
srv = mailserver.MailServer(os.path.join(base, "srv"))
srv.start()
mnt = os.path.join(base, "mnt")
os.makedirs(mnt)
proc = None


def stat(user):
    c = poplib.POP3_SSL("127.0.0.1", srv.ports["pop3s"],
                        context=ssl.create_default_context(cafile=srv.cert))
    c.user(user)
    c.pass_(srv.users[user])
    count, size = c.stat()
    c.quit()
    return count, size


try:
    msgs = [m.raw for m in corpus.corpus(n).messages][:n]
    total = sum(len(m) for m in msgs)
    for user in ("viamailfs", "viafetchmail", "viafetchmailsync"):
        srv.add_user(user)
        srv.append_many(user, "INBOX", msgs)
    print("maildrop: %d messages, %.1f MB (tests/corpus.py), Dovecot %s, pop3s on loopback"
          % (len(msgs), total / 1e6, subprocess.run(["dovecot", "--version"], capture_output=True,
                                                    text=True).stdout.split()[0]))

    # ---- mailfs
    pw = srv.password_file_for("viamailfs", os.path.join(base, "pw"))
    log = open(os.path.join(base, "mailfs.log"), "wb")
    t0 = time.time()
    proc = subprocess.Popen([os.environ["MAILFS_BIN"], "-f", "-o",
                             "password_file=%s,cafile=%s,cache_dir=%s" % (
                                 pw, srv.cert, os.path.join(base, "cache")),
                             srv.url("viamailfs", "pop3s"), mnt],
                            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    while not os.path.ismount(mnt):
        if proc.poll() is not None:
            sys.exit("mailfs exited: " + open(os.path.join(base, "mailfs.log")).read())
        time.sleep(0.02)
    t_mount = time.time() - t0
    listed = len(os.listdir(os.path.join(mnt, "spool")))
    t0 = time.time()
    subprocess.run("cat %s/spool/* > /dev/null" % mnt, shell=True, check=True)
    t_cat = time.time() - t0
    while len(os.listdir(os.path.join(mnt, "archive"))) < n:
        time.sleep(0.02)
    t_archived = time.time() - t0
    while stat("viamailfs")[0] != 0:
        time.sleep(0.05)
    t_empty = time.time() - t0
    archived = len(os.listdir(os.path.join(mnt, "archive")))
    subprocess.run(["fusermount3", "-u", mnt], check=True)
    proc.wait(30)
    print("mailfs    mount (login, UIDL, TOP n 0 x %d): %6.2f s" % (listed, t_mount))
    print("mailfs    cat spool/* > /dev/null:          %6.2f s   (%d archived at %.2f s, "
          "server empty at %.2f s)" % (t_cat, archived, t_archived, t_empty))

    # ---- fetchmail
    def fetchmail(user, mda):
        home = os.path.join(base, "home-" + user)
        os.makedirs(home)
        rc = os.path.join(home, ".fetchmailrc")
        with open(rc, "w") as f:
            f.write('poll 127.0.0.1 service %d protocol pop3 uidl\n'
                    '  user "%s" there with password "%s" is root here\n'
                    '  options ssl sslcertck sslcertfile "%s" sslcommonname "localhost"\n'
                    '  fetchall nokeep\n'
                    '  mda "%s"\n' % (srv.ports["pop3s"], user, srv.users[user], srv.cert, mda))
        os.chmod(rc, 0o600)
        env = dict(os.environ, HOME=home)
        t0 = time.time()
        r = subprocess.run(["fetchmail", "-f", rc, "--nosyslog", "-s"], env=env,
                           capture_output=True, text=True)
        t = time.time() - t0
        if r.returncode not in (0, 1):
            print("fetchmail exited %d: %s" % (r.returncode, r.stderr.strip()[-500:]))
        left = stat(user)[0]
        return t, left

    t, left = fetchmail("viafetchmail", "/bin/cat > /dev/null")
    print("fetchmail fetch+delete, mda cat > /dev/null: %6.2f s   (%d left on the server)"
          % (t, left))
    out = os.path.join(base, "fetchmail-out")
    os.makedirs(out)
    t, left = fetchmail("viafetchmailsync",
                        "/bin/sh -c 'f=%s/$$; cat > $f && sync $f'" % out)
    print("fetchmail fetch+delete, mda file + fsync:    %6.2f s   (%d left on the server)"
          % (t, left))
finally:
    if proc is not None and proc.poll() is None:
        subprocess.run(["fusermount3", "-uz", mnt])
        proc.kill()
    srv.stop()
    shutil.rmtree(base, ignore_errors=True)
PY
