//! The redirecting share every file system target serves.
//!
//! Its directories are made once per process (in `/dev/shm` when there is one, so no input
//! waits for a disk); each input then gets a [`fresh`] file system over them, emptied first,
//! so the same input always meets the same state (node ids and handles start over, which is
//! what lets a committed input replay the same way).

use std::collections::BTreeSet;
use std::os::fd::RawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use fsredirect::{FsConfig, RedirectFs, ShareSpec};

use crate::bounded::Bounded;

/// The file system a target serves.
pub type Fs = Bounded<RedirectFs>;

struct Dirs {
    root: tempfile::TempDir,
    spec: ShareSpec,
    mount_root: (u64, u64),
}

static DIRS: OnceLock<Dirs> = OnceLock::new();

/// Removes the share's directories when the process exits (statics are never dropped, and
/// libFuzzer ends a run with `exit`).
extern "C" fn remove_dirs() {
    if let Some(dirs) = DIRS.get() {
        let _ = std::fs::remove_dir_all(dirs.root.path());
    }
}

fn dirs() -> &'static Dirs {
    DIRS.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let root = if shm.is_dir() {
            tempfile::Builder::new().prefix("fsr-fuzz").tempdir_in(shm)
        } else {
            tempfile::Builder::new().prefix("fsr-fuzz").tempdir()
        }
        .expect("cannot create the fuzz share's temporary directory");
        let tree = root.path().join("tree");
        std::fs::create_dir(&tree).expect("cannot create the fuzz share's guest tree");
        let spec = ShareSpec::parse(&format!(
            "tag=fuzz,dir={},store={}",
            tree.display(),
            root.path().join("store").display()
        ))
        .expect("the fuzz share's description parses");
        let mount_root = mount_root(&tree);
        // SAFETY: registers a function without arguments that touches only a static.
        unsafe { libc::atexit(remove_dirs) };
        Dirs {
            root,
            spec,
            mount_root,
        }
    })
}

/// The share's description.
pub fn spec() -> &'static ShareSpec {
    &dirs().spec
}

/// A directory of this process for other files (sockets), beside the share.
pub fn scratch() -> &'static Path {
    dirs().root.path()
}

/// Removes everything below `dir`, keeping `dir`.
fn empty(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path: PathBuf = entry.path();
        let remove = |path: &Path| match entry.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir_all(path),
            _ => std::fs::remove_file(path),
        };
        // A directory the input made unreadable (mode 0) stops a server not run as root.
        if remove(&path).is_err() {
            open_up(&path);
            if let Err(e) = remove(&path) {
                panic!("cannot empty the fuzz share at {}: {e}", path.display());
            }
        }
    }
}

/// Gives the owner full access to every directory below `path`.
fn open_up(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let is_dir = std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir());
    if is_dir {
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700));
        for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
            open_up(&entry.path());
        }
    }
}

/// One input's hold on the share, from before it runs until everything it made is dropped.
///
/// Inputs of every target share the directories (and the replay test runs targets in
/// parallel threads of one process), so a run holds a process-wide lock. It also notes the
/// open descriptors, and [`Run::finish`] checks that the input left none behind: a guest
/// that can leak a host descriptor per request can starve the server.
pub struct Run {
    _guard: MutexGuard<'static, ()>,
    before: BTreeSet<RawFd>,
}

/// Starts a run (waiting for any other to finish).
pub fn begin() -> Run {
    begin_after(|| {})
}

/// Starts a run, calling `setup` (per-process state a target makes on first use, whose
/// descriptors stay open) once the other runs are finished and before noting descriptors.
pub fn begin_after(setup: impl FnOnce()) -> Run {
    static RUN: Mutex<()> = Mutex::new(());
    // A panicking input is the finding; the next input still empties the share first.
    let guard = RUN.lock().unwrap_or_else(|p| p.into_inner());
    dirs();
    setup();
    Run {
        _guard: guard,
        before: open_fds(),
    }
}

impl Run {
    /// Panics if a descriptor opened during the run is still open, except the one that
    /// fuse-backend-rs 0.14 leaks each time its passthrough layer opens the share's mount
    /// point for file handles (an `O_PATH` descriptor it never closes: once per file system,
    /// and again after every DESTROY), which is closed here.
    pub fn finish(self) {
        self.finish_leaving_eventfds(0);
    }

    /// [`Run::finish`], also closing up to `eventfds` eventfds: vhost-user-backend 0.22
    /// keeps no owner for the exit event it registers for each queue worker (it turns the
    /// descriptor into a raw one and never closes it), one per queue and daemon.
    pub fn finish_leaving_eventfds(self, mut eventfds: usize) {
        let mut leaked = Vec::new();
        for fd in open_fds().difference(&self.before) {
            let target = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap_or_default();
            let known = if is_mount_root_path_fd(*fd) {
                true
            } else if eventfds > 0 && target == Path::new("anon_inode:[eventfd]") {
                eventfds -= 1;
                true
            } else {
                false
            };
            if known {
                // SAFETY: nothing in this process owns the descriptor any more (see above).
                unsafe { libc::close(*fd) };
            } else {
                leaked.push(format!("{fd} -> {}", target.display()));
            }
        }
        assert!(leaked.is_empty(), "descriptors left open: {leaked:?}");
    }
}

fn open_fds() -> BTreeSet<RawFd> {
    let entries = std::fs::read_dir("/proc/self/fd").expect("cannot list /proc/self/fd");
    let fds: BTreeSet<RawFd> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    // The listing's own descriptor is closed again by now.
    fds.into_iter()
        .filter(|fd| {
            // SAFETY: F_GETFD only reads the descriptor's flags.
            let flags = unsafe { libc::fcntl(*fd, libc::F_GETFD) };
            flags >= 0
        })
        .collect()
}

/// Whether `fd` is an `O_PATH` descriptor of the root of the mount that holds the share.
fn is_mount_root_path_fd(fd: RawFd) -> bool {
    let flags = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default();
    let o_path = flags
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        .is_some_and(|f| f & libc::O_PATH as u32 != 0);
    if !o_path {
        return false;
    }
    let Ok(target) = std::fs::metadata(format!("/proc/self/fd/{fd}")) else {
        return false;
    };
    let root = &dirs().mount_root;
    target.dev() == root.0 && target.ino() == root.1
}

/// Device and inode of the root of the mount holding `path`: its highest ancestor on the
/// same device.
fn mount_root(path: &Path) -> (u64, u64) {
    let meta = std::fs::metadata(path).expect("the share exists");
    let mut root = (meta.dev(), meta.ino());
    for ancestor in path.ancestors().skip(1) {
        match std::fs::metadata(ancestor) {
            Ok(m) if m.dev() == meta.dev() => root = (m.dev(), m.ino()),
            _ => break,
        }
    }
    root
}

/// A new file system over the emptied share. The caller holds a [`Run`] and drops the
/// file system (and every clone) before the next call: it holds the store's volume lock.
pub fn fresh() -> Arc<Fs> {
    let spec = spec();
    empty(&spec.dir);
    if let Some(store) = &spec.store {
        empty(&store.root);
    }
    let fs = RedirectFs::new(spec, FsConfig::default()).expect("the fuzz share opens");
    Arc::new(Bounded(fs))
}
