//! A power cut at every step of a move between guest tree and store loses nothing: moves
//! made by the server (a rename that changes what the share's policy wants) and by the host
//! tools (`hydrate`, `dehydrate`), in both directions.
//!
//! Each scenario first runs once without a cut, through a tracing hook, to number the steps:
//! every store operation and every step on the moving guest file (data written, metadata
//! set or removed, data punched out, syncs). Then, for each step `n`, a fresh share is set up
//! and a child process (this test binary re-executed with `FSR_MOVE_CHILD` set) runs the
//! scenario under a [`PowerLoss`] hook that cuts power before step `n` and ends the child
//! there. The model is the simulator's (see [`PowerLoss`]): unsynced data is lost, and on the
//! moving file a punch is durable at once while a metadata change is durable only once the
//! file is fsynced. The parent then starts a server (automatic recovery) and checks that the
//! file is under exactly one of its names with all its bytes, and that `verify` finds
//! nothing.

use std::ffi::CString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use fsredirect::faults::{Hook, PowerLoss, StoreHook, StoreOp};
use fsredirect::testshare::{fork_guard, TestShare};
use fsredirect::{FsConfig, RedirectFs, ShareSpec};
use fuse_backend_rs::abi::fuse_abi::FsOptions;
use fuse_backend_rs::api::filesystem::{Context, FileSystem};
use libtest_mimic::{Arguments, Failed, Trial};

/// Exit status of a child whose power was cut.
const CUT_EXIT: i32 = 77;
const ROOT: u64 = 1;
/// The share's policy: files under `big/` are redirected, others are inline.
const POLICY: &str = "policy=include:big/**";

#[derive(Debug, Clone, Copy)]
enum Scenario {
    /// The server moves a file into the store: it is renamed from `a` to `big/a`.
    ServerIntoStore,
    /// The server moves a file out of the store: it is renamed from `big/a` to `a`.
    ServerOutOfStore,
    /// `fsredirect dehydrate a`.
    ToolDehydrate,
    /// `fsredirect hydrate big/a`.
    ToolHydrate,
}

impl Scenario {
    const ALL: [Scenario; 4] = [
        Scenario::ServerIntoStore,
        Scenario::ServerOutOfStore,
        Scenario::ToolDehydrate,
        Scenario::ToolHydrate,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::ServerIntoStore => "server_into_store",
            Scenario::ServerOutOfStore => "server_out_of_store",
            Scenario::ToolDehydrate => "tool_dehydrate",
            Scenario::ToolHydrate => "tool_hydrate",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The file's name before the move and after it.
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Scenario::ServerIntoStore => ("a", "big/a"),
            Scenario::ServerOutOfStore => ("big/a", "a"),
            Scenario::ToolDehydrate => ("a", "a"),
            Scenario::ToolHydrate => ("big/a", "big/a"),
        }
    }

    /// True if the move puts the file into the store.
    fn into_store(self) -> bool {
        matches!(self, Scenario::ServerIntoStore | Scenario::ToolDehydrate)
    }
}

/// The moving file's bytes: data, a hole, data, and a partial last block.
fn content() -> Vec<u8> {
    let mut data = vec![0u8; 3 * 4096 + 100];
    for (i, b) in data[..4096].iter_mut().enumerate() {
        *b = (i % 251) as u8 + 1;
    }
    for (i, b) in data[8192..].iter_mut().enumerate() {
        *b = (i % 241) as u8 + 1;
    }
    data
}

fn main() {
    if let Ok(name) = std::env::var("FSR_MOVE_CHILD") {
        child_main(&name);
    }
    let args = Arguments::from_args();
    let trials = Scenario::ALL
        .into_iter()
        .map(|s| {
            Trial::test(
                format!("power_cut_at_every_step_of_{}", s.name()),
                move || every_cut(s),
            )
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}

// ----- the child -----

/// Numbers the steps and passes each on to the power-loss simulator.
struct Tracer {
    steps: Mutex<Vec<String>>,
    inner: Arc<PowerLoss>,
}

impl StoreHook for Tracer {
    fn before(&self, op: &StoreOp<'_>) -> std::io::Result<Option<usize>> {
        self.steps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!("{op:?}"));
        self.inner.before(op)
    }
}

/// Child mode: run the scenario under the simulator, print its steps, exit 0 (or
/// [`CUT_EXIT`] at the cut).
fn child_main(name: &str) -> ! {
    let _ = env_logger::try_init();
    let scenario = Scenario::from_name(name).expect("scenario");
    let var = |n: &str| std::env::var(n).unwrap_or_else(|_| panic!("{n} not set"));
    let share = ShareSpec::parse(&var("FSR_MOVE_SPEC")).expect("share");
    let root = PathBuf::from(var("FSR_MOVE_ROOT"));
    let cut = std::env::var("FSR_MOVE_CUT")
        .ok()
        .map(|c| c.parse().unwrap());
    let on_cut: Box<dyn Fn() + Send + Sync> = Box::new(|| {
        // SAFETY: _exit ends the process at once, which is the point: nothing after the
        // cut may reach the disk.
        unsafe { libc::_exit(CUT_EXIT) }
    });
    let tracer = Arc::new(Tracer {
        steps: Mutex::new(Vec::new()),
        inner: PowerLoss::new(&root, cut, on_cut),
    });
    let hook = Hook::new(tracer.clone() as Arc<dyn StoreHook>);
    let (before, after) = scenario.names();
    let result = match scenario {
        Scenario::ServerIntoStore | Scenario::ServerOutOfStore => {
            server_rename(&share, hook, before, after)
        }
        Scenario::ToolDehydrate => {
            fsredirect::tools::hydrate::dehydrate_with_hook(&share, Path::new(before), hook)
                .map(drop)
                .map_err(|e| e.to_string())
        }
        Scenario::ToolHydrate => {
            fsredirect::tools::hydrate::hydrate_with_hook(&share, Path::new(before), hook)
                .map(drop)
                .map_err(|e| e.to_string())
        }
    };
    if let Err(e) = result {
        eprintln!("move child ({name}, cut {cut:?}): {e}");
        std::process::exit(2);
    }
    let mut out = std::io::stdout().lock();
    for step in tracer.steps.lock().unwrap().iter() {
        writeln!(out, "STEP {step}").unwrap();
    }
    out.flush().unwrap();
    std::process::exit(0)
}

/// Renames `from` to `to` through a server with `hook`, then stops it.
fn server_rename(share: &ShareSpec, hook: Hook, from: &str, to: &str) -> Result<(), String> {
    let cfg = FsConfig {
        store_hook: hook,
        ..FsConfig::default()
    };
    let fs = RedirectFs::new(share, cfg).map_err(|e| format!("start: {e:#}"))?;
    fs.init(FsOptions::empty())
        .map_err(|e| format!("init: {e}"))?;
    let ctx = Context::new();
    let parent = |path: &str| -> Result<(u64, CString), String> {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let mut inode = ROOT;
        for part in dir.split('/').filter(|p| !p.is_empty()) {
            inode = fs
                .lookup(&ctx, inode, &CString::new(part).unwrap())
                .map_err(|e| format!("lookup {part}: {e}"))?
                .inode;
        }
        Ok((inode, CString::new(name).unwrap()))
    };
    let (p1, n1) = parent(from)?;
    let (p2, n2) = parent(to)?;
    fs.lookup(&ctx, p1, &n1)
        .map_err(|e| format!("lookup {from}: {e}"))?;
    fs.rename(&ctx, p1, &n1, p2, &n2, 0)
        .map_err(|e| format!("rename {from} to {to}: {e}"))?;
    drop(fs);
    Ok(())
}

// ----- the parent -----

/// A share holding the moving file under its first name, placed as the scenario needs.
fn setup(scenario: Scenario) -> Result<TestShare, String> {
    let share = TestShare::with_options(POLICY);
    let (before, _) = scenario.names();
    {
        let guest = share.serve();
        guest.dir(Path::new("big"));
        guest.write(before, &content());
    }
    if redirected(&share, before) == scenario.into_store() {
        return Err(format!(
            "setup: {before} is not placed as the scenario needs"
        ));
    }
    Ok(share)
}

/// True if the guest-tree file at `path` is a stub of the share's volume.
fn redirected(share: &TestShare, path: &str) -> bool {
    matches!(
        fsredirect::meta::decoded_at(&share.guest.join(path)),
        Ok(Some(fsredirect::meta::Meta::Redirect { .. }))
    )
}

/// Runs the scenario's child on `share`, cutting power at step `cut` if given. Returns its
/// exit code and standard output.
fn run_child(scenario: Scenario, share: &TestShare, cut: Option<usize>) -> (i32, String) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env("FSR_MOVE_CHILD", scenario.name())
        .env("FSR_MOVE_SPEC", &share.spec)
        .env("FSR_MOVE_ROOT", share.root());
    if let Some(cut) = cut {
        cmd.env("FSR_MOVE_CUT", cut.to_string());
    }
    let out = {
        let _forking = fork_guard();
        cmd.output().expect("start the move child")
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !stderr.is_empty() && out.status.code() != Some(CUT_EXIT) {
        eprintln!("{}: child stderr:\n{stderr}", scenario.name());
    }
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// After the child: the file under exactly one name, whole, placed consistently, and
/// `verify` finds nothing.
fn check(scenario: Scenario, share: &TestShare) -> Result<(), String> {
    let (before, after) = scenario.names();
    let guest = share.try_serve(FsConfig::default())?;
    let names: Vec<&str> = if before == after {
        vec![before]
    } else {
        vec![before, after]
    };
    let present: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| guest.lookup(n).is_ok())
        .collect();
    let [name] = present[..] else {
        return Err(format!("the file is under {present:?}, not under one name"));
    };
    let data = guest
        .try_read(name)
        .map_err(|e| format!("read {name}: {e}"))?;
    if data != content() {
        let first = data.iter().zip(content()).position(|(a, b)| *a != b);
        return Err(format!(
            "{name} reads {} bytes, not its {} (first difference at {first:?}; redirected: {})",
            data.len(),
            content().len(),
            redirected(share, name)
        ));
    }
    drop(guest);
    let mismatches =
        fsredirect::verify::verify_share(&share.share).map_err(|e| format!("verify: {e}"))?;
    if !mismatches.is_empty() {
        return Err(format!("verify: {mismatches:?}"));
    }
    Ok(())
}

fn every_cut(scenario: Scenario) -> Result<(), Failed> {
    // The run without a cut: it must move the file, and it numbers the steps.
    let share = setup(scenario)?;
    let (code, out) = run_child(scenario, &share, None);
    if code != 0 {
        return Err(format!("the move without a power cut failed (exit {code})").into());
    }
    let steps: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("STEP "))
        .collect();
    let (_, after) = scenario.names();
    if redirected(&share, after) != scenario.into_store() {
        return Err(format!("the move without a power cut left {after} where it was").into());
    }
    check(scenario, &share).map_err(|e| format!("without a power cut: {e}"))?;
    // The step that makes the guest-tree file the data, or the stub the stand-in.
    let switch = match scenario {
        Scenario::ToolHydrate => "Namespace(Rename)",
        _ => "Meta",
    };
    for want in [switch, "Sync"] {
        if !steps.iter().any(|s| s.starts_with(want)) {
            return Err(format!("no {want} step among {steps:?}").into());
        }
    }
    // A cut before each step.
    let mut failures = Vec::new();
    for cut in 1..=steps.len() {
        let share = setup(scenario)?;
        let (code, _) = run_child(scenario, &share, Some(cut));
        if code != CUT_EXIT {
            failures.push(format!(
                "cut {cut}: the child exited {code}, not at the cut"
            ));
            continue;
        }
        if let Err(e) = check(scenario, &share) {
            failures.push(format!("cut before step {cut} ({}): {e}", steps[cut - 1]));
        }
    }
    println!(
        "{}: {} steps, a power cut before each: {} lost or inconsistent",
        scenario.name(),
        steps.len(),
        failures.len()
    );
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n").into())
    }
}
