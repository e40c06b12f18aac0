//! What kind of KVM this host offers.
//!
//! On hardware-virtualization hosts (VT-x/AMD-V) guests run natively. A
//! software-virtualized KVM (the `kvm_pvm` module, or a /dev/kvm on a CPU
//! without vmx/svm) runs only PVM-aware guest kernels at full speed; an
//! ordinary Linux kernel crawls through KVM's instruction emulator there and
//! stops on instructions it lacks. We detect that and say so plainly.
//!
//! This is the one host-kind detection of the project: the VMM, the end-to-end tests (which
//! boot directly on a hardware-virtualization host and in the emulated VT-x test host
//! elsewhere) and the benchmarks all ask [`detect`].

use std::path::Path;

/// The kind of virtualization behind /dev/kvm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKind {
    /// VT-x or AMD-V: guests run natively.
    Hardware,
    /// A software KVM backend; `why` says how we know.
    SoftwareKvm {
        /// The evidence, e.g. "the kvm_pvm module is loaded".
        why: String,
    },
    /// No /dev/kvm at all (the KVM modules are not loaded, or this is a container without
    /// the device): opening it will say so.
    NoKvm,
}

impl HostKind {
    /// Whether guests run natively here.
    pub fn is_hardware(&self) -> bool {
        matches!(self, HostKind::Hardware)
    }

    /// A line for reports: what this host is, for guests.
    pub fn describe(&self) -> String {
        match self {
            HostKind::Hardware => "hardware-virtualization KVM (vmx/svm)".to_string(),
            HostKind::SoftwareKvm { why } => format!(
                "software-virtualized KVM ({why}): ordinary guest kernels run emulated here"
            ),
            HostKind::NoKvm => "no /dev/kvm".to_string(),
        }
    }
}

/// Classifies the host from what it exposes.
///
/// `pvm_loaded`: /sys/module/kvm_pvm exists; `kvm_present`: /dev/kvm exists; `cpu_flags`: the
/// `flags` line of /proc/cpuinfo (empty when unreadable).
pub fn classify(pvm_loaded: bool, kvm_present: bool, cpu_flags: &str) -> HostKind {
    if !kvm_present {
        return HostKind::NoKvm;
    }
    if pvm_loaded {
        return HostKind::SoftwareKvm {
            why: "the kvm_pvm module is loaded".into(),
        };
    }
    let has_flag = |name: &str| cpu_flags.split_whitespace().any(|flag| flag == name);
    if has_flag("vmx") || has_flag("svm") || cpu_flags.is_empty() {
        // An unreadable cpuinfo gives no evidence against hardware support.
        HostKind::Hardware
    } else {
        HostKind::SoftwareKvm {
            why: "the CPU has neither the vmx nor the svm flag".into(),
        }
    }
}

/// Detects the host kind of this machine.
pub fn detect() -> HostKind {
    let pvm_loaded = Path::new("/sys/module/kvm_pvm").exists();
    let kvm_present = Path::new("/dev/kvm").exists();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpuinfo
        .lines()
        .find(|line| line.starts_with("flags"))
        .and_then(|line| line.split_once(':'))
        .map(|(_, flags)| flags)
        .unwrap_or("");
    classify(pvm_loaded, kvm_present, flags)
}

/// What to tell a user whose host runs only software-virtualized KVM.
pub fn software_kvm_notice(why: &str) -> String {
    format!(
        "this host's /dev/kvm is software-virtualized ({why}): ordinary Linux guests run about \
         a thousand times slower here and stop on instructions KVM's emulator lacks. To boot real \
         guests on such a machine, run them inside the emulated VT-x test host: \
         ./run.sh in the source tree, or: cargo run --release -p e2e-tests --bin testhost -- \
         default-vm (see README.md)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvm_module_means_software_kvm() {
        let kind = classify(true, true, "fpu vmx sse2");
        assert!(matches!(kind, HostKind::SoftwareKvm { why } if why.contains("kvm_pvm")));
    }

    #[test]
    fn vmx_or_svm_means_hardware() {
        assert_eq!(
            classify(false, true, "fpu vme vmx sse2"),
            HostKind::Hardware
        );
        assert_eq!(classify(false, true, "fpu svm"), HostKind::Hardware);
    }

    #[test]
    fn no_virtualization_flag_means_software_kvm() {
        let kind = classify(false, true, "fpu vme hypervisor sse2 vmxnot");
        assert!(matches!(kind, HostKind::SoftwareKvm { why } if why.contains("vmx")));
    }

    #[test]
    fn no_dev_kvm_is_said_first() {
        assert_eq!(classify(true, false, "fpu vmx"), HostKind::NoKvm);
        assert_eq!(classify(false, false, ""), HostKind::NoKvm);
    }

    #[test]
    fn unreadable_cpuinfo_is_not_evidence() {
        assert_eq!(classify(false, true, ""), HostKind::Hardware);
    }
}
