//! The boot benchmark's floor: the least a KVM virtual machine monitor must do to boot a Linux
//! `vmlinux` with an initramfs to its `/init`.
//!
//! One vCPU (KVM's supported CPUID, and the two MSRs a BIOS leaves set that the guest is slower
//! without), one memory region, the in-kernel interrupt controllers and timer (described to
//! the guest by an MP table, as our VMM does), a serial port for the console, and the exit port
//! (a byte written to I/O port 0xf4 ends the VMM with that exit code, as with our VMM). Nothing
//! else: no other devices, no threads, no signal handling, no configuration checks. `./bench.sh --boot` starts it exactly as it starts our
//! VMM, so the difference between the two is what our VMM adds to a boot. It shares no code
//! with `hypervisor` on purpose: the floor must not inherit what it measures.
//!
//! ```text
//! floor-vmm --kernel vmlinux --initrd initramfs.cpio.gz --mem 128M --cmdline "console=ttyS0"
//! ```
//!
//! Exit status: the guest's exit code; 1 when the guest could not be booted or stopped
//! without one (the reason on standard error); 2 on bad arguments.

use std::fs::File;
use std::io::{Read, Write};
use std::process::ExitCode;

use kvm_bindings::{
    kvm_msr_entry, kvm_pit_config, kvm_regs, kvm_segment, kvm_userspace_memory_region, Msrs,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{Elf, KernelLoader};
use vm_memory::{
    Address, ByteValued, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion,
};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

mod mptable;

/// Guest-physical layout of what the VMM writes before the first instruction.
mod layout {
    /// Global descriptor table.
    pub const GDT: u64 = 0x500;
    /// An empty interrupt descriptor table (the kernel installs its own).
    pub const IDT: u64 = 0x520;
    /// The zero page: Linux's `boot_params`.
    pub const ZERO_PAGE: u64 = 0x7000;
    /// Initial stack pointer (the kernel switches stacks at once).
    pub const STACK: u64 = 0x8ff0;
    /// Page-map level 4; the PDPT and the page directory follow it.
    pub const PML4: u64 = 0x9000;
    /// The kernel command line.
    pub const CMDLINE: u64 = 0x20000;
    /// Longest command line written.
    pub const CMDLINE_MAX: usize = 4096;
    /// End of the low RAM the e820 map reports (the MP table and the BIOS area follow).
    pub const LOW_RAM_END: u64 = super::mptable::ADDRESS;
    /// Where the kernel's high memory, and so the e820 map's second range, starts.
    pub const HIGH_RAM: u64 = 0x10_0000;
    /// Guest memory above this is not offered (the 32-bit MMIO hole starts there).
    pub const MAX_MEM: u64 = 0xc000_0000;
    /// Where the TSS pages go: a hole KVM needs on Intel hosts.
    pub const TSS: usize = 0xfffb_d000;
}

/// I/O ports the floor serves; every other access is ignored (reads see 0xff).
mod ports {
    /// First register of the 16550 serial port (COM1).
    pub const COM1: u16 = 0x3f8;
    /// The exit port: a byte written here ends the VMM with it as the exit code.
    pub const EXIT: u16 = 0xf4;
    /// Interrupt line of COM1.
    pub const COM1_IRQ: u32 = 4;
}

/// What went wrong, with the step it happened in.
#[derive(Debug)]
struct Failure(String);

type Result<T> = std::result::Result<T, Failure>;

/// Adds the failed step to an error.
fn at<E: std::fmt::Display>(step: &'static str) -> impl Fn(E) -> Failure {
    move |e| Failure(format!("{step}: {e}"))
}

/// How to call the floor.
const USAGE: &str = "usage: floor-vmm --kernel VMLINUX [--initrd FILE] [--cmdline TEXT] \
                     [--mem SIZE] [--vcpus 1]   (SIZE: 128M, 1G; the floor runs one vCPU)";

/// What the command line asks for.
enum Request {
    /// Boot a guest.
    Boot(Args),
    /// Print the usage.
    Help,
}

/// The command line of the floor.
struct Args {
    kernel: String,
    initrd: Option<String>,
    cmdline: String,
    mem_bytes: u64,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> std::result::Result<Request, String> {
    let mut kernel = None;
    let mut initrd = None;
    let mut cmdline = "console=ttyS0 reboot=k panic=-1".to_owned();
    let mut mem_bytes = 128 << 20;
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| format!("{flag} needs a value (try --help)"))
        };
        match flag.as_str() {
            "--kernel" => kernel = Some(value()?),
            "--initrd" => initrd = Some(value()?),
            "--cmdline" => cmdline = value()?,
            "--mem" => mem_bytes = parse_mem(&value()?)?,
            "--vcpus" => {
                let vcpus = value()?;
                if vcpus != "1" {
                    return Err(format!("--vcpus {vcpus}: the floor runs one vCPU only"));
                }
            }
            "-h" | "--help" => return Ok(Request::Help),
            other => return Err(format!("unknown argument '{other}' (try --help)")),
        }
    }
    let kernel = kernel.ok_or("--kernel VMLINUX is required (try --help)")?;
    Ok(Request::Boot(Args {
        kernel,
        initrd,
        cmdline,
        mem_bytes,
    }))
}

/// `128M`, `1G` or a bare number of MiB.
fn parse_mem(text: &str) -> std::result::Result<u64, String> {
    let (digits, shift) = match text.as_bytes().last() {
        Some(b'M' | b'm') => (&text[..text.len() - 1], 20),
        Some(b'G' | b'g') => (&text[..text.len() - 1], 30),
        _ => (text, 20),
    };
    let bytes = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .filter(|b| (16 << 20..=layout::MAX_MEM).contains(b))
        .ok_or_else(|| format!("--mem {text}: give a size from 16M to 3G, like 128M"))?;
    Ok(bytes)
}

/// Raises the serial port's interrupt through an irqfd.
struct IrqLine(EventFd);

impl Trigger for IrqLine {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// `boot_params` as bytes for guest memory.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct ZeroPage(boot_params);

// SAFETY: `boot_params` is a plain C struct of integers and arrays of integers (bindgen output);
// every byte pattern is a valid value.
unsafe impl ByteValued for ZeroPage {}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Request::Boot(args)) => args,
        Ok(Request::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("floor-vmm: {e}");
            return ExitCode::from(2);
        }
    };
    match boot(&args) {
        Ok(code) => ExitCode::from(code),
        Err(Failure(e)) => {
            eprintln!("floor-vmm: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Boots the guest and runs it until it writes an exit code.
fn boot(args: &Args) -> Result<u8> {
    let kvm = Kvm::new().map_err(at("open /dev/kvm"))?;
    let vm = kvm.create_vm().map_err(at("KVM_CREATE_VM"))?;
    vm.set_tss_address(layout::TSS)
        .map_err(at("KVM_SET_TSS_ADDR"))?;
    vm.create_irq_chip().map_err(at("KVM_CREATE_IRQCHIP"))?;
    vm.create_pit2(kvm_pit_config::default())
        .map_err(at("KVM_CREATE_PIT2"))?;
    let mem = guest_memory(&vm, args.mem_bytes)?;
    let entry = load_guest(&mem, args)?;
    let vcpu = vm.create_vcpu(0).map_err(at("KVM_CREATE_VCPU"))?;
    setup_vcpu(&kvm, &vcpu, &mem, entry)?;
    // Non-blocking: the serial's trigger must never block the vCPU.
    let irq = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).map_err(at("eventfd"))?;
    vm.register_irqfd(&irq, ports::COM1_IRQ)
        .map_err(at("KVM_IRQFD"))?;
    let serial = Serial::new(IrqLine(irq), std::io::stdout());
    run(vcpu, serial)
}

/// One region of anonymous memory from guest address 0, registered with KVM.
fn guest_memory(vm: &VmFd, bytes: u64) -> Result<GuestMemoryMmap> {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), bytes as usize)])
        .map_err(at("map guest memory"))?;
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(at("guest memory address"))?;
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the region maps memory that `mem` owns and keeps mapped for as long as the
        // VM runs (`mem` lives until `boot` returns, after the last KVM_RUN).
        unsafe { vm.set_user_memory_region(region) }.map_err(at("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(mem)
}

/// Loads the kernel, initramfs, command line and zero page; returns the kernel's entry point.
fn load_guest(mem: &GuestMemoryMmap, args: &Args) -> Result<GuestAddress> {
    let mut kernel =
        File::open(&args.kernel).map_err(|e| Failure(format!("{}: {e}", args.kernel)))?;
    let loaded = Elf::load(mem, None, &mut kernel, Some(GuestAddress(layout::HIGH_RAM)))
        .map_err(|e| Failure(format!("load {} (an ELF vmlinux): {e}", args.kernel)))?;
    let mut params = ZeroPage::default();
    let hdr = &mut params.0.hdr;
    hdr.type_of_loader = 0xff;
    hdr.boot_flag = 0xaa55;
    hdr.header = 0x5372_6448; // "HdrS"
    hdr.kernel_alignment = 0x100_0000;
    if args.cmdline.len() >= layout::CMDLINE_MAX {
        return Err(Failure(format!(
            "the command line is {} bytes; at most {} fit",
            args.cmdline.len(),
            layout::CMDLINE_MAX - 1
        )));
    }
    let mut cmdline = args.cmdline.clone().into_bytes();
    cmdline.push(0);
    mem.write_slice(&cmdline, GuestAddress(layout::CMDLINE))
        .map_err(at("write the command line"))?;
    hdr.cmd_line_ptr = layout::CMDLINE as u32;
    hdr.cmdline_size = args.cmdline.len() as u32;
    if let Some(path) = &args.initrd {
        let mut image = Vec::new();
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut image))
            .map_err(|e| Failure(format!("{path}: {e}")))?;
        // At the top of memory, page aligned, clear of the kernel.
        let top = mem.last_addr().raw_value() + 1;
        let start = top
            .checked_sub(image.len() as u64)
            .map(|a| a & !0xfff)
            .filter(|&a| a >= loaded.kernel_end)
            .ok_or_else(|| Failure(format!("{path} does not fit in guest memory")))?;
        mem.write_slice(&image, GuestAddress(start))
            .map_err(at("write the initramfs"))?;
        hdr.ramdisk_image = start as u32;
        hdr.ramdisk_size = image.len() as u32;
    }
    let ram = [
        (0, layout::LOW_RAM_END),
        (layout::HIGH_RAM, mem.last_addr().raw_value() + 1),
    ];
    for (i, (start, end)) in ram.into_iter().enumerate() {
        params.0.e820_table[i] = boot_e820_entry {
            addr: start,
            size: end - start,
            type_: 1, // E820_RAM
        };
    }
    params.0.e820_entries = ram.len() as u8;
    mem.write_obj(params, GuestAddress(layout::ZERO_PAGE))
        .map_err(at("write the zero page"))?;
    mem.write_slice(&mptable::build(), GuestAddress(mptable::ADDRESS))
        .map_err(at("write the MP table"))?;
    Ok(loaded.kernel_load)
}

/// Puts the vCPU in 64-bit mode at the kernel's entry, with the zero page in RSI.
fn setup_vcpu(kvm: &Kvm, vcpu: &VcpuFd, mem: &GuestMemoryMmap, entry: GuestAddress) -> Result<()> {
    let mut cpuid = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(at("KVM_GET_SUPPORTED_CPUID"))?;
    for leaf in cpuid.as_mut_slice() {
        if leaf.function == 1 {
            // Running under a hypervisor; the in-kernel local APIC has the TSC-deadline timer.
            leaf.ecx |= (1 << 31) | (1 << 24);
        }
    }
    vcpu.set_cpuid2(&cpuid).map_err(at("KVM_SET_CPUID2"))?;
    // What a BIOS leaves set, and the guest is slower without: fast `rep movs`/`stos`
    // (IA32_MISC_ENABLE) and write-back memory by default (IA32_MTRR_DEF_TYPE).
    let msrs = Msrs::from_entries(&[
        kvm_msr_entry {
            index: 0x1a0,
            data: 1,
            ..Default::default()
        },
        kvm_msr_entry {
            index: 0x2ff,
            data: (1 << 11) | 6,
            ..Default::default()
        },
    ])
    .map_err(|e| Failure(format!("MSR list: {e:?}")))?;
    let set = vcpu.set_msrs(&msrs).map_err(at("KVM_SET_MSRS"))?;
    if set != msrs.as_slice().len() {
        return Err(Failure(format!("KVM_SET_MSRS set {set} of 2 MSRs")));
    }

    // Identity map of the first GiB with 2 MiB pages: PML4 -> PDPT -> one page directory.
    let pdpt = layout::PML4 + 0x1000;
    let pd = pdpt + 0x1000;
    let write = |value: u64, addr: u64| {
        mem.write_obj(value, GuestAddress(addr))
            .map_err(at("write the page tables"))
    };
    write(pdpt | 0x3, layout::PML4)?;
    write(pd | 0x3, pdpt)?;
    for i in 0..512u64 {
        write((i << 21) | 0x83, pd + i * 8)?; // present, writable, 2 MiB page
    }

    // Null, 64-bit code, data, and a TSS descriptor.
    let gdt: [u64; 4] = [
        0,
        0x00af_9b00_0000_ffff,
        0x00cf_9300_0000_ffff,
        0x008f_8b00_0000_ffff,
    ];
    for (i, entry) in gdt.iter().enumerate() {
        write(*entry, layout::GDT + i as u64 * 8)?;
    }
    write(0, layout::IDT)?;

    let mut sregs = vcpu.get_sregs().map_err(at("KVM_GET_SREGS"))?;
    let segment = |selector: u16, type_: u8, l: u8, db: u8| kvm_segment {
        base: 0,
        limit: 0xf_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db,
        s: u8::from(selector != 0x18),
        l,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    sregs.cs = segment(0x08, 0xb, 1, 0);
    let data = segment(0x10, 0x3, 0, 1);
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.tr = segment(0x18, 0xb, 0, 0);
    sregs.gdt.base = layout::GDT;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = layout::IDT;
    sregs.idt.limit = 7;
    sregs.cr3 = layout::PML4;
    sregs.cr4 |= 1 << 5; // PAE
    sregs.cr0 |= (1 << 31) | 1; // PG, PE
    sregs.efer |= (1 << 8) | (1 << 10); // LME, LMA
    vcpu.set_sregs(&sregs).map_err(at("KVM_SET_SREGS"))?;

    vcpu.set_regs(&kvm_regs {
        rip: entry.raw_value(),
        rsp: layout::STACK,
        rbp: layout::STACK,
        rsi: layout::ZERO_PAGE,
        rflags: 0x2,
        ..Default::default()
    })
    .map_err(at("KVM_SET_REGS"))?;

    // The local APIC passes the PIC's interrupts (LINT0: ExtINT) and NMIs (LINT1: NMI) on.
    let mut lapic = vcpu.get_lapic().map_err(at("KVM_GET_LAPIC"))?;
    let set_lvt = |lapic: &mut kvm_bindings::kvm_lapic_state, offset: usize, mode: u32| {
        let mut reg = [0u8; 4];
        for (b, r) in reg.iter_mut().zip(&lapic.regs[offset..offset + 4]) {
            *b = *r as u8;
        }
        let value = (u32::from_le_bytes(reg) & !0x700) | (mode << 8);
        for (r, b) in lapic.regs[offset..offset + 4]
            .iter_mut()
            .zip(value.to_le_bytes())
        {
            *r = b as _;
        }
    };
    set_lvt(&mut lapic, 0x350, 0x7); // LVT LINT0: ExtINT
    set_lvt(&mut lapic, 0x360, 0x4); // LVT LINT1: NMI
    vcpu.set_lapic(&lapic).map_err(at("KVM_SET_LAPIC"))?;
    Ok(())
}

/// Runs the vCPU until the guest writes to the exit port.
fn run<W: Write>(
    mut vcpu: VcpuFd,
    mut serial: Serial<IrqLine, vm_superio::serial::NoEvents, W>,
) -> Result<u8> {
    let com1 = ports::COM1..ports::COM1 + 8;
    loop {
        match vcpu.run().map_err(at("KVM_RUN"))? {
            VcpuExit::IoOut(ports::EXIT, data) => return Ok(data.first().copied().unwrap_or(0)),
            VcpuExit::IoOut(port, data) if com1.contains(&port) => {
                if let Some(&byte) = data.first() {
                    serial
                        .write((port - ports::COM1) as u8, byte)
                        .map_err(|e| Failure(format!("serial output: {e:?}")))?;
                }
            }
            VcpuExit::IoIn(port, data) if com1.contains(&port) => {
                data.fill(0);
                if let Some(byte) = data.first_mut() {
                    *byte = serial.read((port - ports::COM1) as u8);
                }
            }
            VcpuExit::IoIn(_, data) | VcpuExit::MmioRead(_, data) => data.fill(0xff),
            VcpuExit::IoOut(..) | VcpuExit::MmioWrite(..) => {}
            VcpuExit::Hlt => return Err(Failure("the guest halted without an exit code".into())),
            VcpuExit::Shutdown => {
                return Err(Failure(
                    "the guest shut down (reset or triple fault) without an exit code".into(),
                ))
            }
            other => return Err(Failure(format!("unexpected vCPU exit {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_take_units_and_refuse_the_absurd() {
        assert_eq!(parse_mem("128M"), Ok(128 << 20));
        assert_eq!(parse_mem("1G"), Ok(1 << 30));
        assert_eq!(parse_mem("64"), Ok(64 << 20));
        assert!(parse_mem("4G").unwrap_err().contains("--mem 4G"));
        assert!(parse_mem("1M").is_err());
        assert!(parse_mem("lots").is_err());
        assert!(parse_mem("99999999999999G").is_err());
    }

    #[test]
    fn arguments_name_what_is_wrong() {
        let parse = |words: &[&str]| parse_args(words.iter().map(|w| w.to_string()));

        assert!(matches!(parse(&["--help"]), Ok(Request::Help)));
        assert!(matches!(
            parse(&["--kernel", "k", "--vcpus", "1", "--mem", "64M"]),
            Ok(Request::Boot(Args { mem_bytes, .. })) if mem_bytes == 64 << 20
        ));
        assert!(parse(&["--kernel", "k", "--vcpus", "2"])
            .err()
            .is_some_and(|e| e.contains("--vcpus 2")));
        assert!(parse(&["--initrd", "i"])
            .err()
            .is_some_and(|e| e.contains("--kernel")));
        assert!(parse(&["--mem"])
            .err()
            .is_some_and(|e| e.contains("needs a value")));
    }

    #[test]
    fn the_zero_page_is_one_page() {
        assert_eq!(std::mem::size_of::<ZeroPage>(), 4096);
    }
}
