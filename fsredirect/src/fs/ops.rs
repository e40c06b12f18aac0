//! The FUSE operations: each one validates names, takes the namespace lock in the right
//! mode, and routes to the passthrough layer, the store, or both.

use std::ffi::CStr;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{CreateIn, FsOptions, OpenOptions, SetattrValid};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, GetxattrReply, ListxattrReply, ZeroCopyReader,
    ZeroCopyWriter,
};

use super::datalock::DataGuard;
use super::handles::kept_open_flags;
use super::nodes::Identity;
use super::xattrs::Reached;
use super::{
    errno, root_ctx, Inspected, Kind, OpenFile, RedirectFs, SyncMode, CAPABILITY_XATTR,
    PRIVILEGE_BITS, XATTR_BUF,
};
use crate::faults::StoreOp;
use crate::intent::Intent;
use crate::meta::{filter_xattr_list, is_reserved_xattr, is_special_kind, Meta};
use crate::names::{join, validate_name};

impl FileSystem for RedirectFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        let opts = self.inner.init(capable)?;
        // READDIRPLUS would hand out attributes from inside the passthrough's directory walk,
        // where this layer cannot fix them up: plain READDIR plus LOOKUP it is.
        let opts = opts - FsOptions::DO_READDIRPLUS - FsOptions::READDIRPLUS_AUTO;
        // Without these the server answers INIT with max_write = 8 KiB, and every large
        // write becomes one request (and one device round trip) per 8 KiB.
        Ok(opts | (capable & (FsOptions::BIG_WRITES | FsOptions::MAX_PAGES)))
    }

    fn destroy(&self) {
        // The kernel unmounts (or a vhost-user front-end went away): make everything durable
        // now (the clean-stop marker follows when the server is dropped).
        if let Err(e) = self.syncfs() {
            log::warn!("cannot sync at unmount (the next start will recover): {e}");
        }
        self.end_session();
    }

    fn lookup(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        validate_name(name)?;
        let _ns = self.ns_read();
        if let Some(held) = self.lookup_held(parent, name)? {
            if let Some(record) = held.stale_record {
                self.correct_portion_of(held.entry.inode, parent, name, Some(record));
            }
            return Ok(held.entry);
        }
        let entry = self.inner.lookup(ctx, parent, name)?;
        if !self.file_handles && !self.state().names.holds(entry.inode) {
            // A node new to the kernel: the passthrough layer now holds a descriptor for it.
            if let Err(e) = self.check_fd_room() {
                self.inner.forget(ctx, entry.inode, 1);
                return Err(e);
            }
        }
        let at = Reached::Child(parent, name, Identity::of(&entry.attr));
        let (kind, meta) = match self.kind_of_entry(&entry, at) {
            Ok(k) => k,
            Err(e) => {
                self.inner.forget(ctx, entry.inode, 1);
                return Err(e);
            }
        };
        let entry = self.admit(parent, name, entry, kind);
        self.state().nodes.set_record(entry.inode, meta.clone());
        if kind == Kind::Redirect {
            self.correct_portion_of(entry.inode, parent, name, meta);
        }
        if matches!(
            entry.attr.st_mode & libc::S_IFMT,
            libc::S_IFDIR | libc::S_IFREG
        ) {
            // The kernel looks a name in use up again once its entry times out (a directory
            // at every path walk, a file at every open), often without a GETATTR: pinned by
            // a hot handle now, those LOOKUPs cost one host call each (`revalidate.rs`). The
            // first GETATTR, which would have opened the handle, then costs one less.
            self.pin(entry.inode);
        }
        Ok(entry)
    }

    fn forget(&self, _ctx: &Context, inode: u64, count: u64) {
        // Not while a namespace change is under way: it may be using the node (as the parent
        // of a new name, say), and would fail half done if the node went away beneath it.
        let _ns = self.ns_read();
        self.forget_locked(inode, count);
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(u64, u64)>) {
        for (inode, count) in requests {
            self.forget(ctx, inode, count);
        }
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: u64,
        handle: Option<u64>,
    ) -> io::Result<(libc::stat64, Duration)> {
        let _ns = self.ns_read();
        let kind = self.kind(inode)?;
        let (mut st, timeout) = match self.inner_handle(handle)? {
            Some(ih) => self.inner.getattr(ctx, inode, Some(ih))?,
            None => self.host_attr(ctx, inode)?,
        };
        self.fix_attr(inode, kind, &mut st);
        Ok((st, timeout))
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: u64,
        attr: libc::stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(libc::stat64, Duration)> {
        if valid.contains(SetattrValid::SIZE) {
            // Refused before anything else changes: the passthrough layer applies the mode
            // and owner before it tries the size, so a directory would lose its mode to a
            // request that then fails.
            let (st, _) = self.inner.getattr(&root_ctx(), inode, None)?;
            match st.st_mode & libc::S_IFMT {
                libc::S_IFREG => {}
                libc::S_IFDIR => return Err(errno(libc::EISDIR)),
                _ => return Err(errno(libc::EINVAL)),
            }
        }
        if valid.contains(SetattrValid::MODE) && attr.st_mode & PRIVILEGE_BITS != 0 {
            self.redirect_before_privilege(inode)?;
        }
        let (reply, kind) = {
            let _ns = self.ns_read();
            // The node's data lock, for every SETATTR: a FORGET of the node (which a guest may
            // send with the request in flight) waits for it, so the passthrough layer never
            // applies the change and then fails to stat a node gone meanwhile (an error
            // reply for a change made).
            let data = self.data_locks.lock(inode);
            let kind = self.kind(inode)?;
            (
                self.setattr_locked(ctx, inode, attr, handle, valid, kind, &data)?,
                kind,
            )
        };
        let regular = reply.0.st_mode & libc::S_IFMT == libc::S_IFREG;
        if valid.contains(SetattrValid::SIZE)
            && regular
            && !matches!(kind, Kind::Special { .. })
            && self.placement_may_change(inode, kind == Kind::Redirect, attr.st_size as u64)
        {
            self.settle(inode);
        }
        Ok(reply)
    }

    fn readlink(&self, ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        self.inner.readlink(ctx, inode)
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        validate_name(name)?;
        self.check_new_node_room()?;
        let _ns = self.ns_write();
        let entry = self.create_as_caller(ctx, parent, name, false, |c| {
            self.inner.symlink(c, linkname, parent, name)
        })?;
        Ok(self.admit(parent, name, entry, Kind::Plain))
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        validate_name(name)?;
        self.check_new_node_room()?;
        let _ns = self.ns_write();
        let kind = mode & libc::S_IFMT;
        if kind == libc::S_IFREG && self.redirects_new(parent, name, mode)? {
            // Nothing in the store may be touched for a name that exists.
            if self.peek(parent, name)?.is_some() {
                return Err(errno(libc::EEXIST));
            }
            return self.create_redirected(ctx, parent, name, mode, umask);
        }
        if kind == libc::S_IFREG {
            let entry = self
                .inner
                .mknod(&self.creator(ctx), parent, name, mode, rdev, umask)?;
            return Ok(self.admit(parent, name, entry, Kind::Plain));
        }
        if !is_special_kind(kind) {
            return Err(errno(libc::EINVAL));
        }
        // An inert special file: an empty regular host file, its type in the metadata.
        let stub_mode = libc::S_IFREG | (mode & 0o7777);
        let entry = self
            .inner
            .mknod(&self.creator(ctx), parent, name, stub_mode, 0, umask)?;
        let meta = Meta::Special { kind, rdev };
        let at = Reached::Child(parent, name, Identity::of(&entry.attr));
        if let Err(e) = self.write_meta(entry.inode, &meta, at) {
            let _ = self.inner.unlink(&root_ctx(), parent, name);
            self.inner.forget(&root_ctx(), entry.inode, 1);
            return Err(e);
        }
        Ok(self.admit(parent, name, entry, Kind::Special { kind, rdev }))
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        validate_name(name)?;
        self.check_new_node_room()?;
        let _ns = self.ns_write();
        let entry = self.create_as_caller(ctx, parent, name, true, |c| {
            self.inner.mkdir(c, parent, name, mode, umask)
        })?;
        Ok(self.admit(parent, name, entry, Kind::Plain))
    }

    fn unlink(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        validate_name(name)?;
        let _ns = self.ns_write();
        let found = self.inspect(parent, name)?;
        let victim = found.as_ref().map(Inspected::pair);
        (|| {
            let (entry, kind) = victim.as_ref().ok_or_else(|| errno(libc::ENOENT))?;
            let parts = match kind {
                Kind::Redirect => Some(self.child_parts(parent, name)?),
                _ => None,
            };
            if let (Some(parts), true) = (&parts, entry.attr.st_nlink <= 1) {
                self.pin_stub(entry.inode, parts);
            }
            let intent = match &parts {
                Some(parts) => Some(
                    self.store()?
                        .intents()
                        .begin(&Intent::Unlink { path: join(parts) })?,
                ),
                None => None,
            };
            let detached = match &parts {
                Some(parts) if entry.attr.st_nlink > 1 => {
                    self.detach_before_losing(entry.inode, (parent, name), parts)
                }
                _ => None,
            };
            // Stub first: a crash in between leaves an unnamed store object (garbage), never
            // a stub without data.
            self.remove_entry(ctx, parent, name, 0)?;
            self.state().names.remove_name(parent, name);
            self.pass_on_released();
            self.keep_detached(entry.inode, detached);
            if let Some(parts) = parts {
                let inode = entry.inode;
                let store_half = if entry.attr.st_nlink > 1 {
                    self.store()?.remove(&parts, false)
                } else {
                    self.drop_last_name(inode, &parts)
                };
                if let Err(e) = store_half {
                    // The name is gone for the guest: the unlink happened. The store keeps
                    // an object without a stub until recovery settles the kept record.
                    log::error!(
                        "unlink of {:?}: the store half failed ({e}); recovery will finish it",
                        String::from_utf8_lossy(&join(&parts))
                    );
                    if let Some(intent) = intent {
                        intent.keep();
                    }
                    return Ok(());
                }
                if entry.attr.st_nlink > 1 {
                    let remaining = self.state().names.path(inode);
                    if let Some(rest) = remaining {
                        self.record_portion(inode, &rest)?;
                    }
                }
            }
            Ok(())
        })()
    }

    fn rmdir(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        validate_name(name)?;
        let _ns = self.ns_write();
        self.remove_entry(ctx, parent, name, libc::AT_REMOVEDIR)?;
        let parts = self.state().names.child_path(parent, name);
        self.state().names.remove_name(parent, name);
        self.pass_on_released();
        if let (Some(r), Some(parts)) = (&self.redirect, parts) {
            if let Err(e) = r.store.remove(&parts, true) {
                log::warn!(
                    "store directory {:?} not removed: {e}",
                    String::from_utf8_lossy(&join(&parts))
                );
            }
        }
        Ok(())
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        validate_name(oldname)?;
        validate_name(newname)?;
        // A whiteout is a character device on the host: never created.
        if flags & libc::RENAME_WHITEOUT != 0 {
            return Err(errno(libc::EINVAL));
        }
        let _ns = self.ns_write();
        let src = self.inspect(olddir, oldname)?;
        let dst = self.inspect(newdir, newname)?;
        let result = self.rename_locked(
            ctx,
            (olddir, oldname),
            (newdir, newname),
            flags,
            &src.as_ref().map(Inspected::pair),
            &dst.as_ref().map(Inspected::pair),
        );
        if result.is_ok() && self.redirect.is_some() {
            // The path changed: the include and exclude rules may say otherwise now.
            if let Some(src) = &src {
                self.settle_locked(src.inode());
            }
            if let (Some(dst), true) = (&dst, flags & libc::RENAME_EXCHANGE != 0) {
                self.settle_locked(dst.inode());
            }
        }
        result
    }

    fn link(&self, ctx: &Context, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        validate_name(newname)?;
        self.check_new_node_room()?;
        let _ns = self.ns_write();
        let kind = self.kind(inode)?;
        if kind != Kind::Redirect {
            let entry = self.inner.link(ctx, inode, newparent, newname)?;
            return Ok(self.admit(newparent, newname, entry, kind));
        }
        let store = self.store()?;
        // Before the store makes directories for a name the guest tree will refuse.
        self.require_dir(newparent)?;
        if self.peek(newparent, newname)?.is_some() {
            return Err(errno(libc::EEXIST));
        }
        let old = self.state().names.path(inode);
        let new = self.child_parts(newparent, newname)?;
        let _intent = store.intents().begin(&Intent::Link { path: join(&new) })?;
        match old {
            Some(old) => store.link(&old, &new)?,
            // A node detached from the names the server knew: its object is held open.
            None => store.link_open(self.object(inode)?.as_ref(), &new)?,
        }
        match self.inner.link(ctx, inode, newparent, newname) {
            Ok(entry) => Ok(self.admit(newparent, newname, entry, kind)),
            Err(e) => {
                let _ = store.remove(&new, false);
                Err(e)
            }
        }
    }

    fn open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        refuse_path_only(flags)?;
        self.check_fd_room()?;
        let _ns = self.ns_read();
        match self.kind(inode)? {
            Kind::Redirect => {
                let handle = self.open_redirected(inode, flags)?;
                if flags as i32 & libc::O_TRUNC != 0 && self.placement_may_change(inode, true, 0) {
                    drop(_ns);
                    self.settle(inode);
                }
                Ok((Some(handle), OpenOptions::empty(), None))
            }
            // The kernel opens FIFOs and device nodes itself; nothing on the host is opened.
            Kind::Special { .. } => Err(errno(libc::ENXIO)),
            Kind::Foreign => Err(self.foreign_stub(inode)),
            Kind::Plain => {
                let (ih, opts, passthrough) = self.inner.open(ctx, inode, flags, fuse_flags)?;
                let ih = ih.ok_or_else(|| errno(libc::EIO))?;
                let handle = self.new_handle(self.plain_handle(ih, inode, flags), None);
                Ok((Some(handle), opts, passthrough))
            }
        }
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        validate_name(name)?;
        refuse_path_only(args.flags)?;
        if args.flags as i32 & libc::O_DIRECTORY != 0 {
            // What the host answers to O_CREAT with O_DIRECTORY (or O_TMPFILE), since Linux
            // 6.4, whether the name exists or not.
            return Err(errno(libc::EINVAL));
        }
        self.check_fd_room()?;
        let _ns = self.ns_write();
        let entry = match self.peek(parent, name)? {
            Some(existing) => {
                if args.flags as i32 & libc::O_EXCL != 0 {
                    return Err(errno(libc::EEXIST));
                }
                // The name exists: this is an open of it, and the kernel gets the reference.
                // (The passthrough layer's own create would reopen it under the caller's
                // fsuid, which fails with file-handle inodes.)
                let (entry, kind) = existing.hand_over();
                self.admit(parent, name, entry, kind)
            }
            None if self.redirects_new(parent, name, args.mode)? => {
                let entry = self.create_redirected(ctx, parent, name, args.mode, args.umask)?;
                self.pin(entry.inode);
                entry
            }
            None => {
                let (entry, ih, opts, passthrough) =
                    self.inner.create(&self.creator(ctx), parent, name, args)?;
                let entry = self.admit(parent, name, entry, Kind::Plain);
                self.pin(entry.inode);
                let handle = ih.map(|ih| {
                    self.new_handle(self.plain_handle(ih, entry.inode, args.flags), None)
                });
                return Ok((entry, handle, opts, passthrough));
            }
        };
        let kind = self.kind(entry.inode)?;
        let opened = match kind {
            Kind::Redirect => self.open_redirected(entry.inode, args.flags),
            Kind::Special { .. } => Err(errno(libc::ENXIO)),
            Kind::Foreign => Err(self.foreign_stub(entry.inode)),
            Kind::Plain => self
                .inner
                .open(ctx, entry.inode, args.flags, args.fuse_flags)
                .and_then(|(ih, _, _)| ih.ok_or_else(|| errno(libc::EIO)))
                .map(|ih| self.new_handle(self.plain_handle(ih, entry.inode, args.flags), None)),
        };
        match opened {
            Ok(handle) => {
                if kind == Kind::Redirect
                    && args.flags as i32 & libc::O_TRUNC != 0
                    && self.placement_may_change(entry.inode, true, 0)
                {
                    self.settle_locked(entry.inode);
                }
                Ok((entry, Some(handle), OpenOptions::empty(), None))
            }
            Err(e) => {
                // The kernel drops its reference when create fails.
                self.forget_locked(entry.inode, 1);
                Err(e)
            }
        }
    }

    fn read(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        let _ns = self.io_lock();
        match self.handle(handle)? {
            OpenFile::Inner(ih, node, opened)
            | OpenFile::Inline {
                ih,
                inode: node,
                flags: opened,
            } => {
                let flags = self.passthrough_flags(ctx, node, opened, flags)?;
                // Shared: no WRITE of the file may change its descriptor's flags meanwhile
                // (see `passthrough_io_flags`).
                let _data = self.data_locks.read(node);
                self.inner
                    .read(ctx, inode, ih, w, size, offset, lock_owner, flags)
            }
            OpenFile::Redirect { inode, flags } => {
                may_access(flags, libc::O_RDONLY)?;
                let _data = self.data_locks.read(inode);
                self.with_object(inode, |f| w.write_from(f, size as usize, offset))
            }
            OpenFile::Dir => Err(errno(libc::EISDIR)),
        }
    }

    fn write(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        let ns = self.io_lock();
        let file = self.handle(handle)?;
        match file {
            OpenFile::Inner(ih, node, opened)
            | OpenFile::Inline {
                ih,
                inode: node,
                flags: opened,
            } => {
                let inline = matches!(file, OpenFile::Inline { .. });
                let io_flags = self.passthrough_flags(ctx, node, opened, flags)?;
                // Exclusive: see `passthrough_io_flags`.
                let data = self.data_locks.lock(node);
                let n = self.inner.write(
                    ctx,
                    // An inline handle names its own node; a plain one is checked against
                    // the request's by the passthrough layer.
                    if inline { node } else { inode },
                    ih,
                    r,
                    size,
                    offset,
                    lock_owner,
                    delayed_write,
                    io_flags,
                    fuse_flags,
                )?;
                drop(data);
                drop(ns);
                if inline {
                    // The file is at least this long now: it may have crossed `min-size`. An
                    // appending write lands at the end whatever offset it names (a guest may
                    // name any), so its end is read back.
                    let mut end = offset.saturating_add(n as u64);
                    if flags as i32 & libc::O_APPEND != 0 {
                        if let Ok((st, _)) = self.host_attr(&root_ctx(), node) {
                            end = end.max(st.st_size as u64);
                        }
                    }
                    if self.placement_may_change(node, false, end) {
                        self.settle(node);
                    }
                }
                Ok(n)
            }
            OpenFile::Redirect {
                inode,
                flags: opened,
            } => {
                may_access(opened, libc::O_WRONLY)?;
                let n = self.write_redirected(inode, r, size, offset, flags)?;
                // A redirected file left where an older policy or a directory rename put
                // it is settled when written, like an inline one.
                let size = match self.redirected()?.policy.is_all() {
                    true => None,
                    false => Some(self.object_size(inode)?),
                };
                drop(ns);
                if size.is_some_and(|size| self.placement_may_change(inode, true, size)) {
                    self.settle(inode);
                }
                Ok(n)
            }
            OpenFile::Dir => Err(errno(libc::EISDIR)),
        }
    }

    fn flush(&self, ctx: &Context, inode: u64, handle: u64, lock_owner: u64) -> io::Result<()> {
        let _ns = self.io_lock();
        match self.handle(handle)? {
            OpenFile::Inner(ih, ..) | OpenFile::Inline { ih, .. } => {
                self.inner.flush(ctx, inode, ih, lock_owner)
            }
            OpenFile::Redirect { .. } | OpenFile::Dir => Ok(()),
        }
    }

    fn fsync(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        let _ns = self.io_lock();
        match self.handle(handle)? {
            OpenFile::Inner(ih, ..) | OpenFile::Inline { ih, .. } => {
                self.inner.fsync(ctx, inode, datasync, ih)
            }
            OpenFile::Redirect { inode, .. } => {
                self.sync_redirected(inode, SyncMode::of_fsync(datasync))
            }
            OpenFile::Dir => sync_dir(&self.dir_stream(handle)?.file(), datasync),
        }
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        let ns = self.io_lock();
        match self.handle(handle)? {
            OpenFile::Inner(ih, ..) => self.inner.fallocate(ctx, inode, ih, mode, offset, length),
            OpenFile::Inline { ih, inode, .. } => {
                self.inner.fallocate(ctx, inode, ih, mode, offset, length)?;
                drop(ns);
                let end = offset.saturating_add(length);
                if mode as i32 & libc::FALLOC_FL_KEEP_SIZE == 0
                    && self.placement_may_change(inode, false, end)
                {
                    self.settle(inode);
                }
                Ok(())
            }
            OpenFile::Redirect { inode, flags } => {
                may_access(flags, libc::O_WRONLY)?;
                let offset = i64::try_from(offset).map_err(|_| errno(libc::EINVAL))?;
                let length = i64::try_from(length).map_err(|_| errno(libc::EINVAL))?;
                let store = self.store()?;
                let data = self.data_locks.lock(inode);
                let done = self.with_object(inode, |f| {
                    store.before(&StoreOp::Fallocate { file: f })?;
                    // SAFETY: fallocate on a descriptor we hold; no memory is passed.
                    let res =
                        unsafe { libc::fallocate64(f.as_raw_fd(), mode as i32, offset, length) };
                    crate::beneath::check(res).map(|_| ())
                });
                let stub = self.sync_stub(inode, done.is_ok(), &data);
                done?;
                stub
            }
            OpenFile::Dir => Err(errno(libc::EISDIR)),
        }
    }

    fn release(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        handle: u64,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        let _ns = self.io_lock();
        match self.close_handle(handle)? {
            OpenFile::Inner(ih, ..) | OpenFile::Inline { ih, .. } => {
                self.inner
                    .release(ctx, inode, flags, ih, flush, flock_release, lock_owner)
            }
            OpenFile::Redirect { .. } | OpenFile::Dir => Ok(()),
        }
    }

    fn statfs(&self, ctx: &Context, inode: u64) -> io::Result<libc::statvfs64> {
        match &self.redirect {
            Some(r) => r.store.statvfs(),
            None => self.inner.statfs(ctx, inode),
        }
    }

    fn setxattr(
        &self,
        _ctx: &Context,
        inode: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        if is_reserved_xattr(name.to_bytes()) {
            return Err(errno(libc::EPERM));
        }
        if name == CAPABILITY_XATTR {
            self.redirect_before_privilege(inode)?;
        }
        self.node_setxattr(inode, Reached::Known, name, value, flags)
    }

    fn getxattr(
        &self,
        _ctx: &Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        if is_reserved_xattr(name.to_bytes()) {
            return Err(errno(libc::ENODATA));
        }
        self.node_getxattr(inode, Reached::Known, name, xattr_buffer(size))
    }

    fn listxattr(&self, _ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        let list = match self.node_listxattr(inode, XATTR_BUF)? {
            ListxattrReply::Names(list) => filter_xattr_list(&list),
            ListxattrReply::Count(_) => Vec::new(),
        };
        if size == 0 {
            Ok(ListxattrReply::Count(list.len() as u32))
        } else if list.len() > size as usize {
            Err(errno(libc::ERANGE))
        } else {
            Ok(ListxattrReply::Names(list))
        }
    }

    fn removexattr(&self, _ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        if is_reserved_xattr(name.to_bytes()) {
            return Err(errno(libc::ENODATA));
        }
        self.node_removexattr(inode, name)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        refuse_path_only(flags)?;
        // Directory handles live in the same table as file handles: the kernel may pass
        // either to SETATTR (fchmod or futimens on a directory descriptor).
        self.check_fd_room()?;
        let _ns = self.ns_read();
        if let Some(stream) = self.open_dir_stream(ctx, inode) {
            let handle = self.new_handle(OpenFile::Dir, None);
            self.state().dirs.insert(handle, Arc::new(stream));
            return Ok((Some(handle), OpenOptions::empty()));
        }
        let (ih, opts) = self.inner.opendir(ctx, inode, flags)?;
        let ih = ih.ok_or_else(|| errno(libc::EIO))?;
        Ok((
            Some(self.new_handle(
                OpenFile::Inner(ih, inode, kept_open_flags(flags as i32)),
                None,
            )),
            opts,
        ))
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        if let OpenFile::Dir = self.handle(handle)? {
            return self.dir_stream(handle)?.read(offset, size, add_entry);
        }
        let handle = self.inner_of(handle)?;
        self.inner
            .readdir(ctx, inode, handle, size, offset, &mut |mut entry| {
                // An inert special file is a regular file on the host: let the guest ask.
                if entry.type_ == u32::from(libc::DT_REG) {
                    entry.type_ = u32::from(libc::DT_UNKNOWN);
                }
                add_entry(entry)
            })
    }

    fn fsyncdir(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        if let OpenFile::Dir = self.handle(handle)? {
            sync_dir(&self.dir_stream(handle)?.file(), datasync)?;
        } else {
            let handle = self.inner_of(handle)?;
            self.inner.fsyncdir(ctx, inode, datasync, handle)?;
        }
        // The names in this directory are durable in the guest tree: make their store half
        // durable too (the mirrored directory may not exist yet if it holds no objects).
        if let Some(r) = &self.redirect {
            let _ns = self.ns_read();
            let parts = self.state().names.path(inode);
            if let Some(parts) = parts {
                match r.store.sync_volume_dir(&parts) {
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                    other => other?,
                }
            }
        }
        Ok(())
    }

    fn releasedir(&self, ctx: &Context, inode: u64, flags: u32, handle: u64) -> io::Result<()> {
        if let OpenFile::Dir = self.handle(handle)? {
            return self.close_handle(handle).map(drop);
        }
        let ih = self.inner_of(handle)?;
        self.close_handle(handle)?;
        self.inner.releasedir(ctx, inode, flags, ih)
    }

    fn access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        self.inner.access(ctx, inode, mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        let _ns = self.io_lock();
        match self.handle(handle)? {
            OpenFile::Inner(ih, ..) | OpenFile::Inline { ih, .. } => {
                self.inner.lseek(ctx, inode, ih, offset, whence)
            }
            OpenFile::Redirect { inode, .. } => {
                let offset = i64::try_from(offset).map_err(|_| errno(libc::EINVAL))?;
                self.with_object(inode, |f| {
                    // SAFETY: lseek on a descriptor we hold; I/O uses pread/pwrite, so moving
                    // the shared file position is harmless.
                    let res = unsafe { libc::lseek64(f.as_raw_fd(), offset, whence as i32) };
                    if res < 0 {
                        Err(io::Error::last_os_error())
                    } else {
                        Ok(res as u64)
                    }
                })
            }
            // The kernel seeks in a directory itself; data and holes are for files.
            OpenFile::Dir => Err(errno(libc::EINVAL)),
        }
    }
}

impl RedirectFs {
    /// The flags a READ or WRITE with `flags` through a passthrough-layer handle of `node`
    /// opened with `opened` goes to that layer with ([`passthrough_io_flags`]), or EPERM
    /// where the host would refuse to apply them to the handle's descriptor.
    ///
    /// The host refuses to change O_APPEND on a descriptor of an append-only file (`chattr
    /// +a`, which a host may set on files it shares; no guest request can), and on that
    /// refusal fuse-backend-rs would close the handle's descriptor (see
    /// [`passthrough_io_flags`]). A guest program may clear O_APPEND with its own `fcntl` (its
    /// kernel does not know the host file is append-only), so this is no hostile request
    /// only. The file is asked about only when the request's O_APPEND differs from the open
    /// flags': an append-only file's descriptor keeps the O_APPEND it was opened with, so a
    /// request that matches them changes nothing. A node the server cannot ask about (its
    /// path unknown, or changed behind its back) counts as append-only.
    ///
    /// (The one case left: a host that makes a file append-only while the guest has it open
    /// and has already changed its O_APPEND through that handle.)
    fn passthrough_flags(
        &self,
        ctx: &Context,
        node: u64,
        opened: u32,
        flags: u32,
    ) -> io::Result<u32> {
        let flags = passthrough_io_flags(flags);
        let toggles = (flags ^ opened) as i32 & libc::O_APPEND != 0;
        if toggles && self.append_only(ctx, node) {
            return Err(errno(libc::EPERM));
        }
        Ok(flags)
    }

    /// Whether node `inode` is append-only on the host, asked through the path the name
    /// table knows for it; true when that path is unknown or no longer leads to the node.
    fn append_only(&self, ctx: &Context, inode: u64) -> bool {
        let ask = || {
            let parts = self.state().names.path(inode)?;
            let (node, _) = self.host_attr(ctx, inode).ok()?;
            let fd = self.open_as_node(&parts, libc::O_PATH, &node)?;
            crate::beneath::is_append_only(&fd).ok()
        };
        ask().unwrap_or(true)
    }

    /// WRITE to a redirected file: the bytes into the store object, then the stub's size,
    /// under the inode's data lock. `flags` are the file's flags at this write (O_APPEND and
    /// the sync modes may have changed since the open).
    fn write_redirected(
        &self,
        inode: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        flags: u32,
    ) -> io::Result<usize> {
        if offset
            .checked_add(u64::from(size))
            .is_none_or(|end| end > i64::MAX as u64)
        {
            return Err(errno(libc::EFBIG));
        }
        let store = self.store()?;
        let append = flags as i32 & libc::O_APPEND != 0;
        let data = self.data_locks.lock(inode);
        // The stub must be able to follow the object before the object changes.
        self.stub_file(inode)?;
        let before = self.state().nodes.object_size(inode);
        let offset = match (append, before) {
            (true, Some(size)) => size,
            (true, None) => self.object_size_locked(inode, &data)?,
            (false, _) => offset,
        };
        let written = self.with_object(inode, |f| write_object(store, f, r, offset, size as usize));
        // Even after a failed write (ENOSPC part-way) the stub takes the object's size, so
        // the two never disagree. After a whole write the size is known: the server is the
        // object's only writer, and holds its data lock.
        let stub = match (&written, before) {
            (Ok(n), Some(before)) => {
                let after = before.max(offset + *n as u64);
                self.state().nodes.object_written(inode, after);
                self.sync_stub_to(inode, after, true, &data)
            }
            _ => self.sync_stub(inode, written.is_ok(), &data),
        };
        drop(data);
        let n = written?;
        stub?;
        match SyncMode::of_write(flags) {
            SyncMode::None => {}
            mode => self.sync_redirected(inode, mode)?,
        }
        Ok(n)
    }

    /// SETATTR under the namespace lock (held shared by the caller) and the node's data lock.
    #[allow(clippy::too_many_arguments)]
    fn setattr_locked(
        &self,
        ctx: &Context,
        inode: u64,
        attr: libc::stat64,
        handle: Option<u64>,
        valid: SetattrValid,
        kind: Kind,
        data: &DataGuard<'_>,
    ) -> io::Result<(libc::stat64, Duration)> {
        let ih = self.inner_handle(handle)?;
        if kind == Kind::Foreign && valid.contains(SetattrValid::SIZE) {
            return Err(self.foreign_stub(inode));
        }
        // The guest may set the stub's times or size here.
        self.state().nodes.stub_unknown(inode);
        // A server not run as root may be granting itself write access to this stub just
        // now (see `open_stub_for_write`): the guest's new mode comes after that. (Taken
        // after the data lock, as there.)
        let modes_lock = || {
            (kind == Kind::Redirect && !self.server_is_root && valid.contains(SetattrValid::MODE))
                .then(|| self.stub_modes.lock().unwrap_or_else(|p| p.into_inner()))
        };
        if kind != Kind::Redirect || !valid.contains(SetattrValid::SIZE) {
            let _modes = modes_lock();
            let (mut st, timeout) = self.inner.setattr(ctx, inode, attr, ih, valid)?;
            self.fix_attr_locked(inode, kind, &mut st, data);
            return Ok((st, timeout));
        }
        if attr.st_size < 0 {
            return Err(errno(libc::EINVAL));
        }
        // Stub first (sparse, so undoing it loses nothing), then the data; both under the
        // data lock, so a WRITE in flight cannot resize the stub in between.
        let store = self.store()?;
        let _modes = modes_lock();
        let old = self.object_attr_locked(inode, data)?.size;
        // Only a server without CAP_FSETID (not root) has the host clear privilege bits on a
        // truncate: only it needs to know them first.
        let kept_bits = match self.server_is_root || valid.contains(SetattrValid::MODE) {
            true => None,
            false => Some(self.inner.getattr(&root_ctx(), inode, None)?.0.st_mode & PRIVILEGE_BITS),
        };
        let (mut st, timeout) = self.inner.setattr(ctx, inode, attr, None, valid)?;
        if let Some(kept_bits) = kept_bits.filter(|&k| st.st_mode & PRIVILEGE_BITS != k) {
            // Without CAP_FSETID the host cleared setuid/setgid on the stub's truncate; the
            // guest's kernel asks for that itself (with MODE) when its rules say so. Only
            // those bits go back: a chmod racing this truncate keeps the rest.
            let mut keep = attr;
            keep.st_mode = st.st_mode | kept_bits;
            st = self
                .inner
                .setattr(&root_ctx(), inode, keep, None, SetattrValid::MODE)?
                .0;
        }
        let resized = self.with_object(inode, |f| store.set_len(f, attr.st_size as u64));
        self.object_changed(inode, data);
        if let Err(e) = resized {
            // SAFETY: stat64 is plain old data; all-zero is a valid value.
            let mut undo: libc::stat64 = unsafe { std::mem::zeroed() };
            undo.st_size = old as i64;
            let _ = self
                .inner
                .setattr(&root_ctx(), inode, undo, None, SetattrValid::SIZE);
            return Err(e);
        }
        self.object_attr_locked(inode, data)?.apply(&mut st);
        Ok((st, timeout))
    }
}

/// EBADF unless a handle opened with `flags` may read (`want` O_RDONLY) or write (O_WRONLY),
/// as the host decides for a descriptor (a plain file's READ and WRITE go through one): the
/// store object behind a redirected handle is open for both whatever the guest asked. (The
/// share never asks for the kernel's writeback cache, under which a kernel reads through a
/// write-only handle.)
fn may_access(flags: u32, want: libc::c_int) -> io::Result<()> {
    let flags = flags as i32;
    let mode = flags & libc::O_ACCMODE;
    match flags & libc::O_PATH == 0 && (mode == want || mode == libc::O_RDWR) {
        true => Ok(()),
        false => Err(errno(libc::EBADF)),
    }
}

/// Writes `len` bytes from the guest's buffers into store object `f` at `offset`, through the
/// store's hook (which may shorten the write in tests).
fn write_object(
    store: &crate::store::Store,
    f: &mut std::fs::File,
    r: &mut dyn ZeroCopyReader,
    offset: u64,
    len: usize,
) -> io::Result<usize> {
    let len = store
        .before(&StoreOp::Write {
            file: f,
            offset,
            len,
        })?
        .unwrap_or(len);
    r.read_to(f, len, offset)
}

/// fsync (or fdatasync) of a directory the server lists itself.
fn sync_dir(dir: &std::fs::File, datasync: bool) -> io::Result<()> {
    if datasync {
        dir.sync_data()
    } else {
        dir.sync_all()
    }
}

/// EINVAL for the flags of an OPEN, OPENDIR or CREATE that ask for an `O_PATH` descriptor,
/// which a kernel never sends (it opens no FUSE file for one).
///
/// The passthrough layer would keep the `O_PATH` descriptor as the handle's, and
/// `fcntl(F_SETFL)` fails on every such descriptor: the first READ or WRITE whose flags
/// differ from the open's would have fuse-backend-rs close it (see
/// [`passthrough_io_flags`]). (Found by fuzzing FUSE requests: an OPEN with `O_PATH` among
/// its flags, then a READ.)
pub(super) fn refuse_path_only(flags: u32) -> io::Result<()> {
    match flags as i32 & libc::O_PATH {
        0 => Ok(()),
        _ => Err(errno(libc::EINVAL)),
    }
}

/// The file flags of a READ or WRITE as they go to the passthrough layer: the access mode and
/// the flags a program may change with `fcntl(F_SETFL)` and that matter to a write (O_APPEND,
/// O_NONBLOCK; O_SYNC and O_DSYNC, which F_SETFL ignores), nothing else.
///
/// fuse-backend-rs 0.14 applies a request's flags to the open descriptor with F_SETFL when
/// they differ from the handle's, and when F_SETFL fails (O_DIRECT on a directory or a file
/// system without direct I/O, O_ASYNC, ...) it closes the descriptor its handle still owns
/// on the way out: the next file opened takes that number, and the handle's later I/O and
/// release reach that other file. With only these flags F_SETFL toggles O_APPEND and
/// O_NONBLOCK, which it does not refuse but for O_APPEND on a file the host keeps
/// append-only, which [`RedirectFs::passthrough_flags`] answers before the passthrough layer
/// tries.
///
/// The flags so set are the descriptor's, shared by every request on the handle: a READ or
/// WRITE whose flags differ, in flight beside an O_APPEND WRITE, could clear O_APPEND between
/// that write's F_SETFL and its pwrite, which would then land at its offset instead of at
/// the end (found by the adversarial driver, unprivileged, seed 0xe8919fd221d2). So the
/// passthrough layer's writes of a file hold its data lock exclusively and its reads hold it
/// shared: no flag change interleaves with a write.
pub(super) fn passthrough_io_flags(flags: u32) -> u32 {
    let kept = libc::O_ACCMODE | libc::O_APPEND | libc::O_NONBLOCK | libc::O_SYNC | libc::O_DSYNC;
    (flags as i32 & kept) as u32
}

/// The buffer to read a guest's xattr value into: the size it asked for, but never more than
/// the largest value the host can hold (64 KiB, XATTR_SIZE_MAX), which changes no reply; the
/// passthrough layer allocates the whole size, and a guest may ask for 4 GiB.
pub(super) fn xattr_buffer(size: u32) -> u32 {
    size.min(XATTR_BUF)
}
