//! Requests of one queue served side by side: a bounded pool of threads, each confined as a
//! queue worker is, to which the queue's thread hands chains and from which it takes the
//! replies back ([`process_queue_pooled`]).
//!
//! The queue's thread stays the only one touching the rings: it pops chains, hands out at
//! most one per pool thread, and adds each reply to the used ring as it comes back, in
//! whatever order. It returns only when none of its chains is still being served, so no
//! reply outlives the call that holds the queue (a front-end stopping the queue waits for
//! that call, and then finds every chain it made available either used or still available).
//!
//! It is meant for hosts whose requests block for long (slow or network storage) and that have
//! cores to spare: one slow request then no longer holds up the others. When requests are
//! quick, handing each to another thread and waking the queue's thread for its reply costs
//! about what the request does, which is why the default is no pool (virtiofsd's default too).
//! On this project's machines (2 cores, storage that answers fast) a pool of 2 measured 0.90 to
//! 1.09 of the queue's own thread at 16 requests in flight over two runs, and gained nothing
//! on reads of files not in the page cache or on fsyncs (BENCHMARKS.md, the request-pool
//! column).

use std::ops::Deref;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::GuestMemory;

use super::handler::{
    check_avail_index, handle_chain, more_arrive_within, panic_text, FuseServer, QueueError,
};
use super::worker::WorkerConfinement;

/// Most threads one queue's pool may have.
pub const MAX_POOL_SIZE: usize = 64;

/// How long the queue's thread waits for a reply before it looks at the ring again while a
/// pool thread is idle: the first wait, doubled after each wait in which nothing arrived.
const RECHECK_FIRST: Duration = Duration::from_micros(20);

/// The longest such wait (a slow request then costs the idle queue's thread a thousand
/// wake-ups a second, and a request arriving meanwhile waits at most this long).
const RECHECK_MOST: Duration = Duration::from_millis(1);

/// Work for a pool thread.
pub(super) type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of threads serving one queue's requests; dropping it lets each finish the
/// request it serves and joins them.
pub struct RequestPool {
    jobs: Option<SyncSender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl RequestPool {
    /// Starts `size` threads (1 to [`MAX_POOL_SIZE`]) named after `name`, each confined as
    /// `confinement` says before it takes any work. Fails if a thread cannot start or
    /// confine itself.
    pub fn new(name: &str, size: usize, confinement: &WorkerConfinement) -> Result<Self, String> {
        if !(1..=MAX_POOL_SIZE).contains(&size) {
            return Err(format!(
                "a pool of {size} threads asked for; a queue's pool has 1 to {MAX_POOL_SIZE}"
            ));
        }
        let (jobs, queue) = mpsc::sync_channel::<Job>(size);
        let queue = Arc::new(Mutex::new(queue));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let mut pool = RequestPool {
            jobs: Some(jobs),
            threads: Vec::with_capacity(size),
        };
        for i in 0..size {
            let queue = queue.clone();
            let ready = ready_tx.clone();
            let confinement = confinement.clone();
            let thread = std::thread::Builder::new()
                .name(format!("{name}-pool{i}"))
                .spawn(move || {
                    let confined = confinement.apply();
                    let ok = confined.is_ok();
                    let _ = ready.send(confined);
                    if ok {
                        serve_jobs(&queue);
                    }
                })
                .map_err(|e| format!("cannot start pool thread {i}: {e}"))?;
            pool.threads.push(thread);
        }
        for _ in 0..size {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(why)) => return Err(format!("a pool thread cannot confine itself: {why}")),
                Err(_) => return Err("a pool thread ended before it was ready".into()),
            }
        }
        Ok(pool)
    }

    /// How many threads serve requests.
    pub fn size(&self) -> usize {
        self.threads.len()
    }

    /// Hands `job` to an idle thread. The caller keeps at most [`RequestPool::size`] jobs
    /// out at once, so this does not wait.
    pub(super) fn run(&self, job: Job) {
        if let Some(jobs) = &self.jobs {
            // Cannot fail while the threads live: they end only when `jobs` is dropped.
            let _ = jobs.send(job);
        }
    }
}

impl Drop for RequestPool {
    fn drop(&mut self) {
        self.jobs = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A pool thread's loop: one job at a time until the pool is dropped.
fn serve_jobs(queue: &Mutex<Receiver<Job>>) {
    loop {
        // Jobs never panic while the lock is held (they run after it is released).
        let job = match queue.lock().unwrap_or_else(|p| p.into_inner()).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        job();
    }
}

/// A reply from a pool thread: the chain's head index and the bytes written into it.
type Reply = (u16, u32);

/// The way back from the pool threads, and how many chains are still out. Dropping it waits
/// for those (the rings may be broken, or a bug may have panicked), so no reply outlives the
/// call that holds the queue.
struct Replies {
    tx: Sender<Reply>,
    rx: Receiver<Reply>,
    out: usize,
}

impl Drop for Replies {
    fn drop(&mut self) {
        for _ in 0..self.out {
            if self.rx.recv().is_err() {
                break;
            }
        }
    }
}

/// [`super::handler::process_queue`] with the requests served by `pool`'s threads: as many
/// at once as it has. The same notification suppression both ways, and the same polling
/// after a batch; returns once every chain it popped is used.
///
/// A request that panics is answered with nothing (its chain used with length 0), as a
/// request the server cannot parse is, and logged as the bug it is.
pub fn process_queue_pooled<S, D>(
    server: &Arc<S>,
    mem: &D,
    queue: &mut Queue,
    batch_poll: Duration,
    interrupt: &mut dyn FnMut(),
    pool: &RequestPool,
) -> Result<(), QueueError>
where
    S: FuseServer + Send + Sync + 'static,
    D: Deref + Clone + Send + 'static,
    D::Target: GuestMemory + Sized,
{
    let (tx, rx) = mpsc::channel();
    let mut replies = Replies { tx, rx, out: 0 };
    let corrupt = QueueError::Rings;
    let guest = &**mem;
    let mut served = 0u32;
    let mut recheck = RECHECK_FIRST;
    loop {
        queue.disable_notification(guest).map_err(corrupt)?;
        check_avail_index(queue, guest)?;
        let mut handed_out = false;
        while replies.out < pool.size() {
            let Some(chain) = queue.pop_descriptor_chain(mem.clone()) else {
                break;
            };
            pool.run(job(server.clone(), mem.clone(), chain, replies.tx.clone()));
            replies.out += 1;
            handed_out = true;
        }
        if handed_out {
            recheck = RECHECK_FIRST;
        }
        if replies.out > 0 {
            // Every thread busy: only a reply can change anything. Else look at the ring
            // again after a while, for requests to hand to the idle threads.
            let reply = if replies.out == pool.size() {
                replies
                    .rx
                    .recv()
                    .map_err(|_| RecvTimeoutError::Disconnected)
            } else {
                replies.rx.recv_timeout(recheck)
            };
            match reply {
                Ok(first) => {
                    let mut reply = Some(first);
                    while let Some(one) = reply {
                        // Counted as back first: a broken ring below must not make the
                        // caller wait for this reply again.
                        replies.out -= 1;
                        complete(queue, guest, one, interrupt)?;
                        served = served.saturating_add(1);
                        reply = replies.rx.try_recv().ok();
                    }
                }
                Err(RecvTimeoutError::Timeout) => recheck = (recheck * 2).min(RECHECK_MOST),
                // Cannot happen: this function holds a sender.
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
            continue;
        }
        if served > 1 && more_arrive_within(queue, guest, batch_poll) {
            served = 0;
            continue;
        }
        served = 0;
        if !queue.enable_notification(guest).map_err(corrupt)? {
            return Ok(());
        }
    }
}

/// Serving `chain` (in `mem`) on a pool thread, the reply's length sent back on `done`.
fn job<S, D>(server: Arc<S>, mem: D, chain: DescriptorChain<D>, done: Sender<Reply>) -> Job
where
    S: FuseServer + Send + Sync + 'static,
    D: Deref + Clone + Send + 'static,
    D::Target: GuestMemory + Sized,
{
    Box::new(move || {
        let head = chain.head_index();
        let written = catch_unwind(AssertUnwindSafe(|| handle_chain(&*server, &*mem, chain)))
            .unwrap_or_else(|panic| {
                log::error!(
                    "virtio-fs: serving a request panicked ({}), a bug to report; that \
                     request is answered with nothing",
                    panic_text(&*panic)
                );
                0
            });
        let _ = done.send((head, written));
    })
}

/// Adds one reply to the used ring and tells the driver if it wants to hear.
fn complete<M: GuestMemory>(
    queue: &mut Queue,
    mem: &M,
    (head, written): Reply,
    interrupt: &mut dyn FnMut(),
) -> Result<(), QueueError> {
    queue
        .add_used(mem, head, written)
        .map_err(QueueError::Rings)?;
    if queue.needs_notification(mem).map_err(QueueError::Rings)? {
        interrupt();
    }
    Ok(())
}
