#!/bin/sh
# Basic file operations on a mounted virtio-fs share, each one checked from
# inside the guest and reported on the console; the host then checks what it
# left behind (tests/vhost_user_fs.rs). Argument: the share's mount point
# (default: the first virtiofs mount). Works in DIR/fs-basic, which must not
# exist yet, and leaves there:
#   renamed.txt      "hello from the guest\nappended\n" (written, renamed, appended)
#   big.txt          1 MiB of "fsredirect-vhost-user\n" repeated (cut at 1048576 bytes)
#   sub/nested.txt   "nested\n"
# and no a.txt or scratch.txt (renamed away, deleted).

say() { echo "fs-basic: $*"; }
fail() {
	say "FAILED: $*"
	exit 1
}

dir=${1:-}
if [ -z "$dir" ]; then
	dir=$(awk '$3 == "virtiofs" { print $2; exit }' /proc/mounts)
fi
[ -n "$dir" ] || fail "no virtiofs mount; pass the mount point in fsr.arg="
grep -q " $dir virtiofs " /proc/mounts || fail "$dir is not a virtiofs mount"
work=$dir/fs-basic
[ -e "$work" ] && fail "$work exists already; the scenario needs a fresh share"
mkdir "$work" || fail "mkdir $work"
cd "$work" || fail "cd $work"
say "working in $work"

# Forgets the guest's cached pages, dentries and inodes, so the next reads
# and lookups go to the device (and it gets FORGETs on the hiprio queue).
drop_caches() {
	sync || fail "sync"
	echo 3 >/proc/sys/vm/drop_caches || fail "drop the guest's caches"
}

# Write, then read back through the device.
printf 'hello from the guest\n' >a.txt || fail "write a.txt"
drop_caches
[ "$(cat a.txt)" = "hello from the guest" ] || fail "a.txt reads back as '$(cat a.txt)'"
say "wrote and read back a.txt ($(stat -c %s a.txt) bytes)"

yes fsredirect-vhost-user | head -c 1048576 >big.txt || fail "write big.txt"
drop_caches
size=$(stat -c %s big.txt)
[ "$size" = 1048576 ] || fail "big.txt is $size bytes, not 1048576"
sum=$(md5sum big.txt | cut -d ' ' -f 1)
want=$(yes fsredirect-vhost-user | head -c 1048576 | md5sum | cut -d ' ' -f 1)
[ "$sum" = "$want" ] || fail "big.txt reads back with md5 $sum, not $want"
say "wrote and read back big.txt ($size bytes, md5 $sum)"

mkdir sub || fail "mkdir sub"
echo nested >sub/nested.txt || fail "write sub/nested.txt"
[ "$(cat sub/nested.txt)" = nested ] || fail "sub/nested.txt reads back wrong"
say "wrote sub/nested.txt"

# List.
# shellcheck disable=SC2012 # plain names, made above
listing=$(ls | tr '\n' ' ')
[ "$listing" = "a.txt big.txt sub " ] || fail "ls shows '$listing'"
say "ls: $listing"

# Rename, then append to the renamed file.
mv a.txt renamed.txt || fail "rename a.txt"
[ -e a.txt ] && fail "a.txt still exists after the rename"
echo appended >>renamed.txt || fail "append to renamed.txt"
[ "$(cat renamed.txt)" = "hello from the guest
appended" ] || fail "renamed.txt reads back as '$(cat renamed.txt)'"
say "renamed a.txt to renamed.txt and appended ($(stat -c %s renamed.txt) bytes)"

# Delete.
echo scratch >scratch.txt || fail "write scratch.txt"
rm scratch.txt || fail "delete scratch.txt"
[ -e scratch.txt ] && fail "scratch.txt still exists after rm"
say "created and deleted scratch.txt"

drop_caches
# shellcheck disable=SC2012 # plain names, made above
listing=$(ls | tr '\n' ' ')
[ "$listing" = "big.txt renamed.txt sub " ] || fail "final ls shows '$listing'"
say "final ls: $listing"

sync || fail "sync"
say "all steps passed"
