//! The reference model: names and contents (bytes) of every object the guest made, hard links,
//! files unlinked while open, and what the guest's "kernel" knows (node ids and their lookup
//! counts, open handles). It judges each reply: [`Model::apply`] accepts an outcome and moves
//! the model on, or says what is wrong.
//!
//! Where the protocol leaves room (a raw request the kernel would never send: a handle with
//! another node, a write through a read-only handle, anything on an object no name and no
//! handle reaches any more), the model accepts success or an error, and follows whichever
//! happened. Everything a program could observe through ordinary calls is checked exactly.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use super::ops::{
    errno_name, Attr, Call, Digest, Fail, HandleRef, NodeRef, Outcome, Reply, Req, Shown, SymReq,
    Tag, TagName, Time, BOGUS_HANDLE, BOGUS_NODE, ROOT_NODE, ROOT_OBJ,
};

/// Offsets and sizes from here on are beyond any file ext4 can hold (16 TiB): EFBIG or EINVAL.
/// The generator never makes sizes between 1 MiB and this.
pub const MAX_FILE: u64 = 1 << 45;

/// What kind of object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A FIFO, socket or device node.
    Special { kind: u32, rdev: u32 },
    /// A symlink and its target.
    Symlink(Vec<u8>),
}

/// One object of the guest's tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Obj {
    /// What it is.
    pub kind: Kind,
    /// Contents of a regular file.
    pub data: Rc<Vec<u8>>,
    /// Permission bits, when known.
    pub perm: Option<u32>,
    /// The guest's extended attributes.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Modification time, while it is one the guest set explicitly.
    pub mtime: Option<(i64, i64)>,
    /// Names in the tree (a directory: 1 while attached).
    pub links: u32,
    /// Open file handles on it.
    pub opens: u32,
    /// A directory's entries.
    pub children: BTreeMap<Vec<u8>, Tag>,
    /// A directory's parent.
    pub parent: Tag,
    /// The host inode number behind it, once seen.
    pub ino: Option<u64>,
}

/// Whether an object can still be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Life {
    /// It has a name.
    Live,
    /// A regular file without a name, still open.
    Orphan,
    /// Neither named nor open: nothing a guest program could observe.
    Dead,
}

/// What a handle is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HKind {
    /// An open regular file.
    File,
    /// An open directory (OPENDIR).
    Dir,
    /// Something the kernel would never open (a directory through OPEN, a dead file): any
    /// outcome is accepted for it.
    Opaque,
}

/// One open handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handle {
    /// The slot the generator names it by.
    pub slot: Tag,
    /// The object.
    pub obj: Tag,
    /// What it is.
    pub kind: HKind,
    /// Its open flags.
    pub flags: u32,
}

/// What the guest's kernel holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Kernel {
    /// Object -> (node id, lookup count).
    pub known: BTreeMap<Tag, (u64, u64)>,
    /// Node id -> object, for known nodes.
    pub by_node: BTreeMap<u64, Tag>,
    /// Object -> the last node id it had (kept across forgets and restarts).
    pub last_node: BTreeMap<Tag, u64>,
    /// Raw handle -> handle.
    pub handles: BTreeMap<u64, Handle>,
    /// Slot -> the last raw handle it had.
    pub slot_raw: BTreeMap<Tag, u64>,
    /// Node id -> the object this server last gave it to (known or not).
    pub last_owner: BTreeMap<u64, Tag>,
    /// Object -> the (directory, name) entries the kernel learnt it by (its dentries).
    pub seen: BTreeMap<Tag, BTreeSet<(Tag, Vec<u8>)>>,
}

/// The model of one share and of the guest kernel in front of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    /// Every object ever made (dead ones too: a stale node may still reach them).
    pub objs: BTreeMap<Tag, Obj>,
    /// The kernel's view.
    pub k: Kernel,
    /// Check that a name keeps its host inode (off when a policy may move files).
    pub check_ino: bool,
    /// While judging a request on a node id the kernel forgot: resolve it to the object
    /// the server last gave it to.
    stale: bool,
    /// Other states the last reply leaves possible (see [`Model::take_forks`]).
    forks: Vec<Model>,
    /// Objects whose data or names changed since the last full check.
    pub dirty: BTreeSet<Tag>,
}

/// A wrong reply: `class` groups findings (the shrinker keeps it), `msg` says what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// A short, stable description of the kind of finding.
    pub class: String,
    /// The details.
    pub msg: String,
}

/// Result of judging one reply.
pub type Judged = Result<(), Mismatch>;

/// How strictly to judge a request that ran concurrently with others.
#[derive(Debug, Clone, Default)]
pub struct Lenience {
    /// In a race: the attributes in replies may mix states.
    pub race: bool,
    /// Objects whose data a concurrent request changes: reads of them are not compared.
    pub data: BTreeSet<Tag>,
}

fn mm(class: impl Into<String>, msg: impl Into<String>) -> Mismatch {
    Mismatch {
        class: class.into(),
        msg: msg.into(),
    }
}

fn want_err(op: &str, out: &Outcome, why: &str) -> Judged {
    match out {
        Err(Fail::Errno(_)) => Ok(()),
        other => Err(mm(
            format!("{op}: success where an error is due"),
            format!("{op}: expected an error ({why}), got {}", Shown(other)),
        )),
    }
}

fn want_errno(op: &str, out: &Outcome, errs: &[i32], why: &str) -> Judged {
    match out {
        Err(Fail::Errno(e)) if errs.contains(e) => Ok(()),
        Err(Fail::Errno(e)) => Err(mm(
            format!(
                "{op}: {} instead of {}",
                errno_name(*e),
                errno_name(errs[0])
            ),
            format!(
                "{op}: expected {} ({why}), got {}",
                errno_name(errs[0]),
                errno_name(*e)
            ),
        )),
        other => Err(mm(
            format!("{op}: success where {} is due", errno_name(errs[0])),
            format!(
                "{op}: expected {} ({why}), got {}",
                errno_name(errs[0]),
                Shown(other)
            ),
        )),
    }
}

fn want_ok<'a>(op: &str, out: &'a Outcome, what: &str) -> Result<&'a Reply, Mismatch> {
    match out {
        Ok(r) => Ok(r),
        Err(Fail::Errno(e)) => Err(mm(
            format!("{op}: unexpected {}", errno_name(*e)),
            format!("{op}: expected {what}, got {}", errno_name(*e)),
        )),
        Err(Fail::Panic(m)) => Err(mm("panic", format!("{op}: panicked: {m}"))),
    }
}

/// Success is checked as `want_ok`; an error is accepted and ends the judgement.
fn either(out: &Outcome) -> Option<&Reply> {
    out.as_ref().ok()
}

fn bad_reply(op: &str, r: &Reply) -> Mismatch {
    mm(
        format!("{op}: wrong reply kind"),
        format!("{op}: unexpected reply {}", Shown(&Ok(r.clone()))),
    )
}

/// Why the file system must refuse a name, if it must.
pub fn bad_name(name: &[u8]) -> Option<&'static str> {
    if name.len() > 255 {
        Some("name longer than 255 bytes")
    } else if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        Some("invalid name")
    } else {
        None
    }
}

/// True for the xattr names the file system keeps to itself.
pub fn reserved_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.fsredirect") || name.starts_with(b"user.fsredirect")
}

fn accmode(flags: u32) -> i32 {
    flags as i32 & libc::O_ACCMODE
}

fn type_bits(kind: &Kind) -> u32 {
    match kind {
        Kind::Dir => libc::S_IFDIR,
        Kind::File => libc::S_IFREG,
        Kind::Special { kind, .. } => *kind,
        Kind::Symlink(_) => libc::S_IFLNK,
    }
}

impl Model {
    /// A share holding only its root directory.
    pub fn new(check_ino: bool) -> Self {
        let root = Obj {
            kind: Kind::Dir,
            data: Rc::default(),
            perm: None,
            xattrs: BTreeMap::new(),
            mtime: None,
            links: 1,
            opens: 0,
            children: BTreeMap::new(),
            parent: ROOT_OBJ,
            ino: None,
        };
        let mut k = Kernel::default();
        k.known.insert(ROOT_OBJ, (ROOT_NODE, 1));
        k.by_node.insert(ROOT_NODE, ROOT_OBJ);
        Model {
            objs: BTreeMap::from([(ROOT_OBJ, root)]),
            k,
            check_ino,
            stale: false,
            forks: Vec::new(),
            dirty: BTreeSet::new(),
        }
    }

    // ----- queries -----

    /// The object a node id reaches, as the kernel knows it.
    pub fn tgt(&self, node: u64) -> Option<Tag> {
        match self.k.by_node.get(&node) {
            Some(o) => Some(*o),
            None if self.stale => self.k.last_owner.get(&node).copied(),
            None => None,
        }
    }

    /// True if the kernel knows `o` by no entry whose directory it still knows (down from
    /// the root): a real kernel never gets there (a dentry pins its parent), so the server
    /// may have lost the object's path.
    fn cut_off(&self, o: Tag) -> bool {
        o != ROOT_OBJ && self.k.known.contains_key(&o) && !self.reachable(o, 0)
    }

    fn reachable(&self, o: Tag, depth: u32) -> bool {
        if o == ROOT_OBJ {
            return true;
        }
        if depth > 64 || !self.k.known.contains_key(&o) {
            return false;
        }
        self.k.seen.get(&o).is_some_and(|seen| {
            seen.iter()
                .any(|(d, n)| self.child(*d, n) == Some(o) && self.reachable(*d, depth + 1))
        })
    }

    /// The existing entries a request names by (directory, name).
    fn named(&self, call: &Call) -> Vec<Tag> {
        let pairs: Vec<(u64, &[u8])> = match call {
            Req::Lookup { parent, name }
            | Req::Mknod { parent, name, .. }
            | Req::Mkdir { parent, name, .. }
            | Req::Symlink { parent, name, .. }
            | Req::Unlink { parent, name }
            | Req::Rmdir { parent, name }
            | Req::Create { parent, name, .. } => vec![(*parent, name)],
            Req::Rename {
                olddir,
                oldname,
                newdir,
                newname,
                ..
            } => vec![(*olddir, oldname), (*newdir, newname)],
            Req::Link {
                newparent, newname, ..
            } => vec![(*newparent, newname)],
            _ => Vec::new(),
        };
        pairs
            .into_iter()
            .filter_map(|(p, n)| {
                let d = self.tgt(p)?;
                self.objs[&d].children.get(n).copied()
            })
            .collect()
    }

    /// Whether `o` can still be reached.
    pub fn life(&self, o: Tag) -> Life {
        let obj = &self.objs[&o];
        if o == ROOT_OBJ || obj.links > 0 {
            Life::Live
        } else if obj.opens > 0 {
            Life::Orphan
        } else {
            Life::Dead
        }
    }

    /// True if `o` is a directory.
    pub fn is_dir(&self, o: Tag) -> bool {
        self.objs[&o].kind == Kind::Dir
    }

    /// The entry `name` of directory `d`.
    pub fn child(&self, d: Tag, name: &[u8]) -> Option<Tag> {
        self.objs[&d].children.get(name).copied()
    }

    /// True if directory `a` is `x` or one of its ancestors.
    fn is_ancestor(&self, a: Tag, mut x: Tag) -> bool {
        loop {
            if x == a {
                return true;
            }
            if x == ROOT_OBJ {
                return false;
            }
            x = self.objs[&x].parent;
        }
    }

    fn dir_for(&self, node: u64) -> Result<Tag, &'static str> {
        let o = self.tgt(node).ok_or("unknown node")?;
        if !self.is_dir(o) {
            return Err("not a directory");
        }
        if self.life(o) != Life::Live {
            return Err("removed directory");
        }
        Ok(o)
    }

    /// The path of a live object (one of its names), for messages.
    pub fn path_of(&self, o: Tag) -> String {
        if o == ROOT_OBJ {
            return "/".into();
        }
        let mut stack = vec![(ROOT_OBJ, String::new())];
        while let Some((d, prefix)) = stack.pop() {
            for (name, &c) in &self.objs[&d].children {
                let p = format!("{prefix}/{}", String::from_utf8_lossy(name));
                if c == o {
                    return p;
                }
                if self.is_dir(c) {
                    stack.push((c, p));
                }
            }
        }
        format!("(no name: {})", TagName(o))
    }

    // ----- symbolic to raw -----

    /// The raw node id a symbolic node names now.
    pub fn node_raw(&self, r: NodeRef) -> u64 {
        match r {
            NodeRef::Root => ROOT_NODE,
            NodeRef::Obj(o) => self
                .k
                .known
                .get(&o)
                .map(|k| k.0)
                .or_else(|| self.k.last_node.get(&o).copied())
                .unwrap_or(BOGUS_NODE + o),
            NodeRef::Raw(x) => x,
        }
    }

    /// The raw handle a symbolic handle names now.
    pub fn handle_raw(&self, r: HandleRef) -> u64 {
        match r {
            HandleRef::Slot(s) => self.k.slot_raw.get(&s).copied().unwrap_or(BOGUS_HANDLE + s),
            HandleRef::Raw(x) => x,
        }
    }

    /// The request to send for a recorded one.
    pub fn resolve(&self, req: &SymReq) -> Call {
        req.map(
            &mut |n| self.node_raw(n),
            &mut |h| self.handle_raw(h),
            &mut |d| d.bytes(),
        )
    }

    /// The objects whose data `call` may change (for judging concurrent reads).
    pub fn data_targets(&self, call: &Call) -> Vec<Tag> {
        let by_handle = |h: &u64| self.k.handles.get(h).map(|h| h.obj);
        match call {
            Req::Write { handle, .. } | Req::Fallocate { handle, .. } => {
                by_handle(handle).into_iter().collect()
            }
            Req::Setattr { node, size, .. } if size.is_some() => {
                self.tgt(*node).into_iter().collect()
            }
            Req::Open { node, flags } if *flags as i32 & libc::O_TRUNC != 0 => {
                self.tgt(*node).into_iter().collect()
            }
            Req::Create {
                parent,
                name,
                flags,
                ..
            } if *flags as i32 & libc::O_TRUNC != 0 => self
                .tgt(*parent)
                .filter(|&p| self.is_dir(p))
                .and_then(|p| self.child(p, name))
                .into_iter()
                .collect(),
            _ => Vec::new(),
        }
    }

    // ----- changes -----

    fn set_data(&mut self, o: Tag, f: impl FnOnce(&mut Vec<u8>)) {
        self.dirty.insert(o);
        let obj = self.objs.get_mut(&o).unwrap();
        f(Rc::make_mut(&mut obj.data));
        obj.mtime = None;
    }

    fn touch_dir(&mut self, d: Tag) {
        self.objs.get_mut(&d).unwrap().mtime = None;
    }

    fn new_obj(&mut self, t: Tag, kind: Kind, perm: Option<u32>, d: Tag, name: &[u8]) {
        let obj = Obj {
            kind,
            data: Rc::default(),
            perm,
            xattrs: BTreeMap::new(),
            mtime: None,
            links: 0,
            opens: 0,
            children: BTreeMap::new(),
            parent: d,
            ino: None,
        };
        self.objs.insert(t, obj);
        self.add_entry(d, name, t);
    }

    fn add_entry(&mut self, d: Tag, name: &[u8], o: Tag) {
        self.dirty.insert(o);
        self.objs
            .get_mut(&d)
            .unwrap()
            .children
            .insert(name.to_vec(), o);
        self.touch_dir(d);
        let obj = self.objs.get_mut(&o).unwrap();
        obj.links += 1;
        if obj.kind == Kind::Dir {
            obj.parent = d;
        }
    }

    fn remove_entry(&mut self, d: Tag, name: &[u8]) -> Tag {
        let o = self
            .objs
            .get_mut(&d)
            .unwrap()
            .children
            .remove(name)
            .unwrap();
        self.touch_dir(d);
        self.dirty.insert(o);
        let obj = self.objs.get_mut(&o).unwrap();
        obj.links -= 1;
        if let Some(seen) = self.k.seen.get_mut(&o) {
            seen.remove(&(d, name.to_vec()));
        }
        o
    }

    /// [`Self::bury`] for every object.
    pub fn bury_all(&mut self) {
        let tags: Vec<Tag> = self.objs.keys().copied().collect();
        for o in tags {
            self.bury(o);
        }
    }

    /// Forgets what no guest program can observe any more about `o` once it is dead, so that
    /// model states differing only there compare equal.
    fn bury(&mut self, o: Tag) {
        if self.life(o) == Life::Dead {
            let obj = self.objs.get_mut(&o).unwrap();
            obj.data = Rc::default();
            obj.xattrs.clear();
            obj.mtime = None;
            obj.perm = None;
        }
    }

    fn register(&mut self, op: &str, o: Tag, node: u64, via: (Tag, &[u8])) -> Judged {
        if let Some(&(n, _)) = self.k.known.get(&o) {
            if n != node {
                return Err(mm(
                    format!("{op}: one object, two node ids"),
                    format!(
                        "{op}: {} ({}) is known to the kernel as node {n:#x}; the reply names node {node:#x}",
                        TagName(o),
                        self.path_of(o)
                    ),
                ));
            }
        }
        if let Some(&p) = self.k.by_node.get(&node) {
            if p != o {
                return Err(mm(
                    format!("{op}: one node id, two objects"),
                    format!(
                        "{op}: node {node:#x} is {} ({}) for the kernel; the reply gives it to {} ({})",
                        TagName(p),
                        self.path_of(p),
                        TagName(o),
                        self.path_of(o)
                    ),
                ));
            }
        }
        self.k.known.entry(o).or_insert((node, 0)).1 += 1;
        self.k.by_node.insert(node, o);
        self.k.last_node.insert(o, node);
        self.k.last_owner.insert(node, o);
        self.k
            .seen
            .entry(o)
            .or_default()
            .insert((via.0, via.1.to_vec()));
        Ok(())
    }

    fn forget(&mut self, node: u64, count: u64) {
        if node == ROOT_NODE {
            return;
        }
        if let Some(o) = self.tgt(node) {
            let known = self.k.known.get_mut(&o).unwrap();
            known.1 = known.1.saturating_sub(count);
            if known.1 == 0 {
                self.k.known.remove(&o);
                self.k.by_node.remove(&node);
                self.k.seen.remove(&o);
            }
        }
    }

    fn add_handle(
        &mut self,
        op: &str,
        raw: u64,
        slot: Tag,
        o: Tag,
        kind: HKind,
        flags: u32,
    ) -> Judged {
        if let Some(h) = self.k.handles.get(&raw) {
            return Err(mm(
                format!("{op}: live handle number handed out again"),
                format!(
                    "{op}: handle {raw:#x} is still open (slot {}) and was handed out again",
                    TagName(h.slot)
                ),
            ));
        }
        self.k.handles.insert(
            raw,
            Handle {
                slot,
                obj: o,
                kind,
                flags,
            },
        );
        self.k.slot_raw.insert(slot, raw);
        if kind == HKind::File {
            self.objs.get_mut(&o).unwrap().opens += 1;
        }
        Ok(())
    }

    fn drop_handle(&mut self, raw: u64) {
        if let Some(h) = self.k.handles.remove(&raw) {
            if h.kind == HKind::File {
                self.objs.get_mut(&h.obj).unwrap().opens -= 1;
                self.bury(h.obj);
            }
        }
    }

    /// The file system stopped and a new one started: the kernel knows nothing but the root,
    /// and every handle is gone.
    pub fn restart(&mut self) {
        let handles = std::mem::take(&mut self.k.handles);
        for h in handles.values() {
            if h.kind == HKind::File {
                self.objs.get_mut(&h.obj).unwrap().opens -= 1;
                self.bury(h.obj);
            }
        }
        self.k.known.clear();
        self.k.by_node.clear();
        self.k.last_owner.clear();
        self.k.seen.clear();
        self.k.known.insert(ROOT_OBJ, (ROOT_NODE, 1));
        self.k.by_node.insert(ROOT_NODE, ROOT_OBJ);
    }

    // ----- judging -----

    /// Compares attributes from a reply with object `o`; `strict` also compares size, link
    /// count, permissions, explicit mtime and device number.
    fn check_attr(&mut self, op: &str, o: Tag, a: &Attr, strict: bool) -> Judged {
        let path = self.path_of(o);
        let check_ino = self.check_ino;
        let subdirs = self.objs[&o]
            .children
            .values()
            .filter(|&&c| self.is_dir(c))
            .count() as u64;
        let live = self.life(o) != Life::Dead;
        let obj = self.objs.get_mut(&o).unwrap();
        let want_type = type_bits(&obj.kind);
        let what = format!("{} ({path})", TagName(o));
        if a.mode & libc::S_IFMT != want_type {
            return Err(mm(
                format!("{op}: wrong file type"),
                format!(
                    "{op}: {what} has type {:o}, the reply says {:o}",
                    want_type,
                    a.mode & libc::S_IFMT
                ),
            ));
        }
        if check_ino && live {
            match obj.ino {
                Some(i) if i != a.ino => {
                    return Err(mm(
                        format!("{op}: another host file"),
                        format!(
                            "{op}: {what} is host inode {i}, the reply describes host inode {}",
                            a.ino
                        ),
                    ))
                }
                Some(_) => {}
                None => obj.ino = Some(a.ino),
            }
        }
        if !strict {
            return Ok(());
        }
        let size = match &obj.kind {
            Kind::Dir => None,
            Kind::File => Some(obj.data.len() as i64),
            Kind::Special { .. } => Some(0),
            Kind::Symlink(t) => Some(t.len() as i64),
        };
        if let Some(size) = size {
            if a.size != size {
                return Err(mm(
                    format!("{op}: wrong size"),
                    format!(
                        "{op}: {what} holds {size} bytes{}, the reply says size {}",
                        Digest(&obj.data),
                        a.size
                    ),
                ));
            }
        }
        let nlink = match obj.kind {
            Kind::Dir => 2 + subdirs,
            _ => u64::from(obj.links),
        };
        if a.nlink != nlink {
            return Err(mm(
                format!("{op}: wrong link count"),
                format!("{op}: {what} has {nlink} links, the reply says {}", a.nlink),
            ));
        }
        if !matches!(obj.kind, Kind::Symlink(_)) {
            match obj.perm {
                Some(p) if p != a.mode & 0o7777 => {
                    return Err(mm(
                        format!("{op}: wrong permissions"),
                        format!(
                            "{op}: {what} has mode {p:o}, the reply says {:o}",
                            a.mode & 0o7777
                        ),
                    ))
                }
                Some(_) => {}
                None => obj.perm = Some(a.mode & 0o7777),
            }
        }
        if let Some(t) = obj.mtime {
            if a.mtime != t {
                return Err(mm(
                    format!("{op}: wrong mtime"),
                    format!(
                        "{op}: {what} has mtime {t:?} (set by the guest), the reply says {:?}",
                        a.mtime
                    ),
                ));
            }
        }
        if let Kind::Special { rdev, .. } = obj.kind {
            if a.rdev != u64::from(rdev) {
                return Err(mm(
                    format!("{op}: wrong device number"),
                    format!(
                        "{op}: {what} has rdev {rdev:#x}, the reply says {:#x}",
                        a.rdev
                    ),
                ));
            }
        }
        Ok(())
    }

    fn check_data(&self, op: &str, o: Tag, offset: u64, size: u32, got: &[u8]) -> Judged {
        let data = &self.objs[&o].data;
        let start = (offset.min(data.len() as u64)) as usize;
        let end = (offset
            .saturating_add(u64::from(size))
            .min(data.len() as u64)) as usize;
        let want = &data[start..end];
        if got == want {
            return Ok(());
        }
        let first = want
            .iter()
            .zip(got)
            .position(|(a, b)| a != b)
            .unwrap_or(want.len().min(got.len()));
        let mut msg = format!(
            "{op}: {} ({}) at offset {offset}: want {} bytes{}, got {} bytes{}; first difference at byte {}",
            TagName(o),
            self.path_of(o),
            want.len(),
            Digest(want),
            got.len(),
            Digest(got),
            offset + first as u64
        );
        if !got.is_empty() {
            for (&t, other) in &self.objs {
                if t != o && other.data.len() as u64 > offset {
                    let s = offset as usize;
                    let e = (s + got.len()).min(other.data.len());
                    if other.data[s..e] == got[..e - s] {
                        msg.push_str(&format!(
                            "; those bytes are {}'s ({})",
                            TagName(t),
                            self.path_of(t)
                        ));
                        break;
                    }
                }
            }
        }
        Err(mm(format!("{op}: wrong data"), msg))
    }

    fn want_entry(op: &str, out: &Outcome) -> Result<(u64, Attr), Mismatch> {
        match want_ok(op, out, "an entry")? {
            Reply::Entry(n, a) => Ok((*n, *a)),
            r => Err(bad_reply(op, r)),
        }
    }

    /// After a refused RELEASE or RELEASEDIR that the model cannot judge: the server may
    /// have dropped the handle before it refused, so anything goes for it from now on.
    fn handle_in_doubt(&mut self, call: &Call, handle: Option<u64>) {
        if let (Req::Release { .. } | Req::Releasedir { .. }, Some(h)) = (call, handle) {
            if let Some(hs) = self.k.handles.get(&h).cloned() {
                self.drop_handle(h);
                let kind = HKind::Opaque;
                self.k.handles.insert(h, Handle { kind, ..hs });
            }
        }
    }

    /// States other than this one that the last judged reply leaves possible.
    pub fn take_forks(&mut self) -> Vec<Model> {
        std::mem::take(&mut self.forks)
    }

    /// The node ids and handles a request names.
    fn params(call: &Call) -> (Vec<u64>, Option<u64>) {
        let mut nodes = Vec::new();
        let mut handle = None;
        call.visit(&mut |n| nodes.push(n), &mut |h| handle = Some(h));
        (nodes, handle)
    }

    /// Judges `out`, the outcome of `call` (the request of the operation tagged `t`), and
    /// moves the model on.
    pub fn apply(&mut self, t: Tag, call: &Call, out: &Outcome, len: &Lenience) -> Judged {
        if let Err(Fail::Panic(m)) = out {
            return Err(mm("panic", format!("{}: panicked: {m}", call.opcode())));
        }
        let (nodes, handle) = Self::params(call);
        if out.is_err() {
            let handle_obj = handle.and_then(|h| self.k.handles.get(&h)).map(|h| h.obj);
            let involved = nodes
                .iter()
                .filter_map(|&n| self.tgt(n))
                .chain(handle_obj)
                .chain(self.named(call))
                .any(|o| self.cut_off(o));
            if involved {
                self.handle_in_doubt(call, handle);
                // The server may have lost the object's path half-way: a write may have
                // landed before the error.
                if let Req::Write { data, .. } = call {
                    let mut alt = self.clone();
                    let done = Ok(Reply::Written(data.len()));
                    if alt
                        .judge(
                            t,
                            call,
                            &done,
                            &Lenience {
                                race: true,
                                ..len.clone()
                            },
                        )
                        .is_ok()
                    {
                        self.forks.push(alt);
                    }
                }
                if let Req::Setattr {
                    node,
                    size,
                    mode,
                    mtime,
                    ..
                } = call
                {
                    if let Some(o) = self.tgt(*node) {
                        // Mode and times go before the size, which may have failed.
                        let obj = self.objs.get_mut(&o).unwrap();
                        if mode.is_some() {
                            obj.perm = None;
                        }
                        if mtime.is_some() {
                            obj.mtime = None;
                        }
                        if let (Some(s @ 0..MAX_FILE), Kind::File) = (size, &obj.kind) {
                            let mut alt = self.clone();
                            alt.set_data(o, |d| d.resize(*s as usize, 0));
                            self.forks.push(alt);
                        }
                    }
                }
                return Ok(());
            }
        }
        let stale = nodes
            .iter()
            .any(|n| !self.k.by_node.contains_key(n) && self.k.last_owner.contains_key(n));
        if stale && !matches!(call, Req::Forget { .. } | Req::BatchForget { .. }) {
            // A node the kernel forgot, which the server may still resolve (its caches): an
            // error, or the request done on the object it last had.
            if out.is_err() {
                self.handle_in_doubt(call, handle);
                return Ok(());
            }
            let lenient = Lenience {
                race: true,
                data: len.data.clone(),
            };
            self.stale = true;
            let r = self.judge(t, call, out, &lenient);
            self.stale = false;
            return r;
        }
        self.judge(t, call, out, len)
    }

    fn judge(&mut self, t: Tag, call: &Call, out: &Outcome, len: &Lenience) -> Judged {
        let op = call.opcode();
        let strict = !len.race;
        use Req::*;
        match call {
            Lookup { parent, name } => {
                let p = match self.dir_for(*parent) {
                    Ok(p) => p,
                    Err(why) => return want_err(op, out, why),
                };
                if let Some(why) = bad_name(name) {
                    return want_err(op, out, why);
                }
                match self.child(p, name) {
                    None => want_errno(op, out, &[libc::ENOENT], "no such name"),
                    Some(c) => {
                        let (node, attr) = Self::want_entry(op, out)?;
                        self.register(op, c, node, (p, name))?;
                        self.check_attr(op, c, &attr, strict)
                    }
                }
            }
            Forget { node, count } => {
                self.forget(*node, *count);
                Ok(())
            }
            BatchForget { items } => {
                for (n, c) in items {
                    self.forget(*n, *c);
                }
                Ok(())
            }
            Getattr { node, handle } => {
                let mut lenient = false;
                if let Some(h) = handle {
                    match self.k.handles.get(h) {
                        None => return want_err(op, out, "unknown handle"),
                        Some(hs) => {
                            lenient = self.tgt(*node) != Some(hs.obj) || hs.kind != HKind::File
                        }
                    }
                }
                let Some(o) = self.tgt(*node) else {
                    return want_err(op, out, "unknown node");
                };
                lenient |= self.life(o) == Life::Dead;
                let r = if lenient {
                    match either(out) {
                        Some(r) => r,
                        None => return Ok(()),
                    }
                } else {
                    want_ok(op, out, "attributes")?
                };
                let Reply::Attr(a) = r else {
                    return Err(bad_reply(op, r));
                };
                self.check_attr(op, o, a, strict && !lenient)
            }
            Setattr {
                node,
                handle,
                size,
                mode,
                atime: _,
                mtime,
            } => {
                let mut lenient = false;
                if let Some(h) = handle {
                    match self.k.handles.get(h) {
                        None => return want_err(op, out, "unknown handle"),
                        Some(hs) => {
                            lenient = self.tgt(*node) != Some(hs.obj)
                                || hs.kind != HKind::File
                                || size.is_some() && accmode(hs.flags) == libc::O_RDONLY
                        }
                    }
                }
                let Some(o) = self.tgt(*node) else {
                    return want_err(op, out, "unknown node");
                };
                let kind = self.objs[&o].kind.clone();
                lenient |= self.life(o) == Life::Dead
                    || matches!(kind, Kind::Symlink(_))
                    || matches!(kind, Kind::Special { .. }) && size.is_some();
                let refused = if size.is_some() && kind == Kind::Dir {
                    Some("truncate of a directory")
                } else if size.is_some_and(|s| s >= MAX_FILE) {
                    Some("size beyond the largest file")
                } else {
                    None
                };
                let forget_set = |m: &mut Model| {
                    let obj = m.objs.get_mut(&o).unwrap();
                    if mode.is_some() {
                        obj.perm = None;
                    }
                    if mtime.is_some() {
                        obj.mtime = None;
                    }
                };
                if let Some(why) = refused {
                    // Mode and times may be set before the size fails.
                    forget_set(self);
                    return want_err(op, out, why);
                }
                let r = if lenient {
                    match either(out) {
                        Some(r) => r,
                        None => {
                            forget_set(self);
                            return Ok(());
                        }
                    }
                } else {
                    want_ok(op, out, "attributes")?
                };
                if let Some(m) = mode {
                    self.objs.get_mut(&o).unwrap().perm = Some(m & 0o7777);
                }
                if let (Some(s), Kind::File) = (size, &kind) {
                    self.set_data(o, |d| d.resize(*s as usize, 0));
                }
                let obj = self.objs.get_mut(&o).unwrap();
                if size.is_some() {
                    // A truncate stamps the times, even to the same size.
                    obj.mtime = None;
                }
                match mtime {
                    Some(Time::At(s, ns)) => obj.mtime = Some((*s, *ns)),
                    Some(Time::Now) => obj.mtime = None,
                    None => {}
                }
                let Reply::Attr(a) = r else {
                    return Err(bad_reply(op, r));
                };
                self.check_attr(op, o, a, strict && !lenient)
            }
            Mknod {
                parent,
                name,
                mode,
                rdev,
                umask,
            } => {
                let p = match self.dir_for(*parent) {
                    Ok(p) => p,
                    Err(why) => return want_err(op, out, why),
                };
                if let Some(why) = bad_name(name) {
                    return want_err(op, out, why);
                }
                let ty = mode & libc::S_IFMT;
                let kind = match ty {
                    libc::S_IFREG => Kind::File,
                    libc::S_IFIFO | libc::S_IFCHR | libc::S_IFBLK | libc::S_IFSOCK => {
                        Kind::Special {
                            kind: ty,
                            rdev: *rdev,
                        }
                    }
                    _ => return want_err(op, out, "not a type MKNOD makes"),
                };
                if self.child(p, name).is_some() {
                    return want_errno(op, out, &[libc::EEXIST], "name exists");
                }
                let (node, a) = Self::want_entry(op, out)?;
                self.new_obj(t, kind, Some(mode & 0o7777 & !umask), p, name);
                self.register(op, t, node, (p, name))?;
                self.check_attr(op, t, &a, strict)
            }
            Mkdir {
                parent,
                name,
                mode,
                umask,
            } => {
                let p = match self.dir_for(*parent) {
                    Ok(p) => p,
                    Err(why) => return want_err(op, out, why),
                };
                if let Some(why) = bad_name(name) {
                    return want_err(op, out, why);
                }
                if self.child(p, name).is_some() {
                    return want_errno(op, out, &[libc::EEXIST], "name exists");
                }
                let (node, a) = Self::want_entry(op, out)?;
                self.new_obj(t, Kind::Dir, Some(mode & 0o777 & !umask), p, name);
                self.register(op, t, node, (p, name))?;
                self.check_attr(op, t, &a, strict)
            }
            Symlink {
                parent,
                name,
                target,
            } => {
                let p = match self.dir_for(*parent) {
                    Ok(p) => p,
                    Err(why) => return want_err(op, out, why),
                };
                if let Some(why) = bad_name(name) {
                    return want_err(op, out, why);
                }
                if self.child(p, name).is_some() {
                    return want_errno(op, out, &[libc::EEXIST], "name exists");
                }
                let (node, a) = Self::want_entry(op, out)?;
                self.new_obj(t, Kind::Symlink(target.clone()), None, p, name);
                self.register(op, t, node, (p, name))?;
                self.check_attr(op, t, &a, strict)
            }
            Readlink { node } => {
                let Some(o) = self.tgt(*node) else {
                    return want_err(op, out, "unknown node");
                };
                let Kind::Symlink(target) = &self.objs[&o].kind else {
                    return want_err(op, out, "not a symlink");
                };
                let r = if self.life(o) == Life::Dead {
                    match either(out) {
                        Some(r) => r,
                        None => return Ok(()),
                    }
                } else {
                    want_ok(op, out, "the target")?
                };
                match r {
                    Reply::Link(got) if got == target => Ok(()),
                    r => Err(mm(
                        format!("{op}: wrong target"),
                        format!(
                            "{op}: {} points to {}, got {}",
                            TagName(o),
                            super::ops::Name(target),
                            Shown(&Ok(r.clone()))
                        ),
                    )),
                }
            }
            Unlink { parent, name } => {
                let p = match self.dir_for(*parent) {
                    Ok(p) => p,
                    Err(why) => return want_err(op, out, why),
                };
                if let Some(why) = bad_name(name) {
                    return want_err(op, out, why);
                }
                match self.child(p, name) {
                    None => want_errno(op, out, &[libc::ENOENT], "no such name"),
                    Some(c) if self.is_dir(c) => want_err(op, out, "a directory"),
                    Some(_) => {
                        want_ok(op, out, "the name removed")?;
                        let o = self.remove_entry(p, name);
                        self.bury(o);
                        Ok(())
                    }
                }
            }
            Rmdir { parent, name } => {
                let p = match self.dir_for(*parent) {
                    Ok(p) => p,
                    Err(why) => return want_err(op, out, why),
                };
                if let Some(why) = bad_name(name) {
                    return want_err(op, out, why);
                }
                match self.child(p, name) {
                    None => want_errno(op, out, &[libc::ENOENT], "no such name"),
                    Some(c) if !self.is_dir(c) => want_err(op, out, "not a directory"),
                    Some(c) if !self.objs[&c].children.is_empty() => {
                        want_err(op, out, "directory not empty")
                    }
                    Some(_) => {
                        want_ok(op, out, "the directory removed")?;
                        let o = self.remove_entry(p, name);
                        self.bury(o);
                        Ok(())
                    }
                }
            }
            Rename {
                olddir,
                oldname,
                newdir,
                newname,
                flags,
            } => self.rename(op, (*olddir, oldname), (*newdir, newname), *flags, out),
            Link {
                node,
                newparent,
                newname,
            } => {
                let Some(o) = self.tgt(*node) else {
                    return want_err(op, out, "unknown node");
                };
                let p = match self.dir_for(*newparent) {
                    Ok(p) => p,
                    Err(why) => return want_err(op, out, why),
                };
                if let Some(why) = bad_name(newname) {
                    return want_err(op, out, why);
                }
                if self.is_dir(o) {
                    return want_err(op, out, "hard link to a directory");
                }
                if self.objs[&o].links == 0 {
                    return want_err(op, out, "the file has no name left");
                }
                if self.child(p, newname).is_some() {
                    return want_errno(op, out, &[libc::EEXIST], "name exists");
                }
                let (node, a) = Self::want_entry(op, out)?;
                self.add_entry(p, newname, o);
                self.register(op, o, node, (p, newname))?;
                self.check_attr(op, o, &a, strict)
            }
            Open { node, flags } => {
                let Some(o) = self.tgt(*node) else {
                    return want_err(op, out, "unknown node");
                };
                let f = *flags as i32;
                match self.objs[&o].kind {
                    Kind::Dir => {
                        if let Some(r) = either(out) {
                            let Reply::Opened(Some(h)) = r else {
                                return Err(bad_reply(op, r));
                            };
                            self.add_handle(op, *h, t, o, HKind::Opaque, *flags)?;
                        }
                        Ok(())
                    }
                    Kind::Special { .. } => want_err(op, out, "a special file"),
                    Kind::Symlink(_) => want_err(op, out, "a symlink"),
                    Kind::File => {
                        let life = self.life(o);
                        let odd = accmode(*flags) == libc::O_ACCMODE || f & libc::O_DIRECTORY != 0;
                        let r = if life != Life::Live || odd {
                            match either(out) {
                                Some(r) => r,
                                None => return Ok(()),
                            }
                        } else {
                            want_ok(op, out, "a handle")?
                        };
                        let Reply::Opened(Some(h)) = r else {
                            return Err(bad_reply(op, r));
                        };
                        let kind = if life == Life::Dead || accmode(*flags) == libc::O_ACCMODE {
                            HKind::Opaque
                        } else {
                            HKind::File
                        };
                        self.add_handle(op, *h, t, o, kind, *flags)?;
                        if f & libc::O_TRUNC != 0 && life != Life::Dead {
                            self.set_data(o, |d| d.clear());
                        }
                        Ok(())
                    }
                }
            }
            Create {
                parent,
                name,
                flags,
                mode,
                umask,
            } => {
                let p = match self.dir_for(*parent) {
                    Ok(p) => p,
                    Err(why) => return want_err(op, out, why),
                };
                if let Some(why) = bad_name(name) {
                    return want_err(op, out, why);
                }
                let f = *flags as i32;
                match self.child(p, name) {
                    Some(_) if f & libc::O_EXCL != 0 => {
                        want_errno(op, out, &[libc::EEXIST], "O_EXCL and the name exists")
                    }
                    Some(c) => match self.objs[&c].kind {
                        Kind::Special { .. } => want_err(op, out, "a special file"),
                        Kind::Dir | Kind::Symlink(_) => {
                            if let Some(r) = either(out) {
                                let Reply::Created(n, _, h) = r else {
                                    return Err(bad_reply(op, r));
                                };
                                self.register(op, c, *n, (p, name))?;
                                if let Some(h) = h {
                                    self.add_handle(op, *h, t, c, HKind::Opaque, *flags)?;
                                }
                            }
                            Ok(())
                        }
                        Kind::File => {
                            let r = want_ok(op, out, "an entry and a handle")?;
                            let Reply::Created(n, a, Some(h)) = r else {
                                return Err(bad_reply(op, r));
                            };
                            self.register(op, c, *n, (p, name))?;
                            self.add_handle(op, *h, t, c, HKind::File, *flags)?;
                            if f & libc::O_TRUNC != 0 {
                                self.set_data(c, |d| d.clear());
                            }
                            // The entry may describe the file before O_TRUNC took effect.
                            self.check_attr(op, c, a, false)
                        }
                    },
                    None => {
                        let r = want_ok(op, out, "an entry and a handle")?;
                        let Reply::Created(n, a, Some(h)) = r else {
                            return Err(bad_reply(op, r));
                        };
                        self.new_obj(t, Kind::File, Some(mode & 0o7777 & !umask), p, name);
                        self.register(op, t, *n, (p, name))?;
                        self.add_handle(op, *h, t, t, HKind::File, *flags)?;
                        self.check_attr(op, t, a, strict)
                    }
                }
            }
            Read {
                node,
                handle,
                offset,
                size,
            } => {
                let Some(h) = self.k.handles.get(handle).cloned() else {
                    return want_err(op, out, "unknown handle");
                };
                match h.kind {
                    HKind::Opaque if !self.opaque_file(&h) => Ok(()),
                    HKind::Dir => want_err(op, out, "a directory handle"),
                    HKind::File | HKind::Opaque => {
                        let lenient = h.kind == HKind::Opaque
                            || self.tgt(*node) != Some(h.obj)
                            || accmode(h.flags) == libc::O_WRONLY
                            || offset.saturating_add(u64::from(*size)) > i64::MAX as u64;
                        let r = if lenient {
                            match either(out) {
                                Some(r) => r,
                                None => return Ok(()),
                            }
                        } else {
                            want_ok(op, out, "data")?
                        };
                        let Reply::Data(d) = r else {
                            return Err(bad_reply(op, r));
                        };
                        if len.data.contains(&h.obj) {
                            return Ok(());
                        }
                        self.check_data(op, h.obj, *offset, *size, d)
                    }
                }
            }
            Write {
                node,
                handle,
                offset,
                data,
                flags,
            } => {
                let Some(h) = self.k.handles.get(handle).cloned() else {
                    return want_err(op, out, "unknown handle");
                };
                match h.kind {
                    HKind::Opaque if !self.opaque_file(&h) => Ok(()),
                    HKind::Dir => want_err(op, out, "a directory handle"),
                    HKind::File | HKind::Opaque => {
                        let append = *flags as i32 & libc::O_APPEND != 0;
                        let end = offset.saturating_add(data.len() as u64);
                        if !append && end >= MAX_FILE {
                            return want_err(op, out, "beyond the largest file");
                        }
                        let lenient = h.kind == HKind::Opaque
                            || self.tgt(*node) != Some(h.obj)
                            || accmode(h.flags) == libc::O_RDONLY
                            || append && end >= MAX_FILE;
                        let r = if lenient {
                            match either(out) {
                                Some(r) => r,
                                None => return Ok(()),
                            }
                        } else {
                            want_ok(op, out, "a count")?
                        };
                        let Reply::Written(n) = r else {
                            return Err(bad_reply(op, r));
                        };
                        if *n != data.len() {
                            return Err(mm(
                                format!("{op}: short write"),
                                format!("{op}: {} of {} bytes written", n, data.len()),
                            ));
                        }
                        self.set_data(h.obj, |d| {
                            let pos = if append { d.len() } else { *offset as usize };
                            if d.len() < pos + data.len() {
                                d.resize(pos + data.len(), 0);
                            }
                            d[pos..pos + data.len()].copy_from_slice(data);
                        });
                        Ok(())
                    }
                }
            }
            Flush { node, handle } | Fsync { node, handle, .. } => {
                let Some(h) = self.k.handles.get(handle).cloned() else {
                    return want_err(op, out, "unknown handle");
                };
                if h.kind == HKind::File && self.tgt(*node) == Some(h.obj) {
                    want_ok(op, out, "success").map(|_| ())
                } else {
                    Ok(())
                }
            }
            Fallocate {
                node,
                handle,
                mode,
                offset,
                len: length,
            } => {
                let Some(h) = self.k.handles.get(handle).cloned() else {
                    return want_err(op, out, "unknown handle");
                };
                match h.kind {
                    HKind::Opaque if !self.opaque_file(&h) => return Ok(()),
                    HKind::Dir => return want_err(op, out, "a directory handle"),
                    HKind::File | HKind::Opaque => {}
                }
                let keep = libc::FALLOC_FL_KEEP_SIZE;
                let punch = libc::FALLOC_FL_PUNCH_HOLE | keep;
                let zero = libc::FALLOC_FL_ZERO_RANGE;
                let m = *mode as i32;
                if ![0, keep, punch, zero, zero | keep].contains(&m) {
                    return want_err(op, out, "unsupported mode");
                }
                if *length == 0 {
                    return want_err(op, out, "zero length");
                }
                let end = offset.saturating_add(*length);
                if end >= MAX_FILE {
                    return want_err(op, out, "beyond the largest file");
                }
                let lenient = h.kind == HKind::Opaque
                    || self.tgt(*node) != Some(h.obj)
                    || accmode(h.flags) == libc::O_RDONLY;
                if lenient {
                    if either(out).is_none() {
                        return Ok(());
                    }
                } else {
                    want_ok(op, out, "success")?;
                }
                let (offset, end) = (*offset as usize, end as usize);
                self.set_data(h.obj, |d| {
                    let cur = d.len();
                    if m & keep == 0 && end > cur {
                        d.resize(end, 0);
                    }
                    if m & (libc::FALLOC_FL_PUNCH_HOLE | zero) != 0 {
                        let stop = end.min(d.len());
                        if offset < stop {
                            d[offset..stop].fill(0);
                        }
                    }
                });
                Ok(())
            }
            Release { node, handle } => {
                let Some(h) = self.k.handles.get(handle).cloned() else {
                    return want_err(op, out, "unknown handle");
                };
                let strict_ok = h.kind == HKind::File && self.tgt(*node) == Some(h.obj);
                if strict_ok {
                    want_ok(op, out, "success")?;
                }
                if out.is_ok() {
                    self.drop_handle(*handle);
                } else {
                    // The handle may or may not be gone now: anything goes for it.
                    self.drop_handle(*handle);
                    self.k.handles.insert(
                        *handle,
                        Handle {
                            kind: HKind::Opaque,
                            ..h
                        },
                    );
                }
                Ok(())
            }
            Opendir { node } => {
                let Some(o) = self.tgt(*node) else {
                    return want_err(op, out, "unknown node");
                };
                if !self.is_dir(o) {
                    return want_err(op, out, "not a directory");
                }
                let (r, kind) = if self.life(o) == Life::Live {
                    (want_ok(op, out, "a handle")?, HKind::Dir)
                } else {
                    match either(out) {
                        Some(r) => (r, HKind::Opaque),
                        None => return Ok(()),
                    }
                };
                let Reply::Opened(Some(h)) = r else {
                    return Err(bad_reply(op, r));
                };
                self.add_handle(op, *h, t, o, kind, 0)
            }
            Readdir { node, handle } => {
                let Some(h) = self.k.handles.get(handle).cloned() else {
                    return want_err(op, out, "unknown handle");
                };
                match h.kind {
                    HKind::Opaque => Ok(()),
                    HKind::File => want_err(op, out, "a file handle"),
                    HKind::Dir => {
                        // A removed directory lists as ENOENT on Linux (or empty).
                        let lenient = self.tgt(*node) != Some(h.obj)
                            || self.stale
                            || self.life(h.obj) != Life::Live;
                        let r = if lenient {
                            match either(out) {
                                Some(r) => r,
                                None => return Ok(()),
                            }
                        } else {
                            want_ok(op, out, "a listing")?
                        };
                        let Reply::Dir(list) = r else {
                            return Err(bad_reply(op, r));
                        };
                        if lenient {
                            return Ok(());
                        }
                        self.check_listing(op, h.obj, list)
                    }
                }
            }
            Releasedir { node, handle } => {
                let Some(h) = self.k.handles.get(handle).cloned() else {
                    return want_err(op, out, "unknown handle");
                };
                match h.kind {
                    HKind::File => want_err(op, out, "a file handle"),
                    HKind::Opaque => {
                        if out.is_ok() {
                            self.drop_handle(*handle);
                        }
                        Ok(())
                    }
                    HKind::Dir => {
                        if self.tgt(*node) == Some(h.obj) {
                            want_ok(op, out, "success")?;
                            self.drop_handle(*handle);
                        } else if out.is_ok() {
                            self.drop_handle(*handle);
                        } else {
                            self.k.handles.insert(
                                *handle,
                                Handle {
                                    kind: HKind::Opaque,
                                    ..h
                                },
                            );
                        }
                        Ok(())
                    }
                }
            }
            Fsyncdir { node, handle } => {
                let Some(h) = self.k.handles.get(handle).cloned() else {
                    return want_err(op, out, "unknown handle");
                };
                match h.kind {
                    HKind::File => want_err(op, out, "a file handle"),
                    HKind::Opaque => Ok(()),
                    HKind::Dir if self.tgt(*node) == Some(h.obj) => {
                        want_ok(op, out, "success").map(|_| ())
                    }
                    HKind::Dir => Ok(()),
                }
            }
            Setxattr {
                node,
                name,
                value,
                flags,
            } => {
                let Some(o) = self.tgt(*node) else {
                    return want_err(op, out, "unknown node");
                };
                if reserved_xattr(name) {
                    return want_errno(op, out, &[libc::EPERM], "reserved name");
                }
                if matches!(self.objs[&o].kind, Kind::Symlink(_)) {
                    return want_err(op, out, "user xattr on a symlink");
                }
                let lenient = self.xattr_lenient(o);
                if lenient && out.is_err() {
                    return Ok(());
                }
                if *flags & !3 != 0 || *flags == 3 {
                    return want_err(op, out, "invalid flags");
                }
                if self.life(o) == Life::Dead {
                    // What a dead object held is not kept (see `bury`): any answer is
                    // consistent with some history of it.
                    if out.is_ok() {
                        let obj = self.objs.get_mut(&o).unwrap();
                        obj.xattrs.insert(name.clone(), value.clone());
                    }
                    return Ok(());
                }
                let exists = self.objs[&o].xattrs.contains_key(name);
                if *flags == libc::XATTR_CREATE as u32 && exists {
                    return want_errno(op, out, &[libc::EEXIST], "XATTR_CREATE and it exists");
                }
                if *flags == libc::XATTR_REPLACE as u32 && !exists {
                    return want_errno(
                        op,
                        out,
                        &[libc::ENODATA],
                        "XATTR_REPLACE and it is missing",
                    );
                }
                if !lenient {
                    want_ok(op, out, "success")?;
                }
                self.objs
                    .get_mut(&o)
                    .unwrap()
                    .xattrs
                    .insert(name.clone(), value.clone());
                Ok(())
            }
            Getxattr { node, name, size } => {
                let Some(o) = self.tgt(*node) else {
                    return want_err(op, out, "unknown node");
                };
                if reserved_xattr(name) {
                    return want_errno(op, out, &[libc::ENODATA], "reserved name");
                }
                let lenient = self.xattr_lenient(o);
                let value = self.objs[&o].xattrs.get(name).cloned();
                let r = match (value.as_ref(), lenient) {
                    (_, true) => match either(out) {
                        Some(r) => r,
                        None => return Ok(()),
                    },
                    (None, false) => {
                        return want_errno(op, out, &[libc::ENODATA], "no such attribute")
                    }
                    (Some(v), false) if *size != 0 && (*size as usize) < v.len() => {
                        return want_errno(op, out, &[libc::ERANGE], "buffer too small")
                    }
                    (Some(_), false) => want_ok(op, out, "the value")?,
                };
                let Some(v) = value else {
                    return Err(mm(
                        format!("{op}: a value that was never set"),
                        format!(
                            "{op}: {} has no {}, got {}",
                            TagName(o),
                            super::ops::Name(name),
                            Shown(out)
                        ),
                    ));
                };
                let good = match r {
                    Reply::Size(n) => *size == 0 && *n as usize == v.len(),
                    Reply::Value(got) => *got == v,
                    _ => false,
                };
                if good {
                    Ok(())
                } else {
                    Err(mm(
                        format!("{op}: wrong value"),
                        format!("{op}: want {} bytes, got {}", v.len(), Shown(out)),
                    ))
                }
            }
            Listxattr { node, size } => {
                let Some(o) = self.tgt(*node) else {
                    return want_err(op, out, "unknown node");
                };
                let mut want = Vec::new();
                for name in self.objs[&o].xattrs.keys() {
                    want.extend_from_slice(name);
                    want.push(0);
                }
                let lenient = self.xattr_lenient(o);
                if !lenient && *size != 0 && (*size as usize) < want.len() {
                    return want_errno(op, out, &[libc::ERANGE], "buffer too small");
                }
                let r = if lenient {
                    match either(out) {
                        Some(r) => r,
                        None => return Ok(()),
                    }
                } else {
                    want_ok(op, out, "the names")?
                };
                let good = match r {
                    Reply::Size(n) => *size == 0 && *n as usize == want.len(),
                    Reply::Names(got) => {
                        let mut got: Vec<&[u8]> =
                            got.split(|&b| b == 0).filter(|n| !n.is_empty()).collect();
                        got.sort();
                        let want: Vec<&[u8]> =
                            want.split(|&b| b == 0).filter(|n| !n.is_empty()).collect();
                        got == want
                    }
                    _ => false,
                };
                if good || lenient {
                    Ok(())
                } else {
                    Err(mm(
                        format!("{op}: wrong names"),
                        format!(
                            "{op}: {} has {}, got {}",
                            TagName(o),
                            super::ops::Name(&want),
                            Shown(out)
                        ),
                    ))
                }
            }
            Removexattr { node, name } => {
                let Some(o) = self.tgt(*node) else {
                    return want_err(op, out, "unknown node");
                };
                if reserved_xattr(name) {
                    return want_errno(op, out, &[libc::ENODATA], "reserved name");
                }
                let exists = self.objs[&o].xattrs.contains_key(name);
                if self.xattr_lenient(o) {
                    if either(out).is_none() {
                        return Ok(());
                    }
                } else if !exists {
                    return want_errno(op, out, &[libc::ENODATA], "no such attribute");
                } else {
                    want_ok(op, out, "success")?;
                }
                self.objs.get_mut(&o).unwrap().xattrs.remove(name);
                Ok(())
            }
            Lseek {
                node,
                handle,
                offset,
                whence,
            } => {
                let Some(h) = self.k.handles.get(handle).cloned() else {
                    return want_err(op, out, "unknown handle");
                };
                if h.kind != HKind::File {
                    return Ok(());
                }
                let size = self.objs[&h.obj].data.len() as u64;
                let lenient = self.tgt(*node) != Some(h.obj)
                    || len.data.contains(&h.obj)
                    || *offset > i64::MAX as u64;
                let w = *whence as i32;
                if lenient || w == libc::SEEK_CUR {
                    return Ok(());
                }
                let ok_range = match w {
                    libc::SEEK_SET => offset..=offset,
                    libc::SEEK_END => {
                        let pos = size + offset;
                        return match want_ok(op, out, "an offset")? {
                            Reply::Offset(x) if *x == pos => Ok(()),
                            r => Err(mm(
                                format!("{op}: wrong offset"),
                                format!(
                                    "{op}: SEEK_END+{offset} of {size} bytes, got {}",
                                    Shown(&Ok(r.clone()))
                                ),
                            )),
                        };
                    }
                    libc::SEEK_DATA | libc::SEEK_HOLE => {
                        if *offset >= size {
                            return want_errno(
                                op,
                                out,
                                &[libc::ENXIO],
                                "offset at or past the end",
                            );
                        }
                        if w == libc::SEEK_DATA && matches!(out, Err(Fail::Errno(libc::ENXIO))) {
                            // Only holes from here to the end.
                            return Ok(());
                        }
                        offset..=&size
                    }
                    _ => return want_err(op, out, "unknown whence"),
                };
                match want_ok(op, out, "an offset")? {
                    Reply::Offset(x) if ok_range.contains(&x) => Ok(()),
                    r => Err(mm(
                        format!("{op}: wrong offset"),
                        format!(
                            "{op}: whence {w} from {offset} in {size} bytes, got {}",
                            Shown(&Ok(r.clone()))
                        ),
                    )),
                }
            }
            Statfs { .. } => Ok(()),
            Access { node, .. } => match self.tgt(*node) {
                None => want_err(op, out, "unknown node"),
                Some(_) => Ok(()),
            },
        }
    }

    /// True for an opaque handle on a regular file a guest could still observe: what is
    /// done through it must still be followed.
    fn opaque_file(&self, h: &Handle) -> bool {
        self.objs[&h.obj].kind == Kind::File && self.life(h.obj) != Life::Dead
    }

    fn xattr_lenient(&self, o: Tag) -> bool {
        self.life(o) != Life::Live
            || matches!(self.objs[&o].kind, Kind::Special { .. } | Kind::Symlink(_))
    }

    fn check_listing(&self, op: &str, d: Tag, list: &[(Vec<u8>, u32)]) -> Judged {
        let mut got: Vec<&[u8]> = list
            .iter()
            .map(|(n, _)| n.as_slice())
            .filter(|n| *n != b"." && *n != b"..")
            .collect();
        got.sort();
        let want: Vec<&[u8]> = self.objs[&d]
            .children
            .keys()
            .map(|k| k.as_slice())
            .collect();
        if got != want {
            let show = |v: &[&[u8]]| {
                v.iter()
                    .map(|n| super::ops::Name(n).to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            return Err(mm(
                format!("{op}: wrong names"),
                format!(
                    "{op}: {} ({}) holds [{}], the listing shows [{}]",
                    TagName(d),
                    self.path_of(d),
                    show(&want),
                    show(&got)
                ),
            ));
        }
        for (name, ty) in list {
            let Some(c) = self.child(d, name) else {
                continue;
            };
            let want = match self.objs[&c].kind {
                Kind::Dir => libc::DT_DIR,
                Kind::Symlink(_) => libc::DT_LNK,
                _ => libc::DT_UNKNOWN,
            };
            if *ty != u32::from(want)
                && !(want == libc::DT_UNKNOWN && *ty == u32::from(libc::DT_REG))
            {
                return Err(mm(
                    format!("{op}: wrong entry type"),
                    format!(
                        "{op}: {} in {} has type {want}, the listing says {ty}",
                        super::ops::Name(name),
                        self.path_of(d)
                    ),
                ));
            }
        }
        Ok(())
    }

    fn rename(
        &mut self,
        op: &str,
        (olddir, oldname): (u64, &[u8]),
        (newdir, newname): (u64, &[u8]),
        flags: u32,
        out: &Outcome,
    ) -> Judged {
        let od = match self.dir_for(olddir) {
            Ok(p) => p,
            Err(why) => return want_err(op, out, why),
        };
        let nd = match self.dir_for(newdir) {
            Ok(p) => p,
            Err(why) => return want_err(op, out, why),
        };
        for name in [oldname, newname] {
            if let Some(why) = bad_name(name) {
                return want_err(op, out, why);
            }
        }
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        if flags & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0 || noreplace && exchange {
            return want_err(op, out, "invalid flags");
        }
        let Some(s) = self.child(od, oldname) else {
            return want_errno(op, out, &[libc::ENOENT], "no such name");
        };
        let d = self.child(nd, newname);
        let s_dir = self.is_dir(s);
        if exchange {
            let Some(d) = d else {
                return want_errno(op, out, &[libc::ENOENT], "exchange with a missing name");
            };
            if s == d {
                // The same entry, or two names of one file: nothing changes either way.
                return Ok(());
            }
            if s_dir && self.is_ancestor(s, nd) || self.is_dir(d) && self.is_ancestor(d, od) {
                return want_err(op, out, "one inside the other");
            }
            want_ok(op, out, "the names exchanged")?;
            self.objs
                .get_mut(&od)
                .unwrap()
                .children
                .insert(oldname.to_vec(), d);
            self.objs
                .get_mut(&nd)
                .unwrap()
                .children
                .insert(newname.to_vec(), s);
            if s_dir {
                self.objs.get_mut(&s).unwrap().parent = nd;
            }
            if self.is_dir(d) {
                self.objs.get_mut(&d).unwrap().parent = od;
            }
            let (a, b) = ((od, oldname.to_vec()), (nd, newname.to_vec()));
            for (o, from, to) in [(s, &a, &b), (d, &b, &a)] {
                if let Some(seen) = self.k.seen.get_mut(&o) {
                    if seen.remove(from) {
                        seen.insert(to.clone());
                    }
                }
            }
            self.touch_dir(od);
            self.touch_dir(nd);
            return Ok(());
        }
        if let Some(d) = d {
            if noreplace {
                return want_errno(
                    op,
                    out,
                    &[libc::EEXIST],
                    "RENAME_NOREPLACE and the name exists",
                );
            }
            if d == s {
                // Two names of one file (or one name): POSIX says do nothing.
                want_ok(op, out, "success")?;
                return Ok(());
            }
            let d_dir = self.is_dir(d);
            if s_dir && !d_dir {
                return want_err(op, out, "directory over a non-directory");
            }
            if !s_dir && d_dir {
                return want_err(op, out, "non-directory over a directory");
            }
            if s_dir && self.is_ancestor(s, nd) {
                return want_err(op, out, "directory into itself");
            }
            if d_dir && !self.objs[&d].children.is_empty() {
                return want_err(op, out, "directory not empty");
            }
            want_ok(op, out, "the name moved")?;
            let gone = self.remove_entry(nd, newname);
            self.bury(gone);
        } else {
            if s_dir && self.is_ancestor(s, nd) {
                return want_err(op, out, "directory into itself");
            }
            want_ok(op, out, "the name moved")?;
        }
        let had = self
            .k
            .seen
            .get(&s)
            .is_some_and(|x| x.contains(&(od, oldname.to_vec())));
        self.remove_entry(od, oldname);
        self.add_entry(nd, newname, s);
        if had {
            // The kernel moves the dentry.
            self.k
                .seen
                .entry(s)
                .or_default()
                .insert((nd, newname.to_vec()));
        }
        Ok(())
    }
}
