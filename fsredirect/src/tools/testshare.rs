//! Test shares built with the engine itself: files are created, written, linked and renamed
//! through [`RedirectFs`], as a guest would, then the server is stopped cleanly.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use fuse_backend_rs::abi::fuse_abi::{CreateIn, FsOptions};
use fuse_backend_rs::api::filesystem::{Context, FileSystem};

use crate::fs::{FsConfig, RedirectFs};
use crate::memio::MemSource;
use crate::names::ROOT_INODE;
use crate::share::ShareSpec;

/// A redirecting share in a temporary directory (tag and volume `t`).
pub(crate) struct TestShare {
    _tmp: tempfile::TempDir,
    pub share: ShareSpec,
    pub guest: PathBuf,
    pub volume: PathBuf,
    pub control: PathBuf,
}

/// A running server on a [`TestShare`].
pub(crate) struct Guest {
    fs: RedirectFs,
    ctx: Context,
}

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

impl TestShare {
    /// A new share whose volume exists (a server served it once and stopped cleanly).
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let guest = tmp.path().join("g");
        std::fs::create_dir(&guest).unwrap();
        let share = ShareSpec::parse(&format!(
            "tag=t,dir={},store={}",
            guest.display(),
            tmp.path().join("s").display()
        ))
        .unwrap();
        let t = TestShare {
            volume: tmp.path().join("s/t"),
            control: tmp.path().join("s/.fsredirect/t"),
            guest,
            share,
            _tmp: tmp,
        };
        drop(t.serve());
        t
    }

    /// Starts a server (dropping it stops it cleanly).
    pub fn serve(&self) -> Guest {
        let fs = RedirectFs::new(&self.share, FsConfig::default()).unwrap();
        fs.init(FsOptions::empty()).unwrap();
        let mut ctx = Context::new();
        // SAFETY: geteuid/getegid have no preconditions.
        (ctx.uid, ctx.gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        Guest { fs, ctx }
    }

    /// Writes `data` to a new file at `path` through a server, making directories on the way.
    pub fn write(&self, path: &str, data: &[u8]) {
        self.serve().write(path, data);
    }
}

impl Guest {
    /// The inode of the directory `path` (made if missing).
    fn dir(&self, path: &Path) -> u64 {
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
        let (old_name, old_parent) = Self::split(old);
        let (new_name, new_parent) = Self::split(new);
        self.fs
            .rename(
                &self.ctx,
                self.dir(old_parent),
                &old_name,
                self.dir(new_parent),
                &new_name,
                0,
            )
            .unwrap();
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
