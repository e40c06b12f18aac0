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
#              version of busybox-static, the toolchain and musl (for the fsr-* tools), the
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
INITRAMFS_PACKAGES=(busybox-static cpio gzip musl-tools)

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
  --selftest         after building, boot the image under QEMU's software CPU
                     (qemu-system-x86, installed if missing) and check the
                     guest protocol: markers, exit codes, scenarios, the
                     shell, poweroff, and a virtio-fs share (with QEMU's
                     virtiofsd, as root); about a minute
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
		die "the final kernel .config ($(rel "$config")) does not have ${#bad[@]} option(s) of $(rel "$FRAGMENT") as requested, listed above; usually a dependency is missing: see it with 'make -C $KSRC O=$KBUILD ARCH=x86_64 menuconfig', then '/' and the option's name, and add the dependency to the fragment"
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
	if [ "$FORCE" = 1 ]; then
		rm -rf "$KBUILD"
	fi
	: >"$log"
	unpack_kernel_source "$(pkg_version linux-source-6.1)"
	mkdir -p "$KBUILD"
	progress "kernel: configuring (tinyconfig + $(rel "$FRAGMENT")); log: $(rel "$log")"
	run_logged "$log" "configuring the kernel" configure_kernel
	check_kernel_config
	progress "kernel: all options of the fragment are set; compiling vmlinux and bzImage with $(nproc) jobs (about 10 CPU-minutes: 5 min on 2 idle cores)"
	run_logged "$log" "compiling the kernel" compile_kernel
	# Until the new stamp is written, the outputs are a mix: no stamp.
	rm -f "$stamp"
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
# root: busybox and its applet links, /init, the poweroff wrapper, the fsr-* tools (exit, pattern, xattr),
# the scenarios, then the contents of EXTRA (if not empty) over them.
# /dev/console is not needed here: the kernel's built-in initramfs has it,
# and /init mounts devtmpfs on /dev.
stage_initramfs() {
	local stage=$1 extra=$2 applet up
	rm -rf "$stage"
	mkdir -p "$stage"
	(cd "$stage" && mkdir -p bin sbin usr/bin usr/sbin etc dev proc sys run tmp root mnt scenarios)
	chmod 1777 "$stage/tmp"
	chmod 0700 "$stage/root"
	install -m 0755 /bin/busybox "$stage/bin/busybox"
	# poweroff is our wrapper; every other applet is a link to busybox,
	# relative so that no host tool following it reaches the host's busybox.
	for applet in $("$stage/bin/busybox" --list-full); do
		case $applet in
		sbin/poweroff | bin/busybox) ;;
		*)
			up=$(printf '%s' "$applet" | sed 's|[^/]*/|../|g; s|[^/]*$||')
			[ -e "$stage/$applet" ] || ln -s "${up}bin/busybox" "$stage/$applet"
			;;
		esac
	done
	local tool
	for tool in fsr-exit fsr-pattern fsr-xattr; do
		# musl: each tool is ~30 KiB, where static glibc makes ~700 KiB that the
		# guest kernel must unpack at every boot.
		musl-gcc -static -Os -Wall -Wextra -Werror -s -o "$stage/bin/$tool" "$GUEST_DIR/$tool.c"
	done
	install -m 0755 "$GUEST_DIR/init" "$stage/init"
	install -m 0755 "$GUEST_DIR/poweroff" "$stage/sbin/poweroff"
	install -m 0644 "$GUEST_DIR/shrc" "$stage/etc/shrc"
	install -m 0755 "$GUEST_DIR"/scenarios/*.sh "$stage/scenarios/"
	install -D -m 0644 "$GUEST_DIR/lib/scenario.sh" "$stage/usr/lib/fsr/scenario.sh"
	printf 'root:x:0:0:root:/root:/bin/sh\n' >"$stage/etc/passwd"
	printf 'root:x:0:\n' >"$stage/etc/group"
	if [ -n "$extra" ]; then
		# --remove-destination: replace applet links rather than write
		# through them into busybox.
		cp -R --no-preserve=ownership --remove-destination "$extra/." "$stage/"
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
		printf 'musl-tools %s\n' "$(pkg_version musl-tools)"
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
	: >"$log"
	progress "initramfs: building $(rel "$output")${EXTRA:+ with $EXTRA}; log: $(rel "$log")"
	run_logged "$log" "staging the initramfs" stage_initramfs "$stage" "$EXTRA"
	run_logged "$log" "packing the initramfs" pack_initramfs "$stage" "$output.tmp"
	rm -f "$stamp"
	mv "$output.tmp" "$output"
	printf '%s\n' "$key" >"$stamp"
	progress "initramfs: built in $((SECONDS - started))s: $(rel "$output") ($(du -k "$output" | cut -f 1) KiB)"
}

# --------------------------------------------------------------- selftest --

# selftest_boot NAME KERNEL APPEND WAIT_FOR SEND [QEMU ARGS...]: boots
# KERNEL with the initramfs under QEMU's software CPU, with QEMU's exit
# device on our exit port (it exits with (CODE << 1) | 1). Once the console
# printed WAIT_FOR (if not empty) types the line SEND. Sets BOOT_LOG, BOOT_RC.
selftest_boot() {
	local name=$1 kernel=$2 append=$3 wait_for=$4 send=$5 fifo feeder i
	shift 5
	BOOT_LOG=$SELFTEST_DIR/$name.log
	fifo=$SELFTEST_DIR/$name.in
	rm -f "$fifo"
	mkfifo "$fifo"
	: >"$BOOT_LOG"
	(
		exec 3>"$fifo"
		[ -n "$wait_for" ] || exit 0
		for ((i = 0; i < 600; i++)); do
			grep -aqF -- "$wait_for" "$BOOT_LOG" && break
			sleep 0.1
		done
		printf '%s\n' "$send" >&3
	) &
	feeder=$!
	BOOT_RC=0
	timeout 120 qemu-system-x86_64 -M microvm,acpi=off -cpu max -m 256 -nodefaults \
		-no-user-config -display none -serial stdio -no-reboot \
		-kernel "$OUT/$kernel" -initrd "$OUT/initramfs.cpio.gz" \
		-append "console=ttyS0 reboot=k panic=-1 $append" \
		-device isa-debug-exit,iobase=0xf4,iosize=0x01 "$@" \
		<"$fifo" >"$BOOT_LOG" 2>&1 || BOOT_RC=$?
	kill "$feeder" 2>/dev/null || true
	wait "$feeder" 2>/dev/null || true
	rm -f "$fifo"
}

# selftest_check NAME EXPECTED_RC LINE...: records whether the last boot
# ended with EXPECTED_RC and printed every LINE (a line starting with '!'
# must not appear).
selftest_check() {
	local name=$1 want_rc=$2 line problems=()
	shift 2
	[ "$BOOT_RC" = "$want_rc" ] || problems+=("QEMU exit status $BOOT_RC, expected $want_rc")
	for line in "$@"; do
		if [ "${line:0:1}" = '!' ]; then
			! grep -aqF -- "${line:1}" "$BOOT_LOG" || problems+=("unexpected '${line:1}'")
		else
			grep -aqF -- "$line" "$BOOT_LOG" || problems+=("missing '$line'")
		fi
	done
	if [ "${#problems[@]}" -eq 0 ]; then
		SELFTEST_PASSED=$((SELFTEST_PASSED + 1))
		progress "selftest: pass  $name ($(grep -a '@@fsr init' "$BOOT_LOG" | tr -d '\r'))"
	else
		SELFTEST_FAILED+=("$name")
		progress "selftest: FAIL  $name: ${problems[*]}; console log: $(rel "$BOOT_LOG"), its end:"
		tail -n 15 "$BOOT_LOG" >&2
	fi
}

selftest() {
	local share virtiofsd=/usr/lib/qemu/virtiofsd vpid prompt='fsr-guest:/# '
	ensure_packages qemu-system-x86
	SELFTEST_DIR=$OUT/selftest
	SELFTEST_PASSED=0
	SELFTEST_FAILED=()
	rm -rf "$SELFTEST_DIR"
	mkdir -p "$SELFTEST_DIR"
	progress "selftest: booting the image under QEMU's software CPU; console logs in $(rel "$SELFTEST_DIR")"

	selftest_boot exit-vmlinux vmlinux "fsr.scenario=exit fsr.arg=7" "" ""
	selftest_check exit-vmlinux 15 "@@fsr init uptime=" "@@fsr scenario exit start" \
		"@@fsr scenario exit result=fail code=7" "@@fsr exit code=7"
	selftest_boot exit-bzImage bzImage "fsr.scenario=exit" "" ""
	selftest_check exit-bzImage 1 "@@fsr scenario exit result=pass code=0" "@@fsr exit code=0"
	selftest_boot cpus vmlinux "fsr.scenario=cpus fsr.arg=2" "" "" -smp 2
	selftest_check cpus 1 "@@fsr cpus online=2" "@@fsr scenario cpus result=pass code=0"
	selftest_boot reboot vmlinux "fsr.scenario=reboot" "" ""
	selftest_check reboot 0 "@@fsr scenario reboot start" "!@@fsr exit"
	selftest_boot echo vmlinux "fsr.scenario=echo" "@@fsr echo-ready" "hello from the host"
	selftest_check echo 1 "@@fsr echo got=hello from the host" "@@fsr scenario echo result=pass"
	selftest_boot unknown-scenario vmlinux "fsr.scenario=no-such" "" ""
	selftest_check unknown-scenario 255 "@@fsr scenario no-such result=fail code=127"
	selftest_boot shell-exit vmlinux "" "$prompt" "sleep 1 & jobs; wait; exit 5"
	selftest_check shell-exit 11 "@@fsr scenario shell start" "[1]+  Running" \
		"@@fsr scenario shell result=fail code=5" "@@fsr exit code=5"
	selftest_boot poweroff-f vmlinux "" "$prompt" "poweroff -f"
	selftest_check poweroff-f 1 "@@fsr exit code=0"
	selftest_boot poweroff-applet vmlinux "" "$prompt" "busybox poweroff"
	selftest_check poweroff-applet 1 "fsr-init: poweroff requested" "@@fsr exit code=0"

	if [ ! -x "$virtiofsd" ]; then
		progress "selftest: skip  share ($virtiofsd not found; it comes with qemu-system-common 7.2)"
	elif [ "$(id -u)" -ne 0 ]; then
		progress "selftest: skip  share ($virtiofsd needs root)"
	else
		share=$SELFTEST_DIR/share
		mkdir -p "$share"
		printf 'written by the host\n' >"$share/host.txt"
		"$virtiofsd" --socket-path="$SELFTEST_DIR/virtiofsd.sock" -o source="$share" \
			-o cache=none >"$SELFTEST_DIR/virtiofsd.log" 2>&1 &
		vpid=$!
		for ((i = 0; i < 50; i++)); do
			[ -S "$SELFTEST_DIR/virtiofsd.sock" ] && break
			sleep 0.1
		done
		selftest_boot share vmlinux "fsr.share=share0:/mnt/share0" "$prompt" \
			"cat /mnt/share0/host.txt && echo written by the guest >/mnt/share0/guest.txt && poweroff" \
			-machine memory-backend=mem -object memory-backend-memfd,id=mem,size=256M,share=on \
			-global virtio-mmio.force-legacy=false \
			-chardev socket,id=fs,path="$SELFTEST_DIR/virtiofsd.sock" \
			-device vhost-user-fs-device,chardev=fs,tag=share0
		kill "$vpid" 2>/dev/null || true
		wait "$vpid" 2>/dev/null || true
		if [ "$(cat "$share/guest.txt" 2>/dev/null)" != "written by the guest" ]; then
			BOOT_RC="$BOOT_RC (and no $(rel "$share")/guest.txt)"
		fi
		selftest_check share 1 "@@fsr mount tag=share0 at=/mnt/share0 ok" "written by the host" \
			"@@fsr exit code=0"
	fi

	if [ "${#SELFTEST_FAILED[@]}" -ne 0 ]; then
		die "selftest: $SELFTEST_PASSED passed, ${#SELFTEST_FAILED[@]} failed: ${SELFTEST_FAILED[*]}"
	fi
	progress "selftest: all $SELFTEST_PASSED passed"
}

# ------------------------------------------------------------------ main --

FORCE=0
INITRAMFS_ONLY=0
PRINT_PATHS=0
NO_INSTALL=0
SELFTEST=0
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
	--selftest) SELFTEST=1 ;;
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

if [ "$SELFTEST" = 1 ] && { [ "$INITRAMFS_ONLY" = 1 ] || [ -n "$EXTRA$NAME" ]; }; then
	die "--selftest checks the standard image: use it without --initramfs-only, --extra and --name"
fi
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
if [ "$SELFTEST" = 1 ]; then
	selftest
fi
progress "done"
