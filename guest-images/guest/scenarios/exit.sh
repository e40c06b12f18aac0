#!/bin/sh
# Exits with the code given by fsr.arg (default 0).
code=${1:-0}
case $code in
'' | *[!0-9]*)
	echo "exit scenario: fsr.arg=$code is not a number from 0 to 255" >&2
	exit 2
	;;
esac
exit "$code"
