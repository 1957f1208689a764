"""The server goes away under a mounted account, then comes back.

Changes made meanwhile go to the durable journal and are replayed in order when the
server is back (SPEC.md), also after a kill -9 and a remount, which with a warm cache
works while the server is still unreachable.

SPEC.md ("What each file operation does", last paragraphs): while the server is
unreachable the cache keeps serving what it holds, listings show the last known
state, reading a message that was never cached fails with EIO after a bounded wait
(never hangs), `.mailfs/status` says offline; when the server returns, the mount
catches up with what changed meanwhile.

The mount reaches Dovecot through tests/faultproxy.py, which can reset every
connection (a server that is down) or stop all bytes flowing (a dead link, where
only mailfs's own timeouts help).
"""
import errno
import re
import os
import subprocess
import time

import pytest

from faultproxy import FaultProxy
from conftest import wait_for

# Longest a read of an uncached message may block while the server is unreachable.
DOWN_BOUND_S = 20     # refused/reset connections: fails fast
STALL_BOUND_S = 60    # a dead link: the 30 s I/O timeout, plus a 10 s connect, behind a sync


# What mailfs says, rightly, while the proxy refuses or cuts its connections.
OFFLINE_LINES = [r"connection lost|cannot connect|timed out|reset|refus|unreachable|"
                 r"closed|offline|No route|Connection|handshake|EOF"]


def via(proxy, user):
    """The SOURCE URL of USER's account through PROXY."""
    return "imaps://%s@127.0.0.1:%d" % (user.name, proxy.port)


def assert_eio_within(path, bound):
    """Reading PATH fails with EIO, in less than BOUND seconds; returns the seconds."""
    t0 = time.time()
    with pytest.raises(OSError) as ei:
        read(path)
    took = time.time() - t0
    assert ei.value.errno == errno.EIO, ei.value
    assert took < bound, took
    return took


def read(path):
    with open(path, "rb") as f:
        return f.read()


class Outage:
    pass


def _msg(i, folder):
    return ("From: Sender %d <s%d@example.org>\r\nTo: x@example.org\r\n"
            "Subject: %s message %d\r\nDate: Wed, 25 Nov 2026 10:%02d:00 +0000\r\n"
            "Message-ID: <%s.%d@example.org>\r\n\r\nbody %d of %s\r\n" % (
                i, i, folder, i, i, folder, i, i, folder)).encode()


@pytest.fixture
def outage(make_user, mount, server):
    u = make_user("offl")
    u.account().create("Later")
    u.append_many("INBOX", [_msg(i, "INBOX") for i in range(6)])
    u.append_many("Later", [_msg(i, "Later") for i in range(6)])
    proxy = FaultProxy(("127.0.0.1", server.ports["imaps"])).start()
    m = mount(u, source=via(proxy, u), options=["poll=2"], allow=OFFLINE_LINES)
    o = Outage()
    o.user, o.proxy, o.mount, o.mnt, o.acct = u, proxy, m, m.path, u.account()
    o.inbox = os.path.join(m.path, "INBOX")
    o.later = os.path.join(m.path, "Later")
    o.names = sorted(os.listdir(o.inbox))
    assert len(o.names) == 6, o.names
    # INBOX is read, so cached; Later is only listed: its bodies stay on the server.
    o.cached = {n: read(os.path.join(o.inbox, n)) for n in o.names}
    o.uncached = sorted(os.listdir(o.later))
    assert len(o.uncached) == 6, o.uncached
    yield o
    proxy.stop()


def test_server_down_cache_serves_and_mount_catches_up(outage, report):
    o = outage
    folders_before = sorted(os.listdir(o.mnt))
    o.proxy.down()
    assert wait_for(lambda: o.mount.status().get("state") == "offline", 15), o.mount.status()

    # Listings show the last known state, cached bodies read exactly.
    assert sorted(os.listdir(o.inbox)) == o.names
    assert sorted(os.listdir(o.mnt)) == folders_before
    for n, data in o.cached.items():
        assert read(os.path.join(o.inbox, n)) == data
        assert os.stat(os.path.join(o.inbox, n)).st_size == len(data)

    # An uncached body: EIO, soon, never a hang.
    took = assert_eio_within(os.path.join(o.later, o.uncached[0]), DOWN_BOUND_S)
    report("offline: server down, uncached read failed with EIO after %.2f s" % took)

    # A whole-tree walk finishes (errors only for what was never fetched).
    t0 = time.time()
    r = subprocess.run(["find", o.mnt, "-type", "f"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert time.time() - t0 < DOWN_BOUND_S

    # Meanwhile another client delivers mail; the server comes back.
    new = (b"From: Back Again <back@example.org>\r\nTo: x@example.org\r\n"
           b"Subject: delivered during the outage\r\nDate: Thu, 26 Nov 2026 08:00:00 +0000\r\n"
           b"Message-ID: <outage@example.org>\r\n\r\nhello after the outage\r\n")
    o.acct.append("INBOX", new)
    o.proxy.up()
    t0 = time.time()
    assert wait_for(lambda: o.mount.status().get("state") == "online", 20), o.mount.status()
    arrived = wait_for(lambda: [n for n in os.listdir(o.inbox)
                                if "delivered during the outage" in n], 20)
    assert arrived, os.listdir(o.inbox)
    report("offline: server back, online and new mail listed after %.2f s (poll=2)" % (
        time.time() - t0))
    assert read(os.path.join(o.inbox, arrived[0])) == new
    # What could not be read before now reads, byte for byte what the server holds.
    uid_of = {}
    for n in o.uncached:
        p = os.path.join(o.later, n)
        uid_of[n] = int(os.getxattr(p, "user.mail.uid"))
        assert read(p) == o.acct.fetch_bytes("Later", uid_of[n])


def test_dead_link_read_fails_within_bound_then_recovers(outage, report):
    o = outage
    o.proxy.stall()
    took = assert_eio_within(os.path.join(o.later, o.uncached[0]), STALL_BOUND_S)
    report("offline: dead link, uncached read failed with EIO after %.2f s" % took)
    # Cached reads never wait for the network.
    t0 = time.time()
    for n, data in o.cached.items():
        assert read(os.path.join(o.inbox, n)) == data
    assert time.time() - t0 < 2
    o.proxy.up()
    p = os.path.join(o.later, o.uncached[1])
    data = wait_for(lambda: _try_read(p), 30, step=1)
    assert data and data == o.acct.fetch_bytes("Later", int(os.getxattr(p, "user.mail.uid")))
    assert wait_for(lambda: o.mount.status().get("state") == "online", 20)


def _try_read(p):
    try:
        return read(p)
    except OSError:
        return None


def mid_of(raw):
    m = re.search(rb"(?im)^Message-ID:\s*(<[^>]+>)", raw)
    return m.group(1).decode() if m else None


def server_by_mid(acct, folder):
    """{Message-ID: (uid, bytes)}; a Message-ID held twice fails here (never lost in a dict)."""
    out = {}
    for uid, b in acct.fetch_all(folder).items():
        mid = mid_of(b)
        assert mid not in out, "%s twice in %s on the server (UIDs %s, %s)" % (
            mid, folder, out[mid][0], uid)
        out[mid] = (uid, b)
    return out


NEW_MSG = (b"From: Offline Writer <ow@example.org>\nTo: x@example.org\n"
           b"Subject: written while offline\nDate: Thu, 26 Nov 2026 09:00:00 +0000\n"
           b"Message-ID: <offline-new@example.org>\n\nwritten with no server\n")


def make_offline_changes(o, tmp_path):
    """rm, mv, setfattr, cp, mkdir while the server is down: each returns success and
    shows at once.  Returns what the server must hold afterwards."""
    inbox = o.inbox
    gone, moved, flagged = o.names[0], o.names[1], o.names[2]
    mids = {n: mid_of(o.cached[n]) for n in o.names}
    os.unlink(os.path.join(inbox, gone))
    assert not os.path.exists(os.path.join(inbox, gone))
    os.rename(os.path.join(inbox, moved), os.path.join(o.later, "kept name.eml"))
    assert read(os.path.join(o.later, "kept name.eml")) == o.cached[moved]
    os.setxattr(os.path.join(inbox, flagged), "user.mail.flags", b"\\Seen \\Flagged")
    src = tmp_path / "new.eml"
    src.write_bytes(NEW_MSG)
    subprocess.run(["cp", str(src), os.path.join(inbox, "new one.eml")], check=True)
    assert read(os.path.join(inbox, "new one.eml")) == NEW_MSG.replace(b"\n", b"\r\n")
    os.mkdir(os.path.join(o.mnt, "Made Offline"))
    return {"gone": mids[gone], "moved": mids[moved], "flagged": mids[flagged]}


def check_replayed(o, acct, want):
    inbox_srv = server_by_mid(acct, "INBOX")
    later_srv = server_by_mid(acct, "Later")
    assert want["gone"] not in inbox_srv and want["gone"] not in later_srv
    assert want["moved"] in later_srv and want["moved"] not in inbox_srv
    uid, _ = inbox_srv[want["flagged"]]
    assert "\\Flagged" in acct.flags("INBOX", uid)
    assert "<offline-new@example.org>" in inbox_srv
    uid, body = inbox_srv["<offline-new@example.org>"]
    assert body == NEW_MSG.replace(b"\n", b"\r\n")
    assert "\\Seen" in acct.flags("INBOX", uid)
    assert "Made Offline" in acct.list_folders()


def test_offline_changes_are_journaled_then_replayed(outage, tmp_path, report):
    o = outage
    before = o.acct.snapshot()
    o.proxy.down()
    assert wait_for(lambda: o.mount.status().get("state") == "offline", 15)
    t0 = time.time()
    want = make_offline_changes(o, tmp_path)
    report("offline: rm, mv, setfattr, cp, mkdir journaled in %.2f s" % (time.time() - t0))
    st = o.mount.status()
    assert st["pending"] == "5", st
    assert o.acct.snapshot() == before, "the server changed while it was unreachable"
    # The moved and the new message read like any other, under the names they were given.
    assert read(os.path.join(o.later, "kept name.eml"))
    assert os.path.isdir(os.path.join(o.mnt, "Made Offline"))

    o.proxy.up()
    t0 = time.time()
    assert wait_for(lambda: o.mount.status().get("pending") == "0", 30), o.mount.status()
    report("offline: 5 journaled changes replayed %.2f s after the server came back (poll=2)"
           % (time.time() - t0))
    check_replayed(o, o.acct, want)
    # The mount shows the server's state, names kept, local UIDs replaced by the server's.
    with open(os.path.join(o.mnt, ".mailfs", "sync"), "w") as f:
        f.write("1\n")
    ok = wait_for(lambda: len(os.listdir(o.inbox)) == len(o.acct.list_uids("INBOX")), 15)
    assert ok, (sorted(os.listdir(o.inbox)), o.acct.list_uids("INBOX"))
    for folder, name in (("Later", "kept name.eml"), ("INBOX", "new one.eml")):
        p = os.path.join(o.mnt, folder, name)
        uid = int(os.getxattr(p, "user.mail.uid"))
        assert uid < 0xF0000000, uid
        assert read(p) == o.acct.fetch_bytes(folder, uid)


def test_journal_survives_kill9_and_remount_offline(outage, mount, tmp_path, report):
    o = outage
    o.proxy.down()
    assert wait_for(lambda: o.mount.status().get("state") == "offline", 15)
    want = make_offline_changes(o, tmp_path)
    o.mount.proc.kill()
    o.mount.proc.wait()
    subprocess.run(["fusermount3", "-uz", o.mnt], capture_output=True)
    o.mount.unmounted = True

    # Still unreachable: a warm cache mounts offline, with one warning, and keeps the journal.
    m2 = mount(o.user, source=via(o.proxy, o.user), cache_dir=o.mount.cache_dir,
               options=["poll=2"], allow=OFFLINE_LINES)
    warnings = [l for l in m2.log().splitlines() if "offline" in l]
    assert len(warnings) == 1, m2.log()
    st = m2.status()
    assert st["state"] == "offline" and st["pending"] == "5", st
    assert read(os.path.join(m2.path, "Later", "kept name.eml"))
    assert "new one.eml" in os.listdir(os.path.join(m2.path, "INBOX"))
    assert os.path.isdir(os.path.join(m2.path, "Made Offline"))
    report("offline: after kill -9, remounted offline from the cache with %s pending" %
           st["pending"])

    o.proxy.up()
    assert wait_for(lambda: m2.status().get("pending") == "0", 30), m2.status()
    check_replayed(o, o.acct, want)
    assert not m2.unmount()  # before the fixture takes the proxy away


@pytest.mark.parametrize("point", ["journal_after_append", "journal_after_step"])
def test_replay_cut_by_a_crash_sends_nothing_twice(outage, mount, tmp_path, point):
    """The daemon dies right after an entry reached the server, before the journal
    forgot it: the next replay must not append the message a second time."""
    o = outage
    o.proxy.down()
    assert wait_for(lambda: o.mount.status().get("state") == "offline", 15)
    src = tmp_path / "new.eml"
    src.write_bytes(NEW_MSG)
    subprocess.run(["cp", str(src), os.path.join(o.inbox, "new one.eml")], check=True)
    o.mount.proc.kill()
    o.mount.proc.wait()
    subprocess.run(["fusermount3", "-uz", o.mnt], capture_output=True)
    o.mount.unmounted = True
    o.proxy.up()
    source = via(o.proxy, o.user)
    m2 = mount(o.user, source=source, cache_dir=o.mount.cache_dir, options=["poll=2"],
               env={"MAILFS_TEST_CRASH_AT": point},
               allow=[r"MAILFS_TEST_CRASH_AT"])
    assert wait_for(lambda: m2.proc.poll() is not None, 20), "no crash"
    subprocess.run(["fusermount3", "-uz", m2.path], capture_output=True)
    m2.unmounted = True
    assert len([1 for b in o.acct.fetch_all("INBOX").values()
                if mid_of(b) == "<offline-new@example.org>"]) == 1
    m3 = mount(o.user, source=source, cache_dir=o.mount.cache_dir, options=["poll=2"])
    assert wait_for(lambda: m3.status().get("pending") == "0", 30), m3.status()
    assert len([1 for b in o.acct.fetch_all("INBOX").values()
                if mid_of(b) == "<offline-new@example.org>"]) == 1
    names = [n for n in os.listdir(os.path.join(m3.path, "INBOX"))]
    assert names.count("new one.eml") == 1, names
    assert not m3.unmount()  # before the fixture takes the proxy away


def go_offline(o):
    o.proxy.down()
    assert wait_for(lambda: o.mount.status().get("state") == "offline", 15)


def come_back(o, mount=None):
    o.proxy.up()
    m = mount or o.mount
    assert wait_for(lambda: m.status().get("pending") == "0", 30), m.status()


def test_offline_rmdir_keeps_mail_the_server_has(outage):
    """rmdir of a folder that is empty here but not on the server (mail delivered while
    we were away): the replay must not DELETE it with that mail."""
    o = outage
    o.mount.allow.append(re.compile(r"journal: Quiet is not known to be empty on the server \(1 messages\)"))
    o.acct.create("Quiet")
    with open(os.path.join(o.mnt, ".mailfs", "sync"), "w") as f:
        f.write("1\n")
    assert wait_for(lambda: os.path.isdir(os.path.join(o.mnt, "Quiet")), 15)
    go_offline(o)
    o.acct.append("Quiet", NEW_MSG.replace(b"\n", b"\r\n"))
    os.rmdir(os.path.join(o.mnt, "Quiet"))
    assert not os.path.exists(os.path.join(o.mnt, "Quiet"))
    come_back(o)
    assert "Quiet" in o.acct.list_folders()
    assert len(o.acct.fetch_all("Quiet")) == 1
    with open(os.path.join(o.mnt, ".mailfs", "sync"), "w") as f:
        f.write("1\n")
    assert wait_for(lambda: os.path.isdir(os.path.join(o.mnt, "Quiet"))
                    and len(os.listdir(os.path.join(o.mnt, "Quiet"))) == 1, 15)


def test_parallel_copies_and_chained_moves_offline(outage, tmp_path):
    """Several cp at once get distinct local UIDs; a message moved twice offline ends
    where the second mv put it; a change made right as the server returns, naming a
    message that only existed locally, reaches the server."""
    o = outage
    go_offline(o)
    srcs = []
    for i in range(6):
        p = tmp_path / ("p%d.eml" % i)
        p.write_bytes(b"From: p@example.org\nSubject: parallel %d\nMessage-ID: <par%d@example.org>"
                      b"\n\nbody %d\n" % (i, i, i))
        srcs.append(p)
    procs = [subprocess.Popen(["cp", str(p), os.path.join(o.inbox, "par %d.eml" % i)])
             for i, p in enumerate(srcs)]
    assert all(p.wait() == 0 for p in procs)
    os.mkdir(os.path.join(o.mnt, "Hop"))
    first = o.names[3]
    mid = mid_of(o.cached[first])
    os.rename(os.path.join(o.inbox, first), os.path.join(o.later, "hop1.eml"))
    os.rename(os.path.join(o.later, "hop1.eml"), os.path.join(o.mnt, "Hop", "hop2.eml"))
    assert read(os.path.join(o.mnt, "Hop", "hop2.eml")) == o.cached[first]
    o.proxy.up()
    # At once, before the replay has surely run: flags on a message that only has a
    # local UID until the replay gives it the server's.
    os.setxattr(os.path.join(o.inbox, "par 0.eml"), "user.mail.flags", b"\\Flagged")
    assert wait_for(lambda: o.mount.status().get("pending") == "0", 30), o.mount.status()
    inbox = server_by_mid(o.acct, "INBOX")
    for i in range(6):
        assert "<par%d@example.org>" % i in inbox
    assert len(inbox) == 6 - 1 + 6  # one moved away, six copied in (no duplicate: see above)
    uid, _ = inbox["<par0@example.org>"]
    assert "\\Flagged" in o.acct.flags("INBOX", uid)
    assert mid in server_by_mid(o.acct, "Hop")
    assert mid not in server_by_mid(o.acct, "Later") and mid not in inbox
    names = os.listdir(o.inbox)
    for i in range(6):
        assert names.count("par %d.eml" % i) == 1, names


def test_delete_trash_offline_mount(make_user, mount, server, tmp_path):
    """delete=trash on a mount that started offline: rm still means a move to Trash."""
    u = make_user("offtr")
    u.append_many("INBOX", [_msg(i, "INBOX") for i in range(3)])
    # The same message already in Trash: the one rm'd lands beside it under a free name.
    u.append_many("Trash", [_msg(i, "INBOX") for i in range(3)])
    proxy = FaultProxy(("127.0.0.1", server.ports["imaps"])).start()
    try:
        source = via(proxy, u)
        m = mount(u, source=source, options=["poll=2", "delete=trash"], allow=OFFLINE_LINES)
        names = sorted(os.listdir(os.path.join(m.path, "INBOX")))
        assert len(names) == 3
        cache = m.cache_dir
        assert not m.unmount()
        proxy.down()
        m2 = mount(u, source=source, cache_dir=cache, options=["poll=2", "delete=trash"],
                   allow=OFFLINE_LINES)
        assert m2.status()["state"] == "offline"
        victim = os.path.join(m2.path, "INBOX", names[0])
        want = os.getxattr(victim, "user.mail.message_id").decode().strip()
        if not want.startswith("<"):
            want = "<%s>" % want
        os.unlink(victim)
        proxy.up()
        assert wait_for(lambda: m2.status().get("pending") == "0", 30), m2.status()
        acct = u.account()
        assert [mid_of(b) for b in acct.fetch_all("Trash").values()].count(want) == 2
        assert want not in server_by_mid(acct, "INBOX")
        assert not m2.unmount()
    finally:
        proxy.stop()


def test_uidvalidity_change_keeps_offline_changes(outage, server, report):
    """SPEC: "A UIDVALIDITY change drops that folder's cached state, never pending local
    changes."  Offline: rm, setfattr and mv of messages of Later, and setfattr of one more;
    meanwhile Later is rebuilt on the server (new UIDVALIDITY, every UID different) with
    the same messages but that last one.  Back online: the three changes reach the same
    messages, found by Message-ID; the change whose message is gone is reported (a warning
    naming it, `dropped: 1` in .mailfs/status), never silently undone."""
    o = outage
    names = sorted(os.listdir(o.later))
    mids = {}
    for n in names:
        v = os.getxattr(os.path.join(o.later, n), "user.mail.message_id").decode().strip()
        mids[n] = v if v.startswith("<") else "<%s>" % v
    bodies = {mid_of(b): b for b in o.acct.fetch_all("Later").values()}
    assert sorted(bodies) == sorted(mids.values())
    gone, flagged, moved, vanished = names[:4]
    o.mount.allow.append(re.compile(r"journal: .*Later.*UIDVALIDITY.*%s" % re.escape(vanished)))
    o.mount.allow.append(re.compile(r"journal: .*Later.*UIDVALIDITY"))
    go_offline(o)
    os.unlink(os.path.join(o.later, gone))
    os.setxattr(os.path.join(o.later, flagged), "user.mail.flags", b"\\Seen \\Flagged")
    os.rename(os.path.join(o.later, moved), os.path.join(o.inbox, "moved here.eml"))
    os.setxattr(os.path.join(o.later, vanished), "user.mail.flags", b"\\Flagged")
    assert o.mount.status()["pending"] == "4", o.mount.status()

    # Rebuilt aside and renamed into place (see test_sync's UIDVALIDITY test): a filler
    # first and the rest in reverse order, so no message keeps its UID.
    # Our own session must not have Later open: STATUS would answer from its stale view.
    o.acct.c.select("INBOX", readonly=True)
    old_uv = o.acct.status("Later")["UIDVALIDITY"]
    o.acct.create("LaterNext")
    o.acct.append("LaterNext", _msg(99, "Filler"))
    for n in reversed(names):
        if n != vanished:
            o.acct.append("LaterNext", bodies[mids[n]])
    # (Created in the same second, it could get the same UIDVALIDITY: set one.)
    server.doveadm("mailbox", "update", "-u", o.user.name, "--uid-validity", old_uv + 1000,
                   "LaterNext")
    server.doveadm("mailbox", "delete", "-u", o.user.name, "Later")
    typ, data = o.acct.c.rename("LaterNext", "Later")
    assert typ == "OK", data
    assert o.acct.status("Later")["UIDVALIDITY"] == old_uv + 1000

    come_back(o)
    later = server_by_mid(o.acct, "Later")
    inbox = server_by_mid(o.acct, "INBOX")
    assert mids[gone] not in later, "the rm was undone"
    assert mids[moved] in inbox and mids[moved] not in later, "the mv was undone"
    assert "\\Flagged" in o.acct.flags("Later", later[mids[flagged]][0]), "the flags were undone"
    for n in names[4:]:
        assert mids[n] in later
        assert "\\Flagged" not in o.acct.flags("Later", later[mids[n]][0]), n
    assert "<Filler.99@example.org>" in later
    st = wait_for(lambda: o.mount.status().get("dropped") == "1" and o.mount.status(), 10)
    assert st, o.mount.status()
    lines = [ln for ln in o.mount.log().splitlines() if "journal:" in ln and "dropped" in ln]
    assert len(lines) == 1 and vanished in lines[0] and "Later" in lines[0], lines
    report("offline: UIDVALIDITY change under 4 offline changes: 3 applied by Message-ID, "
           "1 reported: %s" % lines[0])


def test_remount_online_keeps_folders_made_offline(outage, mount, tmp_path):
    """The first LIST of a mount runs before the journal's replay: a folder made (or a
    message copied into it) offline is not on the server yet, and must not be swept from
    the cache with its local rows.  It shows at once, and keeps the names given."""
    o = outage
    go_offline(o)
    os.mkdir(os.path.join(o.mnt, "Made Offline"))
    src = tmp_path / "new.eml"
    src.write_bytes(NEW_MSG)
    subprocess.run(["cp", str(src), os.path.join(o.mnt, "Made Offline", "new one.eml")],
                   check=True)
    os.rename(os.path.join(o.inbox, o.names[0]), os.path.join(o.mnt, "Made Offline",
                                                              "moved in.eml"))
    o.mount.proc.kill()
    o.mount.proc.wait()
    subprocess.run(["fusermount3", "-uz", o.mnt], capture_output=True)
    o.mount.unmounted = True
    o.proxy.up()
    m2 = mount(o.user, source=via(o.proxy, o.user), cache_dir=o.mount.cache_dir,
               options=["poll=2"], allow=OFFLINE_LINES)
    made = os.path.join(m2.path, "Made Offline")
    # At once: the mount's own LIST did not sweep it.
    assert os.path.isdir(made), os.listdir(m2.path)
    assert sorted(os.listdir(made)) == ["moved in.eml", "new one.eml"]
    assert wait_for(lambda: m2.status().get("pending") == "0", 30), m2.status()
    srv = server_by_mid(o.acct, "Made Offline")
    assert "<offline-new@example.org>" in srv
    assert mid_of(o.cached[o.names[0]]) in srv
    with open(os.path.join(m2.path, ".mailfs", "sync"), "w") as f:
        f.write("1\n")
    time.sleep(3)
    assert sorted(os.listdir(made)) == ["moved in.eml", "new one.eml"]
    for n in ("moved in.eml", "new one.eml"):
        p = os.path.join(made, n)
        uid = int(os.getxattr(p, "user.mail.uid"))
        assert uid < 0xF0000000 and read(p) == o.acct.fetch_bytes("Made Offline", uid)
    assert not m2.unmount()  # before the fixture takes the proxy away
