//! `fsredirect verify`: the whole share checked under a shared lock, nothing changed.

use serde_json::json;

use super::output::{bytes, count, json_path, Outcome, Status};
use super::{io_err, lock_shared, Result};
use crate::placement::{placement_notes, PlacementNote};
use crate::share::ShareSpec;
use crate::verify::{check_share, Counts, Mismatch, Report};

/// What `verify` found.
#[derive(Debug, Clone)]
pub struct VerifyOutcome {
    /// The share, as `ShareSpec` writes it.
    pub share: String,
    /// The walk's findings.
    pub report: Report,
    /// Files whose placement (inline or redirected) differs from the share's policy: notes,
    /// not disagreements (files move when they next change).
    pub placement: Vec<PlacementNote>,
    /// The last server did not stop cleanly: its recovery has not run yet.
    pub unclean: bool,
}

/// Checks `share` (see [`crate::verify`]); `step` is called per entry walked.
pub fn verify(share: &ShareSpec, step: &mut dyn FnMut()) -> Result<VerifyOutcome> {
    let (volume, _lock) = lock_shared(share)?;
    let report = check_share(share, step).map_err(io_err("walk", &share.dir))?;
    let placement = placement_notes(share).map_err(io_err("walk", &share.dir))?;
    Ok(VerifyOutcome {
        share: share.to_string(),
        report,
        placement,
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

/// `a.bin (10 bytes) is inline; the policy would place it in the store`.
pub fn placement_text(note: &PlacementNote) -> String {
    let (is, wants) = if note.redirected {
        ("redirected", "inline")
    } else {
        ("inline", "in the store")
    };
    format!(
        "{} ({}) is {is}; the policy would place it {wants}",
        note.path.display(),
        bytes(note.size)
    )
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

/// Out-of-date path records listed one by one in the text output.
const NOTES_SHOWN: usize = 5;

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
        for h in r.stale_hints.iter().take(NOTES_SHOWN) {
            out += &format!(
                "  note: {} records its old path {}{}\n",
                h.path.display(),
                if h.truncated { "..." } else { "" },
                h.recorded.display()
            );
        }
        if !r.stale_hints.is_empty() {
            let more = r.stale_hints.len().saturating_sub(NOTES_SHOWN) as u64;
            if more > 0 {
                let files = if more == 1 { "file" } else { "files" };
                out += &format!("  note: and {more} more {files} (all in --json)\n");
            }
            out += "  note: old paths are left by directory renames and harmless: a server \
                    corrects them on lookup, `fsredirect repair` at once\n";
        }
        for note in self.placement.iter().take(NOTES_SHOWN) {
            out += &format!("  note: {}\n", placement_text(note));
        }
        if self.placement.len() > NOTES_SHOWN {
            let more = self.placement.len() - NOTES_SHOWN;
            out += &format!(
                "  note: and {more} more placed otherwise than the policy says (all in --json)\n"
            );
        }
        if !self.placement.is_empty() {
            out += "  note: a file moves to where the policy wants it when it next changes\n";
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
            "placement_notes": self.placement.iter().map(|n| json!({
                "path": json_path(&n.path),
                "redirected": n.redirected,
                "size": n.size,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testshare::TestShare;

    #[test]
    fn clean_share_says_ok_and_exits_zero() {
        let t = TestShare::new();
        t.write("d/a", b"x");
        let out = verify(&t.share, &mut || {}).unwrap();
        assert_eq!(out.status(), Status::Clean);
        let text = out.human();
        assert!(text.contains("guest tree: 1 stub, 1 directory"), "{text}");
        assert!(text.contains("store:      1 stored object\n"), "{text}");
        assert!(
            text.ends_with("ok: every stub agrees with its stored object\n"),
            "{text}"
        );
    }

    #[test]
    fn many_old_paths_are_summed_up_in_text_and_listed_in_json() {
        let t = TestShare::new();
        let guest = t.serve();
        for i in 0..7 {
            guest.write(&format!("d/f{i}"), b"x");
        }
        guest.rename("d", "e");
        drop(guest);
        let out = verify(&t.share, &mut || {}).unwrap();
        assert_eq!(out.status(), Status::Clean);
        assert!(out.human().contains("and 2 more files"), "{}", out.human());
        assert_eq!(out.json()["stale_hints"].as_array().unwrap().len(), 7);
    }

    #[test]
    fn disagreements_exit_one_and_name_the_repair() {
        let t = TestShare::new();
        t.write("a", b"x");
        std::fs::remove_file(t.volume.join("a")).unwrap();
        let out = verify(&t.share, &mut || {}).unwrap();
        assert_eq!(out.status(), Status::Findings);
        assert!(out.human().contains("  a: stored object missing\n"));
        assert!(out.human().contains("fsredirect repair --share"));
        assert_eq!(out.json()["mismatches"][0]["kind"], "object-missing");
    }

    #[test]
    fn crashed_volume_is_noted() {
        let t = TestShare::new();
        std::fs::remove_file(t.control.join("clean")).unwrap();
        let out = verify(&t.share, &mut || {}).unwrap();
        assert!(out.unclean);
        assert!(out.human().contains("did not stop cleanly"));
        assert!(!t.control.join("clean").exists(), "verify changes nothing");
    }

    #[test]
    fn files_placed_against_the_policy_are_notes() {
        let t = TestShare::new();
        t.write("small", b"x");
        let share = ShareSpec::parse(&format!("{},policy=min-size:1K", t.share)).unwrap();
        let out = verify(&share, &mut || {}).unwrap();
        assert_eq!(out.status(), Status::Clean);
        assert_eq!(out.placement.len(), 1);
        assert!(
            out.human()
                .contains("note: small (1 byte) is redirected; the policy would place it inline"),
            "{}",
            out.human()
        );
        assert_eq!(out.json()["placement_notes"][0]["redirected"], true);
    }
}
