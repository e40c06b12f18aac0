#!/bin/sh
# Benchmarks of the virtio-fs request path and of the VMM (BENCHMARKS.md says what and how).
# Builds `bench`, `fsredirect` and `hypervisor` in release mode, runs them, and rewrites
# BENCHMARKS.md and docs/benchmarks.svg. Run as root for the fio part (/dev/fuse); the guest
# part needs qemu-system-x86. Options go to `bench` (`./bench.sh --help`); `--boot` adds the
# boot time against the peers, the floor VMM and QEMU microvm (minutes of the emulated VT-x
# test host on hosts without hardware virtualization); `--boot-only` runs only that.
# The vhost-user part compares our back-end with virtiofsd, built from crates.io into
# build/virtiofsd by bench/build-virtiofsd.sh on first use (skip it with --no-virtiofsd).
# As root it also measures the servers run as `nobody` (skip them with --no-unprivileged).
set -eu
cd "$(dirname "$0")"
target="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --quiet -p bench -p fsredirect -p hypervisor
case " $* " in
*" --boot "* | *" --boot-only "*)
    # The boot time needs the default guest image (built once, then reused).
    guest-images/build-guest.sh
    ;;
esac
virtiofsd="$PWD/build/virtiofsd/bin/virtiofsd"
case " $* " in
*" --no-virtiofsd "* | *" --boot-only "*) ;;
*)
    # A failed build is not fatal: the report says why virtiofsd is missing.
    [ -x "$virtiofsd" ] || bench/build-virtiofsd.sh || true
    ;;
esac
exec "$target/release/bench" --fsredirect "$target/release/fsredirect" \
    --hypervisor "$target/release/hypervisor" --virtiofsd "$virtiofsd" \
    --command "./bench.sh${*:+ $*}" "$@"
