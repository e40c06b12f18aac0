//! Loading the guest kernel (ELF `vmlinux` or `bzImage`) and the initrd.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{bzimage::BzImage, elf::Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemory as _};

use super::{BootError, Result};
use crate::layout::HIMEM_START;
use crate::memory::{low_ram_end, GuestMemory};

/// Kernel image formats we load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// An uncompressed ELF `vmlinux`: entered at its ELF entry point.
    Elf,
    /// A compressed `bzImage`: entered at its 64-bit entry, 0x200 past the load address.
    BzImage,
}

const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
/// "HdrS" at offset 0x202 marks the Linux boot protocol header.
const BZIMAGE_MAGIC_OFFSET: u64 = 0x202;
const BZIMAGE_MAGIC: [u8; 4] = *b"HdrS";
/// The 64-bit entry point of a bzImage is this far into the protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// xloadflags bit: the kernel has a 64-bit entry point.
const XLF_KERNEL_64: u16 = 1 << 0;
const PAGE_SIZE: u64 = 4096;

/// What loading the kernel produced.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// The format that was loaded.
    pub format: KernelFormat,
    /// Guest-physical address of the 64-bit entry point.
    pub entry: GuestAddress,
    /// First guest-physical address past the kernel image.
    pub end: u64,
    /// The bzImage setup header, to be copied into the zero page.
    pub setup_header: Option<setup_header>,
}

/// Tells the format of the kernel image at `path` from its magic numbers.
pub fn detect_format(path: &Path, file: &mut File) -> Result<KernelFormat> {
    // Up to four bytes at `offset`: fewer where the file ends first.
    let read_at = |file: &mut File, offset: u64| -> std::io::Result<Vec<u8>> {
        let mut magic = Vec::with_capacity(4);
        file.seek(SeekFrom::Start(offset))?;
        file.take(4).read_to_end(&mut magic)?;
        Ok(magic)
    };
    let io_err = |source| BootError::ReadKernel {
        path: path.to_owned(),
        source,
    };
    let head = read_at(file, 0).map_err(io_err)?;
    if head == ELF_MAGIC {
        return Ok(KernelFormat::Elf);
    }
    match read_at(file, BZIMAGE_MAGIC_OFFSET) {
        Ok(magic) if magic == BZIMAGE_MAGIC => Ok(KernelFormat::BzImage),
        Ok(_) | Err(_) => Err(BootError::UnknownKernelFormat {
            path: path.to_owned(),
            size: file.metadata().map(|m| m.len()).unwrap_or(0),
            head,
        }),
    }
}

/// Loads the kernel at `path` into guest memory.
pub fn load_kernel(mem: &GuestMemory, path: &Path) -> Result<LoadedKernel> {
    let mut file = File::open(path).map_err(|source| BootError::OpenKernel {
        path: path.to_owned(),
        source,
    })?;
    let format = detect_format(path, &mut file)?;
    let load_err = |source| BootError::LoadKernel {
        path: path.to_owned(),
        source,
    };
    let highmem = Some(GuestAddress(HIMEM_START));
    let loaded = match format {
        KernelFormat::Elf => Elf::load(mem, None, &mut file, highmem).map_err(load_err)?,
        KernelFormat::BzImage => BzImage::load(mem, None, &mut file, highmem).map_err(load_err)?,
    };
    let entry = match format {
        KernelFormat::Elf => loaded.kernel_load,
        KernelFormat::BzImage => {
            let header = loaded.setup_header.unwrap_or_default();
            if header.xloadflags & XLF_KERNEL_64 == 0 {
                return Err(BootError::No64BitEntry {
                    path: path.to_owned(),
                });
            }
            GuestAddress(loaded.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET)
        }
    };
    Ok(LoadedKernel {
        format,
        entry,
        end: loaded.kernel_end,
        setup_header: loaded.setup_header,
    })
}

/// Where an initrd was placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdPlacement {
    /// Guest-physical address of its first byte.
    pub addr: u64,
    /// Its size in bytes.
    pub size: u64,
}

/// Chooses where an initrd of `size` bytes goes: page-aligned at the top of
/// low RAM (and below `addr_max`, the kernel's limit), above the kernel.
pub fn place_initrd(size: u64, mem_size: u64, kernel_end: u64, addr_max: u64) -> Option<u64> {
    let top = low_ram_end(mem_size).min(addr_max.saturating_add(1));
    let addr = top.checked_sub(size)? & !(PAGE_SIZE - 1);
    (addr >= kernel_end).then_some(addr)
}

/// Loads the initrd at `path` into guest memory above the kernel.
pub fn load_initrd(
    mem: &GuestMemory,
    path: &Path,
    kernel_end: u64,
    addr_max: u64,
) -> Result<InitrdPlacement> {
    let mut file = File::open(path).map_err(|source| BootError::OpenInitrd {
        path: path.to_owned(),
        source,
    })?;
    let read_err = |source| BootError::ReadInitrd {
        path: path.to_owned(),
        source,
    };
    let size = file.metadata().map_err(read_err)?.len();
    let mem_size = mem.last_addr().0 + 1;
    let addr = place_initrd(size, mem_size, kernel_end, addr_max).ok_or_else(|| {
        BootError::InitrdTooLarge {
            path: path.to_owned(),
            size_mib: size.div_ceil(1 << 20),
        }
    })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|source| BootError::CopyInitrd {
            path: path.to_owned(),
            source,
        })?;
    Ok(InitrdPlacement { addr, size })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const MIB: u64 = 1 << 20;

    fn temp_file(bytes: &[u8]) -> (tempfile::NamedTempFile, File) {
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.write_all(bytes).unwrap();
        let file = File::open(tmp.path()).unwrap();
        (tmp, file)
    }

    #[test]
    fn elf_is_recognised_by_its_magic() {
        let (tmp, mut file) = temp_file(b"\x7fELF\x02\x01\x01\0\0\0\0\0");
        assert_eq!(
            detect_format(tmp.path(), &mut file).unwrap(),
            KernelFormat::Elf
        );
    }

    #[test]
    fn bzimage_is_recognised_by_its_header_magic() {
        let mut image = vec![0u8; 0x400];
        image[0x202..0x206].copy_from_slice(b"HdrS");
        let (tmp, mut file) = temp_file(&image);

        assert_eq!(
            detect_format(tmp.path(), &mut file).unwrap(),
            KernelFormat::BzImage
        );
    }

    #[test]
    fn a_file_shorter_than_a_header_is_refused_with_its_bytes_and_size() {
        for content in [&b""[..], b"\x7fE", b"abcdefgh"] {
            let (tmp, mut file) = temp_file(content);

            let err = detect_format(tmp.path(), &mut file).unwrap_err();

            let msg = err.to_string();
            assert!(
                matches!(&err, BootError::UnknownKernelFormat { head, .. } if head.len() == content.len().min(4)),
                "{msg}"
            );
            assert!(
                msg.contains(&format!("{} bytes long", content.len())),
                "{msg}"
            );
            assert!(!msg.contains("fill whole buffer"), "{msg}");
        }
    }

    #[test]
    fn other_files_are_refused_with_their_first_bytes() {
        let (tmp, mut file) = temp_file(b"#!/bin/sh\necho not a kernel\n");

        let err = detect_format(tmp.path(), &mut file).unwrap_err();

        let msg = err.to_string();
        assert!(matches!(err, BootError::UnknownKernelFormat { head, .. } if head == b"#!/b"));
        assert!(
            msg.contains("23 21 2f 62"),
            "message shows the magic: {msg}"
        );
    }

    #[test]
    fn initrd_goes_page_aligned_at_the_top_of_low_ram() {
        let addr = place_initrd(3 * MIB + 5, 128 * MIB, 20 * MIB, u64::from(u32::MAX));

        assert_eq!(addr, Some((125 * MIB - 4096) & !4095));
    }

    #[test]
    fn initrd_respects_the_kernels_address_limit() {
        let addr = place_initrd(MIB, 2048 * MIB, 20 * MIB, 0x37ff_ffff);

        assert_eq!(addr, Some(0x3800_0000 - MIB));
    }

    #[test]
    fn initrd_that_would_overlap_the_kernel_does_not_fit() {
        assert_eq!(place_initrd(100 * MIB, 128 * MIB, 30 * MIB, u64::MAX), None);
        assert_eq!(place_initrd(200 * MIB, 128 * MIB, 0, u64::MAX), None);
    }
}
