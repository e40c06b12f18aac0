//! A vhost-user front-end with a simulated virtio-fs driver: what a VMM and its guest do
//! to a vhost-user-fs back-end, without the VMM or the guest.
//!
//! [`VhostFrontend::connect`] speaks the vhost-user protocol (through the `vhost` crate's
//! front-end side) to a back-end process on its Unix socket: it negotiates the features,
//! shares guest memory (one memfd-backed region, passed with SET_MEM_TABLE), sets up the
//! hiprio queue and one request queue (size, ring addresses, base, kick and call
//! eventfds, enable), and sends FUSE INIT. The driver then puts FUSE requests on the
//! request queue, encoded as [`crate::driver`] encodes them in-process
//! ([`crate::fuse_wire`], [`crate::ring`]), with up to [`MAX_DEPTH`] in flight: it kicks
//! the back-end through the kick eventfd when the device asks for it (EVENT_IDX's
//! avail_event, or the used ring's NO_NOTIFY flag), and waits on the call eventfd for
//! completions. [`Counters`] tells how many kicks and interrupts that took.
//!
//! ```no_run
//! use bench::vhost_frontend::{FrontendConfig, VhostFrontend};
//! use bench::fuse_wire::ROOT;
//!
//! let mut fe = VhostFrontend::connect("/tmp/fs0.sock".as_ref(), &FrontendConfig::default())?;
//! let (node, attr) = fe.lookup(ROOT, "hello.txt")?;
//! assert_eq!(fe.getattr(node)?.size, attr.size);
//! # Ok::<(), bench::BenchError>(())
//! ```

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use fuse_backend_rs::abi::fuse_abi::{Attr, Opcode};
use vhost::vhost_user::message::{
    VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::fuse_wire::{self, Request, OUT_HEADER};
use crate::ring::{mem_err, Desc, DriverRing, RingLayout, WRITE};
use crate::stats::Latencies;
use crate::{BenchError, Result};

/// Most requests in flight at once.
pub const MAX_DEPTH: usize = 16;
/// Largest READ or WRITE payload one request can carry (FUSE's 256 pages).
pub const MAX_IO: u32 = 1 << 20;

/// virtio 1.0 (`VIRTIO_F_VERSION_1`).
const VERSION_1: u64 = 1 << 32;
/// `VIRTIO_RING_F_EVENT_IDX`.
const EVENT_IDX: u64 = 1 << 29;
/// Queue 0 is hiprio (FORGET and interrupts), queue 1 the one request queue.
const HIPRIO: usize = 0;
const REQUEST_QUEUE: usize = 1;
/// Each slot owns four descriptors, so 16 slots fill the queue.
const QUEUE_SIZE: u16 = 64;
const DESCS_PER_SLOT: u16 = 4;
const RINGS: [RingLayout; 2] = [
    RingLayout {
        desc: 0x0,
        avail: 0x1000,
        used: 0x2000,
        size: QUEUE_SIZE,
    },
    RingLayout {
        desc: 0x3000,
        avail: 0x4000,
        used: 0x5000,
        size: QUEUE_SIZE,
    },
];
/// Slot `s`: its request at `SLOTS + s * SLOT_STRIDE`, its reply one page further.
const SLOTS: u64 = 0x1_0000;
const SLOT_STRIDE: u64 = 0x2000;
const REPLY_CAP: u32 = 0x1000;
/// Where a FORGET on the hiprio queue is built (between the slots and the data).
const FORGET_AREA: u64 = SLOTS + SLOT_STRIDE * MAX_DEPTH as u64;
/// Slot `s`'s READ or WRITE data at `DATA + s * MAX_IO`.
const DATA: u64 = 0x4_0000;
const MEM_SIZE: usize = DATA as usize + MAX_DEPTH * MAX_IO as usize;
/// How long a request may take before the back-end counts as hung.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// What to negotiate.
#[derive(Debug, Clone, Copy)]
pub struct FrontendConfig {
    /// Use VIRTIO_RING_F_EVENT_IDX when the back-end offers it (Linux guests do).
    pub event_idx: bool,
}

impl Default for FrontendConfig {
    fn default() -> Self {
        FrontendConfig { event_idx: true }
    }
}

/// Notifications counted by the driver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// FUSE requests completed.
    pub requests: u64,
    /// Writes to the request queue's kick eventfd.
    pub kicks: u64,
    /// Signals of the request queue's call eventfd (the eventfd counter's sum, so two
    /// signals before one wake-up count as two).
    pub interrupts: u64,
}

impl Counters {
    /// The counts since `before`.
    pub fn since(&self, before: &Counters) -> Counters {
        Counters {
            requests: self.requests - before.requests,
            kicks: self.kicks - before.kicks,
            interrupts: self.interrupts - before.interrupts,
        }
    }
}

/// One FUSE request for [`VhostFrontend::pipeline`].
#[derive(Debug, Clone)]
pub struct Call {
    /// The opcode.
    pub op: Opcode,
    /// The node the request is about.
    pub nodeid: u64,
    /// The opcode's struct (and name).
    pub body: Vec<u8>,
    /// For READ: the payload asked for (at most [`MAX_IO`]), in its own writable buffer;
    /// 0 for every other request.
    pub read_len: u32,
    /// For WRITE: the payload sent (at most [`MAX_IO`]), from its own readable buffer
    /// (whatever the slot's data buffer holds); 0 for every other request.
    pub write_len: u32,
}

impl Call {
    /// A request without payload.
    pub fn new(op: Opcode, nodeid: u64, body: Vec<u8>) -> Self {
        Call {
            op,
            nodeid,
            body,
            read_len: 0,
            write_len: 0,
        }
    }

    /// READ of `len` bytes at `offset` through handle `fh`.
    pub fn read(nodeid: u64, fh: u64, offset: u64, len: u32) -> Self {
        Call {
            read_len: len,
            ..Call::new(Opcode::Read, nodeid, fuse_wire::read_in(fh, offset, len))
        }
    }

    /// WRITE of `len` bytes at `offset` through handle `fh`.
    pub fn write(nodeid: u64, fh: u64, offset: u64, len: u32) -> Self {
        Call {
            write_len: len,
            ..Call::new(Opcode::Write, nodeid, fuse_wire::write_in(fh, offset, len))
        }
    }
}

/// A completed request: the reply as the back-end wrote it.
#[derive(Debug)]
pub struct Reply<'a> {
    /// The reply header and body (for READ, the header only).
    pub bytes: &'a [u8],
    /// For READ, the payload bytes the back-end wrote.
    pub data_len: usize,
}

fn vhost_err(what: &'static str) -> impl FnOnce(vhost::Error) -> BenchError {
    move |source| BenchError::VhostUser { what, source }
}

fn host_err(what: &str) -> impl FnOnce(std::io::Error) -> BenchError + '_ {
    move |source| BenchError::Io {
        what: what.to_string(),
        source,
    }
}

/// A request in flight in one slot.
struct InFlight {
    index: usize,
    unique: u64,
    op: Opcode,
    read: bool,
    start: Instant,
}

/// A connected front-end and its driver.
pub struct VhostFrontend {
    /// Held for its socket: dropping it closes the session, which ends the back-end.
    _frontend: Frontend,
    mem: GuestMemoryMmap<()>,
    rings: [DriverRing; 2],
    kicks: [EventFd; 2],
    calls: [EventFd; 2],
    features: u64,
    unique: u64,
    counters: Counters,
}

impl VhostFrontend {
    /// Connects to the back-end listening on `socket`, sets the device up and sends FUSE
    /// INIT.
    pub fn connect(socket: &Path, config: &FrontendConfig) -> Result<Self> {
        let mut frontend = Frontend::connect(socket, 2).map_err(vhost_err("connect"))?;
        frontend.set_owner().map_err(vhost_err("SET_OWNER"))?;
        let offered = frontend.get_features().map_err(vhost_err("GET_FEATURES"))?;
        let protocol = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        for (bit, name) in [
            (VERSION_1, "VIRTIO_F_VERSION_1"),
            (protocol, "PROTOCOL_FEATURES"),
        ] {
            if offered & bit == 0 {
                return Err(BenchError::Driver(format!(
                    "the back-end does not offer {name} (features {offered:#x})"
                )));
            }
        }
        let mut wanted = VERSION_1 | protocol;
        if config.event_idx {
            wanted |= EVENT_IDX;
        }
        let features = offered & wanted;
        let offered_protocol = frontend
            .get_protocol_features()
            .map_err(vhost_err("GET_PROTOCOL_FEATURES"))?;
        let acked_protocol = offered_protocol
            & (VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK);
        frontend
            .set_protocol_features(acked_protocol)
            .map_err(vhost_err("SET_PROTOCOL_FEATURES"))?;
        if acked_protocol.contains(VhostUserProtocolFeatures::MQ) {
            let queues = frontend
                .get_queue_num()
                .map_err(vhost_err("GET_QUEUE_NUM"))?;
            if queues < 2 {
                return Err(BenchError::Driver(format!(
                    "the back-end has {queues} queues; virtio-fs needs hiprio and a request queue"
                )));
            }
        }
        frontend
            .set_features(features)
            .map_err(vhost_err("SET_FEATURES"))?;
        // With REPLY_ACK, every set-up message waits for the back-end to confirm it, so no
        // kick can arrive before the queue is ready.
        if acked_protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }

        let mem = shared_memory()?;
        let regions = mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(vhost_err("describe guest memory"))?;
        frontend
            .set_mem_table(&regions)
            .map_err(vhost_err("SET_MEM_TABLE"))?;

        let event_idx = features & EVENT_IDX != 0;
        let rings = [
            DriverRing::new(&mem, RINGS[HIPRIO], event_idx)?,
            DriverRing::new(&mem, RINGS[REQUEST_QUEUE], event_idx)?,
        ];
        let eventfd = || EventFd::new(EFD_NONBLOCK).map_err(host_err("create an eventfd"));
        let kicks = [eventfd()?, eventfd()?];
        let calls = [eventfd()?, eventfd()?];
        for (queue, ring) in rings.iter().enumerate() {
            let layout = ring.layout();
            let hva = |gpa: u64| -> Result<u64> {
                mem.get_host_address(GuestAddress(gpa))
                    .map(|p| p as u64)
                    .map_err(mem_err)
            };
            // vhost-user ring addresses are the front-end's own virtual addresses, which
            // the back-end translates through the memory table.
            let addr = VringConfigData {
                queue_max_size: QUEUE_SIZE,
                queue_size: QUEUE_SIZE,
                flags: 0,
                desc_table_addr: hva(layout.desc)?,
                used_ring_addr: hva(layout.used)?,
                avail_ring_addr: hva(layout.avail)?,
                log_addr: None,
            };
            frontend
                .set_vring_num(queue, QUEUE_SIZE)
                .map_err(vhost_err("SET_VRING_NUM"))?;
            frontend
                .set_vring_base(queue, 0)
                .map_err(vhost_err("SET_VRING_BASE"))?;
            frontend
                .set_vring_addr(queue, &addr)
                .map_err(vhost_err("SET_VRING_ADDR"))?;
            frontend
                .set_vring_call(queue, &calls[queue])
                .map_err(vhost_err("SET_VRING_CALL"))?;
            frontend
                .set_vring_kick(queue, &kicks[queue])
                .map_err(vhost_err("SET_VRING_KICK"))?;
            frontend
                .set_vring_enable(queue, true)
                .map_err(vhost_err("SET_VRING_ENABLE"))?;
        }
        frontend.set_hdr_flags(VhostUserHeaderFlag::empty());

        let mut fe = VhostFrontend {
            _frontend: frontend,
            mem,
            rings,
            kicks,
            calls,
            features,
            unique: 0,
            counters: Counters::default(),
        };
        fe.call(Opcode::Init, 0, &fuse_wire::init_in())?;
        Ok(fe)
    }

    /// The virtio features negotiated.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Whether EVENT_IDX was negotiated.
    pub fn event_idx(&self) -> bool {
        self.features & EVENT_IDX != 0
    }

    /// The counts so far.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Sends `count` requests, `make(i)` the i-th, keeping up to `depth` in flight; hands
    /// every reply to `done(i, reply)` (failed replies are errors before that) and returns
    /// each request's latency, from making it available to reaping its reply.
    pub fn pipeline(
        &mut self,
        count: usize,
        depth: usize,
        mut make: impl FnMut(usize) -> Call,
        mut done: impl FnMut(usize, Reply<'_>) -> Result<()>,
    ) -> Result<Latencies> {
        let depth = depth.clamp(1, MAX_DEPTH);
        let mut slots: Vec<Option<InFlight>> = (0..depth).map(|_| None).collect();
        let mut free: Vec<usize> = (0..depth).rev().collect();
        let mut latencies = Latencies::with_capacity(count);
        let mut next = 0;
        let mut reply = vec![0u8; REPLY_CAP as usize];
        while latencies.len() < count {
            while next < count {
                let Some(slot) = free.pop() else { break };
                let call = make(next);
                let unique = self.put(slot, &call)?;
                slots[slot] = Some(InFlight {
                    index: next,
                    unique,
                    op: call.op,
                    read: call.read_len > 0,
                    start: Instant::now(),
                });
                next += 1;
            }
            if self.rings[REQUEST_QUEUE].publish(&self.mem)? {
                self.kicks[REQUEST_QUEUE]
                    .write(1)
                    .map_err(host_err("kick the request queue"))?;
                self.counters.kicks += 1;
            }
            let mut reaped = false;
            while let Some((head, written)) = self.rings[REQUEST_QUEUE].pop_used(&self.mem)? {
                let slot = usize::from(head / DESCS_PER_SLOT);
                let Some(req) = slots.get_mut(slot).and_then(Option::take) else {
                    return Err(BenchError::Driver(format!(
                        "the device used descriptor {head}, which heads no request in flight"
                    )));
                };
                latencies.push(req.start.elapsed());
                free.push(slot);
                reaped = true;
                self.counters.requests += 1;
                let (len, data_len) = if req.read {
                    let data = (written as usize).checked_sub(OUT_HEADER).ok_or_else(|| {
                        BenchError::Driver(format!("READ reply of {written} bytes is short"))
                    })?;
                    (OUT_HEADER, data)
                } else {
                    ((written as usize).min(REPLY_CAP as usize), 0)
                };
                let bytes = &mut reply[..len];
                self.mem
                    .read_slice(bytes, GuestAddress(reply_addr(slot)))
                    .map_err(mem_err)?;
                fuse_wire::check_reply(req.op, Some(req.unique), bytes)?;
                done(req.index, Reply { bytes, data_len })?;
            }
            if !reaped && !self.rings[REQUEST_QUEUE].arm_interrupt(&self.mem)? {
                self.wait_for_interrupt()?;
            }
        }
        self.drain_interrupts()?;
        Ok(latencies)
    }

    /// FORGET `nlookup` lookups of `nodeid` on the hiprio queue, as a guest kernel does when
    /// it drops an inode (at once for a file unlinked and closed). FORGET has no reply; this
    /// returns once the back-end has used the request, so that a server holding a
    /// descriptor per node has closed it before the next timed phase.
    pub fn forget(&mut self, nodeid: u64, nlookup: u64) -> Result<()> {
        self.unique += 1;
        let body = fuse_wire::forget_in(nlookup);
        let req = Request::new(Opcode::Forget, self.unique, nodeid, &body, 0);
        self.mem
            .write_slice(&req.bytes, GuestAddress(FORGET_AREA))
            .map_err(mem_err)?;
        let ring = &mut self.rings[HIPRIO];
        ring.write_chain(&self.mem, 0, &[(FORGET_AREA, req.len(), 0)])?;
        ring.push(&self.mem, 0)?;
        if ring.publish(&self.mem)? {
            self.kicks[HIPRIO]
                .write(1)
                .map_err(host_err("kick the hiprio queue"))?;
        }
        let start = Instant::now();
        while self.rings[HIPRIO].pop_used(&self.mem)?.is_none() {
            if start.elapsed() > REPLY_TIMEOUT {
                return Err(BenchError::Driver(format!(
                    "the back-end did not use a FORGET within {} s",
                    REPLY_TIMEOUT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        Ok(())
    }

    /// Sends one request and returns its reply (header included).
    pub fn call(&mut self, op: Opcode, nodeid: u64, body: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let call = Call::new(op, nodeid, body.to_vec());
        self.pipeline(
            1,
            1,
            |_| call.clone(),
            |_, reply| {
                out = reply.bytes.to_vec();
                Ok(())
            },
        )?;
        Ok(out)
    }

    /// LOOKUP `name` in `parent`: its node id and attributes.
    pub fn lookup(&mut self, parent: u64, name: &str) -> Result<(u64, Attr)> {
        let reply = self.call(Opcode::Lookup, parent, &fuse_wire::name_in(name))?;
        let entry = fuse_wire::entry_out(&reply)?;
        Ok((entry.nodeid, entry.attr))
    }

    /// GETATTR of `nodeid`.
    pub fn getattr(&mut self, nodeid: u64) -> Result<Attr> {
        let reply = self.call(Opcode::Getattr, nodeid, &fuse_wire::getattr_in())?;
        Ok(fuse_wire::attr_out(&reply)?.attr)
    }

    /// OPEN `nodeid` with `flags`: the handle.
    pub fn open(&mut self, nodeid: u64, flags: i32) -> Result<u64> {
        let reply = self.call(Opcode::Open, nodeid, &fuse_wire::open_in(flags))?;
        fuse_wire::open_out(&reply)
    }

    /// READ `len` (at most [`MAX_IO`]) bytes at `offset`: the bytes read.
    pub fn read(&mut self, nodeid: u64, fh: u64, offset: u64, len: u32) -> Result<Vec<u8>> {
        let call = Call::read(nodeid, fh, offset, len);
        let mut got = 0;
        self.pipeline(
            1,
            1,
            |_| call.clone(),
            |_, reply| {
                got = reply.data_len;
                Ok(())
            },
        )?;
        let mut data = vec![0u8; got.min(MAX_IO as usize)];
        self.mem
            .read_slice(&mut data, GuestAddress(DATA))
            .map_err(mem_err)?;
        Ok(data)
    }

    /// Writes `call` into `slot`'s buffers and makes it available (not yet published).
    fn put(&mut self, slot: usize, call: &Call) -> Result<u64> {
        self.unique += 1;
        let payload = call.write_len as usize;
        let req = Request::new(call.op, self.unique, call.nodeid, &call.body, payload);
        if req.len() > REPLY_CAP || call.read_len > MAX_IO || call.write_len > MAX_IO {
            return Err(BenchError::Driver(format!(
                "{:?} of {} bytes reading {} or writing {} does not fit a slot",
                call.op,
                req.len(),
                call.read_len,
                call.write_len
            )));
        }
        let request = SLOTS + SLOT_STRIDE * slot as u64;
        self.mem
            .write_slice(&req.bytes, GuestAddress(request))
            .map_err(mem_err)?;
        let reply = reply_addr(slot);
        let data = DATA + u64::from(MAX_IO) * slot as u64;
        let read_chain: [Desc; 3] = [
            (request, req.len(), 0),
            (reply, OUT_HEADER as u32, WRITE),
            (data, call.read_len, WRITE),
        ];
        let write_chain: [Desc; 3] = [
            (request, req.len(), 0),
            (data, call.write_len, 0),
            (reply, REPLY_CAP, WRITE),
        ];
        let chain: &[Desc] = if call.read_len > 0 {
            &read_chain
        } else if call.write_len > 0 {
            &write_chain
        } else {
            &[(request, req.len(), 0), (reply, REPLY_CAP, WRITE)]
        };
        let head = slot as u16 * DESCS_PER_SLOT;
        let ring = &mut self.rings[REQUEST_QUEUE];
        ring.write_chain(&self.mem, head, chain)?;
        ring.push(&self.mem, head)?;
        Ok(self.unique)
    }

    /// Blocks until the request queue's call eventfd fires, and counts its signals.
    fn wait_for_interrupt(&mut self) -> Result<()> {
        let mut pfd = libc::pollfd {
            fd: self.calls[REQUEST_QUEUE].as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let timeout = REPLY_TIMEOUT.as_millis() as libc::c_int;
        loop {
            // SAFETY: `pfd` is one valid pollfd for the duration of the call.
            let r = unsafe { libc::poll(&mut pfd, 1, timeout) };
            if r > 0 {
                break;
            }
            if r == 0 {
                return Err(BenchError::Driver(format!(
                    "the back-end completed no request within {} s",
                    REPLY_TIMEOUT.as_secs()
                )));
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(host_err("poll the call eventfd")(err));
            }
        }
        self.drain_interrupts()
    }

    /// Adds the call eventfd's count to the interrupts, without blocking.
    fn drain_interrupts(&mut self) -> Result<()> {
        match self.calls[REQUEST_QUEUE].read() {
            Ok(n) => self.counters.interrupts += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(host_err("read the call eventfd")(e)),
        }
        Ok(())
    }
}

fn reply_addr(slot: usize) -> u64 {
    SLOTS + SLOT_STRIDE * slot as u64 + 0x1000
}

/// Guest memory in one memfd, mapped shared, so that the back-end maps the same pages.
fn shared_memory() -> Result<GuestMemoryMmap<()>> {
    // SAFETY: the name is a valid C string; memfd_create has no other preconditions.
    let fd = unsafe { libc::memfd_create(c"bench-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(host_err("memfd_create")(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nothing else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(MEM_SIZE as u64)
        .map_err(host_err("size the guest memory memfd"))?;
    let mem = GuestMemoryMmap::from_ranges_with_files([(
        GuestAddress(0),
        MEM_SIZE,
        Some(FileOffset::new(file, 0)),
    )])
    .map_err(mem_err)?;
    // Touch it once, so that the first requests do not pay the page faults. The data
    // buffers get a pattern: WRITEs send it, and a back-end that judges whether its memory
    // is really shared (ours refuses a large region holding only zeros) sees data.
    mem.write_slice(&vec![0u8; DATA as usize], GuestAddress(0))
        .map_err(mem_err)?;
    mem.write_slice(&vec![0xa5u8; MEM_SIZE - DATA as usize], GuestAddress(DATA))
        .map_err(mem_err)?;
    if mem.iter().any(|r| r.file_offset().is_none()) {
        return Err(BenchError::Driver("guest memory is not file-backed".into()));
    }
    Ok(mem)
}
