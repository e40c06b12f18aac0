//! The share description: `tag=NAME,dir=GUEST_TREE[,store=STORE][,volume=V][,policy=...]`.
//! The policy syntax is described in [`crate::policy`].
//!
//! One parser, used by every binary (docs/architecture.md#share-descriptions), so a share is
//! described the same way on the `hypervisor` command line, for the vhost-user daemon, for
//! `fsredirect mount` and for the host tools.

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use crate::policy::{Policy, PolicyError};

/// Longest tag a virtio-fs device can carry (virtio 1.2 §5.11.4: `tag` is 36 bytes).
pub const MAX_TAG_LEN: usize = 36;

/// Longest volume name: one path component on the host.
pub const MAX_VOLUME_LEN: usize = 255;

/// Errors from parsing or checking a share description.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShareSpecError {
    /// The description is empty.
    #[error("empty share description; expected tag=NAME,dir=GUEST_TREE[,store=STORE][,volume=V][,policy=...]")]
    Empty,
    /// An item has no `=`.
    #[error("share item `{0}` is not of the form key=value")]
    NotKeyValue(String),
    /// A key that the description does not know.
    #[error("unknown share key `{0}`; known keys are tag, dir, store, volume, policy")]
    UnknownKey(String),
    /// A key given twice.
    #[error("share key `{0}` is given more than once")]
    DuplicateKey(&'static str),
    /// A key with an empty value.
    #[error("share key `{0}` has an empty value")]
    EmptyValue(&'static str),
    /// A required key is missing.
    #[error("share description `{spec}` lacks `{key}=`")]
    MissingKey {
        /// The key that is missing.
        key: &'static str,
        /// The description as given.
        spec: String,
    },
    /// The tag is too long or has characters a kernel command line cannot carry.
    #[error("share tag `{0}` is invalid: use 1 to 36 bytes of letters, digits, '-', '_' or '.'")]
    InvalidTag(String),
    /// The volume is not a plain name usable as one directory of the store.
    #[error(
        "volume `{0}` is invalid: use 1 to 255 bytes without '/' or NUL, not starting with '.'"
    )]
    InvalidVolume(String),
    /// The current directory is needed to make a relative path absolute and is unknown.
    #[error("cannot make `{0}` absolute: the current directory is unknown")]
    NoCurrentDir(PathBuf),
    /// The store lies inside the guest tree (the guest could reach its own data and metadata).
    #[error("store `{store}` lies inside guest tree `{dir}`; choose a store outside it")]
    StoreInsideGuestTree {
        /// The store, as resolved.
        store: PathBuf,
        /// The guest tree, as resolved.
        dir: PathBuf,
    },
    /// The guest tree lies inside the store (or is the store itself).
    #[error("guest tree `{dir}` lies inside store `{store}`; choose a guest tree outside it")]
    GuestTreeInsideStore {
        /// The guest tree, as resolved.
        dir: PathBuf,
        /// The store, as resolved.
        store: PathBuf,
    },
    /// `volume=` or `policy=` without a store: they only mean something with one.
    #[error("share key `{0}` needs `store=`: a share without a store is a plain passthrough")]
    NeedsStore(&'static str),
    /// The value of `policy=` does not parse.
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

/// A `Result` with a [`ShareSpecError`].
pub type Result<T> = std::result::Result<T, ShareSpecError>;

/// One share: a guest tree, optionally redirected into a volume of a store.
///
/// ```
/// use fsredirect::ShareSpec;
///
/// let share = ShareSpec::parse("tag=data,dir=/srv/guest,store=/srv/store,policy=min-size:4K")?;
/// assert_eq!(share.tag, "data");
/// let store = share.store.as_ref().expect("a redirecting share");
/// assert_eq!(store.volume, "data", "the volume defaults to the tag");
/// // Without store= the share is a plain passthrough.
/// assert!(ShareSpec::parse("tag=plain,dir=/srv/plain")?.store.is_none());
/// # Ok::<(), fsredirect::ShareSpecError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareSpec {
    /// The virtio-fs tag (what the guest mounts).
    pub tag: String,
    /// The guest tree: the host directory the guest sees as its file system (absolute).
    pub dir: PathBuf,
    /// Where file data goes, if anywhere; `None` means plain passthrough.
    pub store: Option<StoreSpec>,
}

/// The redirecting half of a share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSpec {
    /// The store root (absolute).
    pub root: PathBuf,
    /// This share's namespace inside the store: data lives in `<root>/<volume>/`.
    pub volume: String,
    /// Which regular files are redirected (the others stay inline in the guest tree);
    /// [`Policy::all`] when the description has no `policy=`.
    pub policy: Policy,
}

impl ShareSpec {
    /// Parses a share description.
    ///
    /// Relative paths are made absolute against the current directory. Paths that exist are
    /// resolved through symlinks before the containment check, so a symlink cannot hide a store
    /// inside the guest tree; paths that do not exist yet are normalised lexically.
    pub fn parse(spec: &str) -> Result<Self> {
        let mut tag = None;
        let mut dir = None;
        let mut store = None;
        let mut volume = None;
        let mut policy = None;
        if spec.trim().is_empty() {
            return Err(ShareSpecError::Empty);
        }
        for item in spec.split(',') {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| ShareSpecError::NotKeyValue(item.to_string()))?;
            let (slot, key): (&mut Option<String>, &'static str) = match key {
                "tag" => (&mut tag, "tag"),
                "dir" => (&mut dir, "dir"),
                "store" => (&mut store, "store"),
                "volume" => (&mut volume, "volume"),
                "policy" => (&mut policy, "policy"),
                other => return Err(ShareSpecError::UnknownKey(other.to_string())),
            };
            if slot.is_some() {
                return Err(ShareSpecError::DuplicateKey(key));
            }
            if value.is_empty() {
                return Err(ShareSpecError::EmptyValue(key));
            }
            *slot = Some(value.to_string());
        }
        let missing = |key| ShareSpecError::MissingKey {
            key,
            spec: spec.to_string(),
        };
        let tag = tag.ok_or_else(|| missing("tag"))?;
        let dir = dir.ok_or_else(|| missing("dir"))?;
        check_tag(&tag)?;
        let dir = resolve(Path::new(&dir))?;
        let store = match store {
            None => {
                if volume.is_some() {
                    return Err(ShareSpecError::NeedsStore("volume"));
                }
                if policy.is_some() {
                    return Err(ShareSpecError::NeedsStore("policy"));
                }
                None
            }
            Some(root) => {
                let root = resolve(Path::new(&root))?;
                let volume = volume.unwrap_or_else(|| tag.clone());
                check_volume(&volume)?;
                check_disjoint(&dir, &root)?;
                let policy = match policy {
                    Some(text) => Policy::parse(&text)?,
                    None => Policy::all(),
                };
                Some(StoreSpec {
                    root,
                    volume,
                    policy,
                })
            }
        };
        Ok(ShareSpec { tag, dir, store })
    }

    /// The volume's data directory, `<store>/<volume>`, if the share redirects.
    pub fn volume_dir(&self) -> Option<PathBuf> {
        self.store.as_ref().map(|s| s.root.join(&s.volume))
    }
}

impl FromStr for ShareSpec {
    type Err = ShareSpecError;

    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl fmt::Display for ShareSpec {
    /// Writes the description back in the form [`ShareSpec::parse`] reads.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tag={},dir={}", self.tag, self.dir.display())?;
        if let Some(store) = &self.store {
            write!(f, ",store={},volume={}", store.root.display(), store.volume)?;
            if !store.policy.is_all() {
                write!(f, ",policy={}", store.policy)?;
            }
        }
        Ok(())
    }
}

fn check_tag(tag: &str) -> Result<()> {
    let ok = !tag.is_empty()
        && tag.len() <= MAX_TAG_LEN
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ShareSpecError::InvalidTag(tag.to_string()))
    }
}

/// A volume is one directory name in the store; names starting with '.' are reserved for the
/// store's control area (`.fsredirect`).
fn check_volume(volume: &str) -> Result<()> {
    let ok = !volume.is_empty()
        && volume.len() <= MAX_VOLUME_LEN
        && !volume.starts_with('.')
        && !volume.contains(['/', '\0']);
    if ok {
        Ok(())
    } else {
        Err(ShareSpecError::InvalidVolume(volume.to_string()))
    }
}

fn check_disjoint(dir: &Path, store: &Path) -> Result<()> {
    if store.starts_with(dir) && store != dir {
        return Err(ShareSpecError::StoreInsideGuestTree {
            store: store.to_path_buf(),
            dir: dir.to_path_buf(),
        });
    }
    if dir.starts_with(store) {
        return Err(ShareSpecError::GuestTreeInsideStore {
            dir: dir.to_path_buf(),
            store: store.to_path_buf(),
        });
    }
    Ok(())
}

/// Makes `path` absolute and canonical: through the file system when it exists, lexically
/// otherwise (the longest existing prefix is still canonicalised).
fn resolve(path: &Path) -> Result<PathBuf> {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|_| ShareSpecError::NoCurrentDir(path.to_path_buf()))?
            .join(path)
    };
    let lexical = normalize(&absolute);
    // Canonicalise the longest prefix that exists, then append the rest.
    let mut prefix = lexical.clone();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = prefix.canonicalize() {
            let mut out = real;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return Ok(out);
        }
        match (
            prefix.file_name().map(|n| n.to_os_string()),
            prefix.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                prefix = parent.to_path_buf();
            }
            _ => return Ok(lexical),
        }
    }
}

fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passthrough_share_has_no_store() {
        let spec = ShareSpec::parse("tag=root,dir=/srv/guest").unwrap();
        assert_eq!(spec.tag, "root");
        assert_eq!(spec.dir, PathBuf::from("/srv/guest"));
        assert_eq!(spec.store, None);
    }

    #[test]
    fn volume_defaults_to_tag() {
        let spec = ShareSpec::parse("tag=data,dir=/srv/guest,store=/srv/store").unwrap();
        let store = spec.store.unwrap();
        assert_eq!(store.volume, "data");
        assert_eq!(store.root, PathBuf::from("/srv/store"));
    }

    #[test]
    fn explicit_volume_and_policy_are_kept() {
        let spec =
            ShareSpec::parse("tag=data,dir=/srv/g,store=/srv/s,volume=vol1,policy=min-size:1M")
                .unwrap();
        let store = spec.store.unwrap();
        assert_eq!(store.volume, "vol1");
        assert_eq!(store.policy, Policy::parse("min-size:1M").unwrap());
    }

    #[test]
    fn policy_defaults_to_all() {
        let spec = ShareSpec::parse("tag=t,dir=/srv/g,store=/srv/s").unwrap();
        assert!(spec.store.unwrap().policy.is_all());
    }

    #[test]
    fn policy_with_several_rules_parses_inside_the_description() {
        let spec = ShareSpec::parse(
            "tag=t,dir=/srv/g,store=/srv/s,policy=include:*.bin;exclude:tmp/**;min-size:64K",
        )
        .unwrap();
        let policy = spec.store.unwrap().policy;
        assert!(policy.redirects(b"a.bin", 64 << 10));
        assert!(!policy.redirects(b"tmp/a.bin", 64 << 10));
    }

    #[test]
    fn bad_policy_is_refused_naming_it_and_the_fix() {
        let err = ShareSpec::parse("tag=t,dir=/g,store=/s,policy=size>1M").unwrap_err();
        assert!(matches!(err, ShareSpecError::Policy(_)), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("size>1M") && text.contains("min-size:SIZE"),
            "{text}"
        );
    }

    #[test]
    fn policy_without_store_is_refused() {
        let err = ShareSpec::parse("tag=t,dir=/g,policy=min-size:1K").unwrap_err();
        assert_eq!(err, ShareSpecError::NeedsStore("policy"));
    }

    #[test]
    fn keys_may_come_in_any_order() {
        let a = ShareSpec::parse("dir=/srv/g,store=/srv/s,tag=t").unwrap();
        let b = ShareSpec::parse("tag=t,dir=/srv/g,store=/srv/s").unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn relative_paths_become_absolute() {
        let spec = ShareSpec::parse("tag=t,dir=some/../guest").unwrap();
        assert!(spec.dir.is_absolute());
        assert!(spec.dir.ends_with("guest"));
        assert!(!spec.dir.to_string_lossy().contains(".."));
    }

    #[test]
    fn empty_description_is_refused() {
        assert_eq!(ShareSpec::parse(" "), Err(ShareSpecError::Empty));
    }

    #[test]
    fn missing_tag_is_refused() {
        let err = ShareSpec::parse("dir=/srv/g").unwrap_err();
        assert!(matches!(err, ShareSpecError::MissingKey { key: "tag", .. }));
    }

    #[test]
    fn missing_dir_is_refused() {
        let err = ShareSpec::parse("tag=t").unwrap_err();
        assert!(matches!(err, ShareSpecError::MissingKey { key: "dir", .. }));
    }

    #[test]
    fn unknown_key_is_named_in_the_error() {
        let err = ShareSpec::parse("tag=t,dir=/g,color=red").unwrap_err();
        assert_eq!(err, ShareSpecError::UnknownKey("color".into()));
        assert!(err.to_string().contains("color"));
    }

    #[test]
    fn duplicate_key_is_refused() {
        let err = ShareSpec::parse("tag=t,dir=/g,tag=u").unwrap_err();
        assert_eq!(err, ShareSpecError::DuplicateKey("tag"));
    }

    #[test]
    fn item_without_equals_is_refused() {
        let err = ShareSpec::parse("tag=t,dir=/g,store").unwrap_err();
        assert_eq!(err, ShareSpecError::NotKeyValue("store".into()));
    }

    #[test]
    fn empty_value_is_refused() {
        let err = ShareSpec::parse("tag=t,dir=").unwrap_err();
        assert_eq!(err, ShareSpecError::EmptyValue("dir"));
    }

    #[test]
    fn overlong_tag_is_refused() {
        let tag = "a".repeat(MAX_TAG_LEN + 1);
        let err = ShareSpec::parse(&format!("tag={tag},dir=/g")).unwrap_err();
        assert_eq!(err, ShareSpecError::InvalidTag(tag));
    }

    #[test]
    fn tag_with_space_is_refused() {
        let err = ShareSpec::parse("tag=a b,dir=/g").unwrap_err();
        assert_eq!(err, ShareSpecError::InvalidTag("a b".into()));
    }

    #[test]
    fn volume_with_slash_is_refused() {
        let err = ShareSpec::parse("tag=t,dir=/g,store=/s,volume=a/b").unwrap_err();
        assert_eq!(err, ShareSpecError::InvalidVolume("a/b".into()));
    }

    #[test]
    fn volume_reaching_control_area_is_refused() {
        let err = ShareSpec::parse("tag=t,dir=/g,store=/s,volume=.fsredirect").unwrap_err();
        assert_eq!(err, ShareSpecError::InvalidVolume(".fsredirect".into()));
    }

    #[test]
    fn dotted_tag_cannot_become_a_reserved_volume() {
        let err = ShareSpec::parse("tag=..,dir=/g,store=/s").unwrap_err();
        assert_eq!(err, ShareSpecError::InvalidVolume("..".into()));
    }

    #[test]
    fn store_inside_guest_tree_is_refused() {
        let err = ShareSpec::parse("tag=t,dir=/srv/g,store=/srv/g/store").unwrap_err();
        assert!(matches!(err, ShareSpecError::StoreInsideGuestTree { .. }));
    }

    #[test]
    fn guest_tree_inside_store_is_refused() {
        let err = ShareSpec::parse("tag=t,dir=/srv/s/g,store=/srv/s").unwrap_err();
        assert!(matches!(err, ShareSpecError::GuestTreeInsideStore { .. }));
    }

    #[test]
    fn store_equal_to_guest_tree_is_refused() {
        let err = ShareSpec::parse("tag=t,dir=/srv/x,store=/srv/x/.").unwrap_err();
        assert!(matches!(err, ShareSpecError::GuestTreeInsideStore { .. }));
    }

    #[test]
    fn sibling_with_common_prefix_is_accepted() {
        let spec = ShareSpec::parse("tag=t,dir=/srv/g,store=/srv/g2").unwrap();
        assert_eq!(spec.store.unwrap().root, PathBuf::from("/srv/g2"));
    }

    #[test]
    fn store_reached_through_symlink_into_guest_tree_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let guest = tmp.path().join("guest");
        std::fs::create_dir(&guest).unwrap();
        std::fs::create_dir(guest.join("inner")).unwrap();
        std::os::unix::fs::symlink(guest.join("inner"), tmp.path().join("link")).unwrap();
        let spec = format!(
            "tag=t,dir={},store={}",
            guest.display(),
            tmp.path().join("link/store").display()
        );
        let err = ShareSpec::parse(&spec).unwrap_err();
        assert!(matches!(err, ShareSpecError::StoreInsideGuestTree { .. }));
    }

    #[test]
    fn volume_without_store_is_refused() {
        let err = ShareSpec::parse("tag=t,dir=/g,volume=v").unwrap_err();
        assert_eq!(err, ShareSpecError::NeedsStore("volume"));
    }

    #[test]
    fn display_round_trips() {
        for policy in ["all", "include:*.bin;exclude:tmp/**;min-size:64K"] {
            let spec = ShareSpec::parse(&format!(
                "tag=t,dir=/srv/g,store=/srv/s,volume=v,policy={policy}"
            ))
            .unwrap();
            assert_eq!(ShareSpec::parse(&spec.to_string()).unwrap(), spec);
        }
    }

    #[test]
    fn volume_dir_joins_store_and_volume() {
        let spec = ShareSpec::parse("tag=t,dir=/srv/g,store=/srv/s,volume=v").unwrap();
        assert_eq!(spec.volume_dir(), Some(PathBuf::from("/srv/s/v")));
    }
}
