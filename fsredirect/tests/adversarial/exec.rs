//! Sends requests to a [`RedirectFs`] through the fuse-backend-rs `FileSystem` trait, as the
//! FUSE server would after decoding them: alone, or several at once from several threads.

use std::ffi::CString;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Barrier;

use fsredirect::memio::{MemSink, MemSource};
use fsredirect::treelock::TreeLockError;
use fsredirect::{FsConfig, FsError, RedirectFs, ShareSpec, StoreError};
use fuse_backend_rs::abi::fuse_abi::{CreateIn, FsOptions, SetattrValid};
use fuse_backend_rs::api::filesystem::{Context, FileSystem, GetxattrReply, ListxattrReply};

use super::ops::{Attr, Call, Fail, Outcome, Reply, Req, Time};

/// A share on temp directories and the server in front of it.
pub struct Server {
    /// The share (guest tree and store).
    pub share: ShareSpec,
    cfg: FsConfig,
    fs: Option<RedirectFs>,
    ctx: Context,
    _tmp: tempfile::TempDir,
}

/// Starts a server on `share`, waiting up to 2 s while its locks are still held. The
/// previous server's are released when it is dropped, yet once in about eight runs of this
/// test on 2026-12-03 a restart found its volume still locked (seed 0x7, not reproduced by
/// its replay; cause not established: one candidate is a process another trial forks at that
/// moment, mkfs, mount or setpriv, which holds copies of the descriptors until it execs). A
/// lock held past the 2 s is still a finding.
fn start_when_free(share: &ShareSpec, cfg: &FsConfig) -> Result<RedirectFs, FsError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match RedirectFs::new(share, cfg.clone()) {
            Err(
                FsError::Store(StoreError::Busy { .. }) | FsError::Tree(TreeLockError::Busy { .. }),
            ) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// Largest READ the driver sends in one request when it reads a whole file.
pub const READ_CHUNK: u32 = 128 * 1024;

fn cstr(b: &[u8]) -> Result<CString, Fail> {
    // A name with a NUL cannot travel in a FUSE request: the server never sees it.
    CString::new(b.to_vec()).map_err(|_| Fail::Errno(libc::EINVAL))
}

fn errno(e: std::io::Error) -> Fail {
    Fail::Errno(e.raw_os_error().unwrap_or(libc::EIO))
}

impl Server {
    /// A fresh share in a new directory under `base` (`policy` as in a share description, if
    /// any) served with `cfg`.
    pub fn new(base: &Path, cfg: FsConfig, policy: Option<&str>) -> std::io::Result<Self> {
        let tmp = tempfile::Builder::new()
            .prefix("fsr-adv")
            .tempdir_in(base)?;
        let guest = tmp.path().join("guest");
        std::fs::create_dir(&guest)?;
        let mut spec = format!(
            "tag=t,dir={},store={},volume=vol",
            guest.display(),
            tmp.path().join("store").display()
        );
        if let Some(p) = policy {
            spec.push_str(&format!(",policy={p}"));
        }
        let share = ShareSpec::parse(&spec).map_err(std::io::Error::other)?;
        let mut ctx = Context::new();
        // SAFETY: geteuid/getegid have no preconditions and cannot fail.
        ctx.uid = unsafe { libc::geteuid() };
        // SAFETY: as above.
        ctx.gid = unsafe { libc::getegid() };
        ctx.pid = std::process::id() as i32;
        let mut server = Server {
            share,
            cfg,
            fs: None,
            ctx,
            _tmp: tmp,
        };
        server.restart()?;
        Ok(server)
    }

    /// Stops the server (a clean stop) and starts a new one on the same share.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.fs = None;
        let fs = start_when_free(&self.share, &self.cfg).map_err(|e| {
            // The whole chain: the top error alone rarely says which file or call failed.
            let mut msg = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                msg.push_str(&format!(": {c}"));
                cause = c.source();
            }
            std::io::Error::other(msg)
        })?;
        fs.init(FsOptions::empty())?;
        self.fs = Some(fs);
        Ok(())
    }

    /// Stops the server for good (a clean stop).
    pub fn stop(&mut self) {
        self.fs = None;
    }

    fn fs(&self) -> &RedirectFs {
        self.fs.as_ref().expect("the server runs")
    }

    /// Sends one request; a panic in the file system becomes [`Fail::Panic`].
    pub fn call(&self, call: &Call) -> Outcome {
        catch_unwind(AssertUnwindSafe(|| self.call_inner(call))).unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(Fail::Panic(msg))
        })
    }

    /// Sends `calls` at once, one thread each; thread `i` spins `skew[i]` first.
    pub fn race(&self, calls: &[Call], skew: &[u32]) -> Vec<Outcome> {
        let barrier = Barrier::new(calls.len());
        let sink = AtomicUsize::new(0);
        std::thread::scope(|s| {
            let handles: Vec<_> = calls
                .iter()
                .zip(skew)
                .map(|(c, &spin)| {
                    let barrier = &barrier;
                    let sink = &sink;
                    s.spawn(move || {
                        barrier.wait();
                        let mut x = 0usize;
                        for i in 0..spin {
                            x = x.wrapping_add(i as usize);
                            std::hint::spin_loop();
                        }
                        sink.fetch_add(x, Ordering::Relaxed);
                        self.call(c)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    fn call_inner(&self, call: &Call) -> Outcome {
        let fs = self.fs();
        let ctx = &self.ctx;
        let entry =
            |e: fuse_backend_rs::api::filesystem::Entry| Reply::Entry(e.inode, Attr::of(&e.attr));
        use Req::*;
        match call {
            Lookup { parent, name } => fs.lookup(ctx, *parent, &cstr(name)?).map(entry),
            Forget { node, count } => {
                fs.forget(ctx, *node, *count);
                Ok(Reply::Unit)
            }
            BatchForget { items } => {
                fs.batch_forget(ctx, items.clone());
                Ok(Reply::Unit)
            }
            Getattr { node, handle } => fs
                .getattr(ctx, *node, *handle)
                .map(|(st, _)| Reply::Attr(Attr::of(&st))),
            Setattr {
                node,
                handle,
                size,
                mode,
                atime,
                mtime,
            } => {
                // SAFETY: stat64 is plain old data; all-zero is a valid value.
                let mut attr: libc::stat64 = unsafe { std::mem::zeroed() };
                let mut valid = SetattrValid::empty();
                if let Some(s) = size {
                    attr.st_size = *s as i64;
                    valid |= SetattrValid::SIZE;
                }
                if let Some(m) = mode {
                    attr.st_mode = *m;
                    valid |= SetattrValid::MODE;
                }
                match atime {
                    Some(Time::Now) => valid |= SetattrValid::ATIME | SetattrValid::ATIME_NOW,
                    Some(Time::At(s, ns)) => {
                        attr.st_atime = *s;
                        attr.st_atime_nsec = *ns;
                        valid |= SetattrValid::ATIME;
                    }
                    None => {}
                }
                match mtime {
                    Some(Time::Now) => valid |= SetattrValid::MTIME | SetattrValid::MTIME_NOW,
                    Some(Time::At(s, ns)) => {
                        attr.st_mtime = *s;
                        attr.st_mtime_nsec = *ns;
                        valid |= SetattrValid::MTIME;
                    }
                    None => {}
                }
                fs.setattr(ctx, *node, attr, *handle, valid)
                    .map(|(st, _)| Reply::Attr(Attr::of(&st)))
            }
            Mknod {
                parent,
                name,
                mode,
                rdev,
                umask,
            } => fs
                .mknod(ctx, *parent, &cstr(name)?, *mode, *rdev, *umask)
                .map(entry),
            Mkdir {
                parent,
                name,
                mode,
                umask,
            } => fs
                .mkdir(ctx, *parent, &cstr(name)?, *mode, *umask)
                .map(entry),
            Symlink {
                parent,
                name,
                target,
            } => fs
                .symlink(ctx, &cstr(target)?, *parent, &cstr(name)?)
                .map(entry),
            Readlink { node } => fs.readlink(ctx, *node).map(Reply::Link),
            Unlink { parent, name } => fs.unlink(ctx, *parent, &cstr(name)?).map(|_| Reply::Unit),
            Rmdir { parent, name } => fs.rmdir(ctx, *parent, &cstr(name)?).map(|_| Reply::Unit),
            Rename {
                olddir,
                oldname,
                newdir,
                newname,
                flags,
            } => fs
                .rename(
                    ctx,
                    *olddir,
                    &cstr(oldname)?,
                    *newdir,
                    &cstr(newname)?,
                    *flags,
                )
                .map(|_| Reply::Unit),
            Link {
                node,
                newparent,
                newname,
            } => fs.link(ctx, *node, *newparent, &cstr(newname)?).map(entry),
            Open { node, flags } => fs
                .open(ctx, *node, *flags, 0)
                .map(|(h, _, _)| Reply::Opened(h)),
            Create {
                parent,
                name,
                flags,
                mode,
                umask,
            } => {
                let args = CreateIn {
                    flags: *flags,
                    mode: *mode,
                    umask: *umask,
                    fuse_flags: 0,
                };
                fs.create(ctx, *parent, &cstr(name)?, args)
                    .map(|(e, h, _, _)| Reply::Created(e.inode, Attr::of(&e.attr), h))
            }
            Read {
                node,
                handle,
                offset,
                size,
            } => {
                let mut sink = MemSink::default();
                fs.read(ctx, *node, *handle, &mut sink, *size, *offset, None, 0)
                    .map(|_| Reply::Data(sink.into_bytes()))
            }
            Write {
                node,
                handle,
                offset,
                data,
                flags,
            } => {
                let mut src = MemSource::new(data.clone());
                fs.write(
                    ctx,
                    *node,
                    *handle,
                    &mut src,
                    data.len() as u32,
                    *offset,
                    None,
                    false,
                    *flags,
                    0,
                )
                .map(Reply::Written)
            }
            Flush { node, handle } => fs.flush(ctx, *node, *handle, 0).map(|_| Reply::Unit),
            Fsync {
                node,
                handle,
                datasync,
            } => fs
                .fsync(ctx, *node, *datasync, *handle)
                .map(|_| Reply::Unit),
            Fallocate {
                node,
                handle,
                mode,
                offset,
                len,
            } => fs
                .fallocate(ctx, *node, *handle, *mode, *offset, *len)
                .map(|_| Reply::Unit),
            Release { node, handle } => fs
                .release(ctx, *node, 0, *handle, false, false, None)
                .map(|_| Reply::Unit),
            Opendir { node } => fs.opendir(ctx, *node, 0).map(|(h, _)| Reply::Opened(h)),
            Readdir { node, handle } => {
                let mut list = Vec::new();
                let mut offset = 0;
                // A listing longer than this means the server loops.
                for _ in 0..1024 {
                    let mut last = None;
                    fs.readdir(ctx, *node, *handle, 4096, offset, &mut |e| {
                        list.push((e.name.to_vec(), e.type_));
                        last = Some(e.offset);
                        Ok(e.name.len() + 24)
                    })
                    .map_err(errno)?;
                    match last {
                        Some(o) => offset = o,
                        None => break,
                    }
                }
                Ok(Reply::Dir(list))
            }
            Releasedir { node, handle } => {
                fs.releasedir(ctx, *node, 0, *handle).map(|_| Reply::Unit)
            }
            Fsyncdir { node, handle } => {
                fs.fsyncdir(ctx, *node, false, *handle).map(|_| Reply::Unit)
            }
            Setxattr {
                node,
                name,
                value,
                flags,
            } => fs
                .setxattr(ctx, *node, &cstr(name)?, value, *flags)
                .map(|_| Reply::Unit),
            Getxattr { node, name, size } => {
                fs.getxattr(ctx, *node, &cstr(name)?, *size)
                    .map(|r| match r {
                        GetxattrReply::Value(v) => Reply::Value(v),
                        GetxattrReply::Count(n) => Reply::Size(n),
                    })
            }
            Listxattr { node, size } => fs.listxattr(ctx, *node, *size).map(|r| match r {
                ListxattrReply::Names(v) => Reply::Names(v),
                ListxattrReply::Count(n) => Reply::Size(n),
            }),
            Removexattr { node, name } => fs
                .removexattr(ctx, *node, &cstr(name)?)
                .map(|_| Reply::Unit),
            Lseek {
                node,
                handle,
                offset,
                whence,
            } => fs
                .lseek(ctx, *node, *handle, *offset, *whence)
                .map(Reply::Offset),
            Statfs { node } => fs.statfs(ctx, *node).map(|_| Reply::Unit),
            Access { node, mask } => fs.access(ctx, *node, *mask).map(|_| Reply::Unit),
        }
        .map_err(errno)
    }
}
