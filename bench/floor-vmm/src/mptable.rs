//! The smallest Intel MultiProcessor table that tells Linux where its interrupt controllers
//! are: one processor, an ISA bus, KVM's in-kernel I/O APIC with the 16 ISA interrupts wired
//! one to one, and the local APIC's LINT0 (ExtINT) and LINT1 (NMI). Without it Linux finds no
//! I/O APIC and routes device interrupts through the legacy PIC alone, a path our VMM's guests
//! never take; with it the floor's guest boots the way our VMM's does.
//!
//! Layout (MP specification 1.4): a 16-byte floating pointer, then the configuration table
//! (a 44-byte header and its entries), at the top of base memory where Linux looks for them.

/// Where the floating pointer goes: the last KiB of base memory (639 KiB), one of the places
/// Linux scans. The e820 map ends usable low RAM here.
pub const ADDRESS: u64 = 0x9fc00;

/// KVM's in-kernel I/O APIC.
const IOAPIC_ADDRESS: u32 = 0xfec0_0000;
/// The local APIC.
const LAPIC_ADDRESS: u32 = 0xfee0_0000;
/// I/O APIC id (after the one processor, id 0).
const IOAPIC_ID: u8 = 1;
/// The ISA bus's id.
const ISA_BUS: u8 = 0;

/// Entry types.
const PROCESSOR: u8 = 0;
const BUS: u8 = 1;
const IOAPIC: u8 = 2;
const IO_INTERRUPT: u8 = 3;
const LOCAL_INTERRUPT: u8 = 4;

/// Interrupt types of interrupt entries.
const INT: u8 = 0;
const NMI: u8 = 1;
const EXTINT: u8 = 3;

/// Byte whose addition makes `bytes` sum to zero modulo 256.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)))
}

/// The table's bytes, to be written at [`ADDRESS`].
pub fn build() -> Vec<u8> {
    let mut entries = Vec::new();
    // Processor 0: enabled, bootstrap, local APIC version 0x14, the CPU's signature unknown.
    entries.extend_from_slice(&[PROCESSOR, 0, 0x14, 0b11]);
    entries.extend_from_slice(&[0; 16]);
    // Bus 0: ISA.
    entries.extend_from_slice(&[BUS, ISA_BUS]);
    entries.extend_from_slice(b"ISA   ");
    // The I/O APIC: enabled, version 0x11.
    entries.extend_from_slice(&[IOAPIC, IOAPIC_ID, 0x11, 1]);
    entries.extend_from_slice(&IOAPIC_ADDRESS.to_le_bytes());
    // ISA IRQ n on I/O APIC pin n, bus-default polarity and trigger.
    for irq in 0..16u8 {
        entries.extend_from_slice(&[IO_INTERRUPT, INT, 0, 0, ISA_BUS, irq, IOAPIC_ID, irq]);
    }
    // LINT0: ExtINT from the PIC; LINT1: NMI; to every local APIC (0xff).
    entries.extend_from_slice(&[LOCAL_INTERRUPT, EXTINT, 0, 0, ISA_BUS, 0, 0xff, 0]);
    entries.extend_from_slice(&[LOCAL_INTERRUPT, NMI, 0, 0, ISA_BUS, 0, 0xff, 1]);
    let entry_count = 1 + 1 + 1 + 16 + 2u16;

    let table_address = ADDRESS as u32 + 16;
    let mut table = Vec::new();
    table.extend_from_slice(b"PCMP");
    let length = 44 + entries.len() as u16;
    table.extend_from_slice(&length.to_le_bytes());
    table.push(4); // specification revision 1.4
    table.push(0); // checksum, below
    table.extend_from_slice(b"FLOORVMM"); // OEM id
    table.extend_from_slice(b"BENCH       "); // product id
    table.extend_from_slice(&0u32.to_le_bytes()); // no OEM table
    table.extend_from_slice(&0u16.to_le_bytes());
    table.extend_from_slice(&entry_count.to_le_bytes());
    table.extend_from_slice(&LAPIC_ADDRESS.to_le_bytes());
    table.extend_from_slice(&[0; 4]); // no extended table, reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut pointer = Vec::new();
    pointer.extend_from_slice(b"_MP_");
    pointer.extend_from_slice(&table_address.to_le_bytes());
    pointer.push(1); // length in 16-byte units
    pointer.push(4); // revision 1.4
    pointer.push(0); // checksum, below
    pointer.extend_from_slice(&[0; 5]); // configuration table present; no IMCR
    pointer[10] = checksum(&pointer);

    pointer.extend_from_slice(&table);
    pointer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sums_to_zero(bytes: &[u8]) -> bool {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b)) == 0
    }

    #[test]
    fn both_parts_carry_valid_checksums_and_lengths() {
        let bytes = build();
        let (pointer, table) = bytes.split_at(16);

        assert_eq!(&pointer[..4], b"_MP_");
        assert!(sums_to_zero(pointer));
        assert_eq!(
            u32::from_le_bytes(pointer[4..8].try_into().unwrap()),
            ADDRESS as u32 + 16
        );
        assert_eq!(&table[..4], b"PCMP");
        assert!(sums_to_zero(table));
        assert_eq!(
            usize::from(u16::from_le_bytes([table[4], table[5]])),
            table.len()
        );
        assert_eq!(u16::from_le_bytes([table[34], table[35]]), 21);
    }

    #[test]
    fn it_fits_below_the_bios_area() {
        assert!(ADDRESS + build().len() as u64 <= 0xa0000);
    }
}
