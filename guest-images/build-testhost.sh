#!/bin/bash
# Build the emulated VT-x test host (guest-images/testhost/README.md;
# docs/architecture.md#the-emulated-vt-x-test-host).
#
# Bochs emulates an Intel CPU with VT-x, EPT and unrestricted guest. Inside it, Debian's stock
# cloud kernel boots from a FAT disk (syslinux), loads kvm_intel from its initramfs, and runs our
# static `hypervisor` on a real /dev/kvm. This script builds everything bochs needs:
#
#   build/testhost/boot.img     FAT disk: syslinux, the test host's kernel and initramfs
#   build/testhost/bochsrc      bochs configuration (run-specific paths come from environment
#                               variables set by the runner, see tests/src/testhost.rs)
#   build/testhost/bochs.rc     debugger commands: Debian's bochs stops at the first instruction
#   build/testhost/stamp        hash of every input; a rebuild happens only when it changes
#   vm-data/testhost/share.ext4 ext4 disk for shares, created once and kept across runs
#
# The test host's initramfs carries busybox, the kernel modules for bochs's IDE disks and KVM,
# our static binaries (`hypervisor`, `testhost-agent`, `fsredirect` when built) and the guest
# image (build/guest/vmlinux, build/guest/initramfs.cpio.gz).
#
# Usage: guest-images/build-testhost.sh [--no-cargo | --binaries-only] [--bench] [--force]
#   --no-cargo   do not run cargo; use the binaries named by HYPERVISOR_BIN, AGENT_BIN,
#                FSREDIRECT_BIN and FLOOR_BIN (or found in
#                $CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release)
#   --binaries-only  only build the static binaries (into that directory) and stop
#   --bench      the boot benchmark's variant, in build/testhost-bench: the same test host plus
#                the peers our VMM is compared with, the floor VMM (bench/floor-vmm) as
#                /bin/floor-vmm and Debian's QEMU as /opt/qemu/bin/qemu-system-x86_64 with its
#                libraries and microvm firmware (tens of MB: the tests' image stays without them)
#   --force      rebuild even if the stamp matches
# Environment: CARGO_TARGET_DIR, GUEST_DIR (default build/guest), FSR_VM_DATA (default vm-data),
#   TESTHOST_KERNEL_PACKAGE (default: what linux-image-cloud-amd64 depends on),
#   TESTHOST_VERBOSE=1 (show the test host kernel's boot log; slower).
# Needs root for apt-get (the packages are installed only when missing).
set -euo pipefail

readonly TARGET_TRIPLE=x86_64-unknown-linux-gnu
# Module load order matters: each one needs the symbols of those before it.
readonly MODULES=(scsi_common scsi_mod libata ata_piix sd_mod irqbypass kvm kvm-intel)
readonly PACKAGES=(bochs bochs-term bochsbios vgabios syslinux syslinux-common mtools dosfstools
    e2fsprogs busybox-static cpio gzip xz-utils zstd)
# Bochs computes a flat disk's geometry as 16 heads x 63 sectors; sizes must be whole cylinders.
readonly CYLINDER_BYTES=$((16 * 63 * 512))
readonly SHARE_DISK_MIB=512

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly ROOT
OUT="$ROOT/build/testhost"
readonly CACHE="$ROOT/build/testhost-cache"
readonly GUEST_DIR="${GUEST_DIR:-$ROOT/build/guest}"
readonly VM_DATA="${FSR_VM_DATA:-$ROOT/vm-data}"
readonly SHARE_DISK="$VM_DATA/testhost/share.ext4"
readonly TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
TESTHOST_CMDLINE="console=ttyS0,115200 nokaslr clearcpuid=158,306 reboot=t panic=-1 cryptomgr.notests=1"
[ "${TESTHOST_VERBOSE:-0}" = 1 ] || TESTHOST_CMDLINE="$TESTHOST_CMDLINE quiet"
readonly TESTHOST_CMDLINE

run_cargo=1
binaries_only=0
bench=0
force=0
for arg in "$@"; do
    case "$arg" in
        --no-cargo) run_cargo=0 ;;
        --binaries-only) binaries_only=1 ;;
        --bench) bench=1 ;;
        --force) force=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "build-testhost: unknown argument '$arg' (try --help)" >&2
            exit 2
            ;;
    esac
done
[ "$bench" -eq 1 ] && OUT="$ROOT/build/testhost-bench"
readonly OUT
# The boot benchmark's peer, QEMU (its machine-independent firmware comes with it).
readonly QEMU_PACKAGES=(qemu-system-x86 qemu-system-data)
readonly QEMU_BIN=/usr/bin/qemu-system-x86_64
readonly QEMU_FIRMWARE=/usr/share/qemu/bios-microvm.bin

step() { printf '==> build-testhost: %s\n' "$*" >&2; }
die() {
    printf 'build-testhost: error: %s\n' "$*" >&2
    exit 1
}

# Install what is missing; refresh the package lists only if an install fails.
install_packages() {
    local missing=() p wanted=("${PACKAGES[@]}")
    [ "$bench" -eq 1 ] && wanted+=("${QEMU_PACKAGES[@]}")
    for p in "${wanted[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    step "installing ${missing[*]}"
    [ "$(id -u)" -eq 0 ] || die "packages missing (${missing[*]}); run as root or install them: apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # bochs-term first: it provides bochs-gui, so bochs does not pull in the wxWidgets front end.
    if ! apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; then
        step "install failed; running apt-get update and retrying"
        apt-get update >/dev/null
        apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null ||
            die "apt-get install ${missing[*]} failed"
    fi
}

# The exact kernel package, e.g. linux-image-6.1.0-56-cloud-amd64.
kernel_package() {
    if [ -n "${TESTHOST_KERNEL_PACKAGE:-}" ]; then
        echo "$TESTHOST_KERNEL_PACKAGE"
        return
    fi
    local pkg
    pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
        sed -n 's/^ *Depends: \(linux-image-[0-9].*-cloud-amd64\)$/\1/p' | head -n1)
    if [ -z "$pkg" ]; then
        apt-get update >/dev/null
        pkg=$(apt-cache depends linux-image-cloud-amd64 |
            sed -n 's/^ *Depends: \(linux-image-[0-9].*-cloud-amd64\)$/\1/p' | head -n1)
    fi
    [ -n "$pkg" ] || die "cannot find the package linux-image-cloud-amd64 depends on (apt-cache depends linux-image-cloud-amd64); set TESTHOST_KERNEL_PACKAGE"
    echo "$pkg"
}

# Download (once) and unpack the kernel package; prints the unpacked root.
fetch_kernel() {
    local pkg=$1 deb unpacked
    mkdir -p "$CACHE"
    deb=$(find "$CACHE" -maxdepth 1 -name "${pkg}_*.deb" | sort | tail -n1)
    if [ -z "$deb" ]; then
        step "downloading $pkg"
        (cd "$CACHE" && apt-get download "$pkg" >/dev/null 2>&1) ||
            (apt-get update >/dev/null && cd "$CACHE" && apt-get download "$pkg" >/dev/null) ||
            die "apt-get download $pkg failed"
        deb=$(find "$CACHE" -maxdepth 1 -name "${pkg}_*.deb" | sort | tail -n1)
    fi
    unpacked="${deb%.deb}"
    if [ ! -d "$unpacked/boot" ]; then
        step "unpacking $(basename "$deb")"
        rm -rf "$unpacked.tmp"
        dpkg-deb -x "$deb" "$unpacked.tmp"
        mv "$unpacked.tmp" "$unpacked"
    fi
    echo "$unpacked"
}

build_binaries() {
    step "building static hypervisor and testhost-agent (cargo, target $TARGET_TRIPLE)"
    # An explicit --target keeps crt-static off build scripts and proc-macros.
    (cd "$ROOT" && RUSTFLAGS="-C target-feature=+crt-static" cargo build --release \
        --target "$TARGET_TRIPLE" -p hypervisor -p e2e-tests --bin hypervisor --bin testhost-agent) ||
        die "cargo build of the static binaries failed (see above)"
    if [ "$bench" -eq 1 ]; then
        (cd "$ROOT" && RUSTFLAGS="-C target-feature=+crt-static" cargo build --release \
            --target "$TARGET_TRIPLE" -p floor-vmm) ||
            die "cargo build of the static floor-vmm failed (see above)"
    fi
    if [ -d "$ROOT/fsredirect/src/bin" ] || grep -q '^\[\[bin\]\]' "$ROOT/fsredirect/Cargo.toml" 2>/dev/null ||
        [ -f "$ROOT/fsredirect/src/main.rs" ]; then
        (cd "$ROOT" && RUSTFLAGS="-C target-feature=+crt-static" cargo build --release \
            --target "$TARGET_TRIPLE" -p fsredirect --bins) ||
            step "warning: fsredirect did not build; the test host will not carry it"
    fi
}

# Copy a binary into the initramfs (into bin/, or the directory given third); a dynamically
# linked one brings its libraries along.
install_binary() {
    local src=$1 stage=$2 dir=${3:-bin} lib
    local dst
    dst="$stage/$dir/$(basename "$src")"
    mkdir -p "$stage/$dir"
    install -m 0755 "$src" "$dst"
    # Debug info only costs load time on the emulated CPU.
    if command -v strip >/dev/null; then strip --strip-debug "$dst"; fi
    # A static(-pie) binary makes ldd print "statically linked": no library paths.
    if ldd "$src" 2>/dev/null | grep -q '/'; then
        [ "$dir" = bin ] &&
            step "warning: $src is dynamically linked; copying its libraries (build it with RUSTFLAGS=\"-C target-feature=+crt-static\" --target $TARGET_TRIPLE)"
        for lib in $(ldd "$src" | grep -o '/[^ ]*'); do
            mkdir -p "$stage$(dirname "$lib")"
            cp -L "$lib" "$stage$lib"
        done
    fi
}

# The boot benchmark's peers: the floor VMM, and QEMU with what it opens to boot microvm (its
# libraries and the microvm firmware; it finds the firmware beside its binary, ../share/qemu).
install_peers() {
    local stage=$1
    install_binary "$floor_bin" "$stage"
    install_binary "$QEMU_BIN" "$stage" opt/qemu/bin
    mkdir -p "$stage/opt/qemu/share/qemu"
    cp "$QEMU_FIRMWARE" "$stage/opt/qemu/share/qemu/"
}

hash_inputs() {
    {
        sha256sum "$0" "$ROOT/guest-images/testhost/init" "$kdeb" /bin/busybox \
            "$hypervisor_bin" "$agent_bin"
        [ -n "$fsredirect_bin" ] && sha256sum "$fsredirect_bin"
        [ "$bench" -eq 1 ] && sha256sum "$floor_bin" "$QEMU_BIN" "$QEMU_FIRMWARE"
        for f in vmlinux initramfs.cpio.gz; do
            [ -f "$GUEST_DIR/$f" ] && sha256sum "$GUEST_DIR/$f"
        done
        echo "kernel=$kpkg"
        echo "cmdline=$TESTHOST_CMDLINE"
    } | sed 's|  .*/|  |' | sha256sum | cut -d' ' -f1
}

round_to_cylinders() { echo $((($1 + CYLINDER_BYTES - 1) / CYLINDER_BYTES * CYLINDER_BYTES)); }

# Checking a module's signature hashes the whole module on the emulated CPU (seconds for
# kvm.ko). The test host does not enforce signatures, so drop them; the kernel only notes a taint.
# Layout of a signed module: ELF, signature, 12-byte struct module_signature ending in the
# signature length (big-endian u32), then the 28-byte magic below.
strip_module_signature() {
    local ko=$1 magic='~Module signature appended~' siglen
    [ "$(tail -c 28 "$ko" | head -c 27)" = "$magic" ] || return 0
    siglen=$(tail -c 32 "$ko" | head -c 4 | od -An -tu4 --endian=big | tr -d ' ')
    truncate -s "-$((28 + 12 + siglen))" "$ko"
}

build_initramfs() {
    local stage=$1 kroot=$2 kver m ko
    kver=$(basename "$(find "$kroot/lib/modules" -mindepth 1 -maxdepth 1 -type d | head -n1)")
    mkdir -p "$stage"/{bin,dev,etc,proc,sys,run,tmp,share,guest,lib/modules}
    install -m 0755 /bin/busybox "$stage/bin/busybox"
    install -m 0755 "$ROOT/guest-images/testhost/init" "$stage/init"
    # The kernel opens /dev/console before running /init; without the node /init has no stdio.
    mknod -m 600 "$stage/dev/console" c 5 1 2>/dev/null ||
        step "warning: cannot create dev/console (not root?); /init reopens it after mounting devtmpfs"
    for m in "${MODULES[@]}"; do
        ko=$(find "$kroot/lib/modules/$kver" -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" -o -name "$m.ko.gz" | head -n1)
        [ -n "$ko" ] || die "module $m not found in $kroot/lib/modules/$kver"
        # busybox insmod loads only plain .ko files: decompress here.
        case "$ko" in
            *.xz) xz -dc "$ko" >"$stage/lib/modules/$m.ko" ;;
            *.zst) zstd -qdc "$ko" >"$stage/lib/modules/$m.ko" ;;
            *.gz) gzip -dc "$ko" >"$stage/lib/modules/$m.ko" ;;
            *) cp "$ko" "$stage/lib/modules/$m.ko" ;;
        esac
        strip_module_signature "$stage/lib/modules/$m.ko"
    done
    printf '%s\n' "${MODULES[@]}" >"$stage/lib/modules/load-order"
    install_binary "$hypervisor_bin" "$stage"
    install_binary "$agent_bin" "$stage"
    [ -n "$fsredirect_bin" ] && install_binary "$fsredirect_bin" "$stage"
    [ "$bench" -eq 1 ] && install_peers "$stage"
    if [ -f "$GUEST_DIR/vmlinux" ] && [ -f "$GUEST_DIR/initramfs.cpio.gz" ]; then
        cp "$GUEST_DIR/vmlinux" "$GUEST_DIR/initramfs.cpio.gz" "$stage/guest/"
        # The VMM loads only the program segments; the symbol table (half the file) would only
        # be unpacked on the emulated CPU at every test-host boot.
        if command -v strip >/dev/null; then strip --strip-all "$stage/guest/vmlinux"; fi
    else
        step "warning: guest image missing ($GUEST_DIR/vmlinux, initramfs.cpio.gz); build it with guest-images/build-guest.sh. The test host will boot but cannot run scenarios."
    fi
    echo "$hash" >"$stage/etc/testhost-version"
    (cd "$stage" && find . -print0 | LC_ALL=C sort -z |
        cpio --null --create --format=newc --owner=0:0 --quiet --reproducible) |
        # zstd unpacks several times faster than gzip, which counts on an emulated CPU.
        zstd -q -12
}

make_share_disk() {
    [ -f "$SHARE_DISK" ] && return 0
    step "creating the share disk $SHARE_DISK (${SHARE_DISK_MIB} MiB ext4, kept across runs)"
    mkdir -p "$(dirname "$SHARE_DISK")"
    local bytes
    bytes=$(round_to_cylinders $((SHARE_DISK_MIB * 1024 * 1024)))
    truncate -s "$bytes" "$SHARE_DISK.tmp"
    mkfs.ext4 -q -F -L fsr-share -E root_owner=0:0 "$SHARE_DISK.tmp"
    mv "$SHARE_DISK.tmp" "$SHARE_DISK"
}

write_bochsrc() {
    # Run-specific paths come from the environment (bochs expands $NAME in its configuration):
    #   FSR_TESTHOST_IMAGE   this directory        FSR_TESTHOST_SHARE  the share disk
    #   FSR_TESTHOST_RUN     the run directory (params.img in, serial.log and bochs.log out)
    cat >"$OUT/bochsrc.tmp" <<'EOF'
# Generated by guest-images/build-testhost.sh; see guest-images/testhost/README.md.
# Debian's speaker plugin opens ALSA and crashes bochs on machines without a sound card.
plugin_ctrl: speaker=0, sb16=0, es1370=0, gameport=0, parallel=0, iodebug=0, biosdev=0
config_interface: textconfig
display_library: term
romimage: file=/usr/share/bochs/BIOS-bochs-latest
vgaromimage: file=/usr/share/vgabios/vgabios.bin
megs: 1024
cpu: model=corei7_haswell_4770, count=1, ips=100000000, reset_on_triple_fault=0
clock: sync=none, time0=946684800
boot: disk
ata0: enabled=1, ioaddr1=0x1f0, ioaddr2=0x3f0, irq=14
ata0-master: type=disk, path=$FSR_TESTHOST_IMAGE/boot.img, mode=flat
ata0-slave: type=disk, path=$FSR_TESTHOST_SHARE, mode=flat
ata1: enabled=1, ioaddr1=0x170, ioaddr2=0x370, irq=15
ata1-master: type=disk, path=$FSR_TESTHOST_RUN/params.img, mode=flat
com1: enabled=1, mode=file, dev=$FSR_TESTHOST_RUN/serial.log
mouse: enabled=0
log: $FSR_TESTHOST_RUN/bochs.log
panic: action=fatal
error: action=ignore
info: action=ignore
debug: action=ignore
EOF
    mv "$OUT/bochsrc.tmp" "$OUT/bochsrc"
    printf 'c\nq\n' >"$OUT/bochs.rc"
}

make_boot_disk() {
    local kroot=$1 initrd=$2 img=$3 bytes
    # 115200 baud: the kernel polls the UART for every console byte, and bochs paces the UART at
    # its baud rate in emulated time; at the default 9600 the boot log alone costs minutes.
    # cryptomgr.notests: the crypto self-tests cost over 7 s of test-host clock. quiet: every
    # console line is polled out at emulated baud rate (TESTHOST_VERBOSE=1 shows the boot log).
    local cmdline="$TESTHOST_CMDLINE"
    bytes=$(($(stat -c %s "$kroot"/boot/vmlinuz-*) + $(stat -c %s "$initrd") + 4 * 1024 * 1024))
    bytes=$(round_to_cylinders "$bytes")
    rm -f "$img"
    truncate -s "$bytes" "$img"
    mkfs.vfat -n TESTHOST -g 16/63 -h 0 "$img" >/dev/null
    syslinux --install "$img"
    cat >"$OUT/syslinux.cfg" <<EOF
SERIAL 0 115200
DEFAULT testhost
PROMPT 0
TIMEOUT 0
LABEL testhost
  LINUX /vmlinuz
  INITRD /initrd.zst
  APPEND $cmdline
EOF
    mcopy -o -i "$img" "$OUT/syslinux.cfg" ::syslinux.cfg
    mcopy -o -i "$img" "$kroot"/boot/vmlinuz-* ::vmlinuz
    mcopy -o -i "$img" "$initrd" ::initrd.zst
    rm "$OUT/syslinux.cfg"
}

main() {
    local start=$SECONDS
    # One build at a time (tests and the testhost command may call this concurrently).
    mkdir -p "$CACHE"
    exec 9>"$CACHE/build.lock"
    if ! flock -n 9; then
        step "waiting for another build-testhost.sh to finish"
        flock 9
    fi
    if [ "$binaries_only" -eq 1 ]; then
        build_binaries
        return 0
    fi
    install_packages
    kpkg=$(kernel_package)
    local kroot
    kroot=$(fetch_kernel "$kpkg")
    kdeb="$kroot.deb"
    [ "$run_cargo" -eq 1 ] && build_binaries
    local rel="$TARGET_DIR/$TARGET_TRIPLE/release"
    hypervisor_bin="${HYPERVISOR_BIN:-$rel/hypervisor}"
    agent_bin="${AGENT_BIN:-$rel/testhost-agent}"
    fsredirect_bin="${FSREDIRECT_BIN:-}"
    [ -z "$fsredirect_bin" ] && [ -x "$rel/fsredirect" ] && fsredirect_bin="$rel/fsredirect"
    [ -x "$hypervisor_bin" ] || die "no hypervisor binary at $hypervisor_bin; build it with RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --release --target $TARGET_TRIPLE -p hypervisor, or set HYPERVISOR_BIN"
    floor_bin="${FLOOR_BIN:-$rel/floor-vmm}"
    if [ "$bench" -eq 1 ]; then
        [ -x "$floor_bin" ] || die "no floor-vmm binary at $floor_bin; build it with RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --release --target $TARGET_TRIPLE -p floor-vmm, or set FLOOR_BIN"
        [ -x "$QEMU_BIN" ] || die "no $QEMU_BIN; install it: apt-get install ${QEMU_PACKAGES[*]}"
        [ -f "$QEMU_FIRMWARE" ] || die "no $QEMU_FIRMWARE; install it: apt-get install ${QEMU_PACKAGES[*]}"
    fi
    [ -x "$agent_bin" ] || die "no testhost-agent binary at $agent_bin; build it with RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --release --target $TARGET_TRIPLE -p e2e-tests --bin testhost-agent, or set AGENT_BIN"

    local bin
    for bin in "$hypervisor_bin" "$agent_bin" $fsredirect_bin; do
        step "input: $bin (built $(date -u -r "$bin" '+%F %T UTC'))"
    done
    make_share_disk
    hash=$(hash_inputs)
    if [ "$force" -eq 0 ] && [ -f "$OUT/stamp" ] && [ "$(cat "$OUT/stamp")" = "$hash" ] &&
        [ -f "$OUT/boot.img" ]; then
        step "up to date ($OUT, inputs ${hash:0:12})"
        return 0
    fi
    mkdir -p "$OUT"
    rm -f "$OUT/stamp"
    local stage
    stage=$(mktemp -d "${TMPDIR:-/tmp}/testhost-initramfs.XXXXXX")
    # shellcheck disable=SC2064 # expand now: $stage is local
    trap "rm -rf '$stage'" EXIT
    step "building the test host initramfs ($kpkg)"
    build_initramfs "$stage/root" "$kroot" >"$stage/initrd.zst"
    step "building the boot disk ($(($(stat -c %s "$stage/initrd.zst") / 1024)) KiB initramfs)"
    make_boot_disk "$kroot" "$stage/initrd.zst" "$OUT/boot.img.tmp"
    mv "$OUT/boot.img.tmp" "$OUT/boot.img"
    write_bochsrc
    echo "$hash" >"$OUT/stamp"
    step "done in $((SECONDS - start)) s: $OUT (inputs ${hash:0:12})"
}

main
