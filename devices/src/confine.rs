//! Landlock: a file-serving thread may only reach files beneath the directories it serves
//! (and read `/proc/self/fd`, where the passthrough layer reopens its own descriptors), where the
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

/// The one part of `/proc` a file-serving thread reads: its process's descriptors, which it
/// reopens through their magic links (a file reopened so is judged by where it is). The rest
/// of `/proc` stays out of reach: another process's memory, environment or root, which a
/// process with the same uid might otherwise read.
const PROC_SELF_FD: &str = "/proc/self/fd";

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

/// The kernel's Landlock ABI version (`landlock_create_ruleset(NULL, 0,
/// LANDLOCK_CREATE_RULESET_VERSION)`), or why it has none (an older kernel, or Landlock not
/// enabled at boot). Asks without restricting anything.
pub fn kernel_abi() -> Result<i64, String> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute pointer and size 0 the call only reports the ABI.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if abi > 0 {
        Ok(abi)
    } else {
        Err(std::io::Error::last_os_error().to_string())
    }
}

/// Limits the calling thread, and the threads it starts later, to files beneath `dirs`
/// (every right) and to reading its process's `/proc/self/fd`. Also sets no_new_privs.
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
                [Path::new(PROC_SELF_FD)],
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
