#!/usr/bin/env bash
# Builds the guest kernel and initramfs from Debian packages only; see usage().
#
# Caching: each output has a stamp file holding the hash of its inputs, and is
# rebuilt only when that hash changes (or with --force).
#   kernel:    kernel.fragment, the Debian versions of linux-source-6.1 and
#              the toolchain, and the bodies of the shell functions that build
#              it (as bash prints them, so editing a comment or another stage
#              does not rebuild the kernel).
#   initramfs: every file under guest/ except kernel.fragment, the Debian
#              version of busybox-static, the toolchain (for fsr-exit), the
#              functions that build it, and the --extra directory if any.
# So changing a scenario rebuilds only the initramfs, in about a second.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd -P)
GUEST_DIR=$SCRIPT_DIR/guest
FRAGMENT=$GUEST_DIR/kernel.fragment
OUT=$REPO_ROOT/build/guest
LOG_DIR=$OUT/log
WORK=$REPO_ROOT/build/guest-work
KSRC=$WORK/linux-source-6.1
KBUILD=$WORK/kernel-obj
KERNEL_TARBALL=/usr/src/linux-source-6.1.tar.xz

KERNEL_PACKAGES=(linux-source-6.1 make gcc libc6-dev flex bison bc libelf-dev xz-utils)
INITRAMFS_PACKAGES=(busybox-static cpio gzip gcc libc6-dev)

usage() {
	cat <<EOF
usage: guest-images/build-guest.sh [OPTIONS]

Builds the guest image from Debian packages only (linux-source-6.1 and
busybox-static), installing missing build dependencies with apt-get when run
as root. Outputs, under build/guest/ at the repository root:
  vmlinux            the kernel as an ELF file (with a PVH entry point)
  bzImage            the same kernel in the Linux boot protocol format
  kernel.config      its final .config
  initramfs.cpio.gz  the initramfs; its /init follows docs/guest-protocol.md
  *.stamp            the hash of each output's inputs
  log/               full logs of the build steps
Outputs whose inputs did not change are not rebuilt.

Options:
  --force            rebuild even if the outputs are up to date
  --initramfs-only   build only the initramfs (no kernel source needed)
  --extra DIR        copy the contents of DIR over the initramfs root (for
                     example DIR/scenarios/NAME.sh adds a scenario) and write
                     build/guest/initramfs-NAME.cpio.gz instead
  --name NAME        the NAME used with --extra (default: DIR's base name)
  --print-paths      print the output paths as KEY=PATH lines and exit,
                     without building; exit status 1 if any is missing
  --no-install       never run apt-get; fail listing missing packages instead
  -h, --help         show this help

Progress goes to standard error; standard output is used by --print-paths only.
EOF
}

START=$SECONDS
progress() { printf '[build-guest %4ds] %s\n' "$((SECONDS - START))" "$*" >&2; }
die() {
	printf 'build-guest: error: %s\n' "$*" >&2
	exit 1
}
# Prints a path relative to the repository root when it is inside it.
rel() { printf '%s' "${1#"$REPO_ROOT"/}"; }

# The process group of the step run_logged is running, killed if we are.
CHILD_PGID=
on_signal() {
	if [ -n "$CHILD_PGID" ]; then
		kill -TERM -- "-$CHILD_PGID" 2>/dev/null || true
	fi
	printf 'build-guest: interrupted\n' >&2
	exit 130
}
trap on_signal INT TERM HUP

# run_logged LOG LABEL COMMAND...: runs COMMAND (a program or a function)
# with its output appended to LOG, printing a line every 20 s while it runs.
# On failure prints the end of LOG and exits.
run_logged() {
	local log=$1 label=$2 started=$SECONDS pid next rc=0
	shift 2
	printf '\n===== %s: %s\n' "$(date -u '+%F %T')" "$label" >>"$log"
	# Monitor mode puts the step in its own process group, so that an
	# interrupt stops all of it (make and its compilers), not only the shell.
	set -m
	"$@" </dev/null >>"$log" 2>&1 &
	pid=$!
	set +m
	CHILD_PGID=$pid
	next=$((SECONDS + 20))
	while kill -0 "$pid" 2>/dev/null; do
		sleep 1
		if [ "$SECONDS" -ge "$next" ]; then
			progress "  ... $label, $((SECONDS - started))s so far; last line: $(tail -n 1 "$log" | cut -c 1-70)"
			next=$((SECONDS + 20))
		fi
	done
	wait "$pid" || rc=$?
	CHILD_PGID=
	if [ "$rc" -ne 0 ]; then
		printf -- '----- last 40 lines of %s -----\n' "$(rel "$log")" >&2
		tail -n 40 "$log" >&2
		printf -- '-----\n' >&2
		die "$label failed (exit status $rc); full log: $(rel "$log")"
	fi
}

# pkg_version PACKAGE: the installed Debian version, or nothing.
pkg_version() {
	dpkg-query -W -f='${Status} ${Version}\n' "$1" 2>/dev/null |
		awk '$1 == "install" && $3 == "installed" { print $4 }'
}

# ensure_packages PACKAGE...: installs the missing ones, or says how to.
ensure_packages() {
	local missing=() pkg log=$LOG_DIR/apt.log
	command -v dpkg-query >/dev/null ||
		die "dpkg-query not found: this script builds from Debian packages and needs a Debian host"
	for pkg in "$@"; do
		[ -n "$(pkg_version "$pkg")" ] || missing+=("$pkg")
	done
	[ "${#missing[@]}" -eq 0 ] && return 0
	local cmd="apt-get install -y --no-install-recommends ${missing[*]}"
	if [ "$NO_INSTALL" = 1 ]; then
		die "missing Debian packages: ${missing[*]}; install them with: $cmd"
	fi
	if [ "$(id -u)" -ne 0 ]; then
		die "missing Debian packages: ${missing[*]}; install them as root with: $cmd"
	fi
	progress "installing missing Debian packages: ${missing[*]} (log: $(rel "$log"))"
	if ! apt_install "${missing[@]}" >>"$log" 2>&1; then
		progress "apt-get install failed; running apt-get update and retrying"
		if ! { apt_get update && apt_install "${missing[@]}"; } >>"$log" 2>&1; then
			tail -n 20 "$log" >&2
			die "could not install ${missing[*]} (full log: $(rel "$log")); install them with: apt-get update && $cmd"
		fi
	fi
	for pkg in "${missing[@]}"; do
		[ -n "$(pkg_version "$pkg")" ] || die "apt-get did not install $pkg; install it with: $cmd"
	done
}
apt_get() { DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 "$@"; }
apt_install() { apt_get install -y --no-install-recommends "$@"; }

toolchain_versions() {
	gcc --version | head -n 1
	ld --version | head -n 1
}

# tree_hash DIR [TAR OPTIONS...]: a hash of the names, contents and
# permissions of the files under DIR (not their times or owners).
tree_hash() {
	local dir=$1
	shift
	tar -C "$dir" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
		--mode='u+rw,go-w' "$@" -cf - . | sha256sum | cut -d ' ' -f 1
}

# is_current STAMP KEY OUTPUT...: true when every OUTPUT exists and STAMP
# holds KEY.
is_current() {
	local stamp=$1 key=$2 file
	shift 2
	[ "$FORCE" = 0 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ] || return 1
	for file in "$@"; do
		[ -f "$file" ] || return 1
	done
}

# ---------------------------------------------------------------- kernel --

kmake() {
	make -C "$KSRC" O="$KBUILD" ARCH=x86_64 \
		KBUILD_BUILD_USER=fsr KBUILD_BUILD_HOST=fsr-guest "$@"
}

# Unpacks the linux-source-6.1 tarball once per package version.
unpack_kernel_source() {
	local version=$1
	if [ -f "$KSRC/.fsr-source-version" ] &&
		[ "$(cat "$KSRC/.fsr-source-version")" = "$version" ]; then
		return 0
	fi
	[ -f "$KERNEL_TARBALL" ] ||
		die "$KERNEL_TARBALL not found although linux-source-6.1 is installed; reinstall it with: apt-get install --reinstall linux-source-6.1"
	progress "kernel: unpacking $KERNEL_TARBALL ($version)"
	rm -rf "$KSRC" "$KSRC.tmp" "$KBUILD"
	mkdir -p "$KSRC.tmp"
	run_logged "$LOG_DIR/kernel.log" "unpacking the kernel source" \
		tar -xf "$KERNEL_TARBALL" -C "$KSRC.tmp" --strip-components=1
	printf '%s\n' "$version" >"$KSRC.tmp/.fsr-source-version"
	mv "$KSRC.tmp" "$KSRC"
}

# tinyconfig, then our fragment, then Kconfig's defaults for the rest.
configure_kernel() {
	kmake tinyconfig
	(cd "$KSRC" && scripts/kconfig/merge_config.sh -m -O "$KBUILD" "$KBUILD/.config" "$FRAGMENT")
	kmake olddefconfig
}

# Fails naming every option of the fragment that the final .config does not
# have as requested (Kconfig silently drops options whose dependencies are
# not met).
check_kernel_config() {
	local config=$KBUILD/.config line name want got bad=()
	while IFS= read -r line; do
		case $line in
		CONFIG_*=*)
			name=${line%%=*}
			want=${line#*=}
			;;
		"# CONFIG_"*" is not set")
			name=${line#"# "}
			name=${name%% *}
			want=n
			;;
		*) continue ;;
		esac
		got=$(grep -E "^$name=" "$config" | cut -d = -f 2-) || got=n
		[ "$got" = "$want" ] || bad+=("$name (requested ${want}, got ${got:-n})")
	done <"$FRAGMENT"
	if [ "${#bad[@]}" -ne 0 ]; then
		printf '  %s\n' "${bad[@]}" >&2
		die "the final kernel .config ($(rel "$config")) does not have ${#bad[@]} option(s) of $(rel "$FRAGMENT") as requested, listed above; usually a dependency is missing: see it with 'make -C $(rel "$KSRC") O=$(rel "$KBUILD") ARCH=x86_64 menuconfig', then '/' and the option's name, and add the dependency to the fragment"
	fi
}

compile_kernel() {
	kmake -j "$(nproc)" vmlinux bzImage
}

kernel_key() {
	{
		declare -f kmake unpack_kernel_source configure_kernel check_kernel_config compile_kernel
		cat "$FRAGMENT"
		printf 'linux-source-6.1 %s\n' "$(pkg_version linux-source-6.1)"
		toolchain_versions
	} | sha256sum | cut -d ' ' -f 1
}

build_kernel() {
	local key stamp=$OUT/kernel.stamp log=$LOG_DIR/kernel.log started=$SECONDS
	ensure_packages "${KERNEL_PACKAGES[@]}"
	key=$(kernel_key)
	if is_current "$stamp" "$key" "$OUT/vmlinux" "$OUT/bzImage"; then
		progress "kernel: up to date ($(rel "$OUT")/vmlinux, bzImage; key ${key:0:12})"
		return 0
	fi
	[ "$FORCE" = 1 ] && rm -rf "$KBUILD"
	rm -f "$stamp"
	: >"$log"
	unpack_kernel_source "$(pkg_version linux-source-6.1)"
	mkdir -p "$KBUILD"
	progress "kernel: configuring (tinyconfig + $(rel "$FRAGMENT")); log: $(rel "$log")"
	run_logged "$log" "configuring the kernel" configure_kernel
	check_kernel_config
	progress "kernel: all options of the fragment are set; compiling vmlinux and bzImage with $(nproc) jobs (about 2.5 min on 2 cores)"
	run_logged "$log" "compiling the kernel" compile_kernel
	cp "$KBUILD/vmlinux" "$OUT/vmlinux.tmp"
	cp "$KBUILD/arch/x86/boot/bzImage" "$OUT/bzImage.tmp"
	cp "$KBUILD/.config" "$OUT/kernel.config.tmp"
	mv "$OUT/vmlinux.tmp" "$OUT/vmlinux"
	mv "$OUT/bzImage.tmp" "$OUT/bzImage"
	mv "$OUT/kernel.config.tmp" "$OUT/kernel.config"
	printf '%s\n' "$key" >"$stamp"
	progress "kernel: built in $((SECONDS - started))s: $(rel "$OUT")/vmlinux ($(du -k "$OUT/vmlinux" | cut -f 1) KiB), bzImage ($(du -k "$OUT/bzImage" | cut -f 1) KiB)"
}

# ------------------------------------------------------------- initramfs --

# stage_initramfs STAGE EXTRA: fills the directory STAGE with the initramfs
# root: busybox and its applet links, /init, the poweroff wrapper, fsr-exit,
# the scenarios, then the contents of EXTRA (if not empty) over them.
# /dev/console is not needed here: the kernel's built-in initramfs has it,
# and /init mounts devtmpfs on /dev.
stage_initramfs() {
	local stage=$1 extra=$2 applet
	rm -rf "$stage"
	mkdir -p "$stage"
	(cd "$stage" && mkdir -p bin sbin usr/bin usr/sbin etc dev proc sys run tmp root mnt scenarios)
	chmod 1777 "$stage/tmp"
	chmod 0700 "$stage/root"
	install -m 0755 /bin/busybox "$stage/bin/busybox"
	# poweroff is our wrapper; every other applet is a link to busybox.
	for applet in $("$stage/bin/busybox" --list-full); do
		case $applet in
		sbin/poweroff | bin/busybox) ;;
		*) [ -e "$stage/$applet" ] || ln -s /bin/busybox "$stage/$applet" ;;
		esac
	done
	gcc -static -Os -Wall -Wextra -Werror -s -o "$stage/bin/fsr-exit" "$GUEST_DIR/fsr-exit.c"
	install -m 0755 "$GUEST_DIR/init" "$stage/init"
	install -m 0755 "$GUEST_DIR/poweroff" "$stage/sbin/poweroff"
	install -m 0644 "$GUEST_DIR/shrc" "$stage/etc/shrc"
	install -m 0755 "$GUEST_DIR"/scenarios/*.sh "$stage/scenarios/"
	printf 'root:x:0:0:root:/root:/bin/sh\n' >"$stage/etc/passwd"
	printf 'root:x:0:\n' >"$stage/etc/group"
	if [ -n "$extra" ]; then
		cp -R --no-preserve=ownership "$extra/." "$stage/"
	fi
}

# pack_initramfs STAGE OUTPUT: a gzip'd newc cpio of STAGE, owned by root,
# with fixed times so that equal inputs give equal bytes.
pack_initramfs() {
	local stage=$1 output=$2
	find "$stage" -exec touch -h -d @0 {} +
	(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort |
		cpio -o -H newc -R 0:0 --reproducible --quiet) | gzip -9 -n >"$output"
}

initramfs_key() {
	local extra=$1
	{
		declare -f stage_initramfs pack_initramfs
		tree_hash "$GUEST_DIR" --exclude=./kernel.fragment
		printf 'busybox-static %s\n' "$(pkg_version busybox-static)"
		toolchain_versions
		if [ -n "$extra" ]; then
			printf 'extra\n'
			tree_hash "$extra"
		fi
	} | sha256sum | cut -d ' ' -f 1
}

build_initramfs() {
	local key output stamp stage log=$LOG_DIR/initramfs.log started=$SECONDS
	output=$OUT/$INITRAMFS_NAME.cpio.gz
	stamp=$OUT/$INITRAMFS_NAME.stamp
	stage=$WORK/$INITRAMFS_NAME-root
	ensure_packages "${INITRAMFS_PACKAGES[@]}"
	key=$(initramfs_key "$EXTRA")
	if is_current "$stamp" "$key" "$output"; then
		progress "initramfs: up to date ($(rel "$output"); key ${key:0:12})"
		return 0
	fi
	rm -f "$stamp"
	: >"$log"
	progress "initramfs: building $(rel "$output")${EXTRA:+ with $EXTRA}; log: $(rel "$log")"
	run_logged "$log" "staging the initramfs" stage_initramfs "$stage" "$EXTRA"
	run_logged "$log" "packing the initramfs" pack_initramfs "$stage" "$output.tmp"
	mv "$output.tmp" "$output"
	printf '%s\n' "$key" >"$stamp"
	progress "initramfs: built in $((SECONDS - started))s: $(rel "$output") ($(du -k "$output" | cut -f 1) KiB)"
}

# ------------------------------------------------------------------ main --

FORCE=0
INITRAMFS_ONLY=0
PRINT_PATHS=0
NO_INSTALL=0
EXTRA=
NAME=
while [ $# -gt 0 ]; do
	case $1 in
	-h | --help)
		usage
		exit 0
		;;
	--force) FORCE=1 ;;
	--initramfs-only) INITRAMFS_ONLY=1 ;;
	--print-paths) PRINT_PATHS=1 ;;
	--no-install) NO_INSTALL=1 ;;
	--extra | --name)
		[ $# -ge 2 ] || die "$1 needs a value; see --help"
		if [ "$1" = --extra ]; then EXTRA=$2; else NAME=$2; fi
		shift
		;;
	--extra=*) EXTRA=${1#--extra=} ;;
	--name=*) NAME=${1#--name=} ;;
	*) die "unknown option '$1'; see --help" ;;
	esac
	shift
done

INITRAMFS_NAME=initramfs
if [ -n "$EXTRA" ]; then
	[ -d "$EXTRA" ] || die "--extra $EXTRA: not a directory"
	EXTRA=$(cd "$EXTRA" && pwd -P)
	[ -n "$NAME" ] || NAME=$(basename "$EXTRA")
elif [ -n "$NAME" ]; then
	die "--name is only meaningful with --extra DIR"
fi
if [ -n "$NAME" ]; then
	case $NAME in
	*[!A-Za-z0-9_.-]* | .*) die "--name '$NAME': use only letters, digits, '_', '-' and '.', not starting with '.'" ;;
	esac
	INITRAMFS_NAME=initramfs-$NAME
fi

if [ "$PRINT_PATHS" = 1 ]; then
	not_built=0
	for entry in "vmlinux=$OUT/vmlinux" "bzImage=$OUT/bzImage" "initramfs=$OUT/$INITRAMFS_NAME.cpio.gz"; do
		printf '%s\n' "$entry"
		if [ ! -f "${entry#*=}" ]; then
			printf 'build-guest: %s is not built yet; run %s first\n' "${entry#*=}" "$(rel "$SCRIPT_DIR")/build-guest.sh" >&2
			not_built=1
		fi
	done
	exit "$not_built"
fi

mkdir -p "$OUT" "$LOG_DIR" "$WORK"
# One build at a time: tests and engineers may start this script together.
exec 9>"$OUT/.lock"
if ! flock -n 9; then
	progress "another build-guest.sh is running; waiting for it (lock $(rel "$OUT")/.lock)"
	flock 9
fi

if [ "$INITRAMFS_ONLY" = 0 ]; then
	build_kernel
fi
build_initramfs
progress "done"
