//! The host system calls one GETATTR and one LOOKUP cost, counted with strace: a redirected
//! file must cost what a file served as is costs (docs/architecture.md#per-node-state).
//!
//! The test runs itself again under `strace -f` (child mode, `FSR_SYSCALLS_CHILD`). The
//! child serves a redirecting share holding a redirected file and a plain one, and a
//! passthrough share holding a plain file; it brackets each request with a marker system
//! call (an `access` of a path that names the case), and the parent counts the calls the
//! child's thread made between the markers. Without strace the test says so and is skipped.
//!
//! A READDIR of the directory holding each file (and 40 more) must cost a fixed few calls,
//! whatever the number of entries: no lookup per entry.
//!
//! A 4 KiB WRITE in place of a redirected file may cost one host call more than of a plain
//! one: the stub's new mtime, once per tick of the kernel's coarse clock.
//!
//! It also prints what a CREATE, an UNLINK and the first LOOKUP of a name cost each kind of
//! file (the measured part of the redirecting layer's price for namespace changes and for
//! reading its metadata), and bounds them (`MOST_BY_FILE`).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::process::Command;

use fsredirect::fs::{FsConfig, RedirectFs};
use fsredirect::memio::MemSource;
use fsredirect::names::ROOT_INODE;
use fsredirect::share::ShareSpec;
use fsredirect::testshare::{Guest, TestShare};
use fuse_backend_rs::abi::fuse_abi::{CreateIn, FsOptions};
use fuse_backend_rs::api::filesystem::FileSystem;
use libtest_mimic::{Arguments, Failed, Trial};

/// The prefix of every marker path (it does not exist, so `access` fails at once).
const MARK: &str = "/fsr-syscalls-mark";

/// The most one request on a file of a passthrough share may cost, by request and by how the
/// server refers to inodes: what it cost before the per-node table (commit 92a0731), a
/// bound against regressions. With file handles, each request reopens the inode by its
/// handle; a LOOKUP then read the metadata again.
///
/// A LOOKUP again of a name whose node the kernel holds and the server keeps pinned (without
/// file handles every node, with them a node with a hot handle, which a regular file or a
/// directory gets at its CREATE or first LOOKUP) is answered with one `fstatat` in
/// the server's descriptor of the directory, which the first LOOKUP in that directory opened
/// (`fsredirect/src/fs/revalidate.rs`).
const MOST: [(&str, usize); 10] = [
    ("getattr-handles", 4),
    ("lookup-handles", 13),
    ("lookup_again-handles", 1),
    ("lookup_dir_again-handles", 1),
    ("lookup_new-handles", 1),
    ("getattr-paths", 1),
    ("lookup-paths", 5),
    ("lookup_again-paths", 1),
    ("lookup_dir_again-paths", 1),
    ("lookup_new-paths", 1),
];

/// The most one CREATE, one UNLINK and the first LOOKUP of a name may cost, by file and by
/// how the server refers to inodes, a bound against regressions: what they cost once the
/// server checks the name itself (one `fstatat` in its descriptor of the directory says it is
/// free, or leads to the node the kernel holds), unlinks through that descriptor, reaches a
/// store directory in one `openat2` (none at the top of the volume), stats a redirected
/// file's object without opening it, and knows a new object's figures (empty) without a
/// `stat`. The first CREATE also makes the intent log's first slot.
/// A first LOOKUP is the passthrough layer's (7 host calls by file handle, 3 by path), then a
/// read of the redirect metadata (by file handle: one `getxattrat` of its name in the server's
/// descriptor of the directory, where Linux 6.13 has it, and one `fstatat` checking that the
/// name still leads to the node; else reopen, read, close), the pin of a hot handle, and for a
/// redirected file the object's `fstatat`. Before: 27 and 16 for a redirected CREATE, 17 and
/// 11 for a redirected UNLINK, 10 and 4 for a plain one, 18 and 10 for a redirected file's
/// first LOOKUP (14 and 11 by file handle, redirected and plain, before `getxattrat`; 12 and
/// 9 with it but before the check, which let a host process's rename in between give a node
/// another file's record); and before intent slots were reused, 38 and 25 for a CREATE, 19
/// and 13 for an UNLINK.
const MOST_BY_FILE: [(&str, usize); 14] = [
    ("lookup_first-handles-redirected", 13),
    ("lookup_first-paths-redirected", 6),
    ("lookup_first-handles-plain", 10),
    ("lookup_first-paths-plain", 3),
    ("lookup_first-handles-passthrough", 10),
    ("lookup_first-paths-passthrough", 3),
    ("create-handles-redirected", 21),
    ("create-paths-redirected", 11),
    ("create-handles-plain", 12),
    ("create-paths-plain", 4),
    ("unlink-handles-redirected", 7),
    ("unlink-paths-redirected", 7),
    ("unlink-handles-plain", 2),
    ("unlink-paths-plain", 2),
];

/// The most one READDIR of a directory of 41 entries may cost: a seek and a `getdents64`
/// (and one more `getdents64` should the first hold only `.` and `..`).
const MOST_READDIR: usize = 3;

/// Files added beside each measured one, so a lookup per entry would show.
const MORE_ENTRIES: usize = 40;

fn main() {
    if std::env::var_os("FSR_SYSCALLS_CHILD").is_some() {
        child();
        return;
    }
    let args = Arguments::from_args();
    let trials = vec![Trial::test(
        "redirected_getattr_and_lookup_cost_what_plain_ones_cost",
        || {
            compare(&[
                "getattr",
                "lookup",
                "lookup_again",
                "lookup_dir_again",
                "lookup_new",
            ])
        },
    )
    .with_ignored_flag(strace().is_none())];
    if strace().is_none() {
        eprintln!("syscalls: skipped: strace is not installed (apt-get install strace)");
    }
    libtest_mimic::run(&args, trials).exit();
}

/// The strace binary, if there is one.
fn strace() -> Option<&'static str> {
    ["/usr/bin/strace", "/bin/strace"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
}

/// How the server may refer to inodes here: by file handle (root only) and by path.
fn modes() -> Vec<(&'static str, bool)> {
    // SAFETY: geteuid has no preconditions.
    match unsafe { libc::geteuid() } == 0 {
        true => vec![("handles", true), ("paths", false)],
        false => vec![("paths", false)],
    }
}

/// Runs the child under strace and compares the counts of each request across the files.
fn compare(requests: &[&str]) -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let trace = dir.path().join("trace");
    let out = Command::new(strace().unwrap())
        .args(["-f", "-qq", "-o"])
        .arg(&trace)
        .arg(std::env::current_exe()?)
        .env("FSR_SYSCALLS_CHILD", "1")
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "child failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let counts = count(&std::fs::read_to_string(&trace)?)?;
    for (case, n) in &counts {
        eprintln!("host system calls of one {case}: {n}");
    }
    for (case, n) in counts.iter().filter(|(c, _)| c.starts_with("readdir-")) {
        if *n > MOST_READDIR {
            return Err(format!(
                "{case}: {n} host calls for one listing of {} entries, more than {MOST_READDIR}",
                MORE_ENTRIES + 1
            )
            .into());
        }
    }
    let measured_mode = |case: &str| {
        modes()
            .iter()
            .any(|(m, _)| case.contains(&format!("-{m}-")))
    };
    // Without `getxattrat` (before Linux 6.13) a first LOOKUP by file handle reads the
    // metadata through a reopened handle (open, read, close) instead of by name (read,
    // check): one call more.
    let xattr_at = fsredirect::beneath::ProcSelfFd::open()?.has_xattr_at();
    for (case, most) in MOST_BY_FILE.into_iter().filter(|(c, _)| measured_mode(c)) {
        let most = match case.starts_with("lookup_first-handles-") && !xattr_at {
            true => most + 1,
            false => most,
        };
        let n = *counts
            .get(case)
            .ok_or_else(|| format!("no count for {case}: the child did not measure it"))?;
        if n > most {
            return Err(format!("{case}: {n} host calls, more than {most}").into());
        }
    }
    if !counts.keys().any(|c| c.starts_with("readdir-")) {
        return Err("no READDIR was counted".into());
    }
    for (mode, _) in modes() {
        let of = |file: &str| {
            counts
                .get(&format!("write-4k-{mode}-{file}"))
                .copied()
                .ok_or_else(|| format!("no count for a WRITE of {file} by {mode}"))
        };
        let (redirected, plain) = (of("redirected")?, of("plain")?);
        if redirected > plain + 1 {
            return Err(format!(
                "a 4 KiB WRITE in place by {mode}: redirected {redirected}, plain {plain} host \
                 calls; at most one more (the stub's mtime) is allowed"
            )
            .into());
        }
    }
    for (mode, _) in modes() {
        for request in requests {
            let of = |file: &str| -> Result<usize, Failed> {
                counts
                    .get(&format!("{request}-{mode}-{file}"))
                    .copied()
                    .ok_or_else(|| format!("no count for {request} of {file} by {mode}").into())
            };
            let (redirected, plain, passthrough) =
                (of("redirected")?, of("plain")?, of("passthrough")?);
            if redirected != plain || plain != passthrough {
                return Err(format!(
                    "{request} by {mode}: redirected {redirected}, plain {plain}, passthrough \
                     share {passthrough} host calls: they must be equal"
                )
                .into());
            }
            let key = format!("{request}-{mode}");
            let most = MOST.iter().find(|(r, _)| *r == key).unwrap().1;
            if passthrough > most {
                return Err(format!(
                    "{request} by {mode}: {passthrough} host calls, more than its bound of \
                     {most} (MOST)"
                )
                .into());
            }
        }
    }
    Ok(())
}

/// The system calls each thread made between a begin and an end marker, by case.
fn count(trace: &str) -> Result<BTreeMap<String, usize>, Failed> {
    let mut open: BTreeMap<String, (String, usize)> = BTreeMap::new();
    let mut counts = BTreeMap::new();
    for line in trace.lines() {
        let Some((pid, call)) = line.split_once(' ') else {
            continue;
        };
        let call = call.trim_start();
        if call.starts_with("<...") || call.starts_with("+++") || call.starts_with("---") {
            continue; // the end of a call already counted, an exit or a signal
        }
        if let Some(rest) = call.split_once(MARK).map(|(_, r)| r) {
            let mark: String = rest.chars().take_while(|c| *c != '"').collect();
            if let Some(case) = mark.strip_prefix("/begin/") {
                open.insert(pid.to_string(), (case.to_string(), 0));
            } else if let Some(case) = mark.strip_prefix("/end/") {
                let (begun, n) = open
                    .remove(pid)
                    .ok_or_else(|| format!("end of {case} without a begin"))?;
                if begun != case {
                    return Err(format!("begin {begun} ended as {case}").into());
                }
                counts.insert(case.to_string(), n);
            }
            continue;
        }
        if let Some((_, n)) = open.get_mut(pid) {
            *n += 1;
        }
    }
    Ok(counts)
}

/// Makes a marker system call the parent finds in the trace.
fn mark(edge: &str, case: &str) {
    let path = CString::new(format!("{MARK}/{edge}/{case}")).unwrap();
    // SAFETY: `path` is NUL-terminated; access only reads it.
    unsafe { libc::access(path.as_ptr(), libc::F_OK) };
}

/// Runs `op` between the markers of `case`.
fn measured<T>(case: &str, op: impl FnOnce() -> T) -> T {
    mark("begin", case);
    let out = op();
    mark("end", case);
    out
}

/// Child mode: one GETATTR and one LOOKUP of each file, between markers, once the inodes are
/// known (as the kernel's repeated lookups and stats find them), in each mode.
fn child() {
    for (mode, inode_file_handles) in modes() {
        let cfg = || FsConfig {
            inode_file_handles,
            ..FsConfig::default()
        };
        let share = TestShare::with_options("policy=include:r/**");
        share.write("r/file", &[7; 8192]);
        share.write("p/file", &[7; 8192]);
        for i in 0..MORE_ENTRIES {
            share.write(&format!("r/more-{i}"), b"x");
            share.write(&format!("p/more-{i}"), b"x");
        }
        let redirecting = share.try_serve(cfg()).unwrap();
        assert!(
            share.volume.join("r/file").exists(),
            "r/file is not redirected"
        );
        assert!(
            !share.volume.join("p/file").exists(),
            "p/file is redirected"
        );

        let plain_dir = share.root().join("plain");
        std::fs::create_dir_all(plain_dir.join("p")).unwrap();
        std::fs::write(plain_dir.join("p/file"), [7; 8192]).unwrap();
        for i in 0..MORE_ENTRIES {
            std::fs::write(plain_dir.join(format!("p/more-{i}")), b"x").unwrap();
        }
        let spec = ShareSpec::parse(&format!("tag=p,dir={}", plain_dir.display())).unwrap();
        let fs = RedirectFs::new(&spec, cfg()).unwrap();
        fs.init(FsOptions::empty()).unwrap();
        let passthrough = Guest {
            fs,
            ctx: redirecting.ctx,
        };

        for (file, guest, path) in [
            ("redirected", &redirecting, "r/file"),
            ("plain", &redirecting, "p/file"),
            ("passthrough", &passthrough, "p/file"),
        ] {
            let name = CString::new("file").unwrap();
            let parent = guest.dir(std::path::Path::new(path).parent().unwrap());
            // Known to the server, as after the kernel's first lookup (which looked the
            // directory up twice: for `parent` and again on the way to the file).
            let inode = guest.lookup(path).unwrap().inode;
            let dir_name = CString::new(path.split('/').next().unwrap()).unwrap();
            let dir = measured(&format!("lookup_dir_again-{mode}-{file}"), || {
                guest.fs.lookup(&guest.ctx, ROOT_INODE, &dir_name).unwrap()
            });
            assert_eq!(dir.inode, parent);
            guest.fs.getattr(&guest.ctx, inode, None).unwrap();
            let st = measured(&format!("getattr-{mode}-{file}"), || {
                guest.fs.getattr(&guest.ctx, inode, None).unwrap().0
            });
            assert_eq!(st.st_size, 8192, "{file}: size");
            let entry = measured(&format!("lookup-{mode}-{file}"), || {
                guest.fs.lookup(&guest.ctx, parent, &name).unwrap()
            });
            assert_eq!(entry.inode, inode);
            assert_eq!(entry.attr.st_size, 8192, "{file}: size");
            let again = measured(&format!("lookup_again-{mode}-{file}"), || {
                guest.fs.lookup(&guest.ctx, parent, &name).unwrap()
            });
            assert_eq!(again.inode, inode);
            assert_eq!(again.attr.st_size, 8192, "{file}: size");
            // A name the server has not seen yet (the first LOOKUP after a start, say).
            let unseen = CString::new("more-0").unwrap();
            let first = measured(&format!("lookup_first-{mode}-{file}"), || {
                guest.fs.lookup(&guest.ctx, parent, &unseen).unwrap()
            });
            assert_eq!(first.attr.st_size, 1, "{file}: size of more-0");
            let (dir, _) = guest.fs.opendir(&guest.ctx, parent, 0).unwrap();
            let mut listed = 0;
            measured(&format!("readdir-{mode}-{file}"), || {
                guest
                    .fs
                    .readdir(&guest.ctx, parent, dir.unwrap(), 4096, 0, &mut |_| {
                        listed += 1;
                        Ok(1)
                    })
                    .unwrap()
            });
            assert_eq!(listed, MORE_ENTRIES + 1, "{file}: entries listed");
            guest
                .fs
                .releasedir(&guest.ctx, parent, 0, dir.unwrap())
                .unwrap();
            data_and_namespace_costs(guest, &format!("{mode}-{file}"), inode, parent);
        }
    }
}

/// A 4 KiB WRITE in place (after one to warm the caches), a CREATE and an UNLINK, each between
/// markers; reported, not bounded.
fn data_and_namespace_costs(guest: &Guest, case: &str, inode: u64, parent: u64) {
    let (fs, ctx) = (&guest.fs, &guest.ctx);
    let (handle, _, _) = fs.open(ctx, inode, libc::O_RDWR as u32, 0).unwrap();
    let handle = handle.unwrap();
    let write = || {
        let mut src = MemSource::new(vec![1; 4096]);
        let n = fs
            .write(ctx, inode, handle, &mut src, 4096, 0, None, false, 0, 0)
            .unwrap();
        assert_eq!(n, 4096);
    };
    write();
    measured(&format!("write-4k-{case}"), write);
    fs.release(ctx, inode, 0, handle, false, false, None)
        .unwrap();
    let name = CString::new("new").unwrap();
    let args = CreateIn {
        flags: libc::O_RDWR as u32,
        mode: libc::S_IFREG | 0o644,
        umask: 0,
        fuse_flags: 0,
    };
    let (entry, handle, _, _) = measured(&format!("create-{case}"), || {
        fs.create(ctx, parent, &name, args).unwrap()
    });
    fs.release(ctx, entry.inode, 0, handle.unwrap(), false, false, None)
        .unwrap();
    // The kernel looks a new file up again once its entry times out.
    let again = measured(&format!("lookup_new-{case}"), || {
        fs.lookup(ctx, parent, &name).unwrap()
    });
    assert_eq!(again.inode, entry.inode);
    fs.forget(ctx, entry.inode, 1);
    measured(&format!("unlink-{case}"), || {
        fs.unlink(ctx, parent, &name).unwrap()
    });
    fs.forget(ctx, entry.inode, 1);
}
