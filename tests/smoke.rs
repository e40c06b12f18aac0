//! Smoke tests of the product: boot a VM, write from inside, find the data on the host
//! (smoke tests 1-4 of the test table in README.md). Each behaviour is a module under
//! `tests/smoke/` whose doc comment numbers its steps:
//!
//! - [`boot_and_write`]: files of every size class, stored with identical SHA-256 behind
//!   sparse stubs;
//! - [`persistence`]: a second boot reads them all back;
//! - [`namespace`]: rename, hard link, unlink, truncate and extend, mirrored in the store;
//! - [`isolation`]: the guest can neither see nor forge the metadata nor reach the host.
//!
//! Each runs on two paths, and every line of output names the path:
//! - `vmm::*`: our own VMM with its in-process virtio-fs device. Directly on a
//!   hardware-virtualization host; elsewhere inside the emulated VT-x test host, where one
//!   bochs boot runs the four guest scenarios as four VMM runs on a share on the test host's
//!   share disk, which this host then mounts (loop device, root) to check.
//! - `vhost_user::*`: `hypervisor vhost-user-fs` serving the same share layout to a guest under
//!   QEMU's software CPU, one QEMU boot per guest scenario.
//!
//! A path that cannot run here (no QEMU, not root for the share disk) reports its trials as
//! ignored and says why.

#[path = "smoke/boot_and_write.rs"]
mod boot_and_write;
#[path = "smoke/common.rs"]
mod common;
#[path = "smoke/isolation.rs"]
mod isolation;
#[path = "smoke/namespace.rs"]
mod namespace;
#[path = "smoke/persistence.rs"]
mod persistence;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::{HostShare, TAG};
use e2e_tests::qemu::{self, GuestShare, QemuGuest};
use e2e_tests::share_disk::ShareDiskMount;
use e2e_tests::testhost::{self, HostKind, RunOptions, Scenario, Verdict};
use libtest_mimic::{Arguments, Failed, Trial};

/// One behaviour: its guest scenario and its host-side check.
struct Behaviour {
    name: &'static str,
    scenario: &'static str,
    check: fn(&HostShare) -> Result<String, String>,
}

/// In the order the guest scenarios run: persistence needs boot_and_write's files.
const BEHAVIOURS: [Behaviour; 4] = [
    Behaviour {
        name: "boot_and_write",
        scenario: boot_and_write::SCENARIO,
        check: boot_and_write::check,
    },
    Behaviour {
        name: "persistence",
        scenario: persistence::SCENARIO,
        check: persistence::check,
    },
    Behaviour {
        name: "namespace",
        scenario: namespace::SCENARIO,
        check: namespace::check,
    },
    Behaviour {
        name: "isolation",
        scenario: isolation::SCENARIO,
        check: isolation::check,
    },
];

/// Where the guest mounts the share.
const MOUNT_POINT: &str = "/mnt/smoke";
/// The share's base directory inside the test host (on its share disk).
const TEST_HOST_BASE: &str = "/share/smoke";

/// All guest scenarios of one path, run once, and the share they left.
struct PathRun {
    /// Which path ran, for every message.
    label: String,
    /// The share as this host sees it.
    share: HostShare,
    /// Per guest scenario: its wall time, or why it failed.
    guest: HashMap<&'static str, Result<String, String>>,
    /// Keeps the test host's share disk mounted while the checks run.
    _mount: Option<ShareDiskMount>,
    /// Removes the share of a QEMU or direct run afterwards.
    _temp: Option<TempDir>,
}

/// Runs a path's guest scenarios on first use; every trial of the path shares the result.
struct Lazy {
    run: fn() -> Result<PathRun, String>,
    result: OnceLock<Result<PathRun, String>>,
}

impl Lazy {
    fn get(&self) -> Result<&PathRun, Failed> {
        self.result
            .get_or_init(self.run)
            .as_ref()
            .map_err(|e| Failed::from(e.as_str()))
    }
}

fn main() {
    let args = Arguments::from_args();
    let vmm_skip = vmm_unavailable();
    let vu_skip = qemu::unavailable();
    for (path, skip) in [("vmm", &vmm_skip), ("vhost_user", &vu_skip)] {
        if let Some(why) = skip {
            println!("smoke: {path}::* skipped, because {why}");
        }
    }
    if vu_skip.is_none() {
        if let Err(why) = qemu::refresh_guest_image() {
            println!("smoke: warning: could not refresh the guest image: {why}");
        }
    }
    let vmm = Arc::new(Lazy {
        run: run_vmm_path,
        result: OnceLock::new(),
    });
    let vhost_user = Arc::new(Lazy {
        run: run_vhost_user_path,
        result: OnceLock::new(),
    });
    let mut trials = Vec::new();
    for (prefix, lazy, skip) in [
        ("vmm", &vmm, vmm_skip.is_some()),
        ("vhost_user", &vhost_user, vu_skip.is_some()),
    ] {
        for b in &BEHAVIOURS {
            let lazy = Arc::clone(lazy);
            let name = format!("{prefix}::{}", b.name);
            let (scenario, check) = (b.scenario, b.check);
            let trial = Trial::test(name.clone(), move || {
                let run = lazy.get()?;
                judge(&name, run, scenario, check).map_err(Failed::from)
            });
            trials.push(trial.with_ignored_flag(skip));
        }
    }
    let conclusion = libtest_mimic::run(&args, trials);
    // Unmount the share disk and remove temp shares before exiting.
    drop((vmm, vhost_user));
    conclusion.exit();
}

/// A trial's verdict: the guest scenario passed, then the host check.
fn judge(
    name: &str,
    run: &PathRun,
    scenario: &str,
    check: fn(&HostShare) -> Result<String, String>,
) -> Result<(), String> {
    let label = &run.label;
    let wall = match run.guest.get(scenario) {
        Some(Ok(wall)) => wall,
        Some(Err(why)) => return Err(format!("[{label}] guest scenario {scenario}: {why}")),
        None => return Err(format!("[{label}] guest scenario {scenario} did not run")),
    };
    let started = Instant::now();
    let summary = check(&run.share).map_err(|e| format!("[{label}] host check: {e}"))?;
    println!(
        "smoke: {name} [{label}]: guest {scenario} {wall}; host check {:.1} s: {summary}",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Why the `vmm` path cannot run here, if it cannot.
fn vmm_unavailable() -> Option<String> {
    if in_test_host() && !is_root() {
        return Some(
            "checking the test host's share disk needs root (a loop mount); run as root".into(),
        );
    }
    None
}

fn in_test_host() -> bool {
    HostKind::detect() == HostKind::NoHardwareVirt
        || std::env::var_os("FSR_FORCE_TESTHOST").is_some_and(|v| v == "1")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The four guest scenarios as VMM runs on a share whose base is `base` (as the VMM sees it).
fn vmm_scenarios(base: &str) -> Vec<Scenario> {
    let share = format!("tag={TAG},dir={base}/tree,store={base}/store");
    BEHAVIOURS
        .iter()
        .map(|b| {
            // 64 MiB and 1000 files take minutes under bochs; the limit is the test host's
            // clock, only there to end a hung run.
            let limit = if b.scenario == boot_and_write::SCENARIO {
                900
            } else {
                300
            };
            Scenario::new(b.scenario, b.scenario)
                .arg(MOUNT_POINT)
                .vmm_arg("--share")
                .vmm_arg(&share)
                .timeout_secs(limit)
        })
        .collect()
}

/// Empties `base` and makes the share's directories and the isolation test's secret.
fn prepare_share(base: &Path) -> Result<(), String> {
    if base.exists() {
        std::fs::remove_dir_all(base).map_err(|e| format!("empty {}: {e}", base.display()))?;
    }
    for dir in ["tree", "store"] {
        let path = base.join(dir);
        std::fs::create_dir_all(&path).map_err(|e| format!("create {}: {e}", path.display()))?;
    }
    isolation::plant_secret(base)
}

/// The `vmm` path: our VMM directly, or in the emulated VT-x test host.
fn run_vmm_path() -> Result<PathRun, String> {
    if in_test_host() {
        run_in_test_host()
    } else {
        run_direct()
    }
}

fn run_in_test_host() -> Result<PathRun, String> {
    let label = "our VMM inside the emulated VT-x test host".to_owned();
    let opts = RunOptions {
        timeout: Some(Duration::from_secs(3600)),
        ..RunOptions::default()
    };
    testhost::ensure_image(&opts.paths).map_err(|e| format!("[{label}] {e}"))?;
    let mount_at = opts.paths.root.join("target/smoke-share-disk");
    let base_on_disk = TEST_HOST_BASE.trim_start_matches("/share/");
    {
        let disk = ShareDiskMount::mount(&opts.paths.share_disk, &mount_at)
            .map_err(|e| format!("[{label}] {e}"))?;
        prepare_share(&disk.path().join(base_on_disk))?;
    }
    println!(
        "smoke: [{label}] one boot runs {} guest scenarios",
        BEHAVIOURS.len()
    );
    let report = testhost::run_in_test_host(&vmm_scenarios(TEST_HOST_BASE), &opts)
        .map_err(|e| format!("[{label}] {e}"))?;
    testhost::print_summary(&report);
    let guest = guest_outcomes(&report);
    let disk = ShareDiskMount::mount(&opts.paths.share_disk, &mount_at)
        .map_err(|e| format!("[{label}] {e}"))?;
    Ok(PathRun {
        label,
        share: HostShare {
            base: disk.path().join(base_on_disk),
        },
        guest,
        _mount: Some(disk),
        _temp: None,
    })
}

/// Each behaviour's guest scenario in `report`: its time, or why it failed.
fn guest_outcomes(report: &testhost::RunReport) -> HashMap<&'static str, Result<String, String>> {
    BEHAVIOURS
        .iter()
        .map(|b| {
            let result = match report.outcome(b.scenario).map(|o| &o.verdict) {
                Some(Verdict::Pass) => Ok(scenario_time(&report.stages, b.scenario)),
                Some(Verdict::Fail(why)) => Err(why.clone()),
                None => Err(report
                    .problem
                    .clone()
                    .unwrap_or_else(|| "missing from the report".into())),
            };
            (b.scenario, result)
        })
        .collect()
}

/// "N s wall (M s test-host clock)" between a scenario's start and exit stages.
fn scenario_time(stages: &[testhost::Stage], id: &str) -> String {
    let find = |what: &str| {
        stages
            .iter()
            .find(|s| s.name == format!("scenario {id}: {what}"))
    };
    match (find("VMM started"), find("VMM exited")) {
        (Some(a), Some(b)) => {
            let wall = b.wall.saturating_sub(a.wall).as_secs_f64();
            match (a.uptime, b.uptime) {
                (Some(x), Some(y)) => {
                    format!("{wall:.1} s wall ({:.1} s test-host clock)", y - x)
                }
                _ => format!("{wall:.1} s wall"),
            }
        }
        _ => "passed".to_owned(),
    }
}

fn run_direct() -> Result<PathRun, String> {
    let label = "our VMM directly (hardware virtualization)".to_owned();
    let temp = TempDir::new("direct");
    prepare_share(&temp.0)?;
    let base = temp.0.to_string_lossy().into_owned();
    let report = testhost::run_direct(&vmm_scenarios(&base), &RunOptions::default())
        .map_err(|e| format!("[{label}] {e}"))?;
    testhost::print_summary(&report);
    let guest = guest_outcomes(&report);
    Ok(PathRun {
        label,
        share: HostShare {
            base: temp.0.clone(),
        },
        guest,
        _mount: None,
        _temp: Some(temp),
    })
}

/// The `vhost_user` path: one QEMU boot per guest scenario, in order, each with a fresh
/// `hypervisor vhost-user-fs` daemon on the same share. The daemon takes its guest tree as
/// root (`--sandbox chroot`) where the host allows it (the vhost-user tests and pjdfstest run
/// it in its default namespace sandbox), so that every scenario, extended attributes
/// included, is served that way too.
fn run_vhost_user_path() -> Result<PathRun, String> {
    let sandbox = match hypervisor::sandbox::check_chroot_support() {
        Ok(()) => "chroot",
        Err(why) => {
            println!("smoke: vhost_user path in the namespace sandbox, because {why}");
            "namespace"
        }
    };
    let label = format!("vhost-user back-end under QEMU TCG, --sandbox {sandbox}");
    let temp = TempDir::new("vhost-user");
    prepare_share(&temp.0)?;
    let share = GuestShare::redirect(TAG, temp.0.join("tree"), temp.0.join("store"), TAG)
        .daemon_args(&["--sandbox", sandbox]);
    let mut guest = HashMap::new();
    let mut failed = false;
    for b in &BEHAVIOURS {
        if failed {
            guest.insert(b.scenario, Err("an earlier scenario failed".to_owned()));
            continue;
        }
        let result = run_qemu_scenario(&share, b.scenario);
        failed = result.is_err();
        guest.insert(b.scenario, result);
    }
    Ok(PathRun {
        label,
        share: HostShare {
            base: temp.0.clone(),
        },
        guest,
        _mount: None,
        _temp: Some(temp),
    })
}

/// Boots QEMU with `scenario` on `share`; Ok with the wall time if it passed.
fn run_qemu_scenario(share: &GuestShare, scenario: &str) -> Result<String, String> {
    let run = QemuGuest::new(scenario)
        .share(share.clone())
        .arg(MOUNT_POINT)
        .timeout(Duration::from_secs(900))
        .run()
        .map_err(|e| e.to_string())?;
    let passed = run.exit_code == 0
        && run.has_marker(&format!("@@fsr scenario {scenario} result=pass code=0"));
    if passed {
        Ok(format!("{:.1} s wall", run.elapsed.as_secs_f64()))
    } else {
        Err(format!(
            "failed in the guest (exit code {}); serial output (last lines):\n{}\ndaemon:\n{}",
            run.exit_code,
            run.serial_tail(25),
            run.daemon_logs()
        ))
    }
}

/// A fresh directory for a share, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> Self {
        let path = std::env::temp_dir().join(format!("fsr-smoke-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
