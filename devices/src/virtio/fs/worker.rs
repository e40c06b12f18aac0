//! The worker thread that serves one virtio-fs queue.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use fuse_backend_rs::api::filesystem::FileSystem;
use log::{debug, warn};
use vmm_sys_util::eventfd::EventFd;

use super::handler::{process_queue, FuseSession};
use super::NeedsReset;
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
