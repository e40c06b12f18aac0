#!/bin/sh
# Passes when the number of online CPUs equals fsr.arg.
want=${1:-}
case $want in
'' | *[!0-9]*)
	echo "cpus scenario: needs fsr.arg=NUMBER_OF_CPUS, got '$want'" >&2
	exit 2
	;;
esac
# /sys/devices/system/cpu/online is a list of ranges, e.g. 0-3,6.
online=$(cat /sys/devices/system/cpu/online) || exit 1
count=0
old_ifs=$IFS
IFS=,
for range in $online; do
	first=${range%-*}
	last=${range#*-}
	count=$((count + last - first + 1))
done
IFS=$old_ifs
echo "@@fsr cpus online=$count ($online) expected=$want"
[ "$count" -eq "$want" ]
