"""A mount's life: start, unmount, the next mount of the same account.

SPEC.md: "A mount right after fusermount3 -u of the same account works"; an unmount
finishes within seconds even on a dead link, and every change whose syscall returned 0
reaches the server or the journal.  The daemon's own state while it runs (no core
dumps: it holds the password) is checked here too.
"""
import os
import subprocess
import time

import pytest

from faultproxy import FaultProxy

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


def wait_for(pred, timeout, step=0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return pred()


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


def unmount_now(path):
    r = subprocess.run(["fusermount3", "-u", path], capture_output=True, text=True)
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
