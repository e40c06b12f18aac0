//! Landlock's limit on a file-serving thread ([`devices::confine`]): the limited thread
//! reaches its directory and reads `/proc/self/fd`, but not a file beside the directory,
//! not through `..`, not `/etc/passwd`, not the rest of `/proc`; other threads are not
//! limited.
//!
//! Skipped, with the reason, on a kernel without Landlock.

use devices::confine::{restrict_thread_beneath, Enforcement};
use libtest_mimic::{Arguments, Failed, Trial};

fn main() {
    let args = Arguments::from_args();
    let abi = devices::confine::kernel_abi();
    if let Err(why) = &abi {
        println!("skipped, because this kernel has no Landlock ({why})");
    }
    let trials = vec![Trial::test(
        "a_limited_thread_reaches_its_directory_and_nothing_beside_it",
        || limited_thread().map_err(Failed::from),
    )
    .with_ignored_flag(abi.is_err())];
    libtest_mimic::run(&args, trials).exit();
}

fn limited_thread() -> Result<(), String> {
    let base = tempfile::tempdir().map_err(|e| e.to_string())?;
    let served = base.path().join("served");
    let beside = base.path().join("beside.txt");
    std::fs::create_dir(&served).map_err(|e| e.to_string())?;
    std::fs::write(&beside, "secret").map_err(|e| e.to_string())?;
    let (served_in, beside_in) = (served.clone(), beside.clone());

    let outcome = std::thread::spawn(move || {
        let enforcement = restrict_thread_beneath(std::slice::from_ref(&served_in));
        let reached = |path: &std::path::Path| std::fs::read(path).is_ok();
        let inside = std::fs::write(served_in.join("new.txt"), "ok").is_ok()
            && reached(&served_in.join("new.txt"));
        let escapes = [
            ("a file beside it", reached(&beside_in)),
            (
                "the same through ..",
                reached(&served_in.join("../beside.txt")),
            ),
            ("/etc/passwd", reached(std::path::Path::new("/etc/passwd"))),
            (
                "another part of /proc",
                reached(std::path::Path::new("/proc/self/environ")),
            ),
        ];
        let proc_readable = std::fs::read_dir("/proc/self/fd").is_ok();
        (enforcement, inside, escapes, proc_readable)
    })
    .join()
    .map_err(|_| "the limited thread panicked".to_string())?;

    let (enforcement, inside, escapes, proc_readable) = outcome;
    match enforcement {
        Ok(Enforcement::None) => return Err("the kernel has Landlock but enforced nothing".into()),
        Ok(_) => {}
        Err(err) => return Err(err.to_string()),
    }
    if !inside || !proc_readable {
        return Err(format!(
            "the limited thread lost its own directory ({inside}) or /proc ({proc_readable})"
        ));
    }
    let reached: Vec<&str> = escapes
        .iter()
        .filter(|(_, r)| *r)
        .map(|(n, _)| *n)
        .collect();
    if !reached.is_empty() {
        return Err(format!("the limited thread reached {reached:?}"));
    }
    if std::fs::read(&beside).is_err() {
        return Err("a thread that was never limited lost access too".into());
    }
    Ok(())
}
