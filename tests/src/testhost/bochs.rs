//! Starting and stopping bochs: its own pseudo-terminal, its own session, SIGKILL, lock files.
//!
//! Debian's bochs has no head-less display; `display_library: term` draws the emulated VGA text
//! screen with curses on its terminal. CI has no terminal, so bochs gets a pseudo-terminal from
//! us, and a thread drains what it draws (otherwise bochs blocks once the pty buffer is full).
//! Bochs ignores SIGTERM: it is stopped with SIGKILL, which leaves `IMAGE.lock` files beside its
//! disk images; [`remove_locks`] deletes them.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;

/// How much of bochs's terminal output is kept for error messages.
const SCREEN_TAIL_BYTES: usize = 8192;

/// A running bochs process. Dropping it kills bochs and its process group.
pub struct Bochs {
    child: Child,
    locks: Vec<PathBuf>,
    screen: Arc<Mutex<Vec<u8>>>,
}

impl Bochs {
    /// Starts `bochs -q -f BOCHSRC -rc RCFILE` with `env` added to its environment, on a fresh
    /// pseudo-terminal in a new session. `disks` are the disk images it will lock.
    pub fn spawn(
        bochsrc: &Path,
        rcfile: &Path,
        env: &[(&str, &Path)],
        disks: &[&Path],
    ) -> io::Result<Bochs> {
        let (master, slave) = crate::pty::open_pty()?;
        let mut cmd = Command::new("bochs");
        cmd.arg("-q")
            .arg("-f")
            .arg(bochsrc)
            .arg("-rc")
            .arg(rcfile)
            .env("TERM", "vt100")
            .stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave));
        for (k, v) in env {
            cmd.env(k, v);
        }
        // SAFETY: the closure only calls async-signal-safe functions (setsid, ioctl) between
        // fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                // Make the pty (already on fd 0) the controlling terminal, as curses expects.
                if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        // Our copies of the slave end were closed with `cmd` arguments; drain the master until
        // bochs goes away (read then fails with EIO).
        drop(cmd);
        let mut pty = File::from(master);
        let screen = Arc::new(Mutex::new(Vec::new()));
        let tail = Arc::clone(&screen);
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pty.read(&mut buf) {
                if n == 0 {
                    break;
                }
                // Keep the tail: bochs prints its fatal errors here, not in its log file.
                let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
                tail.extend_from_slice(&buf[..n]);
                let excess = tail.len().saturating_sub(SCREEN_TAIL_BYTES);
                tail.drain(..excess);
            }
        });
        Ok(Bochs {
            child,
            locks: disks.iter().map(|d| lock_path(d)).collect(),
            screen,
        })
    }

    /// The last lines bochs wrote to its terminal, without terminal control sequences.
    pub fn screen_tail(&self, lines: usize) -> String {
        let raw = self
            .screen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let text = strip_control_sequences(&String::from_utf8_lossy(&raw));
        let kept: Vec<&str> = text
            .lines()
            .map(str::trim_end)
            .filter(|l| !l.trim().is_empty())
            .collect();
        kept[kept.len().saturating_sub(lines)..].join("\n")
    }

    /// Returns the exit status if bochs has exited.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// Kills bochs (SIGKILL to its process group), reaps it and removes its lock files.
    pub fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = self.child.id() as libc::pid_t;
            // SAFETY: kill has no memory effects; -pid names the process group bochs leads
            // (it called setsid), which contains only bochs and anything it started.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            // Reap; an error means it was reaped already.
            let _ = self.child.wait();
        }
        for lock in &self.locks {
            remove_lock(lock);
        }
    }
}

impl Drop for Bochs {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Removes ANSI escape sequences (curses screen updates) and other control characters.
fn strip_control_sequences(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                // CSI: ESC [ parameters final-byte; character sets: ESC ( X and similar;
                // other escapes: ESC + one character.
                match chars.next() {
                    Some('[') => {
                        for c in chars.by_ref() {
                            if ('@'..='~').contains(&c) {
                                break;
                            }
                        }
                    }
                    Some('(' | ')' | '*' | '+') => {
                        chars.next();
                    }
                    _ => {}
                }
            }
            '\n' => out.push('\n'),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// The lock file bochs creates beside a disk image.
pub fn lock_path(disk: &Path) -> PathBuf {
    let mut name = disk.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

fn remove_lock(lock: &Path) {
    match std::fs::remove_file(lock) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => eprintln!("testhost: warning: cannot remove {}: {e}", lock.display()),
    }
}

/// Removes stale bochs lock files beside `disks` (call only while holding the run lock).
pub fn remove_locks(disks: &[&Path]) {
    for disk in disks {
        remove_lock(&lock_path(disk));
    }
}

/// Whether a `bochs` executable is on PATH.
pub fn bochs_installed() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join("bochs").is_file()))
}

/// An exclusive advisory lock on a file, held until dropped.
pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// Takes the lock on `path` (creating it), calling `waiting` first if someone else holds it.
    pub fn acquire(path: &Path, waiting: impl FnOnce()) -> io::Result<RunLock> {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        let fd = file.as_raw_fd();
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            waiting();
            // SAFETY: as above.
            if unsafe { libc::flock(fd, libc::LOCK_EX) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(RunLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_sequences_are_removed_from_screen_text() {
        let raw = "\u{1b}[2J\u{1b}[1;1HBochs is exiting\r\n\u{1b}(Bmessage\n";

        assert_eq!(strip_control_sequences(raw), "Bochs is exiting\nmessage\n");
    }
}
