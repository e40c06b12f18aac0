#!/bin/sh
# Smoke test 1, guest side (tests/smoke/boot_and_write.rs): writes, in
# DIR/smoke (which must not exist yet), files of every size class, then
# checks them back through the device and records their checksums for the
# next boot (smoke-read). Argument: the share's mount point. Leaves:
#   empty.txt             0 bytes
#   small.txt             "small file from the guest\n"
#   big.bin               64 MiB of fsr-pattern stream 64
#   many/f000..f999       1000 files, fNNN holds "file NNN\n"
#   tree/a/b/c/d/deep.txt "deep\n"; tree/a/one.txt "one\n";
#   tree/x/y/two.txt "two\n"; tree/empty-dir/ (an empty directory)
#   ../smoke.sha256       sha256sum lines of every file above but big.bin,
#                         made after a cache drop (so from the device's bytes)
# shellcheck source=guest-images/guest/lib/scenario.sh
. /usr/lib/fsr/scenario.sh

BIG_SIZE=67108864
BIG_SEED=64

share_dir "${1:-}"
fresh_work smoke

: >empty.txt || fail "create empty.txt"
printf 'small file from the guest\n' >small.txt || fail "write small.txt"

say "writing big.bin ($BIG_SIZE bytes)"
fsr-pattern write big.bin $BIG_SIZE $BIG_SEED || fail "write big.bin"

mkdir many || fail "mkdir many"
# Three nested loops instead of $(printf ...) per file: no fork per file.
for a in 0 1 2 3 4 5 6 7 8 9; do
	for b in 0 1 2 3 4 5 6 7 8 9; do
		for c in 0 1 2 3 4 5 6 7 8 9; do
			printf 'file %s\n' "$a$b$c" >"many/f$a$b$c" || fail "write many/f$a$b$c"
		done
	done
done
say "wrote 1000 files in many/"

mkdir -p tree/a/b/c/d tree/x/y tree/empty-dir || fail "mkdir the tree"
echo deep >tree/a/b/c/d/deep.txt || fail "write deep.txt"
echo one >tree/a/one.txt || fail "write one.txt"
echo two >tree/x/y/two.txt || fail "write two.txt"
say "wrote the nested tree"

drop_caches
[ "$(stat -c %s empty.txt)" = 0 ] || fail "empty.txt is not empty"
expect_content small.txt "small file from the guest"
fsr-pattern check big.bin $BIG_SIZE $BIG_SEED || fail "big.bin reads back wrong"
count=0
for a in 0 1 2 3 4 5 6 7 8 9; do
	for b in 0 1 2 3 4 5 6 7 8 9; do
		for c in 0 1 2 3 4 5 6 7 8 9; do
			read -r line <"many/f$a$b$c" || fail "read many/f$a$b$c"
			[ "$line" = "file $a$b$c" ] || fail "many/f$a$b$c reads back as '$line'"
			count=$((count + 1))
		done
	done
done
expect_content tree/a/b/c/d/deep.txt deep
expect_content tree/a/one.txt one
expect_content tree/x/y/two.txt two
[ -d tree/empty-dir ] || fail "tree/empty-dir is missing"
say "every file reads back as written ($count small files, big.bin by pattern)"

# big.bin is left out: fsr-pattern checks it byte for byte, and hashing 64 MiB
# again costs minutes under an emulated CPU.
find . -type f ! -name big.bin | sort | xargs sha256sum >../smoke.sha256 || fail "checksum the files"
sync || fail "sync"
say "recorded $(wc -l <../smoke.sha256) checksums in $dir/smoke.sha256; all steps passed"
