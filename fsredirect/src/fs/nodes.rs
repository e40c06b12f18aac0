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
//!   reading request never stores figures older than a change that finished. A WRITE of a
//!   known size keeps the size it makes, which it knows, and drops only the blocks
//!   ([`NodeTable::object_written`]);
//! - the stub's size and the coarse clock tick it was last stamped at are what the server
//!   last set through its own stub descriptor ([`NodeTable::stub_synced`]), so a WRITE that
//!   changes neither stamps nothing; anything else that may touch the stub (a SETATTR, a
//!   slower path) drops them ([`NodeTable::stub_unknown`]);
//! - a node whose host file may be gone (renamed over, unlinked, forgotten, or a node id that
//!   comes back for another file) loses everything but its kind
//!   ([`NodeTable::forget_object`]), and a forgotten node loses its entry.
//!
//! Each entry also records the node's identity (device and inode number) as the passthrough
//! layer last reported it ([`NodeTable::set_identity`]), with which a LOOKUP of a node the
//! kernel holds is answered without that layer (`revalidate.rs`).
//!
//! Memory is one small entry per node the kernel holds, as the name table's.
//!
//! With file handles, the passthrough layer reopens a node from its handle for every request
//! (open, stat, close). The table may hold one passthrough-layer handle on an `O_PATH`
//! descriptor for each of the nodes used most recently ([`NodeTable::set_hot`]), at most as
//! many as it was built for: a GETATTR through it is one `statx`. The oldest goes when the
//! set is full, and a node's goes with its entry; the caller releases what comes back.

use std::collections::{HashMap, VecDeque};

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

    /// The figures of an object from its `stat`.
    pub fn of_stat(st: &libc::stat64) -> Self {
        ObjectAttr {
            size: st.st_size as u64,
            blocks: st.st_blocks as u64,
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
    /// The store object's size; `None` until read, and after every change but a WRITE.
    size: Option<u64>,
    /// The store object's 512-byte blocks; `None` until read, and after every change.
    blocks: Option<u64>,
    /// The stub as the server last set it, if nothing else may have touched it since.
    stub: Option<StubStamp>,
    /// The passthrough layer's handle on an `O_PATH` descriptor of the node, if it is hot.
    hot: Option<u64>,
    /// The guest-tree inode, as the passthrough layer last reported it for this node.
    identity: Option<Identity>,
}

/// A guest-tree inode: its device and inode number, which name it while it cannot be freed,
/// and its file type, which never changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Identity {
    pub dev: u64,
    pub ino: u64,
    /// `st_mode & S_IFMT`.
    pub file_type: u32,
}

impl Identity {
    /// The identity of the inode whose attributes are `attr`.
    pub fn of(attr: &libc::stat64) -> Self {
        Identity {
            dev: attr.st_dev,
            ino: attr.st_ino,
            file_type: attr.st_mode & libc::S_IFMT,
        }
    }

    /// True if `attr` are attributes of this inode (same device and inode number).
    pub fn matches(&self, attr: &libc::stat64) -> bool {
        (attr.st_dev, attr.st_ino) == (self.dev, self.ino)
    }
}

/// A stub's size and the coarse clock tick (seconds, nanoseconds) at or before its last
/// stamp: its mtime is at least that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct StubStamp {
    /// The stub's apparent size.
    pub size: u64,
    /// The coarse clock read just before the stub was last stamped.
    pub tick: (i64, i64),
}

impl Node {
    fn new(kind: Kind) -> Self {
        Node {
            kind,
            record: None,
            size: None,
            blocks: None,
            stub: None,
            hot: None,
            identity: None,
        }
    }
}

/// The per-node entries of one server.
#[derive(Debug, Default)]
pub(super) struct NodeTable {
    nodes: HashMap<u64, Node>,
    /// Most nodes holding a hot handle at once.
    hot_cap: usize,
    /// Nodes given a hot handle, oldest first (some may have lost it since).
    hot_order: VecDeque<u64>,
    /// Nodes holding a hot handle now.
    hot_count: usize,
}

impl NodeTable {
    /// A table that keeps hot handles for at most `hot_cap` nodes (none: 0).
    pub fn new(hot_cap: usize) -> Self {
        NodeTable {
            hot_cap,
            ..NodeTable::default()
        }
    }

    /// The kind of `inode`, if known.
    pub fn kind(&self, inode: u64) -> Option<Kind> {
        self.nodes.get(&inode).map(|n| n.kind)
    }

    /// The kind and the redirect record of `inode`, if its kind is known.
    pub fn kind_and_record(&self, inode: u64) -> Option<(Kind, Option<Meta>)> {
        self.nodes.get(&inode).map(|n| (n.kind, n.record.clone()))
    }

    /// The redirect record of `inode` as last read or written, if known.
    pub fn record(&self, inode: u64) -> Option<&Meta> {
        self.nodes.get(&inode).and_then(|n| n.record.as_ref())
    }

    /// Sets the kind of `inode`. A new kind starts afresh: its record and object figures, if
    /// any, were those of the old one.
    /// Its hot handle stays: the node's guest-tree inode is the same.
    pub fn set_kind(&mut self, inode: u64, kind: Kind) {
        let node = self.nodes.entry(inode).or_insert(Node::new(kind));
        if node.kind != kind {
            *node = Node {
                hot: node.hot,
                identity: node.identity,
                ..Node::new(kind)
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

    /// The object figures of `inode`, if both are known.
    pub fn object(&self, inode: u64) -> Option<ObjectAttr> {
        let node = self.nodes.get(&inode)?;
        Some(ObjectAttr {
            size: node.size?,
            blocks: node.blocks?,
        })
    }

    /// The object size of `inode`, if known.
    pub fn object_size(&self, inode: u64) -> Option<u64> {
        self.nodes.get(&inode).and_then(|n| n.size)
    }

    /// Stores the object figures of `inode`, read under its data lock; nothing for a node
    /// whose kind is not known.
    pub fn set_object(&mut self, inode: u64, attr: ObjectAttr) {
        if let Some(node) = self.nodes.get_mut(&inode) {
            node.size = Some(attr.size);
            node.blocks = Some(attr.blocks);
        }
    }

    /// Drops the object figures of `inode`: its object is changing (under its data lock).
    pub fn object_changed(&mut self, inode: u64) {
        if let Some(node) = self.nodes.get_mut(&inode) {
            node.size = None;
            node.blocks = None;
        }
    }

    /// A WRITE (under the data lock) left the object of `inode` `size` bytes long; its
    /// blocks are unknown until read again.
    pub fn object_written(&mut self, inode: u64, size: u64) {
        if let Some(node) = self.nodes.get_mut(&inode) {
            node.size = Some(size);
            node.blocks = None;
        }
    }

    /// How the server last left the stub of `inode`, if nothing else may have touched it.
    pub fn stub(&self, inode: u64) -> Option<StubStamp> {
        self.nodes.get(&inode).and_then(|n| n.stub)
    }

    /// The server just set the stub of `inode` (under its data lock) to `stamp`.
    pub fn stub_synced(&mut self, inode: u64, stamp: StubStamp) {
        if let Some(node) = self.nodes.get_mut(&inode) {
            node.stub = Some(stamp);
        }
    }

    /// The stub of `inode` may have changed by another way than [`NodeTable::stub_synced`].
    pub fn stub_unknown(&mut self, inode: u64) {
        if let Some(node) = self.nodes.get_mut(&inode) {
            node.stub = None;
        }
    }

    /// Drops what `inode`'s host files said (record, object figures, stub): they may be
    /// gone, or another file may come back under this node id. Its kind stays, and its
    /// identity: the node still stands for the same host inode, and a node id that comes
    /// back is admitted again, which records the new one.
    pub fn forget_object(&mut self, inode: u64) {
        if let Some(node) = self.nodes.get_mut(&inode) {
            node.record = None;
            node.size = None;
            node.blocks = None;
            node.stub = None;
        }
    }

    /// Records the identity of `inode`'s guest-tree file, from attributes the passthrough
    /// layer just gave for it; nothing for a node whose kind is not known.
    pub fn set_identity(&mut self, inode: u64, attr: &libc::stat64) {
        if let Some(node) = self.nodes.get_mut(&inode) {
            node.identity = Some(Identity::of(attr));
        }
    }

    /// The identity last recorded for `inode`.
    pub fn identity(&self, inode: u64) -> Option<Identity> {
        self.nodes.get(&inode).and_then(|n| n.identity)
    }

    /// Drops the entry of a node the kernel forgot; returns its hot handle, for the caller
    /// to release.
    pub fn remove(&mut self, inode: u64) -> Option<u64> {
        let hot = self.nodes.remove(&inode)?.hot;
        if hot.is_some() {
            self.hot_count -= 1;
        }
        hot
    }

    /// Whether hot handles are kept at all.
    pub fn keeps_hot(&self) -> bool {
        self.hot_cap > 0
    }

    /// The hot handle of `inode`, if it has one.
    pub fn hot(&self, inode: u64) -> Option<u64> {
        self.nodes.get(&inode).and_then(|n| n.hot)
    }

    /// Gives `inode` the hot handle `handle`. Returns the `(inode, handle)` pairs the caller
    /// must release: the oldest hot handle when the set is full, or `handle` itself when the
    /// node is not known or already has one (another request gave it one meanwhile).
    pub fn set_hot(&mut self, inode: u64, handle: u64) -> Vec<(u64, u64)> {
        match self.nodes.get_mut(&inode) {
            Some(node) if node.hot.is_none() && self.hot_cap > 0 => node.hot = Some(handle),
            _ => return vec![(inode, handle)],
        }
        self.hot_count += 1;
        self.hot_order.push_back(inode);
        let mut evicted = Vec::new();
        while self.hot_count > self.hot_cap {
            let Some(oldest) = self.hot_order.pop_front() else {
                break;
            };
            if let Some(h) = self.nodes.get_mut(&oldest).and_then(|n| n.hot.take()) {
                self.hot_count -= 1;
                evicted.push((oldest, h));
            }
        }
        // Nodes forgotten since they were queued leave entries behind: keep the queue
        // within a small multiple of the set.
        if self.hot_order.len() > 2 * self.hot_cap.max(8) {
            let nodes = &self.nodes;
            self.hot_order
                .retain(|i| nodes.get(i).is_some_and(|n| n.hot.is_some()));
        }
        evicted
    }

    /// Takes every hot handle out, for the caller to release (the session ends).
    pub fn take_hot(&mut self) -> Vec<(u64, u64)> {
        self.hot_order.clear();
        self.hot_count = 0;
        self.nodes
            .iter_mut()
            .filter_map(|(i, n)| n.hot.take().map(|h| (*i, h)))
            .collect()
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
    fn an_identity_survives_a_new_kind_and_goes_with_the_entry() {
        // SAFETY: a zeroed stat is a valid value.
        let mut attr: libc::stat64 = unsafe { std::mem::zeroed() };
        attr.st_dev = 7;
        attr.st_ino = 42;
        attr.st_mode = libc::S_IFDIR | 0o755;
        let mut t = NodeTable::default();
        t.set_identity(1, &attr);
        assert_eq!(t.identity(1), None, "not for an unknown node");
        t.set_kind(1, Kind::Plain);
        t.set_identity(1, &attr);
        t.set_kind(1, Kind::Redirect);
        assert_eq!(
            t.identity(1).map(|i| (i.dev, i.ino, i.file_type)),
            Some((7, 42, libc::S_IFDIR)),
            "a placement move keeps the host inode"
        );
        t.forget_object(1);
        assert!(t.identity(1).is_some_and(|i| i.matches(&attr)));
        attr.st_ino = 43;
        assert!(!t.identity(1).unwrap().matches(&attr));
        t.remove(1);
        assert_eq!(t.identity(1), None);
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
        t.object_written(1, 30);
        assert_eq!(t.object(1), None, "blocks unknown after a write");
        assert_eq!(t.object_size(1), Some(30));
        let stamp = StubStamp {
            size: 30,
            tick: (5, 0),
        };
        t.stub_synced(1, stamp);
        assert_eq!(t.stub(1), Some(stamp));
        t.stub_unknown(1);
        assert_eq!(t.stub(1), None);
        t.stub_synced(1, stamp);
        t.set_object(1, SIZES);
        t.forget_object(1);
        assert_eq!(t.kind_and_record(1), Some((Kind::Redirect, None)));
        assert_eq!(t.object(1), None);
        assert_eq!(t.object_size(1), None);
        assert_eq!(t.stub(1), None);
        assert_eq!(t.remove(1), None);
        assert_eq!(t.kind(1), None);
    }

    #[test]
    fn hot_handles_are_bounded_oldest_out_and_given_back() {
        let mut t = NodeTable::new(2);
        for i in 1..=4 {
            t.set_kind(i, Kind::Plain);
        }
        assert_eq!(t.set_hot(9, 90), vec![(9, 90)], "unknown node");
        assert!(t.set_hot(1, 10).is_empty());
        assert_eq!(t.set_hot(1, 11), vec![(1, 11)], "already hot");
        assert!(t.set_hot(2, 20).is_empty());
        assert_eq!(t.set_hot(3, 30), vec![(1, 10)], "oldest out");
        assert_eq!(t.hot(1), None);
        t.set_kind(2, Kind::Redirect);
        assert_eq!(t.hot(2), Some(20), "a new kind keeps the inode's handle");
        assert_eq!(t.remove(2), Some(20));
        assert!(t.set_hot(4, 40).is_empty(), "room freed by the removal");
        let mut all = t.take_hot();
        all.sort();
        assert_eq!(all, vec![(3, 30), (4, 40)]);
        assert_eq!(t.hot(3), None);
    }

    #[test]
    fn churn_keeps_the_queue_small() {
        let mut t = NodeTable::new(4);
        for i in 0..10_000 {
            t.set_kind(i, Kind::Plain);
            t.set_hot(i, i);
            t.remove(i);
        }
        assert!(t.hot_order.len() <= 2 * 8 + 1, "{}", t.hot_order.len());
        assert_eq!(t.hot_count, 0);
    }

    #[test]
    fn no_hot_handles_without_room() {
        let mut t = NodeTable::new(0);
        t.set_kind(1, Kind::Plain);
        assert!(!t.keeps_hot());
        assert_eq!(t.set_hot(1, 10), vec![(1, 10)]);
    }
}
