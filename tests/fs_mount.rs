//! The redirecting file system through the real Linux FUSE client: `fsredirect mount` on the
//! host, driven by pjdfstest, fio --verify and our randomized model-based exerciser, each on a
//! redirecting share and on a passthrough share. After each run the share is unmounted and
//! every stub is checked against its stored object (`fsredirect::verify`). The model
//! exerciser also runs on redirecting shares with placement policies (`policy=min-size:...`
//! and include/exclude rules), checking on the host that files sit where the policy says.
//!
//! Skipped, with the reason, when not root, without /dev/fuse, or without the tools
//! (`apt-get install fio libacl1-dev`; pjdfstest is built by the test itself, or taken from
//! $PJDFSTEST).

#[path = "src/fuse_mount.rs"]
mod fuse_mount;
#[path = "src/model.rs"]
mod model;

use std::path::Path;
use std::process::Command;

use fuse_mount::{fsredirect_bin, fuse_unavailable, which, HostMount, ShareDirs};
use libtest_mimic::{Arguments, Completion, Failed, Trial};

/// What pjdfstest must reach on a redirecting share: at least this many passed...
const PJD_MIN_PASSED: usize = 381;
/// ...and at most this many failed.
const PJD_MAX_FAILED: usize = 1;

fn main() {
    let args = Arguments::from_args();
    let mut trials = Vec::new();
    for redirect in [true, false] {
        let kind = if redirect { "redirect" } else { "passthrough" };
        trials.push(trial(format!("pjdfstest_{kind}"), move || {
            pjdfstest(redirect)
        }));
        trials.push(trial(format!("fio_verify_{kind}"), move || {
            fio_verify(redirect)
        }));
        trials.push(trial(format!("model_exerciser_{kind}"), move || {
            model_exerciser(redirect)
        }));
    }
    for (label, policy) in POLICIES {
        trials.push(trial(
            format!("model_exerciser_policy_{label}"),
            move || model_exerciser_policy(label, policy),
        ));
    }
    trials.push(trial(
        "host_fds_stay_bounded_redirect".into(),
        host_fds_stay_bounded,
    ));
    trials.push(trial(
        "kill_and_remount_keeps_fsynced_data_redirect".into(),
        kill_and_remount,
    ));
    trials.push(trial(
        "kill_during_random_operations_then_recover_redirect".into(),
        || kill_during_random_operations(None),
    ));
    trials.push(trial(
        "kill_during_random_operations_then_recover_policy_min_size".into(),
        || kill_during_random_operations(Some(POLICIES[0].1)),
    ));
    libtest_mimic::run(&args, trials).exit();
}

/// Outcome of one test: passed, skipped with a reason, or failed.
enum Outcome {
    Pass,
    Skip(String),
}

fn trial(name: String, f: impl FnOnce() -> Result<Outcome, String> + Send + 'static) -> Trial {
    Trial::ignorable_test(name, move || match f() {
        Ok(Outcome::Pass) => Ok(Completion::Completed),
        Ok(Outcome::Skip(why)) => {
            println!("skipped, because {why}");
            Ok(Completion::ignored_with(format!("skipped, because {why}")))
        }
        Err(e) => Err(Failed::from(e)),
    })
}

/// Runs `body` against a mounted share, then unmounts and checks the mirror.
fn with_mount(
    label: &str,
    redirect: bool,
    extra: &[&str],
    body: impl FnOnce(&HostMount, &Path) -> Result<(), String>,
) -> Result<Outcome, String> {
    with_share(label, redirect, None, extra, |mount, mnt, _| {
        body(mount, mnt)
    })
}

/// [`with_mount`] with an optional `policy=` on a redirecting share; `body` also gets the
/// share's directories.
fn with_share(
    label: &str,
    redirect: bool,
    policy: Option<&str>,
    extra: &[&str],
    body: impl FnOnce(&HostMount, &Path, &ShareDirs) -> Result<(), String>,
) -> Result<Outcome, String> {
    if let Some(why) = fuse_unavailable() {
        return Ok(Outcome::Skip(why));
    }
    let bin = fsredirect_bin()?;
    let dirs = ShareDirs::new(&format!("{label}-{redirect}"));
    let mut spec = dirs.spec(redirect);
    if let Some(policy) = policy {
        spec = format!("{spec},policy={policy}");
    }
    let mount = HostMount::start(&bin, &spec, extra, &dirs.mnt)?;
    let result = body(&mount, &dirs.mnt, &dirs);
    let stopped = mount.stop();
    result?;
    stopped?;
    if redirect {
        let share = fsredirect::ShareSpec::parse(&spec).map_err(|e| e.to_string())?;
        let mismatches = fsredirect::verify::verify_share(&share).map_err(|e| e.to_string())?;
        if !mismatches.is_empty() {
            return Err(format!(
                "stubs disagree with stored objects: {mismatches:?}"
            ));
        }
    }
    Ok(Outcome::Pass)
}

/// 1. Build pjdfstest 0.2.2 unless already built.
/// 2. Mount a share, run the whole suite in it as root (it switches to nobody/daemon itself).
/// 3. Print the counts; on a redirecting share require at least `PJD_MIN_PASSED` passed and
///    at most `PJD_MAX_FAILED` failed.
fn pjdfstest(redirect: bool) -> Result<Outcome, String> {
    if let Some(why) = fuse_unavailable() {
        return Ok(Outcome::Skip(why));
    }
    for (user, group) in [("nobody", "nogroup"), ("daemon", "daemon")] {
        if !entity_exists("passwd", user) || !entity_exists("group", group) {
            return Ok(Outcome::Skip(format!(
                "pjdfstest needs user {user} and group {group}"
            )));
        }
    }
    let pjd = match e2e_tests::pjdfstest::binary() {
        Ok(p) => p,
        Err(why) => return Ok(Outcome::Skip(why)),
    };
    let mut counts = None;
    let outcome = with_mount("pjdfstest", redirect, &[], |_, mnt| {
        let config = mnt.parent().unwrap_or(mnt).join("pjdfstest.toml");
        std::fs::write(&config, PJD_CONFIG).map_err(|e| e.to_string())?;
        let out = Command::new(&pjd)
            .arg("-c")
            .arg(&config)
            .arg("-p")
            .arg(mnt)
            .output()
            .map_err(|e| format!("cannot run pjdfstest: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        for line in stdout.lines().filter(|l| l.contains("FAILED")) {
            println!("  {line}");
        }
        counts = Some(parse_pjd_counts(&stdout).ok_or_else(|| {
            format!(
                "no summary in pjdfstest output:\n{}\n{}",
                stdout,
                String::from_utf8_lossy(&out.stderr)
            )
        })?);
        Ok(())
    })?;
    if let Some((passed, failed, skipped)) = counts {
        let total = passed + failed + skipped;
        println!(
            "pjdfstest on {} share: {passed} passed, {failed} failed, {skipped} skipped of {total}",
            if redirect {
                "redirecting"
            } else {
                "passthrough"
            }
        );
        if passed < PJD_MIN_PASSED || failed > PJD_MAX_FAILED {
            return Err(format!(
                "pjdfstest below target: {passed} passed (want >= {PJD_MIN_PASSED}), {failed} failed (want <= {PJD_MAX_FAILED})"
            ));
        }
    }
    Ok(outcome)
}

const PJD_CONFIG: &str = r#"[features]
posix_fallocate = {}
rename_ctime = {}
utimensat = {}
utime_now = {}

[settings]
naptime = 0.01

[dummy_auth]
entries = [
  ["nobody", "nogroup"],
  ["daemon", "daemon"],
]
"#;

fn entity_exists(db: &str, name: &str) -> bool {
    Command::new("getent")
        .args([db, name])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Parses the last line of pjdfstest's output: "N tests passed, N failed, N skipped" style.
fn parse_pjd_counts(out: &str) -> Option<(usize, usize, usize)> {
    let (mut passed, mut failed, mut skipped) = (None, None, None);
    for line in out.lines().rev() {
        let words: Vec<&str> = line
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|w| !w.is_empty())
            .collect();
        for pair in words.windows(2) {
            let n = pair[0].parse::<usize>();
            match (n, pair[1]) {
                (Ok(n), w) if w.starts_with("passed") => passed = passed.or(Some(n)),
                (Ok(n), w) if w.starts_with("failed") => failed = failed.or(Some(n)),
                (Ok(n), w) if w.starts_with("skipped") => skipped = skipped.or(Some(n)),
                _ => {}
            }
        }
        if passed.is_some() && failed.is_some() {
            return Some((passed?, failed?, skipped.unwrap_or(0)));
        }
    }
    None
}

/// 1. Mount a share.
/// 2. Run fio writing random blocks with crc32c checksums through pwrite and through mmap,
///    then reading them back (`--verify`, fatal on the first bad block).
fn fio_verify(redirect: bool) -> Result<Outcome, String> {
    let Some(fio) = which("fio") else {
        return Ok(Outcome::Skip(
            "fio is not installed (apt-get install fio)".into(),
        ));
    };
    with_mount("fio", redirect, &[], |_, mnt| {
        for engine in ["psync", "mmap"] {
            let out = Command::new(&fio)
                .args([
                    "--name=verify",
                    "--rw=randwrite",
                    "--bs=4k",
                    "--size=8M",
                    "--numjobs=2",
                    "--verify=crc32c",
                    "--verify_fatal=1",
                    "--do_verify=1",
                    "--group_reporting",
                    "--verify_state_save=0",
                ])
                .arg(format!("--ioengine={engine}"))
                .arg(format!("--directory={}", mnt.display()))
                .output()
                .map_err(|e| format!("cannot run fio: {e}"))?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            if !out.status.success() || !stdout.contains("err= 0") {
                return Err(format!(
                    "fio --verify with {engine} failed ({}):\n{stdout}\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            println!(
                "fio --verify ({engine}, 2 jobs x 8 MiB random 4k writes): all blocks verified"
            );
        }
        Ok(())
    })
}

/// 1. Mount a share.
/// 2. Run seeded random operations in it, each checked against the in-memory model.
/// 3. Print the seed; FSR_MODEL_SEED replays one, FSR_MODEL_STEPS changes the length.
fn model_exerciser(redirect: bool) -> Result<Outcome, String> {
    let (seed, steps) = model_seed_and_steps();
    println!("model exerciser: seed {seed}, {steps} steps (replay with FSR_MODEL_SEED={seed})");
    with_mount("model", redirect, &[], |_, mnt| {
        model::run(mnt, seed, steps).map_err(|e| format!("seed {seed}: {e}"))
    })
}

/// Policies the model exerciser runs under, with a label: sizes the exerciser's writes and
/// truncates cross both ways (it writes up to 90 KB), and path rules its renames cross (its
/// names are a, b, c, d at depths 1 to 3).
const POLICIES: [(&str, &str); 2] = [
    ("min_size", "min-size:32K"),
    ("patterns", "include:a;include:c;exclude:b/**;min-size:16K"),
];

/// 1. Mount a redirecting share with a placement policy.
/// 2. Run the seeded model exerciser in it; at every full comparison, also check on the host
///    that each file the server must have settled is inline or redirected as the policy says.
/// 3. Print how many placements were checked each way (a long enough run that checked none
///    one way fails); unmount and verify the mirror (inline files need no object).
fn model_exerciser_policy(label: &str, policy: &'static str) -> Result<Outcome, String> {
    let (seed, steps) = model_seed_and_steps();
    println!(
        "model exerciser, policy {policy}: seed {seed}, {steps} steps \
         (replay with FSR_MODEL_SEED={seed})"
    );
    with_share(
        &format!("model-{label}"),
        true,
        Some(policy),
        &[],
        |_, mnt, dirs| {
            let placement = model::Placement {
                guest: dirs.guest.clone(),
                policy: fsredirect::Policy::parse(policy).map_err(|e| e.to_string())?,
            };
            model::run_with(mnt, seed, steps, Some(&placement))
                .map_err(|e| format!("seed {seed}: {e}"))?;
            Ok(())
        },
    )
}

/// The model exerciser's seed (FSR_MODEL_SEED, or the clock) and length (FSR_MODEL_STEPS).
fn model_seed_and_steps() -> (u64, usize) {
    let seed = std::env::var("FSR_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    let steps = std::env::var("FSR_MODEL_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    (seed, steps)
}

/// Store descriptors the server may hold in `host_fds_stay_bounded`.
const FD_BOUND: usize = 32;

/// Guest-tree inodes the server may keep open for GETATTR in `host_fds_stay_bounded`.
const HOT_BOUND: usize = 64;

/// 1. Mount a redirecting share with `--max-store-fds 32 --max-hot-inodes 64` and note the
///    server's descriptors.
/// 2. Create 2000 files and stat them all (2000 kernel inodes), then hold 300 of them open
///    at once, writing to each and reading it back.
/// 3. Every file reads back its own bytes, and the server never holds more than one store
///    object per open file (the guest's descriptor budget), twice the store bound for the
///    files not open (cached objects and stubs), the hot inodes and its fixed overhead.
/// 4. Once the files are closed, the open files' descriptors are given back.
fn host_fds_stay_bounded() -> Result<Outcome, String> {
    let bound = FD_BOUND.to_string();
    let hot = HOT_BOUND.to_string();
    let args = ["--max-store-fds", &bound, "--max-hot-inodes", &hot];
    with_mount("fds", true, &args, |mount, mnt| {
        let baseline = mount.open_fds();
        let rss_start = mount.rss_kib();
        let dir = mnt.join("many");
        std::fs::create_dir(&dir).map_err(|e| e.to_string())?;
        for i in 0..2000 {
            std::fs::write(dir.join(format!("f{i}")), format!("file {i}"))
                .map_err(|e| e.to_string())?;
        }
        for i in 0..2000 {
            std::fs::metadata(dir.join(format!("f{i}"))).map_err(|e| e.to_string())?;
        }
        let rss_inodes = mount.rss_kib();
        let mut held = Vec::new();
        let mut peak = mount.open_fds();
        for i in 0..300 {
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .append(true)
                .open(dir.join(format!("f{i}")))
                .map_err(|e| e.to_string())?;
            std::io::Write::write_all(&mut f, b"+").map_err(|e| e.to_string())?;
            held.push(f);
            peak = peak.max(mount.open_fds());
        }
        for (i, f) in held.iter_mut().enumerate() {
            let mut back = String::new();
            std::io::Seek::rewind(f).map_err(|e| e.to_string())?;
            std::io::Read::read_to_string(f, &mut back).map_err(|e| e.to_string())?;
            if back != format!("file {i}+") {
                return Err(format!("f{i} reads {back:?}"));
            }
            peak = peak.max(mount.open_fds());
        }
        println!(
            "server descriptors: {baseline} at start, peak {peak} with 2000 inodes and 300 open files (store bound {FD_BOUND}, hot inodes {HOT_BOUND})"
        );
        println!(
            "server memory: {rss_start} KiB at start, {rss_inodes} KiB with 2000 inodes known to the kernel ({} bytes per inode)",
            rss_inodes.saturating_sub(rss_start) * 1024 / 2000
        );
        // An open file holds its store object; the store bound applies to the cache of
        // objects and, again, to stubs being written.
        let open = held.len();
        let cached = 2 * FD_BOUND + HOT_BOUND + 8;
        if peak > baseline + open + cached {
            return Err(format!(
                "server held {peak} descriptors, more than {baseline} + {open} open + 2 x {FD_BOUND} + {HOT_BOUND} hot + 8"
            ));
        }
        drop(held);
        // The kernel sends RELEASE asynchronously after close.
        let mut after = mount.open_fds();
        for _ in 0..100 {
            if after <= baseline + cached {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            after = mount.open_fds();
        }
        println!("server descriptors after closing them: {after}");
        if after > baseline + cached {
            return Err(format!(
                "server still holds {after} descriptors after the files were closed"
            ));
        }
        Ok(())
    })
}

/// 1. Mount a redirecting share; write files and fsync them, then truncate one and fsync.
/// 2. SIGKILL the server (no clean stop) and detach the dead mount.
/// 3. Mount again (the volume lock died with the server; recovery runs): every file reads
///    its fsync'd bytes, and after a clean stop every stub agrees with its stored object.
fn kill_and_remount() -> Result<Outcome, String> {
    if let Some(why) = fuse_unavailable() {
        return Ok(Outcome::Skip(why));
    }
    let bin = fsredirect_bin()?;
    let dirs = ShareDirs::new("kill");
    let spec = dirs.spec(true);
    let err = |e: std::io::Error| e.to_string();
    let mount = HostMount::start(&bin, &spec, &[], &dirs.mnt)?;
    std::fs::create_dir(dirs.mnt.join("d")).map_err(err)?;
    for i in 0..20 {
        let mut f = std::fs::File::create(dirs.mnt.join(format!("d/f{i}"))).map_err(err)?;
        std::io::Write::write_all(&mut f, format!("fsynced {i}").repeat(100).as_bytes())
            .map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dirs.mnt.join("d/f0"))
        .map_err(err)?;
    f.set_len(5).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    mount.kill()?;
    let mount = HostMount::start(&bin, &spec, &[], &dirs.mnt)?;
    for i in 0..20 {
        let got = std::fs::read(dirs.mnt.join(format!("d/f{i}"))).map_err(err)?;
        let want = if i == 0 {
            b"fsync".to_vec()
        } else {
            format!("fsynced {i}").repeat(100).into_bytes()
        };
        if got != want {
            return Err(format!("d/f{i} lost its fsync'd bytes after the kill"));
        }
    }
    mount.stop()?;
    let share = fsredirect::ShareSpec::parse(&spec).map_err(|e| e.to_string())?;
    let mismatches = fsredirect::verify::verify_share(&share).map_err(|e| e.to_string())?;
    if !mismatches.is_empty() {
        return Err(format!(
            "stubs disagree with stored objects: {mismatches:?}"
        ));
    }
    println!("killed and remounted: 20 fsync'd files intact, stubs agree with the store");
    Ok(Outcome::Pass)
}

/// 1. Mount a redirecting share and run the model exerciser in it from a seed.
/// 2. SIGKILL the server at a random moment while operations are in flight; detach the mount.
/// 3. Mount again (recovery replays the intent log and reconciles stubs), read every file
///    back without an error, stop cleanly: every stub agrees with its stored object and no
///    object is left without a stub. Five rounds on one share; the seed is printed.
///
/// With a `policy` (files then move between inline and redirected as they cross its
/// `min-size`), kills also land in the middle of such moves.
fn kill_during_random_operations(policy: Option<&str>) -> Result<Outcome, String> {
    if let Some(why) = fuse_unavailable() {
        return Ok(Outcome::Skip(why));
    }
    let bin = fsredirect_bin()?;
    let dirs = ShareDirs::new(if policy.is_some() {
        "crash-policy"
    } else {
        "crash"
    });
    let mut spec = dirs.spec(true);
    if let Some(policy) = policy {
        spec = format!("{spec},policy={policy}");
    }
    let share = fsredirect::ShareSpec::parse(&spec).map_err(|e| e.to_string())?;
    let seed = std::env::var("FSR_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    println!("crash exerciser: seed {seed} (replay with FSR_MODEL_SEED={seed})");
    let mut rng = model::Rng::new(seed);
    for round in 0..5u64 {
        let mount = HostMount::start(&bin, &spec, &[], &dirs.mnt)?;
        let root = dirs.mnt.join(format!("r{round}"));
        std::fs::create_dir(&root).map_err(|e| e.to_string())?;
        let run_seed = seed.wrapping_add(round);
        let worker = std::thread::spawn(move || model::run(&root, run_seed, 1_000_000));
        std::thread::sleep(std::time::Duration::from_millis(50 + rng.below(400)));
        mount.kill()?;
        // The exerciser stops at its first error: the mount is gone.
        match worker.join() {
            Ok(Err(stopped)) => println!("round {round}: killed; exerciser stopped at {stopped}"),
            Ok(Ok(())) => println!("round {round}: exerciser finished before the kill"),
            Err(_) => return Err(format!("seed {seed} round {round}: exerciser panicked")),
        }
        let mount = HostMount::start(&bin, &spec, &[], &dirs.mnt)?;
        let read_all = read_tree(&dirs.mnt);
        let stopped = mount.stop();
        read_all.map_err(|e| format!("seed {seed} round {round}: after recovery: {e}"))?;
        stopped?;
        let mismatches = fsredirect::verify::verify_share(&share).map_err(|e| e.to_string())?;
        if !mismatches.is_empty() {
            return Err(format!(
                "seed {seed} round {round}: after recovery stubs disagree: {mismatches:?}"
            ));
        }
    }
    println!("crash exerciser: 5 kills at random points, recovered clean every time");
    Ok(Outcome::Pass)
}

/// Reads every regular file under `dir` (errors name the file).
fn read_tree(dir: &Path) -> Result<(), String> {
    for entry in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let path = entry.map_err(|e| e.to_string())?.path();
        let meta =
            std::fs::symlink_metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if meta.is_dir() {
            read_tree(&path)?;
        } else if meta.is_file() {
            std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    Ok(())
}
