//! Crash safety of the redirect engine, at two levels: a killed server process and a power
//! loss (docs/architecture.md#crash-safety).
//!
//! Both levels run a seeded workload directly on a [`RedirectFs`] (FUSE calls without a
//! kernel) in a child process: this test binary re-executed with `FSR_CRASH_CHILD` set. The
//! workload creates, writes, truncates, fsyncs, renames (over files, exchanges, directories),
//! links and unlinks (also files still open) and restarts the server cleanly now and then.
//! Before each operation the child appends `B <n>` to a progress file, after it `D <n>`, so
//! the parent knows which operations were acknowledged; the parent regenerates the same
//! operations from the seed with the same model.
//!
//! 1. **Process kill**: the child is SIGKILLed at a random instant (the host page cache
//!    survives). Every acknowledged operation must be in place exactly, the one in flight
//!    done or not (a write in flight may also keep its bytes within the old size).
//! 2. **Power loss**: the child runs with a [`PowerLoss`] store hook that cuts power before
//!    its n-th store operation: unsynced object data is dropped (see [`PowerLoss`] for the
//!    model) and the child exits on the spot. Every fsync'd block must be in place; every
//!    other block is zeros or a version this block held since its last truncate.
//!
//! After each crash the parent opens the share again (automatic recovery) and checks: the
//! invariants above, no block showing another file's bytes or misplaced or stale bytes,
//! `verify` reports nothing, and a second recovery repairs nothing and changes nothing
//! (a full snapshot of guest tree and store, before and after). Figures go to stdout and
//! to `build/crash-report.md`.
//!
//! Each level also runs under `policy=min-size:256`, where files move between inline and
//! redirected as they grow and shrink (placement moves, with their own intent records).
//! There the power cut drops object data written through the engine's write path and the
//! unsynced steps of moves (their copies, and their metadata changes on the moving file);
//! inline data written through the passthrough layer is not seen by the store hook.
//!
//! `FSR_CRASH_ITERATIONS` (crashes per level, default 100), `FSR_CRASH_OPS` (operations per
//! workload, default 60) and `FSR_CRASH_SEED` (first seed; printed) change the exploration.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fsredirect::faults::{Hook, PowerLoss};
use fsredirect::memio::MemSource;
use fsredirect::{FsConfig, RedirectFs, ShareSpec};
use fuse_backend_rs::abi::fuse_abi::{CreateIn, FsOptions, SetattrValid};
use fuse_backend_rs::api::filesystem::{Context, FileSystem};
use libtest_mimic::{Arguments, Failed, Trial};

/// Size of one data block: every write and truncate is a whole number of blocks.
const BLOCK: usize = 64;
/// Exit status of a child whose power was cut.
const CUT_EXIT: i32 = 77;
const ROOT: u64 = 1;

fn main() {
    if std::env::var_os("FSR_CRASH_CHILD").is_some() {
        child_main();
    }
    let args = Arguments::from_args();
    // Under the policy, files of 256 bytes and more are redirected, smaller ones inline: the
    // workload's files (0 to 704 bytes) move back and forth between the two placements.
    let trials = vec![
        Trial::test("process_kill_at_random_instants_then_recover", || {
            run_level(Level::Kill, None)
        }),
        Trial::test("power_loss_at_random_store_operations_then_recover", || {
            run_level(Level::Power, None)
        }),
        Trial::test("process_kill_under_a_size_policy_then_recover", || {
            run_level(Level::Kill, Some("min-size:256"))
        }),
        Trial::test("power_loss_under_a_size_policy_then_recover", || {
            run_level(Level::Power, Some("min-size:256"))
        }),
    ];
    libtest_mimic::run(&args, trials).exit();
}

// ----- seeded randomness -----

/// splitmix64: enough for choosing operations, and the same in parent and child.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            None
        } else {
            Some(&items[self.below(items.len() as u64) as usize])
        }
    }
}

// ----- the workload model -----

/// One file: the generation written last to each block (0: zeros), whether that block is
/// fsync'd as it is, and every generation it held since its last truncate below it.
#[derive(Debug, Clone, Default, PartialEq)]
struct FileModel {
    blocks: Vec<u32>,
    synced: Vec<bool>,
    allowed: Vec<BTreeSet<u32>>,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Model {
    /// File id -> contents.
    files: BTreeMap<u32, FileModel>,
    /// Path -> file id (hard links share an id).
    names: BTreeMap<String, u32>,
    /// Directories below the root.
    dirs: BTreeSet<String>,
    next_id: u32,
    next_gen: u32,
}

#[derive(Debug, Clone)]
enum Op {
    Create(String),
    Write {
        path: String,
        first: usize,
        count: usize,
    },
    Truncate {
        path: String,
        blocks: usize,
    },
    OpenTrunc(String),
    Fsync(String),
    FsyncDir(String),
    Rename {
        from: String,
        to: String,
    },
    Exchange {
        a: String,
        b: String,
    },
    Link {
        from: String,
        to: String,
    },
    Unlink(String),
    /// Open, unlink (the object goes to the orphan area), write, fsync, release.
    UnlinkOpen(String),
    Mkdir(String),
    RenameDir {
        from: String,
        to: String,
    },
    SyncFs,
    /// Drop the server (a clean stop) and start a new one.
    Restart,
}

fn split(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some((dir, name)) => (dir, name),
        None => ("", path),
    }
}

impl Model {
    fn paths(&self) -> Vec<String> {
        self.names.keys().cloned().collect()
    }

    fn nlink(&self, id: u32) -> usize {
        self.names.values().filter(|&&i| i == id).count()
    }

    fn fresh_path(&self, rng: &mut Rng) -> String {
        let mut dirs: Vec<String> = vec![String::new()];
        dirs.extend(self.dirs.iter().cloned());
        let dir = rng.pick(&dirs).cloned().unwrap_or_default();
        let name = format!("f{}", rng.below(8));
        if dir.is_empty() {
            name
        } else {
            format!("{dir}/{name}")
        }
    }

    /// Chooses the next operation; only operations that succeed on this model.
    fn choose(&self, rng: &mut Rng) -> Op {
        let paths = self.paths();
        loop {
            let op = match rng.below(100) {
                0..=11 => {
                    let path = self.fresh_path(rng);
                    (!self.names.contains_key(&path) && self.names.len() < 14)
                        .then_some(Op::Create(path))
                }
                12..=33 => rng.pick(&paths).map(|p| Op::Write {
                    path: p.clone(),
                    first: rng.below(8) as usize,
                    count: 1 + rng.below(4) as usize,
                }),
                34..=40 => rng.pick(&paths).map(|p| Op::Truncate {
                    path: p.clone(),
                    blocks: rng.below(10) as usize,
                }),
                41..=43 => rng.pick(&paths).map(|p| Op::OpenTrunc(p.clone())),
                44..=53 => rng.pick(&paths).map(|p| Op::Fsync(p.clone())),
                54..=56 => {
                    let mut dirs = vec![String::new()];
                    dirs.extend(self.dirs.iter().cloned());
                    rng.pick(&dirs).map(|d| Op::FsyncDir(d.clone()))
                }
                57..=66 => rng.pick(&paths).and_then(|from| {
                    let to = self.fresh_path(rng);
                    let same = self.names.get(&to) == self.names.get(from);
                    (!same).then(|| Op::Rename {
                        from: from.clone(),
                        to,
                    })
                }),
                67..=70 => {
                    let (a, b) = (rng.pick(&paths), rng.pick(&paths));
                    match (a, b) {
                        (Some(a), Some(b)) if self.names[a] != self.names[b] => {
                            Some(Op::Exchange {
                                a: a.clone(),
                                b: b.clone(),
                            })
                        }
                        _ => None,
                    }
                }
                71..=75 => rng.pick(&paths).and_then(|from| {
                    let to = self.fresh_path(rng);
                    (!self.names.contains_key(&to)).then(|| Op::Link {
                        from: from.clone(),
                        to,
                    })
                }),
                76..=82 => rng.pick(&paths).map(|p| Op::Unlink(p.clone())),
                83..=87 => rng
                    .pick(&paths)
                    .filter(|p| self.nlink(self.names[*p]) == 1)
                    .map(|p| Op::UnlinkOpen(p.clone())),
                88..=90 => {
                    let name = format!("d{}", rng.below(4));
                    (!self.dirs.contains(&name)).then_some(Op::Mkdir(name))
                }
                91..=94 => {
                    let dirs: Vec<String> = self.dirs.iter().cloned().collect();
                    let to = format!("d{}", rng.below(4));
                    rng.pick(&dirs)
                        .filter(|_| !self.dirs.contains(&to))
                        .map(|from| Op::RenameDir {
                            from: from.clone(),
                            to,
                        })
                }
                95..=96 => Some(Op::SyncFs),
                _ => Some(Op::Restart),
            };
            if let Some(op) = op {
                return op;
            }
        }
    }

    fn forget_unnamed(&mut self) {
        let named: BTreeSet<u32> = self.names.values().copied().collect();
        self.files.retain(|id, _| named.contains(id));
    }

    fn sync_all(&mut self) {
        for f in self.files.values_mut() {
            f.synced.iter_mut().for_each(|s| *s = true);
        }
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Create(path) => {
                self.next_id += 1;
                self.names.insert(path.clone(), self.next_id);
                self.files.insert(self.next_id, FileModel::default());
            }
            Op::Write { path, first, count } => {
                self.next_gen += 1;
                let gen = self.next_gen;
                let f = self.files.get_mut(&self.names[path]).unwrap();
                f.resize(first + count);
                for i in *first..first + count {
                    f.blocks[i] = gen;
                    f.synced[i] = false;
                    f.allowed[i].insert(gen);
                }
            }
            Op::Truncate { path, blocks } => self
                .files
                .get_mut(&self.names[path])
                .unwrap()
                .truncate(*blocks),
            Op::OpenTrunc(path) => self.files.get_mut(&self.names[path]).unwrap().truncate(0),
            Op::Fsync(path) => {
                let f = self.files.get_mut(&self.names[path]).unwrap();
                f.synced.iter_mut().for_each(|s| *s = true);
            }
            Op::FsyncDir(_) => {}
            Op::Rename { from, to } => {
                let id = self.names.remove(from).unwrap();
                self.names.insert(to.clone(), id);
                self.forget_unnamed();
            }
            Op::Exchange { a, b } => {
                let (ia, ib) = (self.names[a], self.names[b]);
                self.names.insert(a.clone(), ib);
                self.names.insert(b.clone(), ia);
            }
            Op::Link { from, to } => {
                self.names.insert(to.clone(), self.names[from]);
            }
            Op::Unlink(path) | Op::UnlinkOpen(path) => {
                self.names.remove(path);
                self.forget_unnamed();
            }
            Op::Mkdir(dir) => {
                self.dirs.insert(dir.clone());
            }
            Op::RenameDir { from, to } => {
                self.dirs.remove(from);
                self.dirs.insert(to.clone());
                let prefix = format!("{from}/");
                let moved: Vec<(String, u32)> = self
                    .names
                    .iter()
                    .filter(|(p, _)| p.starts_with(&prefix))
                    .map(|(p, i)| (p.clone(), *i))
                    .collect();
                for (p, i) in moved {
                    self.names.remove(&p);
                    self.names.insert(format!("{to}/{}", &p[prefix.len()..]), i);
                }
            }
            Op::SyncFs | Op::Restart => self.sync_all(),
        }
    }

    /// The bytes of file `id`.
    fn render(&self, id: u32) -> Vec<u8> {
        let f = &self.files[&id];
        let mut out = Vec::with_capacity(f.blocks.len() * BLOCK);
        for (i, &gen) in f.blocks.iter().enumerate() {
            out.extend_from_slice(&block(id, gen, i));
        }
        out
    }
}

impl FileModel {
    fn resize(&mut self, blocks: usize) {
        if blocks > self.blocks.len() {
            self.blocks.resize(blocks, 0);
            self.synced.resize(blocks, false);
            self.allowed.resize(blocks, BTreeSet::new());
        }
    }

    fn truncate(&mut self, blocks: usize) {
        self.blocks.truncate(blocks);
        self.synced.truncate(blocks);
        self.allowed.truncate(blocks);
        self.resize(blocks);
    }
}

/// Block `idx` of file `id` as written by generation `gen` (zeros for generation 0): a
/// header naming all three, then a filler derived from them.
fn block(id: u32, gen: u32, idx: usize) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    if gen == 0 {
        return b;
    }
    b[..4].copy_from_slice(b"FSRB");
    b[4..8].copy_from_slice(&id.to_le_bytes());
    b[8..12].copy_from_slice(&gen.to_le_bytes());
    b[12..16].copy_from_slice(&(idx as u32).to_le_bytes());
    let fill = (id.wrapping_mul(31) ^ gen.wrapping_mul(7) ^ idx as u32) as u8 | 1;
    b[16..].fill(fill);
    b
}

/// What a block on disk is: zeros, a well-formed block (id, gen, idx), or garbage.
fn parse_block(b: &[u8]) -> Option<(u32, u32, usize)> {
    if b.iter().all(|&x| x == 0) {
        return Some((0, 0, 0));
    }
    let num = |r: std::ops::Range<usize>| u32::from_le_bytes(b[r].try_into().unwrap());
    let (id, gen, idx) = (num(4..8), num(8..12), num(12..16) as usize);
    (b.len() == BLOCK && &b[..4] == b"FSRB" && b[..] == block(id, gen, idx)[..])
        .then_some((id, gen, idx))
}

/// The operations of workload `seed`, with the model after each.
fn workload(seed: u64, ops: usize) -> Vec<(Op, Model)> {
    let mut rng = Rng(seed);
    let mut model = Model::default();
    let mut out = Vec::with_capacity(ops);
    for _ in 0..ops {
        let op = model.choose(&mut rng);
        model.apply(&op);
        out.push((op, model.clone()));
    }
    out
}

// ----- the child: the workload on a RedirectFs -----

struct Driver {
    fs: Option<RedirectFs>,
    share: ShareSpec,
    cfg: FsConfig,
    ctx: Context,
}

impl Driver {
    fn start(share: &ShareSpec, cfg: FsConfig) -> io::Result<RedirectFs> {
        let fs = RedirectFs::new(share, cfg).map_err(io::Error::other)?;
        fs.init(FsOptions::empty())?;
        Ok(fs)
    }

    fn fs(&self) -> &RedirectFs {
        self.fs.as_ref().expect("server running")
    }

    fn inode(&self, path: &str) -> io::Result<u64> {
        let mut ino = ROOT;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            ino = self.fs().lookup(&self.ctx, ino, &cstr(part))?.inode;
        }
        Ok(ino)
    }

    fn parent(&self, path: &str) -> io::Result<(u64, CString)> {
        let (dir, name) = split(path);
        Ok((self.inode(dir)?, cstr(name)))
    }

    fn open(&self, ino: u64, flags: i32) -> io::Result<u64> {
        let (h, _, _) = self.fs().open(&self.ctx, ino, flags as u32, 0)?;
        h.ok_or_else(|| io::Error::other("no handle"))
    }

    fn release(&self, ino: u64, h: u64) -> io::Result<()> {
        self.fs().release(&self.ctx, ino, 0, h, false, false, None)
    }

    fn write(
        &self,
        ino: u64,
        h: u64,
        id: u32,
        gen: u32,
        first: usize,
        count: usize,
    ) -> io::Result<()> {
        let mut data = Vec::new();
        for i in first..first + count {
            data.extend_from_slice(&block(id, gen, i));
        }
        let len = data.len();
        let n = self.fs().write(
            &self.ctx,
            ino,
            h,
            &mut MemSource::new(data),
            len as u32,
            (first * BLOCK) as u64,
            None,
            false,
            0,
            0,
        )?;
        if n != len {
            return Err(io::Error::other(format!("short write {n} of {len}")));
        }
        Ok(())
    }

    /// Runs `op`; `before` is the model before it, `after` the model after it.
    fn run(&mut self, op: &Op, before: &Model, after: &Model) -> io::Result<()> {
        let ctx = &self.ctx;
        match op {
            Op::Create(path) => {
                let (parent, name) = self.parent(path)?;
                let args = CreateIn {
                    flags: (libc::O_RDWR | libc::O_CREAT | libc::O_EXCL) as u32,
                    mode: libc::S_IFREG | 0o644,
                    umask: 0,
                    fuse_flags: 0,
                };
                let (entry, h, _, _) = self.fs().create(ctx, parent, &name, args)?;
                self.release(entry.inode, h.unwrap())?;
            }
            Op::Write { path, first, count } => {
                let ino = self.inode(path)?;
                let h = self.open(ino, libc::O_RDWR)?;
                let id = before.names[path];
                self.write(ino, h, id, after.next_gen, *first, *count)?;
                self.release(ino, h)?;
            }
            Op::Truncate { path, blocks } => {
                let ino = self.inode(path)?;
                // SAFETY: stat64 is plain old data; all-zero is a valid value.
                let mut attr: libc::stat64 = unsafe { std::mem::zeroed() };
                attr.st_size = (blocks * BLOCK) as i64;
                self.fs()
                    .setattr(ctx, ino, attr, None, SetattrValid::SIZE)?;
            }
            Op::OpenTrunc(path) => {
                let ino = self.inode(path)?;
                let h = self.open(ino, libc::O_RDWR | libc::O_TRUNC)?;
                self.release(ino, h)?;
            }
            Op::Fsync(path) => {
                let ino = self.inode(path)?;
                let h = self.open(ino, libc::O_RDWR)?;
                self.fs().fsync(ctx, ino, false, h)?;
                self.release(ino, h)?;
            }
            Op::FsyncDir(dir) => {
                let ino = self.inode(dir)?;
                let (h, _) = self.fs().opendir(ctx, ino, libc::O_RDONLY as u32)?;
                let h = h.unwrap();
                self.fs().fsyncdir(ctx, ino, false, h)?;
                self.fs().releasedir(ctx, ino, 0, h)?;
            }
            Op::Rename { from, to } | Op::RenameDir { from, to } => {
                let (p1, n1) = self.parent(from)?;
                let (p2, n2) = self.parent(to)?;
                self.fs().rename(ctx, p1, &n1, p2, &n2, 0)?;
            }
            Op::Exchange { a, b } => {
                let (p1, n1) = self.parent(a)?;
                let (p2, n2) = self.parent(b)?;
                self.fs()
                    .rename(ctx, p1, &n1, p2, &n2, libc::RENAME_EXCHANGE)?;
            }
            Op::Link { from, to } => {
                let ino = self.inode(from)?;
                let (p, n) = self.parent(to)?;
                self.fs().link(ctx, ino, p, &n)?;
            }
            Op::Unlink(path) => {
                let (p, n) = self.parent(path)?;
                self.fs().unlink(ctx, p, &n)?;
            }
            Op::UnlinkOpen(path) => {
                let ino = self.inode(path)?;
                let h = self.open(ino, libc::O_RDWR)?;
                let (p, n) = self.parent(path)?;
                self.fs().unlink(ctx, p, &n)?;
                // Writes to a file with no name left: invisible afterwards.
                self.write(ino, h, before.names[path], u32::MAX, 0, 2)?;
                self.fs().fsync(ctx, ino, true, h)?;
                self.release(ino, h)?;
            }
            Op::Mkdir(dir) => {
                self.fs().mkdir(ctx, ROOT, &cstr(dir), 0o755, 0)?;
            }
            Op::SyncFs => self.fs().syncfs()?,
            Op::Restart => {
                drop(self.fs.take());
                self.fs = Some(Self::start(&self.share, self.cfg.clone())?);
            }
        }
        Ok(())
    }
}

fn cstr(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

/// Child mode: run the workload, reporting progress; exit 0 when done.
fn child_main() -> ! {
    let _ = env_logger::try_init();
    let dir = PathBuf::from(std::env::var("FSR_CRASH_DIR").expect("FSR_CRASH_DIR"));
    let seed = env_u64("FSR_CRASH_SEED").expect("FSR_CRASH_SEED");
    let ops = env_u64("FSR_CRASH_OPS").expect("FSR_CRASH_OPS") as usize;
    let cut = env_u64("FSR_CRASH_CUT");
    let power = std::env::var("FSR_CRASH_MODE").as_deref() == Ok("power");
    let share = share_of(&dir);
    let mut progress = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("progress"))
        .expect("progress file");
    let mut cfg = FsConfig::default();
    let sim = power.then(|| {
        let on_cut: Box<dyn Fn() + Send + Sync> = Box::new(|| {
            // SAFETY: _exit ends the process at once, which is the point: nothing after
            // the cut may reach the disk.
            unsafe { libc::_exit(CUT_EXIT) }
        });
        // The guest tree too: the steps of moves on guest-tree files are simulated.
        PowerLoss::new(&dir, cut, on_cut)
    });
    if let Some(sim) = &sim {
        cfg.store_hook = Hook::new(sim.clone() as Arc<dyn fsredirect::faults::StoreHook>);
    }
    let fail = |what: String| -> ! {
        eprintln!("crash child (seed {seed}): {what}");
        std::process::exit(2)
    };
    let fs = Driver::start(&share, cfg.clone()).unwrap_or_else(|e| fail(format!("start: {e}")));
    let mut driver = Driver {
        fs: Some(fs),
        share,
        cfg,
        ctx: Context::new(),
    };
    let ordered = u64::from(driver.fs().intents_in_journal_order());
    writeln!(progress, "ORDERED {ordered}").unwrap();
    let started = Instant::now();
    let mut before = Model::default();
    for (n, (op, after)) in workload(seed, ops).iter().enumerate() {
        writeln!(progress, "B {n}").unwrap();
        if let Err(e) = driver.run(op, &before, after) {
            fail(format!("operation {n} {op:?} failed: {e}"));
        }
        writeln!(progress, "D {n}").unwrap();
        before = after.clone();
    }
    // The operations' time, without the stop: kills aim at the operations (and a few at
    // the stop, which the parent's 5% extra reaches).
    writeln!(progress, "MICROS {}", started.elapsed().as_micros()).unwrap();
    drop(driver);
    if let Some(sim) = &sim {
        writeln!(progress, "STEPS {}", sim.steps()).unwrap();
    }
    std::process::exit(0)
}

/// The share in `dir`, with the policy written to `dir/policy` if there is one.
fn share_of(dir: &Path) -> ShareSpec {
    let policy = std::fs::read_to_string(dir.join("policy"))
        .map(|p| format!(",policy={p}"))
        .unwrap_or_default();
    ShareSpec::parse(&format!(
        "tag=c,dir={},store={}{policy}",
        dir.join("g").display(),
        dir.join("s").display()
    ))
    .unwrap()
}

// ----- the parent -----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Kill,
    Power,
}

/// What the child got through.
struct Progress {
    done: usize,
    in_flight: bool,
    /// Store operations of a whole run (power level).
    steps: Option<u64>,
    /// Microseconds from the first operation to the stop.
    micros: Option<u64>,
    /// Intent records were written in journal order.
    ordered: Option<bool>,
}

fn read_progress(dir: &Path) -> Progress {
    let text = std::fs::read_to_string(dir.join("progress")).unwrap_or_default();
    let (mut done, mut begun, mut steps, mut micros, mut ordered) = (0, None, None, None, None);
    for line in text.lines() {
        let mut it = line.split(' ');
        match (it.next(), it.next().and_then(|n| n.parse::<u64>().ok())) {
            (Some("B"), Some(n)) => begun = Some(n as usize),
            (Some("D"), Some(n)) => done = n as usize + 1,
            (Some("STEPS"), Some(n)) => steps = Some(n),
            (Some("MICROS"), Some(n)) => micros = Some(n),
            (Some("ORDERED"), Some(n)) => ordered = Some(n == 1),
            _ => {}
        }
    }
    Progress {
        done,
        in_flight: begun == Some(done),
        steps,
        micros,
        ordered,
    }
}

/// Figures of one level.
#[derive(Default)]
struct Tally {
    crashes: usize,
    completed_runs: usize,
    workloads: BTreeSet<u64>,
    ops_acknowledged: usize,
    crash_points: BTreeSet<(u64, u64)>,
    durability: Vec<String>,
    consistency: Vec<String>,
    orphans: usize,
    intents: usize,
    resized: usize,
    moved_back: usize,
    recovery_times: Vec<Duration>,
    second_recovery_changes: usize,
    journal_ordered: usize,
    started: usize,
}

fn run_level(level: Level, policy: Option<&str>) -> Result<(), Failed> {
    // FSR_CRASH_REPLAY=<seed>:<point> replays one crash (power level: the cut step).
    let replay = std::env::var("FSR_CRASH_REPLAY").ok().and_then(|r| {
        let (seed, point) = r.split_once(':')?;
        Some((seed.parse::<u64>().ok()?, point.parse::<u64>().ok()?))
    });
    let iterations = match replay {
        Some(_) => 1,
        None => env_u64("FSR_CRASH_ITERATIONS").unwrap_or(100) as usize,
    };
    let ops = env_u64("FSR_CRASH_OPS").unwrap_or(60) as usize;
    let first_seed = env_u64("FSR_CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64 % 1_000_000)
            .unwrap_or(1)
    });
    let name = match (level, policy) {
        (Level::Kill, None) => "process kill".to_string(),
        (Level::Power, None) => "power loss".to_string(),
        (Level::Kill, Some(p)) => format!("process kill, policy={p}"),
        (Level::Power, Some(p)) => format!("power loss, policy={p}"),
    };
    let name = name.as_str();
    println!(
        "{name}: {iterations} crashes, {ops} operations per workload, seeds from {first_seed} \
         (replay with FSR_CRASH_SEED={first_seed})"
    );
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut rng = Rng(first_seed ^ 0x5eed);
    // One uninterrupted run per seed tells how long (kill) or how many store steps (power)
    // the workload takes; each seed then serves a few crash points.
    let per_seed = 4;
    let mut calibration: BTreeMap<u64, (Duration, u64)> = BTreeMap::new();
    for i in 0..iterations {
        let seed = replay.map_or(first_seed + (i / per_seed) as u64, |r| r.0);
        if let std::collections::btree_map::Entry::Vacant(slot) = calibration.entry(seed) {
            let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
            let status = spawn_child(tmp.path(), policy, level, seed, ops, None)?
                .wait()
                .map_err(|e| e.to_string())?;
            if !status.success() {
                return Err(
                    format!("seed {seed}: the uninterrupted workload failed ({status})").into(),
                );
            }
            let calibrated = read_progress(tmp.path());
            let took = Duration::from_micros(calibrated.micros.unwrap_or(0));
            slot.insert((took, calibrated.steps.unwrap_or(0)));
        }
        let (took, steps) = calibration[&seed];
        let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
        let dir = tmp.path();
        let point = match level {
            Level::Kill => {
                let mut child = spawn_child(dir, policy, level, seed, ops, None)?;
                // Kill within the workload: wait for its first operation, then a random
                // part of its uninterrupted duration.
                let waited = Instant::now();
                while !std::fs::read_to_string(dir.join("progress"))
                    .unwrap_or_default()
                    .contains("B 0")
                    && waited.elapsed() < Duration::from_secs(30)
                {
                    std::thread::sleep(Duration::from_micros(200));
                }
                let delay = Duration::from_micros(rng.below(took.as_micros() as u64 * 21 / 20 + 1));
                std::thread::sleep(delay);
                // SAFETY: kill(2) of our own child's pid; no memory is involved.
                unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
                let status = child.wait().map_err(|e| e.to_string())?;
                if status.success() {
                    tally.completed_runs += 1;
                } else if status.code().is_some() {
                    return Err(format!("seed {seed}: the child failed ({status})").into());
                }
                delay.as_micros() as u64
            }
            Level::Power => {
                let cut = replay.map_or_else(|| 1 + rng.below(steps.max(1)), |r| r.1);
                let status = spawn_child(dir, policy, level, seed, ops, Some(cut))?
                    .wait()
                    .map_err(|e| e.to_string())?;
                match status.code() {
                    Some(CUT_EXIT) => {}
                    Some(0) => tally.completed_runs += 1,
                    _ => {
                        return Err(
                            format!("seed {seed} cut {cut}: the child failed ({status})").into(),
                        )
                    }
                }
                cut
            }
        };
        tally.crashes += 1;
        tally.workloads.insert(seed);
        tally.crash_points.insert((seed, point));
        let progress = read_progress(dir);
        tally.ops_acknowledged += progress.done;
        tally.journal_ordered += usize::from(progress.ordered == Some(true));
        tally.started += usize::from(progress.ordered.is_some());
        let context = format!("seed {seed} point {point} (op {} of {ops})", progress.done);
        check_after_crash(dir, level, seed, ops, &progress, &mut tally)
            .map_err(|e| format!("{context}: {e}"))?;
        let (d, c) = (tally.durability.len(), tally.consistency.len());
        if d + c > 0 {
            println!("{context}: violations so far: durability {d}, consistency {c}");
            println!("  replay with FSR_CRASH_REPLAY={seed}:{point}");
            if std::env::var_os("FSR_CRASH_VERBOSE").is_some() {
                for (n, (op, _)) in workload(seed, ops)
                    .iter()
                    .enumerate()
                    .take(progress.done + 1)
                {
                    println!("  op {n}: {op:?}");
                }
            }
            for v in tally.durability.iter().chain(&tally.consistency) {
                println!("  {v}");
            }
            return Err(format!("{name}: crash-safety violations at {context}").into());
        }
    }
    report(name, &tally, started.elapsed());
    Ok(())
}

fn spawn_child(
    dir: &Path,
    policy: Option<&str>,
    level: Level,
    seed: u64,
    ops: usize,
    cut: Option<u64>,
) -> Result<std::process::Child, String> {
    std::fs::create_dir_all(dir.join("g")).map_err(|e| e.to_string())?;
    if let Some(policy) = policy {
        std::fs::write(dir.join("policy"), policy).map_err(|e| e.to_string())?;
    }
    let mut cmd = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
    cmd.env("FSR_CRASH_CHILD", "1")
        .env("FSR_CRASH_DIR", dir)
        .env("FSR_CRASH_SEED", seed.to_string())
        .env("FSR_CRASH_OPS", ops.to_string())
        .env(
            "FSR_CRASH_MODE",
            if level == Level::Power {
                "power"
            } else {
                "kill"
            },
        );
    if let Some(cut) = cut {
        cmd.env("FSR_CRASH_CUT", cut.to_string());
    }
    let _forking = FORK.lock().unwrap_or_else(|p| p.into_inner());
    cmd.spawn()
        .map_err(|e| format!("cannot start the crash child: {e}"))
}

/// Held while a child is forked and exec'd, and while this process takes a volume lock:
/// a child forked by the other level's thread holds copies of this process's descriptors
/// (the volume lock among them) until its exec closes them.
static FORK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Starts a server on `share` (recovering it), never while a child is being forked.
fn start_server(share: &ShareSpec) -> Result<RedirectFs, String> {
    // The lock can still look busy for an instant: a child spawned by the other level's
    // thread lets its parent go (vfork) once its memory is replaced, a moment before exec
    // closes the descriptors it inherited, this process's volume lock among them. Try
    // again for a while, say so, and fail if it stays busy.
    for attempt in 0..50 {
        let started = {
            let _forking = FORK.lock().unwrap_or_else(|p| p.into_inner());
            RedirectFs::new(share, FsConfig::default())
        };
        match started {
            Err(
                fsredirect::FsError::Store(fsredirect::StoreError::Busy { .. })
                | fsredirect::FsError::Tree(_),
            ) => {
                if attempt == 0 {
                    println!("volume lock of {} busy; trying again", share.dir.display());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            other => return other.map_err(|e| format!("restart: {e:#}")),
        }
    }
    Err(format!(
        "restart: the volume lock of {} stayed busy for 5 s",
        share.dir.display()
    ))
}

/// Recovers the share in `dir` and checks every invariant; violations go to `tally`.
fn check_after_crash(
    dir: &Path,
    level: Level,
    seed: u64,
    ops: usize,
    progress: &Progress,
    tally: &mut Tally,
) -> Result<(), String> {
    let share = share_of(dir);
    let store_root = dir.join("s");
    let marker = store_root.join(".fsredirect/c/clean");
    // 1. Recovery, as any server start does it.
    let fs = start_server(&share)?;
    if let Some(r) = fs.recovery() {
        tally.recovery_times.push(r.duration);
        tally.orphans += r.orphans;
        tally.intents += r.intents;
        tally.resized += r.resized;
        tally.moved_back += r.moved_back;
        if r.missing > 0 {
            tally
                .consistency
                .push(format!("recovery found {} stubs without data", r.missing));
        }
    }
    let first = snapshot(dir);
    drop(fs);
    // 2. Recovery again, forced (no clean marker): nothing to repair, nothing changes.
    std::fs::remove_file(&marker).map_err(|e| format!("clean marker after a stop: {e}"))?;
    let fs = start_server(&share)?;
    let again = fs.recovery().cloned().unwrap_or_default();
    let second = snapshot(dir);
    drop(fs);
    if again.repairs() > 0 || first != second {
        tally.second_recovery_changes += 1;
        let diff: Vec<_> = first.symmetric_difference(&second).take(6).collect();
        tally.consistency.push(format!(
            "a second recovery changed something: {again}; differences {diff:?}"
        ));
    }
    // 3. verify.
    let mismatches =
        fsredirect::verify::verify_share(&share).map_err(|e| format!("verify: {e}"))?;
    for m in mismatches {
        tally.consistency.push(format!("verify: {m:?}"));
    }
    // 4. The data against the model.
    let steps = workload(seed, ops);
    let acked = if progress.done == 0 {
        Model::default()
    } else {
        steps[progress.done - 1].1.clone()
    };
    let flight =
        (progress.in_flight && progress.done < steps.len()).then(|| steps[progress.done].clone());
    let actual = read_share(dir)?;
    check_data(level, &acked, flight.as_ref(), &actual, tally);
    Ok(())
}

/// Path -> bytes of every redirected file, read from the store by the stub's path.
fn read_share(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let mut out = BTreeMap::new();
    let guest = dir.join("g");
    let volume = dir.join("s/c");
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        for entry in std::fs::read_dir(guest.join(&rel)).map_err(|e| e.to_string())? {
            let entry = entry.map_err(|e| e.to_string())?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let meta = std::fs::symlink_metadata(entry.path()).map_err(|e| e.to_string())?;
            if meta.is_dir() {
                stack.push(path);
            } else {
                // A redirected file's bytes are its object; an inline file's are its own.
                let redirected = matches!(
                    fsredirect::meta::decoded_at(&entry.path()),
                    Ok(Some(fsredirect::meta::Meta::Redirect { .. }))
                );
                let data = if redirected {
                    std::fs::read(volume.join(&path))
                        .map_err(|e| format!("object of {path}: {e}"))?
                } else {
                    std::fs::read(entry.path()).map_err(|e| format!("{path}: {e}"))?
                };
                out.insert(path, data);
            }
        }
    }
    Ok(out)
}

/// Compares what recovery left with the acknowledged model (and the operation in flight).
fn check_data(
    level: Level,
    acked: &Model,
    flight: Option<&(Op, Model)>,
    actual: &BTreeMap<String, Vec<u8>>,
    tally: &mut Tally,
) {
    // The namespace: as acknowledged, or with the operation in flight done.
    let mut candidates = vec![acked.clone()];
    if let Some((op, after)) = flight {
        candidates.push(after.clone());
        if let Op::Write { path, .. } = op {
            // A write in flight whose stub kept its old size: the new bytes within it.
            let mut cut = after.clone();
            let id = after.names[path];
            let old = acked.files[&id].blocks.len();
            if let Some(f) = cut.files.get_mut(&id) {
                if f.blocks.len() > old {
                    f.truncate(old);
                }
            }
            candidates.push(cut);
        }
    }
    let names_of = |m: &Model| m.names.keys().cloned().collect::<BTreeSet<_>>();
    let actual_names: BTreeSet<String> = actual.keys().cloned().collect();
    let matching: Vec<&Model> = candidates
        .iter()
        .filter(|m| names_of(m) == actual_names)
        .collect();
    if matching.is_empty() {
        let missing: Vec<_> = names_of(acked).difference(&actual_names).cloned().collect();
        let extra: Vec<_> = actual_names.difference(&names_of(acked)).cloned().collect();
        tally.consistency.push(format!(
            "names differ from the acknowledged state (and the one in flight): missing \
             {missing:?}, unexpected {extra:?}"
        ));
        return;
    }
    // The outcome closest to one the crash allows: an exchange in flight, for one, keeps
    // the names and swaps the contents.
    let (durability, consistency) = matching
        .iter()
        .map(|m| violations(level, acked, &candidates, m, actual))
        .min_by_key(|(d, c)| d.len() + c.len())
        .unwrap_or_default();
    tally.durability.extend(durability);
    tally.consistency.extend(consistency);
}

/// The durability and consistency violations of `actual` against the outcome `model`.
fn violations(
    level: Level,
    acked: &Model,
    candidates: &[Model],
    model: &Model,
    actual: &BTreeMap<String, Vec<u8>>,
) -> (Vec<String>, Vec<String>) {
    let (mut durability, mut consistency) = (Vec::new(), Vec::new());
    for (path, data) in actual {
        let id = model.names[path];
        let f = &model.files[&id];
        let fully_synced = acked
            .files
            .get(&id)
            .is_some_and(|a| a.synced.iter().all(|&s| s) && a.blocks == f.blocks);
        if level == Level::Kill {
            // The host kept everything: the acknowledged bytes exactly.
            let want = model.render(id);
            if *data != want {
                let what = format!(
                    "{path}: {} bytes differ from the acknowledged {} bytes",
                    data.len(),
                    want.len()
                );
                if fully_synced {
                    durability.push(what);
                } else {
                    consistency.push(what);
                }
            }
        }
        let sizes: BTreeSet<usize> = candidates
            .iter()
            .filter_map(|m| m.names.get(path).map(|i| m.files[i].blocks.len() * BLOCK))
            .collect();
        if !sizes.contains(&data.len()) {
            consistency.push(format!("{path}: size {} not one of {sizes:?}", data.len()));
        }
        // Block by block: fsync'd blocks exactly, every other one zeros or a version it
        // held since its last truncate.
        for (i, chunk) in data.chunks(BLOCK).enumerate() {
            let durable = acked.files.get(&id).and_then(|a| {
                (i < a.blocks.len()
                    && a.synced[i]
                    && i < f.blocks.len()
                    && f.blocks[i] == a.blocks[i])
                    .then(|| a.blocks[i])
            });
            let Some((bid, gen, idx)) = parse_block(chunk) else {
                consistency.push(format!("{path}: block {i} is garbage"));
                continue;
            };
            if let Some(want) = durable {
                if chunk != block(id, want, i) {
                    durability.push(format!(
                        "{path}: fsync'd block {i} (generation {want}) lost: found file {bid} \
                         generation {gen}"
                    ));
                }
            } else if gen == 0 {
            } else if bid != id {
                consistency.push(format!("{path}: block {i} holds file {bid}'s bytes"));
            } else if idx != i {
                consistency.push(format!("{path}: block {i} holds block {idx}"));
            } else if !f.allowed.get(i).is_some_and(|a| a.contains(&gen)) {
                consistency.push(format!(
                    "{path}: block {i} holds generation {gen}, gone since a truncate"
                ));
            }
        }
    }
    (durability, consistency)
}

/// Everything recovery could touch: guest tree entries (kind, size, links, inode, redirect
/// metadata) and store entries (kind, size, inode, contents), the lock, the marker and idle
/// intent slots aside.
fn snapshot(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (label, root) in [("g", dir.join("g")), ("s", dir.join("s"))] {
        let mut stack = vec![root.clone()];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let rel = path.strip_prefix(&root).unwrap().display().to_string();
                if rel.ends_with("/lock") || rel.ends_with("/clean") {
                    continue;
                }
                let Ok(m) = std::fs::symlink_metadata(&path) else {
                    continue;
                };
                // A running server keeps idle slots for its next records (and removes them
                // when it stops): not state.
                if rel.contains("/intent/") && fsredirect::intent::is_idle_slot(&path) {
                    continue;
                }
                let mut line = format!(
                    "{label} {rel} mode {:o} size {} nlink {} ino {}",
                    m.mode(),
                    m.len(),
                    m.nlink(),
                    m.ino()
                );
                if m.is_dir() {
                    stack.push(path.clone());
                } else if label == "s" {
                    line += &format!(" data {:?}", std::fs::read(&path).unwrap_or_default());
                } else {
                    line += &format!(" meta {:?}", fsredirect::meta::decoded_at(&path).ok());
                }
                out.insert(line);
            }
        }
    }
    out
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx]
}

fn report(name: &str, t: &Tally, took: Duration) {
    let mut times = t.recovery_times.clone();
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let line = format!(
        "{name}: {} crashes ({} runs finished before the crash) over {} workloads, {} distinct \
         crash points, {} operations acknowledged before the crashes; durability violations {}, \
         consistency violations {}; recovery settled {} logged operations, resized {} objects, \
         moved back {}, reclaimed {} orphans; recovery p50 {:.2} ms, p99 {:.2} ms ({} \
         recoveries); second recovery changed nothing in {} of {} cases; intent records in \
         journal order (no sync each) in {} of {} runs that got past the start; {:.1} s",
        t.crashes,
        t.completed_runs,
        t.workloads.len(),
        t.crash_points.len(),
        t.ops_acknowledged,
        t.durability.len(),
        t.consistency.len(),
        t.intents,
        t.resized,
        t.moved_back,
        t.orphans,
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99)),
        times.len(),
        t.crashes - t.second_recovery_changes,
        t.crashes,
        t.journal_ordered,
        t.started,
        took.as_secs_f64()
    );
    println!("{line}");
    // Both levels run at once: one writer at a time, each replacing its own line.
    static REPORT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = REPORT.lock().unwrap_or_else(|p| p.into_inner());
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/crash-report.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let mut lines: Vec<String> = old
        .lines()
        .filter(|l| l.starts_with("- ") && !l.starts_with(&format!("- {name}:")))
        .map(str::to_string)
        .collect();
    lines.push(format!("- {line}"));
    lines.sort();
    let text = format!(
        "# Crash tests\n\nWritten by `cargo test -p fsredirect --release --test crash`.\n\n{}\n",
        lines.join("\n")
    );
    if let Some(parent) = path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    if let Err(e) = std::fs::write(&path, text) {
        println!("cannot write {}: {e}", path.display());
    }
}
