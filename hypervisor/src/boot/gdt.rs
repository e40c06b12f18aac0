//! The boot GDT: flat 64-bit code, flat data and a TSS, as KVM segment
//! registers and as the descriptor bytes the guest sees in memory.

use kvm_bindings::kvm_segment;

/// Selector of the 64-bit code segment.
pub const CODE_SELECTOR: u16 = 0x08;
/// Selector of the data segment.
pub const DATA_SELECTOR: u16 = 0x10;
/// Selector of the TSS.
pub const TSS_SELECTOR: u16 = 0x18;

/// Descriptor flags (bits 52..55 of the descriptor, then access byte).
const CODE64_FLAGS: u16 = 0xa09b; // G, L; present, DPL0, code, exec/read, accessed
const DATA_FLAGS: u16 = 0xc093; // G, D/B; present, DPL0, data, read/write, accessed
const TSS_FLAGS: u16 = 0x808b; // G; present, DPL0, 64-bit busy TSS

/// Builds one 8-byte segment descriptor.
pub const fn descriptor(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    let flags = flags as u64;
    ((base & 0xff00_0000) << (56 - 24))
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << (48 - 16))
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The boot GDT: null, code, data, TSS.
pub fn boot_gdt() -> [u64; 4] {
    [
        0,
        descriptor(CODE64_FLAGS, 0, 0xfffff),
        descriptor(DATA_FLAGS, 0, 0xfffff),
        descriptor(TSS_FLAGS, 0, 0xfffff),
    ]
}

/// Decodes a descriptor into the segment register KVM loads for `selector`.
pub fn segment_from_descriptor(selector: u16, desc: u64) -> kvm_segment {
    let base = ((desc >> 16) & 0x00ff_ffff) | ((desc >> 32) & 0xff00_0000);
    let raw_limit = ((desc & 0xffff) | ((desc >> 32) & 0x000f_0000)) as u32;
    let granularity = ((desc >> 55) & 1) as u8;
    // With 4 KiB granularity the limit counts pages: the last byte is at
    // limit * 4096 + 4095.
    let limit = if granularity == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = ((desc >> 47) & 1) as u8;
    kvm_segment {
        base,
        limit,
        selector,
        type_: ((desc >> 40) & 0xf) as u8,
        present,
        dpl: ((desc >> 45) & 0x3) as u8,
        db: ((desc >> 54) & 1) as u8,
        s: ((desc >> 44) & 1) as u8,
        l: ((desc >> 53) & 1) as u8,
        g: granularity,
        avl: ((desc >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_is_64_bit_present_and_flat() {
        let seg = segment_from_descriptor(CODE_SELECTOR, boot_gdt()[1]);

        assert_eq!(
            (seg.l, seg.db, seg.present, seg.s, seg.dpl),
            (1, 0, 1, 1, 0)
        );
        assert_eq!(seg.type_, 0xb);
        assert_eq!((seg.base, seg.limit, seg.g), (0, 0xffff_ffff, 1));
        assert_eq!(seg.unusable, 0);
    }

    #[test]
    fn data_segment_is_writable_and_flat() {
        let seg = segment_from_descriptor(DATA_SELECTOR, boot_gdt()[2]);

        assert_eq!((seg.type_, seg.db, seg.l, seg.s), (0x3, 1, 0, 1));
        assert_eq!((seg.base, seg.limit), (0, 0xffff_ffff));
    }

    #[test]
    fn tss_is_a_system_segment() {
        let seg = segment_from_descriptor(TSS_SELECTOR, boot_gdt()[3]);

        assert_eq!((seg.type_, seg.s, seg.present), (0xb, 0, 1));
    }

    #[test]
    fn descriptor_round_trips_base_and_limit() {
        let desc = descriptor(0x4093, 0x1234_5678, 0xabcde);
        let seg = segment_from_descriptor(DATA_SELECTOR, desc);

        assert_eq!((seg.base, seg.limit, seg.g), (0x1234_5678, 0xabcde, 0));
    }

    #[test]
    fn null_descriptor_is_unusable() {
        assert_eq!(segment_from_descriptor(0, 0).unusable, 1);
    }
}
