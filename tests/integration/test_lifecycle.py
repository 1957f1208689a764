"""A mount's life: start, unmount, the next mount of the same account.

SPEC.md: "A mount right after fusermount3 -u of the same account works"; an unmount
finishes within seconds even on a dead link, and every change whose syscall returned 0
reaches the server or the journal.  The daemon's own state while it runs (no core
dumps: it holds the password) is checked here too.
"""
import os
import re
import subprocess
import threading
import time

import pytest

from faultproxy import FaultProxy
from conftest import wait_for

# What mailfs says, rightly, while the proxy stalls its connections.
OFFLINE_LINES = [r"connection lost|cannot connect|timed out|reset|refus|unreachable|"
                 r"closed|offline|No route|Connection|handshake|EOF|journal|not yet stored"]


def _msg(i, tag="life"):
    return ("From: Life <life@example.org>\r\nTo: x@example.org\r\n"
            "Subject: %s message %d\r\nDate: Wed, 25 Nov 2026 10:%02d:00 +0000\r\n"
            "Message-ID: <%s.%d@example.org>\r\n\r\nbody %d\r\n" % (
                tag, i, i % 60, tag, i, i)).encode()


def via(proxy, user):
    return "imaps://%s@127.0.0.1:%d" % (user.name, proxy.port)


def finished(m, timeout=30):
    """The daemon of Mount M, already unmounted by the test, exits cleanly: problems."""
    m.unmounted = True
    probs = []
    try:
        m.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        m.proc.kill()
        m.proc.wait()
        probs.append("daemon still running %d s after unmount" % timeout)
    if m.proc.returncode not in (0, None):
        probs.append("daemon exited with %d" % m.proc.returncode)
    bad = m.suspicious_lines()
    if bad:
        probs.append("suspicious output: %s" % bad[:10])
    return probs


def unmount_now(path, busy_retries=0):
    """fusermount3 -u.  With busy_retries, an EBUSY is tried again (after a pause): the
    kernel can refuse an unmount for a moment while it is still busy with a burst of
    invalidations; what counts then is that the daemon exits clean."""
    for i in range(busy_retries + 1):
        r = subprocess.run(["fusermount3", "-u", path], capture_output=True, text=True)
        if r.returncode == 0 or "busy" not in r.stderr or i == busy_retries:
            break
        time.sleep(0.5)
    assert r.returncode == 0, r.stderr


# ---- 1. remount right after unmount ----

def test_remount_right_after_unmount(user, mount, report):
    user.append_many("INBOX", [_msg(i) for i in range(5)])
    m = mount(user)
    mnt, cache = m.path, m.cache_dir
    assert len(os.listdir(os.path.join(mnt, "INBOX"))) == 5
    for i in range(6):
        unmount_now(mnt)
        t0 = time.time()
        m2 = mount(user, mnt=mnt, cache_dir=cache)
        took = time.time() - t0
        assert len(os.listdir(os.path.join(mnt, "INBOX"))) == 5
        assert finished(m) == []
        m = m2
        report("lifecycle: remount %d right after unmount took %.2f s" % (i + 1, took))


def test_second_mount_while_mounted_fails_at_once(user, mount, try_mount):
    m = mount(user)
    r = try_mount(user, cache_dir=m.cache_dir)
    assert r.rc != 0 and r.leftover == [], r
    assert len(r.lines) == 1 and "in use by another mailfs" in r.lines[0], r
    assert r.seconds < 5, r
    # ...also through another mount point of the same account.
    assert os.listdir(os.path.join(m.path, "INBOX")) == []


# ---- 2. A4 and B3: an unmount on a dead link loses nothing and does not wait ----

def mid_of(raw):
    m = re.search(rb"(?im)^Message-ID:\s*(<[^>]+>)", raw)
    return m.group(1).decode() if m else None


def server_mids(acct, folder):
    return sorted(mid_of(b) for b in acct.fetch_all(folder).values())


def unmount_timed(m, timeout=120):
    """fusermount3 -u, then the seconds until the daemon has exited."""
    t0 = time.time()
    unmount_now(m.path)
    probs = finished(m, timeout)
    return time.time() - t0, probs


@pytest.fixture
def stalled(make_user, mount, server):
    """A mount through a proxy (one connection) whose link then goes dead."""
    u = make_user("stall")
    u.append_many("INBOX", [_msg(i, "old") for i in range(3)])
    proxy = FaultProxy(("127.0.0.1", server.ports["imaps"])).start()
    m = mount(u, source=via(proxy, u), options=["poll=2", "connections=1"],
              allow=OFFLINE_LINES)
    inbox = os.path.join(m.path, "INBOX")
    assert len(os.listdir(inbox)) == 3
    yield u, proxy, m
    proxy.stop()


def test_unmount_on_dead_link_journals_deferred_appends(stalled, mount, report):
    u, proxy, m = stalled
    inbox = os.path.join(m.path, "INBOX")
    proxy.stall()
    new = [_msg(i, "deferred") for i in range(3)]
    for i, raw in enumerate(new):
        # A dot name: close() returns 0 at once, the APPEND is deferred.
        with open(os.path.join(inbox, ".new%d.eml" % i), "wb") as f:
            f.write(raw)
    took, probs = unmount_timed(m)
    report("lifecycle: unmount on a dead link with 3 deferred APPENDs took %.1f s" % took)
    assert probs == []

    proxy.up()
    m2 = mount(u, source=via(proxy, u), cache_dir=m.cache_dir, options=["poll=2"],
               allow=OFFLINE_LINES)
    want = sorted([mid_of(x) for x in new] + ["<old.%d@example.org>" % i for i in range(3)])
    ok = wait_for(lambda: server_mids(u.account(), "INBOX") == want, 30, 0.5)
    assert ok, (server_mids(u.account(), "INBOX"), m2.status())
    assert wait_for(lambda: m2.status().get("pending") == "0", 15), m2.status()
    # Nothing whose close() returned 0 waits longer than the drain plus a moment.
    assert took < 15, took


def test_unmount_during_a_sync_on_dead_link_is_quick(stalled, report):
    u, proxy, m = stalled
    proxy.stall()
    # poll=2: a sync starts on the dead link and waits for the server.
    time.sleep(4)
    took, probs = unmount_timed(m)
    report("lifecycle: unmount during a sync on a dead link took %.1f s" % took)
    assert probs == []
    assert took < 10, took


# ---- C3: the notifier and the FUSE session at unmount ----

def test_unmount_while_the_server_floods_changes(user, mount, server, report):
    """Run under ASan (MAILFS_BIN=build-asan/mailfs): the notifier is busy with
    invalidations from syncs while the session goes away; the daemon must exit clean."""
    user.append_many("INBOX", [_msg(i, "flood") for i in range(150)])
    m = mount(user, options=["poll=1"])
    mnt, cache = m.path, m.cache_dir
    inbox = os.path.join(mnt, "INBOX")
    assert len(os.listdir(inbox)) == 150
    seq = [1000]

    def flood(stop):
        i = 0
        while not stop.is_set():
            server.doveadm("flags", "add" if i % 2 == 0 else "remove", "-u", user.name,
                           "\\Flagged", "mailbox", "INBOX", "all", check=False)
            if i % 3 == 0:
                user.append_many("INBOX", [_msg(seq[0] + k, "more") for k in range(10)])
                seq[0] += 10
            i += 1

    for rnd in range(5):
        # Look at the messages: the kernel then has entries to invalidate.
        for n in os.listdir(inbox)[:60]:
            os.stat(os.path.join(inbox, n))
        stop = threading.Event()
        t = threading.Thread(target=flood, args=(stop,))
        t.start()
        time.sleep(1.5)
        # A large batch: its sync ends in a burst of invalidations at the
        # moment of the unmount.
        user.append_many("INBOX", [_msg(seq[0] + k, "burst") for k in range(600)])
        seq[0] += 600
        time.sleep(0.2 + rnd * 0.3)
        try:
            unmount_now(mnt, busy_retries=10)
            probs = finished(m)
        finally:
            stop.set()
            t.join()
        assert probs == [], (rnd, probs)
        m = mount(user, mnt=mnt, cache_dir=cache, options=["poll=1"])
    report("lifecycle: 5 unmounts during a flood of server changes, all clean")


# ---- 3. D1: the daemon holds the password: no core dumps ----

def test_daemon_cannot_dump_core(make_user, mount):
    from conftest import ordinary_user
    u = make_user("core")
    # Root (for /dev/fuse) with another group: the group of its /proc files
    # then tells whether the kernel considers it dumpable.
    gid = ordinary_user()[1]
    m = mount(u, as_user=(0, gid))
    pid = m.proc.pid
    with open("/proc/%d/limits" % pid) as f:
        [line] = [ln for ln in f if ln.startswith("Max core file size")]
    assert line.split()[4:6] == ["0", "0"], line
    with open("/proc/%d/status" % pid) as f:
        egid = [ln.split()[2] for ln in f if ln.startswith("Gid:")][0]
    assert int(egid) == gid
    # Not dumpable: the kernel gives its /proc files to root's group.
    assert os.stat("/proc/%d/status" % pid).st_gid == 0
