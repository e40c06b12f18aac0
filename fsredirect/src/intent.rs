//! The intent log: before a namespace change touches both the guest tree and the store, a
//! small record of what is about to happen goes to `<store>/.fsredirect/<volume>/intent/`;
//! it is removed once both halves are done. After a crash, [`crate::recover`] reads the
//! records left behind and finishes or undoes each operation so that the store mirrors the
//! guest tree again.
//!
//! A record must be on disk before either half of its operation. Two ways:
//! - **journal order** (guest tree and store on one journaling file system): the record is
//!   an empty file whose content is an extended attribute, i.e. metadata only. The file
//!   system's journal writes metadata changes in the order they were made, so whatever
//!   half of the operation survives a power cut, the record (created before it) survives
//!   too, and its removal (after both halves) cannot survive without them. No sync.
//! - **synced** (anything else, or a record too large for an attribute): the record is the
//!   file's content, fdatasync'd before the operation starts.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::beneath::{check, open_beneath};
use crate::faults::{Hook, Namespace, StoreOp};

/// One logged operation. Paths are relative to the share (the common portion).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intent {
    /// A redirected file is being created at `path` (object first, then stub, then metadata).
    Create {
        /// The new file.
        path: Vec<u8>,
    },
    /// A hard link is being made at `path` (store first, then guest tree).
    Link {
        /// The new name.
        path: Vec<u8>,
    },
    /// The name `path` of a redirected file is being removed (guest tree first, then store).
    Unlink {
        /// The name going away.
        path: Vec<u8>,
    },
    /// `old` is being renamed to `new` (store first, then guest tree).
    Rename {
        /// The source name.
        old: Vec<u8>,
        /// The destination name.
        new: Vec<u8>,
        /// Host inode number of the source in the guest tree, to tell whether the guest-tree
        /// half happened (it is found at `new`).
        guest_ino: u64,
        /// The store entry (object or directory) that moves, from this path...
        store_from: Vec<u8>,
        /// ...to this one (both empty when nothing moves in the store).
        store_to: Vec<u8>,
        /// Its host inode number, to tell whether the store half happened.
        store_ino: u64,
        /// Orphan name under which an overwritten destination's object was set aside.
        aside: Vec<u8>,
        /// The store half is an exchange of two entries.
        exchange: bool,
    },
    /// The regular file at `path` is changing placement (inline to redirected or back, see
    /// [`crate::policy`]). While the stub carries redirect metadata the stored object is the
    /// file's data; once the metadata is gone the guest-tree file is.
    Place {
        /// The file.
        path: Vec<u8>,
        /// Host inode number of the file in the guest tree.
        guest_ino: u64,
    },
}

impl Intent {
    /// Encodes as NUL-separated fields: a kind letter, then the paths and numbers.
    pub fn encode(&self) -> Vec<u8> {
        let fields: Vec<Vec<u8>> = match self {
            Intent::Create { path } => vec![b"C".to_vec(), path.clone()],
            Intent::Link { path } => vec![b"L".to_vec(), path.clone()],
            Intent::Unlink { path } => vec![b"U".to_vec(), path.clone()],
            Intent::Place { path, guest_ino } => vec![
                b"P".to_vec(),
                path.clone(),
                guest_ino.to_string().into_bytes(),
            ],
            Intent::Rename {
                old,
                new,
                guest_ino,
                store_from,
                store_to,
                store_ino,
                aside,
                exchange,
            } => vec![
                b"R".to_vec(),
                old.clone(),
                new.clone(),
                guest_ino.to_string().into_bytes(),
                store_from.clone(),
                store_to.clone(),
                store_ino.to_string().into_bytes(),
                aside.clone(),
                vec![if *exchange { b'1' } else { b'0' }],
            ],
        };
        fields.join(&0u8)
    }

    /// Decodes a record; `None` if it is not one this version writes.
    pub fn decode(record: &[u8]) -> Option<Self> {
        let fields: Vec<&[u8]> = record.split(|&b| b == 0).collect();
        let num = |f: &[u8]| std::str::from_utf8(f).ok()?.parse::<u64>().ok();
        match fields.as_slice() {
            [b"C", path] => Some(Intent::Create {
                path: path.to_vec(),
            }),
            [b"L", path] => Some(Intent::Link {
                path: path.to_vec(),
            }),
            [b"U", path] => Some(Intent::Unlink {
                path: path.to_vec(),
            }),
            [b"P", path, guest_ino] => Some(Intent::Place {
                path: path.to_vec(),
                guest_ino: num(guest_ino)?,
            }),
            [b"R", old, new, guest_ino, store_from, store_to, store_ino, aside, exchange] => {
                Some(Intent::Rename {
                    old: old.to_vec(),
                    new: new.to_vec(),
                    guest_ino: num(guest_ino)?,
                    store_from: store_from.to_vec(),
                    store_to: store_to.to_vec(),
                    store_ino: num(store_ino)?,
                    aside: aside.to_vec(),
                    exchange: *exchange == b"1",
                })
            }
            _ => None,
        }
    }
}

/// The log directory of one volume.
#[derive(Debug)]
pub struct IntentLog {
    dir: OwnedFd,
    next: AtomicU64,
    hook: Hook,
    journal_ordered: AtomicBool,
}

/// The attribute holding a record written in journal order.
const RECORD_XATTR: &CStr = c"user.fsredirect.intent";

/// Largest record read back from an attribute.
const MAX_RECORD: usize = 64 * 1024;

/// An open record; dropping it marks the operation complete.
#[must_use = "the record is removed when this is dropped"]
pub struct Pending<'a> {
    log: &'a IntentLog,
    name: CString,
}

impl Pending<'_> {
    /// Leaves the record in the log: the operation's store half failed after its guest-tree
    /// half was done, so the next start's recovery must settle it.
    pub fn keep(self) {
        log::warn!(
            "intent record {:?} kept for the next start's recovery",
            self.name
        );
        std::mem::forget(self);
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.log.remove(&self.name) {
            log::warn!(
                "cannot remove intent record {:?} (recovery will settle it): {e}",
                self.name,
            );
        }
    }
}

impl IntentLog {
    /// Opens the log in directory `dir` (an open directory descriptor); every record
    /// written or removed is shown to `hook` first ([`crate::faults`]).
    pub fn new(dir: OwnedFd, hook: Hook) -> Self {
        IntentLog {
            dir,
            next: AtomicU64::new(0),
            hook,
            journal_ordered: AtomicBool::new(false),
        }
    }

    /// Chooses how records reach the disk (see the module docs): in journal order (`true`:
    /// only when the guest tree and the store share one journaling file system) or synced
    /// one by one (`false`, the default).
    pub fn set_journal_ordered(&self, on: bool) {
        self.journal_ordered.store(on, Ordering::Relaxed);
    }

    /// True if records are written in journal order, without a sync each.
    pub fn is_journal_ordered(&self) -> bool {
        self.journal_ordered.load(Ordering::Relaxed)
    }

    /// Writes and syncs a record of `intent` before the operation starts.
    pub fn begin(&self, intent: &Intent) -> io::Result<Pending<'_>> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let name = CString::new(format!("{n:016}"))
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        self.hook
            .check(&StoreOp::Namespace(Namespace::IntentRecord))?;
        let fd = open_beneath(
            &self.dir,
            &name,
            libc::O_CREAT | libc::O_TRUNC | libc::O_WRONLY,
            0o600,
        )?;
        let mut file = File::from(fd);
        let pending = Pending { log: self, name };
        let record = intent.encode();
        if self.is_journal_ordered() {
            // SAFETY: fsetxattr on a descriptor we own, with a NUL-terminated name and a
            // value buffer of the given length.
            let res = unsafe {
                libc::fsetxattr(
                    file.as_raw_fd(),
                    RECORD_XATTR.as_ptr(),
                    record.as_ptr().cast(),
                    record.len(),
                    0,
                )
            };
            if res == 0 {
                return Ok(pending);
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                // Too large for an attribute here, or no user attributes: synced content.
                Some(libc::E2BIG | libc::ENOSPC | libc::ERANGE | libc::EOPNOTSUPP) => {
                    log::debug!("intent record as an attribute refused ({err}); syncing it")
                }
                _ => return Err(err),
            }
        }
        let file_ref = &file;
        self.hook.check(&StoreOp::Write {
            file: file_ref,
            offset: 0,
            len: record.len(),
        })?;
        file.write_all(&record)?;
        // Enforced at namespace changes (docs/architecture.md#intent-records): the record is
        // on disk before either half of the operation.
        self.hook.check(&StoreOp::Sync {
            file: &file,
            data_only: true,
        })?;
        file.sync_data()?;
        Ok(pending)
    }

    /// Every record left behind, oldest first, with its name; records this version cannot
    /// read are reported as `None`.
    pub fn leftovers(&self) -> io::Result<Vec<(CString, Option<Intent>)>> {
        let dup = check(unsafe {
            // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own returns a new one.
            libc::fcntl(self.dir.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0)
        })?;
        // SAFETY: `dup` is a fresh descriptor owned by nobody else.
        let dup = unsafe { OwnedFd::from_raw_fd(dup) };
        let path = format!("/proc/self/fd/{}", dup.as_raw_fd());
        let mut names: Vec<CString> = std::fs::read_dir(&path)?
            .filter_map(|e| e.ok())
            .filter_map(|e| CString::new(e.file_name().into_encoded_bytes()).ok())
            .collect();
        names.sort();
        let mut out = Vec::new();
        for name in names {
            let mut file = File::from(open_beneath(&self.dir, &name, libc::O_RDONLY, 0)?);
            let mut record = vec![0u8; MAX_RECORD];
            // SAFETY: fgetxattr on a descriptor we own into a buffer of the given length.
            let n = unsafe {
                libc::fgetxattr(
                    file.as_raw_fd(),
                    RECORD_XATTR.as_ptr(),
                    record.as_mut_ptr().cast(),
                    record.len(),
                )
            };
            if n >= 0 {
                record.truncate(n as usize);
            } else {
                record.clear();
                file.read_to_end(&mut record)?;
            }
            out.push((name, Intent::decode(&record)));
        }
        Ok(out)
    }

    /// True if any record is left (a crash, or an operation whose store half failed).
    pub fn has_leftovers(&self) -> io::Result<bool> {
        Ok(!self.leftovers()?.is_empty())
    }

    /// Removes a record once recovery has dealt with it.
    pub fn remove(&self, name: &CStr) -> io::Result<()> {
        self.hook
            .check(&StoreOp::Namespace(Namespace::IntentDone))?;
        // SAFETY: one component under a directory fd we own.
        check(unsafe { libc::unlinkat(self.dir.as_raw_fd(), name.as_ptr(), 0) }).map(|_| ())
    }
}

/// True if `a` and `b` lie on one file system whose journal writes metadata in order
/// (ext4, xfs, btrfs; tmpfs keeps nothing across a power cut anyway), so that records can be
/// written in journal order. ext4 without a journal (or ext2 through the ext4 driver) has the
/// same magic number and is not told apart: such a store should not be used for crash safety.
pub fn shares_one_journal(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    const EXT4: i64 = 0xEF53;
    const XFS: i64 = 0x5846_5342;
    const BTRFS: i64 = 0x9123_683E;
    const TMPFS: i64 = 0x0102_1994;
    let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) else {
        return false;
    };
    if ma.dev() != mb.dev() {
        return false;
    }
    let Ok(dir) = File::open(b) else {
        return false;
    };
    let mut st = std::mem::MaybeUninit::<libc::statfs64>::zeroed();
    // SAFETY: fstatfs64 on a descriptor we own into a zeroed, writable buffer.
    if unsafe { libc::fstatfs64(dir.as_raw_fd(), st.as_mut_ptr()) } < 0 {
        return false;
    }
    // SAFETY: the call succeeded and filled the (zeroed) buffer.
    let st = unsafe { st.assume_init() };
    // `f_type` is an i64 here but narrower on some architectures.
    #[allow(clippy::unnecessary_cast)]
    let kind = st.f_type as i64;
    matches!(kind, EXT4 | XFS | BTRFS | TMPFS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log() -> (tempfile::TempDir, IntentLog) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = File::open(tmp.path()).unwrap();
        (tmp, IntentLog::new(OwnedFd::from(dir), Hook::default()))
    }

    #[test]
    fn rename_record_round_trips() {
        let intent = Intent::Rename {
            old: b"a/b".to_vec(),
            new: b"c".to_vec(),
            guest_ino: 12,
            store_from: b"a/b".to_vec(),
            store_to: b"c".to_vec(),
            store_ino: 34,
            aside: b"5-0".to_vec(),
            exchange: true,
        };
        assert_eq!(Intent::decode(&intent.encode()), Some(intent));
    }

    #[test]
    fn place_record_round_trips() {
        let intent = Intent::Place {
            path: b"d/f".to_vec(),
            guest_ino: 77,
        };
        assert_eq!(Intent::decode(&intent.encode()), Some(intent));
    }

    #[test]
    fn record_in_journal_order_is_read_back_from_its_attribute() {
        let (_tmp, log) = log();
        log.set_journal_ordered(true);
        let intent = Intent::Link {
            path: b"d/f".to_vec(),
        };
        std::mem::forget(log.begin(&intent).unwrap());
        let left = log.leftovers().unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].1, Some(intent));
    }

    #[test]
    fn record_too_large_for_an_attribute_falls_back_to_synced_content() {
        let (_tmp, log) = log();
        log.set_journal_ordered(true);
        // Four long paths: far beyond what one attribute block holds.
        let long = vec![b'x'; 4000];
        let intent = Intent::Rename {
            old: long.clone(),
            new: long.clone(),
            guest_ino: 1,
            store_from: long.clone(),
            store_to: long,
            store_ino: 2,
            aside: Vec::new(),
            exchange: false,
        };
        std::mem::forget(log.begin(&intent).unwrap());
        assert_eq!(log.leftovers().unwrap()[0].1, Some(intent));
    }

    #[test]
    fn garbage_record_is_not_an_intent() {
        assert_eq!(Intent::decode(b"X\0y"), None);
    }

    #[test]
    fn record_stays_while_operation_runs_and_goes_after() {
        let (_tmp, log) = log();
        let pending = log
            .begin(&Intent::Unlink {
                path: b"f".to_vec(),
            })
            .unwrap();
        let left = log.leftovers().unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(
            left[0].1,
            Some(Intent::Unlink {
                path: b"f".to_vec()
            })
        );
        drop(pending);
        assert!(log.leftovers().unwrap().is_empty());
    }

    #[test]
    fn leftovers_come_oldest_first() {
        let (_tmp, log) = log();
        let a = log
            .begin(&Intent::Create {
                path: b"a".to_vec(),
            })
            .unwrap();
        let b = log
            .begin(&Intent::Create {
                path: b"b".to_vec(),
            })
            .unwrap();
        std::mem::forget(a);
        std::mem::forget(b);
        let paths: Vec<_> = log
            .leftovers()
            .unwrap()
            .into_iter()
            .map(|(_, i)| i)
            .collect();
        assert_eq!(
            paths,
            vec![
                Some(Intent::Create {
                    path: b"a".to_vec()
                }),
                Some(Intent::Create {
                    path: b"b".to_vec()
                })
            ]
        );
    }
}
