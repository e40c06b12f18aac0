//! The sandbox: a process (the `vhost-user-fs` server, or the VMM of `hypervisor run
//! --sandbox namespace`) runs in new mount, pid, IPC and network namespaces whose root holds
//! only what it names ([`Exposed`]: guest trees and stores, and for the VMM its kernel,
//! initramfs and `/dev/kvm`), with no_new_privs set and every capability it does not need
//! dropped. Where namespaces cannot be made (a container that refuses them), the
//! `vhost-user-fs` server can take its guest tree as root instead ([`SandboxMode::Chroot`],
//! [`take_tree_as_root`]).
//!
//! [`enter`] forks. The parent stays outside as a supervisor that reads no guest byte: it
//! forwards stop signals and returns the child's exit status ([`Supervisor::wait`]). The
//! child, pid 1 of its pid namespace, builds its root before it opens anything exposed:
//!
//! 1. a tmpfs, on which each exposed path is bind-mounted at its own absolute path (read-only
//!    where asked), so that paths mean the same inside;
//! 2. `pivot_root` into it, the old root detached (where the host runs from its initramfs,
//!    which cannot be pivoted away from, the tmpfs is moved over it and taken as root), a
//!    fresh `/proc` of the new pid namespace (`/proc/1` is the process itself), the tmpfs
//!    made read-only;
//! 3. capabilities cut to [`KEPT_CAPABILITIES`], in every set and the bounding set.
//!
//! A process not run as root first enters a user namespace of its own, in which its user and
//! group are mapped to themselves (`enter_user_namespace`): there it may make the other
//! namespaces, while every file keeps the owner it has outside and the process keeps its
//! user's rights on the host's files. It then keeps no capability at all, as it had none
//! outside, and serves as any server not run as root does (no file handles, its metadata
//! under `user.fsredirect`). This needs unprivileged user namespaces, which some hosts turn
//! off; [`SandboxError::NoUserNamespace`] says so.
//!
//! File handles are the one way out a mount namespace does not close: with
//! CAP_DAC_READ_SEARCH, `open_by_handle_at` opens any file of a file system the process
//! can name, inside the share or not. The sandboxed process therefore drops that capability
//! and its shares serve without file handles (one `O_PATH` descriptor per inode the guest
//! knows, bounded by the descriptor budget), and every handle open fails with EPERM.

use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use caps::{CapSet, Capability, CapsHashSet};

/// Where the server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SandboxMode {
    /// New mount, pid, IPC and network namespaces; what is exposed is all the root holds.
    /// The default of `vhost-user-fs` (`hypervisor run` defaults to none).
    #[default]
    Namespace,
    /// The guest tree as the process's root (`chroot`), Landlock limiting it to the tree,
    /// the store and reading its `/proc/self/fd`; no namespaces (for containers that refuse
    /// them). Only for `vhost-user-fs`; needs root, Landlock and Linux 6.13 (extended
    /// attributes by descriptor, since `/proc` is out of sight).
    Chroot,
    /// No sandbox: the process sees the host as its user does.
    None,
}

impl SandboxMode {
    /// Every mode, in the order `--help` lists them.
    pub const ALL: [SandboxMode; 3] = [
        SandboxMode::Namespace,
        SandboxMode::Chroot,
        SandboxMode::None,
    ];

    /// The mode's name on the command line.
    pub fn word(self) -> &'static str {
        match self {
            SandboxMode::Namespace => "namespace",
            SandboxMode::Chroot => "chroot",
            SandboxMode::None => "none",
        }
    }
}

impl fmt::Display for SandboxMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

impl FromStr for SandboxMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SandboxMode::ALL
            .into_iter()
            .find(|mode| mode.word() == s)
            .ok_or_else(|| format!("unknown sandbox mode {s:?}: give namespace, chroot or none"))
    }
}

/// The capabilities the sandboxed server keeps, and why:
/// - CHOWN, FOWNER, FSETID, DAC_OVERRIDE: it creates and changes files for the guest's users
///   (owners, modes, times), whatever the host modes say, as the guest's root may;
/// - SETUID, SETGID: it switches its effective ids around each creation, so new files get the
///   guest caller's owner;
/// - MKNOD: the guest's `mknod` of FIFOs and sockets (device nodes never reach the host);
/// - SYS_ADMIN: the redirect metadata lives in `trusted.*` extended attributes, which only
///   it may read or write. What else it would allow (mount, pivot_root, setns, unshare, bpf,
///   ...) the seccomp filters forbid.
///
/// Everything else goes, CAP_DAC_READ_SEARCH (file handles) first.
pub const KEPT_CAPABILITIES: [Capability; 8] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FOWNER,
    Capability::CAP_FSETID,
    Capability::CAP_SETUID,
    Capability::CAP_SETGID,
    Capability::CAP_MKNOD,
    Capability::CAP_SYS_ADMIN,
];

/// A host path the sandboxed process may reach: a directory, a file or a device node,
/// absolute, at the same path inside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exposed {
    /// The host path.
    pub path: PathBuf,
    /// Whether the process may change what is there.
    pub writable: bool,
}

impl Exposed {
    /// `path`, readable and writable.
    pub fn read_write(path: impl Into<PathBuf>) -> Self {
        Exposed {
            path: path.into(),
            writable: true,
        }
    }

    /// `path`, read-only.
    pub fn read_only(path: impl Into<PathBuf>) -> Self {
        Exposed {
            path: path.into(),
            writable: false,
        }
    }
}

/// Why the sandbox could not be entered.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// Chroot needs root (CAP_SYS_CHROOT).
    #[error(
        "--sandbox {0} needs root (CAP_SYS_CHROOT); run as root, use --sandbox namespace, \
         or pass --sandbox none to run without a sandbox"
    )]
    NotRoot(SandboxMode),
    /// A process not run as root could not make its user namespace.
    #[error(
        "--sandbox namespace, run as a user other than root, needs a user namespace, which \
         this host refuses ({0}): allow unprivileged user namespaces (sysctl \
         user.max_user_namespaces, and kernel.unprivileged_userns_clone or the AppArmor \
         restriction where the host has them), run as root, or pass --sandbox none to run \
         without a sandbox"
    )]
    NoUserNamespace(#[source] io::Error),
    /// Chroot mode without Landlock: `..` from a descriptor held outside the new root (the
    /// store, `/proc/self/fd`) would walk out of it.
    #[error(
        "--sandbox chroot needs Landlock (Linux 5.13 and later, enabled at boot: see \
         /sys/kernel/security/lsm), which this kernel does not enforce; use --sandbox \
         namespace, or --sandbox none to run without a sandbox"
    )]
    NoLandlock,
    /// Chroot mode without the `*xattrat` calls.
    #[error(
        "--sandbox chroot needs Linux 6.13 or later (getxattrat: a server whose root is its \
         guest tree reaches extended attributes only through its own descriptors); use \
         --sandbox namespace, or --sandbox none to run without a sandbox"
    )]
    NoXattrAt,
    /// A step failed.
    #[error(
        "cannot build the sandbox: {step} failed: {source}. Pass --sandbox none to run without one"
    )]
    Step {
        /// What we tried.
        step: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
}

fn step(what: impl Into<String>) -> impl FnOnce(io::Error) -> SandboxError {
    let step = what.into();
    move |source| SandboxError::Step { step, source }
}

/// Which side of the fork this process is on.
pub enum Entered {
    /// The sandboxed server: serve.
    Sandboxed,
    /// The supervisor outside: wait for the server.
    Supervisor(Supervisor),
}

/// The process outside the sandbox, waiting for the server.
pub struct Supervisor {
    child: libc::pid_t,
    pidfd: OwnedFd,
}

/// Makes the calling process enter the sandbox exposing `exposed` (absolute, existing paths),
/// in mode `mode`. The caller must be single-threaded (it forks).
///
/// In [`SandboxMode::Chroot`] the child returns before it is confined: it opens its share
/// (by the host's paths), then calls [`take_tree_as_root`]. `exposed` is not used there.
pub fn enter(mode: SandboxMode, exposed: &[Exposed]) -> Result<Entered, SandboxError> {
    if mode == SandboxMode::None {
        return Ok(Entered::Sandboxed);
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    match (root, mode) {
        (true, _) => {}
        (false, SandboxMode::Namespace) => enter_user_namespace()?,
        (false, _) => return Err(SandboxError::NotRoot(mode)),
    }
    if mode == SandboxMode::Namespace {
        // Only the children of this process enter the new pid namespace: the supervisor
        // stays.
        // SAFETY: unshare with a constant flag changes only this process's namespaces.
        check(unsafe { libc::unshare(libc::CLONE_NEWPID) })
            .map_err(step("unshare(CLONE_NEWPID)"))?;
    }
    // SAFETY: the caller is single-threaded, so the child may run any code after fork.
    let child = unsafe { libc::fork() };
    let kept: &[Capability] = if root { &KEPT_CAPABILITIES } else { &[] };
    let confine = || match mode {
        SandboxMode::Namespace => build_root(exposed).and_then(|()| drop_privileges(kept)),
        SandboxMode::Chroot | SandboxMode::None => Ok(()),
    };
    match child {
        -1 => Err(step("fork")(io::Error::last_os_error())),
        0 => match confine() {
            Ok(()) => Ok(Entered::Sandboxed),
            Err(err) => {
                eprintln!("hypervisor: {err}");
                // SAFETY: ending the child without running the parent's destructors twice.
                unsafe { libc::_exit(1) }
            }
        },
        pid => {
            // SAFETY: pidfd_open on our own child; the descriptor returned is ours.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
            check(fd as libc::c_int).map_err(step("pidfd_open"))?;
            // SAFETY: `fd` is a new descriptor nobody else owns.
            let pidfd = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
            Ok(Entered::Supervisor(Supervisor { child: pid, pidfd }))
        }
    }
}

/// A line saying how the calling process, inside the sandbox of `mode`, is confined: its pid
/// there, its user and the capabilities it holds (for the log, and what a test checks).
pub fn describe_current(mode: SandboxMode) -> String {
    // SAFETY: getpid and geteuid have no preconditions.
    let (pid, uid) = unsafe { (libc::getpid(), libc::geteuid()) };
    let held = caps::read(None, CapSet::Effective).map_or_else(
        |e| format!("unknown capabilities ({e})"),
        |set| format!("{} capabilities", set.len()),
    );
    format!("in the {mode} sandbox: pid {pid} of its own pid namespace, uid {uid}, holding {held}")
}

/// Moves the calling process (single-threaded, not root) into a new user namespace in which
/// its user and group are mapped to themselves and nothing else is: the same ids inside as
/// outside, every capability inside the namespace (to make the others), none over anything
/// it does not own outside. Supplementary groups cannot be changed there (`setgroups` is
/// denied, as the kernel requires before an unprivileged process maps its group).
fn enter_user_namespace() -> Result<(), SandboxError> {
    // SAFETY: geteuid and getegid have no preconditions.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    // SAFETY: unshare with a constant flag changes only this process's namespaces.
    check(unsafe { libc::unshare(libc::CLONE_NEWUSER) }).map_err(SandboxError::NoUserNamespace)?;
    let write = |file: &str, text: String| {
        std::fs::write(file, text).map_err(step(format!("writing {file}")))
    };
    write("/proc/self/setgroups", "deny".into())?;
    write("/proc/self/uid_map", format!("{uid} {uid} 1\n"))?;
    write("/proc/self/gid_map", format!("{gid} {gid} 1\n"))
}

/// Fails unless this host can run [`SandboxMode::Chroot`]: as root, with Landlock and the
/// `*xattrat` calls (Linux 6.13).
pub fn check_chroot_support() -> Result<(), SandboxError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(SandboxError::NotRoot(SandboxMode::Chroot));
    }
    if devices::confine::kernel_abi().is_err() {
        return Err(SandboxError::NoLandlock);
    }
    let proc = fsredirect::beneath::ProcSelfFd::open().map_err(step("opening /proc/self/fd"))?;
    if !proc.has_xattr_at() {
        return Err(SandboxError::NoXattrAt);
    }
    Ok(())
}

/// [`SandboxMode::Chroot`], once the share is open: limits the process (this thread and
/// every thread it starts later) with Landlock to files beneath `landlocked` and to reading
/// its `/proc/self/fd`, then takes `tree` as root and working directory, keeps only
/// [`KEPT_CAPABILITIES`] (CAP_SYS_CHROOT and CAP_DAC_READ_SEARCH go) and sets
/// no_new_privs. Call it before starting any thread.
///
/// Landlock is what makes this a sandbox: the store and `/proc/self/fd`, opened before,
/// are reached through descriptors from outside the new root, and `..` from those walks
/// out of a chroot; Landlock judges a file by where it is, whatever path reached it. Fails
/// with [`SandboxError::NoLandlock`] where the kernel does not enforce it.
pub fn take_tree_as_root(tree: &Path, landlocked: &[PathBuf]) -> Result<(), SandboxError> {
    use devices::confine::{restrict_thread_beneath, Enforcement};
    match restrict_thread_beneath(landlocked) {
        Ok(Enforcement::Full | Enforcement::Partial) => {}
        Ok(Enforcement::None) => return Err(SandboxError::NoLandlock),
        Err(e) => {
            return Err(step("limiting the process with Landlock")(
                io::Error::other(e),
            ))
        }
    }
    let root = c_path(tree);
    // SAFETY: a NUL-terminated path alive for the call.
    check(unsafe { libc::chroot(root.as_ptr()) })
        .map_err(step(format!("chroot {}", tree.display())))?;
    std::env::set_current_dir("/").map_err(step("chdir /"))?;
    drop_privileges(&KEPT_CAPABILITIES)
}

/// Fails, naming the holder's pid, if another server holds the guest tree at `dir`. Inside
/// the sandbox's pid namespace the holder of a busy tree has no pid to name, so a sandboxed
/// process asks here first; it takes the lock for good once inside.
pub fn check_tree_free(dir: &Path) -> Result<(), fsredirect::treelock::TreeLockError> {
    use fsredirect::treelock::{open_locked, LockMode};
    // Closing the descriptor at once gives the lock back.
    open_locked(dir, LockMode::Exclusive).map(drop)
}

impl Supervisor {
    /// The server's pid, as seen from outside.
    pub fn pid(&self) -> libc::pid_t {
        self.child
    }

    /// Waits for the server to end, passing it the signal `forwarded` names each time
    /// `stop` becomes readable; returns the exit code this process should end with (the
    /// server's, or 128 + the signal that ended it).
    pub fn wait(
        &self,
        stop: &vmm_sys_util::eventfd::EventFd,
        forwarded: impl Fn() -> libc::c_int,
    ) -> io::Result<i32> {
        let mut fds = [
            libc::pollfd {
                fd: self.pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        loop {
            // SAFETY: `fds` is a valid array of two pollfd for the call's duration.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            if fds[1].revents & libc::POLLIN != 0 {
                let _ = stop.read();
                // SAFETY: signalling our own child.
                unsafe { libc::kill(self.child, forwarded()) };
            }
            if fds[0].revents & libc::POLLIN != 0 {
                break;
            }
        }
        let mut status = 0;
        // SAFETY: reaping our own child, which has ended.
        check(unsafe { libc::waitpid(self.child, &mut status, 0) })?;
        Ok(if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            128 + libc::WTERMSIG(status)
        })
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn c_path(path: &Path) -> CString {
    // Paths from the file system hold no NUL byte.
    CString::new(path.as_os_str().as_bytes()).unwrap_or_default()
}

fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
) -> io::Result<()> {
    let source = source.map(c_path);
    let target = c_path(target);
    let fstype = fstype.map(|t| CString::new(t).unwrap_or_default());
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is a NUL-terminated string alive for the call, or null.
    check(unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            std::ptr::null(),
        )
    })
}

/// The new root's mount point before the pivot; any directory will do, since the mount
/// namespace is private by then (the share's directories are reached through descriptors).
const STAGING: &str = "/tmp";
/// Where the old root goes during the pivot, under the new root.
const OLD_ROOT: &str = ".old-root";

/// In the child: new mount, IPC and network namespaces, and a root holding only `exposed`.
fn build_root(exposed: &[Exposed]) -> Result<(), SandboxError> {
    // SAFETY: unshare with constant flags changes only this process's namespaces.
    check(unsafe { libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWNET) })
        .map_err(step("unshare(CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWNET)"))?;
    mount(None, Path::new("/"), None, libc::MS_REC | libc::MS_PRIVATE)
        .map_err(step("making the mounts private"))?;
    // Reach each path by descriptor before the staging tmpfs may hide it.
    let handles = exposed
        .iter()
        .map(|exposed| {
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH)
                .open(&exposed.path)
                .map_err(step(format!("opening {}", exposed.path.display())))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let staging = Path::new(STAGING);
    mount(
        Some(Path::new("tmpfs")),
        staging,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
    )
    .map_err(step(format!("mounting a tmpfs on {STAGING}")))?;
    for (exposed, handle) in exposed.iter().zip(&handles) {
        let path = &exposed.path;
        let target = staging.join(path.strip_prefix("/").unwrap_or(path));
        let made = if handle.metadata().is_ok_and(|m| m.is_dir()) {
            std::fs::create_dir_all(&target)
        } else {
            // A file or device node is mounted over an empty file.
            target
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::File::create(&target).map(drop))
        };
        made.map_err(step(format!("creating {} in the new root", path.display())))?;
        let source = PathBuf::from(format!("/proc/self/fd/{}", handle.as_raw_fd()));
        mount(Some(&source), &target, None, libc::MS_BIND | libc::MS_REC)
            .map_err(step(format!("bind-mounting {}", path.display())))?;
        if !exposed.writable {
            // The source mount's own restrictions stay (a process not run as root may not
            // lift them, and should not).
            let kept = mount_restrictions(&target).map_err(step(format!(
                "reading the mount flags of {}",
                path.display()
            )))?;
            mount(
                None,
                &target,
                None,
                libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | kept,
            )
            .map_err(step(format!("making {} read-only", path.display())))?;
        }
    }
    drop(handles);
    std::fs::create_dir_all(staging.join("proc")).map_err(step("creating /proc"))?;
    // The new pid namespace's /proc, mounted while the host's is still in sight: a process
    // not run as root may mount a proc only where a whole one is already visible.
    mount(
        Some(Path::new("proc")),
        &staging.join("proc"),
        Some("proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
    )
    .map_err(step("mounting /proc"))?;
    std::fs::create_dir_all(staging.join(OLD_ROOT))
        .map_err(step("creating the old root's place"))?;
    let (new_root, put_old) = (c_path(staging), c_path(&staging.join(OLD_ROOT)));
    // SAFETY: both are NUL-terminated paths alive for the call.
    let pivoted = check(unsafe {
        libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) as libc::c_int
    });
    match pivoted {
        Ok(()) => {
            std::env::set_current_dir("/").map_err(step("chdir /"))?;
            let old = c_path(&Path::new("/").join(OLD_ROOT));
            // SAFETY: a NUL-terminated path alive for the call.
            check(unsafe { libc::umount2(old.as_ptr(), libc::MNT_DETACH) })
                .map_err(step("detaching the old root"))?;
        }
        // The host runs from its initramfs, which cannot be pivoted away from: move the new
        // root over it instead and take it as root. The old root stays below, covered, out of
        // reach of paths; leaving by chroot needs CAP_SYS_CHROOT, which is dropped next.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            std::env::set_current_dir(staging).map_err(step(format!("chdir {STAGING}")))?;
            mount(Some(Path::new(".")), Path::new("/"), None, libc::MS_MOVE)
                .map_err(step("moving the new root over the initramfs"))?;
            // SAFETY: a constant NUL-terminated path.
            check(unsafe { libc::chroot(c".".as_ptr()) }).map_err(step("chroot"))?;
            std::env::set_current_dir("/").map_err(step("chdir /"))?;
        }
        Err(e) => return Err(step("pivot_root")(e)),
    }
    std::fs::remove_dir(Path::new("/").join(OLD_ROOT))
        .map_err(step("removing the old root's place"))?;
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
    )
    .map_err(step("making the new root read-only"))?;
    Ok(())
}

/// The restrictions of the mount at `path` a bind remount must repeat to keep them: no
/// set-user-id, no devices, no execution, and its access-time rule.
fn mount_restrictions(path: &Path) -> io::Result<libc::c_ulong> {
    let path = c_path(path);
    // SAFETY: a zeroed statvfs is a valid value for the kernel to fill.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid statvfs, both alive for the call.
    check(unsafe { libc::statvfs(path.as_ptr(), &mut st) })?;
    let pairs = [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ];
    Ok(pairs
        .iter()
        .filter(|(st_flag, _)| st.f_flag & st_flag != 0)
        .fold(0, |flags, (_, ms_flag)| flags | ms_flag))
}

/// Keeps only `kept` of the capabilities (in every set and the bounding set) and sets
/// no_new_privs.
fn drop_privileges(kept: &[Capability]) -> Result<(), SandboxError> {
    let kept: CapsHashSet = kept.iter().copied().collect();
    for cap in caps::all() {
        if !kept.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap).map_err(|e| {
                step(format!("dropping {cap} from the bounding set"))(io::Error::other(e))
            })?;
        }
    }
    caps::clear(None, CapSet::Ambient)
        .map_err(|e| step("clearing the ambient capabilities")(io::Error::other(e)))?;
    caps::clear(None, CapSet::Inheritable)
        .map_err(|e| step("clearing the inheritable capabilities")(io::Error::other(e)))?;
    caps::set(None, CapSet::Effective, &kept)
        .map_err(|e| step("setting the effective capabilities")(io::Error::other(e)))?;
    caps::set(None, CapSet::Permitted, &kept)
        .map_err(|e| step("setting the permitted capabilities")(io::Error::other(e)))?;
    // SAFETY: prctl with constant arguments.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
        .map_err(step("setting no_new_privs"))?;
    Ok(())
}
