//! The Linux zero page (`struct boot_params`).

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::GuestAddress;

use super::kernel::InitrdPlacement;
use super::{BootError, Result};
use crate::layout::{CMDLINE_START, ZERO_PAGE_START};
use crate::memory::{E820Entry, GuestMemory};

const BOOT_FLAG_MAGIC: u16 = 0xaa55;
const HDRS_MAGIC: u32 = 0x5372_6448;
/// "Undefined" boot loader id: we are not one of the registered loaders.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x100_0000;

/// Builds the zero page.
///
/// `header` is the bzImage's own setup header (kept as the protocol asks),
/// or `None` for an ELF kernel, where we fill in the fields Linux reads.
pub fn build_boot_params(
    header: Option<setup_header>,
    e820: &[E820Entry],
    cmdline_len: usize,
    initrd: Option<InitrdPlacement>,
) -> Result<boot_params> {
    let mut params = boot_params {
        hdr: header.unwrap_or_default(),
        ..Default::default()
    };
    params.hdr.boot_flag = BOOT_FLAG_MAGIC;
    params.hdr.header = HDRS_MAGIC;
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    if params.hdr.kernel_alignment == 0 {
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    }
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some(initrd) = initrd {
        params.hdr.ramdisk_image = initrd.addr as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
        params.ext_ramdisk_image = (initrd.addr >> 32) as u32;
        params.ext_ramdisk_size = (initrd.size >> 32) as u32;
    }
    if e820.len() > params.e820_table.len() {
        return Err(BootError::TooManyE820Entries(e820.len()));
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(e820) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            type_: entry.kind as u32,
        };
    }
    params.e820_entries = e820.len() as u8;
    Ok(params)
}

/// Writes the zero page where `rsi` will point.
pub fn write_boot_params(mem: &GuestMemory, params: &boot_params) -> Result<()> {
    let boot = BootParams::new::<boot_params>(params, GuestAddress(ZERO_PAGE_START));
    LinuxBootConfigurator::write_bootparams::<GuestMemory>(&boot, mem)
        .map_err(BootError::WriteBootParams)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::e820_map;

    #[test]
    fn elf_boot_params_carry_magic_cmdline_and_e820() {
        let e820 = e820_map(128 << 20);

        let params = build_boot_params(None, &e820, 42, None).unwrap();

        assert_eq!({ params.hdr.boot_flag }, 0xaa55);
        assert_eq!({ params.hdr.header }, 0x5372_6448);
        assert_eq!({ params.hdr.type_of_loader }, 0xff);
        assert_eq!({ params.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ params.hdr.cmdline_size }, 42);
        assert_eq!(params.e820_entries as usize, e820.len());
        let last = params.e820_table[e820.len() - 1];
        assert_eq!(
            ({ last.addr }, { last.size }, { last.type_ }),
            (0x10_0000, 127 << 20, 1)
        );
    }

    #[test]
    fn initrd_location_is_recorded() {
        let initrd = InitrdPlacement {
            addr: 0x700_0000,
            size: 0x12345,
        };

        let params = build_boot_params(None, &e820_map(128 << 20), 1, Some(initrd)).unwrap();

        assert_eq!({ params.hdr.ramdisk_image }, 0x700_0000);
        assert_eq!({ params.hdr.ramdisk_size }, 0x12345);
        assert_eq!({ params.ext_ramdisk_image }, 0);
    }

    #[test]
    fn bzimage_header_fields_are_kept() {
        let header = setup_header {
            setup_sects: 27,
            version: 0x20f,
            xloadflags: 0x7f,
            ..Default::default()
        };

        let params = build_boot_params(Some(header), &e820_map(128 << 20), 1, None).unwrap();

        assert_eq!(
            ({ params.hdr.setup_sects }, { params.hdr.version }),
            (27, 0x20f)
        );
        assert_eq!({ params.hdr.xloadflags }, 0x7f);
        assert_eq!({ params.hdr.type_of_loader }, 0xff);
    }
}
