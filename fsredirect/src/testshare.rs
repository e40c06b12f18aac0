//! The one share fixture of the tests (feature `test-utils`, or the crate's own tests): a
//! redirecting share in a temporary directory whose files are created, written, linked and
//! renamed through [`RedirectFs`], as a guest would, the server then stopped cleanly.
//!
//! ```
//! use fsredirect::testshare::TestShare;
//!
//! let share = TestShare::new();
//! share.write("docs/a.txt", b"hello");
//! assert_eq!(share.serve().read("docs/a.txt"), b"hello");
//! // Redirected: the data is in the store, the guest tree holds a sparse stub.
//! assert_eq!(std::fs::read(share.volume.join("docs/a.txt")).unwrap(), b"hello");
//! ```
//!
//! Test binaries that start child processes while servers run in other threads take
//! [`fork_guard`] around both, as [`TestShare::serve`] does: a child inherits every
//! descriptor open at the instant it is forked, a volume lock included, until it execs.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use fuse_backend_rs::abi::fuse_abi::{CreateIn, FsOptions};
use fuse_backend_rs::api::filesystem::{Context, Entry, FileSystem};

use crate::fs::{FsConfig, RedirectFs};
use crate::memio::{MemSink, MemSource};
use crate::names::ROOT_INODE;
use crate::share::ShareSpec;

/// A redirecting share in a temporary directory: tag and volume `t`, guest tree `g`, store
/// `s`; everything is removed when it is dropped.
pub struct TestShare {
    tmp: tempfile::TempDir,
    /// The share.
    pub share: ShareSpec,
    /// The share as text (`tag=t,dir=...,store=...[,options]`), for `--share`.
    pub spec: String,
    /// The guest tree.
    pub guest: PathBuf,
    /// The store (holding the volume and the control area).
    pub store: PathBuf,
    /// The volume: where the objects are.
    pub volume: PathBuf,
    /// The volume's control area (intent records, orphans, lost+found).
    pub control: PathBuf,
}

/// A running server on a [`TestShare`], with the caller's credentials; dropping it stops
/// it cleanly.
pub struct Guest {
    /// The server.
    pub fs: RedirectFs,
    /// The credentials of the requests.
    pub ctx: Context,
}

static FORK: Mutex<()> = Mutex::new(());

/// Held while a child process is started and while a volume lock is taken in this process
/// (see the module docs).
pub fn fork_guard() -> MutexGuard<'static, ()> {
    FORK.lock().unwrap_or_else(|p| p.into_inner())
}

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

impl TestShare {
    /// A new share whose volume exists (a server served it once and stopped cleanly).
    pub fn new() -> Self {
        Self::with_options("")
    }

    /// [`TestShare::new`] with more share options, e.g. `policy=min-size:4K`.
    pub fn with_options(options: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let guest = tmp.path().join("g");
        std::fs::create_dir(&guest).unwrap();
        let store = tmp.path().join("s");
        let mut spec = format!("tag=t,dir={},store={}", guest.display(), store.display());
        if !options.is_empty() {
            spec = format!("{spec},{options}");
        }
        let t = TestShare {
            share: ShareSpec::parse(&spec).unwrap(),
            spec,
            volume: store.join("t"),
            control: store.join(".fsredirect/t"),
            store,
            guest,
            tmp,
        };
        drop(t.serve());
        t
    }

    /// The temporary directory holding the guest tree and the store.
    pub fn root(&self) -> &Path {
        self.tmp.path()
    }

    /// Starts a server (dropping it stops it cleanly).
    pub fn serve(&self) -> Guest {
        self.try_serve(FsConfig::default()).unwrap()
    }

    /// Starts a server with `cfg`; the error says what failed.
    pub fn try_serve(&self, cfg: FsConfig) -> Result<Guest, String> {
        let fs = {
            let _forking = fork_guard();
            RedirectFs::new(&self.share, cfg).map_err(|e| format!("start: {e:#}"))?
        };
        fs.init(FsOptions::empty())
            .map_err(|e| format!("init: {e}"))?;
        let mut ctx = Context::new();
        // SAFETY: geteuid/getegid have no preconditions.
        (ctx.uid, ctx.gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        Ok(Guest { fs, ctx })
    }

    /// Writes `data` to a new file at `path` through a server, making directories on the way.
    pub fn write(&self, path: &str, data: &[u8]) {
        self.serve().write(path, data);
    }
}

impl Default for TestShare {
    fn default() -> Self {
        Self::new()
    }
}

impl Guest {
    /// The inode of the directory `path` (made if missing).
    pub fn dir(&self, path: &Path) -> u64 {
        let mut inode = ROOT_INODE;
        for part in path.iter() {
            let name = c(part.to_str().unwrap());
            inode = match self.fs.lookup(&self.ctx, inode, &name) {
                Ok(e) => e.inode,
                Err(_) => {
                    self.fs
                        .mkdir(&self.ctx, inode, &name, 0o755, 0)
                        .unwrap()
                        .inode
                }
            };
        }
        inode
    }

    /// The last component of `path` and its parent directory.
    fn split(path: &str) -> (CString, &Path) {
        let p = Path::new(path);
        let parent = p.parent().unwrap_or(Path::new(""));
        (c(p.file_name().unwrap().to_str().unwrap()), parent)
    }

    /// Creates `path` with `data`.
    pub fn write(&self, path: &str, data: &[u8]) {
        let (name, parent) = Self::split(path);
        let parent = self.dir(parent);
        let args = CreateIn {
            flags: libc::O_RDWR as u32,
            mode: libc::S_IFREG | 0o644,
            umask: 0,
            fuse_flags: 0,
        };
        let (entry, handle, _, _) = self.fs.create(&self.ctx, parent, &name, args).unwrap();
        let handle = handle.unwrap();
        let mut src = MemSource::new(data.to_vec());
        let n = self
            .fs
            .write(
                &self.ctx,
                entry.inode,
                handle,
                &mut src,
                data.len() as u32,
                0,
                None,
                false,
                0,
                0,
            )
            .unwrap();
        assert_eq!(n, data.len());
        self.fs
            .release(&self.ctx, entry.inode, 0, handle, false, false, None)
            .unwrap();
    }

    /// Looks `path` up.
    pub fn lookup(&self, path: &str) -> io::Result<Entry> {
        let (name, parent) = Self::split(path);
        self.fs.lookup(&self.ctx, self.dir(parent), &name)
    }

    /// The whole content of the file at `path` (up to 16 MiB).
    pub fn read(&self, path: &str) -> Vec<u8> {
        self.try_read(path).unwrap()
    }

    /// [`Guest::read`], failing with the server's error.
    pub fn try_read(&self, path: &str) -> io::Result<Vec<u8>> {
        let entry = self.lookup(path)?;
        let (handle, _, _) = self
            .fs
            .open(&self.ctx, entry.inode, libc::O_RDONLY as u32, 0)?;
        let handle = handle.ok_or_else(|| io::Error::other("no handle"))?;
        let mut sink = MemSink::default();
        let read = self.fs.read(
            &self.ctx,
            entry.inode,
            handle,
            &mut sink,
            16 << 20,
            0,
            None,
            0,
        );
        self.fs
            .release(&self.ctx, entry.inode, 0, handle, false, false, None)?;
        read?;
        Ok(sink.into_bytes())
    }

    /// Makes `new` a hard link of `old`.
    pub fn link(&self, old: &str, new: &str) {
        let (old_name, old_parent) = Self::split(old);
        let (new_name, new_parent) = Self::split(new);
        let entry = self
            .fs
            .lookup(&self.ctx, self.dir(old_parent), &old_name)
            .unwrap();
        self.fs
            .link(&self.ctx, entry.inode, self.dir(new_parent), &new_name)
            .unwrap();
    }

    /// Renames `old` to `new` (a file or a directory).
    pub fn rename(&self, old: &str, new: &str) {
        self.try_rename(old, new).unwrap()
    }

    /// [`Guest::rename`], failing with the server's error.
    pub fn try_rename(&self, old: &str, new: &str) -> io::Result<()> {
        let (old_name, old_parent) = Self::split(old);
        let (new_name, new_parent) = Self::split(new);
        self.fs.rename(
            &self.ctx,
            self.dir(old_parent),
            &old_name,
            self.dir(new_parent),
            &new_name,
            0,
        )
    }

    /// Makes an inert FIFO at `path`.
    pub fn mkfifo(&self, path: &str) {
        let (name, parent) = Self::split(path);
        self.fs
            .mknod(
                &self.ctx,
                self.dir(parent),
                &name,
                libc::S_IFIFO | 0o644,
                0,
                0,
            )
            .unwrap();
    }
}
