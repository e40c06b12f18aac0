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
//! };
//! // Until the front-end disconnects, or SIGINT/SIGTERM/SIGHUP.
//! vhost_user::run(&args)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use clap::Args;
use devices::virtio::fs::vhost_user::{
    DaemonConfig, DaemonEvent, ServeEnd, VhostUserFsDaemon, VhostUserFsError,
};
use fsredirect::{FsConfig, FsError, RedirectFs, ShareSpec};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::signal::register_signal_handler;

/// Examples printed by `hypervisor vhost-user-fs --help`.
pub const EXAMPLES: &str = "\
Examples:
  Serve a host directory (plain passthrough) to one QEMU guest:
    hypervisor vhost-user-fs --socket /tmp/fs0.sock --share tag=fs0,dir=/srv/data
  Redirect the guest's file data into a block store, and keep serving across guest restarts:
    hypervisor vhost-user-fs --socket /tmp/fs0.sock --loop \\
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
}

/// The eventfd the stop-signal handler writes to (-1 when none).
static STOP_FD: AtomicI32 = AtomicI32::new(-1);
/// The last stop signal received.
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

extern "C" fn on_stop_signal(signo: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    STOP_SIGNAL.store(signo, Ordering::SeqCst);
    let fd = STOP_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; `one` is valid for 8 bytes.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

/// Routes SIGINT/SIGTERM/SIGHUP to an eventfd while alive.
struct StopOnSignals {
    evt: EventFd,
}

impl StopOnSignals {
    fn install() -> Result<Self, VhostUserCmdError> {
        let evt = EventFd::new(EFD_NONBLOCK).map_err(VhostUserCmdError::Signals)?;
        STOP_FD.store(evt.as_raw_fd(), Ordering::SeqCst);
        for signo in STOP_SIGNALS {
            register_signal_handler(signo, on_stop_signal)
                .map_err(|e| VhostUserCmdError::Signals(io::Error::from_raw_os_error(e.errno())))?;
        }
        Ok(Self { evt })
    }
}

impl Drop for StopOnSignals {
    fn drop(&mut self) {
        // The handlers stay; a later signal then writes nowhere.
        STOP_FD.store(-1, Ordering::SeqCst);
    }
}

fn signal_name(signo: libc::c_int) -> &'static str {
    match signo {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "a stop signal",
    }
}

fn say(line: &str) {
    eprintln!("vhost-user-fs: {line}");
}

/// Runs the daemon: serves `args.share` on `args.socket` until the front-end
/// disconnects (or, with `keep_listening`, until a stop signal), printing
/// progress lines on standard error. Returns the process exit code (0).
pub fn run(args: &VhostUserFsArgs) -> Result<u8, VhostUserCmdError> {
    let stop = StopOnSignals::install()?;
    serve(args, &stop.evt)
}

/// Like [`run`], stopping when `stop` becomes readable instead of on signals
/// (for programs that handle signals themselves).
pub fn serve(args: &VhostUserFsArgs, stop: &EventFd) -> Result<u8, VhostUserCmdError> {
    let share = &args.share;
    let fs =
        RedirectFs::new(share, FsConfig::default()).map_err(|source| VhostUserCmdError::Share {
            tag: share.tag.clone(),
            source,
        })?;
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
    let config = DaemonConfig {
        socket: args.socket.clone(),
        tag: share.tag.clone(),
        request_queues: args.request_queues,
    };
    let mut daemon = VhostUserFsDaemon::bind(config, Arc::new(fs))?;
    say(&format!(
        "listening on {} (tag {}, guest tree {}, {mode}, {} request queue{})",
        daemon.socket().display(),
        share.tag,
        share.dir.display(),
        args.request_queues,
        if args.request_queues == 1 { "" } else { "s" }
    ));
    let end = daemon.run(stop, args.keep_listening, |event| match event {
        DaemonEvent::Stopped => {}
        DaemonEvent::Disconnected(_) if args.keep_listening => {
            say(&format!("{event}; waiting for the next one"));
        }
        _ => say(&event.to_string()),
    })?;
    if end == ServeEnd::Stopped {
        say(&format!(
            "received {}; stopping",
            signal_name(STOP_SIGNAL.load(Ordering::SeqCst))
        ));
    }
    drop(daemon);
    say("socket removed; bye");
    Ok(0)
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
        };

        let stop = EventFd::new(EFD_NONBLOCK).unwrap();

        let err = serve(&args, &stop).unwrap_err();

        assert!(
            matches!(err, VhostUserCmdError::Share { ref tag, .. } if tag == "t1"),
            "{err}"
        );
        assert!(!args.socket.exists(), "no socket left behind");
    }
}
