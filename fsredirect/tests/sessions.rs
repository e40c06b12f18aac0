//! FUSE sessions that end and start again on one server (a guest looping DESTROY and INIT, a
//! looping vhost-user daemon serving front-end after front-end): the server must not grow.
//! In a process of its own, so that counting the process's descriptors counts only these.

use std::ffi::CString;

use fsredirect::{FsConfig, RedirectFs, ShareSpec};
use fuse_backend_rs::abi::fuse_abi::{CreateIn, FsOptions};
use fuse_backend_rs::api::filesystem::{Context, FileSystem};

const ROOT: u64 = 1;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// 1. A guest ends its FUSE session (DESTROY) and starts another (INIT) a hundred times, each
///    time holding a looked-up file, an open file and an open directory, as root would
///    (file-handle inodes, where available) and as a server without root would.
/// 2. The server's descriptors do not grow with the sessions.
#[test]
fn destroy_and_init_in_a_loop_do_not_grow_the_server() {
    for handles in [true, false] {
        let tmp = tempfile::tempdir().unwrap();
        let guest = tmp.path().join("guest");
        std::fs::create_dir(&guest).unwrap();
        let spec = format!(
            "tag=t,dir={},store={}",
            guest.display(),
            tmp.path().join("store").display()
        );
        let cfg = FsConfig {
            inode_file_handles: handles && FsConfig::default().inode_file_handles,
            ..FsConfig::default()
        };
        let fs = RedirectFs::new(&ShareSpec::parse(&spec).unwrap(), cfg.clone()).unwrap();
        let mut ctx = Context::new();
        // SAFETY: geteuid/getegid have no preconditions.
        (ctx.uid, ctx.gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        fs.init(FsOptions::empty()).unwrap();
        let name = CString::new("f").unwrap();
        let args = CreateIn {
            flags: libc::O_RDWR as u32,
            mode: libc::S_IFREG | 0o644,
            umask: 0,
            fuse_flags: 0,
        };
        fs.create(&ctx, ROOT, &name, args).unwrap();
        let session = || {
            let entry = fs.lookup(&ctx, ROOT, &name).unwrap();
            fs.open(&ctx, entry.inode, libc::O_RDONLY as u32, 0)
                .unwrap();
            fs.opendir(&ctx, ROOT, 0).unwrap();
            fs.destroy();
            fs.init(FsOptions::empty()).unwrap();
        };
        for _ in 0..10 {
            session();
        }
        let before = open_fds();
        for _ in 0..100 {
            session();
        }
        let after = open_fds();
        assert!(
            after <= before,
            "file handles {}: 100 sessions took the server from {before} to {after} descriptors",
            cfg.inode_file_handles
        );
        assert_eq!(fs.guest_fds().0, 0);
    }
}
