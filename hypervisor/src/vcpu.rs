//! vCPUs: their boot state, their thread, and the exit loop that forwards
//! port-I/O and MMIO to the buses.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use devices::bus::Bus;
use devices::{ExitReason, VmExitRequest};
use kvm_bindings::{
    kvm_run, CpuId, KVM_INTERNAL_ERROR_EMULATION,
    KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES, KVM_SYSTEM_EVENT_CRASH,
    KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use log::{debug, error, info};
use vm_memory::{Bytes, GuestAddress};

use crate::boot::{cpu_state, BootInfo};
use crate::memory::GuestMemory;

/// Errors from setting up a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A KVM ioctl on the vCPU failed.
    #[error("vCPU {cpu}: {what} failed")]
    Kvm {
        /// The vCPU index.
        cpu: u8,
        /// The operation.
        what: &'static str,
        /// The error KVM returned.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// Result alias for vCPU setup.
pub type Result<T> = std::result::Result<T, VcpuError>;

/// What every vCPU thread shares.
#[derive(Clone)]
pub struct VcpuContext {
    /// The port-I/O bus.
    pub io_bus: Arc<Bus>,
    /// The MMIO bus.
    pub mmio_bus: Arc<Bus>,
    /// Where to report that the VM must stop.
    pub exit: VmExitRequest,
    /// Set by the VMM when vCPUs must leave their loop.
    pub stop: Arc<AtomicBool>,
    /// Guest memory, to show the instruction bytes of a failure.
    pub mem: GuestMemory,
    /// Added to failure reports: what to do on this host (may be empty).
    pub failure_hint: Arc<str>,
    /// When the VM started, for the first-entry log line.
    pub started: Instant,
}

/// A vCPU ready to run on its own thread.
pub struct Vcpu {
    id: u8,
    fd: VcpuFd,
    ctx: VcpuContext,
}

thread_local! {
    /// The running vCPU's `kvm_run` page, for the kick signal handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// Signal handler for the vCPU kick signal: makes the next (or current)
/// KVM_RUN return at once with EINTR.
pub extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    KVM_RUN.with(|run| {
        let run = run.get();
        if !run.is_null() {
            // SAFETY: the pointer is set only while this thread's VcpuFd (and
            // so its mmapped kvm_run page) is alive, and cleared before it
            // is dropped; a byte store is async-signal-safe.
            unsafe { std::ptr::write_volatile(&mut (*run).immediate_exit, 1) };
        }
    });
}

/// A clock of `clock_gettime(2)` in seconds (0 if it cannot be read): CLOCK_MONOTONIC, or
/// CLOCK_PROCESS_CPUTIME_ID for the CPU time of all this process's threads.
fn clock_secs(clock: libc::clockid_t) -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only into the timespec we pass.
    if unsafe { libc::clock_gettime(clock, &mut now) } != 0 {
        return 0.0;
    }
    now.tv_sec as f64 + now.tv_nsec as f64 * 1e-9
}

impl Vcpu {
    /// Wraps a created vCPU.
    pub fn new(id: u8, fd: VcpuFd, ctx: VcpuContext) -> Self {
        Self { id, fd, ctx }
    }

    fn kvm<T>(
        &self,
        what: &'static str,
        result: std::result::Result<T, kvm_ioctls::Error>,
    ) -> Result<T> {
        result.map_err(|source| VcpuError::Kvm {
            cpu: self.id,
            what,
            source,
        })
    }

    /// Sets CPUID, MSRs, FPU and LAPIC; the boot vCPU also gets the 64-bit
    /// entry state. Others wait for the guest's INIT/SIPI.
    pub fn configure(&self, cpuid: &CpuId, boot: &BootInfo) -> Result<()> {
        self.kvm("KVM_SET_CPUID2", self.fd.set_cpuid2(cpuid))?;
        self.kvm("KVM_SET_MSRS", self.fd.set_msrs(&cpu_state::boot_msrs()))?;
        self.kvm("KVM_SET_FPU", self.fd.set_fpu(&cpu_state::boot_fpu()))?;
        let mut lapic = self.kvm("KVM_GET_LAPIC", self.fd.get_lapic())?;
        cpu_state::configure_lapic_lint(&mut lapic.regs);
        self.kvm("KVM_SET_LAPIC", self.fd.set_lapic(&lapic))?;
        if self.id == 0 {
            let mut sregs = self.kvm("KVM_GET_SREGS", self.fd.get_sregs())?;
            cpu_state::configure_sregs(&mut sregs, boot.cr3);
            self.kvm("KVM_SET_SREGS", self.fd.set_sregs(&sregs))?;
            let regs = cpu_state::boot_regs(boot.kernel.entry.0);
            self.kvm("KVM_SET_REGS", self.fd.set_regs(&regs))?;
        }
        Ok(())
    }

    /// Runs the vCPU until the VM stops. Meant as a thread body, started under the vCPU
    /// seccomp filter (`vm::spawn_vcpus`).
    pub fn run(mut self) {
        KVM_RUN.with(|run| run.set(self.fd.get_kvm_run()));
        if self.id == 0 {
            // The start-up figure of the benchmarks (BENCHMARKS.md): they read the monotonic
            // clock before starting the VMM and compare it with this line's.
            info!(
                "vCPU 0: first KVM_RUN {:.3} ms after the VM started, {:.3} ms of CPU time \
                 since the process started (CLOCK_MONOTONIC {:.6} s)",
                self.ctx.started.elapsed().as_secs_f64() * 1e3,
                clock_secs(libc::CLOCK_PROCESS_CPUTIME_ID) * 1e3,
                clock_secs(libc::CLOCK_MONOTONIC)
            );
        }
        let reason = self.run_loop();
        KVM_RUN.with(|run| run.set(std::ptr::null_mut()));
        if let Some(reason) = reason {
            self.ctx.exit.request(reason);
        }
        debug!("vCPU {} stopped", self.id);
    }

    /// Returns why the VM must stop, or None when told to stop.
    fn run_loop(&mut self) -> Option<ExitReason> {
        let id = self.id;
        loop {
            if self.ctx.stop.load(Ordering::Acquire) {
                return None;
            }
            match self.fd.run() {
                Ok(VcpuExit::IoIn(port, data)) => {
                    if !self.ctx.io_bus.read(u64::from(port), data) {
                        data.fill(0xff);
                    }
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    self.ctx.io_bus.write(u64::from(port), data);
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    if !self.ctx.mmio_bus.read(addr, data) {
                        data.fill(0xff);
                    }
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    self.ctx.mmio_bus.write(addr, data);
                }
                Ok(VcpuExit::Shutdown) => {
                    info!("vCPU {id}: the guest shut down (triple fault or reset)");
                    return Some(ExitReason::GuestReset);
                }
                Ok(VcpuExit::SystemEvent(kind, _)) => {
                    return Some(match kind {
                        KVM_SYSTEM_EVENT_SHUTDOWN | KVM_SYSTEM_EVENT_RESET => {
                            ExitReason::GuestReset
                        }
                        KVM_SYSTEM_EVENT_CRASH => {
                            error!("vCPU {id}: the guest reported a crash");
                            ExitReason::VcpuFailure
                        }
                        other => {
                            error!("vCPU {id}: unexpected system event {other}");
                            ExitReason::VcpuFailure
                        }
                    });
                }
                Ok(VcpuExit::Hlt) => {
                    // With the in-kernel LAPIC, KVM handles HLT itself; an
                    // exit here means the vCPU can never wake again.
                    error!("vCPU {id}: halted with no way to wake up");
                    return Some(ExitReason::VcpuFailure);
                }
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    error!(
                        "vCPU {id}: KVM could not enter the guest (hardware entry failure reason \
                         {reason:#x} on host CPU {cpu}){}",
                        self.ctx.failure_hint
                    );
                    return Some(ExitReason::VcpuFailure);
                }
                Ok(VcpuExit::InternalError) => {
                    self.report_internal_error();
                    return Some(ExitReason::VcpuFailure);
                }
                Ok(other) => {
                    error!("vCPU {id}: unexpected exit {other:?}");
                    return Some(ExitReason::VcpuFailure);
                }
                Err(err) if err.errno() == libc::EINTR || err.errno() == libc::EAGAIN => {
                    // Kicked (or interrupted): clear the kick and re-check `stop`.
                    self.fd.set_kvm_immediate_exit(0);
                }
                Err(err) => {
                    error!("vCPU {id}: KVM_RUN failed: {err}{}", self.ctx.failure_hint);
                    return Some(ExitReason::VcpuFailure);
                }
            }
        }
    }

    /// Says what KVM could not handle, where, and which instruction it was.
    fn report_internal_error(&mut self) {
        let id = self.id;
        // SAFETY: after an InternalError exit the `internal` member of the
        // exit union is the one KVM filled in; `emulation_failure` shares
        // its layout prefix and is valid when suberror is EMULATION.
        let (internal, emulation) = unsafe {
            let run = self.fd.get_kvm_run();
            (
                run.__bindgen_anon_1.internal,
                run.__bindgen_anon_1.emulation_failure,
            )
        };
        let rip = self.fd.get_regs().map(|r| r.rip).ok();
        let mut bytes = None;
        if internal.suberror == KVM_INTERNAL_ERROR_EMULATION
            && emulation.flags & u64::from(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES) != 0
        {
            // SAFETY: the flag says KVM filled insn_size/insn_bytes.
            let insn = unsafe { emulation.__bindgen_anon_1.__bindgen_anon_1 };
            let len = usize::from(insn.insn_size).min(insn.insn_bytes.len());
            bytes = Some(insn.insn_bytes[..len].to_vec());
        }
        if bytes.is_none() {
            bytes = rip.and_then(|rip| self.instruction_bytes_at(rip));
        }
        let rip = rip.map_or("unknown".into(), |rip| format!("{rip:#x}"));
        let bytes = bytes.map_or("unreadable".into(), |b| {
            b.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        });
        let ndata = (internal.ndata as usize).min(internal.data.len());
        error!(
            "vCPU {id}: KVM internal error (suberror {}{}) at RIP {rip}, instruction bytes: \
             {bytes}; extra data {:x?}{}",
            internal.suberror,
            suberror_name(internal.suberror),
            &internal.data[..ndata],
            self.ctx.failure_hint
        );
    }

    /// Reads up to 15 bytes at guest-virtual `rip` through the vCPU's page tables.
    fn instruction_bytes_at(&self, rip: u64) -> Option<Vec<u8>> {
        let translation = self.fd.translate_gva(rip).ok()?;
        if translation.valid == 0 {
            return None;
        }
        let mut buf = [0u8; 15];
        // Stop at the page end: the next page may map elsewhere.
        let in_page = (4096 - (translation.physical_address & 0xfff)) as usize;
        let len = buf.len().min(in_page);
        self.ctx
            .mem
            .read_slice(&mut buf[..len], GuestAddress(translation.physical_address))
            .ok()?;
        Some(buf[..len].to_vec())
    }
}

fn suberror_name(suberror: u32) -> &'static str {
    match suberror {
        1 => ": instruction emulation failed",
        2 => ": exception while delivering an exception",
        3 => ": event delivery failed",
        4 => ": unexpected exit reason",
        _ => "",
    }
}
