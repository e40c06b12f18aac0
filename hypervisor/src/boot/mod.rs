//! Everything written into the guest before its first instruction: kernel,
//! initrd, command line, zero page, MP table, page tables, GDT.

pub mod cpu_state;
pub mod gdt;
pub mod kernel;
pub mod mptable;
pub mod paging;
pub mod params;

use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use vm_memory::{Bytes, GuestAddress};

use crate::layout::{BOOT_GDT_START, BOOT_IDT_START, CMDLINE_MAX_SIZE, CMDLINE_START};
use crate::memory::{e820_map, GuestMemory};
pub use kernel::{KernelFormat, LoadedKernel};

/// Errors from preparing the guest for boot.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel image could not be opened.
    #[error("cannot open kernel image {path}")]
    OpenKernel {
        /// The kernel path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The kernel image could not be read.
    #[error("cannot read kernel image {path}")]
    ReadKernel {
        /// The kernel path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is neither ELF nor bzImage.
    #[error(
        "{path} is not a kernel image we can load ({size} bytes long, first bytes {}); give \
         an uncompressed ELF vmlinux or a bzImage",
        if head.is_empty() { "none".to_string() } else { hex(head) }
    )]
    UnknownKernelFormat {
        /// The kernel path.
        path: PathBuf,
        /// Its length.
        size: u64,
        /// Its first bytes (up to four).
        head: Vec<u8>,
    },
    /// linux-loader refused the image.
    #[error("cannot load kernel image {path}")]
    LoadKernel {
        /// The kernel path.
        path: PathBuf,
        /// What linux-loader reported.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// A bzImage without the 64-bit entry point.
    #[error("{path} is a bzImage without a 64-bit entry point (xloadflags lacks XLF_KERNEL_64); build a 64-bit kernel")]
    No64BitEntry {
        /// The kernel path.
        path: PathBuf,
    },
    /// The initrd could not be opened.
    #[error("cannot open initrd {path}")]
    OpenInitrd {
        /// The initrd path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The initrd could not be read.
    #[error("cannot read initrd {path}")]
    ReadInitrd {
        /// The initrd path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The initrd could not be copied into guest memory.
    #[error("cannot copy initrd {path} into guest memory")]
    CopyInitrd {
        /// The initrd path.
        path: PathBuf,
        /// Why.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// The initrd does not fit between the kernel and the top of low memory.
    #[error("initrd {path} ({size_mib} MiB) does not fit in guest memory above the kernel; give the VM more memory (--mem)")]
    InitrdTooLarge {
        /// The initrd path.
        path: PathBuf,
        /// Its size, rounded up.
        size_mib: u64,
    },
    /// The kernel command line is invalid or too long.
    #[error("invalid kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    /// The kernel command line could not be copied into guest memory.
    #[error("cannot write the kernel command line into guest memory")]
    WriteCmdline(#[source] linux_loader::loader::Error),
    /// More E820 entries than the zero page holds.
    #[error("{0} E820 entries do not fit in the zero page")]
    TooManyE820Entries(usize),
    /// The zero page could not be written.
    #[error("cannot write the zero page")]
    WriteBootParams(#[source] linux_loader::configurator::Error),
    /// The MP table cannot describe that many CPUs.
    #[error("the MP table describes 1 to {max} CPUs, not {0}", max = mptable::MAX_CPUS)]
    MpTableCpus(u8),
    /// The MP table could not be written.
    #[error("cannot write the MP table")]
    WriteMpTable(#[source] vm_memory::GuestMemoryError),
    /// Page tables, GDT or command line could not be written.
    #[error("cannot write boot data into guest memory")]
    WriteBootData(#[source] vm_memory::GuestMemoryError),
}

/// Result alias for boot preparation.
pub type Result<T> = std::result::Result<T, BootError>;

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// What the vCPUs need to know once memory is ready.
#[derive(Debug, Clone, Copy)]
pub struct BootInfo {
    /// The loaded kernel.
    pub kernel: LoadedKernel,
    /// CR3 for the identity map.
    pub cr3: u64,
}

/// Turns a command-line string into linux-loader's checked form; linux-loader's error says
/// what is wrong (in practice: the line does not fit in [`CMDLINE_MAX_SIZE`] bytes).
pub fn parse_cmdline(cmdline: &str) -> std::result::Result<Cmdline, linux_loader::cmdline::Error> {
    Cmdline::try_from(cmdline, CMDLINE_MAX_SIZE)
}

/// Loads kernel and initrd and writes every boot structure for `cpus` vCPUs.
pub fn prepare(
    mem: &GuestMemory,
    mem_size: u64,
    kernel_path: &Path,
    initrd_path: Option<&Path>,
    cmdline: &Cmdline,
    cpus: u8,
) -> Result<BootInfo> {
    let kernel = kernel::load_kernel(mem, kernel_path)?;
    let initrd_addr_max = kernel
        .setup_header
        .map(|h| u64::from(h.initrd_addr_max))
        .filter(|&max| max != 0)
        .unwrap_or(u64::from(u32::MAX));
    let initrd = initrd_path
        .map(|path| kernel::load_initrd(mem, path, kernel.end, initrd_addr_max))
        .transpose()?;

    // Checked before the copy, which would report a NUL byte only as "invalid command line".
    let cmdline_len = cmdline
        .as_cstring()
        .map_err(BootError::Cmdline)?
        .as_bytes()
        .len();
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline)
        .map_err(BootError::WriteCmdline)?;
    let params = params::build_boot_params(
        kernel.setup_header,
        &e820_map(mem_size),
        cmdline_len,
        initrd,
    )?;
    params::write_boot_params(mem, &params)?;
    mptable::write(mem, cpus)?;

    let gdt = gdt::boot_gdt();
    for (i, entry) in gdt.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + 8 * i as u64))
            .map_err(BootError::WriteBootData)?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(BootError::WriteBootData)?;
    let cr3 = paging::write_identity_map(mem).map_err(BootError::WriteBootData)?;
    Ok(BootInfo { kernel, cr3 })
}
