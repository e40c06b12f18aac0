//! The VMM process itself: time from starting `hypervisor` to its first KVM_RUN, and its
//! resident memory beyond guest memory.
//!
//! Each run starts `hypervisor run -v` on the standard guest image with one redirecting
//! share, reads the host's monotonic clock just before the spawn, and takes the clock
//! reading the VMM logs at vCPU 0's first KVM_RUN. It then samples `/proc/PID/smaps` a few
//! times while the guest runs: the VMM's own memory is the proportional set size (PSS) of
//! every mapping except guest RAM (the one anonymous mapping of exactly the guest's size),
//! so shared libraries count by their share and guest pages never count. On a
//! software-virtualized `/dev/kvm` the run needs `--allow-software-kvm`; the guest is then
//! too slow to boot, but start-up and the VMM's own memory do not depend on it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::stats::median;
use crate::{BenchError, Result};

/// Guest memory of the measured VM, MiB.
pub const GUEST_MIB: u64 = 128;
/// How long memory is sampled after the first KVM_RUN.
const SAMPLE_FOR: Duration = Duration::from_millis(1500);
/// Time between memory samples.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// How long the VMM may take to reach its first KVM_RUN.
const START_LIMIT: Duration = Duration::from_secs(20);
/// The log line's marker and the clock reading that follows it.
const ENTRY_MARK: &str = "first KVM_RUN";
const CLOCK_MARK: &str = "CLOCK_MONOTONIC ";
const CPU_MARK: &str = " ms of CPU time";

/// What to start.
#[derive(Debug, Clone)]
pub struct VmmParams {
    /// The `hypervisor` binary.
    pub hypervisor: PathBuf,
    /// The guest kernel.
    pub kernel: PathBuf,
    /// The guest initramfs.
    pub initrd: PathBuf,
    /// Runs (medians reported).
    pub runs: usize,
}

/// Medians over the runs.
#[derive(Debug, Clone)]
pub struct VmmSummary {
    /// From just before spawning the process to vCPU 0's first KVM_RUN, ms.
    pub start_to_entry_ms: f64,
    /// The fastest run's start to first KVM_RUN, ms.
    pub start_to_entry_best_ms: f64,
    /// The same, as the VMM measured it from its own `Vm::run`, ms.
    pub vm_to_entry_ms: f64,
    /// CPU time of the VMM process (all threads) from exec to the first KVM_RUN, ms: its
    /// own work, which unlike wall time does not grow when the machine is busy.
    pub cpu_to_entry_ms: f64,
    /// The largest PSS sample outside guest RAM, MiB.
    pub pss_mib: f64,
    /// The largest RSS sample outside guest RAM, MiB (shared library pages in full).
    pub rss_mib: f64,
    /// Guest RAM resident at that sample, MiB (for reference; not counted).
    pub guest_rss_mib: f64,
    /// The exact command of one run.
    pub command: String,
    /// Runs the medians are taken over.
    pub runs: usize,
}

/// One run's figures.
#[derive(Debug, Clone, Copy, Default)]
struct VmmRun {
    start_to_entry_ms: f64,
    vm_to_entry_ms: f64,
    cpu_to_entry_ms: f64,
    pss_mib: f64,
    rss_mib: f64,
    guest_rss_mib: f64,
}

/// Memory of one process split into guest RAM and everything else, KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MemSplit {
    /// PSS outside guest RAM.
    pub other_pss_kib: u64,
    /// RSS outside guest RAM.
    pub other_rss_kib: u64,
    /// RSS of guest RAM.
    pub guest_rss_kib: u64,
}

/// Why this part cannot run here, if it cannot.
pub fn unavailable(params: &VmmParams) -> Option<String> {
    if !Path::new("/dev/kvm").exists() {
        return Some("/dev/kvm is missing".into());
    }
    for (what, path) in [
        ("the hypervisor binary", &params.hypervisor),
        ("the guest kernel", &params.kernel),
        ("the guest initramfs", &params.initrd),
    ] {
        if !path.is_file() {
            return Some(format!("{what} {} is missing", path.display()));
        }
    }
    None
}

/// The host's CLOCK_MONOTONIC, seconds.
fn monotonic_secs() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as f64 + now.tv_nsec as f64 * 1e-9
}

/// The arguments of one run (share directories under `dir`).
fn args(params: &VmmParams, dir: &Path) -> Vec<String> {
    vec![
        "run".into(),
        "-v".into(),
        "--allow-software-kvm".into(),
        "--kernel".into(),
        params.kernel.display().to_string(),
        "--initrd".into(),
        params.initrd.display().to_string(),
        "--mem".into(),
        format!("{GUEST_MIB}M"),
        "--share".into(),
        format!(
            "tag=fs0,dir={},store={}",
            dir.join("tree").display(),
            dir.join("store").display()
        ),
        "--append".into(),
        "fsr.scenario=exit fsr.arg=0".into(),
    ]
}

/// Runs the VMM `params.runs` times under `base`.
pub fn run(params: &VmmParams, base: &Path) -> Result<VmmSummary> {
    let mut runs = Vec::new();
    for i in 0..params.runs.max(1) {
        eprintln!(
            "bench: VMM start-up and memory, run {} of {}",
            i + 1,
            params.runs
        );
        let dir = base.join(format!("vmm-{i}"));
        for d in [dir.join("tree"), dir.join("store")] {
            std::fs::create_dir_all(&d).map_err(|source| BenchError::Io {
                what: format!("create {}", d.display()),
                source,
            })?;
        }
        runs.push(run_once(params, &dir)?);
    }
    let pick = |f: fn(&VmmRun) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    let shown = args(params, Path::new("DIR"));
    Ok(VmmSummary {
        start_to_entry_ms: pick(|r| r.start_to_entry_ms),
        start_to_entry_best_ms: runs
            .iter()
            .map(|r| r.start_to_entry_ms)
            .fold(f64::INFINITY, f64::min),
        vm_to_entry_ms: pick(|r| r.vm_to_entry_ms),
        cpu_to_entry_ms: pick(|r| r.cpu_to_entry_ms),
        pss_mib: pick(|r| r.pss_mib),
        rss_mib: pick(|r| r.rss_mib),
        guest_rss_mib: pick(|r| r.guest_rss_mib),
        command: format!("hypervisor {}", shell_words(&shown)),
        runs: runs.len(),
    })
}

fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if a.contains(' ') {
                format!("'{a}'")
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The VMM, stopped (SIGTERM, then SIGKILL) and reaped when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            if let Ok(pid) = libc::pid_t::try_from(self.0.id()) {
                // SAFETY: kill(2) on our own child, not yet reaped.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn run_once(params: &VmmParams, dir: &Path) -> Result<VmmRun> {
    let mut cmd = Command::new(&params.hypervisor);
    cmd.args(args(params, dir))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let spawned_at = monotonic_secs();
    let mut child = Running(cmd.spawn().map_err(|source| BenchError::Io {
        what: format!("start {}", params.hypervisor.display()),
        source,
    })?);
    let stderr = child.0.stderr.take().expect("stderr is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let entry_line = loop {
        match rx.recv_timeout(START_LIMIT) {
            Ok(line) if line.contains(ENTRY_MARK) => break line,
            Ok(line) => seen.push(line),
            Err(_) => {
                return Err(BenchError::Vmm(format!(
                    "{} did not log its first KVM_RUN within {} s; it said:\n{}",
                    params.hypervisor.display(),
                    START_LIMIT.as_secs(),
                    seen.join("\n")
                )))
            }
        }
    };
    let (vm_ms, cpu_ms, entry_clock) = parse_entry(&entry_line).ok_or_else(|| {
        BenchError::Vmm(format!("cannot read the first-KVM_RUN line '{entry_line}'"))
    })?;
    let pid = child.0.id();
    let mut best = MemSplit::default();
    let until = Instant::now() + SAMPLE_FOR;
    while Instant::now() < until {
        std::thread::sleep(SAMPLE_EVERY);
        if child.0.try_wait().ok().flatten().is_some() {
            break;
        }
        let Ok(smaps) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
            break;
        };
        let split = split_smaps(&smaps, GUEST_MIB << 10).map_err(BenchError::Vmm)?;
        if split.other_pss_kib > best.other_pss_kib {
            best = split;
        }
    }
    if best == MemSplit::default() {
        let rest: Vec<String> = rx.try_iter().collect();
        return Err(BenchError::Vmm(format!(
            "the VMM exited before its memory could be read; it said:\n{}\n{}",
            seen.join("\n"),
            rest.join("\n")
        )));
    }
    drop(child);
    Ok(VmmRun {
        start_to_entry_ms: (entry_clock - spawned_at) * 1e3,
        vm_to_entry_ms: vm_ms,
        cpu_to_entry_ms: cpu_ms,
        pss_mib: best.other_pss_kib as f64 / 1024.0,
        rss_mib: best.other_rss_kib as f64 / 1024.0,
        guest_rss_mib: best.guest_rss_kib as f64 / 1024.0,
    })
}

/// The figures of the VMM's first-KVM_RUN line: ms after `Vm::run` started, ms of process
/// CPU time, and the monotonic clock in seconds.
fn parse_entry(line: &str) -> Option<(f64, f64, f64)> {
    let after = line.split(ENTRY_MARK).nth(1)?;
    let ms = after.split_whitespace().next()?.parse().ok()?;
    let cpu = after
        .split(CPU_MARK)
        .next()?
        .rsplit(", ")
        .next()?
        .parse()
        .ok()?;
    let clock = line
        .split(CLOCK_MARK)
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((ms, cpu, clock))
}

/// Splits `/proc/PID/smaps` into guest RAM (the one anonymous mapping of `guest_kib`) and
/// the rest.
pub fn split_smaps(smaps: &str, guest_kib: u64) -> std::result::Result<MemSplit, String> {
    let mut split = MemSplit::default();
    let mut guests = 0;
    // Per mapping: whether it is guest RAM, its Size, Rss and Pss in KiB.
    let mut current: Option<(bool, u64, u64, u64)> = None;
    let mut finish = |m: Option<(bool, u64, u64, u64)>, split: &mut MemSplit| {
        if let Some((anon, size, rss, pss)) = m {
            if anon && size == guest_kib {
                guests += 1;
                split.guest_rss_kib += rss;
            } else {
                split.other_rss_kib += rss;
                split.other_pss_kib += pss;
            }
        }
    };
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            finish(current.take(), &mut split);
            // address perms offset dev inode [path]
            let anon = line.split_whitespace().nth(5).is_none();
            current = Some((anon, 0, 0, 0));
            continue;
        }
        let value = || words.clone().next().and_then(|v| v.parse::<u64>().ok());
        if let Some(m) = current.as_mut() {
            match first {
                "Size:" => m.1 = value().unwrap_or(0),
                "Rss:" => m.2 = value().unwrap_or(0),
                "Pss:" => m.3 = value().unwrap_or(0),
                _ => {}
            }
        }
    }
    finish(current.take(), &mut split);
    if guests != 1 {
        return Err(format!(
            "expected one anonymous {guest_kib} KiB mapping (guest RAM) in the VMM's smaps, \
             found {guests}"
        ));
    }
    Ok(split)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
5581c0000000-5581c0100000 r-xp 00000000 fd:00 123 /usr/bin/hypervisor
Size:               1024 kB
Rss:                 800 kB
Pss:                 800 kB
7f0000000000-7f0008000000 rw-p 00000000 00:00 0 
Size:             131072 kB
Rss:               20000 kB
Pss:               20000 kB
7f1000000000-7f1000200000 r-xp 00000000 fd:00 77 /usr/lib/x86_64-linux-gnu/libc.so.6
Size:               2048 kB
Rss:                1500 kB
Pss:                 300 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
Rss:                  16 kB
Pss:                  16 kB
";

    #[test]
    fn guest_ram_is_left_out_of_the_vmm_figures() {
        let split = split_smaps(SMAPS, 131072).unwrap();

        assert_eq!(
            split,
            MemSplit {
                other_pss_kib: 800 + 300 + 16,
                other_rss_kib: 800 + 1500 + 16,
                guest_rss_kib: 20000,
            }
        );
    }

    #[test]
    fn no_guest_ram_mapping_is_an_error() {
        assert!(split_smaps(SMAPS, 65536).is_err());
    }

    #[test]
    fn the_entry_line_gives_both_times() {
        let line = "[2026-11-25T16:32:11.486Z INFO  hypervisor::vcpu] vCPU 0: first KVM_RUN \
                    7.125 ms after the VM started, 5.250 ms of CPU time since the process \
                    started (CLOCK_MONOTONIC 1234.500000 s)";

        assert_eq!(parse_entry(line), Some((7.125, 5.25, 1234.5)));
    }
}
