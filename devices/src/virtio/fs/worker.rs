//! The worker thread that serves one virtio-fs queue.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use fuse_backend_rs::api::filesystem::FileSystem;
use log::{debug, warn};
use vmm_sys_util::eventfd::EventFd;

use super::handler::{process_queue, FuseSession};
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
    pub broken: Arc<AtomicBool>,
}

enum Wake {
    Kick,
    Stop,
}

impl<F: FileSystem + Send + Sync> Worker<F> {
    /// Serves the queue until told to stop or the queue breaks.
    pub fn run(mut self) {
        loop {
            match self.wait() {
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
            match process_queue(&self.server, &self.mem, &mut self.queue.queue) {
                Ok(true) => {
                    if let Err(err) = self.interrupt.signal_used_queue() {
                        warn!(
                            "virtio-fs queue {}: cannot interrupt the guest: {err}",
                            self.index
                        );
                    }
                }
                Ok(false) => {}
                Err(err) => {
                    warn!(
                        "virtio-fs queue {}: {err}; the device needs a reset",
                        self.index
                    );
                    self.broken.store(true, Ordering::SeqCst);
                    let _ = self.interrupt.signal_config_change();
                    break;
                }
            }
        }
        debug!("virtio-fs queue {} worker stopped", self.index);
    }

    /// Blocks until the queue is kicked or the worker is told to stop.
    fn wait(&self) -> std::io::Result<Wake> {
        let mut fds = [
            libc::pollfd {
                fd: self.stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.queue.kick.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        loop {
            // SAFETY: fds is a valid array of two pollfd for the call's duration.
            let ret = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if ret < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            if fds[0].revents != 0 {
                return Ok(Wake::Stop);
            }
            if fds[1].revents != 0 {
                let _ = self.queue.kick.read();
                return Ok(Wake::Kick);
            }
        }
    }
}
