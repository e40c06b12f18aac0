//! The seeded generator: a profile per seed (which requests, how often, which limits: swarm
//! testing, so that seeds differ in what they stress), then one step at a time from the model
//! (mostly requests that make sense for what the kernel knows, mixed with stale node ids,
//! stale handles, bad names, huge offsets and FORGETs beyond the lookups).

use super::model::{HKind, Kind, Life, Model};
use super::ops::{
    Fill, HandleRef, NodeRef, Op, Req, Step, SymReq, Tag, Time, BOGUS_NODE, ROOT_OBJ,
};

/// splitmix64: small, seedable, the same everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    /// True with probability `pct` percent.
    pub fn pct(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }

    /// One of `items` (None if empty).
    pub fn pick<T: Clone>(&mut self, items: &[T]) -> Option<T> {
        if items.is_empty() {
            None
        } else {
            Some(items[self.below(items.len() as u64) as usize].clone())
        }
    }
}

/// What the generator can emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum G {
    Lookup,
    Forget,
    BatchForget,
    Getattr,
    Setattr,
    Mknod,
    Mkdir,
    Symlink,
    Readlink,
    Unlink,
    Rmdir,
    Rename,
    Link,
    Open,
    Create,
    Read,
    Write,
    Flush,
    Fsync,
    Fallocate,
    Release,
    Opendir,
    Readdir,
    Releasedir,
    Fsyncdir,
    Setxattr,
    Getxattr,
    Listxattr,
    Removexattr,
    Lseek,
    Statfs,
    Access,
    Race,
}

/// Base weights; a profile scales them, and switches some off.
const WEIGHTS: &[(G, u64)] = &[
    (G::Lookup, 120),
    (G::Forget, 45),
    (G::BatchForget, 10),
    (G::Getattr, 50),
    (G::Setattr, 50),
    (G::Mknod, 25),
    (G::Mkdir, 20),
    (G::Symlink, 8),
    (G::Readlink, 6),
    (G::Unlink, 40),
    (G::Rmdir, 15),
    (G::Rename, 60),
    (G::Link, 30),
    (G::Open, 60),
    (G::Create, 80),
    (G::Read, 80),
    (G::Write, 120),
    (G::Flush, 8),
    (G::Fsync, 8),
    (G::Fallocate, 20),
    (G::Release, 50),
    (G::Opendir, 15),
    (G::Readdir, 15),
    (G::Releasedir, 12),
    (G::Fsyncdir, 5),
    (G::Setxattr, 15),
    (G::Getxattr, 15),
    (G::Listxattr, 8),
    (G::Removexattr, 8),
    (G::Lseek, 15),
    (G::Statfs, 3),
    (G::Access, 3),
    (G::Race, 15),
];

/// Requests every profile keeps: without them nothing else has anything to work on.
const CORE: &[G] = &[G::Lookup, G::Create, G::Write, G::Read, G::Release, G::Open];

/// What one seed stresses.
#[derive(Debug, Clone)]
pub struct Profile {
    weights: Vec<(G, u64)>,
    names: Vec<Vec<u8>>,
    /// Most store descriptors the server may hold.
    pub max_store_fds: usize,
    /// Placement policy of the share (None: every regular file redirected).
    pub policy: Option<&'static str>,
    round: (u64, u64),
    restart_pct: u64,
    toggle_append_pct: u64,
    /// FORGET may drop a node the guest still has open files on (a kernel never does).
    forget_open: bool,
    /// RENAME may name the same entry twice (a kernel answers that itself).
    rename_self: bool,
}

impl Profile {
    /// The profile of `seed`.
    pub fn of(seed: u64) -> Self {
        let mut rng = Rng::new(seed ^ 0x5157_4152_4d50_524f);
        let weights = WEIGHTS
            .iter()
            .map(|&(g, w)| {
                if !CORE.contains(&g) && rng.pct(20) {
                    (g, 0)
                } else {
                    (g, w * [1, 1, 2, 4][rng.below(4) as usize])
                }
            })
            .collect();
        let pool: [&[u8]; 8] = [b"a", b"b", b"c", b"d", b"e", b"f", b"g", b"h"];
        let n = 3 + rng.below(5) as usize;
        let policy = match rng.below(20) {
            0..=14 => None,
            15..=17 => Some("min-size:4K"),
            _ => Some("include:a;include:c;exclude:b/**;min-size:16K"),
        };
        Profile {
            weights,
            names: pool[..n].iter().map(|n| n.to_vec()).collect(),
            max_store_fds: [1, 2, 3, 8, 256][rng.below(5) as usize],
            policy,
            round: (50, 50 + rng.below(350)),
            restart_pct: 30 + rng.below(60),
            toggle_append_pct: [0, 0, 5, 20, 40][rng.below(5) as usize],
            forget_open: rng.pct(25),
            rename_self: rng.pct(30),
        }
    }

    /// One line for a report.
    pub fn describe(&self) -> String {
        let off: Vec<String> = self
            .weights
            .iter()
            .filter(|(_, w)| *w == 0)
            .map(|(g, _)| format!("{g:?}").to_lowercase())
            .collect();
        format!(
            "max_store_fds={} policy={} names={} rounds of {}..{} restart {}% append toggled {}%{}{}; off: {}",
            self.max_store_fds,
            self.policy.unwrap_or("all"),
            self.names.len(),
            self.round.0,
            self.round.1,
            self.restart_pct,
            self.toggle_append_pct,
            if self.forget_open { ", forgets open files" } else { "" },
            if self.rename_self { ", renames onto themselves" } else { "" },
            if off.is_empty() { "none".into() } else { off.join(",") }
        )
    }
}

/// Makes the steps of one seed.
pub struct Gen {
    rng: Rng,
    /// The seed's profile.
    pub profile: Profile,
    next_id: u32,
    left_in_round: u64,
    pending: Vec<Step>,
    /// Generating the requests of a race: see [`Gen::node`].
    in_race: bool,
}

const BAD_NAMES: &[&[u8]] = &[b"", b".", b"..", b"a/b", &[b'x'; 256]];
const ODD_NAMES: &[&[u8]] = &[&[0xff, 0xfe], b" ", b"-", b".hidden", &[b'y'; 255]];
const XATTRS: &[&[u8]] = &[
    b"user.a",
    b"user.b",
    b"user.a-rather-long-attribute-name-for-the-list",
    b"user.fsredirect",
    b"trusted.fsredirect",
    b"user.fsredirect.x",
];
const TARGETS: &[&[u8]] = &[b"a", b"../b", b"/etc/hostname", b"d/c", &[b'z'; 300]];

impl Gen {
    /// The generator of `seed`.
    pub fn new(seed: u64) -> Self {
        Gen {
            rng: Rng::new(seed),
            profile: Profile::of(seed),
            next_id: 1,
            left_in_round: 0,
            pending: Vec::new(),
            in_race: false,
        }
    }

    fn id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// The next step, chosen from what `m` says the share and the kernel hold.
    pub fn next(&mut self, m: &Model) -> Step {
        if let Some(s) = self.pending.pop() {
            return s;
        }
        if self.left_in_round == 0 {
            let (lo, hi) = self.profile.round;
            self.left_in_round = lo + self.rng.below(hi - lo + 1);
            if self.next_id > 1 && self.rng.pct(self.profile.restart_pct) {
                self.pending.push(Step::Restart);
            }
            if self.next_id > 1 {
                return Step::Check;
            }
        }
        self.left_in_round -= 1;
        // A kernel evicts an inode soon after its last name goes while nothing holds it open:
        // it FORGETs the node, with every lookup it had.
        let dead: Vec<(Tag, u64)> =
            m.k.known
                .iter()
                .filter(|(&o, _)| o != ROOT_OBJ && m.life(o) == Life::Dead)
                .map(|(&o, &(_, n))| (o, n))
                .collect();
        if let Some((o, count)) = self.rng.pick(&dead) {
            if self.rng.pct(75) {
                let req = Req::Forget {
                    node: NodeRef::Obj(o),
                    count,
                };
                return Step::Call(Op { id: self.id(), req });
            }
        }
        let total: u64 = self.profile.weights.iter().map(|(_, w)| w).sum();
        let mut x = self.rng.below(total);
        let mut kind = G::Lookup;
        for &(g, w) in &self.profile.weights {
            if x < w {
                kind = g;
                break;
            }
            x -= w;
        }
        if kind == G::Race {
            if let Some(s) = self.race(m) {
                return s;
            }
            kind = G::Write;
        }
        let req = self.req(m, kind);
        Step::Call(Op { id: self.id(), req })
    }

    // ----- choosing things -----

    fn known(&self, m: &Model, pred: impl Fn(Tag) -> bool) -> Vec<Tag> {
        m.k.known.keys().copied().filter(|&o| pred(o)).collect()
    }

    fn bogus_node(&mut self) -> NodeRef {
        NodeRef::Raw(
            self.rng
                .pick(&[0, 2, 3, 1 << 47, u64::MAX, BOGUS_NODE - 1])
                .unwrap(),
        )
    }

    /// A directory node: mostly a live one the kernel knows, sometimes anything.
    fn dir(&mut self, m: &Model) -> NodeRef {
        let r = self.rng.below(100);
        if r < 88 {
            let dirs = self.known(m, |o| m.is_dir(o) && m.life(o) == Life::Live);
            NodeRef::Obj(self.rng.pick(&dirs).unwrap_or(ROOT_OBJ))
        } else if r < 98 {
            self.node(m, |_| true)
        } else {
            self.bogus_node()
        }
    }

    /// A node: mostly one the kernel knows for which `pref` holds, sometimes a forgotten one,
    /// the root, or a number never handed out.
    fn node(&mut self, m: &Model, pref: impl Fn(Tag) -> bool) -> NodeRef {
        let r = self.rng.below(100);
        if r < 82 {
            let mut objs = self.known(m, |o| o != ROOT_OBJ && pref(o));
            if objs.is_empty() || self.rng.pct(10) {
                objs = self.known(m, |o| o != ROOT_OBJ);
            }
            if let Some(o) = self.rng.pick(&objs) {
                return NodeRef::Obj(o);
            }
            NodeRef::Root
        } else if r < 94 {
            // In a race, only ids this server handed out: an id from before a restart may
            // name, just then, a node the server looked up for itself (the other name of a
            // RENAME racing it), which the model cannot see.
            let stale: Vec<Tag> = m
                .k
                .last_node
                .iter()
                .filter(|(o, id)| {
                    !m.k.known.contains_key(o) && (!self.in_race || m.k.last_owner.contains_key(id))
                })
                .map(|(o, _)| *o)
                .collect();
            self.rng
                .pick(&stale)
                .map(NodeRef::Obj)
                .unwrap_or(NodeRef::Root)
        } else if r < 97 {
            NodeRef::Root
        } else {
            self.bogus_node()
        }
    }

    fn is_file(m: &Model, o: Tag) -> bool {
        m.objs[&o].kind == Kind::File
    }

    /// A name in `dir`: an existing one with `existing` percent, else one of the pool, now
    /// and then a bad or odd one.
    fn name(&mut self, m: &Model, dir: NodeRef, existing: u64) -> Vec<u8> {
        let r = self.rng.below(100);
        if r < 2 {
            return self.rng.pick(BAD_NAMES).unwrap().to_vec();
        }
        if r < 4 {
            return self.rng.pick(ODD_NAMES).unwrap().to_vec();
        }
        if self.rng.pct(existing) {
            if let NodeRef::Obj(d) = dir {
                if m.objs.get(&d).is_some_and(|o| o.kind == Kind::Dir) {
                    let names: Vec<Vec<u8>> = m.objs[&d].children.keys().cloned().collect();
                    if let Some(n) = self.rng.pick(&names) {
                        return n;
                    }
                }
            }
        }
        self.rng.pick(&self.profile.names).unwrap()
    }

    /// A handle, mostly a live one of `kind`, with the node of its object (mostly); else a
    /// stale or made-up one.
    fn handle(&mut self, m: &Model, kind: HKind) -> (NodeRef, HandleRef) {
        let r = self.rng.below(100);
        if r < 90 {
            let mut live: Vec<(Tag, Tag)> =
                m.k.handles
                    .values()
                    .filter(|h| h.kind == kind)
                    .map(|h| (h.slot, h.obj))
                    .collect();
            if live.is_empty() || self.rng.pct(5) {
                live = m.k.handles.values().map(|h| (h.slot, h.obj)).collect();
            }
            if let Some((slot, obj)) = self.rng.pick(&live) {
                let node = if self.rng.pct(96) {
                    NodeRef::Obj(obj)
                } else {
                    self.node(m, |_| true)
                };
                return (node, HandleRef::Slot(slot));
            }
        }
        let node = self.node(m, |o| Self::is_file(m, o));
        if r < 97 {
            let stale: Vec<Tag> =
                m.k.slot_raw
                    .iter()
                    .filter(|(_, raw)| !m.k.handles.contains_key(raw))
                    .map(|(s, _)| *s)
                    .collect();
            if let Some(s) = self.rng.pick(&stale) {
                return (node, HandleRef::Slot(s));
            }
        }
        let raw = self.rng.pick(&[0, 1, 2, 7, u64::MAX, 1 << 40]).unwrap();
        (node, HandleRef::Raw(raw))
    }

    fn file_mode(&mut self) -> u32 {
        0o600 | self.rng.below(0o200) as u32
    }

    fn dir_mode(&mut self) -> u32 {
        0o700 | self.rng.below(0o100) as u32
    }

    fn umask(&mut self) -> u32 {
        self.rng.pick(&[0, 0, 0, 0o022, 0o077]).unwrap()
    }

    fn open_flags(&mut self) -> u32 {
        let acc = match self.rng.below(10) {
            0..=2 => libc::O_RDONLY,
            3..=4 => libc::O_WRONLY,
            _ => libc::O_RDWR,
        };
        let mut f = acc;
        if self.rng.pct(25) {
            f |= libc::O_APPEND;
        }
        if self.rng.pct(if acc == libc::O_RDONLY { 3 } else { 12 }) {
            f |= libc::O_TRUNC;
        }
        if self.rng.pct(4) {
            f |= self.rng.pick(&[libc::O_SYNC, libc::O_DSYNC]).unwrap();
        }
        if self.rng.pct(3) {
            f |= self
                .rng
                .pick(&[
                    libc::O_DIRECTORY,
                    libc::O_NOFOLLOW,
                    libc::O_NONBLOCK,
                    libc::O_ACCMODE,
                ])
                .unwrap();
        }
        f as u32
    }

    /// The size of the object behind a symbolic node or handle, if the model has it.
    fn size_of(m: &Model, o: Option<Tag>) -> u64 {
        o.and_then(|o| m.objs.get(&o))
            .map(|o| o.data.len() as u64)
            .unwrap_or(0)
    }

    fn obj_of_handle(m: &Model, h: HandleRef) -> Option<Tag> {
        match h {
            HandleRef::Slot(s) => m.k.handles.values().find(|x| x.slot == s).map(|x| x.obj),
            HandleRef::Raw(_) => None,
        }
    }

    fn offset(&mut self, size: u64) -> u64 {
        match self.rng.below(100) {
            0..=59 => self.rng.below(size + 1),
            60..=74 => size,
            // Past the end, but files stay small enough to read back whole at every check.
            75..=94 => size.min(384 * 1024) + self.rng.below(65536),
            _ => self
                .rng
                .pick(&[1 << 50, (1 << 50) + 4096, u64::MAX - 10, i64::MAX as u64])
                .unwrap(),
        }
    }

    fn write_len(&mut self) -> u32 {
        match self.rng.below(100) {
            0..=59 => 1 + self.rng.below(512) as u32,
            60..=84 => 513 + self.rng.below(8192) as u32,
            85..=94 => 8193 + self.rng.below(65536) as u32,
            _ => 128 * 1024,
        }
    }

    fn write_flags(&mut self, m: &Model, h: HandleRef) -> u32 {
        let open = match h {
            HandleRef::Slot(s) => {
                m.k.handles
                    .values()
                    .find(|x| x.slot == s)
                    .map(|x| x.flags)
                    .unwrap_or(libc::O_RDWR as u32)
            }
            HandleRef::Raw(_) => libc::O_RDWR as u32,
        };
        let keep =
            libc::O_ACCMODE | libc::O_APPEND | libc::O_SYNC | libc::O_DSYNC | libc::O_NONBLOCK;
        let mut f = open as i32 & keep;
        // fcntl(F_SETFL) may have changed O_APPEND since the open; the kernel sends the
        // file's flags as they are now.
        if self.rng.pct(self.profile.toggle_append_pct) {
            f ^= libc::O_APPEND;
        }
        f as u32
    }

    fn time(&mut self) -> Time {
        if self.rng.pct(30) {
            Time::Now
        } else {
            Time::At(
                self.rng.below(4_000_000_000) as i64,
                self.rng.below(1_000_000_000) as i64,
            )
        }
    }

    fn forget_count(&mut self, m: &Model, n: NodeRef) -> u64 {
        let looked = match n {
            NodeRef::Obj(o) => m.k.known.get(&o).map(|k| k.1).unwrap_or(1),
            _ => 1,
        };
        match self.rng.below(100) {
            0..=59 => 1,
            60..=84 => looked,
            85..=94 => looked + 1 + self.rng.below(100),
            _ => u64::MAX,
        }
    }

    fn forget_node(&mut self, m: &Model) -> NodeRef {
        let forget_open = self.profile.forget_open;
        let closed = |o: Tag| forget_open || m.objs[&o].opens == 0;
        // The kernel drops nodes whose names are gone first (dentry reclaim).
        let gone = self.known(m, |o| o != ROOT_OBJ && m.life(o) != Life::Live && closed(o));
        if !gone.is_empty() && self.rng.pct(60) {
            return NodeRef::Obj(self.rng.pick(&gone).unwrap());
        }
        // A stale node id may name another object now: judge by what it resolves to.
        let n = self.node(m, |_| true);
        match m.tgt(m.node_raw(n)) {
            Some(o) if !closed(o) => NodeRef::Root,
            _ => n,
        }
    }

    // ----- requests -----

    fn req(&mut self, m: &Model, g: G) -> SymReq {
        match g {
            G::Lookup => {
                let parent = self.dir(m);
                let name = self.name(m, parent, 75);
                Req::Lookup { parent, name }
            }
            G::Forget => {
                let node = self.forget_node(m);
                let count = self.forget_count(m, node);
                Req::Forget { node, count }
            }
            G::BatchForget => {
                let n = 1 + self.rng.below(4);
                let items = (0..n)
                    .map(|_| {
                        let node = self.forget_node(m);
                        (node, self.forget_count(m, node))
                    })
                    .collect();
                Req::BatchForget { items }
            }
            G::Getattr => {
                let (node, handle) = if self.rng.pct(20) && !m.k.handles.is_empty() {
                    let (n, h) = self.handle(m, HKind::File);
                    (n, Some(h))
                } else {
                    (self.node(m, |_| true), None)
                };
                Req::Getattr { node, handle }
            }
            G::Setattr => {
                let (node, handle) = if self.rng.pct(15) && !m.k.handles.is_empty() {
                    let (n, h) = self.handle(m, HKind::File);
                    (n, Some(h))
                } else {
                    (self.node(m, |o| Self::is_file(m, o)), None)
                };
                let o = match node {
                    NodeRef::Obj(o) => Some(o),
                    _ => None,
                };
                let size = Self::size_of(m, o);
                // A directory keeps its owner's rwx: a server not run as root is itself
                // subject to the modes it sets, and the model leaves permissions out. A node
                // the kernel no longer knows may be any file after a restart, a directory too.
                let surely_file = o.is_some_and(|o| {
                    m.k.known.contains_key(&o)
                        && m.objs.get(&o).is_some_and(|x| x.kind != Kind::Dir)
                });
                let is_dir = !surely_file;
                if self.rng.pct(3) {
                    let huge = self
                        .rng
                        .pick(&[1 << 50, u64::MAX, i64::MAX as u64 + 1])
                        .unwrap();
                    return Req::Setattr {
                        node,
                        handle,
                        size: Some(huge),
                        mode: None,
                        atime: None,
                        mtime: None,
                    };
                }
                let mut req = (None, None, None, None);
                while req == (None, None, None, None) {
                    if self.rng.pct(55) {
                        req.0 = Some(match self.rng.below(6) {
                            0 => 0,
                            1 => size / 2,
                            2 => size,
                            3 => size + self.rng.below(65536),
                            4 => self.rng.below(256 * 1024),
                            _ => 128 * 1024,
                        });
                    }
                    if self.rng.pct(25) {
                        req.1 = Some(if is_dir {
                            self.dir_mode()
                        } else {
                            self.file_mode()
                        });
                    }
                    if self.rng.pct(10) {
                        req.2 = Some(self.time());
                    }
                    if self.rng.pct(20) {
                        req.3 = Some(self.time());
                    }
                }
                Req::Setattr {
                    node,
                    handle,
                    size: req.0,
                    mode: req.1,
                    atime: req.2,
                    mtime: req.3,
                }
            }
            G::Mknod => {
                let parent = self.dir(m);
                let name = self.name(m, parent, 30);
                let ty = match self.rng.below(100) {
                    0..=59 => libc::S_IFREG,
                    60..=71 => libc::S_IFIFO,
                    72..=79 => libc::S_IFCHR,
                    80..=84 => libc::S_IFBLK,
                    85..=92 => libc::S_IFSOCK,
                    _ => self.rng.pick(&[libc::S_IFDIR, libc::S_IFLNK, 0]).unwrap(),
                };
                let rdev = if ty == libc::S_IFCHR || ty == libc::S_IFBLK {
                    libc::makedev(1 + self.rng.below(250) as u32, self.rng.below(250) as u32) as u32
                } else {
                    0
                };
                let mode = ty | self.file_mode();
                let umask = self.umask();
                Req::Mknod {
                    parent,
                    name,
                    mode,
                    rdev,
                    umask,
                }
            }
            G::Mkdir => {
                let parent = self.dir(m);
                let name = self.name(m, parent, 15);
                let mode = self.dir_mode();
                let umask = self.rng.pick(&[0, 0, 0o022]).unwrap();
                Req::Mkdir {
                    parent,
                    name,
                    mode,
                    umask,
                }
            }
            G::Symlink => {
                let parent = self.dir(m);
                let name = self.name(m, parent, 15);
                let target = self.rng.pick(TARGETS).unwrap().to_vec();
                Req::Symlink {
                    parent,
                    name,
                    target,
                }
            }
            G::Readlink => Req::Readlink {
                node: self.node(m, |o| matches!(m.objs[&o].kind, Kind::Symlink(_))),
            },
            G::Unlink => {
                let parent = self.dir(m);
                let name = self.name(m, parent, 80);
                Req::Unlink { parent, name }
            }
            G::Rmdir => {
                let parent = self.dir(m);
                let name = self.name(m, parent, 70);
                Req::Rmdir { parent, name }
            }
            G::Rename => {
                let olddir = self.dir(m);
                let oldname = self.name(m, olddir, 85);
                let newdir = if self.rng.pct(50) {
                    olddir
                } else {
                    self.dir(m)
                };
                let mut newname = self.name(m, newdir, 40);
                if newdir == olddir && newname == oldname && !self.profile.rename_self {
                    newname.push(b'2');
                }
                let flags = match self.rng.below(100) {
                    0..=74 => 0,
                    75..=84 => libc::RENAME_NOREPLACE,
                    85..=96 => libc::RENAME_EXCHANGE,
                    _ => self
                        .rng
                        .pick(&[
                            libc::RENAME_WHITEOUT,
                            libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE,
                            1 << 7,
                        ])
                        .unwrap(),
                };
                Req::Rename {
                    olddir,
                    oldname,
                    newdir,
                    newname,
                    flags,
                }
            }
            G::Link => {
                let node = self.node(m, |o| !m.is_dir(o));
                let newparent = self.dir(m);
                let newname = self.name(m, newparent, 15);
                Req::Link {
                    node,
                    newparent,
                    newname,
                }
            }
            G::Open => {
                let node = self.node(m, |o| Self::is_file(m, o));
                let flags = self.open_flags();
                Req::Open { node, flags }
            }
            G::Create => {
                let parent = self.dir(m);
                let name = self.name(m, parent, 35);
                let mut flags = self.open_flags() as i32 & !(libc::O_DIRECTORY | libc::O_ACCMODE);
                flags |= match self.rng.below(10) {
                    0..=1 => libc::O_WRONLY,
                    _ => libc::O_RDWR,
                };
                flags |= libc::O_CREAT;
                if self.rng.pct(25) {
                    flags |= libc::O_EXCL;
                }
                let mode = libc::S_IFREG | self.file_mode();
                let umask = self.umask();
                Req::Create {
                    parent,
                    name,
                    flags: flags as u32,
                    mode,
                    umask,
                }
            }
            G::Read => {
                let (node, handle) = self.handle(m, HKind::File);
                let size = Self::size_of(m, Self::obj_of_handle(m, handle));
                let offset = self.offset(size.saturating_sub(1));
                let len = match self.rng.below(10) {
                    0..=4 => 1 + self.rng.below(4096) as u32,
                    5..=8 => 1 + self.rng.below(131072) as u32,
                    _ => 1 << 20,
                };
                Req::Read {
                    node,
                    handle,
                    offset,
                    size: len,
                }
            }
            G::Write => {
                let (node, handle) = self.handle(m, HKind::File);
                let size = Self::size_of(m, Self::obj_of_handle(m, handle));
                let len = self.write_len();
                let offset = if len == 128 * 1024 {
                    0
                } else {
                    self.offset(size)
                };
                let data = Fill {
                    len,
                    seed: self.rng.next() as u32,
                };
                let flags = self.write_flags(m, handle);
                Req::Write {
                    node,
                    handle,
                    offset,
                    data,
                    flags,
                }
            }
            G::Flush => {
                let (node, handle) = self.handle(m, HKind::File);
                Req::Flush { node, handle }
            }
            G::Fsync => {
                let (node, handle) = self.handle(m, HKind::File);
                Req::Fsync {
                    node,
                    handle,
                    datasync: self.rng.pct(50),
                }
            }
            G::Fallocate => {
                let (node, handle) = self.handle(m, HKind::File);
                let size = Self::size_of(m, Self::obj_of_handle(m, handle));
                let keep = libc::FALLOC_FL_KEEP_SIZE;
                let mode = self
                    .rng
                    .pick(&[
                        0,
                        0,
                        keep,
                        libc::FALLOC_FL_PUNCH_HOLE | keep,
                        libc::FALLOC_FL_PUNCH_HOLE | keep,
                        libc::FALLOC_FL_ZERO_RANGE,
                        libc::FALLOC_FL_ZERO_RANGE | keep,
                        libc::FALLOC_FL_PUNCH_HOLE,
                        0x40,
                    ])
                    .unwrap() as u32;
                let offset = if self.rng.pct(3) {
                    1 << 50
                } else {
                    self.rng.below(size + 65536)
                };
                let len = if self.rng.pct(3) {
                    0
                } else {
                    1 + self.rng.below(65536)
                };
                Req::Fallocate {
                    node,
                    handle,
                    mode,
                    offset,
                    len,
                }
            }
            G::Release => {
                let (node, handle) = self.handle(m, HKind::File);
                Req::Release { node, handle }
            }
            G::Opendir => Req::Opendir {
                node: self.node(m, |o| m.is_dir(o)),
            },
            G::Readdir => {
                let (node, handle) = self.handle(m, HKind::Dir);
                Req::Readdir { node, handle }
            }
            G::Releasedir => {
                let (node, handle) = self.handle(m, HKind::Dir);
                Req::Releasedir { node, handle }
            }
            G::Fsyncdir => {
                let (node, handle) = self.handle(m, HKind::Dir);
                Req::Fsyncdir { node, handle }
            }
            G::Setxattr => {
                let node = self.node(m, |_| true);
                let name = self.rng.pick(XATTRS).unwrap().to_vec();
                let len = self.rng.below(300) as u32;
                let value = Fill {
                    len,
                    seed: self.rng.next() as u32,
                }
                .bytes();
                let flags = self.rng.pick(&[0, 0, 0, 1, 2, 4]).unwrap();
                Req::Setxattr {
                    node,
                    name,
                    value,
                    flags,
                }
            }
            G::Getxattr => {
                let node = self.node(m, |_| true);
                let name = self.rng.pick(XATTRS).unwrap().to_vec();
                let size = self.rng.pick(&[0, 3, 4096, 4096]).unwrap();
                Req::Getxattr { node, name, size }
            }
            G::Listxattr => {
                let node = self.node(m, |_| true);
                let size = self.rng.pick(&[0, 5, 4096, 4096]).unwrap();
                Req::Listxattr { node, size }
            }
            G::Removexattr => {
                let node = self.node(m, |_| true);
                let name = self.rng.pick(XATTRS).unwrap().to_vec();
                Req::Removexattr { node, name }
            }
            G::Lseek => {
                let (node, handle) = self.handle(m, HKind::File);
                let size = Self::size_of(m, Self::obj_of_handle(m, handle));
                let whence = self
                    .rng
                    .pick(&[
                        libc::SEEK_SET,
                        libc::SEEK_END,
                        libc::SEEK_CUR,
                        libc::SEEK_DATA,
                        libc::SEEK_DATA,
                        libc::SEEK_HOLE,
                        libc::SEEK_HOLE,
                        9,
                    ])
                    .unwrap() as u32;
                let offset = if self.rng.pct(4) {
                    u64::MAX - 5
                } else {
                    self.rng.below(size + 8192)
                };
                Req::Lseek {
                    node,
                    handle,
                    offset,
                    whence,
                }
            }
            G::Statfs => Req::Statfs {
                node: self.node(m, |_| true),
            },
            G::Access => Req::Access {
                node: self.node(m, |_| true),
                mask: self.rng.below(8) as u32,
            },
            G::Race => unreachable!("races are steps of their own"),
        }
    }

    // ----- races -----

    fn race(&mut self, m: &Model) -> Option<Step> {
        let t = self.rng.below(100);
        let ops: Vec<SymReq> = if t < 40 {
            // A big write racing a truncate of the same file.
            let writable: Vec<(Tag, Tag, u32)> =
                m.k.handles
                    .values()
                    .filter(|h| {
                        h.kind == HKind::File
                            && h.flags as i32 & libc::O_ACCMODE != libc::O_RDONLY
                            && m.life(h.obj) == Life::Live
                            && m.k.known.contains_key(&h.obj)
                    })
                    .map(|h| (h.slot, h.obj, h.flags))
                    .collect();
            let Some((slot, obj, flags)) = self.rng.pick(&writable) else {
                // Open one now, so a later race has a handle.
                let files = self.known(m, |o| Self::is_file(m, o) && m.life(o) == Life::Live);
                let node = NodeRef::Obj(self.rng.pick(&files)?);
                return Some(Step::Call(Op {
                    id: self.id(),
                    req: Req::Open {
                        node,
                        flags: libc::O_RDWR as u32,
                    },
                }));
            };
            let node = NodeRef::Obj(obj);
            let mut ops = vec![
                Req::Write {
                    node,
                    handle: HandleRef::Slot(slot),
                    offset: 0,
                    data: Fill {
                        len: 128 * 1024,
                        seed: self.rng.next() as u32,
                    },
                    flags: flags
                        & (libc::O_ACCMODE
                            | libc::O_APPEND
                            | libc::O_SYNC
                            | libc::O_DSYNC
                            | libc::O_NONBLOCK) as u32,
                },
                Req::Setattr {
                    node,
                    handle: None,
                    size: Some(if self.rng.pct(80) {
                        0
                    } else {
                        self.rng.below(65536)
                    }),
                    mode: None,
                    atime: None,
                    mtime: None,
                },
            ];
            if self.rng.pct(30) {
                ops.push(Req::Getattr { node, handle: None });
            }
            ops
        } else if t < 70 {
            // A rename racing reads and lookups of the names it moves.
            let dirs = self.known(m, |o| {
                m.is_dir(o) && m.life(o) == Life::Live && !m.objs[&o].children.is_empty()
            });
            let d = self.rng.pick(&dirs)?;
            let names: Vec<Vec<u8>> = m.objs[&d].children.keys().cloned().collect();
            let name = self.rng.pick(&names)?;
            let src = m.objs[&d].children[&name];
            let newdir = if self.rng.pct(60) {
                NodeRef::Obj(d)
            } else {
                self.dir(m)
            };
            let mut newname = self.name(m, newdir, 50);
            if newdir == NodeRef::Obj(d) && newname == name && !self.profile.rename_self {
                newname.push(b'2');
            }
            let mut ops = vec![Req::Rename {
                olddir: NodeRef::Obj(d),
                oldname: name.clone(),
                newdir,
                newname: newname.clone(),
                flags: if self.rng.pct(20) {
                    libc::RENAME_EXCHANGE
                } else {
                    0
                },
            }];
            let reader =
                m.k.handles
                    .values()
                    .find(|h| h.obj == src && h.kind == HKind::File)
                    .map(|h| h.slot);
            if let Some(slot) = reader {
                ops.push(Req::Read {
                    node: NodeRef::Obj(src),
                    handle: HandleRef::Slot(slot),
                    offset: 0,
                    size: 1 << 20,
                });
            }
            ops.push(Req::Lookup {
                parent: NodeRef::Obj(d),
                name,
            });
            if self.rng.pct(50) {
                ops.push(Req::Lookup {
                    parent: newdir,
                    name: newname,
                });
            }
            ops.truncate(3);
            ops
        } else {
            // Anything at all, two or three at once.
            let n = 2 + self.rng.below(2);
            let kinds = [
                G::Lookup,
                G::Getattr,
                G::Setattr,
                G::Create,
                G::Unlink,
                G::Rename,
                G::Link,
                G::Open,
                G::Read,
                G::Write,
                G::Release,
                G::Mkdir,
                G::Rmdir,
                G::Forget,
                G::Fallocate,
                G::Setxattr,
            ];
            self.in_race = true;
            let ops = (0..n)
                .map(|_| {
                    let g = self.rng.pick(&kinds).unwrap();
                    self.req(m, g)
                })
                .collect();
            self.in_race = false;
            ops
        };
        let repeat = if t < 40 {
            4 + self.rng.below(13) as u16
        } else {
            1 + self.rng.below(3) as u16
        };
        let skew = ops.iter().map(|_| self.rng.below(3000) as u16).collect();
        let ops = ops
            .into_iter()
            .map(|req| Op { id: self.id(), req })
            .collect();
        Some(Step::Race { repeat, skew, ops })
    }
}
