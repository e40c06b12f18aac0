//! How devices (and vCPUs) ask the VMM to stop the VM.

use std::io;
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why the VM stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest wrote this code to the exit port.
    GuestExitCode(u8),
    /// The guest asked for a reset (keyboard-controller reset or triple fault).
    GuestReset,
    /// The user typed the console escape sequence.
    UserEscape,
    /// The VMM received this signal (SIGTERM, SIGHUP, SIGINT when not a TTY).
    Signal(i32),
    /// A vCPU hit an error it cannot recover from; it was reported in the log.
    VcpuFailure,
}

impl ExitReason {
    /// The process exit code this reason maps to.
    ///
    /// The guest's own code is passed through; a reset is a clean stop (0),
    /// like a power-off; a signal gives the shell convention 128 + signal.
    pub fn exit_code(self) -> i32 {
        match self {
            ExitReason::GuestExitCode(code) => i32::from(code),
            ExitReason::GuestReset | ExitReason::UserEscape => 0,
            ExitReason::Signal(signo) => 128 + signo,
            ExitReason::VcpuFailure => 1,
        }
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::GuestExitCode(code) => write!(f, "the guest wrote exit code {code}"),
            ExitReason::GuestReset => write!(f, "the guest reset itself (reboot)"),
            ExitReason::UserEscape => write!(f, "the console escape sequence was typed"),
            ExitReason::Signal(signo) => write!(f, "the VMM received signal {signo}"),
            ExitReason::VcpuFailure => write!(f, "a vCPU failed"),
        }
    }
}

struct Inner {
    evt: EventFd,
    reason: Mutex<Option<ExitReason>>,
}

/// A cloneable handle through which anything can ask for the VM to stop.
///
/// The first reason recorded wins; later requests only wake the event loop
/// again. The eventfd is what the VMM's event loop waits on.
#[derive(Clone)]
pub struct VmExitRequest {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for VmExitRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmExitRequest")
            .field("reason", &self.reason())
            .finish()
    }
}

impl VmExitRequest {
    /// Creates a handle with a fresh non-blocking eventfd.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            inner: Arc::new(Inner {
                evt: EventFd::new(EFD_NONBLOCK)?,
                reason: Mutex::new(None),
            }),
        })
    }

    /// Records `reason` (unless one is already recorded) and wakes the VMM.
    pub fn request(&self, reason: ExitReason) {
        {
            let mut slot = self
                .inner
                .reason
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            slot.get_or_insert(reason);
        }
        // A full eventfd counter still wakes the reader, so an error here
        // (EAGAIN at u64::MAX - 1) loses nothing.
        let _ = self.inner.evt.write(1);
    }

    /// The recorded reason, if the VM was asked to stop.
    pub fn reason(&self) -> Option<ExitReason> {
        *self
            .inner
            .reason
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The eventfd that becomes readable once a stop was requested.
    pub fn eventfd(&self) -> &EventFd {
        &self.inner.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let exit = VmExitRequest::new().unwrap();

        exit.request(ExitReason::GuestExitCode(4));
        exit.clone().request(ExitReason::GuestReset);

        assert_eq!(exit.reason(), Some(ExitReason::GuestExitCode(4)));
    }

    #[test]
    fn request_makes_eventfd_readable() {
        let exit = VmExitRequest::new().unwrap();
        assert!(exit.eventfd().read().is_err(), "no request yet");

        exit.request(ExitReason::UserEscape);

        assert_eq!(exit.eventfd().read().unwrap(), 1);
    }

    #[test]
    fn exit_codes_follow_shell_conventions() {
        assert_eq!(ExitReason::GuestExitCode(42).exit_code(), 42);
        assert_eq!(ExitReason::GuestReset.exit_code(), 0);
        assert_eq!(ExitReason::Signal(libc::SIGTERM).exit_code(), 143);
        assert_eq!(ExitReason::VcpuFailure.exit_code(), 1);
    }
}
