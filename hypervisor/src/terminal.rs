//! Raw mode for the controlling terminal while the guest owns the console,
//! restored on every way out: normal return, error, signal and panic.

use std::io;
use std::os::fd::RawFd;
use std::sync::Mutex;

/// The terminal settings to restore, shared with the panic hook.
static SAVED: Mutex<Option<(RawFd, libc::termios)>> = Mutex::new(None);

/// Puts a terminal in raw mode for as long as it lives.
#[derive(Debug)]
pub struct RawTerminal {
    fd: RawFd,
}

/// Whether `fd` is a terminal.
pub fn is_terminal(fd: RawFd) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

impl RawTerminal {
    /// Switches `fd` to raw input: no line editing, no echo, no signals from
    /// Ctrl-C/Ctrl-Z (they go to the guest), no flow control. Output
    /// post-processing stays on so the VMM's own log lines still end cleanly.
    pub fn enter(fd: RawFd) -> io::Result<Self> {
        // SAFETY: termios is plain data; tcgetattr fills it or fails.
        let mut original: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd and pointer to a termios we own.
        if unsafe { libc::tcgetattr(fd, &mut original) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut raw = original;
        raw.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG | libc::IEXTEN);
        raw.c_iflag &= !(libc::IXON | libc::ICRNL | libc::INLCR | libc::IGNCR | libc::ISTRIP);
        raw.c_cc[libc::VMIN] = 1;
        raw.c_cc[libc::VTIME] = 0;
        *SAVED.lock().unwrap_or_else(|p| p.into_inner()) = Some((fd, original));
        install_panic_restore();
        // SAFETY: valid fd and pointer to an initialized termios.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        restore();
        log::debug!("terminal {} restored", self.fd);
    }
}

/// Restores the saved terminal settings, if any (idempotent).
pub fn restore() {
    let saved = SAVED.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some((fd, original)) = saved {
        // SAFETY: valid fd and pointer to the termios saved earlier.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &original) };
    }
}

fn install_panic_restore() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}
