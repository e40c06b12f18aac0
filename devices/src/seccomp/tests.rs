//! The filters bite: a forbidden call in a filtered thread ends the whole process (kill,
//! trap) or is let through and logged (log). Each case runs in a child process, this test
//! binary started again on [`probe_child`].

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output};

use super::*;

/// The environment variable that makes [`probe_child`] act: `role,mode,thread|caller`.
const PROBE: &str = "DEVICES_SECCOMP_PROBE";

/// What the child prints when the forbidden call returned.
const SURVIVED: &str = "the forbidden call returned";

/// A call no role allows: a new socket.
fn forbidden_call() -> i64 {
    // SAFETY: socket(2) with constant arguments; the descriptor, if any, is closed.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    if fd >= 0 {
        // SAFETY: `fd` was just returned to us.
        unsafe { libc::close(fd) };
    }
    libc::SYS_socket
}

#[test]
#[ignore = "run in a child process by the other seccomp tests"]
fn probe_child() {
    let spec = std::env::var(PROBE).expect("only the seccomp tests run this, in a child");
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
        std::thread::spawn(run).join().unwrap();
        // A process whose filtered thread died silently would still get here.
        println!("the caller outlived its filtered thread");
    } else {
        run();
    }
}

fn run_probe(role: ThreadRole, mode: SeccompMode, place: &str) -> Output {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "seccomp::tests::probe_child",
            "--ignored",
            "--nocapture",
        ])
        .args(["--test-threads", "1"])
        .env(PROBE, format!("{},{mode},{place}", role.name()))
        .output()
        .unwrap()
}

#[test]
fn kill_ends_the_whole_process_from_any_thread() {
    for role in [
        ThreadRole::Vcpu,
        ThreadRole::FsWorker,
        ThreadRole::VhostUserServer,
    ] {
        for place in ["caller", "thread"] {
            let out = run_probe(role, SeccompMode::Kill, place);
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert_eq!(
                out.status.signal(),
                Some(libc::SIGSYS),
                "{role:?} {place}: {stdout}"
            );
            assert!(!stdout.contains(SURVIVED), "{stdout}");
            assert!(!stdout.contains("outlived"), "{stdout}");
        }
    }
}

#[test]
fn trap_names_the_call_and_the_thread_then_exits_non_zero() {
    for place in ["caller", "thread"] {
        let out = run_probe(ThreadRole::FsWorker, SeccompMode::Trap, place);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(TRAP_EXIT_CODE), "{place}: {stderr}");
        let expected = format!(
            "a fs-worker thread made system call socket ({})",
            libc::SYS_socket
        );
        assert!(stderr.contains(&expected), "{place}: {stderr}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("outlived"));
    }
}

#[test]
fn log_lets_the_call_through_and_the_kernel_names_it() {
    let mut kmsg = KernelLog::open();
    let out = run_probe(ThreadRole::Vcpu, SeccompMode::Log, "thread");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains(SURVIVED), "{stdout}");
    let needle = format!("syscall={}", libc::SYS_socket);
    match kmsg.as_mut().map(|log| log.read_new()) {
        Some(lines) if lines.iter().any(|l| l.contains("type=1326")) => {
            assert!(
                lines
                    .iter()
                    .any(|l| l.contains("type=1326") && l.contains(&needle)),
                "{lines:?}"
            );
        }
        _ => eprintln!(
            "note: the kernel log shows no seccomp record here (no /dev/kmsg, or audit \
             messages go elsewhere); only the call's survival was checked"
        ),
    }
}

#[test]
fn none_installs_nothing() {
    let out = run_probe(ThreadRole::Vcpu, SeccompMode::None, "caller");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(SURVIVED));
}

#[test]
fn modes_parse_from_their_words_and_unknown_ones_are_named() {
    for mode in SeccompMode::ALL {
        assert_eq!(mode.word().parse::<SeccompMode>(), Ok(mode));
    }
    let err = "strict".parse::<SeccompMode>().unwrap_err();
    assert!(err.contains("\"strict\"") && err.contains("kill, log, trap or none"));
    assert_eq!(SeccompMode::default(), SeccompMode::Kill);
}

#[test]
fn every_role_compiles_in_every_filtering_mode() {
    for role in [
        ThreadRole::Vcpu,
        ThreadRole::EventLoop,
        ThreadRole::FsWorker,
        ThreadRole::VhostUserServer,
    ] {
        for mode in [SeccompMode::Kill, SeccompMode::Log, SeccompMode::Trap] {
            assert!(filter(role, mode).unwrap().is_some());
        }
        assert!(filter(role, SeccompMode::None).unwrap().is_none());
    }
}

#[test]
fn the_trap_message_names_unknown_and_negative_numbers() {
    let mut out = MessageBuffer::new();
    trap_message(&mut out, -7, None);
    let text = String::from_utf8_lossy(out.bytes()).into_owned();
    assert!(text.starts_with("seccomp: a filtered thread made system call unknown (-7)"));
    assert!(text.ends_with('\n'));
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

    /// The records written since it was opened (or last read); one read per record.
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
