//! The virtio-fs request path driven like a guest driver would: FUSE
//! requests in real guest memory, on a real split virtqueue whose rings the
//! test writes as a driver does (virtio 1.2 §2.7), through `handler::process_queue` and
//! fuse-backend-rs's server, over a passthrough of a temporary directory.
//! Then the same path fed hostile descriptors and malformed FUSE messages.

use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{
    CreateIn, EntryOut, ForgetIn, InHeader, InitIn, OpenIn, OpenOut, OutHeader, ReadIn, WriteIn,
    WriteOut,
};
use fuse_backend_rs::passthrough::{Config, PassthroughFs};
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use super::handler::{process_queue, FuseSession, QueueError};

const MEM_SIZE: usize = 4 << 20;
const QUEUE_SIZE: u16 = 16;
const BUFFERS_START: u64 = 0x10_0000;
const DESC_TABLE: u64 = 0x0;
const AVAIL_RING: u64 = 0x1000;
const USED_RING: u64 = 0x2000;
const FUSE_ROOT_ID: u64 = 1;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

const OP_LOOKUP: u32 = 1;
const OP_FORGET: u32 = 2;
const OP_GETATTR: u32 = 3;
const OP_READ: u32 = 15;
const OP_WRITE: u32 = 16;
const OP_INIT: u32 = 26;
const OP_OPENDIR: u32 = 27;
const OP_READDIR: u32 = 28;
const OP_CREATE: u32 = 35;

type Fs = PassthroughFs<()>;

/// A guest-side driver for one queue, plus the device-side server.
struct Driver {
    mem: &'static GuestMemoryMmap<()>,
    queue: Queue,
    server: FuseSession<Arc<Fs>>,
    next_desc: u16,
    next_buf: u64,
    unique: u64,
    _dir: tempfile::TempDir,
}

/// A reply as the driver sees it in the used ring.
#[derive(Debug)]
struct Reply {
    used_len: u32,
    bytes: Vec<u8>,
}

impl Reply {
    fn header(&self) -> OutHeader {
        let mut header = OutHeader::default();
        header
            .as_mut_slice()
            .copy_from_slice(&self.bytes[..std::mem::size_of::<OutHeader>()]);
        header
    }

    fn errno(&self) -> i32 {
        -self.header().error
    }

    fn body<T: ByteValued + Default>(&self) -> T {
        let start = std::mem::size_of::<OutHeader>();
        let mut value = T::default();
        value
            .as_mut_slice()
            .copy_from_slice(&self.bytes[start..start + std::mem::size_of::<T>()]);
        value
    }
}

fn message(opcode: u32, nodeid: u64, unique: u64, body: &[u8]) -> Vec<u8> {
    let header = InHeader {
        len: (std::mem::size_of::<InHeader>() + body.len()) as u32,
        opcode,
        unique,
        nodeid,
        ..Default::default()
    };
    let mut bytes = header.as_slice().to_vec();
    bytes.extend_from_slice(body);
    bytes
}

fn with_name<T: ByteValued>(value: T, name: &str) -> Vec<u8> {
    let mut bytes = value.as_slice().to_vec();
    bytes.extend_from_slice(name.as_bytes());
    bytes.push(0);
    bytes
}

impl Driver {
    fn new() -> Self {
        let mem: &'static GuestMemoryMmap<()> = Box::leak(Box::new(
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap(),
        ));
        let mut queue = Queue::new(QUEUE_SIZE).unwrap();
        queue.set_size(QUEUE_SIZE);
        queue.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
        queue.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
        queue.set_used_ring_address(Some(USED_RING as u32), Some(0));
        queue.set_ready(true);
        assert!(queue.is_valid(mem));
        let dir = tempfile::tempdir().unwrap();
        let fs = Fs::new(Config {
            root_dir: dir.path().to_str().unwrap().to_owned(),
            do_import: true,
            ..Default::default()
        })
        .unwrap();
        fs.import().unwrap();
        Self {
            mem,
            queue,
            server: FuseSession::new(Arc::new(fs)),
            next_desc: 0,
            next_buf: BUFFERS_START,
            unique: 0,
            _dir: dir,
        }
    }

    fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    fn alloc(&mut self, len: usize) -> u64 {
        let addr = self.next_buf;
        self.next_buf += (len as u64).next_multiple_of(64).max(64);
        assert!(
            self.next_buf < MEM_SIZE as u64,
            "test buffer space exhausted"
        );
        addr
    }

    /// Writes one descriptor-table entry (virtio 1.2 §2.7.5 layout).
    fn write_desc(&self, slot: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let base = DESC_TABLE + 16 * u64::from(slot);
        self.mem.write_obj(addr, GuestAddress(base)).unwrap();
        self.mem.write_obj(len, GuestAddress(base + 8)).unwrap();
        self.mem.write_obj(flags, GuestAddress(base + 12)).unwrap();
        self.mem.write_obj(next, GuestAddress(base + 14)).unwrap();
    }

    fn avail_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(AVAIL_RING + 2)).unwrap()
    }

    fn set_avail_idx(&self, idx: u16) {
        self.mem
            .write_obj(idx, GuestAddress(AVAIL_RING + 2))
            .unwrap();
    }

    /// Writes raw descriptors into the table, starting at the next free
    /// slot, and makes the first one available. `next` fields are given
    /// relative to the first slot.
    fn push_raw(&mut self, descs: &[(u64, u32, u16, u16)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
            let slot = (head + i as u16) % QUEUE_SIZE;
            self.write_desc(slot, addr, len, flags, (head + next) % QUEUE_SIZE);
        }
        self.next_desc = (head + descs.len() as u16) % QUEUE_SIZE;
        let idx = self.avail_idx();
        let entry = AVAIL_RING + 4 + 2 * u64::from(idx % QUEUE_SIZE);
        self.mem.write_obj(head, GuestAddress(entry)).unwrap();
        self.set_avail_idx(idx.wrapping_add(1));
        head
    }

    /// Places a request buffer and a reply buffer and makes them available
    /// as one chain.
    fn push_request(&mut self, request: &[u8], reply_cap: u32) -> u64 {
        let req = self.alloc(request.len());
        self.mem.write_slice(request, GuestAddress(req)).unwrap();
        let reply = self.alloc(reply_cap as usize);
        self.push_raw(&[
            (req, request.len() as u32, NEXT, 1),
            (reply, reply_cap, WRITE, 0),
        ]);
        reply
    }

    /// Runs the device over the queue; returns the used elements added.
    fn run_device(&mut self) -> Result<Vec<(u32, u32)>, QueueError> {
        let used_idx = |mem: &GuestMemoryMmap<()>| -> u16 {
            mem.read_obj(GuestAddress(USED_RING + 2)).unwrap()
        };
        let before = used_idx(self.mem);
        self.serve_queue(&mut || {})?;
        let after = used_idx(self.mem);
        Ok((before..after)
            .map(|i| {
                let elem = USED_RING + 4 + 8 * u64::from(i % QUEUE_SIZE);
                let id: u32 = self.mem.read_obj(GuestAddress(elem)).unwrap();
                let len: u32 = self.mem.read_obj(GuestAddress(elem + 4)).unwrap();
                (id, len)
            })
            .collect())
    }

    /// Runs the device's queue loop once, without polling after batches.
    fn serve_queue(&mut self, interrupt: &mut dyn FnMut()) -> Result<(), QueueError> {
        process_queue(
            &self.server,
            self.mem,
            &mut self.queue,
            Duration::ZERO,
            interrupt,
        )
    }

    /// Sends one FUSE request and returns the reply.
    fn call(&mut self, opcode: u32, nodeid: u64, body: &[u8]) -> Reply {
        self.unique += 1;
        let request = message(opcode, nodeid, self.unique, body);
        self.send_raw(&request, 8192)
    }

    fn send_raw(&mut self, request: &[u8], reply_cap: u32) -> Reply {
        let reply_addr = self.push_request(request, reply_cap);
        let used = self.run_device().unwrap();
        assert_eq!(used.len(), 1, "exactly one chain is used");
        let used_len = used[0].1;
        let mut bytes = vec![0u8; used_len as usize];
        self.mem
            .read_slice(&mut bytes, GuestAddress(reply_addr))
            .unwrap();
        Reply { used_len, bytes }
    }

    fn init(&mut self) {
        let init = InitIn {
            major: 7,
            minor: 31,
            max_readahead: 0x20000,
            flags: 0,
        };
        let reply = self.call(OP_INIT, 0, init.as_slice());
        assert_eq!(reply.errno(), 0, "INIT succeeds");
    }
}

#[test]
fn init_lookup_create_write_read_readdir_round_trip() {
    let mut driver = Driver::new();
    driver.init();

    // CREATE hello.txt in the root.
    let create = CreateIn {
        flags: libc::O_RDWR as u32,
        mode: libc::S_IFREG | 0o644,
        ..Default::default()
    };
    let reply = driver.call(OP_CREATE, FUSE_ROOT_ID, &with_name(create, "hello.txt"));
    assert_eq!(reply.errno(), 0);
    let entry: EntryOut = reply.body();
    let open: OpenOut = {
        let start = std::mem::size_of::<OutHeader>() + std::mem::size_of::<EntryOut>();
        let mut out = OpenOut::default();
        out.as_mut_slice()
            .copy_from_slice(&reply.bytes[start..start + std::mem::size_of::<OpenOut>()]);
        out
    };

    // WRITE 11 bytes.
    let data = b"hello world";
    let write = WriteIn {
        fh: open.fh,
        size: data.len() as u32,
        ..Default::default()
    };
    let mut body = write.as_slice().to_vec();
    body.extend_from_slice(data);
    let reply = driver.call(OP_WRITE, entry.nodeid, &body);
    assert_eq!(reply.errno(), 0);
    assert_eq!(reply.body::<WriteOut>().size, 11);

    // READ them back.
    let read = ReadIn {
        fh: open.fh,
        size: 4096,
        ..Default::default()
    };
    let reply = driver.call(OP_READ, entry.nodeid, read.as_slice());
    assert_eq!(reply.errno(), 0);
    assert_eq!(&reply.bytes[std::mem::size_of::<OutHeader>()..], data);

    // LOOKUP finds the same inode.
    let reply = driver.call(OP_LOOKUP, FUSE_ROOT_ID, b"hello.txt\0");
    assert_eq!(reply.errno(), 0);
    assert_eq!(reply.body::<EntryOut>().nodeid, entry.nodeid);
    assert_eq!(reply.body::<EntryOut>().attr.size, 11);

    // READDIR lists it.
    let reply = driver.call(OP_OPENDIR, FUSE_ROOT_ID, OpenIn::default().as_slice());
    assert_eq!(reply.errno(), 0);
    let dir: OpenOut = reply.body();
    let readdir = ReadIn {
        fh: dir.fh,
        size: 4096,
        ..Default::default()
    };
    let reply = driver.call(OP_READDIR, FUSE_ROOT_ID, readdir.as_slice());
    assert_eq!(reply.errno(), 0);
    let listing = String::from_utf8_lossy(&reply.bytes);
    assert!(listing.contains("hello.txt"), "readdir lists the file");

    // And the bytes are on the host.
    assert_eq!(std::fs::read(driver.dir().join("hello.txt")).unwrap(), data);
}

#[test]
fn reply_length_is_the_used_length() {
    let mut driver = Driver::new();
    driver.init();

    let reply = driver.call(OP_GETATTR, FUSE_ROOT_ID, &[0u8; 16]);

    assert_eq!(reply.header().len, reply.used_len);
}

// ---- hostile descriptors -------------------------------------------------

/// After a hostile chain the device must still serve a good request.
fn assert_still_serves(driver: &mut Driver) {
    let reply = driver.call(OP_GETATTR, FUSE_ROOT_ID, &[0u8; 16]);
    assert_eq!(reply.errno(), 0, "device still answers after hostile input");
}

#[test]
fn descriptor_outside_guest_memory_is_dropped() {
    let mut driver = Driver::new();
    driver.init();
    let reply = driver.alloc(4096);

    driver.push_raw(&[
        (MEM_SIZE as u64 + 0x1000, 64, NEXT, 1),
        (reply, 4096, WRITE, 0),
    ]);
    let used = driver.run_device().unwrap();

    assert_eq!(used.len(), 1);
    assert_eq!(used[0].1, 0, "nothing written back");
    assert_still_serves(&mut driver);
}

#[test]
fn descriptor_address_plus_length_overflow_is_dropped() {
    let mut driver = Driver::new();
    driver.init();
    let reply = driver.alloc(4096);

    driver.push_raw(&[(u64::MAX - 8, 64, NEXT, 1), (reply, 4096, WRITE, 0)]);
    let used = driver.run_device().unwrap();

    assert!(used.iter().all(|&(_, len)| len == 0));
    assert_still_serves(&mut driver);
}

#[test]
fn descriptor_loop_does_not_hang() {
    let mut driver = Driver::new();
    driver.init();
    let req = driver.alloc(64);

    // Both descriptors point at each other forever.
    driver.push_raw(&[(req, 64, NEXT, 1), (req, 64, NEXT, 0)]);
    let used = driver.run_device().unwrap();

    assert!(used.iter().all(|&(_, len)| len == 0));
    assert_still_serves(&mut driver);
}

#[test]
fn next_index_out_of_range_is_dropped() {
    let mut driver = Driver::new();
    driver.init();
    let req = driver.alloc(64);
    let head = driver.next_desc;

    driver.push_raw(&[(req, 64, NEXT, 0)]);
    // Point `next` past the end of the table.
    driver.write_desc(head, req, 64, NEXT, QUEUE_SIZE + 5);
    let used = driver.run_device().unwrap();

    assert!(used.iter().all(|&(_, len)| len == 0));
    assert_still_serves(&mut driver);
}

#[test]
fn indirect_table_outside_memory_or_misaligned_is_dropped() {
    let mut driver = Driver::new();
    driver.init();

    driver.push_raw(&[(MEM_SIZE as u64 - 16, 64, INDIRECT, 0)]);
    driver.push_raw(&[(BUFFERS_START, 17, INDIRECT, 0)]);
    let used = driver.run_device().unwrap();

    assert!(used.iter().all(|&(_, len)| len == 0));
    assert_still_serves(&mut driver);
}

#[test]
fn chain_without_writable_part_gets_no_reply() {
    let mut driver = Driver::new();
    driver.init();
    let request = message(OP_GETATTR, FUSE_ROOT_ID, 99, &[0u8; 16]);
    let req = driver.alloc(request.len());
    driver.mem.write_slice(&request, GuestAddress(req)).unwrap();

    driver.push_raw(&[(req, request.len() as u32, 0, 0)]);
    let used = driver.run_device().unwrap();

    assert_eq!(used, vec![(used[0].0, 0)]);
    assert_still_serves(&mut driver);
}

#[test]
fn reply_buffer_too_small_is_not_overrun() {
    let mut driver = Driver::new();
    driver.init();
    let request = message(OP_GETATTR, FUSE_ROOT_ID, 7, &[0u8; 16]);
    let guard_addr = driver.push_request(&request, 8) + 8;
    driver
        .mem
        .write_obj(0xdead_beef_u32, GuestAddress(guard_addr))
        .unwrap();

    let used = driver.run_device().unwrap();

    assert!(used[0].1 <= 8);
    let guard: u32 = driver.mem.read_obj(GuestAddress(guard_addr)).unwrap();
    assert_eq!(guard, 0xdead_beef, "nothing written past the buffer");
    assert_still_serves(&mut driver);
}

#[test]
fn avail_index_running_ahead_of_the_queue_is_reported() {
    let mut driver = Driver::new();
    driver.init();

    let ahead = driver.avail_idx().wrapping_add(QUEUE_SIZE + 1);
    driver.set_avail_idx(ahead);
    let result = driver.run_device();

    assert!(
        matches!(
            result,
            Err(QueueError::AvailIndexAhead { avail, pending, size })
                if avail == ahead && pending == QUEUE_SIZE + 1 && size == QUEUE_SIZE
        ),
        "{result:?}"
    );
}

// ---- malformed FUSE messages ---------------------------------------------

#[test]
fn header_shorter_than_declared_is_dropped() {
    let mut driver = Driver::new();
    driver.init();

    // Only 8 bytes of a 40-byte header.
    let reply = driver.send_raw(&message(OP_GETATTR, FUSE_ROOT_ID, 5, &[])[..8], 4096);

    assert_eq!(reply.used_len, 0);
    assert_still_serves(&mut driver);
}

/// Sends `request` with its first `at` bytes in one descriptor and the rest in another.
fn send_split(driver: &mut Driver, request: &[u8], at: usize) -> Reply {
    let (head, tail) = request.split_at(at);
    let first = driver.alloc(head.len());
    let second = driver.alloc(tail.len());
    let reply = driver.alloc(4096);
    driver.mem.write_slice(head, GuestAddress(first)).unwrap();
    driver.mem.write_slice(tail, GuestAddress(second)).unwrap();
    driver.push_raw(&[
        (first, head.len() as u32, NEXT, 1),
        (second, tail.len() as u32, NEXT, 2),
        (reply, 4096, WRITE, 0),
    ]);
    let used = driver.run_device().unwrap();
    assert_eq!(used.len(), 1, "exactly one chain is used");
    let mut bytes = vec![0u8; used[0].1 as usize];
    driver
        .mem
        .read_slice(&mut bytes, GuestAddress(reply))
        .unwrap();
    Reply {
        used_len: used[0].1,
        bytes,
    }
}

#[test]
fn a_header_split_across_descriptors_is_read_whole() {
    // The session reads the opcode from the first descriptor when it holds the whole
    // header, and from the chain otherwise: an INIT split after 12 bytes must still open
    // the session, and a GETATTR split inside its opcode must still be answered.
    let mut driver = Driver::new();
    let init = InitIn {
        major: 7,
        minor: 31,
        max_readahead: 0x20000,
        flags: 0,
    };
    let reply = send_split(&mut driver, &message(OP_INIT, 0, 1, init.as_slice()), 12);
    assert_eq!(reply.errno(), 0, "a split INIT opens the session");

    let reply = send_split(
        &mut driver,
        &message(OP_GETATTR, FUSE_ROOT_ID, 2, &[0u8; 16]),
        5,
    );
    assert_eq!(reply.errno(), 0);
    assert_eq!(reply.header().unique, 2);
    assert_eq!(reply.used_len as usize, reply.header().len as usize);
}

#[test]
fn declared_length_larger_than_the_chain_gets_an_error_or_is_dropped() {
    let mut driver = Driver::new();
    driver.init();
    let mut request = message(OP_LOOKUP, FUSE_ROOT_ID, 5, b"x\0");
    request[0..4].copy_from_slice(&(1u32 << 30).to_le_bytes());

    let reply = driver.send_raw(&request, 4096);

    assert!(reply.used_len == 0 || reply.errno() != 0, "{reply:?}");
    assert_still_serves(&mut driver);
}

#[test]
fn payload_shorter_than_the_opcode_struct_is_dropped_or_refused() {
    let mut driver = Driver::new();
    driver.init();

    // WRITE needs a 40-byte WriteIn; send 4 bytes.
    let reply = driver.call(OP_WRITE, FUSE_ROOT_ID, &[1, 2, 3, 4]);

    assert!(reply.used_len == 0 || reply.errno() != 0, "{reply:?}");
    assert_still_serves(&mut driver);
}

#[test]
fn write_size_larger_than_payload_is_refused() {
    let mut driver = Driver::new();
    driver.init();
    let write = WriteIn {
        fh: 0,
        size: 1 << 20,
        ..Default::default()
    };

    let reply = driver.call(OP_WRITE, FUSE_ROOT_ID, write.as_slice());

    assert!(reply.used_len == 0 || reply.errno() != 0, "{reply:?}");
    assert_still_serves(&mut driver);
}

#[test]
fn unknown_opcode_gets_enosys() {
    let mut driver = Driver::new();
    driver.init();

    let reply = driver.call(9999, FUSE_ROOT_ID, &[]);

    assert_eq!(reply.errno(), libc::ENOSYS);
}

#[test]
fn forget_with_more_than_looked_up_is_harmless() {
    let mut driver = Driver::new();
    driver.init();
    driver.call(OP_LOOKUP, FUSE_ROOT_ID, b".\0");

    driver.unique += 1;
    let forget = ForgetIn { nlookup: u64::MAX };
    let request = message(OP_FORGET, FUSE_ROOT_ID, driver.unique, forget.as_slice());
    driver.push_request(&request, 64);
    let used = driver.run_device().unwrap();

    assert_eq!(used[0].1, 0, "FORGET has no reply");
    assert_still_serves(&mut driver);
}

#[test]
fn unknown_node_id_gets_an_errno() {
    let mut driver = Driver::new();
    driver.init();

    let reply = driver.call(OP_GETATTR, 0xdead_beef, &[0u8; 16]);

    assert_ne!(reply.errno(), 0);
}

#[test]
fn stale_handle_gets_an_errno() {
    let mut driver = Driver::new();
    driver.init();
    let read = ReadIn {
        fh: 0x1234_5678,
        size: 16,
        ..Default::default()
    };

    let reply = driver.call(OP_READ, FUSE_ROOT_ID, read.as_slice());

    assert_ne!(reply.errno(), 0);
}

#[test]
fn request_before_init_is_refused() {
    let mut driver = Driver::new();

    let reply = driver.call(OP_GETATTR, FUSE_ROOT_ID, &[0u8; 16]);

    assert_eq!(reply.errno(), libc::EIO);
    assert_eq!(reply.header().unique, driver.unique);
    driver.init();
    assert_still_serves(&mut driver);
}

#[test]
fn notification_storm_is_served_in_one_pass() {
    let mut driver = Driver::new();
    driver.init();
    for unique in 0..QUEUE_SIZE as u64 / 2 {
        let request = message(OP_GETATTR, FUSE_ROOT_ID, 100 + unique, &[0u8; 16]);
        driver.push_request(&request, 4096);
    }

    let used = driver.run_device().unwrap();

    assert_eq!(used.len(), QUEUE_SIZE as usize / 2);
    assert!(used.iter().all(|&(_, len)| len > 0), "{used:?}");
}

// ---- the device behind the transport ---------------------------------------

mod device {
    use std::sync::Arc;

    use virtio_bindings::virtio_config::{
        VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
        VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    };
    use virtio_bindings::virtio_mmio::*;
    use vm_memory::{GuestAddress, GuestMemoryMmap};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::Fs;
    use crate::bus::BusDevice;
    use crate::seccomp::SeccompMode;
    use crate::virtio::fs::pool::MAX_POOL_SIZE;
    use crate::virtio::fs::{FsDeviceError, VirtioFs, WorkerConfinement};
    use crate::virtio::{MmioInterrupt, MmioTransport, VIRTIO_F_VERSION_1};

    fn write(t: &mut MmioTransport<VirtioFs<Fs>>, reg: u32, value: u32) {
        t.write(u64::from(reg), &value.to_le_bytes());
    }

    fn read(t: &mut MmioTransport<VirtioFs<Fs>>, reg: u32) -> u32 {
        let mut data = [0u8; 4];
        t.read(u64::from(reg), &mut data);
        u32::from_le_bytes(data)
    }

    /// A virtio-fs device brought up to DRIVER_OK with both queues.
    fn running_device() -> (MmioTransport<VirtioFs<Fs>>, tempfile::TempDir) {
        running_device_with(SeccompMode::None)
    }

    /// The same, its workers filtered in mode `seccomp`.
    fn running_device_with(
        seccomp: SeccompMode,
    ) -> (MmioTransport<VirtioFs<Fs>>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let fs = Fs::new(fuse_backend_rs::passthrough::Config {
            root_dir: dir.path().to_str().unwrap().to_owned(),
            ..Default::default()
        })
        .unwrap();
        fs.import().unwrap();
        let confinement = WorkerConfinement {
            seccomp,
            beneath: vec![dir.path().to_owned()],
        };
        let device = VirtioFs::confined("share0", 1, Arc::new(fs), confinement).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let interrupt = Arc::new(MmioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        let mut t = MmioTransport::new(device, mem, interrupt).unwrap();
        let ack_driver = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;
        write(&mut t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        write(&mut t, VIRTIO_MMIO_STATUS, ack_driver);
        write(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        write(
            &mut t,
            VIRTIO_MMIO_DRIVER_FEATURES,
            (VIRTIO_F_VERSION_1 >> 32) as u32,
        );
        let features_ok = ack_driver | VIRTIO_CONFIG_S_FEATURES_OK;
        write(&mut t, VIRTIO_MMIO_STATUS, features_ok);
        for (index, base) in [(0u32, 0x1_0000u32), (1, 0x2_0000)] {
            write(&mut t, VIRTIO_MMIO_QUEUE_SEL, index);
            write(&mut t, VIRTIO_MMIO_QUEUE_NUM, 16);
            write(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, base);
            write(&mut t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, base + 0x1000);
            write(&mut t, VIRTIO_MMIO_QUEUE_USED_LOW, base + 0x2000);
            write(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
        }
        write(
            &mut t,
            VIRTIO_MMIO_STATUS,
            features_ok | VIRTIO_CONFIG_S_DRIVER_OK,
        );
        assert_eq!(
            read(&mut t, VIRTIO_MMIO_STATUS),
            features_ok | VIRTIO_CONFIG_S_DRIVER_OK
        );
        (t, dir)
    }

    #[test]
    fn a_request_pool_serves_the_request_queues_only_and_its_size_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let fs = || {
            Arc::new(
                Fs::new(fuse_backend_rs::passthrough::Config {
                    root_dir: dir.path().to_str().unwrap().to_owned(),
                    ..Default::default()
                })
                .unwrap(),
            )
        };

        let device = VirtioFs::new("share0", 2, fs())
            .unwrap()
            .with_request_pool(3)
            .unwrap();
        let sizes: Vec<Option<usize>> = device
            .pools
            .iter()
            .map(|pool| pool.as_ref().map(|p| p.size()))
            .collect();
        assert_eq!(sizes, [None, Some(3), Some(3)]);

        let none = VirtioFs::new("share0", 1, fs())
            .unwrap()
            .with_request_pool(0)
            .unwrap();
        assert!(none.pools.iter().all(Option::is_none));

        let too_many = VirtioFs::new("share0", 1, fs())
            .unwrap()
            .with_request_pool(MAX_POOL_SIZE + 1)
            .map(drop)
            .unwrap_err();
        assert!(
            matches!(&too_many, FsDeviceError::Pool { tag, .. } if tag == "share0"),
            "{too_many}"
        );
    }

    #[test]
    fn config_space_carries_tag_and_request_queue_count() {
        let (mut t, _dir) = running_device();
        let mut config = [0u8; 40];

        t.read(0x100, &mut config);

        assert_eq!(&config[..7], b"share0\0");
        assert_eq!(u32::from_le_bytes(config[36..40].try_into().unwrap()), 1);
    }

    #[test]
    fn reset_in_the_middle_of_a_notification_storm_stops_the_workers() {
        let (mut t, _dir) = running_device();

        for _ in 0..1000 {
            write(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
            write(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        }
        write(&mut t, VIRTIO_MMIO_STATUS, 0);

        assert_eq!(read(&mut t, VIRTIO_MMIO_STATUS), 0);
        // A second bring-up works: nothing was left behind.
        drop(t);
        let (mut again, _dir2) = running_device();
        write(&mut again, VIRTIO_MMIO_STATUS, 0);
    }

    #[test]
    fn filtered_workers_serve_end_the_session_on_reset_and_stop_with_the_device() {
        // A worker making a call outside its filter would end this whole test process.
        let (mut t, _dir) = running_device_with(SeccompMode::Kill);
        for _ in 0..100 {
            write(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
        }
        write(&mut t, VIRTIO_MMIO_STATUS, 0);
        assert_eq!(read(&mut t, VIRTIO_MMIO_STATUS), 0);
        assert!(t.device().running.is_none());
        drop(t);
    }

    #[test]
    fn a_worker_asking_for_a_reset_shows_in_the_status_until_the_reset() {
        let (mut t, _dir) = running_device();
        assert!(t.device().running.is_some());
        let running = read(&mut t, VIRTIO_MMIO_STATUS);

        // What a worker does when the driver breaks its queue; clones share the flag.
        t.device().needs_reset.clone().set();

        assert_eq!(
            read(&mut t, VIRTIO_MMIO_STATUS),
            running | VIRTIO_CONFIG_S_NEEDS_RESET
        );
        write(&mut t, VIRTIO_MMIO_STATUS, 0);
        assert_eq!(read(&mut t, VIRTIO_MMIO_STATUS), 0);
        assert!(!t.device().needs_reset.is_set());
        assert!(t.device().running.is_none());
    }

    #[test]
    fn device_without_request_queue_is_refused() {
        let fs = Arc::new(
            Fs::new(fuse_backend_rs::passthrough::Config {
                root_dir: "/".into(),
                ..Default::default()
            })
            .unwrap(),
        );

        assert!(VirtioFs::new("t", 0, fs.clone()).is_err());
        assert!(VirtioFs::new("", 1, fs.clone()).is_err());
        assert!(VirtioFs::new(&"x".repeat(37), 1, fs).is_err());
    }
}

/// 1. A session is INIT'ed and then ended without DESTROY (a device reset, a front-end gone).
/// 2. Requests wait for INIT again, and only an open session asks the file system to drop
///    its state.
#[test]
fn an_ended_session_waits_for_init_again() {
    let mut driver = Driver::new();
    assert!(!driver.server.end(), "no session was open");
    driver.init();
    assert!(driver.server.end(), "the INIT'ed session ends");
    assert!(!driver.server.end(), "and only once");
    let reply = driver.call(OP_GETATTR, FUSE_ROOT_ID, &[0u8; 16]);
    assert_eq!(reply.errno(), libc::EIO);
    driver.init();
    assert_still_serves(&mut driver);
}

/// The used ring's index, as the driver reads it.
fn used_idx(mem: &GuestMemoryMmap<()>) -> u16 {
    mem.read_obj(GuestAddress(USED_RING + 2)).unwrap()
}

/// Sets the driver's used event (EVENT_IDX): the used index past which it wants to hear.
fn set_used_event(mem: &GuestMemoryMmap<()>, idx: u16) {
    let at = AVAIL_RING + 4 + 2 * u64::from(QUEUE_SIZE);
    mem.write_obj(idx, GuestAddress(at)).unwrap();
}

impl Driver {
    /// Writes GETATTR `unique` of the root and its reply buffer into the next two
    /// descriptors without making them available; returns the chain's head.
    fn stage_getattr(&mut self, unique: u64) -> u16 {
        let head = self.next_desc;
        let request = message(OP_GETATTR, FUSE_ROOT_ID, unique, &[0; 16]);
        let (req, reply) = (self.alloc(request.len()), self.alloc(256));
        self.mem.write_slice(&request, GuestAddress(req)).unwrap();
        self.write_desc(head, req, request.len() as u32, NEXT, head + 1);
        self.write_desc(head + 1, reply, 256, WRITE, 0);
        self.next_desc = head + 2;
        head
    }
}

/// Makes chain `head` available as a driver does (the ring entry, then the index, released);
/// returns the available index before and after.
fn make_available(mem: &GuestMemoryMmap<()>, head: u16) -> (u16, u16) {
    let old = mem.read_obj::<u16>(GuestAddress(AVAIL_RING + 2)).unwrap();
    let entry = AVAIL_RING + 4 + 2 * u64::from(old % QUEUE_SIZE);
    mem.write_obj(head, GuestAddress(entry)).unwrap();
    let new = old.wrapping_add(1);
    mem.store(
        new,
        GuestAddress(AVAIL_RING + 2),
        std::sync::atomic::Ordering::Release,
    )
    .unwrap();
    (old, new)
}

/// A driver that queues its next request as soon as it hears of the last reply (and asks to
/// hear of the next) finds the device still draining the ring: the new request is served in
/// the same pass, and the driver's EVENT_IDX check says it need not kick (virtio 1.2 §2.7.10).
#[test]
fn a_driver_answering_the_interrupt_at_once_need_not_kick() {
    let mut d = Driver::new();
    d.queue.set_event_idx(true);
    let mem = d.mem;
    let avail_event = move || -> u16 {
        let at = USED_RING + 4 + 8 * u64::from(QUEUE_SIZE);
        mem.read_obj(GuestAddress(at)).unwrap()
    };
    // Two requests in the table; only the first is available.
    d.push_request(&message(OP_GETATTR, FUSE_ROOT_ID, 1, &[0; 16]), 256);
    let second_head = d.stage_getattr(2);
    set_used_event(mem, 0);

    let mut interrupts = 0;
    let mut kicks_needed = 0;
    let mut on_interrupt = || {
        interrupts += 1;
        if interrupts > 1 {
            return;
        }
        // The driver's reaction: hear of the next reply too, queue the next request, and
        // kick only if the device asked for it.
        set_used_event(mem, used_idx(mem));
        let (old, new) = make_available(mem, second_head);
        let event = avail_event();
        if new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old) {
            kicks_needed += 1;
        }
    };
    d.serve_queue(&mut on_interrupt).unwrap();
    assert_eq!(used_idx(mem), 2, "both requests served in one pass");
    assert_eq!(
        interrupts, 2,
        "one interrupt per reply the driver asked to hear of"
    );
    assert_eq!(kicks_needed, 0, "the device was still draining the ring");
}

/// A driver that asked to hear of the first reply hears of it as soon as it is used, while
/// the device still has requests of the same batch to serve, not once the batch is done:
/// with several requests in flight it can queue more before the device runs dry, and need
/// not kick.
#[test]
fn the_driver_hears_of_a_reply_before_the_rest_of_its_batch_is_served() {
    let mut d = Driver::new();
    d.queue.set_event_idx(true);
    let mem = d.mem;
    for unique in 1..=3 {
        d.push_request(&message(OP_GETATTR, FUSE_ROOT_ID, unique, &[0; 16]), 256);
    }
    set_used_event(mem, 0);
    let mut used_at_interrupts = Vec::new();
    let mut on_interrupt = || used_at_interrupts.push(used_idx(mem));
    d.serve_queue(&mut on_interrupt).unwrap();
    assert_eq!(used_idx(mem), 3, "every request served");
    assert_eq!(
        used_at_interrupts,
        [1],
        "one interrupt, right after the reply the driver asked to hear of"
    );
}

/// A queue that has just served a batch keeps watching the ring: a request the driver adds
/// a while after it has seen the batch's replies is served in the same call, without a
/// kick. With polling off, the call returns right after the batch, asking for a kick, long
/// before the driver adds the request (the polling window is far longer than the wait, so
/// the outcome does not depend on timing where polling works).
#[test]
fn after_a_batch_the_queue_waits_for_the_next_request_without_a_kick() {
    let mut d = Driver::new();
    d.queue.set_event_idx(true);
    let mem = d.mem;
    for unique in 1..=2 {
        d.push_request(&message(OP_GETATTR, FUSE_ROOT_ID, unique, &[0; 16]), 256);
    }
    // The third request, in the table but not yet available.
    let third = d.stage_getattr(3);

    std::thread::scope(|s| {
        let (server, queue) = (&d.server, &mut d.queue);
        let device =
            s.spawn(move || process_queue(server, mem, queue, Duration::from_secs(60), &mut || {}));
        // The driver: a while after both replies are used, it makes the third available.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while used_idx(mem) < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "the batch was not served"
            );
            std::thread::yield_now();
        }
        std::thread::sleep(Duration::from_millis(100));
        make_available(mem, third);
        device.join().unwrap().unwrap();
    });
    assert_eq!(
        used_idx(mem),
        3,
        "the third request was served in the same call"
    );
}

mod pool {
    //! Requests of one queue served side by side by a [`RequestPool`].

    use std::sync::{Condvar, Mutex};

    use fuse_backend_rs::transport::{Reader, Writer};
    use vm_memory::bitmap::BitmapSlice;

    use super::super::handler::FuseServer;
    use super::super::pool::{process_queue_pooled, RequestPool};
    use super::super::worker::WorkerConfinement;
    use super::*;
    use crate::seccomp::SeccompMode;

    /// Request 1 waits (up to `patience`) until request 2 has been answered; request 99
    /// panics; every other request is answered at once with an empty reply.
    struct Gate {
        answered: Mutex<Vec<u64>>,
        changed: Condvar,
        patience: Duration,
        gave_up: Mutex<bool>,
    }

    impl Gate {
        fn new(patience: Duration) -> Arc<Self> {
            Arc::new(Gate {
                answered: Mutex::new(Vec::new()),
                changed: Condvar::new(),
                patience,
                gave_up: Mutex::new(false),
            })
        }
    }

    impl FuseServer for Gate {
        fn serve<S: BitmapSlice>(
            &self,
            header: &InHeader,
            _r: Reader<'_, S>,
            mut w: Writer<'_, S>,
        ) -> fuse_backend_rs::Result<usize> {
            match header.unique {
                1 => {
                    let answered = self.answered.lock().unwrap();
                    let (answered, wait) = self
                        .changed
                        .wait_timeout_while(answered, self.patience, |a| !a.contains(&2))
                        .unwrap();
                    drop(answered);
                    if wait.timed_out() {
                        *self.gave_up.lock().unwrap() = true;
                    }
                }
                99 => panic!("a bug in serving request 99"),
                _ => {}
            }
            let reply = OutHeader {
                len: 16,
                error: 0,
                unique: header.unique,
            };
            std::io::Write::write_all(&mut w, reply.as_slice()).unwrap();
            self.answered.lock().unwrap().push(header.unique);
            self.changed.notify_all();
            Ok(16)
        }
    }

    fn unconfined(size: usize) -> RequestPool {
        let confinement = WorkerConfinement {
            seccomp: SeccompMode::None,
            beneath: Vec::new(),
        };
        RequestPool::new("test", size, &confinement).unwrap()
    }

    /// The used ring's entries past `from`: (head, length).
    fn used_since(mem: &GuestMemoryMmap<()>, from: u16) -> Vec<(u32, u32)> {
        (from..used_idx(mem))
            .map(|i| {
                let elem = USED_RING + 4 + 8 * u64::from(i % QUEUE_SIZE);
                let id: u32 = mem.read_obj(GuestAddress(elem)).unwrap();
                let len: u32 = mem.read_obj(GuestAddress(elem + 4)).unwrap();
                (id, len)
            })
            .collect()
    }

    fn serve_pooled(d: &mut Driver, server: &Arc<Gate>, pool: &RequestPool) {
        process_queue_pooled(
            server,
            &d.mem,
            &mut d.queue,
            Duration::ZERO,
            &mut || {},
            pool,
        )
        .unwrap();
    }

    /// With two threads, a request waiting on a later one does not hold it up: the later
    /// one is answered first, and both chains are used, each with its reply's length. The
    /// order of the used entries is not checked: it is the order in which the two threads
    /// hand their replies back, after both have answered, and either may be first.
    #[test]
    fn a_pool_serves_a_request_while_an_earlier_one_waits_for_it() {
        let mut d = Driver::new();
        let gate = Gate::new(Duration::from_secs(60));
        let first = d.stage_getattr(1);
        let second = d.stage_getattr(2);
        make_available(d.mem, first);
        make_available(d.mem, second);

        serve_pooled(&mut d, &gate, &unconfined(2));

        assert!(!*gate.gave_up.lock().unwrap(), "request 1 waited in vain");
        assert_eq!(*gate.answered.lock().unwrap(), [2, 1]);
        let mut used = used_since(d.mem, 0);
        used.sort();
        let mut expected = [(u32::from(first), 16), (u32::from(second), 16)];
        expected.sort();
        assert_eq!(used, expected);
    }

    /// The same requests on a pool of one thread are served one at a time: request 1 waits
    /// for request 2 in vain (what the test above would see without a pool).
    #[test]
    fn a_pool_of_one_serves_one_request_at_a_time() {
        let mut d = Driver::new();
        let gate = Gate::new(Duration::from_millis(100));
        let first = d.stage_getattr(1);
        let second = d.stage_getattr(2);
        make_available(d.mem, first);
        make_available(d.mem, second);

        serve_pooled(&mut d, &gate, &unconfined(1));

        assert!(*gate.gave_up.lock().unwrap());
        assert_eq!(*gate.answered.lock().unwrap(), [1, 2]);
    }

    /// A request whose serving panics is used with nothing written, the others of its batch
    /// are answered, and the pool serves the next batch.
    #[test]
    fn a_request_that_panics_is_used_empty_and_the_pool_serves_on() {
        let mut d = Driver::new();
        let gate = Gate::new(Duration::from_secs(60));
        let pool = unconfined(2);
        let bug = d.stage_getattr(99);
        let fine = d.stage_getattr(3);
        make_available(d.mem, bug);
        make_available(d.mem, fine);

        serve_pooled(&mut d, &gate, &pool);
        let mut used = used_since(d.mem, 0);
        used.sort();
        assert_eq!(used, [(u32::from(bug), 0), (u32::from(fine), 16)]);

        let next = d.stage_getattr(4);
        make_available(d.mem, next);
        serve_pooled(&mut d, &gate, &pool);
        assert_eq!(used_since(d.mem, 2), [(u32::from(next), 16)]);
    }

    /// Pool threads run their work under the queue workers' seccomp filter.
    #[test]
    fn pool_threads_serve_under_the_workers_filter() {
        let pool = RequestPool::new("test", 1, &WorkerConfinement::default()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();

        pool.run(Box::new(move || {
            let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
            let _ = tx.send(status);
        }));

        let status = rx.recv_timeout(Duration::from_secs(60)).unwrap();
        assert!(status.contains("Seccomp:\t2"), "{status}");
    }

    #[test]
    fn a_pool_size_outside_1_to_64_is_refused() {
        for size in [0, 65] {
            let err = RequestPool::new("test", size, &WorkerConfinement::default())
                .err()
                .unwrap();
            assert!(err.contains("1 to 64"), "{err}");
        }
    }
}
