//! Host tools for a redirecting share, run while no server uses its volume: [`inspect`] one
//! file, [`check`] (verify) the whole share, [`repair`] what verify finds, [`gc`] objects
//! nobody names, [`hydrate`] a stub back into an ordinary file and dehydrate the reverse.
//!
//! Every tool takes the volume lock (`<store>/.fsredirect/<volume>/lock`) first, so it never
//! runs beside a VM, a vhost-user daemon or a host mount serving the volume: read-only tools
//! ([`inspect`], [`check`]) hold it shared and change nothing, the others open the volume like
//! a server would ([`crate::Store::open`]) and, if its last server did not stop cleanly, run
//! the same recovery first ([`crate::recover`]).
//!
//! Each tool returns a report that renders for people or as JSON ([`output::Outcome`]).

pub mod check;
pub mod gc;
pub mod guest;
pub mod hydrate;
pub mod inspect;
pub mod output;
pub mod repair;

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use crate::faults::Hook;
use crate::names::validate_name;
use crate::recover::{recover, replay_intents, RecoveryReport};
use crate::share::ShareSpec;
use crate::store::{Store, StoreError, CONTROL_DIR};

/// Errors of the host tools (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The share has no store: nothing is redirected.
    #[error("share `{0}` has no store=: nothing is redirected, so there is nothing to check; give store=STORE")]
    NoStore(String),
    /// The store has no such volume.
    #[error("store {store} has no volume `{volume}` (no control area {control}); check store= and volume= (a volume is made when a server first serves the share)")]
    NoVolume {
        /// The volume.
        volume: String,
        /// The store root.
        store: PathBuf,
        /// The control area that is missing.
        control: PathBuf,
    },
    /// The store directory does not exist.
    #[error("store directory {0} does not exist; check store=")]
    NoStoreDir(PathBuf),
    /// A server holds the volume.
    #[error("volume `{volume}` of store {store} is in use by a server (a VM, a vhost-user daemon or `fsredirect mount`{}) holding {lock}; stop it (shut the VM down, stop the daemon or unmount) and run this command again", pids_note(pid.as_slice()))]
    Busy {
        /// The volume.
        volume: String,
        /// The store root.
        store: PathBuf,
        /// The lock file.
        lock: PathBuf,
        /// The server's process, when the lock file names it.
        pid: Option<u32>,
    },
    /// Another read-only tool holds the volume.
    #[error("volume `{volume}` of store {store} is being read by another fsredirect tool (inspect or verify{}); run this command again when it has finished", pids_note(pids))]
    BusyReading {
        /// The volume.
        volume: String,
        /// The store root.
        store: PathBuf,
        /// The tools' processes, where known.
        pids: Vec<u32>,
    },
    /// The volume could not be opened.
    #[error(transparent)]
    Store(StoreError),
    /// Another server (with another store, or none) holds the guest tree.
    #[error(transparent)]
    Tree(#[from] crate::treelock::TreeLockError),
    /// Recovery after an unclean stop failed.
    #[error("recovery of volume `{volume}` after an unclean stop failed")]
    Recovery {
        /// The volume.
        volume: String,
        /// What the host said.
        #[source]
        source: io::Error,
    },
    /// A path argument that does not name a file of the share.
    #[error("path {path} {reason}")]
    BadPath {
        /// The argument.
        path: PathBuf,
        /// Why it cannot be used, and what to give instead.
        reason: String,
    },
    /// A path argument whose directories cannot be walked inside the guest tree (one of them
    /// is a symlink, is not a directory, or cannot be opened).
    #[error("path {path} cannot be reached in guest tree {tree}")]
    Unreachable {
        /// The argument.
        path: PathBuf,
        /// The guest tree.
        tree: PathBuf,
        /// What the host said.
        #[source]
        source: io::Error,
    },
    /// This user may not read the store.
    #[error("permission denied reading {}: run this as the store's owner (the user the server runs as, often root)", path.display())]
    NoPermission {
        /// The path that could not be read.
        path: PathBuf,
        /// What the host said.
        #[source]
        source: io::Error,
    },
    /// A host operation failed.
    #[error("cannot {what} {}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// What the host said.
        #[source]
        source: io::Error,
    },
    /// The file is not in a state the operation can start from.
    #[error("cannot {op} {}: {reason}", path.display())]
    Refused {
        /// The operation.
        op: &'static str,
        /// The file (relative to the share).
        path: PathBuf,
        /// Why, and what to do.
        reason: String,
    },
    /// The file's redirect metadata cannot be decoded, so the operation cannot start.
    #[error("cannot {op} {}: its redirect metadata cannot be decoded; run `fsredirect repair` first", path.display())]
    BadMeta {
        /// The operation.
        op: &'static str,
        /// The file (relative to the share).
        path: PathBuf,
        /// What is wrong with the metadata.
        #[source]
        source: crate::meta::MetaError,
    },
    /// The file's stored object cannot be opened, so the operation cannot start.
    #[error("cannot {op} {}: its stored object cannot be opened; run `fsredirect repair` first", path.display())]
    NoObject {
        /// The operation.
        op: &'static str,
        /// The file (relative to the share).
        path: PathBuf,
        /// What the host said.
        #[source]
        source: io::Error,
    },
}

/// A `Result` with a [`ToolError`].
pub type Result<T> = std::result::Result<T, ToolError>;

/// Builds a [`ToolError::Io`] for `what` on `path`.
pub(crate) fn io_err(
    what: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> ToolError {
    let path = path.into();
    move |source| ToolError::Io { what, path, source }
}

/// Where a share's volume lives.
#[derive(Debug, Clone)]
pub struct Volume {
    /// The volume's name.
    pub name: String,
    /// The store root.
    pub store: PathBuf,
    /// `<store>/<volume>`: the stored objects.
    pub data: PathBuf,
    /// `<store>/.fsredirect/<volume>`: control data.
    pub control: PathBuf,
    /// The guest tree's lock while a tool works on the share (see [`crate::treelock`]).
    tree_lock: Option<std::sync::Arc<File>>,
}

impl Volume {
    /// Locates the volume of `share`; fails if the share has no store or the volume was never
    /// created (so a mistyped path is reported rather than made).
    pub fn of(share: &ShareSpec) -> Result<Self> {
        let volume = Self::locate(share)?;
        // Tell a volume that is not there from one this user may not look at.
        for path in [volume.control.join("lock"), volume.data.clone()] {
            match fs::metadata(&path) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(ToolError::NoVolume {
                        volume: volume.name,
                        store: volume.store,
                        control: volume.control,
                    });
                }
                Err(source) if source.kind() == io::ErrorKind::PermissionDenied => {
                    return Err(ToolError::NoPermission { path, source });
                }
                Err(source) => {
                    return Err(ToolError::Io {
                        what: "examine",
                        path,
                        source,
                    })
                }
            }
        }
        if !volume.control.join("lock").is_file() || !volume.data.is_dir() {
            return Err(ToolError::NoVolume {
                volume: volume.name,
                store: volume.store,
                control: volume.control,
            });
        }
        Ok(volume)
    }

    /// Locates the volume of `share`, which need not exist yet.
    pub fn locate(share: &ShareSpec) -> Result<Self> {
        let store = share
            .store
            .as_ref()
            .ok_or_else(|| ToolError::NoStore(share.to_string()))?;
        let volume = Volume {
            name: store.volume.clone(),
            store: store.root.clone(),
            data: store.root.join(&store.volume),
            control: store.root.join(CONTROL_DIR).join(&store.volume),
            tree_lock: None,
        };
        Ok(volume)
    }

    /// The lock file.
    pub fn lock_path(&self) -> PathBuf {
        self.control.join("lock")
    }

    /// The orphan area (objects of files unlinked while open).
    pub fn orphans(&self) -> PathBuf {
        self.control.join("orphans")
    }

    /// Where repair keeps what it takes out of the way (never deleted by a tool).
    pub fn lost_found(&self) -> PathBuf {
        self.control.join("lost+found")
    }

    /// True if the last server of this volume did not stop cleanly (its recovery is due).
    /// Meaningful only while the lock is held.
    pub fn unclean(&self) -> bool {
        // Intent records left after a clean stop (a store half that failed) also need it.
        !self.control.join("clean").exists()
            || crate::intent::dir_has_records(&self.control.join("intent"))
    }

    fn busy(&self) -> ToolError {
        let (volume, store, lock) = (self.name.clone(), self.store.clone(), self.lock_path());
        if only_shared_holders(&lock) {
            let pids = crate::treelock::lock_holders(&lock)
                .iter()
                .filter(|(_, write)| !write)
                .map(|(p, _)| *p)
                .collect();
            return ToolError::BusyReading {
                volume,
                store,
                pids,
            };
        }
        // A server writes its pid into the lock file once it holds the lock.
        let pid = fs::read_to_string(&lock)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        ToolError::Busy {
            volume,
            store,
            lock,
            pid,
        }
    }
}

/// `, pid N` or `, pids N, M` for an error message; nothing when no process is known.
fn pids_note(pids: &[u32]) -> String {
    let list: Vec<String> = pids.iter().map(u32::to_string).collect();
    match list.len() {
        0 => String::new(),
        1 => format!(", pid {}", list[0]),
        _ => format!(", pids {}", list.join(", ")),
    }
}

/// True if the lock at `path` can be shared right now: whoever holds it is a read-only tool,
/// not a server (which holds it exclusively).
fn only_shared_holders(path: &Path) -> bool {
    let Ok(file) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
    else {
        return false;
    };
    // SAFETY: flock on a descriptor we own; closing it (at the end of this function) drops
    // the probe.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) == 0 }
}

/// A shared hold on the volume lock: read-only tools run beside each other, never beside a
/// server. Released when dropped.
#[derive(Debug)]
pub struct ReadLock {
    _file: File,
}

/// Takes the volume lock of `share` shared, without changing anything in the store.
pub fn lock_shared(share: &ShareSpec) -> Result<(Volume, ReadLock)> {
    let mut volume = Volume::of(share)?;
    let path = volume.lock_path();
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(io_err("open lock file", &path))?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(volume.busy());
        }
        return Err(io_err("lock", path)(err));
    }
    // A server of this tree with another store (or none) holds the tree, not the volume.
    let tree = crate::treelock::open_locked(&share.dir, crate::treelock::LockMode::Shared)?;
    volume.tree_lock = Some(std::sync::Arc::new(tree));
    Ok((volume, ReadLock { _file: file }))
}

/// What the recovery run by [`open_for_change`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Intent records settled.
    pub settled: usize,
    /// The reconciliation of stubs with objects.
    pub report: RecoveryReport,
}

/// Opens the volume of `share` for changes, as a server would (making it if the store has
/// none yet): takes the lock exclusively and, if the last server did not stop cleanly, runs
/// its recovery first (returned). Orphans are left for [`gc`].
pub fn open_for_change(share: &ShareSpec) -> Result<(Volume, Store, Option<Recovered>)> {
    open_for_change_with(share, Hook::default())
}

/// [`open_for_change`], the store showing every operation to `hook` (none in production).
pub(crate) fn open_for_change_with(
    share: &ShareSpec,
    hook: Hook,
) -> Result<(Volume, Store, Option<Recovered>)> {
    let mut volume = Volume::locate(share)?;
    if !volume.store.is_dir() {
        return Err(ToolError::NoStoreDir(volume.store));
    }
    let fresh = !volume.control.join("lock").exists();
    // The tree first: refused by a server of the tree before anything in a store changes.
    let tree = crate::treelock::open_locked(&share.dir, crate::treelock::LockMode::Exclusive)?;
    volume.tree_lock = Some(std::sync::Arc::new(tree));
    let store = Store::open_with(&volume.store, &volume.name, hook).map_err(|e| match e {
        StoreError::Busy { .. } => volume.busy(),
        other => ToolError::Store(other),
    })?;
    let err = |source| ToolError::Recovery {
        volume: volume.name.clone(),
        source,
    };
    // Records left after a clean stop belong to operations whose store half failed.
    let leftovers = store.intents().has_leftovers().map_err(err)?;
    // A volume made just now has nothing to recover.
    let recovered = if (store.was_clean() && !leftovers) || fresh {
        // A stop cut short after its marker may leave idle intent slots (no records).
        store.intents().remove_idle_slots().map_err(err)?;
        None
    } else {
        let (settled, _unreadable) = replay_intents(&share.dir, &store).map_err(err)?;
        let report = recover(&share.dir, &store).map_err(err)?;
        Some(Recovered { settled, report })
    };
    Ok((volume, store, recovered))
}

/// Turns a PATH argument into the file's path relative to the share root: either already
/// relative, or absolute inside the guest tree. `..`, `.` and empty components are refused.
pub fn share_relative(share: &ShareSpec, arg: &Path) -> Result<PathBuf> {
    let bad = |reason: &str| ToolError::BadPath {
        path: arg.to_path_buf(),
        reason: reason.to_string(),
    };
    let rel = if arg.is_absolute() {
        arg.strip_prefix(&share.dir).map_err(|_| {
            bad(&format!(
                "is outside guest tree {}; give a path inside it or relative to it",
                share.dir.display()
            ))
        })?
    } else {
        arg
    };
    let mut out = PathBuf::new();
    for c in rel.components() {
        match c {
            Component::Normal(name) => out.push(name),
            Component::CurDir => {}
            _ => return Err(bad("has a `..` component; give a path inside the share")),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(bad("names the share root; give a file inside it"));
    }
    Ok(out)
}

/// The validated components of a share-relative path.
pub fn parts_of(rel: &Path) -> io::Result<Vec<CString>> {
    rel.components()
        .map(|c| {
            let name = CString::new(c.as_os_str().as_bytes())
                .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            validate_name(&name)?;
            Ok(name)
        })
        .collect()
}

/// A per-run directory under the volume's lost+found, made on first use: repair moves there
/// what it takes out of the way, keeping each file's path.
#[derive(Debug)]
pub struct LostFound {
    dir: PathBuf,
}

impl LostFound {
    /// A directory named after the current time and this process, under `volume`'s
    /// lost+found.
    pub fn new(volume: &Volume) -> Self {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        LostFound {
            dir: volume
                .lost_found()
                .join(format!("{secs}-{}", std::process::id())),
        }
    }

    /// The directory of this run.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where `rel` of `side` ("store" or "guest") goes.
    pub fn target(&self, side: &str, rel: &Path) -> PathBuf {
        self.dir.join(side).join(rel)
    }

    /// Makes the parent directories of `target` (private).
    pub fn prepare(&self, target: &Path) -> Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        let parent = target.parent().unwrap_or(&self.dir);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(io_err("create directory", parent))
    }
}

/// Walks a tree; the one walker of the crate, shared with `verify` and `placement`.
pub(crate) use crate::verify::walk;

#[cfg(test)]
mod tests {
    use super::*;

    fn share() -> ShareSpec {
        ShareSpec::parse("tag=t,dir=/srv/g,store=/srv/s").unwrap()
    }

    #[test]
    fn relative_path_is_kept() {
        assert_eq!(
            share_relative(&share(), Path::new("a/./b")).unwrap(),
            PathBuf::from("a/b")
        );
    }

    #[test]
    fn absolute_path_inside_guest_tree_is_made_relative() {
        assert_eq!(
            share_relative(&share(), Path::new("/srv/g/a/b")).unwrap(),
            PathBuf::from("a/b")
        );
    }

    #[test]
    fn absolute_path_outside_guest_tree_is_refused() {
        let err = share_relative(&share(), Path::new("/srv/s/t/a")).unwrap_err();
        assert!(err.to_string().contains("outside guest tree"), "{err}");
    }

    #[test]
    fn dotdot_is_refused() {
        assert!(share_relative(&share(), Path::new("a/../../etc")).is_err());
        assert!(share_relative(&share(), Path::new("/srv/g/../s")).is_err());
    }

    #[test]
    fn share_root_is_refused() {
        assert!(share_relative(&share(), Path::new("/srv/g")).is_err());
        assert!(share_relative(&share(), Path::new(".")).is_err());
    }

    #[test]
    fn share_without_store_is_refused() {
        let share = ShareSpec::parse("tag=t,dir=/srv/g").unwrap();
        assert!(matches!(Volume::of(&share), Err(ToolError::NoStore(_))));
    }

    #[test]
    fn missing_volume_is_reported_not_made() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("g")).unwrap();
        let share = ShareSpec::parse(&format!(
            "tag=t,dir={0}/g,store={0}/s",
            tmp.path().display()
        ))
        .unwrap();
        let err = lock_shared(&share).unwrap_err();
        assert!(matches!(err, ToolError::NoVolume { .. }), "{err}");
        assert!(!tmp.path().join("s").exists());
    }

    #[test]
    fn server_holding_the_volume_makes_tools_refuse() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("g")).unwrap();
        let share = ShareSpec::parse(&format!(
            "tag=t,dir={0}/g,store={0}/s",
            tmp.path().display()
        ))
        .unwrap();
        let server = Store::open(&tmp.path().join("s"), "t").unwrap();
        let err = lock_shared(&share).unwrap_err();
        assert!(err.to_string().contains("in use by a server"), "{err}");
        assert!(err
            .to_string()
            .contains(&format!("pid {}", std::process::id())));
        let err = open_for_change(&share).unwrap_err();
        assert!(matches!(err, ToolError::Busy { .. }), "{err}");
        drop(server);
        assert!(lock_shared(&share).is_ok());
    }

    /// 1. A server serves the guest tree with one store (or none).
    /// 2. Tools given the same tree with another store refuse, naming the tree: they would
    ///    look at or change stubs a live server is changing.
    #[test]
    fn server_of_the_tree_with_another_store_makes_tools_refuse() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("g")).unwrap();
        let spec = |store: &str| {
            ShareSpec::parse(&format!(
                "tag=t,dir={0}/g,store={0}/{store}",
                tmp.path().display()
            ))
            .unwrap()
        };
        drop(Store::open(&tmp.path().join("other"), "t").unwrap());
        let server = crate::RedirectFs::new(&spec("s"), crate::FsConfig::default()).unwrap();
        let err = lock_shared(&spec("other")).unwrap_err();
        assert!(matches!(err, ToolError::Tree(_)), "{err}");
        assert!(
            err.to_string().contains("one server per guest tree"),
            "{err}"
        );
        let err = open_for_change(&spec("other")).unwrap_err();
        assert!(matches!(err, ToolError::Tree(_)), "{err}");
        drop(server);
        assert!(lock_shared(&spec("other")).is_ok());
    }

    /// 1. A store whose control area this user cannot enter (as the server's private mode
    ///    keeps it from other users).
    /// 2. The tools say permission denied and who can run them, not "no volume".
    #[test]
    fn unreadable_store_is_reported_as_such() {
        use std::os::unix::fs::PermissionsExt;
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("g")).unwrap();
        let share = ShareSpec::parse(&format!(
            "tag=t,dir={0}/g,store={0}/s",
            tmp.path().display()
        ))
        .unwrap();
        drop(Store::open(&tmp.path().join("s"), "t").unwrap());
        let control = tmp.path().join("s").join(CONTROL_DIR);
        fs::set_permissions(&control, fs::Permissions::from_mode(0o000)).unwrap();
        let result = Volume::of(&share);
        fs::set_permissions(&control, fs::Permissions::from_mode(0o700)).unwrap();
        if root {
            // Root reads whatever the mode says: the volume is found.
            assert!(result.is_ok());
            return;
        }
        let err = result.unwrap_err();
        assert!(matches!(err, ToolError::NoPermission { .. }), "{err}");
        assert!(err.to_string().contains("permission denied"), "{err}");
    }

    #[test]
    fn read_locks_do_not_exclude_each_other() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("g")).unwrap();
        let share = ShareSpec::parse(&format!(
            "tag=t,dir={0}/g,store={0}/s",
            tmp.path().display()
        ))
        .unwrap();
        drop(Store::open(&tmp.path().join("s"), "t").unwrap());
        let _a = lock_shared(&share).unwrap();
        assert!(lock_shared(&share).is_ok());
        let err = open_for_change(&share).unwrap_err();
        assert!(
            err.to_string()
                .contains("being read by another fsredirect tool"),
            "{err}"
        );
    }
}
