//! Boot tests of the real `hypervisor` binary, anywhere.
//!
//! On a hardware-virtualization host (VT-x / AMD-V KVM) scenarios run the VMM directly. On any
//! other host (our development and CI machines expose a software `kvm_pvm` /dev/kvm, see
//! docs/architecture.md#host-kinds) they run inside the **emulated VT-x test host**: bochs
//! emulating an Intel CPU with VT-x, running Debian's cloud kernel with the real `kvm_intel`,
//! on which our static `hypervisor` boots our guest. One bochs boot runs a whole batch of
//! scenarios.
//!
//! ```no_run
//! use e2e_tests::testhost::{self, RunOptions, Scenario};
//!
//! let batch = vec![Scenario::new("exit-7", "exit").arg("7").expect_code(7)];
//! let report = testhost::run_scenarios(&batch, &RunOptions::default()).unwrap();
//! for outcome in &report.scenarios {
//!     println!("{}: {}", outcome.id, outcome.verdict);
//! }
//! ```
//!
//! The test host image comes from `guest-images/build-testhost.sh`; [`ensure_image`] runs it
//! (it is cached by input hash, so a second call is quick).

pub mod bochs;
pub mod scenario;
pub mod trials;
pub mod vmm;

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub use scenario::{Scenario, VmmKind};
use vmm::{run_vmm, VmmEvent, VmmStatus};

/// Errors that stop a run before any scenario can be judged.
#[derive(Debug, thiserror::Error)]
pub enum TestHostError {
    /// The image has not been built.
    #[error("test host image missing: {path} does not exist; build it with guest-images/build-testhost.sh")]
    ImageMissing {
        /// The missing file.
        path: PathBuf,
    },
    /// `guest-images/build-testhost.sh` failed.
    #[error("guest-images/build-testhost.sh failed ({status}); its output above says why")]
    BuildFailed {
        /// The script's exit status.
        status: String,
    },
    /// The share disk is attached to a loop device on this host (mounted for inspection).
    #[error("the share disk {path} is in use on this host (loop device {devices}): unmount it first (umount the mount point, or `losetup -d {devices}`); the test host and this host must not write it at once")]
    ShareDiskInUse {
        /// The share disk.
        path: PathBuf,
        /// Its loop devices.
        devices: String,
    },
    /// bochs is not installed.
    #[error("bochs is not installed; run guest-images/build-testhost.sh as root (it installs bochs, bochs-term, bochsbios, vgabios)")]
    BochsMissing,
    /// A scenario cannot be encoded.
    #[error(transparent)]
    InvalidScenario(#[from] scenario::InvalidScenario),
    /// The guest image for a direct run is missing.
    #[error(
        "guest image missing: {path} does not exist; build it with guest-images/build-guest.sh"
    )]
    GuestMissing {
        /// The missing file.
        path: PathBuf,
    },
    /// A file operation failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, TestHostError>;

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> TestHostError {
    let path = path.to_owned();
    move |source| TestHostError::Io { what, path, source }
}

/// Where this machine boots guests (docs/architecture.md#host-kinds): directly, or in the
/// emulated VT-x test host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostKind {
    /// VT-x or AMD-V with /dev/kvm: guests run natively.
    HardwareVirt,
    /// /dev/kvm backed by software (`kvm_pvm`), or no usable KVM at all.
    NoHardwareVirt,
}

impl HostKind {
    /// Detects the kind of this machine with the VMM's own detection
    /// ([`hypervisor::host::detect`]), so tests decide as the VMM does.
    pub fn detect() -> HostKind {
        if hypervisor::host::detect().is_hardware() {
            HostKind::HardwareVirt
        } else {
            HostKind::NoHardwareVirt
        }
    }
}

/// Where the test host's files live.
#[derive(Clone, Debug)]
pub struct Paths {
    /// The workspace root.
    pub root: PathBuf,
    /// Output of build-testhost.sh (boot.img, bochsrc, bochs.rc, stamp).
    pub image_dir: PathBuf,
    /// Whether that is the boot benchmark's image (`build-testhost.sh --bench`: the tests'
    /// image plus the peer VMMs, [`VmmKind`]).
    pub bench_image: bool,
    /// The persistent ext4 share disk (in the VM data folder).
    pub share_disk: PathBuf,
    /// Files of the current (or last) run: params.img, serial.log, bochs.log.
    pub run_dir: PathBuf,
    /// The lock that serializes runs (they share the share disk).
    pub run_lock: PathBuf,
    /// The guest image for direct runs (vmlinux, initramfs.cpio.gz).
    pub guest_dir: PathBuf,
}

impl Paths {
    /// The standard layout under the workspace root; `FSR_VM_DATA` moves the VM data folder
    /// and `GUEST_DIR` the guest image, as in build-testhost.sh.
    pub fn from_workspace(root: &Path) -> Paths {
        let vm_data = std::env::var_os("FSR_VM_DATA")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("vm-data"));
        let guest_dir = std::env::var_os("GUEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("build/guest"));
        Paths {
            root: root.to_owned(),
            image_dir: root.join("build/testhost"),
            bench_image: false,
            share_disk: vm_data.join("testhost/share.ext4"),
            run_dir: root.join("build/testhost-run"),
            run_lock: vm_data.join("testhost/run.lock"),
            guest_dir,
        }
    }

    /// The layout of the workspace this crate was built in.
    pub fn default_workspace() -> Paths {
        let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        Paths::from_workspace(crate_dir.parent().unwrap_or(crate_dir))
    }

    /// The same layout with the boot benchmark's image (build/testhost-bench), which carries
    /// the peer VMMs.
    pub fn with_bench_image(self) -> Paths {
        Paths {
            image_dir: self.root.join("build/testhost-bench"),
            bench_image: true,
            ..self
        }
    }
}

/// How to run a batch.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Wall-clock limit for the whole bochs run; `None` picks one from the batch size.
    pub timeout: Option<Duration>,
    /// Echo timestamped serial lines to standard error as they arrive.
    pub stream: bool,
    /// File layout.
    pub paths: Paths,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            timeout: None,
            stream: true,
            paths: Paths::default_workspace(),
        }
    }
}

/// Whether a scenario passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every expectation held.
    Pass,
    /// Why it failed.
    Fail(String),
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Pass => write!(f, "pass"),
            Verdict::Fail(why) => write!(f, "FAIL: {why}"),
        }
    }
}

/// What happened to one scenario.
#[derive(Clone, Debug)]
pub struct ScenarioOutcome {
    /// The scenario's id.
    pub id: String,
    /// Pass or fail, with the reason.
    pub verdict: Verdict,
    /// The VMM's exit code, if it exited.
    pub exit_code: Option<i32>,
    /// Time from VMM start to the guest's `@@fsr init` line. Inside the test host this is
    /// test-host guest-clock time (deterministic, not a hardware figure); directly on a
    /// hardware-virtualization host it is wall time.
    pub guest_boot: Option<f64>,
    /// Time from VMM start to its exit, on the same clock as `guest_boot`.
    pub vmm_exit: Option<f64>,
    /// The console lines of this scenario (VMM output and markers).
    pub lines: Vec<String>,
}

/// One milestone of a run: a name and the wall time since bochs (or the batch) started.
#[derive(Clone, Debug)]
pub struct Stage {
    /// What was reached.
    pub name: String,
    /// Wall time since the start.
    pub wall: Duration,
    /// The test host's uptime at that point, when a marker reported it.
    pub uptime: Option<f64>,
}

/// The result of a batch.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// Where the scenarios ran.
    pub host: HostKind,
    /// One outcome per scenario, in batch order.
    pub scenarios: Vec<ScenarioOutcome>,
    /// Milestones in order.
    pub stages: Vec<Stage>,
    /// Why the run ended early, if it did (timeout, bochs exit, test-host error).
    pub problem: Option<String>,
    /// The serial log of the run (test host only).
    pub serial_log: Option<PathBuf>,
    /// Total wall time.
    pub wall: Duration,
}

impl RunReport {
    /// Whether every scenario passed.
    pub fn all_passed(&self) -> bool {
        self.scenarios.iter().all(|s| s.verdict == Verdict::Pass)
    }

    /// The outcome of scenario `id`.
    pub fn outcome(&self, id: &str) -> Option<&ScenarioOutcome> {
        self.scenarios.iter().find(|s| s.id == id)
    }

    /// A human-readable summary: stages, boot times, verdicts.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let place = match self.host {
            HostKind::HardwareVirt => "directly on this hardware-virtualization host",
            HostKind::NoHardwareVirt => "inside the emulated VT-x test host (bochs)",
        };
        out.push_str(&format!(
            "ran {} scenario(s) {place} in {:.1} s wall\n",
            self.scenarios.len(),
            self.wall.as_secs_f64()
        ));
        for st in &self.stages {
            let up = st
                .uptime
                .map(|u| format!(" (test-host clock {u:.2} s)"))
                .unwrap_or_default();
            out.push_str(&format!(
                "  {:>7.1} s wall  {}{up}\n",
                st.wall.as_secs_f64(),
                st.name
            ));
        }
        let clock = match self.host {
            HostKind::HardwareVirt => "wall time",
            HostKind::NoHardwareVirt => {
                "test-host guest clock, deterministic; not a hardware figure"
            }
        };
        for s in &self.scenarios {
            let boot = s
                .guest_boot
                .map(|b| format!(", VMM start to guest /init {b:.3} s ({clock})"))
                .unwrap_or_default();
            let code = s
                .exit_code
                .map(|c| format!(", exit code {c}"))
                .unwrap_or_default();
            out.push_str(&format!("  {}: {}{code}{boot}\n", s.id, s.verdict));
        }
        if let Some(p) = &self.problem {
            out.push_str(&format!("  problem: {p}\n"));
        }
        out
    }
}

/// The standard boot batch: exit code, two vCPUs, guest reboot, console input. One test-host
/// boot runs them all.
pub fn boot_scenarios() -> Vec<Scenario> {
    vec![
        Scenario::new("boot-exit-code", "exit")
            .arg("42")
            .expect_code(42),
        Scenario::new("two-vcpus", "cpus").arg("2").vcpus(2),
        Scenario::new("guest-reboot", "reboot"),
        Scenario::new("serial-input", "echo")
            .input("hello-from-the-host")
            .expect_output("@@fsr echo got=hello-from-the-host"),
    ]
}

/// Mount point of the share disk inside the test host.
pub const SHARE_MOUNT: &str = "/share";
/// Guest tree of the test-host share scenarios, on the share disk.
pub const SHARE_TREE: &str = "/share/fs/tree";
/// Block store of the test-host share scenarios, on the share disk.
pub const SHARE_STORE: &str = "/share/fs/store";

/// A virtio-fs share on the test host's share disk, in two VMM runs of one boot: `fs-basic`
/// on an emptied tree and store, then `fs-readback` on what it left (docs/guest-protocol.md).
/// Afterwards the host can read the tree and the store from the disk image with
/// [`read_share_disk_file`], e.g. `<SHARE_STORE>/share0/fs-basic/renamed.txt`.
pub fn share_scenarios() -> Vec<Scenario> {
    // The VMM adds `fsr.share=share0:/mnt/share0` to the guest command line for each --share.
    let share = |s: Scenario| {
        s.arg("/mnt/share0")
            .vmm_arg("--share")
            .vmm_arg(&format!("tag=share0,dir={SHARE_TREE},store={SHARE_STORE}"))
    };
    vec![
        share(Scenario::new("share-fs-basic", "fs-basic"))
            .fresh_dir(SHARE_TREE)
            .fresh_dir(SHARE_STORE),
        share(Scenario::new("share-fs-readback", "fs-readback")),
    ]
}

/// Guest tree of the sandboxed share scenario, on the share disk.
pub const SANDBOXED_TREE: &str = "/share/fs/sandboxed-tree";
/// Block store of the sandboxed share scenario, on the share disk.
pub const SANDBOXED_STORE: &str = "/share/fs/sandboxed-store";

/// `fs-basic` on a share of its own with the VMM in `--sandbox namespace`: new mount, pid,
/// IPC and network namespaces holding only the kernel, initramfs, /dev/kvm and the share,
/// inodes held without file handles, the share's workers under Landlock, and its requests
/// served by a pool of two threads confined as the workers are (`--fs-thread-pool-size 2`;
/// the other share scenarios have none; `-v` makes the VMM say so on the console, which the
/// scenario checks, so a pool lost on its way to the device fails it). Afterwards
/// `<SANDBOXED_STORE>/share0/fs-basic/renamed.txt` holds what the guest wrote.
pub fn sandboxed_share_scenario() -> Scenario {
    Scenario::new("share-fs-basic-sandboxed", "fs-basic")
        .arg("/mnt/share0")
        .vmm_arg("-v")
        .vmm_arg("--sandbox")
        .vmm_arg("namespace")
        .vmm_arg("--fs-thread-pool-size")
        .vmm_arg("2")
        .vmm_arg("--share")
        .vmm_arg(&format!(
            "tag=share0,dir={SANDBOXED_TREE},store={SANDBOXED_STORE}"
        ))
        .fresh_dir(SANDBOXED_TREE)
        .fresh_dir(SANDBOXED_STORE)
        .expect_output("its requests served by 2 pool threads")
}

/// Guest tree of the scenario whose VMM runs as a user other than root, on the share disk.
pub const UNPRIVILEGED_TREE: &str = "/share/fs/unprivileged-tree";
/// Its block store, on the share disk.
pub const UNPRIVILEGED_STORE: &str = "/share/fs/unprivileged-store";

/// `fs-basic` on a share of its own with the VMM run as `nobody` (uid and gid 65534) in
/// `--sandbox namespace`, which it then makes inside a user namespace of its own: the
/// share is served without file handles, its metadata under `user.fsredirect`, and the
/// process holds no capability. `-v` makes the VMM say so on the console (its pid, user
/// and capabilities inside, and no hot inodes), which the scenario checks. Afterwards
/// `<UNPRIVILEGED_STORE>/share0/fs-basic/renamed.txt` holds what the guest wrote.
pub fn unprivileged_share_scenario() -> Scenario {
    Scenario::new("share-fs-basic-not-root", "fs-basic")
        .arg("/mnt/share0")
        .as_user(65534, 65534)
        .vmm_arg("-v")
        .vmm_arg("--sandbox")
        .vmm_arg("namespace")
        .vmm_arg("--share")
        .vmm_arg(&format!(
            "tag=share0,dir={UNPRIVILEGED_TREE},store={UNPRIVILEGED_STORE}"
        ))
        .fresh_dir(UNPRIVILEGED_TREE)
        .fresh_dir(UNPRIVILEGED_STORE)
        .expect_output("in the namespace sandbox: pid 1 of its own pid namespace, uid 65534, holding 0 capabilities")
        .expect_output("0 hot inodes")
}

/// Reads a file from the share disk image on the host (no mount needed; uses `debugfs` from
/// e2fsprogs). `path` is the path inside the test host, under [`SHARE_MOUNT`]. Call it only
/// when no test-host run is using the disk.
pub fn read_share_disk_file(paths: &Paths, path: &str) -> Result<Vec<u8>> {
    let inner = path
        .strip_prefix(SHARE_MOUNT)
        .filter(|p| p.starts_with('/'))
        .ok_or_else(|| TestHostError::Io {
            what: "not a path under /share:",
            path: PathBuf::from(path),
            source: io::Error::from(io::ErrorKind::InvalidInput),
        })?;
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("dump -p \"{inner}\" /dev/stdout"))
        .arg(&paths.share_disk)
        .output()
        .map_err(io_err("cannot run debugfs on", &paths.share_disk))?;
    // debugfs reports a missing file on stderr and still exits 0.
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || stderr.contains("File not found") {
        return Err(TestHostError::Io {
            what: "debugfs cannot read",
            path: PathBuf::from(format!("{}:{inner}", paths.share_disk.display())),
            source: io::Error::other(stderr.trim().to_owned()),
        });
    }
    Ok(out.stdout)
}

/// The default VM's share inside the test host: tag `data` (mounted in the guest at
/// `/mnt/data`, as on a hardware-virtualization host), on the share disk so that it persists.
pub const DEFAULT_SHARE: &str = "tag=data,dir=/share/default/tree,store=/share/default/store";

/// The non-interactive default VM: boot the guest with the default redirecting share, append a
/// line to `hello.txt` there, show the share, exit 0 (guest scenario `default`).
pub fn default_scenario() -> Scenario {
    Scenario::new("default-vm", "default")
        .arg("/mnt/data")
        .vmm_arg("--share")
        .vmm_arg(DEFAULT_SHARE)
        .made_dir("/share/default/tree")
        .made_dir("/share/default/store")
}

/// Runs the batch where this machine can: directly on a hardware-virtualization host, in the
/// emulated VT-x test host elsewhere. Prints which, and why, to standard error.
/// `FSR_FORCE_TESTHOST=1` uses the test host even on a hardware-virtualization host.
pub fn run_scenarios(scenarios: &[Scenario], opts: &RunOptions) -> Result<RunReport> {
    let forced = std::env::var_os("FSR_FORCE_TESTHOST").is_some_and(|v| v == "1");
    if forced {
        eprintln!("testhost: FSR_FORCE_TESTHOST=1: running inside the emulated VT-x test host");
        ensure_image(&opts.paths)?;
        return run_in_test_host(scenarios, opts);
    }
    match HostKind::detect() {
        HostKind::HardwareVirt => {
            eprintln!("testhost: this host has hardware virtualization: running the VMM directly");
            run_direct(scenarios, opts)
        }
        HostKind::NoHardwareVirt => {
            eprintln!(
                "testhost: no hardware virtualization here (no vmx/svm, or a software kvm_pvm \
                 /dev/kvm that cannot run ordinary Linux guests): running the VMM inside the \
                 emulated VT-x test host (bochs). This is slow, a minute or more before the \
                 first guest boots, because bochs emulates every instruction."
            );
            ensure_image(&opts.paths)?;
            run_in_test_host(scenarios, opts)
        }
    }
}

/// Where build-testhost.sh puts the static binaries:
/// `$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release` (`target/` by default).
pub fn static_binary_dir(paths: &Paths) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| paths.root.join("target"))
        .join("x86_64-unknown-linux-gnu/release")
}

fn run_build_script(paths: &Paths, args: &[&str]) -> Result<()> {
    let script = paths.root.join("guest-images/build-testhost.sh");
    let status = Command::new("bash")
        .arg(&script)
        .args(args)
        .status()
        .map_err(io_err("cannot run", &script))?;
    if !status.success() {
        return Err(TestHostError::BuildFailed {
            status: status.to_string(),
        });
    }
    Ok(())
}

/// Runs `guest-images/build-testhost.sh` (quick when nothing changed). It rebuilds the static
/// `hypervisor` and `testhost-agent` with cargo first (a no-op when they are up to date), so the
/// test host always carries the current sources; with `HYPERVISOR_BIN` (and `AGENT_BIN`) set
/// it packs those binaries instead and does not run cargo.
pub fn ensure_image(paths: &Paths) -> Result<()> {
    let mut args = Vec::new();
    if std::env::var_os("HYPERVISOR_BIN").is_some() {
        args.push("--no-cargo");
    }
    if paths.bench_image {
        args.push("--bench");
    }
    run_build_script(paths, &args)
}

/// The default wall-clock limit for a batch of `n` scenarios inside the test host.
pub fn default_timeout(n: usize) -> Duration {
    Duration::from_secs(180 + 90 * n as u64)
}

/// Size of the parameter disk: one bochs cylinder (16 heads x 63 sectors x 512 bytes).
const PARAMS_DISK_BYTES: usize = 16 * 63 * 512;

/// Boots the test host once and runs `scenarios` in it, in order.
pub fn run_in_test_host(scenarios: &[Scenario], opts: &RunOptions) -> Result<RunReport> {
    let paths = &opts.paths;
    let params = scenario::encode_params(scenarios)?;
    if params.len() > PARAMS_DISK_BYTES {
        return Err(TestHostError::InvalidScenario(scenario::InvalidScenario {
            id: scenarios.last().map(|s| s.id.clone()).unwrap_or_default(),
            reason: format!("the batch does not fit the {PARAMS_DISK_BYTES}-byte parameter disk"),
        }));
    }
    for f in ["boot.img", "bochsrc", "bochs.rc", "stamp"] {
        let path = paths.image_dir.join(f);
        if !path.exists() {
            return Err(TestHostError::ImageMissing { path });
        }
    }
    if !paths.share_disk.exists() {
        return Err(TestHostError::ImageMissing {
            path: paths.share_disk.clone(),
        });
    }
    if !bochs::bochs_installed() {
        return Err(TestHostError::BochsMissing);
    }
    let loops = crate::share_disk::loop_devices_of(&paths.share_disk);
    if !loops.is_empty() {
        return Err(TestHostError::ShareDiskInUse {
            path: paths.share_disk.clone(),
            devices: loops.join(", "),
        });
    }
    let _lock = bochs::RunLock::acquire(&paths.run_lock, || {
        eprintln!(
            "testhost: waiting for another test-host run to finish (lock {})",
            paths.run_lock.display()
        )
    })
    .map_err(io_err("cannot lock", &paths.run_lock))?;

    // Fresh run directory: the parameter disk in, serial and bochs logs out.
    let run_dir = &paths.run_dir;
    if run_dir.exists() {
        std::fs::remove_dir_all(run_dir).map_err(io_err("cannot clean", run_dir))?;
    }
    std::fs::create_dir_all(run_dir).map_err(io_err("cannot create", run_dir))?;
    let params_img = run_dir.join("params.img");
    let mut disk = params.into_bytes();
    disk.resize(PARAMS_DISK_BYTES, 0);
    std::fs::write(&params_img, disk).map_err(io_err("cannot write", &params_img))?;
    let serial_path = run_dir.join("serial.log");
    let boot_img = paths.image_dir.join("boot.img");
    let disks = [
        boot_img.as_path(),
        paths.share_disk.as_path(),
        params_img.as_path(),
    ];
    bochs::remove_locks(&disks);

    let timeout = opts
        .timeout
        .unwrap_or_else(|| default_timeout(scenarios.len()));
    eprintln!(
        "testhost: booting the test host with {} scenario(s) (timeout {} s; serial log {})",
        scenarios.len(),
        timeout.as_secs(),
        serial_path.display()
    );
    let start = Instant::now();
    let mut bochs = bochs::Bochs::spawn(
        &paths.image_dir.join("bochsrc"),
        &paths.image_dir.join("bochs.rc"),
        &[
            ("FSR_TESTHOST_IMAGE", paths.image_dir.as_path()),
            ("FSR_TESTHOST_SHARE", paths.share_disk.as_path()),
            ("FSR_TESTHOST_RUN", run_dir.as_path()),
        ],
        &disks,
    )
    .map_err(io_err(
        "cannot start bochs with",
        &paths.image_dir.join("bochsrc"),
    ))?;

    let mut parser = MarkerParser::new(scenarios);
    let mut serial: Option<File> = None;
    let mut pending = Vec::new();
    let mut last_progress = Instant::now();
    let mut last_output = Instant::now();
    let problem = loop {
        if serial.is_none() {
            serial = File::open(&serial_path).ok();
        }
        let mut got_data = false;
        if let Some(f) = serial.as_mut() {
            let mut buf = [0u8; 8192];
            loop {
                match f.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        got_data = true;
                        pending.extend_from_slice(&buf[..n]);
                    }
                }
            }
        }
        while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = pending.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&raw)
                .trim_end_matches(['\n', '\r'])
                .to_owned();
            let wall = start.elapsed();
            if opts.stream {
                eprintln!("[{:>7.2}s] {line}", wall.as_secs_f64());
            }
            parser.line(&line, wall);
        }
        if parser.done {
            break parser.error.clone();
        }
        if let Ok(Some(status)) = bochs.try_wait() {
            if got_data {
                continue;
            }
            let log = log_tail(&run_dir.join("bochs.log"), 8);
            let screen = bochs.screen_tail(12);
            break Some(format!(
                "bochs exited ({status}) before the test host finished; last bochs.log \
                 lines:\n{log}\nlast lines on its terminal:\n{screen}"
            ));
        }
        if start.elapsed() > timeout {
            break Some(format!(
                "timed out after {} s (wall); last stage: {}",
                timeout.as_secs(),
                parser
                    .stages
                    .last()
                    .map_or("none (no serial output)".to_owned(), |s| s.name.clone())
            ));
        }
        // Progress: streamed lines are progress enough while they flow; otherwise say where
        // the run is every 30 s.
        if got_data {
            last_output = Instant::now();
        }
        let silent_for = if opts.stream {
            last_output.elapsed()
        } else {
            last_progress.elapsed()
        };
        let every = Duration::from_secs(30);
        if silent_for > every && last_progress.elapsed() > every {
            eprintln!(
                "testhost: still running after {:.0} s wall (last stage: {}); bochs emulates \
                 every instruction, so this is slow",
                start.elapsed().as_secs_f64(),
                parser
                    .stages
                    .last()
                    .map_or("bochs starting", |s| s.name.as_str())
            );
            last_progress = Instant::now();
        }
        if !got_data {
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    bochs.kill();
    let wall = start.elapsed();
    let report = parser.finish(problem, wall, Some(serial_path));
    Ok(report)
}

/// The last `n` lines of a text file, for error messages.
fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Parses a `key=value` field out of marker words.
fn field<'a>(words: &[&'a str], key: &str) -> Option<&'a str> {
    words
        .iter()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// Per-scenario state while the serial stream is parsed.
#[derive(Default)]
struct Progress {
    started: bool,
    ended: bool,
    status: Option<String>,
    reason: Option<String>,
    code: Option<i32>,
    boot: Option<f64>,
    elapsed: Option<f64>,
    lines: Vec<String>,
}

/// Turns the serial stream into stages and per-scenario outcomes.
struct MarkerParser<'a> {
    scenarios: &'a [Scenario],
    progress: Vec<Progress>,
    current: Option<usize>,
    stages: Vec<Stage>,
    error: Option<String>,
    done: bool,
    saw_serial: bool,
    saw_kernel: bool,
    saw_init: bool,
}

impl<'a> MarkerParser<'a> {
    fn new(scenarios: &'a [Scenario]) -> Self {
        MarkerParser {
            scenarios,
            progress: scenarios.iter().map(|_| Progress::default()).collect(),
            current: None,
            stages: Vec::new(),
            error: None,
            done: false,
            saw_serial: false,
            saw_kernel: false,
            saw_init: false,
        }
    }

    fn stage(&mut self, name: String, wall: Duration, uptime: Option<f64>) {
        self.stages.push(Stage { name, wall, uptime });
    }

    fn line(&mut self, line: &str, wall: Duration) {
        if !self.saw_serial {
            self.saw_serial = true;
            self.stage("first serial output (syslinux)".into(), wall, None);
        }
        // Only the test host's own banner: guests print one too. With the default `quiet`
        // test-host command line there is none.
        if !self.saw_kernel && !self.saw_init && line.contains("Linux version") {
            self.saw_kernel = true;
            self.stage("test host kernel started".into(), wall, None);
        }
        if let Some(i) = self.current {
            self.progress[i].lines.push(line.to_owned());
        }
        let Some(at) = line.find("@@testhost ") else {
            return;
        };
        let words: Vec<&str> = line[at + "@@testhost ".len()..]
            .split_whitespace()
            .collect();
        let uptime = field(&words, "uptime").and_then(|u| u.parse().ok());
        match words.first().copied() {
            Some("init") => {
                self.saw_init = true;
                self.stage("test host /init".into(), wall, uptime)
            }
            Some("modules") => self.stage("test host modules loaded".into(), wall, uptime),
            Some("kvm") => self.stage("test host kvm_intel ready (/dev/kvm)".into(), wall, uptime),
            Some("error") => {
                let msg = words[1..]
                    .iter()
                    .filter(|w| !w.starts_with("uptime="))
                    .copied()
                    .collect::<Vec<_>>()
                    .join(" ");
                self.error = Some(format!("test host: {msg}"));
            }
            Some("done") => {
                self.stage("test host done".into(), wall, uptime);
                self.done = true;
            }
            Some("scenario") => self.scenario_marker(&words, wall, uptime, line),
            _ => {}
        }
    }

    fn scenario_marker(&mut self, words: &[&str], wall: Duration, uptime: Option<f64>, line: &str) {
        let (Some(id), Some(event)) = (words.get(1), words.get(2)) else {
            return;
        };
        let Some(i) = self.scenarios.iter().position(|s| s.id == *id) else {
            return;
        };
        let p = &mut self.progress[i];
        match *event {
            "start" => {
                p.started = true;
                p.lines.push(line.to_owned());
                self.current = Some(i);
                self.stage(format!("scenario {id}: VMM started"), wall, uptime);
            }
            "guest-init" => {
                p.boot = field(words, "boot").and_then(|b| b.parse().ok());
                self.stage(format!("scenario {id}: guest /init"), wall, uptime);
            }
            "end" => {
                p.ended = true;
                p.status = field(words, "status").map(str::to_owned);
                p.code = field(words, "code").and_then(|c| c.parse().ok());
                p.reason = field(words, "reason").map(str::to_owned);
                p.elapsed = field(words, "elapsed").and_then(|e| e.parse().ok());
                if p.boot.is_none() {
                    p.boot = field(words, "boot").and_then(|b| b.parse().ok());
                }
                self.current = None;
                self.stage(format!("scenario {id}: VMM exited"), wall, uptime);
            }
            _ => {}
        }
    }

    fn finish(
        self,
        problem: Option<String>,
        wall: Duration,
        serial_log: Option<PathBuf>,
    ) -> RunReport {
        let scenarios = self
            .scenarios
            .iter()
            .zip(self.progress)
            .map(|(s, p)| {
                let verdict = judge(s, &p, problem.as_deref());
                ScenarioOutcome {
                    id: s.id.clone(),
                    verdict,
                    exit_code: p.code,
                    guest_boot: p.boot,
                    vmm_exit: p.elapsed,
                    lines: p.lines,
                }
            })
            .collect();
        RunReport {
            host: HostKind::NoHardwareVirt,
            scenarios,
            stages: self.stages,
            problem,
            serial_log,
            wall,
        }
    }
}

/// The verdict for one scenario from what its markers said.
fn judge(s: &Scenario, p: &Progress, problem: Option<&str>) -> Verdict {
    let run_problem = || problem.unwrap_or("the test host stopped without saying why");
    if !p.started {
        return Verdict::Fail(format!("not run: {}", run_problem()));
    }
    if !p.ended {
        return Verdict::Fail(format!("did not finish: {}", run_problem()));
    }
    match p.status.as_deref() {
        Some("exited") => {}
        Some("timeout") => {
            return Verdict::Fail(format!(
                "the VMM ran past {} s (test-host clock) and was killed",
                s.timeout_secs
            ))
        }
        Some("not-run") => {
            return Verdict::Fail(format!(
                "not run in the test host: {}",
                p.reason.as_deref().unwrap_or("no reason given")
            ))
        }
        other => {
            return Verdict::Fail(format!(
                "the VMM did not exit normally (status {}{})",
                other.unwrap_or("unknown"),
                p.reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ))
        }
    }
    let mut failures = Vec::new();
    if p.code != Some(s.expect_code) {
        failures.push(format!(
            "VMM exit code {}, expected {}",
            p.code.map_or("unknown".into(), |c| c.to_string()),
            s.expect_code
        ));
    }
    if p.boot.is_none() {
        failures.push("the guest never printed '@@fsr init'".to_owned());
    }
    for want in &s.expect_output {
        if !p.lines.iter().any(|l| l.contains(want.as_str())) {
            failures.push(format!("output lacks '{want}'"));
        }
    }
    if failures.is_empty() {
        Verdict::Pass
    } else {
        let tail_start = p.lines.len().saturating_sub(15);
        Verdict::Fail(format!(
            "{}; last console lines:\n{}",
            failures.join("; "),
            p.lines[tail_start..].join("\n")
        ))
    }
}

/// Runs the batch with the local `hypervisor` binary (hardware-virtualization hosts); the boot
/// benchmark's peers are the static `floor-vmm` (or `FLOOR_BIN`) and `qemu-system-x86_64` from
/// `PATH`.
pub fn run_direct(scenarios: &[Scenario], opts: &RunOptions) -> Result<RunReport> {
    for s in scenarios {
        s.validate()?;
    }
    let kernel = opts.paths.guest_dir.join("vmlinux");
    let initrd = opts.paths.guest_dir.join("initramfs.cpio.gz");
    for path in [&kernel, &initrd] {
        if !path.exists() {
            return Err(TestHostError::GuestMissing { path: path.clone() });
        }
    }
    let hypervisor = match std::env::var_os("HYPERVISOR_BIN") {
        Some(bin) => PathBuf::from(bin),
        None => {
            let mut args = vec!["--binaries-only"];
            if opts.paths.bench_image {
                args.push("--bench");
            }
            run_build_script(&opts.paths, &args)?;
            static_binary_dir(&opts.paths).join("hypervisor")
        }
    };
    let program = |kind: VmmKind| match kind {
        VmmKind::Ours => hypervisor.clone(),
        VmmKind::Floor => std::env::var_os("FLOOR_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| static_binary_dir(&opts.paths).join("floor-vmm")),
        VmmKind::QemuMicrovm => PathBuf::from("qemu-system-x86_64"),
    };
    let start = Instant::now();
    let mut stages = Vec::new();
    let mut outcomes = Vec::new();
    for s in scenarios {
        let argv = s.vmm_argv(&kernel.to_string_lossy(), &initrd.to_string_lossy());
        let mut lines = Vec::new();
        let mut pending = Vec::new();
        let stream = opts.stream;
        let run = run_vmm(
            &program(s.vmm),
            &argv,
            s.input.as_deref(),
            s.user,
            Duration::from_secs(s.timeout_secs.into()),
            &mut |e| {
                if let VmmEvent::Output(bytes) = e {
                    pending.extend_from_slice(bytes);
                    while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
                        let raw: Vec<u8> = pending.drain(..=pos).collect();
                        let line = String::from_utf8_lossy(&raw)
                            .trim_end_matches(['\n', '\r'])
                            .to_owned();
                        if stream {
                            eprintln!("[{:>7.2}s] {line}", start.elapsed().as_secs_f64());
                        }
                        lines.push(line);
                    }
                }
            },
        );
        let (status, code, reason) = match &run.status {
            VmmStatus::Exited(c) => ("exited", Some(*c), None),
            VmmStatus::Signaled(sig) => ("signaled", None, Some(format!("signal {sig}"))),
            VmmStatus::TimedOut => ("timeout", None, None),
            VmmStatus::SpawnFailed(e) => ("spawn-failed", None, Some(e.clone())),
        };
        let progress = Progress {
            started: true,
            ended: true,
            status: Some(status.to_owned()),
            reason,
            code,
            boot: run.guest_init.map(|d| d.as_secs_f64()),
            elapsed: Some(run.elapsed.as_secs_f64()),
            lines,
        };
        stages.push(Stage {
            name: format!("scenario {}: VMM exited", s.id),
            wall: start.elapsed(),
            uptime: None,
        });
        outcomes.push(ScenarioOutcome {
            id: s.id.clone(),
            verdict: judge(s, &progress, None),
            exit_code: progress.code,
            guest_boot: progress.boot,
            vmm_exit: progress.elapsed,
            lines: progress.lines,
        });
    }
    Ok(RunReport {
        host: HostKind::HardwareVirt,
        scenarios: outcomes,
        stages,
        problem: None,
        serial_log: None,
        wall: start.elapsed(),
    })
}

/// Writes `report.summary()` to standard error (convenience for tests and the CLI).
pub fn print_summary(report: &RunReport) {
    let mut err = io::stderr().lock();
    // Nothing sensible to do if standard error is gone.
    let _ = err.write_all(report.summary().as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(parser: &mut MarkerParser<'_>, text: &str) {
        for (i, line) in text.lines().enumerate() {
            parser.line(line, Duration::from_secs(i as u64));
        }
    }

    #[test]
    fn markers_become_verdicts_and_boot_times() {
        let batch = vec![
            Scenario::new("a", "exit").arg("3").expect_code(3),
            Scenario::new("b", "echo")
                .input("x")
                .expect_output("@@fsr echo got=x"),
        ];
        let mut parser = MarkerParser::new(&batch);

        feed(
            &mut parser,
            "Linux version 6.1\n\
             @@testhost init version=abc uptime=19.5\n\
             @@testhost scenario a start vcpus=1 uptime=20.0\n\
             @@fsr init uptime=0.5\r\n\
             @@testhost scenario a guest-init boot=2.580000 uptime=22.58\n\
             @@testhost scenario a end status=exited code=3 boot=2.580000 elapsed=3.0 uptime=23.0\n\
             @@testhost scenario b start vcpus=1 uptime=23.1\n\
             @@testhost scenario b end status=exited code=0 elapsed=3.0 uptime=26.0\n\
             @@testhost done uptime=26.1",
        );
        let report = parser.finish(None, Duration::from_secs(30), None);

        assert!(parser_done_stage(&report));
        assert_eq!(report.scenarios[0].verdict, Verdict::Pass);
        assert_eq!(report.scenarios[0].guest_boot, Some(2.58));
        assert_eq!(report.scenarios[0].vmm_exit, Some(3.0));
        let Verdict::Fail(why) = &report.scenarios[1].verdict else {
            panic!("b should fail");
        };
        assert!(why.contains("never printed '@@fsr init'"), "{why}");
        assert!(why.contains("lacks '@@fsr echo got=x'"), "{why}");
    }

    fn parser_done_stage(report: &RunReport) -> bool {
        report.stages.iter().any(|s| s.name == "test host done")
    }

    #[test]
    fn scenarios_after_a_test_host_error_fail_with_its_message() {
        let batch = vec![Scenario::new("a", "exit")];
        let mut parser = MarkerParser::new(&batch);

        feed(
            &mut parser,
            "@@testhost error insmod kvm-intel failed uptime=18.0\n@@testhost done uptime=18.1",
        );
        let problem = parser.error.clone();
        let report = parser.finish(problem, Duration::from_secs(20), None);

        let Verdict::Fail(why) = &report.scenarios[0].verdict else {
            panic!("should fail");
        };
        assert!(why.contains("insmod kvm-intel failed"), "{why}");
    }
}
