"""Passwords from a real Secret Service keyring (libsecret + gnome-keyring), and their order.

Each test that needs a keyring gets its own headless D-Bus session: `dbus-run-session` runs a
small helper script with a fresh HOME and XDG_RUNTIME_DIR (0700) that unlocks a new login
keyring (`gnome-keyring-daemon --unlock`, which returns before the daemon owns its name, so
the helper waits up to 5 s for org.freedesktop.secrets on the bus), reports the bus address
and then waits until the test closes its stdin.  mailfs commands are run with that bus
address; the session (and gnome-keyring with it) ends when the test ends, and the test checks
that no keyring daemon is left.  Mounts use a real Dovecot (the conftest fixtures), detached
(`mailfs SOURCE MNT` must exit 0) with stdin not a terminal unless a test says otherwise.

What is checked against what:
  - `mailfs password set|clear` against `secret-tool lookup/search` (when installed);
  - a mount's working against the server's own bytes (imaplib), never against mailfs;
  - the order password_command > password_file > keyring > prompt, each time with a WRONG
    password in the sources that must lose, so that using the wrong one fails the mount;
  - "the password never leaks": the -d trace, /proc/PID/cmdline and environ, every cache file.

Contract: /work/shared/SPEC.md ("Command line": the password order, `mailfs password
set|clear`; "Bad input and failure": one line naming what failed and what to do), and
lib/password.h (schema "org.mailfs.Password", attributes protocol/user/host/port; "a keyring
that is not running is skipped; the final error then says so").
"""
import base64
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import time

import pytest

from conftest import Mount, is_mounted, note, _procs_with_arg

HOST = "127.0.0.1"
CMD_TIMEOUT = 30          # any single mailfs/secret-tool command
SESSION_START_TIMEOUT = 20
KEYRING_UNLOCK_PW = "keyring-login-pw"

# Runs inside dbus-run-session.  $1: file to write the bus address to once the Secret Service
# owns its name on the bus; $2: "keyring" (start and unlock gnome-keyring) or "bus-only".
HELPER = r'''#!/bin/sh
ready=$1
mode=$2
secrets_up() {
    if command -v dbus-send >/dev/null 2>&1; then
        timeout 5 dbus-send --session --print-reply --dest=org.freedesktop.DBus \
            /org/freedesktop/DBus org.freedesktop.DBus.ListNames 2>/dev/null |
            grep -q '"org\.freedesktop\.secrets"'
    else
        timeout 5 busctl --user list --no-legend 2>/dev/null |
            grep '^org\.freedesktop\.secrets ' | grep -vq activatable
    fi
}
if [ "$mode" = keyring ]; then
    # --unlock with a password on stdin creates the login keyring without a prompt.
    printf '%s' "$MAILFS_TEST_KEYRING_PW" |
        timeout 10 gnome-keyring-daemon --unlock --components=secrets >/dev/null 2>&1
    # It returns before it has registered on the bus: wait for the name (up to 5 s).
    i=0
    until secrets_up; do
        i=$((i + 1))
        if [ $i -ge 50 ]; then
            echo "keyring helper: org.freedesktop.secrets never appeared on the bus" >&2
            exit 3
        fi
        sleep 0.1
    done
fi
printf '%s\n' "$DBUS_SESSION_BUS_ADDRESS" > "$ready.tmp" && mv "$ready.tmp" "$ready"
# Stay (and keep the session) until the test closes our stdin.
cat >/dev/null
'''


# --------------------------------------------------------------------------
# the keyring session

def _proc_env_has(pid, needle):
    try:
        with open("/proc/%d/environ" % pid, "rb") as f:
            return needle in f.read().split(b"\0")
    except OSError:
        return False


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _comm(pid):
    try:
        with open("/proc/%d/comm" % pid) as f:
            return f.read().strip()
    except OSError:
        return ""


class KeyringSession:
    """One dbus-run-session with (mode="keyring") or without (mode="bus-only") an unlocked
    gnome-keyring.  .env: environment for commands in the session (HOME, XDG_RUNTIME_DIR,
    DBUS_SESSION_BUS_ADDRESS); .bus_env: what a mount needs ({DBUS_SESSION_BUS_ADDRESS})."""

    def __init__(self, base, mode="keyring"):
        self.base = base
        self.mode = mode
        self.home = os.path.join(base, "home")
        self.run_dir = os.path.join(base, "run")
        os.makedirs(self.home, mode=0o700)
        os.makedirs(self.run_dir, mode=0o700)
        os.chmod(self.run_dir, 0o700)
        self.helper = os.path.join(base, "keyring-helper.sh")
        with open(self.helper, "w") as f:
            f.write(HELPER)
        self.ready = os.path.join(base, "ready")
        self.log_path = os.path.join(base, "session.log")
        env = dict(os.environ)
        for k in ("DBUS_SESSION_BUS_ADDRESS", "DISPLAY", "WAYLAND_DISPLAY", "MAILFS_BIN",
                  "XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "GNOME_KEYRING_CONTROL",
                  "SSH_AUTH_SOCK"):
            env.pop(k, None)
        env.update(HOME=self.home, XDG_RUNTIME_DIR=self.run_dir, LC_ALL="C.UTF-8",
                   MAILFS_TEST_KEYRING_PW=KEYRING_UNLOCK_PW)
        self.base_env = env
        self.proc = None
        self.address = None
        self.problems = []

    def start(self):
        logf = open(self.log_path, "wb")
        # `timeout` is only a backstop; the session normally ends when stdin is closed.
        self.proc = subprocess.Popen(
            ["timeout", "900", "dbus-run-session", "--", "sh", self.helper, self.ready,
             self.mode],
            stdin=subprocess.PIPE, stdout=logf, stderr=logf, env=self.base_env,
            start_new_session=True)
        logf.close()
        deadline = time.time() + SESSION_START_TIMEOUT
        while not os.path.exists(self.ready):
            if self.proc.poll() is not None or time.time() > deadline:
                self.close()
                pytest.fail("the headless keyring session did not start: %s" % self.log(),
                            pytrace=False)
            time.sleep(0.05)
        with open(self.ready) as f:
            self.address = f.readline().strip()
        assert self.address, "empty bus address"
        return self

    def restart(self):
        """A new D-Bus session and keyring daemon on the same HOME (the keyring file)."""
        self.close()
        if os.path.exists(self.ready):
            os.unlink(self.ready)
        self.address = None
        return self.start()

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read().strip()
        except OSError:
            return ""

    @property
    def env(self):
        e = dict(self.base_env)
        e.pop("MAILFS_TEST_KEYRING_PW", None)
        e["DBUS_SESSION_BUS_ADDRESS"] = self.address
        return e

    @property
    def bus_env(self):
        return {"DBUS_SESSION_BUS_ADDRESS": self.address}

    def run(self, argv, input=None, timeout=CMD_TIMEOUT):
        """Run ARGV in the session; stdin is INPUT (bytes/str) or /dev/null, never a tty."""
        if isinstance(input, str):
            input = input.encode()
        kw = dict(input=input) if input is not None else dict(stdin=subprocess.DEVNULL)
        return subprocess.run(argv, env=self.env, capture_output=True, timeout=timeout, **kw)

    def keyring_daemons(self):
        """Live gnome-keyring-daemon processes of this session (found by our HOME)."""
        needle = b"HOME=" + os.fsencode(self.home)
        out = []
        for d in os.listdir("/proc"):
            if d.isdigit() and _comm(int(d)).startswith("gnome-keyring") and \
                    _proc_env_has(int(d), needle) and _alive(int(d)):
                out.append(int(d))
        return out

    def close(self):
        if self.proc is None:
            return self.problems
        daemons = self.keyring_daemons()
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.problems.append("the dbus-run-session did not end 15 s after its helper's "
                                 "stdin was closed; killed")
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)   # our own process group
            except ProcessLookupError:
                pass
            self.proc.wait(5)
        self.proc = None
        # gnome-keyring ends with its bus; give it a moment, then make sure.
        deadline = time.time() + 5
        left = daemons + [p for p in self.keyring_daemons() if p not in daemons]
        while time.time() < deadline:
            left = [p for p in left if _alive(p)]
            if not left:
                break
            time.sleep(0.1)
        for p in left:
            if _alive(p) and _comm(p).startswith("gnome-keyring"):
                self.problems.append("gnome-keyring-daemon %d outlived its D-Bus session; "
                                     "killed" % p)
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        return self.problems


@pytest.fixture(scope="session")
def keyring_tools(_environment_ok):
    for tool in ("dbus-run-session", "gnome-keyring-daemon"):
        if not shutil.which(tool):
            pytest.skip("%s is not installed" % tool)
    if not shutil.which("dbus-send") and not shutil.which("busctl"):
        pytest.skip("neither dbus-send nor busctl is installed")
    return bool(shutil.which("secret-tool"))


@pytest.fixture
def session_factory(keyring_tools, tmp_path):
    sessions = []

    def make(mode="keyring"):
        base = str(tmp_path / ("keyring%d" % (len(sessions) + 1)))
        os.makedirs(base)
        ks = KeyringSession(base, mode)
        sessions.append(ks)
        return ks.start()
    yield make
    problems = []
    for ks in sessions:
        problems += ks.close()
    if problems:
        note("keyring cleanup: " + "; ".join(problems))
        pytest.fail("keyring cleanup: " + "; ".join(problems), pytrace=False)


@pytest.fixture
def keyring(session_factory):
    """A headless D-Bus session with an unlocked, empty login keyring."""
    return session_factory("keyring")


@pytest.fixture
def has_secret_tool(keyring_tools):
    return keyring_tools


# --------------------------------------------------------------------------
# helpers

def make_msg(token, i):
    return (b"From: Sender %d <s%d@example.com>\r\n"
            b"To: rcpt@example.com\r\n"
            b"Subject: %s %d\r\n"
            b"Date: Mon, 02 Jun 2025 10:%02d:00 +0000\r\n"
            b"Message-ID: <%s.%d@example.com>\r\n"
            b"\r\n"
            b"body of message %d\r\n") % (i, i, token.encode(), i, i, token.encode(), i, i)


@pytest.fixture
def mailbox_user(user):
    """The test's user with 2 messages in INBOX and 1 in Work."""
    user.append_many("INBOX", [make_msg("kr-inbox", 1), make_msg("kr-inbox", 2)])
    user.append_many("Work", [make_msg("kr-work", 3)])
    return user


def source_of(user, scheme="imaps"):
    return user.url(scheme)


def pw_set(ks, source, password):
    return ks.run([ks_bin(), "password", "set", source], input=password + "\n")


def pw_clear(ks, source):
    return ks.run([ks_bin(), "password", "clear", source])


_BIN = [None]


def ks_bin():
    return _BIN[0]


@pytest.fixture(autouse=True)
def _bin(mailfs_bin):
    _BIN[0] = mailfs_bin


def err_lines(r):
    text = r.stderr.decode(errors="replace") if isinstance(r.stderr, bytes) else r.stderr
    return [ln for ln in text.splitlines() if ln.strip()]


def secret_lookup(ks, user, scheme="imaps"):
    """secret-tool's view of the entry for USER's SOURCE (None if nothing)."""
    srv = user.server
    proto = "pop3" if scheme.startswith("pop3") else "imap"
    r = ks.run(["secret-tool", "lookup", "protocol", proto, "user", user.name, "host", HOST,
                "port", str(srv.ports[scheme])])
    return r.stdout.decode() if r.returncode == 0 else None


def secret_search_all(ks, user):
    """secret-tool search --all output (attributes go to stderr, labels to stdout)."""
    r = ks.run(["secret-tool", "search", "--all", "user", user.name])
    return (r.stdout + r.stderr).decode(errors="replace")


def count_items(ks, user):
    """How many keyring items carry USER (secret-tool search --all, labels counted)."""
    return secret_search_all(ks, user).count("label = ")


def check_mount_works(m, user):
    """The top folders are listed and every INBOX message reads as the server holds it."""
    top = set(os.listdir(m.path))
    for folder in ("INBOX", "Work", "Trash"):
        assert folder in top, "folder %s missing from %s" % (folder, sorted(top))
    truth = set(user.account().fetch_all("INBOX").values())
    names = sorted(os.listdir(os.path.join(m.path, "INBOX")))
    assert len(names) == len(truth) == 2, names
    for n in names:
        with open(os.path.join(m.path, "INBOX", n), "rb") as f:
            assert f.read() in truth, n


def keyring_mount(mount, user, ks, **kw):
    """Detached mount with only cafile and cache_dir (no password_file/command), stdin not a
    tty, in the keyring session's bus."""
    kw.setdefault("password_file", False)
    kw.setdefault("foreground", False)
    env = dict(ks.bus_env) if ks is not None else {}
    env.update(kw.pop("env", {}))
    return mount(user, env=env, **kw)


def write_pw_file(path, password):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    return path


def assert_no_leftover(a):
    assert a.leftover == [], a.leftover
    assert not is_mounted(a.mnt)


WRONG = "definitely-not-the-password"


# --------------------------------------------------------------------------
# 1-3: set, mount from the keyring, clear

def test_password_set_stores_in_keyring(keyring, user, has_secret_tool):
    src = source_of(user)
    r = pw_set(keyring, src, user.password)
    assert r.returncode == 0, r
    assert len(err_lines(r)) <= 1, err_lines(r)
    if not has_secret_tool:
        pytest.skip("secret-tool is not installed: stored, but not cross-checked")
    assert secret_lookup(keyring, user) == user.password
    # The schema name and the label say whose it is.
    out = secret_search_all(keyring, user)
    assert "schema = org.mailfs.Password" in out, out
    assert user.name in out


def test_mount_uses_keyring_then_clear(keyring, mailbox_user, mount, try_mount, report):
    user = mailbox_user
    src = source_of(user)
    r = pw_set(keyring, src, user.password)
    assert r.returncode == 0, r

    # 2. only cafile and cache_dir: the password comes from the keyring
    m = keyring_mount(mount, user, keyring)
    assert m.options == ["cafile=" + user.server.cert, "cache_dir=" + m.cache_dir]
    check_mount_works(m, user)
    # The daemon no longer needs the session bus: end it, the mount keeps working.
    assert keyring.close() == []
    work = os.path.join(m.path, "Work")
    names = os.listdir(work)
    assert len(names) == 1
    with open(os.path.join(work, names[0]), "rb") as f:
        assert f.read() == make_msg("kr-work", 3)
    assert m.unmount() == []

    # 3. clear in a new session on the same HOME (the keyring is on disk), then no password
    keyring.restart()
    r = pw_clear(keyring, src)
    assert r.returncode == 0, r
    assert len(err_lines(r)) <= 1, err_lines(r)
    a = try_mount(user, password_file=False, env=keyring.bus_env)
    assert a.rc not in (0, None), a
    assert len(a.lines) == 1, a.lines
    line = a.lines[0]
    assert "password_file" in line and "password set" in line, line
    assert user.name in line, line
    assert_no_leftover(a)
    report("keyring: no-password error: %s" % line)


def test_set_twice_replaces(keyring, mailbox_user, mount, has_secret_tool):
    """A second `password set` replaces the entry: one item, the new password."""
    user = mailbox_user
    src = source_of(user)
    assert pw_set(keyring, src, WRONG).returncode == 0
    r = pw_set(keyring, src, user.password)
    assert r.returncode == 0, r
    if has_secret_tool:
        assert secret_lookup(keyring, user) == user.password
        assert count_items(keyring, user) == 1
    m = keyring_mount(mount, user, keyring)
    check_mount_works(m, user)


def test_entry_is_per_protocol_and_port(keyring, user, mount, try_mount, has_secret_tool):
    """An entry for pop3s://U@H:P is found by a pop3s mount and not by imaps:// or imap://
    (other protocol/port attributes); clearing the imaps one leaves the pop3 one."""
    user.append_many("INBOX", [make_msg("kr-pop", 1)])
    assert pw_set(keyring, source_of(user, "pop3s"), user.password).returncode == 0
    if has_secret_tool:
        assert secret_lookup(keyring, user, "pop3s") == user.password
        assert secret_lookup(keyring, user, "imaps") is None
    m = keyring_mount(mount, user, keyring, scheme="pop3s")
    assert "spool" in os.listdir(m.path)
    assert len(os.listdir(os.path.join(m.path, "spool"))) == 1
    assert m.unmount() == []

    for scheme in ("imaps", "imap"):
        a = try_mount(user, scheme=scheme, password_file=False, env=keyring.bus_env)
        assert a.rc not in (0, None), (scheme, a)
        assert len(a.lines) == 1 and "no password" in a.lines[0], (scheme, a.lines)
        assert_no_leftover(a)

    # clear of the imaps source: nothing stored there -> error; the pop3 entry survives
    r = pw_clear(keyring, source_of(user, "imaps"))
    assert r.returncode != 0
    if has_secret_tool:
        assert secret_lookup(keyring, user, "pop3s") == user.password


def test_entry_stored_by_secret_tool_is_used(keyring, mailbox_user, mount, has_secret_tool):
    """An entry stored by secret-tool (no schema name) with the same attributes is found."""
    if not has_secret_tool:
        pytest.skip("secret-tool is not installed")
    user = mailbox_user
    r = keyring.run(["secret-tool", "store", "--label=by hand", "protocol", "imap", "user",
                     user.name, "host", HOST, "port", str(user.server.ports["imaps"])],
                    input=user.password)
    assert r.returncode == 0, r
    m = keyring_mount(mount, user, keyring)
    check_mount_works(m, user)


def test_special_characters_round_trip(keyring, make_user, mount):
    """A password with spaces, quotes, a backslash and shell metacharacters survives
    `password set` (stdin) -> keyring -> login."""
    u = make_user("krspecial")
    special = 'Pa ss"wo\\rd $HOME `x` ;#%&*'
    u.password = u.server.add_user(u.name, special)
    u.append_many("INBOX", [make_msg("kr-sp", 1), make_msg("kr-sp", 2)])
    u.append_many("Work", [make_msg("kr-sp", 3)])
    r = pw_set(keyring, source_of(u), special)
    assert r.returncode == 0, r
    if shutil.which("secret-tool"):
        assert secret_lookup(keyring, u) == special
    m = keyring_mount(mount, u, keyring)
    check_mount_works(m, u)


# --------------------------------------------------------------------------
# 4: order

def test_password_file_beats_keyring(keyring, mailbox_user, mount, tmp_path):
    user = mailbox_user
    assert pw_set(keyring, source_of(user), WRONG).returncode == 0
    pf = write_pw_file(str(tmp_path / "right"), user.password)
    m = keyring_mount(mount, user, keyring, password_file=pf)
    check_mount_works(m, user)


def test_password_command_beats_keyring(keyring, mailbox_user, mount, tmp_path):
    user = mailbox_user
    assert pw_set(keyring, source_of(user), WRONG).returncode == 0
    pf = write_pw_file(str(tmp_path / "right"), user.password)
    m = keyring_mount(mount, user, keyring, options=["password_command=cat " + pf])
    check_mount_works(m, user)


def test_password_command_beats_file_and_keyring(keyring, mailbox_user, mount, tmp_path):
    user = mailbox_user
    assert pw_set(keyring, source_of(user), WRONG).returncode == 0
    wrong = write_pw_file(str(tmp_path / "wrong"), WRONG)
    right = write_pw_file(str(tmp_path / "right"), user.password)
    m = keyring_mount(mount, user, keyring, password_file=wrong,
                      options=["password_command=cat " + right])
    check_mount_works(m, user)


def test_wrong_keyring_password_alone_fails(keyring, mailbox_user, try_mount):
    """Sanity check of the order tests: a WRONG keyring password alone fails the mount with
    one line (so the tests above prove which source won)."""
    user = mailbox_user
    assert pw_set(keyring, source_of(user), WRONG).returncode == 0
    a = try_mount(user, password_file=False, env=keyring.bus_env)
    assert a.rc not in (0, None), a
    assert len(a.lines) == 1, a.lines
    assert WRONG not in a.stderr
    assert_no_leftover(a)


def test_failing_configured_source_does_not_fall_back(keyring, mailbox_user, try_mount, tmp_path):
    """A configured password_file/password_command that fails is final (password.c): a right
    password in the keyring is not silently used instead; one line names the source."""
    user = mailbox_user
    assert pw_set(keyring, source_of(user), user.password).returncode == 0
    missing = str(tmp_path / "no-such-file")
    a = try_mount(user, password_file=missing, env=keyring.bus_env)
    assert a.rc not in (0, None), a
    assert len(a.lines) == 1 and missing in a.lines[0], a.lines
    assert_no_leftover(a)
    a = try_mount(user, password_file=False, options=["password_command=exit 3"],
                  env=keyring.bus_env)
    assert a.rc not in (0, None), a
    assert len(a.lines) == 1 and "password_command" in a.lines[0], a.lines
    assert_no_leftover(a)


def _run_on_pty(argv, env, answer=None, timeout=CMD_TIMEOUT):
    """Run ARGV with stdin/stdout/stderr on a new pty, in a new session (so /dev/tty is not
    the runner's terminal).  If ANSWER is given, type it after "Password for" shows up.
    Returns (rc, everything written to the pty)."""
    master, slave = pty.openpty()
    try:
        p = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                             start_new_session=True)
    finally:
        os.close(slave)
    out = b""
    answered = False
    deadline = time.time() + timeout
    try:
        while True:
            if time.time() > deadline:
                p.kill()
                p.wait()
                return None, out
            r, _, _ = select.select([master], [], [], 0.1)
            eof = False
            if r:
                try:
                    chunk = os.read(master, 4096)
                except OSError:   # EIO: every slave end is closed
                    chunk = b""
                eof = chunk == b""
                out += chunk
            if answer is not None and not answered and b"Password for" in out:
                os.write(master, answer.encode() + b"\n")
                answered = True
            if p.poll() is not None and (eof or not r):
                return p.returncode, out
            if eof:
                time.sleep(0.05)
    finally:
        os.close(master)


def test_keyring_beats_prompt_and_prompt_is_last(keyring, mailbox_user, mounter):
    """stdin a terminal: with a keyring entry there is no prompt; without one, the prompt."""
    user = mailbox_user
    assert pw_set(keyring, source_of(user), user.password).returncode == 0
    for step in ("keyring", "prompt"):
        wd = mounter._workdir("p")
        mnt = os.path.join(wd, "mnt")
        os.makedirs(mnt)
        argv, source, cdir, opts = mounter.command(user, mnt, password_file=False, workdir=wd)
        env = mounter.env(wd, keyring.bus_env)
        rc, out = _run_on_pty(argv, env, answer=user.password if step == "prompt" else None)
        mounted = is_mounted(mnt)
        if mounted:
            m = Mount(mounter, mnt, user, source, opts, cdir, None, os.path.join(wd, "x"), wd,
                      ())
            mounter.mounts.append(m)
        assert rc == 0 and mounted, (step, rc, out)
        if step == "keyring":
            assert b"Password for" not in out, out
            assert pw_clear(keyring, source_of(user)).returncode == 0
        else:
            assert b"Password for %s@%s" % (user.name.encode(), HOST.encode()) in out, out
            assert user.password.encode() not in out, "the prompt echoed the password"
        m.unmount()


# --------------------------------------------------------------------------
# 5: no Secret Service

def test_no_bus_password_file_works_silently(mailbox_user, mount, try_mount):
    """No DBUS_SESSION_BUS_ADDRESS at all (conftest removes it): password_file mounts and
    the command says nothing about a keyring."""
    user = mailbox_user
    m = mount(user, foreground=False)
    with open(m.log_path, errors="replace") as f:
        out = f.read()
    assert not re.search(r"keyring|secret|d-?bus|autolaunch", out, re.I), out
    check_mount_works(m, user)


def test_no_bus_no_password(user, try_mount, report):
    a = try_mount(user, password_file=False)
    assert a.rc not in (0, None), a
    assert len(a.lines) == 1, a.lines
    line = a.lines[0]
    assert "no password" in line and "password_file" in line, line
    assert re.search(r"no Secret Service", line, re.I) and "keyring" in line, line
    assert a.seconds < 15, a
    assert_no_leftover(a)
    report("no keyring: %s" % line)


def test_stale_bus_address_is_no_keyring(user, try_mount, tmp_path):
    """DBUS_SESSION_BUS_ADDRESS names a bus that is gone (an old ssh/tmux environment):
    the same as no keyring, one line, no hang."""
    a = try_mount(user, password_file=False,
                  env={"DBUS_SESSION_BUS_ADDRESS": "unix:path=%s/gone" % tmp_path})
    assert a.rc not in (0, None), a
    assert len(a.lines) == 1, a.lines
    assert re.search(r"no Secret Service", a.lines[0], re.I), a.lines
    assert a.seconds < 15, a
    assert_no_leftover(a)


def test_bus_without_keyring(session_factory, user, try_mount, report):
    """A session bus on which nobody has unlocked a keyring (gnome-keyring may get
    D-Bus-activated, with no login keyring): fails quickly with one line, no prompt, no hang."""
    ks = session_factory("bus-only")
    a = try_mount(user, password_file=False, env=ks.bus_env, timeout=60)
    report("bus without keyring: rc=%s %.1fs %r" % (a.rc, a.seconds, a.lines))
    assert a.rc not in (0, None), a
    assert len(a.lines) == 1, a.lines
    assert "no password" in a.lines[0], a.lines
    assert a.seconds < 30, a
    assert_no_leftover(a)


def test_password_set_without_keyring(user, tmp_path):
    env = dict(os.environ)
    env.pop("DBUS_SESSION_BUS_ADDRESS", None)
    env.pop("DISPLAY", None)
    home = tmp_path / "home"
    run_dir = tmp_path / "run"
    home.mkdir(mode=0o700)
    run_dir.mkdir(mode=0o700)
    env.update(HOME=str(home), XDG_RUNTIME_DIR=str(run_dir))
    for sub in ("set", "clear"):
        r = subprocess.run([ks_bin(), "password", sub, source_of(user)], env=env,
                           input=user.password.encode() + b"\n" if sub == "set" else b"",
                           capture_output=True, timeout=CMD_TIMEOUT)
        assert r.returncode != 0, (sub, r)
        lines = err_lines(r)
        assert len(lines) == 1, (sub, lines)
        assert re.search(r"no Secret Service", lines[0], re.I), (sub, lines)


# --------------------------------------------------------------------------
# 6: clear with nothing stored, set with nothing on stdin

def test_clear_nothing_stored(keyring, user):
    r = pw_clear(keyring, source_of(user))
    assert r.returncode != 0, r
    lines = err_lines(r)
    assert len(lines) == 1, lines
    assert user.name in lines[0] and "keyring" in lines[0], lines


def test_set_empty_stdin_stores_nothing(keyring, user, has_secret_tool):
    for data in ("", "\n"):
        r = keyring.run([ks_bin(), "password", "set", source_of(user)], input=data)
        assert r.returncode != 0, (data, r)
        lines = err_lines(r)
        assert len(lines) == 1 and "password" in lines[0], lines
    if has_secret_tool:
        assert secret_lookup(keyring, user) is None


# --------------------------------------------------------------------------
# a locked keyring

def _lock_login(ks):
    r = ks.run(["dbus-send", "--session", "--print-reply", "--dest=org.freedesktop.secrets",
                "/org/freedesktop/secrets", "org.freedesktop.Secret.Service.Lock",
                "array:objpath:/org/freedesktop/secrets/collection/login"])
    assert r.returncode == 0, r


def test_locked_keyring_says_so(keyring, mailbox_user, try_mount, report):
    """The entry exists but the keyring is locked (and no prompt can be shown): the mount
    fails quickly, with one line that points at the keyring -- not "no password ... run
    `mailfs password set`", which the user already did."""
    if not shutil.which("dbus-send"):
        pytest.skip("dbus-send is not installed")
    user = mailbox_user
    assert pw_set(keyring, source_of(user), user.password).returncode == 0
    _lock_login(keyring)
    a = try_mount(user, password_file=False, env=keyring.bus_env, timeout=60)
    report("locked keyring: rc=%s %.1fs %r" % (a.rc, a.seconds, a.lines))
    assert a.rc not in (0, None), a
    assert a.seconds < 30, a
    assert_no_leftover(a)
    assert len(a.lines) == 1, a.lines
    assert "keyring" in a.lines[0].lower(), \
        "a locked keyring is reported as a missing password: %r" % a.lines


def test_set_into_locked_keyring_fails_cleanly(keyring, user, report):
    if not shutil.which("dbus-send"):
        pytest.skip("dbus-send is not installed")
    _lock_login(keyring)
    t0 = time.time()
    r = pw_set(keyring, source_of(user), user.password)
    assert time.time() - t0 < 30
    assert r.returncode != 0, r
    lines = err_lines(r)
    report("password set, locked keyring: %r" % lines)
    assert len(lines) == 1 and "store" in lines[0], lines
    assert user.password not in r.stderr.decode(errors="replace")


# --------------------------------------------------------------------------
# 7: the password never leaks

def _plain_blob(user):
    return base64.b64encode(b"\0" + user.name.encode() + b"\0" + user.password.encode())


def _grep_tree(root, needles):
    hits = []
    for d, _, files in os.walk(root):
        for n in files:
            p = os.path.join(d, n)
            try:
                with open(p, "rb") as f:
                    data = f.read()
            except OSError:
                continue
            for nd in needles:
                if nd in data:
                    hits.append((p, nd))
    return hits


def test_password_never_leaks(keyring, mailbox_user, mount, report):
    user = mailbox_user
    pw = user.password.encode()
    needles = [pw, _plain_blob(user)]
    assert pw_set(keyring, source_of(user), user.password).returncode == 0
    m = keyring_mount(mount, user, keyring, foreground=True, debug=True)
    pid = m.proc.pid
    for what in ("cmdline", "environ"):
        with open("/proc/%d/%s" % (pid, what), "rb") as f:
            data = f.read()
        assert not any(n in data for n in needles), "password in /proc/PID/%s" % what
    check_mount_works(m, user)
    with open(os.path.join(m.path, "Work", os.listdir(os.path.join(m.path, "Work"))[0]),
              "rb") as f:
        f.read()
    assert _grep_tree(m.cache_dir, needles) == []
    assert m.unmount() == []
    assert _grep_tree(m.cache_dir, needles) == []
    trace = open(m.log_path, "rb").read()
    assert trace.strip(), "no -d trace at all"
    assert re.search(rb"LOGIN|AUTHENTICATE", trace), trace[:2000]
    assert b"redacted" in trace, "the login was traced without its redaction marker"
    for n in needles:
        assert n not in trace, "the password is in the -d trace"
    report("keyring: -d trace %d bytes, password nowhere in trace/cmdline/environ/cache" %
           len(trace))


def test_password_never_leaks_detached(keyring, mailbox_user, mount, mailfs_bin):
    """The detached daemon's /proc/PID/cmdline and environ, with password_command."""
    user = mailbox_user
    pw = user.password.encode()
    pf = os.path.join(keyring.base, "pwfile")
    write_pw_file(pf, user.password)
    m = keyring_mount(mount, user, keyring, options=["password_command=cat " + pf])
    pids = _procs_with_arg(mailfs_bin, m.path)
    assert pids, "no daemon found for %s" % m.path
    for pid in pids:
        for what in ("cmdline", "environ"):
            with open("/proc/%d/%s" % (pid, what), "rb") as f:
                assert pw not in f.read(), "password in /proc/%d/%s" % (pid, what)
    check_mount_works(m, user)
    assert _grep_tree(m.cache_dir, [pw, _plain_blob(user)]) == []
