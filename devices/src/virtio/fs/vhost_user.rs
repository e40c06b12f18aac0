//! The virtio-fs device as a vhost-user back-end: a daemon that another VMM
//! (QEMU's `vhost-user-fs-device`, for one) connects to over a Unix socket.
//!
//! The front-end owns the transport and hands us the queues and guest memory
//! (vhost-user protocol, "Ring states"); the queue work itself is the same
//! [`process_queue`] the in-VMM device runs. Each queue (hiprio plus the
//! request queues) gets its own worker thread, so requests on different
//! queues are served in parallel.
//!
//! ```no_run
//! use std::sync::Arc;
//! use devices::virtio::fs::vhost_user::{DaemonConfig, VhostUserFsDaemon};
//! use fuse_backend_rs::passthrough::{Config, PassthroughFs};
//! use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
//!
//! // Any fuse-backend-rs FileSystem; the hypervisor serves fsredirect's RedirectFs.
//! let fs = PassthroughFs::<()>::new(Config {
//!     root_dir: "/srv/data".into(),
//!     do_import: true,
//!     ..Default::default()
//! })?;
//! let config = DaemonConfig::new("/run/fs-data.sock", "data");
//! let mut daemon = VhostUserFsDaemon::bind(config, Arc::new(fs))?;
//! let stop = EventFd::new(EFD_NONBLOCK)?; // write to it to stop the daemon
//! daemon.serve(&stop, |event| println!("{event}"))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::cell::Cell;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, RwLock};
use std::time::Duration;

use fuse_backend_rs::api::filesystem::FileSystem;
use log::{debug, info, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringRwLock, VringT};
use vm_memory::{
    GuestAddressSpace, GuestMemory, GuestMemoryAtomic, GuestMemoryMmap, GuestMemoryRegion,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::handler::{panic_text, process_queue, FuseSession, DEFAULT_BATCH_POLL};
use super::pool::{process_queue_pooled, RequestPool, MAX_POOL_SIZE};
use super::WorkerConfinement;
use super::{config_space, FsDeviceError, MAX_TAG_LEN};
use crate::seccomp::SeccompMode;
use crate::virtio::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use crate::warn_limited;

/// Largest queue size offered to the front-end (QEMU's `queue-size=` may go up to this).
pub const MAX_QUEUE_SIZE: usize = 1024;
/// Most request queues: each queue is one bit of a 64-bit worker mask, and
/// queue 0 is the hiprio queue.
pub const MAX_REQUEST_QUEUES: usize = 63;

/// Guest memory as the front-end shares it with us.
type Mem = GuestMemoryAtomic<GuestMemoryMmap<()>>;

/// Errors of the vhost-user-fs daemon.
#[derive(Debug, thiserror::Error)]
pub enum VhostUserFsError {
    /// A back-end is already listening on the socket path.
    #[error(
        "socket {0} is in use: a back-end is listening there; stop it or choose another socket path"
    )]
    SocketInUse(PathBuf),
    /// Something other than a socket is at the socket path.
    #[error("socket path {0} exists and is not a socket; remove it or choose another socket path")]
    NotASocket(PathBuf),
    /// The socket cannot be created.
    #[error(
        "cannot create the vhost-user socket {path}: check that its directory exists and is writable"
    )]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// What the host said.
        #[source]
        source: io::Error,
    },
    /// The device description is not usable (tag, queue count).
    #[error(transparent)]
    Device(#[from] FsDeviceError),
    /// More request queues than the back-end serves.
    #[error("{0} request queues asked for; the back-end serves 1 to {MAX_REQUEST_QUEUES}")]
    TooManyQueues(usize),
    /// A host resource (eventfd, thread, poll) failed.
    #[error("cannot {what}")]
    Host {
        /// What we were doing.
        what: &'static str,
        /// What the host said.
        #[source]
        source: io::Error,
    },
    /// A request queue's thread pool could not start.
    #[error("cannot start the request threads: {0}")]
    Pool(String),
    /// vhost-user-backend could not set up or run the daemon.
    #[error("the vhost-user daemon failed to {what}: {detail}")]
    Daemon {
        /// What it was doing.
        what: &'static str,
        /// vhost-user-backend's description (its error type is not `std::error::Error`).
        detail: String,
    },
}

/// A `Result` with a [`VhostUserFsError`].
pub type Result<T> = std::result::Result<T, VhostUserFsError>;

fn host(what: &'static str) -> impl FnOnce(io::Error) -> VhostUserFsError {
    move |source| VhostUserFsError::Host { what, source }
}

/// The virtio-fs back-end: what vhost-user-backend's worker threads call.
pub struct VhostUserFsBackend<F: FileSystem + Send + Sync + 'static> {
    server: Arc<FuseSession<Arc<F>>>,
    config: [u8; MAX_TAG_LEN + 4],
    num_queues: usize,
    mem: RwLock<Mem>,
    /// One exit event per worker thread (one thread per queue).
    exits: Vec<(EventConsumer, EventNotifier)>,
    /// Written once, when the front-end sends its first message.
    greeting: Option<EventFd>,
    greeted: AtomicBool,
    /// How each queue worker confines itself before serving its first kick.
    confinement: WorkerConfinement,
    /// How long a queue looks for more requests after serving a batch.
    batch_poll: Duration,
    /// Per queue (hiprio first, never pooled), the threads serving its requests side by
    /// side, if it has any.
    pools: Vec<Option<RequestPool>>,
}

thread_local! {
    /// Whether this queue worker thread has confined itself.
    static WORKER_CONFINED: Cell<bool> = const { Cell::new(false) };
}

impl<F: FileSystem + Send + Sync + 'static> VhostUserFsBackend<F> {
    /// A back-end serving `server` on the hiprio queue and `request_queues`
    /// request queues, with `tag` in its configuration space.
    pub fn new(
        server: Arc<FuseSession<Arc<F>>>,
        tag: &str,
        request_queues: usize,
        mem: Mem,
    ) -> Result<Self> {
        if request_queues > MAX_REQUEST_QUEUES {
            return Err(VhostUserFsError::TooManyQueues(request_queues));
        }
        // Bounded by MAX_REQUEST_QUEUES just above.
        let config = config_space(tag, request_queues as u32)?;
        let num_queues = 1 + request_queues;
        let exits = (0..num_queues)
            .map(|_| new_event_consumer_and_notifier(EventFlag::NONBLOCK))
            .collect::<io::Result<Vec<_>>>()
            .map_err(host("create the worker exit events"))?;
        Ok(Self {
            server,
            config,
            num_queues,
            mem: RwLock::new(mem),
            exits,
            greeting: None,
            greeted: AtomicBool::new(false),
            confinement: WorkerConfinement::default(),
            batch_poll: DEFAULT_BATCH_POLL,
            pools: Vec::new(),
        })
    }

    /// Gives each request queue a pool of `size` threads serving its requests side by side
    /// ([`RequestPool`]; 0: none, each queue's own thread serves them one at a time). The
    /// threads start now, confined as set by [`VhostUserFsBackend::confined`], which must
    /// come first.
    pub fn with_request_pool(mut self, size: usize) -> Result<Self> {
        self.pools.clear();
        if size == 0 {
            return Ok(self);
        }
        self.pools.push(None);
        for queue in 1..self.num_queues {
            let name = format!("vufs-q{queue}");
            let pool =
                RequestPool::new(&name, size, &self.confinement).map_err(VhostUserFsError::Pool)?;
            self.pools.push(Some(pool));
        }
        Ok(self)
    }

    /// Sets how long a queue that has just served several requests keeps looking for the
    /// front-end's next ones before it asks to be kicked (default [`DEFAULT_BATCH_POLL`];
    /// zero: never).
    pub fn with_batch_poll(mut self, batch_poll: Duration) -> Self {
        self.batch_poll = batch_poll;
        self
    }

    /// Makes each queue worker (a thread vhost-user-backend starts) confine itself as
    /// `confinement` says before it serves its first kick (default: not at all).
    pub fn confined(mut self, confinement: WorkerConfinement) -> Self {
        self.confinement = confinement;
        self
    }

    /// Confines the calling queue worker, once per thread.
    fn confine_worker(&self) -> io::Result<()> {
        if WORKER_CONFINED.get() {
            return Ok(());
        }
        self.confinement.apply().map_err(io::Error::other)?;
        WORKER_CONFINED.set(true);
        Ok(())
    }

    /// Makes the back-end write to `greeting` when the front-end sends its
    /// first message (GET_FEATURES opens every vhost-user session), which
    /// tells a front-end from a mere connect-and-close probe.
    pub fn notify_first_message(mut self, greeting: EventFd) -> Self {
        self.greeting = Some(greeting);
        self
    }

    fn memory(&self) -> Mem {
        // Replaced whole under the lock; a panic elsewhere cannot leave it half-written.
        self.mem.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl<F: FileSystem + Send + Sync + 'static> VhostUserBackend for VhostUserFsBackend<F> {
    type Bitmap = ();
    type Vring = VringRwLock<Mem>;

    fn num_queues(&self) -> usize {
        self.num_queues
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        if !self.greeted.swap(true, Ordering::SeqCst) {
            if let Some(greeting) = &self.greeting {
                let _ = greeting.write(1);
            }
        }
        VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_INDIRECT_DESC
            | VIRTIO_RING_F_EVENT_IDX
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn acked_features(&self, features: u64) {
        debug!("vhost-user-fs: front-end acked features {features:#x}");
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        // CONFIG is optional: QEMU takes the tag from its own `tag=` option,
        // other front-ends may ask us for it.
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }

    fn set_event_idx(&self, enabled: bool) {
        // vhost-user-backend sets it on every queue; process_queue follows the queue's flag.
        debug!(
            "vhost-user-fs: EVENT_IDX {}",
            if enabled { "on" } else { "off" }
        );
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let start = offset as usize;
        let end = start.saturating_add(size as usize);
        // Out of range: an empty reply, which the vhost crate turns into a failure.
        self.config
            .get(start..end)
            .map(<[u8]>::to_vec)
            .unwrap_or_default()
    }

    fn update_memory(&self, mem: Mem) -> io::Result<()> {
        if let Err(err) = check_backing(&mem.memory()) {
            // vhost-user-backend has already installed the regions in the memory its vrings
            // share with us: leave none rather than one that faults when read.
            if let Ok(guard) = mem.lock() {
                guard.replace(GuestMemoryMmap::new());
            }
            *self.mem.write().unwrap_or_else(|p| p.into_inner()) = mem;
            return Err(err);
        }
        if let Some(why) = unshared_memory(&mem.memory()) {
            log::error!("vhost-user-fs: {why}");
            return Err(io::Error::other(why));
        }
        *self.mem.write().unwrap_or_else(|p| p.into_inner()) = mem;
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        // One worker thread per queue; num_queues <= 64 (MAX_REQUEST_QUEUES).
        (0..self.num_queues).map(|queue| 1u64 << queue).collect()
    }

    fn exit_event(&self, thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        let (consumer, notifier) = self.exits.get(thread_index)?;
        match (consumer.try_clone(), notifier.try_clone()) {
            (Ok(consumer), Ok(notifier)) => Some((consumer, notifier)),
            (Err(err), _) | (_, Err(err)) => {
                warn!("vhost-user-fs: cannot clone the exit event of worker {thread_index}: {err}");
                None
            }
        }
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Self::Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        // With one queue per thread, the event is the thread's only vring.
        let Some(vring) = vrings.get(usize::from(device_event)) else {
            warn_limited!("vhost-user-fs: event {device_event} for no queue on worker {thread_id}");
            return Ok(());
        };
        if evset != EventSet::IN {
            warn_limited!("vhost-user-fs: queue {thread_id}: unexpected kick events {evset:?}");
            return Ok(());
        }
        if let Err(err) = self.confine_worker() {
            // Serving without the filter asked for is not an option: the queue stays idle.
            log::error!("vhost-user-fs: queue {thread_id} is not served: {err}");
            return Err(err);
        }
        let mem = self.memory().memory();
        let mut state = vring.get_mut();
        // The call eventfd, written between batches while the queue is borrowed. It stays
        // open while `state` is held: the front-end's SET_VRING_CALL replaces it under
        // the same lock.
        let call = state.get_call().as_ref().map(|c| c.as_raw_fd());
        let mut signal = || {
            if let Some(fd) = call {
                if let Err(err) = signal_call(fd) {
                    warn_limited!(
                        "vhost-user-fs: queue {thread_id}: cannot signal the front-end: {err}"
                    );
                }
            }
        };
        // A panic is a bug, never an answer to a guest: the request being served is dropped
        // and the rest of the queue served. Each pass takes at least the chain that
        // panicked, so a queue's size in passes serves it all; past that, the next kick.
        for _ in 0..=virtio_queue::QueueT::size(state.get_queue()) {
            let pool = self
                .pools
                .get(usize::from(device_event))
                .and_then(Option::as_ref);
            let served = catch_unwind(AssertUnwindSafe(|| {
                let queue = state.get_queue_mut();
                match pool {
                    Some(pool) => process_queue_pooled(
                        &self.server,
                        &mem,
                        queue,
                        self.batch_poll,
                        &mut signal,
                        pool,
                    ),
                    None => process_queue(&self.server, &*mem, queue, self.batch_poll, &mut signal),
                }
            }));
            match served {
                Ok(Ok(())) => {}
                // vhost-user has no NEEDS_RESET for the back-end to raise: the
                // queue stays unserved until the driver fixes or resets it; each
                // kick costs one bounded check.
                Ok(Err(err)) => {
                    warn_limited!("vhost-user-fs: queue {thread_id}: {err}; ignoring it")
                }
                Err(panic) => {
                    log::error!(
                        "vhost-user-fs: queue {thread_id}: serving a request panicked ({}), a \
                         bug to report; that request is dropped",
                        panic_text(&*panic)
                    );
                    continue;
                }
            }
            break;
        }
        Ok(())
    }
}

/// Adds one to the call eventfd `fd`, as `EventNotifier::notify` does.
fn signal_call(fd: RawFd) -> io::Result<()> {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a live local buffer to a descriptor the caller keeps open.
    let n = unsafe { libc::write(fd, one.as_ptr().cast(), one.len()) };
    match n {
        8 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Checks that each region of guest memory the front-end shared lies inside the file it
/// maps: a mapping is not refused for running past the end of its file, but every access
/// past the end then raises SIGBUS, which would end the daemon at the first ring access.
fn check_backing(mem: &GuestMemoryMmap<()>) -> io::Result<()> {
    for region in mem.iter() {
        let Some(backing) = region.file_offset() else {
            continue;
        };
        let meta = backing.file().metadata()?;
        if !meta.is_file() {
            continue;
        }
        let end = backing.start().checked_add(region.len());
        if end.is_none_or(|end| end > meta.len()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "memory region at guest address {:#x} maps {:#x} bytes at offset {:#x} of a \
                     {:#x}-byte file",
                    region.start_addr().0,
                    region.len(),
                    backing.start(),
                    meta.len()
                ),
            ));
        }
    }
    Ok(())
}

/// What the daemon is told to do.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// The Unix socket the front-end connects to.
    pub socket: PathBuf,
    /// The tag (for the configuration space, if the front-end asks, and logs).
    pub tag: String,
    /// Number of request queues (QEMU's `num-request-queues=`, default 1).
    pub request_queues: usize,
    /// What the queue workers' seccomp filter does with a call it does not allow
    /// (default: end the process). Only the workers are filtered: the daemon's other
    /// threads run on, or are started from, the caller's thread.
    pub seccomp: SeccompMode,
    /// The only directories whose files the queue workers may reach (Landlock, where the
    /// kernel has it): the share's guest tree and store. Empty: no such limit.
    pub beneath: Vec<PathBuf>,
    /// How long a queue that has just served several requests keeps looking for the
    /// front-end's next ones before it asks to be kicked ([`DEFAULT_BATCH_POLL`]; zero:
    /// never).
    pub batch_poll: Duration,
    /// Threads serving each request queue's requests side by side (0 to
    /// [`MAX_POOL_SIZE`]; 0, the default: the queue's own thread serves them one at a
    /// time). See [`RequestPool`] for when a pool pays off.
    pub request_pool: usize,
}

impl DaemonConfig {
    /// One request queue, listening on `socket`, workers filtered in kill mode.
    pub fn new(socket: impl Into<PathBuf>, tag: &str) -> Self {
        Self {
            socket: socket.into(),
            tag: tag.to_owned(),
            request_queues: 1,
            seccomp: SeccompMode::Kill,
            beneath: Vec::new(),
            batch_poll: DEFAULT_BATCH_POLL,
            request_pool: 0,
        }
    }
}

/// Progress of a daemon, for the caller to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaemonEvent {
    /// A front-end connected.
    Connected,
    /// The front-end disconnected (or broke the protocol, with the reason).
    Disconnected(Option<String>),
    /// The stop event fired.
    Stopped,
}

impl fmt::Display for DaemonEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DaemonEvent::Connected => write!(f, "front-end connected"),
            DaemonEvent::Disconnected(None) => write!(f, "front-end disconnected"),
            DaemonEvent::Disconnected(Some(why)) => {
                write!(f, "front-end disconnected after a protocol error: {why}")
            }
            DaemonEvent::Stopped => write!(f, "stopped"),
        }
    }
}

/// How [`VhostUserFsDaemon::serve`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServeEnd {
    /// The front-end went away.
    Disconnected,
    /// The stop event fired.
    Stopped,
}

/// How one accepted connection ended.
enum Connection {
    /// Closed without a message: not a front-end.
    Probe,
    /// A front-end's session ended, or the daemon was stopped.
    Ended(ServeEnd),
}

/// A vhost-user-fs daemon listening on its socket.
///
/// It serves one front-end at a time (one server per volume); the socket
/// file is removed when the daemon is dropped.
pub struct VhostUserFsDaemon<F: FileSystem + Send + Sync + 'static> {
    config: DaemonConfig,
    listener: Listener,
    fs: Arc<F>,
    server: Arc<FuseSession<Arc<F>>>,
}

impl<F: FileSystem + Send + Sync + 'static> VhostUserFsDaemon<F> {
    /// Creates the socket and listens on it.
    ///
    /// A socket file nobody listens on (left by a killed daemon) is replaced;
    /// a live one, or anything that is not a socket, is an error.
    pub fn bind(config: DaemonConfig, fs: Arc<F>) -> Result<Self> {
        let listener = Self::listen(&config)?;
        Ok(Self::with_listener(config, listener, fs))
    }

    /// Checks `config` and listens on its socket (a stale socket file is replaced): the
    /// first half of [`Self::bind`], for a caller that serves from another process or
    /// sandbox than the one that binds.
    pub fn listen(config: &DaemonConfig) -> Result<UnixListener> {
        if config.request_queues > MAX_REQUEST_QUEUES {
            return Err(VhostUserFsError::TooManyQueues(config.request_queues));
        }
        if config.request_pool > MAX_POOL_SIZE {
            return Err(VhostUserFsError::Pool(format!(
                "a pool of {} threads per request queue asked for; at most {MAX_POOL_SIZE}",
                config.request_pool
            )));
        }
        config_space(&config.tag, config.request_queues as u32)?;
        remove_stale_socket(&config.socket)?;
        let listener =
            UnixListener::bind(&config.socket).map_err(|source| VhostUserFsError::Bind {
                path: config.socket.clone(),
                source,
            })?;
        info!(
            "vhost-user-fs {}: listening on {}",
            config.tag,
            config.socket.display()
        );
        Ok(listener)
    }

    /// A daemon serving `fs` on `listener`, made by [`Self::listen`] from the same `config`.
    pub fn with_listener(config: DaemonConfig, listener: UnixListener, fs: Arc<F>) -> Self {
        Self {
            config,
            listener: Listener::from(listener),
            server: Arc::new(FuseSession::new(fs.clone())),
            fs,
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.config.socket
    }

    /// Waits for a front-end and serves it until it disconnects or `stop`
    /// becomes readable.
    ///
    /// A connection closed before sending any message (someone checking
    /// whether the socket is alive) is not a front-end: the daemon keeps
    /// waiting. On a stop, the queue workers end at once; the thread reading
    /// the socket ends when the front-end closes it (or the process exits).
    /// After a disconnect the file system forgets the front-end's inodes and
    /// handles (as on FUSE DESTROY), so the next front-end starts afresh.
    pub fn serve(
        &mut self,
        stop: &EventFd,
        mut on_event: impl FnMut(&DaemonEvent),
    ) -> Result<ServeEnd> {
        loop {
            match self.serve_connection(stop, &mut on_event)? {
                Connection::Probe => {
                    debug!("vhost-user-fs {}: a connection closed without a message (a probe); still waiting", self.config.tag);
                }
                Connection::Ended(end) => return Ok(end),
            }
        }
    }

    fn serve_connection(
        &mut self,
        stop: &EventFd,
        on_event: &mut impl FnMut(&DaemonEvent),
    ) -> Result<Connection> {
        if wait_any(&[stop.as_raw_fd(), self.listener.as_raw_fd()])? == 0 {
            on_event(&DaemonEvent::Stopped);
            return Ok(Connection::Ended(ServeEnd::Stopped));
        }
        let greeting = EventFd::new(EFD_NONBLOCK).map_err(host("create an eventfd"))?;
        let mem = Mem::new(GuestMemoryMmap::new());
        let backend = VhostUserFsBackend::new(
            self.server.clone(),
            &self.config.tag,
            self.config.request_queues,
            mem.clone(),
        )?
        .notify_first_message(greeting.try_clone().map_err(host("clone an eventfd"))?)
        .confined(WorkerConfinement {
            seccomp: self.config.seccomp,
            beneath: self.config.beneath.clone(),
        })
        .with_batch_poll(self.config.batch_poll)
        .with_request_pool(self.config.request_pool)?;
        let mut daemon = VhostUserDaemon::new(
            format!("vhost-user-fs-{}", self.config.tag),
            Arc::new(backend),
            mem,
        )
        .map_err(|e| VhostUserFsError::Daemon {
            what: "start its queue workers",
            detail: e.to_string(),
        })?;
        let workers = daemon.get_epoll_handlers();
        // The listener is readable, so this accept does not block (a
        // connection aborted meanwhile makes it wait for the next one).
        daemon
            .start(&mut self.listener)
            .map_err(|e| VhostUserFsError::Daemon {
                what: "accept a front-end",
                detail: e.to_string(),
            })?;

        // vhost-user-backend only offers a blocking wait for the connection
        // thread: wait in a helper thread that reports through an eventfd.
        let done = EventFd::new(EFD_NONBLOCK).map_err(host("create an eventfd"))?;
        let done_writer = done.try_clone().map_err(host("clone an eventfd"))?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("vhost-user-fs-{}-wait", self.config.tag))
            .spawn(move || {
                let reason = disconnect_reason(daemon.wait());
                // Dropping the daemon stops and joins the queue workers, so
                // no request is in flight when the caller hears of the end.
                drop(daemon);
                let _ = tx.send(reason);
                let _ = done_writer.write(1);
            })
            .map_err(host("start the connection watcher thread"))?;

        let mut greeted = false;
        loop {
            let fds = [stop.as_raw_fd(), done.as_raw_fd(), greeting.as_raw_fd()];
            let ready = if greeted {
                wait_any(&fds[..2])?
            } else {
                wait_any(&fds)?
            };
            match ready {
                0 => {
                    for worker in &workers {
                        worker.send_exit_event();
                    }
                    on_event(&DaemonEvent::Stopped);
                    return Ok(Connection::Ended(ServeEnd::Stopped));
                }
                1 => break,
                _ => {
                    greeted = true;
                    on_event(&DaemonEvent::Connected);
                }
            }
        }
        let why = rx
            .recv()
            .unwrap_or_else(|_| Some("the connection thread panicked".to_owned()));
        // A short session can end before the wait above saw its first message: both
        // eventfds are then ready and `done` comes first. The greeting still counts.
        if !greeted && greeting.read().is_ok() {
            greeted = true;
            on_event(&DaemonEvent::Connected);
        }
        if !greeted {
            if why.is_none() {
                return Ok(Connection::Probe);
            }
            // It spoke, but nothing we understood: still a front-end.
            on_event(&DaemonEvent::Connected);
        }
        // The guest's FUSE session is over: drop its inodes and handles (a DESTROY may have
        // done so already), and wait for the next front-end's INIT.
        if self.server.end() {
            self.fs.destroy();
        }
        on_event(&DaemonEvent::Disconnected(why));
        Ok(Connection::Ended(ServeEnd::Disconnected))
    }

    /// Serves front-ends one after another until `stop` fires; with
    /// `accept_again` false, only the first one.
    pub fn run(
        &mut self,
        stop: &EventFd,
        accept_again: bool,
        mut on_event: impl FnMut(&DaemonEvent),
    ) -> Result<ServeEnd> {
        loop {
            let end = self.serve(stop, &mut on_event)?;
            if end == ServeEnd::Stopped || !accept_again {
                return Ok(end);
            }
        }
    }
}

impl<F: FileSystem + Send + Sync + 'static> Drop for VhostUserFsDaemon<F> {
    fn drop(&mut self) {
        // We made the socket; a front-end must not find a dead one.
        let _ = std::fs::remove_file(&self.config.socket);
    }
}

/// Guest memory smaller than this is not judged by [`unshared_memory`]: a front-end may hand
/// over its regions one at a time, and the first ones (low memory) may hold nothing yet.
const JUDGED_MEMORY: u64 = 16 << 20;

/// What to tell the user when the front-end's guest memory cannot be what its guest uses:
/// every byte its memory files hold is zero, although the guest is running (its kernel is in
/// memory before any virtio device starts). A front-end that maps its memory privately
/// (QEMU's memory backend without `share=on`) passes such files, whose pages only ever come
/// from its reads: this back-end would never see a request, and the guest would hang in its
/// first file operation.
fn unshared_memory(mem: &GuestMemoryMmap<()>) -> Option<String> {
    use vm_memory::{GuestMemory, GuestMemoryRegion};
    let total: u64 = mem.iter().map(|r| r.len()).sum();
    if total < JUDGED_MEMORY {
        return None;
    }
    for region in mem.iter() {
        let file = region.file_offset()?;
        match first_nonzero(file.file(), file.start(), region.len()) {
            Ok(None) => {}
            // Data, or a file we cannot read: assume shared.
            Ok(Some(_)) | Err(_) => return None,
        }
    }
    Some(
        "the front-end's guest memory is not shared with this back-end (its memory files hold \
         only zeros although the guest is running), so no request would ever arrive: start \
         QEMU with a shared memory backend, e.g. -object memory-backend-memfd,id=mem,size=<RAM \
         size>,share=on -numa node,memdev=mem"
            .to_string(),
    )
}

/// The offset of the first non-zero byte of `file` in `start..start + len`, reading only
/// the parts that hold data (SEEK_DATA / SEEK_HOLE), so holes are never filled in.
fn first_nonzero(file: &std::fs::File, start: u64, len: u64) -> io::Result<Option<u64>> {
    use std::os::unix::fs::FileExt;
    let end = start.saturating_add(len);
    let seek = |offset: u64, whence: i32| -> io::Result<Option<u64>> {
        let offset =
            i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: lseek on a descriptor the caller owns; no memory is involved, and the file
        // position it moves is not used (reads are positional).
        let found = unsafe { libc::lseek64(file.as_raw_fd(), offset, whence) };
        if found >= 0 {
            return Ok(Some(found as u64));
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            _ => Err(err),
        }
    };
    let mut buf = vec![0u8; 64 << 10];
    let mut at = start;
    while at < end {
        let Some(data) = seek(at, libc::SEEK_DATA)?.filter(|&d| d < end) else {
            return Ok(None);
        };
        let hole = seek(data, libc::SEEK_HOLE)?.unwrap_or(end).min(end);
        let mut pos = data;
        while pos < hole {
            let want = usize::try_from((hole - pos).min(buf.len() as u64)).unwrap_or(buf.len());
            let n = file.read_at(&mut buf[..want], pos)?;
            if n == 0 {
                return Ok(None);
            }
            if let Some(i) = buf[..n].iter().position(|&b| b != 0) {
                return Ok(Some(pos + i as u64));
            }
            pos += n as u64;
        }
        at = hole;
    }
    Ok(None)
}

/// Why a connection ended, if not by an ordinary disconnect.
fn disconnect_reason(result: vhost_user_backend::Result<()>) -> Option<String> {
    use vhost_user_backend::Error;
    match result {
        Ok(())
        | Err(Error::HandleRequest(VhostUserError::Disconnected))
        | Err(Error::HandleRequest(VhostUserError::PartialMessage))
        | Err(Error::HandleRequest(VhostUserError::SocketBroken(_))) => None,
        Err(err) => Some(err.to_string()),
    }
}

/// Removes a socket file nobody listens on; refuses a live socket or a non-socket.
fn remove_stale_socket(path: &Path) -> Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(VhostUserFsError::Bind {
                path: path.to_owned(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(VhostUserFsError::NotASocket(path.to_owned()));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(VhostUserFsError::SocketInUse(path.to_owned())),
        Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
            info!(
                "removing stale socket {} (nobody listens on it)",
                path.display()
            );
            std::fs::remove_file(path).map_err(|source| VhostUserFsError::Bind {
                path: path.to_owned(),
                source,
            })
        }
        Err(source) => Err(VhostUserFsError::Bind {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Waits until one of `fds` is readable; returns the index of the first listed.
fn wait_any(fds: &[RawFd]) -> Result<usize> {
    crate::virtio::wait::Waiter::new(fds)
        .and_then(|mut waiter| waiter.wait())
        .map_err(|source| VhostUserFsError::Host {
            what: "wait for the front-end",
            source,
        })
}

#[cfg(test)]
mod memory_tests {
    use std::fs::File;
    use std::os::fd::FromRawFd;
    use std::os::unix::fs::FileExt;

    use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

    use super::unshared_memory;

    const SIZE: usize = 32 << 20;

    /// Guest memory over a new memfd of 32 MiB, into which `content` was written through the
    /// file at 20 MiB (as a front-end's shared mapping would have).
    fn memfd_memory(content: &[u8]) -> GuestMemoryMmap<()> {
        // SAFETY: memfd_create with a NUL-terminated name; it returns a new descriptor.
        let fd = unsafe { libc::memfd_create(c"guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: `fd` was just returned to us and nothing else owns it.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(SIZE as u64).unwrap();
        file.write_all_at(content, 20 << 20).unwrap();
        GuestMemoryMmap::from_ranges_with_files([(
            GuestAddress(0),
            SIZE,
            Some(FileOffset::new(file, 0)),
        )])
        .unwrap()
    }

    #[test]
    fn memory_files_without_data_are_named_with_share_on() {
        let why = unshared_memory(&memfd_memory(b"")).expect("detected");
        assert!(why.contains("share=on"), "{why}");
    }

    #[test]
    fn memory_files_holding_only_zeros_are_not_shared() {
        // Pages a private mapping only read: present in the file, all zero.
        assert!(unshared_memory(&memfd_memory(&[0u8; 1 << 20])).is_some());
    }

    #[test]
    fn small_memory_is_not_judged() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        assert_eq!(unshared_memory(&mem), None);
    }

    #[test]
    fn memory_files_with_data_are_shared() {
        assert_eq!(unshared_memory(&memfd_memory(b"a running guest")), None);
    }

    #[test]
    fn anonymous_memory_is_not_judged() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), SIZE)]).unwrap();
        assert_eq!(unshared_memory(&mem), None);
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::os::fd::{FromRawFd, IntoRawFd};
    use std::time::Duration;

    use fuse_backend_rs::abi::fuse_abi::{InHeader, InitIn, OutHeader};
    use fuse_backend_rs::passthrough::{Config, PassthroughFs};
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{ByteValued, Bytes, GuestAddress};

    use super::*;

    type Fs = PassthroughFs<()>;

    fn passthrough(dir: &Path) -> Arc<Fs> {
        let fs = Fs::new(Config {
            root_dir: dir.to_str().unwrap().to_owned(),
            do_import: true,
            ..Default::default()
        })
        .unwrap();
        fs.import().unwrap();
        Arc::new(fs)
    }

    /// A split queue of 16 in `guest`, and a ready vring on it as vhost-user-backend wires the
    /// front-end's queue.
    fn ready_vring(
        guest: &GuestMemoryMmap<()>,
        mem: Mem,
    ) -> (MockSplitQueue<'_, GuestMemoryMmap<()>>, VringRwLock) {
        let mock = MockSplitQueue::new(guest, 16);
        let vring = VringRwLock::new(mem, 16).unwrap();
        vring
            .set_queue_info(
                mock.desc_table_addr().0,
                mock.avail_addr().0,
                mock.used_addr().0,
            )
            .unwrap();
        vring.set_queue_size(16);
        vring.set_queue_ready(true);
        (mock, vring)
    }

    fn backend(dir: &Path, mem: Mem) -> VhostUserFsBackend<Fs> {
        VhostUserFsBackend::new(
            Arc::new(FuseSession::new(passthrough(dir))),
            "share0",
            2,
            mem,
        )
        .unwrap()
    }

    #[test]
    fn offers_version_1_indirect_event_idx_and_protocol_features() {
        let dir = tempfile::tempdir().unwrap();
        let backend = backend(dir.path(), Mem::new(GuestMemoryMmap::new()));

        let features = backend.features();

        for wanted in [
            VIRTIO_F_VERSION_1,
            VIRTIO_RING_F_INDIRECT_DESC,
            VIRTIO_RING_F_EVENT_IDX,
            VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(),
        ] {
            assert_eq!(features & wanted, wanted, "feature {wanted:#x} missing");
        }
        assert!(backend
            .protocol_features()
            .contains(VhostUserProtocolFeatures::MQ));
    }

    #[test]
    fn serves_hiprio_and_each_request_queue_on_its_own_thread() {
        let dir = tempfile::tempdir().unwrap();
        let backend = backend(dir.path(), Mem::new(GuestMemoryMmap::new()));

        assert_eq!(backend.num_queues(), 3);
        assert_eq!(backend.queues_per_thread(), vec![0b001, 0b010, 0b100]);
        assert!((0..3).all(|thread| backend.exit_event(thread).is_some()));
        assert!(backend.exit_event(3).is_none());
    }

    #[test]
    fn config_space_holds_the_tag_then_the_request_queue_count() {
        let dir = tempfile::tempdir().unwrap();
        let backend = backend(dir.path(), Mem::new(GuestMemoryMmap::new()));

        let tag = backend.get_config(0, 6);
        let queues = backend.get_config(MAX_TAG_LEN as u32, 4);
        let past_end = backend.get_config(MAX_TAG_LEN as u32, 8);
        let huge = backend.get_config(u32::MAX, u32::MAX);

        assert_eq!(tag, b"share0");
        assert_eq!(queues, 2u32.to_le_bytes());
        assert!(past_end.is_empty());
        assert!(huge.is_empty());
    }

    /// 1. Map 8 KiB of a file that holds 4 KiB as guest memory.
    /// 2. Hand it to the back-end, as vhost-user-backend does after SET_MEM_TABLE.
    /// 3. It is refused, and the shared memory is left without regions, so a ring read
    ///    fails cleanly instead of faulting (SIGBUS) past the end of the file.
    #[test]
    fn memory_mapped_past_the_end_of_its_file_is_refused() {
        use vm_memory::mmap::MmapRegion;
        use vm_memory::{FileOffset, GuestRegionMmap};

        let dir = tempfile::tempdir().unwrap();
        let file = tempfile::tempfile().unwrap();
        file.set_len(0x1000).unwrap();
        let region = MmapRegion::from_file(FileOffset::new(file, 0), 0x2000).unwrap();
        let region = GuestRegionMmap::new(region, GuestAddress(0)).unwrap();
        let mem = Mem::new(GuestMemoryMmap::from_regions(vec![region]).unwrap());
        let backend = backend(dir.path(), Mem::new(GuestMemoryMmap::new()));

        let result = backend.update_memory(mem.clone());

        let err = result.unwrap_err();
        assert!(err.to_string().contains("0x1000-byte file"), "{err}");
        assert_eq!(mem.memory().num_regions(), 0);
        assert_eq!(backend.memory().memory().num_regions(), 0);
    }

    #[test]
    fn memory_inside_its_file_is_taken() {
        use vm_memory::mmap::MmapRegion;
        use vm_memory::{FileOffset, GuestRegionMmap};

        let dir = tempfile::tempdir().unwrap();
        let file = tempfile::tempfile().unwrap();
        file.set_len(0x3000).unwrap();
        let region = MmapRegion::from_file(FileOffset::new(file, 0x1000), 0x2000).unwrap();
        let region = GuestRegionMmap::new(region, GuestAddress(0)).unwrap();
        let mem = Mem::new(GuestMemoryMmap::from_regions(vec![region]).unwrap());
        let backend = backend(dir.path(), Mem::new(GuestMemoryMmap::new()));

        backend.update_memory(mem).unwrap();

        assert_eq!(backend.memory().memory().num_regions(), 1);
    }

    #[test]
    fn more_request_queues_than_worker_mask_bits_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = DaemonConfig::new(dir.path().join("sock"), "share0");
        config.request_queues = MAX_REQUEST_QUEUES + 1;

        let err = VhostUserFsDaemon::bind(config, passthrough(dir.path()))
            .err()
            .unwrap();

        assert!(matches!(err, VhostUserFsError::TooManyQueues(64)), "{err}");
    }

    /// 1. Put a FUSE INIT on a split queue in guest memory, wired to a
    ///    vring the way vhost-user-backend wires the front-end's queue.
    /// 2. Deliver the kick to the back-end.
    /// 3. The chain is used with a successful reply, and the call eventfd fired.
    #[test]
    fn a_kicked_vring_is_served_and_the_front_end_signalled() {
        let dir = tempfile::tempdir().unwrap();
        let guest = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mem = Mem::new(guest.clone());
        let backend = backend(dir.path(), mem.clone());
        let (mock, vring) = ready_vring(&guest, mem);
        let (call_consumer, call_notifier) =
            new_event_consumer_and_notifier(EventFlag::NONBLOCK).unwrap();
        // SAFETY: the descriptor was just released by into_raw_fd; File owns it alone.
        vring.set_call(Some(unsafe {
            File::from_raw_fd(call_notifier.into_raw_fd())
        }));
        let init = InitIn {
            major: 7,
            minor: 31,
            max_readahead: 4096,
            flags: 0,
        };
        let header = InHeader {
            len: (std::mem::size_of::<InHeader>() + std::mem::size_of::<InitIn>()) as u32,
            opcode: 26, // FUSE_INIT
            unique: 1,
            ..Default::default()
        };
        let mut request = header.as_slice().to_vec();
        request.extend_from_slice(init.as_slice());
        guest.write_slice(&request, GuestAddress(0x8000)).unwrap();
        let descs = [
            Descriptor::new(0x8000, request.len() as u32, VRING_DESC_F_NEXT as u16, 1),
            Descriptor::new(0x9000, 4096, VRING_DESC_F_WRITE as u16, 0),
        ];
        for (slot, desc) in descs.into_iter().enumerate() {
            mock.desc_table()
                .store(slot as u16, RawDescriptor::from(desc))
                .unwrap();
        }
        mock.avail().ring().ref_at(0).unwrap().store(0);
        mock.avail().idx().store(1);

        backend
            .handle_event(0, EventSet::IN, std::slice::from_ref(&vring), 1)
            .unwrap();

        assert_eq!(mock.used().idx().load(), 1);
        let reply: OutHeader = guest.read_obj(GuestAddress(0x9000)).unwrap();
        assert_eq!(reply.error, 0, "INIT answered without an error");
        assert_eq!(reply.unique, 1);
        assert!(call_consumer.consume().is_ok(), "the call eventfd fired");
    }

    /// A driver whose avail.idx runs further ahead than the queue size gets
    /// nothing served and no signal; the worker keeps going.
    #[test]
    fn a_corrupt_avail_index_is_ignored_without_serving_anything() {
        let dir = tempfile::tempdir().unwrap();
        let guest = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mem = Mem::new(guest.clone());
        let backend = backend(dir.path(), mem.clone());
        let (mock, vring) = ready_vring(&guest, mem);
        mock.avail().idx().store(100);

        let result = backend.handle_event(0, EventSet::IN, std::slice::from_ref(&vring), 1);

        assert!(result.is_ok(), "the worker thread must survive");
        assert_eq!(mock.used().idx().load(), 0);
    }

    /// A file system with a bug: every LOOKUP panics; everything else is ENOSYS.
    struct Buggy;

    impl FileSystem for Buggy {
        type Inode = u64;
        type Handle = u64;

        fn init(
            &self,
            _: fuse_backend_rs::api::filesystem::FsOptions,
        ) -> io::Result<fuse_backend_rs::api::filesystem::FsOptions> {
            Ok(fuse_backend_rs::api::filesystem::FsOptions::empty())
        }

        fn lookup(
            &self,
            _: &fuse_backend_rs::api::filesystem::Context,
            _: u64,
            _: &std::ffi::CStr,
        ) -> io::Result<fuse_backend_rs::api::filesystem::Entry> {
            panic!("a bug in the file system");
        }
    }

    /// 1. A vring holds INIT, a LOOKUP that makes the file system panic, and a GETATTR.
    /// 2. One kick: INIT and GETATTR are answered, the LOOKUP is dropped, and the worker
    ///    thread goes on (the panic does not unwind into vhost-user-backend).
    #[test]
    fn a_panic_while_serving_drops_that_request_and_serves_the_rest() {
        let guest = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mem = Mem::new(guest.clone());
        let backend = VhostUserFsBackend::new(
            Arc::new(FuseSession::new(Arc::new(Buggy))),
            "share0",
            1,
            mem.clone(),
        )
        .unwrap();
        let (mock, vring) = ready_vring(&guest, mem);
        let init = InitIn {
            major: 7,
            minor: 31,
            max_readahead: 4096,
            flags: 0,
        };
        let requests: [(u32, &[u8]); 3] = [(26, init.as_slice()), (1, b"name\0"), (3, &[0; 16])];
        for (i, (opcode, body)) in requests.iter().enumerate() {
            let header = InHeader {
                len: (std::mem::size_of::<InHeader>() + body.len()) as u32,
                opcode: *opcode,
                unique: i as u64 + 1,
                nodeid: 1,
                ..Default::default()
            };
            let request = [header.as_slice(), body].concat();
            let (addr, slot) = (0x8000 + 0x2000 * i as u64, 2 * i as u16);
            guest.write_slice(&request, GuestAddress(addr)).unwrap();
            let descs = [
                Descriptor::new(
                    addr,
                    request.len() as u32,
                    VRING_DESC_F_NEXT as u16,
                    slot + 1,
                ),
                Descriptor::new(addr + 0x1000, 4096, VRING_DESC_F_WRITE as u16, 0),
            ];
            for (j, desc) in descs.into_iter().enumerate() {
                mock.desc_table()
                    .store(slot + j as u16, RawDescriptor::from(desc))
                    .unwrap();
            }
            mock.avail().ring().ref_at(i).unwrap().store(slot);
        }
        mock.avail().idx().store(3);

        let result = backend.handle_event(0, EventSet::IN, std::slice::from_ref(&vring), 1);

        assert!(result.is_ok(), "the worker thread must go on");
        assert_eq!(mock.used().idx().load(), 2, "INIT and GETATTR answered");
        let getattr: OutHeader = guest.read_obj(GuestAddress(0xc000 + 0x1000)).unwrap();
        assert_eq!(getattr.unique, 3);
    }

    #[test]
    fn a_kick_for_a_queue_the_thread_does_not_have_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let backend = backend(dir.path(), Mem::new(GuestMemoryMmap::new()));

        let result = backend.handle_event(5, EventSet::IN, &[], 0);

        assert!(result.is_ok());
    }

    #[test]
    fn bind_refuses_a_path_that_is_not_a_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        std::fs::write(&path, b"keep me").unwrap();

        let err = VhostUserFsDaemon::bind(DaemonConfig::new(&path, "t"), passthrough(dir.path()))
            .err()
            .unwrap();

        assert!(matches!(err, VhostUserFsError::NotASocket(_)), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
    }

    #[test]
    fn bind_refuses_a_socket_another_back_end_listens_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sock");
        let _other = UnixListener::bind(&path).unwrap();

        let err = VhostUserFsDaemon::bind(DaemonConfig::new(&path, "t"), passthrough(dir.path()))
            .err()
            .unwrap();

        assert!(matches!(err, VhostUserFsError::SocketInUse(_)), "{err}");
    }

    #[test]
    fn bind_replaces_a_stale_socket_and_drop_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sock");
        drop(UnixListener::bind(&path).unwrap()); // leaves the file, nobody listening

        let daemon =
            VhostUserFsDaemon::bind(DaemonConfig::new(&path, "t"), passthrough(dir.path()))
                .unwrap();
        let connected = UnixStream::connect(&path).is_ok();
        drop(daemon);

        assert!(connected, "the new daemon listens on the path");
        assert!(!path.exists(), "the socket is removed with the daemon");
    }

    #[test]
    fn bind_in_a_missing_directory_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no/such/dir/sock");

        let err = VhostUserFsDaemon::bind(DaemonConfig::new(&path, "t"), passthrough(dir.path()))
            .err()
            .unwrap();

        assert!(err.to_string().contains("no/such/dir/sock"), "{err}");
    }

    #[test]
    fn serve_returns_when_the_stop_event_fires_before_a_front_end_comes() {
        let dir = tempfile::tempdir().unwrap();
        let mut daemon = VhostUserFsDaemon::bind(
            DaemonConfig::new(dir.path().join("sock"), "t"),
            passthrough(dir.path()),
        )
        .unwrap();
        let stop = EventFd::new(EFD_NONBLOCK).unwrap();
        stop.write(1).unwrap();
        let mut events = Vec::new();

        let end = daemon.serve(&stop, |e| events.push(e.clone())).unwrap();

        assert_eq!(end, ServeEnd::Stopped);
        assert_eq!(events, vec![DaemonEvent::Stopped]);
    }

    /// A front-end speaking garbage ends its connection with a protocol
    /// error (no panic, no hang), and the daemon can serve the next one.
    #[test]
    fn a_front_end_sending_garbage_is_dropped_with_the_reason() {
        use std::io::Write;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sock");
        let mut daemon =
            VhostUserFsDaemon::bind(DaemonConfig::new(&path, "t"), passthrough(dir.path()))
                .unwrap();
        let stop = EventFd::new(EFD_NONBLOCK).unwrap();
        let client = std::thread::spawn(move || {
            let mut stream = UnixStream::connect(&path).unwrap();
            // A header claiming request 0xdead with a 4 KiB body, then junk.
            let mut junk = vec![0xad, 0xde, 0, 0, 1, 0, 0, 0, 0, 0x10, 0, 0];
            junk.extend_from_slice(&[0x5a; 64]);
            let _ = stream.write_all(&junk);
            std::thread::sleep(Duration::from_millis(200));
        });
        let mut events = Vec::new();

        let end = daemon.serve(&stop, |e| events.push(e.clone())).unwrap();
        client.join().unwrap();

        assert_eq!(end, ServeEnd::Disconnected);
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(
            matches!(&events[1], DaemonEvent::Disconnected(Some(why)) if !why.is_empty()),
            "{events:?}"
        );
    }

    /// GET_FEATURES (request 1) with version-1 flags and no body: how every
    /// vhost-user front-end opens its session.
    const GET_FEATURES: [u8; 12] = [1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];

    /// A front-end that opens a session and hangs up is one session; with
    /// `accept_again` the daemon takes the next one.
    #[test]
    fn each_front_end_session_is_reported_and_the_next_one_is_accepted() {
        use std::io::{Read, Write};

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sock");
        let mut daemon =
            VhostUserFsDaemon::bind(DaemonConfig::new(&path, "t"), passthrough(dir.path()))
                .unwrap();
        let stop = EventFd::new(EFD_NONBLOCK).unwrap();
        let stopper = stop.try_clone().unwrap();
        let client = std::thread::spawn(move || {
            let mut features = Vec::new();
            for _ in 0..2 {
                let mut stream = UnixStream::connect(&path).unwrap();
                stream.write_all(&GET_FEATURES).unwrap();
                let mut reply = [0u8; 20];
                stream.read_exact(&mut reply).unwrap();
                features.push(u64::from_le_bytes(reply[12..].try_into().unwrap()));
                drop(stream);
                std::thread::sleep(Duration::from_millis(100));
            }
            std::thread::sleep(Duration::from_millis(100));
            stopper.write(1).unwrap();
            features
        });
        let mut events = Vec::new();

        let end = daemon.run(&stop, true, |e| events.push(e.clone())).unwrap();
        let features = client.join().unwrap();

        assert_eq!(end, ServeEnd::Stopped);
        assert_eq!(
            events,
            vec![
                DaemonEvent::Connected,
                DaemonEvent::Disconnected(None),
                DaemonEvent::Connected,
                DaemonEvent::Disconnected(None),
                DaemonEvent::Stopped
            ]
        );
        assert!(
            features.iter().all(|f| f & VIRTIO_F_VERSION_1 != 0),
            "{features:x?}"
        );
    }

    /// Connecting and closing without a word (as `bind` does to check for a
    /// live daemon) is not a session: the daemon keeps waiting, even
    /// without `accept_again`.
    #[test]
    fn a_silent_connection_is_a_probe_and_the_daemon_keeps_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sock");
        let mut daemon =
            VhostUserFsDaemon::bind(DaemonConfig::new(&path, "t"), passthrough(dir.path()))
                .unwrap();
        let stop = EventFd::new(EFD_NONBLOCK).unwrap();
        let stopper = stop.try_clone().unwrap();
        let client = std::thread::spawn(move || {
            for _ in 0..2 {
                drop(UnixStream::connect(&path).unwrap());
                std::thread::sleep(Duration::from_millis(100));
            }
            stopper.write(1).unwrap();
        });
        let mut events = Vec::new();

        let end = daemon
            .run(&stop, false, |e| events.push(e.clone()))
            .unwrap();
        client.join().unwrap();

        assert_eq!(end, ServeEnd::Stopped);
        assert_eq!(events, vec![DaemonEvent::Stopped]);
    }

    /// A second daemon on the same socket is refused, and its check does
    /// not end the first one's wait for a front-end.
    #[test]
    fn a_second_daemon_on_a_live_socket_leaves_the_first_running() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sock");
        let mut first =
            VhostUserFsDaemon::bind(DaemonConfig::new(&path, "t"), passthrough(dir.path()))
                .unwrap();
        let stop = EventFd::new(EFD_NONBLOCK).unwrap();
        let stopper = stop.try_clone().unwrap();
        let fs = passthrough(dir.path());
        let second = std::thread::spawn(move || {
            let refused = VhostUserFsDaemon::bind(DaemonConfig::new(&path, "t"), fs).err();
            std::thread::sleep(Duration::from_millis(200));
            stopper.write(1).unwrap();
            refused
        });
        let mut events = Vec::new();

        let end = first.serve(&stop, |e| events.push(e.clone())).unwrap();
        let refused = second.join().unwrap();

        assert!(
            matches!(refused, Some(VhostUserFsError::SocketInUse(_))),
            "{refused:?}"
        );
        assert_eq!(end, ServeEnd::Stopped, "{events:?}");
    }
}
