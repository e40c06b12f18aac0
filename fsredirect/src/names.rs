//! Guest names: validation before any host syscall, and the table of names through which each
//! inode was reached (the common portion of a file is the path of one of its names).

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::io;

/// The FUSE root inode.
pub const ROOT_INODE: u64 = 1;

/// Longest name component (NAME_MAX).
pub const NAME_MAX: usize = 255;

/// Checks a name the guest sent: one component, 1..=255 bytes, no '/', not '.' or '..'.
/// (A `CStr` cannot hold NUL.) Fails with EINVAL, or ENAMETOOLONG for long names.
pub fn validate_name(name: &CStr) -> io::Result<()> {
    let bytes = name.to_bytes();
    if bytes.len() > NAME_MAX {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    if bytes.is_empty() || bytes == b"." || bytes == b".." || bytes.contains(&b'/') {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    Ok(())
}

/// Where one inode was seen: (parent inode, name).
type Link = (u64, CString);

#[derive(Debug, Default)]
struct Known {
    links: Vec<Link>,
    lookups: u64,
}

/// Inode -> names table, kept in step with the kernel's lookup counts.
///
/// Every operation costs the same however many inodes are known: a name is found through an
/// index from (parent, name) to the inode holding it, and only that inode's own names are
/// walked. A name belongs to one inode at a time.
#[derive(Debug, Default)]
pub struct NameTable {
    inodes: HashMap<u64, Known>,
    by_name: HashMap<Link, u64>,
    /// Link entries examined so far (see `links_visited`).
    visited: u64,
}

impl NameTable {
    /// Records that the kernel now holds one more reference to `inode`, reached as
    /// `parent`/`name`. A previous holder of that name loses it.
    pub fn remember(&mut self, inode: u64, parent: u64, name: &CStr) {
        let key = (parent, name.to_owned());
        match self.by_name.get(&key) {
            Some(&holder) if holder == inode => {}
            Some(&holder) => {
                self.unlink_from(holder, parent, name);
                self.by_name.insert(key, inode);
                self.inodes
                    .entry(inode)
                    .or_default()
                    .links
                    .push((parent, name.to_owned()));
            }
            None => {
                self.by_name.insert(key, inode);
                self.inodes
                    .entry(inode)
                    .or_default()
                    .links
                    .push((parent, name.to_owned()));
            }
        }
        self.inodes.entry(inode).or_default().lookups += 1;
    }

    /// True if the kernel holds at least one reference to `inode`.
    pub fn is_known(&self, inode: u64) -> bool {
        self.inodes.get(&inode).is_some_and(|k| k.lookups > 0)
    }

    /// Empties the table; returns each inode the kernel held and how many references.
    pub fn drain(&mut self) -> Vec<(u64, u64)> {
        self.by_name.clear();
        self.inodes
            .drain()
            .map(|(inode, known)| (inode, known.lookups))
            .collect()
    }

    /// How many inodes the kernel holds references to.
    pub fn known(&self) -> usize {
        self.inodes.len()
    }

    /// Drops `count` kernel references; forgets the inode when none remain.
    /// Returns true if the inode is no longer known.
    pub fn forget(&mut self, inode: u64, count: u64) -> bool {
        let Some(known) = self.inodes.get_mut(&inode) else {
            return true;
        };
        known.lookups = known.lookups.saturating_sub(count);
        if known.lookups > 0 {
            return false;
        }
        if let Some(known) = self.inodes.remove(&inode) {
            self.visited += known.links.len() as u64;
            for link in known.links {
                if self.by_name.get(&link) == Some(&inode) {
                    self.by_name.remove(&link);
                }
            }
        }
        true
    }

    /// Removes the name `parent`/`name` from whichever inode has it.
    pub fn remove_name(&mut self, parent: u64, name: &CStr) {
        if let Some(holder) = self.by_name.remove(&(parent, name.to_owned())) {
            self.unlink_from(holder, parent, name);
        }
    }

    /// Renames `old` to `new` for whichever inode had `old`; a previous holder of `new` loses it.
    pub fn rename(&mut self, old: (u64, &CStr), new: (u64, &CStr)) {
        if old == new {
            return;
        }
        self.remove_name(new.0, new.1);
        let Some(holder) = self.by_name.remove(&(old.0, old.1.to_owned())) else {
            return;
        };
        self.relink(holder, old, new);
        self.by_name.insert((new.0, new.1.to_owned()), holder);
    }

    /// Swaps two names (RENAME_EXCHANGE).
    pub fn exchange(&mut self, a: (u64, &CStr), b: (u64, &CStr)) {
        let key_a = (a.0, a.1.to_owned());
        let key_b = (b.0, b.1.to_owned());
        let holder_a = self.by_name.remove(&key_a);
        let holder_b = self.by_name.remove(&key_b);
        // Two hard links of one inode swapped: the inode still has both names.
        if holder_a != holder_b {
            if let Some(holder) = holder_a {
                self.relink(holder, a, b);
            }
            if let Some(holder) = holder_b {
                self.relink(holder, b, a);
            }
        }
        if let Some(holder) = holder_a {
            self.by_name.insert(key_b, holder);
        }
        if let Some(holder) = holder_b {
            self.by_name.insert(key_a, holder);
        }
    }

    /// Link entries examined by the operations so far: with the index this grows with the
    /// names of the inodes an operation touches, never with the number of inodes known.
    pub fn links_visited(&self) -> u64 {
        self.visited
    }

    /// Drops `parent`/`name` from the links of `inode` (not from the index).
    fn unlink_from(&mut self, inode: u64, parent: u64, name: &CStr) {
        if let Some(known) = self.inodes.get_mut(&inode) {
            self.visited += known.links.len() as u64;
            known
                .links
                .retain(|(p, n)| !(*p == parent && n.as_c_str() == name));
        }
    }

    /// Replaces the link `from` of `inode` by `to` (not in the index).
    fn relink(&mut self, inode: u64, from: (u64, &CStr), to: (u64, &CStr)) {
        if let Some(known) = self.inodes.get_mut(&inode) {
            self.visited += known.links.len() as u64;
            for link in known.links.iter_mut() {
                if link.0 == from.0 && link.1.as_c_str() == from.1 {
                    *link = (to.0, to.1.to_owned());
                }
            }
        }
    }

    /// The path of `inode` relative to the share root, as components, through its first known
    /// name; `None` if the inode or one of its ancestors has no known name.
    pub fn path(&self, inode: u64) -> Option<Vec<CString>> {
        let mut parts = Vec::new();
        let mut current = inode;
        // A depth bound guards against a cycle, which would be a bug, never a hang.
        for _ in 0..4096 {
            if current == ROOT_INODE {
                parts.reverse();
                return Some(parts);
            }
            let (parent, name) = self.inodes.get(&current)?.links.first()?;
            parts.push(name.clone());
            current = *parent;
        }
        None
    }

    /// The path of `parent`/`name` relative to the share root.
    pub fn child_path(&self, parent: u64, name: &CStr) -> Option<Vec<CString>> {
        let mut parts = self.path(parent)?;
        parts.push(name.to_owned());
        Some(parts)
    }

    /// All known names of `inode`.
    pub fn links(&self, inode: u64) -> Vec<(u64, CString)> {
        self.inodes
            .get(&inode)
            .map(|k| k.links.clone())
            .unwrap_or_default()
    }
}

/// Joins path components with '/'.
pub fn join(parts: &[CString]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        out.extend_from_slice(part.to_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_name_is_invalid() {
        assert_eq!(
            validate_name(c"").unwrap_err().raw_os_error(),
            Some(libc::EINVAL)
        );
    }

    #[test]
    fn dot_and_dotdot_are_invalid() {
        assert!(validate_name(c".").is_err());
        assert!(validate_name(c"..").is_err());
    }

    #[test]
    fn name_with_slash_is_invalid() {
        assert!(validate_name(c"a/b").is_err());
    }

    #[test]
    fn name_over_255_bytes_is_too_long() {
        let long = CString::new(vec![b'a'; 256]).unwrap();
        assert_eq!(
            validate_name(&long).unwrap_err().raw_os_error(),
            Some(libc::ENAMETOOLONG)
        );
        let ok = CString::new(vec![b'a'; 255]).unwrap();
        assert!(validate_name(&ok).is_ok());
    }

    #[test]
    fn path_walks_parents_to_root() {
        let mut t = NameTable::default();
        t.remember(2, ROOT_INODE, c"dir");
        t.remember(3, 2, c"file");
        assert_eq!(join(&t.path(3).unwrap()), b"dir/file");
    }

    #[test]
    fn rename_of_directory_moves_descendant_paths() {
        let mut t = NameTable::default();
        t.remember(2, ROOT_INODE, c"dir");
        t.remember(3, 2, c"file");
        t.rename((ROOT_INODE, c"dir"), (ROOT_INODE, c"moved"));
        assert_eq!(join(&t.path(3).unwrap()), b"moved/file");
    }

    #[test]
    fn removing_first_link_falls_back_to_second() {
        let mut t = NameTable::default();
        t.remember(3, ROOT_INODE, c"a");
        t.remember(3, ROOT_INODE, c"b");
        t.remove_name(ROOT_INODE, c"a");
        assert_eq!(join(&t.path(3).unwrap()), b"b");
    }

    #[test]
    fn forget_drops_inode_after_last_reference() {
        let mut t = NameTable::default();
        t.remember(3, ROOT_INODE, c"a");
        t.remember(3, ROOT_INODE, c"a");
        assert!(!t.forget(3, 1));
        assert!(t.forget(3, 1));
        assert!(t.path(3).is_none());
    }

    #[test]
    fn name_operations_cost_the_same_however_many_inodes_are_known() {
        let mut t = NameTable::default();
        for inode in 10..50_010u64 {
            t.remember(
                inode,
                ROOT_INODE,
                &CString::new(format!("f{inode}")).unwrap(),
            );
        }
        let before = t.links_visited();
        t.remove_name(ROOT_INODE, c"f20");
        t.rename((ROOT_INODE, c"f30"), (ROOT_INODE, c"g30"));
        t.rename((ROOT_INODE, c"f40"), (ROOT_INODE, c"f50"));
        t.exchange((ROOT_INODE, c"f60"), (ROOT_INODE, c"f70"));
        // Each operation looks at the one or two inodes it names, not at the 50,000 others.
        assert!(
            t.links_visited() - before <= 8,
            "{}",
            t.links_visited() - before
        );
        assert_eq!(join(&t.path(30).unwrap()), b"g30");
        assert_eq!(join(&t.path(40).unwrap()), b"f50");
        assert!(t.path(50).is_none());
        assert_eq!(join(&t.path(60).unwrap()), b"f70");
    }

    #[test]
    fn a_name_remembered_for_a_new_inode_leaves_the_old_one() {
        let mut t = NameTable::default();
        t.remember(3, ROOT_INODE, c"a");
        t.remember(4, ROOT_INODE, c"a");
        assert!(t.path(3).is_none());
        assert_eq!(join(&t.path(4).unwrap()), b"a");
    }

    #[test]
    fn exchanging_two_links_of_one_inode_keeps_both() {
        let mut t = NameTable::default();
        t.remember(3, ROOT_INODE, c"a");
        t.remember(3, ROOT_INODE, c"b");
        t.exchange((ROOT_INODE, c"a"), (ROOT_INODE, c"b"));
        t.remove_name(ROOT_INODE, c"a");
        assert_eq!(join(&t.path(3).unwrap()), b"b");
    }

    #[test]
    fn renaming_a_name_onto_itself_keeps_it() {
        let mut t = NameTable::default();
        t.remember(3, ROOT_INODE, c"a");
        t.rename((ROOT_INODE, c"a"), (ROOT_INODE, c"a"));
        assert_eq!(join(&t.path(3).unwrap()), b"a");
    }

    #[test]
    fn exchange_swaps_names() {
        let mut t = NameTable::default();
        t.remember(3, ROOT_INODE, c"a");
        t.remember(4, ROOT_INODE, c"b");
        t.exchange((ROOT_INODE, c"a"), (ROOT_INODE, c"b"));
        assert_eq!(join(&t.path(3).unwrap()), b"b");
        assert_eq!(join(&t.path(4).unwrap()), b"a");
    }
}
