"""Hostile input: a scripted IMAP server (tests/hostile_server.py) that lies, floods,
stalls and injects, against real FUSE mounts of the built binary.

Contract: /work/shared/SPEC.md, "Bad input and failure" -- a malformed or hostile server
response, an oversized literal, a subject full of `/`, `..`, control characters or invalid
UTF-8, a server that closes mid-transfer: a clear error or a sanitized name, never a crash,
a hang, unbounded memory, or a file outside its folder; every error a user can cause gives
one line naming what failed.

Each test starts its own hostile server (a scenario, on a free port of the private loopback
that run-test.sh gives us) and either
  - runs the detaching mount command and expects it to fail: non-zero exit within a time
    bound, exactly one informative line on stderr, no mount or process left behind, no
    sanitizer report; or
  - mounts with `mailfs -f` in the background and drives the mount with coreutils under
    `timeout`: the operation fails with EIO or succeeds with sanitized names and the
    server's exact bytes; the daemon is still alive afterwards and exits 0 on unmount
    (a signal or a sanitizer report fails the test).

Memory bound asserted: the daemon's peak resident set (VmHWM from /proc/PID/status for a
mounted daemon; ru_maxrss from wait4() for a mount command that fails before detaching)
stays under MEM_BOUND_MB = 200 MB (600 MB for an ASan build, whose shadow memory and
allocator metadata multiply resident memory; the quarantine is capped at 32 MB below).
Why 200 MB: net/client/imap-parser.h checks every length before allocating -- a line is capped at
8 MiB (max_line), and a literal over max_literal (256 MiB as imap-client.c sets it; the
parser's default is 1 GiB) is refused from its `{n}` header, before any byte of it is
buffered.  So a 4 GB literal announcement, a several-hundred-MB
line without CRLF and 100,000 untagged responses may cost at most a few times 8 MiB per
connection (buffer growth plus the parsed tree) on top of the idle daemon (~10-30 MB:
GLib, GMime, SQLite, OpenSSL, 16 FUSE threads), with at most 4 connections (2 workers,
2 IDLE).  Anything that buffers what the server pours out -- the whole line, or the
announced literal -- blows through 200 MB by far (the server pours out 64 MB after the
4 GB announcement and 512 MB of the endless line before it stalls).  For the 4 GB case
we also assert (non-ASan builds) that the daemon's VmPeak, its peak *virtual* size, grew
by less than 1 GiB: an untouched 4 GB malloc() would not show in VmHWM but does in VmPeak.

Run: tests/integration/run-test.sh tests/integration/test_hostile.py   (as root)
     MAILFS_BIN=$PWD/build-asan/mailfs tests/integration/run-test.sh ...  (sanitizers)
"""
import errno
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import is_mounted, _procs_with_arg, REPO

sys.path.insert(0, str(REPO / "tests"))
import hostile_server as hsrv  # noqa: E402

MEM_BOUND_MB = 200
MEM_BOUND_ASAN_MB = 600
VMPEAK_GROWTH_MB = 1024

SANITIZER = re.compile(r"AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|"
                       r"runtime error:|SUMMARY: |Segmentation fault|Aborted")


# --------------------------------------------------------------------------
# environment

def _is_asan(binary):
    try:
        with open(binary, "rb") as f:
            return b"__asan_init" in f.read()
    except OSError:
        return False


@pytest.fixture(scope="module")
def asan(mailfs_bin):
    return _is_asan(mailfs_bin)


@pytest.fixture(scope="module")
def mem_bound(asan):
    return MEM_BOUND_ASAN_MB if asan else MEM_BOUND_MB


@pytest.fixture(scope="module", autouse=True)
def _sanitizer_options(mailfs_bin):
    """Under ASan: a small quarantine (so freed buffers are not counted as live memory
    for long) and stack traces from UBSan.  conftest's Mounter appends log_path."""
    saved = {k: os.environ.get(k) for k in ("ASAN_OPTIONS", "UBSAN_OPTIONS")}
    if _is_asan(mailfs_bin):
        cur = os.environ.get("ASAN_OPTIONS", "")
        if "quarantine_size_mb" not in cur:
            os.environ["ASAN_OPTIONS"] = (cur + ":" if cur else "") + "quarantine_size_mb=32"
        cur = os.environ.get("UBSAN_OPTIONS", "")
        if "print_stacktrace" not in cur:
            os.environ["UBSAN_OPTIONS"] = (cur + ":" if cur else "") + "print_stacktrace=1"
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


class HUser:
    """What conftest's Mounter needs of a user."""

    def __init__(self, srv):
        self.server = srv
        self.name = hsrv.USER
        self.password = hsrv.PASSWORD


class Result:
    """A mount command run to its end (or killed at its time bound)."""

    def __init__(self, rc, stdout, stderr, seconds, maxrss_mb, sanitizer, leftover, mnt):
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr
        self.seconds = seconds
        self.maxrss_mb = maxrss_mb
        self.sanitizer = sanitizer
        self.leftover = leftover
        self.mnt = mnt

    @property
    def lines(self):
        return [ln for ln in self.stderr.splitlines() if ln.strip()]

    def __repr__(self):
        return "<Result rc=%r %.1fs rss=%.0fMB stderr=%r leftover=%r>" % (
            self.rc, self.seconds, self.maxrss_mb, self.stderr, self.leftover)


def _sanitizer_logs(workdir):
    out = []
    for name in sorted(os.listdir(workdir)):
        if name.startswith(("asan.", "ubsan.")):
            with open(os.path.join(workdir, name), "rb") as f:
                out.append(f.read().decode(errors="replace"))
    return "".join(out)


def _status_mb(pid):
    """VmHWM, VmPeak, VmRSS of a process, in MB."""
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmHWM", "VmPeak", "VmRSS"):
                out[k] = int(v.split()[0]) / 1024.0
    return out


class Rig:
    """Hostile servers and mounts for one test."""

    def __init__(self, mounter, tmp_path, report):
        self.mounter = mounter
        self.tmp = tmp_path
        self.report = report
        self.servers = []

    def server(self, scenario="normal", mode="imaps", **kw):
        d = self.tmp / ("srv%d" % len(self.servers))
        srv = hsrv.HostileServer(str(d), scenario, mode=mode, **kw).start()
        self.servers.append(srv)
        return srv

    def mount(self, srv, names="uid", allow=(), options=(), scheme="imaps", debug=False,
              env=None):
        """mailfs -f in the background; returns conftest's Mount (.proc is the daemon)."""
        return self.mounter.mount(HUser(srv), srv=srv, names=names, scheme=scheme,
                                  options=list(options), foreground=True, allow=list(allow),
                                  debug=debug, env=env)

    def attempt(self, srv, scheme="imaps", timeout=90, options=(), debug=False, env=None):
        """The detaching mount command, expected to fail.  Peak RSS comes from wait4()."""
        m = self.mounter
        wd = m._workdir("h")
        mnt = os.path.join(wd, "mnt")
        os.makedirs(mnt)
        argv, _, _, _ = m.command(HUser(srv), mnt, scheme, None, True, True, True, None,
                                  list(options), False, debug, wd, srv)
        env = m.env(wd, env)
        out_p, err_p = os.path.join(wd, "stdout"), os.path.join(wd, "stderr")
        t0 = time.time()
        with open(out_p, "wb") as so, open(err_p, "wb") as se:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=so, stderr=se,
                                    env=env)
        rc, maxrss = None, 0
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                rc = os.waitstatus_to_exitcode(status)
                maxrss = ru.ru_maxrss / 1024.0
                proc.returncode = rc
                break
            if time.time() - t0 > timeout:
                proc.kill()
                _, status, ru = os.wait4(proc.pid, 0)
                proc.returncode = os.waitstatus_to_exitcode(status)
                maxrss = ru.ru_maxrss / 1024.0
                break
            time.sleep(0.02)
        secs = time.time() - t0
        leftover = []
        if is_mounted(mnt):
            leftover.append("a mount was left at %s" % mnt)
            subprocess.run(["fusermount3", "-uz", mnt], capture_output=True)
        pids = [p for p in _procs_with_arg(m.binary, mnt)]
        if pids:
            time.sleep(1)
            pids = [p for p in _procs_with_arg(m.binary, mnt)]
        if pids:
            leftover.append("mailfs processes left running: %s" % pids)
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        with open(out_p, "rb") as f:
            out = f.read().decode(errors="replace")
        with open(err_p, "rb") as f:
            err = f.read().decode(errors="replace")
        return Result(rc, out, err, secs, maxrss, _sanitizer_logs(wd), leftover, mnt)

    def finish(self, m):
        """Unmount now (while the server still answers) and check the daemon's end."""
        probs = m.unmount()
        assert not probs, "\n".join(probs)
        assert m.proc.returncode == 0, "daemon exit status %r" % m.proc.returncode

    def stop(self):
        for s in self.servers:
            s.stop()


@pytest.fixture
def rig(mounter, tmp_path, report):
    # mounter is set up first, so it is torn down last: mounts still alive at the end of a
    # failed test are unmounted after the servers stopped (see Rig.finish for the normal way).
    r = Rig(mounter, tmp_path, report)
    yield r
    r.stop()


# --------------------------------------------------------------------------
# helpers

def P(m, *parts):
    return os.path.join(m.path, *parts)


def sh(args, timeout=30):
    """Run a command under a hard time bound; returns (CompletedProcess, seconds)."""
    t0 = time.time()
    r = subprocess.run(["timeout", "-s", "KILL", str(timeout)] + list(args),
                       capture_output=True, timeout=timeout + 10)
    return r, time.time() - t0


def read_file(path, timeout=30):
    r, secs = sh(["cat", path], timeout)
    return r, secs


def assert_alive(m):
    assert m.proc.poll() is None, "daemon died (status %r):\n%s" % (m.proc.returncode, m.log())
    assert is_mounted(m.path)
    bad = [ln for ln in m.log().splitlines() if SANITIZER.search(ln)]
    assert not bad, "sanitizer/crash output:\n" + "\n".join(bad[:40])


def assert_mem(m, bound, what, report):
    vm = _status_mb(m.proc.pid)
    report("hostile %s: daemon VmHWM %.0f MB, VmPeak %.0f MB (bound %d MB)" % (
        what, vm["VmHWM"], vm["VmPeak"], bound))
    assert vm["VmHWM"] < bound, "%s: peak RSS %.0f MB >= %d MB" % (what, vm["VmHWM"], bound)
    return vm


def one_line_failure(a, pattern, max_seconds=30):
    assert not SANITIZER.search(a.sanitizer), "sanitizer report:\n" + a.sanitizer[:6000]
    assert a.rc is not None and a.seconds < max_seconds, \
        "mount command took %.1f s (bound %d s): %r" % (a.seconds, max_seconds, a)
    assert a.rc > 0, "want a non-zero exit status (not a signal): %r" % a
    assert len(a.lines) == 1, "want exactly one line on stderr, got: %r" % a.stderr
    assert re.search(pattern, a.lines[0], re.I), "not informative: %r" % a.lines[0]
    assert not a.leftover, a.leftover
    assert not is_mounted(a.mnt)


def no_credentials_sent(srv):
    cmds = [c for _, c in srv.commands()]
    assert not any(re.match(r"\S+ (LOGIN|AUTHENTICATE)\b", c, re.I) for c in cmds), cmds


# A walker run in a child process (so a hung FUSE request cannot hang pytest): raw
# readdir(3) through ctypes, because os.listdir/scandir hide "." and ".." entries -- and a
# bogus ".." from the filesystem is exactly what we look for.
WALKER = r'''
import ctypes, hashlib, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
class D(ctypes.Structure):
    _fields_ = [("ino", ctypes.c_uint64), ("off", ctypes.c_int64), ("reclen", ctypes.c_ushort),
                ("type", ctypes.c_ubyte), ("name", ctypes.c_char * 256)]
libc.opendir.restype = ctypes.c_void_p
libc.opendir.argtypes = [ctypes.c_char_p]
libc.readdir.restype = ctypes.POINTER(D)
libc.readdir.argtypes = [ctypes.c_void_p]
libc.closedir.argtypes = [ctypes.c_void_p]
def raw(path):
    d = libc.opendir(path)
    if not d:
        raise OSError(ctypes.get_errno(), "opendir")
    out = []
    try:
        while True:
            ctypes.set_errno(0)
            e = libc.readdir(d)
            if not e:
                if ctypes.get_errno():
                    raise OSError(ctypes.get_errno(), "readdir")
                return out
            out.append(e.contents.name)
    finally:
        libc.closedir(d)
root = os.fsencode(sys.argv[1])
res = {"dirs": {}, "files": {}, "errors": [], "real": {}}
todo = [root]
while todo:
    d = todo.pop()
    try:
        names = raw(d)
    except OSError as e:
        res["errors"].append("readdir %r: %s" % (d, e)); continue
    res["dirs"][d.hex()] = [n.hex() for n in names]
    for n in names:
        if n in (b".", b".."):
            continue
        p = d + b"/" + n
        try:
            st = os.lstat(p)
            res["real"][p.hex()] = os.path.realpath(p).hex()
        except OSError as e:
            res["errors"].append("lstat %r: %s" % (p, e)); continue
        if os.path.isdir(p):
            todo.append(p)
        else:
            try:
                with open(p, "rb") as f:
                    data = f.read()
                res["files"][p.hex()] = {"size": st.st_size, "data": data.hex()}
            except OSError as e:
                res["errors"].append("read %r: %s" % (p, e))
print(json.dumps(res))
'''


class Tree:
    def __init__(self, mnt, res):
        self.mnt = os.fsencode(mnt)
        self.dirs = {bytes.fromhex(k): [bytes.fromhex(n) for n in v]
                     for k, v in res["dirs"].items()}
        self.files = {bytes.fromhex(k): bytes.fromhex(v["data"]) for k, v in res["files"].items()}
        self.sizes = {bytes.fromhex(k): v["size"] for k, v in res["files"].items()}
        self.real = {bytes.fromhex(k): bytes.fromhex(v) for k, v in res["real"].items()}
        self.errors = res["errors"]


def walk(mnt, timeout=60):
    r, secs = sh(["/usr/bin/python3", "-c", WALKER, mnt], timeout)
    assert r.returncode == 0, "walking the mount failed or hung (%.0f s): %r" % (
        secs, r.stderr.decode(errors="replace")[-2000:])
    return Tree(mnt, json.loads(r.stdout))


def bad_name(name, top=False):
    """Why a directory entry name is not acceptable, or None."""
    if b"/" in name or b"\0" in name:
        return "contains / or NUL"
    if len(name) > 255:
        return "longer than 255 bytes"
    try:
        s = name.decode("utf-8")
    except UnicodeDecodeError:
        return "not valid UTF-8"
    if any(ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f for c in s):
        return "has control characters"
    if s.startswith(".") and not (top and s == ".mailfs"):
        return "starts with '.'"
    if s.strip() != s or s == "":
        return "empty or padded with spaces"
    return None


def check_tree(t):
    """Every name sane, exactly one "." and ".." per directory, every path inside."""
    problems = list(t.errors)
    prefix = t.mnt + b"/"
    for d, names in t.dirs.items():
        for special in (b".", b".."):
            if names.count(special) != 1:
                problems.append("%r lists %r %d times" % (d, special, names.count(special)))
        others = [n for n in names if n not in (b".", b"..")]
        if len(set(others)) != len(others):
            problems.append("%r has duplicate names" % d)
        for n in others:
            why = bad_name(n, top=(d == t.mnt))
            if why:
                problems.append("%r in %r: %s" % (n, d, why))
    for p, real in t.real.items():
        if not real.startswith(prefix):
            problems.append("%r resolves outside the mount: %r" % (p, real))
        elif os.path.dirname(real) != os.path.dirname(p):
            problems.append("%r resolves elsewhere: %r" % (p, real))
    return problems


# --------------------------------------------------------------------------
# 1. a literal announcing 4 GB in the body fetch

def test_literal_4g_body_read_fails_fast(rig, mem_bound, asan, report):
    srv = rig.server("literal_4g", mailboxes=[hsrv.inbox(3)])
    m = rig.mount(srv, allow=[r"^mailfs: warning: fetching messages: "])
    r, _ = sh(["ls", P(m, "INBOX")])
    assert r.returncode == 0 and b"1.eml" in r.stdout, r
    base = _status_mb(m.proc.pid)
    r, secs = read_file(P(m, "INBOX", "1.eml"))
    report("hostile literal_4g: cat failed after %.1f s; server poured %s bytes before the "
           "client dropped it" % (secs, getattr(srv.scenario, "poured", "?")))
    assert r.returncode != 0 and b"Input/output error" in r.stderr, r
    assert secs < 20, "EIO took %.1f s" % secs
    assert_alive(m)
    vm = assert_mem(m, mem_bound, "literal_4g", report)
    if not asan:
        assert vm["VmPeak"] - base["VmPeak"] < VMPEAK_GROWTH_MB, \
            "VmPeak grew from %.0f to %.0f MB: was the 4 GB literal reserved?" % (
                base["VmPeak"], vm["VmPeak"])
    # the mount still works for everything else
    r, _ = sh(["cat", P(m, ".mailfs", "status")])
    assert r.returncode == 0 and b"state" in r.stdout, r
    r, _ = sh(["ls", P(m, "INBOX")])
    assert r.returncode == 0 and r.stdout.split() == [b"1.eml", b"2.eml", b"3.eml"], r
    rig.finish(m)


# --------------------------------------------------------------------------
# 2. a never-ending line

def test_endless_line_in_list_fails_mount(rig, mem_bound, report):
    srv = rig.server("endless_line_list")
    a = rig.attempt(srv)
    report("hostile endless LIST line: mount exit %r in %.1f s, peak RSS %.0f MB, server "
           "poured %s bytes: %r" % (a.rc, a.seconds, a.maxrss_mb,
                                    getattr(srv.scenario, "poured", "?"), a.stderr.strip()))
    one_line_failure(a, r"line|long|limit|malformed|response")
    assert a.maxrss_mb < mem_bound, a
    # Names what failed: the server (host) or the step (listing), not just "malformed".
    assert re.search(r"127\.0\.0\.1|list|folder|mailbox", a.lines[0], re.I), \
        "does not say which server or step failed: %r" % a.lines[0]


def test_endless_line_in_body_fetch(rig, mem_bound, report):
    srv = rig.server("endless_line_fetch")
    m = rig.mount(srv, allow=[r"^mailfs: warning: fetching messages: "])
    r, secs = read_file(P(m, "INBOX", "2.eml"), timeout=60)
    report("hostile endless FETCH line: cat failed after %.1f s, server poured %s bytes" % (
        secs, getattr(srv.scenario, "poured", "?")))
    assert r.returncode != 0 and b"Input/output error" in r.stderr, r
    assert secs < 30, "EIO took %.1f s" % secs
    assert_alive(m)
    assert_mem(m, mem_bound, "endless FETCH line", report)
    rig.finish(m)


# --------------------------------------------------------------------------
# 3. 100,000 untagged EXISTS before completions

def test_exists_flood(rig, mem_bound, report):
    n = 100000
    srv = rig.server("exists_flood", count=n, mailboxes=[hsrv.inbox(3)])
    t0 = time.time()
    m = rig.mount(srv)
    t_mount = time.time() - t0
    r, t_ls = sh(["ls", P(m, "INBOX")], 60)
    assert r.returncode == 0 and r.stdout.split() == [b"1.eml", b"2.eml", b"3.eml"], r
    r, t_cat = read_file(P(m, "INBOX", "3.eml"), 60)
    assert r.returncode == 0 and r.stdout == srv.scenario.mailboxes[0].messages[2].body, r
    report("hostile %d EXISTS: mount %.1f s, ls %.1f s, cat %.1f s" % (n, t_mount, t_ls, t_cat))
    assert t_mount + t_ls + t_cat < 60
    assert_alive(m)
    assert_mem(m, mem_bound, "EXISTS flood", report)
    rig.finish(m)


# --------------------------------------------------------------------------
# 4. bodies for UIDs never asked for

def test_wrong_rfc822_size_neither_cuts_nor_pads(rig):
    """A server whose RFC822.SIZE differs from the bytes it sends: the first
    read already gets exactly the body, and stat then shows its true size."""
    mb = hsrv.inbox(4)
    for m in mb.messages:
        m.body = m.body + b"x" * 400 + b"\r\n"
    srv = rig.server("wrong_size", mailboxes=[mb])
    m = rig.mount(srv)
    # stat first: the kernel then holds the announced (wrong) sizes
    announced = [os.stat(P(m, "INBOX", "%d.eml" % u)).st_size for u in (1, 2, 3, 4)]
    assert announced != [len(x.body) for x in mb.messages]
    for uid in (1, 2, 3, 4):
        path = P(m, "INBOX", "%d.eml" % uid)
        r, _ = read_file(path)
        assert r.returncode == 0, r
        assert r.stdout == mb.messages[uid - 1].body, "UID %d: %d bytes read, %d sent" % (
            uid, len(r.stdout), len(mb.messages[uid - 1].body))
    deadline = time.time() + 5
    while time.time() < deadline:
        sizes = [os.stat(P(m, "INBOX", "%d.eml" % u)).st_size for u in (1, 2, 3, 4)]
        if sizes == [len(x.body) for x in mb.messages]:
            break
        time.sleep(0.1)
    assert sizes == [len(x.body) for x in mb.messages]
    # and a second read, now through the page cache, is still exact
    for uid in (1, 2):
        r, _ = read_file(P(m, "INBOX", "%d.eml" % uid))
        assert r.stdout == mb.messages[uid - 1].body
    assert_alive(m)
    rig.finish(m)


def test_unrequested_uids_are_ignored(rig):
    mb = hsrv.inbox(5)
    srv = rig.server("foreign_uid", mailboxes=[mb], foreign_uids=(2, 3))
    m = rig.mount(srv)
    r, _ = sh(["ls", P(m, "INBOX")])
    assert r.returncode == 0 and r.stdout.split() == [b"%d.eml" % u for u in range(1, 6)], r
    # UID 5 first: its batch is {5}, and the server also pushes bodies for 2, 3, 999,
    # 5 + 2^32 (truncates to 5) and one without a UID -- all before the real one.
    for uid in (5, 3, 2, 1, 4):
        r, _ = read_file(P(m, "INBOX", ("%d.eml" % uid)))
        assert r.returncode == 0, r
        assert r.stdout == mb.messages[uid - 1].body, "UID %d has the wrong bytes: %r" % (
            uid, r.stdout[:200])
    r, _ = sh(["stat", P(m, "INBOX", "999.eml")])
    assert r.returncode != 0
    r, _ = sh(["ls", P(m, "INBOX")])
    assert r.stdout.split() == [b"%d.eml" % u for u in range(1, 6)], r
    fetches = [c for _, c in srv.commands() if "BODY.PEEK[]" in c]
    assert fetches and "999" not in " ".join(fetches)
    assert_alive(m)
    rig.finish(m)


# --------------------------------------------------------------------------
# 5. invalid modified UTF-7 in LIST

MUTF7_NAMES = [
    "INBOX",
    "&Jjo",            # unterminated shift
    "&AGE-",           # encodes "a": printable ASCII must be direct
    "a",
    "&Jjo-",           # valid: U+263A
    "&-",              # valid: "&"
    "&2DQ-",           # lone high surrogate
    "&3gA-",           # lone low surrogate
    "&AAA-",           # U+0000
    "&AC8-",           # "/" in disguise
    "&AC4ALg-",        # ".." in disguise
    "&AB8-",           # U+001F, a control character
    "&AIU-",           # U+0085, a C1 control
    "&ZeVnLIqe-",      # valid: Japanese
    "Caf&AOk-",        # valid: Cafe with an acute e
    b"caf\xe9",        # raw 8-bit
    b"&&&&",
    "&*!-",            # not base64
    "&AGEAYgBj",       # unterminated, long
]


def test_invalid_mutf7_names_are_sanitized(rig, mem_bound, report):
    srv = rig.server("names", names=MUTF7_NAMES)
    m = rig.mount(srv)
    t = walk(m.path)
    problems = check_tree(t)
    assert not problems, "\n".join(problems)
    top = sorted(n.decode() for n in t.dirs[t.mnt] if n not in (b".", b".."))
    report("hostile mUTF-7 names shown as: %r" % top)
    # Every mailbox is reachable: each one's unique message appears exactly once.
    _every_mailbox_once(srv, t)
    assert_alive(m)
    assert_mem(m, mem_bound, "mUTF-7 names", report)
    rig.finish(m)


def _every_mailbox_once(srv, t):
    want = {mb.messages[0].body: mb.name for mb in srv.scenario.mailboxes}
    seen = {}
    for p, data in t.files.items():
        if data in want:
            seen.setdefault(data, []).append(p)
    missing = [want[b] for b in want if b not in seen]
    twice = {want[b]: ps for b, ps in seen.items() if len(ps) > 1}
    assert not missing, "mailboxes not shown anywhere in the mount: %r" % missing
    assert not twice, "mailboxes shown more than once: %r" % twice


# --------------------------------------------------------------------------
# 6. mailbox names that try to leave the mount

DOT_NAMES_SLASH = ["INBOX", "..", "a/../b", ".", "../../etc", "/", "/etc", "a//b", "./x",
                   "x/..", "...", "INBOX/..", ".mailfs", ".mailfs/status"]
DOT_NAMES_DOT = ["INBOX", "..", "a/../b", ".", "../../etc", "a..b", ".hidden", "trailing.",
                 "x.y.z", "/", "INBOX..", ".mailfs"]


@pytest.mark.parametrize("delim,names", [("/", DOT_NAMES_SLASH), (".", DOT_NAMES_DOT)],
                         ids=["slash", "dot"])
def test_dotdot_mailbox_names_stay_inside(rig, delim, names, report):
    srv = rig.server("names", names=names, delimiter=delim)
    m = rig.mount(srv)
    t = walk(m.path)
    problems = check_tree(t)
    assert not problems, "\n".join(problems)
    dirs = sorted(os.path.relpath(d, t.mnt).decode() for d in t.dirs)
    report("hostile dot names (delimiter %r) shown as: %r" % (delim, dirs))
    _every_mailbox_once(srv, t)
    # .mailfs is still ours
    r, _ = sh(["cat", P(m, ".mailfs", "status")])
    assert r.returncode == 0 and b"state" in r.stdout, r
    assert_alive(m)
    rig.finish(m)


# --------------------------------------------------------------------------
# 7. ENVELOPE subjects (and sender names) that would make a name outside its folder

HOSTILE_SUBJECTS = [
    b"../../../etc/passwd",
    b"/etc/shadow",
    b"\x00",
    b"A" * 4000,
    b"\xc3\xa9" * 3000,                         # 2-byte characters across the cut
    b"..",
    b".",
    b"",
    None,                                        # NIL
    b".hidden",
    b"=?utf-8?b?Li4vLi4vZXRjL3Bhc3N3ZA==?=",     # "../../etc/passwd", RFC 2047 encoded
    b"=?utf-8?q?a=2Fb=00c=0Ad=0D=1B?=",          # / NUL LF CR ESC, encoded
    b"=?utf-8?b?Li4=?=",                         # "..", encoded
    b"\xff\xfe invalid \xc3 utf-8 \xed\xa0\x80",
    b"line1\r\nline2\ttab",
    b"\x1b[31mred\x1b[0m \x7f \xc2\x85",
    b"same subject",
    b"same subject",
    b"/",
    b"   ",
]
HOSTILE_FROM = [b"../..", b"\x00evil", b"B" * 4000, b"=?utf-8?q?=2E=2E=2F?="]


def test_hostile_subjects_are_sanitized(rig, mem_bound, report):
    srv = rig.server("subjects", subjects=HOSTILE_SUBJECTS, from_names=HOSTILE_FROM)
    msgs = srv.scenario.mailboxes[0].messages
    m = rig.mount(srv, names="readable")
    t = walk(m.path)
    problems = check_tree(t)
    assert not problems, "\n".join(problems)
    inbox = t.mnt + b"/INBOX"
    names = [n for n in t.dirs[inbox] if n not in (b".", b"..")]
    report("hostile subjects: %d names, longest %d bytes, e.g. %r" % (
        len(names), max(len(n) for n in names), sorted(n.decode() for n in names)[:6]))
    assert len(names) == len(msgs), "want %d files in INBOX, got %d" % (len(msgs), len(names))
    for n in names:
        assert n.endswith(b".eml"), n
    # each file is one of the server's messages, each message exactly once, in INBOX
    bodies = sorted(t.files[inbox + b"/" + n] for n in names)
    assert bodies == sorted(x.body for x in msgs)
    assert all(t.sizes[inbox + b"/" + n] == len(t.files[inbox + b"/" + n]) for n in names)
    # the whole tree holds nothing else: no file landed in another folder or the root
    assert {p for p in t.files if not p.startswith(t.mnt + b"/.mailfs/")} == \
        {inbox + b"/" + n for n in names}
    # names are stable between listings
    t2 = walk(m.path)
    assert sorted(t2.dirs[inbox]) == sorted(t.dirs[inbox])
    assert_alive(m)
    assert_mem(m, mem_bound, "subjects", report)
    rig.finish(m)


# --------------------------------------------------------------------------
# 8. the server closes (or stalls) in the middle of a literal

def test_close_mid_literal_eio_then_recovers(rig, report):
    mb = hsrv.inbox(3, body=None)
    for x in mb.messages:
        x.body = x.body + b"X" * 100000
    srv = rig.server("close_mid_literal", mailboxes=[mb])
    srv.scenario.broken = True
    m = rig.mount(srv, allow=[r"^mailfs: warning: fetching messages: "])
    r, secs = read_file(P(m, "INBOX", "1.eml"), timeout=90)
    report("hostile close mid-literal: cat failed after %.1f s (%d broken fetches)" % (
        secs, srv.scenario.broken_fetches))
    assert r.returncode != 0 and b"Input/output error" in r.stderr, r
    assert secs < 20, "EIO took %.1f s" % secs
    assert_alive(m)
    # the server recovers: the same file reads in full
    srv.scenario.broken = False
    r, secs = read_file(P(m, "INBOX", "1.eml"), timeout=90)
    assert r.returncode == 0, r
    assert r.stdout == mb.messages[0].body
    r, _ = read_file(P(m, "INBOX", "3.eml"), timeout=90)
    assert r.returncode == 0 and r.stdout == mb.messages[2].body
    assert_alive(m)
    rig.finish(m)


def test_stall_mid_literal_is_bounded(rig, report):
    """A server that stops sending in the middle of a literal (connection kept open):
    the read must end with EIO after a bounded wait -- here within 150 s, which allows
    mailfs's 30 s I/O timeout (a silent connection is not retried)."""
    mb = hsrv.inbox(2, body=None)
    srv = rig.server("close_mid_literal", mailboxes=[mb], stall=True)
    m = rig.mount(srv, allow=[r"^mailfs: warning: fetching messages: "])
    r, secs = read_file(P(m, "INBOX", "1.eml"), timeout=200)
    report("hostile stall mid-literal: cat ended after %.1f s, rc %d" % (secs, r.returncode))
    assert r.returncode != 0 and b"Input/output error" in r.stderr, (r, secs)
    assert secs < 150, "stalled read took %.1f s" % secs
    assert_alive(m)
    srv.scenario.broken = False
    r, _ = read_file(P(m, "INBOX", "2.eml"), timeout=90)
    assert r.returncode == 0 and r.stdout == mb.messages[1].body, r
    rig.finish(m)


def test_drip_feed_literal_is_bounded(rig, report):
    """A server that sends a body one byte every 2 s (never idle long enough for a
    per-read I/O timeout): reading a never-cached message must still end after a
    bounded wait (SPEC: "never hangs").  Bound: 150 s, as for a stall.

    Once the daemon has taken the FUSE request, the reader cannot even be killed (the
    kernel waits for the daemon's answer), so on failure we cut the server's connections
    to release it before checking the daemon."""
    mb = hsrv.inbox(1, body=None)
    mb.messages[0].body += b"Y" * 4000
    srv = rig.server("close_mid_literal", mailboxes=[mb], drip=2.0)
    m = rig.mount(srv, allow=[r"^mailfs: warning: fetching messages: ",
                              r"^mailfs: warning: (listing folders: )?connection lost: "])
    t0 = time.time()
    reader = subprocess.Popen(["cat", P(m, "INBOX", "1.eml")], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    try:
        _, err = reader.communicate(timeout=150)
        ended, secs = True, time.time() - t0
    except subprocess.TimeoutExpired:
        ended, secs, err = False, time.time() - t0, b""
        reader.kill()
        time.sleep(2)
        killable = reader.poll() is not None
        srv.scenario.broken = False   # mailfs retries a failed fetch once: let it work
        srv.drop_all()                # the daemon's read fails now; the retry answers
        try:
            reader.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    report("hostile drip-feed: cat %s after %.1f s%s" % (
        "ended" if ended else "still blocked", secs,
        "" if ended else "; SIGKILL %s it" % ("ended" if killable else "did NOT end")))
    assert_alive(m)
    rig.finish(m)
    assert ended, "reading a drip-fed message did not end within 150 s" + (
        "" if killable else " (and the reader could not be killed)")
    assert reader.returncode != 0 and b"Input/output error" in err, (reader.returncode, err)


# --------------------------------------------------------------------------
# 9. STARTTLS: injection after the OK, and no STARTTLS at all

@pytest.mark.parametrize("split", [False, True], ids=["one-write", "separate-segment"])
def test_starttls_injection_aborts(rig, split):
    srv = rig.server("starttls_injection", mode="starttls", split=split)
    a = rig.attempt(srv, scheme="imap")
    if split:
        # arrives after the client has started TLS: the handshake sees garbage
        one_line_failure(a, r"inject|TLS|handshake")
    else:
        one_line_failure(a, r"inject")
    no_credentials_sent(srv)


def test_starttls_not_offered_is_refused(rig):
    srv = rig.server("no_starttls", mode="starttls")
    a = rig.attempt(srv, scheme="imap")
    one_line_failure(a, r"STARTTLS")
    no_credentials_sent(srv)


# --------------------------------------------------------------------------
# 10. greetings that are not IMAP

GREETINGS = {
    "http": (b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
             False, r"IMAP|greet"),
    "smtp": (b"220 mail.example.org ESMTP Postfix\r\n", True, r"IMAP|greet"),
    "bye": (b"* BYE Too many connections from your address\r\n", False,
            r"Too many connections"),
    "close": (b"", False, r"greet|clos|reset|connection"),
    "binary": (bytes(range(256)) * 4 + b"\r\n", False, r"IMAP|greet|malformed"),
    "untagged-no": (b"* NO server is sick\r\n", False, r"IMAP|greet|sick"),
    "continuation": (b"+ go ahead\r\n", True, r"IMAP|greet"),
}


@pytest.mark.parametrize("kind", sorted(GREETINGS))
def test_non_imap_greeting(rig, kind):
    data, keep_open, pattern = GREETINGS[kind]
    srv = rig.server("greeting", greeting_bytes=data, keep_open=keep_open)
    a = rig.attempt(srv)
    one_line_failure(a, pattern)
    assert re.search(r"127\.0\.0\.1", a.lines[0]), "does not name the server: %r" % a.lines[0]
    no_credentials_sent(srv)


# --------------------------------------------------------------------------
# 11. the server refuses the login

@pytest.mark.parametrize("status,caps", [
    (b"NO", hsrv.CAPS),                       # AUTHENTICATE PLAIN with SASL-IR
    (b"BAD", hsrv.CAPS),
    (b"NO", "IMAP4rev1 IDLE ENABLE"),         # no AUTH=PLAIN: LOGIN
    (b"BAD", "IMAP4rev1 IDLE ENABLE"),
    (b"NO", "IMAP4rev1 AUTH=PLAIN IDLE"),     # AUTHENTICATE PLAIN without SASL-IR
], ids=["auth-NO", "auth-BAD", "login-NO", "login-BAD", "auth-nosaslir-NO"])
def test_login_refused(rig, status, caps):
    srv = rig.server("login_refused", status=status, caps=caps)
    a = rig.attempt(srv)
    one_line_failure(a, r"login .*refused")
    assert "Authentication failed" in a.lines[0]


# --------------------------------------------------------------------------
# extra: a LIST response nested 100,000 parentheses deep

def test_deeply_nested_list_response(rig, mem_bound, report):
    srv = rig.server("deep_nesting", depth=100000)
    a = rig.attempt(srv)
    report("hostile deep nesting: exit %r, %.1f s, %r" % (a.rc, a.seconds, a.stderr.strip()))
    one_line_failure(a, r"nest|depth|malformed")
    assert a.maxrss_mb < mem_bound, a


# --------------------------------------------------------------------------
# extra: the server refuses LIST at mount time (the error text must survive until printed)

@pytest.mark.parametrize("status", [b"NO", b"BAD"])
def test_list_refused_at_mount(rig, status):
    srv = rig.server("list_refused", status=status)
    a = rig.attempt(srv)
    one_line_failure(a, r"Internal error listing mailboxes")


# --------------------------------------------------------------------------
# extra: what the sync may conclude from an answer (AUDIT A9, C4)

def _cmds_after(srv, n, word):
    return [c for _, c in srv.commands()[n:] if word in c]


def _body_uids(srv, n):
    """UIDs named in the body fetches received after the first n commands."""
    out = set()
    for c in _cmds_after(srv, n, "BODY.PEEK[]"):
        out |= hsrv.parse_set(c.split()[3], 1 << 32)
    return out


def _wait_for(pred, timeout=30, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError("timed out waiting for " + what)


def _sync_now(m):
    with open(P(m, ".mailfs", "sync"), "w") as f:
        f.write("1\n")


def _after_full_sync(srv, m):
    """Ask for a sync and wait until its LIST was sent, and a while after."""
    n = len(srv.commands())
    _sync_now(m)
    _wait_for(lambda: _cmds_after(srv, n, " LIST "), what="a LIST")
    time.sleep(3)


def test_empty_list_never_sweeps_the_cache(rig):
    """A LIST that answers OK with no mailbox (a broken or overloaded server) must not
    take the cached folders and bodies with it: not at a sync, not at the next mount."""
    inbox = hsrv.inbox(3)
    srv = rig.server("sync_faults", mailboxes=[inbox, hsrv.Mailbox("Archive",
                                                                   [hsrv.Message(1)])])
    m = rig.mount(srv, allow=[r"has no INBOX"])
    assert sorted(os.listdir(P(m, "INBOX"))) == ["1.eml", "2.eml", "3.eml"]
    r, _ = read_file(P(m, "INBOX", "1.eml"))
    assert r.returncode == 0 and r.stdout == inbox.messages[0].body
    assert "Archive" in os.listdir(m.path)
    srv.scenario.empty_list = True
    _after_full_sync(srv, m)
    assert {"INBOX", "Archive"} <= set(os.listdir(m.path)), os.listdir(m.path)
    assert sorted(os.listdir(P(m, "INBOX"))) == ["1.eml", "2.eml", "3.eml"]
    assert_alive(m)
    cache_dir = m.cache_dir
    rig.finish(m)
    # The next mount lists first: the same empty answer.
    n = len(srv.commands())
    m = rig.mounter.mount(HUser(srv), srv=srv, names="uid", foreground=True,
                          cache_dir=cache_dir, allow=[r"has no INBOX"])
    assert {"INBOX", "Archive"} <= set(os.listdir(m.path)), os.listdir(m.path)
    assert sorted(os.listdir(P(m, "INBOX"))) == ["1.eml", "2.eml", "3.eml"]
    r, _ = read_file(P(m, "INBOX", "1.eml"))
    assert r.returncode == 0 and r.stdout == inbox.messages[0].body
    assert 1 not in _body_uids(srv, n), "the cached body was dropped"
    assert_alive(m)
    rig.finish(m)


# --------------------------------------------------------------------------
# extra: a tag of 500 bytes in a completion, traced with -d (AUDIT C1: the trace
# formatted it into a 400-byte stack buffer and went on past its end)

def test_long_tag_traced_with_debug(rig, report):
    srv = rig.server("long_tag", tag_len=500, text_len=2000)
    a = rig.attempt(srv, debug=True, timeout=60)
    report("hostile 500-byte tag with -d: exit %r in %.1f s, last line %r" % (
        a.rc, a.seconds, a.lines[-1][:160] if a.lines else None))
    assert not SANITIZER.search(a.sanitizer + a.stderr), \
        "sanitizer report:\n" + (a.sanitizer + a.stderr)[:6000]
    assert a.rc is not None and a.rc > 0, a
    assert a.seconds < 30, a
    assert not a.leftover, a.leftover
    # The trace shows the line, cut; the one error line names the stray tag, cut too.
    traced = [ln for ln in a.lines if "[imap1] < TTTT" in ln]
    assert traced and all(len(ln) < 1000 for ln in traced), a.lines
    err = [ln for ln in a.lines if "[imap1]" not in ln and "[debug]" not in ln]
    assert len(err) == 1 and re.search(r"unexpected completion|tag", err[0]), a.lines
    assert len(err[0]) < 400, err[0]


# --------------------------------------------------------------------------
# extra: an APPEND refused instead of the "+" continuation, or with untagged responses
# before it (AUDIT B1: both were taken for a dead connection, close() said success and
# the journal then retried the APPEND forever)

def _close_errno(path, data):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, data)
    try:
        os.close(fd)
    except OSError as e:
        return e.errno
    return 0


def test_append_refused_before_continuation(rig, report):
    import errno
    srv = rig.server("append_before_continuation", mailboxes=[hsrv.inbox(2)])
    m = rig.mount(srv, allow=[r"refused by the server", r"cannot store .*: (File too large|"
                              r"Permission denied)"])
    msg = (b"From: a@example.org\r\nSubject: too big\r\nMessage-ID: <big@x>\r\n\r\n" +
           b"z" * 10000 + b"\r\n")
    err = _close_errno(P(m, "INBOX", "big.eml"), msg)
    assert err == errno.EFBIG, "close() after NO [TOOBIG] instead of +: %s" % (
        errno.errorcode.get(err, err))
    assert srv.scenario.appends == 1
    # Untagged responses before the "+": the data goes, the server's answer counts.
    srv.scenario.refusal = None
    err = _close_errno(P(m, "INBOX", "second.eml"), msg.replace(b"big@x", b"second@x"))
    assert err == errno.EACCES, "close() after a NO to the data: %s" % (
        errno.errorcode.get(err, err))
    assert srv.scenario.appends == 2
    st = m.status()
    report("hostile APPEND refused before +: EFBIG, then EACCES; status %r" % st)
    assert st.get("pending") == "0" and st.get("state") == "online", st
    r, _ = sh(["ls", P(m, "INBOX")])
    assert r.returncode == 0 and r.stdout.split() == [b"1.eml", b"2.eml"], r
    assert_alive(m)
    rig.finish(m)


@pytest.mark.parametrize("status", [b"NO", b"BAD"])
def test_refused_flags_fetch_never_sweeps_the_folder(rig, status):
    """New mail arrives (EXISTS grew) and the flags FETCH that would list the UIDs still
    there is refused: no cached message may go, and the cached body stays."""
    inbox = hsrv.inbox(3)
    srv = rig.server("sync_faults", mailboxes=[inbox])
    m = rig.mount(srv, allow=[r"flags unavailable"])
    assert sorted(os.listdir(P(m, "INBOX"))) == ["1.eml", "2.eml", "3.eml"]
    r, _ = read_file(P(m, "INBOX", "1.eml"))
    assert r.returncode == 0 and r.stdout == inbox.messages[0].body
    srv.scenario.flags_status = status
    inbox.messages.append(hsrv.Message(4))
    n = len(srv.commands())
    _sync_now(m)
    _wait_for(lambda: "4.eml" in os.listdir(P(m, "INBOX")), what="the new message")
    _wait_for(lambda: _cmds_after(srv, n, "(UID FLAGS)"), what="the flags FETCH")
    time.sleep(2)
    assert sorted(os.listdir(P(m, "INBOX"))) == ["1.eml", "2.eml", "3.eml", "4.eml"]
    r, _ = read_file(P(m, "INBOX", "1.eml"))
    assert r.returncode == 0 and r.stdout == inbox.messages[0].body
    assert 1 not in _body_uids(srv, n), "the cached body was dropped"
    # One message expunged, one new, the flags FETCH still refused: only the expunged one
    # goes (the UID SEARCH the refusal falls back to names the others), bodies stay.
    del inbox.messages[1]
    inbox.messages.append(hsrv.Message(5))
    n = len(srv.commands())
    _sync_now(m)
    _wait_for(lambda: "5.eml" in os.listdir(P(m, "INBOX")), what="the second new message")
    _wait_for(lambda: "2.eml" not in os.listdir(P(m, "INBOX")), what="the expunge")
    time.sleep(2)
    assert sorted(os.listdir(P(m, "INBOX"))) == ["1.eml", "3.eml", "4.eml", "5.eml"]
    r, _ = read_file(P(m, "INBOX", "1.eml"))
    assert r.returncode == 0 and r.stdout == inbox.messages[0].body
    assert 1 not in _body_uids(srv, n), "the cached body was dropped"
    assert_alive(m)
    rig.finish(m)


def test_esearch_range_is_bounded_by_the_cached_uids(rig, mem_bound, report):
    """A planted huge UID (a FETCH answer) makes the cache's top UID huge; an ESEARCH
    ALL answer of 1:that may cost only what the cached UIDs cost, not one entry per
    UID of the range.  (With 4026531839, the highest non-local UID, it was 16 GiB; the
    test plants 100,000,000, which already shows as ~512 MB.)"""
    top = 100000000
    inbox = hsrv.inbox(3)
    inbox.messages.append(hsrv.Message(top))
    srv = rig.server("sync_faults", mailboxes=[inbox])
    m = rig.mount(srv, allow=[r"flags unavailable"])
    assert set(os.listdir(P(m, "INBOX"))) == {"%d.eml" % u for u in (1, 2, 3, top)}
    # An expunge makes the sync ask which UIDs are left: the flags FETCH is refused, so
    # it is UID SEARCH, answered with everything up to the planted UID.
    srv.scenario.flags_status = b"NO"
    srv.scenario.esearch_all = b"1:%d" % top
    del inbox.messages[1]
    n = len(srv.commands())
    t0 = time.time()
    _sync_now(m)
    _wait_for(lambda: _cmds_after(srv, n, "UID SEARCH"), what="the UID SEARCH")
    # A second sync of INBOX runs only once the first is finished.
    _sync_now(m)
    _wait_for(lambda: len(_cmds_after(srv, n, "UID SEARCH")) >= 2, timeout=60,
              what="a second UID SEARCH (the first sync never ended)")
    report("hostile ESEARCH 1:%d: two syncs in %.1f s" % (top, time.time() - t0))
    # The server says all of them are still there: none goes.
    assert set(os.listdir(P(m, "INBOX"))) == {"%d.eml" % u for u in (1, 2, 3, top)}
    assert_alive(m)
    assert_mem(m, mem_bound, "ESEARCH 1:%d" % top, report)
    rig.finish(m)


def test_absurd_internaldate_zone(rig):
    """INTERNALDATE with a zone of -2147483648 (abs(INT_MIN) was undefined behaviour,
    visible in an UBSan build): the message is listed, with a sane mtime."""
    inbox = hsrv.inbox(2)
    srv = rig.server("sync_faults", mailboxes=[inbox], zone=b"-2147483648")
    m = rig.mount(srv)
    assert sorted(os.listdir(P(m, "INBOX"))) == ["1.eml", "2.eml"]
    st = os.stat(P(m, "INBOX", "1.eml"))
    # The ENVELOPE date (2 June 2025) or INTERNALDATE: either way not a wrapped time.
    assert 0 <= st.st_mtime < 4102444800, st.st_mtime
    assert_alive(m)
    rig.finish(m)


# --------------------------------------------------------------------------
# extra: a server that trickles one complete untagged line every second and never
# completes (AUDIT B2: no per-read timeout ever trips, and only the greeting and the
# fetches had an overall deadline).  MAILFS_TEST_TIMEOUT_SCALE=0.1 (a test knob, see
# net/imap-client.h) shrinks mailfs's bounds tenfold: a 3 s read timeout, 6 s per command.

TIMEOUT_SCALE = {"MAILFS_TEST_TIMEOUT_SCALE": "0.1"}
TRICKLE_BOUND_S = 30


@pytest.mark.parametrize("at", ["greeting", "list"])
def test_trickle_at_mount_fails_within_bound(rig, at, report):
    srv = rig.server("trickle", at=at, every=1.0)
    a = rig.attempt(srv, timeout=TRICKLE_BOUND_S * 2, env=TIMEOUT_SCALE)
    report("hostile trickle at %s: mount exit %r after %.1f s: %r" % (
        at, a.rc, a.seconds, a.stderr.strip()))
    one_line_failure(a, r"too slow", max_seconds=TRICKLE_BOUND_S)
    assert srv.scenario.trickles >= 1


def test_trickle_in_select_readdir_fails_within_bound(rig, report):
    srv = rig.server("trickle", at="select", every=1.0, mailboxes=[hsrv.inbox(2)])
    m = rig.mount(srv, env=TIMEOUT_SCALE,
                  allow=[r"too slow", r"cannot open folder Slow", r"connection lost"])
    t0 = time.time()
    lister = subprocess.Popen(["ls", P(m, "Slow")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    try:
        _, err = lister.communicate(timeout=TRICKLE_BOUND_S * 2)
        ended, secs = True, time.time() - t0
    except subprocess.TimeoutExpired:
        ended, secs, err = False, time.time() - t0, b""
        # Release the parked request (the reader cannot be killed while the daemon holds
        # it): the server stops trickling and cuts the connections, the retry is answered.
        srv.scenario.at = None
        srv.drop_all()
        lister.kill()
        try:
            lister.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            pass
    report("hostile trickle in SELECT: ls %s after %.1f s: %r" % (
        "ended" if ended else "still blocked", secs, err.strip()))
    assert ended, "ls of a folder whose SELECT trickles did not end in %d s" % (
        TRICKLE_BOUND_S * 2)
    assert lister.returncode != 0 and b"Input/output error" in err, (lister.returncode, err)
    assert secs < TRICKLE_BOUND_S, secs
    assert srv.scenario.trickles >= 1
    # The rest of the mount is unaffected.
    r, _ = sh(["ls", P(m, "INBOX")])
    assert r.returncode == 0 and r.stdout.split() == [b"1.eml", b"2.eml"], r
    assert_alive(m)
    rig.finish(m)


def test_readahead_skips_a_message_over_the_budget(rig):
    """Opening the message before a huge one must not fetch the huge one too: read-ahead
    always added the first uncached successor whatever its size (over 256 MiB that
    dropped the connection and downloaded it twice, every time)."""
    big = 20 << 20    # over the 16 MiB read-ahead budget
    inbox = hsrv.inbox(4)
    inbox.messages[1].body = inbox.messages[1].body + b"x" * big + b"\r\n"
    srv = rig.server("normal", mailboxes=[inbox])
    m = rig.mount(srv)
    assert sorted(os.listdir(P(m, "INBOX"))) == ["1.eml", "2.eml", "3.eml", "4.eml"]
    r, _ = read_file(P(m, "INBOX", "1.eml"))
    assert r.returncode == 0 and r.stdout == inbox.messages[0].body
    time.sleep(2)   # let any read-ahead run
    assert 2 not in _body_uids(srv, 0), srv.commands()
    # Opened, it is fetched, and read exactly.
    r, _ = read_file(P(m, "INBOX", "2.eml"), timeout=60)
    assert r.returncode == 0 and r.stdout == inbox.messages[1].body
    assert 2 in _body_uids(srv, 0)
    assert_alive(m)
    rig.finish(m)


# --------------------------------------------------------------------------
# extra: a refusal whose text holds terminal escape sequences and a BEL (AUDIT D2):
# what mailfs prints -- the mount command's error line, a daemon's warnings -- shows
# them escaped, never raw

RAW_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def test_escape_sequences_in_refusal_at_mount(rig):
    srv = rig.server("escape_text", refuse_list=True)
    a = rig.attempt(srv)
    assert not RAW_CONTROL.search(a.stderr), "raw control bytes reach the terminal: %r" % (
        a.stderr)
    one_line_failure(a, r"RED")
    assert "\\x1b[31mRED" in a.lines[0], a.lines[0]


def test_escape_sequences_in_refusal_logged(rig):
    srv = rig.server("escape_text", mailboxes=[hsrv.inbox(2)])
    m = rig.mount(srv, allow=[r"refused by the server"])
    r, _ = sh(["rm", P(m, "INBOX", "1.eml")])
    assert r.returncode != 0, r       # this server refuses every change
    log = m.log()
    assert "RED" in log, "the refusal was not logged: %r" % log
    assert not RAW_CONTROL.search(log), "raw control bytes in the daemon's stderr: %r" % log
    assert "\\x1b[31mRED\\x1b[0m bell\\x07" in log, log
    assert_alive(m)
    rig.finish(m)


# --------------------------------------------------------------------------
# rename() onto a message through UID MOVE: the old message goes only once the move is
# proven (AUDIT A5)

def _moves_server(rig, **kw):
    inbox = hsrv.Mailbox("INBOX", [hsrv.Message(1), hsrv.Message(2)])
    arch = hsrv.Mailbox("Archive", [hsrv.Message(10)])
    return rig.server("moves", mailboxes=[inbox, arch], **kw), inbox, arch


def _msgids(mb):
    return sorted(m.msgid for m in mb.messages)


def test_move_m365_empty_copyuid_keeps_victim(rig):
    """Microsoft 365 answers the move of a UID another client just expunged with
    `* OK [COPYUID 983  ]` and OK: nothing moved, so rename() over a message must fail
    and leave that message on the server."""
    srv, inbox, arch = _moves_server(rig, move_mode="m365")
    m = rig.mount(srv, allow=[r"but it is not in"])
    assert sorted(os.listdir(P(m, "Archive"))) == ["10.eml"]
    assert sorted(os.listdir(P(m, "INBOX"))) == ["1.eml", "2.eml"]
    with pytest.raises(OSError) as e:
        os.rename(P(m, "INBOX", "1.eml"), P(m, "Archive", "10.eml"))
    assert e.value.errno in (errno.ENOENT, errno.EIO), e.value
    assert _msgids(arch) == [b"<m10@hostile>"], "the old message was expunged"
    assert not _cmds_after(srv, 0, "EXPUNGE"), srv.commands()
    r, _ = read_file(P(m, "Archive", "10.eml"))
    assert r.returncode == 0 and r.stdout == arch.messages[0].body
    assert_alive(m)
    rig.finish(m)


def test_move_without_copyuid_succeeds(rig):
    """RFC 6851 says a server SHOULD send COPYUID: one that moves without it still moved.
    A plain mv succeeds; a rename over a message finds the moved one (by Message-ID) and
    only then lets the old one go."""
    srv, inbox, arch = _moves_server(rig, copyuid=False)
    m = rig.mount(srv)
    body1, body2 = inbox.messages[0].body, inbox.messages[1].body
    os.rename(P(m, "INBOX", "2.eml"), P(m, "Archive", "2.eml"))
    assert _msgids(arch) == [b"<m10@hostile>", b"<m2@hostile>"]
    os.rename(P(m, "INBOX", "1.eml"), P(m, "Archive", "10.eml"))
    assert _msgids(arch) == [b"<m1@hostile>", b"<m2@hostile>"]
    assert _msgids(inbox) == []
    r, _ = read_file(P(m, "Archive", "10.eml"))
    assert r.returncode == 0 and r.stdout == body1
    r, _ = read_file(P(m, "Archive", "2.eml"))
    assert r.returncode == 0 and r.stdout == body2
    assert sorted(os.listdir(P(m, "Archive"))) == ["10.eml", "2.eml"]
    assert_alive(m)
    rig.finish(m)


def test_replace_without_appenduid_keeps_victim(rig):
    """rename() of a new file onto a message, on a server that gives no APPENDUID: the new
    message's UID is not known, so the old one must stay (and the name with it), not be
    expunged and leave the name to nothing."""
    srv, inbox, arch = _moves_server(rig, appenduid=False)
    m = rig.mount(srv, allow=[r"its UID is not known; the old one is kept"])
    new = (b"From: A <a@example.org>\r\nSubject: replacement\r\n"
           b"Message-ID: <new@hostile>\r\n\r\nnew body\r\n")
    tmp = P(m, "INBOX", ".2.eml.Ab12Cd")
    with open(tmp, "wb") as f:
        f.write(new)
    try:
        os.rename(tmp, P(m, "INBOX", "2.eml"))
        renamed = True
    except OSError as e:
        assert e.errno == errno.EIO, e
        renamed = False
    r, _ = read_file(P(m, "INBOX", "2.eml"))
    assert r.returncode == 0, "the name vanished"
    assert r.stdout == (new if renamed else inbox.messages[1].body)
    assert b"<new@hostile>" in _msgids(inbox)
    if not renamed:
        assert b"<m2@hostile>" in _msgids(inbox), "the old message was expunged"
    assert_alive(m)
    rig.finish(m)
