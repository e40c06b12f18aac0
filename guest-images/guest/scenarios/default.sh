#!/bin/sh
# The default VM's non-interactive scenario (./run.sh on a host without
# hardware virtualization): on the default share, appends a line to
# hello.txt, shows what the share holds (earlier boots' lines too) and ends
# with exit code 0. Argument: the share's mount point (default: the first
# virtiofs mount).
# shellcheck source=guest-images/guest/lib/scenario.sh
. /usr/lib/fsr/scenario.sh

share_dir "${1:-}"
boot=1
[ -f "$dir/hello.txt" ] && boot=$(($(wc -l <"$dir/hello.txt") + 1))
echo "hello from the guest, boot $boot" >>"$dir/hello.txt" || fail "write $dir/hello.txt"
sync || fail "sync"
say "appended a line to $dir/hello.txt, which now reads:"
sed 's/^/    /' "$dir/hello.txt"
say "the share $dir holds:"
# shellcheck disable=SC2012 # for people to read
ls -l "$dir" | sed 's/^/    /'
say "on the host, each file is a sparse stub in the guest tree and real bytes in the store"
