//! Moving a file's data between the guest tree (inline) and the store (redirected), as the
//! share's [`crate::policy`] asks, and finding files whose placement disagrees with it.
//!
//! The building blocks here are shared by the file system (which moves files as they change)
//! and by recovery (which finishes or undoes a move a crash interrupted, see
//! [`crate::intent::Intent::Place`]).

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::meta::Meta;
use crate::share::ShareSpec;
use crate::verify::{read_meta, walk};

/// Bytes copied per read when moving data.
const CHUNK: usize = 1 << 20;

/// Opens the regular file at a host path for reading and writing, without following a
/// symlink at its last component (recovery paths are built from the trusted guest root).
pub fn open_file(path: &Path) -> io::Result<File> {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    Ok(file)
}

/// Copies the first `size` bytes of `from` into `to`, which is given that size. Only the data
/// segments of `from` are read (holes are skipped with SEEK_DATA/SEEK_HOLE, so a huge sparse
/// file costs little), and runs of zeros are not written: holes stay holes.
pub fn copy_data(from: &File, to: &File, size: u64) -> io::Result<()> {
    if to.metadata()?.len() != size {
        to.set_len(size)?;
    }
    let mut buf = vec![0u8; CHUNK.min(size as usize).max(1)];
    let mut pos = 0u64;
    while pos < size {
        let Some((start, end)) = next_data(from, pos, size)? else {
            break;
        };
        let mut offset = start;
        while offset < end {
            let want = buf.len().min((end - offset) as usize);
            let n = from.read_at(&mut buf[..want], offset)?;
            if n == 0 {
                // The source is shorter than `size`: the rest reads as zeros, as in a hole.
                return Ok(());
            }
            if buf[..n].iter().any(|&b| b != 0) {
                to.write_all_at(&buf[..n], offset)?;
            }
            offset += n as u64;
        }
        pos = end;
    }
    Ok(())
}

/// The next data segment of `file` at or after `pos`, cut at `size`; None if only holes
/// remain. Where the file system cannot tell holes apart, everything is data.
fn next_data(file: &File, pos: u64, size: u64) -> io::Result<Option<(u64, u64)>> {
    let seek = |offset: u64, whence: i32| {
        // SAFETY: lseek on a descriptor we hold; I/O uses pread, so the position is unused.
        let res = unsafe { libc::lseek64(file.as_raw_fd(), offset as i64, whence) };
        if res < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(res as u64)
        }
    };
    let start = match seek(pos, libc::SEEK_DATA) {
        Ok(start) => start,
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(Some((pos, size))),
        Err(e) => return Err(e),
    };
    if start >= size {
        return Ok(None);
    }
    let end = seek(start, libc::SEEK_HOLE)?.min(size);
    Ok(Some((start, end)))
}

/// Frees every data block of `file` while keeping its size, access and modification times
/// (the change time moves, as for any metadata change), then syncs it.
pub fn make_sparse(file: &File) -> io::Result<()> {
    let meta = file.metadata()?;
    punch_data(file)?;
    restore_times(file, &meta)?;
    file.sync_all()
}

/// Frees every data block of `file`, keeping its size (its times move).
pub fn punch_data(file: &File) -> io::Result<()> {
    let meta = file.metadata()?;
    if meta.len() == 0 {
        return Ok(());
    }
    // A punch frees whole blocks only (a partial one is zeroed and stays): reach the end of
    // the last block, which KEEP_SIZE allows past the end of the file.
    let block = meta.blksize().max(4096);
    let len = meta.len().div_ceil(block) * block;
    // SAFETY: fallocate on a descriptor we hold; no memory is passed.
    let res = unsafe {
        libc::fallocate64(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            0,
            len as i64,
        )
    };
    crate::beneath::check(res).map(|_| ())
}

/// Sets the access and modification times of `file` back to those in `meta`.
pub fn restore_times(file: &File, meta: &fs::Metadata) -> io::Result<()> {
    let times = [
        libc::timespec {
            tv_sec: meta.atime(),
            tv_nsec: meta.atime_nsec(),
        },
        libc::timespec {
            tv_sec: meta.mtime(),
            tv_nsec: meta.mtime_nsec(),
        },
    ];
    // SAFETY: futimens on a descriptor we hold, with a two-element timespec array.
    crate::beneath::check(unsafe { libc::futimens(file.as_raw_fd(), times.as_ptr()) }).map(|_| ())
}

/// A regular file whose placement is not the one the share's policy asks for. Not an
/// error: files move when they change (see fsredirect/README.md), so a file with several
/// hard links, a file below a renamed directory or one untouched since the policy changed
/// may stay where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementNote {
    /// Path relative to the share.
    pub path: PathBuf,
    /// True if the file is redirected now (the policy would keep it inline), false if it is
    /// inline (the policy would redirect it).
    pub redirected: bool,
    /// The file's size.
    pub size: u64,
}

/// Lists the regular files of `share` whose placement disagrees with its policy (none for a
/// passthrough share). Special files are never redirected and are not listed.
pub fn placement_notes(share: &ShareSpec) -> io::Result<Vec<PlacementNote>> {
    let Some(store) = &share.store else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    walk(&share.dir, Path::new(""), &mut |rel, meta| {
        if !meta.is_file() {
            return Ok(());
        }
        let redirected = match read_meta(&share.dir.join(rel))? {
            None => false,
            Some(Meta::Redirect { volume, .. }) if volume == store.volume.as_bytes() => true,
            Some(_) => return Ok(()),
        };
        let size = if redirected {
            fs::symlink_metadata(share.volume_dir().unwrap_or_default().join(rel))
                .map(|m| m.len())
                .unwrap_or(meta.len())
        } else {
            meta.len()
        };
        if store.policy.redirects(rel.as_os_str().as_bytes(), size) != redirected {
            out.push(PlacementNote {
                path: rel.to_path_buf(),
                redirected,
                size,
            });
        }
        Ok(())
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has_data(file: &File) -> bool {
        // SAFETY: lseek on a descriptor we own.
        unsafe { libc::lseek64(file.as_raw_fd(), 0, libc::SEEK_DATA) >= 0 }
    }

    #[test]
    fn copy_keeps_bytes_and_size_and_skips_zero_runs() {
        let tmp = tempfile::tempdir().unwrap();
        let src_path = tmp.path().join("src");
        let mut data = vec![0u8; 3 * CHUNK];
        data[CHUNK + 5] = 7;
        fs::write(&src_path, &data).unwrap();
        let dst = File::create_new(tmp.path().join("dst")).unwrap();
        copy_data(&File::open(&src_path).unwrap(), &dst, data.len() as u64).unwrap();
        assert_eq!(fs::read(tmp.path().join("dst")).unwrap(), data);
        let blocks = dst.metadata().unwrap().blocks();
        assert!(
            blocks * 512 < 2 * CHUNK as u64,
            "zero chunks were written: {blocks}"
        );
    }

    #[test]
    fn copy_of_a_huge_sparse_file_reads_only_its_data() {
        let tmp = tempfile::tempdir().unwrap();
        let src = File::create_new(tmp.path().join("src")).unwrap();
        let size = 1u64 << 40;
        src.set_len(size).unwrap();
        src.write_all_at(b"head", 0).unwrap();
        src.write_all_at(b"tail", size - 4).unwrap();
        let dst = File::create_new(tmp.path().join("dst")).unwrap();
        copy_data(&src, &dst, size).unwrap();
        assert_eq!(dst.metadata().unwrap().len(), size);
        let mut got = [0u8; 4];
        dst.read_exact_at(&mut got, 0).unwrap();
        assert_eq!(&got, b"head");
        dst.read_exact_at(&mut got, size - 4).unwrap();
        assert_eq!(&got, b"tail");
        dst.read_exact_at(&mut got, size / 2).unwrap();
        assert_eq!(got, [0; 4]);
    }

    #[test]
    fn make_sparse_keeps_size_and_times_and_drops_data() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        fs::write(&path, b"hello").unwrap();
        let file = open_file(&path).unwrap();
        let old = [1_000_000_000, 0];
        file.set_times(
            fs::FileTimes::new()
                .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(old[0]))
                .set_accessed(std::time::UNIX_EPOCH + std::time::Duration::from_secs(old[0])),
        )
        .unwrap();
        make_sparse(&file).unwrap();
        let meta = file.metadata().unwrap();
        assert_eq!(meta.len(), 5);
        assert_eq!(meta.mtime(), old[0] as i64);
        assert!(!has_data(&file));
    }

    #[test]
    fn open_file_refuses_a_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc/passwd", tmp.path().join("l")).unwrap();
        assert!(open_file(&tmp.path().join("l")).is_err());
    }
}
