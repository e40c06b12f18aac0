//! One benchmark run: the device rounds, the fio jobs, the guest under QEMU, the VMM
//! process, optionally the boot time, then the report files.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::boot::{self, BootParams};
use crate::fio::{self, FioParams, HostMount, JOBS};
use crate::guest::{self, GuestParams};
use crate::machine::Machine;
use crate::report::{DeviceSummary, FioSummary, Report};
use crate::stats::median;
use crate::unprivileged;
use crate::vhost_bench::{self, VuParams};
use crate::vmm::{self, VmmParams};
use crate::workload::{self, TargetKind, WorkloadSize};
use crate::{io_err, BenchError, Result};

/// What to run and where to write.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    about = "Benchmarks of the virtio-fs request path: ratios against passthrough and the host",
    after_help = "Examples:\n  \
        sudo ./bench.sh                 # everything but the boot time, a few minutes\n  \
        sudo ./bench.sh --boot          # also the boot time (test host: several minutes more)\n  \
        ./bench.sh --no-fio --no-guest  # device level and VMM only, no root needed for the rest\n  \
        ./bench.sh --rounds 1 --seq-mib 16 --out /tmp/b.md --chart /tmp/b.svg   # a quick look\n  \
        sudo ./bench.sh --vhost-user-only --out /tmp/vu.md   # virtiofsd against our back-end\n  \
        ./bench.sh --boot-only --out /tmp/boot.md      # our VMM, the floor and QEMU microvm"
)]
pub struct Options {
    /// Device-level rounds (targets interleaved in each; medians reported).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// MiB written then read sequentially per target and round.
    #[arg(long, default_value_t = 128)]
    pub seq_mib: u64,
    /// 4 KiB random reads (and as many writes) per target and round.
    #[arg(long, default_value_t = 16384)]
    pub rand_ops: usize,
    /// Files created, looked up, stat'ed and unlinked per target and round.
    #[arg(long, default_value_t = 400)]
    pub files: usize,
    /// Full directory listings per target and round.
    #[arg(long, default_value_t = 50)]
    pub listings: usize,
    /// Skip the fio part (no root or no fio needed).
    #[arg(long)]
    pub no_fio: bool,
    /// Seconds per fio job.
    #[arg(long, default_value_t = 3)]
    pub fio_runtime: u32,
    /// fio rounds (every job on every target in each; medians reported).
    #[arg(long, default_value_t = 3)]
    pub fio_rounds: usize,
    /// File size of every fio job.
    #[arg(long, default_value = "64M")]
    pub fio_size: String,
    /// The `fsredirect` binary used for the mounts.
    #[arg(long, default_value = "target/release/fsredirect")]
    pub fsredirect: PathBuf,
    /// Skip the guest under QEMU (no qemu-system-x86 needed).
    #[arg(long)]
    pub no_guest: bool,
    /// Guest rounds (each share once per round; medians reported).
    #[arg(long, default_value_t = 3)]
    pub guest_rounds: usize,
    /// MiB the guest writes and reads per share and round.
    #[arg(long, default_value_t = 16)]
    pub guest_mib: u64,
    /// Files the guest creates, lists and removes per share and round.
    #[arg(long, default_value_t = 200)]
    pub guest_files: usize,
    /// Skip the VMM start-up and memory figures.
    #[arg(long)]
    pub no_vmm: bool,
    /// VMM start-ups measured (medians reported).
    #[arg(long, default_value_t = 5)]
    pub vmm_runs: usize,
    /// The `hypervisor` binary (the VMM, and the vhost-user back-end of the QEMU guest).
    #[arg(long, default_value = "target/release/hypervisor")]
    pub hypervisor: PathBuf,
    /// Also measure VMM start to guest /init (in the emulated VT-x test host when there is
    /// no hardware virtualization: minutes of bochs, and a static build on first use).
    #[arg(long)]
    pub boot: bool,
    /// Where temporary directories go (a normal disk, not tmpfs).
    #[arg(long, default_value = "/tmp")]
    pub work_dir: PathBuf,
    /// The report to write.
    #[arg(long, default_value = "BENCHMARKS.md")]
    pub out: PathBuf,
    /// The chart to write, and how the report links it.
    #[arg(long, default_value = "docs/benchmarks.svg")]
    pub chart: PathBuf,
    /// Run only the vhost-user comparison (virtiofsd against ours); the other parts say
    /// they were skipped.
    #[arg(long)]
    pub vhost_user_only: bool,
    /// Run only the boot-time comparison (our VMM, the floor VMM and QEMU microvm); the
    /// other parts say they were skipped.
    #[arg(long, conflicts_with = "vhost_user_only")]
    pub boot_only: bool,
    /// Boot-time runs (each boots the test host once where there is no hardware
    /// virtualization; the report gives medians and how far the runs differ).
    #[arg(long, default_value_t = 3)]
    pub boot_runs: usize,
    /// Extra guest kernel parameters for every VMM in the boot comparison, for diagnosis
    /// (e.g. "printk.time=1 initcall_debug"; the report names them).
    #[arg(long, value_name = "WORDS")]
    pub boot_append: Option<String>,
    /// Skip the vhost-user comparison.
    #[arg(long)]
    pub no_vhost_user: bool,
    /// Leave virtiofsd out of the vhost-user comparison (the report says so).
    #[arg(long)]
    pub no_virtiofsd: bool,
    /// The virtiofsd binary (bench/build-virtiofsd.sh builds it there).
    #[arg(long, default_value = "build/virtiofsd/bin/virtiofsd")]
    pub virtiofsd: PathBuf,
    /// Vhost-user rounds (every back-end once per round; medians reported).
    #[arg(long, default_value_t = 5)]
    pub vu_rounds: usize,
    /// The sandbox both virtiofsd and ours run in for the vhost-user comparison: namespace
    /// (both defaults) or chroot (for containers without namespaces)
    #[arg(long, value_name = "MODE", default_value = "namespace",
          value_parser = ["namespace", "chroot"])]
    pub vu_sandbox: String,
    /// LOOKUPs, GETATTRs and 4 KiB READs per back-end, depth and round.
    #[arg(long, default_value_t = 4000)]
    pub vu_ops: usize,
    /// Files pre-created in each share, and created then unlinked per depth.
    #[arg(long, default_value_t = 400)]
    pub vu_files: usize,
    /// MiB of the file the vhost-user READs read.
    #[arg(long, default_value_t = 64)]
    pub vu_data_mib: u64,
    /// The command line to record in the report (bench.sh passes its own).
    #[arg(long, default_value = "bench")]
    pub command: String,
    /// Skip the figures of servers run as an ordinary user (`nobody`): the device rounds
    /// run again that way, and virtiofsd and ours run that way over vhost-user.
    #[arg(long)]
    pub no_unprivileged: bool,
    /// Internal: run one device target (its index in the device tables) in DIR and print its
    /// figures, as the device rounds of a server not run as root start this program.
    #[arg(long, hide = true, value_names = ["TARGET", "DIR"], num_args = 2)]
    pub device_child: Option<Vec<String>>,
}

impl Options {
    /// The device workload these options ask for.
    fn workload_size(&self) -> WorkloadSize {
        WorkloadSize {
            seq_bytes: self.seq_mib << 20,
            rand_ops: self.rand_ops,
            files: self.files,
            listings: self.listings,
        }
    }
}

fn utc_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// The three targets' indices in the order round `round` runs them: rotated each round, so
/// that every target takes every place (first after a phase change, last, ...).
pub(crate) fn rotated<const N: usize>(round: usize) -> [usize; N] {
    std::array::from_fn(|k| (k + round) % N)
}

/// The device rounds: every target once per round, in rotating order, each run by `run`
/// (round, index of the target in [`TargetKind::ALL`]); `who` follows the round in the
/// progress lines.
fn device_rounds(
    opts: &Options,
    who: &str,
    mut run: impl FnMut(usize, usize) -> Result<workload::Figures>,
) -> Result<DeviceSummary> {
    let mut runs: [Vec<_>; 3] = Default::default();
    for round in 0..opts.rounds.max(1) {
        for t in rotated::<3>(round) {
            eprintln!(
                "bench: device round {} of {}{who}: {}",
                round + 1,
                opts.rounds,
                TargetKind::ALL[t].name()
            );
            runs[t].push(run(round, t)?);
        }
    }
    Ok(DeviceSummary::from_runs(&runs))
}

/// The device rounds, in this process.
fn device(opts: &Options, base: &Path) -> Result<DeviceSummary> {
    let size = opts.workload_size();
    device_rounds(opts, "", |round, t| {
        let dir = base.join(format!("device-{round}-{t}"));
        workload::run_target(TargetKind::ALL[t], &dir, &size)
    })
}

/// Why the servers run as an ordinary user cannot be measured, if they cannot.
fn unprivileged_unavailable(opts: &Options) -> Option<String> {
    if opts.no_unprivileged {
        return Some("skipped with --no-unprivileged".into());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some(format!(
            "needs root, to run the servers as uid {}",
            unprivileged::UID
        ));
    }
    None
}

/// The device rounds again, each target run by this program started again as an ordinary
/// user ([`unprivileged::UID`]): the file system then keeps no file handles and its metadata
/// under `user.fsredirect`, as a server not run as root does.
fn device_unprivileged(opts: &Options, base: &Path) -> Result<DeviceSummary> {
    let exe = std::env::current_exe().map_err(io_err("find this program".into()))?;
    let exe = unprivileged::Runnable::new(&exe)?;
    device_rounds(opts, ", not root", |round, t| {
        let dir = base.join(format!("device-not-root-{round}-{t}"));
        std::fs::create_dir(&dir).map_err(io_err(format!("create {}", dir.display())))?;
        unprivileged::hand_over(&dir)?;
        let mut cmd = Command::new(exe.path());
        cmd.arg("--device-child")
            .arg(t.to_string())
            .arg(dir.join("run"))
            .arg("--seq-mib")
            .arg(opts.seq_mib.to_string())
            .arg("--rand-ops")
            .arg(opts.rand_ops.to_string())
            .arg("--files")
            .arg(opts.files.to_string())
            .arg("--listings")
            .arg(opts.listings.to_string());
        let out = unprivileged::run_as_user(&mut cmd)
            .stderr(std::process::Stdio::inherit())
            .output()
            .map_err(io_err(format!(
                "start {} as uid {}",
                exe.path().display(),
                unprivileged::UID
            )))?;
        if !out.status.success() {
            return Err(BenchError::Setup(format!(
                "the {} target run as uid {} failed ({})",
                TargetKind::ALL[t].name(),
                unprivileged::UID,
                out.status
            )));
        }
        let figures = workload::Figures::decode(&String::from_utf8_lossy(&out.stdout))?;
        std::fs::remove_dir_all(&dir).map_err(io_err(format!("remove {}", dir.display())))?;
        Ok(figures)
    })
}

/// Runs the device target `args[0]` (an index into [`TargetKind::ALL`]) in directory
/// `args[1]` and prints its figures ([`workload::Figures::encode`]): what
/// the device rounds of a server not run as root start this program for.
pub fn device_child(opts: &Options, args: &[String]) -> Result<()> {
    let bad = || BenchError::Setup(format!("--device-child takes TARGET DIR, not {args:?}"));
    let [target, dir] = args else {
        return Err(bad());
    };
    let kind = target
        .parse::<usize>()
        .ok()
        .and_then(|t| TargetKind::ALL.get(t))
        .ok_or_else(bad)?;
    let figures = workload::run_target(*kind, Path::new(dir), &opts.workload_size())?;
    print!("{}", figures.encode());
    Ok(())
}

/// Why fio cannot run here, if it cannot.
fn fio_unavailable(opts: &Options) -> Option<String> {
    if opts.no_fio {
        return Some("skipped with --no-fio".into());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root to mount through /dev/fuse".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing".into());
    }
    if Command::new("fio").arg("--version").output().is_err() {
        return Some("fio is not installed (Debian package fio)".into());
    }
    if !opts.fsredirect.exists() {
        return Some(format!("{} not found", opts.fsredirect.display()));
    }
    None
}

/// fio on the host directory, a passthrough mount and a redirecting mount, job by job.
fn fio_part(opts: &Options, base: &Path) -> Result<FioSummary> {
    let params = FioParams {
        runtime_s: opts.fio_runtime,
        size: opts.fio_size.clone(),
    };
    let dirs = [
        "host",
        "pt-guest",
        "pt-mnt",
        "red-guest",
        "red-store",
        "red-mnt",
    ]
    .map(|d| base.join(format!("fio-{d}")));
    for d in &dirs {
        std::fs::create_dir_all(d).map_err(io_err(format!("create {}", d.display())))?;
    }
    let [host, pt_guest, pt_mnt, red_guest, red_store, red_mnt] = &dirs;
    let pt_spec = format!("tag=benchpt,dir={}", pt_guest.display());
    let red_spec = format!(
        "tag=benchred,dir={},store={}",
        red_guest.display(),
        red_store.display()
    );
    let pt = HostMount::start(&opts.fsredirect, &pt_spec, pt_mnt)?;
    let red = HostMount::start(&opts.fsredirect, &red_spec, red_mnt)?;
    let rounds = opts.fio_rounds.max(1);
    let mut samples = vec![[[0.0; 3]; 4]; rounds];
    for (round, sample) in samples.iter_mut().enumerate() {
        for (j, job) in JOBS.iter().enumerate() {
            for t in rotated::<3>(round) {
                let dir = [host, pt_mnt, red_mnt][t];
                eprintln!(
                    "bench: fio round {} of {rounds}: {} on {}",
                    round + 1,
                    job.name,
                    TargetKind::ALL[t].name()
                );
                sample[j][t] = fio::run_job(&params, job, dir)?;
            }
        }
    }
    let mut values = [[0.0; 3]; 4];
    for (j, row) in values.iter_mut().enumerate() {
        for (t, v) in row.iter_mut().enumerate() {
            *v = median(&samples.iter().map(|s| s[j][t]).collect::<Vec<_>>());
        }
    }
    drop(red);
    drop(pt);
    let example = params.args(&JOBS[0], Path::new("DIR")).join(" ");
    Ok(FioSummary {
        values,
        example,
        rounds,
        samples,
    })
}

/// Runs everything and writes the report and the chart.
pub fn run(opts: &Options) -> Result<Report> {
    let base = opts
        .work_dir
        .join(format!("fsr-bench-{}", std::process::id()));
    std::fs::create_dir_all(&base).map_err(io_err(format!("create {}", base.display())))?;
    let result = run_in(opts, &base);
    let _ = std::fs::remove_dir_all(&base);
    let report = result?;
    if let Some(parent) = opts.chart.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io_err(format!("create {}", parent.display())))?;
    }
    std::fs::write(&opts.chart, report.svg())
        .map_err(io_err(format!("write {}", opts.chart.display())))?;
    let link = relative_link(&opts.out, &opts.chart);
    std::fs::write(&opts.out, report.markdown(&link))
        .map_err(io_err(format!("write {}", opts.out.display())))?;
    Ok(report)
}

/// Why the QEMU guest cannot run here, if it cannot.
fn guest_unavailable(opts: &Options) -> Option<String> {
    if opts.no_guest {
        return Some("skipped with --no-guest".into());
    }
    if !opts.hypervisor.is_file() {
        return Some(format!("{} not found", opts.hypervisor.display()));
    }
    guest::unavailable()
}

/// Runs a part that may be unavailable; a failure leaves the other parts to report.
fn optional<T>(
    unavailable: Option<String>,
    part: impl FnOnce() -> Result<T>,
) -> std::result::Result<T, String> {
    if let Some(why) = unavailable {
        return Err(why);
    }
    part().map_err(|e| {
        eprintln!("bench: {e}");
        format!("failed: {e}")
    })
}

/// Why virtiofsd cannot take part, if it cannot.
fn virtiofsd_unavailable(opts: &Options) -> Option<String> {
    if opts.no_virtiofsd {
        return Some("skipped with --no-virtiofsd".into());
    }
    if opts.virtiofsd.is_file() {
        return None;
    }
    // bench/build-virtiofsd.sh leaves its reason next to where the binary would be.
    let failed = opts
        .virtiofsd
        .parent()
        .and_then(Path::parent)
        .map(|root| root.join("failed"))
        .and_then(|f| std::fs::read_to_string(f).ok())
        .map(|why| format!(" (bench/build-virtiofsd.sh: {})", why.trim()))
        .unwrap_or_default();
    Some(format!(
        "no virtiofsd binary at {}{failed}; bench/build-virtiofsd.sh builds it",
        opts.virtiofsd.display()
    ))
}

/// Why the vhost-user comparison cannot run here, if it cannot.
fn vhost_user_unavailable(opts: &Options) -> Option<String> {
    if opts.no_vhost_user {
        return Some("skipped with --no-vhost-user".into());
    }
    if opts.boot_only {
        return Some("skipped with --boot-only".into());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some(
            "needs root: both back-ends keep inodes as file handles (CAP_DAC_READ_SEARCH)".into(),
        );
    }
    if !opts.hypervisor.is_file() {
        return Some(format!("{} not found", opts.hypervisor.display()));
    }
    None
}

fn run_in(opts: &Options, base: &Path) -> Result<Report> {
    let machine = Machine::probe();
    e2e_tests::qemu::use_hypervisor_binary(&opts.hypervisor);
    // The part an --*-only option keeps; every other part is skipped.
    let only = if opts.boot_only {
        "skipped with --boot-only"
    } else {
        "skipped with --vhost-user-only"
    }
    .to_string();
    let rest_skipped = opts.vhost_user_only || opts.boot_only;
    let device = if rest_skipped {
        Err(only.clone())
    } else {
        Ok(device(opts, base)?)
    };
    let device_unprivileged = match rest_skipped {
        true => Err(only.clone()),
        false => optional(unprivileged_unavailable(opts), || {
            device_unprivileged(opts, base)
        }),
    };
    let fio_unavailable = if rest_skipped {
        Some(only.clone())
    } else {
        fio_unavailable(opts)
    };
    let fio = optional(fio_unavailable, || fio_part(opts, base));
    let guest_params = GuestParams {
        rounds: opts.guest_rounds.max(1),
        mib: opts.guest_mib.max(1),
        files: opts.guest_files.max(1),
    };
    let guest_unavailable = if rest_skipped {
        Some(only.clone())
    } else {
        guest_unavailable(opts)
    };
    let guest = optional(guest_unavailable, || {
        eprintln!(
            "bench: guest under QEMU (TCG): bench-fs {} on a passthrough and a redirecting share",
            guest_params.arg()
        );
        guest::run(&guest_params, base)
    });
    let guest_dir = e2e_tests::qemu::guest_dir();
    let vmm_params = VmmParams {
        hypervisor: opts.hypervisor.clone(),
        kernel: guest_dir.join("vmlinux"),
        initrd: guest_dir.join("initramfs.cpio.gz"),
        runs: opts.vmm_runs.max(1),
    };
    let vmm_unavailable = if rest_skipped {
        Some(only.clone())
    } else if opts.no_vmm {
        Some("skipped with --no-vmm".into())
    } else {
        vmm::unavailable(&vmm_params)
    };
    let vmm = optional(vmm_unavailable, || vmm::run(&vmm_params, base));
    let boot_unavailable = if opts.vhost_user_only {
        Some(only.clone())
    } else {
        (!opts.boot && !opts.boot_only).then(|| "not asked for (bench.sh --boot)".to_string())
    };
    let boot = optional(boot_unavailable, || {
        eprintln!("bench: boot time (the emulated VT-x test host takes minutes)");
        boot::run(&BootParams {
            runs: opts.boot_runs,
            append: opts
                .boot_append
                .as_deref()
                .unwrap_or("")
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            log_dir: opts.work_dir.join("fsr-bench-boot-logs"),
        })
    });
    let vu_params = VuParams {
        hypervisor: opts.hypervisor.clone(),
        virtiofsd: match virtiofsd_unavailable(opts) {
            Some(why) => Err(why),
            None => Ok(opts.virtiofsd.clone()),
        },
        fsredirect: opts.fsredirect.clone(),
        unprivileged_skipped: unprivileged_unavailable(opts),
        rounds: opts.vu_rounds.max(1),
        sandbox: opts.vu_sandbox.clone(),
        files: opts.vu_files.max(1),
        ops: opts.vu_ops.max(1),
        data_mib: opts.vu_data_mib.max(1),
    };
    let vhost_user = optional(vhost_user_unavailable(opts), || {
        vhost_bench::run(&vu_params, base)
    });
    Ok(Report {
        machine,
        command: opts.command.clone(),
        date: utc_now(),
        device_params: if rest_skipped {
            format!("not run ({only})")
        } else {
            format!(
                "{} MiB sequential per target and round, {} random 4 KiB reads and as many \
             writes, {} files, {} listings, {} rounds",
                opts.seq_mib, opts.rand_ops, opts.files, opts.listings, opts.rounds
            )
        },
        device,
        device_unprivileged,
        fio,
        guest,
        vmm,
        boot,
        vhost_user,
    })
}

/// The chart's path as seen from the report's directory (both usually in the work tree).
fn relative_link(out: &Path, chart: &Path) -> String {
    match out.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => chart.strip_prefix(dir).unwrap_or(chart),
        None => chart,
    }
    .display()
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_takes_every_place_over_three_rounds() {
        let orders: Vec<[usize; 3]> = (0..3).map(rotated::<3>).collect();

        for place in 0..3 {
            let mut seen: Vec<usize> = orders.iter().map(|o| o[place]).collect();
            seen.sort_unstable();
            assert_eq!(seen, [0, 1, 2]);
        }
    }
}
