#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what the tests need,
# builds the guest image (and, on hosts without hardware virtualization, the
# emulated VT-x test host) and virtiofsd (the peer back-end of the vhost-user
# tests), then runs every test of the workspace and prints
# one summary line: "N passed, N failed, N skipped".
#
# Usage: ./test.sh [--quick] [-- extra cargo test arguments]
#   --quick   skip the formatting, clippy and rustdoc checks
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"

QUICK=0
CARGO_ARGS=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) QUICK=1 ;;
        -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        --) shift; CARGO_ARGS=("$@"); break ;;
        *) echo "test.sh: unknown option '$1' (see ./test.sh --help)" >&2; exit 2 ;;
    esac
    shift
done

# Debian packages the tests use directly (the image builders install their own).
PACKAGES=(fio libacl1-dev qemu-system-x86 e2fsprogs strace)

STAGES=()
stage_start() { STAGE_NAME="$1"; STAGE_T0=$(date +%s); echo; echo "=== $1"; }
stage_end() {
    local secs=$(( $(date +%s) - STAGE_T0 ))
    STAGES+=("$(printf '%-38s %5ss' "$STAGE_NAME" "$secs")")
}
print_stages() {
    echo
    echo "=== stage times"
    for line in "${STAGES[@]}"; do echo "  $line"; done
}
trap print_stages EXIT

stage_start "install system packages"
missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
        apt-get update -qq
        apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null
    fi
else
    echo "all present"
fi
stage_end

stage_start "build the guest image"
guest-images/build-guest.sh
stage_end

stage_start "build virtiofsd (peer of the vhost-user tests)"
# Not fatal: without it the virtiofsd tests are skipped and say why.
[[ -x build/virtiofsd/bin/virtiofsd ]] || bench/build-virtiofsd.sh ||
    echo "virtiofsd could not be built; its tests will be skipped"
stage_end

if [[ $QUICK -eq 0 ]]; then
    stage_start "format and lint"
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets --release -- -D warnings
    RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace --quiet
    stage_end
fi

stage_start "build the workspace"
cargo build --workspace --all-targets --release
stage_end

stage_start "run the tests"
LOG="$ROOT/build/test-output.log"
mkdir -p "$ROOT/build"
# A test that hangs must fail this run with its name, not outlast the CI's time: the tests
# take under 10 minutes here, and 40 stops a hang well inside the CI's 90.
TEST_LIMIT=40m
set +e
timeout --kill-after=30s "$TEST_LIMIT" \
    cargo test --workspace --release --no-fail-fast "${CARGO_ARGS[@]}" 2>&1 | tee "$LOG"
status=${PIPESTATUS[0]}
set -e
if [[ $status -eq 124 || $status -eq 137 ]]; then
    echo "the tests ran past $TEST_LIMIT and were stopped: a test hangs; the lines above" \
        "that say \"has been running for over 60 seconds\" name it" | tee -a "$LOG"
fi
stage_end

# The engine identifies inodes differently without root (no file handles) and the host
# applies other rules to an unprivileged owner: its unit tests run again as "nobody".
stage_start "fsredirect unit tests as an unprivileged user"
if [[ $(id -u) -eq 0 ]] && command -v setpriv >/dev/null; then
    unit_bin=$(cargo test --release -p fsredirect --lib --no-run --message-format=json 2>/dev/null |
        sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
    unpriv_dir=$(mktemp -d)
    install -m 0755 "$unit_bin" "$unpriv_dir/fsredirect-unit-tests"
    chmod 0755 "$unpriv_dir"
    set +e
    (cd /tmp && setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all \
        env HOME=/tmp "$unpriv_dir/fsredirect-unit-tests") 2>&1 | tee -a "$LOG"
    unpriv_status=${PIPESTATUS[0]}
    set -e
    rm -rf "$unpriv_dir"
    [[ $unpriv_status -eq 0 ]] || status=$unpriv_status
else
    echo "skipped, because this needs root (to become nobody) and setpriv" | tee -a "$LOG"
fi
stage_end

# The committed fuzz inputs once more, built with debug assertions: only then does the
# standard library abort on a descriptor closed by code that did not own it (an I/O-safety
# violation: fuse-backend-rs closing a handle's descriptor), which a release build lets pass.
stage_start "fuzz inputs replayed with debug assertions"
set +e
cargo test -p fuzz-targets --test replay 2>&1 | tee -a "$LOG"
replay_status=${PIPESTATUS[0]}
set -e
[[ $replay_status -eq 0 ]] || status=$replay_status
stage_end

# One line over every test binary: libtest's "ignored" are our skipped tests.
summary=$(awk '/^test result:/ {
        for (i = 1; i <= NF; i++) {
            if ($(i+1) ~ /^passed/) p += $i
            if ($(i+1) ~ /^failed/) f += $i
            if ($(i+1) ~ /^ignored/) s += $i
        }
    } END { printf "%d passed, %d failed, %d skipped", p, f, s }' "$LOG")
echo
echo "=== skipped tests and why"
grep -E "^(SKIPPED|skipped)|skipped, because" "$LOG" | sort -u || echo "  (none)"
print_stages
trap - EXIT
echo
echo "$summary"
exit "$status"
