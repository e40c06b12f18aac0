#!/bin/sh
# Run after fs-basic, in a later boot on the same share: checks that what
# fs-basic left in DIR/fs-basic reads back unchanged, then appends
# "second boot\n" to renamed.txt so the host can see this boot's write too.
# Argument: the share's mount point (default: the first virtiofs mount).

say() { echo "fs-readback: $*"; }
fail() {
	say "FAILED: $*"
	exit 1
}

dir=${1:-}
if [ -z "$dir" ]; then
	dir=$(awk '$3 == "virtiofs" { print $2; exit }' /proc/mounts)
fi
[ -n "$dir" ] || fail "no virtiofs mount; pass the mount point in fsr.arg="
work=$dir/fs-basic
cd "$work" || fail "no $work: run fs-basic on this share first"

# shellcheck disable=SC2012 # plain names, made by fs-basic
listing=$(ls | tr '\n' ' ')
[ "$listing" = "big.txt renamed.txt sub " ] || fail "ls shows '$listing'"
[ "$(cat renamed.txt)" = "hello from the guest
appended" ] || fail "renamed.txt reads back as '$(cat renamed.txt)'"
[ "$(cat sub/nested.txt)" = nested ] || fail "sub/nested.txt reads back wrong"
size=$(stat -c %s big.txt)
[ "$size" = 1048576 ] || fail "big.txt is $size bytes, not 1048576"
sum=$(md5sum big.txt | cut -d ' ' -f 1)
want=$(yes fsredirect-vhost-user | head -c 1048576 | md5sum | cut -d ' ' -f 1)
[ "$sum" = "$want" ] || fail "big.txt reads back with md5 $sum, not $want"
say "fs-basic's files read back unchanged (big.txt md5 $sum)"

echo "second boot" >>renamed.txt || fail "append to renamed.txt"
sync || fail "sync"
say "appended to renamed.txt ($(stat -c %s renamed.txt) bytes); all steps passed"
