"""The IMAP sync engine: every change in the mount reaches the server, every change on the
server reaches the mount.

Each test makes its own user, loads a few hand-built messages, mounts (mailfs -f) and
checks the SERVER's state with a second client (imaplib through mailserver.Account, or
doveadm), never only the mount.

Contract: /work/shared/SPEC.md, "What each file operation does on the IMAP server" and the
paragraph on changes made on the server by another client.
"""
import base64
import collections
import errno
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time

import pytest

import mailserver
from conftest import run

POLL = 2              # -o poll=2 for the server-to-mount tests
WATCHED_BOUND = 5.0   # a change in the folder being watched (IDLE) shows within this
POLL_MARGIN = 3.0     # elsewhere: within POLL + this
# Lines a daemon may print when a test provokes a refusal on purpose.
REFUSAL_LINES = [r"warning: .*refused by the server", r"warning: cannot store ",
                 r"warning: cannot open folder", r"warning: folder .*: Mailbox doesn't exist",
                 r"< A\d+ (NO|BAD) ", r"< \* NO Internal mailbox synchronization failure"]


# --------------------------------------------------------------------------
# helpers

def mutf7(name):
    """RFC 3501 5.1.3 modified UTF-7, written here independently of the harness."""
    out, run_ = [], []

    def flush():
        if run_:
            b64 = base64.b64encode("".join(run_).encode("utf-16-be")).decode()
            out.append("&" + b64.rstrip("=").replace("/", ",") + "-")
            run_.clear()
    for ch in name:
        if " " <= ch <= "~":
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            run_.append(ch)
    flush()
    return "".join(out)


def make_msg(tag, n, subject=None, sender="Sync Tester", minute=None, body=None, eol="\r\n"):
    """A small plain-text message with Message-ID <tag.n@sync.test>; distinct Date per n."""
    minute = n if minute is None else minute
    date = "Mon, 02 Jun 2025 %02d:%02d:00 +0000" % (8 + (minute // 60) % 12, minute % 60)
    subject = subject or "%s note %d" % (tag, n)
    body = body or "Body of %s number %d.%sSecond line.%s" % (tag, n, eol, eol)
    head = ["From: %s <sync@example.org>" % sender, "To: alice@example.org",
            "Subject: " + subject, "Date: " + date, "Message-ID: <%s.%d@sync.test>" % (tag, n),
            "MIME-Version: 1.0", "Content-Type: text/plain; charset=us-ascii"]
    return (eol.join(head) + eol + eol + body).encode()


def mid_of(raw):
    m = re.search(rb"^Message-ID:\s*(<[^>\r\n]*>)", raw, re.I | re.M)
    return m.group(1).decode() if m else None


def fpath(mnt, folder, *rest):
    return os.path.join(str(mnt), *folder.split("/"), *rest)


def read(p):
    with open(p, "rb") as f:
        return f.read()


def msg_files(d):
    return sorted(n for n in os.listdir(d) if os.path.isfile(os.path.join(d, n)))


def names_by_mid(d):
    """{Message-ID: file name} of the messages in mount directory D (via the xattr)."""
    out = {}
    for n in msg_files(d):
        v = os.getxattr(os.path.join(d, n), "user.mail.message_id").decode().strip()
        if not v.startswith("<"):
            v = "<" + v + ">"
        assert v not in out, "two files for %s in %s: %r %r" % (v, d, out[v], n)
        out[v] = n
    return out


def server_mids(acct, folder):
    """{uid: Message-ID} of FOLDER on the server (one UID FETCH)."""
    c = acct.c
    typ, data = c.select(mailserver.imap_quote(mailserver.mutf7_encode(folder)), readonly=True)
    assert typ == "OK", (folder, data)
    if int(data[0] or 0) == 0:
        return {}
    typ, data = c.uid("FETCH", "1:*", "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    assert typ == "OK", data
    out = {}
    for item in data:
        if isinstance(item, tuple):
            uid = int(re.search(rb"UID (\d+)", item[0]).group(1))
            m = re.search(rb"<[^>]*>", item[1])
            out[uid] = m.group(0).decode() if m else None
    return out


def server_bodies_by_mid(acct, folder):
    return {mid_of(b): b for b in acct.fetch_all(folder).values()}


def raw_list(acct):
    """The folder names exactly as the server sends them (modified UTF-7, undecoded)."""
    typ, data = acct.c.list('""', '"*"')
    assert typ == "OK", data
    out = set()
    for item in data:
        if item is None:
            continue
        if isinstance(item, tuple):
            out.add(item[1].decode("ascii"))
            continue
        m = re.match(rb'\([^)]*\) (?:NIL|"(?:[^"\\]|\\.)*") (.*)$', item)
        name = m.group(1)
        if name.startswith(b'"'):
            name = re.sub(rb"\\(.)", rb"\1", name[1:-1])
        out.add(name.decode("ascii"))
    return out


def doveadm_folders(srv, user):
    """doveadm mailbox list: UTF-8 names (doveadm decodes modified UTF-7)."""
    return set(filter(None, srv.doveadm("mailbox", "list", "-u", user.name).split("\n")))


def wait_until(pred, timeout, interval=0.05):
    """Seconds until PRED() is true, or None after TIMEOUT seconds."""
    t0 = time.monotonic()
    while True:
        try:
            ok = pred()
        except OSError:
            ok = False
        if ok:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            return None
        time.sleep(interval)


def expect_errno(codes, fn, *args):
    with pytest.raises(OSError) as e:
        fn(*args)
    assert e.value.errno in codes, "%s%r: %s (want %s)" % (
        getattr(fn, "__name__", fn), args, e.value, [errno.errorcode[c] for c in codes])
    return e.value.errno


def sh(argv, **kw):
    return run(argv, env=dict(os.environ, LC_ALL="C"), **kw)


def trace_commands(log, word):
    """Command lines the daemon sent (as traced with -d) that contain WORD."""
    return [ln for ln in log.splitlines() if re.search(r"\] > \S+ " + word, ln)]


def setup_user(make_user, folders, prefix="sync"):
    """A fresh user; FOLDERS = {folder: [raw, ...]} (created, appended in order)."""
    u = make_user(prefix)
    # Create the special-use folders now: Dovecot's auto=create makes them on first open,
    # and several sessions doing that at once can make it panic (fcntl EDEADLK on
    # dovecot.list.index.log), which would look like a mailfs failure.
    u.server.create_folders(u.name, ["Trash", "Sent", "Drafts", "Junk"])
    for f, msgs in folders.items():
        u.append_many(f, msgs)
    return u


# --------------------------------------------------------------------------
# mount -> server: rm

def test_rm_expunges_only_that_message(make_user, mount, server):
    msgs = [make_msg("rm", i) for i in range(4)]
    u = setup_user(make_user, {"INBOX": msgs})
    acct = u.account()
    uids = {mid: uid for uid, mid in server_mids(acct, "INBOX").items()}
    # another client marks message 2 \Deleted (but does not expunge it)
    deleted_uid = uids[mid_of(msgs[2])]
    server.doveadm("flags", "add", "-u", u.name, "\\Deleted", "mailbox", "INBOX",
                   "uid", deleted_uid)
    m = mount(u, debug=True)
    inbox = fpath(m, "INBOX")
    names = names_by_mid(inbox)
    assert len(names) == 4
    os.unlink(os.path.join(inbox, names[mid_of(msgs[0])]))
    # gone from the mount at once, and from the server when unlink returned
    assert names[mid_of(msgs[0])] not in os.listdir(inbox)
    after = server_mids(acct, "INBOX")
    assert sorted(after.values()) == sorted(mid_of(x) for x in msgs[1:])
    assert uids[mid_of(msgs[0])] not in after
    assert acct.flags("INBOX", deleted_uid) >= {"\\Deleted"}, "the other client's message"
    # the survivors' bytes are untouched
    bodies = server_bodies_by_mid(acct, "INBOX")
    for x in msgs[1:]:
        assert bodies[mid_of(x)] == x
    assert trace_commands(m.log(), "UID EXPUNGE"), "no UID EXPUNGE in the trace"
    # error path: a name that does not exist
    expect_errno({errno.ENOENT}, os.unlink, os.path.join(inbox, "no such message.eml"))
    assert sorted(server_mids(acct, "INBOX").values()) == sorted(mid_of(x) for x in msgs[1:])


def test_rm_message_already_expunged_elsewhere(make_user, mount, server):
    """rm of a message another client expunged a moment ago: nothing else is touched."""
    msgs = [make_msg("rmgone", i) for i in range(3)]
    u = setup_user(make_user, {"INBOX": msgs})
    acct = u.account()
    m = mount(u, options=["poll=600"], allow=REFUSAL_LINES, debug=True)
    inbox = fpath(m, "INBOX")
    names = names_by_mid(inbox)
    uid0 = [uid for uid, mid in server_mids(acct, "INBOX").items() if mid == mid_of(msgs[0])][0]
    server.doveadm("expunge", "-u", u.name, "mailbox", "INBOX", "uid", uid0)
    try:
        os.unlink(os.path.join(inbox, names[mid_of(msgs[0])]))
    except OSError as e:
        assert e.errno == errno.ENOENT, e
    assert sorted(server_mids(acct, "INBOX").values()) == sorted(mid_of(x) for x in msgs[1:])
    assert wait_until(lambda: names[mid_of(msgs[0])] not in os.listdir(inbox), 5) is not None


def test_rm_delete_trash(make_user, mount, server):
    msgs = [make_msg("trash", i) for i in range(3)]
    u = setup_user(make_user, {"INBOX": msgs})
    acct = u.account()
    trash_before = server_mids(acct, "Trash")
    assert trash_before == {}
    m = mount(u, options=["delete=trash"], debug=True)
    inbox = fpath(m, "INBOX")
    names = names_by_mid(inbox)
    os.unlink(os.path.join(inbox, names[mid_of(msgs[1])]))
    assert sorted(server_mids(acct, "INBOX").values()) == sorted(mid_of(msgs[i]) for i in (0, 2))
    trash = server_bodies_by_mid(acct, "Trash")
    assert list(trash) == [mid_of(msgs[1])]
    assert trash[mid_of(msgs[1])] == msgs[1]
    # the mount shows it in Trash
    assert mid_of(msgs[1]) in names_by_mid(fpath(m, "Trash"))
    # rm inside Trash itself expunges for good
    tnames = names_by_mid(fpath(m, "Trash"))
    os.unlink(os.path.join(fpath(m, "Trash"), tnames[mid_of(msgs[1])]))
    assert server_mids(acct, "Trash") == {}
    assert sorted(server_mids(acct, "INBOX").values()) == sorted(mid_of(msgs[i]) for i in (0, 2))


# --------------------------------------------------------------------------
# mount -> server: mv of messages

@pytest.fixture(scope="module")
def nomove_server():
    """A Dovecot that advertises neither MOVE nor UIDPLUS (nor ESEARCH, QRESYNC): mailfs
    must fall back to UID COPY + \\Deleted + EXPUNGE without touching other messages."""
    d = tempfile.mkdtemp(prefix="mailfs-it-nomove-",
                         dir=os.environ.get("MAILFS_TEST_TMPDIR") or "/tmp")
    os.chmod(d, 0o755)
    srv = mailserver.MailServer(
        d, ports=mailserver.free_port_map(),
        imap_capability="IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE NAMESPACE UNSELECT "
                        "CHILDREN CONDSTORE SPECIAL-USE LIST-EXTENDED")
    srv.start()
    yield srv
    srv.stop()
    if not os.environ.get("MAILFS_KEEP_TMP"):
        shutil.rmtree(d, ignore_errors=True)


def test_fallback_without_move_and_uidplus(make_user, mount, nomove_server):
    msgs = [make_msg("fb", i) for i in range(5)]
    u = make_user("fallback", srv=nomove_server)
    nomove_server.create_folders(u.name, ["Trash", "Sent", "Drafts", "Junk"])
    u.append_many("INBOX", msgs)
    u.append_many("Archive", [])
    acct = u.account()
    uid_of = {mid: uid for uid, mid in server_mids(acct, "INBOX").items()}
    # another client marked message 2 \Deleted and has not expunged it
    nomove_server.doveadm("flags", "add", "-u", u.name, "\\Deleted", "mailbox", "INBOX",
                          "uid", uid_of[mid_of(msgs[2])])
    m = mount(u, debug=True)
    inbox = fpath(m, "INBOX")
    names = names_by_mid(inbox)
    os.unlink(os.path.join(inbox, names[mid_of(msgs[0])]))
    r = sh(["mv", os.path.join(inbox, names[mid_of(msgs[1])]), fpath(m, "Archive") + "/"])
    assert r.returncode == 0, r.stderr
    after = server_mids(acct, "INBOX")
    assert sorted(after.values()) == sorted(mid_of(msgs[i]) for i in (2, 3, 4)), \
        "INBOX on the server: %s" % sorted(after.values())
    assert acct.flags("INBOX", uid_of[mid_of(msgs[2])]) >= {"\\Deleted"}, \
        "the other client's \\Deleted flag was not restored"
    for i in (3, 4):
        assert "\\Deleted" not in acct.flags("INBOX", uid_of[mid_of(msgs[i])]), i
    arch = server_bodies_by_mid(acct, "Archive")
    assert arch == {mid_of(msgs[1]): msgs[1]}
    assert read(fpath(m, "Archive", names[mid_of(msgs[1])])) == msgs[1]
    log = m.log()
    assert trace_commands(log, "UID COPY"), "no UID COPY in the trace"
    assert not trace_commands(log, "UID (MOVE|EXPUNGE)"), "used an extension not offered"



def test_mv_message_to_other_folder(make_user, mount):
    msgs = [make_msg("mv", i) for i in range(3)]
    u = setup_user(make_user, {"INBOX": msgs, "Archive": [make_msg("arch", 0)]})
    acct = u.account()
    m = mount(u, debug=True)
    inbox, arch = fpath(m, "INBOX"), fpath(m, "Archive")
    names = names_by_mid(inbox)
    name = names[mid_of(msgs[0])]
    os.listdir(arch)
    r = sh(["mv", os.path.join(inbox, name), arch + "/"])
    assert r.returncode == 0, r.stderr
    # the mount shows it at the destination, same name, at once
    assert name in os.listdir(arch)
    assert name not in os.listdir(inbox)
    assert read(os.path.join(arch, name)) == msgs[0]
    # the server: gone from the source, present at the destination with identical bytes
    assert sorted(server_mids(acct, "INBOX").values()) == sorted(mid_of(x) for x in msgs[1:])
    dst = server_bodies_by_mid(acct, "Archive")
    assert sorted(dst) == sorted([mid_of(msgs[0]), "<arch.0@sync.test>"])
    assert dst[mid_of(msgs[0])] == msgs[0]
    assert trace_commands(m.log(), "UID MOVE"), "no UID MOVE in the trace"
    assert os.getxattr(os.path.join(arch, name), "user.mail.uid").decode() in \
        {str(uid) for uid, mid in server_mids(acct, "Archive").items() if mid == mid_of(msgs[0])}


def test_mv_message_with_new_name(make_user, mount):
    msgs = [make_msg("mvn", i) for i in range(2)]
    u = setup_user(make_user, {"INBOX": msgs, "Archive": []})
    acct = u.account()
    m = mount(u, debug=True)
    inbox, arch = fpath(m, "INBOX"), fpath(m, "Archive")
    name = names_by_mid(inbox)[mid_of(msgs[1])]
    r = sh(["mv", os.path.join(inbox, name), os.path.join(arch, "newname.eml")])
    assert r.returncode == 0, r.stderr
    assert msg_files(arch) == ["newname.eml"]
    assert read(os.path.join(arch, "newname.eml")) == msgs[1]
    assert list(server_mids(acct, "INBOX").values()) == [mid_of(msgs[0])]
    assert list(server_bodies_by_mid(acct, "Archive").values()) == [msgs[1]]
    # the name sticks after the next sync
    with open(fpath(m, ".mailfs", "sync"), "w") as f:
        f.write("\n")
    time.sleep(1.5)
    assert msg_files(arch) == ["newname.eml"]


def test_rename_within_folder_is_local(make_user, mount):
    msgs = [make_msg("ren", i) for i in range(3)]
    u = setup_user(make_user, {"INBOX": msgs})
    acct = u.account()
    m = mount(u, debug=True)
    inbox = fpath(m, "INBOX")
    name = names_by_mid(inbox)[mid_of(msgs[0])]
    snap = acct.snapshot()
    n_cmds = len(trace_commands(m.log(), r"(UID )?(MOVE|COPY|STORE|EXPUNGE|APPEND)"))
    os.rename(os.path.join(inbox, name), os.path.join(inbox, "my own name.eml"))
    assert "my own name.eml" in os.listdir(inbox)
    assert name not in os.listdir(inbox)
    assert read(os.path.join(inbox, "my own name.eml")) == msgs[0]
    time.sleep(0.3)
    assert acct.snapshot() == snap, "a rename within a folder changed the server"
    assert len(trace_commands(m.log(), r"(UID )?(MOVE|COPY|STORE|EXPUNGE|APPEND)")) == n_cmds
    # renaming onto an existing message's name replaces it, as rename(2) does
    # (rsync's temp-file-then-rename needs that): the replaced message is
    # expunged, the renamed one keeps the name
    other = names_by_mid(inbox)[mid_of(msgs[1])]
    os.rename(os.path.join(inbox, "my own name.eml"), os.path.join(inbox, other))
    assert read(os.path.join(inbox, other)) == msgs[0]
    assert "my own name.eml" not in os.listdir(inbox)
    assert sorted(server_mids(acct, "INBOX").values()) == sorted(mid_of(x) for x in (msgs[0], msgs[2]))
    # RENAME_NOREPLACE is honoured: nothing changes
    third = names_by_mid(inbox)[mid_of(msgs[2])]
    r = subprocess.run(["mv", "--no-clobber", os.path.join(inbox, other), os.path.join(inbox, third)])
    assert sorted(server_mids(acct, "INBOX").values()) == sorted(mid_of(x) for x in (msgs[0], msgs[2]))
    os.rename(os.path.join(inbox, other), os.path.join(inbox, "my own name.eml"))
    cache = m.cache_dir
    problems = m.unmount()
    assert not problems, problems
    m2 = mount(u, cache_dir=cache, debug=True)
    assert "my own name.eml" in os.listdir(fpath(m2, "INBOX"))
    assert read(fpath(m2, "INBOX", "my own name.eml")) == msgs[0]
    assert sorted(server_mids(acct, "INBOX").values()) == sorted(mid_of(x) for x in (msgs[0], msgs[2]))


def test_mv_message_error_paths(make_user, mount):
    msgs = [make_msg("mverr", i) for i in range(2)]
    u = setup_user(make_user, {"INBOX": msgs, "Archive": []})
    acct = u.account()
    m = mount(u, allow=REFUSAL_LINES, debug=True)
    inbox = fpath(m, "INBOX")
    name = names_by_mid(inbox)[mid_of(msgs[0])]
    snap = acct.snapshot()
    src = os.path.join(inbox, name)
    # into the mount root (no folder there to hold messages)
    expect_errno({errno.EPERM, errno.EACCES, errno.EINVAL}, os.rename, src,
                 os.path.join(m.path, name))
    # into a folder that does not exist
    expect_errno({errno.ENOENT}, os.rename, src, fpath(m, "NoSuchFolder", name))
    # into .mailfs
    expect_errno({errno.EPERM, errno.EACCES, errno.EROFS, errno.EXDEV}, os.rename, src,
                 fpath(m, ".mailfs", name))
    time.sleep(0.3)
    assert acct.snapshot() == snap
    assert name in os.listdir(inbox)


# --------------------------------------------------------------------------
# mount -> server: folders

def test_mkdir_creates_folders(make_user, mount, server):
    u = setup_user(make_user, {"INBOX": [make_msg("mk", 0)]})
    acct = u.account()
    m = mount(u, allow=REFUSAL_LINES, debug=True)
    os.mkdir(fpath(m, "Projects"))
    os.mkdir(fpath(m, "Projects", "2026"))
    os.mkdir(fpath(m, "Größe"))
    os.mkdir(fpath(m, "Projects", "Ünïcödé ✓"))
    raw = raw_list(acct)
    want_raw = {"Projects", "Projects/2026", mutf7("Größe"), "Projects/" + mutf7("Ünïcödé ✓")}
    assert want_raw <= raw, sorted(raw)
    assert mutf7("Größe") == "Gr&APYA3w-e"
    assert {"Projects", "Projects/2026", "Größe", "Projects/Ünïcödé ✓"} <= doveadm_folders(server, u)
    for d in ("Projects", "Projects/2026", "Größe", "Projects/Ünïcödé ✓"):
        assert os.path.isdir(fpath(m, d)), d
        assert msg_files(fpath(m, d)) == []
    # the new folders are usable at once: a message moved into the nested one
    name = msg_files(fpath(m, "INBOX"))[0]
    os.rename(fpath(m, "INBOX", name), fpath(m, "Projects", "2026", name))
    assert list(server_mids(acct, "Projects/2026").values()) == ["<mk.0@sync.test>"]
    # error path: mkdir of an existing folder
    expect_errno({errno.EEXIST}, os.mkdir, fpath(m, "Projects"))
    # error path: a folder another client created behind our back
    acct.create("Sneaky")
    snap = acct.snapshot()
    try:
        os.mkdir(fpath(m, "Sneaky"))
    except OSError as e:
        assert e.errno in (errno.EEXIST, errno.EACCES), e
    assert acct.snapshot() == snap


def test_rmdir_empty_and_nonempty(make_user, mount, server):
    u = setup_user(make_user, {"INBOX": [], "Empty": [], "Full": [make_msg("full", 0)],
                               "Parent/Child": []})
    acct = u.account()
    m = mount(u, allow=REFUSAL_LINES, debug=True)
    os.rmdir(fpath(m, "Empty"))
    assert "Empty" not in acct.list_folders()
    assert "Empty" not in os.listdir(m.path)
    snap = acct.snapshot()
    expect_errno({errno.ENOTEMPTY}, os.rmdir, fpath(m, "Full"))
    expect_errno({errno.ENOTEMPTY}, os.rmdir, fpath(m, "Parent"))
    time.sleep(0.3)
    assert acct.snapshot() == snap
    assert msg_files(fpath(m, "Full"))
    # a folder the mount believes empty, where another client just delivered mail
    os.listdir(fpath(m, "Parent", "Child"))
    acct.append("Parent/Child", make_msg("late", 0))
    snap = acct.snapshot()
    try:
        os.rmdir(fpath(m, "Parent", "Child"))
        deleted = True
    except OSError as e:
        assert e.errno == errno.ENOTEMPTY, e
        deleted = False
    assert not deleted, "rmdir deleted a folder holding a message the mount had not seen"
    assert acct.snapshot() == snap
    assert list(server_mids(acct, "Parent/Child").values()) == ["<late.0@sync.test>"]
    # rmdir of a name that is not there
    expect_errno({errno.ENOENT}, os.rmdir, fpath(m, "NoSuch"))


def test_mv_dir_renames(make_user, mount, server):
    sub_msgs = [make_msg("sub", i) for i in range(3)]
    u = setup_user(make_user, {"Proj": [make_msg("proj", 0)], "Proj/Sub": sub_msgs,
                               "Archive": []})
    acct = u.account()
    m = mount(u, debug=True, allow=REFUSAL_LINES)
    before = {f: server_bodies_by_mid(acct, f) for f in ("Proj", "Proj/Sub")}
    r = sh(["mv", fpath(m, "Proj"), fpath(m, "Renamed")])
    assert r.returncode == 0, r.stderr
    folders = set(acct.list_folders())
    assert {"Renamed", "Renamed/Sub"} <= folders and not {"Proj", "Proj/Sub"} & folders
    assert trace_commands(m.log(), "RENAME"), "no RENAME in the trace"
    assert server_bodies_by_mid(acct, "Renamed/Sub") == before["Proj/Sub"]
    assert server_bodies_by_mid(acct, "Renamed") == before["Proj"]
    assert not os.path.exists(fpath(m, "Proj"))
    # the children follow: a change and reads under the new path, at once
    sub = fpath(m, "Renamed", "Sub")
    subnames = names_by_mid(sub)
    os.unlink(os.path.join(sub, subnames[mid_of(sub_msgs[0])]))
    del before["Proj/Sub"][mid_of(sub_msgs[0])]
    assert server_bodies_by_mid(acct, "Renamed/Sub") == before["Proj/Sub"]
    got = {mid: read(os.path.join(sub, n)) for mid, n in names_by_mid(sub).items()}
    assert got == before["Proj/Sub"]
    # move under another folder
    r = sh(["mv", fpath(m, "Renamed"), fpath(m, "Archive") + "/"])
    assert r.returncode == 0, r.stderr
    assert {"Archive/Renamed", "Archive/Renamed/Sub"} <= set(acct.list_folders())
    got = {mid: read(fpath(m, "Archive/Renamed/Sub", n)) for mid, n in
           names_by_mid(fpath(m, "Archive", "Renamed", "Sub")).items()}
    assert got == before["Proj/Sub"]
    # error path: into itself
    snap = acct.snapshot()
    expect_errno({errno.EINVAL}, os.rename, fpath(m, "Archive/Renamed"),
                 fpath(m, "Archive/Renamed/Sub/Inner"))
    # error path: onto an existing folder
    expect_errno({errno.EEXIST, errno.ENOTEMPTY, errno.EACCES, errno.EPERM}, os.rename,
                 fpath(m, "Archive/Renamed/Sub"), fpath(m, "Archive"))
    assert acct.snapshot() == snap


# --------------------------------------------------------------------------
# mount -> server: new messages (APPEND)

def test_cp_appends_with_crlf_and_seen(make_user, mount, tmp_path):
    u = setup_user(make_user, {"INBOX": [make_msg("old", 0)]})
    acct = u.account()
    m = mount(u, debug=True)
    lf = make_msg("cp", 1, eol="\n")
    src = tmp_path / "letter.eml"
    src.write_bytes(lf)
    r = sh(["cp", str(src), fpath(m, "INBOX") + "/"])
    assert r.returncode == 0, r.stderr
    assert "letter.eml" in os.listdir(fpath(m, "INBOX"))
    new = [(uid, b) for uid, b in acct.fetch_all("INBOX").items() if mid_of(b) == "<cp.1@sync.test>"]
    assert len(new) == 1, "appended %d times" % len(new)
    uid, body = new[0]
    assert body == lf.replace(b"\n", b"\r\n")
    assert acct.flags("INBOX", uid) == {"\\Seen"}
    assert read(fpath(m, "INBOX", "letter.eml")) == body
    assert os.stat(fpath(m, "INBOX", "letter.eml")).st_size == len(body)
    assert os.getxattr(fpath(m, "INBOX", "letter.eml"), "user.mail.uid").decode() == str(uid)
    assert trace_commands(m.log(), "APPEND"), "no APPEND in the trace"
    # a CRLF file is sent unchanged (no CR doubled)
    crlf = make_msg("cp", 2)
    (tmp_path / "crlf.eml").write_bytes(crlf)
    r = sh(["cp", str(tmp_path / "crlf.eml"), fpath(m, "INBOX") + "/"])
    assert r.returncode == 0, r.stderr
    assert server_bodies_by_mid(acct, "INBOX")["<cp.2@sync.test>"] == crlf
    # error path: cp onto an existing message name
    r = sh(["cp", str(src), fpath(m, "INBOX", "letter.eml")])
    assert r.returncode != 0
    assert sorted(server_mids(acct, "INBOX").values()) == sorted(
        ["<old.0@sync.test>", "<cp.1@sync.test>", "<cp.2@sync.test>"])


def test_cp_p_sets_internaldate(make_user, mount, tmp_path):
    u = setup_user(make_user, {"INBOX": []})
    acct = u.account()
    m = mount(u, debug=True)
    src = tmp_path / "dated.eml"
    src.write_bytes(make_msg("dated", 0, eol="\n"))
    when = 1577934245  # 2020-01-02 03:04:05 UTC
    os.utime(src, (when, when))
    r = sh(["cp", "-p", str(src), fpath(m, "INBOX") + "/"])
    assert r.returncode == 0, r.stderr
    meta = acct.meta("INBOX")
    assert len(meta) == 1
    (uid, info), = meta.items()
    assert info["internaldate"] == when, "INTERNALDATE %s, file mtime %s" % (
        mailserver.format_internaldate(info["internaldate"]), mailserver.format_internaldate(when))
    assert int(os.stat(fpath(m, "INBOX", "dated.eml")).st_mtime) == when
    # without -p: "now", give or take
    (tmp_path / "undated.eml").write_bytes(make_msg("dated", 1, eol="\n"))
    os.utime(tmp_path / "undated.eml", (when, when))
    t0 = time.time()
    r = sh(["cp", str(tmp_path / "undated.eml"), fpath(m, "INBOX") + "/"])
    assert r.returncode == 0, r.stderr
    idate = [i["internaldate"] for uid2, i in acct.meta("INBOX").items() if uid2 != uid][0]
    assert abs(idate - t0) < 60, (idate, t0)


def test_rsync_directory_of_messages(make_user, mount, tmp_path, report):
    u = setup_user(make_user, {"INBOX": [], "Imported": [make_msg("imp", 99)]})
    acct = u.account()
    m = mount(u, debug=True)
    src = tmp_path / "src"
    src.mkdir()
    files = {}
    for i in range(6):
        name = "mail %02d.eml" % i
        data = make_msg("rs", i, eol="\n" if i % 2 else "\r\n")
        (src / name).write_bytes(data)
        when = 1600000000 + i * 86400
        os.utime(src / name, (when, when))
        files[name] = (data, when)
    r = sh(["rsync", "-a", str(src) + "/", fpath(m, "Imported") + "/"])
    assert r.returncode == 0, r.stderr
    assert r.stderr == b"", r.stderr
    listing = os.listdir(fpath(m, "Imported"))
    assert not [n for n in listing if n.startswith(".")], listing
    assert set(files) <= set(listing), listing
    assert len(listing) == len(files) + 1, listing
    bodies = server_bodies_by_mid(acct, "Imported")
    assert len(bodies) == len(files) + 1, "server holds %d messages" % len(bodies)
    meta = acct.meta("Imported")
    uid_of = {mid: uid for uid, mid in server_mids(acct, "Imported").items()}
    seen = []
    for name, (data, when) in files.items():
        want = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        assert bodies[mid_of(data)] == want, name
        assert read(fpath(m, "Imported", name)) == want, name
        idate = meta[uid_of[mid_of(data)]]["internaldate"]
        seen.append("%s: mtime %s, INTERNALDATE %s, st_mtime %s" % (
            name, mailserver.format_internaldate(when), mailserver.format_internaldate(idate),
            mailserver.format_internaldate(int(os.stat(fpath(m, "Imported", name)).st_mtime))))
    matches = sum(1 for name, (data, when) in files.items()
                  if meta[uid_of[mid_of(data)]]["internaldate"] == when)
    report("rsync -a: INTERNALDATE equals the source mtime for %d of %d files" % (
        matches, len(files)))
    for s in seen[:2]:
        report("  " + s)
    # rsync sets the mtime after close(), on its temporary name, then renames: mailfs
    # appends at the rename, so the mtime becomes the INTERNALDATE
    assert matches == len(files), "\n".join(seen)
    # A second rsync -a sees other sizes (CRLF on the server) and sends the files again,
    # renaming each onto the existing name, which replaces it.  The server must end with
    # each message exactly once and no temporary names.
    r = sh(["rsync", "-a", str(src) + "/", fpath(m, "Imported") + "/"])
    report("second rsync -a into the same folder: exit %d, %d stderr lines" % (
        r.returncode, len(r.stderr.splitlines())))
    time.sleep(0.3)
    after = collections.Counter(server_mids(acct, "Imported").values())
    assert after == collections.Counter([mid_of(d) for d, _ in files.values()] +
                                        ["<imp.99@sync.test>"]), \
        "after a second rsync the server holds %s" % sorted(after.items())
    listing = os.listdir(fpath(m, "Imported"))
    assert not [n for n in listing if n.startswith(".")], listing


def test_cp_non_message_refused(make_user, mount, tmp_path):
    u = setup_user(make_user, {"INBOX": [make_msg("keep", 0)]})
    acct = u.account()
    m = mount(u, allow=REFUSAL_LINES, debug=True)
    snap = acct.snapshot()
    (tmp_path / "notes.txt").write_bytes(b"just some text\nwith no header section\n")
    r = sh(["cp", str(tmp_path / "notes.txt"), fpath(m, "INBOX") + "/"])
    assert r.returncode != 0, "cp of a non-message succeeded"
    assert b"Invalid argument" in r.stderr, r.stderr
    # the same through the system calls: EINVAL when the file is closed
    fd = os.open(fpath(m, "INBOX", "direct.eml"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"\x00\x01binary junk\n")
    with pytest.raises(OSError) as e:
        os.close(fd)
    assert e.value.errno == errno.EINVAL, e.value
    # an empty file has no header section either
    r = sh(["touch", fpath(m, "INBOX", "empty.eml")])
    assert r.returncode != 0, "touch of an empty message succeeded"
    time.sleep(0.3)
    assert acct.snapshot() == snap
    listing = os.listdir(fpath(m, "INBOX"))
    assert not {"notes.txt", "direct.eml", "empty.eml"} & set(listing), listing
    assert len(listing) == 1


def test_write_to_existing_message_refused(make_user, mount):
    msg = make_msg("imm", 0)
    u = setup_user(make_user, {"INBOX": [msg]})
    acct = u.account()
    m = mount(u, debug=True)
    name = msg_files(fpath(m, "INBOX"))[0]
    p = fpath(m, "INBOX", name)
    snap = acct.snapshot()
    r = subprocess.run(["bash", "-c", 'echo x >> "$1"', "sh", p], capture_output=True,
                       env=dict(os.environ, LC_ALL="C"))
    assert r.returncode != 0
    assert b"Permission denied" in r.stderr, r.stderr
    r = sh(["truncate", "-s", "0", p])
    assert r.returncode != 0 and b"Permission denied" in r.stderr, r.stderr
    expect_errno({errno.EACCES}, os.open, p, os.O_WRONLY)
    expect_errno({errno.EACCES}, os.open, p, os.O_RDWR)
    expect_errno({errno.EACCES}, os.truncate, p, 10)
    expect_errno({errno.EACCES, errno.EEXIST}, os.open, p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    time.sleep(0.3)
    assert acct.snapshot() == snap
    assert list(acct.fetch_all("INBOX").values()) == [msg]
    assert read(p) == msg


def test_change_right_after_new_message(make_user, mount, tmp_path):
    """A message that reached a folder through one of the daemon's connections (cp, mv) is
    changed again at once (rm, setfattr, mv, read): each change must act on the server,
    whichever connection carries it."""
    u = setup_user(make_user, {"INBOX": [make_msg("base", 0)], "Other": [make_msg("base", 1)]})
    acct = u.account()
    m = mount(u, debug=True, allow=REFUSAL_LINES)
    inbox, other = fpath(m, "INBOX"), fpath(m, "Other")
    for d in (inbox, other):   # both folders used: each worker has one selected
        read(os.path.join(d, msg_files(d)[0]))
    problems = []
    for i in range(1, 13):
        raw = make_msg("fresh", i)
        mid = mid_of(raw)
        name = "fresh %02d.eml" % i
        (tmp_path / name).write_bytes(raw)
        shutil.copyfile(tmp_path / name, os.path.join(inbox, name))
        what = ("rm", "setfattr", "mv+read", "mv+rm")[i % 4]
        try:
            if what == "rm":
                os.unlink(os.path.join(inbox, name))
                if mid in server_mids(acct, "INBOX").values():
                    problems.append("%s: rm returned 0, the message is still on the server" % name)
            elif what == "setfattr":
                os.setxattr(os.path.join(inbox, name), "user.mail.flags", b"\\Flagged")
                uid = [k for k, v in server_mids(acct, "INBOX").items() if v == mid][0]
                if acct.flags("INBOX", uid) != {"\\Flagged"}:
                    problems.append("%s: setfattr returned 0, server flags %s" % (
                        name, sorted(acct.flags("INBOX", uid))))
            elif what == "mv+read":
                os.rename(os.path.join(inbox, name), os.path.join(other, name))
                if read(os.path.join(other, name)) != raw:
                    problems.append("%s: bytes differ after mv" % name)
            else:
                os.rename(os.path.join(inbox, name), os.path.join(other, name))
                os.unlink(os.path.join(other, name))
                if mid in server_mids(acct, "Other").values():
                    problems.append("%s: mv then rm returned 0, still in Other on the server"
                                    % name)
        except OSError as e:
            problems.append("%s (%s): %s" % (name, what, e))
    # every message is where the operations put it, once
    want_inbox = {"<base.0@sync.test>"} | {"<fresh.%d@sync.test>" % i for i in range(1, 13)
                                           if i % 4 == 1}
    want_other = {"<base.1@sync.test>"} | {"<fresh.%d@sync.test>" % i for i in range(1, 13)
                                           if i % 4 == 2}
    got_inbox = collections.Counter(server_mids(acct, "INBOX").values())
    got_other = collections.Counter(server_mids(acct, "Other").values())
    if set(got_inbox) != want_inbox or max(got_inbox.values()) > 1:
        problems.append("INBOX on the server: %s, want %s" % (sorted(got_inbox), sorted(want_inbox)))
    if set(got_other) != want_other or max(got_other.values()) > 1:
        problems.append("Other on the server: %s, want %s" % (sorted(got_other), sorted(want_other)))
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------
# mount -> server: flags

def test_setfattr_flags(make_user, mount, server):
    msgs = [(make_msg("fl", 0), None, ["\\Answered"]), (make_msg("fl", 1), None, ["\\Seen"])]
    u = setup_user(make_user, {"INBOX": msgs})
    acct = u.account()
    m = mount(u, debug=True, allow=REFUSAL_LINES)
    names = names_by_mid(fpath(m, "INBOX"))
    p = fpath(m, "INBOX", names["<fl.0@sync.test>"])
    uid = int(os.getxattr(p, "user.mail.uid"))
    other_uid = int(os.getxattr(fpath(m, "INBOX", names["<fl.1@sync.test>"]), "user.mail.uid"))
    r = sh(["setfattr", "-n", "user.mail.flags", "-v", "\\Seen \\Flagged", p])
    assert r.returncode == 0, r.stderr
    assert acct.flags("INBOX", uid) == {"\\Seen", "\\Flagged"}
    assert server.doveadm_flags(u.name, "INBOX")[uid] == {"\\Seen", "\\Flagged"}
    assert trace_commands(m.log(), r"UID STORE \d+ FLAGS"), "no UID STORE ... FLAGS in the trace"
    r = sh(["getfattr", "--only-values", "-n", "user.mail.flags", p])
    assert set(r.stdout.decode().split()) == {"\\Seen", "\\Flagged"}, r
    # keywords pass through
    os.setxattr(p, "user.mail.flags", b"$Junk \\Seen Custom_Kw")
    assert acct.flags("INBOX", uid) == {"$Junk", "\\Seen", "Custom_Kw"}
    assert set(os.getxattr(p, "user.mail.flags").decode().split()) == {"$Junk", "\\Seen",
                                                                        "Custom_Kw"}
    r = sh(["getfattr", "-d", "-m", "user.mail.flags", p])
    assert b"$Junk" in r.stdout, r
    # clear them all
    os.setxattr(p, "user.mail.flags", b"")
    assert acct.flags("INBOX", uid) == frozenset()
    assert os.getxattr(p, "user.mail.flags").decode().split() == []
    # the other message is untouched
    assert acct.flags("INBOX", other_uid) == {"\\Seen"}
    # error path: a flag the server refuses; the flags stay as they were
    os.setxattr(p, "user.mail.flags", b"\\Flagged")
    expect_errno({errno.EINVAL, errno.EIO, errno.EACCES}, os.setxattr, p, "user.mail.flags",
                 b"\\NoSuchSystemFlag")
    assert acct.flags("INBOX", uid) == {"\\Flagged"}
    assert os.getxattr(p, "user.mail.flags").decode().split() == ["\\Flagged"]
    # error path: the read-only attributes
    expect_errno({errno.EACCES, errno.EPERM, errno.ENOTSUP, errno.EROFS}, os.setxattr, p,
                 "user.mail.uid", b"1")
    assert int(os.getxattr(p, "user.mail.uid")) == uid
    # error path: another client expunged it meanwhile
    server.doveadm("expunge", "-u", u.name, "mailbox", "INBOX", "uid", other_uid)
    q = fpath(m, "INBOX", names["<fl.1@sync.test>"])
    try:
        os.setxattr(q, "user.mail.flags", b"\\Flagged")
    except OSError as e:
        assert e.errno in (errno.ENOENT, errno.EIO), e
    else:
        pytest.fail("setting flags on an expunged message succeeded")
    assert other_uid not in server_mids(acct, "INBOX")


# --------------------------------------------------------------------------
# -o ro

def test_ro_mount_refuses_every_change(make_user, mount, tmp_path):
    u = setup_user(make_user, {"INBOX": [make_msg("ro", 0)], "Archive": [], "Empty": []})
    acct = u.account()
    m = mount(u, options=["ro"], debug=True)
    # after the mount's first look at every folder: opening an empty folder
    # makes Dovecot assign its UIDVALIDITY, which is no change of ours
    for d in ("INBOX", "Archive", "Empty"):
        os.listdir(fpath(m, d))
    snap = acct.snapshot()
    inbox = fpath(m, "INBOX")
    p = os.path.join(inbox, msg_files(inbox)[0])
    (tmp_path / "x.eml").write_bytes(make_msg("ro", 1))
    for argv in (["rm", "-f", p], ["mv", p, fpath(m, "Archive") + "/"],
                 ["mv", p, os.path.join(inbox, "renamed.eml")],
                 ["mkdir", fpath(m, "NewDir")], ["rmdir", fpath(m, "Empty")],
                 ["mv", fpath(m, "Empty"), fpath(m, "Moved")],
                 ["cp", str(tmp_path / "x.eml"), inbox + "/"],
                 ["setfattr", "-n", "user.mail.flags", "-v", "\\Seen \\Flagged", p]):
        r = sh(argv)
        assert r.returncode != 0, argv
        assert b"Read-only file system" in r.stderr, (argv, r.stderr)
    expect_errno({errno.EROFS}, os.unlink, p)
    expect_errno({errno.EROFS}, os.setxattr, p, "user.mail.flags", b"\\Seen")
    time.sleep(0.3)
    assert acct.snapshot() == snap


# --------------------------------------------------------------------------
# a refusal from the server

def test_mv_to_folder_deleted_by_other_client(make_user, mount, server):
    msgs = [make_msg("ref", i) for i in range(2)]
    u = setup_user(make_user, {"INBOX": msgs, "Dest": []})
    acct = u.account()
    m = mount(u, options=["poll=600"], debug=True, allow=REFUSAL_LINES)
    inbox = fpath(m, "INBOX")
    assert os.path.isdir(fpath(m, "Dest"))
    name = names_by_mid(inbox)[mid_of(msgs[0])]
    server.doveadm("mailbox", "delete", "-u", u.name, "Dest")
    assert "Dest" not in acct.list_folders()
    code = expect_errno({errno.EIO, errno.EACCES, errno.ENOENT}, os.rename,
                        os.path.join(inbox, name), fpath(m, "Dest", name))
    print("mv into a folder deleted behind our back: %s" % errno.errorcode[code])
    assert sorted(server_mids(acct, "INBOX").values()) == sorted(mid_of(x) for x in msgs)
    assert server_bodies_by_mid(acct, "INBOX")[mid_of(msgs[0])] == msgs[0]
    assert "Dest" not in acct.list_folders()
    assert name in os.listdir(inbox)
    assert read(os.path.join(inbox, name)) == msgs[0]
    # and an APPEND into the vanished folder fails at close, nothing appears anywhere
    server.doveadm("mailbox", "create", "-u", u.name, "Dest2")
    with open(fpath(m, ".mailfs", "sync"), "w") as f:
        f.write("\n")
    assert wait_until(lambda: os.path.isdir(fpath(m, "Dest2")), 5) is not None
    server.doveadm("mailbox", "delete", "-u", u.name, "Dest2")
    fd = os.open(fpath(m, "Dest2", "new.eml"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, make_msg("ref", 9))
    with pytest.raises(OSError) as e:
        os.close(fd)
    assert e.value.errno in (errno.EIO, errno.EACCES, errno.ENOENT), e.value
    assert "Dest2" not in acct.list_folders(), "the APPEND re-created the deleted folder"
    assert sorted(server_mids(acct, "INBOX").values()) == sorted(mid_of(x) for x in msgs)


# --------------------------------------------------------------------------
# server -> mount

def _sync_now(m):
    with open(fpath(m, ".mailfs", "sync"), "w") as f:
        f.write("\n")


def test_server_changes_appear(make_user, mount, server, report):
    """Another client appends, expunges, moves, flags, creates/deletes/renames folders."""
    u = setup_user(make_user, {"INBOX": [make_msg("srv", i) for i in range(4)],
                               "Other": [make_msg("oth", i) for i in range(3)],
                               "Gone": [], "Old": [make_msg("old", 0)]})
    acct = u.account()
    # a folder deleted or renamed by another client may be synced once more before the LIST
    # that removes it: the daemon says so in one line
    m = mount(u, options=["poll=%d" % POLL], debug=True,
              allow=[r"warning: cannot open folder (Gone|Old): Mailbox doesn't exist"])
    inbox, other = fpath(m, "INBOX"), fpath(m, "Other")
    assert len(msg_files(inbox)) == 4 and len(msg_files(other)) == 3
    bound_other = POLL + POLL_MARGIN
    lat = {}

    def mids(d):
        return set(names_by_mid(d))

    # a new message in INBOX (watched)
    raw = make_msg("srv", 10)
    acct.append("INBOX", raw)
    lat["append INBOX"] = wait_until(lambda: "<srv.10@sync.test>" in mids(inbox), WATCHED_BOUND)
    # a new message in another folder
    acct.append("Other", make_msg("oth", 10))
    lat["append Other"] = wait_until(lambda: "<oth.10@sync.test>" in mids(other), bound_other)
    sm = {mid: uid for uid, mid in server_mids(acct, "INBOX").items()}
    # expunge
    server.doveadm("expunge", "-u", u.name, "mailbox", "INBOX", "uid", sm["<srv.0@sync.test>"])
    lat["expunge INBOX"] = wait_until(lambda: "<srv.0@sync.test>" not in mids(inbox),
                                      WATCHED_BOUND)
    # move INBOX -> Other
    server.doveadm("move", "-u", u.name, "Other", "mailbox", "INBOX", "uid",
                   sm["<srv.1@sync.test>"])
    lat["move out of INBOX"] = wait_until(lambda: "<srv.1@sync.test>" not in mids(inbox),
                                          WATCHED_BOUND)
    lat["move into Other"] = wait_until(lambda: "<srv.1@sync.test>" in mids(other), bound_other)
    # flags
    p = os.path.join(inbox, names_by_mid(inbox)["<srv.2@sync.test>"])
    server.doveadm("flags", "add", "-u", u.name, "\\Flagged $Label1", "mailbox", "INBOX", "uid",
                   sm["<srv.2@sync.test>"])
    lat["flags INBOX"] = wait_until(
        lambda: {"\\Flagged", "$Label1"} <= set(os.getxattr(p, "user.mail.flags").decode().split()),
        WATCHED_BOUND)
    om = {mid: uid for uid, mid in server_mids(acct, "Other").items()}
    q = os.path.join(other, names_by_mid(other)["<oth.0@sync.test>"])
    server.doveadm("flags", "add", "-u", u.name, "\\Answered", "mailbox", "Other", "uid",
                   om["<oth.0@sync.test>"])
    lat["flags Other"] = wait_until(
        lambda: "\\Answered" in os.getxattr(q, "user.mail.flags").decode().split(), bound_other)
    # folders
    server.doveadm("mailbox", "create", "-u", u.name, "Fresh")
    lat["create folder"] = wait_until(lambda: os.path.isdir(fpath(m, "Fresh")), bound_other)
    server.doveadm("mailbox", "delete", "-u", u.name, "Gone")
    lat["delete folder"] = wait_until(lambda: "Gone" not in os.listdir(m.path), bound_other)
    server.doveadm("mailbox", "rename", "-u", u.name, "Old", "New")
    lat["rename folder"] = wait_until(
        lambda: "New" in os.listdir(m.path) and "Old" not in os.listdir(m.path)
        and msg_files(fpath(m, "New")), bound_other)
    report("server->mount latencies (poll=%d): %s" % (POLL, ", ".join(
        "%s %s" % (k, "%.2fs" % v if v is not None else "NEVER") for k, v in lat.items())))
    missed = [k for k, v in lat.items() if v is None]
    assert not missed, "not seen within bounds: %s" % missed
    # and what the mount shows is what the server holds
    for f in ("INBOX", "Other", "New"):
        want = server_bodies_by_mid(acct, f)
        got = {mid: read(fpath(m, f, n)) for mid, n in names_by_mid(fpath(m, f)).items()}
        assert got == want, f


def test_new_mail_latency_inbox(make_user, mount, report):
    """Latency from the APPEND by another client to the file in INBOX (polled every 50 ms)."""
    u = setup_user(make_user, {"INBOX": [make_msg("lat", 0)]})
    acct = u.account()
    m = mount(u, options=["poll=%d" % POLL], debug=True)
    inbox = fpath(m, "INBOX")
    os.listdir(inbox)
    time.sleep(0.5)
    samples = []
    for i in range(1, 6):
        before = set(os.listdir(inbox))
        acct.append("INBOX", make_msg("lat", i))
        t = wait_until(lambda: len(set(os.listdir(inbox)) - before) == 1, WATCHED_BOUND + 5)
        samples.append(t)
        time.sleep(0.3)
    report("new message in INBOX -> visible in the mount (poll=%d): %s" % (
        POLL, ", ".join("%.2fs" % s if s is not None else "NEVER" for s in samples)))
    assert None not in samples
    report("  median %.2fs, max %.2fs" % (statistics.median(samples), max(samples)))
    assert max(samples) <= WATCHED_BOUND


@pytest.mark.parametrize("folder", ["INBOX", "Recent"])
def test_idle_watched_folder(make_user, mount, report, folder):
    """With a long poll, the folder being watched still shows new mail within seconds (IDLE):
    INBOX, and the folder used last."""
    u = setup_user(make_user, {"INBOX": [make_msg("idle", 0)], "Recent": [make_msg("rec", 0)],
                               "Third": []})
    acct = u.account()
    m = mount(u, options=["poll=120"], debug=True)
    d = fpath(m, folder)
    os.listdir(fpath(m, "Third"))
    read(os.path.join(d, msg_files(d)[0]))  # use it
    time.sleep(1.5)  # let an idler settle on it
    before = set(os.listdir(d))
    acct.append(folder, make_msg("idle", 1))
    t = wait_until(lambda: len(set(os.listdir(d)) - before) == 1, WATCHED_BOUND)
    report("IDLE (poll=120), new message in %s: %s" % (folder, "%.2fs" % t if t else "NEVER"))
    assert t is not None, "new mail in the watched folder %s not seen within %.0f s" % (
        folder, WATCHED_BOUND)


def test_sync_file_forces_resync(make_user, mount, server):
    u = setup_user(make_user, {"INBOX": [], "Far": [make_msg("far", 0)]})
    acct = u.account()
    m = mount(u, options=["poll=600"], debug=True)
    far = fpath(m, "Far")
    assert len(msg_files(far)) == 1
    os.listdir(fpath(m, "INBOX"))
    acct.append("Far", make_msg("far", 1))
    server.doveadm("mailbox", "create", "-u", u.name, "Brand/New")
    time.sleep(0.5)
    t0 = time.monotonic()
    r = subprocess.run(["sh", "-c", 'echo > "$1"', "sh", fpath(m, ".mailfs", "sync")],
                       capture_output=True)
    assert r.returncode == 0, r.stderr
    t = wait_until(lambda: len(msg_files(far)) == 2 and os.path.isdir(fpath(m, "Brand/New")), 5)
    assert t is not None, "echo > .mailfs/sync did not resync (poll=600)"
    print("resync after echo > .mailfs/sync: %.2fs" % (time.monotonic() - t0))
    assert set(names_by_mid(far)) == {"<far.0@sync.test>", "<far.1@sync.test>"}


def test_uidvalidity_change(make_user, mount, server):
    msgs = [make_msg("uv", i) for i in range(4)]
    u = setup_user(make_user, {"INBOX": [], "Box": msgs, "Swap": [make_msg("swapold", i)
                                                                 for i in range(3)]})
    acct = u.account()
    m = mount(u, options=["poll=%d" % POLL], debug=True)
    box, swap = fpath(m, "Box"), fpath(m, "Swap")
    before = {n: read(os.path.join(box, n)) for n in msg_files(box)}
    for n in msg_files(swap):
        read(os.path.join(swap, n))   # cache the old bodies
    old_uv = acct.status("Box")["UIDVALIDITY"]
    # 1. same messages, new UIDVALIDITY
    server.doveadm("mailbox", "update", "-u", u.name, "--uid-validity", old_uv + 1000, "Box")
    assert acct.status("Box")["UIDVALIDITY"] == old_uv + 1000
    # 2. the folder replaced by another with the same name, the same UIDs, other messages
    # (built aside and renamed into place: Dovecot 2.3 can panic when a session opens a
    # mailbox while another creates it under the same name)
    new_msgs = [make_msg("swapnew", i, body="Completely different %d\r\n" % i) for i in range(3)]
    acct.create("SwapNext")
    for x in new_msgs:
        acct.append("SwapNext", x)
    server.doveadm("mailbox", "delete", "-u", u.name, "Swap")
    typ, data = acct.c.rename("SwapNext", "Swap")
    assert typ == "OK", data
    suv = acct.status("Swap")["UIDVALIDITY"]
    server.doveadm("mailbox", "update", "-u", u.name, "--uid-validity", suv + 777, "Swap")
    assert sorted(server_mids(acct, "Swap")) == [1, 2, 3]
    rebuilt = wait_until(lambda: "UIDVALIDITY changed" in m.log(), POLL + POLL_MARGIN)
    time.sleep(POLL + 1)   # let one full sync pass
    want_box = server_bodies_by_mid(acct, "Box")
    got_box = {mid: read(os.path.join(box, n)) for mid, n in names_by_mid(box).items()}
    assert got_box == want_box
    assert sorted(got_box.values()) == sorted(before.values())
    want_swap = server_bodies_by_mid(acct, "Swap")
    assert sorted(want_swap) == sorted(mid_of(x) for x in new_msgs)

    def swap_ok():
        got = {mid: read(os.path.join(swap, n)) for mid, n in names_by_mid(swap).items()}
        return got == want_swap
    assert wait_until(swap_ok, POLL + POLL_MARGIN) is not None, \
        "Swap after UIDVALIDITY change: mount shows %s" % sorted(names_by_mid(swap))
    for n in msg_files(swap):
        p = os.path.join(swap, n)
        assert os.stat(p).st_size == len(read(p))
    print("'UIDVALIDITY changed' in the daemon's log: %s" % (rebuilt is not None))


# --------------------------------------------------------------------------
# burst

@pytest.mark.slow
def test_burst_500_mv_500_rm(make_user, mount, report):
    n_total, n_mv, n_rm = 1100, 500, 500
    msgs = [make_msg("burst", i, minute=i % 600) for i in range(n_total)]
    u = setup_user(make_user, {"INBOX": [], "A": msgs, "B": [make_msg("bb", 0)]})
    acct = u.account()
    m = mount(u, allow=REFUSAL_LINES, debug=True)
    a, b = fpath(m, "A"), fpath(m, "B")
    names = names_by_mid(a)
    assert len(names) == n_total
    os.listdir(b)
    order = sorted(names)   # by Message-ID
    mv_mids, rm_mids = order[:n_mv], order[n_mv:n_mv + n_rm]
    keep_mids = order[n_mv + n_rm:]
    wd = m.workdir
    with open(os.path.join(wd, "mv.list"), "w") as f:
        f.write("".join(names[x] + "\n" for x in mv_mids))
    with open(os.path.join(wd, "rm.list"), "w") as f:
        f.write("".join(names[x] + "\n" for x in rm_mids))
    t0 = time.time()
    r = subprocess.run(["bash", "-c", 'cd "$1" && fail=0; while IFS= read -r f; do '
                        'mv -- "$f" ../B/ || fail=$((fail+1)); done < "$2"; echo "mv_fail=$fail"',
                        "burst", a, os.path.join(wd, "mv.list")],
                       capture_output=True, timeout=240)
    t_mv = time.time() - t0
    assert r.returncode == 0 and b"mv_fail=0" in r.stdout, (r.stdout[-300:], r.stderr[-2000:])
    t0 = time.time()
    r = subprocess.run(["bash", "-c", 'cd "$1" && fail=0; while IFS= read -r f; do '
                        'rm -- "$f" || fail=$((fail+1)); done < "$2"; echo "rm_fail=$fail"',
                        "burst", a, os.path.join(wd, "rm.list")],
                       capture_output=True, timeout=240)
    t_rm = time.time() - t0
    assert r.returncode == 0 and b"rm_fail=0" in r.stdout, (r.stdout[-300:], r.stderr[-2000:])
    report("burst: %d mv in %.1f s, %d rm in %.1f s" % (n_mv, t_mv, n_rm, t_rm))
    sa = collections.Counter(server_mids(acct, "A").values())
    sb = collections.Counter(server_mids(acct, "B").values())
    dup = [x for x, c in (sa + sb).items() if c > 1]
    assert not dup, "duplicated on the server: %s" % dup[:5]
    lost = set(mv_mids + keep_mids) - set(sa) - set(sb)
    assert not lost, "lost: %d, e.g. %s" % (len(lost), sorted(lost)[:5])
    assert set(sa) == set(keep_mids), "A: %d extra, %d missing" % (
        len(set(sa) - set(keep_mids)), len(set(keep_mids) - set(sa)))
    assert set(sb) == set(mv_mids) | {"<bb.0@sync.test>"}, "B: %d extra, %d missing" % (
        len(set(sb) - set(mv_mids) - {"<bb.0@sync.test>"}), len(set(mv_mids) - set(sb)))
    assert server_mids(acct, "Trash") == {}
    # and the mount agrees, with the names it gave (mv keeps the name)
    assert set(names_by_mid(a)) == set(keep_mids)
    nb = names_by_mid(b)
    assert set(nb) == set(sb)
    assert all(nb[x] == names[x] for x in mv_mids)
    sbodies = server_bodies_by_mid(acct, "B")
    for x in mv_mids[::50]:
        assert read(os.path.join(b, nb[x])) == sbodies[x]


# --------------------------------------------------------------------------
# remount with a warm cache

@pytest.mark.slow
def test_remount_uses_cache(make_user, mount, report):
    n = 2000
    msgs = [make_msg("big", i, minute=i % 600, body="Line %d of a message.\r\n" % i * 20)
            for i in range(n)]
    u = setup_user(make_user, {"INBOX": [make_msg("small", 0)], "Big": msgs})
    acct = u.account()
    t0 = time.time()
    m = mount(u, debug=True)
    big = fpath(m, "Big")
    first = {mid: read(os.path.join(big, nm)) for mid, nm in names_by_mid(big).items()}
    for f in ("INBOX", "Trash"):
        for nm in msg_files(fpath(m, f)):
            read(fpath(m, f, nm))
    t_first = time.time() - t0
    st1 = m.status()
    want = server_bodies_by_mid(acct, "Big")
    assert len(first) == n and first == want
    names1 = sorted(os.listdir(big))
    cache = m.cache_dir
    problems = m.unmount()
    assert not problems, problems
    t0 = time.time()
    m2 = mount(u, cache_dir=cache, debug=True)
    t_mount = time.time() - t0
    big = fpath(m2, "Big")
    names2 = sorted(os.listdir(big))
    t_list = time.time() - t0
    second = {}
    for nm in names2:
        second[nm] = read(os.path.join(big, nm))
    t_all = time.time() - t0
    st2 = m2.status()
    log2 = m2.log()
    fetches = trace_commands(log2, "UID FETCH")
    report("remount of %d messages: mounted %.2fs, listed %.2fs, all read %.2fs "
           "(first mount + read: %.2fs); fetch_commands %s (first mount %s); "
           "UID FETCH lines in the -d trace: %d" % (
               n, t_mount, t_list, t_all, t_first, st2.get("fetch_commands"),
               st1.get("fetch_commands"), len(fetches)))
    assert names2 == names1
    assert sorted(second.values()) == sorted(want.values())
    assert not fetches, "the second mount sent:\n" + "\n".join(fetches[:10])
    assert st2.get("fetch_commands") == "0", st2


@pytest.mark.parametrize("kind", ["qresync", "condstore"])
def test_remount_after_server_changes_is_incremental(make_user, mount, server, nomove_server,
                                                      kind, report):
    """Changes made by another client while unmounted (expunges, flags, new mail) are
    picked up on remount from what changed, never a refetch of known metadata:
    QRESYNC (RFC 7162: SELECT ... (QRESYNC ...) answers VANISHED (EARLIER) and the
    changed flags) where offered; else CONDSTORE's CHANGEDSINCE plus a UID list."""
    srv = server if kind == "qresync" else nomove_server
    n = 40
    u = make_user("resync", srv=srv)
    srv.create_folders(u.name, ["Trash", "Sent", "Drafts", "Junk"])
    u.append_many("Box", [make_msg("rs", i) for i in range(n)])
    m = mount(u, debug=True)
    names1 = names_by_mid(fpath(m, "Box"))
    assert len(names1) == n
    cache = m.cache_dir
    problems = m.unmount()
    assert not problems, problems

    acct = u.account()
    uids = sorted(acct.list_uids("Box"))
    gone_uids = uids[3:8] + [uids[-1]]
    for uid in gone_uids:
        acct.store_flags("Box", uid, ["\\Deleted"], mode="+FLAGS")
    acct.c.expunge()
    flagged = uids[10:12]
    for uid in flagged:
        acct.store_flags("Box", uid, ["\\Flagged", "$Label1"], mode="+FLAGS")
    new = make_msg("rs-new", 1000)
    acct.append("Box", new)
    want = server_mids(acct, "Box")

    m2 = mount(u, cache_dir=cache, debug=True)
    names2 = names_by_mid(fpath(m2, "Box"))
    assert sorted(names2) == sorted(want.values())
    for mid, nm in names2.items():
        if mid in names1:
            assert nm == names1[mid], "a known message was renamed"
    by_uid = {uid: mid for uid, mid in want.items()}
    for uid in flagged:
        fl = os.getxattr(os.path.join(fpath(m2, "Box"), names2[by_uid[uid]]),
                         "user.mail.flags").decode().split()
        assert "\\Flagged" in fl and "$Label1" in fl, fl
    log = m2.log()
    selects = trace_commands(log, "SELECT")
    full_flag_fetch = [ln for ln in trace_commands(log, "UID FETCH")
                       if "FLAGS)" in ln and "CHANGEDSINCE" not in ln]
    envelopes = [ln for ln in trace_commands(log, "UID FETCH") if "ENVELOPE" in ln]
    report("remount after 6 expunges, 2 flag changes, 1 new (%s): %d SELECT, %d envelope "
           "fetches, %d UID SEARCH" % (kind, len(selects), len(envelopes),
                                     len(trace_commands(log, "UID SEARCH"))))
    assert not full_flag_fetch, full_flag_fetch
    if kind == "qresync":
        assert any("(QRESYNC (" in ln for ln in selects if "Box" in ln), selects
        assert "VANISHED (EARLIER)" in log
        assert not trace_commands(log, "UID SEARCH"), "QRESYNC should name the expunged"
        assert not [ln for ln in trace_commands(log, "UID FETCH") if "CHANGEDSINCE" in ln]
    else:
        assert not any("QRESYNC" in ln for ln in selects), selects
        assert [ln for ln in trace_commands(log, "UID FETCH") if "CHANGEDSINCE" in ln]
    # Only the new message's metadata was fetched for Box.
    box_env = [ln for ln in envelopes if re.search(r"UID FETCH %d:\*" % (uids[-2] + 1), ln)
               or re.search(r"UID FETCH %d:\*" % (uids[-1] + 1), ln)]
    assert box_env, envelopes
