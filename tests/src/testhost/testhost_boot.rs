//! Boot tests of the real `hypervisor` binary: directly on a hardware-virtualization host,
//! inside the emulated VT-x test host (bochs) elsewhere; the output says which.
//!
//! 1. Build (or reuse) the test host image with guest-images/build-testhost.sh.
//! 2. Boot it once and run the standard batch: a chosen exit code becomes the VMM's exit code;
//!    2 vCPUs are online in the guest; a guest reboot ends the VM with code 0; a line written
//!    to the VMM's standard input reaches the guest's console.
//! 3. Judge each scenario from the marker lines on the serial console.
//!
//! Build the binaries statically for the same target first, so the ones next to this test are
//! the ones the test host carries:
//! `RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target x86_64-unknown-linux-gnu --workspace --bins`
//! then the same flags with `cargo test --release --target x86_64-unknown-linux-gnu -p e2e-tests --test testhost_boot`.

use e2e_tests::testhost::{self, trials::trials, RunOptions};

fn main() {
    let args = libtest_mimic::Arguments::from_args();
    let tests = trials("boot", testhost::boot_scenarios(), RunOptions::default());
    libtest_mimic::run(&args, tests).exit();
}
