#!/bin/sh
# Builds virtiofsd, the vhost-user virtio-fs back-end that QEMU and Cloud Hypervisor users
# run, from crates.io into build/virtiofsd/bin/virtiofsd, for the side-by-side vhost-user
# benchmark (BENCHMARKS.md, "vhost-user back-ends").
#
# Usage: bench/build-virtiofsd.sh [VERSION]     (default: the version below)
#
# virtiofsd links libseccomp and libcap-ng: as root, this installs Debian's libseccomp-dev
# and libcap-ng-dev when they are missing; otherwise it says what to install and stops.
# On failure the last lines of cargo's output are kept in build/virtiofsd/build.log, which
# the benchmark quotes when it reports why virtiofsd is missing.
set -eu
cd "$(dirname "$0")/.."
version="${1:-1.14.0}"
root="$PWD/build/virtiofsd"
log="$root/build.log"
mkdir -p "$root"

fail() {
    echo "build-virtiofsd: $*" >&2
    echo "$*" >"$root/failed"
    exit 1
}

missing=""
for pkg in libseccomp-dev libcap-ng-dev; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $pkg"
    fi
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "build-virtiofsd: installing$missing" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing >&2 ||
            fail "apt-get install$missing failed"
    else
        fail "needs the Debian packages$missing (as root: apt-get install$missing)"
    fi
fi

echo "build-virtiofsd: cargo install virtiofsd $version into $root (a few minutes)" >&2
rm -f "$root/failed"
# Its own target directory under build/, so that the workspace's lock file and target are
# left alone; --locked builds the dependency versions virtiofsd was released with.
if ! CARGO_TARGET_DIR="$root/target" cargo install --locked --root "$root" \
    virtiofsd --version "$version" >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    fail "cargo install virtiofsd $version failed: $(grep -m1 '^error' "$log" || tail -n 1 "$log")"
fi
"$root/bin/virtiofsd" --version >&2
