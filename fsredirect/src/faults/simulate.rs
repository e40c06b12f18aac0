//! The test hooks: [`FaultPlan`] and [`PowerLoss`].

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{OpKind, StoreHook, StoreOp};

/// What a [`FaultPlan`] does to the operations it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Fail with this errno.
    Errno(i32),
    /// Writes of more than this many bytes are cut to it (never to zero).
    ShortWrite(usize),
}

/// Injects one fault into every store operation of one kind while armed.
#[derive(Debug, Default)]
pub struct FaultPlan {
    armed: Mutex<Option<(OpKind, Fault)>>,
    hits: Mutex<usize>,
}

impl FaultPlan {
    /// A plan with nothing armed.
    pub fn new() -> Arc<Self> {
        Arc::new(FaultPlan::default())
    }

    /// From now on, every operation of `kind` suffers `fault`.
    pub fn arm(&self, kind: OpKind, fault: Fault) {
        *lock(&self.armed) = Some((kind, fault));
    }

    /// Stops injecting.
    pub fn disarm(&self) {
        *lock(&self.armed) = None;
    }

    /// How many operations were failed or shortened so far.
    pub fn hits(&self) -> usize {
        *lock(&self.hits)
    }
}

impl StoreHook for FaultPlan {
    fn before(&self, op: &StoreOp<'_>) -> io::Result<Option<usize>> {
        let Some((kind, fault)) = *lock(&self.armed) else {
            return Ok(None);
        };
        if op.kind() != kind {
            return Ok(None);
        }
        match (fault, op) {
            (Fault::Errno(code), _) => {
                *lock(&self.hits) += 1;
                Err(io::Error::from_raw_os_error(code))
            }
            (Fault::ShortWrite(max), StoreOp::Write { len, .. }) if *len > max.max(1) => {
                *lock(&self.hits) += 1;
                Ok(Some(max.max(1)))
            }
            _ => Ok(None),
        }
    }
}

/// Simulated power loss in the store.
///
/// Model: the guest tree and the store are on one journaling file system (ext4 with
/// `data=ordered`, xfs), where metadata (names, links, sizes set by truncate, xattrs) reaches
/// the disk in the order it was changed, and any fsync commits all of it. The cut keeps all
/// metadata up to the cut point (the latest outcome the journal allows) and drops every data
/// write into an object or intent record since that file's last fsync/fdatasync or the last
/// syncfs, with the size growth those writes caused; truncates since then are applied to the
/// surviving content. Not modelled: losing metadata changed after the last journal commit,
/// and a guest tree on another file system than the store.
///
/// A guest-tree file moving between tree and store is modelled more harshly, since a file
/// system may commit an attribute change and a hole punch in either order: its punch
/// ([`StoreOp::Punch`]) is durable at once, while a change of its redirect metadata
/// ([`StoreOp::Meta`]) is lost at a cut unless the file was fsynced since. So a move that
/// punched the data out before its metadata was durable loses the file's bytes here.
///
/// The simulator finds the files to put back by walking `root`: give it a directory that
/// holds the store and, for moves, the guest tree.
///
/// Every [`StoreOp`] is one numbered step (from 1). With a cut at step `n`, the `n`-th
/// operation does not happen: the store's files get their durable contents back and
/// `on_cut` runs, which should end the process (`libc::_exit`); if it returns, every later
/// operation fails with EIO and changes nothing.
pub struct PowerLoss {
    root: PathBuf,
    cut_at: Option<u64>,
    on_cut: Box<dyn Fn() + Send + Sync>,
    state: Mutex<PowerState>,
}

#[derive(Default)]
struct PowerState {
    steps: u64,
    cut: bool,
    /// Identity of each file with unsynced data -> its durable content.
    durable: HashMap<FileId, Vec<u8>>,
    /// (file, attribute) with an unsynced metadata change -> the durable value (`None`:
    /// absent).
    durable_meta: HashMap<(FileId, CString), Option<Vec<u8>>>,
}

impl PowerLoss {
    /// A simulator for the store at `root` that cuts power at step `cut_at` (never if
    /// `None`) and then calls `on_cut`.
    pub fn new(root: &Path, cut_at: Option<u64>, on_cut: Box<dyn Fn() + Send + Sync>) -> Arc<Self> {
        Arc::new(PowerLoss {
            root: root.to_path_buf(),
            cut_at,
            on_cut,
            state: Mutex::new(PowerState::default()),
        })
    }

    /// How many store operations were seen so far.
    pub fn steps(&self) -> u64 {
        lock(&self.state).steps
    }

    /// Files whose unsynced writes or metadata changes a cut now would drop.
    pub fn unsynced_files(&self) -> usize {
        let st = lock(&self.state);
        st.durable.len() + st.durable_meta.len()
    }

    /// Puts every file with unsynced data back to its durable content.
    fn materialize(&self, st: &PowerState) -> io::Result<()> {
        let mut paths = HashMap::new();
        collect_files(&self.root, &mut paths)?;
        for (key, content) in &st.durable {
            // A file whose every name is gone needs nothing: its data is unreachable (and
            // its inode number may belong to a newer file, which the generation tells).
            let Some(path) = paths.get(key) else { continue };
            let file = File::options().write(true).open(path)?;
            file.set_len(0)?;
            file.write_all_at(content, 0)?;
            file.set_len(content.len() as u64)?;
            file.sync_all()?;
        }
        for ((key, name), value) in &st.durable_meta {
            let Some(path) = paths.get(key) else { continue };
            let file = File::options().write(true).open(path)?;
            match value {
                Some(value) => crate::meta::set_xattr(&file, name, value)?,
                None => crate::meta::remove_xattr(&file, name)?,
            }
            file.sync_all()?;
        }
        Ok(())
    }
}

impl StoreHook for PowerLoss {
    fn before(&self, op: &StoreOp<'_>) -> io::Result<Option<usize>> {
        let mut st = lock(&self.state);
        if st.cut {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        st.steps += 1;
        if Some(st.steps) == self.cut_at {
            st.cut = true;
            if let Err(e) = self.materialize(&st) {
                // The simulation itself broke: say so loudly, the test must not pass.
                eprintln!("power-loss simulation could not restore durable contents: {e}");
                std::process::abort();
            }
            drop(st);
            (self.on_cut)();
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        match op {
            StoreOp::Write { file, .. } | StoreOp::Fallocate { file } => {
                let key = file_key(file)?;
                if let std::collections::hash_map::Entry::Vacant(slot) = st.durable.entry(key) {
                    slot.insert(read_all(file)?);
                }
            }
            StoreOp::SetLen { file, size } => {
                // A truncate is metadata: it reaches the disk in order, and applies to the
                // content that survives.
                if let Some(content) = st.durable.get_mut(&file_key(file)?) {
                    content.resize(*size as usize, 0);
                }
            }
            StoreOp::Sync { file, data_only } => {
                // Taken as done once asked: a cut can only fall before a step, never inside.
                let key = file_key(file)?;
                st.durable.remove(&key);
                if !data_only {
                    st.durable_meta.retain(|(k, _), _| *k != key);
                }
            }
            StoreOp::Meta { file, name } => {
                let key = (file_key(file)?, CString::from(*name));
                if let std::collections::hash_map::Entry::Vacant(slot) = st.durable_meta.entry(key)
                {
                    slot.insert(crate::meta::get_xattr(file, name)?);
                }
            }
            StoreOp::Punch { file } => {
                // Durable at once: whatever unsynced data the file had is gone with its blocks.
                if let Some(content) = st.durable.get_mut(&file_key(file)?) {
                    content.fill(0);
                }
            }
            StoreOp::SyncFs => {
                st.durable.clear();
                st.durable_meta.clear();
            }
            StoreOp::SyncDir | StoreOp::Namespace(_) => {}
        }
        Ok(None)
    }
}

/// A file's identity: device, inode number, and the inode's generation and birth time,
/// which tell a reused inode number from the file that had it before.
type FileId = (u64, u64, u64, i64, u32);

fn file_key(file: &File) -> io::Result<FileId> {
    let m = file.metadata()?;
    let mut generation: libc::c_long = 0;
    // FS_IOC_GETVERSION = _IOR('v', 1, long).
    const FS_IOC_GETVERSION: libc::c_ulong = 0x8008_7601;
    // SAFETY: the ioctl writes one long into `generation`; a file system without inode
    // generations fails it and leaves 0, and the birth time still tells most reuse apart.
    unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_GETVERSION as _, &mut generation) };
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: statx of our own descriptor (empty path) into a zeroed, writable buffer.
    let res = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_BTIME,
            stx.as_mut_ptr(),
        )
    };
    let (sec, nsec) = if res == 0 {
        // SAFETY: statx succeeded and filled the (zeroed) buffer.
        let stx = unsafe { stx.assume_init() };
        (stx.stx_btime.tv_sec, stx.stx_btime.tv_nsec)
    } else {
        (0, 0)
    };
    Ok((m.dev(), m.ino(), generation as u64, sec, nsec))
}

fn read_all(file: &File) -> io::Result<Vec<u8>> {
    let len = file.metadata()?.len() as usize;
    let mut buf = vec![0; len];
    let mut done = 0;
    while done < len {
        match file.read_at(&mut buf[done..], done as u64)? {
            0 => break,
            n => done += n,
        }
    }
    buf.truncate(done);
    Ok(buf)
}

/// Maps the identity of every regular file under `dir` to one of its paths.
fn collect_files(dir: &Path, out: &mut HashMap<FileId, PathBuf>) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = std::fs::symlink_metadata(entry.path())?;
        if meta.is_dir() {
            collect_files(&entry.path(), out)?;
        } else if meta.is_file() {
            let file = File::options()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(entry.path())?;
            out.entry(file_key(&file)?).or_insert(entry.path());
        }
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain data updated one call at a time: a panic elsewhere cannot leave it half-written.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(hook: &dyn StoreHook, file: &mut File, data: &[u8]) {
        let pos = file.metadata().unwrap().len();
        hook.before(&StoreOp::Write {
            file,
            offset: pos,
            len: data.len(),
        })
        .unwrap();
        file.write_all_at(data, pos).unwrap();
    }

    #[test]
    fn armed_plan_fails_matching_operations_only() {
        let plan = FaultPlan::new();
        plan.arm(OpKind::SyncFs, Fault::Errno(libc::EIO));
        let err = plan.before(&StoreOp::SyncFs).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO));
        assert!(plan.before(&StoreOp::SyncDir).unwrap().is_none());
        plan.disarm();
        assert!(plan.before(&StoreOp::SyncFs).unwrap().is_none());
        assert_eq!(plan.hits(), 1);
    }

    #[test]
    fn short_write_plan_cuts_long_writes() {
        let tmp = tempfile::tempfile().unwrap();
        let plan = FaultPlan::new();
        plan.arm(OpKind::Write, Fault::ShortWrite(3));
        let op = |len| StoreOp::Write {
            file: &tmp,
            offset: 0,
            len,
        };
        assert_eq!(plan.before(&op(10)).unwrap(), Some(3));
        assert_eq!(plan.before(&op(2)).unwrap(), None);
    }

    #[test]
    fn power_cut_drops_unsynced_writes_and_keeps_synced_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let sim = PowerLoss::new(tmp.path(), Some(5), Box::new(|| {}));
        let mut a = File::create_new(tmp.path().join("a")).unwrap();
        let mut b = File::create_new(tmp.path().join("b")).unwrap();
        write(&*sim, &mut a, b"synced"); // step 1
        sim.before(&StoreOp::Sync {
            file: &a,
            data_only: true,
        })
        .unwrap(); // step 2
        write(&*sim, &mut a, b"+lost"); // step 3
        write(&*sim, &mut b, b"lost too"); // step 4
        a.flush().unwrap();
        // Step 5 is the cut: it does not happen, and nothing after it does either.
        assert!(sim.before(&StoreOp::SyncFs).is_err());
        assert!(sim.before(&StoreOp::SyncFs).is_err());
        assert_eq!(std::fs::read(tmp.path().join("a")).unwrap(), b"synced");
        assert_eq!(std::fs::read(tmp.path().join("b")).unwrap(), b"");
    }

    #[test]
    fn truncate_applies_to_the_surviving_content() {
        let tmp = tempfile::tempdir().unwrap();
        let sim = PowerLoss::new(tmp.path(), Some(3), Box::new(|| {}));
        std::fs::write(tmp.path().join("f"), b"0123456789").unwrap();
        let mut f = File::options()
            .read(true)
            .write(true)
            .open(tmp.path().join("f"))
            .unwrap();
        write(&*sim, &mut f, b"unsynced"); // step 1: durable content is 0123456789
        sim.before(&StoreOp::SetLen { file: &f, size: 4 }).unwrap(); // step 2
        f.set_len(4).unwrap();
        assert!(sim.before(&StoreOp::SyncFs).is_err()); // step 3: the cut
        assert_eq!(std::fs::read(tmp.path().join("f")).unwrap(), b"0123");
    }

    #[test]
    fn syncfs_makes_everything_durable() {
        let tmp = tempfile::tempdir().unwrap();
        let sim = PowerLoss::new(tmp.path(), Some(3), Box::new(|| {}));
        let mut f = File::create_new(tmp.path().join("f")).unwrap();
        write(&*sim, &mut f, b"kept");
        sim.before(&StoreOp::SyncFs).unwrap();
        assert_eq!(sim.unsynced_files(), 0);
        assert!(sim.before(&StoreOp::SyncDir).is_err());
        assert_eq!(std::fs::read(tmp.path().join("f")).unwrap(), b"kept");
    }
}
