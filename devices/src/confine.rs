//! Landlock: a file-serving thread may only reach files beneath the directories it serves
//! (and read `/proc`, where the passthrough layer reopens its own descriptors), where the
//! kernel has Landlock (Linux 5.13 and later, when enabled at boot). Elsewhere nothing is
//! restricted, and the caller is told so.
//!
//! Landlock judges a file by where it is, not by the path that reached it: a file outside the
//! share stays out of reach through `/proc/N/root`, `..`, a symlink or a file handle.

use std::path::{Path, PathBuf};

use landlock::{
    path_beneath_rules, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
    ABI,
};

/// The Landlock ABI whose file-system rights are asked for; an older kernel enforces the
/// rights it knows (best effort), and says so in the [`Enforcement`].
const ASKED_ABI: ABI = ABI::V5;

/// Where `/proc` is read from (reopening the thread's own descriptors).
const PROC: &str = "/proc";

/// How much of the restriction the running kernel enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforcement {
    /// Every right asked for is enforced.
    Full,
    /// The kernel's Landlock is older: some rights (such as truncate or refer) are not.
    Partial,
    /// The kernel has no Landlock (or it is disabled): nothing is restricted.
    None,
}

/// Why the restriction could not be made (not its absence from the kernel: that is
/// [`Enforcement::None`]).
#[derive(Debug, thiserror::Error)]
#[error("cannot limit the file-serving thread to {dirs}: {detail}")]
pub struct ConfineError {
    /// The directories, in words.
    dirs: String,
    /// Landlock's answer.
    detail: String,
}

/// Limits the calling thread, and the threads it starts later, to files beneath `dirs`
/// (every right) and to reading `/proc`. Also sets no_new_privs.
pub fn restrict_thread_beneath(dirs: &[PathBuf]) -> Result<Enforcement, ConfineError> {
    let error = |detail: String| ConfineError {
        dirs: dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        detail,
    };
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(ASKED_ABI))
        .and_then(|ruleset| ruleset.create())
        .and_then(|ruleset| {
            ruleset.add_rules(path_beneath_rules(dirs, AccessFs::from_all(ASKED_ABI)))
        })
        .and_then(|ruleset| {
            ruleset.add_rules(path_beneath_rules(
                [Path::new(PROC)],
                AccessFs::from_read(ASKED_ABI),
            ))
        })
        .and_then(|ruleset| ruleset.restrict_self())
        .map_err(|e| error(e.to_string()))?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => Enforcement::Full,
        RulesetStatus::PartiallyEnforced => Enforcement::Partial,
        _ => Enforcement::None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restricted_thread_reaches_its_directory_and_nothing_beside_it() {
        let base = tempfile::tempdir().unwrap();
        let served = base.path().join("served");
        std::fs::create_dir(&served).unwrap();
        std::fs::write(base.path().join("beside.txt"), "secret").unwrap();
        let (served_in, beside) = (served.clone(), base.path().join("beside.txt"));

        let outcome = std::thread::spawn(move || {
            let enforcement = restrict_thread_beneath(std::slice::from_ref(&served_in)).unwrap();
            let inside = std::fs::write(served_in.join("new.txt"), "ok")
                .and_then(|()| std::fs::read(served_in.join("new.txt")));
            let outside = std::fs::read(&beside);
            let via_dotdot = std::fs::read(served_in.join("../beside.txt"));
            let passwd = std::fs::read("/etc/passwd");
            let proc_self = std::fs::read_dir("/proc/self/fd").map(|d| d.count());
            (
                enforcement,
                inside.is_ok(),
                outside.is_ok(),
                via_dotdot.is_ok(),
                passwd.is_ok(),
                proc_self.is_ok(),
            )
        })
        .join()
        .unwrap();

        let (enforcement, inside, outside, via_dotdot, passwd, proc_self) = outcome;
        let reached = format!("beside {outside}, via .. {via_dotdot}, /etc/passwd {passwd}");
        assert!(inside, "the served directory must stay usable");
        assert!(proc_self, "/proc stays readable");
        if enforcement == Enforcement::None {
            eprintln!("note: this kernel has no Landlock; only usability was checked");
            return;
        }
        assert!(!outside && !via_dotdot && !passwd, "reached: {reached}");
        // This thread was never restricted.
        assert!(std::fs::read(base.path().join("beside.txt")).is_ok());
    }
}
