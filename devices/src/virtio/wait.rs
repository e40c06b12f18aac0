//! Waiting for the first of several descriptors to become readable (eventfds, a listening
//! socket), on the host's epoll through vmm-sys-util: what the device's queue workers and the
//! vhost-user back-end block on.

use std::io;
use std::os::fd::RawFd;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// An epoll set over descriptors known by their position in the list it was made from.
pub struct Waiter {
    epoll: Epoll,
    ready: Vec<EpollEvent>,
}

impl Waiter {
    /// Watches each of `fds` for input; a descriptor is known by its index in `fds`.
    pub fn new(fds: &[RawFd]) -> io::Result<Self> {
        let epoll = Epoll::new()?;
        for (index, &fd) in fds.iter().enumerate() {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, index as u64),
            )?;
        }
        Ok(Waiter {
            epoll,
            ready: vec![EpollEvent::default(); fds.len().max(1)],
        })
    }

    /// Blocks until at least one descriptor is readable (level-triggered: nothing is
    /// consumed) and returns the lowest index among the ready ones, so that a descriptor
    /// listed first (a stop request) wins over the others.
    pub fn wait(&mut self) -> io::Result<usize> {
        loop {
            match self.epoll.wait(-1, &mut self.ready) {
                Ok(0) => continue,
                Ok(n) => {
                    let first = self.ready[..n].iter().map(|e| e.data()).min();
                    return Ok(first.unwrap_or(0) as usize);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::*;

    #[test]
    fn the_first_listed_ready_descriptor_wins() {
        let a = EventFd::new(EFD_NONBLOCK).unwrap();
        let b = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut waiter = Waiter::new(&[a.as_raw_fd(), b.as_raw_fd()]).unwrap();
        b.write(1).unwrap();
        assert_eq!(waiter.wait().unwrap(), 1);
        a.write(1).unwrap();
        assert_eq!(waiter.wait().unwrap(), 0, "both ready: the first listed");
        a.read().unwrap();
        assert_eq!(waiter.wait().unwrap(), 1, "nothing was consumed");
    }

    #[test]
    fn a_wait_blocks_until_another_thread_writes() {
        let a = EventFd::new(EFD_NONBLOCK).unwrap();
        let writer = a.try_clone().unwrap();
        let mut waiter = Waiter::new(&[a.as_raw_fd()]).unwrap();
        let thread = std::thread::spawn(move || writer.write(1).unwrap());
        assert_eq!(waiter.wait().unwrap(), 0);
        thread.join().unwrap();
    }
}
