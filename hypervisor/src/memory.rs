//! Guest RAM: which ranges exist, the E820 map the guest is told about, and
//! the vm-memory mapping that backs them.

use vm_memory::{GuestAddress, GuestMemory as _, GuestMemoryMmap, GuestMemoryRegion as _};

use crate::layout::{EBDA_START, HIMEM_START, MMIO_HOLE_START, RAM_ABOVE_4G_START};

/// Guest memory as the VMM uses it (no dirty-page tracking).
pub type GuestMemory = GuestMemoryMmap<()>;

/// Errors from setting up guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The host could not map the requested RAM.
    #[error("could not allocate {size_mib} MiB of guest memory")]
    Allocate {
        /// Requested size.
        size_mib: u64,
        /// What vm-memory reported.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
}

/// A type of E820 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum E820Kind {
    /// Usable RAM.
    Ram = 1,
    /// Reserved: the guest must not use it.
    Reserved = 2,
}

/// One entry of the E820 memory map given to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// First address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// What the range holds.
    pub kind: E820Kind,
}

/// The RAM ranges backing `mem_size` bytes: below the MMIO hole, and the
/// remainder above 4 GiB.
pub fn ram_ranges(mem_size: u64) -> Vec<(GuestAddress, u64)> {
    if mem_size <= MMIO_HOLE_START {
        vec![(GuestAddress(0), mem_size)]
    } else {
        vec![
            (GuestAddress(0), MMIO_HOLE_START),
            (GuestAddress(RAM_ABOVE_4G_START), mem_size - MMIO_HOLE_START),
        ]
    }
}

/// The E820 map for a guest with `mem_size` bytes of RAM.
///
/// Base memory stops at the EBDA (which holds the MP table and is reserved
/// up to 1 MiB, like the legacy BIOS area); high memory runs from 1 MiB to
/// the MMIO hole, and resumes above 4 GiB.
pub fn e820_map(mem_size: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820Kind::Ram,
        },
        E820Entry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820Kind::Reserved,
        },
    ];
    for (start, size) in ram_ranges(mem_size) {
        let end = start.0 + size;
        let start = start.0.max(HIMEM_START);
        if end > start {
            map.push(E820Entry {
                addr: start,
                size: end - start,
                kind: E820Kind::Ram,
            });
        }
    }
    map
}

/// Top of RAM below the MMIO hole: the highest place for the initrd.
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_HOLE_START)
}

/// Maps `mem_size` bytes of anonymous host memory as guest RAM.
pub fn create_guest_memory(mem_size: u64) -> Result<GuestMemory, MemoryError> {
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(mem_size)
        .into_iter()
        .map(|(addr, size)| (addr, size as usize))
        .collect();
    let mem = GuestMemoryMmap::from_ranges(&ranges).map_err(|source| MemoryError::Allocate {
        size_mib: mem_size >> 20,
        source,
    })?;
    for region in mem.iter() {
        advise_huge_pages(region.as_ptr(), region.len() as usize);
    }
    Ok(mem)
}

/// Asks for transparent huge pages on guest RAM: loading the kernel then faults in a few
/// 2 MiB pages instead of thousands of 4 KiB ones, which halved the VMM's CPU time up to the
/// first vCPU entry (11-14 ms to 7 ms with the standard guest, BENCHMARKS.md). Only a hint:
/// hosts with THP set to `never` keep small pages.
fn advise_huge_pages(addr: *mut u8, len: usize) {
    // SAFETY: madvise only changes how the kernel backs this mapping, which vm-memory made
    // and keeps alive; MADV_HUGEPAGE does not change its contents.
    let rc = unsafe { libc::madvise(addr.cast(), len, libc::MADV_HUGEPAGE) };
    if rc != 0 {
        log::debug!(
            "madvise(MADV_HUGEPAGE) on guest RAM failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn small_guest_has_one_ram_range() {
        assert_eq!(ram_ranges(128 * MIB), vec![(GuestAddress(0), 128 * MIB)]);
    }

    #[test]
    fn large_guest_ram_skips_the_mmio_hole() {
        let ranges = ram_ranges(5 * GIB);

        assert_eq!(
            ranges,
            vec![(GuestAddress(0), 3 * GIB), (GuestAddress(4 * GIB), 2 * GIB)]
        );
    }

    #[test]
    fn e820_reserves_the_ebda_and_bios_area() {
        let map = e820_map(128 * MIB);

        assert_eq!(
            map,
            vec![
                E820Entry {
                    addr: 0,
                    size: 0x9fc00,
                    kind: E820Kind::Ram
                },
                E820Entry {
                    addr: 0x9fc00,
                    size: 0x100000 - 0x9fc00,
                    kind: E820Kind::Reserved
                },
                E820Entry {
                    addr: 0x100000,
                    size: 127 * MIB,
                    kind: E820Kind::Ram
                },
            ]
        );
    }

    #[test]
    fn e820_has_no_ram_in_the_mmio_hole() {
        let map = e820_map(5 * GIB);

        let ram: Vec<_> = map.iter().filter(|e| e.kind == E820Kind::Ram).collect();
        assert_eq!(ram.len(), 3);
        assert_eq!(
            (ram[1].addr, ram[1].addr + ram[1].size),
            (HIMEM_START, 3 * GIB)
        );
        assert_eq!((ram[2].addr, ram[2].size), (4 * GIB, 2 * GIB));
        for entry in &map {
            let end = entry.addr + entry.size;
            assert!(end <= MMIO_HOLE_START || entry.addr >= RAM_ABOVE_4G_START);
        }
    }

    #[test]
    fn e820_ram_adds_up_to_guest_memory_minus_legacy_area() {
        for size in [64 * MIB, 3 * GIB, 3 * GIB + MIB, 6 * GIB] {
            let ram: u64 = e820_map(size)
                .iter()
                .filter(|e| e.kind == E820Kind::Ram)
                .map(|e| e.size)
                .sum();
            assert_eq!(
                ram,
                size - (HIMEM_START - EBDA_START),
                "guest of {size:#x} bytes"
            );
        }
    }

    #[test]
    fn guest_memory_is_mapped_at_the_expected_ranges() {
        let mem = create_guest_memory(64 * MIB).unwrap();

        assert_eq!(mem.num_regions(), 1);
        assert_eq!(mem.last_addr(), GuestAddress(64 * MIB - 1));
    }
}
