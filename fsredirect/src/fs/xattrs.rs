//! Extended attributes of guest-tree nodes: the guest's own and the redirect metadata.
//!
//! The passthrough layer reaches a node's attributes by the path `/proc/self/fd/N` of its
//! `O_PATH` descriptor (the `f*xattr` calls refuse those). A server whose root is its guest
//! tree (`--sandbox chroot`) has no `/proc` in sight, so with
//! [`FsConfig::xattrs_by_descriptor`](super::FsConfig::xattrs_by_descriptor) this layer reaches
//! them itself: it opens the node by a path the name table knows, checks that it is the node
//! the passthrough layer holds (same device and inode number), and names that descriptor
//! through the held `/proc/self/fd` with the `*xattrat` calls of Linux 6.13. A node that no
//! known path leads to (a hard link whose known names were all renamed over or unlinked) is
//! found among the server's own descriptors instead ([`ProcSelfFd::find`]).

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::OwnedFd;

use fuse_backend_rs::api::filesystem::{FileSystem, GetxattrReply, ListxattrReply};

use super::nodes::Identity;
use super::{errno, root_ctx, RedirectFs};
use crate::beneath::{getxattr_entry, stat_name};

/// Bytes first read of an attribute reached by its entry's name: more than the longest
/// redirect record the server writes (a portion of at most 1 KiB, a volume name of at most 255
/// bytes, a few bytes more).
const SMALL_XATTR: usize = 2048;

/// Where a node was just reached: a node not yet in the name table (in the middle of its
/// LOOKUP or creation) has no known path of its own.
#[derive(Debug, Clone, Copy)]
pub(super) enum Reached<'a> {
    /// Only through the name table.
    Known,
    /// As `name` in directory `parent`, where the lookup found the inode `Identity` names
    /// (a host process may give the name to another file at any moment).
    Child(u64, &'a CStr, Identity),
    /// At the guest-tree path given as components.
    Path(&'a [CString]),
}

impl RedirectFs {
    /// Attribute `name` of `inode`: its value if `size` is not 0 (at most `size` bytes, or
    /// ERANGE), else its length.
    pub(super) fn node_getxattr(
        &self,
        inode: u64,
        at: Reached<'_>,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        let mut buf = Vec::new();
        let len = if self.xattrs_by_descriptor {
            let fd = self.node_descriptor(inode, at)?;
            buf.reserve_exact(size as usize);
            self.proc.getxattr(&fd, name, &mut buf)?
        } else {
            match self.getxattr_by_entry(at, name, size, &mut buf) {
                Some(len) => len?,
                None => return self.inner.getxattr(&root_ctx(), inode, name, size),
            }
        };
        match size {
            0 => Ok(GetxattrReply::Count(len as u32)),
            // The capacity may exceed what was asked for: the guest's limit holds.
            _ if len > size as usize => Err(errno(libc::ERANGE)),
            _ => Ok(GetxattrReply::Value(buf)),
        }
    }

    /// Reads attribute `name` of a node just reached as a child (`at`) by its name in the
    /// server's own descriptor of the directory (`revalidate.rs`): one `getxattrat`, then
    /// one `fstatat` of the name, where the passthrough layer would reopen the node from its
    /// file handle, read, and close. The namespace lock keeps the guest from moving the
    /// name, but not a host process: the value counts only if the name still leads to the
    /// node after the read. `None` where it does not, and where this does not apply: the
    /// passthrough layer holds a descriptor of each node anyway (no file handles), the
    /// kernel lacks the call, or no directory descriptor. The caller then reads through the
    /// node's file handle.
    ///
    /// `buf` gets room for `size` bytes only if a small read does not hold the value: the
    /// values read this way are redirect records, a few dozen bytes, and a buffer of the
    /// largest size would cost the allocator a `brk` to grow the heap and another to trim it.
    pub(super) fn getxattr_by_entry(
        &self,
        at: Reached<'_>,
        name: &CStr,
        size: u32,
        buf: &mut Vec<u8>,
    ) -> Option<io::Result<usize>> {
        let Reached::Child(parent, child, node) = at else {
            return None;
        };
        if !self.file_handles || !self.xattr_at {
            return None;
        }
        let dir = self.dir_for_names(parent).ok()?;
        let size = size as usize;
        buf.reserve_exact(size.min(SMALL_XATTR));
        let read = getxattr_entry(&dir, child, name, buf);
        let read = if size > SMALL_XATTR
            && read
                .as_ref()
                .is_err_and(|e| e.raw_os_error() == Some(libc::ERANGE))
        {
            buf.reserve_exact(size);
            getxattr_entry(&dir, child, name, buf)
        } else {
            read
        };
        // Whatever the read said (a value, or none: a plain file put in a stub's place
        // would make a stub look plain), it was of the node only if the name leads to it.
        match stat_name(&dir, child) {
            Ok(st) if node.matches(&st) => Some(read),
            _ => None,
        }
    }

    /// Sets attribute `name` of `inode` to `value` (`setxattr(2)`'s `flags`).
    pub(super) fn node_setxattr(
        &self,
        inode: u64,
        at: Reached<'_>,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        if !self.xattrs_by_descriptor {
            return self.inner.setxattr(&root_ctx(), inode, name, value, flags);
        }
        let fd = self.node_descriptor(inode, at)?;
        self.proc.setxattr(&fd, name, value, flags)
    }

    /// The attribute names of `inode`: the list if `size` is not 0 (at most `size` bytes, or
    /// ERANGE), else its length.
    pub(super) fn node_listxattr(&self, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        if !self.xattrs_by_descriptor {
            return self.inner.listxattr(&root_ctx(), inode, size);
        }
        let fd = self.node_descriptor(inode, Reached::Known)?;
        let mut buf = Vec::with_capacity(size as usize);
        let len = self.proc.listxattr(&fd, &mut buf)?;
        match size {
            0 => Ok(ListxattrReply::Count(len as u32)),
            _ if len > size as usize => Err(errno(libc::ERANGE)),
            _ => Ok(ListxattrReply::Names(buf)),
        }
    }

    /// Removes attribute `name` of `inode`.
    pub(super) fn node_removexattr(&self, inode: u64, name: &CStr) -> io::Result<()> {
        if !self.xattrs_by_descriptor {
            return self.inner.removexattr(&root_ctx(), inode, name);
        }
        let fd = self.node_descriptor(inode, Reached::Known)?;
        self.proc.removexattr(&fd, name)
    }

    /// A new `O_PATH` descriptor of node `inode`: opened by the path it was just reached at
    /// (`at`) or else by one the name table knows, if that path leads to the node; else
    /// found among the server's own descriptors; ESTALE if neither (the passthrough layer
    /// no longer holds the node).
    fn node_descriptor(&self, inode: u64, at: Reached<'_>) -> io::Result<OwnedFd> {
        let (node, _) = self.host_attr(&root_ctx(), inode)?;
        let open = |parts: &[CString]| self.open_as_node(parts, libc::O_PATH, &node);
        let reached = match at {
            Reached::Known => None,
            Reached::Child(parent, name, _) => {
                let parts = self.state().names.child_path(parent, name);
                parts.and_then(|parts| open(&parts))
            }
            Reached::Path(parts) => open(parts),
        };
        let known = || {
            // The path is taken, and the state lock given back, before any host call.
            let parts = self.state().names.path(inode);
            parts.and_then(|parts| open(&parts))
        };
        if let Some(fd) = reached.or_else(known) {
            return Ok(fd);
        }
        self.proc
            .find(node.st_dev, node.st_ino)?
            .ok_or_else(|| errno(libc::ESTALE))
    }
}
