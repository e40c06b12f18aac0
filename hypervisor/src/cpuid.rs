//! CPUID for each vCPU: KVM's supported set, with the topology leaves
//! rewritten so the guest sees `n` single-threaded cores in one package
//! and each vCPU sees its own APIC id.

use kvm_bindings::kvm_cpuid_entry2;

const LEAF_VENDOR: u32 = 0x0;
const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_PERF_MONITORING: u32 = 0xa;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_EXT_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_AMD_FEATURES: u32 = 0x8000_0001;
const LEAF_AMD_SIZE: u32 = 0x8000_0008;
const LEAF_AMD_TOPOLOGY: u32 = 0x8000_001e;

/// leaf 1 ECX: running under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// leaf 1 ECX: TSC deadline timer.
const ECX_TSC_DEADLINE: u32 = 1 << 24;
/// leaf 1 EDX: more than one logical processor per package.
const EDX_HTT: u32 = 1 << 28;
/// leaf 0x80000001 ECX: AMD legacy multi-core flag.
const ECX_AMD_CMP_LEGACY: u32 = 1 << 1;
/// CLFLUSH line size in 8-byte units (64 bytes).
const CLFLUSH_LINE_SIZE: u32 = 8;
/// KVM_CPUID_FLAG_SIGNIFCANT_INDEX: the entry depends on the subleaf in ECX.
const FLAG_SIGNIFICANT_INDEX: u32 = 1;
/// Topology level types in leaves 0xb/0x1f, ECX bits 8..15.
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// CPU vendor, which decides which topology leaves the guest reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    /// GenuineIntel.
    Intel,
    /// AuthenticAMD or HygonGenuine.
    Amd,
    /// Anything else: only the common leaves are adjusted.
    Other,
}

/// Reads the vendor from leaf 0.
pub fn vendor(entries: &[kvm_cpuid_entry2]) -> Vendor {
    let Some(leaf0) = entries.iter().find(|e| e.function == LEAF_VENDOR) else {
        return Vendor::Other;
    };
    let mut id = [0u8; 12];
    id[0..4].copy_from_slice(&leaf0.ebx.to_le_bytes());
    id[4..8].copy_from_slice(&leaf0.edx.to_le_bytes());
    id[8..12].copy_from_slice(&leaf0.ecx.to_le_bytes());
    match &id {
        b"GenuineIntel" => Vendor::Intel,
        b"AuthenticAMD" | b"HygonGenuine" => Vendor::Amd,
        _ => Vendor::Other,
    }
}

/// Options that come from KVM capabilities rather than from CPUID itself.
#[derive(Debug, Clone, Copy)]
pub struct CpuidOptions {
    /// KVM emulates the TSC-deadline timer (KVM_CAP_TSC_DEADLINE_TIMER).
    pub tsc_deadline: bool,
}

/// Bits needed to hold `count` distinct ids (ceil(log2(count))).
fn id_bits(count: u32) -> u32 {
    count.max(1).next_power_of_two().trailing_zeros()
}

fn topology_entry(function: u32, index: u32, apic_id: u32, cpus: u32) -> kvm_cpuid_entry2 {
    let (eax, ebx, ecx) = match index {
        // SMT level: one thread per core, no shift.
        0 => (0, 1, (LEVEL_SMT << 8) | index),
        // Core level: `cpus` cores, the package id starts above the core bits.
        1 => (id_bits(cpus), cpus, (LEVEL_CORE << 8) | index),
        // Terminating (invalid) level.
        _ => (0, 0, index),
    };
    kvm_cpuid_entry2 {
        function,
        index,
        flags: FLAG_SIGNIFICANT_INDEX,
        eax,
        ebx,
        ecx,
        edx: apic_id,
        ..Default::default()
    }
}

/// Rewrites `entries` (KVM's supported CPUID) for vCPU `cpu` of `cpus`.
pub fn configure(entries: &mut Vec<kvm_cpuid_entry2>, cpu: u8, cpus: u8, options: CpuidOptions) {
    let vendor = vendor(entries);
    let apic_id = u32::from(cpu);
    let cpus = u32::from(cpus.max(1));
    let max_basic = entries
        .iter()
        .find(|e| e.function == LEAF_VENDOR)
        .map_or(0, |e| e.eax);

    for entry in entries.iter_mut() {
        match entry.function {
            LEAF_FEATURES => {
                entry.ebx = (apic_id << 24) | (cpus << 16) | (CLFLUSH_LINE_SIZE << 8);
                entry.ecx |= ECX_HYPERVISOR;
                if options.tsc_deadline {
                    entry.ecx |= ECX_TSC_DEADLINE;
                }
                if cpus > 1 {
                    entry.edx |= EDX_HTT;
                } else {
                    entry.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                // EAX[31:26]: cores per package - 1; EAX[25:14]: logical
                // processors sharing this cache - 1 (all of them for L3).
                let level = (entry.eax >> 5) & 0x7;
                let sharing = if level >= 3 { cpus - 1 } else { 0 };
                entry.eax = (entry.eax & 0x3fff) | ((cpus - 1) << 26) | (sharing << 14);
            }
            // No virtual PMU is offered.
            LEAF_PERF_MONITORING => {
                entry.eax = 0;
                entry.ebx = 0;
                entry.ecx = 0;
                entry.edx = 0;
            }
            LEAF_AMD_FEATURES if vendor == Vendor::Amd => {
                if cpus > 1 {
                    entry.ecx |= ECX_AMD_CMP_LEGACY;
                } else {
                    entry.ecx &= !ECX_AMD_CMP_LEGACY;
                }
            }
            LEAF_AMD_SIZE if vendor == Vendor::Amd => {
                // ECX[15:12]: APIC id bits for cores; ECX[7:0]: cores - 1.
                entry.ecx = (id_bits(cpus) << 12) | (cpus - 1);
            }
            LEAF_AMD_TOPOLOGY if vendor == Vendor::Amd => {
                entry.eax = apic_id;
                // One thread per core (EBX[15:8] = 0), core id = APIC id.
                entry.ebx = apic_id & 0xff;
                entry.ecx = 0;
                entry.edx = 0;
            }
            _ => {}
        }
    }

    // The extended-topology leaves are rebuilt whole: KVM reports the
    // host's, which describe the host's packages, not ours.
    for leaf in [LEAF_EXT_TOPOLOGY, LEAF_EXT_TOPOLOGY_V2] {
        let present = entries.iter().any(|e| e.function == leaf);
        entries.retain(|e| e.function != leaf);
        if present || (leaf == LEAF_EXT_TOPOLOGY && max_basic >= LEAF_EXT_TOPOLOGY) {
            entries.extend((0..3).map(|index| topology_entry(leaf, index, apic_id, cpus)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    fn vendor_leaf(name: &[u8; 12], max_leaf: u32) -> kvm_cpuid_entry2 {
        let word = |i: usize| u32::from_le_bytes(name[i..i + 4].try_into().unwrap());
        entry(0, 0, [max_leaf, word(0), word(8), word(4)])
    }

    fn find(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> kvm_cpuid_entry2 {
        *entries
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap_or_else(|| panic!("leaf {function:#x}.{index} missing"))
    }

    const OPTIONS: CpuidOptions = CpuidOptions { tsc_deadline: true };

    fn intel() -> Vec<kvm_cpuid_entry2> {
        vec![
            vendor_leaf(b"GenuineIntel", 0xd),
            entry(1, 0, [0x906ea, 0x0010_0800, 0, EDX_HTT]),
            entry(4, 0, [0x121, 0, 0, 0]),
            entry(4, 3, [0x163, 0, 0, 0]),
            entry(0xa, 0, [0x0760_3804, 1, 2, 3]),
            entry(0xb, 0, [1, 2, 0x100, 7]),
        ]
    }

    #[test]
    fn vendor_is_read_from_leaf_zero() {
        assert_eq!(vendor(&intel()), Vendor::Intel);
        assert_eq!(vendor(&[vendor_leaf(b"AuthenticAMD", 0x10)]), Vendor::Amd);
        assert_eq!(vendor(&[]), Vendor::Other);
    }

    #[test]
    fn leaf1_reports_own_apic_id_and_cpu_count() {
        let mut entries = intel();

        configure(&mut entries, 2, 4, OPTIONS);

        let leaf1 = find(&entries, 1, 0);
        assert_eq!(leaf1.ebx >> 24, 2);
        assert_eq!((leaf1.ebx >> 16) & 0xff, 4);
        assert_ne!(leaf1.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(leaf1.ecx & ECX_TSC_DEADLINE, 0);
        assert_ne!(leaf1.edx & EDX_HTT, 0);
    }

    #[test]
    fn single_cpu_clears_htt() {
        let mut entries = intel();

        configure(&mut entries, 0, 1, OPTIONS);

        assert_eq!(find(&entries, 1, 0).edx & EDX_HTT, 0);
    }

    #[test]
    fn extended_topology_describes_one_thread_per_core() {
        let mut entries = intel();

        configure(&mut entries, 3, 4, OPTIONS);

        let smt = find(&entries, 0xb, 0);
        let core = find(&entries, 0xb, 1);
        let end = find(&entries, 0xb, 2);
        assert_eq!(
            (smt.eax, smt.ebx, smt.ecx >> 8 & 0xff, smt.edx),
            (0, 1, LEVEL_SMT, 3)
        );
        assert_eq!(
            (core.eax, core.ebx, core.ecx >> 8 & 0xff, core.edx),
            (2, 4, LEVEL_CORE, 3)
        );
        assert_eq!((end.ebx, end.ecx >> 8 & 0xff), (0, 0));
        assert_eq!(entries.iter().filter(|e| e.function == 0xb).count(), 3);
    }

    #[test]
    fn cache_leaf_reports_cores_and_l3_sharing() {
        let mut entries = intel();

        configure(&mut entries, 0, 2, OPTIONS);

        let l1 = find(&entries, 4, 0);
        let l3 = find(&entries, 4, 3);
        assert_eq!((l1.eax >> 26, (l1.eax >> 14) & 0xfff), (1, 0));
        assert_eq!((l3.eax >> 26, (l3.eax >> 14) & 0xfff), (1, 1));
        assert_eq!(l3.eax & 0x3fff, 0x163);
    }

    #[test]
    fn pmu_is_hidden() {
        let mut entries = intel();

        configure(&mut entries, 0, 1, OPTIONS);

        let pmu = find(&entries, 0xa, 0);
        assert_eq!([pmu.eax, pmu.ebx, pmu.ecx, pmu.edx], [0; 4]);
    }

    #[test]
    fn amd_core_count_leaves_are_set() {
        let mut entries = vec![
            vendor_leaf(b"AuthenticAMD", 0x7),
            entry(1, 0, [0; 4]),
            entry(0x8000_0001, 0, [0; 4]),
            entry(0x8000_0008, 0, [0x3030, 0, 0x7007, 0]),
            entry(0x8000_001e, 0, [9, 0x100, 1, 0]),
        ];

        configure(&mut entries, 1, 2, OPTIONS);

        assert_ne!(find(&entries, 0x8000_0001, 0).ecx & ECX_AMD_CMP_LEGACY, 0);
        assert_eq!(find(&entries, 0x8000_0008, 0).ecx, (1 << 12) | 1);
        let topo = find(&entries, 0x8000_001e, 0);
        assert_eq!((topo.eax, topo.ebx), (1, 1));
        assert!(
            entries.iter().all(|e| e.function != 0xb),
            "max basic leaf is below 0xb"
        );
    }

    #[test]
    fn id_bits_rounds_up() {
        assert_eq!([1, 2, 3, 4, 5, 8, 9].map(id_bits), [0, 1, 2, 2, 3, 3, 4]);
    }
}
