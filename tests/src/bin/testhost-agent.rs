//! Scenario runner inside the emulated VT-x test host (statically linked into its initramfs).
//!
//! `testhost-agent PARAMS_FILE` runs each scenario of the batch with its VMM (`/bin/hypervisor`,
//! or for the boot benchmark a peer,
//! [`e2e_tests::testhost::VmmKind::test_host_binary`]) on the guest image in
//! `/guest`, passes the VMM's console output through to the test host's console,
//! and prints `@@testhost scenario ID ...` marker lines that the runner on the host parses:
//!
//! ```text
//! @@testhost scenario ID start vcpus=N uptime=U
//! @@testhost scenario ID guest-init boot=SECONDS uptime=U
//! @@testhost scenario ID end status=exited code=N elapsed=SECONDS uptime=U
//! ```
//!
//! `boot` is test-host clock time from starting the VMM to the guest's `@@fsr init` line; with
//! bochs's `clock: sync=none` it is deterministic. Exit code: 0 when every scenario ran to an
//! exit (whatever its code), 1 when one could not run, 2 on bad parameters.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use e2e_tests::testhost::scenario::decode_params;
use e2e_tests::testhost::vmm::{run_vmm, VmmEvent, VmmStatus};

const GUEST_KERNEL: &str = "/guest/vmlinux";
const GUEST_INITRD: &str = "/guest/initramfs.cpio.gz";
/// Most guest output held back while the guest boots (see `main`).
const HOLD_LIMIT: usize = 1 << 20;

/// The test host's uptime in seconds, as `/proc/uptime` reports it.
fn uptime() -> String {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Console writer that starts each marker on its own line.
struct Console {
    out: std::io::Stdout,
    at_line_start: bool,
}

impl Console {
    fn raw(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        // The console is all we have; if it fails there is nobody to tell.
        let _ = self.out.write_all(bytes);
        let _ = self.out.flush();
        self.at_line_start = bytes.ends_with(b"\n");
    }

    fn mark(&mut self, text: &str) {
        let nl = if self.at_line_start { "" } else { "\n" };
        self.raw(format!("{nl}@@testhost {text} uptime={}\n", uptime()).as_bytes());
    }
}

/// Empties or creates each directory (the scenario validated that they lie under /share).
fn fresh_dirs(dirs: &[String]) -> Result<(), String> {
    for dir in dirs {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot empty {dir}: {e}")),
        }
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {dir}: {e}"))?;
    }
    Ok(())
}

/// Creates each directory if missing, keeping its contents (validated to lie under /share).
fn made_dirs(dirs: &[String]) -> Result<(), String> {
    for dir in dirs {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {dir}: {e}"))?;
    }
    Ok(())
}

/// Prepares the test host for a VMM run as `user` (uid, gid): gives it the scenario's
/// directories (a fresh one is empty; a made one keeps its contents, given as they are) and
/// lets every user open `/dev/kvm`, as a host puts a VMM's user in its `kvm` group (this test
/// host lives for one batch).
fn give_to((uid, gid): (u32, u32), fresh: &[String], made: &[String]) -> Result<(), String> {
    for dir in fresh.iter().chain(made) {
        e2e_tests::ownership::give_tree(Path::new(dir), uid, gid)
            .map_err(|e| format!("cannot give {dir} to uid {uid}: {e}"))?;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions("/dev/kvm", std::fs::Permissions::from_mode(0o666))
        .map_err(|e| format!("cannot open /dev/kvm to every user: {e}"))
}

fn main() -> ExitCode {
    let mut console = Console {
        out: std::io::stdout(),
        at_line_start: true,
    };
    let Some(path) = std::env::args().nth(1) else {
        console.mark("error usage: testhost-agent PARAMS_FILE");
        return ExitCode::from(2);
    };
    let scenarios = match std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {path}: {e}"))
        .and_then(|text| decode_params(&text))
    {
        Ok(s) => s,
        Err(e) => {
            console.mark(&format!("error bad parameters: {e}"));
            return ExitCode::from(2);
        }
    };
    console.mark(&format!("agent scenarios={}", scenarios.len()));
    let mut all_ran = true;
    for s in &scenarios {
        console.mark(&format!("scenario {} start vcpus={}", s.id, s.vcpus));
        let vmm = s.vmm.test_host_binary();
        let missing: Vec<&str> = [vmm, GUEST_KERNEL, GUEST_INITRD]
            .into_iter()
            .filter(|p| !Path::new(p).exists())
            .collect();
        if !missing.is_empty() {
            console.mark(&format!(
                "scenario {} end status=not-run reason=missing:{}",
                s.id,
                missing.join(",")
            ));
            all_ran = false;
            continue;
        }
        let prepared = fresh_dirs(&s.fresh_dirs)
            .and_then(|()| made_dirs(&s.made_dirs))
            .and_then(|()| match s.user {
                Some(user) => give_to(user, &s.fresh_dirs, &s.made_dirs),
                None => Ok(()),
            });
        if let Err(e) = prepared {
            console.mark(&format!(
                "scenario {} end status=not-run reason={}",
                s.id,
                e.replace(' ', "_")
            ));
            all_ran = false;
            continue;
        }
        let argv = s.vmm_argv(GUEST_KERNEL, GUEST_INITRD);
        // The guest's boot log is held back until its /init runs: printing it on the test
        // host's UART as it comes costs emulated CPU time (interrupts, VM exits) that would
        // otherwise count in the measured boot time.
        let mut held = Vec::new();
        let mut holding = true;
        let run = run_vmm(
            Path::new(vmm),
            &argv,
            s.input.as_deref(),
            s.user,
            Duration::from_secs(s.timeout_secs.into()),
            &mut |event| match event {
                VmmEvent::Output(bytes) if holding && held.len() + bytes.len() <= HOLD_LIMIT => {
                    held.extend_from_slice(bytes)
                }
                VmmEvent::Output(bytes) => {
                    console.raw(&std::mem::take(&mut held));
                    holding = false;
                    console.raw(bytes)
                }
                VmmEvent::GuestInit(after) => {
                    console.raw(&std::mem::take(&mut held));
                    holding = false;
                    console.mark(&format!(
                        "scenario {} guest-init boot={:.6}",
                        s.id,
                        after.as_secs_f64()
                    ))
                }
                VmmEvent::InputSent => console.mark(&format!("scenario {} input-sent", s.id)),
            },
        );
        console.raw(&held);
        let status = match &run.status {
            VmmStatus::Exited(code) => format!("status=exited code={code}"),
            VmmStatus::Signaled(sig) => format!("status=signaled signal={sig}"),
            VmmStatus::TimedOut => format!("status=timeout limit={}", s.timeout_secs),
            VmmStatus::SpawnFailed(e) => {
                all_ran = false;
                format!("status=spawn-failed reason={}", e.replace(' ', "_"))
            }
        };
        let boot = run
            .guest_init
            .map(|d| format!(" boot={:.6}", d.as_secs_f64()))
            .unwrap_or_default();
        console.mark(&format!(
            "scenario {} end {status}{boot} elapsed={:.6}",
            s.id,
            run.elapsed.as_secs_f64()
        ));
    }
    if all_ran {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
