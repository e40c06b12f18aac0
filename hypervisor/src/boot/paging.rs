//! Identity-mapped page tables for the 64-bit boot entry: the first 4 GiB,
//! in 2 MiB pages, so the kernel, its boot data and the initrd are all
//! reachable before the kernel builds its own tables.

use vm_memory::{Bytes, GuestAddress};

use crate::layout::{PDE_START, PDPTE_START, PML4_START};
use crate::memory::GuestMemory;

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const HUGE_PAGE: u64 = 1 << 7;
/// Number of page directories, one per GiB mapped.
const PAGE_DIRECTORIES: u64 = 4;
const ENTRIES_PER_TABLE: u64 = 512;
const TWO_MIB: u64 = 2 << 20;
const PAGE_SIZE: u64 = 4096;

/// Writes the page tables; returns the value for CR3.
pub fn write_identity_map(mem: &GuestMemory) -> vm_memory::GuestMemoryResult<u64> {
    mem.write_obj(PDPTE_START | PRESENT | WRITABLE, GuestAddress(PML4_START))?;
    for dir in 0..PAGE_DIRECTORIES {
        let dir_addr = PDE_START + dir * PAGE_SIZE;
        mem.write_obj(
            dir_addr | PRESENT | WRITABLE,
            GuestAddress(PDPTE_START + dir * 8),
        )?;
        for entry in 0..ENTRIES_PER_TABLE {
            let phys = (dir * ENTRIES_PER_TABLE + entry) * TWO_MIB;
            mem.write_obj(
                phys | PRESENT | WRITABLE | HUGE_PAGE,
                GuestAddress(dir_addr + entry * 8),
            )?;
        }
    }
    Ok(PML4_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;

    /// Walks the tables the way the MMU does for a 2 MiB page.
    fn translate(mem: &GuestMemory, cr3: u64, virt: u64) -> Option<u64> {
        let mask = 0x000f_ffff_ffff_f000;
        let pml4e: u64 = mem
            .read_obj(GuestAddress(cr3 + ((virt >> 39) & 0x1ff) * 8))
            .ok()?;
        if pml4e & PRESENT == 0 {
            return None;
        }
        let pdpte: u64 = mem
            .read_obj(GuestAddress((pml4e & mask) + ((virt >> 30) & 0x1ff) * 8))
            .ok()?;
        if pdpte & PRESENT == 0 {
            return None;
        }
        let pde: u64 = mem
            .read_obj(GuestAddress((pdpte & mask) + ((virt >> 21) & 0x1ff) * 8))
            .ok()?;
        if pde & PRESENT == 0 || pde & HUGE_PAGE == 0 {
            return None;
        }
        Some((pde & !(TWO_MIB - 1) & mask) | (virt & (TWO_MIB - 1)))
    }

    #[test]
    fn first_four_gib_are_identity_mapped() {
        let mem = create_guest_memory(64 << 20).unwrap();

        let cr3 = write_identity_map(&mem).unwrap();

        for addr in [
            0u64,
            0x1000,
            0x100_0000,
            0x3fff_ffff,
            0xbfff_f000,
            0xffff_ffff,
        ] {
            assert_eq!(translate(&mem, cr3, addr), Some(addr), "address {addr:#x}");
        }
    }

    #[test]
    fn nothing_above_four_gib_is_mapped() {
        let mem = create_guest_memory(64 << 20).unwrap();

        let cr3 = write_identity_map(&mem).unwrap();

        assert_eq!(translate(&mem, cr3, 1 << 32), None);
    }
}
