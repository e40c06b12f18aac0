//! A simulated virtio-fs driver: FUSE requests written into real guest memory, made
//! available on a real split virtqueue (virtio 1.2 §2.7) and served by the device's own
//! queue loop, `devices::virtio::fs::handler::process_queue`, over a `FuseSession`.
//!
//! It lays requests out the way Linux's virtiofs driver does: the FUSE header and the
//! opcode's struct in one readable descriptor, WRITE payload in the next readable one, and
//! for READ the reply header and the data in separate writable descriptors. Requests go one
//! at a time (queue depth 1), so every figure is the latency of the device's request path.

use devices::virtio::fs::handler::{process_queue, FuseSession, DEFAULT_BATCH_POLL};
use fuse_backend_rs::abi::fuse_abi::{Opcode, WriteOut};
use fuse_backend_rs::api::filesystem::FileSystem;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::fuse_wire::{self, read_body, IN_HEADER, OUT_HEADER};
use crate::ring::{guest_slice, mem_err, Desc, DriverRing, RingLayout, WRITE};
use crate::{BenchError, Result};

pub use crate::fuse_wire::ROOT;

/// Largest payload of one READ or WRITE (the server's 1 MiB buffer limit).
pub const MAX_IO: usize = 1 << 20;

const QUEUE_SIZE: u16 = 16;
const LAYOUT: RingLayout = RingLayout {
    desc: 0x0,
    avail: 0x1000,
    used: 0x2000,
    size: QUEUE_SIZE,
};
const REQUEST: u64 = 0x1_0000;
const REPLY: u64 = 0x2_0000;
const REPLY_CAP: u32 = 0x1_0000;
const DATA: u64 = 0x10_0000;
const MEM_SIZE: usize = DATA as usize + MAX_IO;

/// A driver and its device on one request queue.
pub struct Driver<F: FileSystem + Sync> {
    mem: GuestMemoryMmap<()>,
    ring: DriverRing,
    queue: Queue,
    session: FuseSession<F>,
    unique: u64,
    /// The last reply read back, kept so that each request does not allocate its own.
    reply: Vec<u8>,
}

impl<F: FileSystem + Sync> Driver<F> {
    /// Sets up guest memory and the queue, and sends FUSE INIT to a session over `fs`.
    pub fn new(fs: F) -> Result<Self> {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).map_err(mem_err)?;
        let ring = DriverRing::new(&mem, LAYOUT, false)?;
        let mut queue = Queue::new(QUEUE_SIZE).map_err(mem_err)?;
        queue.set_size(QUEUE_SIZE);
        queue.set_desc_table_address(Some(LAYOUT.desc as u32), Some(0));
        queue.set_avail_ring_address(Some(LAYOUT.avail as u32), Some(0));
        queue.set_used_ring_address(Some(LAYOUT.used as u32), Some(0));
        queue.set_ready(true);
        if !queue.is_valid(&mem) {
            return Err(BenchError::Driver("the queue layout is invalid".into()));
        }
        let mut driver = Driver {
            mem,
            ring,
            queue,
            session: FuseSession::new(fs),
            unique: 0,
            reply: Vec::new(),
        };
        driver.call(Opcode::Init, 0, &fuse_wire::init_in())?;
        Ok(driver)
    }

    /// Writes the FUSE header and `body` at the request address, as a guest driver does, in
    /// place; returns their length (`extra` payload bytes follow in another buffer).
    fn put_request(&mut self, op: Opcode, nodeid: u64, body: &[u8], extra: usize) -> Result<u32> {
        self.unique += 1;
        let header = fuse_wire::in_header(op, self.unique, nodeid, body.len() + extra);
        let area = guest_slice(&self.mem, REQUEST, IN_HEADER + body.len())?;
        area.write_obj(header, 0).map_err(mem_err)?;
        area.write_slice(body, IN_HEADER).map_err(mem_err)?;
        Ok((IN_HEADER + body.len()) as u32)
    }

    /// Makes `descs` available as one chain from slot 0, runs the device's queue loop, and
    /// returns the length the device wrote back.
    fn submit(&mut self, descs: &[Desc]) -> Result<u32> {
        self.ring.write_chain(&self.mem, 0, descs)?;
        self.ring.push(&self.mem, 0)?;
        // The device runs right here, so whether it asked for a notification does not matter.
        self.ring.publish(&self.mem)?;
        process_queue(
            &self.session,
            &self.mem,
            &mut self.queue,
            DEFAULT_BATCH_POLL,
            &mut || {},
        )
        .map_err(|e| BenchError::Driver(e.to_string()))?;
        let Some((_, written)) = self.ring.pop_used(&self.mem)? else {
            return Err(BenchError::Driver(
                "the device used no chain for a request".into(),
            ));
        };
        if self.ring.pop_used(&self.mem)?.is_some() {
            return Err(BenchError::Driver(
                "the device used two chains for one request".into(),
            ));
        }
        Ok(written)
    }

    /// Reads `len` reply bytes and fails with the request's errno if it has one.
    fn reply(&mut self, op: Opcode, at: u64, len: u32) -> Result<&[u8]> {
        self.reply.resize(len as usize, 0);
        guest_slice(&self.mem, at, self.reply.len())?.copy_to(&mut self.reply);
        fuse_wire::check_reply(op, Some(self.unique), &self.reply)?;
        Ok(&self.reply)
    }

    /// Sends one request with a small reply; returns the reply, header included.
    pub fn call(&mut self, op: Opcode, nodeid: u64, body: &[u8]) -> Result<&[u8]> {
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
        let reply = self.call(Opcode::Create, parent, &fuse_wire::create_in(name))?;
        let (entry, fh) = fuse_wire::create_out(reply)?;
        Ok((entry.nodeid, fh))
    }

    /// LOOKUP `name` in `parent`: its node id.
    pub fn lookup(&mut self, parent: u64, name: &str) -> Result<u64> {
        let reply = self.call(Opcode::Lookup, parent, &fuse_wire::name_in(name))?;
        Ok(fuse_wire::entry_out(reply)?.nodeid)
    }

    /// BMAP, which the device answers with ENOSYS without a host call: the cost of the
    /// request path alone (queue, decoding, reply).
    pub fn unimplemented(&mut self) -> Result<()> {
        match self.call(Opcode::Bmap, 1, &fuse_wire::bmap_in()) {
            Err(BenchError::Fuse { errno, .. }) if errno == libc::ENOSYS => Ok(()),
            Err(e) => Err(e),
            Ok(_) => Err(BenchError::Driver(
                "BMAP succeeded: it no longer measures the request path alone".into(),
            )),
        }
    }

    /// GETATTR of `nodeid`.
    pub fn getattr(&mut self, nodeid: u64) -> Result<()> {
        self.call(Opcode::Getattr, nodeid, &fuse_wire::getattr_in())?;
        Ok(())
    }

    /// UNLINK `name` from `parent`.
    pub fn unlink(&mut self, parent: u64, name: &str) -> Result<()> {
        self.call(Opcode::Unlink, parent, &fuse_wire::name_in(name))?;
        Ok(())
    }

    /// OPEN `nodeid` with `flags`: the handle.
    pub fn open(&mut self, nodeid: u64, flags: i32) -> Result<u64> {
        let reply = self.call(Opcode::Open, nodeid, &fuse_wire::open_in(flags))?;
        fuse_wire::open_out(reply)
    }

    /// RELEASE (or RELEASEDIR with `dir`) handle `fh` of `nodeid`.
    pub fn release(&mut self, nodeid: u64, fh: u64, dir: bool) -> Result<()> {
        let op = if dir {
            Opcode::Releasedir
        } else {
            Opcode::Release
        };
        self.call(op, nodeid, &fuse_wire::release_in(fh))?;
        Ok(())
    }

    /// Drops `count` lookups of `nodeid`.
    pub fn forget(&mut self, nodeid: u64, count: u64) -> Result<()> {
        self.send_no_reply(Opcode::Forget, nodeid, &fuse_wire::forget_in(count))
    }

    /// Fills the data area (the driver's page) with `byte`, as the payload of later writes.
    pub fn fill_data(&mut self, byte: u8) -> Result<()> {
        let data = vec![byte; MAX_IO];
        self.mem
            .write_slice(&data, GuestAddress(DATA))
            .map_err(mem_err)
    }

    /// Puts `bytes` (at most [`MAX_IO`]) at the start of the data area.
    pub fn fill_data_with(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.len() > MAX_IO {
            return Err(BenchError::Driver(format!(
                "{} bytes do not fit the data area",
                bytes.len()
            )));
        }
        self.mem
            .write_slice(bytes, GuestAddress(DATA))
            .map_err(mem_err)
    }

    /// WRITE `len` bytes of the data area at `offset`; returns the bytes written.
    pub fn write(&mut self, nodeid: u64, fh: u64, offset: u64, len: usize) -> Result<usize> {
        let body = fuse_wire::write_in(fh, offset, len as u32);
        let req_len = self.put_request(Opcode::Write, nodeid, &body, len)?;
        let cap = (OUT_HEADER + std::mem::size_of::<WriteOut>()) as u32;
        let written = self.submit(&[
            (REQUEST, req_len, 0),
            (DATA, len as u32, 0),
            (REPLY, cap, WRITE),
        ])?;
        let reply = self.reply(Opcode::Write, REPLY, written)?;
        Ok(read_body::<WriteOut>(reply, OUT_HEADER)?.size as usize)
    }

    /// READ `len` bytes at `offset` into the data area; returns the bytes read.
    pub fn read(&mut self, nodeid: u64, fh: u64, offset: u64, len: usize) -> Result<usize> {
        let body = fuse_wire::read_in(fh, offset, len as u32);
        let req_len = self.put_request(Opcode::Read, nodeid, &body, 0)?;
        let written = self.submit(&[
            (REQUEST, req_len, 0),
            (REPLY, OUT_HEADER as u32, WRITE),
            (DATA, len as u32, WRITE),
        ])?;
        self.reply(Opcode::Read, REPLY, OUT_HEADER as u32)?;
        Ok((written as usize).saturating_sub(OUT_HEADER))
    }

    /// OPENDIR, READDIR to the end, RELEASEDIR: the number of entries other than `.` and `..`.
    pub fn list_dir(&mut self, nodeid: u64) -> Result<usize> {
        let reply = self.call(Opcode::Opendir, nodeid, &fuse_wire::open_in(0))?;
        let fh = fuse_wire::open_out(reply)?;
        let mut offset = 0;
        let mut entries = 0;
        loop {
            let body = fuse_wire::read_in(fh, offset, REPLY_CAP - OUT_HEADER as u32);
            let reply = self.call(Opcode::Readdir, nodeid, &body)?;
            let mut at = OUT_HEADER;
            if at == reply.len() {
                break;
            }
            // struct fuse_dirent: ino, off, namelen, type, then the name padded to 8 bytes.
            while at + 24 <= reply.len() {
                let off: u64 = read_body(reply, at + 8)?;
                let namelen: u32 = read_body(reply, at + 16)?;
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
