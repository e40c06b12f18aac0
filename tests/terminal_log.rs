//! The VMM's log on a terminal, from threads under its seccomp filters.
//!
//! A vCPU logs its first KVM_RUN (`-v`) after it has installed its filter. Logging to a
//! terminal once asked, at every line, whether standard error is one (an ioctl the filters
//! forbid), so the VMM ended there with 159 whenever its standard error was a terminal:
//! `hypervisor -v` typed by a user. This runs the VMM with its standard error on a
//! pseudo-terminal and the filters in mode trap (which names a forbidden call), and checks
//! that the vCPU's line arrives and no filter stopped the process.
//!
//! It needs /dev/kvm and the guest image (`build/guest/vmlinux`, which `./test.sh` builds);
//! without either it says why and counts as ignored. On a software-virtualized /dev/kvm the
//! guest then stops on an instruction KVM cannot emulate, which does not matter here.

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use e2e_tests::pty::open_pty;
use e2e_tests::qemu::hypervisor_binary;
use hypervisor::config::default_guest_dir;
use libtest_mimic::{Arguments, Failed, Trial};

/// What the vCPU logs at its first entry (`hypervisor/src/vcpu.rs`).
const FIRST_ENTRY: &str = "first KVM_RUN";
/// What the trap handler writes when a filter stops a call (`devices/src/seccomp`).
const TRAPPED: &str = "which its filter forbids";

fn main() {
    let args = Arguments::from_args();
    let kernel = default_guest_dir().join("vmlinux");
    let why_not = if !std::path::Path::new("/dev/kvm").exists() {
        Some("no /dev/kvm on this host".to_owned())
    } else if !kernel.exists() {
        Some(format!(
            "no guest kernel at {} (guest-images/build-guest.sh builds it)",
            kernel.display()
        ))
    } else {
        None
    };
    let trial = Trial::test("a_filtered_vcpu_logs_on_a_terminal", move || {
        logs_on_a_terminal(kernel)
    });
    let trial = match why_not {
        Some(why) => {
            println!("terminal_log: ignored: {why}");
            trial.with_ignored_flag(true)
        }
        None => trial,
    };
    libtest_mimic::run(&args, vec![trial]).exit();
}

fn logs_on_a_terminal(kernel: PathBuf) -> Result<(), Failed> {
    let (reader, writer) = open_pty()?;
    let mut reader = File::from(reader);
    let mut child = Command::new(hypervisor_binary()?)
        .args(["run", "-v", "--seccomp", "trap", "--allow-software-kvm"])
        .arg("--kernel")
        .arg(&kernel)
        .args(["--no-default-share", "--mem", "64M"])
        .args(["--append", "fsr.scenario=exit fsr.arg=0"])
        .env_remove("RUST_LOG")
        .env_remove("RUST_LOG_STYLE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(writer))
        .spawn()?;
    // The child holds the only writing side now: reading ends when it has exited.
    let drained = std::thread::spawn(move || {
        let mut out = Vec::new();
        // A pseudo-terminal whose writers are gone reads as EIO, not as the end.
        let _ = reader.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    });
    let status = child.wait()?;
    let log = drained.join().map_err(|_| "the reading thread panicked")?;
    if log.contains(TRAPPED) || status.code() == Some(159) {
        return Err(format!("a seccomp filter stopped the VMM ({status}):\n{log}").into());
    }
    if !log.contains(FIRST_ENTRY) {
        return Err(
            format!("the vCPU's '{FIRST_ENTRY}' line is missing ({status}):\n{log}").into(),
        );
    }
    Ok(())
}
