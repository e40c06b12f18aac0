# Shared by the guest scenarios (installed as /usr/lib/fsr/scenario.sh):
#   . /usr/lib/fsr/scenario.sh
# sets SCENARIO (the script's name) and gives say, fail, share_dir, work_dir
# and drop_caches. POSIX sh (busybox ash); no bashisms.

SCENARIO=$(basename "$0" .sh)

# say TEXT: one console line, prefixed with the scenario's name.
say() { echo "$SCENARIO: $*"; }

# fail TEXT: says why and ends the scenario with exit code 1.
fail() {
	say "FAILED: $*"
	exit 1
}

# share_dir [DIR]: sets $dir to DIR, or to the first virtiofs mount when DIR
# is empty, and checks that it is a virtiofs mount.
share_dir() {
	dir=${1:-}
	if [ -z "$dir" ]; then
		dir=$(awk '$3 == "virtiofs" { print $2; exit }' /proc/mounts)
	fi
	[ -n "$dir" ] || fail "no virtiofs mount; pass the mount point in fsr.arg="
	grep -q " $dir virtiofs " /proc/mounts || fail "$dir is not a virtiofs mount"
}

# fresh_work NAME: creates $dir/NAME, which must not exist yet, and enters it
# (sets $work).
fresh_work() {
	work=$dir/$1
	[ -e "$work" ] && fail "$work exists already; the scenario needs a fresh share"
	mkdir "$work" || fail "mkdir $work"
	cd "$work" || fail "cd $work"
	say "working in $work"
}

# existing_work NAME: enters $dir/NAME, left by an earlier scenario (sets $work).
existing_work() {
	work=$dir/$1
	cd "$work" || fail "no $work: run the scenario that makes it first"
	say "working in $work"
}

# drop_caches: forgets the guest's cached pages, dentries and inodes, so the
# next reads and lookups go to the device.
drop_caches() {
	sync || fail "sync"
	echo 3 >/proc/sys/vm/drop_caches || fail "drop the guest's caches"
}

# expect_content FILE TEXT: FILE holds exactly TEXT plus a newline.
expect_content() {
	[ -f "$1" ] || fail "$1 is missing"
	[ "$(cat "$1")" = "$2" ] || fail "$1 reads back as '$(cat "$1")', not '$2'"
	[ "$(stat -c %s "$1")" = "$((${#2} + 1))" ] || fail "$1 is $(stat -c %s "$1") bytes, not $((${#2} + 1))"
}
