#!/bin/sh
# Run one integration test file in a private network namespace (its own loopback,
# so the fixed Dovecot ports never collide with anything else on the machine).
# usage: run-test.sh TEST_FILE [pytest args...]
# Exit 77 (meson: skipped) when the machine cannot run it.
set -u

if [ $# -lt 1 ]; then
    echo "usage: $0 TEST_FILE [pytest args...]" >&2
    exit 2
fi

skip() {
    echo "SKIP: $*"
    exit 77
}

[ "$(id -u)" -eq 0 ] || skip "not root"
[ -e /dev/fuse ] || skip "/dev/fuse is missing"
command -v unshare >/dev/null 2>&1 || skip "unshare is missing"
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || skip "ip (iproute2) is missing"
command -v dovecot >/dev/null 2>&1 || [ -x /usr/sbin/dovecot ] || skip "dovecot is missing"
command -v fusermount3 >/dev/null 2>&1 || skip "fusermount3 is missing"
/usr/bin/python3 -c 'import pytest' 2>/dev/null || skip "python3-pytest is missing"
unshare --net true 2>/dev/null || skip "unshare --net is not permitted here"

PATH="$PATH:/usr/sbin:/sbin"
export PATH
export MAILFS_SKIP_EXIT=77
export PYTHONDONTWRITEBYTECODE=1
if [ -n "${MAILFS_BIN:-}" ]; then
    [ -x "$MAILFS_BIN" ] || { echo "MAILFS_BIN=$MAILFS_BIN is not executable" >&2; exit 1; }
fi

# A fresh directory per run: pytest's base directory (mount points live there; pytest's
# own clean-up of old numbered directories must never recurse into a leftover mount)
# and the Dovecot directories, so that whatever a killed run leaves is found here.
BASE=$(mktemp -d /tmp/mailfs-itest-XXXXXX)
chmod 0755 "$BASE"
mkdir -m 0755 "$BASE/servers"
export MAILFS_TEST_TMPDIR="$BASE/servers"

cleanup() {
    awk -v p="$BASE/" 'index($2, p) == 1 { print $2 }' /proc/self/mounts | while read -r m; do
        echo "run-test.sh: unmounting leftover $m" >&2
        fusermount3 -uz "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
    done
    for pidfile in "$BASE"/servers/*/run/master.pid; do
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        if grep -q dovecot "/proc/$pid/cmdline" 2>/dev/null; then
            echo "run-test.sh: stopping leftover dovecot $pid" >&2
            kill -KILL "$pid" 2>/dev/null
        fi
    done
    if [ -z "${MAILFS_KEEP_TMP:-}" ]; then
        rm -rf --one-file-system "$BASE"
    else
        echo "run-test.sh: kept $BASE" >&2
    fi
}
trap 'cleanup; exit 143' TERM INT HUP

# `unshare --net` only: `ip netns exec` would also make a new mount namespace and
# hide the FUSE mount from the rest of the test.
unshare --net sh -c 'ip link set lo up && exec /usr/bin/python3 -m pytest -q -ra -p no:cacheprovider "$@"' \
    run-test --basetemp="$BASE/pytest" "$@"
rc=$?
cleanup
exit $rc
