//! The port-I/O and MMIO buses: address ranges mapped to devices.
//!
//! A vCPU exit names an absolute address; the bus finds the device whose
//! range holds it and hands the device the offset inside that range.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device reachable through a [`Bus`].
pub trait BusDevice: Send {
    /// Reads `data.len()` bytes at `offset` from the start of the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset` from the start of the device's range.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors from placing a device on a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The range is empty or wraps past the end of the address space.
    #[error("invalid bus range: base {base:#x}, length {len:#x}")]
    InvalidRange {
        /// First address of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// The range overlaps one that is already taken.
    #[error("bus range {base:#x}+{len:#x} overlaps the device already at {other_base:#x}+{other_len:#x}")]
    Overlap {
        /// First address of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
        /// First address of the range in the way.
        other_base: u64,
        /// Length of the range in the way.
        other_len: u64,
    },
}

/// Result alias for bus operations.
pub type Result<T> = std::result::Result<T, BusError>;

/// A shared, lockable device as stored on a bus.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

struct Slot {
    len: u64,
    device: SharedDevice,
}

/// An address space (port I/O or MMIO) with devices at non-overlapping ranges.
#[derive(Default)]
pub struct Bus {
    slots: BTreeMap<u64, Slot>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<_> = self
            .slots
            .iter()
            .map(|(base, slot)| format!("{base:#x}+{:#x}", slot.len))
            .collect();
        f.debug_struct("Bus").field("ranges", &ranges).finish()
    }
}

impl Bus {
    /// Creates an empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `device` at `[base, base + len)`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<()> {
        let end = base.checked_add(len).filter(|_| len > 0);
        let Some(end) = end else {
            return Err(BusError::InvalidRange { base, len });
        };
        // Only two neighbours can overlap: the last range starting before
        // `end`, which is the one that would contain or follow `base`.
        if let Some((&other_base, other)) = self.slots.range(..end).next_back() {
            if other_base + other.len > base {
                return Err(BusError::Overlap {
                    base,
                    len,
                    other_base,
                    other_len: other.len,
                });
            }
        }
        self.slots.insert(base, Slot { len, device });
        Ok(())
    }

    /// Finds the device holding `addr` and the offset of `addr` inside its range.
    fn resolve(&self, addr: u64, access_len: usize) -> Option<(&SharedDevice, u64)> {
        let (&base, slot) = self.slots.range(..=addr).next_back()?;
        let offset = addr - base;
        // The whole access must fall inside the device's range.
        let last = offset.checked_add(access_len as u64)?;
        (last <= slot.len).then_some((&slot.device, offset))
    }

    /// Reads from the device at `addr`; returns false when no device claims it.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((device, offset)) => {
                lock(device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Writes to the device at `addr`; returns false when no device claims it.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((device, offset)) => {
                lock(device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device, recovering from poisoning: a device whose previous user
/// panicked is still the best state we have, and the panic was reported there.
fn lock(device: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the last access it saw.
    #[derive(Default)]
    struct Recorder {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    fn recorder() -> (Arc<Mutex<Recorder>>, SharedDevice) {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let shared: SharedDevice = dev.clone();
        (dev, shared)
    }

    #[test]
    fn access_reaches_device_with_offset_inside_its_range() {
        let mut bus = Bus::new();
        let (dev, shared) = recorder();
        bus.insert(shared, 0x3f8, 8).unwrap();

        let mut data = [0u8; 1];
        assert!(bus.read(0x3fd, &mut data));
        assert!(bus.write(0x3f9, &[7]));

        assert_eq!(data, [5]);
        assert_eq!(dev.lock().unwrap().last_write, Some((1, vec![7])));
    }

    #[test]
    fn access_outside_every_range_is_unclaimed() {
        let mut bus = Bus::new();
        bus.insert(recorder().1, 0x3f8, 8).unwrap();

        assert!(!bus.read(0x3f7, &mut [0u8; 1]));
        assert!(!bus.write(0x400, &[0]));
    }

    #[test]
    fn access_straddling_the_end_of_a_range_is_unclaimed() {
        let mut bus = Bus::new();
        bus.insert(recorder().1, 0x70, 2).unwrap();

        assert!(!bus.read(0x71, &mut [0u8; 2]));
        assert!(bus.read(0x70, &mut [0u8; 2]));
    }

    #[test]
    fn overlapping_ranges_are_refused() {
        let mut bus = Bus::new();
        bus.insert(recorder().1, 0x60, 8).unwrap();

        let below = bus.insert(recorder().1, 0x5c, 5);
        let inside = bus.insert(recorder().1, 0x64, 1);

        assert!(matches!(
            below,
            Err(BusError::Overlap {
                other_base: 0x60,
                ..
            })
        ));
        assert!(matches!(
            inside,
            Err(BusError::Overlap {
                other_base: 0x60,
                ..
            })
        ));
        assert!(bus.insert(recorder().1, 0x68, 1).is_ok());
        assert!(bus.insert(recorder().1, 0x5f, 1).is_ok());
    }

    #[test]
    fn empty_or_wrapping_ranges_are_refused() {
        let mut bus = Bus::new();

        assert!(matches!(
            bus.insert(recorder().1, 0x10, 0),
            Err(BusError::InvalidRange { .. })
        ));
        assert!(matches!(
            bus.insert(recorder().1, u64::MAX, 2),
            Err(BusError::InvalidRange { .. })
        ));
    }
}
