//! Virtio: the device trait, the MMIO transport, and our devices.
//!
//! The transport owns the queues while the driver sets them up and moves
//! them into the device at DRIVER_OK (virtio 1.2 §3.1.1), together with
//! guest memory and an interrupt, in one [`ActivationContext`].

pub mod fs;
pub mod mmio;
pub mod wait;

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use mmio::MmioTransport;

/// Guest memory as devices see it.
pub type GuestMemory = GuestMemoryMmap<()>;

/// virtio 1.2 §6: the device offers VIRTIO_F_VERSION_1 (modern device).
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
/// virtio 1.2 §6: indirect descriptors.
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 =
    1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
/// virtio 1.2 §6: used/avail event index notification suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

/// How a device tells the driver it used buffers (or changed its config).
pub trait Interrupt: Send + Sync {
    /// Signals that a queue has new used buffers.
    fn signal_used_queue(&self) -> io::Result<()>;
    /// Signals that the configuration space changed (or the device needs a reset).
    fn signal_config_change(&self) -> io::Result<()>;
}

/// The virtio-mmio interrupt: an interrupt-status register shared with the
/// transport, and an eventfd registered with KVM as an irqfd.
#[derive(Debug)]
pub struct MmioInterrupt {
    status: AtomicU32,
    irq: EventFd,
}

impl MmioInterrupt {
    /// Wraps the irqfd eventfd.
    pub fn new(irq: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            irq,
        }
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears the acknowledged bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Clears everything (device reset).
    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }

    /// The eventfd behind the interrupt line.
    pub fn eventfd(&self) -> &EventFd {
        &self.irq
    }

    fn raise(&self, bit: u32) -> io::Result<()> {
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.irq.write(1)
    }
}

impl Interrupt for MmioInterrupt {
    fn signal_used_queue(&self) -> io::Result<()> {
        self.raise(virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING)
    }

    fn signal_config_change(&self) -> io::Result<()> {
        self.raise(virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_CONFIG)
    }
}

/// A queue handed to a device, with the eventfd the driver kicks.
#[derive(Debug)]
pub struct ActiveQueue {
    /// The queue, validated by the transport.
    pub queue: Queue,
    /// Written when the driver notifies this queue (an ioeventfd under KVM).
    pub kick: EventFd,
}

/// Everything a device needs to start serving the driver.
pub struct ActivationContext {
    /// Guest memory.
    pub mem: GuestMemory,
    /// The queues, in index order; only those the driver made ready.
    pub queues: Vec<(usize, ActiveQueue)>,
    /// How to interrupt the driver.
    pub interrupt: Arc<dyn Interrupt>,
    /// The features the driver accepted.
    pub acked_features: u64,
}

/// Errors from activating a device.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver did not make a queue ready that the device needs.
    #[error("queue {0} is required but was not set up by the driver")]
    MissingQueue(usize),
    /// A worker thread or eventfd could not be created.
    #[error("cannot start the device's worker")]
    Worker(#[source] io::Error),
}

/// A virtio device, independent of its transport.
pub trait VirtioDevice: Send {
    /// The virtio device id (virtio 1.2 §5).
    fn device_type(&self) -> u32;
    /// The feature bits the device offers.
    fn features(&self) -> u64;
    /// The largest size of each queue; the slice length is the queue count.
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads from the device-specific configuration space; bytes outside it read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes to the configuration space (ignored by read-only configurations).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts serving the queues.
    fn activate(&mut self, ctx: ActivationContext) -> Result<(), ActivateError>;
    /// Stops serving and releases everything activation gave the device.
    fn reset(&mut self);
    /// Whether the device hit an error only a reset can clear (reported
    /// as DEVICE_NEEDS_RESET in the status register).
    fn needs_reset(&self) -> bool {
        false
    }
}

/// Copies the bytes of `config` at `offset` into `data`, zero-filling the
/// part that falls outside it.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= config.len() {
        return;
    }
    let end = config.len().min(start.saturating_add(data.len()));
    data[..end - start].copy_from_slice(&config[start..end]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn config_reads_are_clipped_and_zero_filled() {
        let config = [1u8, 2, 3, 4];
        let mut data = [0xffu8; 4];

        read_config_bytes(&config, 2, &mut data);
        assert_eq!(data, [3, 4, 0, 0]);
        read_config_bytes(&config, 100, &mut data);
        assert_eq!(data, [0; 4]);
        read_config_bytes(&config, u64::MAX, &mut data);
        assert_eq!(data, [0; 4]);
    }

    #[test]
    fn interrupt_sets_status_bits_until_acked() {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let interrupt = MmioInterrupt::new(irq.try_clone().unwrap());

        interrupt.signal_used_queue().unwrap();
        interrupt.signal_config_change().unwrap();
        assert_eq!(interrupt.status(), 3);
        interrupt.ack(1);

        assert_eq!(interrupt.status(), 2);
        assert_eq!(irq.read().unwrap(), 2);
    }
}
