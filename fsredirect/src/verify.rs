//! Offline check of a redirecting share: every stub agrees with its stored object.
//!
//! Run on a share no server is using (or between operations in tests). For each stub in the
//! guest tree: the stored object exists at the same path in the volume, is a regular file with
//! the stub's apparent size, is private (no setuid/setgid/exec bits), and the stub holds no data
//! extents. Each stored object must have a stub of the same path.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::meta::{Meta, META_XATTR_ROOT, META_XATTR_USER};
use crate::share::ShareSpec;

/// One disagreement between the guest tree and the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// A stub whose stored object is missing.
    MissingObject(PathBuf),
    /// Stub and stored object differ in size.
    SizeDiffers {
        /// Path relative to the share.
        path: PathBuf,
        /// The stub's apparent size.
        stub: u64,
        /// The stored object's size.
        object: u64,
    },
    /// The stub holds data extents (it should be entirely sparse).
    StubHasData(PathBuf),
    /// The stored object has setuid, setgid or exec bits, or is not a regular file.
    UnsafeObject(PathBuf),
    /// A stored object no stub names.
    StrayObject(PathBuf),
    /// Hard links of one stub whose stored objects are not hard links of one object.
    LinksDiffer {
        /// One name.
        path: PathBuf,
        /// Another name of the same stub.
        other: PathBuf,
    },
}

/// Checks `share`; returns every mismatch found (empty when all agree).
pub fn verify_share(share: &ShareSpec) -> io::Result<Vec<Mismatch>> {
    let volume = match share.volume_dir() {
        Some(v) => v,
        None => return Ok(Vec::new()),
    };
    let mut out = Vec::new();
    // Stub inode -> (first name seen, its object's inode).
    let mut links: std::collections::HashMap<u64, (PathBuf, u64)> = Default::default();
    walk(&share.dir, Path::new(""), &mut |rel, meta| {
        if !meta.file_type().is_file() {
            return Ok(());
        }
        let stub = share.dir.join(rel);
        if !matches!(read_meta(&stub)?, Some(Meta::Redirect { .. })) {
            return Ok(());
        }
        match fs::symlink_metadata(volume.join(rel)) {
            Err(_) => out.push(Mismatch::MissingObject(rel.to_path_buf())),
            Ok(obj) => {
                if meta.nlink() > 1 {
                    let first = links
                        .entry(meta.ino())
                        .or_insert_with(|| (rel.to_path_buf(), obj.ino()));
                    if first.1 != obj.ino() {
                        out.push(Mismatch::LinksDiffer {
                            path: rel.to_path_buf(),
                            other: first.0.clone(),
                        });
                    }
                }
                if !obj.file_type().is_file() || obj.mode() & 0o7111 != 0 {
                    out.push(Mismatch::UnsafeObject(rel.to_path_buf()));
                }
                if obj.len() != meta.len() {
                    out.push(Mismatch::SizeDiffers {
                        path: rel.to_path_buf(),
                        stub: meta.len(),
                        object: obj.len(),
                    });
                }
            }
        }
        if has_data(&stub)? {
            out.push(Mismatch::StubHasData(rel.to_path_buf()));
        }
        Ok(())
    })?;
    walk(&volume, Path::new(""), &mut |rel, meta| {
        if meta.file_type().is_file() {
            let stub = share.dir.join(rel);
            let named = fs::symlink_metadata(&stub).is_ok()
                && matches!(read_meta(&stub)?, Some(Meta::Redirect { .. }));
            if !named {
                out.push(Mismatch::StrayObject(rel.to_path_buf()));
            }
        }
        Ok(())
    })?;
    Ok(out)
}

fn walk(
    root: &Path,
    rel: &Path,
    f: &mut dyn FnMut(&Path, &fs::Metadata) -> io::Result<()>,
) -> io::Result<()> {
    for entry in fs::read_dir(root.join(rel))? {
        let entry = entry?;
        let rel = rel.join(entry.file_name());
        let meta = entry.metadata()?;
        f(&rel, &meta)?;
        if meta.file_type().is_dir() {
            walk(root, &rel, f)?;
        }
    }
    Ok(())
}

/// Reads the redirect metadata of the file at `path` (either spelling), if any.
pub fn read_meta(path: &Path) -> io::Result<Option<Meta>> {
    let p = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    for name in [META_XATTR_ROOT, META_XATTR_USER] {
        let mut buf = vec![0u8; 8192];
        // SAFETY: valid C strings and a writable buffer of the given length.
        let n = unsafe {
            libc::lgetxattr(
                p.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(Meta::decode(&buf).ok());
        }
    }
    Ok(None)
}

fn has_data(path: &Path) -> io::Result<bool> {
    let f = fs::File::open(path)?;
    // SAFETY: lseek on a descriptor we own.
    let res = unsafe { libc::lseek64(f.as_raw_fd(), 0, libc::SEEK_DATA) };
    if res >= 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ENXIO) {
        Ok(false)
    } else {
        Err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{FsConfig, RedirectFs};
    use fuse_backend_rs::api::filesystem::FileSystem;

    fn share(tmp: &Path) -> ShareSpec {
        fs::create_dir_all(tmp.join("g")).unwrap();
        ShareSpec::parse(&format!(
            "tag=t,dir={},store={}",
            tmp.join("g").display(),
            tmp.join("s").display()
        ))
        .unwrap()
    }

    #[test]
    fn fresh_share_verifies_clean() {
        let tmp = tempfile::tempdir().unwrap();
        let share = share(tmp.path());
        drop(RedirectFs::new(&share, FsConfig::default()).unwrap());
        assert_eq!(verify_share(&share).unwrap(), vec![]);
    }

    #[test]
    fn stray_store_object_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let share = share(tmp.path());
        drop(RedirectFs::new(&share, FsConfig::default()).unwrap());
        fs::write(tmp.path().join("s/t/stray"), b"x").unwrap();
        assert_eq!(
            verify_share(&share).unwrap(),
            vec![Mismatch::StrayObject("stray".into())]
        );
    }

    #[test]
    fn hard_links_not_mirrored_are_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let share = share(tmp.path());
        let fs = RedirectFs::new(&share, FsConfig::default()).unwrap();
        fs.init(fuse_backend_rs::abi::fuse_abi::FsOptions::empty())
            .unwrap();
        let ctx = fuse_backend_rs::api::filesystem::Context::new();
        let args = fuse_backend_rs::abi::fuse_abi::CreateIn {
            flags: libc::O_RDWR as u32,
            mode: libc::S_IFREG | 0o644,
            umask: 0,
            fuse_flags: 0,
        };
        let (entry, handle, _, _) = fs.create(&ctx, 1, c"a", args).unwrap();
        fs.release(&ctx, entry.inode, 0, handle.unwrap(), false, false, None)
            .unwrap();
        fs.link(&ctx, entry.inode, 1, c"b").unwrap();
        assert_eq!(verify_share(&share).unwrap(), vec![]);
        // Break the mirror: b's object becomes a copy instead of a link.
        fs::remove_file(tmp.path().join("s/t/b")).unwrap();
        fs::write(tmp.path().join("s/t/b"), b"").unwrap();
        let found = verify_share(&share).unwrap();
        assert_eq!(found.len(), 1);
        assert!(
            matches!(found[0], Mismatch::LinksDiffer { .. }),
            "{found:?}"
        );
    }

    #[test]
    fn shortened_object_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let share = share(tmp.path());
        let fs = RedirectFs::new(&share, FsConfig::default()).unwrap();
        fs.init(fuse_backend_rs::abi::fuse_abi::FsOptions::empty())
            .unwrap();
        let ctx = fuse_backend_rs::api::filesystem::Context::new();
        let args = fuse_backend_rs::abi::fuse_abi::CreateIn {
            flags: libc::O_RDWR as u32,
            mode: libc::S_IFREG | 0o644,
            umask: 0,
            fuse_flags: 0,
        };
        let (entry, handle, _, _) = fs.create(&ctx, 1, c"f", args).unwrap();
        fs.fallocate(&ctx, entry.inode, handle.unwrap(), 0, 0, 100)
            .unwrap();
        fs::File::options()
            .write(true)
            .open(tmp.path().join("s/t/f"))
            .unwrap()
            .set_len(10)
            .unwrap();
        assert_eq!(
            verify_share(&share).unwrap(),
            vec![Mismatch::SizeDiffers {
                path: "f".into(),
                stub: 100,
                object: 10
            }]
        );
    }
}
