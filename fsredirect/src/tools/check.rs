//! `fsredirect verify`: the whole share checked under a shared lock, nothing changed.

use serde_json::json;

use super::output::{count, json_path, Outcome, Status};
use super::{io_err, lock_shared, Result};
use crate::share::ShareSpec;
use crate::verify::{check_share, Counts, Mismatch, Report};

/// What `verify` found.
#[derive(Debug, Clone)]
pub struct VerifyOutcome {
    /// The share, as `ShareSpec` writes it.
    pub share: String,
    /// The walk's findings.
    pub report: Report,
    /// The last server did not stop cleanly: its recovery has not run yet.
    pub unclean: bool,
}

/// Checks `share` (see [`crate::verify`]); `step` is called per entry walked.
pub fn verify(share: &ShareSpec, step: &mut dyn FnMut()) -> Result<VerifyOutcome> {
    let (volume, _lock) = lock_shared(share)?;
    let report = check_share(share, step).map_err(io_err("walk", &share.dir))?;
    Ok(VerifyOutcome {
        share: share.to_string(),
        report,
        unclean: volume.unclean(),
    })
}

/// `3 stubs, 1 inline file, 2 directories`: the non-zero counts of the guest tree.
pub fn guest_summary(c: &Counts) -> String {
    let parts: Vec<String> = [
        (c.stubs, "stub"),
        (c.inline, "inline file"),
        (c.special, "special file"),
        (c.directories, "directory"),
        (c.symlinks, "symlink"),
        (c.other, "host special file"),
    ]
    .iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| count(*n, what))
    .collect();
    if parts.is_empty() {
        "empty".to_string()
    } else {
        parts.join(", ")
    }
}

/// One mismatch as JSON: its kind, path and details.
pub fn mismatch_json(m: &Mismatch) -> serde_json::Value {
    let mut v = json!({
        "kind": m.kind(),
        "path": json_path(m.path()),
        "message": m.to_string(),
    });
    match m {
        Mismatch::SizeDiffers { stub, object, .. } => {
            v["stub_size"] = json!(stub);
            v["object_size"] = json!(object);
        }
        Mismatch::LinksDiffer { other, .. } | Mismatch::SharedObject { other, .. } => {
            v["other"] = json_path(other);
        }
        Mismatch::WrongVolume { volume, .. } => v["volume"] = json!(volume),
        _ => {}
    }
    v
}

/// The note printed for a volume whose recovery is pending.
pub const UNCLEAN_NOTE: &str = "note: the last server of this volume did not stop cleanly; \
     its recovery has not run yet (the next server or `fsredirect repair` runs it first)";

impl Outcome for VerifyOutcome {
    fn human(&self) -> String {
        let r = &self.report;
        let mut out = format!("verify {}\n", self.share);
        out += &format!("  guest tree: {}\n", guest_summary(&r.counts));
        out += &format!(
            "  store:      {}\n",
            count(r.counts.objects, "stored object")
        );
        for m in &r.mismatches {
            out += &format!("  {m}\n");
        }
        for h in &r.stale_hints {
            out += &format!(
                "  note: {} records the path {}{} (a directory above it was renamed; \
                 corrected on the next lookup, or by `fsredirect repair`)\n",
                h.path.display(),
                if h.truncated { "..." } else { "" },
                h.recorded.display()
            );
        }
        if self.unclean {
            out += &format!("  {UNCLEAN_NOTE}\n");
        }
        if r.mismatches.is_empty() {
            out += "ok: every stub agrees with its stored object\n";
        } else {
            out += &format!(
                "{}: `fsredirect repair --share {}` fixes them (add --dry-run to see how first)\n",
                count(r.mismatches.len() as u64, "disagreement"),
                self.share
            );
        }
        out
    }

    fn json(&self) -> serde_json::Value {
        let r = &self.report;
        let c = &r.counts;
        json!({
            "share": self.share,
            "ok": r.mismatches.is_empty(),
            "unclean": self.unclean,
            "counts": {
                "stubs": c.stubs,
                "inline": c.inline,
                "special": c.special,
                "directories": c.directories,
                "symlinks": c.symlinks,
                "other": c.other,
                "objects": c.objects,
            },
            "mismatches": r.mismatches.iter().map(mismatch_json).collect::<Vec<_>>(),
            "stale_hints": r.stale_hints.iter().map(|h| json!({
                "path": json_path(&h.path),
                "recorded": json_path(&h.recorded),
                "truncated": h.truncated,
            })).collect::<Vec<_>>(),
        })
    }

    fn status(&self) -> Status {
        if self.report.mismatches.is_empty() {
            Status::Clean
        } else {
            Status::Findings
        }
    }
}
