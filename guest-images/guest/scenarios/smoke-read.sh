#!/bin/sh
# Smoke test 2, guest side (tests/smoke/persistence.rs): in a later boot on
# the share smoke-write filled, reads every file back and compares it with
# the checksums smoke-write recorded, and big.bin with its pattern.
# Argument: the share's mount point.
# shellcheck source=guest-images/guest/lib/scenario.sh
. /usr/lib/fsr/scenario.sh

share_dir "${1:-}"
existing_work smoke
[ -f ../smoke.sha256 ] || fail "no $dir/smoke.sha256: run smoke-write on this share first"
files=$(find . -type f | wc -l)
listed=$(wc -l <../smoke.sha256)
[ "$files" = "$((listed + 1))" ] || fail "$files files in $work, but smoke-write recorded $listed and big.bin"
sha256sum -c -s ../smoke.sha256 || fail "a file does not match its checksum: $(sha256sum -c ../smoke.sha256 2>&1 | grep -v ': OK$' | head -5)"
fsr-pattern check big.bin 67108864 64 || fail "big.bin no longer holds its pattern"
[ -d tree/empty-dir ] || fail "tree/empty-dir is missing"
say "all $files files read back with the checksums of the first boot; all steps passed"
