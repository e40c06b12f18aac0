//! Directory listings read from the server's own descriptor of each open directory.
//!
//! A READDIR is one `lseek` and one `getdents64`, and each entry carries the host's inode
//! number, the same `stat` reports for the file. The passthrough layer's READDIR instead
//! looks every entry up (a handle, an open, a `statx` and a forget each) only to report its
//! FUSE node id, which is not the inode number the guest's `stat` sees.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Mutex, MutexGuard};

use fuse_backend_rs::api::filesystem::DirEntry;

use super::errno;

/// Most bytes of host directory entries read at once, whatever size the guest asks for: a
/// host entry is never larger than the FUSE entry it becomes, so this fills any reply up to
/// this size, and a guest cannot make the server allocate more.
const MAX_LISTING: usize = 128 * 1024;

/// Fewest bytes read at once, so that a small reply still gets an entry with the longest
/// name (a `getdents64` buffer too small for the next entry is an error); entries read but
/// not sent are read again by the next READDIR, from the offset of the last one sent.
const MIN_LISTING: usize = 1024;

/// Size of `struct linux_dirent64` before its name: inode, offset, record length, type.
const DIRENT_HEADER: usize = 8 + 8 + 2 + 1;

/// An open directory, as the guest listed it.
#[derive(Debug)]
pub(super) struct DirStream {
    /// The directory; its file position is where the next `getdents64` reads, so each
    /// READDIR seeks and reads under this lock.
    dir: Mutex<File>,
}

impl DirStream {
    /// A listing of the directory open as `dir` (opened with `O_RDONLY | O_DIRECTORY`).
    pub fn new(dir: File) -> Self {
        DirStream {
            dir: Mutex::new(dir),
        }
    }

    /// The directory, for an fsync; no listing goes on meanwhile.
    pub fn file(&self) -> MutexGuard<'_, File> {
        // A panic elsewhere cannot leave a descriptor half-changed.
        self.dir.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Passes the entries after `offset` (0, or the offset of an entry passed before) to
    /// `add_entry`, for a reply of at most `size` bytes, until it returns 0 (no room left).
    /// `.` and `..` are left out, as the kernel's FUSE client expects; a regular file's type
    /// is reported as unknown, for the guest to ask (an inert special file is a regular file
    /// on the host).
    pub fn read(
        &self,
        offset: u64,
        size: u32,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        if size == 0 {
            return Ok(());
        }
        let offset = i64::try_from(offset).map_err(|_| errno(libc::EINVAL))?;
        let mut buf = vec![0u8; (size as usize).clamp(MIN_LISTING, MAX_LISTING)];
        let dir = self.file();
        // SAFETY: lseek on a descriptor this stream owns; no memory is involved.
        if unsafe { libc::lseek64(dir.as_raw_fd(), offset, libc::SEEK_SET) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // An empty reply means the end of the directory: if a read held only `.` and `..`,
        // read on.
        loop {
            let filled = read_entries(&dir, &mut buf)?;
            if filled == 0 {
                return Ok(());
            }
            let mut added = 0usize;
            for entry in Entries(&buf[..filled]) {
                let entry = match entry {
                    Ok(entry) => entry,
                    // As for an error of `add_entry` below.
                    Err(_) if added > 0 => return Ok(()),
                    Err(e) => return Err(e),
                };
                if entry.name == b"." || entry.name == b".." {
                    continue;
                }
                match add_entry(entry) {
                    Ok(0) => return Ok(()),
                    Ok(_) => added += 1,
                    // An entry already in the reply cannot be taken back: send what is there.
                    Err(_) if added > 0 => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
            if added > 0 {
                return Ok(());
            }
        }
    }
}

/// One `getdents64` of `dir` into `buf`: the bytes filled (0 at the end).
fn read_entries(dir: &File, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`, which lives across the
    // call; the result is checked.
    let n = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            dir.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((n as usize).min(buf.len()))
}

/// The entries of a `getdents64` buffer, regular files typed as unknown.
struct Entries<'a>(&'a [u8]);

impl<'a> Iterator for Entries<'a> {
    type Item = io::Result<DirEntry<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let parsed = parse_entry(self.0);
        match parsed {
            Some((entry, reclen)) => {
                self.0 = &self.0[reclen..];
                Some(Ok(entry))
            }
            None => {
                // The kernel wrote it: a malformed record is a bug there, never a guest's.
                self.0 = &[];
                Some(Err(errno(libc::EIO)))
            }
        }
    }
}

/// The entry at the start of `buf` and its record length, if it is well formed.
fn parse_entry(buf: &[u8]) -> Option<(DirEntry<'_>, usize)> {
    let header = buf.get(..DIRENT_HEADER)?;
    let ino = u64::from_ne_bytes(header[0..8].try_into().ok()?);
    let offset = i64::from_ne_bytes(header[8..16].try_into().ok()?) as u64;
    let reclen = usize::from(u16::from_ne_bytes(header[16..18].try_into().ok()?));
    let kind = header[18];
    let name = buf.get(DIRENT_HEADER..reclen)?;
    let name = &name[..name.iter().position(|&b| b == 0)?];
    if name.is_empty() {
        return None;
    }
    let kind = match kind {
        libc::DT_REG => libc::DT_UNKNOWN,
        other => other,
    };
    Some((
        DirEntry {
            ino,
            offset,
            type_: u32::from(kind),
            name,
        },
        reclen,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::os::unix::fs::MetadataExt;

    fn open_dir(path: &std::path::Path) -> DirStream {
        DirStream::new(File::open(path).unwrap())
    }

    /// Lists everything, `size` bytes of entries a request (entries of about 32 bytes each
    /// fit a FUSE reply of that size), the way the kernel does: from the offset of the last
    /// entry it got.
    fn list(stream: &DirStream, size: u32) -> BTreeMap<String, (u64, u32)> {
        let mut all = BTreeMap::new();
        let mut offset = 0;
        loop {
            let mut room = size as usize;
            let mut got = 0;
            stream
                .read(offset, size, &mut |e| {
                    let need = 24 + e.name.len().next_multiple_of(8);
                    if need > room {
                        return Ok(0);
                    }
                    room -= need;
                    got += 1;
                    offset = e.offset;
                    let name = String::from_utf8(e.name.to_vec()).unwrap();
                    assert!(all.insert(name, (e.ino, e.type_)).is_none(), "listed twice");
                    Ok(need)
                })
                .unwrap();
            if got == 0 {
                return all;
            }
        }
    }

    #[test]
    fn lists_every_entry_once_with_host_inode_numbers_in_small_replies() {
        let tmp = tempfile::tempdir().unwrap();
        for i in 0..300 {
            std::fs::write(tmp.path().join(format!("file-{i:03}")), b"x").unwrap();
        }
        std::fs::create_dir(tmp.path().join("sub")).unwrap();
        std::os::unix::fs::symlink("file-000", tmp.path().join("link")).unwrap();
        let stream = open_dir(tmp.path());
        for size in [64, 512, 4096, 1 << 20] {
            let all = list(&stream, size);
            assert_eq!(all.len(), 302, "reply size {size}");
            for (name, (ino, kind)) in &all {
                let meta = std::fs::symlink_metadata(tmp.path().join(name)).unwrap();
                assert_eq!(*ino, meta.ino(), "{name}");
                let want = match name.as_str() {
                    "sub" => libc::DT_DIR,
                    "link" => libc::DT_LNK,
                    _ => libc::DT_UNKNOWN,
                };
                assert_eq!(*kind, u32::from(want), "{name}");
            }
        }
    }

    #[test]
    fn no_room_and_empty_requests_list_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("a"), b"").unwrap();
        let stream = open_dir(tmp.path());
        let mut calls = 0;
        stream
            .read(0, 0, &mut |_| {
                calls += 1;
                Ok(1)
            })
            .unwrap();
        assert_eq!(calls, 0);
        stream
            .read(0, 4096, &mut |_| {
                calls += 1;
                Ok(0)
            })
            .unwrap();
        assert_eq!(calls, 1, "stops at the first entry that does not fit");
    }

    #[test]
    fn an_error_before_any_entry_is_the_reply_and_after_one_ends_it() {
        let tmp = tempfile::tempdir().unwrap();
        for name in ["a", "b", "c"] {
            std::fs::write(tmp.path().join(name), b"").unwrap();
        }
        let stream = open_dir(tmp.path());
        let err = stream
            .read(0, 4096, &mut |_| Err(errno(libc::EFAULT)))
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EFAULT));
        let mut calls = 0;
        stream
            .read(0, 4096, &mut |_| {
                calls += 1;
                if calls == 2 {
                    Err(errno(libc::EFAULT))
                } else {
                    Ok(1)
                }
            })
            .unwrap();
        assert_eq!(calls, 2);
    }

    #[test]
    fn malformed_records_are_errors_not_panics() {
        assert!(parse_entry(&[0u8; 5]).is_none(), "short header");
        let mut rec = vec![0u8; 24];
        rec[16..18].copy_from_slice(&200u16.to_ne_bytes());
        assert!(parse_entry(&rec).is_none(), "record longer than the buffer");
        rec[16..18].copy_from_slice(&24u16.to_ne_bytes());
        assert!(parse_entry(&rec).is_none(), "empty name");
        rec[19] = b'n';
        rec[20..24].fill(b'x');
        assert!(parse_entry(&rec).is_none(), "name without its NUL");
        rec[23] = 0;
        let (entry, len) = parse_entry(&rec).unwrap();
        assert_eq!((entry.name, len), (&b"nxxx"[..], 24));
        let mut entries = Entries(&rec[..20]);
        assert!(entries.next().unwrap().is_err());
        assert!(entries.next().is_none());
    }

    #[test]
    fn an_offset_past_the_end_lists_nothing_and_a_huge_one_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("a"), b"").unwrap();
        let stream = open_dir(tmp.path());
        let mut last = 0;
        stream
            .read(0, 4096, &mut |e| {
                last = e.offset;
                Ok(1)
            })
            .unwrap();
        let mut calls = 0;
        stream
            .read(last, 4096, &mut |_| {
                calls += 1;
                Ok(1)
            })
            .unwrap();
        assert_eq!(calls, 0);
        let err = stream.read(u64::MAX, 4096, &mut |_| Ok(1)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    }
}
