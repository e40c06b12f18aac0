//! The driver's side of a split virtqueue (virtio 1.2 §2.7) in guest memory: descriptor
//! chains, the available ring it publishes and the used ring it reaps, with the
//! notification suppression of VIRTIO_F_EVENT_IDX when negotiated (§2.7.7, §2.7.10).
//! Shared by the in-process driver ([`crate::driver`]) and the vhost-user front-end
//! ([`crate::vhost_frontend`]), whose device runs in another process.

use std::sync::atomic::{fence, Ordering};

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_USED_F_NO_NOTIFY};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, VolatileSlice};

use crate::{BenchError, Result};

/// The descriptor flag of a buffer the device writes.
pub const WRITE: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;

/// One buffer of a chain: guest address, length, flags (0 or [`WRITE`]).
pub type Desc = (u64, u32, u16);

/// Where a queue's three parts lie in guest memory, and its size.
#[derive(Debug, Clone, Copy)]
pub struct RingLayout {
    /// Descriptor table (16 bytes per entry).
    pub desc: u64,
    /// Available ring: flags, idx, `size` entries, used_event.
    pub avail: u64,
    /// Used ring: flags, idx, `size` 8-byte entries, avail_event.
    pub used: u64,
    /// Number of entries (a power of two).
    pub size: u16,
}

/// Turns a guest memory error into a [`BenchError::Driver`].
pub fn mem_err(e: impl std::fmt::Display) -> BenchError {
    BenchError::Driver(format!("guest memory access failed: {e}"))
}

/// `len` bytes of guest memory from `at`, in one piece.
///
/// The driver stands for a guest, which reaches its rings and requests with plain loads and
/// stores. An access through `Bytes<GuestAddress>` instead walks the memory's regions piece
/// by piece, as a device must with addresses a guest gave it: in a request the device
/// answers without a host call, that walk was most of the driver's half of the time, and it
/// counted against the device in every figure measured through this driver.
pub fn guest_slice(
    mem: &GuestMemoryMmap<()>,
    at: u64,
    len: usize,
) -> Result<VolatileSlice<'_, ()>> {
    mem.get_slice(GuestAddress(at), len).map_err(mem_err)
}

/// `vring_need_event`: whether moving an index from `old` to `new` passes `event`.
fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// The 16-bit ring field at `at`, read with acquire ordering.
fn load(mem: &GuestMemoryMmap<()>, at: u64) -> Result<u16> {
    guest_slice(mem, at, 2)?
        .load(0, Ordering::Acquire)
        .map_err(mem_err)
}

/// The driver's state of one split queue.
#[derive(Debug)]
pub struct DriverRing {
    layout: RingLayout,
    event_idx: bool,
    /// The next available index to publish.
    avail_idx: u16,
    /// The available index the device was last told about (or could have seen).
    notified_idx: u16,
    /// The used entries reaped so far.
    last_used: u16,
}

impl DriverRing {
    /// A queue at `layout`, with all indices at 0; zeroes its rings in `mem`.
    pub fn new(mem: &GuestMemoryMmap<()>, layout: RingLayout, event_idx: bool) -> Result<Self> {
        let size = usize::from(layout.size);
        mem.write_slice(&vec![0u8; 16 * size], GuestAddress(layout.desc))
            .map_err(mem_err)?;
        mem.write_slice(&vec![0u8; 6 + 2 * size], GuestAddress(layout.avail))
            .map_err(mem_err)?;
        mem.write_slice(&vec![0u8; 6 + 8 * size], GuestAddress(layout.used))
            .map_err(mem_err)?;
        Ok(DriverRing {
            layout,
            event_idx,
            avail_idx: 0,
            notified_idx: 0,
            last_used: 0,
        })
    }

    /// The queue's layout.
    pub fn layout(&self) -> RingLayout {
        self.layout
    }

    /// Writes `descs` as one chain in consecutive table entries from `head`.
    pub fn write_chain(&self, mem: &GuestMemoryMmap<()>, head: u16, descs: &[Desc]) -> Result<()> {
        if descs.is_empty() || usize::from(head) + descs.len() > usize::from(self.layout.size) {
            return Err(BenchError::Driver(format!(
                "a chain of {} descriptors from {head} does not fit a queue of {}",
                descs.len(),
                self.layout.size
            )));
        }
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let index = head + i as u16;
            let last = i + 1 == descs.len();
            let flags = if last { flags } else { flags | NEXT };
            let next = if last { 0 } else { index + 1 };
            // virtio 1.2 §2.7.5: le64 addr, le32 len, le16 flags, le16 next.
            let mut desc = [0u8; 16];
            desc[..8].copy_from_slice(&addr.to_le_bytes());
            desc[8..12].copy_from_slice(&len.to_le_bytes());
            desc[12..14].copy_from_slice(&flags.to_le_bytes());
            desc[14..].copy_from_slice(&next.to_le_bytes());
            guest_slice(mem, self.layout.desc + 16 * u64::from(index), desc.len())?
                .copy_from(&desc);
        }
        Ok(())
    }

    /// Puts chain `head` in the next available slot (not yet visible to the device).
    pub fn push(&mut self, mem: &GuestMemoryMmap<()>, head: u16) -> Result<()> {
        let slot = self.avail_idx % self.layout.size;
        let entry = self.layout.avail + 4 + 2 * u64::from(slot);
        guest_slice(mem, entry, 2)?
            .write_obj(head.to_le(), 0)
            .map_err(mem_err)?;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        Ok(())
    }

    /// Makes the pushed chains visible and says whether the device wants a notification
    /// for them (its avail_event with EVENT_IDX, its NO_NOTIFY flag without).
    pub fn publish(&mut self, mem: &GuestMemoryMmap<()>) -> Result<bool> {
        let old = self.notified_idx;
        let new = self.avail_idx;
        if old == new {
            return Ok(false);
        }
        guest_slice(mem, self.layout.avail + 2, 2)?
            .store(new.to_le(), 0, Ordering::Release)
            .map_err(mem_err)?;
        self.notified_idx = new;
        // The device's suppression state must be read after the index is visible to it.
        fence(Ordering::SeqCst);
        if self.event_idx {
            let at = self.layout.used + 4 + 8 * u64::from(self.layout.size);
            let event = u16::from_le(load(mem, at)?);
            Ok(need_event(event, new, old))
        } else {
            let flags = u16::from_le(load(mem, self.layout.used)?);
            Ok(flags & VRING_USED_F_NO_NOTIFY as u16 == 0)
        }
    }

    /// Chains made available and not yet reaped.
    pub fn in_flight(&self) -> u16 {
        self.avail_idx.wrapping_sub(self.last_used)
    }

    /// The next used entry, if the device has returned one: (head, bytes written).
    pub fn pop_used(&mut self, mem: &GuestMemoryMmap<()>) -> Result<Option<(u16, u32)>> {
        let used = u16::from_le(load(mem, self.layout.used + 2)?);
        if used == self.last_used {
            return Ok(None);
        }
        if used.wrapping_sub(self.last_used) > self.in_flight() {
            return Err(BenchError::Driver(format!(
                "the device's used index {used} runs past the {} chains in flight",
                self.in_flight()
            )));
        }
        let elem = self.layout.used + 4 + 8 * u64::from(self.last_used % self.layout.size);
        // virtio 1.2 §2.7.8: le32 id, le32 len.
        let entry = guest_slice(mem, elem, 8)?;
        let id = u32::from_le(entry.read_obj(0).map_err(mem_err)?);
        let len = u32::from_le(entry.read_obj(4).map_err(mem_err)?);
        let head = u16::try_from(id)
            .ok()
            .filter(|&h| h < self.layout.size)
            .ok_or_else(|| BenchError::Driver(format!("the device used descriptor {id}")))?;
        self.last_used = self.last_used.wrapping_add(1);
        Ok(Some((head, len)))
    }

    /// Asks for an interrupt at the next used entry (EVENT_IDX's used_event; without it,
    /// interrupts are never suppressed). Returns whether entries arrived meanwhile, in
    /// which case the caller reaps them instead of waiting.
    pub fn arm_interrupt(&self, mem: &GuestMemoryMmap<()>) -> Result<bool> {
        if self.event_idx {
            let at = self.layout.avail + 4 + 2 * u64::from(self.layout.size);
            guest_slice(mem, at, 2)?
                .store(self.last_used.to_le(), 0, Ordering::Release)
                .map_err(mem_err)?;
        }
        // The device's used index must be read after used_event is visible to it.
        fence(Ordering::SeqCst);
        let used = u16::from_le(load(mem, self.layout.used + 2)?);
        Ok(used != self.last_used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn need_event_follows_the_virtio_rule() {
        // The device asked to hear when index 5 is passed.
        assert!(need_event(5, 6, 5));
        assert!(need_event(5, 8, 3));
        assert!(!need_event(5, 5, 3));
        assert!(!need_event(9, 8, 3));
        // Across the 16-bit wrap.
        assert!(need_event(0xffff, 1, 0xfffe));
    }

    #[test]
    fn a_used_index_past_the_chains_in_flight_is_an_error() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x4000)]).unwrap();
        let layout = RingLayout {
            desc: 0,
            avail: 0x1000,
            used: 0x2000,
            size: 4,
        };
        let mut ring = DriverRing::new(&mem, layout, false).unwrap();
        ring.write_chain(&mem, 0, &[(0x3000, 16, 0)]).unwrap();
        ring.push(&mem, 0).unwrap();
        assert!(ring.publish(&mem).unwrap());

        mem.write_obj(3u16, GuestAddress(0x2002)).unwrap();

        assert!(matches!(ring.pop_used(&mem), Err(BenchError::Driver(_))));
    }
}
