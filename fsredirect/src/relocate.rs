//! Moving one regular file's data between the guest tree (inline) and the store
//! (redirected): the one routine the server uses when a file's placement changes
//! (`fs/transition.rs`, which adds the switching of the guest's open handles) and the host
//! tools use for `hydrate` and `dehydrate` (which add a temporary file, so a hydrated file
//! appears whole or not at all).
//!
//! The order is what makes a power loss at any step harmless. The rule recovery applies to
//! an interrupted move ([`crate::intent::Intent::Place`], which the caller records first) is
//! "while the guest-tree file carries redirect metadata, the object is the data; once it
//! does not, the guest-tree file is". So:
//! - **into the store** ([`into_store`]): the object is written and synced and its name made
//!   durable; then the metadata is set on the guest file and synced, and only then is the
//!   guest file's data punched out. A sparse guest file without metadata can never be left.
//! - **out of the store** ([`out_of_store`]): the data is written into the file that will
//!   hold it and synced; then that file becomes the data in one step (the metadata removed,
//!   or a prepared file renamed over the stub) and that is made durable; only then does the
//!   object go.
//!
//! Every step is shown to the store's hook ([`crate::faults`]), guest-file steps included,
//! so the power-loss simulation can cut between any two of them.

use std::ffi::{CStr, CString};
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::faults::{Hook, StoreOp};
use crate::meta::{remove_xattr, set_xattr, Meta};
use crate::store::Store;

/// Inline to redirected: the data of the guest-tree file `file` goes into a new object at
/// `parts`, and `file` becomes its stub, carrying `meta` in attribute `meta_name`, with its
/// size and times kept. The caller has recorded the move in the intent log. On an error
/// before the data is punched out, the file is left inline and the object removed.
pub fn into_store(
    store: &Store,
    file: &File,
    parts: &[CString],
    meta_name: &CStr,
    meta: &Meta,
) -> io::Result<()> {
    let size = file.metadata()?.len();
    let undo_object = |e: io::Error| {
        if let Err(u) = store.remove(parts, false) {
            log::warn!("moving into the store failed ({e}), and its object stays: {u}");
        }
        e
    };
    let object = store.create_object(parts)?;
    copy_data(file, &object, size, store.hook())
        .and_then(|()| store.sync_file(&object, false))
        .and_then(|()| store.sync_parents(parts))
        .map_err(undo_object)?;
    drop(object);
    let times = file.metadata()?;
    // The metadata must be durable before any data leaves the guest file.
    set_meta(store, file, meta_name, Some(&meta.encode()))
        .and_then(|()| store.sync_file(file, false))
        .map_err(undo_object)?;
    match punch_data_hooked(file, store.hook()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            // No hole punching on this file system: nothing was punched, and the stub would
            // keep its data blocks. Stay inline instead.
            let _ =
                set_meta(store, file, meta_name, None).and_then(|()| store.sync_file(file, false));
            return Err(undo_object(e));
        }
        // Some blocks may be gone already: the object, which the durable metadata names, is
        // the data now, and the stub only keeps stray blocks.
        Err(e) => log::warn!("stub keeps data blocks after moving into the store: {e}"),
    }
    // The object is the data from here on, whatever happens to the stub's times.
    if let Err(e) = restore_times(file, &times).and_then(|()| store.sync_file(file, false)) {
        log::warn!("stub times or sync after moving into the store: {e}");
    }
    Ok(())
}

/// Where a file coming out of the store lands: the stub itself (the server, which must keep
/// the guest's inode) or a prepared file put in its place (the tools).
pub trait Landing {
    /// The file receiving the data.
    fn file(&self) -> &File;
    /// Gives [`Landing::file`] what the guest sees besides its data (times, owner, mode,
    /// attributes), once the data is in.
    fn prepare(&mut self) -> io::Result<()>;
    /// Makes [`Landing::file`] the guest's file in one step. On an error nothing changed:
    /// the stub still stands for the object.
    fn commit(&mut self, store: &Store) -> io::Result<()>;
    /// Makes the commit durable; until it is, the object must stay.
    fn make_durable(&mut self, store: &Store) -> io::Result<()>;
    /// Undoes what the move left in the guest tree after a failure before the commit.
    fn abandon(&mut self, store: &Store);
}

/// Redirected to inline: the first `size` bytes of `object` (the object at `parts`) go into
/// `landing`, which becomes the guest's file; then the object is removed. The caller has
/// recorded the move in the intent log. On an error the file is still redirected.
pub fn out_of_store(
    store: &Store,
    object: &File,
    parts: &[CString],
    size: u64,
    landing: &mut impl Landing,
) -> io::Result<()> {
    let landed = copy_data(object, landing.file(), size, store.hook())
        .and_then(|()| landing.prepare())
        .and_then(|()| store.sync_file(landing.file(), false))
        .and_then(|()| landing.commit(store));
    if let Err(e) = landed {
        landing.abandon(store);
        return Err(e);
    }
    // The guest-tree file is the data now, the object garbage: kept if the commit cannot
    // be made durable first (`fsredirect gc` or the next move finds it).
    match landing.make_durable(store) {
        Ok(()) => {
            if let Err(e) = store
                .remove(parts, false)
                .and_then(|()| store.sync_parent(parts))
            {
                log::warn!("stale object left after moving out of the store: {e}");
            }
        }
        Err(e) => log::warn!("object kept, the move out of the store is not durable: {e}"),
    }
    Ok(())
}

/// The stub itself as a [`Landing`]: the server's move out of the store, which keeps the
/// guest's inode (and so its open handles) the same.
pub struct InPlace<'a> {
    stub: &'a File,
    meta_name: &'a CStr,
    times: fs::Metadata,
}

impl<'a> InPlace<'a> {
    /// The landing for `stub`, whose metadata is in attribute `meta_name`.
    pub fn new(stub: &'a File, meta_name: &'a CStr) -> io::Result<Self> {
        Ok(InPlace {
            stub,
            meta_name,
            times: stub.metadata()?,
        })
    }
}

impl Landing for InPlace<'_> {
    fn file(&self) -> &File {
        self.stub
    }

    fn prepare(&mut self) -> io::Result<()> {
        restore_times(self.stub, &self.times)
    }

    fn commit(&mut self, store: &Store) -> io::Result<()> {
        set_meta(store, self.stub, self.meta_name, None)
    }

    fn make_durable(&mut self, store: &Store) -> io::Result<()> {
        store.sync_file(self.stub, false)
    }

    fn abandon(&mut self, store: &Store) {
        // Still redirected: the data written into the stub is stray; drop it.
        let sparse = punch_data_hooked(self.stub, store.hook())
            .and_then(|()| restore_times(self.stub, &self.times))
            .and_then(|()| store.sync_file(self.stub, false));
        if let Err(e) = sparse {
            log::warn!("stub keeps stray data blocks: {e}");
        }
    }
}

/// Sets (`Some`) or removes (`None`) the redirect metadata of a guest-tree file.
fn set_meta(store: &Store, file: &File, name: &CStr, value: Option<&[u8]>) -> io::Result<()> {
    store.before(&StoreOp::Meta { file, name })?;
    match value {
        Some(value) => set_xattr(file, name, value),
        None => remove_xattr(file, name),
    }
}

/// Bytes copied per read when moving data.
const CHUNK: usize = 1 << 20;

/// Opens the regular file at a host path for reading and writing, without following a
/// symlink at its last component (recovery paths are built from the trusted guest root).
pub fn open_file(path: &Path) -> io::Result<File> {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    Ok(file)
}

/// Copies the first `size` bytes of `from` into `to`, which is given that size, showing each
/// write and size change to `hook`. Only the data segments of `from` are read (holes are
/// skipped with SEEK_DATA/SEEK_HOLE, so a huge sparse file costs little), and runs of zeros
/// are not written: holes stay holes.
pub fn copy_data(from: &File, to: &File, size: u64, hook: &Hook) -> io::Result<()> {
    if to.metadata()?.len() != size {
        hook.check(&StoreOp::SetLen { file: to, size })?;
        to.set_len(size)?;
    }
    let mut buf = vec![0u8; CHUNK.min(size as usize).max(1)];
    let mut pos = 0u64;
    while pos < size {
        let Some((start, end)) = next_data(from, pos, size)? else {
            break;
        };
        let mut offset = start;
        while offset < end {
            let want = buf.len().min((end - offset) as usize);
            let n = from.read_at(&mut buf[..want], offset)?;
            if n == 0 {
                // The source is shorter than `size`: the rest reads as zeros, as in a hole.
                return Ok(());
            }
            let n = if buf[..n].iter().any(|&b| b != 0) {
                write_at(to, &buf[..n], offset, hook)?
            } else {
                n
            };
            offset += n as u64;
        }
        pos = end;
    }
    Ok(())
}

/// Writes `data` at `offset` into `to` as far as `hook` lets it (a shortened write writes
/// less); returns how many bytes were written.
fn write_at(to: &File, data: &[u8], offset: u64, hook: &Hook) -> io::Result<usize> {
    let len = hook
        .check(&StoreOp::Write {
            file: to,
            offset,
            len: data.len(),
        })?
        .map_or(data.len(), |short| short.min(data.len()));
    to.write_all_at(&data[..len], offset)?;
    Ok(len)
}

/// The next data segment of `file` at or after `pos`, cut at `size`; None if only holes
/// remain. Where the file system cannot tell holes apart, everything is data.
fn next_data(file: &File, pos: u64, size: u64) -> io::Result<Option<(u64, u64)>> {
    let seek = |offset: u64, whence: i32| {
        // SAFETY: lseek on a descriptor we hold; I/O uses pread, so the position is unused.
        let res = unsafe { libc::lseek64(file.as_raw_fd(), offset as i64, whence) };
        if res < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(res as u64)
        }
    };
    let start = match seek(pos, libc::SEEK_DATA) {
        Ok(start) => start,
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(Some((pos, size))),
        Err(e) => return Err(e),
    };
    if start >= size {
        return Ok(None);
    }
    let end = seek(start, libc::SEEK_HOLE)?.min(size);
    Ok(Some((start, end)))
}

/// Frees every data block of `file` while keeping its size, access and modification times
/// (the change time moves, as for any metadata change), then syncs it.
pub fn make_sparse(file: &File) -> io::Result<()> {
    let meta = file.metadata()?;
    punch_data(file)?;
    restore_times(file, &meta)?;
    file.sync_all()
}

/// Frees every data block of `file`, keeping its size (its times move).
pub fn punch_data(file: &File) -> io::Result<()> {
    punch_data_hooked(file, &Hook::default())
}

/// [`punch_data`], shown to `hook` first.
///
/// Blocks past the end of the file go too: a guest may have preallocated them (fallocate
/// with KEEP_SIZE) while the file was inline. A stub keeping them would hold data as soon as
/// it grows over them with its object (unwritten extents read back as data once their pages
/// are cached), and would waste their space meanwhile.
fn punch_data_hooked(file: &File, hook: &Hook) -> io::Result<()> {
    let meta = file.metadata()?;
    if meta.len() == 0 && meta.blocks() == 0 {
        return Ok(());
    }
    hook.check(&StoreOp::Punch { file })?;
    if meta.len() > 0 {
        // A punch frees whole blocks only (a partial one is zeroed and stays): reach the end
        // of the last block, which KEEP_SIZE allows past the end of the file.
        let block = meta.blksize().max(4096);
        let len = meta.len().div_ceil(block) * block;
        // SAFETY: fallocate on a descriptor we hold; no memory is passed.
        let res = unsafe {
            libc::fallocate64(
                file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                0,
                len as i64,
            )
        };
        crate::beneath::check(res)?;
    }
    // A punch cannot name the end of blocks preallocated past the end of the file (it is
    // the file system's, not the file's); a truncate to the file's own size frees them
    // (ext4, XFS, Btrfs). The size never changes on the way.
    file.set_len(meta.len())
}

/// Sets the access and modification times of `file` back to those in `meta`.
pub fn restore_times(file: &File, meta: &fs::Metadata) -> io::Result<()> {
    let times = [
        libc::timespec {
            tv_sec: meta.atime(),
            tv_nsec: meta.atime_nsec(),
        },
        libc::timespec {
            tv_sec: meta.mtime(),
            tv_nsec: meta.mtime_nsec(),
        },
    ];
    // SAFETY: futimens on a descriptor we hold, with a two-element timespec array.
    crate::beneath::check(unsafe { libc::futimens(file.as_raw_fd(), times.as_ptr()) }).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::faults::{Fault, FaultPlan, OpKind, StoreHook};
    use crate::meta::{decoded_at, META_XATTR_USER};

    /// A store in `dir/s` whose every operation `plan` sees, and a guest file `dir/g/a`
    /// holding `data`.
    fn moving_file(dir: &Path, plan: &Arc<FaultPlan>, data: &[u8]) -> (Store, File) {
        fs::create_dir(dir.join("g")).unwrap();
        fs::write(dir.join("g/a"), data).unwrap();
        let hook = Hook::new(plan.clone() as Arc<dyn StoreHook>);
        let store = Store::open_with(&dir.join("s"), "v", hook).unwrap();
        (store, open_file(&dir.join("g/a")).unwrap())
    }

    fn into_store_with(store: &Store, file: &File) -> io::Result<()> {
        let parts = [CString::new("a").unwrap()];
        into_store(
            store,
            file,
            &parts,
            META_XATTR_USER,
            &Meta::redirect(b"v", b"a"),
        )
    }

    #[test]
    fn a_move_into_the_store_leaves_a_sparse_stub_and_the_object() {
        let tmp = tempfile::tempdir().unwrap();
        let plan = FaultPlan::new();
        let (store, file) = moving_file(tmp.path(), &plan, b"moving bytes");
        if into_store_with(&store, &file).is_err() {
            eprintln!("skipped: this file system takes no user xattrs or hole punches");
            return;
        }
        assert_eq!(fs::read(tmp.path().join("s/v/a")).unwrap(), b"moving bytes");
        assert_eq!(file.metadata().unwrap().len(), 12);
        assert!(!has_data(&file));
        assert!(decoded_at(&tmp.path().join("g/a")).unwrap().is_some());
    }

    #[test]
    fn without_hole_punching_the_file_stays_inline() {
        let tmp = tempfile::tempdir().unwrap();
        let plan = FaultPlan::new();
        let (store, file) = moving_file(tmp.path(), &plan, b"moving bytes");
        plan.arm(OpKind::Punch, Fault::Errno(libc::EOPNOTSUPP));
        let err = into_store_with(&store, &file).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EOPNOTSUPP));
        assert_eq!(fs::read(tmp.path().join("g/a")).unwrap(), b"moving bytes");
        assert!(decoded_at(&tmp.path().join("g/a")).unwrap().is_none());
        assert!(!tmp.path().join("s/v/a").exists());
    }

    #[test]
    fn a_punch_failing_midway_keeps_the_file_redirected() {
        let tmp = tempfile::tempdir().unwrap();
        let plan = FaultPlan::new();
        let (store, file) = moving_file(tmp.path(), &plan, b"moving bytes");
        plan.arm(OpKind::Punch, Fault::Errno(libc::EIO));
        if into_store_with(&store, &file).is_err() {
            eprintln!("skipped: this file system takes no user xattrs");
            return;
        }
        // The metadata is durable and names the object, which holds every byte.
        assert!(decoded_at(&tmp.path().join("g/a")).unwrap().is_some());
        assert_eq!(fs::read(tmp.path().join("s/v/a")).unwrap(), b"moving bytes");
        assert_eq!(plan.hits(), 1);
    }

    fn has_data(file: &File) -> bool {
        // SAFETY: lseek on a descriptor we own.
        unsafe { libc::lseek64(file.as_raw_fd(), 0, libc::SEEK_DATA) >= 0 }
    }

    #[test]
    fn copy_keeps_bytes_and_size_and_skips_zero_runs() {
        let tmp = tempfile::tempdir().unwrap();
        let src_path = tmp.path().join("src");
        let mut data = vec![0u8; 3 * CHUNK];
        data[CHUNK + 5] = 7;
        fs::write(&src_path, &data).unwrap();
        let dst = File::create_new(tmp.path().join("dst")).unwrap();
        copy_data(
            &File::open(&src_path).unwrap(),
            &dst,
            data.len() as u64,
            &Hook::default(),
        )
        .unwrap();
        assert_eq!(fs::read(tmp.path().join("dst")).unwrap(), data);
        let blocks = dst.metadata().unwrap().blocks();
        assert!(
            blocks * 512 < 2 * CHUNK as u64,
            "zero chunks were written: {blocks}"
        );
    }

    #[test]
    fn copy_of_a_huge_sparse_file_reads_only_its_data() {
        let tmp = tempfile::tempdir().unwrap();
        let src = File::create_new(tmp.path().join("src")).unwrap();
        let size = 1u64 << 40;
        src.set_len(size).unwrap();
        src.write_all_at(b"head", 0).unwrap();
        src.write_all_at(b"tail", size - 4).unwrap();
        let dst = File::create_new(tmp.path().join("dst")).unwrap();
        copy_data(&src, &dst, size, &Hook::default()).unwrap();
        assert_eq!(dst.metadata().unwrap().len(), size);
        let mut got = [0u8; 4];
        dst.read_exact_at(&mut got, 0).unwrap();
        assert_eq!(&got, b"head");
        dst.read_exact_at(&mut got, size - 4).unwrap();
        assert_eq!(&got, b"tail");
        dst.read_exact_at(&mut got, size / 2).unwrap();
        assert_eq!(got, [0; 4]);
    }

    #[test]
    fn make_sparse_keeps_size_and_times_and_drops_data() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        fs::write(&path, b"hello").unwrap();
        let file = open_file(&path).unwrap();
        let old = [1_000_000_000, 0];
        file.set_times(
            fs::FileTimes::new()
                .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(old[0]))
                .set_accessed(std::time::UNIX_EPOCH + std::time::Duration::from_secs(old[0])),
        )
        .unwrap();
        make_sparse(&file).unwrap();
        let meta = file.metadata().unwrap();
        assert_eq!(meta.len(), 5);
        assert_eq!(meta.mtime(), old[0] as i64);
        assert!(!has_data(&file));
    }

    #[test]
    fn open_file_refuses_a_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc/passwd", tmp.path().join("l")).unwrap();
        assert!(open_file(&tmp.path().join("l")).is_err());
    }
}
