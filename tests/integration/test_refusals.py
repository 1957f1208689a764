"""A server that refuses an APPEND before its data (AUDIT B1).

Without LITERAL+ the client sends `APPEND ... {n}` and waits for the "+" continuation
before the message.  A server may answer with the command's tagged NO instead: Dovecot
does for a full quota ([OVERQUOTA]) and for a folder that does not exist ([TRYCREATE]).
SPEC.md: "While online, an operation returns only after the server has confirmed it,
so a server refusal reaches the caller as an errno"; offline, the journal replays
changes in order, and a refused APPEND is kept in CACHE_DIR/unsent/ (ARCHITECTURE.md)
while the entries after it still go.

The server here is a Dovecot that does not advertise LITERAL+ (imap_capability), with
the quota plugin: every user may hold QUOTA_KB kilobytes.
"""
import errno
import os
import shutil
import tempfile
import time

import pytest

import mailserver
from faultproxy import FaultProxy
from conftest import wait_for

QUOTA_KB = 64
CAPS = ("IMAP4rev1 SASL-IR ID ENABLE IDLE NAMESPACE UNSELECT CHILDREN UIDPLUS MOVE "
        "CONDSTORE SPECIAL-USE LIST-EXTENDED")
QUOTA_CONF = """mail_plugins = $mail_plugins quota
plugin {
  quota = maildir:User quota
  quota_rule = *:storage=%dk
}
""" % QUOTA_KB

# What mailfs rightly says about a refusal, and about the proxy going down.
REFUSAL_LINES = [r"refused by the server", r"journal: the server refused a message",
                 r"cannot store .*: (No space left|Disk quota|No such file|File too large)",
                 r"connection lost|cannot connect|reset|refus|closed|offline|Connection|"
                 r"handshake|EOF|timed out"]


@pytest.fixture(scope="module")
def quota_server():
    d = tempfile.mkdtemp(prefix="mailfs-it-quota-",
                         dir=os.environ.get("MAILFS_TEST_TMPDIR") or "/tmp")
    os.chmod(d, 0o755)
    srv = mailserver.MailServer(d, ports=mailserver.free_port_map(), imap_capability=CAPS,
                                extra_conf=QUOTA_CONF)
    srv.start()
    yield srv
    srv.stop()
    if not os.environ.get("MAILFS_KEEP_TMP"):
        shutil.rmtree(d, ignore_errors=True)


def msg(tag, i, pad=0):
    return ("From: Sender <s@example.org>\r\nTo: x@example.org\r\n"
            "Subject: %s %d\r\nDate: Wed, 25 Nov 2026 10:%02d:00 +0000\r\n"
            "Message-ID: <%s.%d@example.org>\r\n\r\nbody %d\r\n" % (
                tag, i, i, tag, i, i)).encode() + b"x" * pad + (b"\r\n" if pad else b"")


def write_file(path, data):
    """Create, write and close PATH; returns the errno of the first failing call, or 0.
    close() is where the APPEND happens, and where its refusal must show."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as e:
        return e.errno
    try:
        os.write(fd, data)
    except OSError as e:
        os.close(fd)
        return e.errno
    try:
        os.close(fd)
    except OSError as e:
        return e.errno
    return 0


def server_subjects(acct, folder):
    out = []
    for _, b in acct.fetch_all(folder).items():
        for line in b.split(b"\r\n"):
            if line.startswith(b"Subject: "):
                out.append(line[9:].decode())
    return sorted(out)


def later_changes_go(m, acct, tag):
    """After a refusal the mount is not stuck: a small new message and an rm both reach
    the server, and nothing waits in the journal."""
    inbox = os.path.join(m.path, "INBOX")
    assert write_file(os.path.join(inbox, "%s small.eml" % tag), msg(tag, 90)) == 0
    assert "%s 90" % tag in server_subjects(acct, "INBOX")
    victim = [n for n in sorted(os.listdir(inbox)) if "%s small" % tag not in n][0]
    os.unlink(os.path.join(inbox, victim))
    assert len(acct.list_uids("INBOX")) == 2, server_subjects(acct, "INBOX")
    st = m.status()
    assert st.get("pending") == "0" and st.get("state") == "online", st


def test_over_quota_append_fails_close_with_an_errno(make_user, mount, quota_server):
    u = make_user("quota", srv=quota_server)
    u.append_many("INBOX", [msg("q", 1), msg("q", 2)])
    acct = u.account()
    m = mount(u, debug=True, allow=REFUSAL_LINES)
    inbox = os.path.join(m.path, "INBOX")
    assert len(os.listdir(inbox)) == 2
    big = msg("big", 1, pad=(QUOTA_KB + 16) * 1024)
    err = write_file(os.path.join(inbox, "big.eml"), big)
    assert err in (errno.ENOSPC, errno.EDQUOT), "close() of an over-quota copy: %s" % (
        errno.errorcode.get(err, err))
    assert "OVERQUOTA" in m.log(), "the server did not refuse before the data"
    assert "big 1" not in server_subjects(acct, "INBOX")
    assert "big.eml" not in os.listdir(inbox)
    later_changes_go(m, acct, "q")


def test_append_to_folder_deleted_elsewhere_is_enoent(make_user, mount, quota_server):
    u = make_user("trycreate", srv=quota_server)
    u.append_many("INBOX", [msg("t", 1), msg("t", 2)])
    acct = u.account()
    acct.create("Gone")
    m = mount(u, debug=True, allow=REFUSAL_LINES + [r"cannot open folder Gone"])
    gone = os.path.join(m.path, "Gone")
    assert os.listdir(gone) == []
    acct.delete("Gone")            # another client deletes it; the mount has not seen it
    err = write_file(os.path.join(gone, "late.eml"), msg("late", 1))
    assert err == errno.ENOENT, "close() of a copy into a deleted folder: %s" % (
        errno.errorcode.get(err, err))
    assert "TRYCREATE" in m.log(), "the server did not refuse before the data"
    assert "Gone" not in acct.list_folders()
    later_changes_go(m, acct, "t")


def test_offline_append_refused_at_replay_is_kept_and_the_journal_moves_on(
        make_user, mount, quota_server, report):
    u = make_user("offquota", srv=quota_server)
    u.append_many("INBOX", [msg("o", i) for i in range(1, 4)])
    acct = u.account()
    proxy = FaultProxy(("127.0.0.1", quota_server.ports["imaps"])).start()
    try:
        m = mount(u, source="imaps://%s@127.0.0.1:%d" % (u.name, proxy.port),
                  options=["poll=2"], allow=REFUSAL_LINES)
        inbox = os.path.join(m.path, "INBOX")
        names = sorted(os.listdir(inbox))
        assert len(names) == 3
        with open(os.path.join(inbox, names[0]), "rb") as f:
            victim = [ln[9:].decode() for ln in f.read().split(b"\r\n")
                      if ln.startswith(b"Subject: ")][0]
        proxy.down()
        assert wait_for(lambda: m.status().get("state") == "offline", 15), m.status()
        # Offline: a message over the quota, then an rm and a small message behind it.
        big = msg("obig", 1, pad=(QUOTA_KB + 16) * 1024)
        assert write_file(os.path.join(inbox, "big.eml"), big) == 0
        os.unlink(os.path.join(inbox, names[0]))
        assert write_file(os.path.join(inbox, "small.eml"), msg("osmall", 1)) == 0
        assert m.status().get("pending") == "3", m.status()
        proxy.up()
        t0 = time.time()
        done = wait_for(lambda: m.status().get("pending") == "0", 40)
        report("refusals: offline APPEND refused at replay; pending %s after %.1f s" % (
            m.status().get("pending"), time.time() - t0))
        assert done, "the journal is stuck on the refused APPEND: %s" % m.status()
        # Everything after the refused entry reached the server ...
        subj = server_subjects(acct, "INBOX")
        assert "osmall 1" in subj and "obig 1" not in subj, subj
        assert victim not in subj and len(subj) == 3, subj
        # ... and the refused message is kept, byte for byte, in CACHE_DIR/unsent/.
        unsent = os.path.join(m.cache_dir, "unsent")
        kept = [os.path.join(unsent, n) for n in os.listdir(unsent)]
        assert len(kept) == 1 and kept[0].endswith("big.eml"), kept
        with open(kept[0], "rb") as f:
            assert f.read() == big
        assert wait_for(lambda: "big.eml" not in os.listdir(inbox), 15), os.listdir(inbox)
        assert m.status().get("state") == "online"
    finally:
        proxy.stop()
