"""The foundation: an IMAP mailbox mounted and read, exactly as the server holds it.

One user loaded with tests/corpus.py corpus(300) (folders nested, non-ASCII, \\Noselect
parents, an empty folder, a hostile "Odd" folder, 1 MB+ attachments) is mounted once for
the module (mailfs -f, names=readable); further mounts (names=uid, ro, imap:// STARTTLS,
detached) are made where a test needs them.  Every comparison is against what the server
itself says (imaplib BODY.PEEK[], FLAGS, INTERNALDATE; doveadm), never against mailfs.

Contract: /work/shared/SPEC.md ("The tree (IMAP)", "Bad input and failure").
"""
import collections
import errno
import hashlib
import mmap
import os
import re
import stat
import subprocess
import threading
import time
import unicodedata

import pytest

import corpus as corpus_mod
from conftest import is_mounted, note, ordinary_user, run

TOP_SPECIAL = ".mailfs"


def sha(b):
    return hashlib.sha256(b).hexdigest()


class Truth:
    """What the server holds, fetched once with imaplib."""

    def __init__(self, acct):
        self.folders_full = acct.list_folders_full()
        self.folders = sorted(n for n, _, _ in self.folders_full)
        self.selectable = sorted(n for n, fl, _ in self.folders_full
                                 if not ({"\\noselect", "\\nonexistent"} & {f.lower() for f in fl}))
        self.bodies = {}   # folder -> {uid: bytes}
        self.meta = {}     # folder -> {uid: {flags, internaldate, size}}
        for f in self.selectable:
            self.bodies[f] = acct.fetch_all(f)
            self.meta[f] = acct.meta(f)

    def shas(self, folder):
        return collections.Counter(sha(b) for b in self.bodies[folder].values())

    def total(self):
        return sum(len(v) for v in self.bodies.values())


@pytest.fixture(scope="module")
def ro(server, module_user, module_mount, report):
    """The module's loaded user, the server's truth, and a readable -f mount."""
    c = corpus_mod.corpus(300)
    t0 = time.time()
    uids = module_user.load(c)
    report("corpus: %d messages, %.1f MB, loaded in %.2f s" % (
        len(c), c.total_bytes() / 1e6, time.time() - t0))
    acct = module_user.account()
    truth = Truth(acct)
    flags_before = {f: server.doveadm_flags(module_user.name, f) for f in truth.selectable}
    snapshot_before = acct.snapshot()
    t0 = time.time()
    m = module_mount(module_user)
    report("mount (mailfs -f until the mount point is live): %.2f s" % (time.time() - t0))

    class R:
        pass
    r = R()
    r.user, r.corpus, r.uids, r.acct, r.truth = module_user, c, uids, acct, truth
    r.flags_before, r.snapshot_before = flags_before, snapshot_before
    r.mount, r.mnt = m, m.path
    return r


def folder_path(mnt, folder):
    return os.path.join(mnt, *folder.split("/"))


def eml_files(d):
    """{name: path} of the regular files in directory D."""
    out = {}
    with os.scandir(d) as it:
        for e in it:
            if e.is_file(follow_symlinks=False):
                out[e.name] = e.path
    return out


def read(p):
    with open(p, "rb") as f:
        return f.read()


def walk_dirs(mnt):
    """Relative directory paths under MNT (excluding .mailfs), "/"-joined."""
    out = set()
    for root, dirs, _files in os.walk(mnt):
        if root == mnt and TOP_SPECIAL in dirs:
            dirs.remove(TOP_SPECIAL)
        for d in dirs:
            out.add(os.path.relpath(os.path.join(root, d), mnt))
    return out


# --------------------------------------------------------------------------
# first walk: timings (kept first so it measures a cold mount)

def test_first_walk_timing(ro, report):
    t0 = time.time()
    r = run(["ls", "-R", ro.mnt])
    t_ls = time.time() - t0
    assert r.returncode == 0, r.stderr
    assert r.stderr == b""
    t0 = time.time()
    r = run(["grep", "-r", "-c", "NO-SUCH-TOKEN-ANYWHERE", ro.mnt])
    t_grep = time.time() - t0
    assert r.returncode == 1, r.stderr  # 1 = ran fine, found nothing
    assert r.stderr == b""
    total = ro.truth.total()
    mb = sum(len(b) for f in ro.truth.bodies.values() for b in f.values()) / 1e6
    report("first ls -R: %.2f s; first grep -r over %d messages (%.1f MB): %.2f s" % (
        t_ls, total, mb, t_grep))
    t0 = time.time()
    run(["grep", "-r", "-c", "NO-SUCH-TOKEN-ANYWHERE", ro.mnt])
    report("second grep -r (cached): %.2f s" % (time.time() - t0))


# --------------------------------------------------------------------------
# tree

def test_folders_match_server_list(ro):
    assert walk_dirs(ro.mnt) == set(ro.truth.folders)
    # the non-ASCII folders are there under their decoded names
    assert os.path.isdir(os.path.join(ro.mnt, "Entwürfe"))
    assert os.path.isdir(os.path.join(ro.mnt, "Привет"))
    assert os.path.isdir(os.path.join(ro.mnt, "Work", "Projects", "Alpha"))


def test_top_level_entries(ro):
    tops = {f.split("/")[0] for f in ro.truth.folders}
    assert set(os.listdir(ro.mnt)) == tops | {TOP_SPECIAL}


def test_noselect_parents_have_no_messages(ro):
    noselect = set(ro.truth.folders) - set(ro.truth.selectable)
    assert {"Work/Projects", "Lists"} <= noselect
    for f in noselect:
        assert eml_files(folder_path(ro.mnt, f)) == {}, f


def test_empty_folder_is_empty(ro):
    assert os.listdir(os.path.join(ro.mnt, "Archive", "Empty")) == []


def test_modes_and_owner(ro):
    for root, dirs, files in os.walk(ro.mnt):
        if root == ro.mnt and TOP_SPECIAL in dirs:
            dirs.remove(TOP_SPECIAL)
        st = os.lstat(root)
        assert stat.S_ISDIR(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o700, (root, oct(st.st_mode))
        assert st.st_uid == os.getuid() and st.st_gid == os.getgid(), root
        for n in files:
            p = os.path.join(root, n)
            st = os.lstat(p)
            assert stat.S_ISREG(st.st_mode), p
            assert stat.S_IMODE(st.st_mode) == 0o600, (p, oct(st.st_mode))
            assert st.st_uid == os.getuid(), p


# --------------------------------------------------------------------------
# bytes, sizes, dates

def test_message_bytes_match_server(ro):
    problems = []
    for f in ro.truth.selectable:
        files = eml_files(folder_path(ro.mnt, f))
        got = collections.Counter()
        for name, p in files.items():
            data = read(p)
            st = os.stat(p)
            if st.st_size != len(data):
                problems.append("%s/%s: st_size %d, read %d bytes" % (f, name, st.st_size, len(data)))
            got[sha(data)] += 1
        want = ro.truth.shas(f)
        if got != want:
            problems.append("%s: %d files, server has %d; %d missing, %d unexpected" % (
                f, sum(got.values()), sum(want.values()), sum((want - got).values()),
                sum((got - want).values())))
    assert not problems, "\n".join(problems)


def test_st_size_matches_server_before_reading(server, make_user, mount):
    """st_size is exact even for a message never read (fresh mount, fresh cache)."""
    u = make_user("size")
    c = corpus_mod.corpus(25, seed=7, big=1, odd=False)
    u.load(c)
    acct = u.account()
    want = {}
    for f in acct.selectable_folders():
        for b in acct.fetch_all(f).values():
            want.setdefault(f, collections.Counter())[len(b)] += 1
    m = mount(u)
    for f, sizes in want.items():
        got = collections.Counter(os.stat(p).st_size for p in eml_files(folder_path(m.path, f)).values())
        assert got == sizes, f


def test_mtime_is_internaldate(ro):
    problems = []
    for f in ro.truth.selectable:
        want = collections.Counter((sha(ro.truth.bodies[f][u]), ro.truth.meta[f][u]["internaldate"])
                                   for u in ro.truth.bodies[f])
        got = collections.Counter()
        for p in eml_files(folder_path(ro.mnt, f)).values():
            got[(sha(read(p)), int(os.stat(p).st_mtime))] += 1
        if got != want:
            problems.append("%s: %s" % (f, sorted((want - got).items())[:3]))
    assert not problems, "\n".join(problems)


def test_partial_and_random_reads(ro):
    """pread at odd offsets and sizes (and past EOF) of the largest message."""
    f, uid = max(((f, u) for f in ro.truth.selectable for u in ro.truth.bodies[f]),
                 key=lambda fu: len(ro.truth.bodies[fu[0]][fu[1]]))
    want = ro.truth.bodies[f][uid]
    assert len(want) > 1_000_000
    path = [p for p in eml_files(folder_path(ro.mnt, f)).values() if os.stat(p).st_size == len(want)]
    assert len(path) >= 1
    fd = os.open(path[0], os.O_RDONLY)
    try:
        for off, n in [(0, 1), (1, 7), (4095, 2), (4096, 4096), (131071, 200000),
                       (len(want) - 1, 10), (len(want) - 5000, 5000), (len(want), 10),
                       (len(want) + 12345, 10), (777777, 1)]:
            assert os.pread(fd, n, off) == want[off:off + n], (off, n)
    finally:
        os.close(fd)
    with open(path[0], "rb") as fh:
        with mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ) as mm:
            assert sha(mm[:]) == sha(want)


def test_concurrent_reads(ro):
    """Eight threads reading every message at once get the server's bytes."""
    jobs = []
    for f in ro.truth.selectable:
        for p in eml_files(folder_path(ro.mnt, f)).values():
            jobs.append((f, p))
    want = {f: ro.truth.shas(f) for f in ro.truth.selectable}
    results, errors = [], []
    lock = threading.Lock()

    def worker(part):
        for f, p in part:
            try:
                h = sha(read(p))
            except OSError as e:
                with lock:
                    errors.append("%s: %s" % (p, e))
                continue
            with lock:
                results.append((f, h))
    threads = [threading.Thread(target=worker, args=(jobs[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors[:5]
    got = collections.defaultdict(collections.Counter)
    for f, h in results:
        got[f][h] += 1
    assert dict(got) == {f: c for f, c in want.items() if c}


# --------------------------------------------------------------------------
# names

def _bad_name_reasons(name_bytes):
    reasons = []
    try:
        name = name_bytes.decode("utf-8")
    except UnicodeDecodeError:
        return ["invalid UTF-8"]
    if not name.endswith(".eml"):
        reasons.append("does not end in .eml")
    if name.startswith("."):
        reasons.append("leading dot")
    if len(name_bytes) > 255:
        reasons.append("%d bytes" % len(name_bytes))
    if "/" in name or "\0" in name:
        reasons.append("slash or NUL")
    if any(unicodedata.category(ch) == "Cc" for ch in name):
        reasons.append("control character")
    return reasons


def test_names_are_sane(ro):
    problems = []
    for f in ro.truth.selectable:
        d = os.fsencode(folder_path(ro.mnt, f))
        children = {os.fsencode(c.split("/")[-1]) for c in ro.truth.folders
                    if c.rpartition("/")[0] == f}
        names = [n for n in os.listdir(d) if n not in children]
        if len(names) != len(set(names)):
            problems.append("%s: duplicate names" % f)
        if len(names) != len(ro.truth.bodies[f]):
            problems.append("%s: %d names for %d messages" % (f, len(names), len(ro.truth.bodies[f])))
        for n in names:
            r = _bad_name_reasons(n)
            if r:
                problems.append("%s/%r: %s" % (f, n, ", ".join(r)))
    assert not problems, "\n".join(problems)


def test_names_stable_between_listings(ro):
    for f in ("INBOX", "Odd", "Lists/debian-devel"):
        a = sorted(os.listdir(folder_path(ro.mnt, f)))
        b = sorted(os.listdir(folder_path(ro.mnt, f)))
        assert a == b


def test_known_readable_names(ro):
    inbox = folder_path(ro.mnt, "INBOX")
    names = set(os.listdir(inbox))
    for key, msg in ro.corpus.known.items():
        assert msg.expected_name in names, (key, msg.expected_name, sorted(names)[:10])
        assert read(os.path.join(inbox, msg.expected_name)) == \
            ro.truth.bodies["INBOX"][ro.uids["INBOX"][msg.index]]


def test_odd_folder_stays_inside(ro):
    odd = folder_path(ro.mnt, "Odd")
    entries = os.listdir(odd)
    assert len(entries) == len(ro.corpus.in_folder("Odd")) == len(ro.truth.bodies["Odd"])
    for n in entries:
        p = os.path.join(odd, n)
        assert n not in (".", "..")
        assert os.path.dirname(p) == odd
        assert os.path.realpath(p) == os.path.join(os.path.realpath(odd), n)
        assert stat.S_ISREG(os.lstat(p).st_mode), n
    # nothing escaped into the root or elsewhere
    assert not os.path.exists(os.path.join(ro.mnt, "etc"))
    assert not os.path.exists(os.path.join(ro.mnt, "root"))
    assert walk_dirs(ro.mnt) == set(ro.truth.folders)
    assert ro.truth.shas("Odd") == collections.Counter(sha(read(os.path.join(odd, n))) for n in entries)


def test_identical_messages_get_distinct_names(ro):
    names = [n for n in os.listdir(folder_path(ro.mnt, "Odd"))
             if n.startswith("2025-06-05 09.00 Dup Sender - Same")]
    assert len(names) == 5, sorted(os.listdir(folder_path(ro.mnt, "Odd")))
    assert "2025-06-05 09.00 Dup Sender - Same.eml" in names


def test_long_subjects_truncated_to_255_bytes(ro):
    odd = folder_path(ro.mnt, "Odd")
    names = [os.fsencode(n) for n in os.listdir(odd)]
    assert all(len(n) <= 255 for n in names)
    # the 2,000-character subjects are there, cut short
    assert any(b"\xc3\x9cberl\xc3\xa4nge" in n for n in names)
    assert any(b"xxxxxxxxxxxxxxxxxxxxxxxx" in n for n in names)


def test_names_stable_across_remount(make_user, mount, mounter):
    u = make_user("stable")
    c = corpus_mod.corpus(20, seed=11, big=0)
    u.load(c)
    m = mount(u)
    before = {f: sorted(os.listdir(folder_path(m.path, f))) for f in ("INBOX", "Odd")}
    cache = m.cache_dir
    problems = m.unmount()
    assert not problems, "\n".join(problems)
    m2 = mount(u, cache_dir=cache)
    after = {f: sorted(os.listdir(folder_path(m2.path, f))) for f in ("INBOX", "Odd")}
    assert before == after


def test_names_switch_on_a_cache_makes_names_again(make_user, mount):
    """A mount with another names= than the cache was made with shows every message under
    the new scheme: IMAP's folders are a cache, made again (fs/main.c)."""
    u = make_user("switch")
    u.load(corpus_mod.corpus(20, seed=11, big=0))
    m = mount(u)
    before = {f: sorted(os.listdir(folder_path(m.path, f))) for f in ("INBOX", "Odd")}
    assert all(not re.fullmatch(r"\d+\.eml", n) for names in before.values() for n in names)
    cache = m.cache_dir
    problems = m.unmount()
    assert not problems, "\n".join(problems)
    m2 = mount(u, cache_dir=cache, names="uid")
    after = {f: sorted(os.listdir(folder_path(m2.path, f))) for f in ("INBOX", "Odd")}
    for f in before:
        assert len(after[f]) == len(before[f]) > 0, f
        assert all(re.fullmatch(r"\d+\.eml", n) for n in after[f]), (f, after[f][:5])


def test_names_uid(ro, module_mount):
    m = module_mount(ro.user, names="uid")
    problems = []
    for f in ro.truth.selectable:
        names = set(eml_files(folder_path(m.path, f)))
        want = {"%d.eml" % u for u in ro.truth.bodies[f]}
        if names != want:
            problems.append("%s: extra %s missing %s" % (f, sorted(names - want)[:5],
                                                         sorted(want - names)[:5]))
            continue
        for u, body in ro.truth.bodies[f].items():
            if read(os.path.join(folder_path(m.path, f), "%d.eml" % u)) != body:
                problems.append("%s/%d.eml: bytes differ" % (f, u))
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------
# xattrs

def _message_id(raw):
    m = re.search(rb"^Message-ID:[ \t]*(.*?)\r?$", raw.split(b"\r\n\r\n", 1)[0], re.I | re.M)
    return m.group(1).strip().decode() if m else None


def test_xattrs(ro):
    problems = []
    for f in ro.truth.selectable:
        bodies, meta = ro.truth.bodies[f], ro.truth.meta[f]
        seen_uids = set()
        for name, p in eml_files(folder_path(ro.mnt, f)).items():
            data = read(p)
            try:
                names = set(os.listxattr(p))
                uid = int(os.getxattr(p, "user.mail.uid"))
                flags = os.getxattr(p, "user.mail.flags").decode()
                mime = os.getxattr(p, "user.mime_type")
                mid = os.getxattr(p, "user.mail.message_id").decode()
            except OSError as e:
                problems.append("%s/%s: %s" % (f, name, e))
                continue
            want_names = {"user.mail.flags", "user.mail.uid", "user.mail.message_id",
                          "user.mime_type"}
            if not want_names <= names:
                problems.append("%s/%s: listxattr %s" % (f, name, sorted(names)))
            if bodies.get(uid) != data:
                problems.append("%s/%s: user.mail.uid=%d but its bytes are not that message" % (
                    f, name, uid))
                continue
            seen_uids.add(uid)
            if set(flags.split()) - {"\\Recent"} != set(meta[uid]["flags"]):
                problems.append("%s/%s: flags %r, server %s" % (f, name, flags,
                                                                sorted(meta[uid]["flags"])))
            if mime != b"message/rfc822":
                problems.append("%s/%s: user.mime_type=%r" % (f, name, mime))
            want_mid = _message_id(data)
            if want_mid and mid.strip().strip("<>") != want_mid.strip("<>"):
                problems.append("%s/%s: message_id %r, header %r" % (f, name, mid, want_mid))
        if seen_uids != set(bodies):
            problems.append("%s: user.mail.uid covers %d of %d UIDs" % (f, len(seen_uids), len(bodies)))
    assert not problems, "\n".join(problems[:40])


def test_getfattr_dump(ro):
    inbox = folder_path(ro.mnt, "INBOX")
    name = ro.corpus.known["hello"].expected_name
    r = run(["getfattr", "-d", "--absolute-names", os.path.join(inbox, name)])
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    out = r.stdout.decode()
    uid = ro.uids["INBOX"][ro.corpus.known["hello"].index]
    assert 'user.mail.uid="%d"' % uid in out
    assert 'user.mime_type="message/rfc822"' in out
    assert "user.mail.flags=" in out
    assert "user.mail.message_id=" in out
    # a recursive dump over a folder and the special files is error-free
    r = run(["getfattr", "-R", "-d", "--absolute-names", folder_path(ro.mnt, "Odd"),
             os.path.join(ro.mnt, TOP_SPECIAL)])
    assert r.returncode == 0, r.stderr
    assert r.stderr == b""


def test_getxattr_missing_and_size_probe(ro):
    p = os.path.join(folder_path(ro.mnt, "INBOX"), ro.corpus.known["hello"].expected_name)
    with pytest.raises(OSError) as e:
        os.getxattr(p, "user.no.such.attribute")
    assert e.value.errno == errno.ENODATA
    # getfattr/libattr probe the size first; a value must come back whole
    assert os.getxattr(p, "user.mime_type") == b"message/rfc822"


# --------------------------------------------------------------------------
# standard tools

def _files_with(mnt, folder_index_list, ro):
    """Paths in the mount of the corpus messages at (folder, index)."""
    want = collections.Counter()
    for folder, idx in folder_index_list:
        want[(folder, sha(ro.truth.bodies[folder][ro.uids[folder][idx]]))] += 1
    paths = set()
    for (folder, h), _n in want.items():
        for p in eml_files(folder_path(mnt, folder)).values():
            if sha(read(p)) == h:
                paths.add(p)
    return paths


def test_grep_finds_planted_tokens(ro):
    assert len(ro.corpus.manifest) >= 8
    problems = []
    for token, where in sorted(ro.corpus.manifest.items()):
        r = run(["grep", "-rlF", "--", token, ro.mnt], env=dict(os.environ, LC_ALL="C"))
        if r.stderr:
            problems.append("%s: grep stderr %r" % (token, r.stderr[:300]))
        got = {os.fsdecode(p) for p in r.stdout.split(b"\n") if p}
        want = _files_with(ro.mnt, where, ro)
        if got != want or r.returncode != 0:
            problems.append("%s: rc %d, found %s, want %s" % (token, r.returncode, sorted(got),
                                                             sorted(want)))
    for token in ro.corpus.hidden_tokens:
        r = run(["grep", "-rlF", "--", token, ro.mnt])
        if r.returncode != 1 or r.stdout or r.stderr:
            problems.append("hidden %s: rc %d out %r err %r" % (token, r.returncode, r.stdout,
                                                               r.stderr))
    assert not problems, "\n".join(problems)


def test_find_counts_all_messages(ro):
    r = run(["find", ro.mnt, "-name", "*.eml", "-print0"])
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    n = len([p for p in r.stdout.split(b"\0") if p])
    assert n == ro.truth.total()
    r = subprocess.run("find %s -name '*.eml' | wc -l" % subprocess.list2cmdline([ro.mnt]),
                       shell=True, capture_output=True, timeout=300)
    assert int(r.stdout) == ro.truth.total()


def test_ls_R_and_du_without_errors(ro):
    for argv in (["ls", "-lR", ro.mnt], ["ls", "-laR", ro.mnt], ["du", "-s", ro.mnt],
                 ["du", "-a", ro.mnt], ["stat", os.path.join(ro.mnt, TOP_SPECIAL, "status")]):
        r = run(argv)
        assert r.returncode == 0, (argv, r.stderr)
        assert r.stderr == b"", (argv, r.stderr)


def test_rsync_backup_is_identical(ro, tmp_path, report):
    backup = tmp_path / "backup"
    t0 = time.time()
    r = run(["rsync", "-a", ro.mnt + "/", str(backup) + "/"], timeout=600)
    report("rsync -a of the whole mount: %.2f s" % (time.time() - t0))
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert r.stderr == b"", r.stderr
    assert walk_dirs(str(backup)) == set(ro.truth.folders)
    problems = []
    for f in ro.truth.selectable:
        files = eml_files(folder_path(str(backup), f))
        mfiles = eml_files(folder_path(ro.mnt, f))
        if set(files) != set(mfiles):
            problems.append("%s: names differ from the mount" % f)
        got = collections.Counter(sha(read(p)) for p in files.values())
        if got != ro.truth.shas(f):
            problems.append("%s: backup bytes differ from the server" % f)
        for n, p in files.items():
            if n in mfiles and int(os.stat(p).st_mtime) != int(os.stat(mfiles[n]).st_mtime):
                problems.append("%s/%s: mtime not preserved" % (f, n))
    assert not problems, "\n".join(problems)
    status = (backup / TOP_SPECIAL / "status").read_text()
    assert "state:" in status


def test_tools_as_ordinary_user(ro, module_mount):
    """A user who is not root (so file modes matter) mounts and walks the mount with
    the usual tools without a single error message."""
    ids = ordinary_user()
    if run(["sh", "-c", "test -r /dev/fuse && test -w /dev/fuse"], as_user=ids).returncode:
        pytest.skip("/dev/fuse is not usable by uid %d here (mode %o)" % (
            ids[0], stat.S_IMODE(os.stat("/dev/fuse").st_mode)))
    m = module_mount(ro.user, as_user=ids)
    backup = os.path.join(m.workdir, "backup")
    os.makedirs(backup)
    os.chown(backup, *ids)
    for argv, ok in ((["ls", "-laR", m.path], (0,)),
                     (["grep", "-r", "-c", "NO-SUCH-TOKEN-ANYWHERE", m.path], (1,)),
                     (["find", m.path, "-type", "f"], (0,)),
                     (["du", "-s", m.path], (0,)),
                     (["getfattr", "-R", "-d", "--absolute-names", m.path], (0,)),
                     (["rsync", "-a", m.path + "/", backup + "/"], (0,))):
        r = run(argv, as_user=ids)
        assert r.returncode in ok and r.stderr == b"", (argv, r.returncode, r.stderr[:500])
    r = run(["grep", "-rlF", "INVOICE-7731", m.path], as_user=ids)
    assert len(r.stdout.splitlines()) == 1, r
    # owned by the mounting user, 0600 / 0700
    r = run(["stat", "-c", "%u %g %a %F", m.path, os.path.join(m.path, "INBOX"),
             os.path.join(m.path, "INBOX", ro.corpus.known["hello"].expected_name)], as_user=ids)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert lines == ["%d %d 700 directory" % ids, "%d %d 700 directory" % ids,
                     "%d %d 600 regular file" % ids], lines


# --------------------------------------------------------------------------
# .mailfs

def test_status_file(ro, server):
    hello = os.path.join(folder_path(ro.mnt, "INBOX"), ro.corpus.known["hello"].expected_name)
    if os.path.exists(hello):
        read(hello)  # so that something is cached
    p = os.path.join(ro.mnt, TOP_SPECIAL, "status")
    text = read(p).decode()
    st = os.stat(p)
    assert stat.S_ISREG(st.st_mode)
    keys = {}
    for line in text.splitlines():
        k, sep, v = line.partition(":")
        assert sep, "not a key: value line: %r" % line
        keys[k.strip()] = v.strip()
    for k in ("state", "server", "pending", "cache_bytes", "last_sync"):
        assert k in keys, (k, text)
    assert keys["state"] == "online"
    assert "127.0.0.1" in keys["server"]
    assert keys["pending"] == "0"
    assert re.fullmatch(r"\d+", keys["cache_bytes"]), keys["cache_bytes"]
    assert int(keys["cache_bytes"]) > 0  # everything has been read by now
    assert keys["last_sync"] not in ("", "never")


def test_special_files_readable(ro):
    """.mailfs entries can be stat'ed and read by their owner: grep -r, rsync and
    file managers meet them too (root ignores modes, an ordinary user does not)."""
    d = os.path.join(ro.mnt, TOP_SPECIAL)
    st = os.stat(d)
    assert stat.S_ISDIR(st.st_mode) and st.st_mode & 0o500 == 0o500, oct(st.st_mode)
    problems = []
    for n in sorted(os.listdir(d)):
        p = os.path.join(d, n)
        st = os.lstat(p)
        if not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):
            problems.append("%s: not a regular file (%o)" % (n, st.st_mode))
        if stat.S_ISREG(st.st_mode):
            if not st.st_mode & 0o400:
                problems.append("%s: mode %o, not readable by its owner" % (n, stat.S_IMODE(st.st_mode)))
            try:
                with open(p, "rb") as f:
                    f.read()
            except OSError as e:
                problems.append("%s: %s" % (n, e))
    assert not problems, "\n".join(problems)


def test_status_size_matches_content(ro):
    """Tools trust st_size: a cp/rsync of the status file must not come out empty or cut."""
    p = os.path.join(ro.mnt, TOP_SPECIAL, "status")
    for _ in range(3):
        size = os.stat(p).st_size
        data = read(p)
        if size == len(data):
            break
        time.sleep(1.1)  # last_sync may have changed between the two calls
    assert size == len(data) and size > 0


def test_status_many_concurrent_readers(ro):
    """Status opens, short reads and closes racing on many threads (scripts poll it,
    file managers preview it): every read gets the whole text, and the daemon's output
    stays clean (the mount fixture fails the test on any sanitizer report)."""
    p = os.path.join(ro.mnt, TOP_SPECIAL, "status")
    errors = []

    def reader():
        try:
            for _ in range(300):
                fd = os.open(p, os.O_RDONLY)
                try:
                    chunks = []
                    while True:
                        b = os.read(fd, 7)  # many READs per open
                        if not b:
                            break
                        chunks.append(b)
                finally:
                    os.close(fd)
                text = b"".join(chunks).decode()
                if not text.startswith("state:") or not text.endswith("\n"):
                    errors.append(text)
        except OSError as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert not ro.mount.suspicious_lines()


# --------------------------------------------------------------------------
# nothing that isn't there

@pytest.mark.parametrize("name", [
    ".hidden", ".Trash", ".Trash-0", "autorun.inf", ".xdg-volume-info", "desktop.ini",
    ".directory", "INBOX/.hidden", "INBOX/autorun.inf", "INBOX/.DS_Store", "INBOX/nope.eml",
    "INBOX/1.eml", "nonexistent/x", "Odd/..eml", ".mailfs/nope"])
def test_probe_nonexistent(ro, name):
    p = os.path.join(ro.mnt, name)
    for _ in range(2):  # the second time exercises the negative cache
        with pytest.raises(FileNotFoundError):
            os.stat(p)
        with pytest.raises(FileNotFoundError):
            open(p, "rb")


# --------------------------------------------------------------------------
# read-only mount (-o ro): every change fails with EROFS, the server is unchanged

def _expect_erofs(fn, *args):
    with pytest.raises(OSError) as e:
        fn(*args)
    assert e.value.errno == errno.EROFS, (fn, args, e.value)


def test_ro_mount_refuses_changes(ro, module_mount):
    m = module_mount(ro.user, options=["ro"])
    mnt = m.path
    inbox = folder_path(mnt, "INBOX")
    name = ro.corpus.known["hello"].expected_name
    msg = os.path.join(inbox, name)
    before = ro.acct.snapshot()
    _expect_erofs(lambda: open(os.path.join(inbox, "new.eml"), "wb"))
    _expect_erofs(lambda: open(msg, "r+b"))
    _expect_erofs(lambda: open(msg, "ab"))
    _expect_erofs(os.mkdir, os.path.join(mnt, "NewFolder"))
    _expect_erofs(os.mkdir, os.path.join(inbox, "Sub"))
    _expect_erofs(os.unlink, msg)
    _expect_erofs(os.rmdir, folder_path(mnt, "Archive/Empty"))
    _expect_erofs(os.rename, msg, os.path.join(folder_path(mnt, "Archive"), name))
    _expect_erofs(os.rename, msg, os.path.join(inbox, "renamed.eml"))
    _expect_erofs(os.rename, folder_path(mnt, "Archive/Empty"), os.path.join(mnt, "Moved"))
    _expect_erofs(os.setxattr, msg, "user.mail.flags", b"\\Seen \\Flagged")
    _expect_erofs(os.truncate, msg, 0)
    _expect_erofs(os.chmod, msg, 0o644)
    _expect_erofs(os.utime, msg, (0, 0))
    _expect_erofs(os.symlink, "x", os.path.join(inbox, "link"))
    for argv in (["touch", os.path.join(inbox, "x.eml")], ["mkdir", os.path.join(mnt, "D")],
                 ["rm", "-f", msg], ["mv", msg, folder_path(mnt, "Archive")],
                 ["setfattr", "-n", "user.mail.flags", "-v", "\\Flagged", msg],
                 ["cp", msg, folder_path(mnt, "Archive")]):
        r = run(argv, env=dict(os.environ, LC_ALL="C"))
        assert r.returncode != 0, argv
        assert b"Read-only file system" in r.stderr, (argv, r.stderr)
    time.sleep(0.5)
    assert ro.acct.snapshot() == before
    assert ro.acct.snapshot() == ro.snapshot_before


def test_ro_mount_still_reads(ro, module_mount):
    m = module_mount(ro.user, options=["ro"])
    for f in ("INBOX", "Entwürfe"):
        got = collections.Counter(sha(read(p)) for p in eml_files(folder_path(m.path, f)).values())
        assert got == ro.truth.shas(f)


# --------------------------------------------------------------------------
# other ways to mount

def test_starttls_mount(ro, module_mount):
    m = module_mount(ro.user, scheme="imap")
    assert m.source.startswith("imap://")
    for f in ("INBOX", "Привет"):
        got = collections.Counter(sha(read(p)) for p in eml_files(folder_path(m.path, f)).values())
        assert got == ro.truth.shas(f)
    assert m.status()["state"] == "online"


def test_detached_mount(make_user, mount):
    """Without -f the command returns 0 only once the mount is usable."""
    u = make_user("detach")
    u.append_many("INBOX", [corpus_mod.corpus(3, seed=5, big=0, odd=False).known["hello"]])
    m = mount(u, foreground=False)
    assert is_mounted(m.path)
    names = os.listdir(os.path.join(m.path, "INBOX"))
    assert names == ["2025-06-02 10.00 Smoke - Hello.eml"]
    assert m.status()["state"] == "online"
    problems = m.unmount()
    assert not problems, "\n".join(problems)
    assert not is_mounted(m.path)


# --------------------------------------------------------------------------
# \Seen must not change from all that reading (kept late in the module)

def test_reading_never_sets_seen(ro, server):
    for f in ro.truth.selectable:  # read everything once more, to be sure
        for p in eml_files(folder_path(ro.mnt, f)).values():
            read(p)
    time.sleep(0.5)
    after = {f: server.doveadm_flags(ro.user.name, f) for f in ro.truth.selectable}
    assert after == ro.flags_before
    imap_after = {f: ro.acct.all_flags(f) for f in ro.truth.selectable}
    assert imap_after == {f: {u: m["flags"] for u, m in ro.truth.meta[f].items()}
                          for f in ro.truth.selectable}
    assert ro.acct.snapshot() == ro.snapshot_before


# --------------------------------------------------------------------------
# failures: non-zero exit, exactly one informative line, nothing left behind

def _one_line_failure(a, pattern):
    import inspect
    note("%-45s rc=%s %.1fs stderr=%r" % (inspect.stack()[1].function, a.rc, a.seconds,
                                          a.stderr.strip()[:200]))
    assert a.rc is not None, "mount command hung (%.0f s): %r" % (a.seconds, a)
    assert a.rc != 0, a
    assert len(a.lines) == 1, "want exactly one line on stderr, got: %r" % a.stderr
    assert re.search(pattern, a.lines[0], re.I), "not informative: %r" % a.lines[0]
    assert not a.leftover, a.leftover
    assert not is_mounted(a.mnt)


def test_fail_wrong_password(user, try_mount, tmp_path):
    pf = tmp_path / "pw"
    pf.write_text("not-the-password\n")
    pf.chmod(0o600)
    a = try_mount(user, password_file=str(pf))
    _one_line_failure(a, r"auth|password|login|credential|rejected")


def test_fail_untrusted_certificate(user, try_mount):
    a = try_mount(user, cafile=None)
    _one_line_failure(a, r"certificat|verif|trust|TLS|SSL")


def test_fail_untrusted_certificate_starttls(user, try_mount):
    a = try_mount(user, scheme="imap", cafile=None)
    _one_line_failure(a, r"certificat|verif|trust|TLS|SSL")


def test_fail_unknown_host(user, try_mount):
    a = try_mount(user, source="imaps://%s@nonexistent.invalid:10993" % user.name)
    _one_line_failure(a, r"nonexistent\.invalid|resolv|host|name|address")
    assert a.seconds < 30


def test_fail_connection_refused(user, try_mount):
    import mailserver
    port = mailserver.free_port()
    a = try_mount(user, source="imaps://%s@127.0.0.1:%d" % (user.name, port))
    _one_line_failure(a, r"connect|refused|unreachable|127\.0\.0\.1")


def test_fail_missing_mountpoint(user, try_mount, tmp_path):
    mnt = str(tmp_path / "does-not-exist")
    a = try_mount(user, mnt=mnt, make_mnt=False)
    _one_line_failure(a, r"mount ?point|does-not-exist|no such|not exist|not found|directory")
    assert not os.path.exists(mnt)


def test_fail_password_file_group_readable(user, try_mount, tmp_path):
    pf = tmp_path / "pw"
    pf.write_text(user.password + "\n")
    pf.chmod(0o644)
    a = try_mount(user, password_file=str(pf))
    _one_line_failure(a, r"password.?file|permission|mode|readable|0600|group|world")


def test_fail_password_file_missing(user, try_mount, tmp_path):
    a = try_mount(user, password_file=str(tmp_path / "no-such-file"))
    _one_line_failure(a, r"password|no-such-file|no such")


def test_fail_no_password_at_all(user, try_mount):
    """No password option, no keyring, stdin not a terminal: refuse, don't prompt or hang."""
    a = try_mount(user, password_file=None, timeout=30)
    _one_line_failure(a, r"password")


def test_fail_server_without_starttls(plain_server, make_user, try_mount):
    u = make_user("nostls", srv=plain_server)
    log_before = len(plain_server.log())
    a = try_mount(u, source="imap://%s@127.0.0.1:%d" % (u.name, plain_server.ports["imap"]),
                  cafile=None, srv=plain_server)
    _one_line_failure(a, r"STARTTLS|TLS")
    # and the password never went over the plaintext connection
    log = plain_server.log()[log_before:]
    assert "user=<%s>" % u.name not in log, "a login was attempted without TLS:\n" + log


def test_fail_certificate_name_mismatch(user, server, try_mount):
    """A certificate the CA vouches for, but for another name (the server's cert is
    for 127.0.0.1 and localhost; we reach it as 127.0.0.2): refused even with cafile."""
    from faultproxy import FaultProxy
    proxy = FaultProxy(("127.0.0.1", server.ports["imaps"]), host="127.0.0.2").start()
    try:
        a = try_mount(user, source="imaps://%s@127.0.0.2:%d" % (user.name, proxy.port))
    finally:
        proxy.stop()
    _one_line_failure(a, r"certificat|host ?name|mismatch|127\.0\.0\.2")


def test_fail_unwritable_cache_dir(user, try_mount, tmp_path):
    """A cache directory that cannot be created (its parent is a file): the command
    fails before mounting, naming the directory."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    a = try_mount(user, cache_dir=str(blocker / "cache"))
    _one_line_failure(a, r"cache|not-a-dir")


def test_fail_bad_source(user, try_mount):
    a = try_mount(user, source="http://%s@127.0.0.1:1" % user.name)
    _one_line_failure(a, r"source|url|scheme|imap|http")


def test_mount_through_mount_fuse3(user, server, mailfs_bin, tmp_path):
    """What /etc/fstab does: `mount -t fuse.mailfs SOURCE MNT -o ...` runs
    mount.fuse3, which runs `mailfs SOURCE MNT -o OPTS` (mailfs from PATH)
    with generic mount options mixed in."""
    raw = (b"From: Fstab <fstab@example.org>\r\nSubject: from fstab\r\n"
           b"Date: Mon, 02 Jun 2025 10:00:00 +0000\r\n\r\nhello\r\n")
    user.append_many("INBOX", [raw])
    pw = tmp_path / "pw"
    server.password_file_for(user.name, str(pw))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    os.symlink(mailfs_bin, bindir / "mailfs")
    env = dict(os.environ, PATH="%s:%s" % (bindir, os.environ.get("PATH", "/usr/bin:/bin")),
               TZ="UTC")
    opts = "password_file=%s,cafile=%s,cache_dir=%s,noatime,nosuid,nodev,rw" % (
        pw, server.cert, tmp_path / "cache")
    r = subprocess.run(["mount.fuse3", user.url(), str(mnt), "-t", "mailfs", "-o", opts],
                       env=env, capture_output=True, text=True, timeout=60)
    try:
        assert r.returncode == 0, r.stderr
        fields = [l.split() for l in open("/proc/mounts") if l.split()[1] == str(mnt)]
        assert fields, "no mount at %s" % mnt
        assert fields[0][2] == "fuse.mailfs"
        assert fields[0][0] == user.url()
        inbox = os.listdir(mnt / "INBOX")
        assert any(n.endswith("Fstab - from fstab.eml") for n in inbox), inbox
    finally:
        subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True)
