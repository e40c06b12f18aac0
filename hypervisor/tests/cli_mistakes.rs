//! The VMM's command line given the mistakes users make: each gets a message that names the
//! input and the fix, before the host check (whose advice would ignore the user's options),
//! with exit code 1 and nothing created.

use std::path::Path;
use std::process::Command;

use hypervisor::host::{self, HostKind};
use libtest_mimic::{Arguments, Failed, Trial};

mod common;
use common::{command_as, give_tree, NOBODY};

const SOFTWARE_KVM_NOTICE: &str = "software-virtualized";

/// Runs `hypervisor ARGS` in an empty folder; returns (exit code, stderr) after checking that
/// nothing was created there.
fn run(args: &[&str]) -> Result<(Option<i32>, String), Failed> {
    let cwd = tempfile::tempdir()?;
    let out = Command::new(env!("CARGO_BIN_EXE_hypervisor"))
        .args(args)
        .current_dir(cwd.path())
        .stdin(std::process::Stdio::null())
        .output()?;
    let created: Vec<_> = std::fs::read_dir(cwd.path())?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    if !created.is_empty() {
        return Err(format!("hypervisor {args:?} created {created:?}").into());
    }
    Ok((
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// `hypervisor ARGS` fails with exit code 1, says `wanted`, and not the host notice.
fn refused_for_input(args: &[&str], wanted: &str) -> Result<(), Failed> {
    let (code, stderr) = run(args)?;
    if code != Some(1) {
        return Err(format!("exit code {code:?}, not 1: {stderr}").into());
    }
    if !stderr.contains(wanted) {
        return Err(format!("message lacks {wanted:?}: {stderr}").into());
    }
    if stderr.contains(SOFTWARE_KVM_NOTICE) {
        return Err(format!("the host notice hides the input's problem: {stderr}").into());
    }
    Ok(())
}

/// A file that is an ELF image (the VMM binary itself), so only the other inputs are wrong.
fn some_elf() -> &'static str {
    env!("CARGO_BIN_EXE_hypervisor")
}

fn main() {
    let args = Arguments::from_args();
    let tmp = tempfile::tempdir().expect("temp dir");
    let short = tmp.path().join("short");
    std::fs::write(&short, b"\x7fE").expect("write");
    let plain = tmp.path().join("plain");
    std::fs::write(&plain, b"not a directory").expect("write");
    let short = short.display().to_string();
    let plain = plain.display().to_string();
    let guest = tmp.path().join("guest");
    std::fs::create_dir(&guest).expect("mkdir");
    let dir = guest.display().to_string();

    let cases: Vec<(&str, Vec<String>, String)> = vec![
        (
            "missing_kernel_is_named",
            vec!["--kernel".into(), "/nonexistent/vmlinux".into()],
            "kernel image /nonexistent/vmlinux not found".into(),
        ),
        (
            "kernel_given_a_directory_is_named",
            vec!["--kernel".into(), dir.clone()],
            "is a directory, not a regular file".into(),
        ),
        (
            "kernel_shorter_than_a_header_shows_its_bytes",
            vec!["--kernel".into(), short.clone()],
            "(2 bytes long, first bytes 7f 45)".into(),
        ),
        (
            "missing_share_folder_is_named",
            vec![
                "--kernel".into(),
                some_elf().into(),
                "--share".into(),
                "tag=data,dir=/nonexistent,store=/nonexistent-store".into(),
            ],
            "share data: /nonexistent does not exist".into(),
        ),
        (
            "share_folder_given_a_file_is_named",
            vec![
                "--kernel".into(),
                some_elf().into(),
                "--share".into(),
                format!("tag=data,dir={plain}"),
            ],
            format!("share data: {plain} is not a directory"),
        ),
        (
            "store_given_a_file_is_named",
            vec![
                "--kernel".into(),
                some_elf().into(),
                "--share".into(),
                format!("tag=data,dir={dir},store={plain}"),
            ],
            format!("share data: {plain} is not a directory; store="),
        ),
        (
            "one_tebibyte_of_memory_is_accepted",
            vec![
                "--mem".into(),
                "1T".into(),
                "--kernel".into(),
                "/nonexistent/vmlinux".into(),
            ],
            "kernel image /nonexistent/vmlinux not found".into(),
        ),
    ];
    let mut trials: Vec<Trial> = cases
        .into_iter()
        .map(|(name, args, wanted)| {
            Trial::test(name, move || {
                let mut all = vec!["run"];
                all.extend(args.iter().map(String::as_str));
                refused_for_input(&all, &wanted)
            })
        })
        .collect();
    trials.push(no_arguments_create_nothing_before_refusing());
    trials.push(Trial::test(
        "run_sh_help_shows_no_line_of_the_script",
        run_sh_help,
    ));
    trials.push(embedding_example_error());
    trials.push(Trial::test(
        "vhost_user_fs_chroot_sandbox_not_as_root_names_the_other_ways",
        chroot_sandbox_not_as_root,
    ));
    let conclusion = libtest_mimic::run(&args, trials);
    drop(tmp);
    conclusion.exit();
}

/// `hypervisor vhost-user-fs --sandbox chroot` not run as root (as `nobody`, when the test
/// runs as root): exit code 1, a message naming what chroot needs and the modes that work
/// without it, and no socket.
fn chroot_sandbox_not_as_root() -> Result<(), Failed> {
    let tmp = tempfile::tempdir()?;
    let tree = tmp.path().join("tree");
    std::fs::create_dir(&tree)?;
    let socket = tmp.path().join("fs.sock");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut cmd = if root {
        give_tree(tmp.path(), NOBODY)?;
        command_as(
            Path::new(env!("CARGO_BIN_EXE_hypervisor")),
            tmp.path(),
            NOBODY,
        )?
    } else {
        Command::new(env!("CARGO_BIN_EXE_hypervisor"))
    };
    let out = cmd
        .arg("vhost-user-fs")
        .arg("--socket")
        .arg(&socket)
        .arg("--share")
        .arg(format!("tag=t,dir={}", tree.display()))
        .args(["--sandbox", "chroot"])
        .stdin(std::process::Stdio::null())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let wanted = "--sandbox chroot needs root (CAP_SYS_CHROOT); run as root, use --sandbox \
                  namespace, or pass --sandbox none";
    if out.status.code() != Some(1) || !stderr.contains(wanted) {
        return Err(format!("{}: {stderr}", out.status).into());
    }
    if socket.exists() {
        return Err("the refused server left its socket behind".into());
    }
    Ok(())
}

/// 1. On a host that cannot run the default VM, `hypervisor run` with no arguments.
/// 2. It refuses without creating the default share's folders (vm-data/default).
fn no_arguments_create_nothing_before_refusing() -> Trial {
    let vm_data = hypervisor::config::default_vm_data_dir();
    let skip = match host::detect() {
        HostKind::Hardware => Some(
            "skipped, because on a hardware-virtualization host the default VM would boot"
                .to_string(),
        ),
        HostKind::SoftwareKvm { .. } if vm_data.exists() => Some(format!(
            "skipped, because {} exists already (made by an earlier run)",
            vm_data.display()
        )),
        HostKind::SoftwareKvm { .. } => None,
        HostKind::NoKvm => Some(
            "skipped, because without /dev/kvm the VMM refuses only after making its folders"
                .to_string(),
        ),
    };
    let name = "no_arguments_create_nothing_before_refusing";
    match skip {
        Some(why) => {
            println!("{why}");
            Trial::test(name, || Ok(())).with_ignored_flag(true)
        }
        None => Trial::test(name, move || {
            let (code, stderr) = run(&["run"])?;
            if code != Some(1) {
                return Err(format!("exit code {code:?}, not 1: {stderr}").into());
            }
            if Path::new(&vm_data).exists() {
                return Err(format!("{} was created before refusing", vm_data.display()).into());
            }
            Ok(())
        }),
    }
}

/// 1. `./run.sh --help`, with a stand-in `cargo` first in PATH (the real one would build).
/// 2. The usage text, and no line of the script itself.
fn run_sh_help() -> Result<(), Failed> {
    let root = hypervisor::config::workspace_root();
    let bin = tempfile::tempdir()?;
    let fake = bin.path().join("cargo");
    std::fs::write(&fake, "#!/bin/sh\necho '(the VMM options)'\n")?;
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .arg(root.join("run.sh"))
        .arg("--help")
        .env("PATH", path)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !text.contains("Usage: ./run.sh") || !text.contains("(the VMM options)") {
        return Err(format!("no usage text: {text}").into());
    }
    if text.contains("set -euo pipefail") {
        return Err(format!("a line of the script in the help: {text}").into());
    }
    Ok(())
}

/// 1. The embedding example, on a host where it cannot boot (software KVM, or no guest image).
/// 2. It says what went wrong in words, with exit code 1, never an error's debug form.
fn embedding_example_error() -> Trial {
    let name = "embedding_example_reports_errors_in_words";
    let example = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("examples/boot_from_code")));
    let skip = match (&example, host::detect()) {
        (Some(path), _) if !path.exists() => Some(format!(
            "skipped, because the example is not built ({}; cargo build --release --all-targets)",
            path.display()
        )),
        (None, _) => Some("skipped, because the build folder is unknown".to_string()),
        (_, HostKind::Hardware) => {
            Some("skipped, because on a hardware-virtualization host it would boot".to_string())
        }
        _ => None,
    };
    if let Some(why) = skip {
        println!("{why}");
        return Trial::test(name, || Ok(())).with_ignored_flag(true);
    }
    let example = example.expect("checked above");
    Trial::test(name, move || {
        let out = Command::new(&example).output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() != Some(1) || !stderr.starts_with("boot_from_code: error: ") {
            return Err(format!("{:?}: {stderr}", out.status.code()).into());
        }
        if stderr.contains("Error: ") || stderr.contains(" { ") {
            return Err(format!("an error's debug form: {stderr}").into());
        }
        Ok(())
    })
}
