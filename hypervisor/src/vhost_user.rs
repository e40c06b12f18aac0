//! `hypervisor vhost-user-fs`: serve a share to another VMM (QEMU's
//! `vhost-user-fs-device`) as a vhost-user back-end, through the same
//! virtio-fs queue code and redirecting file system as our own VMM.
//!
//! ```no_run
//! use hypervisor::vhost_user::{self, VhostUserFsArgs};
//!
//! let args = VhostUserFsArgs {
//!     socket: "/tmp/fs-data.sock".into(),
//!     share: fsredirect::ShareSpec::parse("tag=data,dir=/srv/guest-tree,store=/srv/store")?,
//!     request_queues: 1,
//!     keep_listening: false,
//!     seccomp: hypervisor::SeccompMode::Kill,
//!     sandbox: hypervisor::sandbox::SandboxMode::Namespace,
//!     batch_poll_us: 50,
//!     thread_pool_size: 0,
//! };
//! // Until the front-end disconnects, or SIGINT/SIGTERM/SIGHUP.
//! vhost_user::run(&args)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use devices::seccomp::{SeccompError, SeccompMode, ThreadRole};
use devices::virtio::fs::handler::DEFAULT_BATCH_POLL;
use devices::virtio::fs::pool::MAX_POOL_SIZE;
use devices::virtio::fs::vhost_user::{
    DaemonConfig, DaemonEvent, ServeEnd, VhostUserFsDaemon, VhostUserFsError,
};
use fsredirect::{FsConfig, FsError, RedirectFs, ShareSpec};

use crate::sandbox::{self, Entered, Exposed, SandboxError, SandboxMode, Supervisor};
use crate::signals::{signal_name, StopEvent};
use vmm_sys_util::eventfd::EventFd;

/// Examples printed by `hypervisor vhost-user-fs --help`.
pub const EXAMPLES: &str = "\
Examples:
  Serve a host directory (plain passthrough) to one QEMU guest:
    hypervisor vhost-user-fs --socket /tmp/fs0.sock --share tag=fs0,dir=/srv/data
  Redirect the guest's file data into a block store, and keep serving across guest restarts:
    hypervisor vhost-user-fs --socket /tmp/fs0.sock --loop \\
        --share tag=fs0,dir=/srv/guest-tree,store=/srv/store
  In a container that refuses namespaces: take the guest tree as root instead (needs root,
  Landlock and Linux 6.13):
    hypervisor vhost-user-fs --socket /tmp/fs0.sock --sandbox chroot \\
        --share tag=fs0,dir=/srv/guest-tree,store=/srv/store
  The QEMU side (guest memory must be shared with the daemon):
    qemu-system-x86_64 -M microvm,acpi=off -m 512 \\
        -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem \\
        -chardev socket,id=fs0,path=/tmp/fs0.sock \\
        -device vhost-user-fs-device,chardev=fs0,tag=fs0 ...
  and in the guest: mount -t virtiofs fs0 /mnt/fs0

The daemon serves one front-end at a time and exits when it disconnects (unless --loop).
SIGINT, SIGTERM and SIGHUP stop it cleanly; the socket file is removed on exit.";

/// Options of `hypervisor vhost-user-fs`.
#[derive(Debug, Clone, Args)]
pub struct VhostUserFsArgs {
    /// The Unix socket to listen on (QEMU: -chardev socket,path=PATH)
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// The share, as `tag=TAG,dir=GUEST_TREE[,store=STORE][,volume=V][,policy=...]`.
    #[arg(
        long,
        value_name = "SPEC",
        value_parser = crate::cli::parse_share,
        help = "The share: tag=TAG,dir=GUEST_TREE[,store=STORE][,volume=V][,policy=...] \
                (QEMU's tag= option should name the same TAG)"
    )]
    pub share: ShareSpec,
    /// Number of request queues (QEMU: num-request-queues=)
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub request_queues: usize,
    /// After the front-end disconnects, wait for the next one instead of exiting
    #[arg(long = "loop")]
    pub keep_listening: bool,
    /// Where the server runs: namespace (new mount, pid, IPC and network namespaces holding
    /// only the guest tree and the store, file handles off, capabilities cut; not run as
    /// root, in a user namespace of its own, which the host must allow),
    /// chroot (the guest tree as root, Landlock on the tree and the store, file handles off,
    /// capabilities cut; for containers without namespaces; needs root, Landlock and Linux
    /// 6.13) or none
    #[arg(long, value_name = "MODE", default_value = "namespace", value_parser = crate::cli::parse_sandbox)]
    pub sandbox: SandboxMode,
    /// What the seccomp filters of the server and queue-worker threads do with a system call
    /// they do not allow: kill (end the process), trap (name the call, then exit 159), log
    /// (let it through; the kernel logs it, see dmesg), none (no filters)
    #[arg(long, value_name = "MODE", default_value = "kill", value_parser = crate::cli::parse_seccomp)]
    pub seccomp: SeccompMode,
    /// How long, in microseconds, a queue that has just served several requests keeps
    /// looking for the front-end's next ones before it asks to be kicked: spares a front-end
    /// with many requests in flight a kick and a wake-up per batch, for up to this much CPU
    /// time per batch. 0 turns it off (cores shared with the guest's vCPUs)
    #[arg(long, value_name = "MICROSECONDS",
          default_value_t = DEFAULT_BATCH_POLL.as_micros() as u64,
          value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub batch_poll_us: u64,
    /// Threads serving each request queue's requests side by side (as virtiofsd's
    /// --thread-pool-size), for hosts whose requests block for long (slow or network
    /// storage) with cores to spare; otherwise the hand-over between threads costs about what
    /// a request does. 0: the queue's own thread serves them one at a time
    #[arg(long, value_name = "N", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=MAX_POOL_SIZE as u64))]
    pub thread_pool_size: u64,
}

/// Errors of `hypervisor vhost-user-fs`.
#[derive(Debug, thiserror::Error)]
pub enum VhostUserCmdError {
    /// The share's file system cannot be built.
    #[error("cannot serve share {tag}")]
    Share {
        /// The share's tag.
        tag: String,
        /// Why.
        #[source]
        source: FsError,
    },
    /// The daemon failed.
    #[error(transparent)]
    Daemon(#[from] VhostUserFsError),
    /// The stop-signal handlers cannot be installed.
    #[error("cannot install the SIGINT/SIGTERM/SIGHUP handlers")]
    Signals(#[source] io::Error),
    /// The sandbox cannot be entered.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The server thread's seccomp filter cannot be installed.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// The server thread cannot start, or it panicked.
    #[error("cannot {what}")]
    Thread {
        /// What we tried.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
}

fn say(line: &str) {
    eprintln!("vhost-user-fs: {line}");
}

/// Runs the daemon: serves `args.share` on `args.socket` until the front-end
/// disconnects (or, with `keep_listening`, until a stop signal), printing
/// progress lines on standard error. Returns the process exit code (0).
pub fn run(args: &VhostUserFsArgs) -> Result<u8, VhostUserCmdError> {
    let stop = StopEvent::install().map_err(VhostUserCmdError::Signals)?;
    serve(args, stop.event())
}

/// Like [`run`], stopping when `stop` becomes readable instead of on signals
/// (for programs that handle signals themselves).
///
/// With `args.sandbox` namespace or chroot this forks (see [`crate::sandbox`]): call it from
/// a single-threaded process, or serve with [`SandboxMode::None`].
pub fn serve(args: &VhostUserFsArgs, stop: &EventFd) -> Result<u8, VhostUserCmdError> {
    let share = &args.share;
    let share_error = |source| VhostUserCmdError::Share {
        tag: share.tag.clone(),
        source,
    };
    let exposed = exposed_dirs(share);
    if exposed.iter().any(|dir| !dir.is_dir()) {
        // The file system names what is missing, and how to fix it; or it makes what it may.
        drop(RedirectFs::new(share, FsConfig::default()).map_err(share_error)?);
    }
    match args.sandbox {
        SandboxMode::Namespace => {
            sandbox::check_tree_free(&share.dir).map_err(|e| share_error(e.into()))?;
        }
        SandboxMode::Chroot => sandbox::check_chroot_support()?,
        SandboxMode::None => {}
    }
    let fs_config = FsConfig {
        // With CAP_DAC_READ_SEARCH gone, a handle opens nothing; see crate::sandbox.
        inode_file_handles: args.sandbox == SandboxMode::None
            && FsConfig::default().inode_file_handles,
        tree_as_root: args.sandbox == SandboxMode::Chroot,
        ..FsConfig::default()
    };
    let config = DaemonConfig {
        socket: args.socket.clone(),
        tag: share.tag.clone(),
        request_queues: args.request_queues,
        seccomp: args.seccomp,
        batch_poll: std::time::Duration::from_micros(args.batch_poll_us),
        // At most MAX_POOL_SIZE, by the parser.
        request_pool: args.thread_pool_size as usize,
        // Landlock only where inodes are not reached by file handle: on the test host's 6.1
        // kernel, a worker limited by Landlock and opening by handle took a path it never
        // takes otherwise (an ioctl its filter forbids); see the README, "Containment". In
        // chroot mode the whole process is limited before the chroot, after which these
        // paths would name nothing.
        beneath: if fs_config.inode_file_handles || args.sandbox == SandboxMode::Chroot {
            Vec::new()
        } else {
            exposed.clone()
        },
    };
    let listener = VhostUserFsDaemon::<RedirectFs>::listen(&config)?;
    let writable: Vec<Exposed> = exposed.iter().map(Exposed::read_write).collect();
    let supervisor = match sandbox::enter(args.sandbox, &writable) {
        Ok(Entered::Sandboxed) => None,
        Ok(Entered::Supervisor(supervisor)) => Some(supervisor),
        Err(err) => {
            drop(listener);
            let _ = std::fs::remove_file(&args.socket);
            return Err(err.into());
        }
    };
    if let Some(supervisor) = supervisor {
        drop(listener);
        return supervise(&supervisor, stop, &args.socket);
    }
    let fs = match RedirectFs::new(share, fs_config) {
        Ok(fs) => fs,
        Err(source) => {
            // Without a sandbox nobody else removes the socket bound above.
            if args.sandbox == SandboxMode::None {
                let _ = std::fs::remove_file(&args.socket);
            }
            return Err(share_error(source));
        }
    };
    if args.sandbox == SandboxMode::Chroot {
        sandbox::take_tree_as_root(&share.dir, &exposed)?;
    }
    // In a sandbox this is a process of its own, stopped by the signals its supervisor
    // passes on: it must not share the supervisor's stop eventfd.
    let own_stop = match args.sandbox {
        SandboxMode::None => None,
        SandboxMode::Namespace | SandboxMode::Chroot => {
            Some(StopEvent::install().map_err(VhostUserCmdError::Signals)?)
        }
    };
    let stop = own_stop.as_ref().map_or(stop, StopEvent::event);
    let mode = match &share.store {
        Some(store) => format!(
            "file data redirected to {}",
            share
                .volume_dir()
                .unwrap_or_else(|| store.root.clone())
                .display()
        ),
        None => "passthrough".to_owned(),
    };
    let daemon = VhostUserFsDaemon::with_listener(config, listener, Arc::new(fs));
    say(&format!(
        "listening on {} (tag {}, guest tree {}, {mode}, {} request queue{}{}, sandbox {}, \
         seccomp {})",
        daemon.socket().display(),
        share.tag,
        share.dir.display(),
        args.request_queues,
        if args.request_queues == 1 { "" } else { "s" },
        match args.thread_pool_size {
            0 => String::new(),
            n => format!(
                " served by {n} thread{} each",
                if n == 1 { "" } else { "s" }
            ),
        },
        args.sandbox,
        args.seccomp,
    ));
    let end = serve_on_own_thread(daemon, stop, args.keep_listening, args.seccomp)?;
    if end == ServeEnd::Stopped {
        say(&format!(
            "received {}; stopping",
            signal_name(StopEvent::last_signal())
        ));
    }
    if args.sandbox == SandboxMode::None {
        say("socket removed; bye");
    }
    Ok(0)
}

/// Outside the sandbox: waits for the sandboxed server, passing stop signals on, then removes
/// the socket (not in the server's sandbox) and returns the server's exit code.
fn supervise(
    supervisor: &Supervisor,
    stop: &EventFd,
    socket: &std::path::Path,
) -> Result<u8, VhostUserCmdError> {
    let forwarded = || match StopEvent::last_signal() {
        0 => libc::SIGTERM,
        signo => signo,
    };
    let code = supervisor
        .wait(stop, forwarded)
        .map_err(|source| VhostUserCmdError::Thread {
            what: "wait for the sandboxed server",
            source,
        })?;
    let _ = std::fs::remove_file(socket);
    say("socket removed; bye");
    Ok(u8::try_from(code).unwrap_or(1))
}

/// The host directories a share's server needs: its guest tree and, if any, its store root.
fn exposed_dirs(share: &ShareSpec) -> Vec<PathBuf> {
    std::iter::once(share.dir.clone())
        .chain(share.store.as_ref().map(|store| store.root.clone()))
        .collect()
}

/// Serves front-ends on a thread of its own, under the vhost-user server's seccomp filter
/// (the calling thread, the embedding program's, stays unfiltered), until the daemon's
/// session ends; the daemon is dropped there (its socket removed) before this returns.
fn serve_on_own_thread(
    mut daemon: VhostUserFsDaemon<RedirectFs>,
    stop: &EventFd,
    keep_listening: bool,
    seccomp: SeccompMode,
) -> Result<ServeEnd, VhostUserCmdError> {
    let thread_error = |what| move |source| VhostUserCmdError::Thread { what, source };
    let stop = stop
        .try_clone()
        .map_err(thread_error("clone the stop eventfd"))?;
    let server = std::thread::Builder::new()
        .name("vhost-user-fs".into())
        .spawn(move || -> Result<ServeEnd, VhostUserCmdError> {
            devices::seccomp::confine_current_thread(ThreadRole::VhostUserServer, seccomp)?;
            let end = daemon.run(&stop, keep_listening, |event| match event {
                DaemonEvent::Stopped => {}
                DaemonEvent::Disconnected(_) if keep_listening => {
                    say(&format!("{event}; waiting for the next one"));
                }
                _ => say(&event.to_string()),
            })?;
            drop(daemon);
            Ok(end)
        })
        .map_err(thread_error("start the server thread"))?;
    server.join().map_err(|_| VhostUserCmdError::Thread {
        what: "serve",
        source: io::Error::other("the server thread panicked"),
    })?
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: VhostUserFsArgs,
    }

    fn parse(args: &[&str]) -> Result<VhostUserFsArgs, clap::Error> {
        Wrapper::try_parse_from(std::iter::once("vhost-user-fs").chain(args.iter().copied()))
            .map(|w| w.args)
    }

    #[test]
    fn socket_and_share_are_parsed_with_one_request_queue_by_default() {
        let args = parse(&[
            "--socket",
            "/tmp/s.sock",
            "--share",
            "tag=fs0,dir=/srv/data",
        ])
        .unwrap();

        assert_eq!(args.socket, PathBuf::from("/tmp/s.sock"));
        assert_eq!(args.share.tag, "fs0");
        assert_eq!(args.request_queues, 1);
        assert!(!args.keep_listening);
        assert_eq!(args.seccomp, SeccompMode::Kill);
    }

    #[test]
    fn seccomp_takes_each_mode_and_names_a_wrong_one() {
        let base = ["--socket", "/s", "--share", "tag=fs0,dir=/srv/data"];
        for mode in SeccompMode::ALL {
            let args = parse(&[&base[..], &["--seccomp", mode.word()]].concat()).unwrap();
            assert_eq!(args.seccomp, mode);
        }
        let err = parse(&[&base[..], &["--seccomp", "strict"]].concat()).unwrap_err();
        assert!(err.to_string().contains("kill, log, trap or none"), "{err}");
    }

    #[test]
    fn sandbox_defaults_to_namespace_and_names_a_wrong_mode() {
        let base = ["--socket", "/s", "--share", "tag=fs0,dir=/srv/data"];
        assert_eq!(parse(&base).unwrap().sandbox, SandboxMode::Namespace);
        let none = parse(&[&base[..], &["--sandbox", "none"]].concat()).unwrap();
        assert_eq!(none.sandbox, SandboxMode::None);
        let chroot = parse(&[&base[..], &["--sandbox", "chroot"]].concat()).unwrap();
        assert_eq!(chroot.sandbox, SandboxMode::Chroot);
        let err = parse(&[&base[..], &["--sandbox", "jail"]].concat()).unwrap_err();
        assert!(
            err.to_string().contains("give namespace, chroot or none"),
            "{err}"
        );
    }

    #[test]
    fn the_subcommand_is_wired_into_the_hypervisor_command_line() {
        use crate::cli::{Cli, Command};

        let cli = Cli::try_parse_from([
            "hypervisor",
            "vhost-user-fs",
            "--socket",
            "/tmp/s.sock",
            "--share",
            "tag=fs0,dir=/srv/data",
            "--loop",
        ])
        .unwrap();

        match cli.command {
            Some(Command::VhostUserFs(args)) => assert!(args.keep_listening),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn a_bad_share_is_refused_with_the_parser_message() {
        let err = parse(&["--socket", "/tmp/s.sock", "--share", "dir=/srv/data"]).unwrap_err();

        assert!(err.to_string().contains("tag"), "{err}");
    }

    #[test]
    fn a_missing_guest_tree_is_an_error_naming_the_share() {
        let dir = tempfile::tempdir().unwrap();
        let args = VhostUserFsArgs {
            socket: dir.path().join("sock"),
            share: ShareSpec::parse(&format!("tag=t1,dir={}/missing", dir.path().display()))
                .unwrap(),
            request_queues: 1,
            keep_listening: false,
            seccomp: SeccompMode::Kill,
            sandbox: SandboxMode::Namespace,
            batch_poll_us: 50,
            thread_pool_size: 0,
        };

        let stop = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();

        let err = serve(&args, &stop).unwrap_err();

        assert!(
            matches!(err, VhostUserCmdError::Share { ref tag, .. } if tag == "t1"),
            "{err}"
        );
        assert!(!args.socket.exists(), "no socket left behind");
    }
}
