//! The store side of one volume: `<store>/<volume>/` for data and
//! `<store>/.fsredirect/<volume>/` for control data (format version, lock, orphans).
//!
//! All paths given here are guest paths already validated component by component; they are
//! resolved beneath the volume's directory fd without following symlinks ([`crate::beneath`]).
//! Stored objects are created with mode 0600 and never take guest ownership.

use std::ffi::{CStr, CString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::beneath::{check, open_beneath, open_parts, walk, ProcSelfFd};
use crate::faults::{Hook, Namespace, StoreOp};
use crate::intent::IntentLog;

/// Name of the control area inside the store root.
pub const CONTROL_DIR: &str = ".fsredirect";
/// Version of the on-disk layout, written to `<control>/format`.
pub const FORMAT_VERSION: &str = "fsredirect-1\n";

/// Errors opening a volume.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A directory of the store could not be created or opened.
    #[error("cannot prepare store directory {path}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// What the host said.
        #[source]
        source: io::Error,
    },
    /// Another server holds the volume.
    #[error("volume `{volume}` of store {store} is in use by another server (lock file {lock}); stop it first")]
    Busy {
        /// The volume.
        volume: String,
        /// The store root.
        store: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// The lock file could not be opened or locked.
    #[error("cannot lock volume with {path}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// What the host said.
        #[source]
        source: io::Error,
    },
    /// The control area holds a layout this version does not know.
    #[error("store control area {path} has format {found:?}, expected {FORMAT_VERSION:?}")]
    Format {
        /// The format file.
        path: PathBuf,
        /// What it contains.
        found: String,
    },
}

/// A `Result` with a [`StoreError`].
pub type Result<T> = std::result::Result<T, StoreError>;

/// An open, locked volume of a store.
#[derive(Debug)]
pub struct Store {
    volume: OwnedFd,
    control: OwnedFd,
    clean_marker: PathBuf,
    was_clean: bool,
    created: bool,
    orphans: OwnedFd,
    /// Reopens and names descriptors ([`ProcSelfFd`]).
    proc: ProcSelfFd,
    orphans_path: PathBuf,
    intents: IntentLog,
    volume_path: PathBuf,
    next_orphan: AtomicU64,
    /// Set by [`Store::leave_unclean`].
    unclean: AtomicBool,
    hook: Hook,
    // Held for the lifetime of the server: the flock is released when it closes.
    _lock: File,
}

impl Store {
    /// Opens (creating if needed) `volume` in the store at `root` and takes the volume lock.
    pub fn open(root: &Path, volume: &str) -> Result<Self> {
        Self::open_with(root, volume, Hook::default())
    }

    /// [`Store::open`], showing every store operation to `hook` first (tests: fault
    /// injection and power-loss simulation, [`crate::faults`]).
    pub fn open_with(root: &Path, volume: &str, hook: Hook) -> Result<Self> {
        let volume_path = root.join(volume);
        let control = root.join(CONTROL_DIR).join(volume);
        let orphans_path = control.join("orphans");
        let intent_path = control.join("intent");
        for dir in [&volume_path, &control, &orphans_path, &intent_path] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| StoreError::Dir {
                    path: dir.clone(),
                    source,
                })?;
        }
        let lock_path = control.join("lock");
        // A volume that never had a server has no lock file yet: nothing to recover.
        let created = !lock_path.exists();
        let mut lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&lock_path)
            .map_err(|source| StoreError::Lock {
                path: lock_path.clone(),
                source,
            })?;
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(StoreError::Busy {
                    volume: volume.to_string(),
                    store: root.to_path_buf(),
                    lock: lock_path,
                });
            }
            return Err(StoreError::Lock {
                path: lock_path,
                source: err,
            });
        }
        let lock_err = |source| StoreError::Lock {
            path: lock_path.clone(),
            source,
        };
        lock.set_len(0).map_err(lock_err)?;
        writeln!(lock, "{}", std::process::id()).map_err(lock_err)?;
        check_format(&control.join("format"))?;
        let open_dir = |path: &Path| -> Result<OwnedFd> {
            File::open(path)
                .map(OwnedFd::from)
                .map_err(|source| StoreError::Dir {
                    path: path.to_path_buf(),
                    source,
                })
        };
        // Present only while no server runs or after one stopped cleanly: its absence means
        // the last server died, and the caller should run recovery.
        let clean_marker = control.join("clean");
        let control_fd = open_dir(&control)?;
        let was_clean = clean_marker.exists();
        if was_clean {
            let marker_err = |source| StoreError::Dir {
                path: clean_marker.clone(),
                source,
            };
            hook.check(&StoreOp::Namespace(Namespace::CleanMarker))
                .map_err(marker_err)?;
            fs::remove_file(&clean_marker).map_err(marker_err)?;
            // On disk before anything is served: a power cut from here on must find the
            // volume unclean, or recovery would be skipped.
            File::from(control_fd.try_clone().map_err(marker_err)?)
                .sync_all()
                .map_err(marker_err)?;
        }
        let store = Store {
            volume: open_dir(&volume_path)?,
            control: control_fd,
            clean_marker,
            was_clean,
            created,
            orphans: open_dir(&orphans_path)?,
            proc: ProcSelfFd::open().map_err(|source| StoreError::Dir {
                path: PathBuf::from("/proc/self/fd"),
                source,
            })?,
            intents: IntentLog::new(open_dir(&intent_path)?, hook.clone()),
            orphans_path,
            volume_path,
            next_orphan: AtomicU64::new(0),
            unclean: AtomicBool::new(false),
            hook,
            _lock: lock,
        };
        Ok(store)
    }

    /// True if this open made the volume: no server ever served it, so there is nothing to
    /// recover.
    pub fn was_created(&self) -> bool {
        self.created
    }

    /// The volume's data directory.
    pub fn volume_path(&self) -> &Path {
        &self.volume_path
    }

    /// False if the previous server of this volume did not stop cleanly (or the volume is
    /// new): recovery should run before serving.
    pub fn was_clean(&self) -> bool {
        self.was_clean
    }

    /// Makes this stop unclean: no clean-stop marker is written when the store is dropped,
    /// so the next server runs recovery. For a server whose guest tree could not be synced
    /// at stop (its names and stub sizes may not be on disk).
    pub fn leave_unclean(&self) {
        self.unclean.store(true, Ordering::Relaxed);
    }

    /// The volume's intent log.
    pub fn intents(&self) -> &IntentLog {
        &self.intents
    }

    /// Removes the objects of files that were unlinked while open under a previous server
    /// (none can still be open: this server holds the lock); returns how many. Run after
    /// recovery, which may still need objects set aside by an interrupted rename.
    pub fn clear_orphans(&self) -> Result<usize> {
        let path = &self.orphans_path;
        let entries = fs::read_dir(path).map_err(|source| StoreError::Dir {
            path: path.to_path_buf(),
            source,
        })?;
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = CString::new(entry.file_name().into_encoded_bytes()).unwrap_or_default();
            match self.remove_orphan(&name) {
                Ok(()) => {
                    log::info!("removed orphan {name:?} left by the previous server");
                    removed += 1;
                }
                Err(e) => log::warn!("cannot remove orphan {}: {e}", entry.path().display()),
            }
        }
        Ok(removed)
    }

    /// Shows `op` to the hook, if any: `Err` means the operation must not happen, and
    /// `Ok(Some(n))` that a write is to be cut to `n` bytes ([`crate::faults`]).
    #[inline]
    pub fn before(&self, op: &StoreOp<'_>) -> io::Result<Option<usize>> {
        self.hook.check(op)
    }

    /// The hook every store operation is shown to (none in production).
    pub fn hook(&self) -> &Hook {
        &self.hook
    }

    /// Cuts or extends an object to `size`.
    pub fn set_len(&self, file: &File, size: u64) -> io::Result<()> {
        self.before(&StoreOp::SetLen { file, size })?;
        file.set_len(size)
    }

    /// fdatasync (`data_only`) or fsync of an object.
    pub fn sync_file(&self, file: &File, data_only: bool) -> io::Result<()> {
        self.before(&StoreOp::Sync { file, data_only })?;
        if data_only {
            file.sync_data()
        } else {
            file.sync_all()
        }
    }

    /// fsync of the directory `dir` (of the store, its control area or the guest tree): makes
    /// the names in it durable. Every directory sync passes here, so the hook sees each.
    pub fn sync_dir(&self, dir: &impl AsFd) -> io::Result<()> {
        self.before(&StoreOp::SyncDir)?;
        // SAFETY: fsync on a descriptor the caller holds; no memory is involved.
        check(unsafe { libc::fsync(dir.as_fd().as_raw_fd()) }).map(|_| ())
    }

    /// [`Store::sync_dir`] of the store directory at `parts` (the volume itself when empty).
    pub fn sync_volume_dir(&self, parts: &[CString]) -> io::Result<()> {
        let dir = open_parts(&self.volume, parts, libc::O_RDONLY | libc::O_DIRECTORY)?;
        self.sync_dir(&dir)
    }

    /// [`Store::sync_dir`] of the store directory holding the object at `parts`: makes its
    /// name durable.
    pub fn sync_parent(&self, parts: &[CString]) -> io::Result<()> {
        self.sync_volume_dir(&parts[..parts.len().saturating_sub(1)])
    }

    /// [`Store::sync_dir`] of every store directory on the way to the object at `parts`, from
    /// its parent up to the volume: directories made for it are durable too.
    pub fn sync_parents(&self, parts: &[CString]) -> io::Result<()> {
        (0..parts.len())
            .rev()
            .try_for_each(|depth| self.sync_volume_dir(&parts[..depth]))
    }

    /// [`Store::sync_dir`] of a directory of the control area (`lost+found/...`, made by the
    /// host tools).
    pub fn sync_control_dir(&self, dir: &Path) -> io::Result<()> {
        self.sync_dir(&File::open(dir)?)
    }

    /// syncfs of the file system holding the volume: every object, name and record is
    /// durable afterwards.
    pub fn syncfs(&self) -> io::Result<()> {
        self.before(&StoreOp::SyncFs)?;
        // SAFETY: syncfs on a directory descriptor we own; no memory is involved.
        check(unsafe { libc::syncfs(self.volume.as_raw_fd()) }).map(|_| ())
    }

    /// Writes the clean-stop marker after syncing everything, so that a marker on disk
    /// always means the store on disk is consistent.
    fn mark_clean(&self) -> io::Result<()> {
        self.syncfs()?;
        self.before(&StoreOp::Namespace(Namespace::CleanMarker))?;
        let marker = open_beneath(
            &self.control,
            c"clean",
            libc::O_CREAT | libc::O_TRUNC | libc::O_WRONLY,
            0o600,
        )?;
        File::from(marker).sync_all()?;
        self.sync_dir(&self.control)
    }

    /// The directory holding `parts` (all but the last component), creating missing
    /// directories when `create` is set, and the last component. An object at the top of the
    /// volume costs no host call; one deeper, one `openat2` while it exists.
    fn parent<'a>(&self, parts: &'a [CString], create: bool) -> io::Result<(Dir<'_>, &'a CStr)> {
        let (last, dirs) = parts
            .split_last()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        if dirs.is_empty() {
            return Ok((Dir::Volume(self.volume.as_fd()), last.as_c_str()));
        }
        match walk(&self.volume, dirs) {
            Ok(fd) => return Ok((Dir::Opened(fd), last.as_c_str())),
            Err(e) if create && e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
        let mut fd = open_beneath(&self.volume, c".", libc::O_PATH | libc::O_DIRECTORY, 0)?;
        for dir in dirs {
            fd = match open_beneath(&fd, dir, libc::O_PATH | libc::O_DIRECTORY, 0) {
                Ok(next) => next,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    self.before(&StoreOp::Namespace(Namespace::Mkdir))?;
                    // SAFETY: `dir` is NUL-terminated; mkdirat creates one entry under `fd`.
                    let res = unsafe { libc::mkdirat(fd.as_raw_fd(), dir.as_ptr(), 0o700) };
                    if res < 0 {
                        let err = io::Error::last_os_error();
                        if err.raw_os_error() != Some(libc::EEXIST) {
                            return Err(err);
                        }
                    }
                    open_beneath(&fd, dir, libc::O_PATH | libc::O_DIRECTORY, 0)?
                }
                Err(e) => return Err(e),
            };
        }
        Ok((Dir::Opened(fd), last.as_c_str()))
    }

    /// Creates an empty private object at `parts`, replacing a leftover object that no stub
    /// names (the caller checked that no guest file has this name).
    pub fn create_object(&self, parts: &[CString]) -> io::Result<File> {
        let (dir, name) = self.parent(parts, true)?;
        self.before(&StoreOp::Namespace(Namespace::Create))?;
        let create = || {
            open_beneath(
                &dir,
                name,
                libc::O_CREAT | libc::O_EXCL | libc::O_RDWR,
                0o600,
            )
        };
        let fd = match create() {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                // A leftover (a crash between the object and its stub): replaced.
                // SAFETY: `name` is one validated component; unlinkat only touches that entry.
                unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) };
                create()?
            }
            other => other?,
        };
        Ok(File::from(fd))
    }

    /// Opens the object at `parts` for I/O.
    pub fn open_object(&self, parts: &[CString]) -> io::Result<File> {
        let (dir, name) = self.parent(parts, false)?;
        self.proc.open_regular_beneath(&dir, name)
    }

    /// `fstatat` without following symlinks, beneath the volume.
    pub fn stat_object(&self, parts: &[CString]) -> io::Result<libc::stat64> {
        let (dir, name) = self.parent(parts, false)?;
        crate::beneath::stat_name(&dir, name)
    }

    /// Removes the object (or empty directory, with `dir`) at `parts`; a missing one is fine.
    pub fn remove(&self, parts: &[CString], dir: bool) -> io::Result<()> {
        let (parent, name) = match self.parent(parts, false) {
            Ok(p) => p,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(e) => return Err(e),
        };
        let flags = if dir { libc::AT_REMOVEDIR } else { 0 };
        self.before(&StoreOp::Namespace(Namespace::Remove))?;
        // SAFETY: one validated component under a directory fd we own.
        match check(unsafe { libc::unlinkat(parent.as_raw_fd(), name.as_ptr(), flags) }) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Renames `old` to `new` with renameat2 `flags`; a missing `old` is reported as ENOENT.
    pub fn rename(&self, old: &[CString], new: &[CString], flags: u32) -> io::Result<()> {
        let (old_dir, old_name) = self.parent(old, false)?;
        let (new_dir, new_name) = self.parent(new, true)?;
        self.before(&StoreOp::Namespace(Namespace::Rename))?;
        // SAFETY: single validated components under directory fds we own.
        check(unsafe {
            libc::renameat2(
                old_dir.as_raw_fd(),
                old_name.as_ptr(),
                new_dir.as_raw_fd(),
                new_name.as_ptr(),
                flags,
            )
        })
        .map(|_| ())
    }

    /// Hard-links the object at `old` as `new`.
    pub fn link(&self, old: &[CString], new: &[CString]) -> io::Result<()> {
        let (old_dir, old_name) = self.parent(old, false)?;
        let (new_dir, new_name) = self.parent(new, true)?;
        self.before(&StoreOp::Namespace(Namespace::Link))?;
        // SAFETY: single validated components under directory fds we own; flags 0 means the
        // old name is not followed if it is a symlink.
        check(unsafe {
            libc::linkat(
                old_dir.as_raw_fd(),
                old_name.as_ptr(),
                new_dir.as_raw_fd(),
                new_name.as_ptr(),
                0,
            )
        })
        .map(|_| ())
    }

    /// Gives the open object `object` the further name `new`, where none of its names is
    /// known (a node detached from the names its server knew).
    pub fn link_open(&self, object: &File, new: &[CString]) -> io::Result<()> {
        let (new_dir, new_name) = self.parent(new, true)?;
        self.before(&StoreOp::Namespace(Namespace::Link))?;
        self.proc.link(object, &new_dir, new_name)
    }

    /// A fresh name in the orphan area for an object of `inode`.
    pub fn orphan_name(&self, inode: u64) -> CString {
        let n = self.next_orphan.fetch_add(1, Ordering::Relaxed);
        // Digits and a dash: no NUL, so this cannot fail.
        CString::new(format!("{inode}-{n}")).unwrap_or_default()
    }

    /// Moves the object at `parts` into the orphan area under a fresh name; returns it.
    pub fn orphan(&self, parts: &[CString], inode: u64) -> io::Result<CString> {
        let orphan = self.orphan_name(inode);
        self.orphan_as(parts, &orphan)?;
        Ok(orphan)
    }

    /// Moves the object at `parts` into the orphan area as `orphan`.
    pub fn orphan_as(&self, parts: &[CString], orphan: &CStr) -> io::Result<()> {
        let (dir, name) = self.parent(parts, false)?;
        self.before(&StoreOp::Namespace(Namespace::Orphan))?;
        // SAFETY: single components under directory fds we own.
        check(unsafe {
            libc::renameat(
                dir.as_raw_fd(),
                name.as_ptr(),
                self.orphans.as_raw_fd(),
                orphan.as_ptr(),
            )
        })
        .map(|_| ())
    }

    /// Moves an orphan back to `parts` (undoing [`Store::orphan`]).
    pub fn unorphan(&self, orphan: &CStr, parts: &[CString]) -> io::Result<()> {
        let (dir, name) = self.parent(parts, true)?;
        self.before(&StoreOp::Namespace(Namespace::Orphan))?;
        // SAFETY: single components under directory fds we own.
        check(unsafe {
            libc::renameat(
                self.orphans.as_raw_fd(),
                orphan.as_ptr(),
                dir.as_raw_fd(),
                name.as_ptr(),
            )
        })
        .map(|_| ())
    }

    /// Opens an orphan for I/O.
    pub fn open_orphan(&self, orphan: &CStr) -> io::Result<File> {
        self.proc.open_regular_beneath(&self.orphans, orphan)
    }

    /// Removes an orphan.
    pub fn remove_orphan(&self, orphan: &CStr) -> io::Result<()> {
        self.before(&StoreOp::Namespace(Namespace::Orphan))?;
        // SAFETY: one component under the orphan directory fd we own.
        check(unsafe { libc::unlinkat(self.orphans.as_raw_fd(), orphan.as_ptr(), 0) }).map(|_| ())
    }

    /// `fstatvfs` of the volume.
    pub fn statvfs(&self) -> io::Result<libc::statvfs64> {
        let mut st = std::mem::MaybeUninit::<libc::statvfs64>::zeroed();
        // SAFETY: `st` is a writable statvfs64 buffer; the fd is valid.
        check(unsafe { libc::fstatvfs64(self.volume.as_raw_fd(), st.as_mut_ptr()) })?;
        // SAFETY: the call succeeded and filled the (zeroed) buffer.
        Ok(unsafe { st.assume_init() })
    }
}

/// A store directory [`Store::parent`] reached: the volume's own descriptor, or one opened.
#[derive(Debug)]
enum Dir<'a> {
    Volume(BorrowedFd<'a>),
    Opened(OwnedFd),
}

impl AsRawFd for Dir<'_> {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Dir::Volume(fd) => fd.as_raw_fd(),
            Dir::Opened(fd) => fd.as_raw_fd(),
        }
    }
}

impl AsFd for Dir<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Dir::Volume(fd) => *fd,
            Dir::Opened(fd) => fd.as_fd(),
        }
    }
}

impl Drop for Store {
    /// Syncs the store and marks a clean stop, so the next server skips recovery; if either
    /// fails, or the server found its guest tree could not be synced
    /// ([`Store::leave_unclean`]), the next server recovers.
    fn drop(&mut self) {
        if self.unclean.load(Ordering::Relaxed) {
            log::warn!(
                "no clean-stop marker in {}: the next start will recover",
                self.clean_marker.display()
            );
            return;
        }
        if let Err(e) = self.mark_clean() {
            log::warn!(
                "cannot mark clean stop in {} (the next start will recover): {e}",
                self.clean_marker.display()
            );
        }
    }
}

fn check_format(path: &Path) -> Result<()> {
    match fs::read_to_string(path) {
        Ok(found) if found == FORMAT_VERSION => Ok(()),
        Ok(found) => Err(StoreError::Format {
            path: path.to_path_buf(),
            found,
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::write(path, FORMAT_VERSION).map_err(|source| StoreError::Dir {
                path: path.to_path_buf(),
                source,
            })
        }
        Err(source) => Err(StoreError::Dir {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(path: &str) -> Vec<CString> {
        path.split('/').map(|p| CString::new(p).unwrap()).collect()
    }

    #[test]
    fn open_creates_volume_and_control_area() {
        let tmp = tempfile::tempdir().unwrap();
        let _store = Store::open(tmp.path(), "vol").unwrap();
        assert!(tmp.path().join("vol").is_dir());
        assert!(tmp.path().join(".fsredirect/vol/orphans").is_dir());
        assert_eq!(
            fs::read_to_string(tmp.path().join(".fsredirect/vol/format")).unwrap(),
            FORMAT_VERSION
        );
    }

    #[test]
    fn second_server_on_same_volume_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let _first = Store::open(tmp.path(), "vol").unwrap();
        let err = Store::open(tmp.path(), "vol").unwrap_err();
        assert!(matches!(err, StoreError::Busy { .. }), "{err}");
    }

    #[test]
    fn lock_is_released_when_store_is_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        drop(Store::open(tmp.path(), "vol").unwrap());
        assert!(Store::open(tmp.path(), "vol").is_ok());
    }

    #[test]
    fn other_volume_is_independent() {
        let tmp = tempfile::tempdir().unwrap();
        let _a = Store::open(tmp.path(), "a").unwrap();
        assert!(Store::open(tmp.path(), "b").is_ok());
    }

    #[test]
    fn created_object_is_private_and_parents_are_made() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path(), "vol").unwrap();
        store.create_object(&parts("a/b/c")).unwrap();
        let st = store.stat_object(&parts("a/b/c")).unwrap();
        assert_eq!(st.st_mode & 0o7777, 0o600);
    }

    #[test]
    fn a_leftover_object_is_replaced_by_an_empty_one() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path(), "v").unwrap();
        for path in ["top", "a/b/deep"] {
            let mut f = store.create_object(&parts(path)).unwrap();
            f.write_all(b"leftover").unwrap();
            let f = store.create_object(&parts(path)).unwrap();
            assert_eq!(f.metadata().unwrap().len(), 0, "{path}");
            assert_eq!(store.stat_object(&parts(path)).unwrap().st_size, 0);
            store.remove(&parts(path), false).unwrap();
            assert!(store.stat_object(&parts(path)).is_err());
        }
    }

    #[test]
    fn clean_marker_exists_only_after_a_clean_stop() {
        let tmp = tempfile::tempdir().unwrap();
        let marker = tmp.path().join(".fsredirect/vol/clean");
        let first = Store::open(tmp.path(), "vol").unwrap();
        assert!(
            !first.was_clean(),
            "a new volume has no clean stop behind it"
        );
        assert!(!marker.exists(), "no marker while a server runs");
        drop(first);
        assert!(marker.exists());
        let second = Store::open(tmp.path(), "vol").unwrap();
        assert!(second.was_clean());
        assert!(!marker.exists());
    }

    #[test]
    fn a_stop_left_unclean_writes_no_marker() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path(), "vol").unwrap();
        store.leave_unclean();
        drop(store);
        assert!(!tmp.path().join(".fsredirect/vol/clean").exists());
        assert!(!Store::open(tmp.path(), "vol").unwrap().was_clean());
    }

    #[test]
    fn leftover_orphans_are_cleared_on_request() {
        let tmp = tempfile::tempdir().unwrap();
        drop(Store::open(tmp.path(), "vol").unwrap());
        let orphan = tmp.path().join(".fsredirect/vol/orphans/7-0");
        fs::write(&orphan, b"old").unwrap();
        let store = Store::open(tmp.path(), "vol").unwrap();
        assert!(orphan.exists(), "recovery may still need it");
        store.clear_orphans().unwrap();
        assert!(!orphan.exists());
    }

    #[test]
    fn symlink_planted_in_store_is_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path(), "vol").unwrap();
        std::os::unix::fs::symlink("/etc", tmp.path().join("vol/evil")).unwrap();
        assert!(store.open_object(&parts("evil/passwd")).is_err());
        assert!(store.create_object(&parts("evil/x")).is_err());
    }

    #[test]
    fn orphan_round_trip_keeps_data() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path(), "vol").unwrap();
        let mut f = store.create_object(&parts("f")).unwrap();
        f.write_all(b"data").unwrap();
        let orphan = store.orphan(&parts("f"), 9).unwrap();
        assert!(store.stat_object(&parts("f")).is_err());
        assert_eq!(
            store
                .open_orphan(&orphan)
                .unwrap()
                .metadata()
                .unwrap()
                .len(),
            4
        );
        store.unorphan(&orphan, &parts("f")).unwrap();
        assert_eq!(store.stat_object(&parts("f")).unwrap().st_size, 4);
    }
}
