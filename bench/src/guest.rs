//! A real guest: the project's guest image under QEMU's software CPU (TCG), its Linux
//! virtio-fs driver talking to our `hypervisor vhost-user-fs` back-end, runs the fixed
//! workload of the `bench-fs` scenario on a passthrough share and on a redirecting share
//! mounted side by side, round after round.
//!
//! The guest's only clock here is jiffies (no POSIX timers in its kernel), so the host
//! times each step from the arrival of its begin and end lines on the serial console,
//! which it polls every millisecond. Under TCG every guest instruction is emulated: the
//! figures say how the two shares compare for the same guest, not how fast a guest is.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use e2e_tests::qemu::{self, GuestShare, QemuGuest};

use crate::stats::{median, paired_ratio};
use crate::{BenchError, Result};

/// The steps of the `bench-fs` scenario, in order.
pub const OPS: [GuestOp; 5] = [
    GuestOp {
        name: "seq-write",
        label: "seq write 1M + fsync",
        bytes: true,
    },
    GuestOp {
        name: "seq-read",
        label: "seq read 1M (cold)",
        bytes: true,
    },
    GuestOp {
        name: "create",
        label: "create (touch)",
        bytes: false,
    },
    GuestOp {
        name: "stat",
        label: "ls -l (cold)",
        bytes: false,
    },
    GuestOp {
        name: "unlink",
        label: "unlink (rm)",
        bytes: false,
    },
];

/// One step of the guest workload.
#[derive(Debug, Clone, Copy)]
pub struct GuestOp {
    /// The name the scenario prints (`op=`).
    pub name: &'static str,
    /// Name for tables.
    pub label: &'static str,
    /// Whether its units are bytes (else files).
    pub bytes: bool,
}

/// Mount points of the two shares in the guest (tags `pt` and `red`).
const MOUNTS: [&str; 2] = ["/mnt/pt", "/mnt/red"];

/// The size of the guest workload.
#[derive(Debug, Clone, Copy)]
pub struct GuestParams {
    /// Rounds (each share once per round).
    pub rounds: usize,
    /// MiB written and read per share and round.
    pub mib: u64,
    /// Files created, listed and removed per share and round.
    pub files: usize,
}

impl GuestParams {
    /// The scenario's `fsr.arg`.
    pub fn arg(&self) -> String {
        format!("{}:{}:{}", self.rounds, self.mib, self.files)
    }
}

/// The figures of one guest run: units per second, `[op][share]` (passthrough, redirect),
/// medians over rounds.
#[derive(Debug, Clone)]
pub struct GuestSummary {
    /// Bytes/s or files/s per op (`OPS` order) and share.
    pub values: [[f64; 2]; 5],
    /// The same for each round (for paired ratios).
    pub rounds: Vec<[[f64; 2]; 5]>,
    /// The workload.
    pub params: GuestParams,
    /// Wall-clock time of the whole QEMU run, boot included.
    pub elapsed: Duration,
}

impl GuestSummary {
    /// Redirect over passthrough for op `o`, paired by round.
    pub fn ratio(&self, o: usize) -> f64 {
        paired_ratio(self.rounds.iter().map(|r| (r[o][1], r[o][0])))
    }
}

/// Why the guest part cannot run here, if it cannot.
pub fn unavailable() -> Option<String> {
    qemu::unavailable()
}

/// Boots the guest once with both shares under `base` and returns its figures.
pub fn run(params: &GuestParams, base: &Path) -> Result<GuestSummary> {
    qemu::refresh_guest_image().map_err(BenchError::Guest)?;
    let dir = |name: &str| {
        let d = base.join(name);
        std::fs::create_dir_all(&d)
            .map(|()| d.clone())
            .map_err(|source| BenchError::Io {
                what: format!("create {}", d.display()),
                source,
            })
    };
    let (pt, red, store) = (dir("guest-pt")?, dir("guest-red")?, dir("guest-store")?);
    let serial = base.join("guest-serial.log");
    let guest = QemuGuest::new("bench-fs")
        .share(GuestShare::passthrough("pt", &pt))
        .share(GuestShare::redirect("red", &red, &store, "red"))
        .arg(&params.arg())
        .serial_file(&serial)
        .timeout(Duration::from_secs(600));
    let (run, lines) = std::thread::scope(|scope| {
        let running = scope.spawn(|| guest.run());
        let lines = watch_lines(&serial, || running.is_finished());
        (running.join(), lines)
    });
    let run = run
        .map_err(|_| BenchError::Guest("the QEMU thread panicked".into()))?
        .map_err(|e| BenchError::Guest(e.to_string()))?;
    if run.exit_code != 0 {
        return Err(BenchError::Guest(format!(
            "the bench-fs scenario failed (exit code {}); last serial lines:\n{}",
            run.exit_code,
            run.serial_tail(20)
        )));
    }
    let steps = parse_steps(&lines)?;
    let rounds = summarize(&steps, params)?;
    let values = std::array::from_fn(|o| {
        std::array::from_fn(|m| median(&rounds.iter().map(|r| r[o][m]).collect::<Vec<_>>()))
    });
    Ok(GuestSummary {
        values,
        rounds,
        params: *params,
        elapsed: run.elapsed,
    })
}

/// Reads the lines appended to `path` as they arrive, each with the host time it was
/// first seen, until `done` says the writer has finished (then reads what is left).
fn watch_lines(path: &Path, done: impl Fn() -> bool) -> Vec<(Instant, String)> {
    let mut lines = Vec::new();
    let mut file = None;
    let mut pending = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let finished = done();
        if file.is_none() {
            file = std::fs::File::open(path).ok();
        }
        if let Some(f) = file.as_mut() {
            while let Ok(n @ 1..) = f.read(&mut buf) {
                let seen = Instant::now();
                pending.extend_from_slice(&buf[..n]);
                while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                    lines.push((seen, text));
                }
            }
        }
        if finished {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// One timed step: which share, round and op, how many units, how long.
#[derive(Debug, Clone, PartialEq)]
struct Step {
    mount: String,
    round: usize,
    op: String,
    units: f64,
    secs: f64,
}

/// `key=value` of a marker line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// Pairs every `@@fsr bench begin ...` line with its `end` line.
fn parse_steps(lines: &[(Instant, String)]) -> Result<Vec<Step>> {
    let mut steps = Vec::new();
    let mut open: Option<(Instant, &str)> = None;
    for (seen, line) in lines {
        let line = line.trim_start_matches(|c: char| c != '@');
        if let Some(rest) = line.strip_prefix("@@fsr bench begin ") {
            open = Some((*seen, rest));
        } else if let Some(rest) = line.strip_prefix("@@fsr bench end ") {
            let Some((began, what)) = open.take() else {
                return Err(BenchError::Guest(format!(
                    "an end line without a begin: {line}"
                )));
            };
            let strip = |s: &str| s.split(" uptime=").next().unwrap_or(s).to_owned();
            if strip(what) != strip(rest) {
                return Err(BenchError::Guest(format!(
                    "begin '{what}' ended by '{rest}'"
                )));
            }
            let parse = |key: &str| {
                field(rest, key).ok_or_else(|| BenchError::Guest(format!("no {key}= in '{line}'")))
            };
            let number = |key: &str| -> Result<f64> {
                parse(key)?
                    .parse()
                    .map_err(|_| BenchError::Guest(format!("{key}= is not a number in '{line}'")))
            };
            steps.push(Step {
                mount: parse("mount")?.to_owned(),
                round: number("round")? as usize,
                op: parse("op")?.to_owned(),
                units: number("units")?,
                secs: seen.duration_since(began).as_secs_f64(),
            });
        }
    }
    Ok(steps)
}

/// Units/s per round, op and share; every op of every share and round must be there once.
fn summarize(steps: &[Step], params: &GuestParams) -> Result<Vec<[[f64; 2]; 5]>> {
    let mut rounds = vec![[[0.0; 2]; 5]; params.rounds];
    for (r, round) in rounds.iter_mut().enumerate() {
        for (o, op) in OPS.iter().enumerate() {
            for (m, mount) in MOUNTS.iter().enumerate() {
                let found: Vec<&Step> = steps
                    .iter()
                    .filter(|s| s.round == r + 1 && s.op == op.name && s.mount == *mount)
                    .collect();
                let [step] = found.as_slice() else {
                    return Err(BenchError::Guest(format!(
                        "expected one timed {} step on {mount} in round {}, the console showed {}",
                        op.name,
                        r + 1,
                        found.len()
                    )));
                };
                round[o][m] = step.units / step.secs.max(1e-6);
            }
        }
    }
    Ok(rounds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, ms: u64, line: &str) -> (Instant, String) {
        (start + Duration::from_millis(ms), line.to_owned())
    }

    #[test]
    fn steps_are_timed_from_their_begin_and_end_lines() {
        let t = Instant::now();
        let lines = vec![
            at(t, 0, "noise"),
            at(
                t,
                100,
                "@@fsr bench begin mount=/mnt/pt round=1 op=create units=200 uptime=3.00",
            ),
            at(
                t,
                600,
                "@@fsr bench end mount=/mnt/pt round=1 op=create units=200 uptime=3.51",
            ),
        ];

        let steps = parse_steps(&lines).unwrap();

        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0].op, "create");
        assert_eq!(steps[0].units, 200.0);
        assert!((steps[0].secs - 0.5).abs() < 1e-9);
    }

    #[test]
    fn an_end_that_does_not_match_its_begin_is_an_error() {
        let t = Instant::now();
        let lines = vec![
            at(
                t,
                0,
                "@@fsr bench begin mount=/mnt/pt round=1 op=create units=2",
            ),
            at(
                t,
                1,
                "@@fsr bench end mount=/mnt/red round=1 op=create units=2",
            ),
        ];

        assert!(parse_steps(&lines).is_err());
    }

    #[test]
    fn a_missing_step_is_an_error() {
        let params = GuestParams {
            rounds: 1,
            mib: 1,
            files: 1,
        };

        assert!(summarize(&[], &params).is_err());
    }

    #[test]
    fn lines_are_read_as_the_file_grows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        std::fs::write(&path, "one\ntw").unwrap();
        let calls = std::cell::Cell::new(0);

        let lines = watch_lines(&path, || {
            calls.set(calls.get() + 1);
            if calls.get() == 2 {
                std::fs::write(&path, "one\ntwo\n").unwrap();
            }
            calls.get() >= 3
        });

        let texts: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(texts, ["one", "two"]);
    }
}
