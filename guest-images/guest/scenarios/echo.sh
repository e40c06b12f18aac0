#!/bin/sh
# Reads one line from the console and prints it back in a marker line.
echo "@@fsr echo-ready"
IFS= read -r line || exit 1
printf "@@fsr echo got=%s\n" "$line"
