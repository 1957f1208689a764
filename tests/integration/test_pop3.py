"""POP3: the maildrop mounted as a read-once spool.

Each test gets its own user on the shared Dovecot, loads a few messages over IMAP (Dovecot
serves the same maildrop over POP3), and mounts it with pop3s:// (or pop3:// with STLS).
Every check is against what the server itself says through a second client (poplib UIDL,
LIST, TOP, RETR; imaplib for the bytes), never against mailfs.  Messages carry a unique
Subject token, so a file in spool/ or archive/ is matched to its server copy by name.

Also here: a scripted fake POP3 server (a thread in this process) for what Dovecot will not
do: a server without UIDL, and data injected after the +OK to STLS.

Contract: /work/shared/SPEC.md ("The tree (POP3)", the `keep` option, "Bad input and
failure": nothing is lost).
"""
import os
import shutil
import poplib
import re
import socket
import ssl
import subprocess
import threading
import time

import pytest

from conftest import run


# --------------------------------------------------------------------------
# helpers

def make_msg(token, i, body_lines=3, extra=b""):
    """A message with CRLF line ends and a unique Subject, with dot-stuffing bait."""
    lines = [b"From: Sender %d <sender%d@example.com>" % (i, i),
             b"To: rcpt@example.com",
             b"Subject: %s-%03d" % (token.encode(), i),
             b"Date: Mon, 02 Jun 2025 10:%02d:00 +0000" % (i % 60),
             b"Message-ID: <%s.%d@example.com>" % (token.encode(), i),
             b""]
    for k in range(body_lines):
        lines.append(b"line %d of message %d" % (k, i))
    lines += [b".", b"..two dots", b".leading dot", b"end"]
    return b"\r\n".join(lines) + b"\r\n" + extra


def subject_of(raw):
    m = re.search(rb"^Subject: (.*?)\r?$", raw, re.M)
    return m.group(1).decode() if m else None


class Pop:
    """A poplib view of one user's maildrop, one short session per call."""

    def __init__(self, user):
        self.user = user
        self.srv = user.server

    def _session(self):
        ctx = ssl.create_default_context(cafile=self.srv.cert)
        c = poplib.POP3_SSL("127.0.0.1", self.srv.ports["pop3s"], context=ctx, timeout=60)
        c.user(self.user.name)
        c.pass_(self.user.password)
        return c

    def uidls(self):
        """{uidl: (n, size)}"""
        c = self._session()
        try:
            sizes = {int(n): int(s) for n, s in (x.split() for x in c.list()[1])}
            out = {}
            for line in c.uidl()[1]:
                n, u = line.split()
                out[u.decode()] = (int(n), sizes[int(n)])
            return out
        finally:
            c.quit()

    def subjects(self):
        """{subject: uidl} from TOP n 0."""
        c = self._session()
        try:
            out = {}
            for line in c.uidl()[1]:
                n, u = line.split()
                head = b"\r\n".join(c.top(int(n), 0)[1])
                out[subject_of(head)] = u.decode()
            return out
        finally:
            c.quit()


def wait_for(cond, timeout=15.0, step=0.1):
    deadline = time.time() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.time() > deadline:
            return v
        time.sleep(step)


def by_subject(folder):
    """{subject: file name} of the .eml files in folder (subject read from the name)."""
    out = {}
    for name in os.listdir(folder):
        m = re.search(r"- (\S+-\d{3})", name)
        if m:
            out[m.group(1)] = name
    return out


def read(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture
def loaded(user):
    """The user with 5 messages in INBOX; returns (user, token, {subject: raw})."""
    token = "t%x" % (int(time.time() * 1000) % 0xffffff)
    msgs = [make_msg(token, i) for i in range(5)]
    user.append_many("INBOX", msgs)
    return user, token, {subject_of(m): m for m in msgs}


def spool(m):
    return os.path.join(m.path, "spool")


def archive(m):
    return os.path.join(m.path, "archive")


# --------------------------------------------------------------------------
# listing and reading

def test_tree_and_listing_match_server(loaded, mount):
    user, token, msgs = loaded
    m = mount(user, scheme="pop3s")
    assert sorted(os.listdir(m.path)) == [".mailfs", "archive", "spool"]
    assert os.listdir(archive(m)) == []
    names = by_subject(spool(m))
    server = Pop(user).subjects()
    sizes = Pop(user).uidls()
    assert sorted(names) == sorted(server) == sorted(msgs)
    for subj, name in names.items():
        st = os.stat(os.path.join(spool(m), name))
        assert st.st_size == sizes[server[subj]][1] == len(msgs[subj])
        assert oct(st.st_mode & 0o777) == oct(0o600)
        assert name.startswith("2025-06-02 10.") and name.endswith(".eml")
    status = m.status()
    assert status["state"] == "online"
    assert status["server"].startswith("pop3s://%s@" % user.name)


def test_cat_archives_then_deletes_on_server(loaded, mount):
    user, token, msgs = loaded
    pop = Pop(user)
    uidl_of = pop.subjects()
    m = mount(user, scheme="pop3s")
    names = by_subject(spool(m))
    subj = sorted(names)[1]
    data = read(os.path.join(spool(m), names[subj]))
    assert data == msgs[subj]
    # It leaves spool/ and appears in archive/ with the same name and bytes.
    assert wait_for(lambda: names[subj] in os.listdir(archive(m)))
    assert names[subj] not in os.listdir(spool(m))
    assert read(os.path.join(archive(m), names[subj])) == msgs[subj]
    # And the server's copy is gone (DELE + QUIT), the others untouched.
    gone = wait_for(lambda: uidl_of[subj] not in pop.uidls())
    assert gone, "message still on the server after being consumed"
    left = pop.uidls()
    assert sorted(left) == sorted(u for s, u in uidl_of.items() if s != subj)
    # Reading the archived copy consumes nothing more.
    assert read(os.path.join(archive(m), names[subj])) == msgs[subj]
    time.sleep(1.5)
    assert sorted(pop.uidls()) == sorted(left)
    assert len(os.listdir(spool(m))) == 4


def test_unmount_right_after_reading_still_consumes(loaded, mount):
    user, token, msgs = loaded
    pop = Pop(user)
    uidl_of = pop.subjects()
    m = mount(user, scheme="pop3s")
    names = by_subject(spool(m))
    subj = sorted(names)[0]
    assert read(os.path.join(spool(m), names[subj])) == msgs[subj]
    problems = m.unmount()
    assert not problems, problems
    assert uidl_of[subj] not in pop.uidls()
    m2 = mount(user, scheme="pop3s", cache_dir=m.cache_dir)
    assert os.listdir(archive(m2)) == [names[subj]]
    assert read(os.path.join(archive(m2), names[subj])) == msgs[subj]
    assert sorted(by_subject(spool(m2))) == sorted(s for s in msgs if s != subj)


def test_partial_read_consumes_nothing(loaded, mount):
    user, token, msgs = loaded
    pop = Pop(user)
    before = pop.uidls()
    m = mount(user, scheme="pop3s")
    names = by_subject(spool(m))
    subj = sorted(names)[0]
    r = run(["head", "-c", "100", os.path.join(spool(m), names[subj])])
    assert r.returncode == 0 and r.stdout == msgs[subj][:100]
    time.sleep(3)
    assert names[subj] in os.listdir(spool(m))
    assert os.listdir(archive(m)) == []
    assert pop.uidls() == before


def test_keep_offers_each_message_once_across_remount(loaded, mount):
    user, token, msgs = loaded
    pop = Pop(user)
    before = pop.uidls()
    m = mount(user, scheme="pop3s", options=["keep"])
    names = by_subject(spool(m))
    subj = sorted(names)[2]
    assert read(os.path.join(spool(m), names[subj])) == msgs[subj]
    assert wait_for(lambda: names[subj] in os.listdir(archive(m)))
    assert names[subj] not in os.listdir(spool(m))
    time.sleep(2)
    assert pop.uidls() == before, "keep: the server copy must stay"
    problems = m.unmount()
    assert not problems, problems
    m2 = mount(user, scheme="pop3s", options=["keep"], cache_dir=m.cache_dir)
    names2 = by_subject(spool(m2))
    assert sorted(names2) == sorted(s for s in msgs if s != subj)
    assert os.listdir(archive(m2)) == [names[subj]]
    assert read(os.path.join(archive(m2), names[subj])) == msgs[subj]
    assert pop.uidls() == before


def test_rm_in_spool_deletes_on_server_without_archiving(loaded, mount):
    user, token, msgs = loaded
    pop = Pop(user)
    uidl_of = pop.subjects()
    m = mount(user, scheme="pop3s")
    names = by_subject(spool(m))
    subj = sorted(names)[3]
    os.unlink(os.path.join(spool(m), names[subj]))
    # rm returns once QUIT has committed the DELE.
    assert uidl_of[subj] not in pop.uidls()
    assert names[subj] not in os.listdir(spool(m))
    assert os.listdir(archive(m)) == []
    assert len(pop.uidls()) == 4


def test_rm_in_archive_deletes_the_local_copy(loaded, mount):
    user, token, msgs = loaded
    m = mount(user, scheme="pop3s")
    names = by_subject(spool(m))
    subj = sorted(names)[4]
    read(os.path.join(spool(m), names[subj]))
    assert wait_for(lambda: names[subj] in os.listdir(archive(m)))
    os.unlink(os.path.join(archive(m), names[subj]))
    assert os.listdir(archive(m)) == []
    # Not offered again either.
    time.sleep(1.5)
    with open(os.path.join(m.path, ".mailfs", "sync"), "w") as f:
        f.write("1\n")
    time.sleep(2)
    assert subj not in by_subject(spool(m))


def test_new_mail_appears_within_poll(loaded, mount):
    user, token, msgs = loaded
    m = mount(user, scheme="pop3s", options=["poll=2"])
    assert len(os.listdir(spool(m))) == 5
    new = make_msg(token, 77)
    t0 = time.time()
    user.append_many("INBOX", [new])
    name = wait_for(lambda: by_subject(spool(m)).get(subject_of(new)), timeout=10)
    took = time.time() - t0
    assert name, "new mail did not show up in spool/"
    assert took < 2 + 3, "took %.1f s with poll=2" % took
    assert read(os.path.join(spool(m), name)) == new


def test_large_message_is_byte_identical(user, mount, report):
    token = "big%x" % (int(time.time()) % 0xffff)
    # 1.5 MB: long lines, lines of dots, a line that is only ".", 8-bit bytes.
    chunk = b"".join(b".%05d " % k + bytes(range(0x40, 0x7e)) * 20 + b"\r\n" for k in range(1000))
    extra = chunk + b"x" * 100000 + b"\r\n.\r\n..\r\n" + chunk
    big = make_msg(token, 1, body_lines=2000, extra=extra)
    assert len(big) > 1_000_000
    user.append_many("INBOX", [big])
    imap_bytes = list(user.account().fetch_all("INBOX").values())[0]
    assert imap_bytes == big
    m = mount(user, scheme="pop3s")
    name = by_subject(spool(m))[subject_of(big)]
    assert os.stat(os.path.join(spool(m), name)).st_size == len(big)
    t0 = time.time()
    data = read(os.path.join(spool(m), name))
    report("pop3: RETR of a %.1f MB message through the mount: %.2f s" % (
        len(big) / 1e6, time.time() - t0))
    assert data == big
    assert wait_for(lambda: name in os.listdir(archive(m)))
    assert read(os.path.join(archive(m), name)) == big
    assert wait_for(lambda: Pop(user).uidls() == {})


# --------------------------------------------------------------------------
# STLS

def test_pop3_with_stls(loaded, mount):
    user, token, msgs = loaded
    m = mount(user, scheme="pop3")
    assert sorted(by_subject(spool(m))) == sorted(msgs)
    assert m.status()["server"].startswith("pop3://")


def test_server_without_stls_is_refused(plain_server, make_user, try_mount):
    u = make_user("nostls", srv=plain_server)
    a = try_mount(u, scheme="pop3", srv=plain_server)
    assert a.rc not in (0, None), a
    assert not a.leftover, a.leftover
    assert len(a.lines) == 1, a.lines
    assert "does not offer STLS" in a.stderr and "pop3s://" in a.stderr, a.stderr
    assert a.seconds < 20


class FakePop3:
    """A scripted POP3 server on 127.0.0.1: `script` maps a whole command line ("RETR 2")
    or else its verb ("RETR") to the raw bytes answered; the greeting is sent first.  One
    connection at a time.  `commands` has the verbs received, `lines` the whole lines."""

    def __init__(self, script, greeting=b"+OK fake ready\r\n"):
        self.script = script
        self.greeting = greeting
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.commands = []
        self.lines = []
        self.stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        self.sock.settimeout(0.2)
        while not self.stop:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            c.settimeout(10)
            try:
                c.sendall(self.greeting)
                buf = b""
                while True:
                    data = c.recv(4096)
                    if not data:
                        break
                    buf += data
                    while b"\r\n" in buf:
                        line, buf = buf.split(b"\r\n", 1)
                        verb = line.split(b" ")[0].upper().decode(errors="replace")
                        text = line.decode(errors="replace")
                        self.commands.append(verb)
                        self.lines.append(text)
                        answer = self.script.get(text, self.script.get(verb, b"-ERR unknown\r\n"))
                        c.sendall(answer)
                        if verb == "QUIT":
                            raise ConnectionAbortedError
            except (OSError, ConnectionAbortedError):
                pass
            finally:
                c.close()

    def close(self):
        self.stop = True
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def fake_pop3():
    made = []

    def make(script, **kw):
        f = FakePop3(script, **kw)
        made.append(f)
        return f
    yield make
    for f in made:
        f.close()


def _pwfile(tmp_path):
    p = tmp_path / "pw"
    p.write_text("secret\n")
    os.chmod(p, 0o600)
    return str(p)


def test_server_without_uidl_is_refused(fake_pop3, try_mount, tmp_path):
    f = fake_pop3({
        "CAPA": b"+OK\r\nUSER\r\nTOP\r\n.\r\n",
        "USER": b"+OK\r\n",
        "PASS": b"+OK logged in\r\n",
        "UIDL": b"-ERR what is that\r\n",
        "QUIT": b"+OK bye\r\n",
    })
    a = try_mount(None, source="pop3://alice@127.0.0.1:%d" % f.port,
                  password_file=_pwfile(tmp_path), cafile=False, options=["insecure"])
    assert a.rc not in (0, None), a
    assert not a.leftover, a.leftover
    err = [ln for ln in a.lines if "UIDL" in ln]
    assert err and "does not support UIDL; mailfs needs it to read each message once" in err[0], \
        a.stderr
    assert "PASS" in f.commands and "STLS" not in f.commands


def test_data_injected_after_stls_is_refused(fake_pop3, try_mount, tmp_path):
    f = fake_pop3({
        "CAPA": b"+OK\r\nSTLS\r\nUSER\r\nUIDL\r\n.\r\n",
        # The +OK and an injected answer in one segment, as a MITM would.
        "STLS": b"+OK Begin TLS negotiation\r\n+OK injected\r\n",
    })
    a = try_mount(None, source="pop3://alice@127.0.0.1:%d" % f.port,
                  password_file=_pwfile(tmp_path), cafile=False)
    assert a.rc not in (0, None), a
    assert "data injected after STLS" in a.stderr, a.stderr
    assert len(a.lines) == 1, a.lines
    assert "USER" not in f.commands and "PASS" not in f.commands


# --------------------------------------------------------------------------
# crashes: nothing lost, nothing twice

def crash_reading_first(user, mount, point):
    """Mount with MAILFS_TEST_CRASH_AT=point, read the first spool message (by subject)
    so that the daemon kills itself there, and clear the dead mount.  Returns the dead
    Mount (its cache_dir and log stay usable), the spool names by subject, and the subject
    read."""
    m = mount(user, scheme="pop3s", env={"MAILFS_TEST_CRASH_AT": point})
    names = by_subject(spool(m))
    subj = sorted(names)[0]
    try:
        read(os.path.join(spool(m), names[subj]))
    except OSError:
        pass
    assert wait_for(lambda: m.proc.poll() is not None, timeout=20), "no crash at %s" % point
    subprocess.run(["fusermount3", "-uz", m.path], capture_output=True)
    m.unmounted = True  # handled here: the fixture would call the crash a failure
    return m, names, subj



@pytest.mark.parametrize("point", ["after_retr", "after_fsync", "after_dele"])
def test_kill_during_consume_loses_and_duplicates_nothing(point, loaded, mount):
    user, token, msgs = loaded
    pop = Pop(user)
    m = mount(user, scheme="pop3s", env={"MAILFS_TEST_CRASH_AT": point})
    names = by_subject(spool(m))
    subj = sorted(names)[0]
    try:
        data = read(os.path.join(spool(m), names[subj]))
        assert data == msgs[subj]
    except OSError:
        pass
    # The daemon kills itself at the point; then the mount is dead.
    assert wait_for(lambda: m.proc.poll() is not None, timeout=20), "no crash at %s" % point
    assert m.proc.returncode == -9, m.log()
    subprocess.run(["fusermount3", "-uz", m.path], capture_output=True)
    m.unmounted = True  # handled here: the fixture would call the crash a failure

    m2 = mount(user, scheme="pop3s", cache_dir=m.cache_dir)
    on_server = pop.subjects()
    in_archive = by_subject(archive(m2))
    in_spool = by_subject(spool(m2))
    for s in msgs:
        count = (s in on_server) + (s in in_archive)
        assert count == 1, "%s: on server %s, in archive %s (crash %s)" % (
            s, s in on_server, s in in_archive, point)
    assert sorted(in_spool) == sorted(on_server)
    if point == "after_retr":
        assert subj in on_server and not in_archive
    else:
        assert subj in in_archive and read(os.path.join(archive(m2), in_archive[subj])) == msgs[subj]
    # Reading every spool message now ends with all of them archived exactly once.
    for name in os.listdir(spool(m2)):
        read(os.path.join(spool(m2), name))
    assert wait_for(lambda: pop.uidls() == {}, timeout=20)
    assert sorted(by_subject(archive(m2))) == sorted(msgs)
    assert len(os.listdir(archive(m2))) == len(msgs)
    for s, name in by_subject(archive(m2)).items():
        assert read(os.path.join(archive(m2), name)) == msgs[s]


# --------------------------------------------------------------------------
# -d traces never show a password

def test_trace_redacts_sasl_credentials(loaded, mount):
    user, token, msgs = loaded
    m = mount(user, scheme="pop3", debug=True)
    assert len(os.listdir(spool(m))) == 5
    log = m.log()
    assert "AUTH PLAIN <credentials redacted>" in log, log[-2000:]
    assert user.password not in log
    import base64
    cred = base64.b64encode(b"\0" + user.name.encode() + b"\0" + user.password.encode()).decode()
    assert cred not in log


def test_trace_redacts_pass(fake_pop3, mount, tmp_path):
    f = fake_pop3({
        "CAPA": b"+OK\r\nUSER\r\nUIDL\r\nTOP\r\n.\r\n",
        "USER": b"+OK\r\n",
        "PASS": b"+OK logged in\r\n",
        "STAT": b"+OK 0 0\r\n",
        "UIDL": b"+OK\r\n.\r\n",
        "LIST": b"+OK\r\n.\r\n",
        "QUIT": b"+OK bye\r\n",
    })
    m = mount(None, source="pop3://alice@127.0.0.1:%d" % f.port, password_file=_pwfile(tmp_path),
              cafile=False, options=["insecure"], debug=True,
              allow=[r"warning: insecure: "])
    assert os.listdir(spool(m)) == []
    log = m.log()
    assert "PASS <password redacted>" in log, log[-2000:]
    assert "secret" not in log


# --------------------------------------------------------------------------
# hostile input

def test_duplicate_uidls_are_left_alone(fake_pop3, mount, tmp_path):
    f = fake_pop3({
        "CAPA": b"+OK\r\nUSER\r\nUIDL\r\nTOP\r\nPIPELINING\r\n.\r\n",
        "USER": b"+OK\r\n",
        "PASS": b"+OK logged in\r\n",
        "STAT": b"+OK 3 300\r\n",
        "UIDL": b"+OK\r\n1 same\r\n2 same\r\n3 other\r\n.\r\n",
        "LIST": b"+OK\r\n1 100\r\n2 100\r\n3 100\r\n.\r\n",
        "TOP": b"+OK\r\nFrom: x@example.com\r\nSubject: only-003\r\n\r\n.\r\n",
        "QUIT": b"+OK bye\r\n",
    })
    m = mount(None, source="pop3://alice@127.0.0.1:%d" % f.port, password_file=_pwfile(tmp_path),
              cafile=False, options=["insecure"],
              allow=[r"warning: insecure: ", r"gives UIDL same to 2 messages"])
    names = os.listdir(spool(m))
    assert len(names) == 1 and "only-003" in names[0], names
    assert "DELE" not in f.commands


def test_hostile_headers_make_safe_names(user, mount):
    raw = (b"From: \"../../etc\" <evil@example.com>\r\n"
           b"Subject: a/b/../c \x01\x02\x1b[31m =?utf-8?b?Ly4uLy4u?= \xff\xfe end\r\n"
           b"Date: not a date\r\n\r\nbody\r\n")
    user.append_many("INBOX", [raw])
    m = mount(user, scheme="pop3s")
    names = os.listdir(spool(m))
    assert len(names) == 1, names
    name = names[0]
    assert "/" not in name and not name.startswith(".") and name.endswith(".eml")
    assert all(ord(ch) >= 0x20 for ch in name), repr(name)
    assert read(os.path.join(spool(m), name)) == raw


# --------------------------------------------------------------------------
# -o ro: a read-only mount never changes the server (no DELE, ever)

def test_ro_mount_never_deletes(loaded, mount):
    user, token, msgs = loaded
    pop = Pop(user)
    before = pop.uidls()
    m = mount(user, scheme="pop3s", options=["ro"], debug=True)
    names = by_subject(spool(m))
    subj = sorted(names)[0]
    assert read(os.path.join(spool(m), names[subj])) == msgs[subj]
    time.sleep(2.5)  # past the session's linger: a consume would have committed by now
    # Reading just reads: the file stays in spool/, nothing is archived.
    assert names[subj] in os.listdir(spool(m))
    assert os.listdir(archive(m)) == []
    assert read(os.path.join(spool(m), names[subj])) == msgs[subj]
    # rm is refused like every other change.
    with pytest.raises(OSError) as e:
        os.unlink(os.path.join(spool(m), names[subj]))
    assert e.value.errno == 30  # EROFS
    problems = m.unmount()
    assert not problems, problems
    assert pop.uidls() == before, "-o ro deleted mail on the server"
    assert not re.search(r"DELE \d", m.log()), "a DELE was sent by a read-only mount"


def test_ro_mount_does_not_finish_an_earlier_consume(loaded, mount):
    """A consume that a crash cut after the archive (DELE not sent) is finished by the next
    ordinary sync; a read-only mount must leave it on the server."""
    user, token, msgs = loaded
    pop = Pop(user)
    before = pop.uidls()
    m, names, subj = crash_reading_first(user, mount, "after_fsync")
    assert pop.uidls() == before
    m2 = mount(user, scheme="pop3s", cache_dir=m.cache_dir, options=["ro"], debug=True)
    assert os.listdir(archive(m2)) == [names[subj]]
    time.sleep(1.5)
    problems = m2.unmount()
    assert not problems, problems
    assert pop.uidls() == before, "-o ro deleted an archived message on the server"
    assert not re.search(r"DELE \d", m2.log())


def test_body_that_disagrees_with_list_is_never_deleted(fake_pop3, mount, tmp_path):
    """AUDIT A3: a RETR body whose size is not LIST's, and whose headers are not TOP's (a cut
    or shifted answer) can be read, but is never consumed: not archived, no DELE.  The
    message that agrees is consumed."""
    bad = b"From: a@example.com\r\nSubject: bad-001\r\n\r\nshorter than LIST says\r\n"
    good = b"From: b@example.com\r\nSubject: good-002\r\n\r\nexactly as LIST says\r\n"
    head = lambda raw: raw.split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    # The server's own message 1 has a Message-ID the answer lacks.
    top1 = head(bad)[:-2] + b"Message-ID: <one@example.com>\r\n\r\n"
    f = fake_pop3({
        "CAPA": b"+OK\r\nUSER\r\nUIDL\r\nTOP\r\nPIPELINING\r\n.\r\n",
        "USER": b"+OK\r\n",
        "PASS": b"+OK logged in\r\n",
        "STAT": b"+OK 2 %d\r\n" % (len(bad) + 20 + len(good)),
        "UIDL": b"+OK\r\n1 uid-bad\r\n2 uid-good\r\n.\r\n",
        "LIST": b"+OK\r\n1 %d\r\n2 %d\r\n.\r\n" % (len(bad) + 20, len(good)),
        "TOP 1 0": b"+OK\r\n" + top1 + b".\r\n",
        "TOP 2 0": b"+OK\r\n" + head(good) + b".\r\n",
        "RETR 1": b"+OK\r\n" + bad + b".\r\n",
        "RETR 2": b"+OK\r\n" + good + b".\r\n",
        "DELE": b"+OK marked\r\n",
        "QUIT": b"+OK bye\r\n",
    })
    m = mount(None, source="pop3://alice@127.0.0.1:%d" % f.port, password_file=_pwfile(tmp_path),
              cafile=False, options=["insecure"],
              allow=[r"warning: insecure: ", r"LIST said \d+ bytes",
                     r"may name another message now"])
    names = {n.split(" - ")[-1]: n for n in os.listdir(spool(m))}
    assert sorted(names) == ["bad-001.eml", "good-002.eml"], names
    assert read(os.path.join(spool(m), names["bad-001.eml"])) == bad
    assert read(os.path.join(spool(m), names["good-002.eml"])) == good
    assert wait_for(lambda: names["good-002.eml"] in os.listdir(archive(m)))
    assert wait_for(lambda: "DELE 2" in f.lines)
    time.sleep(2)
    assert names["bad-001.eml"] in os.listdir(spool(m))
    assert os.listdir(archive(m)) == [names["good-002.eml"]]
    # Read again: still there, still not consumed.
    assert read(os.path.join(spool(m), names["bad-001.eml"])) == bad
    problems = m.unmount()
    assert not problems, problems
    assert "DELE 1" not in f.lines, f.lines
    assert "RETR 1" in f.lines and "QUIT" in f.commands


def test_estimated_list_sizes_still_consume(fake_pop3, mount, tmp_path):
    """Exchange / Microsoft 365 give LIST sizes that are estimates: a body that RETR gives
    twice the same, with TOP's headers, is whole; it is consumed (archived, DELE), with one
    warning."""
    one = b"From: a@example.com\r\nSubject: est-001\r\nDate: Mon, 02 Jun 2025 10:00:00 +0000" \
          b"\r\n\r\nLIST said more\r\n"
    two = b"From: b@example.com\r\nSubject: est-002\r\n\r\nLIST said less\r\n"
    script = dict(FAKE_LOGIN, **_fake_maildrop({"uid-1": one, "uid-2": two}))
    script["LIST"] = b"+OK\r\n1 %d\r\n2 %d\r\n.\r\n" % (len(one) + 40, len(two) - 5)
    f = fake_pop3(script)
    m = mount(None, source="pop3://alice@127.0.0.1:%d" % f.port, password_file=_pwfile(tmp_path),
              cafile=False, options=["insecure"],
              allow=[r"warning: insecure: ", r"LIST said \d+ bytes"])
    names = {n.split(" - ")[-1]: n for n in os.listdir(spool(m))}
    assert read(os.path.join(spool(m), names["est-001.eml"])) == one
    assert read(os.path.join(spool(m), names["est-002.eml"])) == two
    assert wait_for(lambda: sorted(os.listdir(archive(m))) == sorted(names.values())), \
        "a message with an estimated LIST size is never consumed"
    assert wait_for(lambda: "DELE 1" in f.lines and "DELE 2" in f.lines), f.lines
    assert read(os.path.join(archive(m), names["est-001.eml"])) == one
    problems = m.unmount()
    assert not problems, problems
    assert len(re.findall(r"LIST said", m.log())) == 2, m.log()


def test_body_of_list_size_with_other_headers_than_top_is_not_deleted(fake_pop3, mount,
                                                                       tmp_path):
    """A RETR answer of LIST's size whose headers are not TOP's (a mixed-up answer) must not
    lead to a DELE of that number."""
    real = b"From: a@example.com\r\nSubject: mix-001\r\nMessage-ID: <a@x>\r\n\r\nreal\r\n"
    other = b"From: z@example.com\r\nSubject: mix-001\r\nMessage-ID: <z@x>\r\n\r\nelse\r\n"
    assert len(real) == len(other)
    script = dict(FAKE_LOGIN, **_fake_maildrop({"uid-1": real}))
    script["RETR 1"] = b"+OK\r\n" + other + b".\r\n"
    f = fake_pop3(script)
    m = mount(None, source="pop3://alice@127.0.0.1:%d" % f.port, password_file=_pwfile(tmp_path),
              cafile=False, options=["insecure"],
              allow=[r"warning: insecure: ", r"may name another message now"])
    name = os.listdir(spool(m))[0]
    assert read(os.path.join(spool(m), name)) == other
    time.sleep(3)
    problems = m.unmount()
    assert not problems, problems
    assert "DELE 1" not in f.lines, f.lines


def test_dot_line_after_bare_lf_does_not_shift_answers(fake_pop3, mount, tmp_path):
    """AUDIT A3: message 1 holds "\\n.\\r\\n" after a bare LF (a strict server does not stuff
    it).  It must not end message 1, nor make its tail the answer to RETR 2."""
    one = (b"From: a@example.com\r\nSubject: one-001\r\n\r\nhello\n.\r\n"
           b"+OK fake\r\nEVIL BODY\r\n")
    two = b"From: b@example.com\r\nSubject: two-002\r\n\r\nreal message two\r\n"
    head = lambda raw: raw.split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    f = fake_pop3({
        "CAPA": b"+OK\r\nUSER\r\nUIDL\r\nTOP\r\nPIPELINING\r\n.\r\n",
        "USER": b"+OK\r\n",
        "PASS": b"+OK logged in\r\n",
        "STAT": b"+OK 2 %d\r\n" % (len(one) + len(two)),
        "UIDL": b"+OK\r\n1 uid-one\r\n2 uid-two\r\n.\r\n",
        "LIST": b"+OK\r\n1 %d\r\n2 %d\r\n.\r\n" % (len(one), len(two)),
        "TOP 1 0": b"+OK\r\n" + head(one) + b".\r\n",
        "TOP 2 0": b"+OK\r\n" + head(two) + b".\r\n",
        "RETR 1": b"+OK\r\n" + one + b".\r\n",
        "RETR 2": b"+OK\r\n" + two + b".\r\n",
        "DELE": b"+OK marked\r\n",
        "QUIT": b"+OK bye\r\n",
    })
    m = mount(None, source="pop3://alice@127.0.0.1:%d" % f.port, password_file=_pwfile(tmp_path),
              cafile=False, options=["insecure"], allow=[r"warning: insecure: "])
    names = {n.split(" - ")[-1]: n for n in os.listdir(spool(m))}
    assert sorted(names) == ["one-001.eml", "two-002.eml"], names
    # Reading one pipelines RETR 1 and RETR 2 (read-ahead).
    assert read(os.path.join(spool(m), names["one-001.eml"])) == one
    assert read(os.path.join(spool(m), names["two-002.eml"])) == two
    assert wait_for(lambda: sorted(os.listdir(archive(m))) == sorted(names.values()))
    assert read(os.path.join(archive(m), names["two-002.eml"])) == two


# --------------------------------------------------------------------------
# AUDIT A1: a UIDL the server gives again, to another message

def recreate_inbox(user, msgs, old):
    """Empty the server's INBOX by recreating it, deliver msgs into it, and give it the old
    UIDVALIDITY: Dovecot's UIDLs (%08Xu%08Xv) then start over at the ones already used, as a
    migrated or recreated mailbox does (RFC 1939 lets a server reuse a unique-id once its
    message is gone).  old: a {uidl: ...} the server gave before.  Returns the new
    {uidl: (n, size)}."""
    validity = {int(u[8:], 16) for u in old}
    assert len(validity) == 1, old
    user.close()
    shutil.rmtree(os.path.join(user.server.mail_dir, user.name, "Maildir", "INBOX"))
    user.append_many("INBOX", msgs)
    user.server.doveadm("mailbox", "update", "-u", user.name, "--uid-validity",
                        str(validity.pop()), "INBOX")
    return Pop(user).uidls()


def test_reused_uidl_is_not_deleted_unread(user, mount):
    token = "r%x" % (int(time.time() * 1000) % 0xffffff)
    a, b = make_msg(token, 1), make_msg(token, 2)  # same size, other headers
    assert len(a) == len(b)
    user.append_many("INBOX", [a])
    first = Pop(user).uidls()
    m = mount(user, scheme="pop3s")
    name = by_subject(spool(m))[subject_of(a)]
    assert read(os.path.join(spool(m), name)) == a
    assert wait_for(lambda: name in os.listdir(archive(m)))
    problems = m.unmount()
    assert not problems, problems
    assert Pop(user).uidls() == {}
    # The mailbox is recreated and message b gets the UIDL a had.
    now = recreate_inbox(user, [b], first)
    assert sorted(now) == sorted(first), (now, first)
    m2 = mount(user, scheme="pop3s", cache_dir=m.cache_dir, debug=True)
    time.sleep(1.5)
    assert Pop(user).uidls() == now, "a reused UIDL was deleted from the server unread"
    assert not re.search(r"DELE \d", m2.log())
    names = by_subject(spool(m2))
    assert subject_of(b) in names, "the new message is not offered in spool/"
    assert read(os.path.join(spool(m2), names[subject_of(b)])) == b
    assert read(os.path.join(archive(m2), name)) == a
    # Consumed like any other, and both copies kept.
    assert wait_for(lambda: Pop(user).uidls() == {})
    assert sorted(by_subject(archive(m2))) == sorted([subject_of(a), subject_of(b)])


@pytest.mark.parametrize("size", ["same", "other"])
def test_rm_of_a_spool_message_whose_uidl_was_reused_deletes_nothing(size, user, mount):
    """A spool message never read; the mailbox is recreated while unmounted and b gets its
    UIDL.  rm of a's file must not DELE b: b is offered in its place."""
    token = "s%x" % (int(time.time() * 1000) % 0xffffff)
    a = make_msg(token, 1)
    b = make_msg(token, 2, body_lines=3 if size == "same" else 7)
    assert (len(a) == len(b)) == (size == "same")
    user.append_many("INBOX", [a])
    first = Pop(user).uidls()
    m = mount(user, scheme="pop3s")
    name = by_subject(spool(m))[subject_of(a)]
    assert not m.unmount()
    now = recreate_inbox(user, [b], first)
    assert sorted(now) == sorted(first), (now, first)
    m2 = mount(user, scheme="pop3s", cache_dir=m.cache_dir, debug=True,
               allow=[r"not deleting .*: UIDL \S+ now names another message"])
    if size == "other":
        assert sorted(by_subject(spool(m2))) == [subject_of(b)], "a's row is still offered"
    with pytest.raises(FileNotFoundError):
        os.unlink(os.path.join(spool(m2), name))
    time.sleep(1.5)
    assert Pop(user).uidls() == now, "rm of a deleted b from the server"
    assert not re.search(r"DELE \d", m2.log())
    assert wait_for(lambda: sorted(by_subject(spool(m2))) == [subject_of(b)])
    assert read(os.path.join(spool(m2), by_subject(spool(m2))[subject_of(b)])) == b


def test_keep_offers_a_reused_uidl_again(user, mount):
    token = "k%x" % (int(time.time() * 1000) % 0xffffff)
    a, b = make_msg(token, 1), make_msg(token, 2)
    user.append_many("INBOX", [a])
    first = Pop(user).uidls()
    m = mount(user, scheme="pop3s", options=["keep"])
    name = by_subject(spool(m))[subject_of(a)]
    assert read(os.path.join(spool(m), name)) == a
    assert wait_for(lambda: name in os.listdir(archive(m)))
    problems = m.unmount()
    assert not problems, problems
    assert Pop(user).uidls() == first
    now = recreate_inbox(user, [b], first)
    assert sorted(now) == sorted(first), (now, first)
    m2 = mount(user, scheme="pop3s", cache_dir=m.cache_dir, options=["keep"])
    names = by_subject(spool(m2))
    assert sorted(names) == [subject_of(b)], "keep: a reused UIDL is hidden as if read"
    assert read(os.path.join(spool(m2), names[subject_of(b)])) == b
    assert wait_for(lambda: subject_of(b) in by_subject(archive(m2)))
    assert Pop(user).uidls() == now


def test_kept_message_is_still_hidden_after_remount(loaded, mount):
    """The identity check must not offer a kept (consumed) message again."""
    user, token, msgs = loaded
    before = Pop(user).uidls()
    m = mount(user, scheme="pop3s", options=["keep"])
    names = by_subject(spool(m))
    for subj in sorted(names)[:2]:
        read(os.path.join(spool(m), names[subj]))
    assert wait_for(lambda: len(os.listdir(archive(m))) == 2)
    problems = m.unmount()
    assert not problems, problems
    m2 = mount(user, scheme="pop3s", cache_dir=m.cache_dir)  # no keep now: still no DELE
    assert sorted(by_subject(spool(m2))) == sorted(names)[2:]
    time.sleep(1.5)
    with open(os.path.join(m2.path, ".mailfs", "sync"), "w") as f:
        f.write("1\n")
    time.sleep(2)
    assert sorted(by_subject(spool(m2))) == sorted(names)[2:]
    assert Pop(user).uidls() == before


def _sync_and_wait(m, log_lines):
    """Ask for a sync through .mailfs/sync and wait until a new session listed the maildrop
    (-d logs each UIDL command); returns the new count."""
    with open(os.path.join(m.path, ".mailfs", "sync"), "w") as f:
        f.write("1\n")
    assert wait_for(lambda: m.log().count("UIDL\n") > log_lines), "no new listing"
    time.sleep(0.5)
    return m.log().count("UIDL\n")


def test_record_is_forgotten_once_the_server_no_longer_lists_it(user, mount):
    """The same bytes delivered again under the same UIDL (a header-hash UIDL does this) after
    the first copy's DELE was committed and the listings of 3 sessions no longer had it, for
    the grace time (made 0 here): a new message."""
    token = "f%x" % (int(time.time() * 1000) % 0xffffff)
    a = make_msg(token, 1)
    user.append_many("INBOX", [a])
    first = Pop(user).uidls()
    env = {"MAILFS_TEST_FORGET_SECONDS": "0"}
    m = mount(user, scheme="pop3s", env=env, debug=True)
    name = by_subject(spool(m))[subject_of(a)]
    assert read(os.path.join(spool(m), name)) == a
    assert wait_for(lambda: Pop(user).uidls() == {})
    time.sleep(1.5)
    n = m.log().count("UIDL\n")
    for _ in range(3):
        n = _sync_and_wait(m, n)  # listings without the UIDL
    problems = m.unmount()
    assert not problems, problems
    now = recreate_inbox(user, [a], first)
    assert sorted(now) == sorted(first)
    m2 = mount(user, scheme="pop3s", cache_dir=m.cache_dir, debug=True, env=env)
    time.sleep(1.5)
    assert Pop(user).uidls() == now, "a message delivered again was deleted unread"
    assert not re.search(r"DELE \d", m2.log())
    assert subject_of(a) in by_subject(spool(m2))


def _fake_maildrop(msgs):
    """The LIST/UIDL/STAT/TOP/RETR part of a FakePop3 script for {uidl: raw} (numbered in
    order); a test swaps it in and out of the script to change the maildrop."""
    head = lambda raw: raw.split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    d = {"STAT": b"+OK %d %d\r\n" % (len(msgs), sum(len(r) for r in msgs.values())),
         "UIDL": b"+OK\r\n" + b"".join(b"%d %s\r\n" % (i + 1, u.encode())
                                       for i, u in enumerate(msgs)) + b".\r\n",
         "LIST": b"+OK\r\n" + b"".join(b"%d %d\r\n" % (i + 1, len(r))
                                       for i, r in enumerate(msgs.values())) + b".\r\n"}
    for i, raw in enumerate(msgs.values()):
        d["TOP %d 0" % (i + 1)] = b"+OK\r\n" + head(raw) + b".\r\n"
        d["RETR %d" % (i + 1)] = b"+OK\r\n" + raw + b".\r\n"
    return d


FAKE_LOGIN = {
    "CAPA": b"+OK\r\nUSER\r\nUIDL\r\nTOP\r\nPIPELINING\r\n.\r\n",
    "USER": b"+OK\r\n",
    "PASS": b"+OK logged in\r\n",
    "DELE": b"+OK marked\r\n",
    "QUIT": b"+OK bye\r\n",
}


def test_keep_record_survives_a_listing_that_briefly_lacks_it(fake_pop3, mount, tmp_path):
    """AUDIT A1 follow-up: a provider answering once with an empty maildrop must not make
    every kept message new again."""
    a = b"From: a@example.com\r\nSubject: kept-001\r\n\r\nread once\r\n"
    b = b"From: b@example.com\r\nSubject: other-002\r\n\r\nnot read\r\n"
    full = _fake_maildrop({"uid-a": a, "uid-b": b})
    f = fake_pop3(dict(FAKE_LOGIN, **full))
    m = mount(None, source="pop3://alice@127.0.0.1:%d" % f.port, password_file=_pwfile(tmp_path),
              cafile=False, options=["insecure", "keep"], debug=True,
              allow=[r"warning: insecure: "])
    names = {n.split(" - ")[-1]: n for n in os.listdir(spool(m))}
    assert read(os.path.join(spool(m), names["kept-001.eml"])) == a
    assert wait_for(lambda: names["kept-001.eml"] in os.listdir(archive(m)))
    time.sleep(1.5)
    n = m.log().count("UIDL\n")
    # One session sees an empty maildrop, one a partial one.
    f.script.update(_fake_maildrop({}))
    n = _sync_and_wait(m, n)
    f.script.update(_fake_maildrop({"uid-b": b}))
    n = _sync_and_wait(m, n)
    f.script.update(full)
    n = _sync_and_wait(m, n)
    assert sorted(os.listdir(spool(m))) == [names["other-002.eml"]], \
        "a kept message is offered again"
    problems = m.unmount()
    assert not problems, problems
    m2 = mount(None, source="pop3://alice@127.0.0.1:%d" % f.port,
               password_file=_pwfile(tmp_path), cafile=False, cache_dir=m.cache_dir,
               options=["insecure", "keep"], allow=[r"warning: insecure: "])
    assert sorted(os.listdir(spool(m2))) == [names["other-002.eml"]]
    assert "DELE" not in f.commands


def test_record_is_forgotten_only_after_three_listings_without_it(fake_pop3, mount, tmp_path):
    """The grace time made 0: two listings without a kept UIDL, then one with it, forget
    nothing (the count starts again); three in a row do, and the message is offered again."""
    a = b"From: a@example.com\r\nSubject: kept-001\r\n\r\nread once\r\n"
    full = _fake_maildrop({"uid-a": a})
    f = fake_pop3(dict(FAKE_LOGIN, **full))
    m = mount(None, source="pop3://alice@127.0.0.1:%d" % f.port, password_file=_pwfile(tmp_path),
              cafile=False, options=["insecure", "keep"], debug=True,
              env={"MAILFS_TEST_FORGET_SECONDS": "0"}, allow=[r"warning: insecure: "])
    name = os.listdir(spool(m))[0]
    assert read(os.path.join(spool(m), name)) == a
    assert wait_for(lambda: name in os.listdir(archive(m)))
    time.sleep(1.5)
    n = m.log().count("UIDL\n")
    for rounds in (2, 3):
        f.script.update(_fake_maildrop({}))
        for _ in range(rounds):
            n = _sync_and_wait(m, n)
        f.script.update(full)
        n = _sync_and_wait(m, n)
        if rounds == 2:
            assert os.listdir(spool(m)) == [], "forgotten after 2 listings"
    assert wait_for(lambda: os.listdir(spool(m)) == [name]), "never forgotten"
    assert "DELE" not in f.commands


def test_old_records_without_identity_are_hidden_but_never_deleted(loaded, mount):
    """A cache from before identities: pop3.archived.<UIDL> holds only the local id.  A
    message archived there whose DELE was never sent stays hidden (its archived copy has the
    server's size) and is never deleted, since nothing shows it is the same message."""
    import sqlite3
    user, token, msgs = loaded
    pop = Pop(user)
    before = pop.uidls()
    m, names, subj = crash_reading_first(user, mount, "after_fsync")
    store = _store_dir(m)
    db = sqlite3.connect(os.path.join(store, "index.sqlite"))
    rows = db.execute("SELECT key, value FROM kv WHERE key LIKE 'pop3.archived.%'").fetchall()
    assert len(rows) == 1, rows
    db.execute("UPDATE kv SET value = ? WHERE key = ?", (rows[0][1].split()[0], rows[0][0]))
    db.commit()
    db.close()
    m2 = mount(user, scheme="pop3s", cache_dir=m.cache_dir, debug=True)
    assert sorted(by_subject(spool(m2))) == sorted(names)[1:]
    assert os.listdir(archive(m2)) == [names[subj]]
    time.sleep(1.5)
    problems = m2.unmount()
    assert not problems, problems
    assert pop.uidls() == before
    assert not re.search(r"DELE \d", m2.log())


# --------------------------------------------------------------------------
# the archive is state, not cache (AUDIT A6)

def test_old_keep_record_stays_hidden_after_rm_in_archive(loaded, mount):
    """A keep record from before identities (value: the local id alone) whose archived copy
    the user removed: the message was never deleted, so it stays hidden, not offered again."""
    import sqlite3
    user, token, msgs = loaded
    before = Pop(user).uidls()
    m = mount(user, scheme="pop3s", options=["keep"])
    names = by_subject(spool(m))
    subj = sorted(names)[0]
    assert read(os.path.join(spool(m), names[subj])) == msgs[subj]
    assert wait_for(lambda: names[subj] in os.listdir(archive(m)))
    os.unlink(os.path.join(archive(m), names[subj]))
    assert not m.unmount()
    store = _store_dir(m)
    db = sqlite3.connect(os.path.join(store, "index.sqlite"))
    rows = db.execute("SELECT key, value FROM kv WHERE key LIKE 'pop3.archived.%'").fetchall()
    assert len(rows) == 1, rows
    db.execute("UPDATE kv SET value = ? WHERE key = ?", (rows[0][1].split()[0], rows[0][0]))
    db.commit()
    db.close()
    m2 = mount(user, scheme="pop3s", cache_dir=m.cache_dir, options=["keep"])
    assert sorted(by_subject(spool(m2))) == sorted(names)[1:], "a kept message came back"
    assert os.listdir(archive(m2)) == []
    assert Pop(user).uidls() == before


def test_stale_uidl_mapping_does_not_block_the_archive(loaded, mount):
    """A pop3.uidl.<U> mapping left behind (a kill between the archive move and its removal)
    gives a later message with UIDL U a local id archive/ already has: it must still be
    archived when read, not stay in spool/ for ever."""
    import sqlite3
    user, token, msgs = loaded
    m = mount(user, scheme="pop3s")
    done = _consume(m, msgs, 1)
    assert wait_for(lambda: len(Pop(user).uidls()) == 4)
    assert not m.unmount()
    store = _store_dir(m)
    db = sqlite3.connect(os.path.join(store, "index.sqlite"))
    (taken,) = db.execute("SELECT value FROM kv WHERE key LIKE 'pop3.archived.%'").fetchone()
    taken = taken.split()[0]
    spool_id, = db.execute("SELECT id FROM folders WHERE name = 'spool'").fetchone()
    uid, uidl, name = db.execute("SELECT uid, message_id, name FROM messages WHERE folder_id = ?"
                                 " ORDER BY name LIMIT 1", (spool_id,)).fetchone()
    # The next sync sees UIDL uidl as new, and its mapping points at the archived id.
    db.execute("DELETE FROM messages WHERE folder_id = ? AND uid = ?", (spool_id, uid))
    db.execute("DELETE FROM kv WHERE key = ?", ("pop3.spool." + uidl,))
    db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", ("pop3.uidl." + uidl, taken))
    db.commit()
    db.close()
    m2 = mount(user, scheme="pop3s", cache_dir=m.cache_dir)
    assert name in os.listdir(spool(m2))
    subj = re.search(r"- (\S+-\d{3})", name).group(1)
    assert read(os.path.join(spool(m2), name)) == msgs[subj]
    assert wait_for(lambda: name in os.listdir(archive(m2))), "stuck in spool/"
    assert wait_for(lambda: uidl not in Pop(user).uidls())
    assert sorted(os.listdir(archive(m2))) == sorted(list(done.values()) + [name])
    for subj2, n2 in done.items():
        assert read(os.path.join(archive(m2), n2)) == msgs[subj2]


def _account_dir(m):
    """USER@HOST:PORT of a mount's source, the store's directory name."""
    return re.match(r"pop3s?://(.*)$", m.source).group(1)


def _store_dir(m):
    """The POP3 store of a mount made by the fixture (XDG_DATA_HOME=<base>/data)."""
    return os.path.join(m.mounter.base_dir, "data", "mailfs", _account_dir(m))


def _store_files(root):
    """{path: bytes} of the body files under ROOT/bodies/."""
    out = {}
    bodies = os.path.join(root, "bodies")
    for dirpath, dirs, files in os.walk(bodies):
        for f in files:
            if not f.startswith("."):
                out[os.path.join(dirpath, f)] = read(os.path.join(dirpath, f))
    return out


def _consume(m, msgs, count):
    """Read COUNT spool messages to their end; wait until they are archived and gone from
    the server.  Returns {subject: archive name}."""
    names = by_subject(spool(m))
    done = {}
    for subj in sorted(names)[:count]:
        assert read(os.path.join(spool(m), names[subj])) == msgs[subj]
        done[subj] = names[subj]
    assert wait_for(lambda: all(n in os.listdir(archive(m)) for n in done.values()))
    return done


def test_names_switch_keeps_spool_and_archive_names(loaded, mount):
    """Another names= than the store was made with remakes no POP3 name: the archive is the
    only copy, and the spool keeps its names too (fs/main.c resets IMAP folders only)."""
    user, token, msgs = loaded
    m = mount(user, scheme="pop3s")
    done = _consume(m, msgs, 1)
    spool_before = sorted(os.listdir(spool(m)))
    archive_before = sorted(os.listdir(archive(m)))
    assert len(spool_before) == 4 and archive_before == sorted(done.values())
    assert not m.unmount()
    m2 = mount(user, scheme="pop3s", cache_dir=m.cache_dir, names="uid")
    assert sorted(os.listdir(archive(m2))) == archive_before
    assert sorted(os.listdir(spool(m2))) == spool_before
    for subj, name in done.items():
        assert read(os.path.join(archive(m2), name)) == msgs[subj]


def test_archive_lives_in_xdg_data_home_and_survives_a_cache_wipe(loaded, mount, tmp_path):
    user, token, msgs = loaded
    pop = Pop(user)
    data_home = str(tmp_path / "xdg-data")
    env = {"XDG_DATA_HOME": data_home}
    m = mount(user, scheme="pop3s", env=env)
    done = _consume(m, msgs, 2)
    assert wait_for(lambda: len(pop.uidls()) == 3)
    assert not m.unmount()
    store = os.path.join(data_home, "mailfs", _account_dir(m))
    assert os.path.isfile(os.path.join(store, "index.sqlite")), os.listdir(data_home)
    assert oct(os.stat(store).st_mode & 0o777) == oct(0o700)
    kept = sorted(_store_files(store).values())
    assert all(msgs[s] in kept for s in done), "archived bodies are not in the data dir"
    # What a cache cleaner does: the cache directory goes.
    assert not os.path.exists(os.path.join(m.cache_dir, "index.sqlite"))
    subprocess.run(["rm", "-rf", m.cache_dir], check=True)
    m2 = mount(user, scheme="pop3s", env=env, cache_dir=m.cache_dir)
    assert sorted(os.listdir(archive(m2))) == sorted(done.values())
    for subj, name in done.items():
        assert read(os.path.join(archive(m2), name)) == msgs[subj]
    # Not offered again either.
    assert sorted(by_subject(spool(m2))) == sorted(s for s in msgs if s not in done)


def test_archive_default_is_under_home_local_share(loaded, mount):
    user, token, msgs = loaded
    # An empty XDG_DATA_HOME means unset: ~/.local/share.
    m = mount(user, scheme="pop3s", env={"XDG_DATA_HOME": ""})
    done = _consume(m, msgs, 1)
    assert not m.unmount()
    store = os.path.join(m.workdir, "home", ".local", "share", "mailfs", _account_dir(m))
    bodies = _store_files(store)
    assert msgs[list(done)[0]] in bodies.values(), (store, sorted(bodies))


def _old_layout(mounter, user, msgs, cache_dir, count):
    """An archive of COUNT messages in CACHE_DIR as an earlier mailfs kept it: made by the
    binary in MAILFS_OLD_BIN (e.g. main's) when set, else by this one with data_dir=CACHE_DIR
    (the store in the cache dir, which is that layout)."""
    old_bin = os.environ.get("MAILFS_OLD_BIN")
    binary = mounter.binary
    opts = [] if old_bin else ["data_dir=" + cache_dir]
    if old_bin:
        mounter.binary = old_bin
    try:
        m = mounter.mount(user, scheme="pop3s", cache_dir=cache_dir, options=opts)
        done = _consume(m, msgs, count)
        assert not m.unmount()
    finally:
        mounter.binary = binary
    assert os.path.isfile(os.path.join(cache_dir, "index.sqlite"))
    files = _store_files(cache_dir)
    assert all(msgs[s] in files.values() for s in done)
    return done


def test_archive_in_an_old_cache_dir_is_moved_to_the_data_dir(loaded, mounter, tmp_path):
    user, token, msgs = loaded
    cache_dir = str(tmp_path / "old-cache")
    done = _old_layout(mounter, user, msgs, cache_dir, 2)
    m = mounter.mount(user, scheme="pop3s", cache_dir=cache_dir)
    assert sorted(os.listdir(archive(m))) == sorted(done.values())
    for subj, name in done.items():
        assert read(os.path.join(archive(m), name)) == msgs[subj]
    assert sorted(by_subject(spool(m))) == sorted(s for s in msgs if s not in done)
    # Moved, not copied: the cache dir holds no store any more.
    assert not os.path.exists(os.path.join(cache_dir, "index.sqlite"))
    assert _store_files(cache_dir) == {}
    # And it goes on working: one more is archived, next to the moved ones.
    more = _consume(m, msgs, 1)
    assert not m.unmount()
    m2 = mounter.mount(user, scheme="pop3s", cache_dir=cache_dir)
    assert sorted(os.listdir(archive(m2))) == sorted(list(done.values()) + list(more.values()))


def test_ro_mount_uses_an_old_store_in_place(loaded, mounter, tmp_path):
    """-o ro changes nothing, not even where the store is: an old store in the cache dir is
    read where it is, not moved."""
    user, token, msgs = loaded
    cache_dir = str(tmp_path / "old-cache")
    done = _old_layout(mounter, user, msgs, cache_dir, 2)
    before = sorted(_store_files(cache_dir).items())
    m = mounter.mount(user, scheme="pop3s", cache_dir=cache_dir, options=["ro"])
    assert sorted(os.listdir(archive(m))) == sorted(done.values())
    for subj, name in done.items():
        assert read(os.path.join(archive(m), name)) == msgs[subj]
    assert sorted(by_subject(spool(m))) == sorted(s for s in msgs if s not in done)
    assert not m.unmount()
    assert os.path.exists(os.path.join(cache_dir, "index.sqlite")), "ro moved the store"
    assert sorted(_store_files(cache_dir).items()) == before
    data = os.path.join(mounter.base_dir, "data", "mailfs", _account_dir(m))
    assert not os.path.exists(os.path.join(data, "index.sqlite"))


def test_old_store_on_another_file_system_is_used_in_place(loaded, mounter, tmp_path):
    """The data dir on another file system than the old cache dir (a move would be a copy):
    the mount goes on with the store where it is, and one warning says how to move it."""
    user, token, msgs = loaded
    cache_dir = str(tmp_path / "old-cache")
    done = _old_layout(mounter, user, msgs, cache_dir, 2)
    data_home = str(tmp_path / "xdg-data")
    os.mkdir(data_home)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", data_home],
                   check=True)
    try:
        m = mounter.mount(user, scheme="pop3s", cache_dir=cache_dir,
                          env={"XDG_DATA_HOME": data_home},
                          allow=[r"stays there: .* is on another file system"])
        assert sorted(os.listdir(archive(m))) == sorted(done.values())
        for subj, name in done.items():
            assert read(os.path.join(archive(m), name)) == msgs[subj]
        more = _consume(m, msgs, 1)
        assert not m.unmount()
        log = m.log()
        assert len(re.findall(r"on another file system", log)) == 1, log
        assert "mv %s " % cache_dir in log, log
        assert os.path.exists(os.path.join(cache_dir, "index.sqlite"))
        files = _store_files(cache_dir).values()
        assert all(msgs[s] in files for s in list(done) + list(more))
    finally:
        subprocess.run(["umount", "-l", data_home])


def test_kill_during_the_archive_move_loses_nothing(loaded, mounter, tmp_path):
    user, token, msgs = loaded
    cache_dir = str(tmp_path / "old-cache")
    done = _old_layout(mounter, user, msgs, cache_dir, 3)
    a = mounter.try_mount(user, scheme="pop3s", cache_dir=cache_dir,
                          env={"MAILFS_TEST_CRASH_AT": "store_move"})
    assert a.rc == -9, a
    # Every archived body is in one of the two places, none in both.
    data_root = os.path.join(mounter.base_dir, "data", "mailfs")
    found = []
    for root in [cache_dir] + [os.path.join(data_root, d) for d in os.listdir(data_root)]:
        found += list(_store_files(root).values())
    for s in done:
        assert found.count(msgs[s]) == 1, s
    # The next mount finishes the move.
    m = mounter.mount(user, scheme="pop3s", cache_dir=cache_dir)
    assert sorted(os.listdir(archive(m))) == sorted(done.values())
    for subj, name in done.items():
        assert read(os.path.join(archive(m), name)) == msgs[subj]
    assert sorted(by_subject(spool(m))) == sorted(s for s in msgs if s not in done)
    assert not os.path.exists(os.path.join(cache_dir, "index.sqlite"))


def test_a_damaged_archived_body_is_kept(loaded, mount):
    user, token, msgs = loaded
    m = mount(user, scheme="pop3s")
    done = _consume(m, msgs, 1)
    subj, name = list(done.items())[0]
    assert not m.unmount()
    store = _store_dir(m)
    path = [p for root in (store, m.cache_dir) for p, b in _store_files(root).items()
            if b == msgs[subj]]
    assert len(path) == 1, path
    store = path[0].split("/bodies/")[0]
    # A disk error, a careless tool: the file is cut short.
    with open(path[0], "r+b") as f:
        f.truncate(100)
    m2 = mount(user, scheme="pop3s", cache_dir=m.cache_dir,
               allow=[r"it is the only copy: kept and served as it is"])
    data = read(os.path.join(archive(m2), name))
    assert data == msgs[subj][:100]
    assert os.path.exists(path[0]), "the only copy was deleted"
    q = os.path.join(store, "quarantine")
    assert [read(os.path.join(q, f)) for f in os.listdir(q)] == [msgs[subj][:100]]
    assert "a copy is in quarantine/" in m2.log()


def test_archive_bytes_do_not_count_as_cache(loaded, mount):
    user, token, msgs = loaded
    m = mount(user, scheme="pop3s")
    done = _consume(m, msgs, 2)
    archived = sum(len(msgs[s]) for s in done)
    others = sum(len(b) for s, b in msgs.items() if s not in done)
    st = m.status()
    assert int(st["archive_bytes"]) == archived, st
    # cache_bytes holds what read-ahead brought of the spool, never the archive.
    assert int(st["cache_bytes"]) <= others, st


def test_second_mount_on_one_data_dir_is_refused(loaded, mount, try_mount):
    user, token, msgs = loaded
    m = mount(user, scheme="pop3s")
    # Another cache dir (try_mount's own), the same data dir: one archive, one daemon.
    a = try_mount(user, scheme="pop3s")
    assert a.rc not in (0, None), a
    assert not a.leftover, a.leftover
    assert len(a.lines) == 1 and "in use by another mailfs" in a.stderr, a.stderr
    assert len(os.listdir(spool(m))) == 5


def test_no_dele_while_the_archived_copy_is_damaged(loaded, mount):
    user, token, msgs = loaded
    pop = Pop(user)
    # Archived durably, killed before the DELE: the next sync would finish the consume.
    m, names, subj = crash_reading_first(user, mount, "after_fsync")
    # The archived copy is damaged meanwhile: the server's is then the only good one.
    store = _store_dir(m)
    path = [p for root in (store, m.cache_dir) for p, b in _store_files(root).items()
            if b == msgs[subj]]
    assert len(path) == 1, path
    with open(path[0], "r+b") as f:
        f.truncate(50)
    m2 = mount(user, scheme="pop3s", cache_dir=m.cache_dir,
               allow=[r"is not stored safely .*; not deleting it from the server"])
    time.sleep(2)
    assert subj in pop.subjects(), "the server's copy was deleted; the archived one is damaged"
    assert "not deleting it from the server" in m2.log()


def test_consume_asks_top_only_at_listing(loaded, mount):
    """A message RETR'd in this session whose headers are the ones TOP listed is deleted
    without asking TOP again: reading the spool costs no round trip per message beyond
    RETR and DELE.  The server's side: every message deleted, each archived once."""
    user, token, msgs = loaded
    pop = Pop(user)
    m = mount(user, scheme="pop3s", debug=True)
    names = by_subject(spool(m))
    tops_at_listing = len(re.findall(r"TOP \d+ 0", m.log()))
    assert tops_at_listing >= len(msgs), m.log()[-2000:]
    for subj in sorted(names):
        assert read(os.path.join(spool(m), names[subj])) == msgs[subj]
    assert wait_for(lambda: len(os.listdir(archive(m))) == len(msgs)), os.listdir(archive(m))
    assert wait_for(lambda: pop.uidls() == {}, timeout=20), pop.uidls()
    log = m.log()
    assert len(re.findall(r"DELE \d", log)) == len(msgs), log[-3000:]
    assert len(re.findall(r"TOP \d+ 0", log)) == tops_at_listing, \
        "TOP asked again at consume: %s" % re.findall(r".*TOP \d+ 0.*", log)
