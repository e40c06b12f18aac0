//! Boots the project's guest image under QEMU's software CPU (TCG) with our
//! `hypervisor vhost-user-fs` daemon serving its shares: the guest's real
//! Linux virtio-fs driver against our device code, on any x86-64 host (no
//! /dev/kvm needed; under TCG the guest reaches `/init` in about 2 s).
//!
//! ```no_run
//! use std::time::Duration;
//! use e2e_tests::qemu::{GuestShare, QemuGuest};
//!
//! if let Some(why) = e2e_tests::qemu::unavailable() {
//!     println!("skipped, because {why}");
//!     return;
//! }
//! let guest = QemuGuest::new("fs-basic")
//!     .share(GuestShare::passthrough("fs0", "/tmp/tree"))
//!     .arg("/mnt/fs0")
//!     .timeout(Duration::from_secs(120));
//! let run = guest.run().unwrap();
//! assert_eq!(run.exit_code, 0, "{}", run.serial);
//! ```
//!
//! Environment: `QEMU` names the QEMU binary (default `qemu-system-x86_64`
//! from PATH; Debian package `qemu-system-x86`), `HYPERVISOR_BIN` the daemon
//! binary (default: built with cargo into this test's target directory).

use std::fs::File;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Guest memory; the memfd backend shared with the daemons has the same size.
pub const GUEST_MEM_MIB: u32 = 512;
/// The default limit for one guest run (boot, scenario, shutdown).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a daemon may take to create its socket.
const DAEMON_READY: Duration = Duration::from_secs(20);
/// How long a daemon may take to exit once QEMU has gone.
const DAEMON_EXIT: Duration = Duration::from_secs(10);
/// I/O port of `isa-debug-exit`; the guest's exit port (docs/guest-protocol.md).
const EXIT_PORT: &str = "0xf4";

/// Errors launching or running a guest.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// A program could not be started.
    #[error("cannot start {what}")]
    Spawn {
        /// What.
        what: String,
        /// What the host said.
        #[source]
        source: io::Error,
    },
    /// A file of the run could not be made or read.
    #[error("cannot use {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the host said.
        #[source]
        source: io::Error,
    },
    /// The hypervisor binary could not be built.
    #[error("cannot build the hypervisor binary: {0}")]
    Build(String),
    /// A daemon exited or never created its socket.
    #[error("the vhost-user-fs daemon for share {tag} {what}; its output:\n{log}")]
    Daemon {
        /// The share's tag.
        tag: String,
        /// What went wrong.
        what: String,
        /// The daemon's standard error.
        log: String,
    },
    /// The guest did not finish in time (QEMU and the daemons were killed).
    #[error(
        "the guest did not finish within {secs} s; QEMU said:\n{qemu}\nlast serial lines:\n{tail}"
    )]
    Timeout {
        /// The limit.
        secs: u64,
        /// QEMU's standard error.
        qemu: String,
        /// The end of the serial output.
        tail: String,
    },
    /// QEMU ended without an exit code from the guest.
    #[error(
        "QEMU exited ({status}) without an exit code from the guest; QEMU said:\n{qemu}\nlast serial lines:\n{tail}"
    )]
    NoExitCode {
        /// QEMU's exit status.
        status: String,
        /// QEMU's standard error.
        qemu: String,
        /// The end of the serial output.
        tail: String,
    },
}

/// A `Result` with a [`QemuError`].
pub type Result<T> = std::result::Result<T, QemuError>;

/// One share: a daemon serving `spec`, and a `vhost-user-fs-device` with `tag`,
/// mounted by the guest at `/mnt/TAG`.
#[derive(Debug, Clone)]
pub struct GuestShare {
    /// The virtio-fs tag.
    pub tag: String,
    /// The share description given to the daemon (`tag=...,dir=...[,store=...]`).
    pub spec: String,
    /// Request queues (daemon `--request-queues`, QEMU `num-request-queues=`).
    pub request_queues: usize,
    /// More daemon options (`--sandbox chroot`, say).
    pub daemon_args: Vec<String>,
}

impl GuestShare {
    /// A plain passthrough of `dir`.
    pub fn passthrough(tag: &str, dir: impl AsRef<Path>) -> Self {
        Self {
            tag: tag.to_owned(),
            spec: format!("tag={tag},dir={}", dir.as_ref().display()),
            request_queues: 1,
            daemon_args: Vec::new(),
        }
    }

    /// `dir` with its file data redirected into volume `volume` of `store`.
    pub fn redirect(
        tag: &str,
        dir: impl AsRef<Path>,
        store: impl AsRef<Path>,
        volume: &str,
    ) -> Self {
        Self {
            tag: tag.to_owned(),
            spec: format!(
                "tag={tag},dir={},store={},volume={volume}",
                dir.as_ref().display(),
                store.as_ref().display()
            ),
            request_queues: 1,
            daemon_args: Vec::new(),
        }
    }

    /// Passes `args` to the daemon too.
    pub fn daemon_args(mut self, args: &[&str]) -> Self {
        self.daemon_args
            .extend(args.iter().map(|arg| (*arg).to_owned()));
        self
    }

    /// Uses `n` request queues instead of one.
    pub fn request_queues(mut self, n: usize) -> Self {
        self.request_queues = n;
        self
    }

    /// Where the guest mounts it.
    pub fn mount_point(&self) -> String {
        format!("/mnt/{}", self.tag)
    }
}

/// A guest to run: a scenario and the shares it sees.
#[derive(Debug, Clone)]
pub struct QemuGuest {
    /// The scenario (`fsr.scenario=`).
    pub scenario: String,
    /// Its argument (`fsr.arg=`), if any.
    pub arg: Option<String>,
    /// The shares, each served by its own daemon.
    pub shares: Vec<GuestShare>,
    /// Limit for the whole run.
    pub timeout: Duration,
    /// The guest kernel (ELF vmlinux).
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
    /// Where the serial output goes (default: a file of the run, removed
    /// afterwards); set it to watch the guest while it runs.
    pub serial_file: Option<PathBuf>,
    /// QEMU's guest memory is shared with the back-ends (`share=on`), as vhost-user needs;
    /// false reproduces the user's mistake of leaving it out.
    pub shared_memory: bool,
}

/// How the guest's exit code was learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitSource {
    /// The guest wrote it to the exit port (QEMU's isa-debug-exit).
    ExitPort,
    /// Only the `@@fsr exit code=N` marker said it.
    Marker,
}

/// What a finished guest run left.
#[derive(Debug)]
pub struct GuestRun {
    /// The guest's exit code.
    pub exit_code: i32,
    /// Where it came from.
    pub exit_source: ExitSource,
    /// Everything the guest printed on its serial console.
    pub serial: String,
    /// The `@@fsr ...` marker lines, in order.
    pub markers: Vec<String>,
    /// Per share (in order): the daemon's standard error and exit status.
    pub daemons: Vec<DaemonRun>,
    /// Wall-clock time from QEMU's start to its exit.
    pub elapsed: Duration,
}

/// One daemon's part of a run.
#[derive(Debug)]
pub struct DaemonRun {
    /// The share's tag.
    pub tag: String,
    /// Its standard error (progress lines and logs).
    pub log: String,
    /// How it ended (None if it had to be killed).
    pub status: Option<ExitStatus>,
}

impl GuestRun {
    /// True if a marker line equals `line`.
    pub fn has_marker(&self, line: &str) -> bool {
        self.markers.iter().any(|m| m == line)
    }

    /// The last `lines` lines of the serial output.
    pub fn serial_tail(&self, lines: usize) -> String {
        tail(&self.serial, lines)
    }

    /// Every daemon's standard error, one after the other.
    pub fn daemon_logs(&self) -> String {
        self.daemons
            .iter()
            .map(|d| d.log.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The workspace root (the tests crate's parent).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace")
        .to_path_buf()
}

/// The guest image built by `guest-images/build-guest.sh`.
pub fn guest_dir() -> PathBuf {
    workspace_root().join("build/guest")
}

/// The QEMU binary to use.
pub fn qemu_binary() -> PathBuf {
    std::env::var_os("QEMU")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("qemu-system-x86_64"))
}

fn in_path(program: &Path) -> bool {
    if program.components().count() > 1 {
        return program.is_file();
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

/// Why guests cannot run under QEMU here, if they cannot.
pub fn unavailable() -> Option<String> {
    let qemu = qemu_binary();
    if !in_path(&qemu) {
        return Some(format!(
            "{} is not installed (apt-get install qemu-system-x86, or set QEMU=/path/to/it)",
            qemu.display()
        ));
    }
    let dir = guest_dir();
    for file in ["vmlinux", "initramfs.cpio.gz"] {
        if !dir.join(file).is_file() {
            return Some(format!(
                "the guest image is missing ({}; build it with guest-images/build-guest.sh)",
                dir.join(file).display()
            ));
        }
    }
    None
}

/// Brings the guest image up to date with `guest-images/build-guest.sh
/// --no-install` (a no-op when nothing changed; about a second when only a
/// scenario did). Returns the script's complaint if it failed.
pub fn refresh_guest_image() -> std::result::Result<(), String> {
    let script = workspace_root().join("guest-images/build-guest.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--no-install")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} failed ({}):\n{}",
            script.display(),
            out.status,
            tail(&String::from_utf8_lossy(&out.stderr), 20)
        ))
    }
}

/// Builds (or finds up to date) the initramfs `initramfs-NAME.cpio.gz`: the
/// standard one with the contents of `extra` copied over its root, with
/// `guest-images/build-guest.sh --initramfs-only --no-install --extra`. It is
/// cached by a hash of its inputs (a second call is instant) and the kernel is
/// never rebuilt. Returns its path, or the script's complaint.
pub fn extra_initramfs(extra: &Path, name: &str) -> std::result::Result<PathBuf, String> {
    let script = workspace_root().join("guest-images/build-guest.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args(["--initramfs-only", "--no-install", "--extra"])
        .arg(extra)
        .args(["--name", name])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} --extra {} --name {name} failed ({}):\n{}",
            script.display(),
            extra.display(),
            out.status,
            tail(&String::from_utf8_lossy(&out.stderr), 20)
        ));
    }
    let path = guest_dir().join(format!("initramfs-{name}.cpio.gz"));
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} --extra {} --name {name} succeeded but left no {}",
            script.display(),
            extra.display(),
            path.display()
        ))
    }
}

/// The binary chosen by [`use_hypervisor_binary`] or built by [`hypervisor_binary`].
static BUILT: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Makes [`hypervisor_binary`] return `bin` from now on (for programs that are not cargo
/// tests, such as the benchmarks, which build the binary themselves).
pub fn use_hypervisor_binary(bin: impl Into<PathBuf>) {
    *BUILT.lock().unwrap_or_else(|p| p.into_inner()) = Some(bin.into());
}

/// The `hypervisor` binary: `$HYPERVISOR_BIN`, the one given to
/// [`use_hypervisor_binary`], or built with cargo into the running test's
/// target directory and profile (once per test process).
pub fn hypervisor_binary() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("HYPERVISOR_BIN") {
        return Ok(PathBuf::from(bin));
    }
    // Held while building, so parallel trials build once and wait for it.
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(bin) = built.as_ref() {
        return Ok(bin.clone());
    }
    let bin = build_hypervisor()?;
    *built = Some(bin.clone());
    Ok(bin)
}

fn build_hypervisor() -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| QemuError::Build(e.to_string()))?;
    // <target>/<profile>/deps/<test>-<hash>
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| QemuError::Build(format!("{} is not in a target dir", exe.display())))?;
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args([
        "build",
        "--quiet",
        "-p",
        "hypervisor",
        "--bin",
        "hypervisor",
    ])
    .current_dir(workspace_root())
    .stdin(Stdio::null());
    if profile.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    if let Some(target) = profile.parent() {
        cmd.env("CARGO_TARGET_DIR", target);
    }
    let status = cmd.status().map_err(|source| QemuError::Spawn {
        what: "cargo".into(),
        source,
    })?;
    if !status.success() {
        return Err(QemuError::Build(format!(
            "cargo build -p hypervisor: {status}"
        )));
    }
    Ok(profile.join("hypervisor"))
}

/// A directory for one run's sockets and logs, removed afterwards.
struct RunDir(PathBuf);

impl RunDir {
    fn new() -> Result<Self> {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        // Short: a Unix socket path must fit in 108 bytes.
        let path = std::env::temp_dir().join(format!(
            "fsr-qemu-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).map_err(|source| QemuError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(Self(path))
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `hypervisor vhost-user-fs` daemon serving one share; killed
/// if still alive when dropped, so a test never leaves one behind.
pub struct Daemon {
    tag: String,
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Starts a daemon serving `share` on `socket` (standard error to
    /// `log`), with `extra` options (e.g. `--loop`), and waits until it
    /// listens.
    pub fn start(share: &GuestShare, socket: &Path, log: &Path, extra: &[&str]) -> Result<Self> {
        let hypervisor = hypervisor_binary()?;
        let child = Command::new(&hypervisor)
            .arg("vhost-user-fs")
            .arg("--socket")
            .arg(socket)
            .arg("--share")
            .arg(&share.spec)
            .arg("--request-queues")
            .arg(share.request_queues.to_string())
            .args(&share.daemon_args)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(create(log)?)
            .spawn()
            .map_err(|source| QemuError::Spawn {
                what: format!("{} vhost-user-fs", hypervisor.display()),
                source,
            })?;
        let mut daemon = Daemon {
            tag: share.tag.clone(),
            child,
            socket: socket.to_owned(),
            log: log.to_owned(),
        };
        let start = Instant::now();
        while !daemon.socket.exists() {
            if let Some(status) = daemon.exited() {
                return Err(daemon.error(format!("exited ({}) before listening", describe(status))));
            }
            if start.elapsed() > DAEMON_READY {
                return Err(daemon.error(format!(
                    "did not create {} within {} s",
                    daemon.socket.display(),
                    DAEMON_READY.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(daemon)
    }

    /// The socket it listens on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The file its standard error goes to.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// What it printed so far.
    pub fn log(&self) -> String {
        read_lossy(&self.log)
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn error(&self, what: String) -> QemuError {
        QemuError::Daemon {
            tag: self.tag.clone(),
            what,
            log: self.log(),
        }
    }

    /// Waits up to `limit` for it to exit by itself, then kills it.
    pub fn wait_exit(mut self, limit: Duration) -> DaemonRun {
        let deadline = Instant::now() + limit;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break None;
                }
            }
        };
        DaemonRun {
            tag: self.tag.clone(),
            log: self.log(),
            status,
        }
    }

    /// Sends SIGTERM and waits (then kills it after `DAEMON_EXIT`).
    pub fn stop(self) -> DaemonRun {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child, not yet reaped (Drop reaps it).
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        self.wait_exit(DAEMON_EXIT)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// QEMU, killed if still alive when dropped (timeouts, errors, panics).
struct QemuProcess(Child);

impl Drop for QemuProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).replace('\r', ""))
        .unwrap_or_default()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn create(path: &Path) -> Result<File> {
    File::create(path).map_err(|source| QemuError::Io {
        path: path.to_owned(),
        source,
    })
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

impl QemuGuest {
    /// Runs `scenario` on the default guest image, with no shares yet.
    pub fn new(scenario: &str) -> Self {
        Self {
            scenario: scenario.to_owned(),
            arg: None,
            shares: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            kernel: guest_dir().join("vmlinux"),
            initrd: guest_dir().join("initramfs.cpio.gz"),
            serial_file: None,
            shared_memory: true,
        }
    }

    /// Boots with guest memory QEMU does not share (no `share=on`).
    pub fn unshared_memory(mut self) -> Self {
        self.shared_memory = false;
        self
    }

    /// Adds a share.
    pub fn share(mut self, share: GuestShare) -> Self {
        self.shares.push(share);
        self
    }

    /// Sets the scenario's argument.
    pub fn arg(mut self, arg: &str) -> Self {
        self.arg = Some(arg.to_owned());
        self
    }

    /// Sends the serial output to `path` (watchable while the guest runs).
    pub fn serial_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.serial_file = Some(path.into());
        self
    }

    /// Boots with `initrd` instead of the standard initramfs (for example
    /// one from [`extra_initramfs`]).
    pub fn initrd(mut self, initrd: impl Into<PathBuf>) -> Self {
        self.initrd = initrd.into();
        self
    }

    /// Sets the limit for the whole run.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The kernel command line.
    pub fn cmdline(&self) -> String {
        let mut cmdline = String::from("console=ttyS0 reboot=k panic=-1");
        if !self.shares.is_empty() {
            let shares: Vec<String> = self
                .shares
                .iter()
                .map(|s| format!("{}:{}", s.tag, s.mount_point()))
                .collect();
            cmdline.push_str(&format!(" fsr.share={}", shares.join(",")));
        }
        cmdline.push_str(&format!(" fsr.scenario={}", self.scenario));
        if let Some(arg) = &self.arg {
            cmdline.push_str(&format!(" fsr.arg={arg}"));
        }
        cmdline
    }

    /// Starts one daemon per share, then QEMU; waits for the guest to end
    /// (or the timeout), then for the daemons to see QEMU go.
    /// Starts one daemon per share, boots the guest (see [`QemuGuest::run_with`]),
    /// then waits for the daemons to see QEMU go and exit.
    pub fn run(&self) -> Result<GuestRun> {
        let dir = RunDir::new()?;
        let mut daemons = Vec::new();
        for (index, share) in self.shares.iter().enumerate() {
            let socket = dir.0.join(format!("fs{index}.sock"));
            let log = dir.0.join(format!("daemon{index}.log"));
            daemons.push(Daemon::start(share, &socket, &log, &[])?);
        }
        let mut run = self.run_with(&mut daemons)?;
        run.daemons = daemons
            .into_iter()
            .map(|daemon| daemon.wait_exit(DAEMON_EXIT))
            .collect();
        Ok(run)
    }

    /// Boots the guest against running daemons (one per share, in order),
    /// waits for it to end or the timeout, and leaves the daemons running
    /// (`GuestRun::daemons` is then empty). A daemon that exits while QEMU
    /// runs is an error.
    pub fn run_with(&self, daemons: &mut [Daemon]) -> Result<GuestRun> {
        assert_eq!(daemons.len(), self.shares.len(), "one daemon per share");
        let dir = RunDir::new()?;
        let serial = self
            .serial_file
            .clone()
            .unwrap_or_else(|| dir.0.join("serial.log"));
        let qemu_log = dir.0.join("qemu.log");
        let mut cmd = Command::new(qemu_binary());
        cmd.args(["-M", "microvm,acpi=off", "-accel", "tcg", "-cpu", "max"])
            .args(["-m", &GUEST_MEM_MIB.to_string()])
            .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
            .args(["-monitor", "none"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .args(["-global", "virtio-mmio.force-legacy=false"])
            .args([
                "-device",
                &format!("isa-debug-exit,iobase={EXIT_PORT},iosize=0x01"),
            ])
            .args([
                "-object",
                &format!(
                    "memory-backend-memfd,id=mem,size={GUEST_MEM_MIB}M,share={}",
                    if self.shared_memory { "on" } else { "off" }
                ),
                "-numa",
                "node,memdev=mem",
            ]);
        for (index, (share, daemon)) in self.shares.iter().zip(daemons.iter()).enumerate() {
            cmd.arg("-chardev")
                .arg(format!(
                    "socket,id=fs{index},path={}",
                    daemon.socket().display()
                ))
                .arg("-device")
                .arg(format!(
                    "vhost-user-fs-device,chardev=fs{index},tag={},num-request-queues={}",
                    share.tag, share.request_queues
                ));
        }
        cmd.arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&self.initrd)
            .arg("-append")
            .arg(self.cmdline())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(create(&qemu_log)?);
        let start = Instant::now();
        let mut qemu = QemuProcess(cmd.spawn().map_err(|source| QemuError::Spawn {
            what: qemu_binary().display().to_string(),
            source,
        })?);

        let status = loop {
            if let Some(status) = qemu.0.try_wait().map_err(|source| QemuError::Spawn {
                what: "waiting for QEMU".into(),
                source,
            })? {
                break status;
            }
            // A daemon must outlive its front-end.
            for daemon in daemons.iter_mut() {
                if let Some(status) = daemon.exited() {
                    return Err(daemon.error(format!(
                        "exited ({}) while QEMU was running",
                        describe(status)
                    )));
                }
            }
            if start.elapsed() > self.timeout {
                return Err(QemuError::Timeout {
                    secs: self.timeout.as_secs(),
                    qemu: read_lossy(&qemu_log),
                    tail: tail(&read_lossy(&serial), 30),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let elapsed = start.elapsed();
        let serial_text = read_lossy(&serial);
        let markers: Vec<String> = serial_text
            .lines()
            .filter(|l| l.starts_with("@@fsr "))
            .map(str::to_owned)
            .collect();
        let marker_code = markers
            .iter()
            .rev()
            .find_map(|m| m.strip_prefix("@@fsr exit code="))
            .and_then(|code| code.trim().parse::<i32>().ok());
        // isa-debug-exit makes QEMU exit with (code << 1) | 1.
        let (exit_code, exit_source) = match (status.code(), marker_code) {
            (Some(code), _) if code & 1 == 1 => (code >> 1, ExitSource::ExitPort),
            (_, Some(code)) => (code, ExitSource::Marker),
            _ => {
                return Err(QemuError::NoExitCode {
                    status: describe(status),
                    qemu: read_lossy(&qemu_log),
                    tail: tail(&serial_text, 30),
                })
            }
        };
        Ok(GuestRun {
            exit_code,
            exit_source,
            serial: serial_text,
            markers,
            daemons: Vec::new(),
            elapsed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_names_each_share_and_the_scenario() {
        let guest = QemuGuest::new("fs-basic")
            .share(GuestShare::passthrough("a", "/x"))
            .share(GuestShare::redirect("b", "/y", "/s", "v"))
            .arg("/mnt/a");

        assert_eq!(
            guest.cmdline(),
            "console=ttyS0 reboot=k panic=-1 fsr.share=a:/mnt/a,b:/mnt/b \
             fsr.scenario=fs-basic fsr.arg=/mnt/a"
        );
        assert_eq!(guest.shares[1].spec, "tag=b,dir=/y,store=/s,volume=v");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
