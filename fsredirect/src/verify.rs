//! Offline check of a redirecting share: every stub agrees with its stored object.
//!
//! Run on a share no server is using (or between operations in tests). For each stub in the
//! guest tree: the stored object exists at the same path in the volume, is a regular file with
//! the stub's apparent size, is private (no setuid/setgid/exec bits), and the stub holds no data
//! extents; the names of one hard-linked stub are hard links of one object, and two different
//! stubs never share one object. Each stored object must have a stub of the same path.
//!
//! A recorded common portion that names none of the file's paths (left by a directory rename
//! above it) is by design a hint, corrected on the next lookup: it is reported apart, as a
//! [`StaleHint`], not as a [`Mismatch`].

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::meta::{read_path, Meta};
use crate::share::ShareSpec;

/// One disagreement between the guest tree and the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// A stub whose stored object is missing.
    MissingObject(PathBuf),
    /// Stub and stored object differ in size.
    SizeDiffers {
        /// Path relative to the share.
        path: PathBuf,
        /// The stub's apparent size.
        stub: u64,
        /// The stored object's size.
        object: u64,
    },
    /// The stub holds data extents (it should be entirely sparse).
    StubHasData(PathBuf),
    /// The stub holds no data but keeps blocks allocated (preallocated past its end while it
    /// was a plain file): they waste space, and read as data once the stub grows over them.
    StubHasBlocks(PathBuf),
    /// The stored object has setuid, setgid or exec bits.
    UnsafeObject(PathBuf),
    /// The stored object is not a regular file (a directory, symlink, FIFO or device).
    ObjectNotRegular(PathBuf),
    /// A stored object (or other non-directory entry of the volume) no stub names.
    StrayObject(PathBuf),
    /// Hard links of one stub whose stored objects are not hard links of one object (or
    /// whose object is missing under this name only).
    LinksDiffer {
        /// One name.
        path: PathBuf,
        /// Another name of the same stub, whose object is the reference.
        other: PathBuf,
    },
    /// Two different stubs whose stored objects are one file: a write through one would
    /// show through the other.
    SharedObject {
        /// One stub.
        path: PathBuf,
        /// The other stub.
        other: PathBuf,
    },
    /// A regular file whose redirect metadata cannot be decoded (it is served as a plain file).
    BadMetadata(PathBuf),
    /// A stub whose metadata redirects to another volume (it is served as a plain file).
    WrongVolume {
        /// Path relative to the share.
        path: PathBuf,
        /// The volume its metadata names.
        volume: String,
    },
}

impl Mismatch {
    /// The path (relative to the share) the disagreement is about.
    pub fn path(&self) -> &Path {
        match self {
            Mismatch::MissingObject(p)
            | Mismatch::StubHasData(p)
            | Mismatch::StubHasBlocks(p)
            | Mismatch::UnsafeObject(p)
            | Mismatch::ObjectNotRegular(p)
            | Mismatch::StrayObject(p)
            | Mismatch::BadMetadata(p) => p,
            Mismatch::SizeDiffers { path, .. }
            | Mismatch::LinksDiffer { path, .. }
            | Mismatch::SharedObject { path, .. }
            | Mismatch::WrongVolume { path, .. } => path,
        }
    }

    /// A short stable name of the kind, for scripts (`--json`).
    pub fn kind(&self) -> &'static str {
        match self {
            Mismatch::MissingObject(_) => "object-missing",
            Mismatch::SizeDiffers { .. } => "size-mismatch",
            Mismatch::StubHasData(_) => "stub-has-data",
            Mismatch::StubHasBlocks(_) => "stub-has-blocks",
            Mismatch::UnsafeObject(_) => "object-not-private",
            Mismatch::ObjectNotRegular(_) => "object-not-regular",
            Mismatch::StrayObject(_) => "object-without-stub",
            Mismatch::LinksDiffer { .. } => "links-not-mirrored",
            Mismatch::SharedObject { .. } => "object-shared",
            Mismatch::BadMetadata(_) => "metadata-unreadable",
            Mismatch::WrongVolume { .. } => "other-volume",
        }
    }
}

impl fmt::Display for Mismatch {
    /// `path: what is wrong`, one line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.path().display())?;
        match self {
            Mismatch::MissingObject(_) => write!(f, "stored object missing"),
            Mismatch::SizeDiffers { stub, object, .. } => write!(
                f,
                "size mismatch: stub {stub} bytes, stored object {object} bytes"
            ),
            Mismatch::StubHasData(_) => write!(f, "stub holds data (it should be all hole)"),
            Mismatch::StubHasBlocks(_) => write!(
                f,
                "stub keeps allocated blocks, no data (it should be all hole)"
            ),
            Mismatch::UnsafeObject(_) => {
                write!(f, "stored object has setuid, setgid or exec bits")
            }
            Mismatch::ObjectNotRegular(_) => write!(f, "stored object is not a regular file"),
            Mismatch::StrayObject(_) => write!(f, "stored object has no stub"),
            Mismatch::LinksDiffer { other, .. } => write!(
                f,
                "hard link of {} in the guest tree, not in the store",
                other.display()
            ),
            Mismatch::SharedObject { other, .. } => write!(
                f,
                "separate file from {} in the guest tree, one object in the store",
                other.display()
            ),
            Mismatch::BadMetadata(_) => write!(f, "redirect metadata unreadable"),
            Mismatch::WrongVolume { volume, .. } => {
                write!(f, "stub redirects to volume `{volume}`, not this share's")
            }
        }
    }
}

/// A stub whose recorded common portion names none of its paths (a directory above it was
/// renamed): harmless, corrected on the next lookup or by a repair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleHint {
    /// The stub's path relative to the share.
    pub path: PathBuf,
    /// The path its metadata records.
    pub recorded: PathBuf,
    /// The record is only the tail of a path longer than [`crate::meta::MAX_PORTION`].
    pub truncated: bool,
}

/// What a walk of the guest tree and the volume saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Redirected regular files (names, so hard links count once per name).
    pub stubs: u64,
    /// Regular files kept in the guest tree (no redirect metadata).
    pub inline: u64,
    /// Inert special files (FIFOs, sockets, devices the guest created).
    pub special: u64,
    /// Directories of the guest tree (not counting its root).
    pub directories: u64,
    /// Symlinks of the guest tree.
    pub symlinks: u64,
    /// Host special files in the guest tree (not made by a server; served as they are).
    pub other: u64,
    /// Regular files in the volume.
    pub objects: u64,
}

/// Everything [`check_share`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Disagreements, sorted by path.
    pub mismatches: Vec<Mismatch>,
    /// Out-of-date path records, sorted by path (not disagreements).
    pub stale_hints: Vec<StaleHint>,
    /// What was walked.
    pub counts: Counts,
}

/// Checks `share`; returns every mismatch found (empty when all agree).
pub fn verify_share(share: &ShareSpec) -> io::Result<Vec<Mismatch>> {
    check_share(share, &mut || {}).map(|r| r.mismatches)
}

/// One hard-linked stub name seen by the walk, settled once all names are known.
struct LinkName {
    path: PathBuf,
    object: Option<u64>,
    meta: Meta,
}

/// Checks `share` and returns the full [`Report`]; `step` is called once per file or
/// directory visited (for progress display).
pub fn check_share(share: &ShareSpec, step: &mut dyn FnMut()) -> io::Result<Report> {
    let (Some(volume), Some(store)) = (share.volume_dir(), share.store.as_ref()) else {
        return Ok(Report::default());
    };
    let ours = store.volume.as_bytes();
    let mut report = Report::default();
    let mut out = Vec::new();
    // Stub inode -> every name seen (stubs with more than one link only).
    let mut groups: HashMap<u64, Vec<LinkName>> = HashMap::new();
    // Object inode -> (stub inode, first name) (objects with more than one link only).
    let mut shared: HashMap<u64, (u64, PathBuf)> = HashMap::new();
    let counts = &mut report.counts;
    walk(&share.dir, Path::new(""), &mut |rel, meta| {
        step();
        let kind = meta.file_type();
        if kind.is_dir() {
            counts.directories += 1;
            return Ok(());
        }
        if kind.is_symlink() {
            counts.symlinks += 1;
            return Ok(());
        }
        if !kind.is_file() {
            counts.other += 1;
            return Ok(());
        }
        let stub = share.dir.join(rel);
        let decoded = match read_path(&stub)? {
            None => {
                counts.inline += 1;
                return Ok(());
            }
            Some((_, Err(_))) => {
                counts.inline += 1;
                out.push(Mismatch::BadMetadata(rel.to_path_buf()));
                return Ok(());
            }
            Some((_, Ok(Meta::Special { .. }))) => {
                counts.special += 1;
                return Ok(());
            }
            Some((_, Ok(m))) => m,
        };
        if let Meta::Redirect { volume, .. } = &decoded {
            if volume != ours {
                out.push(Mismatch::WrongVolume {
                    path: rel.to_path_buf(),
                    volume: String::from_utf8_lossy(volume).into_owned(),
                });
                return Ok(());
            }
        }
        counts.stubs += 1;
        let (object, mut problems) = check_stub(&stub, &volume.join(rel), rel, meta)?;
        if let Some(obj) = object.as_ref().filter(|o| o.nlink() > 1) {
            let first = shared
                .entry(obj.ino())
                .or_insert_with(|| (meta.ino(), rel.to_path_buf()));
            if first.0 != meta.ino() {
                problems.push(Mismatch::SharedObject {
                    path: rel.to_path_buf(),
                    other: first.1.clone(),
                });
            }
        }
        if meta.nlink() > 1 {
            // Settled below, once every name is known: a name without an object is a link
            // to mirror if another name has one.
            problems.retain(|p| !matches!(p, Mismatch::MissingObject(_)));
            groups.entry(meta.ino()).or_default().push(LinkName {
                path: rel.to_path_buf(),
                object: object.map(|o| o.ino()),
                meta: decoded,
            });
        } else if let Some(hint) = stale_hint(ours, &decoded, &[rel]) {
            report.stale_hints.push(hint);
        }
        out.extend(problems);
        Ok(())
    })?;
    for names in groups.values_mut() {
        settle_links(ours, names, &mut out, &mut report.stale_hints);
    }
    walk(&volume, Path::new(""), &mut |rel, meta| {
        step();
        if meta.file_type().is_dir() {
            return Ok(());
        }
        if meta.file_type().is_file() {
            report.counts.objects += 1;
        }
        let named = match read_path(&share.dir.join(rel)) {
            Ok(Some((_, Ok(Meta::Redirect { volume, .. })))) => volume == ours,
            // Reported as BadMetadata; repair decides from the object.
            Ok(Some((_, Err(_)))) => true,
            _ => false,
        };
        if !named {
            out.push(Mismatch::StrayObject(rel.to_path_buf()));
        }
        Ok(())
    })?;
    out.sort_by(|a, b| (a.path(), a.kind()).cmp(&(b.path(), b.kind())));
    report.mismatches = out;
    report.stale_hints.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(report)
}

/// Compares the object, size and data of the stub at `stub` (`rel` in the share, `meta` its
/// host metadata) with its object at `object`; returns the object's metadata, if any, and
/// the problems found (hard-link and sharing checks need the whole walk and are not here).
pub fn check_stub(
    stub: &Path,
    object: &Path,
    rel: &Path,
    meta: &fs::Metadata,
) -> io::Result<(Option<fs::Metadata>, Vec<Mismatch>)> {
    let mut problems = Vec::new();
    let rel = rel.to_path_buf();
    let obj = match fs::symlink_metadata(object) {
        Ok(obj) => Some(obj),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        // ENOTDIR: a component of the object's path is a file: the object is missing.
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => None,
        Err(e) => return Err(e),
    };
    match &obj {
        None => problems.push(Mismatch::MissingObject(rel.clone())),
        Some(obj) if !obj.file_type().is_file() => {
            problems.push(Mismatch::ObjectNotRegular(rel.clone()))
        }
        Some(obj) => {
            if obj.mode() & 0o7111 != 0 {
                problems.push(Mismatch::UnsafeObject(rel.clone()));
            }
            if obj.len() != meta.len() {
                problems.push(Mismatch::SizeDiffers {
                    path: rel.clone(),
                    stub: meta.len(),
                    object: obj.len(),
                });
            }
        }
    }
    if has_data(stub)? {
        problems.push(Mismatch::StubHasData(rel));
    } else if meta.blocks() > 0 && holds_blocks(stub)? {
        // (Blocks counted for extended attributes are not the data's: FIEMAP tells.)
        problems.push(Mismatch::StubHasBlocks(rel));
    }
    Ok((obj, problems))
}

/// Settles the names of one hard-linked stub: the name its metadata records is the
/// reference if it has an object (else the first such name in path order); every other
/// name must be a link of that object.
fn settle_links(
    volume: &[u8],
    names: &mut [LinkName],
    out: &mut Vec<Mismatch>,
    hints: &mut Vec<StaleHint>,
) {
    names.sort_by(|a, b| a.path.cmp(&b.path));
    let names: &[LinkName] = names;
    let recorded = names.iter().find(|n| {
        n.object.is_some() && Meta::redirect(volume, n.path.as_os_str().as_bytes()) == n.meta
    });
    match recorded.or_else(|| names.iter().find(|n| n.object.is_some())) {
        None => out.extend(
            names
                .iter()
                .map(|n| Mismatch::MissingObject(n.path.clone())),
        ),
        Some(reference) => {
            for name in names {
                if name.object != reference.object {
                    out.push(Mismatch::LinksDiffer {
                        path: name.path.clone(),
                        other: reference.path.clone(),
                    });
                }
            }
        }
    }
    let paths: Vec<&Path> = names.iter().map(|n| n.path.as_path()).collect();
    if let Some(mut hint) = stale_hint(volume, &names[0].meta, &paths) {
        hint.path = names[0].path.clone();
        hints.push(hint);
    }
}

/// A [`StaleHint`] if `meta` records none of `paths` (the names of one file).
fn stale_hint(volume: &[u8], meta: &Meta, paths: &[&Path]) -> Option<StaleHint> {
    let Meta::Redirect {
        portion, truncated, ..
    } = meta
    else {
        return None;
    };
    let current = paths
        .iter()
        .any(|p| Meta::redirect(volume, p.as_os_str().as_bytes()) == *meta);
    (!current).then(|| StaleHint {
        path: paths[0].to_path_buf(),
        recorded: PathBuf::from(std::ffi::OsStr::from_bytes(portion)),
        truncated: *truncated,
    })
}

/// Calls `f` on every entry under `root` (relative path, metadata), parents before children,
/// never following symlinks.
pub(crate) fn walk(
    root: &Path,
    rel: &Path,
    f: &mut dyn FnMut(&Path, &fs::Metadata) -> io::Result<()>,
) -> io::Result<()> {
    for entry in fs::read_dir(root.join(rel))? {
        let entry = entry?;
        let rel = rel.join(entry.file_name());
        let meta = entry.metadata()?;
        f(&rel, &meta)?;
        if meta.file_type().is_dir() {
            walk(root, &rel, f)?;
        }
    }
    Ok(())
}

/// Opens the regular file at `path` for reading: never through a symlink, never blocking on
/// a FIFO.
fn open_to_inspect(path: &Path) -> io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}

/// The header of the kernel's `struct fiemap` (linux/fiemap.h), without extent slots.
#[repr(C)]
#[derive(Default)]
struct FiemapHeader {
    start: u64,
    length: u64,
    flags: u32,
    mapped_extents: u32,
    extent_count: u32,
    reserved: u32,
}

/// `FS_IOC_FIEMAP`: `_IOWR('f', 11, struct fiemap)`, the header being 32 bytes.
const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;

/// True if the regular file at `path` has blocks mapped to its data, those past its end
/// included (preallocated with fallocate's KEEP_SIZE), which [`has_data`] cannot see: an
/// unwritten extent reads as a hole until its pages are cached. Where the file system maps
/// no extents (FIEMAP unsupported: tmpfs, say), whether it counts any block for the file.
pub fn holds_blocks(path: &Path) -> io::Result<bool> {
    let f = open_to_inspect(path)?;
    let mut map = FiemapHeader {
        length: u64::MAX,
        ..FiemapHeader::default()
    };
    // SAFETY: FS_IOC_FIEMAP reads and writes a `struct fiemap`; with no extent slots
    // (`extent_count` 0) the kernel only counts the extents into `mapped_extents` and writes
    // nothing past the header, which `map` is.
    let res = unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_FIEMAP as _, &mut map) };
    if res == 0 {
        return Ok(map.mapped_extents > 0);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EOPNOTSUPP | libc::ENOTTY) => Ok(f.metadata()?.blocks() > 0),
        _ => Err(err),
    }
}

/// True if the regular file at `path` has a data extent (a stub should have none).
pub fn has_data(path: &Path) -> io::Result<bool> {
    let f = open_to_inspect(path)?;
    // SAFETY: lseek on a descriptor we own.
    let res = unsafe { libc::lseek64(f.as_raw_fd(), 0, libc::SEEK_DATA) };
    if res >= 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ENXIO) {
        Ok(false)
    } else {
        Err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{FsConfig, RedirectFs};
    use fuse_backend_rs::api::filesystem::FileSystem;

    fn share(tmp: &Path) -> ShareSpec {
        fs::create_dir_all(tmp.join("g")).unwrap();
        ShareSpec::parse(&format!(
            "tag=t,dir={},store={}",
            tmp.join("g").display(),
            tmp.join("s").display()
        ))
        .unwrap()
    }

    #[test]
    fn fresh_share_verifies_clean() {
        let tmp = tempfile::tempdir().unwrap();
        let share = share(tmp.path());
        drop(RedirectFs::new(&share, FsConfig::default()).unwrap());
        assert_eq!(verify_share(&share).unwrap(), vec![]);
    }

    #[test]
    fn stray_store_object_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let share = share(tmp.path());
        drop(RedirectFs::new(&share, FsConfig::default()).unwrap());
        fs::write(tmp.path().join("s/t/stray"), b"x").unwrap();
        assert_eq!(
            verify_share(&share).unwrap(),
            vec![Mismatch::StrayObject("stray".into())]
        );
    }

    #[test]
    fn hard_links_not_mirrored_are_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let share = share(tmp.path());
        let fs = RedirectFs::new(&share, FsConfig::default()).unwrap();
        fs.init(fuse_backend_rs::abi::fuse_abi::FsOptions::empty())
            .unwrap();
        let ctx = fuse_backend_rs::api::filesystem::Context::new();
        let args = fuse_backend_rs::abi::fuse_abi::CreateIn {
            flags: libc::O_RDWR as u32,
            mode: libc::S_IFREG | 0o644,
            umask: 0,
            fuse_flags: 0,
        };
        let (entry, handle, _, _) = fs.create(&ctx, 1, c"a", args).unwrap();
        fs.release(&ctx, entry.inode, 0, handle.unwrap(), false, false, None)
            .unwrap();
        fs.link(&ctx, entry.inode, 1, c"b").unwrap();
        assert_eq!(verify_share(&share).unwrap(), vec![]);
        // Break the mirror: b's object becomes a copy instead of a link.
        fs::remove_file(tmp.path().join("s/t/b")).unwrap();
        fs::write(tmp.path().join("s/t/b"), b"").unwrap();
        let found = verify_share(&share).unwrap();
        assert_eq!(found.len(), 1);
        assert!(
            matches!(found[0], Mismatch::LinksDiffer { .. }),
            "{found:?}"
        );
    }

    #[test]
    fn shortened_object_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let share = share(tmp.path());
        let fs = RedirectFs::new(&share, FsConfig::default()).unwrap();
        fs.init(fuse_backend_rs::abi::fuse_abi::FsOptions::empty())
            .unwrap();
        let ctx = fuse_backend_rs::api::filesystem::Context::new();
        let args = fuse_backend_rs::abi::fuse_abi::CreateIn {
            flags: libc::O_RDWR as u32,
            mode: libc::S_IFREG | 0o644,
            umask: 0,
            fuse_flags: 0,
        };
        let (entry, handle, _, _) = fs.create(&ctx, 1, c"f", args).unwrap();
        fs.fallocate(&ctx, entry.inode, handle.unwrap(), 0, 0, 100)
            .unwrap();
        fs::File::options()
            .write(true)
            .open(tmp.path().join("s/t/f"))
            .unwrap()
            .set_len(10)
            .unwrap();
        assert_eq!(
            verify_share(&share).unwrap(),
            vec![Mismatch::SizeDiffers {
                path: "f".into(),
                stub: 100,
                object: 10
            }]
        );
    }

    use crate::testshare::TestShare;

    #[test]
    fn object_missing_under_one_hard_link_is_a_link_to_mirror() {
        let t = TestShare::new();
        t.write("a", b"data");
        t.serve().link("a", "b");
        fs::remove_file(t.volume.join("b")).unwrap();
        assert_eq!(
            verify_share(&t.share).unwrap(),
            vec![Mismatch::LinksDiffer {
                path: "b".into(),
                other: "a".into()
            }]
        );
    }

    #[test]
    fn object_missing_under_every_hard_link_is_missing() {
        let t = TestShare::new();
        t.write("a", b"data");
        t.serve().link("a", "b");
        fs::remove_file(t.volume.join("a")).unwrap();
        fs::remove_file(t.volume.join("b")).unwrap();
        assert_eq!(
            verify_share(&t.share).unwrap(),
            vec![
                Mismatch::MissingObject("a".into()),
                Mismatch::MissingObject("b".into())
            ]
        );
    }

    #[test]
    fn two_stubs_sharing_one_object_are_reported() {
        let t = TestShare::new();
        t.write("a", b"data");
        t.write("b", b"other");
        fs::remove_file(t.volume.join("b")).unwrap();
        fs::hard_link(t.volume.join("a"), t.volume.join("b")).unwrap();
        fs::File::options()
            .write(true)
            .open(t.guest.join("b"))
            .unwrap()
            .set_len(4)
            .unwrap();
        let found = verify_share(&t.share).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            matches!(found[0], Mismatch::SharedObject { .. }),
            "{found:?}"
        );
    }

    #[test]
    fn unreadable_metadata_is_reported_and_its_object_is_not_stray() {
        let t = TestShare::new();
        t.write("a", b"data");
        let (attr, _) = read_path(&t.guest.join("a")).unwrap().unwrap();
        let f = fs::File::open(t.guest.join("a")).unwrap();
        crate::meta::set_xattr(&f, attr, b"garbage").unwrap();
        assert_eq!(
            verify_share(&t.share).unwrap(),
            vec![Mismatch::BadMetadata("a".into())]
        );
    }

    #[test]
    fn stub_of_another_volume_is_reported() {
        let t = TestShare::new();
        t.write("a", b"data");
        let (attr, _) = read_path(&t.guest.join("a")).unwrap().unwrap();
        let f = fs::File::open(t.guest.join("a")).unwrap();
        let meta = Meta::redirect(b"elsewhere", b"a").encode();
        crate::meta::set_xattr(&f, attr, &meta).unwrap();
        let found = verify_share(&t.share).unwrap();
        assert!(found.contains(&Mismatch::WrongVolume {
            path: "a".into(),
            volume: "elsewhere".into()
        }));
        assert!(found.contains(&Mismatch::StrayObject("a".into())));
    }

    #[test]
    fn object_that_is_a_directory_is_not_regular() {
        let t = TestShare::new();
        t.write("a", b"");
        fs::remove_file(t.volume.join("a")).unwrap();
        fs::create_dir(t.volume.join("a")).unwrap();
        assert_eq!(
            verify_share(&t.share).unwrap(),
            vec![Mismatch::ObjectNotRegular("a".into())]
        );
    }

    #[test]
    fn stale_hint_after_directory_rename_is_a_note_not_a_mismatch() {
        let t = TestShare::new();
        t.write("d/f", b"x");
        t.serve().rename("d", "e");
        let report = check_share(&t.share, &mut || {}).unwrap();
        assert_eq!(report.mismatches, vec![]);
        assert_eq!(
            report.stale_hints,
            vec![StaleHint {
                path: "e/f".into(),
                recorded: "d/f".into(),
                truncated: false
            }]
        );
    }

    #[test]
    fn blocks_preallocated_past_the_end_are_seen_where_seeking_for_data_finds_none() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        let f = fs::File::create(&path).unwrap();
        f.set_len(1000).unwrap();
        assert!(!holds_blocks(&path).unwrap());
        // SAFETY: fallocate on a descriptor we own; no memory is passed.
        let res = unsafe { libc::fallocate64(f.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, 65536) };
        assert_eq!(res, 0, "{}", io::Error::last_os_error());
        assert!(!has_data(&path).unwrap());
        assert!(holds_blocks(&path).unwrap());
        crate::relocate::punch_data(&f).unwrap();
        assert!(!holds_blocks(&path).unwrap());
        assert_eq!(f.metadata().unwrap().len(), 1000);
    }

    #[test]
    fn counts_cover_every_kind_of_entry() {
        let t = TestShare::new();
        let guest = t.serve();
        guest.write("d/f", b"x");
        guest.mkfifo("p");
        drop(guest);
        fs::write(t.guest.join("inline"), b"y").unwrap();
        std::os::unix::fs::symlink("d", t.guest.join("l")).unwrap();
        let counts = check_share(&t.share, &mut || {}).unwrap().counts;
        assert_eq!(
            counts,
            Counts {
                stubs: 1,
                inline: 1,
                special: 1,
                directories: 1,
                symlinks: 1,
                other: 0,
                objects: 1
            }
        );
    }
}
