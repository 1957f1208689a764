"""Mount options that the other files do not reach: insecure (IMAP) and
cache_size.  Each test checks the mount against the server's own copy."""
import hashlib
import os
import subprocess

import pytest


def _msg(i, size):
    body = (("line %d of message %d, padding padding padding\r\n" % (0, i)) * (size // 48 + 1))
    return ("From: Opt <opt@example.org>\r\nSubject: option test %d\r\n"
            "Message-ID: <opt.%d@example.org>\r\n"
            "Date: Mon, 02 Jun 2025 10:%02d:00 +0000\r\n\r\n" % (i, i, i % 60)
            ).encode() + body.encode()[:size]


def _files(d):
    return sorted(os.path.join(d, n) for n in os.listdir(d) if n.endswith(".eml"))


def test_insecure_accepts_an_untrusted_certificate_and_warns(make_user, mount, mounter):
    u = make_user("insec")
    raw = _msg(1, 500)
    u.append_many("INBOX", [raw])
    # Without cafile the certificate is not trusted: refused...
    r = mounter.try_mount(u, cafile=False)
    assert r.rc != 0 and len(r.lines) == 1 and "cafile" in r.lines[0], r
    # ...with insecure it mounts, says so once, and serves the right bytes.
    m = mount(u, cafile=False, options=["insecure"], allow=[r"warning: insecure"])
    [f] = _files(os.path.join(m.path, "INBOX"))
    with open(f, "rb") as fh:
        assert fh.read() == raw
    warnings = [l for l in m.log().splitlines() if "insecure" in l]
    assert len(warnings) == 1, warnings


def test_cache_size_bounds_the_bodies_kept(make_user, mount):
    u = make_user("csize")
    msgs = [_msg(i, 100 * 1024) for i in range(30)]   # about 3 MB in all
    u.append_many("INBOX", msgs)
    m = mount(u, options=["cache_size=1M"])
    inbox = os.path.join(m.path, "INBOX")
    want = sorted(hashlib.sha256(x).hexdigest() for x in msgs)
    for _ in range(2):   # the second pass must refetch what was evicted
        got = []
        for f in _files(inbox):
            with open(f, "rb") as fh:
                got.append(hashlib.sha256(fh.read()).hexdigest())
        assert sorted(got) == want
        cached = int(m.status()["cache_bytes"])
        assert 0 < cached <= 1024 * 1024, cached
    bodies = os.path.join(m.cache_dir, "bodies")
    on_disk = sum(os.path.getsize(os.path.join(d, n))
                  for d, _, ns in os.walk(bodies) for n in ns)
    assert on_disk <= 1024 * 1024 + 64 * 1024, on_disk
