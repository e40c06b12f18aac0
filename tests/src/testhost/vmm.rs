//! Running the `hypervisor` binary for one scenario: stream its console output, feed the input
//! line when the guest asks for it, time the guest's `/init`, and enforce a timeout.
//!
//! `testhost-agent` uses this inside the test host; on a hardware-virtualization host the
//! runner uses it directly.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Guest marker printed first by `/init` (docs/guest-protocol.md).
pub const GUEST_INIT_MARKER: &str = "@@fsr init";
/// Guest marker printed when the `echo` scenario waits for a console line.
pub const ECHO_READY_MARKER: &str = "@@fsr echo-ready";

/// How a VMM run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmmStatus {
    /// The process exited with this code (the guest's exit code).
    Exited(i32),
    /// The process was killed by this signal (not by us).
    Signaled(i32),
    /// It ran past the timeout and was killed.
    TimedOut,
    /// It could not be started.
    SpawnFailed(String),
}

/// Something that happened during a run, in order.
#[derive(Debug)]
pub enum VmmEvent<'a> {
    /// Bytes the VMM wrote to its standard output (the guest console).
    Output(&'a [u8]),
    /// The guest printed its first `/init` marker this long after the VMM was started.
    GuestInit(Duration),
    /// The input line was written to the VMM's standard input.
    InputSent,
}

/// The result of [`run_vmm`].
#[derive(Clone, Debug)]
pub struct VmmRun {
    /// How the process ended.
    pub status: VmmStatus,
    /// Time from starting the VMM to the guest's `@@fsr init` line, if it came.
    pub guest_init: Option<Duration>,
    /// Time from starting the VMM to its exit (or kill).
    pub elapsed: Duration,
}

/// Starts `binary` with `argv`, reports its console output and milestones to `on_event`, writes
/// `input` (plus a newline) to its standard input once the guest prints `@@fsr echo-ready`, and
/// kills it after `timeout`. Without `input` its standard input is `/dev/null`. Its standard
/// error is inherited. With `user` (uid, gid) it runs as that user, without supplementary
/// groups (the caller must be root).
pub fn run_vmm(
    binary: &Path,
    argv: &[String],
    input: Option<&str>,
    user: Option<(u32, u32)>,
    timeout: Duration,
    on_event: &mut dyn FnMut(VmmEvent<'_>),
) -> VmmRun {
    let start = Instant::now();
    let mut command = Command::new(binary);
    if let Some((uid, gid)) = user {
        use std::os::unix::process::CommandExt;
        command.uid(uid).gid(gid);
    }
    let spawned = command
        .args(argv)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            return VmmRun {
                status: VmmStatus::SpawnFailed(format!("{}: {e}", binary.display())),
                guest_init: None,
                elapsed: start.elapsed(),
            }
        }
    };
    let chunks = spawn_reader(&mut child);
    let mut stdin = child.stdin.take();
    let mut line = Vec::new();
    let mut guest_init = None;
    let mut exited: Option<(ExitStatus, Instant)> = None;
    let mut timed_out = false;
    loop {
        match chunks.recv_timeout(Duration::from_millis(20)) {
            Ok((chunk, at)) => {
                // Scan before passing the output on: writing it to a slow console must not
                // delay feeding the input.
                let mut events = Vec::new();
                for &b in &chunk {
                    if b != b'\n' {
                        line.push(b);
                        continue;
                    }
                    let text = String::from_utf8_lossy(&line);
                    if guest_init.is_none() && text.contains(GUEST_INIT_MARKER) {
                        let after = at - start;
                        guest_init = Some(after);
                        events.push(VmmEvent::GuestInit(after));
                    }
                    if text.contains(ECHO_READY_MARKER) {
                        if let (Some(pipe), Some(input)) = (stdin.as_mut(), input) {
                            // A write error means the VMM is gone; its exit status says why.
                            if pipe.write_all(format!("{input}\n").as_bytes()).is_ok()
                                && pipe.flush().is_ok()
                            {
                                events.push(VmmEvent::InputSent);
                            }
                        }
                    }
                    line.clear();
                }
                on_event(VmmEvent::Output(&chunk));
                for event in events {
                    on_event(event);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                if exited.is_some() {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if exited.is_none() {
            if let Ok(Some(status)) = child.try_wait() {
                exited = Some((status, Instant::now()));
            }
        }
        if let Some((_, at)) = exited {
            // Output normally ends with the process; do not wait on a pipe someone else holds.
            if at.elapsed() > Duration::from_secs(2) {
                break;
            }
        } else if start.elapsed() > timeout {
            // SIGKILL; an error means it exited meanwhile, which try_wait below picks up.
            let _ = child.kill();
            timed_out = true;
            let status = child.wait().ok();
            exited = status.map(|s| (s, Instant::now()));
            if exited.is_none() {
                break;
            }
        }
    }
    let elapsed = exited.map_or_else(|| start.elapsed(), |(_, at)| at - start);
    drop(stdin);
    let status = if timed_out {
        VmmStatus::TimedOut
    } else {
        match exited.map(|(s, _)| s) {
            Some(s) => exit_status(s),
            None => VmmStatus::TimedOut,
        }
    };
    VmmRun {
        status,
        guest_init,
        elapsed,
    }
}

fn exit_status(status: ExitStatus) -> VmmStatus {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => VmmStatus::Exited(code),
        (None, Some(sig)) => VmmStatus::Signaled(sig),
        (None, None) => VmmStatus::Signaled(0),
    }
}

/// Reads the child's stdout on a thread and sends each chunk with the instant it arrived.
fn spawn_reader(child: &mut Child) -> mpsc::Receiver<(Vec<u8>, Instant)> {
    let (tx, rx) = mpsc::channel();
    if let Some(mut out) = child.stdout.take() {
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match out.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send((buf[..n].to_vec(), Instant::now())).is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, input: Option<&str>, timeout: Duration) -> (VmmRun, String, bool) {
        let mut out = Vec::new();
        let mut sent = false;
        let run = run_vmm(
            Path::new("/bin/sh"),
            &["-c".to_owned(), script.to_owned()],
            input,
            None,
            timeout,
            &mut |e| match e {
                VmmEvent::Output(b) => out.extend_from_slice(b),
                VmmEvent::InputSent => sent = true,
                VmmEvent::GuestInit(_) => {}
            },
        );
        (run, String::from_utf8_lossy(&out).into_owned(), sent)
    }

    #[test]
    fn exit_code_and_init_time_are_reported() {
        let (run, out, _) = sh(
            "echo '@@fsr init uptime=0.1'; exit 42",
            None,
            Duration::from_secs(10),
        );

        assert_eq!(run.status, VmmStatus::Exited(42));
        assert!(run.guest_init.is_some());
        assert!(out.contains("@@fsr init"));
    }

    #[test]
    fn input_is_fed_after_echo_ready() {
        let script = "echo '@@fsr echo-ready'; read l; echo \"@@fsr echo got=$l\"";

        let (run, out, sent) = sh(script, Some("hi there"), Duration::from_secs(10));

        assert_eq!(run.status, VmmStatus::Exited(0));
        assert!(sent);
        assert!(out.contains("@@fsr echo got=hi there"), "{out}");
    }

    #[test]
    fn a_hung_vmm_is_killed_at_the_timeout() {
        let (run, _, _) = sh("exec sleep 30", None, Duration::from_millis(300));

        assert_eq!(run.status, VmmStatus::TimedOut);
        assert!(run.elapsed < Duration::from_secs(10));
    }
}
