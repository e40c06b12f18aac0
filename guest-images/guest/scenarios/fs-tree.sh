#!/bin/sh
# Many files and the namespace operations that move them, on a mounted
# virtio-fs share; each step checked in the guest and printed. Argument: the
# share's mount point (default: the first virtiofs mount). Works in
# DIR/fs-tree, which must not exist yet, and leaves there:
#   renamed0/f0..f29   "file 0/N\n"    (directory d0, renamed)
#   d2/                empty           (its files moved to d3)
#   d3/f0..f29         "file 3/N\n", and d3/g0..g29 "file 2/N\n" (moved in)
#   d4/f0..f29         "file 4/N\n", and d4/hard0, a hard link to d4/f0
#   d5/f0              "fil" (truncated to 3 bytes), d5/f1..f29 "file 5/N\n"
#   d6..d9/f0..f29     "file D/N\n"
# and no d1 (removed with everything in it).

say() { echo "fs-tree: $*"; }
fail() {
	say "FAILED: $*"
	exit 1
}

dir=${1:-}
if [ -z "$dir" ]; then
	dir=$(awk '$3 == "virtiofs" { print $2; exit }' /proc/mounts)
fi
[ -n "$dir" ] || fail "no virtiofs mount; pass the mount point in fsr.arg="
work=$dir/fs-tree
[ -e "$work" ] && fail "$work exists already; the scenario needs a fresh share"
mkdir "$work" || fail "mkdir $work"
cd "$work" || fail "cd $work"

drop_caches() {
	sync || fail "sync"
	echo 3 >/proc/sys/vm/drop_caches || fail "drop the guest's caches"
}

# check FILE TEXT: FILE holds TEXT and a newline.
check() {
	[ "$(cat "$1")" = "$2" ] || fail "$1 reads back as '$(cat "$1")', not '$2'"
}

for d in 0 1 2 3 4 5 6 7 8 9; do
	mkdir "d$d" || fail "mkdir d$d"
	for f in $(seq 0 29); do
		echo "file $d/$f" >"d$d/f$f" || fail "write d$d/f$f"
	done
done
drop_caches
for d in 0 1 2 3 4 5 6 7 8 9; do
	for f in $(seq 0 29); do
		check "d$d/f$f" "file $d/$f"
	done
done
say "wrote and read back 300 files in 10 directories"

mv d0 renamed0 || fail "rename directory d0"
[ -e d0 ] && fail "d0 still exists after the rename"
drop_caches
check renamed0/f7 "file 0/7"
say "renamed directory d0 to renamed0"

rm -r d1 || fail "rm -r d1"
[ -e d1 ] && fail "d1 still exists after rm -r"
say "removed d1 and its 30 files"

for f in $(seq 0 29); do
	mv "d2/f$f" "d3/g$f" || fail "move d2/f$f to d3/g$f"
done
drop_caches
[ -z "$(ls d2)" ] || fail "d2 is not empty after moving its files out"
check d3/g11 "file 2/11"
check d3/f11 "file 3/11"
say "moved d2's 30 files into d3"

ln d4/f0 d4/hard0 || fail "hard link d4/f0 to d4/hard0"
drop_caches
check d4/hard0 "file 4/0"
[ "$(stat -c %h d4/f0)" = 2 ] || fail "d4/f0 has $(stat -c %h d4/f0) links, not 2"
say "linked d4/f0 as d4/hard0"

truncate -s 3 d5/f0 || fail "truncate d5/f0"
drop_caches
[ "$(cat d5/f0)" = fil ] || fail "d5/f0 reads back as '$(cat d5/f0)' after truncating to 3 bytes"
say "truncated d5/f0 to 3 bytes"

count=$(find . -type f | wc -l)
[ "$count" = 271 ] || fail "find counts $count files, not 271"
sync || fail "sync"
say "all steps passed ($count names of regular files)"
