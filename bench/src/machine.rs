//! What the benchmarks ran on: CPU, cores, memory, kernel and the kind of KVM host.

/// A description of the machine, for the report.
#[derive(Debug, Clone)]
pub struct Machine {
    /// CPU model name from /proc/cpuinfo.
    pub cpu: String,
    /// Online CPUs (what `nproc` prints).
    pub cpus: usize,
    /// Total memory, from /proc/meminfo.
    pub memory: String,
    /// Kernel release.
    pub kernel: String,
    /// The kind of KVM host (docs/architecture.md#host-kinds).
    pub host_kind: String,
    /// Load averages over 1, 5 and 15 minutes when probed (other work on the machine).
    pub load: String,
}

impl Machine {
    /// Reads /proc and /sys.
    pub fn probe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |name: &str| {
            cpuinfo
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        };
        let cpu = field("model name").unwrap_or_else(|| "unknown".into());
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                let kib: u64 = m
                    .lines()
                    .find(|l| l.starts_with("MemTotal:"))?
                    .split_whitespace()
                    .nth(1)?
                    .parse()
                    .ok()?;
                Some(format!("{:.1} GiB", kib as f64 / (1024.0 * 1024.0)))
            })
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let host_kind = match hypervisor::host::detect() {
            kind @ hypervisor::host::HostKind::SoftwareKvm { .. } => format!(
                "{}, so boot times come from the emulated VT-x test host (--boot)",
                kind.describe()
            ),
            kind => kind.describe(),
        };
        let load = std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" / "))
            .unwrap_or_else(|_| "unknown".into());
        Machine {
            cpu,
            cpus,
            memory,
            kernel,
            host_kind,
            load,
        }
    }
}
