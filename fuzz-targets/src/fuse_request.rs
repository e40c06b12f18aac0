//! FUSE requests into the virtio-fs request path over a redirecting share.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use devices::virtio::fs::handler::{process_queue, FuseSession};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes as _, GuestAddress, GuestMemoryMmap};

use crate::bytes::Bytes;
use crate::share;

const QUEUE_SIZE: u16 = 16;
const DESC_TABLE: u64 = 0x0;
const AVAIL_RING: u64 = 0x1000;
const USED_RING: u64 = 0x2000;
/// Where each request is placed (a frame holds at most 64 KiB).
const REQUEST: u64 = 0x1_0000;
/// The reply buffer: room for the largest READ the server answers (1 MiB) and its header.
const REPLY: u64 = 0x2_0000;
const REPLY_LEN: u32 = (1 << 20) + 0x1000;
const MEM_SIZE: usize = 0x20_0000;

thread_local! {
    /// Guest memory, kept across inputs: mapping it is the slowest part of a short input.
    static MEM: RefCell<Option<GuestMemoryMmap<()>>> = const { RefCell::new(None) };
}

/// Serves `data` as a sequence of FUSE requests, each a frame (a little-endian u16 length,
/// then the request's bytes, whose own header may say anything), to a fresh FUSE session
/// over a fresh file system on the fuzz share.
///
/// Each request travels as the device receives it: a chain of a readable buffer with the
/// request and a writable one for the reply, on a split virtqueue in guest memory, served by
/// `process_queue` (so through the same Reader, Writer and session state as the device).
pub fn fuse_request(data: &[u8]) {
    let run = share::begin();
    run_input(data);
    run.finish();
}

fn run_input(data: &[u8]) {
    let fs = share::fresh();
    let session = FuseSession::new(fs.clone());
    MEM.with_borrow_mut(|mem| {
        let mem = mem.get_or_insert_with(|| {
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)])
                .expect("cannot map the fuzz guest memory")
        });
        serve_all(&session, mem, data);
    });
    drop(session);
    drop(fs);
}

fn serve_all(session: &FuseSession<Arc<share::Fs>>, mem: &GuestMemoryMmap<()>, data: &[u8]) {
    let mut queue = Queue::new(QUEUE_SIZE).expect("queue size is a power of two");
    queue.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
    queue.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
    queue.set_used_ring_address(Some(USED_RING as u32), Some(0));
    queue.set_ready(true);
    let write = |value: &[u8], addr: u64| {
        mem.write_slice(value, GuestAddress(addr))
            .expect("the fuzz rings lie inside guest memory")
    };
    write(&[0; 4], AVAIL_RING);
    write(&[0; 4], USED_RING);
    let mut bytes = Bytes::new(data);
    let mut avail: u16 = 0;
    while !bytes.is_empty() {
        let request = bytes.frame();
        write(request, REQUEST);
        let descs = [
            (
                REQUEST,
                request.len() as u32,
                VRING_DESC_F_NEXT as u16,
                1u16,
            ),
            (REPLY, REPLY_LEN, VRING_DESC_F_WRITE as u16, 0),
        ];
        for (slot, (addr, len, flags, next)) in descs.into_iter().enumerate() {
            let mut desc = [0u8; 16];
            desc[..8].copy_from_slice(&addr.to_le_bytes());
            desc[8..12].copy_from_slice(&len.to_le_bytes());
            desc[12..14].copy_from_slice(&flags.to_le_bytes());
            desc[14..].copy_from_slice(&next.to_le_bytes());
            write(&desc, DESC_TABLE + 16 * slot as u64);
        }
        let entry = AVAIL_RING + 4 + 2 * u64::from(avail % QUEUE_SIZE);
        write(&0u16.to_le_bytes(), entry);
        avail = avail.wrapping_add(1);
        write(&avail.to_le_bytes(), AVAIL_RING + 2);
        // A well-formed queue: only the requests can fail, and they are answered.
        process_queue(session, mem, &mut queue, Duration::ZERO, &mut || {})
            .expect("the fuzz queue stays consistent");
    }
}
