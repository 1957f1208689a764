"""The server goes away under a mounted account, then comes back.

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
import os
import subprocess
import time

import pytest

from faultproxy import FaultProxy

# Longest a read of an uncached message may block while the server is unreachable.
DOWN_BOUND_S = 20     # refused/reset connections: fails fast
STALL_BOUND_S = 45    # a link that swallows bytes: bounded by mailfs's I/O timeout


def wait_for(pred, timeout, step=0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return pred()


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
    source = "imaps://%s@127.0.0.1:%d" % (u.name, proxy.port)
    m = mount(u, source=source, options=["poll=2"],
              allow=[r"connection lost|cannot connect|timed out|reset|refus|unreachable|"
                     r"closed|offline|No route|Connection|handshake|EOF"])
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
    t0 = time.time()
    with pytest.raises(OSError) as ei:
        read(os.path.join(o.later, o.uncached[0]))
    took = time.time() - t0
    assert ei.value.errno == errno.EIO, ei.value
    assert took < DOWN_BOUND_S, took
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
    t0 = time.time()
    with pytest.raises(OSError) as ei:
        read(os.path.join(o.later, o.uncached[0]))
    took = time.time() - t0
    assert ei.value.errno == errno.EIO, ei.value
    assert took < STALL_BOUND_S, took
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


def test_change_while_down_fails_cleanly(outage):
    """No journal yet: a change the server cannot confirm fails with an errno, and the
    mount still shows the message (nothing is lost, nothing hangs)."""
    o = outage
    o.proxy.down()
    assert wait_for(lambda: o.mount.status().get("state") == "offline", 15)
    victim = os.path.join(o.inbox, o.names[0])
    t0 = time.time()
    with pytest.raises(OSError) as ei:
        os.unlink(victim)
    assert ei.value.errno in (errno.EIO, errno.ENOTCONN, errno.EAGAIN), ei.value
    assert time.time() - t0 < DOWN_BOUND_S
    assert os.path.exists(victim)
    o.proxy.up()
    assert wait_for(lambda: o.mount.status().get("state") == "online", 20)
    assert len(o.acct.fetch_all("INBOX")) == len(o.names)
