//! A VM: KVM objects, guest memory, devices, vCPU threads and the event
//! loop, from a [`VmConfig`] to an [`ExitStatus`].

use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use devices::bus::{Bus, BusError};
use devices::legacy::{self, Cmos, EventFdTrigger, ExitPort, SerialPort, I8042};
use devices::seccomp::{self, SeccompError, SeccompMode, ThreadRole};
use devices::{ExitReason, VmExitRequest};
use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use log::{debug, info, warn};
use vm_memory::{GuestMemory as _, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::signal::Killable;

use crate::boot::{self, BootError};
use crate::config::{ConsoleOutput, VmConfig};
use crate::console::ConsoleInput;
use crate::cpuid;
use crate::host::{self, HostKind};
use crate::layout::{KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};
use crate::memory::{create_guest_memory, GuestMemory, MemoryError};
use crate::signals::{self, SignalWatcher};
use crate::terminal::{self, RawTerminal};
use crate::vcpu::{Vcpu, VcpuContext, VcpuError};
use crate::virtio_devices::VirtioPlacer;
use fsredirect::ShareSpec;

/// Errors that stop a VM from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm does not exist.
    #[error("/dev/kvm does not exist: this host offers no KVM. Enable VT-x/AMD-V in the firmware and load the module (modprobe kvm_intel or kvm_amd)")]
    NoKvm,
    /// /dev/kvm is software-virtualized and the caller did not opt in.
    #[error(
        "{}. Only PVM-aware guest kernels run there; to try this kernel anyway, pass \
         --allow-software-kvm",
        host::software_kvm_notice(why)
    )]
    SoftwareKvm {
        /// How we know.
        why: String,
    },
    /// /dev/kvm exists but we may not open it.
    #[error("permission denied opening /dev/kvm: add your user to the kvm group (sudo usermod -aG kvm $USER, then log in again) or run as root")]
    KvmPermission,
    /// /dev/kvm could not be opened for another reason.
    #[error("cannot open /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// KVM lacks a capability we rely on.
    #[error("this KVM lacks the {0} capability, which the VMM needs")]
    MissingCapability(&'static str),
    /// The kernel image does not exist.
    #[error("kernel image {path} not found; {hint}")]
    KernelNotFound {
        /// The path that was tried.
        path: std::path::PathBuf,
        /// How to get one.
        hint: String,
    },
    /// The kernel or initrd path is not a regular file.
    #[error("{what} {path} is {found}, not a regular file; give the path of the image itself")]
    NotAFile {
        /// "kernel image" or "initrd".
        what: &'static str,
        /// The path given.
        path: std::path::PathBuf,
        /// What is there instead ("a directory", ...).
        found: &'static str,
    },
    /// A share's guest tree or store is unusable.
    #[error("share {tag}: {path} {problem}")]
    ShareDir {
        /// The share's tag.
        tag: String,
        /// The guest tree or store given.
        path: std::path::PathBuf,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// A share's guest tree or store cannot be examined (other than by being absent).
    #[error("share {tag}: {path} cannot be examined")]
    ShareDirUnreadable {
        /// The share's tag.
        tag: String,
        /// The guest tree or store given.
        path: std::path::PathBuf,
        /// What the host said.
        #[source]
        source: std::io::Error,
    },
    /// The initrd does not exist.
    #[error("initrd {path} not found; {hint}")]
    InitrdNotFound {
        /// The path that was tried.
        path: std::path::PathBuf,
        /// How to get one.
        hint: String,
    },
    /// A KVM ioctl on the VM failed.
    #[error("{what} failed")]
    Kvm {
        /// The operation.
        what: &'static str,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be set up.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The guest could not be prepared for boot.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// A vCPU could not be set up.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// Devices could not be placed on a bus.
    #[error("cannot place a device on a bus")]
    Bus(#[from] BusError),
    /// More virtio devices than interrupt lines.
    #[error("at most {0} virtio devices fit; remove some --share options")]
    TooManyDevices(usize),
    /// A share could not be served.
    #[error("cannot serve share {tag}")]
    Share {
        /// The share's tag.
        tag: String,
        /// What the file system reported.
        #[source]
        source: fsredirect::FsError,
    },
    /// A virtio-fs device could not be described.
    #[error(transparent)]
    FsDevice(#[from] devices::virtio::fs::FsDeviceError),
    /// A thread's seccomp filter could not be installed.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// A host resource (eventfd, thread, signal handler, epoll) failed.
    #[error("cannot {what}")]
    Host {
        /// What we tried.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

/// Result alias for VM operations.
pub type Result<T> = std::result::Result<T, VmError>;

/// How a VM ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    /// Why it stopped.
    pub reason: ExitReason,
    /// The exit code a process should return for it.
    pub code: i32,
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (exit code {})", self.reason, self.code)
    }
}

/// Maps a host I/O error to [`VmError::Host`] naming what was tried.
pub(crate) fn host_err(what: &'static str) -> impl FnOnce(std::io::Error) -> VmError {
    move |source| VmError::Host { what, source }
}

/// Maps a KVM error to [`VmError::Kvm`] naming the operation.
pub(crate) fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// A virtual machine, ready to run.
///
/// ```no_run
/// use hypervisor::{Vm, VmConfig};
///
/// let config = VmConfig::builder("build/guest/vmlinux")
///     .initrd("build/guest/initramfs.cpio.gz")
///     .cmdline("console=ttyS0 reboot=k panic=-1 fsr.scenario=exit fsr.arg=3")
///     .build()?;
/// let status = Vm::new(config)?.run()?;
/// assert_eq!(status.code, 3);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Vm {
    config: VmConfig,
    exit: VmExitRequest,
    handle_signals: bool,
    host_kind: Option<HostKind>,
}

impl Vm {
    /// Prepares to run the VM described by `config`.
    pub fn new(config: VmConfig) -> Result<Self> {
        let exit = VmExitRequest::new().map_err(host_err("create the exit eventfd"))?;
        Ok(Self {
            config,
            exit,
            handle_signals: true,
            host_kind: None,
        })
    }

    /// A handle that stops the VM from another thread:
    /// `handle.request(ExitReason::Signal(..))` or any other reason.
    pub fn exit_handle(&self) -> VmExitRequest {
        self.exit.clone()
    }

    /// Whether SIGTERM, SIGHUP and SIGINT stop the VM cleanly (default: yes).
    /// Programs with their own signal handling turn this off.
    pub fn handle_signals(mut self, enabled: bool) -> Self {
        self.handle_signals = enabled;
        self
    }

    /// The host kind found beforehand ([`host::detect`]) instead of probing it at
    /// [`Vm::run`]: for a caller that confines the process first, out of sight of `/sys`.
    pub fn host_kind(mut self, kind: HostKind) -> Self {
        self.host_kind = Some(kind);
        self
    }

    /// Boots the guest and runs it until it stops; returns how it ended.
    pub fn run(self) -> Result<ExitStatus> {
        let started = Instant::now();
        check_inputs(&self.config, None)?;
        let host_kind = self.host_kind.clone().unwrap_or_else(host::detect);
        let failure_hint: Arc<str> = match &host_kind {
            // Without /dev/kvm, opening it below names the problem.
            HostKind::Hardware | HostKind::NoKvm => "".into(),
            HostKind::SoftwareKvm { why } if !self.config.allow_software_kvm => {
                return Err(VmError::SoftwareKvm { why: why.clone() });
            }
            HostKind::SoftwareKvm { why } => {
                warn!("{}", host::software_kvm_notice(why));
                format!(". Likely cause: {}", host::software_kvm_notice(why)).into()
            }
        };
        let kvm = open_kvm()?;
        check_capabilities(&kvm)?;
        let vm_fd = create_vm(&kvm)?;
        let mem = create_guest_memory(self.config.mem_size)?;
        register_memory(&vm_fd, &mem)?;

        let machine = Machine::build(&vm_fd, &mem, &self.config, self.exit.clone())?;
        let full_cmdline = std::iter::once(self.config.cmdline.as_str())
            .chain(machine.cmdline.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ");
        debug!("kernel command line: {full_cmdline}");
        let cmdline = boot::parse_cmdline(&full_cmdline).map_err(BootError::Cmdline)?;
        let boot_info = boot::prepare(
            &mem,
            self.config.mem_size,
            &self.config.kernel,
            self.config.initrd.as_deref(),
            &cmdline,
            self.config.vcpus,
        )?;
        info!(
            "loaded {:?} kernel {} (entry {:#x}), {} MiB, {} vCPU(s)",
            boot_info.kernel.format,
            self.config.kernel.display(),
            boot_info.kernel.entry.0,
            self.config.mem_size >> 20,
            self.config.vcpus
        );

        let stop = Arc::new(AtomicBool::new(false));
        let ctx = VcpuContext {
            io_bus: Arc::new(machine.io_bus),
            mmio_bus: Arc::new(machine.mmio_bus),
            exit: self.exit.clone(),
            stop: stop.clone(),
            mem: mem.clone(),
            failure_hint,
            started,
        };
        let vcpus = create_vcpus(&kvm, &vm_fd, &self.config, &boot_info, &ctx)?;

        signals::install_kick_handler()
            .map_err(host_err("install the vCPU kick signal handler"))?;
        let mut events: EventManager<Box<dyn MutEventSubscriber + Send>> = EventManager::new()
            .map_err(|e| VmError::Host {
                what: "create the event loop",
                // The io::Error carries event-manager's error itself, for callers to downcast.
                source: std::io::Error::other(e),
            })?;
        events.add_subscriber(Box::new(ExitWatcher(self.exit.clone())));
        if self.handle_signals {
            let watcher = SignalWatcher::install(self.exit.clone())
                .map_err(host_err("install the SIGTERM/SIGHUP handlers"))?;
            events.add_subscriber(Box::new(watcher));
        }
        let stdin = std::io::stdin().as_raw_fd();
        let interactive = self.config.console_input && terminal::is_terminal(stdin);
        if self.config.console_input {
            events.add_subscriber(Box::new(ConsoleInput::new(
                stdin,
                machine.serial.clone(),
                machine.input_space,
                self.exit.clone(),
                interactive,
            )));
        }
        let raw_terminal = if interactive {
            match RawTerminal::enter(stdin) {
                Ok(guard) => Some(guard),
                Err(err) => {
                    warn!("cannot put the terminal in raw mode ({err}); line editing stays on");
                    None
                }
            }
        } else {
            None
        };
        if interactive {
            info!("console attached; type Ctrl-A then x to stop the VM");
        }

        let event_loop = spawn_event_loop(events, self.exit.clone(), self.config.seccomp)?;
        let threads = match spawn_vcpus(vcpus, &stop, self.config.seccomp) {
            Ok(threads) => threads,
            Err(err) => {
                self.exit.request(ExitReason::VcpuFailure);
                let _ = event_loop.join();
                return Err(err);
            }
        };
        // This thread only waits: it belongs to the caller, which the filters leave alone.
        if event_loop.join().is_err() {
            warn!("the event loop thread panicked");
            self.exit.request(ExitReason::VcpuFailure);
        }
        stop_vcpus(&stop, threads);
        drop(raw_terminal);
        let _ = std::io::stdout().flush();

        // The loop above only ends once a reason is recorded.
        let reason = self.exit.reason().unwrap_or(ExitReason::VcpuFailure);
        let status = ExitStatus {
            reason,
            code: reason.exit_code(),
        };
        info!("VM stopped: {status}");
        Ok(status)
    }
}

/// The devices and buses of one VM.
struct Machine {
    io_bus: Bus,
    mmio_bus: Bus,
    serial: Arc<Mutex<SerialPort<Box<dyn Write + Send>>>>,
    input_space: EventFd,
    /// Kernel parameters announcing the devices.
    cmdline: Vec<String>,
}

/// Writes to a caller-supplied shared writer.
struct SharedWriter(Arc<Mutex<dyn Write + Send>>);

impl Write for SharedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).flush()
    }
}

impl Machine {
    fn build(
        vm_fd: &VmFd,
        mem: &GuestMemory,
        config: &VmConfig,
        exit: VmExitRequest,
    ) -> Result<Self> {
        let serial_irq =
            EventFd::new(EFD_NONBLOCK).map_err(host_err("create the serial IRQ eventfd"))?;
        vm_fd
            .register_irqfd(&serial_irq, legacy::COM1_IRQ)
            .map_err(kvm_err("KVM_IRQFD for the serial port"))?;
        let input_space =
            EventFd::new(EFD_NONBLOCK).map_err(host_err("create the console eventfd"))?;
        let output: Box<dyn Write + Send> = match &config.console_output {
            ConsoleOutput::Stdout => Box::new(std::io::stdout()),
            ConsoleOutput::Writer(writer) => Box::new(SharedWriter(writer.clone())),
        };
        let serial = Arc::new(Mutex::new(SerialPort::new(
            serial_irq,
            input_space
                .try_clone()
                .map_err(host_err("clone the console eventfd"))?,
            output,
        )));

        let mut io_bus = Bus::new();
        io_bus.insert(
            serial.clone(),
            legacy::COM1_PORT.into(),
            legacy::COM1_LEN.into(),
        )?;
        let kbd_irq =
            EventFd::new(EFD_NONBLOCK).map_err(host_err("create the keyboard IRQ eventfd"))?;
        vm_fd
            .register_irqfd(&kbd_irq, legacy::I8042_KBD_IRQ)
            .map_err(kvm_err("KVM_IRQFD for the i8042"))?;
        io_bus.insert(
            Arc::new(Mutex::new(I8042::new(
                exit.clone(),
                EventFdTrigger(kbd_irq),
            ))),
            legacy::I8042_PORT.into(),
            legacy::I8042_LEN.into(),
        )?;
        io_bus.insert(
            Arc::new(Mutex::new(Cmos::new())),
            legacy::CMOS_PORT.into(),
            legacy::CMOS_LEN.into(),
        )?;
        io_bus.insert(
            Arc::new(Mutex::new(ExitPort::new(exit))),
            legacy::EXIT_PORT.into(),
            legacy::EXIT_PORT_LEN.into(),
        )?;
        let mut mmio_bus = Bus::new();
        let mut placer = VirtioPlacer::new(vm_fd, mem.clone(), config);
        for share in &config.shares {
            placer.place_share(&mut mmio_bus, share)?;
        }
        Ok(Self {
            io_bus,
            mmio_bus,
            serial,
            input_space,
            cmdline: placer.cmdline,
        })
    }
}

/// Checks everything the user gave (kernel, initrd, shares), then that this host can run the
/// guest, without changing anything: what [`Vm::run`] checks first. A program that prepares
/// something for the VM (such as the VMM creating its default share's folders, `creates`)
/// calls it before, so a mistake costs nothing.
pub fn preflight(config: &VmConfig, creates: Option<&ShareSpec>) -> Result<()> {
    check_inputs(config, creates)?;
    match host::detect() {
        HostKind::SoftwareKvm { why } if !config.allow_software_kvm => {
            Err(VmError::SoftwareKvm { why })
        }
        _ => Ok(()),
    }
}

/// The user's inputs, each named in the error with its fix; `creates` is a share whose
/// folders the caller makes once the checks pass.
fn check_inputs(config: &VmConfig, creates: Option<&ShareSpec>) -> Result<()> {
    check_boot_files(config)?;
    for share in &config.shares {
        if creates == Some(share) {
            continue;
        }
        check_share_dirs(share)?;
    }
    Ok(())
}

/// A share's guest tree must be an existing directory; its store, if it exists, too (a
/// missing store is made on first use).
fn check_share_dirs(share: &ShareSpec) -> Result<()> {
    let problem = |path: &std::path::Path, problem: String| VmError::ShareDir {
        tag: share.tag.clone(),
        path: path.to_path_buf(),
        problem,
    };
    let unreadable = |path: &std::path::Path, source| VmError::ShareDirUnreadable {
        tag: share.tag.clone(),
        path: path.to_path_buf(),
        source,
    };
    match std::fs::metadata(&share.dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(problem(
                &share.dir,
                "is not a directory; dir= takes the folder the guest sees".into(),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(problem(
                &share.dir,
                "does not exist; create it (mkdir -p) or check dir=".into(),
            ))
        }
        Err(source) => return Err(unreadable(&share.dir, source)),
    }
    if let Some(store) = &share.store {
        match std::fs::metadata(&store.root) {
            Ok(m) if !m.is_dir() => {
                return Err(problem(
                    &store.root,
                    "is not a directory; store= takes a folder (made on first use)".into(),
                ))
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(unreadable(&store.root, source)),
        }
    }
    Ok(())
}

/// The kernel and initrd exist, are files, and the kernel is a format we load.
fn check_boot_files(config: &VmConfig) -> Result<()> {
    let hint = || {
        if config
            .kernel
            .starts_with(crate::config::default_guest_dir())
        {
            "build the default guest image with guest-images/build-guest.sh".to_owned()
        } else {
            "check the path (the default guest image is built by guest-images/build-guest.sh)"
                .to_owned()
        }
    };
    if !config.kernel.exists() {
        return Err(VmError::KernelNotFound {
            path: config.kernel.clone(),
            hint: hint(),
        });
    }
    if let Some(kind) = not_a_file(&config.kernel) {
        return Err(VmError::NotAFile {
            what: "kernel image",
            path: config.kernel.clone(),
            found: kind,
        });
    }
    let mut kernel = std::fs::File::open(&config.kernel).map_err(|source| {
        VmError::Boot(BootError::OpenKernel {
            path: config.kernel.clone(),
            source,
        })
    })?;
    crate::boot::kernel::detect_format(&config.kernel, &mut kernel)?;
    if let Some(initrd) = &config.initrd {
        if !initrd.exists() {
            return Err(VmError::InitrdNotFound {
                path: initrd.clone(),
                hint: hint(),
            });
        }
        if let Some(kind) = not_a_file(initrd) {
            return Err(VmError::NotAFile {
                what: "initrd",
                path: initrd.clone(),
                found: kind,
            });
        }
    }
    Ok(())
}

/// What is at `path` if it is not a regular file (following symlinks).
fn not_a_file(path: &std::path::Path) -> Option<&'static str> {
    let meta = std::fs::metadata(path).ok()?;
    let kind = meta.file_type();
    if kind.is_file() {
        None
    } else if kind.is_dir() {
        Some("a directory")
    } else {
        Some("a special file")
    }
}

fn open_kvm() -> Result<Kvm> {
    Kvm::new().map_err(|err| match err.errno() {
        libc::ENOENT => VmError::NoKvm,
        libc::EACCES | libc::EPERM => VmError::KvmPermission,
        _ => VmError::OpenKvm(err),
    })
}

fn check_capabilities(kvm: &Kvm) -> Result<()> {
    for (cap, name) in [
        (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
        (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
        (Cap::Irqfd, "KVM_CAP_IRQFD"),
        (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
        (Cap::Pit2, "KVM_CAP_PIT2"),
        (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(VmError::MissingCapability(name));
        }
    }
    Ok(())
}

fn create_vm(kvm: &Kvm) -> Result<VmFd> {
    let vm_fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    vm_fd
        .set_tss_address(KVM_TSS_ADDRESS as usize)
        .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
    vm_fd
        .set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
        .map_err(kvm_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
    vm_fd
        .create_irq_chip()
        .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        // The PC speaker port (0x61) is emulated in the kernel too.
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm_fd.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
    Ok(vm_fd)
}

fn register_memory(vm_fd: &VmFd, mem: &GuestMemory) -> Result<()> {
    for (slot, region) in mem.iter().enumerate() {
        let region_desc = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which the
        // caller keeps alive (cloned into every vCPU context) for as long
        // as the VM can run; slots are distinct.
        unsafe { vm_fd.set_user_memory_region(region_desc) }
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

fn create_vcpus(
    kvm: &Kvm,
    vm_fd: &VmFd,
    config: &VmConfig,
    boot_info: &boot::BootInfo,
    ctx: &VcpuContext,
) -> Result<Vec<Vcpu>> {
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    let options = cpuid::CpuidOptions {
        tsc_deadline: kvm.check_extension(Cap::TscDeadlineTimer),
    };
    let mut vcpus = Vec::with_capacity(config.vcpus.into());
    for id in 0..config.vcpus {
        let fd = vm_fd
            .create_vcpu(u64::from(id))
            .map_err(kvm_err("KVM_CREATE_VCPU"))?;
        let mut entries = supported.as_slice().to_vec();
        cpuid::configure(&mut entries, id, config.vcpus, options);
        let cpuid = kvm_bindings::CpuId::from_entries(&entries).map_err(|_| VmError::Host {
            what: "build the CPUID table",
            source: std::io::Error::other("too many CPUID entries"),
        })?;
        let vcpu = Vcpu::new(id, fd, ctx.clone());
        vcpu.configure(&cpuid, boot_info)?;
        vcpus.push(vcpu);
    }
    Ok(vcpus)
}

/// Starts the event loop on its own thread, under the event-loop seccomp filter, and
/// returns once the filter is in place. The loop runs until an exit reason is recorded.
fn spawn_event_loop(
    mut events: EventManager<Box<dyn MutEventSubscriber + Send>>,
    exit: VmExitRequest,
    mode: SeccompMode,
) -> Result<JoinHandle<()>> {
    seccomp::spawn_confined(
        "event-loop".into(),
        move || seccomp::confine_current_thread(ThreadRole::EventLoop, mode),
        move || {
            while exit.reason().is_none() {
                if let Err(err) = events.run() {
                    warn!("event loop error: {err:?}");
                }
            }
        },
    )
    .map_err(|err| spawn_error("start the event loop", err))
}

/// A [`seccomp::SpawnError`] as a [`VmError`]: a filter that could not be installed, or a
/// thread that could not `what`.
fn spawn_error(what: &'static str, err: seccomp::SpawnError<SeccompError>) -> VmError {
    match err {
        seccomp::SpawnError::Confine(err) => VmError::Seccomp(err),
        seccomp::SpawnError::Spawn(source) => VmError::Host { what, source },
        seccomp::SpawnError::EndedAtStart => VmError::Host {
            what,
            source: std::io::Error::other("its thread ended at once"),
        },
    }
}

/// Starts one thread per vCPU, each of which installs its seccomp filter in mode `mode`
/// before its first KVM_RUN; returns once all have. If one cannot start, those already
/// running are stopped and joined before the error is returned.
fn spawn_vcpus(
    vcpus: Vec<Vcpu>,
    stop: &AtomicBool,
    mode: SeccompMode,
) -> Result<Vec<JoinHandle<()>>> {
    let mut threads = Vec::with_capacity(vcpus.len());
    for (id, vcpu) in vcpus.into_iter().enumerate() {
        let spawned = seccomp::spawn_confined(
            format!("vcpu{id}"),
            move || seccomp::confine_current_thread(ThreadRole::Vcpu, mode),
            move || vcpu.run(),
        );
        match spawned {
            Ok(thread) => threads.push(thread),
            Err(err) => {
                stop_vcpus(stop, threads);
                return Err(spawn_error("start a vCPU thread", err));
            }
        }
    }
    Ok(threads)
}

/// Tells every vCPU to stop and waits for them, kicking them out of
/// KVM_RUN until each thread has returned.
fn stop_vcpus(stop: &AtomicBool, threads: Vec<JoinHandle<()>>) {
    stop.store(true, Ordering::Release);
    for thread in threads {
        while !thread.is_finished() {
            // The kick sets immediate_exit, so even a signal that lands just
            // before KVM_RUN makes it return; repeat in case of a race.
            let _ = thread.kill(signals::kick_signal());
            std::thread::sleep(Duration::from_millis(1));
        }
        if thread.join().is_err() {
            warn!("a vCPU thread panicked");
        }
    }
}

/// Wakes the event loop when a stop is requested.
struct ExitWatcher(VmExitRequest);

impl MutEventSubscriber for ExitWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(err) = ops.add(Events::new(self.0.eventfd(), EventSet::IN)) {
            // Without it the loop would never wake: fail loudly and stop.
            log::error!("cannot watch the VM exit event: {err:?}");
            self.0.request(ExitReason::VcpuFailure);
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.0.eventfd().read();
    }
}
