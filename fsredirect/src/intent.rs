//! The intent log: before a namespace change touches both the guest tree and the store, a
//! small record of what is about to happen goes to `<store>/.fsredirect/<volume>/intent/`;
//! it is removed once both halves are done. After a crash, [`crate::recover`] reads the
//! records left behind and finishes or undoes each operation so that the store mirrors the
//! guest tree again.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

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
}

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
        }
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
        let file_ref = &file;
        self.hook.check(&StoreOp::Write {
            file: file_ref,
            offset: 0,
            len: record.len(),
        })?;
        file.write_all(&record)?;
        // Enforced at namespace changes (DESIGN.md section 4): the record is on disk before
        // either half of the operation.
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
            let mut record = Vec::new();
            File::from(open_beneath(&self.dir, &name, libc::O_RDONLY, 0)?)
                .read_to_end(&mut record)?;
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
