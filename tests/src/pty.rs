//! Pseudo-terminals for the programs a test runs: bochs draws its screen on one, and the
//! VMM's log is checked on one as a user's terminal shows it.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// Opens a pseudo-terminal pair, (the side a test reads, the side its program writes), with
/// an 80x25 window (what bochs's text screen needs).
pub fn open_pty() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut master: libc::c_int = -1;
    let mut slave: libc::c_int = -1;
    let size = libc::winsize {
        ws_row: 25,
        ws_col: 80,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two descriptors into the provided ints; the name and termios
    // pointers may be null, and `size` outlives the call.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openpty succeeded, so both descriptors are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) })
}
