//! Giving a tree of files to another user, as a test or benchmark run as root does before it
//! starts a server as that user.

use std::io;
use std::path::Path;

/// Gives `path` and everything below it to `uid` and `gid` (symbolic links themselves, not
/// what they point to). The error names the path it stopped at.
pub fn give_tree(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(named)?;
    if !std::fs::symlink_metadata(path).map_err(named)?.is_dir() {
        return Ok(());
    }
    for entry in std::fs::read_dir(path).map_err(named)? {
        give_tree(&entry.map_err(named)?.path(), uid, gid)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    #[test]
    fn a_given_tree_belongs_to_the_user_links_included_and_their_targets_not() {
        let tmp = tempfile::tempdir().unwrap();
        let top = tmp.path().join("top");
        std::fs::create_dir_all(top.join("a/b")).unwrap();
        std::fs::write(top.join("a/b/f"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", top.join("a/link")).unwrap();
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };

        let given = give_tree(&top, 65534, 65534);

        if euid != 0 && euid != 65534 {
            // Only root may give files away (the user itself keeps them): the error names
            // the first path refused.
            let err = given.unwrap_err().to_string();
            assert!(err.contains(&top.display().to_string()), "{err}");
            return;
        }
        given.unwrap();
        for p in ["", "a", "a/b", "a/b/f", "a/link"] {
            let meta = std::fs::symlink_metadata(top.join(p)).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (65534, 65534), "{p}");
        }
        assert_eq!(std::fs::metadata("/etc/passwd").unwrap().uid(), 0);
    }
}
