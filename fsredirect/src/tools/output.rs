//! How tool reports reach people and scripts: plain text by default, JSON on request, exit
//! codes, and progress on long walks (to stderr, so that stdout stays parseable).

use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

/// How a tool's run ended, as an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Nothing to report: the share is consistent, or the change was made (exit 0).
    Clean,
    /// Findings: disagreements, a dry run that would change something, a file not ok (exit 1).
    Findings,
}

impl Status {
    /// The process exit code (errors exit with [`EXIT_ERROR`]).
    pub fn code(self) -> u8 {
        match self {
            Status::Clean => 0,
            Status::Findings => 1,
        }
    }
}

/// Exit code of a usage error or of a tool that could not run.
pub const EXIT_ERROR: u8 = 2;

/// A tool's report.
pub trait Outcome {
    /// Text for people, ending with a newline.
    fn human(&self) -> String;
    /// The same facts for scripts.
    fn json(&self) -> serde_json::Value;
    /// The exit status it implies.
    fn status(&self) -> Status;
}

/// Renders `outcome` as text or as pretty-printed JSON (one document, newline-terminated).
pub fn render(outcome: &dyn Outcome, json: bool) -> String {
    if json {
        let mut text = serde_json::to_string_pretty(&outcome.json()).unwrap_or_default();
        text.push('\n');
        text
    } else {
        outcome.human()
    }
}

/// A path as a JSON string (lossy for names that are not UTF-8).
pub fn json_path(path: &Path) -> serde_json::Value {
    serde_json::Value::String(path.to_string_lossy().into_owned())
}

/// A byte count for people: `6 bytes`, `4.0 KiB`, `1.5 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} byte{}", if n == 1 { "" } else { "s" });
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `n thing` or `n things`.
pub fn count(n: u64, thing: &str) -> String {
    match (n, thing.strip_suffix('y')) {
        (1, _) => format!("1 {thing}"),
        (_, Some(stem)) => format!("{n} {stem}ies"),
        (_, None) => format!("{n} {thing}s"),
    }
}

/// Progress of a walk, on stderr: a line rewritten every second when stderr is a terminal,
/// a line every [`Progress::EVERY`] entries otherwise, and a final count always.
#[derive(Debug)]
pub struct Progress {
    label: &'static str,
    entries: u64,
    start: Instant,
    last: Instant,
    tty: bool,
    shown: bool,
}

impl Progress {
    /// Entries between two progress lines when stderr is not a terminal.
    pub const EVERY: u64 = 100_000;

    /// Progress of the tool called `label`.
    pub fn new(label: &'static str) -> Self {
        let now = Instant::now();
        Progress {
            label,
            entries: 0,
            start: now,
            last: now,
            tty: std::io::stderr().is_terminal(),
            shown: false,
        }
    }

    /// One more entry walked.
    pub fn step(&mut self) {
        self.entries += 1;
        if self.tty {
            if self.entries % 256 == 0 && self.last.elapsed() >= Duration::from_secs(1) {
                self.last = Instant::now();
                self.shown = true;
                eprint!("\r{}: {} entries walked", self.label, self.entries);
            }
        } else if self.entries % Self::EVERY == 0 {
            eprintln!("{}: {} entries walked", self.label, self.entries);
        }
    }

    /// Prints the final count.
    pub fn finish(&self) {
        if self.shown {
            eprint!("\r");
        }
        eprintln!(
            "{}: {} walked in {:.1} s",
            self.label,
            count(self.entries, "entry"),
            self.start.elapsed().as_secs_f64()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_read_naturally() {
        assert_eq!(bytes(0), "0 bytes");
        assert_eq!(bytes(1), "1 byte");
        assert_eq!(bytes(1023), "1023 bytes");
        assert_eq!(bytes(4096), "4.0 KiB");
        assert_eq!(bytes(3 << 29), "1.5 GiB");
    }

    #[test]
    fn counts_take_a_plural() {
        assert_eq!(count(1, "stub"), "1 stub");
        assert_eq!(count(2, "stub"), "2 stubs");
        assert_eq!(count(0, "directory"), "0 directories");
    }

    #[test]
    fn exit_codes_are_documented_values() {
        assert_eq!(Status::Clean.code(), 0);
        assert_eq!(Status::Findings.code(), 1);
        assert_eq!(EXIT_ERROR, 2);
    }
}
