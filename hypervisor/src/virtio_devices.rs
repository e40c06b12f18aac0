//! Placing virtio-mmio devices in the VM: one 4 KiB register window and one
//! interrupt line each, an ioeventfd per queue (a kick causes no exit to
//! user space) and an irqfd per device, announced to the guest on its
//! command line (`virtio_mmio.device=4K@BASE:IRQ`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use devices::bus::Bus;
use devices::seccomp::SeccompMode;
use devices::virtio::fs::{VirtioFs, WorkerConfinement};
use devices::virtio::{GuestMemory, MmioInterrupt, MmioTransport, VirtioDevice};
use fsredirect::{FsConfig, RedirectFs, ShareSpec};
use kvm_ioctls::{IoEventAddress, VmFd};
use log::info;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::layout::{VIRTIO_MMIO_SIZE, VIRTIO_MMIO_START};
use crate::vm::{host_err, kvm_err, VmError};
use crate::VmConfig;

/// Interrupt lines for virtio-mmio devices: the IOAPIC pins no legacy
/// device uses (4 is COM1, 8 the RTC, 12 the PS/2 mouse, 14/15 IDE).
pub const VIRTIO_IRQS: [u32; 15] = [5, 6, 7, 9, 10, 11, 13, 16, 17, 18, 19, 20, 21, 22, 23];

/// Where the guest mounts share `tag`.
pub fn mount_point(tag: &str) -> String {
    format!("/mnt/{tag}")
}

/// Hands out windows and interrupt lines, and collects command-line entries.
pub struct VirtioPlacer<'a> {
    vm_fd: &'a VmFd,
    mem: GuestMemory,
    seccomp: SeccompMode,
    file_handles: bool,
    fs_batch_poll: Duration,
    fs_request_pool: usize,
    next: usize,
    /// Kernel parameters announcing the devices placed so far.
    pub cmdline: Vec<String>,
}

impl<'a> VirtioPlacer<'a> {
    /// Starts placing devices in the VM behind `vm_fd`, as `config` says: its seccomp mode,
    /// whether shares reach inodes by file handle ([`crate::VmConfig::share_file_handles`]),
    /// how long their queues poll after a batch ([`crate::VmConfig::fs_batch_poll`]) and how
    /// many threads serve each request queue ([`crate::VmConfig::fs_request_pool`]).
    pub fn new(vm_fd: &'a VmFd, mem: GuestMemory, config: &VmConfig) -> Self {
        Self {
            vm_fd,
            mem,
            seccomp: config.seccomp,
            file_handles: config.share_file_handles,
            fs_batch_poll: config.fs_batch_poll,
            fs_request_pool: config.fs_request_pool,
            next: 0,
            cmdline: Vec::new(),
        }
    }

    /// Puts `device` behind a transport on `bus`, wired to KVM.
    pub fn place<D: VirtioDevice + 'static>(
        &mut self,
        bus: &mut Bus,
        device: D,
    ) -> Result<(), VmError> {
        let irq = *VIRTIO_IRQS
            .get(self.next)
            .ok_or(VmError::TooManyDevices(VIRTIO_IRQS.len()))?;
        let base = VIRTIO_MMIO_START + self.next as u64 * VIRTIO_MMIO_SIZE;
        let irq_evt = EventFd::new(EFD_NONBLOCK).map_err(host_err("create a virtio irqfd"))?;
        self.vm_fd
            .register_irqfd(&irq_evt, irq)
            .map_err(kvm_err("KVM_IRQFD for a virtio device"))?;
        let interrupt = Arc::new(MmioInterrupt::new(irq_evt));
        let transport = MmioTransport::new(device, self.mem.clone(), interrupt)
            .map_err(host_err("set up a virtio transport"))?;
        let notify = IoEventAddress::Mmio(base + MmioTransport::<D>::notify_offset());
        for (index, kick) in transport.queue_kicks().iter().enumerate() {
            self.vm_fd
                .register_ioevent(kick, &notify, index as u32)
                .map_err(kvm_err("KVM_IOEVENTFD for a virtio queue"))?;
        }
        bus.insert(Arc::new(Mutex::new(transport)), base, VIRTIO_MMIO_SIZE)?;
        self.cmdline
            .push(format!("virtio_mmio.device=4K@{base:#x}:{irq}"));
        self.next += 1;
        Ok(())
    }

    /// Adds a virtio-fs device serving `share` and asks the guest to mount it.
    pub fn place_share(&mut self, bus: &mut Bus, share: &ShareSpec) -> Result<(), VmError> {
        let fs_config = FsConfig {
            inode_file_handles: self.file_handles,
            ..FsConfig::default()
        };
        let fs = RedirectFs::new(share, fs_config).map_err(|source| VmError::Share {
            tag: share.tag.clone(),
            source,
        })?;
        // Landlock only where inodes are not opened by file handle: on the test host's 6.1
        // kernel a Landlock-limited worker opening by handle took a path it never takes
        // otherwise (an ioctl its filter forbids). See the README, "Containment".
        let beneath = if self.file_handles {
            Vec::new()
        } else {
            std::iter::once(share.dir.clone())
                .chain(share.store.as_ref().map(|store| store.root.clone()))
                .collect()
        };
        let confinement = WorkerConfinement {
            seccomp: self.seccomp,
            beneath,
        };
        let device = VirtioFs::confined(&share.tag, 1, Arc::new(fs), confinement)
            .map_err(VmError::FsDevice)?
            .with_batch_poll(self.fs_batch_poll)
            .with_request_pool(self.fs_request_pool)
            .map_err(VmError::FsDevice)?;
        self.place(bus, device)?;
        let mode = match &share.store {
            Some(store) => format!(
                "redirecting into {} (volume {})",
                store.root.display(),
                store.volume
            ),
            None => "passthrough".to_owned(),
        };
        let pool = match self.fs_request_pool {
            0 => String::new(),
            1 => ", its requests served by 1 pool thread".to_owned(),
            n => format!(", its requests served by {n} pool threads"),
        };
        info!(
            "share {}: {} {mode}, mounted in the guest at {}{pool}",
            share.tag,
            share.dir.display(),
            mount_point(&share.tag)
        );
        self.cmdline.push(format!(
            "fsr.share={}:{}",
            share.tag,
            mount_point(&share.tag)
        ));
        Ok(())
    }
}
