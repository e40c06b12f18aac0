#!/bin/sh
# Benchmarks of the virtio-fs request path (BENCHMARKS.md says what and how).
# Builds `bench` and `fsredirect` in release mode, runs them, and rewrites BENCHMARKS.md and
# docs/benchmarks.svg. Run as root for the fio part (/dev/fuse); options go to `bench`
# (`./bench.sh --help`).
set -eu
cd "$(dirname "$0")"
target="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --quiet -p bench -p fsredirect
exec "$target/release/bench" --fsredirect "$target/release/fsredirect" \
    --command "./bench.sh${*:+ $*}" "$@"
