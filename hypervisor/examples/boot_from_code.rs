//! Boots a guest from code and returns its exit code, the way a program
//! embedding the VMM would.
//!
//! ```text
//! cargo run --release -p hypervisor --example boot_from_code -- [KERNEL INITRD]
//! ```
//!
//! With no arguments it boots the default guest image (guest-images/build-guest.sh)
//! with the `exit` scenario, asks the guest for exit code 7, captures the console in
//! memory and prints the guest's marker lines. It exits with the guest's code. On a host
//! whose /dev/kvm is software-virtualized it stops at once with the VMM's explanation
//! and exit code 1, as any embedding program would get it from `Vm::run`.

use std::error::Error;
use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use hypervisor::config::default_guest_dir;
use hypervisor::{Vm, VmConfig};

fn main() -> ExitCode {
    match boot() {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(err) => {
            // What a user reads: the message and its causes, not the error's debug form.
            eprintln!("boot_from_code: error: {err}");
            let mut source = err.source();
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}

/// Boots the guest; returns its exit code.
fn boot() -> Result<i32, Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let guest = default_guest_dir();
    let kernel = args.next().map_or(guest.join("vmlinux"), Into::into);
    let initrd = args
        .next()
        .map_or(guest.join("initramfs.cpio.gz"), Into::into);

    let console = Arc::new(Mutex::new(Vec::<u8>::new()));
    let config = VmConfig::builder(kernel)
        .initrd(initrd)
        .cmdline("console=ttyS0 reboot=k panic=-1 i8042.noaux fsr.scenario=exit fsr.arg=7")
        .mem_size(128 << 20)
        .vcpus(1)
        .console_output(console.clone())
        .console_input(false)
        .build()?;

    let status = Vm::new(config)?.run()?;

    let output = console.lock().map_err(|_| "console buffer poisoned")?;
    let text = String::from_utf8_lossy(&output);
    let mut stdout = std::io::stdout().lock();
    for line in text.lines().filter(|line| line.starts_with("@@fsr")) {
        writeln!(stdout, "guest: {line}")?;
    }
    writeln!(stdout, "VM stopped: {status}")?;
    Ok(status.code)
}
