//! What the vCPU seccomp filter costs on this machine's CPU: building and installing it, and
//! each system call made under it: a KVM_RUN-shaped ioctl (checked against the filter's
//! argument rules on every call) and getpid (an always-allowed call, which the kernel's
//! filter cache lets through without running the filter). No /dev/kvm is needed: the ioctl
//! goes to descriptor -1 and fails at once, after the filter has judged it.
//!
//! `cargo run --release -p devices --example seccomp_cost`

use std::time::{Duration, Instant};

use devices::seccomp::{filter, install_prepared, kvm_ioctl, SeccompMode, ThreadRole};

/// Calls timed per figure.
const CALLS: u32 = 2_000_000;

/// Nanoseconds per call of `call`, over [`CALLS`] calls.
fn per_call(call: impl Fn()) -> f64 {
    let start = Instant::now();
    for _ in 0..CALLS {
        call();
    }
    start.elapsed().as_nanos() as f64 / f64::from(CALLS)
}

/// In a new thread: the filter of `mode` built and installed, then the calls timed.
fn measure(mode: SeccompMode) -> (Duration, Duration, f64, f64) {
    std::thread::spawn(move || {
        let start = Instant::now();
        let program = filter(ThreadRole::Vcpu, mode).expect("the vCPU filter builds");
        let built = start.elapsed();
        let start = Instant::now();
        if let Some(program) = &program {
            install_prepared(ThreadRole::Vcpu, mode, program).expect("the kernel takes it");
        }
        let installed = start.elapsed();
        // SAFETY: an ioctl on descriptor -1 touches no memory and fails with EBADF.
        let ioctl = per_call(|| unsafe {
            libc::ioctl(-1, libc::c_ulong::from(kvm_ioctl::RUN), 0);
        });
        // SAFETY: getpid has no preconditions.
        let getpid = per_call(|| unsafe {
            libc::syscall(libc::SYS_getpid);
        });
        (built, installed, ioctl, getpid)
    })
    .join()
    .expect("the measuring thread does not panic")
}

fn main() {
    println!("vCPU filter, {CALLS} calls per figure (a second round shows the noise):");
    for round in 1..=2 {
        let (_, _, bare_ioctl, bare_getpid) = measure(SeccompMode::None);
        let (built, installed, ioctl, getpid) = measure(SeccompMode::Kill);
        println!(
            "  round {round}: build {:.1} µs, install {:.1} µs; KVM_RUN-shaped ioctl {bare_ioctl:.1} \
             -> {ioctl:.1} ns (+{:.1}); getpid {bare_getpid:.1} -> {getpid:.1} ns (+{:.1})",
            built.as_secs_f64() * 1e6,
            installed.as_secs_f64() * 1e6,
            ioctl - bare_ioctl,
            getpid - bare_getpid,
        );
    }
}
