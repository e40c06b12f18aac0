//! Process signals: the vCPU kick signal, and SIGTERM/SIGHUP/SIGINT turned
//! into an orderly VM stop (so threads are joined and the terminal restored).

use std::sync::atomic::{AtomicI32, Ordering};

use devices::{ExitReason, VmExitRequest};
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

/// Signals that stop the VM.
pub const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGHUP, libc::SIGINT];

/// The eventfd the stop-signal handler writes to (-1 when none).
static STOP_EVENT_FD: AtomicI32 = AtomicI32::new(-1);
/// The last stop signal received.
static LAST_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// The signal used to kick vCPU threads out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

/// Installs the vCPU kick handler (process-wide, idempotent).
pub fn install_kick_handler() -> std::io::Result<()> {
    register_signal_handler(kick_signal(), crate::vcpu::kick_handler)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

extern "C" fn stop_handler(signo: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    LAST_SIGNAL.store(signo, Ordering::SeqCst);
    let fd = STOP_EVENT_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; `one` is valid for 8 bytes.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

/// The stop signals ([`STOP_SIGNALS`]) made readable on an eventfd while this lives; one
/// at a time in the process.
pub struct StopEvent {
    evt: EventFd,
}

impl StopEvent {
    /// Installs the handlers for [`STOP_SIGNALS`], writing to a new eventfd.
    pub fn install() -> std::io::Result<Self> {
        let evt = EventFd::new(EFD_NONBLOCK)?;
        use std::os::fd::AsRawFd;
        STOP_EVENT_FD.store(evt.as_raw_fd(), Ordering::SeqCst);
        for signo in STOP_SIGNALS {
            register_signal_handler(signo, stop_handler)
                .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
        }
        Ok(Self { evt })
    }

    /// Readable once a stop signal has arrived.
    pub fn event(&self) -> &EventFd {
        &self.evt
    }

    /// The last stop signal received in this process (0: none yet).
    pub fn last_signal() -> libc::c_int {
        LAST_SIGNAL.load(Ordering::SeqCst)
    }
}

impl Drop for StopEvent {
    fn drop(&mut self) {
        // The handlers stay installed but no longer write anywhere; a later
        // signal is then ignored rather than written to a closed fd.
        STOP_EVENT_FD.store(-1, Ordering::SeqCst);
    }
}

/// The name of a stop signal, for messages.
pub fn signal_name(signo: libc::c_int) -> &'static str {
    match signo {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "a stop signal",
    }
}

/// Watches for stop signals and asks the VM to stop when one arrives.
pub struct SignalWatcher {
    stop: StopEvent,
    exit: VmExitRequest,
}

impl SignalWatcher {
    /// Installs the handlers for [`STOP_SIGNALS`].
    pub fn install(exit: VmExitRequest) -> std::io::Result<Self> {
        Ok(Self {
            stop: StopEvent::install()?,
            exit,
        })
    }
}

impl MutEventSubscriber for SignalWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(err) = ops.add(Events::new(self.stop.event(), EventSet::IN)) {
            log::warn!(
                "cannot watch for SIGTERM/SIGHUP ({err:?}); they will not stop the VM cleanly"
            );
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.stop.event().read();
        let signo = StopEvent::last_signal();
        log::info!("received signal {signo}; stopping the VM");
        self.exit.request(ExitReason::Signal(signo));
    }
}
