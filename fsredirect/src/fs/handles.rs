//! The guest's open files: what each FUSE handle stands for, and what the server holds for
//! a redirected file while the guest has it open (its store object, and the stub and object
//! of a file whose last name went meanwhile).
//!
//! The table is plain data kept under the file system's state lock; it hands out handle
//! numbers, counts the open handles of each redirected inode, and switches the handles of a
//! file that moves between guest tree and store. Descriptors, budgets and the passthrough
//! layer are the caller's.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::Arc;

/// An open file as the guest holds it.
#[derive(Debug, Clone, Copy)]
pub(super) enum OpenFile {
    /// Opened by the passthrough layer: its handle there, the inode and the open flags
    /// ([`kept_open_flags`]) (directories, and every file of a passthrough share).
    Inner(u64, u64, u32),
    /// An inline regular file of a redirecting share, opened by the passthrough layer: its
    /// handle there, the inode, and the open flags, so the handle can become a
    /// [`OpenFile::Redirect`] if the file moves into the store while open.
    Inline { ih: u64, inode: u64, flags: u32 },
    /// A redirected file: I/O goes to the store object of `inode`. Append and sync modes
    /// come with each WRITE (the guest may change them with fcntl after the open).
    Redirect {
        inode: u64,
        /// The open flags (without O_CREAT, O_EXCL, O_TRUNC), to reopen the file inline if
        /// it moves back into the guest tree while open.
        flags: u32,
    },
    /// A directory listed from the server's own descriptor of it, which the file system
    /// keeps beside this table (`dirs.rs`).
    Dir,
}

impl OpenFile {
    /// The handle entry of redirected `inode` opened with `flags`.
    pub(super) fn redirect(inode: u64, flags: u32) -> Self {
        OpenFile::Redirect {
            inode,
            flags: kept_open_flags(flags as i32),
        }
    }
}

/// The open flags a handle keeps for reopening its file elsewhere: all but O_CREAT, O_EXCL,
/// O_TRUNC and O_NOCTTY, which only make sense at the first open.
pub(super) fn kept_open_flags(flags: i32) -> u32 {
    (flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY)) as u32
}

/// What the server holds for a redirected inode while the guest has it open.
#[derive(Debug)]
pub(super) struct OpenInode {
    /// Open handles on the inode.
    pub handles: usize,
    /// The store object, held from the first open to the last release: an open file never
    /// depends on finding a name again (its names may be gone or unknown after a restart).
    pub object: Arc<File>,
    /// The stub once its last name is gone: an `O_PATH` descriptor keeps the host inode
    /// alive so the passthrough layer can still reach it until release.
    pub pin: Option<OwnedFd>,
    /// The object's name in the orphan area once its last name is gone.
    pub orphan: Option<CString>,
    /// Kernel references given up (FORGET) while the file is open, applied (to the name
    /// table and the passthrough layer) at the last release: as in the kernel, an open file
    /// keeps its node and the names it is known by, so its stub can still be reached.
    pub forgets: u64,
}

impl OpenInode {
    fn new(object: Arc<File>) -> Self {
        OpenInode {
            handles: 0,
            object,
            pin: None,
            orphan: None,
            forgets: 0,
        }
    }
}

/// The handle table (see the module docs).
#[derive(Debug, Default)]
pub(super) struct HandleTable {
    files: HashMap<u64, OpenFile>,
    open: HashMap<u64, OpenInode>,
    /// The last handle number handed out.
    last: u64,
}

impl HandleTable {
    /// Enters `file` under a new handle number, returned; the first handle of a redirected
    /// inode keeps `object` (which its caller opened) for all of them.
    pub fn insert(&mut self, file: OpenFile, object: Option<Arc<File>>) -> u64 {
        self.last += 1;
        self.files.insert(self.last, file);
        if let (OpenFile::Redirect { inode, .. }, Some(object)) = (file, object) {
            self.open
                .entry(inode)
                .or_insert_with(|| OpenInode::new(object))
                .handles += 1;
        }
        self.last
    }

    /// What `handle` stands for.
    pub fn get(&self, handle: u64) -> Option<OpenFile> {
        self.files.get(&handle).copied()
    }

    /// Takes `handle` out; for the last handle of a redirected inode, also what was held
    /// for that inode. `None` if there is no such handle.
    pub fn remove(&mut self, handle: u64) -> Option<(OpenFile, Option<OpenInode>)> {
        let file = self.files.remove(&handle)?;
        let OpenFile::Redirect { inode, .. } = file else {
            return Some((file, None));
        };
        let last = self.open.get_mut(&inode).is_some_and(|open| {
            open.handles = open.handles.saturating_sub(1);
            open.handles == 0
        });
        Some((file, if last { self.open.remove(&inode) } else { None }))
    }

    /// What is held for redirected `inode` while it is open.
    pub fn open_inode(&self, inode: u64) -> Option<&OpenInode> {
        self.open.get(&inode)
    }

    /// [`HandleTable::open_inode`], to change it.
    pub fn open_inode_mut(&mut self, inode: u64) -> Option<&mut OpenInode> {
        self.open.get_mut(&inode)
    }

    /// True if the guest has redirected `inode` open.
    pub fn is_open(&self, inode: u64) -> bool {
        self.open.contains_key(&inode)
    }

    /// The redirected handles on `inode`, with their open flags.
    pub fn redirected(&self, inode: u64) -> Vec<(u64, u32)> {
        self.files
            .iter()
            .filter_map(|(h, f)| match *f {
                OpenFile::Redirect { inode: i, flags } if i == inode => Some((*h, flags)),
                _ => None,
            })
            .collect()
    }

    /// `inode` moved into the store: its inline handles become redirected ones, which hold
    /// `object`. Returns the passthrough handles they had, for the caller to release.
    pub fn switch_to_redirected(&mut self, inode: u64, object: Arc<File>) -> Vec<u64> {
        let mut released = Vec::new();
        for entry in self.files.values_mut() {
            if let OpenFile::Inline {
                ih,
                inode: i,
                flags,
            } = *entry
            {
                if i == inode {
                    *entry = OpenFile::redirect(inode, flags);
                    released.push(ih);
                }
            }
        }
        if !released.is_empty() {
            self.open
                .entry(inode)
                .or_insert_with(|| OpenInode::new(object))
                .handles += released.len();
        }
        released
    }

    /// `inode` moved out of the store: each of its redirected handles becomes the inline
    /// handle `opened` gives it (guest handle, passthrough handle, flags). Returns the FORGETs
    /// deferred while it was open.
    pub fn switch_to_inline(&mut self, inode: u64, opened: &[(u64, u64, u32)]) -> u64 {
        for &(h, ih, flags) in opened {
            self.files.insert(h, OpenFile::Inline { ih, inode, flags });
        }
        self.open.remove(&inode).map_or(0, |o| o.forgets)
    }

    /// Empties the table (the FUSE session ended), returning every handle and every open
    /// inode.
    pub fn take_all(&mut self) -> (HashMap<u64, OpenFile>, HashMap<u64, OpenInode>) {
        (
            std::mem::take(&mut self.files),
            std::mem::take(&mut self.open),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object() -> Arc<File> {
        Arc::new(tempfile::tempfile().unwrap())
    }

    #[test]
    fn the_last_handle_of_a_redirected_inode_returns_what_was_held() {
        let mut table = HandleTable::default();
        let a = table.insert(OpenFile::redirect(7, libc::O_RDWR as u32), Some(object()));
        let b = table.insert(OpenFile::redirect(7, libc::O_RDONLY as u32), Some(object()));
        assert_ne!(a, b);
        assert_eq!(table.open_inode(7).unwrap().handles, 2);
        assert!(table.remove(a).unwrap().1.is_none());
        assert!(table.is_open(7));
        assert!(table.remove(b).unwrap().1.is_some());
        assert!(!table.is_open(7));
        assert!(table.remove(b).is_none());
    }

    #[test]
    fn handles_switch_placement_with_their_file() {
        let mut table = HandleTable::default();
        let h = table.insert(
            OpenFile::Inline {
                ih: 40,
                inode: 7,
                flags: libc::O_RDWR as u32,
            },
            None,
        );
        let other = table.insert(OpenFile::Inner(41, 8, 0), None);
        assert_eq!(table.switch_to_redirected(7, object()), vec![40]);
        assert!(matches!(
            table.get(h),
            Some(OpenFile::Redirect { inode: 7, .. })
        ));
        assert!(matches!(table.get(other), Some(OpenFile::Inner(41, 8, 0))));
        assert_eq!(table.redirected(7), vec![(h, libc::O_RDWR as u32)]);
        table.open_inode_mut(7).unwrap().forgets = 2;
        assert_eq!(
            table.switch_to_inline(7, &[(h, 42, libc::O_RDWR as u32)]),
            2
        );
        assert!(matches!(
            table.get(h),
            Some(OpenFile::Inline { ih: 42, .. })
        ));
        assert!(!table.is_open(7));
    }

    #[test]
    fn creation_flags_are_not_kept() {
        let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_APPEND;
        assert_eq!(
            kept_open_flags(flags),
            (libc::O_RDWR | libc::O_APPEND) as u32
        );
    }
}
