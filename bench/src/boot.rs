//! Boot time: from starting the VMM to the guest's `/init`, for 1 and 2 vCPUs, through
//! `e2e_tests::testhost`. On a hardware-virtualization host the VMM runs directly and the
//! figure is wall time; elsewhere it runs inside the emulated VT-x test host (bochs with a
//! deterministic clock), and the figure is that host's guest-clock time: comparable run to
//! run, not a hardware figure (docs/architecture.md#measuring-performance). Bochs makes this
//! part take minutes.

use e2e_tests::testhost::{self, HostKind, RunOptions, Scenario};

use crate::{BenchError, Result};

/// Boot times, seconds.
#[derive(Debug, Clone)]
pub struct BootSummary {
    /// Where the VMM ran, and which clock the figures are on.
    pub clock: String,
    /// VMM start to guest `/init` with 1 vCPU.
    pub one_vcpu_s: f64,
    /// The same with 2 vCPUs.
    pub two_vcpus_s: f64,
    /// Wall time of the whole batch.
    pub wall_s: f64,
}

/// The batch: a guest that exits at once (1 vCPU, no share), and the two-vCPU check; spelled
/// out here rather than taken from the test presets, so the figure stays comparable when
/// those change.
fn scenarios() -> [Scenario; 2] {
    [
        Scenario::new("boot-1-vcpu", "exit").arg("0"),
        Scenario::new("boot-2-vcpus", "cpus").arg("2").vcpus(2),
    ]
}

/// Runs the batch and reads the boot times.
pub fn run() -> Result<BootSummary> {
    let opts = RunOptions {
        stream: false,
        ..RunOptions::default()
    };
    let batch = scenarios();
    let report =
        testhost::run_scenarios(&batch, &opts).map_err(|e| BenchError::Boot(error_chain(&e)))?;
    let boot = |s: &Scenario| {
        report
            .outcome(&s.id)
            .filter(|o| o.verdict == testhost::Verdict::Pass)
            .and_then(|o| o.guest_boot)
            .ok_or_else(|| {
                BenchError::Boot(format!(
                    "scenario {} gave no boot time:\n{}",
                    s.id,
                    report.summary()
                ))
            })
    };
    let clock = match report.host {
        HostKind::HardwareVirt => "wall time, directly on this hardware-virtualization host",
        HostKind::NoHardwareVirt => {
            "guest-clock time of the emulated VT-x test host (bochs, deterministic clock); \
             not a hardware figure"
        }
    };
    Ok(BootSummary {
        clock: clock.into(),
        one_vcpu_s: boot(&batch[0])?,
        two_vcpus_s: boot(&batch[1])?,
        wall_s: report.wall.as_secs_f64(),
    })
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
