#!/usr/bin/python3
"""A throwaway Dovecot for mailfs tests, and a second client to check the server.

Run by Debian's /usr/bin/python3, standard library only.  Must run as root
(Dovecot drops to the `dovecot` user for mail storage).

    srv = MailServer("/tmp/x")            # ports: fixed in a private netns, free ones otherwise
    srv.start()
    pw = srv.add_user("alice")            # passwd-file is re-read by Dovecot, no reload
    srv.append_many("alice", "INBOX", [raw_bytes, (raw, date, ["\\Seen"]), ...])
    acct = srv.account("alice")           # imaplib-based checker: list_folders(), list_uids(),
    acct.fetch_bytes("INBOX", 1)          #   fetch_bytes(), flags(), fetch_all(), ...
    srv.doveadm("flags", "add", "-u", "alice", "\\Flagged", "mailbox", "INBOX", "uid", "3")
    srv.stop()

CLI:
    python3 tests/mailserver.py start DIR [--demo] [--user NAME] [--ports imap=N,imaps=N,...]
    python3 tests/mailserver.py stop DIR

Folder names are UTF-8 everywhere in this API; they are converted to and from
modified UTF-7 (RFC 3501 5.1.3) at the wire.
"""
import base64
import datetime as _dt
import imaplib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time

__all__ = ["MailServer", "Account", "mutf7_encode", "mutf7_decode", "free_port",
           "in_private_netns", "imap_quote", "format_internaldate", "parse_internaldate",
           "DEFAULT_NETNS_PORTS"]

DEFAULT_NETNS_PORTS = dict(imap=10143, imaps=10993, pop3=10110, pop3s=10995)
HOST = "127.0.0.1"


# --------------------------------------------------------------------------
# small helpers

def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    return free_ports(1)[0]


def free_ports(n):
    """N distinct TCP ports on 127.0.0.1 that were free a moment ago (all held open
    while choosing: one at a time, the kernel may hand out the same port twice)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port_map(names=("imap", "imaps", "pop3", "pop3s")):
    return dict(zip(names, free_ports(len(names))))


def in_private_netns():
    """True when this process runs in a network namespace other than init's."""
    try:
        return os.readlink("/proc/self/ns/net") != os.readlink("/proc/1/ns/net")
    except OSError:
        return False


def mutf7_encode(name):
    """UTF-8 str -> IMAP modified UTF-7 str."""
    out, buf = [], []

    def flush():
        if buf:
            b = "".join(buf).encode("utf-16-be")
            out.append("&" + base64.b64encode(b).decode().rstrip("=").replace("/", ",") + "-")
            buf.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7e:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            buf.append(ch)
    flush()
    return "".join(out)


def mutf7_decode(name):
    """IMAP modified UTF-7 str -> UTF-8 str."""
    out, i = [], 0
    while i < len(name):
        ch = name[i]
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        j = name.index("-", i)
        chunk = name[i + 1:j]
        if chunk == "":
            out.append("&")
        else:
            b64 = chunk.replace(",", "/")
            b64 += "=" * (-len(b64) % 4)
            out.append(base64.b64decode(b64).decode("utf-16-be"))
        i = j + 1
    return "".join(out)


def imap_quote(s):
    """A quoted IMAP string (ASCII only: encode folder names with mutf7 first)."""
    if isinstance(s, bytes):
        s = s.decode("ascii")
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def format_internaldate(when):
    """datetime (naive = UTC), epoch number or IMAP date string -> "02-Jun-2025 10:00:00 +0000"."""
    if when is None:
        return None
    if isinstance(when, str):
        return when
    if isinstance(when, (int, float)):
        when = _dt.datetime.fromtimestamp(when, _dt.timezone.utc)
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    off = when.utcoffset()
    mins = int(off.total_seconds() // 60)
    sign = "+" if mins >= 0 else "-"
    mins = abs(mins)
    return "%02d-%s-%04d %02d:%02d:%02d %s%02d%02d" % (
        when.day, _MONTHS[when.month - 1], when.year, when.hour, when.minute, when.second,
        sign, mins // 60, mins % 60)


def parse_internaldate(s):
    """IMAP INTERNALDATE string -> POSIX timestamp (int)."""
    if isinstance(s, bytes):
        s = s.decode()
    m = re.match(r"\s*(\d{1,2})-(\w{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)", s)
    if not m:
        raise ValueError("bad INTERNALDATE %r" % s)
    d, mon, y, hh, mm, ss, sign, oh, om = m.groups()
    off = (int(oh) * 60 + int(om)) * (1 if sign == "+" else -1)
    t = _dt.datetime(int(y), _MONTHS.index(mon.title()) + 1, int(d), int(hh), int(mm), int(ss),
                     tzinfo=_dt.timezone(_dt.timedelta(minutes=off)))
    return int(t.timestamp())


def _parse_uidset(s):
    uids = []
    for part in s.split(","):
        if ":" in part:
            a, b = part.split(":")
            a, b = int(a), int(b)
            uids.extend(range(min(a, b), max(a, b) + 1))
        else:
            uids.append(int(part))
    return uids


def _normalize_message(m):
    """bytes | (raw, date[, flags]) | object with .raw/.internaldate/.flags -> (raw, date, flags)."""
    if isinstance(m, (bytes, bytearray)):
        return bytes(m), None, ()
    if isinstance(m, (tuple, list)):
        raw = m[0]
        date = m[1] if len(m) > 1 else None
        flags = m[2] if len(m) > 2 else ()
        return bytes(raw), date, tuple(flags or ())
    return bytes(m.raw), getattr(m, "internaldate", None), tuple(getattr(m, "flags", ()) or ())


# --------------------------------------------------------------------------
# the server

class MailServer:
    """One Dovecot instance with its own base_dir, config, certificate and users.

    base_dir     directory holding everything (created; made 0755 so Dovecot can traverse it)
    ports        dict with any of imap, imaps, pop3, pop3s; missing ones get defaults
                 (fixed DEFAULT_NETNS_PORTS in a private network namespace, free ports otherwise)
    ssl          True: imap (STARTTLS) + imaps + pop3 (STLS) + pop3s.
                 False: `ssl = no`, only the plaintext imap and pop3 listeners, no STARTTLS/STLS
                 offered (for "server doesn't offer STARTTLS" tests)
    imap_capability   if set, replaces Dovecot's advertised post-login capability list
                 (e.g. "IMAP4rev1 LITERAL+ UIDPLUS" to hide MOVE, IDLE, CONDSTORE ...)
    extra_conf   text appended verbatim to dovecot.conf
    """

    def __init__(self, base_dir, ports=None, ssl=True, imap_capability=None, extra_conf=""):
        self.base_dir = os.path.abspath(base_dir)
        self.ssl = bool(ssl)
        self.imap_capability = imap_capability
        self.extra_conf = extra_conf
        self.ports = self._choose_ports(ports or {})
        self.conf = os.path.join(self.base_dir, "dovecot.conf")
        self.run_dir = os.path.join(self.base_dir, "run")
        self.state_dir = os.path.join(self.base_dir, "state")
        self.mail_dir = os.path.join(self.base_dir, "mail")
        self.log_path = os.path.join(self.base_dir, "dovecot.log")
        self.passwd_file = os.path.join(self.base_dir, "users")
        self.cert = os.path.join(self.base_dir, "cert.pem")
        self.key = os.path.join(self.base_dir, "key.pem")
        self.pid_file = os.path.join(self.run_dir, "master.pid")
        self.users = {}
        self._load_users()

    # ---- setup

    def _choose_ports(self, given):
        ports = {}
        names = ("imap", "imaps", "pop3", "pop3s")
        unknown = set(given) - set(names)
        if unknown:
            raise ValueError("unknown port names: %s" % ", ".join(sorted(unknown)))
        private = in_private_netns()
        spare = free_port_map(names)
        for n in names:
            if given.get(n):
                ports[n] = int(given[n])
            elif private:
                ports[n] = DEFAULT_NETNS_PORTS[n]
            else:
                ports[n] = spare[n]
        return ports

    def _load_users(self):
        if os.path.exists(self.passwd_file):
            with open(self.passwd_file) as f:
                for line in f:
                    parts = line.rstrip("\n").split(":")
                    if len(parts) > 1 and parts[1].startswith("{PLAIN}"):
                        self.users[parts[0]] = parts[1][len("{PLAIN}"):]

    def _make_cert(self):
        if os.path.exists(self.cert) and os.path.exists(self.key):
            return
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
                        "-keyout", self.key, "-out", self.cert, "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.chmod(self.key, 0o600)
        os.chmod(self.cert, 0o644)

    def write_config(self):
        b = self.base_dir
        mailboxes = "".join("""
  mailbox %s {
    special_use = \\%s
    auto = create
  }""" % (n, n) for n in ("Trash", "Sent", "Drafts", "Junk"))
        if self.ssl:
            ssl_conf = "ssl = yes\nssl_cert = <%s\nssl_key = <%s\n" % (self.cert, self.key)
            imaps = "  inet_listener imaps {\n    port = %d\n    ssl = yes\n  }\n" % self.ports["imaps"]
            pop3s = "  inet_listener pop3s {\n    port = %d\n    ssl = yes\n  }\n" % self.ports["pop3s"]
        else:
            ssl_conf = "ssl = no\n"
            imaps = pop3s = ""
        cap = ""
        if self.imap_capability:
            cap = "protocol imap {\n  imap_capability = %s\n}\n" % self.imap_capability
        text = f"""# written by tests/mailserver.py
base_dir = {b}/run
state_dir = {b}/state
log_path = {b}/dovecot.log
protocols = imap pop3
listen = {HOST}
first_valid_uid = 1
default_internal_user = dovecot
default_login_user = dovenull
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_fsync = never
mail_max_userip_connections = 100
pop3_uidl_format = %08Xu%08Xv
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.passwd_file}
}}
userdb {{
  driver = static
  args = uid=dovecot gid=dovecot home={b}/mail/%u
}}
mail_location = maildir:~/Maildir:LAYOUT=fs:INBOX=~/Maildir/INBOX
namespace inbox {{
  inbox = yes
  separator = /
  prefix ={mailboxes}
}}
{ssl_conf}service imap-login {{
  inet_listener imap {{
    port = {self.ports['imap']}
  }}
{imaps}}}
service pop3-login {{
  inet_listener pop3 {{
    port = {self.ports['pop3']}
  }}
{pop3s}}}
# No growing per-IP penalty after failed logins: tests fail logins on purpose.
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
{cap}{self.extra_conf}
"""
        with open(self.conf, "w") as f:
            f.write(text)

    def setup(self):
        os.makedirs(self.base_dir, exist_ok=True)
        os.chmod(self.base_dir, 0o755)
        for d in (self.run_dir, self.state_dir):
            os.makedirs(d, exist_ok=True)
        os.makedirs(self.mail_dir, exist_ok=True)
        shutil.chown(self.mail_dir, "dovecot", "dovecot")
        if not os.path.exists(self.passwd_file):
            open(self.passwd_file, "w").close()
        os.chmod(self.passwd_file, 0o644)
        if self.ssl:
            self._make_cert()
        self.write_config()

    # ---- lifecycle

    def pid(self):
        try:
            with open(self.pid_file) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    @staticmethod
    def _alive(pid):
        try:
            with open("/proc/%d/stat" % pid) as f:
                st = f.read()
            return st.rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    def running(self):
        pid = self.pid()
        return pid is not None and self._alive(pid)

    def start(self, timeout=15):
        """Write the config and start Dovecot; return when every port accepts."""
        if os.geteuid() != 0:
            raise RuntimeError("MailServer needs root")
        if not shutil.which("dovecot"):
            raise RuntimeError("dovecot is not installed")
        self.setup()
        if self.running():
            self.stop()
        # Never a pipe: the daemonized master inherits it and the reader would wait forever.
        err_path = os.path.join(self.base_dir, "startup.err")
        with open(err_path, "wb") as err:
            r = subprocess.run(["dovecot", "-c", self.conf], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=err, timeout=timeout)
        if r.returncode != 0:
            with open(err_path, errors="replace") as f:
                msg = f.read().strip()
            raise RuntimeError("dovecot failed to start: %s%s" % (msg, self._log_tail()))
        deadline = time.time() + timeout
        for name, port in self.listening_ports().items():
            while True:
                try:
                    socket.create_connection((HOST, port), 0.5).close()
                    break
                except OSError:
                    if time.time() > deadline:
                        self.stop()
                        raise RuntimeError("dovecot: port %s (%d) never accepted%s" % (
                            name, port, self._log_tail()))
                    time.sleep(0.05)
        return self

    def stop(self, timeout=6.0):
        """Stop the Dovecot whose PID is in our base_dir's master.pid (and nothing else)."""
        pid = self.pid()
        if pid is None or not self._alive(pid):
            return
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                cmd = f.read()
            if b"dovecot" not in cmd:
                return  # stale pid file, the number belongs to someone else now
        except OSError:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.time() + timeout
        while self._alive(pid) and time.time() < deadline:
            time.sleep(0.05)
        if self._alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            deadline = time.time() + 3
            while self._alive(pid) and time.time() < deadline:
                time.sleep(0.05)

    def kill(self):
        """SIGKILL the master (instant; a restart still works)."""
        pid = self.pid()
        if pid is not None and self._alive(pid):
            os.kill(pid, signal.SIGKILL)
            while self._alive(pid):
                time.sleep(0.02)

    def restart(self):
        self.stop()
        return self.start()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _log_tail(self, n=10):
        try:
            with open(self.log_path, errors="replace") as f:
                lines = f.readlines()[-n:]
            return "\n" + "".join(lines) if lines else ""
        except OSError:
            return ""

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def listening_ports(self):
        if self.ssl:
            return dict(self.ports)
        return {k: v for k, v in self.ports.items() if k in ("imap", "pop3")}

    # ---- URLs for mailfs

    def url(self, user, scheme="imaps"):
        port = {"imaps": "imaps", "imap": "imap", "pop3s": "pop3s", "pop3": "pop3"}[scheme]
        return "%s://%s@%s:%d" % (scheme, user, HOST, self.ports[port])

    # ---- users

    def add_user(self, name, password=None):
        """Add (or replace) a user; Dovecot re-reads the passwd-file on its next login."""
        if password is None:
            password = "pw-" + base64.b32encode(os.urandom(10)).decode().lower()
        if ":" in name or ":" in password or "\n" in name + password:
            raise ValueError("':' and newlines are not allowed in user names and passwords")
        self.users[name] = password
        tmp = self.passwd_file + ".tmp"
        with open(tmp, "w") as f:
            for u, p in self.users.items():
                f.write("%s:{PLAIN}%s::::::\n" % (u, p))
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.passwd_file)
        if self.running():
            self._wait_login(name, password)
        return password

    def _wait_login(self, name, password, timeout=5.0):
        """Dovecot's auth process stats the passwd-file at most once a second: a login
        in the same second as an earlier one may not see a new user yet.  Wait until a
        login works, so that the caller (or mailfs) can use the user at once."""
        deadline = time.time() + timeout
        while True:
            # Into the next second first: a failed probe would cost auth_failure_delay.
            now = time.time()
            time.sleep(1.02 - (now - int(now)))
            try:
                with socket.create_connection((HOST, self.ports["imap"]), 5) as s:
                    f = s.makefile("rb")
                    f.readline()
                    s.sendall(b"a LOGIN " + imap_quote(name).encode() + b" " +
                              imap_quote(password).encode() + b"\r\nb LOGOUT\r\n")
                    while True:
                        line = f.readline()
                        if not line or line.startswith(b"a "):
                            break
                    if line.startswith(b"a OK"):
                        return
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError("dovecot does not accept the new user %s" % name)

    def password_file_for(self, user, path):
        """Write the user's password to PATH with mode 0600 (for -o password_file=)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.users[user] + "\n")
        os.chmod(path, 0o600)
        return path

    # ---- clients

    def ssl_context(self):
        return ssl.create_default_context(cafile=self.cert)

    def client(self, user, timeout=60):
        """A logged-in imaplib client (IMAP4_SSL on the imaps port; plain IMAP4 if ssl=False)."""
        if self.ssl:
            c = imaplib.IMAP4_SSL(HOST, self.ports["imaps"], ssl_context=self.ssl_context(),
                                  timeout=timeout)
        else:
            c = imaplib.IMAP4(HOST, self.ports["imap"], timeout=timeout)
        c.login(user, self.users[user])
        return c

    def account(self, user):
        return Account(self, user)

    def doveadm(self, *args, check=True, timeout=120):
        """Run `doveadm -c CONF ARGS...`; return stdout (str)."""
        r = subprocess.run(["doveadm", "-c", self.conf] + [str(a) for a in args],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError("doveadm %s failed (%d): %s" % (
                " ".join(map(str, args)), r.returncode, r.stderr.decode(errors="replace").strip()))
        return r.stdout.decode(errors="replace")

    def doveadm_fetch(self, user, fields, folder, search="all"):
        """doveadm fetch -> list of dicts {field: value} (one per message)."""
        out = self.doveadm("fetch", "-u", user, fields, "mailbox", folder, search)
        recs, cur = [], {}
        for line in out.split("\n"):
            if line.startswith("\f"):
                if cur:
                    recs.append(cur)
                cur = {}
                line = line[1:]
            if not line.strip():
                continue
            k, _, v = line.partition(":")
            cur[k.strip()] = v.strip()
        if cur:
            recs.append(cur)
        return recs

    def doveadm_flags(self, user, folder):
        """{uid: frozenset(flags)} from doveadm (the server's truth, no IMAP session)."""
        return {int(r["uid"]): frozenset(r.get("flags", "").split()) - {"\\Recent"}
                for r in self.doveadm_fetch(user, "uid flags", folder)}

    # ---- fast loading

    def _raw_session(self, user):
        if self.ssl:
            raw = socket.create_connection((HOST, self.ports["imaps"]), 30)
            s = self.ssl_context().wrap_socket(raw, server_hostname=HOST)
        else:
            s = socket.create_connection((HOST, self.ports["imap"]), 30)
        s.settimeout(300)
        return _RawImap(s, user, self.users[user])

    def append_many(self, user, folder, messages, batch_bytes=32 << 20, batch_count=1000,
                    create=True):
        """Append MESSAGES to FOLDER fast: MULTIAPPEND with LITERAL+ on one raw socket,
        all commands pipelined.  Each message is bytes, (raw, internaldate[, flags]) or an
        object with .raw, .internaldate, .flags.  internaldate: datetime, epoch or IMAP string.
        Returns the list of UIDs assigned, in order (from APPENDUID)."""
        msgs = [_normalize_message(m) for m in messages]
        sess = self._raw_session(user)
        try:
            if create:
                sess.create(folder)
            if not msgs:
                return []
            mbox = imap_quote(mutf7_encode(folder)).encode()
            tags, chunks, cur, cur_bytes = [], [], [], 0
            for raw, date, flags in msgs:
                piece = b" "
                if flags:
                    piece += b"(" + " ".join(flags).encode() + b") "
                d = format_internaldate(date)
                if d:
                    piece += b'"' + d.encode() + b'" '
                piece += b"{%d+}\r\n" % len(raw) + raw
                if cur and (cur_bytes + len(piece) > batch_bytes or len(cur) >= batch_count):
                    chunks.append(cur)
                    cur, cur_bytes = [], 0
                cur.append(piece)
                cur_bytes += len(piece)
            if cur:
                chunks.append(cur)
            counts = []
            out = bytearray()
            for chunk in chunks:
                tag = sess.next_tag()
                tags.append(tag)
                counts.append(len(chunk))
                out += tag + b" APPEND " + mbox
                for piece in chunk:
                    out += piece
                out += b"\r\n"
                if len(out) > (4 << 20):
                    sess.sock.sendall(out)
                    out = bytearray()
            if out:
                sess.sock.sendall(out)
            uids = []
            for tag, n in zip(tags, counts):
                status, text = sess.wait(tag)
                if status != b"OK":
                    raise RuntimeError("APPEND to %r failed: %s" % (folder, text.decode(errors="replace")))
                m = re.search(rb"\[APPENDUID \d+ ([0-9:,]+)\]", text)
                got = _parse_uidset(m.group(1).decode()) if m else [None] * n
                uids.extend(got)
            return uids
        finally:
            sess.close()

    def settle_user(self, user):
        """Make the special-use folders exist on disk now.  Dovecot's `auto = create`
        creates each on its first SELECT, and two sessions doing that at once can make
        it panic (fcntl EDEADLK on dovecot.list.index.log) and drop the connection."""
        sess = self._raw_session(user)
        try:
            for f in ("Trash", "Sent", "Drafts", "Junk"):
                sess.create(f)
                sess.cmd(b"EXAMINE " + imap_quote(f).encode())
        finally:
            sess.close()

    def create_folders(self, user, folders):
        sess = self._raw_session(user)
        try:
            for f in folders:
                sess.create(f)
        finally:
            sess.close()

    def load(self, user, corpus):
        """Load a tests/corpus.py Corpus (or any iterable of objects with .folder, .raw,
        .internaldate, .flags, plus optional .folders): create every folder, append every
        message in order.  Returns {folder: [uid, ...]} in the corpus' per-folder order."""
        folders = list(getattr(corpus, "folders", []))
        messages = list(getattr(corpus, "messages", corpus))
        by_folder = {}
        for m in messages:
            by_folder.setdefault(m.folder, []).append(m)
        for f in by_folder:
            if f not in folders:
                folders.append(f)
        self.create_folders(user, [f for f in folders if f.upper() != "INBOX"])
        result = {}
        for f in folders:
            result[f] = self.append_many(user, f, by_folder.get(f, []), create=False)
        return result


class _RawImap:
    """Minimal pipelining IMAP session on a connected socket (used for bulk loading)."""

    def __init__(self, sock, user, password):
        self.sock = sock
        self.buf = b""
        self.n = 0
        greeting = self._line()
        if not greeting.startswith(b"* OK"):
            raise RuntimeError("unexpected greeting %r" % greeting)
        st, text = self.cmd(b"LOGIN " + imap_quote(user).encode() + b" " + imap_quote(password).encode())
        if st != b"OK":
            raise RuntimeError("LOGIN failed: %r" % text)

    def next_tag(self):
        self.n += 1
        return b"L%d" % self.n

    def _line(self):
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise RuntimeError("server closed the connection")
            self.buf += data
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def wait(self, tag):
        while True:
            line = self._line()
            m = re.match(rb".*\{(\d+)\}$", line)
            if m:  # skip a literal in an untagged response
                need = int(m.group(1))
                while len(self.buf) < need:
                    data = self.sock.recv(65536)
                    if not data:
                        raise RuntimeError("server closed the connection")
                    self.buf += data
                self.buf = self.buf[need:]
                continue
            if line.startswith(tag + b" "):
                rest = line[len(tag) + 1:]
                status, _, text = rest.partition(b" ")
                return status, text

    def cmd(self, c):
        tag = self.next_tag()
        self.sock.sendall(tag + b" " + c + b"\r\n")
        return self.wait(tag)

    def create(self, folder):
        if folder.upper() == "INBOX":
            return
        st, text = self.cmd(b"CREATE " + imap_quote(mutf7_encode(folder)).encode())
        if st != b"OK" and b"ALREADYEXISTS" not in text:
            raise RuntimeError("CREATE %r failed: %s" % (folder, text.decode(errors="replace")))

    def close(self):
        try:
            self.sock.sendall(b"Z LOGOUT\r\n")
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass


# --------------------------------------------------------------------------
# a second client, to check the server's truth

_FETCH_RE = re.compile(rb"\d+ \((.*)")


def _parse_list_line(item):
    """One LIST response item from imaplib -> (flags, delimiter, raw_name_str)."""
    if isinstance(item, tuple):  # name sent as a literal
        head, lit = item
        m = re.match(rb'\(([^)]*)\) (NIL|"(?:[^"\\]|\\.)*") \{\d+\}$', head)
        flags, delim = m.group(1), m.group(2)
        name = lit
    else:
        m = re.match(rb'\(([^)]*)\) (NIL|"(?:[^"\\]|\\.)*") (.*)$', item)
        flags, delim, name = m.group(1), m.group(2), m.group(3)
        if name.startswith(b'"'):
            name = re.sub(rb"\\(.)", rb"\1", name[1:-1])
    delim = None if delim == b"NIL" else re.sub(rb"\\(.)", rb"\1", delim[1:-1]).decode()
    return frozenset(flags.decode().split()), delim, name.decode("ascii", "replace")


class Account:
    """An imaplib-based view of one user's mailbox, independent of mailfs.

    Every method takes UTF-8 folder names.  The connection is opened lazily and kept;
    folders are opened with EXAMINE (read-only) and bodies fetched with BODY.PEEK[],
    so checking never changes \\Seen."""

    def __init__(self, server, user):
        self.server = server
        self.user = user
        self._c = None
        self._selected = None

    @property
    def c(self):
        if self._c is None:
            self._c = self.server.client(self.user)
            self._selected = None
        return self._c

    def close(self):
        if self._c is not None:
            try:
                self._c.logout()
            except Exception:
                pass
        self._c = None
        self._selected = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _ok(self, typ, data, what):
        if typ != "OK":
            raise RuntimeError("%s: %s %r" % (what, typ, data))
        return data

    def _examine(self, folder, readonly=True):
        key = (folder, readonly)
        # Reselect every time: EXAMINE is cheap and resyncs the view with the server.
        typ, data = self.c.select(imap_quote(mutf7_encode(folder)), readonly=readonly)
        self._ok(typ, data, "SELECT %s" % folder)
        self._selected = key
        return int(data[0]) if data and data[0] else 0

    # ---- folders

    def list_folders_full(self):
        """[(name, frozenset(attributes), delimiter)] for LIST "" "*", names decoded."""
        typ, data = self.c.list('""', '"*"')
        self._ok(typ, data, "LIST")
        out = []
        for item in data:
            if item is None:
                continue
            flags, delim, name = _parse_list_line(item)
            out.append((mutf7_decode(name), flags, delim))
        return out

    def list_folders(self, include_nonexistent=True):
        """Decoded folder names (UTF-8, "/"-separated) the server LISTs."""
        return sorted(n for n, fl, _ in self.list_folders_full()
                      if include_nonexistent or "\\NonExistent" not in fl)

    def selectable_folders(self):
        """Folders that can hold messages (no \\Noselect / \\NonExistent)."""
        return sorted(n for n, fl, _ in self.list_folders_full()
                      if not ({"\\noselect", "\\nonexistent"} & {f.lower() for f in fl}))

    def create(self, folder):
        typ, data = self.c.create(imap_quote(mutf7_encode(folder)))
        return self._ok(typ, data, "CREATE %s" % folder)

    def delete(self, folder):
        typ, data = self.c.delete(imap_quote(mutf7_encode(folder)))
        return self._ok(typ, data, "DELETE %s" % folder)

    def status(self, folder, items="(MESSAGES UIDNEXT UIDVALIDITY UNSEEN)"):
        typ, data = self.c.status(imap_quote(mutf7_encode(folder)), items)
        self._ok(typ, data, "STATUS %s" % folder)
        txt = data[0].decode() if isinstance(data[0], bytes) else str(data[0])
        inner = txt[txt.rindex("(") + 1:txt.rindex(")")].split()
        return {inner[i]: int(inner[i + 1]) for i in range(0, len(inner), 2)}

    # ---- messages

    def _fetch_meta(self, folder, uidset="1:*"):
        n = self._examine(folder)
        if n == 0:
            return {}
        typ, data = self.c.uid("FETCH", uidset, "(UID FLAGS INTERNALDATE RFC822.SIZE)")
        self._ok(typ, data, "UID FETCH %s" % folder)
        out = {}
        for item in data:
            if item is None:
                continue
            if isinstance(item, tuple):
                item = item[0]
            m = re.search(rb"UID (\d+)", item)
            if not m:
                continue
            uid = int(m.group(1))
            fl = re.search(rb"FLAGS \(([^)]*)\)", item)
            idate = re.search(rb'INTERNALDATE "([^"]*)"', item)
            size = re.search(rb"RFC822\.SIZE (\d+)", item)
            # \Recent is per-session state, not a stored flag: leave it out of comparisons.
            flags = frozenset(fl.group(1).decode().split()) - {"\\Recent"} if fl else frozenset()
            out[uid] = dict(flags=flags,
                            internaldate=parse_internaldate(idate.group(1)) if idate else None,
                            size=int(size.group(1)) if size else None)
        return out

    def list_uids(self, folder):
        """Sorted UIDs in FOLDER."""
        n = self._examine(folder)
        if n == 0:
            return []
        typ, data = self.c.uid("SEARCH", None, "ALL")
        self._ok(typ, data, "UID SEARCH %s" % folder)
        return sorted(int(x) for x in b" ".join(d for d in data if d).split())

    def meta(self, folder):
        """{uid: {"flags": frozenset, "internaldate": epoch, "size": RFC822.SIZE}}"""
        return self._fetch_meta(folder)

    def flags(self, folder, uid):
        return self._fetch_meta(folder, str(uid)).get(uid, {}).get("flags")

    def all_flags(self, folder):
        return {u: m["flags"] for u, m in self._fetch_meta(folder).items()}

    def internaldate(self, folder, uid):
        return self._fetch_meta(folder, str(uid)).get(uid, {}).get("internaldate")

    def fetch_bytes(self, folder, uid):
        """The message exactly as BODY.PEEK[] returns it, or None if the UID is gone."""
        return self.fetch_all(folder, str(uid)).get(uid)

    def fetch_all(self, folder, uidset="1:*"):
        """{uid: BODY.PEEK[] bytes} for the UIDs in UIDSET."""
        n = self._examine(folder)
        if n == 0:
            return {}
        typ, data = self.c.uid("FETCH", uidset, "(UID BODY.PEEK[])")
        self._ok(typ, data, "UID FETCH %s" % folder)
        out = {}
        for item in data:
            if isinstance(item, tuple):
                m = re.search(rb"UID (\d+)", item[0])
                if m:
                    out[int(m.group(1))] = item[1]
        return out

    def header(self, folder, uid, name):
        n = self._examine(folder)
        if n == 0:
            return None
        typ, data = self.c.uid("FETCH", str(uid), "(BODY.PEEK[HEADER.FIELDS (%s)])" % name)
        self._ok(typ, data, "UID FETCH %s" % folder)
        for item in data:
            if isinstance(item, tuple):
                return item[1]
        return None

    def append(self, folder, raw, flags=(), date=None):
        d = format_internaldate(date)
        typ, data = self.c.append(imap_quote(mutf7_encode(folder)),
                                  "(" + " ".join(flags) + ")" if flags else None,
                                  '"%s"' % d if d else None, raw)
        self._ok(typ, data, "APPEND %s" % folder)
        m = re.search(rb"APPENDUID \d+ (\d+)", data[0] or b"")
        return int(m.group(1)) if m else None

    def store_flags(self, folder, uid, flags, mode="FLAGS"):
        self._examine(folder, readonly=False)
        typ, data = self.c.uid("STORE", str(uid), mode, "(" + " ".join(flags) + ")")
        return self._ok(typ, data, "UID STORE %s" % folder)

    def snapshot(self):
        """{folder: {uid: (sha-less) (flags, internaldate, size)}} for every selectable folder:
        a cheap fingerprint to check that the server is unchanged."""
        snap = {}
        for name, fl, _ in self.list_folders_full():
            if {"\\noselect", "\\nonexistent"} & {f.lower() for f in fl}:
                snap[name] = None
                continue
            st = self.status(name, "(MESSAGES UIDNEXT UIDVALIDITY)")
            snap[name] = (st, {u: (tuple(sorted(m["flags"])), m["internaldate"], m["size"])
                               for u, m in self._fetch_meta(name).items()})
        return snap


# --------------------------------------------------------------------------
# CLI

def _cli(argv):
    import argparse
    ap = argparse.ArgumentParser(prog="mailserver.py", description="throwaway Dovecot for mailfs")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start", help="start a Dovecot in DIR")
    s.add_argument("dir")
    s.add_argument("--demo", action="store_true", help="load tests/corpus.py demo_corpus()")
    s.add_argument("--user", default="alice")
    s.add_argument("--password", default=None)
    s.add_argument("--ports", default="", help="imap=N,imaps=N,pop3=N,pop3s=N")
    s.add_argument("--free-ports", action="store_true",
                   help="pick free ports even in a private network namespace")
    t = sub.add_parser("stop", help="stop the Dovecot in DIR")
    t.add_argument("dir")
    a = ap.parse_args(argv)

    d = os.path.abspath(a.dir)
    state_file = os.path.join(d, "server.json")
    if a.cmd == "stop":
        ports = {}
        if os.path.exists(state_file):
            with open(state_file) as f:
                ports = json.load(f).get("ports", {})
        srv = MailServer(d, ports=ports or {n: 1 for n in DEFAULT_NETNS_PORTS})
        was = srv.running()
        srv.stop()
        print("stopped" if was else "not running")
        return 0

    ports = {}
    if os.path.exists(state_file):  # restarting: keep the ports the user already knows
        with open(state_file) as f:
            ports.update(json.load(f).get("ports", {}))
    for kv in filter(None, a.ports.split(",")):
        k, _, v = kv.partition("=")
        ports[k.strip()] = int(v)
    if a.free_ports:
        spare = free_port_map()
        for n in DEFAULT_NETNS_PORTS:
            if n not in ports:
                ports[n] = spare[n]
    srv = MailServer(d, ports=ports)
    srv.setup()
    password = srv.users.get(a.user) if a.password is None else a.password
    password = srv.add_user(a.user, password)
    srv.start()
    pwfile = srv.password_file_for(a.user, os.path.join(d, "password"))
    loaded = 0
    if a.demo:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import corpus as corpus_mod
        c = corpus_mod.demo_corpus()
        acct_has = Account(srv, a.user).status("INBOX")["MESSAGES"]
        if acct_has == 0:
            srv.load(a.user, c)
            loaded = len(c.messages)
    info = dict(dir=d, ports=srv.ports, user=a.user, password_file=pwfile, cafile=srv.cert,
                conf=srv.conf, source=srv.url(a.user, "imaps"), loaded=loaded)
    with open(state_file, "w") as f:
        json.dump(info, f, indent=1)
    for k in ("imap", "imaps", "pop3", "pop3s"):
        print("%s_port=%d" % (k, srv.ports[k]))
    print("user=%s" % a.user)
    print("password_file=%s" % pwfile)
    print("cafile=%s" % srv.cert)
    print("conf=%s" % srv.conf)
    print("source=%s" % srv.url(a.user, "imaps"))
    if a.demo:
        print("loaded=%d" % loaded)
    return 0


if __name__ == "__main__":
    sys.exit(_cli(sys.argv[1:]))
