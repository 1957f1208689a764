"""Writing through the mount: rename() onto an existing message, close() of a dup'ed fd,
rsync's temporary files racing the asynchronous RELEASE, far-future file times.

Each test checks the SERVER with a second client (imaplib through mailserver.Account),
by Message-ID, never only the mount.  AUDIT.md A5, A7, A8, C2.
"""
import collections
import errno
import os
import shutil
import sqlite3
import tempfile
import threading
import time

import pytest

import mailserver
from test_sync import (REFUSAL_LINES, fpath, make_msg, mid_of, names_by_mid, read,
                       server_mids, setup_user, sh, trace_commands)
from test_offline import come_back, go_offline, outage, server_by_mid  # noqa: F401

assert outage  # a fixture, used by name


def mids_count(acct, folder):
    return collections.Counter(server_mids(acct, folder).values())


def write_new(path, data, mtime=None):
    """Create PATH in the mount, write DATA, set the mtime (before close, as cp -p and
    rsync do on their fd), close."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        if mtime is not None:
            os.utime(fd, (mtime, mtime))
    finally:
        os.close(fd)


JOURNAL_REMOVE, JOURNAL_APPEND = 1, 3  # cache/journal.h


def journal_kinds(mnt):
    """The kinds of the pending journal entries, in replay order."""
    db = sqlite3.connect("file:%s?mode=ro" % os.path.join(mnt.cache_dir, "journal.sqlite"),
                         uri=True)
    try:
        return [k for (k,) in db.execute("SELECT kind FROM journal ORDER BY seq")]
    finally:
        db.close()


# --------------------------------------------------------------------------
# A5: rename() onto an existing message keeps the old one when the new one fails

QUOTA_KB = 48
QUOTA_CONF = """
mail_plugins = $mail_plugins quota
plugin {
  quota = maildir:User quota
  quota_rule = *:storage=%dk
}
""" % QUOTA_KB


@pytest.fixture(scope="module")
def quota_server(_environment_ok):
    """A Dovecot whose users may hold QUOTA_KB kB: a bigger APPEND gets NO [OVERQUOTA]."""
    d = tempfile.mkdtemp(prefix="mailfs-it-quota-",
                         dir=os.environ.get("MAILFS_TEST_TMPDIR") or "/tmp")
    os.chmod(d, 0o755)
    srv = mailserver.MailServer(d, ports=mailserver.free_port_map(), extra_conf=QUOTA_CONF)
    srv.start()
    yield srv
    srv.stop()
    if not os.environ.get("MAILFS_KEEP_TMP"):
        shutil.rmtree(d, ignore_errors=True)


def big_msg(tag, kb):
    line = "x" * 70 + "\r\n"
    return make_msg(tag, 0, body=line * (kb * 1024 // len(line)))


def test_rename_tmpfile_over_message_refused_keeps_old(make_user, mount, quota_server):
    old = make_msg("quota-old", 1)
    u = make_user("quota", srv=quota_server)
    quota_server.create_folders(u.name, ["Trash", "Sent", "Drafts", "Junk"])
    u.append_many("INBOX", [old])
    acct = u.account()
    m = mount(u, debug=True, allow=REFUSAL_LINES + [r"warning: cannot store"])
    inbox = fpath(m, "INBOX")
    name = names_by_mid(inbox)[mid_of(old)]
    # rsync: the new version goes to a temporary name, then is renamed over the old one;
    # the server refuses it (over quota)
    new = big_msg("quota-new", QUOTA_KB * 2)
    tmp = os.path.join(inbox, "." + name + ".Xy12Ab")
    write_new(tmp, new)
    with pytest.raises(OSError) as e:
        os.rename(tmp, os.path.join(inbox, name))
    assert e.value.errno in (errno.ENOSPC, errno.EDQUOT), e.value
    assert trace_commands(m.log(), "APPEND"), "no APPEND was tried"
    # the old message is still on the server and in the mount, under its name
    assert mids_count(acct, "INBOX") == collections.Counter([mid_of(old)])
    assert read(os.path.join(inbox, name)) == old
    # rename(2) left the source: rsync removes it; nothing is stored later
    assert os.stat(tmp).st_size == len(new)
    os.unlink(tmp)
    time.sleep(6.5)
    assert mids_count(acct, "INBOX") == collections.Counter([mid_of(old)])
    assert sorted(os.listdir(inbox)) == [name]
    # a replacement that fits goes through: the name is the new message's, the old is gone
    small = make_msg("quota-small", 2)
    write_new(tmp, small)
    os.rename(tmp, os.path.join(inbox, name))
    assert mids_count(acct, "INBOX") == collections.Counter([mid_of(small)])
    assert read(os.path.join(inbox, name)) == small
    assert sorted(os.listdir(inbox)) == [name]


def test_failed_rename_never_stored_under_temporary_name(make_user, mount, quota_server):
    """rename() of a closed temporary file refused (over quota) leaves the source, as
    rename(2) does; it must not be stored under its temporary name DEFER_SECONDS later
    once the server would take it (space freed meanwhile): it stays a local file until
    renamed again or removed."""
    old, filler = make_msg("kl-old", 1), big_msg("kl-filler", QUOTA_KB * 5 // 8)
    u = make_user("keepl", srv=quota_server)
    quota_server.create_folders(u.name, ["Trash", "Sent", "Drafts", "Junk"])
    u.append_many("INBOX", [old, filler])
    acct = u.account()
    m = mount(u, debug=True, allow=REFUSAL_LINES + [r"warning: cannot store"])
    inbox = fpath(m, "INBOX")
    name = names_by_mid(inbox)[mid_of(old)]
    new = big_msg("kl-new", QUOTA_KB * 4 // 8)
    tmp = os.path.join(inbox, "." + name + ".Kl34Mn")
    write_new(tmp, new)
    with pytest.raises(OSError) as e:
        os.rename(tmp, os.path.join(inbox, name))
    assert e.value.errno in (errno.ENOSPC, errno.EDQUOT), e.value
    uid = [k for k, v in server_mids(acct, "INBOX").items() if v == mid_of(filler)][0]
    quota_server.doveadm("expunge", "-u", u.name, "mailbox", "INBOX", "uid", str(uid))
    time.sleep(7)
    assert mids_count(acct, "INBOX") == collections.Counter([mid_of(old)]), \
        "stored under its temporary name"
    assert os.stat(tmp).st_size == len(new)
    os.unlink(tmp)
    assert not os.path.exists(tmp)


def test_mv_over_message_source_vanished_keeps_old(make_user, mount, server):
    a, b, c = make_msg("mvv", 0), make_msg("mvv", 1), make_msg("mvv", 2)
    u = setup_user(make_user, {"INBOX": [a, c], "Archive": [b]})
    acct = u.account()
    m = mount(u, debug=True, options=["poll=600"],
              allow=REFUSAL_LINES + [r"the server said it moved UID \d+, but it is not in"])
    inbox, arch = fpath(m, "INBOX"), fpath(m, "Archive")
    na, nc = names_by_mid(inbox)[mid_of(a)], names_by_mid(inbox)[mid_of(c)]
    target = names_by_mid(arch)[mid_of(b)]
    # another client expunges the source just before the mv
    uid_a = [uid for uid, mid in server_mids(acct, "INBOX").items() if mid == mid_of(a)][0]
    server.doveadm("expunge", "-u", u.name, "mailbox", "INBOX", "uid", str(uid_a))
    with pytest.raises(OSError) as e:
        os.rename(os.path.join(inbox, na), os.path.join(arch, target))
    assert e.value.errno in (errno.ENOENT, errno.EIO), e.value
    assert mids_count(acct, "Archive") == collections.Counter([mid_of(b)])
    assert read(os.path.join(arch, target)) == b
    # a mv that works replaces it: the name is the moved message's, the old one is gone
    os.rename(os.path.join(inbox, nc), os.path.join(arch, target))
    assert mids_count(acct, "Archive") == collections.Counter([mid_of(c)])
    assert mid_of(c) not in server_mids(acct, "INBOX").values()
    assert read(os.path.join(arch, target)) == c
    assert sorted(os.listdir(arch)) == [target]


def test_offline_rename_over_message_replayed(outage):
    o = outage
    victim = o.names[0]
    go_offline(o)
    new = make_msg("offrep", 0)
    tmp = os.path.join(o.inbox, "." + victim + ".Q1w2E3")
    write_new(tmp, new, mtime=1700000000)
    os.rename(tmp, os.path.join(o.inbox, victim))
    assert read(os.path.join(o.inbox, victim)) == new
    assert not [n for n in os.listdir(o.inbox) if n.startswith(".")]
    # the journal holds them in the safe order: the new message first, then the old one's
    # expunge (a cut in between leaves both, never neither)
    assert journal_kinds(o.mount) == [JOURNAL_APPEND, JOURNAL_REMOVE]
    come_back(o)
    srv = server_by_mid(o.acct, "INBOX")
    assert mid_of(new) in srv and mid_of(o.cached[victim]) not in srv, sorted(srv)
    assert len(srv) == len(o.names)
    assert read(os.path.join(o.inbox, victim)) == new


def test_offline_rename_over_message_refused_keeps_old(make_user, mount, quota_server):
    """Offline, rename() over a message journals the new one's APPEND, then the old one's
    expunge.  If the server refuses that APPEND at the replay (over quota), the expunge
    must not run: the old message stays on the server (the new one goes to unsent/)."""
    from faultproxy import FaultProxy
    from test_offline import OFFLINE_LINES, via, go_offline as down, come_back as up
    old = make_msg("offq-old", 1)
    u = make_user("offq", srv=quota_server)
    quota_server.create_folders(u.name, ["Trash", "Sent", "Drafts", "Junk"])
    u.append_many("INBOX", [old])
    acct = u.account()
    proxy = FaultProxy(("127.0.0.1", quota_server.ports["imaps"])).start()
    try:
        m = mount(u, source=via(proxy, u), options=["poll=2"], srv=quota_server,
                  allow=OFFLINE_LINES + REFUSAL_LINES +
                  [r"cannot store|refused a message written offline|never reached the server"])
        o = collections.namedtuple("O", "proxy mount")(proxy, m)
        inbox = fpath(m, "INBOX")
        name = names_by_mid(inbox)[mid_of(old)]
        assert read(os.path.join(inbox, name)) == old
        down(o)
        new = big_msg("offq-new", QUOTA_KB * 2)
        tmp = os.path.join(inbox, "." + name + ".Zz9Yy8")
        write_new(tmp, new)
        os.rename(tmp, os.path.join(inbox, name))
        assert journal_kinds(m) == [JOURNAL_APPEND, JOURNAL_REMOVE]
        up(o)
        assert mids_count(acct, "INBOX") == collections.Counter([mid_of(old)]), \
            "the old message was expunged though its replacement was refused"
        assert os.listdir(os.path.join(m.cache_dir, "unsent")), "the new one was not kept"
        with open(os.path.join(m.path, ".mailfs", "sync"), "w") as f:
            f.write("1\n")
        assert wait_until(lambda: [n for n in os.listdir(inbox)
                                   if read(os.path.join(inbox, n)) == old], 20), \
            os.listdir(inbox)
    finally:
        proxy.stop()


def wait_until(pred, timeout):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.3)
    return pred()


def test_leftover_replacement_names_are_adopted(make_user, mount):
    """A kill -9 between a replacement's APPEND and its renaming leaves a row named
    ".mailfs-N-NAME": the next mount shows it as NAME (or a free "NAME (2).eml" when NAME
    is taken), never under the hidden name."""
    a, b, c = make_msg("left", 0), make_msg("left", 1), make_msg("left", 2)
    u = setup_user(make_user, {"INBOX": [a, b, c]})
    m = mount(u)
    inbox = fpath(m, "INBOX")
    names = names_by_mid(inbox)
    na, nb, nc = names[mid_of(a)], names[mid_of(b)], names[mid_of(c)]
    mnt, cache = m.path, m.cache_dir
    assert m.unmount() == []
    db = sqlite3.connect(os.path.join(cache, "index.sqlite"))
    with db:
        db.execute("UPDATE messages SET name = ? WHERE name = ?", (".mailfs-7-" + na, na))
        db.execute("UPDATE messages SET name = ? WHERE name = ?", (".mailfs-8-" + nc, nb))
    db.close()
    m = mount(u, mnt=mnt, cache_dir=cache, allow=[r"is taken: the new message is"])
    stem = nc[:-4] if nc.endswith(".eml") else nc
    listing = sorted(os.listdir(inbox))
    assert not [x for x in listing if x.startswith(".")], listing
    assert listing == sorted([na, nc, stem + " (2).eml"]), listing
    assert read(os.path.join(inbox, na)) == a
    assert read(os.path.join(inbox, nc)) == c
    assert read(os.path.join(inbox, stem + " (2).eml")) == b


def test_replaced_name_never_missing(make_user, mount):
    """While rename() replaces a message, its name always answers (the old message or
    the new one), never ENOENT: a reader polling it meanwhile (a mail client, a second
    rsync) sees no gap."""
    u = setup_user(make_user, {"INBOX": [make_msg("gap", 0)]})
    m = mount(u)
    inbox = fpath(m, "INBOX")
    name = sorted(os.listdir(inbox))[0]
    target = os.path.join(inbox, name)
    stop, missing = threading.Event(), []

    def poll():
        while not stop.is_set():
            try:
                os.stat(target)
            except FileNotFoundError:
                missing.append(time.time())
    t = threading.Thread(target=poll)
    t.start()
    try:
        for r in range(15):
            tmp = os.path.join(inbox, ".%s.G%02d" % (name, r))
            write_new(tmp, make_msg("gap", r + 1))
            os.rename(tmp, target)
    finally:
        stop.set()
        t.join()
    assert not missing, "%s was missing %d times" % (name, len(missing))
    assert read(target) == make_msg("gap", 15)
    assert sorted(os.listdir(inbox)) == [name]


def test_two_renames_onto_one_name(make_user, mount):
    """Two temporary files renamed onto the same message at once: the name ends up with
    one of them, and the other is still to be seen in the mount (under a free name), not
    hidden under its temporary one."""
    u = setup_user(make_user, {"INBOX": [make_msg("two", 0)]})
    acct = u.account()
    m = mount(u)
    inbox = fpath(m, "INBOX")
    name = sorted(os.listdir(inbox))[0]
    for r in range(4):
        tmps = []
        for k in range(2):
            t = os.path.join(inbox, ".%s.%d%d" % (name, r, k))
            write_new(t, make_msg("two-%d" % r, k + 1))
            tmps.append(t)
        go = threading.Barrier(2)
        errs = []

        def mv(t):
            go.wait()
            try:
                os.rename(t, os.path.join(inbox, name))
            except OSError as e:
                errs.append(e)
        ts = [threading.Thread(target=mv, args=(t,)) for t in tmps]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert not errs, errs
    listing = os.listdir(inbox)
    on_server = server_mids(acct, "INBOX")
    assert len(listing) == len(on_server), (sorted(listing), sorted(on_server.values()))
    assert name in listing
    assert not [x for x in listing if x.startswith(".")], listing
    assert sorted(mid_of(read(os.path.join(inbox, x))) for x in listing) == \
        sorted(on_server.values())


# --------------------------------------------------------------------------
# A7: close() of a dup'ed fd, twice at once, sends one APPEND

def test_two_flushes_one_append(make_user, mount):
    u = setup_user(make_user, {"INBOX": []})
    acct = u.account()
    m = mount(u)
    inbox = fpath(m, "INBOX")
    n = 25
    errors = []
    for i in range(n):
        fd = os.open(os.path.join(inbox, "dup %02d.eml" % i), os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        os.write(fd, make_msg("dup", i))
        fd2 = os.dup(fd)
        go = threading.Barrier(2)

        def close(f):
            go.wait()
            try:
                os.close(f)
            except OSError as e:
                errors.append(e)
        ts = [threading.Thread(target=close, args=(f,)) for f in (fd, fd2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    assert not errors, errors
    counts = mids_count(acct, "INBOX")
    twice = {k: v for k, v in counts.items() if v != 1}
    assert not twice, "held more than once: %s" % sorted(twice.items())
    assert len(counts) == n


# --------------------------------------------------------------------------
# A8: rsync renames (or removes) its temporary file right after close()

def test_rename_right_after_close(make_user, mount):
    u = setup_user(make_user, {"INBOX": [], "Imported": []})
    acct = u.account()
    m = mount(u)
    d = fpath(m, "Imported")
    # Several writers at once, as parallel rsyncs: RELEASEs are queued behind each other
    # (the kernel sends them in the background) while the rename goes straight on.
    threads, per = 8, 12
    msgs, errors = {}, []

    def writer(t):
        for i in range(per):
            k = t * per + i
            name = "mail %03d.eml" % k
            tmp = os.path.join(d, ".%s.%06d" % (name, k))
            data = make_msg("race", k)
            try:
                # rsync sets the mtime between close() and rename(); some go straight on
                write_new(tmp, data)
                if i % 3 == 0:
                    os.utime(tmp, (1600000000 + k, 1600000000 + k))
                os.rename(tmp, os.path.join(d, name))
                msgs[name] = data
                # a temporary file given up (rsync after an error): never stored
                junk = os.path.join(d, ".junk.%06d" % k)
                write_new(junk, make_msg("junk", k))
                os.unlink(junk)
            except OSError as e:
                errors.append((k, e))
    ts = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors[:5]
    time.sleep(6.5)  # past the 5 s after which an unrenamed temporary file is stored
    counts = mids_count(acct, "Imported")
    assert counts == collections.Counter(mid_of(b) for b in msgs.values()), \
        sorted(counts.items())
    assert sorted(os.listdir(d)) == sorted(msgs)
    for name, data in msgs.items():
        assert read(os.path.join(d, name)) == data


def test_rename_and_unlink_before_release(make_user, mount):
    """The same state, made certain: another fd (a dup, or a forked child's) still holds
    the temporary file, so its RELEASE has not come when rename() or unlink() does."""
    u = setup_user(make_user, {"INBOX": [], "Imported": []})
    acct = u.account()
    m = mount(u)
    d = fpath(m, "Imported")
    msgs, held = {}, []

    def hold(path, data):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, data)
        held.append(os.dup(fd))
        os.close(fd)                         # FLUSH; no RELEASE while the dup is open
    try:
        for k in range(5):
            name = "held %d.eml" % k
            tmp = os.path.join(d, ".%s.%06d" % (name, k))
            msgs[name] = make_msg("held", k)
            hold(tmp, msgs[name])
            os.utime(tmp, (1600000000 + k,) * 2)
            os.rename(tmp, os.path.join(d, name))
            assert read(os.path.join(d, name)) == msgs[name]
            os.close(held.pop())             # FLUSH again, then RELEASE
            junk = os.path.join(d, ".junk.%06d" % k)
            hold(junk, make_msg("heldjunk", k))
            os.unlink(junk)
            assert not os.path.exists(junk)
            os.close(held.pop())
    finally:
        for fd in held:
            os.close(fd)
    time.sleep(6.5)  # past the 5 s after which an unrenamed temporary file is stored
    counts = mids_count(acct, "Imported")
    assert counts == collections.Counter(mid_of(b) for b in msgs.values()), \
        sorted(counts.items())
    assert sorted(os.listdir(d)) == sorted(msgs)
    meta = acct.meta("Imported")
    assert sorted(v["internaldate"] for v in meta.values()) == \
        [1600000000 + k for k in range(5)]


def test_unlink_races_release(make_user, mount):
    """unlink() of a closed temporary file while another thread's close() of the last fd
    sends its RELEASE: one of them frees the file, the other must not touch it after
    (run under ASan: a use-after-free there is a sanitizer report and a failed test)."""
    u = setup_user(make_user, {"INBOX": [], "Imported": []})
    acct = u.account()
    m = mount(u)
    d = fpath(m, "Imported")
    errors = []

    def worker(t):
        for i in range(40):
            tmp = os.path.join(d, ".junk.%d.%03d" % (t, i))
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                os.write(fd, make_msg("ur", t * 1000 + i))
                fd2 = os.dup(fd)
                os.close(fd)                  # FLUSH: deferred, the dup holds it
                go = threading.Barrier(2)
                closer = threading.Thread(target=lambda: (go.wait(), os.close(fd2)))
                closer.start()
                go.wait()
                os.unlink(tmp)                # races the dup's RELEASE
                closer.join()
            except OSError as e:
                errors.append((t, i, e))
    ts = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors[:5]
    time.sleep(6.5)  # nothing given up is stored later
    assert m.proc.poll() is None, "mailfs died"
    assert server_mids(acct, "Imported") == {}
    assert os.listdir(d) == []


def test_write_during_append_refused(make_user, mount):
    """A write that lands while the APPEND of its file is under way (a shared fd: a child
    closed its copy) must fail, not succeed and never reach the server: every byte a
    successful write() wrote is on the server."""
    u = setup_user(make_user, {"INBOX": []})
    acct = u.account()
    m = mount(u)
    path = os.path.join(fpath(m, "INBOX"), "shared fd.eml")
    head = make_msg("wda", 0) + b"x" * 70 + b"\r\n"
    head += (b"y" * 70 + b"\r\n") * (4 * 1024 * 1024 // 72)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, head)
    dup = os.dup(fd)
    done = threading.Event()
    ok, refused = [], []
    closer = threading.Thread(target=lambda: (os.close(dup), done.set()))
    closer.start()                            # FLUSH: the APPEND starts
    off, k = len(head), 0
    try:
        while not done.is_set() or k < 5:
            line = b"line %06d\r\n" % k
            try:
                os.pwrite(fd, line, off)
            except OSError as e:
                refused.append(e.errno)
            else:
                ok.append(line)
                off += len(line)
            k += 1
    finally:
        closer.join()
        try:
            os.close(fd)
        except OSError:
            pass
    assert refused and set(refused) == {errno.EACCES}, (len(ok), set(refused))
    uids = acct.list_uids("INBOX")
    assert len(uids) == 1, uids
    assert acct.fetch_bytes("INBOX", uids[0]) == head + b"".join(ok), \
        "%d writes succeeded after the APPEND read the file" % len(ok)


def test_rsync_twice_with_one_change(make_user, mount, tmp_path):
    u = setup_user(make_user, {"INBOX": [], "Imported": [make_msg("rsk", 99)]})
    acct = u.account()
    m = mount(u)
    src = tmp_path / "src"
    src.mkdir()
    files = {}
    for i in range(8):
        name = "msg %02d.eml" % i
        files[name] = make_msg("rs2", i)  # CRLF: the server's size, so unchanged ones stay
        (src / name).write_bytes(files[name])
        os.utime(src / name, (1600000000 + i * 3600,) * 2)
    r = sh(["rsync", "-a", str(src) + "/", fpath(m, "Imported") + "/"])
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    want = collections.Counter([mid_of(b) for b in files.values()] + ["<rsk.99@sync.test>"])
    assert mids_count(acct, "Imported") == want
    changed = "msg 03.eml"
    files[changed] = make_msg("rs2-changed", 3)
    (src / changed).write_bytes(files[changed])
    os.utime(src / changed, (1700000000,) * 2)
    r = sh(["rsync", "-a", str(src) + "/", fpath(m, "Imported") + "/"])
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    time.sleep(6.5)
    want = collections.Counter([mid_of(b) for b in files.values()] + ["<rsk.99@sync.test>"])
    assert mids_count(acct, "Imported") == want
    listing = sorted(os.listdir(fpath(m, "Imported")))
    assert not [x for x in listing if x.startswith(".")], listing
    assert read(fpath(m, "Imported", changed)) == files[changed]


# --------------------------------------------------------------------------
# C2: a file time gmtime_r cannot convert, or a year of five digits

@pytest.mark.parametrize("when", [2 ** 62, 253402300800, -86400 * 365 * 3])
def test_far_future_mtime(make_user, mount, when):
    u = setup_user(make_user, {"INBOX": []})
    acct = u.account()
    m = mount(u)
    inbox = fpath(m, "INBOX")
    data = make_msg("far", abs(when) % 1000)
    write_new(os.path.join(inbox, "far.eml"), data, mtime=when)
    tmp = os.path.join(inbox, ".far2.eml.A1b2C3")
    data2 = make_msg("far2", abs(when) % 1000)
    write_new(tmp, data2, mtime=when)
    os.rename(tmp, os.path.join(inbox, "far2.eml"))
    assert mids_count(acct, "INBOX") == collections.Counter([mid_of(data), mid_of(data2)])
    assert m.proc.poll() is None, "mailfs died"
    assert read(os.path.join(inbox, "far.eml")) == data
    if when < 0:
        # a time before 1970 is stored as 1970
        for uid in acct.list_uids("INBOX"):
            assert acct.internaldate("INBOX", uid) == 0


def test_far_future_mtime_offline(outage):
    o = outage
    go_offline(o)
    data = make_msg("faroff", 0)
    write_new(os.path.join(o.inbox, "far offline.eml"), data, mtime=2 ** 62)
    come_back(o)
    assert mid_of(data) in server_by_mid(o.acct, "INBOX")
    assert o.mount.proc.poll() is None, "mailfs died"
