//! Serving a share on the host through /dev/fuse, so host users and tests see exactly what a
//! guest would see.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{FuseChannel, FuseSession};

use crate::fs::{FsConfig, FsError, RedirectFs};
use crate::share::ShareSpec;

/// Errors mounting or serving.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The file system could not be built.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// The kernel mount failed (is /dev/fuse there, are we root, is the mount point a directory?).
    #[error("cannot mount on {mountpoint}")]
    Mount {
        /// The mount point.
        mountpoint: PathBuf,
        /// What fuse-backend-rs said.
        #[source]
        source: fuse_backend_rs::transport::Error,
    },
    /// A worker thread could not be started.
    #[error("cannot start FUSE worker thread")]
    Thread(#[source] std::io::Error),
}

/// A `Result` with a [`MountError`].
pub type Result<T> = std::result::Result<T, MountError>;

/// Options of a host mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Worker threads reading /dev/fuse.
    pub threads: usize,
    /// File system tunables.
    pub fs: FsConfig,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            threads: 2,
            fs: FsConfig::default(),
        }
    }
}

/// A mounted share being served by worker threads.
pub struct Mount {
    session: Arc<Mutex<FuseSession>>,
    stopping: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

/// Unmounts a [`Mount`] from another thread (a signal handler thread, for instance).
#[derive(Clone)]
pub struct Unmounter {
    session: Arc<Mutex<FuseSession>>,
    stopping: Arc<AtomicBool>,
}

impl Unmounter {
    /// Unmounts; the workers then see the device close and return.
    pub fn unmount(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = session.umount() {
            log::warn!("unmount of {}: {e}", session.mountpoint().display());
        }
        let _ = session.wake();
    }
}

impl Mount {
    /// Builds the file system for `share`, mounts it on `mountpoint` and starts serving.
    pub fn start(share: &ShareSpec, mountpoint: &Path, opts: &MountOptions) -> Result<Self> {
        let fs = RedirectFs::new(share, opts.fs.clone())?;
        let server = Arc::new(Server::new(Arc::new(fs)));
        let mount_err = |source| MountError::Mount {
            mountpoint: mountpoint.to_path_buf(),
            source,
        };
        let mut session =
            FuseSession::new(mountpoint, &share.tag, "fsredirect", false).map_err(mount_err)?;
        session.mount().map_err(mount_err)?;
        let mut channels = Vec::new();
        for _ in 0..opts.threads.max(1) {
            channels.push(session.new_channel().map_err(mount_err)?);
        }
        let session = Arc::new(Mutex::new(session));
        let stopping = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for (i, channel) in channels.into_iter().enumerate() {
            let server = server.clone();
            let stopping = stopping.clone();
            let worker = std::thread::Builder::new()
                .name(format!("fuse-{i}"))
                .spawn(move || serve(channel, &server, &stopping))
                .map_err(MountError::Thread)?;
            workers.push(worker);
        }
        Ok(Mount {
            session,
            stopping,
            workers,
        })
    }

    /// A handle that unmounts this mount from any thread.
    pub fn unmounter(&self) -> Unmounter {
        Unmounter {
            session: self.session.clone(),
            stopping: self.stopping.clone(),
        }
    }

    /// Waits until the mount goes away (unmounted by [`Unmounter`] or by `umount`).
    pub fn wait(self) {
        for worker in self.workers {
            let _ = worker.join();
        }
    }
}

fn serve(mut channel: FuseChannel, server: &Server<Arc<RedirectFs>>, stopping: &AtomicBool) {
    loop {
        match channel.get_request() {
            Ok(Some((reader, writer))) => {
                if let Err(e) = server.handle_message(reader, writer.into(), None, None) {
                    // A malformed request or a vanished requester: answer the next one.
                    log::debug!("FUSE request failed: {e}");
                }
            }
            Ok(None) => return,
            // Unmounting closes the device under the workers: that error is the normal end.
            Err(_) if stopping.load(Ordering::SeqCst) => return,
            Err(e) => {
                log::error!("FUSE channel failed: {e}");
                return;
            }
        }
    }
}
