//! One server per guest tree, whatever its store: a server (the VMM's share, the vhost-user
//! back-end, `fsredirect mount`) holds an exclusive `flock` on the guest tree's root directory
//! for as long as it serves it, and the host tools hold it while they look (shared) or change
//! (exclusive) the tree. The volume lock in the store ([`crate::store`]) cannot do this alone:
//! a second server given another store, or none, would not see it, and would serve redirected
//! files as zeros and put data into stubs.
//!
//! The lock lives on the directory itself, so nothing is added to the guest's tree, and it
//! goes away with the process that held it, however it ended.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Errors taking the guest-tree lock.
#[derive(Debug, thiserror::Error)]
pub enum TreeLockError {
    /// Another process holds the lock.
    #[error(
        "guest tree {dir} is in use by another server{holder}: one server per guest tree, \
         whatever its store; stop that one first"
    )]
    Busy {
        /// The guest tree.
        dir: PathBuf,
        /// ", pid N" when the holder is known, else empty.
        holder: String,
    },
    /// Read-only tools hold the lock (shared), and this holder wants it exclusively.
    #[error(
        "guest tree {dir} is being read by another fsredirect tool (inspect or verify{holder}); \
         run this command again when it has finished"
    )]
    Reading {
        /// The guest tree.
        dir: PathBuf,
        /// ", pid N" when the holder is known, else empty.
        holder: String,
    },
    /// The guest tree cannot be opened or locked.
    #[error("cannot lock guest tree {dir}")]
    Lock {
        /// The guest tree.
        dir: PathBuf,
        /// What the host said.
        #[source]
        source: io::Error,
    },
}

/// How a holder uses the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// A server, or a tool that changes the tree: nobody else at the same time.
    Exclusive,
    /// A tool that only reads: beside other readers, never beside a server.
    Shared,
}

/// Takes the lock of the guest tree open as `dir` (a directory descriptor, kept by the caller
/// for as long as it needs the lock: closing it releases the lock). `path` names the tree in
/// messages.
pub fn lock(dir: &File, path: &Path, mode: LockMode) -> Result<(), TreeLockError> {
    let op = match mode {
        LockMode::Exclusive => libc::LOCK_EX,
        LockMode::Shared => libc::LOCK_SH,
    };
    // SAFETY: flock on a descriptor the caller owns; no memory is involved.
    if unsafe { libc::flock(dir.as_raw_fd(), op | libc::LOCK_NB) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
        return Err(TreeLockError::Lock {
            dir: path.to_path_buf(),
            source: err,
        });
    }
    let readers_only = mode == LockMode::Exclusive && shareable(path);
    let holders: Vec<String> = lock_holders(path)
        .into_iter()
        .filter(|(pid, _)| *pid != std::process::id())
        .map(|(pid, _)| pid.to_string())
        .collect();
    let dir = path.to_path_buf();
    if readers_only {
        let holder = match holders.len() {
            0 => String::new(),
            _ => format!(", pid {}", holders.join(", ")),
        };
        return Err(TreeLockError::Reading { dir, holder });
    }
    let holder = match holders.len() {
        0 => String::new(),
        1 => format!(" (pid {})", holders[0]),
        _ => format!(" (pids {})", holders.join(", ")),
    };
    Err(TreeLockError::Busy { dir, holder })
}

/// True if the lock of the tree at `path` can be shared right now: whoever holds it only
/// reads (a server holds it exclusively).
fn shareable(path: &Path) -> bool {
    let Ok(probe) = File::open(path) else {
        return false;
    };
    // SAFETY: flock on a descriptor we own; closing it (on return) drops the probe.
    unsafe { libc::flock(probe.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) == 0 }
}

/// Opens the guest tree at `path` and takes its lock; the lock lasts as long as the returned
/// descriptor.
pub fn open_locked(path: &Path, mode: LockMode) -> Result<File, TreeLockError> {
    let dir = File::open(path).map_err(|source| TreeLockError::Lock {
        dir: path.to_path_buf(),
        source,
    })?;
    lock(&dir, path, mode)?;
    Ok(dir)
}

/// The processes holding a `flock` on `path`, from `/proc/locks`: (pid, exclusive). Best
/// effort, for messages only: the kernel lists locks a page at a time, so an entry can be
/// missed while other locks come and go.
pub fn lock_holders(path: &Path) -> Vec<(u32, bool)> {
    use std::os::unix::fs::MetadataExt;
    let (Ok(meta), Ok(locks)) = (
        std::fs::metadata(path),
        std::fs::read_to_string("/proc/locks"),
    ) else {
        return Vec::new();
    };
    let (major, minor) = (libc::major(meta.dev()), libc::minor(meta.dev()));
    let wanted = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    locks
        .lines()
        .filter_map(|line| {
            // `1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234 0 EOF`; waiters have a `->`.
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [_, "FLOCK", _, kind, pid, dev, ..] if *dev == wanted => {
                    Some((pid.parse().ok()?, *kind == "WRITE"))
                }
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_exclusive_holder_is_refused_with_the_tree_named() {
        let tmp = tempfile::tempdir().unwrap();
        let _first = open_locked(tmp.path(), LockMode::Exclusive).unwrap();
        let err = open_locked(tmp.path(), LockMode::Exclusive).unwrap_err();
        assert!(matches!(err, TreeLockError::Busy { .. }), "{err}");
        assert!(err.to_string().contains(&tmp.path().display().to_string()));
        assert!(open_locked(tmp.path(), LockMode::Shared).is_err());
    }

    #[test]
    fn readers_share_and_exclude_a_server() {
        let tmp = tempfile::tempdir().unwrap();
        let a = open_locked(tmp.path(), LockMode::Shared).unwrap();
        let _b = open_locked(tmp.path(), LockMode::Shared).unwrap();
        assert!(open_locked(tmp.path(), LockMode::Exclusive).is_err());
        drop(a);
        drop(_b);
        assert!(open_locked(tmp.path(), LockMode::Exclusive).is_ok());
    }

    #[test]
    fn lock_ends_with_its_descriptor() {
        let tmp = tempfile::tempdir().unwrap();
        drop(open_locked(tmp.path(), LockMode::Exclusive).unwrap());
        assert!(open_locked(tmp.path(), LockMode::Exclusive).is_ok());
    }
}
