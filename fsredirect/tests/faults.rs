//! A failing store (ENOSPC, EIO, short writes, injected with [`FaultPlan`]) gives the guest an
//! errno or a short count, and leaves every stub agreeing with its stored object: `verify`
//! finds nothing afterwards.

use std::ffi::CString;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use fsredirect::faults::{Fault, FaultPlan, Hook, Namespace, OpKind, StoreHook};
use fsredirect::memio::MemSource;
use fsredirect::testshare::TestShare;
use fsredirect::{FsConfig, RedirectFs};
use fuse_backend_rs::abi::fuse_abi::{CreateIn, SetattrValid};
use fuse_backend_rs::api::filesystem::{Context, Entry, FileSystem};

const ROOT: u64 = 1;

struct Fx {
    share: TestShare,
    guest: PathBuf,
    volume: PathBuf,
    plan: Arc<FaultPlan>,
    fs: Option<RedirectFs>,
    ctx: Context,
}

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

impl Fx {
    fn new() -> Fx {
        let share = TestShare::new();
        let mut fx = Fx {
            guest: share.guest.clone(),
            volume: share.volume.clone(),
            share,
            plan: FaultPlan::new(),
            fs: None,
            ctx: Context::new(),
        };
        fx.restart();
        fx
    }

    /// Stops the server cleanly and starts a new one (which settles kept records).
    fn restart(&mut self) {
        drop(self.fs.take());
        let cfg = FsConfig {
            store_hook: Hook::new(self.plan.clone() as Arc<dyn StoreHook>),
            ..FsConfig::default()
        };
        self.fs = Some(self.share.try_serve(cfg).unwrap().fs);
    }

    fn fs(&self) -> &RedirectFs {
        self.fs.as_ref().unwrap()
    }

    fn create(&self, name: &str) -> io::Result<(Entry, u64)> {
        let args = CreateIn {
            flags: libc::O_RDWR as u32,
            mode: libc::S_IFREG | 0o644,
            umask: 0,
            fuse_flags: 0,
        };
        let (entry, h, _, _) = self.fs().create(&self.ctx, ROOT, &c(name), args)?;
        Ok((entry, h.unwrap()))
    }

    fn write(&self, inode: u64, h: u64, offset: u64, data: &[u8]) -> io::Result<usize> {
        self.fs().write(
            &self.ctx,
            inode,
            h,
            &mut MemSource::new(data.to_vec()),
            data.len() as u32,
            offset,
            None,
            false,
            0,
            0,
        )
    }

    fn file(&self, name: &str, data: &[u8]) -> Entry {
        let (entry, h) = self.create(name).unwrap();
        self.write(entry.inode, h, 0, data).unwrap();
        self.fs()
            .release(&self.ctx, entry.inode, 0, h, false, false, None)
            .unwrap();
        entry
    }

    fn stub_len(&self, name: &str) -> u64 {
        std::fs::metadata(self.guest.join(name)).unwrap().len()
    }

    fn object(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.volume.join(name)).unwrap()
    }

    fn assert_verified(&self) {
        assert_eq!(
            fsredirect::verify::verify_share(&self.share.share).unwrap(),
            vec![]
        );
    }
}

fn errno<T: std::fmt::Debug>(r: io::Result<T>) -> i32 {
    r.unwrap_err().raw_os_error().unwrap()
}

#[test]
fn enospc_on_write_is_the_guests_errno_and_keeps_old_data() {
    let fx = Fx::new();
    let entry = fx.file("f", b"old data");
    let (h, _, _) = fx
        .fs()
        .open(&fx.ctx, entry.inode, libc::O_RDWR as u32, 0)
        .unwrap();
    fx.plan.arm(OpKind::Write, Fault::Errno(libc::ENOSPC));
    let r = fx.write(entry.inode, h.unwrap(), 4, &[b'x'; 4096]);
    assert_eq!(errno(r), libc::ENOSPC);
    fx.plan.disarm();
    assert_eq!(fx.object("f"), b"old data");
    assert_eq!(fx.stub_len("f"), 8);
    fx.assert_verified();
}

#[test]
fn short_write_from_the_store_returns_the_short_count_and_stub_follows() {
    let fx = Fx::new();
    let (entry, h) = fx.create("f").unwrap();
    fx.plan.arm(OpKind::Write, Fault::ShortWrite(100));
    let n = fx.write(entry.inode, h, 0, &[b'y'; 4096]).unwrap();
    fx.plan.disarm();
    assert_eq!(n, 100);
    assert_eq!(fx.object("f"), vec![b'y'; 100]);
    assert_eq!(fx.stub_len("f"), 100);
    fx.assert_verified();
}

#[test]
fn eio_on_truncate_is_the_guests_errno_and_restores_the_stub() {
    let fx = Fx::new();
    let entry = fx.file("f", b"0123456789");
    fx.plan.arm(OpKind::SetLen, Fault::Errno(libc::EIO));
    // SAFETY: stat64 is plain old data; all-zero is a valid value.
    let mut attr: libc::stat64 = unsafe { std::mem::zeroed() };
    attr.st_size = 3;
    let r = fx
        .fs()
        .setattr(&fx.ctx, entry.inode, attr, None, SetattrValid::SIZE);
    assert_eq!(errno(r), libc::EIO);
    fx.plan.disarm();
    assert_eq!(fx.stub_len("f"), 10);
    assert_eq!(fx.object("f"), b"0123456789");
    fx.assert_verified();
}

#[test]
fn eio_on_open_with_o_trunc_restores_the_stub() {
    let fx = Fx::new();
    let entry = fx.file("f", b"0123456789");
    fx.plan.arm(OpKind::SetLen, Fault::Errno(libc::EIO));
    let r = fx.fs().open(
        &fx.ctx,
        entry.inode,
        (libc::O_RDWR | libc::O_TRUNC) as u32,
        0,
    );
    assert_eq!(errno(r), libc::EIO);
    fx.plan.disarm();
    assert_eq!(fx.stub_len("f"), 10);
    fx.assert_verified();
}

#[test]
fn eio_creating_the_object_leaves_no_stub() {
    let fx = Fx::new();
    fx.plan.arm(
        OpKind::Namespace(Namespace::Create),
        Fault::Errno(libc::EIO),
    );
    assert_eq!(errno(fx.create("f")), libc::EIO);
    fx.plan.disarm();
    assert!(!fx.guest.join("f").exists());
    fx.assert_verified();
}

#[test]
fn enospc_for_the_intent_record_fails_the_rename_before_it_starts() {
    let fx = Fx::new();
    fx.file("a", b"A");
    fx.plan.arm(
        OpKind::Namespace(Namespace::IntentRecord),
        Fault::Errno(libc::ENOSPC),
    );
    let r = fx.fs().rename(&fx.ctx, ROOT, &c("a"), ROOT, &c("b"), 0);
    assert_eq!(errno(r), libc::ENOSPC);
    fx.plan.disarm();
    assert!(fx.guest.join("a").exists() && !fx.guest.join("b").exists());
    assert_eq!(fx.object("a"), b"A");
    fx.assert_verified();
}

#[test]
fn eio_moving_the_object_fails_the_rename_on_both_sides() {
    let fx = Fx::new();
    fx.file("a", b"A");
    fx.file("b", b"B");
    fx.plan.arm(
        OpKind::Namespace(Namespace::Rename),
        Fault::Errno(libc::EIO),
    );
    let r = fx.fs().rename(&fx.ctx, ROOT, &c("a"), ROOT, &c("b"), 0);
    assert_eq!(errno(r), libc::EIO);
    fx.plan.disarm();
    assert_eq!(fx.object("a"), b"A");
    assert_eq!(fx.object("b"), b"B");
    fx.assert_verified();
}

#[test]
fn eio_linking_the_object_fails_the_link() {
    let fx = Fx::new();
    let entry = fx.file("a", b"A");
    fx.plan
        .arm(OpKind::Namespace(Namespace::Link), Fault::Errno(libc::EIO));
    let r = fx.fs().link(&fx.ctx, entry.inode, ROOT, &c("b"));
    assert_eq!(errno(r), libc::EIO);
    fx.plan.disarm();
    assert!(!fx.guest.join("b").exists());
    fx.assert_verified();
}

#[test]
fn eio_on_fsync_is_the_guests_errno() {
    let fx = Fx::new();
    let (entry, h) = fx.create("f").unwrap();
    fx.write(entry.inode, h, 0, b"data").unwrap();
    fx.plan.arm(OpKind::Sync, Fault::Errno(libc::EIO));
    assert_eq!(
        errno(fx.fs().fsync(&fx.ctx, entry.inode, false, h)),
        libc::EIO
    );
    fx.plan.disarm();
    fx.fs().fsync(&fx.ctx, entry.inode, false, h).unwrap();
    fx.assert_verified();
}

#[test]
fn eio_removing_the_object_after_unlink_is_finished_by_the_next_start() {
    let mut fx = Fx::new();
    fx.file("f", b"data");
    fx.plan.arm(
        OpKind::Namespace(Namespace::Remove),
        Fault::Errno(libc::EIO),
    );
    // The guest's name is gone: for the guest the unlink happened.
    fx.fs().unlink(&fx.ctx, ROOT, &c("f")).unwrap();
    fx.plan.disarm();
    assert!(!fx.guest.join("f").exists());
    // A clean restart still settles the kept record.
    fx.restart();
    let report = fx.fs().recovery().cloned().expect("recovery ran");
    assert_eq!(report.intents, 1, "{report}");
    assert!(!fx.volume.join("f").exists());
    fx.assert_verified();
}

#[test]
fn failed_store_sync_at_stop_leaves_the_volume_to_recovery() {
    let mut fx = Fx::new();
    fx.file("f", b"data");
    fx.plan.arm(OpKind::SyncFs, Fault::Errno(libc::EIO));
    drop(fx.fs.take());
    fx.plan.disarm();
    fx.restart();
    assert!(
        fx.fs().recovery().is_some(),
        "no clean marker without a sync"
    );
    fx.assert_verified();
}
