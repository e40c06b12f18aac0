//! The worker threads of a virtio-fs device: one per queue, started with the device (by the
//! thread that builds the VM, before any filter) and parked until an activation hands them
//! their queue. A vCPU thread, which activates and resets devices, thus never starts a
//! thread, and each worker installs its own seccomp filter before it serves anything.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use fuse_backend_rs::api::filesystem::FileSystem;
use log::{debug, warn};
use vmm_sys_util::eventfd::EventFd;

use super::handler::{process_queue, FuseSession};
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
}

enum Wake {
    Kick,
    Stop,
}

impl<F: FileSystem + Send + Sync> Worker<F> {
    /// Serves the queue until told to stop or the queue breaks.
    pub fn run(mut self) {
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
            match process_queue(&self.server, &self.mem, &mut self.queue.queue, &mut signal) {
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

/// How a file-serving thread confines itself before it serves anything.
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
pub enum Command<F: FileSystem + Send + Sync> {
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
fn park<F: FileSystem + Send + Sync>(commands: Receiver<Command<F>>) {
    while let Ok(command) = commands.recv() {
        match command {
            Command::Serve { worker, done } => {
                worker.run();
                let _ = done.send(());
            }
            Command::Call { call, done } => {
                call();
                let _ = done.send(());
            }
        }
    }
}
