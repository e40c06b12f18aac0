//! Unit tests of the redirect contract through the `FileSystem` trait, on temp directories,
//! without a FUSE kernel.

use std::ffi::CString;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use fuse_backend_rs::abi::fuse_abi::{CreateIn, FsOptions, SetattrValid};
use fuse_backend_rs::api::filesystem::{Context, Entry, FileSystem, GetxattrReply, ListxattrReply};

use super::{FsConfig, FsError, RedirectFs};
use crate::memio::{MemSink, MemSource};
use crate::names::ROOT_INODE;
use crate::share::ShareSpec;

struct Fixture {
    _tmp: tempfile::TempDir,
    share: ShareSpec,
    guest: PathBuf,
    volume: PathBuf,
    control: PathBuf,
    fs: RedirectFs,
    ctx: Context,
}

fn ctx() -> Context {
    let mut ctx = Context::new();
    // SAFETY: geteuid/getegid have no preconditions.
    ctx.uid = unsafe { libc::geteuid() };
    // SAFETY: as above.
    ctx.gid = unsafe { libc::getegid() };
    ctx
}

fn fixture_with(store: bool, cfg: FsConfig) -> Fixture {
    fixture_for(store.then_some("all"), cfg)
}

/// A share in a new temp dir: redirecting with `policy`, or passthrough without one.
fn fixture_for(policy: Option<&str>, cfg: FsConfig) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let guest = tmp.path().join("guest");
    std::fs::create_dir(&guest).unwrap();
    let spec = match policy {
        Some(policy) => format!(
            "tag=t,dir={},store={},volume=vol,policy={policy}",
            guest.display(),
            tmp.path().join("store").display()
        ),
        None => format!("tag=t,dir={}", guest.display()),
    };
    let share = ShareSpec::parse(&spec).unwrap();
    let fs = RedirectFs::new(&share, cfg).unwrap();
    fs.init(FsOptions::empty()).unwrap();
    Fixture {
        share,
        volume: tmp.path().join("store/vol"),
        control: tmp.path().join("store/.fsredirect/vol"),
        guest,
        _tmp: tmp,
        fs,
        ctx: ctx(),
    }
}

fn redirecting() -> Fixture {
    fixture_with(true, FsConfig::default())
}

fn passthrough() -> Fixture {
    fixture_with(false, FsConfig::default())
}

fn c(name: &str) -> CString {
    CString::new(name).unwrap()
}

fn create_in(mode: u32, flags: i32) -> CreateIn {
    CreateIn {
        flags: flags as u32,
        mode: libc::S_IFREG | mode,
        umask: 0,
        fuse_flags: 0,
    }
}

impl Fixture {
    /// Stops the server cleanly and starts a new one on the same share, as a VM restart
    /// does: node ids, handles and everything cached are gone.
    fn restart(self, cfg: FsConfig) -> Fixture {
        let Fixture {
            _tmp,
            share,
            guest,
            volume,
            control,
            fs,
            ctx,
        } = self;
        drop(fs);
        let fs = RedirectFs::new(&share, cfg).unwrap();
        fs.init(FsOptions::empty()).unwrap();
        Fixture {
            _tmp,
            share,
            guest,
            volume,
            control,
            fs,
            ctx,
        }
    }

    fn create(&self, parent: u64, name: &str) -> (Entry, u64) {
        let (entry, handle, _, _) = self
            .fs
            .create(&self.ctx, parent, &c(name), create_in(0o644, libc::O_RDWR))
            .unwrap();
        (entry, handle.unwrap())
    }

    fn mkdir(&self, parent: u64, name: &str) -> Entry {
        self.fs
            .mkdir(&self.ctx, parent, &c(name), 0o755, 0)
            .unwrap()
    }

    fn lookup(&self, parent: u64, name: &str) -> io::Result<Entry> {
        self.fs.lookup(&self.ctx, parent, &c(name))
    }

    fn open(&self, inode: u64, flags: i32) -> u64 {
        self.fs
            .open(&self.ctx, inode, flags as u32, 0)
            .unwrap()
            .0
            .unwrap()
    }

    fn write(&self, inode: u64, handle: u64, offset: u64, data: &[u8]) -> usize {
        self.write_with_flags(inode, handle, offset, data, 0)
    }

    /// WRITE as the kernel sends it: `flags` are the file's flags at the time of the write.
    fn write_with_flags(
        &self,
        inode: u64,
        handle: u64,
        offset: u64,
        data: &[u8],
        flags: i32,
    ) -> usize {
        self.try_write(inode, handle, offset, data, flags).unwrap()
    }

    /// [`Fixture::write_with_flags`] that may fail.
    fn try_write(
        &self,
        inode: u64,
        handle: u64,
        offset: u64,
        data: &[u8],
        flags: i32,
    ) -> io::Result<usize> {
        let mut src = MemSource::new(data.to_vec());
        self.fs.write(
            &self.ctx,
            inode,
            handle,
            &mut src,
            data.len() as u32,
            offset,
            None,
            false,
            flags as u32,
            0,
        )
    }

    fn read(&self, inode: u64, handle: u64, offset: u64, size: u32) -> Vec<u8> {
        let mut sink = MemSink::default();
        self.fs
            .read(&self.ctx, inode, handle, &mut sink, size, offset, None, 0)
            .unwrap();
        sink.into_bytes()
    }

    fn release(&self, inode: u64, handle: u64) {
        self.fs
            .release(&self.ctx, inode, 0, handle, false, false, None)
            .unwrap();
    }

    fn write_file(&self, parent: u64, name: &str, data: &[u8]) -> Entry {
        let (entry, handle) = self.create(parent, name);
        self.write(entry.inode, handle, 0, data);
        self.release(entry.inode, handle);
        entry
    }

    fn read_file(&self, parent: u64, name: &str) -> Vec<u8> {
        let entry = self.lookup(parent, name).unwrap();
        let handle = self.open(entry.inode, libc::O_RDONLY);
        let data = self.read(entry.inode, handle, 0, 1 << 20);
        self.release(entry.inode, handle);
        data
    }

    fn size(&self, inode: u64) -> i64 {
        self.fs.getattr(&self.ctx, inode, None).unwrap().0.st_size
    }

    fn truncate(&self, inode: u64, size: i64) {
        // SAFETY: stat64 is plain old data.
        let mut attr: libc::stat64 = unsafe { std::mem::zeroed() };
        attr.st_size = size;
        self.fs
            .setattr(&self.ctx, inode, attr, None, SetattrValid::SIZE)
            .unwrap();
    }

    /// Every stub agrees with its stored object, and no object lacks a stub.
    fn assert_mirror(&self) {
        assert_eq!(crate::verify::verify_share(&self.share).unwrap(), vec![]);
    }

    fn orphans(&self) -> usize {
        std::fs::read_dir(self.control.join("orphans"))
            .unwrap()
            .count()
    }
}

fn host_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = c(name);
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid C strings and a writable buffer of the given length.
    let len =
        unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if len < 0 {
        return None;
    }
    buf.truncate(len as usize);
    Some(buf)
}

fn has_data_extent(path: &Path) -> bool {
    let f = std::fs::File::open(path).unwrap();
    // SAFETY: lseek on a descriptor we own.
    let res = unsafe { libc::lseek64(std::os::fd::AsRawFd::as_raw_fd(&f), 0, libc::SEEK_DATA) };
    res >= 0
}

fn errno_of<T>(r: io::Result<T>) -> i32 {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.raw_os_error().unwrap(),
    }
}

#[test]
fn init_asks_for_large_requests_when_the_kernel_can() {
    let fx = redirecting();
    let large = FsOptions::BIG_WRITES | FsOptions::MAX_PAGES;
    let opts = fx.fs.init(large | FsOptions::ASYNC_READ).unwrap();
    assert!(opts.contains(large), "{opts:?}");
    assert!(!opts.contains(FsOptions::DO_READDIRPLUS));
    let opts = fx.fs.init(FsOptions::empty()).unwrap();
    assert!(
        !opts.intersects(large),
        "offered only what the kernel can: {opts:?}"
    );
}

#[test]
fn written_bytes_land_in_store_at_common_portion() {
    let fx = redirecting();
    let dir = fx.mkdir(ROOT_INODE, "docs");
    fx.write_file(dir.inode, "a.txt", b"hello store");
    assert_eq!(
        std::fs::read(fx.volume.join("docs/a.txt")).unwrap(),
        b"hello store"
    );
}

#[test]
fn stub_is_sparse_with_same_size_and_no_data() {
    let fx = redirecting();
    fx.write_file(ROOT_INODE, "f", &[7u8; 100_000]);
    let stub = fx.guest.join("f");
    assert_eq!(std::fs::metadata(&stub).unwrap().len(), 100_000);
    assert!(!has_data_extent(&stub));
}

#[test]
fn stub_metadata_names_volume_and_portion() {
    let fx = redirecting();
    let dir = fx.mkdir(ROOT_INODE, "d");
    fx.write_file(dir.inode, "f", b"x");
    let value = host_xattr(&fx.guest.join("d/f"), fx.fs.meta_name.to_str().unwrap()).unwrap();
    assert_eq!(value, b"R1vol\0d/f");
}

#[test]
fn read_returns_written_bytes() {
    let fx = redirecting();
    fx.write_file(ROOT_INODE, "f", b"0123456789");
    assert_eq!(fx.read_file(ROOT_INODE, "f"), b"0123456789");
}

#[test]
fn getattr_reports_size_and_blocks_of_stored_object() {
    let fx = redirecting();
    let entry = fx.write_file(ROOT_INODE, "f", &[1u8; 65536]);
    let (st, _) = fx.fs.getattr(&fx.ctx, entry.inode, None).unwrap();
    let stored = std::fs::metadata(fx.volume.join("f")).unwrap();
    assert_eq!(st.st_size, 65536);
    assert_eq!(st.st_blocks as u64, stored.blocks());
    assert!(st.st_blocks > 0);
}

#[test]
fn stored_object_is_private_whatever_guest_mode() {
    let fx = redirecting();
    let (entry, handle) = fx
        .fs
        .create(
            &fx.ctx,
            ROOT_INODE,
            &c("suid"),
            create_in(0o4755, libc::O_RDWR),
        )
        .map(|(e, h, _, _)| (e, h.unwrap()))
        .unwrap();
    fx.release(entry.inode, handle);
    let stored = std::fs::metadata(fx.volume.join("suid")).unwrap();
    assert_eq!(stored.mode() & 0o7777, 0o600);
    assert_eq!(entry.attr.st_mode & 0o7777, 0o4755);
}

#[test]
fn truncate_then_extend_reads_zeros_not_stale_bytes() {
    let fx = redirecting();
    let entry = fx.write_file(ROOT_INODE, "f", b"abcdefgh");
    fx.truncate(entry.inode, 2);
    fx.truncate(entry.inode, 6);
    assert_eq!(fx.read_file(ROOT_INODE, "f"), b"ab\0\0\0\0");
    assert_eq!(std::fs::metadata(fx.guest.join("f")).unwrap().len(), 6);
}

#[test]
fn open_with_trunc_empties_stored_object() {
    let fx = redirecting();
    let entry = fx.write_file(ROOT_INODE, "f", b"old data");
    let handle = fx.open(entry.inode, libc::O_WRONLY | libc::O_TRUNC);
    fx.release(entry.inode, handle);
    assert_eq!(std::fs::metadata(fx.volume.join("f")).unwrap().len(), 0);
    assert_eq!(fx.size(entry.inode), 0);
}

#[test]
fn append_writes_at_end_of_stored_data() {
    let fx = redirecting();
    let entry = fx.write_file(ROOT_INODE, "f", b"abc");
    let handle = fx.open(entry.inode, libc::O_WRONLY | libc::O_APPEND);
    fx.write_with_flags(
        entry.inode,
        handle,
        0,
        b"def",
        libc::O_WRONLY | libc::O_APPEND,
    );
    fx.release(entry.inode, handle);
    assert_eq!(fx.read_file(ROOT_INODE, "f"), b"abcdef");
}

#[test]
fn write_updates_stub_mtime() {
    let fx = redirecting();
    let (entry, handle) = fx.create(ROOT_INODE, "f");
    let past = std::fs::File::options()
        .write(true)
        .open(fx.guest.join("f"))
        .unwrap();
    past.set_modified(std::time::SystemTime::UNIX_EPOCH)
        .unwrap();
    fx.write(entry.inode, handle, 0, b"x");
    fx.release(entry.inode, handle);
    let mtime = std::fs::metadata(fx.guest.join("f")).unwrap().mtime();
    assert!(mtime > 0);
}

#[test]
fn every_write_after_a_guests_utimens_stamps_the_stub_again() {
    let fx = redirecting();
    let (entry, handle) = fx.create(ROOT_INODE, "f");
    let stub_mtime = || std::fs::metadata(fx.guest.join("f")).unwrap().mtime();
    for round in 0..3 {
        // Two writes in the same clock tick: the second may stamp nothing.
        fx.write(entry.inode, handle, round * 8, b"abcd");
        fx.write(entry.inode, handle, round * 8 + 4, b"efgh");
        assert!(
            stub_mtime() > 1_000_000,
            "round {round}: the write stamped the stub"
        );
        // SAFETY: stat64 is plain old data; all-zero is a valid value.
        let mut attr: libc::stat64 = unsafe { std::mem::zeroed() };
        attr.st_mtime = 1;
        fx.fs
            .setattr(&fx.ctx, entry.inode, attr, None, SetattrValid::MTIME)
            .unwrap();
        assert_eq!(stub_mtime(), 1, "round {round}: the guest's own time");
    }
    // Size kept in step while the server knows it, without reading it back.
    let (st, _) = fx.fs.getattr(&fx.ctx, entry.inode, None).unwrap();
    assert_eq!(st.st_size, 24);
    assert_eq!(std::fs::metadata(fx.guest.join("f")).unwrap().len(), 24);
    fx.release(entry.inode, handle);
}

#[test]
fn unlink_removes_stored_object() {
    let fx = redirecting();
    fx.write_file(ROOT_INODE, "f", b"x");
    fx.fs.unlink(&fx.ctx, ROOT_INODE, &c("f")).unwrap();
    assert!(!fx.volume.join("f").exists());
    assert!(!fx.guest.join("f").exists());
}

#[test]
fn file_unlinked_while_open_works_until_release() {
    let fx = redirecting();
    let (entry, handle) = fx.create(ROOT_INODE, "f");
    fx.write(entry.inode, handle, 0, b"still here");
    fx.fs.unlink(&fx.ctx, ROOT_INODE, &c("f")).unwrap();
    assert!(!fx.volume.join("f").exists());
    assert_eq!(fx.orphans(), 1);
    assert_eq!(fx.read(entry.inode, handle, 0, 100), b"still here");
    fx.release(entry.inode, handle);
    assert_eq!(fx.orphans(), 0);
}

#[test]
fn orphan_is_reopened_after_descriptor_eviction() {
    let fx = fixture_with(
        true,
        FsConfig {
            max_store_fds: 1,
            ..FsConfig::default()
        },
    );
    let (entry, handle) = fx.create(ROOT_INODE, "f");
    fx.write(entry.inode, handle, 0, b"orphan");
    fx.fs.unlink(&fx.ctx, ROOT_INODE, &c("f")).unwrap();
    fx.write_file(ROOT_INODE, "other", b"evicts");
    assert_eq!(fx.read(entry.inode, handle, 0, 100), b"orphan");
}

#[test]
fn rename_moves_stored_object_with_stub() {
    let fx = redirecting();
    let dir = fx.mkdir(ROOT_INODE, "d");
    fx.write_file(ROOT_INODE, "a", b"data");
    fx.fs
        .rename(&fx.ctx, ROOT_INODE, &c("a"), dir.inode, &c("b"), 0)
        .unwrap();
    assert!(!fx.volume.join("a").exists());
    assert_eq!(std::fs::read(fx.volume.join("d/b")).unwrap(), b"data");
    assert_eq!(fx.read_file(dir.inode, "b"), b"data");
    let meta = host_xattr(&fx.guest.join("d/b"), fx.fs.meta_name.to_str().unwrap()).unwrap();
    assert_eq!(meta, b"R1vol\0d/b");
    fx.assert_mirror();
}

#[test]
fn overwrite_rename_replaces_stored_object() {
    let fx = redirecting();
    fx.write_file(ROOT_INODE, "a", b"new");
    fx.write_file(ROOT_INODE, "b", b"old contents");
    fx.fs
        .rename(&fx.ctx, ROOT_INODE, &c("a"), ROOT_INODE, &c("b"), 0)
        .unwrap();
    assert_eq!(std::fs::read(fx.volume.join("b")).unwrap(), b"new");
    assert!(!fx.volume.join("a").exists());
    assert_eq!(fx.orphans(), 0);
    fx.assert_mirror();
}

#[test]
fn overwritten_file_open_elsewhere_keeps_its_bytes() {
    let fx = redirecting();
    fx.write_file(ROOT_INODE, "a", b"new");
    let (victim, handle) = fx.create(ROOT_INODE, "b");
    fx.write(victim.inode, handle, 0, b"victim");
    fx.fs
        .rename(&fx.ctx, ROOT_INODE, &c("a"), ROOT_INODE, &c("b"), 0)
        .unwrap();
    assert_eq!(fx.read(victim.inode, handle, 0, 100), b"victim");
    fx.release(victim.inode, handle);
    assert_eq!(fx.orphans(), 0);
    assert_eq!(fx.read_file(ROOT_INODE, "b"), b"new");
    fx.assert_mirror();
}

#[test]
fn directory_rename_moves_store_directory() {
    let fx = redirecting();
    let dir = fx.mkdir(ROOT_INODE, "d");
    fx.write_file(dir.inode, "f", b"inside");
    fx.fs
        .rename(&fx.ctx, ROOT_INODE, &c("d"), ROOT_INODE, &c("e"), 0)
        .unwrap();
    assert_eq!(std::fs::read(fx.volume.join("e/f")).unwrap(), b"inside");
    assert!(!fx.volume.join("d").exists());
    assert_eq!(fx.read_file(dir.inode, "f"), b"inside");
    fx.assert_mirror();
}

#[test]
fn stale_portion_after_directory_rename_is_corrected_on_lookup() {
    // By file handle and by path; the file's GETATTR pins it, so its LOOKUP again is
    // answered by the server itself (`revalidate.rs`), which must correct the record too.
    for cfg in lookup_configs() {
        let fx = fixture_with(true, cfg);
        let dir = fx.mkdir(ROOT_INODE, "d");
        let file = fx.write_file(dir.inode, "f", b"x");
        fx.fs.getattr(&fx.ctx, file.inode, None).unwrap();
        fx.fs
            .rename(&fx.ctx, ROOT_INODE, &c("d"), ROOT_INODE, &c("e"), 0)
            .unwrap();
        fx.lookup(dir.inode, "f").unwrap();
        let meta = host_xattr(&fx.guest.join("e/f"), fx.fs.meta_name.to_str().unwrap()).unwrap();
        assert_eq!(meta, b"R1vol\0e/f");
    }
}

#[test]
fn exchange_rename_swaps_stored_objects() {
    let fx = redirecting();
    fx.write_file(ROOT_INODE, "a", b"A");
    fx.write_file(ROOT_INODE, "b", b"B");
    fx.fs
        .rename(
            &fx.ctx,
            ROOT_INODE,
            &c("a"),
            ROOT_INODE,
            &c("b"),
            libc::RENAME_EXCHANGE,
        )
        .unwrap();
    assert_eq!(std::fs::read(fx.volume.join("a")).unwrap(), b"B");
    assert_eq!(fx.read_file(ROOT_INODE, "a"), b"B");
    assert_eq!(fx.read_file(ROOT_INODE, "b"), b"A");
    fx.assert_mirror();
}

#[test]
fn rename_whiteout_is_refused() {
    let fx = redirecting();
    fx.write_file(ROOT_INODE, "a", b"A");
    let r = fx.fs.rename(
        &fx.ctx,
        ROOT_INODE,
        &c("a"),
        ROOT_INODE,
        &c("b"),
        libc::RENAME_WHITEOUT,
    );
    assert_eq!(errno_of(r), libc::EINVAL);
}

#[test]
fn hard_link_is_mirrored_as_hard_link_in_store() {
    let fx = redirecting();
    let entry = fx.write_file(ROOT_INODE, "a", b"shared");
    fx.fs
        .link(&fx.ctx, entry.inode, ROOT_INODE, &c("b"))
        .unwrap();
    let a = std::fs::metadata(fx.volume.join("a")).unwrap();
    let b = std::fs::metadata(fx.volume.join("b")).unwrap();
    assert_eq!(a.ino(), b.ino());
}

#[test]
fn data_survives_unlink_of_first_hard_link() {
    let fx = redirecting();
    let entry = fx.write_file(ROOT_INODE, "a", b"shared");
    fx.fs
        .link(&fx.ctx, entry.inode, ROOT_INODE, &c("b"))
        .unwrap();
    fx.fs.unlink(&fx.ctx, ROOT_INODE, &c("a")).unwrap();
    assert!(!fx.volume.join("a").exists());
    assert_eq!(fx.read_file(ROOT_INODE, "b"), b"shared");
    let meta = host_xattr(&fx.guest.join("b"), fx.fs.meta_name.to_str().unwrap()).unwrap();
    assert_eq!(meta, b"R1vol\0b");
    fx.assert_mirror();
}

#[test]
fn rmdir_removes_store_directory() {
    let fx = redirecting();
    let dir = fx.mkdir(ROOT_INODE, "d");
    fx.write_file(dir.inode, "f", b"x");
    fx.fs.unlink(&fx.ctx, dir.inode, &c("f")).unwrap();
    fx.fs.rmdir(&fx.ctx, ROOT_INODE, &c("d")).unwrap();
    assert!(!fx.volume.join("d").exists());
    fx.assert_mirror();
}

#[test]
fn fifo_is_an_inert_regular_file_on_host() {
    let fx = redirecting();
    let entry = fx
        .fs
        .mknod(&fx.ctx, ROOT_INODE, &c("p"), libc::S_IFIFO | 0o644, 0, 0)
        .unwrap();
    assert_eq!(entry.attr.st_mode & libc::S_IFMT, libc::S_IFIFO);
    let host = std::fs::symlink_metadata(fx.guest.join("p")).unwrap();
    assert!(host.file_type().is_file());
    assert_eq!(host.len(), 0);
}

#[test]
fn device_node_keeps_its_number_in_metadata() {
    let fx = passthrough();
    let rdev = (1 << 8) | 3;
    let entry = fx
        .fs
        .mknod(
            &fx.ctx,
            ROOT_INODE,
            &c("null"),
            libc::S_IFCHR | 0o666,
            rdev,
            0,
        )
        .unwrap();
    let (st, _) = fx.fs.getattr(&fx.ctx, entry.inode, None).unwrap();
    assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFCHR);
    assert_eq!(st.st_rdev, u64::from(rdev));
    assert!(std::fs::symlink_metadata(fx.guest.join("null"))
        .unwrap()
        .file_type()
        .is_file());
}

#[test]
fn special_file_cannot_be_opened_through_server() {
    let fx = redirecting();
    let entry = fx
        .fs
        .mknod(&fx.ctx, ROOT_INODE, &c("p"), libc::S_IFIFO | 0o644, 0, 0)
        .unwrap();
    let r = fx.fs.open(&fx.ctx, entry.inode, libc::O_RDONLY as u32, 0);
    assert_eq!(errno_of(r), libc::ENXIO);
}

#[test]
fn guest_cannot_read_redirect_metadata() {
    let fx = redirecting();
    let entry = fx.write_file(ROOT_INODE, "f", b"x");
    let r = fx.fs.getxattr(&fx.ctx, entry.inode, fx.fs.meta_name, 1024);
    assert_eq!(errno_of(r), libc::ENODATA);
}

#[test]
fn guest_cannot_forge_either_metadata_spelling() {
    let fx = redirecting();
    let entry = fx.write_file(ROOT_INODE, "f", b"x");
    for name in ["trusted.fsredirect", "user.fsredirect"] {
        let r = fx
            .fs
            .setxattr(&fx.ctx, entry.inode, &c(name), b"R1vol\0../../etc", 0);
        assert_eq!(errno_of(r), libc::EPERM, "{name}");
    }
}

#[test]
fn guest_cannot_remove_redirect_metadata() {
    let fx = redirecting();
    let entry = fx.write_file(ROOT_INODE, "f", b"x");
    let r = fx.fs.removexattr(&fx.ctx, entry.inode, fx.fs.meta_name);
    assert_eq!(errno_of(r), libc::ENODATA);
    assert!(host_xattr(&fx.guest.join("f"), fx.fs.meta_name.to_str().unwrap()).is_some());
}

#[test]
fn listing_xattrs_hides_metadata_but_shows_guest_ones() {
    let fx = redirecting();
    let entry = fx.write_file(ROOT_INODE, "f", b"x");
    fx.fs
        .setxattr(&fx.ctx, entry.inode, &c("user.mine"), b"v", 0)
        .unwrap();
    let list = match fx.fs.listxattr(&fx.ctx, entry.inode, 4096).unwrap() {
        ListxattrReply::Names(l) => l,
        ListxattrReply::Count(_) => panic!("asked for names"),
    };
    assert_eq!(list, b"user.mine\0");
    match fx.fs.listxattr(&fx.ctx, entry.inode, 0).unwrap() {
        ListxattrReply::Count(n) => assert_eq!(n as usize, b"user.mine\0".len()),
        ListxattrReply::Names(_) => panic!("asked for the size"),
    }
    match fx
        .fs
        .getxattr(&fx.ctx, entry.inode, &c("user.mine"), 16)
        .unwrap()
    {
        GetxattrReply::Value(v) => assert_eq!(v, b"v"),
        GetxattrReply::Count(_) => panic!("asked for the value"),
    }
}

#[test]
fn getxattr_reads_into_at_most_the_largest_value_whatever_size_the_guest_gives() {
    let fx = redirecting();
    let entry = fx.write_file(ROOT_INODE, "f", b"x");
    fx.fs
        .setxattr(&fx.ctx, entry.inode, &c("user.mine"), b"value", 0)
        .unwrap();

    let huge = fx
        .fs
        .getxattr(&fx.ctx, entry.inode, &c("user.mine"), u32::MAX);
    let small = fx.fs.getxattr(&fx.ctx, entry.inode, &c("user.mine"), 2);

    assert_eq!(super::ops::xattr_buffer(u32::MAX), 64 * 1024);
    assert_eq!(super::ops::xattr_buffer(16), 16);
    match huge.unwrap() {
        GetxattrReply::Value(v) => assert_eq!(v, b"value"),
        GetxattrReply::Count(_) => panic!("asked for the value"),
    }
    assert_eq!(errno_of(small), libc::ERANGE);
}

#[test]
fn hostile_names_are_refused_before_any_host_call() {
    let fx = redirecting();
    let long = "x".repeat(256);
    for (name, want) in [
        ("", libc::EINVAL),
        (".", libc::EINVAL),
        ("..", libc::EINVAL),
        ("a/b", libc::EINVAL),
        (long.as_str(), libc::ENAMETOOLONG),
    ] {
        assert_eq!(
            errno_of(fx.lookup(ROOT_INODE, name)),
            want,
            "lookup {name:?}"
        );
        let r = fx.fs.create(
            &fx.ctx,
            ROOT_INODE,
            &c(name),
            create_in(0o644, libc::O_RDWR),
        );
        assert_eq!(errno_of(r), want, "create {name:?}");
    }
}

#[test]
fn unknown_handle_is_ebadf() {
    let fx = redirecting();
    let mut sink = MemSink::default();
    let r = fx
        .fs
        .read(&fx.ctx, ROOT_INODE, 9999, &mut sink, 10, 0, None, 0);
    assert_eq!(errno_of(r), libc::EBADF);
}

#[test]
fn store_descriptors_stay_within_bound() {
    let fx = fixture_with(
        true,
        FsConfig {
            max_store_fds: 2,
            ..FsConfig::default()
        },
    );
    let mut open = Vec::new();
    for i in 0..8 {
        let (entry, handle) = fx.create(ROOT_INODE, &format!("f{i}"));
        fx.write(entry.inode, handle, 0, format!("data {i}").as_bytes());
        open.push((entry.inode, handle));
    }
    assert!(fx.fs.open_store_fds() <= 2);
    for (i, (inode, handle)) in open.iter().enumerate() {
        assert_eq!(
            fx.read(*inode, *handle, 0, 100),
            format!("data {i}").as_bytes()
        );
    }
    assert!(fx.fs.open_store_fds() <= 2);
}

/// 1. A share is served for the first time (its volume is made now), then again after a
///    clean stop.
/// 2. Neither start runs recovery: a volume no server ever served did not stop uncleanly.
///    (Recovery after an unclean stop is tested in `crate::recover` and `tests/crash.rs`.)
#[test]
fn a_new_volume_is_not_recovered() {
    let fx = redirecting();
    assert!(
        fx.fs.recovery().is_none(),
        "a brand-new volume was 'recovered'"
    );
    let fx = fx.restart(FsConfig::default());
    assert!(fx.fs.recovery().is_none(), "a clean stop was 'recovered'");
}

#[test]
fn second_server_on_same_volume_is_refused() {
    let fx = redirecting();
    let spec = format!(
        "tag=t,dir={},store={},volume=vol",
        fx.guest.display(),
        fx.volume.parent().unwrap().display()
    );
    let err = RedirectFs::new(&ShareSpec::parse(&spec).unwrap(), FsConfig::default())
        .err()
        .unwrap();
    assert!(matches!(err, FsError::Tree(_)), "{err}");
}

/// 1. A redirecting server serves a guest tree.
/// 2. A second server on the same tree, with another store or with none, is refused before
///    it opens or creates anything, and the message names the tree.
#[test]
fn second_server_on_same_guest_tree_is_refused_whatever_its_store() {
    let fx = redirecting();
    let other_store = fx._tmp.path().join("other-store");
    for spec in [
        format!(
            "tag=t,dir={},store={}",
            fx.guest.display(),
            other_store.display()
        ),
        format!("tag=t,dir={}", fx.guest.display()),
    ] {
        let err = RedirectFs::new(&ShareSpec::parse(&spec).unwrap(), FsConfig::default())
            .err()
            .unwrap();
        assert!(matches!(err, FsError::Tree(_)), "{spec}: {err}");
        assert!(err.to_string().contains(&fx.guest.display().to_string()));
        assert!(!other_store.exists(), "the refused server made its store");
    }
}

#[test]
fn passthrough_share_keeps_data_in_guest_tree() {
    let fx = passthrough();
    fx.write_file(ROOT_INODE, "f", b"plain");
    assert_eq!(std::fs::read(fx.guest.join("f")).unwrap(), b"plain");
    assert_eq!(fx.read_file(ROOT_INODE, "f"), b"plain");
}

#[test]
fn lseek_data_and_hole_follow_stored_data() {
    let fx = redirecting();
    let (entry, handle) = fx.create(ROOT_INODE, "f");
    fx.write(entry.inode, handle, 1 << 20, b"tail");
    let data = fx
        .fs
        .lseek(&fx.ctx, entry.inode, handle, 0, libc::SEEK_DATA as u32)
        .unwrap();
    let hole = fx
        .fs
        .lseek(&fx.ctx, entry.inode, handle, 0, libc::SEEK_HOLE as u32)
        .unwrap();
    fx.release(entry.inode, handle);
    assert!(data > 0 && data <= 1 << 20);
    assert_eq!(hole, 0);
}

#[test]
fn fallocate_extends_stored_object_and_stub() {
    let fx = redirecting();
    let (entry, handle) = fx.create(ROOT_INODE, "f");
    fx.fs
        .fallocate(&fx.ctx, entry.inode, handle, 0, 0, 8192)
        .unwrap();
    fx.release(entry.inode, handle);
    assert_eq!(std::fs::metadata(fx.volume.join("f")).unwrap().len(), 8192);
    assert_eq!(std::fs::metadata(fx.guest.join("f")).unwrap().len(), 8192);
    assert!(!has_data_extent(&fx.guest.join("f")));
}

#[test]
fn create_exclusive_on_existing_name_is_eexist() {
    let fx = redirecting();
    fx.write_file(ROOT_INODE, "f", b"x");
    let r = fx.fs.create(
        &fx.ctx,
        ROOT_INODE,
        &c("f"),
        create_in(0o644, libc::O_RDWR | libc::O_EXCL),
    );
    assert_eq!(errno_of(r), libc::EEXIST);
    assert_eq!(std::fs::read(fx.volume.join("f")).unwrap(), b"x");
}

#[test]
fn unlinked_open_file_accepts_writes_and_getattr() {
    let fx = redirecting();
    let (entry, handle) = fx.create(ROOT_INODE, "f");
    fx.fs.unlink(&fx.ctx, ROOT_INODE, &c("f")).unwrap();
    fx.write(entry.inode, handle, 0, b"after unlink");
    let (st, _) = fx.fs.getattr(&fx.ctx, entry.inode, Some(handle)).unwrap();
    assert_eq!(st.st_size, 12);
    assert_eq!(st.st_nlink, 0);
    fx.release(entry.inode, handle);
}

#[test]
fn unknown_inode_is_refused() {
    let fx = redirecting();
    let r = fx.fs.getattr(&fx.ctx, 123_456, None);
    assert_eq!(errno_of(r), libc::EBADF);
    let r = fx.fs.lookup(&fx.ctx, 123_456, &c("x"));
    assert_eq!(errno_of(r), libc::EBADF);
}

#[test]
fn forget_beyond_lookups_is_harmless() {
    let fx = redirecting();
    let entry = fx.write_file(ROOT_INODE, "f", b"x");
    fx.fs.forget(&fx.ctx, entry.inode, 1_000_000);
    fx.fs.forget(&fx.ctx, 999_999, 5);
    assert_eq!(fx.read_file(ROOT_INODE, "f"), b"x");
}

#[test]
fn release_of_unknown_handle_is_ebadf() {
    let fx = redirecting();
    let r = fx
        .fs
        .release(&fx.ctx, ROOT_INODE, 0, 4242, false, false, None);
    assert_eq!(errno_of(r), libc::EBADF);
}

#[test]
fn write_past_maximum_offset_is_efbig() {
    let fx = redirecting();
    let (entry, handle) = fx.create(ROOT_INODE, "f");
    let mut src = MemSource::new(vec![1u8; 16]);
    let r = fx.fs.write(
        &fx.ctx,
        entry.inode,
        handle,
        &mut src,
        16,
        u64::MAX - 8,
        None,
        false,
        0,
        0,
    );
    assert_eq!(errno_of(r), libc::EFBIG);
}

#[test]
fn mknod_of_unknown_type_is_einval() {
    let fx = redirecting();
    let r = fx
        .fs
        .mknod(&fx.ctx, ROOT_INODE, &c("d"), libc::S_IFDIR | 0o755, 0, 0);
    assert_eq!(errno_of(r), libc::EINVAL);
}

#[test]
fn special_file_kept_inert_in_readdir_type() {
    let fx = redirecting();
    fx.fs
        .mknod(&fx.ctx, ROOT_INODE, &c("p"), libc::S_IFIFO | 0o644, 0, 0)
        .unwrap();
    let (dh, _) = fx.fs.opendir(&fx.ctx, ROOT_INODE, 0).unwrap();
    let mut types = Vec::new();
    fx.fs
        .readdir(&fx.ctx, ROOT_INODE, dh.unwrap(), 4096, 0, &mut |e| {
            if e.name == b"p" {
                types.push(e.type_);
            }
            Ok(1)
        })
        .unwrap();
    assert_eq!(types, vec![u32::from(libc::DT_UNKNOWN)]);
}

/// Every entry of directory `inode` as READDIR lists it, with the inode number it reports.
fn list_dir(fx: &Fixture, inode: u64) -> std::collections::BTreeMap<String, u64> {
    let held = fx.fs.guest_fds().0;
    let (dh, _) = fx.fs.opendir(&fx.ctx, inode, 0).unwrap();
    let dh = dh.unwrap();
    let mut all = std::collections::BTreeMap::new();
    let mut offset = 0;
    loop {
        let mut got = 0;
        fx.fs
            .readdir(&fx.ctx, inode, dh, 4096, offset, &mut |e| {
                got += 1;
                offset = e.offset;
                let name = String::from_utf8(e.name.to_vec()).unwrap();
                assert!(all.insert(name, e.ino).is_none(), "listed twice");
                Ok(1)
            })
            .unwrap();
        if got == 0 {
            break;
        }
    }
    fx.fs.releasedir(&fx.ctx, inode, 0, dh).unwrap();
    assert_eq!(
        fx.fs.guest_fds().0,
        held,
        "the listing gave its descriptor back"
    );
    all
}

#[test]
fn readdir_reports_the_inode_numbers_stat_does_on_both_kinds_of_share() {
    for fx in [redirecting(), passthrough()] {
        let dir = fx.mkdir(ROOT_INODE, "d");
        for i in 0..40 {
            fx.write_file(dir.inode, &format!("f{i}"), b"data");
        }
        fx.mkdir(dir.inode, "sub");
        let listed = list_dir(&fx, dir.inode);
        assert_eq!(listed.len(), 41);
        for (name, ino) in &listed {
            let entry = fx.lookup(dir.inode, name).unwrap();
            let (st, _) = fx.fs.getattr(&fx.ctx, entry.inode, None).unwrap();
            assert_eq!(*ino, st.st_ino, "{name}");
        }
        let root = list_dir(&fx, ROOT_INODE);
        assert_eq!(root.keys().collect::<Vec<_>>(), vec!["d"]);
    }
}

#[test]
fn a_directory_moved_behind_the_servers_back_is_still_the_one_listed() {
    let fx = redirecting();
    let dir = fx.mkdir(ROOT_INODE, "d");
    fx.write_file(dir.inode, "inside", b"x");
    // The name the server knows now leads to another directory.
    std::fs::rename(fx.guest.join("d"), fx.guest.join("moved")).unwrap();
    std::fs::create_dir(fx.guest.join("d")).unwrap();
    std::fs::write(fx.guest.join("d/impostor"), b"").unwrap();
    let listed = list_dir(&fx, dir.inode);
    assert_eq!(listed.keys().collect::<Vec<_>>(), vec!["inside"]);
}

#[test]
fn a_directory_handle_is_no_file_handle() {
    let fx = redirecting();
    let dir = fx.mkdir(ROOT_INODE, "d");
    // Without file handles (a server not run as root) each known node holds one too.
    let held = fx.fs.guest_fds().0;
    let (dh, _) = fx.fs.opendir(&fx.ctx, dir.inode, 0).unwrap();
    let dh = dh.unwrap();
    let mut sink = MemSink::default();
    let r = fx
        .fs
        .read(&fx.ctx, dir.inode, dh, &mut sink, 10, 0, None, 0);
    assert_eq!(errno_of(r), libc::EISDIR);
    let r = fx.fs.fallocate(&fx.ctx, dir.inode, dh, 0, 0, 10);
    assert_eq!(errno_of(r), libc::EISDIR);
    fx.fs.fsyncdir(&fx.ctx, dir.inode, true, dh).unwrap();
    fx.fs.fsync(&fx.ctx, dir.inode, false, dh).unwrap();
    assert_eq!(fx.fs.guest_fds().0, held + 1);
    // A guest may close it as a file: it is closed all the same.
    fx.fs
        .release(&fx.ctx, dir.inode, 0, dh, false, false, None)
        .unwrap();
    assert_eq!(fx.fs.guest_fds().0, held);
    let r = fx
        .fs
        .readdir(&fx.ctx, dir.inode, dh, 4096, 0, &mut |_| Ok(1));
    assert_eq!(errno_of(r), libc::EBADF);
}

#[test]
fn create_with_missing_store_fails_and_leaves_no_stub() {
    let fx = redirecting();
    std::fs::remove_dir_all(&fx.volume).unwrap();
    let r = fx
        .fs
        .create(&fx.ctx, ROOT_INODE, &c("f"), create_in(0o644, libc::O_RDWR));
    assert_eq!(errno_of(r), libc::ENOENT);
    assert!(!fx.guest.join("f").exists());
}

#[test]
fn write_to_vanished_object_is_an_error_and_stub_keeps_its_size() {
    let fx = redirecting();
    let entry = fx.write_file(ROOT_INODE, "f", b"1234");
    std::fs::remove_file(fx.volume.join("f")).unwrap();
    let r = fx.fs.open(&fx.ctx, entry.inode, libc::O_RDWR as u32, 0);
    assert_eq!(errno_of(r), libc::ENOENT);
    assert_eq!(std::fs::metadata(fx.guest.join("f")).unwrap().len(), 4);
}

#[test]
fn rename_into_unreachable_store_fails_and_keeps_both_sides() {
    let fx = redirecting();
    let dir = fx.mkdir(ROOT_INODE, "d");
    fx.write_file(ROOT_INODE, "a", b"A");
    // A file where the store needs a directory: the store half fails first.
    std::fs::write(fx.volume.join("d"), b"blocker").unwrap();
    let r = fx
        .fs
        .rename(&fx.ctx, ROOT_INODE, &c("a"), dir.inode, &c("b"), 0);
    assert!(r.is_err());
    assert!(fx.guest.join("a").exists());
    assert_eq!(std::fs::read(fx.volume.join("a")).unwrap(), b"A");
}

#[test]
fn open_during_concurrent_renames_never_sees_another_files_bytes() {
    use std::sync::atomic::{AtomicBool, Ordering};
    // One store descriptor: every open resolves the object's path again.
    let fx = std::sync::Arc::new(fixture_with(
        true,
        FsConfig {
            max_store_fds: 1,
            ..FsConfig::default()
        },
    ));
    let names = ["n0", "n1", "n2", "n3"];
    for name in names {
        let (entry, handle) = fx.create(ROOT_INODE, name);
        fx.write(
            entry.inode,
            handle,
            0,
            format!("{:016}", entry.inode).as_bytes(),
        );
        fx.release(entry.inode, handle);
    }
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let renamer = {
        let (fx, stop) = (fx.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let (a, b) = (names[i % 4], names[(i + 1 + i / 4) % 4]);
                if a != b {
                    fx.fs
                        .rename(
                            &fx.ctx,
                            ROOT_INODE,
                            &c(a),
                            ROOT_INODE,
                            &c(b),
                            libc::RENAME_EXCHANGE,
                        )
                        .unwrap();
                }
                i += 1;
            }
        })
    };
    for round in 0..500 {
        let entry = fx.lookup(ROOT_INODE, names[round % 4]).unwrap();
        let handle = fx.open(entry.inode, libc::O_RDONLY);
        let data = fx.read(entry.inode, handle, 0, 64);
        fx.release(entry.inode, handle);
        fx.fs.forget(&fx.ctx, entry.inode, 1);
        assert_eq!(
            data,
            format!("{:016}", entry.inode).as_bytes(),
            "round {round}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    renamer.join().unwrap();
    fx.assert_mirror();
}

#[test]
fn statfs_reports_the_store() {
    let fx = redirecting();
    let st = fx.fs.statfs(&fx.ctx, ROOT_INODE).unwrap();
    let dir = CString::new(fx.volume.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid path and a zeroed, writable statvfs64.
    let mut host: libc::statvfs64 = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs64(dir.as_ptr(), &mut host) }, 0);
    assert_eq!(st.f_blocks, host.f_blocks);
    assert_eq!(st.f_fsid, host.f_fsid);
}

#[test]
fn fsync_of_redirected_file_succeeds_and_keeps_sizes_equal() {
    let fx = redirecting();
    let (entry, handle) = fx.create(ROOT_INODE, "f");
    fx.write(entry.inode, handle, 0, b"durable");
    fx.fs.fsync(&fx.ctx, entry.inode, false, handle).unwrap();
    fx.fs.fsync(&fx.ctx, entry.inode, true, handle).unwrap();
    fx.release(entry.inode, handle);
    assert_eq!(std::fs::metadata(fx.guest.join("f")).unwrap().len(), 7);
    fx.assert_mirror();
}

#[test]
fn o_sync_writes_reach_stub_and_store() {
    let fx = redirecting();
    let entry = fx.write_file(ROOT_INODE, "f", b"");
    let handle = fx.open(entry.inode, libc::O_WRONLY | libc::O_SYNC);
    fx.write(entry.inode, handle, 0, b"synced");
    fx.release(entry.inode, handle);
    assert_eq!(std::fs::read(fx.volume.join("f")).unwrap(), b"synced");
    assert_eq!(std::fs::metadata(fx.guest.join("f")).unwrap().len(), 6);
}

#[test]
fn setattr_through_a_directory_handle_reaches_the_directory() {
    // Passthrough: both handles come from the passthrough layer, so numbers can collide.
    let fx = passthrough();
    let dir = fx.mkdir(ROOT_INODE, "d");
    // A file handle exists too, so a mix-up of the two kinds would be visible.
    let (file, fh) = fx.create(ROOT_INODE, "f");
    let (dh, _) = fx.fs.opendir(&fx.ctx, dir.inode, 0).unwrap();
    let dh = dh.unwrap();
    // SAFETY: stat64 is plain old data.
    let mut attr: libc::stat64 = unsafe { std::mem::zeroed() };
    attr.st_mode = 0o700;
    let (st, _) = fx
        .fs
        .setattr(&fx.ctx, dir.inode, attr, Some(dh), SetattrValid::MODE)
        .unwrap();
    assert_eq!(st.st_mode & 0o7777, 0o700);
    fx.fs.releasedir(&fx.ctx, dir.inode, 0, dh).unwrap();
    fx.release(file.inode, fh);
}

#[test]
fn opens_beyond_the_descriptor_budget_get_emfile() {
    // Without file handles the file's node holds a descriptor too.
    let node = usize::from(!FsConfig::default().inode_file_handles);
    let fx = fixture_with(
        true,
        FsConfig {
            max_guest_fds: Some(2 + node),
            ..FsConfig::default()
        },
    );
    let entry = fx.write_file(ROOT_INODE, "f", b"x");
    let a = fx.open(entry.inode, libc::O_RDONLY);
    let _b = fx.open(entry.inode, libc::O_RDONLY);
    let r = fx.fs.open(&fx.ctx, entry.inode, libc::O_RDONLY as u32, 0);
    assert_eq!(errno_of(r), libc::EMFILE);
    let r = fx.fs.opendir(&fx.ctx, ROOT_INODE, 0);
    assert_eq!(errno_of(r), libc::EMFILE);
    fx.release(entry.inode, a);
    assert!(fx
        .fs
        .open(&fx.ctx, entry.inode, libc::O_RDONLY as u32, 0)
        .is_ok());
}

#[test]
fn guest_name_like_the_control_area_stays_inside_the_volume() {
    let fx = redirecting();
    let dir = fx.mkdir(ROOT_INODE, ".fsredirect");
    fx.write_file(dir.inode, "lock", b"guest data");
    assert_eq!(
        std::fs::read(fx.volume.join(".fsredirect/lock")).unwrap(),
        b"guest data"
    );
    // The real control area is untouched: its lock still holds our pid, not guest bytes.
    let lock = std::fs::read_to_string(fx.control.join("lock")).unwrap();
    assert_eq!(lock.trim(), std::process::id().to_string());
}

#[test]
fn names_with_arbitrary_bytes_reach_the_same_store_path() {
    let fx = redirecting();
    let name = CString::new(vec![0xff, b'\n', b' ', 0x01, b'x']).unwrap();
    let (entry, handle, _, _) = fx
        .fs
        .create(&fx.ctx, ROOT_INODE, &name, create_in(0o644, libc::O_RDWR))
        .unwrap();
    fx.write(entry.inode, handle.unwrap(), 0, b"odd");
    fx.release(entry.inode, handle.unwrap());
    let host_name = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name.as_bytes());
    assert_eq!(std::fs::read(fx.volume.join(host_name)).unwrap(), b"odd");
    fx.assert_mirror();
}

#[path = "policy_tests.rs"]
mod policy_tests;

#[path = "hostile_tests.rs"]
mod hostile_tests;

#[path = "xattrs_tests.rs"]
mod xattrs_tests;

/// The configurations a LOOKUP answered by the server itself runs under: by file handle
/// (root only) and by `O_PATH` descriptor.
fn lookup_configs() -> Vec<FsConfig> {
    let mut configs = vec![FsConfig {
        inode_file_handles: false,
        ..FsConfig::default()
    }];
    if FsConfig::default().inode_file_handles {
        configs.push(FsConfig {
            inode_file_handles: true,
            ..FsConfig::default()
        });
    }
    configs
}

#[test]
fn a_lookup_again_follows_a_name_replaced_on_the_host() {
    for cfg in lookup_configs() {
        for store in [false, true] {
            let fx = fixture_with(store, cfg.clone());
            let old = fx.write_file(ROOT_INODE, "a", b"one");
            // A GETATTR gives the node a hot handle (by file handle): it is pinned.
            fx.fs.getattr(&fx.ctx, old.inode, None).unwrap();
            let again = fx.lookup(ROOT_INODE, "a").unwrap();
            assert_eq!(again.inode, old.inode);
            assert_eq!(again.attr.st_size, 3);
            // Behind the server's back, the name comes to lead to another inode.
            std::fs::rename(fx.guest.join("a"), fx.guest.join("moved")).unwrap();
            std::fs::write(fx.guest.join("a"), b"other").unwrap();
            let new = fx.lookup(ROOT_INODE, "a").unwrap();
            assert_ne!(new.inode, old.inode, "{cfg:?} store {store}");
            assert_eq!(new.attr.st_size, 5);
            assert_eq!(fx.read_file(ROOT_INODE, "a"), b"other");
        }
    }
}

#[test]
fn a_lookup_again_of_a_name_removed_on_the_host_is_enoent_and_the_name_can_be_made_again() {
    for cfg in lookup_configs() {
        for store in [false, true] {
            let fx = fixture_with(store, cfg.clone());
            let old = fx.write_file(ROOT_INODE, "a", b"one");
            fx.fs.getattr(&fx.ctx, old.inode, None).unwrap();
            std::fs::remove_file(fx.guest.join("a")).unwrap();
            assert_eq!(
                errno_of(fx.lookup(ROOT_INODE, "a")),
                libc::ENOENT,
                "{cfg:?} store {store}"
            );
            // The server's descriptor of the directory says the name is free: it is made.
            let (new, handle) = fx.create(ROOT_INODE, "a");
            fx.release(new.inode, handle);
            assert_eq!(fx.read_file(ROOT_INODE, "a"), b"");
        }
    }
}

#[test]
fn a_create_finds_a_name_made_on_the_host_behind_the_server() {
    for cfg in lookup_configs() {
        for store in [false, true] {
            let fx = fixture_with(store, cfg.clone());
            fx.write_file(ROOT_INODE, "first", b"1");
            // The directory's descriptor is open now; the host adds a name to it.
            std::fs::write(fx.guest.join("b"), b"host").unwrap();
            let r = fx.fs.create(
                &fx.ctx,
                ROOT_INODE,
                &c("b"),
                create_in(0o644, libc::O_RDWR | libc::O_EXCL),
            );
            assert_eq!(errno_of(r), libc::EEXIST, "{cfg:?} store {store}");
            assert_eq!(fx.read_file(ROOT_INODE, "b"), b"host");
            // Without O_EXCL, a CREATE of it is an open of what is there.
            std::fs::write(fx.guest.join("c"), b"also host").unwrap();
            let (entry, handle) = fx.create(ROOT_INODE, "c");
            fx.release(entry.inode, handle);
            assert_eq!(fx.read_file(ROOT_INODE, "c"), b"also host", "{cfg:?}");
        }
    }
}

#[test]
fn an_unlink_of_a_name_replaced_on_the_host_removes_what_the_name_leads_to_now() {
    for cfg in lookup_configs() {
        let fx = fixture_with(true, cfg.clone());
        let old = fx.write_file(ROOT_INODE, "a", b"one");
        fx.fs.getattr(&fx.ctx, old.inode, None).unwrap();
        // Behind the server's back, the redirected file moves away and a plain one takes
        // its name: the UNLINK is of the plain one, whatever the name table last knew.
        std::fs::rename(fx.guest.join("a"), fx.guest.join("moved")).unwrap();
        std::fs::write(fx.guest.join("a"), b"other").unwrap();
        fx.fs.unlink(&fx.ctx, ROOT_INODE, &c("a")).unwrap();
        assert!(!fx.guest.join("a").exists(), "{cfg:?}");
        // The redirected file keeps its stored data (where its record says; the host's
        // rename behind the server did not move it).
        assert_eq!(
            std::fs::read(fx.volume.join("a")).unwrap(),
            b"one",
            "{cfg:?}"
        );
        assert!(fx.guest.join("moved").exists());
    }
}

#[test]
fn an_unlink_the_server_checks_itself_gives_its_reference_back() {
    for cfg in lookup_configs() {
        for store in [false, true] {
            let fx = fixture_with(store, cfg.clone());
            let entry = fx.write_file(ROOT_INODE, "f", b"data");
            fx.fs.getattr(&fx.ctx, entry.inode, None).unwrap();
            assert_eq!(fx.lookup(ROOT_INODE, "f").unwrap().inode, entry.inode);
            fx.fs.unlink(&fx.ctx, ROOT_INODE, &c("f")).unwrap();
            assert!(!fx.guest.join("f").exists());
            // The kernel's two references hold the node, and nothing more does.
            fx.fs.forget(&fx.ctx, entry.inode, 1);
            assert!(fx.fs.getattr(&fx.ctx, entry.inode, None).is_ok(), "{cfg:?}");
            fx.fs.forget(&fx.ctx, entry.inode, 1);
            assert!(
                fx.fs.getattr(&fx.ctx, entry.inode, None).is_err(),
                "{cfg:?} store {store}"
            );
            let deleted = format!("{} (deleted)", fx.guest.join("f").display());
            assert_eq!(
                descriptors_of(Path::new(&deleted)),
                0,
                "{cfg:?} store {store}: the unlinked file is still held open"
            );
        }
    }
}

#[test]
fn a_redirected_file_nobody_reads_is_stat_ed_without_opening_its_object() {
    for cfg in lookup_configs() {
        let fx = fixture_with(true, cfg.clone());
        fx.write_file(ROOT_INODE, "f", b"twelve bytes");
        let fx = fx.restart(cfg.clone());
        let entry = fx.lookup(ROOT_INODE, "f").unwrap();
        assert_eq!(entry.attr.st_size, 12, "{cfg:?}");
        let (st, _) = fx.fs.getattr(&fx.ctx, entry.inode, None).unwrap();
        assert_eq!(st.st_size, 12);
        assert_eq!(descriptors_of(&fx.volume.join("f")), 0, "{cfg:?}");
        // The first READ opens it.
        assert_eq!(fx.read_file(ROOT_INODE, "f"), b"twelve bytes");
    }
}

/// How many of this process's descriptors lead to `path`.
fn descriptors_of(path: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target == path)
        .count()
}

#[test]
fn lookups_the_server_answers_are_forgotten_first_and_the_node_goes_with_the_last() {
    for cfg in lookup_configs() {
        // Passthrough: no store caches hold descriptors of the file.
        let fx = fixture_with(false, cfg.clone());
        let entry = fx.write_file(ROOT_INODE, "f", b"data");
        fx.fs.getattr(&fx.ctx, entry.inode, None).unwrap();
        // The CREATE's reference, then two more LOOKUPs (answered by the server).
        for _ in 0..2 {
            assert_eq!(fx.lookup(ROOT_INODE, "f").unwrap().inode, entry.inode);
        }
        fx.fs.forget(&fx.ctx, entry.inode, 2);
        let (st, _) = fx.fs.getattr(&fx.ctx, entry.inode, None).unwrap();
        assert_eq!(st.st_size, 4, "{cfg:?}: the node is still held");
        fx.fs.forget(&fx.ctx, entry.inode, 1);
        assert!(fx.fs.getattr(&fx.ctx, entry.inode, None).is_err());
        // The passthrough layer let its node go too, with its descriptor of it (without
        // file handles; the hot handle goes either way).
        assert_eq!(descriptors_of(&fx.guest.join("f")), 0, "{cfg:?}");
        assert_eq!(fx.read_file(ROOT_INODE, "f"), b"data");
    }
}
