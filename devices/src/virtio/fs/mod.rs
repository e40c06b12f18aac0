//! The virtio-fs device (virtio 1.2 §5.11): FUSE over virtqueues, served by
//! fuse-backend-rs's `Server` over any `FileSystem` the caller supplies.

pub mod handler;
pub mod pool;
pub mod vhost_user;
pub mod worker;

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::api::filesystem::FileSystem;
use log::warn;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{
    read_config_bytes, ActivateError, ActivationContext, VirtioDevice, VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
};
use crate::seccomp::SeccompMode;
use pool::RequestPool;
pub use worker::WorkerConfinement;
use worker::{Command, QueueThread, Worker};

/// Longest tag the configuration space holds (virtio 1.2 §5.11.4).
pub const MAX_TAG_LEN: usize = 36;
/// Queue size of every queue.
pub const QUEUE_SIZE: u16 = 256;
/// Index of the high-priority queue.
pub const HIPRIO_QUEUE: usize = 0;
const VIRTIO_ID_FS: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_FS;

/// Errors in a virtio-fs device description, or in starting its workers.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FsDeviceError {
    /// A queue worker thread could not start (or could not install its seccomp filter).
    #[error("cannot start the queue workers of virtio-fs {tag}: {detail}")]
    Workers {
        /// The device's tag.
        tag: String,
        /// What failed.
        detail: String,
    },
    /// A request queue's thread pool could not start, or its size is out of range.
    #[error("cannot start the request pool of virtio-fs {tag}: {detail}")]
    Pool {
        /// The device's tag.
        tag: String,
        /// What failed.
        detail: String,
    },
    /// The tag is empty, too long or has a NUL byte.
    #[error("virtio-fs tag {0:?} is not usable: give 1 to 36 bytes without NUL")]
    BadTag(String),
    /// No request queue.
    #[error("a virtio-fs device needs at least one request queue")]
    NoRequestQueue,
}

/// The configuration space: the tag, NUL-padded, then the number of request queues.
pub fn config_space(
    tag: &str,
    request_queues: u32,
) -> Result<[u8; MAX_TAG_LEN + 4], FsDeviceError> {
    if tag.is_empty() || tag.len() > MAX_TAG_LEN || tag.contains('\0') {
        return Err(FsDeviceError::BadTag(tag.to_owned()));
    }
    if request_queues == 0 {
        return Err(FsDeviceError::NoRequestQueue);
    }
    let mut config = [0u8; MAX_TAG_LEN + 4];
    config[..tag.len()].copy_from_slice(tag.as_bytes());
    config[MAX_TAG_LEN..].copy_from_slice(&request_queues.to_le_bytes());
    Ok(config)
}

/// The name of queue `index`'s worker thread (its pool threads add a suffix).
fn queue_thread_name(tag: &str, index: usize) -> String {
    format!("fs-{tag}-q{index}")
}

/// The queue workers of one activation: how to stop them, and how to hear that they have.
struct Running {
    stop: EventFd,
    done: Receiver<()>,
    serving: usize,
}

impl Running {
    /// Tells every worker to stop and waits until each is parked again.
    fn stop(self, tag: &str) {
        let _ = self.stop.write(1);
        for _ in 0..self.serving {
            if self.done.recv().is_err() {
                warn!("virtio-fs {tag}: a worker thread ended while serving");
                break;
            }
        }
    }
}

/// Whether the device needs a reset: a worker sets it when the driver broke its
/// queue, and the device then reports NEEDS_RESET. Activation and reset clear it.
/// Clones share one flag, so the device and its workers see the same value.
#[derive(Debug, Clone, Default)]
pub struct NeedsReset(Arc<AtomicBool>);

impl NeedsReset {
    /// Marks the device as needing a reset.
    pub fn set(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether the device needs a reset.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Forgets an earlier need for a reset.
    pub fn clear(&self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// A virtio-fs device serving file system `F`: any fuse-backend-rs [`FileSystem`] (the VMM
/// gives it a redirecting `fsredirect::RedirectFs`).
///
/// ```
/// use std::sync::Arc;
/// use devices::virtio::fs::VirtioFs;
/// use devices::virtio::VirtioDevice;
/// use fuse_backend_rs::passthrough::{Config, PassthroughFs};
///
/// let tmp = tempfile::tempdir()?;
/// let config = Config {
///     root_dir: tmp.path().to_str().unwrap().to_owned(),
///     ..Default::default()
/// };
/// let fs: PassthroughFs<()> = PassthroughFs::new(config)?;
/// // Tag "data" (what the guest mounts), one request queue beside the high-priority one.
/// let device = VirtioFs::new("data", 1, Arc::new(fs))?;
/// assert_eq!(device.queue_max_sizes().len(), 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct VirtioFs<F: FileSystem + Send + Sync + 'static> {
    tag: String,
    config: [u8; MAX_TAG_LEN + 4],
    queue_sizes: Vec<u16>,
    fs: Arc<F>,
    server: Arc<handler::FuseSession<Arc<F>>>,
    needs_reset: NeedsReset,
    /// One parked or serving thread per queue, in queue order.
    threads: Vec<QueueThread<Arc<F>>>,
    /// The workers of the current activation, if any.
    running: Option<Running>,
    /// How long a queue looks for more requests after serving a batch.
    batch_poll: Duration,
    /// How the workers (and pool threads) confine themselves; under a seccomp filter, so is
    /// the thread that resets the device, a vCPU, which may not touch files.
    confinement: WorkerConfinement,
    /// Per queue (hiprio first, never pooled), the threads serving its requests side by
    /// side, if any.
    pools: Vec<Option<Arc<RequestPool>>>,
}

impl<F: FileSystem + Send + Sync + 'static> VirtioFs<F> {
    /// A device with tag `tag` and `request_queues` request queues, whose workers confine
    /// themselves as [`WorkerConfinement::default`] says: the `fs-worker` seccomp filter in
    /// mode kill (a call outside it ends the process), and no Landlock limit. Use
    /// [`VirtioFs::confined`] to choose.
    pub fn new(tag: &str, request_queues: u32, fs: Arc<F>) -> Result<Self, FsDeviceError> {
        Self::confined(tag, request_queues, fs, WorkerConfinement::default())
    }

    /// A device whose queue workers confine themselves as `confinement` says (a seccomp
    /// filter, Landlock) before they serve anything. Its worker threads start here, one per
    /// queue, so that the thread calling this (not a vCPU) is the one that starts threads.
    pub fn confined(
        tag: &str,
        request_queues: u32,
        fs: Arc<F>,
        confinement: WorkerConfinement,
    ) -> Result<Self, FsDeviceError> {
        let config = config_space(tag, request_queues)?;
        let queues = 1 + request_queues as usize;
        let threads = (0..queues)
            .map(|index| QueueThread::start(queue_thread_name(tag, index), confinement.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| FsDeviceError::Workers {
                tag: tag.to_owned(),
                detail: err.to_string(),
            })?;
        Ok(Self {
            tag: tag.to_owned(),
            config,
            queue_sizes: vec![QUEUE_SIZE; queues],
            server: Arc::new(handler::FuseSession::new(fs.clone())),
            fs,
            needs_reset: NeedsReset::default(),
            threads,
            running: None,
            batch_poll: handler::DEFAULT_BATCH_POLL,
            confinement,
            pools: Vec::new(),
        })
    }

    /// Gives each request queue a pool of `size` threads serving its requests side by side
    /// ([`RequestPool`]; 0: none, each queue's own thread serves them one at a time, the
    /// default; at most [`pool::MAX_POOL_SIZE`]). The threads start here, each confined as
    /// the queue workers are, so call this from the thread that builds the VM, not from a
    /// vCPU. A pool pays off where requests block for long (slow or network storage) and
    /// cores are spare; see [`RequestPool`] for what it cost where requests are quick.
    pub fn with_request_pool(mut self, size: usize) -> Result<Self, FsDeviceError> {
        let pool_error = |detail: String| FsDeviceError::Pool {
            tag: self.tag.clone(),
            detail,
        };
        let mut pools = vec![None];
        for index in HIPRIO_QUEUE + 1..self.queue_sizes.len() {
            let pool = match size {
                0 => None,
                _ => Some(Arc::new(
                    RequestPool::new(
                        &queue_thread_name(&self.tag, index),
                        size,
                        &self.confinement,
                    )
                    .map_err(pool_error)?,
                )),
            };
            pools.push(pool);
        }
        self.pools = pools;
        Ok(self)
    }

    /// Sets how long a queue that has just served several requests keeps looking for the
    /// driver's next ones before it asks to be kicked (default
    /// [`handler::DEFAULT_BATCH_POLL`]; zero: never). Polling spares a driver with several
    /// requests in flight a kick and a wake-up per batch, for up to this much CPU time per
    /// batch; turn it off where the device's threads share their cores with the vCPUs.
    pub fn with_batch_poll(mut self, batch_poll: Duration) -> Self {
        self.batch_poll = batch_poll;
        self
    }

    /// The tag the guest mounts.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Stops the workers, if any, and waits until they are parked; the device is then idle.
    fn stop_workers(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop(&self.tag);
        }
    }
}

impl<F: FileSystem + Send + Sync + 'static> VirtioDevice for VirtioFs<F> {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn features(&self) -> u64 {
        VIRTIO_RING_F_EVENT_IDX | VIRTIO_RING_F_INDIRECT_DESC
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, ctx: ActivationContext) -> Result<(), ActivateError> {
        self.stop_workers();
        // The hiprio queue and the first request queue are required.
        for required in [HIPRIO_QUEUE, HIPRIO_QUEUE + 1] {
            if !ctx.queues.iter().any(|(index, _)| *index == required) {
                return Err(ActivateError::MissingQueue(required));
            }
        }
        self.needs_reset.clear();
        let stop = EventFd::new(EFD_NONBLOCK).map_err(ActivateError::Worker)?;
        let (done, parked) = mpsc::channel();
        let mut running = Running {
            stop,
            done: parked,
            serving: 0,
        };
        for (index, queue) in ctx.queues {
            let started = match (self.threads.get(index), running.stop.try_clone()) {
                (Some(thread), Ok(worker_stop)) => {
                    let worker = Worker {
                        index,
                        queue,
                        mem: ctx.mem.clone(),
                        server: self.server.clone(),
                        interrupt: ctx.interrupt.clone(),
                        stop: worker_stop,
                        needs_reset: self.needs_reset.clone(),
                        batch_poll: self.batch_poll,
                        pool: self.pools.get(index).cloned().flatten(),
                    };
                    let done = done.clone();
                    thread
                        .send(Command::Serve { worker, done })
                        .then_some(())
                        .ok_or_else(|| std::io::Error::other("its worker thread has ended"))
                }
                (None, _) => Err(std::io::Error::other(format!(
                    "no worker for queue {index}"
                ))),
                (_, Err(err)) => Err(err),
            };
            if let Err(err) = started {
                // The device stays idle; the workers already serving park again.
                running.stop(&self.tag);
                return Err(ActivateError::Worker(err));
            }
            running.serving += 1;
        }
        self.running = Some(running);
        Ok(())
    }

    fn reset(&mut self) {
        self.stop_workers();
        self.needs_reset.clear();
        // The guest's FUSE session ends with the device: it will INIT again, and whatever
        // it held (nodes, handles, descriptors) is given back now.
        if self.server.end() {
            self.destroy_on_worker();
        }
    }

    fn needs_reset(&self) -> bool {
        self.needs_reset.is_set()
    }
}

impl<F: FileSystem + Send + Sync + 'static> VirtioFs<F> {
    /// Ends the file system's session on the hiprio worker's thread, under its filter (the
    /// caller, a vCPU thread, may not touch files), and waits for it.
    fn destroy_on_worker(&self) {
        let fs = self.fs.clone();
        let (done, finished) = mpsc::channel();
        let call = Box::new(move || fs.destroy());
        let sent = self.threads[HIPRIO_QUEUE].send(Command::Call { call, done });
        if sent && finished.recv().is_ok() {
            return;
        }
        if self.confinement.seccomp != SeccompMode::None {
            // This thread's filter forbids the file calls: the next start recovers instead.
            warn!(
                "virtio-fs {}: the worker that ends the session is gone; the session is left to \
                 the next start's recovery",
                self.tag
            );
        } else {
            warn!(
                "virtio-fs {}: the worker that ends the session is gone; ending it here",
                self.tag
            );
            self.fs.destroy();
        }
    }
}

impl<F: FileSystem + Send + Sync + 'static> Drop for VirtioFs<F> {
    fn drop(&mut self) {
        self.stop_workers();
    }
}
