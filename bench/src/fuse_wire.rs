//! FUSE messages as a virtio-fs driver writes and reads them, shared by the in-process
//! driver ([`crate::driver`]) and the vhost-user front-end ([`crate::vhost_frontend`]):
//! request bytes (the `fuse_in_header` and the opcode's struct), and checked decoding of
//! replies. Nothing here trusts a reply: a short or failed one is a [`BenchError`].

use fuse_backend_rs::abi::fuse_abi::{
    AttrOut, BmapIn, CreateIn, EntryOut, ForgetIn, FsyncIn, GetattrIn, InHeader, InitIn, Opcode,
    OpenIn, OpenOut, OutHeader, ReadIn, ReleaseIn, WriteIn, WriteOut,
};
use vm_memory::ByteValued;

use crate::{BenchError, Result};

/// The root inode of every FUSE file system.
pub const ROOT: u64 = 1;
/// Size of the reply header (`fuse_out_header`).
pub const OUT_HEADER: usize = std::mem::size_of::<OutHeader>();
/// Size of the request header (`fuse_in_header`).
pub const IN_HEADER: usize = std::mem::size_of::<InHeader>();

/// The protocol version our driver speaks in INIT (7.31, as Linux 5.10's virtiofs).
const MAJOR: u32 = 7;
const MINOR: u32 = 31;

/// The header of request `op` number `unique` on `nodeid`, followed by `after` bytes (the
/// opcode's struct, a name, WRITE payload).
pub fn in_header(op: Opcode, unique: u64, nodeid: u64, after: usize) -> InHeader {
    InHeader {
        len: (IN_HEADER + after) as u32,
        opcode: op as u32,
        unique,
        nodeid,
        ..Default::default()
    }
}

/// One request, encoded: the header and the opcode's struct (and name), ready to be copied
/// into guest memory. `extra` bytes of payload (WRITE data) follow in another buffer.
#[derive(Debug, Clone)]
pub struct Request {
    /// The opcode, for error messages.
    pub op: Opcode,
    /// Header and body.
    pub bytes: Vec<u8>,
}

impl Request {
    /// Encodes `op` on `nodeid` with `body`; `extra` payload bytes follow elsewhere.
    pub fn new(op: Opcode, unique: u64, nodeid: u64, body: &[u8], extra: usize) -> Request {
        let len = IN_HEADER + body.len();
        let header = in_header(op, unique, nodeid, body.len() + extra);
        let mut bytes = Vec::with_capacity(len);
        bytes.extend_from_slice(header.as_slice());
        bytes.extend_from_slice(body);
        Request { op, bytes }
    }

    /// Length of the header and body, as the first descriptor's length.
    pub fn len(&self) -> u32 {
        self.bytes.len() as u32
    }

    /// Never true: a request holds at least its header.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Reads a `T` at `start` of a reply, failing (not panicking) when the reply is short.
pub fn read_body<T: ByteValued + Default>(bytes: &[u8], start: usize) -> Result<T> {
    let end = start + std::mem::size_of::<T>();
    let src = bytes
        .get(start..end)
        .ok_or_else(|| BenchError::Driver(format!("reply of {} bytes is short", bytes.len())))?;
    let mut value = T::default();
    value.as_mut_slice().copy_from_slice(src);
    Ok(value)
}

/// Checks a reply's header: the request's errno as a [`BenchError::Fuse`], a header that
/// names another request as a [`BenchError::Driver`].
pub fn check_reply(op: Opcode, unique: Option<u64>, bytes: &[u8]) -> Result<()> {
    let header: OutHeader = read_body(bytes, 0)?;
    if let Some(unique) = unique.filter(|&u| u != header.unique) {
        return Err(BenchError::Driver(format!(
            "reply to {op:?} #{unique} carries unique {}",
            header.unique
        )));
    }
    if header.error != 0 {
        return Err(BenchError::Fuse {
            op,
            errno: header.error.saturating_neg(),
        });
    }
    Ok(())
}

/// `body` followed by `name` and its terminating NUL.
pub fn with_name(body: &[u8], name: &str) -> Vec<u8> {
    let mut bytes = body.to_vec();
    bytes.extend_from_slice(name.as_bytes());
    bytes.push(0);
    bytes
}

/// The body of INIT.
pub fn init_in() -> Vec<u8> {
    InitIn {
        major: MAJOR,
        minor: MINOR,
        max_readahead: 0x2_0000,
        flags: 0,
    }
    .as_slice()
    .to_vec()
}

/// The body of CREATE of `name`, opened read-write with mode 0644.
pub fn create_in(name: &str) -> Vec<u8> {
    let create = CreateIn {
        flags: libc::O_RDWR as u32,
        mode: libc::S_IFREG | 0o644,
        ..Default::default()
    };
    with_name(create.as_slice(), name)
}

/// The body of LOOKUP or UNLINK of `name`.
pub fn name_in(name: &str) -> Vec<u8> {
    with_name(&[], name)
}

/// The body of BMAP (block 0), a request no share of ours implements.
pub fn bmap_in() -> Vec<u8> {
    BmapIn::default().as_slice().to_vec()
}

/// The body of GETATTR (no handle).
pub fn getattr_in() -> Vec<u8> {
    GetattrIn::default().as_slice().to_vec()
}

/// The body of OPEN or OPENDIR with `flags`.
pub fn open_in(flags: i32) -> Vec<u8> {
    OpenIn {
        flags: flags as u32,
        fuse_flags: 0,
    }
    .as_slice()
    .to_vec()
}

/// The body of RELEASE or RELEASEDIR of handle `fh`.
pub fn release_in(fh: u64) -> Vec<u8> {
    ReleaseIn {
        fh,
        ..Default::default()
    }
    .as_slice()
    .to_vec()
}

/// The body of READ or READDIR of `size` bytes at `offset` through handle `fh`.
pub fn read_in(fh: u64, offset: u64, size: u32) -> Vec<u8> {
    ReadIn {
        fh,
        offset,
        size,
        ..Default::default()
    }
    .as_slice()
    .to_vec()
}

/// The body of WRITE of `size` bytes at `offset` through handle `fh`.
pub fn write_in(fh: u64, offset: u64, size: u32) -> Vec<u8> {
    WriteIn {
        fh,
        offset,
        size,
        ..Default::default()
    }
    .as_slice()
    .to_vec()
}

/// The body of FSYNC (data and metadata) through handle `fh`.
pub fn fsync_in(fh: u64) -> Vec<u8> {
    FsyncIn {
        fh,
        ..Default::default()
    }
    .as_slice()
    .to_vec()
}

/// The body of FORGET of `count` lookups.
pub fn forget_in(count: u64) -> Vec<u8> {
    ForgetIn { nlookup: count }.as_slice().to_vec()
}

/// The entry of a LOOKUP or CREATE reply.
pub fn entry_out(reply: &[u8]) -> Result<EntryOut> {
    read_body(reply, OUT_HEADER)
}

/// The entry and the handle of a CREATE reply.
pub fn create_out(reply: &[u8]) -> Result<(EntryOut, u64)> {
    let entry: EntryOut = read_body(reply, OUT_HEADER)?;
    let open: OpenOut = read_body(reply, OUT_HEADER + std::mem::size_of::<EntryOut>())?;
    Ok((entry, open.fh))
}

/// The bytes a WRITE reply says were written.
pub fn write_out(reply: &[u8]) -> Result<u32> {
    let out: WriteOut = read_body(reply, OUT_HEADER)?;
    Ok(out.size)
}

/// The handle of an OPEN or OPENDIR reply.
pub fn open_out(reply: &[u8]) -> Result<u64> {
    Ok(read_body::<OpenOut>(reply, OUT_HEADER)?.fh)
}

/// The attributes of a GETATTR reply.
pub fn attr_out(reply: &[u8]) -> Result<AttrOut> {
    read_body(reply, OUT_HEADER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_carries_its_total_length_and_the_name() {
        let req = Request::new(Opcode::Lookup, 7, ROOT, &name_in("ab"), 0);

        let header: InHeader = read_body(&req.bytes, 0).unwrap();
        assert_eq!(header.len as usize, IN_HEADER + 3);
        assert_eq!((header.unique, header.nodeid), (7, ROOT));
        assert_eq!(&req.bytes[IN_HEADER..], b"ab\0");
    }

    #[test]
    fn short_and_failed_replies_are_errors_not_panics() {
        let failed = OutHeader {
            len: OUT_HEADER as u32,
            error: -libc::ENOENT,
            unique: 3,
        };

        assert!(matches!(
            check_reply(Opcode::Lookup, Some(3), &[0u8; 4]),
            Err(BenchError::Driver(_))
        ));
        assert!(matches!(
            check_reply(Opcode::Lookup, Some(3), failed.as_slice()),
            Err(BenchError::Fuse { errno, .. }) if errno == libc::ENOENT
        ));
        assert!(matches!(
            check_reply(Opcode::Lookup, Some(4), failed.as_slice()),
            Err(BenchError::Driver(_))
        ));
        assert!(entry_out(failed.as_slice()).is_err());
    }
}
