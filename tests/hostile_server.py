#!/usr/bin/python3
"""A scripted, deliberately hostile IMAP server for mailfs's robustness tests.

Standard library only (Debian's /usr/bin/python3).  It speaks just enough
IMAP4rev1 to take mailfs through a whole session -- greeting, CAPABILITY,
STARTTLS, AUTHENTICATE PLAIN (with or without SASL-IR) or LOGIN, ENABLE,
LIST, SELECT/EXAMINE, UID FETCH (metadata with ENVELOPE, flags, BODY.PEEK[]),
UID SEARCH, IDLE/DONE, NOOP, UNSELECT, LOGOUT -- over implicit TLS
(imaps://, a self-signed certificate made with `openssl req`), plaintext with
STARTTLS (imap://), or plaintext without TLS at all.

A *scenario* replaces specific responses with crafted ones: a 4 GB literal,
a never-ending line, a flood of untagged EXISTS, bodies for UIDs nobody asked
for, hostile mailbox names and subjects, a connection closed in the middle of
a literal, data injected after the STARTTLS OK, a non-IMAP greeting, a
refused login, ...  Scenarios are classes registered in SCENARIOS by name;
their constructor keywords tune them (mailbox list, delimiter, sizes).

    srv = HostileServer(DIR, "literal_4g")            # imaps on a free port
    srv = HostileServer(DIR, "starttls_injection", mode="starttls")
    srv = HostileServer(DIR, Names(names=["..", "a/../b"], delimiter="."))
    srv.start(); ...; srv.stop()
    srv.url("alice", "imaps") -> "imaps://alice@127.0.0.1:PORT"
    srv.commands()            -> every command line received, e.g. to prove that
                                 no LOGIN was ever sent in plaintext

The object also has what tests/integration/conftest.py's Mounter expects of a
server (`ssl`, `cert`, `url()`, `password_file_for()`), so a mount against it is
made exactly like a mount against the test Dovecot.

CLI, for poking at a scenario by hand:
    python3 tests/hostile_server.py SCENARIO [--mode imaps|starttls|plain]
                                              [--port N] [--dir DIR]
    python3 tests/hostile_server.py --list
"""
import argparse
import base64
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

HOST = "127.0.0.1"
CRLF = b"\r\n"

CAPS = "IMAP4rev1 SASL-IR AUTH=PLAIN ENABLE IDLE UIDPLUS ID"
CAPS_PRE_TLS = "IMAP4rev1 STARTTLS LOGINDISABLED"

USER = "alice"
PASSWORD = "hostile-pw-1"


# --------------------------------------------------------------------------
# IMAP syntax helpers

def to_bytes(v):
    if isinstance(v, bytes):
        return v
    return str(v).encode("utf-8", "surrogateescape")


def nstring(v):
    """NIL, a quoted string, or a literal -- whichever can carry v's bytes."""
    if v is None:
        return b"NIL"
    v = to_bytes(v)
    if len(v) < 1000 and all(0x20 <= b < 0x7f for b in v):
        return b'"' + v.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(v) + v


def internaldate(t):
    return time.strftime("%d-%b-%Y %H:%M:%S +0000", time.gmtime(t)).encode()


def parse_set(s, maxuid):
    """UIDs of an IMAP sequence set ("1:3,7,9:*"); "*" is the largest UID, and
    "n:*" with n above it still means that one message (RFC 3501 6.4.8)."""
    out = set()
    for part in s.split(","):
        if ":" in part:
            a, b = part.split(":", 1)
            a = maxuid if a == "*" else int(a)
            b = maxuid if b == "*" else int(b)
            lo, hi = min(a, b), max(a, b)
            out.update(range(lo, hi + 1))
        elif part:
            out.add(maxuid if part == "*" else int(part))
    return out


class UidSet:
    """An IMAP sequence set as ranges: "1:4294967295" costs nothing to hold or test."""

    def __init__(self, s, maxuid):
        self.ranges = []
        for part in s.split(","):
            if not part:
                continue
            a, _, b = part.partition(":")
            a = maxuid if a == "*" else int(a)
            b = a if not b else (maxuid if b == "*" else int(b))
            self.ranges.append((min(a, b), max(a, b)))

    def __contains__(self, uid):
        return any(lo <= uid <= hi for lo, hi in self.ranges)


def parse_astring(s):
    """(value bytes, rest) of the first astring in s (a bytes line)."""
    s = s.lstrip(b" ")
    if s.startswith(b'"'):
        out, i = bytearray(), 1
        while i < len(s) and s[i:i + 1] != b'"':
            if s[i:i + 1] == b"\\" and i + 1 < len(s):
                i += 1
            out += s[i:i + 1]
            i += 1
        return bytes(out), s[i + 1:]
    m = re.match(rb"([^ ()]*)(.*)", s, re.S)
    return m.group(1), m.group(2)


# --------------------------------------------------------------------------
# the mailbox model

class Message:
    def __init__(self, uid, body=None, subject=b"hello", from_name=b"Sender",
                 from_mbox=b"sender", from_host=b"example.org", date=None, flags=(),
                 internal=1748858400, msgid=None):
        self.uid = uid
        self.subject = subject
        self.body = body if body is not None else (
            b"From: Sender <sender@example.org>\r\nTo: alice@example.org\r\n"
            b"Subject: message %d\r\nMessage-ID: <m%d@hostile>\r\n\r\n"
            b"This is the body of message UID %d.\r\n" % (uid, uid, uid))
        self.from_name = from_name
        self.from_mbox = from_mbox
        self.from_host = from_host
        self.date = date if date is not None else b"Mon, 02 Jun 2025 10:00:00 +0000"
        self.flags = list(flags)
        self.internal = internal
        self.msgid = msgid if msgid is not None else b"<m%d@hostile>" % uid

    def envelope(self):
        addr = b"((%s NIL %s %s))" % (nstring(self.from_name), nstring(self.from_mbox),
                                       nstring(self.from_host))
        to = b'((NIL NIL "alice" "example.org"))'
        return b"(%s %s %s %s %s %s NIL NIL NIL %s)" % (
            nstring(self.date), nstring(self.subject), addr, addr, addr, to,
            nstring(self.msgid))


class Mailbox:
    def __init__(self, name, messages=(), flags=(b"\\HasNoChildren",), uidvalidity=4242):
        self.name = to_bytes(name)      # the raw server name, as sent in LIST
        self.messages = list(messages)
        self.flags = list(flags)
        self.uidvalidity = uidvalidity

    @property
    def uidnext(self):
        return max((m.uid for m in self.messages), default=0) + 1

    def by_uid(self, uids):
        return [(i + 1, m) for i, m in enumerate(self.messages) if m.uid in uids]


def inbox(n=3, **kw):
    return Mailbox("INBOX", [Message(u, **kw) for u in range(1, n + 1)])


# --------------------------------------------------------------------------
# scenarios: the normal behaviour, and what each hostile one replaces

SCENARIOS = {}


def scenario(cls):
    SCENARIOS[cls.name] = cls
    return cls


@scenario
class Scenario:
    """Well-behaved: every hook below answers as a plain IMAP server would."""
    name = "normal"
    caps = CAPS
    pre_tls_caps = CAPS_PRE_TLS
    delimiter = "/"

    def __init__(self, mailboxes=None, delimiter=None, **kw):
        self.mailboxes = mailboxes if mailboxes is not None else [inbox()]
        if delimiter is not None:
            self.delimiter = delimiter
        self.lock = threading.Lock()
        for k, v in kw.items():
            setattr(self, k, v)

    def find(self, name):
        for mb in self.mailboxes:
            if mb.name == name or (mb.name.upper() == b"INBOX" and name.upper() == b"INBOX"):
                return mb
        return None

    # -- connection start
    def greeting(self, c):
        caps = self.pre_tls_caps if c.server.mode == "starttls" and not c.tls else self.caps
        c.send(b"* OK [CAPABILITY %s] hostile IMAP server ready\r\n" % caps.encode())

    def capability(self, c, tag):
        caps = self.pre_tls_caps if c.server.mode == "starttls" and not c.tls else self.caps
        c.send(b"* CAPABILITY %s\r\n%s OK CAPABILITY done\r\n" % (caps.encode(), tag))

    def starttls(self, c, tag):
        c.send(tag + b" OK Begin TLS negotiation now\r\n")
        c.start_tls()

    # -- authentication
    def login_ok(self, c, tag):
        c.send(b"%s OK [CAPABILITY %s] Logged in\r\n" % (tag, self.caps.encode()))

    def authenticate(self, c, tag, user, password):
        """After AUTHENTICATE PLAIN or LOGIN; user and password are bytes."""
        if user == USER.encode() and password == PASSWORD.encode():
            self.login_ok(c, tag)
        else:
            c.send(tag + b" NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")

    # -- listing and selecting
    def list(self, c, tag):
        delim = b"NIL" if self.delimiter is None else nstring(self.delimiter)
        for mb in self.mailboxes:
            c.send(b"* LIST (%s) %s %s\r\n" % (b" ".join(mb.flags), delim, nstring(mb.name)))
        c.send(tag + b" OK LIST completed\r\n")

    def select(self, c, tag, mb, readonly):
        c.send(b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n"
               b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] ok\r\n"
               b"* %d EXISTS\r\n* 0 RECENT\r\n"
               b"* OK [UIDVALIDITY %d] UIDs valid\r\n"
               b"* OK [UIDNEXT %d] Predicted next UID\r\n"
               b"%s OK [%s] %s completed\r\n" % (
                   len(mb.messages), mb.uidvalidity, mb.uidnext, tag,
                   b"READ-ONLY" if readonly else b"READ-WRITE",
                   b"EXAMINE" if readonly else b"SELECT"))

    # -- fetching
    def fetch_meta(self, c, tag, mb, msgs):
        for seq, m in msgs:
            c.send(b"* %d FETCH (UID %d FLAGS (%s) INTERNALDATE \"%s\" RFC822.SIZE %d "
                   b"ENVELOPE %s)\r\n" % (seq, m.uid, b" ".join(to_bytes(f) for f in m.flags),
                                          internaldate(m.internal), len(m.body), m.envelope()))
        c.send(tag + b" OK UID FETCH completed\r\n")

    def fetch_flags(self, c, tag, mb, msgs):
        for seq, m in msgs:
            c.send(b"* %d FETCH (UID %d FLAGS (%s))\r\n" % (
                seq, m.uid, b" ".join(to_bytes(f) for f in m.flags)))
        c.send(tag + b" OK UID FETCH completed\r\n")

    def body_response(self, seq, uid, body):
        return b"* %d FETCH (UID %d BODY[] {%d}\r\n%s)\r\n" % (seq, uid, len(body), body)

    def fetch_body(self, c, tag, mb, msgs):
        for seq, m in msgs:
            c.send(self.body_response(seq, m.uid, m.body))
        c.send(tag + b" OK UID FETCH completed\r\n")

    # -- a synchronizing literal: True to send "+" and read it, or answer the
    #    command here (its tagged completion) and return False
    def before_literal(self, c, line):
        return True

    # -- what this read-only server does not do (STORE, COPY, APPEND, ...)
    def refuse(self, c, tag):
        c.send(tag + b" NO [CANNOT] this server is read-only\r\n")

    def search(self, c, tag, mb, uids):
        have = sorted(m.uid for m in mb.messages if m.uid in uids)
        c.send(b"* SEARCH%s\r\n%s OK UID SEARCH completed\r\n" % (
            b"".join(b" %d" % u for u in have), tag))


class Streaming(Scenario):
    """Helpers for scenarios that pour out a lot of bytes."""
    stream_limit = 512 << 20   # bytes poured out at most, then the line just stalls

    def pour(self, c, head, filler=b"x"):
        """Send head, then filler bytes until stream_limit or the client goes away.
        Returns the number of filler bytes sent."""
        chunk = filler * ((1 << 20) // len(filler))
        sent = 0
        try:
            c.send(head)
            while sent < self.stream_limit:
                c.send(chunk)
                sent += len(chunk)
        except (OSError, Closed):
            pass
        with self.lock:
            self.poured = getattr(self, "poured", []) + [sent]
        # Whatever the client does now, give it nothing more: if it still waits
        # for the end of the line, only its own timeout can save it.
        return sent


@scenario
class Literal4G(Streaming):
    """`* n FETCH (UID u BODY[] {4294967296}` in answer to a body fetch, then
    filler bytes for as long as the client reads (up to stream_limit)."""
    name = "literal_4g"
    size = 4294967296
    stream_limit = 64 << 20

    def fetch_body(self, c, tag, mb, msgs):
        seq, m = msgs[0]
        self.pour(c, b"* %d FETCH (UID %d BODY[] {%d}\r\n" % (seq, m.uid, self.size))
        c.hang()


@scenario
class EndlessLineList(Streaming):
    """LIST is answered with one line that never ends (no CRLF)."""
    name = "endless_line_list"

    def list(self, c, tag):
        self.pour(c, b'* LIST (\\HasNoChildren) "/" "')
        c.hang()


@scenario
class EndlessLineFetch(Streaming):
    """A body fetch is answered with a quoted BODY[] string that never ends."""
    name = "endless_line_fetch"

    def fetch_body(self, c, tag, mb, msgs):
        seq, m = msgs[0]
        self.pour(c, b'* %d FETCH (UID %d BODY[] "' % (seq, m.uid))
        c.hang()


@scenario
class ExistsFlood(Scenario):
    """count untagged `* n EXISTS` lines before the completion of LIST, SELECT,
    the metadata fetch and the body fetch (the real EXISTS comes last)."""
    name = "exists_flood"
    count = 100000

    def flood(self, c):
        # One write per 10,000 lines: the point is the number of responses.
        for start in range(1, self.count + 1, 10000):
            c.send(b"".join(b"* %d EXISTS\r\n" % n
                            for n in range(start, min(start + 10000, self.count + 1))))

    def list(self, c, tag):
        self.flood(c)
        super().list(c, tag)

    def select(self, c, tag, mb, readonly):
        self.flood(c)
        super().select(c, tag, mb, readonly)

    def fetch_meta(self, c, tag, mb, msgs):
        self.flood(c)
        super().fetch_meta(c, tag, mb, msgs)

    def fetch_body(self, c, tag, mb, msgs):
        self.flood(c)
        super().fetch_body(c, tag, mb, msgs)


@scenario
class WrongSize(Scenario):
    """RFC822.SIZE lies: odd UIDs are announced `delta` bytes shorter than the
    body sent later, even UIDs `delta` bytes longer."""
    name = "wrong_size"
    delta = 100

    def fetch_meta(self, c, tag, mb, msgs):
        for seq, m in msgs:
            size = len(m.body) + (-self.delta if m.uid % 2 else self.delta)
            c.send(b"* %d FETCH (UID %d FLAGS (%s) INTERNALDATE \"%s\" RFC822.SIZE %d "
                   b"ENVELOPE %s)\r\n" % (seq, m.uid, b" ".join(to_bytes(f) for f in m.flags),
                                          internaldate(m.internal), max(size, 0), m.envelope()))
        c.send(tag + b" OK UID FETCH completed\r\n")


@scenario
class ForeignUid(Scenario):
    """A body fetch also returns, first, bodies nobody asked for: other existing
    UIDs (foreign_uids), a UID that does not exist, one beyond 32 bits that
    truncates to an asked-for UID, and a FETCH without any UID."""
    name = "foreign_uid"
    foreign_uids = (2, 3)

    def evil(self, uid):
        return b"From: evil@example.org\r\nSubject: EVIL\r\n\r\nEVIL body sent as UID %d\r\n" % uid

    def fetch_body(self, c, tag, mb, msgs):
        asked = {m.uid for _, m in msgs}
        out = []
        for u in self.foreign_uids:
            if u not in asked:
                out.append(self.body_response(u, u, self.evil(u)))
        out.append(self.body_response(77, 999, self.evil(999)))
        for _, m in msgs:
            out.append(self.body_response(1, m.uid + (1 << 32), self.evil(m.uid + (1 << 32))))
            out.append(b"* 1 FETCH (BODY[] %s)\r\n" % nstring(self.evil(0)))
        c.send(b"".join(out))
        super().fetch_body(c, tag, mb, msgs)


@scenario
class Names(Scenario):
    """Mailboxes with the raw names given (names=[...]), each holding one message
    whose body names its mailbox; delimiter as given ("/" by default)."""
    name = "names"
    names = ("INBOX",)

    def __init__(self, names=None, **kw):
        super().__init__(**kw)
        if names is not None:
            self.names = names
        if "mailboxes" not in kw:
            self.mailboxes = []
            for i, n in enumerate(self.names):
                n = to_bytes(n)
                body = (b"From: Sender <sender@example.org>\r\nSubject: in %s\r\n\r\n"
                        b"MAILBOX-MARKER %s\r\n" % (base64.b16encode(n), base64.b16encode(n)))
                self.mailboxes.append(Mailbox(n, [Message(1, body=body)],
                                              uidvalidity=1000 + i))


@scenario
class Subjects(Scenario):
    """INBOX holds one message per (subject, from_name) given; each body is
    distinct so the files can be matched to the server's messages."""
    name = "subjects"

    def __init__(self, subjects=(), from_names=(), **kw):
        super().__init__(**kw)
        msgs = []
        uid = 1
        for s in subjects:
            msgs.append(Message(uid, subject=s, body=self.body(uid)))
            uid += 1
        for f in from_names:
            msgs.append(Message(uid, from_name=f, body=self.body(uid)))
            uid += 1
        self.mailboxes = [Mailbox("INBOX", msgs)]

    @staticmethod
    def body(uid):
        return (b"From: x@example.org\r\nSubject: see ENVELOPE\r\n\r\n"
                b"SUBJECT-MARKER uid=%d\r\n" % uid)


@scenario
class CloseMidLiteral(Scenario):
    """While .broken is true, a body fetch gets `{n}` and half of the bytes, then
    the connection is closed (or, with stall=True, kept open with no more data;
    with drip=SECONDS, the rest trickles out one byte every SECONDS).  Set
    .broken = False to let the server recover."""
    name = "close_mid_literal"
    broken = True
    stall = False
    drip = 0

    def fetch_body(self, c, tag, mb, msgs):
        if not self.broken:
            return super().fetch_body(c, tag, mb, msgs)
        with self.lock:
            self.broken_fetches = getattr(self, "broken_fetches", 0) + 1
        seq, m = msgs[0]
        half = len(m.body) // 2
        c.send(b"* %d FETCH (UID %d BODY[] {%d}\r\n" % (seq, m.uid, len(m.body)) + m.body[:half])
        if self.drip:
            for b in m.body[half:]:
                if c.closed:
                    return
                time.sleep(self.drip)
                c.send(bytes([b]))
            c.send(b")\r\n" + tag + b" OK UID FETCH completed\r\n")
            return
        if self.stall:
            c.hang()
        c.close()


@scenario
class StarttlsInjection(Scenario):
    """imap://: the STARTTLS OK and an injected response in one write, then TLS
    as if nothing happened (so a client that misses the injection goes on)."""
    name = "starttls_injection"
    injected = b"* OK injected\r\n"
    split = False   # send the injection 200 ms later, in its own segment

    def starttls(self, c, tag):
        if self.split:
            c.send(tag + b" OK Begin TLS negotiation now\r\n")
            time.sleep(0.2)
            c.send(self.injected)
        else:
            c.send(tag + b" OK Begin TLS negotiation now\r\n" + self.injected)
        c.start_tls()


@scenario
class NoStarttls(Scenario):
    """imap:// without STARTTLS in the capabilities (LOGIN would be accepted)."""
    name = "no_starttls"
    pre_tls_caps = "IMAP4rev1 AUTH=PLAIN SASL-IR"


@scenario
class Greeting(Scenario):
    """The first bytes are not an IMAP greeting: greeting=b"..." replaces them
    (then the connection is closed, or kept open with keep_open=True)."""
    name = "greeting"
    greeting_bytes = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"
    keep_open = False

    def greeting(self, c):
        if self.greeting_bytes:
            c.send(self.greeting_bytes)
        if self.keep_open:
            # Answer nothing, but read what comes (a client may go on anyway).
            return
        time.sleep(0.2)
        c.close()


@scenario
class LoginRefused(Scenario):
    """AUTHENTICATE/LOGIN answered with `status` (NO or BAD) and text."""
    name = "login_refused"
    status = b"NO"
    text = b"[AUTHENTICATIONFAILED] Authentication failed."

    def authenticate(self, c, tag, user, password):
        c.send(b"%s %s %s\r\n" % (tag, self.status, self.text))


@scenario
class ListRefused(Scenario):
    """LIST is answered with `status` (NO or BAD) and text."""
    name = "list_refused"
    status = b"NO"
    text = b"[SERVERBUG] Internal error listing mailboxes"

    def list(self, c, tag):
        c.send(b"%s %s %s\r\n" % (tag, self.status, self.text))


@scenario
class DeepNesting(Scenario):
    """LIST is answered with a LIST line nested `depth` parentheses deep."""
    name = "deep_nesting"
    depth = 100000

    def list(self, c, tag):
        c.send(b"* LIST (" + b"(" * self.depth + b")" * self.depth + b') "/" INBOX\r\n')
        super().list(c, tag)


@scenario
class SyncFaults(Scenario):
    """A well-behaved server that turns faulty on demand (set the attributes while
    mounted), for what the sync may conclude from an answer:
    empty_list -- LIST answers OK with no mailbox at all;
    flags_status (b"NO" or b"BAD") -- a flags-only `UID FETCH n:m (UID FLAGS)` is refused;
    esearch_all (bytes) -- UID SEARCH is answered `* ESEARCH (TAG ..) UID ALL <that set>`
    (ESEARCH is advertised; otherwise the true UIDs, as an ESEARCH set);
    zone (bytes) -- every INTERNALDATE carries this zone instead of +0000."""
    name = "sync_faults"
    caps = CAPS + " ESEARCH"
    empty_list = False
    flags_status = None
    esearch_all = None
    zone = None

    def list(self, c, tag):
        if self.empty_list:
            c.send(tag + b" OK LIST completed\r\n")
            return
        super().list(c, tag)

    def fetch_meta(self, c, tag, mb, msgs):
        if self.zone is None:
            return super().fetch_meta(c, tag, mb, msgs)
        for seq, m in msgs:
            idate = internaldate(m.internal)[:-5] + self.zone
            c.send(b"* %d FETCH (UID %d FLAGS (%s) INTERNALDATE \"%s\" RFC822.SIZE %d "
                   b"ENVELOPE %s)\r\n" % (seq, m.uid, b" ".join(to_bytes(f) for f in m.flags),
                                          idate, len(m.body), m.envelope()))
        c.send(tag + b" OK UID FETCH completed\r\n")

    def fetch_flags(self, c, tag, mb, msgs):
        if self.flags_status:
            c.send(b"%s %s [SERVERBUG] flags unavailable\r\n" % (tag, self.flags_status))
            return
        super().fetch_flags(c, tag, mb, msgs)

    def search(self, c, tag, mb, uids):
        have = sorted(m.uid for m in mb.messages if m.uid in uids)
        s = self.esearch_all if self.esearch_all is not None else \
            b",".join(b"%d" % u for u in have)
        c.send(b'* ESEARCH (TAG "%s") UID%s\r\n%s OK UID SEARCH completed\r\n' % (
            tag, b" ALL " + s if s else b"", tag))


@scenario
class LongTag(Scenario):
    """The login is answered with a tagged completion whose tag is `tag_len` bytes
    of atom characters (no tag the client sent), followed by `text_len` bytes of
    text: for the -d trace of a response, which sees the line before the tag is
    checked."""
    name = "long_tag"
    tag_len = 500
    text_len = 2000

    def authenticate(self, c, tag, user, password):
        c.send(b"T" * self.tag_len + b" OK " + b"Y" * self.text_len + CRLF)
        c.hang()


@scenario
class Trickle(Scenario):
    """At the step named by `at` ("greeting", "list" or "select"), the server
    trickles, never completing: the greeting line gets one more byte every
    `every` seconds, and LIST / SELECT get one short untagged line (a complete
    `* OK`) every `every` seconds (select: only for the mailbox named
    `trickle_box`, default "Slow", which the scenario adds).  No per-read
    timeout longer than `every` ever trips."""
    name = "trickle"
    at = "select"
    every = 1.0
    trickle_box = b"Slow"

    def __init__(self, **kw):
        super().__init__(**kw)
        if self.at == "select" and not self.find(self.trickle_box):
            self.mailboxes.append(Mailbox(self.trickle_box, [Message(1)]))

    def trickle(self, c):
        with self.lock:
            self.trickles = getattr(self, "trickles", 0) + 1
        try:
            while not c.closed:
                c.send(b"* OK still working\r\n")
                time.sleep(self.every)
        except (OSError, Closed):
            pass
        raise Closed()

    def greeting(self, c):
        if self.at == "greeting":
            # A greeting line that never ends, one byte at a time (any complete
            # untagged OK would be a greeting).
            try:
                c.send(b"* OK [CAPABILITY IMAP4rev1")
                with self.lock:
                    self.trickles = getattr(self, "trickles", 0) + 1
                while not c.closed:
                    time.sleep(self.every)
                    c.send(b"x")
            except (OSError, Closed):
                pass
            raise Closed()
        super().greeting(c)

    def list(self, c, tag):
        if self.at == "list":
            self.trickle(c)
        super().list(c, tag)

    def select(self, c, tag, mb, readonly):
        if self.at == "select" and mb.name == self.trickle_box:
            self.trickle(c)
        super().select(c, tag, mb, readonly)


@scenario
class AppendBeforeContinuation(Scenario):
    """An APPEND's synchronizing literal (the capabilities have no LITERAL+) is
    answered, instead of "+", with `refusal` (a tagged NO: "[TOOBIG] ...") -- or,
    with refusal=None, with `untagged` lines first and then "+" (the APPEND is
    then refused after its data, as this server is read-only)."""
    name = "append_before_continuation"
    refusal = b"NO [TOOBIG] Message too large for this server"
    untagged = b"* 4 EXISTS\r\n* 1 RECENT\r\n"

    def before_literal(self, c, line):
        if not re.match(rb"\S+ APPEND ", line, re.I):
            return True
        with self.lock:
            self.appends = getattr(self, "appends", 0) + 1
        if self.refusal is None:
            c.send(self.untagged)
            return True
        c.send(line.split(b" ", 1)[0] + b" " + self.refusal + CRLF)
        return False


@scenario
class EscapeText(Scenario):
    """Every refusal (any command this read-only server does not do, and LIST
    with refuse_list=True) carries `text`: terminal escape sequences and a BEL,
    which must never reach a terminal or syslog as they are."""
    name = "escape_text"
    text = b"\x1b[31mRED\x1b[0m bell\x07 \x1b]0;owned\x07 cursor\x1b[2J done"
    refuse_list = False

    def list(self, c, tag):
        if self.refuse_list:
            c.send(tag + b" NO " + self.text + CRLF)
            return
        super().list(c, tag)

    def refuse(self, c, tag):
        c.send(tag + b" NO [CANNOT] " + self.text + CRLF)


@scenario
class Moves(Scenario):
    """A server that moves and expunges (MOVE, UID STORE, UID EXPUNGE, STATUS, UID SEARCH
    HEADER Message-ID), with a UID MOVE answered the way move_mode says:
    "real" -- moved; COPYUID in an untagged OK unless copyuid is False (RFC 6851 only
    says SHOULD), and the source's EXPUNGE;
    "m365" -- the UID was just expunged by another client (it goes from the source now);
    Microsoft 365 answers such a move `* OK [COPYUID 983  ]` (empty UID sets) and OK."""
    name = "moves"
    caps = CAPS + " MOVE"
    move_mode = "real"
    copyuid = True

    def status(self, c, tag, mb):
        c.send(b"* STATUS %s (MESSAGES %d UIDNEXT %d UIDVALIDITY %d)\r\n%s OK STATUS done\r\n" % (
            nstring(mb.name), len(mb.messages), mb.uidnext, mb.uidvalidity, tag))

    def expunged(self, c, mb, uids):
        for seq in sorted((s for s, m in mb.by_uid(uids)), reverse=True):
            del mb.messages[seq - 1]
            c.send(b"* %d EXPUNGE\r\n" % seq)

    def move(self, c, tag, mb, uids, dest):
        with self.lock:
            msgs = [m for _, m in mb.by_uid(uids)]
            if self.move_mode == "m365":
                self.expunged(c, mb, uids)
                c.send(b"* OK [COPYUID 983  ] moved\r\n%s OK MOVE completed\r\n" % tag)
                return
            first = dest.uidnext
            src = ",".join(str(m.uid) for m in msgs)
            for i, m in enumerate(msgs):
                m.uid = first + i
                dest.messages.append(m)
            if msgs and self.copyuid:
                c.send(b"* OK [COPYUID %d %s %d:%d] moved\r\n" % (
                    dest.uidvalidity, src.encode(), first, first + len(msgs) - 1))
            for seq in sorted((s for s, m in enumerate(mb.messages, 1) if m in msgs),
                              reverse=True):
                del mb.messages[seq - 1]
                c.send(b"* %d EXPUNGE\r\n" % seq)
            c.send(tag + b" OK MOVE completed\r\n")

    def store(self, c, tag, mb, uids, op, flags):
        with self.lock:
            for seq, m in mb.by_uid(uids):
                if op.startswith(b"+"):
                    m.flags = sorted(set(m.flags) | set(flags))
                elif op.startswith(b"-"):
                    m.flags = [f for f in m.flags if f not in flags]
                else:
                    m.flags = list(flags)
                if b"SILENT" not in op.upper():
                    c.send(b"* %d FETCH (UID %d FLAGS (%s))\r\n" % (
                        seq, m.uid, b" ".join(m.flags)))
        c.send(tag + b" OK STORE completed\r\n")

    def uid_expunge(self, c, tag, mb, uids):
        with self.lock:
            self.expunged(c, mb, {m.uid for _, m in mb.by_uid(uids) if b"\\Deleted" in m.flags})
        c.send(tag + b" OK EXPUNGE completed\r\n")

    appenduid = True

    def append(self, c, tag, mb, rest):
        """APPEND: the literal (inlined by read_command) becomes a message; APPENDUID
        unless appenduid is False (a server without UIDPLUS)."""
        m = re.search(rb"\{(\d+)\}\r\n", rest)
        if not m:
            c.send(tag + b" BAD literal expected\r\n")
            return
        data = rest[m.end():m.end() + int(m.group(1))]
        mid = re.search(rb"(?im)^Message-ID:[ \t]*(\S+)", data)
        with self.lock:
            uid = mb.uidnext
            mb.messages.append(Message(uid, body=data, msgid=mid.group(1) if mid else b"NIL"))
        code = b"[APPENDUID %d %d] " % (mb.uidvalidity, uid) if self.appenduid else b""
        c.send(b"%s OK %sAPPEND completed\r\n" % (tag, code))

    def search(self, c, tag, mb, uids):
        m = re.search(rb"HEADER MESSAGE-ID \"?([^\" ]+)", c.search_args.upper())
        if not m:
            return super().search(c, tag, mb, uids)
        have = sorted(x.uid for x in mb.messages if x.uid in uids and
                      x.msgid.upper() == m.group(1))
        c.send(b"* SEARCH%s\r\n%s OK UID SEARCH completed\r\n" % (
            b"".join(b" %d" % u for u in have), tag))


# --------------------------------------------------------------------------
# connections

class Closed(Exception):
    pass


class Conn:
    """One client connection, run on its own thread."""

    def __init__(self, server, sock, cid):
        self.server = server
        self.sc = server.scenario
        self.sock = sock
        self.cid = cid
        self.buf = b""
        self.tls = False
        self.closed = False
        self.selected = None

    # -- I/O
    def send(self, data):
        if self.closed:
            raise Closed()
        self.sock.sendall(data)

    def recv_more(self):
        data = self.sock.recv(65536)
        if not data:
            raise Closed()
        self.buf += data

    def readline(self):
        while CRLF not in self.buf:
            if len(self.buf) > (1 << 20):
                raise Closed()
            self.recv_more()
        line, self.buf = self.buf.split(CRLF, 1)
        return line

    def read_exact(self, n):
        while len(self.buf) < n:
            self.recv_more()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_command(self):
        """A command line with any literals it carries inlined."""
        line = self.readline()
        while True:
            m = re.search(rb"\{(\d+)(\+?)\}$", line)
            if not m or int(m.group(1)) > (64 << 20):
                return line
            if not m.group(2):
                if not self.sc.before_literal(self, line):
                    return None     # refused: the client sends no data
                self.send(b"+ go ahead\r\n")
            line = line[:m.start()] + nstring(self.read_exact(int(m.group(1)))) + self.readline()

    def start_tls(self):
        if self.buf:
            self.server.note(self.cid, "plaintext after STARTTLS: %r" % self.buf[:100])
            self.buf = b""
        self.sock = self.server.tls_context().wrap_socket(self.sock, server_side=True)
        self.tls = True

    def hang(self):
        """Send nothing more; wait until the client closes (or the server stops)."""
        try:
            while True:
                self.buf = b""
                self.recv_more()
        except (OSError, Closed):
            pass
        raise Closed()

    def close(self):
        if not self.closed:
            self.closed = True
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()
        raise Closed()

    # -- the session
    def run(self):
        try:
            if self.server.mode == "imaps":
                self.sock = self.server.tls_context().wrap_socket(self.sock, server_side=True)
                self.tls = True
            self.sc.greeting(self)
            while not self.closed:
                line = self.read_command()
                if line is None:
                    continue
                self.server.record(self.cid, line)
                self.dispatch(line)
        except (Closed, OSError, ssl.SSLError, ValueError) as e:
            if not isinstance(e, Closed):
                self.server.note(self.cid, "connection ended: %r" % e)
        finally:
            self.closed = True
            try:
                self.sock.close()
            except OSError:
                pass

    def dispatch(self, line):
        parts = line.split(b" ", 2)
        tag = parts[0]
        cmd = parts[1].upper() if len(parts) > 1 else b""
        rest = parts[2] if len(parts) > 2 else b""
        sc = self.sc
        if cmd == b"CAPABILITY":
            sc.capability(self, tag)
        elif cmd == b"STARTTLS":
            if self.tls or self.server.mode != "starttls":
                self.send(tag + b" BAD STARTTLS not available\r\n")
            else:
                sc.starttls(self, tag)
        elif cmd == b"AUTHENTICATE":
            mech, arg = (rest.split(b" ", 1) + [None])[:2]
            if mech.upper() != b"PLAIN":
                self.send(tag + b" NO unsupported mechanism\r\n")
                return
            if arg is None:
                self.send(b"+ \r\n")
                arg = self.readline()
                self.server.record(self.cid, b"<SASL response>")
            try:
                _, user, password = base64.b64decode(arg).split(b"\0", 2)
            except (ValueError, TypeError):
                self.send(tag + b" BAD malformed SASL response\r\n")
                return
            sc.authenticate(self, tag, user, password)
        elif cmd == b"LOGIN":
            user, r = parse_astring(rest)
            password, _ = parse_astring(r)
            sc.authenticate(self, tag, user, password)
        elif cmd == b"ENABLE":
            self.send(b"* ENABLED\r\n" + tag + b" OK ENABLE completed\r\n")
        elif cmd == b"ID":
            self.send(b'* ID ("name" "hostile")\r\n' + tag + b" OK ID completed\r\n")
        elif cmd in (b"NOOP", b"CHECK", b"SUBSCRIBE", b"UNSUBSCRIBE"):
            self.send(tag + b" OK done\r\n")
        elif cmd in (b"UNSELECT", b"CLOSE"):
            self.selected = None
            self.send(tag + b" OK done\r\n")
        elif cmd == b"LOGOUT":
            self.send(b"* BYE logging out\r\n" + tag + b" OK LOGOUT completed\r\n")
            self.close()
        elif cmd == b"LIST" or cmd == b"LSUB":
            sc.list(self, tag)
        elif cmd in (b"SELECT", b"EXAMINE"):
            name, _ = parse_astring(rest)
            mb = sc.find(name)
            if mb is None:
                self.selected = None
                self.send(tag + b" NO [NONEXISTENT] Mailbox doesn't exist\r\n")
            else:
                self.selected = mb
                sc.select(self, tag, mb, cmd == b"EXAMINE")
        elif cmd == b"IDLE":
            self.send(b"+ idling\r\n")
            while self.readline().upper() != b"DONE":
                pass
            self.send(tag + b" OK IDLE terminated\r\n")
        elif cmd == b"UID":
            self.uid_command(tag, rest)
        elif cmd == b"APPEND" and hasattr(sc, "append"):
            name, r = parse_astring(rest)
            mb = sc.find(name)
            if mb is None:
                self.send(tag + b" NO [TRYCREATE] Mailbox doesn't exist\r\n")
            else:
                sc.append(self, tag, mb, r)
        elif cmd == b"STATUS" and hasattr(sc, "status"):
            name, _ = parse_astring(rest)
            mb = sc.find(name)
            if mb is None:
                self.send(tag + b" NO [NONEXISTENT] Mailbox doesn't exist\r\n")
            else:
                sc.status(self, tag, mb)
        else:
            sc.refuse(self, tag)

    def uid_command(self, tag, rest):
        sub, _, args = rest.partition(b" ")
        sub = sub.upper()
        mb = self.selected
        if mb is None:
            self.send(tag + b" BAD no mailbox selected\r\n")
            return
        maxuid = max((m.uid for m in mb.messages), default=0)
        if sub == b"FETCH":
            setstr, _, items = args.partition(b" ")
            msgs = mb.by_uid(UidSet(setstr.decode(), maxuid)) if maxuid else []
            items = items.upper()
            if b"BODY.PEEK[]" in items or b"BODY[]" in items:
                self.sc.fetch_body(self, tag, mb, msgs)
            elif b"ENVELOPE" in items:
                self.sc.fetch_meta(self, tag, mb, msgs)
            else:
                self.sc.fetch_flags(self, tag, mb, msgs)
        elif sub == b"SEARCH":
            self.search_args = args
            m = re.search(rb"UID ([0-9:,*]+)", args)
            uids = UidSet(m.group(1).decode(), maxuid) if m and maxuid else (
                {x.uid for x in mb.messages} if not m else set())
            self.sc.search(self, tag, mb, uids)
        elif sub == b"MOVE" and hasattr(self.sc, "move"):
            setstr, _, name = args.partition(b" ")
            dest, _ = parse_astring(name)
            dmb = self.sc.find(dest)
            if dmb is None:
                self.send(tag + b" NO [TRYCREATE] no such mailbox\r\n")
            else:
                self.sc.move(self, tag, mb, UidSet(setstr.decode(), maxuid), dmb)
        elif sub == b"STORE" and hasattr(self.sc, "store"):
            setstr, _, r = args.partition(b" ")
            op, _, flags = r.partition(b" ")
            self.sc.store(self, tag, mb, UidSet(setstr.decode(), maxuid), op,
                          flags.strip(b"()").split())
        elif sub == b"EXPUNGE" and hasattr(self.sc, "uid_expunge"):
            self.sc.uid_expunge(self, tag, mb, UidSet(args.decode(), maxuid))
        else:
            self.sc.refuse(self, tag)


# --------------------------------------------------------------------------
# the server

def make_cert(directory):
    """A self-signed certificate for 127.0.0.1/localhost, as the Dovecot harness
    makes it.  Returns (cert, key)."""
    cert = os.path.join(directory, "hostile-cert.pem")
    key = os.path.join(directory, "hostile-key.pem")
    if not (os.path.exists(cert) and os.path.exists(key)):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
                        "-keyout", key, "-out", cert, "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.chmod(key, 0o600)
        os.chmod(cert, 0o644)
    return cert, key


class HostileServer:
    """mode: "imaps" (implicit TLS), "starttls" (plaintext, STARTTLS offered unless
    the scenario hides it), or "plain" (no TLS at all)."""

    def __init__(self, base_dir, scenario="normal", mode="imaps", port=0, **kw):
        self.base_dir = os.path.abspath(base_dir)
        os.makedirs(self.base_dir, exist_ok=True)
        if isinstance(scenario, str):
            scenario = SCENARIOS[scenario](**kw)
        elif kw:
            raise ValueError("keywords go to the scenario's constructor")
        self.scenario = scenario
        self.mode = mode
        self.ssl = mode != "plain"      # conftest's Mounter passes cafile= when true
        self.cert, self.key = make_cert(self.base_dir)
        self.users = {USER: PASSWORD}
        self.port = port
        self._ctx = None
        self._lsock = None
        self._conns = []
        self._threads = []
        self._lock = threading.Lock()
        self._log = []        # (time, conn id, command line)
        self._notes = []
        self._stopping = False
        self.connections = 0

    # -- what conftest's Mounter expects of a server
    def url(self, user=USER, scheme="imaps"):
        return "%s://%s@%s:%d" % (scheme, user, HOST, self.port)

    def password_file_for(self, user, path):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.users[user] + "\n")
        os.chmod(path, 0o600)
        return path

    # -- records
    def tls_context(self):
        if self._ctx is None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(self.cert, self.key)
            self._ctx = ctx
        return self._ctx

    def record(self, cid, line):
        if re.match(rb"\S+ (LOGIN|AUTHENTICATE) ", line, re.I):
            line = b" ".join(line.split(b" ")[:3]) + b" <redacted>"
        with self._lock:
            self._log.append((time.time(), cid, line.decode("latin-1")))

    def note(self, cid, text):
        with self._lock:
            self._notes.append((time.time(), cid, text))

    def commands(self):
        """[(conn id, command line)] received so far (credentials redacted)."""
        with self._lock:
            return [(cid, line) for _, cid, line in self._log]

    def notes(self):
        with self._lock:
            return [(cid, t) for _, cid, t in self._notes]

    # -- life
    def start(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((HOST, self.port))
        s.listen(64)
        self.port = s.getsockname()[1]
        self._lsock = s
        t = threading.Thread(target=self._accept, name="hostile-accept", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def _accept(self):
        while not self._stopping:
            try:
                sock, _ = self._lsock.accept()
            except OSError:
                return
            with self._lock:
                if self._stopping:
                    sock.close()
                    return
                self.connections += 1
                conn = Conn(self, sock, self.connections)
                self._conns.append(conn)
            t = threading.Thread(target=conn.run, name="hostile-%d" % conn.cid, daemon=True)
            t.start()
            self._threads.append(t)

    def drop_all(self):
        """Cut every open client connection (the listener stays)."""
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            c.closed = True
            try:
                c.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self):
        self._stopping = True
        if self._lsock is not None:
            try:
                # shutdown() wakes the thread blocked in accept(); close() alone does not
                self._lsock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._lsock.close()
        self.drop_all()
        for t in self._threads:
            t.join(5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def main(argv=None):
    ap = argparse.ArgumentParser(description="a scripted hostile IMAP server")
    ap.add_argument("scenario", nargs="?", default="normal")
    ap.add_argument("--mode", choices=("imaps", "starttls", "plain"), default="imaps")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--dir", default=None, help="where the certificate goes")
    ap.add_argument("--list", action="store_true", help="list the scenarios")
    a = ap.parse_args(argv)
    if a.list:
        for name, cls in sorted(SCENARIOS.items()):
            doc = (cls.__doc__ or "").strip().split("\n")[0]
            print("%-20s %s" % (name, doc))
        return 0
    d = a.dir or tempfile.mkdtemp(prefix="hostile-")
    srv = HostileServer(d, a.scenario, mode=a.mode, port=a.port).start()
    print("scenario %s on %s (cafile=%s); user %s, password %s" % (
        a.scenario, srv.url(USER, "imaps" if a.mode == "imaps" else "imap"), srv.cert,
        USER, PASSWORD), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
