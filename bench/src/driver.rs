//! A simulated virtio-fs driver: FUSE requests written into real guest memory, made
//! available on a real split virtqueue (virtio 1.2 §2.7) and served by the device's own
//! queue loop, `devices::virtio::fs::handler::process_queue`, over a `FuseSession`.
//!
//! It lays requests out the way Linux's virtiofs driver does: the FUSE header and the
//! opcode's struct in one readable descriptor, WRITE payload in the next readable one, and
//! for READ the reply header and the data in separate writable descriptors. Requests go one
//! at a time (queue depth 1), so every figure is the latency of the device's request path.

use std::sync::atomic::Ordering;

use devices::virtio::fs::handler::{process_queue, FuseSession};
use fuse_backend_rs::abi::fuse_abi::{
    CreateIn, EntryOut, GetattrIn, InHeader, InitIn, Opcode, OpenIn, OpenOut, OutHeader, ReadIn,
    ReleaseIn, WriteIn, WriteOut,
};
use fuse_backend_rs::api::filesystem::FileSystem;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use crate::{BenchError, Result};

/// The root inode of every FUSE file system.
pub const ROOT: u64 = 1;
/// Largest payload of one READ or WRITE (the server's 1 MiB buffer limit).
pub const MAX_IO: usize = 1 << 20;

const QUEUE_SIZE: u16 = 16;
const DESC_TABLE: u64 = 0x0;
const AVAIL_RING: u64 = 0x1000;
const USED_RING: u64 = 0x2000;
const REQUEST: u64 = 0x1_0000;
const REPLY: u64 = 0x2_0000;
const REPLY_CAP: u32 = 0x1_0000;
const DATA: u64 = 0x10_0000;
const MEM_SIZE: usize = DATA as usize + MAX_IO;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const OUT_HEADER: usize = std::mem::size_of::<OutHeader>();

/// One descriptor: guest address, length, flags.
type Desc = (u64, u32, u16);

/// A driver and its device on one request queue.
pub struct Driver<F: FileSystem + Sync> {
    mem: GuestMemoryMmap<()>,
    queue: Queue,
    session: FuseSession<F>,
    unique: u64,
    used_idx: u16,
}

fn mem_err(e: impl std::fmt::Display) -> BenchError {
    BenchError::Driver(format!("guest memory access failed: {e}"))
}

fn read_body<T: ByteValued + Default>(bytes: &[u8], start: usize) -> Result<T> {
    let end = start + std::mem::size_of::<T>();
    let src = bytes
        .get(start..end)
        .ok_or_else(|| BenchError::Driver(format!("reply of {} bytes is short", bytes.len())))?;
    let mut value = T::default();
    value.as_mut_slice().copy_from_slice(src);
    Ok(value)
}

impl<F: FileSystem + Sync> Driver<F> {
    /// Sets up guest memory and the queue, and sends FUSE INIT to a session over `fs`.
    pub fn new(fs: F) -> Result<Self> {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).map_err(mem_err)?;
        let mut queue = Queue::new(QUEUE_SIZE).map_err(mem_err)?;
        queue.set_size(QUEUE_SIZE);
        queue.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
        queue.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
        queue.set_used_ring_address(Some(USED_RING as u32), Some(0));
        queue.set_ready(true);
        if !queue.is_valid(&mem) {
            return Err(BenchError::Driver("the queue layout is invalid".into()));
        }
        let mut driver = Driver {
            mem,
            queue,
            session: FuseSession::new(fs),
            unique: 0,
            used_idx: 0,
        };
        let init = InitIn {
            major: 7,
            minor: 31,
            max_readahead: 0x2_0000,
            flags: 0,
        };
        driver.call(Opcode::Init, 0, init.as_slice())?;
        Ok(driver)
    }

    /// Writes the FUSE header and `body` at the request address; returns the request length.
    fn put_request(&mut self, op: Opcode, nodeid: u64, body: &[u8], extra: usize) -> Result<u32> {
        self.unique += 1;
        let len = std::mem::size_of::<InHeader>() + body.len();
        let header = InHeader {
            len: (len + extra) as u32,
            opcode: op as u32,
            unique: self.unique,
            nodeid,
            ..Default::default()
        };
        self.mem
            .write_obj(header, GuestAddress(REQUEST))
            .map_err(mem_err)?;
        let body_at = REQUEST + std::mem::size_of::<InHeader>() as u64;
        self.mem
            .write_slice(body, GuestAddress(body_at))
            .map_err(mem_err)?;
        Ok(len as u32)
    }

    /// Makes `descs` available as one chain from slot 0, runs the device's queue loop, and
    /// returns the length the device wrote back.
    fn submit(&mut self, descs: &[Desc]) -> Result<u32> {
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let last = i + 1 == descs.len();
            let base = DESC_TABLE + 16 * i as u64;
            let flags = if last { flags } else { flags | NEXT };
            let next = if last { 0 } else { i as u16 + 1 };
            // virtio 1.2 §2.7.5: le64 addr, le32 len, le16 flags, le16 next.
            let mut desc = [0u8; 16];
            desc[..8].copy_from_slice(&addr.to_le_bytes());
            desc[8..12].copy_from_slice(&len.to_le_bytes());
            desc[12..14].copy_from_slice(&flags.to_le_bytes());
            desc[14..].copy_from_slice(&next.to_le_bytes());
            self.mem
                .write_slice(&desc, GuestAddress(base))
                .map_err(mem_err)?;
        }
        let avail = self
            .queue
            .avail_idx(&self.mem, Ordering::Acquire)
            .map_err(mem_err)?
            .0;
        let entry = AVAIL_RING + 4 + 2 * u64::from(avail % QUEUE_SIZE);
        self.mem
            .write_obj(0u16, GuestAddress(entry))
            .map_err(mem_err)?;
        self.mem
            .write_obj(avail.wrapping_add(1), GuestAddress(AVAIL_RING + 2))
            .map_err(mem_err)?;
        process_queue(&self.session, &self.mem, &mut self.queue)
            .map_err(|e| BenchError::Driver(e.to_string()))?;
        let used: u16 = self
            .mem
            .read_obj(GuestAddress(USED_RING + 2))
            .map_err(mem_err)?;
        if used != self.used_idx.wrapping_add(1) {
            return Err(BenchError::Driver(format!(
                "the device used {} chains for one request",
                used.wrapping_sub(self.used_idx)
            )));
        }
        let elem = USED_RING + 4 + 8 * u64::from(self.used_idx % QUEUE_SIZE);
        self.used_idx = used;
        self.mem.read_obj(GuestAddress(elem + 4)).map_err(mem_err)
    }

    /// Reads `len` reply bytes and fails with the request's errno if it has one.
    fn reply(&self, op: Opcode, at: u64, len: u32) -> Result<Vec<u8>> {
        let mut bytes = vec![0u8; len as usize];
        self.mem
            .read_slice(&mut bytes, GuestAddress(at))
            .map_err(mem_err)?;
        let header: OutHeader = read_body(&bytes, 0)?;
        if header.error != 0 {
            return Err(BenchError::Fuse {
                op: format!("{op:?}"),
                errno: -header.error,
            });
        }
        Ok(bytes)
    }

    /// Sends one request with a small reply; returns the reply, header included.
    pub fn call(&mut self, op: Opcode, nodeid: u64, body: &[u8]) -> Result<Vec<u8>> {
        let len = self.put_request(op, nodeid, body, 0)?;
        let written = self.submit(&[(REQUEST, len, 0), (REPLY, REPLY_CAP, WRITE)])?;
        self.reply(op, REPLY, written)
    }

    /// Sends a request that has no reply (FORGET).
    pub fn send_no_reply(&mut self, op: Opcode, nodeid: u64, body: &[u8]) -> Result<()> {
        let len = self.put_request(op, nodeid, body, 0)?;
        self.submit(&[(REQUEST, len, 0), (REPLY, REPLY_CAP, WRITE)])?;
        Ok(())
    }

    /// CREATE `name` in `parent`, opened read-write: (node id, handle).
    pub fn create(&mut self, parent: u64, name: &str) -> Result<(u64, u64)> {
        let create = CreateIn {
            flags: libc::O_RDWR as u32,
            mode: libc::S_IFREG | 0o644,
            ..Default::default()
        };
        let body = with_name(create.as_slice(), name);
        let reply = self.call(Opcode::Create, parent, &body)?;
        let entry: EntryOut = read_body(&reply, OUT_HEADER)?;
        let open: OpenOut = read_body(&reply, OUT_HEADER + std::mem::size_of::<EntryOut>())?;
        Ok((entry.nodeid, open.fh))
    }

    /// LOOKUP `name` in `parent`: its node id.
    pub fn lookup(&mut self, parent: u64, name: &str) -> Result<u64> {
        let reply = self.call(Opcode::Lookup, parent, &with_name(&[], name))?;
        Ok(read_body::<EntryOut>(&reply, OUT_HEADER)?.nodeid)
    }

    /// GETATTR of `nodeid`.
    pub fn getattr(&mut self, nodeid: u64) -> Result<()> {
        self.call(Opcode::Getattr, nodeid, GetattrIn::default().as_slice())?;
        Ok(())
    }

    /// UNLINK `name` from `parent`.
    pub fn unlink(&mut self, parent: u64, name: &str) -> Result<()> {
        self.call(Opcode::Unlink, parent, &with_name(&[], name))?;
        Ok(())
    }

    /// OPEN `nodeid` with `flags`: the handle.
    pub fn open(&mut self, nodeid: u64, flags: i32) -> Result<u64> {
        let open = OpenIn {
            flags: flags as u32,
            fuse_flags: 0,
        };
        let reply = self.call(Opcode::Open, nodeid, open.as_slice())?;
        Ok(read_body::<OpenOut>(&reply, OUT_HEADER)?.fh)
    }

    /// RELEASE (or RELEASEDIR with `dir`) handle `fh` of `nodeid`.
    pub fn release(&mut self, nodeid: u64, fh: u64, dir: bool) -> Result<()> {
        let release = ReleaseIn {
            fh,
            ..Default::default()
        };
        let op = if dir {
            Opcode::Releasedir
        } else {
            Opcode::Release
        };
        self.call(op, nodeid, release.as_slice())?;
        Ok(())
    }

    /// Drops `count` lookups of `nodeid`.
    pub fn forget(&mut self, nodeid: u64, count: u64) -> Result<()> {
        let forget = fuse_backend_rs::abi::fuse_abi::ForgetIn { nlookup: count };
        self.send_no_reply(Opcode::Forget, nodeid, forget.as_slice())
    }

    /// Fills the data area (the driver's page) with `byte`, as the payload of later writes.
    pub fn fill_data(&mut self, byte: u8) -> Result<()> {
        let data = vec![byte; MAX_IO];
        self.mem
            .write_slice(&data, GuestAddress(DATA))
            .map_err(mem_err)
    }

    /// WRITE `len` bytes of the data area at `offset`; returns the bytes written.
    pub fn write(&mut self, nodeid: u64, fh: u64, offset: u64, len: usize) -> Result<usize> {
        let write = WriteIn {
            fh,
            offset,
            size: len as u32,
            ..Default::default()
        };
        let req = self.put_request(Opcode::Write, nodeid, write.as_slice(), len)?;
        let cap = (OUT_HEADER + std::mem::size_of::<WriteOut>()) as u32;
        let written = self.submit(&[
            (REQUEST, req, 0),
            (DATA, len as u32, 0),
            (REPLY, cap, WRITE),
        ])?;
        let reply = self.reply(Opcode::Write, REPLY, written)?;
        Ok(read_body::<WriteOut>(&reply, OUT_HEADER)?.size as usize)
    }

    /// READ `len` bytes at `offset` into the data area; returns the bytes read.
    pub fn read(&mut self, nodeid: u64, fh: u64, offset: u64, len: usize) -> Result<usize> {
        let read = ReadIn {
            fh,
            offset,
            size: len as u32,
            ..Default::default()
        };
        let req = self.put_request(Opcode::Read, nodeid, read.as_slice(), 0)?;
        let written = self.submit(&[
            (REQUEST, req, 0),
            (REPLY, OUT_HEADER as u32, WRITE),
            (DATA, len as u32, WRITE),
        ])?;
        self.reply(Opcode::Read, REPLY, OUT_HEADER as u32)?;
        Ok((written as usize).saturating_sub(OUT_HEADER))
    }

    /// OPENDIR, READDIR to the end, RELEASEDIR: the number of entries other than `.` and `..`.
    pub fn list_dir(&mut self, nodeid: u64) -> Result<usize> {
        let reply = self.call(Opcode::Opendir, nodeid, OpenIn::default().as_slice())?;
        let fh = read_body::<OpenOut>(&reply, OUT_HEADER)?.fh;
        let mut offset = 0;
        let mut entries = 0;
        loop {
            let read = ReadIn {
                fh,
                offset,
                size: REPLY_CAP - OUT_HEADER as u32,
                ..Default::default()
            };
            let reply = self.call(Opcode::Readdir, nodeid, read.as_slice())?;
            let mut at = OUT_HEADER;
            if at == reply.len() {
                break;
            }
            // struct fuse_dirent: ino, off, namelen, type, then the name padded to 8 bytes.
            while at + 24 <= reply.len() {
                let off: u64 = read_body(&reply, at + 8)?;
                let namelen: u32 = read_body(&reply, at + 16)?;
                let name = reply
                    .get(at + 24..at + 24 + namelen as usize)
                    .unwrap_or(b"");
                if name != b"." && name != b".." {
                    entries += 1;
                }
                offset = off;
                at += (24 + namelen as usize).next_multiple_of(8);
            }
        }
        self.release(nodeid, fh, true)?;
        Ok(entries)
    }
}

fn with_name(body: &[u8], name: &str) -> Vec<u8> {
    let mut bytes = body.to_vec();
    bytes.extend_from_slice(name.as_bytes());
    bytes.push(0);
    bytes
}
