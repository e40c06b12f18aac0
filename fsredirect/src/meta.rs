//! The redirect metadata kept on a stub in the guest tree, as one small extended attribute.
//!
//! Two kinds: a redirected regular file names its volume and common portion; an inert special
//! file (FIFO, socket, device node the guest created) records its type and device number, since
//! the host keeps it as an empty regular file. The value stays small (tens of bytes for usual
//! paths) so that on ext4 it fits inside the inode and does not count in `st_blocks`.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Attribute name used when the server runs as root: `trusted.*` is invisible to host users.
pub const META_XATTR_ROOT: &CStr = c"trusted.fsredirect";
/// Attribute name used otherwise (`trusted.*` needs CAP_SYS_ADMIN).
pub const META_XATTR_USER: &CStr = c"user.fsredirect";
/// Both spellings, root's first: what the host tools look for, whoever wrote the share.
pub const META_XATTR_NAMES: [&CStr; 2] = [META_XATTR_ROOT, META_XATTR_USER];

/// The spelling a server writes and reads: `trusted.*` when it runs as root (`root`),
/// `user.*` otherwise.
pub fn xattr_name_for(root: bool) -> &'static CStr {
    if root {
        META_XATTR_ROOT
    } else {
        META_XATTR_USER
    }
}

/// The spelling this process writes, by its effective user: as a server run by the same
/// user does.
pub fn own_xattr_name() -> &'static CStr {
    // SAFETY: geteuid has no preconditions and cannot fail.
    xattr_name_for(unsafe { libc::geteuid() } == 0)
}

/// Reads a stub's metadata: the first of `names` that `get` finds (`get` reads one
/// attribute's value, `None` when absent), and what it decodes to. An attribute the reader
/// may not read (`trusted.*` without CAP_SYS_ADMIN: EPERM) or a file system without
/// attributes (ENOTSUP) reads as absent; other errors are returned.
///
/// This is the one reader of the metadata: the engine passes its own spelling and a
/// reader through its passthrough layer, the host tools both spellings and a reader on a
/// descriptor or a path.
pub fn read(
    names: &[&'static CStr],
    mut get: impl FnMut(&CStr) -> io::Result<Option<Vec<u8>>>,
) -> io::Result<Option<(&'static CStr, Result<Meta>)>> {
    for &name in names {
        match get(name) {
            Ok(Some(value)) => return Ok(Some((name, Meta::decode(&value)))),
            Ok(None) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::ENOTSUP)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// What [`read`] finds: the attribute holding the metadata and what it decodes to.
pub type Found = (&'static CStr, Result<Meta>);

/// [`read`] of either spelling on the file at `path`, not following a symlink there;
/// `None` also when no file is at `path` or its attributes cannot be read.
pub fn read_path(path: &Path) -> io::Result<Option<Found>> {
    let p = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    read(&META_XATTR_NAMES, |name| {
        let mut buf = vec![0u8; 8192];
        // SAFETY: valid C strings and a writable buffer of the given length.
        let n = unsafe {
            libc::lgetxattr(
                p.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            // No attribute, no readable attribute, or no file there: no metadata.
            return Ok(None);
        }
        buf.truncate(n as usize);
        Ok(Some(buf))
    })
}

/// [`read`] of either spelling on an open file.
pub fn read_file(f: &File) -> io::Result<Option<Found>> {
    read(&META_XATTR_NAMES, |name| get_xattr(f, name))
}

/// The metadata at `path` when it decodes ([`read_path`]); metadata that cannot be decoded
/// reads as none, and the file is then a plain file.
pub fn decoded_at(path: &Path) -> io::Result<Option<Meta>> {
    Ok(read_path(path)?.and_then(|(_, m)| m.ok()))
}

/// Reads one attribute of an open file; `None` if it is absent.
pub fn get_xattr(f: &File, name: &CStr) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: a valid descriptor, NUL-terminated name and a writable buffer of that length.
    let n = unsafe {
        libc::fgetxattr(
            f.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENODATA) => Ok(None),
            _ => Err(err),
        };
    }
    buf.truncate(n as usize);
    Ok(Some(buf))
}

/// Sets one attribute of an open file.
pub fn set_xattr(f: &File, name: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: a valid descriptor, NUL-terminated name and a value buffer of that length.
    crate::beneath::check(unsafe {
        libc::fsetxattr(
            f.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
    .map(|_| ())
}

/// Removes one attribute of an open file (absent is fine).
pub fn remove_xattr(f: &File, name: &CStr) -> io::Result<()> {
    // SAFETY: a valid descriptor and a NUL-terminated name.
    match crate::beneath::check(unsafe { libc::fremovexattr(f.as_raw_fd(), name.as_ptr()) }) {
        Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(()),
        other => other.map(|_| ()),
    }
}

/// Longest common portion recorded whole; longer paths keep their last components only.
pub const MAX_PORTION: usize = 1024;

/// Errors decoding a metadata value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MetaError {
    /// The value does not start with a known kind and version.
    #[error("redirect metadata has unknown format (first bytes {0:02x?})")]
    UnknownFormat(Vec<u8>),
    /// The value is cut short or has a bad field.
    #[error("redirect metadata of kind `{0}` is malformed")]
    Malformed(char),
}

/// A `Result` with a [`MetaError`].
pub type Result<T> = std::result::Result<T, MetaError>;

/// What a stub's metadata says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Meta {
    /// A redirected regular file: data in `<store>/<volume>/<portion>`.
    Redirect {
        /// The volume holding the data.
        volume: Vec<u8>,
        /// The common portion: path relative to the share root, without a leading '/'.
        /// It names one of the file's hard links; after a directory rename it may be stale and
        /// is corrected when the file is next looked up.
        portion: Vec<u8>,
        /// True if `portion` is only the tail of a path longer than [`MAX_PORTION`] bytes
        /// (whole components), so that the attribute stays small.
        truncated: bool,
    },
    /// An inert special file: the guest sees this type and device number.
    Special {
        /// The `S_IFMT` bits of the guest's view.
        kind: u32,
        /// The device number (for character and block devices).
        rdev: u32,
    },
}

impl Meta {
    /// Encodes as `R1 <volume> NUL <portion>` or `S1 <kind-hex> <rdev-hex>`.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Meta::Redirect {
                volume,
                portion,
                truncated,
            } => {
                let mut out = Vec::with_capacity(3 + volume.len() + portion.len());
                out.extend_from_slice(if *truncated { b"T1" } else { b"R1" });
                out.extend_from_slice(volume);
                out.push(0);
                out.extend_from_slice(portion);
                out
            }
            Meta::Special { kind, rdev } => format!("S1{kind:x} {rdev:x}").into_bytes(),
        }
    }

    /// The metadata of a redirected file at `path` (relative to the share) in `volume`,
    /// keeping only the last whole components of a path longer than [`MAX_PORTION`].
    pub fn redirect(volume: &[u8], path: &[u8]) -> Self {
        let mut portion = path;
        let mut truncated = false;
        while portion.len() > MAX_PORTION {
            match portion.iter().position(|&b| b == b'/') {
                Some(slash) => {
                    portion = &portion[slash + 1..];
                    truncated = true;
                }
                // One component is at most 255 bytes, so this cannot happen; keep the tail.
                None => {
                    portion = &portion[portion.len() - MAX_PORTION..];
                    truncated = true;
                }
            }
        }
        Meta::Redirect {
            volume: volume.to_vec(),
            portion: portion.to_vec(),
            truncated,
        }
    }

    /// Decodes a value written by [`Meta::encode`].
    pub fn decode(value: &[u8]) -> Result<Self> {
        match value {
            [kind @ (b'R' | b'T'), b'1', rest @ ..] => {
                let nul = rest
                    .iter()
                    .position(|&b| b == 0)
                    .ok_or(MetaError::Malformed('R'))?;
                let (volume, portion) = (&rest[..nul], &rest[nul + 1..]);
                if volume.is_empty() || portion.is_empty() || portion.contains(&0) {
                    return Err(MetaError::Malformed('R'));
                }
                Ok(Meta::Redirect {
                    volume: volume.to_vec(),
                    portion: portion.to_vec(),
                    truncated: *kind == b'T',
                })
            }
            [b'S', b'1', rest @ ..] => {
                let text = std::str::from_utf8(rest).map_err(|_| MetaError::Malformed('S'))?;
                let (kind, rdev) = text.split_once(' ').ok_or(MetaError::Malformed('S'))?;
                let kind = u32::from_str_radix(kind, 16).map_err(|_| MetaError::Malformed('S'))?;
                let rdev = u32::from_str_radix(rdev, 16).map_err(|_| MetaError::Malformed('S'))?;
                if !is_special_kind(kind) {
                    return Err(MetaError::Malformed('S'));
                }
                Ok(Meta::Special { kind, rdev })
            }
            _ => Err(MetaError::UnknownFormat(
                value.iter().take(4).copied().collect(),
            )),
        }
    }
}

/// True for the file types the host keeps inert: FIFOs, sockets, character and block devices.
pub fn is_special_kind(kind: u32) -> bool {
    matches!(
        kind & libc::S_IFMT,
        libc::S_IFIFO | libc::S_IFSOCK | libc::S_IFCHR | libc::S_IFBLK
    ) && kind & !libc::S_IFMT == 0
}

/// True if `name` is reserved for us: the guest may neither read, write, remove nor list it.
/// Both spellings are reserved whichever one this server uses, so a guest cannot plant the
/// other one for a later server running with different privileges.
pub fn is_reserved_xattr(name: &[u8]) -> bool {
    META_XATTR_NAMES
        .iter()
        .any(|reserved| name.starts_with(reserved.to_bytes()))
}

/// Removes reserved names from a NUL-separated `listxattr` result.
pub fn filter_xattr_list(list: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(list.len());
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if !is_reserved_xattr(name) {
            out.extend_from_slice(name);
            out.push(0);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_meta_round_trips() {
        let meta = Meta::redirect(b"vol", b"dir/file.txt");
        assert_eq!(Meta::decode(&meta.encode()).unwrap(), meta);
    }

    #[test]
    fn special_meta_round_trips() {
        let meta = Meta::Special {
            kind: libc::S_IFCHR,
            rdev: 0x0501,
        };
        assert_eq!(Meta::decode(&meta.encode()).unwrap(), meta);
    }

    #[test]
    fn redirect_meta_is_small_for_usual_paths() {
        let meta = Meta::redirect(b"data", b"home/user/report.pdf");
        assert!(meta.encode().len() < 40);
    }

    #[test]
    fn long_path_keeps_last_whole_components() {
        let dir = "d".repeat(200);
        let path = format!("{}/file", vec![dir.as_str(); 20].join("/"));
        let meta = Meta::redirect(b"v", path.as_bytes());
        let Meta::Redirect {
            portion, truncated, ..
        } = &meta
        else {
            panic!("not a redirect");
        };
        assert!(*truncated);
        assert!(portion.len() <= MAX_PORTION);
        assert!(portion.ends_with(b"/file"));
        assert!(portion.starts_with(dir.as_bytes()));
        assert_eq!(Meta::decode(&meta.encode()).unwrap(), meta);
    }

    #[test]
    fn garbage_is_refused() {
        assert!(matches!(
            Meta::decode(b"hello"),
            Err(MetaError::UnknownFormat(_))
        ));
    }

    #[test]
    fn redirect_without_portion_is_refused() {
        assert_eq!(Meta::decode(b"R1vol\0"), Err(MetaError::Malformed('R')));
    }

    #[test]
    fn special_with_regular_kind_is_refused() {
        let value = format!("S1{:x} 0", libc::S_IFREG);
        assert_eq!(
            Meta::decode(value.as_bytes()),
            Err(MetaError::Malformed('S'))
        );
    }

    #[test]
    fn reserved_names_cover_both_spellings_and_suffixes() {
        assert!(is_reserved_xattr(b"trusted.fsredirect"));
        assert!(is_reserved_xattr(b"user.fsredirect"));
        assert!(is_reserved_xattr(b"user.fsredirect.extra"));
        assert!(!is_reserved_xattr(b"user.fsredirec"));
        assert!(!is_reserved_xattr(b"user.other"));
    }

    #[test]
    fn listing_hides_reserved_names() {
        let list = b"user.a\0trusted.fsredirect\0user.b\0";
        assert_eq!(filter_xattr_list(list), b"user.a\0user.b\0");
    }
}
