//! Where things live in guest-physical memory.
//!
//! ```text
//! 0x0000_0500  GDT (4 entries)            0x0000_9000  PML4
//! 0x0000_0520  IDT (empty)                0x0000_a000  PDPT
//! 0x0000_7000  zero page (boot_params)    0x0000_b000  4 page directories (identity map of 4 GiB)
//! 0x0000_8ff0  boot stack top             0x0002_0000  kernel command line
//! 0x0009_fc00  MP table (EBDA, reserved)  0x0010_0000  kernel (high memory)
//! ...          initrd at the top of low RAM
//! 0xc000_0000  MMIO hole, 1 GiB (virtio-mmio windows from 0xd000_0000; IOAPIC, LAPIC)
//! 0x1_0000_0000 RAM above 4 GiB, when the guest has more than 3 GiB
//! ```

/// The boot GDT.
pub const BOOT_GDT_START: u64 = 0x500;
/// The boot IDT (one null entry: interrupts stay off until the kernel sets its own).
pub const BOOT_IDT_START: u64 = 0x520;
/// The Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// The top-level page table.
pub const PML4_START: u64 = 0x9000;
/// The page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// The first of four page directories mapping 4 GiB with 2 MiB pages.
pub const PDE_START: u64 = 0xb000;
/// The kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Longest command line the x86 kernel accepts (COMMAND_LINE_SIZE), including the NUL.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the Extended BIOS Data Area, where the MP table goes.
pub const EBDA_START: u64 = 0x9fc00;
/// Where high memory (and the kernel) starts.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole (no RAM there).
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// Size of the 32-bit MMIO hole.
pub const MMIO_HOLE_SIZE: u64 = 0x4000_0000;
/// First address above 4 GiB, where RAM resumes after the hole.
pub const RAM_ABOVE_4G_START: u64 = 0x1_0000_0000;
/// Start of the window where virtio-mmio devices are placed.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// Size of each virtio-mmio device's register window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// The IOAPIC's MMIO base.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// The local APIC's MMIO base.
pub const APIC_START: u64 = 0xfee0_0000;
/// Address KVM uses for the TSS of real-mode emulation on Intel (three pages).
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// Address KVM uses for its identity-map page on Intel (one page, just below the TSS).
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;
