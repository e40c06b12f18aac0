//! Smoke test 1, boot and write: the guest stores files of every size class, and the host
//! finds each one redirected.
//!
//! 1. Boot the guest on a fresh redirecting share (tag `smoke`); its `smoke-write` scenario
//!    (guest-images/guest/scenarios/smoke-write.sh) writes, under `smoke/`, an empty file, a
//!    small file, 64 MiB of a reproducible stream (`fsr-pattern`, seed 64), 1000 small files
//!    and a nested tree, reads each back after dropping its caches, and passes.
//! 2. On the host, for every file: the stored object at `<store>/smoke/smoke/<path>` has the
//!    SHA-256 of what the guest wrote (computed here from the same generator, not read from
//!    the guest) and mode 600.
//! 3. Each guest-tree file is a sparse stub (no data extents) of the right apparent size whose
//!    metadata names volume `smoke` and its path as the common portion.
//! 4. The empty directory exists in the guest tree, and nothing else is stored.
//! 5. `fsredirect verify` reports nothing.

use super::common::{self, HostShare};
use e2e_tests::pattern::pattern;

/// The guest scenario of this test.
pub const SCENARIO: &str = "smoke-write";

/// Size and seed of `smoke/big.bin` (as in smoke-write.sh).
const BIG: (usize, u64) = (64 << 20, 64);

/// Every file smoke-write leaves, relative to the share root, with its contents.
pub fn expected_files() -> Vec<(String, Vec<u8>)> {
    let mut files = vec![
        ("smoke/empty.txt".to_owned(), Vec::new()),
        (
            "smoke/small.txt".to_owned(),
            b"small file from the guest\n".to_vec(),
        ),
        ("smoke/big.bin".to_owned(), pattern(BIG.1, BIG.0)),
        ("smoke/tree/a/b/c/d/deep.txt".to_owned(), b"deep\n".to_vec()),
        ("smoke/tree/a/one.txt".to_owned(), b"one\n".to_vec()),
        ("smoke/tree/x/y/two.txt".to_owned(), b"two\n".to_vec()),
    ];
    for n in 0..1000 {
        files.push((
            format!("smoke/many/f{n:03}"),
            format!("file {n:03}\n").into_bytes(),
        ));
    }
    files
}

/// Steps 2-5 on `share`, after the guest passed step 1. Returns a one-line summary.
pub fn check(share: &HostShare) -> Result<String, String> {
    let files = expected_files();
    for (rel, contents) in &files {
        common::check_redirected(share, rel, contents)?;
    }
    let empty_dir = share.tree().join("smoke/tree/empty-dir");
    if !empty_dir.is_dir() {
        return Err(format!("{} is not a directory", empty_dir.display()));
    }
    let stored = common::regular_files(&share.volume().join("smoke"))?;
    if stored.len() != files.len() {
        return Err(format!(
            "the store holds {} objects under smoke/, expected {}",
            stored.len(),
            files.len()
        ));
    }
    common::check_verify_clean(share)?;
    let bytes: usize = files.iter().map(|(_, c)| c.len()).sum();
    Ok(format!(
        "{} files ({bytes} bytes) stored with matching SHA-256; every stub sparse with its \
         metadata; verify clean",
        files.len()
    ))
}
