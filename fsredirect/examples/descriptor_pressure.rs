//! What a guest that never gives anything back costs the server: host descriptors and resident
//! memory after a million LOOKUPs without FORGET, 100,000 OPENs without RELEASE, 100,000
//! OPENDIRs without RELEASEDIR and 100,000 files created and unlinked while open, each on a
//! fresh redirecting share, with the node identities a root server uses (file handles) and
//! those of a server without root (host inode numbers).
//!
//! ```text
//! cargo run --release -p fsredirect --example descriptor_pressure [-- --files N --scale K]
//! ```
//!
//! Prints one Markdown table row per phase. Without root, only the inode-number mode runs.
//! `--scale K` divides every count by K for a quick look.

use std::ffi::CString;
use std::io;
use std::time::Instant;

use fsredirect::{FsConfig, RedirectFs, ShareSpec};
use fuse_backend_rs::abi::fuse_abi::{CreateIn, FsOptions};
use fuse_backend_rs::api::filesystem::{Context, FileSystem};

const ROOT: u64 = 1;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str, default: u64| -> u64 {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let scale = value("--scale", 1).max(1);
    let files = value("--files", 20_000) / scale;
    let nofile = fsredirect::fdbudget::raise_nofile_limit()?;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    println!(
        "RLIMIT_NOFILE {nofile}, {files} files in the share, running as uid {}",
        unsafe {
            // SAFETY: as above.
            libc::geteuid()
        }
    );
    println!();
    println!("| node identity | phase | requests | refused (EMFILE) | guest descriptors (budget) | process descriptors | resident memory | time |");
    println!("|---|---|---|---|---|---|---|---|");
    let modes: &[bool] = if root { &[true, false] } else { &[false] };
    for &handles in modes {
        let mode = if handles {
            "file handles (root)"
        } else {
            "inode numbers (no root)"
        };
        let phases: [(&str, u64, Phase); 4] = [
            ("LOOKUP without FORGET", 1_000_000 / scale, Phase::Lookups),
            ("OPEN without RELEASE", 100_000 / scale, Phase::Opens),
            (
                "OPENDIR without RELEASEDIR",
                100_000 / scale,
                Phase::Opendirs,
            ),
            (
                "CREATE + UNLINK, kept open",
                100_000 / scale,
                Phase::OpenUnlinked,
            ),
        ];
        for (name, count, phase) in phases {
            let share = Share::new(handles, files)?;
            let t0 = Instant::now();
            let refused = phase.run(&share, count, files)?;
            let (guest, budget) = share.fs.guest_fds();
            println!(
                "| {mode} | {name} | {count} | {refused} | {guest} ({budget}) | {} | {} MiB | {:.1} s |",
                open_fds(),
                resident_kib() / 1024,
                t0.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Phase {
    Lookups,
    Opens,
    Opendirs,
    OpenUnlinked,
}

impl Phase {
    /// Sends `count` requests of this phase; returns how many were refused with EMFILE.
    fn run(self, share: &Share, count: u64, files: u64) -> io::Result<u64> {
        let ctx = share.ctx;
        let fs = &share.fs;
        let mut refused = 0;
        let mut tally = |r: io::Result<()>| -> io::Result<()> {
            match r {
                Ok(()) => Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EMFILE) => {
                    refused += 1;
                    Ok(())
                }
                Err(e) => Err(e),
            }
        };
        match self {
            Phase::Lookups => {
                for i in 0..count {
                    let name = file_name(i % files.max(1));
                    tally(fs.lookup(&ctx, ROOT, &name).map(drop))?;
                }
            }
            Phase::Opens => {
                let entry = fs.lookup(&ctx, ROOT, &file_name(0))?;
                for _ in 0..count {
                    tally(
                        fs.open(&ctx, entry.inode, libc::O_RDONLY as u32, 0)
                            .map(drop),
                    )?;
                }
            }
            Phase::Opendirs => {
                for _ in 0..count {
                    tally(fs.opendir(&ctx, ROOT, 0).map(drop))?;
                }
            }
            Phase::OpenUnlinked => {
                let dir = fs.mkdir(&ctx, ROOT, c"scratch", 0o755, 0)?;
                for i in 0..count {
                    let name = CString::new(format!("u{i}")).expect("no NUL");
                    let args = CreateIn {
                        flags: libc::O_RDWR as u32,
                        mode: libc::S_IFREG | 0o644,
                        umask: 0,
                        fuse_flags: 0,
                    };
                    let created = fs.create(&ctx, dir.inode, &name, args);
                    tally(
                        created
                            .map(drop)
                            .and_then(|()| fs.unlink(&ctx, dir.inode, &name)),
                    )?;
                }
            }
        }
        Ok(refused)
    }
}

/// A redirecting share in a temp dir, `files` files written through the engine.
struct Share {
    fs: RedirectFs,
    ctx: Context,
    _tmp: tempfile::TempDir,
}

impl Share {
    fn new(file_handles: bool, files: u64) -> Result<Self, Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let guest = tmp.path().join("guest");
        std::fs::create_dir(&guest)?;
        let spec = format!(
            "tag=p,dir={},store={}",
            guest.display(),
            tmp.path().join("store").display()
        );
        let share = ShareSpec::parse(&spec)?;
        let cfg = FsConfig {
            inode_file_handles: file_handles,
            ..FsConfig::default()
        };
        let fs = RedirectFs::new(&share, cfg)?;
        fs.init(FsOptions::empty())?;
        let mut ctx = Context::new();
        // SAFETY: geteuid/getegid have no preconditions.
        (ctx.uid, ctx.gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        for i in 0..files {
            let args = CreateIn {
                flags: libc::O_RDWR as u32,
                mode: libc::S_IFREG | 0o644,
                umask: 0,
                fuse_flags: 0,
            };
            let (entry, handle, _, _) = fs.create(&ctx, ROOT, &file_name(i), args)?;
            if let Some(h) = handle {
                fs.release(&ctx, entry.inode, 0, h, false, false, None)?;
            }
            fs.forget(&ctx, entry.inode, 1);
        }
        Ok(Share { fs, ctx, _tmp: tmp })
    }
}

fn file_name(i: u64) -> CString {
    CString::new(format!("f{i}")).expect("no NUL")
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
