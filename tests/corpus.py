#!/usr/bin/python3
"""Deterministic test corpus of realistic (and some hostile) mail messages.

Standard library only; every message is built by hand as CRLF bytes from a seeded
random.Random, so the same call always gives the same bytes.

    c = corpus(300)           # ~300 ordinary messages + the fixed "Odd" folder
    c.folders                 # folders to create (UTF-8 names, "/" separated)
    c.messages                # [Message], in append order
    c.in_folder("INBOX")      # that folder's messages; .index is the position (UID order)
    c.manifest                # {token: [(folder, index), ...]} planted grep tokens
    c.hidden_tokens           # tokens present only inside base64: grep must find nothing
    c.known["hello"]          # messages with an exactly known readable file name
    demo_corpus()             # a few hundred messages for the README demo

A Message has .folder .index .raw .internaldate (aware datetime, UTC) .flags (tuple)
.subject / .sender (decoded, None if absent) .date (Date header datetime or None)
.message_id .tokens .kind, and .expected_name (only for the `known` messages).

Folders "Work/Projects" and "Lists" are never created: the server lists them as
\\Noselect parents.  "Archive/Empty" exists and stays empty.
"""
import base64
import datetime as _dt
import quopri
import random

__all__ = ["Message", "Corpus", "corpus", "demo_corpus", "FOLDERS", "ODD_FOLDER",
           "rfc2047", "format_date"]

UTC = _dt.timezone.utc
ODD_FOLDER = "Odd"
FOLDERS = ["INBOX", "Archive", "Archive/2025", "Archive/2026", "Archive/Empty", "Work",
           "Work/Projects/Alpha", "Entwürfe", "Привет", "Lists/debian-devel", ODD_FOLDER]
# share of the ordinary messages each folder gets
_WEIGHTS = {"INBOX": 30, "Archive": 8, "Archive/2025": 14, "Archive/2026": 10, "Work": 6,
            "Work/Projects/Alpha": 8, "Entwürfe": 5, "Привет": 5, "Lists/debian-devel": 14}
_DATE_RANGE = {  # (start, end) of Date headers per folder
    "Archive/2025": (_dt.datetime(2025, 1, 1, tzinfo=UTC), _dt.datetime(2025, 12, 31, tzinfo=UTC)),
    "Archive/2026": (_dt.datetime(2026, 1, 1, tzinfo=UTC), _dt.datetime(2026, 6, 30, tzinfo=UTC)),
    "Archive": (_dt.datetime(2023, 1, 1, tzinfo=UTC), _dt.datetime(2024, 12, 31, tzinfo=UTC)),
}
_DEFAULT_RANGE = (_dt.datetime(2025, 1, 1, tzinfo=UTC), _dt.datetime(2026, 6, 30, tzinfo=UTC))

# planted grep tokens: token -> (folder, how many messages, where)
_TOKENS = [
    ("INVOICE-7731", ["INBOX"], "body"),
    ("QUARTERLY-SYNC-4410", ["INBOX", "Archive/2025"], "body"),
    ("ALPHA-ROADMAP-2291", ["Work/Projects/Alpha"], "body"),
    ("DEBIAN-BUG-998877", ["Lists/debian-devel"], "body"),
    ("ZÜRICH-TREFFEN-8841", ["Entwürfe"], "body8bit"),
    ("REF-5150", ["Archive/2026"], "subject"),
    ("MULTIPART-TOKEN-6262", ["Archive"], "multipart"),
    ("HOSTILE-ODD-6060", [ODD_FOLDER], "odd"),
]
_HIDDEN_TOKENS = ["BASE64-HIDDEN-3141"]

_WORDS = ("the a meeting project report budget review draft schedule update please find "
          "attached summary notes agenda team quarter release server backup migration plan "
          "deadline invoice payment customer feedback design proposal change request issue "
          "ticket build test deploy weekend travel lunch call tomorrow today next week "
          "thanks regards question answer status progress risk estimate document version "
          "contract meeting room office holiday conference slides numbers results final "
          "could you check whether we should discuss this before friday I think it is "
          "fine with me let us know if anything changes").split()
_DE = "Grüße aus Köln, schönen Gruß, bis später, Übersicht, Änderungen, Straße, Besprechung".split(", ")
_FR = "Réunion de l'équipe, Café demain, Été à Noël, Reçu, Déjà vu, Élève".split(", ")
_RU = "Привет, Отчёт за квартал, Встреча завтра, Счёт на оплату, Поздравляю".split(", ")
_JA = "会議の議事録, 見積もり, お疲れ様です, 日程調整".split(", ")

_SENDERS = [
    ("Alice Example", "alice@example.org", "plain"),
    ("Bob Builder", "bob@example.com", "plain"),
    ("Carol Jones", "carol.jones@example.net", "plain"),
    ("Jürgen Müller", "juergen@example.de", "utf8-q"),
    ("François Dupont", "francois@example.fr", "latin1-q"),
    ("Ивана Петрова", "ivana@example.ru", "utf8-b"),
    ("山田太郎", "yamada@example.jp", "utf8-b"),
    ("O'Brien, Pat", "pat@example.ie", "quoted"),
    (None, "noreply@example.com", "bare"),
    ("Zoë Ångström", "zoe@example.se", "latin1-q"),
    ("Dave \"The Admin\" Smith", "dave@example.org", "quoted"),
]
_LIST_SENDERS = [
    ("Debian Bug Tracking System", "owner@bugs.debian.org", "plain"),
    ("Jonas Smedegaard", "dr@example.dk", "plain"),
    ("Ansgar", "ansgar@example.org", "plain"),
    ("Paul Wise", "pabs@example.org", "plain"),
    ("Mattia Rizzolo", "mattia@example.it", "plain"),
]


class Message:
    __slots__ = ("folder", "index", "raw", "internaldate", "flags", "subject", "sender",
                 "date", "message_id", "tokens", "kind", "expected_name")

    def __init__(self, folder, raw, internaldate, flags=(), subject=None, sender=None,
                 date=None, message_id=None, tokens=(), kind="plain", expected_name=None):
        self.folder = folder
        self.index = None
        self.raw = raw
        self.internaldate = internaldate
        self.flags = tuple(flags)
        self.subject = subject
        self.sender = sender
        self.date = date
        self.message_id = message_id
        self.tokens = tuple(tokens)
        self.kind = kind
        self.expected_name = expected_name

    def __repr__(self):
        return "<Message %s#%s %s %r %d bytes>" % (self.folder, self.index, self.kind,
                                                   (self.subject or "")[:40], len(self.raw))


class Corpus:
    def __init__(self):
        self.folders = list(FOLDERS)
        self.messages = []
        self.manifest = {}
        self.hidden_tokens = list(_HIDDEN_TOKENS)
        self.known = {}

    def add(self, msg):
        msg.index = sum(1 for m in self.messages if m.folder == msg.folder)
        self.messages.append(msg)
        for t in msg.tokens:
            self.manifest.setdefault(t, []).append((msg.folder, msg.index))
        return msg

    def in_folder(self, folder):
        return [m for m in self.messages if m.folder == folder]

    def by_folder(self):
        out = {f: [] for f in self.folders}
        for m in self.messages:
            out.setdefault(m.folder, []).append(m)
        return out

    def total_bytes(self):
        return sum(len(m.raw) for m in self.messages)

    def __len__(self):
        return len(self.messages)


# --------------------------------------------------------------------------
# encoding helpers

def format_date(dt):
    """RFC 5322 date: "Mon, 02 Jun 2025 10:00:00 +0200"."""
    days = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
    months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    off = int(dt.utcoffset().total_seconds() // 60)
    sign = "+" if off >= 0 else "-"
    off = abs(off)
    return "%s, %02d %s %04d %02d:%02d:%02d %s%02d%02d" % (
        days[dt.weekday()], dt.day, months[dt.month - 1], dt.year, dt.hour, dt.minute,
        dt.second, sign, off // 60, off % 60)


def rfc2047(text, charset="utf-8", enc="B"):
    """Encode TEXT as one or more RFC 2047 encoded words (each at most 75 chars),
    separated by CRLF SP folding."""
    cs = charset.upper()
    words, cur = [], ""
    limit = 75 - len("=?%s?%s??=" % (cs, enc))

    def encode(s):
        b = s.encode(charset)
        if enc == "B":
            return base64.b64encode(b).decode()
        out = []
        for byte in b:
            c = chr(byte)
            if c == " ":
                out.append("_")
            elif c.isalnum() and byte < 128:
                out.append(c)
            else:
                out.append("=%02X" % byte)
        return "".join(out)

    for ch in text:
        if cur and len(encode(cur + ch)) > limit:
            words.append(cur)
            cur = ""
        cur += ch
    if cur or not words:
        words.append(cur)
    return "\r\n ".join("=?%s?%s?%s?=" % (cs, enc, encode(w)) for w in words)


def _fold(value, width=76):
    """Fold an ASCII header value at spaces."""
    parts, line = [], ""
    for word in value.split(" "):
        if line and len(line) + 1 + len(word) > width:
            parts.append(line)
            line = word
        else:
            line = line + " " + word if line else word
    parts.append(line)
    return "\r\n ".join(parts)


def _addr(name, addr, style):
    if style == "bare" or name is None:
        return addr
    if style == "plain":
        return "%s <%s>" % (name, addr)
    if style == "quoted":
        return '"%s" <%s>' % (name.replace("\\", "\\\\").replace('"', '\\"'), addr)
    if style == "utf8-q":
        return "%s <%s>" % (rfc2047(name, "utf-8", "Q"), addr)
    if style == "utf8-b":
        return "%s <%s>" % (rfc2047(name, "utf-8", "B"), addr)
    if style == "latin1-q":
        return "%s <%s>" % (rfc2047(name, "iso-8859-1", "Q"), addr)
    raise ValueError(style)


def _subject_header(subject, rng, style=None):
    try:
        subject.encode("ascii")
        return _fold(subject)
    except UnicodeEncodeError:
        pass
    if style is None:
        try:
            subject.encode("iso-8859-1")
            style = rng.choice(["latin1-q", "utf8-q", "utf8-b"])
        except UnicodeEncodeError:
            style = rng.choice(["utf8-q", "utf8-b"])
    cs, enc = {"latin1-q": ("iso-8859-1", "Q"), "utf8-q": ("utf-8", "Q"),
               "utf8-b": ("utf-8", "B"), "koi8-b": ("koi8-r", "B")}[style]
    return rfc2047(subject, cs, enc)


def _b64_lines(data):
    enc = base64.b64encode(data)
    return b"\r\n".join(enc[i:i + 76] for i in range(0, len(enc), 76)) + b"\r\n"


def _qp(text):
    """Quoted-printable with CRLF line ends."""
    lines = text.split("\r\n")
    out = [quopri.encodestring(ln.encode("utf-8")).replace(b"\n", b"\r\n") for ln in lines]
    return b"\r\n".join(out) + b"\r\n"


class _Gen:
    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.seed = seed
        self.msgid_n = 0
        self.threads = {}  # folder -> [(subject, message_id)] eligible parents

    # ---- text

    def sentence(self, n=None):
        r = self.rng
        words = [r.choice(_WORDS) for _ in range(n or r.randint(6, 16))]
        return " ".join(words).capitalize() + r.choice([".", ".", ".", "?", "!"])

    def paragraph(self):
        return " ".join(self.sentence() for _ in range(self.rng.randint(2, 5)))

    def wrap(self, text, width=72):
        out, line = [], ""
        for w in text.split(" "):
            if line and len(line) + 1 + len(w) > width:
                out.append(line)
                line = w
            else:
                line = line + " " + w if line else w
        out.append(line)
        return "\r\n".join(out)

    def body_text(self, extra=None):
        paras = [self.wrap(self.paragraph()) for _ in range(self.rng.randint(1, 4))]
        if extra:
            paras.insert(self.rng.randint(0, len(paras)), extra)
        return "Hi,\r\n\r\n" + "\r\n\r\n".join(paras) + "\r\n\r\n-- \r\nSent from a test\r\n"

    def subject(self, folder):
        r = self.rng
        x = r.random()
        if folder == "Привет" and x < 0.7:
            return r.choice(_RU) + " " + str(r.randint(1, 99))
        if x < 0.08:
            return r.choice(_DE)
        if x < 0.14:
            return r.choice(_FR)
        if x < 0.18:
            return r.choice(_JA)
        if x < 0.20:
            return "\U0001F389 " + r.choice(["Launch", "Party", "Release"]) + " " + str(r.randint(1, 9))
        words = [r.choice(_WORDS) for _ in range(r.randint(2, 8))]
        return " ".join(words).capitalize()

    def msgid(self):
        self.msgid_n += 1
        return "<%d.%d.%08x@corpus.example>" % (self.seed, self.msgid_n, self.rng.getrandbits(32))

    def date(self, folder):
        start, end = _DATE_RANGE.get(folder, _DEFAULT_RANGE)
        secs = self.rng.randint(0, int((end - start).total_seconds()))
        t = start + _dt.timedelta(seconds=secs)
        tz = _dt.timezone(_dt.timedelta(minutes=self.rng.choice([0, 0, 60, 120, -300, -420, 330, 540])))
        return t.astimezone(tz)

    def flags(self, folder):
        r = self.rng
        f = []
        if r.random() < 0.65:
            f.append("\\Seen")
        if r.random() < 0.10:
            f.append("\\Flagged")
        if r.random() < 0.08:
            f.append("\\Answered")
        if r.random() < 0.04:
            f.append("$Junk")
        if folder == "Entwürfe":
            f = ["\\Draft", "\\Seen"]
        return f

    # ---- assembly

    def headers(self, frm, to, subject_hdr, date, msgid, extra=()):
        h = []
        if frm is not None:
            h.append("From: " + frm)
        h.append("To: " + to)
        if subject_hdr is not None:
            h.append("Subject: " + subject_hdr)
        if date is not None:
            h.append("Date: " + format_date(date))
        if msgid is not None:
            h.append("Message-ID: " + msgid)
        h.extend(extra)
        h.append("MIME-Version: 1.0")
        return "\r\n".join(h).encode("ascii") + b"\r\n"

    def message(self, folder, kind=None, token=None, token_where="body", big=False):
        r = self.rng
        senders = _LIST_SENDERS if folder.startswith("Lists/") else _SENDERS
        name, addr, style = r.choice(senders)
        if name is not None and style in ("utf8-q", "utf8-b", "latin1-q") and r.random() < 0.15:
            style = "utf8-b" if style != "utf8-b" else "utf8-q"
        if folder == "Привет" and r.random() < 0.3:
            name, addr, style = ("Сергей Иванов", "sergey@example.ru", "koi8")
        frm = (_addr(name, addr, style) if style != "koi8"
               else "%s <%s>" % (rfc2047(name, "koi8-r", "B"), addr))
        date = self.date(folder)
        msgid = self.msgid()
        extra = []
        parents = self.threads.setdefault(folder, [])
        reply = parents and r.random() < 0.25 and token is None
        if reply:
            psubj, pid = r.choice(parents)
            subject = psubj if psubj.startswith("Re: ") else "Re: " + psubj
            extra += ["In-Reply-To: " + pid, "References: " + pid]
        else:
            subject = self.subject(folder)
        if token_where == "subject" and token:
            subject = "Payment reminder " + token
        if folder.startswith("Lists/"):
            extra += ["List-Id: Debian Development <debian-devel.lists.debian.org>",
                      "List-Post: <mailto:debian-devel@lists.debian.org>",
                      "Precedence: list"]
        if kind is None:
            x = r.random()
            kind = ("plain" if x < 0.35 else "utf8" if x < 0.45 else "qp" if x < 0.60 else
                    "alternative" if x < 0.80 else "attachment")
        if big:
            kind = "attachment"
        if token_where == "body8bit":
            kind = "utf8"
        elif token_where in ("body", "odd") and token:
            kind = "plain"
        elif token_where == "multipart":
            kind = "attachment"
        text_extra = token if token and token_where != "subject" else None
        if reply:
            text_extra = (text_extra + "\r\n\r\n" if text_extra else "") + \
                "> " + self.wrap(self.sentence(), 70).replace("\r\n", "\r\n> ")
        to = "Alice Example <alice@example.org>"
        shdr = _subject_header(subject, r)
        tokens = [token] if token else []

        if kind == "plain":
            body = self.body_text(text_extra).encode("ascii", "replace")
            hdr = self.headers(frm, to, shdr, date, msgid, extra + [
                "Content-Type: text/plain; charset=us-ascii", "Content-Transfer-Encoding: 7bit"])
        elif kind == "utf8":
            t = self.body_text(text_extra)
            t = t.replace("Hi,", r.choice(["Grüß dich,", "Привет,", "こんにちは、", "Salut ça va,"]), 1)
            body = t.encode("utf-8")
            hdr = self.headers(frm, to, shdr, date, msgid, extra + [
                "Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit"])
        elif kind == "qp":
            t = self.body_text(text_extra) + "Grüße — “typographic quotes” and a long line " + \
                "x" * 90 + " = sign\r\n"
            body = _qp(t)
            hdr = self.headers(frm, to, shdr, date, msgid, extra + [
                "Content-Type: text/plain; charset=utf-8",
                "Content-Transfer-Encoding: quoted-printable"])
        elif kind == "alternative":
            b = "=_alt_%08x" % r.getrandbits(32)
            t = self.body_text(text_extra)
            html = ("<html><head><meta charset=\"utf-8\"></head><body>" +
                    "".join("<p>%s</p>" % p for p in t.split("\r\n\r\n")) +
                    "<p>Grüße</p></body></html>")
            body = ("--%s\r\nContent-Type: text/plain; charset=utf-8\r\n"
                    "Content-Transfer-Encoding: quoted-printable\r\n\r\n" % b).encode() + _qp(t) + \
                   ("--%s\r\nContent-Type: text/html; charset=utf-8\r\n"
                    "Content-Transfer-Encoding: quoted-printable\r\n\r\n" % b).encode() + \
                   _qp(html) + ("--%s--\r\n" % b).encode()
            hdr = self.headers(frm, to, shdr, date, msgid, extra + [
                'Content-Type: multipart/alternative; boundary="%s"' % b])
        elif kind == "attachment":
            b = "=_mix_%08x" % r.getrandbits(32)
            t = self.body_text(text_extra)
            size = r.randint(1_050_000, 1_600_000) if big else r.randint(2_000, 60_000)
            ext, ctype = r.choice([("pdf", "application/pdf"), ("png", "image/png"),
                                   ("zip", "application/zip"), ("bin", "application/octet-stream")])
            data = r.randbytes(size)
            fname = r.choice(["report", "scan", "Rechnung", "photo", "data"]) + "." + ext
            body = ("This is a multi-part message in MIME format.\r\n\r\n"
                    "--%s\r\nContent-Type: text/plain; charset=us-ascii\r\n"
                    "Content-Transfer-Encoding: 7bit\r\n\r\n" % b).encode() + \
                t.encode("ascii", "replace") + \
                ("\r\n--%s\r\nContent-Type: %s; name=\"%s\"\r\n"
                 "Content-Disposition: attachment; filename=\"%s\"\r\n"
                 "Content-Transfer-Encoding: base64\r\n\r\n" % (b, ctype, fname, fname)).encode() + \
                _b64_lines(data) + ("--%s--\r\n" % b).encode()
            hdr = self.headers(frm, to, shdr, date, msgid, extra + [
                'Content-Type: multipart/mixed; boundary="%s"' % b])
            if big:
                kind = "big-attachment"
        else:
            raise ValueError(kind)

        idate = (date + _dt.timedelta(seconds=r.randint(3, 900))).astimezone(UTC)
        if not reply and token is None:
            parents.append((subject, msgid))
        return Message(folder, hdr + b"\r\n" + body, idate, self.flags(folder), subject=subject,
                       sender=name if name is not None else addr, date=date, message_id=msgid,
                       tokens=tokens, kind=kind)

    def hidden_token_message(self, folder, token):
        """A message whose token exists only inside a base64-encoded text attachment."""
        m = self.message(folder, kind="plain")
        b = "=_hid_%08x" % self.rng.getrandbits(32)
        head, _, body = m.raw.partition(b"\r\n\r\n")
        head = head.replace(b"Content-Type: text/plain; charset=us-ascii\r\n"
                            b"Content-Transfer-Encoding: 7bit",
                            b'Content-Type: multipart/mixed; boundary="' + b.encode() + b'"')
        secret = ("notes\r\n%s\r\nend\r\n" % token).encode()
        m.raw = (head + b"\r\n\r\n--" + b.encode() +
                 b"\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n" + body +
                 b"--" + b.encode() + b"\r\nContent-Type: text/plain; name=\"notes.txt\"\r\n"
                 b"Content-Disposition: attachment; filename=\"notes.txt\"\r\n"
                 b"Content-Transfer-Encoding: base64\r\n\r\n" + _b64_lines(secret) +
                 b"--" + b.encode() + b"--\r\n")
        m.kind = "hidden-token"
        return m


# --------------------------------------------------------------------------
# fixed messages

def _known_messages():
    hello = Message(
        "INBOX",
        b"From: Smoke <smoke@example.org>\r\nTo: alice@example.org\r\nSubject: Hello\r\n"
        b"Date: Mon, 02 Jun 2025 10:00:00 +0000\r\nMessage-ID: <hello.1@corpus.example>\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nbody of Hello\r\n",
        _dt.datetime(2025, 6, 2, 10, 0, 5, tzinfo=UTC), ("\\Seen",), subject="Hello",
        sender="Smoke", date=_dt.datetime(2025, 6, 2, 10, 0, tzinfo=UTC),
        message_id="<hello.1@corpus.example>", kind="known",
        expected_name="2025-06-02 10.00 Smoke - Hello.eml")
    umlaut = Message(
        "INBOX",
        b"From: =?UTF-8?Q?J=C3=BCrgen_M=C3=BCller?= <juergen@example.de>\r\n"
        b"To: alice@example.org\r\nSubject: =?ISO-8859-1?Q?Gr=FC=DFe_aus_K=F6ln?=\r\n"
        b"Date: Tue, 03 Jun 2025 14:30:00 +0200\r\nMessage-ID: <umlaut.1@corpus.example>\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\nViele Gr\xfc\xdfe aus K\xf6ln!\r\n",
        _dt.datetime(2025, 6, 3, 12, 31, 0, tzinfo=UTC), (), subject="Grüße aus Köln",
        sender="Jürgen Müller",
        date=_dt.datetime(2025, 6, 3, 14, 30, tzinfo=_dt.timezone(_dt.timedelta(hours=2))),
        message_id="<umlaut.1@corpus.example>", kind="known",
        expected_name="2025-06-03 12.30 Jürgen Müller - Grüße aus Köln.eml")
    return {"hello": hello, "umlaut": umlaut}


def _odd_messages(gen):
    """The hostile-names folder.  Each entry: (kind, subject header bytes or None,
    from header bytes or None, date header str or None)."""
    long_words = " ".join(gen.sentence(10) for _ in range(40))
    long_words = (long_words * 3)[:2000]
    d = "Wed, 04 Jun 2025 08:15:00 +0000"
    specs = [
        ("slashes", b"Re: a/b/c // path/to/file/", None, d),
        ("dotdot", b"..", None, d),
        ("traversal", b"../../etc/passwd", None, d),
        ("dot", b".", None, d),
        ("leading-dot", b".hidden file", None, d),
        ("control", b"ctl\x01\x07\x1b[31mred\x7f tab\there\x08", None, d),
        ("invalid-utf8", b"caf\xe9 na\xefve \xff\xfe\xc3( invalid \xed\xa0\x80 surrogate", None, d),
        ("long-folded", _fold(long_words).encode(), None, d),
        ("long-unfolded-utf8", ("Überlänge " * 200).encode("utf-8"), None, d),
        ("long-ascii-word", b"x" * 2000, None, d),
        ("empty-subject", b"", None, d),
        ("no-subject", None, None, d),
        ("no-from-no-date", b".. /etc/shadow no-from-no-date", False, None),
        ("encoded-hostile", b"=?UTF-8?Q?evil=2F..=2F=00nul=0Anewline=0D=09?=", None, d),
        ("hostile-sender", b"from a hostile sender", b'"../../root/\\" x" <root@example.org>', d),
        ("whitespace", b"   \t  ", None, d),
        ("bad-charset", b"=?X-UNKNOWN?B?SGVsbG8=?= and =?UTF-8?B?###?= broken", None, d),
        ("bad-date", b"bad date header", None, "not a date at all"),
        ("epoch-date", b"the epoch", None, "Thu, 01 Jan 1970 00:00:00 +0000"),
        ("future-date", b"far future", None, "Fri, 31 Dec 2099 23:59:59 -1200"),
        ("bidi-emoji", "\U0001F389 \u202eexe.txt \u200b zero width".encode("utf-8"), None, d),
        ("windows-chars", b'a\\b*c?d<e>f|g:h"i', None, d),
        ("eml-suffix", b"report.eml", None, d),
        ("exact-255", b"y" * 255, None, d),
        ("token", b"token in a hostile folder / ..", None, d),
    ]
    msgs = []
    for i, (kind, subj, frm, date) in enumerate(specs):
        h = []
        if frm is None:
            h.append(b"From: Odd Sender <odd@example.org>")
        elif frm is not False:
            h.append(b"From: " + frm)
        h.append(b"To: alice@example.org")
        if subj is not None:
            h.append(b"Subject: " + subj if subj else b"Subject:")
        if date is not None:
            h.append(b"Date: " + date.encode())
        h.append(b"Message-ID: <odd.%d@corpus.example>" % i)
        h.append(b"MIME-Version: 1.0")
        h.append(b"Content-Type: text/plain; charset=utf-8")
        body = ("odd message %d (%s)\r\n" % (i, kind)).encode()
        tokens = ()
        if kind == "token":
            body += b"HOSTILE-ODD-6060\r\n"
            tokens = ("HOSTILE-ODD-6060",)
        raw = b"\r\n".join(h) + b"\r\n\r\n" + body
        idate = _dt.datetime(2025, 6, 4, 8, 15, tzinfo=UTC) + _dt.timedelta(minutes=i)
        msgs.append(Message(ODD_FOLDER, raw, idate, ("\\Seen",) if i % 3 == 0 else (),
                            subject=None, sender=None, date=None,
                            message_id="<odd.%d@corpus.example>" % i, tokens=tokens,
                            kind="odd-" + kind))
    # five messages with identical subject, sender and date (and bytes)
    dup = (b"From: Dup Sender <dup@example.org>\r\nTo: alice@example.org\r\nSubject: Same\r\n"
           b"Date: Thu, 05 Jun 2025 09:00:00 +0000\r\nMessage-ID: <dup@corpus.example>\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nsame same same\r\n")
    for k in range(5):
        msgs.append(Message(ODD_FOLDER, dup, _dt.datetime(2025, 6, 5, 9, 0, 10, tzinfo=UTC), (),
                            subject="Same", sender="Dup Sender",
                            date=_dt.datetime(2025, 6, 5, 9, 0, tzinfo=UTC),
                            message_id="<dup@corpus.example>", kind="odd-duplicate"))
    return msgs


# --------------------------------------------------------------------------
# public entry points

def corpus(n=300, seed=1, big=None, odd=True):
    """About N ordinary messages spread over FOLDERS, plus the known messages,
    the planted tokens, the hidden token and (odd=True) the hostile "Odd" folder.
    big: how many 1 MB+ attachments (default 3 when n >= 200, else 1; 0 allowed)."""
    gen = _Gen(seed)
    c = Corpus()
    if not odd:
        c.folders.remove(ODD_FOLDER)
    if big is None:
        big = 3 if n >= 200 else 1
    known = _known_messages()
    for k, m in known.items():
        c.known[k] = c.add(m)

    # which folder each ordinary message goes to, in order
    folders = list(_WEIGHTS)
    plan = gen.rng.choices(folders, weights=[_WEIGHTS[f] for f in folders], k=max(n, 0))
    positions = list(range(len(plan)))
    gen.rng.shuffle(positions)
    big_slots = set(positions[:big]) if plan else set()

    made_tokens = set()
    for i, folder in enumerate(plan):
        m = gen.message(folder, big=i in big_slots)
        c.add(m)
        # plant the tokens early in their folders so that small corpora have them too
        for token, where_folders, where in _TOKENS:
            if where == "odd" or folder not in where_folders or (token, folder) in made_tokens:
                continue
            made_tokens.add((token, folder))
            c.add(gen.message(folder, token=token, token_where=where))
        if folder == "Archive/2025" and "hidden" not in made_tokens:
            made_tokens.add("hidden")
            c.add(gen.hidden_token_message(folder, _HIDDEN_TOKENS[0]))
    # folders the plan never reached still get their tokens
    for token, where_folders, where in _TOKENS:
        if where == "odd":
            continue
        for f in where_folders:
            if (token, f) not in made_tokens:
                made_tokens.add((token, f))
                c.add(gen.message(f, token=token, token_where=where))
    if "hidden" not in made_tokens:
        c.add(gen.hidden_token_message("Archive/2025", _HIDDEN_TOKENS[0]))
    if odd:
        for m in _odd_messages(gen):
            c.add(m)
    return c


def demo_corpus():
    """A few hundred messages for the README demo (one big attachment)."""
    return corpus(320, seed=2025, big=1)


if __name__ == "__main__":
    import sys
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    c = corpus(n)
    print("%d messages, %d bytes" % (len(c), c.total_bytes()))
    for f, ms in c.by_folder().items():
        print("  %-22s %4d" % (f, len(ms)))
    for t, where in sorted(c.manifest.items()):
        print("  token %-22s %s" % (t, where))
