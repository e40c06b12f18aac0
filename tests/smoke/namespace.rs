//! Smoke test 3, namespace operations from the guest, each mirrored in the store.
//!
//! 1. The guest's `smoke-namespace` scenario (guest-images/guest/scenarios/smoke-namespace.sh)
//!    works in `ns/`: renames a file, renames a file over another, renames a directory with a
//!    file below it, hard-links a file (and appends through the link), unlinks a file and a
//!    third hard link, truncates a 300000-byte file to 1000 bytes, extends a 3-byte file to
//!    100000 bytes, and reads an unlinked file through a descriptor opened before; it checks
//!    each step in the guest and passes.
//! 2. On the host, each surviving name is a redirected file at the same path in the guest
//!    tree and in the store, with the expected bytes (SHA-256) and a sparse stub.
//! 3. The two hard links are one inode in the guest tree and one object in the store.
//! 4. No old name is left on either side (renamed-away sources, the old directory, unlinked
//!    files), and the orphan area holds nothing once the unlinked open file was closed.
//! 5. `fsredirect verify` reports nothing.

use std::fs;
use std::os::unix::fs::MetadataExt;

use super::common::{self, HostShare, TAG};
use e2e_tests::pattern::pattern;

/// The guest scenario of this test.
pub const SCENARIO: &str = "smoke-namespace";

/// What `ns/` holds after the scenario, relative to the share root.
fn expected_files() -> Vec<(&'static str, Vec<u8>)> {
    let mut grown = b"abc".to_vec();
    grown.resize(100_000, 0);
    vec![
        ("ns/moved.txt", b"moved\n".to_vec()),
        ("ns/target.txt", b"overwriter\n".to_vec()),
        ("ns/dir2/sub/f.txt", b"inner\n".to_vec()),
        ("ns/link1", b"linked\nmore\n".to_vec()),
        ("ns/link2", b"linked\nmore\n".to_vec()),
        ("ns/shrunk.bin", pattern(3, 1000)),
        ("ns/grown.txt", grown),
    ]
}

/// Names that must be gone from both sides.
const GONE: &[&str] = &[
    "ns/source.txt",
    "ns/overwriter.txt",
    "ns/dir1",
    "ns/gone.txt",
    "ns/link3",
    "ns/open.txt",
];

/// Steps 2-5 on `share`, after the guest passed step 1.
pub fn check(share: &HostShare) -> Result<String, String> {
    let files = expected_files();
    for (rel, contents) in &files {
        common::check_object(share, rel, contents)?;
        // A hard-linked stub's metadata names one of its links, not necessarily this one
        // (docs/architecture.md#namespace-operations), so check_hard_links checks theirs.
        if rel.starts_with("ns/link") {
            common::check_sparse(share, rel, contents.len() as u64)?;
        } else {
            common::check_stub(share, rel, contents.len() as u64)?;
        }
    }
    check_hard_links(share)?;
    for rel in GONE {
        common::check_absent(share, rel)?;
    }
    let orphans = share.store().join(".fsredirect").join(TAG).join("orphans");
    if let Ok(entries) = fs::read_dir(&orphans) {
        let left: Vec<_> = entries.flatten().map(|e| e.file_name()).collect();
        if !left.is_empty() {
            return Err(format!("{} still holds {left:?}", orphans.display()));
        }
    }
    common::check_verify_clean(share)?;
    Ok(format!(
        "{} files mirrored with matching SHA-256, hard links shared on both sides, {} old \
         names gone, no orphans; verify clean",
        files.len(),
        GONE.len()
    ))
}

/// Step 3: `ns/link1` and `ns/link2` are one inode in the tree and one object in the store,
/// and the stub's metadata names one of them.
fn check_hard_links(share: &HostShare) -> Result<(), String> {
    for side in [share.tree(), share.volume()] {
        let a = fs::metadata(side.join("ns/link1")).map_err(|e| e.to_string())?;
        let b = fs::metadata(side.join("ns/link2")).map_err(|e| e.to_string())?;
        if a.ino() != b.ino() || a.nlink() != 2 {
            return Err(format!(
                "under {}, ns/link1 and ns/link2 are inodes {} and {} with {} links; expected \
                 one inode with 2 links",
                side.display(),
                a.ino(),
                b.ino(),
                a.nlink()
            ));
        }
    }
    let stub = share.tree().join("ns/link1");
    match common::read_meta(&stub)? {
        Some(fsredirect::meta::Meta::Redirect { portion, .. })
            if portion == b"ns/link1" || portion == b"ns/link2" =>
        {
            Ok(())
        }
        other => Err(format!(
            "the hard-linked stub's metadata is {other:?}, expected a redirect naming ns/link1 \
             or ns/link2"
        )),
    }
}
