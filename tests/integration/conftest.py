"""pytest fixtures for mailfs integration tests: a real Dovecot, real FUSE mounts.

Fixtures
  server          session: a started tests/mailserver.py MailServer (imap, imaps, pop3, pop3s)
  plain_server    session: a second Dovecot with `ssl = no` (no STARTTLS/STLS offered)
  user            a fresh user on `server` for one test (User: .name .password .account() ...)
  module_user     a fresh user shared by a test module
  make_user       factory: make_user(prefix="u", srv=server) -> User
  mount           factory for one test:    mount(user, **kw) -> Mount   (see Mounter.mount)
  module_mount    factory shared by a module (mounts live until the module ends)
  try_mount       factory for failure cases: try_mount(user, **kw) -> Attempt(rc, stdout, stderr, mnt)
  mailfs_bin      path of the binary (env MAILFS_BIN, default <repo>/build/mailfs)
  report          report("text") prints a line in the summary at the end of the run

Every mount is unmounted at the end of its scope (fusermount3 -u, then -uz), the daemon
must exit cleanly, and its stderr (and sanitizer logs) must hold nothing suspicious.
Tests are skipped when not root, /dev/fuse or fusermount3 is missing, dovecot is missing,
or the binary is not built.  With MAILFS_SKIP_EXIT=N in the environment, a run in which
every test was skipped exits with N (run-test.sh sets 77, meson's "skipped").
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

import mailserver  # noqa: E402
import corpus  # noqa: E402,F401  (re-exported for the tests)

MOUNT_TIMEOUT = float(os.environ.get("MAILFS_MOUNT_TIMEOUT", "60"))

# Lines in a daemon's stderr that always mean trouble.
SUSPICIOUS = re.compile(
    r"AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|ThreadSanitizer|runtime error:"
    r"|Segmentation fault|SIGSEGV|Assertion|assertion|double free|corrupted|Aborted"
    r"|CRITICAL|\bpanic\b|\bBUG\b|stack smashing|free\(\): |malloc\(\): "
    r"|\berror\b|\bfailed\b|\bfailure\b|\bwarning\b|\bWARNING\b|\bERROR\b", re.I)
STACK_FRAME = re.compile(r"\s*#\d+ 0x[0-9a-f]+ ")
SANITIZER_START = re.compile(r"^==\d+==\s*ERROR: \w*Sanitizer")
# Known-harmless lines (libfuse 3.14 with max_idle_threads unset).
HARMLESS = [re.compile(r"Ignoring invalid max threads value")]


# --------------------------------------------------------------------------
# environment checks, skip logic, summary lines

def _skip_reason():
    if os.geteuid() != 0:
        return "needs root"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if not shutil.which("fusermount3"):
        return "fusermount3 is missing"
    if not shutil.which("dovecot") or not shutil.which("doveadm"):
        return "dovecot is not installed"
    return None


def _mailfs_path():
    return os.environ.get("MAILFS_BIN") or str(REPO / "build" / "mailfs")


_outcomes = {"passed": 0, "failed": 0, "skipped": 0}
_report_lines = []


def pytest_runtest_logreport(report):
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed") \
            or (report.when == "teardown" and report.outcome == "failed"):
        _outcomes[report.outcome] = _outcomes.get(report.outcome, 0) + 1


def pytest_sessionfinish(session, exitstatus):
    skip_exit = os.environ.get("MAILFS_SKIP_EXIT")
    if skip_exit and _outcomes["skipped"] and not _outcomes["passed"] and not _outcomes["failed"] \
            and exitstatus == 0:
        session.exitstatus = int(skip_exit)


def pytest_terminal_summary(terminalreporter):
    if _report_lines:
        terminalreporter.section("mailfs report")
        for line in _report_lines:
            terminalreporter.write_line(line)


def note(line):
    """Add a line to the "mailfs report" section printed at the end of the run."""
    _report_lines.append(str(line))
    print(line)


@pytest.fixture(scope="session")
def report():
    return note


@pytest.fixture(scope="session", autouse=True)
def _environment_ok():
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def mailfs_bin(_environment_ok):
    p = _mailfs_path()
    if not (os.path.isfile(p) and os.access(p, os.X_OK)):
        pytest.skip("mailfs binary not built: %s (set MAILFS_BIN)" % p)
    return os.path.abspath(p)


# --------------------------------------------------------------------------
# servers and users

def _server_dir(prefix):
    d = tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("MAILFS_TEST_TMPDIR") or "/tmp")
    os.chmod(d, 0o755)
    return d


@pytest.fixture(scope="session")
def server(_environment_ok):
    d = _server_dir("mailfs-it-")
    srv = mailserver.MailServer(d)
    try:
        srv.start()
    except Exception as e:
        shutil.rmtree(d, ignore_errors=True)
        pytest.fail("cannot start dovecot: %s" % e)
    yield srv
    srv.stop()
    if not os.environ.get("MAILFS_KEEP_TMP"):
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def plain_server(_environment_ok):
    """A Dovecot without TLS at all: its imap/pop3 ports offer no STARTTLS/STLS."""
    d = _server_dir("mailfs-it-plain-")
    srv = mailserver.MailServer(d, ssl=False, ports=mailserver.free_port_map())
    srv.start()
    yield srv
    srv.stop()
    if not os.environ.get("MAILFS_KEEP_TMP"):
        shutil.rmtree(d, ignore_errors=True)


class User:
    """A user on one MailServer."""

    def __init__(self, srv, name, password):
        self.server = srv
        self.name = name
        self.password = password
        self._account = None

    def account(self):
        """A shared imaplib checker (mailserver.Account) for this user."""
        if self._account is None:
            self._account = self.server.account(self.name)
        return self._account

    def client(self):
        return self.server.client(self.name)

    def load(self, c):
        """Load a corpus.Corpus; returns {folder: [uid, ...]} in corpus order."""
        return self.server.load(self.name, c)

    def append_many(self, folder, messages):
        return self.server.append_many(self.name, folder, messages)

    def url(self, scheme="imaps"):
        return self.server.url(self.name, scheme)

    def close(self):
        if self._account is not None:
            self._account.close()
            self._account = None

    def __repr__(self):
        return "<User %s>" % self.name


_user_seq = [0]


def _new_user(srv, prefix):
    _user_seq[0] += 1
    safe = re.sub(r"[^a-z0-9]", "", prefix.lower())[:20] or "u"
    name = "%s%d" % (safe, _user_seq[0])
    u = User(srv, name, srv.add_user(name))
    srv.settle_user(name)
    return u


@pytest.fixture
def make_user(server):
    made = []

    def make(prefix="u", srv=None):
        u = _new_user(srv or server, prefix)
        made.append(u)
        return u
    yield make
    for u in made:
        u.close()


@pytest.fixture
def user(server, request):
    u = _new_user(server, request.node.name.replace("test_", "")[:12])
    yield u
    u.close()


@pytest.fixture(scope="module")
def module_user(server, request):
    u = _new_user(server, request.module.__name__.replace("test_", "")[:12])
    yield u
    u.close()


# --------------------------------------------------------------------------
# mounts

def mounted_paths():
    """Mount points currently in /proc/self/mounts (octal escapes decoded)."""
    out = []
    with open("/proc/self/mounts", "rb") as f:
        for line in f:
            fields = line.split(b" ")
            if len(fields) > 2:
                p = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), fields[1])
                out.append(os.fsdecode(p))
    return out


def wait_for(pred, timeout, step=0.2):
    """pred()'s first true value within timeout seconds, else its last value."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return pred()


def is_mounted(path):
    return os.path.realpath(path) in mounted_paths()


def _procs_with_arg(binary, arg):
    """PIDs of processes running BINARY with ARG (a mount point) on their command line."""
    pids = []
    want_bin = os.fsencode(os.path.basename(binary))
    want_arg = os.fsencode(arg)
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % d, "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]) == want_bin and want_arg in argv[1:]:
            pids.append(int(d))
    return pids


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class MountFailed(Exception):
    pass


class Mount:
    """One mailfs mount.  .path, .user, .cache_dir, .options, .proc (foreground only),
    .log_path (daemon stderr), .source."""

    def __init__(self, mounter, path, user, source, options, cache_dir, proc, log_path, workdir,
                 allow):
        self.mounter = mounter
        self.path = path
        self.user = user
        self.source = source
        self.options = options
        self.cache_dir = cache_dir
        self.proc = proc
        self.log_path = log_path
        self.workdir = workdir
        self.allow = [re.compile(a) for a in allow]
        srv = getattr(user, "server", None)
        self.server_log_start = len(srv.log()) if srv is not None and hasattr(srv, "log") else 0
        self.unmounted = False
        self.problems = []

    def __truediv__(self, other):
        return os.path.join(self.path, other)

    def __str__(self):
        return self.path

    def __fspath__(self):
        return self.path

    def status(self):
        """MNT/.mailfs/status as a dict."""
        with open(os.path.join(self.path, ".mailfs", "status")) as f:
            text = f.read()
        out = {}
        for line in text.splitlines():
            k, sep, v = line.partition(":")
            if sep:
                out[k.strip()] = v.strip()
        return out

    def log(self):
        parts = []
        try:
            with open(self.log_path, "rb") as f:
                parts.append(f.read().decode(errors="replace"))
        except OSError:
            pass
        for name in sorted(os.listdir(self.workdir)):
            if name.startswith(("asan.", "ubsan.")):
                with open(os.path.join(self.workdir, name), "rb") as f:
                    parts.append(f.read().decode(errors="replace"))
        return "".join(parts)

    def suspicious_lines(self):
        """Suspicious lines of the daemon's output, with the stack frames of any
        sanitizer report that follow them."""
        bad = []
        report_lines = 0   # > 0: inside a sanitizer report, which is kept whole (up to a cap)
        frames = 0
        in_frames = False
        for line in self.log().splitlines():
            if not line.strip():
                continue
            if report_lines:
                if report_lines < 120:
                    bad.append(line)
                report_lines += 1
                if line.startswith("SUMMARY:"):
                    report_lines = 0
                continue
            if SANITIZER_START.search(line):
                bad.append(line)
                report_lines = 1
                continue
            if in_frames and STACK_FRAME.match(line):
                if frames < 25:
                    bad.append(line)
                frames += 1
                continue
            in_frames = False
            if any(h.search(line) for h in HARMLESS) or any(a.search(line) for a in self.allow):
                continue
            if SUSPICIOUS.search(line):
                bad.append(line)
                in_frames, frames = True, 0
        return bad

    def _dovecot_lock_panic(self):
        srv = getattr(self.user, "server", None)
        name = getattr(self.user, "name", None)
        if srv is None or not hasattr(srv, "log") or not name:
            return False
        mine = "imap(%s)<" % name
        return any(mine in l and "Panic: fcntl(" in l and "Resource deadlock avoided" in l
                   for l in srv.log()[self.server_log_start:].splitlines())

    def _server_side(self):
        """The server's own errors for this user, to tell a server fault from ours."""
        srv = getattr(self.user, "server", None)
        name = getattr(self.user, "name", None)
        if srv is None or not hasattr(srv, "log"):
            return []
        lines = [l for l in srv.log().splitlines()
                 if (name is None or name in l) and re.search(r"Error|Fatal|Panic|Disconnected(?!: Logged out)", l)]
        return ["server log for this user (last %d of %d lines):\n    " % (
            min(len(lines), 15), len(lines)) + "\n    ".join(lines[-15:])] if lines else []

    def unmount(self, check=True):
        """Unmount (fusermount3 -u, falling back to -uz), wait for the daemon to exit.
        Returns a list of problems (also kept in .problems)."""
        if self.unmounted:
            return self.problems
        self.unmounted = True
        probs = self.problems
        if is_mounted(self.path):
            r = subprocess.run(["fusermount3", "-u", self.path], capture_output=True, text=True)
            if r.returncode != 0:
                probs.append("fusermount3 -u failed: %s" % r.stderr.strip())
                subprocess.run(["fusermount3", "-uz", self.path], capture_output=True)
        deadline = time.time() + 15
        if self.proc is not None:
            while self.proc.poll() is None and time.time() < deadline:
                time.sleep(0.05)
            if self.proc.poll() is None:
                probs.append("daemon still running 15 s after unmount; killed")
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            elif self.proc.returncode != 0:
                probs.append("daemon exited with status %d after unmount" % self.proc.returncode)
        else:
            pids = _procs_with_arg(self.mounter.binary, self.path)
            while pids and time.time() < deadline:
                time.sleep(0.05)
                pids = [p for p in pids if _alive(p)]
            if pids:
                probs.append("detached daemon %s still running 15 s after unmount; killed" % pids)
                for p in pids:
                    try:
                        os.kill(p, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        if is_mounted(self.path):
            probs.append("still mounted after unmount")
            subprocess.run(["fusermount3", "-uz", self.path], capture_output=True)
        if check:
            bad = self.suspicious_lines()
            if bad and self._dovecot_lock_panic():
                # Dovecot 2.3 can panic (fcntl EDEADLK on dovecot.list.index.log) when
                # sessions create or recreate a mailbox at once; the session dies and
                # mailfs reconnects.  That is the server's bug, not ours.
                bad = [l for l in bad if not re.search(
                    r"server closed the connection|connection lost|IMAP session state|"
                    r"SERVERBUG|Internal error occurred", l)]
            if bad:
                probs.append("suspicious daemon output:\n    " + "\n    ".join(bad[:30]))
                probs.extend(self._server_side())
        return probs


class Attempt:
    """The result of a mount command that is expected to fail."""

    def __init__(self, rc, stdout, stderr, mnt, leftover, seconds):
        self.rc = rc
        self.returncode = rc
        self.stdout = stdout
        self.stderr = stderr
        self.mnt = mnt
        self.leftover = leftover  # problems found after the attempt (mount/daemon left behind)
        self.seconds = seconds

    @property
    def lines(self):
        return [ln for ln in self.stderr.splitlines() if ln.strip()]

    def __repr__(self):
        return "<Attempt rc=%r stderr=%r leftover=%r %.1fs>" % (self.rc, self.stderr, self.leftover,
                                                               self.seconds)


def ordinary_user(name="nobody"):
    """(uid, gid) of an unprivileged account to mount or walk as."""
    import pwd
    pw = pwd.getpwnam(name)
    return pw.pw_uid, pw.pw_gid


def as_user_argv(ids, argv):
    """ARGV run as the (uid, gid) IDS, without supplementary groups."""
    if ids is None:
        return list(argv)
    return ["setpriv", "--reuid=%d" % ids[0], "--regid=%d" % ids[1], "--clear-groups", "--"] + \
        list(argv)


class Mounter:
    def __init__(self, binary, base_dir):
        self.binary = binary
        self.base_dir = base_dir
        self.mounts = []
        self.shared_dirs = []
        self.n = 0

    def _workdir(self, tag, as_user=None):
        self.n += 1
        if as_user is None:
            d = os.path.join(self.base_dir, "%s%d" % (tag, self.n))
            os.makedirs(d, mode=0o700)
            return d
        # pytest's directories are 0700 root: an unprivileged daemon needs its own
        d = tempfile.mkdtemp(prefix="mailfs-user-",
                             dir=os.environ.get("MAILFS_TEST_TMPDIR") or "/tmp")
        os.chmod(d, 0o755)
        os.chown(d, *as_user)
        self.shared_dirs.append(d)
        return d

    def env(self, workdir, extra=None, as_user=None):
        env = dict(os.environ)
        for k in ("DBUS_SESSION_BUS_ADDRESS", "DISPLAY", "WAYLAND_DISPLAY", "MAILFS_BIN"):
            env.pop(k, None)
        home = os.path.join(workdir, "home")
        run = os.path.join(workdir, "run")
        for d in (home, run):
            os.makedirs(d, mode=0o700, exist_ok=True)
            if as_user is not None:
                os.chown(d, *as_user)
        env.update(TZ="UTC", HOME=home, XDG_CACHE_HOME=os.path.join(home, ".cache"),
                   XDG_CONFIG_HOME=os.path.join(home, ".config"), XDG_RUNTIME_DIR=run,
                   LC_ALL="C.UTF-8")
        if as_user is None:
            # State (POP3's archive) outlives a mount: one data dir per test, so that a
            # remount with the same cache_dir finds it, and no test sees another's.
            env["XDG_DATA_HOME"] = os.path.join(self.base_dir, "data")
        # Sanitizer reports of a detached daemon would go to /dev/null: send them to files.
        for var, prefix in (("ASAN_OPTIONS", "asan"), ("UBSAN_OPTIONS", "ubsan")):
            cur = env.get(var, "")
            env[var] = (cur + ":" if cur else "") + "log_path=" + os.path.join(workdir, prefix)
        if extra:
            env.update(extra)
        return env

    def command(self, user, mnt, scheme="imaps", source=None, password_file=True, cafile=True,
                cache_dir=True, names=None, options=(), foreground=False, debug=False,
                workdir=None, srv=None, as_user=None):
        srv = srv or (user.server if user is not None else None)
        opts = []
        if password_file is True:
            pf = os.path.join(workdir, "password")
            srv.password_file_for(user.name, pf)
            if as_user is not None:
                os.chown(pf, *as_user)
            opts.append("password_file=" + pf)
        elif password_file:
            opts.append("password_file=" + password_file)
        if cafile is True:
            if srv.ssl:
                opts.append("cafile=" + srv.cert)
        elif cafile:
            opts.append("cafile=" + cafile)
        if cache_dir is True:
            cache_dir = os.path.join(workdir, "cache")
        if cache_dir:
            opts.append("cache_dir=" + cache_dir)
        if names:
            opts.append("names=" + names)
        opts.extend(options)
        if source is None:
            source = srv.url(user.name, scheme)
        argv = [self.binary]
        if foreground:
            argv.append("-f")
        if debug:
            argv.append("-d")
        if opts:
            argv += ["-o", ",".join(opts)]
        argv += [source, mnt]
        return as_user_argv(as_user, argv), source, (cache_dir or None), opts

    def mount(self, user, mnt=None, scheme="imaps", source=None, password_file=True, cafile=True,
              cache_dir=True, names=None, options=(), foreground=True, debug=False, env=None,
              allow=(), timeout=MOUNT_TIMEOUT, srv=None, as_user=None):
        """Mount USER's mailbox; return a Mount once the mount point is live.
        foreground=True runs `mailfs -f` in the background (stderr captured to a file);
        foreground=False runs the detaching command, which must exit 0.
        options: extra -o options (e.g. ["ro"], ["poll=2"]); allow: regexes of
        daemon output lines that are expected (not suspicious); as_user: (uid, gid) to run
        the daemon as (see ordinary_user()).  Raises MountFailed."""
        wd = self._workdir("m", as_user)
        if mnt is None:
            mnt = os.path.join(wd, "mnt")
        os.makedirs(mnt, exist_ok=True)
        if as_user is not None:
            os.chown(mnt, *as_user)
        argv, source, cdir, opts = self.command(user, mnt, scheme, source, password_file, cafile,
                                                cache_dir, names, options, foreground, debug, wd,
                                                srv, as_user)
        envd = self.env(wd, env, as_user)
        log_path = os.path.join(wd, "stderr")
        with open(os.path.join(wd, "argv"), "w") as f:
            f.write(" ".join(argv) + "\n")
        if foreground:
            logf = open(log_path, "wb")
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                    env=envd)
            logf.close()
            m = Mount(self, mnt, user, source, opts, cdir, proc, log_path, wd, allow)
            self.mounts.append(m)
            deadline = time.time() + timeout
            while not is_mounted(mnt):
                if proc.poll() is not None:
                    m.unmount(check=False)
                    raise MountFailed("mailfs -f exited with %d before mounting: %s" % (
                        proc.returncode, m.log().strip()))
                if time.time() > deadline:
                    m.unmount(check=False)
                    raise MountFailed("not mounted after %.0f s: %s" % (timeout, m.log().strip()))
                time.sleep(0.05)
            return m
        with open(log_path, "wb") as logf:
            try:
                r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                   env=envd, timeout=timeout)
                rc = r.returncode
            except subprocess.TimeoutExpired:
                rc = None
        m = Mount(self, mnt, user, source, opts, cdir, None, log_path, wd, allow)
        self.mounts.append(m)
        if rc != 0 or not is_mounted(mnt):
            m.unmount(check=False)
            raise MountFailed("mailfs exited with %s (mounted: %s): %s" % (
                rc, is_mounted(mnt), m.log().strip()))
        return m

    def try_mount(self, user=None, mnt=None, scheme="imaps", source=None, password_file=True,
                  cafile=True, cache_dir=True, names=None, options=(), env=None, stdin=None,
                  timeout=MOUNT_TIMEOUT, make_mnt=True, srv=None, foreground=False):
        """Run the mount command expecting failure; clean up whatever it leaves behind
        (recorded in Attempt.leftover).  Returns an Attempt."""
        wd = self._workdir("t")
        if mnt is None:
            mnt = os.path.join(wd, "mnt")
        if make_mnt:
            os.makedirs(mnt, exist_ok=True)
        argv, source, cdir, opts = self.command(user, mnt, scheme, source, password_file, cafile,
                                                cache_dir, names, options, foreground, False, wd,
                                                srv, None)
        envd = self.env(wd, env)
        t0 = time.time()
        try:
            r = subprocess.run(argv, stdin=stdin if stdin is not None else subprocess.DEVNULL,
                               capture_output=True, env=envd, timeout=timeout)
            rc, out, err = r.returncode, r.stdout, r.stderr
        except subprocess.TimeoutExpired as e:
            rc, out, err = None, e.stdout or b"", e.stderr or b""
        secs = time.time() - t0
        leftover = []
        if is_mounted(mnt):
            leftover.append("a mount was left at %s" % mnt)
            subprocess.run(["fusermount3", "-uz", mnt], capture_output=True)
        pids = _procs_with_arg(self.binary, mnt)
        if pids:
            time.sleep(1)
            pids = [p for p in pids if _alive(p)]
        if pids:
            leftover.append("mailfs processes left running: %s" % pids)
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        return Attempt(rc, out.decode(errors="replace"), err.decode(errors="replace"), mnt,
                       leftover, secs)

    def cleanup(self):
        problems = []
        for m in reversed(self.mounts):
            if m.unmounted:
                continue  # the test unmounted it and saw the problems itself
            for p in m.unmount():
                problems.append("%s: %s" % (m.path, p))
        self.mounts.clear()
        for d in self.shared_dirs:
            if not any(p.startswith(d + "/") for p in mounted_paths()):
                shutil.rmtree(d, ignore_errors=True)
        self.shared_dirs.clear()
        return problems


def _mounter_fixture(mailfs_bin, tmp_path_factory, tag):
    base = str(tmp_path_factory.mktemp(tag, numbered=True))
    mnt = Mounter(mailfs_bin, base)
    yield mnt
    problems = mnt.cleanup()
    if problems:
        pytest.fail("mount cleanup found problems:\n  " + "\n  ".join(problems), pytrace=False)


@pytest.fixture
def mounter(mailfs_bin, tmp_path_factory):
    yield from _mounter_fixture(mailfs_bin, tmp_path_factory, "mnt")


@pytest.fixture(scope="module")
def module_mounter(mailfs_bin, tmp_path_factory):
    yield from _mounter_fixture(mailfs_bin, tmp_path_factory, "modmnt")


@pytest.fixture
def mount(mounter):
    """mount(user, **kw) -> Mount; unmounted and checked when the test ends."""
    return mounter.mount


@pytest.fixture(scope="module")
def module_mount(module_mounter):
    return module_mounter.mount


@pytest.fixture
def try_mount(mounter):
    """try_mount(user, **kw) -> Attempt, for mount commands that should fail."""
    return mounter.try_mount


# --------------------------------------------------------------------------
# helpers for tests

def run(argv, timeout=300, as_user=None, **kw):
    """subprocess.run with captured bytes output and a timeout (as_user: (uid, gid))."""
    return subprocess.run(as_user_argv(as_user, argv), capture_output=True, timeout=timeout, **kw)
