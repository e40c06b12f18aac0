//! Host path resolution that never leaves a directory and never follows a host symlink.
//!
//! Every store path is resolved with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS)` from the volume's directory fd, so neither a `..` nor a symlink
//! planted in the store can lead outside it.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

/// `struct open_how` of openat2(2); libc marks its own non-exhaustive, so it cannot be built.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// Opens `path` (relative, '/'-separated) beneath `dir` with `flags`, refusing symlinks.
pub fn open_beneath(dir: &impl AsRawFd, path: &CStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC | libc::O_NOFOLLOW) as u64,
        mode: if flags & libc::O_CREAT != 0 {
            u64::from(mode)
        } else {
            0
        },
        resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: `path` is a valid NUL-terminated string and `how` a valid open_how that lives
    // across the call; the kernel reads `size_of(open_how)` bytes from it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Opens the directory reached from `dir` through `parts`, one component at a time (so no
/// path string ever approaches PATH_MAX), refusing symlinks; an `O_PATH` descriptor.
pub fn walk(dir: &impl AsRawFd, parts: &[CString]) -> io::Result<OwnedFd> {
    let mut fd = open_beneath(dir, c".", libc::O_PATH | libc::O_DIRECTORY, 0)?;
    for part in parts {
        fd = open_beneath(&fd, part, libc::O_PATH | libc::O_DIRECTORY, 0)?;
    }
    Ok(fd)
}

/// This process's `/proc/self/fd`, held open: an `O_PATH` descriptor is reopened for I/O, or
/// given a name, through it. Holding it (rather than naming `/proc/self/fd/N` each time) keeps
/// that working after the server's root has changed (`--sandbox chroot`, where `/proc` is out of
/// sight), and walks one component instead of four.
///
/// Open it in the process that uses it: after a `fork`, the child's copy still names the
/// parent's descriptors.
#[derive(Debug, Clone)]
pub struct ProcSelfFd(Arc<OwnedFd>);

impl ProcSelfFd {
    /// Opens `/proc/self/fd` of the calling process.
    pub fn open() -> io::Result<Self> {
        // SAFETY: a constant NUL-terminated path; the result is checked.
        let fd = unsafe {
            libc::open(
                c"/proc/self/fd".as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        check(fd)?;
        // SAFETY: `open` returned a new descriptor that nothing else owns.
        Ok(Self(Arc::new(unsafe { OwnedFd::from_raw_fd(fd) })))
    }

    /// The name of `fd` in this directory: its number.
    fn entry(fd: &impl AsRawFd) -> CString {
        // Digits hold no NUL byte.
        CString::new(fd.as_raw_fd().to_string()).unwrap_or_default()
    }

    /// Opens a regular file beneath `dir` for reading and writing, after checking through an
    /// `O_PATH` descriptor that it is one: a FIFO or device node is never opened for I/O.
    pub fn open_regular_beneath(&self, dir: &impl AsRawFd, path: &CStr) -> io::Result<File> {
        let path_fd = open_beneath(dir, path, libc::O_PATH, 0)?;
        self.reopen_regular(&path_fd, libc::O_RDWR)
    }

    /// Reopens the regular file behind an `O_PATH` descriptor for I/O with `flags`; anything
    /// else (FIFO, device, socket, directory) is refused with EIO and never opened.
    pub fn reopen_regular(&self, path_fd: &impl AsRawFd, flags: i32) -> io::Result<File> {
        let st = fstat(path_fd)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let entry = Self::entry(path_fd);
        // SAFETY: `entry` is NUL-terminated; reopening our own O_PATH fd through its magic
        // link only reaches the file it already names.
        let fd = unsafe {
            libc::openat(
                self.0.as_raw_fd(),
                entry.as_ptr(),
                flags | libc::O_CLOEXEC | libc::O_NOCTTY,
            )
        };
        check(fd)?;
        // SAFETY: `openat` returned a new descriptor that nothing else owns.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    /// Changes the mode of the file behind `fd` (any descriptor, `O_PATH` included).
    pub fn chmod(&self, fd: &impl AsRawFd, mode: u32) -> io::Result<()> {
        let entry = Self::entry(fd);
        // SAFETY: `entry` is NUL-terminated; following our own descriptor's magic link
        // changes only the file it names.
        check(unsafe { libc::fchmodat(self.0.as_raw_fd(), entry.as_ptr(), mode, 0) }).map(|_| ())
    }

    /// Gives the open file `fd` (which has a name, or is an `O_TMPFILE` that may be linked)
    /// the name `name` in `dir`.
    pub fn link(&self, fd: &impl AsRawFd, dir: &impl AsRawFd, name: &CStr) -> io::Result<()> {
        let entry = Self::entry(fd);
        // SAFETY: both names are NUL-terminated; AT_SYMLINK_FOLLOW makes the magic link name
        // the open file itself.
        check(unsafe {
            libc::linkat(
                self.0.as_raw_fd(),
                entry.as_ptr(),
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        })
        .map(|_| ())
    }
}

/// `fstat` on any descriptor.
pub fn fstat(fd: &impl AsRawFd) -> io::Result<libc::stat64> {
    let mut st = std::mem::MaybeUninit::<libc::stat64>::zeroed();
    // SAFETY: `st` is a writable stat64 buffer; the fd is valid for the call.
    let res = unsafe { libc::fstat64(fd.as_raw_fd(), st.as_mut_ptr()) };
    if res < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat64 succeeded, so it filled the buffer (which was zeroed anyway).
    Ok(unsafe { st.assume_init() })
}

/// Turns the result of a libc call returning -1 on error into an `io::Result`.
pub fn check(res: libc::c_int) -> io::Result<libc::c_int> {
    if res < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(res)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotdot_cannot_escape() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = File::open(tmp.path()).unwrap();
        let err = open_beneath(&dir, c"../etc", libc::O_PATH, 0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EXDEV));
    }

    #[test]
    fn symlink_component_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("real")).unwrap();
        std::os::unix::fs::symlink("real", tmp.path().join("link")).unwrap();
        std::fs::write(tmp.path().join("real/f"), b"x").unwrap();
        let dir = File::open(tmp.path()).unwrap();
        assert!(open_beneath(&dir, c"link/f", libc::O_RDONLY, 0).is_err());
        assert!(open_beneath(&dir, c"real/f", libc::O_RDONLY, 0).is_ok());
    }

    #[test]
    fn walk_reaches_paths_longer_than_path_max() {
        let tmp = tempfile::tempdir().unwrap();
        let name = "d".repeat(200);
        let mut path = tmp.path().to_path_buf();
        let mut parts = Vec::new();
        for _ in 0..25 {
            path.push(&name);
            parts.push(CString::new(name.clone()).unwrap());
        }
        std::fs::create_dir_all(&path).unwrap_or_else(|_| {
            // The host refuses one long path; build it a level at a time instead.
            let mut fd = File::open(tmp.path()).unwrap();
            for part in &parts {
                // SAFETY: valid fd and NUL-terminated name.
                unsafe { libc::mkdirat(fd.as_raw_fd(), part.as_ptr(), 0o700) };
                fd = File::from(
                    open_beneath(&fd, part, libc::O_RDONLY | libc::O_DIRECTORY, 0).unwrap(),
                );
            }
        });
        let dir = File::open(tmp.path()).unwrap();
        assert!(walk(&dir, &parts).is_ok());
    }

    #[test]
    fn fifo_is_never_opened_for_io() {
        let tmp = tempfile::tempdir().unwrap();
        let fifo =
            CString::new(tmp.path().join("p").into_os_string().into_encoded_bytes()).unwrap();
        // SAFETY: valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let dir = File::open(tmp.path()).unwrap();
        let err = ProcSelfFd::open()
            .unwrap()
            .open_regular_beneath(&dir, c"p")
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO));
    }
}
