//! `fsredirect repair`: fixes what verify finds, from either side, and reports each action.
//!
//! It opens the volume like a server: if the last server did not stop cleanly, its recovery
//! ([`crate::recover`]) runs first, with the crash-ordering rules (the stub's size wins:
//! after a crash it is the size the guest was last acknowledged). Then, in rounds until
//! verify finds nothing (or nothing more can be done):
//!
//! | finding | repair | why |
//! |---|---|---|
//! | object not private | mode 0600 | objects never carry exec or set-ID bits |
//! | stub holds data | its bytes saved to lost+found, then the stub made all hole | the guest reads the object; the stub's bytes are kept, not trusted |
//! | stub keeps allocated blocks, no data | the blocks freed | they hold nothing, and would read as data once the stub grows over them |
//! | size mismatch (volume stopped cleanly) | stub's size set to the object's | the guest already reads the object's size and bytes; no byte is dropped |
//! | object missing, and its stub's record names an object no stub claims | that object moved back | recovery's own rule (an interrupted rename), run through [`crate::recover::recover`] |
//! | object missing otherwise | recreated as zeros of the stub's size, and reported | the data is gone; the file keeps its size, as recovery extends a short object with zeros |
//! | object not a regular file | moved to lost+found, then recreated as above | never delete what a host user put there |
//! | object without a stub | moved to lost+found | nothing is deleted; `gc` is the tool that deletes |
//! | hard link not mirrored | linked to the reference name's object; its own object removed if identical, moved to lost+found otherwise | every name exists on both sides as one file |
//! | two stubs share one object | the second given its own copy | a write through one must not show through the other |
//! | metadata unreadable | rewritten if an object sits at its path and the stub is all hole, removed otherwise | the file stays what the server served |
//! | stub of another volume | left alone, reported | its data is elsewhere |
//! | recorded path out of date | rewritten | the hint the server would correct on lookup |
//!
//! lost+found is `<store>/.fsredirect/<volume>/lost+found/<time>-<pid>/{store,guest}/<path>`;
//! no tool ever deletes from it.

use std::collections::HashSet;
use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::check::{mismatch_json, UNCLEAN_NOTE};
use super::guest::{self, GuestTree};
use super::output::{bytes, count, json_path, Outcome, Status};
use super::{io_err, lock_shared, open_for_change, parts_of, LostFound, Recovered, Result, Volume};
use crate::meta::Meta;
use crate::meta::{read_file, read_path};
use crate::recover::recover;
use crate::share::ShareSpec;
use crate::store::Store;
use crate::verify::{check_share, has_data, Mismatch, Report};

/// Most rounds of verify-then-fix (a fix can reveal another finding: a recreated object of
/// a hard-linked stub is linked in the next round).
const ROUNDS: usize = 4;

/// One repair made (or, in a dry run, planned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    /// The file (relative to the share).
    pub path: PathBuf,
    /// The finding's kind, as in `verify --json`, or `stale-hint`.
    pub finding: &'static str,
    /// The finding, as verify writes it.
    pub message: String,
    /// What repair does about it.
    pub fix: Fix,
    /// The same, in words, with the paths it touches.
    pub action: String,
    /// Why the action failed (or cannot be done), if it did.
    pub error: Option<String>,
}

/// What `repair` did.
#[derive(Debug, Clone)]
pub struct RepairOutcome {
    /// The share.
    pub share: String,
    /// Nothing was changed; `actions` are the plan.
    pub dry_run: bool,
    /// A dry run on a volume whose recovery is pending (a real run runs it first).
    pub recovery_pending: bool,
    /// What the recovery run first did, if the last server did not stop cleanly.
    pub recovered: Option<Recovered>,
    /// Each action, in the order made.
    pub actions: Vec<Action>,
    /// What verify still reports afterwards (a real run).
    pub remaining: Vec<Mismatch>,
    /// Where repair put what it took out of the way, if anything.
    pub lost_found: Option<PathBuf>,
}

/// What to do about one finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fix {
    /// Give the object mode 0600.
    MakePrivate,
    /// Save the bytes a stub holds to lost+found, then punch them out.
    SaveStubData,
    /// Free the blocks a stub holding no data keeps.
    FreeStubBlocks,
    /// Set the stub's size to this, the object's.
    ResizeStub(u64),
    /// Move what is at the object's path to lost+found and recreate the object as zeros of
    /// this size.
    MoveAside {
        /// The size of the new object.
        recreate: u64,
    },
    /// Let recovery move back the object found at this path, where the stub's record says
    /// it was.
    MoveBack(PathBuf),
    /// Recreate a missing object as zeros of this size.
    Recreate(u64),
    /// Link the object to the object of this other name of the file (the name's own object
    /// removed when identical, moved to lost+found otherwise).
    Relink(PathBuf),
    /// Give the file its own copy of an object another file shares.
    Unshare,
    /// Move an object no stub names to lost+found.
    ToLostFound,
    /// Rewrite unreadable metadata (an object is at its path).
    RewriteMeta,
    /// Remove unreadable metadata (the file stays the ordinary file it was served as).
    DropMeta,
    /// Record the file's current path in place of this one.
    CorrectHint(PathBuf),
    /// Nothing can be done: why.
    Leave(String),
}

impl Fix {
    /// Fixes run in three phases: the ones that make sizes agree before recovery's move-back
    /// pass (which would otherwise cut objects to their stubs' sizes), the move-back pass,
    /// then the rest.
    fn phase(&self) -> u8 {
        match self {
            Fix::MakePrivate
            | Fix::SaveStubData
            | Fix::FreeStubBlocks
            | Fix::ResizeStub(_)
            | Fix::MoveAside { .. } => 0,
            Fix::MoveBack(_) => 1,
            _ => 2,
        }
    }

    /// True if the fix may put something in lost+found.
    pub fn uses_lost_found(&self) -> bool {
        matches!(
            self,
            Fix::SaveStubData | Fix::MoveAside { .. } | Fix::Relink(_) | Fix::ToLostFound
        )
    }

    fn describe(&self, lf: &LostFound, path: &Path) -> String {
        match self {
            Fix::MakePrivate => "make the object private (mode 0600)".into(),
            Fix::SaveStubData => format!(
                "save the stub's bytes to {}, then make the stub all hole again",
                lf.target("guest", path).display()
            ),
            Fix::FreeStubBlocks => "free the stub's blocks (it holds no data)".into(),
            Fix::ResizeStub(size) => format!(
                "set the stub's size to the object's, {} (the guest reads the object)",
                bytes(*size)
            ),
            Fix::MoveAside { recreate } => format!(
                "move it to {}, then recreate the object as {} of zeros (its data is lost)",
                lf.target("store", path).display(),
                bytes(*recreate)
            ),
            Fix::MoveBack(from) => format!(
                "move back the object found at {}, where the stub's record says it was",
                from.display()
            ),
            Fix::Recreate(size) => format!(
                "recreate the object as {} of zeros (its data is lost)",
                bytes(*size)
            ),
            Fix::Relink(other) => format!(
                "link it to the object of {} (its own object, if any, removed when identical, \
                 moved to lost+found otherwise)",
                other.display()
            ),
            Fix::Unshare => "give it its own copy of the object".into(),
            Fix::ToLostFound => format!(
                "move it to {} (delete it there once sure it is not needed)",
                lf.target("store", path).display()
            ),
            Fix::RewriteMeta => {
                "rewrite the metadata (its object is in the store at its path)".into()
            }
            Fix::DropMeta => {
                "remove the unreadable metadata (it stays an ordinary file, as served)".into()
            }
            Fix::CorrectHint(was) => {
                format!(
                    "record its current path (the record said {})",
                    was.display()
                )
            }
            Fix::Leave(why) => format!("leave it: {why}"),
        }
    }
}

/// One thing to fix.
struct Item {
    path: PathBuf,
    finding: &'static str,
    message: String,
    fix: Fix,
}

struct Ctx<'a> {
    share: &'a ShareSpec,
    volume: &'a Volume,
    tree: &'a GuestTree,
    lf: &'a LostFound,
    ours: &'a [u8],
}

/// Repairs `share` (or, with `dry_run`, only says what it would do); `step` is called per
/// entry walked.
pub fn repair(share: &ShareSpec, dry_run: bool, step: &mut dyn FnMut()) -> Result<RepairOutcome> {
    let mut outcome = RepairOutcome {
        share: share.to_string(),
        dry_run,
        recovery_pending: false,
        recovered: None,
        actions: Vec::new(),
        remaining: Vec::new(),
        lost_found: None,
    };
    let tree = GuestTree::open(&share.dir).map_err(io_err("open guest tree", &share.dir))?;
    if dry_run {
        // A shared lock, and nothing touched: opening the store for change would mark a
        // crashed volume clean.
        let (volume, _lock) = lock_shared(share)?;
        outcome.recovery_pending = volume.unclean();
        let lf = LostFound::new(&volume);
        let ctx = Ctx {
            share,
            volume: &volume,
            tree: &tree,
            lf: &lf,
            ours: volume.name.as_bytes(),
        };
        let report = walk(share, step)?;
        for item in plan(&ctx, &report) {
            outcome.actions.push(Action {
                action: item.fix.describe(&lf, &item.path),
                error: match &item.fix {
                    Fix::Leave(why) => Some(why.clone()),
                    _ => None,
                },
                fix: item.fix,
                path: item.path,
                finding: item.finding,
                message: item.message,
            });
        }
        outcome.remaining = report.mismatches;
        return Ok(outcome);
    }
    let (volume, store, recovered) = open_for_change(share)?;
    outcome.recovered = recovered;
    let lf = LostFound::new(&volume);
    let ctx = Ctx {
        share,
        volume: &volume,
        tree: &tree,
        lf: &lf,
        ours: volume.name.as_bytes(),
    };
    for _ in 0..ROUNDS {
        let report = walk(share, step)?;
        let mut items = plan(&ctx, &report);
        if items.is_empty() {
            break;
        }
        items.sort_by_key(|i| i.fix.phase());
        let mut progress = false;
        let mut sizes_ok = true;
        let mut moved_back = false;
        for item in items {
            let action = item.fix.describe(&lf, &item.path);
            let result = match &item.fix {
                Fix::MoveBack(_) if !sizes_ok => Err(
                    "not attempted: a size repair failed, and recovery's move-back pass would \
                     cut that object"
                        .to_string(),
                ),
                Fix::MoveBack(from) => {
                    let pass = if moved_back {
                        Ok(())
                    } else {
                        moved_back = true;
                        recover(&share.dir, &store)
                            .map(|_| ())
                            .map_err(|e| format!("recovery's move-back pass failed: {e}"))
                    };
                    pass.and_then(
                        |()| match fs::symlink_metadata(volume.data.join(&item.path)) {
                            Ok(_) => Ok(()),
                            Err(_) => Err(format!(
                            "recovery did not move {} back; the next round recreates the object",
                            from.display()
                        )),
                        },
                    )
                }
                fix => apply(&ctx, &store, &item.path, fix).map_err(|e| e.to_string()),
            };
            if result.is_err() {
                if matches!(item.fix, Fix::ResizeStub(_)) {
                    sizes_ok = false;
                }
            } else {
                progress = true;
            }
            // A fix tried again in a later round (another fix may have unblocked it) is
            // reported once, with its last outcome.
            outcome.actions.retain(|a| {
                a.error.is_none() || (a.path != item.path || a.finding != item.finding)
            });
            outcome.actions.push(Action {
                path: item.path,
                finding: item.finding,
                message: item.message,
                fix: item.fix,
                action,
                error: result.err(),
            });
        }
        if !progress {
            break;
        }
    }
    outcome.remaining = walk(share, step)?.mismatches;
    if lf_used(&outcome.actions) {
        outcome.lost_found = Some(lf.dir().to_path_buf());
    }
    drop(store);
    Ok(outcome)
}

fn lf_used(actions: &[Action]) -> bool {
    actions
        .iter()
        .any(|a| a.error.is_none() && a.fix.uses_lost_found())
}

fn walk(share: &ShareSpec, step: &mut dyn FnMut()) -> Result<Report> {
    check_share(share, step).map_err(io_err("walk", &share.dir))
}

/// Decides a fix for every finding of `report`.
fn plan(ctx: &Ctx, report: &Report) -> Vec<Item> {
    let mut items = Vec::new();
    // Objects that will be moved back under a stub: not strays.
    let mut claimed = HashSet::new();
    for m in &report.mismatches {
        let fix = match m {
            Mismatch::MissingObject(p) => match moved_object(ctx, report, p) {
                Some(from) => {
                    claimed.insert(from.clone());
                    Fix::MoveBack(from)
                }
                None => Fix::Recreate(stub_size(ctx, p)),
            },
            Mismatch::SizeDiffers { object, .. } => Fix::ResizeStub(*object),
            Mismatch::StubHasData(_) => Fix::SaveStubData,
            Mismatch::StubHasBlocks(_) => Fix::FreeStubBlocks,
            Mismatch::UnsafeObject(_) => Fix::MakePrivate,
            Mismatch::ObjectNotRegular(p) => Fix::MoveAside {
                recreate: stub_size(ctx, p),
            },
            Mismatch::StrayObject(_) => Fix::ToLostFound,
            Mismatch::LinksDiffer { other, .. } => Fix::Relink(other.clone()),
            Mismatch::SharedObject { .. } => Fix::Unshare,
            Mismatch::BadMetadata(p) => {
                let object = ctx.volume.data.join(p);
                let stub = ctx.share.dir.join(p);
                let is_object = fs::symlink_metadata(&object).is_ok_and(|o| o.is_file());
                if is_object && !has_data(&stub).unwrap_or(true) {
                    Fix::RewriteMeta
                } else {
                    Fix::DropMeta
                }
            }
            Mismatch::WrongVolume { volume, .. } => Fix::Leave(format!(
                "its data is in volume `{volume}`: serve it with volume={volume}, or move it \
                 out of this share"
            )),
        };
        items.push(Item {
            path: m.path().to_path_buf(),
            finding: m.kind(),
            message: m.to_string(),
            fix,
        });
    }
    items.retain(|i| !(i.fix == Fix::ToLostFound && claimed.contains(&i.path)));
    for h in &report.stale_hints {
        items.push(Item {
            path: h.path.clone(),
            finding: "stale-hint",
            message: format!(
                "{}: records its old path {}",
                h.path.display(),
                h.recorded.display()
            ),
            fix: Fix::CorrectHint(h.recorded.clone()),
        });
    }
    items
}

/// The object recovery would move back under the stub at `path`: the one at the stub's
/// recorded path, if that is a whole path, holds an object and no stub (the condition
/// [`crate::recover::recover`] applies).
fn moved_object(ctx: &Ctx, report: &Report, path: &Path) -> Option<PathBuf> {
    let hint = report.stale_hints.iter().find(|h| h.path == path)?;
    if hint.truncated {
        return None;
    }
    let object = fs::symlink_metadata(ctx.volume.data.join(&hint.recorded)).ok()?;
    let stub = read_path(&ctx.share.dir.join(&hint.recorded)).ok()?;
    let claimed = matches!(stub, Some((_, Ok(Meta::Redirect { .. }))));
    (object.is_file() && !claimed).then(|| hint.recorded.clone())
}

fn stub_size(ctx: &Ctx, path: &Path) -> u64 {
    fs::symlink_metadata(ctx.share.dir.join(path))
        .map(|m| m.len())
        .unwrap_or(0)
}

fn parts(path: &Path) -> io::Result<Vec<CString>> {
    parts_of(path)
}

/// Applies one fix (all but the move-back pass).
fn apply(ctx: &Ctx, store: &Store, path: &Path, fix: &Fix) -> io::Result<()> {
    let object = ctx.volume.data.join(path);
    match fix {
        Fix::MakePrivate => {
            let f = store.open_object(&parts(path)?)?;
            set_private(&f)
        }
        Fix::SaveStubData => {
            let mut stub = ctx.tree.open_regular(path, libc::O_RDWR)?;
            let target = ctx.lf.target("guest", path);
            ctx.lf.prepare(&target).map_err(io::Error::other)?;
            let mut copy = new_private_file(&target)?;
            io::copy(&mut stub, &mut copy)?;
            copy.sync_all()?;
            let size = stub.metadata()?.len();
            guest::resize_stub(&stub, size)
        }
        Fix::FreeStubBlocks => {
            let stub = ctx.tree.open_regular(path, libc::O_WRONLY)?;
            let size = stub.metadata()?.len();
            guest::resize_stub(&stub, size)
        }
        Fix::ResizeStub(size) => {
            let stub = ctx.tree.open_regular(path, libc::O_WRONLY)?;
            guest::resize_stub(&stub, *size)
        }
        Fix::MoveAside { recreate } => {
            to_lost_found(ctx, store, path)?;
            recreate_object(store, path, *recreate)
        }
        Fix::Recreate(size) => recreate_object(store, path, *size),
        Fix::Relink(other) => {
            if let Ok(own) = fs::symlink_metadata(&object) {
                let reference = ctx.volume.data.join(other);
                if own.is_file() && same_content(&object, &reference)? {
                    store.remove(&parts(path)?, false)?;
                } else {
                    to_lost_found(ctx, store, path)?;
                }
            }
            store.link(&parts(other)?, &parts(path)?)?;
            store.sync_parent(&parts(path)?)
        }
        Fix::Unshare => {
            let mut src = store.open_object(&parts(path)?)?;
            let name = format!("repair-{}-{}", std::process::id(), unique());
            let tmp = ctx.volume.orphans().join(&name);
            // A leftover of an earlier run with the same process id: ours, under the lock.
            let _ = fs::remove_file(&tmp);
            let mut copy = new_private_file(&tmp)?;
            io::copy(&mut src, &mut copy)?;
            copy.sync_all()?;
            let name =
                CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            store.unorphan(&name, &parts(path)?)?;
            store.sync_parent(&parts(path)?)
        }
        Fix::ToLostFound => match fs::symlink_metadata(&object) {
            Ok(_) => to_lost_found(ctx, store, path),
            // Moved back under its stub by this round's recovery pass.
            Err(_) => Ok(()),
        },
        Fix::RewriteMeta | Fix::CorrectHint(_) => {
            let stub = ctx.tree.open_regular(path, libc::O_RDONLY)?;
            let attr = read_file(&stub)?
                .map(|(attr, _)| attr)
                .unwrap_or_else(crate::meta::own_xattr_name);
            let meta = Meta::redirect(ctx.ours, path.as_os_str().as_bytes());
            crate::meta::set_xattr(&stub, attr, &meta.encode())?;
            stub.sync_all()
        }
        Fix::DropMeta => {
            let stub = ctx.tree.open_regular(path, libc::O_RDONLY)?;
            if let Some((attr, _)) = read_file(&stub)? {
                crate::meta::remove_xattr(&stub, attr)?;
            }
            stub.sync_all()
        }
        Fix::Leave(why) => Err(io::Error::other(why.clone())),
        Fix::MoveBack(_) => Err(io::Error::other("moved back by the recovery pass")),
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn set_private(f: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fchmod on a descriptor we own.
    crate::beneath::check(unsafe { libc::fchmod(f.as_raw_fd(), 0o600) })?;
    f.sync_all()
}

fn new_private_file(path: &Path) -> io::Result<File> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

fn recreate_object(store: &Store, path: &Path, size: u64) -> io::Result<()> {
    let f = store.create_object(&parts(path)?)?;
    f.set_len(size)?;
    f.sync_all()?;
    store.sync_parent(&parts(path)?)
}

/// Moves the store entry at `path` into this run's lost+found, keeping its path.
fn to_lost_found(ctx: &Ctx, store: &Store, path: &Path) -> io::Result<()> {
    let target = ctx.lf.target("store", path);
    ctx.lf.prepare(&target).map_err(io::Error::other)?;
    fs::rename(ctx.volume.data.join(path), &target)?;
    match target.parent() {
        Some(dir) => store.sync_control_dir(dir),
        None => Ok(()),
    }
}

/// True if the regular files at `a` and `b` hold the same bytes.
fn same_content(a: &Path, b: &Path) -> io::Result<bool> {
    let (mut fa, mut fb) = (File::open(a)?, File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

impl Outcome for RepairOutcome {
    fn human(&self) -> String {
        let mut out = format!(
            "repair {}{}\n",
            self.share,
            if self.dry_run {
                " (dry run: nothing changed)"
            } else {
                ""
            }
        );
        if self.recovery_pending {
            out += &format!("  {UNCLEAN_NOTE}; the findings below are from before it\n");
        }
        if let Some(r) = &self.recovered {
            out += &format!(
                "  recovery after an unclean stop: {} settled, {} of {} resized to their stub, \
                 {} moved back, {} missing\n",
                count(r.settled as u64, "logged operation"),
                r.report.resized,
                count(r.report.stubs as u64, "stored object"),
                r.report.moved_back,
                r.report.missing
            );
        }
        for a in &self.actions {
            out += &format!("  {}\n", a.message);
            out += &match (&a.error, self.dry_run) {
                (None, true) => format!("    would {}\n", a.action),
                (None, false) => format!("    done: {}\n", a.action),
                (Some(_), true) => format!("    cannot {}\n", a.action),
                (Some(e), false) => format!("    FAILED: {}: {e}\n", a.action),
            };
        }
        if let Some(lf) = &self.lost_found {
            out += &format!("  kept in lost+found: {}\n", lf.display());
        }
        let failed = self.actions.iter().filter(|a| a.error.is_some()).count() as u64;
        let done = self.actions.len() as u64 - failed;
        if self.dry_run {
            if self.actions.is_empty() {
                out += "nothing to repair: every stub agrees with its stored object\n";
            } else {
                out += &format!(
                    "dry run: {} planned; run without --dry-run to make them\n",
                    count(self.actions.len() as u64, "repair")
                );
            }
        } else if self.actions.is_empty() && self.remaining.is_empty() {
            out += "nothing to repair: every stub agrees with its stored object\n";
        } else if self.remaining.is_empty() && failed == 0 {
            out += &format!("{} made; verify now finds nothing\n", count(done, "repair"));
        } else {
            out += &format!(
                "{} made, {} failed; verify still finds:\n",
                count(done, "repair"),
                failed
            );
            for m in &self.remaining {
                out += &format!("  {m}\n");
            }
        }
        out
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "share": self.share,
            "dry_run": self.dry_run,
            "recovery_pending": self.recovery_pending,
            "recovered": self.recovered.as_ref().map(|r| json!({
                "settled": r.settled,
                "stubs": r.report.stubs,
                "resized": r.report.resized,
                "moved_back": r.report.moved_back,
                "missing": r.report.missing,
            })),
            "actions": self.actions.iter().map(|a| json!({
                "path": json_path(&a.path),
                "finding": a.finding,
                "message": a.message,
                "action": a.action,
                "done": !self.dry_run && a.error.is_none(),
                "error": a.error,
            })).collect::<Vec<_>>(),
            "remaining": self.remaining.iter().map(mismatch_json).collect::<Vec<_>>(),
            "lost_found": self.lost_found.as_deref().map(json_path),
            "ok": self.status() == Status::Clean,
        })
    }

    fn status(&self) -> Status {
        let failed = self.actions.iter().any(|a| a.error.is_some());
        let clean = if self.dry_run {
            self.actions.is_empty() && !self.recovery_pending
        } else {
            self.remaining.is_empty() && !failed
        };
        if clean {
            Status::Clean
        } else {
            Status::Findings
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testshare::TestShare;
    use crate::verify::verify_share;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn run(t: &TestShare) -> RepairOutcome {
        let out = repair(&t.share, false, &mut || {}).unwrap();
        assert_eq!(verify_share(&t.share).unwrap(), vec![], "{}", out.human());
        assert_eq!(out.status(), Status::Clean, "{}", out.human());
        out
    }

    /// Every file under lost+found, relative to its run directory, with its bytes.
    fn lost_found(t: &TestShare) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        let root = t.control.join("lost+found");
        for run in fs::read_dir(&root).into_iter().flatten() {
            let run = run.unwrap().path();
            crate::tools::walk(&run, Path::new(""), &mut |rel, m| {
                if m.is_file() {
                    out.push((rel.to_path_buf(), fs::read(run.join(rel)).unwrap()));
                }
                Ok(())
            })
            .unwrap();
        }
        out
    }

    #[test]
    fn dry_run_changes_nothing_and_lists_the_plan() {
        let t = TestShare::new();
        t.write("a", b"data");
        fs::remove_file(t.volume.join("a")).unwrap();
        let out = repair(&t.share, true, &mut || {}).unwrap();
        assert_eq!(out.actions.len(), 1);
        assert_eq!(out.actions[0].finding, "object-missing");
        assert_eq!(out.status(), Status::Findings);
        assert_eq!(verify_share(&t.share).unwrap().len(), 1);
        assert!(!t.control.join("lost+found").exists());
    }

    #[test]
    fn size_mismatch_on_a_clean_volume_keeps_every_byte_of_the_object() {
        let t = TestShare::new();
        t.write("a", b"0123");
        fs::write(t.volume.join("a"), b"0123456789").unwrap();
        run(&t);
        assert_eq!(fs::read(t.volume.join("a")).unwrap(), b"0123456789");
        let stub = fs::metadata(t.guest.join("a")).unwrap();
        assert_eq!((stub.len(), stub.blocks()), (10, 0));
    }

    #[test]
    fn missing_object_is_recreated_as_zeros_of_the_stub_size() {
        let t = TestShare::new();
        t.write("d/a", b"lost bytes");
        fs::remove_file(t.volume.join("d/a")).unwrap();
        let out = run(&t);
        assert_eq!(out.actions[0].fix, Fix::Recreate(10), "{:?}", out.actions);
        assert_eq!(fs::read(t.volume.join("d/a")).unwrap(), vec![0u8; 10]);
    }

    #[test]
    fn object_moved_ahead_of_its_stub_is_moved_back_by_recovery_rules() {
        let t = TestShare::new();
        t.write("a", b"data");
        // A rename to b that moved the object, then stopped before the stub's half, while
        // the stub still records b: recovery's rule moves the object back.
        let stub = fs::File::open(t.guest.join("a")).unwrap();
        let (attr, _) = read_file(&stub).unwrap().unwrap();
        crate::meta::set_xattr(&stub, attr, &Meta::redirect(b"t", b"b").encode()).unwrap();
        fs::rename(t.volume.join("a"), t.volume.join("b")).unwrap();
        let out = run(&t);
        assert_eq!(fs::read(t.volume.join("a")).unwrap(), b"data");
        assert!(!t.volume.join("b").exists());
        assert!(
            out.actions
                .iter()
                .any(|a| matches!(a.fix, Fix::MoveBack(_))),
            "{:?}",
            out.actions
        );
        assert_eq!(lost_found(&t), vec![]);
    }

    #[test]
    fn object_without_a_stub_goes_to_lost_found_with_its_bytes() {
        let t = TestShare::new();
        t.write("keep", b"k");
        fs::create_dir(t.volume.join("d")).unwrap();
        fs::write(t.volume.join("d/stray"), b"precious").unwrap();
        run(&t);
        assert!(!t.volume.join("d/stray").exists());
        assert_eq!(
            lost_found(&t),
            vec![(PathBuf::from("store/d/stray"), b"precious".to_vec())]
        );
    }

    #[test]
    fn unmirrored_hard_link_is_relinked_and_a_differing_object_kept() {
        let t = TestShare::new();
        t.write("a", b"data");
        t.serve().link("a", "b");
        fs::remove_file(t.volume.join("b")).unwrap();
        fs::write(t.volume.join("b"), b"diff").unwrap();
        run(&t);
        let (a, b) = (
            fs::metadata(t.volume.join("a")).unwrap(),
            fs::metadata(t.volume.join("b")).unwrap(),
        );
        assert_eq!(a.ino(), b.ino());
        assert_eq!(
            lost_found(&t),
            vec![(PathBuf::from("store/b"), b"diff".to_vec())]
        );
    }

    #[test]
    fn hard_link_whose_objects_are_all_gone_is_rebuilt_as_one_object() {
        let t = TestShare::new();
        t.write("a", b"data");
        t.serve().link("a", "b");
        fs::remove_file(t.volume.join("a")).unwrap();
        fs::remove_file(t.volume.join("b")).unwrap();
        run(&t);
        let (a, b) = (
            fs::metadata(t.volume.join("a")).unwrap(),
            fs::metadata(t.volume.join("b")).unwrap(),
        );
        assert_eq!(a.ino(), b.ino());
        assert_eq!(lost_found(&t), vec![], "identical zero copies are not kept");
    }

    #[test]
    fn object_shared_by_two_stubs_is_split_keeping_its_bytes() {
        let t = TestShare::new();
        t.write("a", b"data");
        t.write("b", b"1234");
        fs::remove_file(t.volume.join("b")).unwrap();
        fs::hard_link(t.volume.join("a"), t.volume.join("b")).unwrap();
        run(&t);
        let (a, b) = (
            fs::metadata(t.volume.join("a")).unwrap(),
            fs::metadata(t.volume.join("b")).unwrap(),
        );
        assert_ne!(a.ino(), b.ino());
        assert_eq!(fs::read(t.volume.join("b")).unwrap(), b"data");
        assert_eq!(b.mode() & 0o7777, 0o600);
    }

    #[test]
    fn data_in_a_stub_is_saved_then_punched_out() {
        let t = TestShare::new();
        t.write("a", b"object");
        fs::File::options()
            .write(true)
            .open(t.guest.join("a"))
            .map(|mut f| std::io::Write::write_all(&mut f, b"stubby"))
            .unwrap()
            .unwrap();
        run(&t);
        assert_eq!(fs::metadata(t.guest.join("a")).unwrap().blocks(), 0);
        assert_eq!(fs::read(t.volume.join("a")).unwrap(), b"object");
        assert_eq!(
            lost_found(&t),
            vec![(PathBuf::from("guest/a"), b"stubby".to_vec())]
        );
    }

    #[test]
    fn blocks_a_stub_keeps_past_its_end_are_freed_and_nothing_saved() {
        let t = TestShare::new();
        t.write("a", b"object");
        let stub = fs::File::options()
            .write(true)
            .open(t.guest.join("a"))
            .unwrap();
        // SAFETY: fallocate on a descriptor we own; no memory is passed.
        let res = unsafe {
            libc::fallocate64(
                std::os::fd::AsRawFd::as_raw_fd(&stub),
                libc::FALLOC_FL_KEEP_SIZE,
                0,
                1 << 20,
            )
        };
        assert_eq!(res, 0, "{}", std::io::Error::last_os_error());
        drop(stub);
        assert_eq!(
            verify_share(&t.share).unwrap(),
            vec![crate::verify::Mismatch::StubHasBlocks("a".into())]
        );
        run(&t);
        let stub = fs::metadata(t.guest.join("a")).unwrap();
        assert_eq!((stub.len(), stub.blocks()), (6, 0));
        assert_eq!(fs::read(t.volume.join("a")).unwrap(), b"object");
        assert_eq!(lost_found(&t), vec![]);
    }

    #[test]
    fn unreadable_metadata_is_rewritten_when_the_object_is_there() {
        let t = TestShare::new();
        t.write("a", b"data");
        let stub = fs::File::open(t.guest.join("a")).unwrap();
        let (attr, _) = read_file(&stub).unwrap().unwrap();
        crate::meta::set_xattr(&stub, attr, b"junk").unwrap();
        run(&t);
        assert!(matches!(
            read_file(&stub).unwrap(),
            Some((_, Ok(Meta::Redirect { .. })))
        ));
    }

    #[test]
    fn object_that_is_not_regular_is_moved_aside_and_recreated() {
        let t = TestShare::new();
        t.write("a", b"abc");
        fs::remove_file(t.volume.join("a")).unwrap();
        fs::create_dir(t.volume.join("a")).unwrap();
        fs::write(t.volume.join("a/inside"), b"i").unwrap();
        run(&t);
        assert_eq!(fs::read(t.volume.join("a")).unwrap(), b"\0\0\0");
        assert_eq!(
            lost_found(&t),
            vec![(PathBuf::from("store/a/inside"), b"i".to_vec())]
        );
    }

    #[test]
    fn object_with_exec_bits_is_made_private() {
        let t = TestShare::new();
        t.write("a", b"abc");
        fs::set_permissions(t.volume.join("a"), fs::Permissions::from_mode(0o4755)).unwrap();
        run(&t);
        let mode = fs::metadata(t.volume.join("a")).unwrap().mode();
        assert_eq!(mode & 0o7777, 0o600);
    }

    #[test]
    fn stale_hint_is_rewritten() {
        let t = TestShare::new();
        t.write("d/f", b"x");
        t.serve().rename("d", "e");
        let out = run(&t);
        assert_eq!(out.actions.len(), 1);
        let report = check_share(&t.share, &mut || {}).unwrap();
        assert_eq!(report.stale_hints, vec![]);
    }

    #[test]
    fn unclean_volume_is_recovered_first_with_the_stub_size_winning() {
        let t = TestShare::new();
        t.write("a", b"0123");
        // A write that reached the object but not the stub, then the server died.
        fs::write(t.volume.join("a"), b"0123stale").unwrap();
        fs::remove_file(t.control.join("clean")).unwrap();
        let dry = repair(&t.share, true, &mut || {}).unwrap();
        assert!(dry.recovery_pending);
        assert!(
            !t.control.join("clean").exists(),
            "a dry run must not hide the crash"
        );
        let out = run(&t);
        assert_eq!(out.recovered.unwrap().report.resized, 1);
        assert_eq!(fs::read(t.volume.join("a")).unwrap(), b"0123");
    }

    #[test]
    fn stub_of_another_volume_is_left_and_reported() {
        let t = TestShare::new();
        t.write("a", b"data");
        let stub = fs::File::open(t.guest.join("a")).unwrap();
        let (attr, _) = read_file(&stub).unwrap().unwrap();
        crate::meta::set_xattr(&stub, attr, &Meta::redirect(b"other", b"a").encode()).unwrap();
        let out = repair(&t.share, false, &mut || {}).unwrap();
        assert_eq!(out.status(), Status::Findings);
        assert!(
            matches!(out.remaining[..], [Mismatch::WrongVolume { .. }]),
            "{:?}",
            out.remaining
        );
        assert!(out.human().contains("FAILED"), "{}", out.human());
    }

    #[test]
    fn repair_of_a_clean_share_does_nothing() {
        let t = TestShare::new();
        t.write("a", b"data");
        let out = run(&t);
        assert_eq!(out.actions, vec![]);
        assert!(out.human().contains("nothing to repair"));
    }

    #[test]
    fn object_path_blocked_by_a_stray_file_is_cleared_then_recreated() {
        let t = TestShare::new();
        t.write("d/a", b"abc");
        // The store's directory d became a file: d/a cannot be made until d is moved away.
        fs::remove_file(t.volume.join("d/a")).unwrap();
        fs::remove_dir(t.volume.join("d")).unwrap();
        fs::write(t.volume.join("d"), b"in the way").unwrap();
        let out = run(&t);
        assert_eq!(fs::read(t.volume.join("d/a")).unwrap(), b"\0\0\0");
        assert_eq!(
            lost_found(&t),
            vec![(PathBuf::from("store/d"), b"in the way".to_vec())]
        );
        assert!(
            out.actions.iter().all(|a| a.error.is_none()),
            "{:?}",
            out.actions
        );
    }
}
