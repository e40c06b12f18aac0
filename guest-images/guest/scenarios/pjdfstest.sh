#!/bin/sh
# Runs the pjdfstest suite (crates.io pjdfstest 0.2.2) as root on a mounted
# virtio-fs share, so that the guest kernel's virtiofs client and the device
# behind it are what is tested. Argument: the share's mount point (default:
# the first virtiofs mount). Works in DIR/pjdfstest, which must not exist yet.
#
# The binary is not in the standard image: tests/pjdfstest_guest.rs builds an
# image with it (guest-images/build-guest.sh --extra, see
# guest-images/pjdfstest/README.md). Without it the scenario says so and
# exits 77.
#
# Prints pjdfstest's own output, then one line per failed test and the
# summary, both parsable:
#   @@fsr pjdfstest failed-test NAME: REASON
#   @@fsr pjdfstest summary passed=N failed=N skipped=N expected_failures=N total=N
# Exit code: 0 when no test failed, 1 when some did, 2 when the suite could
# not run or printed no summary, 77 when the binary is missing.

PJDFSTEST=/usr/bin/pjdfstest
CONFIG=/tmp/pjdfstest.toml
LOG=/tmp/pjdfstest.log

say() { echo "pjdfstest: $*"; }
fail() {
	say "FAILED: $*"
	exit 2
}

if [ ! -x "$PJDFSTEST" ]; then
	say "$PJDFSTEST is not in this guest image; build one with it:"
	say "  cargo test --release -p e2e-tests --test pjdfstest_guest"
	say "(see guest-images/pjdfstest/README.md)"
	echo "@@fsr pjdfstest missing-binary"
	exit 77
fi

dir=${1:-}
if [ -z "$dir" ]; then
	dir=$(awk '$3 == "virtiofs" { print $2; exit }' /proc/mounts)
fi
[ -n "$dir" ] || fail "no virtiofs mount; pass the mount point in fsr.arg="
grep -q " $dir virtiofs " /proc/mounts || fail "$dir is not a virtiofs mount"
work=$dir/pjdfstest
[ -e "$work" ] && fail "$work exists already; the scenario needs a fresh share"
mkdir "$work" || fail "mkdir $work"

# The same features and settings as the host run (tests/fs_mount.rs): the
# users and groups are in the image's /etc/passwd and /etc/group.
cat >"$CONFIG" <<'EOF' || fail "write $CONFIG"
[features]
posix_fallocate = {}
rename_ctime = {}
utimensat = {}
utime_now = {}

[settings]
naptime = 0.01

[dummy_auth]
entries = [
  ["nobody", "nogroup"],
  ["daemon", "daemon"],
]
EOF

say "running $($PJDFSTEST --version) in $work as $(id -un)"
# Plain text (no colour codes); output also kept for the summary below.
NO_COLOR=1 "$PJDFSTEST" -c "$CONFIG" -p "$work" 2>&1 | tee "$LOG"

# Each failed test: its name, then its panic message on the indented lines
# that follow (joined with " | "); pjdfstest counts an unexpected pass as a
# failure too.
awk '
	function flush() {
		if (name != "") print "@@fsr pjdfstest failed-test " name ": " reason
		name = ""; reason = ""
	}
	/^[^ \t]/ { flush() }
	/^[^ \t].* FAILED$/ { name = $1; next }
	/^[^ \t].* PASSED UNEXPECTEDLY$/ {
		print "@@fsr pjdfstest failed-test " $1 ": passed, but the configuration expects it to fail"
		next
	}
	/^[ \t]/ && name != "" {
		line = $0
		sub(/^[ \t]+/, "", line)
		reason = reason (reason == "" ? "" : " | ") line
	}
	END { flush() }
' "$LOG"

# "Summary: F failed, S skipped, P passed, E expected failures, T total"
summary=$(grep '^Summary: ' "$LOG" | tail -n 1)
[ -n "$summary" ] || fail "pjdfstest printed no summary line (see its output above)"
count() { printf '%s\n' "$summary" | sed -n "s/.* \([0-9][0-9]*\) $1.*/\1/p"; }
failed=$(count failed)
skipped=$(count skipped)
passed=$(count passed)
expected=$(count 'expected failures')
total=$(count total)
if [ -z "$failed" ] || [ -z "$skipped" ] || [ -z "$passed" ] || [ -z "$total" ]; then
	fail "cannot read the summary line '$summary'"
fi
echo "@@fsr pjdfstest summary passed=$passed failed=$failed skipped=$skipped expected_failures=${expected:-0} total=$total"

sync || fail "sync"
[ "$failed" = 0 ] || exit 1
say "no test failed"
