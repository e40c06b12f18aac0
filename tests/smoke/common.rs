//! Host-side checks shared by the smoke tests: what a redirected file, its stub and its stored
//! object must look like on the host (docs/architecture.md#stub-metadata-and-object).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use fsredirect::meta::Meta;
use sha2::{Digest, Sha256};

/// The share's tag, volume and guest mount point in every smoke test.
pub const TAG: &str = "smoke";

/// A redirecting share as this host sees it.
#[derive(Debug, Clone)]
pub struct HostShare {
    /// Holds `tree/`, `store/` and the isolation test's `secret.txt`.
    pub base: PathBuf,
}

impl HostShare {
    /// The guest tree.
    pub fn tree(&self) -> PathBuf {
        self.base.join("tree")
    }

    /// The block store.
    pub fn store(&self) -> PathBuf {
        self.base.join("store")
    }

    /// The share's volume inside the store.
    pub fn volume(&self) -> PathBuf {
        self.store().join(TAG)
    }

    /// The file only the host may read, next to the guest tree.
    pub fn secret(&self) -> PathBuf {
        self.base.join("secret.txt")
    }
}

/// What [`HostShare::secret`] holds; the guest scenario fails if it ever reads it.
pub const SECRET: &[u8] = b"HOST-SECRET: the guest must never read this\n";

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Checks that `rel` (relative to the share root) is a redirected file holding `expected`:
/// the stored object at `<store>/<volume>/<rel>` has the same SHA-256 and a private mode; the
/// guest-tree file is a sparse stub of the same apparent size with no data extents, whose
/// metadata names the volume and `rel` as its common portion.
pub fn check_redirected(share: &HostShare, rel: &str, expected: &[u8]) -> Result<(), String> {
    check_object(share, rel, expected)?;
    check_stub(share, rel, expected.len() as u64)
}

/// The stored object of `rel`: same SHA-256 as `expected`, regular, mode 0600.
pub fn check_object(share: &HostShare, rel: &str, expected: &[u8]) -> Result<(), String> {
    let path = share.volume().join(rel);
    let meta = fs::symlink_metadata(&path)
        .map_err(|e| format!("stored object {}: {e}", path.display()))?;
    if !meta.file_type().is_file() {
        return Err(format!(
            "stored object {} is not a regular file",
            path.display()
        ));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode != 0o600 {
        return Err(format!(
            "stored object {} has mode {mode:o}, not the private 600",
            path.display()
        ));
    }
    let data = fs::read(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let (got, want) = (sha256_hex(&data), sha256_hex(expected));
    if got != want {
        return Err(format!(
            "stored object {} has SHA-256 {got} ({} bytes), expected {want} ({} bytes)",
            path.display(),
            data.len(),
            expected.len()
        ));
    }
    Ok(())
}

/// The guest-tree stub of `rel`: regular, apparent size `len`, no data extents, metadata naming
/// the volume and `rel`.
pub fn check_stub(share: &HostShare, rel: &str, len: u64) -> Result<(), String> {
    check_sparse(share, rel, len)?;
    let path = share.tree().join(rel);
    match read_meta(&path)? {
        Some(Meta::Redirect {
            volume, portion, ..
        }) if volume == TAG.as_bytes() && portion == rel.as_bytes() => Ok(()),
        other => Err(format!(
            "stub {} has metadata {other:?}, expected a redirect to volume {TAG} path {rel}",
            path.display()
        )),
    }
}

/// The guest-tree file of `rel` is regular, of apparent size `len`, without data extents.
pub fn check_sparse(share: &HostShare, rel: &str, len: u64) -> Result<(), String> {
    let path = share.tree().join(rel);
    let meta = fs::symlink_metadata(&path).map_err(|e| format!("stub {}: {e}", path.display()))?;
    if !meta.file_type().is_file() {
        return Err(format!("stub {} is not a regular file", path.display()));
    }
    if meta.len() != len {
        return Err(format!(
            "stub {} has apparent size {}, expected {len}",
            path.display(),
            meta.len()
        ));
    }
    if has_data_extents(&path)? {
        return Err(format!(
            "stub {} has data extents (lseek SEEK_DATA found data; st_blocks {})",
            path.display(),
            meta.blocks()
        ));
    }
    Ok(())
}

/// Neither the guest tree nor the store has `rel`.
pub fn check_absent(share: &HostShare, rel: &str) -> Result<(), String> {
    for path in [share.tree().join(rel), share.volume().join(rel)] {
        if fs::symlink_metadata(&path).is_ok() {
            return Err(format!("{} exists; it should be gone", path.display()));
        }
    }
    Ok(())
}

/// `fsredirect verify` on the share (the library function the command runs) reports nothing.
pub fn check_verify_clean(share: &HostShare) -> Result<(), String> {
    let spec = format!(
        "tag={TAG},dir={},store={}",
        share.tree().display(),
        share.store().display()
    );
    let spec = fsredirect::ShareSpec::parse(&spec).map_err(|e| format!("share {spec}: {e}"))?;
    let found = fsredirect::verify::verify_share(&spec)
        .map_err(|e| format!("fsredirect verify on {}: {e}", share.base.display()))?;
    if found.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "fsredirect verify reports {} disagreement(s): {found:?}",
            found.len()
        ))
    }
}

/// The redirect metadata of `path`, if it has any (the host tools' own reader).
pub fn read_meta(path: &Path) -> Result<Option<Meta>, String> {
    match fsredirect::meta::read_path(path) {
        Ok(None) => Ok(None),
        Ok(Some((_, decoded))) => decoded
            .map(Some)
            .map_err(|e| format!("metadata of {}: {e}", path.display())),
        Err(e) => Err(format!("reading the metadata of {}: {e}", path.display())),
    }
}

/// True if `path` has any data extent (`lseek(SEEK_DATA, 0)` does not fail with ENXIO).
pub fn has_data_extents(path: &Path) -> Result<bool, String> {
    use std::os::fd::AsRawFd;
    let file = fs::File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    // SAFETY: lseek on a descriptor we own; no memory is involved.
    let off = unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_DATA) };
    if off >= 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENXIO) {
        Ok(false)
    } else {
        Err(format!("lseek SEEK_DATA on {}: {e}", path.display()))
    }
}

/// Every regular file under `dir`, as paths relative to it.
pub fn regular_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let here = dir.join(&rel);
        let entries = fs::read_dir(&here).map_err(|e| format!("list {}: {e}", here.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("list {}: {e}", here.display()))?;
            let kind = entry
                .file_type()
                .map_err(|e| format!("stat {}: {e}", entry.path().display()))?;
            let child = rel.join(entry.file_name());
            if kind.is_dir() {
                stack.push(child);
            } else if kind.is_file() {
                out.push(child);
            }
        }
    }
    out.sort();
    Ok(out)
}
