//! `testhost`: run boot scenarios of the real `hypervisor` binary, directly on a
//! hardware-virtualization host or inside the emulated VT-x test host elsewhere.
//!
//! ```text
//! testhost [--timeout SECS] [--quiet] [--in-test-host] [SCENARIO...]
//! testhost --cat /share/PATH
//! ```
//!
//! SCENARIO is a name from `testhost --list` or `GUEST[:ARG[:EXPECTED_CODE]]` for any guest
//! scenario of docs/guest-protocol.md. Without scenarios it runs the standard boot batch.
//! Exit code: 0 when every scenario passed, 1 when one failed, 2 on usage or setup errors.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use e2e_tests::testhost::{self, RunOptions, Scenario};

const USAGE: &str =
    "usage: testhost [--timeout SECS] [--quiet] [--in-test-host] [--list] [SCENARIO...]
       testhost --cat /share/PATH
       testhost --mount-share DIR
  --cat      print a file from the test host's share disk (e.g. a stored object under
             /share/fs/store) without booting anything
  --mount-share  mount the test host's share disk (vm-data/testhost/share.ext4) at DIR on
             this host (root, loop device) to look at the default VM's share with ls and
             fsredirect; `umount DIR` before the next test-host run
  SCENARIO   a name from --list, or GUEST[:ARG[:EXPECTED_CODE]] (guest scenario from
             docs/guest-protocol.md, e.g. exit:7:7); default: the standard boot batch
  --timeout  wall-clock limit for the whole run, in seconds
  --quiet    do not stream the serial console
  --in-test-host  use the emulated VT-x test host even on a hardware-virtualization host";

/// An error and its causes, "outer: inner: innermost".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

fn presets() -> Vec<Scenario> {
    let mut all = testhost::boot_scenarios();
    all.extend(testhost::share_scenarios());
    all.push(testhost::sandboxed_share_scenario());
    all.push(testhost::default_scenario());
    all
}

fn parse_scenario(spec: &str) -> Result<Scenario, String> {
    if let Some(s) = presets().into_iter().find(|s| s.id == spec) {
        return Ok(s);
    }
    let mut parts = spec.split(':');
    let guest = parts
        .next()
        .filter(|g| !g.is_empty())
        .ok_or("empty scenario")?;
    let mut s = Scenario::new(&spec.replace(':', "-"), guest);
    if let Some(arg) = parts.next() {
        s = s.arg(arg);
    }
    if let Some(code) = parts.next() {
        let code = code
            .parse()
            .map_err(|_| format!("expected exit code '{code}' in '{spec}' is not a number"))?;
        s = s.expect_code(code);
    }
    if parts.next().is_some() {
        return Err(format!("'{spec}' has more than GUEST:ARG:CODE"));
    }
    Ok(s)
}

fn main() -> ExitCode {
    let mut opts = RunOptions::default();
    let mut batch = Vec::new();
    let mut force_test_host = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--timeout" => {
                let Some(secs) = args.next().and_then(|s| s.parse::<u64>().ok()) else {
                    eprintln!("testhost: --timeout needs a number of seconds\n{USAGE}");
                    return ExitCode::from(2);
                };
                opts.timeout = Some(Duration::from_secs(secs));
            }
            "--quiet" => opts.stream = false,
            "--cat" => {
                let Some(path) = args.next() else {
                    eprintln!("testhost: --cat needs a path under /share\n{USAGE}");
                    return ExitCode::from(2);
                };
                return match testhost::read_share_disk_file(&opts.paths, &path) {
                    Ok(bytes) => {
                        let mut out = std::io::stdout().lock();
                        if out.write_all(&bytes).and_then(|()| out.flush()).is_err() {
                            return ExitCode::FAILURE;
                        }
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("testhost: error: {}", error_chain(&e));
                        ExitCode::FAILURE
                    }
                };
            }
            "--mount-share" => {
                let Some(dir) = args.next() else {
                    eprintln!("testhost: --mount-share needs a directory\n{USAGE}");
                    return ExitCode::from(2);
                };
                return mount_share(&opts, std::path::Path::new(&dir));
            }
            "--in-test-host" => force_test_host = true,
            "--list" => {
                for s in presets() {
                    println!(
                        "{:<16} guest scenario '{}' arg {} vcpus {} expects exit code {}",
                        s.id,
                        s.guest,
                        s.arg.as_deref().unwrap_or("-"),
                        s.vcpus,
                        s.expect_code
                    );
                }
                return ExitCode::SUCCESS;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            spec if !spec.starts_with('-') => match parse_scenario(spec) {
                Ok(s) => batch.push(s),
                Err(e) => {
                    eprintln!("testhost: {e}\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
            other => {
                eprintln!("testhost: unknown option '{other}'\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    if batch.is_empty() {
        batch = testhost::boot_scenarios();
    }
    let result = if force_test_host {
        testhost::ensure_image(&opts.paths).and_then(|()| testhost::run_in_test_host(&batch, &opts))
    } else {
        testhost::run_scenarios(&batch, &opts)
    };
    match result {
        Ok(report) => {
            testhost::print_summary(&report);
            if report.all_passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("testhost: error: {}", error_chain(&e));
            ExitCode::from(2)
        }
    }
}

/// `--mount-share DIR`: mounts the share disk and says how to look at the default share.
fn mount_share(opts: &RunOptions, dir: &std::path::Path) -> ExitCode {
    let disk = &opts.paths.share_disk;
    let mounted = match e2e_tests::share_disk::ShareDiskMount::mount(disk, dir) {
        Ok(m) => m.keep_mounted(),
        Err(e) => {
            eprintln!("testhost: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let d = mounted.display();
    let share = format!("tag=data,dir={d}/default/tree,store={d}/default/store");
    println!(
        "testhost: the share disk {} is mounted at {d}.
The default VM's share (/mnt/data in the guest): guest tree {d}/default/tree, store {d}/default/store.
Look at it:
    ls -ls {d}/default/tree
    cat {d}/default/store/data/hello.txt
    cargo run --release -p fsredirect -- inspect --share {share} hello.txt
    cargo run --release -p fsredirect -- verify --share {share}
Unmount it before the next test-host run (./run.sh, ./test.sh):
    umount {d}",
        disk.display()
    );
    ExitCode::SUCCESS
}
