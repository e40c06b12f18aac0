//! Files the host keeps append-only (`chattr +a`) in a share: a READ or WRITE whose O_APPEND
//! differs from the handle's must fail with EPERM and leave the handle's descriptor open.
//!
//! fuse-backend-rs 0.14 applies each READ's and WRITE's file flags to the handle's
//! descriptor with `fcntl(F_SETFL)`; the host refuses to change O_APPEND on an append-only
//! file, and on that error the passthrough layer closed the descriptor its handle still
//! owned. The handle's next WRITE then reached whatever file took the number: here, a file
//! the guest opened meanwhile.
//!
//! Making a file append-only takes CAP_LINUX_IMMUTABLE and a file system that keeps the
//! flag: without either, the trials say so and are skipped.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::path::Path;

use fsredirect::fs::{FsConfig, RedirectFs};
use fsredirect::memio::{MemSink, MemSource};
use fsredirect::names::ROOT_INODE;
use fsredirect::share::ShareSpec;
use fuse_backend_rs::abi::fuse_abi::FsOptions;
use fuse_backend_rs::api::filesystem::{Context, FileSystem};
use libtest_mimic::{Arguments, Completion, Failed, Trial};

/// `FS_APPEND_FL` of `<linux/fs.h>`.
const FS_APPEND_FL: libc::c_long = 0x20;

fn main() {
    let args = Arguments::from_args();
    let mut trials = Vec::new();
    for (share, policy) in [("passthrough", None), ("inline", Some("min-size:1M"))] {
        for (inodes, file_handles) in [("handles", true), ("paths", false)] {
            trials.push(Trial::ignorable_test(
                format!("o_append_changes_on_an_append_only_file_close_nothing_{share}_{inodes}"),
                move || run(policy, file_handles),
            ));
        }
    }
    libtest_mimic::run(&args, trials).exit();
}

fn skipped(why: String) -> Result<Completion, Failed> {
    println!("skipped, because {why}");
    Ok(Completion::ignored_with(format!("skipped, because {why}")))
}

/// Sets or clears the append-only flag of `path`.
fn set_append_only(path: &Path, on: bool) -> std::io::Result<()> {
    let file = std::fs::File::open(path)?;
    let mut flags: libc::c_long = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one long into `flags`; the descriptor is open.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    flags = if on {
        flags | FS_APPEND_FL
    } else {
        flags & !FS_APPEND_FL
    };
    // SAFETY: FS_IOC_SETFLAGS reads one long from `flags`; the descriptor is open.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn ctx() -> Context {
    let mut ctx = Context::new();
    // SAFETY: geteuid and getegid have no preconditions.
    (ctx.uid, ctx.gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    ctx
}

fn check(what: &str, ok: bool) -> Result<(), Failed> {
    match ok {
        true => Ok(()),
        false => Err(what.into()),
    }
}

/// The share, the append-only `log` and the plain `other` in it; clears the flag at the
/// end whatever happened, so the temporary tree can go.
fn run(policy: Option<&str>, file_handles: bool) -> Result<Completion, Failed> {
    // SAFETY: geteuid has no preconditions.
    if file_handles && unsafe { libc::geteuid() } != 0 {
        return skipped("file-handle inodes need CAP_DAC_READ_SEARCH (run as root)".into());
    }
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let guest = tmp.path().join("guest");
    std::fs::create_dir(&guest).map_err(|e| e.to_string())?;
    let log = guest.join("log");
    std::fs::write(&log, b"line 1\n").map_err(|e| e.to_string())?;
    std::fs::write(guest.join("other"), b"other bytes").map_err(|e| e.to_string())?;
    if let Err(e) = set_append_only(&log, true) {
        return skipped(format!(
            "the host refuses to make a file append-only here ({e})"
        ));
    }
    let result = exercise(&guest, tmp.path(), policy, file_handles);
    set_append_only(&log, false).map_err(|e| format!("clearing append-only: {e}"))?;
    result.map(|()| Completion::Completed)
}

fn exercise(
    guest: &Path,
    base: &Path,
    policy: Option<&str>,
    file_handles: bool,
) -> Result<(), Failed> {
    let spec = match policy {
        Some(policy) => format!(
            "tag=t,dir={},store={},volume=v,policy={policy}",
            guest.display(),
            base.join("store").display()
        ),
        None => format!("tag=t,dir={}", guest.display()),
    };
    let share = ShareSpec::parse(&spec).map_err(|e| e.to_string())?;
    let cfg = FsConfig {
        inode_file_handles: file_handles,
        ..FsConfig::default()
    };
    let fs = RedirectFs::new(&share, cfg).map_err(|e| e.to_string())?;
    fs.init(FsOptions::empty()).map_err(|e| e.to_string())?;
    let ctx = ctx();
    let lookup = |name: &str| {
        fs.lookup(&ctx, ROOT_INODE, &CString::new(name).unwrap())
            .map(|e| e.inode)
            .map_err(|e| Failed::from(format!("LOOKUP {name}: {e}")))
    };
    let open = |inode: u64, flags: i32| {
        fs.open(&ctx, inode, flags as u32, 0)
            .map_err(|e| Failed::from(format!("OPEN: {e}")))?
            .0
            .ok_or_else(|| Failed::from("OPEN gave no handle"))
    };
    let write = |inode: u64, handle: u64, offset: u64, data: &[u8], flags: i32| {
        let mut src = MemSource::new(data.to_vec());
        fs.write(
            &ctx,
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
    };
    let read = |inode: u64, handle: u64, flags: i32| {
        let mut sink = MemSink::default();
        fs.read(&ctx, inode, handle, &mut sink, 4096, 0, None, flags as u32)
            .map(|_| sink.into_bytes())
    };
    let errno = |r: std::io::Result<usize>| r.err().and_then(|e| e.raw_os_error());

    let log = lookup("log")?;
    let appending = open(log, libc::O_WRONLY | libc::O_APPEND)?;
    let reading = open(log, libc::O_RDONLY)?;
    // The guest cleared O_APPEND (fcntl) and writes; and reads with O_APPEND set.
    check(
        "a WRITE without O_APPEND to an append-only file fails with EPERM",
        errno(write(log, appending, 0, b"lost\n", libc::O_WRONLY)) == Some(libc::EPERM),
    )?;
    check(
        "a READ adding O_APPEND on an append-only file fails with EPERM",
        errno(read(log, reading, libc::O_RDONLY | libc::O_APPEND).map(|b| b.len()))
            == Some(libc::EPERM),
    )?;
    // Files opened now would take the number of a descriptor closed by mistake.
    let other = lookup("other")?;
    let other_handle = open(other, libc::O_RDWR)?;
    let n = write(
        log,
        appending,
        0,
        b"line 2\n",
        libc::O_WRONLY | libc::O_APPEND,
    )
    .map_err(|e| format!("a WRITE with the open flags: {e}"))?;
    check("the WRITE with O_APPEND wrote its 7 bytes", n == 7)?;
    // Each file through its own handle: what it must hold.
    let holds = |what: &str, inode: u64, handle: u64, flags: i32, want: &[u8]| {
        let bytes = read(inode, handle, flags).map_err(|e| format!("READ of {what}: {e}"))?;
        let got = String::from_utf8_lossy(&bytes);
        check(
            &format!(
                "{what} holds {:?}, got {got:?}",
                String::from_utf8_lossy(want)
            ),
            bytes == want,
        )
    };
    holds("log", log, reading, libc::O_RDONLY, b"line 1\nline 2\n")?;
    holds("other", other, other_handle, libc::O_RDWR, b"other bytes")?;
    for (inode, handle) in [(log, appending), (log, reading), (other, other_handle)] {
        fs.release(&ctx, inode, 0, handle, false, false, None)
            .map_err(|e| format!("RELEASE: {e}"))?;
    }
    Ok(())
}
