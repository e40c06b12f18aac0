//! Guest-tree access for the host tools: files are reached beneath the guest tree's root
//! without following any symlink (the guest made them), and only regular files are opened
//! for I/O; metadata and the guest's own attributes are read and written on descriptors.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use crate::beneath::{check, fstat, open_beneath, ProcSelfFd};
use crate::meta::{get_xattr, is_reserved_xattr, set_xattr};

/// The guest tree of a share, held open.
#[derive(Debug)]
pub struct GuestTree {
    root: OwnedFd,
    proc: ProcSelfFd,
}

impl GuestTree {
    /// Opens the guest tree at `dir`.
    pub fn open(dir: &Path) -> io::Result<Self> {
        Ok(GuestTree {
            root: File::open(dir)?.into(),
            proc: ProcSelfFd::open()?,
        })
    }

    /// An `O_PATH` descriptor on `rel` (not following a symlink anywhere on the way).
    pub fn path_fd(&self, rel: &Path) -> io::Result<OwnedFd> {
        open_beneath(&self.root, &c_path(rel)?, libc::O_PATH, 0)
    }

    /// Opens the regular file `rel` with `flags` (never a FIFO or device).
    pub fn open_regular(&self, rel: &Path, flags: i32) -> io::Result<File> {
        self.reopen_regular(&self.path_fd(rel)?, flags)
    }

    /// Reopens the regular file behind the `O_PATH` descriptor `fd` with `flags`.
    pub fn reopen_regular(&self, fd: &OwnedFd, flags: i32) -> io::Result<File> {
        self.proc.reopen_regular(fd, flags)
    }

    /// The directory holding `rel`, opened for `*at` calls, and `rel`'s last component.
    pub fn parent(&self, rel: &Path) -> io::Result<(File, CString)> {
        let name = rel
            .file_name()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let dir = match rel.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(p) => open_beneath(
                &self.root,
                &c_path(p)?,
                libc::O_RDONLY | libc::O_DIRECTORY,
                0,
            )?,
            None => open_beneath(&self.root, c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?,
        };
        Ok((File::from(dir), c_path(Path::new(name))?))
    }
}

/// `path` as a C string.
pub fn c_path(path: &Path) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Copies the guest's own extended attributes (not the redirect metadata) from `from` to
/// `to`. ACLs and security labels are attributes too, so they follow.
pub fn copy_guest_xattrs(from: &File, to: &File) -> io::Result<()> {
    let mut list = vec![0u8; 64 * 1024];
    // SAFETY: a valid descriptor and a writable buffer of that length.
    let n = unsafe { libc::flistxattr(from.as_raw_fd(), list.as_mut_ptr().cast(), list.len()) };
    if n < 0 {
        let err = io::Error::last_os_error();
        // A file system without attributes has none to copy.
        return if err.raw_os_error() == Some(libc::ENOTSUP) {
            Ok(())
        } else {
            Err(err)
        };
    }
    list.truncate(n as usize);
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if is_reserved_xattr(name) {
            continue;
        }
        let name = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        if let Some(value) = get_xattr(from, &name)? {
            set_xattr(to, &name, &value)?;
        }
    }
    Ok(())
}

/// Gives `to` the owner, mode and access/modification times of the file `st` describes.
/// The owner is changed only when it differs (an unprivileged user can only keep its own).
pub fn copy_owner_mode_times(to: &File, st: &libc::stat64) -> io::Result<()> {
    let now = fstat(to)?;
    if (now.st_uid, now.st_gid) != (st.st_uid, st.st_gid) {
        // SAFETY: fchown on a descriptor we own.
        check(unsafe { libc::fchown(to.as_raw_fd(), st.st_uid, st.st_gid) })?;
    }
    // After the chown, which clears set-user-ID and set-group-ID bits.
    // SAFETY: fchmod on a descriptor we own.
    check(unsafe { libc::fchmod(to.as_raw_fd(), st.st_mode & 0o7777) })?;
    set_times(to, st)
}

/// Sets the access and modification times of `f` to those `st` records.
pub fn set_times(f: &File, st: &libc::stat64) -> io::Result<()> {
    let times = [
        libc::timespec {
            tv_sec: st.st_atime,
            tv_nsec: st.st_atime_nsec,
        },
        libc::timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec,
        },
    ];
    // SAFETY: futimens on a descriptor we own, with a two-element timespec array.
    check(unsafe { libc::futimens(f.as_raw_fd(), times.as_ptr()) }).map(|_| ())
}

/// Sets the apparent size of a stub and punches out any data it holds (keeping it entirely
/// sparse), keeping its access and modification times; then fsyncs it. When the size does
/// not change, it never changes on the way either (a crash cannot leave a shorter stub).
pub fn resize_stub(stub: &File, size: u64) -> io::Result<()> {
    let st = fstat(stub)?;
    if st.st_size as u64 != size {
        stub.set_len(size)?;
    }
    if let Err(err) = crate::relocate::punch_data(stub) {
        if err.raw_os_error() != Some(libc::EOPNOTSUPP) {
            return Err(err);
        }
        // No hole punching here: cutting to zero drops every block.
        stub.set_len(0)?;
        stub.set_len(size)?;
    }
    set_times(stub, &st)?;
    stub.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn symlink_in_the_guest_tree_is_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", tmp.path().join("link")).unwrap();
        let tree = GuestTree::open(tmp.path()).unwrap();
        assert!(tree.path_fd(Path::new("link/passwd")).is_err());
        assert!(tree
            .open_regular(Path::new("link"), libc::O_RDONLY)
            .is_err());
    }

    #[test]
    fn resized_stub_keeps_no_data_and_its_mtime() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("f"), b"some bytes").unwrap();
        let before = std::fs::metadata(tmp.path().join("f")).unwrap();
        let tree = GuestTree::open(tmp.path()).unwrap();
        let f = tree.open_regular(Path::new("f"), libc::O_WRONLY).unwrap();
        resize_stub(&f, 100).unwrap();
        let after = std::fs::metadata(tmp.path().join("f")).unwrap();
        assert_eq!(after.len(), 100);
        assert_eq!(after.blocks(), 0);
        assert_eq!(after.mtime(), before.mtime());
        assert_eq!(after.mtime_nsec(), before.mtime_nsec());
    }

    #[test]
    fn guest_xattrs_are_copied_but_not_metadata() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("a"), b"").unwrap();
        std::fs::write(tmp.path().join("b"), b"").unwrap();
        let tree = GuestTree::open(tmp.path()).unwrap();
        let a = tree.open_regular(Path::new("a"), libc::O_RDONLY).unwrap();
        let b = tree.open_regular(Path::new("b"), libc::O_RDONLY).unwrap();
        if set_xattr(&a, c"user.colour", b"blue").is_err() {
            eprintln!("skipped: this file system takes no user xattrs");
            return;
        }
        set_xattr(
            &a,
            crate::meta::META_XATTR_USER,
            &crate::meta::Meta::redirect(b"v", b"a").encode(),
        )
        .unwrap();
        copy_guest_xattrs(&a, &b).unwrap();
        assert_eq!(
            get_xattr(&b, c"user.colour").unwrap().as_deref(),
            Some(&b"blue"[..])
        );
        assert_eq!(get_xattr(&b, crate::meta::META_XATTR_USER).unwrap(), None);
    }
}
