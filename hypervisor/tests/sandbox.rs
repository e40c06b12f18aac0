//! Containment: from inside the `vhost-user-fs` sandbox ([`hypervisor::sandbox`]), a
//! compromised server cannot reach the host, while its share still works. Each trial runs
//! the probes in a child process (this binary started again with `PROBE` set), since
//! entering the sandbox forks and changes the process for good; the same probes without the
//! sandbox reach everything, which shows they can tell.
//!
//! The probes: read `/etc/passwd`; read it through `/proc/1/root` and through `..` from the
//! root; read a file beside the share, by path, by a file handle taken beforehand on the
//! same host file system (`open_by_handle_at` with the share's tree as mount descriptor),
//! and by `..` from the descriptor held on the store; read `/etc/passwd` by `..` from the
//! descriptor held on `/proc/self/fd` (the server holds both, as the real one does), and
//! through `/proc/1/root` from there; hold CAP_DAC_READ_SEARCH; write a file exposed
//! read-only (as the VMM's kernel is); write and read in the guest tree and the store, read
//! the read-only file, and write to a device node exposed read-write (`/dev/null`, as the
//! VMM's `/dev/kvm` is).
//!
//! `--sandbox chroot` ([`sandbox::take_tree_as_root`]) is tried the same way: there the
//! descriptors are opened before the guest tree becomes the root, as the server opens its
//! share, and no probe may reach; a plain `chroot` with the same descriptors lets them out
//! through `..`, which shows what its Landlock limit adds.
//!
//! The namespace sandbox is tried again with the probes run as `nobody` (a server not run as
//! root, which makes a user namespace of its own first): nothing may reach, and the process
//! may hold no capability at all; the same user without the sandbox reaches what that user
//! may read.
//!
//! Skipped, with the reason, when not run as root (namespaces need CAP_SYS_ADMIN, and only
//! root can start the probes as `nobody`); the chroot trials also where the kernel lacks
//! Landlock or `getxattrat` (Linux 6.13), the `nobody` ones where the host refuses
//! unprivileged user namespaces.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use hypervisor::sandbox::{self, Entered, Exposed, SandboxMode};
use libtest_mimic::{Arguments, Failed, Trial};

mod common;
use common::{command_as, give_tree, NOBODY};
use vmm_sys_util::eventfd::EventFd;

/// Set in the child: `MODE,TREE,STORE,SECRET,HANDLE,READ_ONLY` (the handle in hex; MODE a
/// sandbox mode or [`PLAIN_CHROOT`]).
const PROBE: &str = "HYPERVISOR_SANDBOX_PROBE";

/// The probe mode of a plain `chroot` into the tree, without Landlock or capabilities cut.
const PLAIN_CHROOT: &str = "plain-chroot";

/// The device node exposed read-write, as the VMM's `/dev/kvm` is.
const DEVICE: &str = "/dev/null";

/// What the escape probes are called, in the child's output.
const ESCAPES: [&str; 10] = [
    "etc-passwd",
    "proc-1-root",
    "dotdot-from-root",
    "secret-by-path",
    "secret-by-handle",
    "secret-by-dotdot-from-store",
    "etc-passwd-by-dotdot-from-proc",
    "etc-passwd-by-proc-1-root-from-proc",
    "parent-environ-from-proc",
    "read-only-file-written",
];

fn main() {
    if let Ok(spec) = std::env::var(PROBE) {
        probe_child(&spec);
    }
    let args = Arguments::from_args();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let trial = |name: &'static str, f: fn() -> Result<(), String>| {
        Trial::test(name, move || f().map_err(Failed::from)).with_ignored_flag(!root)
    };
    if !root {
        println!("skipped, because the sandbox's namespaces need root");
    }
    let chroot_unsupported = sandbox::check_chroot_support().err();
    if let Some(why) = &chroot_unsupported {
        println!("chroot trials skipped, because {why}");
    }
    let chroot_trial = |name: &'static str, f: fn() -> Result<(), String>| {
        Trial::test(name, move || f().map_err(Failed::from))
            .with_ignored_flag(chroot_unsupported.is_some())
    };
    let no_user_namespace = (!root)
        .then(|| "only root can start the probes as nobody".to_string())
        .or_else(user_namespaces_refused);
    if let Some(why) = &no_user_namespace {
        println!("trials as nobody skipped, because {why}");
    }
    let nobody_trial = |name: &'static str, f: fn() -> Result<(), String>| {
        Trial::test(name, move || f().map_err(Failed::from))
            .with_ignored_flag(no_user_namespace.is_some())
    };
    let trials = vec![
        trial("the_sandbox_keeps_the_host_out_and_the_share_in", sandboxed),
        trial("without_the_sandbox_the_probes_reach_the_host", unsandboxed),
        nobody_trial(
            "the_sandbox_of_a_server_not_run_as_root_keeps_the_host_out_and_no_capability",
            sandboxed_as_nobody,
        ),
        nobody_trial(
            "without_the_sandbox_a_server_not_run_as_root_reaches_what_its_user_may",
            unsandboxed_as_nobody,
        ),
        chroot_trial(
            "the_chroot_sandbox_keeps_the_host_out_and_the_share_in",
            chroot_sandboxed,
        ),
        chroot_trial(
            "a_plain_chroot_lets_the_held_descriptors_reach_the_host",
            plain_chroot,
        ),
    ];
    libtest_mimic::run(&args, trials).exit();
}

/// A share beside a secret file, on one file system.
struct Layout {
    dir: tempfile::TempDir,
    tree: PathBuf,
    store: PathBuf,
    secret: PathBuf,
    read_only: PathBuf,
}

fn layout() -> Layout {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    let store = dir.path().join("store");
    let secret = dir.path().join("secret.txt");
    std::fs::create_dir(&tree).unwrap();
    std::fs::create_dir(&store).unwrap();
    std::fs::write(&secret, "not for the guest").unwrap();
    let read_only = dir.path().join("kernel");
    std::fs::write(&read_only, "a kernel image").unwrap();
    Layout {
        dir,
        tree,
        store,
        secret,
        read_only,
    }
}

/// Why this host refuses a process not run as root its own user namespace, if it does (the
/// knobs Linux, Debian and Ubuntu have for it).
fn user_namespaces_refused() -> Option<String> {
    let knob = |path: &str| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    if knob("/proc/sys/user/max_user_namespaces") == Some(0) {
        return Some("user.max_user_namespaces is 0".into());
    }
    if knob("/proc/sys/kernel/unprivileged_userns_clone") == Some(0) {
        return Some("kernel.unprivileged_userns_clone is 0".into());
    }
    if knob("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == Some(1) {
        return Some("AppArmor restricts unprivileged user namespaces".into());
    }
    None
}

/// Runs the probes in a child in `mode` (a sandbox mode's word, or [`PLAIN_CHROOT`]);
/// returns each probe's name and whether it reached.
fn run_probes(mode: &str, at: &Layout) -> Result<Vec<(String, bool)>, String> {
    run_probes_as(mode, at, None)
}

/// [`run_probes`], the child run as `user` (uid, gid) if given: from a copy of this program
/// that user can reach, on `at` handed over to that user.
fn run_probes_as(
    mode: &str,
    at: &Layout,
    user: Option<(u32, u32)>,
) -> Result<Vec<(String, bool)>, String> {
    let handle = file_handle(&at.secret)?;
    let spec = format!(
        "{mode},{},{},{},{},{}",
        at.tree.display(),
        at.store.display(),
        at.secret.display(),
        hex(&handle),
        at.read_only.display()
    );
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let copy = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut cmd = match user {
        None => Command::new(&exe),
        Some(user) => {
            give_tree(at.dir.path(), user).map_err(|e| format!("giving the layout away: {e}"))?;
            command_as(&exe, copy.path(), user).map_err(|e| format!("copying the probes: {e}"))?
        }
    };
    let out = cmd.env(PROBE, spec).output().map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "the probe process ended with {}: {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let results: Vec<(String, bool)> = stdout
        .lines()
        .filter_map(|line| line.strip_prefix("probe "))
        .filter_map(|rest| {
            let (name, verdict) = rest.split_once(": ")?;
            Some((name.to_owned(), verdict.starts_with("reached")))
        })
        .collect();
    if results.len() != ESCAPES.len() + 6 {
        return Err(format!("expected every probe's line, got:\n{stdout}"));
    }
    Ok(results)
}

fn verdict(results: &[(String, bool)], name: &str) -> bool {
    results.iter().any(|(n, reached)| n == name && *reached)
}

fn sandboxed() -> Result<(), String> {
    let at = layout();
    let results = run_probes(SandboxMode::Namespace.word(), &at)?;
    kept_in(&results)?;
    if !verdict(&results, "read-only-file-read") {
        return Err("the file exposed read-only could not be read inside".into());
    }
    if !verdict(&results, "device-written") {
        return Err("the device node exposed read-write could not be written inside".into());
    }
    share_written_inside(&at)
}

/// The namespace sandbox entered by a process not run as root: nothing reaches the host, the
/// share and the exposed files work, and the process holds no capability.
fn sandboxed_as_nobody() -> Result<(), String> {
    let at = layout();
    let results = run_probes_as(SandboxMode::Namespace.word(), &at, Some(NOBODY))?;
    kept_in(&results)?;
    if verdict(&results, "any-capability") {
        return Err(format!(
            "the sandboxed server not run as root holds capabilities: {results:?}"
        ));
    }
    for name in ["read-only-file-read", "device-written"] {
        if !verdict(&results, name) {
            return Err(format!("inside, probe {name} should reach: {results:?}"));
        }
    }
    share_written_inside(&at)
}

/// The same user without the sandbox reaches what it may read and write: the probes can
/// tell.
fn unsandboxed_as_nobody() -> Result<(), String> {
    let at = layout();
    let results = run_probes_as(SandboxMode::None.word(), &at, Some(NOBODY))?;
    all_reached(
        &results,
        "as nobody without a sandbox",
        &[
            "etc-passwd",
            "secret-by-path",
            "secret-by-dotdot-from-store",
            "etc-passwd-by-dotdot-from-proc",
            "read-only-file-written",
            "share-works",
        ],
    )
}

/// `--sandbox chroot`: nothing reaches the host; the share works through the descriptors
/// opened before (nothing else is exposed in this mode).
fn chroot_sandboxed() -> Result<(), String> {
    let at = layout();
    let results = run_probes(SandboxMode::Chroot.word(), &at)?;
    kept_in(&results)?;
    share_written_inside(&at)
}

/// A plain chroot into the tree, with the same descriptors held: `..` from them reaches
/// the host, which is what the chroot sandbox's Landlock limit stops.
fn plain_chroot() -> Result<(), String> {
    let at = layout();
    let results = run_probes(PLAIN_CHROOT, &at)?;
    all_reached(
        &results,
        "in a plain chroot",
        &[
            "secret-by-dotdot-from-store",
            "etc-passwd-by-dotdot-from-proc",
            "parent-environ-from-proc",
            "share-works",
        ],
    )?;
    for name in ["etc-passwd", "secret-by-path"] {
        if verdict(&results, name) {
            return Err(format!(
                "in a chroot, probe {name} should not reach by path"
            ));
        }
    }
    Ok(())
}

/// No escape probe reached, CAP_DAC_READ_SEARCH is gone, no_new_privs is set and the share
/// works.
fn kept_in(results: &[(String, bool)]) -> Result<(), String> {
    let escaped: Vec<&str> = ESCAPES
        .into_iter()
        .filter(|name| verdict(results, name))
        .collect();
    if !escaped.is_empty() {
        return Err(format!(
            "from inside the sandbox these reached the host: {escaped:?}"
        ));
    }
    if verdict(results, "cap-dac-read-search") {
        return Err("the sandboxed server still holds CAP_DAC_READ_SEARCH".into());
    }
    if !verdict(results, "share-works") {
        return Err("the share's tree and store could not be written and read inside".into());
    }
    if !verdict(results, "no-new-privs") {
        return Err("no_new_privs is not set inside the sandbox".into());
    }
    Ok(())
}

/// What the server wrote inside is in the host's share.
fn share_written_inside(at: &Layout) -> Result<(), String> {
    let inside = std::fs::read(at.tree.join("written-inside")).map_err(|e| e.to_string())?;
    if inside != b"from inside" {
        return Err(format!("the tree holds {inside:?}"));
    }
    Ok(())
}

/// Without a sandbox the probes reach (the `/proc/1/root` ones only where the kernel lets
/// this process follow pid 1's links; on this project's machines even root gets EACCES).
fn unsandboxed() -> Result<(), String> {
    let at = layout();
    let results = run_probes(SandboxMode::None.word(), &at)?;
    all_reached(
        &results,
        "without a sandbox",
        &[
            "etc-passwd",
            "secret-by-path",
            "secret-by-handle",
            "secret-by-dotdot-from-store",
            "etc-passwd-by-dotdot-from-proc",
            "parent-environ-from-proc",
            "read-only-file-written",
            "share-works",
        ],
    )
}

/// Fails, naming the first and the setting (`how`), unless every probe of `names` reached.
fn all_reached(results: &[(String, bool)], how: &str, names: &[&str]) -> Result<(), String> {
    match names.iter().find(|name| !verdict(results, name)) {
        Some(name) => Err(format!("{how}, probe {name} should reach: {results:?}")),
        None => Ok(()),
    }
}

/// In the child: enter the sandbox, print one line per probe, exit.
fn probe_child(spec: &str) -> ! {
    let parts: Vec<&str> = spec.split(',').collect();
    let plain_chroot = parts[0] == PLAIN_CHROOT;
    let mode: SandboxMode = if plain_chroot {
        SandboxMode::None
    } else {
        parts[0].parse().unwrap()
    };
    let (tree, store, secret) = (
        PathBuf::from(parts[1]),
        PathBuf::from(parts[2]),
        PathBuf::from(parts[3]),
    );
    let handle = unhex(parts[4]);
    let read_only = PathBuf::from(parts[5]);
    let exposed = [
        Exposed::read_write(&tree),
        Exposed::read_write(&store),
        Exposed::read_only(&read_only),
        Exposed::read_write(DEVICE),
    ];
    match sandbox::enter(mode, &exposed) {
        Ok(Entered::Supervisor(supervisor)) => {
            let stop = EventFd::new(0).unwrap();
            let code = supervisor.wait(&stop, || libc::SIGTERM).unwrap();
            std::process::exit(code);
        }
        Ok(Entered::Sandboxed) => {}
        Err(err) => {
            println!("cannot enter the sandbox: {err}");
            std::process::exit(2);
        }
    }
    // What the server holds, opened as the server opens its share: once inside, or before
    // the tree becomes the root.
    let held = {
        let open = |path: &Path, flags| {
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(flags | libc::O_DIRECTORY)
                .open(path)
                .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
        };
        Held {
            tree: open(&tree, 0),
            store: open(&store, 0),
            proc: open(Path::new("/proc/self/fd"), libc::O_PATH),
        }
    };
    if mode == SandboxMode::Chroot {
        if let Err(err) = sandbox::take_tree_as_root(&tree, &[tree.clone(), store.clone()]) {
            println!("cannot take the tree as root: {err}");
            std::process::exit(2);
        }
    }
    if plain_chroot {
        let root = CString::new(tree.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path alive for the call.
        assert_eq!(unsafe { libc::chroot(root.as_ptr()) }, 0, "chroot");
        std::env::set_current_dir("/").unwrap();
    }

    let report = |name: &str, reached: bool, detail: String| {
        let word = if reached { "reached" } else { "denied" };
        println!("probe {name}: {word} ({detail})");
    };
    let read = |path: &str| match std::fs::read(path) {
        Ok(bytes) => (true, format!("{} bytes", bytes.len())),
        Err(e) => (false, e.to_string()),
    };
    let (r, d) = read("/etc/passwd");
    report("etc-passwd", r, d);
    let (r, d) = read("/proc/1/root/etc/passwd");
    report("proc-1-root", r, d);
    let (r, d) = read("/../../../etc/passwd");
    report("dotdot-from-root", r, d);
    let (r, d) = read(secret.to_str().unwrap());
    report("secret-by-path", r, d);
    let (r, d) = open_by_handle(&held.tree, &handle);
    report("secret-by-handle", r, d);
    let secret_name = secret.file_name().unwrap().to_str().unwrap();
    let (r, d) = read_at(&held.store, &format!("../{secret_name}"));
    report("secret-by-dotdot-from-store", r, d);
    let (r, d) = read_at(&held.proc, "../../../etc/passwd");
    report("etc-passwd-by-dotdot-from-proc", r, d);
    let (r, d) = read_at(&held.proc, "../../1/root/etc/passwd");
    report("etc-passwd-by-proc-1-root-from-proc", r, d);
    // Another process of the same uid (the supervisor, or the test outside): its
    // environment, as its memory would be.
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    let (r, d) = read_at(&held.proc, &format!("../../{parent}/environ"));
    report("parent-environ-from-proc", r, d);
    let has = caps::has_cap(
        None,
        caps::CapSet::Effective,
        caps::Capability::CAP_DAC_READ_SEARCH,
    );
    let detail = format!("{has:?}");
    report("cap-dac-read-search", has.unwrap_or(false), detail);
    let effective = caps::read(None, caps::CapSet::Effective);
    report(
        "any-capability",
        effective.as_ref().is_ok_and(|c| !c.is_empty()),
        format!("{effective:?}"),
    );
    // SAFETY: prctl with constant arguments reads a flag.
    let nnp = unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) };
    report("no-new-privs", nnp == 1, format!("{nnp}"));
    let works = write_at(&held.tree, "written-inside", b"from inside")
        .and_then(|()| write_at(&held.store, "object", b"data"))
        .and_then(|()| {
            let (reached, detail) = read_at(&held.store, "object");
            if reached {
                Ok(b"data".to_vec())
            } else {
                Err(std::io::Error::other(detail))
            }
        });
    let written = std::fs::OpenOptions::new().append(true).open(&read_only);
    report(
        "read-only-file-written",
        written.is_ok(),
        format!("{:?}", written.map(drop)),
    );
    let (r, d) = read(read_only.to_str().unwrap());
    report("read-only-file-read", r, d);
    let device = std::fs::OpenOptions::new()
        .write(true)
        .open(DEVICE)
        .and_then(|mut device| device.write_all(b"to the device"));
    report("device-written", device.is_ok(), format!("{device:?}"));
    report(
        "share-works",
        works.as_ref().is_ok_and(|b| b == b"data"),
        format!("{:?}", works.map(|b| b.len())),
    );
    std::process::exit(0);
}

/// `name_to_handle_at` of `path`: the kernel's `struct file_handle`, header included.
fn file_handle(path: &Path) -> Result<Vec<u8>, String> {
    const MAX_HANDLE: usize = 128;
    let mut buf = vec![0u8; 8 + MAX_HANDLE];
    buf[..4].copy_from_slice(&(MAX_HANDLE as u32).to_ne_bytes());
    let mut mount_id = 0;
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `buf` holds a file_handle header announcing MAX_HANDLE bytes after it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            c.as_ptr(),
            buf.as_mut_ptr(),
            &mut mount_id as *mut libc::c_int,
            0,
        )
    };
    if rc != 0 {
        return Err(format!(
            "name_to_handle_at {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    let len = u32::from_ne_bytes(buf[..4].try_into().unwrap()) as usize;
    buf.truncate(8 + len);
    Ok(buf)
}

/// The descriptors a server holds: its share's directories, and `/proc/self/fd`.
struct Held {
    tree: File,
    store: File,
    proc: File,
}

/// Reads `path` relative to `dir`, following `..` as the kernel lets it.
fn read_at(dir: &File, path: &str) -> (bool, String) {
    let c = CString::new(path).unwrap();
    // SAFETY: `c` is NUL-terminated; the result is checked and owned below.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), libc::O_RDONLY) };
    if fd < 0 {
        return (false, std::io::Error::last_os_error().to_string());
    }
    // SAFETY: `openat` returned a new descriptor nothing else owns.
    let mut file = unsafe { File::from_raw_fd(fd) };
    let mut bytes = Vec::new();
    match file.read_to_end(&mut bytes) {
        Ok(n) => (true, format!("{n} bytes")),
        Err(e) => (false, e.to_string()),
    }
}

/// Creates (or truncates) `name` in `dir` holding `bytes`.
fn write_at(dir: &File, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let c = CString::new(name).unwrap();
    // SAFETY: `c` is NUL-terminated; the result is checked and owned below.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
            0o644,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `openat` returned a new descriptor nothing else owns.
    unsafe { File::from_raw_fd(fd) }.write_all(bytes)
}

/// `open_by_handle_at` with the directory `dir` as mount descriptor.
fn open_by_handle(dir: &File, handle: &[u8]) -> (bool, String) {
    let mut handle = handle.to_vec();
    // SAFETY: `handle` is a complete file_handle as name_to_handle_at wrote it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            dir.as_raw_fd(),
            handle.as_mut_ptr(),
            libc::O_RDONLY,
        )
    };
    if fd < 0 {
        return (false, std::io::Error::last_os_error().to_string());
    }
    // SAFETY: the descriptor was just returned to us.
    unsafe { libc::close(fd as libc::c_int) };
    (true, "opened".into())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}
