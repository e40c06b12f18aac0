//! Smoke test 2, persistence: what the guest stored survives into its next boot.
//!
//! 1. After test 1, boot the guest again on the same share (a new VMM process); its
//!    `smoke-read` scenario (guest-images/guest/scenarios/smoke-read.sh) checks every file
//!    against the SHA-256 list the first boot recorded (`smoke.sha256`, made from the bytes
//!    read back through the device), and `big.bin` against its generator, and passes.
//! 2. On the host, every stored object and stub is still as test 1 found it (the same checks),
//!    and `fsredirect verify` reports nothing.

use super::boot_and_write;
use super::common::HostShare;

/// The guest scenario of this test (after [`boot_and_write::SCENARIO`]).
pub const SCENARIO: &str = "smoke-read";

/// Step 2 on `share`, after the guest passed step 1.
pub fn check(share: &HostShare) -> Result<String, String> {
    boot_and_write::check(share)
        .map(|summary| format!("second boot read every file back; host: {summary}"))
}
