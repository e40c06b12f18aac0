//! The intent log: before a namespace change touches both the guest tree and the store, a
//! small record of what is about to happen goes to `<store>/.fsredirect/<volume>/intent/`;
//! it is removed once both halves are done. After a crash, [`crate::recover`] reads the
//! records left behind and finishes or undoes each operation so that the store mirrors the
//! guest tree again.
//!
//! Records live in slot files (`slot-N`) that the server keeps open and reuses: writing a
//! record sets it on an idle slot, and removing it clears the slot, so a namespace change
//! costs the host no file creation or removal of its own (each of which allocates or frees
//! an inode and changes the log directory). A server that stops cleanly removes its idle
//! slots; after a crash, recovery settles every slot holding a record and removes the idle
//! ones ([`IntentLog::remove_idle_slots`]). Each record starts with its sequence number, so
//! recovery still settles them oldest first.
//!
//! A record must be on disk before either half of its operation. Two ways:
//! - **journal order** (guest tree and store on one journaling file system): the record is
//!   an extended attribute of the empty slot file, i.e. metadata only. The file system's
//!   journal writes metadata changes in the order they were made, so whatever half of the
//!   operation survives a power cut, the record (set before it) survives too, and its
//!   removal (after both halves) cannot survive without them. No sync.
//! - **synced** (anything else, or a record too large for an attribute): the record is the
//!   slot file's content, fdatasync'd before the operation starts.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

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
    /// The next record's sequence number.
    next: AtomicU64,
    /// The next slot file's number (numbers already taken on disk are skipped).
    next_slot: AtomicU64,
    /// Slot files holding no record, ready for the next one.
    idle: Mutex<Vec<Slot>>,
    hook: Hook,
    journal_ordered: AtomicBool,
}

/// The attribute holding a record written in journal order.
const RECORD_XATTR: &CStr = c"user.fsredirect.intent";

/// Largest record read back from an attribute.
const MAX_RECORD: usize = 64 * 1024;

/// How slot files' names start.
const SLOT_PREFIX: &str = "slot-";

/// How a record's sequence number is marked at its start.
const SEQUENCE_MARK: u8 = b'#';

/// An open slot file of the log.
#[derive(Debug)]
struct Slot {
    file: File,
    name: CString,
}

/// An open record; dropping it marks the operation complete.
#[must_use = "the record is removed when this is dropped"]
pub struct Pending<'a> {
    log: &'a IntentLog,
    /// The slot holding the record (taken when the record is kept).
    slot: Option<Slot>,
    /// The record is the slot's content, not its attribute.
    as_content: bool,
}

impl Pending<'_> {
    /// Leaves the record in the log: the operation's store half failed after its guest-tree
    /// half was done, so the next start's recovery must settle it.
    pub fn keep(mut self) {
        if let Some(slot) = self.slot.take() {
            log::warn!(
                "intent record in {:?} kept for the next start's recovery",
                slot.name
            );
        }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let Some(slot) = self.slot.take() else {
            return;
        };
        match self.log.clear(&slot, self.as_content) {
            Ok(()) => self.log.idle_slots().push(slot),
            // The slot still holds its record: it is not reused, and the next start settles it.
            Err(e) => log::warn!(
                "cannot remove the intent record in {:?} (recovery will settle it): {e}",
                slot.name,
            ),
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
            next_slot: AtomicU64::new(0),
            idle: Mutex::new(Vec::new()),
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

    fn idle_slots(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        // A vector of open files pushed and popped whole: a panic elsewhere cannot leave it
        // half-changed.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An idle slot, or a new one: a slot file under a name no file of the log has.
    fn take_slot(&self) -> io::Result<Slot> {
        if let Some(slot) = self.idle_slots().pop() {
            return Ok(slot);
        }
        loop {
            let n = self.next_slot.fetch_add(1, Ordering::Relaxed);
            let name = CString::new(format!("{SLOT_PREFIX}{n}"))
                .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            let flags = libc::O_CREAT | libc::O_EXCL | libc::O_RDWR;
            match open_beneath(&self.dir, &name, flags, 0o600) {
                Ok(fd) => {
                    return Ok(Slot {
                        file: File::from(fd),
                        name,
                    })
                }
                // Left by an earlier server (recovery removes idle ones): take the next.
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes and syncs a record of `intent` before the operation starts.
    pub fn begin(&self, intent: &Intent) -> io::Result<Pending<'_>> {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        self.hook
            .check(&StoreOp::Namespace(Namespace::IntentRecord))?;
        let slot = self.take_slot()?;
        let mut record = vec![SEQUENCE_MARK];
        record.extend_from_slice(seq.to_string().as_bytes());
        record.push(0);
        record.extend_from_slice(&intent.encode());
        let mut pending = Pending {
            log: self,
            slot: None,
            as_content: false,
        };
        if self.is_journal_ordered() {
            // SAFETY: fsetxattr on a descriptor we own, with a NUL-terminated name and a
            // value buffer of the given length.
            let res = unsafe {
                libc::fsetxattr(
                    slot.file.as_raw_fd(),
                    RECORD_XATTR.as_ptr(),
                    record.as_ptr().cast(),
                    record.len(),
                    0,
                )
            };
            if res == 0 {
                pending.slot = Some(slot);
                return Ok(pending);
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                // Too large for an attribute here, or no user attributes: synced content.
                Some(libc::E2BIG | libc::ENOSPC | libc::ERANGE | libc::EOPNOTSUPP) => {
                    log::debug!("intent record as an attribute refused ({err}); syncing it")
                }
                _ => {
                    self.idle_slots().push(slot);
                    return Err(err);
                }
            }
        }
        // From here on the slot may hold (part of) a record: it goes back only once cleared.
        pending.as_content = true;
        let file = &pending.slot.insert(slot).file;
        self.hook.check(&StoreOp::Write {
            file,
            offset: 0,
            len: record.len(),
        })?;
        file.write_all_at(&record, 0)?;
        // Enforced at namespace changes (docs/architecture.md#intent-records): the record is
        // on disk before either half of the operation.
        self.hook.check(&StoreOp::Sync {
            file,
            data_only: true,
        })?;
        file.sync_data()?;
        Ok(pending)
    }

    /// Clears the record in `slot`, after the hook's say.
    fn clear(&self, slot: &Slot, as_content: bool) -> io::Result<()> {
        self.hook
            .check(&StoreOp::Namespace(Namespace::IntentDone))?;
        if as_content {
            return slot.file.set_len(0);
        }
        // SAFETY: fremovexattr on a descriptor we own, with a NUL-terminated name.
        check(unsafe { libc::fremovexattr(slot.file.as_raw_fd(), RECORD_XATTR.as_ptr()) })
            .map(|_| ())
    }

    /// The names of every file in the log directory.
    fn names(&self) -> io::Result<Vec<CString>> {
        let dup = check(unsafe {
            // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own returns a new one.
            libc::fcntl(self.dir.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0)
        })?;
        // SAFETY: `dup` is a fresh descriptor owned by nobody else.
        let dup = unsafe { OwnedFd::from_raw_fd(dup) };
        let path = format!("/proc/self/fd/{}", dup.as_raw_fd());
        Ok(std::fs::read_dir(&path)?
            .filter_map(|e| e.ok())
            .filter_map(|e| CString::new(e.file_name().into_encoded_bytes()).ok())
            .collect())
    }

    /// The record file `name` holds: its attribute, else its content (empty for an idle
    /// slot).
    fn read_record(&self, name: &CStr) -> io::Result<Vec<u8>> {
        let mut file = File::from(open_beneath(&self.dir, name, libc::O_RDONLY, 0)?);
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
        Ok(record)
    }

    /// Every record left behind, oldest first, with the name of the file holding it; records
    /// this version cannot read are reported as `None`. Idle slots are not records.
    pub fn leftovers(&self) -> io::Result<Vec<(CString, Option<Intent>)>> {
        let mut found = Vec::new();
        for name in self.names()? {
            let record = self.read_record(&name)?;
            let slot = name.to_bytes().starts_with(SLOT_PREFIX.as_bytes());
            if slot && record.is_empty() {
                continue;
            }
            // Slot records carry their sequence number; older logs named each record file
            // by it.
            let (order, body) = match record.strip_prefix(&[SEQUENCE_MARK]) {
                Some(rest) => {
                    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
                    let seq = std::str::from_utf8(&rest[..end])
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok());
                    (seq, rest.get(end + 1..).unwrap_or_default().to_vec())
                }
                None => (
                    name.to_str().ok().and_then(|s| s.parse::<u64>().ok()),
                    record,
                ),
            };
            found.push((order.unwrap_or(u64::MAX), name, Intent::decode(&body)));
        }
        found.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        Ok(found.into_iter().map(|(_, n, i)| (n, i)).collect())
    }

    /// True if any record is left (a crash, or an operation whose store half failed).
    pub fn has_leftovers(&self) -> io::Result<bool> {
        Ok(!self.leftovers()?.is_empty())
    }

    /// Removes a record once recovery has dealt with it (the file holding it goes).
    pub fn remove(&self, name: &CStr) -> io::Result<()> {
        self.hook
            .check(&StoreOp::Namespace(Namespace::IntentDone))?;
        // SAFETY: one component under a directory fd we own.
        check(unsafe { libc::unlinkat(self.dir.as_raw_fd(), name.as_ptr(), 0) }).map(|_| ())
    }

    /// Removes the slot files that hold no record (left by a server that did not stop
    /// cleanly). Only for recovery: the caller holds the volume, so no other server is using
    /// them.
    pub fn remove_idle_slots(&self) -> io::Result<()> {
        for name in self.names()? {
            if name.to_bytes().starts_with(SLOT_PREFIX.as_bytes())
                && self.read_record(&name)?.is_empty()
            {
                // SAFETY: one component under a directory fd we own.
                check(unsafe { libc::unlinkat(self.dir.as_raw_fd(), name.as_ptr(), 0) })?;
            }
        }
        Ok(())
    }
}

impl Drop for IntentLog {
    fn drop(&mut self) {
        // Idle slots hold no record: a stopped server leaves an empty log behind.
        for slot in self.idle_slots().drain(..) {
            // SAFETY: one component under a directory fd we own.
            if unsafe { libc::unlinkat(self.dir.as_raw_fd(), slot.name.as_ptr(), 0) } != 0 {
                log::debug!(
                    "cannot remove idle intent slot {:?}: {}",
                    slot.name,
                    io::Error::last_os_error()
                );
            }
        }
    }
}

/// True if `path` is a slot file of the log holding no record (no attribute, no content).
pub fn is_idle_slot(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let slot = path
        .file_name()
        .is_some_and(|n| n.as_bytes().starts_with(SLOT_PREFIX.as_bytes()));
    if !slot || !std::fs::symlink_metadata(path).is_ok_and(|m| m.len() == 0) {
        return false;
    }
    let Ok(path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a NUL-terminated path and attribute name; a null buffer of size 0 only asks
    // for the attribute's size.
    let attribute = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            RECORD_XATTR.as_ptr(),
            std::ptr::null_mut(),
            0,
        )
    };
    attribute < 0
}

/// True if the log directory `dir` holds any record: a file other than an idle slot (for a
/// tool that looks at a volume no server holds, without opening its store).
pub fn dir_has_records(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .is_ok_and(|entries| entries.flatten().any(|entry| !is_idle_slot(&entry.path())))
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

    fn files_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn unlink(path: &str) -> Intent {
        Intent::Unlink {
            path: path.as_bytes().to_vec(),
        }
    }

    #[test]
    fn a_slot_is_reused_and_an_idle_one_goes_with_the_log() {
        for journal in [true, false] {
            let (tmp, log) = log();
            log.set_journal_ordered(journal);

            drop(log.begin(&unlink("a")).unwrap());
            drop(log.begin(&unlink("b")).unwrap());

            assert_eq!(files_in(tmp.path()), ["slot-0"], "journal order {journal}");
            assert!(log.leftovers().unwrap().is_empty());
            drop(log);
            assert!(files_in(tmp.path()).is_empty(), "journal order {journal}");
        }
    }

    #[test]
    fn records_in_reused_slots_come_back_oldest_first() {
        for journal in [true, false] {
            let (_tmp, log) = log();
            log.set_journal_ordered(journal);
            let a = log.begin(&unlink("a")).unwrap(); // slot-0
            let b = log.begin(&unlink("b")).unwrap(); // slot-1
            drop(a);
            let c = log.begin(&unlink("c")).unwrap(); // slot-0 again
            std::mem::forget(b);
            std::mem::forget(c);

            let left = log.leftovers().unwrap();

            let names: Vec<_> = left.iter().map(|(n, _)| n.to_str().unwrap()).collect();
            assert_eq!(names, ["slot-1", "slot-0"], "journal order {journal}");
            let intents: Vec<_> = left.into_iter().map(|(_, i)| i.unwrap()).collect();
            assert_eq!(
                intents,
                [unlink("b"), unlink("c")],
                "journal order {journal}"
            );
        }
    }

    #[test]
    fn recovery_removes_idle_slots_and_keeps_records() {
        let (tmp, log) = log();
        let kept = log.begin(&unlink("kept")).unwrap(); // slot-0
        let done = log.begin(&unlink("done")).unwrap(); // slot-1
        drop(done);
        kept.keep();
        // The server went away without stopping cleanly: its idle slot-1 is still there.
        std::mem::forget(log);
        let log = IntentLog::new(
            OwnedFd::from(File::open(tmp.path()).unwrap()),
            Hook::default(),
        );

        log.remove_idle_slots().unwrap();

        assert_eq!(files_in(tmp.path()), ["slot-0"]);
        assert_eq!(log.leftovers().unwrap()[0].1, Some(unlink("kept")));
        // A new record does not take the name of the one kept.
        std::mem::forget(log.begin(&unlink("new")).unwrap());
        assert_eq!(files_in(tmp.path()), ["slot-0", "slot-1"]);
    }

    #[test]
    fn a_record_file_of_an_older_log_is_still_read() {
        let (tmp, log) = log();
        std::fs::write(tmp.path().join("0000000000000007"), unlink("old").encode()).unwrap();

        let left = log.leftovers().unwrap();

        assert_eq!(left.len(), 1);
        assert_eq!(left[0].0.to_str().unwrap(), "0000000000000007");
        assert_eq!(left[0].1, Some(unlink("old")));
    }

    #[test]
    fn only_records_count_as_left_in_the_directory() {
        let (tmp, log) = log();
        drop(log.begin(&unlink("a")).unwrap());
        // An idle slot (a stop cut short before the log removed it) is no record.
        std::mem::forget(log);
        assert!(!dir_has_records(tmp.path()));

        let log = IntentLog::new(
            OwnedFd::from(File::open(tmp.path()).unwrap()),
            Hook::default(),
        );
        std::mem::forget(log.begin(&unlink("b")).unwrap());
        assert!(dir_has_records(tmp.path()));
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
