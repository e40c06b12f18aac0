#!/usr/bin/env bash
# Boots the default VM. Builds what is missing first (the guest image, the VMM).
#
# On a hardware-virtualization host (VT-x / AMD-V) this is `cargo run --release`:
# the guest's shell is attached to this terminal (Ctrl-A then x stops the VM).
# On a host whose /dev/kvm is software-virtualized (kvm_pvm) ordinary guests
# cannot run natively, so the default VM boots inside the emulated VT-x test
# host instead (bochs + a real kvm_intel), non-interactively, and its console
# is streamed here. That takes a minute or two: the whole PC is emulated.
#
# Usage: ./run.sh [hypervisor options...]   (see: ./run.sh --help)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
    echo
    exec cargo run --quiet --release -- --help
fi

hardware_virt() {
    [[ -e /dev/kvm && ! -e /sys/module/kvm_pvm ]] && grep -qwE 'vmx|svm' /proc/cpuinfo
}

echo "run.sh: building the guest image (cached after the first build)" >&2
guest-images/build-guest.sh

if hardware_virt; then
    echo "run.sh: hardware virtualization found; booting the default VM" >&2
    exec cargo run --release -- "$@"
fi

echo "run.sh: this host's /dev/kvm is software-virtualized (or absent), so ordinary guests" >&2
echo "run.sh: cannot run natively here. Booting the default VM inside the emulated VT-x" >&2
echo "run.sh: test host instead (bochs emulates a VT-x CPU; a few minutes, mostly building" >&2
echo "run.sh: the test-host image the first time and emulating the test host's boot)." >&2
if [[ $# -gt 0 ]]; then
    echo "run.sh: note: hypervisor options ($*) are ignored in the test host; see" >&2
    echo "run.sh: 'cargo run --release -p e2e-tests --bin testhost -- --help' for what it can run." >&2
fi
status=0
cargo run --release -p e2e-tests --bin testhost -- default-vm || status=$?
echo "run.sh: the default VM's share (/mnt/data in the guest) lives on the test host's share" >&2
echo "run.sh: disk, vm-data/testhost/share.ext4, so the next ./run.sh sees the same files." >&2
echo "run.sh: To look at its stubs and stored objects from this host (root):" >&2
echo "run.sh:   cargo run --release -p e2e-tests --bin testhost -- --mount-share /mnt/fsr-share" >&2
exit "$status"
