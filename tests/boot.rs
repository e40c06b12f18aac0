//! Boot tests of the real `hypervisor` binary: directly on a hardware-virtualization host,
//! inside the emulated VT-x test host (bochs) elsewhere; the output says which.
//!
//! 1. Build (or reuse) the test host image with guest-images/build-testhost.sh.
//! 2. Boot it once and run the standard batch: a chosen exit code becomes the VMM's exit code;
//!    2 vCPUs are online in the guest; a guest reboot ends the VM with code 0; a line written
//!    to the VMM's standard input reaches the guest's console.
//! 3. In the test host, the same boot also runs a virtio-fs share on the share disk: fs-basic
//!    on an emptied tree and store, then fs-readback in a second VMM run; and fs-basic on a
//!    share of its own with the VMM in `--sandbox namespace`, its requests served by a pool
//!    of two threads (`--fs-thread-pool-size 2`); and fs-basic again with the VMM run as
//!    `nobody` in `--sandbox namespace` (inside a user namespace of its own).
//! 4. Judge each scenario from the marker lines on the serial console; then read the stored
//!    file from the share disk image on the host.
//!
//! Run with the flags the test host's static binaries are built with, so both builds share
//! their artifacts:
//! `RUSTFLAGS="-C target-feature=+crt-static" cargo test --release --target x86_64-unknown-linux-gnu -p e2e-tests --test boot`.

use e2e_tests::testhost::trials::{trials_with_checks, HostCheck};
use e2e_tests::testhost::{
    self, HostKind, RunOptions, SANDBOXED_STORE, SHARE_STORE, UNPRIVILEGED_STORE,
};

/// What fs-basic and then fs-readback leave in `renamed.txt`.
const RENAMED_TXT: &str = "hello from the guest\nappended\nsecond boot\n";
/// What fs-basic alone leaves there.
const RENAMED_BY_FS_BASIC: &str = "hello from the guest\nappended\n";

fn main() {
    let args = libtest_mimic::Arguments::from_args();
    let opts = RunOptions::default();
    let in_test_host = HostKind::detect() == HostKind::NoHardwareVirt
        || std::env::var_os("FSR_FORCE_TESTHOST").is_some_and(|v| v == "1");
    let mut batch = testhost::boot_scenarios();
    let mut checks: Vec<(String, HostCheck)> = Vec::new();
    if in_test_host {
        // The share scenarios use the test host's share disk; on a hardware-virtualization
        // host the share tests of tests/ cover the device instead.
        batch.extend(testhost::share_scenarios());
        batch.push(testhost::sandboxed_share_scenario());
        batch.push(testhost::unprivileged_share_scenario());
        checks.push(store_file_check(
            "share-store-readable-on-host",
            &opts,
            format!("{SHARE_STORE}/share0/fs-basic/renamed.txt"),
            RENAMED_TXT,
        ));
        checks.push(store_file_check(
            "sandboxed-share-store-readable-on-host",
            &opts,
            format!("{SANDBOXED_STORE}/share0/fs-basic/renamed.txt"),
            RENAMED_BY_FS_BASIC,
        ));
        checks.push(store_file_check(
            "not-root-share-store-readable-on-host",
            &opts,
            format!("{UNPRIVILEGED_STORE}/share0/fs-basic/renamed.txt"),
            RENAMED_BY_FS_BASIC,
        ));
    }
    let tests = trials_with_checks("testhost", batch, opts, checks);
    libtest_mimic::run(&args, tests).exit();
}

/// A check, after the batch, that `path` on the test host's share disk holds `expected`.
fn store_file_check(
    name: &str,
    opts: &RunOptions,
    path: String,
    expected: &'static str,
) -> (String, HostCheck) {
    let paths = opts.paths.clone();
    let check: HostCheck = Box::new(move |_report| {
        let bytes = testhost::read_share_disk_file(&paths, &path).map_err(|e| e.to_string())?;
        if bytes == expected.as_bytes() {
            Ok(())
        } else {
            Err(format!(
                "{path} on the share disk holds {:?}, expected {expected:?}",
                String::from_utf8_lossy(&bytes)
            ))
        }
    });
    (name.to_owned(), check)
}
