//! Conformance inside a real guest: the pjdfstest suite (crates.io 0.2.2,
//! the one tests/fs_mount.rs runs through the host FUSE mount) run by a real
//! Linux guest, as root, on a redirecting share served by our vhost-user
//! back-end (`hypervisor vhost-user-fs`) to QEMU's `vhost-user-fs-device`
//! under QEMU's software CPU (TCG). What is tested is the guest kernel's
//! virtiofs client against our device and the redirect engine behind it.
//!
//! Skipped, with the reason, when not root, without `qemu-system-x86_64`
//! (Debian package `qemu-system-x86`) or the guest image, or when pjdfstest
//! cannot be built (it needs libacl1-dev; `PJDFSTEST=/path/to/it` uses a
//! ready binary, which must be dynamically linked against this host's glibc).
//! `FSR_PJDFSTEST_TIMEOUT` sets the limit of the guest run in seconds;
//! `FSR_PJDFSTEST_SANDBOX` the back-end's `--sandbox` mode (its default,
//! namespace, when unset; `chroot` runs the suite through the chroot sandbox).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use e2e_tests::qemu::{self, ExitSource, GuestShare, QemuGuest};
use libtest_mimic::{Arguments, Completion, Failed, Trial};

/// The path this test drives, printed with its result.
const PATH: &str = "vhost-user back-end under QEMU TCG";
/// What pjdfstest must reach on a redirecting share: at least this many passed...
const MIN_PASSED: usize = 381;
/// ...and at most this many failed.
const MAX_FAILED: usize = 1;
/// The scenario's exit code when the image lacks the binary.
const MISSING_BINARY: i32 = 77;
/// Default limit for the guest run (boot, the whole suite, shutdown); a
/// guard against a hung guest, not a performance check.
const DEFAULT_TIMEOUT_SECS: u64 = 900;
/// The extra initramfs content kept in the repository (users, groups, NSS).
const IMAGE_FILES: &str = "guest-images/pjdfstest/root";
/// Where the binary goes in the guest (the scenario runs it from there).
const GUEST_BINARY: &str = "usr/bin/pjdfstest";

fn main() {
    let args = Arguments::from_args();
    let trials = vec![
        Trial::ignorable_test("pjdfstest_in_a_guest_on_a_redirecting_share", || {
            match pjdfstest_in_guest() {
                Ok(None) => Ok(Completion::Completed),
                Ok(Some(why)) => {
                    println!("skipped, because {why}");
                    Ok(Completion::ignored_with(format!("skipped, because {why}")))
                }
                Err(e) => Err(Failed::from(e)),
            }
        }),
        Trial::test("ldd_output_and_summary_markers_are_parsed", || {
            parsers_work().map_err(Failed::from)
        }),
    ];
    libtest_mimic::run(&args, trials).exit();
}

/// pjdfstest's counts as the scenario reports them.
#[derive(Debug, PartialEq, Eq)]
struct Counts {
    passed: usize,
    failed: usize,
    skipped: usize,
    expected_failures: usize,
    total: usize,
}

/// 1. Build pjdfstest 0.2.2 unless already built (dynamically linked, like
///    tests/fs_mount.rs), or take `$PJDFSTEST`.
/// 2. Stage the extra initramfs content: the binary as /usr/bin/pjdfstest,
///    every shared library `ldd` names (the dynamic loader too) at the same
///    path, and guest-images/pjdfstest/root (/etc/passwd and /etc/group with
///    the users and groups of the suite's config, /etc/nsswitch.conf).
/// 3. Build `initramfs-pjdfstest.cpio.gz` from it with `build-guest.sh
///    --initramfs-only --extra` (cached by content; the kernel is reused).
/// 4. Serve an empty tree redirected into volume `vol` of a store with
///    `hypervisor vhost-user-fs`; boot the guest under QEMU TCG with the
///    share at /mnt/fs0 and the `pjdfstest` scenario on it.
/// 5. Read the scenario's summary and failed-test markers; print the path,
///    the counts and each failure with its reason. Fail when fewer than 381
///    passed or more than 1 failed, when the guest did not end through the
///    exit port, or when the daemon did not exit cleanly.
/// 6. The store and the stubs agree (fsredirect's verifier).
fn pjdfstest_in_guest() -> Result<Option<String>, String> {
    if let Some(why) = qemu::unavailable() {
        return Ok(Some(why));
    }
    // SAFETY: geteuid has no preconditions and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(Some(
            "the daemon must run as root to serve pjdfstest's chown and mknod tests".into(),
        ));
    }
    if let Err(why) = qemu::refresh_guest_image() {
        // The image on disk is still usable; a stale scenario shows up as a failure.
        println!("warning: could not refresh the guest image: {why}");
    }
    let bin = match e2e_tests::pjdfstest::binary() {
        Ok(bin) => bin,
        Err(why) => return Ok(Some(why)),
    };
    let work = e2e_tests::pjdfstest::profile_dir().join("pjdfstest-guest");
    let stage = work.join("extra");
    stage_extra(&bin, &stage)?;
    let initrd = qemu::extra_initramfs(&stage, "pjdfstest")?;

    let share_root = work.join("share");
    let _ = std::fs::remove_dir_all(&share_root);
    let (tree, store) = (share_root.join("tree"), share_root.join("store"));
    for dir in [&tree, &store] {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let mut share = GuestShare::redirect("fs0", &tree, &store, "vol");
    if let Ok(mode) = std::env::var("FSR_PJDFSTEST_SANDBOX") {
        share = share.daemon_args(&["--sandbox", &mode]);
    }
    let mount = share.mount_point();
    let serial = work.join("serial.log");
    let timeout = timeout()?;
    println!(
        "{PATH}: running pjdfstest in the guest on {mount} (redirecting share {}, back-end options {:?}); serial output in {} (limit {} s)",
        share.spec,
        share.daemon_args,
        serial.display(),
        timeout.as_secs()
    );
    let started = Instant::now();
    let run = QemuGuest::new("pjdfstest")
        .initrd(&initrd)
        .share(share.clone())
        .arg(&mount)
        .serial_file(&serial)
        .timeout(timeout)
        .run()
        .map_err(|e| format!("{PATH}: {e}"))?;
    let wall = started.elapsed();
    let context = || {
        format!(
            "guest serial output (last lines; all of it in {}):\n{}\ndaemon output:\n{}",
            serial.display(),
            run.serial_tail(40),
            run.daemon_logs()
        )
    };
    if !run.has_marker(&format!("@@fsr mount tag={} at={mount} ok", share.tag)) {
        return Err(format!(
            "the guest did not mount {}\n{}",
            share.tag,
            context()
        ));
    }
    if run.exit_code == MISSING_BINARY {
        return Err(format!(
            "the guest image {} has no /{GUEST_BINARY} (scenario exit code {MISSING_BINARY})\n{}",
            initrd.display(),
            context()
        ));
    }
    let Some(counts) = run.markers.iter().find_map(|m| parse_summary(m)) else {
        return Err(format!(
            "the pjdfstest scenario printed no summary (exit code {})\n{}",
            run.exit_code,
            context()
        ));
    };
    let failures: Vec<&str> = run
        .markers
        .iter()
        .filter_map(|m| m.strip_prefix("@@fsr pjdfstest failed-test "))
        .collect();
    println!(
        "{PATH}: pjdfstest on a redirecting share: {} passed, {} failed, {} skipped of {} ({} expected failures); guest run {:.0} s, test {:.0} s",
        counts.passed,
        counts.failed,
        counts.skipped,
        counts.total,
        counts.expected_failures,
        run.elapsed.as_secs_f64(),
        wall.as_secs_f64()
    );
    for failure in &failures {
        println!("  FAILED {failure}");
    }
    // The scenario passes exactly when nothing failed.
    let want_code = i32::from(counts.failed > 0);
    if run.exit_code != want_code {
        return Err(format!(
            "the scenario ended with code {}, not {want_code}, after {} failures\n{}",
            run.exit_code,
            counts.failed,
            context()
        ));
    }
    if run.exit_source != ExitSource::ExitPort {
        return Err(format!(
            "the guest's exit code came only from the marker, not the exit port\n{}",
            context()
        ));
    }
    if failures.len() != counts.failed {
        return Err(format!(
            "pjdfstest counted {} failures but the scenario named {}\n{}",
            counts.failed,
            failures.len(),
            context()
        ));
    }
    for daemon in &run.daemons {
        if !daemon.status.is_some_and(|s| s.success()) {
            return Err(format!(
                "the daemon did not exit 0 after QEMU went ({:?})\n{}",
                daemon.status,
                context()
            ));
        }
    }
    if counts.passed < MIN_PASSED || counts.failed > MAX_FAILED {
        return Err(format!(
            "pjdfstest below target: {} passed (want >= {MIN_PASSED}), {} failed (want <= {MAX_FAILED})",
            counts.passed, counts.failed
        ));
    }
    let share_spec = fsredirect::ShareSpec::parse(&share.spec).map_err(|e| e.to_string())?;
    let mismatches = fsredirect::verify::verify_share(&share_spec)
        .map_err(|e| format!("cannot verify the share: {e}"))?;
    if !mismatches.is_empty() {
        return Err(format!("stubs and stored objects disagree: {mismatches:?}"));
    }
    let _ = std::fs::remove_dir_all(&share_root);
    Ok(None)
}

/// The guest run's limit: `$FSR_PJDFSTEST_TIMEOUT` seconds, or the default.
fn timeout() -> Result<Duration, String> {
    match std::env::var("FSR_PJDFSTEST_TIMEOUT") {
        Ok(secs) => secs.trim().parse().map(Duration::from_secs).map_err(|_| {
            format!("FSR_PJDFSTEST_TIMEOUT={secs:?} is not a number of seconds (e.g. 900)")
        }),
        Err(_) => Ok(Duration::from_secs(DEFAULT_TIMEOUT_SECS)),
    }
}

/// Fills `stage` (emptied first) with what the guest needs to run `bin`:
/// the repository's files for the image, the binary, and its libraries.
fn stage_extra(bin: &Path, stage: &Path) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(stage);
    let files = qemu::workspace_root().join(IMAGE_FILES);
    copy_tree(&files, stage)?;
    copy_file(bin, &stage.join(GUEST_BINARY))?;
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .map_err(|e| format!("cannot run ldd (Debian package libc-bin): {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    for lib in parse_ldd(&text)? {
        let inside = lib
            .strip_prefix("/")
            .map_err(|_| format!("ldd named a relative path {}", lib.display()))?;
        copy_file(&lib, &stage.join(inside))?;
    }
    Ok(())
}

/// The libraries (and dynamic loader) in `ldd`'s output, as host paths.
fn parse_ldd(out: &str) -> Result<Vec<PathBuf>, String> {
    let mut libs = Vec::new();
    for line in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("not found") {
            return Err(format!("ldd cannot find a library of pjdfstest: {line}"));
        }
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        // The vDSO has no file; "statically linked" has no path either.
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// Parses `@@fsr pjdfstest summary passed=N failed=N skipped=N
/// expected_failures=N total=N`.
fn parse_summary(marker: &str) -> Option<Counts> {
    let rest = marker.strip_prefix("@@fsr pjdfstest summary ")?;
    let field = |name: &str| {
        rest.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
    };
    Some(Counts {
        passed: field("passed")?,
        failed: field("failed")?,
        skipped: field("skipped")?,
        expected_failures: field("expected_failures")?,
        total: field("total")?,
    })
}

/// Copies the regular files under `from` to the same places under `to`.
fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    let entries =
        std::fs::read_dir(from).map_err(|e| format!("cannot list {}: {e}", from.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", from.display()))?;
        let path = entry.path();
        let target = to.join(entry.file_name());
        if path.is_dir() {
            copy_tree(&path, &target)?;
        } else {
            copy_file(&path, &target)?;
        }
    }
    Ok(())
}

/// Copies `from` (following symbolic links) to `to`, creating its parents.
fn copy_file(from: &Path, to: &Path) -> Result<(), String> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| format!("cannot copy {} to {}: {e}", from.display(), to.display()))
}

/// The ldd and marker parsers on fixed inputs.
fn parsers_work() -> Result<(), String> {
    let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\
               \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f01)\n\
               \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f02)\n\
               \t/lib64/ld-linux-x86-64.so.2 (0x00007f03)\n";
    let libs = parse_ldd(ldd)?;
    let want = [
        "/lib/x86_64-linux-gnu/libgcc_s.so.1",
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib64/ld-linux-x86-64.so.2",
    ];
    if libs != want.map(PathBuf::from) {
        return Err(format!("parse_ldd gave {libs:?}"));
    }
    if parse_ldd("\tstatically linked\n")? != Vec::<PathBuf>::new() {
        return Err("a static binary has libraries?".into());
    }
    if parse_ldd("\tlibacl.so.1 => not found\n").is_ok() {
        return Err("a missing library was not reported".into());
    }
    let counts = parse_summary(
        "@@fsr pjdfstest summary passed=381 failed=1 skipped=16 expected_failures=0 total=398",
    );
    let want = Counts {
        passed: 381,
        failed: 1,
        skipped: 16,
        expected_failures: 0,
        total: 398,
    };
    if counts != Some(want) {
        return Err(format!("parse_summary gave {counts:?}"));
    }
    if parse_summary("@@fsr pjdfstest summary passed=1 failed=x").is_some() {
        return Err("a broken summary was accepted".into());
    }
    Ok(())
}
