//! `fsredirect gc`: deletes stored objects nobody names (objects without a stub, and the
//! orphan area's leftovers) and the store directories left empty without a guest-tree
//! directory, reporting the bytes reclaimed. What `repair` put in lost+found is never touched.
//!
//! An object without a stub that a stub's record still names is kept: it may be the data of
//! a stub whose object is missing, which `repair` moves back.

use std::collections::HashSet;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::output::{bytes, count, json_path, Outcome, Status};
use super::{io_err, lock_shared, open_for_change, parts_of, Recovered, Result, Volume};
use crate::share::ShareSpec;
use crate::store::Store;
use crate::verify::{check_share, Mismatch, Report};

/// One entry collected (or, in a dry run, to be collected).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collected {
    /// Relative to the volume, or the orphan's name.
    pub path: PathBuf,
    /// Its apparent size.
    pub size: u64,
    /// Bytes given back to the file system (0 while another link keeps the data).
    pub reclaimed: u64,
}

/// What `gc` did.
#[derive(Debug, Clone, Default)]
pub struct GcOutcome {
    /// The share.
    pub share: String,
    /// Nothing was deleted: the lists are the plan.
    pub dry_run: bool,
    /// A dry run on a volume whose recovery is pending (it may still need orphans).
    pub recovery_pending: bool,
    /// What the recovery run first did, if the last server did not stop cleanly.
    pub recovered: Option<Recovered>,
    /// Objects without a stub.
    pub objects: Vec<Collected>,
    /// Leftovers of the orphan area.
    pub orphans: Vec<Collected>,
    /// Empty store directories without a guest-tree directory.
    pub directories: Vec<PathBuf>,
    /// Objects without a stub kept because a stub's record names them.
    pub kept: Vec<PathBuf>,
    /// Files and bytes in lost+found (never collected).
    pub lost_found: (u64, u64),
    /// The lost+found directory.
    pub lost_found_path: PathBuf,
}

impl GcOutcome {
    /// Bytes given back (or, in a dry run, that would be).
    pub fn reclaimed(&self) -> u64 {
        self.objects
            .iter()
            .chain(&self.orphans)
            .map(|c| c.reclaimed)
            .sum()
    }
}

/// Collects the garbage of `share` (or, with `dry_run`, lists it); `step` is called per
/// entry walked.
pub fn gc(share: &ShareSpec, dry_run: bool, step: &mut dyn FnMut()) -> Result<GcOutcome> {
    let mut out = GcOutcome {
        share: share.to_string(),
        dry_run,
        ..GcOutcome::default()
    };
    let (volume, store, _lock);
    if dry_run {
        let (v, lock) = lock_shared(share)?;
        out.recovery_pending = v.unclean();
        (volume, store, _lock) = (v, None, Some(lock));
    } else {
        let (v, s, recovered) = open_for_change(share)?;
        out.recovered = recovered;
        (volume, store, _lock) = (v, Some(s), None);
    }
    let report: Report = check_share(share, step).map_err(io_err("walk", &share.dir))?;
    let recorded: HashSet<&Path> = report
        .stale_hints
        .iter()
        .map(|h| h.recorded.as_path())
        .collect();
    let mut gone = HashSet::new();
    for m in &report.mismatches {
        let Mismatch::StrayObject(path) = m else {
            continue;
        };
        if recorded.contains(path.as_path()) {
            out.kept.push(path.clone());
            continue;
        }
        let full = volume.data.join(path);
        let meta = fs::symlink_metadata(&full).map_err(io_err("examine", &full))?;
        if let Some(store) = &store {
            let parts = parts_of(path).map_err(io_err("name", &full))?;
            store
                .remove(&parts, false)
                .map_err(io_err("remove", &full))?;
        }
        gone.insert(path.clone());
        out.objects.push(collected(path.clone(), &meta));
    }
    prune(
        &volume,
        share,
        Path::new(""),
        &gone,
        store.as_ref(),
        &mut out.directories,
    )
    .map_err(io_err("prune", &volume.data))?;
    collect_orphans(&volume, store.as_ref(), &mut out.orphans)?;
    out.lost_found_path = volume.lost_found();
    out.lost_found = usage(&volume.lost_found());
    Ok(out)
}

fn collected(path: PathBuf, meta: &fs::Metadata) -> Collected {
    Collected {
        path,
        size: meta.len(),
        // Only the last link gives the blocks back.
        reclaimed: if meta.nlink() <= 1 {
            meta.blocks() * 512
        } else {
            0
        },
    }
}

/// Removes (or lists) the store directories under `rel` that are empty once `gone` is gone
/// and have no directory of the same path in the guest tree; true if `rel` itself is one.
fn prune(
    volume: &Volume,
    share: &ShareSpec,
    rel: &Path,
    gone: &HashSet<PathBuf>,
    store: Option<&Store>,
    removed: &mut Vec<PathBuf>,
) -> io::Result<bool> {
    let mut empty = true;
    for entry in fs::read_dir(volume.data.join(rel))? {
        let entry = entry?;
        let child = rel.join(entry.file_name());
        let is_dir = entry.file_type()?.is_dir();
        if is_dir {
            if !prune(volume, share, &child, gone, store, removed)? {
                empty = false;
            }
        } else if !gone.contains(&child) {
            empty = false;
        }
    }
    if rel.as_os_str().is_empty() || !empty || share.dir.join(rel).is_dir() {
        return Ok(false);
    }
    if let Some(store) = store {
        store.remove(&parts_of(rel)?, true)?;
    }
    removed.push(rel.to_path_buf());
    Ok(true)
}

fn collect_orphans(volume: &Volume, store: Option<&Store>, out: &mut Vec<Collected>) -> Result<()> {
    let dir = volume.orphans();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("list", &dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err("list", &dir))?;
        let meta = entry.metadata().map_err(io_err("examine", entry.path()))?;
        if let Some(store) = store {
            let name = CString::new(entry.file_name().as_bytes()).map_err(|_| {
                io_err("name", entry.path())(io::Error::from_raw_os_error(libc::EINVAL))
            })?;
            store
                .remove_orphan(&name)
                .map_err(io_err("remove", entry.path()))?;
        }
        out.push(collected(PathBuf::from(entry.file_name()), &meta));
    }
    Ok(())
}

/// Files and allocated bytes under `dir` (zero if it does not exist).
fn usage(dir: &Path) -> (u64, u64) {
    let mut files = 0;
    let mut total = 0;
    let _ = super::walk(dir, Path::new(""), &mut |_, meta| {
        if !meta.is_dir() {
            files += 1;
            total += meta.blocks() * 512;
        }
        Ok(())
    });
    (files, total)
}

impl Outcome for GcOutcome {
    fn human(&self) -> String {
        let mut out = format!(
            "gc {}{}\n",
            self.share,
            if self.dry_run {
                " (dry run: nothing deleted)"
            } else {
                ""
            }
        );
        if self.recovery_pending {
            out += &format!(
                "  {}; it may still need objects of the orphan area\n",
                super::check::UNCLEAN_NOTE
            );
        }
        if let Some(r) = &self.recovered {
            out += &format!(
                "  recovery after an unclean stop ran first: {} settled\n",
                count(r.settled as u64, "logged operation")
            );
        }
        let verb = if self.dry_run {
            "would delete"
        } else {
            "deleted"
        };
        for c in &self.objects {
            out += &format!(
                "  {verb} {} ({}, no stub names it)\n",
                c.path.display(),
                bytes(c.size)
            );
        }
        for c in &self.orphans {
            out += &format!(
                "  {verb} orphan {} ({}, of a file unlinked while open)\n",
                c.path.display(),
                bytes(c.size)
            );
        }
        for d in &self.directories {
            out += &format!("  {verb} empty store directory {}\n", d.display());
        }
        for k in &self.kept {
            out += &format!(
                "  kept {}: a stub's record names it (run `fsredirect repair`)\n",
                k.display()
            );
        }
        if self.lost_found.0 > 0 {
            out += &format!(
                "  lost+found holds {} ({}) in {}: gc leaves it; review and delete by hand\n",
                count(self.lost_found.0, "file"),
                bytes(self.lost_found.1),
                self.lost_found_path.display()
            );
        }
        let n = (self.objects.len() + self.orphans.len()) as u64;
        out += &if n == 0 && self.directories.is_empty() {
            "nothing to collect\n".to_string()
        } else if self.dry_run {
            format!(
                "dry run: {} to delete, {} to reclaim\n",
                count(n, "object"),
                bytes(self.reclaimed())
            )
        } else {
            format!(
                "{} deleted, {} reclaimed\n",
                count(n, "object"),
                bytes(self.reclaimed())
            )
        };
        out
    }

    fn json(&self) -> serde_json::Value {
        let list = |v: &[Collected]| {
            v.iter()
                .map(|c| json!({ "path": json_path(&c.path), "size": c.size, "reclaimed": c.reclaimed }))
                .collect::<Vec<_>>()
        };
        json!({
            "share": self.share,
            "dry_run": self.dry_run,
            "recovery_pending": self.recovery_pending,
            "recovered": self.recovered.as_ref().map(|r| r.settled),
            "objects": list(&self.objects),
            "orphans": list(&self.orphans),
            "directories": self.directories.iter().map(|d| json_path(d)).collect::<Vec<_>>(),
            "kept": self.kept.iter().map(|k| json_path(k)).collect::<Vec<_>>(),
            "reclaimed": self.reclaimed(),
            "lost_found": {
                "path": json_path(&self.lost_found_path),
                "files": self.lost_found.0,
                "bytes": self.lost_found.1,
            },
        })
    }

    fn status(&self) -> Status {
        let pending =
            !self.objects.is_empty() || !self.orphans.is_empty() || !self.directories.is_empty();
        if self.dry_run && pending {
            Status::Findings
        } else {
            Status::Clean
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testshare::TestShare;
    use crate::verify::verify_share;

    #[test]
    fn stray_objects_and_orphans_are_deleted_and_counted() {
        let t = TestShare::new();
        t.write("keep", b"k");
        fs::create_dir(t.volume.join("gone")).unwrap();
        fs::write(t.volume.join("gone/stray"), vec![7u8; 8192]).unwrap();
        fs::write(t.control.join("orphans/5-0"), vec![1u8; 4096]).unwrap();
        let out = gc(&t.share, false, &mut || {}).unwrap();
        assert_eq!(out.objects.len(), 1);
        assert_eq!(out.orphans.len(), 1);
        assert_eq!(out.directories, vec![PathBuf::from("gone")]);
        assert!(out.reclaimed() >= 8192 + 4096, "{}", out.reclaimed());
        assert!(!t.volume.join("gone").exists());
        assert!(t.volume.join("keep").exists());
        assert_eq!(fs::read_dir(t.control.join("orphans")).unwrap().count(), 0);
        assert_eq!(verify_share(&t.share).unwrap(), vec![]);
    }

    #[test]
    fn dry_run_deletes_nothing_and_reports_findings() {
        let t = TestShare::new();
        fs::write(t.volume.join("stray"), b"x").unwrap();
        let out = gc(&t.share, true, &mut || {}).unwrap();
        assert_eq!(out.objects.len(), 1);
        assert_eq!(out.status(), Status::Findings);
        assert!(t.volume.join("stray").exists());
    }

    #[test]
    fn object_a_stub_record_names_is_kept() {
        let t = TestShare::new();
        t.write("a", b"data");
        // The stub records b, and the object sits there: repair's to move back, not gc's.
        let stub = fs::File::open(t.guest.join("a")).unwrap();
        let (attr, _) = crate::meta::read_file(&stub).unwrap().unwrap();
        let meta = crate::meta::Meta::redirect(b"t", b"b").encode();
        crate::meta::set_xattr(&stub, attr, &meta).unwrap();
        fs::rename(t.volume.join("a"), t.volume.join("b")).unwrap();
        let out = gc(&t.share, false, &mut || {}).unwrap();
        assert_eq!(out.kept, vec![PathBuf::from("b")]);
        assert!(t.volume.join("b").exists());
    }

    #[test]
    fn store_directory_of_a_guest_directory_is_kept_even_empty() {
        let t = TestShare::new();
        fs::create_dir(t.guest.join("d")).unwrap();
        fs::create_dir(t.volume.join("d")).unwrap();
        let out = gc(&t.share, false, &mut || {}).unwrap();
        assert_eq!(out.directories, Vec::<PathBuf>::new());
        assert!(t.volume.join("d").is_dir());
    }

    #[test]
    fn lost_found_is_never_collected() {
        let t = TestShare::new();
        fs::create_dir_all(t.control.join("lost+found/1-1/store")).unwrap();
        fs::write(t.control.join("lost+found/1-1/store/x"), b"kept").unwrap();
        let out = gc(&t.share, false, &mut || {}).unwrap();
        assert_eq!(out.lost_found.0, 1);
        assert!(out.human().contains("review and delete by hand"));
        assert!(t.control.join("lost+found/1-1/store/x").exists());
    }

    #[test]
    fn only_the_last_link_counts_as_reclaimed() {
        let t = TestShare::new();
        t.write("a", b"data");
        fs::hard_link(t.volume.join("a"), t.volume.join("stray")).unwrap();
        let out = gc(&t.share, false, &mut || {}).unwrap();
        assert_eq!(out.objects.len(), 1);
        assert_eq!(out.reclaimed(), 0);
    }
}
