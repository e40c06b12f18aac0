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

/// Opens the directory reached from `dir` through `parts`, refusing symlinks; an `O_PATH`
/// descriptor. See [`open_parts`] for how.
pub fn walk(dir: &impl AsRawFd, parts: &[CString]) -> io::Result<OwnedFd> {
    open_parts(dir, parts, libc::O_PATH | libc::O_DIRECTORY)
}

/// Opens what `parts` (path components, each one validated name) lead to beneath `dir` with
/// `flags` (no `O_CREAT`), refusing symlinks anywhere on the way: with one `openat2` of the
/// joined path when it fits `PATH_MAX`, else one component at a time, so no path string
/// handed to the kernel is ever too long. No components: `dir` itself, opened again.
pub fn open_parts(dir: &impl AsRawFd, parts: &[CString], flags: i32) -> io::Result<OwnedFd> {
    let Some((last, dirs)) = parts.split_last() else {
        return open_beneath(dir, c".", flags, 0);
    };
    let len = parts.iter().map(|p| p.as_bytes().len() + 1).sum::<usize>();
    if len <= libc::PATH_MAX as usize {
        let mut path = Vec::with_capacity(len);
        for part in parts {
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(part.as_bytes());
        }
        // Joined from C strings: no NUL inside.
        let path = CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        return open_beneath(dir, &path, flags, 0);
    }
    let mut fd = open_beneath(dir, c".", libc::O_PATH | libc::O_DIRECTORY, 0)?;
    for part in dirs {
        fd = open_beneath(&fd, part, libc::O_PATH | libc::O_DIRECTORY, 0)?;
    }
    open_beneath(&fd, last, flags, 0)
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

/// `setxattrat(2)` and its siblings (Linux 6.13): the same number on every architecture.
const SYS_SETXATTRAT: libc::c_long = 463;
const SYS_GETXATTRAT: libc::c_long = 464;
const SYS_LISTXATTRAT: libc::c_long = 465;
const SYS_REMOVEXATTRAT: libc::c_long = 466;

/// Reads attribute `name` of entry `entry` of directory `dir` (not following a symlink) into
/// `buf`, as [`ProcSelfFd::getxattr`] does for a descriptor: one `getxattrat(2)` (Linux
/// 6.13), where opening the entry and reading through its descriptor would take three calls.
pub fn getxattr_entry(
    dir: &impl AsRawFd,
    entry: &CStr,
    name: &CStr,
    buf: &mut Vec<u8>,
) -> io::Result<usize> {
    getxattr_at(dir, entry, libc::AT_SYMLINK_NOFOLLOW, name, buf)
}

/// `getxattrat(2)` of attribute `name` of entry `entry` of `dir` (`at_flags`: 0 or
/// AT_SYMLINK_NOFOLLOW) into `buf`, as [`fill_capacity`] fills it.
fn getxattr_at(
    dir: &impl AsRawFd,
    entry: &CStr,
    at_flags: libc::c_int,
    name: &CStr,
    buf: &mut Vec<u8>,
) -> io::Result<usize> {
    fill_capacity(buf, |value, size| {
        let mut args = XattrArgs {
            value: value as u64,
            size: u32::try_from(size).unwrap_or(u32::MAX),
            flags: 0,
        };
        // SAFETY: NUL-terminated strings, and an xattr_args naming a buffer of `size`
        // writable bytes, which the kernel writes at most.
        unsafe {
            libc::syscall(
                SYS_GETXATTRAT,
                dir.as_raw_fd(),
                entry.as_ptr(),
                at_flags,
                name.as_ptr(),
                &mut args as *mut XattrArgs,
                std::mem::size_of::<XattrArgs>(),
            )
        }
    })
}

/// `struct xattr_args` of `setxattrat(2)` and `getxattrat(2)`.
#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

/// Extended attributes of the file behind any descriptor, `O_PATH` ones included (which the
/// `f*xattr` calls refuse), named as an entry of the held `/proc/self/fd`: the `*xattrat`
/// calls of Linux 6.13 follow that magic link to the file itself, a symlink included. Unlike
/// the path `/proc/self/fd/N`, this works whatever the process's root is.
impl ProcSelfFd {
    /// True if the kernel has the `*xattrat` calls (Linux 6.13 and later).
    pub fn has_xattr_at(&self) -> bool {
        let mut args = XattrArgs {
            value: 0,
            size: 0,
            flags: 0,
        };
        // SAFETY: constant NUL-terminated strings and a valid xattr_args of the size given;
        // with a size of 0 the kernel writes nothing.
        let rc = unsafe {
            libc::syscall(
                SYS_GETXATTRAT,
                self.0.as_raw_fd(),
                c".".as_ptr(),
                0,
                c"user.fsredirect-probe".as_ptr(),
                &mut args as *mut XattrArgs,
                std::mem::size_of::<XattrArgs>(),
            )
        };
        rc >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS)
    }

    /// Reads attribute `name` of the file behind `fd` into `buf`, replacing its contents, at
    /// most its capacity (ERANGE if the value is longer); a capacity of 0 asks only for the
    /// value's size. Returns the value's length.
    pub fn getxattr(&self, fd: &impl AsRawFd, name: &CStr, buf: &mut Vec<u8>) -> io::Result<usize> {
        // The magic link is followed: to the file itself.
        getxattr_at(&*self.0, &Self::entry(fd), 0, name, buf)
    }

    /// Sets attribute `name` of the file behind `fd` to `value`, with `setxattr(2)`'s
    /// `flags`.
    pub fn setxattr(
        &self,
        fd: &impl AsRawFd,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        let entry = Self::entry(fd);
        let args = XattrArgs {
            value: value.as_ptr() as u64,
            size: u32::try_from(value.len())
                .map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?,
            flags,
        };
        // SAFETY: NUL-terminated strings, and an xattr_args naming `value` with its length,
        // which the kernel only reads.
        let rc = unsafe {
            libc::syscall(
                SYS_SETXATTRAT,
                self.0.as_raw_fd(),
                entry.as_ptr(),
                0,
                name.as_ptr(),
                &args as *const XattrArgs,
                std::mem::size_of::<XattrArgs>(),
            )
        };
        syscall_len(rc).map(drop)
    }

    /// Lists the attribute names of the file behind `fd` into `buf` (NUL-separated),
    /// replacing its contents, at most its capacity (ERANGE if the list is longer); a
    /// capacity of 0 asks only for the list's size. Returns the list's length.
    pub fn listxattr(&self, fd: &impl AsRawFd, buf: &mut Vec<u8>) -> io::Result<usize> {
        let entry = Self::entry(fd);
        // SAFETY: a NUL-terminated string, and a buffer of `size` writable bytes, which the
        // kernel writes at most.
        fill_capacity(buf, |list, size| unsafe {
            libc::syscall(
                SYS_LISTXATTRAT,
                self.0.as_raw_fd(),
                entry.as_ptr(),
                0,
                list,
                size,
            )
        })
    }

    /// Removes attribute `name` of the file behind `fd`.
    pub fn removexattr(&self, fd: &impl AsRawFd, name: &CStr) -> io::Result<()> {
        let entry = Self::entry(fd);
        // SAFETY: NUL-terminated strings; the kernel only reads them.
        let rc = unsafe {
            libc::syscall(
                SYS_REMOVEXATTRAT,
                self.0.as_raw_fd(),
                entry.as_ptr(),
                0,
                name.as_ptr(),
            )
        };
        syscall_len(rc).map(drop)
    }

    /// A new `O_PATH` descriptor of the file with device `dev` and inode number `ino`, found
    /// among this process's own descriptors; `None` if none holds it. While a descriptor
    /// holds a file, no other file can have its number, so any descriptor found is of that
    /// very file. Costs a `stat` per descriptor the process holds: for the rare file no known
    /// path leads to.
    pub fn find(&self, dev: u64, ino: u64) -> io::Result<Option<OwnedFd>> {
        for entry in self.entries()? {
            let Ok(st) = self.stat_entry(&entry) else {
                continue;
            };
            if st.st_dev != dev || st.st_ino != ino {
                continue;
            }
            // SAFETY: `entry` is NUL-terminated; the magic link leads to the file it names.
            let fd = unsafe {
                libc::openat(
                    self.0.as_raw_fd(),
                    entry.as_ptr(),
                    libc::O_PATH | libc::O_CLOEXEC,
                )
            };
            if fd < 0 {
                continue;
            }
            // SAFETY: `openat` returned a new descriptor that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // The descriptor may have been closed and its number reused in between.
            if fstat(&fd).is_ok_and(|st| st.st_dev == dev && st.st_ino == ino) {
                return Ok(Some(fd));
            }
        }
        Ok(None)
    }

    /// The names of this process's descriptors now.
    fn entries(&self) -> io::Result<Vec<CString>> {
        // SAFETY: a constant NUL-terminated path; the result is checked.
        let fd = check(unsafe {
            libc::openat(
                self.0.as_raw_fd(),
                c".".as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: `fd` is a new directory descriptor; the stream owns it from here, and
        // closedir closes it.
        let dir = unsafe { libc::fdopendir(fd) };
        if dir.is_null() {
            let err = io::Error::last_os_error();
            // SAFETY: fdopendir failed, so `fd` is still ours to close.
            unsafe { libc::close(fd) };
            return Err(err);
        }
        let mut names = Vec::new();
        loop {
            // SAFETY: `dir` is an open stream; the entry it returns lives until the next call.
            let entry = unsafe { libc::readdir64(dir) };
            if entry.is_null() {
                break;
            }
            // SAFETY: d_name is NUL-terminated within the entry.
            let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) };
            if name.to_bytes().first().is_some_and(u8::is_ascii_digit) {
                names.push(name.to_owned());
            }
        }
        // SAFETY: `dir` is an open stream, closed once.
        unsafe { libc::closedir(dir) };
        Ok(names)
    }

    /// `stat` of the file an entry's magic link leads to.
    fn stat_entry(&self, entry: &CStr) -> io::Result<libc::stat64> {
        let mut st = std::mem::MaybeUninit::<libc::stat64>::zeroed();
        // SAFETY: `entry` is NUL-terminated and `st` a writable stat64 buffer.
        check(unsafe { libc::fstatat64(self.0.as_raw_fd(), entry.as_ptr(), st.as_mut_ptr(), 0) })?;
        // SAFETY: fstatat64 succeeded, so it filled the buffer (which was zeroed anyway).
        Ok(unsafe { st.assume_init() })
    }
}

/// The result of a system call returning a length, or -1 with errno.
/// Empties `buf` and has `call` fill its capacity (a pointer to it and its size) with as many
/// bytes as it returns, as the `*xattr` calls do (a size of 0 asks only for the length); `buf`
/// then holds those bytes. Returns the length `call` returned.
fn fill_capacity(
    buf: &mut Vec<u8>,
    call: impl FnOnce(*mut u8, usize) -> libc::c_long,
) -> io::Result<usize> {
    buf.clear();
    let spare = buf.spare_capacity_mut();
    let len = syscall_len(call(spare.as_mut_ptr().cast(), spare.len()))?;
    if len <= buf.capacity() {
        // SAFETY: `call` wrote `len` bytes at the start of the capacity, which holds them. (A
        // longer value fails with ERANGE; a size query leaves `buf` empty.)
        unsafe { buf.set_len(len) };
    }
    Ok(len)
}

fn syscall_len(rc: libc::c_long) -> io::Result<usize> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
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

/// Whether the host keeps the file behind `fd` append-only (`chattr +a`; `statx`'s
/// `STATX_ATTR_APPEND`).
pub fn is_append_only(fd: &impl AsRawFd) -> io::Result<bool> {
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: `stx` is a writable statx buffer, the path a NUL-terminated empty string (with
    // AT_EMPTY_PATH the call stats `fd` itself), the fd valid for the call.
    let res = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            0,
            stx.as_mut_ptr(),
        )
    };
    if res < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statx succeeded, so it filled the buffer (which was zeroed anyway).
    let stx = unsafe { stx.assume_init() };
    Ok(stx.stx_attributes & libc::STATX_ATTR_APPEND as u64 != 0)
}

/// The attributes of entry `name` (one component) of directory `dir`, without following it
/// if it is a symlink.
pub fn stat_name(dir: &impl AsRawFd, name: &CStr) -> io::Result<libc::stat64> {
    let mut st = std::mem::MaybeUninit::<libc::stat64>::zeroed();
    // SAFETY: `st` is a writable stat64 buffer, `name` NUL-terminated, the fd valid for the
    // call; the call writes nothing else.
    let res = unsafe {
        libc::fstatat64(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    check(res)?;
    // SAFETY: fstatat64 succeeded, so it filled the buffer (which was zeroed anyway).
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
        // The component walk refuses a symlink too: the last directory replaced by one.
        let fd = walk(&dir, &parts[..parts.len() - 1]).unwrap();
        let last = parts.last().unwrap();
        // SAFETY: valid fd and NUL-terminated names.
        unsafe {
            assert_eq!(
                libc::unlinkat(fd.as_raw_fd(), last.as_ptr(), libc::AT_REMOVEDIR),
                0
            );
            assert_eq!(
                libc::symlinkat(c".".as_ptr(), fd.as_raw_fd(), last.as_ptr()),
                0
            );
        }
        // O_NOFOLLOW | O_DIRECTORY on the symlink itself: ENOTDIR.
        let err = walk(&dir, &parts).unwrap_err().raw_os_error();
        assert_eq!(err, Some(libc::ENOTDIR));
    }

    #[test]
    fn open_parts_refuses_a_symlink_anywhere_on_the_way() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("a/real")).unwrap();
        std::fs::write(tmp.path().join("a/real/f"), b"x").unwrap();
        std::os::unix::fs::symlink("real", tmp.path().join("a/link")).unwrap();
        std::os::unix::fs::symlink("f", tmp.path().join("a/real/l")).unwrap();
        let dir = File::open(tmp.path()).unwrap();
        let parts =
            |p: &str| -> Vec<CString> { p.split('/').map(|c| CString::new(c).unwrap()).collect() };
        assert!(open_parts(&dir, &parts("a/real/f"), libc::O_RDONLY).is_ok());
        for refused in ["a/link/f", "a/real/l"] {
            let err = open_parts(&dir, &parts(refused), libc::O_RDONLY).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::ELOOP), "{refused}");
        }
        assert!(open_parts(&dir, &[], libc::O_PATH | libc::O_DIRECTORY).is_ok());
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
