//! The Intel MultiProcessor Specification (1.4) table: how a guest without
//! ACPI learns its CPUs, its IOAPIC and how ISA interrupts are wired.
//!
//! Layout at the EBDA: the 16-byte floating pointer structure, then the
//! configuration table header and its entries (one per CPU, the ISA bus,
//! the IOAPIC, one I/O interrupt per IOAPIC pin, two local interrupts).

use vm_memory::{Bytes, GuestAddress};

use super::{BootError, Result};
use crate::layout::{APIC_START, EBDA_START, IOAPIC_START};
use crate::memory::GuestMemory;

const FLOATING_POINTER_LEN: usize = 16;
const HEADER_LEN: usize = 44;
const PROCESSOR_ENTRY_LEN: usize = 20;
const SMALL_ENTRY_LEN: usize = 8;
/// MP spec revision 1.4.
const SPEC_REV: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
/// Number of IOAPIC input pins (KVM's in-kernel IOAPIC has 24).
pub const IOAPIC_PINS: u8 = 24;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const ISA_BUS_ID: u8 = 0;
/// Family 6 signature, FPU and APIC present: what the table reports per CPU
/// (Linux reads the real values from CPUID).
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;
/// Highest CPU count the table can describe: APIC ids are one byte and the
/// IOAPIC takes the id after the last CPU.
pub const MAX_CPUS: u8 = 254;

/// Builds the MP table bytes for `cpus` CPUs, to be placed at `base`.
pub fn build(cpus: u8, base: u64) -> Result<Vec<u8>> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(BootError::MpTableCpus(cpus));
    }
    let ioapic_id = cpus;
    let mut entries = Vec::new();
    for cpu in 0..cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTSTRAP } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
    }
    entries.extend_from_slice(&[ENTRY_BUS, ISA_BUS_ID]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    for pin in 0..IOAPIC_PINS {
        // Conforming polarity and trigger (flags 0); ISA IRQ n on pin n,
        // matching KVM's default GSI routing.
        entries.extend_from_slice(&[ENTRY_IO_INTERRUPT, INT_TYPE_INT, 0, 0]);
        entries.extend_from_slice(&[ISA_BUS_ID, pin, ioapic_id, pin]);
    }
    // LINT0 of every local APIC is ExtINT, LINT1 is NMI (0xff: all APICs).
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT, 0, 0]);
    entries.extend_from_slice(&[ISA_BUS_ID, 0, 0xff, 0]);
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI, 0, 0]);
    entries.extend_from_slice(&[ISA_BUS_ID, 0, 0xff, 1]);
    let entry_count = u16::from(cpus) + 1 + 1 + u16::from(IOAPIC_PINS) + 2;
    debug_assert_eq!(
        entries.len(),
        usize::from(cpus) * PROCESSOR_ENTRY_LEN
            + usize::from(entry_count - u16::from(cpus)) * SMALL_ENTRY_LEN
    );

    let table_addr = base + FLOATING_POINTER_LEN as u64;
    let table_len = HEADER_LEN + entries.len();
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&(table_len as u16).to_le_bytes());
    header.extend_from_slice(&[SPEC_REV, 0]); // checksum patched below
    header.extend_from_slice(b"FSRVMM  ");
    header.extend_from_slice(b"HYPERVISOR  ");
    header.extend_from_slice(&0u32.to_le_bytes()); // no OEM table
    header.extend_from_slice(&0u16.to_le_bytes());
    header.extend_from_slice(&entry_count.to_le_bytes());
    header.extend_from_slice(&(APIC_START as u32).to_le_bytes());
    header.extend_from_slice(&[0; 4]); // no extended table
    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut floating = Vec::with_capacity(FLOATING_POINTER_LEN);
    floating.extend_from_slice(b"_MP_");
    floating.extend_from_slice(&(table_addr as u32).to_le_bytes());
    floating.extend_from_slice(&[1, SPEC_REV, 0, 0, 0, 0, 0, 0]);
    floating[10] = checksum(&floating);

    floating.extend_from_slice(&table);
    Ok(floating)
}

/// The byte that makes `bytes` sum to zero.
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg()
}

/// Writes the MP table for `cpus` CPUs at the EBDA.
pub fn write(mem: &GuestMemory, cpus: u8) -> Result<()> {
    let bytes = build(cpus, EBDA_START)?;
    mem.write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(BootError::WriteMpTable)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    #[test]
    fn floating_pointer_points_at_a_valid_table() {
        let bytes = build(2, EBDA_START).unwrap();

        assert_eq!(&bytes[0..4], b"_MP_");
        assert_eq!(sum(&bytes[..16]), 0);
        let table_addr = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as u64;
        assert_eq!(table_addr, EBDA_START + 16);
        let table = &bytes[16..];
        assert_eq!(&table[0..4], b"PCMP");
        let len = u16::from_le_bytes(table[4..6].try_into().unwrap()) as usize;
        assert_eq!(len, table.len());
        assert_eq!(sum(table), 0);
    }

    #[test]
    fn one_processor_entry_per_cpu_and_only_cpu0_boots() {
        let bytes = build(3, EBDA_START).unwrap();
        let entries = &bytes[16 + HEADER_LEN..];

        let cpus: Vec<(u8, u8)> = entries
            .chunks(PROCESSOR_ENTRY_LEN)
            .take(3)
            .map(|e| {
                assert_eq!(e[0], ENTRY_PROCESSOR);
                (e[1], e[3])
            })
            .collect();

        assert_eq!(cpus, vec![(0, 3), (1, 1), (2, 1)]);
    }

    #[test]
    fn entry_count_matches_entries() {
        let bytes = build(4, EBDA_START).unwrap();
        let table = &bytes[16..];
        let count = u16::from_le_bytes(table[34..36].try_into().unwrap()) as usize;

        let mut seen = 0;
        let mut rest = &table[HEADER_LEN..];
        while !rest.is_empty() {
            let len = if rest[0] == ENTRY_PROCESSOR {
                PROCESSOR_ENTRY_LEN
            } else {
                SMALL_ENTRY_LEN
            };
            rest = &rest[len..];
            seen += 1;
        }

        assert_eq!(seen, count);
    }

    #[test]
    fn fits_in_the_ebda_for_the_most_cpus() {
        let bytes = build(MAX_CPUS, EBDA_START).unwrap();
        assert!(bytes.len() as u64 <= 0x10_0000 - EBDA_START);
    }

    #[test]
    fn zero_or_too_many_cpus_are_refused() {
        assert!(matches!(
            build(0, EBDA_START),
            Err(BootError::MpTableCpus(0))
        ));
        assert!(matches!(
            build(255, EBDA_START),
            Err(BootError::MpTableCpus(255))
        ));
    }
}
