//! Servers run as an ordinary user: what the bench (run as root) needs to start a back-end as
//! `nobody` on a share that user owns, redirected files included.
//!
//! A server that is not root cannot keep inodes as file handles (that takes
//! CAP_DAC_READ_SEARCH), so it holds a descriptor per inode instead, and it keeps the redirect
//! metadata under `user.fsredirect` rather than `trusted.fsredirect`. The share it serves must
//! therefore be written by that user: the bench writes plain files as root, hands the tree
//! over, and has `fsredirect dehydrate`, run as that user, move the data of each file into the
//! store, as a user of a share that already holds files would.

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{io_err, BenchError, Result};

/// The user the unprivileged servers run as: `nobody`.
pub const UID: u32 = 65534;
/// Its group: `nogroup`.
pub const GID: u32 = 65534;

/// Makes `cmd` run as [`UID`] and [`GID`], without supplementary groups (the standard library
/// drops them when a root process switches user).
pub fn run_as_user(cmd: &mut Command) -> &mut Command {
    cmd.uid(UID).gid(GID)
}

/// A program the user can start: the program itself where the user reaches it, else a copy
/// in a directory of its own (a checkout under `/root`, whose mode is 0700, is out of its
/// reach), which lives as long as this value.
pub struct Runnable {
    path: PathBuf,
    _copy: Option<tempfile::TempDir>,
}

impl Runnable {
    /// `program`, or a copy of it the user can reach.
    pub fn new(program: &Path) -> Result<Self> {
        if reachable_by_others(program) {
            return Ok(Runnable {
                path: program.to_path_buf(),
                _copy: None,
            });
        }
        let dir = tempfile::Builder::new()
            .prefix("fsr-bench-bin-")
            .tempdir()
            .map_err(io_err("make a directory for a program copy".into()))?;
        let copy = dir
            .path()
            .join(program.file_name().unwrap_or("program".as_ref()));
        std::fs::copy(program, &copy).map_err(io_err(format!(
            "copy {} to {}",
            program.display(),
            copy.display()
        )))?;
        for path in [dir.path(), copy.as_path()] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
                .map_err(io_err(format!("open up {}", path.display())))?;
        }
        Ok(Runnable {
            path: copy,
            _copy: Some(dir),
        })
    }

    /// Where to start it from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Whether a user with no claim to `program` may start it: every directory above it
/// searchable, and the file executable, by others.
fn reachable_by_others(program: &Path) -> bool {
    let Ok(program) = program.canonicalize() else {
        return false;
    };
    // The "others" execute bit: search for a directory, start for a program.
    let others_may =
        |path: &Path| std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o001 != 0);
    program.ancestors().all(others_may)
}

/// Gives `path` and everything below it to [`UID`] and [`GID`] (symbolic links themselves,
/// not what they point to).
pub fn hand_over(path: &Path) -> Result<()> {
    e2e_tests::ownership::give_tree(path, UID, GID)
        .map_err(io_err(format!("give {} to uid {UID}", path.display())))
}

/// Turns each file of `names` in the guest tree `share` into a stub whose data is in
/// `store`, with `fsredirect dehydrate` run as [`UID`]: the share tag is `tag`.
pub fn dehydrate(
    fsredirect: &Path,
    tag: &str,
    share: &Path,
    store: &Path,
    names: impl IntoIterator<Item = String>,
) -> Result<()> {
    let spec = format!(
        "tag={tag},dir={},store={}",
        share.display(),
        store.display()
    );
    let fsredirect = Runnable::new(fsredirect)?;
    for name in names {
        let mut cmd = Command::new(fsredirect.path());
        cmd.args(["dehydrate", "--share", &spec, &name])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let out = run_as_user(&mut cmd)
            .output()
            .map_err(|source| BenchError::Io {
                what: format!("run {} dehydrate", fsredirect.path().display()),
                source,
            })?;
        if !out.status.success() {
            return Err(BenchError::Setup(format!(
                "fsredirect dehydrate --share {spec} {name}, as uid {UID}: {} ({})",
                String::from_utf8_lossy(&out.stderr).trim(),
                out.status
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_out_of_others_reach_is_copied_where_they_reach_it() {
        let tmp = tempfile::tempdir().unwrap();
        let closed = tmp.path().join("closed");
        std::fs::create_dir(&closed).unwrap();
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
        let program = closed.join("prog");
        std::fs::write(&program, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();

        let runnable = Runnable::new(&program).unwrap();

        assert_ne!(runnable.path(), program);
        assert!(
            reachable_by_others(runnable.path()),
            "{:?}",
            runnable.path()
        );
        assert_eq!(std::fs::read(runnable.path()).unwrap(), b"#!/bin/sh\n");
        let copy = runnable.path().to_path_buf();
        drop(runnable);
        assert!(!copy.exists(), "the copy goes with its Runnable");

        // Opened up, it is started where it is.
        for dir in [tmp.path(), closed.as_path()] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        if reachable_by_others(tmp.path().parent().unwrap()) {
            assert_eq!(Runnable::new(&program).unwrap().path(), program);
        }
    }
}
