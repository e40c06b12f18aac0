//! [`RedirectFs`]: the FUSE file system the guest (or a host mount) talks to.
//!
//! It layers the redirect contract (DESIGN.md section 4) over fuse-backend-rs's
//! `PassthroughFs`, which serves the guest tree: names, directories, symlinks, modes, owners,
//! timestamps and the guest's own xattrs live on the host exactly as the guest set them. This
//! layer adds, for each regular file of a redirecting share:
//! - data I/O, size and block count go to `<store>/<volume>/<path>`; the stub keeps the same
//!   apparent size (sparse, no extents) and gets mtime/ctime updates on data changes;
//! - every namespace change (create, link, unlink, rename, rmdir) is mirrored in the store,
//!   store first where a failure could otherwise leave a stub without data, and undone if the
//!   guest-tree half fails;
//! - special files are inert regular host files whose type lives in the metadata.
//!
//! Directory renames do not rewrite the metadata of the files below: the recorded common
//! portion is a hint, compared with the path a file is looked up by and corrected then (and
//! the store object is moved back under the right name if a crash left it at the old one).
//!
//! Concurrency: namespace changes take the namespace lock exclusively; lookups, opens and
//! I/O take it shared, so no open can ever see a half-done rename.
//!
//! Attribute caching: attributes are returned with a zero timeout (size and blocks come from
//! the store, and a hard link's other names change ctime and link count behind the kernel's
//! back), entries with one second (every name change goes through this server).

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{CreateIn, FsOptions, OpenOptions, SetattrValid};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, GetxattrReply, ListxattrReply, ZeroCopyReader,
    ZeroCopyWriter,
};
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};

use crate::beneath::{open_beneath, reopen_regular, walk};
use crate::fdcache::FdCache;
use crate::meta::{filter_xattr_list, is_reserved_xattr, is_special_kind, Meta};
use crate::meta::{META_XATTR_ROOT, META_XATTR_USER};
use crate::names::{join, validate_name, NameTable};
use crate::share::ShareSpec;
use crate::store::{Store, StoreError};

/// Largest xattr value or list read back from the guest tree.
const XATTR_BUF: u32 = 64 * 1024;

/// Errors building a [`RedirectFs`].
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The guest tree cannot be served.
    #[error("cannot serve guest tree {dir}")]
    GuestTree {
        /// The guest tree.
        dir: std::path::PathBuf,
        /// What the host said.
        #[source]
        source: io::Error,
    },
    /// The guest tree path is not valid UTF-8 (fuse-backend-rs takes a `String`).
    #[error("guest tree path {0} is not valid UTF-8; rename it")]
    NonUtf8(std::path::PathBuf),
    /// The store volume cannot be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A `Result` with an [`FsError`].
pub type Result<T> = std::result::Result<T, FsError>;

/// Tunables of a [`RedirectFs`].
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// Most store objects held open at once (evicted least recently used first); as many
    /// stubs of redirected files may be held open again for size and time updates.
    pub max_store_fds: usize,
    /// How long the kernel may cache attributes.
    pub attr_timeout: Duration,
    /// How long the kernel may cache names.
    pub entry_timeout: Duration,
    /// Reference guest-tree inodes by file handle instead of an `O_PATH` descriptor each
    /// (needs CAP_DAC_READ_SEARCH; keeps host descriptors bounded however many inodes the guest
    /// looks up).
    pub inode_file_handles: bool,
}

impl Default for FsConfig {
    fn default() -> Self {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        FsConfig {
            max_store_fds: 256,
            attr_timeout: Duration::ZERO,
            entry_timeout: Duration::from_secs(1),
            inode_file_handles: root,
        }
    }
}

/// What a guest-tree inode is, from its metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Served as is (directories, symlinks, files without metadata, passthrough shares).
    Plain,
    /// A regular file whose data is in the store.
    Redirect,
    /// An inert special file.
    Special { kind: u32, rdev: u32 },
}

/// An open file as the guest holds it.
#[derive(Debug, Clone, Copy)]
enum OpenFile {
    /// Opened by the passthrough layer; its handle there.
    Inner(u64),
    /// A redirected file: I/O goes to the store object of `inode`.
    Redirect { inode: u64, append: bool },
}

#[derive(Debug, Default)]
struct State {
    names: NameTable,
    kinds: HashMap<u64, Kind>,
    handles: HashMap<u64, OpenFile>,
    open_counts: HashMap<u64, usize>,
    orphans: HashMap<u64, CString>,
    /// Guest-tree inodes of open files whose last name is gone: an `O_PATH` descriptor keeps
    /// the host inode alive so the passthrough layer can still reach it until release.
    pins: HashMap<u64, OwnedFd>,
}

/// The redirecting file system over one share.
pub struct RedirectFs {
    inner: PassthroughFs,
    file_handles: bool,
    guest_root: OwnedFd,
    store: Option<Store>,
    volume: Vec<u8>,
    meta_name: &'static CStr,
    ns: RwLock<()>,
    state: Mutex<State>,
    size_lock: Mutex<()>,
    fds: FdCache,
    stub_fds: FdCache,
    next_handle: AtomicU64,
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn root_ctx() -> Context {
    Context::new()
}

impl RedirectFs {
    /// Builds the file system for `share`: plain passthrough without a store, redirecting
    /// with one. Opening the store takes the volume lock, held until this value is dropped.
    pub fn new(share: &ShareSpec, cfg: FsConfig) -> Result<Self> {
        let dir = share
            .dir
            .to_str()
            .ok_or_else(|| FsError::NonUtf8(share.dir.clone()))?
            .to_string();
        let guest_root = File::open(&share.dir)
            .map(OwnedFd::from)
            .map_err(|source| FsError::GuestTree {
                dir: share.dir.clone(),
                source,
            })?;
        let pcfg = Config {
            root_dir: dir,
            xattr: true,
            do_import: true,
            attr_timeout: cfg.attr_timeout,
            entry_timeout: cfg.entry_timeout,
            cache_policy: CachePolicy::Auto,
            writeback: false,
            inode_file_handles: cfg.inode_file_handles,
            ..Default::default()
        };
        let inner = PassthroughFs::new(pcfg).map_err(|source| FsError::GuestTree {
            dir: share.dir.clone(),
            source,
        })?;
        let (store, volume) = match &share.store {
            Some(s) => (
                Some(Store::open(&s.root, &s.volume)?),
                s.volume.clone().into_bytes(),
            ),
            None => (None, Vec::new()),
        };
        // SAFETY: geteuid has no preconditions and cannot fail.
        let meta_name = if unsafe { libc::geteuid() } == 0 {
            META_XATTR_ROOT
        } else {
            META_XATTR_USER
        };
        log::info!(
            "serving {} ({}), at most {} store descriptors",
            share.dir.display(),
            match &share.store {
                Some(s) => format!("redirected to volume {} of {}", s.volume, s.root.display()),
                None => "passthrough".to_string(),
            },
            cfg.max_store_fds
        );
        Ok(RedirectFs {
            inner,
            file_handles: cfg.inode_file_handles,
            guest_root,
            store,
            volume,
            meta_name,
            ns: RwLock::new(()),
            state: Mutex::new(State::default()),
            size_lock: Mutex::new(()),
            fds: FdCache::new(cfg.max_store_fds),
            stub_fds: FdCache::new(cfg.max_store_fds),
            next_handle: AtomicU64::new(1),
        })
    }

    /// True if regular files are redirected into a store.
    pub fn is_redirecting(&self) -> bool {
        self.store.is_some()
    }

    /// How many store descriptors are open now (never more than `max_store_fds`).
    pub fn open_store_fds(&self) -> usize {
        self.fds.len()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is a set of maps updated one call at a time; a panic in another thread
        // cannot leave one half-written, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ns_read(&self) -> RwLockReadGuard<'_, ()> {
        self.ns.read().unwrap_or_else(|p| p.into_inner())
    }

    fn ns_write(&self) -> RwLockWriteGuard<'_, ()> {
        self.ns.write().unwrap_or_else(|p| p.into_inner())
    }

    // ----- metadata -----

    fn read_meta(&self, inode: u64) -> io::Result<Option<Meta>> {
        match self
            .inner
            .getxattr(&root_ctx(), inode, self.meta_name, XATTR_BUF)
        {
            Ok(GetxattrReply::Value(v)) => match Meta::decode(&v) {
                Ok(m) => Ok(Some(m)),
                Err(e) => {
                    log::warn!("inode {inode}: {e}; serving it as a plain file");
                    Ok(None)
                }
            },
            Ok(GetxattrReply::Count(_)) => Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn write_meta(&self, inode: u64, meta: &Meta) -> io::Result<()> {
        self.inner
            .setxattr(&root_ctx(), inode, self.meta_name, &meta.encode(), 0)
    }

    fn classify(&self, inode: u64, attr: &libc::stat64) -> io::Result<Kind> {
        if attr.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Ok(Kind::Plain);
        }
        Ok(match self.read_meta(inode)? {
            Some(Meta::Special { kind, rdev }) => Kind::Special { kind, rdev },
            Some(Meta::Redirect { volume, .. })
                if self.store.is_some() && volume == self.volume =>
            {
                Kind::Redirect
            }
            Some(Meta::Redirect { volume, .. }) => {
                log::warn!(
                    "inode {inode} is redirected to volume {:?}, not served here; plain file",
                    String::from_utf8_lossy(&volume)
                );
                Kind::Plain
            }
            None => Kind::Plain,
        })
    }

    fn kind(&self, inode: u64) -> io::Result<Kind> {
        if let Some(kind) = self.state().kinds.get(&inode) {
            return Ok(*kind);
        }
        let (attr, _) = self.inner.getattr(&root_ctx(), inode, None)?;
        let kind = self.classify(inode, &attr)?;
        self.state().kinds.insert(inode, kind);
        Ok(kind)
    }

    fn store(&self) -> io::Result<&Store> {
        self.store.as_ref().ok_or_else(|| errno(libc::EIO))
    }

    // ----- store objects -----

    /// The open store object of a redirected inode. The caller holds the namespace lock.
    fn object(&self, inode: u64) -> io::Result<std::sync::Arc<File>> {
        let store = self.store()?;
        self.fds.get(inode, || {
            let (orphan, path) = {
                let st = self.state();
                (st.orphans.get(&inode).cloned(), st.names.path(inode))
            };
            match (orphan, path) {
                (Some(orphan), _) => store.open_orphan(&orphan),
                (None, Some(parts)) => store.open_object(&parts),
                (None, None) => Err(errno(libc::ESTALE)),
            }
        })
    }

    fn with_object<T>(
        &self,
        inode: u64,
        f: impl FnOnce(&mut File) -> io::Result<T>,
    ) -> io::Result<T> {
        let arc = self.object(inode)?;
        // SAFETY: `arc` keeps the descriptor open for the whole call, and ManuallyDrop makes
        // sure this second `File` over the same descriptor never closes it.
        let mut file = ManuallyDrop::new(unsafe { File::from_raw_fd(arc.as_raw_fd()) });
        f(&mut file)
    }

    /// Sets the stub's apparent size to the store object's (a sparse truncate) and marks a
    /// data change in mtime/ctime.
    fn sync_stub(&self, inode: u64, touch: bool) -> io::Result<()> {
        let _guard = self.size_lock.lock().unwrap_or_else(|p| p.into_inner());
        let size = self.with_object(inode, |f| f.metadata().map(|m| m.len()))?;
        match self.stub_file(inode) {
            Ok(stub) => return sync_stub_file(&stub, size, touch),
            Err(e) => log::debug!("inode {inode}: no direct stub descriptor ({e}), slow path"),
        }
        let (stub, _) = self.inner.getattr(&root_ctx(), inode, None)?;
        // SAFETY: stat64 is plain old data; all-zero is a valid value.
        let mut attr: libc::stat64 = unsafe { std::mem::zeroed() };
        attr.st_size = size as i64;
        let mut valid = SetattrValid::empty();
        if stub.st_size != size as i64 {
            valid |= SetattrValid::SIZE;
        }
        if touch {
            valid |= SetattrValid::MTIME | SetattrValid::MTIME_NOW;
        }
        if !valid.is_empty() {
            self.inner.setattr(&root_ctx(), inode, attr, None, valid)?;
        }
        Ok(())
    }

    /// A write descriptor on the stub of a redirected inode, so that each data change costs
    /// a few syscalls on the stub (fstat, ftruncate or futimens) rather than a round of
    /// reopens through the passthrough layer. Bounded like the store descriptors.
    fn stub_file(&self, inode: u64) -> io::Result<std::sync::Arc<File>> {
        self.stub_fds.get(inode, || {
            let st = self.state();
            if let Some(pin) = st.pins.get(&inode) {
                return reopen_regular(pin, libc::O_WRONLY);
            }
            let parts = st.names.path(inode).ok_or_else(|| errno(libc::ESTALE))?;
            drop(st);
            let (name, dirs) = parts.split_last().ok_or_else(|| errno(libc::EINVAL))?;
            let dir = walk(&self.guest_root, dirs)?;
            let path_fd = open_beneath(&dir, name, libc::O_PATH, 0)?;
            reopen_regular(&path_fd, libc::O_WRONLY)
        })
    }

    fn fix_attr(&self, inode: u64, kind: Kind, st: &mut libc::stat64) {
        match kind {
            Kind::Plain => {}
            Kind::Special { kind, rdev } => {
                st.st_mode = (st.st_mode & !libc::S_IFMT) | kind;
                st.st_rdev = u64::from(rdev);
                st.st_size = 0;
                st.st_blocks = 0;
            }
            Kind::Redirect => match self.with_object(inode, |f| f.metadata()) {
                Ok(m) => {
                    use std::os::unix::fs::MetadataExt;
                    st.st_size = m.size() as i64;
                    st.st_blocks = m.blocks() as i64;
                }
                Err(e) => log::warn!("inode {inode}: store object unreachable: {e}"),
            },
        }
    }

    /// Records a new kernel reference to `entry`, reached as `parent`/`name`, and fixes its
    /// attributes for the guest's view.
    fn admit(&self, parent: u64, name: &CStr, mut entry: Entry, kind: Kind) -> Entry {
        {
            let mut st = self.state();
            st.names.remember(entry.inode, parent, name);
            st.kinds.insert(entry.inode, kind);
        }
        self.fix_attr(entry.inode, kind, &mut entry.attr);
        entry
    }

    /// Looks a name up in the passthrough layer without handing a reference to the kernel.
    fn peek(&self, parent: u64, name: &CStr) -> io::Result<Option<(Entry, Kind)>> {
        match self.inner.lookup(&root_ctx(), parent, name) {
            Ok(entry) => {
                let kind = match self.state().kinds.get(&entry.inode) {
                    Some(k) => Ok(*k),
                    None => self.classify(entry.inode, &entry.attr),
                };
                match kind {
                    Ok(kind) => Ok(Some((entry, kind))),
                    Err(e) => {
                        self.inner.forget(&root_ctx(), entry.inode, 1);
                        Err(e)
                    }
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn unpeek(&self, entry: Option<&(Entry, Kind)>) {
        if let Some((e, _)) = entry {
            self.inner.forget(&root_ctx(), e.inode, 1);
        }
    }

    fn child_parts(&self, parent: u64, name: &CStr) -> io::Result<Vec<CString>> {
        self.state()
            .names
            .child_path(parent, name)
            .ok_or_else(|| errno(libc::ESTALE))
    }

    /// Compares the recorded common portion with the path the file was reached by; corrects
    /// the record, and moves the store object back if a crash left it at the recorded path.
    fn correct_portion(&self, inode: u64, parts: &[CString]) -> io::Result<()> {
        let store = self.store()?;
        let here = join(parts);
        let current = self.read_meta(inode)?;
        if current == Some(Meta::redirect(&self.volume, &here)) {
            return Ok(());
        }
        let (recorded, truncated) = match current {
            Some(Meta::Redirect {
                portion, truncated, ..
            }) => (portion, truncated),
            _ => return Ok(()),
        };
        if store.stat_object(parts).is_err() {
            let old: Option<Vec<CString>> = recorded
                .split(|&b| b == b'/')
                .map(|p| CString::new(p).ok())
                .collect();
            if let (Some(old), false) = (old, truncated) {
                if old.iter().all(|p| validate_name(p).is_ok()) && store.stat_object(&old).is_ok() {
                    log::warn!(
                        "moving store object {:?} to {:?} to match the guest tree",
                        String::from_utf8_lossy(&recorded),
                        String::from_utf8_lossy(&here)
                    );
                    store.rename(&old, parts, 0)?;
                }
            }
        }
        self.record_portion(inode, parts)
    }

    fn record_portion(&self, inode: u64, parts: &[CString]) -> io::Result<()> {
        self.write_meta(inode, &Meta::redirect(&self.volume, &join(parts)))
    }

    /// Creates a redirected regular file: the store object first, then the stub, then the
    /// metadata; any failure undoes what was done.
    fn create_redirected(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let store = self.store()?;
        let parts = self.child_parts(parent, name)?;
        let object = store.create_object(&parts)?;
        let mode = libc::S_IFREG | (mode & 0o7777);
        let entry = match self.inner.mknod(ctx, parent, name, mode, 0, umask) {
            Ok(e) => e,
            Err(e) => {
                let _ = store.remove(&parts, false);
                return Err(e);
            }
        };
        if let Err(e) = self.record_portion(entry.inode, &parts) {
            let _ = self.inner.unlink(&root_ctx(), parent, name);
            let _ = store.remove(&parts, false);
            self.inner.forget(&root_ctx(), entry.inode, 1);
            return Err(e);
        }
        drop(object);
        Ok(self.admit(parent, name, entry, Kind::Redirect))
    }

    fn new_handle(&self, file: OpenFile) -> u64 {
        let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
        let mut st = self.state();
        st.handles.insert(handle, file);
        if let OpenFile::Redirect { inode, .. } = file {
            *st.open_counts.entry(inode).or_default() += 1;
        }
        handle
    }

    fn handle(&self, handle: u64) -> io::Result<OpenFile> {
        self.state()
            .handles
            .get(&handle)
            .copied()
            .ok_or_else(|| errno(libc::EBADF))
    }

    fn inner_handle(&self, handle: Option<u64>) -> io::Result<Option<u64>> {
        match handle {
            None => Ok(None),
            Some(h) => Ok(match self.handle(h)? {
                OpenFile::Inner(ih) => Some(ih),
                OpenFile::Redirect { .. } => None,
            }),
        }
    }

    fn open_redirected(&self, inode: u64, flags: u32) -> io::Result<u64> {
        if flags as i32 & libc::O_TRUNC != 0 {
            self.with_object(inode, |f| f.set_len(0))?;
            self.sync_stub(inode, true)?;
        } else {
            // Surface a missing store object at open, not at the first read.
            self.object(inode)?;
        }
        Ok(self.new_handle(OpenFile::Redirect {
            inode,
            append: flags as i32 & libc::O_APPEND != 0,
        }))
    }

    /// Runs `make` (a mkdir or symlink in the passthrough layer) so that the new node belongs
    /// to the caller.
    ///
    /// fuse-backend-rs reopens the parent directory after switching to the caller's fsuid for
    /// these two calls; with file-handle inodes that reopen needs CAP_DAC_READ_SEARCH, which the
    /// switch drops, so a non-root caller would get EPERM. Such calls are made as root and the
    /// node handed over with chown (the group stays inherited under a set-group-ID parent).
    /// The kernel (default_permissions) has already checked that the caller may create here.
    fn create_as_caller(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        is_dir: bool,
        make: impl FnOnce(&Context) -> io::Result<Entry>,
    ) -> io::Result<Entry> {
        if !self.file_handles || (ctx.uid == 0 && ctx.gid == 0) {
            return make(ctx);
        }
        let (parent_st, _) = self.inner.getattr(&root_ctx(), parent, None)?;
        let mut entry = make(&root_ctx())?;
        // SAFETY: stat64 is plain old data; all-zero is a valid value.
        let mut attr: libc::stat64 = unsafe { std::mem::zeroed() };
        attr.st_uid = ctx.uid;
        attr.st_gid = ctx.gid;
        let mut valid = SetattrValid::UID;
        if parent_st.st_mode & libc::S_ISGID == 0 {
            valid |= SetattrValid::GID;
        }
        match self
            .inner
            .setattr(&root_ctx(), entry.inode, attr, None, valid)
        {
            Ok((st, _)) => {
                entry.attr = st;
                Ok(entry)
            }
            Err(e) => {
                let _ = if is_dir {
                    self.inner.rmdir(&root_ctx(), parent, name)
                } else {
                    self.inner.unlink(&root_ctx(), parent, name)
                };
                self.inner.forget(&root_ctx(), entry.inode, 1);
                Err(e)
            }
        }
    }

    fn is_open(&self, inode: u64) -> bool {
        self.state().open_counts.get(&inode).copied().unwrap_or(0) > 0
    }

    /// Keeps the stub of an open redirected file reachable after its last name goes (the
    /// caller is about to unlink or replace `parts`).
    fn pin_stub(&self, inode: u64, parts: &[CString]) {
        if !self.is_open(inode) || self.state().pins.contains_key(&inode) {
            return;
        }
        let pinned = match parts.split_last() {
            Some((name, dirs)) => walk(&self.guest_root, dirs)
                .and_then(|dir| open_beneath(&dir, name, libc::O_PATH, 0)),
            None => Err(errno(libc::EINVAL)),
        };
        match pinned {
            Ok(fd) => {
                self.state().pins.insert(inode, fd);
            }
            Err(e) => log::warn!("cannot pin stub of open inode {inode}: {e}"),
        }
    }

    /// Called once the last name of `inode` is gone from the guest tree and from `parts` in
    /// the store: an open file keeps its object in the orphan area, a closed one loses it.
    fn drop_last_name(&self, inode: u64, parts: &[CString]) -> io::Result<()> {
        let store = self.store()?;
        if self.is_open(inode) {
            let orphan = store.orphan(parts, inode)?;
            self.state().orphans.insert(inode, orphan);
            Ok(())
        } else {
            self.fds.remove(inode);
            self.stub_fds.remove(inode);
            store.remove(parts, false)
        }
    }
}

/// Gives `stub` the apparent size `size` (sparse) and, for a data change, a new mtime/ctime.
fn sync_stub_file(stub: &File, size: u64, touch: bool) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = stub.metadata()?;
    if meta.len() != size {
        // A size change sets mtime and ctime by itself.
        return stub.set_len(size);
    }
    // The kernel stamps changes with its coarse clock: if the stub already carries the
    // current tick, stamping it again would change nothing a reader can see.
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `now`.
    let clock = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut now) };
    if clock == 0 && (meta.mtime(), meta.mtime_nsec()) >= (now.tv_sec, now.tv_nsec) {
        return Ok(());
    }
    if touch {
        let times = [
            libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
            libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_NOW,
            },
        ];
        // SAFETY: futimens on a descriptor we hold, with a two-element timespec array.
        crate::beneath::check(unsafe { libc::futimens(stub.as_raw_fd(), times.as_ptr()) })?;
    }
    Ok(())
}

impl FileSystem for RedirectFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        let opts = self.inner.init(capable)?;
        // READDIRPLUS would hand out attributes from inside the passthrough's directory walk,
        // where this layer cannot fix them up: plain READDIR plus LOOKUP it is.
        Ok(opts - FsOptions::DO_READDIRPLUS - FsOptions::READDIRPLUS_AUTO)
    }

    fn destroy(&self) {
        self.inner.destroy();
    }

    fn lookup(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        validate_name(name)?;
        let _ns = self.ns_read();
        let entry = self.inner.lookup(ctx, parent, name)?;
        let kind = match self.classify(entry.inode, &entry.attr) {
            Ok(k) => k,
            Err(e) => {
                self.inner.forget(ctx, entry.inode, 1);
                return Err(e);
            }
        };
        if kind == Kind::Redirect {
            if let Some(parts) = self.state().names.child_path(parent, name) {
                if let Err(e) = self.correct_portion(entry.inode, &parts) {
                    log::warn!("cannot correct metadata of inode {}: {e}", entry.inode);
                }
            }
        }
        Ok(self.admit(parent, name, entry, kind))
    }

    fn forget(&self, ctx: &Context, inode: u64, count: u64) {
        {
            let mut st = self.state();
            if st.names.forget(inode, count) && !st.open_counts.contains_key(&inode) {
                st.kinds.remove(&inode);
            }
        }
        self.inner.forget(ctx, inode, count);
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(u64, u64)>) {
        for (inode, count) in requests {
            self.forget(ctx, inode, count);
        }
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: u64,
        handle: Option<u64>,
    ) -> io::Result<(libc::stat64, Duration)> {
        let _ns = self.ns_read();
        let ih = self.inner_handle(handle)?;
        let (mut st, timeout) = self.inner.getattr(ctx, inode, ih)?;
        let kind = self.kind(inode)?;
        self.fix_attr(inode, kind, &mut st);
        Ok((st, timeout))
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: u64,
        attr: libc::stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(libc::stat64, Duration)> {
        let _ns = self.ns_read();
        let kind = self.kind(inode)?;
        let ih = self.inner_handle(handle)?;
        if kind != Kind::Redirect || !valid.contains(SetattrValid::SIZE) {
            let (mut st, timeout) = self.inner.setattr(ctx, inode, attr, ih, valid)?;
            self.fix_attr(inode, kind, &mut st);
            return Ok((st, timeout));
        }
        if attr.st_size < 0 {
            return Err(errno(libc::EINVAL));
        }
        // Stub first (sparse, so undoing it loses nothing), then the data.
        let old = self.with_object(inode, |f| f.metadata().map(|m| m.len()))?;
        let (mut st, timeout) = self.inner.setattr(ctx, inode, attr, None, valid)?;
        if let Err(e) = self.with_object(inode, |f| f.set_len(attr.st_size as u64)) {
            // SAFETY: stat64 is plain old data; all-zero is a valid value.
            let mut undo: libc::stat64 = unsafe { std::mem::zeroed() };
            undo.st_size = old as i64;
            let _ = self
                .inner
                .setattr(&root_ctx(), inode, undo, None, SetattrValid::SIZE);
            return Err(e);
        }
        self.fix_attr(inode, kind, &mut st);
        Ok((st, timeout))
    }

    fn readlink(&self, ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        self.inner.readlink(ctx, inode)
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        validate_name(name)?;
        let _ns = self.ns_write();
        let entry = self.create_as_caller(ctx, parent, name, false, |c| {
            self.inner.symlink(c, linkname, parent, name)
        })?;
        Ok(self.admit(parent, name, entry, Kind::Plain))
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        validate_name(name)?;
        let _ns = self.ns_write();
        let kind = mode & libc::S_IFMT;
        if kind == libc::S_IFREG && self.store.is_some() {
            return self.create_redirected(ctx, parent, name, mode, umask);
        }
        if kind == libc::S_IFREG {
            let entry = self.inner.mknod(ctx, parent, name, mode, rdev, umask)?;
            return Ok(self.admit(parent, name, entry, Kind::Plain));
        }
        if !is_special_kind(kind) {
            return Err(errno(libc::EINVAL));
        }
        // An inert special file: an empty regular host file, its type in the metadata.
        let stub_mode = libc::S_IFREG | (mode & 0o7777);
        let entry = self.inner.mknod(ctx, parent, name, stub_mode, 0, umask)?;
        let meta = Meta::Special { kind, rdev };
        if let Err(e) = self.write_meta(entry.inode, &meta) {
            let _ = self.inner.unlink(&root_ctx(), parent, name);
            self.inner.forget(&root_ctx(), entry.inode, 1);
            return Err(e);
        }
        Ok(self.admit(parent, name, entry, Kind::Special { kind, rdev }))
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        validate_name(name)?;
        let _ns = self.ns_write();
        let entry = self.create_as_caller(ctx, parent, name, true, |c| {
            self.inner.mkdir(c, parent, name, mode, umask)
        })?;
        Ok(self.admit(parent, name, entry, Kind::Plain))
    }

    fn unlink(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        validate_name(name)?;
        let _ns = self.ns_write();
        let victim = self.peek(parent, name)?;
        let result = (|| {
            let (entry, kind) = victim.as_ref().ok_or_else(|| errno(libc::ENOENT))?;
            let parts = match kind {
                Kind::Redirect => Some(self.child_parts(parent, name)?),
                _ => None,
            };
            if let (Some(parts), true) = (&parts, entry.attr.st_nlink <= 1) {
                self.pin_stub(entry.inode, parts);
            }
            // Stub first: a crash in between leaves an unnamed store object (garbage), never
            // a stub without data.
            self.inner.unlink(ctx, parent, name)?;
            self.state().names.remove_name(parent, name);
            if let Some(parts) = parts {
                let inode = entry.inode;
                if entry.attr.st_nlink > 1 {
                    self.store()?.remove(&parts, false)?;
                    let remaining = self.state().names.path(inode);
                    if let Some(rest) = remaining {
                        self.record_portion(inode, &rest)?;
                    }
                } else {
                    self.drop_last_name(inode, &parts)?;
                }
            }
            Ok(())
        })();
        self.unpeek(victim.as_ref());
        result
    }

    fn rmdir(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        validate_name(name)?;
        let _ns = self.ns_write();
        self.inner.rmdir(ctx, parent, name)?;
        let parts = self.state().names.child_path(parent, name);
        self.state().names.remove_name(parent, name);
        if let (Some(store), Some(parts)) = (&self.store, parts) {
            if let Err(e) = store.remove(&parts, true) {
                log::warn!(
                    "store directory {:?} not removed: {e}",
                    String::from_utf8_lossy(&join(&parts))
                );
            }
        }
        Ok(())
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        validate_name(oldname)?;
        validate_name(newname)?;
        // A whiteout is a character device on the host: never created.
        if flags & libc::RENAME_WHITEOUT != 0 {
            return Err(errno(libc::EINVAL));
        }
        let _ns = self.ns_write();
        let src = self.peek(olddir, oldname)?;
        let dst = match self.peek(newdir, newname) {
            Ok(d) => d,
            Err(e) => {
                self.unpeek(src.as_ref());
                return Err(e);
            }
        };
        let result =
            self.rename_locked(ctx, (olddir, oldname), (newdir, newname), flags, &src, &dst);
        self.unpeek(src.as_ref());
        self.unpeek(dst.as_ref());
        result
    }

    fn link(&self, ctx: &Context, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        validate_name(newname)?;
        let _ns = self.ns_write();
        let kind = self.kind(inode)?;
        if kind != Kind::Redirect {
            let entry = self.inner.link(ctx, inode, newparent, newname)?;
            return Ok(self.admit(newparent, newname, entry, kind));
        }
        let store = self.store()?;
        let old = self
            .state()
            .names
            .path(inode)
            .ok_or_else(|| errno(libc::ENOENT))?;
        let new = self.child_parts(newparent, newname)?;
        store.link(&old, &new)?;
        match self.inner.link(ctx, inode, newparent, newname) {
            Ok(entry) => Ok(self.admit(newparent, newname, entry, kind)),
            Err(e) => {
                let _ = store.remove(&new, false);
                Err(e)
            }
        }
    }

    fn open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        let _ns = self.ns_read();
        match self.kind(inode)? {
            Kind::Redirect => Ok((
                Some(self.open_redirected(inode, flags)?),
                OpenOptions::empty(),
                None,
            )),
            // The kernel opens FIFOs and device nodes itself; nothing on the host is opened.
            Kind::Special { .. } => Err(errno(libc::ENXIO)),
            Kind::Plain => {
                let (ih, opts, passthrough) = self.inner.open(ctx, inode, flags, fuse_flags)?;
                let ih = ih.ok_or_else(|| errno(libc::EIO))?;
                Ok((
                    Some(self.new_handle(OpenFile::Inner(ih))),
                    opts,
                    passthrough,
                ))
            }
        }
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        validate_name(name)?;
        let _ns = self.ns_write();
        let entry = match self.peek(parent, name)? {
            Some(existing) => {
                if args.flags as i32 & libc::O_EXCL != 0 {
                    self.unpeek(Some(&existing));
                    return Err(errno(libc::EEXIST));
                }
                // The name exists: this is an open of it, and the kernel gets the reference.
                // (The passthrough layer's own create would reopen it under the caller's
                // fsuid, which fails with file-handle inodes.)
                let (entry, kind) = existing;
                self.admit(parent, name, entry, kind)
            }
            None if self.store.is_some() => {
                self.create_redirected(ctx, parent, name, args.mode, args.umask)?
            }
            None => {
                let (entry, ih, opts, passthrough) = self.inner.create(ctx, parent, name, args)?;
                let entry = self.admit(parent, name, entry, Kind::Plain);
                let handle = ih.map(|ih| self.new_handle(OpenFile::Inner(ih)));
                return Ok((entry, handle, opts, passthrough));
            }
        };
        let kind = self.kind(entry.inode)?;
        let opened = match kind {
            Kind::Redirect => self.open_redirected(entry.inode, args.flags),
            Kind::Special { .. } => Err(errno(libc::ENXIO)),
            Kind::Plain => self
                .inner
                .open(ctx, entry.inode, args.flags, args.fuse_flags)
                .and_then(|(ih, _, _)| ih.ok_or_else(|| errno(libc::EIO)))
                .map(|ih| self.new_handle(OpenFile::Inner(ih))),
        };
        match opened {
            Ok(handle) => Ok((entry, Some(handle), OpenOptions::empty(), None)),
            Err(e) => {
                // The kernel drops its reference when create fails.
                self.forget(ctx, entry.inode, 1);
                Err(e)
            }
        }
    }

    fn read(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        match self.handle(handle)? {
            OpenFile::Inner(ih) => self
                .inner
                .read(ctx, inode, ih, w, size, offset, lock_owner, flags),
            OpenFile::Redirect { inode, .. } => {
                let _ns = self.ns_read();
                self.with_object(inode, |f| w.write_from(f, size as usize, offset))
            }
        }
    }

    fn write(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        match self.handle(handle)? {
            OpenFile::Inner(ih) => self.inner.write(
                ctx,
                inode,
                ih,
                r,
                size,
                offset,
                lock_owner,
                delayed_write,
                flags,
                fuse_flags,
            ),
            OpenFile::Redirect { inode, append } => {
                let _ns = self.ns_read();
                if offset
                    .checked_add(u64::from(size))
                    .is_none_or(|end| end > i64::MAX as u64)
                {
                    return Err(errno(libc::EFBIG));
                }
                let n = self.with_object(inode, |f| {
                    let offset = if append { f.metadata()?.len() } else { offset };
                    r.read_to(f, size as usize, offset)
                })?;
                self.sync_stub(inode, true)?;
                Ok(n)
            }
        }
    }

    fn flush(&self, ctx: &Context, inode: u64, handle: u64, lock_owner: u64) -> io::Result<()> {
        match self.handle(handle)? {
            OpenFile::Inner(ih) => self.inner.flush(ctx, inode, ih, lock_owner),
            OpenFile::Redirect { .. } => Ok(()),
        }
    }

    fn fsync(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        match self.handle(handle)? {
            OpenFile::Inner(ih) => self.inner.fsync(ctx, inode, datasync, ih),
            OpenFile::Redirect { inode, .. } => {
                let _ns = self.ns_read();
                self.with_object(inode, |f| {
                    if datasync {
                        f.sync_data()
                    } else {
                        f.sync_all()
                    }
                })?;
                // The data first, then the stub's size: after a power loss the stub never
                // claims more than the stored object holds, and fsync'd bytes stay visible.
                let stub = self.stub_file(inode)?;
                if datasync {
                    stub.sync_data()
                } else {
                    stub.sync_all()
                }
            }
        }
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        match self.handle(handle)? {
            OpenFile::Inner(ih) => self.inner.fallocate(ctx, inode, ih, mode, offset, length),
            OpenFile::Redirect { inode, .. } => {
                let _ns = self.ns_read();
                let offset = i64::try_from(offset).map_err(|_| errno(libc::EINVAL))?;
                let length = i64::try_from(length).map_err(|_| errno(libc::EINVAL))?;
                self.with_object(inode, |f| {
                    // SAFETY: fallocate on a descriptor we hold; no memory is passed.
                    let res =
                        unsafe { libc::fallocate64(f.as_raw_fd(), mode as i32, offset, length) };
                    crate::beneath::check(res).map(|_| ())
                })?;
                self.sync_stub(inode, true)
            }
        }
    }

    fn release(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        handle: u64,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        let file = self
            .state()
            .handles
            .remove(&handle)
            .ok_or_else(|| errno(libc::EBADF))?;
        match file {
            OpenFile::Inner(ih) => {
                self.inner
                    .release(ctx, inode, flags, ih, flush, flock_release, lock_owner)
            }
            OpenFile::Redirect { inode, .. } => {
                let orphan = {
                    let mut st = self.state();
                    let count = st.open_counts.entry(inode).or_default();
                    *count = count.saturating_sub(1);
                    if *count > 0 {
                        return Ok(());
                    }
                    st.open_counts.remove(&inode);
                    st.pins.remove(&inode);
                    st.orphans.remove(&inode)
                };
                self.fds.remove(inode);
                self.stub_fds.remove(inode);
                if let Some(orphan) = orphan {
                    self.store()?.remove_orphan(&orphan)?;
                }
                Ok(())
            }
        }
    }

    fn statfs(&self, ctx: &Context, inode: u64) -> io::Result<libc::statvfs64> {
        match &self.store {
            Some(store) => store.statvfs(),
            None => self.inner.statfs(ctx, inode),
        }
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        if is_reserved_xattr(name.to_bytes()) {
            return Err(errno(libc::EPERM));
        }
        self.inner.setxattr(ctx, inode, name, value, flags)
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        if is_reserved_xattr(name.to_bytes()) {
            return Err(errno(libc::ENODATA));
        }
        self.inner.getxattr(ctx, inode, name, size)
    }

    fn listxattr(&self, ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        let list = match self.inner.listxattr(ctx, inode, XATTR_BUF)? {
            ListxattrReply::Names(list) => filter_xattr_list(&list),
            ListxattrReply::Count(_) => Vec::new(),
        };
        if size == 0 {
            Ok(ListxattrReply::Count(list.len() as u32))
        } else if list.len() > size as usize {
            Err(errno(libc::ERANGE))
        } else {
            Ok(ListxattrReply::Names(list))
        }
    }

    fn removexattr(&self, ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        if is_reserved_xattr(name.to_bytes()) {
            return Err(errno(libc::ENODATA));
        }
        self.inner.removexattr(ctx, inode, name)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        self.inner.opendir(ctx, inode, flags)
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.inner
            .readdir(ctx, inode, handle, size, offset, &mut |mut entry| {
                // An inert special file is a regular file on the host: let the guest ask.
                if entry.type_ == u32::from(libc::DT_REG) {
                    entry.type_ = u32::from(libc::DT_UNKNOWN);
                }
                add_entry(entry)
            })
    }

    fn fsyncdir(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.inner.fsyncdir(ctx, inode, datasync, handle)
    }

    fn releasedir(&self, ctx: &Context, inode: u64, flags: u32, handle: u64) -> io::Result<()> {
        self.inner.releasedir(ctx, inode, flags, handle)
    }

    fn access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        self.inner.access(ctx, inode, mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        match self.handle(handle)? {
            OpenFile::Inner(ih) => self.inner.lseek(ctx, inode, ih, offset, whence),
            OpenFile::Redirect { inode, .. } => {
                let _ns = self.ns_read();
                let offset = i64::try_from(offset).map_err(|_| errno(libc::EINVAL))?;
                self.with_object(inode, |f| {
                    // SAFETY: lseek on a descriptor we hold; I/O uses pread/pwrite, so moving
                    // the shared file position is harmless.
                    let res = unsafe { libc::lseek64(f.as_raw_fd(), offset, whence as i32) };
                    if res < 0 {
                        Err(io::Error::last_os_error())
                    } else {
                        Ok(res as u64)
                    }
                })
            }
        }
    }
}

impl RedirectFs {
    fn rename_locked(
        &self,
        ctx: &Context,
        old: (u64, &CStr),
        new: (u64, &CStr),
        flags: u32,
        src: &Option<(Entry, Kind)>,
        dst: &Option<(Entry, Kind)>,
    ) -> io::Result<()> {
        let (src_entry, src_kind) = src.as_ref().ok_or_else(|| errno(libc::ENOENT))?;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        if flags & libc::RENAME_NOREPLACE != 0 && dst.is_some() {
            return Err(errno(libc::EEXIST));
        }
        let same = dst
            .as_ref()
            .is_some_and(|(d, _)| d.inode == src_entry.inode);
        let store = match &self.store {
            Some(store) if !same => store,
            _ => {
                self.inner.rename(ctx, old.0, old.1, new.0, new.1, flags)?;
                self.rename_names(old, new, exchange);
                return Ok(());
            }
        };
        let old_parts = self.child_parts(old.0, old.1)?;
        let new_parts = self.child_parts(new.0, new.1)?;
        let is_dir = |e: &Entry| e.attr.st_mode & libc::S_IFMT == libc::S_IFDIR;
        let in_store = |e: &Entry, k: Kind, parts: &[CString]| {
            k == Kind::Redirect || (is_dir(e) && store.stat_object(parts).is_ok())
        };
        let src_in = in_store(src_entry, *src_kind, &old_parts);
        let dst_in = dst
            .as_ref()
            .is_some_and(|(e, k)| in_store(e, *k, &new_parts));

        if exchange {
            let dst = dst.as_ref().ok_or_else(|| errno(libc::ENOENT))?;
            let (from, to, f) = match (src_in, dst_in) {
                (true, true) => (&old_parts, &new_parts, libc::RENAME_EXCHANGE),
                (true, false) => (&old_parts, &new_parts, 0),
                (false, true) => (&new_parts, &old_parts, 0),
                (false, false) => {
                    self.inner.rename(ctx, old.0, old.1, new.0, new.1, flags)?;
                    self.rename_names(old, new, true);
                    return Ok(());
                }
            };
            store.rename(from, to, f)?;
            if let Err(e) = self.inner.rename(ctx, old.0, old.1, new.0, new.1, flags) {
                let undo = if f == libc::RENAME_EXCHANGE {
                    store.rename(from, to, f)
                } else {
                    store.rename(to, from, 0)
                };
                if let Err(u) = undo {
                    log::error!("rename undo failed, store and guest tree disagree: {u}");
                }
                return Err(e);
            }
            self.rename_names(old, new, true);
            if *src_kind == Kind::Redirect {
                self.record_portion(src_entry.inode, &new_parts)?;
            }
            if dst.1 == Kind::Redirect {
                self.record_portion(dst.0.inode, &old_parts)?;
            }
            return Ok(());
        }

        // Move an overwritten file's object aside first, so the rename cannot destroy data
        // the guest rename might still fail to replace.
        let aside = match dst {
            Some((e, Kind::Redirect)) => {
                if e.attr.st_nlink <= 1 {
                    self.pin_stub(e.inode, &new_parts);
                }
                Some((e, store.orphan(&new_parts, e.inode)?))
            }
            _ => None,
        };
        let restore_aside = || {
            if let Some((_, orphan)) = &aside {
                if let Err(u) = store.unorphan(orphan, &new_parts) {
                    log::error!("rename undo failed, store and guest tree disagree: {u}");
                }
            }
        };
        if src_in {
            if let Err(e) = store.rename(&old_parts, &new_parts, 0) {
                restore_aside();
                return Err(e);
            }
        }
        if let Err(e) = self.inner.rename(ctx, old.0, old.1, new.0, new.1, flags) {
            if src_in {
                if let Err(u) = store.rename(&new_parts, &old_parts, 0) {
                    log::error!("rename undo failed, store and guest tree disagree: {u}");
                }
            }
            restore_aside();
            return Err(e);
        }
        self.rename_names(old, new, false);
        if let Some((e, orphan)) = aside {
            let open = self.state().open_counts.get(&e.inode).copied().unwrap_or(0) > 0;
            if e.attr.st_nlink <= 1 && open {
                self.state().orphans.insert(e.inode, orphan);
            } else {
                store.remove_orphan(&orphan)?;
                if e.attr.st_nlink > 1 {
                    if let Some(rest) = self.state().names.path(e.inode) {
                        self.record_portion(e.inode, &rest)?;
                    }
                }
            }
        } else if dst_in && !src_in {
            // An empty directory replaced by one without store data.
            store.remove(&new_parts, true)?;
        }
        if *src_kind == Kind::Redirect {
            self.record_portion(src_entry.inode, &new_parts)?;
        }
        Ok(())
    }

    fn rename_names(&self, old: (u64, &CStr), new: (u64, &CStr), exchange: bool) {
        let mut st = self.state();
        if exchange {
            st.names.exchange(old, new);
        } else {
            st.names.rename(old, new);
        }
    }
}

#[cfg(test)]
mod tests;
