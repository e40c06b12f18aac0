//! What the server knows of each node the kernel holds: its kind, the redirect record last read
//! from or written to its stub, and its store object's size and block count.
//!
//! Filled on first use and kept until the kernel forgets the node, so a GETATTR or a repeated
//! LOOKUP of a redirected file costs the host what one of a plain file costs: the passthrough
//! layer's own calls, nothing more. It stays true because the server is the only writer of
//! the volume and of the metadata while it holds the volume lock, and changes them only in
//! these places, each of which updates the entry:
//! - a node's kind and record change with a placement move or a special file's creation
//!   ([`NodeTable::set_kind`], [`NodeTable::set_record`]);
//! - an object's size and blocks change only under the node's data lock (WRITE, SETATTR of
//!   the size, fallocate, O_TRUNC), which drops them ([`NodeTable::object_changed`]) and
//!   reads them back under the same lock; they are filled only under that lock too, so a
//!   reading request never stores figures older than a change that finished;
//! - a node whose host file may be gone (renamed over, unlinked, forgotten, or a node id that
//!   comes back for another file) loses everything but its kind
//!   ([`NodeTable::forget_object`]), and a forgotten node loses its entry.
//!
//! Memory is one small entry per node the kernel holds, as the name table's.

use std::collections::HashMap;

use super::Kind;
use crate::meta::Meta;

/// A store object's figures the guest sees in place of its stub's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ObjectAttr {
    /// Apparent size in bytes.
    pub size: u64,
    /// 512-byte blocks allocated.
    pub blocks: u64,
}

impl ObjectAttr {
    /// The figures of an object from its host metadata.
    pub fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        ObjectAttr {
            size: meta.size(),
            blocks: meta.blocks(),
        }
    }

    /// Puts these figures in place of a stub's in `st`.
    pub fn apply(self, st: &mut libc::stat64) {
        st.st_size = self.size as i64;
        st.st_blocks = self.blocks as i64;
    }
}

/// One node's entry.
#[derive(Debug)]
struct Node {
    kind: Kind,
    /// The redirect record as last read from or written to the stub; `None` until then.
    record: Option<Meta>,
    /// The store object's figures; `None` until read, and after every change.
    object: Option<ObjectAttr>,
}

/// The per-node entries of one server.
#[derive(Debug, Default)]
pub(super) struct NodeTable {
    nodes: HashMap<u64, Node>,
}

impl NodeTable {
    /// The kind of `inode`, if known.
    pub fn kind(&self, inode: u64) -> Option<Kind> {
        self.nodes.get(&inode).map(|n| n.kind)
    }

    /// The kind and the redirect record of `inode`, if its kind is known.
    pub fn kind_and_record(&self, inode: u64) -> Option<(Kind, Option<Meta>)> {
        self.nodes.get(&inode).map(|n| (n.kind, n.record.clone()))
    }

    /// Sets the kind of `inode`. A new kind starts afresh: its record and object figures, if
    /// any, were those of the old one.
    pub fn set_kind(&mut self, inode: u64, kind: Kind) {
        let node = self.nodes.entry(inode).or_insert(Node {
            kind,
            record: None,
            object: None,
        });
        if node.kind != kind {
            *node = Node {
                kind,
                record: None,
                object: None,
            };
        }
    }

    /// Records `meta` as what the stub of `inode` holds now (read or just written); nothing
    /// for a node whose kind is not known.
    pub fn set_record(&mut self, inode: u64, meta: Option<Meta>) {
        if let Some(node) = self.nodes.get_mut(&inode) {
            node.record = meta;
        }
    }

    /// The object figures of `inode`, if known.
    pub fn object(&self, inode: u64) -> Option<ObjectAttr> {
        self.nodes.get(&inode).and_then(|n| n.object)
    }

    /// Stores the object figures of `inode`, read under its data lock; nothing for a node
    /// whose kind is not known.
    pub fn set_object(&mut self, inode: u64, attr: ObjectAttr) {
        if let Some(node) = self.nodes.get_mut(&inode) {
            node.object = Some(attr);
        }
    }

    /// Drops the object figures of `inode`: its object is changing (under its data lock).
    pub fn object_changed(&mut self, inode: u64) {
        if let Some(node) = self.nodes.get_mut(&inode) {
            node.object = None;
        }
    }

    /// Drops what `inode`'s host files said (record and object figures): they may be gone,
    /// or another file may come back under this node id. Its kind stays.
    pub fn forget_object(&mut self, inode: u64) {
        if let Some(node) = self.nodes.get_mut(&inode) {
            node.record = None;
            node.object = None;
        }
    }

    /// Drops the entry of a node the kernel forgot.
    pub fn remove(&mut self, inode: u64) {
        self.nodes.remove(&inode);
    }

    /// Number of entries.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.nodes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZES: ObjectAttr = ObjectAttr {
        size: 10,
        blocks: 8,
    };

    fn record() -> Meta {
        Meta::redirect(b"v", b"a/b")
    }

    #[test]
    fn unknown_nodes_hold_nothing() {
        let mut t = NodeTable::default();
        t.set_record(1, Some(record()));
        t.set_object(1, SIZES);
        assert_eq!(t.kind(1), None);
        assert_eq!(t.object(1), None);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn a_new_kind_starts_afresh_and_the_same_kind_keeps_its_figures() {
        let mut t = NodeTable::default();
        t.set_kind(1, Kind::Redirect);
        t.set_record(1, Some(record()));
        t.set_object(1, SIZES);
        t.set_kind(1, Kind::Redirect);
        assert_eq!(t.object(1), Some(SIZES));
        assert_eq!(t.kind_and_record(1), Some((Kind::Redirect, Some(record()))));
        t.set_kind(1, Kind::Plain);
        assert_eq!(t.object(1), None);
        assert_eq!(t.kind_and_record(1), Some((Kind::Plain, None)));
    }

    #[test]
    fn changes_drop_figures_and_forgetting_drops_the_entry() {
        let mut t = NodeTable::default();
        t.set_kind(1, Kind::Redirect);
        t.set_record(1, Some(record()));
        t.set_object(1, SIZES);
        t.object_changed(1);
        assert_eq!(t.object(1), None);
        assert!(t.kind_and_record(1).unwrap().1.is_some());
        t.set_object(1, SIZES);
        t.forget_object(1);
        assert_eq!(t.kind_and_record(1), Some((Kind::Redirect, None)));
        assert_eq!(t.object(1), None);
        t.remove(1);
        assert_eq!(t.kind(1), None);
    }
}
