//! Finding the files whose placement (inline in the guest tree, or redirected to the store)
//! disagrees with the share's [`crate::policy`]. Files move when they change
//! ([`crate::relocate`] moves them); this lists the ones that have not.

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::meta::{decoded_at, Meta};
use crate::share::ShareSpec;
use crate::verify::walk;

/// A regular file whose placement is not the one the share's policy asks for. Not an
/// error: files move when they change (see fsredirect/README.md), so a file with several
/// hard links, a file below a renamed directory or one untouched since the policy changed
/// may stay where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementNote {
    /// Path relative to the share.
    pub path: PathBuf,
    /// True if the file is redirected now (the policy would keep it inline), false if it is
    /// inline (the policy would redirect it).
    pub redirected: bool,
    /// The file's size.
    pub size: u64,
}

/// Lists the regular files of `share` whose placement disagrees with its policy (none for a
/// passthrough share). Special files are never redirected and are not listed.
pub fn placement_notes(share: &ShareSpec) -> io::Result<Vec<PlacementNote>> {
    let Some(store) = &share.store else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    walk(&share.dir, Path::new(""), &mut |rel, meta| {
        if !meta.is_file() {
            return Ok(());
        }
        let redirected = match decoded_at(&share.dir.join(rel))? {
            None => false,
            Some(Meta::Redirect { volume, .. }) if volume == store.volume.as_bytes() => true,
            Some(_) => return Ok(()),
        };
        let size = if redirected {
            fs::symlink_metadata(share.volume_dir().unwrap_or_default().join(rel))
                .map(|m| m.len())
                .unwrap_or(meta.len())
        } else {
            meta.len()
        };
        if store.policy.redirects(rel.as_os_str().as_bytes(), size) != redirected {
            out.push(PlacementNote {
                path: rel.to_path_buf(),
                redirected,
                size,
            });
        }
        Ok(())
    })?;
    Ok(out)
}
