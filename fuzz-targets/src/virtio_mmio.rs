//! MMIO register accesses, guest memory writes and notifications into the virtio-mmio
//! transport over the virtio-fs device, serving a redirecting share.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use devices::bus::BusDevice;
use devices::virtio::fs::VirtioFs;
use devices::virtio::{MmioInterrupt, MmioTransport, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE as ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER as DRIVER,
    VIRTIO_CONFIG_S_DRIVER_OK as DRIVER_OK, VIRTIO_CONFIG_S_FAILED as FAILED,
    VIRTIO_CONFIG_S_FEATURES_OK as FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET as NEEDS_RESET,
};
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes as _, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::bytes::Bytes;
use crate::{pool_threads, share};

/// Guest memory: rings, buffers and whatever the input writes.
pub const MEM_SIZE: usize = 0x2_0000;
/// Size of the queues [`Op::BringUp`] sets up.
pub const QUEUE_SIZE: u16 = 16;
/// Where [`Op::Push`] places request and reply buffers, one after another, wrapping around.
const BUFFERS: (u64, u64) = (0x4000, MEM_SIZE as u64);
/// The device's queues: hiprio and one request queue.
const QUEUES: usize = 2;
/// How long to wait for a worker to take a notification before giving up on it.
const SETTLE_LIMIT: Duration = Duration::from_secs(2);

type Transport = MmioTransport<VirtioFs<share::Fs>>;

/// One step of the driver, as the input encodes it (the first byte, modulo 8, picks it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op<'a> {
    /// A 4-byte write of `value` at register offset `reg * 4` (below the config space).
    WriteReg {
        /// The register, in 4-byte units.
        reg: u8,
        /// What is written.
        value: u32,
    },
    /// A 4-byte read at register offset `reg * 4`.
    ReadReg {
        /// The register, in 4-byte units.
        reg: u8,
    },
    /// Guest memory bytes at `addr * 2` (clipped to memory).
    WriteMem {
        /// Where, in 2-byte units.
        addr: u16,
        /// What.
        bytes: &'a [u8],
    },
    /// QueueNotify for `queue`, then wait until its worker has served it.
    Notify {
        /// The queue index written to QueueNotify.
        queue: u8,
    },
    /// A read (`write == false`) or write of `len % 9` bytes at config offset `offset`.
    Config {
        /// Offset in the config space.
        offset: u8,
        /// Length (modulo 9).
        len: u8,
        /// A write rather than a read.
        write: bool,
    },
    /// The usual driver sequence: status, features (`flags` bit 0: EVENT_IDX, bit 1:
    /// INDIRECT_DESC), both queues at the standard layout, DRIVER_OK.
    BringUp {
        /// Which optional features are negotiated.
        flags: u8,
    },
    /// A request chain on `queue % 2` at the standard layout: a readable buffer with
    /// `request`, a writable one of `reply_len` bytes; avail.idx is advanced, no notification.
    Push {
        /// The queue (modulo 2).
        queue: u8,
        /// Size of the writable buffer.
        reply_len: u16,
        /// The request's bytes.
        request: &'a [u8],
    },
    /// Status 0: a device reset.
    Reset,
}

impl<'a> Op<'a> {
    /// Reads the next operation (any bytes decode to one; missing bytes read as zeros).
    pub fn decode(bytes: &mut Bytes<'a>) -> Self {
        match bytes.u8() % 8 {
            0 => Op::WriteReg {
                reg: bytes.u8(),
                value: bytes.u32(),
            },
            1 => Op::ReadReg { reg: bytes.u8() },
            2 => Op::WriteMem {
                addr: bytes.u16(),
                bytes: {
                    let len = bytes.u8();
                    bytes.take(usize::from(len))
                },
            },
            3 => Op::Notify { queue: bytes.u8() },
            4 => {
                let offset = bytes.u8();
                let len = bytes.u8();
                Op::Config {
                    offset,
                    len: len & 0x7f,
                    write: len & 0x80 != 0,
                }
            }
            5 => Op::BringUp { flags: bytes.u8() },
            6 => Op::Push {
                queue: bytes.u8(),
                reply_len: bytes.u16(),
                request: bytes.frame(),
            },
            _ => Op::Reset,
        }
    }

    /// Appends the encoding that [`Op::decode`] reads back.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Op::WriteReg { reg, value } => {
                out.extend_from_slice(&[0, reg]);
                out.extend_from_slice(&value.to_le_bytes());
            }
            Op::ReadReg { reg } => out.extend_from_slice(&[1, reg]),
            Op::WriteMem { addr, bytes } => {
                out.push(2);
                out.extend_from_slice(&addr.to_le_bytes());
                out.push(bytes.len() as u8);
                out.extend_from_slice(bytes);
            }
            Op::Notify { queue } => out.extend_from_slice(&[3, queue]),
            Op::Config { offset, len, write } => {
                out.extend_from_slice(&[4, offset, len | if write { 0x80 } else { 0 }])
            }
            Op::BringUp { flags } => out.extend_from_slice(&[5, flags]),
            Op::Push {
                queue,
                reply_len,
                request,
            } => {
                out.extend_from_slice(&[6, queue]);
                out.extend_from_slice(&reply_len.to_le_bytes());
                crate::bytes::push_frame(out, request);
            }
            Op::Reset => out.push(7),
        }
    }
}

/// Where queue `q` lives in the standard layout: descriptor table, avail ring, used ring.
fn layout(q: usize) -> (u64, u64, u64) {
    let base = 0x2000 * q as u64;
    (base, base + 0x800, base + 0xc00)
}

/// The driver's side of the standard layout.
#[derive(Debug, Default)]
struct Driver {
    next_desc: [u16; QUEUES],
    avail_idx: [u16; QUEUES],
    next_buffer: u64,
}

impl Driver {
    fn alloc(&mut self, len: u64) -> u64 {
        let len = len.next_multiple_of(16).max(16);
        if self.next_buffer < BUFFERS.0 || self.next_buffer + len > BUFFERS.1 {
            self.next_buffer = BUFFERS.0;
        }
        let addr = self.next_buffer;
        self.next_buffer += len;
        addr.min(BUFFERS.1 - 16)
    }
}

struct Machine {
    transport: Transport,
    mem: GuestMemoryMmap<()>,
    driver: Driver,
}

impl Machine {
    fn write_reg(&mut self, offset: u32, value: u32) {
        self.transport
            .write(u64::from(offset), &value.to_le_bytes());
    }

    fn read_reg(&mut self, offset: u32) -> u32 {
        let mut data = [0u8; 4];
        self.transport.read(u64::from(offset), &mut data);
        u32::from_le_bytes(data)
    }

    fn write_mem(&self, addr: u64, bytes: &[u8]) {
        let start = (addr as usize).min(MEM_SIZE);
        let len = bytes.len().min(MEM_SIZE - start);
        // Clipped to memory just above.
        let _ = self
            .mem
            .write_slice(&bytes[..len], GuestAddress(start as u64));
    }

    fn bring_up(&mut self, flags: u8) {
        self.driver = Driver::default();
        self.write_reg(VIRTIO_MMIO_STATUS, 0);
        self.write_reg(VIRTIO_MMIO_STATUS, ACKNOWLEDGE);
        self.write_reg(VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER);
        let mut features = VIRTIO_F_VERSION_1;
        if flags & 1 != 0 {
            features |= devices::virtio::VIRTIO_RING_F_EVENT_IDX;
        }
        if flags & 2 != 0 {
            features |= devices::virtio::VIRTIO_RING_F_INDIRECT_DESC;
        }
        for half in 0..2u32 {
            self.write_reg(VIRTIO_MMIO_DRIVER_FEATURES_SEL, half);
            self.write_reg(
                VIRTIO_MMIO_DRIVER_FEATURES,
                (features >> (32 * half)) as u32,
            );
        }
        let features_ok = ACKNOWLEDGE | DRIVER | FEATURES_OK;
        self.write_reg(VIRTIO_MMIO_STATUS, features_ok);
        for q in 0..QUEUES {
            let (desc, avail, used) = layout(q);
            self.write_mem(avail, &[0; 4]);
            self.write_mem(used, &[0; 4]);
            self.write_reg(VIRTIO_MMIO_QUEUE_SEL, q as u32);
            self.write_reg(VIRTIO_MMIO_QUEUE_NUM, u32::from(QUEUE_SIZE));
            self.write_reg(VIRTIO_MMIO_QUEUE_DESC_LOW, desc as u32);
            self.write_reg(VIRTIO_MMIO_QUEUE_AVAIL_LOW, avail as u32);
            self.write_reg(VIRTIO_MMIO_QUEUE_USED_LOW, used as u32);
            self.write_reg(VIRTIO_MMIO_QUEUE_READY, 1);
        }
        self.write_reg(VIRTIO_MMIO_STATUS, features_ok | DRIVER_OK);
    }

    fn push(&mut self, queue: u8, reply_len: u16, request: &[u8]) {
        let q = usize::from(queue) % QUEUES;
        let (desc_table, avail, _) = layout(q);
        let req = self.driver.alloc(request.len() as u64);
        self.write_mem(req, request);
        let reply = self.driver.alloc(u64::from(reply_len));
        let head = self.driver.next_desc[q];
        let second = (head + 1) % QUEUE_SIZE;
        let descs = [
            (req, request.len() as u32, VRING_DESC_F_NEXT as u16, second),
            (reply, u32::from(reply_len), VRING_DESC_F_WRITE as u16, 0),
        ];
        for (slot, (addr, len, flags, next)) in [head, second].into_iter().zip(descs) {
            let mut desc = [0u8; 16];
            desc[..8].copy_from_slice(&addr.to_le_bytes());
            desc[8..12].copy_from_slice(&len.to_le_bytes());
            desc[12..14].copy_from_slice(&flags.to_le_bytes());
            desc[14..].copy_from_slice(&next.to_le_bytes());
            self.write_mem(desc_table + 16 * u64::from(slot), &desc);
        }
        self.driver.next_desc[q] = (head + 2) % QUEUE_SIZE;
        let idx = self.driver.avail_idx[q];
        self.write_mem(
            avail + 4 + 2 * u64::from(idx % QUEUE_SIZE),
            &head.to_le_bytes(),
        );
        self.driver.avail_idx[q] = idx.wrapping_add(1);
        self.write_mem(avail + 2, &self.driver.avail_idx[q].to_le_bytes());
    }

    /// True while the device runs a worker per queue: activation needs both queues, and a
    /// worker stops only when its queue breaks, which the status shows as NEEDS_RESET.
    fn workers_running(&mut self) -> bool {
        let status = self.read_reg(VIRTIO_MMIO_STATUS);
        status & DRIVER_OK != 0 && status & (NEEDS_RESET | FAILED) == 0
    }

    /// Waits until the worker of `queue` has taken its notification (the kick eventfd reads
    /// empty again), so the steps after it meet the queue as the worker left it.
    fn settle(&mut self, queue: usize) {
        // The first wait sees the worker take the kick; a second kick, taken only after
        // the worker finished the pass the first one started, sees that pass end.
        for round in 0..2 {
            if round == 1 {
                let _ = self.transport.queue_kicks()[queue].write(1);
            }
            let deadline = Instant::now() + SETTLE_LIMIT;
            while readable(&self.transport.queue_kicks()[queue]) {
                if !self.workers_running() || Instant::now() > deadline {
                    return;
                }
                std::thread::yield_now();
            }
        }
    }

    fn step(&mut self, op: Op<'_>) {
        match op {
            Op::WriteReg { reg, value } => self.write_reg(u32::from(reg) * 4, value),
            Op::ReadReg { reg } => {
                self.read_reg(u32::from(reg) * 4);
            }
            Op::WriteMem { addr, bytes } => self.write_mem(u64::from(addr) * 2, bytes),
            Op::Notify { queue } => {
                self.write_reg(VIRTIO_MMIO_QUEUE_NOTIFY, u32::from(queue));
                let q = usize::from(queue);
                if q < QUEUES && self.workers_running() {
                    self.settle(q);
                }
            }
            Op::Config { offset, len, write } => {
                let at = u64::from(VIRTIO_MMIO_CONFIG) + u64::from(offset);
                let mut data = vec![0u8; usize::from(len % 9)];
                if write {
                    self.transport.write(at, &data);
                } else {
                    self.transport.read(at, &mut data);
                }
            }
            Op::BringUp { flags } => self.bring_up(flags),
            Op::Push {
                queue,
                reply_len,
                request,
            } => self.push(queue, reply_len, request),
            Op::Reset => {
                self.write_reg(VIRTIO_MMIO_STATUS, 0);
                self.driver = Driver::default();
            }
        }
    }
}

fn readable(fd: &EventFd) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call; a zero timeout never blocks.
    let ret = unsafe { libc::poll(&mut pfd, 1, 0) };
    ret > 0 && pfd.revents & libc::POLLIN != 0
}

/// Runs `data` as a sequence of [`MmioOp`](crate::MmioOp)s against a fresh virtio-fs device
/// behind the virtio-mmio transport, in fresh guest memory, over a fresh file system on the
/// fuzz share; the device is reset (its workers joined) at the end. An input of odd length
/// gets a device whose request queue is served by a pool ([`crate::POOL_THREADS`]).
pub fn virtio_mmio(data: &[u8]) {
    let run = share::begin();
    run_input(data);
    run.finish();
}

fn run_input(data: &[u8]) {
    let fs = share::fresh();
    let device = VirtioFs::new("fuzz", 1, fs.clone())
        .and_then(|device| device.with_request_pool(pool_threads(data)))
        .expect("the fuzz device is valid");
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)])
        .expect("cannot map the fuzz guest memory");
    let irq = EventFd::new(EFD_NONBLOCK).expect("cannot create an eventfd");
    let interrupt = Arc::new(MmioInterrupt::new(irq));
    let transport =
        MmioTransport::new(device, mem.clone(), interrupt).expect("cannot create the transport");
    let mut machine = Machine {
        transport,
        mem,
        driver: Driver::default(),
    };
    let mut bytes = Bytes::new(data);
    while !bytes.is_empty() {
        let op = Op::decode(&mut bytes);
        machine.step(op);
    }
    machine.write_reg(VIRTIO_MMIO_STATUS, 0);
    drop(machine);
    drop(fs);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_round_trip_through_their_encoding() {
        let ops = [
            Op::WriteReg { reg: 3, value: 7 },
            Op::ReadReg { reg: 0x1c },
            Op::WriteMem {
                addr: 9,
                bytes: b"xyz",
            },
            Op::Notify { queue: 1 },
            Op::Config {
                offset: 2,
                len: 4,
                write: true,
            },
            Op::BringUp { flags: 3 },
            Op::Push {
                queue: 1,
                reply_len: 4096,
                request: b"req",
            },
            Op::Reset,
        ];
        let mut encoded = Vec::new();
        for op in &ops {
            op.encode(&mut encoded);
        }
        let mut bytes = Bytes::new(&encoded);

        let decoded: Vec<Op> = ops.iter().map(|_| Op::decode(&mut bytes)).collect();

        assert_eq!(decoded, ops);
        assert!(bytes.is_empty());
    }
}
