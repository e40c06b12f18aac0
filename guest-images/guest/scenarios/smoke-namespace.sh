#!/bin/sh
# Smoke test 3, guest side (tests/smoke/namespace.rs): namespace operations
# in DIR/ns (which must not exist yet), each checked here; the host then
# checks that the store mirrors the result. Argument: the share's mount
# point. Leaves (the host's expectations):
#   moved.txt        "moved\n"             (rename of a file)
#   target.txt       "overwriter\n"        (rename over an existing file)
#   dir2/sub/f.txt   "inner\n"             (rename of a directory; no dir1)
#   link1, link2     "linked\nmore\n"      (hard links of one file)
#   shrunk.bin       1000 bytes of stream 3   (truncated from 300000)
#   grown.txt        "abc" and 99997 zero bytes (extended by truncate)
#   and none of: source.txt, overwriter.txt, dir1, gone.txt, link3, open.txt
# shellcheck source=guest-images/guest/lib/scenario.sh
. /usr/lib/fsr/scenario.sh

share_dir "${1:-}"
fresh_work ns

echo moved >source.txt || fail "write source.txt"
mv source.txt moved.txt || fail "rename source.txt"
[ -e source.txt ] && fail "source.txt still exists after the rename"
expect_content moved.txt moved
say "renamed a file"

echo overwriter >overwriter.txt || fail "write overwriter.txt"
echo overwritten >target.txt || fail "write target.txt"
mv overwriter.txt target.txt || fail "rename over target.txt"
[ -e overwriter.txt ] && fail "overwriter.txt still exists after the rename"
expect_content target.txt overwriter
say "renamed a file over another"

mkdir -p dir1/sub || fail "mkdir dir1/sub"
echo inner >dir1/sub/f.txt || fail "write dir1/sub/f.txt"
mv dir1 dir2 || fail "rename dir1"
[ -e dir1 ] && fail "dir1 still exists after the rename"
drop_caches
expect_content dir2/sub/f.txt inner
say "renamed a directory"

echo linked >link1 || fail "write link1"
ln link1 link2 || fail "hard link link1 to link2"
echo more >>link2 || fail "append through link2"
ln link1 link3 || fail "hard link link1 to link3"
rm link3 || fail "unlink link3"
drop_caches
expect_content link1 "linked
more"
[ "$(stat -c %h link1)" = 2 ] || fail "link1 has $(stat -c %h link1) links, not 2"
[ "$(stat -c %i link1)" = "$(stat -c %i link2)" ] || fail "link1 and link2 are different inodes"
say "hard-linked, appended through the link, unlinked a third name"

echo gone >gone.txt || fail "write gone.txt"
rm gone.txt || fail "unlink gone.txt"
[ -e gone.txt ] && fail "gone.txt still exists after rm"
say "unlinked a file"

fsr-pattern write shrunk.bin 300000 3 || fail "write shrunk.bin"
truncate -s 1000 shrunk.bin || fail "truncate shrunk.bin"
drop_caches
[ "$(stat -c %s shrunk.bin)" = 1000 ] || fail "shrunk.bin is $(stat -c %s shrunk.bin) bytes, not 1000"
fsr-pattern check shrunk.bin 1000 3 || fail "shrunk.bin lost its first 1000 bytes"
say "truncated a file"

printf abc >grown.txt || fail "write grown.txt"
truncate -s 100000 grown.txt || fail "extend grown.txt"
drop_caches
[ "$(stat -c %s grown.txt)" = 100000 ] || fail "grown.txt is $(stat -c %s grown.txt) bytes"
[ "$(head -c 3 grown.txt)" = abc ] || fail "grown.txt lost its first bytes"
[ "$(tail -c 99997 grown.txt | tr -d '\000' | wc -c)" = 0 ] || fail "grown.txt's extension is not zeros"
say "extended a file"

echo "still readable" >open.txt || fail "write open.txt"
exec 3<open.txt || fail "open open.txt"
rm open.txt || fail "unlink the open open.txt"
read -r line <&3 || fail "read the unlinked open.txt"
[ "$line" = "still readable" ] || fail "the unlinked open.txt reads '$line'"
exec 3<&-
say "an unlinked open file stayed readable until closed"

sync || fail "sync"
# shellcheck disable=SC2012 # plain names, made above
listing=$(ls | tr '\n' ' ')
[ "$listing" = "dir2 grown.txt link1 link2 moved.txt shrunk.bin target.txt " ] ||
	fail "final ls shows '$listing'"
say "final ls: $listing; all steps passed"
