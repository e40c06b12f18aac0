//! The worker threads of a virtio-fs device: one per queue, started with the device (by the
//! thread that builds the VM, before any filter) and parked until an activation hands them
//! their queue. A vCPU thread, which activates and resets devices, thus never starts a
//! thread, and each worker installs its own seccomp filter before it serves anything.

use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use fuse_backend_rs::api::filesystem::FileSystem;
use log::{debug, error, warn};
use vmm_sys_util::eventfd::EventFd;

use super::handler::{panic_text, process_queue, FuseSession};
use super::pool::{process_queue_pooled, RequestPool};
use super::NeedsReset;
use crate::confine::{self, Enforcement};
use crate::seccomp::{self, SeccompMode, ThreadRole};
use crate::virtio::wait::Waiter;
use crate::virtio::{ActiveQueue, GuestMemory, Interrupt};

/// What a worker needs; moved into its thread.
pub struct Worker<F: FileSystem + Send + Sync> {
    /// Index of the queue (0 is hiprio).
    pub index: usize,
    /// The queue and its kick eventfd.
    pub queue: ActiveQueue,
    /// Guest memory.
    pub mem: GuestMemory,
    /// The FUSE server.
    pub server: Arc<FuseSession<F>>,
    /// How to interrupt the driver.
    pub interrupt: Arc<dyn Interrupt>,
    /// Written to stop the worker.
    pub stop: EventFd,
    /// Set when the driver broke the queue; the device then reports NEEDS_RESET.
    pub needs_reset: NeedsReset,
    /// How long the queue looks for more requests after serving a batch
    /// ([`super::handler::process_queue`]).
    pub batch_poll: std::time::Duration,
    /// The threads serving the queue's requests side by side, if it has any
    /// ([`RequestPool`]); without, this worker serves them one at a time. A request that
    /// panics on a pool thread is answered with nothing ([`process_queue_pooled`]), not with
    /// a device reset.
    pub pool: Option<Arc<RequestPool>>,
}

enum Wake {
    Kick,
    Stop,
}

impl<F: FileSystem + Send + Sync + 'static> Worker<F> {
    /// Serves the queue until told to stop or the queue breaks.
    pub fn run(mut self) {
        // A pool thread holds the memory for as long as it serves a chain of it.
        let pooled = self
            .pool
            .clone()
            .map(|pool| (pool, Arc::new(self.mem.clone())));
        let mut waiter = match Waiter::new(&[self.stop.as_raw_fd(), self.queue.kick.as_raw_fd()]) {
            Ok(waiter) => waiter,
            Err(err) => {
                warn!(
                    "virtio-fs queue {}: cannot wait for work: {err}",
                    self.index
                );
                return;
            }
        };
        loop {
            match self.wait(&mut waiter) {
                Ok(Wake::Stop) => break,
                Ok(Wake::Kick) => {}
                Err(err) => {
                    warn!(
                        "virtio-fs queue {}: waiting for work failed: {err}",
                        self.index
                    );
                    break;
                }
            }
            let (index, interrupt) = (self.index, &self.interrupt);
            let mut signal = || {
                if let Err(err) = interrupt.signal_used_queue() {
                    warn!("virtio-fs queue {index}: cannot interrupt the guest: {err}");
                }
            };
            let queue = &mut self.queue.queue;
            let served = match &pooled {
                Some((pool, mem)) => process_queue_pooled(
                    &self.server,
                    mem,
                    queue,
                    self.batch_poll,
                    &mut signal,
                    pool,
                ),
                None => process_queue(&self.server, &self.mem, queue, self.batch_poll, &mut signal),
            };
            match served {
                Ok(()) => {}
                Err(err) => {
                    warn!(
                        "virtio-fs queue {}: {err}; the device needs a reset",
                        self.index
                    );
                    self.needs_reset.set();
                    let _ = self.interrupt.signal_config_change();
                    break;
                }
            }
        }
        debug!("virtio-fs queue {} worker stopped", self.index);
    }

    /// Blocks until the queue is kicked or the worker is told to stop (a stop wins).
    fn wait(&self, waiter: &mut Waiter) -> std::io::Result<Wake> {
        if waiter.wait()? == 0 {
            return Ok(Wake::Stop);
        }
        let _ = self.queue.kick.read();
        Ok(Wake::Kick)
    }
}

/// How a file-serving thread confines itself before it serves anything. The default is the
/// seccomp filter in mode kill ([`SeccompMode::default`]) and no Landlock limit.
#[derive(Debug, Clone, Default)]
pub struct WorkerConfinement {
    /// Its seccomp filter's mode.
    pub seccomp: SeccompMode,
    /// The only directories whose files it may reach (Landlock, where the kernel has it);
    /// empty: no such limit.
    pub beneath: Vec<PathBuf>,
}

impl WorkerConfinement {
    /// Applies the Landlock limit, then the seccomp filter, to the calling thread.
    pub fn apply(&self) -> Result<(), String> {
        if !self.beneath.is_empty() {
            match confine::restrict_thread_beneath(&self.beneath) {
                Ok(Enforcement::Full) => debug!("Landlock: limited to {:?}", self.beneath),
                Ok(Enforcement::Partial) => {
                    debug!("Landlock: this kernel enforces only part of the file limits")
                }
                Ok(Enforcement::None) => {
                    debug!("Landlock: not in this kernel; the file-serving threads are not limited to their share")
                }
                Err(err) => return Err(err.to_string()),
            }
        }
        seccomp::confine_current_thread(ThreadRole::FsWorker, self.seccomp)
            .map_err(|e| e.to_string())
    }
}

/// What a parked worker thread is asked to do.
pub enum Command<F: FileSystem + Send + Sync + 'static> {
    /// Serve a queue until told to stop; then say so on `done`.
    Serve {
        /// The queue and everything serving it needs.
        worker: Worker<F>,
        /// Told when the worker is parked again.
        done: Sender<()>,
    },
    /// Run `call` on the worker's thread (under its filter); then say so on `done`.
    Call {
        /// The work.
        call: Box<dyn FnOnce() + Send>,
        /// Told when it has run.
        done: Sender<()>,
    },
}

/// A worker thread, parked or serving, and how to reach it.
pub struct QueueThread<F: FileSystem + Send + Sync + 'static> {
    commands: Option<Sender<Command<F>>>,
    thread: Option<JoinHandle<()>>,
}

impl<F: FileSystem + Send + Sync + 'static> QueueThread<F> {
    /// Starts the worker thread named `name`, which confines itself as `confinement` says
    /// and parks. Returns once it is confined, or with why it could not be.
    pub fn start(name: String, confinement: WorkerConfinement) -> std::io::Result<Self> {
        let (commands, received) = mpsc::channel();
        let thread =
            seccomp::spawn_confined(name, move || confinement.apply(), move || park(received))
                .map_err(|err| std::io::Error::other(err.to_string()))?;
        Ok(Self {
            commands: Some(commands),
            thread: Some(thread),
        })
    }

    /// Hands the thread `command`; false if the thread is gone.
    pub fn send(&self, command: Command<F>) -> bool {
        self.commands
            .as_ref()
            .is_some_and(|commands| commands.send(command).is_ok())
    }
}

impl<F: FileSystem + Send + Sync + 'static> Drop for QueueThread<F> {
    fn drop(&mut self) {
        // Without its sender the parked thread's wait ends, and so does the thread.
        drop(self.commands.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                warn!("a virtio-fs worker thread panicked");
            }
        }
    }
}

/// A parked worker's life: one command after another, until the device is dropped.
///
/// A panic while serving is a bug, never an answer to a guest: it is logged, the device
/// asks the driver for a reset (so the guest sees a device reset rather than a hung
/// request), and the thread parks again, so that the next activation finds its worker.
fn park<F: FileSystem + Send + Sync + 'static>(commands: Receiver<Command<F>>) {
    while let Ok(command) = commands.recv() {
        match command {
            Command::Serve { worker, done } => {
                let (index, needs_reset) = (worker.index, worker.needs_reset.clone());
                let interrupt = worker.interrupt.clone();
                if let Err(panic) = catch_unwind(AssertUnwindSafe(|| worker.run())) {
                    error!(
                        "virtio-fs queue {index}: serving a request panicked ({}), a bug to \
                         report; the device asks the driver for a reset",
                        panic_text(&*panic)
                    );
                    needs_reset.set();
                    let _ = interrupt.signal_config_change();
                }
                let _ = done.send(());
            }
            Command::Call { call, done } => {
                if let Err(panic) = catch_unwind(AssertUnwindSafe(call)) {
                    error!(
                        "virtio-fs: a device call panicked ({}), a bug to report",
                        panic_text(&*panic)
                    );
                }
                let _ = done.send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use fuse_backend_rs::abi::fuse_abi::{InHeader, InitIn};
    use fuse_backend_rs::api::filesystem::{Context, Entry, FsOptions};
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{ByteValued, Bytes, GuestAddress};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::*;
    use crate::virtio::MmioInterrupt;

    /// A file system with a bug: every LOOKUP panics.
    struct Buggy;

    impl FileSystem for Buggy {
        type Inode = u64;
        type Handle = u64;

        fn init(&self, _: FsOptions) -> std::io::Result<FsOptions> {
            Ok(FsOptions::empty())
        }

        fn lookup(&self, _: &Context, _: u64, _: &std::ffi::CStr) -> std::io::Result<Entry> {
            panic!("a bug in the file system");
        }
    }

    const QUEUE_SIZE: u16 = 8;

    /// A queue in `mem` whose descriptors hold an INIT and then a LOOKUP, each with room for
    /// its reply. Only the INIT is made available: a driver sends nothing else before INIT's
    /// reply (the LOOKUP would be answered EIO), and a pool might serve the two together.
    fn queue_with_init_and_lookup(mem: &GuestMemory) -> Queue {
        let mut queue = Queue::new(QUEUE_SIZE).unwrap();
        queue.set_size(QUEUE_SIZE);
        queue.set_desc_table_address(Some(0), Some(0));
        queue.set_avail_ring_address(Some(0x1000), Some(0));
        queue.set_used_ring_address(Some(0x2000), Some(0));
        queue.set_ready(true);
        let request = |opcode: u32, unique: u64, body: &[u8]| {
            let header = InHeader {
                len: (std::mem::size_of::<InHeader>() + body.len()) as u32,
                opcode,
                unique,
                nodeid: 1,
                ..Default::default()
            };
            [header.as_slice(), body].concat()
        };
        let init = InitIn {
            major: 7,
            minor: 31,
            max_readahead: 0,
            flags: 0,
        };
        let requests = [request(26, 1, init.as_slice()), request(1, 2, b"name\0")];
        for (i, bytes) in requests.iter().enumerate() {
            let (slot, buf) = (2 * i as u16, 0x10_000 + 0x1000 * i as u64);
            mem.write_slice(bytes, GuestAddress(buf)).unwrap();
            let desc = |slot: u16, addr: u64, len: u32, flags: u32, next: u16| {
                let base = 16 * u64::from(slot);
                mem.write_obj(addr, GuestAddress(base)).unwrap();
                mem.write_obj(len, GuestAddress(base + 8)).unwrap();
                mem.write_obj(flags as u16, GuestAddress(base + 12))
                    .unwrap();
                mem.write_obj(next, GuestAddress(base + 14)).unwrap();
            };
            desc(slot, buf, bytes.len() as u32, VRING_DESC_F_NEXT, slot + 1);
            desc(slot + 1, buf + 0x800, 0x800, VRING_DESC_F_WRITE, 0);
            mem.write_obj(slot, GuestAddress(0x1004 + 2 * i as u64))
                .unwrap();
        }
        mem.write_obj(1u16, GuestAddress(0x1002)).unwrap();
        queue
    }

    /// A worker started by a test, and what the test watches of it.
    struct Started {
        mem: GuestMemory,
        kick: EventFd,
        stop: EventFd,
        needs_reset: NeedsReset,
        thread: QueueThread<Buggy>,
        /// Told when the worker is parked again.
        parked: mpsc::Receiver<()>,
    }

    impl Started {
        /// Waits for the INIT's reply, then makes the LOOKUP available and kicks, as a
        /// driver does.
        fn send_lookup_after_init(&self) {
            wait_until(|| !used(&self.mem).is_empty());
            assert_eq!(used(&self.mem).len(), 1, "the INIT is answered");
            self.mem.write_obj(2u16, GuestAddress(0x1002)).unwrap();
            self.kick.write(1).unwrap();
        }
    }

    impl Drop for Started {
        /// A test that fails while the worker serves must end, not wait for the worker's
        /// thread forever: told to stop, the worker parks, and the thread can be joined.
        fn drop(&mut self) {
            let _ = self.stop.write(1);
        }
    }

    /// Starts a worker filtered as in a VMM (mode kill) on a queue holding an INIT and a
    /// LOOKUP that makes [`Buggy`] panic, with a pool of `pool_threads` threads confined the
    /// same way (0: none), and kicks it once for the INIT.
    fn start_buggy_worker(pool_threads: usize) -> Started {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let queue = queue_with_init_and_lookup(&mem);
        let kick = EventFd::new(EFD_NONBLOCK).unwrap();
        let stop = EventFd::new(EFD_NONBLOCK).unwrap();
        let needs_reset = NeedsReset::default();
        let confinement = WorkerConfinement {
            seccomp: SeccompMode::Kill,
            beneath: Vec::new(),
        };
        let pool = (pool_threads > 0)
            .then(|| Arc::new(RequestPool::new("fs-test-q1", pool_threads, &confinement).unwrap()));
        let thread = QueueThread::start("fs-test-q1".into(), confinement).unwrap();
        let worker = Worker {
            index: 1,
            queue: ActiveQueue {
                queue,
                kick: kick.try_clone().unwrap(),
            },
            mem: mem.clone(),
            server: Arc::new(FuseSession::new(Buggy)),
            interrupt: Arc::new(MmioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap())),
            stop: stop.try_clone().unwrap(),
            needs_reset: needs_reset.clone(),
            batch_poll: std::time::Duration::ZERO,
            pool,
        };
        let (done, parked) = mpsc::channel();
        assert!(thread.send(Command::Serve { worker, done }));
        kick.write(1).unwrap();
        Started {
            mem,
            kick,
            stop,
            needs_reset,
            thread,
            parked,
        }
    }

    /// Waits, up to a bound that guards against a hang (not a timing check), until `done`.
    fn wait_until(done: impl Fn() -> bool) {
        let start = Instant::now();
        while !done() && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// 1. A worker, filtered as in a VMM, serves a queue whose second request makes the file
    ///    system panic.
    /// 2. The panic becomes a reset request to the driver (NEEDS_RESET and a configuration
    ///    interrupt), not a dead thread or process.
    /// 3. The worker parks again and still runs the next command.
    #[test]
    fn a_panic_while_serving_asks_for_a_reset_and_the_worker_lives_on() {
        let worker = start_buggy_worker(0);
        worker.send_lookup_after_init();

        wait_until(|| worker.needs_reset.is_set());
        assert!(
            worker.needs_reset.is_set(),
            "the panic did not ask for a reset"
        );
        worker.parked.recv_timeout(Duration::from_secs(30)).unwrap();

        let (done, ran) = mpsc::channel();
        let call = Box::new(|| {});
        assert!(
            worker.thread.send(Command::Call { call, done }),
            "the worker is gone"
        );
        ran.recv_timeout(Duration::from_secs(30))
            .expect("the worker parked again and runs the next command");
    }

    /// Used entries of the queue at 0x2000: (head, length written), in order.
    fn used(mem: &GuestMemory) -> Vec<(u32, u32)> {
        let idx: u16 = mem.read_obj(GuestAddress(0x2002)).unwrap();
        (0..u64::from(idx))
            .map(|i| {
                let at = 0x2004 + 8 * i;
                let head: u32 = mem.read_obj(GuestAddress(at)).unwrap();
                let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap();
                (head, len)
            })
            .collect()
    }

    /// 1. A worker with a pool of two threads, all filtered as in a VMM, serves a queue whose
    ///    INIT succeeds and whose LOOKUP makes the file system panic on a pool thread.
    /// 2. Both chains are used: the INIT with its reply, the LOOKUP with nothing (a pool
    ///    contains a request's panic, as it does for the vhost-user back-end), and the
    ///    device needs no reset.
    /// 3. The worker stops when told, and parks again.
    #[test]
    fn a_pooled_worker_serves_its_queue_on_the_pool_and_contains_a_panic() {
        let worker = start_buggy_worker(2);
        worker.send_lookup_after_init();

        wait_until(|| used(&worker.mem).len() == 2);
        let used = used(&worker.mem);
        assert_eq!(used.len(), 2, "both chains used: {used:?}");
        assert!(
            used.contains(&(2, 0)),
            "the LOOKUP answered with nothing: {used:?}"
        );
        let (_, init_len) = used.iter().find(|(head, _)| *head == 0).unwrap();
        assert!(*init_len > 0, "the INIT has its reply: {used:?}");
        assert!(!worker.needs_reset.is_set());

        worker.stop.write(1).unwrap();
        worker
            .parked
            .recv_timeout(Duration::from_secs(30))
            .expect("the worker stops and parks again");
    }
}
