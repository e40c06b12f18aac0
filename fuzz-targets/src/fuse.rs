//! Building well-formed FUSE requests, for the seed inputs.

use fuse_backend_rs::abi::fuse_abi::InHeader;
use vm_memory::ByteValued;

/// FUSE opcodes used by the seeds (Linux `include/uapi/linux/fuse.h`).
#[allow(missing_docs)]
pub mod op {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const DESTROY: u32 = 38;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const RENAME2: u32 = 45;
    pub const LSEEK: u32 = 46;
}

/// The node id of the share's root.
pub const ROOT: u64 = 1;

/// A sequence of requests with increasing `unique` ids.
#[derive(Debug, Default)]
pub struct Session {
    unique: u64,
    /// The requests built so far, each a complete message.
    pub requests: Vec<Vec<u8>>,
}

impl Session {
    /// A session that starts with INIT (protocol 7.31, big writes).
    pub fn init() -> Self {
        let mut s = Self::default();
        let init = fuse_backend_rs::abi::fuse_abi::InitIn {
            major: 7,
            minor: 31,
            max_readahead: 0x2_0000,
            flags: 1 << 5, // FUSE_BIG_WRITES
        };
        s.push(op::INIT, 0, init.as_slice());
        s
    }

    /// Appends a request: header (with the true length) and body.
    pub fn push(&mut self, opcode: u32, nodeid: u64, body: &[u8]) -> &mut Self {
        self.unique += 1;
        let header = InHeader {
            len: (std::mem::size_of::<InHeader>() + body.len()) as u32,
            opcode,
            unique: self.unique,
            nodeid,
            ..Default::default()
        };
        let mut bytes = header.as_slice().to_vec();
        bytes.extend_from_slice(body);
        self.requests.push(bytes);
        self
    }

    /// Appends a request whose body is `value` then the NUL-terminated `names`.
    pub fn push_named<T: ByteValued>(
        &mut self,
        opcode: u32,
        nodeid: u64,
        value: T,
        names: &[&str],
    ) -> &mut Self {
        let mut body = value.as_slice().to_vec();
        body.extend_from_slice(&names_body(names));
        self.push(opcode, nodeid, &body)
    }
}

/// `names`, each followed by a NUL.
pub fn names_body(names: &[&str]) -> Vec<u8> {
    let mut body = Vec::new();
    for name in names {
        body.extend_from_slice(name.as_bytes());
        body.push(0);
    }
    body
}
