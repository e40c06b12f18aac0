//! `fsredirect hydrate` and `dehydrate`: a stub back into an ordinary (inline) file, and an
//! inline file into a stub with a stored object, each crash-safely. Both record the change in
//! the volume's intent log first, as a server's own placement moves do (`Place`, see
//! [`crate::recover`]): after a crash, recovery keeps the stored object as the data while the
//! file carries redirect metadata, and the guest-tree file once it does not.
//!
//! Both move the data with [`crate::relocate`], the routine the server's own moves use.
//!
//! Hydrate: the object's data segments go into an unnamed file in the stub's directory
//! (`O_TMPFILE`; a named `.fsredirect-hydrate-*` file where that is not supported), which
//! takes the stub's owner, mode, times and guest xattrs and is fsync'd, then is named and
//! renamed over the stub (atomic: the guest tree holds either the stub or the whole file);
//! the object is removed last. The intent names the new file's inode, so a crash after the
//! rename has recovery remove the object.
//!
//! Dehydrate, in place (the file keeps its inode, links, owner, mode, times and xattrs): the
//! object is written, fsync'd and its directories fsync'd; then the file gets its metadata
//! (fsync'd) and its data blocks are punched out. The size never changes on the way.
//!
//! Both work on files with one name (a hard-linked file has names the tool would have to find
//! first). The share's policy is not consulted to refuse anything: a file placed against it
//! is moved by the server when it next changes, which the report says.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::guest::{self, GuestTree};
use super::output::{bytes, json_path, Outcome, Status};
use super::{io_err, open_for_change_with, parts_of, share_relative, Recovered, Result, ToolError};
use crate::beneath::{check, fstat};
use crate::faults::{Hook, Namespace, StoreOp};
use crate::intent::Intent;
use crate::meta::Meta;
use crate::relocate::{self, Landing};
use crate::share::ShareSpec;
use crate::store::Store;

/// What `hydrate` or `dehydrate` did.
#[derive(Debug, Clone)]
pub struct ConvertOutcome {
    /// The share.
    pub share: String,
    /// `hydrate` or `dehydrate`.
    pub operation: &'static str,
    /// The file (relative to the share).
    pub path: PathBuf,
    /// False if the file already was what was asked.
    pub changed: bool,
    /// Bytes moved between the guest tree and the store.
    pub bytes: u64,
    /// What the recovery run first did, if the last server did not stop cleanly.
    pub recovered: Option<Recovered>,
    /// The share's policy would place the file the other way (the server moves it when it
    /// next changes).
    pub against_policy: bool,
}

/// True if `file` carries a `security.capability` xattr (file capabilities).
fn has_capabilities(file: &File) -> bool {
    // SAFETY: fgetxattr with a NUL-terminated name and no buffer only returns the size.
    let len = unsafe {
        libc::fgetxattr(
            file.as_raw_fd(),
            c"security.capability".as_ptr(),
            std::ptr::null_mut(),
            0,
        )
    };
    len >= 0
}

fn refused(op: &'static str, path: &Path, reason: impl Into<String>) -> ToolError {
    ToolError::Refused {
        op,
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Opens the regular file `rel` for `op`, with clear errors for anything else.
fn open_file(tree: &GuestTree, op: &'static str, rel: &Path, flags: i32) -> Result<File> {
    let fd = tree.path_fd(rel).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) => refused(op, rel, "no such file in the guest tree"),
        Some(libc::ELOOP) | Some(libc::EXDEV) => {
            refused(op, rel, "it is (or is reached through) a symlink")
        }
        _ => io_err("open", rel)(e),
    })?;
    let st = fstat(&fd).map_err(io_err("examine", rel))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(refused(op, rel, "it is not a regular file"));
    }
    if st.st_nlink > 1 {
        return Err(refused(
            op,
            rel,
            format!(
                "it has {} hard links; {op} works on a file with one name",
                st.st_nlink
            ),
        ));
    }
    tree.reopen_regular(&fd, flags).map_err(io_err("open", rel))
}

/// Turns the stub at `path` back into an inline file and removes its object.
pub fn hydrate(share: &ShareSpec, path: &Path) -> Result<ConvertOutcome> {
    hydrate_in(share, path, Hook::default())
}

/// [`hydrate`] with every step of the move shown to `hook` (tests: fault injection and
/// power-loss simulation, [`crate::faults`]).
#[cfg(any(test, feature = "test-utils"))]
pub fn hydrate_with_hook(share: &ShareSpec, path: &Path, hook: Hook) -> Result<ConvertOutcome> {
    hydrate_in(share, path, hook)
}

fn hydrate_in(share: &ShareSpec, path: &Path, hook: Hook) -> Result<ConvertOutcome> {
    const OP: &str = "hydrate";
    let rel = share_relative(share, path)?;
    let parts = parts_of(&rel).map_err(io_err("name", &rel))?;
    let (volume, store, recovered) = open_for_change_with(share, hook)?;
    let tree = GuestTree::open(&share.dir).map_err(io_err("open guest tree", &share.dir))?;
    let stub = open_file(&tree, OP, &rel, libc::O_RDONLY)?;
    let mut outcome = ConvertOutcome {
        share: share.to_string(),
        operation: OP,
        path: rel.clone(),
        changed: false,
        bytes: 0,
        recovered,
        against_policy: false,
    };
    match crate::meta::read_file(&stub).map_err(io_err("read metadata of", &rel))? {
        None => return Ok(outcome),
        Some((_, Ok(Meta::Redirect { volume: v, .. }))) if v == volume.name.as_bytes() => {}
        Some((_, Ok(Meta::Redirect { .. }))) => {
            return Err(refused(OP, &rel, "it is a stub of another volume"))
        }
        Some((_, Ok(Meta::Special { .. }))) => {
            return Err(refused(OP, &rel, "it is an inert special file, not a stub"))
        }
        Some((_, Err(source))) => {
            return Err(ToolError::BadMeta {
                op: OP,
                path: rel.clone(),
                source,
            })
        }
    }
    let st = fstat(&stub).map_err(io_err("examine", &rel))?;
    if st.st_mode & (libc::S_ISUID | libc::S_ISGID) != 0 || has_capabilities(&stub) {
        return Err(refused(
            OP,
            &rel,
            "it is setuid, setgid or has file capabilities, and a host file holding guest \
             bytes never does; its data stays in the store (clear those in the guest first)",
        ));
    }
    let object = store
        .open_object(&parts)
        .map_err(|source| ToolError::NoObject {
            op: OP,
            path: rel.clone(),
            source,
        })?;
    let size = object
        .metadata()
        .map_err(io_err("examine object of", &rel))?
        .len();
    if size != st.st_size as u64 {
        return Err(refused(
            OP,
            &rel,
            format!(
                "size mismatch (stub {}, object {size} bytes); run `fsredirect repair` first",
                st.st_size
            ),
        ));
    }
    let (dir, name) = tree
        .parent(&rel)
        .map_err(io_err("open directory of", &rel))?;
    let tmp = TempFile::new(&dir).map_err(io_err("create a file beside", &rel))?;
    let new_ino = fstat(&tmp.file).map_err(io_err("examine a new file beside", &rel))?;
    let intent = store
        .intents()
        .begin(&Intent::Place {
            path: rel.as_os_str().as_bytes().to_vec(),
            guest_ino: new_ino.st_ino,
        })
        .map_err(io_err("log the change of", &rel))?;
    let mut landing = Replacement {
        tmp,
        dir: &dir,
        name: &name,
        stub: &stub,
        stub_stat: st,
    };
    relocate::out_of_store(&store, &object, &parts, size, &mut landing).map_err(io_err(
        "move out of the store (data, owner, mode, times, xattrs)",
        &rel,
    ))?;
    drop(intent);
    outcome.changed = true;
    outcome.bytes = size;
    outcome.against_policy = policy_redirects(share, &rel, size);
    Ok(outcome)
}

/// What the share's policy says for `rel` at `size`: true if it would redirect it.
fn policy_redirects(share: &ShareSpec, rel: &Path, size: u64) -> bool {
    share
        .store
        .as_ref()
        .is_some_and(|s| s.policy.redirects(rel.as_os_str().as_bytes(), size))
}

/// Turns the inline file at `path` into a stub whose data is in a new stored object.
pub fn dehydrate(share: &ShareSpec, path: &Path) -> Result<ConvertOutcome> {
    dehydrate_in(share, path, Hook::default())
}

/// [`dehydrate`] with every step of the move shown to `hook` (tests: fault injection and
/// power-loss simulation, [`crate::faults`]).
#[cfg(any(test, feature = "test-utils"))]
pub fn dehydrate_with_hook(share: &ShareSpec, path: &Path, hook: Hook) -> Result<ConvertOutcome> {
    dehydrate_in(share, path, hook)
}

fn dehydrate_in(share: &ShareSpec, path: &Path, hook: Hook) -> Result<ConvertOutcome> {
    const OP: &str = "dehydrate";
    let rel = share_relative(share, path)?;
    let parts = parts_of(&rel).map_err(io_err("name", &rel))?;
    let (volume, store, recovered) = open_for_change_with(share, hook)?;
    let tree = GuestTree::open(&share.dir).map_err(io_err("open guest tree", &share.dir))?;
    let file = open_file(&tree, OP, &rel, libc::O_RDWR)?;
    let mut outcome = ConvertOutcome {
        share: share.to_string(),
        operation: OP,
        path: rel.clone(),
        changed: false,
        bytes: 0,
        recovered,
        against_policy: false,
    };
    match crate::meta::read_file(&file).map_err(io_err("read metadata of", &rel))? {
        None => {}
        Some((_, Ok(Meta::Redirect { volume: v, .. }))) if v == volume.name.as_bytes() => {
            return Ok(outcome)
        }
        Some((_, Ok(Meta::Redirect { .. }))) => {
            return Err(refused(OP, &rel, "it is a stub of another volume"))
        }
        Some((_, Ok(Meta::Special { .. }))) => {
            return Err(refused(OP, &rel, "it is an inert special file"))
        }
        Some((_, Err(source))) => {
            return Err(ToolError::BadMeta {
                op: OP,
                path: rel.clone(),
                source,
            })
        }
    }
    let size = file.metadata().map_err(io_err("examine", &rel))?.len();
    if let Ok(existing) = store.stat_object(&parts) {
        // Left by an interrupted dehydrate (or hydrate) of this very file: same bytes.
        let same = existing.st_mode & libc::S_IFMT == libc::S_IFREG
            && store
                .open_object(&parts)
                .and_then(|mut o| same_bytes(&mut o, &mut &file))
                .unwrap_or(false);
        if !same {
            return Err(refused(
                OP,
                &rel,
                format!(
                    "a stored object without a stub is already at {}; `fsredirect repair` \
                     moves it to lost+found",
                    volume.data.join(&rel).display()
                ),
            ));
        }
    }
    let guest_ino = fstat(&file).map_err(io_err("examine", &rel))?.st_ino;
    let path_bytes = rel.as_os_str().as_bytes().to_vec();
    let intent = store
        .intents()
        .begin(&Intent::Place {
            path: path_bytes.clone(),
            guest_ino,
        })
        .map_err(io_err("log the change of", &rel))?;
    let meta = Meta::redirect(volume.name.as_bytes(), &path_bytes);
    relocate::into_store(&store, &file, &parts, crate::meta::own_xattr_name(), &meta)
        .map_err(io_err("move into the store", &rel))?;
    drop(intent);
    outcome.changed = true;
    outcome.bytes = size;
    outcome.against_policy = !policy_redirects(share, &rel, size);
    Ok(outcome)
}

fn same_bytes(a: &mut File, b: &mut &File) -> io::Result<bool> {
    use std::io::{Seek, SeekFrom};
    if a.metadata()?.len() != b.metadata()?.len() {
        return Ok(false);
    }
    b.seek(SeekFrom::Start(0))?;
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    let result = loop {
        let n = a.read(&mut ba)?;
        if n == 0 {
            break true;
        }
        b.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            break false;
        }
    };
    b.seek(SeekFrom::Start(0))?;
    Ok(result)
}

/// A prepared file renamed over the stub as a [`Landing`]: the tools' move out of the
/// store, which puts the whole file in place at once.
struct Replacement<'a> {
    tmp: TempFile,
    dir: &'a File,
    name: &'a CString,
    stub: &'a File,
    stub_stat: libc::stat64,
}

impl Landing for Replacement<'_> {
    fn file(&self) -> &File {
        &self.tmp.file
    }

    fn prepare(&mut self) -> io::Result<()> {
        guest::copy_guest_xattrs(self.stub, &self.tmp.file)?;
        guest::copy_owner_mode_times(&self.tmp.file, &self.stub_stat)
    }

    fn commit(&mut self, store: &Store) -> io::Result<()> {
        store.before(&StoreOp::Namespace(Namespace::Rename))?;
        self.tmp.replace(self.dir, self.name)
    }

    fn make_durable(&mut self, store: &Store) -> io::Result<()> {
        store.sync_dir(self.dir)
    }

    fn abandon(&mut self, _store: &Store) {
        // The temporary file goes with `self.tmp`.
    }
}

/// A new file in a directory, unnamed until [`TempFile::replace`] when the file system
/// supports `O_TMPFILE`, so that a crash leaves nothing behind.
struct TempFile {
    file: File,
    /// The name it has, when it had to be created named; removed if never placed.
    name: Option<CString>,
    dir_fd: i32,
}

impl TempFile {
    fn new(dir: &File) -> io::Result<Self> {
        // SAFETY: openat on a directory we hold, with a NUL-terminated name.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                c".".as_ptr(),
                libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC,
                0o600,
            )
        };
        if fd >= 0 {
            return Ok(TempFile {
                // SAFETY: a new descriptor nothing else owns.
                file: unsafe { File::from_raw_fd(fd) },
                name: None,
                dir_fd: dir.as_raw_fd(),
            });
        }
        let name = CString::new(format!(".fsredirect-hydrate-{}", std::process::id()))
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: as above; O_EXCL never reuses an existing file.
        let fd = check(unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                0o600,
            )
        })?;
        Ok(TempFile {
            // SAFETY: a new descriptor nothing else owns.
            file: unsafe { File::from_raw_fd(fd) },
            name: Some(name),
            dir_fd: dir.as_raw_fd(),
        })
    }

    /// Gives the file the name `name` in `dir`, atomically replacing what is there.
    fn replace(&mut self, dir: &File, name: &CString) -> io::Result<()> {
        let temp = match &self.name {
            Some(n) => n.clone(),
            None => {
                let n = CString::new(format!(".fsredirect-hydrate-{}", std::process::id()))
                    .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
                let proc_path = CString::new(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
                    .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
                // SAFETY: linking our own O_TMPFILE descriptor (through /proc, which needs no
                // capability) to a new name in a directory we hold.
                check(unsafe {
                    libc::linkat(
                        libc::AT_FDCWD,
                        proc_path.as_ptr(),
                        dir.as_raw_fd(),
                        n.as_ptr(),
                        libc::AT_SYMLINK_FOLLOW,
                    )
                })?;
                self.name = Some(n.clone());
                n
            }
        };
        // SAFETY: single names under a directory descriptor we hold.
        check(unsafe {
            libc::renameat(
                dir.as_raw_fd(),
                temp.as_ptr(),
                dir.as_raw_fd(),
                name.as_ptr(),
            )
        })?;
        self.name = None;
        Ok(())
    }
}

impl Drop for TempFile {
    /// Removes a named temporary file that was never put in place.
    fn drop(&mut self) {
        if let Some(name) = &self.name {
            // SAFETY: one name under the directory descriptor, still open (the caller holds
            // it for the life of this value).
            unsafe { libc::unlinkat(self.dir_fd, name.as_ptr(), 0) };
        }
    }
}

impl Outcome for ConvertOutcome {
    fn human(&self) -> String {
        let mut out = String::new();
        if let Some(r) = &self.recovered {
            out += &format!(
                "recovery after an unclean stop ran first ({} logged operations settled)\n",
                r.settled
            );
        }
        out += &match (self.operation, self.changed) {
            ("hydrate", true) => format!(
                "hydrated {}: {} now in the guest tree; stored object removed\n",
                self.path.display(),
                bytes(self.bytes)
            ),
            ("hydrate", false) => format!(
                "{} is already an inline file; nothing to do\n",
                self.path.display()
            ),
            (_, true) => format!(
                "dehydrated {}: {} now in the store; the guest tree keeps a stub\n",
                self.path.display(),
                bytes(self.bytes)
            ),
            (_, false) => format!("{} is already a stub; nothing to do\n", self.path.display()),
        };
        if self.against_policy {
            out +=
                &format!(
                "note: the share's policy would place it {}; the server moves it there when it \
                 next changes\n",
                if self.operation == "hydrate" { "in the store" } else { "inline" }
            );
        }
        out
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "share": self.share,
            "operation": self.operation,
            "path": json_path(&self.path),
            "changed": self.changed,
            "bytes": self.bytes,
            "recovered": self.recovered.as_ref().map(|r| r.settled),
            "against_policy": self.against_policy,
        })
    }

    fn status(&self) -> Status {
        Status::Clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::read_path;
    use crate::testshare::TestShare;
    use crate::verify::verify_share;
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn hydrate_puts_the_data_in_the_guest_tree_and_removes_the_object() {
        let t = TestShare::new();
        t.write("d/a", b"hello");
        fs::set_permissions(t.guest.join("d/a"), fs::Permissions::from_mode(0o640)).unwrap();
        let before = fs::metadata(t.guest.join("d/a")).unwrap();
        let out = hydrate(&t.share, Path::new("d/a")).unwrap();
        assert!(out.changed);
        assert_eq!(out.bytes, 5);
        assert_eq!(fs::read(t.guest.join("d/a")).unwrap(), b"hello");
        let after = fs::metadata(t.guest.join("d/a")).unwrap();
        assert_eq!(after.mode(), before.mode());
        assert_eq!(
            (after.mtime(), after.mtime_nsec()),
            (before.mtime(), before.mtime_nsec())
        );
        assert!(read_path(&t.guest.join("d/a")).unwrap().is_none());
        assert!(!t.volume.join("d/a").exists());
        assert_eq!(
            fs::read_dir(t.guest.join("d")).unwrap().count(),
            1,
            "no temporary left"
        );
        assert_eq!(verify_share(&t.share).unwrap(), vec![]);
    }

    #[test]
    fn hydrate_keeps_guest_xattrs() {
        let t = TestShare::new();
        t.write("a", b"x");
        let f = fs::File::open(t.guest.join("a")).unwrap();
        if crate::meta::set_xattr(&f, c"user.tag", b"v").is_err() {
            eprintln!("skipped: no user xattrs on this file system");
            return;
        }
        hydrate(&t.share, Path::new("a")).unwrap();
        let f = fs::File::open(t.guest.join("a")).unwrap();
        assert_eq!(
            crate::meta::get_xattr(&f, c"user.tag").unwrap().as_deref(),
            Some(&b"v"[..])
        );
    }

    #[test]
    fn hydrate_of_an_inline_file_changes_nothing() {
        let t = TestShare::new();
        fs::write(t.guest.join("plain"), b"p").unwrap();
        let out = hydrate(&t.share, Path::new("plain")).unwrap();
        assert!(!out.changed);
        assert!(out.human().contains("already an inline file"));
    }

    #[test]
    fn hydrate_refuses_a_stub_without_data() {
        let t = TestShare::new();
        t.write("a", b"x");
        fs::remove_file(t.volume.join("a")).unwrap();
        let err = hydrate(&t.share, Path::new("a")).unwrap_err();
        assert!(err.to_string().contains("fsredirect repair"), "{err}");
        assert!(read_path(&t.guest.join("a")).unwrap().is_some());
    }

    #[test]
    fn hydrate_leaves_a_setuid_file_in_the_store() {
        let t = TestShare::new();
        t.write("a", b"#!/bin/sh\nid\n");
        fs::set_permissions(t.guest.join("a"), fs::Permissions::from_mode(0o4755)).unwrap();
        let err = hydrate(&t.share, Path::new("a")).unwrap_err();
        assert!(err.to_string().contains("setuid"), "{err}");
        assert!(read_path(&t.guest.join("a")).unwrap().is_some());
        assert_eq!(fs::read(t.volume.join("a")).unwrap(), b"#!/bin/sh\nid\n");
    }

    #[test]
    fn hydrate_refuses_a_hard_linked_stub() {
        let t = TestShare::new();
        t.write("a", b"x");
        t.serve().link("a", "b");
        let err = hydrate(&t.share, Path::new("a")).unwrap_err();
        assert!(err.to_string().contains("2 hard links"), "{err}");
    }

    #[test]
    fn hydrate_refuses_a_path_through_a_symlink() {
        let t = TestShare::new();
        t.write("d/a", b"x");
        std::os::unix::fs::symlink("d", t.guest.join("l")).unwrap();
        let err = hydrate(&t.share, Path::new("l/a")).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
    }

    #[test]
    fn dehydrate_makes_a_sparse_stub_and_an_object_in_place() {
        let t = TestShare::new();
        fs::create_dir(t.guest.join("d")).unwrap();
        fs::write(t.guest.join("d/f"), vec![9u8; 10_000]).unwrap();
        let before = fs::metadata(t.guest.join("d/f")).unwrap();
        let out = dehydrate(&t.share, &t.guest.join("d/f")).unwrap();
        assert!(out.changed);
        let after = fs::metadata(t.guest.join("d/f")).unwrap();
        assert_eq!(after.ino(), before.ino());
        assert_eq!((after.len(), after.blocks()), (10_000, 0));
        assert_eq!(
            (after.mtime(), after.mtime_nsec()),
            (before.mtime(), before.mtime_nsec())
        );
        assert_eq!(fs::read(t.volume.join("d/f")).unwrap(), vec![9u8; 10_000]);
        let obj = fs::metadata(t.volume.join("d/f")).unwrap();
        assert_eq!(obj.mode() & 0o7777, 0o600);
        assert_eq!(fs::read_dir(t.control.join("orphans")).unwrap().count(), 0);
        assert_eq!(verify_share(&t.share).unwrap(), vec![]);
    }

    #[test]
    fn dehydrate_then_hydrate_round_trips_through_the_server() {
        let t = TestShare::new();
        fs::write(t.guest.join("f"), b"round trip").unwrap();
        dehydrate(&t.share, Path::new("f")).unwrap();
        assert!(!dehydrate(&t.share, Path::new("f")).unwrap().changed);
        hydrate(&t.share, Path::new("f")).unwrap();
        assert_eq!(fs::read(t.guest.join("f")).unwrap(), b"round trip");
        assert_eq!(verify_share(&t.share).unwrap(), vec![]);
    }

    #[test]
    fn dehydrate_refuses_to_overwrite_a_different_object() {
        let t = TestShare::new();
        fs::write(t.guest.join("f"), b"mine").unwrap();
        fs::write(t.volume.join("f"), b"someone else's").unwrap();
        let err = dehydrate(&t.share, Path::new("f")).unwrap_err();
        assert!(err.to_string().contains("lost+found"), "{err}");
        assert_eq!(fs::read(t.volume.join("f")).unwrap(), b"someone else's");
    }

    #[test]
    fn dehydrate_finishes_after_an_interrupted_run_left_the_object() {
        let t = TestShare::new();
        fs::write(t.guest.join("f"), b"same").unwrap();
        fs::write(t.volume.join("f"), b"same").unwrap();
        assert!(dehydrate(&t.share, Path::new("f")).unwrap().changed);
        assert_eq!(verify_share(&t.share).unwrap(), vec![]);
    }

    #[test]
    fn dehydrate_refuses_a_special_file() {
        let t = TestShare::new();
        t.serve().mkfifo("p");
        let err = dehydrate(&t.share, Path::new("p")).unwrap_err();
        assert!(err.to_string().contains("special"), "{err}");
    }

    #[test]
    fn no_intent_record_is_left_behind() {
        let t = TestShare::new();
        t.write("a", b"data");
        hydrate(&t.share, Path::new("a")).unwrap();
        dehydrate(&t.share, Path::new("a")).unwrap();
        assert_eq!(fs::read_dir(t.control.join("intent")).unwrap().count(), 0);
    }

    #[test]
    fn a_crash_after_the_hydrate_rename_is_settled_by_recovery() {
        let t = TestShare::new();
        t.write("a", b"data");
        // What a hydrate killed between its rename and the object's removal leaves: the
        // inline file, the object, and the logged intent naming the new file.
        fs::remove_file(t.guest.join("a")).unwrap();
        fs::write(t.guest.join("a"), b"data").unwrap();
        let ino = fs::metadata(t.guest.join("a")).unwrap().ino();
        let store = crate::Store::open(t.volume.parent().unwrap(), "t").unwrap();
        std::mem::forget(
            store
                .intents()
                .begin(&Intent::Place {
                    path: b"a".to_vec(),
                    guest_ino: ino,
                })
                .unwrap(),
        );
        drop(store);
        fs::remove_file(t.control.join("clean")).unwrap();
        // The next tool (or server) recovers first.
        let out = hydrate(&t.share, Path::new("a")).unwrap();
        assert_eq!(out.recovered.unwrap().settled, 1);
        assert!(!t.volume.join("a").exists());
        assert_eq!(verify_share(&t.share).unwrap(), vec![]);
    }

    #[test]
    fn dehydrate_against_the_policy_says_so() {
        let t = TestShare::new();
        fs::write(t.guest.join("small"), b"x").unwrap();
        let share = ShareSpec::parse(&format!("{},policy=min-size:1K", t.share)).unwrap();
        let out = dehydrate(&share, Path::new("small")).unwrap();
        assert!(out.against_policy);
        assert!(
            out.human().contains("policy would place it inline"),
            "{}",
            out.human()
        );
    }
}
