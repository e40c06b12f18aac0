//! Names in use, checked by the server itself with one host call: a LOOKUP of a name that
//! leads to a node the kernel already holds, and what CREATE, UNLINK and RENAME need to know
//! of a name (is it free, and if not, is it the node the kernel holds).
//!
//! The kernel sends such a LOOKUP whenever it revalidates a name whose entry timeout has
//! passed, so most LOOKUPs of a working guest are of this kind. The passthrough layer answers
//! every LOOKUP alike: it reopens the parent (by file handle, when it keeps those), opens the
//! child, stats it and reads its file handle, then finds the node it already had. Here the
//! server answers from what it holds instead ([`RedirectFs::find_named`]):
//! - the name table says which node the name last led to, and that the kernel holds it;
//! - one `fstatat` of the name in the server's own descriptor of the parent directory says
//!   the name still leads to that node's host inode (same device and inode number), or that
//!   the directory has no such entry.
//!
//! That comparison proves the identity only while the node's host inode cannot be freed and its
//! number reused by another file: the node must be pinned, by the passthrough layer's `O_PATH`
//! descriptor of it (without file handles, every node it holds) or by its hot handle
//! (`nodes.rs`; a regular file or a directory gets one at its CREATE or first LOOKUP, any node
//! at its first GETATTR, a directory also when its descriptor here is opened). Any other node,
//! a name unknown, a different inode, a directory the server holds no descriptor of and cannot
//! open through its known path: the passthrough layer's LOOKUP, as before. An entry the
//! directory no longer has is ENOENT, as the passthrough layer would find.
//!
//! The reference handed to the kernel is the name table's own ([`NameTable::remember_unbacked`]):
//! the passthrough layer keeps the one it has until the kernel has forgotten this one too.
//! A request that only inspects a name (UNLINK, RENAME) takes such a reference for its
//! duration and gives it back as a FORGET would, so the node cannot go meanwhile.
//!
//! The parent's descriptor comes from a bounded cache of directory descriptors, opened
//! through the directory's known path and kept only if that leads to the node's own inode
//! (compared while the node is pinned). A descriptor follows its directory through renames;
//! it goes when the kernel forgets the directory, when its node id comes back for another
//! inode, and when the session ends. The server also removes names through it (UNLINK,
//! RMDIR), as the passthrough layer would through its own.
//!
//! [`NameTable::remember_unbacked`]: crate::names::NameTable::remember_unbacked

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::sync::Arc;

use fuse_backend_rs::api::filesystem::Entry;

use super::{errno, root_ctx, Kind, RedirectFs, State};
use crate::beneath::stat_name;
use crate::meta::Meta;
use crate::names::ROOT_INODE;

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

/// What one `fstatat` of a name in the server's descriptor of its directory said.
pub(super) enum Named<T> {
    /// The directory has no entry of that name.
    Absent,
    /// The name leads to a node the kernel holds (see [`HeldNode`]).
    Held(HeldNode<T>),
    /// Anything else: the passthrough layer must look the name up.
    Unknown,
}

/// A node the kernel holds that a name in use still leads to, checked with one host call:
/// the name table counts one more reference to it, without the passthrough layer's knowing
/// ([`NameTable::remember_unbacked`]), which whoever asked gives back with a FORGET.
pub(super) struct HeldNode<T> {
    pub inode: u64,
    pub kind: Kind,
    /// Its attributes as the host gave them, not yet fixed for the guest.
    pub attr: libc::stat64,
    /// What the caller's `accept` made of the node.
    pub accepted: T,
}

/// Whether [`RedirectFs::find_named`] asks the host about a name not known to lead to a
/// held node: only to learn that it is absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Probe {
    /// Only names known to lead to a held node (a LOOKUP: a first one goes to the passthrough
    /// layer at once).
    Held,
    /// Any name (CREATE, UNLINK, RENAME: a name expected absent, or one in use).
    Any,
}

impl RedirectFs {
    /// Answers a LOOKUP of `parent`/`name` from the server's own state if the name leads to a
    /// node the kernel holds and that is pinned (see the module docs), ENOENT if such a
    /// name is gone; `None` when the passthrough layer must look the name up. The caller
    /// holds the namespace lock, shared, so no namespace change runs meanwhile; a FORGET
    /// may, and is checked for.
    pub(super) fn lookup_held(&self, parent: u64, name: &CStr) -> io::Result<Option<HeldLookup>> {
        let found = self.find_named(parent, name, Probe::Held, |st, child, kind| match kind {
            Kind::Redirect => match st.nodes.record(child) {
                // Its record was dropped (renamed over, say): the full LOOKUP reads it.
                None => None,
                Some(Meta::Redirect {
                    volume,
                    portion,
                    truncated: false,
                }) if self.redirect.as_ref().is_some_and(|r| r.volume == *volume)
                    && st.names.child_path_is(parent, name, portion) =>
                {
                    Some(None)
                }
                Some(record) => Some(Some(record.clone())),
            },
            _ => Some(None),
        });
        let held = match found {
            Named::Held(held) => held,
            // The name the kernel knows is gone: what the passthrough layer would answer.
            Named::Absent => return Err(errno(libc::ENOENT)),
            Named::Unknown => return Ok(None),
        };
        let mut entry = self.held_entry(&held);
        self.fix_attr(held.inode, held.kind, &mut entry.attr);
        Ok(Some(HeldLookup {
            entry,
            stale_record: held.accepted,
        }))
    }

    /// The entry of `held`, with the host's attributes.
    pub(super) fn held_entry<T>(&self, held: &HeldNode<T>) -> Entry {
        Entry {
            inode: held.inode,
            generation: 0,
            attr: held.attr,
            attr_flags: 0,
            attr_timeout: self.attr_timeout,
            entry_timeout: self.entry_timeout,
        }
    }

    /// What `parent`/`name` is, as far as one `fstatat` in the server's descriptor of
    /// `parent` can tell:
    /// - [`Named::Held`] if the name leads to a node the kernel holds, that is pinned and that
    ///   `accept` (called under the state lock with the node and its kind) takes, and the
    ///   `fstatat` finds the node's own inode; its reference is then counted;
    /// - [`Named::Absent`] if the directory has no such entry (asked only of a name known to
    ///   lead to a held node, unless `probe` is [`Probe::Any`]);
    /// - [`Named::Unknown`] otherwise, with nothing counted.
    ///
    /// The caller holds the namespace lock; a FORGET may run meanwhile, and is checked for.
    pub(super) fn find_named<T>(
        &self,
        parent: u64,
        name: &CStr,
        probe: Probe,
        accept: impl FnOnce(&State, u64, Kind) -> Option<T>,
    ) -> Named<T> {
        let candidate = {
            let st = self.state();
            st.names.holder(parent, name).and_then(|child| {
                if !st.names.is_known(child) || !self.pinned(&st, child) {
                    return None;
                }
                let kind = st.nodes.kind(child)?;
                let identity = st.nodes.identity(child)?;
                let accepted = accept(&st, child, kind)?;
                Some((child, kind, accepted, identity))
            })
        };
        if candidate.is_none() && probe == Probe::Held {
            return Named::Unknown;
        }
        let Ok(dir) = self.dir_for_names(parent) else {
            return Named::Unknown;
        };
        let attr = match stat_name(&dir, name) {
            Ok(attr) => attr,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Named::Absent,
            Err(_) => return Named::Unknown,
        };
        let Some((child, kind, accepted, identity)) = candidate else {
            return Named::Unknown;
        };
        if !identity.matches(&attr) {
            return Named::Unknown;
        }
        {
            // The name still leads to the node, which is still held and pinned: its inode
            // number is still its own.
            let mut st = self.state();
            if !self.pinned(&st, child) || !st.names.remember_unbacked(child, parent, name) {
                return Named::Unknown;
            }
        }
        Named::Held(HeldNode {
            inode: child,
            kind,
            attr,
            accepted,
        })
    }

    /// The server's own `O_PATH` descriptor of directory `inode`, from the bounded cache
    /// (opened through its known path on a miss, see [`RedirectFs::open_dir_for_names`]).
    pub(super) fn dir_for_names(&self, inode: u64) -> io::Result<Arc<File>> {
        let mut opened = false;
        let dir = self.dir_fds.get(inode, || {
            opened = true;
            self.open_dir_for_names(inode)
        })?;
        // A FORGET that retired the node while its descriptor was being opened found nothing
        // to drop (`drop_cached`): the descriptor is not kept for a node id that may come
        // back for another directory.
        if opened && inode != ROOT_INODE && !self.state().names.holds(inode) {
            self.dir_fds.remove(inode);
            return Err(errno(libc::ESTALE));
        }
        Ok(dir)
    }

    /// True if `inode`'s host inode cannot be freed while the kernel holds the node: the
    /// passthrough layer holds a descriptor of it.
    fn pinned(&self, st: &State, inode: u64) -> bool {
        !self.file_handles || st.nodes.hot(inode).is_some()
    }

    /// Opens directory `inode` as an `O_PATH` descriptor through its known path, if that
    /// leads to the node's own inode. The node is pinned first (given a hot handle, if it has
    /// none), so its inode number cannot become another's meanwhile: the attributes it is
    /// compared with come through that handle (or, without file handles, the passthrough
    /// layer's descriptor).
    fn open_dir_for_names(&self, inode: u64) -> io::Result<File> {
        if self.file_handles {
            // A node gets a hot handle only once its kind is known: the root's is not
            // until something asks.
            self.kind(inode)?;
            self.pin(inode);
        }
        let parts = {
            let st = self.state();
            if !self.pinned(&st, inode) {
                return Err(errno(libc::ESTALE));
            }
            st.names.path(inode).ok_or_else(|| errno(libc::ENOENT))?
        };
        let (node, _) = self.host_attr(&root_ctx(), inode)?;
        if node.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(errno(libc::ENOTDIR));
        }
        self.open_as_node(&parts, libc::O_PATH | libc::O_DIRECTORY, &node)
            .map(File::from)
            .ok_or_else(|| errno(libc::ESTALE))
    }
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
