//! The filters bite: a forbidden call in a filtered thread ends the whole process (kill,
//! trap, from the filtered thread or from another one, so no thread dies silently) or is
//! let through and logged by the kernel (log). Each case runs in a child process: this
//! binary started again with `PROBE` set, which installs a role's filter and makes a call no
//! role allows.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output};

use devices::seccomp::{confine_current_thread, SeccompMode, ThreadRole, TRAP_EXIT_CODE};
use libtest_mimic::{Arguments, Failed, Trial};

/// Set in the child: `role,mode,thread|caller`.
const PROBE: &str = "DEVICES_SECCOMP_PROBE";

/// What the child prints when the forbidden call returned.
const SURVIVED: &str = "the forbidden call returned";

/// What the child prints when its filtered thread ended and it did not.
const OUTLIVED: &str = "the caller outlived its filtered thread";

fn main() {
    if let Ok(spec) = std::env::var(PROBE) {
        probe_child(&spec);
        return;
    }
    let args = Arguments::from_args();
    let trial = |name: &'static str, f: fn() -> Result<(), String>| {
        Trial::test(name, move || f().map_err(Failed::from))
    };
    let trials = vec![
        trial("kill_ends_the_whole_process_from_any_thread", kill),
        trial(
            "trap_names_the_call_and_the_thread_then_exits_non_zero",
            trap,
        ),
        trial("log_lets_the_call_through_and_the_kernel_names_it", log),
        trial("none_installs_nothing", none),
    ];
    libtest_mimic::run(&args, trials).exit();
}

/// A call no role allows: a new socket.
fn forbidden_call() {
    // SAFETY: socket(2) with constant arguments; the descriptor, if any, is closed.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    if fd >= 0 {
        // SAFETY: `fd` was just returned to us.
        unsafe { libc::close(fd) };
    }
}

/// In the child: filter this thread or a new one, then make the forbidden call.
fn probe_child(spec: &str) {
    let parts: Vec<&str> = spec.split(',').collect();
    let role = match parts[0] {
        "vcpu" => ThreadRole::Vcpu,
        "event-loop" => ThreadRole::EventLoop,
        "fs-worker" => ThreadRole::FsWorker,
        _ => ThreadRole::VhostUserServer,
    };
    let mode: SeccompMode = parts[1].parse().unwrap();
    let run = move || {
        confine_current_thread(role, mode).unwrap();
        forbidden_call();
        println!("{SURVIVED}");
    };
    if parts[2] == "thread" {
        let _ = std::thread::spawn(run).join();
        // A process whose filtered thread died silently would still get here.
        println!("{OUTLIVED}");
    } else {
        run();
    }
}

fn run_probe(role: ThreadRole, mode: SeccompMode, place: &str) -> Result<Output, String> {
    Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .env(PROBE, format!("{},{mode},{place}", role.name()))
        .output()
        .map_err(|e| e.to_string())
}

fn kill() -> Result<(), String> {
    for role in [
        ThreadRole::Vcpu,
        ThreadRole::EventLoop,
        ThreadRole::FsWorker,
        ThreadRole::VhostUserServer,
    ] {
        for place in ["caller", "thread"] {
            let out = run_probe(role, SeccompMode::Kill, place)?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            if out.status.signal() != Some(libc::SIGSYS)
                || stdout.contains(SURVIVED)
                || stdout.contains(OUTLIVED)
            {
                return Err(format!(
                    "{role:?} from the {place}: ended with {}, said {stdout:?}",
                    out.status
                ));
            }
        }
    }
    Ok(())
}

fn trap() -> Result<(), String> {
    for place in ["caller", "thread"] {
        let out = run_probe(ThreadRole::FsWorker, SeccompMode::Trap, place)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        // socket(AF_INET, SOCK_STREAM, 0)
        let expected = format!(
            "a fs-worker thread made system call socket ({}, arguments 0x2 0x1 0x0)",
            libc::SYS_socket
        );
        if out.status.code() != Some(TRAP_EXIT_CODE)
            || !stderr.contains(&expected)
            || String::from_utf8_lossy(&out.stdout).contains(OUTLIVED)
        {
            return Err(format!(
                "from the {place}: ended with {}, said {stderr:?}",
                out.status
            ));
        }
    }
    Ok(())
}

fn log() -> Result<(), String> {
    let mut kmsg = KernelLog::open();
    let out = run_probe(ThreadRole::Vcpu, SeccompMode::Log, "thread")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !stdout.contains(SURVIVED) {
        return Err(format!("ended with {}, said {stdout:?}", out.status));
    }
    let needle = format!("syscall={}", libc::SYS_socket);
    match kmsg.as_mut().map(|log| log.read_new()) {
        Some(lines) if lines.iter().any(|l| l.contains("type=1326")) => {
            if !lines
                .iter()
                .any(|l| l.contains("type=1326") && l.contains(&needle))
            {
                return Err(format!("no seccomp record names {needle}: {lines:?}"));
            }
        }
        _ => println!(
            "note: the kernel log shows no seccomp record here (no /dev/kmsg, or audit \
             messages go elsewhere); only the call's survival was checked"
        ),
    }
    Ok(())
}

fn none() -> Result<(), String> {
    let out = run_probe(ThreadRole::Vcpu, SeccompMode::None, "caller")?;
    if out.status.success() && String::from_utf8_lossy(&out.stdout).contains(SURVIVED) {
        Ok(())
    } else {
        Err(format!(
            "without a filter the call should pass: {}",
            out.status
        ))
    }
}

/// The kernel's log, read from where it stood when opened.
struct KernelLog(std::fs::File);

impl KernelLog {
    fn open() -> Option<Self> {
        use std::io::{Seek, SeekFrom};
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .ok()?;
        file.seek(SeekFrom::End(0)).ok()?;
        Some(Self(file))
    }

    /// The records written since it was opened; one read per record.
    fn read_new(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        let mut record = [0u8; 8192];
        // The kernel may log a moment after the call.
        std::thread::sleep(std::time::Duration::from_millis(200));
        while let Ok(n) = self.0.read(&mut record) {
            if n == 0 {
                break;
            }
            lines.push(String::from_utf8_lossy(&record[..n]).into_owned());
        }
        lines
    }
}
