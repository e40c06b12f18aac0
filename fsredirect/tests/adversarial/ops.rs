//! The requests the driver sends, in two forms: as generated and recorded in a trace (nodes,
//! handles and data named symbolically, so that any sub-list of a trace can still be replayed),
//! and as sent to the file system (raw node ids, raw handles, bytes).

use std::fmt;

/// Names an object of the model, a handle slot, or one replay of a raced request: the id of
/// the operation that made it, shifted left by 16, plus the repetition of a race (0 otherwise).
pub type Tag = u64;

/// The tag of operation `id` in repetition `rep` of its race.
pub fn tag(id: u32, rep: u16) -> Tag {
    (u64::from(id) << 16) | u64::from(rep)
}

/// The root object of the model (FUSE node 1).
pub const ROOT_OBJ: Tag = 0;

/// FUSE node id of the root.
pub const ROOT_NODE: u64 = 1;

/// Node ids at and above this are never handed out by the server.
pub const BOGUS_NODE: u64 = 0x00dd_0000_0000_0000;

/// Handle numbers at and above this are never handed out by the server.
pub const BOGUS_HANDLE: u64 = 0x00ee_0000_0000_0000;

/// A node as the generator names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRef {
    /// The root directory.
    Root,
    /// The object tagged so: the node id the kernel knows for it now, else the last one it had
    /// (stale, perhaps handed to another object since), else a number never handed out.
    Obj(Tag),
    /// A raw number.
    Raw(u64),
}

/// A file handle as the generator names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandleRef {
    /// The handle opened by the operation tagged so: live, or the stale number it had.
    Slot(Tag),
    /// A raw number.
    Raw(u64),
}

/// The data of a WRITE: `len` bytes derived from `seed`, so that every write is recognisable
/// and a trace stays short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fill {
    /// Number of bytes.
    pub len: u32,
    /// What the bytes are derived from.
    pub seed: u32,
}

impl Fill {
    /// The bytes.
    pub fn bytes(&self) -> Vec<u8> {
        let mut x = u64::from(self.seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..self.len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }
}

/// A time in SETATTR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Time {
    /// The server's clock (`*_NOW`).
    Now,
    /// Seconds and nanoseconds.
    At(i64, i64),
}

/// One FUSE request, generic over how nodes (`N`), handles (`H`) and write data (`D`) are named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Req<N, H, D> {
    /// LOOKUP.
    Lookup { parent: N, name: Vec<u8> },
    /// FORGET.
    Forget { node: N, count: u64 },
    /// BATCH_FORGET.
    BatchForget { items: Vec<(N, u64)> },
    /// GETATTR, with the handle of FUSE_GETATTR_FH.
    Getattr { node: N, handle: Option<H> },
    /// SETATTR; each `Some` is one valid bit.
    Setattr {
        node: N,
        handle: Option<H>,
        size: Option<u64>,
        mode: Option<u32>,
        atime: Option<Time>,
        mtime: Option<Time>,
    },
    /// MKNOD.
    Mknod {
        parent: N,
        name: Vec<u8>,
        mode: u32,
        rdev: u32,
        umask: u32,
    },
    /// MKDIR.
    Mkdir {
        parent: N,
        name: Vec<u8>,
        mode: u32,
        umask: u32,
    },
    /// SYMLINK.
    Symlink {
        parent: N,
        name: Vec<u8>,
        target: Vec<u8>,
    },
    /// READLINK.
    Readlink { node: N },
    /// UNLINK.
    Unlink { parent: N, name: Vec<u8> },
    /// RMDIR.
    Rmdir { parent: N, name: Vec<u8> },
    /// RENAME2.
    Rename {
        olddir: N,
        oldname: Vec<u8>,
        newdir: N,
        newname: Vec<u8>,
        flags: u32,
    },
    /// LINK.
    Link {
        node: N,
        newparent: N,
        newname: Vec<u8>,
    },
    /// OPEN.
    Open { node: N, flags: u32 },
    /// CREATE.
    Create {
        parent: N,
        name: Vec<u8>,
        flags: u32,
        mode: u32,
        umask: u32,
    },
    /// READ.
    Read {
        node: N,
        handle: H,
        offset: u64,
        size: u32,
    },
    /// WRITE; `flags` are the file's flags now (as the kernel sends them: O_APPEND may have
    /// been cleared or set by fcntl since the open).
    Write {
        node: N,
        handle: H,
        offset: u64,
        data: D,
        flags: u32,
    },
    /// FLUSH.
    Flush { node: N, handle: H },
    /// FSYNC.
    Fsync { node: N, handle: H, datasync: bool },
    /// FALLOCATE.
    Fallocate {
        node: N,
        handle: H,
        mode: u32,
        offset: u64,
        len: u64,
    },
    /// RELEASE.
    Release { node: N, handle: H },
    /// OPENDIR.
    Opendir { node: N },
    /// READDIR, repeated from offset 0 until the listing ends.
    Readdir { node: N, handle: H },
    /// RELEASEDIR.
    Releasedir { node: N, handle: H },
    /// FSYNCDIR.
    Fsyncdir { node: N, handle: H },
    /// SETXATTR.
    Setxattr {
        node: N,
        name: Vec<u8>,
        value: Vec<u8>,
        flags: u32,
    },
    /// GETXATTR.
    Getxattr { node: N, name: Vec<u8>, size: u32 },
    /// LISTXATTR.
    Listxattr { node: N, size: u32 },
    /// REMOVEXATTR.
    Removexattr { node: N, name: Vec<u8> },
    /// LSEEK.
    Lseek {
        node: N,
        handle: H,
        offset: u64,
        whence: u32,
    },
    /// STATFS.
    Statfs { node: N },
    /// ACCESS.
    Access { node: N, mask: u32 },
}

/// A request as recorded in a trace.
pub type SymReq = Req<NodeRef, HandleRef, Fill>;

/// A request as sent to the file system.
pub type Call = Req<u64, u64, Vec<u8>>;

/// One recorded request: `id` tags what it creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// Unique in its trace.
    pub id: u32,
    /// The request.
    pub req: SymReq,
}

/// One step of a trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// One request, alone in flight.
    Call(Op),
    /// Requests sent together from one thread each, `repeat` times in a row; thread `i` spins
    /// `skew[i]` (varied per repetition) before sending, to vary the overlap.
    Race {
        repeat: u16,
        skew: Vec<u16>,
        ops: Vec<Op>,
    },
    /// Stop the server (a clean stop, as at VM shutdown) and start a new one on the same tree
    /// and store: node ids, handles and caches are gone.
    Restart,
    /// Walk the share through the file system and compare it with the model, then `verify`.
    Check,
}

impl<N: Copy, H: Copy, D> Req<N, H, D> {
    /// The same request with nodes, handles and data renamed.
    pub fn map<N2, H2, D2>(
        &self,
        n: &mut impl FnMut(N) -> N2,
        h: &mut impl FnMut(H) -> H2,
        d: &mut impl FnMut(&D) -> D2,
    ) -> Req<N2, H2, D2> {
        use Req::*;
        match self {
            Lookup { parent, name } => Lookup {
                parent: n(*parent),
                name: name.clone(),
            },
            Forget { node, count } => Forget {
                node: n(*node),
                count: *count,
            },
            BatchForget { items } => BatchForget {
                items: items.iter().map(|(x, c)| (n(*x), *c)).collect(),
            },
            Getattr { node, handle } => Getattr {
                node: n(*node),
                handle: handle.map(&mut *h),
            },
            Setattr {
                node,
                handle,
                size,
                mode,
                atime,
                mtime,
            } => Setattr {
                node: n(*node),
                handle: handle.map(&mut *h),
                size: *size,
                mode: *mode,
                atime: *atime,
                mtime: *mtime,
            },
            Mknod {
                parent,
                name,
                mode,
                rdev,
                umask,
            } => Mknod {
                parent: n(*parent),
                name: name.clone(),
                mode: *mode,
                rdev: *rdev,
                umask: *umask,
            },
            Mkdir {
                parent,
                name,
                mode,
                umask,
            } => Mkdir {
                parent: n(*parent),
                name: name.clone(),
                mode: *mode,
                umask: *umask,
            },
            Symlink {
                parent,
                name,
                target,
            } => Symlink {
                parent: n(*parent),
                name: name.clone(),
                target: target.clone(),
            },
            Readlink { node } => Readlink { node: n(*node) },
            Unlink { parent, name } => Unlink {
                parent: n(*parent),
                name: name.clone(),
            },
            Rmdir { parent, name } => Rmdir {
                parent: n(*parent),
                name: name.clone(),
            },
            Rename {
                olddir,
                oldname,
                newdir,
                newname,
                flags,
            } => Rename {
                olddir: n(*olddir),
                oldname: oldname.clone(),
                newdir: n(*newdir),
                newname: newname.clone(),
                flags: *flags,
            },
            Link {
                node,
                newparent,
                newname,
            } => Link {
                node: n(*node),
                newparent: n(*newparent),
                newname: newname.clone(),
            },
            Open { node, flags } => Open {
                node: n(*node),
                flags: *flags,
            },
            Create {
                parent,
                name,
                flags,
                mode,
                umask,
            } => Create {
                parent: n(*parent),
                name: name.clone(),
                flags: *flags,
                mode: *mode,
                umask: *umask,
            },
            Read {
                node,
                handle,
                offset,
                size,
            } => Read {
                node: n(*node),
                handle: h(*handle),
                offset: *offset,
                size: *size,
            },
            Write {
                node,
                handle,
                offset,
                data,
                flags,
            } => Write {
                node: n(*node),
                handle: h(*handle),
                offset: *offset,
                data: d(data),
                flags: *flags,
            },
            Flush { node, handle } => Flush {
                node: n(*node),
                handle: h(*handle),
            },
            Fsync {
                node,
                handle,
                datasync,
            } => Fsync {
                node: n(*node),
                handle: h(*handle),
                datasync: *datasync,
            },
            Fallocate {
                node,
                handle,
                mode,
                offset,
                len,
            } => Fallocate {
                node: n(*node),
                handle: h(*handle),
                mode: *mode,
                offset: *offset,
                len: *len,
            },
            Release { node, handle } => Release {
                node: n(*node),
                handle: h(*handle),
            },
            Opendir { node } => Opendir { node: n(*node) },
            Readdir { node, handle } => Readdir {
                node: n(*node),
                handle: h(*handle),
            },
            Releasedir { node, handle } => Releasedir {
                node: n(*node),
                handle: h(*handle),
            },
            Fsyncdir { node, handle } => Fsyncdir {
                node: n(*node),
                handle: h(*handle),
            },
            Setxattr {
                node,
                name,
                value,
                flags,
            } => Setxattr {
                node: n(*node),
                name: name.clone(),
                value: value.clone(),
                flags: *flags,
            },
            Getxattr { node, name, size } => Getxattr {
                node: n(*node),
                name: name.clone(),
                size: *size,
            },
            Listxattr { node, size } => Listxattr {
                node: n(*node),
                size: *size,
            },
            Removexattr { node, name } => Removexattr {
                node: n(*node),
                name: name.clone(),
            },
            Lseek {
                node,
                handle,
                offset,
                whence,
            } => Lseek {
                node: n(*node),
                handle: h(*handle),
                offset: *offset,
                whence: *whence,
            },
            Statfs { node } => Statfs { node: n(*node) },
            Access { node, mask } => Access {
                node: n(*node),
                mask: *mask,
            },
        }
    }

    /// Calls `n` for every node the request names and `h` for its handle, if any.
    pub fn visit(&self, n: &mut impl FnMut(N), h: &mut impl FnMut(H)) {
        use Req::*;
        match self {
            Lookup { parent, .. }
            | Mknod { parent, .. }
            | Mkdir { parent, .. }
            | Symlink { parent, .. }
            | Unlink { parent, .. }
            | Rmdir { parent, .. }
            | Create { parent, .. } => n(*parent),
            Forget { node, .. }
            | Readlink { node }
            | Open { node, .. }
            | Opendir { node }
            | Setxattr { node, .. }
            | Getxattr { node, .. }
            | Listxattr { node, .. }
            | Removexattr { node, .. }
            | Statfs { node }
            | Access { node, .. } => n(*node),
            BatchForget { items } => items.iter().for_each(|(x, _)| n(*x)),
            Getattr { node, handle } | Setattr { node, handle, .. } => {
                n(*node);
                if let Some(x) = handle {
                    h(*x);
                }
            }
            Rename { olddir, newdir, .. } => {
                n(*olddir);
                n(*newdir);
            }
            Link {
                node, newparent, ..
            } => {
                n(*node);
                n(*newparent);
            }
            Read { node, handle, .. }
            | Write { node, handle, .. }
            | Flush { node, handle }
            | Fsync { node, handle, .. }
            | Fallocate { node, handle, .. }
            | Release { node, handle }
            | Readdir { node, handle }
            | Releasedir { node, handle }
            | Fsyncdir { node, handle }
            | Lseek { node, handle, .. } => {
                n(*node);
                h(*handle);
            }
        }
    }

    /// The request's name in traces (the FUSE opcode, lower case).
    pub fn opcode(&self) -> &'static str {
        use Req::*;
        match self {
            Lookup { .. } => "lookup",
            Forget { .. } => "forget",
            BatchForget { .. } => "batch_forget",
            Getattr { .. } => "getattr",
            Setattr { .. } => "setattr",
            Mknod { .. } => "mknod",
            Mkdir { .. } => "mkdir",
            Symlink { .. } => "symlink",
            Readlink { .. } => "readlink",
            Unlink { .. } => "unlink",
            Rmdir { .. } => "rmdir",
            Rename { .. } => "rename",
            Link { .. } => "link",
            Open { .. } => "open",
            Create { .. } => "create",
            Read { .. } => "read",
            Write { .. } => "write",
            Flush { .. } => "flush",
            Fsync { .. } => "fsync",
            Fallocate { .. } => "fallocate",
            Release { .. } => "release",
            Opendir { .. } => "opendir",
            Readdir { .. } => "readdir",
            Releasedir { .. } => "releasedir",
            Fsyncdir { .. } => "fsyncdir",
            Setxattr { .. } => "setxattr",
            Getxattr { .. } => "getxattr",
            Listxattr { .. } => "listxattr",
            Removexattr { .. } => "removexattr",
            Lseek { .. } => "lseek",
            Statfs { .. } => "statfs",
            Access { .. } => "access",
        }
    }
}

/// A name as a trace shows it: printable ASCII as is, other bytes escaped, long runs shortened.
pub struct Name<'a>(pub &'a [u8]);

impl fmt::Display for Name<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.len() > 40 && self.0.iter().all(|&b| b == self.0[0]) {
            return write!(f, "\"{}\"x{}", self.0[0] as char, self.0.len());
        }
        write!(f, "\"")?;
        for &b in self.0 {
            if b.is_ascii_graphic() && b != b'"' && b != b'\\' || b == b' ' {
                write!(f, "{}", b as char)?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        write!(f, "\"")
    }
}

impl fmt::Display for NodeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeRef::Root => write!(f, "root"),
            NodeRef::Obj(t) => write!(f, "{}", TagName(*t)),
            NodeRef::Raw(x) => write!(f, "node:{x:#x}"),
        }
    }
}

impl fmt::Display for HandleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandleRef::Slot(t) => write!(f, "fh{}", TagName(*t)),
            HandleRef::Raw(x) => write!(f, "fh:{x:#x}"),
        }
    }
}

/// An object or slot tag as a trace shows it: `#<op>` or `#<op>.<repetition>`.
pub struct TagName(pub Tag);

impl fmt::Display for TagName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (id, rep) = (self.0 >> 16, self.0 & 0xffff);
        if self.0 == ROOT_OBJ {
            write!(f, "root")
        } else if rep == 0 {
            write!(f, "#{id}")
        } else {
            write!(f, "#{id}.{rep}")
        }
    }
}

/// Open flags as a trace shows them.
pub struct OFlags(pub u32);

impl fmt::Display for OFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0 as i32;
        let mut parts = vec![match v & libc::O_ACCMODE {
            libc::O_RDONLY => "RDONLY".to_string(),
            libc::O_WRONLY => "WRONLY".to_string(),
            libc::O_RDWR => "RDWR".to_string(),
            _ => "ACCMODE3".to_string(),
        }];
        let known = [
            (libc::O_CREAT, "CREAT"),
            (libc::O_EXCL, "EXCL"),
            (libc::O_TRUNC, "TRUNC"),
            (libc::O_APPEND, "APPEND"),
            (libc::O_SYNC, "SYNC"),
            (libc::O_DSYNC, "DSYNC"),
            (libc::O_DIRECTORY, "DIRECTORY"),
            (libc::O_NOFOLLOW, "NOFOLLOW"),
            (libc::O_NONBLOCK, "NONBLOCK"),
        ];
        let mut rest = v & !libc::O_ACCMODE;
        for (bit, name) in known {
            if rest & bit == bit && bit != 0 {
                parts.push(name.to_string());
                rest &= !bit;
            }
        }
        if rest != 0 {
            parts.push(format!("{rest:#x}"));
        }
        write!(f, "{}", parts.join("|"))
    }
}

fn time(t: &Option<Time>) -> String {
    match t {
        None => String::new(),
        Some(Time::Now) => "now".into(),
        Some(Time::At(s, ns)) => format!("{s}.{ns:09}"),
    }
}

impl fmt::Display for Op {
    /// One trace line: `#id opcode args`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Req::*;
        write!(f, "#{} {}", self.id, self.req.opcode())?;
        match &self.req {
            Lookup { parent, name } => write!(f, " {parent} {}", Name(name)),
            Forget { node, count } => write!(f, " {node} count={count}"),
            BatchForget { items } => {
                for (n, c) in items {
                    write!(f, " {n}x{c}")?;
                }
                Ok(())
            }
            Getattr { node, handle } => {
                write!(f, " {node}")?;
                if let Some(h) = handle {
                    write!(f, " {h}")?;
                }
                Ok(())
            }
            Setattr {
                node,
                handle,
                size,
                mode,
                atime,
                mtime,
            } => {
                write!(f, " {node}")?;
                if let Some(h) = handle {
                    write!(f, " {h}")?;
                }
                if let Some(s) = size {
                    write!(f, " size={s}")?;
                }
                if let Some(m) = mode {
                    write!(f, " mode={m:o}")?;
                }
                if atime.is_some() {
                    write!(f, " atime={}", time(atime))?;
                }
                if mtime.is_some() {
                    write!(f, " mtime={}", time(mtime))?;
                }
                Ok(())
            }
            Mknod {
                parent,
                name,
                mode,
                rdev,
                umask,
            } => write!(
                f,
                " {parent} {} mode={mode:o} rdev={rdev:#x} umask={umask:o}",
                Name(name)
            ),
            Mkdir {
                parent,
                name,
                mode,
                umask,
            } => write!(f, " {parent} {} mode={mode:o} umask={umask:o}", Name(name)),
            Symlink {
                parent,
                name,
                target,
            } => write!(f, " {parent} {} -> {}", Name(name), Name(target)),
            Readlink { node } => write!(f, " {node}"),
            Unlink { parent, name } | Rmdir { parent, name } => {
                write!(f, " {parent} {}", Name(name))
            }
            Rename {
                olddir,
                oldname,
                newdir,
                newname,
                flags,
            } => {
                write!(
                    f,
                    " {olddir} {} -> {newdir} {}",
                    Name(oldname),
                    Name(newname)
                )?;
                match *flags {
                    0 => Ok(()),
                    1 => write!(f, " NOREPLACE"),
                    2 => write!(f, " EXCHANGE"),
                    x => write!(f, " flags={x:#x}"),
                }
            }
            Link {
                node,
                newparent,
                newname,
            } => write!(f, " {node} -> {newparent} {}", Name(newname)),
            Open { node, flags } => write!(f, " {node} {}", OFlags(*flags)),
            Create {
                parent,
                name,
                flags,
                mode,
                umask,
            } => write!(
                f,
                " {parent} {} {} mode={mode:o} umask={umask:o}",
                Name(name),
                OFlags(*flags)
            ),
            Read {
                node,
                handle,
                offset,
                size,
            } => write!(f, " {node} {handle} off={offset} size={size}"),
            Write {
                node,
                handle,
                offset,
                data,
                flags,
            } => write!(
                f,
                " {node} {handle} off={offset} len={} data={} flags={}",
                data.len,
                data.seed,
                OFlags(*flags)
            ),
            Flush { node, handle } | Release { node, handle } => write!(f, " {node} {handle}"),
            Readdir { node, handle } | Releasedir { node, handle } | Fsyncdir { node, handle } => {
                write!(f, " {node} {handle}")
            }
            Fsync {
                node,
                handle,
                datasync,
            } => write!(f, " {node} {handle} datasync={datasync}"),
            Fallocate {
                node,
                handle,
                mode,
                offset,
                len,
            } => write!(f, " {node} {handle} mode={mode:#x} off={offset} len={len}"),
            Opendir { node } | Statfs { node } | Listxattr { node, .. } => {
                write!(f, " {node}")?;
                if let Listxattr { size, .. } = &self.req {
                    write!(f, " size={size}")?;
                }
                Ok(())
            }
            Setxattr {
                node,
                name,
                value,
                flags,
            } => write!(
                f,
                " {node} {} len={} flags={flags}",
                Name(name),
                value.len()
            ),
            Getxattr { node, name, size } => write!(f, " {node} {} size={size}", Name(name)),
            Removexattr { node, name } => write!(f, " {node} {}", Name(name)),
            Lseek {
                node,
                handle,
                offset,
                whence,
            } => write!(f, " {node} {handle} off={offset} whence={whence}"),
            Access { node, mask } => write!(f, " {node} mask={mask:o}"),
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Call(op) => write!(f, "{op}"),
            Step::Race { repeat, skew, ops } => {
                write!(f, "race x{repeat} skew={skew:?}:")?;
                for op in ops {
                    write!(f, " [{op}]")?;
                }
                Ok(())
            }
            Step::Restart => write!(f, "restart"),
            Step::Check => write!(f, "check"),
        }
    }
}

/// The attributes a reply carries, as far as the model checks them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// Host inode number.
    pub ino: u64,
    /// Type and permission bits.
    pub mode: u32,
    /// Link count.
    pub nlink: u64,
    /// Apparent size.
    pub size: i64,
    /// Modification time.
    pub mtime: (i64, i64),
    /// Device number of a device node.
    pub rdev: u64,
}

impl Attr {
    /// The attributes of a `stat64`.
    pub fn of(st: &libc::stat64) -> Self {
        Attr {
            ino: st.st_ino,
            mode: st.st_mode,
            nlink: st.st_nlink,
            size: st.st_size,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            rdev: st.st_rdev,
        }
    }
}

/// What the file system answered, reduced to what the model checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Success without data.
    Unit,
    /// A node id and its attributes (LOOKUP, MKNOD, MKDIR, SYMLINK, LINK).
    Entry(u64, Attr),
    /// Attributes (GETATTR, SETATTR).
    Attr(Attr),
    /// CREATE: the entry and the handle.
    Created(u64, Attr, Option<u64>),
    /// OPEN, OPENDIR: the handle.
    Opened(Option<u64>),
    /// READ: the bytes.
    Data(Vec<u8>),
    /// WRITE: the count.
    Written(usize),
    /// READDIR: every (name, type) of the listing.
    Dir(Vec<(Vec<u8>, u32)>),
    /// GETXATTR: the value.
    Value(Vec<u8>),
    /// GETXATTR, LISTXATTR with size 0: the size needed.
    Size(u32),
    /// LISTXATTR: the NUL-separated names.
    Names(Vec<u8>),
    /// LSEEK: the new offset.
    Offset(u64),
    /// READLINK: the target.
    Link(Vec<u8>),
}

/// How a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fail {
    /// An errno reply.
    Errno(i32),
    /// The file system panicked (always a finding).
    Panic(String),
}

/// The outcome of one request.
pub type Outcome = Result<Reply, Fail>;

/// The name of an errno, for traces.
pub fn errno_name(e: i32) -> String {
    let names = [
        (libc::EPERM, "EPERM"),
        (libc::ENOENT, "ENOENT"),
        (libc::EIO, "EIO"),
        (libc::ENXIO, "ENXIO"),
        (libc::EBADF, "EBADF"),
        (libc::EACCES, "EACCES"),
        (libc::EEXIST, "EEXIST"),
        (libc::EXDEV, "EXDEV"),
        (libc::ENOTDIR, "ENOTDIR"),
        (libc::EISDIR, "EISDIR"),
        (libc::EINVAL, "EINVAL"),
        (libc::EMFILE, "EMFILE"),
        (libc::EFBIG, "EFBIG"),
        (libc::ENOSPC, "ENOSPC"),
        (libc::ESPIPE, "ESPIPE"),
        (libc::ERANGE, "ERANGE"),
        (libc::ENAMETOOLONG, "ENAMETOOLONG"),
        (libc::ENOTEMPTY, "ENOTEMPTY"),
        (libc::ELOOP, "ELOOP"),
        (libc::ENODATA, "ENODATA"),
        (libc::EOVERFLOW, "EOVERFLOW"),
        (libc::EOPNOTSUPP, "EOPNOTSUPP"),
        (libc::ESTALE, "ESTALE"),
        (libc::ENOSYS, "ENOSYS"),
    ];
    names
        .iter()
        .find(|(n, _)| *n == e)
        .map(|(_, s)| s.to_string())
        .unwrap_or_else(|| format!("errno {e}"))
}

/// An outcome as a trace shows it.
pub struct Shown<'a>(pub &'a Outcome);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let attr = |f: &mut fmt::Formatter<'_>, a: &Attr| {
            write!(
                f,
                "ino={} mode={:o} size={} nlink={}",
                a.ino, a.mode, a.size, a.nlink
            )
        };
        match self.0 {
            Err(Fail::Errno(e)) => write!(f, "{}", errno_name(*e)),
            Err(Fail::Panic(m)) => write!(f, "PANIC {m}"),
            Ok(Reply::Unit) => write!(f, "ok"),
            Ok(Reply::Entry(n, a)) => {
                write!(f, "node={n:#x} ")?;
                attr(f, a)
            }
            Ok(Reply::Attr(a)) => attr(f, a),
            Ok(Reply::Created(n, a, h)) => {
                write!(f, "node={n:#x} fh={h:?} ")?;
                attr(f, a)
            }
            Ok(Reply::Opened(h)) => write!(f, "fh={h:?}"),
            Ok(Reply::Data(d)) => write!(f, "{} bytes{}", d.len(), Digest(d)),
            Ok(Reply::Written(n)) => write!(f, "wrote {n}"),
            Ok(Reply::Dir(list)) => {
                write!(f, "[")?;
                for (i, (n, _)) in list.iter().enumerate() {
                    if i > 0 {
                        write!(f, " ")?;
                    }
                    write!(f, "{}", Name(n))?;
                }
                write!(f, "]")
            }
            Ok(Reply::Value(v)) => write!(f, "value of {} bytes", v.len()),
            Ok(Reply::Size(n)) => write!(f, "size {n}"),
            Ok(Reply::Names(v)) => write!(f, "names {}", Name(v)),
            Ok(Reply::Offset(o)) => write!(f, "offset {o}"),
            Ok(Reply::Link(t)) => write!(f, "-> {}", Name(t)),
        }
    }
}

/// A short fingerprint of some bytes: the first few, and where they are all zero.
pub struct Digest<'a>(pub &'a [u8]);

impl fmt::Display for Digest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return Ok(());
        }
        if self.0.iter().all(|&b| b == 0) {
            return write!(f, " (zeros)");
        }
        write!(f, " (")?;
        for b in self.0.iter().take(6) {
            write!(f, "{b:02x}")?;
        }
        write!(f, "...)")
    }
}
