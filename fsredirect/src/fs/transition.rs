//! Placement transitions: a regular file moves from inline (an ordinary guest-tree file) to
//! redirected (stub + store object) when the share's policy starts to want it in the store,
//! and back when it stops (a truncate below `min-size`, a rename out of the included paths).
//!
//! When: after a write, fallocate or truncate that changes the file's size, after an open
//! with O_TRUNC, and after a rename of the file itself. Files with several hard links, files
//! unlinked while open and inert special files never move; files below a renamed directory
//! move when they next change. A move runs under the namespace lock held exclusively, so no
//! I/O, open or release of any file runs meanwhile, and the handles the guest holds on the
//! file are switched over to the new placement: same bytes, same size, same inode.
//!
//! Crash safety: each move is recorded first in the intent log ([`Intent::Place`]); the data
//! moves by [`crate::relocate`], the one move routine the host tools use too, whose order
//! makes a power loss at any step harmless. What is added here is the switching of the
//! guest's open handles.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::sync::Arc;

use fuse_backend_rs::api::filesystem::FileSystem;

use super::xattrs::Reached;
use super::{errno, root_ctx, Kind, RedirectFs, Redirecting, CAPABILITY_XATTR, PRIVILEGE_BITS};
use crate::beneath::open_parts;
use crate::intent::Intent;
use crate::meta::Meta;
use crate::names::join;
use crate::relocate;
use crate::store::Store;

impl RedirectFs {
    /// A cheap test, without the namespace lock, of whether `inode` (`redirected` or
    /// inline, now `size` bytes) may have to move; [`RedirectFs::settle`] decides for sure.
    pub(super) fn placement_may_change(&self, inode: u64, redirected: bool, size: u64) -> bool {
        let Some(Redirecting { policy, .. }) = &self.redirect else {
            return false;
        };
        if redirected && policy.is_all() {
            return false;
        }
        if !redirected && size < policy.min_size() {
            return false;
        }
        // Only a truncate makes a redirected file smaller, and it passes the exact size.
        if redirected && size >= policy.min_size() && policy.has_no_path_rules() {
            return false;
        }
        let Some(parts) = self.state().names.path(inode) else {
            return false;
        };
        policy.redirects(&join(&parts), size) != redirected
    }

    /// Moves `inode` to the placement the policy asks for, if it is elsewhere. Takes the
    /// namespace lock exclusively: call it holding no lock.
    pub(super) fn settle(&self, inode: u64) {
        let _ns = self.ns_write();
        self.settle_locked(inode);
    }

    /// [`RedirectFs::settle`] for a caller holding the namespace lock exclusively. A failed
    /// move is logged and leaves the file where it was: the operation that called for it has
    /// already succeeded, and the guest must not see it fail.
    pub(super) fn settle_locked(&self, inode: u64) {
        if let Err(e) = self.try_settle(inode) {
            log::warn!("inode {inode}: placement change failed, file left where it was: {e}");
        }
    }

    fn try_settle(&self, inode: u64) -> io::Result<()> {
        let Some(r) = &self.redirect else {
            return Ok(());
        };
        let (attr, _) = self.inner.getattr(&root_ctx(), inode, None)?;
        if attr.st_mode & libc::S_IFMT != libc::S_IFREG || attr.st_nlink != 1 {
            return Ok(());
        }
        let parts = {
            let st = self.state();
            if st
                .handles
                .open_inode(inode)
                .is_some_and(|o| o.orphan.is_some() || o.pin.is_some())
            {
                return Ok(());
            }
            match st.names.path(inode) {
                Some(parts) => parts,
                None => return Ok(()),
            }
        };
        let path = join(&parts);
        match self.kind(inode)? {
            Kind::Redirect => {
                let size = self.with_object(inode, |f| f.metadata().map(|m| m.len()))?;
                if !r.policy.redirects(&path, size) && !self.is_privileged(inode, &attr)? {
                    self.make_inline(&r.store, inode, &parts, attr.st_ino)?;
                }
            }
            Kind::Plain => {
                // Metadata of another volume, or unreadable: not ours to move.
                if self.stub_meta(inode, Reached::Known)?.is_none()
                    && r.policy.redirects(&path, attr.st_size as u64)
                {
                    self.make_redirected(r, inode, &parts, attr.st_ino)?;
                }
            }
            Kind::Special { .. } | Kind::Foreign => {}
        }
        Ok(())
    }

    /// True if the guest gave regular file `inode` (attributes `attr`) privilege bits or
    /// file capabilities: such a file keeps its data in the store whatever the policy.
    fn is_privileged(&self, inode: u64, attr: &libc::stat64) -> io::Result<bool> {
        if attr.st_mode & PRIVILEGE_BITS != 0 {
            return Ok(true);
        }
        match self.node_getxattr(inode, Reached::Known, CAPABILITY_XATTR, 0) {
            Ok(_) => Ok(true),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENODATA | libc::EOPNOTSUPP)) => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Moves inline regular file `inode` into the store before it gains privilege bits or
    /// file capabilities, so its bytes never sit in a host file that carries them. Fails
    /// with EPERM where it cannot move (several hard links, unlinked while open): the guest
    /// then cannot give it those privileges. Nothing to do for other files. Takes the
    /// namespace lock exclusively: call it holding no lock.
    pub(super) fn redirect_before_privilege(&self, inode: u64) -> io::Result<()> {
        let Some(r) = &self.redirect else {
            return Ok(());
        };
        let _ns = self.ns_write();
        let (attr, _) = self.inner.getattr(&root_ctx(), inode, None)?;
        if attr.st_mode & libc::S_IFMT != libc::S_IFREG || self.kind(inode)? != Kind::Plain {
            return Ok(());
        }
        if self.stub_meta(inode, Reached::Known)?.is_some() {
            // Another volume's stub holds no data here.
            return Ok(());
        }
        let parts = match self.state().names.path(inode) {
            Some(parts) if attr.st_nlink == 1 => parts,
            _ => {
                log::info!("inode {inode}: cannot move into the store, privileges refused");
                return Err(errno(libc::EPERM));
            }
        };
        self.make_redirected(r, inode, &parts, attr.st_ino)
    }

    /// Opens a passthrough handle, with the same flags, for each redirected handle the guest
    /// holds on `inode`: (guest handle, passthrough handle, flags). Either all open, or none
    /// stays open.
    fn open_inline_handles(&self, inode: u64) -> io::Result<Vec<(u64, u64, u32)>> {
        let wanted = self.state().handles.redirected(inode);
        let mut opened = Vec::with_capacity(wanted.len());
        for (h, flags) in wanted {
            let ih = match self.inner.open(&root_ctx(), inode, flags, 0) {
                Ok((Some(ih), _, _)) => Ok(ih),
                Ok((None, _, _)) => Err(errno(libc::EIO)),
                Err(e) => Err(e),
            };
            match ih {
                Ok(ih) => opened.push((h, ih, flags)),
                Err(e) => {
                    self.release_inline_handles(inode, &opened);
                    return Err(e);
                }
            }
        }
        Ok(opened)
    }

    /// Gives back the passthrough handles [`RedirectFs::open_inline_handles`] opened.
    fn release_inline_handles(&self, inode: u64, opened: &[(u64, u64, u32)]) {
        for (_, ih, _) in opened {
            let _ = self
                .inner
                .release(&root_ctx(), inode, 0, *ih, false, false, None);
        }
    }

    /// Opens the guest-tree file at `parts` for I/O and checks it is host inode `ino`.
    fn open_guest_file(&self, parts: &[CString], ino: u64) -> io::Result<File> {
        if parts.is_empty() {
            return Err(errno(libc::EINVAL));
        }
        let path_fd = open_parts(&self.guest_root, parts, libc::O_PATH)?;
        let file = self.proc.reopen_regular(&path_fd, libc::O_RDWR)?;
        if file
            .metadata()
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))?
            != ino
        {
            return Err(errno(libc::ESTALE));
        }
        Ok(file)
    }

    /// Inline to redirected ([`relocate::into_store`]), then the guest's handles on the file
    /// switched to the object.
    fn make_redirected(
        &self,
        r: &Redirecting,
        inode: u64,
        parts: &[CString],
        ino: u64,
    ) -> io::Result<()> {
        let store = &r.store;
        let file = self.open_guest_file(parts, ino)?;
        let size = file.metadata()?.len();
        let _intent = store.intents().begin(&Intent::Place {
            path: join(parts),
            guest_ino: ino,
        })?;
        let meta = Meta::redirect(&r.volume, &join(parts));
        relocate::into_store(store, &file, parts, self.meta_name, &meta)?;
        // Every handle the guest holds now reads and writes the object, which they hold
        // open from here on.
        let held = Arc::new(store.open_object(parts)?);
        let old = {
            let mut st = self.state();
            st.nodes.set_kind(inode, Kind::Redirect);
            st.handles.switch_to_redirected(inode, held)
        };
        self.drop_cached(inode);
        self.state().nodes.set_record(inode, Some(meta));
        for ih in old {
            if let Err(e) = self
                .inner
                .release(&root_ctx(), inode, 0, ih, false, false, None)
            {
                log::warn!("inode {inode}: releasing its inline handle: {e}");
            }
        }
        log::debug!("inode {inode}: moved into the store ({size} bytes)");
        Ok(())
    }

    /// Redirected to inline ([`relocate::out_of_store`], the stub itself receiving the data),
    /// with the guest's handles on the file switched to passthrough handles.
    fn make_inline(
        &self,
        store: &Store,
        inode: u64,
        parts: &[CString],
        ino: u64,
    ) -> io::Result<()> {
        let file = self.open_guest_file(parts, ino)?;
        let object = self.object(inode)?;
        let size = object.metadata()?.len();
        // The guest's handles get passthrough handles first: if one cannot be opened,
        // nothing has changed yet.
        let opened = self.open_inline_handles(inode)?;
        let moved = store
            .intents()
            .begin(&Intent::Place {
                path: join(parts),
                guest_ino: ino,
            })
            .and_then(|intent| {
                let mut landing = relocate::InPlace::new(&file, self.meta_name)?;
                relocate::out_of_store(store, &object, parts, size, &mut landing)?;
                drop(intent);
                Ok(())
            });
        if let Err(e) = moved {
            self.release_inline_handles(inode, &opened);
            return Err(e);
        }
        let forgets = {
            let mut st = self.state();
            st.nodes.set_kind(inode, Kind::Plain);
            st.handles.switch_to_inline(inode, &opened)
        };
        // Its handles are the passthrough layer's now, and they keep its node.
        if forgets > 0 {
            self.forget_node(inode, forgets);
        }
        self.drop_cached(inode);
        self.undetach(inode);
        log::debug!("inode {inode}: moved inline ({size} bytes)");
        Ok(())
    }
}
