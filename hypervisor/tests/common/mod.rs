//! What the hypervisor's test binaries share: starting a program as another user.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// `nobody` and its group `nogroup`: (uid, gid).
pub const NOBODY: (u32, u32) = (65534, 65534);

/// Gives `path` and everything below it to `user` (uid, gid): symbolic links themselves, not
/// what they point to. The error names the path it stopped at.
pub fn give_tree(path: &Path, user: (u32, u32)) -> io::Result<()> {
    let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    std::os::unix::fs::lchown(path, Some(user.0), Some(user.1)).map_err(named)?;
    if !std::fs::symlink_metadata(path).map_err(named)?.is_dir() {
        return Ok(());
    }
    for entry in std::fs::read_dir(path).map_err(named)? {
        give_tree(&entry.map_err(named)?.path(), user)?;
    }
    Ok(())
}

/// A command that starts `program` as `user` (uid, gid; the caller is root), from a copy in
/// `dir`, opened to others: the program itself may live where that user cannot reach it (a
/// checkout under `/root`, whose mode is 0700).
pub fn command_as(program: &Path, dir: &Path, user: (u32, u32)) -> io::Result<Command> {
    let copy = dir.join(program.file_name().unwrap_or("program".as_ref()));
    std::fs::copy(program, &copy)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    let mut cmd = Command::new(copy);
    cmd.uid(user.0).gid(user.1);
    Ok(cmd)
}
