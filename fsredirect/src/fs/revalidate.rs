//! LOOKUP of a name that leads to a node the kernel already holds, answered with one host
//! call.
//!
//! The kernel sends such a LOOKUP whenever it revalidates a name whose entry timeout has
//! passed, so most LOOKUPs of a working guest are of this kind. The passthrough layer answers
//! every LOOKUP alike: it reopens the parent (by file handle, when it keeps those), opens the
//! child, stats it and reads its file handle, then finds the node it already had. Here the
//! server answers from what it holds instead:
//! - the name table says which node the name last led to, and that the kernel holds it;
//! - one `fstatat` of the name in the server's own descriptor of the parent directory says
//!   the name still leads to that node's host inode (same device and inode number).
//!
//! That comparison proves the identity only while the node's host inode cannot be freed and
//! its number reused by another file: the node must be pinned, by the passthrough layer's
//! `O_PATH` descriptor of it (without file handles, every node it holds) or by its hot
//! handle (`nodes.rs`; a file gets one at its first GETATTR, a directory at its first
//! LOOKUP). Any other node, a name unknown, a different inode, a directory the
//! server holds no descriptor of and cannot open through its known path: the passthrough
//! layer's LOOKUP, as before.
//!
//! The reference handed to the kernel is the name table's own ([`NameTable::remember_unbacked`]):
//! the passthrough layer keeps the one it has until the kernel has forgotten this one too.
//!
//! The parent's descriptor comes from a bounded cache of directory descriptors, opened
//! through the directory's known path and kept only if that leads to the node's own inode
//! (compared while the node is pinned). A descriptor follows its directory through renames;
//! it goes when the kernel forgets the directory, when its node id comes back for another
//! inode, and when the session ends.
//!
//! [`NameTable::remember_unbacked`]: crate::names::NameTable::remember_unbacked

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use fuse_backend_rs::api::filesystem::Entry;

use super::{errno, root_ctx, Kind, RedirectFs, State};
use crate::meta::Meta;

/// Most directory descriptors kept for lookups, and fewest.
const DIR_FDS_MAX: usize = 1024;
const DIR_FDS_MIN: usize = 16;

/// How many directory descriptors a server whose `RLIMIT_NOFILE` is `nofile` keeps for
/// lookups: a small share of the limit.
pub(super) fn dir_fds_for(nofile: usize) -> usize {
    (nofile / 64).clamp(DIR_FDS_MIN, DIR_FDS_MAX)
}

/// A LOOKUP answered without the passthrough layer: the entry, and for a redirected file
/// whose record does not name the path it was looked up by, that record (to be corrected).
pub(super) struct HeldLookup {
    pub entry: Entry,
    pub stale_record: Option<Meta>,
}

impl RedirectFs {
    /// Answers a LOOKUP of `parent`/`name` from the server's own state if the name leads to a
    /// node the kernel holds and that is pinned (see the module docs); `None` when the
    /// passthrough layer must look the name up. The caller holds the namespace lock, shared,
    /// so no namespace change runs meanwhile; a FORGET may, and is checked for.
    pub(super) fn lookup_held(&self, parent: u64, name: &CStr) -> Option<HeldLookup> {
        let (child, kind, stale_record, identity) = {
            let st = self.state();
            let child = st.names.holder(parent, name)?;
            if !st.names.is_known(child) || !self.pinned(&st, child) {
                return None;
            }
            let kind = st.nodes.kind(child)?;
            let stale_record = match kind {
                Kind::Redirect => match st.nodes.record(child) {
                    // Its record was dropped (renamed over, say): the full LOOKUP reads it.
                    None => return None,
                    Some(Meta::Redirect {
                        volume,
                        portion,
                        truncated: false,
                    }) if self.redirect.as_ref().is_some_and(|r| r.volume == *volume)
                        && st.names.child_path_is(parent, name, portion) =>
                    {
                        None
                    }
                    Some(record) => Some(record.clone()),
                },
                _ => None,
            };
            (child, kind, stale_record, st.nodes.identity(child)?)
        };
        let dir = self
            .dir_fds
            .get(parent, || self.open_dir_for_lookups(parent))
            .ok()?;
        let attr = stat_name(&dir, name).ok()?;
        if (attr.st_dev, attr.st_ino) != identity {
            return None;
        }
        {
            // The name still leads to the node, which is still held and pinned: its inode
            // number is still its own.
            let mut st = self.state();
            if !self.pinned(&st, child) || !st.names.remember_unbacked(child, parent, name) {
                return None;
            }
        }
        let mut entry = Entry {
            inode: child,
            generation: 0,
            attr,
            attr_flags: 0,
            attr_timeout: self.attr_timeout,
            entry_timeout: self.entry_timeout,
        };
        self.fix_attr(child, kind, &mut entry.attr);
        Some(HeldLookup {
            entry,
            stale_record,
        })
    }

    /// True if `inode`'s host inode cannot be freed while the kernel holds the node: the
    /// passthrough layer holds a descriptor of it.
    fn pinned(&self, st: &State, inode: u64) -> bool {
        !self.file_handles || st.nodes.hot(inode).is_some()
    }

    /// Opens directory `inode` as an `O_PATH` descriptor through its known path, if that
    /// leads to the node's own inode. The attributes it is compared with come through the
    /// node's hot handle, which pins the inode meanwhile.
    fn open_dir_for_lookups(&self, inode: u64) -> io::Result<File> {
        let parts = self
            .state()
            .names
            .path(inode)
            .ok_or_else(|| errno(libc::ENOENT))?;
        let (node, _) = self.host_attr(&root_ctx(), inode)?;
        if node.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(errno(libc::ENOTDIR));
        }
        self.open_as_node(&parts, libc::O_PATH | libc::O_DIRECTORY, &node)
            .map(File::from)
            .ok_or_else(|| errno(libc::ESTALE))
    }
}

/// The attributes of `name` in directory `dir`, without following a symlink.
fn stat_name(dir: &File, name: &CStr) -> io::Result<libc::stat64> {
    // SAFETY: a zeroed stat is a valid out-buffer.
    let mut st: libc::stat64 = unsafe { std::mem::zeroed() };
    // SAFETY: `dir` is an open descriptor, `name` a valid C string and `st` a valid
    // out-pointer; the call writes nothing else.
    let r = unsafe {
        libc::fstatat64(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    crate::beneath::check(r).map(|_| st)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_directory_descriptors_kept_are_a_small_bounded_share_of_the_limit() {
        assert_eq!(dir_fds_for(1024), DIR_FDS_MIN);
        assert_eq!(dir_fds_for(4096), 64);
        assert_eq!(dir_fds_for(1 << 20), DIR_FDS_MAX);
    }
}
