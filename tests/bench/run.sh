#!/bin/sh
# Run the mailfs benchmark on a private loopback (its own network namespace, so the
# fixed Dovecot ports never collide with anything else on the machine).  Needs root.
#   tests/bench/run.sh [--messages N] [--repeat R] [--json FILE] [...]   (see bench.py --help)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
exec unshare --net sh -c 'ip link set lo up && exec /usr/bin/python3 "$0" "$@"' "$here/bench.py" "$@"
