//! Adversarial request driver: a hostile guest's requests straight into [`RedirectFs`].
//!
//! A guest with root in its VM can send any FUSE request: its kernel is skipped, so any node
//! id, handle, name, flag or count can arrive, several requests at once, and the server can
//! restart (a VM restart) between any two. This driver does that through the fuse-backend-rs
//! `FileSystem` trait, the way the FUSE server calls the engine after decoding a request:
//!
//! 1. A seed gives a profile (which requests, which limits: the store descriptor bound, the
//!    placement policy) and a sequence of steps: every request the engine implements, mostly
//!    sensible for what the guest's kernel knows, mixed with stale node ids, stale handles,
//!    bad names, huge offsets, FORGET counts beyond the lookups, WRITE flags that differ from
//!    the open flags (fcntl F_SETFL), O_EXCL, O_TRUNC, exchanges, hard links, files unlinked
//!    while open, and races: several requests from several threads at once (a 128 KiB WRITE
//!    against a truncate of the same file; a RENAME against READs and LOOKUPs of its names).
//! 2. Every reply is judged by a reference model of names and contents (`adversarial/model.rs`);
//!    after a race, every model state some order of the raced requests explains is kept.
//! 3. Rounds end with a check: the whole share walked through the file system (every name,
//!    attribute, byte, link target, xattr, and every open file through its handle) and
//!    `fsredirect::verify` (every stub's size equal to its stored object's, ...); `verify` also
//!    runs after every race. Between rounds the server is often restarted on the same tree
//!    and store: node ids, handles and caches are gone, and the model's kernel knows only the
//!    root again, so names come back half known (one of two hard links looked up, say).
//! 4. The run ends with a check, a clean stop and `verify` of the stopped share.
//!
//! Four trials, one per way of running the server: as root with guest-tree inodes held as
//! file handles (`inode_file_handles: true`), as root with them held as `O_PATH` descriptors
//! (`false`: how a server without CAP_DAC_READ_SEARCH identifies inodes, where fuse-backend-rs
//! hands a freed host inode number's old node id to the next file that gets it), the same
//! with extended attributes reached through the server's own descriptors
//! (`xattrs_by_descriptor: true`, as `--sandbox chroot` serves; skipped without Linux 6.13's
//! `getxattrat`), and as a real unprivileged user (the test binary copied to a temp dir and re-executed through
//! `setpriv --reuid=65534 --regid=65534 --clear-groups`; root only).
//!
//! A finding prints its seed, how to replay it, and a trace shrunk by delta debugging, with
//! every reply. The default budget (`cargo test`) is the committed seeds below, 5000
//! operations each (120,000 in all); the 10-million-operation exploration (no shrinking: a
//! finding prints its seed, and a replay with `FSR_ADV_SEED` shrinks it):
//!
//! ```text
//! FSR_ADV_SEEDS=200 FSR_ADV_OPS=17000 FSR_ADV_SHRINK=0 cargo test --release -p fsredirect --test adversarial
//! ```
//!
//! `FSR_ADV_SEEDS` (seeds per trial: the committed ones, then more derived from the index),
//! `FSR_ADV_OPS` (operations per seed), `FSR_ADV_SEED` (one seed only, decimal or 0x-hex),
//! `FSR_ADV_MODE` (`handles`, `paths`, `xattrs`, `unprivileged`: the trials to run,
//! comma-separated),
//! `FSR_ADV_SHRINK` (most replays spent shrinking one finding, default 1000; 0: no shrinking),
//! `FSR_ADV_VERIFY_EACH` (`verify` after every request, not only after races and checks:
//! slower, but a finding then names the request that broke the share),
//! `FSR_ADV_TAIL` (a finding also prints the last lines of its run's log, this many: for a
//! race a replay may not lose again),
//! `RUST_LOG` (the servers' log, to standard error, at that level: `warn` for what went wrong
//! inside them),
//! `FSR_ADV_DEBUG` (also print how many replies were judged against several model states).
//!
//! As root, each trial's shares live on a journaled ext4 of its own (a loop-mounted image):
//! freed inode numbers come back at once and lowest first there, as on a typical host, and
//! nothing else allocates, so a seed replays the same way. Runs with races may still take
//! another path after a race ends differently.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Instant;

use libtest_mimic::{Arguments, Completion, Failed, Trial};

#[path = "adversarial/exec.rs"]
mod exec;
#[path = "adversarial/gen.rs"]
mod gen;
#[path = "adversarial/model.rs"]
mod model;
#[path = "adversarial/ops.rs"]
mod ops;
#[path = "adversarial/run.rs"]
mod run;
#[path = "adversarial/shrink.rs"]
mod shrink;

use run::{replay, run_seed, Serving, Stats};

/// Operations per seed by default.
const OPS_PER_SEED: u64 = 5000;

/// Seeds run by default as root with file-handle inodes. On 624a1f3, 0x56d54f5c8b02 found
/// that MKNOD over an existing file destroyed its stored object, and on 939b0bc, after about
/// 2,900 operations, a node whose names the server no longer knew (a hard link unlinked, the
/// other name never looked up since a restart): LINK answered ENOENT. On 939b0bc
/// 0xd8affd056f49 found a FORGET beyond the references held, sent while the file was open,
/// taking away a later LOOKUP's reference at the release.
const SEEDS_HANDLES: &[u64] = &[
    0xa8fe884cdf9e,
    0x56d54f5c8b02,
    0x6c7409e24948,
    0x4,
    0x6,
    0x8,
    0x31dbe5cbe75d,
    0xca5703e30251,
    0xd8affd056f49,
];
/// Seeds run by default as root with descriptor inodes. On 624a1f3: 0x22556f313231 found a
/// new file answering with the bytes of a file overwritten by RENAME (its node id reused; it
/// runs first, on a fresh file system, so the inode numbers repeat), 0xa8fe884cdf9e and
/// 0xf70dabc91023 a WRITE racing a truncate leaving stub and object at different sizes,
/// 0xd8604a028290 a WRITE without O_APPEND appending. On 939b0bc: 0xabd2c012126c an O_SYNC
/// WRITE answering ESTALE after its bytes landed (the open file's node forgotten), and
/// 0xeb002ecacd38 a MKDIR answering EBADF after making the directory (a FORGET of its parent
/// in flight). On e62ab65: 0xe71b714fa3fa a CREATE opening an existing hard link answering
/// ESTALE (a RENAME_EXCHANGE moved the one name that kept a forgotten directory in the name
/// table out of it before counting the name it moved in: names.rs, `exchange`).
const SEEDS_PATHS: &[u64] = &[
    0x22556f313231,
    0xa8fe884cdf9e,
    0xd8604a028290,
    0xf70dabc91023,
    0x4,
    0x6,
    0x7,
    0x8,
    0xabd2c012126c,
    0xeb002ecacd38,
    0xe71b714fa3fa,
];
/// Seeds run by default as an unprivileged user. On 939b0bc 0x91167b332b17 found a node
/// left without a path by a FORGET of its directory; on 73815e3 (once, in a race)
/// 0x1845850ad17d a SETATTR answering EBADF after changing the mtime (a FORGET of its node in
/// flight).
const SEEDS_UNPRIVILEGED: &[u64] = &[
    0x22556f313231,
    0xa8fe884cdf9e,
    0x4,
    0x8,
    0x91167b332b17,
    0x1845850ad17d,
];

/// The uid and gid of the unprivileged run (nobody, nogroup).
const NOBODY: u32 = 65534;

/// One way of running the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Handles,
    Paths,
    /// As `Paths`, with extended attributes reached by the server's own descriptors
    /// (`FsConfig::xattrs_by_descriptor`, as `--sandbox chroot` serves).
    Xattrs,
    Unprivileged,
}

impl Mode {
    const ALL: [Mode; 4] = [Mode::Handles, Mode::Paths, Mode::Xattrs, Mode::Unprivileged];

    fn name(self) -> &'static str {
        match self {
            Mode::Handles => "handles",
            Mode::Paths => "paths",
            Mode::Xattrs => "xattrs",
            Mode::Unprivileged => "unprivileged",
        }
    }

    fn trial(self) -> &'static str {
        match self {
            Mode::Handles => "hostile_requests_to_a_root_server_with_file_handle_inodes",
            Mode::Paths => "hostile_requests_to_a_root_server_with_descriptor_inodes",
            Mode::Xattrs => "hostile_requests_to_a_server_reaching_xattrs_by_its_own_descriptors",
            Mode::Unprivileged => "hostile_requests_to_a_server_run_as_an_unprivileged_user",
        }
    }

    fn committed(self) -> &'static [u64] {
        match self {
            Mode::Handles => SEEDS_HANDLES,
            // The descriptor-inode seeds, which found the defects of unknown paths.
            Mode::Paths | Mode::Xattrs => SEEDS_PATHS,
            Mode::Unprivileged => SEEDS_UNPRIVILEGED,
        }
    }

    /// How this mode's server is configured (the unprivileged child runs `Paths`' way).
    fn serving(self) -> Serving {
        Serving {
            file_handles: self == Mode::Handles,
            xattrs_by_descriptor: self == Mode::Xattrs,
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

/// True if this kernel has the `*xattrat` calls.
fn has_xattr_at() -> bool {
    fsredirect::beneath::ProcSelfFd::open().is_ok_and(|proc| proc.has_xattr_at())
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The seeds of `mode` for this run.
fn seeds(mode: Mode) -> Vec<u64> {
    if let Some(seed) = env_u64("FSR_ADV_SEED") {
        return vec![seed];
    }
    let committed = mode.committed();
    let n = env_u64("FSR_ADV_SEEDS").unwrap_or(committed.len() as u64) as usize;
    let mut rng = gen::Rng::new(0xad5e_ed00 ^ mode as u64);
    (0..n)
        .map(|i| {
            committed
                .get(i)
                .copied()
                .unwrap_or_else(|| rng.next() >> 16)
        })
        .collect()
}

fn main() {
    // The model predicts modes from each request's own umask, as a server that does not
    // apply its own on top would set them.
    // SAFETY: umask has no preconditions and cannot fail.
    unsafe { libc::umask(0) };
    if std::env::var_os("RUST_LOG").is_some() {
        // The servers' own log, to stderr, for a finding the driver's trace does not explain.
        env_logger::init();
    }
    if std::env::var_os("FSR_ADV_CHILD").is_some() {
        child_main();
    }
    let args = Arguments::from_args();
    let trials = Mode::ALL
        .iter()
        .map(|&mode| Trial::ignorable_test(mode.trial(), move || run_mode(mode)))
        .collect();
    libtest_mimic::run(&args, trials).exit();
}

/// A journaled ext4 of its own for one trial, loop-mounted (root only). There, as on the
/// journaled ext4 of a typical host, a freed inode number is handed out again at once, lowest
/// first (what fuse-backend-rs's descriptor identities trip over), and no other process
/// allocates in between, so a seed repeats. The machine's /tmp may be an ext4 without a
/// journal, which holds freed numbers back for a minute.
struct Scratch {
    img: std::path::PathBuf,
    mnt: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Result<Self, String> {
        let mnt = tempfile::Builder::new()
            .prefix("fsr-adv-mnt")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let img = mnt.path().with_extension("img");
        let file = std::fs::File::create(&img).map_err(|e| e.to_string())?;
        file.set_len(512 << 20).map_err(|e| e.to_string())?;
        let run = |cmd: &mut Command| -> Result<(), String> {
            let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{cmd:?}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        };
        let made = run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-N", "65536"])
            .arg(&img))
        .and_then(|()| {
            run(Command::new("mount")
                .args(["-o", "loop"])
                .arg(&img)
                .arg(mnt.path()))
        });
        if let Err(e) = made {
            let _ = std::fs::remove_file(&img);
            return Err(e);
        }
        Ok(Scratch { img, mnt })
    }

    fn path(&self) -> &std::path::Path {
        self.mnt.path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Lazily: a child process spawned by another trial (the unprivileged one) may still
        // hold descriptors it inherited from this one's server until it exits.
        match Command::new("umount")
            .arg("-l")
            .arg(self.mnt.path())
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "adversarial: umount {}: {}",
                self.mnt.path().display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("adversarial: umount {}: {e}", self.mnt.path().display()),
        }
        let _ = std::fs::remove_file(&self.img);
    }
}

/// The file system a trial's shares go to: an ext4 of its own when that can be made, else
/// the temp directory (with a note why).
fn scratch() -> (Option<Scratch>, std::path::PathBuf) {
    if euid() != 0 {
        return (None, std::env::temp_dir());
    }
    match Scratch::new() {
        Ok(s) => {
            let p = s.path().to_path_buf();
            (Some(s), p)
        }
        Err(e) => {
            println!(
                "adversarial: no file system of its own ({e}); shares go to the temp directory"
            );
            (None, std::env::temp_dir())
        }
    }
}

fn skipped(why: String) -> Result<Completion, Failed> {
    println!("skipped, because {why}");
    Ok(Completion::ignored_with(format!("skipped, because {why}")))
}

/// Runs the seeds of `mode`, prints the figure line and every finding.
fn run_mode(mode: Mode) -> Result<Completion, Failed> {
    if let Ok(only) = std::env::var("FSR_ADV_MODE") {
        if !only.split(',').any(|m| m.trim() == mode.name()) {
            return skipped(format!("FSR_ADV_MODE={only} leaves out {}", mode.name()));
        }
    }
    let ops = env_u64("FSR_ADV_OPS").unwrap_or(OPS_PER_SEED);
    let seeds = seeds(mode);
    match mode {
        Mode::Handles if euid() != 0 => {
            return skipped("file-handle inodes need CAP_DAC_READ_SEARCH (run as root)".into())
        }
        Mode::Unprivileged if euid() != 0 => {
            return skipped(
                "this already runs unprivileged: the descriptor-inode trial covers it".into(),
            )
        }
        Mode::Unprivileged => return run_unprivileged(&seeds, ops),
        Mode::Xattrs if !has_xattr_at() => {
            return skipped("this kernel has no getxattrat (Linux 6.13 and later)".into())
        }
        _ => {}
    }
    let start = Instant::now();
    let (_fs, base) = scratch();
    let (stats, findings) = run_seeds(&base, mode, &seeds, ops);
    figure(
        mode,
        &stats,
        seeds.len(),
        findings.len(),
        start.elapsed().as_secs_f64(),
    );
    if findings.is_empty() {
        Ok(Completion::Completed)
    } else {
        Err(Failed::from(format!(
            "{} of {} seeds found a defect (details above):\n{}",
            findings.len(),
            seeds.len(),
            findings.join("\n")
        )))
    }
}

fn figure(mode: Mode, s: &Stats, seeds: usize, findings: usize, secs: f64) {
    if std::env::var_os("FSR_ADV_DEBUG").is_some() {
        println!(
            "  requests judged against several model states: {}",
            s.ambiguous
        );
    }
    println!(
        "adversarial [{}]: {} operations over {} seeds ({} requests with the checks', {} race rounds, {} restarts, {} checks) in {:.1} s: {} findings",
        mode.name(),
        s.ops,
        seeds,
        s.calls,
        s.races,
        s.restarts,
        s.checks,
        secs,
        findings
    );
}

/// Runs `seeds`; returns the totals and one summary line per finding (the details are
/// printed as they are found).
fn run_seeds(base: &std::path::Path, mode: Mode, seeds: &[u64], ops: u64) -> (Stats, Vec<String>) {
    let mut total = Stats::default();
    let mut findings = Vec::new();
    for &seed in seeds {
        let tail = env_u64("FSR_ADV_TAIL").unwrap_or(0) as usize;
        let (setup, run) = run_seed(base, mode.serving(), seed, ops, tail);
        total += run.stats;
        let Some(finding) = run.finding else {
            continue;
        };
        let mut text = format!(
            "adversarial [{}] seed {seed:#x}: finding after {} operations (step {} of the trace)\n  {}\n  profile: {}\n  replay: FSR_ADV_MODE={} FSR_ADV_SEED={seed:#x} FSR_ADV_OPS={ops} cargo test --release -p fsredirect --test adversarial\n",
            mode.name(),
            run.stats.ops,
            finding.step,
            finding.mismatch.msg,
            setup.profile.describe(),
            mode.name(),
        );
        if !run.log_tail.is_empty() {
            text.push_str(&format!(
                "  the last {} lines of this run's log:\n",
                run.log_tail.len()
            ));
            for line in &run.log_tail {
                text.push_str(&format!("    {line}\n"));
            }
        }
        let budget = env_u64("FSR_ADV_SHRINK").unwrap_or(1000) as usize;
        let mut steps = run.steps;
        steps.truncate(finding.step + 1);
        if budget > 0 {
            let shrunk = shrink::shrink(&setup, &finding.mismatch.class, steps, budget);
            // A race may need a few tries to lose again.
            let mut shown = replay(&setup, &shrunk.steps, true);
            for _ in 0..4 {
                if shown.0.is_some() {
                    break;
                }
                shown = replay(&setup, &shrunk.steps, true);
            }
            let (again, log) = shown;
            text.push_str(&format!(
                "  shrunk to {} steps ({} replays); replayed: {}\n",
                shrunk.steps.len(),
                shrunk.replays,
                match &again {
                    Some(m) => m.msg.clone(),
                    None => "no finding this time (a race lost)".into(),
                }
            ));
            for line in log {
                text.push_str(&format!("    {line}\n"));
            }
        }
        print!("{text}");
        let _ = std::io::stdout().flush();
        findings.push(format!(
            "  seed {seed:#x} [{}]: {}",
            mode.name(),
            finding.mismatch.class
        ));
    }
    (total, findings)
}

/// The unprivileged trial: this binary, copied where user `nobody` can run it, re-executed
/// through setpriv on a work directory that user owns.
fn run_unprivileged(seeds: &[u64], ops: u64) -> Result<Completion, Failed> {
    if Command::new("setpriv").arg("--version").output().is_err() {
        return skipped("setpriv (util-linux) is not installed".into());
    }
    let start = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("fsr-adv-unpriv")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let exe = tmp.path().join("adversarial");
    let (_fs, base) = scratch();
    let work = base.join(format!("fsr-adv-nobody-{}", std::process::id()));
    let setup = || -> std::io::Result<()> {
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711))?;
        std::fs::copy(std::env::current_exe()?, &exe)?;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755))?;
        std::fs::create_dir(&work)?;
        std::os::unix::fs::chown(&work, Some(NOBODY), Some(NOBODY))
    };
    setup().map_err(|e| format!("cannot prepare the unprivileged run: {e}"))?;
    let list: Vec<String> = seeds.iter().map(|s| s.to_string()).collect();
    let out = Command::new("setpriv")
        .arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .arg("--clear-groups")
        .arg("--")
        .arg(&exe)
        .env("FSR_ADV_CHILD", "1")
        .env("FSR_ADV_CHILD_SEEDS", list.join(","))
        .env("FSR_ADV_OPS", ops.to_string())
        .env("TMPDIR", &work)
        .output()
        .map_err(|e| format!("cannot run setpriv: {e}"))?;
    let _ = std::fs::remove_dir_all(&work);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut stats = Stats::default();
    let mut findings = None;
    for line in stdout.lines() {
        if let Some(rest) = line.strip_prefix("ADV-CHILD ") {
            let field = |k: &str| {
                rest.split(' ')
                    .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            stats = Stats {
                ops: field("ops"),
                calls: field("calls"),
                races: field("races"),
                restarts: field("restarts"),
                checks: field("checks"),
                ambiguous: 0,
            };
            findings = Some(field("findings"));
        } else {
            println!("{line}");
        }
    }
    let Some(findings) = findings else {
        return Err(Failed::from(format!(
            "the unprivileged run ended without a summary ({}); its stderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    };
    figure(
        Mode::Unprivileged,
        &stats,
        seeds.len(),
        findings as usize,
        start.elapsed().as_secs_f64(),
    );
    if findings == 0 && out.status.success() {
        Ok(Completion::Completed)
    } else {
        Err(Failed::from(format!(
            "{findings} of {} seeds found a defect as an unprivileged user (details above)",
            seeds.len()
        )))
    }
}

/// The re-executed child of the unprivileged trial.
fn child_main() -> ! {
    if euid() == 0 {
        eprintln!("the unprivileged child runs as root: setpriv did not drop privileges");
        std::process::exit(2);
    }
    let seeds: Vec<u64> = std::env::var("FSR_ADV_CHILD_SEEDS")
        .unwrap_or_default()
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect();
    let ops = env_u64("FSR_ADV_OPS").unwrap_or(OPS_PER_SEED);
    let (s, findings) = run_seeds(&std::env::temp_dir(), Mode::Unprivileged, &seeds, ops);
    println!(
        "ADV-CHILD ops={} calls={} races={} restarts={} checks={} findings={}",
        s.ops,
        s.calls,
        s.races,
        s.restarts,
        s.checks,
        findings.len()
    );
    std::process::exit(i32::from(!findings.is_empty()));
}
