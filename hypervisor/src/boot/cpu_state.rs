//! The boot vCPU's registers for the Linux 64-bit entry point: long mode
//! with paging on, flat segments, `rsi` pointing at the zero page.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_sregs, Msrs};

use super::gdt::{self, CODE_SELECTOR, DATA_SELECTOR, TSS_SELECTOR};
use crate::layout::{BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, ZERO_PAGE_START};

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// Bit 1 of RFLAGS is reserved and always set.
const RFLAGS_RESERVED: u64 = 1 << 1;

/// General-purpose registers at the kernel's 64-bit entry point.
pub fn boot_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rflags: RFLAGS_RESERVED,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        // Boot protocol: rsi holds the address of struct boot_params.
        rsi: ZERO_PAGE_START,
        ..Default::default()
    }
}

/// Sets segments, descriptor tables and control registers for long mode
/// on top of the vCPU's current special registers.
pub fn configure_sregs(sregs: &mut kvm_sregs, cr3: u64) {
    let gdt = gdt::boot_gdt();
    let code = gdt::segment_from_descriptor(CODE_SELECTOR, gdt[1]);
    let data = gdt::segment_from_descriptor(DATA_SELECTOR, gdt[2]);
    let tss = gdt::segment_from_descriptor(TSS_SELECTOR, gdt[3]);

    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = (std::mem::size_of::<u64>() - 1) as u16;

    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    sregs.cr0 |= X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
    sregs.cr3 = cr3;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.efer |= EFER_LME | EFER_LMA;
}

/// The x87/SSE state at reset: default control word and MXCSR.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// MTRRs enabled (bit 11), default memory type write-back (6).
const MTRR_ENABLE_WRITE_BACK: u64 = (1 << 11) | 6;

/// Model-specific registers every vCPU starts with.
pub fn boot_msrs() -> Msrs {
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    let entries = [
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        entry(MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITE_BACK),
    ];
    // The list is far below KVM_MAX_MSR_ENTRIES, so this cannot fail.
    Msrs::from_entries(&entries).expect("boot MSR list fits a kvm_msrs")
}

/// Offsets of the local APIC's LVT LINT0 and LINT1 registers in `kvm_lapic_state`.
pub const APIC_LVT_LINT0: usize = 0x350;
/// See [`APIC_LVT_LINT0`].
pub const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Programs LINT0 as ExtINT (the legacy PIC) and LINT1 as NMI, as a BIOS
/// would, in the raw register page of a `kvm_lapic_state`.
pub fn configure_lapic_lint(regs: &mut [std::ffi::c_char; 1024]) {
    for (offset, mode) in [
        (APIC_LVT_LINT0, APIC_MODE_EXTINT),
        (APIC_LVT_LINT1, APIC_MODE_NMI),
    ] {
        let value = read_apic_reg(regs, offset);
        // Delivery mode lives in bits 8..10.
        write_apic_reg(regs, offset, (value & !0x700) | (mode << 8));
    }
}

fn read_apic_reg(regs: &[std::ffi::c_char; 1024], offset: usize) -> u32 {
    let bytes: [u8; 4] = std::array::from_fn(|i| regs[offset + i] as u8);
    u32::from_le_bytes(bytes)
}

fn write_apic_reg(regs: &mut [std::ffi::c_char; 1024], offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().into_iter().enumerate() {
        regs[offset + i] = byte as std::ffi::c_char;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_registers_follow_the_64_bit_boot_protocol() {
        let regs = boot_regs(0x100_0000);

        assert_eq!(regs.rip, 0x100_0000);
        assert_eq!(regs.rsi, ZERO_PAGE_START);
        assert_eq!(regs.rflags, 0x2);
    }

    #[test]
    fn sregs_enter_long_mode_with_paging() {
        let mut sregs = kvm_sregs::default();

        configure_sregs(&mut sregs, 0x9000);

        assert_eq!(sregs.cr3, 0x9000);
        assert_ne!(sregs.cr0 & X86_CR0_PG, 0);
        assert_ne!(sregs.cr0 & X86_CR0_PE, 0);
        assert_ne!(sregs.cr4 & X86_CR4_PAE, 0);
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!((sregs.cs.selector, sregs.cs.l), (CODE_SELECTOR, 1));
        assert_eq!(sregs.ss.selector, DATA_SELECTOR);
        assert_eq!(sregs.gdt.limit, 31);
    }

    #[test]
    fn fpu_starts_with_reset_control_words() {
        let fpu = boot_fpu();
        assert_eq!((fpu.fcw, fpu.mxcsr), (0x37f, 0x1f80));
    }

    #[test]
    fn msrs_enable_fast_strings_and_write_back_mtrrs() {
        let msrs = boot_msrs();
        let find = |index| {
            msrs.as_slice()
                .iter()
                .find(|e| e.index == index)
                .unwrap()
                .data
        };

        assert_eq!(find(MSR_IA32_MISC_ENABLE), MISC_ENABLE_FAST_STRING);
        assert_eq!(find(MSR_MTRR_DEF_TYPE), MTRR_ENABLE_WRITE_BACK);
    }

    #[test]
    fn lint0_is_extint_and_lint1_is_nmi() {
        let mut regs = [0 as std::ffi::c_char; 1024];
        write_apic_reg(&mut regs, APIC_LVT_LINT0, 0x0001_0000); // masked, fixed

        configure_lapic_lint(&mut regs);

        assert_eq!(read_apic_reg(&regs, APIC_LVT_LINT0), 0x0001_0700);
        assert_eq!(read_apic_reg(&regs, APIC_LVT_LINT1), 0x0000_0400);
    }
}
