#!/bin/sh
# A fixed file-system workload on every mounted virtio-fs share in turn, for
# the benchmarks (bench/src/guest.rs): in /proc/mounts order in odd rounds, in
# reverse order in even ones, so that neither share always goes first.
# Argument: ROUNDS[:MIB[:FILES]] (default 3:16:200). In each round, on each
# share, in DIR/bench-fs-ROUND (which must not exist yet):
#   seq-write  dd of MIB 1 MiB blocks into one file, then fsync
#   seq-read   the same file read back with dd after dropping the guest's caches
#   create     FILES empty files made by one touch
#   stat       ls -l of those FILES after dropping the guest's caches
#   unlink     rm of those FILES
# then the directory is removed. Each step is framed by two lines,
#   @@fsr bench begin mount=DIR round=R op=OP units=N uptime=U
#   @@fsr bench end mount=DIR round=R op=OP units=N uptime=U
# (N bytes for seq-*, N files otherwise; U from /proc/uptime). The host times
# the step from the arrival of these lines on the console: this guest kernel
# has only a jiffies clock (10 ms steps, and slowed when an emulated CPU
# delivers its ticks late). Passes when every step succeeded.

say() { echo "bench-fs: $*"; }
fail() {
	say "FAILED: $*"
	exit 1
}

spec=${1:-3}
rounds=${spec%%:*}
rest=${spec#"$rounds"}
rest=${rest#:}
mib=${rest%%:*}
files=${rest#"$mib"}
files=${files#:}
mib=${mib:-16}
files=${files:-200}
for n in "$rounds" "$mib" "$files"; do
	case $n in
	'' | *[!0-9]* | 0) fail "fsr.arg must be ROUNDS[:MIB[:FILES]] of positive numbers, got '$spec'" ;;
	esac
done

mounts=$(awk '$3 == "virtiofs" { print $2 }' /proc/mounts)
[ -n "$mounts" ] || fail "no virtiofs mount; pass shares with fsr.share="

drop_caches() {
	sync || fail "sync"
	echo 3 >/proc/sys/vm/drop_caches || fail "drop the guest's caches"
}

# step MOUNT ROUND OP UNITS COMMAND...: runs COMMAND between its two lines.
step() {
	what="mount=$1 round=$2 op=$3 units=$4"
	shift 4
	read -r up _ </proc/uptime
	echo "@@fsr bench begin $what uptime=$up"
	"$@" || fail "$what: $*"
	read -r up _ </proc/uptime
	echo "@@fsr bench end $what uptime=$up"
}

names() { seq 1 "$files" | sed 's/^/f/'; }
make_files() { names | xargs touch; }
list_files() { ls -l >/dev/null; }
remove_files() { names | xargs rm; }
write_big() { dd if=/dev/zero of=big bs=1M count="$mib" conv=fsync 2>/dev/null; }
read_big() { dd if=big of=/dev/null bs=1M 2>/dev/null; }

bytes=$((mib * 1048576))
round=1
while [ "$round" -le "$rounds" ]; do
	order=$mounts
	if [ $((round % 2)) -eq 0 ]; then
		order=$(echo "$mounts" | sed '1!G;h;$!d')
	fi
	for m in $order; do
		work=$m/bench-fs-$round
		[ -e "$work" ] && fail "$work exists already; the scenario needs a fresh share"
		mkdir -p "$work/files" || fail "mkdir $work/files"
		cd "$work" || fail "cd $work"
		drop_caches
		step "$m" "$round" seq-write "$bytes" write_big
		drop_caches
		step "$m" "$round" seq-read "$bytes" read_big
		[ "$(stat -c %s big)" = "$bytes" ] || fail "$work/big is $(stat -c %s big) bytes, not $bytes"
		cd files || fail "cd $work/files"
		step "$m" "$round" create "$files" make_files
		drop_caches
		step "$m" "$round" stat "$files" list_files
		step "$m" "$round" unlink "$files" remove_files
		cd / || fail "cd /"
		rm -r "$work" || fail "rm -r $work"
	done
	round=$((round + 1))
done
sync || fail "sync"
say "all steps passed"
