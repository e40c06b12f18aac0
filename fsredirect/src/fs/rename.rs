//! Rename, mirrored in the store: the part of the contract with the most cases (overwrite,
//! exchange, directories, files open elsewhere, hard links).

use std::ffi::{CStr, CString};
use std::io;

use fuse_backend_rs::api::filesystem::{Context, Entry, FileSystem};

use super::{errno, Kind, RedirectFs, Redirecting};
use crate::intent::Intent;
use crate::names::join;

impl RedirectFs {
    pub(super) fn rename_locked(
        &self,
        ctx: &Context,
        old: (u64, &CStr),
        new: (u64, &CStr),
        flags: u32,
        src: &Option<(Entry, Kind)>,
        dst: &Option<(Entry, Kind)>,
    ) -> io::Result<()> {
        let (src_entry, src_kind) = src.as_ref().ok_or_else(|| errno(libc::ENOENT))?;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        if flags & libc::RENAME_NOREPLACE != 0 && dst.is_some() {
            return Err(errno(libc::EEXIST));
        }
        let same = dst
            .as_ref()
            .is_some_and(|(d, _)| d.inode == src_entry.inode);
        if same {
            // One file under both names (the same name, or two hard links): rename(2) does
            // nothing and succeeds, and both names stay.
            return self.inner.rename(ctx, old.0, old.1, new.0, new.1, flags);
        }
        let Some(Redirecting { store, .. }) = &self.redirect else {
            self.inner.rename(ctx, old.0, old.1, new.0, new.1, flags)?;
            self.rename_names(old, new, exchange);
            return Ok(());
        };
        let old_parts = self.child_parts(old.0, old.1)?;
        let new_parts = self.child_parts(new.0, new.1)?;
        let is_dir = |e: &Entry| e.attr.st_mode & libc::S_IFMT == libc::S_IFDIR;
        let in_store = |e: &Entry, k: Kind, parts: &[CString]| {
            k == Kind::Redirect || (is_dir(e) && store.stat_object(parts).is_ok())
        };
        let src_in = in_store(src_entry, *src_kind, &old_parts);
        let dst_in = dst
            .as_ref()
            .is_some_and(|(e, k)| in_store(e, *k, &new_parts));

        if exchange {
            let dst = dst.as_ref().ok_or_else(|| errno(libc::ENOENT))?;
            let (from, to, f) = match (src_in, dst_in) {
                (true, true) => (&old_parts, &new_parts, libc::RENAME_EXCHANGE),
                (true, false) => (&old_parts, &new_parts, 0),
                (false, true) => (&new_parts, &old_parts, 0),
                (false, false) => {
                    self.inner.rename(ctx, old.0, old.1, new.0, new.1, flags)?;
                    self.rename_names(old, new, true);
                    return Ok(());
                }
            };
            let _intent = store.intents().begin(&Intent::Rename {
                old: join(&old_parts),
                new: join(&new_parts),
                guest_ino: src_entry.attr.st_ino,
                store_from: join(from),
                store_to: join(to),
                store_ino: store.stat_object(from)?.st_ino,
                aside: Vec::new(),
                exchange: f == libc::RENAME_EXCHANGE,
            })?;
            store.rename(from, to, f)?;
            if let Err(e) = self.inner.rename(ctx, old.0, old.1, new.0, new.1, flags) {
                let undo = if f == libc::RENAME_EXCHANGE {
                    store.rename(from, to, f)
                } else {
                    store.rename(to, from, 0)
                };
                if let Err(u) = undo {
                    log::error!("rename undo failed, store and guest tree disagree: {u}");
                }
                return Err(e);
            }
            self.rename_names(old, new, true);
            if *src_kind == Kind::Redirect {
                self.record_portion(src_entry.inode, &new_parts)?;
            }
            if dst.1 == Kind::Redirect {
                self.record_portion(dst.0.inode, &old_parts)?;
            }
            return Ok(());
        }

        let aside_name = match dst {
            Some((e, Kind::Redirect)) => Some(store.orphan_name(e.inode)),
            _ => None,
        };
        let (store_from, store_to, store_ino) = if src_in {
            let ino = store.stat_object(&old_parts)?.st_ino;
            (join(&old_parts), join(&new_parts), ino)
        } else {
            (Vec::new(), Vec::new(), 0)
        };
        let _intent = store.intents().begin(&Intent::Rename {
            old: join(&old_parts),
            new: join(&new_parts),
            guest_ino: src_entry.attr.st_ino,
            store_from,
            store_to,
            store_ino,
            aside: aside_name
                .as_ref()
                .map(|n| n.to_bytes().to_vec())
                .unwrap_or_default(),
            exchange: false,
        })?;
        // Move an overwritten file's object aside first, so the rename cannot destroy data
        // the guest rename might still fail to replace.
        let mut detached = None;
        let aside = match (dst, aside_name) {
            (Some((e, Kind::Redirect)), Some(name)) => {
                if e.attr.st_nlink <= 1 {
                    self.pin_stub(e.inode, &new_parts);
                } else {
                    detached = self.detach_before_losing(e.inode, new, &new_parts);
                }
                store.orphan_as(&new_parts, &name)?;
                Some((e, name))
            }
            _ => None,
        };
        let restore_aside = || {
            if let Some((_, orphan)) = &aside {
                if let Err(u) = store.unorphan(orphan, &new_parts) {
                    log::error!("rename undo failed, store and guest tree disagree: {u}");
                }
            }
        };
        // Record the destination in the stub before moving the object: if the server dies
        // between the two halves, recovery finds the object through this record.
        if *src_kind == Kind::Redirect {
            if let Err(e) = self.record_portion(src_entry.inode, &new_parts) {
                restore_aside();
                return Err(e);
            }
        }
        let restore_record = || {
            if *src_kind == Kind::Redirect {
                let _ = self.record_portion(src_entry.inode, &old_parts);
            }
        };
        if src_in {
            if let Err(e) = store.rename(&old_parts, &new_parts, 0) {
                restore_record();
                restore_aside();
                return Err(e);
            }
        }
        if let Err(e) = self.inner.rename(ctx, old.0, old.1, new.0, new.1, flags) {
            if src_in {
                if let Err(u) = store.rename(&new_parts, &old_parts, 0) {
                    log::error!("rename undo failed, store and guest tree disagree: {u}");
                }
            }
            restore_record();
            restore_aside();
            return Err(e);
        }
        self.rename_names(old, new, false);
        if let Some((e, orphan)) = aside {
            self.keep_detached(e.inode, detached);
            if e.attr.st_nlink <= 1 && self.is_open(e.inode) {
                self.set_orphan(e.inode, orphan);
            } else {
                if e.attr.st_nlink <= 1 {
                    // The victim is gone: no cached descriptor may keep its object alive, nor
                    // serve it to a new file that gets its node id.
                    self.drop_cached(e.inode);
                    self.undetach(e.inode);
                }
                // Both halves are done: a leftover victim only costs space until the
                // orphan area is cleared at the next start.
                if let Err(e) = store.remove_orphan(&orphan) {
                    log::warn!("overwritten object {orphan:?} stays in the orphan area: {e}");
                }
                if e.attr.st_nlink > 1 {
                    let rest = self.state().names.path(e.inode);
                    if let Some(rest) = rest {
                        self.record_portion(e.inode, &rest)?;
                    }
                }
            }
        } else if dst_in && !src_in {
            // An empty directory replaced by one without store data.
            store.remove(&new_parts, true)?;
        }
        if *src_kind == Kind::Redirect {
            self.record_portion(src_entry.inode, &new_parts)?;
        }
        Ok(())
    }

    pub(super) fn rename_names(&self, old: (u64, &CStr), new: (u64, &CStr), exchange: bool) {
        {
            let mut st = self.state();
            if exchange {
                st.names.exchange(old, new);
            } else {
                st.names.rename(old, new);
            }
        }
        self.pass_on_released();
    }
}
