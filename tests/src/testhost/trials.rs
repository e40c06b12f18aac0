//! libtest-mimic trials for a batch of scenarios: one trial per scenario, one boot for all.
//!
//! The first trial to run boots the batch (directly or in the emulated VT-x test host, see
//! [`super::run_scenarios`]); the others wait for that result and read their own verdict, so
//! `cargo test` reports each scenario separately while bochs starts only once.

use std::sync::{Arc, OnceLock};

use libtest_mimic::{Failed, Trial};

use super::{print_summary, run_scenarios, RunOptions, RunReport, Scenario, Verdict};

/// A check run on the host after the batch, given its report.
pub type HostCheck = Box<dyn Fn(&RunReport) -> Result<(), String> + Send + Sync>;

/// One trial per scenario of `batch`, all served by a single run with `opts`. Trial names are
/// `PREFIX::ID`.
pub fn trials(prefix: &str, batch: Vec<Scenario>, opts: RunOptions) -> Vec<Trial> {
    trials_with_checks(prefix, batch, opts, Vec::new())
}

/// Like [`trials`], plus one trial per named host-side check, run after the batch (for example
/// reading what the guest left on the share disk). Trial names are `PREFIX::NAME`.
pub fn trials_with_checks(
    prefix: &str,
    batch: Vec<Scenario>,
    opts: RunOptions,
    checks: Vec<(String, HostCheck)>,
) -> Vec<Trial> {
    let shared = Arc::new(Shared {
        batch,
        opts,
        report: OnceLock::new(),
    });
    let mut out: Vec<Trial> = shared
        .batch
        .iter()
        .map(|s| {
            let shared = Arc::clone(&shared);
            let id = s.id.clone();
            Trial::test(format!("{prefix}::{}", s.id), move || shared.verdict(&id))
        })
        .collect();
    for (name, check) in checks {
        let shared = Arc::clone(&shared);
        out.push(Trial::test(format!("{prefix}::{name}"), move || {
            let report = shared.report().map_err(|e| Failed::from(e.as_str()))?;
            check(report).map_err(Failed::from)
        }));
    }
    out
}

struct Shared {
    batch: Vec<Scenario>,
    opts: RunOptions,
    report: OnceLock<Result<RunReport, String>>,
}

impl Shared {
    /// The batch's report, running the batch on first use.
    fn report(&self) -> Result<&RunReport, &String> {
        self.report
            .get_or_init(|| {
                let result = run_scenarios(&self.batch, &self.opts).map_err(|e| e.to_string());
                if let Ok(report) = &result {
                    print_summary(report);
                }
                result
            })
            .as_ref()
    }

    fn verdict(&self, id: &str) -> Result<(), Failed> {
        let report = self.report().map_err(|e| Failed::from(e.as_str()))?;
        match report.outcome(id).map(|o| &o.verdict) {
            Some(Verdict::Pass) => Ok(()),
            Some(Verdict::Fail(why)) => Err(why.as_str().into()),
            None => Err(format!("scenario {id} missing from the report").into()),
        }
    }
}
