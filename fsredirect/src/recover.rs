//! Recovery after a server died (no clean-stop marker in the volume's control area).
//!
//! The operations order their two halves so that a crash leaves states this pass can put
//! right without guessing:
//! - truncates change the stub first and writes change the data first, so after a crash
//!   the stub's size is the one the guest last saw acknowledged or is about to: the stored
//!   object is cut or extended (with zeros) to the stub's size, never the reverse, so no
//!   stale bytes can reappear past a truncate;
//! - a rename of a redirected file records the new path in the stub before moving the
//!   object, so an object moved without its stub is found through that record and moved
//!   back under the stub's name.
//!
//! Operations that touch both sides (create, link, unlink, rename, including directory and
//! overwriting renames) are first settled from the intent log ([`replay_intents`]); objects
//! without a stub that no record explains are left in place for a later gc.

use std::ffi::CString;
use std::fmt;
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::intent::Intent;
use crate::meta::decoded_at;
use crate::meta::Meta;
use crate::names::validate_name;
use crate::store::Store;

/// What a recovery pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Intent records settled (each operation completed or undone).
    pub intents: usize,
    /// Intent records this version could not read, dropped.
    pub unreadable_intents: usize,
    /// Redirected stubs examined.
    pub stubs: usize,
    /// Stored objects cut or extended to their stub's size.
    pub resized: usize,
    /// Stored objects moved back under their stub's name.
    pub moved_back: usize,
    /// Stubs whose object could not be found (their files read as errors).
    pub missing: usize,
    /// Objects of files unlinked while open, removed from the orphan area.
    pub orphans: usize,
    /// How long the pass took.
    pub duration: Duration,
}

impl RecoveryReport {
    /// How many things were put right (records settled, objects resized or moved back,
    /// orphans removed).
    pub fn repairs(&self) -> usize {
        self.intents + self.unreadable_intents + self.resized + self.moved_back + self.orphans
    }
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} logged operations settled ({} unreadable records dropped); {} stubs examined: \
             {} objects resized to their stub, {} moved back under their stub, {} missing; \
             {} orphans removed; {:.1} ms",
            self.intents,
            self.unreadable_intents,
            self.stubs,
            self.resized,
            self.moved_back,
            self.missing,
            self.orphans,
            self.duration.as_secs_f64() * 1e3
        )
    }
}

/// The whole recovery after an unclean stop, in order: settle the intent log, reconcile
/// every stub with its object, clear the orphan area, then sync both trees so that the
/// repairs are durable before anything is served. Running it again changes nothing.
pub fn run(guest: &Path, store: &Store) -> io::Result<RecoveryReport> {
    let start = Instant::now();
    let (intents, unreadable_intents) = replay_intents(guest, store)?;
    let mut report = recover(guest, store)?;
    report.intents = intents;
    report.unreadable_intents = unreadable_intents;
    report.orphans = store.clear_orphans().map_err(io::Error::other)?;
    store.syncfs()?;
    let guest_dir = fs::File::open(guest)?;
    // SAFETY: syncfs on a descriptor we own; no memory is involved.
    crate::beneath::check(unsafe { libc::syncfs(guest_dir.as_raw_fd()) })?;
    report.duration = start.elapsed();
    Ok(report)
}

/// Settles every operation the intent log shows unfinished: each one is completed if its
/// guest-tree half happened and undone otherwise, so the store mirrors the guest tree.
/// Returns how many records were settled and how many could not be read. Run before
/// [`recover`] and before orphans are cleared (an interrupted overwrite may need its victim
/// back).
pub fn replay_intents(guest: &Path, store: &Store) -> io::Result<(usize, usize)> {
    let log = store.intents();
    let records = log.leftovers()?;
    let (mut settled, mut unreadable) = (0, 0);
    for (name, intent) in records {
        match intent {
            None => {
                log::warn!("recovery: unreadable intent record {name:?} dropped");
                unreadable += 1;
            }
            Some(intent) => {
                settle(guest, store, &intent)?;
                log::info!("recovery: settled unfinished {intent:?}");
                settled += 1;
            }
        }
        log.remove(&name)?;
    }
    log.remove_idle_slots()?;
    Ok((settled, unreadable))
}

fn settle(guest: &Path, store: &Store, intent: &Intent) -> io::Result<()> {
    let guest_path = |p: &[u8]| guest.join(std::ffi::OsStr::from_bytes(p));
    let parts = |p: &[u8]| split(p).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL));
    match intent {
        // The guest never saw these complete unless the stub (with its metadata) exists.
        Intent::Create { path } => {
            let stub = guest_path(path);
            if !is_redirect_stub(&stub) {
                if fs::symlink_metadata(&stub).is_ok_and(|m| m.is_file() && m.len() == 0) {
                    fs::remove_file(&stub)?;
                }
                store.remove(&parts(path)?, false)?;
            }
        }
        Intent::Link { path } | Intent::Unlink { path } => {
            if fs::symlink_metadata(guest_path(path)).is_err() {
                store.remove(&parts(path)?, false)?;
            }
        }
        // While the metadata is on the stub the object is the data (a half-copied stub is
        // punched back to a hole); without it the guest-tree file is (the object goes).
        Intent::Place { path, guest_ino } => {
            let file = guest_path(path);
            if ino_of(&file) != Some(*guest_ino) {
                if is_redirect_stub(&file) {
                    // A hydrate cut short before its new file took the stub's place: the
                    // stub and its object stand as they were.
                    log::info!("recovery: hydrate of {file:?} had not happened; nothing to do");
                } else {
                    log::warn!(
                        "recovery: placement change of {file:?} left for verify: file replaced"
                    );
                }
            } else if is_redirect_stub(&file) {
                crate::relocate::make_sparse(&crate::relocate::open_file(&file)?)?;
            } else if store
                .stat_object(&parts(path)?)
                .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG)
            {
                store.remove(&parts(path)?, false)?;
            }
        }
        Intent::Rename {
            new,
            guest_ino,
            store_from,
            store_to,
            store_ino,
            aside,
            exchange,
            ..
        } => {
            let guest_done = ino_of(&guest_path(new)) == Some(*guest_ino);
            if *store_ino != 0 {
                let (from, to) = (parts(store_from)?, parts(store_to)?);
                let store_done = store.stat_object(&to).ok().map(|s| s.st_ino) == Some(*store_ino);
                if guest_done != store_done {
                    if *exchange {
                        store.rename(&from, &to, libc::RENAME_EXCHANGE)?;
                    } else if guest_done {
                        store.rename(&from, &to, 0)?;
                    } else {
                        store.rename(&to, &from, 0)?;
                    }
                }
            }
            if !aside.is_empty() {
                let orphan = CString::new(aside.clone())
                    .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
                let result = if guest_done {
                    store.remove_orphan(&orphan)
                } else {
                    store.unorphan(&orphan, &parts(new)?)
                };
                match result {
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                    other => other?,
                }
            }
        }
    }
    Ok(())
}

fn ino_of(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    fs::symlink_metadata(path).ok().map(|m| m.ino())
}

/// Reconciles every redirected stub under `guest` with its object in `store`.
pub fn recover(guest: &Path, store: &Store) -> io::Result<RecoveryReport> {
    let mut report = RecoveryReport::default();
    walk(guest, &mut Vec::new(), &mut |parts, stub| {
        let Some(Meta::Redirect {
            portion, truncated, ..
        }) = decoded_at(stub)?
        else {
            return Ok(());
        };
        report.stubs += 1;
        let stub_size = fs::symlink_metadata(stub)?.len();
        match store.stat_object(parts) {
            Ok(obj) => {
                if obj.st_size as u64 != stub_size {
                    store.set_len(&store.open_object(parts)?, stub_size)?;
                    log::info!(
                        "recovery: object {:?} resized from {} to its stub's {stub_size} bytes",
                        String::from_utf8_lossy(&crate::names::join(parts)),
                        obj.st_size
                    );
                    report.resized += 1;
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let recorded = (!truncated).then(|| split(&portion)).flatten();
                let movable = recorded.as_ref().is_some_and(|old| {
                    old.as_slice() != parts
                        && store.stat_object(old).is_ok()
                        && !is_redirect_stub(
                            &guest.join(Path::new(std::ffi::OsStr::from_bytes(&portion))),
                        )
                });
                match (recorded, movable) {
                    (Some(old), true) => {
                        store.rename(&old, parts, 0)?;
                        if store.stat_object(parts)?.st_size as u64 != stub_size {
                            store.set_len(&store.open_object(parts)?, stub_size)?;
                        }
                        log::info!(
                            "recovery: object {:?} moved back under its stub {:?}",
                            String::from_utf8_lossy(&portion),
                            String::from_utf8_lossy(&crate::names::join(parts))
                        );
                        report.moved_back += 1;
                    }
                    _ => {
                        log::error!(
                            "recovery: no stored object for stub {:?}",
                            String::from_utf8_lossy(&crate::names::join(parts))
                        );
                        report.missing += 1;
                    }
                }
            }
            Err(e) => return Err(e),
        }
        Ok(())
    })?;
    Ok(report)
}

fn is_redirect_stub(path: &Path) -> bool {
    matches!(decoded_at(path), Ok(Some(Meta::Redirect { .. })))
}

/// Splits a recorded portion into validated components.
fn split(portion: &[u8]) -> Option<Vec<CString>> {
    let parts: Option<Vec<CString>> = portion
        .split(|&b| b == b'/')
        .map(|p| CString::new(p).ok())
        .collect();
    parts.filter(|p| p.iter().all(|c| validate_name(c).is_ok()))
}

/// Calls `f` with the components and path of every regular file under `dir`, never
/// following symlinks.
fn walk(
    dir: &Path,
    parts: &mut Vec<CString>,
    f: &mut dyn FnMut(&[CString], &Path) -> io::Result<()>,
) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let kind = fs::symlink_metadata(&path)?.file_type();
        let name = CString::new(entry.file_name().as_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        parts.push(name);
        if kind.is_dir() {
            walk(&path, parts, f)?;
        } else if kind.is_file() {
            f(parts, &path)?;
        }
        parts.pop();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{FsConfig, RedirectFs};
    use crate::share::ShareSpec;
    use fuse_backend_rs::abi::fuse_abi::{CreateIn, FsOptions};
    use fuse_backend_rs::api::filesystem::{Context, FileSystem};
    use std::path::PathBuf;

    struct Dirs {
        _tmp: tempfile::TempDir,
        share: ShareSpec,
        guest: PathBuf,
        volume: PathBuf,
        marker: PathBuf,
    }

    fn dirs() -> Dirs {
        let tmp = tempfile::tempdir().unwrap();
        let guest = tmp.path().join("g");
        fs::create_dir(&guest).unwrap();
        let share = ShareSpec::parse(&format!(
            "tag=t,dir={},store={}",
            guest.display(),
            tmp.path().join("s").display()
        ))
        .unwrap();
        Dirs {
            volume: tmp.path().join("s/t"),
            marker: tmp.path().join("s/.fsredirect/t/clean"),
            guest,
            share,
            _tmp: tmp,
        }
    }

    /// Creates a redirected file through the file system, then stops the server cleanly.
    fn make_file(d: &Dirs, name: &std::ffi::CStr, data: &[u8]) {
        let fs = RedirectFs::new(&d.share, FsConfig::default()).unwrap();
        fs.init(FsOptions::empty()).unwrap();
        let ctx = Context::new();
        let args = CreateIn {
            flags: libc::O_RDWR as u32,
            mode: libc::S_IFREG | 0o644,
            umask: 0,
            fuse_flags: 0,
        };
        let (entry, handle, _, _) = fs.create(&ctx, 1, name, args).unwrap();
        let handle = handle.unwrap();
        if !data.is_empty() {
            fs.fallocate(&ctx, entry.inode, handle, 0, 0, data.len() as u64)
                .unwrap();
        }
        fs.release(&ctx, entry.inode, 0, handle, false, false, None)
            .unwrap();
        drop(fs);
        fs::write(d.volume.join(name.to_str().unwrap()), data).unwrap();
    }

    fn reopen(d: &Dirs) {
        drop(RedirectFs::new(&d.share, FsConfig::default()).unwrap());
    }

    fn meta_name() -> &'static std::ffi::CStr {
        crate::meta::own_xattr_name()
    }

    #[test]
    fn object_longer_than_stub_is_cut_after_a_crash() {
        let d = dirs();
        make_file(&d, c"f", b"0123456789");
        // A write that reached the object but not the stub, then a kill.
        fs::write(d.volume.join("f"), b"0123456789stale").unwrap();
        fs::remove_file(&d.marker).unwrap();
        reopen(&d);
        assert_eq!(fs::read(d.volume.join("f")).unwrap(), b"0123456789");
    }

    #[test]
    fn object_shorter_than_stub_is_extended_with_zeros_after_a_crash() {
        let d = dirs();
        make_file(&d, c"f", b"abcd");
        // A truncate-extend that reached the stub but not the object.
        fs::File::options()
            .write(true)
            .open(d.guest.join("f"))
            .unwrap()
            .set_len(8)
            .unwrap();
        fs::remove_file(&d.marker).unwrap();
        reopen(&d);
        assert_eq!(fs::read(d.volume.join("f")).unwrap(), b"abcd\0\0\0\0");
    }

    #[test]
    fn object_moved_ahead_of_its_stub_is_moved_back_after_a_crash() {
        let d = dirs();
        make_file(&d, c"a", b"data");
        // A rename that recorded "b" and moved the object, then died before the stub moved.
        let value = Meta::redirect(b"t", b"b").encode();
        let stub = CString::new(d.guest.join("a").as_os_str().as_bytes()).unwrap();
        // SAFETY: valid C strings and a value buffer of the given length.
        let res = unsafe {
            libc::lsetxattr(
                stub.as_ptr(),
                meta_name().as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        assert_eq!(res, 0);
        fs::rename(d.volume.join("a"), d.volume.join("b")).unwrap();
        fs::remove_file(&d.marker).unwrap();
        reopen(&d);
        assert_eq!(fs::read(d.volume.join("a")).unwrap(), b"data");
        assert!(!d.volume.join("b").exists());
    }

    #[test]
    fn clean_stop_skips_recovery() {
        let d = dirs();
        make_file(&d, c"f", b"0123");
        fs::write(d.volume.join("f"), b"0123+").unwrap();
        reopen(&d);
        // Nothing examined the share: the disagreement is still there for verify to report.
        assert_eq!(fs::read(d.volume.join("f")).unwrap(), b"0123+");
    }

    #[test]
    fn report_counts_what_was_done() {
        let d = dirs();
        make_file(&d, c"f", b"0123");
        fs::write(d.volume.join("f"), b"0123+").unwrap();
        make_file(&d, c"g", b"x");
        fs::remove_file(d.volume.join("g")).unwrap();
        let store = Store::open(&d.share.store.as_ref().unwrap().root, "t").unwrap();
        let report = recover(&d.guest, &store).unwrap();
        assert_eq!(
            (
                report.stubs,
                report.resized,
                report.moved_back,
                report.missing
            ),
            (2, 1, 0, 1)
        );
    }

    fn ino(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        fs::symlink_metadata(path).unwrap().ino()
    }

    /// Runs `crash` with the volume's store open, leaves its intent records behind as a
    /// killed server would, and restarts the file system (which recovers).
    fn crash_then_restart(d: &Dirs, crash: impl FnOnce(&Store)) {
        let store = Store::open(&d.share.store.as_ref().unwrap().root, "t").unwrap();
        crash(&store);
        drop(store);
        fs::remove_file(&d.marker).unwrap();
        reopen(d);
        assert!(fs::read_dir(d.marker.parent().unwrap().join("intent"))
            .unwrap()
            .next()
            .is_none());
    }

    fn c(s: &str) -> CString {
        CString::new(s).unwrap()
    }

    #[test]
    fn rename_interrupted_after_store_half_is_undone() {
        let d = dirs();
        make_file(&d, c"a", b"data");
        crash_then_restart(&d, |store| {
            let intent = Intent::Rename {
                old: b"a".to_vec(),
                new: b"b".to_vec(),
                guest_ino: ino(&d.guest.join("a")),
                store_from: b"a".to_vec(),
                store_to: b"b".to_vec(),
                store_ino: ino(&d.volume.join("a")),
                aside: Vec::new(),
                exchange: false,
            };
            std::mem::forget(store.intents().begin(&intent).unwrap());
            store.rename(&[c("a")], &[c("b")], 0).unwrap();
        });
        assert_eq!(fs::read(d.volume.join("a")).unwrap(), b"data");
        assert!(!d.volume.join("b").exists());
    }

    #[test]
    fn directory_rename_interrupted_after_store_half_is_undone() {
        let d = dirs();
        fs::create_dir(d.guest.join("d")).unwrap();
        make_file(&d, c"top", b"x");
        // Put a redirected file inside d by moving a made one there on both sides.
        fs::create_dir(d.volume.join("d")).unwrap();
        fs::rename(d.guest.join("top"), d.guest.join("d/f")).unwrap();
        fs::rename(d.volume.join("top"), d.volume.join("d/f")).unwrap();
        crash_then_restart(&d, |store| {
            let intent = Intent::Rename {
                old: b"d".to_vec(),
                new: b"e".to_vec(),
                guest_ino: ino(&d.guest.join("d")),
                store_from: b"d".to_vec(),
                store_to: b"e".to_vec(),
                store_ino: ino(&d.volume.join("d")),
                aside: Vec::new(),
                exchange: false,
            };
            std::mem::forget(store.intents().begin(&intent).unwrap());
            // Store half done (it comes first), killed before the guest half.
            store.rename(&[c("d")], &[c("e")], 0).unwrap();
        });
        assert_eq!(fs::read(d.volume.join("d/f")).unwrap(), b"x");
        assert!(!d.volume.join("e").exists());
    }

    #[test]
    fn overwriting_rename_interrupted_before_guest_half_restores_the_victim() {
        let d = dirs();
        make_file(&d, c"a", b"new");
        make_file(&d, c"b", b"victim");
        crash_then_restart(&d, |store| {
            let aside = store.orphan_name(7);
            let intent = Intent::Rename {
                old: b"a".to_vec(),
                new: b"b".to_vec(),
                guest_ino: ino(&d.guest.join("a")),
                store_from: b"a".to_vec(),
                store_to: b"b".to_vec(),
                store_ino: ino(&d.volume.join("a")),
                aside: aside.to_bytes().to_vec(),
                exchange: false,
            };
            std::mem::forget(store.intents().begin(&intent).unwrap());
            store.orphan_as(&[c("b")], &aside).unwrap();
            store.rename(&[c("a")], &[c("b")], 0).unwrap();
        });
        assert_eq!(fs::read(d.volume.join("a")).unwrap(), b"new");
        assert_eq!(fs::read(d.volume.join("b")).unwrap(), b"victim");
    }

    #[test]
    fn rename_interrupted_after_both_halves_is_left_done() {
        let d = dirs();
        make_file(&d, c"a", b"data");
        crash_then_restart(&d, |store| {
            let intent = Intent::Rename {
                old: b"a".to_vec(),
                new: b"b".to_vec(),
                guest_ino: ino(&d.guest.join("a")),
                store_from: b"a".to_vec(),
                store_to: b"b".to_vec(),
                store_ino: ino(&d.volume.join("a")),
                aside: Vec::new(),
                exchange: false,
            };
            std::mem::forget(store.intents().begin(&intent).unwrap());
            store.rename(&[c("a")], &[c("b")], 0).unwrap();
            fs::rename(d.guest.join("a"), d.guest.join("b")).unwrap();
        });
        assert_eq!(fs::read(d.volume.join("b")).unwrap(), b"data");
        assert!(!d.volume.join("a").exists());
    }

    #[test]
    fn create_interrupted_before_metadata_is_rolled_back() {
        let d = dirs();
        make_file(&d, c"other", b"");
        crash_then_restart(&d, |store| {
            std::mem::forget(
                store
                    .intents()
                    .begin(&Intent::Create {
                        path: b"n".to_vec(),
                    })
                    .unwrap(),
            );
            store.create_object(&[c("n")]).unwrap();
            fs::write(d.guest.join("n"), b"").unwrap();
        });
        assert!(!d.guest.join("n").exists());
        assert!(!d.volume.join("n").exists());
    }
}
