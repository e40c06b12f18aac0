//! Boot time against the peers: the same kernel, initramfs and command line booted by our VMM
//! (without a share, with the default share, with 2 vCPUs), by the floor (`floor-vmm`, the least
//! a VMM must do) and by QEMU's `microvm` machine, each timed from process start to the guest's
//! `/init` and to the VMM's exit, through `e2e_tests::testhost`.
//!
//! On a hardware-virtualization host the VMMs run directly and the figures are wall time;
//! elsewhere they run inside the emulated VT-x test host (bochs, deterministic clock: the
//! boot benchmark's image variant, which carries the peers), and the figures are that host's
//! guest-clock time: comparable run to run and VMM to VMM, not hardware figures
//! (docs/architecture.md#measuring-performance). The batch runs several times (3 by
//! default); the report gives each time's median and its spread over the runs. Bochs makes
//! this part take minutes.

use std::path::PathBuf;

use e2e_tests::testhost::{self, HostKind, Paths, RunOptions, RunReport, Scenario, VmmKind};

use crate::{BenchError, Result};

/// Where the test host's share disk keeps the bench's share (emptied before each boot, so
/// that every run starts a fresh volume, as a first `cargo run` does).
const SHARE: &str = "tag=data,dir=/share/bench-boot/tree,store=/share/bench-boot/store";

/// One VMM configuration of the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contender {
    /// Our VMM without a share (`--no-default-share`).
    Ours,
    /// Our VMM with a redirecting share like the default one.
    OursShare,
    /// The same, the VMM in its sandbox (`--sandbox namespace`).
    OursShareSandboxed,
    /// Our VMM with 2 vCPUs, no share.
    OursTwoVcpus,
    /// Our VMM without a share and without its seccomp filters (`--seccomp none`).
    OursUnfiltered,
    /// The floor VMM.
    Floor,
    /// QEMU microvm.
    Qemu,
}

impl Contender {
    /// Every contender, in report order.
    pub const ALL: [Contender; 7] = [
        Contender::Ours,
        Contender::OursShare,
        Contender::OursShareSandboxed,
        Contender::OursTwoVcpus,
        Contender::OursUnfiltered,
        Contender::Floor,
        Contender::Qemu,
    ];

    /// The report's name for it.
    pub fn label(self) -> &'static str {
        match self {
            Contender::Ours => "ours, --no-default-share",
            Contender::OursShare => "ours, default share (redirecting, fresh volume)",
            Contender::OursShareSandboxed => "ours, default share, --sandbox namespace",
            Contender::OursTwoVcpus => "ours, 2 vCPUs, no share",
            Contender::OursUnfiltered => "ours, --no-default-share --seccomp none",
            Contender::Floor => "floor (bench/floor-vmm)",
            Contender::Qemu => "QEMU microvm (-accel kvm)",
        }
    }

    /// The scenario that boots it: guest scenario `exit 0`, 128 MiB, the same command line
    /// (with `append`'s words at its end).
    fn scenario(self, run: usize, append: &[String]) -> Scenario {
        append
            .iter()
            .fold(self.bare_scenario(run), |s, word| s.cmdline(word))
    }

    fn bare_scenario(self, run: usize) -> Scenario {
        let id = |name: &str| format!("{name}-run{run}");
        let exit = |name: &str, kind: VmmKind| {
            Scenario::new(&id(name), "exit")
                .arg("0")
                .vmm(kind)
                .expect_code(kind.exit_status(0))
        };
        match self {
            Contender::Ours => exit("ours", VmmKind::Ours),
            Contender::OursShare => exit("ours-share", VmmKind::Ours)
                .vmm_arg("--share")
                .vmm_arg(SHARE)
                .fresh_dir("/share/bench-boot/tree")
                .fresh_dir("/share/bench-boot/store"),
            Contender::OursShareSandboxed => exit("ours-share-sandboxed", VmmKind::Ours)
                .vmm_arg("--sandbox")
                .vmm_arg("namespace")
                .vmm_arg("--share")
                .vmm_arg(SHARE)
                .fresh_dir("/share/bench-boot/tree")
                .fresh_dir("/share/bench-boot/store"),
            Contender::OursTwoVcpus => exit("ours-2-vcpus", VmmKind::Ours).vcpus(2),
            Contender::OursUnfiltered => exit("ours-unfiltered", VmmKind::Ours)
                .vmm_arg("--seccomp")
                .vmm_arg("none"),
            Contender::Floor => exit("floor", VmmKind::Floor),
            Contender::Qemu => exit("qemu-microvm", VmmKind::QemuMicrovm),
        }
    }
}

/// One contender's figures from one run, seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct BootFigure {
    /// VMM start to the guest's `/init`.
    pub init_s: f64,
    /// VMM start to its exit after the guest asked for it.
    pub exit_s: f64,
}

/// One contender over the runs.
#[derive(Debug, Clone)]
pub struct ContenderResult {
    /// Which one.
    pub contender: Contender,
    /// Its figures in each run, or why that run gave none.
    pub runs: Vec<std::result::Result<BootFigure, String>>,
}

impl ContenderResult {
    /// The report's figures: the median over the runs of each time (the upper median with an
    /// even count), if every run gave figures.
    pub fn median(&self) -> Option<BootFigure> {
        let figures: Vec<&BootFigure> = self.runs.iter().filter_map(|r| r.as_ref().ok()).collect();
        if figures.len() != self.runs.len() || figures.is_empty() {
            return None;
        }
        let median = |f: fn(&BootFigure) -> f64| {
            let mut values: Vec<f64> = figures.iter().map(|b| f(b)).collect();
            values.sort_by(f64::total_cmp);
            values[values.len() / 2]
        };
        Some(BootFigure {
            init_s: median(|b| b.init_s),
            exit_s: median(|b| b.exit_s),
        })
    }

    /// Why a run gave no figures, if one did not.
    pub fn problem(&self) -> Option<&str> {
        self.runs
            .iter()
            .find_map(|r| r.as_ref().err())
            .map(String::as_str)
    }

    /// Largest difference between the runs, seconds (`None` unless every run gave figures).
    pub fn spread_s(&self) -> Option<f64> {
        let figures: Vec<&BootFigure> = self.runs.iter().filter_map(|r| r.as_ref().ok()).collect();
        if figures.len() != self.runs.len() || figures.is_empty() {
            return None;
        }
        let range = |f: fn(&BootFigure) -> f64| {
            let values = figures.iter().map(|b| f(b));
            let max = values.clone().fold(f64::MIN, f64::max);
            let min = values.fold(f64::MAX, f64::min);
            max - min
        };
        Some(range(|b| b.init_s).max(range(|b| b.exit_s)))
    }
}

/// How the boot batch runs.
#[derive(Debug, Clone)]
pub struct BootParams {
    /// Times the batch runs (each a test-host boot where there is no hardware virtualization).
    pub runs: usize,
    /// Extra words for every VMM's guest command line (diagnosis: `printk.time=1`,
    /// `initcall_debug`); reported with the figures.
    pub append: Vec<String>,
    /// Where each scenario's console output is written, one file per VMM and run.
    pub log_dir: PathBuf,
}

/// Boot times of every contender.
#[derive(Debug, Clone)]
pub struct BootSummary {
    /// Where the VMMs ran, and which clock the figures are on.
    pub clock: String,
    /// Whether the clock is the test host's deterministic one (runs must then agree).
    pub deterministic: bool,
    /// One entry per contender, in [`Contender::ALL`] order.
    pub results: Vec<ContenderResult>,
    /// Wall time of all runs.
    pub wall_s: f64,
    /// The words appended to the guest command line, if any.
    pub append: Vec<String>,
    /// Where the console logs are.
    pub log_dir: PathBuf,
}

impl BootSummary {
    /// One contender's median figures.
    pub fn figure(&self, c: Contender) -> Option<BootFigure> {
        self.results
            .iter()
            .find(|r| r.contender == c)
            .and_then(ContenderResult::median)
    }
}

/// Times the same boot under each contender, `params.runs` times.
pub fn run(params: &BootParams) -> Result<BootSummary> {
    let opts = RunOptions {
        stream: false,
        paths: Paths::default_workspace().with_bench_image(),
        ..RunOptions::default()
    };
    let runs = params.runs.max(1);
    std::fs::create_dir_all(&params.log_dir)
        .map_err(|e| BenchError::Boot(format!("{}: {e}", params.log_dir.display())))?;
    let mut reports = Vec::new();
    for run in 1..=runs {
        eprintln!("bench: boot time, run {run} of {runs}");
        let batch: Vec<Scenario> = Contender::ALL
            .iter()
            .map(|c| c.scenario(run, &params.append))
            .collect();
        let report = testhost::run_scenarios(&batch, &opts)
            .map_err(|e| BenchError::Boot(error_chain(&e)))?;
        for outcome in &report.scenarios {
            let path = params.log_dir.join(format!("{}.log", outcome.id));
            std::fs::write(&path, outcome.lines.join("\n") + "\n")
                .map_err(|e| BenchError::Boot(format!("{}: {e}", path.display())))?;
        }
        reports.push((batch, report));
    }
    let results = Contender::ALL
        .iter()
        .enumerate()
        .map(|(i, &contender)| ContenderResult {
            contender,
            runs: reports
                .iter()
                .map(|(batch, report)| figure(report, &batch[i]))
                .collect(),
        })
        .collect();
    let host = reports[0].1.host;
    let (clock, deterministic) = match host {
        HostKind::HardwareVirt => (
            "wall time, directly on this hardware-virtualization host",
            false,
        ),
        HostKind::NoHardwareVirt => (
            "guest-clock time of the emulated VT-x test host (bochs, deterministic clock); \
             not a hardware figure",
            true,
        ),
    };
    Ok(BootSummary {
        clock: clock.into(),
        deterministic,
        results,
        wall_s: reports.iter().map(|(_, r)| r.wall.as_secs_f64()).sum(),
        append: params.append.clone(),
        log_dir: params.log_dir.clone(),
    })
}

/// One scenario's figures, or why there are none (with the end of its console output).
fn figure(report: &RunReport, s: &Scenario) -> std::result::Result<BootFigure, String> {
    let Some(outcome) = report.outcome(&s.id) else {
        return Err(format!("{} did not run: {}", s.id, report.summary()));
    };
    match (&outcome.verdict, outcome.guest_boot, outcome.vmm_exit) {
        (testhost::Verdict::Pass, Some(init_s), Some(exit_s)) => Ok(BootFigure { init_s, exit_s }),
        (verdict, ..) => {
            let tail = outcome.lines.len().saturating_sub(6);
            Err(format!(
                "{}: {verdict}; last console lines: {}",
                s.id,
                outcome.lines[tail..].join(" | ")
            ))
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contender_boots_the_same_guest_the_same_way() {
        let ours = Contender::Ours.scenario(1, &[]);
        for c in Contender::ALL {
            let s = c.scenario(1, &[]);
            assert_eq!(s.guest_cmdline(), ours.guest_cmdline(), "{c:?}");
            assert_eq!(s.mem, ours.mem, "{c:?}");
            assert!(s.validate().is_ok(), "{c:?}");
        }
        assert_eq!(Contender::Qemu.scenario(1, &[]).expect_code, 1);
        assert_ne!(
            Contender::Ours.scenario(1, &[]).id,
            Contender::Ours.scenario(2, &[]).id
        );
    }

    #[test]
    fn the_spread_needs_every_run() {
        let fig = |init_s, exit_s| Ok(BootFigure { init_s, exit_s });
        let agreeing = ContenderResult {
            contender: Contender::Floor,
            runs: vec![fig(2.5, 2.75), fig(2.5, 2.5)],
        };
        let missing = ContenderResult {
            contender: Contender::Qemu,
            runs: vec![fig(2.5, 3.0), Err("no kvm".into())],
        };

        assert_eq!(agreeing.spread_s(), Some(0.25));
        assert_eq!(missing.spread_s(), None);
        assert_eq!(missing.median(), None);
        assert_eq!(missing.problem(), Some("no kvm"));
        let three = ContenderResult {
            contender: Contender::Ours,
            runs: vec![fig(1.7, 1.9), fig(1.6, 2.0), fig(1.8, 1.8)],
        };
        let median = three.median().unwrap();
        assert_eq!((median.init_s, median.exit_s), (1.7, 1.9));
    }
}
