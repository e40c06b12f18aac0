//! `fsredirect inspect PATH`: what one file of the share is and whether it is healthy.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde_json::json;

use super::output::{bytes, json_path, Outcome, Status};
use super::{io_err, lock_shared, share_relative, Result, ToolError};
use crate::meta::read_path;
use crate::meta::Meta;
use crate::share::ShareSpec;
use crate::verify::{check_stub, Mismatch};

/// What kind of file a guest-tree path is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileKind {
    /// A redirected regular file: a sparse stub whose data is in the store.
    Stub,
    /// An ordinary regular file: its data is in the guest tree.
    Inline,
    /// An inert special file the guest made (an empty host file with the type in metadata).
    Special {
        /// `fifo`, `socket`, `char device` or `block device`.
        kind: &'static str,
        /// The device number.
        rdev: u32,
    },
    /// A regular file whose redirect metadata names another volume.
    OtherVolume(String),
    /// A regular file whose redirect metadata cannot be decoded.
    Unreadable,
    /// A directory.
    Directory,
    /// A symlink, with its target.
    Symlink(PathBuf),
    /// A host FIFO, socket or device node (not made by a server).
    HostSpecial(&'static str),
}

impl FileKind {
    /// A short stable name, for scripts.
    pub fn name(&self) -> &'static str {
        match self {
            FileKind::Stub => "stub",
            FileKind::Inline => "inline",
            FileKind::Special { .. } => "special",
            FileKind::OtherVolume(_) => "other-volume",
            FileKind::Unreadable => "unreadable",
            FileKind::Directory => "directory",
            FileKind::Symlink(_) => "symlink",
            FileKind::HostSpecial(_) => "host-special",
        }
    }

    fn describe(&self) -> String {
        match self {
            FileKind::Stub => "stub (redirected: data in the store)".into(),
            FileKind::Inline => "inline (ordinary file: data in the guest tree)".into(),
            FileKind::Special { kind, rdev } if *rdev != 0 => {
                format!(
                    "special (inert {kind}, device {:x}:{:x})",
                    rdev >> 8,
                    rdev & 0xff
                )
            }
            FileKind::Special { kind, .. } => format!("special (inert {kind})"),
            FileKind::OtherVolume(v) => {
                format!("stub of volume `{v}` (served as an ordinary file here)")
            }
            FileKind::Unreadable => {
                "unknown (redirect metadata unreadable; served as an ordinary file)".into()
            }
            FileKind::Directory => "directory".into(),
            FileKind::Symlink(target) => format!("symlink to {}", target.display()),
            FileKind::HostSpecial(kind) => format!("host {kind} (not made by a server)"),
        }
    }
}

/// The stored object of a stub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Where it is (or should be): `<store>/<volume>/<path>`.
    pub path: PathBuf,
    /// Its metadata if it exists: size, allocated bytes, links, mode.
    pub found: Option<(u64, u64, u64, u32)>,
}

/// The common portion a stub's metadata records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The recorded path.
    pub path: PathBuf,
    /// Only the tail of a longer path is recorded.
    pub truncated: bool,
    /// It names this path.
    pub current: bool,
}

/// One problem of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// A short stable name (as in `verify --json`).
    pub kind: &'static str,
    /// What is wrong.
    pub message: String,
}

/// What `inspect` found.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// The share.
    pub share: String,
    /// The path relative to the share root.
    pub path: PathBuf,
    /// The file in the guest tree.
    pub guest_path: PathBuf,
    /// What it is.
    pub kind: FileKind,
    /// Apparent size in the guest tree.
    pub size: u64,
    /// Bytes allocated in the guest tree.
    pub allocated: u64,
    /// Names (hard links) in the guest tree.
    pub links: u64,
    /// For a stub (and for any regular file that has one): the stored object.
    pub object: Option<ObjectInfo>,
    /// For a stub: the recorded path.
    pub recorded: Option<Recorded>,
    /// For a stub or inline file: true if the share's policy would redirect it.
    pub policy_redirects: Option<bool>,
    /// Everything wrong; empty means ok.
    pub problems: Vec<Problem>,
    /// The last server did not stop cleanly: its recovery has not run yet.
    pub unclean: bool,
}

impl From<&Mismatch> for Problem {
    fn from(m: &Mismatch) -> Self {
        let text = m.to_string();
        let prefix = format!("{}: ", m.path().display());
        Problem {
            kind: m.kind(),
            message: text.strip_prefix(&prefix).unwrap_or(&text).to_string(),
        }
    }
}

fn special_name(kind: u32) -> &'static str {
    match kind & libc::S_IFMT {
        libc::S_IFIFO => "fifo",
        libc::S_IFSOCK => "socket",
        libc::S_IFCHR => "char device",
        libc::S_IFBLK => "block device",
        _ => "special file",
    }
}

/// Inspects `path` (relative to the share root, or absolute inside the guest tree).
pub fn inspect(share: &ShareSpec, path: &Path) -> Result<Inspection> {
    let rel = share_relative(share, path)?;
    let (volume, _lock) = lock_shared(share)?;
    let guest_path = share.dir.join(&rel);
    // Every component but the last must be a real directory: a guest symlink on the way
    // would lead outside the share.
    if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
        super::guest::GuestTree::open(&share.dir)
            .and_then(|t| t.path_fd(parent))
            .map_err(|source| ToolError::Unreachable {
                path: path.to_path_buf(),
                tree: share.dir.clone(),
                source,
            })?;
    }
    let meta = fs::symlink_metadata(&guest_path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            ToolError::BadPath {
                path: path.to_path_buf(),
                reason: format!("does not exist in guest tree {}", share.dir.display()),
            }
        } else {
            io_err("examine", path)(e)
        }
    })?;
    let ours = volume.name.as_bytes();
    let object_path = volume.data.join(&rel);
    let mut problems = Vec::new();
    let mut recorded = None;
    let mut object = None;
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        FileKind::Directory
    } else if ft.is_symlink() {
        FileKind::Symlink(fs::read_link(&guest_path).unwrap_or_default())
    } else if !ft.is_file() {
        FileKind::HostSpecial(if ft.is_fifo() {
            "fifo"
        } else if ft.is_socket() {
            "socket"
        } else if ft.is_char_device() {
            "char device"
        } else {
            "block device"
        })
    } else {
        match read_path(&guest_path).map_err(io_err("read metadata of", &guest_path))? {
            None => FileKind::Inline,
            Some((_, Err(_))) => {
                problems.push(Problem::from(&Mismatch::BadMetadata(rel.clone())));
                FileKind::Unreadable
            }
            Some((_, Ok(Meta::Special { kind, rdev }))) => FileKind::Special {
                kind: special_name(kind),
                rdev,
            },
            Some((_, Ok(Meta::Redirect { volume: v, .. }))) if v != ours => {
                FileKind::OtherVolume(String::from_utf8_lossy(&v).into_owned())
            }
            Some((_, Ok(m @ Meta::Redirect { .. }))) => {
                let (obj, found) = check_stub(&guest_path, &object_path, &rel, &meta)
                    .map_err(io_err("examine", &guest_path))?;
                problems.extend(found.iter().map(Problem::from));
                if let Some(obj) = &obj {
                    if obj.file_type().is_file() && obj.nlink() < meta.nlink() {
                        problems.push(Problem {
                            kind: "links-not-mirrored",
                            message: format!(
                                "{} names in the guest tree but {} in the store",
                                meta.nlink(),
                                obj.nlink()
                            ),
                        });
                    }
                }
                if let Meta::Redirect {
                    portion, truncated, ..
                } = &m
                {
                    use std::os::unix::ffi::OsStrExt;
                    recorded = Some(Recorded {
                        path: PathBuf::from(std::ffi::OsStr::from_bytes(portion)),
                        truncated: *truncated,
                        current: Meta::redirect(ours, rel.as_os_str().as_bytes()) == m,
                    });
                }
                FileKind::Stub
            }
        }
    };
    if ft.is_file() || kind == FileKind::Stub {
        let found = fs::symlink_metadata(&object_path)
            .ok()
            .map(|o| (o.len(), o.blocks() * 512, o.nlink(), o.mode()));
        if kind != FileKind::Stub && found.is_some() && !matches!(kind, FileKind::Unreadable) {
            problems.push(Problem::from(&Mismatch::StrayObject(rel.clone())));
        }
        if kind == FileKind::Stub || found.is_some() {
            object = Some(ObjectInfo {
                path: object_path,
                found,
            });
        }
    }
    let policy_redirects = match &kind {
        FileKind::Stub | FileKind::Inline => {
            let size = match &object {
                Some(ObjectInfo {
                    found: Some((size, ..)),
                    ..
                }) if kind == FileKind::Stub => *size,
                _ => meta.len(),
            };
            share.store.as_ref().map(|s| {
                use std::os::unix::ffi::OsStrExt;
                s.policy.redirects(rel.as_os_str().as_bytes(), size)
            })
        }
        _ => None,
    };
    Ok(Inspection {
        unclean: volume.unclean(),
        policy_redirects,
        share: share.to_string(),
        guest_path,
        path: rel,
        kind,
        size: meta.len(),
        allocated: meta.blocks() * 512,
        links: meta.nlink(),
        object,
        recorded,
        problems,
    })
}

impl Inspection {
    /// `ok`, or the problems joined by `; `.
    pub fn state(&self) -> String {
        if self.problems.is_empty() {
            "ok".to_string()
        } else {
            self.problems
                .iter()
                .map(|p| p.message.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        }
    }
}

impl Outcome for Inspection {
    fn human(&self) -> String {
        let mut out = format!("{}\n", self.path.display());
        let mut line = |k: &str, v: String| out += &format!("  {k:<12}{v}\n");
        line("kind:", self.kind.describe());
        line("guest file:", self.guest_path.display().to_string());
        let is_stub = self.kind == FileKind::Stub;
        if matches!(self.kind, FileKind::Directory | FileKind::Symlink(_)) {
            line("links:", self.links.to_string());
        } else {
            line(
                "size:",
                format!(
                    "{} ({} allocated{})",
                    bytes(self.size),
                    bytes(self.allocated),
                    if is_stub { " in the guest tree" } else { "" }
                ),
            );
        }
        if let Some(obj) = &self.object {
            line(
                if is_stub { "data:" } else { "store:" },
                obj.path.display().to_string(),
            );
            match obj.found {
                Some((size, allocated, _, mode)) => line(
                    "object:",
                    format!(
                        "{} ({} allocated, mode {:04o})",
                        bytes(size),
                        bytes(allocated),
                        mode & 0o7777
                    ),
                ),
                None => line("object:", "missing".into()),
            }
        }
        if is_stub {
            let store_links = self
                .object
                .as_ref()
                .and_then(|o| o.found)
                .map(|(_, _, links, _)| links.to_string())
                .unwrap_or_else(|| "0".into());
            line(
                "hard links:",
                format!(
                    "{} in the guest tree, {store_links} in the store",
                    self.links
                ),
            );
        } else if !matches!(self.kind, FileKind::Directory | FileKind::Symlink(_)) {
            line("hard links:", self.links.to_string());
        }
        if let Some(r) = &self.recorded {
            let state = if r.current {
                "current"
            } else if self.links > 1 {
                "another name of this file, or out of date after a directory rename"
            } else {
                "out of date after a directory rename; corrected on the next lookup or by `fsredirect repair`"
            };
            line(
                "recorded:",
                format!(
                    "{}{} ({state})",
                    if r.truncated { "..." } else { "" },
                    r.path.display()
                ),
            );
        }
        let redirected = self.kind == FileKind::Stub;
        if let Some(wants) = self.policy_redirects.filter(|w| *w != redirected) {
            line(
                "policy:",
                format!(
                    "would place it {} (the server moves it when it next changes)",
                    if wants { "in the store" } else { "inline" }
                ),
            );
        }
        line("state:", self.state());
        if self.unclean {
            out += &format!("  {}\n", super::check::UNCLEAN_NOTE);
        }
        out
    }

    fn json(&self) -> serde_json::Value {
        let mut v = json!({
            "share": self.share,
            "path": json_path(&self.path),
            "guest_path": json_path(&self.guest_path),
            "kind": self.kind.name(),
            "description": self.kind.describe(),
            "size": self.size,
            "allocated": self.allocated,
            "links": self.links,
            "state": self.state(),
            "ok": self.problems.is_empty(),
            "unclean": self.unclean,
            "problems": self.problems.iter().map(|p| json!({
                "kind": p.kind,
                "message": p.message,
            })).collect::<Vec<_>>(),
        });
        if let Some(obj) = &self.object {
            v["object"] = match obj.found {
                Some((size, allocated, links, mode)) => json!({
                    "path": json_path(&obj.path),
                    "exists": true,
                    "size": size,
                    "allocated": allocated,
                    "links": links,
                    "mode": format!("{:04o}", mode & 0o7777),
                }),
                None => json!({ "path": json_path(&obj.path), "exists": false }),
            };
        }
        if let Some(r) = &self.recorded {
            v["recorded"] = json!({
                "path": json_path(&r.path),
                "truncated": r.truncated,
                "current": r.current,
            });
        }
        if let Some(wants) = self.policy_redirects {
            v["policy_placement"] = json!(if wants { "redirected" } else { "inline" });
        }
        if let FileKind::Symlink(target) = &self.kind {
            v["target"] = json_path(target);
        }
        if let FileKind::Special { kind, rdev } = &self.kind {
            v["special"] = json!({ "type": kind, "rdev": rdev });
        }
        if let FileKind::OtherVolume(volume) = &self.kind {
            v["volume"] = json!(volume);
        }
        v
    }

    fn status(&self) -> Status {
        if self.problems.is_empty() {
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
    fn healthy_stub_is_ok_and_found_by_either_path() {
        let t = TestShare::new();
        t.write("d/a", b"hello");
        let by_rel = inspect(&t.share, Path::new("d/a")).unwrap();
        let by_abs = inspect(&t.share, &t.guest.join("d/a")).unwrap();
        assert_eq!(by_rel.path, by_abs.path);
        assert_eq!(by_rel.kind, FileKind::Stub);
        assert_eq!((by_rel.size, by_rel.allocated, by_rel.links), (5, 0, 1));
        let obj = by_rel.object.as_ref().unwrap();
        assert_eq!(obj.path, t.volume.join("d/a"));
        assert_eq!(
            obj.found.map(|f| (f.0, f.2, f.3 & 0o7777)),
            Some((5, 1, 0o600))
        );
        assert!(by_rel.recorded.as_ref().unwrap().current);
        assert_eq!(by_rel.state(), "ok");
        assert_eq!(by_rel.status(), Status::Clean);
    }

    #[test]
    fn missing_object_is_the_state() {
        let t = TestShare::new();
        t.write("a", b"hello");
        fs::remove_file(t.volume.join("a")).unwrap();
        let i = inspect(&t.share, Path::new("a")).unwrap();
        assert_eq!(i.state(), "stored object missing");
        assert_eq!(i.status(), Status::Findings);
        assert!(i.human().contains("object:     missing"), "{}", i.human());
    }

    #[test]
    fn stale_record_after_directory_rename_is_shown_not_a_problem() {
        let t = TestShare::new();
        t.write("d/a", b"x");
        t.serve().rename("d", "e");
        let i = inspect(&t.share, Path::new("e/a")).unwrap();
        let r = i.recorded.as_ref().unwrap();
        assert_eq!((r.path.as_path(), r.current), (Path::new("d/a"), false));
        assert_eq!(i.state(), "ok");
        assert!(i.human().contains("out of date"), "{}", i.human());
    }

    #[test]
    fn hard_link_missing_in_the_store_is_a_problem() {
        let t = TestShare::new();
        t.write("a", b"x");
        t.serve().link("a", "b");
        fs::remove_file(t.volume.join("b")).unwrap();
        let i = inspect(&t.share, Path::new("a")).unwrap();
        assert_eq!(i.problems[0].kind, "links-not-mirrored");
    }

    #[test]
    fn other_kinds_are_named() {
        let t = TestShare::new();
        t.serve().mkfifo("p");
        fs::write(t.guest.join("plain"), b"p").unwrap();
        fs::create_dir(t.guest.join("dir")).unwrap();
        std::os::unix::fs::symlink("plain", t.guest.join("l")).unwrap();
        let kind = |p: &str| inspect(&t.share, Path::new(p)).unwrap().kind.name();
        assert_eq!(kind("p"), "special");
        assert_eq!(kind("plain"), "inline");
        assert_eq!(kind("dir"), "directory");
        assert_eq!(kind("l"), "symlink");
    }

    #[test]
    fn inline_file_with_an_object_at_its_path_is_flagged() {
        let t = TestShare::new();
        fs::write(t.guest.join("plain"), b"p").unwrap();
        fs::write(t.volume.join("plain"), b"o").unwrap();
        let i = inspect(&t.share, Path::new("plain")).unwrap();
        assert_eq!(i.problems[0].kind, "object-without-stub");
    }

    #[test]
    fn missing_file_is_an_error_naming_it() {
        let t = TestShare::new();
        let err = inspect(&t.share, Path::new("nope")).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }

    #[test]
    fn json_carries_the_same_facts() {
        let t = TestShare::new();
        t.write("a", b"hello");
        let v = inspect(&t.share, Path::new("a")).unwrap().json();
        assert_eq!(v["kind"], "stub");
        assert_eq!(v["object"]["size"], 5);
        assert_eq!(v["object"]["mode"], "0600");
        assert_eq!(v["recorded"]["current"], true);
        assert_eq!(v["state"], "ok");
    }

    #[test]
    fn placement_against_the_policy_is_shown() {
        let t = TestShare::new();
        t.write("small", b"x");
        let share = ShareSpec::parse(&format!("{},policy=min-size:1K", t.share)).unwrap();
        let i = inspect(&share, Path::new("small")).unwrap();
        assert_eq!(i.policy_redirects, Some(false));
        assert_eq!(i.state(), "ok");
        assert!(
            i.human().contains("policy:     would place it inline"),
            "{}",
            i.human()
        );
        assert_eq!(i.json()["policy_placement"], "inline");
        let i = inspect(&t.share, Path::new("small")).unwrap();
        assert!(!i.human().contains("policy:"), "{}", i.human());
    }
}
