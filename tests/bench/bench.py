#!/usr/bin/python3
"""mailfs benchmark: mailfs against the protocol floor, mbsync and a local Maildir.

Not a meson test.  Run as root with Debian's /usr/bin/python3, preferably through
tests/bench/run.sh (a private loopback via `unshare --net`):

    sudo tests/bench/run.sh [--messages 10000] [--repeat 5] [--json FILE] [--big 0] ...

One throwaway Dovecot (tests/mailserver.py) is loaded with a tests/corpus.py corpus
(default 10,000 ordinary messages over several folders, big=0) in which a few plain
messages carry a planted grep token.  Every repetition then measures, one after the
other on the same machine:

  fetch-all       one TLS connection (Python ssl socket): LOGIN, LIST, then for every
                  selectable folder EXAMINE + `UID FETCH 1:* (BODY.PEEK[])`, all pipelined;
                  every byte is read and counted.  The protocol floor.
  mbsync          a full first sync (isync, Sync Pull, Create Near) into a fresh Maildir.
  maildir grep    `grep -rl TOKEN MAILDIR` over that Maildir (run once to warm, then timed).
  mailfs cold     fresh cache_dir, `mailfs -f` mount, `grep -rl TOKEN MNT`:
                  mount start -> mounted, grep alone, and mount start -> grep end.
  mailfs warm     the same grep again on the same mount (kernel page cache warm), and a
                  third time (the second pass still revalidates every inode: GETATTR).
  mailfs remount  unmount, wait for the daemon to exit, mount again with the same
                  cache_dir (on-disk cache warm, kernel cache of the mount cold), grep.
  mailfs ls -R    another fresh cache_dir, mount, `ls -R MNT`.

Reported: medians (and min/max) of R repetitions and the ratios the project's goals are
stated in.  The machine is shared and noisy: only medians and ratios mean anything.
Correctness is checked along the way: grep's hits in the mount equal grep's hits in the
Maildir and the messages the server holds with the token (by content hash; mbsync
stores LF line ends, so the Maildir comparison normalizes CRLF), the mount's file count
equals the server's message count, and (first repetition, unless --no-verify) every file
in the mount is byte-identical to the server's copy with a matching st_size.
"""
import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

import corpus as corpus_mod  # noqa: E402
import mailserver  # noqa: E402

HOST = mailserver.HOST
USER = "bench"
CLOCK = time.perf_counter


class Scratch:
    """Where the client side writes (mbsync's Maildir, mailfs cache dirs).

    ext4   (default) a journaled ext4 in a sparse loop image: what a user's home usually is.
           Measured on this VM: its root file system is ext4 WITHOUT a journal, where every
           inode allocation skips inodes deleted in the last minute (ext4's
           recently_deleted()) -- after an `rm -rf` of 10,000 files, creating 10,000 new ones
           turns quadratic and both mbsync and mailfs then spend seconds of CPU in
           ext4_create.  That measures the VM, not mailfs.
    tmpfs  memory only (no disk cost at all, fsync free).
    none   the work directory itself."""

    def __init__(self, kind, base):
        self.kind = kind
        self.path = os.path.join(base, "scratch")
        self.mounted = False
        os.makedirs(self.path)
        if kind == "none":
            return
        if kind == "tmpfs":
            argv = ["mount", "-t", "tmpfs", "-o", "size=4g,mode=0755", "bench-scratch", self.path]
        elif kind == "ext4":
            img = os.path.join(base, "scratch.img")
            with open(img, "wb") as f:
                f.truncate(6 << 30)
            subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0",
                            img], check=True, capture_output=True)
            argv = ["mount", "-o", "loop", img, self.path]
        else:
            raise ValueError(kind)
        r = subprocess.run(argv, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError("cannot mount the %s scratch file system: %s (try --scratch none)"
                               % (kind, r.stderr.strip()))
        self.mounted = True
        os.chmod(self.path, 0o755)

    def describe(self):
        return {"ext4": "journaled ext4 on a loop image", "tmpfs": "tmpfs",
                "none": "the work directory's own file system"}[self.kind]

    def close(self):
        if self.mounted:
            r = subprocess.run(["umount", self.path], capture_output=True)
            if r.returncode != 0:
                subprocess.run(["umount", "-l", self.path], capture_output=True)
            self.mounted = False


def log(msg):
    print("[bench %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# small helpers

def sha(data):
    return hashlib.sha256(data).hexdigest()


def norm(data):
    """Content as mbsync stores it in a Maildir: LF line ends, no X-TUID header."""
    data = data.replace(b"\r\n", b"\n")
    if data.startswith(b"X-TUID: ") or b"\nX-TUID: " in data.split(b"\n\n", 1)[0]:
        data = re.sub(rb"(?m)^X-TUID: [^\n]*\n", b"", data, count=1)
    return data


def read_file(path):
    with open(path, "rb") as f:
        return f.read()


def mounted_paths():
    out = []
    with open("/proc/self/mounts", "rb") as f:
        for line in f:
            fields = line.split(b" ")
            if len(fields) > 2:
                p = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), fields[1])
                out.append(os.fsdecode(p))
    return out


def is_mounted(path):
    return os.path.realpath(path) in mounted_paths()


def rmtree(path):
    if os.path.lexists(path):
        shutil.rmtree(path, ignore_errors=True)


def children_cpu():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_timed(argv, env=None, timeout=3600, cwd=None):
    """Run ARGV; return (seconds, returncode, stdout bytes, stderr bytes, CPU seconds)."""
    c0 = children_cpu()
    t0 = CLOCK()
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, env=env,
                       timeout=timeout, cwd=cwd)
    return CLOCK() - t0, r.returncode, r.stdout, r.stderr, children_cpu() - c0


def proc_cpu(pid):
    """utime + stime of a live process (all its threads), in seconds."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def grep_argv(token, path):
    return ["grep", "-rl", token, path]


GREP_ENV = dict(os.environ, LC_ALL="C")


def git_info():
    def git(*a):
        try:
            r = subprocess.run(["git", "-C", str(REPO)] + list(a), capture_output=True,
                               text=True, timeout=20)
            return r.stdout.strip() if r.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired):
            return None
    head = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"head": head, "dirty": bool(dirty) if dirty is not None else None}


# --------------------------------------------------------------------------
# 1. fetch-all: the protocol floor

class RawImap:
    """A minimal pipelining IMAP reader over a TLS socket."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()
        self.pos = 0
        self.nread = 0

    def _fill(self):
        if self.pos > (1 << 20):
            del self.buf[:self.pos]
            self.pos = 0
        chunk = self.sock.recv(1 << 18)
        if not chunk:
            raise RuntimeError("server closed the connection")
        self.nread += len(chunk)
        self.buf += chunk

    def line(self):
        while True:
            i = self.buf.find(b"\r\n", self.pos)
            if i >= 0:
                ln = bytes(self.buf[self.pos:i])
                self.pos = i + 2
                return ln
            self._fill()

    def literal(self, n, keep):
        while len(self.buf) - self.pos < n:
            self._fill()
        data = bytes(self.buf[self.pos:self.pos + n]) if keep else None
        self.pos += n
        return data

    def response(self, keep):
        """One response: (first line, [literals], full text without literals)."""
        parts, lits = [], []
        while True:
            ln = self.line()
            parts.append(ln)
            if ln.endswith(b"}"):
                j = ln.rfind(b"{")
                if j >= 0 and ln[j + 1:-1].rstrip(b"+").isdigit():
                    n = int(ln[j + 1:-1].rstrip(b"+"))
                    lits.append((n, self.literal(n, keep)))
                    continue
            return parts, lits


def _unquote(s):
    if s.startswith(b'"'):
        return re.sub(rb"\\(.)", rb"\1", s[1:-1])
    return s


def fetch_all(srv, password, keep=False, timeout=600):
    """Connect, LOGIN, LIST, then EXAMINE + UID FETCH 1:* (BODY.PEEK[]) for every selectable
    folder, all pipelined on one TLS connection.  Returns a dict with seconds, bytes (of
    message literals), wire bytes, messages, and with keep=True {folder: {uid: bytes}}."""
    t0 = CLOCK()
    c0 = time.process_time()
    raw = socket.create_connection((HOST, srv.ports["imaps"]), 30)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s = srv.ssl_context().wrap_socket(raw, server_hostname=HOST)
    s.settimeout(timeout)
    c = RawImap(s)
    try:
        greet = c.line()
        if not greet.startswith(b"* OK"):
            raise RuntimeError("greeting %r" % greet)
        s.sendall(b"a1 LOGIN %s %s\r\na2 LIST \"\" \"*\"\r\n" % (
            mailserver.imap_quote(USER).encode(), mailserver.imap_quote(password).encode()))
        folders = []
        while True:
            parts, lits = c.response(True)
            first = parts[0]
            if first.startswith(b"a1 ") and not first.startswith(b"a1 OK"):
                raise RuntimeError("LOGIN failed: %r" % first)
            if first.startswith(b"* LIST "):
                m = re.match(rb'\* LIST \(([^)]*)\) (NIL|"(?:[^"\\]|\\.)*") (.*)$', first)
                attrs = m.group(1).lower().split()
                name = lits[0][1] if lits else _unquote(m.group(3))
                if b"\\noselect" in attrs or b"\\nonexistent" in attrs:
                    continue
                folders.append(name)
            if first.startswith(b"a2 "):
                if not first.startswith(b"a2 OK"):
                    raise RuntimeError("LIST failed: %r" % first)
                break
        out = bytearray()
        tags = []
        for i, f in enumerate(folders):
            q = mailserver.imap_quote(f.decode("ascii"))
            out += b"e%d EXAMINE %s\r\nf%d UID FETCH 1:* (BODY.PEEK[])\r\n" % (i, q.encode(), i)
            tags.append((b"f%d" % i, f))
        s.sendall(bytes(out))
        nmsg = nbytes = 0
        per_folder = {}
        bodies = {}
        k = 0
        cur = None
        while k < len(tags):
            parts, lits = c.response(keep)
            first = parts[0]
            if first.startswith(b"* ") and b" FETCH " in first[:30] and lits:
                nmsg += 1
                n, data = lits[-1]
                nbytes += n
                name = tags[k][1]
                per_folder[name] = per_folder.get(name, 0) + 1
                if keep:
                    um = re.search(rb"UID (\d+)", b" ".join(parts))
                    bodies.setdefault(name, {})[int(um.group(1))] = data
                continue
            if first.startswith(tags[k][0] + b" "):
                cur = first
                if not first.startswith(tags[k][0] + b" OK"):
                    raise RuntimeError("UID FETCH in %r failed: %r" % (tags[k][1], cur))
                k += 1
        s.sendall(b"z LOGOUT\r\n")
        secs = CLOCK() - t0
        cpu = time.process_time() - c0
    finally:
        try:
            s.close()
        except OSError:
            pass
    res = dict(seconds=secs, cpu=cpu, messages=nmsg, bytes=nbytes, wire_bytes=c.nread,
               folders=[mailserver.mutf7_decode(f.decode("ascii")) for f in folders],
               per_folder={mailserver.mutf7_decode(f.decode("ascii")): n
                           for f, n in per_folder.items()})
    if keep:
        res["bodies"] = {mailserver.mutf7_decode(f.decode("ascii")): b for f, b in bodies.items()}
    return res


# --------------------------------------------------------------------------
# Dovecot's per-session statistics (from its logout lines)

class SessionLog:
    LOGIN = re.compile(r"imap-login: (?:Info: )?Login: user=<%s>," % USER)
    DISCONNECT = re.compile(r"imap\(%s\).*Disconnected" % USER)

    def __init__(self, srv):
        self.path = srv.log_path
        self.offset = self._size()

    def _size(self):
        try:
            return os.path.getsize(self.path)
        except OSError:
            return 0

    def _text(self):
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            return f.read().decode(errors="replace")

    def collect(self, wait=5.0):
        """Wait (bounded) until every session that logged in since the mark has logged out;
        return {"sessions", "in", "out", "body_count", "body_bytes"} summed over them."""
        deadline = time.time() + wait
        while True:
            text = self._text()
            logins = len(self.LOGIN.findall(text))
            outs = [ln for ln in text.splitlines() if self.DISCONNECT.search(ln)]
            if len(outs) >= logins or time.time() > deadline:
                break
            time.sleep(0.05)
        st = dict(sessions=logins, closed=len(outs), **{"in": 0}, out=0, body_count=0,
                  body_bytes=0)
        for ln in outs:
            for key in ("in", "out", "body_count", "body_bytes"):
                m = re.search(r"\b%s=(\d+)" % key, ln)
                if m:
                    st[key] += int(m.group(1))
        self.offset = self._size()
        return st


# --------------------------------------------------------------------------
# 2. mbsync

def write_mbsync_conf(path, srv, password, maildir):
    text = """# written by tests/bench/bench.py
IMAPAccount bench
Host %s
Port %d
User %s
Pass "%s"
SSLType IMAPS
CertificateFile %s

IMAPStore remote
Account bench

MaildirStore local
Path %s/
Inbox %s/INBOX
SubFolders Verbatim

Channel bench
Far :remote:
Near :local:
Patterns *
Create Near
Sync Pull
SyncState *
""" % (HOST, srv.ports["imaps"], USER, password, srv.cert, maildir, maildir)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def maildir_messages(root):
    """[path] of message files (in cur/ and new/) under a Maildir tree."""
    out = []
    for d, dirs, files in os.walk(root):
        if os.path.basename(d) in ("cur", "new"):
            out.extend(os.path.join(d, f) for f in files)
    return out


# --------------------------------------------------------------------------
# 3./4. mailfs

class MailfsMount:
    def __init__(self, binary, srv, workdir, mnt, cache_dir, password_file, timeout):
        self.binary = binary
        self.srv = srv
        self.mnt = mnt
        self.cache_dir = cache_dir
        self.password_file = password_file
        self.timeout = timeout
        self.workdir = workdir
        self.proc = None
        self.stderr_path = None
        self.problems = []

    def env(self):
        env = dict(os.environ)
        for k in ("DBUS_SESSION_BUS_ADDRESS", "DISPLAY", "WAYLAND_DISPLAY"):
            env.pop(k, None)
        home = os.path.join(self.workdir, "home")
        run = os.path.join(self.workdir, "run")
        for d in (home, run):
            os.makedirs(d, mode=0o700, exist_ok=True)
        env.update(TZ="UTC", HOME=home, XDG_CACHE_HOME=os.path.join(home, ".cache"),
                   XDG_RUNTIME_DIR=run, LC_ALL="C.UTF-8")
        return env

    def mount(self, tag):
        """Start `mailfs -f`; return seconds from start until the mount is live."""
        os.makedirs(self.mnt, exist_ok=True)
        opts = "password_file=%s,cafile=%s,cache_dir=%s" % (self.password_file, self.srv.cert,
                                                              self.cache_dir)
        argv = [self.binary, "-f", "-o", opts, self.srv.url(USER, "imaps"), self.mnt]
        self.stderr_path = os.path.join(self.workdir, "mailfs-%s.stderr" % tag)
        env = self.env()
        with open(self.stderr_path, "wb") as err:
            t0 = CLOCK()
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                         env=env)
        deadline = time.time() + self.timeout
        while not is_mounted(self.mnt):
            if self.proc.poll() is not None:
                raise RuntimeError("mailfs exited with %d before mounting: %s" % (
                    self.proc.returncode, self.stderr().strip()))
            if time.time() > deadline:
                self.unmount()
                raise RuntimeError("mailfs not mounted after %.0f s" % self.timeout)
            time.sleep(0.002)
        return CLOCK() - t0

    def cpu(self):
        return proc_cpu(self.proc.pid) if self.proc is not None else None

    def stderr(self):
        try:
            return read_file(self.stderr_path).decode(errors="replace")
        except (OSError, TypeError):
            return ""

    def unmount(self):
        """fusermount3 -u, then wait for our daemon (by PID) to exit.  Returns seconds."""
        t0 = CLOCK()
        if is_mounted(self.mnt):
            for attempt in range(20):
                r = subprocess.run(["fusermount3", "-u", self.mnt], capture_output=True, text=True)
                if r.returncode == 0:
                    break
                time.sleep(0.25)
            else:
                self.problems.append("fusermount3 -u failed: %s" % r.stderr.strip())
                subprocess.run(["fusermount3", "-uz", self.mnt], capture_output=True)
        if self.proc is not None:
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.problems.append("daemon (pid %d) still running 60 s after unmount; "
                                     "sent SIGTERM" % self.proc.pid)
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            if self.proc.returncode != 0:
                self.problems.append("daemon exited with status %s" % self.proc.returncode)
            self.proc = None
        secs = CLOCK() - t0
        bad = [ln for ln in self.stderr().splitlines()
               if ln.strip() and not re.search(r"Ignoring invalid max threads value|"
                                               r"^mailfs: \S+ mounted on ", ln)]
        if bad:
            self.problems.append("daemon stderr: " + " | ".join(bad[:10]))
        return secs


def mount_messages(mnt):
    """{folder: [file path]} for every regular *.eml file in the mount (outside .mailfs)."""
    out = {}
    for d, dirs, files in os.walk(mnt):
        rel = os.path.relpath(d, mnt)
        if rel == ".mailfs" or rel.startswith(".mailfs/"):
            continue
        dirs[:] = [x for x in dirs if not (rel == "." and x == ".mailfs")]
        folder = "INBOX" if rel == "INBOX" else rel
        for f in files:
            if f.endswith(".eml"):
                out.setdefault(folder, []).append(os.path.join(d, f))
    return out


# --------------------------------------------------------------------------
# statistics

def summary(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return dict(median=statistics.median(xs), min=min(xs), max=max(xs), n=len(xs))


def fmt_s(x):
    if x is None:
        return "-"
    return "%.3f s" % x if x < 10 else "%.2f s" % x


# --------------------------------------------------------------------------
# the run

def build_corpus(args):
    c = corpus_mod.corpus(args.messages, seed=args.seed, big=args.big)
    # Plant our own token in a handful of plain messages spread over the folders.
    token = "MAILFS-BENCH-NEEDLE-%d" % (4242 + args.seed)
    candidates = {}
    for m in c.messages:
        if m.kind == "plain" and not m.tokens:
            candidates.setdefault(m.folder, []).append(m)
    planted = []
    folders = sorted(candidates)
    i = 0
    while len(planted) < args.needles and any(candidates.values()):
        f = folders[i % len(folders)]
        i += 1
        if candidates[f]:
            m = candidates[f].pop(len(candidates[f]) // 2)
            m.raw = m.raw + b"Ticket reference: " + token.encode() + b"\r\n"
            planted.append((m.folder, m.index))
    return c, token, planted


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=10000, help="ordinary messages (default 10000)")
    ap.add_argument("--repeat", type=int, default=5, help="repetitions (default 5)")
    ap.add_argument("--big", type=int, default=0, help="1 MB+ attachments in the corpus (default 0)")
    ap.add_argument("--needles", type=int, default=8, help="messages carrying the token (default 8)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--mailfs", default=str(REPO / "build" / "mailfs"), help="binary (copied first)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--workdir", help="parent of the temporary directory (default /tmp)")
    ap.add_argument("--scratch", choices=("ext4", "tmpfs", "none"), default="ext4",
                    help="file system for the Maildir and the mailfs caches (default: a "
                         "journaled ext4 loop image; see Scratch)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--no-verify", action="store_true",
                    help="skip the byte-for-byte check of every file in the mount")
    ap.add_argument("--timeout", type=float, default=1800, help="per command (s)")
    args = ap.parse_args()

    if os.geteuid() != 0:
        sys.exit("bench.py: needs root (Dovecot, FUSE mounts)")
    for tool in ("dovecot", "doveadm", "mbsync", "fusermount3", "grep", "ls"):
        if not shutil.which(tool):
            sys.exit("bench.py: %s is not installed" % tool)
    if not os.access(args.mailfs, os.X_OK):
        sys.exit("bench.py: %s is not built (meson compile -C build)" % args.mailfs)

    base = tempfile.mkdtemp(prefix="mailfs-bench-", dir=args.workdir)
    os.chmod(base, 0o755)
    # A snapshot of the binary: other people may rebuild build/ while we run.
    binary = os.path.join(base, "mailfs")
    shutil.copy2(args.mailfs, binary)
    srv = mailserver.MailServer(os.path.join(base, "server"))
    live = []  # mounts to clean up on the way out
    results = {}
    scratch = None
    try:
        scratch = Scratch(args.scratch, base)
        results = run(args, base, binary, srv, live, scratch)
    finally:
        for m in live:
            try:
                m.unmount()
            except Exception as e:  # noqa: BLE001
                log("cleanup: %s" % e)
        srv.stop()
        if scratch is not None:
            scratch.close()
        if args.keep:
            log("kept %s" % base)
        else:
            rmtree(base)
    ok = results.get("correctness", {}).get("ok")
    return 0 if ok else 1


def run(args, base, binary, srv, live, scratch):
    info = dict(date=_dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                host=platform.node(), kernel=platform.release(), cpus=os.cpu_count(),
                loadavg_start=os.getloadavg(), git=git_info(),
                mailfs=args.mailfs, mailfs_sha256=sha(read_file(binary))[:16],
                netns_private=mailserver.in_private_netns(),
                messages_arg=args.messages, repeat=args.repeat, big=args.big,
                scratch=scratch.describe())
    mbsync_ver = subprocess.run(["mbsync", "--version"], capture_output=True, text=True).stdout
    info["mbsync"] = mbsync_ver.strip()

    log("building corpus (%d messages, big=%d)" % (args.messages, args.big))
    c, token, planted = build_corpus(args)
    info.update(token=token, planted=len(planted))

    log("starting Dovecot in %s" % srv.base_dir)
    srv.start()
    password = srv.add_user(USER)
    t0 = CLOCK()
    srv.load(USER, c)
    log("loaded %d messages (%.1f MiB) in %.1f s" % (len(c), c.total_bytes() / 2**20,
                                                    CLOCK() - t0))
    pwfile = srv.password_file_for(USER, os.path.join(base, "password"))

    # The server's truth, through our own reader (untimed).
    truth = fetch_all(srv, password, keep=True)
    server_count = truth["messages"]
    server_exact = Counter()
    server_norm = Counter()
    expect_hits_exact = Counter()
    expect_hits_norm = Counter()
    for folder, bodies in truth["bodies"].items():
        for uid, data in bodies.items():
            h, hn = sha(data), sha(norm(data))
            server_exact[(folder, h)] += 1
            server_norm[hn] += 1
            if token.encode() in data:
                expect_hits_exact[h] += 1
                expect_hits_norm[hn] += 1
    server_bytes = truth["bytes"]
    truth_folders = truth["folders"]
    per_folder = truth["per_folder"]
    del truth
    info.update(server_messages=server_count, server_bytes=server_bytes,
                folders=len(truth_folders), expected_hits=sum(expect_hits_exact.values()))
    if server_count != len(c):
        log("WARNING: the server holds %d messages, the corpus has %d" % (server_count, len(c)))
    log("server: %d messages, %.1f MiB in %d folders; token %s in %d messages" % (
        server_count, server_bytes / 2**20, len(truth_folders), token,
        sum(expect_hits_exact.values())))

    maildir = os.path.join(scratch.path, "maildir")
    mbconf = os.path.join(base, "mbsyncrc")
    write_mbsync_conf(mbconf, srv, password, maildir)
    slog = SessionLog(srv)

    samples = {k: [] for k in (
        "fetch_all", "mbsync", "maildir_grep", "cold_mount", "cold_grep", "cold_total",
        "warm_grep", "warm_grep3", "remount_mount", "remount_grep", "remount_total", "unmount",
        "ls_mount", "ls_R", "ls_total")}
    extra = {k: [] for k in ("fetch_all_bytes", "mbsync_sessions", "cold_sessions",
                             "remount_sessions", "ls_sessions", "fetch_all_sessions")}
    cpu_samples = {k: [] for k in (
        "fetch_all/python", "mbsync/mbsync", "maildir_grep/grep", "cold_mount/mailfs",
        "cold_grep/grep", "cold_grep/mailfs", "warm_grep/grep", "warm_grep/mailfs",
        "warm_grep3/grep", "warm_grep3/mailfs",
        "remount_mount/mailfs", "remount_grep/grep", "remount_grep/mailfs", "ls_R/ls",
        "ls_R/mailfs")}
    problems = []
    checks = dict(grep_mount_equals_maildir=[], grep_mount_equals_server=[],
                  grep_maildir_equals_server=[], mount_count_equals_server=[],
                  maildir_count_equals_server=[], remount_grep_equals_cold=[],
                  warm_grep_equals_cold=[], ls_count_equals_server=[])
    full_verify = None

    def hits_of(stdout, root):
        paths = [p for p in stdout.decode(errors="surrogateescape").split("\n") if p]
        return sorted(os.path.relpath(p, root) for p in paths)

    def grep(root, what, cpu_key=None, mount=None):
        d0 = mount.cpu() if mount else None
        secs, rc, out, err, cpu = run_timed(grep_argv(token, root), env=GREP_ENV,
                                            timeout=args.timeout)
        if cpu_key:
            cpu_samples[cpu_key + "/grep"].append(cpu)
            if mount:
                d1 = mount.cpu()
                cpu_samples[cpu_key + "/mailfs"].append(d1 - d0 if None not in (d0, d1) else None)
        if rc not in (0, 1) or err.strip():
            problems.append("%s: grep exited %d: %s" % (what, rc, err.decode(errors="replace")
                                                       .strip()[:500]))
        return secs, hits_of(out, root)

    for rep in range(args.repeat):
        log("repetition %d/%d" % (rep + 1, args.repeat))
        # 1. fetch-all
        slog.collect(0)
        fa = fetch_all(srv, password)
        samples["fetch_all"].append(fa["seconds"])
        cpu_samples["fetch_all/python"].append(fa["cpu"])
        extra["fetch_all_bytes"].append(fa["bytes"])
        extra["fetch_all_sessions"].append(slog.collect())
        if fa["messages"] != server_count:
            problems.append("fetch-all read %d messages, expected %d" % (fa["messages"],
                                                                       server_count))
        log("  fetch-all %.2f s" % fa["seconds"])

        # 2. mbsync, full first sync into a fresh Maildir
        rmtree(maildir)
        os.makedirs(maildir)
        secs, rc, out, err, cpu = run_timed(["mbsync", "-c", mbconf, "-a"], timeout=args.timeout)
        samples["mbsync"].append(secs)
        cpu_samples["mbsync/mbsync"].append(cpu)
        extra["mbsync_sessions"].append(slog.collect())
        if rc != 0:
            problems.append("mbsync exited %d: %s" % (rc, (out + err).decode(errors="replace")
                                                       .strip()[-800:]))
        md_files = maildir_messages(maildir)
        checks["maildir_count_equals_server"].append(len(md_files) == server_count)
        log("  mbsync %.2f s, %d files" % (secs, len(md_files)))

        # 5. local Maildir grep: once to warm, then timed
        grep(maildir, "maildir grep (warm-up)")
        secs, md_hits = grep(maildir, "maildir grep", "maildir_grep")
        samples["maildir_grep"].append(secs)
        md_norm = Counter(sha(norm(read_file(os.path.join(maildir, p)))) for p in md_hits)
        checks["grep_maildir_equals_server"].append(md_norm == expect_hits_norm)
        log("  maildir grep %.3f s, %d hits" % (secs, len(md_hits)))

        # 3. mailfs cold: fresh cache, mount, grep; 4. warm grep; remount, grep
        mnt = os.path.join(base, "mnt")
        cache = os.path.join(scratch.path, "cache-%d" % rep)
        m = MailfsMount(binary, srv, base, mnt, cache, pwfile, args.timeout)
        live.append(m)
        t0 = CLOCK()
        mount_s = m.mount("cold-%d" % rep)
        cpu_samples["cold_mount/mailfs"].append(m.cpu())
        grep_s, cold_hits = grep(mnt, "mailfs cold grep", "cold_grep", m)
        total_s = CLOCK() - t0
        samples["cold_mount"].append(mount_s)
        samples["cold_grep"].append(grep_s)
        samples["cold_total"].append(total_s)
        cold_exact = Counter(sha(read_file(os.path.join(mnt, p))) for p in cold_hits)
        cold_norm = Counter(sha(norm(read_file(os.path.join(mnt, p)))) for p in cold_hits)
        checks["grep_mount_equals_server"].append(cold_exact == expect_hits_exact)
        checks["grep_mount_equals_maildir"].append(cold_norm == md_norm)
        log("  mailfs cold: mount %.2f s, grep %.2f s, %d hits" % (mount_s, grep_s,
                                                                   len(cold_hits)))

        secs, warm_hits = grep(mnt, "mailfs warm grep", "warm_grep", m)
        samples["warm_grep"].append(secs)
        checks["warm_grep_equals_cold"].append(warm_hits == cold_hits)
        secs3, warm3_hits = grep(mnt, "mailfs warm grep (3rd)", "warm_grep3", m)
        samples["warm_grep3"].append(secs3)
        checks["warm_grep_equals_cold"].append(warm3_hits == cold_hits)
        log("  mailfs warm grep %.3f s, 3rd pass %.3f s" % (secs, secs3))

        files = mount_messages(mnt)
        nfiles = sum(len(v) for v in files.values())
        checks["mount_count_equals_server"].append(nfiles == server_count)
        if nfiles != server_count:
            counts = {f: len(v) for f, v in files.items()}
            diff = {f: (counts.get(f, 0), per_folder.get(f, 0))
                    for f in set(counts) | set(per_folder) if counts.get(f, 0) != per_folder.get(f, 0)}
            problems.append("rep %d: mount shows %d files, server has %d (mount, server) per "
                            "folder: %s" % (rep + 1, nfiles, server_count, diff))
        if rep == 0 and not args.no_verify:
            log("  verifying every file in the mount against the server")
            got = Counter()
            size_bad = []
            for folder, paths in files.items():
                for p in paths:
                    data = read_file(p)
                    got[(folder, sha(data))] += 1
                    st = os.stat(p)
                    if st.st_size != len(data):
                        size_bad.append((os.path.relpath(p, mnt), st.st_size, len(data)))
            missing = server_exact - got
            surplus = got - server_exact
            full_verify = dict(files=sum(got.values()), missing=sum(missing.values()),
                               surplus=sum(surplus.values()), size_mismatch=len(size_bad),
                               examples=[str(x) for x in (list(missing)[:3] + list(surplus)[:3] +
                                                          size_bad[:3])])
            if missing or surplus or size_bad:
                problems.append("full verify: %s" % full_verify)
            log("  verified %d files: %d missing, %d surplus, %d st_size mismatches" % (
                full_verify["files"], full_verify["missing"], full_verify["surplus"],
                full_verify["size_mismatch"]))

        samples["unmount"].append(m.unmount())
        extra["cold_sessions"].append(slog.collect())
        t0 = CLOCK()
        mount_s = m.mount("remount-%d" % rep)
        cpu_samples["remount_mount/mailfs"].append(m.cpu())
        grep_s, re_hits = grep(mnt, "mailfs remount grep", "remount_grep", m)
        total_s = CLOCK() - t0
        samples["remount_mount"].append(mount_s)
        samples["remount_grep"].append(grep_s)
        samples["remount_total"].append(total_s)
        checks["remount_grep_equals_cold"].append(re_hits == cold_hits)
        m.unmount()
        extra["remount_sessions"].append(slog.collect())
        live.remove(m)
        problems.extend("rep %d mailfs: %s" % (rep + 1, p) for p in m.problems)
        rmtree(cache)
        log("  mailfs remount: mount %.2f s, grep %.2f s" % (mount_s, grep_s))

        # 3b. first ls -R, in its own fresh-cache run
        cache = os.path.join(scratch.path, "cache-ls-%d" % rep)
        m = MailfsMount(binary, srv, base, mnt, cache, pwfile, args.timeout)
        live.append(m)
        t0 = CLOCK()
        mount_s = m.mount("ls-%d" % rep)
        d0 = m.cpu()
        secs, rc, out, err, cpu = run_timed(["ls", "-R", mnt], env=GREP_ENV, timeout=args.timeout)
        cpu_samples["ls_R/ls"].append(cpu)
        d1 = m.cpu()
        cpu_samples["ls_R/mailfs"].append(d1 - d0 if None not in (d0, d1) else None)
        total_s = CLOCK() - t0
        if rc != 0 or err.strip():
            problems.append("ls -R exited %d: %s" % (rc, err.decode(errors="replace")[:500]))
        samples["ls_mount"].append(mount_s)
        samples["ls_R"].append(secs)
        samples["ls_total"].append(total_s)
        n_ls = sum(1 for ln in out.split(b"\n") if ln.endswith(b".eml"))
        checks["ls_count_equals_server"].append(n_ls == server_count)
        m.unmount()
        extra["ls_sessions"].append(slog.collect())
        live.remove(m)
        problems.extend("rep %d mailfs ls: %s" % (rep + 1, p) for p in m.problems)
        rmtree(cache)
        log("  mailfs ls -R: mount %.2f s, ls -R %.2f s, %d .eml" % (mount_s, secs, n_ls))

    info["loadavg_end"] = os.getloadavg()
    stats = {k: summary(v) for k, v in samples.items()}

    def med(k):
        return stats[k]["median"] if stats.get(k) else None

    ratio_defs = [
        ("cold_total/fetch_all", "mailfs cold (mount+grep) / fetch-all", "cold_total",
         "fetch_all", 1.5),
        ("cold_grep/fetch_all", "mailfs cold grep alone / fetch-all", "cold_grep", "fetch_all",
         None),
        ("cold_total/mbsync", "mailfs cold (mount+grep) / mbsync", "cold_total", "mbsync", None),
        ("warm_grep/maildir_grep", "mailfs warm grep / Maildir grep", "warm_grep",
         "maildir_grep", 1.2),
        ("warm_grep3/maildir_grep", "mailfs warm 3rd grep / Maildir grep", "warm_grep3",
         "maildir_grep", None),
        ("remount_grep/maildir_grep", "mailfs remount grep / Maildir grep", "remount_grep",
         "maildir_grep", None),
        ("remount_total/maildir_grep", "mailfs remount (mount+grep) / Maildir grep",
         "remount_total", "maildir_grep", None),
        ("ls_total/fetch_all", "mailfs cold (mount+ls -R) / fetch-all", "ls_total", "fetch_all",
         None),
    ]
    ratios = {}
    for key, label, a, b, goal in ratio_defs:
        per = [x / y for x, y in zip(samples[a], samples[b]) if x is not None and y]
        rm = med(a) / med(b) if med(a) is not None and med(b) else None
        ratios[key] = dict(label=label, of_medians=rm, per_rep=summary(per), goal=goal,
                           meets_goal=(rm <= goal) if (goal and rm is not None) else None)

    corr = {k: (all(v) if v else None) for k, v in checks.items()}
    corr["full_verify"] = full_verify
    corr["problems"] = problems
    corr["ok"] = (all(v is not False for k, v in corr.items() if k in checks) and not problems
                  and (full_verify is None or not (full_verify["missing"] or full_verify["surplus"]
                                                    or full_verify["size_mismatch"])))

    def session_summary(lst):
        if not lst:
            return None
        keys = ("sessions", "in", "out", "body_count", "body_bytes")
        return {k: statistics.median([d.get(k, 0) for d in lst]) for k in keys}

    dovecot = {k: session_summary(v) for k, v in extra.items() if k.endswith("_sessions")}
    cpu_stats = {k: summary(v) for k, v in cpu_samples.items()}
    results = dict(info=info, samples=samples, stats=stats, ratios=ratios, correctness=corr,
                   dovecot_sessions_median=dovecot, cpu_samples=cpu_samples, cpu_stats=cpu_stats)

    print_report(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, default=str)
        log("wrote %s" % args.json)
    return results


def print_report(res):
    info, st, ra, corr = res["info"], res["stats"], res["ratios"], res["correctness"]
    p = print
    p()
    p("mailfs benchmark, %s on %s (kernel %s, %d CPUs), mailfs %s%s" % (
        info["date"], info["host"], info["kernel"], info["cpus"], info["git"].get("head"),
        " (dirty tree)" if info["git"].get("dirty") else ""))
    p("Maildir and mailfs caches on: %s" % info["scratch"])
    p("corpus: %d messages, %.1f MiB, %d selectable folders (big=%d); token %s in %d messages" % (
        info["server_messages"], info["server_bytes"] / 2**20, info["folders"], info["big"],
        info["token"], info["expected_hits"]))
    p("NOTE: shared, noisy machine (load %.1f at start, %.1f at end): the times below are "
      "MEDIANS of %d runs" % (info["loadavg_start"][0], info["loadavg_end"][0], info["repeat"]))
    p("      (min-max beside them); no single run means anything, compare the RATIOS.")
    p()
    rows = [
        ("1", "fetch-all: 1 TLS conn, UID FETCH 1:* per folder", "fetch_all"),
        ("2", "mbsync: full first sync into a fresh Maildir", "mbsync"),
        ("3", "mailfs cold: mount (start -> mounted)", "cold_mount"),
        ("3", "mailfs cold: grep -rl alone", "cold_grep"),
        ("3", "mailfs cold: mount + grep -rl", "cold_total"),
        ("3", "mailfs cold (fresh cache): ls -R alone", "ls_R"),
        ("3", "mailfs cold (fresh cache): mount + ls -R", "ls_total"),
        ("4", "mailfs warm: grep -rl again, same mount", "warm_grep"),
        ("4", "mailfs warm: 3rd grep -rl, same mount", "warm_grep3"),
        ("4", "mailfs remount (disk cache warm): mount", "remount_mount"),
        ("4", "mailfs remount (disk cache warm): grep -rl", "remount_grep"),
        ("4", "mailfs remount: mount + grep -rl", "remount_total"),
        ("-", "mailfs unmount + daemon exit", "unmount"),
        ("5", "local Maildir (mbsync's): grep -rl, warm", "maildir_grep"),
    ]
    p("%-2s %-50s %10s %10s %10s" % ("#", "measurement", "median", "min", "max"))
    p("-" * 86)
    for n, label, k in rows:
        s = st.get(k)
        if not s:
            continue
        p("%-2s %-50s %10s %10s %10s" % (n, label, fmt_s(s["median"]), fmt_s(s["min"]),
                                          fmt_s(s["max"])))
    fa = st.get("fetch_all")
    if fa:
        p("   (fetch-all throughput, median: %.0f MiB/s of message bytes)" % (
            info["server_bytes"] / 2**20 / fa["median"]))
    p()
    p("%-46s %10s %22s %8s" % ("ratio", "of medians", "per-run median [min-max]", "goal"))
    p("-" * 90)
    for key, r in ra.items():
        per = r["per_rep"]
        goal = ("<= %.1f %s" % (r["goal"], "ok" if r["meets_goal"] else "MISSED")
                if r["goal"] else "")
        p("%-46s %10s %22s %8s" % (
            r["label"], "%.2f" % r["of_medians"] if r["of_medians"] is not None else "-",
            "%.2f [%.2f-%.2f]" % (per["median"], per["min"], per["max"]) if per else "-", goal))
    p()
    ds = res["dovecot_sessions_median"]
    p("Dovecot's own accounting per run (median; from its logout lines):")
    for k, label in (("fetch_all_sessions", "fetch-all"), ("mbsync_sessions", "mbsync"),
                     ("cold_sessions", "mailfs cold+warm"), ("remount_sessions", "mailfs remount"),
                     ("ls_sessions", "mailfs ls -R")):
        d = ds.get(k)
        if d:
            p("  %-18s %3d sessions, %6.1f MiB sent, %5d bodies sent, %6.1f KiB of commands" % (
                label, d["sessions"], d["out"] / 2**20, d["body_count"], d["in"] / 1024))
    cs = res["cpu_stats"]
    p()
    p("CPU seconds during each phase (median; wall-clock median beside it):")
    for phase, label in (("fetch_all", "fetch-all"), ("mbsync", "mbsync"),
                         ("cold_grep", "mailfs cold grep"), ("warm_grep", "mailfs warm grep"),
                         ("warm_grep3", "mailfs warm 3rd grep"),
                         ("remount_grep", "mailfs remount grep"), ("ls_R", "mailfs cold ls -R"),
                         ("maildir_grep", "Maildir grep")):
        parts = []
        for k in sorted(cs):
            if k.split("/")[0] == phase and cs[k]:
                parts.append("%s %.2f s" % (k.split("/")[1], cs[k]["median"]))
        wall = st.get(phase)
        if parts:
            p("  %-20s wall %-9s CPU: %s" % (label, fmt_s(wall["median"]) if wall else "-",
                                           ", ".join(parts)))
    p("  (mailfs = the daemon, all threads; Dovecot's CPU is not counted)")
    p()
    p("correctness:")
    for k in ("grep_mount_equals_server", "grep_mount_equals_maildir", "grep_maildir_equals_server",
              "warm_grep_equals_cold", "remount_grep_equals_cold", "mount_count_equals_server",
              "ls_count_equals_server", "maildir_count_equals_server"):
        p("  %-30s %s" % (k, {True: "yes", False: "NO", None: "-"}[corr.get(k)]))
    fv = corr.get("full_verify")
    if fv:
        p("  every file byte-identical     %s (%d files, %d missing, %d surplus, %d st_size "
          "mismatches)" % ("yes" if not (fv["missing"] or fv["surplus"] or fv["size_mismatch"])
                           else "NO", fv["files"], fv["missing"], fv["surplus"],
                           fv["size_mismatch"]))
    for pr in corr["problems"]:
        p("  PROBLEM: %s" % pr)
    p("  overall: %s" % ("OK" if corr["ok"] else "PROBLEMS FOUND"))


if __name__ == "__main__":
    sys.exit(main())
