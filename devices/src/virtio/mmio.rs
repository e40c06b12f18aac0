//! The virtio-mmio transport, version 2 (virtio 1.2 §4.2.2), modern only.
//!
//! The transport validates everything the driver writes before it reaches
//! the device: feature negotiation, the status sequence (a state machine
//! that takes at most one step per status write), queue sizes and addresses
//! (inside guest memory, aligned) before the driver may mark a queue ready,
//! and nothing after DRIVER_OK but notifications, interrupt acks and a reset.

use std::collections::BTreeSet;
use std::sync::Arc;

use log::{info, warn};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE as ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER as DRIVER,
    VIRTIO_CONFIG_S_DRIVER_OK as DRIVER_OK, VIRTIO_CONFIG_S_FAILED as FAILED,
    VIRTIO_CONFIG_S_FEATURES_OK as FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET as NEEDS_RESET,
};
use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemory as _};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{
    ActivationContext, ActiveQueue, GuestMemory, MmioInterrupt, VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::bus::BusDevice;
use crate::warn_limited;

/// "virt" in little endian.
const MAGIC: u32 = 0x7472_6976;
/// virtio-mmio version 2: the modern interface.
const VERSION: u32 = 2;
/// Our vendor id ("FSRV"); drivers do not interpret it.
const VENDOR_ID: u32 = 0x5652_5346;
/// Offset of the device-specific configuration space.
const CONFIG_SPACE: u64 = VIRTIO_MMIO_CONFIG as u64;

/// The status bits of a driver that has negotiated its features.
const FEATURES_DONE: u32 = ACKNOWLEDGE | DRIVER | FEATURES_OK;

/// Where the device is in its life, as the driver moves it along with status
/// writes. Each state has exactly one status register value.
///
/// The driver sets one status bit at a time, in order: `Reset` -> `Acknowledged` ->
/// `DriverLoaded` -> `FeaturesOk` -> `Active` (or `ActivationFailed` if the device cannot
/// start). FAILED may be set in any state and leads to `Failed`; writing 0 resets from
/// any state. Every other write is refused and leaves the state as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeviceState {
    /// Status 0: waiting for the driver to notice the device.
    Reset,
    /// ACKNOWLEDGE: the driver has noticed the device.
    Acknowledged,
    /// ACKNOWLEDGE | DRIVER: the driver knows the device; it writes the features it accepts.
    DriverLoaded,
    /// ... | FEATURES_OK: the features are agreed; the driver sets up the queues.
    FeaturesOk,
    /// ... | DRIVER_OK: the device has the queues and serves them.
    Active,
    /// ... | DRIVER_OK | NEEDS_RESET: the device could not start; only a reset helps.
    ActivationFailed,
    /// The driver gave up (FAILED); nothing runs until a reset.
    Failed {
        /// The status register as the driver left it, FAILED included.
        status: u32,
    },
}

impl DeviceState {
    /// The status register in this state (without a NEEDS_RESET that an
    /// active device raises on its own).
    fn status(self) -> u32 {
        match self {
            Self::Reset => 0,
            Self::Acknowledged => ACKNOWLEDGE,
            Self::DriverLoaded => ACKNOWLEDGE | DRIVER,
            Self::FeaturesOk => FEATURES_DONE,
            Self::Active => FEATURES_DONE | DRIVER_OK,
            Self::ActivationFailed => FEATURES_DONE | DRIVER_OK | NEEDS_RESET,
            Self::Failed { status } => status,
        }
    }
}

/// A virtio device behind the MMIO transport, placed on the MMIO bus.
///
/// The guest drives it through a 4 KiB register window; the VMM forwards each access:
///
/// ```
/// use std::sync::Arc;
/// use devices::bus::BusDevice;
/// use devices::virtio::fs::VirtioFs;
/// use devices::virtio::{MmioInterrupt, MmioTransport};
/// use fuse_backend_rs::passthrough::{Config, PassthroughFs};
/// use vm_memory::{GuestAddress, GuestMemoryMmap};
/// use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
///
/// let tmp = tempfile::tempdir()?;
/// let config = Config {
///     root_dir: tmp.path().to_str().unwrap().to_owned(),
///     ..Default::default()
/// };
/// let fs: PassthroughFs<()> = PassthroughFs::new(config)?;
/// let device = VirtioFs::new("data", 1, Arc::new(fs))?;
/// let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)])?;
/// // The interrupt line: an eventfd the VMM registers with KVM as an irqfd.
/// let interrupt = Arc::new(MmioInterrupt::new(EventFd::new(EFD_NONBLOCK)?));
/// let mut transport = MmioTransport::new(device, mem, interrupt)?;
///
/// let mut magic = [0u8; 4];
/// transport.read(0x000, &mut magic);
/// assert_eq!(&magic, b"virt");
/// let mut device_id = [0u8; 4];
/// transport.read(0x008, &mut device_id);
/// assert_eq!(u32::from_le_bytes(device_id), 26, "virtio-fs");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct MmioTransport<D: VirtioDevice> {
    device: D,
    mem: GuestMemory,
    interrupt: Arc<MmioInterrupt>,
    state: DeviceState,
    device_features_select: u32,
    driver_features_select: u32,
    acked_features: u64,
    queue_select: u32,
    queues: Vec<Queue>,
    /// Per queue: the registers (QueueNum and the address halves, by offset) whose last
    /// write the queue did not take (an invalid size, a misaligned address). Such a queue
    /// is never made ready, so driver and device never disagree on its layout.
    refused_writes: Vec<BTreeSet<u32>>,
    kicks: Vec<EventFd>,
    config_generation: u32,
}

impl<D: VirtioDevice> std::fmt::Debug for MmioTransport<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device.device_type())
            .field("state", &self.state)
            .finish()
    }
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// Wraps `device`; `interrupt` carries its irqfd.
    pub fn new(
        device: D,
        mem: GuestMemory,
        interrupt: Arc<MmioInterrupt>,
    ) -> std::io::Result<Self> {
        let mut queues = Vec::new();
        let mut kicks = Vec::new();
        for &max in device.queue_max_sizes() {
            // A max size that is not a power of two is a bug of ours. The io::Error carries
            // virtio-queue's error itself, for callers to downcast.
            queues.push(Queue::new(max).map_err(std::io::Error::other)?);
            kicks.push(EventFd::new(EFD_NONBLOCK)?);
        }
        Ok(Self {
            device,
            mem,
            interrupt,
            state: DeviceState::Reset,
            device_features_select: 0,
            driver_features_select: 0,
            acked_features: 0,
            queue_select: 0,
            refused_writes: vec![BTreeSet::new(); queues.len()],
            queues,
            kicks,
            config_generation: 0,
        })
    }

    /// The eventfd of each queue, to register as an ioeventfd at
    /// [`Self::notify_offset`] with the queue index as datamatch.
    pub fn queue_kicks(&self) -> &[EventFd] {
        &self.kicks
    }

    /// Offset of the QueueNotify register inside the device's window.
    pub const fn notify_offset() -> u64 {
        VIRTIO_MMIO_QUEUE_NOTIFY as u64
    }

    /// The device behind the transport.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The current device status.
    pub fn status(&self) -> u32 {
        self.state.status()
    }

    fn read_register(&self, offset: u32) -> u32 {
        let queue = self.queues.get(self.queue_select as usize);
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC,
            VIRTIO_MMIO_VERSION => VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => {
                let features = self.device.features() | VIRTIO_F_VERSION_1;
                match self.device_features_select {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            VIRTIO_MMIO_QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            VIRTIO_MMIO_QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            VIRTIO_MMIO_STATUS => {
                let needs_reset = self.state == DeviceState::Active && self.device.needs_reset();
                self.status() | if needs_reset { NEEDS_RESET } else { 0 }
            }
            VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation,
            // No shared-memory regions: their length reads as all ones
            // (virtio 1.2 §4.2.2.1), so virtiofs does not look for a DAX window.
            VIRTIO_MMIO_SHM_LEN_LOW | VIRTIO_MMIO_SHM_LEN_HIGH => u32::MAX,
            VIRTIO_MMIO_SHM_BASE_LOW | VIRTIO_MMIO_SHM_BASE_HIGH => u32::MAX,
            _ => {
                warn_limited!("virtio-mmio: read of unknown or write-only register {offset:#x}");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u32, value: u32) {
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_select = value,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_select = value,
            VIRTIO_MMIO_DRIVER_FEATURES => self.write_driver_features(value),
            VIRTIO_MMIO_QUEUE_SEL => self.queue_select = value,
            VIRTIO_MMIO_QUEUE_NUM
            | VIRTIO_MMIO_QUEUE_READY
            | VIRTIO_MMIO_QUEUE_DESC_LOW
            | VIRTIO_MMIO_QUEUE_DESC_HIGH
            | VIRTIO_MMIO_QUEUE_AVAIL_LOW
            | VIRTIO_MMIO_QUEUE_AVAIL_HIGH
            | VIRTIO_MMIO_QUEUE_USED_LOW
            | VIRTIO_MMIO_QUEUE_USED_HIGH => self.write_queue_register(offset, value),
            VIRTIO_MMIO_QUEUE_NOTIFY => self.notify(value),
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(value),
            VIRTIO_MMIO_STATUS => self.set_status(value),
            VIRTIO_MMIO_SHM_SEL => {}
            _ => warn_limited!(
                "virtio-mmio: write of {value:#x} to unknown or read-only register {offset:#x}"
            ),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        // Features are negotiated after DRIVER and before FEATURES_OK.
        if self.state != DeviceState::DriverLoaded {
            warn_limited!(
                "virtio-mmio: driver features written in status {:#x}; ignored",
                self.status()
            );
            return;
        }
        let shift = match self.driver_features_select {
            0 => 0,
            1 => 32,
            _ => return,
        };
        self.acked_features &= !(0xffff_ffffu64 << shift);
        self.acked_features |= u64::from(value) << shift;
    }

    fn write_queue_register(&mut self, offset: u32, value: u32) {
        // Queues are set up after FEATURES_OK and before DRIVER_OK.
        if self.state != DeviceState::FeaturesOk {
            warn_limited!(
                "virtio-mmio: queue register {offset:#x} written in status {:#x}; ignored",
                self.status()
            );
            return;
        }
        let select = self.queue_select as usize;
        let Some(queue) = self.queues.get_mut(select) else {
            warn_limited!("virtio-mmio: queue register written with no such queue selected");
            return;
        };
        if queue.ready() && offset != VIRTIO_MMIO_QUEUE_READY {
            warn_limited!("virtio-mmio: queue reconfigured while ready; ignored");
            return;
        }
        match offset {
            VIRTIO_MMIO_QUEUE_NUM => {
                // virtio-queue keeps the old size on an invalid one; we
                // remember the driver's mistake and refuse to make the
                // queue ready, so both sides never disagree on its size.
                let valid = u16::try_from(value)
                    .ok()
                    .filter(|size| size.is_power_of_two() && *size <= queue.max_size());
                if let Some(size) = valid {
                    queue.set_size(size);
                }
                note_refused(&mut self.refused_writes[select], offset, valid.is_none());
            }
            VIRTIO_MMIO_QUEUE_DESC_LOW
            | VIRTIO_MMIO_QUEUE_DESC_HIGH
            | VIRTIO_MMIO_QUEUE_AVAIL_LOW
            | VIRTIO_MMIO_QUEUE_AVAIL_HIGH
            | VIRTIO_MMIO_QUEUE_USED_LOW
            | VIRTIO_MMIO_QUEUE_USED_HIGH => {
                let high = matches!(
                    offset,
                    VIRTIO_MMIO_QUEUE_DESC_HIGH
                        | VIRTIO_MMIO_QUEUE_AVAIL_HIGH
                        | VIRTIO_MMIO_QUEUE_USED_HIGH
                );
                let (low_part, high_part) = if high {
                    (None, Some(value))
                } else {
                    (Some(value), None)
                };
                let stored = match offset {
                    VIRTIO_MMIO_QUEUE_DESC_LOW | VIRTIO_MMIO_QUEUE_DESC_HIGH => {
                        queue.set_desc_table_address(low_part, high_part);
                        queue.desc_table()
                    }
                    VIRTIO_MMIO_QUEUE_AVAIL_LOW | VIRTIO_MMIO_QUEUE_AVAIL_HIGH => {
                        queue.set_avail_ring_address(low_part, high_part);
                        queue.avail_ring()
                    }
                    _ => {
                        queue.set_used_ring_address(low_part, high_part);
                        queue.used_ring()
                    }
                };
                // virtio-queue keeps the old address when the new one is
                // misaligned; remember that the driver's view differs.
                let stored_part = if high {
                    (stored >> 32) as u32
                } else {
                    stored as u32
                };
                note_refused(
                    &mut self.refused_writes[select],
                    offset,
                    stored_part != value,
                );
            }
            VIRTIO_MMIO_QUEUE_READY => {
                let refused_writes = !self.refused_writes[select].is_empty();
                if value == 1 && (refused_writes || !rings_in_memory(queue, &self.mem)) {
                    // The driver reads QueueReady back and sees 0.
                    warn_limited!(
                        "virtio-mmio: queue of size {} at desc {:#x} avail {:#x} used {:#x} is \
                         outside guest memory, misaligned or badly sized; not made ready",
                        queue.size(),
                        queue.desc_table(),
                        queue.avail_ring(),
                        queue.used_ring()
                    );
                    return;
                }
                queue.set_ready(value == 1);
            }
            _ => {}
        }
    }

    fn notify(&mut self, value: u32) {
        // Only reached when no ioeventfd is registered for this window.
        if self.state != DeviceState::Active {
            warn_limited!("virtio-mmio: notification before DRIVER_OK; ignored");
            return;
        }
        match self.kicks.get(value as usize) {
            Some(kick) => {
                let _ = kick.write(1);
            }
            None => {
                warn_limited!("virtio-mmio: notification for queue {value}, which does not exist")
            }
        }
    }

    /// A status write: the driver's request to move the device to another state.
    fn set_status(&mut self, new: u32) {
        if new == 0 {
            self.reset();
            return;
        }
        let old = self.status();
        if new & old != old {
            warn_limited!("virtio-mmio: status {new:#x} clears bits of {old:#x}; only a reset may");
            return;
        }
        let added = new & !old;
        if added & FAILED != 0 {
            self.fail();
            return;
        }
        match (self.state, added) {
            (DeviceState::Reset, ACKNOWLEDGE) => self.state = DeviceState::Acknowledged,
            (DeviceState::Acknowledged, DRIVER) => self.state = DeviceState::DriverLoaded,
            (DeviceState::DriverLoaded, FEATURES_OK) => self.accept_features(),
            (DeviceState::FeaturesOk, DRIVER_OK) => self.activate(),
            _ => warn_limited!(
                "virtio-mmio: illegal status transition {old:#x} -> {new:#x}; ignored"
            ),
        }
    }

    /// `DriverLoaded` -> `FeaturesOk`, if the driver accepted only features we offer,
    /// VERSION_1 among them. Otherwise the state stays and FEATURES_OK stays clear,
    /// which is how the driver learns that its choice was refused.
    fn accept_features(&mut self) {
        let offered = self.device.features() | VIRTIO_F_VERSION_1;
        if self.acked_features & !offered != 0 || self.acked_features & VIRTIO_F_VERSION_1 == 0 {
            warn!(
                "virtio-mmio: driver accepted features {:#x}, offered {offered:#x}; refused",
                self.acked_features
            );
            return;
        }
        self.state = DeviceState::FeaturesOk;
    }

    /// `FeaturesOk` -> `Active`: hands the ready queues to the device. If the device
    /// cannot start, `ActivationFailed`, and the driver is told with a config interrupt.
    fn activate(&mut self) {
        let queues: Vec<(usize, ActiveQueue)> = self
            .queues
            .iter()
            .zip(&self.kicks)
            .enumerate()
            .filter(|(_, (queue, _))| queue.ready())
            .filter_map(|(index, (queue, kick))| {
                let kick = kick.try_clone().ok()?;
                // The transport keeps its copy for register reads; the
                // device gets its own, already validated by is_valid().
                let mut queue = Queue::try_from(queue.state()).ok()?;
                queue.set_event_idx(self.acked_features & super::VIRTIO_RING_F_EVENT_IDX != 0);
                Some((index, ActiveQueue { queue, kick }))
            })
            .collect();
        let ctx = ActivationContext {
            mem: self.mem.clone(),
            queues,
            interrupt: self.interrupt.clone(),
            acked_features: self.acked_features,
        };
        match self.device.activate(ctx) {
            Ok(()) => {
                self.state = DeviceState::Active;
                info!(
                    "virtio-mmio: device type {} activated",
                    self.device.device_type()
                );
            }
            Err(err) => {
                warn!("virtio-mmio: activation failed: {err}; the device needs a reset");
                self.state = DeviceState::ActivationFailed;
                let _ = super::Interrupt::signal_config_change(self.interrupt.as_ref());
            }
        }
    }

    /// Any state -> `Failed`: the driver set FAILED. The device stops; the
    /// status keeps the bits it had, FAILED added.
    fn fail(&mut self) {
        warn!(
            "virtio-mmio: the driver gave up on the device (FAILED); it stays stopped until reset"
        );
        let status = self.status() | FAILED;
        self.stop_device(DeviceState::Failed { status });
    }

    /// Any state -> `Reset`: stops the device and forgets everything the driver set up.
    fn reset(&mut self) {
        self.stop_device(DeviceState::Reset);
        for queue in &mut self.queues {
            queue.reset();
        }
        self.refused_writes.iter_mut().for_each(BTreeSet::clear);
        for kick in &self.kicks {
            // Drop notifications that arrived for the old queues.
            let _ = kick.read();
        }
        self.acked_features = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.queue_select = 0;
        self.interrupt.clear();
    }

    /// Moves to `next`, a state in which the device does not run: if it is
    /// `Active`, the device is reset on the way.
    fn stop_device(&mut self, next: DeviceState) {
        if self.state == DeviceState::Active {
            self.device.reset();
        }
        self.state = next;
    }
}

/// Whether the descriptor table and both rings of `queue` lie wholly inside
/// one region of guest memory and are aligned (virtio 1.2 §2.7: 16, 2 and 4
/// bytes). virtio-queue's own is_valid() checks only where each range ends.
fn rings_in_memory(queue: &Queue, mem: &GuestMemory) -> bool {
    let size = u64::from(queue.size());
    let ranges = [
        (queue.desc_table(), 16 * size, 16),
        (queue.avail_ring(), 6 + 2 * size, 2),
        (queue.used_ring(), 6 + 8 * size, 4),
    ];
    ranges.iter().all(|&(addr, len, align)| {
        addr % align == 0 && mem.get_slice(GuestAddress(addr), len as usize).is_ok()
    })
}

impl<D: VirtioDevice> BusDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
            return;
        }
        // Registers are 32 bits wide and must be accessed as such (§4.2.2.2).
        match (u32::try_from(offset), <&mut [u8; 4]>::try_from(&mut *data)) {
            (Ok(reg), Ok(bytes)) if reg % 4 == 0 => {
                *bytes = self.read_register(reg).to_le_bytes();
            }
            _ => {
                warn_limited!(
                    "virtio-mmio: {}-byte read at {offset:#x}; registers are 4 bytes",
                    data.len()
                );
                data.fill(0);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            self.device.write_config(offset - CONFIG_SPACE, data);
            return;
        }
        match (u32::try_from(offset), <[u8; 4]>::try_from(data)) {
            (Ok(reg), Ok(bytes)) if reg % 4 == 0 => {
                self.write_register(reg, u32::from_le_bytes(bytes))
            }
            _ => warn_limited!(
                "virtio-mmio: {}-byte write at {offset:#x}; registers are 4 bytes",
                data.len()
            ),
        }
    }
}

impl<D: VirtioDevice> Drop for MmioTransport<D> {
    fn drop(&mut self) {
        self.stop_device(DeviceState::Reset);
    }
}

/// Records whether the last write of queue register `register` was refused.
fn note_refused(refused: &mut BTreeSet<u32>, register: u32, was_refused: bool) {
    if was_refused {
        refused.insert(register);
    } else {
        refused.remove(&register);
    }
}

#[cfg(test)]
mod tests;
