//! [`RedirectFs`]: the FUSE file system the guest (or a host mount) talks to.
//!
//! It layers the redirect contract (docs/architecture.md#the-redirect-contract) over
//! fuse-backend-rs's `PassthroughFs`, which serves the guest tree: names, directories,
//! symlinks, modes, owners, timestamps and the guest's own xattrs live on the host exactly as
//! the guest set them. This layer adds, for each regular file of a redirecting share:
//! - data I/O, size and block count go to `<store>/<volume>/<path>`; the stub keeps the same
//!   apparent size (sparse, no extents) and gets mtime/ctime updates on data changes;
//! - every namespace change (create, link, unlink, rename, rmdir) is mirrored in the store.
//!   Create, link and rename change the store first and undo it if the guest-tree half
//!   fails; unlink removes the guest's name first (a crash in between leaves an unnamed
//!   object, never a stub without data); rmdir removes the store directory after the
//!   guest's, and only logs a failure there (an empty directory left in the store loses
//!   nothing). Create, link, unlink and rename are recorded in the volume's intent log
//!   first, so that recovery after a crash ([`crate::recover`]) can settle them;
//! - special files are inert regular host files whose type lives in the metadata.
//!
//! Directory renames do not rewrite the metadata of the files below: the recorded common
//! portion is a hint, compared with the path a file is looked up by and corrected then.
//! Files are always found by the path they are looked up by, never through the record.
//!
//! Concurrency: namespace changes take the namespace lock exclusively; lookups, opens and
//! I/O take it shared, so no open can ever see a half-done rename. Size changes of one file
//! (WRITE, SETATTR, fallocate, O_TRUNC) also take that file's data lock (a per-inode striped
//! lock), always after the namespace lock, so stub and object change size together; FORGET
//! takes it too, so a node never goes away under a change in flight.
//!
//! Node identity: what this layer keeps per node id (the node table of `nodes.rs`, cached
//! descriptors) is dropped when the kernel forgets the node and nothing holds it open, and when an
//! id comes back that nothing knew: without file handles, fuse-backend-rs reuses an id for a new
//! file that reuses the host inode number. An open redirected file holds its store object until its
//! last release. What the guest makes the server hold is counted against a descriptor budget
//! ([`crate::fdbudget`]); a FUSE session that ends (DESTROY, a device reset, a front-end gone)
//! gives all of it back.
//!
//! Listings: READDIR reads an open directory through the server's own descriptor of it
//! (`dirs.rs`), one `getdents64` per reply, reporting each entry's host inode number; the
//! passthrough layer lists only a directory whose known path no longer leads to it.
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
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::SetattrValid;
use fuse_backend_rs::api::filesystem::{Context, Entry, FileSystem, GetxattrReply};
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};

use self::dirs::DirStream;
use self::handles::{kept_open_flags, HandleTable, OpenFile, OpenInode};
use self::nodes::{Identity, NodeTable, ObjectAttr, StubStamp};
use self::redirecting::Redirecting;
use self::revalidate::{Named, Probe};
use self::xattrs::Reached;
use crate::beneath::{check, open_parts, ProcSelfFd};
use crate::faults::Hook;
use crate::fdbudget::FdBudget;
use crate::fdcache::FdCache;
use crate::intent::Intent;
use crate::meta::Meta;
use crate::names::{join, NameTable};
use crate::recover::RecoveryReport;
use crate::share::ShareSpec;
use crate::store::{Store, StoreError};

/// Largest xattr value or list read back from the guest tree.
const XATTR_BUF: u32 = 64 * 1024;

/// Mode bits that make a program run with its file's owner or group: a host file that holds
/// guest bytes never carries them (nor file capabilities), so a file that is to carry them
/// is redirected whatever the policy, and its stub, which holds no data, carries them.
const PRIVILEGE_BITS: u32 = libc::S_ISUID | libc::S_ISGID;

/// The xattr holding file capabilities, which grant privileges to whoever runs the file.
const CAPABILITY_XATTR: &CStr = c"security.capability";

/// Errors building a [`RedirectFs`].
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The guest tree cannot be served.
    #[error(
        "cannot serve guest tree {dir}: check dir= (an existing directory the server may read)"
    )]
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
    /// Another server holds the guest tree.
    #[error(transparent)]
    Tree(#[from] crate::treelock::TreeLockError),
    /// Extended attributes by descriptor were asked for and the kernel lacks the calls.
    #[error(
        "cannot reach the extended attributes of guest tree {0} by descriptor: this kernel \
         has no getxattrat (Linux 6.13 and later have it)"
    )]
    NoXattrAt(std::path::PathBuf),
    /// Extended attributes by descriptor were asked for with inodes held as file handles.
    #[error(
        "xattrs_by_descriptor needs inode_file_handles off (a node no known path leads to is \
         found by the descriptor the passthrough layer holds for it)"
    )]
    XattrsNeedDescriptorInodes,
    /// Recovery after an unclean stop failed.
    #[error("recovery of guest tree {dir} after an unclean stop failed")]
    Recovery {
        /// The guest tree.
        dir: std::path::PathBuf,
        /// What the host said.
        #[source]
        source: io::Error,
    },
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
    /// Most host descriptors the guest may make the server hold (open files and directories,
    /// stubs of files unlinked while open, and, without `inode_file_handles`, one per inode
    /// the guest knows); past it the guest's opens and lookups get EMFILE while the server's
    /// own work goes on. `None`: derived from `RLIMIT_NOFILE` ([`crate::fdbudget`]).
    pub max_guest_fds: Option<usize>,
    /// With `inode_file_handles`: most inodes the server keeps an `O_PATH` descriptor for,
    /// the most recently used, so that a GETATTR of one is a single `statx` instead of a
    /// reopen by handle. Reserved from `RLIMIT_NOFILE` like the store descriptors. `None`: a
    /// quarter of `RLIMIT_NOFILE`, at most 65,536 ([`FsConfig::hot_inodes_or_default`]).
    pub max_hot_inodes: Option<usize>,
    /// Reach extended attributes (the guest's and the redirect metadata) through the server's
    /// own descriptor of each node and its held `/proc/self/fd`, with Linux 6.13's
    /// `*xattrat` calls, instead of the path `/proc/self/fd/N`, which a server whose root is
    /// its guest tree cannot name (`--sandbox chroot`). Without those calls in the kernel,
    /// [`RedirectFs::new`] fails with [`FsError::NoXattrAt`]. Needs `inode_file_handles`
    /// off. Off by default.
    pub xattrs_by_descriptor: bool,
    /// The process takes the guest tree as its root (`chroot`) once this file system is
    /// built and before it serves (`--sandbox chroot`): the passthrough layer then opens the
    /// tree as `/` at each FUSE INIT, and extended attributes go by descriptor (as with
    /// `xattrs_by_descriptor`). Everything else is reached through descriptors opened here.
    /// Off by default.
    pub tree_as_root: bool,
    /// Sees every store operation first (tests only: fault injection and power-loss
    /// simulation, [`crate::faults`]); none by default.
    #[cfg(any(test, feature = "test-utils"))]
    pub store_hook: Hook,
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
            max_guest_fds: None,
            max_hot_inodes: None,
            xattrs_by_descriptor: false,
            tree_as_root: false,
            #[cfg(any(test, feature = "test-utils"))]
            store_hook: Hook::default(),
        }
    }
}

impl FsConfig {
    /// The hot-inode descriptors this configuration keeps (none without file handles: the
    /// passthrough layer then holds a descriptor per inode itself).
    pub fn hot_inodes_or_default(&self) -> usize {
        if !self.inode_file_handles {
            return 0;
        }
        self.max_hot_inodes.unwrap_or_else(|| {
            let nofile = crate::fdbudget::nofile_limit().unwrap_or(1024);
            (nofile / 4).min(65_536)
        })
    }

    /// The store hook: the configured one in tests, none otherwise.
    fn hook(&self) -> Hook {
        #[cfg(any(test, feature = "test-utils"))]
        return self.store_hook.clone();
        #[cfg(not(any(test, feature = "test-utils")))]
        return Hook::default();
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
    /// A stub whose data is in a store this server does not serve (another volume, or a
    /// server started without `store=`): it cannot be opened (EIO), so it is never read as
    /// zeros nor written into.
    Foreign,
}

/// What the server holds for a redirected node that lost the last name this server knew for
/// it while its host inode kept other names: a hard link unlinked or renamed over, its other
/// names never looked up (after a restart, say). The kernel may still use the node (or has
/// it open), and no known name leads to its object or its stub any more.
#[derive(Debug)]
struct Detached {
    /// The store object.
    object: Arc<File>,
    /// The stub, as an `O_PATH` descriptor.
    stub: OwnedFd,
}

/// Host descriptors a [`Detached`] node holds.
const DETACHED_FDS: usize = 2;

#[derive(Debug, Default)]
struct State {
    names: NameTable,
    nodes: NodeTable,
    handles: HandleTable,
    detached: HashMap<u64, Detached>,
    /// The listing behind each [`OpenFile::Dir`] handle.
    dirs: HashMap<u64, Arc<DirStream>>,
}

impl State {
    fn new(hot_inodes: usize) -> Self {
        State {
            nodes: NodeTable::new(hot_inodes),
            ..State::default()
        }
    }
}

/// The redirecting file system over one share.
///
/// It is a fuse-backend-rs [`FileSystem`]: the virtio-fs device, the vhost-user back-end and
/// `fsredirect mount` all serve it. Called directly, as they would:
///
/// ```
/// use fsredirect::{FsConfig, RedirectFs, ShareSpec};
/// use fuse_backend_rs::abi::fuse_abi::{CreateIn, FsOptions};
/// use fuse_backend_rs::api::filesystem::{Context, FileSystem};
///
/// let tmp = tempfile::tempdir()?;
/// std::fs::create_dir(tmp.path().join("guest"))?;
/// let share = ShareSpec::parse(&format!(
///     "tag=data,dir={0}/guest,store={0}/store",
///     tmp.path().display()
/// ))?;
/// let fs = RedirectFs::new(&share, FsConfig::default())?;
/// fs.init(FsOptions::empty())?;
///
/// // CREATE "a.txt" in the share's root (node 1): the guest tree gets a stub, the store
/// // volume `data` the object.
/// let args = CreateIn { flags: libc::O_RDWR as u32, mode: 0o644, umask: 0, fuse_flags: 0 };
/// let (entry, handle, _, _) = fs.create(&Context::new(), 1, c"a.txt", args)?;
/// fs.release(&Context::new(), entry.inode, 0, handle.unwrap(), false, false, None)?;
/// assert!(tmp.path().join("guest/a.txt").is_file());
/// assert!(tmp.path().join("store/data/a.txt").is_file());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct RedirectFs {
    inner: PassthroughFs,
    file_handles: bool,
    guest_root: OwnedFd,
    /// What only a redirecting share has; `None` for a passthrough share.
    redirect: Option<Redirecting>,
    meta_name: &'static CStr,
    /// The server runs as root: it can create nodes as the guest's caller.
    server_is_root: bool,
    ns: RwLock<()>,
    state: Mutex<State>,
    data_locks: DataLocks,
    /// Taken by a server not run as root around a guest's chmod of a redirected file and
    /// around its own brief grant of write access to a stub
    /// ([`RedirectFs::open_stub_for_write`]).
    stub_modes: Mutex<()>,
    budget: FdBudget,
    /// Reopens and renames descriptors ([`ProcSelfFd`]).
    proc: ProcSelfFd,
    /// Extended attributes through this layer's own descriptors (`xattrs.rs`).
    xattrs_by_descriptor: bool,
    /// The kernel has the `*xattrat` calls (Linux 6.13): a node just looked up by file handle
    /// has its metadata read by its name in its directory (`xattrs.rs`).
    xattr_at: bool,
    /// Most nodes holding a hot handle (`nodes.rs`).
    hot_inodes: usize,
    /// The server's own `O_PATH` descriptors of directories, for LOOKUPs of nodes the
    /// kernel holds (`revalidate.rs`).
    dir_fds: FdCache,
    /// The timeouts of every attribute and entry reply, as the passthrough layer's.
    attr_timeout: Duration,
    entry_timeout: Duration,
    recovery: Option<RecoveryReport>,
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
        let guest_root = File::open(&share.dir).map_err(|source| FsError::GuestTree {
            dir: share.dir.clone(),
            source,
        })?;
        // Before anything else is opened or changed: one server per guest tree.
        crate::treelock::lock(
            &guest_root,
            &share.dir,
            crate::treelock::LockMode::Exclusive,
        )?;
        let guest_root = OwnedFd::from(guest_root);
        let pcfg = Config {
            root_dir: if cfg.tree_as_root {
                "/".to_owned()
            } else {
                dir
            },
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
        let proc = ProcSelfFd::open().map_err(|source| FsError::GuestTree {
            dir: share.dir.clone(),
            source,
        })?;
        let xattrs_by_descriptor = cfg.xattrs_by_descriptor || cfg.tree_as_root;
        if xattrs_by_descriptor && cfg.inode_file_handles {
            return Err(FsError::XattrsNeedDescriptorInodes);
        }
        let xattr_at = proc.has_xattr_at();
        if xattrs_by_descriptor && !xattr_at {
            return Err(FsError::NoXattrAt(share.dir.clone()));
        }
        let (redirect, recovery) = match &share.store {
            Some(spec) => {
                let (redirecting, recovery) = Redirecting::open(share, spec, &cfg)?;
                (Some(redirecting), recovery)
            }
            None => (None, None),
        };
        // SAFETY: geteuid has no preconditions and cannot fail.
        let server_is_root = unsafe { libc::geteuid() } == 0;
        let meta_name = crate::meta::xattr_name_for(server_is_root);
        let hot_inodes = cfg.hot_inodes_or_default();
        let dir_fds = revalidate::dir_fds_for(crate::fdbudget::nofile_limit().unwrap_or(1024));
        let budget = match cfg.max_guest_fds {
            Some(limit) => FdBudget::new(limit),
            None => {
                FdBudget::from_rlimit(cfg.max_store_fds.saturating_mul(2) + hot_inodes + dir_fds)
            }
        };
        log::info!(
            "serving {} ({}), at most {} store descriptors, {} hot inodes and {} descriptors held \
             for the guest",
            share.dir.display(),
            match &share.store {
                Some(s) => format!("redirected to volume {} of {}", s.volume, s.root.display()),
                None => "passthrough".to_string(),
            },
            cfg.max_store_fds,
            hot_inodes,
            budget.limit()
        );
        Ok(RedirectFs {
            inner,
            file_handles: cfg.inode_file_handles,
            guest_root,
            redirect,
            meta_name,
            server_is_root,
            ns: RwLock::new(()),
            state: Mutex::new(State::new(hot_inodes)),
            hot_inodes,
            dir_fds: FdCache::named(dir_fds, "directory descriptor"),
            attr_timeout: cfg.attr_timeout,
            entry_timeout: cfg.entry_timeout,
            data_locks: DataLocks::default(),
            stub_modes: Mutex::new(()),
            budget,
            proc,
            xattrs_by_descriptor,
            xattr_at,
            recovery,
        })
    }

    /// What recovery repaired when this server started after an unclean stop (`None`
    /// after a clean stop and for a passthrough share).
    pub fn recovery(&self) -> Option<&RecoveryReport> {
        self.recovery.as_ref()
    }

    /// True if intent records are written in journal order, without a sync each
    /// ([`crate::intent`]); false if each one is synced, or for a passthrough share.
    pub fn intents_in_journal_order(&self) -> bool {
        self.redirect
            .as_ref()
            .is_some_and(|r| r.store.intents().is_journal_ordered())
    }

    /// Makes everything durable: the store (objects, names, intent records) and the guest
    /// tree (stubs, names). Called at unmount and by embedders; fuse-backend-rs has no
    /// SYNCFS request, so a guest's own sync points are its fsync and fsyncdir.
    pub fn syncfs(&self) -> io::Result<()> {
        let _ns = self.ns_read();
        if let Some(r) = &self.redirect {
            r.store.syncfs()?;
        }
        // SAFETY: syncfs on a descriptor we own; no memory is involved.
        crate::beneath::check(unsafe { libc::syncfs(self.guest_root.as_raw_fd()) }).map(|_| ())
    }

    /// True if regular files are redirected into a store.
    pub fn is_redirecting(&self) -> bool {
        self.redirect.is_some()
    }

    /// How many store descriptors are cached now (never more than `max_store_fds`; files the
    /// guest has open hold theirs beside the cache, within the guest's descriptor budget).
    #[cfg(any(test, feature = "test-utils"))]
    pub fn open_store_fds(&self) -> usize {
        self.redirect.as_ref().map_or(0, |r| r.objects.len())
    }

    /// Host descriptors held for the guest now, and the most it may make the server hold.
    pub fn guest_fds(&self) -> (usize, usize) {
        (self.budget.used(), self.budget.limit())
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

    /// The namespace lock, shared, for I/O and release on a redirecting share: a placement
    /// change (which holds it exclusively) swaps file handles between the passthrough layer
    /// and the store, so no handle may be in use meanwhile. None on a passthrough share.
    fn io_lock(&self) -> Option<RwLockReadGuard<'_, ()>> {
        self.redirect.is_some().then(|| self.ns_read())
    }

    /// True if a new regular file `parent`/`name` (empty, created with `mode`) is to be
    /// redirected: where the policy says so, and always if it is to carry privilege bits.
    fn redirects_new(&self, parent: u64, name: &CStr, mode: u32) -> io::Result<bool> {
        let Some(r) = &self.redirect else {
            return Ok(false);
        };
        if mode & PRIVILEGE_BITS != 0 {
            return Ok(true);
        }
        if r.policy.min_size() > 0 {
            return Ok(false);
        }
        Ok(r.policy
            .path_allows(&join(&self.child_parts(parent, name)?)))
    }

    /// [`RedirectFs::check_fd_room`] for a request that may make the kernel know one more
    /// node (which costs a descriptor only without file handles).
    fn check_new_node_room(&self) -> io::Result<()> {
        if self.file_handles {
            Ok(())
        } else {
            self.check_fd_room()
        }
    }

    // ----- metadata -----

    /// The metadata of `inode` in this server's own spelling ([`crate::meta::read`]);
    /// metadata that cannot be decoded reads as none, and the file is served as a plain one.
    fn stub_meta(&self, inode: u64, at: Reached<'_>) -> io::Result<Option<Meta>> {
        let read = crate::meta::read(&[self.meta_name], |name| {
            match self.node_getxattr(inode, at, name, XATTR_BUF) {
                Ok(GetxattrReply::Value(v)) => Ok(Some(v)),
                Ok(GetxattrReply::Count(_)) => Ok(None),
                Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(None),
                Err(e) => Err(e),
            }
        })?;
        match read {
            Some((_, Ok(meta))) => Ok(Some(meta)),
            Some((_, Err(e))) => {
                log::warn!("inode {inode}: {e}; serving it as a plain file");
                Ok(None)
            }
            None => Ok(None),
        }
    }

    /// Writes the metadata of `inode`, and records it as the node's.
    fn write_meta(&self, inode: u64, meta: &Meta, at: Reached<'_>) -> io::Result<()> {
        self.node_setxattr(inode, at, self.meta_name, &meta.encode(), 0)?;
        self.state().nodes.set_record(inode, Some(meta.clone()));
        Ok(())
    }

    fn classify(&self, inode: u64, attr: &libc::stat64, at: Reached<'_>) -> io::Result<Kind> {
        self.classify_with_meta(inode, attr, at)
            .map(|(kind, _)| kind)
    }

    /// The kind of an inode and the metadata it was read from.
    fn classify_with_meta(
        &self,
        inode: u64,
        attr: &libc::stat64,
        at: Reached<'_>,
    ) -> io::Result<(Kind, Option<Meta>)> {
        if attr.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Ok((Kind::Plain, None));
        }
        let meta = self.stub_meta(inode, at)?;
        let kind = match &meta {
            Some(Meta::Special { kind, rdev }) => Kind::Special {
                kind: *kind,
                rdev: *rdev,
            },
            Some(Meta::Redirect { volume, .. })
                if self.redirect.as_ref().is_some_and(|r| *volume == r.volume) =>
            {
                Kind::Redirect
            }
            Some(Meta::Redirect { .. }) => Kind::Foreign,
            None => Kind::Plain,
        };
        Ok((kind, meta))
    }

    fn kind(&self, inode: u64) -> io::Result<Kind> {
        if let Some(kind) = self.state().nodes.kind(inode) {
            return Ok(kind);
        }
        let (attr, _) = self.inner.getattr(&root_ctx(), inode, None)?;
        let (kind, meta) = self.classify_with_meta(inode, &attr, Reached::Known)?;
        let mut st = self.state();
        st.nodes.set_kind(inode, kind);
        st.nodes.set_identity(inode, &attr);
        st.nodes.set_record(inode, meta);
        Ok(kind)
    }

    /// The kind of a node the lookup of `entry` (at `at`) reached, and its redirect record:
    /// the known ones of a node the server holds (no host call), else read from the stub.
    fn kind_of_entry(&self, entry: &Entry, at: Reached<'_>) -> io::Result<(Kind, Option<Meta>)> {
        let known = {
            let st = self.state();
            let held = st.names.holds(entry.inode) || st.handles.is_open(entry.inode);
            held.then(|| st.nodes.kind_and_record(entry.inode))
                .flatten()
        };
        match known {
            Some((kind @ Kind::Redirect, None)) => {
                // Known, but its record was dropped (a rename over it, say): read again.
                Ok((kind, self.stub_meta(entry.inode, at)?))
            }
            Some(known) => Ok(known),
            None => self.classify_with_meta(entry.inode, &entry.attr, at),
        }
    }

    /// The answer to opening or resizing a [`Kind::Foreign`] stub, logged (rate-limited: a
    /// guest may ask in a loop) with the fix.
    fn foreign_stub(&self, inode: u64) -> io::Error {
        static REFUSALS: AtomicU64 = AtomicU64::new(0);
        let n = REFUSALS.fetch_add(1, Ordering::Relaxed) + 1;
        if n == 1 || n.is_power_of_two() {
            let volume = match self.stub_meta(inode, Reached::Known) {
                Ok(Some(Meta::Redirect { volume, .. })) => {
                    String::from_utf8_lossy(&volume).into_owned()
                }
                _ => "?".to_string(),
            };
            log::warn!(
                "inode {inode} is a stub of volume `{volume}`, whose store this server does not \
                 serve: EIO ({n} so far; serve this tree with store=STORE,volume={volume})"
            );
        }
        errno(libc::EIO)
    }

    /// The redirecting part of the share, for work only a redirected file calls for; EIO
    /// on a passthrough share, which has no redirected files.
    fn redirected(&self) -> io::Result<&Redirecting> {
        self.redirect.as_ref().ok_or_else(|| errno(libc::EIO))
    }

    /// The store of the share ([`RedirectFs::redirected`]).
    fn store(&self) -> io::Result<&Store> {
        self.redirected().map(|r| &r.store)
    }

    // ----- store objects -----

    /// The open store object of a redirected inode: the one its open handles hold, the one
    /// it holds since it was detached from its known names, or one from the bounded cache,
    /// reached through a known name. The caller holds the namespace lock.
    fn object(&self, inode: u64) -> io::Result<Arc<File>> {
        let r = self.redirected()?;
        match self.object_held_or_path(inode) {
            ObjectAt::Held(object) => Ok(object),
            ObjectAt::Path(path) => r.objects.get(inode, || match path {
                Some(parts) => r.store.open_object(&parts),
                None => Err(errno(libc::ESTALE)),
            }),
        }
    }

    /// Where the store object of redirected `inode` is to be found, under the state lock: the
    /// one its open handles or its detachment hold, else the known path its object has.
    fn object_held_or_path(&self, inode: u64) -> ObjectAt {
        let st = self.state();
        let held = st.handles.open_inode(inode).map(|open| &open.object);
        match held.or_else(|| st.detached.get(&inode).map(|d| &d.object)) {
            Some(object) => ObjectAt::Held(object.clone()),
            None => ObjectAt::Path(st.names.path(inode)),
        }
    }

    /// Forgets every cached descriptor of `inode` (its store object and stub, or its
    /// directory descriptor for lookups) and what its host files said (its record and object
    /// figures, `nodes.rs`): its host file may be gone, and with inode-number identities (no
    /// file handles) a new file may come back under the same node id.
    fn drop_cached(&self, inode: u64) {
        self.close_cached(inode);
        self.dir_fds.remove(inode);
        self.state().nodes.forget_object(inode);
    }

    /// Closes the cached descriptors of `inode` (its store object and stub).
    fn close_cached(&self, inode: u64) {
        if let Some(r) = &self.redirect {
            r.objects.remove(inode);
            r.stubs.remove(inode);
        }
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
    /// data change in mtime/ctime. The caller holds the inode's data lock.
    fn sync_stub(&self, inode: u64, touch: bool, data: &DataGuard<'_>) -> io::Result<()> {
        self.object_changed(inode, data);
        let size = self.object_attr_locked(inode, data)?.size;
        self.sync_stub_to(inode, size, touch, data)
    }

    /// [`RedirectFs::sync_stub`] for an object known to be `size` bytes long. Nothing at all
    /// when the server's own last change to the stub already says so (`nodes.rs`): same
    /// size, and for a data change, stamped in the current tick of the coarse clock the
    /// kernel stamps changes with.
    fn sync_stub_to(
        &self,
        inode: u64,
        size: u64,
        touch: bool,
        _data: &DataGuard<'_>,
    ) -> io::Result<()> {
        let now = coarse_now();
        let known = self.state().nodes.stub(inode);
        if let (Some(known), Some(now)) = (known, now) {
            if known.size == size && (!touch || now <= known.tick) {
                return Ok(());
            }
        }
        let stub = match self.stub_file(inode) {
            Ok(stub) => Ok(stub),
            Err(e) => {
                log::debug!("inode {inode}: no direct stub descriptor ({e}), slow path");
                Err(e)
            }
        };
        if let Ok(stub) = stub {
            let synced = match known.filter(|k| k.size == size) {
                // Only the stamp is due: the size is as the server left it.
                Some(_) => stamp_now(&stub).map(|()| true),
                None => sync_stub_file(&stub, size, touch, now),
            };
            let mut st = self.state();
            match (&synced, now) {
                (Ok(true), Some(tick)) => st.nodes.stub_synced(inode, StubStamp { size, tick }),
                _ => st.nodes.stub_unknown(inode),
            }
            return synced.map(drop);
        }
        self.state().nodes.stub_unknown(inode);
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
    fn stub_file(&self, inode: u64) -> io::Result<Arc<File>> {
        self.redirected()?.stubs.get(inode, || {
            let st = self.state();
            if let Some(pin) = st.handles.open_inode(inode).and_then(|o| o.pin.as_ref()) {
                return self.open_stub_for_write(pin);
            }
            if let Some(detached) = st.detached.get(&inode) {
                return self.open_stub_for_write(&detached.stub);
            }
            let parts = st.names.path(inode).ok_or_else(|| errno(libc::ESTALE))?;
            drop(st);
            self.open_stub_for_write(&self.open_stub_path(&parts)?)
        })
    }

    /// Opens the stub behind `path_fd` for writing (its size and times).
    ///
    /// A server not run as root is bound by the stub's mode like any owner, and the guest may
    /// have taken the owner's write bit away (its root may still write the file): such a
    /// server grants itself that bit for the moment of the open (an owner may always chmod)
    /// and puts the guest's mode back through the new descriptor, all under the lock the
    /// guest's own chmods of redirected files take, so none of them is undone.
    fn open_stub_for_write(&self, path_fd: &OwnedFd) -> io::Result<File> {
        match self.proc.reopen_regular(path_fd, libc::O_WRONLY) {
            Err(e) if e.raw_os_error() == Some(libc::EACCES) && !self.server_is_root => {}
            other => return other,
        }
        let _modes = self.stub_modes.lock().unwrap_or_else(|p| p.into_inner());
        let mode = crate::beneath::fstat(path_fd)?.st_mode & 0o7777;
        let chmod = |mode: u32| self.proc.chmod(path_fd, mode);
        chmod(mode | libc::S_IWUSR)?;
        let opened = self.proc.reopen_regular(path_fd, libc::O_WRONLY);
        if let Err(e) = chmod(mode) {
            log::error!(
                "stub behind descriptor {}: mode {mode:o} not restored: {e}",
                path_fd.as_raw_fd()
            );
        }
        opened
    }

    /// Puts the guest's view of `inode` in `st`: a special file's type, a redirected file's
    /// object size and blocks.
    fn fix_attr(&self, inode: u64, kind: Kind, st: &mut libc::stat64) {
        self.fix_attr_with(inode, kind, st, None)
    }

    /// [`RedirectFs::fix_attr`] for a caller holding the node's data lock.
    fn fix_attr_locked(&self, inode: u64, kind: Kind, st: &mut libc::stat64, data: &DataGuard) {
        self.fix_attr_with(inode, kind, st, Some(data))
    }

    fn fix_attr_with(
        &self,
        inode: u64,
        kind: Kind,
        st: &mut libc::stat64,
        data: Option<&DataGuard>,
    ) {
        match kind {
            Kind::Plain | Kind::Foreign => {}
            Kind::Special { kind, rdev } => {
                st.st_mode = (st.st_mode & !libc::S_IFMT) | kind;
                st.st_rdev = u64::from(rdev);
                st.st_size = 0;
                st.st_blocks = 0;
            }
            Kind::Redirect => match data.map_or_else(
                || self.object_attr(inode),
                |data| self.object_attr_locked(inode, data),
            ) {
                Ok(object) => object.apply(st),
                // No known name leads to the object (the file's last name went, and it is not
                // open): the stub's own figures stand, which agree with the object's size.
                // A guest can ask in a loop; nothing is wrong.
                Err(e) if e.raw_os_error() == Some(libc::ESTALE) => {
                    log::debug!("inode {inode}: no known path to its store object")
                }
                Err(e) => log::warn!("inode {inode}: store object unreachable: {e}"),
            },
        }
    }

    /// The size and blocks of the store object of redirected `inode`: the known ones, or
    /// read under its data lock (`nodes.rs`).
    fn object_attr(&self, inode: u64) -> io::Result<ObjectAttr> {
        if let Some(known) = self.state().nodes.object(inode) {
            return Ok(known);
        }
        let data = self.data_locks.lock(inode);
        self.object_attr_locked(inode, &data)
    }

    /// The size of the store object of redirected `inode`: the known one, or read.
    fn object_size(&self, inode: u64) -> io::Result<u64> {
        let known = self.state().nodes.object_size(inode);
        match known {
            Some(size) => Ok(size),
            None => self.object_attr(inode).map(|o| o.size),
        }
    }

    /// [`RedirectFs::object_attr`] for a caller holding the data lock.
    fn object_attr_locked(&self, inode: u64, _data: &DataGuard<'_>) -> io::Result<ObjectAttr> {
        if let Some(known) = self.state().nodes.object(inode) {
            return Ok(known);
        }
        let object = self.read_object_attr(inode)?;
        self.state().nodes.set_object(inode, object);
        Ok(object)
    }

    /// Reads the size and blocks of the store object of redirected `inode`: through a
    /// descriptor of it the server holds, else by its path, without opening it (a LOOKUP or
    /// GETATTR of a file nobody reads costs one `fstatat`, not an open; `object` opens it at
    /// the first I/O). Only a regular file is an object.
    fn read_object_attr(&self, inode: u64) -> io::Result<ObjectAttr> {
        let r = self.redirected()?;
        let path = match self.object_held_or_path(inode) {
            ObjectAt::Held(object) => return Ok(ObjectAttr::of(&object.metadata()?)),
            ObjectAt::Path(path) => path,
        };
        if let Some(object) = r.objects.cached(inode) {
            return Ok(ObjectAttr::of(&object.metadata()?));
        }
        let parts = path.ok_or_else(|| errno(libc::ESTALE))?;
        let st = r.store.stat_object(&parts)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(errno(libc::EIO));
        }
        Ok(ObjectAttr::of_stat(&st))
    }

    /// The size of the store object of redirected `inode`: the known one, or read under its
    /// data lock. The caller holds the data lock.
    fn object_size_locked(&self, inode: u64, data: &DataGuard<'_>) -> io::Result<u64> {
        let known = self.state().nodes.object_size(inode);
        match known {
            Some(size) => Ok(size),
            None => self.object_attr_locked(inode, data).map(|o| o.size),
        }
    }

    /// Drops the known size and blocks of `inode`'s store object, which the caller, holding
    /// its data lock, has just changed (or may have).
    fn object_changed(&self, inode: u64, _data: &DataGuard<'_>) {
        self.state().nodes.object_changed(inode);
    }

    /// Records a new kernel reference to `entry`, reached as `parent`/`name`, and fixes its
    /// attributes for the guest's view.
    ///
    /// A node id the server holds no state for starts afresh: without file handles,
    /// fuse-backend-rs gives a new file that reuses a host inode number the old file's node
    /// id, so nothing cached under that id may survive.
    fn admit(&self, parent: u64, name: &CStr, entry: Entry, kind: Kind) -> Entry {
        self.admit_with_object(parent, name, entry, kind, None)
    }

    /// [`RedirectFs::admit`], for a node new to the kernel keeping `object` (its store object,
    /// which the caller has just made, empty) as its cached store descriptor: the attributes
    /// and the OPEN that follow a CREATE then use it instead of opening the object again by
    /// its path, and its figures (no bytes, no blocks) are known without a `stat`.
    fn admit_with_object(
        &self,
        parent: u64,
        name: &CStr,
        mut entry: Entry,
        kind: Kind,
        object: Option<File>,
    ) -> Entry {
        let (fresh, released) = {
            let mut st = self.state();
            let fresh = !st.names.holds(entry.inode) && !st.handles.is_open(entry.inode);
            st.names.remember(entry.inode, parent, name);
            st.nodes.set_kind(entry.inode, kind);
            st.nodes.set_identity(entry.inode, &entry.attr);
            (fresh, st.names.take_released())
        };
        self.pass_on(released);
        if fresh {
            self.drop_cached(entry.inode);
            self.undetach(entry.inode);
            if !self.file_handles {
                // The passthrough layer holds an O_PATH descriptor per node.
                self.budget.charge(1);
            }
            if let (Some(object), Some(r)) = (object, &self.redirect) {
                let _ = r.objects.get(entry.inode, || Ok(object));
                // Under its data lock, as every fill of the figures (`nodes.rs`).
                let _data = self.data_locks.lock(entry.inode);
                let empty = ObjectAttr { size: 0, blocks: 0 };
                self.state().nodes.set_object(entry.inode, empty);
            }
        }
        self.fix_attr(entry.inode, kind, &mut entry.attr);
        entry
    }

    /// A passthrough-layer handle on an `O_PATH` descriptor of `inode`, for a GETATTR: its
    /// hot one (`nodes.rs`), or a new one kept as such. None without hot handles, or for a
    /// node the passthrough layer does not open (symlinks, special files).
    fn hot_handle(&self, inode: u64) -> Option<u64> {
        {
            let st = self.state();
            if !st.nodes.keeps_hot() {
                return None;
            }
            if let Some(hot) = st.nodes.hot(inode) {
                return Some(hot);
            }
        }
        let flags = (libc::O_PATH | libc::O_NOFOLLOW) as u32;
        let (handle, _, _) = self.inner.open(&root_ctx(), inode, flags, 0).ok()?;
        let handle = handle?;
        let give_back = self.state().nodes.set_hot(inode, handle);
        let kept = !give_back.iter().any(|&(_, h)| h == handle);
        self.release_hot(give_back);
        kept.then_some(handle)
    }

    /// Pins `inode` by a hot handle (with file handles; without them the passthrough layer's
    /// descriptor pins every node): what names it next (a LOOKUP again, an UNLINK, a CREATE
    /// in it) is then checked with one host call (`revalidate.rs`), and a GETATTR goes
    /// through the handle, for the one host call this costs now.
    fn pin(&self, inode: u64) {
        if self.file_handles {
            self.hot_handle(inode);
        }
    }

    /// Gives hot handles back to the passthrough layer.
    fn release_hot(&self, hot: impl IntoIterator<Item = (u64, u64)>) {
        for (inode, handle) in hot {
            if let Err(e) = self
                .inner
                .release(&root_ctx(), inode, 0, handle, false, false, None)
            {
                log::debug!("inode {inode}: releasing its hot handle: {e}");
            }
        }
    }

    /// Fails with EMFILE when the guest holds all the descriptors it may; checked before
    /// anything that makes the server hold one more for it.
    fn check_fd_room(&self) -> io::Result<()> {
        self.budget.check()
    }

    /// Looks a name up in the passthrough layer for the server's own use, without handing a
    /// reference to the kernel: the reference goes back when the result is dropped. A name
    /// the server's descriptor of `parent` shows absent costs one host call (`revalidate.rs`).
    fn peek(&self, parent: u64, name: &CStr) -> io::Result<Option<Peeked<'_>>> {
        match self.find_named(parent, name, Probe::Any, |_, _, _| None::<()>) {
            Named::Absent => Ok(None),
            _ => self.peek_passthrough(parent, name),
        }
    }

    /// [`RedirectFs::peek`] in the passthrough layer only.
    fn peek_passthrough(&self, parent: u64, name: &CStr) -> io::Result<Option<Peeked<'_>>> {
        let entry = match self.inner.lookup(&root_ctx(), parent, name) {
            Ok(entry) => entry,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        };
        // From here on, dropping `peeked` gives the reference back.
        let mut peeked = Peeked {
            fs: self,
            entry,
            kind: Kind::Plain,
            handed_over: false,
        };
        let known = self.state().nodes.kind(entry.inode);
        peeked.kind = match known {
            Some(kind) => kind,
            None => {
                let at = Reached::Child(parent, name, Identity::of(&entry.attr));
                self.classify(entry.inode, &entry.attr, at)?
            }
        };
        Ok(Some(peeked))
    }

    /// [`RedirectFs::peek`] for a caller that only looks at what is there and never hands it
    /// to the kernel: a name in use that leads to a node the kernel holds is checked with one
    /// host call instead (`revalidate.rs`).
    fn inspect(&self, parent: u64, name: &CStr) -> io::Result<Option<Inspected<'_>>> {
        match self.find_named(parent, name, Probe::Any, |_, _, _| Some(())) {
            Named::Held(held) => Ok(Some(Inspected::Held(HeldName {
                fs: self,
                entry: self.held_entry(&held),
                kind: held.kind,
            }))),
            Named::Absent => Ok(None),
            Named::Unknown => Ok(self.peek_passthrough(parent, name)?.map(Inspected::Peeked)),
        }
    }

    /// Removes entry `name` of directory `parent` from the guest tree (`unlinkat(2)`'s
    /// `flags`): through the server's own descriptor of the directory where it keeps one (one
    /// host call), else through the passthrough layer, which may reopen the directory first.
    fn remove_entry(&self, ctx: &Context, parent: u64, name: &CStr, flags: i32) -> io::Result<()> {
        let Ok(dir) = self.dir_for_names(parent) else {
            return match flags & libc::AT_REMOVEDIR {
                0 => self.inner.unlink(ctx, parent, name),
                _ => self.inner.rmdir(ctx, parent, name),
            };
        };
        // SAFETY: `name` is a validated component and `dir` an open descriptor; unlinkat
        // reads the name and touches only that entry.
        check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(|_| ())
    }

    /// ENOTDIR unless `inode` is a directory: checked before the store mirrors a new name
    /// below it (the store would make the directories the guest tree then refuses).
    fn require_dir(&self, inode: u64) -> io::Result<()> {
        // A node's file type is recorded when it is admitted, and never changes.
        let known = self.state().nodes.identity(inode);
        let file_type = match known {
            Some(identity) => identity.file_type,
            None => self.host_attr(&root_ctx(), inode)?.0.st_mode & libc::S_IFMT,
        };
        if file_type != libc::S_IFDIR {
            return Err(errno(libc::ENOTDIR));
        }
        Ok(())
    }

    fn child_parts(&self, parent: u64, name: &CStr) -> io::Result<Vec<CString>> {
        self.state()
            .names
            .child_path(parent, name)
            .ok_or_else(|| errno(libc::ESTALE))
    }

    /// [`RedirectFs::correct_portion`] for redirected `inode` just looked up as
    /// `parent`/`name`, whose record is `record`; a failure is only logged (the record is a
    /// hint).
    fn correct_portion_of(&self, inode: u64, parent: u64, name: &CStr, record: Option<Meta>) {
        let parts = self.state().names.child_path(parent, name);
        if let Some(parts) = parts {
            if let Err(e) = self.correct_portion(inode, &parts, record) {
                log::warn!("cannot correct metadata of inode {inode}: {e}");
            }
        }
    }

    /// Compares the recorded common portion with the path the file was reached by and
    /// corrects a stale record (left by a directory rename above it). Nothing is moved here:
    /// objects misplaced by a crash are put back by recovery, which runs before serving; a
    /// missing object leaves the record alone, as evidence for `verify`.
    fn correct_portion(
        &self,
        inode: u64,
        parts: &[CString],
        current: Option<Meta>,
    ) -> io::Result<()> {
        let r = self.redirected()?;
        if current == Some(Meta::redirect(&r.volume, &join(parts))) {
            return Ok(());
        }
        if !matches!(current, Some(Meta::Redirect { .. })) || r.store.stat_object(parts).is_err() {
            return Ok(());
        }
        self.record_portion(inode, parts)
    }

    fn record_portion(&self, inode: u64, parts: &[CString]) -> io::Result<()> {
        let volume = &self.redirected()?.volume;
        self.write_meta(
            inode,
            &Meta::redirect(volume, &join(parts)),
            Reached::Path(parts),
        )
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
        self.require_dir(parent)?;
        let parts = self.child_parts(parent, name)?;
        let _intent = store
            .intents()
            .begin(&Intent::Create { path: join(&parts) })?;
        let object = store.create_object(&parts)?;
        let mode = libc::S_IFREG | (mode & 0o7777);
        let entry = match self
            .inner
            .mknod(&self.creator(ctx), parent, name, mode, 0, umask)
        {
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
        let entry = self.admit_with_object(parent, name, entry, Kind::Redirect, Some(object));
        // The record just written, kept with the node (it was not known when it was
        // written), so the next LOOKUP need not read it back.
        let record = Meta::redirect(&self.redirected()?.volume, &join(&parts));
        self.state().nodes.set_record(entry.inode, Some(record));
        Ok(entry)
    }

    /// Enters `file` in the handle table; a redirected file's first handle takes hold of
    /// `object`, its store object (see [`HandleTable::insert`]).
    fn new_handle(&self, file: OpenFile, object: Option<Arc<File>>) -> u64 {
        let handle = self.state().handles.insert(file, object);
        // One descriptor per handle: the passthrough layer's file, or the store object
        // (counted once per handle, which bounds the objects too).
        self.budget.charge(1);
        handle
    }

    /// Takes `handle` out of the table and gives back what it held for the guest. For the
    /// last handle of a redirected inode, removes its orphan, if any, and passes on the
    /// FORGETs that came while it was open.
    fn close_handle(&self, handle: u64) -> io::Result<OpenFile> {
        // A guest may send RELEASE while a WRITE or truncate through the same file is under
        // way (a kernel never does): the last release gives up the node and its cached
        // descriptors, so it waits for the size change to finish with the stub.
        let _data = match self.handle(handle)? {
            OpenFile::Redirect { inode, .. } => Some(self.data_locks.lock(inode)),
            _ => None,
        };
        let (file, last) = self.drop_handle(handle)?;
        if let (OpenFile::Redirect { inode, .. }, Some(open)) = (file, last) {
            if open.forgets > 0 {
                self.forget_node(inode, open.forgets);
            }
            if !self.state().names.is_known(inode) {
                self.undetach(inode);
            }
            if let Some(orphan) = open.orphan {
                self.store()?.remove_orphan(&orphan)?;
            }
        }
        Ok(file)
    }

    /// FORGET of `count` references to `inode`; the caller holds the namespace lock, and no
    /// data lock. A size change of the node in flight (a guest may send FORGET meanwhile)
    /// finishes first: the node's names and descriptors must outlive it.
    fn forget_locked(&self, inode: u64, count: u64) {
        let _data = self.data_locks.lock(inode);
        let mut st = self.state();
        let held = st.names.lookups(inode);
        if let Some(open) = st.handles.open_inode_mut(inode) {
            // The file is open: its node stays, with the names it is known by, until the
            // last release (see OpenInode). No more than the kernel holds now: it may
            // look the node up again meanwhile.
            open.forgets += count.min(held.saturating_sub(open.forgets));
            return;
        }
        drop(st);
        self.forget_node(inode, count);
    }

    /// Drops `count` kernel references to `inode`, here and in the passthrough layer. Once
    /// none remain, what the server held for the node goes: the node id may come back for
    /// another file (see [`RedirectFs::admit`]).
    fn forget_node(&self, inode: u64, count: u64) {
        let retired = {
            let mut st = self.state();
            let retired = st.names.is_known(inode) && st.names.forget(inode, count);
            let hot = retired.then(|| st.nodes.remove(inode)).flatten();
            drop(st);
            self.release_hot(hot.map(|h| (inode, h)));
            retired
        };
        if retired {
            self.drop_cached(inode);
            self.undetach(inode);
        }
        self.pass_on_released();
    }

    /// Passes on to the passthrough layer the references the name table gave up (FORGETs,
    /// and directories held for the names below them; see [`NameTable`]).
    pub(super) fn pass_on_released(&self) {
        let released = self.state().names.take_released();
        self.pass_on(released);
    }

    /// [`RedirectFs::pass_on_released`] for references already taken from the name table.
    fn pass_on(&self, released: Vec<crate::names::Released>) {
        for r in released {
            if r.gone && !self.file_handles {
                // The passthrough layer's O_PATH descriptor of the node goes too.
                self.budget.release(1);
            }
            if r.count > 0 {
                self.inner.forget(&root_ctx(), r.inode, r.count);
            }
        }
    }

    /// Takes `handle` out of the table; for the last handle of a redirected inode, returns
    /// what the server held for it.
    fn drop_handle(&self, handle: u64) -> io::Result<(OpenFile, Option<OpenInode>)> {
        let (file, open) = self
            .state()
            .handles
            .remove(handle)
            .ok_or_else(|| errno(libc::EBADF))?;
        self.budget.release(1);
        if let OpenFile::Dir = file {
            self.state().dirs.remove(&handle);
        }
        let (OpenFile::Redirect { inode, .. }, Some(last)) = (file, &open) else {
            return Ok((file, None));
        };
        // Its descriptors go. What its host files say stays true (a release changes
        // nothing), unless its last name went while it was open: then its object goes now.
        if last.orphan.is_some() || last.pin.is_some() {
            self.drop_cached(inode);
        } else {
            self.close_cached(inode);
        }
        if last.pin.is_some() {
            self.budget.release(1);
        }
        Ok((file, open))
    }

    fn handle(&self, handle: u64) -> io::Result<OpenFile> {
        self.state()
            .handles
            .get(handle)
            .ok_or_else(|| errno(libc::EBADF))
    }

    /// The listing behind [`OpenFile::Dir`] handle `handle`; EBADF if there is none.
    fn dir_stream(&self, handle: u64) -> io::Result<Arc<DirStream>> {
        let stream = self.state().dirs.get(&handle).cloned();
        stream.ok_or_else(|| errno(libc::EBADF))
    }

    /// The passthrough handle behind `handle`; EBADF for anything else.
    fn inner_of(&self, handle: u64) -> io::Result<u64> {
        match self.handle(handle)? {
            OpenFile::Inner(ih, ..) => Ok(ih),
            OpenFile::Inline { .. } | OpenFile::Redirect { .. } | OpenFile::Dir => {
                Err(errno(libc::EBADF))
            }
        }
    }

    fn inner_handle(&self, handle: Option<u64>) -> io::Result<Option<u64>> {
        match handle {
            None => Ok(None),
            Some(h) => Ok(match self.handle(h)? {
                OpenFile::Inner(ih, ..) | OpenFile::Inline { ih, .. } => Some(ih),
                OpenFile::Redirect { .. } | OpenFile::Dir => None,
            }),
        }
    }

    fn open_redirected(&self, inode: u64, flags: u32) -> io::Result<u64> {
        if flags as i32 & libc::O_DIRECTORY != 0 {
            // As the host answers for the stub (and for a plain file): a handle keeping the
            // flag could never be reopened inline if the file moves out of the store.
            // O_TMPFILE includes it.
            return Err(errno(libc::ENOTDIR));
        }
        // Surface a missing store object at open, not at the first read, and before a
        // truncate touches the stub: a node no name leads to any more has none to reach.
        let object = self.object(inode)?;
        if flags as i32 & libc::O_TRUNC != 0 {
            // Stub first, as for any truncate: a crash in between leaves a stub no longer
            // than its data, never one claiming bytes the object lost.
            let store = self.store()?;
            let data = self.data_locks.lock(inode);
            self.sync_stub_to(inode, 0, true, &data)?;
            let truncated = store.set_len(&object, 0);
            self.object_changed(inode, &data);
            if let Err(e) = truncated {
                // The store refused: the stub takes the object's size back.
                if let Err(u) = self.sync_stub(inode, false, &data) {
                    log::error!("inode {inode}: stub size not restored after {e}: {u}");
                }
                return Err(e);
            }
        }
        Ok(self.new_handle(OpenFile::redirect(inode, flags), Some(object)))
    }

    /// The handle entry of a file opened by the passthrough layer as `ih`: one that can
    /// follow the file into the store on a redirecting share.
    fn plain_handle(&self, ih: u64, inode: u64, flags: u32) -> OpenFile {
        if self.redirect.is_some() {
            OpenFile::Inline {
                ih,
                inode,
                flags: kept_open_flags(flags as i32),
            }
        } else {
            OpenFile::Inner(ih, inode, kept_open_flags(flags as i32))
        }
    }

    /// fsync (or fdatasync) of a redirected file: the data first, then the stub's size, so
    /// that after a power loss the stub never claims more than the stored object holds and
    /// fsync'd bytes stay visible. The caller holds the namespace lock.
    fn sync_redirected(&self, inode: u64, mode: SyncMode) -> io::Result<()> {
        let store = self.store()?;
        let data_only = mode == SyncMode::Data;
        self.with_object(inode, |f| store.sync_file(f, data_only))?;
        let stub = self.stub_file(inode)?;
        if data_only {
            stub.sync_data()
        } else {
            stub.sync_all()
        }
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
            return make(&self.creator(ctx));
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

    /// The credentials under which the passthrough layer makes a node for `ctx`: the caller's
    /// where the server can take them on (as root), none otherwise. A server without root
    /// makes every node as itself whatever it asks, and fuse-backend-rs's switch back to
    /// root after a failed creation would fail too and put EPERM in place of the real errno
    /// (EEXIST, ENOTDIR, ...).
    fn creator(&self, ctx: &Context) -> Context {
        if self.server_is_root {
            return *ctx;
        }
        Context {
            uid: 0,
            gid: 0,
            ..*ctx
        }
    }

    fn is_open(&self, inode: u64) -> bool {
        self.state().handles.is_open(inode)
    }

    /// The attributes of `inode` as the passthrough layer has them: through the node's hot
    /// handle if it has one (one `statx`), else by reopening the node.
    fn host_attr(&self, ctx: &Context, inode: u64) -> io::Result<(libc::stat64, Duration)> {
        match self.hot_handle(inode) {
            // A request in flight may have just retired that hot handle: then as without.
            Some(hot) => self
                .inner
                .getattr(ctx, inode, Some(hot))
                .or_else(|_| self.inner.getattr(ctx, inode, None)),
            None => self.inner.getattr(ctx, inode, None),
        }
    }

    /// Opens directory `inode` for listing ([`DirStream`]) through the path the name table
    /// knows for it, if that path still leads to the node the passthrough layer holds (same
    /// device and inode number). `None` otherwise (a path unknown, or changed behind the
    /// server's back): the caller lists through the passthrough layer instead. The caller
    /// holds the namespace lock.
    fn open_dir_stream(&self, ctx: &Context, inode: u64) -> Option<DirStream> {
        let parts = self.state().names.path(inode)?;
        let (node, _) = self.host_attr(ctx, inode).ok()?;
        let dir = self.open_as_node(&parts, libc::O_RDONLY | libc::O_DIRECTORY, &node)?;
        Some(DirStream::new(File::from(dir)))
    }

    /// Opens guest-tree path `parts` with `flags` ([`RedirectFs::open_known`]) if it leads
    /// to the node whose attributes are `node` (same device and inode number): a path the
    /// server knows may have changed behind its back. `None` otherwise.
    fn open_as_node(&self, parts: &[CString], flags: i32, node: &libc::stat64) -> Option<OwnedFd> {
        let fd = self.open_known(parts, flags).ok()?;
        let ours = crate::beneath::fstat(&fd).ok()?;
        (ours.st_dev == node.st_dev && ours.st_ino == node.st_ino).then_some(fd)
    }

    /// Opens the guest-tree path `parts` (the root if empty) with `flags`, never following a
    /// symlink and never leaving the tree: in one `openat2` where the path fits in
    /// `PATH_MAX`, else one component at a time.
    fn open_known(&self, parts: &[CString], flags: i32) -> io::Result<OwnedFd> {
        open_parts(&self.guest_root, parts, flags)
    }

    /// Keeps the stub of an open redirected file reachable after its last name goes (the
    /// caller is about to unlink or replace `parts`).
    fn pin_stub(&self, inode: u64, parts: &[CString]) {
        if self
            .state()
            .handles
            .open_inode(inode)
            .is_none_or(|o| o.pin.is_some())
        {
            return;
        }
        match self.open_stub_path(parts) {
            Ok(fd) => {
                if let Some(open) = self.state().handles.open_inode_mut(inode) {
                    open.pin = Some(fd);
                    self.budget.charge(1);
                }
            }
            Err(e) => log::warn!("cannot pin stub of open inode {inode}: {e}"),
        }
    }

    /// The stub at guest-tree path `parts`, as an `O_PATH` descriptor.
    fn open_stub_path(&self, parts: &[CString]) -> io::Result<OwnedFd> {
        if parts.is_empty() {
            return Err(errno(libc::EINVAL));
        }
        open_parts(&self.guest_root, parts, libc::O_PATH)
    }

    /// Called before the name `name` (at `parts`) of redirected `inode` goes while its host inode
    /// keeps other names (`nlink` > 1). If that is the last name this server knows for it and the
    /// kernel still uses the node (it knows it or has it open), takes hold of its object and its
    /// stub through descriptors now, while `parts` still leads to them: the caller passes the
    /// result to [`RedirectFs::keep_detached`] once the name is gone.
    ///
    /// Without this, the node could reach neither: its other names are unknown to the server
    /// until the kernel looks them up.
    fn detach_before_losing(
        &self,
        inode: u64,
        name: (u64, &CStr),
        parts: &[CString],
    ) -> Option<Detached> {
        {
            let st = self.state();
            let in_use = st.names.is_known(inode) || st.handles.is_open(inode);
            let other_name_known = st
                .names
                .links(inode)
                .iter()
                .any(|(parent, known)| (*parent, known.as_c_str()) != name);
            if !in_use || other_name_known || st.detached.contains_key(&inode) {
                return None;
            }
        }
        if let Err(e) = self.check_fd_room() {
            log::warn!(
                "inode {inode}: no descriptor room to keep it past its last known name: {e}"
            );
            return None;
        }
        let held = self.object(inode).and_then(|object| {
            Ok(Detached {
                object,
                stub: self.open_stub_path(parts)?,
            })
        });
        match held {
            Ok(detached) => Some(detached),
            Err(e) => {
                log::warn!("inode {inode}: cannot keep it past its last known name: {e}");
                None
            }
        }
    }

    /// Records what [`RedirectFs::detach_before_losing`] took hold of.
    fn keep_detached(&self, inode: u64, detached: Option<Detached>) {
        if let Some(detached) = detached {
            if self.state().detached.insert(inode, detached).is_none() {
                self.budget.charge(DETACHED_FDS);
            }
        }
    }

    /// Gives back what a detached node held (the node is gone, or a new file has its id).
    fn undetach(&self, inode: u64) {
        if self.state().detached.remove(&inode).is_some() {
            self.budget.release(DETACHED_FDS);
        }
    }

    /// Called once the last name of `inode` is gone from the guest tree and from `parts` in
    /// the store: an open file keeps its object in the orphan area, a closed one loses it.
    fn drop_last_name(&self, inode: u64, parts: &[CString]) -> io::Result<()> {
        let store = self.store()?;
        if self.is_open(inode) {
            let orphan = store.orphan(parts, inode)?;
            self.set_orphan(inode, orphan);
            Ok(())
        } else {
            self.drop_cached(inode);
            self.undetach(inode);
            store.remove(parts, false)
        }
    }

    /// Forgets everything the ended FUSE session held: the kernel's node references, its
    /// handles (files unlinked while open lose their objects now), every cached descriptor
    /// and its descriptor budget. A server serving one front-end after another (a looping
    /// vhost-user daemon) starts each session as new.
    ///
    /// The passthrough layer's references (nodes the kernel knew, handles it held) are given
    /// back one by one rather than by its own `destroy`, which leaks a descriptor of the
    /// share's root each time (fuse-backend-rs 0.14): a guest looping DESTROY and INIT must
    /// not grow the server.
    pub(super) fn end_session(&self) {
        let _ns = self.ns_write();
        let mut ended = std::mem::replace(&mut *self.state(), State::new(self.hot_inodes));
        let (handles, open) = ended.handles.take_all();
        let ctx = root_ctx();
        self.release_hot(ended.nodes.take_hot());
        for (handle, file) in handles {
            let released = match file {
                OpenFile::Inner(ih, inode, _) => self.inner.releasedir(&ctx, inode, 0, ih),
                OpenFile::Inline { ih, inode, .. } => {
                    self.inner.release(&ctx, inode, 0, ih, false, false, None)
                }
                OpenFile::Redirect { .. } | OpenFile::Dir => Ok(()),
            };
            if let Err(e) = released {
                log::debug!("handle {handle} of the ended session: {e}");
            }
        }
        for (inode, lookups) in ended.names.drain() {
            self.inner.forget(&ctx, inode, lookups);
        }
        // FORGETs deferred while a file was open are still counted in the name table.
        for open in open.into_values() {
            if let (Some(orphan), Ok(store)) = (open.orphan, self.store()) {
                if let Err(e) = store.remove_orphan(&orphan) {
                    log::warn!("orphan {orphan:?} left for the next start: {e}");
                }
            }
        }
        if let Some(r) = &self.redirect {
            r.objects.clear();
            r.stubs.clear();
        }
        self.dir_fds.clear();
        self.budget.reset();
    }

    /// Records that the object of open `inode` now lives in the orphan area as `orphan`,
    /// to be removed at its last release.
    fn set_orphan(&self, inode: u64, orphan: CString) {
        if let Some(open) = self.state().handles.open_inode_mut(inode) {
            open.orphan = Some(orphan);
        }
    }
}

/// A name the server looked up in the passthrough layer for its own use (is something
/// there, and what): the passthrough layer's reference is given back when this is dropped,
/// unless it is handed to the kernel ([`Peeked::hand_over`]).
struct Peeked<'a> {
    fs: &'a RedirectFs,
    entry: Entry,
    kind: Kind,
    handed_over: bool,
}

impl Peeked<'_> {
    /// The entry and the kind of what is there.
    fn pair(&self) -> (Entry, Kind) {
        (self.entry, self.kind)
    }

    /// Hands the reference to the kernel (the caller admits the entry as a reply).
    fn hand_over(mut self) -> (Entry, Kind) {
        self.handed_over = true;
        (self.entry, self.kind)
    }
}

impl Drop for Peeked<'_> {
    fn drop(&mut self) {
        if !self.handed_over {
            self.fs.inner.forget(&root_ctx(), self.entry.inode, 1);
        }
    }
}

/// Where [`RedirectFs::object_held_or_path`] found a store object.
enum ObjectAt {
    /// A descriptor the node's open handles or its detachment hold.
    Held(Arc<File>),
    /// The known path of the node, if any (the object is reached by the same path).
    Path(Option<Vec<CString>>),
}

/// What [`RedirectFs::inspect`] found at a name: the passthrough layer's reference, or one
/// the name table counts for a node the kernel holds. Either is given back when this is
/// dropped.
enum Inspected<'a> {
    Peeked(Peeked<'a>),
    Held(HeldName<'a>),
}

impl Inspected<'_> {
    /// The entry (with the host's attributes) and the kind of what is there.
    fn pair(&self) -> (Entry, Kind) {
        match self {
            Inspected::Peeked(p) => p.pair(),
            Inspected::Held(h) => (h.entry, h.kind),
        }
    }

    /// The node found.
    fn inode(&self) -> u64 {
        self.pair().0.inode
    }
}

/// A reference to a node the kernel holds, counted in the name table as the kernel's own
/// would be ([`RedirectFs::find_named`]); dropping it is a FORGET of one.
struct HeldName<'a> {
    fs: &'a RedirectFs,
    entry: Entry,
    kind: Kind,
}

impl Drop for HeldName<'_> {
    fn drop(&mut self) {
        self.fs.forget_locked(self.entry.inode, 1);
    }
}

/// How far a change must reach stable storage before it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SyncMode {
    /// Not before the answer (a plain WRITE).
    None,
    /// The data and what reading it back needs: fdatasync (O_DSYNC, FSYNC with datasync).
    Data,
    /// The data and all metadata: fsync (O_SYNC, FSYNC).
    Full,
}

impl SyncMode {
    /// What a WRITE with file flags `flags` needs: the guest may change O_SYNC and O_DSYNC
    /// after the open, so each WRITE says.
    fn of_write(flags: u32) -> SyncMode {
        let flags = flags as i32;
        if flags & libc::O_SYNC == libc::O_SYNC {
            SyncMode::Full
        } else if flags & libc::O_DSYNC != 0 {
            SyncMode::Data
        } else {
            SyncMode::None
        }
    }

    /// What an FSYNC asks for.
    fn of_fsync(datasync: bool) -> SyncMode {
        if datasync {
            SyncMode::Data
        } else {
            SyncMode::Full
        }
    }
}

impl Drop for RedirectFs {
    /// A clean stop: the guest tree is synced here, then the store (dropped with its
    /// fields) syncs itself and writes its clean-stop marker. If the guest tree cannot be
    /// synced, no marker is written: the next start recovers.
    fn drop(&mut self) {
        // SAFETY: syncfs on a descriptor we own; no memory is involved.
        if unsafe { libc::syncfs(self.guest_root.as_raw_fd()) } < 0 {
            log::warn!(
                "cannot sync the guest tree at stop: {}",
                io::Error::last_os_error()
            );
            if let Some(r) = &self.redirect {
                r.store.leave_unclean();
            }
        }
    }
}

/// The coarse clock the kernel stamps file changes with: (seconds, nanoseconds).
fn coarse_now() -> Option<(i64, i64)> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `now`.
    let clock = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut now) };
    (clock == 0).then_some((now.tv_sec, now.tv_nsec))
}

/// Gives `stub` the apparent size `size` (sparse) and, for a data change, a new mtime/ctime.
/// Returns whether the stub's mtime is now at least `now` (the coarse clock read before).
fn sync_stub_file(
    stub: &File,
    size: u64,
    touch: bool,
    now: Option<(i64, i64)>,
) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let meta = stub.metadata()?;
    if meta.len() != size {
        // A size change sets mtime and ctime by itself.
        stub.set_len(size)?;
        if meta.mode() & PRIVILEGE_BITS != 0 {
            // Without CAP_FSETID the host clears setuid/setgid on truncate. The guest's kernel
            // clears them itself when its rules say so; the stub only resizes to the data.
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::Permissions::from_mode(meta.mode() & 0o7777);
            stub.set_permissions(mode)?;
        }
        return Ok(true);
    }
    // The kernel stamps changes with its coarse clock: if the stub already carries the
    // current tick, stamping it again would change nothing a reader can see.
    if now.is_some_and(|now| (meta.mtime(), meta.mtime_nsec()) >= now) {
        return Ok(true);
    }
    if touch {
        stamp_now(stub)?;
        return Ok(true);
    }
    Ok(false)
}

/// Stamps `stub`'s mtime (and so its ctime) with the current time.
fn stamp_now(stub: &File) -> io::Result<()> {
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
    crate::beneath::check(unsafe { libc::futimens(stub.as_raw_fd(), times.as_ptr()) }).map(drop)
}

mod datalock;
mod dirs;
mod handles;
mod nodes;
mod ops;
mod redirecting;
mod rename;
mod revalidate;
mod transition;
mod xattrs;

use datalock::{DataGuard, DataLocks};

#[cfg(test)]
mod tests;
